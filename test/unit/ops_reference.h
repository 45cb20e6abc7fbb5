/*
 * ops_reference.h - CPU reference operations on PADDED [B,T] batches
 * (mask[B,T] is 1 for a real token, 0 for padding), for the tests only.
 *
 * The engine itself runs packed batches (src/engine/ops/ops_varlen.h) and the
 * row-wise ops of src/engine/ops/ops.h; these are the simpler padded
 * formulation that the packed ops, the gradient checks and the CUDA
 * kernels are compared with.  Conventions are ops.h's: row-major `real`
 * arrays, *_backward ACCUMULATES (+=) into gradients that may be NULL,
 * loops split over the engine thread pool.  Built by the Makefile into the
 * unit and GPU tests (float) and the gradient checks (double), never into
 * peft_engine.so.
 */
#ifndef PEFT_TEST_OPS_REFERENCE_H
#define PEFT_TEST_OPS_REFERENCE_H

#include <stddef.h>
#include <stdint.h>
#include "real.h"

/* out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be NULL) */
void		linear_forward(real *out, const real *inp, const real *weight,
						   const real *bias, int N, int IC, int OC);

/*
 * Multi-head self-attention core, heads split along C (head size C/NH):
 *   probs[B,NH,T,T] = softmax(q k^T / sqrt(C/NH) over keys with mask 1)
 *   out[B,T,C]      = dropout(probs, keep, p) @ v
 * q, k, v are [B,T,C].  keep is [B,NH,T,T] or NULL (no dropout).  probs keeps
 * the pre-dropout softmax for the backward pass.  Padded keys get weight 0;
 * padded query rows are computed like any other (their output is ignored
 * by pooling), matching Hugging Face's additive mask.
 */
void		attention_forward(real *out, real *probs, const real *q,
							  const real *k, const real *v, const int32_t *mask,
							  const uint8_t *keep, real p,
							  int B, int T, int C, int NH);
/* dq, dk, dv [B,T,C] += gradients given dout[B,T,C]; scratch is [B,NH,T,T] */
void		attention_backward(real *dq, real *dk, real *dv, real *scratch,
							   const real *dout, const real *probs,
							   const real *q, const real *k, const real *v,
							   const int32_t *mask, const uint8_t *keep, real p,
							   int B, int T, int C, int NH);

/* out[B,T,C] = word[ids] + pos[t] + type[type_ids or 0] (no LayerNorm) */
void		embeddings_forward(real *out, const int32_t *ids,
							   const int32_t *type_ids, const real *word,
							   const real *pos, const real *type,
							   int B, int T, int C);

/* out[B,C] = mean over t with mask[b,t] == 1 of inp[b,t,:] */
void		mean_pool_forward(real *out, const real *inp, const int32_t *mask,
							  int B, int T, int C);
/* dinp[B,T,C] += dout[b,:] / count(b) where mask is 1 */
void		mean_pool_backward(real *dinp, const real *dout, const int32_t *mask,
							   int B, int T, int C);
/* out[B,C] = inp[b,0,:] */
void		cls_pool_forward(real *out, const real *inp, int B, int T, int C);
/* dinp[b,0,:] += dout[b,:] */
void		cls_pool_backward(real *dinp, const real *dout, int B, int T, int C);

/* dinp[B,C] += gradient through l2norm_forward (ops.h); norm[B] is what it saved */
void		l2norm_backward(real *dinp, const real *dout, const real *inp,
							const real *norm, int B, int C);

#endif
