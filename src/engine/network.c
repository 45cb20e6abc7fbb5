/*
 * network.c - forward and backward of frozen BERT + LoRA + task head,
 * written once against the backend table (backend.h): every buffer below
 * lives in the backend's memory (host memory on the CPU, device memory on
 * CUDA) and every operation goes through net->be.
 *
 * Batches run unpadded: the real tokens (mask 1) of the padded [B, T]
 * batch are packed into N rows (ops_varlen.h); embeddings, every linear
 * and adapter, GELU, LayerNorm and dropout run on those N rows only, and
 * attention runs per sequence over its own tokens.  Padding costs nothing,
 * and the results equal the padded computation's on the real tokens up to
 * float rounding (padded keys get attention weight exactly 0 there).
 * Dropout masks are drawn over the packed rows, on the host from the
 * network's seeded generator whatever the backend, so a CUDA run drops
 * exactly the elements a CPU run drops.
 *
 * The base weights are never written and never get gradients: backward
 * computes only what the adapter and the head need (input gradients of
 * frozen linears, no weight gradients), and stops below the lowest layer.
 * The query, key and value projections run as one product per layer
 * against a [3C, C] copy of their weights (one pass over the input
 * instead of three); their adapters stay separate, as in PEFT.
 */
#include "network.h"
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
	real	   *ia3_pre[BERT_NUM_LINEAR];	/* [N, out] output before (IA)^3 scaling (training) */
	real	   *ia3_in[BERT_NUM_LINEAR];	/* [N, in] input after (IA)^3 feed-forward scaling */
	real	   *dora_t[BERT_NUM_LINEAR];	/* [N, out] dropout(x) W^T */
	real	   *dora_u[BERT_NUM_LINEAR];	/* [N, out] dropout(x) A^T B^T */
	real	   *dora_inv[BERT_NUM_LINEAR];	/* [out] 1 / ||W + s B A|| per row (no gradient) */
	real	   *dora_g[BERT_NUM_LINEAR];	/* [out] magnitude * dora_inv */
	real	   *ad_in[2];		/* bottleneck after attention / ffn: [N, C] its input */
	real	   *ad_d[2];		/* [N, m] down projection */
	real	   *ad_g[2];		/* [N, m] after GELU */
	real	   *qkv_ext;		/* prefix tuning: [N + B V, 3C] each sequence's prefixes, then its rows */
	real	   *ctx_ext;		/* [N + B V, C] attention output over those rows */
} LayerActs;

struct NetworkActivations
{
	size_t		cap_rows;		/* packed rows N the buffers hold */
	size_t		cap_probs;		/* attention block elements they hold */
	size_t		cap_seqs;		/* sequences B they hold */
	size_t		cap_padded;		/* B*T token ids they hold */
	bool		train_layout;	/* every layer has its own buffers */
	void	  **blocks;			/* every allocation in the backend, for freeing */
	size_t		bytes;			/* their sizes together (peft.max_train_memory counts them) */
	int			nblocks;
	int			cap_blocks;

	/* the packing of the last forward (host allocations, kept across acts_release) */
	int			B;
	int			N;
	size_t		nprobs;			/* elements of one layer's attention blocks */
	int32_t    *seq_start;		/* [B+1] sequence b is rows [seq_start[b], seq_start[b+1]) */
	int32_t    *rows;			/* [N] b*T + t of each packed row */
	size_t		cap_pack;		/* rows entries held */
	int			cap_pack_seqs;	/* seq_start entries held */

	/* the batch in the backend's memory (aliases of the host arrays on the CPU) */
	const int32_t *d_seq_start;
	const int32_t *d_rows;
	const int32_t *d_ids;
	const int32_t *d_labels;
	const real *d_targets;
	int32_t    *dev_ints;		/* device copies: seq_start | rows | ids | labels | prefix maps */
	real	   *dev_targets;
	uint8_t    *mask_host;		/* host staging of dropout masks for a device */
	size_t		cap_mask_host;

	real	  **h;				/* [L+1][N, C] layer inputs/outputs (2 in inference) */
	real	   *emb;			/* [N, C] embeddings before LayerNorm */
	real	   *ln0_mean;
	real	   *ln0_rstd;
	uint8_t    *keep_emb;
	LayerActs  *layers;			/* [L] (1 in inference) */
	real	   *last;			/* points at the final hidden states */
	real	   *pooled;			/* [B, C] */
	real	   *normed;			/* [B, C] L2-normalised embeddings */
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

	/* scratch of the adapter methods */
	real	   *ad_tmp;			/* [N, C] bottleneck up projection */
	real	   *dad;			/* [N, C] gradient through a bottleneck adapter */
	real	   *dga;			/* [N, m] */
	real	   *ddd;			/* [N, m] */
	real	   *dscr;			/* [N, max(3C, FF)] scaled output gradients */
	real	   *dia3;			/* [N, max(C, FF)] gradient of an (IA)^3-scaled input */
	real	   *dora_w;			/* [max out * in] W + s B A */

	/* prefix tuning: attention runs over each sequence's V prefixes and its rows */
	int			N_ext;
	int32_t    *seq_start_ext;	/* [B+1] host */
	int32_t    *real_ext;		/* [N] extended row of each packed row */
	int32_t    *prefix_dst;		/* [B V] extended row of each sequence's prefix v */
	int32_t    *prefix_src;		/* [B V] v */
	int			cap_ext_seqs;
	size_t		cap_ext_rows;
	const int32_t *d_seq_start_ext;
	const int32_t *d_real_ext;
	const int32_t *d_prefix_dst;
	const int32_t *d_prefix_src;
	real	   *dctx_ext;		/* [N + B V, C] */
	real	   *dqkv_ext;		/* [N + B V, 3C] */
};

/*
 * network_merge's result: host copies of the weights and biases of the
 * linears an adapter was folded into (NULL where untouched), and their
 * copies in the backend while bound.
 */
