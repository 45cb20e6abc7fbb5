/*
 * adapter_io.c - adapter weights and config in Hugging Face PEFT's formats.
 */
#include "adapter_io.h"
#include "method_table.h"
#include "engine_api.h"
#include "safetensors.h"

#include <stdio.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool any_target(const bool flags[BERT_NUM_LINEAR]);

/* The head's names as PEFT saves them, and as ours are declared. */
#define HEAD_PREFIX "base_model.model.classifier."
#define PROMPT_HEAD_PREFIX "base_model.classifier."
/* PEFT's LoRA with bias "all" also saves these two copies of the head's bias (ModulesToSaveWrapper's). */
static const char *const lora_bias_all_head_copies[] = {
	"base_model.model.classifier.modules_to_save.bias", "base_model.model.classifier.original_module.bias"
};

/*
 * Whether the network is one of PEFT's prompt-learning adapters (prompt or
 * prefix tuning alone): PEFT wraps the model itself, not a LoraModel around
 * it, so the head it saves is base_model.classifier.*, without ".model".
 */
static bool
prompt_learning_only(const NetworkOptions *o)
{
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (o->lora.targets[w] || o->ia3.targets[w])
			return false;
	return (o->prompt_tokens > 0 || o->prefix_tokens > 0) && !o->bitfit && o->bottleneck.reduction == 0;
}

/* The name parameter i is saved under (PEFT's for this kind of adapter). */
static const char *
saved_name(const Network *net, int i, char *buf, size_t len)
{
	const char *name = net->params.items[i].name;

	if (prompt_learning_only(&net->opts) && strncmp(name, HEAD_PREFIX, strlen(HEAD_PREFIX)) == 0)
	{
		snprintf(buf, len, "%s%s", PROMPT_HEAD_PREFIX, name + strlen(HEAD_PREFIX));
		return buf;
	}
	return name;
}

/* Serialise every trainable parameter (malloc'ed bytes). */
PeftCode
adapter_serialize(const Network *net, uint8_t **out, size_t *len, PeftError *err)
{
	const ParamSet *ps = &net->params;
	/* room for the pooler bias and the head bias's two copies */
	StWriteTensor *tensors = calloc(ps->count + 3, sizeof(StWriteTensor));
	char	  (*names)[128] = calloc(ps->count ? ps->count : 1, sizeof(*names));
	static const char *const keys[] = {"format"};
	static const char *const values[] = {"pt"};
	PeftCode	rc;

	const StTensor *pooler = NULL;
	real	   *pooler_bias = NULL;
	int			n = ps->count;

	if (tensors == NULL || names == NULL)
	{
		free(tensors);
		free(names);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory serialising the adapter");
	}
	for (int i = 0; i < ps->count; i++)
	{
		tensors[i].name = saved_name(net, i, names[i], sizeof(names[i]));
		tensors[i].ndim = ps->items[i].ndim;
		tensors[i].shape[0] = ps->items[i].shape[0];
		tensors[i].shape[1] = ps->items[i].shape[1];
		tensors[i].data = param_value(ps, i);
	}
	/*
	 * PEFT's LoRA with bias "all" (our BitFit beside LoRA) also saves the
	 * pooler's bias and expects it back: add the model's, unchanged (no
	 * sentence embedding uses the pooler).
	 */
	if (net->opts.bitfit && net->base->file &&
		((pooler = st_find(net->base->file, "pooler.dense.bias")) != NULL ||
		 (pooler = st_find(net->base->file, "bert.pooler.dense.bias")) != NULL) &&
		pooler->ndim == 1 && pooler->shape[0] > 0 && pooler->shape[0] <= (1 << 20))
	{
		pooler_bias = malloc(sizeof(real) * pooler->shape[0]);
		if (pooler_bias == NULL)
		{
			free(tensors);
			free(names);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory serialising the adapter");
		}
		if ((rc = st_to_real(pooler, pooler_bias, pooler->shape[0], err)) != PEFT_OK)
		{
			free(tensors);
			free(names);
			free(pooler_bias);
			return rc;
		}
		memset(&tensors[n], 0, sizeof(StWriteTensor));
		tensors[n].name = "base_model.model.pooler.dense.bias";
		tensors[n].ndim = 1;
		tensors[n].shape[0] = pooler->shape[0];
		tensors[n].data = pooler_bias;
		n++;
	}

	/*
	 * With a head, bias "all" also makes PEFT save the bias of the head's
	 * ModulesToSaveWrapper twice more (the trained copy and the original
	 * module's): the trained bias under both names, so the names are PEFT's.
	 */
	if (net->opts.bitfit && net->head_bias >= 0 && any_target(net->opts.lora.targets))
		for (int k = 0; k < 2; k++)
		{
			tensors[n] = tensors[net->head_bias];
			tensors[n].name = lora_bias_all_head_copies[k];
			n++;
		}
	rc = st_serialize(tensors, n, keys, values, 1, out, len, err);
	free(tensors);
	free(names);
	free(pooler_bias);
	return rc;
}

