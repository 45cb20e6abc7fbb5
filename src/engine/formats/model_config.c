/*
 * model_config.c - read what a Hugging Face model folder says about its
 * model: config.json, tokenizer_config.json, modules.json,
 * 1_Pooling/config.json and sentence_bert_config.json.
 *
 * A model folder is registered by a user, so every value is checked: types,
 * ranges, and the architecture (only BERT is implemented).  Each message
 * names the file and the key, so the user can fix the file.
 */
#include "model_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Config files are small; anything bigger is not a config file. */
#define CONFIG_FILE_LIMIT (16 * 1024 * 1024)

/* Sane upper bounds for a model's sizes (far above any real BERT). */
#define MAX_VOCAB_SIZE 10000000
#define MAX_HIDDEN_SIZE 65536
#define MAX_LAYERS 256
#define MAX_INTERMEDIATE_SIZE (1 << 20)
#define MAX_POSITIONS (1 << 16)
#define MAX_TYPE_VOCAB_SIZE 1024

/* Reset every field to the value a missing key or file means. */
static void
config_set_defaults(ModelConfig *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->type_vocab_size = 2;
	cfg->pad_token_id = 0;
	cfg->layer_norm_eps = 1e-12;
	cfg->hidden_dropout = 0.1;
	cfg->attention_dropout = 0.1;
	cfg->do_lower_case = true;
	cfg->strip_accents = true;
	cfg->tokenize_chinese_chars = true;
	cfg->pooling = POOLING_MEAN;
	cfg->normalize = false;
	cfg->max_seq_length = 0;
}

/*
 * Parse len bytes of JSON text that need not be NUL-terminated.  cJSON reads
 * up to a NUL, so the text is copied, and a NUL inside it is an error rather
 * than a silent end of input.
 */
PeftCode
parse_json_text(const char *text, size_t len, const char *what, cJSON **out,
				PeftError *err)
{
	char	   *copy;
	const char *parse_end = NULL;

	*out = NULL;
	if (text == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "%s: no text given", what);
	if (memchr(text, '\0', len) != NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: contains a NUL byte", what);
	copy = malloc(len + 1);
	if (copy == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "%s: out of memory for %zu bytes", what, len);
	memcpy(copy, text, len);
	copy[len] = '\0';

	/* cJSON also refuses nesting deeper than CJSON_NESTING_LIMIT */
	*out = cJSON_ParseWithOpts(copy, &parse_end, true);
	if (*out == NULL)
	{
		size_t		at = parse_end ? (size_t) (parse_end - copy) : 0;

		free(copy);
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: not valid JSON (near byte %zu)", what, at);
	}
	free(copy);
	return PEFT_OK;
}

/*
 * Find key in a JSON object.  cJSON keeps duplicate keys and returns the
 * first while Python's json takes the last, so a duplicate is an error.
 * Absent keys and explicit nulls both give *item = NULL.
 */
static PeftCode
get_member(const cJSON *object, const char *key, const char *what,
		   const cJSON **item, PeftError *err)
{
	const cJSON *child;
	const cJSON *found = NULL;

	*item = NULL;
	cJSON_ArrayForEach(child, object)
	{
		if (child->string == NULL || strcmp(child->string, key) != 0)
			continue;
		if (found != NULL)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: key \"%s\" appears more than once", what, key);
		found = child;
	}
	*item = cJSON_IsNull(found) ? NULL : found;
	return PEFT_OK;
}

/*
 * Find key (NULL or absent: *item NULL) and check its JSON type with
 * is_type, failing with "must be " + kind.
 */
static PeftCode
get_typed(const cJSON *object, const char *key, const char *what,
		  cJSON_bool (*is_type) (const cJSON *const), const char *kind,
		  const cJSON **item, PeftError *err)
{
	PeftCode	code;

	if ((code = get_member(object, key, what, item, err)) != PEFT_OK)
		return code;
	if (*item != NULL && !is_type(*item))
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: key \"%s\" must be %s", what, key, kind);
	return PEFT_OK;
}

/*
 * Read an integer key into *out, within [min, max].  A missing key is an
 * error when required, otherwise *out keeps its value.
 */
