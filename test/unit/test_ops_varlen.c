/*
 * test_ops_varlen.c - the packed (varlen) operations against the padded
 * references of ops_reference.h on the same real tokens: packing,
 * embeddings, attention forward and backward (separate and fused [N, 3C]
 * layouts, with and without dropout), pooling, scattering back, and
 * identical results for any engine thread count.
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

#include "compare.h"
#include "ops.h"
#include "ops_reference.h"
#include "ops_varlen.h"
#include "rng.h"
#include "threadpool.h"

#ifdef PEFT_DOUBLE
#error "test_ops_varlen.c checks the float build"
#endif

/* A padded batch: real lengths 13, 1, 7, 0 (an empty row), 10 of T = 13. */
#define B 5
#define T 13
#define C 24
#define NH 4
#define HS (C / NH)

static const int lengths[B] = {13, 1, 7, 0, 10};

static PeftRng rng;

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

/* Right-padded mask[B,T] of the lengths above. */
static void
fill_mask(int32_t *mask)
{
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			mask[b * T + t] = t < lengths[b];
}

/* packed[N, ld] (the C columns at the pointer) = the real rows of padded[B*T, C]. */
static void
gather(real *packed, int ld, const real *padded, const int32_t *rows, int N)
{
	for (int n = 0; n < N; n++)
		memcpy(packed + (size_t) n * ld, padded + (size_t) rows[n] * C, C * sizeof(real));
}

/* Seed the generator and start two engine threads. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 777);
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

/* Packing finds the real tokens of any mask pattern, in row-major order. */
static void
test_pack(void **state)
{
	/* a hole in row 0, an empty row 1, a left-padded row 2 */
	const int32_t mask[3 * 4] = {1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1};
	const int32_t want_start[4] = {0, 3, 3, 5};
	const int32_t want_rows[5] = {0, 2, 3, 10, 11};
	int32_t		seq_start[4];
	int32_t		rows[5];

	(void) state;
	assert_int_equal(varlen_pack(seq_start, rows, mask, 3, 4), 5);
	assert_memory_equal(seq_start, want_start, sizeof(want_start));
	assert_memory_equal(rows, want_rows, sizeof(want_rows));
	assert_int_equal(varlen_pack(seq_start, NULL, mask, 3, 4), 5);
	assert_int_equal(varlen_attention_size(seq_start, 3, 2), (size_t) 2 * (9 + 0 + 4));
}

/* Packed embeddings equal the padded ones' real rows, positions included. */
static void
test_embeddings_match_padded(void **state)
{
	int32_t		ids[B * T];
	int32_t		mask[B * T];
	int32_t		seq_start[B + 1];
	int32_t		rows[B * T];
	real	   *word = random_array(50 * C, -1, 1);
	real	   *pos = random_array(T * C, -1, 1);
	real	   *type = random_array(2 * C, -1, 1);
	real	   *padded = malloc(sizeof(real) * B * T * C);
	real	   *want = malloc(sizeof(real) * B * T * C);
	real	   *got = malloc(sizeof(real) * B * T * C);
	int			N;

	(void) state;
	fill_mask(mask);
	for (int i = 0; i < B * T; i++)
		ids[i] = (i * 7) % 50;
	N = varlen_pack(seq_start, rows, mask, B, T);
	embeddings_forward(padded, ids, NULL, word, pos, type, B, T, C);
	gather(want, C, padded, rows, N);
	varlen_embeddings_forward(got, ids, NULL, rows, N, T, word, pos, type, C);
	assert_memory_equal(got, want, sizeof(real) * N * C);

	free(word);
	free(pos);
	free(type);
	free(padded);
	free(want);
	free(got);
}

/* Everything the attention comparisons need, padded and packed. */
typedef struct AttentionFixture
{
	int32_t		mask[B * T];
	int32_t		seq_start[B + 1];
	int32_t		rows[B * T];
	int			N;
	size_t		np_padded;
	size_t		np_packed;
	real	   *q;				/* padded [B*T, C] */
	real	   *k;
	real	   *v;
	real	   *dout;			/* zero on padded rows */
	real	   *qkv;			/* packed [N, 3C] */
	real	   *pdout;			/* packed [N, C] */
	uint8_t    *keep_packed;
	uint8_t    *keep_padded;	/* the packed mask at the real (query, key) pairs */
} AttentionFixture;

