/*
 * compare.h - the one way the engine's C tests compare numbers (float and
 * double-precision builds alike).
 *
 * A comparison fails when either operand holds NaN or an infinity, and
 * names the first such index: a max-difference loop written with fmax or
 * "if (d > max)" drops NaN, so a network that outputs NaN everywhere used
 * to report "max difference 0" and pass.  Every comparison prints the
 * largest absolute difference and the largest relative one (each with its
 * index) and holds the values to one of three tests:
 *
 *   elementwise (compare_begin, compare_close*): every element must have
 *     |got - want| <= atol + rtol * |want|, as numpy's allclose;
 *   normwise (compare_begin_norm, compare_close_norm): the largest
 *     |got - want| must be at most tol * max(max|got|, max|want|, floor),
 *     for tensors whose small elements carry only rounding noise;
 *   l2 (compare_begin_l2, compare_close_l2): ||got - want||_2 must be at
 *     most tol * max(||got||_2, ||want||_2, floor), for weights after many
 *     Adam steps, where a few elements whose gradient is at float-noise
 *     level move by noise times the learning rate.
 *
 * Either compare whole arrays with compare_close*, or walk irregular
 * layouts with compare_begin*, compare_add for each pair, compare_end.
 * Include after cmocka.h.
 */
#ifndef PEFT_TEST_COMPARE_H
#define PEFT_TEST_COMPARE_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "real.h"

typedef enum CompareTest
{
	COMPARE_ELEMENTWISE,
	COMPARE_NORMWISE,
	COMPARE_L2
} CompareTest;

typedef struct Compare
{
	const char *what;
	CompareTest test;
	double		atol;			/* elementwise: |d| <= atol + rtol |want| */
	double		rtol;
	double		tol;			/* normwise and l2: difference <= tol * scale */
	double		floor;			/* normwise and l2: least scale */
	size_t		n;				/* pairs compared */
	double		max_abs;		/* largest |got - want| */
	size_t		max_abs_at;
	double		max_rel;		/* largest |got - want| / |want| (want 0: 0 or inf) */
	size_t		max_rel_at;
	double		max_got;		/* largest |got| */
	double		max_want;		/* largest |want| */
	double		sum_d2;			/* sums of squares of the difference and operands */
	double		sum_got2;
	double		sum_want2;
	double		worst;			/* elementwise: largest |d| / (atol + rtol |want|) */
	size_t		worst_at;
	double		worst_got;
	double		worst_want;
	bool		nonfinite;		/* a NaN or infinity was seen */
	size_t		nonfinite_at;	/* the first one */
	double		nonfinite_got;
	double		nonfinite_want;
} Compare;

/* Start an elementwise comparison named what. */
static inline void
compare_begin(Compare *c, const char *what, double atol, double rtol)
{
	*c = (Compare) {0};
	c->what = what;
	c->test = COMPARE_ELEMENTWISE;
	c->atol = atol;
	c->rtol = rtol;
}

/* Start a normwise comparison named what: max |d| <= tol * max(max|got|, max|want|, floor). */
static inline void
compare_begin_norm(Compare *c, const char *what, double tol, double floor)
{
	*c = (Compare) {0};
	c->what = what;
	c->test = COMPARE_NORMWISE;
	c->tol = tol;
	c->floor = floor;
}

/* Start an l2 comparison named what: ||d|| <= tol * max(||got||, ||want||, floor). */
static inline void
compare_begin_l2(Compare *c, const char *what, double tol, double floor)
{
	compare_begin_norm(c, what, tol, floor);
	c->test = COMPARE_L2;
}

/* Add the pair (got, want) found at index i of the caller's layout. */
static inline void
compare_add(Compare *c, size_t i, double got, double want)
{
	double		d = fabs(got - want);
	double		limit = c->atol + c->rtol * fabs(want);
	double		rel;
	double		ratio;

	c->n++;
	/* checked first, so that no comparison below ever meets a NaN */
	if (!isfinite(got) || !isfinite(want))
	{
		if (!c->nonfinite)
		{
			c->nonfinite = true;
			c->nonfinite_at = i;
			c->nonfinite_got = got;
			c->nonfinite_want = want;
		}
		return;
	}
	rel = want != 0 ? d / fabs(want) : (d == 0 ? 0 : INFINITY);
	ratio = limit > 0 ? d / limit : (d == 0 ? 0 : INFINITY);
	if (c->n == 1 || d > c->max_abs)
	{
		c->max_abs = d;
		c->max_abs_at = i;
	}
	if (c->n == 1 || rel > c->max_rel)
	{
		c->max_rel = rel;
		c->max_rel_at = i;
	}
	if (c->n == 1 || ratio > c->worst)
	{
		c->worst = ratio;
		c->worst_at = i;
		c->worst_got = got;
		c->worst_want = want;
	}
	if (fabs(got) > c->max_got)
		c->max_got = fabs(got);
	if (fabs(want) > c->max_want)
		c->max_want = fabs(want);
	c->sum_d2 += d * d;
	c->sum_got2 += got * got;
	c->sum_want2 += want * want;
}

