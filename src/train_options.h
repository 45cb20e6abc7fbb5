/*
 * train_options.h - peft_train's options jsonb, checked and parsed.
 */
#ifndef PEFT_TRAIN_OPTIONS_H
#define PEFT_TRAIN_OPTIONS_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "peft.h"

/* Parse and check options over the engine's defaults; ERROR on any bad key. */
extern void ParseTrainOptions(Jsonb *options, const PeftEngineApi *engine,
							  PeftTrainConfig *out);

#endif