struct MergedWeights
{
	int			L;
	real	  **qkv_weight;		/* [L]: [3C, C] when any of q, k, v was merged */
	real	  **qkv_bias;		/* [L]: [3C] */
	real	  *(*weight)[BERT_NUM_LINEAR];	/* [L][w]: [out, in] of the other linears */
	real	  *(*bias)[BERT_NUM_LINEAR];
	void	  **device;			/* backend buffers of the bound copy */
	int			ndevice;
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

/* Whether linear w has LoRA (or DoRA). */
static inline bool
has_lora(const Network *net, int l, int w)
{
	return net->lp[l].lora[w][0] >= 0;
}

/* Check the options against the base model. */
static PeftCode
check_options(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	bool		any = false;
	int			C = base->cfg.hidden_size;

	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		any |= o->lora.targets[w];
	if (any && (o->lora.r < 1 || o->lora.r > 4096))
		return peft_fail(err, PEFT_ERR_INVALID, "r must be between 1 and 4096, not %d", o->lora.r);
	if (any && !(o->lora.alpha > 0 && isfinite(o->lora.alpha)))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_alpha must be positive");
	if (!(o->lora.dropout >= 0 && o->lora.dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_dropout must be in [0, 1)");
	if (o->dora && !any)
		return peft_fail(err, PEFT_ERR_INVALID, "DoRA needs LoRA target modules");
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
	{
		if (o->ia3.targets[w] && o->lora.targets[w])
			return peft_fail(err, PEFT_ERR_INVALID,
							 "%s cannot have both a LoRA and an (IA)^3 adapter",
							 bert_linear_name(w));
		if (o->ia3.feedforward[w] && !o->ia3.targets[w])
			return peft_fail(err, PEFT_ERR_INVALID,
							 "feedforward module %s is not among the (IA)^3 target modules",
							 bert_linear_name(w));
		/* q, k and v share one product: only their outputs can be scaled */
		if (o->ia3.feedforward[w] && w <= BERT_VALUE)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "(IA)^3 cannot scale the input of %s: use it as a non-feedforward module",
							 bert_linear_name(w));
	}
	if (o->prompt_tokens < 0 || o->prompt_tokens > 256 ||
		o->prompt_tokens >= base->cfg.max_position ||
		o->prefix_tokens < 0 || o->prefix_tokens > 256 ||
		o->prefix_tokens >= base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "num_virtual_tokens must be between 1 and 256");
	if (o->prompt_tokens > 0 && o->prefix_tokens > 0)
		return peft_fail(err, PEFT_ERR_INVALID, "prompt and prefix tuning cannot be combined");
	if (o->bottleneck.reduction < 0 || o->bottleneck.reduction > C ||
		(o->bottleneck.reduction > 0 && !o->bottleneck.after_attention && !o->bottleneck.after_ffn))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "a bottleneck adapter needs a reduction factor from 1 to %d and a place "
						 "(after attention and/or the feed-forward)", C);
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

/* Declare a parameter named base_model.model.<path>.<suffix>; -1 on failure. */
static int
declare(Network *net, const char *path, const char *suffix, int ndim, int64_t d0, int64_t d1,
		PeftError *err)
{
	char		name[PARAM_NAME_LEN];

	snprintf(name, sizeof(name), "base_model.model.%s%s%s", path, suffix[0] ? "." : "", suffix);
	return paramset_add(&net->params, name, ndim, d0, d1, err);
}

/* Declare the trainable tensors of layer l; false on failure (err set). */
static bool
declare_layer(Network *net, int l, PeftError *err)
{
	const NetworkOptions *o = &net->opts;
	const BertLayer *layer = &net->base->layers[l];
	LayerParams *lp = &net->lp[l];
	int			C = net->base->cfg.hidden_size;
	int			width = o->bottleneck.reduction > 0 ? C / o->bottleneck.reduction : 0;
	char		path[128];
	bool		ok = true;

	memset(lp, 0xff, sizeof(*lp));	/* every index -1 */
	/*
	 * BitFit: q, k, v biases first and adjacent, so the fused product can
	 * use them; named as PEFT's LoRA bias "all" saves them (a LoRA-wrapped
	 * linear's bias is its base_layer's).
	 */
	for (int w = 0; o->bitfit && w < BERT_NUM_LINEAR; w++)
	{
		bert_linear_path(path, sizeof(path), l, w);
		ok &= (lp->bias[w] = declare(net, path, o->lora.targets[w] ? "base_layer.bias" : "bias",
									 1, layer->linear[w].out, 0, err)) >= 0;
	}
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
	{
		const BertLinearWeights *lin = &layer->linear[w];

		bert_linear_path(path, sizeof(path), l, w);
		if (o->lora.targets[w])
		{
			ok &= (lp->lora[w][0] = declare(net, path, "lora_A.weight", 2, o->lora.r, lin->in, err)) >= 0;
			ok &= (lp->lora[w][1] = declare(net, path, "lora_B.weight", 2, lin->out, o->lora.r, err)) >= 0;
			if (o->dora)
				ok &= (lp->dora[w] = declare(net, path, "lora_magnitude_vector", 1, lin->out, 0, err)) >= 0;
		}
		if (o->ia3.targets[w])
			ok &= (lp->ia3[w] = o->ia3.feedforward[w]
				   ? declare(net, path, "ia3_l", 2, 1, lin->in, err)
				   : declare(net, path, "ia3_l", 2, lin->out, 1, err)) >= 0;
	}
	if (o->bitfit)
	{
		snprintf(path, sizeof(path), "encoder.layer.%d.attention.output.LayerNorm", l);
		ok &= (lp->ln_beta[0] = declare(net, path, "bias", 1, C, 0, err)) >= 0;
		snprintf(path, sizeof(path), "encoder.layer.%d.output.LayerNorm", l);
		ok &= (lp->ln_beta[1] = declare(net, path, "bias", 1, C, 0, err)) >= 0;
	}
	for (int pos = 0; pos < 2 && width > 0; pos++)
	{
		if (!(pos == 0 ? o->bottleneck.after_attention : o->bottleneck.after_ffn))
			continue;
		snprintf(path, sizeof(path), "encoder.layer.%d.%s.adapter", l,
				 pos == 0 ? "attention.output" : "output");
		ok &= (lp->adapter[pos][0] = declare(net, path, "down.weight", 2, width, C, err)) >= 0;
		ok &= (lp->adapter[pos][1] = declare(net, path, "down.bias", 1, width, 0, err)) >= 0;
		ok &= (lp->adapter[pos][2] = declare(net, path, "up.weight", 2, C, width, err)) >= 0;
		ok &= (lp->adapter[pos][3] = declare(net, path, "up.bias", 1, C, 0, err)) >= 0;
	}
	return ok;
}

/* Fill x[n] with U(-bound, bound). */
static void
uniform_fill(real *x, size_t n, double bound, PeftRng *rng)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (real) ((2.0 * peft_rng_uniform(rng) - 1.0) * bound);
}

/* Copy n base values into parameter i (BitFit starts from the model's biases). */
static void
copy_into(Network *net, int i, const real *src, size_t n)
{
	if (i >= 0)
		memcpy(param_value(&net->params, i), src, n * sizeof(real));
}

/*
 * Initialise every parameter as PEFT does: LoRA A ~ kaiming_uniform(a =
 * sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0; DoRA's magnitude = the
 * row norms of W (B A = 0 at first); (IA)^3 vectors = 1; BitFit biases =
 * the model's; bottleneck down as torch.nn.Linear, up = 0 (identity); the
 * head as torch.nn.Linear (weight and bias U(+-1/sqrt(in))).
 */
static void
initialise(Network *net)
{
	const ModelConfig *cfg = &net->base->cfg;
	ParamSet   *ps = &net->params;
	PeftRng		rng;
	int			C = cfg->hidden_size;

	peft_rng_seed(&rng, net->opts.seed);
	for (int l = 0; l < cfg->num_layers; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			if (has_lora(net, l, w))
			{
				const Param *a = &ps->items[net->lp[l].lora[w][0]];

				uniform_fill(param_value(ps, net->lp[l].lora[w][0]), a->count,
							 1.0 / sqrt((double) a->shape[1]), &rng);
			}
	for (int l = 0; l < cfg->num_layers; l++)
	{
		const BertLayer *layer = &net->base->layers[l];
		LayerParams *lp = &net->lp[l];

		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &layer->linear[w];

			if (lp->dora[w] >= 0)
				for (int o = 0; o < lin->out; o++)
				{
					double		sum = 0;

					for (int i = 0; i < lin->in; i++)
						sum += (double) lin->weight[(size_t) o * lin->in + i] *
							lin->weight[(size_t) o * lin->in + i];
					param_value(ps, lp->dora[w])[o] = (real) sqrt(sum);
				}
			if (lp->ia3[w] >= 0)
				for (size_t i = 0; i < ps->items[lp->ia3[w]].count; i++)
					param_value(ps, lp->ia3[w])[i] = 1;
			copy_into(net, lp->bias[w], lin->bias, lin->out);
		}
		copy_into(net, lp->ln_beta[0], layer->ln_attn_beta, C);
		copy_into(net, lp->ln_beta[1], layer->ln_out_beta, C);
		for (int pos = 0; pos < 2; pos++)
			if (lp->adapter[pos][0] >= 0)
			{
				uniform_fill(param_value(ps, lp->adapter[pos][0]), ps->items[lp->adapter[pos][0]].count,
							 1.0 / sqrt((double) C), &rng);
				uniform_fill(param_value(ps, lp->adapter[pos][1]), ps->items[lp->adapter[pos][1]].count,
							 1.0 / sqrt((double) C), &rng);
			}
	}
	copy_into(net, net->emb_ln_beta, net->base->ln_emb_beta, C);
	/* prompt tuning: each virtual token starts as the embedding of a random vocabulary token */
	for (int v = 0; net->prompt >= 0 && v < net->opts.prompt_tokens; v++)
		memcpy(param_value(ps, net->prompt) + (size_t) v * C,
			   net->base->word_embeddings + (size_t) peft_rng_below(&rng, cfg->vocab_size) * C,
			   sizeof(real) * C);
	/*
	 * prefix tuning: each prefix starts as the key and value every layer
	 * computes for the embedding of a random vocabulary token, so the
	 * prefixes look like keys and values the model has seen
	 */
	for (int v = 0; net->prefix >= 0 && v < net->opts.prefix_tokens; v++)
	{
		const real *e = net->base->word_embeddings + (size_t) peft_rng_below(&rng, cfg->vocab_size) * C;

		for (int l = 0; l < cfg->num_layers; l++)
			for (int kv = 0; kv < 2; kv++)
			{
				const BertLinearWeights *lin = &net->base->layers[l].linear[BERT_KEY + kv];
				real	   *dst = param_value(ps, net->prefix) +
					((size_t) v * cfg->num_layers * 2 + (size_t) l * 2 + kv) * C;

				for (int o = 0; o < C; o++)
				{
					double		sum = lin->bias[o];

					for (int i = 0; i < C; i++)
						sum += (double) lin->weight[(size_t) o * C + i] * e[i];
					dst[o] = (real) sum;
				}
			}
	}
	if (net->head_weight >= 0)
	{
		double		bound = 1.0 / sqrt((double) C);

		uniform_fill(param_value(ps, net->head_weight), ps->items[net->head_weight].count, bound, &rng);
		uniform_fill(param_value(ps, net->head_bias), ps->items[net->head_bias].count, bound, &rng);
	}
}

/* Build the network and initialise it as PEFT does. */
PeftCode
network_create(const BertModel *base, const NetworkOptions *opts,
			   Network **out, PeftError *err)
{
	const ModelConfig *cfg = &base->cfg;
	Network    *net;
	bool		ok = true;
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
	net->lp = calloc(cfg->num_layers, sizeof(LayerParams));
	net->act = calloc(1, sizeof(NetworkActivations));
	net->be = backend_cpu();
	net->precision = PRECISION_FP32;
	if (net->lp == NULL || net->act == NULL)
	{
		network_free(net);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	net->head_weight = net->head_bias = net->emb_ln_beta = net->prompt = net->prefix = -1;

	/* Parameters in PEFT's order: per layer, per linear (LoRA: A then B). */
	if (opts->prompt_tokens > 0)
		ok &= (net->prompt = paramset_add(&net->params, "prompt_embeddings", 2, opts->prompt_tokens,
										  cfg->hidden_size, err)) >= 0;
	/* PEFT's layout: [token][layer][key, value][C] */
	if (opts->prefix_tokens > 0)
		ok &= (net->prefix = paramset_add(&net->params, "prompt_embeddings", 2, opts->prefix_tokens,
										  (int64_t) cfg->num_layers * 2 * cfg->hidden_size, err)) >= 0;
	if (opts->bitfit)
		ok &= (net->emb_ln_beta = declare(net, "embeddings.LayerNorm", "bias", 1,
										  cfg->hidden_size, 0, err)) >= 0;
	for (int l = 0; l < cfg->num_layers && ok; l++)
		ok &= declare_layer(net, l, err);
	if (ok && opts->num_labels > 0)
	{
		ok &= (net->head_weight = declare(net, "classifier", "weight", 2, opts->num_labels,
										  cfg->hidden_size, err)) >= 0;
		ok &= (net->head_bias = declare(net, "classifier", "bias", 1, opts->num_labels, 0, err)) >= 0;
	}
	if (!ok || (rc = paramset_allocate(&net->params, err)) != PEFT_OK)
	{
		network_free(net);
		return ok ? rc : (err ? err->code : PEFT_ERR_NOMEM);
	}
	initialise(net);
	peft_rng_seed(&net->rng, opts->seed ^ 0x5eed5eed5eedULL);
	*out = net;
	return PEFT_OK;
}

/* ---- buffers in the backend ---------------------------------------------- */

static bool merges(const Network *net, int l, int w);
static void merged_free(MergedWeights *mw);
static PeftCode bind_merged(Network *net, PeftError *err);

/* Drop every activation pointer; free them too when release (else they are already gone). */
static void
acts_drop(Network *net, bool release)
{
	NetworkActivations *act = net->act;

	for (int i = 0; release && i < act->nblocks; i++)
		net->be->ops->release(net->be, act->blocks[i]);
	free(act->blocks);
	free(act->h);
	free(act->layers);
	act->blocks = NULL;
	act->bytes = 0;
	act->nblocks = act->cap_blocks = 0;
	act->h = NULL;
	act->layers = NULL;
	act->cap_rows = act->cap_probs = act->cap_seqs = act->cap_padded = 0;
	act->train_layout = false;
	act->last = NULL;
	act->dev_ints = NULL;
	act->dev_targets = NULL;
}

/*
 * Let go of everything the network holds in its backend: the activations,
 * the base weights and the device parameters.  release false forgets the
 * pointers without freeing (idle release already freed them).
 */
static void
device_drop(Network *net, bool release)
{
	if (net->act)
		acts_drop(net, release);
	if (net->merged)
	{
		for (int i = 0; release && i < net->merged->ndevice; i++)
			net->be->ops->release(net->be, net->merged->device[i]);
		net->merged->ndevice = 0;
		if (net->weights != net->shared_weights && net->weights != NULL)
		{
			free(net->weights->layers);
			free(net->weights);
		}
	}
	if (net->shared_weights && release)
		net->be->ops->weights_release(net->be, net->shared_weights);
	net->weights = net->shared_weights = NULL;
	if (!net->be->host_memory && release)
	{
		net->be->ops->release(net->be, net->dp.values);
		net->be->ops->release(net->be, net->dp.grads);
		net->be->ops->release(net->be, net->dp.adam_m);
		net->be->ops->release(net->be, net->dp.adam_v);
	}
	memset(&net->dp, 0, sizeof(net->dp));
	net->dp_bound = false;
	net->dp_newer = false;
}

/* Take the backend for a use; pointers made before an idle release are forgotten. */
static void
net_enter(Network *net)
{
	uint64_t	generation = net->be->ops->enter(net->be);

	if (generation != net->generation)
	{
		device_drop(net, false);
		net->generation = generation;
	}
	net->be->precision = net->precision;
}

/* End a use: collect the backend's error (unless rc already failed) and unlock. */
static PeftCode
net_leave(Network *net, PeftCode rc, PeftError *err)
{
	PeftCode	brc = backend_check(net->be, rc == PEFT_OK ? err : NULL);

	net->be->ops->leave(net->be);
	return rc == PEFT_OK ? brc : rc;
}

/* A copy of n reals of host in the backend's memory, remembered with the merged weights. */
static const real *
merged_buffer(Network *net, const real *host, size_t n)
{
	MergedWeights *mw = net->merged;
	void	   *p;

	if (net->be->host_memory)
		return host;
	p = net->be->ops->alloc(net->be, n * sizeof(real));
	if (p == NULL)
		return NULL;
	mw->device[mw->ndevice++] = p;
	net->be->ops->upload(net->be, p, host, n * sizeof(real));
	return p;
}

/*
 * The weights table of a merged network: the shared base weights, with the
 * merged linears pointing at the merged copies in the backend's memory.
 */
static PeftCode
bind_merged(Network *net, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;
	MergedWeights *mw = net->merged;
	ModelWeights *own = calloc(1, sizeof(ModelWeights));
	LayerWeights *layers = calloc(cfg->num_layers, sizeof(LayerWeights));
	size_t		C = cfg->hidden_size;

	if (mw->device == NULL)
		mw->device = calloc((size_t) cfg->num_layers * 2 * (BERT_NUM_LINEAR + 1), sizeof(void *));
	if (own == NULL || layers == NULL || mw->device == NULL)
	{
		free(layers);
		free(own);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for merged weights");
	}
	*own = *net->shared_weights;
	own->layers = memcpy(layers, net->shared_weights->layers, cfg->num_layers * sizeof(LayerWeights));
	net->weights = own;			/* device_drop frees it, whatever happens below */
	for (int l = 0; l < cfg->num_layers; l++)
	{
		LayerWeights *lw = &own->layers[l];

		if (mw->qkv_weight[l])
		{
			lw->qkv_weight = merged_buffer(net, mw->qkv_weight[l], 3 * C * C);
			lw->qkv_bias = merged_buffer(net, mw->qkv_bias[l], 3 * C);
			for (int w = BERT_QUERY; w <= BERT_VALUE && lw->qkv_weight && lw->qkv_bias; w++)
			{
				lw->weight[w] = lw->qkv_weight + (size_t) w * C * C;
				lw->bias[w] = lw->qkv_bias + (size_t) w * C;
			}
		}
		for (int w = BERT_ATTN_OUT; w < BERT_NUM_LINEAR; w++)
			if (mw->weight[l][w])
			{
				const BertLinearWeights *lin = &net->base->layers[l].linear[w];

				lw->weight[w] = merged_buffer(net, mw->weight[l][w], (size_t) lin->out * lin->in);
				lw->bias[w] = merged_buffer(net, mw->bias[l][w], lin->out);
			}
	}
	return backend_check(net->be, err);
}

/* Make sure the base weights and the parameters are in the backend's memory. */
static PeftCode
bind_device(Network *net, PeftError *err)
{
	Backend    *be = net->be;
	ParamSet   *ps = &net->params;
	size_t		bytes = ps->total * sizeof(real);
	PeftCode	rc;

	if (net->shared_weights == NULL)
	{
		if ((rc = be->ops->weights_acquire(be, net->base, &net->shared_weights, err)) != PEFT_OK)
			return rc;
		net->weights = net->shared_weights;
		if (net->merged && (rc = bind_merged(net, err)) != PEFT_OK)
			return rc;
	}
	if (net->dp_bound)
		return PEFT_OK;
	if (be->host_memory)
	{
		net->dp.values = ps->values;
		net->dp.grads = ps->grads;
		net->dp.adam_m = ps->adam_m;
		net->dp.adam_v = ps->adam_v;
	}
	else
	{
		if (net->dp.values == NULL)
		{
			DeviceParams dp;

			dp.values = be->ops->alloc(be, bytes);
			dp.grads = be->ops->alloc(be, bytes);
			dp.adam_m = be->ops->alloc(be, bytes);
			dp.adam_v = be->ops->alloc(be, bytes);
			if (be->failed)
			{
				/* all four or none: release(NULL) is a no-op */
				be->ops->release(be, dp.values);
				be->ops->release(be, dp.grads);
				be->ops->release(be, dp.adam_m);
				be->ops->release(be, dp.adam_v);
				return backend_check(be, err);
			}
			net->dp = dp;
		}
		be->ops->upload(be, net->dp.values, ps->values, bytes);
		be->ops->upload(be, net->dp.grads, ps->grads, bytes);
		be->ops->upload(be, net->dp.adam_m, ps->adam_m, bytes);
		be->ops->upload(be, net->dp.adam_v, ps->adam_v, bytes);
	}
	net->dp_bound = true;
	return backend_check(be, err);
}

/* Parameter i's value and gradient in the backend's memory. */
static inline real *
dvalue(const Network *net, int i)
{
	return net->dp.values + net->params.items[i].offset;
}

static inline real *
dgrad(const Network *net, int i)
{
	return net->dp.grads + net->params.items[i].offset;
}

/* Free a network (NULL allowed), and whatever it holds in its backend. */
void
network_free(Network *net)
{
	if (net == NULL)
		return;
	if (net->be)
	{
		net_enter(net);
		device_drop(net, true);
		if (net->pinned)
			net->be->ops->pin(net->be, -1);
		(void) net_leave(net, PEFT_OK, NULL);
	}
	if (net->act)
	{
		free(net->act->seq_start);
		free(net->act->rows);
		free(net->act->mask_host);
		free(net->act->seq_start_ext);
		free(net->act->real_ext);
		free(net->act->prefix_dst);
		free(net->act->prefix_src);
		free(net->act);
	}
	paramset_free(&net->params);
	merged_free(net->merged);
	free(net->lp);
	free(net);
}

/* Compute on another device from now on; the parameters move with the network. */
PeftCode
network_set_device(Network *net, DeviceKind kind, GemmPrecision precision, PeftError *err)
{
	Backend    *be;
	PeftCode	rc;

	if ((rc = backend_for(kind, &be, err)) != PEFT_OK)
		return rc;
	net->precision = precision;
	if (be == net->be)
		return PEFT_OK;
	if ((rc = network_params_fetch(net, err)) != PEFT_OK)
		return rc;
	net_enter(net);
	device_drop(net, true);
	if (net->pinned)
		net->be->ops->pin(net->be, -1);
	(void) net_leave(net, PEFT_OK, NULL);
	net->be = be;
	net->generation = 0;
	net_enter(net);
	if (net->pinned)
		be->ops->pin(be, +1);
	return net_leave(net, PEFT_OK, err);
}

/* The host parameters changed: the backend's copy is made again on next use. */
void
network_params_changed(Network *net)
{
	if (!net->be->host_memory)
		net->dp_bound = false;
	net->dp_newer = false;
}

/* Bring parameters changed on a device back into params (values and moments). */
PeftCode
network_params_fetch(Network *net, PeftError *err)
{
	ParamSet   *ps = &net->params;
	size_t		bytes = ps->total * sizeof(real);

	if (!net->dp_newer)
		return PEFT_OK;
	net_enter(net);
	if (net->dp_bound)
	{
		net->be->ops->download(net->be, ps->values, net->dp.values, bytes);
		net->be->ops->download(net->be, ps->adam_m, net->dp.adam_m, bytes);
		net->be->ops->download(net->be, ps->adam_v, net->dp.adam_v, bytes);
	}
	net->dp_newer = false;
	return net_leave(net, PEFT_OK, err);
}

/* Keep the optimizer state safe from idle release while pinned. */
void
network_pin(Network *net, bool pin)
{
	if (pin == net->pinned)
		return;
	net->pinned = pin;
	net->be->ops->enter(net->be);
	net->be->ops->pin(net->be, pin ? +1 : -1);
	net->be->ops->leave(net->be);
}

/* One zeroed allocation of n elements of size sz in the backend, remembered for freeing. */
static void *
acts_alloc(Network *net, size_t n, size_t sz, bool *ok)
{
	NetworkActivations *act = net->act;
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
	p = net->be->ops->alloc(net->be, n ? n * sz : sz);
	if (p == NULL)
		*ok = false;
	else
	{
		act->blocks[act->nblocks++] = p;
		act->bytes += n ? n * sz : sz;
	}
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

/*
 * Make sure the buffers hold a batch of B sequences, N packed rows, nprobs
 * attention elements and B*T ids (training keeps every layer).  Growth
 * frees and allocates every buffer, so a caller that knows its largest
 * batch reserves it once (network_reserve) and the steps allocate nothing.
 */
static PeftCode
acts_ensure(Network *net, int B, int T, size_t N, size_t nprobs, bool train,
			PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		NH = cfg->num_heads;
	size_t		C = cfg->hidden_size;
	size_t		FF = cfg->intermediate_size;
	size_t		r = net->opts.lora.r > 0 ? net->opts.lora.r : 1;
	size_t		K = net->opts.num_labels > 0 ? net->opts.num_labels : 1;
	size_t		width = net->opts.bottleneck.reduction > 0 ? C / net->opts.bottleneck.reduction : 0;
	size_t		virtual_tokens = (size_t) net->opts.prompt_tokens + net->opts.prefix_tokens;
	size_t		prefix = net->opts.prefix_tokens;
	size_t		padded = (size_t) B * T;
	size_t		rows;
	size_t		probs;
	size_t		seqs;
	size_t		ids;
	bool		hidden_drop = net->opts.hidden_dropout > 0;
	bool		attn_drop = net->opts.attention_dropout > 0;
	bool		lora_drop = net->opts.lora.dropout > 0;
	bool		device = !net->be->host_memory;
	int			nlayers;
	int			nh;
	bool		ok = true;

	if (N <= act->cap_rows && nprobs <= act->cap_probs &&
		(size_t) B <= act->cap_seqs && (!device || padded <= act->cap_padded) &&
		(!train || act->train_layout))
		return PEFT_OK;
	rows = grow_capacity(N, act->cap_rows, padded + (size_t) B * net->opts.prompt_tokens);
	probs = grow_capacity(nprobs, act->cap_probs, (size_t) B * NH * (T + virtual_tokens) *
						  (T + virtual_tokens));
	seqs = grow_capacity(B, act->cap_seqs, B);
	ids = grow_capacity(padded, act->cap_padded, padded);
	train = train || act->train_layout;
	acts_drop(net, true);
	act->cap_rows = rows;
	act->cap_probs = probs;
	act->cap_seqs = seqs;
	act->cap_padded = ids;
	act->train_layout = train;
	nlayers = train ? cfg->num_layers : 1;
	nh = train ? cfg->num_layers + 1 : 2;

	act->h = calloc(nh, sizeof(real *));
	act->layers = calloc(nlayers, sizeof(LayerActs));
	if (act->h == NULL || act->layers == NULL)
	{
		acts_drop(net, true);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for activations");
	}
	if (device)
	{
		size_t		mask = probs > rows * FF ? probs : rows * FF;

		/* seq_start | rows | ids | labels, then prefix tuning's seq_start_ext | real_ext | prefix maps */
		act->dev_ints = acts_alloc(net, (seqs + 1) + rows + ids + seqs +
								   (prefix ? (seqs + 1) + rows + 2 * seqs * prefix : 0),
								   sizeof(int32_t), &ok);
		act->dev_targets = acts_alloc(net, seqs, sizeof(real), &ok);
		if (ok && train && act->cap_mask_host < mask)
		{
			free(act->mask_host);
			act->mask_host = malloc(mask);
			act->cap_mask_host = act->mask_host ? mask : 0;
			ok = act->mask_host != NULL;
		}
	}
	for (int i = 0; i < nh; i++)
		act->h[i] = acts_alloc(net, rows * C, sizeof(real), &ok);
	act->emb = acts_alloc(net, rows * C, sizeof(real), &ok);
	act->ln0_mean = acts_alloc(net, rows, sizeof(real), &ok);
	act->ln0_rstd = acts_alloc(net, rows, sizeof(real), &ok);
	if (train && hidden_drop)
		act->keep_emb = acts_alloc(net, rows * C, 1, &ok);
	for (int l = 0; l < nlayers; l++)
	{
		LayerActs  *la = &act->layers[l];

		la->qkv = acts_alloc(net, rows * 3 * C, sizeof(real), &ok);
		la->probs = acts_alloc(net, probs, sizeof(real), &ok);
		la->ctx = acts_alloc(net, rows * C, sizeof(real), &ok);
		la->res1 = acts_alloc(net, rows * C, sizeof(real), &ok);
		la->h1 = acts_alloc(net, rows * C, sizeof(real), &ok);
		la->ln1_mean = acts_alloc(net, rows, sizeof(real), &ok);
		la->ln1_rstd = acts_alloc(net, rows, sizeof(real), &ok);
		la->inter = acts_alloc(net, rows * FF, sizeof(real), &ok);
		la->gel = acts_alloc(net, rows * FF, sizeof(real), &ok);
		la->res2 = acts_alloc(net, rows * C, sizeof(real), &ok);
		la->ln2_mean = acts_alloc(net, rows, sizeof(real), &ok);
		la->ln2_rstd = acts_alloc(net, rows, sizeof(real), &ok);
		if (train && attn_drop)
			la->keep_attn = acts_alloc(net, probs, 1, &ok);
		if (train && hidden_drop)
		{
			la->keep_ao = acts_alloc(net, rows * C, 1, &ok);
			la->keep_o = acts_alloc(net, rows * C, 1, &ok);
		}
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			size_t		in = (w == BERT_OUTPUT) ? FF : C;
			size_t		out = (w == BERT_INTERMEDIATE) ? FF : C;

			if (net->opts.ia3.targets[w] && net->opts.ia3.feedforward[w])
				la->ia3_in[w] = acts_alloc(net, rows * in, sizeof(real), &ok);
			else if (net->opts.ia3.targets[w] && train)
				la->ia3_pre[w] = acts_alloc(net, rows * out, sizeof(real), &ok);
			if (!net->opts.lora.targets[w])
				continue;
			la->lora_xa[w] = acts_alloc(net, rows * r, sizeof(real), &ok);
			if (train && lora_drop)
			{
				la->lora_xd[w] = acts_alloc(net, rows * in, sizeof(real), &ok);
				la->lora_keep[w] = acts_alloc(net, rows * in, 1, &ok);
			}
			if (net->opts.dora)
			{
				la->dora_t[w] = acts_alloc(net, rows * out, sizeof(real), &ok);
				la->dora_u[w] = acts_alloc(net, rows * out, sizeof(real), &ok);
				la->dora_inv[w] = acts_alloc(net, out, sizeof(real), &ok);
				la->dora_g[w] = acts_alloc(net, out, sizeof(real), &ok);
			}
		}
		if (prefix)
		{
			la->qkv_ext = acts_alloc(net, (rows + seqs * prefix) * 3 * C, sizeof(real), &ok);
			la->ctx_ext = acts_alloc(net, (rows + seqs * prefix) * C, sizeof(real), &ok);
		}
		for (int pos = 0; pos < 2 && width > 0; pos++)
		{
			la->ad_in[pos] = acts_alloc(net, rows * C, sizeof(real), &ok);
			la->ad_d[pos] = acts_alloc(net, rows * width, sizeof(real), &ok);
			la->ad_g[pos] = acts_alloc(net, rows * width, sizeof(real), &ok);
		}
	}
	if (width > 0)
		act->ad_tmp = acts_alloc(net, rows * C, sizeof(real), &ok);
	if (net->opts.dora)
		act->dora_w = acts_alloc(net, FF * C, sizeof(real), &ok);
	act->pooled = acts_alloc(net, seqs * C, sizeof(real), &ok);
	act->normed = acts_alloc(net, seqs * C, sizeof(real), &ok);
	act->norm = acts_alloc(net, seqs, sizeof(real), &ok);
	act->head_out = acts_alloc(net, seqs * K, sizeof(real), &ok);
	act->head_probs = acts_alloc(net, seqs * K, sizeof(real), &ok);
	if (train)
	{
		act->dh = acts_alloc(net, rows * C, sizeof(real), &ok);
		act->dx = acts_alloc(net, rows * C, sizeof(real), &ok);
		act->dres = acts_alloc(net, rows * C, sizeof(real), &ok);
		act->dh1 = acts_alloc(net, rows * C, sizeof(real), &ok);
		act->dctx = acts_alloc(net, rows * C, sizeof(real), &ok);
		act->dqkv = acts_alloc(net, rows * 3 * C, sizeof(real), &ok);
		act->dgel = acts_alloc(net, rows * FF, sizeof(real), &ok);
		act->dinter = acts_alloc(net, rows * FF, sizeof(real), &ok);
		act->dxa = acts_alloc(net, rows * r, sizeof(real), &ok);
		act->dxd = acts_alloc(net, rows * (FF > C ? FF : C), sizeof(real), &ok);
		act->datt = acts_alloc(net, probs, sizeof(real), &ok);
		act->dpooled = acts_alloc(net, seqs * C, sizeof(real), &ok);
		act->dhead = acts_alloc(net, seqs * K, sizeof(real), &ok);
		act->dscr = acts_alloc(net, rows * (FF > 3 * C ? FF : 3 * C), sizeof(real), &ok);
		if (prefix)
		{
			act->dctx_ext = acts_alloc(net, (rows + seqs * prefix) * C, sizeof(real), &ok);
			act->dqkv_ext = acts_alloc(net, (rows + seqs * prefix) * 3 * C, sizeof(real), &ok);
		}
		act->dia3 = acts_alloc(net, rows * (FF > C ? FF : C), sizeof(real), &ok);
		if (width > 0)
		{
			act->dad = acts_alloc(net, rows * C, sizeof(real), &ok);
			act->dga = acts_alloc(net, rows * width, sizeof(real), &ok);
			act->ddd = acts_alloc(net, rows * width, sizeof(real), &ok);
		}
	}
	if (!ok)
	{
		PeftError	cause;

		peft_error_clear(&cause);
		(void) backend_check(net->be, &cause);
		acts_drop(net, true);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for activations of a %d x %d batch%s%s", B, T,
						 cause.message[0] ? ": " : "", cause.message);
	}
	return PEFT_OK;
}

/*
 * Bytes the network holds for training: the trainable parameters with
 * their gradients and Adam moments (twice on a device, which keeps its own
 * copies), and the activation buffers.  The base weights are a shared
 * read-only mapping and not counted.
 */
size_t
network_memory(const Network *net, size_t *activations)
{
	size_t		params = net->params.total * sizeof(real) * 4;

	*activations = net->act ? net->act->bytes : 0;
	return params * (net->be->host_memory ? 1 : 2) + *activations;
}

/* Free the activation buffers (they grow again with the next batch). */
void
network_release_activations(Network *net)
{
	net_enter(net);
	acts_drop(net, true);
	net_leave(net, PEFT_OK, NULL);
}

/* Size the buffers once for the largest batch (B x T, every token real) a run will use. */
PeftCode
network_reserve(Network *net, int B, int T, bool train, PeftError *err)
{
	size_t		S = (size_t) T + net->opts.prompt_tokens + net->opts.prefix_tokens;	/* virtual included */
	size_t		nprobs = (size_t) net->base->cfg.num_heads * B * S * S;
	PeftCode	rc;

	if (B < 1 || T < 1 || B > (1 << 20) || T > net->base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "cannot reserve a %d x %d batch", B, T);
	net_enter(net);
	rc = bind_device(net, err);
	if (rc == PEFT_OK)
		rc = acts_ensure(net, B, T, (size_t) B * (T + net->opts.prompt_tokens), nprobs, train, err);
	return net_leave(net, rc, err);
}

/* ---- forward ------------------------------------------------------------- */

/* Check a batch against the model before touching any table. */
static PeftCode
check_batch(const Network *net, const Batch *b, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;

	if (b->B < 1 || b->T < 1 || b->B > (1 << 20))
		return peft_fail(err, PEFT_ERR_INVALID, "empty or oversized batch (%d x %d)", b->B, b->T);
	if (b->T + net->opts.prompt_tokens + net->opts.prefix_tokens > cfg->max_position)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "sequence length %d (with %d virtual tokens) exceeds the model's %d positions",
						 b->T, net->opts.prompt_tokens + net->opts.prefix_tokens, cfg->max_position);
	if ((size_t) b->B * b->T > (size_t) INT32_MAX / cfg->hidden_size)
		return peft_fail(err, PEFT_ERR_INVALID, "batch of %d x %d is too large", b->B, b->T);
	for (size_t i = 0; i < (size_t) b->B * b->T; i++)
		if (b->ids[i] < 0 || b->ids[i] >= cfg->vocab_size || (b->mask[i] & ~1) != 0)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d or mask %d out of range",
							 b->ids[i], b->mask[i]);
	return PEFT_OK;
}