static PeftCode
get_int(const cJSON *object, const char *key, const char *what, bool required,
		int min, int max, int *out, PeftError *err)
{
	const cJSON *item = NULL;
	double		d;
	PeftCode	code;

	if ((code = get_typed(object, key, what, cJSON_IsNumber, "an integer", &item, err)) != PEFT_OK)
		return code;
	if (item == NULL)
		return required ? peft_fail(err, PEFT_ERR_FORMAT, "%s: required key \"%s\" is missing",
									what, key) : PEFT_OK;
	d = item->valuedouble;
	if (d != floor(d))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"%s\" must be an integer, got %g", what, key, d);
	if (d < min || d > max)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"%s\" must be between %d and %d, got %.0f",
						 what, key, min, max, d);
	*out = (int) d;
	return PEFT_OK;
}

/*
 * Read an optional number key into *out, within [min, max) (or [min, max]
 * when max_inclusive); a missing key keeps *out.
 */
static PeftCode
get_double(const cJSON *object, const char *key, const char *what,
		   double min, double max, bool max_inclusive, double *out,
		   PeftError *err)
{
	const cJSON *item = NULL;
	double		d;
	PeftCode	code;

	if ((code = get_typed(object, key, what, cJSON_IsNumber, "a number", &item, err)) != PEFT_OK ||
		item == NULL)
		return code;
	d = item->valuedouble;
	if (!isfinite(d) || d < min || (max_inclusive ? d > max : d >= max))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"%s\" must be in [%g, %g%s, got %g",
						 what, key, min, max, max_inclusive ? "]" : ")", d);
	*out = d;
	return PEFT_OK;
}

/* Read an optional boolean key into *out; a missing key keeps *out. */
static PeftCode
get_bool(const cJSON *object, const char *key, const char *what, bool *out,
		 PeftError *err)
{
	const cJSON *item = NULL;
	PeftCode	code;

	if ((code = get_typed(object, key, what, cJSON_IsBool, "true or false", &item, err)) != PEFT_OK ||
		item == NULL)
		return code;
	*out = cJSON_IsTrue(item);
	return PEFT_OK;
}

/* Read an optional string key; *out is NULL when missing. */
static PeftCode
get_string(const cJSON *object, const char *key, const char *what,
		   const char **out, PeftError *err)
{
	const cJSON *item = NULL;
	PeftCode	code;

	*out = NULL;
	if ((code = get_typed(object, key, what, cJSON_IsString, "a string", &item, err)) != PEFT_OK ||
		item == NULL)
		return code;
	*out = item->valuestring;
	return PEFT_OK;
}

/* True if s ends with suffix. */
static bool
ends_with(const char *s, const char *suffix)
{
	size_t		n = strlen(s);
	size_t		m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/*
 * Check that config.json describes a BERT: model_type "bert", or, when
 * model_type is absent, a Bert* entry in architectures.
 */
static PeftCode
check_architecture(const cJSON *root, const char *what, ModelConfig *cfg,
				   PeftError *err)
{
	const char *model_type;
	const cJSON *archs;
	const cJSON *arch;
	PeftCode	code;

	if ((code = get_string(root, "model_type", what, &model_type, err)) != PEFT_OK)
		return code;
	if (model_type != NULL)
	{
		if (strcmp(model_type, "bert") != 0)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "%s: key \"model_type\" is \"%.64s\", but only \"bert\" models are supported",
							 what, model_type);
		snprintf(cfg->model_type, sizeof(cfg->model_type), "bert");
		return PEFT_OK;
	}
	if ((code = get_member(root, "architectures", what, &archs, err)) != PEFT_OK)
		return code;
	if (archs != NULL && !cJSON_IsArray(archs))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"architectures\" must be an array of strings",
						 what);
	cJSON_ArrayForEach(arch, archs)
	{
		if (cJSON_IsString(arch) && strncmp(arch->valuestring, "Bert", 4) == 0)
		{
			snprintf(cfg->model_type, sizeof(cfg->model_type), "bert");
			return PEFT_OK;
		}
	}
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "%s: key \"model_type\" is missing and key \"architectures\" names no Bert model; only \"bert\" models are supported",
					 what);
}

