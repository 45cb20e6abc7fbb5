/*
 * decoder_virtual.c - prompt and prefix tuning over a LLaMA-family decoder
 * (decoder_adapter.h): the tensor prompt_embeddings, its initialisation,
 * and what the networks (causal_lm.c for training, decoder.c for
 * generation) ask of it.
 *
 * Both put V virtual positions before every sequence: the real tokens'
 * positions (and rotations) start at V, as PEFT's do.  Prompt tuning's
 * virtual tokens run through every layer as tokens; prefix tuning's are
 * keys and values written straight into each layer's cache, never
 * rotated (PEFT passes them as past_key_values).  The prefix tensor stays
 * in Hugging Face's layout; a GGUF model's keys are permuted within each
 * head, so its prefix keys are permuted as they enter the cache.
 */
#include "decoder_adapter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "causal_lm.h"
#include "quant.h"

int
decoder_adapter_virtual_tokens(const DecoderAdapter *ad)
{
	if (ad == NULL || (ad->o.method != DAD_PROMPT && ad->o.method != DAD_PREFIX))
		return 0;
	return ad->o.virtual_tokens;
}

/* Width of a prefix row's key (or value) block: the key/value heads'. */
static int
kv_dim(const LlamaConfig *c)
{
	return c->num_kv_heads * c->head_dim;
}

PeftCode
decoder_virtual_declare(DecoderAdapter *ad, PeftError *err)
{
	const LlamaConfig *c = &ad->base->cfg;
	int64_t		width;

	if (decoder_adapter_virtual_tokens(ad) == 0)
		return PEFT_OK;
	width = ad->o.method == DAD_PROMPT ? c->hidden_size : (int64_t) c->num_layers * 2 * kv_dim(c);
	ad->virt = paramset_add(&ad->params, "prompt_embeddings", 2, ad->o.virtual_tokens, width, err);
	return ad->virt < 0 ? err->code : PEFT_OK;
}

/* Model-layout index of HF key column h within a KV block (values are not permuted). */
static int
key_index(const LlamaConfig *c, int g)
{
	return c->rope_layout == ROPE_PAIRS ? (int) llama_hf_row(g, c->head_dim) : g;
}

/* Token id's input embedding into x[C]; false without the memory for it. */
static bool
embedding_row(const LlamaModel *m, int id, real *x)
{
	int			C = m->cfg.hidden_size;
	float	   *row = malloc(sizeof(float) * C);

	if (row == NULL)
		return false;
	quant_dequantize(m->embed.type, (const uint8_t *) m->embed.data + (size_t) id * quant_row_bytes(m->embed.type, C),
					 C, row);
	for (int i = 0; i < C; i++)
		x[i] = row[i];
	free(row);
	return true;
}

/*
 * Prefix tuning starts from what the model itself caches for V random
 * vocabulary tokens: every layer's keys and values at positions 0 .. V-1,
 * exactly the state a real V-token text before the input leaves (Li and
 * Liang's initialisation from real words' activations).  PEFT's N(0, 1)
 * is far from any LLaMA layer's keys and values: SmolLM2's loss starts
 * near 19 from projections of bare embeddings, near 2 from this.
 */
static PeftCode
prefix_from_tokens(DecoderAdapter *ad, const int32_t *ids, PeftError *err)
{
	const LlamaConfig *c = &ad->base->cfg;
	int			V = ad->o.virtual_tokens;
	int			KV = kv_dim(c);
	size_t		width = (size_t) c->num_layers * 2 * KV;
	size_t		n = (size_t) c->num_layers * V * KV;
	real	   *k = malloc(sizeof(real) * n);
	real	   *v = malloc(sizeof(real) * n);
	real	   *P = param_value(&ad->params, ad->virt);
	PeftCode	rc;

	if (k == NULL || v == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory initialising the prefixes");
	else if ((rc = causal_lm_cache_of(ad->base, ids, V, k, v, err)) == PEFT_OK)
		for (int t = 0; t < V; t++)
			for (int l = 0; l < c->num_layers; l++)
			{
				real	   *key = P + t * width + (size_t) l * 2 * KV;
				const real *kl = k + ((size_t) l * V + t) * KV;

				for (int g = 0; g < KV; g++)
					key[key_index(c, g)] = kl[g];
				memcpy(key + KV, v + ((size_t) l * V + t) * KV, sizeof(real) * KV);
			}
	free(k);
	free(v);
	return rc;
}

PeftCode
decoder_virtual_initialise(DecoderAdapter *ad, PeftRng *init, PeftError *err)
{
	const LlamaModel *m = ad->base;
	int			C = m->cfg.hidden_size;
	int			V = decoder_adapter_virtual_tokens(ad);
	int32_t    *ids;
	PeftCode	rc = PEFT_OK;

	if (V == 0)
		return PEFT_OK;
	if ((ids = malloc(sizeof(int32_t) * V)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory initialising the virtual tokens");
	/* as PEFT's SAMPLE_VOCAB: random vocabulary tokens */
	for (int v = 0; v < V; v++)
		ids[v] = (int32_t) peft_rng_below(init, (uint64_t) m->cfg.vocab_size);
	if (ad->o.method == DAD_PREFIX)
		rc = prefix_from_tokens(ad, ids, err);
	else
		for (int v = 0; v < V && rc == PEFT_OK; v++)
			if (!embedding_row(m, ids[v], param_value(&ad->params, ad->virt) + (size_t) v * C))
				rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory initialising the virtual tokens");
	free(ids);
	return rc;
}

const real *
decoder_adapter_prompt_row(const DecoderAdapter *ad, int v)
{
	return param_value(&ad->params, ad->virt) + (size_t) v * ad->base->cfg.hidden_size;
}

void
decoder_adapter_prompt_backward(DecoderAdapter *ad, int v, const real *dx)
{
	int			C = ad->base->cfg.hidden_size;
	real	   *g = param_grad(&ad->params, ad->virt) + (size_t) v * C;

	for (int i = 0; i < C; i++)
		g[i] += dx[i];
}

void
decoder_adapter_prefix_kv(const DecoderAdapter *ad, int l, real *k, real *v)
{
	const LlamaConfig *c = &ad->base->cfg;
	int			KV = kv_dim(c);
	size_t		width = (size_t) c->num_layers * 2 * KV;
	const real *P = param_value(&ad->params, ad->virt);

	for (int t = 0; t < ad->o.virtual_tokens; t++)
	{
		const real *key = P + t * width + (size_t) l * 2 * KV;

		for (int g = 0; g < KV; g++)
			k[(size_t) t * KV + g] = key[key_index(c, g)];
		memcpy(v + (size_t) t * KV, key + KV, sizeof(real) * KV);
	}
}

void
decoder_adapter_prefix_backward(DecoderAdapter *ad, int l, const real *dk, const real *dv)
{
	const LlamaConfig *c = &ad->base->cfg;
	int			KV = kv_dim(c);
	size_t		width = (size_t) c->num_layers * 2 * KV;
	real	   *G = param_grad(&ad->params, ad->virt);

	for (int t = 0; t < ad->o.virtual_tokens; t++)
	{
		real	   *key = G + t * width + (size_t) l * 2 * KV;

		for (int g = 0; g < KV; g++)
		{
			key[key_index(c, g)] += dk[(size_t) t * KV + g];
			key[KV + g] += dv[(size_t) t * KV + g];
		}
	}
}
