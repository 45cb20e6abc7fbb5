/*
 * decoder.c - a LLaMA-family decoder's forward pass on the CPU: per layer
 * RMSNorm, the q/k/v products, rotary embeddings, the new keys and values
 * into the cache, causal grouped-query attention, the output product and
 * residual; RMSNorm, gate/up products, SwiGLU, the down product and
 * residual; then the final RMSNorm and the output head for the rows whose
 * logits are wanted.  Products run on the quantized weights (quant.h).
 */
#include "decoder.h"

#include <stdlib.h>
#include <string.h>

#include "decoder_adapter.h"
#include "ops_decoder.h"
#include "quant.h"

/* Rows per pass of a long prefill: bounds the scratch buffers; longer inputs run in chunks. */
#define DECODER_MAX_ROWS 512

struct Decoder
{
	const LlamaModel *model;
	DecoderAdapter *adapter;	/* every sequence's (NULL: the base model), unless slot_adapter */
	DecoderAdapter **slot_adapter;	/* [slots] each sequence's own, or NULL: adapter for all */
	int		   *slot_V;			/* [slots] its virtual positions (with slot_adapter) */
	bool		exact_head;		/* the output head in float sums, not int16 activations (parity checks) */
	int			V;				/* virtual positions before every sequence (the most of any slot's) */
	DecoderRoom room;			/* what the scratch holds for adapters (V included) */
	int			slots;
	int			ctx;			/* cache positions per sequence: V + the caller's */
	size_t		kv_dim;			/* num_kv_heads * head_dim */
	float	   *kcache;			/* [layers][slots][ctx][kv_dim] */
	float	   *vcache;
	/* scratch for up to cap rows */
	int			cap;
	float	   *x;				/* [cap, hidden] residual stream */
	float	   *xn;				/* [cap, hidden] normalised */
	float	   *q;				/* [cap, heads * head_dim] */
	float	   *k;				/* [cap, kv_dim] */
	float	   *v;				/* [cap, kv_dim] */
	float	   *att;			/* [cap, heads * head_dim] */
	float	   *proj;			/* [cap, hidden] */
	float	   *gate;			/* [cap, ffn] */
	float	   *up;				/* [cap, ffn] */
	int32_t    *rows_slot;		/* [cap] */
	int32_t    *rows_pos;		/* [cap] */
	float	   *bn_down;		/* [cap, width] bottleneck adapters' scratch */
	float	   *bn_act;
	float	   *virt_x;			/* [cap, hidden] prompt tuning: virtual tokens' inputs */
	size_t		bytes;
};

/* calloc that adds to the decoder's byte count. */
static void *
dec_alloc(Decoder *d, size_t n, size_t size)
{
	void	   *p = calloc(n ? n : 1, size);

	if (p)
		d->bytes += n * size;
	return p;
}

/* Sequence s's adapter (NULL: the base model). */
static DecoderAdapter *
adapter_of(const Decoder *d, int s)
{
	return d->slot_adapter ? d->slot_adapter[s] : d->adapter;
}

/* Sequence s's virtual positions. */
static int
virtual_of(const Decoder *d, int s)
{
	return d->slot_adapter ? d->slot_V[s] : d->V;
}

PeftCode
decoder_create(const LlamaModel *model, DecoderAdapter *adapter, int slots, int ctx, Decoder **out,
			   PeftError *err)
{
	return decoder_create_mixed(model, &adapter, false, slots, ctx, out, err);
}

void
decoder_room_add(DecoderRoom *room, const DecoderAdapter *ad)
{
	int			v = decoder_adapter_virtual_tokens(ad);
	int			wd = ad && ad->o.method == DAD_BOTTLENECK ? ad->bneck_width : 0;

	room->virtual_tokens = v > room->virtual_tokens ? v : room->virtual_tokens;
	room->bottleneck_width = wd > room->bottleneck_width ? wd : room->bottleneck_width;
	room->prompt_inputs |= ad && ad->o.method == DAD_PROMPT;
}

/*
 * A decoder with room for adapters, sequences through adapters[s]
 * (per_slot, adapters may be NULL: every slot on the base model) or
 * adapters[0] (every one).
 */
