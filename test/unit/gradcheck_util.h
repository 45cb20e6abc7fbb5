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
 * Compare analytic and numeric gradients of every input; print each
 * input's relative error and return the largest.
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
		double		max_diff = 0;
		double		max_analytic = 0;
		double		max_numeric = 0;
		double		rel;

		for (size_t j = 0; j < in->n; j++)
		{
			real		saved = in->x[j];
			double		plus;
			double		minus;
			double		numeric;
			double		analytic = in->grad[j] - prefill[i][j];

			in->x[j] = saved + GRAD_STEP;
			plus = loss(ctx);
			in->x[j] = saved - GRAD_STEP;
			minus = loss(ctx);
			in->x[j] = saved;
			numeric = (plus - minus) / (2 * GRAD_STEP);

			max_diff = fmax(max_diff, fabs(analytic - numeric));
			max_analytic = fmax(max_analytic, fabs(analytic));
			max_numeric = fmax(max_numeric, fabs(numeric));
		}
		rel = max_diff / fmax(fmax(max_analytic, max_numeric), 1e-8);
		printf("gradcheck %-22s d%-6s rel err %.3e (max |grad| %.3e)\n",
			   op, in->name, rel, max_analytic);
		/* A gradient that is zero everywhere would make the check vacuous. */
		assert_true(max_analytic > 1e-3);
		worst = fmax(worst, rel);
		free(prefill[i]);
	}
	return worst;
}

#endif
