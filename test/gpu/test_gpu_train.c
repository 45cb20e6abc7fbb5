/*
 * test_gpu_train.c - the whole model: 50 LoRA training steps on
 * all-MiniLM-L6-v2 on the CUDA backend (FP32) give the CPU backend's loss
 * curve within 1e-3 relative at every step, with the model's own dropout
 * (both draw the same masks) and the trainer's schedule, clipping and
 * AdamW.  The model folder comes from $PEFT_MODEL_DIR (the GPU check
 * unpacks it there); the test skips, saying why, without a device or a
 * model.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "dataset.h"
#include "network.h"
#include "trainer.h"

#define STEPS 50
#define ROWS (STEPS * 16)

static const char *const subjects[] = {
	"my invoice", "the login page", "the mobile app", "my password", "the delivery",
	"the refund", "our account", "the dashboard", "the export", "my subscription"
};
static const char *const problems[] = {
	"is wrong again", "does not load at all", "crashes when I open it",
	"was charged twice", "never arrived", "is very slow today",
	"shows an error", "cannot be found"
};

/* A 4-class task: the label follows the subject, with varied wording. */
static void
make_rows(BertModel *model, Dataset *ds)
{
	PeftRng		rng;
	PeftError	err = {0};
	char		text[256];

	peft_rng_seed(&rng, 2024);
	for (int i = 0; i < ROWS; i++)
	{
		int			s = (int) peft_rng_below(&rng, 10);
		int			p = (int) peft_rng_below(&rng, 8);

		snprintf(text, sizeof(text), "hello, %s %s and I need help with it%s",
				 subjects[s], problems[p], i % 3 ? " please" : ", thanks in advance");
		assert_int_equal(dataset_add(ds, model->tokenizer, text, strlen(text), 64, s % 4, 0,
									 &err), PEFT_OK);
	}
}

/* Train STEPS steps on device; losses[STEPS] receives the curve. */
static void
train_curve(BertModel *model, Dataset *ds, PeftDevice device, double *losses)
{
	NetworkOptions no = {0};
	TrainOptions to;
	Network    *net;
	Trainer    *tr;
	uint32_t   *rows = malloc(sizeof(uint32_t) * ROWS);
	PeftError	err = {0};
	PeftTrainProgress	st;

	for (uint32_t i = 0; i < ROWS; i++)
		rows[i] = i;
	no.lora.r = 8;
	no.lora.alpha = 16;
	no.lora.dropout = 0.1;
	no.lora.targets[BERT_QUERY] = no.lora.targets[BERT_VALUE] = true;
	no.task = PEFT_TASK_CLASSIFICATION;
	no.num_labels = 4;
	no.hidden_dropout = model->cfg.hidden_dropout;
	no.attention_dropout = model->cfg.attention_dropout;
	no.seed = 42;
	assert_int_equal(network_create(model, &no, &net, &err), PEFT_OK);
	assert_int_equal(network_set_device(net, device, PEFT_PRECISION_FP32, &err), PEFT_OK);
	train_options_default(&to);
	to.epochs = 1;
	to.batch_size = 16;
	to.learning_rate = 5e-4;
	to.seed = 42;
	assert_int_equal(trainer_create(net, ds, rows, ROWS, &to, &tr, &err), PEFT_OK);
	for (int s = 0; s < STEPS; s++)
	{
		if (trainer_step(tr, &st, &err) != PEFT_OK)
			fail_msg("%s step %d: %s", net->be->name, s + 1, err.message);
		losses[s] = st.loss;
	}
	trainer_free(tr);
	network_free(net);
	free(rows);
}

/* The CUDA loss curve follows the CPU's within 1e-3 relative at every step. */
static void
test_fifty_steps_match_the_cpu(void **state)
{
	const char *dir = getenv("PEFT_MODEL_DIR");
	BertModel  *model;
	Dataset		ds = {0};
	double		cpu[STEPS];
	double		gpu[STEPS];
	double		worst = 0;
	PeftError	err = {0};

	if (!backend_cuda_available())
	{
		print_message("no CUDA device: skipped\n");
		skip();
	}
	if (dir == NULL || *dir == '\0')
	{
		print_message("PEFT_MODEL_DIR is not set (the all-MiniLM-L6-v2 folder): skipped\n");
		skip();
	}
	assert_int_equal(bert_load(dir, &model, &err), PEFT_OK);
	make_rows(model, &ds);
	train_curve(model, &ds, PEFT_DEVICE_CPU, cpu);
	train_curve(model, &ds, PEFT_DEVICE_CUDA, gpu);
	for (int s = 0; s < STEPS; s++)
	{
		double		rel = fabs(gpu[s] - cpu[s]) / fabs(cpu[s]);

		if (s < 5 || s % 10 == 9)
			print_message("step %2d: loss cpu %.6f cuda %.6f relative difference %.2e\n",
						  s + 1, cpu[s], gpu[s], rel);
		worst = rel > worst ? rel : worst;
	}
	print_message("50 steps: worst relative loss difference %.2e (limit 1e-3)\n", worst);
	assert_true(worst <= 1e-3);
	assert_true(gpu[STEPS - 1] < gpu[0]);
	dataset_free(&ds);
	bert_free(model);
}

/* Run the test (it skips without a device or model). */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fifty_steps_match_the_cpu),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
