/*
 * test_gpu_quant.c - the CUDA kernels for ggml's quantized weights
 * (kernels/quant_ops.h) against the CPU's (src/engine/ops/quant.h) on random
 * blocks of every type they take: dequantization must give the same bits
 * as quant_dequantize (the same float operations, none fused), and the
 * dequantizing matrix-vector product must match quant_matmul_reference
 * (a double sum over the dequantized row) and quant_matmul (what the CPU
 * backend runs).  Outputs are poisoned with 0xFF (NaN) before each GPU
 * run.  Tests that need a device skip without one; the argument checks
 * run anyway.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "gguf.h"
#include "quant.h"
#include "quant_ops.h"
#include "rng.h"
#include "threadpool.h"

#include "gpu_test_util.h"

/*
 * Relative tolerances (max|gpu - cpu| / max|cpu|).  Dequantization is
 * exact by construction.  The product's is not yet measured on a GPU: it
 * is set from float sums of 512 to 4096 terms in another order than the
 * reference's double sum, to be replaced by a few times the figure of the
 * first run.
 */
#define TOL_DEQUANTIZE 0
#define TOL_MATVEC 1e-5

/* The types the kernels take, with what the test calls them. */
static const struct
{
	GgmlType	type;
	const char *name;
}			types[] = {
	{GGML_F32, "F32"}, {GGML_F16, "F16"}, {GGML_BF16, "BF16"}, {GGML_Q4_0, "Q4_0"},
	{GGML_Q4_1, "Q4_1"}, {GGML_Q8_0, "Q8_0"}, {GGML_Q4_K, "Q4_K"}, {GGML_Q6_K, "Q6_K"}
};

#define NTYPES (sizeof(types) / sizeof(types[0]))

static PeftRng rng;

/* Seed the generator; two engine threads run the CPU products. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 2718);
	return peft_threads_init(2, NULL) == PEFT_OK ? 0 : -1;
}

/* Stop the engine threads. */
static int
teardown(void **state)
{
	(void) state;
	peft_threads_shutdown();
	return 0;
}

/* A random byte. */
static uint8_t
random_byte(void)
{
	return (uint8_t) (peft_rng_uniform(&rng) * 256);
}

/*
 * A random normal fp16 of either sign with magnitude in [2^(lo-15),
 * 2^(hi-15+1)): exponent field in [lo, hi], any mantissa.
 */
static uint16_t
random_half(int lo, int hi)
{
	uint16_t	sign = random_byte() & 1;
	uint16_t	exponent = (uint16_t) (lo + (int) (peft_rng_uniform(&rng) * (hi - lo + 1)));
	uint16_t	mantissa = (uint16_t) (peft_rng_uniform(&rng) * 1024);

	return (uint16_t) (sign << 15 | exponent << 10 | mantissa);
}

/* Store h little-endian at p. */
static void
put_half(uint8_t *p, uint16_t h)
{
	p[0] = (uint8_t) (h & 0xff);
	p[1] = (uint8_t) (h >> 8);
}

/*
 * A new [rows, cols] weight of type: random quants and scale bytes, its
 * fp16 scales valid and of a sane size (random bytes could be NaN or
 * infinite), float values in +-[2^-6, 2^2).  *bytes receives its size.
 */
