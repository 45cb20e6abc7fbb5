/*
 * method_bitfit.c - BitFit as a method module (method.h): every bias of
 * the encoder trains (the linears', the LayerNorms', the embeddings'
 * LayerNorm's), starting from the model's.  The blocks read a trained bias
 * wherever linear_bias or norm_bias names one, and add its gradient there.
 * Named as PEFT's LoRA bias "all" saves them: a LoRA-wrapped linear's bias
 * is its base_layer's.
 */
#include "network_internal.h"

#include <stdio.h>
#include <string.h>

/* Whether the options ask for BitFit. */
static bool
bitfit_enabled(const NetworkOptions *o)
{
	return o->bitfit;
}

/* The embeddings' LayerNorm bias; each layer's linear biases (q, k, v adjacent) and LayerNorm biases. */
static bool
bitfit_declare(Network *net, void *state, MethodSite site, int l, int w, PeftError *err)
{
	LayerParams *lp = l >= 0 ? &net->lp[l] : NULL;
	int			C = net->base->cfg.hidden_size;
	char		path[128];
	bool		ok = true;

	switch (site)
	{
		case SITE_EMBEDDINGS:
			return (net->mp.emb_ln_beta = network_declare(net, "embeddings.LayerNorm", "bias", 1,
														  C, 0, err)) >= 0;
		case SITE_LINEAR_BIASES:
			for (w = 0; w < BERT_NUM_LINEAR; w++)
			{
				bert_linear_path(path, sizeof(path), l, w);
				ok &= (lp->bias[w] = network_declare(net, path,
													 net->opts.lora.targets[w] ? "base_layer.bias" : "bias",
													 1, net->base->layers[l].linear[w].out, 0,
													 err)) >= 0;
			}
			return ok;
		case SITE_SUBLAYERS:
			snprintf(path, sizeof(path), "encoder.layer.%d.attention.output.LayerNorm", l);
			ok &= (lp->ln_beta[0] = network_declare(net, path, "bias", 1, C, 0, err)) >= 0;
			snprintf(path, sizeof(path), "encoder.layer.%d.output.LayerNorm", l);
			ok &= (lp->ln_beta[1] = network_declare(net, path, "bias", 1, C, 0, err)) >= 0;
			return ok;
		default:
			return true;
	}
}

/* Copy n model values into parameter i. */
static void
copy_into(Network *net, int i, const real *src, size_t n)
{
	memcpy(param_value(&net->params, i), src, n * sizeof(real));
}

/* Every bias starts as the model's. */
static void
bitfit_initialise(Network *net, void *state, PeftRng *rng)
{
	int			C = net->base->cfg.hidden_size;

	for (int l = 0; l < net->base->cfg.num_layers; l++)
	{
		const BertLayer *layer = &net->base->layers[l];

		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			copy_into(net, net->lp[l].bias[w], layer->linear[w].bias, layer->linear[w].out);
		copy_into(net, net->lp[l].ln_beta[0], layer->ln_attn_beta, C);
		copy_into(net, net->lp[l].ln_beta[1], layer->ln_out_beta, C);
	}
	copy_into(net, net->mp.emb_ln_beta, net->base->ln_emb_beta, C);
}

/* The trained bias of linear w. */
static int
bitfit_linear_bias(const Network *net, void *state, int l, int w)
{
	return net->lp[l].bias[w];
}

/* The trained bias of a LayerNorm (l = -1: the embeddings'). */
static int
bitfit_norm_bias(const Network *net, void *state, int l, int which)
{
	return l < 0 ? net->mp.emb_ln_beta : net->lp[l].ln_beta[which];
}

const MethodModule method_bitfit = {
	.name = "bitfit",
	.enabled = bitfit_enabled,
	.declare = bitfit_declare,
	.initialise = bitfit_initialise,
	.linear_bias = bitfit_linear_bias,
	.norm_bias = bitfit_norm_bias,
};
