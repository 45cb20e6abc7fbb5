/*
 * decoder_training.h - training runs and adapters over decoder models
 * behind engine_api.h (decoder_training.c): what engine_session.c calls
 * when the model handle holds a decoder.
 */
#ifndef PEFT_ENGINE_DECODER_TRAINING_H
#define PEFT_ENGINE_DECODER_TRAINING_H

#include "decoder_adapter.h"
#include "engine_api.h"
#include "engine_decoder.h"

typedef struct DecoderTrainJob DecoderTrainJob;

/* Start a generation run over a decoder (the config's task must be generation). */
PeftCode	dtrain_begin(DecoderHandle *h, const PeftTrainConfig *config, DecoderTrainJob **out,
						 PeftError *err);
/* Tokenise and keep one prompt/completion row (a row too long even without its prompt is counted, not kept). */
PeftCode	dtrain_add_pair(DecoderTrainJob *job, const char *prompt, size_t prompt_len,
							const char *completion, size_t completion_len, PeftError *err);
PeftCode	dtrain_hold_out(DecoderTrainJob *job, PeftError *err);
PeftCode	dtrain_prepare(DecoderTrainJob *job, int64_t *train_rows, int64_t *valid_rows,
						   int *total_steps, PeftError *err);
PeftCode	dtrain_step(DecoderTrainJob *job, PeftTrainProgress *p, PeftError *err);
void		dtrain_memory(DecoderTrainJob *job, PeftTrainMemory *m);
/* Where the job computes: "cpu", or "cpu-bf16" (products with the frozen weights in BF16 on AMX). */
const char *dtrain_device(DecoderTrainJob *job);
int64_t		dtrain_parameters(DecoderTrainJob *job);
int			dtrain_max_length(DecoderTrainJob *job);
/* Validation loss, perplexity and exact match of the current weights. */
PeftCode	dtrain_evaluate(DecoderTrainJob *job, PeftMetrics *m, PeftError *err);
/* The adapter's safetensors bytes and adapter_config.json (malloc'ed). */
PeftCode	dtrain_export(DecoderTrainJob *job, const char *base_model, uint8_t **weights,
						  size_t *weights_len, char **config, PeftError *err);
void		dtrain_free(DecoderTrainJob *job);

/* The adapter options of a training config over model m (PEFT's defaults for LLaMA). */
PeftCode	dtrain_adapter_options(const PeftTrainConfig *c, DecoderAdapterOptions *o, PeftError *err);

/* An adapter over h's model from its config and weights (validated). */
PeftCode	dadapter_open(DecoderHandle *h, const char *config, size_t config_len,
						  const uint8_t *weights, size_t weights_len, DecoderAdapter **out,
						  PeftError *err);

#endif
