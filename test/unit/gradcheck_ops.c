/*
 * gradcheck_ops.c - every backward in ops.h and ops_reference.h against
 * central finite differences, in double precision (built with
 * -DPEFT_DOUBLE).
 *
 * For an op y = f(x) we take a random projection L = sum(w * y), run the
 * backward with dout = w into gradient buffers pre-filled with random
 * values, and compare (buffer - prefill) with (L(x + h) - L(x - h)) / 2h
 * for every input element.  Subtracting the prefill checks the
 * accumulate-into-gradients convention at the same time: a backward that
 * overwrote its outputs would be off by the prefill.
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
#include "ops_reference.h"
#include "rng.h"
#include "threadpool.h"
#include "gradcheck_util.h"


/* Odd sizes, so no loop happens to line up with a vector width. */
#define B 2
#define T 5
#define C 12
#define NH 3
#define K 7

/* mask[B,T]: batch row 0 all real, row 1 with its last two tokens padded. */
static void
fill_padding_mask(int32_t *mask)
{
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			mask[b * T + t] = (b == 1 && t >= T - 2) ? 0 : 1;
}

/* Set up the generator once; use two engine threads to exercise splitting. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 20240611);
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


/* ---- linear ------------------------------------------------------------ */

typedef struct LinearCase
{
	int			N;
	int			IC;
	int			OC;
	real	   *x;
	real	   *weight;
	real	   *bias;
	real	   *dx;
	real	   *dweight;
	real	   *dbias;
	real	   *out;
	real	   *w;
} LinearCase;

/* L = sum(w * linear(x)) */
static double
linear_loss(void *arg)
{
	LinearCase *c = arg;

	linear_forward(c->out, c->x, c->weight, c->bias, c->N, c->IC, c->OC);
	return project(c->w, c->out, (size_t) c->N * c->OC);
}

/* Backward of linear with dout = w. */
static void
linear_grad(void *arg)
{
	LinearCase *c = arg;

	linear_backward(c->dx, c->dweight, c->dbias, c->w, c->x, c->weight,
					c->N, c->IC, c->OC);
}

/* linear: input, weight and bias gradients; then NULL outputs are skipped. */
static void
test_linear(void **state)
{
	LinearCase	c = {.N = B * T, .IC = C, .OC = 9};
	size_t		nx = (size_t) c.N * c.IC;
	size_t		nw = (size_t) c.OC * c.IC;
	GradInput	inputs[3];
	real	   *dweight_before;

	(void) state;
	c.x = random_array(nx, -1, 1);
	c.weight = random_array(nw, -1, 1);
	c.bias = random_array(c.OC, -1, 1);
	c.dx = calloc(nx, sizeof(real));
	c.dweight = calloc(nw, sizeof(real));
	c.dbias = calloc(c.OC, sizeof(real));
	c.out = calloc((size_t) c.N * c.OC, sizeof(real));
	c.w = random_array((size_t) c.N * c.OC, -1, 1);
	inputs[0] = (GradInput) {"inp", c.x, c.dx, nx};
	inputs[1] = (GradInput) {"weight", c.weight, c.dweight, nw};
	inputs[2] = (GradInput) {"bias", c.bias, c.dbias, (size_t) c.OC};
	assert_true(gradcheck("linear", &c, linear_loss, linear_grad, inputs, 3) < GRAD_TOLERANCE);

	/* Frozen weight and no bias: only dinp is written, the rest untouched. */
	dweight_before = malloc(nw * sizeof(real));
	memcpy(dweight_before, c.dweight, nw * sizeof(real));
	linear_backward(c.dx, NULL, NULL, c.w, c.x, c.weight, c.N, c.IC, c.OC);
	assert_memory_equal(dweight_before, c.dweight, nw * sizeof(real));
	{
		real	   *saved_bias = c.bias;

		c.bias = NULL;
		assert_true(gradcheck("linear (no bias)", &c, linear_loss, linear_grad,
							  inputs, 2) < GRAD_TOLERANCE);
		c.bias = saved_bias;
	}
	free(dweight_before);
	free(c.x);
	free(c.weight);
	free(c.bias);
	free(c.dx);
	free(c.dweight);
	free(c.dbias);
	free(c.out);
	free(c.w);
}


/* ---- layernorm ------------------------------------------------------------- */

typedef struct LayerNormCase
{
	int			N;
	real	   *x;
	real	   *gamma;
	real	   *beta;
	real	   *dx;
	real	   *dgamma;
	real	   *dbeta;
	real	   *out;
	real	   *mean;
	real	   *rstd;
	real	   *w;
} LayerNormCase;

