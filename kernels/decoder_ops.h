/*
 * decoder_ops.h - C interface of the CUDA kernels of a LLaMA-family
 * decoder (kernels/decoder_ops.cu): RMSNorm, rotary position embeddings,
 * SwiGLU and causal grouped-query attention over a key/value cache, the GPU
 * twins of src/engine/ops/ops_decoder.h (same layouts, same math, checked
 * against it by test/gpu/test_gpu_decoder_ops.c).
 *
 * Conventions as cuda_ops.h: every function returns 0 on success, else -1
 * after writing a message into msg[msglen] (msg may be NULL); tensors,
 * including the int32_t pos and slot arrays, are DEVICE pointers to
 * contiguous row-major arrays; stream is a cudaStream_t as void * (NULL:
 * the default stream); launches are asynchronous, so errors of a running
 * kernel surface at the next synchronising call; every *_backward
 * ACCUMULATES (+=) into its gradient outputs, which may be NULL; an empty
 * tensor is a no-op.
 */
#ifndef PEFT_CUDA_DECODER_OPS_H
#define PEFT_CUDA_DECODER_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* RoPE layouts, the values of ops_decoder.h's RopeLayout (ROPE_PAIRS, ROPE_HALVES). */
#define PEFT_CUDA_ROPE_PAIRS 0
#define PEFT_CUDA_ROPE_HALVES 1

/* out[N,C] = inp * rstd * weight, rstd[N] = 1 / sqrt(mean(inp^2) + eps) (rstd may be NULL) */
int			peft_cuda_rmsnorm_forward(float *out, float *rstd, const float *inp,
									  const float *weight, int N, int C, float eps,
									  void *stream, char *msg, int msglen);
/* dinp[N,C] += ..., dweight[C] += ... (rstd from the forward; either output may be NULL) */
int			peft_cuda_rmsnorm_backward(float *dinp, float *dweight, const float *dout,
									   const float *inp, const float *weight,
									   const float *rstd, int N, int C,
									   void *stream, char *msg, int msglen);

/*
 * Rotate x[N, H*D] in place, row r at position pos[r] (device), pairs as
 * layout (PEFT_CUDA_ROPE_*), pair i by pos * base^(-2i/D) with the angle
 * computed in float32 as transformers does (see ops_decoder.c).  D even.
 */
int			peft_cuda_rope_forward(float *x, const int32_t *pos, int N, int H, int D,
								   float base, int layout, void *stream,
								   char *msg, int msglen);
/* dx[N, H*D] in place: the inverse rotation. */
int			peft_cuda_rope_backward(float *dx, const int32_t *pos, int N, int H, int D,
									float base, int layout, void *stream,
									char *msg, int msglen);

/* out[n] = silu(gate[n]) * up[n] */
int			peft_cuda_swiglu_forward(float *out, const float *gate, const float *up,
									 size_t n, void *stream, char *msg, int msglen);
/* dgate[n] += dout * up * silu'(gate), dup[n] += dout * silu(gate) (either may be NULL) */
int			peft_cuda_swiglu_backward(float *dgate, float *dup, const float *dout,
									  const float *gate, const float *up, size_t n,
									  void *stream, char *msg, int msglen);

/*
 * Causal grouped-query attention over a key/value cache, as
 * gqa_attention_forward: kcache and vcache are [slots][ctx][Hkv*D]; row r
 * of q[N, Hq*D] (slot[r], pos[r] on the device) attends to positions
 * 0..pos[r] of its slot, query head h to key/value head h / (Hq/Hkv),
 * scores scaled by 1/sqrt(D); out[N, Hq*D].  probs, if not NULL, receives
 * the softmax weights in rows of ctx (N*Hq*ctx; positions past pos[r] are
 * not written).  slots bounds the cache: a row whose slot or position is
 * outside it gets zeros, so a bad index cannot read outside the cache.
 * One block per (row, head), keys taken a chunk at a time with an online
 * softmax, so any context length fits in shared memory.
 */
int			peft_cuda_gqa_attention_forward(float *out, float *probs, const float *q,
											const float *kcache, const float *vcache,
											const int32_t *slot, const int32_t *pos,
											int N, int Hq, int Hkv, int D, int ctx,
											int slots, void *stream,
											char *msg, int msglen);

#ifdef __cplusplus
}
#endif

#endif
