/*
 * network.c - forward and backward of frozen BERT + LoRA + task head.
 *
 * Batches run unpadded: the real tokens (mask 1) of the padded [B, T]
 * batch are packed into N rows (ops_varlen.h); embeddings, every linear
 * and adapter, GELU, LayerNorm and dropout run on those N rows only, and
 * attention runs per sequence over its own tokens.  Padding costs nothing,
 * and the results equal the padded computation's on the real tokens up to
 * float rounding (padded keys get attention weight exactly 0 there).
 * Dropout masks are drawn over the packed rows.
 *
 * The base weights are never written and never get gradients: backward
 * computes only what the adapter and the head need (input gradients of
 * frozen linears, no weight gradients), and stops below the lowest layer.
 * The query, key and value projections run as one product per layer
 * against a private [3C, C] copy of their weights (one pass over the
 * input instead of three); their adapters stay separate, as in PEFT.
 */
#include "network.h"
#include "matmul.h"
#include "ops.h"
#include "ops_varlen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Saved activations of one encoder layer, over the N packed rows. */
typedef struct LayerActs
{
	real	   *qkv;			/* [N, 3C] query | key | value of each row */
	real	   *probs;			/* attention blocks (ops_varlen.h), softmax before dropout */
	real	   *ctx;			/* [N, C] attention output */
	real	   *res1;			/* [N, C] dropout(attn dense) + x: LayerNorm 1 input */
	real	   *h1;				/* [N, C] LayerNorm 1 output */
	real	   *ln1_mean;		/* [N] */
	real	   *ln1_rstd;
	real	   *inter;			/* [N, FF] before GELU */
	real	   *gel;			/* [N, FF] after GELU */
	real	   *res2;			/* [N, C] dropout(output dense) + h1 */
	real	   *ln2_mean;
	real	   *ln2_rstd;
	uint8_t    *keep_attn;		/* dropout masks, NULL without dropout */
	uint8_t    *keep_ao;
	uint8_t    *keep_o;
	real	   *lora_xa[BERT_NUM_LINEAR];	/* [N, r] input times A^T */
	real	   *lora_xd[BERT_NUM_LINEAR];	/* [N, in] input after LoRA dropout */
	uint8_t    *lora_keep[BERT_NUM_LINEAR];
} LayerActs;

struct NetworkActivations
{
	size_t		cap_rows;		/* packed rows N the buffers hold */
	size_t		cap_probs;		/* attention block elements they hold */
	size_t		cap_seqs;		/* sequences B they hold */
	bool		train_layout;	/* every layer has its own buffers */
	void	  **blocks;			/* every allocation, for freeing */
	int			nblocks;
	int			cap_blocks;

	/* the packing of the last forward (own allocations, kept across acts_release) */
	int			B;
	int			N;
	size_t		nprobs;			/* elements of one layer's attention blocks */
	int32_t    *seq_start;		/* [B+1] sequence b is rows [seq_start[b], seq_start[b+1]) */
	int32_t    *rows;			/* [N] b*T + t of each packed row */
	size_t		cap_pack;		/* rows entries held */
	int			cap_pack_seqs;	/* seq_start entries held */

	real	  **h;				/* [L+1][N, C] layer inputs/outputs (2 in inference) */
	real	   *emb;			/* [N, C] embeddings before LayerNorm */
	real	   *ln0_mean;
	real	   *ln0_rstd;
	uint8_t    *keep_emb;
	LayerActs  *layers;			/* [L] (1 in inference) */
	real	   *last;			/* points at the final hidden states */
	real	   *pooled;			/* [B, C] */
	real	   *norm;			/* [B] */
	real	   *head_out;		/* [B, K] */
	real	   *head_probs;		/* [B, K] */

	/* backward scratch */
	real	   *dh;				/* [N, C] */
	real	   *dx;				/* [N, C] */
	real	   *dres;			/* [N, C] */
	real	   *dh1;			/* [N, C] */
	real	   *dctx;			/* [N, C] */
	real	   *dqkv;			/* [N, 3C] */
	real	   *dgel;			/* [N, FF] */
	real	   *dinter;			/* [N, FF] */
	real	   *dxa;			/* [N, r] */
	real	   *dxd;			/* [N, max(C, FF)] */
	real	   *datt;			/* attention blocks; the dropped weights in forward */
	real	   *dpooled;		/* [B, C] */
	real	   *dhead;			/* [B, K] */
};

/* ---- target modules ------------------------------------------------------ */

/*
 * Parse PEFT target_modules: an entry matches a module whose path equals it
 * or ends with "." + entry, so "dense" targets all three dense layers and
 * "output.dense" both attention.output.dense and output.dense, as in PEFT.
 */
