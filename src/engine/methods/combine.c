/*
 * combine.c - a weighted combination of LoRA adapters into a new one, as
 * Hugging Face PEFT's add_weighted_adapter ("linear" and "cat").  The new
 * adapter has r = lora_alpha = its rank, so its scaling is 1 and each
 * source's scaling s_i is carried into the factors:
 *   linear (equal ranks): A = sum_i sign(w_i s_i) sqrt(|w_i s_i|) A_i,
 *                         B = sum_i sqrt(|w_i s_i|) B_i
 *   cat:                  A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] (rows),
 *                         B = [B_1, B_2, ...] (columns)
 * so that cat gives exactly sum_i w_i s_i B_i A_i and linear the product
 * of the weighted sums.  Sources without a module contribute nothing
 * there (in cat, the next source's block moves up, as PEFT does).
 */
#include "combine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Check that every source is a plain LoRA adapter over base; the new options into o. */
static PeftCode
combined_options(const BertModel *base, Network *const *src, int n, bool cat,
				 NetworkOptions *o, PeftError *err)
{
	int			rank = 0;
	bool		same_head = true;

	if (n < 1 || n > 64)
		return peft_fail(err, PEFT_ERR_INVALID, "combine between 1 and 64 adapters, not %d", n);
	memset(o, 0, sizeof(*o));
	for (int i = 0; i < n; i++)
	{
		const NetworkOptions *s = &src[i]->opts;
		bool		lora = false;

		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			lora |= s->lora.targets[w];
		if (!lora || s->dora || s->bitfit || s->bottleneck.reduction > 0 || src[i]->base != base)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "adapter %d is not a plain LoRA adapter of this model: only LoRA "
							 "adapters can be combined", i + 1);
		if (!cat && i > 0 && s->lora.r != src[0]->opts.lora.r)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "a linear combination needs equal ranks (%d and %d): use \"cat\"",
							 src[0]->opts.lora.r, s->lora.r);
		rank += s->lora.r;
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			o->lora.targets[w] |= s->lora.targets[w];
		same_head &= s->num_labels == src[0]->opts.num_labels && s->task == src[0]->opts.task;
	}
	o->lora.r = cat ? rank : src[0]->opts.lora.r;
	o->lora.alpha = o->lora.r;
	o->lora.dropout = src[0]->opts.lora.dropout;
	o->task = src[0]->opts.task;
	o->num_labels = same_head ? src[0]->opts.num_labels : 0;
	o->hidden_dropout = src[0]->opts.hidden_dropout;
	o->attention_dropout = src[0]->opts.attention_dropout;
	o->seed = src[0]->opts.seed;
	return PEFT_OK;
}

/* The combination of n LoRA networks with factors w into a new network over base. */
PeftCode
combine_lora(const BertModel *base, Network *const *src, int n, const double *w, bool cat,
			 Network **out, PeftError *err)
{
	NetworkOptions o;
	Network    *net;
	int			L = base->cfg.num_layers;
	PeftCode	rc;

	*out = NULL;
	for (int i = 0; i < n; i++)
		if (!isfinite(w[i]))
			return peft_fail(err, PEFT_ERR_INVALID, "weight %d is not a finite number", i + 1);
	if ((rc = combined_options(base, src, n, cat, &o, err)) != PEFT_OK ||
		(rc = network_create(base, &o, &net, err)) != PEFT_OK)
		return rc;
	for (int i = 0; i < n; i++)
		if ((rc = network_params_fetch(src[i], err)) != PEFT_OK)
		{
			network_free(net);
			return rc;
		}
	memset(net->params.values, 0, net->params.total * sizeof(real));
	for (int l = 0; l < L; l++)
		for (int t = 0; t < BERT_NUM_LINEAR; t++)
		{
			const BertLinearWeights *lin = &base->layers[l].linear[t];
			int			r = o.lora.r;
			int			off = 0;
			real	   *A;
			real	   *B;

			if (net->lp[l].lora[t][0] < 0)
				continue;
			A = param_value(&net->params, net->lp[l].lora[t][0]);	/* [r, in] */
			B = param_value(&net->params, net->lp[l].lora[t][1]);	/* [out, r] */
			for (int i = 0; i < n; i++)
			{
				const Network *s = src[i];
				int			ri = s->opts.lora.r;
				const real *Ai;
				const real *Bi;
				double		ws = w[i] * s->scaling;

				if (s->lp[l].lora[t][0] < 0)
					continue;
				Ai = param_value(&s->params, s->lp[l].lora[t][0]);
				Bi = param_value(&s->params, s->lp[l].lora[t][1]);
				if (cat)
				{
					for (int k = 0; k < ri; k++)
						for (int c = 0; c < lin->in; c++)
							A[(size_t) (off + k) * lin->in + c] = (real) (ws * Ai[(size_t) k * lin->in + c]);
					for (int row = 0; row < lin->out; row++)
						for (int k = 0; k < ri; k++)
							B[(size_t) row * r + off + k] = Bi[(size_t) row * ri + k];
					off += ri;
				}
				else
				{
					double		root = sqrt(fabs(ws));
					double		sign = ws >= 0 ? 1 : -1;

					for (size_t j = 0; j < (size_t) ri * lin->in; j++)
						A[j] += (real) (sign * root * Ai[j]);
					for (size_t j = 0; j < (size_t) lin->out * ri; j++)
						B[j] += (real) (root * Bi[j]);
				}
			}
		}
	/* the head: the weighted sum of the sources' heads (same labels) */
	if (net->head_weight >= 0)
		for (int i = 0; i < n; i++)
		{
			const Network *s = src[i];

			for (size_t j = 0; j < net->params.items[net->head_weight].count; j++)
				param_value(&net->params, net->head_weight)[j] +=
					(real) (w[i] * param_value(&s->params, s->head_weight)[j]);
			for (size_t j = 0; j < net->params.items[net->head_bias].count; j++)
				param_value(&net->params, net->head_bias)[j] +=
					(real) (w[i] * param_value(&s->params, s->head_bias)[j]);
		}
	network_params_changed(net);
	*out = net;
	return PEFT_OK;
}
