/*
 * test_gemm_bf16.c - the bf16 matrix products of gemm_bf16.h against sums
 * in double of the inputs rounded to bf16 by this test's own rounding (not
 * the kernel's): ragged shapes (M, N, K not multiples of 16 or 32, K odd),
 * both forms of B, accumulating or not, row strides wider than the
 * matrices, 1 to 3 threads, on every path the CPU has (AMX, AVX512_BF16,
 * plain C).  Integer inputs, whose sums are exact in any order, must give
 * the same bits on every path; random ones must agree within the fp32
 * rounding of the sums.  gemm_bf16_rows, B given as rows of a quantized
 * matrix (8-bit values and a scale per row), must give gemm_bf16's bits on
 * the dequantized matrix, on every path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>
#include <math.h>
#include <cmocka.h>

#include "compare.h"
#include "gemm_bf16.h"
#include "rng.h"
#include "threadpool.h"

/*
 * Largest |got - want| allowed, over sum_k |a_ik b_kj| (+ |C_ij| when
 * accumulating), against the double sum of the bf16-rounded inputs: the
 * fp32 sums of up to 1000 terms.  Measured (Xeon, Sapphire Rapids class,
 * gcc 12): AMX 7.9e-8, AVX512_BF16 9.3e-8, plain C 1.1e-7 at worst.
 */
#define GEMM_BF16_TOL 1e-6

/*
 * Largest normwise difference between a fast path and plain C on random
 * inputs (their sums run in different orders).  Measured: AMX 5.4e-7,
 * AVX512_BF16 1.8e-7.
 */
#define GEMM_BF16_PATH_TOL 4e-6

static PeftRng rng;

static const GemmBf16Path paths[] = {GEMM_BF16_AMX, GEMM_BF16_AVX512, GEMM_BF16_SCALAR};
#define NPATHS ((int) (sizeof(paths) / sizeof(paths[0])))

/*
 * x rounded to 8 significant bits, ties to even (rint in the default
 * rounding mode), float32 denormals to zero: bf16 computed from frexp
 * rather than from the bits, so as not to share the kernel's method.
 */
static double
ref_round(float x)
{
	int			e;
	double		m;

	if (isnan(x) || isinf(x) || x == 0)
		return x;
	if (fabsf(x) < FLT_MIN)
		return copysign(0.0, x);
	m = frexp((double) x, &e);	/* |m| in [0.5, 1) */
	m = rint(ldexp(m, 8));		/* 8 significant bits */
	if (fabs(ldexp(m, e - 8)) > FLT_MAX)
		return copysign(INFINITY, x);
	return ldexp(m, e - 8);
}

/* A new array of n floats uniform in [-1, 1) (or integers in [-8, 8]). */
static float *
random_array(size_t n, bool integers)
{
	float	   *x = malloc((n > 0 ? n : 1) * sizeof(float));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = integers ? (float) (int) (17 * peft_rng_uniform(&rng)) - 8
			: (float) (2 * peft_rng_uniform(&rng) - 1);
	return x;
}

/* A product's operands with padded strides, and its reference result. */
typedef struct Problem
{
	bool		trans_b;
	bool		accumulate;
	int			M,
				N,
				K,
				lda,
				ldb,
				ldc;
	float	   *A;
	float	   *B;
	float	   *C0;				/* C before the product (padding included) */
	double	   *want;			/* [M,N] */
	double	   *scale;			/* [M,N]: sum |a b| (+ |C0|) */
} Problem;

/* Make random operands and the double reference from their bf16 values. */
static Problem
problem_make(bool trans_b, bool accumulate, int M, int N, int K, bool integers)
{
	Problem		p = {.trans_b = trans_b, .accumulate = accumulate, .M = M, .N = N, .K = K};
	size_t		b_rows = trans_b ? N : K;

	p.lda = K + 3;
	p.ldb = (trans_b ? K : N) + 5;
	p.ldc = N + 2;
	p.A = random_array((size_t) M * p.lda, integers);
	p.B = random_array(b_rows * p.ldb, integers);
	p.C0 = random_array((size_t) M * p.ldc, integers);
	p.want = malloc(sizeof(double) * M * N + 1);
	p.scale = malloc(sizeof(double) * M * N + 1);
	assert_non_null(p.want);
	assert_non_null(p.scale);
	/* C is not read when overwritten: NaN there must not show */
	if (!accumulate)
		for (int i = 0; i < M; i++)
			for (int j = 0; j < N; j++)
				p.C0[(size_t) i * p.ldc + j] = NAN;
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++)
		{
			double		sum = 0;
			double		abs_sum = 0;

			for (int k = 0; k < K; k++)
			{
				double		a = ref_round(p.A[(size_t) i * p.lda + k]);
				double		b = ref_round(trans_b ? p.B[(size_t) j * p.ldb + k] : p.B[(size_t) k * p.ldb + j]);

				sum += a * b;
				abs_sum += fabs(a * b);
			}
			if (accumulate)
			{
				sum += p.C0[(size_t) i * p.ldc + j];
				abs_sum += fabs(p.C0[(size_t) i * p.ldc + j]);
			}
			p.want[(size_t) i * N + j] = sum;
			p.scale[(size_t) i * N + j] = abs_sum > 0 ? abs_sum : 1;
		}
	return p;
}

