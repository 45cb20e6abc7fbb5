/*
 * lora_gguf.c - a PEFT LoRA adapter over a LLaMA model as llama.cpp's LoRA
 * GGUF (lora_gguf.h): read and check the config and every tensor, then
 * write the factors in llama.cpp's names and order with gguf_writer.
 */
#include "lora_gguf.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "decoder_adapter.h"
#include "gguf_writer.h"
#include "safetensors.h"

/* PEFT's prefix of a layer's tensors, before the layer index. */
#define PEFT_LAYER_PREFIX "base_model.model.model.layers."

/* A linear's module path in PEFT's names and its tensor name in llama.cpp's, by LlamaLinear. */
static const struct
{
	const char *hf;
	const char *gguf;
}			linear_names[LLAMA_NUM_LINEAR] = {
	{"self_attn.q_proj", "attn_q"},
	{"self_attn.k_proj", "attn_k"},
	{"self_attn.v_proj", "attn_v"},
	{"self_attn.o_proj", "attn_output"},
	{"mlp.gate_proj", "ffn_gate"},
	{"mlp.up_proj", "ffn_up"},
	{"mlp.down_proj", "ffn_down"},
};

/* The two factors of one adapted linear, as found in the safetensors file. */
typedef struct LoraPair
{
	const StTensor *a;			/* lora_A.weight [r, in] */
	const StTensor *b;			/* lora_B.weight [out, r] */
} LoraPair;

/*
 * Whether name is a LoRA factor of a layer's linear in PEFT's names:
 * base_model.model.model.layers.N.<module>.lora_{A,B}.weight, N written
 * without leading zeros.  *layer, *w and *is_b say which.
 */
static bool
parse_name(const char *name, long *layer, int *w, bool *is_b)
{
	const char *p = name;
	long		n = 0;
	int			digits = 0;

	if (strncmp(p, PEFT_LAYER_PREFIX, strlen(PEFT_LAYER_PREFIX)) != 0)
		return false;
	p += strlen(PEFT_LAYER_PREFIX);
	while (*p >= '0' && *p <= '9')
	{
		if (++digits > 9 || (digits == 2 && n == 0))
			return false;		/* too long, or a leading zero */
		n = n * 10 + (*p++ - '0');
	}
	if (digits == 0 || *p++ != '.')
		return false;
	for (int i = 0; i < LLAMA_NUM_LINEAR; i++)
	{
		size_t		len = strlen(linear_names[i].hf);

		if (strncmp(p, linear_names[i].hf, len) != 0)
			continue;
		if (strcmp(p + len, ".lora_A.weight") == 0 || strcmp(p + len, ".lora_B.weight") == 0)
		{
			*layer = n;
			*w = i;
			*is_b = p[len + 6] == 'B';
			return true;
		}
	}
	return false;
}

/* Whether a config value is set: not null, false, 0, "" or empty. */
static bool
value_set(const cJSON *v)
{
	return v != NULL && !cJSON_IsNull(v) && !cJSON_IsFalse(v) &&
		!(cJSON_IsNumber(v) && v->valuedouble == 0) &&
		!(cJSON_IsString(v) && v->valuestring[0] == '\0') &&
		!((cJSON_IsArray(v) || cJSON_IsObject(v)) && v->child == NULL);
}

/*
 * Fail on a PEFT setting that makes the adapter compute more than s B A x
 * on the seven linears (llama.cpp computes nothing else), or that expects
 * base weights changed by its initialisation.  The decoder's config reader
 * refuses the settings the engine itself does not compute (modules_to_save,
 * bias, rank and alpha patterns, ...).
 */
static PeftCode
refuse_beyond_lora(const cJSON *root, PeftError *err)
{
	static const char *const keys[] = {
		"lora_bias", "use_qalora", "layer_replication", "trainable_token_indices", "target_parameters",
		"alora_invocation_tokens", "invocation_string", "arrow_config", "use_bdlora", "kasa_config",
		"monteclora_config", "velora_config"
	};
	static const char *const base_changing[] = {"pissa", "olora", "corda", "loftq"};
	const cJSON *init = cJSON_GetObjectItemCaseSensitive(root, "init_lora_weights");

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (value_set(cJSON_GetObjectItemCaseSensitive(root, keys[i])))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "adapter_config.json sets %s: llama.cpp's LoRA GGUF holds plain LoRA only", keys[i]);
	for (size_t i = 0; cJSON_IsString(init) && i < sizeof(base_changing) / sizeof(base_changing[0]); i++)
		if (strncmp(init->valuestring, base_changing[i], strlen(base_changing[i])) == 0)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "adapter_config.json: init_lora_weights \"%.32s\" changes the base weights, which "
							 "llama.cpp loads unchanged (save the adapter converted to a plain LoRA)",
							 init->valuestring);
	return PEFT_OK;
}

