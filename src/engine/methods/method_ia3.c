/*
 * method_ia3.c - (IA)^3 as a method module (method.h): a learned vector
 * scales the output of each targeted linear (bias included, as PEFT), or
 * for PEFT's feedforward_modules its input, column by column.  Tensor:
 * ia3_l, [out, 1] or, feed-forward, [1, in], on the linear's path; it
 * starts at ones (the identity).
 */
#include "network_internal.h"

#include <stdlib.h>

/* One layer slot's buffers, per linear (NULL where unused). */
typedef struct Ia3Slot
{
	real	   *pre[BERT_NUM_LINEAR];	/* [N, out] output before scaling (training) */
	real	   *in[BERT_NUM_LINEAR];	/* [N, in] input after feed-forward scaling */
} Ia3Slot;

/* Whether any linear is targeted. */
static bool
ia3_enabled(const NetworkOptions *o)
{
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (o->ia3.targets[w])
			return true;
	return false;
}

/* Check the targets against LoRA's and the feed-forward modules against the targets. */
static PeftCode
ia3_check(const BertModel *base, const NetworkOptions *o, PeftError *err)
{
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
	return PEFT_OK;
}

/* The slots of the layers' buffers. */
static PeftCode
ia3_create(Network *net, void **state, PeftError *err)
{
	*state = calloc(net->base->cfg.num_layers, sizeof(Ia3Slot));
	if (*state == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the network");
	return PEFT_OK;
}

/* Free the slots. */
static void
ia3_destroy(void *state)
{
	free(state);
}

/* The vector of each targeted linear. */
static bool
ia3_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	const BertLinearWeights *lin;
	char		path[128];

	if (site != SITE_LINEAR || !net->opts.ia3.targets[w])
		return true;
	lin = &net->base->layers[l].linear[w];
	bert_linear_path(path, sizeof(path), l, w);
	net->lp[l].ia3[w] = net->opts.ia3.feedforward[w]
		? network_declare(net, path, "ia3_l", 2, 1, lin->in, err)
		: network_declare(net, path, "ia3_l", 2, lin->out, 1, err);
	return net->lp[l].ia3[w] >= 0;
}

/* Every vector starts at ones. */
static void
ia3_initialise(Network *net, void *state, PeftRng *rng)
{
	ParamSet   *ps = &net->params;

	for (int l = 0; l < net->base->cfg.num_layers; l++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			int			i = net->lp[l].ia3[w];

			for (size_t j = 0; i >= 0 && j < ps->items[i].count; j++)
				param_value(ps, i)[j] = 1;
		}
}

/* The scaled inputs (always) and the unscaled outputs (training) of every slot. */
static void
ia3_acts(Network *net, void *state, ActTable *t)
{
	Ia3Slot    *slots = state;

	for (int s = 0; s < net->base->cfg.num_layers; s++)
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &net->base->layers[s].linear[w];

			if (!net->opts.ia3.targets[w])
				continue;
			if (net->opts.ia3.feedforward[w])
				ACT_ADD(t, slots[s].in[w], ((ActSize) {.rows = lin->in}), act_layer_when(s));
			else
				ACT_ADD(t, slots[s].pre[w], ((ActSize) {.rows = lin->out}), ACT_TRAIN);
		}
}

/* Whether linear w of layer l has a vector, and on which side. */
static unsigned
ia3_linear_hooks(const Network *net, void *state, int l, int w)
{
	if (net->lp[l].ia3[w] < 0)
		return 0;
	return net->opts.ia3.feedforward[w] ? HOOK_INPUT : HOOK_OUTPUT;
}

/* Index of the vector scaling linear at.w's input, -1 none. */
static int
input_vector(const Network *net, HookAt at)
{
	return net->opts.ia3.feedforward[at.w] ? net->lp[at.l].ia3[at.w] : -1;
}

/* Index of the vector scaling linear at.w's output, -1 none. */
static int
output_vector(const Network *net, HookAt at)
{
	return net->opts.ia3.feedforward[at.w] ? -1 : net->lp[at.l].ia3[at.w];
}

