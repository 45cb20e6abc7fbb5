/*
 * bench_gpu_many_adapters.c - mixed-batch prediction over many LoRA
 * adapters on the GPU: rows/s of one batch whose rows belong to 100 LoRA
 * adapters (network_forward_mixed), with the gathered LoRA product
 * (lora_sgmv) and with per-segment hooks (PEFT_SGMV=0), against the same
 * rows through one adapter.  The model is $PEFT_MODEL_DIR
 * (all-MiniLM-L6-v2; test/gpu/check.sh passes its unpacked copy); the
 * adapters are LoRA on query and value, ranks 8 and 16, random weights.
 *
 *   bench_gpu_many_adapters [PRECISIONS [SECONDS]]   ("tf32 fp32", 2 s per measure)
 *
 * Prints rows in run_gpu.sh's table layout (measure, peft, peer, ratio):
 * "peft" the mixed batch's rows/s, "peer" one adapter's, ratio mixed / one.
 * Exit status 0, or 1 with a message when something failed; 77 (and a
 * line saying why) without a device or a model.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "bert.h"
#include "network.h"
#include "rng.h"

#define ADAPTERS 100
#define ROWS_PER_ADAPTER 4
#define ROWS (ADAPTERS * ROWS_PER_ADAPTER)
#define T_COLS 64
#define WARMUP 2

/* Seconds on a monotonic clock. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A LoRA network of rank r on the device, weights random (B too, so the update counts). */
static Network *
lora_network(const BertModel *model, int r, PeftPrecision p, uint64_t seed, PeftError *err)
{
	NetworkOptions o = {0};
	Network    *net;
	PeftRng		rng;

	o.lora.r = r;
	o.lora.alpha = 2.0 * r;
	o.lora.targets[BERT_QUERY] = o.lora.targets[BERT_VALUE] = true;
	o.task = PEFT_TASK_CLASSIFICATION;
	o.num_labels = 2;
	o.seed = seed;
	if (network_create(model, &o, &net, err) != PEFT_OK)
		return NULL;
	peft_rng_seed(&rng, seed);
	for (size_t j = 0; j < net->params.total; j++)
		net->params.values[j] += (real) (0.02 * (2 * peft_rng_uniform(&rng) - 1));
	network_params_changed(net);
	if (network_set_device(net, PEFT_DEVICE_CUDA, p, err) != PEFT_OK)
	{
		network_free(net);
		return NULL;
	}
	return net;
}

/* Rows per second of network_forward_mixed over sg, for about seconds (after a warm-up). */
static double
rows_per_second(Network *host, MixedSegment *sg, int nsg, const Batch *b, real *outputs,
				double seconds, PeftError *err)
{
	int			iters = 0;
	double		t0;

	for (int i = 0; i < WARMUP; i++)
		if (network_forward_mixed(host, sg, nsg, b, outputs, 2, NULL, err) != PEFT_OK)
			return -1;
	t0 = now_seconds();
	do
	{
		/* the outputs come back to the host: each call is synchronised */
		if (network_forward_mixed(host, sg, nsg, b, outputs, 2, NULL, err) != PEFT_OK)
			return -1;
		iters++;
	} while (now_seconds() - t0 < seconds);
	return (double) ROWS * iters / (now_seconds() - t0);
}

/* Print one table row: mixed rows/s, one adapter's, their ratio. */
static void
table_row(const char *measure, double mixed, double one)
{
	printf("%-36s %10.0f %10.0f %8.2f\n", measure, mixed, one, mixed / one);
}