PeftCode
lora_parse_targets(bool targets[BERT_NUM_LINEAR], const char *const *names,
				   int count, PeftError *err)
{
	static const char *const paths[BERT_NUM_LINEAR] = {
		"attention.self.query", "attention.self.key", "attention.self.value",
		"attention.output.dense", "intermediate.dense", "output.dense"
	};

	memset(targets, 0, sizeof(bool) * BERT_NUM_LINEAR);
	for (int i = 0; i < count; i++)
	{
		const char *name = names[i];
		size_t		nlen = strlen(name);
		bool		matched = false;

		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			size_t		plen = strlen(paths[w]);

			if ((plen == nlen && strcmp(paths[w], name) == 0) ||
				(plen > nlen && paths[w][plen - nlen - 1] == '.' &&
				 strcmp(paths[w] + plen - nlen, name) == 0))
			{
				targets[w] = true;
				matched = true;
			}
		}
		if (!matched)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "target module \"%s\" matches no linear layer of the model "
							 "(use query, key, value, attention.output.dense, "
							 "intermediate.dense, output.dense or dense)", name);
	}
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (targets[w])
			return PEFT_OK;
	return peft_fail(err, PEFT_ERR_INVALID, "target_modules is empty");
}

/* ---- construction -------------------------------------------------------- */

/* Fill x[n] with U(-bound, bound). */
static void
uniform_fill(real *x, size_t n, double bound, PeftRng *rng)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (real) ((2.0 * peft_rng_uniform(rng) - 1.0) * bound);
}

