/*
 * test_quant.c - ggml's tensor types (quant.h): dequantization of random
 * blocks of every type bit for bit against the gguf Python package's
 * (test/fixtures/ref_quant.py wrote its output), then every kernel path
 * this CPU has (scalar, AVX2, AVX-512, AVX-512 VNNI) against the scalar
 * reference product on random weights of every type, for N from 1
 * (decoding; integer dot products for Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) to 64 (the tiled
 * BLAS route), the input gradient against a double-precision loop, the
 * same bits for any thread count, and non-finite inputs coming out
 * non-finite.  Prints the matrix-vector speed of Q4_1 on SmolLM2's
 * 1536 x 576 FFN shape on every path, and of the other integer kernels'
 * types on the best.
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
/*
 * The integer matrix-vector kernels (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K on the
 * vector paths) round each block of 32 values of x to int16, a step of
 * max |x| / 32767: on uniform x an error of 1.5e-5 of x's RMS per value.
 * Measured 1.4e-5 to 2.9e-5 (Q8_0 on the 7-row shape) over every type,
 * shape and N.  A wrong scale or minimum on one block would show as 1e-2.
 */
#define QUANT_INT16_L2_TOL 1e-4
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

/* avx512vnni: AVX-512 with AVX512_VNNI's vpdpwssd in the integer kernels */
static const char *const paths[] = {"scalar", "avx2", "avx512", "avx512vnni"};
#define NPATHS ((int) (sizeof(paths) / sizeof(paths[0])))

/* Whether quant_matmul multiplies type on path p by integer dot products with x rounded to int16. */
static bool
int16_route(GgmlType type, int p, int64_t N)
{
	return p > 0 && N <= 4 && (type == GGML_Q4_0 || type == GGML_Q4_1 || type == GGML_Q8_0 ||
							   type == GGML_Q4_K || type == GGML_Q6_K);
}

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
		for (int p = 0; p < NPATHS; p++)
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
		for (int p = 0; p < NPATHS; p++)
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
	for (int p = 0; p < NPATHS; p++)
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

/* The routes quant_matmul takes, for the errors the test reports. */
enum
{
	ROUTE_FLOAT_MATVEC,			/* N <= 4, float dot products */
	ROUTE_INT16_MATVEC,			/* N <= 4, integer dot products with x as int16 */
	ROUTE_TILES,				/* N > 4, dequantized tiles through BLAS */
	NROUTES
};

/*
 * Every path against the reference, every type, rows off the tile size,
 * N = 1 .. 64; a third shape gives the 32-value types an odd number of
 * blocks a row (the integer kernels take blocks in pairs).
 */