/*
 * The adapter's options from adapter_config.json, refused unless they are
 * plain LoRA, and the alpha llama.cpp needs to scale as PEFT does.
 */
static PeftCode
read_config(const char *json, size_t len, DecoderAdapterOptions *o, float *gguf_alpha,
			PeftError *err)
{
	cJSON	   *root = json ? cJSON_ParseWithLength(json, len) : NULL;
	const cJSON *type,
			   *r;
	double		scale;
	bool		any = false;
	PeftCode	rc = PEFT_OK;

	if (root == NULL || !cJSON_IsObject(root))
		rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json is not a JSON object");
	else if (!cJSON_IsString(type = cJSON_GetObjectItemCaseSensitive(root, "peft_type")) ||
			 strcmp(type->valuestring, "LORA") != 0)
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "llama.cpp's adapter GGUF holds LoRA only; this adapter's peft_type is %.64s",
					   cJSON_IsString(type) ? type->valuestring : "missing");
	else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_dora")))
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "a DoRA adapter (use_dora) cannot be written as llama.cpp's LoRA GGUF: "
					   "llama.cpp has no DoRA (no magnitude vectors, no weight-norm rescaling)");
	else if ((rc = refuse_beyond_lora(root, err)) == PEFT_OK)
	{
		/* checked here, before the shared reader converts it to an int */
		r = cJSON_GetObjectItemCaseSensitive(root, "r");
		if (!cJSON_IsNumber(r) || !(r->valuedouble >= 1 && r->valuedouble <= 4096) ||
			r->valuedouble != floor(r->valuedouble))
			rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: r must be an integer from 1 to 4096");
	}
	cJSON_Delete(root);
	if (rc != PEFT_OK)
		return rc;
	/* the decoder's own reader: target_modules, lora_alpha, use_rslora; refuses modules_to_save, bias, ... */
	if ((rc = decoder_adapter_options_from_config(json, len, o, err)) != PEFT_OK)
		return rc;
	if (o->method != DAD_LORA)
		return peft_fail(err, PEFT_ERR_INTERNAL, "adapter_config.json read as a method other than LoRA");
	for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		any |= o->targets[w];
	if (!any)
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: target_modules names no linear");
	if (!(o->alpha > 0 && isfinite(o->alpha)))
		return peft_fail(err, PEFT_ERR_INVALID, "adapter_config.json: lora_alpha must be a positive number");
	/* PEFT's scale, alpha / r or alpha / sqrt(r); llama.cpp's is gguf_alpha / r */
	scale = o->rslora ? o->alpha / sqrt((double) o->r) : o->alpha / o->r;
	*gguf_alpha = (float) (scale * o->r);
	if (!(isfinite(*gguf_alpha) && *gguf_alpha > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "adapter_config.json: lora_alpha %g is out of float range",
						 o->alpha);
	return PEFT_OK;
}

/*
 * Sort every tensor of file into pairs[layer * LLAMA_NUM_LINEAR + w],
 * checking its name, layer, linear, dtype and shape against the model and
 * the config; then require both factors of every targeted linear.
 */