/* L = sum(w * layernorm(x)) */
static double
layernorm_loss(void *arg)
{
	LayerNormCase *c = arg;

	layernorm_forward(c->out, c->mean, c->rstd, c->x, c->gamma, c->beta,
					  c->N, C, 1e-5);
	return project(c->w, c->out, (size_t) c->N * C);
}

/* Forward (for mean, rstd) then backward with dout = w. */
static void
layernorm_grad(void *arg)
{
	LayerNormCase *c = arg;

	layernorm_loss(c);
	layernorm_backward(c->dx, c->dgamma, c->dbeta, c->w, c->x, c->gamma,
					   c->mean, c->rstd, c->N, C);
}

/* layernorm: input, gamma and beta gradients. */
static void
test_layernorm(void **state)
{
	LayerNormCase c = {.N = B * T};
	size_t		nx = (size_t) c.N * C;
	GradInput	inputs[3];

	(void) state;
	c.x = random_array(nx, -2, 2);
	c.gamma = random_array(C, 0.5, 1.5);
	c.beta = random_array(C, -0.5, 0.5);
	c.dx = calloc(nx, sizeof(real));
	c.dgamma = calloc(C, sizeof(real));
	c.dbeta = calloc(C, sizeof(real));
	c.out = calloc(nx, sizeof(real));
	c.mean = calloc(c.N, sizeof(real));
	c.rstd = calloc(c.N, sizeof(real));
	c.w = random_array(nx, -1, 1);
	inputs[0] = (GradInput) {"inp", c.x, c.dx, nx};
	inputs[1] = (GradInput) {"gamma", c.gamma, c.dgamma, C};
	inputs[2] = (GradInput) {"beta", c.beta, c.dbeta, C};
	assert_true(gradcheck("layernorm", &c, layernorm_loss, layernorm_grad, inputs, 3) < GRAD_TOLERANCE);
	free(c.x);
	free(c.gamma);
	free(c.beta);
	free(c.dx);
	free(c.dgamma);
	free(c.dbeta);
	free(c.out);
	free(c.mean);
	free(c.rstd);
	free(c.w);
}


/* ---- element-wise: gelu, dropout ------------------------------------------- */

typedef struct ElementwiseCase
{
	size_t		n;
	real	   *x;
	real	   *dx;
	real	   *out;
	real	   *w;
	uint8_t    *keep;
	real		p;
} ElementwiseCase;

/* L = sum(w * gelu(x)) */
static double
gelu_loss(void *arg)
{
	ElementwiseCase *c = arg;

	gelu_forward(c->out, c->x, c->n);
	return project(c->w, c->out, c->n);
}

/* Backward of gelu with dout = w. */
static void
gelu_grad(void *arg)
{
	ElementwiseCase *c = arg;

	gelu_backward(c->dx, c->x, c->w, c->n);
}

/* gelu: input gradient over [-4, 4]. */
static void
test_gelu(void **state)
{
	ElementwiseCase c = {.n = (size_t) B * T * C};
	GradInput	inputs[1];

	(void) state;
	c.x = random_array(c.n, -4, 4);
	c.dx = calloc(c.n, sizeof(real));
	c.out = calloc(c.n, sizeof(real));
	c.w = random_array(c.n, -1, 1);
	inputs[0] = (GradInput) {"inp", c.x, c.dx, c.n};
	assert_true(gradcheck("gelu", &c, gelu_loss, gelu_grad, inputs, 1) < GRAD_TOLERANCE);
	free(c.x);
	free(c.dx);
	free(c.out);
	free(c.w);
}

/* L = sum(w * dropout(x, keep)) */
static double
dropout_loss(void *arg)
{
	ElementwiseCase *c = arg;

	dropout_forward(c->out, c->x, c->keep, c->p, c->n);
	return project(c->w, c->out, c->n);
}

/* Backward of dropout with dout = w. */
static void
dropout_grad(void *arg)
{
	ElementwiseCase *c = arg;

	dropout_backward(c->dx, c->w, c->keep, c->p, c->n);
}

/* dropout with a fixed keep mask (p = 0.3). */
static void
test_dropout(void **state)
{
	ElementwiseCase c = {.n = (size_t) B * T * C, .p = 0.3};
	GradInput	inputs[1];
	PeftRng		mask_rng;
	size_t		kept = 0;

	(void) state;
	c.x = random_array(c.n, -1, 1);
	c.dx = calloc(c.n, sizeof(real));
	c.out = calloc(c.n, sizeof(real));
	c.w = random_array(c.n, -1, 1);
	c.keep = malloc(c.n);
	peft_rng_seed(&mask_rng, 7);
	dropout_mask(c.keep, c.n, c.p, &mask_rng);
	for (size_t i = 0; i < c.n; i++)
		kept += c.keep[i];
	assert_true(kept > 0 && kept < c.n);	/* both branches exercised */
	inputs[0] = (GradInput) {"inp", c.x, c.dx, c.n};
	assert_true(gradcheck("dropout", &c, dropout_loss, dropout_grad, inputs, 1) < GRAD_TOLERANCE);
	free(c.x);
	free(c.dx);
	free(c.out);
	free(c.w);
	free(c.keep);
}