/* Load and validate weights into a network built with matching options. */
PeftCode
adapter_load_weights(Network *net, const uint8_t *bytes, size_t len, PeftError *err)
{
	ParamSet   *ps = &net->params;
	StFile	   *file;
	PeftCode	rc;

	int			unused = 0;

	if ((rc = st_open_buffer(bytes, len, &file, err)) != PEFT_OK)
		return rc;
	/*
	 * PEFT's LoRA with bias "all" also saves the pooler's bias, which
	 * sentence embeddings never use, and two copies of the head's bias: the
	 * only tensors tolerated beyond the adapter's own.
	 */
	for (int i = 0; i < file->ntensors; i++)
		if (strncmp(file->tensors[i].name, "base_model.model.pooler.", 24) == 0 ||
			(net->opts.bitfit &&
			 (strcmp(file->tensors[i].name, lora_bias_all_head_copies[0]) == 0 ||
			  strcmp(file->tensors[i].name, lora_bias_all_head_copies[1]) == 0)))
			unused++;
	if (file->ntensors - unused != ps->count)
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT,
					   "adapter weights hold %d tensors, the adapter's config needs %d",
					   file->ntensors - unused, ps->count);
		goto done;
	}
	for (int i = 0; i < ps->count && rc == PEFT_OK; i++)
	{
		const Param *p = &ps->items[i];
		const StTensor *t;
		real	   *dst = param_value(ps, i);
		char		buf[128];
		const char *name = saved_name(net, i, buf, sizeof(buf));

		/* prompt-learning heads as PEFT saves them, or as versions before 0.2.0 did */
		if (st_find(file, name) == NULL && st_find(file, p->name) != NULL)
			name = p->name;
		if ((rc = st_expect(file, name, p->ndim, p->shape, &t, err)) != PEFT_OK ||
			(rc = st_to_real(t, dst, p->count, err)) != PEFT_OK)
			break;
		for (size_t j = 0; j < p->count; j++)
			if (!isfinite(dst[j]))
			{
				rc = peft_fail(err, PEFT_ERR_FORMAT,
							   "adapter tensor \"%s\" holds a non-finite value", p->name);
				break;
			}
	}
done:
	st_close(file);
	network_params_changed(net);
	return rc;
}

/* Whether any linear has the adapter marked in flags. */
static bool
any_target(const bool flags[BERT_NUM_LINEAR])
{
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (flags[w])
			return true;
	return false;
}

/* The method name of options, e.g. "dora+bitfit" (buf of 64 bytes). */
const char *
adapter_method_name(const NetworkOptions *o, char *buf, size_t len)
{
	unsigned	methods = 0;

	if (any_target(o->lora.targets))
		methods |= o->dora ? PEFT_METHOD_DORA : PEFT_METHOD_LORA;
	else if (any_target(o->ia3.targets))
		methods |= PEFT_METHOD_IA3;
	if (o->bitfit)
		methods |= PEFT_METHOD_BITFIT;
	if (o->bottleneck.reduction > 0)
		methods |= PEFT_METHOD_ADAPTER;
	if (o->prompt_tokens > 0)
		methods |= PEFT_METHOD_PROMPT;
	if (o->prefix_tokens > 0)
		methods |= PEFT_METHOD_PREFIX;
	return adapter_methods_name(methods, buf, len);
}

