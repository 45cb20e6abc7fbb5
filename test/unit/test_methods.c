/*
 * test_methods.c - every adapter method on the tiny model: its
 * adapter_config.json and weights round-trip (the network rebuilt from
 * them computes the same outputs), and merging (LoRA, DoRA, (IA)^3 folded
 * into the weights) gives the same outputs as the unmerged network.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapter_io.h"
#include "combine.h"
#include "compare.h"
#include "engine_api.h"
#include "method_table.h"
#include "network.h"
#include "test_util.h"
#include "tiny_model_fixture.h"
#include "method_fixture.h"

#define NB 4
#define NT 9

/* Options of one method by name (as peft_train's method argument), 3 classes. */
static NetworkOptions
method_options(const char *method)
{
	return method_options_for(method, PEFT_TASK_CLASSIFICATION, 3);
}

/* A network of method with every parameter moved off its initial value. */
static Network *
random_network(const char *method)
{
	NetworkOptions o = method_options(method);

	return perturbed_network(&o, 17);
}

/* Eval-mode logits of a fixed batch with irregular lengths. */
static void
logits(Network *net, real *out)
{
	int32_t		ids[NB * NT], mask[NB * NT];
	static const int len[NB] = {9, 3, 6, 1};
	Batch		b = {NB, NT, ids, mask, NULL, NULL};
	PeftError	err = {0};

	for (int i = 0; i < NB; i++)
		for (int t = 0; t < NT; t++)
		{
			mask[i * NT + t] = t < len[i];
			ids[i * NT + t] = t < len[i] ? 5 + (i * 31 + t * 17) % 140 : 0;
		}
	assert_int_equal(network_forward(net, &b, false, out, NULL, &err), PEFT_OK);
}

/* Eval-mode logits of the same head with no adapter at all. */
static void
head_only_logits(const Network *net, real *out)
{
	NetworkOptions o = {0};
	Network    *bare;
	PeftError	err = {0};
	const Param *w = &net->params.items[net->head_weight];
	const Param *bias = &net->params.items[net->head_bias];

	o.task = net->opts.task;
	o.num_labels = net->opts.num_labels;
	assert_int_equal(network_create(model, &o, &bare, &err), PEFT_OK);
	assert_int_equal(bare->params.items[bare->head_weight].count, w->count);
	memcpy(param_value(&bare->params, bare->head_weight), param_value(&net->params, net->head_weight),
		   w->count * sizeof(real));
	memcpy(param_value(&bare->params, bare->head_bias), param_value(&net->params, net->head_bias),
		   bias->count * sizeof(real));
	network_params_changed(bare);
	logits(bare, out);
	network_free(bare);
}

/* Config and weights of every method rebuild a network with the same outputs. */
static void
test_round_trip(void **state)
{
	static const char *const methods[] = {
		"lora", "dora", "ia3", "bitfit", "adapter", "lora+bitfit", "dora+bitfit+adapter",
		"ia3+bitfit", "ia3+adapter", "prompt", "lora+prompt", "prefix", "dora+bitfit+prefix"
	};

	for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++)
	{
		Network    *net = random_network(methods[k]);
		Network    *copy;
		NetworkOptions o = {0};
		char	   *config;
		uint8_t    *bytes;
		size_t		len;
		real		a[NB * 3], b[NB * 3];
		char		name[64];
		char		what[96];
		PeftError	err = {0};

		assert_int_equal(adapter_config_json(net, "tiny", &config, &err), PEFT_OK);
		assert_int_equal(adapter_serialize(net, &bytes, &len, &err), PEFT_OK);
		o.task = PEFT_TASK_CLASSIFICATION;
		o.num_labels = 3;
		if (adapter_options_from_config(config, strlen(config), &o, &err) != PEFT_OK)
			fail_msg("%s: %s\n%s", methods[k], err.message, config);
		assert_string_equal(adapter_method_name(&o, name, sizeof(name)), methods[k]);
		assert_int_equal(network_create(model, &o, &copy, &err), PEFT_OK);
		if (adapter_load_weights(copy, bytes, len, &err) != PEFT_OK)
			fail_msg("%s: %s", methods[k], err.message);
		logits(net, a);
		logits(copy, b);
		snprintf(what, sizeof(what), "%s (%d tensors): round trip", methods[k], net->params.count);
		compare_close(what, b, a, NB * 3, 0, 0);
		free(config);
		free(bytes);
		network_free(net);
		network_free(copy);
	}
}