/* ---- attention -------------------------------------------------------------- */

typedef struct AttentionCase
{
	real	   *q;
	real	   *k;
	real	   *v;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *out;
	real	   *probs;
	real	   *scratch;
	real	   *w;
	int32_t		mask[B * T];
	uint8_t    *keep;
	real		p;
} AttentionCase;

/* L = sum(w * attention(q, k, v)) */
static double
attention_loss(void *arg)
{
	AttentionCase *c = arg;

	attention_forward(c->out, c->probs, c->q, c->k, c->v, c->mask, c->keep,
					  c->p, B, T, C, NH);
	return project(c->w, c->out, (size_t) B * T * C);
}

/* Forward (for probs) then backward with dout = w. */
static void
attention_grad(void *arg)
{
	AttentionCase *c = arg;

	attention_loss(c);
	attention_backward(c->dq, c->dk, c->dv, c->scratch, c->w, c->probs,
					   c->q, c->k, c->v, c->mask, c->keep, c->p, B, T, C, NH);
}

/* attention with a padding mask, without and with a dropout keep mask. */
static void
test_attention(void **state)
{
	AttentionCase c = {0};
	size_t		n = (size_t) B * T * C;
	size_t		np = (size_t) B * NH * T * T;
	GradInput	inputs[3];
	PeftRng		mask_rng;

	(void) state;
	c.q = random_array(n, -1.5, 1.5);
	c.k = random_array(n, -1.5, 1.5);
	c.v = random_array(n, -1, 1);
	c.dq = calloc(n, sizeof(real));
	c.dk = calloc(n, sizeof(real));
	c.dv = calloc(n, sizeof(real));
	c.out = calloc(n, sizeof(real));
	c.probs = calloc(np, sizeof(real));
	c.scratch = calloc(np, sizeof(real));
	c.w = random_array(n, -1, 1);
	fill_padding_mask(c.mask);
	inputs[0] = (GradInput) {"q", c.q, c.dq, n};
	inputs[1] = (GradInput) {"k", c.k, c.dk, n};
	inputs[2] = (GradInput) {"v", c.v, c.dv, n};
	assert_true(gradcheck("attention", &c, attention_loss, attention_grad, inputs, 3) < GRAD_TOLERANCE);

	c.p = 0.25;
	c.keep = malloc(np);
	peft_rng_seed(&mask_rng, 11);
	dropout_mask(c.keep, np, c.p, &mask_rng);
	assert_true(gradcheck("attention (dropout)", &c, attention_loss, attention_grad, inputs, 3) < GRAD_TOLERANCE);

	free(c.q);
	free(c.k);
	free(c.v);
	free(c.dq);
	free(c.dk);
	free(c.dv);
	free(c.out);
	free(c.probs);
	free(c.scratch);
	free(c.w);
	free(c.keep);
}


/* ---- pooling and normalisation ---------------------------------------------- */

typedef struct PoolCase
{
	real	   *x;
	real	   *dx;
	real	   *out;
	real	   *norm;
	real	   *w;
	int32_t		mask[B * T];
} PoolCase;

/* L = sum(w * mean_pool(x)) */
static double
mean_pool_loss(void *arg)
{
	PoolCase   *c = arg;

	mean_pool_forward(c->out, c->x, c->mask, B, T, C);
	return project(c->w, c->out, (size_t) B * C);
}

/* Backward of mean_pool with dout = w. */
static void
mean_pool_grad(void *arg)
{
	PoolCase   *c = arg;

	mean_pool_backward(c->dx, c->w, c->mask, B, T, C);
}

/* L = sum(w * cls_pool(x)) */
static double
cls_pool_loss(void *arg)
{
	PoolCase   *c = arg;

	cls_pool_forward(c->out, c->x, B, T, C);
	return project(c->w, c->out, (size_t) B * C);
}

/* Backward of cls_pool with dout = w. */
static void
cls_pool_grad(void *arg)
{
	PoolCase   *c = arg;

	cls_pool_backward(c->dx, c->w, B, T, C);
}

/* L = sum(w * l2norm(x)) over x[B*T, C] */
static double
l2norm_loss(void *arg)
{
	PoolCase   *c = arg;

	l2norm_forward(c->out, c->norm, c->x, B * T, C);
	return project(c->w, c->out, (size_t) B * T * C);
}

