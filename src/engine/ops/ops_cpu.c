/*
 * ops_cpu.c - the row-wise and element-wise encoder operations of ops.h:
 * the linear backward, LayerNorm, GELU, add, dropout, l2 normalisation,
 * the losses and the optimiser's helpers.  The CPU backend (backend_cpu.c)
 * runs them for every batch, and the CUDA kernels are checked against them.
 * Packed attention, embeddings and pooling are in ops_varlen.c; their
 * padded references live with the tests (test/unit/ops_reference.c).
 *
 * Matrix products go through OpenBLAS (cblas_gemm); element-wise and
 * row-wise loops are split over the engine thread pool.  Every parallel
 * loop either writes disjoint outputs or reduces in a fixed order that does
 * not depend on the thread count, so results are bit-for-bit identical for
 * 1 or N engine threads.
 *
 * Float builds evaluate GELU's exp() (vecmath.h) and normal CDF (below)
 * with branch-free approximations, accurate to a few float ulps, because
 * libm's scalar calls cannot be vectorised and would dominate GELU.
 * Double builds (-DPEFT_DOUBLE, used by the gradient checks) call libm, so
 * finite differences see an exact function.
 */

/*
 * With -ftrapping-math (GCC's default) the vectoriser will not turn float
 * selects such as GELU's "x < 0 ? tail : 1 - tail" into blends, because a
 * comparison could raise an FP exception.  The engine never enables FP traps, so the flag
 * changes no result, only lets these loops vectorise.  The dynamic cost
 * model makes -O2 builds vectorise them too.  It comes before the includes
 * so inline functions from headers get the same options as their callers.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-trapping-math", "vect-cost-model=dynamic")
#endif

#include "ops.h"

#include <math.h>
#include <string.h>

#include "threadpool.h"
#include "vecmath.h"


/* Columns reduced together in the column-sum passes (fits in registers/L1). */
#define COLUMN_BLOCK 64

/* Smallest norm l2norm divides by, as torch.nn.functional.normalize. */
#define L2NORM_EPS 1e-12

#define INV_SQRT_2 0.70710678118654752440
#define INV_SQRT_2PI 0.39894228029898381711

/* ---- scalar math --------------------------------------------------------- */

#ifdef PEFT_DOUBLE

#define sqrt_real sqrt

/* Standard normal CDF Phi(x) via erfc (accurate in the lower tail too). */
static inline real
normal_cdf(real x, real gauss)
{
	(void) gauss;
	return 0.5 * erfc(-x * INV_SQRT_2);
}

#else

#define sqrt_real sqrtf

/*
 * Standard normal CDF Phi(x) for float, given gauss = exp(-x^2 / 2).
 * Phi(-|x|) = gauss * R(t) with t = 1 / (1 + |x|/2), R a degree-11
 * Chebyshev fit (made for this file with mpmath, max error 1.4e-9) of
 * Phi(-x) exp(x^2/2) on |x| in [0, 13.5]; beyond that gauss is 0.  Max
 * absolute error 1.5e-7 (2.5 ulp of 0.5); relative accuracy holds in the
 * lower tail, where 1 + erf(x) would cancel.
 */
static inline float
normal_cdf(float x, float gauss)
{
	float		t = 1.0f / (1.0f + 0.5f * fabsf(x));
	float		w = (t - 0.56451612903225806f) * 2.2962962962962963f;
	float		p;
	float		tail;

	p = 8.7992417244303467e-7f;
	p = p * w - 1.1262447090640379e-5f;
	p = p * w + 2.1476850679591736e-5f;
	p = p * w + 3.8923312539628139e-5f;
	p = p * w - 2.3019525673614970e-4f;
	p = p * w + 2.6651649518804311e-4f;
	p = p * w + 1.1304512495248748e-3f;
	p = p * w - 4.6276820446049850e-3f;
	p = p * w - 4.2771739667844474e-3f;
	p = p * w + 6.7053813672828334e-2f;
	p = p * w + 2.3865869586675888e-1f;
	p = p * w + 2.0197555590604687e-1f;
	tail = gauss * p;
	return x < 0.0f ? tail : 1.0f - tail;
}

#endif

/* ---- column sums ---------------------------------------------------------- */

typedef struct ColumnSumArgs
{
	real	   *dst;
	const real *src;
	int			N;
	int			C;
} ColumnSumArgs;

