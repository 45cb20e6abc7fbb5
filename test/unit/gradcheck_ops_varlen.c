/*
 * gradcheck_ops_varlen.c - the backward passes of ops_varlen.h (packed
 * attention and pooling) against central finite differences, in double
 * precision (built with -DPEFT_DOUBLE).
 *
 * As in gradcheck_ops.c: for y = f(x) take L = sum(w * y), run the backward
 * with dout = w into gradient buffers pre-filled with random values, and
 * compare (buffer - prefill) with (L(x + h) - L(x - h)) / 2h for every
 * input element, which also checks that backward accumulates.  The packed
 * sequences have lengths 4, 1, 0 and 3: a length-1 sequence attends only
 * to itself, and an empty one must be skipped cleanly.
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

#include "ops.h"
#include "ops_varlen.h"
#include "rng.h"
#include "threadpool.h"
#include "gradcheck_util.h"


/* Odd sizes, so no loop happens to line up with a vector width. */
#define NSEQ 4
#define C 12
#define NH 3

static const int32_t seq_start[NSEQ + 1] = {0, 4, 5, 5, 8};

#define N 8						/* seq_start[NSEQ] */


/* Set up the generator; two engine threads exercise the split of the tasks. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 20240612);
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


/* ---- attention ------------------------------------------------------------ */

typedef struct AttentionCase
{
	int			ld;				/* C: separate q, k, v; 3C: slices of one buffer */
	real	   *q;
	real	   *k;
	real	   *v;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *out;
	real	   *probs;
	real	   *dropped;
	real	   *scratch;
	real	   *w;
	uint8_t    *keep;
	real		p;
} AttentionCase;

/* L = sum(w * varlen_attention(q, k, v)) */
static double
attention_loss(void *arg)
{
	AttentionCase *c = arg;

	varlen_attention_forward(c->out, c->probs, c->dropped, c->q, c->k, c->v, c->ld,
							 c->keep, c->p, seq_start, NSEQ, C, NH);
	return project(c->w, c->out, (size_t) N * C);
}

/* Forward (for probs) then backward with dout = w. */
static void
attention_grad(void *arg)
{
	AttentionCase *c = arg;

	attention_loss(c);
	varlen_attention_backward(c->dq, c->dk, c->dv, c->scratch, c->w, c->probs,
							  c->q, c->k, c->v, c->ld, c->keep, c->p,
							  seq_start, NSEQ, C, NH);
}

/* Fill an attention case with random inputs (one [N, ld] buffer when ld = 3C). */
static void
attention_case_init(AttentionCase *c, int ld, size_t np)
{
	memset(c, 0, sizeof(*c));
	c->ld = ld;
	if (ld == 3 * C)
	{
		c->q = random_array((size_t) N * ld, -1.5, 1.5);
		c->k = c->q + C;
		c->v = c->q + 2 * C;
		c->dq = calloc((size_t) N * ld, sizeof(real));
		c->dk = c->dq + C;
		c->dv = c->dq + 2 * C;
	}
	else
	{
		c->q = random_array((size_t) N * C, -1.5, 1.5);
		c->k = random_array((size_t) N * C, -1.5, 1.5);
		c->v = random_array((size_t) N * C, -1, 1);
		c->dq = calloc((size_t) N * C, sizeof(real));
		c->dk = calloc((size_t) N * C, sizeof(real));
		c->dv = calloc((size_t) N * C, sizeof(real));
	}
	c->out = calloc((size_t) N * C, sizeof(real));
	c->probs = calloc(np, sizeof(real));
	c->dropped = calloc(np, sizeof(real));
	c->scratch = calloc(np, sizeof(real));
	c->w = random_array((size_t) N * C, -1, 1);
}

/* Free an attention case. */
static void
attention_case_free(AttentionCase *c)
{
	free(c->q);
	free(c->dq);
	if (c->ld != 3 * C)
	{
		free(c->k);
		free(c->v);
		free(c->dk);
		free(c->dv);
	}
	free(c->out);
	free(c->probs);
	free(c->dropped);
	free(c->scratch);
	free(c->w);
	free(c->keep);
}

/* Separate q, k, v [N, C], without and with a dropout keep mask. */
static void
test_attention(void **state)
{
	size_t		np = varlen_attention_size(seq_start, NSEQ, NH);
	AttentionCase c;
	GradInput	inputs[3];
	PeftRng		mask_rng;

	(void) state;
	assert_int_equal(np, (size_t) NH * (16 + 1 + 0 + 9));
	attention_case_init(&c, C, np);
	inputs[0] = (GradInput) {"q", c.q, c.dq, (size_t) N * C};
	inputs[1] = (GradInput) {"k", c.k, c.dk, (size_t) N * C};
	inputs[2] = (GradInput) {"v", c.v, c.dv, (size_t) N * C};
	assert_true(gradcheck("varlen attention", &c, attention_loss, attention_grad,
						  inputs, 3) < GRAD_TOLERANCE);

	c.p = 0.25;
	c.keep = malloc(np);
	peft_rng_seed(&mask_rng, 11);
	dropout_mask(c.keep, np, c.p, &mask_rng);
	assert_true(gradcheck("varlen attention (dropout)", &c, attention_loss, attention_grad,
						  inputs, 3) < GRAD_TOLERANCE);
	attention_case_free(&c);
}

