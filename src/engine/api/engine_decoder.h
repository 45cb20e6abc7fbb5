/*
 * engine_decoder.h - decoder models behind engine_api.h (engine_decoder.c):
 * what engine_session.c calls when a model handle holds a decoder.
 */
#ifndef PEFT_ENGINE_ENGINE_DECODER_H
#define PEFT_ENGINE_ENGINE_DECODER_H

#include "engine_api.h"
#include "generate.h"
#include "generate_stream.h"

typedef struct DecoderHandle DecoderHandle;

/* Whether path is a decoder (a .gguf file, a folder with one, a LLaMA folder). */
bool		decoder_handle_detect(const char *path);
/* Open a decoder: weights, tokenizer, chat template; info as model_open's. */
PeftCode	decoder_handle_open(const char *path, DecoderHandle **out, PeftModelInfo *info,
								PeftError *err);
/* Release (NULL allowed). */
void		decoder_handle_close(DecoderHandle *h);
/* engine_api's generate (adapter NULL: the base model; merged: the weights to run instead). */
PeftCode	decoder_handle_generate(DecoderHandle *h, DecoderAdapter *adapter,
									const LlamaModel *merged, const char *const *prompts,
									const size_t *lengths, int n,
									const PeftGenerateOptions *o, PeftGeneration *out,
									PeftError *err);
/* generate with prompt i through adapters[i] (NULL: the base model; none merged), decoded together. */
PeftCode	decoder_handle_generate_mixed(DecoderHandle *h, DecoderAdapter *const *adapters,
										  const char *const *prompts, const size_t *lengths, int n,
										  const PeftGenerateOptions *o, PeftGeneration *out,
										  PeftError *err);
/* A continuous-batching stream over the decoder (engine_api's stream_create). */
PeftCode	decoder_handle_stream_create(DecoderHandle *h, int slots, size_t cache_bytes,
										 GenStream **out, PeftError *err);
/* engine_api's tokenize. */
PeftCode	decoder_handle_tokenize(DecoderHandle *h, const char *text, size_t len, bool chat,
									const char *system, int32_t **ids, int *n, PeftError *err);
/* The model, tokenizer and template generation runs with (adapter NULL). */
const GenerateModel *decoder_handle_gen(const DecoderHandle *h);

/* engine_api's logits. */
PeftCode	decoder_handle_logits(DecoderHandle *h, DecoderAdapter *adapter, const int32_t *ids, int n,
								  float *out,
								  PeftError *err);
/* engine_api's adapter_export_gguf: a PEFT LoRA over this decoder as llama.cpp's LoRA GGUF. */
PeftCode	decoder_handle_export_gguf(DecoderHandle *h, const char *config, size_t config_len,
									   const uint8_t *weights, size_t weights_len, uint8_t **out,
									   size_t *out_len, PeftError *err);

#endif