/* Forward (for norm) then backward with dout = w. */
static void
l2norm_grad(void *arg)
{
	PoolCase   *c = arg;

	l2norm_loss(c);
	l2norm_backward(c->dx, c->w, c->x, c->norm, B * T, C);
}

/* mean_pool (with padding), cls_pool and l2norm. */
static void
test_pooling(void **state)
{
	PoolCase	c = {0};
	size_t		n = (size_t) B * T * C;
	GradInput	inputs[1];

	(void) state;
	c.x = random_array(n, -1, 1);
	c.dx = calloc(n, sizeof(real));
	c.out = calloc(n, sizeof(real));
	c.norm = calloc((size_t) B * T, sizeof(real));
	c.w = random_array(n, -1, 1);
	fill_padding_mask(c.mask);
	inputs[0] = (GradInput) {"inp", c.x, c.dx, n};

	assert_true(gradcheck("mean_pool", &c, mean_pool_loss, mean_pool_grad, inputs, 1) < GRAD_TOLERANCE);
	assert_true(gradcheck("cls_pool", &c, cls_pool_loss, cls_pool_grad, inputs, 1) < GRAD_TOLERANCE);
	assert_true(gradcheck("l2norm", &c, l2norm_loss, l2norm_grad, inputs, 1) < GRAD_TOLERANCE);

	/* Padded tokens get no gradient from mean pooling. */
	memset(c.dx, 0, n * sizeof(real));
	mean_pool_backward(c.dx, c.w, c.mask, B, T, C);
	for (int t = T - 2; t < T; t++)
		for (int ch = 0; ch < C; ch++)
			assert_true(c.dx[((size_t) 1 * T + t) * C + ch] == 0);

	free(c.x);
	free(c.dx);
	free(c.out);
	free(c.norm);
	free(c.w);
}


/* ---- losses ------------------------------------------------------------------- */

typedef struct LossCase
{
	real	   *logits;
	real	   *dlogits;
	real	   *probs;
	int32_t		labels[B * T];
	real		dloss;			/* the projection weight of the scalar loss */
	int			rows;
} LossCase;

/* L = dloss * cross_entropy(logits) */
static double
cross_entropy_loss(void *arg)
{
	LossCase   *c = arg;

	return c->dloss * cross_entropy_forward(c->probs, c->logits, c->labels,
											c->rows, K);
}

/* Forward (for probs) then backward with the weight as dloss. */
static void
cross_entropy_grad(void *arg)
{
	LossCase   *c = arg;

	cross_entropy_loss(c);
	cross_entropy_backward(c->dlogits, c->probs, c->labels, c->dloss, c->rows, K);
}

/* L = dloss * mse(pred, target); logits holds pred, probs the target. */
static double
mse_loss(void *arg)
{
	LossCase   *c = arg;

	return c->dloss * mse_forward(c->logits, c->probs, c->rows);
}

/* Backward of mse with the weight as dloss. */
static void
mse_grad(void *arg)
{
	LossCase   *c = arg;

	mse_backward(c->dlogits, c->logits, c->probs, c->dloss, c->rows);
}

/* cross_entropy and mse. */
static void
test_losses(void **state)
{
	LossCase	c = {.rows = B * T, .dloss = 1.7};
	size_t		n = (size_t) c.rows * K;
	GradInput	inputs[1];

	(void) state;
	c.logits = random_array(n, -3, 3);
	c.dlogits = calloc(n, sizeof(real));
	c.probs = calloc(n, sizeof(real));
	for (int i = 0; i < c.rows; i++)
		c.labels[i] = (int32_t) peft_rng_below(&rng, K);
	inputs[0] = (GradInput) {"logits", c.logits, c.dlogits, n};
	assert_true(gradcheck("cross_entropy", &c, cross_entropy_loss, cross_entropy_grad, inputs, 1) < GRAD_TOLERANCE);

	free(c.probs);
	c.probs = random_array((size_t) c.rows, -1, 1);
	inputs[0] = (GradInput) {"pred", c.logits, c.dlogits, (size_t) c.rows};
	assert_true(gradcheck("mse", &c, mse_loss, mse_grad, inputs, 1) < GRAD_TOLERANCE);

	free(c.logits);
	free(c.dlogits);
	free(c.probs);
}

/* Run the checks. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_linear),
		cmocka_unit_test(test_layernorm),
		cmocka_unit_test(test_gelu),
		cmocka_unit_test(test_dropout),
		cmocka_unit_test(test_attention),
		cmocka_unit_test(test_pooling),
		cmocka_unit_test(test_losses),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
