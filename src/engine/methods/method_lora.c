/*
 * method_lora.c - LoRA and DoRA (PEFT's use_dora) as a method module
 * (method.h): a branch beside each targeted linear,
 *
 *   LoRA: y += s (xd A^T) B^T,                    xd = dropout(x)
 *   DoRA: y += (g - 1) (xd W^T) + g s (xd A^T) B^T, per output column,
 *
 * with s = alpha / r (alpha / sqrt(r) for rsLoRA) and g = m / ||W + s B A||
 * per row, which is PEFT's DoRA: with no dropout, g (x W^T + s x A^T B^T)
 * + b.  The norm is a constant to the gradient, as PEFT detaches it.
 * Tensors: lora_A.weight [r, in], lora_B.weight [out, r] and
 * lora_magnitude_vector [out] on the linear's path.
 */
#include "network_internal.h"

#include <math.h>
#include <stdlib.h>

/* One layer slot's buffers, per linear (NULL where the linear has no LoRA). */
typedef struct LoraSlot
{
	real	   *xa[BERT_NUM_LINEAR];	/* [N, r] input times A^T */
	real	   *xd[BERT_NUM_LINEAR];	/* [N, in] input after LoRA dropout */
	uint8_t    *keep[BERT_NUM_LINEAR];
	real	   *dora_t[BERT_NUM_LINEAR];	/* [N, out] dropout(x) W^T */
	real	   *dora_u[BERT_NUM_LINEAR];	/* [N, out] dropout(x) A^T B^T */
	real	   *dora_inv[BERT_NUM_LINEAR];	/* [out] 1 / ||W + s B A|| per row (no gradient) */
	real	   *dora_g[BERT_NUM_LINEAR];	/* [out] magnitude * dora_inv */
} LoraSlot;

typedef struct LoraState
{
	LoraSlot   *slots;			/* [num_layers] */
	real	   *dxa;			/* [N, r] gradient of xa */
	real	   *dxd;			/* [N, in] gradient of the dropped input */
	real	   *dscr;			/* [N, out] DoRA: an output gradient scaled per column */
	real	   *dora_w;			/* [out * in] W + s B A */
} LoraState;

/* Whether any linear is targeted. */
static bool
lora_enabled(const NetworkOptions *o)
{
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (o->lora.targets[w])
			return true;
	return false;
}

