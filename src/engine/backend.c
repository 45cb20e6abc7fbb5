/*
 * backend.c - what every backend shares: error recording and collection,
 * parsing of the device and precision names, and the choice of a backend
 * for a device setting.
 */
#include "backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Record a failure (the first one wins: later ones are its consequences). */
void
backend_fail(Backend *be, PeftCode code, const char *fmt,...)
{
	va_list		ap;

	if (be->failed)
		return;
	be->failed = true;
	be->error.code = code;
	va_start(ap, fmt);
	vsnprintf(be->error.message, sizeof(be->error.message), fmt, ap);
	va_end(ap);
}

/* Collect a recorded failure into err (then cleared); PEFT_OK when none. */
PeftCode
backend_check(Backend *be, PeftError *err)
{
	PeftCode	code;

	if (!be->failed)
		return PEFT_OK;
	code = be->error.code;
	peft_fail(err, code, "%s backend: %s", be->name, be->error.message);
	be->failed = false;
	peft_error_clear(&be->error);
	return code;
}

/* The backend for a device choice (AUTO: CUDA when available, else the CPU). */
PeftCode
backend_for(DeviceKind kind, Backend **out, PeftError *err)
{
	switch (kind)
	{
		case DEVICE_CPU:
			*out = backend_cpu();
			return PEFT_OK;
		case DEVICE_CUDA:
			return backend_cuda(out, err);
		case DEVICE_AUTO:
			if (backend_cuda_available())
				return backend_cuda(out, err);
			*out = backend_cpu();
			return PEFT_OK;
	}
	return peft_fail(err, PEFT_ERR_INVALID, "unknown device %d", (int) kind);
}

/* Parse "auto" | "cpu" | "cuda"; false if unknown. */
bool
device_kind_parse(const char *s, DeviceKind *out)
{
	if (strcmp(s, "auto") == 0)
		*out = DEVICE_AUTO;
	else if (strcmp(s, "cpu") == 0)
		*out = DEVICE_CPU;
	else if (strcmp(s, "cuda") == 0)
		*out = DEVICE_CUDA;
	else
		return false;
	return true;
}

/* Parse "fp32" | "tf32" | "bf16"; false if unknown. */
bool
gemm_precision_parse(const char *s, GemmPrecision *out)
{
	if (strcmp(s, "fp32") == 0)
		*out = PRECISION_FP32;
	else if (strcmp(s, "tf32") == 0)
		*out = PRECISION_TF32;
	else if (strcmp(s, "bf16") == 0)
		*out = PRECISION_BF16;
	else
		return false;
	return true;
}

/* Name of a precision, as gemm_precision_parse reads it. */
const char *
gemm_precision_name(GemmPrecision p)
{
	switch (p)
	{
		case PRECISION_FP32:
			return "fp32";
		case PRECISION_TF32:
			return "tf32";
		case PRECISION_BF16:
			return "bf16";
	}
	return "?";
}

#if !defined(PEFT_WITH_CUDA) || defined(PEFT_DOUBLE)
/* Builds without CUDA (and double-precision test builds) have no device. */
bool
backend_cuda_available(void)
{
	return false;
}

/* Builds without CUDA: device "cuda" is an error. */
PeftCode
backend_cuda(Backend **out, PeftError *err)
{
	*out = NULL;
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "device \"cuda\" is not available: this engine was built without CUDA");
}

/* Nothing to release without CUDA. */
void
backend_set_idle_release(int seconds)
{
	(void) seconds;
}
#endif
