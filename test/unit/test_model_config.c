/*
 * test_model_config.c - reading a model folder's config files.
 *
 * The real all-MiniLM-L6-v2 files (inline, and from disk when present), the
 * tiny model from test/fixtures/make_tiny_model.py, and hostile configs:
 * wrong types, missing keys, bad sizes, unsupported architectures, deep
 * nesting, duplicate keys and oversized files.  Every error must name the
 * file and the key.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_config.h"
#include "test_util.h"

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif


/* all-MiniLM-L6-v2's config.json, verbatim. */
static const char minilm_config[] =
"{\n"
"  \"_name_or_path\": \"nreimers/MiniLM-L6-H384-uncased\",\n"
"  \"architectures\": [\n"
"    \"BertModel\"\n"
"  ],\n"
"  \"attention_probs_dropout_prob\": 0.1,\n"
"  \"gradient_checkpointing\": false,\n"
"  \"hidden_act\": \"gelu\",\n"
"  \"hidden_dropout_prob\": 0.1,\n"
"  \"hidden_size\": 384,\n"
"  \"initializer_range\": 0.02,\n"
"  \"intermediate_size\": 1536,\n"
"  \"layer_norm_eps\": 1e-12,\n"
"  \"max_position_embeddings\": 512,\n"
"  \"model_type\": \"bert\",\n"
"  \"num_attention_heads\": 12,\n"
"  \"num_hidden_layers\": 6,\n"
"  \"pad_token_id\": 0,\n"
"  \"position_embedding_type\": \"absolute\",\n"
"  \"transformers_version\": \"4.8.2\",\n"
"  \"type_vocab_size\": 2,\n"
"  \"use_cache\": true,\n"
"  \"vocab_size\": 30522\n"
"}\n";

/* all-MiniLM-L6-v2's tokenizer_config.json, verbatim. */
static const char minilm_tokenizer[] =
"{\"do_lower_case\": true, \"unk_token\": \"[UNK]\", \"sep_token\": \"[SEP]\", "
"\"pad_token\": \"[PAD]\", \"cls_token\": \"[CLS]\", \"mask_token\": \"[MASK]\", "
"\"tokenize_chinese_chars\": true, \"strip_accents\": null, "
"\"name_or_path\": \"nreimers/MiniLM-L6-H384-uncased\", \"do_basic_tokenize\": true, "
"\"never_split\": null, \"tokenizer_class\": \"BertTokenizer\", \"model_max_length\": 512}";

/* all-MiniLM-L6-v2's modules.json, verbatim. */
static const char minilm_modules[] =
"[\n"
"  {\"idx\": 0, \"name\": \"0\", \"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"},\n"
"  {\"idx\": 1, \"name\": \"1\", \"path\": \"1_Pooling\", \"type\": \"sentence_transformers.models.Pooling\"},\n"
"  {\"idx\": 2, \"name\": \"2\", \"path\": \"2_Normalize\", \"type\": \"sentence_transformers.models.Normalize\"}\n"
"]";

/* all-MiniLM-L6-v2's 1_Pooling/config.json, verbatim. */
static const char minilm_pooling[] =
"{\n"
"  \"word_embedding_dimension\": 384,\n"
"  \"pooling_mode_cls_token\": false,\n"
"  \"pooling_mode_mean_tokens\": true,\n"
"  \"pooling_mode_max_tokens\": false,\n"
"  \"pooling_mode_mean_sqrt_len_tokens\": false\n"
"}";

/* A minimal valid config.json, as key / JSON value pairs. */
static const char *const base_pairs[][2] = {
	{"model_type", "\"bert\""},
	{"vocab_size", "1000"},
	{"hidden_size", "64"},
	{"num_hidden_layers", "2"},
	{"num_attention_heads", "4"},
	{"intermediate_size", "128"},
	{"max_position_embeddings", "128"},
};

#define N_BASE_PAIRS ((int) (sizeof(base_pairs) / sizeof(base_pairs[0])))

/*
 * The minimal config with key set to value (a JSON literal), appended when
 * the key is not among the base pairs; value NULL removes the key.
 */
static char *
config_with(const char *key, const char *value)
{
	char	   *json = malloc(4096);
	size_t		used = 0;
	bool		replaced = false;

	assert_non_null(json);
	used += (size_t) snprintf(json + used, 4096 - used, "{");
	for (int i = 0; i < N_BASE_PAIRS; i++)
	{
		const char *v = base_pairs[i][1];

		if (key != NULL && strcmp(key, base_pairs[i][0]) == 0)
		{
			replaced = true;
			if (value == NULL)
				continue;
			v = value;
		}
		used += (size_t) snprintf(json + used, 4096 - used, "%s\"%s\": %s",
								  used > 1 ? ", " : "", base_pairs[i][0], v);
	}
	if (key != NULL && !replaced && value != NULL)
		used += (size_t) snprintf(json + used, 4096 - used, ", \"%s\": %s",
								  key, value);
	snprintf(json + used, 4096 - used, "}");
	return json;
}

