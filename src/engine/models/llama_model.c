/*
 * llama_model.c - load a LLaMA-family decoder from GGUF or from a Hugging
 * Face folder into llama_model.h's structure, checking every shape and type
 * against the configuration before anything computes with it.
 */
#define _GNU_SOURCE
#include "llama_model.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model_config.h"
#include "quant.h"

/* Largest config.json / tokenizer_config.json read (they are a few KB; chat templates add some). */
#define CONFIG_FILE_LIMIT (4 * 1024 * 1024)
/* Bounds on what a configuration may claim, so that products of them cannot overflow. */
#define MAX_LAYERS 1024
#define MAX_DIM (1 << 20)
#define MAX_VOCAB (1 << 24)

/* Whether name ends in suffix. */
static bool
ends_with(const char *name, const char *suffix)
{
	size_t		n = strlen(name),
				s = strlen(suffix);

	return n >= s && strcmp(name + n - s, suffix) == 0;
}

/* The one .gguf file in dir (malloc'd), or NULL if none or several. */
static char *
single_gguf_in(const char *dir)
{
	DIR		   *d = opendir(dir);
	struct dirent *e;
	char	   *found = NULL;
	int			count = 0;

	if (d == NULL)
		return NULL;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.' && ends_with(e->d_name, ".gguf"))
		{
			if (count++ == 0 && asprintf(&found, "%s/%s", dir, e->d_name) < 0)
				found = NULL;
		}
	closedir(d);
	if (count != 1)
	{
		free(found);
		return NULL;
	}
	return found;
}

/* Whether dir/config.json names a LLaMA-family model_type. */
static bool
hf_folder_is_llama(const char *dir)
{
	char		path[4096];
	char	   *text = NULL;
	size_t		len;
	PeftError	err = {0};
	cJSON	   *root = NULL;
	const cJSON *type;
	bool		yes;

	snprintf(path, sizeof(path), "%s/config.json", dir);
	if (read_small_file(path, CONFIG_FILE_LIMIT, &text, &len, &err) != PEFT_OK)
		return false;
	if (parse_json_text(text, len, "config.json", &root, &err) != PEFT_OK)
	{
		free(text);
		return false;
	}
	type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
	yes = cJSON_IsString(type) && strcmp(type->valuestring, "llama") == 0;
	cJSON_Delete(root);
	free(text);
	return yes;
}

bool
llama_model_detect(const char *path, char **gguf_path)
{
	struct stat st;

	*gguf_path = NULL;
	if (stat(path, &st) != 0)
		return false;
	if (S_ISREG(st.st_mode))
	{
		if (!ends_with(path, ".gguf"))
			return false;
		*gguf_path = strdup(path);
		return *gguf_path != NULL;
	}
	if (!S_ISDIR(st.st_mode))
		return false;
	if ((*gguf_path = single_gguf_in(path)) != NULL)
		return true;
	return hf_folder_is_llama(path);
}

/* ---- shared checks ------------------------------------------------------ */

/* Check a configuration's numbers against each other and the bounds. */
static PeftCode
check_config(LlamaConfig *c, PeftError *err)
{
	if (c->num_layers < 1 || c->num_layers > MAX_LAYERS ||
		c->hidden_size < 1 || c->hidden_size > MAX_DIM ||
		c->intermediate_size < 1 || c->intermediate_size > MAX_DIM ||
		c->num_heads < 1 || c->num_heads > 4096 ||
		c->num_kv_heads < 1 || c->num_kv_heads > c->num_heads ||
		c->vocab_size < 1 || c->vocab_size > MAX_VOCAB)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "decoder configuration out of range: %d layers, hidden %d, feed-forward %d, "
						 "%d heads, %d key/value heads, vocabulary %d",
						 c->num_layers, c->hidden_size, c->intermediate_size, c->num_heads,
						 c->num_kv_heads, c->vocab_size);
	if (c->num_heads % c->num_kv_heads != 0)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%d attention heads are not a multiple of %d key/value heads",
						 c->num_heads, c->num_kv_heads);
	if (c->head_dim == 0)
	{
		if (c->hidden_size % c->num_heads != 0)
			return peft_fail(err, PEFT_ERR_FORMAT, "hidden size %d is not a multiple of %d heads",
							 c->hidden_size, c->num_heads);
		c->head_dim = c->hidden_size / c->num_heads;
	}
	if (c->head_dim < 2 || c->head_dim % 2 != 0 || c->head_dim > 1024)
		return peft_fail(err, PEFT_ERR_FORMAT, "head size %d is not an even number up to 1024",
						 c->head_dim);
	if (c->context_length < 1 || c->context_length > (1 << 24))
		c->context_length = 2048;
	if (!(c->rope_base > 0) || !isfinite(c->rope_base))
		return peft_fail(err, PEFT_ERR_FORMAT, "rotary base %g is not a positive number", c->rope_base);
	if (!(c->rms_eps > 0) || !(c->rms_eps < 1))
		return peft_fail(err, PEFT_ERR_FORMAT, "RMSNorm epsilon %g is not in (0, 1)", c->rms_eps);
	return PEFT_OK;
}

