/*
 * method_prefix.c - prefix tuning as a method module (method.h): every
 * layer's attention also attends over V learned key/value prefixes (raw,
 * as PEFT's past_key_values), and the real tokens' positions start after
 * them.  Attention runs in an extended layout: sequence b is its V
 * prefixes, then its packed rows.  Tensor: prompt_embeddings
 * [V, L * 2 * C], PEFT's layout [token][layer][key, value][C].
 */
#include "network_internal.h"
#include "ops_varlen.h"

#include <stdlib.h>

/* One layer slot's buffers. */
typedef struct PrefixSlot
{
	real	   *qkv;			/* [N + B V, 3C] each sequence's prefixes, then its rows */
	real	   *ctx;			/* [N + B V, C] attention output over those rows */
} PrefixSlot;

typedef struct PrefixState
{
	PrefixSlot *slots;			/* [num_layers] */
	real	   *dctx;			/* [N + B V, C] */
	real	   *dqkv;			/* [N + B V, 3C] */

	/* the extended layout of the last batch (host) */
	int			N_ext;
	int32_t    *seq_start;		/* [B+1] */
	int32_t    *real;			/* [N] extended row of each packed row */
	int32_t    *dst;			/* [B V] extended row of each sequence's prefix v */
	int32_t    *src;			/* [B V] v */
	int			cap_seqs;
	size_t		cap_rows;

	/* the same in the backend's memory (aliases of the host arrays on the CPU) */
	const int32_t *d_seq_start;
	const int32_t *d_real;
	const int32_t *d_dst;
	const int32_t *d_src;
	int32_t    *dev_seq_start;	/* their copies on a device */
	int32_t    *dev_real;
	int32_t    *dev_dst;
	int32_t    *dev_src;
} PrefixState;

/* Whether the options ask for prefixes. */
static bool
prefix_enabled(const NetworkOptions *o)
{
	return o->prefix_tokens > 0;
}

/* A count the model's positions leave room for, and no prompt tuning beside it. */
static PeftCode
prefix_check(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	if (o->prefix_tokens < 0 || o->prefix_tokens > 256 ||
		o->prefix_tokens >= base->cfg.max_position)
		return peft_fail(err, PEFT_ERR_INVALID, "num_virtual_tokens must be between 1 and 256");
	if (o->prompt_tokens > 0 && o->prefix_tokens > 0)
		return peft_fail(err, PEFT_ERR_INVALID, "prompt and prefix tuning cannot be combined");
	return PEFT_OK;
}

/* V positions, none of them a packed row. */
static int
prefix_virtual_tokens(const NetworkOptions *o, int *rows)
{
	*rows = 0;
	return o->prefix_tokens;
}

/* The slots. */
static PeftCode
prefix_create(Network *net, void **state, PeftError *err)
{
	PrefixState *st = calloc(1, sizeof(PrefixState));

	if (st == NULL || (st->slots = calloc(net->base->cfg.num_layers, sizeof(PrefixSlot))) == NULL)
	{
		free(st);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	*state = st;
	return PEFT_OK;
}

/* Free the state and the host layout. */
static void
prefix_destroy(void *state)
{
	PrefixState *st = state;

	if (st == NULL)
		return;
	free(st->slots);
	free(st->seq_start);
	free(st->real);
	free(st->dst);
	free(st->src);
	free(st);
}

/* The keys and values of every layer, one tensor. */
static bool
prefix_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	const ModelConfig *cfg = &net->base->cfg;

	if (site != SITE_ATTENTION)
		return true;
	net->mp.prefix = paramset_add(&net->params, "prompt_embeddings", 2, net->opts.prefix_tokens,
								  (int64_t) cfg->num_layers * 2 * cfg->hidden_size, err);
	return net->mp.prefix >= 0;
}

/*
 * Each prefix starts as the key and value every layer computes for the
 * embedding of a random vocabulary token, so the prefixes look like keys
 * and values the model has seen.
 */
