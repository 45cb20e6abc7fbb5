/*
 * network.c - forward and backward of frozen BERT + LoRA + task head.
 *
 * The base weights are never written and never get gradients: backward
 * computes only what the adapter and the head need (input gradients of
 * frozen linears, no weight gradients), and stops below the lowest layer.
 */
#include "network.h"
#include "ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Saved activations of one encoder layer (all [N = B*T] rows). */
typedef struct LayerActs
{
	real	   *q;				/* [N, C] */
	real	   *k;
	real	   *v;
	real	   *probs;			/* [B, NH, T, T] softmax before dropout */
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
	size_t		cap_rows;		/* N the buffers hold */
	size_t		cap_probs;		/* B*NH*T*T the attention buffers hold */
	bool		train_layout;	/* every layer has its own buffers */
	void	  **blocks;			/* every allocation, for freeing */
	int			nblocks;
	int			cap_blocks;

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
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *dgel;			/* [N, FF] */
	real	   *dinter;			/* [N, FF] */
	real	   *dxa;			/* [N, r] */
	real	   *dxd;			/* [N, max(C, FF)] */
	real	   *datt;			/* [B, NH, T, T] */
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

/* Free every activation buffer. */
static void
acts_release(NetworkActivations *act)
{
	for (int i = 0; i < act->nblocks; i++)
		free(act->blocks[i]);
	free(act->blocks);
	free(act->h);
	free(act->layers);
	memset(act, 0, sizeof(*act));
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

/* Make sure the buffers hold a B x T batch (training keeps every layer). */
static PeftCode
acts_ensure(Network *net, int B, int T, bool train, PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		rows = (size_t) B * T;
	size_t		probs = (size_t) B * cfg->num_heads * T * T;
	size_t		C = cfg->hidden_size;
	size_t		FF = cfg->intermediate_size;
	size_t		r = net->opts.lora.r > 0 ? net->opts.lora.r : 1;
	size_t		K = net->opts.num_labels > 0 ? net->opts.num_labels : 1;
	bool		hidden_drop = train && net->opts.hidden_dropout > 0;
	bool		attn_drop = train && net->opts.attention_dropout > 0;
	bool		lora_drop = train && net->opts.lora.dropout > 0;
	int			nlayers;
	int			nh;
	bool		ok = true;

	if (rows <= act->cap_rows && probs <= act->cap_probs &&
		(!train || act->train_layout))
		return PEFT_OK;
	rows = rows > act->cap_rows ? rows : act->cap_rows;
	probs = probs > act->cap_probs ? probs : act->cap_probs;
	train = train || act->train_layout;
	acts_release(act);
	act->cap_rows = rows;
	act->cap_probs = probs;
	act->train_layout = train;
	nlayers = train ? cfg->num_layers : 1;
	nh = train ? cfg->num_layers + 1 : 2;

	act->h = calloc(nh, sizeof(real *));
	act->layers = calloc(nlayers, sizeof(LayerActs));
	if (act->h == NULL || act->layers == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for activations");
	for (int i = 0; i < nh; i++)
		act->h[i] = acts_alloc(act, rows * C, sizeof(real), &ok);
	act->emb = acts_alloc(act, rows * C, sizeof(real), &ok);
	act->ln0_mean = acts_alloc(act, rows, sizeof(real), &ok);
	act->ln0_rstd = acts_alloc(act, rows, sizeof(real), &ok);
	if (hidden_drop || train)
		act->keep_emb = acts_alloc(act, rows * C, 1, &ok);
	for (int l = 0; l < nlayers; l++)
	{
		LayerActs  *la = &act->layers[l];

		la->q = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->k = acts_alloc(act, rows * C, sizeof(real), &ok);
		la->v = acts_alloc(act, rows * C, sizeof(real), &ok);
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
		if (train && (hidden_drop || attn_drop || net->opts.hidden_dropout > 0 ||
					  net->opts.attention_dropout > 0))
		{
			la->keep_attn = acts_alloc(act, probs, 1, &ok);
			la->keep_ao = acts_alloc(act, rows * C, 1, &ok);
			la->keep_o = acts_alloc(act, rows * C, 1, &ok);
		}
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			size_t		in = (w == BERT_OUTPUT) ? FF : C;

			if (!net->opts.lora.targets[w])
				continue;
			la->lora_xa[w] = acts_alloc(act, rows * r, sizeof(real), &ok);
			if (train && (lora_drop || net->opts.lora.dropout > 0))
			{
				la->lora_xd[w] = acts_alloc(act, rows * in, sizeof(real), &ok);
				la->lora_keep[w] = acts_alloc(act, rows * in, 1, &ok);
			}
		}
	}
	act->pooled = acts_alloc(act, rows * C, sizeof(real), &ok);
	act->norm = acts_alloc(act, rows, sizeof(real), &ok);
	act->head_out = acts_alloc(act, rows * K, sizeof(real), &ok);
	act->head_probs = acts_alloc(act, rows * K, sizeof(real), &ok);
	if (train)
	{
		act->dh = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dx = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dres = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dh1 = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dctx = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dq = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dk = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dv = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dgel = acts_alloc(act, rows * FF, sizeof(real), &ok);
		act->dinter = acts_alloc(act, rows * FF, sizeof(real), &ok);
		act->dxa = acts_alloc(act, rows * r, sizeof(real), &ok);
		act->dxd = acts_alloc(act, rows * (FF > C ? FF : C), sizeof(real), &ok);
		act->datt = acts_alloc(act, probs, sizeof(real), &ok);
		act->dpooled = acts_alloc(act, rows * C, sizeof(real), &ok);
		act->dhead = acts_alloc(act, rows * K, sizeof(real), &ok);
	}
	if (!ok)
	{
		acts_release(act);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for activations of a %d x %d batch", B, T);
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
	for (size_t i = 0; i < (size_t) b->B * b->T; i++)
		if (b->ids[i] < 0 || b->ids[i] >= cfg->vocab_size || (b->mask[i] & ~1) != 0)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d or mask %d out of range",
							 b->ids[i], b->mask[i]);
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

/* out = x W^T + b, plus scaling * (dropout(x) A^T) B^T where a LoRA sits. */
static void
adapted_linear_forward(Network *net, LayerActs *la, int l, BertLinear w,
					   real *out, const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	int			ia = net->lora[l][w][0];
	int			r = net->opts.lora.r;
	const real *xd = x;
	double		p = net->opts.lora.dropout;

	linear_forward(out, x, lin->weight, lin->bias, N, lin->in, lin->out);
	if (ia < 0)
		return;
	if (train && p > 0)
	{
		dropout_mask(la->lora_keep[w], (size_t) N * lin->in, (real) p, &net->rng);
		dropout_forward(la->lora_xd[w], x, la->lora_keep[w], (real) p, (size_t) N * lin->in);
		xd = la->lora_xd[w];
	}
	linear_forward(la->lora_xa[w], xd, param_value(&net->params, ia), NULL, N, lin->in, r);
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, lin->out, r,
			   net->scaling, la->lora_xa[w], r,
			   param_value(&net->params, net->lora[l][w][1]), r,
			   1.0, out, lin->out);
}

/* Run the encoder over a batch; act->last receives the final hidden states. */
static PeftCode
encoder_forward(Network *net, const Batch *b, bool train, PeftError *err)
{
	const BertModel *m = net->base;
	const ModelConfig *cfg = &m->cfg;
	NetworkActivations *act;
	int			C = cfg->hidden_size;
	int			FF = cfg->intermediate_size;
	int			NH = cfg->num_heads;
	int			N = b->B * b->T;
	real		eps = (real) cfg->layer_norm_eps;
	double		hp = net->opts.hidden_dropout;
	double		ap = net->opts.attention_dropout;
	PeftCode	rc;

	if ((rc = check_batch(net, b, err)) != PEFT_OK ||
		(rc = acts_ensure(net, b->B, b->T, train, err)) != PEFT_OK)
		return rc;
	act = net->act;

	embeddings_forward(act->emb, b->ids, NULL, m->word_embeddings,
					   m->position_embeddings, m->token_type_embeddings,
					   b->B, b->T, C);
	layernorm_forward(act->h[0], act->ln0_mean, act->ln0_rstd, act->emb,
					  m->ln_emb_gamma, m->ln_emb_beta, N, C, eps);
	maybe_dropout(net, act->h[0], act->keep_emb, hp, (size_t) N * C, train);

	for (int l = 0; l < cfg->num_layers; l++)
	{
		const BertLayer *layer = &m->layers[l];
		LayerActs  *la = train ? &act->layers[l] : &act->layers[0];
		real	   *x = train ? act->h[l] : act->h[l % 2];
		real	   *y = train ? act->h[l + 1] : act->h[(l + 1) % 2];
		bool		drop_attn = train && ap > 0;

		adapted_linear_forward(net, la, l, BERT_QUERY, la->q, x, N, train);
		adapted_linear_forward(net, la, l, BERT_KEY, la->k, x, N, train);
		adapted_linear_forward(net, la, l, BERT_VALUE, la->v, x, N, train);
		if (drop_attn)
			dropout_mask(la->keep_attn, (size_t) b->B * NH * b->T * b->T, (real) ap, &net->rng);
		attention_forward(la->ctx, la->probs, la->q, la->k, la->v, b->mask,
						  drop_attn ? la->keep_attn : NULL, drop_attn ? (real) ap : 0,
						  b->B, b->T, C, NH);

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
	if (cfg->num_layers == 0)
		act->last = act->h[0];
	return PEFT_OK;
}

/* pooled[B, C] from the final hidden states, as the model's pooling says. */
static void
pool_forward(Network *net, const Batch *b)
{
	NetworkActivations *act = net->act;
	int			C = net->base->cfg.hidden_size;

	if (net->base->cfg.pooling == POOLING_CLS)
		cls_pool_forward(act->pooled, act->last, b->B, b->T, C);
	else
		mean_pool_forward(act->pooled, act->last, b->mask, b->B, b->T, C);
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
	pool_forward(net, b);
	linear_forward(act->head_out, act->pooled, param_value(&net->params, net->head_weight),
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

/* Gradients of an adapted linear: LoRA A and B, and dx += dout W (+ LoRA path). */
static void
adapted_linear_backward(Network *net, LayerActs *la, int l, BertLinear w,
						real *dx, const real *dout, const real *x, int N)
{
	NetworkActivations *act = net->act;
	const BertLinearWeights *lin = &net->base->layers[l].linear[w];
	int			ia = net->lora[l][w][0];
	int			ib = net->lora[l][w][1];
	int			r = net->opts.lora.r;
	int			in = lin->in;
	int			out = lin->out;
	double		p = net->opts.lora.dropout;

	if (ia >= 0)
	{
		const real *A = param_value(&net->params, ia);
		const real *Bm = param_value(&net->params, ib);
		const real *xd = p > 0 ? la->lora_xd[w] : x;

		/* dB[out, r] += scaling * dout^T xa */
		cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, N,
				   net->scaling, dout, out, la->lora_xa[w], r,
				   1.0, param_grad(&net->params, ib), r);
		/* dxa[N, r] = scaling * dout B */
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, out,
				   net->scaling, dout, out, Bm, r, 0.0, act->dxa, r);
		/* dA[r, in] += dxa^T xd */
		cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, N,
				   1.0, act->dxa, r, xd, in, 1.0, param_grad(&net->params, ia), in);
		if (dx && p > 0)
		{
			cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, r,
					   1.0, act->dxa, r, A, in, 0.0, act->dxd, in);
			dropout_backward(dx, act->dxd, la->lora_keep[w], (real) p, (size_t) N * in);
		}
		else if (dx)
			cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, r,
					   1.0, act->dxa, r, A, in, 1.0, dx, in);
	}
	if (dx)
		linear_backward(dx, NULL, NULL, dout, x, lin->weight, N, in, out);
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

/* Backward of one encoder layer: dh (its output gradient) -> act->dx. */
static void
layer_backward(Network *net, const Batch *b, int l, bool need_dx)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	const BertLayer *layer = &net->base->layers[l];
	LayerActs  *la = &act->layers[l];
	size_t		NC = (size_t) b->B * b->T * cfg->hidden_size;
	size_t		NI = (size_t) b->B * b->T * cfg->intermediate_size;
	int			N = b->B * b->T;
	int			C = cfg->hidden_size;
	real		hp = (real) net->opts.hidden_dropout;
	real		ap = (real) net->opts.attention_dropout;
	real	   *x = act->h[l];

	/* output LayerNorm; the residual carries the gradient to h1 */
	memset(act->dres, 0, NC * sizeof(real));
	layernorm_backward(act->dres, NULL, NULL, act->dh, la->res2,
					   layer->ln_out_gamma, la->ln2_mean, la->ln2_rstd, N, C);
	memcpy(act->dh1, act->dres, NC * sizeof(real));
	if (hp > 0)
		dropout_forward(act->dres, act->dres, la->keep_o, hp, NC);

	/* feed-forward */
	memset(act->dgel, 0, NI * sizeof(real));
	adapted_linear_backward(net, la, l, BERT_OUTPUT, act->dgel, act->dres, la->gel, N);
	memset(act->dinter, 0, NI * sizeof(real));
	gelu_backward(act->dinter, la->inter, act->dgel, NI);
	adapted_linear_backward(net, la, l, BERT_INTERMEDIATE, act->dh1, act->dinter, la->h1, N);

	/* attention LayerNorm; the residual carries the gradient to x */
	memset(act->dres, 0, NC * sizeof(real));
	layernorm_backward(act->dres, NULL, NULL, act->dh1, la->res1,
					   layer->ln_attn_gamma, la->ln1_mean, la->ln1_rstd, N, C);
	if (need_dx)
		memcpy(act->dx, act->dres, NC * sizeof(real));
	if (hp > 0)
		dropout_forward(act->dres, act->dres, la->keep_ao, hp, NC);
	memset(act->dctx, 0, NC * sizeof(real));
	adapted_linear_backward(net, la, l, BERT_ATTN_OUT, act->dctx, act->dres, la->ctx, N);

	/* attention core, then the q/k/v projections */
	if (!need_dx && net->lora[l][BERT_QUERY][0] < 0 && net->lora[l][BERT_KEY][0] < 0 &&
		net->lora[l][BERT_VALUE][0] < 0)
		return;
	memset(act->dq, 0, NC * sizeof(real));
	memset(act->dk, 0, NC * sizeof(real));
	memset(act->dv, 0, NC * sizeof(real));
	attention_backward(act->dq, act->dk, act->dv, act->datt, act->dctx, la->probs,
					   la->q, la->k, la->v, b->mask,
					   ap > 0 ? la->keep_attn : NULL, ap, b->B, b->T, C, cfg->num_heads);
	adapted_linear_backward(net, la, l, BERT_QUERY, need_dx ? act->dx : NULL, act->dq, x, N);
	adapted_linear_backward(net, la, l, BERT_KEY, need_dx ? act->dx : NULL, act->dk, x, N);
	adapted_linear_backward(net, la, l, BERT_VALUE, need_dx ? act->dx : NULL, act->dv, x, N);
}

