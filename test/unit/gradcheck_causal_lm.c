/*
 * gradcheck_causal_lm.c - the gradient of the causal-LM loss with respect
 * to every adapter parameter (LoRA, rsLoRA, DoRA, (IA)^3 with
 * and without feed-forward scaling, prompt and prefix tuning, bottleneck
 * adapters in both placements) through a whole tiny LLaMA decoder,
 * against central finite differences, in double precision (-DPEFT_DOUBLE).
 *
 * The model is generated here: 2 layers, hidden 64, 4 query heads over 2
 * key/value heads of 16, feed-forward 128, a vocabulary of 96, with its
 * matrices in the types SmolLM2's GGUF mixes (Q4_1, Q8_0) and F16, F32,
 * random blocks, the output head separate (Q4_1); the batch packs three
 * sequences of different lengths with prompts of different lengths.
 * Both rotary layouts run (GGUF's pairs, Hugging Face's halves).
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
#include "quant.h"
#include "threadpool.h"
#include "gradcheck_util.h"

/* Normwise limit over every parameter of a network (measured figures in the test output). */
#define TOL_GRAD_NETWORK 1e-6

/* A matrix of type t, rows x cols, of random blocks (owned by the test). */
static QMatrix
random_matrix(GgmlType t, int rows, int cols)
{
	size_t		rb = quant_row_bytes(t, cols);
	uint8_t    *data = malloc(rb * rows);
	QMatrix		m = {.type = t, .rows = rows, .cols = cols, .data = data};

	assert_non_null(data);
	for (int r = 0; r < rows; r++)
	{
		uint8_t    *row = data + rb * r;

		for (int b = 0; b < cols / 32 || (t == GGML_F32 && b == 0) || (t == GGML_F16 && b == 0); b++)
		{
			if (t == GGML_F32)
			{
				for (int c = 0; c < cols; c++)
					((float *) row)[c] = (float) uniform(-0.25, 0.25);
				break;
			}
			if (t == GGML_F16)
			{
				for (int c = 0; c < cols; c++)
				{
					_Float16	h = (_Float16) uniform(-0.25, 0.25);

					memcpy(row + 2 * c, &h, 2);
				}
				break;
			}
			if (t == GGML_Q8_0)
			{
				uint8_t    *blk = row + 34 * b;
				_Float16	d = (_Float16) uniform(0.002, 0.006);

				memcpy(blk, &d, 2);
				for (int i = 0; i < 32; i++)
					blk[2 + i] = (uint8_t) (int8_t) peft_rng_below(&rng, 255) - 127;
			}
			else				/* Q4_1: d, m, 16 bytes of nibbles */
			{
				uint8_t    *blk = row + 20 * b;
				_Float16	d = (_Float16) uniform(0.01, 0.04);
				_Float16	mn = (_Float16) uniform(-0.3, -0.1);

				memcpy(blk, &d, 2);
				memcpy(blk + 2, &mn, 2);
				for (int i = 0; i < 16; i++)
					blk[4 + i] = (uint8_t) peft_rng_below(&rng, 256);
			}
		}
	}
	return m;
}

/* A float vector near one (RMSNorm weights). */
static float *
norm_vector(int n)
{
	float	   *v = malloc(sizeof(float) * n);

	for (int i = 0; i < n; i++)
		v[i] = (float) uniform(0.8, 1.2);
	return v;
}