/* Parse a NUL-terminated config.json text. */
static PeftCode
parse(ModelConfig *cfg, const char *json, PeftError *err)
{
	peft_error_clear(err);
	return model_config_parse(cfg, json, strlen(json), err);
}

/* Apply a NUL-terminated tokenizer_config.json text. */
static PeftCode
apply_tokenizer(ModelConfig *cfg, const char *json, PeftError *err)
{
	return model_config_parse_tokenizer(cfg, json, strlen(json), err);
}

/* Apply a NUL-terminated sentence_bert_config.json text. */
static PeftCode
apply_sentence_bert(ModelConfig *cfg, const char *json, PeftError *err)
{
	return model_config_parse_sentence_bert(cfg, json, strlen(json), err);
}

/* Write text to dir/name. */
static void
write_file(const char *dir, const char *name, const char *text)
{
	char		path[1024];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
}

/* all-MiniLM-L6-v2's config.json gives its sizes and defaults. */
static void
test_minilm_config(void **state)
{
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
	assert_string_equal(cfg.model_type, "bert");
	assert_int_equal(cfg.vocab_size, 30522);
	assert_int_equal(cfg.hidden_size, 384);
	assert_int_equal(cfg.num_layers, 6);
	assert_int_equal(cfg.num_heads, 12);
	assert_int_equal(cfg.intermediate_size, 1536);
	assert_int_equal(cfg.max_position, 512);
	assert_int_equal(cfg.type_vocab_size, 2);
	assert_int_equal(cfg.pad_token_id, 0);
	assert_true(cfg.layer_norm_eps == 1e-12);
	assert_true(cfg.hidden_dropout == 0.1);
	assert_true(cfg.attention_dropout == 0.1);
	/* tokenizer and pooling fields start at their defaults */
	assert_true(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_true(cfg.tokenize_chinese_chars);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_false(cfg.normalize);
	assert_int_equal(cfg.max_seq_length, 0);
}

/* Optional keys take BERT's defaults; the text need not be NUL-terminated. */
static void
test_defaults_and_length(void **state)
{
	char	   *json = config_with(NULL, NULL);
	char	   *unterminated;
	size_t		len = strlen(json);
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, json, &err), PEFT_OK);
	assert_true(cfg.layer_norm_eps == 1e-12);
	assert_true(cfg.hidden_dropout == 0.1);
	assert_true(cfg.attention_dropout == 0.1);
	assert_int_equal(cfg.type_vocab_size, 2);
	assert_int_equal(cfg.pad_token_id, 0);

	/* len bytes exactly, with no NUL after them (ASan checks the read) */
	unterminated = malloc(len);
	memcpy(unterminated, json, len);
	assert_int_equal(model_config_parse(&cfg, unterminated, len, &err), PEFT_OK);
	assert_int_equal(cfg.hidden_size, 64);
	/* a prefix of the text is no longer valid JSON */
	assert_int_equal(model_config_parse(&cfg, unterminated, len - 1, &err),
					 PEFT_ERR_FORMAT);
	free(unterminated);
	free(json);
}

/* Optional keys present with other values are read. */
static void
test_optional_values(void **state)
{
	static const char json[] =
		"{\"model_type\": \"bert\", \"vocab_size\": 100, \"hidden_size\": 8, "
		"\"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
		"\"intermediate_size\": 16, \"max_position_embeddings\": 32, "
		"\"type_vocab_size\": 1, \"pad_token_id\": 99, \"layer_norm_eps\": 1e-5, "
		"\"hidden_dropout_prob\": 0, \"attention_probs_dropout_prob\": 0.5, "
		"\"hidden_act\": \"gelu\", \"classifier_dropout\": null, "
		"\"id2label\": {\"0\": \"neg\"}}";
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, json, &err), PEFT_OK);
	assert_int_equal(cfg.type_vocab_size, 1);
	assert_int_equal(cfg.pad_token_id, 99);
	assert_true(cfg.layer_norm_eps == 1e-5);
	assert_true(cfg.hidden_dropout == 0);
	assert_true(cfg.attention_dropout == 0.5);
}

