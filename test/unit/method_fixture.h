/*
 * method_fixture.h - adapter networks of any method on the tiny model for
 * the tests that compare methods (test_methods, test_mixed_batch,
 * test_gpu_mixed): the options of a method by name, and a network of them
 * with every parameter moved off its initial value (so each method
 * changes the outputs).  Include after cmocka.h and tiny_model_fixture.h.
 */
#ifndef PEFT_TEST_METHOD_FIXTURE_H
#define PEFT_TEST_METHOD_FIXTURE_H

#include "method_table.h"
#include "network.h"

/* Options of one method by name (as peft_train's method argument) for task with K outputs. */
static inline NetworkOptions
method_options_for(const char *method, PeftTask task, int K)
{
	NetworkOptions o = {0};
	unsigned	bits = 0;
	PeftError	err = {0};

	assert_int_equal(adapter_parse_method(method, &bits, &err), PEFT_OK);
	o.lora.r = 4;
	o.lora.alpha = 8;
	if (bits & (PEFT_METHOD_LORA | PEFT_METHOD_DORA))
	{
		/* "output.dense" names both dense outputs (suffix matching, as PEFT) */
		o.lora.targets[BERT_QUERY] = o.lora.targets[BERT_VALUE] = true;
		o.lora.targets[BERT_ATTN_OUT] = o.lora.targets[BERT_OUTPUT] = true;
	}
	o.dora = (bits & PEFT_METHOD_DORA) != 0;
	if (bits & PEFT_METHOD_IA3)
	{
		o.ia3.targets[BERT_KEY] = o.ia3.targets[BERT_VALUE] = true;
		o.ia3.targets[BERT_OUTPUT] = o.ia3.feedforward[BERT_OUTPUT] = true;
		o.ia3.targets[BERT_ATTN_OUT] = o.ia3.feedforward[BERT_ATTN_OUT] = true;
		o.ia3.targets[BERT_INTERMEDIATE] = true;
	}
	o.bitfit = (bits & PEFT_METHOD_BITFIT) != 0;
	o.prompt_tokens = (bits & PEFT_METHOD_PROMPT) ? 3 : 0;
	o.prefix_tokens = (bits & PEFT_METHOD_PREFIX) ? 2 : 0;
	if (bits & PEFT_METHOD_ADAPTER)
	{
		o.bottleneck.reduction = 8;
		o.bottleneck.after_attention = o.bottleneck.after_ffn = true;
	}
	o.task = task;
	o.num_labels = K;
	o.seed = 5;
	return o;
}

/* A network of options o with every parameter moved off its initial value (by seed). */
static inline Network *
perturbed_network(const NetworkOptions *o, uint64_t seed)
{
	Network    *net;
	PeftError	err = {0};
	PeftRng		rng;

	assert_int_equal(network_create(model, o, &net, &err), PEFT_OK);
	peft_rng_seed(&rng, seed);
	for (size_t j = 0; j < net->params.total; j++)
		net->params.values[j] = net->params.values[j] * (real) (1 + 0.3 * (2 * peft_rng_uniform(&rng) - 1)) +
			(real) (0.05 * (2 * peft_rng_uniform(&rng) - 1));
	network_params_changed(net);
	return net;
}

#endif