/* dst[c] += sum over rows of src[n, c] for c in [begin, end), rows in order. */
static void
column_sum_range(void *arg, size_t begin, size_t end)
{
	ColumnSumArgs *a = arg;

	for (size_t c0 = begin; c0 < end; c0 += COLUMN_BLOCK)
	{
		int			width = (int) (end - c0 < COLUMN_BLOCK ? end - c0 : COLUMN_BLOCK);
		double		acc[COLUMN_BLOCK] = {0};

		for (int n = 0; n < a->N; n++)
		{
			const real *row = a->src + (size_t) n * a->C + c0;

			for (int c = 0; c < width; c++)
				acc[c] += (double) row[c];
		}
		for (int c = 0; c < width; c++)
			a->dst[c0 + c] += (real) acc[c];
	}
}

/*
 * dst[C] += column sums of src[N,C].  Split over columns, each summed over
 * rows in order, so the result does not depend on the thread count.
 */
static void
column_sum_accumulate(real *dst, const real *src, int N, int C)
{
	ColumnSumArgs args = {dst, src, N, C};
	size_t		grain = row_grain((size_t) N);

	/* Whole cache lines per chunk. */
	if (grain < 16)
		grain = 16;
	peft_parallel_for((size_t) C, grain, column_sum_range, &args);
}


/* ---- linear ------------------------------------------------------------- */

/* dinp[N,IC] += dout @ weight; dweight[OC,IC] += dout^T @ inp; dbias += colsum(dout) */
void
linear_backward(real *dinp, real *dweight, real *dbias,
				const real *dout, const real *inp,
				const real *weight, int N, int IC, int OC)
{
	if (N <= 0 || OC <= 0)
		return;
	if (dinp != NULL && IC > 0)
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC,
				   1, dout, OC, weight, IC, 1, dinp, IC);
	if (dweight != NULL && IC > 0)
		cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N,
				   1, dout, OC, inp, IC, 1, dweight, IC);
	if (dbias != NULL)
		column_sum_accumulate(dbias, dout, N, OC);
}


/* ---- layernorm ------------------------------------------------------------ */

typedef struct LayerNormArgs
{
	real	   *out;			/* forward: out; backward: dinp */
	real	   *mean;
	real	   *rstd;
	real	   *dgamma;
	real	   *dbeta;
	const real *inp;
	const real *dout;
	const real *gamma;
	const real *beta;
	const real *mean_in;
	const real *rstd_in;
	int			N;
	int			C;
	real		eps;
} LayerNormArgs;

/* Normalise rows [begin, end) of inp[N,C]. */
VEC_CLONES
static void
layernorm_forward_range(void *arg, size_t begin, size_t end)
{
	LayerNormArgs *a = arg;
	int			C = a->C;

	for (size_t n = begin; n < end; n++)
	{
		const real *x = a->inp + n * C;
		real	   *y = a->out + n * C;
		double		mu;
		double		var;
		real		m;
		real		s;

		/* Two passes: the mean first, then squared deviations from it. */
		mu = sum_double(x, C) / C;
		var = sum_sq_dev_double(x, mu, C) / C;	/* biased, as PyTorch */
		m = (real) mu;
		s = (real) (1.0 / sqrt(var + (double) a->eps));
		for (int c = 0; c < C; c++)
			y[c] = (x[c] - m) * s * a->gamma[c] + a->beta[c];
		if (a->mean != NULL)
			a->mean[n] = m;
		if (a->rstd != NULL)
			a->rstd[n] = s;
	}
}

/* out[N,C] = (inp - mean) * rstd * gamma + beta; saves mean[N], rstd[N] */
void
layernorm_forward(real *out, real *mean, real *rstd,
				  const real *inp, const real *gamma,
				  const real *beta, int N, int C, real eps)
{
	LayerNormArgs args = {0};

	if (N <= 0 || C <= 0)
		return;
	args.out = out;
	args.mean = mean;
	args.rstd = rstd;
	args.inp = inp;
	args.gamma = gamma;
	args.beta = beta;
	args.N = N;
	args.C = C;
	args.eps = eps;
	peft_parallel_for((size_t) N, row_grain((size_t) C), layernorm_forward_range, &args);
}

/*
 * dinp for rows [begin, end):
 *   xhat = (x - mean) rstd,  g = dout * gamma
 *   dinp += rstd * (g - mean(g) - xhat * mean(g * xhat))
 */