/*
 * Prefix tuning's extended layout: sequence b is its V prefixes, then its
 * packed rows; the maps between the layouts, and the attention size over
 * it (act->nprobs).
 */
static PeftCode
pack_prefix(Network *net, const Batch *b, PeftError *err)
{
	NetworkActivations *act = net->act;
	int			V = net->opts.prefix_tokens;
	size_t		ext = (size_t) act->N + (size_t) b->B * V;
	int			n = 0;

	if (act->cap_ext_seqs < b->B + 1 || act->cap_ext_rows < ext)
	{
		free(act->seq_start_ext);
		free(act->real_ext);
		free(act->prefix_dst);
		free(act->prefix_src);
		act->seq_start_ext = malloc(sizeof(int32_t) * (b->B + 1));
		act->real_ext = malloc(sizeof(int32_t) * (ext ? ext : 1));
		act->prefix_dst = malloc(sizeof(int32_t) * ((size_t) b->B * V));
		act->prefix_src = malloc(sizeof(int32_t) * ((size_t) b->B * V));
		act->cap_ext_seqs = act->cap_ext_rows = 0;
		if (!act->seq_start_ext || !act->real_ext || !act->prefix_dst || !act->prefix_src)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		act->cap_ext_seqs = b->B + 1;
		act->cap_ext_rows = ext;
	}
	for (int i = 0; i < b->B; i++)
	{
		act->seq_start_ext[i] = n;
		for (int v = 0; v < V; v++)
		{
			act->prefix_dst[i * V + v] = n++;
			act->prefix_src[i * V + v] = v;
		}
		for (int r = act->seq_start[i]; r < act->seq_start[i + 1]; r++)
			act->real_ext[r] = n++;
	}
	act->seq_start_ext[b->B] = n;
	act->N_ext = n;
	act->nprobs = varlen_attention_size(act->seq_start_ext, b->B, net->base->cfg.num_heads);
	return PEFT_OK;
}

