/*
 * test_decoder_methods.c - every method over a decoder computes the same
 * thing in training's network (causal_lm.c, checked against PyTorch + PEFT
 * by test_decoder_train_reference) and in generation's (decoder.c, with
 * its cache): the loss of a packed batch from one equals the cross-entropy
 * of the other's logits.  And prompt and prefix tuning mean what PEFT
 * means: virtual tokens set to the embeddings of real tokens u, or
 * prefixes set to the keys and values the model caches for u, give the
 * loss of the base model with u written before the input.
 *
 * With precision bf16, the loss and gradients stay near FP32's.
 *
 * Model: the tiny LLaMA fixture (test/fixtures/ref_tiny_llama.py), in
 * GGUF's rotary layout and in Hugging Face's.
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

#include "causal_lm.h"
#include "decoder.h"
#include "quant.h"
#include "threadpool.h"
#include "test_util.h"

/* Training's loss against the cross-entropy of generation's logits, relative (measured up to 1.8e-8). */
#define TOL_PATHS_REL 1e-6
/* BF16 products against FP32: the loss relative (measured 2.2e-4), the gradients l2 relative (measured 1.7e-2) */
#define TOL_BF16_LOSS_REL 1e-2
#define TOL_BF16_GRAD_L2 5e-2
/* A mixed batch's logits against each adapter's alone, normwise (measured 6.6e-7 to 6.8e-7). */
#define TOL_MIXED_NORMWISE 1e-5
/* Virtual tokens against the same tokens written before the input, relative (measured up to 4.4e-8). */
#define TOL_VIRTUAL_REL 1e-6

static const char *const models[2] = {
	"test/fixtures/reference/tiny_llama/tiny.gguf", "test/fixtures/reference/tiny_llama/hf"
};

/* Two sequences of 10 and 7 tokens, prompts of 4 and 2 tokens. */
static const int32_t seq_ids[] = {3, 9, 27, 81, 50, 12, 7, 66, 40, 2, 5, 11, 90, 33, 18, 61, 2};
static const int32_t seq_start[] = {0, 10, 17};
static const int32_t seq_prompt[] = {4, 2};
/* The real tokens that virtual tokens stand for. */
static const int32_t virtual_ids[] = {14, 71, 29};
#define NV 3

/* The training network's loss (sum over the targets) of b through ad (NULL: the base). */
static double
training_loss(const LlamaModel *m, DecoderAdapter *ad, const LmBatch *b)
{
	CausalLM   *lm;
	double		loss;
	int64_t		targets;
	PeftError	err = {0};

	assert_int_equal(causal_lm_create(m, ad, &lm, &err), PEFT_OK);
	assert_int_equal(causal_lm_loss(lm, b, 0, &loss, &targets, &err), PEFT_OK);
	assert_int_equal(targets, lm_batch_targets(b));
	causal_lm_free(lm);
	return loss;
}

/* The same loss from generation's logits: every row of every sequence in one packed call. */
static double
generation_loss(const LlamaModel *m, DecoderAdapter *ad, const LmBatch *b)
{
	int			N = b->start[b->B];
	int			V = m->cfg.vocab_size;
	int32_t    *slot = malloc(sizeof(int32_t) * N),
			   *pos = malloc(sizeof(int32_t) * N),
			   *rows = malloc(sizeof(int32_t) * N);
	float	   *logits = malloc(sizeof(float) * N * V);
	Decoder    *dec;
	PeftError	err = {0};
	double		loss = 0;

	for (int i = 0; i < b->B; i++)
		for (int r = b->start[i]; r < b->start[i + 1]; r++)
		{
			slot[r] = i;
			pos[r] = r - b->start[i];
			rows[r] = r;
		}
	assert_int_equal(decoder_create(m, ad, b->B, 16, &dec, &err), PEFT_OK);
	decoder_set_exact_head(dec, true);
	assert_int_equal(decoder_forward(dec, b->ids, slot, pos, N, rows, N, logits, &err), PEFT_OK);
	for (int i = 0; i < b->B; i++)
		for (int t = (b->prompt_len[i] > 1 ? b->prompt_len[i] : 1); t < b->start[i + 1] - b->start[i]; t++)
		{
			const float *z = logits + (size_t) (b->start[i] + t - 1) * V;
			double		max = z[0],
						sum = 0;

			for (int j = 1; j < V; j++)
				max = z[j] > max ? z[j] : max;
			for (int j = 0; j < V; j++)
				sum += exp(z[j] - max);
			loss += max + log(sum) - z[b->ids[b->start[i] + t]];
		}
	decoder_free(dec);
	free(slot);
	free(pos);
	free(rows);
	free(logits);
	return loss;
}