/* Without model_type, a Bert* architecture is enough; others are unsupported. */
static void
test_architectures(void **state)
{
	char	   *json;
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	json = config_with("model_type", NULL);
	assert_int_equal(parse(&cfg, json, &err), PEFT_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.message, "config.json"));
	assert_non_null(strstr(err.message, "model_type"));
	free(json);

	json = config_with("model_type", NULL);
	json[strlen(json) - 1] = '\0';
	strcat(json, ", \"architectures\": [\"Other\", \"BertForSequenceClassification\"]}");
	assert_int_equal(parse(&cfg, json, &err), PEFT_OK);
	assert_string_equal(cfg.model_type, "bert");
	free(json);

	json = config_with("model_type", NULL);
	json[strlen(json) - 1] = '\0';
	strcat(json, ", \"architectures\": [\"RobertaModel\"]}");
	assert_int_equal(parse(&cfg, json, &err), PEFT_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.message, "architectures"));
	free(json);

	json = config_with("model_type", NULL);
	json[strlen(json) - 1] = '\0';
	strcat(json, ", \"architectures\": \"BertModel\"}");
	assert_int_equal(parse(&cfg, json, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "architectures"));
	free(json);
}

typedef struct BadConfig
{
	const char *key;
	const char *value;			/* JSON literal; NULL removes the key */
	PeftCode	expected;
	const char *message_part;	/* must appear in the message */
} BadConfig;

static const BadConfig bad_configs[] = {
	{"model_type", "\"gpt2\"", PEFT_ERR_UNSUPPORTED, "\"model_type\" is \"gpt2\""},
	{"model_type", "\"roberta\"", PEFT_ERR_UNSUPPORTED, "only \"bert\""},
	{"model_type", "\"BERT\"", PEFT_ERR_UNSUPPORTED, "model_type"},
	{"model_type", "5", PEFT_ERR_FORMAT, "\"model_type\" must be a string"},
	{"hidden_act", "\"relu\"", PEFT_ERR_UNSUPPORTED, "\"hidden_act\" is \"relu\""},
	{"hidden_act", "\"gelu_new\"", PEFT_ERR_UNSUPPORTED, "hidden_act"},
	{"hidden_act", "[\"gelu\"]", PEFT_ERR_FORMAT, "\"hidden_act\" must be a string"},
	{"position_embedding_type", "\"relative_key\"", PEFT_ERR_UNSUPPORTED,
	"position_embedding_type"},
	{"vocab_size", "0", PEFT_ERR_FORMAT, "\"vocab_size\" must be between 1 and 10000000, got 0"},
	{"vocab_size", "-5", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "10000001", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "1e300", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "1e999", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "\"1000\"", PEFT_ERR_FORMAT, "\"vocab_size\" must be an integer"},
	{"vocab_size", "1000.5", PEFT_ERR_FORMAT, "\"vocab_size\" must be an integer"},
	{"vocab_size", "true", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "[1000]", PEFT_ERR_FORMAT, "vocab_size"},
	{"vocab_size", "null", PEFT_ERR_FORMAT, "required key \"vocab_size\" is missing"},
	{"hidden_size", "0", PEFT_ERR_FORMAT, "hidden_size"},
	{"hidden_size", "65537", PEFT_ERR_FORMAT, "hidden_size"},
	{"hidden_size", "-64", PEFT_ERR_FORMAT, "hidden_size"},
	{"hidden_size", "66", PEFT_ERR_FORMAT, "is not a multiple of key \"num_attention_heads\""},
	{"num_hidden_layers", "0", PEFT_ERR_FORMAT, "num_hidden_layers"},
	{"num_hidden_layers", "257", PEFT_ERR_FORMAT, "num_hidden_layers"},
	{"num_attention_heads", "0", PEFT_ERR_FORMAT, "num_attention_heads"},
	{"num_attention_heads", "5", PEFT_ERR_FORMAT, "not a multiple"},
	{"num_attention_heads", "128", PEFT_ERR_FORMAT, "not a multiple"},
	{"intermediate_size", "0", PEFT_ERR_FORMAT, "intermediate_size"},
	{"intermediate_size", "1048577", PEFT_ERR_FORMAT, "intermediate_size"},
	{"max_position_embeddings", "0", PEFT_ERR_FORMAT, "max_position_embeddings"},
	{"max_position_embeddings", "65537", PEFT_ERR_FORMAT, "max_position_embeddings"},
	{"max_position_embeddings", "4294967296", PEFT_ERR_FORMAT, "max_position_embeddings"},
	{"type_vocab_size", "0", PEFT_ERR_FORMAT, "type_vocab_size"},
	{"type_vocab_size", "\"2\"", PEFT_ERR_FORMAT, "type_vocab_size"},
	{"pad_token_id", "-1", PEFT_ERR_FORMAT, "pad_token_id"},
	{"pad_token_id", "1000", PEFT_ERR_FORMAT, "pad_token_id"},
	{"layer_norm_eps", "0", PEFT_ERR_FORMAT, "layer_norm_eps"},
	{"layer_norm_eps", "-1e-12", PEFT_ERR_FORMAT, "layer_norm_eps"},
	{"layer_norm_eps", "1", PEFT_ERR_FORMAT, "layer_norm_eps"},
	{"layer_norm_eps", "\"1e-12\"", PEFT_ERR_FORMAT, "layer_norm_eps"},
	{"hidden_dropout_prob", "1", PEFT_ERR_FORMAT, "hidden_dropout_prob"},
	{"hidden_dropout_prob", "-0.1", PEFT_ERR_FORMAT, "hidden_dropout_prob"},
	{"attention_probs_dropout_prob", "1.5", PEFT_ERR_FORMAT, "attention_probs_dropout_prob"},
	{"attention_probs_dropout_prob", "false", PEFT_ERR_FORMAT, "attention_probs_dropout_prob"},
};

