/*
 * test_matmul.c - the thread-split matrix products of matmul.h against
 * naive loops in double: every transpose combination, row strides wider
 * than the matrices, beta 0 and non-zero, the bias of matmul_linear, shapes
 * split by rows and by columns, products too small to split, and the same
 * bits on every run with a given thread count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "compare.h"
#include "matmul.h"
#include "rng.h"
#include "threadpool.h"

#ifdef PEFT_DOUBLE
#error "test_matmul.c checks the float build"
#endif

static PeftRng rng;

/* A new array of n floats uniform in [-1, 1). */
static real *
random_array(size_t n)
{
	real	   *x = malloc(n * sizeof(real));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = (real) (2 * peft_rng_uniform(&rng) - 1);
	return x;
}

/* Element (i, j) of op(X) for X stored row-major with stride ld. */
static double
op_at(const real *X, int ld, bool trans, int i, int j)
{
	return trans ? X[(size_t) j * ld + i] : X[(size_t) i * ld + j];
}

/*
 * Check matmul (or matmul_linear when bias != NULL or linear) on one
 * shape against double loops, then that a second run gives the same bits.
 */
static void
check_product(bool ta, bool tb, int M, int N, int K, real beta, bool linear,
			  bool with_bias)
{
	int			lda = (ta ? M : K) + 3;
	int			ldb = linear ? K : (tb ? K : N) + 5;
	int			ldc = N + 2;
	real		alpha = linear ? 1 : 0.75f;
	real	   *A = random_array((size_t) (ta ? K : M) * lda);
	real	   *Bm = random_array((size_t) (tb || linear ? N : K) * ldb);
	real	   *bias = with_bias ? random_array((size_t) N) : NULL;
	real	   *C0 = random_array((size_t) M * ldc);
	real	   *C1 = malloc(sizeof(real) * M * ldc);
	real	   *C2 = malloc(sizeof(real) * M * ldc);
	char		what[96];
	Compare		cmp;

	memcpy(C1, C0, sizeof(real) * M * ldc);
	if (linear)
		matmul_linear(C1, ldc, A, lda, Bm, bias, M, K, N);
	else
		matmul(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
			   M, N, K, alpha, A, lda, Bm, ldb, beta, C1, ldc);
	snprintf(what, sizeof(what), "%s %dx%dx%d ta=%d tb=%d beta=%.1f (%d threads)",
			 linear ? "linear" : "matmul", M, N, K, ta, tb, (double) beta, peft_threads_count());
	/* element C[i, j] is index i * N + j */
	compare_begin(&cmp, what, 1e-4, 1e-4);
	for (int i = 0; i < M; i++)
	{
		for (int j = 0; j < N; j++)
		{
			double		want = linear ? (bias ? bias[j] : 0) : beta * (double) C0[(size_t) i * ldc + j];
			double		sum = 0;

			for (int k = 0; k < K; k++)
				sum += op_at(A, lda, ta, i, k) * op_at(Bm, ldb, tb || linear, k, j);
			want += alpha * sum;
			compare_add(&cmp, (size_t) i * N + j, C1[(size_t) i * ldc + j], want);
		}
		/* Columns past N (inside the stride) are untouched. */
		for (int j = N; j < ldc; j++)
			assert_true(C1[(size_t) i * ldc + j] == C0[(size_t) i * ldc + j]);
	}
	compare_end(&cmp);

	memcpy(C2, C0, sizeof(real) * M * ldc);
	if (linear)
		matmul_linear(C2, ldc, A, lda, Bm, bias, M, K, N);
	else
		matmul(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
			   M, N, K, alpha, A, lda, Bm, ldb, beta, C2, ldc);
	assert_memory_equal(C1, C2, sizeof(real) * M * ldc);
	free(A);
	free(Bm);
	free(bias);
	free(C0);
	free(C1);
	free(C2);
}

/* Seed the generator. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 4242);
	return 0;
}

/* Stop the engine threads. */
static int
teardown(void **state)
{
	(void) state;
	peft_threads_shutdown();
	return 0;
}

/* Every transpose combination, split by rows (M > N) and by columns (N > M). */
static void
test_matmul_shapes(void **state)
{
	(void) state;
	for (int threads = 1; threads <= 3; threads += 2)
	{
		assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
		for (int ta = 0; ta <= 1; ta++)
			for (int tb = 0; tb <= 1; tb++)
			{
				check_product(ta, tb, 203, 67, 97, 0, false, false);
				check_product(ta, tb, 45, 190, 131, 1.5f, false, false);
			}
		/* Too small to split; and an empty sum (C = beta C). */
		check_product(false, true, 7, 5, 3, 1, false, false);
		check_product(false, false, 33, 17, 0, 0.5f, false, false);
	}
}

/* matmul_linear: x W^T + bias, with and without bias, split both ways. */
static void
test_matmul_linear(void **state)
{
	(void) state;
	for (int threads = 1; threads <= 3; threads += 2)
	{
		assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
		check_product(false, true, 301, 96, 80, 0, true, true);
		check_product(false, true, 40, 300, 90, 0, true, true);
		check_product(false, true, 301, 96, 80, 0, true, false);
		check_product(false, true, 9, 4, 0, 0, true, true);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matmul_shapes),
		cmocka_unit_test(test_matmul_linear),
	};

	return cmocka_run_group_tests_name("matrix products split over the engine threads",
									   tests, setup, teardown);
}