/*
 * A JSON array of the names of the linears flagged, as PEFT writes them:
 * "output.dense" matches both dense outputs by suffix (and no name selects
 * the feed-forward one alone), so with it "attention.output.dense" is not
 * written again.
 */
static cJSON *
module_list(const bool flags[BERT_NUM_LINEAR])
{
	cJSON	   *list = cJSON_CreateArray();

	for (int w = 0; list && w < BERT_NUM_LINEAR; w++)
		if (flags[w] && !(w == BERT_ATTN_OUT && flags[BERT_OUTPUT]))
			cJSON_AddItemToArray(list, cJSON_CreateString(bert_linear_name(w)));
	return list;
}

/*
 * adapter_config.json text for the network, as PEFT writes it for the
 * methods PEFT has: LoRA and DoRA (use_dora; BitFit as bias "all"), (IA)^3.
 * What PEFT cannot say (bottleneck adapters, BitFit without LoRA) is in
 * "peft_pg_method"; BitFit alone and bottleneck adapters alone get
 * peft_type "BITFIT" / "BOTTLENECK" (which PEFT does not load).
 */
PeftCode
adapter_config_json(const Network *net, const char *base_model, char **out,
					PeftError *err)
{
	const NetworkOptions *o = &net->opts;
	const LoraOptions *lo = &o->lora;
	cJSON	   *root = cJSON_CreateObject();
	cJSON	   *save = cJSON_CreateArray();
	char		method[64];
	bool		lora = any_target(lo->targets);
	bool		ia3 = any_target(o->ia3.targets);

	*out = NULL;
	if (root == NULL || save == NULL)
		goto oom;
	adapter_method_name(o, method, sizeof(method));
	cJSON_AddStringToObject(root, "peft_type", lora ? "LORA" : ia3 ? "IA3" :
							o->bottleneck.reduction > 0 ? "BOTTLENECK" : o->bitfit ? "BITFIT" :
							o->prefix_tokens > 0 ? "PREFIX_TUNING" : "PROMPT_TUNING");
	cJSON_AddNullToObject(root, "task_type");
	cJSON_AddStringToObject(root, "base_model_name_or_path", base_model ? base_model : "");
	/* PEFT's own fields say everything for LoRA/DoRA (+ BitFit as bias "all"), (IA)^3, prompts */
	if (o->bottleneck.reduction > 0 || (o->bitfit && !lora) ||
		((o->prompt_tokens > 0 || o->prefix_tokens > 0) && (lora || ia3 || o->bitfit)))
		cJSON_AddStringToObject(root, "peft_pg_method", method);
	if (lora)
	{
		cJSON_AddNumberToObject(root, "r", lo->r);
		cJSON_AddNumberToObject(root, "lora_alpha", lo->alpha);
		cJSON_AddNumberToObject(root, "lora_dropout", lo->dropout);
		cJSON_AddItemToObject(root, "target_modules", module_list(lo->targets));
		cJSON_AddStringToObject(root, "bias", o->bitfit ? "all" : "none");
		cJSON_AddBoolToObject(root, "use_rslora", lo->rslora);
		cJSON_AddBoolToObject(root, "use_dora", o->dora);
		cJSON_AddBoolToObject(root, "init_lora_weights", 1);
	}
	else if (ia3)
	{
		cJSON_AddItemToObject(root, "target_modules", module_list(o->ia3.targets));
		cJSON_AddItemToObject(root, "feedforward_modules", module_list(o->ia3.feedforward));
		cJSON_AddBoolToObject(root, "init_ia3_weights", 1);
	}
	if (o->prompt_tokens > 0 || o->prefix_tokens > 0)
	{
		const ModelConfig *cfg = &net->base->cfg;

		/* PEFT prepends the virtual tokens only in its FEATURE_EXTRACTION (and task) models */
		cJSON_ReplaceItemInObject(root, "task_type", cJSON_CreateString("FEATURE_EXTRACTION"));
		cJSON_AddNumberToObject(root, "num_virtual_tokens", o->prompt_tokens + o->prefix_tokens);
		cJSON_AddNumberToObject(root, "token_dim", cfg->hidden_size);
		cJSON_AddNumberToObject(root, "num_transformer_submodules", 1);
		cJSON_AddNumberToObject(root, "num_attention_heads", cfg->num_heads);
		cJSON_AddNumberToObject(root, "num_layers", cfg->num_layers);
		if (o->prefix_tokens > 0)
		{
			cJSON_AddNumberToObject(root, "encoder_hidden_size", cfg->hidden_size);
			cJSON_AddBoolToObject(root, "prefix_projection", 0);
		}
		else
			/* each virtual token starts as a random vocabulary token's embedding (network.c) */
			cJSON_AddStringToObject(root, "prompt_tuning_init", "SAMPLE_VOCAB");
	}
	if (o->bottleneck.reduction > 0)
	{
		cJSON_AddNumberToObject(root, "reduction_factor", o->bottleneck.reduction);
		cJSON_AddStringToObject(root, "adapter_placement",
								o->bottleneck.after_attention ? "houlsby" : "pfeiffer");
	}
	if (lora || ia3)
		cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);	/* not a prompt-learning key */
	cJSON_AddBoolToObject(root, "inference_mode", 1);
	if (o->num_labels > 0)
		cJSON_AddItemToArray(save, cJSON_CreateString("classifier"));
	cJSON_AddItemToObject(root, "modules_to_save", save);
	save = NULL;
	*out = cJSON_Print(root);
	cJSON_Delete(root);
	if (*out == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing adapter_config.json");
	return PEFT_OK;
oom:
	cJSON_Delete(root);
	cJSON_Delete(save);
	return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing adapter_config.json");
}