VEC_CLONES
static void
layernorm_dinp_range(void *arg, size_t begin, size_t end)
{
	LayerNormArgs *a = arg;
	int			C = a->C;

	for (size_t n = begin; n < end; n++)
	{
		const real *x = a->inp + n * C;
		const real *dy = a->dout + n * C;
		real	   *dx = a->out + n * C;
		real		m = a->mean_in[n];
		real		s = a->rstd_in[n];
		double		acc_g[8] = {0};
		double		acc_gx[8] = {0};
		double		sum_g;
		double		sum_gx;
		real		mean_g;
		real		mean_gx;
		int			c = 0;

		for (; c + 8 <= C; c += 8)
			for (int k = 0; k < 8; k++)
			{
				real		g = dy[c + k] * a->gamma[c + k];
				real		xhat = (x[c + k] - m) * s;

				acc_g[k] += (double) g;
				acc_gx[k] += (double) g * (double) xhat;
			}
		for (; c < C; c++)
		{
			real		g = dy[c] * a->gamma[c];
			real		xhat = (x[c] - m) * s;

			acc_g[0] += (double) g;
			acc_gx[0] += (double) g * (double) xhat;
		}
		sum_g = ((acc_g[0] + acc_g[1]) + (acc_g[2] + acc_g[3])) +
			((acc_g[4] + acc_g[5]) + (acc_g[6] + acc_g[7]));
		sum_gx = ((acc_gx[0] + acc_gx[1]) + (acc_gx[2] + acc_gx[3])) +
			((acc_gx[4] + acc_gx[5]) + (acc_gx[6] + acc_gx[7]));
		mean_g = (real) (sum_g / C);
		mean_gx = (real) (sum_gx / C);
		for (c = 0; c < C; c++)
		{
			real		g = dy[c] * a->gamma[c];
			real		xhat = (x[c] - m) * s;

			dx[c] += s * (g - mean_g - xhat * mean_gx);
		}
	}
}

/*
 * dgamma[c] += sum_n dout * xhat, dbeta[c] += sum_n dout for columns
 * [begin, end), rows summed in order so the split does not matter.
 */
static void
layernorm_dparams_range(void *arg, size_t begin, size_t end)
{
	LayerNormArgs *a = arg;
	int			C = a->C;
	size_t		N = (size_t) a->N;

	for (size_t c0 = begin; c0 < end; c0 += COLUMN_BLOCK)
	{
		int			width = (int) (end - c0 < COLUMN_BLOCK ? end - c0 : COLUMN_BLOCK);
		double		acc_gamma[COLUMN_BLOCK] = {0};
		double		acc_beta[COLUMN_BLOCK] = {0};

		for (size_t n = 0; n < N; n++)
		{
			const real *x = a->inp + n * C + c0;
			const real *dy = a->dout + n * C + c0;
			real		m = a->mean_in[n];
			real		s = a->rstd_in[n];

			for (int c = 0; c < width; c++)
			{
				acc_gamma[c] += (double) dy[c] * (double) ((x[c] - m) * s);
				acc_beta[c] += (double) dy[c];
			}
		}
		for (int c = 0; c < width; c++)
		{
			if (a->dgamma != NULL)
				a->dgamma[c0 + c] += (real) acc_gamma[c];
			if (a->dbeta != NULL)
				a->dbeta[c0 + c] += (real) acc_beta[c];
		}
	}
}

/* dinp[N,C] += ...; dgamma[C] += ...; dbeta[C] += ... */
void
layernorm_backward(real *dinp, real *dgamma, real *dbeta,
				   const real *dout, const real *inp,
				   const real *gamma, const real *mean,
				   const real *rstd, int N, int C)
{
	LayerNormArgs args = {0};

	if (N <= 0 || C <= 0)
		return;
	args.out = dinp;
	args.dgamma = dgamma;
	args.dbeta = dbeta;
	args.inp = inp;
	args.dout = dout;
	args.gamma = gamma;
	args.mean_in = mean;
	args.rstd_in = rstd;
	args.N = N;
	args.C = C;
	if (dinp != NULL)
		peft_parallel_for((size_t) N, row_grain((size_t) C), layernorm_dinp_range, &args);
	if (dgamma != NULL || dbeta != NULL)
	{
		size_t		grain = row_grain((size_t) N);

		peft_parallel_for((size_t) C, grain < 16 ? 16 : grain,
						  layernorm_dparams_range, &args);
	}
}


/* ---- element-wise: gelu, add, dropout, scale ------------------------------ */