/* |a - b| / |b| within tol, both finite; prints the figure. */
static void
assert_close(const char *what, double a, double b, double tol)
{
	double		rel = fabs(a - b) / fabs(b);

	printf("  %s: %.9g against %.9g, relative %.1e\n", what, a, b, rel);
	assert_true(isfinite(a) && isfinite(b) && rel <= tol);
}

/* One adapter of every method (two bottleneck placements), for the tests that go through them all. */
static const DecoderAdapterOptions every_method[] = {
	{.method = DAD_LORA, .r = 4, .alpha = 8, .targets = {true, true, true, true, true, true, true}},
	{.method = DAD_DORA, .r = 2, .alpha = 4, .targets = {true, false, true, false, false, false, true}},
	{.method = DAD_IA3, .targets = {false, true, true, false, false, false, true},
	.feedforward = {false, false, false, false, false, false, true}},
	{.method = DAD_PROMPT, .virtual_tokens = 4},
	{.method = DAD_PREFIX, .virtual_tokens = 4},
	{.method = DAD_BOTTLENECK, .reduction = 4, .after_attention = true},
	{.method = DAD_BOTTLENECK, .reduction = 8},
};
static const char *const every_method_name[] = {
	"lora all-linear", "dora q,v,down", "ia3 k,v,down(ff)", "prompt", "prefix", "bottleneck houlsby",
	"bottleneck pfeiffer"
};
#define NMETHODS ((int) (sizeof(every_method) / sizeof(every_method[0])))

/* An adapter of method over m with every parameter moved off its start (so every path matters). */
static DecoderAdapter *
moved_adapter(const LlamaModel *m, DecoderAdapterOptions o, PeftRng *rng)
{
	DecoderAdapter *ad;
	PeftError	err = {0};

	assert_int_equal(decoder_adapter_create(m, &o, &ad, &err), PEFT_OK);
	for (size_t i = 0; i < ad->params.total; i++)
		ad->params.values[i] += (real) (0.2 * (2 * peft_rng_uniform(rng) - 1));
	assert_int_equal(decoder_adapter_refresh(ad, &err), PEFT_OK);
	return ad;
}

/* Every method: training's loss equals generation's, in both rotary layouts. */
static void
test_training_and_generation_agree(void **state)
{
	LmBatch		b = {.B = 2, .ids = seq_ids, .start = seq_start, .prompt_len = seq_prompt};
	const DecoderAdapterOptions *opts = every_method;
	const char *const *names = every_method_name;
	PeftRng		rng;

	peft_rng_seed(&rng, 7);
	for (int k = 0; k < 2; k++)
	{
		LlamaModel *m;
		PeftError	err = {0};

		assert_int_equal(llama_model_load(source_path(models[k]), &m, &err), PEFT_OK);
		for (int i = 0; i < NMETHODS; i++)
		{
			DecoderAdapter *ad = moved_adapter(m, opts[i], &rng);
			char		what[96];

			snprintf(what, sizeof(what), "%s (%s)", names[i], k == 0 ? "GGUF" : "HF layout");
			assert_close(what, generation_loss(m, ad, &b), training_loss(m, ad, &b), TOL_PATHS_REL);
			decoder_adapter_free(ad);
		}
		llama_model_free(m);
	}
}

/* Rows of sequence i of the mixed test: 10 or 7 tokens, shifted by i so sequences differ. */
static int
mixed_rows(int i, int32_t *ids)
{
	int			n = seq_start[i % 2 + 1] - seq_start[i % 2];

	for (int t = 0; t < n; t++)
		ids[t] = (seq_ids[seq_start[i % 2] + t] + 3 * i) % 90;
	return n;
}

