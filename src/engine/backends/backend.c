/*
 * backend.c - what every backend shares: error recording and collection,
 * and the precisions' names.  It calls no backend (the choice of
 * one is backend_registry.c's).
 */
#include "backend.h"

#include <stdarg.h>
#include <stdio.h>

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

/* Name of a precision, as the precision option words it. */
const char *
gemm_precision_name(PeftPrecision p)
{
	switch (p)
	{
		case PEFT_PRECISION_FP32:
			return "fp32";
		case PEFT_PRECISION_TF32:
			return "tf32";
		case PEFT_PRECISION_BF16:
			return "bf16";
	}
	return "?";
}
