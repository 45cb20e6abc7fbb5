/*
 * test_gpu_pooling.c - the CUDA pooling kernels (kernels/pooling.cu:
 * mean and [CLS] pooling of packed sequences, L2 normalisation, scatter
 * of packed rows to the padded layout) against the CPU reference
 * (src/engine/ops/ops_varlen.h, ops.h) on fresh random inputs: outputs are
 * poisoned with 0xFF (NaN) before each GPU run so a kernel that skips an
 * element fails, and accumulated gradients start from random non-zero
 * values so += is tested.  Every test skips when no CUDA device is visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "ops.h"
#include "ops_varlen.h"
#include "rng.h"

#define TOLERANCE 1e-5

#include "gpu_test_util.h"

/* Sequence lengths of the pooling tests: an empty one, a single token, long ones. */
static const int pool_lengths[] = {5, 0, 1, 12, 3, 0, 31};
#define POOL_B ((int) (sizeof(pool_lengths) / sizeof(pool_lengths[0])))

/* seq_start[POOL_B + 1] of pool_lengths; returns N. */
static int
pool_seq_start(int32_t *seq_start)
{
	seq_start[0] = 0;
	for (int b = 0; b < POOL_B; b++)
		seq_start[b + 1] = seq_start[b] + pool_lengths[b];
	return seq_start[POOL_B];
}

/*
 * Mean and [CLS] pooling, forward (into poisoned outputs, so the empty
 * sequences' zero rows must be written) and backward (accumulated onto
 * random gradients; the empty sequences' dout must go nowhere).
 */