/* Parse config.json text; what names the file in messages. */
static PeftCode
parse_config(ModelConfig *cfg, const char *json, size_t len, const char *what,
			 PeftError *err)
{
	cJSON	   *root = NULL;
	const char *act;
	const char *position_type;
	PeftCode	code;

	config_set_defaults(cfg);
	if ((code = parse_json_text(json, len, what, &root, err)) != PEFT_OK)
		return code;
	if (!cJSON_IsObject(root))
	{
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", what);
		goto done;
	}
	if ((code = check_architecture(root, what, cfg, err)) != PEFT_OK ||
		(code = get_int(root, "vocab_size", what, true, 1, MAX_VOCAB_SIZE,
						&cfg->vocab_size, err)) != PEFT_OK ||
		(code = get_int(root, "hidden_size", what, true, 1, MAX_HIDDEN_SIZE,
						&cfg->hidden_size, err)) != PEFT_OK ||
		(code = get_int(root, "num_hidden_layers", what, true, 1, MAX_LAYERS,
						&cfg->num_layers, err)) != PEFT_OK ||
		(code = get_int(root, "num_attention_heads", what, true, 1,
						MAX_HIDDEN_SIZE, &cfg->num_heads, err)) != PEFT_OK ||
		(code = get_int(root, "intermediate_size", what, true, 1,
						MAX_INTERMEDIATE_SIZE, &cfg->intermediate_size,
						err)) != PEFT_OK ||
		(code = get_int(root, "max_position_embeddings", what, true, 1,
						MAX_POSITIONS, &cfg->max_position, err)) != PEFT_OK ||
		(code = get_int(root, "type_vocab_size", what, false, 1,
						MAX_TYPE_VOCAB_SIZE, &cfg->type_vocab_size,
						err)) != PEFT_OK ||
		(code = get_int(root, "pad_token_id", what, false, 0,
						cfg->vocab_size - 1, &cfg->pad_token_id, err)) != PEFT_OK ||
		(code = get_double(root, "layer_norm_eps", what, 0.0, 1.0, false,
						   &cfg->layer_norm_eps, err)) != PEFT_OK ||
		(code = get_double(root, "hidden_dropout_prob", what, 0.0, 1.0, false,
						   &cfg->hidden_dropout, err)) != PEFT_OK ||
		(code = get_double(root, "attention_probs_dropout_prob", what, 0.0,
						   1.0, false, &cfg->attention_dropout, err)) != PEFT_OK)
		goto done;

	/* a zero epsilon would divide by zero on a constant row */
	if (cfg->layer_norm_eps <= 0.0)
	{
		code = peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"layer_norm_eps\" must be positive, got %g",
						 what, cfg->layer_norm_eps);
		goto done;
	}
	if (cfg->hidden_size % cfg->num_heads != 0)
	{
		code = peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"hidden_size\" (%d) is not a multiple of key \"num_attention_heads\" (%d)",
						 what, cfg->hidden_size, cfg->num_heads);
		goto done;
	}

	/* BertConfig's default activation is gelu: a missing key means gelu */
	if ((code = get_string(root, "hidden_act", what, &act, err)) != PEFT_OK)
		goto done;
	if (act != NULL && strcmp(act, "gelu") != 0)
	{
		code = peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "%s: key \"hidden_act\" is \"%.64s\", but only \"gelu\" is supported",
						 what, act);
		goto done;
	}
	if ((code = get_string(root, "position_embedding_type", what,
						   &position_type, err)) != PEFT_OK)
		goto done;
	if (position_type != NULL && strcmp(position_type, "absolute") != 0)
	{
		code = peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "%s: key \"position_embedding_type\" is \"%.64s\", but only \"absolute\" is supported",
						 what, position_type);
		goto done;
	}

done:
	cJSON_Delete(root);
	return code;
}

/* Parse config.json text (len bytes, not necessarily NUL-terminated). */
PeftCode
model_config_parse(ModelConfig *cfg, const char *json, size_t len,
				   PeftError *err)
{
	/* resets cfg first, so call it before the other parse functions */
	return parse_config(cfg, json, len, "config.json", err);
}

