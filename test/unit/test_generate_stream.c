/*
 * test_generate_stream.c - the continuous-batching stream (engine_api.h's
 * stream_*) against generate, on the real SmolLM2-135M-Instruct Q4_1
 * GGUF with adapters of several methods (their parameters moved off their
 * start, so each changes the text), opened through adapter_open as a
 * server would:
 *  - greedy completions equal generate's exactly (text, tokens, finish
 *    reason) for prompts joining at different steps, through the base
 *    model, LoRA, IA3, prompt tuning, prefix tuning and a bottleneck in one
 *    stream, more prompts than slots (slots reused by other adapters, and
 *    the decoder remade for the virtual tokens of a later one);
 *  - sampled ones equal generate's for the prompt at the same index of a
 *    call (0 and 3);
 *  - cancelling a queued and a live sequence, stop strings, one new token;
 *  - merged adapters and requests longer than a slot are "alone"; bad
 *    options are errors and queue nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "decoder_adapter.h"
#include "engine_api.h"
#include "llama_model.h"
#include "rng.h"
#include "test_util.h"

static const PeftEngineApi *api;
static PeftModelHandle *model;
static LlamaModel *base;		/* the same weights, to make adapters over */

/* Adapters of the tests: index 0 is the base model (NULL). */
enum
{
	BASE, LORA, IA3, PROMPT, PREFIX, BOTTLENECK, NADAPTERS
};
static const char *const adapter_name[NADAPTERS] = {
	"base", "lora", "ia3", "prompt tuning", "prefix tuning", "bottleneck"
};
static const DecoderAdapterOptions adapter_options[NADAPTERS] = {
	[LORA] = {.method = DAD_LORA, .r = 4, .alpha = 8, .targets = {true, true, true, true, true, true, true}},
	[IA3] = {.method = DAD_IA3, .targets = {false, true, true, false, false, false, true},
	.feedforward = {false, false, false, false, false, false, true}},
	[PROMPT] = {.method = DAD_PROMPT, .virtual_tokens = 4},
	[PREFIX] = {.method = DAD_PREFIX, .virtual_tokens = 3},
	[BOTTLENECK] = {.method = DAD_BOTTLENECK, .reduction = 8, .after_attention = true},
};
static PeftAdapterHandle *adapters[NADAPTERS];

static const char *const prompts[] = {
	"The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
	"The three primary colors are", "In 1969, the first", "Water boils at",
	"My favourite book is", "The best way to learn a language is"
};
#define NPROMPTS ((int) (sizeof(prompts) / sizeof(prompts[0])))

/* One request of a stream. */
typedef struct Request
{
	int			prompt;
	int			adapter;
	int			max_new;
	int			index;			/* in its generate call */
	const char *stop;			/* or NULL */
} Request;

