/*
 * test_gpu_mixed.c - a mixed-adapter batch (network_forward_mixed) on the
 * CUDA backend against the same batch on the CPU backend: one bare host
 * network and one network per method over the tiny BERT, their
 * parameters moved off their initial values, sequences of every adapter
 * interleaved in one batch; head outputs and embeddings must agree to
 * rounding.  Then many LoRA adapters of different ranks in one batch
 * (on CUDA their LoRA runs gathered, lora_sgmv; one rank past its limit
 * and a DoRA adapter keep their hooks).  Skips when no CUDA device is
 * visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "network.h"
#include "test_util.h"
#include "tiny_model_fixture.h"
#include "method_fixture.h"

/* FP32 products on both sides; measured where a device was lent (see RESULTS.md). */
#define MIXED_GPU_TOLERANCE 1e-4

#define NSEQ 12
#define T_COLS 11
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

/* The methods mixed, one network each. */
static const char *const methods[] = {"lora", "dora", "ia3+bitfit", "adapter", "prompt", "prefix"};
#define NMEMBERS 6

/* A network of methods[k], parameters perturbed by seed. */
static Network *
member(int k, uint64_t seed)
{
	NetworkOptions o = method_options_for(methods[k], PEFT_TASK_CLASSIFICATION, 3);

	return perturbed_network(&o, seed);
}

/* Head outputs [NSEQ, 3] and embeddings [NSEQ, C] of one mixed batch on device kind. */
static void
run_mixed(PeftDevice kind, real *outputs, real *embeddings)
{
	NetworkOptions bare_options = {0};
	Network    *host;
	Network    *nets[NMEMBERS];
	MixedSegment sg[NSEQ];
	int32_t		ids[NSEQ * T_COLS];
	int32_t		mask[NSEQ * T_COLS];
	Batch		b = {NSEQ, T_COLS, ids, mask, NULL, NULL};
	PeftRng		rng;
	PeftError	err = {0};

	peft_rng_seed(&rng, 3);
	for (int i = 0; i < NSEQ; i++)
		for (int t = 0; t < T_COLS; t++)
		{
			mask[i * T_COLS + t] = t < 1 + (i * 5) % T_COLS;
			ids[i * T_COLS + t] = mask[i * T_COLS + t] ?
				1 + (int32_t) peft_rng_below(&rng, model->cfg.vocab_size - 1) : 0;
		}
	assert_int_equal(network_create(model, &bare_options, &host, &err), PEFT_OK);
	assert_int_equal(network_set_device(host, kind, PEFT_PRECISION_FP32, &err), PEFT_OK);
	for (int k = 0; k < NMEMBERS; k++)
	{
		nets[k] = member(k, 11 + k);
		assert_int_equal(network_set_device(nets[k], kind, PEFT_PRECISION_FP32, &err), PEFT_OK);
	}
	/* one sequence per segment, adapters interleaved */
	for (int i = 0; i < NSEQ; i++)
		sg[i] = (MixedSegment) {nets[(i * 5) % NMEMBERS], i, 1, 0, 0};
	if (network_forward_mixed(host, sg, NSEQ, &b, outputs, 3, NULL, &err) != PEFT_OK ||
		network_forward_mixed(host, sg, NSEQ, &b, NULL, 3, embeddings, &err) != PEFT_OK)
		fail_msg("mixed forward: %s", err.message);
	for (int k = 0; k < NMEMBERS; k++)
		network_free(nets[k]);
	network_free(host);
}

/* Largest |a - b| relative to the largest |b|; infinite on a non-finite value. */
static double
normwise(const real *a, const real *b, size_t n)
{
	double		diff = 0;
	double		top = 0;

	for (size_t i = 0; i < n; i++)
	{
		if (!isfinite(a[i]) || !isfinite(b[i]))
			return INFINITY;
		diff = fmax(diff, fabs((double) a[i] - b[i]));
		top = fmax(top, fabs((double) b[i]));
	}
	return diff / fmax(top, 1e-30);
}

/* Every method's rows mixed in one batch: CUDA equals the CPU. */
static void
test_mixed_batch_cuda_vs_cpu(void **state)
{
	int			C = model->cfg.hidden_size;
	real		out_cpu[NSEQ * 3];
	real		out_gpu[NSEQ * 3];
	real	   *emb_cpu = malloc(sizeof(real) * NSEQ * C);
	real	   *emb_gpu = malloc(sizeof(real) * NSEQ * C);
	double		e_out;
	double		e_emb;

	require_device();
	run_mixed(PEFT_DEVICE_CPU, out_cpu, emb_cpu);
	run_mixed(PEFT_DEVICE_CUDA, out_gpu, emb_gpu);
	e_out = normwise(out_gpu, out_cpu, NSEQ * 3);
	e_emb = normwise(emb_gpu, emb_cpu, (size_t) NSEQ * C);
	print_message("mixed batch, CUDA vs CPU: head outputs %.2e, embeddings %.2e (normwise)\n",
				  e_out, e_emb);
	assert_true(e_out <= MIXED_GPU_TOLERANCE);
	assert_true(e_emb <= MIXED_GPU_TOLERANCE);
	free(emb_cpu);
	free(emb_gpu);
}