/* The tiny decoder of this test, in the given rotary layout. */
static LlamaModel *
tiny_model(RopeLayout layout)
{
	LlamaModel *m = calloc(1, sizeof(LlamaModel));
	LlamaConfig *c = &m->cfg;

	*c = (LlamaConfig) {
		.num_layers = 2, .hidden_size = 64, .intermediate_size = 128, .num_heads = 4,
		.num_kv_heads = 2, .head_dim = 16, .vocab_size = 96, .context_length = 64,
		.rope_base = 10000, .rms_eps = 1e-5, .rope_layout = layout
	};
	m->layers = calloc(c->num_layers, sizeof(LlamaLayer));
	for (int l = 0; l < c->num_layers; l++)
	{
		LlamaLayer *L = &m->layers[l];

		L->attn_norm = norm_vector(64);
		L->ffn_norm = norm_vector(64);
		L->wq = random_matrix(GGML_Q4_1, 64, 64);
		L->wk = random_matrix(GGML_Q8_0, 32, 64);
		L->wv = random_matrix(GGML_F16, 32, 64);
		L->wo = random_matrix(GGML_F32, 64, 64);
		L->w_gate = random_matrix(GGML_Q4_1, 128, 64);
		L->w_up = random_matrix(GGML_F16, 128, 64);
		L->w_down = random_matrix(GGML_Q8_0, 64, 128);
	}
	m->embed = random_matrix(GGML_Q8_0, 96, 64);
	m->output = random_matrix(GGML_Q4_1, 96, 64);
	m->final_norm = norm_vector(64);
	return m;
}

/* Free what tiny_model allocated. */
static void
free_tiny_model(LlamaModel *m)
{
	for (int l = 0; l < m->cfg.num_layers; l++)
	{
		LlamaLayer *L = &m->layers[l];

		free(L->attn_norm);
		free(L->ffn_norm);
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			free((void *) llama_layer_linear(L, w)->data);
	}
	free((void *) m->embed.data);
	free((void *) m->output.data);
	free(m->final_norm);
	free(m->layers);
	free(m);
}

/* Three sequences of 9, 5 and 12 tokens with prompts of 4, 1 and 7. */
static const int32_t batch_ids[] = {
	1, 5, 9, 17, 33, 65, 2, 80, 11,
	7, 8, 40, 41, 2,
	3, 3, 3, 40, 41, 42, 90, 12, 60, 61, 62, 2
};
static const int32_t batch_start[] = {0, 9, 14, 26};
static const int32_t batch_prompt[] = {4, 1, 7};

typedef struct Ctx
{
	CausalLM   *lm;
	DecoderAdapter *ad;
	LmBatch		b;
} Ctx;

/* The loss (sum of the targets' cross-entropies) without gradients. */
static double
lm_loss(void *arg)
{
	Ctx		   *c = arg;
	double		loss;
	int64_t		targets;
	PeftError	err = {0};

	assert_int_equal(causal_lm_loss(c->lm, &c->b, 0, &loss, &targets, &err), PEFT_OK);
	return loss;
}

/* The loss with its gradient accumulated into the adapter's gradients. */
static void
lm_backward(void *arg)
{
	Ctx		   *c = arg;
	double		loss;
	int64_t		targets;
	PeftError	err = {0};

	assert_int_equal(causal_lm_loss(c->lm, &c->b, 1, &loss, &targets, &err), PEFT_OK);
	assert_int_equal(targets, lm_batch_targets(&c->b));
	assert_int_equal(targets, 5 + 4 + 5);
}

/* Check every parameter of an adapter with options o over the tiny model in layout. */
static void
check_adapter(const char *what, DecoderAdapterOptions o, RopeLayout layout)
{
	LlamaModel *m = tiny_model(layout);
	Ctx			c = {.b = {.B = 3, .ids = batch_ids, .start = batch_start, .prompt_len = batch_prompt}};
	PeftError	err = {0};
	GradInput	in;
	double		worst;

	assert_int_equal(decoder_adapter_create(m, &o, &c.ad, &err), PEFT_OK);
	/* every parameter away from its initial value, so that every path carries gradient */
	for (size_t i = 0; i < c.ad->params.total; i++)
		c.ad->params.values[i] = o.method == DAD_IA3 ? uniform(0.5, 1.5) :
			c.ad->params.values[i] + uniform(-0.2, 0.2);
	if (o.method == DAD_DORA)
		for (int l = 0; l < 2; l++)
			for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
				if (c.ad->lin[l][w].vec >= 0)
					for (size_t i = 0; i < c.ad->params.items[c.ad->lin[l][w].vec].count; i++)
						param_value(&c.ad->params, c.ad->lin[l][w].vec)[i] = uniform(0.5, 2);
	assert_int_equal(causal_lm_create(m, c.ad, &c.lm, &err), PEFT_OK);
	in = (GradInput) {
		.name = "adapter", .x = c.ad->params.values, .grad = c.ad->params.grads,
		.n = c.ad->params.total
	};
	worst = gradcheck(what, &c, lm_loss, lm_backward, &in, 1);
	printf("  %s (%s): %zu parameters, normwise error %.1e\n", what,
		   layout == ROPE_PAIRS ? "GGUF layout" : "HF layout", c.ad->params.total, worst);
	assert_true(worst < TOL_GRAD_NETWORK);
	causal_lm_free(c.lm);
	decoder_adapter_free(c.ad);
	free_tiny_model(m);
}

