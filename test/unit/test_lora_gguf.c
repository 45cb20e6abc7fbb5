/*
 * test_lora_gguf.c - PEFT LoRA adapters over the tiny LLaMA
 * (test/fixtures/reference/tiny_llama: 2 layers, hidden 32, 4 heads and
 * 2 key/value heads of 8, feed-forward 64) written as llama.cpp's LoRA
 * GGUF (lora_gguf.c over gguf_writer.c) and read back with the project's
 * GGUF reader:
 *
 *   - the writer alone: every metadata type it writes, tensors of 1 to 4
 *     dimensions, alignment and padding, its refusals;
 *   - a random rank-4 adapter on all seven linears: metadata, names,
 *     ggml dimensions, A byte for byte, B byte for byte after undoing the
 *     q/k permutation (written here from llama.cpp's converter, not taken
 *     from the engine), alpha with and without use_rslora;
 *   - the permutation against llama.cpp's own layout: with B set to the
 *     Hugging Face q and k weights (hf/model.safetensors), lora_b holds
 *     exactly tiny.gguf's attn_q / attn_k, which ref_tiny_llama.py wrote
 *     permuted as convert_hf_to_gguf.py does;
 *   - every refusal: DoRA, (IA)^3, prompt tuning, modules_to_save, bad
 *     shapes and ranks, unknown names, layers out of range, missing
 *     factors, untargeted modules, NaN, every truncation of the
 *     safetensors bytes, a malformed config.
 */
#include <setjmp.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decoder_adapter.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "llama_model.h"
#include "lora_gguf.h"
#include "safetensors.h"
#include "test_util.h"

#define TINY_GGUF "test/fixtures/reference/tiny_llama/tiny.gguf"
#define TINY_HF "test/fixtures/reference/tiny_llama/hf/model.safetensors"
#define MAX_TENSORS 64

static const char *const hf_modules[LLAMA_NUM_LINEAR] = {
	"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
};
static const char *const gguf_modules[LLAMA_NUM_LINEAR] = {
	"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"
};

/* An adapter's tensors as the test builds them (PEFT's names, Hugging Face orientation). */
typedef struct TestAdapter
{
	int			n;
	char		names[MAX_TENSORS][128];
	StWriteTensor t[MAX_TENSORS];
	real	   *data[MAX_TENSORS];
} TestAdapter;

static LlamaModel *
tiny_model(void)
{
	LlamaModel *m = NULL;
	PeftError	err = {0};

	assert_int_equal(llama_model_load(source_path(TINY_GGUF), &m, &err), PEFT_OK);
	assert_int_equal(m->cfg.num_layers, 2);
	assert_int_equal(m->cfg.num_heads, 4);
	assert_int_equal(m->cfg.num_kv_heads, 2);
	return m;
}

/* A value in [-1, 1] from a small LCG, never 0. */
static real
next_value(uint32_t *seed)
{
	*seed = *seed * 1664525u + 1013904223u;
	return (real) (((*seed >> 8) & 0xffff) + 1) / 32768.0f - 1.0f;
}

/* Append a tensor [rows, cols] named name, random values. */
static int
add_tensor(TestAdapter *ad, const char *name, int64_t rows, int64_t cols, uint32_t *seed)
{
	int			i = ad->n++;

	assert_true(i < MAX_TENSORS);
	snprintf(ad->names[i], sizeof(ad->names[i]), "%s", name);
	ad->t[i].name = ad->names[i];
	ad->t[i].ndim = 2;
	ad->t[i].shape[0] = rows;
	ad->t[i].shape[1] = cols;
	ad->data[i] = malloc(sizeof(real) * rows * cols);
	assert_non_null(ad->data[i]);
	for (int64_t k = 0; k < rows * cols; k++)
		ad->data[i][k] = next_value(seed);
	ad->t[i].data = ad->data[i];
	return i;
}

/* The index of the tensor of layer l, linear w, factor 'A' or 'B' (-1 if absent). */
static int
find_tensor(const TestAdapter *ad, int l, int w, char factor)
{
	char		name[128];

	snprintf(name, sizeof(name), "base_model.model.model.layers.%d.%s.lora_%c.weight", l, hf_modules[w], factor);
	for (int i = 0; i < ad->n; i++)
		if (strcmp(ad->names[i], name) == 0)
			return i;
	return -1;
}