/* Check the options against the base model. */
static PeftCode
check_options(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	bool		any = false;

	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		any |= o->lora.targets[w];
	if (any && (o->lora.r < 1 || o->lora.r > 4096))
		return peft_fail(err, PEFT_ERR_INVALID, "r must be between 1 and 4096, not %d", o->lora.r);
	if (any && !(o->lora.alpha > 0 && isfinite(o->lora.alpha)))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_alpha must be positive");
	if (!(o->lora.dropout >= 0 && o->lora.dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_dropout must be in [0, 1)");
	if (!(o->hidden_dropout >= 0 && o->hidden_dropout < 1) ||
		!(o->attention_dropout >= 0 && o->attention_dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "dropout must be in [0, 1)");
	if (o->num_labels < 0 || o->num_labels > 100000)
		return peft_fail(err, PEFT_ERR_INVALID, "num_labels %d is out of range", o->num_labels);
	if (o->task == TASK_REGRESSION && o->num_labels != 1)
		return peft_fail(err, PEFT_ERR_INVALID, "regression needs exactly one output");
	if (o->task == TASK_CLASSIFICATION && o->num_labels == 1)
		return peft_fail(err, PEFT_ERR_INVALID, "classification needs at least two classes");
	return PEFT_OK;
}

/* Build the network and initialise it as PEFT does. */
PeftCode
network_create(const BertModel *base, const NetworkOptions *opts,
			   Network **out, PeftError *err)
{
	const ModelConfig *cfg = &base->cfg;
	Network    *net;
	char		path[128];
	char		name[PARAM_NAME_LEN];
	PeftRng		init_rng;
	PeftCode	rc;

	*out = NULL;
	if ((rc = check_options(base, opts, err)) != PEFT_OK)
		return rc;
	net = calloc(1, sizeof(Network));
	if (net == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	net->base = base;
	net->opts = *opts;
	net->scaling = (real) (opts->lora.rslora ? opts->lora.alpha / sqrt((double) opts->lora.r)
						   : opts->lora.alpha / (opts->lora.r > 0 ? opts->lora.r : 1));
	net->lora = malloc(sizeof(*net->lora) * cfg->num_layers);
	net->act = calloc(1, sizeof(NetworkActivations));
	if (net->lora == NULL || net->act == NULL)
	{
		network_free(net);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	net->head_weight = net->head_bias = -1;

	/* Declare parameters in PEFT's order: per layer, per linear, A then B. */
	for (int l = 0; l < cfg->num_layers; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &base->layers[l].linear[w];

			net->lora[l][w][0] = net->lora[l][w][1] = -1;
			if (!opts->lora.targets[w])
				continue;
			bert_linear_path(path, sizeof(path), l, w);
			snprintf(name, sizeof(name), "base_model.model.%s.lora_A.weight", path);
			net->lora[l][w][0] = paramset_add(&net->params, name, 2, opts->lora.r, lin->in, err);
			snprintf(name, sizeof(name), "base_model.model.%s.lora_B.weight", path);
			net->lora[l][w][1] = paramset_add(&net->params, name, 2, lin->out, opts->lora.r, err);
			if (net->lora[l][w][0] < 0 || net->lora[l][w][1] < 0)
			{
				network_free(net);
				return err ? err->code : PEFT_ERR_NOMEM;
			}
		}
	if (opts->num_labels > 0)
	{
		net->head_weight = paramset_add(&net->params, "base_model.model.classifier.weight", 2,
										opts->num_labels, cfg->hidden_size, err);
		net->head_bias = paramset_add(&net->params, "base_model.model.classifier.bias", 1,
									  opts->num_labels, 0, err);
		if (net->head_weight < 0 || net->head_bias < 0)
		{
			network_free(net);
			return err ? err->code : PEFT_ERR_NOMEM;
		}
	}
	if ((rc = paramset_allocate(&net->params, err)) != PEFT_OK)
	{
		network_free(net);
		return rc;
	}

	/*
	 * PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
	 * B = 0; the head as torch.nn.Linear (weight and bias U(+-1/sqrt(in))).
	 */
	peft_rng_seed(&init_rng, opts->seed);
	for (int l = 0; l < cfg->num_layers; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			if (net->lora[l][w][0] >= 0)
			{
				const Param *a = &net->params.items[net->lora[l][w][0]];

				uniform_fill(param_value(&net->params, net->lora[l][w][0]), a->count,
							 1.0 / sqrt((double) a->shape[1]), &init_rng);
			}
	if (net->head_weight >= 0)
	{
		double		bound = 1.0 / sqrt((double) cfg->hidden_size);

		uniform_fill(param_value(&net->params, net->head_weight),
					 net->params.items[net->head_weight].count, bound, &init_rng);
		uniform_fill(param_value(&net->params, net->head_bias),
					 net->params.items[net->head_bias].count, bound, &init_rng);
	}
	peft_rng_seed(&net->rng, opts->seed ^ 0x5eed5eed5eedULL);
	*out = net;
	return PEFT_OK;
}

/* Free every activation buffer (the packing arrays stay). */
static void
acts_release(NetworkActivations *act)
{
	for (int i = 0; i < act->nblocks; i++)
		free(act->blocks[i]);
	free(act->blocks);
	free(act->h);
	free(act->layers);
	act->blocks = NULL;
	act->nblocks = act->cap_blocks = 0;
	act->h = NULL;
	act->layers = NULL;
	act->cap_rows = act->cap_probs = act->cap_seqs = 0;
	act->train_layout = false;
	act->last = NULL;
}

/* Free a network (NULL allowed). */
void
network_free(Network *net)
{
	if (net == NULL)
		return;
	if (net->act)
	{
		acts_release(net->act);
		free(net->act->seq_start);
		free(net->act->rows);
		free(net->act);
	}
	paramset_free(&net->params);
	free(net->lora);
	free(net);
}

/* ---- activation buffers -------------------------------------------------- */

/* One zeroed allocation of n elements of size sz, remembered for freeing. */
static void *
acts_alloc(NetworkActivations *act, size_t n, size_t sz, bool *ok)
{
	void	   *p;

	if (!*ok)
		return NULL;
	if (act->nblocks == act->cap_blocks)
	{
		int			cap = act->cap_blocks ? act->cap_blocks * 2 : 256;
		void	  **grown = realloc(act->blocks, cap * sizeof(void *));

		if (grown == NULL)
		{
			*ok = false;
			return NULL;
		}
		act->blocks = grown;
		act->cap_blocks = cap;
	}
	p = calloc(n ? n : 1, sz);
	if (p == NULL)
		*ok = false;
	else
		act->blocks[act->nblocks++] = p;
	return p;
}

/*
 * Capacity for need elements: the current one when it is enough, else half
 * as much again as the larger of need and the current capacity (at most
 * bound, the most a batch of this shape can need).  Batches' real lengths
 * vary, and every growth reallocates and page-faults all the buffers: the
 * headroom makes a run settle after one or two.
 */
static size_t
grow_capacity(size_t need, size_t cap, size_t bound)
{
	size_t		want = need > cap ? need : cap;

	if (need <= cap)
		return cap;
	want += want / 2;
	if (want > bound)
		want = bound;
	return want > need ? want : need;
}

/* Make sure the buffers hold the packed batch of act (training keeps every layer). */
static PeftCode
acts_ensure(Network *net, const Batch *b, bool train, PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		NH = cfg->num_heads;
	size_t		C = cfg->hidden_size;
	size_t		FF = cfg->intermediate_size;
	size_t		r = net->opts.lora.r > 0 ? net->opts.lora.r : 1;
	size_t		K = net->opts.num_labels > 0 ? net->opts.num_labels : 1;
	size_t		padded = (size_t) b->B * b->T;
	size_t		rows;
	size_t		probs;
	size_t		seqs;
	bool		hidden_drop = net->opts.hidden_dropout > 0;
	bool		attn_drop = net->opts.attention_dropout > 0;
	bool		lora_drop = net->opts.lora.dropout > 0;
	int			nlayers;
	int			nh;
	bool		ok = true;

	if ((size_t) act->N <= act->cap_rows && act->nprobs <= act->cap_probs &&
		(size_t) b->B <= act->cap_seqs && (!train || act->train_layout))
		return PEFT_OK;
	rows = grow_capacity(act->N, act->cap_rows, padded);
	probs = grow_capacity(act->nprobs, act->cap_probs, padded * NH * b->T);
	seqs = grow_capacity(b->B, act->cap_seqs, b->B);
	train = train || act->train_layout;
	acts_release(act);
	act->cap_rows = rows;
	act->cap_probs = probs;
	act->cap_seqs = seqs;
	act->train_layout = train;
	nlayers = train ? cfg->num_layers : 1;
	nh = train ? cfg->num_layers + 1 : 2;

	act->h = calloc(nh, sizeof(real *));
	act->layers = calloc(nlayers, sizeof(LayerActs));
	if (act->h == NULL || act->layers == NULL)
	{
		acts_release(act);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for activations");
	}
	for (int i = 0; i < nh; i++)
		act->h[i] = acts_alloc(act, rows * C, sizeof(real), &ok);
	act->emb = acts_alloc(act, rows * C, sizeof(real), &ok);
	act->ln0_mean = acts_alloc(act, rows, sizeof(real), &ok);
	act->ln0_rstd = acts_alloc(act, rows, sizeof(real), &ok);
	if (train && hidden_drop)
		act->keep_emb = acts_alloc(act, rows * C, 1, &ok);
	for (int l = 0; l < nlayers; l++)
	{
		LayerActs  *la = &act->layers[l];

		la->qkv = acts_alloc(act, rows * 3 * C, sizeof(real), &ok);
		la->probs = acts_alloc(act, probs, sizeof(real), &ok);
		la->ctx = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->res1 = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->h1 = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->ln1_mean = acts_alloc(act, rows, sizeof(real), &ok);
		la->ln1_rstd = acts_alloc(act, rows, sizeof(real), &ok);
		la->inter = acts_alloc(act, rows * FF, sizeof(real), &ok);
		la->gel = acts_alloc(act, rows * FF, sizeof(real), &ok);
		la->res2 = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->ln2_mean = acts_alloc(act, rows, sizeof(real), &ok);
		la->ln2_rstd = acts_alloc(act, rows, sizeof(real), &ok);
		if (train && attn_drop)
			la->keep_attn = acts_alloc(act, probs, 1, &ok);
		if (train && hidden_drop)
		{
			la->keep_ao = acts_alloc(act, rows * C, 1, &ok);
			la->keep_o = acts_alloc(act, rows * C, 1, &ok);
		}
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			size_t		in = (w == BERT_OUTPUT) ? FF : C;

			if (!net->opts.lora.targets[w])
				continue;
			la->lora_xa[w] = acts_alloc(act, rows * r, sizeof(real), &ok);
			if (train && lora_drop)
			{
				la->lora_xd[w] = acts_alloc(act, rows * in, sizeof(real), &ok);
				la->lora_keep[w] = acts_alloc(act, rows * in, 1, &ok);
			}
		}
	}
	act->pooled = acts_alloc(act, seqs * C, sizeof(real), &ok);
	act->norm = acts_alloc(act, seqs, sizeof(real), &ok);
	act->head_out = acts_alloc(act, seqs * K, sizeof(real), &ok);
	act->head_probs = acts_alloc(act, seqs * K, sizeof(real), &ok);
	if (train)
	{
		act->dh = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dx = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dres = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dh1 = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dctx = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dqkv = acts_alloc(act, rows * 3 * C, sizeof(real), &ok);
		act->dgel = acts_alloc(act, rows * FF, sizeof(real), &ok);
		act->dinter = acts_alloc(act, rows * FF, sizeof(real), &ok);
		act->dxa = acts_alloc(act, rows * r, sizeof(real), &ok);
		act->dxd = acts_alloc(act, rows * (FF > C ? FF : C), sizeof(real), &ok);
		act->datt = acts_alloc(act, probs, sizeof(real), &ok);
		act->dpooled = acts_alloc(act, seqs * C, sizeof(real), &ok);
		act->dhead = acts_alloc(act, seqs * K, sizeof(real), &ok);
	}
	if (!ok)
	{
		acts_release(act);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for activations of a %d x %d batch", b->B, b->T);
	}
	return PEFT_OK;
}

/* ---- forward ------------------------------------------------------------- */

/* Check a batch against the model before touching any table. */
static PeftCode
check_batch(const Network *net, const Batch *b, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;

	if (b->B < 1 || b->T < 1 || b->B > (1 << 20))
		return peft_fail(err, PEFT_ERR_INVALID, "empty or oversized batch (%d x %d)", b->B, b->T);
	if (b->T > cfg->max_position)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "sequence length %d exceeds the model's %d positions",
						 b->T, cfg->max_position);
	if ((size_t) b->B * b->T > (size_t) INT32_MAX / cfg->hidden_size)
		return peft_fail(err, PEFT_ERR_INVALID, "batch of %d x %d is too large", b->B, b->T);
	for (size_t i = 0; i < (size_t) b->B * b->T; i++)
		if (b->ids[i] < 0 || b->ids[i] >= cfg->vocab_size || (b->mask[i] & ~1) != 0)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d or mask %d out of range",
							 b->ids[i], b->mask[i]);
	return PEFT_OK;
}

/* Pack the real tokens of a checked batch: act's B, N, seq_start, rows, nprobs. */
static PeftCode
pack_batch(Network *net, const Batch *b, PeftError *err)
{
	NetworkActivations *act = net->act;
	size_t		padded = (size_t) b->B * b->T;

	if (act->cap_pack_seqs < b->B + 1)
	{
		int32_t    *grown = realloc(act->seq_start, sizeof(int32_t) * (b->B + 1));

		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		act->seq_start = grown;
		act->cap_pack_seqs = b->B + 1;
	}
	if (act->cap_pack < padded)
	{
		int32_t    *grown = realloc(act->rows, sizeof(int32_t) * padded);

		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		act->rows = grown;
		act->cap_pack = padded;
	}
	act->B = b->B;
	act->N = varlen_pack(act->seq_start, act->rows, b->mask, b->B, b->T);
	act->nprobs = varlen_attention_size(act->seq_start, b->B, net->base->cfg.num_heads);
	return PEFT_OK;
}

/* Apply dropout in place to x[n] when training, drawing a fresh mask. */
static void
maybe_dropout(Network *net, real *x, uint8_t *keep, double p, size_t n, bool train)
{
	if (!train || p <= 0)
		return;
	dropout_mask(keep, n, (real) p, &net->rng);
	dropout_forward(x, x, keep, (real) p, n);
}

/* out (row stride ldo) += scaling * (dropout(x) A^T) B^T where linear w has an adapter. */
static void
lora_forward(Network *net, LayerActs *la, int l, BertLinear w, real *out, int ldo,
			 const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	int			ia = net->lora[l][w][0];
	int			r = net->opts.lora.r;
	const real *xd = x;
	double		p = net->opts.lora.dropout;

	if (ia < 0)
		return;
	if (train && p > 0)
	{
		dropout_mask(la->lora_keep[w], (size_t) N * lin->in, (real) p, &net->rng);
		dropout_forward(la->lora_xd[w], x, la->lora_keep[w], (real) p, (size_t) N * lin->in);
		xd = la->lora_xd[w];
	}
	/* xa[N, r] = xd A^T */
	matmul_linear(la->lora_xa[w], r, xd, lin->in, param_value(&net->params, ia), NULL,
				  N, lin->in, r);
	/* out[N, out] += scaling * xa B^T */
	matmul(CblasNoTrans, CblasTrans, N, lin->out, r,
		   net->scaling, la->lora_xa[w], r,
		   param_value(&net->params, net->lora[l][w][1]), r, 1, out, ldo);
}

/* out[N, out] = x W^T + b, plus the adapter of linear w if it has one. */
static void
adapted_linear_forward(Network *net, LayerActs *la, int l, BertLinear w,
					   real *out, const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];

	matmul_linear(out, lin->out, x, lin->in, lin->weight, lin->bias, N, lin->in, lin->out);
	lora_forward(net, la, l, w, out, lin->out, x, N, train);
}

/* la->qkv[N, 3C] = query | key | value of x[N, C]: one product, then each adapter on its slice. */
static void
qkv_forward(Network *net, LayerActs *la, int l, const real *x, int N, bool train)
{
	size_t		C = net->base->cfg.hidden_size;

	matmul_linear(la->qkv, 3 * C, x, C, net->base->qkv_weight + l * 3 * C * C,
				  net->base->qkv_bias + l * 3 * C, N, C, 3 * C);
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		lora_forward(net, la, l, w, la->qkv + w * C, 3 * C, x, N, train);
}

/* Run the encoder over the packed real tokens; act->last receives the final hidden states. */
static PeftCode
encoder_forward(Network *net, const Batch *b, bool train, PeftError *err)
{
	const BertModel *m = net->base;
	const ModelConfig *cfg = &m->cfg;
	NetworkActivations *act = net->act;
	int			C = cfg->hidden_size;
	int			FF = cfg->intermediate_size;
	int			NH = cfg->num_heads;
	int			N;
	real		eps = (real) cfg->layer_norm_eps;
	double		hp = net->opts.hidden_dropout;
	double		ap = net->opts.attention_dropout;
	PeftCode	rc;

	act->last = NULL;
	if ((rc = check_batch(net, b, err)) != PEFT_OK ||
		(rc = pack_batch(net, b, err)) != PEFT_OK ||
		(rc = acts_ensure(net, b, train, err)) != PEFT_OK)
		return rc;
	N = act->N;

	varlen_embeddings_forward(act->emb, b->ids, NULL, act->rows, N, b->T,
							  m->word_embeddings, m->position_embeddings,
							  m->token_type_embeddings, C);
	layernorm_forward(act->h[0], act->ln0_mean, act->ln0_rstd, act->emb,
					  m->ln_emb_gamma, m->ln_emb_beta, N, C, eps);
	maybe_dropout(net, act->h[0], act->keep_emb, hp, (size_t) N * C, train);
	act->last = act->h[0];

	for (int l = 0; l < cfg->num_layers; l++)
	{
		const BertLayer *layer = &m->layers[l];
		LayerActs  *la = train ? &act->layers[l] : &act->layers[0];
		real	   *x = train ? act->h[l] : act->h[l % 2];
		real	   *y = train ? act->h[l + 1] : act->h[(l + 1) % 2];
		bool		drop_attn = train && ap > 0;

		qkv_forward(net, la, l, x, N, train);
		if (drop_attn)
			dropout_mask(la->keep_attn, act->nprobs, (real) ap, &net->rng);
		varlen_attention_forward(la->ctx, la->probs, drop_attn ? act->datt : NULL,
								 la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
								 drop_attn ? la->keep_attn : NULL, drop_attn ? (real) ap : 0,
								 act->seq_start, b->B, C, NH);

		adapted_linear_forward(net, la, l, BERT_ATTN_OUT, la->res1, la->ctx, N, train);
		maybe_dropout(net, la->res1, la->keep_ao, hp, (size_t) N * C, train);
		add_forward(la->res1, la->res1, x, (size_t) N * C);
		layernorm_forward(la->h1, la->ln1_mean, la->ln1_rstd, la->res1,
						  layer->ln_attn_gamma, layer->ln_attn_beta, N, C, eps);

		adapted_linear_forward(net, la, l, BERT_INTERMEDIATE, la->inter, la->h1, N, train);
		gelu_forward(la->gel, la->inter, (size_t) N * FF);
		adapted_linear_forward(net, la, l, BERT_OUTPUT, la->res2, la->gel, N, train);
		maybe_dropout(net, la->res2, la->keep_o, hp, (size_t) N * C, train);
		add_forward(la->res2, la->res2, la->h1, (size_t) N * C);
		layernorm_forward(y, la->ln2_mean, la->ln2_rstd, la->res2,
						  layer->ln_out_gamma, layer->ln_out_beta, N, C, eps);
		act->last = y;
	}
	return PEFT_OK;
}

/* pooled[B, C] from the packed final hidden states, as the model's pooling says. */
static void
pool_forward(Network *net)
{
	NetworkActivations *act = net->act;
	int			C = net->base->cfg.hidden_size;

	if (net->base->cfg.pooling == POOLING_CLS)
		varlen_cls_pool_forward(act->pooled, act->last, act->seq_start, act->B, C);
	else
		varlen_mean_pool_forward(act->pooled, act->last, act->seq_start, act->B, C);
}

/* Forward a batch through encoder, pooling and head; optional mean loss. */
PeftCode
network_forward(Network *net, const Batch *b, bool train, real *outputs,
				double *loss, PeftError *err)
{
	NetworkActivations *act;
	int			K = net->opts.num_labels;
	int			C = net->base->cfg.hidden_size;
	PeftCode	rc;

	if (K < 1)
		return peft_fail(err, PEFT_ERR_INVALID, "this network has no head");
	if ((rc = encoder_forward(net, b, train, err)) != PEFT_OK)
		return rc;
	act = net->act;
	pool_forward(net);
	matmul_linear(act->head_out, K, act->pooled, C, param_value(&net->params, net->head_weight),
				  param_value(&net->params, net->head_bias), b->B, C, K);
	if (outputs)
		memcpy(outputs, act->head_out, sizeof(real) * b->B * K);
	if (loss)
	{
		*loss = 0;
		if (net->opts.task == TASK_CLASSIFICATION && b->labels)
		{
			for (int i = 0; i < b->B; i++)
				if (b->labels[i] < 0 || b->labels[i] >= K)
					return peft_fail(err, PEFT_ERR_INVALID, "label %d out of range", b->labels[i]);
			*loss = cross_entropy_forward(act->head_probs, act->head_out, b->labels, b->B, K);
		}
		else if (net->opts.task == TASK_REGRESSION && b->targets)
			*loss = mse_forward(act->head_out, b->targets, b->B);
	}
	return PEFT_OK;
}

/* ---- backward ------------------------------------------------------------ */

/*
 * Gradients of the adapter of linear w, if it has one, given dout (row
 * stride ldd): LoRA A and B, and dx[N, in] += its input gradient (dx may
 * be NULL).
 */
static void
lora_backward(Network *net, LayerActs *la, int l, BertLinear w, real *dx,
			  const real *dout, int ldd, const real *x, int N)
{
	NetworkActivations *act = net->act;
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	int			ia = net->lora[l][w][0];
	int			ib = net->lora[l][w][1];
	int			r = net->opts.lora.r;
	int			in = lin->in;
	int			out = lin->out;
	double		p = net->opts.lora.dropout;
	const real *A;
	const real *Bm;
	const real *xd;

	if (ia < 0)
		return;
	A = param_value(&net->params, ia);
	Bm = param_value(&net->params, ib);
	xd = p > 0 ? la->lora_xd[w] : x;
	/* dB[out, r] += scaling * dout^T xa */
	matmul(CblasTrans, CblasNoTrans, out, r, N, net->scaling, dout, ldd,
		   la->lora_xa[w], r, 1, param_grad(&net->params, ib), r);
	/* dxa[N, r] = scaling * dout B */
	matmul(CblasNoTrans, CblasNoTrans, N, r, out, net->scaling, dout, ldd,
		   Bm, r, 0, act->dxa, r);
	/* dA[r, in] += dxa^T xd */
	matmul(CblasTrans, CblasNoTrans, r, in, N, 1, act->dxa, r, xd, in,
		   1, param_grad(&net->params, ia), in);
	if (dx && p > 0)
	{
		matmul(CblasNoTrans, CblasNoTrans, N, in, r, 1, act->dxa, r, A, in,
			   0, act->dxd, in);
		dropout_backward(dx, act->dxd, la->lora_keep[w], (real) p, (size_t) N * in);
	}
	else if (dx)
		matmul(CblasNoTrans, CblasNoTrans, N, in, r, 1, act->dxa, r, A, in, 1, dx, in);
}

/*
 * Backward of an adapted linear: dx[N, in] = beta dx + dout W (beta 0
 * overwrites, so dx needs no zeroing), plus the adapter's gradients.
 */
static void
adapted_linear_backward(Network *net, LayerActs *la, int l, BertLinear w,
						real *dx, real beta, const real *dout, const real *x, int N)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];

	matmul(CblasNoTrans, CblasNoTrans, N, lin->in, lin->out, 1, dout, lin->out,
		   lin->weight, lin->in, beta, dx, lin->in);
	lora_backward(net, la, l, w, dx, dout, lin->out, x, N);
}

