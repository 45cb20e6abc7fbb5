/*
 * test_train_tiny.c - end-to-end training on the tiny model: a synthetic
 * 3-class task whose label depends on the words in the text (a positive
 * word, a negative word, or neither) must reach over 95% accuracy on
 * held-out rows; training is deterministic for a seed; the saved adapter
 * reloads to the same predictions.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "adapter_io.h"
#include "bert.h"
#include "compare.h"
#include "dataset.h"
#include "network.h"
#include "trainer.h"
#include "test_util.h"
#include "tiny_model_fixture.h"

static const char *const positive[] = {"good", "great", "excellent", "wonderful", "amazing", "superb"};
static const char *const negative[] = {"bad", "terrible", "awful", "horrible", "poor", "boring"};
static const char *const filler[] = {
	"the", "movie", "was", "and", "it", "service", "food", "place", "we", "went",
	"today", "with", "our", "team", "very", "really", "hotel", "room", "phone", "order",
	"delivery", "staff", "price", "time", "story", "music", "game", "show", "one", "new"
};


/*
 * Fill ds with n synthetic rows (label 0 negative, 1 neutral, 2 positive),
 * in generation order or reversed.
 */
static void
make_task(Dataset *ds, int n, uint64_t seed, bool reversed)
{
	PeftRng		rng;
	PeftError	err = {0};
	char	  (*texts)[512] = calloc(n, 512);
	int		   *labels = calloc(n, sizeof(int));

	peft_rng_seed(&rng, seed);
	for (int i = 0; i < n; i++)
	{
		int			words = 5 + (int) peft_rng_below(&rng, 8);
		int			at = (int) peft_rng_below(&rng, words);

		labels[i] = (int) peft_rng_below(&rng, 3);
		for (int w = 0; w < words; w++)
		{
			const char *word = filler[peft_rng_below(&rng, 30)];

			if (w == at && labels[i] == 0)
				word = negative[peft_rng_below(&rng, 6)];
			else if (w == at && labels[i] == 2)
				word = positive[peft_rng_below(&rng, 6)];
			strcat(texts[i], w ? " " : "");
			strcat(texts[i], word);
		}
	}
	for (int k = 0; k < n; k++)
	{
		int			i = reversed ? n - 1 - k : k;

		assert_int_equal(dataset_add(ds, model->tokenizer, texts[i], strlen(texts[i]), 32,
									 labels[i], 0, &err), PEFT_OK);
	}
	free(texts);
	free(labels);
}

/* Train an adapter on the task; returns the network and held-out metrics. */
static Network *
train_task(uint64_t seed, bool reversed, Dataset *ds, uint32_t **valid, size_t *nvalid,
		   PeftMetrics *m)
{
	NetworkOptions nopts = {0};
	TrainOptions topts;
	Network    *net;
	Trainer    *tr;
	uint32_t   *train;
	size_t		ntrain;
	PeftError	err = {0};
	PeftTrainProgress	st = {0};

	make_task(ds, 1000, 1234, reversed);
	assert_int_equal(dataset_split(ds, 0.2, seed, &train, &ntrain, valid, nvalid, &err), PEFT_OK);
	assert_int_equal(*nvalid, 200);
	nopts.lora.r = 8;
	nopts.lora.alpha = 16;
	nopts.lora.dropout = 0.05;
	nopts.lora.targets[BERT_QUERY] = nopts.lora.targets[BERT_VALUE] = true;
	nopts.task = PEFT_TASK_CLASSIFICATION;
	nopts.num_labels = 3;
	nopts.hidden_dropout = 0.1;
	nopts.attention_dropout = 0.1;
	nopts.seed = seed;
	assert_int_equal(network_create(model, &nopts, &net, &err), PEFT_OK);
	train_options_default(&topts);
	topts.epochs = 10;
	topts.batch_size = 16;
	topts.learning_rate = 1e-2;
	topts.seed = seed;
	assert_int_equal(trainer_create(net, ds, train, ntrain, &topts, &tr, &err), PEFT_OK);
	while (!st.done)
		assert_int_equal(trainer_step(tr, &st, &err), PEFT_OK);
	assert_int_equal(evaluate(net, ds, *valid, *nvalid, 32, m, &err), PEFT_OK);
	trainer_free(tr);
	free(train);
	return net;
}

