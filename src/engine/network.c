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
} LayerActs;

struct NetworkActivations
{
	size_t		cap_rows;		/* packed rows N the buffers hold */
	size_t		cap_probs;		/* attention block elements they hold */
	size_t		cap_seqs;		/* sequences B they hold */
	size_t		cap_padded;		/* B*T token ids they hold */
	bool		train_layout;	/* every layer has its own buffers */
	void	  **blocks;			/* every allocation in the backend, for freeing */
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
	int32_t    *dev_ints;		/* device copies: seq_start | rows | ids | labels */
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
	net->be = backend_cpu();
	net->precision = PRECISION_FP32;
	*out = net;
	return PEFT_OK;
}

/* ---- buffers in the backend ---------------------------------------------- */

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
	if (net->weights && release)
		net->be->ops->weights_release(net->be, net->weights);
	net->weights = NULL;
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

/* Make sure the base weights and the parameters are in the backend's memory. */
static PeftCode
bind_device(Network *net, PeftError *err)
{
	Backend    *be = net->be;
	ParamSet   *ps = &net->params;
	size_t		bytes = ps->total * sizeof(real);
	PeftCode	rc;

	if (net->weights == NULL &&
		(rc = be->ops->weights_acquire(be, net->base, &net->weights, err)) != PEFT_OK)
		return rc;
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
		free(net->act);
	}
	paramset_free(&net->params);
	free(net->lora);
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
	rows = grow_capacity(N, act->cap_rows, padded);
	probs = grow_capacity(nprobs, act->cap_probs, padded * NH * T);
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

		act->dev_ints = acts_alloc(net, (seqs + 1) + rows + ids + seqs, sizeof(int32_t), &ok);
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

			if (!net->opts.lora.targets[w])
				continue;
			la->lora_xa[w] = acts_alloc(net, rows * r, sizeof(real), &ok);
			if (train && lora_drop)
			{
				la->lora_xd[w] = acts_alloc(net, rows * in, sizeof(real), &ok);
				la->lora_keep[w] = acts_alloc(net, rows * in, 1, &ok);
			}
		}
	}
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

/* Size the buffers once for the largest batch (B x T, every token real) a run will use. */
PeftCode
network_reserve(Network *net, int B, int T, bool train, PeftError *err)
{
	size_t		nprobs = (size_t) net->base->cfg.num_heads * B * T * T;
	PeftCode	rc;

	if (B < 1 || T < 1 || B > (1 << 20) || T > net->base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "cannot reserve a %d x %d batch", B, T);
	net_enter(net);
	rc = bind_device(net, err);
	if (rc == PEFT_OK)
		rc = acts_ensure(net, B, T, (size_t) B * T, nprobs, train, err);
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

/* Pack the real tokens of a checked batch on the host: act's B, N, seq_start, rows, nprobs. */
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

/* out (row stride ldo) += scaling * (dropout(x) A^T) B^T where linear w has an adapter. */
static void
lora_forward(Network *net, LayerActs *la, int l, BertLinear w, real *out, int ldo,
			 const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	Backend    *be = net->be;
	int			ia = net->lora[l][w][0];
	int			r = net->opts.lora.r;
	const real *xd = x;
	double		p = net->opts.lora.dropout;

	if (ia < 0)
		return;
	if (train && p > 0)
	{
		draw_mask(net, la->lora_keep[w], (size_t) N * lin->in, p);
		be->ops->dropout(be, la->lora_xd[w], x, la->lora_keep[w], (real) p,
						 (size_t) N * lin->in);
		xd = la->lora_xd[w];
	}
	/* xa[N, r] = xd A^T */
	be->ops->linear(be, la->lora_xa[w], r, xd, lin->in, dvalue(net, ia), NULL,
					N, lin->in, r);
	/* out[N, out] += scaling * xa B^T */
	be->ops->gemm(be, false, true, N, lin->out, r, net->scaling, la->lora_xa[w], r,
				  dvalue(net, net->lora[l][w][1]), r, 1, out, ldo);
}

/* out[N, out] = x W^T + b, plus the adapter of linear w if it has one. */
static void
adapted_linear_forward(Network *net, LayerActs *la, int l, BertLinear w,
					   real *out, const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	const LayerWeights *lw = &net->weights->layers[l];

	net->be->ops->linear(net->be, out, lin->out, x, lin->in, lw->weight[w], lw->bias[w],
						 N, lin->in, lin->out);
	lora_forward(net, la, l, w, out, lin->out, x, N, train);
}

/* la->qkv[N, 3C] = query | key | value of x[N, C]: one product, then each adapter on its slice. */
static void
qkv_forward(Network *net, LayerActs *la, int l, const real *x, int N, bool train)
{
	size_t		C = net->base->cfg.hidden_size;
	const LayerWeights *lw = &net->weights->layers[l];

	net->be->ops->linear(net->be, la->qkv, 3 * C, x, C, lw->qkv_weight, lw->qkv_bias,
						 N, C, 3 * C);
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		lora_forward(net, la, l, w, la->qkv + w * C, 3 * C, x, N, train);
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
						mw->type, C, cfg->vocab_size);
	be->ops->layernorm_forward(be, act->h[0], act->ln0_mean, act->ln0_rstd, act->emb,
							   mw->ln_emb_gamma, mw->ln_emb_beta, N, C, eps);
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
		be->ops->attention_forward(be, la->ctx, la->probs, drop_attn ? act->datt : NULL,
								   la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
								   drop_attn ? la->keep_attn : NULL, drop_attn ? (real) ap : 0,
								   act->d_seq_start, b->B, N, C, NH);

		adapted_linear_forward(net, la, l, BERT_ATTN_OUT, la->res1, la->ctx, N, train);
		maybe_dropout(net, la->res1, la->keep_ao, hp, (size_t) N * C, train);
		be->ops->add(be, la->res1, la->res1, x, (size_t) N * C);
		be->ops->layernorm_forward(be, la->h1, la->ln1_mean, la->ln1_rstd, la->res1,
								   lw->ln_attn_gamma, lw->ln_attn_beta, N, C, eps);

		adapted_linear_forward(net, la, l, BERT_INTERMEDIATE, la->inter, la->h1, N, train);
		be->ops->gelu_forward(be, la->gel, la->inter, (size_t) N * FF);
		adapted_linear_forward(net, la, l, BERT_OUTPUT, la->res2, la->gel, N, train);
		maybe_dropout(net, la->res2, la->keep_o, hp, (size_t) N * C, train);
		be->ops->add(be, la->res2, la->res2, la->h1, (size_t) N * C);
		be->ops->layernorm_forward(be, y, la->ln2_mean, la->ln2_rstd, la->res2,
								   lw->ln_out_gamma, lw->ln_out_beta, N, C, eps);
		act->last = y;
	}
	return PEFT_OK;
}

