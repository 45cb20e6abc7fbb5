/*
 * network.c - the network driver: builds the network from the method
 * modules (method.h), binds it to a backend, and runs the embeddings, the
 * encoder blocks (encoder_block.c), pooling, the head, the loss, the
 * optimizer and merging, written once against the backend table
 * (backend.h): every buffer below lives in the backend's memory (host
 * memory on the CPU, device memory on CUDA) and every operation goes
 * through net->be.  No method is named here: the modules' hooks are.
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
 * computes only what the adapter and the head need, and stops below the
 * lowest layer that trains.
 */
#include "network_internal.h"
#include "ops.h"
#include "ops_varlen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Check the options against the base model: each module's, then the network's. */
static PeftCode
check_options(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	int			count;
	const MethodModule *const *modules = method_modules(&count);
	PeftCode	rc;

	for (int i = 0; i < count; i++)
		if (modules[i]->check && (rc = modules[i]->check(base, o, err)) != PEFT_OK)
			return rc;
	if (!(o->hidden_dropout >= 0 && o->hidden_dropout < 1) ||
		!(o->attention_dropout >= 0 && o->attention_dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "dropout must be in [0, 1)");
	if (o->num_labels < 0 || o->num_labels > 100000)
		return peft_fail(err, PEFT_ERR_INVALID, "num_labels %d is out of range", o->num_labels);
	if (o->task == PEFT_TASK_REGRESSION && o->num_labels != 1)
		return peft_fail(err, PEFT_ERR_INVALID, "regression needs exactly one output");
	if (o->task == PEFT_TASK_CLASSIFICATION && o->num_labels == 1)
		return peft_fail(err, PEFT_ERR_INVALID, "classification needs at least two classes");
	return PEFT_OK;
}

/* Declare a parameter named base_model.model.<path>.<suffix>; -1 on failure. */
int
network_declare(Network *net, const char *path, const char *suffix, int ndim, int64_t d0,
				int64_t d1, PeftError *err)
{
	char		name[PARAM_NAME_LEN];

	snprintf(name, sizeof(name), "base_model.model.%s%s%s", path, suffix[0] ? "." : "", suffix);
	return paramset_add(&net->params, name, ndim, d0, d1, err);
}

/* Declare the modules' tensors at a site, in table order; note what trains there. */
bool
network_declare_site(Network *net, MethodSite site, int l, int w, PeftError *err)
{
	int			before = net->params.count;
	bool		ok = true;

	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->declare)
			ok &= net->methods[i].m->declare(net, net->methods[i].state, site, l, w, err);
	if (net->params.count == before)
		return ok;
	if (site == SITE_INPUT || site == SITE_EMBEDDINGS)
		net->embeddings_train = true;
	else if (site == SITE_ATTENTION)
		for (int i = 0; i < net->base->cfg.num_layers; i++)
			net->hooks[i].trains = true;
	else
		net->hooks[l].trains = true;
	return ok;
}

/* Fill x[n] with U(-bound, bound). */
void
network_uniform_fill(real *x, size_t n, double bound, PeftRng *rng)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (real) ((2.0 * peft_rng_uniform(rng) - 1.0) * bound);
}

/* The modules the options use, in table order, with their states and virtual tokens. */
static PeftCode
methods_create(Network *net, PeftError *err)
{
	int			count;
	const MethodModule *const *modules = method_modules(&count);
	PeftCode	rc;

	for (int i = 0; i < count; i++)
	{
		const MethodModule *m = modules[i];
		ActiveMethod *am = &net->methods[net->nmethods];

		if (!m->enabled(&net->opts))
			continue;
		if (net->nmethods == NETWORK_MAX_METHODS)
			return peft_fail(err, PEFT_ERR_INTERNAL, "too many adapter methods");
		am->m = m;
		am->state = NULL;
		if (m->create && (rc = m->create(net, &am->state, err)) != PEFT_OK)
			return rc;
		if (m->virtual_tokens)
		{
			int			rows = 0;

			net->virtual_tokens += m->virtual_tokens(&net->opts, &rows);
			net->virtual_rows += rows;
		}
		if (m->attention_forward)
			net->attention = net->nmethods;
		net->nmethods++;
	}
	return PEFT_OK;
}

/*
 * Every trainable tensor, in PEFT's order: the sites before the layers,
 * each layer's (encoder_block_declare), the head.
 */
static bool
declare_all(Network *net, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;
	bool		ok = true;

	ok &= network_declare_site(net, SITE_INPUT, -1, -1, err);
	ok &= network_declare_site(net, SITE_ATTENTION, -1, -1, err);
	ok &= network_declare_site(net, SITE_EMBEDDINGS, -1, -1, err);
	for (int l = 0; l < cfg->num_layers && ok; l++)
		ok &= encoder_block_declare(net, l, err);
	if (ok && net->opts.num_labels > 0)
	{
		ok &= (net->head_weight = network_declare(net, "classifier", "weight", 2,
												  net->opts.num_labels, cfg->hidden_size,
												  err)) >= 0;
		ok &= (net->head_bias = network_declare(net, "classifier", "bias", 1,
												net->opts.num_labels, 0, err)) >= 0;
	}
	return ok;
}

