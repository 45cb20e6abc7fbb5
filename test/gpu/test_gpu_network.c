/*
 * test_gpu_network.c - the whole network on the CUDA backend against the
 * same network on the CPU backend (the reference), on the tiny generated
 * BERT: two networks built with the same options and seed hold the same
 * parameters and draw the same dropout masks (drawn on the host for every
 * backend), so their logits, loss, gradients, optimizer steps, embeddings
 * and hidden states must agree to rounding.  Also the device's error paths
 * (device memory exhausted gives an error, not a crash, and the network
 * still works after it) and idle release (everything freed after the idle
 * time, and the next call makes it again with the same results).
 * Every test skips when no CUDA device is visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend.h"
#include "network.h"
#include "test_util.h"
#include "tiny_model_fixture.h"

#define B_ROWS 6
#define T_COLS 13

/* Skip the calling test when no CUDA device is visible. */
static void
require_device(void)
{
	if (!backend_cuda_available())
	{
		print_message("no CUDA device: skipped\n");
		skip();
	}
}

/* Norm-relative error ||a - b|| / ||b|| (b must not be all zeros). */
static double
rel_error(const real *a, const real *b, size_t n)
{
	double		num = 0;
	double		den = 0;

	for (size_t i = 0; i < n; i++)
	{
		if (!isfinite(a[i]))
			return INFINITY;
		num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
		den += (double) b[i] * b[i];
	}
	assert_true(den > 0);
	return sqrt(num / den);
}

/* A batch with irregular lengths (one row a single token) and labels. */
static void
make_batch(Batch *b, int32_t *ids, int32_t *mask, int32_t *labels, PeftRng *rng)
{
	static const int lengths[B_ROWS] = {13, 4, 9, 1, 11, 7};

	for (int i = 0; i < B_ROWS; i++)
	{
		for (int t = 0; t < T_COLS; t++)
		{
			mask[i * T_COLS + t] = t < lengths[i];
			ids[i * T_COLS + t] = t < lengths[i] ? 1 + (int32_t) peft_rng_below(rng, model->cfg.vocab_size - 1) : 0;
		}
		labels[i] = (int32_t) peft_rng_below(rng, 3);
	}
	b->B = B_ROWS;
	b->T = T_COLS;
	b->ids = ids;
	b->mask = mask;
	b->labels = labels;
	b->targets = NULL;
}

/* The adapter method of a pair of networks. */
typedef enum Method
{
	METHOD_LORA,
	METHOD_DORA_BITFIT,			/* DoRA + BitFit + a Pfeiffer adapter: every new op */
	METHOD_IA3_HOULSBY,			/* (IA)^3 (outputs and inputs) + Houlsby adapters */
	METHOD_PROMPT,				/* prompt tuning + LoRA */
	METHOD_PREFIX				/* prefix tuning + BitFit */
} Method;

/* Two identical networks (method, all dropouts), one moved to CUDA. */
static void
make_pair_method(Network **cpu, Network **gpu, PeftPrecision precision, Method method)
{
	NetworkOptions o = {0};
	PeftError	err = {0};
	PeftRng		fill;

	o.lora.r = 4;
	o.lora.alpha = 8;
	o.lora.dropout = 0.1;
	for (int w = 0; w < BERT_NUM_LINEAR && method != METHOD_IA3_HOULSBY && method != METHOD_PREFIX; w++)
		o.lora.targets[w] = true;
	o.prompt_tokens = method == METHOD_PROMPT ? 3 : 0;
	o.prefix_tokens = method == METHOD_PREFIX ? 3 : 0;
	o.bitfit = method == METHOD_PREFIX;
	if (method == METHOD_DORA_BITFIT)
	{
		o.dora = true;
		o.bitfit = true;
		o.bottleneck.reduction = 4;
		o.bottleneck.after_ffn = true;
	}
	if (method == METHOD_IA3_HOULSBY)
	{
		o.ia3.targets[BERT_KEY] = o.ia3.targets[BERT_VALUE] = true;
		o.ia3.targets[BERT_OUTPUT] = o.ia3.feedforward[BERT_OUTPUT] = true;
		o.bottleneck.reduction = 4;
		o.bottleneck.after_attention = o.bottleneck.after_ffn = true;
	}
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 3;
	o.hidden_dropout = 0.1;
	o.attention_dropout = 0.1;
	o.seed = 77;
	assert_int_equal(network_create(model, &o, cpu, &err), PEFT_OK);
	assert_int_equal(network_create(model, &o, gpu, &err), PEFT_OK);
	/* B starts at zero in PEFT's init: give every parameter a non-zero value */
	peft_rng_seed(&fill, 5);
	for (size_t j = 0; j < (*cpu)->params.total; j++)
		(*cpu)->params.values[j] = (*gpu)->params.values[j] =
			(real) (0.2 * (2 * peft_rng_uniform(&fill) - 1));
	network_params_changed(*gpu);
	assert_int_equal(network_set_device(*gpu, PEFT_DEVICE_CUDA, precision, &err), PEFT_OK);
	assert_string_equal((*gpu)->be->name, "cuda");
}