/* Random padded q, k, v, dout and the same real rows packed; matching keep masks. */
static void
fixture_init(AttentionFixture *f)
{
	size_t		n = (size_t) B * T * C;
	size_t		block = 0;
	PeftRng		mask_rng;

	fill_mask(f->mask);
	f->N = varlen_pack(f->seq_start, f->rows, f->mask, B, T);
	f->np_padded = (size_t) B * NH * T * T;
	f->np_packed = varlen_attention_size(f->seq_start, B, NH);
	f->q = random_array(n, -2, 2);
	f->k = random_array(n, -2, 2);
	f->v = random_array(n, -1, 1);
	f->dout = random_array(n, -1, 1);
	for (int b = 0; b < B; b++)
		for (int t = lengths[b]; t < T; t++)
			memset(f->dout + ((size_t) b * T + t) * C, 0, C * sizeof(real));
	f->qkv = malloc(sizeof(real) * f->N * 3 * C);
	f->pdout = malloc(sizeof(real) * f->N * C);
	gather(f->qkv, 3 * C, f->q, f->rows, f->N);
	gather(f->qkv + C, 3 * C, f->k, f->rows, f->N);
	gather(f->qkv + 2 * C, 3 * C, f->v, f->rows, f->N);
	gather(f->pdout, C, f->dout, f->rows, f->N);

	f->keep_packed = malloc(f->np_packed);
	f->keep_padded = calloc(f->np_padded, 1);
	peft_rng_seed(&mask_rng, 5);
	dropout_mask(f->keep_packed, f->np_packed, 0.2f, &mask_rng);
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++)
		{
			int			len = lengths[b];

			for (int i = 0; i < len; i++)
				for (int j = 0; j < len; j++)
					f->keep_padded[(((size_t) b * NH + h) * T + i) * T + j] =
						f->keep_packed[block + (size_t) i * len + j];
			block += (size_t) len * len;
		}
}

/* Free a fixture. */
static void
fixture_free(AttentionFixture *f)
{
	free(f->q);
	free(f->k);
	free(f->v);
	free(f->dout);
	free(f->qkv);
	free(f->pdout);
	free(f->keep_packed);
	free(f->keep_padded);
}

/* Packed probs blocks of the padded probs[B,NH,T,T]'s real (query, key) pairs. */
static void
pack_probs(real *packed, const real *padded)
{
	size_t		block = 0;

	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++)
		{
			int			len = lengths[b];

			for (int i = 0; i < len; i++)
				memcpy(packed + block + (size_t) i * len,
					   padded + (((size_t) b * NH + h) * T + i) * T, len * sizeof(real));
			block += (size_t) len * len;
		}
}

/* Packed attention forward equals the padded attention_forward on the real rows. */
static void
test_attention_matches_padded(void **state)
{
	AttentionFixture f;
	real	   *out_padded;
	real	   *probs_padded;
	real	   *want;
	real	   *want_probs;
	real	   *out;
	real	   *out_fused;
	real	   *probs;
	real	   *dropped;
	real	   *q;
	real	   *k;
	real	   *v;

	(void) state;
	fixture_init(&f);
	out_padded = malloc(sizeof(real) * B * T * C);
	probs_padded = malloc(sizeof(real) * f.np_padded);
	want = malloc(sizeof(real) * f.N * C);
	want_probs = malloc(sizeof(real) * f.np_packed);
	out = malloc(sizeof(real) * f.N * C);
	out_fused = malloc(sizeof(real) * f.N * C);
	probs = malloc(sizeof(real) * f.np_packed);
	dropped = malloc(sizeof(real) * f.np_packed);
	q = malloc(sizeof(real) * f.N * C);
	k = malloc(sizeof(real) * f.N * C);
	v = malloc(sizeof(real) * f.N * C);
	gather(q, C, f.q, f.rows, f.N);
	gather(k, C, f.k, f.rows, f.N);
	gather(v, C, f.v, f.rows, f.N);

	for (int drop = 0; drop <= 1; drop++)
	{
		real		p = drop ? 0.2f : 0;

		attention_forward(out_padded, probs_padded, f.q, f.k, f.v, f.mask,
						  drop ? f.keep_padded : NULL, p, B, T, C, NH);
		gather(want, C, out_padded, f.rows, f.N);
		pack_probs(want_probs, probs_padded);

		varlen_attention_forward(out, probs, dropped, q, k, v, C,
								 drop ? f.keep_packed : NULL, p, f.seq_start, B, C, NH);
		compare_close(drop ? "attention out (dropout)" : "attention out", out, want,
					 (size_t) f.N * C, 1e-6, 1e-5);
		compare_close(drop ? "attention probs (dropout)" : "attention probs", probs,
					 want_probs, f.np_packed, 1e-7, 1e-5);

		/* The fused [N, 3C] layout runs the same products on the same values. */
		varlen_attention_forward(out_fused, probs, dropped, f.qkv, f.qkv + C, f.qkv + 2 * C,
								 3 * C, drop ? f.keep_packed : NULL, p, f.seq_start, B, C, NH);
		assert_memory_equal(out_fused, out, sizeof(real) * f.N * C);
	}

	free(out_padded);
	free(probs_padded);
	free(want);
	free(want_probs);
	free(out);
	free(out_fused);
	free(probs);
	free(dropped);
	free(q);
	free(k);
	free(v);
	fixture_free(&f);
}