/* Apply tokenizer_config.json text; what names the file in messages. */
static PeftCode
parse_tokenizer(ModelConfig *cfg, const char *json, size_t len,
				const char *what, PeftError *err)
{
	cJSON	   *root = NULL;
	const cJSON *strip;
	bool		lower = true;
	bool		chinese = true;
	PeftCode	code;

	if ((code = parse_json_text(json, len, what, &root, err)) != PEFT_OK)
		return code;
	if (!cJSON_IsObject(root))
	{
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", what);
		goto done;
	}
	if ((code = get_bool(root, "do_lower_case", what, &lower, err)) != PEFT_OK ||
		(code = get_bool(root, "tokenize_chinese_chars", what, &chinese,
						 err)) != PEFT_OK ||
		(code = get_member(root, "strip_accents", what, &strip, err)) != PEFT_OK)
		goto done;

	/* BertTokenizer: strip_accents null means "strip when lower-casing" */
	cfg->do_lower_case = lower;
	cfg->tokenize_chinese_chars = chinese;
	if (strip == NULL)
		cfg->strip_accents = lower;
	else if (cJSON_IsBool(strip))
		cfg->strip_accents = cJSON_IsTrue(strip);
	else
		code = peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"strip_accents\" must be true, false or null",
						 what);

done:
	cJSON_Delete(root);
	return code;
}

/* Apply tokenizer_config.json text. */
PeftCode
model_config_parse_tokenizer(ModelConfig *cfg, const char *json, size_t len,
							 PeftError *err)
{
	return parse_tokenizer(cfg, json, len, "tokenizer_config.json", err);
}

/* Apply modules.json: a Normalize module means unit-length embeddings. */
static PeftCode
parse_modules(ModelConfig *cfg, const char *json, size_t len, const char *what,
			  PeftError *err)
{
	cJSON	   *root = NULL;
	const cJSON *module;
	bool		normalize = false;
	int			index = 0;
	PeftCode	code;

	if ((code = parse_json_text(json, len, what, &root, err)) != PEFT_OK)
		return code;
	if (!cJSON_IsArray(root))
	{
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON array", what);
		goto done;
	}
	cJSON_ArrayForEach(module, root)
	{
		const char *type;

		if (!cJSON_IsObject(module))
		{
			code = peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: module %d is not a JSON object", what, index);
			goto done;
		}
		if ((code = get_string(module, "type", what, &type, err)) != PEFT_OK)
			goto done;
		if (type == NULL)
		{
			code = peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: module %d has no key \"type\"", what, index);
			goto done;
		}
		if (ends_with(type, "Normalize"))
			normalize = true;
		index++;
	}
	cfg->normalize = normalize;

done:
	cJSON_Delete(root);
	return code;
}

/*
 * Apply 1_Pooling/config.json: exactly one of mean or CLS pooling.  Other
 * modes (max, mean of sqrt length, weighted mean, last token) and
 * combinations of modes are not implemented.
 */
static PeftCode
parse_pooling_config(ModelConfig *cfg, const char *json, size_t len,
					 const char *what, PeftError *err)
{
	static const char *const unsupported_modes[] = {
		"pooling_mode_max_tokens",
		"pooling_mode_mean_sqrt_len_tokens",
		"pooling_mode_weightedmean_tokens",
		"pooling_mode_lasttoken",
	};
	cJSON	   *root = NULL;
	bool		mean = false;
	bool		cls = false;
	int			dimension = 0;
	PeftCode	code;

	if ((code = parse_json_text(json, len, what, &root, err)) != PEFT_OK)
		return code;
	if (!cJSON_IsObject(root))
	{
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", what);
		goto done;
	}
	if ((code = get_bool(root, "pooling_mode_mean_tokens", what, &mean,
						 err)) != PEFT_OK ||
		(code = get_bool(root, "pooling_mode_cls_token", what, &cls,
						 err)) != PEFT_OK ||
		(code = get_int(root, "word_embedding_dimension", what, false, 1,
						MAX_HIDDEN_SIZE, &dimension, err)) != PEFT_OK)
		goto done;
	for (size_t i = 0; i < sizeof(unsupported_modes) / sizeof(unsupported_modes[0]); i++)
	{
		bool		on = false;

		if ((code = get_bool(root, unsupported_modes[i], what, &on, err)) != PEFT_OK)
			goto done;
		if (on)
		{
			code = peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "%s: key \"%s\" is true, but only mean and CLS pooling are supported",
							 what, unsupported_modes[i]);
			goto done;
		}
	}
	if (mean && cls)
	{
		code = peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "%s: keys \"pooling_mode_mean_tokens\" and \"pooling_mode_cls_token\" are both true; concatenated pooling is not supported",
						 what);
		goto done;
	}
	if (!mean && !cls)
	{
		code = peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: neither key \"pooling_mode_mean_tokens\" nor key \"pooling_mode_cls_token\" is true",
						 what);
		goto done;
	}
	if (dimension != 0 && cfg->hidden_size != 0 && dimension != cfg->hidden_size)
	{
		code = peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: key \"word_embedding_dimension\" is %d, but the model's hidden_size is %d",
						 what, dimension, cfg->hidden_size);
		goto done;
	}
	cfg->pooling = mean ? POOLING_MEAN : POOLING_CLS;