/* A LoRA pair. */
static void
make_pair(Network **cpu, Network **gpu, PeftPrecision precision)
{
	make_pair_method(cpu, gpu, precision, METHOD_LORA);
}

/* Forward, backward and one optimizer step agree within limit (by precision). */
static void
check_training_step(PeftPrecision precision, double limit)
{
	Network    *cpu;
	Network    *gpu;
	Batch		b;
	int32_t		ids[B_ROWS * T_COLS], mask[B_ROWS * T_COLS], labels[B_ROWS];
	real		out_cpu[B_ROWS * 3], out_gpu[B_ROWS * 3];
	double		loss_cpu, loss_gpu;
	double		norm_cpu, norm_gpu;
	PeftError	err = {0};
	PeftRng		rng;
	size_t		n;
	real	   *grads_cpu;

	require_device();
	make_pair(&cpu, &gpu, precision);
	n = cpu->params.total;
	peft_rng_seed(&rng, 11);
	make_batch(&b, ids, mask, labels, &rng);
	for (int step = 0; step < 3; step++)
	{
		memset(out_gpu, 0xFF, sizeof(out_gpu));
		assert_int_equal(network_zero_grads(cpu, &err), PEFT_OK);
		assert_int_equal(network_zero_grads(gpu, &err), PEFT_OK);
		assert_int_equal(network_forward(cpu, &b, true, out_cpu, &loss_cpu, &err), PEFT_OK);
		assert_int_equal(network_forward(gpu, &b, true, out_gpu, &loss_gpu, &err), PEFT_OK);
		print_message("%s step %d: logits rel err %.2e, loss %.7f vs %.7f\n",
					  gemm_precision_name(precision), step, rel_error(out_gpu, out_cpu, B_ROWS * 3),
					  loss_gpu, loss_cpu);
		assert_true(rel_error(out_gpu, out_cpu, B_ROWS * 3) <= limit);
		assert_true(fabs(loss_gpu - loss_cpu) <= limit * fabs(loss_cpu));
		assert_int_equal(network_backward(cpu, &b, 1, &err), PEFT_OK);
		assert_int_equal(network_backward(gpu, &b, 1, &err), PEFT_OK);
		/* the device gradients, through a fetch of a copy made by a step of lr 0 */
		grads_cpu = malloc(sizeof(real) * n);
		memcpy(grads_cpu, cpu->params.grads, sizeof(real) * n);
		assert_int_equal(network_optimizer_step(cpu, 1e-2, 0.9, 0.999, 1e-8, 0.01, step + 1,
												1.0, &norm_cpu, &err), PEFT_OK);
		assert_int_equal(network_optimizer_step(gpu, 1e-2, 0.9, 0.999, 1e-8, 0.01, step + 1,
												1.0, &norm_gpu, &err), PEFT_OK);
		print_message("  grad norm %.7f vs %.7f\n", norm_gpu, norm_cpu);
		assert_true(fabs(norm_gpu - norm_cpu) <= 10 * limit * norm_cpu);
		assert_int_equal(network_params_fetch(gpu, &err), PEFT_OK);
		print_message("  parameters after the step: rel err %.2e\n",
					  rel_error(gpu->params.values, cpu->params.values, n));
		assert_true(rel_error(gpu->params.values, cpu->params.values, n) <= 10 * limit);
		free(grads_cpu);
	}
	network_free(cpu);
	network_free(gpu);
}

/*
 * Limits on the logits' relative error over three training steps (the
 * parameters may drift ten times as far), by precision.  Measured on an
 * NVIDIA H100 (2026-12-05, test/gpu/check.sh): FP32 2.5e-7; TF32 4.0e-4,
 * 5.8e-4, 1.29e-3 over the three steps (the error grows with each step's
 * rounding of the update); BF16 3.7e-3, 7.4e-3, 9.0e-3.
 */
#define NETWORK_STEP_LIMIT_FP32	1e-5
#define NETWORK_STEP_LIMIT_TF32	3e-3
#define NETWORK_STEP_LIMIT_BF16	2e-2

/* FP32: every step within NETWORK_STEP_LIMIT_FP32. */
static void
test_training_step_fp32(void **state)
{
	check_training_step(PEFT_PRECISION_FP32, NETWORK_STEP_LIMIT_FP32);
}

/* TF32 tensor cores: within NETWORK_STEP_LIMIT_TF32. */
static void
test_training_step_tf32(void **state)
{
	check_training_step(PEFT_PRECISION_TF32, NETWORK_STEP_LIMIT_TF32);
}