typedef struct ElementwiseArgs
{
	real	   *out;
	const real *a;
	const real *b;
	const uint8_t *keep;
	real		scale;
} ElementwiseArgs;

/* out = x * Phi(x) on [begin, end) (a = inp). */
VEC_CLONES
static void
gelu_forward_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;
	real	   *restrict out = e->out;
	const real *restrict inp = e->a;

	for (size_t i = begin; i < end; i++)
	{
		real		x = inp[i];
		real		gauss = vec_exp((real) -0.5 * x * x);

		out[i] = x * normal_cdf(x, gauss);
	}
}

/* out += dout * (Phi(x) + x phi(x)) on [begin, end) (a = inp, b = dout). */
VEC_CLONES
static void
gelu_backward_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;
	real	   *restrict dinp = e->out;
	const real *restrict inp = e->a;
	const real *restrict dout = e->b;

	for (size_t i = begin; i < end; i++)
	{
		real		x = inp[i];
		real		gauss = vec_exp((real) -0.5 * x * x);
		real		dgelu = normal_cdf(x, gauss) + x * gauss * (real) INV_SQRT_2PI;

		dinp[i] += dout[i] * dgelu;
	}
}

/* out[n] = x * 0.5 * (1 + erf(x / sqrt(2)))  (exact GELU, as BERT's "gelu") */
void
gelu_forward(real *out, const real *inp, size_t n)
{
	ElementwiseArgs args = {.out = out, .a = inp};

	peft_parallel_for(n, PARALLEL_GRAIN / 4, gelu_forward_range, &args);
}

/* dinp[n] += dout * gelu'(inp) */
void
gelu_backward(real *dinp, const real *inp, const real *dout, size_t n)
{
	ElementwiseArgs args = {.out = dinp, .a = inp, .b = dout};

	peft_parallel_for(n, PARALLEL_GRAIN / 4, gelu_backward_range, &args);
}

/* out = a + b on [begin, end); out may alias a or b, so no restrict. */
static void
add_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;

	for (size_t i = begin; i < end; i++)
		e->out[i] = e->a[i] + e->b[i];
}

/* out[n] = a[n] + b[n] (out may alias a or b) */
void
add_forward(real *out, const real *a, const real *b, size_t n)
{
	ElementwiseArgs args = {.out = out, .a = a, .b = b};

	peft_parallel_for(n, PARALLEL_GRAIN * 4, add_range, &args);
}

/*
 * keep[n] = 1 with probability 1-p else 0, drawn from rng in index order.
 * Each 64-bit draw decides two elements (high half first, then low half)
 * against a 32-bit threshold: the mask is sequential by nature, and this
 * halves its cost.  The rate is exact to 2^-32.
 */
void
dropout_mask(uint8_t *keep, size_t n, real p, PeftRng *rng)
{
	uint64_t	threshold;
	size_t		i = 0;

	if (p <= 0)
		threshold = 0;
	else if (p >= 1)
		threshold = (uint64_t) 1 << 32;
	else
		threshold = (uint64_t) llround((double) p * 4294967296.0);

	for (; i + 2 <= n; i += 2)
	{
		uint64_t	bits = peft_rng_next(rng);

		keep[i] = (bits >> 32) >= threshold;
		keep[i + 1] = (bits & 0xffffffffu) >= threshold;
	}
	if (i < n)
		keep[i] = (peft_rng_next(rng) >> 32) >= threshold;
}

/* out = keep ? a * scale : 0 on [begin, end); out may alias a. */
static void
dropout_forward_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;

	for (size_t i = begin; i < end; i++)
		e->out[i] = e->keep[i] ? e->a[i] * e->scale : 0;
}

/* out[n] = inp * keep / (1-p)  (out may alias inp; p == 0 copies) */
void
dropout_forward(real *out, const real *inp, const uint8_t *keep,
				real p, size_t n)
{
	ElementwiseArgs args = {.out = out, .a = inp, .keep = keep};

	if (p <= 0 || keep == NULL)
	{
		if (out != inp)
			memmove(out, inp, n * sizeof(real));
		return;
	}
	args.scale = dropout_keep_scale(p);
	peft_parallel_for(n, PARALLEL_GRAIN * 2, dropout_forward_range, &args);
}

/* out += keep ? dout * scale : 0 on [begin, end). */
static void
dropout_backward_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;
	real	   *restrict dinp = e->out;
	const real *restrict dout = e->a;

	for (size_t i = begin; i < end; i++)
		dinp[i] += e->keep[i] ? dout[i] * e->scale : 0;
}