static void
test_matmul_paths(void **state)
{
	static const int64_t Ns[] = {1, 2, 3, 4, 5, 17, 64};
	static const char *const route_names[] = {"float matvec", "int16 matvec", "tiles"};
	double		worst[NROUTES] = {0};

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int k = 0; k < NTYPES; k++)
	{
		const TypeCase *tc = &types[k];
		int			values;
		int			bytes;
		double		type_worst[NROUTES][NPATHS] = {{0}};
		char		line[256];
		int			len;

		assert_true(gguf_type_layout(tc->type, &values, &bytes));
		/* 301 rows: two tiles, the second short (or one and a short one); float types get odd widths */
		for (int shape = 0; shape < 3; shape++)
		{
			static const int64_t shape_rows[] = {301, 7, 33};
			static const int64_t float_cols[] = {523, 37, 101};
			static const int64_t block_cols[] = {768, 512, 544};
			int64_t		rows = shape_rows[shape];
			int64_t		cols = values == 1 ? float_cols[shape] :
				shape == 2 && values == 256 ? 1280 : block_cols[shape];
			uint8_t    *w = random_weights(tc, rows, cols);

			for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
			{
				int64_t		N = Ns[i];
				float	   *x = random_floats((size_t) (N * cols));
				float	   *want = malloc((size_t) (N * rows) * sizeof(float));
				float	   *got = malloc((size_t) (N * rows) * sizeof(float));

				quant_matmul_reference(tc->type, w, rows, cols, x, N, want);
				for (int p = 0; p < NPATHS; p++)
				{
					int			route = N > 4 ? ROUTE_TILES :
						int16_route(tc->type, p, N) ? ROUTE_INT16_MATVEC : ROUTE_FLOAT_MATVEC;
					char		what[96];
					double		e;

					if (!quant_force_kernel(paths[p]))
						continue;
					snprintf(what, sizeof(what), "%s %s [%lld,%lld] N=%lld", tc->fixture, paths[p],
							 (long long) rows, (long long) cols, (long long) N);
					for (size_t j = 0; j < (size_t) (N * rows); j++)
						got[j] = NAN;
					quant_matmul(tc->type, w, rows, cols, x, N, got);
					e = l2_error(what, got, want, (size_t) (N * rows),
								 route == ROUTE_INT16_MATVEC ? QUANT_INT16_L2_TOL : QUANT_MATMUL_L2_TOL);
					if (e > type_worst[route][p])
						type_worst[route][p] = e;
				}
				free(x);
				free(want);
				free(got);
			}
			free(w);
		}
		len = snprintf(line, sizeof(line), "%-5s relative L2 error", tc->fixture);
		for (int route = 0; route < NROUTES; route++)
		{
			bool		any = false;

			for (int p = 0; p < NPATHS; p++)
			{
				if (type_worst[route][p] == 0)
					continue;
				if (!any)
					len += snprintf(line + len, sizeof(line) - len, "; %s:", route_names[route]);
				len += snprintf(line + len, sizeof(line) - len, " %s %.2g", paths[p], type_worst[route][p]);
				any = true;
				if (type_worst[route][p] > worst[route])
					worst[route] = type_worst[route][p];
			}
		}
		print_message("%s\n", line);
	}
	quant_force_kernel(NULL);
	print_message("worst over all types and paths: float matvec %.2g, tiles %.2g (limit %.0e); "
				  "int16 matvec %.2g (limit %.0e)\n", worst[ROUTE_FLOAT_MATVEC], worst[ROUTE_TILES],
				  QUANT_MATMUL_L2_TOL, worst[ROUTE_INT16_MATVEC], QUANT_INT16_L2_TOL);
}

/*
 * With rows_alone (decoding steps of many sequences) every row of a
 * product of 5 to 64 rows equals, bit for bit, that row computed alone,
 * on every path; and stays within the matrix-vector route's error of the
 * reference.  Off again, the same rows take the tiles.
 */
static void
test_rows_alone(void **state)
{
	static const int64_t Ns[] = {5, 8, 16, 33, 64};
	const int64_t rows = 301;

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	for (int k = 0; k < NTYPES; k++)
	{
		const TypeCase *tc = &types[k];
		int			values;
		int			bytes;
		int64_t		cols;
		uint8_t    *w;

		assert_true(gguf_type_layout(tc->type, &values, &bytes));
		cols = values == 1 ? 523 : values == 256 ? 1280 : 768;
		w = random_weights(tc, rows, cols);
		for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
		{
			int64_t		N = Ns[i];
			float	   *x = random_floats((size_t) (N * cols));
			float	   *want = malloc((size_t) (N * rows) * sizeof(float));
			float	   *alone = malloc((size_t) (N * rows) * sizeof(float));
			float	   *got = malloc((size_t) (N * rows) * sizeof(float));

			quant_matmul_reference(tc->type, w, rows, cols, x, N, want);
			for (int p = 0; p < NPATHS; p++)
			{
				char		what[96];

				if (!quant_force_kernel(paths[p]))
					continue;
				snprintf(what, sizeof(what), "%s %s rows alone [%lld,%lld] N=%lld", tc->fixture, paths[p],
						 (long long) rows, (long long) cols, (long long) N);
				for (int64_t n = 0; n < N; n++)
					quant_matmul(tc->type, w, rows, cols, x + n * cols, 1, alone + n * rows);
				assert_false(quant_set_rows_alone(true));
				quant_matmul(tc->type, w, rows, cols, x, N, got);
				assert_true(quant_set_rows_alone(false));
				if (memcmp(got, alone, (size_t) (N * rows) * sizeof(float)) != 0)
					fail_msg("%s: a row differs from the same row computed alone", what);
				(void) l2_error(what, got, want, (size_t) (N * rows),
								int16_route(tc->type, p, 1) ? QUANT_INT16_L2_TOL : QUANT_MATMUL_L2_TOL);
			}
			free(x);
			free(want);
			free(alone);
			free(got);
		}
		free(w);
	}
	quant_force_kernel(NULL);
	print_message("rows alone: every row of 5 to 64 equals itself computed alone, on every path and type\n");
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

/*
 * Forward (both routes) and backward give the same bits on 1, 2 and 3
 * threads, on every path this CPU has; the 301 rows split into chunks
 * that do not end on a block pair of the integer kernels' work.
 */
static void
test_thread_counts(void **state)
{
	static const GgmlType checked[] = {GGML_Q4_1, GGML_Q4_0, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_F16,
	GGML_Q5_K};
	static const int64_t Ns[] = {1, 3, 17};
	const int64_t rows = 301;
	int			compared = 0;

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

			for (int p = 0; p < NPATHS; p++)
			{
				float	   *y[3];
				float	   *dx[3];

				if (!quant_force_kernel(paths[p]))
					continue;
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
				compared++;
			}
			free(w);
			free(x);
			free(dy);
			free(dx0);
		}
	}
	quant_force_kernel(NULL);
	print_message("forward and backward bit-identical on 1, 2 and 3 threads (%d type, N and path cases)\n",
				  compared);
}

