/*
 * test_ops_decoder.c - the decoder's forward operations (ops_decoder.h)
 * against PyTorch and transformers: fixtures written once by
 * test/fixtures/ref_ops_decoder.py (LlamaRMSNorm, LlamaRotaryEmbedding with
 * apply_rotary_pos_emb, silu(gate) * up, and scaled_dot_product_attention
 * with is_causal over repeated key/value heads).  The pairs layout of RoPE
 * is checked through llama.cpp's permutation of the same vectors.
 * Attention runs over a cache whose unused slots and positions hold NaN,
 * for packed prefill rows in a shuffled order, decode rows and a chunk of
 * a prompt.  Then every forward and backward must give identical bits at
 * 1, 2 and 3 engine threads.  The backward passes are checked against
 * finite differences in gradcheck_ops_decoder.c.
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
#include <cjson/cJSON.h>

#include "compare.h"
#include "ops_decoder.h"
#include "rng.h"
#include "safetensors.h"
#include "threadpool.h"
#include "test_util.h"

#ifdef PEFT_DOUBLE
#error "test_ops_decoder.c checks the float build"
#endif

#define FIXTURE "test/fixtures/reference/ops_decoder.safetensors"

/*
 * Normwise tolerances against the float32 fixtures (largest difference
 * over the largest value), each a few times the figure measured here
 * (x86-64, torch 2.15.0, transformers 5.25.0).
 */
/* measured 0 (the same bits); a few ulps for another torch's float sum of squares */
#define TOL_RMSNORM 5e-7
/* measured 3.1e-8 (halves and pairs): cos/sin within an ulp of torch's */
#define TOL_ROPE 2e-7
/* measured 7.8e-8: vec_exp against torch's exp */
#define TOL_SWIGLU 3e-7
/* measured 1.4e-7 to 3.2e-7 (GQA at head size 64; MQA over 216 keys, several chunks) */
#define TOL_ATTENTION 1e-6
/* the forward's softmax weights times v (in double here) against out: measured 3.0e-7 */
#define TOL_ATTENTION_PROBS 1e-6
/* inference's row-by-row attention against training's per-slot products, normwise (measured 1.8e-7 to 2.9e-7) */
#define TOL_ATTENTION_PATHS 1e-6
/* elementwise |sum of a softmax row - 1|: measured 8.0e-8 */
#define TOL_PROBS_SUM 5e-7
/* elementwise relative, rstd against its double definition: measured 3.8e-8 (half an ulp is 6e-8) */
#define TOL_RSTD 1e-7

/* Cache length of the attention tests: more than the longest sequence. */
#define CTX_SHORT 16
#define CTX_LONG 160

static PeftRng rng;

/* Seed the generator and start two engine threads. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 31337);
	return peft_threads_init(2, NULL) == PEFT_OK ? 0 : -1;
}

/* Stop the engine threads. */
static int
teardown(void **state)
{
	(void) state;
	peft_threads_shutdown();
	return 0;
}

/* The fixture file, mapped and validated. */
static StFile *
open_fixture(void)
{
	StFile	   *file = NULL;
	PeftError	err;

	if (st_open_file(source_path(FIXTURE), &file, &err) != PEFT_OK)
		fail_msg("%s: %s", FIXTURE, err.message);
	return file;
}

/* The number in the fixture's __metadata__["reference"] JSON under key. */
static double
fixture_scalar(const StFile *file, const char *key)
{
	for (int i = 0; i < file->nmeta; i++)
		if (strcmp(file->meta_keys[i], "reference") == 0)
		{
			cJSON	   *json = cJSON_Parse(file->meta_values[i]);
			cJSON	   *item = cJSON_GetObjectItemCaseSensitive(json, key);
			double		value;

			if (!cJSON_IsNumber(item))
				fail_msg("%s: no number %s in its metadata", FIXTURE, key);
			value = item->valuedouble;
			cJSON_Delete(json);
			return value;
		}
	fail_msg("%s: no reference metadata", FIXTURE);
	return 0;
}