/* Measure every precision; 0, or 1 on a failure. */
static int
bench(const BertModel *model, const char *precisions, double seconds)
{
	static int32_t ids[ROWS * T_COLS];
	static int32_t mask[ROWS * T_COLS];
	static real outputs[ROWS * 2];
	Batch		b = {ROWS, T_COLS, ids, mask, NULL, NULL};
	char		list[128];
	PeftRng		rng;
	PeftError	err = {0};

	peft_rng_seed(&rng, 7);
	for (int i = 0; i < ROWS; i++)
	{
		int			len = 16 + (int) peft_rng_below(&rng, T_COLS - 15);

		for (int t = 0; t < T_COLS; t++)
		{
			mask[i * T_COLS + t] = t < len;
			ids[i * T_COLS + t] = t < len ? 1000 + (int32_t) peft_rng_below(&rng, 20000) : 0;
		}
	}
	snprintf(list, sizeof(list), "%s", precisions);
	for (char *word = strtok(list, " "); word != NULL; word = strtok(NULL, " "))
	{
		PeftPrecision p = strcmp(word, "bf16") == 0 ? PEFT_PRECISION_BF16 :
			strcmp(word, "tf32") == 0 ? PEFT_PRECISION_TF32 : PEFT_PRECISION_FP32;
		NetworkOptions bare = {0};
		Network    *host = NULL;
		Network    *nets[ADAPTERS] = {0};
		MixedSegment mixed[ADAPTERS];
		MixedSegment one[1];
		double		r_sgmv;
		double		r_hooks;
		double		r_one;
		char		measure[64];
		int			rc = 0;

		if (network_create(model, &bare, &host, &err) != PEFT_OK ||
			network_set_device(host, PEFT_DEVICE_CUDA, p, &err) != PEFT_OK)
			rc = 1;
		for (int k = 0; rc == 0 && k < ADAPTERS; k++)
			if ((nets[k] = lora_network(model, k % 2 ? 16 : 8, p, 1 + k, &err)) == NULL)
				rc = 1;
		if (rc == 0)
		{
			for (int k = 0; k < ADAPTERS; k++)
				mixed[k] = (MixedSegment) {nets[k], k * ROWS_PER_ADAPTER, ROWS_PER_ADAPTER, 0, 0};
			one[0] = (MixedSegment) {nets[0], 0, ROWS, 0, 0};
			unsetenv("PEFT_SGMV");
			r_sgmv = rows_per_second(host, mixed, ADAPTERS, &b, outputs, seconds, &err);
			r_one = r_sgmv < 0 ? -1 : rows_per_second(host, one, 1, &b, outputs, seconds, &err);
			setenv("PEFT_SGMV", "0", 1);
			r_hooks = r_one < 0 ? -1 : rows_per_second(host, mixed, ADAPTERS, &b, outputs,
													   seconds, &err);
			unsetenv("PEFT_SGMV");
			if (r_hooks < 0)
				rc = 1;
			else
			{
				snprintf(measure, sizeof(measure), "%d-LoRA rows/s %s sgmv (vs 1)", ADAPTERS, word);
				table_row(measure, r_sgmv, r_one);
				snprintf(measure, sizeof(measure), "%d-LoRA rows/s %s hooks (vs 1)", ADAPTERS, word);
				table_row(measure, r_hooks, r_one);
				fflush(stdout);
			}
		}
		for (int k = 0; k < ADAPTERS; k++)
			network_free(nets[k]);
		network_free(host);
		if (rc != 0)
		{
			fprintf(stderr, "bench_gpu_many_adapters: %s: %s\n", word, err.message);
			return 1;
		}
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *dir = getenv("PEFT_MODEL_DIR");
	const char *precisions = argc > 1 ? argv[1] : "tf32 fp32";
	double		seconds = argc > 2 ? atof(argv[2]) : 2.0;
	BertModel  *model = NULL;
	PeftError	err = {0};
	int			rc;

	if (!backend_cuda_available())
	{
		printf("bench_gpu_many_adapters: skipped: no CUDA device\n");
		return 77;
	}
	if (dir == NULL || bert_load(dir, &model, &err) != PEFT_OK)
	{
		printf("bench_gpu_many_adapters: skipped: no model (PEFT_MODEL_DIR %s%s%s)\n",
			   dir ? dir : "unset", dir ? ": " : "", dir ? err.message : "");
		return 77;
	}
	printf("# %d LoRA adapters (r 8 and 16 on query, value), %d rows of 16-%d tokens; "
		   "peer column: the same rows through one adapter\n", ADAPTERS, ROWS, T_COLS);
	rc = bench(model, precisions, seconds > 0 ? seconds : 2.0);
	bert_free(model);
	return rc;
}
