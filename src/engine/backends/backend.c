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

/*
 * Check lora_sgmv's arguments (backend.h), recording PEFT_ERR_INVALID on
 * the first bad one; false then, or when a failure is already pending.
 */
bool
backend_sgmv_valid(Backend *be, int ldo, int ldx, const LoraSegment *segs, int nsegs,
				   int IN, int OUT)
{
	if (be->failed)
		return false;
	if (IN < 1 || OUT < 1 || ldx < IN || ldo < OUT || nsegs < 0 || (nsegs > 0 && segs == NULL))
	{
		backend_fail(be, PEFT_ERR_INVALID, "lora_sgmv: bad shapes IN=%d OUT=%d ldx=%d ldo=%d "
					 "nsegs=%d", IN, OUT, ldx, ldo, nsegs);
		return false;
	}
	for (int s = 0; s < nsegs; s++)
	{
		const LoraSegment *sg = &segs[s];

		if (sg->row0 < 0 || sg->rows < 0 || sg->rank < 0 || sg->rank > BACKEND_SGMV_MAX_RANK ||
			(sg->rows > 0 && sg->rank > 0 && (sg->A == NULL || sg->B == NULL)))
		{
			backend_fail(be, PEFT_ERR_INVALID, "lora_sgmv: segment %d: %d rows at row %d, rank %d "
						 "(at most %d)%s", s, sg->rows, sg->row0, sg->rank, BACKEND_SGMV_MAX_RANK,
						 sg->A == NULL || sg->B == NULL ? ", no A or B" : "");
			return false;
		}
	}
	return true;
}