/* Each bad value gives the expected code and a message naming file and key. */
static void
test_bad_values(void **state)
{
	(void) state;
	for (size_t i = 0; i < sizeof(bad_configs) / sizeof(bad_configs[0]); i++)
	{
		const BadConfig *c = &bad_configs[i];
		char	   *json = config_with(c->key, c->value);
		ModelConfig cfg;
		PeftError	err;
		PeftCode	code = parse(&cfg, json, &err);

		if (code != c->expected)
			fail_msg("%s = %s: expected %s, got %s (%s)", c->key, c->value,
					 peft_code_name(c->expected), peft_code_name(code),
					 err.message);
		if (strstr(err.message, c->message_part) == NULL ||
			strncmp(err.message, "config.json: ", 13) != 0)
			fail_msg("%s = %s: message \"%s\" lacks the file or \"%s\"",
					 c->key, c->value, err.message, c->message_part);
		free(json);
	}
}

/* Each required key, when missing, is named in the error. */
static void
test_missing_keys(void **state)
{
	static const char *const required[] = {
		"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
		"intermediate_size", "max_position_embeddings",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
	{
		char	   *json = config_with(required[i], NULL);
		char		expected[128];
		ModelConfig cfg;
		PeftError	err;

		assert_int_equal(parse(&cfg, json, &err), PEFT_ERR_FORMAT);
		snprintf(expected, sizeof(expected),
				 "config.json: required key \"%s\" is missing", required[i]);
		assert_string_equal(err.message, expected);
		free(json);
	}
}

/* Text that is not a JSON object, or is a trap for the parser, is refused. */
static void
test_not_json(void **state)
{
	static const char *const texts[] = {
		"", "   ", "not json", "{", "{\"vocab_size\": }", "[]", "[1, 2]",
		"\"bert\"", "42", "null", "{} {}", "{\"a\": 1,}", "{'a': 1}",
		"{\"hidden_size\": 0x40}", "{\"hidden_size\": NaN}",
	};
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
	{
		if (parse(&cfg, texts[i], &err) != PEFT_ERR_FORMAT)
			fail_msg("text \"%s\" was not refused as a format error", texts[i]);
		assert_non_null(strstr(err.message, "config.json"));
	}

	/* a NUL inside the text would otherwise hide what follows it */
	assert_int_equal(model_config_parse(&cfg, "{}\0{\"x\":1}", 10, &err),
					 PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "NUL"));
	assert_int_equal(model_config_parse(&cfg, NULL, 0, &err), PEFT_ERR_INVALID);
}

/* A key given twice is refused (cJSON and Python would disagree on it). */
static void
test_duplicate_key(void **state)
{
	char	   *json = config_with(NULL, NULL);
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	json[strlen(json) - 1] = '\0';
	strcat(json, ", \"hidden_size\": 128}");
	assert_int_equal(parse(&cfg, json, &err), PEFT_ERR_FORMAT);
	assert_string_equal(err.message,
						"config.json: key \"hidden_size\" appears more than once");
	free(json);
}

/* Deeply nested JSON fails at cJSON's nesting limit instead of overflowing the stack. */
static void
test_deep_nesting(void **state)
{
	enum
	{
		DEPTH = 200000
	};
	char	   *json = malloc(2 * DEPTH + 64);
	size_t		len = 0;
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_non_null(json);
	len += (size_t) sprintf(json, "{\"x\": ");
	for (int i = 0; i < DEPTH; i++)
		json[len++] = '[';
	for (int i = 0; i < DEPTH; i++)
		json[len++] = ']';
	json[len++] = '}';
	assert_int_equal(model_config_parse(&cfg, json, len, &err), PEFT_ERR_FORMAT);

	/* objects nest too */
	len = 0;
	for (int i = 0; i < DEPTH / 8; i++)
		len += (size_t) sprintf(json + len, "{\"a\":");
	len += (size_t) sprintf(json + len, "1");
	for (int i = 0; i < DEPTH / 8; i++)
		json[len++] = '}';
	assert_int_equal(model_config_parse(&cfg, json, len, &err), PEFT_ERR_FORMAT);
	free(json);
}

