/*
 * matmul.h - matrix products split over the engine's own threads.
 *
 * Each thread runs a single-threaded OpenBLAS product on its own block of
 * the result, so OpenBLAS's thread pool is never woken.  With both pools
 * awake on the same cores, OpenBLAS's idle workers spin in sched_yield
 * while ours run the element-wise loops between products, and each pool
 * steals time from the other.  Results depend only on the shapes and the
 * engine thread count.
 */
#ifndef PEFT_ENGINE_MATMUL_H
#define PEFT_ENGINE_MATMUL_H

#include <stddef.h>
#include "real.h"
#include "threadpool.h"

/* C[M,N] = alpha op(A) op(B) + beta C, row-major, as cblas_gemm's arguments. */
void		matmul(CBLAS_TRANSPOSE transa, CBLAS_TRANSPOSE transb,
				   int M, int N, int K, real alpha,
				   const real *A, int lda, const real *B, int ldb,
				   real beta, real *C, int ldc);

/*
 * out[M,N] (row stride ldo) = x[M,K] (row stride ldx) @ weight[N,K]^T +
 * bias[N] (bias may be NULL): a linear layer in PyTorch's weight layout.
 */
void		matmul_linear(real *out, int ldo, const real *x, int ldx,
						  const real *weight, const real *bias,
						  int M, int K, int N);

/*
 * Run fn over [0, n) on the engine threads with OpenBLAS single-threaded
 * for the duration, for tasks that each call cblas_gemm on small blocks.
 */
void		parallel_for_serial_blas(size_t n, size_t grain, PeftRangeFn fn,
									 void *ctx);

#endif