/* out += a on [begin, end). */
static void
accumulate_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;
	real	   *restrict dinp = e->out;
	const real *restrict dout = e->a;

	for (size_t i = begin; i < end; i++)
		dinp[i] += dout[i];
}

/* dinp[n] += dout * keep / (1-p) */
void
dropout_backward(real *dinp, const real *dout, const uint8_t *keep,
				 real p, size_t n)
{
	ElementwiseArgs args = {.out = dinp, .a = dout, .keep = keep};

	if (dinp == NULL)
		return;
	if (p <= 0 || keep == NULL)
	{
		peft_parallel_for(n, PARALLEL_GRAIN * 2, accumulate_range, &args);
		return;
	}
	args.scale = dropout_keep_scale(p);
	peft_parallel_for(n, PARALLEL_GRAIN * 2, dropout_backward_range, &args);
}

/* g *= scale on [begin, end). */
static void
scale_range(void *arg, size_t begin, size_t end)
{
	ElementwiseArgs *e = arg;

	for (size_t i = begin; i < end; i++)
		e->out[i] *= e->scale;
}

/* g[n] *= s */
void
scale_inplace(real *g, real s, size_t n)
{
	ElementwiseArgs args = {.out = g, .scale = s};

	peft_parallel_for(n, PARALLEL_GRAIN * 2, scale_range, &args);
}


/* ---- l2 normalisation ------------------------------------------------------ */

/* out[B,C] = inp / max(||inp||_2, 1e-12) (as torch.nn.functional.normalize); norm[B] saved */
void
l2norm_forward(real *out, real *norm, const real *inp, int B, int C)
{
	for (int b = 0; b < B; b++)
	{
		const real *x = inp + (size_t) b * C;
		real	   *y = out + (size_t) b * C;
		double		n = sqrt(dot_double(x, x, C));
		real		inv = (real) (1.0 / (n > L2NORM_EPS ? n : L2NORM_EPS));

		for (int c = 0; c < C; c++)
			y[c] = x[c] * inv;
		if (norm != NULL)
			norm[b] = (real) n;
	}
}


/* ---- losses ----------------------------------------------------------------- */

/*
 * Mean cross-entropy over B rows of logits[B,K] with labels[B]; probs[B,K]
 * receives the softmax (may be NULL).  A label outside [0, K) is the
 * caller's bug; such a row adds no loss rather than reading out of bounds.
 */
real
cross_entropy_forward(real *probs, const real *logits,
					  const int32_t *labels, int B, int K)
{
	double		total = 0;

	if (B <= 0 || K <= 0)
		return 0;
	for (int b = 0; b < B; b++)
	{
		const real *z = logits + (size_t) b * K;
		double		max = (double) z[0];
		double		sum = 0;
		double		log_sum;
		int32_t		label = labels[b];

		/* log-softmax with the max subtracted, so exp never overflows */
		for (int k = 1; k < K; k++)
			if ((double) z[k] > max)
				max = (double) z[k];
		for (int k = 0; k < K; k++)
			sum += exp((double) z[k] - max);
		log_sum = log(sum);
		if (probs != NULL)
			for (int k = 0; k < K; k++)
				probs[(size_t) b * K + k] = (real) exp((double) z[k] - max - log_sum);
		if (label >= 0 && label < K)
			total += log_sum - ((double) z[label] - max);
	}
	return (real) (total / B);
}

/* dlogits[B,K] += (probs - onehot(labels)) * dloss / B */
void
cross_entropy_backward(real *dlogits, const real *probs,
					   const int32_t *labels, real dloss,
					   int B, int K)
{
	real		scale;

	if (dlogits == NULL || B <= 0)
		return;
	scale = dloss / (real) B;
	for (int b = 0; b < B; b++)
	{
		real	   *d = dlogits + (size_t) b * K;
		const real *pr = probs + (size_t) b * K;
		int32_t		label = labels[b];

		for (int k = 0; k < K; k++)
			d[k] += (pr[k] - (k == label ? 1 : 0)) * scale;
	}
}

/* Mean squared error of pred[B] against target[B]; returns the mean loss. */
real
mse_forward(const real *pred, const real *target, int B)
{
	double		total = 0;

	if (B <= 0)
		return 0;
	for (int b = 0; b < B; b++)
	{
		double		d = (double) pred[b] - (double) target[b];

		total += d * d;
	}
	return (real) (total / B);
}

