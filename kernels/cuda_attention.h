/*
 * cuda_attention.h - C interface of the CUDA attention, GEMM and LoRA
 * kernels (kernels/attention.cu, gemm.cu, lora.cu).
 *
 * Every pointer argument named as a tensor is a DEVICE pointer (including
 * seq_start), every array is row-major float, and every function runs on
 * the default stream and returns 0 on success, else non-zero with a
 * message in msg[msglen]; nothing here calls exit().  Launch errors are
 * caught at once; errors of the kernel's execution surface at the next
 * synchronising call (e.g. cudaMemcpy), as usual for CUDA.
 * Layouts and the math match the CPU reference in src/engine/ops_varlen.h.
 */
#ifndef PEFT_CUDA_ATTENTION_H
#define PEFT_CUDA_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* ---- attention (attention.cu) ------------------------------------------- */

/*
 * out[N,C], probs (packed blocks, NH * sum_b len_b^2 floats) = multi-head
 * self-attention of each packed sequence over itself, exactly as
 * varlen_attention_forward: q, k, v are [N, ld] (ld >= C), heads split
 * along C, scale 1/sqrt(C/NH).  seq_start[B+1] lives on the device; N must
 * equal seq_start[B] (passed so the host need not read it back).
 * Attention dropout when keep (device uint8, probs layout, e.g. from
 * dropout_mask) is not NULL and p > 0: probs still receives the
 * pre-dropout softmax, out = dropped @ v with dropped = probs * keep /
 * (1-p) (scale 1/(1-p) in double rounded once, as ops_cpu.c), and dropped
 * (probs layout) receives those weights; dropped may be NULL, then they
 * are only used, not stored.  keep NULL or p <= 0: no dropout, dropped
 * untouched.
 */
int			peft_cuda_varlen_attention_forward(float *out, float *probs,
											   float *dropped,
											   const float *q, const float *k,
											   const float *v, int ld,
											   const uint8_t *keep, float p,
											   const int32_t *seq_start,
											   int B, int N, int C, int NH,
											   char *msg, int msglen);

/*
 * dq, dk, dv [N, ld] += attention gradients given dout[N,C] and the probs
 * of the forward pass (any gradient may be NULL), as
 * varlen_attention_backward; scratch has the probs layout and receives
 * d(scores).  keep and p must be the forward's: dv += dropped^T dout and
 * d(scores) goes back through the dropout, the dropped weights recomputed
 * from probs and keep.  N as the forward.
 */
int			peft_cuda_varlen_attention_backward(float *dq, float *dk, float *dv,
												float *scratch,
												const float *dout,
												const float *probs,
												const float *q, const float *k,
												const float *v, int ld,
												const uint8_t *keep, float p,
												const int32_t *seq_start,
												int B, int N, int C, int NH,
												char *msg, int msglen);

/* ---- GEMM (gemm.cu) ----------------------------------------------------- */

/* Whether an operand is used as stored or transposed (CblasNoTrans/CblasTrans). */
typedef enum PeftGemmOp
{
	PEFT_GEMM_N = 0,
	PEFT_GEMM_T = 1
} PeftGemmOp;

/* Arithmetic of an FP32 GEMM: exact FP32, or TF32 tensor cores (FP32 accumulate). */
typedef enum PeftGemmMath
{
	PEFT_GEMM_FP32 = 0,
	PEFT_GEMM_TF32 = 1
} PeftGemmMath;

/*
 * C[M,N] (row stride ldc) = alpha op(A) op(B) + beta C, row-major, with
 * op(A) [M,K] and op(B) [K,N], arguments as cblas_sgemm's (lda, ldb are the
 * row strides of A and B as stored).  beta = 0 never reads C.
 */
int			peft_cuda_gemm(PeftGemmOp transa, PeftGemmOp transb,
						   int M, int N, int K, float alpha,
						   const float *A, int lda, const float *B, int ldb,
						   float beta, float *C, int ldc, PeftGemmMath math,
						   char *msg, int msglen);

/*
 * The same product with A and B in BF16 (__nv_bfloat16, passed as void *),
 * C in FP32, accumulated in FP32 (cublasGemmEx).
 */
int			peft_cuda_gemm_bf16(PeftGemmOp transa, PeftGemmOp transb,
								int M, int N, int K, float alpha,
								const void *A, int lda, const void *B, int ldb,
								float beta, float *C, int ldc,
								char *msg, int msglen);

/* dst[n] (BF16, void *) = src[n] (FP32) rounded to nearest even. */
int			peft_cuda_float_to_bf16(void *dst, const float *src, size_t n,
									char *msg, int msglen);

/*
 * Destroy the process's cuBLAS handle (created lazily by the first GEMM);
 * the next GEMM creates a new one.  Safe to call when there is none.
 * Callers serialise GEMMs and this call.
 */
void		peft_cuda_gemm_shutdown(void);

/* ---- LoRA (lora.cu) ----------------------------------------------------- */

/*
 * out[N,OUT] (row stride ldo) += scaling * xa[N,r] @ Bw[OUT,r]^T: the LoRA
 * update added onto the frozen layer's output, xa = x @ A^T computed before.
 */
int			peft_cuda_lora_forward(float *out, int ldo, const float *xa,
								   const float *Bw, int N, int OUT, int r,
								   float scaling, PeftGemmMath math,
								   char *msg, int msglen);

/* dBw[OUT,r] += scaling * dout[N,OUT]^T (row stride ldd) @ xa[N,r]. */
int			peft_cuda_lora_backward_b(float *dBw, const float *dout, int ldd,
									  const float *xa, int N, int OUT, int r,
									  float scaling, PeftGemmMath math,
									  char *msg, int msglen);

/* dxa[N,r] = scaling * dout[N,OUT] (row stride ldd) @ Bw[OUT,r] (overwrites). */
int			peft_cuda_lora_backward_xa(float *dxa, const float *dout, int ldd,
									   const float *Bw, int N, int OUT, int r,
									   float scaling, PeftGemmMath math,
									   char *msg, int msglen);

#ifdef __cplusplus
}
#endif

#endif
