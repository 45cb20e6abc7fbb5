/*
 * status.c - engine error reporting.
 */
#include "status.h"

#include <stdio.h>
#include <string.h>

/* Record a failure in err (may be NULL) and return code. */
PeftCode
peft_fail(PeftError *err, PeftCode code, const char *fmt,...)
{
	va_list		ap;

	if (err == NULL)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return code;
}

/* Reset err to success. */
void
peft_error_clear(PeftError *err)
{
	if (err == NULL)
		return;
	err->code = PEFT_OK;
	err->message[0] = '\0';
}

/* Name of a code, for messages. */
const char *
peft_code_name(PeftCode code)
{
	switch (code)
	{
		case PEFT_OK:
			return "ok";
		case PEFT_ERR_IO:
			return "i/o error";
		case PEFT_ERR_FORMAT:
			return "format error";
		case PEFT_ERR_INVALID:
			return "invalid argument";
		case PEFT_ERR_NOMEM:
			return "out of memory";
		case PEFT_ERR_UNSUPPORTED:
			return "unsupported";
		case PEFT_ERR_DEVICE:
			return "device error";
		case PEFT_ERR_CANCELED:
			return "canceled";
		case PEFT_ERR_INTERNAL:
			return "internal error";
	}
	return "unknown error";
}