/*
 * Sequences first .. first+count-1 through dec (sequence first + k at
 * slot k): the logits of every prompt row in one call, then of one
 * decoding step of every sequence at once (through the cache), in out.
 */
static int
mixed_logits(Decoder *dec, int first, int count, int V, float *out)
{
	int32_t		ids[128], slot[128], pos[128], rows[128];
	int			len[16];
	int			N = 0;
	PeftError	err = {0};

	for (int k = 0; k < count; k++)
	{
		len[k] = mixed_rows(first + k, ids + N);
		for (int t = 0; t < len[k]; t++, N++)
		{
			slot[N] = k;
			pos[N] = t;
			rows[N] = N;
		}
	}
	decoder_set_exact_head(dec, true);
	assert_int_equal(decoder_forward(dec, ids, slot, pos, N, rows, N, out, &err), PEFT_OK);
	for (int k = 0; k < count; k++)
	{
		ids[k] = (11 * (first + k) + 5) % 90;
		slot[k] = k;
		pos[k] = len[k];
		rows[k] = k;
	}
	assert_int_equal(decoder_forward(dec, ids, slot, pos, count, rows, count, out + (size_t) N * V,
									 &err), PEFT_OK);
	return N + count;
}

/*
 * A decoder with an adapter per sequence (every method, and the base
 * model, in one batch): each sequence's logits, prompt and decoding step,
 * equal those of its adapter alone.
 */
static void
test_mixed_adapters_equal_alone(void **state)
{
	enum
	{
		NA = NMETHODS, NS = NA + 2
	};
	DecoderAdapter *ads[NS];
	LlamaModel *m;
	Decoder    *dec;
	PeftRng		rng;
	PeftError	err = {0};
	int			V;
	float	   *mixed;
	float	   *alone;
	int			rows;
	int			at = 0;
	double		diff = 0;
	double		top = 0;

	peft_rng_seed(&rng, 9);
	assert_int_equal(llama_model_load(source_path(models[0]), &m, &err), PEFT_OK);
	V = m->cfg.vocab_size;
	for (int i = 0; i < NA; i++)
		ads[i] = moved_adapter(m, every_method[i], &rng);
	ads[NA] = NULL;				/* the base model between adapters */
	ads[NA + 1] = ads[0];		/* an adapter again, after others */
	mixed = malloc(sizeof(float) * 128 * V);
	alone = malloc(sizeof(float) * 16 * V);
	assert_int_equal(decoder_create_mixed(m, ads, true, NS, 16, &dec, &err), PEFT_OK);
	rows = mixed_logits(dec, 0, NS, V, mixed);
	decoder_free(dec);
	/* prompt rows come first in sequence order, then one step row per sequence */
	for (int i = 0; i < NS; i++)
	{
		int			n;

		assert_int_equal(decoder_create(m, ads[i], 1, 16, &dec, &err), PEFT_OK);
		n = mixed_logits(dec, i, 1, V, alone);
		decoder_free(dec);
		for (int r = 0; r < n; r++)
		{
			const float *a = alone + (size_t) r * V;
			const float *b = r < n - 1 ? mixed + (size_t) (at + r) * V : mixed + (size_t) (rows - NS + i) * V;

			for (int j = 0; j < V; j++)
			{
				assert_true(isfinite(a[j]) && isfinite(b[j]));
				diff = fmax(diff, fabs((double) a[j] - b[j]));
				top = fmax(top, fabs((double) a[j]));
			}
		}
		at += n - 1;
	}
	printf("  mixed batch of %d sequences against each alone: normwise %.1e\n", NS, diff / top);
	assert_true(diff / top <= TOL_MIXED_NORMWISE);
	for (int i = 0; i < NA; i++)
		decoder_adapter_free(ads[i]);
	free(mixed);
	free(alone);
	llama_model_free(m);
}

