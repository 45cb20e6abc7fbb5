/*
 * test_mixed_batch.c - batches whose rows belong to different adapters
 * (predict_mixed, embed_mixed; network_forward_mixed underneath): every
 * row's outputs equal what its adapter gives alone, for every method and
 * for all of them mixed in one batch, through the engine's table as the
 * SQL layer calls it.  Also: which networks can share the base's pass,
 * and the errors of bad requests.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "adapter_io.h"
#include "compare.h"
#include "engine_api.h"
#include "method_table.h"
#include "network.h"
#include "test_util.h"
#include "tiny_model_fixture.h"
#include "method_fixture.h"

/*
 * Mixed against alone: the same products over different row counts, so
 * only summation order may differ.  Measured: identical (0) on the CPU;
 * bound at float rounding of the tiny model's outputs.
 */
#define MIXED_TOLERANCE 1e-6

/* The methods mixed: every one (a merged adapter, below, computes apart). */
static const char *const methods[] = {
	"lora", "dora", "ia3", "bitfit", "adapter", "lora+bitfit", "dora+bitfit+adapter",
	"ia3+bitfit", "ia3+adapter", "prompt", "prefix", "lora+prompt"
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

/* Adapters of the test: each method, a regression LoRA and a merged LoRA. */
#define NADAPTERS (NMETHODS + 2)
#define NROWS 40

static const PeftEngineApi *api;
static PeftModelHandle *handle;
static PeftAdapterHandle *adapters[NADAPTERS];
static int	num_labels[NADAPTERS];
static const char *texts[NROWS];
static size_t lengths[NROWS];

/*
 * An adapter of method opened through the engine's table from its config
 * and weights, every parameter moved off its initial value (so each
 * method changes the outputs, and a row sent through the wrong adapter
 * shows).
 */
static PeftAdapterHandle *
open_adapter(const char *method, PeftTask task, int K, uint64_t seed)
{
	NetworkOptions o = method_options_for(method, task, K);
	Network    *net = perturbed_network(&o, seed);
	PeftAdapterHandle *h;
	char	   *config;
	uint8_t    *bytes;
	size_t		len;
	PeftError	err = {0};

	assert_int_equal(adapter_config_json(net, "tiny", &config, &err), PEFT_OK);
	assert_int_equal(adapter_serialize(net, &bytes, &len, &err), PEFT_OK);
	if (api->adapter_open(handle, config, strlen(config), bytes, len, task, K, &h, &err) != PEFT_OK)
		fail_msg("%s: %s", method, err.message);
	free(config);
	free(bytes);
	network_free(net);
	return h;
}

/* Open the model through the table, and one adapter of each kind; make the rows. */
static int
setup(void **state)
{
	static char store[NROWS][96];
	static const char *const words[] = {
		"the", "movie", "was", "good", "bad", "service", "terrible", "great", "food", "today"
	};
	PeftError	err = {0};

	if (tiny_setup(state) != 0)
		return -1;
	api = peft_engine_api();
	if (api->model_open(tiny_model_dir(), &handle, &(PeftModelInfo) {0}, &err) != PEFT_OK)
		return -1;
	for (size_t k = 0; k < NMETHODS; k++)
	{
		adapters[k] = open_adapter(methods[k], PEFT_TASK_CLASSIFICATION, 3, 17 + k);
		num_labels[k] = 3;
	}
	adapters[NMETHODS] = open_adapter("lora", PEFT_TASK_REGRESSION, 1, 99);
	num_labels[NMETHODS] = 1;
	adapters[NMETHODS + 1] = open_adapter("lora", PEFT_TASK_CLASSIFICATION, 3, 7);
	num_labels[NMETHODS + 1] = 3;
	if (api->adapter_merge(adapters[NMETHODS + 1], &err) != PEFT_OK)
		return -1;
	/* rows of 1 to 12 words: different lengths, so segments have different row counts */
	for (int i = 0; i < NROWS; i++)
	{
		int			n = 1 + (i * 5) % 12;

		store[i][0] = '\0';
		for (int w = 0; w < n; w++)
		{
			strcat(store[i], words[(i * 3 + w * 7) % 10]);
			strcat(store[i], " ");
		}
		texts[i] = store[i];
		lengths[i] = strlen(store[i]);
	}
	return 0;
}

/* Close everything setup opened. */
static int
teardown(void **state)
{
	for (size_t k = 0; k < NADAPTERS; k++)
		api->adapter_close(adapters[k]);
	api->model_close(handle);
	return tiny_teardown(state);
}

/* Row i's adapter in the mixed tests: interleaved, so no adapter's rows are adjacent. */
static int
adapter_of(int i, int count)
{
	return (i * 5 + i / count) % count;
}

/* predict_mixed over rows of count adapters (from first) equals each adapter alone. */
static void
check_predict(const char *what, int first, int count)
{
	PeftAdapterHandle *row_adapter[NROWS];
	float		mixed[NROWS * 3];
	float		alone[3];
	Compare		c;
	PeftError	err = {0};

	for (int i = 0; i < NROWS; i++)
		row_adapter[i] = adapters[first + adapter_of(i, count)];
	for (int i = 0; i < NROWS * 3; i++)
		mixed[i] = NAN;			/* a row left unwritten fails the comparison */
	if (api->predict_mixed(row_adapter, texts, lengths, NULL, NROWS, mixed, 3, &err) != PEFT_OK)
		fail_msg("%s: %s", what, err.message);
	compare_begin(&c, what, MIXED_TOLERANCE, 0);
	for (int i = 0; i < NROWS; i++)
	{
		int			k = first + adapter_of(i, count);

		assert_int_equal(api->predict(adapters[k], &texts[i], &lengths[i], 1, 0, alone, &err), PEFT_OK);
		for (int j = 0; j < num_labels[k]; j++)
			compare_add(&c, (size_t) i * 3 + j, mixed[i * 3 + j], alone[j]);
	}
	compare_end(&c);
}

/* Each method alone in a batch of its own rows, then all of them in one batch. */
static void
test_predict_every_method(void **state)
{
	char		what[96];

	for (size_t k = 0; k < NADAPTERS; k++)
	{
		snprintf(what, sizeof(what), "predict_mixed, only %s",
				 k < NMETHODS ? methods[k] : k == NMETHODS ? "regression lora" : "merged lora");
		check_predict(what, (int) k, 1);
	}
	check_predict("predict_mixed, every adapter in one batch", 0, NADAPTERS);
	check_predict("predict_mixed, the methods before prompt tuning", 0, 9);
	check_predict("predict_mixed, prompt and prefix tuning beside others", 7, 5);
}

/* A batch size below the row count splits the rows into several mixed batches. */
static void
test_predict_small_batches(void **state)
{
	PeftEngineSettings s = {0};

	s.batch_size = 3;
	api->configure(&s);
	check_predict("predict_mixed in batches of 3", 0, NADAPTERS);
	s.batch_size = 0;
	api->configure(&s);
}

/* embed_mixed: NULL rows are the bare model's embeddings, the others their adapter's. */
static void
test_embed(void **state)
{
	int			C = model->cfg.hidden_size;
	PeftAdapterHandle *row_adapter[NROWS];
	float	   *mixed = malloc(sizeof(float) * NROWS * C);
	float	   *alone = malloc(sizeof(float) * C);
	Compare		c;
	PeftError	err = {0};

	for (int i = 0; i < NROWS; i++)
		row_adapter[i] = i % 4 == 0 ? NULL : adapters[adapter_of(i, NADAPTERS)];
	for (int i = 0; i < NROWS * C; i++)
		mixed[i] = NAN;
	if (api->embed_mixed(handle, row_adapter, texts, lengths, NULL, NROWS, mixed, &err) != PEFT_OK)
		fail_msg("embed_mixed: %s", err.message);
	compare_begin(&c, "embed_mixed, bare rows and every adapter", MIXED_TOLERANCE, 0);
	for (int i = 0; i < NROWS; i++)
	{
		assert_int_equal(api->embed(handle, row_adapter[i], &texts[i], &lengths[i], 1, 0, alone, &err),
						 PEFT_OK);
		for (int j = 0; j < C; j++)
			compare_add(&c, (size_t) i * C + j, mixed[(size_t) i * C + j], alone[j]);
	}
	compare_end(&c);
	free(mixed);
	free(alone);
}

/* Per-row max_length truncates each row as its adapter's call would. */
static void
test_max_lengths(void **state)
{
	PeftAdapterHandle *row_adapter[NROWS];
	int			max_lengths[NROWS];
	float		mixed[NROWS * 3];
	float		alone[3];
	Compare		c;
	PeftError	err = {0};

	for (int i = 0; i < NROWS; i++)
	{
		row_adapter[i] = adapters[i % 2];
		max_lengths[i] = i % 2 ? 4 : 0;
	}
	assert_int_equal(api->predict_mixed(row_adapter, texts, lengths, max_lengths, NROWS, mixed, 3,
										&err), PEFT_OK);
	compare_begin(&c, "predict_mixed with max_lengths", MIXED_TOLERANCE, 0);
	for (int i = 0; i < NROWS; i++)
	{
		assert_int_equal(api->predict(row_adapter[i], &texts[i], &lengths[i], 1, max_lengths[i],
									  alone, &err), PEFT_OK);
		for (int j = 0; j < 3; j++)
			compare_add(&c, (size_t) i * 3 + j, mixed[i * 3 + j], alone[j]);
	}
	compare_end(&c);
}

/* Which networks share the base's forward: every method's, not a merged one's. */
static void
test_mixable(void **state)
{
	NetworkOptions bare_options = {0};
	Network    *bare;
	PeftError	err = {0};
	static const struct
	{
		const char *method;
		bool		mixable;
	}			cases[] = {
		{"lora", true}, {"dora+bitfit+adapter", true}, {"ia3+bitfit", true},
		{"prompt", true}, {"lora+prompt", true}, {"prefix", true}, {"dora+bitfit+prefix", true}
	};

	assert_int_equal(network_create(model, &bare_options, &bare, &err), PEFT_OK);
	assert_true(network_mixable(bare, bare));
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
	{
		NetworkOptions o = method_options_for(cases[k].method, PEFT_TASK_CLASSIFICATION, 3);
		Network    *net;

		assert_int_equal(network_create(model, &o, &net, &err), PEFT_OK);
		if (network_mixable(bare, net) != cases[k].mixable)
			fail_msg("%s: mixable should be %d", cases[k].method, cases[k].mixable);
		/* a network with methods never hosts */
		assert_false(network_mixable(net, bare));
		if (cases[k].mixable)
		{
			assert_int_equal(network_merge(net, &err), PEFT_OK);
			assert_false(network_mixable(bare, net));
		}
		network_free(net);
	}
	network_free(bare);
}

/* Segments that do not cover the batch, and bad requests, are errors. */
static void
test_errors(void **state)
{
	NetworkOptions bare_options = {0};
	NetworkOptions o = method_options_for("lora", PEFT_TASK_CLASSIFICATION, 3);
	Network    *bare;
	Network    *net;
	int32_t		ids[2 * 3] = {2, 5, 3, 2, 6, 3};
	int32_t		mask[2 * 3] = {1, 1, 1, 1, 1, 1};
	Batch		b = {2, 3, ids, mask, NULL, NULL};
	MixedSegment gap[2];
	real		out[2 * 3];
	PeftAdapterHandle *rows[2] = {adapters[0], NULL};
	PeftError	err = {0};

	assert_int_equal(network_create(model, &bare_options, &bare, &err), PEFT_OK);
	assert_int_equal(network_create(model, &o, &net, &err), PEFT_OK);
	gap[0] = (MixedSegment) {net, 0, 1, 0, 0};
	assert_int_equal(network_forward_mixed(bare, gap, 1, &b, out, 3, NULL, &err), PEFT_ERR_INVALID);
	gap[1] = (MixedSegment) {net, 2, 1, 0, 0};
	assert_int_equal(network_forward_mixed(bare, gap, 2, &b, out, 3, NULL, &err), PEFT_ERR_INVALID);
	gap[1] = (MixedSegment) {bare, 1, 1, 0, 0};
	/* the bare model has no head: no outputs from it, but embeddings */
	assert_int_equal(network_forward_mixed(bare, gap, 2, &b, out, 3, NULL, &err), PEFT_ERR_INVALID);
	gap[1] = (MixedSegment) {net, 1, 1, 0, 0};
	assert_int_equal(network_forward_mixed(bare, gap, 2, &b, out, 2, NULL, &err), PEFT_ERR_INVALID);
	assert_int_equal(network_forward_mixed(bare, gap, 2, &b, out, 3, NULL, &err), PEFT_OK);

	/* prediction needs an adapter on every row */
	assert_int_equal(api->predict_mixed(rows, texts, lengths, NULL, 2, out, 3, &err), PEFT_ERR_INVALID);
	rows[0] = NULL;
	rows[1] = adapters[0];
	assert_int_equal(api->predict_mixed(rows, texts, lengths, NULL, 2, out, 3, &err), PEFT_ERR_INVALID);
	/* an output row narrower than a head */
	rows[0] = adapters[0];
	assert_int_equal(api->predict_mixed(rows, texts, lengths, NULL, 2, out, 2, &err), PEFT_ERR_INVALID);
	/* no rows: nothing to do */
	assert_int_equal(api->predict_mixed(rows, texts, lengths, NULL, 0, out, 3, &err), PEFT_OK);
	network_free(net);
	network_free(bare);
}

/* An adapter over another model (the same files opened twice) is refused. */
static void
test_other_model(void **state)
{
	PeftModelHandle *other;
	PeftAdapterHandle *rows[2];
	float		out[2 * 384];
	PeftError	err = {0};

	assert_int_equal(api->model_open(tiny_model_dir(), &other, &(PeftModelInfo) {0}, &err), PEFT_OK);
	rows[0] = adapters[0];
	rows[1] = adapters[1];
	assert_int_equal(api->embed_mixed(other, rows, texts, lengths, NULL, 2, out, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "another model"));
	api->model_close(other);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_predict_every_method),
		cmocka_unit_test(test_predict_small_batches),
		cmocka_unit_test(test_embed),
		cmocka_unit_test(test_max_lengths),
		cmocka_unit_test(test_mixable),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_other_model),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
