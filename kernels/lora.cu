/*
 * lora.cu - the LoRA update of a frozen linear layer and its backward
 * pieces, as thin calls of the row-major GEMM wrapper (gemm.cu).
 *
 * For a layer y = x W^T + b with adapters A[r,IN], B[OUT,r]:
 *   xa = x A^T            (an ordinary linear product, done by the caller)
 *   y += scaling * xa B^T  (peft_cuda_lora_forward, beta = 1: fused into y)
 * and backward, given dy:
 *   dB += scaling * dy^T xa,  dxa = scaling * dy B
 * after which dA += dxa^T x and dx += dxa A are ordinary products again.
 */
#include "cuda_attention.h"

/* out[N,OUT] (row stride ldo) += scaling * xa[N,r] @ Bw[OUT,r]^T. */
extern "C" int
peft_cuda_lora_forward(float *out, int ldo, const float *xa, const float *Bw,
					   int N, int OUT, int r, float scaling, PeftGemmMath math,
					   char *msg, int msglen)
{
	return peft_cuda_gemm(PEFT_GEMM_N, PEFT_GEMM_T, N, OUT, r, scaling,
						  xa, r, Bw, r, 1.0f, out, ldo, math, msg, msglen);
}

/* dBw[OUT,r] += scaling * dout[N,OUT]^T (row stride ldd) @ xa[N,r]. */
extern "C" int
peft_cuda_lora_backward_b(float *dBw, const float *dout, int ldd,
						  const float *xa, int N, int OUT, int r,
						  float scaling, PeftGemmMath math,
						  char *msg, int msglen)
{
	return peft_cuda_gemm(PEFT_GEMM_T, PEFT_GEMM_N, OUT, r, N, scaling,
						  dout, ldd, xa, r, 1.0f, dBw, r, math, msg, msglen);
}

/* dxa[N,r] = scaling * dout[N,OUT] (row stride ldd) @ Bw[OUT,r]; overwrites dxa. */
extern "C" int
peft_cuda_lora_backward_xa(float *dxa, const float *dout, int ldd,
						   const float *Bw, int N, int OUT, int r,
						   float scaling, PeftGemmMath math,
						   char *msg, int msglen)
{
	return peft_cuda_gemm(PEFT_GEMM_N, PEFT_GEMM_N, N, r, OUT, scaling,
						  dout, ldd, Bw, r, 0.0f, dxa, r, math, msg, msglen);
}