/* The batch with virtual_ids written before every sequence (their prompts longer by NV). */
static LmBatch
with_tokens_before(int32_t *ids, int32_t *start, int32_t *prompt)
{
	int			r = 0;

	start[0] = 0;
	for (int i = 0; i < 2; i++)
	{
		memcpy(ids + r, virtual_ids, sizeof(virtual_ids));
		r += NV;
		memcpy(ids + r, seq_ids + seq_start[i], sizeof(int32_t) * (seq_start[i + 1] - seq_start[i]));
		r += seq_start[i + 1] - seq_start[i];
		start[i + 1] = r;
		prompt[i] = seq_prompt[i] + NV;
	}
	return (LmBatch) {.B = 2, .ids = ids, .start = start, .prompt_len = prompt};
}

/* Prompt tuning = embeddings of u before the input; prefix tuning = u's cached keys and values. */
static void
test_virtual_tokens_are_tokens(void **state)
{
	LmBatch		b = {.B = 2, .ids = seq_ids, .start = seq_start, .prompt_len = seq_prompt};
	int32_t		ids[sizeof(seq_ids) / sizeof(seq_ids[0]) + 2 * NV],
				start[3],
				prompt[2];
	LmBatch		before = with_tokens_before(ids, start, prompt);

	for (int k = 0; k < 2; k++)
	{
		LlamaModel *m;
		const LlamaConfig *c;
		DecoderAdapter *prompt_ad,
				   *prefix_ad;
		DecoderAdapterOptions po = {.method = DAD_PROMPT, .virtual_tokens = NV};
		DecoderAdapterOptions fo = {.method = DAD_PREFIX, .virtual_tokens = NV};
		PeftError	err = {0};
		double		want;
		size_t		KV,
					width;
		real	   *kc,
				   *vc;
		float		row[256];

		assert_int_equal(llama_model_load(source_path(models[k]), &m, &err), PEFT_OK);
		c = &m->cfg;
		KV = (size_t) c->num_kv_heads * c->head_dim;
		width = (size_t) c->num_layers * 2 * KV;
		assert_int_equal(decoder_adapter_create(m, &po, &prompt_ad, &err), PEFT_OK);
		assert_int_equal(decoder_adapter_create(m, &fo, &prefix_ad, &err), PEFT_OK);
		/* prompt: the tokens' embeddings */
		for (int v = 0; v < NV; v++)
		{
			quant_dequantize(m->embed.type, (const uint8_t *) m->embed.data +
							 (size_t) virtual_ids[v] * quant_row_bytes(m->embed.type, c->hidden_size),
							 c->hidden_size, row);
			for (int i = 0; i < c->hidden_size; i++)
				param_value(&prompt_ad->params, prompt_ad->virt)[(size_t) v * c->hidden_size + i] = row[i];
		}
		/* prefix: their keys and values, Hugging Face's layout (tensor_to_hf turns the model's keys) */
		kc = malloc(sizeof(real) * c->num_layers * NV * KV);
		vc = malloc(sizeof(real) * c->num_layers * NV * KV);
		assert_int_equal(causal_lm_cache_of(m, virtual_ids, NV, kc, vc, &err), PEFT_OK);
		for (int v = 0; v < NV; v++)
			for (int l = 0; l < c->num_layers; l++)
			{
				real	   *dst = param_value(&prefix_ad->params, prefix_ad->virt) + v * width + l * 2 * KV;

				for (size_t g = 0; g < KV; g++)
					dst[c->rope_layout == ROPE_PAIRS ? llama_hf_row((int64_t) g, c->head_dim) : (int64_t) g] =
						kc[((size_t) l * NV + v) * KV + g];
				memcpy(dst + KV, vc + ((size_t) l * NV + v) * KV, sizeof(real) * KV);
			}
		want = training_loss(m, NULL, &before);
		assert_close(k == 0 ? "prompt = tokens before (GGUF), training" : "prompt = tokens before (HF), training",
					 training_loss(m, prompt_ad, &b), want, TOL_VIRTUAL_REL);
		assert_close(k == 0 ? "prefix = tokens before (GGUF), training" : "prefix = tokens before (HF), training",
					 training_loss(m, prefix_ad, &b), want, TOL_VIRTUAL_REL);
		assert_close(k == 0 ? "prompt = tokens before (GGUF), generation" : "prompt = tokens before (HF), generation",
					 generation_loss(m, prompt_ad, &b), want, TOL_VIRTUAL_REL);
		assert_close(k == 0 ? "prefix = tokens before (GGUF), generation" : "prefix = tokens before (HF), generation",
					 generation_loss(m, prefix_ad, &b), want, TOL_VIRTUAL_REL);
		free(kc);
		free(vc);
		decoder_adapter_free(prompt_ad);
		decoder_adapter_free(prefix_ad);
		llama_model_free(m);
	}
}