/* A float tensor of the fixture with its shape (up to 3 dims, rest 1). */
static real *
fixture_tensor(const StFile *file, const char *name, int64_t shape[3])
{
	const StTensor *t = st_find(file, name);
	real	   *x;

	if (t == NULL)
		fail_msg("%s: no tensor %s", FIXTURE, name);
	for (int d = 0; d < 3; d++)
		shape[d] = d < t->ndim ? t->shape[d] : 1;
	x = tensor_real(file, name, NULL);
	assert_non_null(x);
	return x;
}

/* A new array of n floats uniform in [lo, hi). */
static real *
random_array(size_t n, double lo, double hi)
{
	real	   *x = malloc(n * sizeof(real));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = (real) (lo + (hi - lo) * peft_rng_uniform(&rng));
	return x;
}

/* A new array of n NaNs, for outputs a test must see written. */
static real *
nan_array(size_t n)
{
	real	   *x = malloc(n * sizeof(real));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = NAN;
	return x;
}


/* ---- RMSNorm, RoPE, SwiGLU ------------------------------------------------ */

/* RMSNorm against LlamaRMSNorm; rstd against its definition in double. */
static void
test_rmsnorm_matches_transformers(void **state)
{
	StFile	   *file = open_fixture();
	int64_t		xs[3], ws[3], os[3];
	real	   *x = fixture_tensor(file, "rmsnorm.x", xs);
	real	   *weight = fixture_tensor(file, "rmsnorm.weight", ws);
	real	   *want = fixture_tensor(file, "rmsnorm.out", os);
	int			N = (int) xs[0], C = (int) xs[1];
	real		eps = (real) fixture_scalar(file, "rmsnorm.eps");
	real	   *out = nan_array((size_t) N * C);
	real	   *rstd = nan_array(N);
	Compare		c;

	(void) state;
	assert_int_equal(ws[0], C);
	assert_true(os[0] == N && os[1] == C);
	rmsnorm_forward(out, rstd, x, weight, N, C, eps);
	compare_close_norm("rmsnorm out", out, want, (size_t) N * C, TOL_RMSNORM, 1e-6);
	compare_begin(&c, "rmsnorm rstd", 0, TOL_RSTD);
	for (int n = 0; n < N; n++)
	{
		double		ms = 0;

		for (int k = 0; k < C; k++)
			ms += (double) x[(size_t) n * C + k] * x[(size_t) n * C + k];
		compare_add(&c, n, rstd[n], 1.0 / sqrt(ms / C + (double) eps));
	}
	compare_end(&c);

	/* rstd may be NULL; out is the same without it */
	{
		real	   *again = nan_array((size_t) N * C);

		rmsnorm_forward(again, NULL, x, weight, N, C, eps);
		assert_memory_equal(again, out, (size_t) N * C * sizeof(real));
		free(again);
	}
	free(x);
	free(weight);
	free(want);
	free(out);
	free(rstd);
	st_close(file);
}

/*
 * llama.cpp's permutation of a head from the halves layout to the pairs
 * layout (convert_hf_to_gguf.py's permute of q/k weights): value i goes to
 * 2i, value i + D/2 to 2i + 1, so pair (2i, 2i+1) is HF's (i, i + D/2).
 * inverse != 0 undoes it.
 */
static void
permute_heads(real *dst, const real *src, int rows, int D, int inverse)
{
	int			half = D / 2;

	for (int r = 0; r < rows; r++)
		for (int i = 0; i < half; i++)
		{
			const real *s = src + (size_t) r * D;
			real	   *d = dst + (size_t) r * D;

			if (!inverse)
			{
				d[2 * i] = s[i];
				d[2 * i + 1] = s[i + half];
			}
			else
			{
				d[i] = s[2 * i];
				d[i + half] = s[2 * i + 1];
			}
		}
}

