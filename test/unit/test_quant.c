/*
 * test_quant.c - ggml's tensor types (quant.h): dequantization of random
 * blocks of every type bit for bit against the gguf Python package's
 * (test/fixtures/ref_quant.py wrote its output), then every kernel path
 * this CPU has (scalar, AVX2, AVX-512) against the scalar reference
 * product on random weights of every type, for N from 1 (decoding) to 64
 * (the tiled BLAS route), the input gradient against a double-precision
 * loop, and the same bits for any thread count.  Prints the Q4_1
 * matrix-vector speed on SmolLM2's 1536 x 576 FFN shape.
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
#include <time.h>
#include <cmocka.h>

#include "compare.h"
#include "gguf.h"
#include "quant.h"
#include "rng.h"
#include "test_util.h"
#include "threadpool.h"

#ifdef PEFT_DOUBLE
#error "test_quant.c checks the float build"
#endif

/*
 * Relative L2 error of quant_matmul against the double-precision reference
 * over the same dequantized weights: only float summation differs (and
 * the reference's own rounding of its sums to float).  Measured at most
 * 2.6e-7 (the matrix-vector kernels, every path) and 2.3e-7 (the tiles
 * through OpenBLAS) over every type, shape and N, on an AMD Zen 4.  A
 * wrong scale on one sub-block of 32 values would show as about 1e-1.
 */
#define QUANT_MATMUL_L2_TOL 1e-6
/* The input gradient through the tiles, against a double loop: measured 2.3e-7. */
#define QUANT_BACKWARD_L2_TOL 1e-6

typedef struct TypeCase
{
	GgmlType	type;
	const char *fixture;		/* tensor name in quant.gguf */
	int			half_fields[2]; /* byte offsets of fp16 scales in a block (-1: none) */
} TypeCase;

static const TypeCase types[] = {
	{GGML_F32, "f32", {-1, -1}},
	{GGML_F16, "f16", {-1, -1}},
	{GGML_BF16, "bf16", {-1, -1}},
	{GGML_Q4_0, "q4_0", {0, -1}},
	{GGML_Q4_1, "q4_1", {0, 2}},
	{GGML_Q5_0, "q5_0", {0, -1}},
	{GGML_Q5_1, "q5_1", {0, 2}},
	{GGML_Q8_0, "q8_0", {0, -1}},
	{GGML_Q2_K, "q2_k", {80, 82}},
	{GGML_Q3_K, "q3_k", {108, -1}},
	{GGML_Q4_K, "q4_k", {0, 2}},
	{GGML_Q5_K, "q5_k", {0, 2}},
	{GGML_Q6_K, "q6_k", {208, -1}},
};
#define NTYPES ((int) (sizeof(types) / sizeof(types[0])))

static const char *const paths[] = {"scalar", "avx2", "avx512"};

static PeftRng rng;

/* Uniform float in [-1, 1). */
static float
uniform(void)
{
	return (float) (2 * peft_rng_uniform(&rng) - 1);
}

/* A random fp16 of magnitude in [2^lo, 2^hi), either sign. */
static uint16_t
random_half(int lo, int hi)
{
	uint16_t	exponent = (uint16_t) (15 + lo + (int) peft_rng_below(&rng, (uint64_t) (hi - lo)));

	return (uint16_t) (peft_rng_below(&rng, 2) << 15 | exponent << 10 | peft_rng_below(&rng, 1024));
}

/*
 * rows x cols random values of tc's type: random quants, fp16 scales of
 * 2^-7..2^-4 (values of order 1); float types uniform-ish in (-2, 2).
 */
