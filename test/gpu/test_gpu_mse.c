/*
 * test_gpu_mse.c - the CUDA mean squared error (kernels/mse.cu) against
 * mse_forward/backward (src/engine/ops.h) on fresh random inputs: the
 * per-row squares are poisoned with 0xFF (NaN) before the GPU run and
 * summed on the host as the launcher's contract says, and the accumulated
 * gradient starts from random non-zero values so += is tested.  Every
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

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "ops.h"
#include "rng.h"

#define TOLERANCE 1e-5

static char gpu_msg[256];

/* Skip the calling test when no CUDA device is visible. */
static void
require_device(void)
{
	if (peft_cuda_device_count() == 0)
	{
		print_message("no CUDA device: skipped\n");
		skip();
	}
}

/* Fail the test with the CUDA message unless rc is 0. */
static void
gpu_ok(int rc)
{
	if (rc != 0)
		fail_msg("CUDA: %s", gpu_msg);
}

/* Fill x[n] with uniform values in [lo, hi), never exactly zero. */
static void
fill_random(float *x, size_t n, double lo, double hi, PeftRng *rng)
{
	for (size_t i = 0; i < n; i++)
	{
		x[i] = (float) (lo + (hi - lo) * peft_rng_uniform(rng));
		if (x[i] == 0.0f)
			x[i] = 0.5f;
	}
}

/* Host malloc that fails the test instead of returning NULL. */
static void *
host_alloc(size_t bytes)
{
	void	   *p = malloc(bytes > 0 ? bytes : 1);

	assert_non_null(p);
	return p;
}

/* Device copy of host[bytes]. */
static void *
to_gpu(const void *host, size_t bytes)
{
	void	   *dev = NULL;

	gpu_ok(peft_cuda_alloc(&dev, bytes, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_upload(dev, host, bytes, gpu_msg, sizeof(gpu_msg)));
	return dev;
}

/* Device buffer of bytes filled with 0xFF (NaN as floats). */
static void *
poisoned_gpu(size_t bytes)
{
	void	   *dev = NULL;

	gpu_ok(peft_cuda_alloc(&dev, bytes, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_memset(dev, 0xFF, bytes, gpu_msg, sizeof(gpu_msg)));
	return dev;
}

/* Wait for the kernels, then copy dev[bytes] into host. */
static void
from_gpu(void *host, const void *dev, size_t bytes)
{
	gpu_ok(peft_cuda_synchronize(NULL, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_download(host, dev, bytes, gpu_msg, sizeof(gpu_msg)));
}

/* max|a-b| / max(max|b|, 1e-6); NaN anywhere gives infinity. */
static double
relative_error(const float *a, const float *b, size_t n)
{
	double		max_diff = 0;
	double		max_ref = 0;

	for (size_t i = 0; i < n; i++)
	{
		double		d = fabs((double) a[i] - (double) b[i]);

		if (!(d <= max_diff))	/* also true for NaN */
			max_diff = isnan(d) ? INFINITY : d;
		if (fabs((double) b[i]) > max_ref)
			max_ref = fabs((double) b[i]);
	}
	return max_diff / (max_ref > 1e-6 ? max_ref : 1e-6);
}

/* Compare gpu[n] (downloaded from dev) with cpu[n], print and check the error. */
static void
check_close(const char *what, const void *dev, const float *cpu, size_t n)
{
	float	   *gpu = host_alloc(n * sizeof(float));
	double		err;

	from_gpu(gpu, dev, n * sizeof(float));
	err = relative_error(gpu, cpu, n);
	print_message("%-32s n=%-8zu rel err %.3g\n", what, n, err);
	free(gpu);
	if (!(err <= TOLERANCE))
		fail_msg("%s: relative error %.3g > %.1g", what, err, TOLERANCE);
}

/* Loss (host sum in double of the GPU squares, / B) and gradient, for a batch and a single row. */
static void
test_mse(void **state)
{
	static const int sizes[] = {37, 1, 1000};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 51);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
	{
		int			B = sizes[s];
		float	   *pred = host_alloc(B * sizeof(float));
		float	   *target = host_alloc(B * sizeof(float));
		float	   *sq = host_alloc(B * sizeof(float));
		float	   *dpred = host_alloc(B * sizeof(float));
		float	   *d_pred, *d_target, *d_sq, *d_dpred;
		float		cpu_loss;
		float		gpu_loss;
		double		total = 0;
		double		err;

		fill_random(pred, B, -2.0, 2.0, &rng);
		fill_random(target, B, -2.0, 2.0, &rng);
		fill_random(dpred, B, -1.0, 1.0, &rng);
		d_pred = to_gpu(pred, B * sizeof(float));
		d_target = to_gpu(target, B * sizeof(float));
		d_dpred = to_gpu(dpred, B * sizeof(float));
		d_sq = poisoned_gpu(B * sizeof(float));

		cpu_loss = mse_forward(pred, target, B);
		gpu_ok(peft_cuda_mse_forward(d_sq, d_pred, d_target, B, gpu_msg, sizeof(gpu_msg)));
		from_gpu(sq, d_sq, B * sizeof(float));
		/* The host half of the loss, as mse_forward: sum in double, / B, to float. */
		for (int b = 0; b < B; b++)
			total += (double) sq[b];
		gpu_loss = (float) (total / B);
		err = fabs((double) gpu_loss - (double) cpu_loss) /
			(fabs((double) cpu_loss) > 1e-6 ? fabs((double) cpu_loss) : 1e-6);
		print_message("%-32s B=%-8d rel err %.3g\n", "mse_forward loss", B, err);
		if (!(err <= TOLERANCE))
			fail_msg("mse loss B=%d: relative error %.3g", B, err);

		mse_backward(dpred, pred, target, 0.7f, B);
		gpu_ok(peft_cuda_mse_backward(d_dpred, d_pred, d_target, 0.7f, B,
									  gpu_msg, sizeof(gpu_msg)));
		check_close("mse_backward", d_dpred, dpred, B);

		peft_cuda_free(d_pred);
		peft_cuda_free(d_target);
		peft_cuda_free(d_sq);
		peft_cuda_free(d_dpred);
		free(pred);
		free(target);
		free(sq);
		free(dpred);
	}
}

/* Empty sizes and a NULL gradient are no-ops; negative sizes and NULL tensors are errors. */
static void
test_mse_arguments(void **state)
{
	float		dummy = 1.0f;

	(void) state;
	require_device();
	assert_int_equal(peft_cuda_mse_forward(NULL, NULL, NULL, 0, gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_mse_backward(NULL, NULL, NULL, 1.0f, 4,
											gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_not_equal(peft_cuda_mse_forward(&dummy, &dummy, &dummy, -1,
											   gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_mse_forward(&dummy, NULL, &dummy, 4,
											   gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_mse_backward(&dummy, &dummy, NULL, 1.0f, 4,
												gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mse),
		cmocka_unit_test(test_mse_arguments),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