/* Pack the real tokens of a checked batch on the host: act's B, N, seq_start, rows, nprobs. */
static PeftCode
pack_batch(Network *net, const Batch *b, PeftError *err)
{
	NetworkActivations *act = net->act;
	int			V = net->opts.prompt_tokens;
	size_t		padded = (size_t) b->B * b->T + (size_t) b->B * V;

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
	if (V == 0)
		act->N = varlen_pack(act->seq_start, act->rows, b->mask, b->B, b->T);
	else
	{
		/* every sequence starts with the V virtual tokens, rows -1 - v */
		int			n = 0;

		for (int i = 0; i < b->B; i++)
		{
			act->seq_start[i] = n;
			for (int v = 0; v < V; v++)
				act->rows[n++] = -1 - v;
			for (int t = 0; t < b->T; t++)
				if (b->mask[(size_t) i * b->T + t])
					act->rows[n++] = i * b->T + t;
		}
		act->seq_start[b->B] = n;
		act->N = n;
	}
	act->nprobs = varlen_attention_size(act->seq_start, b->B, net->base->cfg.num_heads);
	if (net->opts.prefix_tokens > 0)
		return pack_prefix(net, b, err);
	return PEFT_OK;
}

/*
 * Give the backend the batch's integer arrays and targets: the host arrays
 * themselves on the CPU, copies in one upload area on a device.
 */
