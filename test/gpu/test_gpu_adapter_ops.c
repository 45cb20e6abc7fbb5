/*
 * test_gpu_adapter_ops.c - the adapter methods' operations (colscale,
 * coldot, row_inv_norms, copy, LayerNorm's bias gradient) of the CUDA
 * backend against the CPU backend's, called through the backend table on
 * fresh random inputs with outputs poisoned before each GPU run.  Every
 * test skips when no CUDA device is visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "gpu_backend_util.h"
#include "rng.h"

#define TOLERANCE 1e-5

/* Uniform values in [-1, 1) away from zero. */
static float *
random_floats(size_t n, PeftRng *rng)
{
	float	   *x = malloc(sizeof(float) * n);

	for (size_t i = 0; i < n; i++)
	{
		x[i] = (float) (2 * peft_rng_uniform(rng) - 1);
		if (fabsf(x[i]) < 1e-3f)
			x[i] = 0.5f;
	}
	return x;
}

/* Host copy of device[n] (fails the test on a recorded device error). */
static float *
to_host(const float *dev, size_t n)
{
	float	   *h = malloc(sizeof(float) * n);

	gpu->ops->download(gpu, h, dev, sizeof(float) * n);
	device_ok();
	return h;
}

/* Norm-relative error of a against b. */
static double
rel_error(const float *a, const float *b, size_t n)
{
	double		num = 0, den = 0;

	for (size_t i = 0; i < n; i++)
	{
		if (!isfinite(a[i]))
			return INFINITY;
		num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
		den += (double) b[i] * b[i];
	}
	return sqrt(num / den);
}

/* colscale with strides, offsets, accumulation and in place. */
static void
test_colscale(void **state)
{
	const int	N = 37, n = 53, ld = 61;
	PeftRng		rng;
	Backend    *cpu = backend_cpu();

	require_device();
	peft_rng_seed(&rng, 1);
	for (int mode = 0; mode < 3; mode++)
	{
		float	   *src = random_floats((size_t) N * ld, &rng);
		float	   *vec = random_floats(n, &rng);
		float	   *dst = random_floats((size_t) N * ld, &rng);
		float	   *ref = malloc(sizeof(float) * N * ld);
		float	   *d_src = to_device(src, (size_t) N * ld);
		float	   *d_vec = to_device(vec, n);
		float	   *d_dst;
		float	   *got;
		bool		acc = mode == 1;
		bool		in_place = mode == 2;

		memcpy(ref, in_place ? src : dst, sizeof(float) * N * ld);
		d_dst = in_place ? d_src : to_device(dst, (size_t) N * ld);
		cpu->ops->colscale(cpu, ref, ld, in_place ? ref : src, ld, vec, -1, 0.7f, acc, N, n);
		gpu->ops->colscale(gpu, d_dst, ld, d_src, ld, d_vec, -1, 0.7f, acc, N, n);
		got = to_host(d_dst, (size_t) N * ld);
		print_message("colscale mode %d: rel err %.2e\n", mode, rel_error(got, ref, (size_t) N * ld));
		assert_true(rel_error(got, ref, (size_t) N * ld) <= TOLERANCE);
		gpu->ops->release(gpu, d_src);
		gpu->ops->release(gpu, d_vec);
		if (!in_place)
			gpu->ops->release(gpu, d_dst);
		free(src), free(vec), free(dst), free(ref), free(got);
	}
}

/* coldot with and without b and scale, accumulating into random values. */
static void
test_coldot(void **state)
{
	const int	N = 300, n = 70, lda = 75;
	PeftRng		rng;
	Backend    *cpu = backend_cpu();

	require_device();
	peft_rng_seed(&rng, 2);
	for (int mode = 0; mode < 2; mode++)
	{
		float	   *a = random_floats((size_t) N * lda, &rng);
		float	   *b = random_floats((size_t) N * lda, &rng);
		float	   *scale = random_floats(n, &rng);
		float	   *dvec = random_floats(n, &rng);
		float	   *ref = malloc(sizeof(float) * n);
		float	   *d_a = to_device(a, (size_t) N * lda);
		float	   *d_b = to_device(b, (size_t) N * lda);
		float	   *d_scale = to_device(scale, n);
		float	   *d_dvec = to_device(dvec, n);
		float	   *got;

		memcpy(ref, dvec, sizeof(float) * n);
		cpu->ops->coldot(cpu, ref, a, lda, mode ? b : NULL, lda, mode ? scale : NULL, 1.5f, N, n);
		gpu->ops->coldot(gpu, d_dvec, d_a, lda, mode ? d_b : NULL, lda, mode ? d_scale : NULL,
						 1.5f, N, n);
		got = to_host(d_dvec, n);
		print_message("coldot mode %d: rel err %.2e\n", mode, rel_error(got, ref, n));
		assert_true(rel_error(got, ref, n) <= TOLERANCE);
		gpu->ops->release(gpu, d_a), gpu->ops->release(gpu, d_b);
		gpu->ops->release(gpu, d_scale), gpu->ops->release(gpu, d_dvec);
		free(a), free(b), free(scale), free(dvec), free(ref), free(got);
	}
}

/* Inverse row norms and the device-to-device copy. */
static void
test_row_inv_norms_and_copy(void **state)
{
	const int	rows = 100, cols = 384;
	PeftRng		rng;
	Backend    *cpu = backend_cpu();
	float	   *W;
	float	   *ref = malloc(sizeof(float) * rows);
	float	   *d_W, *d_W2, *d_inv;
	float	   *got, *copied;

	require_device();
	peft_rng_seed(&rng, 3);
	W = random_floats((size_t) rows * cols, &rng);
	d_W = to_device(W, (size_t) rows * cols);
	d_W2 = gpu->ops->alloc(gpu, sizeof(float) * rows * cols);
	d_inv = gpu->ops->alloc(gpu, sizeof(float) * rows);
	gpu->ops->copy(gpu, d_W2, d_W, sizeof(float) * rows * cols);
	cpu->ops->row_inv_norms(cpu, ref, W, rows, cols);
	gpu->ops->row_inv_norms(gpu, d_inv, d_W2, rows, cols);
	got = to_host(d_inv, rows);
	copied = to_host(d_W2, (size_t) rows * cols);
	assert_memory_equal(copied, W, sizeof(float) * rows * cols);
	print_message("row_inv_norms: rel err %.2e\n", rel_error(got, ref, rows));
	assert_true(rel_error(got, ref, rows) <= TOLERANCE);
	gpu->ops->release(gpu, d_W), gpu->ops->release(gpu, d_W2), gpu->ops->release(gpu, d_inv);
	free(W), free(ref), free(got), free(copied);
}

/* Run the tests (each skips without a device). */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_colscale),
		cmocka_unit_test(test_coldot),
		cmocka_unit_test(test_row_inv_norms_and_copy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