done:
	cJSON_Delete(root);
	return code;
}

/* Apply modules.json + 1_Pooling/config.json texts (either may be NULL). */
PeftCode
model_config_parse_pooling(ModelConfig *cfg, const char *modules_json,
						   size_t modules_len, const char *pooling_json,
						   size_t pooling_len, PeftError *err)
{
	PeftCode	code;

	if (modules_json != NULL &&
		(code = parse_modules(cfg, modules_json, modules_len, "modules.json",
							  err)) != PEFT_OK)
		return code;
	if (pooling_json != NULL &&
		(code = parse_pooling_config(cfg, pooling_json, pooling_len,
									 "1_Pooling/config.json", err)) != PEFT_OK)
		return code;
	return PEFT_OK;
}

/* Apply sentence_bert_config.json text; what names the file in messages. */
static PeftCode
parse_sentence_bert(ModelConfig *cfg, const char *json, size_t len,
					const char *what, PeftError *err)
{
	cJSON	   *root = NULL;
	int			max_seq_length = 0;
	bool		lower = false;
	PeftCode	code;

	if ((code = parse_json_text(json, len, what, &root, err)) != PEFT_OK)
		return code;
	if (!cJSON_IsObject(root))
	{
		code = peft_fail(err, PEFT_ERR_FORMAT, "%s: not a JSON object", what);
		goto done;
	}
	if ((code = get_int(root, "max_seq_length", what, false, 1, MAX_POSITIONS,
						&max_seq_length, err)) != PEFT_OK ||
		(code = get_bool(root, "do_lower_case", what, &lower, err)) != PEFT_OK)
		goto done;

	/* as sentence-transformers: never longer than the position table */
	if (cfg->max_position > 0 && max_seq_length > cfg->max_position)
		max_seq_length = cfg->max_position;
	cfg->max_seq_length = max_seq_length;

	/* sentence-transformers lower-cases the text itself when asked to */
	if (lower)
		cfg->do_lower_case = true;

done:
	cJSON_Delete(root);
	return code;
}

/* Apply sentence_bert_config.json text (max_seq_length). */
PeftCode
model_config_parse_sentence_bert(ModelConfig *cfg, const char *json,
								 size_t len, PeftError *err)
{
	return parse_sentence_bert(cfg, json, len, "sentence_bert_config.json", err);
}

/*
 * Read a regular file of at most limit bytes.  *missing (if not NULL) tells
 * a file that does not exist apart from one that cannot be read.
 */
static PeftCode
read_file(const char *path, size_t limit, char **out, size_t *len,
		  bool *missing, PeftError *err)
{
	struct stat st;
	char	   *buf;
	size_t		size;
	size_t		done = 0;
	int			fd;

	*out = NULL;
	*len = 0;
	if (missing)
		*missing = false;

	/* O_NONBLOCK so that a FIFO at the path cannot hang the open */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
	{
		if (missing && errno == ENOENT)
			*missing = true;
		return peft_fail(err, PEFT_ERR_IO, "could not open \"%s\": %s",
						 path, strerror(errno));
	}
	if (fstat(fd, &st) != 0)
	{
		int			saved = errno;

		close(fd);
		return peft_fail(err, PEFT_ERR_IO, "could not stat \"%s\": %s",
						 path, strerror(saved));
	}
	if (!S_ISREG(st.st_mode))
	{
		close(fd);
		return peft_fail(err, PEFT_ERR_IO, "\"%s\" is not a regular file", path);
	}
	if ((uint64_t) st.st_size > limit)
	{
		close(fd);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "\"%s\" is %lld bytes, more than the limit of %zu",
						 path, (long long) st.st_size, limit);
	}
	size = (size_t) st.st_size;
	buf = malloc(size + 1);
	if (buf == NULL)
	{
		close(fd);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory reading \"%s\"", path);
	}

	/* the file may shrink while we read: stop at end of file */
	while (done < size)
	{
		ssize_t		n = read(fd, buf + done, size - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			int			saved = errno;

			free(buf);
			close(fd);
			return peft_fail(err, PEFT_ERR_IO, "could not read \"%s\": %s",
							 path, strerror(saved));
		}
		if (n == 0)
			break;
		done += (size_t) n;
	}
	close(fd);
	buf[done] = '\0';
	*out = buf;
	*len = done;
	return PEFT_OK;
}

