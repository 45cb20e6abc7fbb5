/*
 * test_decoder_train_reference.c - training adapters over SmolLM2-135M
 * (Q4_1 GGUF) against PyTorch + PEFT on the same weights dequantized to
 * FP32 (test/fixtures/ref_decoder_train.py, reference/decoder_train/):
 * 20 LoRA steps, and 5 steps each of DoRA, (IA)^3, prompt tuning, prefix
 * tuning and (Houlsby) bottleneck adapters, from the reference's own
 * initial adapter, replaying its batches through the engine's decoder
 * trainer (what peft_train's worker runs); every step's loss, the step-1
 * gradient of every tensor (against PyTorch's float32 gradients, grad1.*,
 * and against the exact ones of a float64 pass, grad64.*, where the
 * fixture has them), and (LoRA) the final adapter are compared.
 * The rows are tokenised by the engine as training tokenises them and
 * must give the reference's ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "bpe_tokenizer.h"
#include "causal_lm.h"
#include "compare.h"
#include "dataset.h"
#include "decoder_trainer.h"
#include "decoder_training.h"
#include "engine_decoder.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"
#include "test_util.h"

/*
 * Tolerances with the figures measured here (2 threads).  The issue asks
 * for losses within 1e-4 relative and step-1 gradients within 1e-4: l2
 * relative over the whole adapter (the normwise figure, the largest
 * difference over the largest gradient, is printed too: LoRA 3.8e-5,
 * DoRA 1.3e-4 against PyTorch's float32 but 6.6e-6 against the float64
 * pass: the difference is PyTorch's own rounding of the magnitude's
 * gradient, which sums hundreds of rows of float products).
 */
#define TOL_LOSS_REL 1e-4		/* measured: LoRA 1.7e-5 over 20 steps, DoRA 4.4e-6, (IA)^3 8.3e-6; prompt 7.4e-6, prefix 4.0e-6, bottleneck 6.4e-6 */
#define TOL_GRAD1_L2 1e-4		/* measured: LoRA 2.8e-5, DoRA 3.0e-5, (IA)^3 3.3e-5; prefix 4.5e-5, bottleneck 3.8e-5 */
/*
 * The same step-1 gradients against the float64 pass's (grad64.*: every
 * stage in float64, the exact reference; PyTorch's float32 gradients are
 * themselves 2.8e-5 (LoRA) to 1.6e-4 (prompt tuning) normwise from it,
 * the fixture's float64_step1.grad1_normwise).
 */
#define TOL_GRAD1_F64_L2 1e-4	/* measured: LoRA 5.8e-6, DoRA 6.3e-6 (normwise 6.6e-6), (IA)^3 9.7e-6, prompt 4.1e-6, prefix 2.5e-6, bottleneck 1.0e-5 */
/*
 * Prompt tuning's float32 reference is itself 1.58e-4 from the float64
 * pass (the virtual tokens' gradient sums every position's attention
 * through all 30 layers): against it, a bound above that error.
 */
#define TOL_GRAD1_PROMPT_L2 3e-4	/* measured 1.6e-4 (4.1e-6 against the float64 pass) */
#define TOL_FINAL_L2 1e-3		/* measured 5.6e-5 (normwise 5.0e-3: AdamW's step is about lr wherever |g| >> eps, so rounding in small gradients moves their weights as much as large ones) */
/* PEFT's own final adapter loaded here: last-position logits against PEFT's, over the vocabulary */
#define TOL_IMPORT_LOGITS 1e-3	/* measured 4.0e-5 */

static const char *const runs[] = {"lora", "dora", "ia3", "prompt", "prefix", "adapter"};

/* Whether the fixture has prefix.name: stored, or listed as all zeros. */
static bool
fixture_has(const StFile *st, const cJSON *meta, const char *prefix, const char *name)
{
	char		key[512];

	snprintf(key, sizeof(key), "%s.%s", prefix, name);
	return st_find(st, key) != NULL ||
		cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "zero_tensors"), "shapes"), key) != NULL;
}

