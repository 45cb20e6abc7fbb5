/*
 * causal_lm.h - a LLaMA-family decoder with an adapter, as a network that
 * trains: the forward pass over packed sequences (no padding, no cache
 * kept between calls) keeping what backward needs, the causal-LM loss on
 * the completion tokens only, and the backward pass into the adapter's
 * gradients through the frozen (usually quantized) weights.
 *
 * A batch is B sequences of token ids, each ending with its completion:
 * the first prompt_len[b] tokens of sequence b are its prompt (no loss is
 * computed on predicting them), and every later token is a target
 * predicted from the position before it.  The loss is the sum of the
 * targets' cross-entropies (the caller divides by the number of targets).
 */
#ifndef PEFT_ENGINE_CAUSAL_LM_H
#define PEFT_ENGINE_CAUSAL_LM_H

#include <stdbool.h>
#include <stdint.h>
#include "decoder_adapter.h"

typedef struct LmBatch
{
	int			B;
	const int32_t *ids;			/* the sequences one after another */
	const int32_t *start;		/* [B + 1] sequence b is ids[start[b] .. start[b+1]) */
	const int32_t *prompt_len;	/* [B] tokens of each sequence without loss */
} LmBatch;

typedef struct CausalLM CausalLM;

/* A network over base and ad (ad trains; the base stays frozen). */
PeftCode	causal_lm_create(const LlamaModel *base, DecoderAdapter *ad, CausalLM **out,
							 PeftError *err);
void		causal_lm_free(CausalLM *lm);

/*
 * Hold buffers for batches of up to rows tokens in up to seqs sequences of
 * up to ctx tokens each (train: every layer keeps its activations).
 */
PeftCode	causal_lm_reserve(CausalLM *lm, int rows, int seqs, int ctx, bool train,
							  PeftError *err);
/*
 * Bytes of the activation buffers for batches of up to rows real tokens
 * in seqs sequences of up to ctx (the adapter's virtual tokens added here).
 */
size_t		causal_lm_activation_bytes(const LlamaModel *base, const DecoderAdapter *ad,
									   int rows, int seqs, int ctx, bool train);
/* Free the activation buffers (they grow again on the next batch). */
void		causal_lm_release(CausalLM *lm);

/*
 * The loss of a batch: *loss_sum = the sum of its targets' cross-entropies
 * (natural log), *targets their count.  With grad_scale > 0 it also adds
 * grad_scale times the gradient of loss_sum to the adapter's gradients
 * (pass 1 / the targets of the whole optimizer step).
 */
PeftCode	causal_lm_loss(CausalLM *lm, const LmBatch *b, double grad_scale, double *loss_sum,
						   int64_t *targets, PeftError *err);

/*
 * The keys (rotated) and values each layer of base caches for the n tokens
 * ids at positions 0 .. n-1: k and v [layers, n, KV], in the model's layout.
 */
PeftCode	causal_lm_cache_of(const LlamaModel *base, const int32_t *ids, int n, real *k, real *v,
							   PeftError *err);

/* Targets of a batch (tokens after each prompt). */
int64_t		lm_batch_targets(const LmBatch *b);

#endif