static uint8_t *
random_weights(const TypeCase *tc, int64_t rows, int64_t cols)
{
	size_t		nbytes = quant_row_bytes(tc->type, cols) * (size_t) rows;
	uint8_t    *w = malloc(nbytes);
	int			values;
	int			bytes;

	assert_non_null(w);
	assert_true(gguf_type_layout(tc->type, &values, &bytes));
	for (size_t i = 0; i < nbytes; i++)
		w[i] = (uint8_t) peft_rng_below(&rng, 256);
	if (tc->type == GGML_F32)
		for (size_t i = 0; i < nbytes / 4; i++)
			((float *) w)[i] = uniform();
	else if (tc->type == GGML_F16)
		for (size_t i = 0; i < nbytes / 2; i++)
		{
			uint16_t	h = random_half(-6, 1);

			memcpy(w + 2 * i, &h, 2);
		}
	else if (tc->type == GGML_BF16)
		for (size_t i = 0; i < nbytes / 2; i++)
		{
			float		f = uniform();
			uint32_t	bits;

			memcpy(&bits, &f, 4);
			w[2 * i] = (uint8_t) (bits >> 16);
			w[2 * i + 1] = (uint8_t) (bits >> 24);
		}
	else
		for (size_t b = 0; b < nbytes / bytes; b++)
			for (int k = 0; k < 2; k++)
				if (tc->half_fields[k] >= 0)
				{
					uint16_t	h = random_half(-7, -4);

					memcpy(w + b * bytes + tc->half_fields[k], &h, 2);
				}
	return w;
}

/* A new array of n uniform floats. */
static float *
random_floats(size_t n)
{
	float	   *x = malloc(n * sizeof(float));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = uniform();
	return x;
}

/*
 * Every type's dequantization equals the gguf package's, bit for bit, whole
 * and row by row, on every path this CPU has.
 */
static void
test_dequantize_fixture(void **state)
{
	GgufFile   *f;
	PeftError	err = {0};

	(void) state;
	assert_int_equal(gguf_open_file(source_path("test/fixtures/reference/quant.gguf"), &f, &err), PEFT_OK);
	for (int k = 0; k < NTYPES; k++)
	{
		const GgufTensor *t = gguf_find_tensor(f, types[k].fixture);
		const GgufTensor *want;
		char		name[64];
		float	   *got;
		int64_t		cols;
		int64_t		rows;
		size_t		row_bytes;

		snprintf(name, sizeof(name), "%s.expected", types[k].fixture);
		want = gguf_find_tensor(f, name);
		assert_non_null(t);
		assert_non_null(want);
		assert_int_equal(t->type, types[k].type);
		assert_true(quant_supported(t->type));
		assert_int_equal(want->nelem, t->nelem);
		cols = t->dims[0];
		rows = (int64_t) t->nelem / cols;
		row_bytes = quant_row_bytes(t->type, cols);
		assert_int_equal(row_bytes * (size_t) rows, t->nbytes);

		got = malloc(t->nelem * sizeof(float));
		for (int p = 0; p < 3; p++)
		{
			if (!quant_force_kernel(paths[p]))
				continue;
			quant_dequantize(t->type, t->data, (int64_t) t->nelem, got);
			for (uint64_t i = 0; i < t->nelem; i++)
				if (memcmp(&got[i], want->data + 4 * i, 4) != 0)
				{
					float		w;

					memcpy(&w, want->data + 4 * i, 4);
					fail_msg("%s, %s path: value %llu is %.9g, the gguf package's is %.9g",
							 types[k].fixture, paths[p], (unsigned long long) i, got[i], w);
				}
			memset(got, 0, t->nelem * sizeof(float));
			for (int64_t r = 0; r < rows; r++)
				quant_dequantize(t->type, t->data + r * row_bytes, cols, got + r * cols);
			assert_memory_equal(got, want->data, t->nelem * sizeof(float));
		}
		print_message("%-5s %llu values bit-identical to gguf.quants.dequantize on every path\n",
					  types[k].fixture, (unsigned long long) t->nelem);
		free(got);
	}
	quant_force_kernel(NULL);
	gguf_close(f);
}

/*
 * The vector paths' dequantization (the BLAS tiles') equals the scalar
 * one's on many random blocks; and every path reads weights at an odd
 * address (a block may sit anywhere) as it reads them aligned.
 */