/* BF16 operands with FP32 accumulation: within NETWORK_STEP_LIMIT_BF16. */
static void
test_training_step_bf16(void **state)
{
	check_training_step(PEFT_PRECISION_BF16, NETWORK_STEP_LIMIT_BF16);
}

/* Forward and backward of the other methods agree within 1e-5 (FP32). */
static void
test_methods_fp32(void **state)
{
	for (int method = METHOD_DORA_BITFIT; method <= METHOD_PREFIX; method++)
	{
		Network    *cpu;
		Network    *gpu;
		Batch		b;
		int32_t		ids[B_ROWS * T_COLS], mask[B_ROWS * T_COLS], labels[B_ROWS];
		real		out_cpu[B_ROWS * 3], out_gpu[B_ROWS * 3];
		double		loss_cpu, loss_gpu, norm_cpu, norm_gpu;
		PeftError	err = {0};
		PeftRng		rng;
		real	   *grads;
		size_t		n;

		require_device();
		make_pair_method(&cpu, &gpu, PEFT_PRECISION_FP32, (Method) method);
		n = cpu->params.total;
		peft_rng_seed(&rng, 13);
		make_batch(&b, ids, mask, labels, &rng);
		assert_int_equal(network_zero_grads(cpu, &err), PEFT_OK);
		assert_int_equal(network_zero_grads(gpu, &err), PEFT_OK);
		memset(out_gpu, 0xFF, sizeof(out_gpu));
		assert_int_equal(network_forward(cpu, &b, true, out_cpu, &loss_cpu, &err), PEFT_OK);
		assert_int_equal(network_forward(gpu, &b, true, out_gpu, &loss_gpu, &err), PEFT_OK);
		assert_int_equal(network_backward(cpu, &b, 1, &err), PEFT_OK);
		assert_int_equal(network_backward(gpu, &b, 1, &err), PEFT_OK);
		/* a step with learning rate 0 leaves the values: compare the gradients' norms */
		assert_int_equal(network_optimizer_step(cpu, 0, 0.9, 0.999, 1e-8, 0, 1, 0, &norm_cpu, &err), PEFT_OK);
		assert_int_equal(network_optimizer_step(gpu, 0, 0.9, 0.999, 1e-8, 0, 1, 0, &norm_gpu, &err), PEFT_OK);
		/* the first moment after one step is (1 - beta1) g: the gradients, element by element */
		assert_int_equal(network_params_fetch(gpu, &err), PEFT_OK);
		grads = cpu->params.adam_m;
		print_message("method %d: logits rel err %.2e, gradients rel err %.2e, norms %.6f vs %.6f\n",
					  method, rel_error(out_gpu, out_cpu, B_ROWS * 3),
					  rel_error(gpu->params.adam_m, grads, n), norm_gpu, norm_cpu);
		assert_true(rel_error(out_gpu, out_cpu, B_ROWS * 3) <= 1e-5);
		assert_true(rel_error(gpu->params.adam_m, grads, n) <= 1e-4);
		network_free(cpu);
		network_free(gpu);
	}
}

/* Embeddings and hidden states of the bare model agree within 1e-5. */
static void
test_embeddings_and_hidden(void **state)
{
	NetworkOptions o = {0};
	Network    *cpu;
	Network    *gpu;
	Batch		b;
	int32_t		ids[B_ROWS * T_COLS], mask[B_ROWS * T_COLS], labels[B_ROWS];
	size_t		C = model->cfg.hidden_size;
	real	   *e_cpu = malloc(sizeof(real) * B_ROWS * C);
	real	   *e_gpu = malloc(sizeof(real) * B_ROWS * C);
	real	   *h_cpu = malloc(sizeof(real) * B_ROWS * T_COLS * C);
	real	   *h_gpu = malloc(sizeof(real) * B_ROWS * T_COLS * C);
	PeftError	err = {0};
	PeftRng		rng;

	require_device();
	peft_rng_seed(&rng, 3);
	make_batch(&b, ids, mask, labels, &rng);
	assert_int_equal(network_create(model, &o, &cpu, &err), PEFT_OK);
	assert_int_equal(network_create(model, &o, &gpu, &err), PEFT_OK);
	assert_int_equal(network_set_device(gpu, PEFT_DEVICE_CUDA, PEFT_PRECISION_FP32, &err), PEFT_OK);
	memset(e_gpu, 0xFF, sizeof(real) * B_ROWS * C);
	memset(h_gpu, 0xFF, sizeof(real) * B_ROWS * T_COLS * C);
	assert_int_equal(network_embed(cpu, &b, e_cpu, &err), PEFT_OK);
	assert_int_equal(network_embed(gpu, &b, e_gpu, &err), PEFT_OK);
	assert_int_equal(network_hidden_states(cpu, &b, h_cpu, &err), PEFT_OK);
	assert_int_equal(network_hidden_states(gpu, &b, h_gpu, &err), PEFT_OK);
	print_message("embeddings rel err %.2e, hidden states rel err %.2e\n",
				  rel_error(e_gpu, e_cpu, B_ROWS * C), rel_error(h_gpu, h_cpu, B_ROWS * T_COLS * C));
	assert_true(rel_error(e_gpu, e_cpu, B_ROWS * C) <= 1e-5);
	assert_true(rel_error(h_gpu, h_cpu, B_ROWS * T_COLS * C) <= 1e-5);
	/* padded rows are exact zeros on both */
	for (int i = 0; i < B_ROWS * T_COLS; i++)
		if (!mask[i])
			for (size_t c = 0; c < C; c++)
				assert_true(h_gpu[i * C + c] == 0);
	network_free(cpu);
	network_free(gpu);
	free(e_cpu);
	free(e_gpu);
	free(h_cpu);
	free(h_gpu);
}