static void
upload_batch(Network *net, const Batch *b)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	int32_t    *at = act->dev_ints;
	size_t		padded = (size_t) b->B * b->T;

	if (be->host_memory)
	{
		act->d_seq_start = act->seq_start;
		act->d_rows = act->rows;
		act->d_ids = b->ids;
		act->d_labels = b->labels;
		act->d_targets = b->targets;
		act->d_seq_start_ext = act->seq_start_ext;
		act->d_real_ext = act->real_ext;
		act->d_prefix_dst = act->prefix_dst;
		act->d_prefix_src = act->prefix_src;
		return;
	}
	be->ops->upload(be, at, act->seq_start, sizeof(int32_t) * (b->B + 1));
	act->d_seq_start = at;
	at += act->cap_seqs + 1;
	be->ops->upload(be, at, act->rows, sizeof(int32_t) * act->N);
	act->d_rows = at;
	at += act->cap_rows;
	be->ops->upload(be, at, b->ids, sizeof(int32_t) * padded);
	act->d_ids = at;
	at += act->cap_padded;
	act->d_labels = NULL;
	if (b->labels)
	{
		be->ops->upload(be, at, b->labels, sizeof(int32_t) * b->B);
		act->d_labels = at;
	}
	act->d_targets = NULL;
	if (b->targets)
	{
		be->ops->upload(be, act->dev_targets, b->targets, sizeof(real) * b->B);
		act->d_targets = act->dev_targets;
	}
	if (net->opts.prefix_tokens > 0)
	{
		size_t		BV = (size_t) b->B * net->opts.prefix_tokens;

		at += act->cap_seqs;	/* past the labels */
		be->ops->upload(be, at, act->seq_start_ext, sizeof(int32_t) * (b->B + 1));
		act->d_seq_start_ext = at;
		at += act->cap_seqs + 1;
		be->ops->upload(be, at, act->real_ext, sizeof(int32_t) * act->N);
		act->d_real_ext = at;
		at += act->cap_rows;
		be->ops->upload(be, at, act->prefix_dst, sizeof(int32_t) * BV);
		act->d_prefix_dst = at;
		at += act->cap_seqs * net->opts.prefix_tokens;
		be->ops->upload(be, at, act->prefix_src, sizeof(int32_t) * BV);
		act->d_prefix_src = at;
	}
}

/* Draw a fresh dropout mask keep[n] (in the backend's memory) from the network's generator. */
static void
draw_mask(Network *net, uint8_t *keep, size_t n, double p)
{
	if (net->be->host_memory)
	{
		dropout_mask(keep, n, (real) p, &net->rng);
		return;
	}
	dropout_mask(net->act->mask_host, n, (real) p, &net->rng);
	net->be->ops->upload(net->be, keep, net->act->mask_host, n);
}

/* Apply dropout in place to x[n] when training, drawing a fresh mask. */
static void
maybe_dropout(Network *net, real *x, uint8_t *keep, double p, size_t n, bool train)
{
	if (!train || p <= 0)
		return;
	draw_mask(net, keep, n, p);
	net->be->ops->dropout(net->be, x, x, keep, (real) p, n);
}

/*
 * DoRA's per-row factors of linear w: inv = 1 / ||W + s B A|| (a constant
 * to the gradient, as PEFT detaches it) and g = magnitude * inv.
 */
static void
dora_factors(Network *net, LayerActs *la, int l, BertLinear w)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	Backend    *be = net->be;
	real	   *full = net->act->dora_w;

	if (net->freeze_dora_norm)
	{
		be->ops->colscale(be, la->dora_g[w], lin->out, dvalue(net, lp->dora[w]), lin->out,
						  la->dora_inv[w], 0, 1, false, 1, lin->out);
		return;
	}
	be->ops->copy(be, full, net->weights->layers[l].weight[w],
				  sizeof(real) * lin->out * lin->in);
	be->ops->gemm(be, false, false, lin->out, lin->in, net->opts.lora.r, net->scaling,
				  dvalue(net, lp->lora[w][1]), net->opts.lora.r, dvalue(net, lp->lora[w][0]),
				  lin->in, 1, full, lin->in);
	be->ops->row_inv_norms(be, la->dora_inv[w], full, lin->out, lin->in);
	be->ops->colscale(be, la->dora_g[w], lin->out, dvalue(net, lp->dora[w]), lin->out,
					  la->dora_inv[w], 0, 1, false, 1, lin->out);
}

/*
 * The LoRA update of linear w, if it has one, added to out (row stride
 * ldo) whose input was x:
 *   LoRA: out += s (xd A^T) B^T, xd = dropout(x)
 *   DoRA: out += (g - 1) (xd W^T) + g s (xd A^T) B^T, per output column,
 * which is PEFT's DoRA: with no dropout, g (x W^T + s x A^T B^T) + b.
 */
static void
lora_forward(Network *net, LayerActs *la, int l, BertLinear w, real *out, int ldo,
			 const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	Backend    *be = net->be;
	int			r = net->opts.lora.r;
	const real *xd = x;
	double		p = net->opts.lora.dropout;

	if (lp->lora[w][0] < 0)
		return;
	if (train && p > 0)
	{
		draw_mask(net, la->lora_keep[w], (size_t) N * lin->in, p);
		be->ops->dropout(be, la->lora_xd[w], x, la->lora_keep[w], (real) p,
						 (size_t) N * lin->in);
		xd = la->lora_xd[w];
	}
	/* xa[N, r] = xd A^T */
	be->ops->linear(be, la->lora_xa[w], r, xd, lin->in, dvalue(net, lp->lora[w][0]), NULL,
					N, lin->in, r);
	if (lp->dora[w] < 0)
	{
		/* out[N, out] += scaling * xa B^T */
		be->ops->gemm(be, false, true, N, lin->out, r, net->scaling, la->lora_xa[w], r,
					  dvalue(net, lp->lora[w][1]), r, 1, out, ldo);
		return;
	}
	dora_factors(net, la, l, w);
	be->ops->linear(be, la->dora_t[w], lin->out, xd, lin->in, net->weights->layers[l].weight[w],
					NULL, N, lin->in, lin->out);
	be->ops->gemm(be, false, true, N, lin->out, r, 1, la->lora_xa[w], r,
				  dvalue(net, lp->lora[w][1]), r, 0, la->dora_u[w], lin->out);
	be->ops->colscale(be, out, ldo, la->dora_t[w], lin->out, la->dora_g[w], -1, 1, true,
					  N, lin->out);
	be->ops->colscale(be, out, ldo, la->dora_u[w], lin->out, la->dora_g[w], 0, net->scaling,
					  true, N, lin->out);
}

/*
 * The adapters acting on the output of linear w (row stride ldo), whose
 * input was x: (IA)^3 scaling (of the output, bias included, as PEFT),
 * then LoRA or DoRA.
 */
static void
output_adapters(Network *net, LayerActs *la, int l, BertLinear w, real *out, int ldo,
				const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	int			ia3 = net->lp[l].ia3[w];

	if (net->merged)
		return;					/* folded into the weights */
	if (ia3 >= 0 && !net->opts.ia3.feedforward[w])
	{
		if (train)
			net->be->ops->colscale(net->be, la->ia3_pre[w], lin->out, out, ldo, NULL, 0, 1,
								   false, N, lin->out);
		net->be->ops->colscale(net->be, out, ldo, out, ldo, dvalue(net, ia3), 0, 1, false,
							   N, lin->out);
	}
	lora_forward(net, la, l, w, out, ldo, x, N, train);
}

/* The bias of linear w: BitFit's trained copy, or the model's. */
static const real *
linear_bias(const Network *net, int l, BertLinear w)
{
	int			i = net->lp[l].bias[w];

	/* a merged linear's bias already holds BitFit's value, scaled where (IA)^3 was folded in */
	if (net->merged && merges(net, l, w))
		return net->weights->layers[l].bias[w];
	return i >= 0 ? dvalue(net, i) : net->weights->layers[l].bias[w];
}

/* out[N, out] = x W^T + b with every adapter of linear w. */
static void
adapted_linear_forward(Network *net, LayerActs *la, int l, BertLinear w,
					   real *out, const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerWeights *lw = &net->weights->layers[l];
	int			ia3 = net->lp[l].ia3[w];
	const real *xin = x;

	/* (IA)^3 feed-forward: the input is scaled, column by column */
	if (ia3 >= 0 && net->opts.ia3.feedforward[w] && !net->merged)
	{
		net->be->ops->colscale(net->be, la->ia3_in[w], lin->in, x, lin->in, dvalue(net, ia3),
							   0, 1, false, N, lin->in);
		xin = la->ia3_in[w];
	}
	net->be->ops->linear(net->be, out, lin->out, xin, lin->in, lw->weight[w],
						 linear_bias(net, l, w), N, lin->in, lin->out);
	output_adapters(net, la, l, w, out, lin->out, x, N, train);
}

/* la->qkv[N, 3C] = query | key | value of x[N, C]: one product, then each adapter on its slice. */
static void
qkv_forward(Network *net, LayerActs *la, int l, const real *x, int N, bool train)
{
	size_t		C = net->base->cfg.hidden_size;
	const LayerWeights *lw = &net->weights->layers[l];
	/*
	 * BitFit declares the q, k, v biases adjacent: together they are the
	 * fused bias; a merged block has its own, BitFit's values included.
	 */
	const real *bias = net->lp[l].bias[BERT_QUERY] >= 0 &&
		!(net->merged && net->merged->qkv_weight[l]) ?
		dvalue(net, net->lp[l].bias[BERT_QUERY]) : lw->qkv_bias;

	net->be->ops->linear(net->be, la->qkv, 3 * C, x, C, lw->qkv_weight, bias, N, C, 3 * C);
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		output_adapters(net, la, l, w, la->qkv + w * C, 3 * C, x, N, train);
}

/*
 * A bottleneck adapter on h[N, C] in place: h += up(GELU(down(h))), its
 * input, down projection and activation kept in la for backward.
 */
static void
bottleneck_forward(Network *net, LayerActs *la, int l, int pos, real *h, int N)
{
	const int  *ad = net->lp[l].adapter[pos];
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	int			m;

	if (ad[0] < 0)
		return;					/* (reduction is 0 without adapters: no division before this) */
	m = C / net->opts.bottleneck.reduction;
	be->ops->copy(be, la->ad_in[pos], h, sizeof(real) * N * C);
	be->ops->linear(be, la->ad_d[pos], m, h, C, dvalue(net, ad[0]), dvalue(net, ad[1]), N, C, m);
	be->ops->gelu_forward(be, la->ad_g[pos], la->ad_d[pos], (size_t) N * m);
	be->ops->linear(be, net->act->ad_tmp, C, la->ad_g[pos], m, dvalue(net, ad[2]),
					dvalue(net, ad[3]), N, m, C);
	be->ops->add(be, h, h, net->act->ad_tmp, (size_t) N * C);
}

/* A LayerNorm's bias: BitFit's trained copy (index i), or the model's. */
static const real *
ln_beta(const Network *net, int i, const real *model_beta)
{
	return i >= 0 ? dvalue(net, i) : model_beta;
}

/*
 * Prefix tuning's attention for layer l: each sequence's queries attend
 * over its V key/value prefixes (raw, as PEFT's past_key_values) and its
 * own keys; the rows run in the extended layout and come back to ctx.
 */