/* Check rank, alpha, dropout, and that DoRA has targets. */
static PeftCode
lora_check(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	bool		any = lora_enabled(o);

	if (any && (o->lora.r < 1 || o->lora.r > 4096))
		return peft_fail(err, PEFT_ERR_INVALID, "r must be between 1 and 4096, not %d", o->lora.r);
	if (any && !(o->lora.alpha > 0 && isfinite(o->lora.alpha)))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_alpha must be positive");
	if (!(o->lora.dropout >= 0 && o->lora.dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_dropout must be in [0, 1)");
	if (o->dora && !any)
		return peft_fail(err, PEFT_ERR_INVALID, "DoRA needs LoRA target modules");
	return PEFT_OK;
}

/* The state, and the scaling every product uses (combine.c reads it too). */
static PeftCode
lora_create(Network *net, void **state, PeftError *err)
{
	const LoraOptions *o = &net->opts.lora;
	LoraState  *st = calloc(1, sizeof(LoraState));

	if (st == NULL || (st->slots = calloc(net->base->cfg.num_layers, sizeof(LoraSlot))) == NULL)
	{
		free(st);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	net->scaling = (real) (o->rslora ? o->alpha / sqrt((double) o->r) : o->alpha / o->r);
	*state = st;
	return PEFT_OK;
}

/* Free the state. */
static void
lora_destroy(void *state)
{
	LoraState  *st = state;

	if (st)
		free(st->slots);
	free(st);
}

/* A and B (and DoRA's magnitude) of each targeted linear. */
static bool
lora_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	const BertLinearWeights *lin;
	LayerParams *lp;
	char		path[128];
	bool		ok = true;

	if (site != SITE_LINEAR || !net->opts.lora.targets[w])
		return true;
	lin = &net->base->layers[l].linear[w];
	lp = &net->lp[l];
	bert_linear_path(path, sizeof(path), l, w);
	ok &= (lp->lora[w][0] = network_declare(net, path, "lora_A.weight", 2, net->opts.lora.r,
											lin->in, err)) >= 0;
	ok &= (lp->lora[w][1] = network_declare(net, path, "lora_B.weight", 2, lin->out,
											net->opts.lora.r, err)) >= 0;
	if (net->opts.dora)
		ok &= (lp->dora[w] = network_declare(net, path, "lora_magnitude_vector", 1, lin->out,
											 0, err)) >= 0;
	return ok;
}

/*
 * As PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
 * B = 0; DoRA's magnitude = the row norms of W (B A = 0 at first).
 */
static void
lora_initialise(Network *net, void *state, PeftRng *rng)
{
	ParamSet   *ps = &net->params;
	int			L = net->base->cfg.num_layers;

	for (int l = 0; l < L; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			if (net->lp[l].lora[w][0] >= 0)
			{
				const Param *a = &ps->items[net->lp[l].lora[w][0]];

				network_uniform_fill(param_value(ps, net->lp[l].lora[w][0]), a->count,
									 1.0 / sqrt((double) a->shape[1]), rng);
			}
	for (int l = 0; l < L; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &net->base->layers[l].linear[w];

			if (net->lp[l].dora[w] < 0)
				continue;
			for (int o = 0; o < lin->out; o++)
			{
				double		sum = 0;

				for (int i = 0; i < lin->in; i++)
					sum += (double) lin->weight[(size_t) o * lin->in + i] *
						lin->weight[(size_t) o * lin->in + i];
				param_value(ps, net->lp[l].dora[w])[o] = (real) sqrt(sum);
			}
		}
}

/* Every slot's buffers per targeted linear, and the backward scratch. */
static void
lora_acts(Network *net, void *state, ActTable *t)
{
	LoraState  *st = state;
	size_t		r = net->opts.lora.r;
	bool		drop = net->opts.lora.dropout > 0;
	bool		dora = net->opts.dora;
	size_t		in_max = 0;
	size_t		out_max = 0;
	size_t		weight_max = 0;

	for (int w = 0; w < BERT_NUM_LINEAR; w++)
	{
		const BertLinearWeights *lin = &net->base->layers[0].linear[w];
		size_t		in = lin->in;
		size_t		out = lin->out;

		if (!net->opts.lora.targets[w])
			continue;
		in_max = in > in_max ? in : in_max;
		out_max = out > out_max ? out : out_max;
		weight_max = in * out > weight_max ? in * out : weight_max;
		for (int s = 0; s < net->base->cfg.num_layers; s++)
		{
			LoraSlot   *sl = &st->slots[s];
			unsigned	when = act_layer_when(s);

			ACT_ADD(t, sl->xa[w], ((ActSize) {.rows = r}), when);
			if (drop)
			{
				ACT_ADD(t, sl->xd[w], ((ActSize) {.rows = in}), ACT_TRAIN);
				ACT_ADD(t, sl->keep[w], ((ActSize) {.rows = in}), ACT_TRAIN);
			}
			if (dora)
			{
				ACT_ADD(t, sl->dora_t[w], ((ActSize) {.rows = out}), when);
				ACT_ADD(t, sl->dora_u[w], ((ActSize) {.rows = out}), when);
				ACT_ADD(t, sl->dora_inv[w], ((ActSize) {.fixed = out}), when);
				ACT_ADD(t, sl->dora_g[w], ((ActSize) {.fixed = out}), when);
			}
		}
	}
	ACT_ADD(t, st->dxa, ((ActSize) {.rows = r}), ACT_TRAIN);
	if (drop)
		ACT_ADD(t, st->dxd, ((ActSize) {.rows = in_max}), ACT_TRAIN);
	if (dora)
	{
		ACT_ADD(t, st->dscr, ((ActSize) {.rows = out_max}), ACT_TRAIN);
		ACT_ADD(t, st->dora_w, ((ActSize) {.fixed = weight_max}), 0);
	}
}

/* A branch beside every targeted linear. */
static unsigned
lora_linear_hooks(const Network *net, void *state, int l, int w)
{
	return net->lp[l].lora[w][0] >= 0 ? HOOK_BRANCH : 0;
}

/*
 * DoRA's per-row factors of linear at.w: inv = 1 / ||W + s B A|| (a
 * constant to the gradient, as PEFT detaches it) and g = magnitude * inv.
 */
static void
dora_factors(Network *net, LoraState *st, HookAt at)
{
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	const LayerParams *lp = &net->lp[at.l];
	LoraSlot   *sl = &st->slots[at.s];
	Backend    *be = net->be;

	if (net->freeze_dora_norm)
	{
		be->ops->colscale(be, sl->dora_g[at.w], lin->out, network_dvalue(net, lp->dora[at.w]),
						  lin->out, sl->dora_inv[at.w], 0, 1, false, 1, lin->out);
		return;
	}
	be->ops->copy(be, st->dora_w, net->weights->layers[at.l].weight[at.w],
				  sizeof(real) * lin->out * lin->in);
	be->ops->gemm(be, false, false, lin->out, lin->in, net->opts.lora.r, net->scaling,
				  network_dvalue(net, lp->lora[at.w][1]), net->opts.lora.r,
				  network_dvalue(net, lp->lora[at.w][0]), lin->in, 1, st->dora_w, lin->in);
	be->ops->row_inv_norms(be, sl->dora_inv[at.w], st->dora_w, lin->out, lin->in);
	be->ops->colscale(be, sl->dora_g[at.w], lin->out, network_dvalue(net, lp->dora[at.w]),
					  lin->out, sl->dora_inv[at.w], 0, 1, false, 1, lin->out);
}

/* out (row stride ldo) += the LoRA (or DoRA) update of input x. */
static void
lora_branch(Network *net, void *state, HookAt at, real *out, int ldo, const real *x, int N,
			bool train)
{
	LoraState  *st = state;
	LoraSlot   *sl = &st->slots[at.s];
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	const LayerParams *lp = &net->lp[at.l];
	Backend    *be = net->be;
	int			r = net->opts.lora.r;
	int			w = at.w;
	const real *xd = x;
	double		p = net->opts.lora.dropout;

	if (lp->lora[w][0] < 0)
		return;
	if (train && p > 0)
	{
		network_draw_mask(net, sl->keep[w], (size_t) N * lin->in, p);
		be->ops->dropout(be, sl->xd[w], x, sl->keep[w], (real) p, (size_t) N * lin->in);
		xd = sl->xd[w];
	}
	/* xa[N, r] = xd A^T */
	be->ops->linear(be, sl->xa[w], r, xd, lin->in, network_dvalue(net, lp->lora[w][0]), NULL,
					N, lin->in, r);
	if (lp->dora[w] < 0)
	{
		/* out[N, out] += scaling * xa B^T */
		be->ops->gemm(be, false, true, N, lin->out, r, net->scaling, sl->xa[w], r,
					  network_dvalue(net, lp->lora[w][1]), r, 1, out, ldo);
		return;
	}
	dora_factors(net, st, at);
	be->ops->linear(be, sl->dora_t[w], lin->out, xd, lin->in,
					net->weights->layers[at.l].weight[w], NULL, N, lin->in, lin->out);
	be->ops->gemm(be, false, true, N, lin->out, r, 1, sl->xa[w], r,
				  network_dvalue(net, lp->lora[w][1]), r, 0, sl->dora_u[w], lin->out);
	be->ops->colscale(be, out, ldo, sl->dora_t[w], lin->out, sl->dora_g[w], -1, 1, true,
					  N, lin->out);
	be->ops->colscale(be, out, ldo, sl->dora_u[w], lin->out, sl->dora_g[w], 0, net->scaling,
					  true, N, lin->out);
}

/* DoRA's part of the gradients: the magnitude's, and dout scaled by g (returned). */
static const real *
dora_backward(Network *net, LoraState *st, HookAt at, const real *dout, int ldd, int N)
{
	LoraSlot   *sl = &st->slots[at.s];
	Backend    *be = net->be;
	int			out = net->base->layers[at.l].linear[at.w].out;
	int			m = net->lp[at.l].dora[at.w];

	/* magnitude: dm_j += inv_j sum_n dout[n,j] (t + s u)[n,j] */
	be->ops->coldot(be, network_dgrad(net, m), dout, ldd, sl->dora_t[at.w], out,
					sl->dora_inv[at.w], 1, N, out);
	be->ops->coldot(be, network_dgrad(net, m), dout, ldd, sl->dora_u[at.w], out,
					sl->dora_inv[at.w], net->scaling, N, out);
	/* the LoRA product's output is scaled by g per column */
	be->ops->colscale(be, st->dscr, out, dout, ldd, sl->dora_g[at.w], 0, 1, false, N, out);
	return st->dscr;
}

/*
 * Gradients of the branch of linear at.w given dout (row stride ldd): A,
 * B (and the magnitude), and dx[N, in] += its input gradient (dx may be
 * NULL).
 */
static void
lora_branch_backward(Network *net, void *state, HookAt at, real *dx, const real *dout,
					 int ldd, const real *x, int N)
{
	LoraState  *st = state;
	LoraSlot   *sl = &st->slots[at.s];
	Backend    *be = net->be;
	const BertLinearWeights *lin = &net->base->layers[at.l].linear[at.w];
	const LayerParams *lp = &net->lp[at.l];
	int			w = at.w;
	int			ia = lp->lora[w][0];
	int			ib = lp->lora[w][1];
	int			r = net->opts.lora.r;
	int			in = lin->in;
	int			out = lin->out;
	double		p = net->opts.lora.dropout;
	const real *xd;
	const real *dup = dout;		/* gradient of xa B^T, before the scaling */
	int			ldu = ldd;
	real		s = net->scaling;

	if (ia < 0)
		return;
	xd = p > 0 ? sl->xd[w] : x;
	if (lp->dora[w] >= 0)
	{
		dup = dora_backward(net, st, at, dout, ldd, N);
		ldu = out;
	}
	/* dB[out, r] += scaling * dup^T xa */
	be->ops->gemm(be, true, false, out, r, N, s, dup, ldu, sl->xa[w], r, 1,
				  network_dgrad(net, ib), r);
	/* dxa[N, r] = scaling * dup B */
	be->ops->gemm(be, false, false, N, r, out, s, dup, ldu, network_dvalue(net, ib), r, 0,
				  st->dxa, r);
	/* dA[r, in] += dxa^T xd */
	be->ops->gemm(be, true, false, r, in, N, 1, st->dxa, r, xd, in, 1, network_dgrad(net, ia), in);
	if (dx == NULL)
		return;
	/* gradient of xd: dxa A, and for DoRA ((g - 1) dout) W */
	if (p > 0)
		be->ops->gemm(be, false, false, N, in, r, 1, st->dxa, r, network_dvalue(net, ia), in,
					  0, st->dxd, in);
	else
		be->ops->gemm(be, false, false, N, in, r, 1, st->dxa, r, network_dvalue(net, ia), in,
					  1, dx, in);
	if (lp->dora[w] >= 0)
	{
		be->ops->colscale(be, st->dscr, out, dout, ldd, sl->dora_g[w], -1, 1, false, N, out);
		be->ops->gemm(be, false, false, N, in, out, 1, st->dscr, out,
					  net->weights->layers[at.l].weight[w], in, 1, p > 0 ? st->dxd : dx, in);
	}
	if (p > 0)
		be->ops->dropout_backward(be, dx, st->dxd, sl->keep[w], (real) p, (size_t) N * in);
}

/*
 * Fold into row o of linear w (in double, as PEFT's merge_and_unload):
 * W + s B A, and for DoRA the row scaled to m / ||W + s B A||.
 */
static void
lora_merge_row(const Network *net, void *state, int l, int w, int o, double *row,
			   double *scale, double *bias)
{
	const LayerParams *lp = &net->lp[l];
	const ParamSet *ps = &net->params;
	int			in = net->base->layers[l].linear[w].in;
	int			r = net->opts.lora.r;
	const real *A;
	const real *Bm;

	if (lp->lora[w][0] < 0)
		return;
	A = param_value(ps, lp->lora[w][0]);
	Bm = param_value(ps, lp->lora[w][1]);
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
		*scale = param_value(ps, lp->dora[w])[o] / sqrt(norm);
	}
}

const MethodModule method_lora = {
	.name = "lora",
	.check = lora_check,
	.enabled = lora_enabled,
	.create = lora_create,
	.destroy = lora_destroy,
	.declare = lora_declare,
	.initialise = lora_initialise,
	.acts = lora_acts,
	.linear_hooks = lora_linear_hooks,
	.linear_branch = lora_branch,
	.linear_branch_backward = lora_branch_backward,
	.merge_row = lora_merge_row,
};