/* RoPE, halves layout against transformers; pairs layout through the permutation. */
static void
test_rope_matches_transformers(void **state)
{
	StFile	   *file = open_fixture();
	int64_t		xs[3], os[3];
	real	   *x = fixture_tensor(file, "rope.x", xs);
	real	   *want = fixture_tensor(file, "rope.out", os);
	int32_t    *pos = tensor_int32(file, "rope.pos", NULL);
	int			N = (int) xs[0], H = (int) xs[1], D = (int) xs[2];
	size_t		n = (size_t) N * H * D;
	real		base = (real) fixture_scalar(file, "rope.base");
	real	   *y = malloc(n * sizeof(real));
	real	   *perm = malloc(n * sizeof(real));

	(void) state;
	assert_non_null(pos);
	assert_true(os[0] == N && os[1] == H && os[2] == D);
	assert_int_equal(D, 64);
	assert_true(base == 100000);

	memcpy(y, x, n * sizeof(real));
	rope_forward(y, pos, N, H, D, base, ROPE_HALVES);
	compare_close_norm("rope halves", y, want, n, TOL_ROPE, 1e-6);

	permute_heads(perm, x, N * H, D, 0);
	rope_forward(perm, pos, N, H, D, base, ROPE_PAIRS);
	permute_heads(y, perm, N * H, D, 1);
	compare_close_norm("rope pairs (permuted)", y, want, n, TOL_ROPE, 1e-6);

	/* Position 0 turns nothing: bit for bit the input. */
	memcpy(y, x, (size_t) H * D * sizeof(real));
	assert_int_equal(pos[0], 0);
	rope_forward(y, pos, 1, H, D, base, ROPE_PAIRS);
	assert_memory_equal(y, x, (size_t) H * D * sizeof(real));

	free(x);
	free(want);
	free(pos);
	free(y);
	free(perm);
	st_close(file);
}

/* SwiGLU against silu(gate) * up, gate in [-12, 12] where silu saturates. */
static void
test_swiglu_matches_torch(void **state)
{
	StFile	   *file = open_fixture();
	int64_t		gs[3], us[3], os[3];
	real	   *gate = fixture_tensor(file, "swiglu.gate", gs);
	real	   *up = fixture_tensor(file, "swiglu.up", us);
	real	   *want = fixture_tensor(file, "swiglu.out", os);
	size_t		n = (size_t) gs[0];
	real	   *out = nan_array(n);

	(void) state;
	assert_true(us[0] == gs[0] && os[0] == gs[0]);
	swiglu_forward(out, gate, up, n);
	compare_close_norm("swiglu", out, want, n, TOL_SWIGLU, 1e-6);
	free(gate);
	free(up);
	free(want);
	free(out);
	st_close(file);
}


/* ---- attention ------------------------------------------------------------- */

/* One attention case of the fixture, its sequences placed in cache slots. */
typedef struct AttentionCase
{
	int			S;				/* sequences */
	int			T;				/* their tokens, packed */
	int			Hq;
	int			Hkv;
	int			D;
	int			ctx;
	int			slots;
	int32_t    *lengths;		/* [S] */
	int32_t    *start;			/* [S] first packed token */
	int32_t    *seq_slot;		/* [S] the slot each sequence lives in */
	real	   *q;				/* [T, Hq*D] */
	real	   *want;			/* [T, Hq*D] */
	real	   *kcache;			/* [slots][ctx][Hkv*D], NaN where no token is */
	real	   *vcache;
} AttentionCase;

/*
 * Load case prefix of the fixture.  Sequence s lives in slot S - s (slot
 * 0 and every position past a sequence's end hold NaN, so reading them
 * would show).
 */