/* pooled[B, C] from the packed final hidden states, as the model's pooling says. */
static void
pool_forward(Network *net)
{
	NetworkActivations *act = net->act;

	net->be->ops->pool_forward(net->be, net->base->cfg.pooling == POOLING_CLS, act->pooled,
							   act->last, act->d_seq_start, act->B,
							   net->base->cfg.hidden_size);
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
 * Gradients of the adapter of linear w, if it has one, given dout (row
 * stride ldd): LoRA A and B, and dx[N, in] += its input gradient (dx may
 * be NULL).
 */
static void
lora_backward(Network *net, LayerActs *la, int l, BertLinear w, real *dx,
			  const real *dout, int ldd, const real *x, int N)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
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
	A = dvalue(net, ia);
	Bm = dvalue(net, ib);
	xd = p > 0 ? la->lora_xd[w] : x;
	/* dB[out, r] += scaling * dout^T xa */
	be->ops->gemm(be, true, false, out, r, N, net->scaling, dout, ldd,
				  la->lora_xa[w], r, 1, dgrad(net, ib), r);
	/* dxa[N, r] = scaling * dout B */
	be->ops->gemm(be, false, false, N, r, out, net->scaling, dout, ldd,
				  Bm, r, 0, act->dxa, r);
	/* dA[r, in] += dxa^T xd */
	be->ops->gemm(be, true, false, r, in, N, 1, act->dxa, r, xd, in,
				  1, dgrad(net, ia), in);
	if (dx && p > 0)
	{
		be->ops->gemm(be, false, false, N, in, r, 1, act->dxa, r, A, in,
					  0, act->dxd, in);
		be->ops->dropout_backward(be, dx, act->dxd, la->lora_keep[w], (real) p,
								  (size_t) N * in);
	}
	else if (dx)
		be->ops->gemm(be, false, false, N, in, r, 1, act->dxa, r, A, in, 1, dx, in);
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

	net->be->ops->gemm(net->be, false, false, N, lin->in, lin->out, 1, dout, lin->out,
					   net->weights->layers[l].weight[w], lin->in, beta, dx, lin->in);
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
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	const LayerWeights *lw = &net->weights->layers[l];
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
	be->ops->zero(be, act->dh1, NC * sizeof(real));
	be->ops->layernorm_backward(be, act->dh1, act->dh, la->res2, lw->ln_out_gamma,
								la->ln2_mean, la->ln2_rstd, N, C);
	dsub = act->dh1;
	if (hp > 0)
	{
		be->ops->dropout(be, act->dres, act->dh1, la->keep_o, hp, NC);
		dsub = act->dres;
	}

	/* feed-forward; its input gradient adds onto dh1 */
	adapted_linear_backward(net, la, l, BERT_OUTPUT, act->dgel, 0, dsub, la->gel, N);
	be->ops->zero(be, act->dinter, NI * sizeof(real));
	be->ops->gelu_backward(be, act->dinter, la->inter, act->dgel, NI);
	adapted_linear_backward(net, la, l, BERT_INTERMEDIATE, act->dh1, 1, act->dinter, la->h1, N);

	/* attention LayerNorm: the residual carries its input gradient to x */
	dln1 = need_dx ? act->dx : act->dres;
	be->ops->zero(be, dln1, NC * sizeof(real));
	be->ops->layernorm_backward(be, dln1, act->dh1, la->res1, lw->ln_attn_gamma,
								la->ln1_mean, la->ln1_rstd, N, C);
	dsub = dln1;
	if (hp > 0)
	{
		be->ops->dropout(be, act->dres, dln1, la->keep_ao, hp, NC);
		dsub = act->dres;
	}
	adapted_linear_backward(net, la, l, BERT_ATTN_OUT, act->dctx, 0, dsub, la->ctx, N);

	/* attention core, then the fused q/k/v projection */
	if (!need_dx && !lora_q && !lora_k && !lora_v)
		return;
	be->ops->zero(be, act->dqkv, NC * 3 * sizeof(real));
	be->ops->attention_backward(be, need_dx || lora_q ? act->dqkv : NULL,
								need_dx || lora_k ? act->dqkv + C : NULL,
								need_dx || lora_v ? act->dqkv + 2 * C : NULL,
								act->datt, act->dctx, la->probs,
								la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
								ap > 0 ? la->keep_attn : NULL, ap,
								act->d_seq_start, act->B, N, C, cfg->num_heads);
	for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		lora_backward(net, la, l, w, need_dx ? act->dx : NULL, act->dqkv + w * C, 3 * C, x, N);
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
						   act->d_seq_start, act->B, C);

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
