/*
 * gradcheck_ops_decoder.c - the backward passes of ops_decoder.h (RMSNorm,
 * RoPE in both layouts, SwiGLU, causal GQA attention over a KV cache)
 * against central finite differences, in double precision (built with
 * -DPEFT_DOUBLE).
 *
 * As in gradcheck_ops.c: for y = f(x) take L = sum(w * y), run the backward
 * with dout = w into gradient buffers pre-filled with random values, and
 * compare (buffer - prefill) with (L(x + h) - L(x - h)) / 2h for every
 * input element, which also checks that backward accumulates.  Attention's
 * rows span three slots, one of them past the forward's first chunk of 64
 * keys, so the gradient also goes through the online softmax's rescaling;
 * a second shape has heads of 36 values (a register block of 32 and a tail).
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

#include "ops_decoder.h"
#include "rng.h"
#include "threadpool.h"
#include "gradcheck_util.h"

/*
 * Normwise limits (largest |analytic - numeric| over the largest gradient)
 * per op, with the worst figure measured here over every input of its
 * test: all are finite-difference noise, far under GRAD_TOLERANCE (1e-6),
 * which gradcheck() itself enforces.
 */
#define TOL_GRAD_RMSNORM 1e-8	/* measured 7.8e-10 */
#define TOL_GRAD_ROPE 1e-8		/* measured 8.7e-10 */
#define TOL_GRAD_SWIGLU 1e-8	/* measured 5.1e-10 */
#define TOL_GRAD_ATTENTION 1e-7 /* measured 1.2e-8 (dkcache: its gradients are small beside the step's noise) */


/* Set up the generator; two engine threads exercise the splits. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 20251205);
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


/* ---- RMSNorm -------------------------------------------------------------- */

/* Odd sizes, so no loop happens to line up with a vector width. */
#define RMS_N 3
#define RMS_C 13
#define RMS_EPS 1e-5

typedef struct RmsNormCase
{
	real	   *x;
	real	   *weight;
	real	   *dx;
	real	   *dweight;
	real	   *out;
	real	   *rstd;
	real	   *w;
	bool		frozen_inp;		/* backward with dinp NULL */
} RmsNormCase;

/* L = sum(w * rmsnorm(x)) */
static double
rmsnorm_loss(void *arg)
{
	RmsNormCase *c = arg;

	rmsnorm_forward(c->out, c->rstd, c->x, c->weight, RMS_N, RMS_C, RMS_EPS);
	return project(c->w, c->out, (size_t) RMS_N * RMS_C);
}

/* Forward for rstd, then backward with dout = w. */
static void
rmsnorm_grad(void *arg)
{
	RmsNormCase *c = arg;

	rmsnorm_forward(c->out, c->rstd, c->x, c->weight, RMS_N, RMS_C, RMS_EPS);
	rmsnorm_backward(c->frozen_inp ? NULL : c->dx, c->dweight, c->w, c->x, c->weight,
					 c->rstd, RMS_N, RMS_C);
}

/* RMSNorm: input and weight gradients; then the weight's alone (dinp NULL). */
static void
test_rmsnorm(void **state)
{
	RmsNormCase c = {0};
	size_t		n = (size_t) RMS_N * RMS_C;
	GradInput	inputs[2];
	double		worst;

	(void) state;
	/* an offset mean: RMSNorm must not subtract it */
	c.x = random_array(n, -1, 2);
	c.weight = random_array(RMS_C, 0.5, 1.5);
	c.dx = calloc(n, sizeof(real));
	c.dweight = calloc(RMS_C, sizeof(real));
	c.out = calloc(n, sizeof(real));
	c.rstd = calloc(RMS_N, sizeof(real));
	c.w = random_array(n, -1, 1);
	inputs[0] = (GradInput) {"weight", c.weight, c.dweight, RMS_C};
	inputs[1] = (GradInput) {"inp", c.x, c.dx, n};
	worst = gradcheck("rmsnorm", &c, rmsnorm_loss, rmsnorm_grad, inputs, 2);
	assert_true(worst < TOL_GRAD_RMSNORM);

	c.frozen_inp = true;
	worst = gradcheck("rmsnorm (dinp NULL)", &c, rmsnorm_loss, rmsnorm_grad, inputs, 1);
	assert_true(worst < TOL_GRAD_RMSNORM);

	free(c.x);
	free(c.weight);
	free(c.dx);
	free(c.dweight);
	free(c.out);
	free(c.rstd);
	free(c.w);
}


/* ---- RoPE ----------------------------------------------------------------- */

#define ROPE_N 4
#define ROPE_H 2
#define ROPE_D 10				/* five pairs: no vector width divides it */
#define ROPE_SIZE ((size_t) ROPE_N * ROPE_H * ROPE_D)

static const int32_t rope_pos[ROPE_N] = {0, 3, 17, 1000};

