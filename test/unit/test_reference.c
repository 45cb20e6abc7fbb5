/*
 * test_reference.c - the engine against Hugging Face on the real
 * all-MiniLM-L6-v2: last hidden states and sentence embeddings of 32
 * sentences (transformers / sentence-transformers), and 20 LoRA training
 * steps (PEFT): losses, step-1 gradients and final weights.  Fixtures come
 * from test/fixtures/ref_model.py.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bert.h"
#include "network.h"
#include "ops.h"
#include "trainer.h"
#include "test_util.h"

static BertModel *model;

/* Load the real model once, or skip every test when it is absent. */
static int
setup(void **state)
{
	const char *dir = real_model_dir();
	PeftError	err = {0};

	if (dir == NULL)
		return 0;
	if (bert_load(dir, &model, &err) != PEFT_OK)
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

/* Skip when the real model is not installed (scripts/fetch_model). */
#define REQUIRE_MODEL() \
	do { if (model == NULL) { fprintf(stderr, "real model absent: run scripts/fetch_model\n"); skip(); } } while (0)

/* A bare network (no adapter, no head) over the model. */
static Network *
bare_network(void)
{
	NetworkOptions opts = {0};
	Network    *net;
	PeftError	err = {0};

	opts.task = TASK_CLASSIFICATION;
	assert_int_equal(network_create(model, &opts, &net, &err), PEFT_OK);
	return net;
}

/* Last hidden states of every real token within 1e-4 of transformers. */
static void
test_hidden_states(void **state)
{
	StFile	   *fx;
	PeftError	err = {0};
	size_t		n = 0;
	int32_t    *ids, *mask, *lengths, *offsets;
	real	   *expected, *hidden;
	Network    *net;
	Batch		b = {0};
	double		maxdiff = 0;
	int			C;

	REQUIRE_MODEL();
	C = model->cfg.hidden_size;
	assert_int_equal(st_open_file(source_path("test/fixtures/reference/forward.safetensors"), &fx, &err), PEFT_OK);
	ids = tensor_int32(fx, "input_ids", &n);
	mask = tensor_int32(fx, "attention_mask", NULL);
	lengths = tensor_int32(fx, "lengths", NULL);
	offsets = tensor_int32(fx, "offsets", NULL);
	expected = tensor_real(fx, "last_hidden_state_packed", NULL);
	assert_non_null(ids);
	assert_non_null(expected);
	b.B = 32;
	b.T = (int) (n / 32);
	b.ids = ids;
	b.mask = mask;
	hidden = malloc(sizeof(real) * n * C);
	net = bare_network();
	assert_int_equal(network_hidden_states(net, &b, hidden, &err), PEFT_OK);
	for (int i = 0; i < 32; i++)
		for (int t = 0; t < lengths[i]; t++)
			for (int c = 0; c < C; c++)
			{
				double		d = fabs(hidden[((size_t) i * b.T + t) * C + c] -
									 expected[((size_t) offsets[i] + t) * C + c]);

				if (d > maxdiff)
					maxdiff = d;
			}
	printf("last hidden state: max |engine - transformers| = %.3g over %d tokens\n",
		   maxdiff, offsets[32]);
	assert_true(maxdiff < 1e-4);
	network_free(net);
	free(ids); free(mask); free(lengths); free(offsets); free(expected); free(hidden);
	st_close(fx);
}

/* Sentence embeddings within 1e-4 of sentence-transformers. */
static void
test_embeddings(void **state)
{
	StFile	   *fx;
	PeftError	err = {0};
	size_t		n = 0;
	int32_t    *ids, *mask;
	real	   *expected, *emb;
	Network    *net;
	Batch		b = {0};
	double		maxdiff = 0;
	int			C;

	REQUIRE_MODEL();
	C = model->cfg.hidden_size;
	assert_true(model->cfg.normalize);
	assert_int_equal(model->cfg.pooling, POOLING_MEAN);
	assert_int_equal(st_open_file(source_path("test/fixtures/reference/forward.safetensors"), &fx, &err), PEFT_OK);
	ids = tensor_int32(fx, "input_ids", &n);
	mask = tensor_int32(fx, "attention_mask", NULL);
	expected = tensor_real(fx, "embeddings_st", NULL);
	b.B = 32;
	b.T = (int) (n / 32);
	b.ids = ids;
	b.mask = mask;
	emb = malloc(sizeof(real) * 32 * C);
	net = bare_network();
	assert_int_equal(network_embed(net, &b, emb, &err), PEFT_OK);
	for (int i = 0; i < 32 * C; i++)
		maxdiff = fmax(maxdiff, fabs(emb[i] - expected[i]));
	printf("sentence embeddings: max |engine - sentence-transformers| = %.3g\n", maxdiff);
	assert_true(maxdiff < 1e-4);
	network_free(net);
	free(ids); free(mask); free(expected); free(emb);
	st_close(fx);
}

/* Copy fixture tensor prefix+name into parameter name of net. */
static void
load_param(Network *net, const StFile *fx, const char *prefix, const char *fixture_name,
		   const char *param_name)
{
	char		key[256];
	int			idx = paramset_find(&net->params, param_name);
	const StTensor *t;

	snprintf(key, sizeof(key), "%s%s", prefix, fixture_name);
	t = st_find(fx, key);
	assert_true(idx >= 0);
	assert_non_null(t);
	assert_int_equal(t->nelem, net->params.items[idx].count);
	assert_int_equal(st_to_real(t, param_value(&net->params, idx), t->nelem, NULL), PEFT_OK);
}

/* Fixture name of a parameter (the head is "classifier.*" there). */
static const char *
fixture_name(const char *param)
{
	const char *head = "base_model.model.classifier.";

	return strncmp(param, head, strlen(head)) == 0 ? param + strlen("base_model.model.") : param;
}

/* Largest |a - b| over the largest |b| of a tensor. */
static double
relative_error(const real *a, const real *b, size_t n)
{
	double		num = 0, den = 1e-12;

	for (size_t i = 0; i < n; i++)
	{
		num = fmax(num, fabs(a[i] - b[i]));
		den = fmax(den, fabs(b[i]));
	}
	return num / den;
}

/* 20 LoRA steps: losses within 1e-3 relative of PEFT, gradients and weights close. */
static void
test_lora_training_steps(void **state)
{
	StFile	   *fx, *gx;
	cJSON	   *json;
	const cJSON *losses;
	PeftError	err = {0};
	NetworkOptions opts = {0};
	TrainOptions topt;
	Network    *net;
	double		worst = 0;

	REQUIRE_MODEL();
	assert_int_equal(st_open_file(source_path("test/fixtures/reference/lora_train.safetensors"), &fx, &err), PEFT_OK);
	assert_int_equal(st_open_file(source_path("test/fixtures/reference/grad_step.safetensors"), &gx, &err), PEFT_OK);
	json = load_json_file(source_path("test/fixtures/reference/lora_train.json"));
	assert_non_null(json);
	losses = cJSON_GetObjectItem(json, "losses");
	assert_int_equal(cJSON_GetArraySize(losses), 20);

	opts.lora.r = 8;
	opts.lora.alpha = 16;
	opts.lora.targets[BERT_QUERY] = opts.lora.targets[BERT_VALUE] = true;
	opts.task = TASK_CLASSIFICATION;
	opts.num_labels = 3;
	assert_int_equal(network_create(model, &opts, &net, &err), PEFT_OK);
	for (int i = 0; i < net->params.count; i++)
		load_param(net, fx, "init.", fixture_name(net->params.items[i].name), net->params.items[i].name);

	train_options_default(&topt);
	topt.learning_rate = 1e-3;
	topt.weight_decay = 0.01;
	topt.warmup_steps = 2;
	topt.max_grad_norm = 1.0;
	for (int k = 1; k <= 20; k++)
	{
		char		name[64];
		int32_t    *ids, *mask, *labels;
		size_t		n = 0;
		Batch		b = {0};
		double		loss, expected, rel, lr;

		snprintf(name, sizeof(name), "batch.%02d.input_ids", k - 1);
		ids = tensor_int32(fx, name, &n);
		snprintf(name, sizeof(name), "batch.%02d.attention_mask", k - 1);
		mask = tensor_int32(fx, name, NULL);
		snprintf(name, sizeof(name), "batch.%02d.labels", k - 1);
		labels = tensor_int32(fx, name, NULL);
		b.B = 8;
		b.T = (int) (n / 8);
		b.ids = ids;
		b.mask = mask;
		b.labels = labels;

		memset(net->params.grads, 0, net->params.total * sizeof(real));
		assert_int_equal(network_forward(net, &b, true, NULL, &loss, &err), PEFT_OK);
		assert_int_equal(network_backward(net, &b, 1.0, &err), PEFT_OK);
		if (k == 1)
		{
			/* every gradient at step 1 against PyTorch's */
			double		gworst = 0;

			for (int i = 0; i < net->params.count; i++)
			{
				const Param *p = &net->params.items[i];
				real	   *g = tensor_real(gx, fixture_name(p->name), NULL);
				bool		zero = true;

				assert_non_null(g);
				for (size_t j = 0; j < p->count; j++)
					zero &= g[j] == 0;
				/* lora_A gradients are exactly 0 at step 1 (B starts at 0) */
				if (!zero)
					gworst = fmax(gworst, relative_error(param_grad(&net->params, i), g, p->count));
				else
					for (size_t j = 0; j < p->count; j++)
						assert_true(param_grad(&net->params, i)[j] == 0);
				free(g);
			}
			printf("step 1 gradients: worst relative error %.3g\n", gworst);
			assert_true(gworst < 1e-3);
		}
		lr = topt.learning_rate * schedule_factor(&topt, k - 1, 20);
		clip_grad_norm(&net->params, topt.max_grad_norm);
		adamw_update(net->params.values, net->params.grads, net->params.adam_m,
					 net->params.adam_v, net->params.total, (real) lr, 0.9f, 0.999f,
					 1e-8f, 0.01f, k);

		expected = cJSON_GetArrayItem(losses, k - 1)->valuedouble;
		rel = fabs(loss - expected) / fabs(expected);
		worst = fmax(worst, rel);
		printf("step %2d: loss %.6f  PEFT %.6f  relative difference %.2e\n", k, loss, expected, rel);
		free(ids); free(mask); free(labels);
	}
	printf("20 LoRA steps: worst relative loss difference %.3g (limit 1e-3)\n", worst);
	assert_true(worst < 1e-3);

	/*
	 * Final weights after 20 steps.  Adam normalises each gradient element,
	 * so an element whose gradient is near zero moves by about lr on float
	 * noise alone: compare in absolute terms against the total lr (~0.0105).
	 */
	{
		double		wworst = 0;

		for (int i = 0; i < net->params.count; i++)
		{
			char		key[256];
			real	   *w;

			snprintf(key, sizeof(key), "final.%s", fixture_name(net->params.items[i].name));
			w = tensor_real(fx, key, NULL);
			assert_non_null(w);
			for (size_t j = 0; j < net->params.items[i].count; j++)
				wworst = fmax(wworst, fabs(param_value(&net->params, i)[j] - w[j]));
			free(w);
		}
		printf("final weights: max |engine - PEFT| = %.3g\n", wworst);
		assert_true(wworst < 1e-3);
	}
	network_free(net);
	cJSON_Delete(json);
	st_close(fx);
	st_close(gx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hidden_states),
		cmocka_unit_test(test_embeddings),
		cmocka_unit_test(test_lora_training_steps),
	};

	return cmocka_run_group_tests_name("reference (all-MiniLM-L6-v2 vs Hugging Face)", tests, setup, teardown);
}