static PeftCode
create_decoder(const LlamaModel *model, const DecoderRoom *room, DecoderAdapter *const *adapters,
			   bool per_slot, int slots, int ctx, Decoder **out, PeftError *err)
{
	const LlamaConfig *c = &model->cfg;
	Decoder    *d;
	size_t		cache;
	size_t		qdim = (size_t) c->num_heads * c->head_dim;
	int			cap;
	int			V = room->virtual_tokens;
	int			width = room->bottleneck_width;

	*out = NULL;
	if (slots < 1 || slots > 4096 || ctx < 1 || ctx + V > c->context_length)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "a decoder for %d sequences of %d positions%s (the model has %d)",
						 slots, ctx, V ? " after the adapter's virtual tokens" : "", c->context_length);
	if ((d = calloc(1, sizeof(Decoder))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a decoder");
	d->model = model;
	d->adapter = per_slot ? NULL : adapters[0];
	d->V = V;
	d->room = *room;
	if (per_slot)
	{
		d->slot_adapter = dec_alloc(d, slots, sizeof(DecoderAdapter *));
		d->slot_V = dec_alloc(d, slots, sizeof(int));
		for (int s = 0; adapters && d->slot_adapter && d->slot_V && s < slots; s++)
		{
			d->slot_adapter[s] = adapters[s];
			d->slot_V[s] = decoder_adapter_virtual_tokens(adapters[s]);
		}
	}
	ctx += V;
	d->slots = slots;
	d->ctx = ctx;
	d->kv_dim = (size_t) c->num_kv_heads * c->head_dim;
	cache = (size_t) c->num_layers * slots * ctx * d->kv_dim;
	cap = slots * ctx < DECODER_MAX_ROWS ? slots * ctx : DECODER_MAX_ROWS;
	d->cap = cap;
	d->kcache = dec_alloc(d, cache, sizeof(float));
	d->vcache = dec_alloc(d, cache, sizeof(float));
	d->x = dec_alloc(d, (size_t) cap * c->hidden_size, sizeof(float));
	d->xn = dec_alloc(d, (size_t) cap * c->hidden_size, sizeof(float));
	d->q = dec_alloc(d, (size_t) cap * qdim, sizeof(float));
	d->k = dec_alloc(d, (size_t) cap * d->kv_dim, sizeof(float));
	d->v = dec_alloc(d, (size_t) cap * d->kv_dim, sizeof(float));
	d->att = dec_alloc(d, (size_t) cap * qdim, sizeof(float));
	d->proj = dec_alloc(d, (size_t) cap * c->hidden_size, sizeof(float));
	d->gate = dec_alloc(d, (size_t) cap * c->intermediate_size, sizeof(float));
	d->up = dec_alloc(d, (size_t) cap * c->intermediate_size, sizeof(float));
	d->rows_slot = dec_alloc(d, cap, sizeof(int32_t));
	d->rows_pos = dec_alloc(d, cap, sizeof(int32_t));
	d->bn_down = dec_alloc(d, (size_t) cap * width, sizeof(float));
	d->bn_act = dec_alloc(d, (size_t) cap * width, sizeof(float));
	d->virt_x = dec_alloc(d, room->prompt_inputs ? (size_t) cap * c->hidden_size : 0, sizeof(float));
	if (!d->bn_down || !d->bn_act || !d->virt_x || (per_slot && (!d->slot_adapter || !d->slot_V)) ||
		!d->kcache || !d->vcache || !d->x || !d->xn || !d->q || !d->k || !d->v || !d->att ||
		!d->proj || !d->gate || !d->up || !d->rows_slot || !d->rows_pos)
	{
		size_t		want = d->bytes;

		decoder_free(d);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for a decoder of %d sequences x %d positions (%zu MB)",
						 slots, ctx, want >> 20);
	}
	*out = d;
	return PEFT_OK;
}

/*
 * A decoder whose sequences use adapters[s] (per_slot) or adapters[0]
 * (every one); see decoder.h.
 */
PeftCode
decoder_create_mixed(const LlamaModel *model, DecoderAdapter *const *adapters, bool per_slot,
					 int slots, int ctx, Decoder **out, PeftError *err)
{
	DecoderRoom room = {0};

	for (int s = 0; s < (per_slot ? slots : 1) && slots >= 1; s++)
		decoder_room_add(&room, adapters[s]);
	return create_decoder(model, &room, adapters, per_slot, slots, ctx, out, err);
}

PeftCode
decoder_create_room(const LlamaModel *model, const DecoderRoom *room, int slots, int ctx,
					Decoder **out, PeftError *err)
{
	return create_decoder(model, room, NULL, true, slots, ctx, out, err);
}

bool
decoder_room_holds(const Decoder *d, const DecoderAdapter *ad)
{
	DecoderRoom need = {0};

	decoder_room_add(&need, ad);
	return d->slot_adapter != NULL && need.virtual_tokens <= d->room.virtual_tokens &&
		need.bottleneck_width <= d->room.bottleneck_width &&
		(!need.prompt_inputs || d->room.prompt_inputs);
}