/* A rank-r adapter on the linears in targets of every layer of m. */
static void
build_adapter(const LlamaModel *m, int r, const bool *targets, TestAdapter *ad)
{
	uint32_t	seed = 12345;
	char		name[128];

	memset(ad, 0, sizeof(*ad));
	for (int l = 0; l < m->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const QMatrix *W = llama_layer_linear(&m->layers[l], w);

			if (!targets[w])
				continue;
			snprintf(name, sizeof(name), "base_model.model.model.layers.%d.%s.lora_A.weight", l, hf_modules[w]);
			add_tensor(ad, name, r, W->cols, &seed);
			snprintf(name, sizeof(name), "base_model.model.model.layers.%d.%s.lora_B.weight", l, hf_modules[w]);
			add_tensor(ad, name, W->rows, r, &seed);
		}
}

static void
free_adapter(TestAdapter *ad)
{
	for (int i = 0; i < ad->n; i++)
		free(ad->data[i]);
	ad->n = 0;
}

/* The adapter's adapter_model.safetensors bytes. */
static uint8_t *
serialize(const TestAdapter *ad, size_t *len)
{
	uint8_t    *bytes = NULL;
	PeftError	err = {0};

	assert_int_equal(st_serialize(ad->t, ad->n, NULL, NULL, 0, &bytes, len, &err), PEFT_OK);
	return bytes;
}

/*
 * adapter_config.json as PEFT writes it for a LoRA over a LLaMA, with key
 * set to the JSON value (key NULL: nothing changed); static buffer.
 */
static const char *
config_with(int r, double alpha, bool rslora, const bool *targets, const char *key, const char *value)
{
	static char buf[2048];
	char		list[256] = "";
	cJSON	   *root;
	char	   *text;

	for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		if (targets[w])
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s\"%s\"", list[0] ? ", " : "",
					 llama_linear_names[w]);
	snprintf(buf, sizeof(buf),
			 "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": %d, \"lora_alpha\": %.17g, "
			 "\"lora_dropout\": 0.05, \"bias\": \"none\", \"use_rslora\": %s, \"use_dora\": false, "
			 "\"fan_in_fan_out\": false, \"modules_to_save\": null, \"layers_to_transform\": null, "
			 "\"target_modules\": [%s]}", r, alpha, rslora ? "true" : "false", list);
	if (key == NULL)
		return buf;
	root = cJSON_Parse(buf);
	assert_non_null(root);
	cJSON_DeleteItemFromObjectCaseSensitive(root, key);
	cJSON_AddItemToObject(root, key, cJSON_Parse(value));
	text = cJSON_PrintUnformatted(root);
	assert_true(strlen(text) < sizeof(buf));
	strcpy(buf, text);
	cJSON_free(text);
	cJSON_Delete(root);
	return buf;
}

/* The config of a plain LoRA. */
static const char *
config_json(int r, double alpha, bool rslora, const bool *targets)
{
	return config_with(r, alpha, rslora, targets, NULL, NULL);
}

static const bool all_targets[LLAMA_NUM_LINEAR] = {true, true, true, true, true, true, true};

/* Convert and expect failure with code and a message containing what. */
static void
expect_refused(const LlamaModel *m, const char *config, const uint8_t *bytes, size_t len, PeftCode code,
			   const char *what)
{
	uint8_t    *out = (uint8_t *) 1;
	size_t		out_len = 1;
	PeftError	err = {0};

	assert_int_equal(lora_gguf_convert(m, config, strlen(config), bytes, len, &out, &out_len, &err), code);
	assert_null(out);
	assert_int_equal(out_len, 0);
	if (strstr(err.message, what) == NULL)
		fail_msg("message \"%s\" does not say \"%s\"", err.message, what);
}

/* The float32 data of a GGUF tensor checked to be F32 with dims {d0, d1}. */
static const float *
gguf_f32(const GgufFile *f, const char *name, int64_t d0, int64_t d1)
{
	const GgufTensor *t = gguf_find_tensor(f, name);

	if (t == NULL)
		fail_msg("tensor %s is missing", name);
	assert_int_equal(t->type, GGML_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->dims[0], d0);
	assert_int_equal(t->dims[1], d1);
	return (const float *) t->data;
}

/*
 * Undo llama.cpp's q/k permutation of rows (heads of D rows): Hugging Face
 * row k of a head holds rotary half k / (D/2), position k % (D/2); GGUF
 * keeps position p's two halves next to each other, at 2p and 2p + 1.
 */
