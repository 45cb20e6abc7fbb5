/*
 * test_export_peft.c - what peft_export gives is what Hugging Face PEFT
 * saves: for every method peft_train exports in PEFT's format (LoRA, rsLoRA,
 * DoRA, LoRA/DoRA + BitFit as bias "all", (IA)^3, prompt and prefix tuning),
 * an adapter trained here through the engine's training API (the path the
 * server's worker takes: train_config_default, train_begin, train_add_row,
 * train_prepare, train_step, train_export), with peft_train's default
 * options, over the real all-MiniLM-L6-v2 and a 3-class head, has exactly
 * the tensor names, shapes and dtypes PEFT's save_pretrained writes for the
 * same configuration, and an adapter_config.json PEFT reads as the same
 * config: every key we write is one of PEFT's (or our own, documented
 * "peft_pg_method"), with PEFT's value where the value is not ours to
 * choose, and every key we leave out has PEFT's default.  The fixture
 * (names, shapes, dtypes, config) comes from test/fixtures/ref_export.py;
 * values come from our training.  No Python at test time; the full check
 * that PEFT loads our exports and computes our hidden states is
 * test/bench/check_export.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine_api.h"
#include "safetensors.h"
#include "test_util.h"

static const PeftEngineApi *api;
static PeftModelHandle *model;
static cJSON *fixture;

/*
 * Config keys whose value is ours to choose, not PEFT's: the base model is
 * named by its registration, PEFT writes its own version and the class of
 * the model object it wrapped, and our prompt tuning starts from sampled
 * vocabulary embeddings (PEFT's SAMPLE_VOCAB; the fixture used its default).
 */
static const char *const own_values[] = {"base_model_name_or_path", "peft_version", "auto_mapping",
	"prompt_tuning_init"};

/* Load the engine, the real model and the fixture once. */
static int
setup(void **state)
{
	const char *dir = real_model_dir();
	PeftModelInfo info;
	PeftError	err = {0};

	fixture = load_json_file(source_path("test/fixtures/reference/export.json"));
	if (fixture == NULL)
	{
		fprintf(stderr, "cannot read test/fixtures/reference/export.json\n");
		return -1;
	}
	api = peft_engine_api();
	if (api->init(1, &err) != PEFT_OK)
	{
		fprintf(stderr, "engine init: %s\n", err.message);
		return -1;
	}
	if (dir != NULL && api->model_open(dir, &model, &info, &err) != PEFT_OK)
	{
		fprintf(stderr, "cannot load %s: %s\n", dir, err.message);
		return -1;
	}
	return 0;
}

/* Free the model and the fixture. */
static int
teardown(void **state)
{
	if (model)
		api->model_close(model);
	cJSON_Delete(fixture);
	return 0;
}

/* Train two steps of method (peft_train's defaults otherwise) and export; false on failure. */
static void
train_and_export(const char *method, bool rslora, uint8_t **weights, size_t *weights_len,
				 char **config)
{
	static const char *const texts[] = {
		"the movie was great", "terrible food and slow service", "we went to the river today",
		"excellent hotel room", "awful team", "a table and a chair", "good service", "bad movie"
	};
	PeftTrainConfig c;
	PeftTrainJob *job;
	PeftTrainProgress p = {0};
	PeftError	err = {0};
	int64_t		train_rows, valid_rows;
	int			total;

	api->train_config_default(&c);
	assert_int_equal(api->parse_method(method, &c.methods, &err), PEFT_OK);
	c.use_rslora = rslora;
	c.max_steps = 2;
	c.batch_size = 4;
	c.validation_fraction = 0;
	c.device = PEFT_DEVICE_CPU;
	assert_int_equal(api->train_begin(model, &c, &job, &err), PEFT_OK);
	for (int i = 0; i < 8; i++)
		assert_int_equal(api->train_add_row(job, texts[i], strlen(texts[i]), i % 3, 0, &err), PEFT_OK);
	assert_int_equal(api->train_prepare(job, 3, NULL, &train_rows, &valid_rows, &total, &err), PEFT_OK);
	while (!p.done)
		assert_int_equal(api->train_step(job, &p, &err), PEFT_OK);
	if (api->train_export(job, "minilm", weights, weights_len, config, &err) != PEFT_OK)
		fail_msg("%s: export: %s", method, err.message);
	api->train_free(job);
}

/* A JSON value for comparison: lists of strings as sorted sets, as the fixture stores them. */
static char *
comparable(const char *key, const cJSON *value)
{
	cJSON	   *copy = cJSON_Duplicate(value, true);
	char	   *text;

	if (cJSON_IsArray(copy) && (strcmp(key, "target_modules") == 0 ||
								strcmp(key, "feedforward_modules") == 0 ||
								strcmp(key, "modules_to_save") == 0))
	{
		int			n = cJSON_GetArraySize(copy);

		/* a short insertion sort of the strings */
		for (int i = 1; i < n; i++)
			for (int j = i; j > 0; j--)
			{
				cJSON	   *a = cJSON_GetArrayItem(copy, j - 1);
				cJSON	   *b = cJSON_GetArrayItem(copy, j);

				if (strcmp(a->valuestring, b->valuestring) <= 0)
					break;
				{
					char	   *t = a->valuestring;

					a->valuestring = b->valuestring;
					b->valuestring = t;
				}
			}
	}
	/* PEFT writes 16 for lora_alpha, we may write 16.0: compare numbers as numbers */
	text = cJSON_PrintUnformatted(copy);
	cJSON_Delete(copy);
	return text;
}

