/*
 * gemm.cu - row-major GEMM over cuBLAS (FP32, TF32 tensor cores, or BF16
 * inputs with FP32 accumulation), with one lazily created cuBLAS handle for
 * the process.
 *
 * cuBLAS is column-major.  A row-major [M,N] matrix with row stride ld is
 * the column-major [N,M] matrix with leading dimension ld, i.e. its
 * transpose, so row-major C = op(A) op(B) is computed as column-major
 * C^T = op(B)^T op(A)^T: swap the operands and M with N, keep the flags.
 */
#include "cuda_attention.h"

#include <cstdio>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

/*
 * The process's handle.  Callers serialise their use of it (the engine's
 * CUDA backend holds its lock around every product), so one handle is
 * enough, and idle release can destroy it from whichever thread notices
 * the idleness.  It is bound to the device current when it was created.
 */
static cublasHandle_t process_handle = NULL;

/* The process's cuBLAS handle, created on first use; NULL with msg on failure. */
static cublasHandle_t
get_handle(char *msg, int msglen)
{
	cublasStatus_t status;

	if (process_handle != NULL)
		return process_handle;
	status = cublasCreate(&process_handle);
	if (status != CUBLAS_STATUS_SUCCESS)
	{
		process_handle = NULL;
		snprintf(msg, msglen, "cublasCreate failed: %s",
				 cublasGetStatusString(status));
		return NULL;
	}
	return process_handle;
}

/* Destroy the process's cuBLAS handle, if any. */
extern "C" void
peft_cuda_gemm_shutdown(void)
{
	if (process_handle != NULL)
	{
		cublasDestroy(process_handle);
		process_handle = NULL;
	}
}

/* Column-major operation of a row-major operand flag. */
static cublasOperation_t
to_cublas(PeftGemmOp op)
{
	return op == PEFT_GEMM_T ? CUBLAS_OP_T : CUBLAS_OP_N;
}

/*
 * Check the row-major shapes and strides as cblas would (stored A is
 * [M,K] or [K,M], B [K,N] or [N,K], C [M,N]); 0 when valid.
 */
static int
check_gemm(const char *what, PeftGemmOp transa, PeftGemmOp transb,
		   int M, int N, int K, int lda, int ldb, int ldc,
		   char *msg, int msglen)
{
	int			a_cols = transa == PEFT_GEMM_T ? M : K;
	int			b_cols = transb == PEFT_GEMM_T ? K : N;

	if (M < 0 || N < 0 || K < 0 ||
		lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) ||
		ldc < (N > 1 ? N : 1))
	{
		snprintf(msg, msglen,
				 "%s: bad shapes M=%d N=%d K=%d lda=%d ldb=%d ldc=%d",
				 what, M, N, K, lda, ldb, ldc);
		return -1;
	}
	return 0;
}

/* Message for a failed cuBLAS call; returns -1. */
static int
cublas_failed(const char *what, cublasStatus_t status, char *msg, int msglen)
{
	snprintf(msg, msglen, "%s failed: %s", what, cublasGetStatusString(status));
	return -1;
}

/* C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, row-major FP32 (or TF32 math). */
extern "C" int
peft_cuda_gemm(PeftGemmOp transa, PeftGemmOp transb, int M, int N, int K,
			   float alpha, const float *A, int lda, const float *B, int ldb,
			   float beta, float *C, int ldc, PeftGemmMath math,
			   char *msg, int msglen)
{
	cublasHandle_t handle;
	cublasStatus_t status;

	if (check_gemm("peft_cuda_gemm", transa, transb, M, N, K, lda, ldb, ldc,
				   msg, msglen) != 0)
		return -1;
	if (M == 0 || N == 0)
		return 0;
	if ((handle = get_handle(msg, msglen)) == NULL)
		return -1;
	/* Set on every call: the handle is shared by all callers of this thread. */
	status = cublasSetMathMode(handle, math == PEFT_GEMM_TF32 ?
							   CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
	if (status != CUBLAS_STATUS_SUCCESS)
		return cublas_failed("cublasSetMathMode", status, msg, msglen);
	status = cublasSgemm(handle, to_cublas(transb), to_cublas(transa),
						 N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
	if (status != CUBLAS_STATUS_SUCCESS)
		return cublas_failed("cublasSgemm", status, msg, msglen);
	return 0;
}

/* C[M,N] = alpha op(A) op(B) + beta C with BF16 A, B and FP32 C, accumulate. */
extern "C" int
peft_cuda_gemm_bf16(PeftGemmOp transa, PeftGemmOp transb, int M, int N, int K,
					float alpha, const void *A, int lda, const void *B, int ldb,
					float beta, float *C, int ldc, char *msg, int msglen)
{
	cublasHandle_t handle;
	cublasStatus_t status;

	if (check_gemm("peft_cuda_gemm_bf16", transa, transb, M, N, K, lda, ldb,
				   ldc, msg, msglen) != 0)
		return -1;
	if (M == 0 || N == 0)
		return 0;
	if ((handle = get_handle(msg, msglen)) == NULL)
		return -1;
	/* The compute type below fixes the arithmetic; reset any TF32 mode left over. */
	status = cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
	if (status != CUBLAS_STATUS_SUCCESS)
		return cublas_failed("cublasSetMathMode", status, msg, msglen);
	status = cublasGemmEx(handle, to_cublas(transb), to_cublas(transa),
						  N, M, K, &alpha, B, CUDA_R_16BF, ldb,
						  A, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
						  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (status != CUBLAS_STATUS_SUCCESS)
		return cublas_failed("cublasGemmEx (BF16)", status, msg, msglen);
	return 0;
}

/* dst[n] = src[n] rounded to BF16 (nearest even), one element per thread. */
static __global__ void
float_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
	size_t		i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n)
		dst[i] = __float2bfloat16(src[i]);
}

/* dst[n] (BF16) = src[n] (FP32). */
extern "C" int
peft_cuda_float_to_bf16(void *dst, const float *src, size_t n,
						char *msg, int msglen)
{
	const int	threads = 256;
	size_t		blocks = (n + threads - 1) / threads;
	cudaError_t err;

	if (n == 0)
		return 0;
	if (blocks > 0x7fffffffu)
	{
		snprintf(msg, msglen, "peft_cuda_float_to_bf16: %zu elements is too many", n);
		return -1;
	}
	float_to_bf16_kernel<<<(unsigned) blocks, threads>>>(
		(__nv_bfloat16 *) dst, src, n);
	err = cudaGetLastError();
	if (err != cudaSuccess)
	{
		snprintf(msg, msglen, "float_to_bf16_kernel: %s", cudaGetErrorString(err));
		return -1;
	}
	return 0;
}
