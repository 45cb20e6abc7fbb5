/*
 * method_table.h - the adapter methods as one table (method_table.c): their
 * names, PEFT's type for each, whether they merge, the tasks and model
 * families they support; parsing "a+b" names.
 */
#ifndef PEFT_ENGINE_METHOD_TABLE_H
#define PEFT_ENGINE_METHOD_TABLE_H

#include <stddef.h>
#include "engine_api.h"

/* The method table: *count rows, in the order a canonical name lists them. */
const PeftMethodInfo *method_table(int *count);
/* Parse "lora", "dora", ... or a "+" combination into PEFT_METHOD_* bits. */
PeftCode	adapter_parse_method(const char *name, unsigned *methods, PeftError *err);
/* The canonical name of PEFT_METHOD_* bits, e.g. "dora+bitfit" (buf of 64 bytes). */
const char *adapter_methods_name(unsigned methods, char *buf, size_t len);
/* The default learning rate of a run of methods: the lowest of theirs. */
double		methods_learning_rate(unsigned methods);
/* Whether any of the methods in bits can be folded into the base weights. */
bool		methods_mergeable(unsigned methods);
/* Check that every method in bits trains for task on a model of architecture (a model_type). */
PeftCode	methods_check_support(unsigned methods, PeftTask task, const char *architecture,
								  PeftError *err);
/* The names of the methods in bits as "a, b, ...<last>z" into buf (last: " and ", " or "). */
const char *method_names_list(unsigned methods, const char *last, char *buf, size_t len);

#endif
