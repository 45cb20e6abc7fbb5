/*
 * vecmath.h - scalar math written so the loops around it vectorise, for the
 * CPU operation files.
 *
 * Float builds evaluate exp() with a branch-free polynomial, because
 * libm's scalar expf cannot be vectorised and would dominate a softmax.
 * Double builds (-DPEFT_DOUBLE, the gradient checks) call libm, so finite
 * differences see an exact function.
 */
#ifndef PEFT_ENGINE_VECMATH_H
#define PEFT_ENGINE_VECMATH_H

#include <math.h>
#include <stdint.h>
#include "real.h"

/*
 * On x86-64 compile a hot loop twice, for SSE2 and AVX2, picked at load
 * time.  AVX2 alone (no FMA) performs the same IEEE operations per lane,
 * so both versions give identical results.  Sanitizer builds skip this:
 * their instrumentation breaks the ifunc resolver, which runs before the
 * sanitizer runtime starts.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
	!defined(__AVX2__) && !defined(__SANITIZE_ADDRESS__) && \
	!defined(__SANITIZE_THREAD__)
#define VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VEC_CLONES
#endif

#ifdef PEFT_DOUBLE

/* exp(x), exactly (libm). */
static inline double
vec_exp(double x)
{
	return exp(x);
}

#else

/*
 * exp(x) for float, branch-free: Cody-Waite reduction x = n ln2 + r, a
 * degree-7 polynomial for e^r on |r| <= ln2/2 (Cephes' expf
 * coefficients), and 2^n built in the exponent bits.  Max relative error
 * 8e-8 (under one ulp) on [-87, 88]; below -87 it returns 0 (the true
 * value is a denormal), above 88 it saturates at e^88.
 */
static inline float
vec_exp(float x)
{
	float		xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
	float		t = xc * 1.44269504088896341f;
	/* Round x / ln2 to the nearest integer by the 1.5 * 2^23 trick. */
	float		nf = (t + 12582912.0f) - 12582912.0f;
	float		r = xc - nf * 0.693359375f - nf * -2.12194440e-4f;
	float		r2 = r * r;
	float		y = 1.9875691500e-4f;
	union
	{
		int32_t		i;
		float		f;
	}			two_n;

	y = y * r + 1.3981999507e-3f;
	y = y * r + 8.3334519073e-3f;
	y = y * r + 4.1665795894e-2f;
	y = y * r + 1.6666665459e-1f;
	y = y * r + 5.0000001201e-1f;
	y = y * r2 + r + 1.0f;
	two_n.i = ((int32_t) nf + 127) << 23;
	y *= two_n.f;
	return x < -87.0f ? 0.0f : y;
}

#endif


/*
 * Reductions in double over a row, in a fixed order of 8 interleaved
 * partial sums: the same result at every thread count, and the loops
 * vectorise.
 */

/* Sum of x[0..n) in double, in a fixed order of 8 interleaved partial sums. */
static inline double
sum_double(const real *x, int n)
{
	double		acc[8] = {0};
	int			i = 0;

	for (; i + 8 <= n; i += 8)
		for (int k = 0; k < 8; k++)
			acc[k] += (double) x[i + k];
	for (; i < n; i++)
		acc[0] += (double) x[i];
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
		((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Sum of (x[i] - mu)^2 over [0, n) in double, fixed order. */
static inline double
sum_sq_dev_double(const real *x, double mu, int n)
{
	double		acc[8] = {0};
	int			i = 0;

	for (; i + 8 <= n; i += 8)
		for (int k = 0; k < 8; k++)
		{
			double		d = (double) x[i + k] - mu;

			acc[k] += d * d;
		}
	for (; i < n; i++)
	{
		double		d = (double) x[i] - mu;

		acc[0] += d * d;
	}
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
		((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Dot product a . b over [0, n) in double, fixed order. */
static inline double
dot_double(const real *a, const real *b, int n)
{
	double		acc[8] = {0};
	int			i = 0;

	for (; i + 8 <= n; i += 8)
		for (int k = 0; k < 8; k++)
			acc[k] += (double) a[i + k] * (double) b[i + k];
	for (; i < n; i++)
		acc[0] += (double) a[i] * (double) b[i];
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
		((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Scale applied to kept units by inverted dropout: 1/(1-p), 0 when p >= 1. */
static inline real
dropout_keep_scale(real p)
{
	if (p >= (real) 1)
		return 0;
	return (real) (1.0 / (1.0 - (double) p));
}

#endif