PeftCode
decoder_set_slot_adapter(Decoder *d, int s, DecoderAdapter *ad, PeftError *err)
{
	if (d->slot_adapter == NULL || s < 0 || s >= d->slots)
		return peft_fail(err, PEFT_ERR_INTERNAL, "sequence %d of a decoder without an adapter per sequence "
						 "or outside its %d", s, d->slots);
	/* the scratch and the cache's virtual positions were sized at creation */
	if (!decoder_room_holds(d, ad))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "the adapter needs more room (virtual tokens, bottleneck width, prompt inputs) "
						 "than the decoder reserved");
	d->slot_adapter[s] = ad;
	d->slot_V[s] = decoder_adapter_virtual_tokens(ad);
	return PEFT_OK;
}

size_t
decoder_bytes(const Decoder *dec)
{
	return dec ? dec->bytes + sizeof(Decoder) : 0;
}

void
decoder_free(Decoder *d)
{
	if (d == NULL)
		return;
	free(d->kcache);
	free(d->vcache);
	free(d->x);
	free(d->xn);
	free(d->q);
	free(d->k);
	free(d->v);
	free(d->att);
	free(d->proj);
	free(d->gate);
	free(d->up);
	free(d->rows_slot);
	free(d->rows_pos);
	free(d->bn_down);
	free(d->bn_act);
	free(d->virt_x);
	free(d->slot_adapter);
	free(d->slot_V);
	free(d);
}

void
decoder_set_exact_head(Decoder *dec, bool exact)
{
	dec->exact_head = exact;
}

/* y[N, m.rows] = x[N, m.cols] m^T */
static void
product(const QMatrix *m, const float *x, int N, float *y)
{
	quant_matmul(m->type, m->data, m->rows, m->cols, x, N, y);
}

/* How many rows from r on belong to sequences of the same adapter (a segment). */
static int
same_adapter_run(const Decoder *d, int r, int N)
{
	DecoderAdapter *ad = adapter_of(d, d->rows_slot[r]);
	int			n = 1;

	while (r + n < N && adapter_of(d, d->rows_slot[r + n]) == ad)
		n++;
	return n;
}

/*
 * y = linear w of layer l (weight W) applied to x, through the adapter
 * when there is one; with an adapter per sequence, the product with the
 * base weights once over every row, then each segment's adapter on its
 * rows (S-LoRA's way).
 */
static void
linear(Decoder *d, int l, int w, const QMatrix *W, const float *x, int N, float *y)
{
	if (d->slot_adapter == NULL)
	{
		decoder_adapter_linear(d->adapter, W, l, w, x, N, y, NULL, false);
		return;
	}
	decoder_adapter_linear(NULL, W, l, w, x, N, y, NULL, false);
	for (int r = 0; r < N;)
	{
		int			n = same_adapter_run(d, r, N);

		decoder_adapter_linear_delta(adapter_of(d, d->rows_slot[r]), W, l, w, x + (size_t) r * W->cols,
									 n, y + (size_t) r * W->rows);
		r += n;
	}
}

/* Bottleneck adapters at place (0 after attention, 1 after the feed-forward) on d->proj, per segment. */
static void
bottleneck(Decoder *d, int l, int place, int N)
{
	size_t		C = d->model->cfg.hidden_size;

	for (int r = 0; r < N;)
	{
		int			n = d->slot_adapter ? same_adapter_run(d, r, N) : N;
		DecoderAdapter *ad = adapter_of(d, d->rows_slot[r]);

		if (decoder_adapter_has_bottleneck(ad, l, place))
			decoder_adapter_bottleneck(ad, l, place, d->proj + r * C, n, NULL, d->bn_down, d->bn_act);
		r += n;
	}
}

/* Copy the new rows' keys and values into one layer's cache. */
static void
store_kv(Decoder *d, int layer, int N)
{
	size_t		layer_off = (size_t) layer * d->slots * d->ctx * d->kv_dim;

	for (int r = 0; r < N; r++)
	{
		size_t		at = layer_off + ((size_t) d->rows_slot[r] * d->ctx + d->rows_pos[r]) * d->kv_dim;

		memcpy(d->kcache + at, d->k + (size_t) r * d->kv_dim, d->kv_dim * sizeof(float));
		memcpy(d->vcache + at, d->v + (size_t) r * d->kv_dim, d->kv_dim * sizeof(float));
	}
}