static void
attention_case_load(AttentionCase *c, const StFile *file, const char *prefix, int ctx)
{
	char		name[64];
	int64_t		qs[3], ks[3], vs[3], os[3];
	real	   *k;
	real	   *v;
	size_t		count = 0;
	int			kv;

	memset(c, 0, sizeof(*c));
	snprintf(name, sizeof(name), "%s.q", prefix);
	c->q = fixture_tensor(file, name, qs);
	snprintf(name, sizeof(name), "%s.k", prefix);
	k = fixture_tensor(file, name, ks);
	snprintf(name, sizeof(name), "%s.v", prefix);
	v = fixture_tensor(file, name, vs);
	snprintf(name, sizeof(name), "%s.out", prefix);
	c->want = fixture_tensor(file, name, os);
	snprintf(name, sizeof(name), "%s.lengths", prefix);
	c->lengths = tensor_int32(file, name, &count);
	assert_non_null(c->lengths);
	snprintf(name, sizeof(name), "%s.hq", prefix);
	c->Hq = (int) fixture_scalar(file, name);
	snprintf(name, sizeof(name), "%s.hkv", prefix);
	c->Hkv = (int) fixture_scalar(file, name);
	c->S = (int) count;
	c->T = (int) qs[0];
	c->D = (int) qs[2];
	c->ctx = ctx;
	c->slots = c->S + 1;
	assert_true(qs[1] == c->Hq && ks[1] == c->Hkv && vs[1] == c->Hkv);
	assert_true(ks[0] == c->T && vs[0] == c->T && os[0] == c->T && os[1] == c->Hq);

	kv = c->Hkv * c->D;
	c->start = malloc(c->S * sizeof(int32_t));
	c->seq_slot = malloc(c->S * sizeof(int32_t));
	c->kcache = nan_array((size_t) c->slots * ctx * kv);
	c->vcache = nan_array((size_t) c->slots * ctx * kv);
	for (int s = 0, first = 0; s < c->S; s++)
	{
		assert_true(c->lengths[s] <= ctx);
		c->start[s] = first;
		c->seq_slot[s] = c->S - s;
		for (int p = 0; p < c->lengths[s]; p++)
		{
			size_t		at = ((size_t) c->seq_slot[s] * ctx + p) * kv;

			memcpy(c->kcache + at, k + (size_t) (first + p) * kv, kv * sizeof(real));
			memcpy(c->vcache + at, v + (size_t) (first + p) * kv, kv * sizeof(real));
		}
		first += c->lengths[s];
	}
	free(k);
	free(v);
}

/* Free what attention_case_load allocated. */
static void
attention_case_free(AttentionCase *c)
{
	free(c->lengths);
	free(c->start);
	free(c->seq_slot);
	free(c->q);
	free(c->want);
	free(c->kcache);
	free(c->vcache);
}

/*
 * Attend with the rows tokens[0..n) (packed token indices) of the case as
 * queries and compare with the fixture's rows; with probs, also check
 * that each softmax row sums to 1 and that probs @ v (in double) is the
 * reference output.  Returns the normwise error of out.
 */
