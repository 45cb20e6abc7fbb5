/*
 * matmul.c - matrix products split over the engine threads, each block a
 * single-threaded OpenBLAS call (see matmul.h for why).
 *
 * The result is cut along its longer side into one block per thread, in
 * whole multiples of MATMUL_ALIGN so every block keeps the kernel's full
 * register tiles.  Cutting rows or columns of C never changes how any one
 * element is summed over K, and the cut depends only on the shapes and the
 * thread count.
 */
#include "matmul.h"

#include <stdbool.h>
#include <string.h>

/* Rows or columns per unit of a split: OpenBLAS's widest register tile. */
#define MATMUL_ALIGN 16

/*
 * Multiply-adds below which a product runs on the calling thread alone:
 * about 10 microseconds of work, the cost of handing a block to a worker.
 */
#define MATMUL_SPLIT_MIN (1 << 20)

typedef struct MatmulArgs
{
	CBLAS_TRANSPOSE transa;
	CBLAS_TRANSPOSE transb;
	int			M;
	int			N;
	int			K;
	real		alpha;
	const real *A;
	int			lda;
	const real *B;
	int			ldb;
	real		beta;
	real	   *C;
	int			ldc;
	const real *bias;			/* [N] broadcast over rows, or NULL */
	bool		split_rows;		/* blocks of rows, else of columns */
	int			parts;
} MatmulArgs;

/* Bounds [*lo, *hi) of part i of parts over dim, in MATMUL_ALIGN units. */
static void
part_bounds(int dim, int parts, int i, int *lo, int *hi)
{
	int			units = (dim + MATMUL_ALIGN - 1) / MATMUL_ALIGN;
	int			u0 = (int) ((long) units * i / parts);
	int			u1 = (int) ((long) units * (i + 1) / parts);

	*lo = u0 * MATMUL_ALIGN < dim ? u0 * MATMUL_ALIGN : dim;
	*hi = u1 * MATMUL_ALIGN < dim ? u1 * MATMUL_ALIGN : dim;
}

/* One block of the product: rows or columns [lo, hi) of C. */
static void
matmul_block(const MatmulArgs *a, int lo, int hi)
{
	const real *A = a->A;
	const real *B = a->B;
	real	   *C = a->C;
	int			M = a->M;
	int			N = a->N;
	real		beta = a->beta;

	if (hi <= lo)
		return;
	if (a->split_rows)
	{
		/* op(A) rows lo..hi: rows of A, or columns when A is transposed */
		A += a->transa == CblasNoTrans ? (size_t) lo * a->lda : (size_t) lo;
		C += (size_t) lo * a->ldc;
		M = hi - lo;
	}
	else
	{
		/* op(B) columns lo..hi: columns of B, or rows when B is transposed */
		B += a->transb == CblasNoTrans ? (size_t) lo : (size_t) lo * a->ldb;
		C += lo;
		N = hi - lo;
	}
	if (a->bias != NULL)
	{
		const real *bias = a->bias + (a->split_rows ? 0 : lo);

		/* Start from the bias and let the product accumulate onto it. */
		for (int m = 0; m < M; m++)
			memcpy(C + (size_t) m * a->ldc, bias, (size_t) N * sizeof(real));
		beta = 1;
	}
	if (a->K > 0)
		cblas_gemm(CblasRowMajor, a->transa, a->transb, M, N, a->K, a->alpha,
				   A, a->lda, B, a->ldb, beta, C, a->ldc);
	else if (a->bias == NULL)
		for (int m = 0; m < M; m++)
		{
			real	   *row = C + (size_t) m * a->ldc;

			/* An empty sum: C = beta C. */
			for (int n = 0; n < N; n++)
				row[n] = beta == 0 ? 0 : beta * row[n];
		}
}

/* Parts [begin, end) of a split product. */
static void
matmul_range(void *arg, size_t begin, size_t end)
{
	const MatmulArgs *a = arg;

	for (size_t i = begin; i < end; i++)
	{
		int			lo;
		int			hi;

		part_bounds(a->split_rows ? a->M : a->N, a->parts, (int) i, &lo, &hi);
		matmul_block(a, lo, hi);
	}
}

/* Run a product described by a, split over the engine threads when large. */
static void
matmul_run(MatmulArgs *a)
{
	int			threads = peft_threads_count();
	double		work = (double) a->M * a->N * (a->K > 0 ? a->K : 1);
	int			dim;
	int			units;

	if (a->M <= 0 || a->N <= 0)
		return;
	a->split_rows = a->M >= a->N;
	dim = a->split_rows ? a->M : a->N;
	units = (dim + MATMUL_ALIGN - 1) / MATMUL_ALIGN;
	a->parts = work < MATMUL_SPLIT_MIN ? 1 : (threads < units ? threads : units);
	if (a->parts <= 1)
	{
		int			blas_threads = openblas_get_num_threads();

		a->parts = 1;
		if (blas_threads > 1)
			openblas_set_num_threads(1);
		matmul_block(a, 0, dim);
		if (blas_threads > 1)
			openblas_set_num_threads(blas_threads);
		return;
	}
	parallel_for_serial_blas((size_t) a->parts, 1, matmul_range, a);
}

/* C[M,N] = alpha op(A) op(B) + beta C, row-major. */
void
matmul(CBLAS_TRANSPOSE transa, CBLAS_TRANSPOSE transb, int M, int N, int K,
	   real alpha, const real *A, int lda, const real *B, int ldb,
	   real beta, real *C, int ldc)
{
	MatmulArgs	a = {
		.transa = transa, .transb = transb, .M = M, .N = N, .K = K,
		.alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb,
		.beta = beta, .C = C, .ldc = ldc
	};

	matmul_run(&a);
}

/* out[M,N] = x[M,K] @ weight[N,K]^T + bias[N]. */
void
matmul_linear(real *out, int ldo, const real *x, int ldx, const real *weight,
			  const real *bias, int M, int K, int N)
{
	MatmulArgs	a = {
		.transa = CblasNoTrans, .transb = CblasTrans, .M = M, .N = N, .K = K,
		.alpha = 1, .A = x, .lda = ldx, .B = weight, .ldb = K,
		.beta = 0, .C = out, .ldc = ldo, .bias = bias
	};
	matmul_run(&a);
}

/*
 * Run fn over [0, n) with OpenBLAS single-threaded.  Restoring the previous
 * count never starts an OpenBLAS thread (its pool only grows past its
 * high-water mark), so no thread is created here with the caller's signal
 * mask.
 */
void
parallel_for_serial_blas(size_t n, size_t grain, PeftRangeFn fn, void *ctx)
{
	int			blas_threads = openblas_get_num_threads();

	if (blas_threads > 1)
		openblas_set_num_threads(1);
	peft_parallel_for(n, grain, fn, ctx);
	if (blas_threads > 1)
		openblas_set_num_threads(blas_threads);
}