/* An adapter of options o over the model, parameters moved by seed, opened as a server opens one. */
static PeftAdapterHandle *
open_adapter(DecoderAdapterOptions o, uint64_t seed)
{
	DecoderAdapter *ad;
	PeftAdapterHandle *h;
	PeftError	err = {0};
	PeftRng		rng;
	uint8_t    *weights;
	size_t		len;
	char	   *config;

	assert_int_equal(decoder_adapter_create(base, &o, &ad, &err), PEFT_OK);
	peft_rng_seed(&rng, seed);
	for (size_t i = 0; i < ad->params.total; i++)
		ad->params.values[i] += (real) (0.1 * (2 * peft_rng_uniform(&rng) - 1));
	assert_int_equal(decoder_adapter_refresh(ad, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_serialize(ad, &weights, &len, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_config_json(ad, "smollm2", &config, &err), PEFT_OK);
	if (api->adapter_open(model, config, strlen(config), weights, len, PEFT_TASK_GENERATION, 0, &h,
						  &err) != PEFT_OK)
		fail_msg("adapter_open: %s", err.message);
	free(weights);
	free(config);
	decoder_adapter_free(ad);
	return h;
}

/* The options of a request: raw text, greedy unless sampled is given. */
static PeftGenerateOptions
request_options(const Request *r, const PeftGenerateOptions *sampled, const char **stop)
{
	PeftGenerateOptions o;

	api->generate_defaults(&o);
	if (sampled)
		o = *sampled;
	o.chat = 0;
	o.max_new_tokens = r->max_new;
	if (r->stop)
	{
		stop[0] = r->stop;
		o.stop = stop;
		o.nstop = 1;
	}
	return o;
}

/*
 * generate's completion of r: its prompt at r->index of a call of at
 * least calln prompts (the others the same prompt).
 */
static PeftGeneration
reference(const Request *r, const PeftGenerateOptions *sampled, int calln)
{
	const char *stop[1];
	PeftGenerateOptions o = request_options(r, sampled, stop);
	int			n = r->index + 1 > calln ? r->index + 1 : calln;
	const char **texts = malloc(sizeof(char *) * n);
	size_t	   *lens = malloc(sizeof(size_t) * n);
	PeftGeneration *out = calloc(n, sizeof(PeftGeneration));
	PeftGeneration want;
	PeftError	err = {0};

	for (int i = 0; i < n; i++)
	{
		texts[i] = prompts[r->prompt];
		lens[i] = strlen(prompts[r->prompt]);
	}
	if (api->generate(model, adapters[r->adapter], texts, lens, n, &o, out, &err) != PEFT_OK)
		fail_msg("generate: %s", err.message);
	want = out[r->index];
	for (int i = 0; i < n; i++)
		if (i != r->index)
			api->free_buffer(out[i].text);
	free(texts);
	free(lens);
	free(out);
	return want;
}

/* Queue request k of reqs (tag k); it must share the stream. */
static void
add(PeftGenStream *st, const Request *reqs, int k, const PeftGenerateOptions *sampled)
{
	const char *stop[1];
	PeftGenerateOptions o = request_options(&reqs[k], sampled, stop);
	const char *p = prompts[reqs[k].prompt];
	bool		alone = true;
	PeftError	err = {0};

	if (api->stream_add(st, adapters[reqs[k].adapter], p, strlen(p), &o, reqs[k].index, (uint64_t) k,
						&alone, &err) != PEFT_OK)
		fail_msg("stream_add: %s", err.message);
	assert_false(alone);
}

/* Step st n times (n < 0: until nothing is pending), each result into got[tag] (seen once). */
static void
step(PeftGenStream *st, int n, PeftStreamResult *got, bool *seen, int ntags)
{
	for (int i = 0; n < 0 ? api->stream_pending(st) > 0 : i < n; i++)
	{
		PeftStreamResult *res;
		int			nres;
		PeftError	err = {0};

		if (api->stream_step(st, &res, &nres, &err) != PEFT_OK)
			fail_msg("stream_step: %s", err.message);
		for (int j = 0; j < nres; j++)
		{
			assert_true(res[j].tag < (uint64_t) ntags);
			assert_false(seen[res[j].tag]);
			if (res[j].code != PEFT_OK)
				fail_msg("sequence %d failed: %s", (int) res[j].tag, res[j].message);
			seen[res[j].tag] = true;
			got[res[j].tag] = res[j];
		}
		api->free_buffer(res);
	}
}

/* The stream's result for request r equals generate's; both texts freed. */
static void
check_same(const Request *r, PeftStreamResult *got, PeftGeneration want)
{
	printf("  %-13s idx %d max %2d: %2d tokens %s %s\"%.60s\"\n", adapter_name[r->adapter], r->index,
		   r->max_new, got->gen.tokens, got->gen.finish == PEFT_FINISH_STOP ? "stop  " : "length",
		   strcmp(got->gen.text, want.text) == 0 ? "" : "DIFFERS ", got->gen.text);
	assert_string_equal(got->gen.text, want.text);
	assert_int_equal(got->gen.tokens, want.tokens);
	assert_int_equal(got->gen.finish, want.finish);
	assert_int_equal(got->gen.prompt_tokens, want.prompt_tokens);
	api->free_buffer(got->gen.text);
	api->free_buffer(want.text);
}

/*
 * Greedy: ten requests over every adapter into 4 slots, joining at three
 * different steps: each equals generate's.  The prompt-tuning request
 * waits for the live ones to end, then the decoder is remade with room
 * for its virtual tokens; slots are reused by other adapters throughout.
 */
static void
test_greedy_matches_generate(void **state)
{
	static const Request reqs[] = {
		{0, BASE, 6, 0, NULL}, {1, LORA, 9, 0, NULL}, {2, IA3, 4, 0, NULL},
		{3, BOTTLENECK, 8, 0, NULL}, {4, PROMPT, 7, 0, NULL}, {5, PREFIX, 5, 0, NULL},
		{6, LORA, 6, 0, NULL}, {7, IA3, 8, 0, NULL}, {0, PREFIX, 6, 0, NULL}, {1, BOTTLENECK, 5, 0, NULL}
	};
	enum
	{
		N = sizeof(reqs) / sizeof(reqs[0])
	};
	PeftStreamResult got[N];
	bool		seen[N] = {0};
	PeftGenStream *st;
	PeftError	err = {0};

	require_real_decoder(model != NULL);
	assert_int_equal(api->stream_create(model, 4, 0, &st, &err), PEFT_OK);
	for (int k = 0; k < 3; k++)
		add(st, reqs, k, NULL);
	step(st, 2, got, seen, N);
	for (int k = 3; k < 6; k++)
		add(st, reqs, k, NULL);
	assert_int_equal(api->stream_pending(st), 6 - (seen[0] + seen[1] + seen[2]));
	step(st, 1, got, seen, N);
	for (int k = 6; k < N; k++)
		add(st, reqs, k, NULL);
	step(st, -1, got, seen, N);
	for (int k = 0; k < N; k++)
	{
		assert_true(seen[k]);
		check_same(&reqs[k], &got[k], reference(&reqs[k], NULL, 1));
	}
	api->stream_free(st);
}

/*
 * Sampled (temperature 0.8, top_p 0.9): one prompt at indexes 0 to 3 of a
 * call, admitted together, equals generate's call of the four (each index
 * its own seed: index 0's text differs from index 3's); then an index-0
 * prompt joining the running batch equals generate's alone.
 *
 * Like-shaped batches are compared because the products themselves depend
 * on how many rows a call has (int16 matrix-vector kernels up to 4 rows,
 * BLAS tiles beyond, BLAS's own blocking): generate's sampled text for a
 * prompt at index 3 changes with its companions (measured: 6 equal tokens,
 * then one near a sampling boundary went the other way), while greedy
 * texts did not.
 */
static void
test_sampled_matches_generate(void **state)
{
	static const Request reqs[] = {
		{1, LORA, 12, 0, NULL}, {1, LORA, 12, 1, NULL}, {1, LORA, 12, 2, NULL}, {1, LORA, 12, 3, NULL},
		{5, PREFIX, 10, 0, NULL}
	};
	enum
	{
		N = sizeof(reqs) / sizeof(reqs[0])
	};
	PeftGenerateOptions sampled;
	PeftStreamResult got[N];
	bool		seen[N] = {0};
	PeftGenStream *st;
	PeftError	err = {0};

	require_real_decoder(model != NULL);
	api->generate_defaults(&sampled);
	sampled.temperature = 0.8;
	sampled.top_p = 0.9;
	sampled.seed = 1234;
	assert_int_equal(api->stream_create(model, 4, 0, &st, &err), PEFT_OK);
	for (int k = 0; k < 4; k++)
		add(st, reqs, k, &sampled);
	step(st, 3, got, seen, N);
	add(st, reqs, 4, &sampled);
	step(st, -1, got, seen, N);
	assert_true(strcmp(got[0].gen.text, got[3].gen.text) != 0);
	for (int k = 0; k < N; k++)
		check_same(&reqs[k], &got[k], reference(&reqs[k], &sampled, k < 4 ? 4 : 1));
	api->stream_free(st);
}

/*
 * Two slots: a queued and a live sequence cancelled (their results never
 * come, the freed slot takes the next); a stop string; max_new_tokens 1.
 */
static void
test_cancel_stop_one_token(void **state)
{
	Request		reqs[] = {
		{0, LORA, 8, 0, NULL}, {1, BASE, 30, 0, NULL}, {2, IA3, 8, 0, NULL}, {3, PROMPT, 10, 0, NULL}, {4, BASE, 1, 0, NULL}, {5, PREFIX, 1, 0, NULL}
	};
	enum
	{
		N = sizeof(reqs) / sizeof(reqs[0])
	};
	PeftStreamResult got[N];
	bool		seen[N] = {0};
	PeftGenStream *st;
	PeftError	err = {0};
	PeftGeneration plain;
	char		stop[8];

	require_real_decoder(model != NULL);
	/* a stop string from the middle of request 3's text without one */
	plain = reference(&reqs[3], NULL, 1);
	assert_true(strlen(plain.text) > 8);
	snprintf(stop, sizeof(stop), "%.3s", plain.text + strlen(plain.text) / 2);
	api->free_buffer(plain.text);
	reqs[3].stop = stop;

	assert_int_equal(api->stream_create(model, 2, 0, &st, &err), PEFT_OK);
	for (int k = 0; k < 3; k++)
		add(st, reqs, k, NULL);
	step(st, 1, got, seen, N);
	assert_int_equal(api->stream_pending(st), 3);
	assert_true(api->stream_cancel(st, 2));	/* queued */
	assert_true(api->stream_cancel(st, 1));	/* live */
	assert_false(api->stream_cancel(st, 1));
	assert_false(api->stream_cancel(st, 77));
	assert_int_equal(api->stream_pending(st), 1);
	for (int k = 3; k < N; k++)
		add(st, reqs, k, NULL);
	step(st, -1, got, seen, N);
	assert_false(seen[1]);
	assert_false(seen[2]);
	assert_int_equal(got[3].gen.finish, PEFT_FINISH_STOP);
	assert_null(strstr(got[3].gen.text, stop));
	assert_int_equal(got[4].gen.tokens, 1);
	assert_int_equal(got[5].gen.tokens, 1);
	for (int k = 0; k < N; k++)
		if (k != 1 && k != 2)
			check_same(&reqs[k], &got[k], reference(&reqs[k], NULL, 1));
	api->stream_free(st);
}

/*
 * Alone: a merged adapter, a request past one slot's positions; errors
 * for bad options, a system message on a raw prompt and a prompt past the
 * context; nothing of them queued.  A stream freed with work queued and
 * live leaks nothing (the sanitized build checks).
 */
static void
test_alone_and_errors(void **state)
{
	size_t		per_position;
	PeftAdapterHandle *merged;
	PeftGenStream *st;
	PeftGenerateOptions o;
	PeftStreamResult *res;
	int			nres;
	bool		alone;
	PeftError	err = {0};
	const char *p = prompts[0];
	size_t		big = 40000;
	char	   *huge;
	int32_t    *ids;
	int			n;

	require_real_decoder(model != NULL);
	/* a cache position: layers x 2 x key/value heads x head_dim floats */
	per_position = (size_t) base->cfg.num_layers * 2 * base->cfg.num_kv_heads * base->cfg.head_dim *
		sizeof(float);
	assert_int_equal(api->tokenize(model, p, strlen(p), false, NULL, &ids, &n, &err), PEFT_OK);
	api->free_buffer(ids);
	merged = open_adapter(adapter_options[LORA], 99);
	assert_int_equal(api->adapter_merge(merged, &err), PEFT_OK);
	/* two slots of 40 positions */
	assert_int_equal(api->stream_create(model, 2, 2 * 40 * per_position, &st, &err), PEFT_OK);
	api->generate_defaults(&o);
	o.chat = 0;
	o.max_new_tokens = 8;

	assert_int_equal(api->stream_step(st, &res, &nres, &err), PEFT_OK);
	assert_int_equal(nres, 0);
	api->free_buffer(res);

	assert_int_equal(api->stream_add(st, merged, p, strlen(p), &o, 0, 1, &alone, &err), PEFT_OK);
	assert_true(alone);
	o.max_new_tokens = 40 - n + 1;
	assert_int_equal(api->stream_add(st, NULL, p, strlen(p), &o, 0, 2, &alone, &err), PEFT_OK);
	assert_true(alone);
	assert_int_equal(api->stream_pending(st), 0);
	/* the prompt's tokens and these fill a slot exactly */
	o.max_new_tokens = 40 - n;
	assert_int_equal(api->stream_add(st, NULL, p, strlen(p), &o, 0, 3, &alone, &err), PEFT_OK);
	assert_false(alone);
	assert_int_equal(api->stream_pending(st), 1);

	o.max_new_tokens = 0;
	assert_int_equal(api->stream_add(st, NULL, p, strlen(p), &o, 0, 4, &alone, &err), PEFT_ERR_INVALID);
	o.max_new_tokens = 8;
	o.temperature = -1;
	assert_int_equal(api->stream_add(st, adapters[LORA], p, strlen(p), &o, 0, 5, &alone, &err),
					 PEFT_ERR_INVALID);
	o.temperature = 0;
	o.system = "Be brief.";
	assert_int_equal(api->stream_add(st, NULL, p, strlen(p), &o, 0, 6, &alone, &err), PEFT_ERR_INVALID);
	printf("  a system message on a raw prompt: %s\n", err.message);
	o.system = NULL;
	assert_int_equal(api->stream_add(st, NULL, p, strlen(p), &o, -1, 7, &alone, &err), PEFT_ERR_INVALID);
	huge = malloc(big * 2 + 1);
	for (size_t i = 0; i < big; i++)
		memcpy(huge + 2 * i, " a", 2);
	huge[2 * big] = '\0';
	assert_int_equal(api->stream_add(st, adapters[PROMPT], huge, 2 * big, &o, 0, 8, &alone, &err),
					 PEFT_ERR_INVALID);
	printf("  a long prompt: %s\n", err.message);
	free(huge);
	assert_false(alone);
	assert_int_equal(api->stream_pending(st), 1);

	/* a live and a queued sequence left in the stream at its end */
	assert_int_equal(api->stream_add(st, adapters[IA3], p, strlen(p), &o, 0, 9, &alone, &err), PEFT_OK);
	assert_int_equal(api->stream_add(st, adapters[PREFIX], p, strlen(p), &o, 0, 10, &alone, &err), PEFT_OK);
	assert_int_equal(api->stream_step(st, &res, &nres, &err), PEFT_OK);
	assert_int_equal(nres, 0);
	api->free_buffer(res);
	assert_int_equal(api->stream_pending(st), 3);
	api->stream_free(st);
	api->adapter_close(merged);

	/* a cache too small for its slots */
	assert_int_equal(api->stream_create(model, 4, per_position * 4, &st, &err), PEFT_ERR_INVALID);
	assert_null(st);
}

static int
setup(void **state)
{
	const char *gguf = real_decoder_gguf();
	PeftError	err = {0};

	api = peft_engine_api();
	if (api->init(2, &err) != PEFT_OK)
		return -1;
	if (gguf == NULL)
		return 0;
	if (api->model_open(gguf, &model, &(PeftModelInfo) {0}, &err) != PEFT_OK ||
		llama_model_load(gguf, &base, &err) != PEFT_OK)
	{
		print_error("%s\n", err.message);
		return -1;
	}
	for (int k = 1; k < NADAPTERS; k++)
		adapters[k] = open_adapter(adapter_options[k], 17 + k);
	return 0;
}

static int
teardown(void **state)
{
	for (int k = 0; k < NADAPTERS; k++)
		if (adapters[k])
			api->adapter_close(adapters[k]);
	if (model)
		api->model_close(model);
	if (base)
		llama_model_free(base);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greedy_matches_generate),
		cmocka_unit_test(test_sampled_matches_generate),
		cmocka_unit_test(test_cancel_stop_one_token),
		cmocka_unit_test(test_alone_and_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
