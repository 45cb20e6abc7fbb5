/*
 * test_network_varlen.c - the network computes only real tokens, so
 * padding must not change anything: on the tiny model, hidden states,
 * embeddings, logits and gradients of a padded batch equal those of each
 * sequence run alone with no padding (float rounding aside), padded rows
 * of the hidden states are zeros, and more padding columns change nothing.
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

#define NSEQ 3
#define T_PAD 11

static const int lengths[NSEQ] = {7, 1, 4};


/* Token t of sequence i (any ids the tiny vocabulary has). */
static int32_t
token(int i, int t)
{
	return 5 + (i * 31 + t * 17) % 120;
}

/* ids and mask of all sequences right-padded to T columns. */
static void
fill_batch(int32_t *ids, int32_t *mask, int T)
{
	for (int i = 0; i < NSEQ; i++)
		for (int t = 0; t < T; t++)
		{
			ids[i * T + t] = t < lengths[i] ? token(i, t) : 0;
			mask[i * T + t] = t < lengths[i];
		}
}

/* Hidden states and embeddings of the padded batch equal each sequence's alone. */
static void
test_padding_changes_nothing(void **state)
{
	int			C = model->cfg.hidden_size;
	int32_t		ids[NSEQ * T_PAD];
	int32_t		mask[NSEQ * T_PAD];
	real	   *hidden = malloc(sizeof(real) * NSEQ * T_PAD * C);
	real	   *alone = malloc(sizeof(real) * T_PAD * C);
	real	   *emb = malloc(sizeof(real) * NSEQ * C);
	real	   *emb_alone = malloc(sizeof(real) * C);
	NetworkOptions opts = {0};
	Network    *net;
	PeftError	err = {0};
	Batch		b = {NSEQ, T_PAD, ids, mask, NULL, NULL};
	Compare		hid;
	Compare		em;

	(void) state;
	assert_int_equal(network_create(model, &opts, &net, &err), PEFT_OK);
	fill_batch(ids, mask, T_PAD);
	assert_int_equal(network_hidden_states(net, &b, hidden, &err), PEFT_OK);
	assert_int_equal(network_embed(net, &b, emb, &err), PEFT_OK);
	/* indices are into the padded batch's hidden [B, T, C] and embeddings [B, C] */
	compare_begin(&hid, "padded vs alone: hidden states", 1e-5, 0);
	compare_begin(&em, "padded vs alone: embeddings", 1e-6, 0);
	for (int i = 0; i < NSEQ; i++)
	{
		Batch		one = {1, lengths[i], ids + i * T_PAD, mask + i * T_PAD, NULL, NULL};

		assert_int_equal(network_hidden_states(net, &one, alone, &err), PEFT_OK);
		for (size_t j = 0; j < (size_t) lengths[i] * C; j++)
			compare_add(&hid, (size_t) i * T_PAD * C + j, hidden[(size_t) i * T_PAD * C + j], alone[j]);
		for (size_t j = (size_t) lengths[i] * C; j < (size_t) T_PAD * C; j++)
			assert_true(hidden[(size_t) i * T_PAD * C + j] == 0);
		assert_int_equal(network_embed(net, &one, emb_alone, &err), PEFT_OK);
		for (int c = 0; c < C; c++)
			compare_add(&em, (size_t) i * C + c, emb[(size_t) i * C + c], emb_alone[c]);
	}
	compare_end(&hid);
	compare_end(&em);

	network_free(net);
	free(hidden);
	free(alone);
	free(emb);
	free(emb_alone);
}

/* Loss, logits and every gradient of a training step: more padding columns change nothing. */
static void
test_training_step_ignores_padding(void **state)
{
	int32_t		ids[NSEQ * (T_PAD + 6)];
	int32_t		mask[NSEQ * (T_PAD + 6)];
	int32_t		labels[NSEQ] = {0, 2, 1};
	real		logits[2][NSEQ * 3];
	real	   *grads[2];
	double		loss[2];
	NetworkOptions opts = {0};
	Network    *net;
	PeftError	err = {0};

	(void) state;
	opts.lora.r = 4;
	opts.lora.alpha = 8;
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		opts.lora.targets[w] = true;
	opts.task = PEFT_TASK_CLASSIFICATION;
	opts.num_labels = 3;
	opts.seed = 3;
	assert_int_equal(network_create(model, &opts, &net, &err), PEFT_OK);
	for (int i = 0; i < net->params.count; i++)
		if (strstr(net->params.items[i].name, "lora_B"))
			for (size_t j = 0; j < net->params.items[i].count; j++)
				param_value(&net->params, i)[j] = 0.01f * (real) ((j % 7) - 3);

	for (int run = 0; run < 2; run++)
	{
		int			T = run == 0 ? T_PAD : T_PAD + 6;
		Batch		b = {NSEQ, T, ids, mask, labels, NULL};

		fill_batch(ids, mask, T);
		memset(net->params.grads, 0, net->params.total * sizeof(real));
		assert_int_equal(network_forward(net, &b, true, logits[run], &loss[run], &err), PEFT_OK);
		assert_int_equal(network_backward(net, &b, 1.0f, &err), PEFT_OK);
		grads[run] = malloc(net->params.total * sizeof(real));
		memcpy(grads[run], net->params.grads, net->params.total * sizeof(real));
	}
	printf("T %d vs %d: loss %.9g vs %.9g\n", T_PAD, T_PAD + 6, loss[0], loss[1]);
	compare_scalar("more padding: loss", loss[0], loss[1], 1e-6, 0);
	compare_close("more padding: logits", logits[0], logits[1], NSEQ * 3, 1e-6, 0);
	compare_close("more padding: gradients", grads[0], grads[1], net->params.total, 1e-6, 0);

	free(grads[0]);
	free(grads[1]);
	network_free(net);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_padding_changes_nothing),
		cmocka_unit_test(test_training_step_ignores_padding),
	};

	return cmocka_run_group_tests_name("network on packed rows: padding changes nothing",
									   tests, tiny_setup, tiny_teardown);
}