static void
prefix_attention_forward(Network *net, LayerActs *la, int l, bool drop_attn)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			V = net->opts.prefix_tokens;
	int			ld = cfg->num_layers * 2 * C;
	const real *E = dvalue(net, net->prefix);

	be->ops->row_copy(be, la->qkv_ext, 3 * C, act->d_real_ext, la->qkv, 3 * C, NULL, act->N, 3 * C);
	be->ops->row_copy(be, la->qkv_ext + C, 3 * C, act->d_prefix_dst, E + (size_t) 2 * l * C, ld,
					  act->d_prefix_src, act->B * V, C);
	be->ops->row_copy(be, la->qkv_ext + 2 * C, 3 * C, act->d_prefix_dst, E + (size_t) (2 * l + 1) * C,
					  ld, act->d_prefix_src, act->B * V, C);
	be->ops->attention_forward(be, la->ctx_ext, la->probs, drop_attn ? act->datt : NULL,
							   la->qkv_ext, la->qkv_ext + C, la->qkv_ext + 2 * C, 3 * C,
							   drop_attn ? la->keep_attn : NULL,
							   drop_attn ? (real) net->opts.attention_dropout : 0,
							   act->d_seq_start_ext, act->B, act->N_ext, C, cfg->num_heads);
	be->ops->row_copy(be, la->ctx, C, NULL, la->ctx_ext, C, act->d_real_ext, act->N, C);
}

/* Run the encoder over the packed real tokens; act->last receives the final hidden states. */
static PeftCode
encoder_forward(Network *net, const Batch *b, bool train, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;
	const ModelWeights *mw;
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
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
		(rc = bind_device(net, err)) != PEFT_OK ||
		(rc = pack_batch(net, b, err)) != PEFT_OK ||
		(rc = acts_ensure(net, b->B, b->T, act->N, act->nprobs, train, err)) != PEFT_OK)
		return rc;
	N = act->N;
	mw = net->weights;
	upload_batch(net, b);

	be->ops->embeddings(be, act->emb, act->d_ids, act->d_rows, N, b->T, mw->word, mw->pos,
						mw->type, net->prompt >= 0 ? dvalue(net, net->prompt) : NULL,
						net->opts.prompt_tokens + net->opts.prefix_tokens, C, cfg->vocab_size);
	be->ops->layernorm_forward(be, act->h[0], act->ln0_mean, act->ln0_rstd, act->emb,
							   mw->ln_emb_gamma, ln_beta(net, net->emb_ln_beta, mw->ln_emb_beta),
							   N, C, eps);
	maybe_dropout(net, act->h[0], act->keep_emb, hp, (size_t) N * C, train);
	act->last = act->h[0];

	for (int l = 0; l < cfg->num_layers; l++)
	{
		const LayerWeights *lw = &mw->layers[l];
		LayerActs  *la = train ? &act->layers[l] : &act->layers[0];
		real	   *x = train ? act->h[l] : act->h[l % 2];
		real	   *y = train ? act->h[l + 1] : act->h[(l + 1) % 2];
		bool		drop_attn = train && ap > 0;

		qkv_forward(net, la, l, x, N, train);
		if (drop_attn)
			draw_mask(net, la->keep_attn, act->nprobs, ap);
		if (net->prefix >= 0)
			prefix_attention_forward(net, la, l, drop_attn);
		else
			be->ops->attention_forward(be, la->ctx, la->probs, drop_attn ? act->datt : NULL,
									   la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
									   drop_attn ? la->keep_attn : NULL, drop_attn ? (real) ap : 0,
									   act->d_seq_start, b->B, N, C, NH);

		adapted_linear_forward(net, la, l, BERT_ATTN_OUT, la->res1, la->ctx, N, train);
		maybe_dropout(net, la->res1, la->keep_ao, hp, (size_t) N * C, train);
		bottleneck_forward(net, la, l, 0, la->res1, N);
		be->ops->add(be, la->res1, la->res1, x, (size_t) N * C);
		be->ops->layernorm_forward(be, la->h1, la->ln1_mean, la->ln1_rstd, la->res1,
								   lw->ln_attn_gamma,
								   ln_beta(net, net->lp[l].ln_beta[0], lw->ln_attn_beta), N, C, eps);

		adapted_linear_forward(net, la, l, BERT_INTERMEDIATE, la->inter, la->h1, N, train);
		be->ops->gelu_forward(be, la->gel, la->inter, (size_t) N * FF);
		adapted_linear_forward(net, la, l, BERT_OUTPUT, la->res2, la->gel, N, train);
		maybe_dropout(net, la->res2, la->keep_o, hp, (size_t) N * C, train);
		bottleneck_forward(net, la, l, 1, la->res2, N);
		be->ops->add(be, la->res2, la->res2, la->h1, (size_t) N * C);
		be->ops->layernorm_forward(be, y, la->ln2_mean, la->ln2_rstd, la->res2,
								   lw->ln_out_gamma,
								   ln_beta(net, net->lp[l].ln_beta[1], lw->ln_out_beta), N, C, eps);
		act->last = y;
	}
	return PEFT_OK;
}

/* pooled[B, C] from the packed final hidden states, as the model's pooling says. */
static void
pool_forward(Network *net)
{
	NetworkActivations *act = net->act;

	/* over the real tokens: prompt tuning's virtual ones are left out */
	net->be->ops->pool_forward(net->be, net->base->cfg.pooling == POOLING_CLS, act->pooled,
							   act->last, act->d_seq_start, act->B,
							   net->base->cfg.hidden_size, net->opts.prompt_tokens);
}

/* Forward through encoder, pooling and head; optional mean loss (inside a backend use). */
static PeftCode
forward_locked(Network *net, const Batch *b, bool train, real *outputs,
			   double *loss, PeftError *err)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	int			K = net->opts.num_labels;
	int			C = net->base->cfg.hidden_size;
	PeftCode	rc;

	if (K < 1)
		return peft_fail(err, PEFT_ERR_INVALID, "this network has no head");
	if (loss && net->opts.task == TASK_CLASSIFICATION && b->labels)
		for (int i = 0; i < b->B; i++)
			if (b->labels[i] < 0 || b->labels[i] >= K)
				return peft_fail(err, PEFT_ERR_INVALID, "label %d out of range", b->labels[i]);
	if ((rc = encoder_forward(net, b, train, err)) != PEFT_OK)
		return rc;
	pool_forward(net);
	be->ops->linear(be, act->head_out, K, act->pooled, C, dvalue(net, net->head_weight),
					dvalue(net, net->head_bias), b->B, C, K);
	if (outputs)
		be->ops->download(be, outputs, act->head_out, sizeof(real) * b->B * K);
	if (loss)
	{
		*loss = 0;
		if (net->opts.task == TASK_CLASSIFICATION && b->labels)
			*loss = be->ops->cross_entropy_forward(be, act->head_probs, act->head_out,
												   act->d_labels, b->B, K);
		else if (net->opts.task == TASK_REGRESSION && b->targets)
			*loss = be->ops->mse_forward(be, act->head_out, act->d_targets, b->B);
	}
	return PEFT_OK;
}

/* Forward a batch through encoder, pooling and head; optional mean loss. */
PeftCode
network_forward(Network *net, const Batch *b, bool train, real *outputs,
				double *loss, PeftError *err)
{
	PeftCode	rc;

	net_enter(net);
	rc = forward_locked(net, b, train, outputs, loss, err);
	return net_leave(net, rc, err);
}

/* ---- backward ------------------------------------------------------------ */

/*
 * Gradients of the LoRA (or DoRA) adapter of linear w, if it has one,
 * given dout (row stride ldd): A, B (and the magnitude), and dx[N, in] +=
 * its input gradient (dx may be NULL).
 */
static void
lora_backward(Network *net, LayerActs *la, int l, BertLinear w, real *dx,
			  const real *dout, int ldd, const real *x, int N)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	int			ia = lp->lora[w][0];
	int			ib = lp->lora[w][1];
	int			r = net->opts.lora.r;
	int			in = lin->in;
	int			out = lin->out;
	double		p = net->opts.lora.dropout;
	const real *A;
	const real *Bm;
	const real *xd;
	const real *dup = dout;		/* gradient of xa B^T, before the scaling */
	int			ldu = ldd;
	real		s = net->scaling;

	if (ia < 0)
		return;
	A = dvalue(net, ia);
	Bm = dvalue(net, ib);
	xd = p > 0 ? la->lora_xd[w] : x;
	if (lp->dora[w] >= 0)
	{
		/* magnitude: dm_j += inv_j sum_n dout[n,j] (t + s u)[n,j] */
		be->ops->coldot(be, dgrad(net, lp->dora[w]), dout, ldd, la->dora_t[w], out,
						la->dora_inv[w], 1, N, out);
		be->ops->coldot(be, dgrad(net, lp->dora[w]), dout, ldd, la->dora_u[w], out,
						la->dora_inv[w], s, N, out);
		/* the LoRA product's output is scaled by g per column */
		be->ops->colscale(be, act->dscr, out, dout, ldd, la->dora_g[w], 0, 1, false, N, out);
		dup = act->dscr;
		ldu = out;
	}
	/* dB[out, r] += scaling * dup^T xa */
	be->ops->gemm(be, true, false, out, r, N, s, dup, ldu, la->lora_xa[w], r, 1, dgrad(net, ib), r);
	/* dxa[N, r] = scaling * dup B */
	be->ops->gemm(be, false, false, N, r, out, s, dup, ldu, Bm, r, 0, act->dxa, r);
	/* dA[r, in] += dxa^T xd */
	be->ops->gemm(be, true, false, r, in, N, 1, act->dxa, r, xd, in, 1, dgrad(net, ia), in);
	if (dx == NULL)
		return;
	/* gradient of xd: dxa A, and for DoRA ((g - 1) dout) W */
	if (p > 0)
		be->ops->gemm(be, false, false, N, in, r, 1, act->dxa, r, A, in, 0, act->dxd, in);
	else
		be->ops->gemm(be, false, false, N, in, r, 1, act->dxa, r, A, in, 1, dx, in);
	if (lp->dora[w] >= 0)
	{
		be->ops->colscale(be, act->dscr, out, dout, ldd, la->dora_g[w], -1, 1, false, N, out);
		be->ops->gemm(be, false, false, N, in, out, 1, act->dscr, out,
					  net->weights->layers[l].weight[w], in, 1, p > 0 ? act->dxd : dx, in);
	}
	if (p > 0)
		be->ops->dropout_backward(be, dx, act->dxd, la->lora_keep[w], (real) p, (size_t) N * in);
}

/*
 * Gradients of the output adapters of linear w given dout, the gradient
 * of its output (row stride ldd): (IA)^3's vector (dout is then scaled in
 * place to the gradient before scaling; pass a buffer nothing else reads)
 * and BitFit's bias.
 */
static void
output_backward(Network *net, LayerActs *la, int l, BertLinear w, real *dout, int ldd, int N)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	Backend    *be = net->be;

	if (lp->ia3[w] >= 0 && !net->opts.ia3.feedforward[w])
	{
		be->ops->coldot(be, dgrad(net, lp->ia3[w]), dout, ldd, la->ia3_pre[w], lin->out,
						NULL, 1, N, lin->out);
		be->ops->colscale(be, dout, ldd, dout, ldd, dvalue(net, lp->ia3[w]), 0, 1, false,
						  N, lin->out);
	}
	if (lp->bias[w] >= 0)
		be->ops->coldot(be, dgrad(net, lp->bias[w]), dout, ldd, NULL, 0, NULL, 1, N, lin->out);
}

/*
 * Backward of an adapted linear: dx[N, in] = beta dx + dout W (beta 0
 * overwrites, so dx needs no zeroing), plus every adapter's gradients.
 * dout is not changed: a copy is scaled where (IA)^3 needs it.
 */
