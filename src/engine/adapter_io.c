/*
 * adapter_io.c - adapter weights and config in Hugging Face PEFT's formats.
 */
#include "adapter_io.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Serialise every trainable parameter (malloc'ed bytes). */
PeftCode
adapter_serialize(const Network *net, uint8_t **out, size_t *len, PeftError *err)
{
	const ParamSet *ps = &net->params;
	StWriteTensor *tensors = calloc(ps->count ? ps->count : 1, sizeof(StWriteTensor));
	static const char *const keys[] = {"format"};
	static const char *const values[] = {"pt"};
	PeftCode	rc;

	if (tensors == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory serialising the adapter");
	for (int i = 0; i < ps->count; i++)
	{
		tensors[i].name = ps->items[i].name;
		tensors[i].ndim = ps->items[i].ndim;
		tensors[i].shape[0] = ps->items[i].shape[0];
		tensors[i].shape[1] = ps->items[i].shape[1];
		tensors[i].data = param_value(ps, i);
	}
	rc = st_serialize(tensors, ps->count, keys, values, 1, out, len, err);
	free(tensors);
	return rc;
}

/* Load and validate weights into a network built with matching options. */
PeftCode
adapter_load_weights(Network *net, const uint8_t *bytes, size_t len, PeftError *err)
{
	ParamSet   *ps = &net->params;
	StFile	   *file;
	PeftCode	rc;

	if ((rc = st_open_buffer(bytes, len, &file, err)) != PEFT_OK)
		return rc;
	if (file->ntensors != ps->count)
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT,
					   "adapter weights hold %d tensors, the adapter's config needs %d",
					   file->ntensors, ps->count);
		goto done;
	}
	for (int i = 0; i < ps->count && rc == PEFT_OK; i++)
	{
		const Param *p = &ps->items[i];
		const StTensor *t;
		real	   *dst = param_value(ps, i);

		if ((rc = st_expect(file, p->name, p->ndim, p->shape, &t, err)) != PEFT_OK ||
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

/* adapter_config.json text for the network. */
PeftCode
adapter_config_json(const Network *net, const char *base_model, char **out,
					PeftError *err)
{
	const LoraOptions *lo = &net->opts.lora;
	cJSON	   *root = cJSON_CreateObject();
	cJSON	   *targets = cJSON_CreateArray();
	cJSON	   *save = cJSON_CreateArray();

	*out = NULL;
	if (root == NULL || targets == NULL || save == NULL)
		goto oom;
	cJSON_AddStringToObject(root, "peft_type", "LORA");
	cJSON_AddNullToObject(root, "task_type");
	cJSON_AddStringToObject(root, "base_model_name_or_path", base_model ? base_model : "");
	cJSON_AddNumberToObject(root, "r", lo->r);
	cJSON_AddNumberToObject(root, "lora_alpha", lo->alpha);
	cJSON_AddNumberToObject(root, "lora_dropout", lo->dropout);
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (lo->targets[w])
			cJSON_AddItemToArray(targets, cJSON_CreateString(bert_linear_name(w)));
	cJSON_AddItemToObject(root, "target_modules", targets);
	targets = NULL;
	cJSON_AddStringToObject(root, "bias", "none");
	cJSON_AddBoolToObject(root, "use_rslora", lo->rslora);
	cJSON_AddBoolToObject(root, "use_dora", 0);
	cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(root, "init_lora_weights", 1);
	cJSON_AddBoolToObject(root, "inference_mode", 1);
	if (net->opts.num_labels > 0)
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
	cJSON_Delete(targets);
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

/* Read LoRA options from adapter_config.json text. */
PeftCode
adapter_options_from_config(const char *json, size_t len, NetworkOptions *opts,
							PeftError *err)
{
	cJSON	   *root = cJSON_ParseWithLength(json, len);
	const cJSON *type;
	const cJSON *targets;
	const cJSON *item;
	const char *names[BERT_NUM_LINEAR * 4];
	int			count = 0;
	double		r = 0;
	PeftCode	rc;

	if (!cJSON_IsObject(root))
	{
		cJSON_Delete(root);
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter config is not a JSON object");
	}
	type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA") != 0)
	{
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter config: peft_type must be \"LORA\"");
		goto done;
	}
	if ((rc = config_number(root, "r", &r, err)) != PEFT_OK ||
		(rc = config_number(root, "lora_alpha", &opts->lora.alpha, err)) != PEFT_OK)
		goto done;
	if (r != floor(r) || r < 1 || r > 4096)
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter config: r must be an integer from 1 to 4096");
		goto done;
	}
	opts->lora.r = (int) r;
	opts->lora.dropout = 0;
	item = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
	if (cJSON_IsNumber(item))
		opts->lora.dropout = item->valuedouble;
	item = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
	opts->lora.rslora = cJSON_IsTrue(item);
	item = cJSON_GetObjectItemCaseSensitive(root, "use_dora");
	if (cJSON_IsTrue(item))
	{
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter config: use_dora is not supported yet");
		goto done;
	}
	targets = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
	if (cJSON_IsString(targets))
		names[count++] = targets->valuestring;
	else if (cJSON_IsArray(targets))
	{
		cJSON_ArrayForEach(item, targets)
		{
			if (!cJSON_IsString(item) || count == (int) (sizeof(names) / sizeof(names[0])))
			{
				rc = peft_fail(err, PEFT_ERR_FORMAT,
							   "adapter config: target_modules must be a short list of strings");
				goto done;
			}
			names[count++] = item->valuestring;
		}
	}
	else
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter config: target_modules is missing");
		goto done;
	}
	rc = lora_parse_targets(opts->lora.targets, names, count, err);
	if (rc == PEFT_ERR_INVALID)
		rc = err ? (err->code = PEFT_ERR_FORMAT) : PEFT_ERR_FORMAT;
done:
	cJSON_Delete(root);
	return rc;
}