/* Read a whole small file into a NUL-terminated malloc'ed buffer. */
PeftCode
read_small_file(const char *path, size_t limit, char **out, size_t *len,
				PeftError *err)
{
	return read_file(path, limit, out, len, NULL, err);
}

/* Join dir and name into buf, failing if the path does not fit. */
static PeftCode
join_path(char *buf, size_t buflen, const char *dir, const char *name,
		  PeftError *err)
{
	int			n = snprintf(buf, buflen, "%s/%s", dir, name);

	if (n < 0 || (size_t) n >= buflen)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "model path \"%.200s\" is too long", dir);
	return PEFT_OK;
}

/*
 * Read dir/name if it exists.  *text stays NULL for a missing optional file;
 * a missing required file is an error.
 */
static PeftCode
read_config_file(const char *dir, const char *name, bool required,
				 char *path, size_t pathlen, char **text, size_t *len,
				 PeftError *err)
{
	bool		missing;
	PeftCode	code;

	*text = NULL;
	*len = 0;
	if ((code = join_path(path, pathlen, dir, name, err)) != PEFT_OK)
		return code;
	code = read_file(path, CONFIG_FILE_LIMIT, text, len, &missing, err);
	if (code != PEFT_OK && missing && !required)
	{
		peft_error_clear(err);
		return PEFT_OK;
	}
	return code;
}

/* Read and apply every config file of a model folder. */
PeftCode
model_config_load(ModelConfig *cfg, const char *dir, PeftError *err)
{
	char		path[PATH_MAX];
	char		pooling_path[PATH_MAX];
	char	   *text = NULL;
	char	   *pooling_text = NULL;
	size_t		len;
	size_t		pooling_len;
	PeftCode	code;

	if (dir == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "model directory is NULL");

	/* messages below name the full path, so the user knows which file */
	if ((code = read_config_file(dir, "config.json", true, path, sizeof(path),
								 &text, &len, err)) != PEFT_OK)
		return code;
	code = parse_config(cfg, text, len, path, err);
	free(text);
	if (code != PEFT_OK)
		return code;

	if ((code = read_config_file(dir, "tokenizer_config.json", false, path,
								 sizeof(path), &text, &len, err)) != PEFT_OK)
		return code;
	if (text != NULL)
	{
		code = parse_tokenizer(cfg, text, len, path, err);
		free(text);
		if (code != PEFT_OK)
			return code;
	}

	if ((code = read_config_file(dir, "modules.json", false, path,
								 sizeof(path), &text, &len, err)) != PEFT_OK)
		return code;
	if ((code = read_config_file(dir, "1_Pooling/config.json", false,
								 pooling_path, sizeof(pooling_path),
								 &pooling_text, &pooling_len, err)) != PEFT_OK)
	{
		free(text);
		return code;
	}
	if (text != NULL)
		code = parse_modules(cfg, text, len, path, err);
	if (code == PEFT_OK && pooling_text != NULL)
		code = parse_pooling_config(cfg, pooling_text, pooling_len,
									pooling_path, err);
	free(text);
	free(pooling_text);
	if (code != PEFT_OK)
		return code;

	/* after tokenizer_config.json: its do_lower_case may switch lower-casing on */
	if ((code = read_config_file(dir, "sentence_bert_config.json", false, path,
								 sizeof(path), &text, &len, err)) != PEFT_OK)
		return code;
	if (text != NULL)
	{
		code = parse_sentence_bert(cfg, text, len, path, err);
		free(text);
	}
	return code;
}