/* Held-out accuracy over 95% on a learnable task. */
static void
test_learns_task(void **state)
{
	Dataset		ds = {0};
	uint32_t   *valid;
	size_t		nvalid;
	PeftMetrics m;
	Network    *net = train_task(42, false, &ds, &valid, &nvalid, &m);

	printf("tiny model, synthetic 3-class task: held-out accuracy %.3f, macro-F1 %.3f, loss %.4f (%zu rows)\n",
		   m.accuracy, m.macro_f1, m.loss, m.rows);
	assert_true(m.accuracy > 0.95);
	network_free(net);
	dataset_free(&ds);
	free(valid);
}

/* Whether rows a of da and b of db hold the same tokens and label. */
static bool
same_row(const Dataset *da, uint32_t a, const Dataset *db, uint32_t b)
{
	const Example *x = &da->rows[a], *y = &db->rows[b];

	return x->length == y->length && x->label == y->label &&
		memcmp(da->tokens + x->offset, db->tokens + y->offset, sizeof(int32_t) * x->length) == 0;
}

/*
 * Rows added after held_out is set (validation_data) are the validation
 * rows, whatever the fraction; each side comes in the order of its
 * contents, so stored order does not matter.
 */
static void
test_held_out_rows(void **state)
{
	Dataset		ds[2] = {{0}, {0}};
	uint32_t   *train[2], *valid[2];
	size_t		ntrain[2], nvalid[2];
	PeftError	err = {0};

	for (int d = 0; d < 2; d++)
	{
		make_task(&ds[d], 80, 1234, d == 1);
		ds[d].held_out = true;
		ds[d].first_held_out = ds[d].count;
		make_task(&ds[d], 20, 99, d == 0);
		assert_int_equal(dataset_split(&ds[d], 0.5, 42, &train[d], &ntrain[d], &valid[d], &nvalid[d], &err),
						 PEFT_OK);
		assert_int_equal(ntrain[d], 80);
		assert_int_equal(nvalid[d], 20);
		for (size_t i = 0; i < ntrain[d]; i++)
			assert_true(train[d][i] < 80);
		for (size_t i = 0; i < nvalid[d]; i++)
			assert_true(valid[d][i] >= 80);
	}
	for (size_t i = 0; i < 80; i++)
		assert_true(same_row(&ds[0], train[0][i], &ds[1], train[1][i]));
	for (size_t i = 0; i < 20; i++)
		assert_true(same_row(&ds[0], valid[0][i], &ds[1], valid[1][i]));
	for (int d = 0; d < 2; d++)
	{
		free(train[d]);
		free(valid[d]);
		dataset_free(&ds[d]);
	}
}

/*
 * The same seed and rows give bit-identical weights, even with the rows in
 * reverse order (a table's physical order is not stable); another seed does not.
 */
static void
test_deterministic(void **state)
{
	Dataset		ds1 = {0}, ds2 = {0}, ds3 = {0};
	uint32_t   *v1, *v2, *v3;
	size_t		n1, n2, n3;
	PeftMetrics m1, m2, m3;
	Network    *a = train_task(7, false, &ds1, &v1, &n1, &m1);
	Network    *b = train_task(7, true, &ds2, &v2, &n2, &m2);
	Network    *c = train_task(8, false, &ds3, &v3, &n3, &m3);

	assert_int_equal(a->params.total, b->params.total);
	assert_memory_equal(a->params.values, b->params.values, a->params.total * sizeof(real));
	assert_memory_not_equal(a->params.values, c->params.values, a->params.total * sizeof(real));
	network_free(a);
	network_free(b);
	network_free(c);
	dataset_free(&ds1);
	dataset_free(&ds2);
	dataset_free(&ds3);
	free(v1);
	free(v2);
	free(v3);
}

/*
 * One optimizer step over two accumulated micro-batches of 4 rows
 * (gradient_accumulation_steps 2) equals one step over a batch of the same
 * 8 rows: loss, gradient norm and gradients (rows in order, no dropout, no
 * clipping).  Adam's first update is about lr times the sign of each
 * gradient, whatever its scale, so the weights would not show a wrong
 * scale, and an element at float-noise level could flip: the gradients
 * are what is compared.
 */