static double
check_attention_rows(const AttentionCase *c, const char *what, const int32_t *tokens,
					 int n, bool with_probs)
{
	int			HD = c->Hq * c->D;
	int			group = c->Hq / c->Hkv;
	int32_t    *slot = malloc(n * sizeof(int32_t));
	int32_t    *pos = malloc(n * sizeof(int32_t));
	real	   *q = malloc((size_t) n * HD * sizeof(real));
	real	   *want = malloc((size_t) n * HD * sizeof(real));
	real	   *out = nan_array((size_t) n * HD);
	real	   *probs = with_probs ? nan_array((size_t) n * c->Hq * c->ctx) : NULL;
	char		sum_label[96];
	char		pv_label[96];
	Compare		cmp;

	for (int r = 0; r < n; r++)
	{
		int			s = 0;

		while (s + 1 < c->S && tokens[r] >= c->start[s + 1])
			s++;
		slot[r] = c->seq_slot[s];
		pos[r] = tokens[r] - c->start[s];
		memcpy(q + (size_t) r * HD, c->q + (size_t) tokens[r] * HD, HD * sizeof(real));
		memcpy(want + (size_t) r * HD, c->want + (size_t) tokens[r] * HD, HD * sizeof(real));
	}
	gqa_attention_forward(out, probs, q, c->kcache, c->vcache, slot, pos,
						  n, c->Hq, c->Hkv, c->D, c->ctx);
	cmp = compare_close_norm(what, out, want, (size_t) n * HD, TOL_ATTENTION, 1e-6);

	if (with_probs)
	{
		Compare		sums;
		Compare		pv;

		/* compare_begin keeps the label's pointer: one buffer each */
		snprintf(sum_label, sizeof(sum_label), "%s probs sum", what);
		compare_begin(&sums, sum_label, TOL_PROBS_SUM, 0);
		snprintf(pv_label, sizeof(pv_label), "%s probs @ v", what);
		compare_begin_norm(&pv, pv_label, TOL_ATTENTION_PROBS, 1e-6);
		for (int r = 0; r < n; r++)
			for (int h = 0; h < c->Hq; h++)
			{
				const real *p = probs + ((size_t) r * c->Hq + h) * c->ctx;
				double		total = 0;

				for (int j = 0; j <= pos[r]; j++)
					total += p[j];
				compare_add(&sums, (size_t) r * c->Hq + h, total, 1.0);
				for (int d = 0; d < c->D; d++)
				{
					double		acc = 0;

					for (int j = 0; j <= pos[r]; j++)
						acc += (double) p[j] *
							c->vcache[(((size_t) slot[r] * c->ctx + j) * c->Hkv + h / group) * c->D + d];
					compare_add(&pv, ((size_t) r * c->Hq + h) * c->D + d, acc,
								want[(size_t) r * HD + (size_t) h * c->D + d]);
				}
			}
		compare_end(&sums);
		compare_end(&pv);

		/*
		 * Without probs (inference: row by row) the output is training's
		 * (with probs: matrix products per slot) to float rounding.
		 */
		{
			real	   *again = nan_array((size_t) n * HD);
			Compare		paths;
			char		paths_label[96];

			gqa_attention_forward(again, NULL, q, c->kcache, c->vcache, slot, pos,
								  n, c->Hq, c->Hkv, c->D, c->ctx);
			snprintf(paths_label, sizeof(paths_label), "%s rows against slots", what);
			compare_begin_norm(&paths, paths_label, TOL_ATTENTION_PATHS, 1e-6);
			for (size_t i = 0; i < (size_t) n * HD; i++)
				compare_add(&paths, i, again[i], out[i]);
			compare_end(&paths);
			free(again);
		}
	}
	free(slot);
	free(pos);
	free(q);
	free(want);
	free(out);
	free(probs);
	return compare_norm_error(&cmp);
}

/* Every row of a case as a prefill, then decode rows, then one sequence's later chunk. */
static void
run_attention_case(const char *prefix, int ctx)
{
	StFile	   *file = open_fixture();
	AttentionCase c;
	int32_t    *tokens;
	int			n;
	char		what[64];

	attention_case_load(&c, file, prefix, ctx);
	tokens = malloc(c.T * sizeof(int32_t));

	/* Prefill: all tokens, in a shuffled order (rows are independent). */
	for (int i = 0; i < c.T; i++)
		tokens[i] = i;
	for (int i = c.T - 1; i > 0; i--)
	{
		int			j = (int) (peft_rng_uniform(&rng) * (i + 1));
		int32_t		t = tokens[i];

		tokens[i] = tokens[j];
		tokens[j] = t;
	}
	snprintf(what, sizeof(what), "%s prefill", prefix);
	check_attention_rows(&c, what, tokens, c.T, true);

	/* Decode: the last token of each sequence, one row per sequence. */
	for (int s = 0; s < c.S; s++)
		tokens[s] = c.start[s] + c.lengths[s] - 1;
	snprintf(what, sizeof(what), "%s decode", prefix);
	check_attention_rows(&c, what, tokens, c.S, false);

	/* A prompt's second chunk: the last sequence's tokens from its middle on. */
	n = 0;
	for (int p = c.lengths[c.S - 1] / 2; p < c.lengths[c.S - 1]; p++)
		tokens[n++] = c.start[c.S - 1] + p;
	snprintf(what, sizeof(what), "%s chunk", prefix);
	check_attention_rows(&c, what, tokens, n, true);

	free(tokens);
	attention_case_free(&c);
	st_close(file);
}