/* A matrix's expected shape and a supported type, or an error naming it. */
static PeftCode
check_matrix(const QMatrix *m, const char *name, int64_t rows, int64_t cols, PeftError *err)
{
	if (m->rows != rows || m->cols != cols)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "tensor %s is [%lld, %lld], expected [%lld, %lld]", name,
						 (long long) m->rows, (long long) m->cols, (long long) rows, (long long) cols);
	if (!quant_supported(m->type))
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s has type %s, which the decoder cannot multiply",
						 name, gguf_type_name(m->type));
	return PEFT_OK;
}

/* A vector of n values of type at data as malloc'd float32. */
static PeftCode
vector_to_float(GgmlType type, const void *data, int64_t n, const char *name, float **out,
				PeftError *err)
{
	if (type != GGML_F32 && type != GGML_F16 && type != GGML_BF16)
		return peft_fail(err, PEFT_ERR_FORMAT, "norm weight %s has type %s (F32, F16 or BF16 expected)",
						 name, gguf_type_name(type));
	*out = malloc(sizeof(float) * n);
	if (*out == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for %s", name);
	quant_dequantize(type, data, n, *out);
	for (int64_t i = 0; i < n; i++)
		if (!isfinite((*out)[i]))
			return peft_fail(err, PEFT_ERR_FORMAT, "norm weight %s holds a non-finite value", name);
	return PEFT_OK;
}

/* The sizes a layer tensor's shape is made of. */
typedef enum LayerDim
{
	DIM_HIDDEN,					/* hidden_size */
	DIM_FFN,					/* intermediate_size */
	DIM_Q,						/* num_heads * head_dim */
	DIM_KV						/* num_kv_heads * head_dim */
} LayerDim;

/*
 * A decoder layer's tensors, once for both layouts: where each lands in
 * LlamaLayer, its name in GGUF (blk.N.<gguf>.weight) and in Hugging Face
 * safetensors (model.layers.N.<hf>.weight), and a matrix's shape.  A
 * vector is an RMSNorm weight of hidden_size values (its rows and cols unused).
 */
typedef struct LayerTensor
{
	size_t		offset;
	bool		vector;
	const char *gguf;
	const char *hf;
	const char *what;			/* for messages */
	LayerDim	rows;
	LayerDim	cols;
} LayerTensor;

static const LayerTensor layer_tensors[] = {
	{offsetof(LlamaLayer, attn_norm), true, "attn_norm", "input_layernorm", "attention norm", DIM_HIDDEN, DIM_HIDDEN},
	{offsetof(LlamaLayer, wq), false, "attn_q", "self_attn.q_proj", "query projection", DIM_Q, DIM_HIDDEN},
	{offsetof(LlamaLayer, wk), false, "attn_k", "self_attn.k_proj", "key projection", DIM_KV, DIM_HIDDEN},
	{offsetof(LlamaLayer, wv), false, "attn_v", "self_attn.v_proj", "value projection", DIM_KV, DIM_HIDDEN},
	{offsetof(LlamaLayer, wo), false, "attn_output", "self_attn.o_proj", "output projection", DIM_HIDDEN, DIM_Q},
	{offsetof(LlamaLayer, ffn_norm), true, "ffn_norm", "post_attention_layernorm", "feed-forward norm", DIM_HIDDEN, DIM_HIDDEN},
	{offsetof(LlamaLayer, w_gate), false, "ffn_gate", "mlp.gate_proj", "gate projection", DIM_FFN, DIM_HIDDEN},
	{offsetof(LlamaLayer, w_up), false, "ffn_up", "mlp.up_proj", "up projection", DIM_FFN, DIM_HIDDEN},
	{offsetof(LlamaLayer, w_down), false, "ffn_down", "mlp.down_proj", "down projection", DIM_HIDDEN, DIM_FFN},
};
#define NUM_LAYER_TENSORS (sizeof(layer_tensors) / sizeof(layer_tensors[0]))

/* The size a LayerDim stands for in c. */
static int64_t
layer_dim(const LlamaConfig *c, LayerDim d)
{
	switch (d)
	{
		case DIM_FFN:
			return c->intermediate_size;
		case DIM_Q:
			return (int64_t) c->num_heads * c->head_dim;
		case DIM_KV:
			return (int64_t) c->num_kv_heads * c->head_dim;
		default:
			return c->hidden_size;
	}
}

/* The type most of the model's matrices have, or "mixed". */
static void
describe_quantization(LlamaModel *m)
{
	int			counts[64] = {0};
	int			best = -1,
				total = 0;

	for (int l = 0; l < m->cfg.num_layers; l++)
		for (size_t t = 0; t < NUM_LAYER_TENSORS; t++)
		{
			const QMatrix *q = (const QMatrix *) ((const char *) &m->layers[l] + layer_tensors[t].offset);

			if (!layer_tensors[t].vector && q->type < 64)
			{
				counts[q->type]++;
				total++;
			}
		}
	for (int t = 0; t < 64; t++)
		if (counts[t] > 0 && (best < 0 || counts[t] > counts[best]))
			best = t;
	snprintf(m->quantization, sizeof(m->quantization), "%s",
			 best < 0 ? "none" : counts[best] == total ? gguf_type_name(best) : "mixed");
}

/* Count the parameters of every matrix and norm. */
static void
count_parameters(LlamaModel *m)
{
	const LlamaConfig *c = &m->cfg;
	int64_t		per_layer = 2 * (int64_t) c->hidden_size +
		(int64_t) c->hidden_size * c->head_dim * (2 * c->num_heads + 2 * c->num_kv_heads) +
		3 * (int64_t) c->hidden_size * c->intermediate_size;

	m->parameters = per_layer * c->num_layers + (int64_t) c->vocab_size * c->hidden_size *
		(c->tied_embeddings ? 1 : 2) + c->hidden_size;
}

/* Check every layer's matrices against the configuration. */
static PeftCode
check_layers(LlamaModel *m, PeftError *err)
{
	const LlamaConfig *c = &m->cfg;
	PeftCode	rc = PEFT_OK;
	char		name[64];

	for (int l = 0; l < c->num_layers && rc == PEFT_OK; l++)
		for (size_t t = 0; t < NUM_LAYER_TENSORS && rc == PEFT_OK; t++)
		{
			const LayerTensor *lt = &layer_tensors[t];

			if (lt->vector)
				continue;
			snprintf(name, sizeof(name), "layer %d %s", l, lt->what);
			rc = check_matrix((const QMatrix *) ((const char *) &m->layers[l] + lt->offset), name,
							  layer_dim(c, lt->rows), layer_dim(c, lt->cols), err);
		}
	if (rc == PEFT_OK)
		rc = check_matrix(&m->embed, "token embeddings", c->vocab_size, c->hidden_size, err);
	if (rc == PEFT_OK)
		rc = check_matrix(&m->output, "output head", c->vocab_size, c->hidden_size, err);
	return rc;
}

/* ---- GGUF ----------------------------------------------------------------- */

/* A float metadata value (F32/F64, or an integer), or def when absent. */
static PeftCode
gguf_number(const GgufFile *f, const char *key, double def, double *out, PeftError *err)
{
	const GgufValue *v = gguf_find(f, key);

	if (v == NULL)
	{
		*out = def;
		return PEFT_OK;
	}
	switch (v->type)
	{
		case GGUF_F32:
		case GGUF_F64:
			*out = v->f;
			return PEFT_OK;
		case GGUF_U8:
		case GGUF_U16:
		case GGUF_U32:
		case GGUF_U64:
			*out = (double) v->u;
			return PEFT_OK;
		case GGUF_I8:
		case GGUF_I16:
		case GGUF_I32:
		case GGUF_I64:
			*out = (double) v->i;
			return PEFT_OK;
		default:
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF key %s is not a number", key);
	}
}

/* An integer metadata value bounded by max, or def when absent (def < 0: required). */
static PeftCode
gguf_int(const GgufFile *f, const char *key, int64_t def, int64_t max, int *out, PeftError *err)
{
	uint64_t	v;
	PeftCode	rc;

	if (gguf_find(f, key) == NULL)
	{
		if (def < 0)
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF file has no %s", key);
		*out = (int) def;
		return PEFT_OK;
	}
	if ((rc = gguf_get_uint(f, key, &v, err)) != PEFT_OK)
		return rc;
	if (v > (uint64_t) max)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF key %s = %llu is out of range (at most %lld)",
						 key, (unsigned long long) v, (long long) max);
	*out = (int) v;
	return PEFT_OK;
}