/*
 * A NaN or an infinity in x makes every output of its column non-finite
 * on every path, as in float arithmetic (the integer kernels must not
 * round it into some int16), and leaves the other columns as they were;
 * a NaN scale in a block of W makes its row's outputs NaN.
 */
static void
test_matvec_nonfinite(void **state)
{
	static const GgmlType checked[] = {GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_F16};
	const int64_t rows = 37;
	const int64_t N = 3;

	(void) state;
	for (size_t k = 0; k < sizeof(checked) / sizeof(checked[0]); k++)
	{
		const TypeCase *tc = NULL;
		int			values;
		int			bytes;

		for (int t = 0; t < NTYPES; t++)
			if (types[t].type == checked[k])
				tc = &types[t];
		assert_true(gguf_type_layout(tc->type, &values, &bytes));
		for (int bad = 0; bad < 3; bad++)
		{
			/* an odd number of blocks: the last one alone in the integer kernels */
			int64_t		cols = values == 256 ? 768 : 544;
			uint8_t    *w = random_weights(tc, rows, cols);
			float	   *x = random_floats((size_t) (N * cols));
			float	   *want = malloc((size_t) (N * rows) * sizeof(float));
			float	   *got = malloc((size_t) (N * rows) * sizeof(float));
			const float bad_values[] = {NAN, INFINITY, -INFINITY};

			quant_matmul_reference(tc->type, w, rows, cols, x, N, want);
			/* column 1 gets the bad value in its last block, then in its first */
			x[cols + cols - 3] = bad_values[bad];
			for (int p = 0; p < NPATHS; p++)
			{
				if (!quant_force_kernel(paths[p]))
					continue;
				for (int where = 0; where < 2; where++)
				{
					x[cols + cols - 3] = where == 0 ? bad_values[bad] : -0.5f;
					x[cols + 5] = where == 1 ? bad_values[bad] : 0.25f;
					quant_matmul(tc->type, w, rows, cols, x, N, got);
					for (int64_t r = 0; r < rows; r++)
						if (isfinite(got[rows + r]))
							fail_msg("%s %s: x[1] holds %g, yet y[1, %lld] = %g", tc->fixture, paths[p],
									 bad_values[bad], (long long) r, got[rows + r]);
					for (int n = 0; n < N; n += 2)
					{
						char		what[96];

						snprintf(what, sizeof(what), "%s %s column %d beside a non-finite one", tc->fixture,
								 paths[p], n);
						l2_error(what, got + n * rows, want + n * rows, (size_t) rows, QUANT_INT16_L2_TOL);
					}
				}
			}
			free(w);
			free(x);
			free(want);
			free(got);
		}
		/* a NaN scale in the third block of row 4 (the float types have none) */
		if (values > 1)
		{
			int64_t		cols = values == 256 ? 768 : 544;
			uint8_t    *w = random_weights(tc, rows, cols);
			float	   *x = random_floats((size_t) (N * cols));
			float	   *got = malloc((size_t) (N * rows) * sizeof(float));
			uint16_t	nan_half = 0x7e00;
			size_t		row_bytes = quant_row_bytes(tc->type, cols);
			int64_t		block = values == 256 ? 1 : 2;

			memcpy(w + 4 * row_bytes + block * bytes + tc->half_fields[0], &nan_half, 2);
			for (int p = 0; p < NPATHS; p++)
			{
				if (!quant_force_kernel(paths[p]))
					continue;
				quant_matmul(tc->type, w, rows, cols, x, N, got);
				for (int n = 0; n < N; n++)
					for (int64_t r = 0; r < rows; r++)
						if (isfinite(got[n * rows + r]) == (r == 4))
							fail_msg("%s %s: y[%d, %lld] = %g with a NaN scale in row 4", tc->fixture,
									 paths[p], n, (long long) r, got[n * rows + r]);
			}
			free(w);
			free(x);
			free(got);
		}
	}
	quant_force_kernel(NULL);
	print_message("a NaN or an infinity in x or a NaN scale in W comes out non-finite on every path\n");
}

