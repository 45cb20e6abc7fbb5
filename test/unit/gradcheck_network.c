/*
 * gradcheck_network.c - the whole network's analytic gradients (LoRA A and
 * B on every linear, the head) against central finite differences, in
 * double precision on the tiny model, with every kind of dropout on (the
 * masks are replayed identically for each evaluation).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bert.h"
#include "compare.h"
#include "network.h"
#include "test_util.h"
#include "tiny_model_fixture.h"


/* Mean loss of one forward with the dropout masks of rng state saved. */
static double
loss_at(Network *net, const Batch *b, const PeftRng *saved)
{
	double		loss = 0;
	PeftError	err = {0};

	net->rng = *saved;
	assert_int_equal(network_forward(net, b, true, NULL, &loss, &err), PEFT_OK);
	return loss;
}

/*
 * Check every parameter tensor of a network built with opts on a padded
 * batch; irregular masks a hole in row 0, left-pads row 1 and empties row 2
 * (the network computes only the real tokens, whatever the pattern).
 */
static void
check_network(NetworkOptions *opts, const char *what, bool irregular)
{
	int32_t		ids[3 * 7], mask[3 * 7];
	int32_t		labels[3] = {0, 2 % opts->num_labels, 1};
	real		targets[3] = {0.5, -1.25, 2.0};
	int			lengths[3] = {7, 4, 6};
	Batch		b = {3, 7, ids, mask, labels, targets};
	Network    *net;
	PeftError	err = {0};
	PeftRng		saved;
	PeftRng		fill;

	for (int i = 0; i < 3; i++)
		for (int t = 0; t < 7; t++)
		{
			ids[i * 7 + t] = t < lengths[i] ? 7 + (i * 13 + t * 7) % 150 : 0;
			mask[i * 7 + t] = t < lengths[i];
			if (irregular)
				mask[i * 7 + t] = (i == 0 && t != 2) || (i == 1 && t >= 3);
		}
	assert_int_equal(network_create(model, opts, &net, &err), PEFT_OK);

	/*
	 * Parameters that start at zero or one (LoRA B, the bottleneck's up
	 * projection, (IA)^3 vectors) would hide gradients that depend on them:
	 * move every parameter off its initial value.
	 */
	peft_rng_seed(&fill, 99);
	for (int i = 0; i < net->params.count; i++)
	{
		const char *name = net->params.items[i].name;
		bool		zero_init = strstr(name, "lora_B") || strstr(name, "up.");

		for (size_t j = 0; j < net->params.items[i].count; j++)
			if (zero_init)
				param_value(&net->params, i)[j] = 0.2 * (2 * peft_rng_uniform(&fill) - 1);
			else
				param_value(&net->params, i)[j] *= 1 + 0.2 * (2 * peft_rng_uniform(&fill) - 1);
	}

	saved = net->rng;
	memset(net->params.grads, 0, net->params.total * sizeof(real));
	loss_at(net, &b, &saved);
	/* PEFT detaches DoRA's weight norm: finite differences must hold it fixed too */
	net->freeze_dora_norm = true;
	assert_int_equal(network_backward(net, &b, 1.0, &err), PEFT_OK);

	for (int i = 0; i < net->params.count; i++)
	{
		const Param *p = &net->params.items[i];
		real	   *val = param_value(&net->params, i);
		real	   *grad = param_grad(&net->params, i);
		size_t		stride = p->count > 40 ? p->count / 40 : 1;
		char		name[PARAM_NAME_LEN + 96];
		Compare		c;

		/*
		 * Relative to the tensor's largest gradient; a tensor whose gradient
		 * is zero in exact arithmetic (the key bias: softmax ignores a shift
		 * of every score of a row) is held to 1e-9 absolute instead (the
		 * floor 1e-5 times 1e-4): ten times the finite differences' own
		 * noise (1e-16 / h).
		 */
		snprintf(name, sizeof(name), "%s: %s", what, p->name);
		compare_begin_norm(&c, name, 1e-4, 1e-5);
		for (size_t j = 0; j < p->count; j += stride)
		{
			double		keep = val[j];
			double		h = 1e-6;
			double		up, down;

			val[j] = keep + h;
			up = loss_at(net, &b, &saved);
			val[j] = keep - h;
			down = loss_at(net, &b, &saved);
			val[j] = keep;
			compare_add(&c, j, grad[j], (up - down) / (2 * h));
		}
		compare_end(&c);
	}
	network_free(net);
}

/* Base options: LoRA r=4 on all six linears, every dropout on. */
static NetworkOptions
all_targets(void)
{
	NetworkOptions o = {0};

	o.lora.r = 4;
	o.lora.alpha = 8;
	o.lora.dropout = 0.1;
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		o.lora.targets[w] = true;
	o.hidden_dropout = 0.1;
	o.attention_dropout = 0.1;
	o.seed = 7;
	return o;
}

/* Classification head, cross-entropy, mean pooling. */
static void
test_classification(void **state)
{
	NetworkOptions o = all_targets();

	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, LoRA on all linears, dropout", false);
}