/* True when layer l or any layer below it has an adapter. */
static bool
adapters_at_or_below(const Network *net, int l)
{
	for (int i = 0; i <= l; i++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			if (net->lora[i][w][0] >= 0)
				return true;
	return false;
}

/* Backward of one encoder layer: act->dh (its output gradient) -> act->dx. */
static void
layer_backward(Network *net, int l, bool need_dx)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	const BertLayer *layer = &net->base->layers[l];
	LayerActs  *la = &act->layers[l];
	int			N = act->N;
	int			C = cfg->hidden_size;
	size_t		NC = (size_t) N * C;
	size_t		NI = (size_t) N * cfg->intermediate_size;
	real		hp = (real) net->opts.hidden_dropout;
	real		ap = (real) net->opts.attention_dropout;
	real	   *x = act->h[l];
	real	   *dsub;			/* gradient of a sublayer's output (after dropout) */
	real	   *dln1;
	bool		lora_q = net->lora[l][BERT_QUERY][0] >= 0;
	bool		lora_k = net->lora[l][BERT_KEY][0] >= 0;
	bool		lora_v = net->lora[l][BERT_VALUE][0] >= 0;

	/* output LayerNorm: the residual carries its input gradient to h1 */
	memset(act->dh1, 0, NC * sizeof(real));
	layernorm_backward(act->dh1, NULL, NULL, act->dh, la->res2,
					   layer->ln_out_gamma, la->ln2_mean, la->ln2_rstd, N, C);
	dsub = act->dh1;
	if (hp > 0)
	{
		dropout_forward(act->dres, act->dh1, la->keep_o, hp, NC);
		dsub = act->dres;
	}

	/* feed-forward; its input gradient adds onto dh1 */
	adapted_linear_backward(net, la, l, BERT_OUTPUT, act->dgel, 0, dsub, la->gel, N);
	memset(act->dinter, 0, NI * sizeof(real));
	gelu_backward(act->dinter, la->inter, act->dgel, NI);
	adapted_linear_backward(net, la, l, BERT_INTERMEDIATE, act->dh1, 1, act->dinter, la->h1, N);

	/* attention LayerNorm: the residual carries its input gradient to x */
	dln1 = need_dx ? act->dx : act->dres;
	memset(dln1, 0, NC * sizeof(real));
	layernorm_backward(dln1, NULL, NULL, act->dh1, la->res1,
					   layer->ln_attn_gamma, la->ln1_mean, la->ln1_rstd, N, C);
	dsub = dln1;
	if (hp > 0)
	{
		dropout_forward(act->dres, dln1, la->keep_ao, hp, NC);
		dsub = act->dres;
	}
	adapted_linear_backward(net, la, l, BERT_ATTN_OUT, act->dctx, 0, dsub, la->ctx, N);

	/* attention core, then the fused q/k/v projection */
	if (!need_dx && !lora_q && !lora_k && !lora_v)
		return;
	memset(act->dqkv, 0, NC * 3 * sizeof(real));
	varlen_attention_backward(need_dx || lora_q ? act->dqkv : NULL,
							  need_dx || lora_k ? act->dqkv + C : NULL,
							  need_dx || lora_v ? act->dqkv + 2 * C : NULL,
							  act->datt, act->dctx, la->probs,
							  la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
							  ap > 0 ? la->keep_attn : NULL, ap,
							  act->seq_start, act->B, C, cfg->num_heads);
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		lora_backward(net, la, l, w, need_dx ? act->dx : NULL, act->dqkv + w * C, 3 * C, x, N);
	/* dx[N, C] += dqkv[N, 3C] Wqkv[3C, C] */
	if (need_dx)
		matmul(CblasNoTrans, CblasNoTrans, N, C, 3 * C, 1, act->dqkv, 3 * C,
			   net->base->qkv_weight + (size_t) l * 3 * C * C, C, 1, act->dx, C);
}

