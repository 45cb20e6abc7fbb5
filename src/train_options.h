/*
 * train_options.h - peft_train's options jsonb, checked and parsed.
 */
#ifndef PEFT_TRAIN_OPTIONS_H
#define PEFT_TRAIN_OPTIONS_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "peft.h"

/*
 * Parse and check options over the engine's defaults for a run of methods
 * (PEFT_METHOD_* bits) and task; ERROR on any bad key, value, or option
 * that does not apply to them.
 */
extern void ParseTrainOptions(Jsonb *options, const PeftEngineApi *engine, unsigned methods,
							  PeftTask task, PeftTrainConfig *out);

#endif
