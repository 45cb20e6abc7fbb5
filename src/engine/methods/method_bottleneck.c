/*
 * method_bottleneck.c - bottleneck adapters as a method module (method.h):
 * h + up(GELU(down(h))) on a sublayer's output, before the residual and
 * LayerNorm (Houlsby: after attention and after the feed-forward;
 * Pfeiffer: after the feed-forward only).  down is [C/reduction, C], up
 * [C, C/reduction] and starts at zero, so a new adapter is the identity.
 */
#include "network_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* One layer slot's buffers, per place (0 after attention, 1 after the feed-forward). */
typedef struct BottleneckSlot
{
	real	   *in[2];			/* [N, C] the adapter's input */
	real	   *down[2];		/* [N, m] down projection */
	real	   *act[2];			/* [N, m] after GELU */
} BottleneckSlot;

typedef struct BottleneckState
{
	BottleneckSlot *slots;		/* [num_layers] */
	int			m;				/* the bottleneck's width */
	real	   *tmp;			/* [N, C] the up projection */
	real	   *dad;			/* [N, C] the gradient of an adapter's input */
	real	   *dga;			/* [N, m] */
	real	   *ddd;			/* [N, m] */
} BottleneckState;

/* Whether the options ask for adapters. */
static bool
bottleneck_enabled(const NetworkOptions *o)
{
	return o->bottleneck.reduction > 0;
}

/* A reduction factor the hidden size allows, and a place. */
static PeftCode
bottleneck_check(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
	int			C = base->cfg.hidden_size;

	if (o->bottleneck.reduction < 0 || o->bottleneck.reduction > C ||
		(o->bottleneck.reduction > 0 && !o->bottleneck.after_attention && !o->bottleneck.after_ffn))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "a bottleneck adapter needs a reduction factor from 1 to %d and a place "
						 "(after attention and/or the feed-forward)", C);
	return PEFT_OK;
}

/* The slots and the width. */
static PeftCode
bottleneck_create(Network *net, void **state, PeftError *err)
{
	BottleneckState *st = calloc(1, sizeof(BottleneckState));

	if (st == NULL ||
		(st->slots = calloc(net->base->cfg.num_layers, sizeof(BottleneckSlot))) == NULL)
	{
		free(st);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	}
	st->m = net->base->cfg.hidden_size / net->opts.bottleneck.reduction;
	*state = st;
	return PEFT_OK;
}

/* Free the state. */
static void
bottleneck_destroy(void *state)
{
	BottleneckState *st = state;

	if (st)
		free(st->slots);
	free(st);
}

/* Whether an adapter sits at place pos. */
static bool
placed(const NetworkOptions *o, int pos)
{
	return pos == 0 ? o->bottleneck.after_attention : o->bottleneck.after_ffn;
}

/* down W, b and up W, b of each place in the layer. */
static bool
bottleneck_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	BottleneckState *st = state;
	int			C = net->base->cfg.hidden_size;
	int		   *ad;
	char		path[128];
	bool		ok = true;

	if (site != SITE_SUBLAYERS)
		return true;
	for (int pos = 0; pos < 2; pos++)
	{
		if (!placed(&net->opts, pos))
			continue;
		ad = net->lp[l].adapter[pos];
		snprintf(path, sizeof(path), "encoder.layer.%d.%s.adapter", l,
				 pos == 0 ? "attention.output" : "output");
		ok &= (ad[0] = network_declare(net, path, "down.weight", 2, st->m, C, err)) >= 0;
		ok &= (ad[1] = network_declare(net, path, "down.bias", 1, st->m, 0, err)) >= 0;
		ok &= (ad[2] = network_declare(net, path, "up.weight", 2, C, st->m, err)) >= 0;
		ok &= (ad[3] = network_declare(net, path, "up.bias", 1, C, 0, err)) >= 0;
	}
	return ok;
}

/* down as torch.nn.Linear (weight and bias U(+-1/sqrt(C))), up = 0: the identity. */
static void
bottleneck_initialise(Network *net, void *state, PeftRng *rng)
{
	ParamSet   *ps = &net->params;
	double		bound = 1.0 / sqrt((double) net->base->cfg.hidden_size);

	for (int l = 0; l < net->base->cfg.num_layers; l++)
		for (int pos = 0; pos < 2; pos++)
		{
			const int  *ad = net->lp[l].adapter[pos];

			if (ad[0] < 0)
				continue;
			network_uniform_fill(param_value(ps, ad[0]), ps->items[ad[0]].count, bound, rng);
			network_uniform_fill(param_value(ps, ad[1]), ps->items[ad[1]].count, bound, rng);
		}
}

