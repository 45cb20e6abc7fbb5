/*
 * train_config.h - the training options as one table (train_config.c).
 */
#ifndef PEFT_ENGINE_TRAIN_CONFIG_H
#define PEFT_ENGINE_TRAIN_CONFIG_H

#include "engine_api.h"
#include "network.h"

/* The option table: *count rows. */
const PeftOption *train_config_options(int *count);
/* The row of key, or NULL. */
const PeftOption *train_config_find(const char *key);
/* Every option's default; task classification, method LoRA, the rest zero. */
void		train_config_default(PeftTrainConfig *c);
/* Check a value against option key's type and range and store it. */
PeftCode	train_config_set(PeftTrainConfig *c, const char *key, const PeftOptionValue *v,
							 PeftError *err);
/* Check that option key, given explicitly, applies to a run's methods and task. */
PeftCode	train_config_applies(const char *key, unsigned methods, PeftTask task, PeftError *err);
/* The same from text (a command line); module lists are comma-separated. */
PeftCode	train_config_parse(PeftTrainConfig *c, const char *key, const char *text,
							   PeftError *err);

#endif