/* A number field that must be present and finite. */
static PeftCode
config_number(const cJSON *root, const char *key, double *out, PeftError *err)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);

	if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "adapter config: \"%s\" must be a number", key);
	*out = item->valuedouble;
	return PEFT_OK;
}

/* Parse a module list (a string or an array of strings) into flags; absent is an empty list when optional. */
static PeftCode
config_modules(const cJSON *root, const char *key, bool optional, bool flags[BERT_NUM_LINEAR],
			   PeftError *err)
{
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, key);
	const cJSON *item;
	const char *names[BERT_NUM_LINEAR * 4];
	int			count = 0;
	PeftCode	rc;

	memset(flags, 0, sizeof(bool) * BERT_NUM_LINEAR);
	if (list == NULL || cJSON_IsNull(list))
	{
		if (optional)
			return PEFT_OK;
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: %s is missing", key);
	}
	if (cJSON_IsString(list))
		names[count++] = list->valuestring;
	else if (cJSON_IsArray(list))
	{
		cJSON_ArrayForEach(item, list)
		{
			if (!cJSON_IsString(item) || count == (int) (sizeof(names) / sizeof(names[0])))
				return peft_fail(err, PEFT_ERR_FORMAT,
								 "adapter config: %s must be a short list of strings", key);
			names[count++] = item->valuestring;
		}
	}
	else
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: %s must be a list of strings", key);
	if (count == 0 && optional)
		return PEFT_OK;
	rc = lora_parse_targets(flags, names, count, err);
	if (rc == PEFT_ERR_INVALID)
		rc = err ? (err->code = PEFT_ERR_FORMAT) : PEFT_ERR_FORMAT;
	return rc;
}

/*
 * Refuse PEFT settings that change what the weights mean and that this
 * engine does not implement (rather than load them and compute something
 * else): per-layer patterns, layer selections, transposed weights.
 */