/* One decoder block over the N rows in d->x (in place). */
static void
run_layer(Decoder *d, int l, int N)
{
	const LlamaConfig *c = &d->model->cfg;
	const LlamaLayer *L = &d->model->layers[l];
	size_t		layer_off = (size_t) l * d->slots * d->ctx * d->kv_dim;
	size_t		n_hidden = (size_t) N * c->hidden_size;

	rmsnorm_forward(d->xn, NULL, d->x, L->attn_norm, N, c->hidden_size, (real) c->rms_eps);
	linear(d, l, LLAMA_Q, &L->wq, d->xn, N, d->q);
	linear(d, l, LLAMA_K, &L->wk, d->xn, N, d->k);
	linear(d, l, LLAMA_V, &L->wv, d->xn, N, d->v);
	rope_forward(d->q, d->rows_pos, N, c->num_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	rope_forward(d->k, d->rows_pos, N, c->num_kv_heads, c->head_dim, (real) c->rope_base, c->rope_layout);
	store_kv(d, l, N);
	gqa_attention_forward(d->att, NULL, d->q, d->kcache + layer_off, d->vcache + layer_off,
						  d->rows_slot, d->rows_pos, N, c->num_heads, c->num_kv_heads,
						  c->head_dim, d->ctx);
	linear(d, l, LLAMA_O, &L->wo, d->att, N, d->proj);
	bottleneck(d, l, 0, N);
	for (size_t i = 0; i < n_hidden; i++)
		d->x[i] += d->proj[i];
	rmsnorm_forward(d->xn, NULL, d->x, L->ffn_norm, N, c->hidden_size, (real) c->rms_eps);
	linear(d, l, LLAMA_GATE, &L->w_gate, d->xn, N, d->gate);
	linear(d, l, LLAMA_UP, &L->w_up, d->xn, N, d->up);
	swiglu_forward(d->gate, d->gate, d->up, (size_t) N * c->intermediate_size);
	linear(d, l, LLAMA_DOWN, &L->w_down, d->gate, N, d->proj);
	bottleneck(d, l, 1, N);
	for (size_t i = 0; i < n_hidden; i++)
		d->x[i] += d->proj[i];
}

/* Check the rows of a call against the cache's bounds. */
static PeftCode
check_rows(const Decoder *d, const int32_t *ids, const int32_t *slot, const int32_t *pos, int N,
		   const int32_t *logit_rows, int nlogits, PeftError *err)
{
	const LlamaConfig *c = &d->model->cfg;

	if (N < 1 || nlogits < 0 || nlogits > N)
		return peft_fail(err, PEFT_ERR_INVALID, "decoder call of %d rows and %d logit rows", N, nlogits);
	for (int r = 0; r < N; r++)
	{
		if (ids[r] < 0 || ids[r] >= c->vocab_size)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d is outside the vocabulary of %d",
							 ids[r], c->vocab_size);
		if (slot[r] < 0 || slot[r] >= d->slots || pos[r] < 0 || pos[r] >= d->ctx - virtual_of(d, slot[r]))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "row at sequence %d position %d is outside the cache (%d x %d)",
							 slot[r], pos[r], d->slots,
							 d->ctx - (slot[r] >= 0 && slot[r] < d->slots ? virtual_of(d, slot[r]) : d->V));
	}
	for (int i = 0; i < nlogits; i++)
		if (logit_rows[i] < 0 || logit_rows[i] >= N || (i > 0 && logit_rows[i] <= logit_rows[i - 1]))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "logit row %d is not one of the %d rows in increasing order",
							 logit_rows[i], N);
	return PEFT_OK;
}

/*
 * The forward pass of up to d->cap rows (ids NULL: d->x holds their
 * inputs already; pos are cache positions); logits of those listed
 * (indexes into this chunk).
 */
static void
forward_chunk(Decoder *d, const int32_t *ids, const int32_t *slot, const int32_t *pos, int N,
			  const int32_t *want, int nwant, float *logits)
{
	const LlamaModel *m = d->model;
	const LlamaConfig *c = &m->cfg;
	size_t		row_bytes = quant_row_bytes(m->embed.type, c->hidden_size);

	for (int r = 0; r < N; r++)
	{
		if (ids)
			quant_dequantize(m->embed.type, (const uint8_t *) m->embed.data + (size_t) ids[r] * row_bytes,
							 c->hidden_size, d->x + (size_t) r * c->hidden_size);
		d->rows_slot[r] = slot[r];
		d->rows_pos[r] = pos[r];
	}
	for (int l = 0; l < c->num_layers; l++)
		run_layer(d, l, N);
	if (nwant == 0)
		return;
	/* gather the wanted rows, normalise, and apply the head */
	for (int i = 0; i < nwant; i++)
		memcpy(d->proj + (size_t) i * c->hidden_size, d->x + (size_t) want[i] * c->hidden_size,
			   sizeof(float) * c->hidden_size);
	rmsnorm_forward(d->xn, NULL, d->proj, m->final_norm, nwant, c->hidden_size, (real) c->rms_eps);
	if (d->exact_head)
		quant_matmul_reference(m->output.type, m->output.data, m->output.rows, m->output.cols, d->xn,
							   nwant, logits);
	else
		product(&m->output, d->xn, nwant, logits);
}