static void
unpermute_rows(const float *gguf, float *hf, int64_t rows, int64_t cols, int64_t heads)
{
	int64_t		D = rows / heads;

	for (int64_t i = 0; i < rows; i++)
	{
		int64_t		head = i / D,
					k = i % D;
		int64_t		half = k / (D / 2),
					pos = k % (D / 2);

		memcpy(hf + i * cols, gguf + (head * D + 2 * pos + half) * cols, sizeof(float) * cols);
	}
}

/* The metadata llama.cpp checks, and alpha. */
static void
check_metadata(const GgufFile *f, float alpha)
{
	char	   *s;
	const GgufValue *v;
	PeftError	err = {0};

	assert_int_equal(f->version, 3);
	assert_int_equal(f->alignment, GGUF_DEFAULT_ALIGNMENT);
	assert_int_equal(f->nkv, 4);
	assert_int_equal(gguf_get_string(f, "general.architecture", &s, &err), PEFT_OK);
	assert_string_equal(s, "llama");
	free(s);
	assert_int_equal(gguf_get_string(f, "general.type", &s, &err), PEFT_OK);
	assert_string_equal(s, "adapter");
	free(s);
	assert_int_equal(gguf_get_string(f, "adapter.type", &s, &err), PEFT_OK);
	assert_string_equal(s, "lora");
	free(s);
	v = gguf_find(f, "adapter.lora.alpha");
	assert_non_null(v);
	assert_int_equal(v->type, GGUF_F32);
	assert_true((float) v->f == alpha);
}

/* ---- the writer ------------------------------------------------------------ */

