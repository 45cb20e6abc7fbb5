/*
 * test_methods_reference.c - adapters saved by Hugging Face PEFT (LoRA,
 * rsLoRA, DoRA, (IA)^3 on all-MiniLM-L6-v2, with non-trivial weights;
 * test/fixtures/ref_methods.py) imported here give PEFT's last hidden
 * states within 2e-5, merged or not.  With $PEFT_EXPORT_DIR set, each
 * imported adapter is also exported there (adapter_config.json,
 * adapter_model.safetensors and our outputs) for
 * test/fixtures/check_export.py to load back into PEFT.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "adapter_io.h"
#include "bert.h"
#include "compare.h"
#include "model_config.h"
#include "network.h"
#include "safetensors.h"
#include "test_util.h"

static BertModel *model;

/* Load the real model once (absent: every test calls require_real_model). */
static int
setup(void **state)
{
	const char *dir = real_model_dir();
	PeftError	err = {0};

	if (dir != NULL && bert_load(dir, &model, &err) != PEFT_OK)
	{
		fprintf(stderr, "cannot load %s: %s\n", dir, err.message);
		return -1;
	}
	return 0;
}

/* Free the model. */
static int
teardown(void **state)
{
	bert_free(model);
	return 0;
}

/* A whole file of the fixture folder of method (malloc'ed), or NULL. */
static char *
fixture_file(const char *method, const char *name, size_t *len)
{
	char		path[512];
	char	   *data = NULL;
	PeftError	err = {0};

	snprintf(path, sizeof(path), "test/fixtures/reference/methods/%s/%s", method, name);
	if (read_small_file(source_path(path), (size_t) 1 << 30, &data, len, &err) != PEFT_OK)
		return NULL;
	return data;
}