/* Feed-forward: the input scaled, column by column, into the slot's buffer. */
static const real *
ia3_input(Network *net, void *state, HookAt at, const real *x, int N)
{
	Ia3Slot    *sl = &((Ia3Slot *) state)[at.s];
	int			in = net->base->layers[at.l].linear[at.w].in;
	int			v = input_vector(net, at);

	if (v < 0)
		return x;
	net->be->ops->colscale(net->be, sl->in[at.w], in, x, in, network_dvalue(net, v), 0, 1,
						   false, N, in);
	return sl->in[at.w];
}

/* The output scaled in place (kept unscaled for backward when training). */
static void
ia3_output(Network *net, void *state, HookAt at, real *out, int ldo, int N, bool train)
{
	Ia3Slot    *sl = &((Ia3Slot *) state)[at.s];
	int			n = net->base->layers[at.l].linear[at.w].out;
	int			v = output_vector(net, at);

	if (v < 0)
		return;
	if (train)
		net->be->ops->colscale(net->be, sl->pre[at.w], n, out, ldo, NULL, 0, 1, false, N, n);
	net->be->ops->colscale(net->be, out, ldo, out, ldo, network_dvalue(net, v), 0, 1, false,
						   N, n);
}

/* x' = x * l: dl += colsum(dx' * x), dx (+)= dx' * l, with dx' = dxin. */
static void
ia3_input_backward(Network *net, void *state, HookAt at, real *dx, real beta,
				   const real *dxin, const real *x, int N)
{
	int			in = net->base->layers[at.l].linear[at.w].in;
	int			v = input_vector(net, at);

	if (v < 0)
		return;
	net->be->ops->coldot(net->be, network_dgrad(net, v), dxin, in, x, in, NULL, 1, N, in);
	net->be->ops->colscale(net->be, dx, in, dxin, in, network_dvalue(net, v), 0, 1,
						   beta != 0, N, in);
}

/* y = y' * l: dl += colsum(dout * y'), then dout becomes dout * l in place. */
static void
ia3_output_backward(Network *net, void *state, HookAt at, real *dout, int ldd, int N)
{
	Ia3Slot    *sl = &((Ia3Slot *) state)[at.s];
	int			n = net->base->layers[at.l].linear[at.w].out;
	int			v = output_vector(net, at);

	if (v < 0)
		return;
	net->be->ops->coldot(net->be, network_dgrad(net, v), dout, ldd, sl->pre[at.w], n, NULL, 1,
						 N, n);
	net->be->ops->colscale(net->be, dout, ldd, dout, ldd, network_dvalue(net, v), 0, 1, false,
						   N, n);
}

/*
 * Fold into row o: diag(l) W and l b (output), or W diag(l) (feed-forward;
 * no other module scales such a linear's rows, so the product is the one
 * PEFT's merge computes).
 */
static void
ia3_merge_row(const Network *net, void *state, int l, int w, int o, double *row,
			  double *scale, double *bias)
{
	int			v = net->lp[l].ia3[w];
	const real *vec;

	if (v < 0)
		return;
	vec = param_value(&net->params, v);
	if (!net->opts.ia3.feedforward[w])
	{
		*scale = vec[o];
		*bias *= *scale;
		return;
	}
	for (int i = 0; i < net->base->layers[l].linear[w].in; i++)
		row[i] *= vec[i];
}

const MethodModule method_ia3 = {
	.name = "ia3",
	.check = ia3_check,
	.enabled = ia3_enabled,
	.create = ia3_create,
	.destroy = ia3_destroy,
	.declare = ia3_declare,
	.initialise = ia3_initialise,
	.acts = ia3_acts,
	.linear_hooks = ia3_linear_hooks,
	.linear_input = ia3_input,
	.linear_output = ia3_output,
	.linear_input_backward = ia3_input_backward,
	.linear_output_backward = ia3_output_backward,
	.merge_row = ia3_merge_row,
};
