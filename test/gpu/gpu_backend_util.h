/*
 * gpu_backend_util.h - what the GPU tests that go through the backend
 * table (the CUDA backend against the CPU backend) share: the backend, the
 * skip without a device, and copies to the device with errors collected
 * outside enter/leave.  (gpu_test_util.h serves the tests that call the
 * CUDA ops directly.)
 */
#ifndef PEFT_GPU_BACKEND_UTIL_H
#define PEFT_GPU_BACKEND_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "backend.h"

/* The CUDA backend (require_device sets it). */
static Backend *gpu;

/* The CUDA backend, or a skip. */
static inline void
require_device(void)
{
	PeftError	err = {0};

	if (!backend_cuda_available() || backend_cuda(&gpu, &err) != PEFT_OK)
	{
		print_message("no CUDA device: skipped\n");
		skip();
	}
}

/*
 * A device copy of host[n] reals (a failure is recorded in the backend,
 * collected by device_ok: nothing may fail the test between enter and
 * leave, or the backend's lock would stay taken for the next test).
 */
static inline real *
to_device(const real *host, size_t n)
{
	real	   *d = gpu->ops->alloc(gpu, sizeof(real) * (n ? n : 1));

	if (d != NULL)
		gpu->ops->upload(gpu, d, host, sizeof(real) * n);
	return d;
}

/* Fail the test on a recorded device error (outside enter/leave). */
static inline void
device_ok(void)
{
	PeftError	err = {0};

	if (backend_check(gpu, &err) != PEFT_OK)
		fail_msg("%s", err.message);
}

#endif