static PeftCode
config_refuse_unsupported(const cJSON *root, PeftError *err)
{
	static const char *const empty_if_present[] = {"rank_pattern", "alpha_pattern"};
	static const char *const null_or_false[] = {
		"layers_to_transform", "layers_pattern", "fan_in_fan_out", "lora_bias",
		"use_qalora", "trainable_token_indices", "exclude_modules"
	};
	const cJSON *item;

	for (size_t i = 0; i < sizeof(empty_if_present) / sizeof(empty_if_present[0]); i++)
	{
		item = cJSON_GetObjectItemCaseSensitive(root, empty_if_present[i]);
		if (item && !cJSON_IsNull(item) && !(cJSON_IsObject(item) && item->child == NULL))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter config: %s is not supported",
							 empty_if_present[i]);
	}
	for (size_t i = 0; i < sizeof(null_or_false) / sizeof(null_or_false[0]); i++)
	{
		item = cJSON_GetObjectItemCaseSensitive(root, null_or_false[i]);
		if (item && !cJSON_IsNull(item) && !cJSON_IsFalse(item) &&
			!(cJSON_IsArray(item) && item->child == NULL))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter config: %s is not supported",
							 null_or_false[i]);
	}
	return PEFT_OK;
}

/* LoRA / DoRA fields of a LORA config. */
static PeftCode
config_lora(const cJSON *root, NetworkOptions *opts, PeftError *err)
{
	const cJSON *item;
	double		r = 0;
	PeftCode	rc;

	if ((rc = config_number(root, "r", &r, err)) != PEFT_OK ||
		(rc = config_number(root, "lora_alpha", &opts->lora.alpha, err)) != PEFT_OK)
		return rc;
	if (r != floor(r) || r < 1 || r > 4096)
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: r must be an integer from 1 to 4096");
	if (!(opts->lora.alpha > 0))
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: lora_alpha must be positive");
	opts->lora.r = (int) r;
	opts->lora.dropout = 0;
	item = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
	if (cJSON_IsNumber(item))
	{
		if (!(item->valuedouble >= 0 && item->valuedouble < 1))
			return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: lora_dropout must be in [0, 1)");
		opts->lora.dropout = item->valuedouble;
	}
	opts->lora.rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_rslora"));
	opts->dora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_dora"));
	item = cJSON_GetObjectItemCaseSensitive(root, "bias");
	if (cJSON_IsString(item) && strcmp(item->valuestring, "all") == 0)
		opts->bitfit = true;
	else if (item && !cJSON_IsNull(item) &&
			 !(cJSON_IsString(item) && strcmp(item->valuestring, "none") == 0))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "adapter config: bias must be \"none\" or \"all\"");
	return config_modules(root, "target_modules", false, opts->lora.targets, err);
}

/*
 * Prompt tuning fields: num_virtual_tokens; one transformer submodule
 * (encoder models); the prompt is used as saved, so its init does not
 * matter.
 */
static PeftCode
config_prompt(const cJSON *root, NetworkOptions *opts, PeftError *err)
{
	const cJSON *subs = cJSON_GetObjectItemCaseSensitive(root, "num_transformer_submodules");
	double		v = 0;
	PeftCode	rc;

	if ((rc = config_number(root, "num_virtual_tokens", &v, err)) != PEFT_OK)
		return rc;
	if (v != floor(v) || v < 1 || v > 256)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "adapter config: num_virtual_tokens must be an integer from 1 to 256");
	if (subs && !cJSON_IsNull(subs) && !(cJSON_IsNumber(subs) && subs->valuedouble == 1))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "adapter config: num_transformer_submodules must be 1 for an encoder");
	opts->prompt_tokens = (int) v;
	return PEFT_OK;
}

/* Bottleneck fields (reduction_factor, adapter_placement). */
static PeftCode
config_bottleneck(const cJSON *root, NetworkOptions *opts, PeftError *err)
{
	const cJSON *place = cJSON_GetObjectItemCaseSensitive(root, "adapter_placement");
	double		rf = 0;
	PeftCode	rc;

	if ((rc = config_number(root, "reduction_factor", &rf, err)) != PEFT_OK)
		return rc;
	if (rf != floor(rf) || rf < 1 || rf > 65536)
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config: reduction_factor must be a positive integer");
	if (!cJSON_IsString(place) ||
		(strcmp(place->valuestring, "houlsby") != 0 && strcmp(place->valuestring, "pfeiffer") != 0))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "adapter config: adapter_placement must be \"houlsby\" or \"pfeiffer\"");
	opts->bottleneck.reduction = (int) rf;
	opts->bottleneck.after_attention = strcmp(place->valuestring, "houlsby") == 0;
	opts->bottleneck.after_ffn = true;
	return PEFT_OK;
}

