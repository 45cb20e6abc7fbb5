/*
 * peft.h - shared declarations of the SQL layer (peft.so).
 */
#ifndef PEFT_H
#define PEFT_H

#include "postgres.h"

#include "engine_api.h"

/* GUC values (peft.c) */
extern int	peft_threads;
extern int	peft_device;		/* PeftDevice */
extern int	peft_precision;		/* PeftPrecision */
extern int	peft_device_idle_release;	/* seconds */

/* inference.c: the engine handle of a registered model, loaded in this backend */
extern PeftModelHandle *PeftModelFor(const char *name);

/* engine_loader.c */
extern const PeftEngineApi *PeftEngine(void);
extern bool PeftEngineLoaded(void);
extern void PeftRaiseEngineError(const PeftError *err);

#endif