/* A GGUF tensor as a matrix (ggml's dims[0] is the row length). */
static PeftCode
gguf_matrix(const GgufFile *f, const char *name, QMatrix *m, PeftError *err)
{
	const GgufTensor *t = gguf_find_tensor(f, name);

	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF file has no tensor %s", name);
	if (t->ndim != 2)
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s has %d dimensions, expected 2", name, t->ndim);
	m->type = t->type;
	m->cols = t->dims[0];
	m->rows = t->dims[1];
	m->data = t->data;
	return PEFT_OK;
}

/* A GGUF norm vector of n values as float32. */
static PeftCode
gguf_vector(const GgufFile *f, const char *name, int64_t n, float **out, PeftError *err)
{
	const GgufTensor *t = gguf_find_tensor(f, name);

	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF file has no tensor %s", name);
	if (t->ndim != 1 || t->dims[0] != n)
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s is not a vector of %lld values",
						 name, (long long) n);
	return vector_to_float(t->type, t->data, n, name, out, err);
}

/* The configuration from GGUF metadata (architecture "llama"). */
static PeftCode
gguf_config(const GgufFile *f, LlamaConfig *c, PeftError *err)
{
	char	   *arch = NULL;
	char		key[128];
	const GgufValue *tokens;
	PeftCode	rc;

	if ((rc = gguf_get_string(f, "general.architecture", &arch, err)) != PEFT_OK)
		return rc;
	if (strcmp(arch, "llama") != 0)
	{
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "GGUF architecture \"%.64s\" is not supported (the decoder reads \"llama\")", arch);
		free(arch);
		return rc;
	}
	free(arch);