/* A 20 MB config text parses (ignored key) without trouble. */
static void
test_large_text(void **state)
{
	enum
	{
		PAD = 20 * 1024 * 1024
	};
	char	   *base = config_with(NULL, NULL);
	size_t		base_len = strlen(base);
	char	   *json = malloc(base_len + PAD + 64);
	size_t		len;
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_non_null(json);
	memcpy(json, base, base_len - 1);
	len = base_len - 1;
	len += (size_t) sprintf(json + len, ", \"_padding\": \"");
	memset(json + len, 'x', PAD);
	len += PAD;
	len += (size_t) sprintf(json + len, "\"}");
	assert_int_equal(model_config_parse(&cfg, json, len, &err), PEFT_OK);
	assert_int_equal(cfg.hidden_size, 64);
	free(json);
	free(base);
}

/* tokenizer_config.json: lower-casing, accents (null follows lower-casing), Chinese. */
static void
test_tokenizer_config(void **state)
{
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
	assert_int_equal(apply_tokenizer(&cfg, minilm_tokenizer, &err), PEFT_OK);
	assert_true(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_true(cfg.tokenize_chinese_chars);

	/* cased model: accents kept unless asked */
	assert_int_equal(apply_tokenizer(&cfg, "{\"do_lower_case\": false}", &err),
					 PEFT_OK);
	assert_false(cfg.do_lower_case);
	assert_false(cfg.strip_accents);
	assert_true(cfg.tokenize_chinese_chars);

	assert_int_equal(apply_tokenizer(&cfg,
									 "{\"do_lower_case\": false, \"strip_accents\": true, "
									 "\"tokenize_chinese_chars\": false}", &err),
					 PEFT_OK);
	assert_false(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_false(cfg.tokenize_chinese_chars);

	assert_int_equal(apply_tokenizer(&cfg, "{\"strip_accents\": false}", &err),
					 PEFT_OK);
	assert_true(cfg.do_lower_case);
	assert_false(cfg.strip_accents);

	/* nothing said: BertTokenizer's defaults */
	assert_int_equal(apply_tokenizer(&cfg, "{}", &err), PEFT_OK);
	assert_true(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_true(cfg.tokenize_chinese_chars);

	assert_int_equal(apply_tokenizer(&cfg, "{\"do_lower_case\": 1}", &err),
					 PEFT_ERR_FORMAT);
	assert_string_equal(err.message,
						"tokenizer_config.json: key \"do_lower_case\" must be true or false");
	assert_int_equal(apply_tokenizer(&cfg, "{\"strip_accents\": \"yes\"}", &err),
					 PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message,
						   "tokenizer_config.json: key \"strip_accents\""));
	assert_int_equal(apply_tokenizer(&cfg, "[]", &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "tokenizer_config.json"));
}

/* modules.json and 1_Pooling/config.json: MiniLM is mean pooling, normalised. */
static void
test_pooling_minilm(void **state)
{
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
	assert_int_equal(model_config_parse_pooling(&cfg, minilm_modules,
												strlen(minilm_modules),
												minilm_pooling,
												strlen(minilm_pooling), &err),
					 PEFT_OK);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_true(cfg.normalize);

	/* either file may be absent */
	assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
	assert_int_equal(model_config_parse_pooling(&cfg, NULL, 0, NULL, 0, &err),
					 PEFT_OK);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_false(cfg.normalize);
}

/* Pooling variants: CLS, unsupported modes, none, and wrong types. */
static void
test_pooling_variants(void **state)
{
	static const struct
	{
		const char *modules;
		const char *pooling;
		PeftCode	expected;
		PoolingMode mode;
		bool		normalize;
		const char *message_part;
	}			cases[] = {
		{NULL, "{\"pooling_mode_cls_token\": true}", PEFT_OK, POOLING_CLS, false, NULL},
		{NULL, "{\"pooling_mode_mean_tokens\": true, \"pooling_mode_cls_token\": false, \"include_prompt\": true}",
		PEFT_OK, POOLING_MEAN, false, NULL},
		{"[{\"type\": \"sentence_transformers.models.Transformer\"}]", NULL, PEFT_OK,
		POOLING_MEAN, false, NULL},
		{"[{\"type\": \"my.Normalize\"}]", NULL, PEFT_OK, POOLING_MEAN, true, NULL},
		{"[]", NULL, PEFT_OK, POOLING_MEAN, false, NULL},
		{NULL, "{\"pooling_mode_max_tokens\": true}", PEFT_ERR_UNSUPPORTED, 0, false,
		"1_Pooling/config.json: key \"pooling_mode_max_tokens\" is true"},
		{NULL, "{\"pooling_mode_mean_tokens\": true, \"pooling_mode_mean_sqrt_len_tokens\": true}",
		PEFT_ERR_UNSUPPORTED, 0, false, "pooling_mode_mean_sqrt_len_tokens"},
		{NULL, "{\"pooling_mode_weightedmean_tokens\": true}", PEFT_ERR_UNSUPPORTED,
		0, false, "pooling_mode_weightedmean_tokens"},
		{NULL, "{\"pooling_mode_lasttoken\": true}", PEFT_ERR_UNSUPPORTED, 0, false,
		"pooling_mode_lasttoken"},
		{NULL, "{\"pooling_mode_mean_tokens\": true, \"pooling_mode_cls_token\": true}",
		PEFT_ERR_UNSUPPORTED, 0, false, "both true"},
		{NULL, "{}", PEFT_ERR_FORMAT, 0, false, "pooling_mode_mean_tokens"},
		{NULL, "{\"pooling_mode_mean_tokens\": \"yes\"}", PEFT_ERR_FORMAT, 0, false,
		"1_Pooling/config.json: key \"pooling_mode_mean_tokens\" must be true or false"},
		{NULL, "{\"pooling_mode_mean_tokens\": true, \"word_embedding_dimension\": 32}",
		PEFT_ERR_FORMAT, 0, false, "word_embedding_dimension"},
		{NULL, "{\"pooling_mode_mean_tokens\": true, \"word_embedding_dimension\": -1}",
		PEFT_ERR_FORMAT, 0, false, "word_embedding_dimension"},
		{NULL, "[true]", PEFT_ERR_FORMAT, 0, false, "1_Pooling/config.json: not a JSON object"},
		{"{}", NULL, PEFT_ERR_FORMAT, 0, false, "modules.json: not a JSON array"},
		{"[1]", NULL, PEFT_ERR_FORMAT, 0, false, "modules.json: module 0"},
		{"[{\"path\": \"\"}]", NULL, PEFT_ERR_FORMAT, 0, false,
		"modules.json: module 0 has no key \"type\""},
		{"[{\"type\": 7}]", NULL, PEFT_ERR_FORMAT, 0, false,
		"modules.json: key \"type\" must be a string"},
		{"[{\"type\": \"a\", \"type\": \"b\"}]", NULL, PEFT_ERR_FORMAT, 0, false,
		"appears more than once"},
		{"not json", NULL, PEFT_ERR_FORMAT, 0, false, "modules.json: not valid JSON"},
	};

	(void) state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
	{
		ModelConfig cfg;
		PeftError	err;
		PeftCode	code;

		assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
		code = model_config_parse_pooling(&cfg, cases[i].modules,
										  cases[i].modules ? strlen(cases[i].modules) : 0,
										  cases[i].pooling,
										  cases[i].pooling ? strlen(cases[i].pooling) : 0,
										  &err);
		if (code != cases[i].expected)
			fail_msg("case %zu: expected %s, got %s (%s)", i,
					 peft_code_name(cases[i].expected), peft_code_name(code),
					 err.message);
		if (code == PEFT_OK)
		{
			assert_int_equal(cfg.pooling, cases[i].mode);
			assert_int_equal(cfg.normalize, cases[i].normalize);
		}
		else if (strstr(err.message, cases[i].message_part) == NULL)
			fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, err.message,
					 cases[i].message_part);
	}
}

/* sentence_bert_config.json: max_seq_length, clamped to the position table. */
static void
test_sentence_bert_config(void **state)
{
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	assert_int_equal(parse(&cfg, minilm_config, &err), PEFT_OK);
	assert_int_equal(apply_sentence_bert(&cfg,
										 "{\"max_seq_length\": 256, \"do_lower_case\": false}",
										 &err), PEFT_OK);
	assert_int_equal(cfg.max_seq_length, 256);
	assert_true(cfg.do_lower_case);

	assert_int_equal(apply_sentence_bert(&cfg, "{\"max_seq_length\": 4096}", &err),
					 PEFT_OK);
	assert_int_equal(cfg.max_seq_length, 512);
	assert_int_equal(apply_sentence_bert(&cfg, "{\"max_seq_length\": null}", &err),
					 PEFT_OK);
	assert_int_equal(cfg.max_seq_length, 0);

	/* its do_lower_case adds lower-casing, it never removes it */
	assert_int_equal(apply_tokenizer(&cfg, "{\"do_lower_case\": false}", &err),
					 PEFT_OK);
	assert_int_equal(apply_sentence_bert(&cfg, "{\"do_lower_case\": true}", &err),
					 PEFT_OK);
	assert_true(cfg.do_lower_case);

	assert_int_equal(apply_sentence_bert(&cfg, "{\"max_seq_length\": 0}", &err),
					 PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message,
						   "sentence_bert_config.json: key \"max_seq_length\""));
	assert_int_equal(apply_sentence_bert(&cfg, "{\"max_seq_length\": \"256\"}", &err),
					 PEFT_ERR_FORMAT);
	assert_int_equal(apply_sentence_bert(&cfg, "[]", &err), PEFT_ERR_FORMAT);
}

