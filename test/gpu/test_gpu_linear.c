/*
 * test_gpu_linear.c - the CUDA helpers around the linear layers' cuBLAS
 * products (kernels/linear.cu: bias add, bias gradient, tensor sum)
 * against the CPU reference (src/engine/ops/ops.h) on fresh random inputs:
 * outputs are poisoned with 0xFF (NaN) before each GPU run so a kernel that
 * skips an element fails, and accumulated outputs start from random
 * non-zero values so += is tested.  Every test skips when no CUDA device
 * is visible.
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
#include "ops_reference.h"
#include "rng.h"

#define TOLERANCE 1e-5

#include "gpu_test_util.h"

/*
 * out[n, o] += bias[o] on an [N, OUT] view with row stride ldo > OUT: the
 * reference is linear_forward with no input (IC = 0), which leaves the
 * bias in every row, added here onto the starting values; the row padding
 * must come back unchanged.
 */
static void
test_add_bias(void **state)
{
	/* N, OUT, ldo */
	static const int shapes[][3] = {{37, 45, 53}, {9, 768, 2304}, {1, 1, 1}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 41);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			N = shapes[s][0], OUT = shapes[s][1], ldo = shapes[s][2];
		size_t		n_out = (size_t) N * ldo;
		float	   *out = host_alloc(n_out * sizeof(float));
		float	   *bias = host_alloc(OUT * sizeof(float));
		float	   *bias_rows = host_alloc((size_t) N * OUT * sizeof(float));
		float	   *d_out, *d_bias;

		fill_random(out, n_out, -1.0, 1.0, &rng);
		fill_random(bias, OUT, -1.0, 1.0, &rng);
		d_out = to_gpu(out, n_out * sizeof(float));
		d_bias = to_gpu(bias, OUT * sizeof(float));

		linear_forward(bias_rows, NULL, NULL, bias, N, 0, OUT);
		for (int n = 0; n < N; n++)
			for (int o = 0; o < OUT; o++)
				out[(size_t) n * ldo + o] += bias_rows[(size_t) n * OUT + o];
		gpu_ok(peft_cuda_add_bias(d_out, ldo, d_bias, N, OUT, gpu_msg, sizeof(gpu_msg)));
		check_close("add_bias (padding unchanged)", d_out, out, n_out);

		peft_cuda_free(d_out);
		peft_cuda_free(d_bias);
		free(out);
		free(bias);
		free(bias_rows);
	}
}

/*
 * dbias[o] += column sums of dout against linear_backward (on a compact
 * copy of the strided dout), many rows so the row lanes matter; a second
 * run from the same start must give the same bits (no atomics).
 */
static void
test_bias_backward(void **state)
{
	/* N, OUT, ldd */
	static const int shapes[][3] = {{1000, 45, 53}, {37, 768, 768}, {3, 1, 2}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 42);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			N = shapes[s][0], OUT = shapes[s][1], ldd = shapes[s][2];
		size_t		n_dout = (size_t) N * ldd;
		float	   *dout = host_alloc(n_dout * sizeof(float));
		float	   *compact = host_alloc((size_t) N * OUT * sizeof(float));
		float	   *dbias0 = host_alloc(OUT * sizeof(float));
		float	   *dbias = host_alloc(OUT * sizeof(float));
		float	   *first = host_alloc(OUT * sizeof(float));
		float	   *second = host_alloc(OUT * sizeof(float));
		float	   *d_dout, *d_dbias;

		fill_random(dout, n_dout, -1.0, 1.0, &rng);
		fill_random(dbias0, OUT, -1.0, 1.0, &rng);
		for (int n = 0; n < N; n++)
			memcpy(compact + (size_t) n * OUT, dout + (size_t) n * ldd,
				   (size_t) OUT * sizeof(float));
		memcpy(dbias, dbias0, OUT * sizeof(float));
		linear_backward(NULL, NULL, dbias, compact, NULL, NULL, N, 0, OUT);
		d_dout = to_gpu(dout, n_dout * sizeof(float));
		d_dbias = to_gpu(dbias0, OUT * sizeof(float));

		gpu_ok(peft_cuda_bias_backward(d_dbias, d_dout, ldd, N, OUT,
									   gpu_msg, sizeof(gpu_msg)));
		check_close("bias_backward", d_dbias, dbias, OUT);
		from_gpu(first, d_dbias, OUT * sizeof(float));

		gpu_ok(peft_cuda_upload(d_dbias, dbias0, OUT * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_bias_backward(d_dbias, d_dout, ldd, N, OUT,
									   gpu_msg, sizeof(gpu_msg)));
		from_gpu(second, d_dbias, OUT * sizeof(float));
		if (memcmp(first, second, OUT * sizeof(float)) != 0)
			fail_msg("bias_backward N=%d OUT=%d: two runs differ", N, OUT);

		peft_cuda_free(d_dout);
		peft_cuda_free(d_dbias);
		free(dout);
		free(compact);
		free(dbias0);
		free(dbias);
		free(first);
		free(second);
	}
}

/* out = a + b into a poisoned buffer, then in place onto a and onto b, against add_forward. */
static void
test_add(void **state)
{
	const size_t n = 100003;
	float	   *a;
	float	   *b;
	float	   *out;
	float	   *d_a, *d_b, *d_out;
	PeftRng		rng;

	(void) state;
	require_device();
	a = host_alloc(n * sizeof(float));
	b = host_alloc(n * sizeof(float));
	out = host_alloc(n * sizeof(float));
	peft_rng_seed(&rng, 43);
	fill_random(a, n, -1.0, 1.0, &rng);
	fill_random(b, n, -1.0, 1.0, &rng);
	d_a = to_gpu(a, n * sizeof(float));
	d_b = to_gpu(b, n * sizeof(float));
	d_out = poisoned_gpu(n * sizeof(float));

	add_forward(out, a, b, n);
	gpu_ok(peft_cuda_add(d_out, d_a, d_b, n, gpu_msg, sizeof(gpu_msg)));
	check_close("add", d_out, out, n);

	/* a = a + b, then b = a + b with the new a: both aliasings. */
	add_forward(a, a, b, n);
	gpu_ok(peft_cuda_add(d_a, d_a, d_b, n, gpu_msg, sizeof(gpu_msg)));
	check_close("add out == a", d_a, a, n);
	add_forward(b, a, b, n);
	gpu_ok(peft_cuda_add(d_b, d_a, d_b, n, gpu_msg, sizeof(gpu_msg)));
	check_close("add out == b", d_b, b, n);

	peft_cuda_free(d_a);
	peft_cuda_free(d_b);
	peft_cuda_free(d_out);
	free(a);
	free(b);
	free(out);
}

/* Empty sizes are no-ops (even with NULL tensors); bad shapes and NULL tensors are errors. */
static void
test_linear_arguments(void **state)
{
	float		dummy = 1.0f;

	(void) state;
	require_device();
	assert_int_equal(peft_cuda_add_bias(NULL, 8, NULL, 0, 8, gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_bias_backward(NULL, NULL, 8, 4, 8,
											 gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_add(NULL, NULL, NULL, 0, gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_not_equal(peft_cuda_add_bias(&dummy, 4, &dummy, 2, 8,
											gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_add_bias(&dummy, 8, &dummy, -2, 8,
											gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_bias_backward(&dummy, NULL, 8, 2, 8,
												 gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_add(&dummy, NULL, &dummy, 4,
									   gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_bias),
		cmocka_unit_test(test_bias_backward),
		cmocka_unit_test(test_add),
		cmocka_unit_test(test_linear_arguments),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
