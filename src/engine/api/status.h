/*
 * status.h - how the engine reports failure without PostgreSQL.
 *
 * Every engine function that can fail returns a PeftCode and, on failure,
 * fills a caller-supplied PeftError with a human-readable message.  The SQL
 * layer maps the code to an errcode and raises ERROR; the CLI prints it.
 */
#ifndef PEFT_ENGINE_STATUS_H
#define PEFT_ENGINE_STATUS_H

#include <stdarg.h>

typedef enum PeftCode
{
	PEFT_OK = 0,
	PEFT_ERR_IO,				/* a file cannot be opened, mapped or read */
	PEFT_ERR_FORMAT,			/* malformed model, config, vocab or adapter data */
	PEFT_ERR_INVALID,			/* a bad argument or option value */
	PEFT_ERR_NOMEM,				/* an allocation failed or a limit was exceeded */
	PEFT_ERR_UNSUPPORTED,		/* valid but not implemented (architecture, dtype...) */
	PEFT_ERR_DEVICE,			/* GPU / backend failure */
	PEFT_ERR_CANCELED,			/* the caller asked to stop */
	PEFT_ERR_INTERNAL			/* a bug: an impossible state */
} PeftCode;

#define PEFT_ERROR_MESSAGE_LEN 512

/*
 * The engine builds with -fvisibility=hidden: its one entrance is the API
 * table (peft_engine_api), and the CUDA library's its own table; only what
 * crosses a library boundary is marked with this.
 */
#define PEFT_EXPORT __attribute__((visibility("default")))

typedef struct PeftError
{
	PeftCode	code;
	char		message[PEFT_ERROR_MESSAGE_LEN];
} PeftError;

/* Record a failure in err (may be NULL) and return code, printf-style. */
PEFT_EXPORT PeftCode peft_fail(PeftError *err, PeftCode code, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/* Reset err to success. */
PEFT_EXPORT void peft_error_clear(PeftError *err);

/* Name of a code, e.g. "format error", for messages. */
const char *peft_code_name(PeftCode code);

#endif