/* What the modules do in each layer (net->hooks) and at the embeddings, asked once. */
static void
gather_hooks(Network *net)
{
	net->emb_norm_bias = -1;
	for (int l = 0; l < net->base->cfg.num_layers; l++)
	{
		LayerHooks *hk = &net->hooks[l];

		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			hk->linear[w] = 0;
			hk->bias[w] = -1;
		}
		hk->norm_bias[0] = hk->norm_bias[1] = -1;
		for (int i = 0; i < net->nmethods; i++)
		{
			const MethodModule *m = net->methods[i].m;
			void	   *st = net->methods[i].state;

			for (int w = 0; w < BERT_NUM_LINEAR; w++)
			{
				unsigned	bits = m->linear_hooks ? m->linear_hooks(net, st, l, w) : 0;

				hk->linear[w] |= bits | (bits && m->merge_row ? HOOK_MERGES : 0);
				if (m->linear_bias && hk->bias[w] < 0)
					hk->bias[w] = m->linear_bias(net, st, l, w);
			}
			for (int which = 0; which < 2 && m->norm_bias; which++)
				if (hk->norm_bias[which] < 0)
					hk->norm_bias[which] = m->norm_bias(net, st, l, which);
		}
	}
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->norm_bias && net->emb_norm_bias < 0)
			net->emb_norm_bias = net->methods[i].m->norm_bias(net, net->methods[i].state, -1, 0);
}

/*
 * Initialise every parameter as PEFT does: each module its own, in table
 * order from one generator, then the head as torch.nn.Linear (weight and
 * bias U(+-1/sqrt(in))).
 */
static void
initialise(Network *net)
{
	ParamSet   *ps = &net->params;
	PeftRng		rng;

	peft_rng_seed(&rng, net->opts.seed);
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->initialise)
			net->methods[i].m->initialise(net, net->methods[i].state, &rng);
	if (net->head_weight >= 0)
	{
		double		bound = 1.0 / sqrt((double) net->base->cfg.hidden_size);

		network_uniform_fill(param_value(ps, net->head_weight), ps->items[net->head_weight].count,
							 bound, &rng);
		network_uniform_fill(param_value(ps, net->head_bias), ps->items[net->head_bias].count,
							 bound, &rng);
	}
}

/*
 * The activation table: the network's own buffers (layer boundaries,
 * embeddings, pooling, head, the batch on a device, backward scratch),
 * then the block's and each module's.  All but the head's output and the
 * modules' are ACT_SHARED: a network whose rows run in a mixed batch
 * (segment layout) needs only those.
 */
