/*
 * peft.h - shared declarations of the SQL layer (peft.so).
 */
#ifndef PEFT_H
#define PEFT_H

#include "postgres.h"

#include "fmgr.h"

#include "engine_api.h"

/* GUC values (peft.c) */
extern int	peft_threads;
extern int	peft_device;		/* PeftDevice */
extern int	peft_precision;		/* PeftPrecision */
extern int	peft_device_idle_release;	/* seconds */

/* inference.c: the engine handle of a registered model, loaded in this backend */
extern PeftModelHandle *PeftModelFor(const char *name);

/*
 * peft.c: ERROR (null_value_not_allowed) when argument argno, called name,
 * is NULL.  For the few functions that are not STRICT because a NULL in
 * another argument has a documented meaning: each argument they read
 * without such a meaning is checked with this first.
 */
extern void PeftRequireArg(FunctionCallInfo fcinfo, int argno, const char *name);

/*
 * peft.c: ERROR (read_only_sql_transaction) on a standby, for the functions
 * that write the catalog, saying to run what on the primary.
 */
extern void PeftRequirePrimary(const char *function);

/* engine_loader.c */
extern const PeftEngineApi *PeftEngine(void);
extern void PeftRaiseEngineError(const PeftError *err);
extern int	PeftEngineErrcode(PeftCode code);

#endif