/* read_small_file: exact bytes with a NUL after them; limits and non-files refused. */
static void
test_read_small_file(void **state)
{
	char		dir[256];
	char		path[512];
	char	   *text = NULL;
	size_t		len = 0;
	PeftError	err;

	(void) state;
	make_temp_dir(dir, sizeof(dir));
	write_file(dir, "a.json", "{\"k\": 1}");
	snprintf(path, sizeof(path), "%s/a.json", dir);
	assert_int_equal(read_small_file(path, 100, &text, &len, &err), PEFT_OK);
	assert_int_equal(len, 8);
	assert_string_equal(text, "{\"k\": 1}");
	free(text);

	/* exactly at the limit is fine, one byte over is not */
	assert_int_equal(read_small_file(path, 8, &text, &len, &err), PEFT_OK);
	free(text);
	assert_int_equal(read_small_file(path, 7, &text, &len, &err), PEFT_ERR_NOMEM);
	assert_null(text);
	assert_non_null(strstr(err.message, path));

	write_file(dir, "empty.json", "");
	snprintf(path, sizeof(path), "%s/empty.json", dir);
	assert_int_equal(read_small_file(path, 100, &text, &len, &err), PEFT_OK);
	assert_int_equal(len, 0);
	assert_string_equal(text, "");
	free(text);

	assert_int_equal(read_small_file(dir, 100, &text, &len, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));

	snprintf(path, sizeof(path), "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(read_small_file(path, 100, &text, &len, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));

	snprintf(path, sizeof(path), "%s/missing.json", dir);
	assert_int_equal(read_small_file(path, 100, &text, &len, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, path));
	remove_tree(dir);
}

/* model_config_load on the real all-MiniLM-L6-v2 folder (require_real_model). */
static void
test_load_real_model(void **state)
{
	const char *dir = real_model_dir();
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	require_real_model(dir != NULL);
	if (model_config_load(&cfg, dir, &err) != PEFT_OK)
		fail_msg("%s", err.message);
	assert_string_equal(cfg.model_type, "bert");
	assert_int_equal(cfg.vocab_size, 30522);
	assert_int_equal(cfg.hidden_size, 384);
	assert_int_equal(cfg.num_layers, 6);
	assert_int_equal(cfg.num_heads, 12);
	assert_int_equal(cfg.intermediate_size, 1536);
	assert_int_equal(cfg.max_position, 512);
	assert_true(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_true(cfg.tokenize_chinese_chars);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_true(cfg.normalize);
	assert_int_equal(cfg.max_seq_length, 256);
}

/* model_config_load on the tiny model written by make_tiny_model.py. */
static void
test_load_tiny_model(void **state)
{
	char		dir[256];
	char		cmd[1024];
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	if (system("command -v python3 >/dev/null 2>&1") != 0)
	{
		print_message("no python3: skipped\n");
		skip();
	}
	make_temp_dir(dir, sizeof(dir));
	snprintf(cmd, sizeof(cmd),
			 "python3 '%s/test/fixtures/make_tiny_model.py' '%s/m'",
			 PEFT_SOURCE_DIR, dir);
	assert_int_equal(system(cmd), 0);
	strcat(dir, "/m");
	if (model_config_load(&cfg, dir, &err) != PEFT_OK)
		fail_msg("%s", err.message);
	assert_string_equal(cfg.model_type, "bert");
	assert_true(cfg.vocab_size > 150 && cfg.vocab_size < 1000);
	assert_int_equal(cfg.hidden_size, 64);
	assert_int_equal(cfg.num_layers, 2);
	assert_int_equal(cfg.num_heads, 4);
	assert_int_equal(cfg.intermediate_size, 128);
	assert_int_equal(cfg.max_position, 64);
	assert_int_equal(cfg.type_vocab_size, 2);
	assert_true(cfg.do_lower_case);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_true(cfg.normalize);
	assert_int_equal(cfg.max_seq_length, 64);
	dir[strlen(dir) - 2] = '\0';
	remove_tree(dir);
}

/* model_config_load: missing folder or config.json, missing optional files. */
static void
test_load_missing_files(void **state)
{
	char		dir[256];
	char		expected[600];
	char	   *json = config_with(NULL, NULL);
	ModelConfig cfg;
	PeftError	err;

	(void) state;
	make_temp_dir(dir, sizeof(dir));

	/* no config.json: an I/O error naming it */
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_IO);
	snprintf(expected, sizeof(expected), "\"%s/config.json\"", dir);
	assert_non_null(strstr(err.message, expected));

	/* config.json only: every other setting at its default */
	write_file(dir, "config.json", json);
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_OK);
	assert_int_equal(cfg.hidden_size, 64);
	assert_true(cfg.do_lower_case);
	assert_true(cfg.strip_accents);
	assert_int_equal(cfg.pooling, POOLING_MEAN);
	assert_false(cfg.normalize);
	assert_int_equal(cfg.max_seq_length, 0);

	/* pooling config without modules.json still applies */
	assert_int_equal(mkdir(strcat(strcpy(expected, dir), "/1_Pooling"), 0700), 0);
	write_file(dir, "1_Pooling/config.json", "{\"pooling_mode_cls_token\": true}");
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_OK);
	assert_int_equal(cfg.pooling, POOLING_CLS);

	assert_int_equal(model_config_load(&cfg, "/nonexistent/peft/model", &err),
					 PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "/nonexistent/peft/model/config.json"));
	assert_int_equal(model_config_load(&cfg, NULL, &err), PEFT_ERR_INVALID);
	remove_tree(dir);
	free(json);
}