/* Merged LoRA, DoRA and (IA)^3 (with BitFit and bottleneck adapters beside) compute the same. */
static void
test_merge(void **state)
{
	static const char *const methods[] = {
		"lora", "dora", "ia3", "lora+bitfit", "dora+bitfit+adapter", "ia3+bitfit", "lora+prompt",
		"ia3+prefix"
	};

	for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++)
	{
		Network    *net = random_network(methods[k]);
		real		before[NB * 3], after[NB * 3], bare[NB * 3];
		PeftError	err = {0};
		char		what[96];
		Compare		effect;

		logits(net, before);
		/* the adapter must change the outputs, or merged == unmerged proves nothing */
		head_only_logits(net, bare);
		snprintf(what, sizeof(what), "%s: adapter vs head only", methods[k]);
		effect = compare_measure(what, before, bare, NB * 3);
		assert_true(effect.max_abs > 1e-3);
		assert_int_equal(network_merge(net, &err), PEFT_OK);
		logits(net, after);
		snprintf(what, sizeof(what), "%s: merged vs unmerged", methods[k]);
		compare_close(what, after, before, NB * 3, 1e-5, 0);
		network_free(net);
	}
}

/* A merged network refuses to train; a bad method name is an error. */
static void
test_merged_cannot_train_and_bad_methods(void **state)
{
	Network    *net = random_network("lora");
	int32_t		ids[NT] = {2, 3, 4}, mask[NT] = {1, 1, 1}, labels[1] = {1};
	Batch		b = {1, NT, ids, mask, labels, NULL};
	double		loss;
	unsigned	bits;
	PeftError	err = {0};

	assert_int_equal(network_merge(net, &err), PEFT_OK);
	assert_int_equal(network_forward(net, &b, true, NULL, &loss, &err), PEFT_OK);
	assert_int_equal(network_backward(net, &b, 1, &err), PEFT_ERR_INVALID);
	network_free(net);
	assert_int_equal(adapter_parse_method("lora+ia3", &bits, &err), PEFT_ERR_INVALID);
	assert_int_equal(adapter_parse_method("lora+lora", &bits, &err), PEFT_ERR_INVALID);
	assert_int_equal(adapter_parse_method("", &bits, &err), PEFT_ERR_INVALID);
	assert_int_equal(adapter_parse_method("prompt+prefix", &bits, &err), PEFT_ERR_INVALID);
	/* a NUL inside a config is refused, not read as the end of the text */
	{
		const char	raw[] = {'{', '"', 'p', 'e', 'f', 't', '_', 't', 'y', 'p', 'e', '"', ':', '"',
			'B', 'I', 'T', 'F', 'I', 'T', '\0', 'x', '"', '}'};
		NetworkOptions o = {0};

		assert_int_equal(adapter_options_from_config(raw, sizeof(raw), &o, &err), PEFT_ERR_FORMAT);
		assert_non_null(strstr(err.message, "NUL"));
	}
	assert_int_equal(adapter_parse_method("bitfit+dora", &bits, &err), PEFT_OK);
	assert_int_equal(bits, PEFT_METHOD_DORA | PEFT_METHOD_BITFIT);
}

/*
 * Every row of the method table names the tasks and model families it
 * supports; the check reads them: BERT and both tasks pass, another model
 * family is refused by name.
 */
static void
test_method_support(void **state)
{
	int			count;
	const PeftMethodInfo *rows = method_table(&count);
	PeftError	err = {0};

	for (int i = 0; i < count; i++)
	{
		assert_true(rows[i].tasks != 0);
		assert_non_null(rows[i].architectures);
		assert_int_equal(methods_check_support(rows[i].bit, PEFT_TASK_CLASSIFICATION, "bert", &err), PEFT_OK);
		assert_int_equal(methods_check_support(rows[i].bit, PEFT_TASK_REGRESSION, "bert", &err), PEFT_OK);
		assert_int_equal(methods_check_support(rows[i].bit, PEFT_TASK_REGRESSION, "ber", &err),
						 PEFT_ERR_UNSUPPORTED);
		assert_int_equal(methods_check_support(rows[i].bit, PEFT_TASK_CLASSIFICATION, "llama", &err),
						 PEFT_ERR_UNSUPPORTED);
		assert_non_null(strstr(err.message, "llama"));
		assert_non_null(strstr(err.message, rows[i].name));
	}
}