static bool
acts_describe(Network *net)
{
	NetworkActivations *act = net->act;
	ActTable   *t = &act->table;
	size_t		C = net->base->cfg.hidden_size;
	size_t		K = net->opts.num_labels > 0 ? net->opts.num_labels : 1;

	for (int i = 0; i <= net->base->cfg.num_layers; i++)
		ACT_ADD(t, act->h[i], ((ActSize) {.rows = C}), (i < 2 ? 0 : ACT_TRAIN) | ACT_SHARED);
	ACT_ADD(t, act->emb, ((ActSize) {.rows = C}), ACT_SHARED);
	ACT_ADD(t, act->ln0_mean, ((ActSize) {.rows = 1}), ACT_SHARED);
	ACT_ADD(t, act->ln0_rstd, ((ActSize) {.rows = 1}), ACT_SHARED);
	if (net->opts.hidden_dropout > 0)
		ACT_ADD(t, act->keep_emb, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->pooled, ((ActSize) {.seqs = C}), ACT_SHARED);
	ACT_ADD(t, act->normed, ((ActSize) {.seqs = C}), ACT_SHARED);
	ACT_ADD(t, act->norm, ((ActSize) {.seqs = 1}), ACT_SHARED);
	ACT_ADD(t, act->head_out, ((ActSize) {.seqs = K}), 0);
	ACT_ADD(t, act->head_probs, ((ActSize) {.seqs = K}), ACT_SHARED);
	ACT_ADD(t, act->dh, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->dx, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->dres, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->dpooled, ((ActSize) {.seqs = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->dhead, ((ActSize) {.seqs = K}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, act->dev_seq_start, ((ActSize) {.seqs = 1, .fixed = 1}), ACT_DEVICE | ACT_SHARED);
	ACT_ADD(t, act->dev_rows, ((ActSize) {.rows = 1}), ACT_DEVICE | ACT_SHARED);
	ACT_ADD(t, act->dev_ids, ((ActSize) {.ids = 1}), ACT_DEVICE | ACT_SHARED);
	ACT_ADD(t, act->dev_labels, ((ActSize) {.seqs = 1}), ACT_DEVICE | ACT_SHARED);
	ACT_ADD(t, act->dev_targets, ((ActSize) {.seqs = 1}), ACT_DEVICE | ACT_SHARED);
	encoder_block_acts(net, t);
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->acts)
			net->methods[i].m->acts(net, net->methods[i].state, t);
	return !t->failed;
}

/* The network's host allocations: index tables, per-layer hook summaries, activation slots. */
static bool
network_alloc(Network *net)
{
	int			L = net->base->cfg.num_layers;

	net->lp = malloc(L * sizeof(LayerParams));
	net->hooks = calloc(L, sizeof(LayerHooks));
	net->act = calloc(1, sizeof(NetworkActivations));
	if (net->lp == NULL || net->hooks == NULL || net->act == NULL)
		return false;
	net->act->h = calloc(L + 1, sizeof(real *));
	net->act->enc.layers = calloc(L, sizeof(LayerActs));
	if (net->act->h == NULL || net->act->enc.layers == NULL)
		return false;
	/* every index -1: absent until a module declares it */
	memset(net->lp, 0xff, L * sizeof(LayerParams));
	memset(&net->mp, 0xff, sizeof(net->mp));
	net->head_weight = net->head_bias = net->emb_norm_bias = net->attention = -1;
	return true;
}

/* Build the network and initialise it as PEFT does. */
PeftCode
network_create(const BertModel *base, const NetworkOptions *opts,
			   Network **out, PeftError *err)
{
	Network    *net;
	PeftCode	rc;

	*out = NULL;
	if ((rc = check_options(base, opts, err)) != PEFT_OK)
		return rc;
	net = calloc(1, sizeof(Network));
	if (net == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	net->base = base;
	net->opts = *opts;
	net->be = backend_cpu();
	net->precision = PEFT_PRECISION_FP32;
	if (!network_alloc(net))
	{
		network_free(net);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	if ((rc = methods_create(net, err)) != PEFT_OK)
	{
		network_free(net);
		return rc;
	}
	if (!declare_all(net, err) ||
		(rc = paramset_allocate(&net->params, !opts->inference_only, err)) != PEFT_OK)
	{
		network_free(net);
		return rc != PEFT_OK ? rc : (err ? err->code : PEFT_ERR_NOMEM);
	}
	gather_hooks(net);
	if (!opts->inference_only)
		initialise(net);		/* else the stored weights replace every value */
	if (!acts_describe(net))
	{
		network_free(net);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	peft_rng_seed(&net->rng, opts->seed ^ 0x5eed5eed5eedULL);
	*out = net;
	return PEFT_OK;
}

/* ---- buffers in the backend ---------------------------------------------- */

static void merged_free(MergedWeights *mw);
static PeftCode bind_merged(Network *net, PeftError *err);

/* Drop every activation pointer; free them too when release (else they are already gone). */
static void
acts_drop(Network *net, bool release)
{
	NetworkActivations *act = net->act;

	act_table_release(&act->table, release ? net->be : NULL);
	act->cap_rows = act->cap_probs = act->cap_seqs = act->cap_padded = 0;
	act->train_layout = false;
	act->segment_layout = false;
	act->last = NULL;
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
			DeviceParams dp = {0};
			bool		training = ps->grads != NULL;

			dp.values = be->ops->alloc(be, bytes);
			if (training)
			{
				dp.grads = be->ops->alloc(be, bytes);
				dp.adam_m = be->ops->alloc(be, bytes);
				dp.adam_v = be->ops->alloc(be, bytes);
			}
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
		if (ps->grads != NULL)
		{
			be->ops->upload(be, net->dp.grads, ps->grads, bytes);
			be->ops->upload(be, net->dp.adam_m, ps->adam_m, bytes);
			be->ops->upload(be, net->dp.adam_v, ps->adam_v, bytes);
		}
	}
	net->dp_bound = true;
	return backend_check(be, err);
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
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->destroy)
			net->methods[i].m->destroy(net->methods[i].state);
	if (net->act)
	{
		act_table_free(&net->act->table);
		free(net->act->seq_start);
		free(net->act->rows);
		free(net->act->mask_host);
		free(net->act->h);
		free(net->act->enc.layers);
		free(net->act);
	}
	paramset_free(&net->params);
	merged_free(net->merged);
	free(net->hooks);
	free(net->lp);
	free(net);
}

/* Compute on another device from now on; the parameters move with the network. */
PeftCode
network_set_device(Network *net, PeftDevice kind, PeftPrecision precision, PeftError *err)
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
		if (ps->adam_m != NULL)
		{
			net->be->ops->download(net->be, ps->adam_m, net->dp.adam_m, bytes);
			net->be->ops->download(net->be, ps->adam_v, net->dp.adam_v, bytes);
		}
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
 * lays every buffer out again in one allocation (the activation table), so
 * a caller that knows its largest batch reserves it once (network_reserve)
 * and the steps allocate nothing.
 */
static PeftCode
acts_ensure(Network *net, int B, int T, size_t N, size_t nprobs, bool train, bool segment,
			PeftError *err)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		S = (size_t) T + net->virtual_tokens;
	size_t		padded = (size_t) B * T;
	bool		device = !net->be->host_memory;
	ActDims		dims;
	bool		ok = true;

	if (N <= act->cap_rows && nprobs <= act->cap_probs &&
		(size_t) B <= act->cap_seqs && (!device || padded <= act->cap_padded) &&
		(!train || act->train_layout) && (segment || !act->segment_layout))
		return PEFT_OK;
	dims.rows = grow_capacity(N, act->cap_rows, padded + (size_t) B * net->virtual_rows);
	dims.probs = grow_capacity(nprobs, act->cap_probs, (size_t) B * cfg->num_heads * S * S);
	dims.seqs = grow_capacity(B, act->cap_seqs, B);
	dims.ids = grow_capacity(padded, act->cap_padded, padded);
	train = train || act->train_layout;
	acts_drop(net, true);
	act->cap_rows = dims.rows;
	act->cap_probs = dims.probs;
	act->cap_seqs = dims.seqs;
	act->cap_padded = dims.ids;
	act->train_layout = train;
	act->segment_layout = segment && !train;
	if (device && train)
	{
		/* host staging of the largest mask: attention's, or a row of FF bytes per packed row */
		size_t		mask = dims.probs > dims.rows * cfg->intermediate_size ?
			dims.probs : dims.rows * cfg->intermediate_size;

		if (act->cap_mask_host < mask)
		{
			free(act->mask_host);
			act->mask_host = malloc(mask);
			act->cap_mask_host = act->mask_host ? mask : 0;
			ok = act->mask_host != NULL;
		}
	}
	if (!ok || !act_table_allocate(&act->table, net->be, &dims, train, device, act->segment_layout))
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
 * Bytes the network holds: the trainable parameters with (for training)
 * their gradients and Adam moments (twice on a device, which keeps its own
 * copies), and the activation buffers.  The base weights are a shared
 * read-only mapping and not counted.
 */
size_t
network_memory(const Network *net, size_t *activations)
{
	/* values, and for training gradients and two moments */
	size_t		params = net->params.total * sizeof(real) * (net->params.grads ? 4 : 1);

	*activations = net->act ? net->act->table.bytes : 0;
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
	size_t		S = (size_t) T + net->virtual_tokens;	/* virtual included */
	size_t		nprobs = (size_t) net->base->cfg.num_heads * B * S * S;
	PeftCode	rc;

	if (B < 1 || T < 1 || B > (1 << 20) || T > net->base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "cannot reserve a %d x %d batch", B, T);
	net_enter(net);
	rc = bind_device(net, err);
	if (rc == PEFT_OK)
		rc = acts_ensure(net, B, T, (size_t) B * (T + net->virtual_rows), nprobs, train, false, err);
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
	if (b->T + net->virtual_tokens > cfg->max_position)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "sequence length %d (with %d virtual tokens) exceeds the model's %d positions",
						 b->T, net->virtual_tokens, cfg->max_position);
	if ((size_t) b->B * b->T > (size_t) INT32_MAX / cfg->hidden_size)
		return peft_fail(err, PEFT_ERR_INVALID, "batch of %d x %d is too large", b->B, b->T);
	for (size_t i = 0; i < (size_t) b->B * b->T; i++)
		if (b->ids[i] < 0 || b->ids[i] >= cfg->vocab_size || (b->mask[i] & ~1) != 0)
			return peft_fail(err, PEFT_ERR_INVALID, "token id %d or mask %d out of range",
							 b->ids[i], b->mask[i]);
	return PEFT_OK;
}

/*
 * The virtual rows starting sequence i: the network's, or in a mixed batch
 * those of the sequence's segment (its prompt tuning's).
 */
static int
sequence_virtual_rows(const Network *net, int i)
{
	if (net->mixed == NULL)
		return net->virtual_rows;
	for (int s = 0; s < net->mixed->nsegments; s++)
		if (i < net->mixed->segments[s].seq0 + net->mixed->segments[s].nseqs)
			return net->mixed->segments[s].net->virtual_rows;
	return 0;
}

/*
 * The attention elements of a packed mixed batch: each sequence's rows
 * by its rows, and by its prefix tuning's keys too (its segment computes
 * its attention in that layout, in the same buffer).
 */
static size_t
mixed_attention_size(const Network *net)
{
	const NetworkActivations *act = net->act;
	size_t		total = 0;

	for (int s = 0; s < net->mixed->nsegments; s++)
	{
		const MixedSegment *sg = &net->mixed->segments[s];
		size_t		keys = sg->net->virtual_tokens - sg->net->virtual_rows;

		for (int i = sg->seq0; i < sg->seq0 + sg->nseqs; i++)
		{
			size_t		len = act->seq_start[i + 1] - act->seq_start[i] + keys;

			total += len * len;
		}
	}
	return total * net->base->cfg.num_heads;
}

/*
 * Pack the real tokens of a checked batch on the host: act's B, N,
 * seq_start, rows, nprobs (every sequence starting with the virtual rows,
 * -1 - v); then each module's own layout.
 */
static PeftCode
pack_batch(Network *net, const Batch *b, PeftError *err)
{
	NetworkActivations *act = net->act;
	size_t		padded = (size_t) b->B * b->T;
	bool		virtual_rows = false;
	PeftCode	rc;

	for (int i = 0; i < b->B; i++)
	{
		padded += sequence_virtual_rows(net, i);
		virtual_rows |= sequence_virtual_rows(net, i) > 0;
	}

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
	if (!virtual_rows)
		act->N = varlen_pack(act->seq_start, act->rows, b->mask, b->B, b->T);
	else
	{
		int			n = 0;

		for (int i = 0; i < b->B; i++)
		{
			act->seq_start[i] = n;
			for (int v = 0; v < sequence_virtual_rows(net, i); v++)
				act->rows[n++] = -1 - v;
			for (int t = 0; t < b->T; t++)
				if (b->mask[(size_t) i * b->T + t])
					act->rows[n++] = i * b->T + t;
		}
		act->seq_start[b->B] = n;
		act->N = n;
	}
	act->nprobs = net->mixed ? mixed_attention_size(net) :
		varlen_attention_size(act->seq_start, b->B, net->base->cfg.num_heads);
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->pack &&
			(rc = net->methods[i].m->pack(net, net->methods[i].state, b, err)) != PEFT_OK)
			return rc;
	return PEFT_OK;
}

/*
 * Give the backend the batch's integer arrays and targets: the host arrays
 * themselves on the CPU, copies on a device; then each module's.
 */
static void
upload_batch(Network *net, const Batch *b)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;

	if (be->host_memory)
	{
		act->d_seq_start = act->seq_start;
		act->d_rows = act->rows;
		act->d_ids = b->ids;
		act->d_labels = b->labels;
		act->d_targets = b->targets;
	}
	else
	{
		be->ops->upload(be, act->dev_seq_start, act->seq_start, sizeof(int32_t) * (b->B + 1));
		be->ops->upload(be, act->dev_rows, act->rows, sizeof(int32_t) * act->N);
		be->ops->upload(be, act->dev_ids, b->ids, sizeof(int32_t) * b->B * b->T);
		act->d_seq_start = act->dev_seq_start;
		act->d_rows = act->dev_rows;
		act->d_ids = act->dev_ids;
		act->d_labels = NULL;
		if (b->labels)
		{
			be->ops->upload(be, act->dev_labels, b->labels, sizeof(int32_t) * b->B);
			act->d_labels = act->dev_labels;
		}
		act->d_targets = NULL;
		if (b->targets)
		{
			be->ops->upload(be, act->dev_targets, b->targets, sizeof(real) * b->B);
			act->d_targets = act->dev_targets;
		}
	}
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->upload)
			net->methods[i].m->upload(net, net->methods[i].state, b);
}