/*
 * Put the adapter's virtual tokens at cache positions 0 .. V-1 of sequence
 * s: prefix tuning's keys and values straight into every layer's cache,
 * prompt tuning's embeddings through the layers as tokens.
 */
static void
start_sequence(Decoder *d, int s)
{
	const LlamaConfig *c = &d->model->cfg;
	int			C = c->hidden_size;
	DecoderAdapter *ad = adapter_of(d, s);
	int			V = virtual_of(d, s);

	if (ad->o.method == DAD_PREFIX)
	{
		for (int l = 0; l < c->num_layers; l++)
		{
			size_t		at = ((size_t) l * d->slots + s) * d->ctx * d->kv_dim;

			decoder_adapter_prefix_kv(ad, l, d->kcache + at, d->vcache + at);
		}
		return;
	}
	for (int start = 0; start < V; start += d->cap)
	{
		int			n = V - start < d->cap ? V - start : d->cap;

		for (int v = 0; v < n; v++)
		{
			memcpy(d->x + (size_t) v * C, decoder_adapter_prompt_row(ad, start + v), sizeof(float) * C);
			d->rows_slot[v] = s;
			d->rows_pos[v] = start + v;
		}
		forward_chunk(d, NULL, d->rows_slot, d->rows_pos, n, NULL, 0, NULL);
	}
}

/*
 * Whether the N rows are at N different sequences: a decoding step the
 * products' grouped route takes (at most QUANT_GROUPED_MAX_N rows; prompts
 * are longer runs).
 */
static bool
one_row_per_sequence(const int32_t *slot, int N)
{
	if (N > QUANT_GROUPED_MAX_N)
		return false;
	for (int r = 0; r < N; r++)
		for (int q = 0; q < r; q++)
			if (slot[q] == slot[r])
				return false;
	return true;
}

PeftCode
decoder_forward(Decoder *d, const int32_t *ids, const int32_t *slot, const int32_t *pos, int N,
				const int32_t *logit_rows, int nlogits, float *logits, PeftError *err)
{
	PeftCode	rc;
	int32_t    *want,
			   *cache_pos = NULL;
	int			vocab = d->model->cfg.vocab_size;
	bool		rows_alone;

	if ((rc = check_rows(d, ids, slot, pos, N, logit_rows, nlogits, err)) != PEFT_OK)
		return rc;
	if ((want = malloc(sizeof(int32_t) * (nlogits > 0 ? nlogits : 1))) == NULL ||
		(cache_pos = malloc(sizeof(int32_t) * N)) == NULL)
	{
		free(want);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory in the decoder");
	}
	for (int r = 0; r < N; r++)
	{
		if (pos[r] == 0 && virtual_of(d, slot[r]) > 0)
			start_sequence(d, slot[r]);
		cache_pos[r] = pos[r] + virtual_of(d, slot[r]);
	}
	/* a decoding step (one row per sequence): each row computed as it would be alone */
	rows_alone = quant_set_rows_alone(one_row_per_sequence(slot, N));

	/*
	 * Chunks of at most cap rows, in order: a sequence's earlier positions
	 * reach the cache before its later rows attend to them.
	 */
	for (int start = 0; start < N; start += d->cap)
	{
		int			n = N - start < d->cap ? N - start : d->cap;
		int			nwant = 0;
		int			first = -1;

		for (int i = 0; i < nlogits; i++)
			if (logit_rows[i] >= start && logit_rows[i] < start + n)
			{
				if (first < 0)
					first = i;
				want[nwant++] = logit_rows[i] - start;
			}
		/* the wanted rows of this chunk must be contiguous in logit_rows' order */
		forward_chunk(d, ids + start, slot + start, cache_pos + start, n, want, nwant,
					  nwant ? logits + (size_t) first * vocab : NULL);
	}
	quant_set_rows_alone(rows_alone);
	free(want);
	free(cache_pos);
	return PEFT_OK;
}