#define INT_KEY(field, suffix, def, max) \
	if (rc == PEFT_OK) { snprintf(key, sizeof(key), "llama.%s", suffix); \
		rc = gguf_int(f, key, def, max, &c->field, err); }
	INT_KEY(num_layers, "block_count", -1, MAX_LAYERS);
	INT_KEY(hidden_size, "embedding_length", -1, MAX_DIM);
	INT_KEY(intermediate_size, "feed_forward_length", -1, MAX_DIM);
	INT_KEY(num_heads, "attention.head_count", -1, 4096);
	INT_KEY(num_kv_heads, "attention.head_count_kv", c->num_heads, 4096);
	INT_KEY(head_dim, "attention.key_length", 0, 1024);
	INT_KEY(context_length, "context_length", 2048, 1 << 24);
#undef INT_KEY
	if (rc == PEFT_OK)
		rc = gguf_number(f, "llama.rope.freq_base", 10000.0, &c->rope_base, err);
	if (rc == PEFT_OK)
		rc = gguf_number(f, "llama.attention.layer_norm_rms_epsilon", -1, &c->rms_eps, err);
	if (rc != PEFT_OK)
		return rc;
	if (gguf_find(f, "llama.rope.scaling.type") != NULL || gguf_find(f, "llama.rope.scaling.factor") != NULL)
	{
		double		factor;

		if ((rc = gguf_number(f, "llama.rope.scaling.factor", 1.0, &factor, err)) != PEFT_OK)
			return rc;
		if (factor != 1.0)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "rotary scaling (factor %g) is not supported yet", factor);
	}
	tokens = gguf_find(f, "tokenizer.ggml.tokens");
	c->vocab_size = tokens && tokens->type == GGUF_ARRAY && tokens->count <= MAX_VOCAB ?
		(int) tokens->count : 0;
	if (c->vocab_size == 0)
	{
		const GgufTensor *e = gguf_find_tensor(f, "token_embd.weight");

		if (e == NULL || e->ndim != 2 || e->dims[1] > MAX_VOCAB)
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF file has neither a vocabulary nor token embeddings");
		c->vocab_size = (int) e->dims[1];
	}
	c->rope_layout = ROPE_PAIRS;
	return check_config(c, err);
}

