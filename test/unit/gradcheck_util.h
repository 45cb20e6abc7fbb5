/*
 * gradcheck_util.h - the finite-difference checker shared by the op
 * gradient checks (gradcheck_ops.c, gradcheck_ops_varlen.c).
 *
 * For an op y = f(x) the test defines L = sum(w * y); gradcheck() runs the
 * backward with dout = w into gradient buffers pre-filled with random
 * values and compares (buffer - prefill) with (L(x + h) - L(x - h)) / 2h
 * for every input element, which also checks that backward accumulates.
 * Include once, after cmocka.h, in a -DPEFT_DOUBLE build.
 */
#ifndef PEFT_GRADCHECK_UTIL_H
#define PEFT_GRADCHECK_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare.h"
#include "real.h"
#include "rng.h"

#ifndef PEFT_DOUBLE
#error "gradient checks must be built with -DPEFT_DOUBLE"
#endif

/* Finite-difference step and the relative error expected in double. */
#define GRAD_STEP 1e-6
#define GRAD_TOLERANCE 1e-6

static PeftRng rng;

/* Uniform in [lo, hi). */
static double
uniform(double lo, double hi)
{
	return lo + (hi - lo) * peft_rng_uniform(&rng);
}

/* A new array of n reals uniform in [lo, hi), never exactly zero. */
static real *
random_array(size_t n, double lo, double hi)
{
	real	   *x = malloc(n * sizeof(real));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
	{
		do
			x[i] = uniform(lo, hi);
		while (x[i] == 0);
	}
	return x;
}

/* sum(w * y) over n elements. */
static double
project(const real *w, const real *y, size_t n)
{
	double		s = 0;

	for (size_t i = 0; i < n; i++)
		s += w[i] * y[i];
	return s;
}

/* An input the check perturbs, and where its gradient is accumulated. */
typedef struct GradInput
{
	const char *name;
	real	   *x;
	real	   *grad;
	size_t		n;
} GradInput;

/* Forward: return L = sum(w * f(inputs)). */
typedef double (*LossFn) (void *ctx);
/* Forward then backward with dout = w, accumulating into the grads. */
typedef void (*BackwardFn) (void *ctx);

/*
 * Compare analytic and numeric gradients of every input (normwise: the
 * largest difference over the largest gradient must stay under
 * GRAD_TOLERANCE; NaN or infinity fails); print each input's figures and
 * return the largest normwise error.
 */
static double
gradcheck(const char *op, void *ctx, LossFn loss, BackwardFn backward,
		  GradInput *inputs, int ninputs)
{
	real	   *prefill[8];
	double		worst = 0;

	assert_true(ninputs <= 8);
	for (int i = 0; i < ninputs; i++)
	{
		prefill[i] = random_array(inputs[i].n, -1, 1);
		memcpy(inputs[i].grad, prefill[i], inputs[i].n * sizeof(real));
	}
	backward(ctx);

	for (int i = 0; i < ninputs; i++)
	{
		GradInput  *in = &inputs[i];
		char		what[96];
		Compare		c;

		snprintf(what, sizeof(what), "gradcheck %s d%s", op, in->name);
		compare_begin_norm(&c, what, GRAD_TOLERANCE, 1e-8);
		for (size_t j = 0; j < in->n; j++)
		{
			real		saved = in->x[j];
			double		plus;
			double		minus;

			in->x[j] = saved + GRAD_STEP;
			plus = loss(ctx);
			in->x[j] = saved - GRAD_STEP;
			minus = loss(ctx);
			in->x[j] = saved;
			compare_add(&c, j, in->grad[j] - prefill[i][j], (plus - minus) / (2 * GRAD_STEP));
		}
		compare_end(&c);
		/* A gradient that is zero everywhere would make the check vacuous. */
		assert_true(c.max_got > 1e-3);
		/* finite here: compare_end failed the test otherwise */
		if (compare_norm_error(&c) > worst)
			worst = compare_norm_error(&c);
		free(prefill[i]);
	}
	return worst;
}

#endif