static void
test_gradient_accumulation(void **state)
{
	Dataset		ds = {0};
	uint32_t	rows[8] = {0, 1, 2, 3, 4, 5, 6, 7};
	PeftTrainProgress	st[2];
	real	   *grads[2];
	size_t		total = 0;

	make_task(&ds, 8, 77, false);
	for (int run = 0; run < 2; run++)
	{
		NetworkOptions nopts = {0};
		TrainOptions topts;
		Network    *net;
		Trainer    *tr;
		PeftError	err = {0};

		nopts.lora.r = 4;
		nopts.lora.alpha = 8;
		nopts.lora.targets[BERT_QUERY] = nopts.lora.targets[BERT_VALUE] = true;
		nopts.task = PEFT_TASK_CLASSIFICATION;
		nopts.num_labels = 3;
		nopts.seed = 5;
		assert_int_equal(network_create(model, &nopts, &net, &err), PEFT_OK);
		train_options_default(&topts);
		topts.epochs = 1;
		topts.batch_size = run == 0 ? 8 : 4;
		topts.grad_accum = run == 0 ? 1 : 2;
		topts.shuffle = false;
		topts.max_grad_norm = 0;
		topts.warmup_steps = 0;
		topts.learning_rate = 1e-2;
		assert_int_equal(trainer_create(net, &ds, rows, 8, &topts, &tr, &err), PEFT_OK);
		assert_int_equal(trainer_total_steps(tr), 1);
		assert_int_equal(trainer_step(tr, &st[run], &err), PEFT_OK);
		assert_true(st[run].done);
		assert_int_equal(st[run].rows, 8);
		total = net->params.total;
		grads[run] = malloc(total * sizeof(real));
		memcpy(grads[run], net->params.grads, total * sizeof(real));
		trainer_free(tr);
		network_free(net);
	}
	compare_scalar("accumulated vs one batch: loss", st[1].loss, st[0].loss, 0, 1e-6);
	compare_scalar("accumulated vs one batch: grad norm", st[1].grad_norm, st[0].grad_norm, 0, 1e-5);
	compare_close_norm("accumulated vs one batch: gradients", grads[1], grads[0], total, 1e-5, 0);
	free(grads[0]);
	free(grads[1]);
	dataset_free(&ds);
}

/* Serialised weights and config reload into a network with equal outputs. */
static void
test_save_and_reload(void **state)
{
	Dataset		ds = {0};
	uint32_t   *valid;
	size_t		nvalid;
	PeftMetrics m, m2;
	Network    *net = train_task(3, false, &ds, &valid, &nvalid, &m);
	Network    *copy;
	NetworkOptions opts = {0};
	uint8_t    *bytes;
	size_t		len;
	char	   *config;
	PeftError	err = {0};

	assert_int_equal(adapter_serialize(net, &bytes, &len, &err), PEFT_OK);
	assert_int_equal(adapter_config_json(net, "tiny", &config, &err), PEFT_OK);
	assert_int_equal(adapter_options_from_config(config, strlen(config), &opts, &err), PEFT_OK);
	assert_int_equal(opts.lora.r, 8);
	assert_true(opts.lora.targets[BERT_QUERY] && opts.lora.targets[BERT_VALUE] &&
				!opts.lora.targets[BERT_KEY]);
	opts.task = PEFT_TASK_CLASSIFICATION;
	opts.num_labels = 3;
	assert_int_equal(network_create(model, &opts, &copy, &err), PEFT_OK);
	assert_int_equal(adapter_load_weights(copy, bytes, len, &err), PEFT_OK);
	assert_memory_equal(copy->params.values, net->params.values, net->params.total * sizeof(real));
	assert_int_equal(evaluate(copy, &ds, valid, nvalid, 32, &m2, &err), PEFT_OK);
	assert_true(m2.accuracy == m.accuracy && m2.loss == m.loss);

	/* the bytes of a different shape do not load */
	opts.lora.r = 4;
	network_free(copy);
	assert_int_equal(network_create(model, &opts, &copy, &err), PEFT_OK);
	assert_int_equal(adapter_load_weights(copy, bytes, len, &err), PEFT_ERR_FORMAT);
	printf("r=4 network rejects r=8 weights: %s\n", err.message);

	network_free(copy);
	network_free(net);
	dataset_free(&ds);
	free(valid);
	free(bytes);
	free(config);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_learns_task),
		cmocka_unit_test(test_deterministic),
		cmocka_unit_test(test_held_out_rows),
		cmocka_unit_test(test_gradient_accumulation),
		cmocka_unit_test(test_save_and_reload),
	};

	return cmocka_run_group_tests_name("training on the tiny model", tests, tiny_setup, tiny_teardown);
}