/* dpred[B] += 2 (pred - target) * dloss / B */
void
mse_backward(real *dpred, const real *pred, const real *target,
			 real dloss, int B)
{
	real		scale;

	if (dpred == NULL || B <= 0)
		return;
	scale = 2 * dloss / (real) B;
	for (int b = 0; b < B; b++)
		dpred[b] += (pred[b] - target[b]) * scale;
}


/* ---- optimiser helpers -------------------------------------------------------- */

/*
 * Elements per partial sum in sum_squares: a fixed block size (not a
 * per-thread share) keeps the summation order independent of threads.
 */
#define SUM_BLOCK 65536
#define SUM_MAX_BLOCKS 1024

typedef struct SumSquaresArgs
{
	const real *g;
	size_t		n;
	size_t		block;
	double	   *partial;
} SumSquaresArgs;

/* partial[i] = sum of squares of block i, for blocks [begin, end). */
static void
sum_squares_range(void *arg, size_t begin, size_t end)
{
	SumSquaresArgs *a = arg;

	for (size_t i = begin; i < end; i++)
	{
		size_t		lo = i * a->block;
		size_t		len = a->n - lo < a->block ? a->n - lo : a->block;

		a->partial[i] = dot_double(a->g + lo, a->g + lo, (int) len);
	}
}

/* Sum of squares of g[n], accumulated in double for stability. */
double
sum_squares(const real *g, size_t n)
{
	double		partial[SUM_MAX_BLOCKS];
	SumSquaresArgs args;
	size_t		nblocks;
	double		total = 0;

	if (n == 0)
		return 0;
	args.g = g;
	args.n = n;
	args.block = SUM_BLOCK;
	/* Few enough blocks for the stack array, and each fits in an int. */
	if ((n + args.block - 1) / args.block > SUM_MAX_BLOCKS)
		args.block = (n + SUM_MAX_BLOCKS - 1) / SUM_MAX_BLOCKS;
	nblocks = (n + args.block - 1) / args.block;
	args.partial = partial;
	peft_parallel_for(nblocks, 1, sum_squares_range, &args);
	for (size_t i = 0; i < nblocks; i++)
		total += partial[i];
	return total;
}

typedef struct AdamWArgs
{
	real	   *param;
	const real *grad;
	real	   *m;
	real	   *v;
	real		decay;			/* 1 - lr * weight_decay */
	real		beta1;
	real		beta2;
	real		eps;
	real		step_size;		/* lr / (1 - beta1^t) */
	real		bc2_sqrt;		/* sqrt(1 - beta2^t) */
} AdamWArgs;

/* One AdamW step on elements [begin, end). */
static void
adamw_range(void *arg, size_t begin, size_t end)
{
	AdamWArgs  *a = arg;
	real	   *restrict param = a->param;
	const real *restrict grad = a->grad;
	real	   *restrict m = a->m;
	real	   *restrict v = a->v;

	for (size_t i = begin; i < end; i++)
	{
		real		g = grad[i];
		real		mi = a->beta1 * m[i] + (1 - a->beta1) * g;
		real		vi = a->beta2 * v[i] + (1 - a->beta2) * g * g;
		real		denom = sqrt_real(vi) / a->bc2_sqrt + a->eps;

		m[i] = mi;
		v[i] = vi;
		param[i] = param[i] * a->decay - a->step_size * mi / denom;
	}
}

/*
 * One AdamW step (decoupled weight decay, as torch.optim.AdamW):
 *   param -= lr * wd * param
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   param -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 * t is the 1-based step number.
 */
void
adamw_update(real *param, const real *grad, real *m, real *v,
			 size_t n, real lr, real beta1, real beta2, real eps,
			 real weight_decay, int t)
{
	AdamWArgs	args;

	if (t < 1)
		t = 1;
	args.param = param;
	args.grad = grad;
	args.m = m;
	args.v = v;
	/* Scalars in double, then rounded once, as PyTorch's Python floats. */
	args.decay = (real) (1.0 - (double) lr * (double) weight_decay);
	args.beta1 = beta1;
	args.beta2 = beta2;
	args.eps = eps;
	args.step_size = (real) ((double) lr / (1.0 - pow((double) beta1, t)));
	args.bc2_sqrt = (real) sqrt(1.0 - pow((double) beta2, t));
	peft_parallel_for(n, PARALLEL_GRAIN, adamw_range, &args);
}
