/*
 * safetensors_hooks.h - test-only lookups in a parsed safetensors file, for
 * the unit tests and the fuzzer; they are not in peft_engine.so (the engine
 * reads no metadata back).  Built by safetensors_hooks.c.
 */
#ifndef PEFT_TEST_SAFETENSORS_HOOKS_H
#define PEFT_TEST_SAFETENSORS_HOOKS_H

#include "safetensors.h"

/* Metadata value for key, or NULL (keys are sorted by the parser). */
const char *st_metadata(const StFile *file, const char *key);

#endif