/* Each slot's buffers per place, the up projection, and backward scratch. */
static void
bottleneck_acts(Network *net, void *state, ActTable *t)
{
	BottleneckState *st = state;
	size_t		C = net->base->cfg.hidden_size;
	size_t		m = st->m;

	for (int s = 0; s < net->base->cfg.num_layers; s++)
		for (int pos = 0; pos < 2; pos++)
		{
			if (!placed(&net->opts, pos))
				continue;
			ACT_ADD(t, st->slots[s].in[pos], ((ActSize) {.rows = C}), act_layer_when(s));
			ACT_ADD(t, st->slots[s].down[pos], ((ActSize) {.rows = m}), act_layer_when(s));
			ACT_ADD(t, st->slots[s].act[pos], ((ActSize) {.rows = m}), act_layer_when(s));
		}
	ACT_ADD(t, st->tmp, ((ActSize) {.rows = C}), 0);
	ACT_ADD(t, st->dad, ((ActSize) {.rows = C}), ACT_TRAIN);
	ACT_ADD(t, st->dga, ((ActSize) {.rows = m}), ACT_TRAIN);
	ACT_ADD(t, st->ddd, ((ActSize) {.rows = m}), ACT_TRAIN);
}

/* h[N, C] += up(GELU(down(h))), its input, down projection and activation kept. */
static void
bottleneck_forward(Network *net, void *state, HookAt at, real *h, int N)
{
	BottleneckState *st = state;
	BottleneckSlot *sl = &st->slots[at.s];
	const int  *ad = net->lp[at.l].adapter[at.w];
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	int			m = st->m;
	int			pos = at.w;

	if (ad[0] < 0)
		return;
	be->ops->copy(be, sl->in[pos], h, sizeof(real) * N * C);
	be->ops->linear(be, sl->down[pos], m, h, C, network_dvalue(net, ad[0]),
					network_dvalue(net, ad[1]), N, C, m);
	be->ops->gelu_forward(be, sl->act[pos], sl->down[pos], (size_t) N * m);
	be->ops->linear(be, st->tmp, C, sl->act[pos], m, network_dvalue(net, ad[2]),
					network_dvalue(net, ad[3]), N, m, C);
	be->ops->add(be, h, h, st->tmp, (size_t) N * C);
}

/* The adapter's gradients given da, that of its output; returns its input's gradient. */
static const real *
bottleneck_backward(Network *net, void *state, HookAt at, const real *da, int N)
{
	BottleneckState *st = state;
	BottleneckSlot *sl = &st->slots[at.s];
	const int  *ad = net->lp[at.l].adapter[at.w];
	Backend    *be = net->be;
	int			C = net->base->cfg.hidden_size;
	int			m = st->m;
	int			pos = at.w;

	if (ad[0] < 0)
		return da;
	be->ops->copy(be, st->dad, da, sizeof(real) * N * C);
	be->ops->zero(be, st->dga, sizeof(real) * N * m);
	be->ops->linear_backward(be, st->dga, network_dgrad(net, ad[2]), network_dgrad(net, ad[3]),
							 da, sl->act[pos], network_dvalue(net, ad[2]), N, m, C);
	be->ops->zero(be, st->ddd, sizeof(real) * N * m);
	be->ops->gelu_backward(be, st->ddd, sl->down[pos], st->dga, (size_t) N * m);
	be->ops->linear_backward(be, st->dad, network_dgrad(net, ad[0]), network_dgrad(net, ad[1]),
							 st->ddd, sl->in[pos], network_dvalue(net, ad[0]), N, C, m);
	return st->dad;
}

const MethodModule method_bottleneck = {
	.name = "bottleneck",
	.check = bottleneck_check,
	.enabled = bottleneck_enabled,
	.create = bottleneck_create,
	.destroy = bottleneck_destroy,
	.declare = bottleneck_declare,
	.initialise = bottleneck_initialise,
	.acts = bottleneck_acts,
	.sublayer_output = bottleneck_forward,
	.sublayer_backward = bottleneck_backward,
};
