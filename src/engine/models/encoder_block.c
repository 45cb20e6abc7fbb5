/*
 * encoder_block.c - forward and backward of one BERT encoder layer
 * (encoder_block.h) over the packed rows, against the backend table; the
 * method modules act through their hooks (method.h), which this file calls
 * at a linear's input, output and side, at the biases, after each sublayer
 * and for attention, without knowing which methods they are.
 *
 * The base weights are never written and get no gradients: backward
 * computes only input gradients of frozen linears and what the modules
 * need.  The query, key and value projections run as one product against
 * a [3C, C] copy of their weights (one pass over the input instead of
 * three); their hooks run on each slice, as PEFT's separate linears.
 */
#include "encoder_block.h"
#include "mixed_lora.h"
#include "network_internal.h"

/* ---- declaration ---------------------------------------------------------- */

/*
 * Declare layer l's tensors in PEFT's order: the linears' biases first (the
 * fused q, k, v product reads theirs as one adjacent [3C] vector), then
 * each linear's, then the LayerNorms' and the sublayers'.
 */
bool
encoder_block_declare(Network *net, int l, PeftError *err)
{
	bool		ok = true;

	ok &= network_declare_site(net, SITE_LINEAR_BIASES, l, -1, err);
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		ok &= network_declare_site(net, SITE_LINEAR, l, w, err);
	ok &= network_declare_site(net, SITE_SUBLAYERS, l, -1, err);
	return ok;
}

