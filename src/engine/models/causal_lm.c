/*
 * causal_lm.c - a decoder with an adapter that trains (causal_lm.h): per
 * layer RMSNorm, adapted q/k/v products, rotary embeddings, causal
 * grouped-query attention within each sequence, the adapted output
 * product and residual; RMSNorm, adapted gate/up products, SwiGLU, the
 * adapted down product and residual; then the final RMSNorm and the
 * output head on the rows that predict a target, whose cross-entropy
 * gradient flows back through the same steps in reverse.
 *
 * The head's logits are never all held: they are computed, turned into
 * their gradient and multiplied back 64 rows at a time, so a vocabulary
 * of 49,152 costs 12 MB however many targets a batch has.
 */
#include "causal_lm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops_decoder.h"
#include "quant.h"
#include "threadpool.h"

/* Target rows whose logits are computed at once. */
#define HEAD_CHUNK 64

/* What one layer keeps from its forward pass for backward. */
typedef struct LayerActs
{
	real	   *x_in;			/* [rows, C] the layer's input */
	real	   *rstd1;			/* [rows] */
	real	   *xn1;			/* [rows, C] normalised for attention */
	real	   *q;				/* [rows, Hq*D] rotated queries */
	real	   *kc;				/* [seqs, ctx, KV] rotated keys by sequence and position */
	real	   *vc;				/* [seqs, ctx, KV] values */
	real	   *probs;			/* [rows, Hq, ctx] attention weights */
	real	   *att;			/* [rows, Hq*D] attention output */
	real	   *x_mid;			/* [rows, C] after the attention residual */
	real	   *rstd2;			/* [rows] */
	real	   *xn2;			/* [rows, C] normalised for the feed-forward */
	real	   *gate;			/* [rows, F] */
	real	   *up;				/* [rows, F] */
	DadSave		save[LLAMA_NUM_LINEAR];	/* the adapter's, per linear */
	real	   *bn_in[2];		/* [rows, C] bottleneck adapters' inputs (0 after attention, 1 after the ffn) */
	real	   *bn_down[2];		/* [rows, width] their down products */
} LayerActs;

struct CausalLM
{
	const LlamaModel *base;
	DecoderAdapter *ad;
	int			V;				/* virtual positions before every sequence (prompt, prefix tuning) */
	bool		prompt;			/* prompt tuning: they are rows of their own */
	/* the RMSNorm weights as `real` (the model holds float; gradient checks run in double) */
	real	   *norms;			/* [2 * layers + 1, C]: attention, feed-forward per layer, final */

	/* the reservation */
	int			rows;
	int			seqs;
	int			ctx;
	bool		train;
	int			nacts;			/* layers with their own LayerActs (1 unless train) */
	LayerActs  *acts;
	void	  **allocs;			/* every buffer, for freeing */
	int			nallocs;
	int			cap_allocs;
	size_t		bytes;

	real	   *x_last;			/* [rows, C] the last layer's output */
	real	   *proj;			/* [rows, C] a product before its residual */
	real	   *k;				/* [rows, KV] new keys, values (before scattering) */
	real	   *v;
	real	   *act;			/* [rows, F] SwiGLU output */
	int32_t    *slot;			/* [rows] the sequence of each row */
	int32_t    *pos;			/* [rows] its position */
	/* the head */
	int32_t    *tgt_row;		/* [rows] rows that predict a target, and the target */
	int32_t    *tgt_id;
	real	   *xf;				/* [rows, C] */
	real	   *rstdf;			/* [rows] */
	real	   *xfn;			/* [rows, C] */
	real	   *logits;			/* [HEAD_CHUNK, V] */
	double	   *row_loss;		/* [HEAD_CHUNK] */
	/* backward scratch */
	real	   *dh;				/* [rows, C] gradient of a layer's output, then input */
	real	   *dtmp;			/* [rows, max(C, F)] a product's output gradient (overwritten) */
	real	   *dxn;			/* [rows, C] */
	real	   *datt;			/* [rows, Hq*D] */
	real	   *dq;				/* [rows, Hq*D] */
	real	   *dk;				/* [rows, KV] */
	real	   *dv;
	real	   *dkc;			/* [seqs, ctx, KV] */
	real	   *dvc;
	real	   *dgate;			/* [rows, F] */
	real	   *dup;
	real	   *dact;
	real	   *lin_scratch;	/* [rows, max(in, out)] for the adapter's backward */
	real	   *bn_scratch;		/* [2 rows, width] bottleneck adapters' */
	real	   *prefix_k;		/* [V, KV] a layer's prefix keys, values (prefix tuning) */
	real	   *prefix_v;
};