PeftCode
llama_model_from_gguf(GgufFile *file, LlamaModel **out, PeftError *err)
{
	LlamaModel *m = calloc(1, sizeof(LlamaModel));
	LlamaConfig *c;
	PeftCode	rc;
	char		name[96];

	*out = NULL;
	if (m == NULL)
	{
		gguf_close(file);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading a decoder");
	}
	m->gguf = file;
	c = &m->cfg;
	snprintf(m->source, sizeof(m->source), "gguf");
	m->file_bytes = (int64_t) file->size;
	rc = gguf_config(file, c, err);
	if (rc == PEFT_OK && (m->layers = calloc(c->num_layers, sizeof(LlamaLayer))) == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading a decoder");
	for (int l = 0; rc == PEFT_OK && l < c->num_layers; l++)
		for (size_t t = 0; t < NUM_LAYER_TENSORS && rc == PEFT_OK; t++)
		{
			const LayerTensor *lt = &layer_tensors[t];
			char	   *field = (char *) &m->layers[l] + lt->offset;

			snprintf(name, sizeof(name), "blk.%d.%s.weight", l, lt->gguf);
			rc = lt->vector ? gguf_vector(file, name, c->hidden_size, (float **) field, err) :
				gguf_matrix(file, name, (QMatrix *) field, err);
		}
	if (rc == PEFT_OK)
		rc = gguf_matrix(file, "token_embd.weight", &m->embed, err);
	if (rc == PEFT_OK)
		rc = gguf_vector(file, "output_norm.weight", c->hidden_size, &m->final_norm, err);
	if (rc == PEFT_OK)
	{
		c->tied_embeddings = gguf_find_tensor(file, "output.weight") == NULL;
		if (c->tied_embeddings)
			m->output = m->embed;
		else
			rc = gguf_matrix(file, "output.weight", &m->output, err);
	}
	if (rc == PEFT_OK)
		rc = check_layers(m, err);
	if (rc == PEFT_OK && gguf_find(file, "tokenizer.chat_template") != NULL)
		rc = gguf_get_string(file, "tokenizer.chat_template", &m->chat_template, err);
	if (rc != PEFT_OK)
	{
		llama_model_free(m);
		return rc;
	}
	describe_quantization(m);
	count_parameters(m);
	*out = m;
	return PEFT_OK;
}

/* ---- Hugging Face folder ------------------------------------------------ */

/* An integer field of a config object, def when absent (def < 0: required). */
static PeftCode
json_int(const cJSON *root, const char *key, int def, int max, int *out, PeftError *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);

	if (v == NULL || cJSON_IsNull(v))
	{
		if (def < 0)
			return peft_fail(err, PEFT_ERR_FORMAT, "config.json has no %s", key);
		*out = def;
		return PEFT_OK;
	}
	if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
		v->valuedouble < 0 || v->valuedouble > max)
		return peft_fail(err, PEFT_ERR_FORMAT, "config.json's %s is not an integer in 0..%d", key, max);
	*out = (int) v->valuedouble;
	return PEFT_OK;
}

/* A number field of a config object, def when absent. */
static PeftCode
json_number(const cJSON *root, const char *key, double def, double *out, PeftError *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);

	if (v == NULL || cJSON_IsNull(v))
	{
		*out = def;
		return PEFT_OK;
	}
	if (!cJSON_IsNumber(v))
		return peft_fail(err, PEFT_ERR_FORMAT, "config.json's %s is not a number", key);
	*out = v->valuedouble;
	return PEFT_OK;
}

/* Whether a boolean field is true (absent: def). */
static bool
json_bool(const cJSON *root, const char *key, bool def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);

	return v == NULL || cJSON_IsNull(v) ? def : cJSON_IsTrue(v);
}