/* Regression head, MSE, rsLoRA scaling. */
static void
test_regression_rslora(void **state)
{
	NetworkOptions o = all_targets();

	o.task = PEFT_TASK_REGRESSION;
	o.num_labels = 1;
	o.lora.rslora = true;
	check_network(&o, "regression, rsLoRA", false);
}

/* LoRA on query and value only (PEFT's default for BERT), no dropout. */
static void
test_no_dropout_query_value(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.lora.targets[BERT_QUERY] = o.lora.targets[BERT_VALUE] = true;
	o.lora.dropout = 0;
	o.hidden_dropout = 0;
	o.attention_dropout = 0;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 2;
	check_network(&o, "classification, LoRA on query and value, no dropout", false);
}

/* A hole, left padding and an empty row; every dropout on. */
static void
test_irregular_mask(void **state)
{
	NetworkOptions o = all_targets();

	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, irregular mask with an empty row", true);
}

/* DoRA on all linears with LoRA dropout (the (g - 1) x_d W^T term is live). */
static void
test_dora(void **state)
{
	NetworkOptions o = all_targets();

	o.dora = true;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, DoRA on all linears, dropout", false);
}

/* DoRA without LoRA dropout, on query and value, regression. */
static void
test_dora_no_dropout(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.lora.targets[BERT_QUERY] = o.lora.targets[BERT_VALUE] = true;
	o.lora.dropout = 0;
	o.dora = true;
	o.task = PEFT_TASK_REGRESSION;
	o.num_labels = 1;
	check_network(&o, "regression, DoRA on query and value, no LoRA dropout", false);
}

/* (IA)^3 as PEFT's BERT default: key, value and (feed-forward) output.dense; plus the other two dense layers. */
static void
test_ia3(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.ia3.targets[BERT_KEY] = o.ia3.targets[BERT_VALUE] = true;
	o.ia3.targets[BERT_OUTPUT] = o.ia3.feedforward[BERT_OUTPUT] = true;
	o.ia3.targets[BERT_INTERMEDIATE] = true;
	o.ia3.targets[BERT_ATTN_OUT] = o.ia3.feedforward[BERT_ATTN_OUT] = true;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, (IA)^3 on key, value and every dense", false);
}

/* BitFit: every bias, the LayerNorm biases and the embeddings' included. */
static void
test_bitfit(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.bitfit = true;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, BitFit", true);
}

/* Houlsby bottleneck adapters (after attention and feed-forward). */
static void
test_bottleneck(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.bottleneck.reduction = 4;
	o.bottleneck.after_attention = o.bottleneck.after_ffn = true;
	o.task = PEFT_TASK_REGRESSION;
	o.num_labels = 1;
	check_network(&o, "regression, Houlsby bottleneck adapters", false);
}

/* The hybrid: LoRA (DoRA) plus BitFit plus a Pfeiffer adapter, trained together. */
static void
test_hybrid(void **state)
{
	NetworkOptions o = all_targets();

	o.dora = true;
	o.bitfit = true;
	o.bottleneck.reduction = 8;
	o.bottleneck.after_ffn = true;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, DoRA + BitFit + Pfeiffer adapter", false);
}

/* Prompt tuning (virtual tokens before every input), every dropout on, irregular masks. */
static void
test_prompt(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.prompt_tokens = 3;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, prompt tuning (3 virtual tokens)", true);
}

/* Prompt tuning with LoRA and BitFit together, regression. */
static void
test_prompt_hybrid(void **state)
{
	NetworkOptions o = all_targets();

	o.prompt_tokens = 2;
	o.bitfit = true;
	o.task = PEFT_TASK_REGRESSION;
	o.num_labels = 1;
	check_network(&o, "regression, prompt tuning + LoRA + BitFit", false);
}

/* Prefix tuning (key/value prefixes in every layer), every dropout on, irregular masks. */
static void
test_prefix(void **state)
{
	NetworkOptions o = all_targets();

	memset(o.lora.targets, 0, sizeof(o.lora.targets));
	o.prefix_tokens = 3;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	check_network(&o, "classification, prefix tuning (3 prefixes)", true);
}

/* Prefix tuning with LoRA on every linear, regression. */
static void
test_prefix_lora(void **state)
{
	NetworkOptions o = all_targets();

	o.prefix_tokens = 2;
	o.task = PEFT_TASK_REGRESSION;
	o.num_labels = 1;
	check_network(&o, "regression, prefix tuning + LoRA", false);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_prefix, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_prefix_lora, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_prompt, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_prompt_hybrid, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_dora, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_dora_no_dropout, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_ia3, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_bitfit, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_bottleneck, NULL, NULL),
		cmocka_unit_test_setup_teardown(test_hybrid, NULL, NULL),
		cmocka_unit_test(test_classification),
		cmocka_unit_test(test_regression_rslora),
		cmocka_unit_test(test_no_dropout_query_value),
		cmocka_unit_test(test_irregular_mask),
	};

	return cmocka_run_group_tests_name("gradient check: whole network (double)", tests, tiny_setup, tiny_teardown);
}
