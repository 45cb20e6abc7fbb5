/*
 * model_config.h - what a Hugging Face model folder says about its model:
 * config.json (architecture, sizes), tokenizer_config.json (lower-casing),
 * and for sentence-transformers models modules.json, 1_Pooling/config.json
 * and sentence_bert_config.json (pooling, normalisation, max length).
 */
#ifndef PEFT_ENGINE_MODEL_CONFIG_H
#define PEFT_ENGINE_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include "status.h"

typedef enum PoolingMode
{
	POOLING_MEAN,				/* mean over real tokens (sentence-transformers default) */
	POOLING_CLS					/* the [CLS] token's hidden state */
} PoolingMode;

typedef struct ModelConfig
{
	char		model_type[32];	/* "bert" */
	int			vocab_size;
	int			hidden_size;
	int			num_layers;
	int			num_heads;
	int			intermediate_size;
	int			max_position;
	int			type_vocab_size;
	int			pad_token_id;
	double		layer_norm_eps;
	double		hidden_dropout;
	double		attention_dropout;

	/* tokenizer */
	bool		do_lower_case;	/* default true */
	bool		strip_accents;	/* default: follows do_lower_case */
	bool		tokenize_chinese_chars; /* default true */

	/* sentence-transformers (defaults: mean pooling, no normalisation) */
	PoolingMode pooling;
	bool		normalize;
	int			max_seq_length; /* 0 when unspecified */
} ModelConfig;

/*
 * Parse len bytes of JSON text (not necessarily NUL-terminated) into a
 * cJSON tree: copied first, since cJSON reads to a NUL, and a NUL inside is
 * an error rather than a silent end of input.
 */
struct cJSON;
PeftCode	parse_json_text(const char *text, size_t len, const char *what,
							struct cJSON **out, PeftError *err);

/* Parse config.json text (len bytes, not necessarily NUL-terminated). */
PeftCode	model_config_parse(ModelConfig *cfg, const char *json, size_t len,
							   PeftError *err);
/* Apply tokenizer_config.json text. */
PeftCode	model_config_parse_tokenizer(ModelConfig *cfg, const char *json,
										 size_t len, PeftError *err);
/* Apply modules.json + 1_Pooling/config.json texts (either may be NULL). */
PeftCode	model_config_parse_pooling(ModelConfig *cfg, const char *modules_json,
									   size_t modules_len,
									   const char *pooling_json,
									   size_t pooling_len, PeftError *err);
/* Apply sentence_bert_config.json text (max_seq_length). */
PeftCode	model_config_parse_sentence_bert(ModelConfig *cfg, const char *json,
											 size_t len, PeftError *err);
/* Read and apply every config file of a model folder. */
PeftCode	model_config_load(ModelConfig *cfg, const char *dir, PeftError *err);

/* Read a whole small file into a NUL-terminated malloc'ed buffer (limit bytes). */
PeftCode	read_small_file(const char *path, size_t limit, char **out,
							size_t *len, PeftError *err);

#endif