/* Draw a fresh dropout mask keep[n] (in the backend's memory) from the network's generator. */
void
network_draw_mask(Network *net, uint8_t *keep, size_t n, double p)
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
void
network_dropout(Network *net, real *x, uint8_t *keep, double p, size_t n, bool train)
{
	if (!train || p <= 0)
		return;
	network_draw_mask(net, keep, n, p);
	net->be->ops->dropout(net->be, x, x, keep, (real) p, n);
}

/* The virtual tokens' embeddings a module gives (prompt tuning), or NULL. */
static const real *
virtual_embeddings(Network *net)
{
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->virtual_embeddings)
			return net->methods[i].m->virtual_embeddings(net, net->methods[i].state);
	return NULL;
}

/*
 * Check, pack and upload a batch, with buffers for it (train: every
 * layer's); the first steps of every forward.
 */
static PeftCode
encoder_prepare(Network *net, const Batch *b, bool train, PeftError *err)
{
	NetworkActivations *act = net->act;
	PeftCode	rc;

	act->last = NULL;
	if ((rc = check_batch(net, b, err)) != PEFT_OK ||
		(rc = bind_device(net, err)) != PEFT_OK ||
		(rc = pack_batch(net, b, err)) != PEFT_OK ||
		(rc = acts_ensure(net, b->B, b->T, act->N, act->nprobs, train, false, err)) != PEFT_OK)
		return rc;
	upload_batch(net, b);
	return PEFT_OK;
}

