/*
 * fuzz_config.c - libFuzzer harness for the model folder's config readers
 * (src/engine/formats/model_config.c), through their text entry points, the same
 * functions model_config_load applies to the files it reads.
 *
 * Input: one selector byte, then text.
 *   selector % 6 == 0..4: the text is one file, applied alone:
 *     0 config.json, 1 tokenizer_config.json, 2 modules.json,
 *     3 1_Pooling/config.json, 4 sentence_bert_config.json
 *     (1..4 on top of a valid config.json, as in a model folder);
 *   selector % 6 == 5: the text is a whole folder, the files in that order
 *     separated by NUL bytes (which no config text may contain), applied in
 *     model_config_load's order; a missing or empty part is a missing file.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "model_config.h"

#define NFILES 5

/* The config.json of all-MiniLM-L6-v2, the base the other files apply to. */
static const char base_config[] =
	"{\"model_type\": \"bert\", \"vocab_size\": 30522, \"hidden_size\": 384, "
	"\"num_hidden_layers\": 6, \"num_attention_heads\": 12, "
	"\"intermediate_size\": 1536, \"max_position_embeddings\": 512, "
	"\"type_vocab_size\": 2, \"pad_token_id\": 0, \"layer_norm_eps\": 1e-12, "
	"\"hidden_act\": \"gelu\", \"hidden_dropout_prob\": 0.1, "
	"\"attention_probs_dropout_prob\": 0.1}";

/* Check that an accepted configuration holds values the engine can use. */
static void
check_config(const ModelConfig *cfg)
{
	FUZZ_CHECK(strcmp(cfg->model_type, "bert") == 0);
	FUZZ_CHECK(cfg->vocab_size >= 1 && cfg->hidden_size >= 1 && cfg->num_layers >= 1);
	FUZZ_CHECK(cfg->num_heads >= 1 && cfg->hidden_size % cfg->num_heads == 0);
	FUZZ_CHECK(cfg->intermediate_size >= 1 && cfg->max_position >= 1);
	FUZZ_CHECK(cfg->type_vocab_size >= 1);
	FUZZ_CHECK(cfg->pad_token_id >= 0 && cfg->pad_token_id < cfg->vocab_size);
	FUZZ_CHECK(cfg->layer_norm_eps > 0 && cfg->layer_norm_eps < 1);
	FUZZ_CHECK(cfg->hidden_dropout >= 0 && cfg->hidden_dropout < 1);
	FUZZ_CHECK(cfg->attention_dropout >= 0 && cfg->attention_dropout < 1);
	FUZZ_CHECK(cfg->pooling == POOLING_MEAN || cfg->pooling == POOLING_CLS);
	FUZZ_CHECK(cfg->max_seq_length >= 0 && cfg->max_seq_length <= cfg->max_position);
}

/* Apply file number which (0..4) with text[0..len) to cfg. */
static PeftCode
apply_file(ModelConfig *cfg, int which, const char *text, size_t len, PeftError *err)
{
	switch (which)
	{
		case 0:
			return model_config_parse(cfg, text, len, err);
		case 1:
			return model_config_parse_tokenizer(cfg, text, len, err);
		case 2:
			return model_config_parse_pooling(cfg, text, len, NULL, 0, err);
		case 3:
			return model_config_parse_pooling(cfg, NULL, 0, text, len, err);
		default:
			return model_config_parse_sentence_bert(cfg, text, len, err);
	}
}

/* One file alone, on top of the base config.json unless it is config.json. */
static void
fuzz_one_file(int which, const char *text, size_t len)
{
	ModelConfig cfg;
	PeftError	err = {0};

	if (which != 0)
		FUZZ_CHECK(model_config_parse(&cfg, base_config, strlen(base_config), &err) == PEFT_OK);
	if (apply_file(&cfg, which, text, len, &err) != PEFT_OK)
	{
		FUZZ_CHECK(err.code != PEFT_OK && err.message[0] != '\0');
		return;
	}
	check_config(&cfg);
}

/* A whole folder: NUL-separated files applied as model_config_load does. */
static void
fuzz_folder(const char *text, size_t len)
{
	const char *part[NFILES] = {0};
	size_t		part_len[NFILES] = {0};
	size_t		pos = 0;
	ModelConfig cfg;
	PeftError	err = {0};

	for (int i = 0; i < NFILES && pos <= len; i++)
	{
		const char *nul = memchr(text + pos, '\0', len - pos);
		size_t		end = nul ? (size_t) (nul - text) : len;

		if (end > pos)
		{
			part[i] = text + pos;
			part_len[i] = end - pos;
		}
		pos = end + 1;
	}
	if (part[0] == NULL)
		return;					/* config.json is required */
	if (model_config_parse(&cfg, part[0], part_len[0], &err) != PEFT_OK ||
		(part[1] != NULL &&
		 model_config_parse_tokenizer(&cfg, part[1], part_len[1], &err) != PEFT_OK) ||
		model_config_parse_pooling(&cfg, part[2], part_len[2], part[3], part_len[3],
								   &err) != PEFT_OK ||
		(part[4] != NULL &&
		 model_config_parse_sentence_bert(&cfg, part[4], part_len[4], &err) != PEFT_OK))
	{
		FUZZ_CHECK(err.code != PEFT_OK && err.message[0] != '\0');
		return;
	}
	check_config(&cfg);
}

/* libFuzzer entry point: a selector byte, then one file or a whole folder. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text;
	int			selector;

	if (size < 1)
		return 0;
	selector = data[0] % (NFILES + 1);
	text = (const char *) fuzz_guarded_copy(0, data + 1, size - 1);
	if (selector < NFILES)
		fuzz_one_file(selector, text, size - 1);
	else
		fuzz_folder(text, size - 1);
	return 0;
}