/*
 * Packed attention backward equals the padded attention_backward on the
 * real rows (dout zero on padded rows, which the packed batch lacks).
 */
static void
test_attention_backward_matches_padded(void **state)
{
	AttentionFixture f;
	size_t		n = (size_t) B * T * C;
	real	   *out_padded = malloc(sizeof(real) * n);
	real	   *probs_padded;
	real	   *scratch_padded;
	real	   *grads_padded[3];
	real	   *want = malloc(sizeof(real) * n);
	real	   *out;
	real	   *probs;
	real	   *dropped;
	real	   *scratch;
	real	   *dqkv;
	real	   *got;

	(void) state;
	fixture_init(&f);
	probs_padded = malloc(sizeof(real) * f.np_padded);
	scratch_padded = malloc(sizeof(real) * f.np_padded);
	for (int i = 0; i < 3; i++)
		grads_padded[i] = malloc(sizeof(real) * n);
	out = malloc(sizeof(real) * f.N * C);
	probs = malloc(sizeof(real) * f.np_packed);
	dropped = malloc(sizeof(real) * f.np_packed);
	scratch = malloc(sizeof(real) * f.np_packed);
	dqkv = malloc(sizeof(real) * f.N * 3 * C);
	got = malloc(sizeof(real) * f.N * C);

	for (int drop = 0; drop <= 1; drop++)
	{
		real		p = drop ? 0.2f : 0;
		static const char *const names[2][3] = {
			{"attention dq", "attention dk", "attention dv"},
			{"attention dq (dropout)", "attention dk (dropout)", "attention dv (dropout)"}
		};

		for (int i = 0; i < 3; i++)
			memset(grads_padded[i], 0, sizeof(real) * n);
		attention_forward(out_padded, probs_padded, f.q, f.k, f.v, f.mask,
						  drop ? f.keep_padded : NULL, p, B, T, C, NH);
		attention_backward(grads_padded[0], grads_padded[1], grads_padded[2], scratch_padded,
						   f.dout, probs_padded, f.q, f.k, f.v, f.mask,
						   drop ? f.keep_padded : NULL, p, B, T, C, NH);

		/* Fused layout, gradients accumulated onto a non-zero start. */
		for (size_t i = 0; i < (size_t) f.N * 3 * C; i++)
			dqkv[i] = 0.5f;
		varlen_attention_forward(out, probs, dropped, f.qkv, f.qkv + C, f.qkv + 2 * C, 3 * C,
								 drop ? f.keep_packed : NULL, p, f.seq_start, B, C, NH);
		varlen_attention_backward(dqkv, dqkv + C, dqkv + 2 * C, scratch, f.pdout, probs,
								  f.qkv, f.qkv + C, f.qkv + 2 * C, 3 * C,
								  drop ? f.keep_packed : NULL, p, f.seq_start, B, C, NH);
		for (int i = 0; i < 3; i++)
		{
			gather(want, C, grads_padded[i], f.rows, f.N);
			for (int r = 0; r < f.N; r++)
				for (int c = 0; c < C; c++)
					got[(size_t) r * C + c] = dqkv[(size_t) r * 3 * C + i * C + c] - 0.5f;
			compare_close(names[drop][i], got, want, (size_t) f.N * C, 2e-6, 1e-4);
		}
	}

	free(out_padded);
	free(probs_padded);
	free(scratch_padded);
	for (int i = 0; i < 3; i++)
		free(grads_padded[i]);
	free(want);
	free(out);
	free(probs);
	free(dropped);
	free(scratch);
	free(dqkv);
	free(got);
	fixture_free(&f);
}