static uint8_t *
random_weight(GgmlType type, int64_t rows, int64_t cols, size_t *bytes)
{
	size_t		row_bytes = quant_row_bytes(type, cols);
	size_t		total = row_bytes * (size_t) rows;
	uint8_t    *w = host_alloc(total);
	int			values;
	int			block;

	assert_true(gguf_type_layout((uint32_t) type, &values, &block));
	for (size_t i = 0; i < total; i++)
		w[i] = random_byte();
	for (size_t at = 0; at < total; at += (size_t) block)
	{
		uint8_t    *b = w + at;

		switch (type)
		{
			case GGML_F32:
				{
					float		f = (float) ((random_byte() & 1 ? -1 : 1) *
											 ldexp(1.0 + peft_rng_uniform(&rng), (int) (random_byte() % 8) - 6));

					memcpy(b, &f, sizeof(f));
				}
				break;
			case GGML_F16:
				put_half(b, random_half(9, 16));
				break;
			case GGML_BF16:
				/* the top half of a float: exponent field 120..127, magnitude in [2^-7, 2) */
				b[1] = (uint8_t) ((random_byte() & 0x80) | 0x3c | (random_byte() & 3));
				break;
			case GGML_Q4_0:
			case GGML_Q8_0:
				put_half(b, random_half(6, 12));	/* d */
				break;
			case GGML_Q4_1:
				put_half(b, random_half(6, 12));	/* d */
				put_half(b + 2, random_half(8, 14));	/* m */
				break;
			case GGML_Q4_K:
				put_half(b, random_half(6, 12));	/* d */
				put_half(b + 2, random_half(6, 12));	/* dmin */
				break;
			case GGML_Q6_K:
				put_half(b + 208, random_half(6, 12));	/* d */
				break;
			default:
				fail_msg("no generator for type %d", (int) type);
		}
	}
	*bytes = total;
	return w;
}

/* Columns of a test weight: F32/F16/BF16 ragged (no multiple of 8), blocks whole. */
static int64_t
test_cols(GgmlType type, int64_t blocks_of_256)
{
	int			values;
	int			block;

	assert_true(gguf_type_layout((uint32_t) type, &values, &block));
	return values == 1 ? 256 * blocks_of_256 + 3 : 256 * blocks_of_256;
}

/* Every type the CPU side knows: the kernels take exactly the ones listed, with gguf.h's layout. */
static void
test_supported_types(void **state)
{
	(void) state;
	for (size_t t = 0; t < NTYPES; t++)
	{
		assert_true(quant_supported(types[t].type));
		assert_int_equal(peft_cuda_quant_supported((int) types[t].type), 1);
	}
	assert_int_equal(peft_cuda_quant_supported(GGML_Q5_0), 0);
	assert_int_equal(peft_cuda_quant_supported(GGML_Q2_K), 0);
	assert_int_equal(peft_cuda_quant_supported(12345), 0);
}

/* Dequantization, every type, against quant_dequantize: the same bits. */
static void
test_dequantize(void **state)
{
	(void) state;
	require_device();
	for (size_t t = 0; t < NTYPES; t++)
	{
		GgmlType	type = types[t].type;
		int64_t		rows = 7;
		int64_t		cols = test_cols(type, 4);
		int64_t		n = rows * cols;
		size_t		bytes;
		uint8_t    *w = random_weight(type, rows, cols, &bytes);
		float	   *want = host_alloc((size_t) n * sizeof(float));
		float	   *got = host_alloc((size_t) n * sizeof(float));
		void	   *d_w = to_gpu(w, bytes);
		float	   *d_out = poisoned_gpu((size_t) n * sizeof(float));
		double		err;

		quant_dequantize(type, w, n, want);
		gpu_ok(peft_cuda_quant_dequantize((int) type, d_w, n, d_out, NULL,
										  gpu_msg, sizeof(gpu_msg)));
		from_gpu(got, d_out, (size_t) n * sizeof(float));
		err = relative_error(got, want, (size_t) n);
		print_message("dequantize %-6s n=%-8lld rel err %.3g (limit %g)\n", types[t].name,
					  (long long) n, err, (double) TOL_DEQUANTIZE);
		if (!(err <= TOL_DEQUANTIZE))
			fail_msg("dequantize %s: relative error %.3g", types[t].name, err);
		assert_memory_equal(got, want, (size_t) n * sizeof(float));

		peft_cuda_free(d_w);
		peft_cuda_free(d_out);
		free(w);
		free(want);
		free(got);
	}
}

/*
 * The dequantizing product, every type, for N = 1 (decoding), 3 and 6
 * (two groups of four rows of x, the second partial), against the double
 * reference and the CPU backend's quant_matmul.
 */