/* The configuration from a LLaMA config.json. */
static PeftCode
hf_config(const char *dir, LlamaConfig *c, PeftError *err)
{
	char		path[4096];
	char	   *text = NULL;
	size_t		len;
	cJSON	   *root = NULL;
	const cJSON *params;
	const cJSON *scaling;
	PeftCode	rc;

	snprintf(path, sizeof(path), "%s/config.json", dir);
	if ((rc = read_small_file(path, CONFIG_FILE_LIMIT, &text, &len, err)) != PEFT_OK)
		return rc;
	rc = parse_json_text(text, len, "config.json", &root, err);
	free(text);
	if (rc != PEFT_OK)
		return rc;
	rc = json_int(root, "num_hidden_layers", -1, MAX_LAYERS, &c->num_layers, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "hidden_size", -1, MAX_DIM, &c->hidden_size, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "intermediate_size", -1, MAX_DIM, &c->intermediate_size, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "num_attention_heads", -1, 4096, &c->num_heads, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "num_key_value_heads", c->num_heads, 4096, &c->num_kv_heads, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "head_dim", 0, 1024, &c->head_dim, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "vocab_size", -1, MAX_VOCAB, &c->vocab_size, err);
	if (rc == PEFT_OK)
		rc = json_int(root, "max_position_embeddings", 2048, 1 << 24, &c->context_length, err);
	if (rc == PEFT_OK)
		rc = json_number(root, "rms_norm_eps", 1e-6, &c->rms_eps, err);
	/* transformers 5 keeps rope_theta under rope_parameters */
	params = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
	if (rc == PEFT_OK)
		rc = json_number(cJSON_IsObject(params) ? params : root, "rope_theta", 10000.0, &c->rope_base, err);
	scaling = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
	if (rc == PEFT_OK && scaling != NULL && !cJSON_IsNull(scaling))
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "config.json's rope_scaling is not supported yet");
	if (rc == PEFT_OK && cJSON_IsObject(params))
	{
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(params, "rope_type");

		if (cJSON_IsString(type) && strcmp(type->valuestring, "default") != 0)
			rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "rope_type \"%.32s\" is not supported yet",
						   type->valuestring);
	}
	if (rc == PEFT_OK && (json_bool(root, "attention_bias", false) || json_bool(root, "mlp_bias", false)))
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "LLaMA models with biases are not supported");
	c->tied_embeddings = json_bool(root, "tie_word_embeddings", false);
	c->rope_layout = ROPE_HALVES;
	cJSON_Delete(root);
	return rc == PEFT_OK ? check_config(c, err) : rc;
}

/* A safetensors matrix (F32, F16 or BF16: raw arrays, the same bytes as ggml's types). */
static PeftCode
st_matrix(const StFile *f, const char *name, QMatrix *m, PeftError *err)
{
	const StTensor *t = st_find(f, name);

	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "model.safetensors has no tensor %s", name);
	if (t->ndim != 2)
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s has %d dimensions, expected 2", name, t->ndim);
	switch (t->dtype)
	{
		case ST_F32:
			m->type = GGML_F32;
			break;
		case ST_F16:
			m->type = GGML_F16;
			break;
		case ST_BF16:
			m->type = GGML_BF16;
			break;
		default:
			return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s has dtype %s (F32, F16 or BF16 expected)",
							 name, st_dtype_name(t->dtype));
	}
	m->rows = t->shape[0];
	m->cols = t->shape[1];
	m->data = t->data;
	return PEFT_OK;
}

/* A safetensors norm vector of n values as float32. */
static PeftCode
st_vector(const StFile *f, const char *name, int64_t n, float **out, PeftError *err)
{
	const StTensor *t = st_find(f, name);
	GgmlType	type;

	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "model.safetensors has no tensor %s", name);
	if (t->ndim != 1 || t->shape[0] != n)
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor %s is not a vector of %lld values",
						 name, (long long) n);
	type = t->dtype == ST_F32 ? GGML_F32 : t->dtype == ST_F16 ? GGML_F16 :
		t->dtype == ST_BF16 ? GGML_BF16 : (GgmlType) -1;
	return vector_to_float(type, t->data, n, name, out, err);
}