/* LoRA on every linear, r 2, both layouts. */
static void
test_lora(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_LORA, .r = 2, .alpha = 4, .seed = 1};

	for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		o.targets[w] = true;
	check_adapter("lora all-linear", o, ROPE_PAIRS);
	check_adapter("lora all-linear", o, ROPE_HALVES);
}

/* rsLoRA on q and v (PEFT's default targets for LLaMA). */
static void
test_rslora_default_targets(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_LORA, .r = 4, .alpha = 8, .rslora = true, .seed = 2};

	o.targets[LLAMA_Q] = o.targets[LLAMA_V] = true;
	check_adapter("rslora q,v", o, ROPE_PAIRS);
}

/* DoRA on q, k, v, down (its norm a constant to the gradient, as PEFT detaches it). */
static void
test_dora(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_DORA, .r = 2, .alpha = 4, .seed = 3};

	o.targets[LLAMA_Q] = o.targets[LLAMA_K] = o.targets[LLAMA_V] = o.targets[LLAMA_DOWN] = true;
	check_adapter("dora q,k,v,down", o, ROPE_PAIRS);
}

/* (IA)^3 with PEFT's LLaMA defaults: k, v and down, down scaling its input. */
static void
test_ia3(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_IA3, .seed = 4};

	o.targets[LLAMA_K] = o.targets[LLAMA_V] = o.targets[LLAMA_DOWN] = true;
	o.feedforward[LLAMA_DOWN] = true;
	check_adapter("ia3 k,v,down(ff)", o, ROPE_PAIRS);
	o.targets[LLAMA_GATE] = o.targets[LLAMA_Q] = true;
	check_adapter("ia3 q,k,v,gate,down(ff)", o, ROPE_HALVES);
}

/* Prompt tuning, 3 virtual tokens before every sequence (their gradient is the first layer's input's). */
static void
test_prompt(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_PROMPT, .virtual_tokens = 3, .seed = 5};

	check_adapter("prompt tuning", o, ROPE_PAIRS);
	check_adapter("prompt tuning", o, ROPE_HALVES);
}

/* Prefix tuning, 3 key/value prefixes per layer and key/value head (GGUF's layout permutes the keys). */
static void
test_prefix(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_PREFIX, .virtual_tokens = 3, .seed = 6};

	check_adapter("prefix tuning", o, ROPE_PAIRS);
	check_adapter("prefix tuning", o, ROPE_HALVES);
}

/* Bottleneck adapters of width 8: after attention and the feed-forward (Houlsby), and after the feed-forward only. */
static void
test_bottleneck(void **state)
{
	DecoderAdapterOptions o = {.method = DAD_BOTTLENECK, .reduction = 8, .after_attention = true, .seed = 7};

	check_adapter("bottleneck houlsby", o, ROPE_PAIRS);
	o.after_attention = false;
	check_adapter("bottleneck pfeiffer", o, ROPE_HALVES);
}

/* Set up the generator; two engine threads exercise the splits. */
static int
setup(void **state)
{
	(void) project;				/* gradcheck_util.h's, for op checks */
	peft_rng_seed(&rng, 20261205);
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
		cmocka_unit_test(test_lora),
		cmocka_unit_test(test_rslora_default_targets),
		cmocka_unit_test(test_dora),
		cmocka_unit_test(test_ia3),
		cmocka_unit_test(test_prompt),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_bottleneck),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