/* The many-LoRA batch: adapters, their ranks (one past lora_sgmv's 256), sequences. */
#define MANY_ADAPTERS 24
#define MANY_SEQS 37				/* 24 adapters of 1 or 2 sequences, and DoRA's 1 */
static const int many_ranks[MANY_ADAPTERS] = {
	1, 2, 4, 8, 16, 32, 64, 128, 256, 3, 5, 7, 12, 24, 48, 96, 160, 200, 257, 6, 10, 20, 40, 80
};

/* Head outputs [MANY_SEQS, 3] of MANY_ADAPTERS LoRA adapters (and a DoRA one) mixed. */
static void
run_many(PeftDevice kind, real *outputs)
{
	NetworkOptions bare_options = {0};
	Network    *host;
	Network    *nets[MANY_ADAPTERS + 1];
	MixedSegment sg[MANY_ADAPTERS + 1];
	int32_t    *ids = malloc(sizeof(int32_t) * MANY_SEQS * T_COLS);
	int32_t    *mask = malloc(sizeof(int32_t) * MANY_SEQS * T_COLS);
	Batch		b = {MANY_SEQS, T_COLS, ids, mask, NULL, NULL};
	int			seq = 0;
	int			nsg = 0;
	PeftRng		rng;
	PeftError	err = {0};

	peft_rng_seed(&rng, 5);
	for (int i = 0; i < MANY_SEQS; i++)
		for (int t = 0; t < T_COLS; t++)
		{
			mask[i * T_COLS + t] = t < 1 + (i * 7) % T_COLS;
			ids[i * T_COLS + t] = mask[i * T_COLS + t] ?
				1 + (int32_t) peft_rng_below(&rng, model->cfg.vocab_size - 1) : 0;
		}
	assert_int_equal(network_create(model, &bare_options, &host, &err), PEFT_OK);
	assert_int_equal(network_set_device(host, kind, PEFT_PRECISION_FP32, &err), PEFT_OK);
	for (int k = 0; k <= MANY_ADAPTERS; k++)
	{
		/* the last one is DoRA, which keeps its own hook */
		NetworkOptions o = method_options_for(k < MANY_ADAPTERS ? "lora" : "dora",
											  PEFT_TASK_CLASSIFICATION, 3);

		o.lora.r = k < MANY_ADAPTERS ? many_ranks[k] : 8;
		o.lora.alpha = 2.0 * o.lora.r;
		nets[k] = perturbed_network(&o, 100 + k);
		assert_int_equal(network_set_device(nets[k], kind, PEFT_PRECISION_FP32, &err), PEFT_OK);
	}
	/* one or two sequences per adapter; DoRA's rows in the middle */
	for (int k = 0; k < MANY_ADAPTERS; k++)
	{
		int			n = 1 + k % 2;

		sg[nsg++] = (MixedSegment) {nets[k], seq, n, 0, 0};
		seq += n;
		if (k == MANY_ADAPTERS / 2)
			sg[nsg++] = (MixedSegment) {nets[MANY_ADAPTERS], seq++, 1, 0, 0};
	}
	assert_int_equal(seq, MANY_SEQS);
	if (network_forward_mixed(host, sg, nsg, &b, outputs, 3, NULL, &err) != PEFT_OK)
		fail_msg("mixed forward of many LoRA adapters: %s", err.message);
	for (int k = 0; k <= MANY_ADAPTERS; k++)
		network_free(nets[k]);
	network_free(host);
	free(ids);
	free(mask);
}

/* Many LoRA adapters of different ranks mixed: CUDA (gathered LoRA) equals the CPU (per segment). */
static void
test_many_lora_cuda_vs_cpu(void **state)
{
	real		out_cpu[MANY_SEQS * 3];
	real		out_gpu[MANY_SEQS * 3];
	double		e;

	require_device();
	run_many(PEFT_DEVICE_CPU, out_cpu);
	run_many(PEFT_DEVICE_CUDA, out_gpu);
	e = normwise(out_gpu, out_cpu, MANY_SEQS * 3);
	print_message("%d LoRA adapters mixed, CUDA vs CPU: head outputs %.2e (normwise)\n",
				  MANY_ADAPTERS, e);
	assert_true(e <= MIXED_GPU_TOLERANCE);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_batch_cuda_vs_cpu),
		cmocka_unit_test(test_many_lora_cuda_vs_cpu),
	};

	return cmocka_run_group_tests(tests, tiny_setup, tiny_teardown);
}