/* Seconds of CPU time of the calling thread: the machine's other work does not count. */
static double
thread_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Microseconds one matrix-vector product of W [rows, cols] of tc's type takes on the active path, one thread. */
static double
matvec_us(const TypeCase *tc, const uint8_t *w, int64_t rows, int64_t cols, const float *x, float *y)
{
	int			reps = 0;
	double		t0;
	double		elapsed;

	quant_matmul(tc->type, w, rows, cols, x, 1, y);
	t0 = thread_seconds();
	do
	{
		quant_matmul(tc->type, w, rows, cols, x, 1, y);
		reps++;
	} while ((elapsed = thread_seconds() - t0) < 0.2);
	return 1e6 * elapsed / reps;
}

/*
 * The Q4_1 matrix-vector product on SmolLM2's 1536 x 576 FFN shape, one
 * thread, per path, then the other integer kernels' types on the best
 * path: GB/s of weights read (from the L2 cache at these sizes).  Timed in
 * the thread's CPU time, so that other processes on a shared machine do
 * not slow it.
 */
static void
test_matvec_speed(void **state)
{
	static const GgmlType others[] = {GGML_Q8_0, GGML_Q4_0, GGML_Q4_K, GGML_Q6_K};
	const int64_t rows = 1536;
	float	   *x = random_floats(768);
	float	   *y = malloc((size_t) rows * sizeof(float));

	(void) state;
	assert_int_equal(peft_threads_init(1, NULL), PEFT_OK);
	for (int k = -1; k < (int) (sizeof(others) / sizeof(others[0])); k++)
	{
		const TypeCase *tc = NULL;
		/* the K-quants need a multiple of 256 columns */
		int64_t		cols;
		uint8_t    *w;
		size_t		nbytes;

		for (int t = 0; t < NTYPES; t++)
			if (types[t].type == (k < 0 ? GGML_Q4_1 : others[k]))
				tc = &types[t];
		cols = tc->type == GGML_Q4_K || tc->type == GGML_Q6_K ? 768 : 576;
		w = random_weights(tc, rows, cols);
		nbytes = quant_row_bytes(tc->type, cols) * (size_t) rows;
		for (int p = k < 0 ? 0 : NPATHS - 1; p >= 0 && p < NPATHS; p += k < 0 ? 1 : -1)
		{
			double		us;

			if (!quant_force_kernel(paths[p]))
				continue;
			us = matvec_us(tc, w, rows, cols, x, y);
			print_message("%-4s [%lld,%lld] matvec, 1 thread, %-10s: %6.1f us, %5.1f GB/s\n", tc->fixture,
						  (long long) rows, (long long) cols, paths[p], us, nbytes / us / 1e3);
			/* the other types: the best path only */
			if (k >= 0)
				break;
		}
		free(w);
	}
	quant_force_kernel(NULL);
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
		cmocka_unit_test(test_rows_alone),
		cmocka_unit_test(test_backward_input),
		cmocka_unit_test(test_thread_counts),
		cmocka_unit_test(test_matvec_nonfinite),
		cmocka_unit_test(test_matvec_speed),
	};

	return cmocka_run_group_tests_name("ggml tensor types: dequantization and products",
									   tests, setup, teardown);
}