/* Free a problem's arrays. */
static void
problem_free(Problem *p)
{
	free(p->A);
	free(p->B);
	free(p->C0);
	free(p->want);
	free(p->scale);
}

/* Run the product on a path into a copy of C0; the caller frees it. */
static float *
problem_run(const Problem *p, GemmBf16Path path)
{
	float	   *C = malloc(sizeof(float) * p->M * p->ldc + 1);

	assert_non_null(C);
	memcpy(C, p->C0, sizeof(float) * p->M * p->ldc);
	gemm_bf16_on(path, p->trans_b, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb,
				 C, p->ldc, p->accumulate);
	return C;
}

/*
 * Check a result against the reference, each error over its element's
 * scale (so the printed max abs diff is the measured relative figure), and
 * that the columns past N were left alone; returns the worst ratio.
 */
static double
check_result(const Problem *p, const float *C, GemmBf16Path path, double tol)
{
	char		what[128];
	Compare		cmp;

	snprintf(what, sizeof(what), "%s %dx%dx%d tb=%d acc=%d (%d thr)", gemm_bf16_path_name(path),
			 p->M, p->N, p->K, p->trans_b, p->accumulate, peft_threads_count());
	compare_begin(&cmp, what, tol, 0);
	for (int i = 0; i < p->M; i++)
	{
		for (int j = 0; j < p->N; j++)
		{
			size_t		ij = (size_t) i * p->N + j;

			compare_add(&cmp, ij, C[(size_t) i * p->ldc + j] / p->scale[ij], p->want[ij] / p->scale[ij]);
		}
		for (int j = p->N; j < p->ldc; j++)
			assert_memory_equal(&C[(size_t) i * p->ldc + j], &p->C0[(size_t) i * p->ldc + j], sizeof(float));
	}
	compare_end(&cmp);
	return cmp.max_abs;
}

/* Say which paths this CPU runs. */
static void
print_paths(void)
{
	print_message("gemm_bf16 paths here: amx %s, avx512 %s, scalar yes; gemm_bf16 takes %s\n",
				  gemm_bf16_path_available(GEMM_BF16_AMX) ? "yes" : "no",
				  gemm_bf16_path_available(GEMM_BF16_AVX512) ? "yes" : "no",
				  gemm_bf16_path_name(GEMM_BF16_AUTO));
}

/* Seed the generator and say which paths will run. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 1611);
	print_paths();
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

/* gemm_bf16_round: ties to even, denormals to zero, overflow to inf, NaN kept. */
static void
test_round(void **state)
{
	const float special[] = {
		1.0f + 0x1p-8f,			/* tie: to 1 (even) */
		1.0f + 3 * 0x1p-8f,		/* tie: to 1 + 2^-6 (even) */
		-(1.0f + 0x1p-8f + 0x1p-20f),	/* just above the tie: away */
		0x1p-130f, -0x1p-140f,	/* float32 denormals: signed zero */
		FLT_MIN, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, 0.0f, -0.0f, 3.14159265f,
	};

	(void) state;
	for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++)
	{
		float		got = gemm_bf16_round(special[i]);
		double		want = ref_round(special[i]);

		assert_true(got == want);
		assert_true(!signbit(got) == !signbit(want));
	}
	assert_true(isnan(gemm_bf16_round(NAN)));
	for (int i = 0; i < 100000; i++)
	{
		float		x = (float) ldexp(2 * peft_rng_uniform(&rng) - 1, (int) (80 * peft_rng_uniform(&rng)) - 40);

		assert_true(gemm_bf16_round(x) == ref_round(x));
	}
}

/*
 * op(B) the identity: C is A as each path rounds it, which must be the
 * reference rounding exactly (ties and denormals included).
 */