/*
 * The embeddings' LayerNorm over the packed rows, with each segment's bias
 * in a mixed batch (one call per run of segments with the same bias).
 */
static void
embeddings_layernorm(Network *net)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		C = cfg->hidden_size;
	MixedSegment one = {net, 0, act->B, 0, act->N};
	const MixedSegment *sg = net->mixed ? net->mixed->segments : &one;
	int			nsg = net->mixed ? net->mixed->nsegments : 1;

	for (int i = 0; i < nsg;)
	{
		const Network *sn = sg[i].net;
		const real *beta = sn->emb_norm_bias >= 0 ? network_dvalue(sn, sn->emb_norm_bias) :
			net->weights->ln_emb_beta;
		int			n = 1;
		size_t		r0 = sg[i].row0;

		while (i + n < nsg && (sg[i + n].net->emb_norm_bias >= 0 ?
							   network_dvalue(sg[i + n].net, sg[i + n].net->emb_norm_bias) :
							   net->weights->ln_emb_beta) == beta)
			n++;
		net->be->ops->layernorm_forward(net->be, act->h[0] + r0 * C, act->ln0_mean + r0,
										act->ln0_rstd + r0, act->emb + r0 * C,
										net->weights->ln_emb_gamma, beta,
										sg[i + n - 1].row0 + sg[i + n - 1].rows - (int) r0,
										(int) C, (real) cfg->layer_norm_eps);
		i += n;
	}
}

/* Run the encoder over the prepared batch; act->last receives the final hidden states. */
static void
encoder_layers(Network *net, const Batch *b, bool train)
{
	const ModelConfig *cfg = &net->base->cfg;
	const ModelWeights *mw = net->weights;
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	int			C = cfg->hidden_size;
	int			N = act->N;

	if (net->mixed == NULL)
		be->ops->embeddings(be, act->emb, act->d_ids, act->d_rows, N, b->T, mw->word, mw->pos,
							mw->type, virtual_embeddings(net), net->virtual_tokens, C,
							cfg->vocab_size);
	else
		for (int i = 0; i < net->mixed->nsegments; i++)
		{
			/* each segment's rows with its own virtual tokens (prompt tuning) */
			const MixedSegment *sg = &net->mixed->segments[i];

			be->ops->embeddings(be, act->emb + (size_t) sg->row0 * C, act->d_ids,
								act->d_rows + sg->row0, sg->rows, b->T, mw->word, mw->pos,
								mw->type, virtual_embeddings(sg->net), sg->net->virtual_tokens, C,
								cfg->vocab_size);
		}
	embeddings_layernorm(net);
	network_dropout(net, act->h[0], act->keep_emb, net->opts.hidden_dropout, (size_t) N * C, train);
	act->last = act->h[0];
	for (int l = 0; l < cfg->num_layers; l++)
	{
		real	   *x = train ? act->h[l] : act->h[l % 2];
		real	   *y = train ? act->h[l + 1] : act->h[(l + 1) % 2];

		encoder_block_forward(net, l, x, y, train);
		act->last = y;
	}
}

/* Run the encoder over the packed real tokens; act->last receives the final hidden states. */
static PeftCode
encoder_forward(Network *net, const Batch *b, bool train, PeftError *err)
{
	PeftCode	rc = encoder_prepare(net, b, train, err);

	if (rc == PEFT_OK)
		encoder_layers(net, b, train);
	return rc;
}

