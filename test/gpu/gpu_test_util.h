/*
 * gpu_test_util.h - helpers shared by the cmocka GPU parity tests
 * (test_gpu_*.c): skip without a device, fail on a CUDA error, random
 * host inputs, device copies (poisoned with 0xFF where the kernel must
 * write every element) and the relative-error check against the CPU
 * reference.  Everything is static inline, so a test that uses only some
 * of it compiles without warnings.
 *
 * check_close fails above TOLERANCE, which a test may define before
 * including this header (default 1e-5).
 */
#ifndef PEFT_GPU_TEST_UTIL_H
#define PEFT_GPU_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "rng.h"

#ifndef TOLERANCE
#define TOLERANCE 1e-5
#endif

/* The message of the last failed CUDA call, for gpu_ok. */
static char gpu_msg[256] __attribute__((unused));

/* Skip the calling test when no CUDA device is visible. */
static inline void
require_device(void)
{
	if (peft_cuda_device_count() == 0)
	{
		print_message("no CUDA device: skipped\n");
		skip();
	}
}

/* Fail the test with the CUDA message unless rc is 0. */
static inline void
gpu_ok(int rc)
{
	if (rc != 0)
		fail_msg("CUDA: %s", gpu_msg);
}

/* Fill x[n] with uniform values in [lo, hi), never exactly zero. */
static inline void
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
static inline void *
host_alloc(size_t bytes)
{
	void	   *p = malloc(bytes > 0 ? bytes : 1);

	assert_non_null(p);
	return p;
}

/* Device copy of host[bytes]. */
static inline void *
to_gpu(const void *host, size_t bytes)
{
	void	   *dev = NULL;

	gpu_ok(peft_cuda_alloc(&dev, bytes, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_upload(dev, host, bytes, gpu_msg, sizeof(gpu_msg)));
	return dev;
}

/* Device buffer of bytes filled with 0xFF (NaN as floats). */
static inline void *
poisoned_gpu(size_t bytes)
{
	void	   *dev = NULL;

	gpu_ok(peft_cuda_alloc(&dev, bytes, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_memset(dev, 0xFF, bytes, gpu_msg, sizeof(gpu_msg)));
	return dev;
}

/* Wait for the kernels, then copy dev[bytes] into host. */
static inline void
from_gpu(void *host, const void *dev, size_t bytes)
{
	gpu_ok(peft_cuda_synchronize(NULL, gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_download(host, dev, bytes, gpu_msg, sizeof(gpu_msg)));
}

/* max|a-b| / max(max|b|, 1e-6); NaN anywhere gives infinity. */
static inline double
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

/* Compare gpu[n] (downloaded from dev) with cpu[n], print and check the error against TOLERANCE. */
static inline void
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

#endif							/* PEFT_GPU_TEST_UTIL_H */