/* A new bottleneck adapter (up at zero) computes the base model exactly. */
static void
test_new_bottleneck_is_identity(void **state)
{
	LmBatch		b = {.B = 2, .ids = seq_ids, .start = seq_start, .prompt_len = seq_prompt};
	DecoderAdapterOptions o = {.method = DAD_BOTTLENECK, .reduction = 4, .after_attention = true};
	LlamaModel *m;
	DecoderAdapter *ad;
	PeftError	err = {0};

	assert_int_equal(llama_model_load(source_path(models[0]), &m, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_create(m, &o, &ad, &err), PEFT_OK);
	assert_true(training_loss(m, ad, &b) == training_loss(m, NULL, &b));
	decoder_adapter_free(ad);
	llama_model_free(m);
}

/*
 * precision bf16: training's products with the frozen weights (64 rows and
 * more) rounded to BF16, summed in FP32 (on AMX where there is one, else
 * gemm_bf16's other paths, the same rounding): the loss and the LoRA
 * gradients stay near FP32's, and not equal to them (the path ran).
 */
static void
test_bf16_products_near_fp32(void **state)
{
	int32_t		ids[96],
				start[5],
				prompt[4];
	LmBatch		b = {.B = 4, .ids = ids, .start = start, .prompt_len = prompt};
	DecoderAdapterOptions o = {.method = DAD_LORA, .r = 4, .alpha = 8,
	.targets = {true, true, true, true, true, true, true}};
	LlamaModel *m;
	DecoderAdapter *ad;
	CausalLM   *lm;
	PeftRng		rng;
	PeftError	err = {0};
	double		loss[2];
	int64_t		targets;
	real	   *grad[2];
	double		diff = 0,
				norm = 0;

	peft_rng_seed(&rng, 11);
	start[0] = 0;
	for (int i = 0; i < 4; i++)
	{
		start[i + 1] = start[i] + 20 + 2 * i;	/* 92 rows: past the 64 that take the bf16 path */
		prompt[i] = 5 + i;
	}
	for (int r = 0; r < start[4]; r++)
		ids[r] = 3 + (int32_t) peft_rng_below(&rng, 90);
	assert_int_equal(llama_model_load(source_path(models[0]), &m, &err), PEFT_OK);
	ad = moved_adapter(m, o, &rng);
	assert_int_equal(causal_lm_create(m, ad, &lm, &err), PEFT_OK);
	for (int k = 0; k < 2; k++)
	{
		ad->bf16 = k == 1;
		memset(ad->params.grads, 0, sizeof(real) * ad->params.total);
		assert_int_equal(causal_lm_loss(lm, &b, 1.0, &loss[k], &targets, &err), PEFT_OK);
		grad[k] = malloc(sizeof(real) * ad->params.total);
		memcpy(grad[k], ad->params.grads, sizeof(real) * ad->params.total);
	}
	for (size_t i = 0; i < ad->params.total; i++)
	{
		diff += ((double) grad[1][i] - grad[0][i]) * ((double) grad[1][i] - grad[0][i]);
		norm += (double) grad[0][i] * grad[0][i];
	}
	diff = sqrt(diff / norm);
	printf("  bf16 against fp32: loss %.7g against %.7g (relative %.1e), gradients l2 relative %.1e\n",
		   loss[1], loss[0], fabs(loss[1] - loss[0]) / loss[0], diff);
	assert_true(isfinite(loss[1]) && fabs(loss[1] - loss[0]) / loss[0] <= TOL_BF16_LOSS_REL);
	assert_true(isfinite(diff) && diff <= TOL_BF16_GRAD_L2 && diff > 0);
	free(grad[0]);
	free(grad[1]);
	causal_lm_free(lm);
	decoder_adapter_free(ad);
	llama_model_free(m);
}

/* Configs and weights of the new methods that must be refused, each with a clear error. */
static void
test_bad_configs_refused(void **state)
{
	static const struct
	{
		const char *json;
		PeftCode	code;
	}			bad[] = {
		{"{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 8, \"prefix_projection\": true}", PEFT_ERR_UNSUPPORTED},
		{"{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 0}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 300}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 2.5}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"PROMPT_TUNING\"}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 4, \"num_transformer_submodules\": 2}", PEFT_ERR_UNSUPPORTED},
		{"{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 4, \"task_type\": \"SEQ_CLS\"}", PEFT_ERR_UNSUPPORTED},
		{"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": 8, \"adapter_placement\": \"middle\"}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": 8, \"adapter_placement\": \"houlsby\", \"non_linearity\": \"relu\"}", PEFT_ERR_UNSUPPORTED},
		{"{\"peft_type\": \"BOTTLENECK\", \"reduction_factor\": -1, \"adapter_placement\": \"houlsby\"}", PEFT_ERR_FORMAT},
		{"{\"peft_type\": \"ADAPTION_PROMPT\"}", PEFT_ERR_UNSUPPORTED},
	};
	LlamaModel *m;
	PeftError	err = {0};
	DecoderAdapterOptions o;
	DecoderAdapter *ad,
			   *other;
	uint8_t    *bytes;
	size_t		len;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		PeftCode	rc = decoder_adapter_options_from_config(bad[i].json, strlen(bad[i].json), &o, &err);

		printf("  %s: %s\n", bad[i].json, err.message);
		assert_int_equal(rc, bad[i].code);
	}
	assert_int_equal(llama_model_load(source_path(models[0]), &m, &err), PEFT_OK);
	/* a reduction the hidden size (32) does not allow */
	o = (DecoderAdapterOptions) {.method = DAD_BOTTLENECK, .reduction = 64};
	assert_int_equal(decoder_adapter_create(m, &o, &ad, &err), PEFT_ERR_INVALID);
	/* more virtual tokens than the context (64) leaves room for */
	o = (DecoderAdapterOptions) {.method = DAD_PREFIX, .virtual_tokens = 64};
	assert_int_equal(decoder_adapter_create(m, &o, &ad, &err), PEFT_ERR_INVALID);
	/* weights of 4 prefixes into an adapter of 3: the shape is checked */
	o = (DecoderAdapterOptions) {.method = DAD_PREFIX, .virtual_tokens = 4};
	assert_int_equal(decoder_adapter_create(m, &o, &ad, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_serialize(ad, &bytes, &len, &err), PEFT_OK);
	o.virtual_tokens = 3;
	o.no_init = true;
	assert_int_equal(decoder_adapter_create(m, &o, &other, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_load(other, bytes, len, &err), PEFT_ERR_FORMAT);
	printf("  4 prefixes into 3: %s\n", err.message);
	/* and a non-finite value */
	((float *) (bytes + len))[-1] = NAN;
	o.virtual_tokens = 4;
	decoder_adapter_free(other);
	assert_int_equal(decoder_adapter_create(m, &o, &other, &err), PEFT_OK);
	assert_int_equal(decoder_adapter_load(other, bytes, len, &err), PEFT_ERR_FORMAT);
	printf("  a NaN: %s\n", err.message);
	free(bytes);
	decoder_adapter_free(ad);
	decoder_adapter_free(other);
	llama_model_free(m);
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
		cmocka_unit_test(test_training_and_generation_agree),
		cmocka_unit_test(test_virtual_tokens_are_tokens),
		cmocka_unit_test(test_new_bottleneck_is_identity),
		cmocka_unit_test(test_bf16_products_near_fp32),
		cmocka_unit_test(test_bad_configs_refused),
		cmocka_unit_test(test_mixed_adapters_equal_alone),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