/* pooled[B, C] from the packed final hidden states, as the model's pooling says. */
static void
pool_forward(Network *net)
{
	NetworkActivations *act = net->act;

	/* over the real tokens: the virtual rows are left out */
	net->be->ops->pool_forward(net->be, net->base->cfg.pooling == POOLING_CLS, act->pooled,
							   act->last, act->d_seq_start, act->B,
							   net->base->cfg.hidden_size, net->virtual_rows);
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
	if (loss && net->opts.task == PEFT_TASK_CLASSIFICATION && b->labels)
		for (int i = 0; i < b->B; i++)
			if (b->labels[i] < 0 || b->labels[i] >= K)
				return peft_fail(err, PEFT_ERR_INVALID, "label %d out of range", b->labels[i]);
	if ((rc = encoder_forward(net, b, train, err)) != PEFT_OK)
		return rc;
	pool_forward(net);
	be->ops->linear(be, act->head_out, K, act->pooled, C, network_dvalue(net, net->head_weight),
					network_dvalue(net, net->head_bias), b->B, C, K);
	if (outputs)
		be->ops->download(be, outputs, act->head_out, sizeof(real) * b->B * K);
	if (loss)
	{
		*loss = 0;
		if (net->opts.task == PEFT_TASK_CLASSIFICATION && b->labels)
			*loss = be->ops->cross_entropy_forward(be, act->head_probs, act->head_out,
												   act->d_labels, b->B, K);
		else if (net->opts.task == PEFT_TASK_REGRESSION && b->targets)
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

/* The error of training a network opened for inference (no gradients kept). */
static PeftCode
cannot_train(PeftError *err)
{
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "this network was opened from a stored adapter for inference and cannot train");
}

/* True when layer l or any layer below it (or the embeddings) trains. */
static bool
trains_at_or_below(const Network *net, int l)
{
	if (net->embeddings_train)
		return true;
	for (int i = 0; i <= l; i++)
		if (net->hooks[i].trains)
			return true;
	return false;
}

/*
 * The embeddings' part, through their dropout and LayerNorm: a trained
 * LayerNorm bias, and the modules that want the summed embeddings'
 * gradient (virtual tokens).
 */
static void
embeddings_backward(Network *net)
{
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	const real *d = act->dh;
	bool		demb = false;

	if (net->opts.hidden_dropout > 0)
	{
		be->ops->dropout(be, act->dres, act->dh, act->keep_emb,
						 (real) net->opts.hidden_dropout, (size_t) act->N * C);
		d = act->dres;
	}
	if (net->emb_norm_bias >= 0)
		be->ops->coldot(be, network_dgrad(net, net->emb_norm_bias), d, C, NULL, 0, NULL, 1,
						act->N, C);
	for (int i = 0; i < net->nmethods; i++)
		demb |= net->methods[i].m->embeddings_backward != NULL;
	if (!demb)
		return;
	be->ops->zero(be, act->dx, (size_t) act->N * C * sizeof(real));
	be->ops->layernorm_backward(be, act->dx, NULL, d, act->emb, net->weights->ln_emb_gamma,
								act->ln0_mean, act->ln0_rstd, act->N, C);
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->embeddings_backward)
			net->methods[i].m->embeddings_backward(net, net->methods[i].state, act->dx);
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
	if (net->opts.task == PEFT_TASK_CLASSIFICATION)
		be->ops->cross_entropy_backward(be, act->dhead, act->head_probs, act->d_labels,
										loss_scale, b->B, K);
	else
		be->ops->mse_backward(be, act->dhead, act->head_out, act->d_targets, loss_scale, b->B);
	be->ops->zero(be, act->dpooled, sizeof(real) * b->B * C);
	be->ops->linear_backward(be, act->dpooled, network_dgrad(net, net->head_weight),
							 network_dgrad(net, net->head_bias), act->dhead, act->pooled,
							 network_dvalue(net, net->head_weight), b->B, C, K);

	/* pooled -> final hidden states */
	be->ops->zero(be, act->dh, (size_t) act->N * C * sizeof(real));
	be->ops->pool_backward(be, cfg->pooling == POOLING_CLS, act->dh, act->dpooled,
						   act->d_seq_start, act->B, C, net->virtual_rows);

	/* layers, top down, stopping below the lowest trainable tensor */
	for (int l = cfg->num_layers - 1; l >= 0; l--)
	{
		real	   *swap;

		if (!trains_at_or_below(net, l))
			break;
		encoder_block_backward(net, l, l > 0 ? trains_at_or_below(net, l - 1)
							   : net->embeddings_train);
		swap = act->dh;
		act->dh = act->dx;
		act->dx = swap;
	}
	if (net->embeddings_train)
		embeddings_backward(net);
	net->dp_newer = !be->host_memory;
	return PEFT_OK;
}