static void
test_rounding_in_paths(void **state)
{
	const int	n = 37;
	float		A[37 * 37];
	float		B[37 * 37];
	float		C[37 * 37];

	(void) state;
	assert_int_equal(peft_threads_init(1, NULL), PEFT_OK);
	for (int i = 0; i < n * n; i++)
	{
		float		r = (float) peft_rng_uniform(&rng);

		A[i] = i % 5 == 0 ? 1.0f + (float) (2 * (i % 7) + 1) * 0x1p-8f	/* ties */
			: i % 5 == 1 ? 0x1p-128f * r	/* denormal */
			: i % 5 == 2 ? -(float) ldexp(r, 100) : r;
		B[i] = i / n == i % n ? 1.0f : 0.0f;
	}
	for (int pi = 0; pi < NPATHS; pi++)
		for (int tb = 0; tb <= 1; tb++)
		{
			if (!gemm_bf16_path_available(paths[pi]))
				continue;
			gemm_bf16_on(paths[pi], tb, n, n, n, A, n, B, n, C, n, false);
			for (int i = 0; i < n * n; i++)
				if (!(C[i] == ref_round(A[i])))
					fail_msg("%s tb=%d: element %d of A (%.9g) came out %.9g, bf16 is %.9g",
							 gemm_bf16_path_name(paths[pi]), tb, i, A[i], C[i], ref_round(A[i]));
		}
}

/* Shapes: ragged in every dimension, K odd, split by rows and by columns. */
static const int shapes[][3] = {
	{1, 1, 1}, {5, 7, 3}, {16, 16, 32}, {33, 17, 31}, {64, 64, 64}, {70, 45, 97},
	{100, 130, 33}, {31, 200, 129}, {17, 3, 1000}, {129, 96, 65}, {3, 300, 40},
};
#define NSHAPES ((int) (sizeof(shapes) / sizeof(shapes[0])))

/* Every shape, form of B and accumulate flag on every path, against double sums. */
static void
test_against_reference(void **state)
{
	double		worst[NPATHS] = {0};

	(void) state;
	for (int threads = 1; threads <= 3; threads++)
	{
		assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
		for (int s = 0; s < NSHAPES; s++)
			for (int tb = 0; tb <= 1; tb++)
				for (int acc = 0; acc <= 1; acc++)
				{
					Problem		p = problem_make(tb, acc, shapes[s][0], shapes[s][1], shapes[s][2], false);

					for (int pi = 0; pi < NPATHS; pi++)
					{
						float	   *C;
						double		err;

						if (!gemm_bf16_path_available(paths[pi]))
							continue;
						C = problem_run(&p, paths[pi]);
						err = check_result(&p, C, paths[pi], GEMM_BF16_TOL);
						if (err > worst[pi])
							worst[pi] = err;
						free(C);
					}
					problem_free(&p);
				}
	}
	for (int pi = 0; pi < NPATHS; pi++)
		if (gemm_bf16_path_available(paths[pi]))
			print_message("%s: worst |error| / sum|a b| %.3g (limit %.3g)\n",
						  gemm_bf16_path_name(paths[pi]), worst[pi], GEMM_BF16_TOL);
}

/*
 * A shape of the training (SmolLM2's k/v projection, 256 rows) both ways,
 * and gemm_bf16 itself, on two threads.
 */
static void
test_training_shape(void **state)
{
	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int tb = 0; tb <= 1; tb++)
	{
		Problem		p = problem_make(tb, tb == 0, 256, tb ? 192 : 576, tb ? 576 : 192, false);
		float	   *C = malloc(sizeof(float) * p.M * p.ldc);

		assert_non_null(C);
		memcpy(C, p.C0, sizeof(float) * p.M * p.ldc);
		gemm_bf16(p.trans_b, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, C, p.ldc, p.accumulate);
		check_result(&p, C, GEMM_BF16_AUTO, GEMM_BF16_TOL);
		free(C);
		problem_free(&p);
	}
}

/*
 * Integer inputs: every sum is exact in any order, so every path must give
 * the reference's bits; random inputs: the paths within GEMM_BF16_PATH_TOL
 * of plain C.
 */