/* The scale of a normwise or l2 comparison. */
static inline double
compare_scale(const Compare *c)
{
	double		s;

	if (c->test == COMPARE_L2)
		s = sqrt(c->sum_got2 > c->sum_want2 ? c->sum_got2 : c->sum_want2);
	else
		s = c->max_got > c->max_want ? c->max_got : c->max_want;
	return s > c->floor ? s : c->floor;
}

/* Normwise (largest difference) or l2 relative difference, over the scale. */
static inline double
compare_norm_error(const Compare *c)
{
	return (c->test == COMPARE_L2 ? sqrt(c->sum_d2) : c->max_abs) / compare_scale(c);
}

/* Print the comparison's line and fail the test if it does not hold. */
static inline void
compare_end(Compare *c)
{
	/* the failure message goes to stderr: keep the lines before it in order */
	fflush(stdout);
	if (c->nonfinite)
		fail_msg("%s: element %zu is not finite: got %.9g, expected %.9g", c->what,
				 c->nonfinite_at, c->nonfinite_got, c->nonfinite_want);
	if (c->test != COMPARE_ELEMENTWISE)
	{
		const char *kind = c->test == COMPARE_L2 ? "l2" : "normwise";

		printf("%-34s max abs diff %.3g at %zu, max rel %.3g at %zu, %s %.3g "
			   "(limit %.3g) over %zu values\n", c->what, c->max_abs, c->max_abs_at,
			   c->max_rel, c->max_rel_at, kind, compare_norm_error(c), c->tol, c->n);
		fflush(stdout);
		if (!(compare_norm_error(c) <= c->tol))
			fail_msg("%s: %s relative difference %.3g > %.3g (largest |got - expected| "
					 "%.3g at element %zu)", c->what, kind, compare_norm_error(c), c->tol,
					 c->max_abs, c->max_abs_at);
	}
	else
	{
		if (isinf(c->atol))
			printf("%-34s max abs diff %.3g at %zu, max rel %.3g at %zu over %zu values\n",
				   c->what, c->max_abs, c->max_abs_at, c->max_rel, c->max_rel_at, c->n);
		else
			printf("%-34s max abs diff %.3g at %zu, max rel %.3g at %zu over %zu values "
				   "(limit %.3g + %.3g |want|)\n", c->what, c->max_abs, c->max_abs_at,
				   c->max_rel, c->max_rel_at, c->n, c->atol, c->rtol);
		fflush(stdout);
		if (!(c->worst <= 1))
			fail_msg("%s: element %zu is %.9g, expected %.9g (|diff| %.3g > %.3g + %.3g * %.3g)",
					 c->what, c->worst_at, c->worst_got, c->worst_want,
					 fabs(c->worst_got - c->worst_want), c->atol, c->rtol, fabs(c->worst_want));
	}
}

/* Compare got[n] with want[n] elementwise; fails the test, or returns the figures. */
static inline Compare
compare_close(const char *what, const real *got, const real *want, size_t n,
			  double atol, double rtol)
{
	Compare		c;

	compare_begin(&c, what, atol, rtol);
	for (size_t i = 0; i < n; i++)
		compare_add(&c, i, got[i], want[i]);
	compare_end(&c);
	return c;
}

/*
 * Measure how far got[n] is from want[n] with no limit (only NaN and
 * infinity fail), for a test that needs a difference to be large.
 */
static inline Compare
compare_measure(const char *what, const real *got, const real *want, size_t n)
{
	return compare_close(what, got, want, n, INFINITY, 0);
}

/* Compare got[n] with a double-precision want[n] elementwise. */
static inline Compare
compare_close_double(const char *what, const real *got, const double *want, size_t n,
					 double atol, double rtol)
{
	Compare		c;

	compare_begin(&c, what, atol, rtol);
	for (size_t i = 0; i < n; i++)
		compare_add(&c, i, got[i], want[i]);
	compare_end(&c);
	return c;
}

/* Compare got[n] with want[n] normwise: max |d| <= tol * max(max|got|, max|want|, floor). */
static inline Compare
compare_close_norm(const char *what, const real *got, const real *want, size_t n,
				   double tol, double floor)
{
	Compare		c;

	compare_begin_norm(&c, what, tol, floor);
	for (size_t i = 0; i < n; i++)
		compare_add(&c, i, got[i], want[i]);
	compare_end(&c);
	return c;
}

/* Compare got[n] with want[n] in l2: ||d|| <= tol * max(||got||, ||want||, floor). */
static inline Compare
compare_close_l2(const char *what, const real *got, const real *want, size_t n,
				 double tol, double floor)
{
	Compare		c;

	compare_begin_l2(&c, what, tol, floor);
	for (size_t i = 0; i < n; i++)
		compare_add(&c, i, got[i], want[i]);
	compare_end(&c);
	return c;
}

/* Compare two scalars (a loss, a norm): |got - want| <= atol + rtol |want|. */
static inline Compare
compare_scalar(const char *what, double got, double want, double atol, double rtol)
{
	Compare		c;

	compare_begin(&c, what, atol, rtol);
	compare_add(&c, 0, got, want);
	compare_end(&c);
	return c;
}

#endif							/* PEFT_TEST_COMPARE_H */