/* The fixture's tensor name (prefix.name), or zeros when the JSON lists it as all zeros. */
static void
read_tensor(const StFile *st, const cJSON *meta, const char *prefix, const char *name, real *dst,
			size_t count)
{
	char		key[512];
	const StTensor *t;
	PeftError	err = {0};

	snprintf(key, sizeof(key), "%s.%s", prefix, name);
	if ((t = st_find(st, key)) == NULL)
	{
		const cJSON *zeros = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "zero_tensors"), "shapes");

		if (cJSON_GetObjectItem(zeros, key) == NULL)
			fail_msg("the fixture has no tensor %s", key);
		memset(dst, 0, sizeof(real) * count);
		return;
	}
	assert_int_equal(t->nelem, count);
	assert_int_equal(st_to_real(t, dst, count, &err), PEFT_OK);
}

/* The adapter options of a run, as the fixture's PEFT config says. */
static DecoderAdapterOptions
run_options(const char *run)
{
	DecoderAdapterOptions o = {.r = 8, .alpha = 16, .seed = 1};

	if (strcmp(run, "ia3") == 0)
	{
		o.method = DAD_IA3;
		o.targets[LLAMA_K] = o.targets[LLAMA_V] = o.targets[LLAMA_DOWN] = true;
		o.feedforward[LLAMA_DOWN] = true;
	}
	else if (strcmp(run, "prompt") == 0)
		o = (DecoderAdapterOptions) {.method = DAD_PROMPT, .virtual_tokens = 8, .seed = 1};
	else if (strcmp(run, "prefix") == 0)
		o = (DecoderAdapterOptions) {.method = DAD_PREFIX, .virtual_tokens = 8, .seed = 1};
	else if (strcmp(run, "adapter") == 0)
		o = (DecoderAdapterOptions) {.method = DAD_BOTTLENECK, .reduction = 64, .after_attention = true, .seed = 1};
	else
	{
		o.method = strcmp(run, "dora") == 0 ? DAD_DORA : DAD_LORA;
		o.targets[LLAMA_Q] = o.targets[LLAMA_V] = true;
	}
	return o;
}