static void
test_paths_agree(void **state)
{
	int			ran = 0;

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int s = 0; s < NSHAPES; s++)
		for (int tb = 0; tb <= 1; tb++)
		{
			Problem		exact = problem_make(tb, s % 2, shapes[s][0], shapes[s][1], shapes[s][2], true);
			Problem		p = problem_make(tb, false, shapes[s][0], shapes[s][1], shapes[s][2], false);
			float	   *plain = problem_run(&p, GEMM_BF16_SCALAR);

			for (int pi = 0; pi < NPATHS; pi++)
			{
				float	   *C;
				char		what[128];

				if (!gemm_bf16_path_available(paths[pi]))
					continue;
				C = problem_run(&exact, paths[pi]);
				for (int i = 0; i < exact.M; i++)
					for (int j = 0; j < exact.N; j++)
						if (!(C[(size_t) i * exact.ldc + j] == exact.want[(size_t) i * exact.N + j]))
							fail_msg("%s %dx%dx%d tb=%d integers: C[%d,%d] = %.9g, exact %.17g",
									 gemm_bf16_path_name(paths[pi]), exact.M, exact.N, exact.K, tb,
									 i, j, C[(size_t) i * exact.ldc + j], exact.want[(size_t) i * exact.N + j]);
				free(C);

				if (paths[pi] == GEMM_BF16_SCALAR)
					continue;
				C = problem_run(&p, paths[pi]);
				snprintf(what, sizeof(what), "%s vs scalar %dx%dx%d tb=%d", gemm_bf16_path_name(paths[pi]),
						 p.M, p.N, p.K, tb);
				/* rows of C are ldc apart; the padding holds the same C0 in both */
				compare_close_norm(what, C, plain, (size_t) p.M * p.ldc, GEMM_BF16_PATH_TOL, 1e-6);
				free(C);
				ran++;
			}
			free(plain);
			problem_free(&exact);
			problem_free(&p);
		}
	print_message("fast paths compared with plain C: %d products (%s)\n", ran,
				  ran > 0 ? "amx and/or avx512" : "none on this CPU");
}

/* A matrix [rows, cols] as 8-bit values times a scale per row (Q8_0-like). */
typedef struct QRows
{
	int			rows;
	int			cols;
	int8_t	   *q;				/* [rows, cols] */
	float	   *d;				/* [rows] */
	int			fetched;		/* rows handed out (atomic) */
	int			bad;			/* a request outside the matrix (atomic) */
} QRows;

/* Row i's values: d[i] * q[i, j]. */
static void
qrows_dequant_row(const QRows *m, int i, float *out)
{
	for (int j = 0; j < m->cols; j++)
		out[j] = m->d[i] * (float) m->q[(size_t) i * m->cols + j];
}