static void
prefix_initialise(Network *net, void *state, PeftRng *rng)
{
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;

	for (int v = 0; v < net->opts.prefix_tokens; v++)
	{
		const real *e = net->base->word_embeddings + (size_t) peft_rng_below(rng, cfg->vocab_size) * C;

		for (int l = 0; l < cfg->num_layers; l++)
			for (int kv = 0; kv < 2; kv++)
			{
				const BertLinearWeights *lin = &net->base->layers[l].linear[BERT_KEY + kv];
				real	   *dst = param_value(&net->params, net->mp.prefix) +
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
}

/* Each slot's extended q/k/v and output, backward scratch, the layout on a device. */
static void
prefix_acts(Network *net, void *state, ActTable *t)
{
	PrefixState *st = state;
	size_t		C = net->base->cfg.hidden_size;
	size_t		V = net->opts.prefix_tokens;

	for (int s = 0; s < net->base->cfg.num_layers; s++)
	{
		ACT_ADD(t, st->slots[s].qkv, ((ActSize) {.rows = 3 * C, .seqs = V * 3 * C}),
				act_layer_when(s));
		ACT_ADD(t, st->slots[s].ctx, ((ActSize) {.rows = C, .seqs = V * C}), act_layer_when(s));
	}
	ACT_ADD(t, st->dctx, ((ActSize) {.rows = C, .seqs = V * C}), ACT_TRAIN);
	ACT_ADD(t, st->dqkv, ((ActSize) {.rows = 3 * C, .seqs = V * 3 * C}), ACT_TRAIN);
	ACT_ADD(t, st->dev_seq_start, ((ActSize) {.seqs = 1, .fixed = 1}), ACT_DEVICE);
	ACT_ADD(t, st->dev_real, ((ActSize) {.rows = 1}), ACT_DEVICE);
	ACT_ADD(t, st->dev_dst, ((ActSize) {.seqs = V}), ACT_DEVICE);
	ACT_ADD(t, st->dev_src, ((ActSize) {.seqs = V}), ACT_DEVICE);
}

/*
 * The extended layout of a packed batch: the maps between the layouts,
 * and the attention size over it (act->nprobs).
 */
static PeftCode
prefix_pack(Network *net, void *state, const Batch *b, PeftError *err)
{
	PrefixState *st = state;
	NetworkActivations *act = net->act;
	int			V = net->opts.prefix_tokens;
	size_t		ext = (size_t) act->N + (size_t) b->B * V;
	int			n = 0;

	if (st->cap_seqs < b->B + 1 || st->cap_rows < ext)
	{
		free(st->seq_start);
		free(st->real);
		free(st->dst);
		free(st->src);
		st->seq_start = malloc(sizeof(int32_t) * (b->B + 1));
		st->real = malloc(sizeof(int32_t) * (ext ? ext : 1));
		st->dst = malloc(sizeof(int32_t) * ((size_t) b->B * V));
		st->src = malloc(sizeof(int32_t) * ((size_t) b->B * V));
		st->cap_seqs = st->cap_rows = 0;
		if (!st->seq_start || !st->real || !st->dst || !st->src)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		st->cap_seqs = b->B + 1;
		st->cap_rows = ext;
	}
	for (int i = 0; i < b->B; i++)
	{
		st->seq_start[i] = n;
		for (int v = 0; v < V; v++)
		{
			st->dst[i * V + v] = n++;
			st->src[i * V + v] = v;
		}
		for (int r = act->seq_start[i]; r < act->seq_start[i + 1]; r++)
			st->real[r] = n++;
	}
	st->seq_start[b->B] = n;
	st->N_ext = n;
	act->nprobs = varlen_attention_size(st->seq_start, b->B, net->base->cfg.num_heads);
	return PEFT_OK;
}

/* The layout's maps in the backend's memory. */
static void
prefix_upload(Network *net, void *state, const Batch *b)
{
	PrefixState *st = state;
	Backend    *be = net->be;
	size_t		BV = (size_t) b->B * net->opts.prefix_tokens;

	if (be->host_memory)
	{
		st->d_seq_start = st->seq_start;
		st->d_real = st->real;
		st->d_dst = st->dst;
		st->d_src = st->src;
		return;
	}
	be->ops->upload(be, st->dev_seq_start, st->seq_start, sizeof(int32_t) * (b->B + 1));
	be->ops->upload(be, st->dev_real, st->real, sizeof(int32_t) * net->act->N);
	be->ops->upload(be, st->dev_dst, st->dst, sizeof(int32_t) * BV);
	be->ops->upload(be, st->dev_src, st->src, sizeof(int32_t) * BV);
	st->d_seq_start = st->dev_seq_start;
	st->d_real = st->dev_real;
	st->d_dst = st->dev_dst;
	st->d_src = st->dev_src;
}

/*
 * Layer at.l's attention: each sequence's queries attend over its V
 * key/value prefixes and its own keys; the rows run in the extended
 * layout and come back to io->out.
 */
static void
prefix_attention_forward(Network *net, void *state, HookAt at, const AttentionIO *io)
{
	PrefixState *st = state;
	PrefixSlot *sl = &st->slots[at.s];
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			V = net->opts.prefix_tokens;
	int			ld = cfg->num_layers * 2 * C;
	const real *E = network_dvalue(net, net->mp.prefix);

	be->ops->row_copy(be, sl->qkv, 3 * C, st->d_real, io->qkv, 3 * C, NULL, act->N, 3 * C);
	be->ops->row_copy(be, sl->qkv + C, 3 * C, st->d_dst, E + (size_t) 2 * at.l * C, ld,
					  st->d_src, act->B * V, C);
	be->ops->row_copy(be, sl->qkv + 2 * C, 3 * C, st->d_dst, E + (size_t) (2 * at.l + 1) * C,
					  ld, st->d_src, act->B * V, C);
	be->ops->attention_forward(be, sl->ctx, io->probs, io->dropped, sl->qkv, sl->qkv + C,
							   sl->qkv + 2 * C, 3 * C, io->keep, io->p, st->d_seq_start,
							   act->B, st->N_ext, C, cfg->num_heads);
	be->ops->row_copy(be, io->out, C, NULL, sl->ctx, C, st->d_real, act->N, C);
}

/*
 * Backward of layer at.l's attention: io->dout -> io->dqkv (the real
 * rows) and the gradients of the layer's prefixes (summed over the
 * sequences).
 */
static void
prefix_attention_backward(Network *net, void *state, HookAt at, const AttentionIO *io)
{
	PrefixState *st = state;
	PrefixSlot *sl = &st->slots[at.s];
	NetworkActivations *act = net->act;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	int			V = net->opts.prefix_tokens;
	int			ld = cfg->num_layers * 2 * C;
	size_t		ext = (size_t) st->N_ext;
	real	   *dE = network_dgrad(net, net->mp.prefix);

	be->ops->zero(be, st->dctx, ext * C * sizeof(real));
	be->ops->row_copy(be, st->dctx, C, st->d_real, io->dout, C, NULL, act->N, C);
	be->ops->zero(be, st->dqkv, ext * 3 * C * sizeof(real));
	be->ops->attention_backward(be, st->dqkv, st->dqkv + C, st->dqkv + 2 * C,
								io->dropped, st->dctx, io->probs,
								sl->qkv, sl->qkv + C, sl->qkv + 2 * C, 3 * C,
								io->keep, io->p, st->d_seq_start, act->B, st->N_ext, C,
								cfg->num_heads);
	be->ops->row_copy(be, io->dqkv, 3 * C, NULL, st->dqkv, 3 * C, st->d_real, act->N, 3 * C);
	be->ops->prompt_backward(be, dE + (size_t) 2 * at.l * C, ld, st->dqkv + C, 3 * C,
							 st->d_seq_start, act->B, V, C);
	be->ops->prompt_backward(be, dE + (size_t) (2 * at.l + 1) * C, ld, st->dqkv + 2 * C, 3 * C,
							 st->d_seq_start, act->B, V, C);
}

const MethodModule method_prefix = {
	.name = "prefix",
	.check = prefix_check,
	.enabled = prefix_enabled,
	.virtual_tokens = prefix_virtual_tokens,
	.create = prefix_create,
	.destroy = prefix_destroy,
	.declare = prefix_declare,
	.initialise = prefix_initialise,
	.acts = prefix_acts,
	.pack = prefix_pack,
	.upload = prefix_upload,
	.attention_forward = prefix_attention_forward,
	.attention_backward = prefix_attention_backward,
};