/* q, k, v as column slices of one [N, 3C] buffer (the network's fused layout). */
static void
test_attention_fused_layout(void **state)
{
	size_t		np = varlen_attention_size(seq_start, NSEQ, NH);
	AttentionCase c;
	GradInput	inputs[1];
	PeftRng		mask_rng;

	(void) state;
	attention_case_init(&c, 3 * C, np);
	inputs[0] = (GradInput) {"qkv", c.q, c.dq, (size_t) N * 3 * C};
	assert_true(gradcheck("varlen attention [N,3C]", &c, attention_loss, attention_grad,
						  inputs, 1) < GRAD_TOLERANCE);

	c.p = 0.4;
	c.keep = malloc(np);
	peft_rng_seed(&mask_rng, 12);
	dropout_mask(c.keep, np, c.p, &mask_rng);
	assert_true(gradcheck("varlen attention [N,3C] drop", &c, attention_loss, attention_grad,
						  inputs, 1) < GRAD_TOLERANCE);
	attention_case_free(&c);
}

/* A length-1 sequence's output is its own value row, whatever q and k are. */
static void
test_attention_length_one(void **state)
{
	size_t		np = varlen_attention_size(seq_start, NSEQ, NH);
	AttentionCase c;

	(void) state;
	attention_case_init(&c, C, np);
	attention_loss(&c);
	for (int ch = 0; ch < C; ch++)
		assert_true(fabs(c.out[4 * C + ch] - c.v[4 * C + ch]) < 1e-15);
	/* its probability block (after sequence 0's 3 blocks of 16) is 1 */
	for (int h = 0; h < NH; h++)
		assert_true(c.probs[NH * 16 + h] == 1);
	attention_case_free(&c);
}


/* ---- pooling -------------------------------------------------------------- */

typedef struct PoolCase
{
	real	   *x;
	real	   *dx;
	real	   *out;
	real	   *w;
} PoolCase;

/* L = sum(w * varlen_mean_pool(x)) */
static double
mean_pool_loss(void *arg)
{
	PoolCase   *c = arg;

	varlen_mean_pool_forward(c->out, c->x, seq_start, NSEQ, C);
	return project(c->w, c->out, (size_t) NSEQ * C);
}

/* Backward of the mean pool with dout = w. */
static void
mean_pool_grad(void *arg)
{
	PoolCase   *c = arg;

	varlen_mean_pool_backward(c->dx, c->w, seq_start, NSEQ, C);
}

/* L = sum(w * varlen_cls_pool(x)) */
static double
cls_pool_loss(void *arg)
{
	PoolCase   *c = arg;

	varlen_cls_pool_forward(c->out, c->x, seq_start, NSEQ, C);
	return project(c->w, c->out, (size_t) NSEQ * C);
}

/* Backward of the CLS pool with dout = w. */
static void
cls_pool_grad(void *arg)
{
	PoolCase   *c = arg;

	varlen_cls_pool_backward(c->dx, c->w, seq_start, NSEQ, C);
}

/* Mean and CLS pooling of packed rows; the empty sequence pools to zeros. */
static void
test_pooling(void **state)
{
	PoolCase	c;
	GradInput	inputs[1];

	(void) state;
	c.x = random_array((size_t) N * C, -1, 1);
	c.dx = calloc((size_t) N * C, sizeof(real));
	c.out = calloc((size_t) NSEQ * C, sizeof(real));
	c.w = random_array((size_t) NSEQ * C, -1, 1);
	inputs[0] = (GradInput) {"inp", c.x, c.dx, (size_t) N * C};

	assert_true(gradcheck("varlen mean_pool", &c, mean_pool_loss, mean_pool_grad,
						  inputs, 1) < GRAD_TOLERANCE);
	for (int ch = 0; ch < C; ch++)
		assert_true(c.out[2 * C + ch] == 0);
	assert_true(gradcheck("varlen cls_pool", &c, cls_pool_loss, cls_pool_grad,
						  inputs, 1) < GRAD_TOLERANCE);
	for (int ch = 0; ch < C; ch++)
		assert_true(c.out[2 * C + ch] == 0);

	free(c.x);
	free(c.dx);
	free(c.out);
	free(c.w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attention),
		cmocka_unit_test(test_attention_fused_layout),
		cmocka_unit_test(test_attention_length_one),
		cmocka_unit_test(test_pooling),
	};

	return cmocka_run_group_tests_name("gradient check: packed (varlen) ops (double)",
									   tests, setup, teardown);
}