static PeftCode
collect_pairs(const LlamaModel *m, const StFile *file, const DecoderAdapterOptions *o,
			  LoraPair *pairs, PeftError *err)
{
	const int	L = m->cfg.num_layers;

	for (int i = 0; i < file->ntensors; i++)
	{
		const StTensor *t = &file->tensors[i];
		long		layer;
		int			w;
		bool		is_b;
		const QMatrix *W;
		int64_t		want[2];
		const StTensor **slot;

		if (!parse_name(t->name, &layer, &w, &is_b))
			return peft_fail(err, strncmp(t->name, "base_model.model.", 17) == 0 ?
							 PEFT_ERR_UNSUPPORTED : PEFT_ERR_FORMAT,
							 "adapter tensor \"%.200s\" is not a LoRA factor of a LLaMA layer's linear "
							 "(base_model.model.model.layers.N.{self_attn.{q,k,v,o}_proj,"
							 "mlp.{gate,up,down}_proj}.lora_{A,B}.weight): llama.cpp's adapter GGUF "
							 "holds nothing else", t->name);
		if (layer >= L)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "adapter tensor \"%.200s\" is for layer %ld; the model has %d layers "
							 "(0 to %d): is this the adapter's base model?", t->name, layer, L, L - 1);
		if (!o->targets[w])
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "adapter tensor \"%.200s\" adapts %s, which adapter_config.json's "
							 "target_modules does not name", t->name, llama_linear_names[w]);
		if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
			return peft_fail(err, PEFT_ERR_FORMAT, "adapter tensor \"%.200s\" is %s, not a float type",
							 t->name, st_dtype_name(t->dtype));
		W = llama_layer_linear(&m->layers[layer], w);
		want[0] = is_b ? W->rows : o->r;
		want[1] = is_b ? o->r : W->cols;
		if (t->ndim != 2 || t->shape[0] != want[0] || t->shape[1] != want[1])
			return peft_fail(err, PEFT_ERR_INVALID,
							 "adapter tensor \"%.200s\" has shape [%lld, %lld] (%d dimensions); layer %ld's "
							 "%s of the model and r = %d need [%lld, %lld]", t->name,
							 (long long) (t->ndim > 0 ? t->shape[0] : 0),
							 (long long) (t->ndim > 1 ? t->shape[1] : 0), t->ndim, layer,
							 llama_linear_names[w], o->r, (long long) want[0], (long long) want[1]);
		slot = is_b ? &pairs[layer * LLAMA_NUM_LINEAR + w].b : &pairs[layer * LLAMA_NUM_LINEAR + w].a;
		if (*slot != NULL)
			return peft_fail(err, PEFT_ERR_FORMAT, "adapter tensor \"%.200s\" appears twice", t->name);
		*slot = t;
	}
	for (int l = 0; l < L; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const LoraPair *p = &pairs[l * LLAMA_NUM_LINEAR + w];

			if (o->targets[w] && (p->a == NULL || p->b == NULL))
				return peft_fail(err, PEFT_ERR_FORMAT,
								 "the adapter has no lora_%c.weight for layer %d's %s, a target module",
								 p->a == NULL ? 'A' : 'B', l, llama_linear_names[w]);
		}
	return PEFT_OK;
}

/* A factor's values as float32 (malloc'ed), every one finite. */
static PeftCode
factor_values(const StTensor *t, float **out, PeftError *err)
{
	real	   *r = malloc(sizeof(real) * (t->nelem ? t->nelem : 1));
	float	   *f = malloc(sizeof(float) * (t->nelem ? t->nelem : 1));
	PeftCode	rc;

	*out = NULL;
	if (r == NULL || f == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading adapter tensor \"%.200s\"", t->name);
	else if ((rc = st_to_real(t, r, t->nelem, err)) == PEFT_OK)
		for (size_t i = 0; i < t->nelem; i++)
		{
			f[i] = (float) r[i];
			if (!isfinite(f[i]))
			{
				rc = peft_fail(err, PEFT_ERR_FORMAT,
							   "adapter tensor \"%.200s\" holds a value that is not a finite float", t->name);
				break;
			}
		}
	free(r);
	if (rc != PEFT_OK)
	{
		free(f);
		return rc;
	}
	*out = f;
	return PEFT_OK;
}

/*
 * Rows of a q or k projection's output (heads heads of rows / heads values
 * each) from Hugging Face's order to GGUF's, as llama.cpp's converter
 * permutes the weights: Hugging Face rotates each head's two halves
 * (value j with value j + D/2), GGUF consecutive pairs (2j with 2j + 1),
 * so GGUF row 2j + s of a head is Hugging Face row s D/2 + j.
 */
static void
permute_rows(const float *src, float *dst, int64_t rows, int64_t cols, int64_t heads)
{
	int64_t		D = rows / heads;

	for (int64_t h = 0; h < heads; h++)
		for (int64_t j = 0; j < D / 2; j++)
			for (int s = 0; s < 2; s++)
				memcpy(dst + (h * D + 2 * j + s) * cols, src + (h * D + s * (D / 2) + j) * cols,
					   sizeof(float) * cols);
}

