/*
 * decoder_bottleneck.c - bottleneck adapters over a LLaMA-family decoder
 * (decoder_adapter.h): h + up(GELU(down(h))) on the output of the
 * feed-forward's down product (Pfeiffer) and also of attention's o product
 * (Houlsby), before each residual, as the encoder's adapters sit
 * (method_bottleneck.c).  down [m, C] and up [C, m] carry biases; up starts
 * at zero, so a new adapter computes the base model exactly.
 */
#include "decoder_adapter.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "matmul.h"
#include "ops.h"

/* The tensors' module path of place (0 after attention, 1 after the feed-forward) in layer l. */
static void
bottleneck_path(char *buf, size_t len, int l, int place)
{
	snprintf(buf, len, "base_model.model.model.layers.%d.%s.adapter", l, place == 0 ? "self_attn" : "mlp");
}

PeftCode
decoder_bottleneck_declare(DecoderAdapter *ad, PeftError *err)
{
	static const char *const names[4] = {"down.weight", "down.bias", "up.weight", "up.bias"};
	int			C = ad->base->cfg.hidden_size;
	int			m;

	if (ad->o.method != DAD_BOTTLENECK)
		return PEFT_OK;
	m = ad->bneck_width = C / ad->o.reduction;
	for (int l = 0; l < ad->base->cfg.num_layers; l++)
		for (int place = ad->o.after_attention ? 0 : 1; place < 2; place++)
			for (int t = 0; t < 4; t++)
			{
				char		path[128];
				char		name[PARAM_NAME_LEN];
				int64_t		rows = t < 2 ? m : C;
				int64_t		cols = t == 0 ? C : t == 2 ? m : 0;

				bottleneck_path(path, sizeof(path), l, place);
				snprintf(name, sizeof(name), "%s.%s", path, names[t]);
				if ((ad->bneck[l][place][t] = paramset_add(&ad->params, name, cols ? 2 : 1, rows, cols, err)) < 0)
					return err->code;
			}
	return PEFT_OK;
}

/* down as torch.nn.Linear starts (weight and bias U(+-1/sqrt(C))); up stays zero. */
void
decoder_bottleneck_initialise(DecoderAdapter *ad, PeftRng *init)
{
	double		bound = 1.0 / sqrt((double) ad->base->cfg.hidden_size);

	if (ad->o.method != DAD_BOTTLENECK)
		return;
	for (int l = 0; l < ad->base->cfg.num_layers; l++)
		for (int place = 0; place < 2; place++)
			for (int t = 0; t < 2; t++)
			{
				int			i = ad->bneck[l][place][t];

				for (size_t j = 0; i >= 0 && j < ad->params.items[i].count; j++)
					param_value(&ad->params, i)[j] = (real) ((2 * peft_rng_uniform(init) - 1) * bound);
			}
}

bool
decoder_adapter_has_bottleneck(const DecoderAdapter *ad, int l, int place)
{
	return ad != NULL && ad->o.method == DAD_BOTTLENECK && ad->bneck[l][place][0] >= 0;
}

void
decoder_adapter_bottleneck(DecoderAdapter *ad, int l, int place, real *h, int N, real *in_save,
						   real *down, real *act)
{
	const ParamSet *ps = &ad->params;
	const int  *t = ad->bneck[l][place];
	int			C = ad->base->cfg.hidden_size;
	int			m = ad->bneck_width;

	if (in_save)
		memcpy(in_save, h, sizeof(real) * N * C);
	matmul_linear(down, m, h, C, param_value(ps, t[0]), param_value(ps, t[1]), N, C, m);
	gelu_forward(act, down, (size_t) N * m);
	/* h += act up^T + up bias */
	matmul(CblasNoTrans, CblasTrans, N, C, m, 1, act, m, param_value(ps, t[2]), m, 1, h, C);
	for (int n = 0; n < N; n++)
		for (int j = 0; j < C; j++)
			h[(size_t) n * C + j] += param_value(ps, t[3])[j];
}

/* grad[j] += sum over N rows of x[n, j] */
static void
add_column_sums(real *grad, const real *x, int N, int width)
{
	for (int n = 0; n < N; n++)
		for (int j = 0; j < width; j++)
			grad[j] += x[(size_t) n * width + j];
}

void
decoder_adapter_bottleneck_backward(DecoderAdapter *ad, int l, int place, real *dh, int N,
									const real *in_save, const real *down_save, real *scratch)
{
	ParamSet   *ps = &ad->params;
	const int  *t = ad->bneck[l][place];
	int			C = ad->base->cfg.hidden_size;
	int			m = ad->bneck_width;
	real	   *act = scratch;
	real	   *dact = scratch + (size_t) N * m;

	/* out = h + act up^T + b_up: d up += dh^T act, d b_up += sum dh, dact = dh up */
	gelu_forward(act, down_save, (size_t) N * m);
	matmul(CblasTrans, CblasNoTrans, C, m, N, 1, dh, C, act, m, 1, param_grad(ps, t[2]), m);
	add_column_sums(param_grad(ps, t[3]), dh, N, C);
	matmul(CblasNoTrans, CblasNoTrans, N, m, C, 1, dh, C, param_value(ps, t[2]), m, 0, dact, m);
	/* act = GELU(down): ddown (in act's buffer) = dact GELU'(down) */
	memset(act, 0, sizeof(real) * N * m);
	gelu_backward(act, down_save, dact, (size_t) N * m);
	/* down = h down^T + b_down: d down += ddown^T h, d b_down += sum ddown, dh += ddown down */
	matmul(CblasTrans, CblasNoTrans, m, C, N, 1, act, m, in_save, C, 1, param_grad(ps, t[0]), C);
	add_column_sums(param_grad(ps, t[1]), act, N, m);
	matmul(CblasNoTrans, CblasNoTrans, N, C, m, 1, act, m, param_value(ps, t[0]), C, 1, dh, C);
}