static void
test_dequantize_paths(void **state)
{
	const int64_t rows = 64;
	const int64_t cols = 1024;

	(void) state;
	for (int k = 0; k < NTYPES; k++)
	{
		uint8_t    *w = random_weights(&types[k], rows, cols);
		size_t		nbytes = quant_row_bytes(types[k].type, cols) * (size_t) rows;
		uint8_t    *odd = malloc(nbytes + 1);
		float	   *x = random_floats((size_t) cols);
		float	   *want = malloc((size_t) (rows * cols) * sizeof(float));
		float	   *got = malloc((size_t) (rows * cols) * sizeof(float));
		float		y[2][64];

		memcpy(odd + 1, w, nbytes);
		assert_true(quant_force_kernel("scalar"));
		quant_dequantize(types[k].type, w, rows * cols, want);
		for (int p = 0; p < 3; p++)
		{
			if (!quant_force_kernel(paths[p]))
				continue;
			quant_dequantize(types[k].type, odd + 1, rows * cols, got);
			for (int64_t i = 0; i < rows * cols; i++)
				if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
					fail_msg("%s, %s path: value %lld is %.9g, the scalar path's %.9g", types[k].fixture,
							 paths[p], (long long) i, got[i], want[i]);
			quant_matmul(types[k].type, w, rows, cols, x, 1, y[0]);
			quant_matmul(types[k].type, odd + 1, rows, cols, x, 1, y[1]);
			assert_memory_equal(y[0], y[1], sizeof(y[0]));
		}
		free(w);
		free(odd);
		free(x);
		free(want);
		free(got);
	}
	quant_force_kernel(NULL);
	print_message("every path dequantizes %lld random values of each type to the same bits, "
				  "at an odd address too\n", (long long) (rows * cols));
}

/* The layout queries and the kernel switch. */
static void
test_layout_and_paths(void **state)
{
	(void) state;
	assert_int_equal(quant_row_bytes(GGML_Q4_1, 576), 18 * 20);
	assert_int_equal(quant_row_bytes(GGML_Q6_K, 512), 2 * 210);
	assert_int_equal(quant_row_bytes(GGML_F16, 7), 14);
	assert_false(quant_supported((GgmlType) 4));	/* ggml's removed Q4_2 */
	assert_false(quant_supported((GgmlType) 16));	/* IQ2_XXS */
	assert_false(quant_force_kernel("sse9"));
	assert_true(quant_force_kernel("scalar"));
	assert_string_equal(quant_kernel_name(), "scalar");
	assert_true(quant_force_kernel(NULL));
	print_message("best path on this CPU: %s\n", quant_kernel_name());
	for (int p = 0; p < 3; p++)
		if (quant_force_kernel(paths[p]))
			assert_string_equal(quant_kernel_name(), paths[p]);
	quant_force_kernel(NULL);
}

/*
 * Relative L2 error of got against want; fails (through compare.h, which
 * names the element) on a non-finite value or an error above tol.
 */
static double
l2_error(const char *what, const float *got, const float *want, size_t n, double tol)
{
	Compare		c;

	compare_begin_l2(&c, what, tol, 1e-30);
	for (size_t i = 0; i < n; i++)
		compare_add(&c, i, got[i], want[i]);
	if (c.nonfinite || !(compare_norm_error(&c) <= tol))
		compare_end(&c);
	return compare_norm_error(&c);
}