/* Packed mean and CLS pooling equal the padded ones (the empty row pools to zeros). */
static void
test_pooling_matches_padded(void **state)
{
	int32_t		mask[B * T];
	int32_t		seq_start[B + 1];
	int32_t		rows[B * T];
	size_t		n = (size_t) B * T * C;
	real	   *x = random_array(n, -1, 1);
	real	   *packed = malloc(sizeof(real) * n);
	real	   *want = malloc(sizeof(real) * B * C);
	real	   *got = malloc(sizeof(real) * B * C);
	real	   *dout = random_array((size_t) B * C, -1, 1);
	real	   *dx_padded = calloc(n, sizeof(real));
	real	   *dx_want = malloc(sizeof(real) * n);
	real	   *dx = calloc(n, sizeof(real));
	int			N;

	(void) state;
	fill_mask(mask);
	N = varlen_pack(seq_start, rows, mask, B, T);
	gather(packed, C, x, rows, N);

	mean_pool_forward(want, x, mask, B, T, C);
	varlen_mean_pool_forward(got, packed, seq_start, B, C);
	assert_memory_equal(got, want, sizeof(real) * B * C);
	mean_pool_backward(dx_padded, dout, mask, B, T, C);
	varlen_mean_pool_backward(dx, dout, seq_start, B, C);
	gather(dx_want, C, dx_padded, rows, N);
	assert_memory_equal(dx, dx_want, sizeof(real) * N * C);

	/* CLS: the first row; the padded op reads row 0 even of the empty sequence. */
	cls_pool_forward(want, x, B, T, C);
	memset(want + 3 * C, 0, C * sizeof(real));
	varlen_cls_pool_forward(got, packed, seq_start, B, C);
	assert_memory_equal(got, want, sizeof(real) * B * C);
	memset(dx_padded, 0, sizeof(real) * n);
	memset(dx, 0, sizeof(real) * n);
	cls_pool_backward(dx_padded, dout, B, T, C);
	varlen_cls_pool_backward(dx, dout, seq_start, B, C);
	gather(dx_want, C, dx_padded, rows, N);
	assert_memory_equal(dx, dx_want, sizeof(real) * N * C);

	free(x);
	free(packed);
	free(want);
	free(got);
	free(dout);
	free(dx_padded);
	free(dx_want);
	free(dx);
}

/* Scattering puts packed rows back and zeros every padded row. */
static void
test_scatter(void **state)
{
	int32_t		mask[B * T];
	int32_t		seq_start[B + 1];
	int32_t		rows[B * T];
	size_t		n = (size_t) B * T * C;
	real	   *packed = random_array(n, -1, 1);
	real	   *out = random_array(n, -1, 1);
	int			N;

	(void) state;
	fill_mask(mask);
	N = varlen_pack(seq_start, rows, mask, B, T);
	varlen_scatter_rows(out, packed, rows, N, B * T, C);
	for (int b = 0, r = 0; b < B; b++)
		for (int t = 0; t < T; t++)
		{
			const real *row = out + ((size_t) b * T + t) * C;

			if (mask[b * T + t])
				assert_memory_equal(row, packed + (size_t) r++ * C, C * sizeof(real));
			else
				for (int c = 0; c < C; c++)
					assert_true(row[c] == 0);
		}
	free(packed);
	free(out);
}

/* Attention forward and backward of one thread count: outputs and gradients. */
static void
run_attention(int threads, const AttentionFixture *f, real *out, real *probs,
			  real *dqkv)
{
	real	   *dropped = malloc(sizeof(real) * f->np_packed);
	real	   *scratch = malloc(sizeof(real) * f->np_packed);

	assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
	memset(dqkv, 0, sizeof(real) * f->N * 3 * C);
	varlen_attention_forward(out, probs, dropped, f->qkv, f->qkv + C, f->qkv + 2 * C, 3 * C,
							 f->keep_packed, 0.2f, f->seq_start, B, C, NH);
	varlen_attention_backward(dqkv, dqkv + C, dqkv + 2 * C, scratch, f->pdout, probs,
							  f->qkv, f->qkv + C, f->qkv + 2 * C, 3 * C,
							  f->keep_packed, 0.2f, f->seq_start, B, C, NH);
	free(dropped);
	free(scratch);
}

/* The same bits for 1, 2 and 3 engine threads (tasks are split by cost). */
static void
test_identical_across_thread_counts(void **state)
{
	AttentionFixture f;
	real	   *out[3];
	real	   *probs[3];
	real	   *dqkv[3];

	(void) state;
	fixture_init(&f);
	for (int i = 0; i < 3; i++)
	{
		out[i] = malloc(sizeof(real) * f.N * C);
		probs[i] = malloc(sizeof(real) * f.np_packed);
		dqkv[i] = malloc(sizeof(real) * f.N * 3 * C);
		run_attention(i + 1, &f, out[i], probs[i], dqkv[i]);
	}
	for (int i = 1; i < 3; i++)
	{
		assert_memory_equal(out[i], out[0], sizeof(real) * f.N * C);
		assert_memory_equal(probs[i], probs[0], sizeof(real) * f.np_packed);
		assert_memory_equal(dqkv[i], dqkv[0], sizeof(real) * f.N * 3 * C);
	}
	for (int i = 0; i < 3; i++)
	{
		free(out[i]);
		free(probs[i]);
		free(dqkv[i]);
	}
	fixture_free(&f);
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pack),
		cmocka_unit_test(test_embeddings_match_padded),
		cmocka_unit_test(test_attention_matches_padded),
		cmocka_unit_test(test_attention_backward_matches_padded),
		cmocka_unit_test(test_pooling_matches_padded),
		cmocka_unit_test(test_scatter),
		cmocka_unit_test(test_identical_across_thread_counts),
	};

	return cmocka_run_group_tests_name("packed (varlen) ops against the padded ops",
									   tests, setup, teardown);
}