static void
test_pool(void **state)
{
	static const int widths[] = {768, 45, 1};
	int32_t		seq_start[POOL_B + 1];
	int			N = pool_seq_start(seq_start);
	int			B = POOL_B;
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 31);
	for (size_t s = 0; s < sizeof(widths) / sizeof(widths[0]); s++)
	{
		int			C = widths[s];
		size_t		nc = (size_t) N * C;
		size_t		bc = (size_t) B * C;
		float	   *inp = host_alloc(nc * sizeof(float));
		float	   *dout = host_alloc(bc * sizeof(float));
		float	   *dinp0 = host_alloc(nc * sizeof(float));
		float	   *dinp = host_alloc(nc * sizeof(float));
		float	   *out = host_alloc(bc * sizeof(float));
		int32_t    *d_seq;
		float	   *d_inp, *d_dout, *d_dinp, *d_out;

		/* an offset mean, so a kernel that divides by the wrong count fails */
		fill_random(inp, nc, -1.0, 3.0, &rng);
		fill_random(dout, bc, -1.0, 1.0, &rng);
		fill_random(dinp0, nc, -1.0, 1.0, &rng);
		d_seq = to_gpu(seq_start, sizeof(seq_start));
		d_inp = to_gpu(inp, nc * sizeof(float));
		d_dout = to_gpu(dout, bc * sizeof(float));
		d_dinp = to_gpu(dinp0, nc * sizeof(float));
		d_out = poisoned_gpu(bc * sizeof(float));

		varlen_mean_pool_forward(out, inp, seq_start, B, C);
		gpu_ok(peft_cuda_mean_pool_forward(d_out, d_inp, d_seq, B, C,
										   gpu_msg, sizeof(gpu_msg)));
		check_close("mean_pool_forward", d_out, out, bc);

		memcpy(dinp, dinp0, nc * sizeof(float));
		varlen_mean_pool_backward(dinp, dout, seq_start, B, C);
		gpu_ok(peft_cuda_mean_pool_backward(d_dinp, d_dout, d_seq, B, C,
											gpu_msg, sizeof(gpu_msg)));
		check_close("mean_pool_backward", d_dinp, dinp, nc);

		gpu_ok(peft_cuda_memset(d_out, 0xFF, bc * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		varlen_cls_pool_forward(out, inp, seq_start, B, C);
		gpu_ok(peft_cuda_cls_pool_forward(d_out, d_inp, d_seq, B, C,
										  gpu_msg, sizeof(gpu_msg)));
		check_close("cls_pool_forward", d_out, out, bc);

		memcpy(dinp, dinp0, nc * sizeof(float));
		varlen_cls_pool_backward(dinp, dout, seq_start, B, C);
		gpu_ok(peft_cuda_upload(d_dinp, dinp0, nc * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_cls_pool_backward(d_dinp, d_dout, d_seq, B, C,
										   gpu_msg, sizeof(gpu_msg)));
		check_close("cls_pool_backward", d_dinp, dinp, nc);

		peft_cuda_free(d_seq);
		peft_cuda_free(d_inp);
		peft_cuda_free(d_dout);
		peft_cuda_free(d_dinp);
		peft_cuda_free(d_out);
		free(inp);
		free(dout);
		free(dinp0);
		free(dinp);
		free(out);
	}
}

/*
 * L2 normalisation against l2norm_forward, out and norm, with one row
 * scaled to ~1e-14 so its norm falls under the 1e-12 clamp; then with
 * norm NULL, and in place (out == inp).
 */
static void
test_l2norm(void **state)
{
	static const int shapes[][2] = {{9, 768}, {37, 45}, {3, 1}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 32);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			B = shapes[s][0], C = shapes[s][1];
		size_t		bc = (size_t) B * C;
		float	   *inp = host_alloc(bc * sizeof(float));
		float	   *out = host_alloc(bc * sizeof(float));
		float	   *norm = host_alloc(B * sizeof(float));
		float	   *d_inp, *d_out, *d_norm;

		fill_random(inp, bc, -1.0, 1.0, &rng);
		/* row 1: below the clamp, divided by 1e-12 rather than its norm */
		for (int c = 0; c < C; c++)
			inp[(size_t) C + c] *= 1e-14f;
		d_inp = to_gpu(inp, bc * sizeof(float));
		d_out = poisoned_gpu(bc * sizeof(float));
		d_norm = poisoned_gpu(B * sizeof(float));

		l2norm_forward(out, norm, inp, B, C);
		gpu_ok(peft_cuda_l2norm_forward(d_out, d_norm, d_inp, B, C,
										gpu_msg, sizeof(gpu_msg)));
		check_close("l2norm_forward out", d_out, out, bc);
		check_close("l2norm_forward norm", d_norm, norm, B);

		gpu_ok(peft_cuda_memset(d_out, 0xFF, bc * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_l2norm_forward(d_out, NULL, d_inp, B, C,
										gpu_msg, sizeof(gpu_msg)));
		check_close("l2norm_forward norm NULL", d_out, out, bc);

		gpu_ok(peft_cuda_l2norm_forward(d_inp, NULL, d_inp, B, C,
										gpu_msg, sizeof(gpu_msg)));
		check_close("l2norm_forward in place", d_inp, out, bc);

		peft_cuda_free(d_inp);
		peft_cuda_free(d_out);
		peft_cuda_free(d_norm);
		free(inp);
		free(out);
		free(norm);
	}
}

/*
 * Scatter of packed rows to a poisoned [B*T, C] (every padded row must be
 * cleared) against varlen_scatter_rows, with an all-padding row.
 */
static void
test_scatter_rows(void **state)
{
	static const int shapes[][3] = {{4, 9, 768}, {5, 7, 45}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 33);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			B = shapes[s][0], T = shapes[s][1], C = shapes[s][2];
		int			BT = B * T;
		int32_t    *mask = host_alloc((size_t) BT * sizeof(int32_t));
		int32_t    *seq_start = host_alloc((size_t) (B + 1) * sizeof(int32_t));
		int32_t    *rows = host_alloc((size_t) BT * sizeof(int32_t));
		float	   *packed;
		float	   *out = host_alloc((size_t) BT * C * sizeof(float));
		int32_t    *d_rows;
		float	   *d_packed, *d_out;
		int			N;

		for (int i = 0; i < BT; i++)
			mask[i] = peft_rng_uniform(&rng) < 0.6;
		for (int t = 0; t < T; t++)
			mask[(size_t) 2 * T + t] = 0;
		mask[0] = 1;
		N = varlen_pack(seq_start, rows, mask, B, T);
		packed = host_alloc((size_t) N * C * sizeof(float));
		fill_random(packed, (size_t) N * C, -1.0, 1.0, &rng);
		d_rows = to_gpu(rows, (size_t) N * sizeof(int32_t));
		d_packed = to_gpu(packed, (size_t) N * C * sizeof(float));
		d_out = poisoned_gpu((size_t) BT * C * sizeof(float));

		varlen_scatter_rows(out, packed, rows, N, BT, C);
		gpu_ok(peft_cuda_scatter_rows(d_out, d_packed, d_rows, N, BT, C,
									  gpu_msg, sizeof(gpu_msg)));
		check_close("scatter_rows", d_out, out, (size_t) BT * C);

		/* No packed row at all: all zeros. */
		gpu_ok(peft_cuda_memset(d_out, 0xFF, (size_t) BT * C * sizeof(float),
								gpu_msg, sizeof(gpu_msg)));
		varlen_scatter_rows(out, packed, rows, 0, BT, C);
		gpu_ok(peft_cuda_scatter_rows(d_out, d_packed, d_rows, 0, BT, C,
									  gpu_msg, sizeof(gpu_msg)));
		check_close("scatter_rows N=0", d_out, out, (size_t) BT * C);

		peft_cuda_free(d_rows);
		peft_cuda_free(d_packed);
		peft_cuda_free(d_out);
		free(mask);
		free(seq_start);
		free(rows);
		free(packed);
		free(out);
	}
}

/* Empty sizes are no-ops (even with NULL tensors); negative sizes and NULL tensors are errors. */
static void
test_pool_arguments(void **state)
{
	float		dummy = 1.0f;

	(void) state;
	require_device();
	assert_int_equal(peft_cuda_mean_pool_forward(NULL, NULL, NULL, 0, 8,
												 gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_cls_pool_forward(NULL, NULL, NULL, 4, 0,
												gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_mean_pool_backward(NULL, NULL, NULL, 4, 8,
												  gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_scatter_rows(NULL, NULL, NULL, 0, 0, 8,
											gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_not_equal(peft_cuda_mean_pool_forward(&dummy, &dummy, NULL, -1, 8,
													 gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_cls_pool_forward(&dummy, &dummy, NULL, 2, 8,
													gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_l2norm_forward(&dummy, NULL, NULL, 2, 8,
												  gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_scatter_rows(&dummy, NULL, NULL, 3, 4, -2,
												gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool),
		cmocka_unit_test(test_l2norm),
		cmocka_unit_test(test_scatter_rows),
		cmocka_unit_test(test_pool_arguments),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