static void
adapted_linear_backward(Network *net, LayerActs *la, int l, BertLinear w,
						real *dx, real beta, const real *dout, const real *x, int N)
{
	NetworkActivations *act = net->act;
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	Backend    *be = net->be;
	const real *W = net->weights->layers[l].weight[w];
	const real *dout_lora = dout;	/* LoRA never shares a linear with (IA)^3 */
	int			ia3 = lp->ia3[w];

	if (ia3 >= 0 && !net->opts.ia3.feedforward[w])
	{
		be->ops->copy(be, act->dscr, dout, sizeof(real) * N * lin->out);
		output_backward(net, la, l, w, act->dscr, lin->out, N);
		dout = act->dscr;
	}
	else if (lp->bias[w] >= 0)
		output_backward(net, la, l, w, (real *) dout, lin->out, N);	/* only reads it */
	if (ia3 >= 0 && net->opts.ia3.feedforward[w])
	{
		/* x' = x * l: dx' = dout W, dl += colsum(dx' * x), dx (+)= dx' * l */
		be->ops->gemm(be, false, false, N, lin->in, lin->out, 1, dout, lin->out, W, lin->in,
					  0, act->dia3, lin->in);
		be->ops->coldot(be, dgrad(net, ia3), act->dia3, lin->in, x, lin->in, NULL, 1, N, lin->in);
		be->ops->colscale(be, dx, lin->in, act->dia3, lin->in, dvalue(net, ia3), 0, 1,
						  beta != 0, N, lin->in);
	}
	else
		be->ops->gemm(be, false, false, N, lin->in, lin->out, 1, dout, lin->out,
					  W, lin->in, beta, dx, lin->in);
	lora_backward(net, la, l, w, dx, dout_lora, lin->out, x, N);
}

/* Whether layer l holds any trainable tensor (prefix tuning's prefixes are in every layer). */
static bool
layer_trains(const Network *net, int l)
{
	if (net->prefix >= 0)
		return true;
	const int  *idx = (const int *) &net->lp[l];

	for (size_t i = 0; i < sizeof(LayerParams) / sizeof(int); i++)
		if (idx[i] >= 0)
			return true;
	return false;
}

/* Whether the embeddings train (BitFit's LayerNorm bias, prompt tuning's tokens). */
static bool
embeddings_train(const Network *net)
{
	return net->emb_ln_beta >= 0 || net->prompt >= 0;
}

/* True when layer l or any layer below it (or the embeddings) trains. */
static bool
trains_at_or_below(const Network *net, int l)
{
	if (embeddings_train(net))
		return true;
	for (int i = 0; i <= l; i++)
		if (layer_trains(net, i))
			return true;
	return false;
}

/* Whether linear w of layer l has any adapter (its output gradient is needed). */
static bool
linear_trains(const Network *net, int l, int w)
{
	const LayerParams *lp = &net->lp[l];

	return lp->lora[w][0] >= 0 || lp->ia3[w] >= 0 || lp->bias[w] >= 0;
}

/*
 * Backward of a bottleneck adapter: act->dad = gradient of its input given
 * da, the gradient of its output (which is left as it is).
 */
static void
bottleneck_backward(Network *net, LayerActs *la, int l, int pos, const real *da, int N)
{
	NetworkActivations *act = net->act;
	const int  *ad = net->lp[l].adapter[pos];
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	int			m = C / net->opts.bottleneck.reduction;

	be->ops->copy(be, act->dad, da, sizeof(real) * N * C);
	be->ops->zero(be, act->dga, sizeof(real) * N * m);
	be->ops->linear_backward(be, act->dga, dgrad(net, ad[2]), dgrad(net, ad[3]), da,
							 la->ad_g[pos], dvalue(net, ad[2]), N, m, C);
	be->ops->zero(be, act->ddd, sizeof(real) * N * m);
	be->ops->gelu_backward(be, act->ddd, la->ad_d[pos], act->dga, (size_t) N * m);
	be->ops->linear_backward(be, act->dad, dgrad(net, ad[0]), dgrad(net, ad[1]), act->ddd,
							 la->ad_in[pos], dvalue(net, ad[0]), N, C, m);
}

/*
 * The gradient of a sublayer's dense output given dres, that of the
 * residual sum's sublayer part: through the bottleneck adapter at pos, if
 * any, then the hidden dropout.  Returns the buffer holding it.
 */
static real *
sublayer_gradient(Network *net, LayerActs *la, int l, int pos, real *dres,
				  const uint8_t *keep, int N)
{
	NetworkActivations *act = net->act;
	size_t		NC = (size_t) N * net->base->cfg.hidden_size;
	real		hp = (real) net->opts.hidden_dropout;

	if (net->lp[l].adapter[pos][0] >= 0)
	{
		bottleneck_backward(net, la, l, pos, dres, N);
		dres = act->dad;
	}
	if (hp > 0)
	{
		net->be->ops->dropout(net->be, act->dres, dres, keep, hp, NC);
		dres = act->dres;
	}
	return dres;
}

/*
 * Backward of prefix tuning's attention for layer l: act->dctx -> act->dqkv
 * (the real rows) and the gradients of the layer's prefixes (summed over
 * the sequences).
 */
static void
prefix_attention_backward(Network *net, LayerActs *la, int l)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			V = net->opts.prefix_tokens;
	int			ld = cfg->num_layers * 2 * C;
	size_t		ext = (size_t) act->N_ext;
	real		ap = (real) net->opts.attention_dropout;
	real	   *dE = dgrad(net, net->prefix);

	be->ops->zero(be, act->dctx_ext, ext * C * sizeof(real));
	be->ops->row_copy(be, act->dctx_ext, C, act->d_real_ext, act->dctx, C, NULL, act->N, C);
	be->ops->zero(be, act->dqkv_ext, ext * 3 * C * sizeof(real));
	be->ops->attention_backward(be, act->dqkv_ext, act->dqkv_ext + C, act->dqkv_ext + 2 * C,
								act->datt, act->dctx_ext, la->probs,
								la->qkv_ext, la->qkv_ext + C, la->qkv_ext + 2 * C, 3 * C,
								ap > 0 ? la->keep_attn : NULL, ap,
								act->d_seq_start_ext, act->B, act->N_ext, C, cfg->num_heads);
	be->ops->row_copy(be, act->dqkv, 3 * C, NULL, act->dqkv_ext, 3 * C, act->d_real_ext, act->N, 3 * C);
	be->ops->prompt_backward(be, dE + (size_t) 2 * l * C, ld, act->dqkv_ext + C, 3 * C,
							 act->d_seq_start_ext, act->B, V, C);
	be->ops->prompt_backward(be, dE + (size_t) (2 * l + 1) * C, ld, act->dqkv_ext + 2 * C, 3 * C,
							 act->d_seq_start_ext, act->B, V, C);
}

/* Backward of one encoder layer: act->dh (its output gradient) -> act->dx. */
static void
layer_backward(Network *net, int l, bool need_dx)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	const LayerWeights *lw = &net->weights->layers[l];
	const LayerParams *lp = &net->lp[l];
	LayerActs  *la = &act->layers[l];
	int			N = act->N;
	int			C = cfg->hidden_size;
	size_t		NC = (size_t) N * C;
	size_t		NI = (size_t) N * cfg->intermediate_size;
	real		ap = (real) net->opts.attention_dropout;
	real	   *x = act->h[l];
	real	   *dsub;			/* gradient of a sublayer's dense output */
	real	   *dln1;
	bool		train_q = linear_trains(net, l, BERT_QUERY);
	bool		train_k = linear_trains(net, l, BERT_KEY);
	bool		train_v = linear_trains(net, l, BERT_VALUE);

	/* output LayerNorm: the residual carries its input gradient to h1 */
	be->ops->zero(be, act->dh1, NC * sizeof(real));
	be->ops->layernorm_backward(be, act->dh1, lp->ln_beta[1] >= 0 ? dgrad(net, lp->ln_beta[1]) : NULL,
								act->dh, la->res2, lw->ln_out_gamma, la->ln2_mean, la->ln2_rstd,
								N, C);
	/* the residual's copy is act->dres or act->dad: dh1 itself stays for h1 */
	dsub = sublayer_gradient(net, la, l, 1, act->dh1, la->keep_o, N);

	/* feed-forward; its input gradient adds onto dh1 */
	adapted_linear_backward(net, la, l, BERT_OUTPUT, act->dgel, 0, dsub, la->gel, N);
	be->ops->zero(be, act->dinter, NI * sizeof(real));
	be->ops->gelu_backward(be, act->dinter, la->inter, act->dgel, NI);
	adapted_linear_backward(net, la, l, BERT_INTERMEDIATE, act->dh1, 1, act->dinter, la->h1, N);

	/* attention LayerNorm: the residual carries its input gradient to x */
	dln1 = need_dx ? act->dx : act->dres;
	be->ops->zero(be, dln1, NC * sizeof(real));
	be->ops->layernorm_backward(be, dln1, lp->ln_beta[0] >= 0 ? dgrad(net, lp->ln_beta[0]) : NULL,
								act->dh1, la->res1, lw->ln_attn_gamma, la->ln1_mean, la->ln1_rstd,
								N, C);
	dsub = sublayer_gradient(net, la, l, 0, dln1, la->keep_ao, N);
	adapted_linear_backward(net, la, l, BERT_ATTN_OUT, act->dctx, 0, dsub, la->ctx, N);

	/* attention core, then the fused q/k/v projection */
	if (!need_dx && !train_q && !train_k && !train_v && net->prefix < 0)
		return;
	be->ops->zero(be, act->dqkv, NC * 3 * sizeof(real));
	if (net->prefix >= 0)
		prefix_attention_backward(net, la, l);
	else
		be->ops->attention_backward(be, need_dx || train_q ? act->dqkv : NULL,
									need_dx || train_k ? act->dqkv + C : NULL,
									need_dx || train_v ? act->dqkv + 2 * C : NULL,
									act->datt, act->dctx, la->probs,
									la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
									ap > 0 ? la->keep_attn : NULL, ap,
									act->d_seq_start, act->B, N, C, cfg->num_heads);
	/* dqkv is read only here and below, so (IA)^3 may scale it in place */
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
	{
		output_backward(net, la, l, w, act->dqkv + w * C, 3 * C, N);
		lora_backward(net, la, l, w, need_dx ? act->dx : NULL, act->dqkv + w * C, 3 * C, x, N);
	}
	/* dx[N, C] += dqkv[N, 3C] Wqkv[3C, C] */
	if (need_dx)
		be->ops->gemm(be, false, false, N, C, 3 * C, 1, act->dqkv, 3 * C,
					  lw->qkv_weight, C, 1, act->dx, C);
}

