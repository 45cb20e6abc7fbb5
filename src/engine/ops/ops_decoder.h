/*
 * ops_decoder.h - the CPU operations of a LLaMA-family decoder that are not
 * the encoder's: RMSNorm, rotary position embeddings, SwiGLU and causal
 * grouped-query attention over a key/value cache.  Each is a
 * forward/backward pair (backward trains adapters on decoders, next issue);
 * the CUDA kernels (kernels/decoder_ops.cu) are checked against these.
 *
 * Conventions as ops.h: contiguous row-major arrays; rows are the tokens of
 * a packed batch (no padding); every *_backward ACCUMULATES (+=) into its
 * gradient outputs, which may be NULL when not needed.
 */
#ifndef PEFT_ENGINE_OPS_DECODER_H
#define PEFT_ENGINE_OPS_DECODER_H

#include <stddef.h>
#include <stdint.h>
#include "real.h"

/* out[N,C] = inp * rstd * weight, rstd[N] = 1 / sqrt(mean(inp^2) + eps) (saved for backward; may be NULL) */
void		rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight,
							int N, int C, real eps);
/* dinp[N,C] += ..., dweight[C] += ... (rstd from the forward) */
void		rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
							 const real *weight, const real *rstd, int N, int C);

/*
 * Which pairs of a head's D values rotate together.  ROPE_PAIRS: (2i, 2i+1),
 * llama.cpp's "norm" mode, which GGUF's permuted q/k weights expect.
 * ROPE_HALVES: (i, i + D/2), Hugging Face's rotate_half for LLaMA
 * safetensors.  Pair i turns by pos * base^(-2i/D).
 */
typedef enum RopeLayout
{
	ROPE_PAIRS = 0,
	ROPE_HALVES = 1
} RopeLayout;

/* Rotate x[N, H*D] in place, row r at position pos[r]. */
void		rope_forward(real *x, const int32_t *pos, int N, int H, int D, real base,
						 RopeLayout layout);
/* dx[N, H*D] in place: the gradient through the rotation (the inverse rotation). */
void		rope_backward(real *dx, const int32_t *pos, int N, int H, int D, real base,
						  RopeLayout layout);

/* out[n] = silu(gate[n]) * up[n] */
void		swiglu_forward(real *out, const real *gate, const real *up, size_t n);
/* dgate[n] += ..., dup[n] += ... */
void		swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate,
							const real *up, size_t n);

/*
 * Causal grouped-query attention over a key/value cache.
 *
 * The cache holds, per sequence slot, keys and values by position:
 * kcache[slot][p][Hkv*D], vcache likewise, ctx positions per slot.  Row r of
 * q[N, Hq*D] (a new token of slot[r] at position pos[r], whose own key and
 * value are already in the cache) attends to positions 0..pos[r] of its
 * slot.  Query head h uses key/value head h / (Hq / Hkv).  Scores are scaled
 * by 1/sqrt(D).  out[N, Hq*D].  probs, if not NULL, receives the softmax
 * weights for backward: probs[r][h][0..pos[r]] in rows of ctx (N*Hq*ctx).
 */
void		gqa_attention_forward(real *out, real *probs, const real *q,
								  const real *kcache, const real *vcache,
								  const int32_t *slot, const int32_t *pos,
								  int N, int Hq, int Hkv, int D, int ctx);
/* dq[N, Hq*D] += ..., dkcache/dvcache (cache-shaped) += ...; probs from the forward */
void		gqa_attention_backward(real *dq, real *dkcache, real *dvcache, const real *dout,
								   const real *q, const real *kcache, const real *vcache,
								   const real *probs, const int32_t *slot, const int32_t *pos,
								   int N, int Hq, int Hkv, int D, int ctx);

#endif