/* tokenizer_config.json's chat_template (a string, or the "default" of a list), or NULL. */
static PeftCode
hf_chat_template(const char *dir, char **out, PeftError *err)
{
	char		path[4096];
	char	   *text = NULL;
	size_t		len;
	cJSON	   *root = NULL;
	const cJSON *t;
	PeftError	ignored = {0};
	PeftCode	rc;

	*out = NULL;
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	if (read_small_file(path, CONFIG_FILE_LIMIT, &text, &len, &ignored) != PEFT_OK)
		return PEFT_OK;			/* no tokenizer_config.json: no template */
	rc = parse_json_text(text, len, "tokenizer_config.json", &root, err);
	free(text);
	if (rc != PEFT_OK)
		return rc;
	t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
	if (cJSON_IsArray(t))
	{
		const cJSON *e;

		cJSON_ArrayForEach(e, t)
		{
			const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");

			if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)
			{
				t = cJSON_GetObjectItemCaseSensitive(e, "template");
				break;
			}
		}
	}
	if (cJSON_IsString(t) && (*out = strdup(t->valuestring)) == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading the chat template");
	cJSON_Delete(root);
	return rc;
}

/* Load a Hugging Face LLaMA folder. */
static PeftCode
hf_load(const char *dir, LlamaModel *m, PeftError *err)
{
	LlamaConfig *c = &m->cfg;
	char		name[128];
	PeftCode	rc;

	snprintf(m->source, sizeof(m->source), "hf");
	if ((rc = hf_config(dir, c, err)) != PEFT_OK)
		return rc;
	snprintf(name, sizeof(name), "%s/model.safetensors", dir);
	if ((rc = st_open_file(name, &m->st, err)) != PEFT_OK)
		return rc;
	m->file_bytes = (int64_t) m->st->size;
	if ((m->layers = calloc(c->num_layers, sizeof(LlamaLayer))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading a decoder");
	for (int l = 0; rc == PEFT_OK && l < c->num_layers; l++)
		for (size_t t = 0; t < NUM_LAYER_TENSORS && rc == PEFT_OK; t++)
		{
			const LayerTensor *lt = &layer_tensors[t];
			char	   *field = (char *) &m->layers[l] + lt->offset;

			snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, lt->hf);
			rc = lt->vector ? st_vector(m->st, name, c->hidden_size, (float **) field, err) :
				st_matrix(m->st, name, (QMatrix *) field, err);
		}
	if (rc == PEFT_OK)
		rc = st_matrix(m->st, "model.embed_tokens.weight", &m->embed, err);
	if (rc == PEFT_OK)
		rc = st_vector(m->st, "model.norm.weight", c->hidden_size, &m->final_norm, err);
	if (rc == PEFT_OK)
	{
		/* a folder may say untied and still lack lm_head if saved tied */
		if (c->tied_embeddings || st_find(m->st, "lm_head.weight") == NULL)
		{
			c->tied_embeddings = true;
			m->output = m->embed;
		}
		else
			rc = st_matrix(m->st, "lm_head.weight", &m->output, err);
	}
	if (rc == PEFT_OK)
		rc = check_layers(m, err);
	if (rc == PEFT_OK)
		rc = hf_chat_template(dir, &m->chat_template, err);
	return rc;
}

PeftCode
llama_model_load(const char *path, LlamaModel **out, PeftError *err)
{
	char	   *gguf_path = NULL;
	GgufFile   *file = NULL;
	LlamaModel *m;
	PeftCode	rc;

	*out = NULL;
	if (!llama_model_detect(path, &gguf_path))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s is neither a .gguf file, a folder with one .gguf file, nor a LLaMA "
						 "model folder (config.json with model_type \"llama\")", path);
	if (gguf_path != NULL)
	{
		rc = gguf_open_file(gguf_path, &file, err);
		if (rc == PEFT_OK)
			rc = llama_model_from_gguf(file, out, err);
		if (rc == PEFT_OK && ((*out)->path = gguf_path) != NULL)
			return PEFT_OK;
		free(gguf_path);
		return rc;
	}
	if ((m = calloc(1, sizeof(LlamaModel))) == NULL || (m->path = strdup(path)) == NULL)
	{
		free(m);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading a decoder");
	}
	if ((rc = hf_load(path, m, err)) != PEFT_OK)
	{
		llama_model_free(m);
		return rc;
	}
	describe_quantization(m);
	count_parameters(m);
	*out = m;
	return PEFT_OK;
}

void
llama_model_free(LlamaModel *m)
{
	if (m == NULL)
		return;
	if (m->layers)
		for (int l = 0; l < m->cfg.num_layers; l++)
		{
			free(m->layers[l].attn_norm);
			free(m->layers[l].ffn_norm);
		}
	free(m->layers);
	free(m->final_norm);
	free(m->chat_template);
	free(m->path);
	gguf_close(m->gguf);
	st_close(m->st);
	free(m);
}
