/*
 * generation.h - what peft_generate's SQL layer (generation.c) shares with
 * the serving worker's decoding (serve_generate.c): the options and the
 * adapter checks, so a prompt is judged alike in both places.
 */
#ifndef PEFT_GENERATION_H
#define PEFT_GENERATION_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "engine_api.h"
#include "inference.h"

/* The options object (keys as peft_generate documents) over the engine's defaults; ERROR for a bad one. */
extern void ParseGenerateOptions(Jsonb *options, PeftGenerateOptions *o);

/* Version (0: active) of adapter, checked to be over a decoder and over model_name (NULL: any).  Inside SPI. */
extern CachedAdapter *GenerationAdapter(const char *model_name, const char *adapter, int version);

#endif
