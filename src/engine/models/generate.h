/*
 * generate.h - text generation with a LLaMA-family decoder: prompts
 * rendered through the chat template (or taken raw), tokenised, prefilled
 * together, then decoded a step at a time for every unfinished prompt at
 * once, until the end-of-sequence token, a stop string, max_new_tokens or
 * the context's end.
 */
#ifndef PEFT_ENGINE_GENERATE_H
#define PEFT_ENGINE_GENERATE_H

#include "bpe_tokenizer.h"
#include "chat_template.h"
#include "decoder_adapter.h"
#include "engine_api.h"
#include "llama_model.h"

/* What generation needs of a loaded decoder. */
typedef struct GenerateModel
{
	const LlamaModel *model;
	const BpeTokenizer *tokenizer;
	const ChatTemplate *chat;	/* NULL: the model has none this engine renders */
	int32_t		eos;			/* end-of-sequence token */
	int32_t		end_of_turn;	/* the template's end-of-turn token, or -1 */
	DecoderAdapter *adapter;	/* NULL: the base model */
} GenerateModel;

/* Defaults of PeftGenerateOptions. */
void		generate_defaults(PeftGenerateOptions *o);

/* The sampling seed of prompt index of a call with seed (index 0: seed itself). */
uint64_t	generate_seed(uint64_t seed, int index);

/* The token ids of one prompt as generate feeds them (chat-rendered when asked); *ids malloc'd. */
PeftCode	generate_prompt_ids(const GenerateModel *g, const char *text, size_t len, bool chat,
								const char *system, int32_t **ids, int *n, PeftError *err);

/*
 * The same from prompts already tokenised (ids[i][0..nids[i]), exactly as
 * fed: no template is applied): evaluation's generations.
 */
PeftCode	generate_run_ids(const GenerateModel *g, const int32_t *const *ids, const int *nids,
							 int n, const PeftGenerateOptions *o, PeftGeneration *out,
							 PeftError *err);

/* Completions of n prompts; on error every out[i].text is freed and NULL. */
PeftCode	generate_run(const GenerateModel *g, const char *const *prompts, const size_t *lengths,
						 int n, const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err);

/*
 * The same with prompt i through adapters[i] (NULL: the base model; not
 * merged ones), decoded together: each product with the base weights once
 * per step over every sequence, each adapter's part on its own.
 */
PeftCode	generate_run_mixed(const GenerateModel *g, DecoderAdapter *const *adapters,
							   const char *const *prompts, const size_t *lengths, int n,
							   const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err);

#endif
