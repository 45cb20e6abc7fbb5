/*
 * engine_decoder.c - the engine's services for decoder models behind
 * engine_api.h: open (weights, tokenizer, chat template), generate,
 * tokenize, logits, and adapters exported as llama.cpp's LoRA GGUF.
 * engine_session.c hands a model handle's decoder here; an encoder's
 * calls never come.
 */
#define _GNU_SOURCE
#include "engine_decoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_tokenizer.h"
#include "chat_template.h"
#include "decoder.h"
#include "generate.h"
#include "llama_model.h"
#include "lora_gguf.h"

struct DecoderHandle
{
	LlamaModel *model;
	BpeTokenizer *tokenizer;
	ChatTemplate chat;			/* kind RAW: none, or one this engine does not render */
	GenerateModel gen;
};

bool
decoder_handle_detect(const char *path)
{
	char	   *gguf = NULL;
	bool		yes = llama_model_detect(path, &gguf);

	free(gguf);
	return yes;
}

/* The tokenizer of a loaded model: from GGUF metadata, or the folder's tokenizer.json. */
static PeftCode
open_tokenizer(const LlamaModel *m, BpeTokenizer **out, PeftError *err)
{
	char		path[4096];

	if (m->gguf != NULL)
		return bpe_tokenizer_from_gguf(m->gguf, out, err);
	snprintf(path, sizeof(path), "%s/tokenizer.json", m->path);
	return bpe_tokenizer_load_json(path, out, err);
}

/* The id of a special token's text, or -1. */
static int32_t
special_id(const BpeTokenizer *t, const char *text)
{
	return text ? bpe_token_id(t, text, strlen(text)) : -1;
}