/* Add the gradients of the last training forward's loss (times loss_scale). */
PeftCode
network_backward(Network *net, const Batch *b, real loss_scale, PeftError *err)
{
	PeftCode	rc;

	if (net->params.grads == NULL)
		return cannot_train(err);
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

	if (net->params.grads == NULL)
		return cannot_train(err);
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

	if (net->params.grads == NULL)
		return cannot_train(err);
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

/* Whether member's rows can share host's forward in a mixed batch (network.h). */
bool
network_mixable(const Network *host, const Network *member)
{
	if (member == host)
		return host->nmethods == 0;
	return host->nmethods == 0 && member->base == host->base && member->be == host->be &&
		member->precision == host->precision && member->merged == NULL;
}

/* ERROR unless the segments cover the batch's sequences in order, each mixable with host. */
static PeftCode
check_segments(const Network *host, const MixedSegment *sg, int nsg, const Batch *b,
			   bool heads, int ldo, PeftError *err)
{
	int			next = 0;

	for (int i = 0; i < nsg; i++)
	{
		if (sg[i].seq0 != next || sg[i].nseqs < 1)
			return peft_fail(err, PEFT_ERR_INVALID, "mixed batch: segment %d does not start at "
							 "sequence %d or is empty", i, next);
		if (!network_mixable(host, sg[i].net))
			return peft_fail(err, PEFT_ERR_INVALID, "mixed batch: segment %d's network cannot "
							 "share the base model's forward", i);
		if (b->T + sg[i].net->virtual_tokens > host->base->cfg.max_position)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "sequence length %d (with %d virtual tokens) exceeds the model's %d positions",
							 b->T, sg[i].net->virtual_tokens, host->base->cfg.max_position);
		if (heads && (sg[i].net->opts.num_labels < 1 || sg[i].net->opts.num_labels > ldo))
			return peft_fail(err, PEFT_ERR_INVALID, "mixed batch: segment %d has no head, or "
							 "one wider than %d", i, ldo);
		next += sg[i].nseqs;
	}
	if (next != b->B)
		return peft_fail(err, PEFT_ERR_INVALID, "mixed batch: segments cover %d of %d sequences",
						 next, b->B);
	return PEFT_OK;
}

/*
 * Ready a segment's network to run its hooks inside host's use of the
 * backend: pointers from before an idle release forgotten (as net_enter),
 * parameters bound, buffers for its rows.
 */
static PeftCode
segment_enter(Network *host, MixedSegment *sg, const Batch *b, PeftError *err)
{
	Network    *m = sg->net;
	PeftCode	rc;

	if (m == host)
		return PEFT_OK;
	if (m->generation != host->generation)
	{
		device_drop(m, false);
		m->generation = host->generation;
	}
	if ((rc = bind_device(m, err)) != PEFT_OK)
		return rc;
	/* only its methods' buffers and its head's output: host computes the rest */
	return acts_ensure(m, sg->nseqs, b->T, (size_t) sg->rows, 1, false, true, err);
}

/*
 * A segment's own layout for the methods that keep one (prefix tuning's
 * extended attention rows): its network's packing describes the segment's
 * sequences, rows counted from the segment's first.
 */
static PeftCode
segment_pack(Network *host, MixedSegment *sg, const Batch *b, PeftError *err)
{
	Network    *m = sg->net;
	NetworkActivations *ma = m->act;
	Batch		sub = {sg->nseqs, b->T, b->ids + (size_t) sg->seq0 * b->T,
	b->mask + (size_t) sg->seq0 * b->T, NULL, NULL};
	PeftCode	rc;

	if (m == host)
		return PEFT_OK;
	if (ma->cap_pack_seqs < sg->nseqs + 1)
	{
		int32_t    *grown = realloc(ma->seq_start, sizeof(int32_t) * (sg->nseqs + 1));

		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		ma->seq_start = grown;
		ma->cap_pack_seqs = sg->nseqs + 1;
	}
	for (int i = 0; i <= sg->nseqs; i++)
		ma->seq_start[i] = host->act->seq_start[sg->seq0 + i] - sg->row0;
	ma->B = sg->nseqs;
	ma->N = sg->rows;
	for (int i = 0; i < m->nmethods; i++)
		if (m->methods[i].m->pack &&
			(rc = m->methods[i].m->pack(m, m->methods[i].state, &sub, err)) != PEFT_OK)
			return rc;
	for (int i = 0; i < m->nmethods; i++)
		if (m->methods[i].m->upload)
			m->methods[i].m->upload(m, m->methods[i].state, &sub);
	return PEFT_OK;
}

/* The widest input of the linears some segment's input hook scales (0: none). */
static size_t
widest_scaled_input(const MixedSegment *sg, int nsg)
{
	size_t		in = 0;

	for (int i = 0; i < nsg; i++)
		for (int l = 0; l < sg[i].net->base->cfg.num_layers; l++)
			for (int w = 0; w < BERT_NUM_LINEAR; w++)
				if ((sg[i].net->hooks[l].linear[w] & HOOK_INPUT) &&
					(size_t) sg[i].net->base->layers[l].linear[w].in > in)
					in = sg[i].net->base->layers[l].linear[w].in;
	return in;
}

/* Each segment's head on its sequences' pooled embeddings, into outputs (row stride ldo). */
static void
segment_heads(Network *host, const MixedSegment *sg, int nsg, real *outputs, int ldo)
{
	Backend    *be = host->be;
	int			C = host->base->cfg.hidden_size;

	for (int i = 0; i < nsg; i++)
	{
		Network    *m = sg[i].net;
		int			K = m->opts.num_labels;

		be->ops->linear(be, m->act->head_out, K, host->act->pooled + (size_t) sg[i].seq0 * C, C,
						network_dvalue(m, m->head_weight), network_dvalue(m, m->head_bias),
						sg[i].nseqs, C, K);
		for (int r = 0; r < sg[i].nseqs; r++)
			be->ops->download(be, outputs + (size_t) (sg[i].seq0 + r) * ldo,
							  m->act->head_out + (size_t) r * K, sizeof(real) * K);
	}
}