/* Replace every parameter by the fixture's init.<name> (Hugging Face layout, turned to the model's). */
static void
load_initial(DecoderAdapter *ad, const StFile *st, const cJSON *meta)
{
	ParamSet   *ps = &ad->params;
	StWriteTensor *w = calloc(ps->count, sizeof(StWriteTensor));
	real	   *hf = malloc(sizeof(real) * ps->total);
	uint8_t    *bytes;
	size_t		len;
	PeftError	err = {0};

	for (int i = 0; i < ps->count; i++)
	{
		const Param *p = &ps->items[i];

		read_tensor(st, meta, "init", p->name, hf + p->offset, p->count);
		w[i] = (StWriteTensor) {.name = p->name, .ndim = p->ndim, .shape = {p->shape[0], p->shape[1]},
		.data = hf + p->offset};
	}
	assert_int_equal(st_serialize(w, ps->count, NULL, NULL, 0, &bytes, &len, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_load(ad, bytes, len, &err), PEFT_OK);
	free(bytes);
	free(w);
	free(hf);
}

/*
 * Compare every parameter's (gradient or value) with the fixture's
 * prefix.<name> times scale: the l2 relative difference over the whole
 * adapter must stay under tol; the normwise figure (the largest difference
 * over the largest value) is printed beside it.
 */
static double
compare_params(DecoderAdapter *ad, const StFile *st, const cJSON *meta, const char *prefix,
			   const real *mine, double scale, double tol, const char *what)
{
	ParamSet   *ps = &ad->params;
	real	   *want = malloc(sizeof(real) * ps->total);
	real	   *got = malloc(sizeof(real) * ps->total);
	Compare		l2,
				norm;
	char		what_norm[96];

	for (int i = 0; i < ps->count; i++)
	{
		const Param *p = &ps->items[i];

		read_tensor(st, meta, prefix, p->name, want + p->offset, p->count);
		decoder_adapter_tensor_to_hf(ad, i, mine + p->offset, got + p->offset);
	}
	snprintf(what_norm, sizeof(what_norm), "%s (normwise, measured only)", what);
	compare_begin_l2(&l2, what, tol, 1e-12);
	compare_begin_norm(&norm, what_norm, 1.0, 1e-12);
	for (size_t j = 0; j < ps->total; j++)
	{
		compare_add(&l2, j, got[j], want[j] * scale);
		compare_add(&norm, j, got[j], want[j] * scale);
	}
	compare_end(&l2);
	compare_end(&norm);
	printf("  %s: l2 relative %.1e, normwise %.1e\n", what, compare_norm_error(&l2), compare_norm_error(&norm));
	free(want);
	free(got);
	return compare_norm_error(&l2);
}

/* dir/name of the fixture read whole into *len bytes (test failure when absent). */
static char *
read_whole(const char *dir, const char *name, size_t *len)
{
	char		path[1024];
	char	   *buf = NULL;
	PeftError	err = {0};

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(read_small_file(source_path(path), 64 << 20, &buf, len, &err), PEFT_OK);
	return buf;
}

/*
 * PEFT's final LoRA adapter as save_pretrained wrote it (lora_adapter/),
 * imported here: the last position's logits of the fixture's held-out
 * prompts against PEFT's own (final_logits).
 */
static void
check_import(DecoderHandle *h, const StFile *st, const cJSON *meta)
{
	const char *dir = "test/fixtures/reference/decoder_train/lora_adapter";
	const cJSON *prompts = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "final"), "held_out_prompts");
	const StTensor *t = st_find(st, "final_logits");
	int			V = (int) t->shape[1];
	real	   *want = malloc(sizeof(real) * t->nelem);
	float	   *got = malloc(sizeof(float) * V);
	size_t		config_len,
				weights_len;
	char	   *config = read_whole(dir, "adapter_config.json", &config_len);
	char	   *weights = read_whole(dir, "adapter_model.safetensors", &weights_len);
	DecoderAdapter *ad;
	PeftError	err = {0};
	double		worst = 0;

	assert_int_equal(st_to_real(t, want, t->nelem, &err), PEFT_OK);
	assert_int_equal(dadapter_open(h, config, config_len, (const uint8_t *) weights, weights_len, &ad, &err),
					 PEFT_OK);
	assert_int_equal(cJSON_GetArraySize(prompts), (int) t->shape[0]);
	for (int i = 0; i < (int) t->shape[0]; i++)
	{
		const cJSON *ids_json = cJSON_GetObjectItem(cJSON_GetArrayItem(prompts, i), "prompt_ids");
		int			n = cJSON_GetArraySize(ids_json);
		int32_t    *ids = malloc(sizeof(int32_t) * n);

		for (int k = 0; k < n; k++)
			ids[k] = cJSON_GetArrayItem(ids_json, k)->valueint;
		assert_int_equal(decoder_handle_logits(h, ad, ids, n, got, &err), PEFT_OK);
		for (int v = 0; v < V; v++)
		{
			double		d = fabs((double) got[v] - want[(size_t) i * V + v]);

			if (!(d <= worst))
				worst = d;
		}
		free(ids);
	}
	printf("  PEFT's final LoRA adapter imported: last-position logits of %d prompts within %.2e of PEFT's\n",
		   (int) t->shape[0], worst);
	assert_true(worst <= TOL_IMPORT_LOGITS);
	decoder_adapter_free(ad);
	free(config);
	free(weights);
	free(want);
	free(got);
}