/* The GemmBf16RowsFn: count rows from first, counted (called on worker threads: no asserts). */
static void
qrows_fetch(const void *ctx, int first, int count, float *out)
{
	QRows	   *m = (QRows *) ctx;

	if (first < 0 || count <= 0 || first + count > m->rows)
	{
		__atomic_store_n(&m->bad, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_add_fetch(&m->fetched, count, __ATOMIC_RELAXED);
	for (int i = 0; i < count; i++)
		qrows_dequant_row(m, first + i, out + (size_t) i * m->cols);
}

/*
 * gemm_bf16_rows against gemm_bf16 on the same dequantized B (with a
 * padded stride): the same bits everywhere in C, padding included; every
 * row of B fetched once.
 */
static void
check_rows_form(GemmBf16Path path, bool trans_b, bool accumulate, int M, int N, int K)
{
	QRows		m = {.rows = trans_b ? N : K, .cols = trans_b ? K : N};
	int			ldb = m.cols + 3;
	int			lda = K + 2;
	int			ldc = N + 5;
	float	   *A = random_array((size_t) M * lda, false);
	float	   *B = malloc(sizeof(float) * ((size_t) m.rows * ldb + 1));
	float	   *C0 = random_array((size_t) M * ldc, false);
	float	   *want = malloc(sizeof(float) * ((size_t) M * ldc + 1));
	float	   *got = malloc(sizeof(float) * ((size_t) M * ldc + 1));

	m.q = malloc((size_t) m.rows * m.cols + 1);
	m.d = malloc(sizeof(float) * (m.rows + 1));
	assert_non_null(B);
	assert_non_null(want);
	assert_non_null(got);
	assert_non_null(m.q);
	assert_non_null(m.d);
	for (int i = 0; i < m.rows; i++)
	{
		m.d[i] = (float) (0.002 + 0.03 * peft_rng_uniform(&rng));
		for (int j = 0; j < m.cols; j++)
			m.q[(size_t) i * m.cols + j] = (int8_t) ((int) (255 * peft_rng_uniform(&rng)) - 127);
		qrows_dequant_row(&m, i, B + (size_t) i * ldb);
	}
	memcpy(want, C0, sizeof(float) * M * ldc);
	memcpy(got, C0, sizeof(float) * M * ldc);
	gemm_bf16_on(path, trans_b, M, N, K, A, lda, B, ldb, want, ldc, accumulate);
	assert_true(gemm_bf16_rows_on(path, trans_b, M, N, K, A, lda, qrows_fetch, &m, got, ldc, accumulate));
	if (m.bad || m.fetched != m.rows)
		fail_msg("%s %dx%dx%d tb=%d: rows fetched %d of %d%s", gemm_bf16_path_name(path), M, N, K,
				 trans_b, m.fetched, m.rows, m.bad ? ", and a request outside the matrix" : "");
	for (size_t i = 0; i < (size_t) M * ldc; i++)
		if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
			fail_msg("%s %dx%dx%d tb=%d acc=%d (%d thr): C[%zu,%zu] = %.9g from rows, %.9g from gemm_bf16",
					 gemm_bf16_path_name(path), M, N, K, trans_b, accumulate, peft_threads_count(),
					 i / ldc, i % ldc, got[i], want[i]);
	free(A);
	free(B);
	free(C0);
	free(want);
	free(got);
	free(m.q);
	free(m.d);
}

/*
 * The rows form on every path against gemm_bf16: every shape above and
 * larger ones (N large enough to fetch 2 rows of B [K,N] at a time, small
 * enough for 32; K from 1 to 3001), both forms of B, accumulating or not,
 * 1 to 3 threads.
 */
static void
test_rows_form(void **state)
{
	static const int more[][3] = {
		{64, 5000, 67}, {40, 7, 3001}, {300, 576, 192}, {256, 1536, 576}, {70, 33, 1600},
	};
	const int	nmore = (int) (sizeof(more) / sizeof(more[0]));
	int			ran = 0;

	(void) state;
	for (int threads = 1; threads <= 3; threads++)
	{
		assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
		for (int s = 0; s < NSHAPES + nmore; s++)
		{
			const int  *shape = s < NSHAPES ? shapes[s] : more[s - NSHAPES];

			for (int tb = 0; tb <= 1; tb++)
				for (int acc = 0; acc <= 1; acc++)
					for (int pi = 0; pi < NPATHS; pi++)
					{
						if (!gemm_bf16_path_available(paths[pi]))
							continue;
						/* plain C on the larger shapes only at 2 threads, not accumulating */
						if (paths[pi] == GEMM_BF16_SCALAR && s >= NSHAPES && (threads != 2 || acc))
							continue;
						check_rows_form(paths[pi], tb, acc, shape[0], shape[1], shape[2]);
						ran++;
					}
		}
	}
	print_message("gemm_bf16_rows: %d products, each the same bits as gemm_bf16's\n", ran);
}

/* Empty products: nothing happens for M or N of 0; K of 0 gives 0 or leaves C. */
static void
test_empty(void **state)
{
	float		A[4] = {1, 2, 3, 4};
	float		B[4] = {1, 2, 3, 4};
	float		C[4] = {5, 6, 7, 8};

	(void) state;
	gemm_bf16(true, 0, 2, 2, A, 2, B, 2, C, 2, false);
	gemm_bf16(false, 2, 0, 2, A, 2, B, 2, C, 2, false);
	assert_true(C[0] == 5 && C[3] == 8);
	gemm_bf16(true, 2, 2, 0, A, 2, B, 2, C, 2, true);
	assert_true(C[0] == 5 && C[3] == 8);
	gemm_bf16(false, 2, 2, 0, A, 2, B, 2, C, 2, false);
	assert_true(C[0] == 0 && C[1] == 0 && C[2] == 0 && C[3] == 0);
	/* the rows form fetches nothing then */
	C[0] = 5;
	C[3] = 8;
	{
		QRows		m = {.rows = 2, .cols = 0};

		assert_true(gemm_bf16_rows(true, 0, 2, 2, A, 2, qrows_fetch, &m, C, 2, false));
		assert_true(gemm_bf16_rows(true, 2, 2, 0, A, 2, qrows_fetch, &m, C, 2, true));
		assert_true(C[0] == 5 && C[3] == 8);
		assert_true(gemm_bf16_rows(false, 2, 2, 0, A, 2, qrows_fetch, &m, C, 2, false));
		assert_true(C[0] == 0 && C[3] == 0);
		assert_int_equal(m.fetched, 0);
		assert_int_equal(m.bad, 0);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round),
		cmocka_unit_test(test_rounding_in_paths),
		cmocka_unit_test(test_against_reference),
		cmocka_unit_test(test_training_shape),
		cmocka_unit_test(test_paths_agree),
		cmocka_unit_test(test_rows_form),
		cmocka_unit_test(test_empty),
	};

	return cmocka_run_group_tests_name("bf16 matrix products (AMX, AVX512_BF16, plain C)",
									   tests, setup, teardown);
}