/* model_config_load errors name the full path of the bad file and its key. */
static void
test_load_bad_files(void **state)
{
	char		dir[256];
	char		path[600];
	char		expected[700];
	char	   *json = config_with(NULL, NULL);
	char	   *bad = config_with("hidden_act", "\"relu\"");
	ModelConfig cfg;
	PeftError	err;
	FILE	   *f;

	(void) state;
	make_temp_dir(dir, sizeof(dir));

	write_file(dir, "config.json", bad);
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_UNSUPPORTED);
	snprintf(expected, sizeof(expected), "%s/config.json: key \"hidden_act\"", dir);
	assert_non_null(strstr(err.message, expected));

	write_file(dir, "config.json", json);
	write_file(dir, "tokenizer_config.json", "{\"do_lower_case\": \"no\"}");
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_FORMAT);
	snprintf(expected, sizeof(expected),
			 "%s/tokenizer_config.json: key \"do_lower_case\"", dir);
	assert_non_null(strstr(err.message, expected));
	write_file(dir, "tokenizer_config.json", "{}");

	write_file(dir, "modules.json", "{\"type\": \"x\"}");
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_FORMAT);
	snprintf(expected, sizeof(expected), "%s/modules.json", dir);
	assert_non_null(strstr(err.message, expected));
	write_file(dir, "modules.json", "[]");

	write_file(dir, "sentence_bert_config.json", "{\"max_seq_length\": -3}");
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_FORMAT);
	snprintf(expected, sizeof(expected),
			 "%s/sentence_bert_config.json: key \"max_seq_length\"", dir);
	assert_non_null(strstr(err.message, expected));
	write_file(dir, "sentence_bert_config.json", "{}");
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_OK);

	/* a 20 MB config.json is refused before it is read */
	snprintf(path, sizeof(path), "%s/config.json", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(ftruncate(fileno(f), 20 * 1024 * 1024), 0);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_NOMEM);
	assert_non_null(strstr(err.message, path));

	/* config.json that is a directory */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(model_config_load(&cfg, dir, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));

	remove_tree(dir);
	free(json);
	free(bad);
}

/* Run every model-config test. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minilm_config),
		cmocka_unit_test(test_defaults_and_length),
		cmocka_unit_test(test_optional_values),
		cmocka_unit_test(test_architectures),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_missing_keys),
		cmocka_unit_test(test_not_json),
		cmocka_unit_test(test_duplicate_key),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_large_text),
		cmocka_unit_test(test_tokenizer_config),
		cmocka_unit_test(test_pooling_minilm),
		cmocka_unit_test(test_pooling_variants),
		cmocka_unit_test(test_sentence_bert_config),
		cmocka_unit_test(test_read_small_file),
		cmocka_unit_test(test_load_real_model),
		cmocka_unit_test(test_load_tiny_model),
		cmocka_unit_test(test_load_missing_files),
		cmocka_unit_test(test_load_bad_files),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