/* Write len bytes to dir/name. */
static void
write_out(const char *dir, const char *name, const void *data, size_t len)
{
	char		path[2048];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

/*
 * Our last hidden states agree with PEFT's within HIDDEN_TOLERANCE
 * (measured: at most 3.8e-6 over the six methods, merged or not).
 */
#define HIDDEN_TOLERANCE 2e-5

/*
 * Compare ours [B, T, C] with PEFT's over the real tokens (PEFT's are
 * packed, sequence i at rows offsets[i] .. offsets[i] + lengths[i]);
 * indices in messages are into PEFT's packed rows.
 */
static void
check_hidden(const char *what, const real *ours, const real *theirs, const int32_t *lengths,
			 const int32_t *offsets, int B, int T, int C)
{
	Compare		c;

	compare_begin(&c, what, HIDDEN_TOLERANCE, 0);
	for (int i = 0; i < B; i++)
		for (int t = 0; t < lengths[i]; t++)
			for (int ch = 0; ch < C; ch++)
				compare_add(&c, ((size_t) offsets[i] + t) * C + ch,
							ours[((size_t) i * T + t) * C + ch],
							theirs[((size_t) offsets[i] + t) * C + ch]);
	compare_end(&c);
}

/* Import PEFT's adapter of method, compare hidden states (and merged), export it. */
static void
check_method(const char *method, bool mergeable)
{
	size_t		config_len, weights_len;
	char	   *config;
	char	   *weights;
	StFile	   *out;
	NetworkOptions o = {0};
	Network    *net;
	PeftError	err = {0};
	size_t		n = 0;
	int32_t    *ids, *mask, *lengths, *offsets;
	real	   *expected, *hidden;
	Batch		b = {0};
	int			C;
	const char *export_dir = getenv("PEFT_EXPORT_DIR");
	char		path[1024];
	char		what[128];

	require_real_model(model != NULL);
	config = fixture_file(method, "adapter_config.json", &config_len);
	weights = fixture_file(method, "adapter_model.safetensors", &weights_len);
	snprintf(path, sizeof(path), "test/fixtures/reference/methods/%s/outputs.safetensors", method);
	assert_non_null(config);
	assert_non_null(weights);
	assert_int_equal(st_open_file(source_path(path), &out, &err), PEFT_OK);
	C = model->cfg.hidden_size;
	ids = tensor_int32(out, "input_ids", &n);
	mask = tensor_int32(out, "attention_mask", NULL);
	expected = tensor_real(out, "hidden", NULL);
	lengths = tensor_int32(out, "lengths", NULL);
	offsets = tensor_int32(out, "offsets", NULL);
	assert_non_null(lengths);
	assert_non_null(offsets);
	assert_non_null(ids);
	assert_non_null(expected);
	b.B = (int) st_find(out, "input_ids")->shape[0];
	b.T = (int) (n / b.B);
	b.ids = ids;
	b.mask = mask;

	if (adapter_options_from_config(config, config_len, &o, &err) != PEFT_OK)
		fail_msg("%s: %s", method, err.message);
	assert_int_equal(network_create(model, &o, &net, &err), PEFT_OK);
	if (adapter_load_weights(net, (const uint8_t *) weights, weights_len, &err) != PEFT_OK)
		fail_msg("%s: %s", method, err.message);
	hidden = malloc(sizeof(real) * n * C);
	assert_int_equal(network_hidden_states(net, &b, hidden, &err), PEFT_OK);
	snprintf(what, sizeof(what), "%s imported from PEFT: hidden", method);
	check_hidden(what, hidden, expected, lengths, offsets, b.B, b.T, C);

	if (export_dir)
	{
		char		dir[1024];
		uint8_t    *bytes;
		size_t		len;
		char	   *ours;
		StWriteTensor t[3];
		int64_t		dims = b.T;
		uint8_t    *outputs;
		size_t		outputs_len;

		snprintf(dir, sizeof(dir), "%s/%s", export_dir, method);
		mkdir(export_dir, 0755);
		mkdir(dir, 0755);
		assert_int_equal(adapter_serialize(net, &bytes, &len, &err), PEFT_OK);
		assert_int_equal(adapter_config_json(net, "sentence-transformers/all-MiniLM-L6-v2", &ours, &err), PEFT_OK);
		write_out(dir, "adapter_model.safetensors", bytes, len);
		write_out(dir, "adapter_config.json", ours, strlen(ours));
		memset(t, 0, sizeof(t));
		t[0].name = "hidden";
		t[0].ndim = 3;
		t[0].shape[0] = b.B;
		t[0].shape[1] = dims;
		t[0].shape[2] = C;
		t[0].data = hidden;
		assert_int_equal(st_serialize(t, 1, NULL, NULL, 0, &outputs, &outputs_len, &err), PEFT_OK);
		write_out(dir, "ours_hidden.safetensors", outputs, outputs_len);
		free(bytes);
		free(ours);
		free(outputs);
	}

	if (mergeable)
	{
		assert_int_equal(network_merge(net, &err), PEFT_OK);
		assert_int_equal(network_hidden_states(net, &b, hidden, &err), PEFT_OK);
		snprintf(what, sizeof(what), "%s merged: hidden", method);
		check_hidden(what, hidden, expected, lengths, offsets, b.B, b.T, C);
	}
	network_free(net);
	free(config);
	free(weights);
	free(ids);
	free(mask);
	free(lengths);
	free(offsets);
	free(expected);
	free(hidden);
	st_close(out);
}

/* PEFT's LoRA (query, value). */
static void
test_lora(void **state)
{
	check_method("lora", true);
}

/* PEFT's LoRA with use_rslora. */
static void
test_rslora(void **state)
{
	check_method("lora_rslora", true);
}

/* PEFT's DoRA (use_dora). */
static void
test_dora(void **state)
{
	check_method("dora", true);
}

/* PEFT's (IA)^3 (key, value, output.dense as feed-forward). */
static void
test_ia3(void **state)
{
	check_method("ia3", true);
}

/*
 * Adapters built here (LoRA, DoRA, (IA)^3, LoRA + BitFit as PEFT's bias
 * "all", prompt and prefix tuning, every value perturbed) exported and read
 * back give the same hidden states to the bit; with $PEFT_EXPORT_DIR they
 * are also written there with our hidden states, for
 * test/bench/check_export.sh to load into PEFT (test/fixtures/check_export.py).
 */
static void
test_export_own(void **state)
{
	static const char *const methods[] = {"lora", "dora", "ia3", "lora+bitfit", "prompt", "prefix"};
	const char *export_dir = getenv("PEFT_EXPORT_DIR");
	StFile	   *in;
	PeftError	err = {0};
	size_t		n = 0;
	int32_t    *ids, *mask;
	Batch		b = {0};
	int			C;

	require_real_model(model != NULL);
	C = model->cfg.hidden_size;
	assert_int_equal(st_open_file(source_path("test/fixtures/reference/methods/lora/outputs.safetensors"),
								  &in, &err), PEFT_OK);
	ids = tensor_int32(in, "input_ids", &n);
	mask = tensor_int32(in, "attention_mask", NULL);
	b.B = (int) st_find(in, "input_ids")->shape[0];
	b.T = (int) (n / b.B);
	b.ids = ids;
	b.mask = mask;
	for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++)
	{
		NetworkOptions o = {0};
		Network    *net;
		PeftRng		rng;
		real	   *hidden = malloc(sizeof(real) * n * C);
		real	   *idsf = malloc(sizeof(real) * n);
		real	   *maskf = malloc(sizeof(real) * n);
		char		dir[1024];
		char	   *config;
		uint8_t    *bytes;
		size_t		len;
		StWriteTensor t[3];
		uint8_t    *outputs;
		size_t		outputs_len;
		bool		ia3 = strcmp(methods[k], "ia3") == 0;
		bool		virtual_tokens = strcmp(methods[k], "prompt") == 0 || strcmp(methods[k], "prefix") == 0;

		o.lora.r = 4;
		o.lora.alpha = 8;
		o.dora = strcmp(methods[k], "dora") == 0;
		o.bitfit = strstr(methods[k], "bitfit") != NULL;
		o.prompt_tokens = strcmp(methods[k], "prompt") == 0 ? 5 : 0;
		o.prefix_tokens = strcmp(methods[k], "prefix") == 0 ? 5 : 0;
		for (int w = 0; w < BERT_NUM_LINEAR && !virtual_tokens; w++)
			if (ia3)
				o.ia3.targets[w] = w == BERT_KEY || w == BERT_VALUE || w >= BERT_ATTN_OUT;
			else
				o.lora.targets[w] = w == BERT_QUERY || w == BERT_VALUE || w == BERT_INTERMEDIATE;
		o.ia3.feedforward[BERT_ATTN_OUT] = o.ia3.feedforward[BERT_OUTPUT] = ia3;
		assert_int_equal(network_create(model, &o, &net, &err), PEFT_OK);
		peft_rng_seed(&rng, 31 + k);
		for (size_t j = 0; j < net->params.total; j++)
			net->params.values[j] += (real) (0.05 * (2 * peft_rng_uniform(&rng) - 1));
		network_params_changed(net);
		assert_int_equal(network_hidden_states(net, &b, hidden, &err), PEFT_OK);
		assert_int_equal(adapter_serialize(net, &bytes, &len, &err), PEFT_OK);
		assert_int_equal(adapter_config_json(net, "sentence-transformers/all-MiniLM-L6-v2", &config, &err), PEFT_OK);
		{
			/* read back into a new network: the same hidden states, to the bit */
			NetworkOptions o2 = {0};
			Network    *back;
			real	   *again = malloc(sizeof(real) * n * C);
			char		what[64];

			assert_int_equal(adapter_options_from_config(config, strlen(config), &o2, &err), PEFT_OK);
			assert_int_equal(network_create(model, &o2, &back, &err), PEFT_OK);
			assert_int_equal(adapter_load_weights(back, bytes, len, &err), PEFT_OK);
			assert_int_equal(network_hidden_states(back, &b, again, &err), PEFT_OK);
			snprintf(what, sizeof(what), "%s exported and read back", methods[k]);
			compare_close(what, again, hidden, n * C, 0, 0);
			network_free(back);
			free(again);
		}
		if (export_dir == NULL)
		{
			free(bytes), free(config), free(hidden), free(idsf), free(maskf);
			network_free(net);
			continue;
		}
		snprintf(dir, sizeof(dir), "%s/own_%s", export_dir, strcmp(methods[k], "lora+bitfit") ? methods[k] : "lora_bitfit");
		mkdir(export_dir, 0755);
		mkdir(dir, 0755);
		write_out(dir, "adapter_model.safetensors", bytes, len);
		write_out(dir, "adapter_config.json", config, strlen(config));
		for (size_t i = 0; i < n; i++)
		{
			idsf[i] = (real) ids[i];
			maskf[i] = (real) mask[i];
		}
		memset(t, 0, sizeof(t));
		t[0] = (StWriteTensor) {"attention_mask", 2, {b.B, b.T}, maskf};
		t[1] = (StWriteTensor) {"hidden", 3, {b.B, b.T, C}, hidden};
		t[2] = (StWriteTensor) {"input_ids", 2, {b.B, b.T}, idsf};
		assert_int_equal(st_serialize(t, 3, NULL, NULL, 0, &outputs, &outputs_len, &err), PEFT_OK);
		write_out(dir, "outputs.safetensors", outputs, outputs_len);
		print_message("exported %s to %s\n", methods[k], dir);
		free(bytes), free(config), free(outputs), free(hidden), free(idsf), free(maskf);
		network_free(net);
	}
	free(ids);
	free(mask);
	st_close(in);
}

/* PEFT's prompt tuning (8 virtual tokens; real tokens at positions 8 ..). */
static void
test_prompt_tuning(void **state)
{
	check_method("prompt_tuning", false);
}

/* PEFT's prefix tuning (8 key/value prefixes per layer; real tokens at positions 8 ..). */
static void
test_prefix_tuning(void **state)
{
	check_method("prefix_tuning", false);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lora),
		cmocka_unit_test(test_rslora),
		cmocka_unit_test(test_dora),
		cmocka_unit_test(test_ia3),
		cmocka_unit_test(test_prompt_tuning),
		cmocka_unit_test(test_prefix_tuning),
		cmocka_unit_test(test_export_own),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