PeftCode
causal_lm_create(const LlamaModel *base, DecoderAdapter *ad, CausalLM **out, PeftError *err)
{
	CausalLM   *lm = calloc(1, sizeof(CausalLM));
	int			L = base->cfg.num_layers;
	int			C = base->cfg.hidden_size;

	*out = NULL;
	if (lm == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory building the network");
	lm->base = base;
	lm->ad = ad;
	lm->V = decoder_adapter_virtual_tokens(ad);
	lm->prompt = ad && ad->o.method == DAD_PROMPT;
	if ((lm->norms = malloc(sizeof(real) * (2 * L + 1) * C)) == NULL)
	{
		free(lm);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory building the network");
	}
	for (int l = 0; l < L; l++)
		for (int i = 0; i < C; i++)
		{
			lm->norms[(size_t) (2 * l) * C + i] = base->layers[l].attn_norm[i];
			lm->norms[(size_t) (2 * l + 1) * C + i] = base->layers[l].ffn_norm[i];
		}
	for (int i = 0; i < C; i++)
		lm->norms[(size_t) (2 * L) * C + i] = base->final_norm[i];
	*out = lm;
	return PEFT_OK;
}

/* RMSNorm weights: which 0 attention, 1 feed-forward of layer l; l = layers: the final norm. */
static const real *
norm_weight(const CausalLM *lm, int l, int which)
{
	return lm->norms + (size_t) (2 * l + which) * lm->base->cfg.hidden_size;
}

void
causal_lm_release(CausalLM *lm)
{
	for (int i = 0; i < lm->nallocs; i++)
		free(lm->allocs[i]);
	free(lm->allocs);
	free(lm->acts);
	lm->allocs = NULL;
	lm->nallocs = lm->cap_allocs = 0;
	lm->acts = NULL;
	lm->nacts = 0;
	lm->rows = lm->seqs = lm->ctx = 0;
	lm->bytes = 0;
}

void
causal_lm_free(CausalLM *lm)
{
	if (lm == NULL)
		return;
	causal_lm_release(lm);
	free(lm->norms);
	free(lm);
}

/* The sizes of everything a reservation allocates, in one walk (alloc NULL: count only). */
typedef struct Sizer
{
	CausalLM   *lm;				/* NULL: only count */
	size_t		bytes;
	bool		failed;
} Sizer;

/* Allocate (or count) n elements of size into *p. */
static void
take(Sizer *s, void *p, size_t n, size_t size)
{
	void	   *mem;

	n = n ? n : 1;
	s->bytes += n * size;
	if (s->lm == NULL || s->failed)
		return;
	if (s->lm->nallocs == s->lm->cap_allocs)
	{
		int			cap = s->lm->cap_allocs ? 2 * s->lm->cap_allocs : 64;
		void	  **a = realloc(s->lm->allocs, cap * sizeof(void *));

		if (a == NULL)
		{
			s->failed = true;
			return;
		}
		s->lm->allocs = a;
		s->lm->cap_allocs = cap;
	}
	if ((mem = calloc(n, size)) == NULL)
	{
		s->failed = true;
		return;
	}
	s->lm->allocs[s->lm->nallocs++] = mem;
	*(void **) p = mem;
}

/* Walk every buffer of a reservation (acts may be NULL when counting). */
static void
walk_buffers(Sizer *s, const LlamaModel *base, const DecoderAdapter *ad, LayerActs *acts,
			 int nacts, int rows, int seqs, int ctx)
{
	const LlamaConfig *c = &base->cfg;
	size_t		C = c->hidden_size;
	size_t		F = c->intermediate_size;
	size_t		QD = (size_t) c->num_heads * c->head_dim;
	size_t		KV = (size_t) c->num_kv_heads * c->head_dim;
	size_t		R = rows;
	size_t		cache = (size_t) seqs * ctx * KV;
	size_t		wide = F > C ? F : C;
	LayerActs	dummy;
	CausalLM   *lm = s->lm;
	CausalLM	none;

	if (lm == NULL)
		lm = &none;
	for (int l = 0; l < nacts; l++)
	{
		LayerActs  *a = acts ? &acts[l] : &dummy;

		take(s, &a->x_in, R * C, sizeof(real));
		take(s, &a->rstd1, R, sizeof(real));
		take(s, &a->xn1, R * C, sizeof(real));
		take(s, &a->q, R * QD, sizeof(real));
		take(s, &a->kc, cache, sizeof(real));
		take(s, &a->vc, cache, sizeof(real));
		take(s, &a->probs, R * c->num_heads * ctx, sizeof(real));
		take(s, &a->att, R * QD, sizeof(real));
		take(s, &a->x_mid, R * C, sizeof(real));
		take(s, &a->rstd2, R, sizeof(real));
		take(s, &a->xn2, R * C, sizeof(real));
		take(s, &a->gate, R * F, sizeof(real));
		take(s, &a->up, R * F, sizeof(real));
		for (int w = 0; ad && w < LLAMA_NUM_LINEAR; w++)
		{
			size_t		xa,
						xd,
						pre;

			decoder_adapter_save_sizes(ad, w, &xa, &xd, &pre);
			if (xa)
				take(s, &a->save[w].xa, R * xa, sizeof(real));
			if (xd)
			{
				take(s, &a->save[w].xd, R * xd, sizeof(real));
				take(s, &a->save[w].keep, R * xd, sizeof(uint8_t));
			}
			if (pre)
				take(s, &a->save[w].pre, R * pre, sizeof(real));
		}
		for (int place = 0; place < 2; place++)
			if (decoder_adapter_has_bottleneck(ad, 0, place))
			{
				take(s, &a->bn_in[place], R * C, sizeof(real));
				take(s, &a->bn_down[place], R * ad->bneck_width, sizeof(real));
			}
	}
	take(s, &lm->x_last, R * C, sizeof(real));
	take(s, &lm->proj, R * C, sizeof(real));
	take(s, &lm->k, R * KV, sizeof(real));
	take(s, &lm->v, R * KV, sizeof(real));
	take(s, &lm->act, R * F, sizeof(real));
	take(s, &lm->slot, R, sizeof(int32_t));
	take(s, &lm->pos, R, sizeof(int32_t));
	take(s, &lm->tgt_row, R, sizeof(int32_t));
	take(s, &lm->tgt_id, R, sizeof(int32_t));
	take(s, &lm->xf, R * C, sizeof(real));
	take(s, &lm->rstdf, R, sizeof(real));
	take(s, &lm->xfn, R * C, sizeof(real));
	take(s, &lm->logits, (size_t) HEAD_CHUNK * c->vocab_size, sizeof(real));
	take(s, &lm->row_loss, HEAD_CHUNK, sizeof(double));
	take(s, &lm->dh, R * C, sizeof(real));
	take(s, &lm->dtmp, R * wide, sizeof(real));
	take(s, &lm->dxn, R * C, sizeof(real));
	take(s, &lm->datt, R * QD, sizeof(real));
	take(s, &lm->dq, R * QD, sizeof(real));
	take(s, &lm->dk, R * KV, sizeof(real));
	take(s, &lm->dv, R * KV, sizeof(real));
	take(s, &lm->dkc, cache, sizeof(real));
	take(s, &lm->dvc, cache, sizeof(real));
	take(s, &lm->dgate, R * F, sizeof(real));
	take(s, &lm->dup, R * F, sizeof(real));
	take(s, &lm->dact, R * F, sizeof(real));
	take(s, &lm->lin_scratch, R * wide, sizeof(real));
	if (ad && ad->o.method == DAD_BOTTLENECK)
		take(s, &lm->bn_scratch, 2 * R * ad->bneck_width, sizeof(real));
	if (ad && ad->o.method == DAD_PREFIX)
	{
		take(s, &lm->prefix_k, (size_t) ad->o.virtual_tokens * KV, sizeof(real));
		take(s, &lm->prefix_v, (size_t) ad->o.virtual_tokens * KV, sizeof(real));
	}
}

size_t
causal_lm_activation_bytes(const LlamaModel *base, const DecoderAdapter *ad, int rows, int seqs,
						   int ctx, bool train)
{
	Sizer		s = {0};
	int			V = decoder_adapter_virtual_tokens(ad);

	/* virtual positions: prompt tuning's are rows, both take cache positions */
	rows += ad && ad->o.method == DAD_PROMPT ? seqs * V : 0;
	walk_buffers(&s, base, ad, NULL, train ? base->cfg.num_layers : 1, rows, seqs, ctx + V);
	return s.bytes;
}

PeftCode
causal_lm_reserve(CausalLM *lm, int rows, int seqs, int ctx, bool train, PeftError *err)
{
	int			nacts = train ? lm->base->cfg.num_layers : 1;
	Sizer		s = {.lm = lm};

	if (rows <= lm->rows && seqs <= lm->seqs && ctx <= lm->ctx && nacts <= lm->nacts)
		return PEFT_OK;
	/* grow to cover both the old and the new shape */
	rows = rows > lm->rows ? rows : lm->rows;
	seqs = seqs > lm->seqs ? seqs : lm->seqs;
	ctx = ctx > lm->ctx ? ctx : lm->ctx;
	nacts = nacts > lm->nacts ? nacts : lm->nacts;
	causal_lm_release(lm);
	if ((lm->acts = calloc(nacts, sizeof(LayerActs))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for the training activations");
	walk_buffers(&s, lm->base, lm->ad, lm->acts, nacts, rows, seqs, ctx);
	if (s.failed)
	{
		causal_lm_release(lm);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for the activations of %d tokens in %d sequences (%zu MB)",
						 rows, seqs, s.bytes >> 20);
	}
	lm->rows = rows;
	lm->seqs = seqs;
	lm->ctx = ctx;
	lm->nacts = nacts;
	lm->train = train;
	lm->bytes = s.bytes;
	return PEFT_OK;
}

int64_t
lm_batch_targets(const LmBatch *b)
{
	int64_t		n = 0;

	for (int i = 0; i < b->B; i++)
	{
		int			len = b->start[i + 1] - b->start[i];
		int			first = b->prompt_len[i] > 1 ? b->prompt_len[i] : 1;

		n += len > first ? len - first : 0;
	}
	return n;
}

/* ---- forward ------------------------------------------------------------ */

/* Copy each row's keys and values into the layer's per-sequence cache. */
static void
scatter_kv(CausalLM *lm, LayerActs *a, int N)
{
	size_t		KV = (size_t) lm->base->cfg.num_kv_heads * lm->base->cfg.head_dim;

	for (int r = 0; r < N; r++)
	{
		size_t		at = ((size_t) lm->slot[r] * lm->ctx + lm->pos[r]) * KV;

		memcpy(a->kc + at, lm->k + (size_t) r * KV, KV * sizeof(real));
		memcpy(a->vc + at, lm->v + (size_t) r * KV, KV * sizeof(real));
	}
}

/* Prefix tuning: layer l's prefixes into cache positions 0 .. V-1 of every sequence. */
static void
fill_prefixes(CausalLM *lm, int l, LayerActs *a)
{
	size_t		KV = (size_t) lm->base->cfg.num_kv_heads * lm->base->cfg.head_dim;
	size_t		bytes = sizeof(real) * lm->V * KV;

	decoder_adapter_prefix_kv(lm->ad, l, lm->prefix_k, lm->prefix_v);
	for (int s = 0; s < lm->seqs; s++)
	{
		memcpy(a->kc + (size_t) s * lm->ctx * KV, lm->prefix_k, bytes);
		memcpy(a->vc + (size_t) s * lm->ctx * KV, lm->prefix_v, bytes);
	}
}

/* Prefix tuning: the gradients of layer l's prefixes, summed over the sequences. */
static void
prefix_backward(CausalLM *lm, int l, int seqs)
{
	size_t		KV = (size_t) lm->base->cfg.num_kv_heads * lm->base->cfg.head_dim;

	for (int s = 0; s < seqs; s++)
		decoder_adapter_prefix_backward(lm->ad, l, lm->dkc + (size_t) s * lm->ctx * KV,
										lm->dvc + (size_t) s * lm->ctx * KV);
}

/* One decoder layer over N rows: a->x_in to x_out (which may be a->x_in itself). */
static void
layer_forward(CausalLM *lm, int l, LayerActs *a, int N, real *x_out, bool train)
{
	const LlamaConfig *c = &lm->base->cfg;
	const LlamaLayer *L = &lm->base->layers[l];
	DecoderAdapter *ad = lm->ad;
	size_t		n = (size_t) N * c->hidden_size;
	real		eps = (real) c->rms_eps;

#define LINEAR(W, w, x, y) decoder_adapter_linear(ad, &L->W, l, w, x, N, y, train ? &a->save[w] : NULL, train)
#define BOTTLENECK(place) \
	if (decoder_adapter_has_bottleneck(ad, l, place)) \
		decoder_adapter_bottleneck(ad, l, place, lm->proj, N, train ? a->bn_in[place] : NULL, \
								   a->bn_down[place], lm->bn_scratch)
	rmsnorm_forward(a->xn1, a->rstd1, a->x_in, norm_weight(lm, l, 0), N, c->hidden_size, eps);
	LINEAR(wq, LLAMA_Q, a->xn1, a->q);
	LINEAR(wk, LLAMA_K, a->xn1, lm->k);
	LINEAR(wv, LLAMA_V, a->xn1, lm->v);
	rope_forward(a->q, lm->pos, N, c->num_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	rope_forward(lm->k, lm->pos, N, c->num_kv_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	scatter_kv(lm, a, N);
	if (ad && ad->o.method == DAD_PREFIX)
		fill_prefixes(lm, l, a);
	gqa_attention_forward(a->att, train ? a->probs : NULL, a->q, a->kc, a->vc, lm->slot, lm->pos, N,
						  c->num_heads, c->num_kv_heads, c->head_dim, lm->ctx);
	LINEAR(wo, LLAMA_O, a->att, lm->proj);
	BOTTLENECK(0);
	for (size_t i = 0; i < n; i++)
		a->x_mid[i] = a->x_in[i] + lm->proj[i];
	rmsnorm_forward(a->xn2, a->rstd2, a->x_mid, norm_weight(lm, l, 1), N, c->hidden_size, eps);
	LINEAR(w_gate, LLAMA_GATE, a->xn2, a->gate);
	LINEAR(w_up, LLAMA_UP, a->xn2, a->up);
	swiglu_forward(lm->act, a->gate, a->up, (size_t) N * c->intermediate_size);
	LINEAR(w_down, LLAMA_DOWN, lm->act, lm->proj);
	BOTTLENECK(1);
#undef LINEAR
#undef BOTTLENECK
	for (size_t i = 0; i < n; i++)
		x_out[i] = a->x_mid[i] + lm->proj[i];
}

/* ---- the head and its loss -------------------------------------------- */

typedef struct HeadArgs
{
	real	   *logits;			/* [n, V]: replaced by the gradient when grad_scale > 0 */
	const int32_t *target;
	double	   *loss;
	int			V;
	double		grad_scale;
} HeadArgs;

/* Cross-entropy of rows [begin, end) of a chunk and, when asked, its gradient in place. */
static void
head_range(void *arg, size_t begin, size_t end)
{
	const HeadArgs *h = arg;

	for (size_t i = begin; i < end; i++)
	{
		real	   *z = h->logits + i * h->V;
		double		max = z[0];
		double		sum = 0;
		double		lse;

		for (int j = 1; j < h->V; j++)
			max = z[j] > max ? z[j] : max;
		for (int j = 0; j < h->V; j++)
			sum += exp(z[j] - max);
		lse = max + log(sum);
		h->loss[i] = lse - z[h->target[i]];
		if (h->grad_scale <= 0)
			continue;
		for (int j = 0; j < h->V; j++)
			z[j] = (real) (h->grad_scale * exp(z[j] - lse));
		z[h->target[i]] -= (real) h->grad_scale;
	}
}

/*
 * The loss of the M target rows of x_last, and with grad_scale > 0 the
 * gradient of x_last into lm->dh (zero on the other rows).
 */
static double
head_loss(CausalLM *lm, int N, int M, double grad_scale)
{
	const LlamaModel *m = lm->base;
	const LlamaConfig *c = &m->cfg;
	int			C = c->hidden_size;
	int			V = c->vocab_size;
	double		total = 0;

	for (int i = 0; i < M; i++)
		memcpy(lm->xf + (size_t) i * C, lm->x_last + (size_t) lm->tgt_row[i] * C, sizeof(real) * C);
	rmsnorm_forward(lm->xfn, lm->rstdf, lm->xf, norm_weight(lm, c->num_layers, 0), M, C, (real) c->rms_eps);
	if (grad_scale > 0)
		memset(lm->dxn, 0, sizeof(real) * M * C);
	for (int start = 0; start < M; start += HEAD_CHUNK)
	{
		int			n = M - start < HEAD_CHUNK ? M - start : HEAD_CHUNK;
		HeadArgs	h = {
			.logits = lm->logits, .target = lm->tgt_id + start, .loss = lm->row_loss,
			.V = V, .grad_scale = grad_scale
		};

		qmatrix_forward(&m->output, lm->xfn + (size_t) start * C, n, lm->logits, lm->ad && lm->ad->bf16);
		peft_parallel_for((size_t) n, 1, head_range, &h);
		for (int i = 0; i < n; i++)
			total += lm->row_loss[i];
		if (grad_scale > 0)
			qmatrix_backward(&m->output, lm->logits, n, lm->dxn + (size_t) start * C, lm->ad && lm->ad->bf16);
	}
	if (grad_scale <= 0)
		return total;
	memset(lm->xfn, 0, sizeof(real) * M * C);	/* now the gradient of xf */
	rmsnorm_backward(lm->xfn, NULL, lm->dxn, lm->xf, norm_weight(lm, c->num_layers, 0), lm->rstdf, M, C);
	memset(lm->dh, 0, sizeof(real) * N * C);
	for (int i = 0; i < M; i++)
		memcpy(lm->dh + (size_t) lm->tgt_row[i] * C, lm->xfn + (size_t) i * C, sizeof(real) * C);
	return total;
}

/* ---- backward ----------------------------------------------------------- */

/* Gather each row's key and value gradient from the per-sequence cache gradients. */
static void
gather_dkv(CausalLM *lm, int N)
{
	size_t		KV = (size_t) lm->base->cfg.num_kv_heads * lm->base->cfg.head_dim;

	for (int r = 0; r < N; r++)
	{
		size_t		at = ((size_t) lm->slot[r] * lm->ctx + lm->pos[r]) * KV;

		memcpy(lm->dk + (size_t) r * KV, lm->dkc + at, KV * sizeof(real));
		memcpy(lm->dv + (size_t) r * KV, lm->dvc + at, KV * sizeof(real));
	}
}

/*
 * Backward of layer l over N rows in seqs sequences: lm->dh holds the
 * gradient of its output and receives that of its input (when need_dx;
 * the first layer's is needed only by prompt tuning).  The adapter's
 * gradients accumulate.
 */
static void
layer_backward(CausalLM *lm, int l, int N, int seqs, bool need_dx)
{
	const LlamaConfig *c = &lm->base->cfg;
	const LlamaLayer *L = &lm->base->layers[l];
	LayerActs  *a = &lm->acts[l];
	DecoderAdapter *ad = lm->ad;
	size_t		C = c->hidden_size;
	size_t		F = c->intermediate_size;
	size_t		QD = (size_t) c->num_heads * c->head_dim;
	size_t		cache = (size_t) lm->seqs * lm->ctx * c->num_kv_heads * c->head_dim;

#define LINEAR_BACK(W, w, x, dy, dx) \
	decoder_adapter_linear_backward(ad, &L->W, l, w, x, N, dy, &a->save[w], dx, lm->lin_scratch)
#define BOTTLENECK_BACK(place) \
	if (decoder_adapter_has_bottleneck(ad, l, place)) \
		decoder_adapter_bottleneck_backward(ad, l, place, lm->dtmp, N, a->bn_in[place], a->bn_down[place], \
											lm->bn_scratch)
	/* feed-forward: x_out = x_mid + down(swiglu(gate(xn2), up(xn2))) */
	swiglu_forward(lm->act, a->gate, a->up, (size_t) N * F);
	memcpy(lm->dtmp, lm->dh, sizeof(real) * N * C);
	BOTTLENECK_BACK(1);
	memset(lm->dact, 0, sizeof(real) * N * F);
	LINEAR_BACK(w_down, LLAMA_DOWN, lm->act, lm->dtmp, lm->dact);
	memset(lm->dgate, 0, sizeof(real) * N * F);
	memset(lm->dup, 0, sizeof(real) * N * F);
	swiglu_backward(lm->dgate, lm->dup, lm->dact, a->gate, a->up, (size_t) N * F);
	memset(lm->dxn, 0, sizeof(real) * N * C);
	LINEAR_BACK(w_gate, LLAMA_GATE, a->xn2, lm->dgate, lm->dxn);
	LINEAR_BACK(w_up, LLAMA_UP, a->xn2, lm->dup, lm->dxn);
	rmsnorm_backward(lm->dh, NULL, lm->dxn, a->x_mid, norm_weight(lm, l, 1), a->rstd2, N, C);

	/* attention: x_mid = x_in + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1))) */
	memcpy(lm->dtmp, lm->dh, sizeof(real) * N * C);
	BOTTLENECK_BACK(0);
	memset(lm->datt, 0, sizeof(real) * N * QD);
	LINEAR_BACK(wo, LLAMA_O, a->att, lm->dtmp, lm->datt);
	memset(lm->dq, 0, sizeof(real) * N * QD);
	memset(lm->dkc, 0, sizeof(real) * cache);
	memset(lm->dvc, 0, sizeof(real) * cache);
	gqa_attention_backward(lm->dq, lm->dkc, lm->dvc, lm->datt, a->q, a->kc, a->vc, a->probs,
						   lm->slot, lm->pos, N, c->num_heads, c->num_kv_heads, c->head_dim, lm->ctx);
	gather_dkv(lm, N);
	if (ad && ad->o.method == DAD_PREFIX)
		prefix_backward(lm, l, seqs);
	rope_backward(lm->dq, lm->pos, N, c->num_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	rope_backward(lm->dk, lm->pos, N, c->num_kv_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	memset(lm->dxn, 0, sizeof(real) * N * C);
	LINEAR_BACK(wq, LLAMA_Q, a->xn1, lm->dq, need_dx ? lm->dxn : NULL);
	LINEAR_BACK(wk, LLAMA_K, a->xn1, lm->dk, need_dx ? lm->dxn : NULL);
	LINEAR_BACK(wv, LLAMA_V, a->xn1, lm->dv, need_dx ? lm->dxn : NULL);
#undef LINEAR_BACK
#undef BOTTLENECK_BACK
	if (need_dx)
		rmsnorm_backward(lm->dh, NULL, lm->dxn, a->x_in, norm_weight(lm, l, 0), a->rstd1, N, C);
}

/* Check a batch's shape and ids. */
static PeftCode
check_batch(const CausalLM *lm, const LmBatch *b, int *N, int *ctx, PeftError *err)
{
	const LlamaConfig *c = &lm->base->cfg;

	*N = 0;
	*ctx = 0;
	if (b->B < 1 || b->start[0] != 0)
		return peft_fail(err, PEFT_ERR_INVALID, "a training batch of %d sequences", b->B);
	for (int i = 0; i < b->B; i++)
	{
		int			len = b->start[i + 1] - b->start[i];

		if (len < 1 || len + lm->V > c->context_length || b->prompt_len[i] < 0 || b->prompt_len[i] > len)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "sequence %d of a batch has %d tokens (prompt %d, %d virtual; the model's context is %d)",
							 i, len, b->prompt_len[i], lm->V, c->context_length);
		*ctx = len + lm->V > *ctx ? len + lm->V : *ctx;
	}
	*N = b->start[b->B];
	for (int r = 0; r < *N; r++)
		if (b->ids[r] < 0 || b->ids[r] >= c->vocab_size)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d is outside the vocabulary of %d",
							 b->ids[r], c->vocab_size);
	return PEFT_OK;
}

PeftCode
causal_lm_loss(CausalLM *lm, const LmBatch *b, double grad_scale, double *loss_sum,
			   int64_t *targets, PeftError *err)
{
	const LlamaModel *m = lm->base;
	const LlamaConfig *c = &m->cfg;
	bool		train = grad_scale > 0;
	size_t		row_bytes = quant_row_bytes(m->embed.type, c->hidden_size);
	int			N,
				ctx,
				M = 0;
	PeftCode	rc;

	*loss_sum = 0;
	*targets = 0;
	if ((rc = check_batch(lm, b, &N, &ctx, err)) != PEFT_OK)
		return rc;
	if (c->hidden_size > 8192)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "hidden size %d", c->hidden_size);
	/* prompt tuning's virtual tokens are rows: V of them start every sequence */
	N += lm->prompt ? b->B * lm->V : 0;
	if ((rc = causal_lm_reserve(lm, N, b->B, ctx, train, err)) != PEFT_OK)
		return rc;
	if (train && lm->ad)
	{
		if ((rc = decoder_adapter_refresh(lm->ad, err)) != PEFT_OK)
			return rc;
	}
	/*
	 * Rows, their sequence, position and input, and the rows that predict a
	 * target.  Real tokens sit at positions V + t after the virtual ones.
	 */
	for (int i = 0, r = 0; i < b->B; i++)
	{
		for (int v = 0; lm->prompt && v < lm->V; v++, r++)
		{
			lm->slot[r] = i;
			lm->pos[r] = v;
			memcpy(lm->acts[0].x_in + (size_t) r * c->hidden_size, decoder_adapter_prompt_row(lm->ad, v),
				   sizeof(real) * c->hidden_size);
		}
		for (int t = 0; t < b->start[i + 1] - b->start[i]; t++, r++)
		{
			int32_t		id = b->ids[b->start[i] + t];
			real	   *x = lm->acts[0].x_in + (size_t) r * c->hidden_size;
			float		row[8192];

			lm->slot[r] = i;
			lm->pos[r] = lm->V + t;
			if (t >= 1 && t >= b->prompt_len[i])
			{
				lm->tgt_row[M] = r - 1;
				lm->tgt_id[M++] = id;
			}
			quant_dequantize(m->embed.type, (const uint8_t *) m->embed.data + (size_t) id * row_bytes,
							 c->hidden_size, row);
			for (int k = 0; k < c->hidden_size; k++)
				x[k] = row[k];
		}
	}
	for (int l = 0; l < c->num_layers; l++)
	{
		LayerActs  *a = &lm->acts[train ? l : 0];
		real	   *x_out = !train ? a->x_in : l + 1 < c->num_layers ? lm->acts[l + 1].x_in : lm->x_last;

		layer_forward(lm, l, a, N, x_out, train);
	}
	if (!train)
		memcpy(lm->x_last, lm->acts[0].x_in, sizeof(real) * N * c->hidden_size);
	*targets = M;
	if (M == 0)
		return PEFT_OK;
	*loss_sum = head_loss(lm, N, M, grad_scale);
	if (!isfinite(*loss_sum))
		return peft_fail(err, PEFT_ERR_INVALID, "the loss is not finite (%g)", *loss_sum);
	if (!train)
		return PEFT_OK;
	for (int l = c->num_layers - 1; l >= 0; l--)
		layer_backward(lm, l, N, b->B, l > 0 || lm->prompt);
	/* prompt tuning: the first layer's input gradient on the virtual rows */
	for (int i = 0, r = 0; lm->prompt && i < b->B; r += b->start[i + 1] - b->start[i], i++)
		for (int v = 0; v < lm->V; v++, r++)
			decoder_adapter_prompt_backward(lm->ad, v, lm->dh + (size_t) r * c->hidden_size);
	return PEFT_OK;
}

PeftCode
causal_lm_cache_of(const LlamaModel *base, const int32_t *ids, int n, real *k, real *v, PeftError *err)
{
	const LlamaConfig *c = &base->cfg;
	size_t		KV = (size_t) c->num_kv_heads * c->head_dim;
	int32_t		start[2] = {0, n};
	int32_t		prompt_len[1] = {n};
	LmBatch		b = {.B = 1, .ids = ids, .start = start, .prompt_len = prompt_len};
	CausalLM   *lm;
	double		loss;
	int64_t		targets;
	PeftCode	rc;

	if ((rc = causal_lm_create(base, NULL, &lm, err)) != PEFT_OK)
		return rc;
	/* as training, every layer keeps its cache; all prompt, no targets, so nothing runs backward */
	rc = causal_lm_loss(lm, &b, 1.0, &loss, &targets, err);
	for (int l = 0; rc == PEFT_OK && l < c->num_layers; l++)
	{
		memcpy(k + (size_t) l * n * KV, lm->acts[l].kc, sizeof(real) * n * KV);
		memcpy(v + (size_t) l * n * KV, lm->acts[l].vc, sizeof(real) * n * KV);
	}
	causal_lm_free(lm);
	return rc;
}