/* Add linear w of layer l's two factors to the file, q's and k's B permuted. */
static PeftCode
write_pair(GgufWriter *g, const LlamaModel *m, int l, int w, const LoraPair *p, PeftError *err)
{
	int64_t		heads = w == LLAMA_Q ? m->cfg.num_heads : w == LLAMA_K ? m->cfg.num_kv_heads : 0;
	int64_t		r = p->a->shape[0],
				in = p->a->shape[1],
				out = p->b->shape[0];
	int64_t		dims_a[2] = {in, r};
	int64_t		dims_b[2] = {r, out};
	float	   *a = NULL,
			   *b = NULL,
			   *permuted = NULL;
	char		name[GGUF_WRITER_MAX_NAME + 1];
	PeftCode	rc;

	if (heads > 0 && (out % heads != 0 || (out / heads) % 2 != 0))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "layer %d's %s has %lld outputs, not heads (%lld) of an even size",
						 l, llama_linear_names[w], (long long) out, (long long) heads);
	if ((rc = factor_values(p->a, &a, err)) != PEFT_OK ||
		(rc = factor_values(p->b, &b, err)) != PEFT_OK)
		goto done;
	if (heads > 0)
	{
		if ((permuted = malloc(sizeof(float) * out * r)) == NULL)
		{
			rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory converting the adapter");
			goto done;
		}
		permute_rows(b, permuted, out, r, heads);
	}
	snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_a", l, linear_names[w].gguf);
	if ((rc = gguf_writer_add_tensor_f32(g, name, 2, dims_a, a, err)) != PEFT_OK)
		goto done;
	snprintf(name, sizeof(name), "blk.%d.%s.weight.lora_b", l, linear_names[w].gguf);
	rc = gguf_writer_add_tensor_f32(g, name, 2, dims_b, permuted ? permuted : b, err);
done:
	free(a);
	free(b);
	free(permuted);
	return rc;
}

PeftCode
lora_gguf_convert(const LlamaModel *model, const char *config, size_t config_len,
				  const uint8_t *weights, size_t weights_len, uint8_t **out, size_t *out_len,
				  PeftError *err)
{
	DecoderAdapterOptions o;
	float		alpha = 0;
	StFile	   *file = NULL;
	LoraPair   *pairs = NULL;
	GgufWriter *g = NULL;
	PeftCode	rc;

	*out = NULL;
	*out_len = 0;
	if (model == NULL || model->cfg.num_layers < 1)
		return peft_fail(err, PEFT_ERR_INVALID, "exporting an adapter as GGUF needs a decoder with layers");
	if ((rc = read_config(config, config_len, &o, &alpha, err)) != PEFT_OK)
		return rc;
	if (weights == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "the adapter has no weights");
	if ((rc = st_open_buffer(weights, weights_len, &file, err)) != PEFT_OK)
		return rc;
	pairs = calloc((size_t) model->cfg.num_layers * LLAMA_NUM_LINEAR, sizeof(LoraPair));
	g = gguf_writer_create();
	if (pairs == NULL || g == NULL)
	{
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory converting the adapter");
		goto done;
	}
	if ((rc = collect_pairs(model, file, &o, pairs, err)) != PEFT_OK ||
		(rc = gguf_writer_add_string(g, "general.architecture", "llama", err)) != PEFT_OK ||
		(rc = gguf_writer_add_string(g, "general.type", "adapter", err)) != PEFT_OK ||
		(rc = gguf_writer_add_string(g, "adapter.type", "lora", err)) != PEFT_OK ||
		(rc = gguf_writer_add_f32(g, "adapter.lora.alpha", alpha, err)) != PEFT_OK)
		goto done;
	for (int l = 0; l < model->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			if (o.targets[w] &&
				(rc = write_pair(g, model, l, w, &pairs[l * LLAMA_NUM_LINEAR + w], err)) != PEFT_OK)
				goto done;
	rc = gguf_writer_finish(g, out, out_len, err);
done:
	gguf_writer_free(g);
	free(pairs);
	st_close(file);
	return rc;
}