/* Add the gradients of the last training forward's loss (times loss_scale). */
PeftCode
network_backward(Network *net, const Batch *b, real loss_scale, PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			K = net->opts.num_labels;

	if (act == NULL || !act->train_layout || act->last == NULL || K < 1)
		return peft_fail(err, PEFT_ERR_INTERNAL, "backward without a training forward");
	if (b->B != act->B)
		return peft_fail(err, PEFT_ERR_INTERNAL, "backward of another batch than the forward's");

	/* loss -> head -> pooled */
	memset(act->dhead, 0, sizeof(real) * b->B * K);
	if (net->opts.task == TASK_CLASSIFICATION)
		cross_entropy_backward(act->dhead, act->head_probs, b->labels, loss_scale, b->B, K);
	else
		mse_backward(act->dhead, act->head_out, b->targets, loss_scale, b->B);
	memset(act->dpooled, 0, sizeof(real) * b->B * C);
	linear_backward(act->dpooled, param_grad(&net->params, net->head_weight),
					param_grad(&net->params, net->head_bias), act->dhead, act->pooled,
					param_value(&net->params, net->head_weight), b->B, C, K);

	/* pooled -> final hidden states */
	memset(act->dh, 0, (size_t) act->N * C * sizeof(real));
	if (cfg->pooling == POOLING_CLS)
		varlen_cls_pool_backward(act->dh, act->dpooled, act->seq_start, act->B, C);
	else
		varlen_mean_pool_backward(act->dh, act->dpooled, act->seq_start, act->B, C);

	/* layers, top down, stopping below the lowest adapter */
	for (int l = cfg->num_layers - 1; l >= 0; l--)
	{
		real	   *swap;

		if (!adapters_at_or_below(net, l))
			break;
		layer_backward(net, l, l > 0 && adapters_at_or_below(net, l - 1));
		swap = act->dh;
		act->dh = act->dx;
		act->dx = swap;
	}
	return PEFT_OK;
}

/* ---- inference outputs --------------------------------------------------- */

/* Sentence embeddings [B, C]: pooling, then L2 normalisation when configured. */
PeftCode
network_embed(Network *net, const Batch *b, real *embeddings, PeftError *err)
{
	int			C = net->base->cfg.hidden_size;
	PeftCode	rc;

	if ((rc = encoder_forward(net, b, false, err)) != PEFT_OK)
		return rc;
	pool_forward(net);
	if (net->base->cfg.normalize)
		l2norm_forward(embeddings, net->act->norm, net->act->pooled, b->B, C);
	else
		memcpy(embeddings, net->act->pooled, sizeof(real) * b->B * C);
	return PEFT_OK;
}

/* Last hidden states [B, T, C]: the real tokens' rows, zeros in padded rows. */
PeftCode
network_hidden_states(Network *net, const Batch *b, real *hidden, PeftError *err)
{
	PeftCode	rc;

	if ((rc = encoder_forward(net, b, false, err)) != PEFT_OK)
		return rc;
	varlen_scatter_rows(hidden, net->act->last, net->act->rows, net->act->N,
						b->B * b->T, net->base->cfg.hidden_size);
	return PEFT_OK;
}