/* Widest input and output of the linears whose hooks of kind need a scratch. */
static void
widest_hooked(const Network *net, unsigned kind, size_t *in, size_t *out)
{
	*in = *out = 0;
	for (int l = 0; l < net->base->cfg.num_layers; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			if (net->hooks[l].linear[w] & kind)
			{
				const BertLinearWeights *lin = &net->base->layers[l].linear[w];

				*in = *in > (size_t) lin->in ? *in : (size_t) lin->in;
				*out = *out > (size_t) lin->out ? *out : (size_t) lin->out;
			}
}

/* The block's rows of the activation table: each layer's, then backward scratch (all ACT_SHARED). */
void
encoder_block_acts(Network *net, ActTable *t)
{
	const ModelConfig *cfg = &net->base->cfg;
	EncoderActs *ea = &net->act->enc;
	size_t		C = cfg->hidden_size;
	size_t		FF = cfg->intermediate_size;
	bool		hidden_drop = net->opts.hidden_dropout > 0;
	bool		attn_drop = net->opts.attention_dropout > 0;
	size_t		in;
	size_t		out;

	for (int s = 0; s < cfg->num_layers; s++)
	{
		LayerActs  *la = &ea->layers[s];
		unsigned	when = act_layer_when(s) | ACT_SHARED;

		ACT_ADD(t, la->qkv, ((ActSize) {.rows = 3 * C}), when);
		ACT_ADD(t, la->probs, ((ActSize) {.probs = 1}), when);
		ACT_ADD(t, la->ctx, ((ActSize) {.rows = C}), when);
		ACT_ADD(t, la->res1, ((ActSize) {.rows = C}), when);
		ACT_ADD(t, la->h1, ((ActSize) {.rows = C}), when);
		ACT_ADD(t, la->ln1_mean, ((ActSize) {.rows = 1}), when);
		ACT_ADD(t, la->ln1_rstd, ((ActSize) {.rows = 1}), when);
		ACT_ADD(t, la->inter, ((ActSize) {.rows = FF}), when);
		ACT_ADD(t, la->gel, ((ActSize) {.rows = FF}), when);
		ACT_ADD(t, la->res2, ((ActSize) {.rows = C}), when);
		ACT_ADD(t, la->ln2_mean, ((ActSize) {.rows = 1}), when);
		ACT_ADD(t, la->ln2_rstd, ((ActSize) {.rows = 1}), when);
		if (attn_drop)
			ACT_ADD(t, la->keep_attn, ((ActSize) {.probs = 1}), ACT_TRAIN | ACT_SHARED);
		if (hidden_drop)
		{
			ACT_ADD(t, la->keep_ao, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
			ACT_ADD(t, la->keep_o, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
		}
	}
	ACT_ADD(t, ea->dh1, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, ea->dctx, ((ActSize) {.rows = C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, ea->dqkv, ((ActSize) {.rows = 3 * C}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, ea->dgel, ((ActSize) {.rows = FF}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, ea->dinter, ((ActSize) {.rows = FF}), ACT_TRAIN | ACT_SHARED);
	ACT_ADD(t, ea->datt, ((ActSize) {.probs = 1}), ACT_TRAIN | ACT_SHARED);
	widest_hooked(net, HOOK_OUTPUT, &in, &out);
	if (out > 0)
		ACT_ADD(t, ea->dout_copy, ((ActSize) {.rows = out}), ACT_TRAIN | ACT_SHARED);
	widest_hooked(net, HOOK_INPUT, &in, &out);
	if (in > 0)
		ACT_ADD(t, ea->dxin, ((ActSize) {.rows = in}), ACT_TRAIN | ACT_SHARED);
}

/* ---- a linear with the modules' hooks: forward ------------------------------ */

/*
 * The networks whose hooks run in a forward of net, and their rows: net
 * itself over all N rows, or the segments of a mixed batch (each adapter's
 * hooks on its own rows, the base products once over all of them).
 * *one is the storage of the single segment.
 */
static const MixedSegment *
segments_of(Network *net, int N, MixedSegment *one, int *count)
{
	if (net->mixed != NULL)
	{
		*count = net->mixed->nsegments;
		return net->mixed->segments;
	}
	*one = (MixedSegment) {net, 0, net->act->B, 0, N};
	*count = 1;
	return one;
}

/* The bias linear w's product adds: a merged copy, a module's trained one, or the model's. */
static const real *
linear_bias(const Network *net, int l, int w)
{
	const LayerHooks *hk = &net->hooks[l];

	/* a merged linear's bias already holds the trained bias, scaled where folding scaled it */
	if (net->merged && (hk->linear[w] & HOOK_MERGES))
		return net->weights->layers[l].bias[w];
	return hk->bias[w] >= 0 ? network_dvalue(net, hk->bias[w]) : net->weights->layers[l].bias[w];
}

/* The input linear at.w's product reads: x, unless an input hook scaled it. */
static const real *
input_hooks(Network *net, HookAt at, const real *x, int N)
{
	if (!(net->hooks[at.l].linear[at.w] & HOOK_INPUT))
		return x;
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->linear_input && !network_merged_away(net, i))
			x = net->methods[i].m->linear_input(net, net->methods[i].state, at, x, N);
	return x;
}

/*
 * The input of linear at.w (in wide) over every segment's rows: x itself
 * unless some segment's input hook scales it; then the mixed batch's
 * scratch, each segment's rows as its hooks give them.
 */
static const real *
segment_inputs(Network *net, const MixedSegment *sg, int nsg, HookAt at, const real *x, int in)
{
	bool		scaled = false;
	real	   *all;

	if (net->mixed == NULL)
		return input_hooks(net, at, x, sg[0].rows);
	for (int i = 0; i < nsg; i++)
		scaled |= (sg[i].net->hooks[at.l].linear[at.w] & HOOK_INPUT) != 0;
	if (!scaled)
		return x;
	all = net->mixed->input;
	for (int i = 0; i < nsg; i++)
	{
		const real *xs = x + (size_t) sg[i].row0 * in;

		net->be->ops->copy(net->be, all + (size_t) sg[i].row0 * in,
						   input_hooks(sg[i].net, at, xs, sg[i].rows),
						   sizeof(real) * sg[i].rows * in);
	}
	return all;
}

/* The output hooks of linear at.w on out (row stride ldo), x its input: transforms, then branches. */
static void
output_hooks(Network *net, HookAt at, real *out, int ldo, const real *x, int N, bool train)
{
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->linear_output && !network_merged_away(net, i))
			net->methods[i].m->linear_output(net, net->methods[i].state, at, out, ldo, N, train);
	for (int i = 0; i < net->nmethods; i++)
		if (net->methods[i].m->linear_branch && !network_merged_away(net, i))
			net->methods[i].m->linear_branch(net, net->methods[i].state, at, out, ldo, x, N, train);
}

/*
 * Each segment's output hooks of linear at.w (outw wide) on its rows of
 * out (stride ldo) and x (in wide); in a mixed batch on a device, the
 * segments of plain LoRA all in one gathered product instead (mixed_lora.c).
 */
static void
segment_output_hooks(Network *net, const MixedSegment *sg, int nsg, HookAt at, real *out,
					 int ldo, const real *x, int in, int outw, bool train)
{
	bool	   *gathered = net->mixed ? net->mixed->gathered : NULL;
	bool		any = net->mixed && mixed_lora_select(net, sg, nsg, at, train, gathered) > 0;

	for (int i = 0; i < nsg; i++)
		if (!any || !gathered[i])
			output_hooks(sg[i].net, at, out + (size_t) sg[i].row0 * ldo, ldo,
						 x + (size_t) sg[i].row0 * in, sg[i].rows, train);
	if (any)
		mixed_lora_forward(net, sg, nsg, at, gathered, out, ldo, x, in, outw);
}

/*
 * How many segments from first on share the bias bias_of gives (one
 * product serves them): segments of the bare model and of methods that
 * keep the model's biases run together.
 */
static int
same_bias_run(const MixedSegment *sg, int nsg, int first,
			  const real *(*bias_of) (const Network *net, int l, int w), int l, int w)
{
	const real *bias = bias_of(sg[first].net, l, w);
	int			n = 1;

	while (first + n < nsg && bias_of(sg[first + n].net, l, w) == bias)
		n++;
	return n;
}

/*
 * out[N, ldo] = x W^T + b over every segment's rows: one product per run
 * of segments with the same bias (W the base's, shared by all).
 */
static void
segment_products(Network *net, const MixedSegment *sg, int nsg, HookAt at, real *out, int ldo,
				 const real *x, const real *W, int in, int outw,
				 const real *(*bias_of) (const Network *net, int l, int w))
{
	for (int i = 0; i < nsg;)
	{
		int			n = same_bias_run(sg, nsg, i, bias_of, at.l, at.w);
		int			rows = sg[i + n - 1].row0 + sg[i + n - 1].rows - sg[i].row0;

		net->be->ops->linear(net->be, out + (size_t) sg[i].row0 * ldo, ldo,
							 x + (size_t) sg[i].row0 * in, in, W,
							 bias_of(sg[i].net, at.l, at.w), rows, in, outw);
		i += n;
	}
}

/* out[N, out] = x W^T + b of linear at.w with every hook (of each segment, in a mixed batch). */
static void
linear_forward(Network *net, HookAt at, real *out, const real *x, int N, bool train)
{
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	MixedSegment one;
	int			nsg;
	const MixedSegment *sg = segments_of(net, N, &one, &nsg);

	segment_products(net, sg, nsg, at, out, lin->out, segment_inputs(net, sg, nsg, at, x, lin->in),
					 net->weights->layers[at.l].weight[at.w], lin->in, lin->out, linear_bias);
	segment_output_hooks(net, sg, nsg, at, out, lin->out, x, lin->in, lin->out, train);
}

/*
 * The fused q, k, v bias of layer l: trained q, k, v biases are declared
 * adjacent, so together they are the fused bias; a merged block has its
 * own, the trained values included.  (w is unused: segment_products'
 * signature.)
 */
static const real *
qkv_bias(const Network *net, int l, int w)
{
	const LayerHooks *hk = &net->hooks[l];
	bool		merged = net->merged &&
		((hk->linear[BERT_QUERY] | hk->linear[BERT_KEY] | hk->linear[BERT_VALUE]) & HOOK_MERGES);

	(void) w;
	return hk->bias[BERT_QUERY] >= 0 && !merged ?
		network_dvalue(net, hk->bias[BERT_QUERY]) : net->weights->layers[l].qkv_bias;
}

/* la->qkv[N, 3C] = query | key | value of x[N, C]: one product, then each slice's hooks. */
static void
qkv_forward(Network *net, LayerActs *la, HookAt at, const real *x, int N, bool train)
{
	int			C = net->base->cfg.hidden_size;
	MixedSegment one;
	int			nsg;
	const MixedSegment *sg = segments_of(net, N, &one, &nsg);

	segment_products(net, sg, nsg, at, la->qkv, 3 * C, x,
					 net->weights->layers[at.l].qkv_weight, C, 3 * C, qkv_bias);
	for (at.w = BERT_QUERY; at.w <= BERT_VALUE; at.w++)
		segment_output_hooks(net, sg, nsg, at, la->qkv + at.w * C, 3 * C, x, C, C, train);
}

/* ---- forward ---------------------------------------------------------------- */

/* A LayerNorm's bias (which: 0 attention, 1 output): a module's trained copy, or the model's. */
static const real *
norm_bias(const Network *net, int l, int which, const real *model_beta)
{
	int			i = net->hooks[l].norm_bias[which];

	return i >= 0 ? network_dvalue(net, i) : model_beta;
}

/*
 * y = LayerNorm(x) with gamma and each segment's bias (norm which of layer
 * l): one call per run of segments with the same bias.
 */
static void
segment_layernorm(Network *net, int l, int which, real *y, real *mean, real *rstd,
				  const real *x, const real *gamma, const real *model_beta, int N)
{
	int			C = net->base->cfg.hidden_size;
	real		eps = (real) net->base->cfg.layer_norm_eps;
	MixedSegment one;
	int			nsg;
	const MixedSegment *sg = segments_of(net, N, &one, &nsg);

	for (int i = 0; i < nsg;)
	{
		const real *beta = norm_bias(sg[i].net, l, which, model_beta);
		int			n = 1;
		size_t		r0 = sg[i].row0;

		while (i + n < nsg && norm_bias(sg[i + n].net, l, which, model_beta) == beta)
			n++;
		net->be->ops->layernorm_forward(net->be, y + r0 * C, mean + r0, rstd + r0, x + r0 * C,
										gamma, beta,
										sg[i + n - 1].row0 + sg[i + n - 1].rows - (int) r0, C, eps);
		i += n;
	}
}

/* The sublayer-output hooks of sublayer at.w on h[N, C], in place (each segment's on its rows). */
static void
sublayer_hooks(Network *net, HookAt at, real *h, int N)
{
	size_t		C = net->base->cfg.hidden_size;
	MixedSegment one;
	int			nsg;
	const MixedSegment *sg = segments_of(net, N, &one, &nsg);

	for (int s = 0; s < nsg; s++)
	{
		Network    *sn = sg[s].net;

		for (int i = 0; i < sn->nmethods; i++)
			if (sn->methods[i].m->sublayer_output)
				sn->methods[i].m->sublayer_output(sn, sn->methods[i].state, at,
												  h + sg[s].row0 * C, sg[s].rows);
	}
}

/*
 * Attention of layer at.l in a mixed batch where some segment's method
 * computes it (prefix tuning): that segment's module on its rows (its
 * network packed them), every run of other segments through the plain op
 * over their sequences.  Inference: the attention buffer is scratch each
 * call reuses from its start.
 */
static void
segment_attention(Network *net, LayerActs *la, HookAt at)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	size_t		C = cfg->hidden_size;
	const MixedSegment *sg = net->mixed->segments;
	int			nsg = net->mixed->nsegments;

	for (int i = 0; i < nsg;)
	{
		Network    *sn = sg[i].net;
		int			n = 1;

		if (sn->attention >= 0)
		{
			AttentionIO io = {la->qkv + sg[i].row0 * 3 * C, la->ctx + sg[i].row0 * C, la->probs,
			NULL, NULL, 0, NULL, NULL};
			const ActiveMethod *am = &sn->methods[sn->attention];

			am->m->attention_forward(sn, am->state, at, &io);
			i++;
			continue;
		}
		while (i + n < nsg && sg[i + n].net->attention < 0)
			n++;
		net->be->ops->attention_forward(net->be, la->ctx, la->probs, NULL, la->qkv, la->qkv + C,
										la->qkv + 2 * C, 3 * C, NULL, 0,
										act->d_seq_start + sg[i].seq0,
										sg[i + n - 1].seq0 + sg[i + n - 1].nseqs - sg[i].seq0,
										sg[i + n - 1].row0 + sg[i + n - 1].rows - sg[i].row0,
										(int) C, cfg->num_heads);
		i += n;
	}
}

/* Whether some segment of a mixed batch computes attention its own way. */
static bool
segments_compute_attention(const Network *net)
{
	for (int i = 0; net->mixed && i < net->mixed->nsegments; i++)
		if (net->mixed->segments[i].net->attention >= 0)
			return true;
	return false;
}

/* Attention of layer at.l: a module's, when one computes it, else the plain one. */
static void
attention_forward(Network *net, LayerActs *la, HookAt at, int N, bool drop_attn)
{
	NetworkActivations *act = net->act;
	const ModelConfig *cfg = &net->base->cfg;
	int			C = cfg->hidden_size;
	real		ap = drop_attn ? (real) net->opts.attention_dropout : 0;

	if (segments_compute_attention(net))
	{
		segment_attention(net, la, at);
		return;
	}
	if (drop_attn)
		network_draw_mask(net, la->keep_attn, act->nprobs, net->opts.attention_dropout);
	if (net->attention >= 0)
	{
		AttentionIO io = {la->qkv, la->ctx, la->probs, drop_attn ? act->enc.datt : NULL,
		drop_attn ? la->keep_attn : NULL, ap, NULL, NULL};
		const ActiveMethod *am = &net->methods[net->attention];

		am->m->attention_forward(net, am->state, at, &io);
		return;
	}
	net->be->ops->attention_forward(net->be, la->ctx, la->probs, drop_attn ? act->enc.datt : NULL,
									la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
									drop_attn ? la->keep_attn : NULL, ap,
									act->d_seq_start, act->B, N, C, cfg->num_heads);
}

/* Layer l: y from x (train: dropout on, activations kept in the layer's own slot). */
void
encoder_block_forward(Network *net, int l, const real *x, real *y, bool train)
{
	const ModelConfig *cfg = &net->base->cfg;
	const LayerWeights *lw = &net->weights->layers[l];
	Backend    *be = net->be;
	HookAt		at = {l, network_slot(l, train), -1};
	LayerActs  *la = &net->act->enc.layers[at.s];
	int			N = net->act->N;
	int			C = cfg->hidden_size;
	int			FF = cfg->intermediate_size;
	double		hp = net->opts.hidden_dropout;

	qkv_forward(net, la, at, x, N, train);
	attention_forward(net, la, at, N, train && net->opts.attention_dropout > 0);

	at.w = BERT_ATTN_OUT;
	linear_forward(net, at, la->res1, la->ctx, N, train);
	network_dropout(net, la->res1, la->keep_ao, hp, (size_t) N * C, train);
	at.w = 0;
	sublayer_hooks(net, at, la->res1, N);
	be->ops->add(be, la->res1, la->res1, x, (size_t) N * C);
	segment_layernorm(net, l, 0, la->h1, la->ln1_mean, la->ln1_rstd, la->res1,
					  lw->ln_attn_gamma, lw->ln_attn_beta, N);

	at.w = BERT_INTERMEDIATE;
	linear_forward(net, at, la->inter, la->h1, N, train);
	be->ops->gelu_forward(be, la->gel, la->inter, (size_t) N * FF);
	at.w = BERT_OUTPUT;
	linear_forward(net, at, la->res2, la->gel, N, train);
	network_dropout(net, la->res2, la->keep_o, hp, (size_t) N * C, train);
	at.w = 1;
	sublayer_hooks(net, at, la->res2, N);
	be->ops->add(be, la->res2, la->res2, la->h1, (size_t) N * C);
	segment_layernorm(net, l, 1, y, la->ln2_mean, la->ln2_rstd, la->res2,
					  lw->ln_out_gamma, lw->ln_out_beta, N);
}

/* ---- a linear with the modules' hooks: backward ----------------------------- */

/*
 * The output hooks' gradients of linear at.w given dout (row stride ldd),
 * in reverse: each transform turns dout, in place, into the gradient
 * before it; then the trained bias's gradient.
 */
static void
output_grads(Network *net, HookAt at, real *dout, int ldd, int N)
{
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	int			bias = net->hooks[at.l].bias[at.w];

	for (int i = net->nmethods - 1; i >= 0; i--)
		if (net->methods[i].m->linear_output_backward)
			net->methods[i].m->linear_output_backward(net, net->methods[i].state, at, dout, ldd, N);
	if (bias >= 0)
		net->be->ops->coldot(net->be, network_dgrad(net, bias), dout, ldd, NULL, 0, NULL, 1,
							 N, lin->out);
}

/* The branches' gradients of linear at.w given dout; dx += their input gradients (dx may be NULL). */
static void
branch_grads(Network *net, HookAt at, real *dx, const real *dout, int ldd, const real *x, int N)
{
	for (int i = net->nmethods - 1; i >= 0; i--)
		if (net->methods[i].m->linear_branch_backward)
			net->methods[i].m->linear_branch_backward(net, net->methods[i].state, at, dx,
													  dout, ldd, x, N);
}

/*
 * Backward of linear at.w: dx[N, in] = beta dx + dout W (beta 0
 * overwrites, so dx needs no zeroing), plus every hook's gradients.  dout
 * is not changed: output hooks transform a copy.
 */
static void
linear_backward(Network *net, HookAt at, real *dx, real beta, const real *dout,
				const real *x, int N)
{
	EncoderActs *ea = &net->act->enc;
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	unsigned	hooks = net->hooks[at.l].linear[at.w];
	Backend    *be = net->be;
	const real *W = net->weights->layers[at.l].weight[at.w];
	const real *dout_branch = dout; /* the branches add after the transforms */

	if (hooks & HOOK_OUTPUT)
	{
		be->ops->copy(be, ea->dout_copy, dout, sizeof(real) * N * lin->out);
		output_grads(net, at, ea->dout_copy, lin->out, N);
		dout = ea->dout_copy;
	}
	else
		output_grads(net, at, (real *) dout, lin->out, N);	/* no transform: only read */
	if (hooks & HOOK_INPUT)
	{
		/* the gradient of the scaled input, which its hook turns into dx's */
		be->ops->gemm(be, false, false, N, lin->in, lin->out, 1, dout, lin->out, W, lin->in,
					  0, ea->dxin, lin->in);
		for (int i = 0; i < net->nmethods; i++)
			if (net->methods[i].m->linear_input_backward)
				net->methods[i].m->linear_input_backward(net, net->methods[i].state, at, dx,
														 beta, ea->dxin, x, N);
	}
	else
		be->ops->gemm(be, false, false, N, lin->in, lin->out, 1, dout, lin->out,
					  W, lin->in, beta, dx, lin->in);
	branch_grads(net, at, dx, dout_branch, lin->out, x, N);
}

/* Whether linear w of layer l has hooks or a trained bias (its output gradient is needed). */
static bool
linear_trains(const Network *net, int l, int w)
{
	return net->hooks[l].linear[w] != 0 || net->hooks[l].bias[w] >= 0;
}

/* ---- backward --------------------------------------------------------------- */

/*
 * The gradient of a sublayer's dense output given dres, that of the
 * residual sum's sublayer part: through the sublayer hooks at at.w (in
 * reverse), then the hidden dropout.  Returns the buffer holding it.
 */
static const real *
sublayer_gradient(Network *net, HookAt at, const real *dres, const uint8_t *keep, int N)
{
	size_t		NC = (size_t) N * net->base->cfg.hidden_size;
	real		hp = (real) net->opts.hidden_dropout;

	for (int i = net->nmethods - 1; i >= 0; i--)
		if (net->methods[i].m->sublayer_backward)
			dres = net->methods[i].m->sublayer_backward(net, net->methods[i].state, at, dres, N);
	if (hp > 0)
	{
		net->be->ops->dropout(net->be, net->act->dres, dres, keep, hp, NC);
		dres = net->act->dres;
	}
	return dres;
}

/* Backward of attention: enc.dctx -> enc.dqkv (zeroed here), a module's or the plain one. */
static void
attention_backward(Network *net, LayerActs *la, HookAt at, bool need_dx)
{
	NetworkActivations *act = net->act;
	EncoderActs *ea = &act->enc;
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	int			N = act->N;
	real		ap = (real) net->opts.attention_dropout;
	bool		dq = need_dx || linear_trains(net, at.l, BERT_QUERY);
	bool		dk = need_dx || linear_trains(net, at.l, BERT_KEY);
	bool		dv = need_dx || linear_trains(net, at.l, BERT_VALUE);

	be->ops->zero(be, ea->dqkv, (size_t) N * C * 3 * sizeof(real));
	if (net->attention >= 0)
	{
		AttentionIO io = {la->qkv, la->ctx, la->probs, ea->datt, ap > 0 ? la->keep_attn : NULL,
		ap, ea->dqkv, ea->dctx};
		const ActiveMethod *am = &net->methods[net->attention];

		am->m->attention_backward(net, am->state, at, &io);
		return;
	}
	be->ops->attention_backward(be, dq ? ea->dqkv : NULL, dk ? ea->dqkv + C : NULL,
								dv ? ea->dqkv + 2 * C : NULL, ea->datt, ea->dctx, la->probs,
								la->qkv, la->qkv + C, la->qkv + 2 * C, 3 * C,
								ap > 0 ? la->keep_attn : NULL, ap,
								act->d_seq_start, act->B, N, C, net->base->cfg.num_heads);
}

/* Whether layer l's backward must go through attention to q, k and v. */
static bool
attention_trains(const Network *net, int l)
{
	return net->attention >= 0 || linear_trains(net, l, BERT_QUERY) ||
		linear_trains(net, l, BERT_KEY) || linear_trains(net, l, BERT_VALUE);
}

/* Backward of layer l: act->dh (its output gradient) -> act->dx. */
void
encoder_block_backward(Network *net, int l, bool need_dx)
{
	NetworkActivations *act = net->act;
	EncoderActs *ea = &act->enc;
	Backend    *be = net->be;
	const ModelConfig *cfg = &net->base->cfg;
	const LayerWeights *lw = &net->weights->layers[l];
	const LayerHooks *hk = &net->hooks[l];
	HookAt		at = {l, l, -1};
	LayerActs  *la = &ea->layers[l];
	int			N = act->N;
	int			C = cfg->hidden_size;
	size_t		NC = (size_t) N * C;
	size_t		NI = (size_t) N * cfg->intermediate_size;
	const real *x = act->h[l];
	const real *dsub;			/* gradient of a sublayer's dense output */
	real	   *dln1;

	/* output LayerNorm: the residual carries its input gradient to h1 */
	be->ops->zero(be, ea->dh1, NC * sizeof(real));
	be->ops->layernorm_backward(be, ea->dh1,
								hk->norm_bias[1] >= 0 ? network_dgrad(net, hk->norm_bias[1]) : NULL,
								act->dh, la->res2, lw->ln_out_gamma, la->ln2_mean, la->ln2_rstd,
								N, C);
	/* the residual's copy is act->dres or a hook's: dh1 itself stays for h1 */
	at.w = 1;
	dsub = sublayer_gradient(net, at, ea->dh1, la->keep_o, N);

	/* feed-forward; its input gradient adds onto dh1 */
	at.w = BERT_OUTPUT;
	linear_backward(net, at, ea->dgel, 0, dsub, la->gel, N);
	be->ops->zero(be, ea->dinter, NI * sizeof(real));
	be->ops->gelu_backward(be, ea->dinter, la->inter, ea->dgel, NI);
	at.w = BERT_INTERMEDIATE;
	linear_backward(net, at, ea->dh1, 1, ea->dinter, la->h1, N);

	/* attention LayerNorm: the residual carries its input gradient to x */
	dln1 = need_dx ? act->dx : act->dres;
	be->ops->zero(be, dln1, NC * sizeof(real));
	be->ops->layernorm_backward(be, dln1,
								hk->norm_bias[0] >= 0 ? network_dgrad(net, hk->norm_bias[0]) : NULL,
								ea->dh1, la->res1, lw->ln_attn_gamma, la->ln1_mean, la->ln1_rstd,
								N, C);
	at.w = 0;
	dsub = sublayer_gradient(net, at, dln1, la->keep_ao, N);
	at.w = BERT_ATTN_OUT;
	linear_backward(net, at, ea->dctx, 0, dsub, la->ctx, N);

	/* attention core, then the fused q/k/v projection */
	if (!need_dx && !attention_trains(net, l))
		return;
	attention_backward(net, la, at, need_dx);
	/* dqkv is read only here and below, so output hooks may transform it in place */
	for (at.w = BERT_QUERY; at.w <= BERT_VALUE; at.w++)
	{
		output_grads(net, at, ea->dqkv + at.w * C, 3 * C, N);
		branch_grads(net, at, need_dx ? act->dx : NULL, ea->dqkv + at.w * C, 3 * C, x, N);
	}
	/* dx[N, C] += dqkv[N, 3C] Wqkv[3C, C] */
	if (need_dx)
		be->ops->gemm(be, false, false, N, C, 3 * C, 1, ea->dqkv, 3 * C,
					  lw->qkv_weight, C, 1, act->dx, C);
}