typedef struct RopeCase
{
	RopeLayout	layout;
	real	   *x;
	real	   *dx;
	real	   *y;
	real	   *g;
	real	   *w;
} RopeCase;

/* L = sum(w * rope(x)) */
static double
rope_loss(void *arg)
{
	RopeCase   *c = arg;

	memcpy(c->y, c->x, ROPE_SIZE * sizeof(real));
	rope_forward(c->y, rope_pos, ROPE_N, ROPE_H, ROPE_D, 10000, c->layout);
	return project(c->w, c->y, ROPE_SIZE);
}

/* rope_backward turns dout in place; the harness wants it added to dx. */
static void
rope_grad(void *arg)
{
	RopeCase   *c = arg;

	memcpy(c->g, c->w, ROPE_SIZE * sizeof(real));
	rope_backward(c->g, rope_pos, ROPE_N, ROPE_H, ROPE_D, 10000, c->layout);
	for (size_t i = 0; i < ROPE_SIZE; i++)
		c->dx[i] += c->g[i];
}

/* RoPE, both layouts, at positions 0 (no turn) to 1000. */
static void
test_rope(void **state)
{
	static const RopeLayout layouts[] = {ROPE_PAIRS, ROPE_HALVES};
	static const char *const names[] = {"rope pairs", "rope halves"};

	(void) state;
	for (int l = 0; l < 2; l++)
	{
		RopeCase	c = {.layout = layouts[l]};
		GradInput	input;

		c.x = random_array(ROPE_SIZE, -1, 1);
		c.dx = calloc(ROPE_SIZE, sizeof(real));
		c.y = calloc(ROPE_SIZE, sizeof(real));
		c.g = calloc(ROPE_SIZE, sizeof(real));
		c.w = random_array(ROPE_SIZE, -1, 1);
		input = (GradInput) {"x", c.x, c.dx, ROPE_SIZE};
		assert_true(gradcheck(names[l], &c, rope_loss, rope_grad, &input, 1) < TOL_GRAD_ROPE);
		free(c.x);
		free(c.dx);
		free(c.y);
		free(c.g);
		free(c.w);
	}
}


/* ---- SwiGLU --------------------------------------------------------------- */

#define SWIGLU_N 37

typedef struct SwigluCase
{
	real	   *gate;
	real	   *up;
	real	   *dgate;
	real	   *dup;
	real	   *out;
	real	   *w;
	bool		gate_only;		/* backward with dup NULL */
} SwigluCase;

/* L = sum(w * silu(gate) * up) */
static double
swiglu_loss(void *arg)
{
	SwigluCase *c = arg;

	swiglu_forward(c->out, c->gate, c->up, SWIGLU_N);
	return project(c->w, c->out, SWIGLU_N);
}

/* Backward with dout = w. */
static void
swiglu_grad(void *arg)
{
	SwigluCase *c = arg;

	swiglu_backward(c->dgate, c->gate_only ? NULL : c->dup, c->w, c->gate, c->up, SWIGLU_N);
}

/* SwiGLU over gates in [-8, 8]; then dgate alone (dup NULL). */
static void
test_swiglu(void **state)
{
	SwigluCase	c = {0};
	GradInput	inputs[2];

	(void) state;
	c.gate = random_array(SWIGLU_N, -8, 8);
	c.up = random_array(SWIGLU_N, -1, 1);
	c.dgate = calloc(SWIGLU_N, sizeof(real));
	c.dup = calloc(SWIGLU_N, sizeof(real));
	c.out = calloc(SWIGLU_N, sizeof(real));
	c.w = random_array(SWIGLU_N, -1, 1);
	inputs[0] = (GradInput) {"gate", c.gate, c.dgate, SWIGLU_N};
	inputs[1] = (GradInput) {"up", c.up, c.dup, SWIGLU_N};
	assert_true(gradcheck("swiglu", &c, swiglu_loss, swiglu_grad, inputs, 2) < TOL_GRAD_SWIGLU);
	c.gate_only = true;
	assert_true(gradcheck("swiglu (dup NULL)", &c, swiglu_loss, swiglu_grad, inputs, 1) <
				TOL_GRAD_SWIGLU);
	free(c.gate);
	free(c.up);
	free(c.dgate);
	free(c.dup);
	free(c.out);
	free(c.w);
}


/* ---- attention ------------------------------------------------------------ */

/* One attention shape and its rows. */
typedef struct AttentionShape
{
	const char *name;
	int			N;
	int			Hq;
	int			Hkv;
	int			D;
	int			ctx;
	int			slots;
	const int32_t *slot;
	const int32_t *pos;
} AttentionShape;

/*
 * Rows of the first shape: a prompt's last chunk in slot 2 at positions
 * 66..69 (past the first 64 keys), a decode row in slot 0 at position 10,
 * and a new prompt in slot 1 at positions 0..2, interleaved.  The second
 * shape has a head of 36 values (a block of 32 accumulated in registers
 * and a tail) over a short cache.
 */