/* Exhausted device memory is an error with a message; the network works after it. */
static void
test_out_of_memory_is_an_error(void **state)
{
	NetworkOptions o = {0};
	Network    *gpu;
	Batch		b;
	int32_t		ids[B_ROWS * T_COLS], mask[B_ROWS * T_COLS], labels[B_ROWS];
	real	   *e = malloc(sizeof(real) * B_ROWS * model->cfg.hidden_size);
	PeftError	err = {0};
	PeftRng		rng;
	PeftCode	rc;

	require_device();
	assert_int_equal(network_create(model, &o, &gpu, &err), PEFT_OK);
	assert_int_equal(network_set_device(gpu, PEFT_DEVICE_CUDA, PEFT_PRECISION_FP32, &err), PEFT_OK);
	/* attention blocks of 2^20 sequences of 512 tokens: terabytes */
	rc = network_reserve(gpu, 1 << 20, 512 < model->cfg.max_position ? 512 : model->cfg.max_position,
						 false, &err);
	print_message("huge reservation: %s: %s\n", peft_code_name(rc), err.message);
	assert_int_equal(rc, PEFT_ERR_NOMEM);
	assert_true(strlen(err.message) > 0);
	peft_rng_seed(&rng, 9);
	make_batch(&b, ids, mask, labels, &rng);
	assert_int_equal(network_embed(gpu, &b, e, &err), PEFT_OK);
	for (size_t i = 0; i < (size_t) B_ROWS * model->cfg.hidden_size; i++)
		assert_true(isfinite(e[i]));
	network_free(gpu);
	free(e);
}

/* After the idle time everything is freed; the next call makes it again, same results. */
static void
test_idle_release(void **state)
{
	NetworkOptions o = {0};
	Network    *gpu;
	Batch		b;
	int32_t		ids[B_ROWS * T_COLS], mask[B_ROWS * T_COLS], labels[B_ROWS];
	size_t		n = (size_t) B_ROWS * model->cfg.hidden_size;
	real	   *first = malloc(sizeof(real) * n);
	real	   *again = malloc(sizeof(real) * n);
	uint64_t	generation;
	PeftError	err = {0};
	PeftRng		rng;

	require_device();
	peft_rng_seed(&rng, 21);
	make_batch(&b, ids, mask, labels, &rng);
	assert_int_equal(network_create(model, &o, &gpu, &err), PEFT_OK);
	assert_int_equal(network_set_device(gpu, PEFT_DEVICE_CUDA, PEFT_PRECISION_FP32, &err), PEFT_OK);
	backend_set_idle_release(1);
	assert_int_equal(network_embed(gpu, &b, first, &err), PEFT_OK);
	generation = gpu->generation;
	sleep(3);
	assert_int_equal(network_embed(gpu, &b, again, &err), PEFT_OK);
	backend_set_idle_release(0);
	print_message("generation %llu -> %llu\n", (unsigned long long) generation,
				  (unsigned long long) gpu->generation);
	assert_true(gpu->generation > generation);
	assert_memory_equal(first, again, sizeof(real) * n);
	network_free(gpu);
	free(first);
	free(again);
}

/* Run the tests (each skips without a device). */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_training_step_fp32),
		cmocka_unit_test(test_training_step_tf32),
		cmocka_unit_test(test_training_step_bf16),
		cmocka_unit_test(test_methods_fp32),
		cmocka_unit_test(test_embeddings_and_hidden),
		cmocka_unit_test(test_out_of_memory_is_an_error),
		cmocka_unit_test(test_idle_release),
	};

	return cmocka_run_group_tests(tests, tiny_setup, tiny_teardown);
}