/* Add the gradients of the last training forward's loss (times loss_scale). */
PeftCode
network_backward(Network *net, const Batch *b, real loss_scale, PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			K = net->opts.num_labels;
	size_t		NC = (size_t) b->B * b->T * C;

	if (act == NULL || !act->train_layout || act->last == NULL || K < 1)
		return peft_fail(err, PEFT_ERR_INTERNAL, "backward without a training forward");

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
	memset(act->dh, 0, NC * sizeof(real));
	if (cfg->pooling == POOLING_CLS)
		cls_pool_backward(act->dh, act->dpooled, b->B, b->T, C);
	else
		mean_pool_backward(act->dh, act->dpooled, b->mask, b->B, b->T, C);

	/* layers, top down, stopping below the lowest adapter */
	for (int l = cfg->num_layers - 1; l >= 0; l--)
	{
		real	   *swap;

		if (!adapters_at_or_below(net, l))
			break;
		layer_backward(net, b, l, l > 0 && adapters_at_or_below(net, l - 1));
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
	pool_forward(net, b);
	if (net->base->cfg.normalize)
		l2norm_forward(embeddings, net->act->norm, net->act->pooled, b->B, C);
	else
		memcpy(embeddings, net->act->pooled, sizeof(real) * b->B * C);
	return PEFT_OK;
}

/* Last hidden states [B, T, C]. */
PeftCode
network_hidden_states(Network *net, const Batch *b, real *hidden, PeftError *err)
{
	PeftCode	rc;

	if ((rc = encoder_forward(net, b, false, err)) != PEFT_OK)
		return rc;
	memcpy(hidden, net->act->last, sizeof(real) * b->B * b->T * net->base->cfg.hidden_size);
	return PEFT_OK;
}