/* Whether key is one whose value is ours to choose. */
static bool
own_value(const char *key)
{
	for (size_t i = 0; i < sizeof(own_values) / sizeof(own_values[0]); i++)
		if (strcmp(key, own_values[i]) == 0)
			return true;
	return false;
}

/* Compare the export of one fixture method with what PEFT saved. */
static int
check_method(const char *name, const cJSON *expected)
{
	const cJSON *tensors = cJSON_GetObjectItem(expected, "tensors");
	const cJSON *keys = cJSON_GetObjectItem(expected, "config");
	bool		rslora = strcmp(name, "lora+rslora") == 0;
	uint8_t    *weights;
	size_t		weights_len;
	char	   *config_text;
	cJSON	   *config;
	StFile	   *file;
	PeftError	err = {0};
	const cJSON *item;
	int			problems = 0;

	train_and_export(rslora ? "lora" : name, rslora, &weights, &weights_len, &config_text);
	assert_int_equal(st_open_buffer(weights, weights_len, &file, &err), PEFT_OK);

	/* tensors: the same names, shapes and dtypes */
	for (int i = 0; i < file->ntensors; i++)
	{
		const StTensor *t = &file->tensors[i];
		const cJSON *want = cJSON_GetObjectItem(tensors, t->name);
		char		shape[128] = "[";

		for (int d = 0; d < t->ndim; d++)
			snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%lld", d ? "," : "",
					 (long long) t->shape[d]);
		strcat(shape, "]");
		if (want == NULL)
		{
			print_error("%s: we export %s %s, which PEFT does not save\n", name, t->name, shape);
			problems++;
			continue;
		}
		{
			char	   *want_shape = cJSON_PrintUnformatted(cJSON_GetObjectItem(want, "shape"));

			if (strcmp(want_shape, shape) != 0)
			{
				print_error("%s: %s has shape %s, PEFT's %s\n", name, t->name, shape, want_shape);
				problems++;
			}
			free(want_shape);
		}
		if (strcmp(cJSON_GetObjectItem(want, "dtype")->valuestring, "float32") != 0 || t->dtype != ST_F32)
		{
			print_error("%s: %s is %s, PEFT's %s\n", name, t->name, st_dtype_name(t->dtype),
						cJSON_GetObjectItem(want, "dtype")->valuestring);
			problems++;
		}
	}
	cJSON_ArrayForEach(item, tensors)
		if (st_find(file, item->string) == NULL)
		{
			print_error("%s: PEFT saves %s, which we do not export\n", name, item->string);
			problems++;
		}

	/* config: our keys are PEFT's, with PEFT's values; what we leave out is PEFT's default */
	config = cJSON_Parse(config_text);
	assert_non_null(config);
	cJSON_ArrayForEach(item, config)
	{
		const cJSON *want = cJSON_GetObjectItem(keys, item->string);
		char	   *ours, *theirs;

		if (strcmp(item->string, "peft_pg_method") == 0)
			continue;
		if (want == NULL)
		{
			print_error("%s: config key \"%s\" is not one of PEFT's\n", name, item->string);
			problems++;
			continue;
		}
		if (own_value(item->string))
			continue;
		ours = comparable(item->string, item);
		theirs = comparable(item->string, cJSON_GetObjectItem(want, "value"));
		if (strcmp(ours, theirs) != 0 &&
			!(cJSON_IsNumber(item) && cJSON_IsNumber(cJSON_GetObjectItem(want, "value")) &&
			  item->valuedouble == cJSON_GetObjectItem(want, "value")->valuedouble))
		{
			print_error("%s: config \"%s\" is %s, PEFT's %s\n", name, item->string, ours, theirs);
			problems++;
		}
		free(ours);
		free(theirs);
	}
	cJSON_ArrayForEach(item, keys)
		if (cJSON_GetObjectItem(config, item->string) == NULL && !own_value(item->string) &&
			!cJSON_IsTrue(cJSON_GetObjectItem(item, "default")))
		{
			char	   *theirs = cJSON_PrintUnformatted(cJSON_GetObjectItem(item, "value"));

			print_error("%s: config leaves out \"%s\", which PEFT saves as %s (not its default)\n",
						name, item->string, theirs);
			free(theirs);
			problems++;
		}
	print_message("%s: %d tensors, %d config keys (PEFT saves %d): %d differences\n", name,
				  file->ntensors, cJSON_GetArraySize(config), cJSON_GetArraySize(keys), problems);
	cJSON_Delete(config);
	st_close(file);
	api->free_buffer(weights);
	api->free_buffer(config_text);
	return problems;
}

/* Every method of the fixture: no difference with what PEFT saves. */
static void
test_exports_match_peft(void **state)
{
	const cJSON *methods = cJSON_GetObjectItem(fixture, "methods");
	const cJSON *m;
	int			problems = 0;
	int			count = 0;

	require_real_model(model != NULL);
	cJSON_ArrayForEach(m, methods)
	{
		problems += check_method(m->string, m);
		count++;
	}
	assert_true(count >= 8);
	assert_int_equal(problems, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exports_match_peft),
	};

	return cmocka_run_group_tests_name("export (engine vs Hugging Face PEFT's save_pretrained)", tests,
									   setup, teardown);
}