/* Every path against the reference, every type, rows off the tile size, N = 1 .. 64. */
static void
test_matmul_paths(void **state)
{
	static const int64_t Ns[] = {1, 2, 3, 5, 17, 64};
	double		worst[2][3] = {{0}};	/* [matrix-vector, tiles][path] */

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int k = 0; k < NTYPES; k++)
	{
		const TypeCase *tc = &types[k];
		int			values;
		int			bytes;
		double		type_worst[2][3] = {{0}};

		assert_true(gguf_type_layout(tc->type, &values, &bytes));
		/* 301 rows: two tiles, the second short (or one and a short one); float types get odd widths */
		for (int shape = 0; shape < 2; shape++)
		{
			int64_t		rows = shape == 0 ? 301 : 7;
			int64_t		cols = values == 1 ? (shape == 0 ? 523 : 37) : (shape == 0 ? 768 : 512);
			uint8_t    *w = random_weights(tc, rows, cols);

			for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
			{
				int64_t		N = Ns[i];
				float	   *x = random_floats((size_t) (N * cols));
				float	   *want = malloc((size_t) (N * rows) * sizeof(float));
				float	   *got = malloc((size_t) (N * rows) * sizeof(float));

				quant_matmul_reference(tc->type, w, rows, cols, x, N, want);
				for (int p = 0; p < 3; p++)
				{
					char		what[96];
					double		e;

					if (!quant_force_kernel(paths[p]))
						continue;
					snprintf(what, sizeof(what), "%s %s [%lld,%lld] N=%lld", tc->fixture, paths[p],
							 (long long) rows, (long long) cols, (long long) N);
					for (size_t j = 0; j < (size_t) (N * rows); j++)
						got[j] = NAN;
					quant_matmul(tc->type, w, rows, cols, x, N, got);
					e = l2_error(what, got, want, (size_t) (N * rows), QUANT_MATMUL_L2_TOL);
					if (e > type_worst[N > 4][p])
						type_worst[N > 4][p] = e;
				}
				free(x);
				free(want);
				free(got);
			}
			free(w);
		}
		print_message("%-5s relative L2 error, N <= 4 scalar %.2g avx2 %.2g avx512 %.2g; "
					  "N > 4 (tiles) %.2g %.2g %.2g\n", tc->fixture, type_worst[0][0], type_worst[0][1],
					  type_worst[0][2], type_worst[1][0], type_worst[1][1], type_worst[1][2]);
		for (int route = 0; route < 2; route++)
			for (int p = 0; p < 3; p++)
				if (type_worst[route][p] > worst[route][p])
					worst[route][p] = type_worst[route][p];
	}
	quant_force_kernel(NULL);
	print_message("worst over all types, N <= 4: scalar %.2g, avx2 %.2g, avx512 %.2g; "
				  "tiles: %.2g (limit %.0e)\n", worst[0][0], worst[0][1], worst[0][2],
				  fmax(worst[1][0], fmax(worst[1][1], worst[1][2])), QUANT_MATMUL_L2_TOL);
}

/* dx += dy W against dx0 + dy W in double over the dequantized W. */
static void
test_backward_input(void **state)
{
	static const int64_t Ns[] = {1, 5, 17};
	double		worst = 0;

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int k = 0; k < NTYPES; k++)
	{
		const TypeCase *tc = &types[k];
		int			values;
		int			bytes;
		/* 131 rows: two row tiles, the second short; 523 float columns: a short last column chunk */
		int64_t		rows = 131;
		int64_t		cols;
		uint8_t    *w;
		float	   *wf;

		assert_true(gguf_type_layout(tc->type, &values, &bytes));
		cols = values == 1 ? 523 : 768;
		w = random_weights(tc, rows, cols);
		wf = malloc((size_t) (rows * cols) * sizeof(float));
		quant_dequantize(tc->type, w, rows * cols, wf);
		for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
		{
			int64_t		N = Ns[i];
			float	   *dy = random_floats((size_t) (N * rows));
			float	   *dx = random_floats((size_t) (N * cols));
			float	   *want = malloc((size_t) (N * cols) * sizeof(float));
			char		what[96];
			double		e;

			for (int64_t n = 0; n < N; n++)
				for (int64_t c = 0; c < cols; c++)
				{
					double		s = dx[n * cols + c];

					for (int64_t r = 0; r < rows; r++)
						s += (double) dy[n * rows + r] * wf[r * cols + c];
					want[n * cols + c] = (float) s;
				}
			quant_matmul_backward_input(tc->type, w, rows, cols, dy, N, dx);
			snprintf(what, sizeof(what), "%s backward N=%lld", tc->fixture, (long long) N);
			e = l2_error(what, dx, want, (size_t) (N * cols), QUANT_BACKWARD_L2_TOL);
			if (e > worst)
				worst = e;
			free(dy);
			free(dx);
			free(want);
		}
		free(w);
		free(wf);
	}
	print_message("input gradient, every type: worst relative L2 error %.2g (limit %.0e)\n",
				  worst, QUANT_BACKWARD_L2_TOL);
}