static void
test_matvec(void **state)
{
	static const int64_t Ns[] = {1, 3, 6};

	(void) state;
	require_device();
	for (size_t t = 0; t < NTYPES; t++)
		for (size_t k = 0; k < sizeof(Ns) / sizeof(Ns[0]); k++)
		{
			GgmlType	type = types[t].type;
			int64_t		N = Ns[k];
			/* 67 rows: not a multiple of the four warps of a block */
			int64_t		rows = 67;
			int64_t		cols = test_cols(type, k == 0 ? 16 : 2);
			size_t		bytes;
			uint8_t    *w = random_weight(type, rows, cols, &bytes);
			float	   *x = host_alloc((size_t) (N * cols) * sizeof(float));
			float	   *want = host_alloc((size_t) (N * rows) * sizeof(float));
			float	   *cpu = host_alloc((size_t) (N * rows) * sizeof(float));
			void	   *d_w = to_gpu(w, bytes);
			float	   *d_x;
			float	   *d_y = poisoned_gpu((size_t) (N * rows) * sizeof(float));
			char		what[64];
			float	   *got = host_alloc((size_t) (N * rows) * sizeof(float));
			double		err_ref;
			double		err_cpu;

			fill_random(x, (size_t) (N * cols), -1.0, 1.0, &rng);
			d_x = to_gpu(x, (size_t) (N * cols) * sizeof(float));
			quant_matmul_reference(type, w, rows, cols, x, N, want);
			quant_matmul(type, w, rows, cols, x, N, cpu);
			gpu_ok(peft_cuda_quant_matvec((int) type, d_w, rows, cols, d_x, N, d_y, NULL,
										  gpu_msg, sizeof(gpu_msg)));
			from_gpu(got, d_y, (size_t) (N * rows) * sizeof(float));
			err_ref = relative_error(got, want, (size_t) (N * rows));
			err_cpu = relative_error(got, cpu, (size_t) (N * rows));
			snprintf(what, sizeof(what), "matvec %s N=%lld cols=%lld", types[t].name,
					 (long long) N, (long long) cols);
			print_message("%-32s rel err %.3g vs reference, %.3g vs quant_matmul (limit %.1g)\n",
						  what, err_ref, err_cpu, TOL_MATVEC);
			if (!(err_ref <= TOL_MATVEC) || !(err_cpu <= TOL_MATVEC))
				fail_msg("%s: relative errors %.3g, %.3g > %.1g", what, err_ref, err_cpu,
						 TOL_MATVEC);

			peft_cuda_free(d_w);
			peft_cuda_free(d_x);
			peft_cuda_free(d_y);
			free(w);
			free(x);
			free(want);
			free(cpu);
			free(got);
		}
}

/* Unsupported types and partial blocks are refused before anything is launched (no device needed). */
static void
test_argument_checks(void **state)
{
	float		x = 0;

	(void) state;
	assert_int_equal(peft_cuda_quant_dequantize(GGML_Q5_K, &x, 256, &x, NULL,
												gpu_msg, sizeof(gpu_msg)), -1);
	print_message("unsupported type: %s\n", gpu_msg);
	assert_int_equal(peft_cuda_quant_dequantize(GGML_Q4_0, &x, 33, &x, NULL,
												gpu_msg, sizeof(gpu_msg)), -1);
	print_message("partial block: %s\n", gpu_msg);
	assert_int_equal(peft_cuda_quant_matvec(GGML_Q4_K, &x, 4, 255, &x, 1, &x, NULL,
											gpu_msg, sizeof(gpu_msg)), -1);
	assert_int_equal(peft_cuda_quant_matvec(GGML_Q8_0, &x, 4, 32, &x, -1, &x, NULL,
											gpu_msg, sizeof(gpu_msg)), -1);
	assert_int_equal(peft_cuda_quant_matvec(GGML_Q8_0, NULL, 0, 32, NULL, 1, NULL, NULL,
											gpu_msg, sizeof(gpu_msg)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_supported_types),
		cmocka_unit_test(test_argument_checks),
		cmocka_unit_test(test_dequantize),
		cmocka_unit_test(test_matvec),
	};

	return cmocka_run_group_tests_name("CUDA quantized weights against the CPU", tests,
									   setup, teardown);
}