/* pooled[B, C]: each segment's sequences pooled over their real tokens (its virtual rows left out). */
static void
segment_pool(Network *host, const MixedBatch *mb)
{
	NetworkActivations *act = host->act;
	int			C = host->base->cfg.hidden_size;
	bool		cls = host->base->cfg.pooling == POOLING_CLS;

	for (int i = 0; i < mb->nsegments; i++)
	{
		const MixedSegment *sg = &mb->segments[i];
		int			n = 1;

		/* one call for a run of segments without virtual rows */
		while (sg->net->virtual_rows == 0 && i + n < mb->nsegments &&
			   mb->segments[i + n].net->virtual_rows == 0)
			n++;
		host->be->ops->pool_forward(host->be, cls, act->pooled + (size_t) sg->seq0 * C, act->last,
									act->d_seq_start + sg->seq0,
									mb->segments[i + n - 1].seq0 + mb->segments[i + n - 1].nseqs - sg->seq0,
									C, sg->net->virtual_rows);
		i += n - 1;
	}
}

/* network_forward_mixed inside a use of host's backend. */
static PeftCode
mixed_locked(Network *host, MixedBatch *mb, const Batch *b, real *outputs, int ldo,
			 real *embeddings, PeftError *err)
{
	NetworkActivations *act = host->act;
	Backend    *be = host->be;
	int			C = host->base->cfg.hidden_size;
	size_t		in;
	PeftCode	rc;

	if ((rc = check_segments(host, mb->segments, mb->nsegments, b, outputs != NULL, ldo,
							 err)) != PEFT_OK)
		return rc;
	host->mixed = mb;			/* packing asks each sequence's virtual rows */
	rc = encoder_prepare(host, b, false, err);
	host->mixed = NULL;
	if (rc != PEFT_OK)
		return rc;
	for (int i = 0; i < mb->nsegments; i++)
	{
		MixedSegment *sg = &mb->segments[i];

		sg->row0 = act->seq_start[sg->seq0];
		sg->rows = act->seq_start[sg->seq0 + sg->nseqs] - sg->row0;
		if ((rc = segment_enter(host, sg, b, err)) != PEFT_OK ||
			(rc = segment_pack(host, sg, b, err)) != PEFT_OK)
			return rc;
	}
	if ((in = widest_scaled_input(mb->segments, mb->nsegments)) > 0 &&
		(mb->input = be->ops->alloc(be, sizeof(real) * act->N * in)) == NULL)
		return backend_check(be, err) != PEFT_OK ? PEFT_ERR_NOMEM :
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a mixed batch");
	host->mixed = mb;
	encoder_layers(host, b, false);
	host->mixed = NULL;
	segment_pool(host, mb);
	if (outputs)
		segment_heads(host, mb->segments, mb->nsegments, outputs, ldo);
	if (embeddings && host->base->cfg.normalize)
	{
		be->ops->l2norm_forward(be, act->normed, act->norm, act->pooled, b->B, C);
		be->ops->download(be, embeddings, act->normed, sizeof(real) * b->B * C);
	}
	else if (embeddings)
		be->ops->download(be, embeddings, act->pooled, sizeof(real) * b->B * C);
	return PEFT_OK;
}

/* Forward a batch of many adapters' sequences over one shared base pass (network.h). */
PeftCode
network_forward_mixed(Network *host, MixedSegment *segments, int nsegments, const Batch *b,
					  real *outputs, int ldo, real *embeddings, PeftError *err)
{
	MixedBatch	mb = {segments, nsegments, NULL, NULL, NULL};
	PeftCode	rc;

	if (nsegments > 0 &&
		((mb.gathered = calloc(nsegments, sizeof(bool))) == NULL ||
		 (mb.lora = calloc(nsegments, sizeof(LoraSegment))) == NULL))
	{
		free(mb.gathered);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a mixed batch");
	}
	net_enter(host);
	rc = mixed_locked(host, &mb, b, outputs, ldo, embeddings, err);
	host->mixed = NULL;
	if (mb.input)
		host->be->ops->release(host->be, mb.input);
	free(mb.gathered);
	free(mb.lora);
	return net_leave(host, rc, err);
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

/* Whether linear w of layer l has hooks that merging folds in. */
static bool
merges(const Network *net, int l, int w)
{
	return (net->hooks[l].linear[w] & HOOK_MERGES) != 0;
}

/*
 * out[o, :] = the merged weight of linear w (W's rows at src, stride in)
 * and bout[o] its bias (the trained one where a module has it), in double
 * then rounded once: each module folds its part into the row, its scale
 * and the bias (merge_row), in table order.
 */
static void
merge_linear(const Network *net, int l, int w, const real *W, const real *b, real *out, real *bout)
{
	const ParamSet *ps = &net->params;
	int			in = net->base->layers[l].linear[w].in;
	int			trained = net->hooks[l].bias[w];
	double	   *row = malloc(sizeof(double) * in);

	for (int o = 0; o < net->base->layers[l].linear[w].out; o++)
	{
		double		scale = 1;
		double		bias = trained >= 0 ? param_value(ps, trained)[o] : b[o];

		for (int i = 0; i < in; i++)
			row[i] = W[(size_t) o * in + i];
		for (int i = 0; i < net->nmethods; i++)
			if (net->methods[i].m->merge_row)
				net->methods[i].m->merge_row(net, net->methods[i].state, l, w, o, row, &scale,
											 &bias);
		for (int i = 0; i < in; i++)
			out[(size_t) o * in + i] = (real) (row[i] * scale);
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

/* Fold the modules that merge (merge_row) into private copies of the weights they touch. */
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
				int			trained = net->hooks[l].bias[w];

				/* every slice's bias: the trained one where a module has it (merged or not), else the model's */
				memcpy(mw->qkv_bias[l] + w * C,
					   trained >= 0 ? param_value(&net->params, trained) : m->layers[l].linear[w].bias,
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