/*
 * Read network options from adapter_config.json text: peft_type LORA
 * (use_dora, use_rslora, bias "none" or "all"), IA3, or this engine's
 * BITFIT / BOTTLENECK, with peft_pg_method naming combinations.  Fields
 * other than the method's are kept from opts.
 */
PeftCode
adapter_options_from_config(const char *json, size_t len, NetworkOptions *opts,
							PeftError *err)
{
	cJSON	   *root = NULL;
	const cJSON *type;
	const cJSON *pg;
	unsigned	methods = 0;
	PeftCode	rc = PEFT_OK;

	/* a copy ending in NUL; a NUL inside the text is refused (not a silent end) */
	if ((rc = parse_json_text(json, len, "adapter config", &root, err)) != PEFT_OK)
		return rc;
	if (!cJSON_IsObject(root))
	{
		cJSON_Delete(root);
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config is not a JSON object");
	}
	memset(&opts->lora.targets, 0, sizeof(opts->lora.targets));
	memset(&opts->ia3, 0, sizeof(opts->ia3));
	memset(&opts->bottleneck, 0, sizeof(opts->bottleneck));
	opts->dora = opts->bitfit = false;
	opts->prompt_tokens = opts->prefix_tokens = 0;
	type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	pg = cJSON_GetObjectItemCaseSensitive(root, "peft_pg_method");
	if (pg != NULL && (!cJSON_IsString(pg) ||
					   (rc = adapter_parse_method(pg->valuestring, &methods, err)) != PEFT_OK))
	{
		if (rc == PEFT_OK)
			rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter config: peft_pg_method must be a string");
		else
			err->code = rc = PEFT_ERR_FORMAT;
		goto done;
	}
	if ((rc = config_refuse_unsupported(root, err)) != PEFT_OK)
		goto done;
	if (!cJSON_IsString(type))
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter config: peft_type is missing");
		goto done;
	}
	if (strcmp(type->valuestring, "LORA") == 0)
		rc = config_lora(root, opts, err);
	else if (strcmp(type->valuestring, "IA3") == 0)
	{
		if ((rc = config_modules(root, "target_modules", false, opts->ia3.targets, err)) == PEFT_OK)
			rc = config_modules(root, "feedforward_modules", true, opts->ia3.feedforward, err);
	}
	else if (strcmp(type->valuestring, "BITFIT") == 0)
		opts->bitfit = true;
	else if (strcmp(type->valuestring, "PROMPT_TUNING") == 0)
		rc = config_prompt(root, opts, err);
	else if (strcmp(type->valuestring, "PREFIX_TUNING") == 0)
	{
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "prefix_projection")))
			rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
						   "adapter config: prefix_projection is not supported");
		else if ((rc = config_prompt(root, opts, err)) == PEFT_OK)
		{
			opts->prefix_tokens = opts->prompt_tokens;
			opts->prompt_tokens = 0;
		}
	}
	else if (strcmp(type->valuestring, "BOTTLENECK") != 0)
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "adapter config: peft_type \"%s\" is not supported (LORA, IA3, PROMPT_TUNING, "
					   "PREFIX_TUNING, BITFIT, BOTTLENECK are)", type->valuestring);
	if (rc != PEFT_OK)
		goto done;
	if (methods & PEFT_METHOD_BITFIT)
		opts->bitfit = true;
	if ((methods & PEFT_METHOD_ADAPTER) || strcmp(type->valuestring, "BOTTLENECK") == 0)
		rc = config_bottleneck(root, opts, err);
	if (rc == PEFT_OK && (methods & (PEFT_METHOD_PROMPT | PEFT_METHOD_PREFIX)) &&
		strcmp(type->valuestring, "PROMPT_TUNING") != 0 && strcmp(type->valuestring, "PREFIX_TUNING") != 0)
	{
		rc = config_prompt(root, opts, err);
		if (rc == PEFT_OK && (methods & PEFT_METHOD_PREFIX))
		{
			opts->prefix_tokens = opts->prompt_tokens;
			opts->prompt_tokens = 0;
		}
	}
done:
	cJSON_Delete(root);
	return rc;
}