static void
test_writer_round_trip(void **state)
{
	GgufWriter *w = gguf_writer_create();
	PeftError	err = {0};
	float		vec[3] = {1.5f, -2.0f, 1e-30f};
	float		cube[2 * 3 * 5];
	int64_t		d1[1] = {3},
				d3[3] = {5, 3, 2},
				d4[4] = {1, 1, 1, 1};
	uint8_t    *bytes;
	size_t		len;
	GgufFile   *f;
	const GgufTensor *t;
	const GgufValue *v;
	char	   *s;
	uint64_t	u;
	char		long_name[GGUF_WRITER_MAX_NAME + 2];

	for (int i = 0; i < 30; i++)
		cube[i] = (float) i - 7.25f;
	assert_non_null(w);
	assert_int_equal(gguf_writer_add_string(w, "general.name", "tiny \xc3\xa9t\xc3\xa9", &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_string(w, "empty", "", &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_u32(w, "some.count", 4000000000u, &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_f32(w, "some.value", -0.125f, &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_tensor_f32(w, "vec", 1, d1, vec, &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_tensor_f32(w, "cube", 3, d3, cube, &err), PEFT_OK);
	assert_int_equal(gguf_writer_add_tensor_f32(w, "one", 4, d4, vec, &err), PEFT_OK);

	/* refusals leave the writer as it was */
	assert_int_equal(gguf_writer_add_u32(w, "some.count", 1, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "twice"));
	assert_int_equal(gguf_writer_add_f32(w, "", 1, &err), PEFT_ERR_INVALID);
	assert_int_equal(gguf_writer_add_tensor_f32(w, "vec", 1, d1, vec, &err), PEFT_ERR_INVALID);
	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	assert_int_equal(gguf_writer_add_tensor_f32(w, long_name, 1, d1, vec, &err), PEFT_ERR_INVALID);
	long_name[GGUF_WRITER_MAX_NAME] = '\0';	/* 63 bytes: allowed */
	assert_int_equal(gguf_writer_add_tensor_f32(w, "zero", 5, d4, vec, &err), PEFT_ERR_INVALID);
	d1[0] = 0;
	assert_int_equal(gguf_writer_add_tensor_f32(w, "empty", 1, d1, vec, &err), PEFT_ERR_INVALID);
	d1[0] = 3;
	assert_int_equal(gguf_writer_add_tensor_f32(w, long_name, 1, d1, vec, &err), PEFT_OK);

	assert_int_equal(gguf_writer_finish(w, &bytes, &len, &err), PEFT_OK);
	gguf_writer_free(w);
	assert_int_equal(len % GGUF_DEFAULT_ALIGNMENT, 0);
	assert_int_equal(gguf_open_buffer(bytes, len, &f, &err), PEFT_OK);
	assert_int_equal(f->version, 3);
	assert_int_equal(f->nkv, 4);
	assert_int_equal(f->ntensors, 4);
	assert_int_equal(gguf_get_string(f, "general.name", &s, &err), PEFT_OK);
	assert_string_equal(s, "tiny \xc3\xa9t\xc3\xa9");
	free(s);
	assert_int_equal(gguf_get_string(f, "empty", &s, &err), PEFT_OK);
	assert_string_equal(s, "");
	free(s);
	assert_int_equal(gguf_get_uint(f, "some.count", &u, &err), PEFT_OK);
	assert_int_equal(u, 4000000000u);
	assert_int_equal(gguf_find(f, "some.count")->type, GGUF_U32);
	v = gguf_find(f, "some.value");
	assert_int_equal(v->type, GGUF_F32);
	assert_true(v->f == -0.125);

	t = gguf_find_tensor(f, "vec");
	assert_int_equal(t->ndim, 1);
	assert_int_equal(t->dims[0], 3);
	assert_memory_equal(t->data, vec, sizeof(vec));
	t = gguf_find_tensor(f, "cube");
	assert_int_equal(t->type, GGML_F32);
	assert_int_equal(t->ndim, 3);
	assert_int_equal(t->dims[0], 5);
	assert_int_equal(t->dims[1], 3);
	assert_int_equal(t->dims[2], 2);
	assert_int_equal(t->nelem, 30);
	assert_memory_equal(t->data, cube, sizeof(cube));
	assert_int_equal(((const uint8_t *) t->data - bytes) % GGUF_DEFAULT_ALIGNMENT, 0);
	t = gguf_find_tensor(f, "one");
	assert_int_equal(t->ndim, 4);
	assert_memory_equal(t->data, vec, sizeof(float));
	t = gguf_find_tensor(f, long_name);
	assert_non_null(t);
	/* the last tensor is padded too: ggml reads the data section as the padded sizes' sum */
	assert_int_equal((size_t) ((const uint8_t *) t->data - bytes) + 32, len);
	gguf_close(f);
	free(bytes);
}

/* ---- the conversion ------------------------------------------------------- */

/* Convert ad over m with config; the GGUF checked against ad (B of q/k un-permuted). */
static void
check_conversion(const LlamaModel *m, const TestAdapter *ad, const char *config, int r, float alpha,
				 const bool *targets)
{
	uint8_t    *bytes,
			   *out = NULL;
	size_t		len,
				out_len = 0;
	GgufFile   *f;
	PeftError	err = {0};
	int			expected = 0;

	bytes = serialize(ad, &len);
	assert_int_equal(lora_gguf_convert(m, config, strlen(config), bytes, len, &out, &out_len, &err), PEFT_OK);
	assert_int_equal(gguf_open_buffer(out, out_len, &f, &err), PEFT_OK);
	check_metadata(f, alpha);
	for (int l = 0; l < m->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const QMatrix *W = llama_layer_linear(&m->layers[l], w);
			int			ia = find_tensor(ad, l, w, 'A'),
						ib = find_tensor(ad, l, w, 'B');
			char		name[96];
			const float *a,
					   *b;
			float	   *hf = malloc(sizeof(float) * W->rows * r);
			int64_t		heads = w == LLAMA_Q ? 4 : w == LLAMA_K ? 2 : 0;

			if (!targets[w])
			{
				snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_a", l, gguf_modules[w]);
				assert_null(gguf_find_tensor(f, name));
				free(hf);
				continue;
			}
			expected += 2;
			snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_a", l, gguf_modules[w]);
			a = gguf_f32(f, name, W->cols, r);	/* ne[0] = the model tensor's ne[0] (in); ne[1] = r */
			assert_memory_equal(a, ad->data[ia], sizeof(float) * r * W->cols);
			snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_b", l, gguf_modules[w]);
			b = gguf_f32(f, name, r, W->rows);	/* ne[0] = r = lora_a's ne[1]; ne[1] = out */
			if (heads)
			{
				/* permuted: not the input as it is, the input after undoing it */
				assert_memory_not_equal(b, ad->data[ib], sizeof(float) * W->rows * r);
				unpermute_rows(b, hf, W->rows, r, heads);
				assert_memory_equal(hf, ad->data[ib], sizeof(float) * W->rows * r);
			}
			else
				assert_memory_equal(b, ad->data[ib], sizeof(float) * W->rows * r);
			free(hf);
		}
	assert_int_equal(f->ntensors, expected);
	gguf_close(f);
	free(out);
	free(bytes);
}

static void
test_converts_all_linears(void **state)
{
	LlamaModel *m = tiny_model();
	TestAdapter ad;

	build_adapter(m, 4, all_targets, &ad);
	check_conversion(m, &ad, config_json(4, 8, false, all_targets), 4, 8.0f, all_targets);
	/* rsLoRA scales by alpha / sqrt(r) = 4: llama.cpp's alpha / r needs alpha 16 */
	check_conversion(m, &ad, config_json(4, 8, true, all_targets), 4, 16.0f, all_targets);
	free_adapter(&ad);
	llama_model_free(m);
}

static void
test_converts_some_linears(void **state)
{
	LlamaModel *m = tiny_model();
	TestAdapter ad;
	const bool	some[LLAMA_NUM_LINEAR] = {false, true, false, true, false, false, true};

	build_adapter(m, 3, some, &ad);
	check_conversion(m, &ad, config_json(3, 1.5, false, some), 3, 1.5f,
					 some);
	free_adapter(&ad);
	llama_model_free(m);
}

/*
 * B [out, 32] set to the Hugging Face q and k weights: lora_b must hold
 * the bytes of tiny.gguf's attn_q and attn_k, which ref_tiny_llama.py
 * permuted as llama.cpp's convert_hf_to_gguf.py permutes q and k.
 */
static void
test_permutation_matches_llama_cpp_weights(void **state)
{
	LlamaModel *m = tiny_model();
	const bool	qk[LLAMA_NUM_LINEAR] = {true, true, false, false, false, false, false};
	TestAdapter ad;
	StFile	   *hf;
	GgufFile   *f;
	PeftError	err = {0};
	uint8_t    *bytes,
			   *out;
	size_t		len,
				out_len;
	const int	r = 32;			/* hidden: B has the shape of the weight */
	const char *config;

	assert_int_equal(st_open_file(source_path(TINY_HF), &hf, &err), PEFT_OK);
	build_adapter(m, r, qk, &ad);
	for (int l = 0; l < 2; l++)
		for (int w = LLAMA_Q; w <= LLAMA_K; w++)
		{
			char		name[96];
			const StTensor *t;
			int			ib = find_tensor(&ad, l, w, 'B');

			snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, hf_modules[w]);
			t = st_find(hf, name);
			assert_non_null(t);
			assert_int_equal(t->shape[0], ad.t[ib].shape[0]);
			assert_int_equal(t->shape[1], r);
			assert_int_equal(st_to_real(t, ad.data[ib], t->nelem, &err), PEFT_OK);
		}
	bytes = serialize(&ad, &len);
	config = config_json(r, 32, false, qk);
	assert_int_equal(lora_gguf_convert(m, config, strlen(config), bytes, len, &out, &out_len, &err), PEFT_OK);
	assert_int_equal(gguf_open_buffer(out, out_len, &f, &err), PEFT_OK);
	for (int l = 0; l < 2; l++)
		for (int w = LLAMA_Q; w <= LLAMA_K; w++)
		{
			char		name[96];
			const GgufTensor *weight;
			const float *b;

			snprintf(name, sizeof(name), "blk.%d.%s.weight", l, gguf_modules[w]);
			weight = gguf_find_tensor(m->gguf, name);
			assert_non_null(weight);
			assert_int_equal(weight->type, GGML_F32);
			snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_b", l, gguf_modules[w]);
			b = gguf_f32(f, name, weight->dims[0], weight->dims[1]);
			assert_memory_equal(b, weight->data, weight->nbytes);
		}
	gguf_close(f);
	free(out);
	free(bytes);
	st_close(hf);
	free_adapter(&ad);
	llama_model_free(m);
}

/* ---- refusals ----------------------------------------------------------- */

static void
test_refuses_other_methods(void **state)
{
	LlamaModel *m = tiny_model();
	TestAdapter ad;
	uint8_t    *bytes;
	size_t		len;
	char		config[2048];

	build_adapter(m, 4, all_targets, &ad);
	bytes = serialize(&ad, &len);
	/* a valid config first: the refusals below come from what changed */
	snprintf(config, sizeof(config), "%s", config_json(4, 8, false, all_targets));
	{
		uint8_t    *out;
		size_t		out_len;
		PeftError	err = {0};

		assert_int_equal(lora_gguf_convert(m, config, strlen(config), bytes, len, &out, &out_len, &err), PEFT_OK);
		free(out);
	}
	expect_refused(m, config_with(4, 8, false, all_targets, "use_dora", "true"), bytes, len, PEFT_ERR_UNSUPPORTED, "llama.cpp has no DoRA");
	expect_refused(m, "{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"], \"feedforward_modules\": []}",
				   bytes, len, PEFT_ERR_UNSUPPORTED, "peft_type is IA3");
	expect_refused(m, "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 8}", bytes, len,
				   PEFT_ERR_UNSUPPORTED, "peft_type is PROMPT_TUNING");
	expect_refused(m, "{\"r\": 4, \"lora_alpha\": 8}", bytes, len, PEFT_ERR_UNSUPPORTED, "peft_type is missing");
	expect_refused(m, config_with(4, 8, false, all_targets, "modules_to_save", "[\"lm_head\"]"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "modules_to_save");
	expect_refused(m, config_with(4, 8, false, all_targets, "bias", "\"all\""), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "bias");
	expect_refused(m, config_with(4, 8, false, all_targets, "alpha_pattern", "{\"q_proj\": 2}"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "alpha_pattern");
	expect_refused(m, config_with(4, 8, false, all_targets, "task_type", "\"SEQ_CLS\""), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "CAUSAL_LM");
	/* PEFT settings that compute more than B A, or expect a changed base model */
	expect_refused(m, config_with(4, 8, false, all_targets, "lora_bias", "true"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "sets lora_bias");
	expect_refused(m, config_with(4, 8, false, all_targets, "use_qalora", "true"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "sets use_qalora");
	expect_refused(m, config_with(4, 8, false, all_targets, "alora_invocation_tokens", "[5, 6]"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "sets alora_invocation_tokens");
	expect_refused(m, config_with(4, 8, false, all_targets, "layer_replication", "[[0, 2], [0, 2]]"), bytes, len,
				   PEFT_ERR_UNSUPPORTED, "sets layer_replication");
	expect_refused(m, config_with(4, 8, false, all_targets, "init_lora_weights", "\"pissa_niter_4\""), bytes,
				   len, PEFT_ERR_UNSUPPORTED, "changes the base weights");
	/* ... but initialisations that leave the base alone, and unset keys, are fine */
	{
		const char *fine[][2] = {{"init_lora_weights", "\"gaussian\""}, {"lora_bias", "false"},
		{"layer_replication", "null"}, {"alpha_pattern", "{}"}, {"loftq_config", "{}"},
		{"trainable_token_indices", "[]"}, {"peft_pg", "{\"task\": \"generation\"}"}};

		for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++)
		{
			const char *c = config_with(4, 8, false, all_targets, fine[i][0], fine[i][1]);
			uint8_t    *out;
			size_t		out_len;
			PeftError	err = {0};

			if (lora_gguf_convert(m, c, strlen(c), bytes, len, &out, &out_len, &err) != PEFT_OK)
				fail_msg("%s = %s refused: %s", fine[i][0], fine[i][1], err.message);
			free(out);
		}
	}
	/* malformed configs */
	expect_refused(m, "not json", bytes, len, PEFT_ERR_FORMAT, "not a JSON object");
	expect_refused(m, "[1]", bytes, len, PEFT_ERR_FORMAT, "not a JSON object");
	expect_refused(m, config_json(0, 8, false, all_targets), bytes, len, PEFT_ERR_FORMAT, "r must be");
	expect_refused(m, config_with(4, 8, false, all_targets, "r", "2.5"), bytes, len, PEFT_ERR_FORMAT, "r must be");
	expect_refused(m, config_with(4, 8, false, all_targets, "r", "1e300"), bytes, len, PEFT_ERR_FORMAT, "r must be");
	expect_refused(m, config_with(4, 8, false, all_targets, "r", "\"4\""), bytes, len, PEFT_ERR_FORMAT, "r must be");
	expect_refused(m, config_json(4, 0, false, all_targets), bytes, len, PEFT_ERR_INVALID, "lora_alpha");
	expect_refused(m, config_json(4, -8, false, all_targets), bytes, len, PEFT_ERR_INVALID, "lora_alpha");
	expect_refused(m, config_json(4, 1e300, false, all_targets), bytes, len, PEFT_ERR_INVALID, "float range");
	expect_refused(m, config_with(4, 8, false, all_targets, "target_modules", "[]"), bytes, len,
				   PEFT_ERR_FORMAT, "names no linear");
	expect_refused(m, config_with(4, 8, false, all_targets, "target_modules", "[\"lm_head\"]"), bytes, len,
				   PEFT_ERR_INVALID, "lm_head");
	free(bytes);
	free_adapter(&ad);
	llama_model_free(m);
}

/* Build the full rank-4 adapter, let change alter it, and expect the refusal. */
static void
refused_after(const LlamaModel *m, void (*change)(TestAdapter *), PeftCode code, const char *what)
{
	TestAdapter ad;
	uint8_t    *bytes;
	size_t		len;

	build_adapter(m, 4, all_targets, &ad);
	change(&ad);
	bytes = serialize(&ad, &len);
	expect_refused(m, config_json(4, 8, false, all_targets), bytes, len, code, what);
	free(bytes);
	free_adapter(&ad);
}

static void
rename_first(TestAdapter *ad, const char *name)
{
	snprintf(ad->names[0], sizeof(ad->names[0]), "%s", name);
}
static void
change_unknown_module(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight");
}
static void
change_lm_head(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.lm_head.lora_A.weight");
}
static void
change_not_peft(TestAdapter *ad)
{
	rename_first(ad, "model.layers.0.self_attn.q_proj.weight");
}
static void
change_leading_zero(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.00.self_attn.q_proj.lora_A.weight");
}
static void
change_bias(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias");
}
static void
change_suffix(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.x");
}
static void
change_layer_out_of_range(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight");
}
static void
change_huge_layer(TestAdapter *ad)
{
	rename_first(ad, "base_model.model.model.layers.99999999999999999999.self_attn.q_proj.lora_A.weight");
}
static void
change_drop_b(TestAdapter *ad)
{
	/* the last tensor is layer 1's down_proj lora_B */
	free(ad->data[--ad->n]);
}
static void
change_b_rows(TestAdapter *ad)
{
	int			i = find_tensor(ad, 0, LLAMA_Q, 'B');

	ad->t[i].shape[0] = 31;		/* the first 31 rows are written */
}
static void
change_a_rank(TestAdapter *ad)
{
	int			i = find_tensor(ad, 1, LLAMA_V, 'A');

	ad->t[i].shape[0] = 2;
	ad->t[i].shape[1] = 64;		/* as many values, the wrong rank */
}
static void
change_transposed(TestAdapter *ad)
{
	int			i = find_tensor(ad, 0, LLAMA_UP, 'A');
	int64_t		rows = ad->t[i].shape[0];

	ad->t[i].shape[0] = ad->t[i].shape[1];
	ad->t[i].shape[1] = rows;
}
static void
change_three_dims(TestAdapter *ad)
{
	int			i = find_tensor(ad, 0, LLAMA_O, 'B');

	ad->t[i].ndim = 3;
	ad->t[i].shape[2] = 1;
}
static void
change_nan(TestAdapter *ad)
{
	ad->data[find_tensor(ad, 1, LLAMA_K, 'B')][5] = NAN;
}

static void
test_refuses_bad_tensors(void **state)
{
	LlamaModel *m = tiny_model();

	/* PEFT's names that are not LoRA on the seven linears: unsupported; other names: malformed */
	refused_after(m, change_unknown_module, PEFT_ERR_UNSUPPORTED, "is not a LoRA factor");
	refused_after(m, change_lm_head, PEFT_ERR_UNSUPPORTED, "base_model.model.lm_head.lora_A.weight");
	refused_after(m, change_not_peft, PEFT_ERR_FORMAT, "is not a LoRA factor");
	refused_after(m, change_leading_zero, PEFT_ERR_UNSUPPORTED, "is not a LoRA factor");
	refused_after(m, change_bias, PEFT_ERR_UNSUPPORTED, "is not a LoRA factor");
	refused_after(m, change_suffix, PEFT_ERR_UNSUPPORTED, "is not a LoRA factor");
	refused_after(m, change_layer_out_of_range, PEFT_ERR_INVALID, "is for layer 2; the model has 2 layers");
	refused_after(m, change_huge_layer, PEFT_ERR_UNSUPPORTED, "is not a LoRA factor");
	refused_after(m, change_drop_b, PEFT_ERR_FORMAT, "no lora_B.weight for layer 1's down_proj");
	refused_after(m, change_b_rows, PEFT_ERR_INVALID, "has shape [31, 4]");
	refused_after(m, change_a_rank, PEFT_ERR_INVALID, "has shape [2, 64]");
	refused_after(m, change_transposed, PEFT_ERR_INVALID, "need [4, 32]");
	refused_after(m, change_three_dims, PEFT_ERR_INVALID, "(3 dimensions)");
	refused_after(m, change_nan, PEFT_ERR_FORMAT, "not a finite float");
	llama_model_free(m);
}

/* A tensor of a linear the config does not target, and a shape the model does not have. */
static void
test_refuses_mismatches(void **state)
{
	LlamaModel *m = tiny_model();
	const bool	no_gate[LLAMA_NUM_LINEAR] = {true, true, true, true, false, true, true};
	TestAdapter ad;
	uint8_t    *bytes;
	size_t		len;

	build_adapter(m, 4, all_targets, &ad);
	bytes = serialize(&ad, &len);
	expect_refused(m, config_json(4, 8, false, no_gate), bytes, len, PEFT_ERR_FORMAT,
				   "adapts gate_proj, which adapter_config.json's target_modules does not name");
	/* rank 4 in the tensors, 8 in the config */
	expect_refused(m, config_json(8, 8, false, all_targets), bytes, len, PEFT_ERR_INVALID, "r = 8");
	free(bytes);
	free_adapter(&ad);

	/* the model's q is [32, 32]: an adapter for a model with wider heads does not fit */
	build_adapter(m, 4, all_targets, &ad);
	{
		int			i = find_tensor(&ad, 0, LLAMA_Q, 'B');

		free(ad.data[i]);
		ad.t[i].shape[0] = 64;
		ad.data[i] = calloc(64 * 4, sizeof(real));
		ad.t[i].data = ad.data[i];
	}
	bytes = serialize(&ad, &len);
	expect_refused(m, config_json(4, 8, false, all_targets), bytes, len, PEFT_ERR_INVALID,
				   "has shape [64, 4] (2 dimensions); layer 0's q_proj of the model and r = 4 need [32, 4]");
	free(bytes);
	free_adapter(&ad);
	llama_model_free(m);
}

/* Every truncation of the safetensors bytes fails cleanly; so do garbage and no bytes. */
static void
test_refuses_truncations(void **state)
{
	LlamaModel *m = tiny_model();
	TestAdapter ad;
	uint8_t    *bytes;
	size_t		len;
	const char *config;
	int			refused = 0;

	build_adapter(m, 2, all_targets, &ad);
	bytes = serialize(&ad, &len);
	config = config_json(2, 4, false, all_targets);
	for (size_t cut = 0; cut < len; cut++)
	{
		uint8_t    *copy = malloc(cut ? cut : 1);	/* exactly cut bytes: ASan sees any read past */
		uint8_t    *out = (uint8_t *) 1;
		size_t		out_len = 1;
		PeftError	err = {0};

		memcpy(copy, bytes, cut);
		if (lora_gguf_convert(m, config, strlen(config), copy, cut, &out, &out_len, &err) != PEFT_OK)
		{
			refused++;
			assert_null(out);
			assert_true(err.message[0] != '\0');
		}
		else
			fail_msg("a safetensors file cut to %zu of %zu bytes was accepted", cut, len);
		free(copy);
	}
	assert_int_equal(refused, (int) len);
	expect_refused(m, config, (const uint8_t *) "garbage!garbage!", 16, PEFT_ERR_FORMAT, "");
	{
		uint8_t    *out;
		size_t		out_len;
		PeftError	err = {0};

		assert_int_equal(lora_gguf_convert(m, config, strlen(config), NULL, 0, &out, &out_len, &err),
						 PEFT_ERR_FORMAT);
		assert_int_equal(lora_gguf_convert(m, NULL, 0, bytes, len, &out, &out_len, &err), PEFT_ERR_FORMAT);
	}
	free(bytes);
	free_adapter(&ad);
	llama_model_free(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_writer_round_trip),
		cmocka_unit_test(test_converts_all_linears),
		cmocka_unit_test(test_converts_some_linears),
		cmocka_unit_test(test_permutation_matches_llama_cpp_weights),
		cmocka_unit_test(test_refuses_other_methods),
		cmocka_unit_test(test_refuses_bad_tensors),
		cmocka_unit_test(test_refuses_mismatches),
		cmocka_unit_test(test_refuses_truncations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