/* GQA (group of 3, head size 64) against scaled_dot_product_attention. */
static void
test_attention_gqa_matches_sdpa(void **state)
{
	(void) state;
	run_attention_case("attention", CTX_SHORT);
}

/* Multi-query attention over more keys than one chunk (the online softmax's rescaling). */
static void
test_attention_long_matches_sdpa(void **state)
{
	(void) state;
	run_attention_case("attention_long", CTX_LONG);
}


/* ---- thread counts ----------------------------------------------------------- */

/* Shapes of the determinism test: several chunks of keys and rows. */
#define DET_N 150
#define DET_C 200
#define DET_HQ 4
#define DET_HKV 2
#define DET_D 16
#define DET_CTX 140
#define DET_SLOTS 3

/* Every output of one forward and backward pass of each op, at one thread count. */
typedef struct DetRun
{
	real	   *rms_out;
	real	   *rstd;
	real	   *rms_dx;
	real	   *rms_dw;
	real	   *rope;
	real	   *rope_back;
	real	   *swiglu;
	real	   *dgate;
	real	   *dup;
	real	   *att_out;
	real	   *probs;
	real	   *dq;
	real	   *dk;
	real	   *dv;
} DetRun;

/* The inputs all thread counts share. */
typedef struct DetInputs
{
	real	   *x;				/* [DET_N, DET_C] */
	real	   *weight;			/* [DET_C] */
	real	   *dout;			/* [DET_N, DET_C] */
	real	   *up;				/* [DET_N, DET_C] */
	real	   *q;				/* [DET_N, DET_HQ * DET_D] */
	real	   *datt;			/* [DET_N, DET_HQ * DET_D] */
	real	   *kcache;			/* [DET_SLOTS][DET_CTX][DET_HKV * DET_D] */
	real	   *vcache;
	int32_t		pos[DET_N];
	int32_t		slot[DET_N];
} DetInputs;

#define DET_NC ((size_t) DET_N * DET_C)
#define DET_NQ ((size_t) DET_N * DET_HQ * DET_D)
#define DET_CACHE ((size_t) DET_SLOTS * DET_CTX * DET_HKV * DET_D)

/* Run every op at the given thread count into fresh buffers. */
static DetRun
det_run(const DetInputs *in, int threads)
{
	DetRun		r;

	assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
	r.rms_out = nan_array(DET_NC);
	r.rstd = nan_array(DET_N);
	r.rms_dx = calloc(DET_NC, sizeof(real));
	r.rms_dw = calloc(DET_C, sizeof(real));
	rmsnorm_forward(r.rms_out, r.rstd, in->x, in->weight, DET_N, DET_C, 1e-5f);
	rmsnorm_backward(r.rms_dx, r.rms_dw, in->dout, in->x, in->weight, r.rstd, DET_N, DET_C);

	r.rope = malloc(DET_NC * sizeof(real));
	memcpy(r.rope, in->x, DET_NC * sizeof(real));
	rope_forward(r.rope, in->pos, DET_N, DET_C / 40, 40, 10000, ROPE_PAIRS);
	r.rope_back = malloc(DET_NC * sizeof(real));
	memcpy(r.rope_back, in->dout, DET_NC * sizeof(real));
	rope_backward(r.rope_back, in->pos, DET_N, DET_C / 40, 40, 10000, ROPE_HALVES);

	r.swiglu = nan_array(DET_NC);
	r.dgate = calloc(DET_NC, sizeof(real));
	r.dup = calloc(DET_NC, sizeof(real));
	swiglu_forward(r.swiglu, in->x, in->up, DET_NC);
	swiglu_backward(r.dgate, r.dup, in->dout, in->x, in->up, DET_NC);

	r.att_out = nan_array(DET_NQ);
	r.probs = calloc((size_t) DET_N * DET_HQ * DET_CTX, sizeof(real));
	r.dq = calloc(DET_NQ, sizeof(real));
	r.dk = calloc(DET_CACHE, sizeof(real));
	r.dv = calloc(DET_CACHE, sizeof(real));
	gqa_attention_forward(r.att_out, r.probs, in->q, in->kcache, in->vcache, in->slot,
						  in->pos, DET_N, DET_HQ, DET_HKV, DET_D, DET_CTX);
	gqa_attention_backward(r.dq, r.dk, r.dv, in->datt, in->q, in->kcache, in->vcache,
						   r.probs, in->slot, in->pos, DET_N, DET_HQ, DET_HKV, DET_D, DET_CTX);
	return r;
}