/* Forward (both routes) and backward give the same bits on 1, 2 and 3 threads. */
static void
test_thread_counts(void **state)
{
	static const GgmlType checked[] = {GGML_Q4_1, GGML_Q4_K, GGML_Q6_K, GGML_F16, GGML_Q5_K};
	static const int64_t Ns[] = {1, 3, 17};
	const int64_t rows = 301;

	(void) state;
	for (size_t k = 0; k < sizeof(checked) / sizeof(checked[0]); k++)
	{
		const TypeCase *tc = NULL;

		for (int t = 0; t < NTYPES; t++)
			if (types[t].type == checked[k])
				tc = &types[t];
		for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
		{
			int64_t		N = Ns[i];
			int64_t		cols = tc->type == GGML_F16 ? 515 : 512;
			uint8_t    *w = random_weights(tc, rows, cols);
			float	   *x = random_floats((size_t) (N * cols));
			float	   *dy = random_floats((size_t) (N * rows));
			float	   *dx0 = random_floats((size_t) (N * cols));
			float	   *y[3];
			float	   *dx[3];

			for (int t = 0; t < 3; t++)
			{
				assert_int_equal(peft_threads_init(t + 1, NULL), PEFT_OK);
				y[t] = malloc((size_t) (N * rows) * sizeof(float));
				dx[t] = malloc((size_t) (N * cols) * sizeof(float));
				memcpy(dx[t], dx0, (size_t) (N * cols) * sizeof(float));
				quant_matmul(tc->type, w, rows, cols, x, N, y[t]);
				quant_matmul_backward_input(tc->type, w, rows, cols, dy, N, dx[t]);
			}
			for (int t = 1; t < 3; t++)
			{
				assert_memory_equal(y[t], y[0], (size_t) (N * rows) * sizeof(float));
				assert_memory_equal(dx[t], dx[0], (size_t) (N * cols) * sizeof(float));
			}
			for (int t = 0; t < 3; t++)
			{
				free(y[t]);
				free(dx[t]);
			}
			free(w);
			free(x);
			free(dy);
			free(dx0);
		}
	}
	print_message("forward and backward bit-identical on 1, 2 and 3 threads\n");
}

/* Seconds of CPU time of the calling thread: the machine's other work does not count. */
static double
thread_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/*
 * The Q4_1 matrix-vector product on SmolLM2's 1536 x 576 FFN shape, one
 * thread: GB/s of weights read, per path.  Timed in the thread's CPU time,
 * so that other processes on a shared machine do not slow it.
 */
static void
test_matvec_speed(void **state)
{
	const int64_t rows = 1536;
	const int64_t cols = 576;
	const TypeCase *tc = &types[4];
	uint8_t    *w;
	float	   *x = random_floats((size_t) cols);
	float	   *y = malloc((size_t) rows * sizeof(float));
	size_t		nbytes = quant_row_bytes(GGML_Q4_1, cols) * (size_t) rows;

	(void) state;
	assert_int_equal(tc->type, GGML_Q4_1);
	w = random_weights(tc, rows, cols);
	assert_int_equal(peft_threads_init(1, NULL), PEFT_OK);
	for (int p = 0; p < 3; p++)
	{
		int			reps = 0;
		double		t0;
		double		elapsed;

		if (!quant_force_kernel(paths[p]))
			continue;
		quant_matmul(GGML_Q4_1, w, rows, cols, x, 1, y);
		t0 = thread_seconds();
		do
		{
			quant_matmul(GGML_Q4_1, w, rows, cols, x, 1, y);
			reps++;
		} while ((elapsed = thread_seconds() - t0) < 0.2);
		print_message("Q4_1 [1536,576] matvec, 1 thread, %-6s: %7.1f us, %5.1f GB/s\n", paths[p],
					  1e6 * elapsed / reps, nbytes * reps / elapsed / 1e9);
	}
	quant_force_kernel(NULL);
	free(w);
	free(x);
	free(y);
}

/* Seed the generator. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 1414);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dequantize_fixture),
		cmocka_unit_test(test_dequantize_paths),
		cmocka_unit_test(test_layout_and_paths),
		cmocka_unit_test(test_matmul_paths),
		cmocka_unit_test(test_backward_input),
		cmocka_unit_test(test_thread_counts),
		cmocka_unit_test(test_matvec_speed),
	};

	return cmocka_run_group_tests_name("ggml tensor types: dequantization and products",
									   tests, setup, teardown);
}