/* One run of the fixture: tokenisation, losses per step, step-1 gradients, final weights. */
static void
check_run(DecoderHandle *h, const char *run)
{
	char		path[1024];
	const GenerateModel *g = decoder_handle_gen(h);
	cJSON	   *meta;
	StFile	   *st;
	const cJSON *rows,
			   *losses,
			   *norms,
			   *lrs,
			   *opt;
	Dataset		ds = {0};
	uint32_t   *order;
	int			nrows,
				steps;
	DecoderAdapterOptions ao = run_options(run);
	DecoderAdapter *ad;
	CausalLM   *lm;
	DecoderTrainer *tr;
	TrainOptions to;
	PeftError	err = {0};
	double		worst_loss = 0;

	snprintf(path, sizeof(path), "test/fixtures/reference/decoder_train/%s.json", run);
	meta = load_json_file(source_path(path));
	snprintf(path, sizeof(path), "test/fixtures/reference/decoder_train/%s.safetensors", run);
	assert_int_equal(st_open_file(source_path(path), &st, &err), PEFT_OK);
	rows = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "data"), "rows");
	losses = cJSON_GetObjectItem(meta, "losses");
	norms = cJSON_GetObjectItem(meta, "grad_norms");
	lrs = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "schedule"), "lr_per_step");
	opt = cJSON_GetObjectItem(meta, "optimizer");
	steps = cJSON_GetArraySize(losses);
	nrows = cJSON_GetArraySize(rows);
	assert_int_equal(nrows, 4 * steps);

	/* the rows as training tokenises them: the reference's ids */
	for (int i = 0; i < nrows; i++)
	{
		const cJSON *r = cJSON_GetArrayItem(rows, i);
		const char *prompt = cJSON_GetObjectItem(r, "prompt")->valuestring;
		const char *completion = cJSON_GetObjectItem(r, "completion")->valuestring;
		const cJSON *want_p = cJSON_GetObjectItem(r, "prompt_ids");
		const cJSON *want_c = cJSON_GetObjectItem(r, "completion_ids");
		int32_t    *p,
				   *c,
				   *ids;
		int			np;
		size_t		nc;

		assert_int_equal(generate_prompt_ids(g, prompt, strlen(prompt), true, NULL, &p, &np, &err), PEFT_OK);
		assert_int_equal(bpe_encode_alloc(g->tokenizer, completion, strlen(completion), false, &c, &nc, &err),
						 PEFT_OK);
		assert_int_equal(np, cJSON_GetArraySize(want_p));
		assert_int_equal((int) nc + 1, cJSON_GetArraySize(want_c));
		ids = malloc(sizeof(int32_t) * (np + nc + 1));
		for (int k = 0; k < np; k++)
			assert_int_equal(p[k], cJSON_GetArrayItem(want_p, k)->valueint);
		for (size_t k = 0; k < nc; k++)
			assert_int_equal(c[k], cJSON_GetArrayItem(want_c, k)->valueint);
		assert_int_equal(g->end_of_turn, cJSON_GetArrayItem(want_c, nc)->valueint);
		memcpy(ids, p, sizeof(int32_t) * np);
		memcpy(ids + np, c, sizeof(int32_t) * nc);
		ids[np + nc] = g->end_of_turn;
		assert_int_equal(dataset_add_ids(&ds, ids, np + (int) nc + 1, np, &err), PEFT_OK);
		free(p);
		free(c);
		free(ids);
	}

	assert_int_equal(decoder_adapter_create(g->model, &ao, &ad, &err), PEFT_OK);
	load_initial(ad, st, meta);
	assert_int_equal(causal_lm_create(g->model, ad, &lm, &err), PEFT_OK);
	train_options_default(&to);
	to.epochs = 1;
	to.batch_size = 4;
	to.grad_accum = 1;
	to.learning_rate = cJSON_GetObjectItem(opt, "lr")->valuedouble;
	to.weight_decay = cJSON_GetObjectItem(opt, "weight_decay")->valuedouble;
	to.warmup_ratio = 0.06;
	to.warmup_steps = -1;
	to.schedule = PEFT_SCHEDULE_LINEAR;
	to.max_grad_norm = 1.0;
	to.max_steps = 0;
	to.shuffle = false;
	order = malloc(sizeof(uint32_t) * nrows);
	for (int i = 0; i < nrows; i++)
		order[i] = i;
	assert_int_equal(decoder_trainer_create(lm, ad, &ds, order, nrows, &to, &tr, &err), PEFT_OK);
	assert_int_equal(decoder_trainer_total_steps(tr), steps);

	for (int k = 0; k < steps; k++)
	{
		PeftTrainProgress p;
		double		want = cJSON_GetArrayItem(losses, k)->valuedouble;
		double		rel;

		assert_int_equal(decoder_trainer_step(tr, &p, &err), PEFT_OK);
		rel = fabs(p.loss - want) / fabs(want);
		worst_loss = rel > worst_loss || isnan(rel) ? rel : worst_loss;
		printf("  %s step %2d: loss %.7f (PEFT %.7f, rel %.1e), grad norm %.5f (PEFT %.5f), lr %.3g (PEFT %.3g)\n",
			   run, k + 1, p.loss, want, rel, p.grad_norm, cJSON_GetArrayItem(norms, k)->valuedouble,
			   p.learning_rate, cJSON_GetArrayItem(lrs, k)->valuedouble);
		assert_true(isfinite(p.loss) && rel <= TOL_LOSS_REL);
		assert_true(fabs(p.learning_rate - cJSON_GetArrayItem(lrs, k)->valuedouble) <= 1e-12);
		if (k == 0)
		{
			/* the optimizer left the gradients clipped: PEFT's times torch's clip coefficient */
			double		norm = cJSON_GetArrayItem(norms, 0)->valuedouble;
			double		coef = fmin(1.0, 1.0 / (norm + 1e-6));
			char		what[64];
			double		e;

			double		tol = strcmp(run, "prompt") == 0 ? TOL_GRAD1_PROMPT_L2 : TOL_GRAD1_L2;

			snprintf(what, sizeof(what), "%s step-1 gradients", run);
			e = compare_params(ad, st, meta, "grad1", ad->params.grads, coef, tol, what);
			printf("  %s step-1 gradient norm %.6f (PEFT %.6f); l2 %.1e\n", run, p.grad_norm, norm, e);
			assert_true(fabs(p.grad_norm - norm) / norm <= tol);
			if (fixture_has(st, meta, "grad64", ad->params.items[0].name))
			{
				/* the exact gradients, clipped by the same coefficient */
				snprintf(what, sizeof(what), "%s step-1 gradients against float64", run);
				compare_params(ad, st, meta, "grad64", ad->params.grads, coef, TOL_GRAD1_F64_L2, what);
			}
		}
	}
	printf("  %s: %d steps, worst loss difference %.1e relative\n", run, steps, worst_loss);
	if (st_find(st, "final_logits") != NULL)
	{
		char		what[64];

		snprintf(what, sizeof(what), "%s final adapter", run);
		compare_params(ad, st, meta, "final", ad->params.values, 1.0, TOL_FINAL_L2, what);
	}
	if (st_find(st, "final_logits") != NULL)
		check_import(h, st, meta);
	decoder_trainer_free(tr);
	causal_lm_free(lm);
	decoder_adapter_free(ad);
	dataset_free(&ds);
	free(order);
	st_close(st);
	cJSON_Delete(meta);
}

/* The runs over the real model. */
static void
test_against_peft(void **state)
{
	const char *gguf = real_decoder_gguf();
	DecoderHandle *h;
	PeftError	err = {0};

	require_real_decoder(gguf != NULL);
	if (gguf == NULL)
		return;
	assert_int_equal(decoder_handle_open(gguf, &h, NULL, &err), PEFT_OK);
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++)
		check_run(h, runs[i]);
	decoder_handle_close(h);
}

static int
setup(void **state)
{
	return peft_threads_init(2, NULL) == PEFT_OK ? 0 : -1;
}

static int
teardown(void **state)
{
	peft_threads_shutdown();
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_against_peft),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