/* Free one run's buffers. */
static void
det_free(DetRun *r)
{
	free(r->rms_out);
	free(r->rstd);
	free(r->rms_dx);
	free(r->rms_dw);
	free(r->rope);
	free(r->rope_back);
	free(r->swiglu);
	free(r->dgate);
	free(r->dup);
	free(r->att_out);
	free(r->probs);
	free(r->dq);
	free(r->dk);
	free(r->dv);
}

/* Every forward and backward gives identical bits at 1, 2 and 3 engine threads. */
static void
test_identical_across_thread_counts(void **state)
{
	DetInputs	in;
	DetRun		runs[3];

	(void) state;
	in.x = random_array(DET_NC, -4, 4);
	in.weight = random_array(DET_C, 0.5, 1.5);
	in.dout = random_array(DET_NC, -1, 1);
	in.up = random_array(DET_NC, -1, 1);
	in.q = random_array(DET_NQ, -1, 1);
	in.datt = random_array(DET_NQ, -1, 1);
	in.kcache = random_array(DET_CACHE, -1, 1);
	in.vcache = random_array(DET_CACHE, -1, 1);
	/* Three sequences of 80, 40 and 30 rows: a prompt each, at positions near the end of the cache. */
	for (int r = 0; r < DET_N; r++)
	{
		in.slot[r] = r < 80 ? 1 : (r < 120 ? 0 : 2);
		in.pos[r] = r < 80 ? 50 + r : (r < 120 ? r - 80 : 100 + r - 120);
	}
	for (int t = 0; t < 3; t++)
		runs[t] = det_run(&in, t + 1);
	for (int t = 1; t < 3; t++)
	{
		assert_memory_equal(runs[t].rms_out, runs[0].rms_out, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].rstd, runs[0].rstd, DET_N * sizeof(real));
		assert_memory_equal(runs[t].rms_dx, runs[0].rms_dx, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].rms_dw, runs[0].rms_dw, DET_C * sizeof(real));
		assert_memory_equal(runs[t].rope, runs[0].rope, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].rope_back, runs[0].rope_back, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].swiglu, runs[0].swiglu, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].dgate, runs[0].dgate, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].dup, runs[0].dup, DET_NC * sizeof(real));
		assert_memory_equal(runs[t].att_out, runs[0].att_out, DET_NQ * sizeof(real));
		assert_memory_equal(runs[t].probs, runs[0].probs,
							(size_t) DET_N * DET_HQ * DET_CTX * sizeof(real));
		assert_memory_equal(runs[t].dq, runs[0].dq, DET_NQ * sizeof(real));
		assert_memory_equal(runs[t].dk, runs[0].dk, DET_CACHE * sizeof(real));
		assert_memory_equal(runs[t].dv, runs[0].dv, DET_CACHE * sizeof(real));
	}
	for (int t = 0; t < 3; t++)
		det_free(&runs[t]);
	free(in.x);
	free(in.weight);
	free(in.dout);
	free(in.up);
	free(in.q);
	free(in.datt);
	free(in.kcache);
	free(in.vcache);
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rmsnorm_matches_transformers),
		cmocka_unit_test(test_rope_matches_transformers),
		cmocka_unit_test(test_swiglu_matches_torch),
		cmocka_unit_test(test_attention_gqa_matches_sdpa),
		cmocka_unit_test(test_attention_long_matches_sdpa),
		cmocka_unit_test(test_identical_across_thread_counts),
	};

	return cmocka_run_group_tests_name("decoder ops against PyTorch/transformers",
									   tests, setup, teardown);
}
