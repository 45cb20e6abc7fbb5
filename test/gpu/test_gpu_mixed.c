/*
 * test_gpu_mixed.c - a mixed-adapter batch (network_forward_mixed) on the
 * CUDA backend against the same batch on the CPU backend: one bare host
 * network and one network per method over the tiny BERT, their
 * parameters moved off their initial values, sequences of every adapter
 * interleaved in one batch; head outputs and embeddings must agree to
 * rounding.  Skips when no CUDA device is visible.
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mixed_batch_cuda_vs_cpu),
	};

	return cmocka_run_group_tests(tests, tiny_setup, tiny_teardown);
}