/* The backward pass inside a backend use. */
static PeftCode
backward_locked(Network *net, const Batch *b, real loss_scale, PeftError *err)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			K = net->opts.num_labels;

	if (act == NULL || !act->train_layout || act->last == NULL || K < 1 || !net->dp_bound)
		return peft_fail(err, PEFT_ERR_INTERNAL, "backward without a training forward");
	if (net->merged)
		return peft_fail(err, PEFT_ERR_INVALID, "a merged network cannot be trained");
	if (b->B != act->B)
		return peft_fail(err, PEFT_ERR_INTERNAL, "backward of another batch than the forward's");

	/* loss -> head -> pooled */
	be->ops->zero(be, act->dhead, sizeof(real) * b->B * K);
	if (net->opts.task == TASK_CLASSIFICATION)
		be->ops->cross_entropy_backward(be, act->dhead, act->head_probs, act->d_labels,
										loss_scale, b->B, K);
	else
		be->ops->mse_backward(be, act->dhead, act->head_out, act->d_targets, loss_scale, b->B);
	be->ops->zero(be, act->dpooled, sizeof(real) * b->B * C);
	be->ops->linear_backward(be, act->dpooled, dgrad(net, net->head_weight),
							 dgrad(net, net->head_bias), act->dhead, act->pooled,
							 dvalue(net, net->head_weight), b->B, C, K);

	/* pooled -> final hidden states */
	be->ops->zero(be, act->dh, (size_t) act->N * C * sizeof(real));
	be->ops->pool_backward(be, cfg->pooling == POOLING_CLS, act->dh, act->dpooled,
						   act->d_seq_start, act->B, C, net->opts.prompt_tokens);

	/* layers, top down, stopping below the lowest trainable tensor */
	for (int l = cfg->num_layers - 1; l >= 0; l--)
	{
		real	   *swap;

		if (!trains_at_or_below(net, l))
			break;
		layer_backward(net, l, l > 0 ? trains_at_or_below(net, l - 1) : embeddings_train(net));
		swap = act->dh;
		act->dh = act->dx;
		act->dx = swap;
	}
	/*
	 * The embeddings, through their dropout and LayerNorm: BitFit's
	 * LayerNorm bias, prompt tuning's virtual tokens.
	 */
	if (embeddings_train(net))
	{
		const real *d = act->dh;

		if (net->opts.hidden_dropout > 0)
		{
			be->ops->dropout(be, act->dres, act->dh, act->keep_emb,
							 (real) net->opts.hidden_dropout, (size_t) act->N * C);
			d = act->dres;
		}
		if (net->emb_ln_beta >= 0)
			be->ops->coldot(be, dgrad(net, net->emb_ln_beta), d, C, NULL, 0, NULL, 1, act->N, C);
		if (net->prompt >= 0)
		{
			be->ops->zero(be, act->dx, (size_t) act->N * C * sizeof(real));
			be->ops->layernorm_backward(be, act->dx, NULL, d, act->emb, net->weights->ln_emb_gamma,
										act->ln0_mean, act->ln0_rstd, act->N, C);
			be->ops->prompt_backward(be, dgrad(net, net->prompt), C, act->dx, C, act->d_seq_start,
									 act->B, net->opts.prompt_tokens, C);
		}
	}
	net->dp_newer = !be->host_memory;
	return PEFT_OK;
}

/* Add the gradients of the last training forward's loss (times loss_scale). */
PeftCode
network_backward(Network *net, const Batch *b, real loss_scale, PeftError *err)
{
	PeftCode	rc;

	net_enter(net);
	rc = backward_locked(net, b, loss_scale, err);
	return net_leave(net, rc, err);
}

/* ---- optimizer ----------------------------------------------------------- */

/* Zero every parameter gradient (in the backend's memory). */
PeftCode
network_zero_grads(Network *net, PeftError *err)
{
	PeftCode	rc;

	net_enter(net);
	rc = bind_device(net, err);
	if (rc == PEFT_OK)
		net->be->ops->zero(net->be, net->dp.grads, net->params.total * sizeof(real));
	return net_leave(net, rc, err);
}

/* Clip by global norm, then one AdamW step over every parameter. */
PeftCode
network_optimizer_step(Network *net, double lr, double beta1, double beta2, double eps,
					   double weight_decay, int t, double max_norm, double *grad_norm,
					   PeftError *err)
{
	Backend    *be = net->be;
	size_t		n = net->params.total;
	double		norm;
	PeftCode	rc;

	net_enter(net);
	if ((rc = bind_device(net, err)) != PEFT_OK)
		return net_leave(net, rc, err);
	norm = sqrt(be->ops->sum_squares(be, net->dp.grads, n));
	*grad_norm = norm;
	if (max_norm > 0)
	{
		/* as torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when below 1 */
		double		coef = max_norm / (norm + 1e-6);

		if (coef < 1.0)
			be->ops->scale(be, net->dp.grads, (real) coef, n);
	}
	be->ops->adamw(be, net->dp.values, net->dp.grads, net->dp.adam_m, net->dp.adam_v, n,
				   (real) lr, (real) beta1, (real) beta2, (real) eps, (real) weight_decay, t);
	net->dp_newer = !be->host_memory;
	return net_leave(net, PEFT_OK, err);
}

/* ---- inference outputs --------------------------------------------------- */

/* Sentence embeddings [B, C]: pooling, then L2 normalisation when configured. */
PeftCode
network_embed(Network *net, const Batch *b, real *embeddings, PeftError *err)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	PeftCode	rc;

	net_enter(net);
	if ((rc = encoder_forward(net, b, false, err)) == PEFT_OK)
	{
		pool_forward(net);
		if (net->base->cfg.normalize)
		{
			be->ops->l2norm_forward(be, act->normed, act->norm, act->pooled, b->B, C);
			be->ops->download(be, embeddings, act->normed, sizeof(real) * b->B * C);
		}
		else
			be->ops->download(be, embeddings, act->pooled, sizeof(real) * b->B * C);
	}
	return net_leave(net, rc, err);
}

/* Last hidden states [B, T, C]: the real tokens' rows, zeros in padded rows. */
PeftCode
network_hidden_states(Network *net, const Batch *b, real *hidden, PeftError *err)
{
	Backend    *be = net->be;
	size_t		bytes = sizeof(real) * b->B * b->T * net->base->cfg.hidden_size;
	real	   *out;
	PeftCode	rc;

	net_enter(net);
	if ((rc = encoder_forward(net, b, false, err)) == PEFT_OK)
	{
		/* the CPU scatters straight into hidden; a device through a temporary */
		out = be->host_memory ? hidden : be->ops->alloc(be, bytes);
		if (out != NULL)
		{
			be->ops->scatter_rows(be, out, net->act->last, net->act->d_rows, net->act->N,
								  b->B * b->T, net->base->cfg.hidden_size);
			if (!be->host_memory)
			{
				be->ops->download(be, hidden, out, bytes);
				be->ops->release(be, out);
			}
		}
	}
	return net_leave(net, rc, err);
}

/* ---- merging ------------------------------------------------------------- */

/* Whether linear w of layer l has an adapter that merging folds in. */
static bool
merges(const Network *net, int l, int w)
{
	return net->lp[l].lora[w][0] >= 0 || net->lp[l].ia3[w] >= 0;
}

/*
 * out[o, :] = the merged weight of linear w (W's rows at src, stride in)
 * and bout[o] its bias, in double then rounded once:
 *   LoRA  W + s B A;   DoRA  diag(m / ||W + s B A||) (W + s B A);
 *   (IA)^3 diag(l) W, l b (output) or W diag(l) (feed-forward).
 */
static void
merge_linear(const Network *net, int l, int w, const real *W, const real *b, real *out, real *bout)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerParams *lp = &net->lp[l];
	const ParamSet *ps = &net->params;
	int			in = lin->in;
	int			r = net->opts.lora.r;
	double	   *row = malloc(sizeof(double) * in);

	for (int o = 0; o < lin->out; o++)
	{
		double		scale = 1;
		double		bias = lp->bias[w] >= 0 ? param_value(ps, lp->bias[w])[o] : b[o];

		for (int i = 0; i < in; i++)
			row[i] = W[(size_t) o * in + i];
		if (lp->lora[w][0] >= 0)
		{
			const real *A = param_value(ps, lp->lora[w][0]);
			const real *Bm = param_value(ps, lp->lora[w][1]);

			for (int i = 0; i < in; i++)
			{
				double		ba = 0;

				for (int k = 0; k < r; k++)
					ba += (double) Bm[(size_t) o * r + k] * A[(size_t) k * in + i];
				row[i] += net->scaling * ba;
			}
			if (lp->dora[w] >= 0)
			{
				double		norm = 0;

				for (int i = 0; i < in; i++)
					norm += row[i] * row[i];
				scale = param_value(ps, lp->dora[w])[o] / sqrt(norm);
			}
		}
		if (lp->ia3[w] >= 0 && !net->opts.ia3.feedforward[w])
		{
			scale = param_value(ps, lp->ia3[w])[o];
			bias *= scale;
		}
		for (int i = 0; i < in; i++)
		{
			double		v = row[i] * scale;

			if (lp->ia3[w] >= 0 && net->opts.ia3.feedforward[w])
				v *= param_value(ps, lp->ia3[w])[i];
			out[(size_t) o * in + i] = (real) v;
		}
		bout[o] = (real) bias;
	}
	free(row);
}

/* Free the host copies of merged weights. */
static void
merged_free(MergedWeights *mw)
{
	if (mw == NULL)
		return;
	for (int l = 0; l < mw->L; l++)
	{
		free(mw->qkv_weight[l]);
		free(mw->qkv_bias[l]);
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			free(mw->weight[l][w]);
			free(mw->bias[l][w]);
		}
	}
	free(mw->qkv_weight);
	free(mw->qkv_bias);
	free(mw->weight);
	free(mw->bias);
	free(mw->device);
	free(mw);
}

/* Fold LoRA, DoRA and (IA)^3 into private copies of the weights they touch. */
PeftCode
network_merge(Network *net, PeftError *err)
{
	const BertModel *m = net->base;
	int			L = m->cfg.num_layers;
	size_t		C = m->cfg.hidden_size;
	MergedWeights *mw;
	PeftCode	rc;

	if (net->merged)
		return PEFT_OK;
	if ((rc = network_params_fetch(net, err)) != PEFT_OK)
		return rc;
	mw = calloc(1, sizeof(MergedWeights));
	if (mw == NULL || (mw->qkv_weight = calloc(L, sizeof(real *))) == NULL ||
		(mw->qkv_bias = calloc(L, sizeof(real *))) == NULL ||
		(mw->weight = calloc(L, sizeof(*mw->weight))) == NULL ||
		(mw->bias = calloc(L, sizeof(*mw->bias))) == NULL)
		goto oom;
	mw->L = L;
	for (int l = 0; l < L; l++)
	{
		if (merges(net, l, BERT_QUERY) || merges(net, l, BERT_KEY) || merges(net, l, BERT_VALUE))
		{
			mw->qkv_weight[l] = malloc(sizeof(real) * 3 * C * C);
			mw->qkv_bias[l] = malloc(sizeof(real) * 3 * C);
			if (mw->qkv_weight[l] == NULL || mw->qkv_bias[l] == NULL)
				goto oom;
			memcpy(mw->qkv_weight[l], m->qkv_weight + (size_t) l * 3 * C * C, sizeof(real) * 3 * C * C);
			for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
			{
				const LayerParams *lp = &net->lp[l];

				/* every slice's bias: BitFit's where trained (merged or not), else the model's */
				memcpy(mw->qkv_bias[l] + w * C,
					   lp->bias[w] >= 0 ? param_value(&net->params, lp->bias[w]) : m->layers[l].linear[w].bias,
					   sizeof(real) * C);
				if (merges(net, l, w))
					merge_linear(net, l, w, m->layers[l].linear[w].weight, m->layers[l].linear[w].bias,
								 mw->qkv_weight[l] + w * C * C, mw->qkv_bias[l] + w * C);
			}
		}
		for (int w = BERT_ATTN_OUT; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &m->layers[l].linear[w];

			if (!merges(net, l, w))
				continue;
			mw->weight[l][w] = malloc(sizeof(real) * lin->out * lin->in);
			mw->bias[l][w] = malloc(sizeof(real) * lin->out);
			if (mw->weight[l][w] == NULL || mw->bias[l][w] == NULL)
				goto oom;
			merge_linear(net, l, w, lin->weight, lin->bias, mw->weight[l][w], mw->bias[l][w]);
		}
	}
	/* rebind: the next use builds the weights table with the merged copies */
	net_enter(net);
	device_drop(net, true);
	net->merged = mw;
	return net_leave(net, PEFT_OK, err);
oom:
	merged_free(mw);
	return peft_fail(err, PEFT_ERR_NOMEM, "out of memory merging the adapter");
}