static const int32_t long_slot[] = {2, 1, 2, 0, 1, 2, 1, 2};
static const int32_t long_pos[] = {66, 0, 67, 10, 1, 68, 2, 69};
static const int32_t wide_slot[] = {0, 0, 0};
static const int32_t wide_pos[] = {7, 2, 5};

static const AttentionShape attention_shapes[] = {
	{"gqa attention", 8, 4, 2, 5, 70, 3, long_slot, long_pos},
	{"gqa attention D=36", 3, 2, 1, 36, 8, 1, wide_slot, wide_pos},
};

typedef struct AttentionCase
{
	const AttentionShape *shape;
	real	   *q;
	real	   *kcache;
	real	   *vcache;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *out;
	real	   *probs;
	real	   *w;
	bool		no_dq;			/* backward with dq NULL */
	bool		no_dkv;			/* backward with dkcache and dvcache NULL */
} AttentionCase;

/* Elements of q (and out) of shape s. */
static size_t
attention_q_size(const AttentionShape *s)
{
	return (size_t) s->N * s->Hq * s->D;
}

/* Elements of one cache of shape s. */
static size_t
attention_cache_size(const AttentionShape *s)
{
	return (size_t) s->slots * s->ctx * s->Hkv * s->D;
}

/* L = sum(w * attention(q, cache)) */
static double
attention_loss(void *arg)
{
	AttentionCase *c = arg;
	const AttentionShape *s = c->shape;

	gqa_attention_forward(c->out, c->probs, c->q, c->kcache, c->vcache, s->slot, s->pos,
						  s->N, s->Hq, s->Hkv, s->D, s->ctx);
	return project(c->w, c->out, attention_q_size(s));
}

/* Forward for the probs, then backward with dout = w. */
static void
attention_grad(void *arg)
{
	AttentionCase *c = arg;
	const AttentionShape *s = c->shape;

	attention_loss(c);
	gqa_attention_backward(c->no_dq ? NULL : c->dq, c->no_dkv ? NULL : c->dk,
						   c->no_dkv ? NULL : c->dv, c->w, c->q, c->kcache, c->vcache,
						   c->probs, s->slot, s->pos, s->N, s->Hq, s->Hkv, s->D, s->ctx);
}

/* Attention, each shape: q, key and value cache gradients; then dq alone and the cache's alone. */
static void
test_attention(void **state)
{
	(void) state;
	for (size_t i = 0; i < sizeof(attention_shapes) / sizeof(attention_shapes[0]); i++)
	{
		const AttentionShape *s = &attention_shapes[i];
		size_t		nq = attention_q_size(s);
		size_t		ncache = attention_cache_size(s);
		AttentionCase c = {.shape = s};
		GradInput	inputs[3];
		real	   *dq_before;
		char		what[64];

		c.q = random_array(nq, -1, 1);
		/* large enough scores that the softmax is far from uniform */
		c.kcache = random_array(ncache, -2, 2);
		c.vcache = random_array(ncache, -1, 1);
		c.dq = calloc(nq, sizeof(real));
		c.dk = calloc(ncache, sizeof(real));
		c.dv = calloc(ncache, sizeof(real));
		c.out = calloc(nq, sizeof(real));
		c.probs = calloc((size_t) s->N * s->Hq * s->ctx, sizeof(real));
		c.w = random_array(nq, -1, 1);
		inputs[0] = (GradInput) {"q", c.q, c.dq, nq};
		inputs[1] = (GradInput) {"kcache", c.kcache, c.dk, ncache};
		inputs[2] = (GradInput) {"vcache", c.vcache, c.dv, ncache};
		assert_true(gradcheck(s->name, &c, attention_loss, attention_grad, inputs, 3) <
					TOL_GRAD_ATTENTION);

		c.no_dkv = true;
		snprintf(what, sizeof(what), "%s (dq only)", s->name);
		assert_true(gradcheck(what, &c, attention_loss, attention_grad, inputs, 1) <
					TOL_GRAD_ATTENTION);
		c.no_dkv = false;
		c.no_dq = true;
		dq_before = malloc(nq * sizeof(real));
		memcpy(dq_before, c.dq, nq * sizeof(real));
		snprintf(what, sizeof(what), "%s (cache only)", s->name);
		assert_true(gradcheck(what, &c, attention_loss, attention_grad, inputs + 1, 2) <
					TOL_GRAD_ATTENTION);
		assert_memory_equal(dq_before, c.dq, nq * sizeof(real));

		free(dq_before);
		free(c.q);
		free(c.kcache);
		free(c.vcache);
		free(c.dq);
		free(c.dk);
		free(c.dv);
		free(c.out);
		free(c.probs);
		free(c.w);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_swiglu),
		cmocka_unit_test(test_attention),
	};

	return cmocka_run_group_tests_name("gradient check: decoder ops (double)",
									   tests, setup, teardown);
}