PeftCode
decoder_handle_open(const char *path, DecoderHandle **out, PeftModelInfo *info, PeftError *err)
{
	DecoderHandle *h = calloc(1, sizeof(DecoderHandle));
	PeftCode	rc;

	*out = NULL;
	if (h == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory opening a decoder");
	rc = llama_model_load(path, &h->model, err);
	if (rc == PEFT_OK)
		rc = open_tokenizer(h->model, &h->tokenizer, err);
	if (rc == PEFT_OK && h->model->chat_template != NULL)
	{
		PeftError	why = {0};
		int32_t		bos = bpe_bos_id(h->tokenizer);
		size_t		len = 0;
		const char *bos_text = bos >= 0 ? bpe_token_text(h->tokenizer, bos, &len) : NULL;
		char	   *bos_copy = bos_text ? strndup(bos_text, len) : NULL;

		/* a template this engine does not render leaves raw prompts only (chat => true is then an error) */
		if (chat_template_detect(h->model->chat_template, bos_copy, &h->chat, &why) != PEFT_OK)
			chat_template_raw(&h->chat);
		free(bos_copy);
	}
	else
		chat_template_raw(&h->chat);
	if (rc != PEFT_OK)
	{
		decoder_handle_close(h);
		return rc;
	}
	h->gen.model = h->model;
	h->gen.tokenizer = h->tokenizer;
	h->gen.chat = h->chat.kind == CHAT_TEMPLATE_RAW ? NULL : &h->chat;
	h->gen.eos = bpe_eos_id(h->tokenizer);
	h->gen.end_of_turn = h->gen.chat ? special_id(h->tokenizer, h->chat.stop) : -1;
	if (info)
	{
		const LlamaConfig *c = &h->model->cfg;

		memset(info, 0, sizeof(*info));
		snprintf(info->architecture, sizeof(info->architecture), "llama");
		/* the type of most matrices; quantization below says the same without the cut */
		snprintf(info->weights_dtype, sizeof(info->weights_dtype), "%.7s", h->model->quantization);
		info->decoder = true;
		info->hidden_size = c->hidden_size;
		info->num_layers = c->num_layers;
		info->num_heads = c->num_heads;
		info->num_kv_heads = c->num_kv_heads;
		info->intermediate_size = c->intermediate_size;
		info->vocab_size = c->vocab_size;
		info->max_position = c->context_length;
		info->parameters = h->model->parameters;
		info->file_bytes = h->model->file_bytes;
		info->chat_template = h->gen.chat != NULL;
		snprintf(info->quantization, sizeof(info->quantization), "%s", h->model->quantization);
		snprintf(info->source, sizeof(info->source), "%s", h->model->source);
		if (h->model->gguf)
			snprintf(info->weights_file, sizeof(info->weights_file), "%s", h->model->path);
		else
			snprintf(info->weights_file, sizeof(info->weights_file), "%s/model.safetensors", h->model->path);
	}
	*out = h;
	return PEFT_OK;
}

void
decoder_handle_close(DecoderHandle *h)
{
	if (h == NULL)
		return;
	chat_template_free(&h->chat);
	bpe_tokenizer_free(h->tokenizer);
	llama_model_free(h->model);
	free(h);
}

PeftCode
decoder_handle_generate(DecoderHandle *h, DecoderAdapter *adapter, const LlamaModel *merged,
						const char *const *prompts, const size_t *lengths, int n,
						const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	GenerateModel g = h->gen;

	g.adapter = adapter;
	if (merged)
		g.model = merged;
	return generate_run(&g, prompts, lengths, n, o, out, err);
}

PeftCode
decoder_handle_generate_mixed(DecoderHandle *h, DecoderAdapter *const *adapters,
							  const char *const *prompts, const size_t *lengths, int n,
							  const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	return generate_run_mixed(&h->gen, adapters, prompts, lengths, n, o, out, err);
}

PeftCode
decoder_handle_stream_create(DecoderHandle *h, int slots, size_t cache_bytes, GenStream **out,
							 PeftError *err)
{
	return generate_stream_create(&h->gen, slots, cache_bytes, out, err);
}

PeftCode
decoder_handle_tokenize(DecoderHandle *h, const char *text, size_t len, bool chat, const char *system,
						int32_t **ids, int *n, PeftError *err)
{
	return generate_prompt_ids(&h->gen, text, len, chat, system, ids, n, err);
}

const GenerateModel *
decoder_handle_gen(const DecoderHandle *h)
{
	return &h->gen;
}

PeftCode
decoder_handle_logits(DecoderHandle *h, DecoderAdapter *adapter, const int32_t *ids, int n, float *out,
					  PeftError *err)
{
	Decoder    *dec;
	int32_t    *slot,
			   *pos;
	int32_t		last = n - 1;
	PeftCode	rc;

	if (n < 1 || n + decoder_adapter_virtual_tokens(adapter) > h->model->cfg.context_length)
		return peft_fail(err, PEFT_ERR_INVALID, "%d tokens%s (the model's context is %d)", n,
						 decoder_adapter_virtual_tokens(adapter) ? " after the adapter's virtual tokens" : "",
						 h->model->cfg.context_length);
	if ((rc = decoder_create(h->model, adapter, 1, n, &dec, err)) != PEFT_OK)
		return rc;
	decoder_set_exact_head(dec, true);
	slot = calloc(n, sizeof(int32_t));
	pos = malloc(sizeof(int32_t) * n);
	if (slot == NULL || pos == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory computing logits");
	else
	{
		for (int i = 0; i < n; i++)
			pos[i] = i;
		rc = decoder_forward(dec, ids, slot, pos, n, &last, 1, out, err);
	}
	free(slot);
	free(pos);
	decoder_free(dec);
	return rc;
}

PeftCode
decoder_handle_export_gguf(DecoderHandle *h, const char *config, size_t config_len,
						   const uint8_t *weights, size_t weights_len, uint8_t **out, size_t *out_len,
						   PeftError *err)
{
	return lora_gguf_convert(h->model, config, config_len, weights, weights_len, out, out_len, err);
}