/* Safetensors bytes of net's parameters, plus an extra tensor when extra is set. */
static uint8_t *
weights_bytes(const Network *net, const char *extra, size_t *len)
{
	StWriteTensor t[64];
	uint8_t    *bytes;
	PeftError	err = {0};
	int			n = net->params.count;

	assert_true(n + 1 <= 64);
	for (int i = 0; i < n; i++)
	{
		const Param *p = &net->params.items[i];

		t[i] = (StWriteTensor) {p->name, p->ndim, {p->shape[0], p->shape[1]}, param_value(&net->params, i)};
	}
	if (extra != NULL)
	{
		t[n] = t[0];
		t[n++].name = extra;
	}
	assert_int_equal(st_serialize(t, n, NULL, NULL, 0, &bytes, len, &err), PEFT_OK);
	return bytes;
}

/*
 * Adapter weights load only when they are exactly the adapter's tensors,
 * all finite: a NaN, or a tensor the config does not name, is an error.
 */
static void
test_load_rejects_bad_weights(void **state)
{
	Network    *net = random_network("lora");
	Network    *copy = random_network("lora");
	uint8_t    *bytes;
	size_t		len;
	PeftError	err = {0};

	bytes = weights_bytes(net, NULL, &len);
	assert_int_equal(adapter_load_weights(copy, bytes, len, &err), PEFT_OK);
	free(bytes);

	bytes = weights_bytes(net, "base_model.model.encoder.layer.0.attention.self.key.lora_A.weight", &len);
	assert_int_equal(adapter_load_weights(copy, bytes, len, &err), PEFT_ERR_FORMAT);
	print_message("an extra tensor: %s\n", err.message);
	free(bytes);

	param_value(&net->params, 3)[5] = NAN;
	bytes = weights_bytes(net, NULL, &len);
	assert_int_equal(adapter_load_weights(copy, bytes, len, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "non-finite"));
	print_message("a NaN: %s\n", err.message);
	free(bytes);
	network_free(net);
	network_free(copy);
}

/*
 * Combinations as PEFT's add_weighted_adapter: weights (1, 0) give the
 * first adapter back (cat and linear); cat of (0.5, 0.5) gives half the
 * sum of the two LoRA updates (checked through merged weights).
 */
static void
test_combine(void **state)
{
	Network    *a = random_network("lora");
	Network    *b;
	Network    *src[2];
	Network    *c;
	real		want[NB * 3], got[NB * 3];
	double		w10[2] = {1, 0};
	PeftError	err = {0};
	NetworkOptions o = method_options("lora");

	o.lora.r = 2;				/* cat mixes ranks */
	o.seed = 99;
	assert_int_equal(network_create(model, &o, &b, &err), PEFT_OK);
	for (size_t j = 0; j < b->params.total; j++)
		b->params.values[j] += (real) (0.01 * ((j % 11) - 5));
	src[0] = a;
	src[1] = b;
	logits(a, want);
	assert_int_equal(combine_lora(model, src, 2, w10, true, &c, &err), PEFT_OK);
	assert_int_equal(c->opts.lora.r, 6);
	logits(c, got);
	compare_close("combine cat (1, 0)", got, want, NB * 3, 1e-5, 0);
	network_free(c);
	assert_int_equal(combine_lora(model, src, 2, w10, false, &c, &err), PEFT_ERR_INVALID);
	src[1] = a;
	assert_int_equal(combine_lora(model, src, 2, w10, false, &c, &err), PEFT_OK);
	logits(c, got);
	compare_close("combine linear (1, 0)", got, want, NB * 3, 1e-5, 0);
	network_free(c);
	network_free(a);
	network_free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_merge),
		cmocka_unit_test(test_merged_cannot_train_and_bad_methods),
		cmocka_unit_test(test_method_support),
		cmocka_unit_test(test_load_rejects_bad_weights),
		cmocka_unit_test(test_combine),
	};

	return cmocka_run_group_tests(tests, tiny_setup, tiny_teardown);
}
