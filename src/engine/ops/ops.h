/*
 * ops.h - the CPU operations of a BERT-style encoder that run row by row or
 * element by element, each a forward/backward pair where training needs
 * one (llm.c style: outputs first, shapes in comments).  The CPU backend
 * (backend_cpu.c) and network.c call them; the CUDA kernels are checked
 * against them (test/gpu).  The linear forward is matmul.h's; attention,
 * embeddings and pooling run on packed batches (ops_varlen.h).  The padded
 * [B,T] versions of those, which the tests compare with, are in
 * test/unit/ops_reference.h, outside the library.
 *
 * Conventions:
 *  - All tensors are contiguous, row-major `real` arrays.
 *  - Linear weights use PyTorch's layout: weight[out_features, in_features].
 *  - Every *_backward ACCUMULATES (+=) into its gradient outputs, and any
 *    gradient output may be NULL when it is not needed (frozen weights).
 *  - Loops are split over the engine thread pool (threadpool.h); matrix
 *    products go through cblas_gemm (real.h).
 */
#ifndef PEFT_ENGINE_OPS_H
#define PEFT_ENGINE_OPS_H

#include <stddef.h>
#include <stdint.h>
#include "real.h"
#include "rng.h"

/* dinp[N,IC] += dout @ weight; dweight[OC,IC] += dout^T @ inp; dbias += colsum(dout) */
void		linear_backward(real *dinp, real *dweight, real *dbias,
							const real *dout, const real *inp,
							const real *weight, int N, int IC, int OC);

/* out[N,C] = (inp - mean) * rstd * gamma + beta; saves mean[N], rstd[N] */
void		layernorm_forward(real *out, real *mean, real *rstd,
							  const real *inp, const real *gamma,
							  const real *beta, int N, int C, real eps);
/* dinp[N,C] += ...; dgamma[C] += ...; dbeta[C] += ... */
void		layernorm_backward(real *dinp, real *dgamma, real *dbeta,
							   const real *dout, const real *inp,
							   const real *gamma, const real *mean,
							   const real *rstd, int N, int C);

/* out[n] = x * 0.5 * (1 + erf(x / sqrt(2)))  (exact GELU, as BERT's "gelu") */
void		gelu_forward(real *out, const real *inp, size_t n);
/* dinp[n] += dout * gelu'(inp) */
void		gelu_backward(real *dinp, const real *inp, const real *dout, size_t n);

/* out[n] = a[n] + b[n] (out may alias a or b) */
void		add_forward(real *out, const real *a, const real *b, size_t n);

/* keep[n] = 1 with probability 1-p else 0, drawn from rng in index order */
void		dropout_mask(uint8_t *keep, size_t n, real p, PeftRng *rng);
/* out[n] = inp * keep / (1-p)  (out may alias inp; p == 0 copies) */
void		dropout_forward(real *out, const real *inp, const uint8_t *keep,
							real p, size_t n);
/* dinp[n] += dout * keep / (1-p) */
void		dropout_backward(real *dinp, const real *dout, const uint8_t *keep,
							 real p, size_t n);

/* out[B,C] = inp / max(||inp||_2, 1e-12) (as torch.nn.functional.normalize); norm[B] saved */
void		l2norm_forward(real *out, real *norm, const real *inp, int B, int C);

/*
 * Mean cross-entropy over B rows of logits[B,K] with integer labels[B];
 * probs[B,K] receives the softmax.  Returns the mean loss.
 */
real		cross_entropy_forward(real *probs, const real *logits,
								  const int32_t *labels, int B, int K);
/* dlogits[B,K] += (probs - onehot(labels)) * dloss / B */
void		cross_entropy_backward(real *dlogits, const real *probs,
								   const int32_t *labels, real dloss,
								   int B, int K);

/* Mean squared error of pred[B] against target[B]; returns the mean loss. */
real		mse_forward(const real *pred, const real *target, int B);
/* dpred[B] += 2 (pred - target) * dloss / B */
void		mse_backward(real *dpred, const real *pred, const real *target,
						 real dloss, int B);

/* Sum of squares of g[n], accumulated in double for stability. */
double		sum_squares(const real *g, size_t n);
/* g[n] *= s */
void		scale_inplace(real *g, real s, size_t n);

/*
 * One AdamW step (decoupled weight decay, as torch.optim.AdamW):
 *   param -= lr * wd * param
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   param -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * t is the 1-based step number.
 */
void		adamw_update(real *param, const real *grad, real *m, real *v,
						 size_t n, real lr, real beta1, real beta2, real eps,
						 real weight_decay, int t);

#endif
