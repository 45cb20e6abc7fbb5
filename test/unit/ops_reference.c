/*
 * ops_reference.c - CPU reference operations on PADDED [B,T] batches, for
 * the tests only (see ops_reference.h).
 *
 * The engine runs packed batches (src/engine/ops/ops_varlen.c); these padded
 * versions are the simpler formulation the packed ops, their gradients and
 * the CUDA kernels are checked against.  They were written for, and moved
 * unchanged from, src/engine/ops/ops_cpu.c: the same loops, the same fixed
 * reduction orders and the same compiler options, so they give the same
 * bits as before, for 1 or N engine threads.  The Makefile compiles this
 * file twice, in float for test_*.c and test/gpu, in double for
 * gradcheck_*.c.
 */

/*
 * Let the vectoriser turn float selects into blends, as in ops_cpu.c (the
 * engine never enables FP traps), so these loops compile as they did there.
 * Before the includes, so inline functions from headers get the same options.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-trapping-math", "vect-cost-model=dynamic")
#endif

#include "ops_reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool.h"
#include "vecmath.h"

/* Smallest norm l2norm divides by, as torch.nn.functional.normalize. */
#define L2NORM_EPS 1e-12


/* ---- linear ------------------------------------------------------------- */

typedef struct BiasFillArgs
{
	real	   *out;
	const real *bias;
	int			OC;
} BiasFillArgs;

/* Copy bias[OC] into rows [begin, end) of out[N,OC]. */
static void
bias_fill_range(void *arg, size_t begin, size_t end)
{
	BiasFillArgs *a = arg;

	for (size_t n = begin; n < end; n++)
		memcpy(a->out + n * a->OC, a->bias, (size_t) a->OC * sizeof(real));
}

/* out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be NULL) */
void
linear_forward(real *out, const real *inp, const real *weight,
			   const real *bias, int N, int IC, int OC)
{
	real		beta = 0;

	if (N <= 0 || OC <= 0)
		return;
	if (bias != NULL)
	{
		BiasFillArgs args = {out, bias, OC};

		/* Start from the bias and let the product accumulate onto it. */
		peft_parallel_for((size_t) N, row_grain((size_t) OC), bias_fill_range, &args);
		beta = 1;
	}
	if (IC <= 0)
	{
		if (bias == NULL)
			memset(out, 0, (size_t) N * OC * sizeof(real));
		return;
	}
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC,
			   1, inp, IC, weight, IC, beta, out, OC);
}


/* ---- attention ---------------------------------------------------------------- */

typedef struct AttentionArgs
{
	real	   *out;
	real	   *probs;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *scratch;
	const real *dout;
	const real *probs_in;
	const real *q;
	const real *k;
	const real *v;
	const int32_t *mask;
	const uint8_t *keep;		/* NULL when there is no dropout */
	real		keep_scale;		/* 1/(1-p) for kept probabilities */
	real		score_scale;	/* 1/sqrt(head size) */
	int			T;
	int			C;
	int			NH;
	int			HS;
} AttentionArgs;

#ifdef PEFT_DOUBLE

/* Largest row[j] over keys with key_mask[j] != 0 (-inf if none). */
static inline real
masked_row_max(const real *row, const int32_t *key_mask, int T)
{
	real		max = -INFINITY;

	for (int j = 0; j < T; j++)
		if (key_mask[j] && row[j] > max)
			max = row[j];
	return max;
}

#else

/*
 * Largest row[j] over keys with key_mask[j] != 0 (-inf if none).  GCC will
 * not vectorise a float max reduction without -ffinite-math-only, so the
 * floats are mapped to integers that sort the same way (flip the magnitude
 * bits of negatives), reduced with an integer max, and mapped back.
 */
static inline float
masked_row_max(const float *row, const int32_t *key_mask, int T)
{
	int32_t		max_key = INT32_MIN;
	int32_t		bits;
	float		max;

	for (int j = 0; j < T; j++)
	{
		int32_t		b;
		int32_t		key;
		int32_t		valid = -(key_mask[j] != 0);	/* all ones or zero */

		memcpy(&b, &row[j], sizeof(b));
		key = b ^ ((b >> 31) & INT32_MAX);
		/* Bitwise select: the vectoriser will not if-convert "? :" here. */
		key = (key & valid) | (INT32_MIN & ~valid);
		max_key = key > max_key ? key : max_key;
	}
	/* The mapping is its own inverse. */
	bits = max_key ^ ((max_key >> 31) & INT32_MAX);
	memcpy(&max, &bits, sizeof(max));
	return max;
}

#endif

/*
 * In place over row[T] of scores: softmax over the keys whose mask is 1.
 * Masked keys get exactly 0; a row with no valid key becomes all zeros.
 */
VEC_CLONES
static void
masked_softmax_row(real *restrict row, const int32_t *restrict key_mask,
				   int valid_keys, int T)
{
	real		max;
	real		inv_sum;

	if (valid_keys == 0)
	{
		memset(row, 0, (size_t) T * sizeof(real));
		return;
	}
	max = masked_row_max(row, key_mask, T);

	/* Subtracting the max keeps every exponent <= 0: no overflow. */
	for (int j = 0; j < T; j++)
	{
		real		e = vec_exp(row[j] - max);

		row[j] = key_mask[j] ? e : 0;
	}
	inv_sum = (real) (1.0 / sum_double(row, T));
	for (int j = 0; j < T; j++)
		row[j] *= inv_sum;
}

/* Number of mask entries that are non-zero in mask[T]. */
static inline int
count_valid(const int32_t *mask, int T)
{
	int			count = 0;

	for (int t = 0; t < T; t++)
		count += mask[t] != 0;
	return count;
}

/* dst[n] = keep ? src * scale : 0 (dropout applied to attention weights) */
VEC_CLONES
static void
apply_keep_mask(real *restrict dst, const real *restrict src,
				const uint8_t *restrict keep, real scale, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = keep[i] ? src[i] * scale : 0;
}

/*
 * In place over work[T,T] = d(dropped weights): back through dropout (keep
 * may be NULL), then through the row softmax:
 *   dscore[i,j] = p[i,j] * (dp[i,j] - sum_k p[i,k] dp[i,k])
 * Masked keys have p = 0 and so get no gradient.
 */
VEC_CLONES
static void
softmax_dropout_backward(real *restrict work, const real *restrict probs,
						 const uint8_t *restrict keep, real scale, int T)
{
	for (int i = 0; i < T; i++)
	{
		real	   *restrict row = work + (size_t) i * T;
		const real *restrict p = probs + (size_t) i * T;
		real		dot;

		if (keep != NULL)
		{
			const uint8_t *restrict keep_row = keep + (size_t) i * T;

			for (int j = 0; j < T; j++)
				row[j] = keep_row[j] ? row[j] * scale : 0;
		}
		dot = (real) dot_double(p, row, T);
		for (int j = 0; j < T; j++)
			row[j] = p[j] * (row[j] - dot);
	}
}

/*
 * out_h[i,:] = sum_j keep * scale * probs[i,j] v_h[j,:] by plain loops: the
 * fallback when no T*T buffer can be allocated for the dropped probabilities.
 */
static void
attention_dropout_values_loop(real *out_h, const real *probs,
							  const uint8_t *keep, real keep_scale,
							  const real *v_h, int T, int C, int HS)
{
	for (int i = 0; i < T; i++)
	{
		real	   *o = out_h + (size_t) i * C;

		memset(o, 0, (size_t) HS * sizeof(real));
		for (int j = 0; j < T; j++)
		{
			size_t		ij = (size_t) i * T + j;
			real		w = keep[ij] ? probs[ij] * keep_scale : 0;
			const real *vj = v_h + (size_t) j * C;

			for (int d = 0; d < HS; d++)
				o[d] += w * vj[d];
		}
	}
}

/* Attention forward for heads bh in [begin, end) of B*NH. */
static void
attention_forward_range(void *arg, size_t begin, size_t end)
{
	AttentionArgs *a = arg;
	int			T = a->T;
	int			C = a->C;
	size_t		TT = (size_t) T * T;
	real	   *dropped = NULL;

	if (a->keep != NULL)
		dropped = malloc(TT * sizeof(real));

	for (size_t bh = begin; bh < end; bh++)
	{
		size_t		b = bh / a->NH;
		size_t		h = bh % a->NH;
		size_t		head_offset = b * T * C + h * a->HS;
		const real *q_h = a->q + head_offset;
		const real *k_h = a->k + head_offset;
		const real *v_h = a->v + head_offset;
		real	   *out_h = a->out + head_offset;
		real	   *probs = a->probs + bh * TT;
		const int32_t *key_mask = a->mask + b * T;
		int			valid_keys = count_valid(key_mask, T);
		const real *weights = probs;

		/* scores[T,T] = q_h k_h^T / sqrt(HS); head slices have row stride C */
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, a->HS,
				   a->score_scale, q_h, C, k_h, C, 0, probs, T);
		for (int i = 0; i < T; i++)
			masked_softmax_row(probs + (size_t) i * T, key_mask, valid_keys, T);

		if (a->keep != NULL)
		{
			const uint8_t *keep = a->keep + bh * TT;

			if (dropped == NULL)
			{
				attention_dropout_values_loop(out_h, probs, keep, a->keep_scale,
											  v_h, T, C, a->HS);
				continue;
			}
			apply_keep_mask(dropped, probs, keep, a->keep_scale, TT);
			weights = dropped;
		}

		/* out_h[T,HS] = weights[T,T] @ v_h[T,HS] */
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, a->HS, T,
				   1, weights, T, v_h, C, 0, out_h, C);
	}
	free(dropped);
}

/* Attention backward for heads bh in [begin, end) of B*NH. */
static void
attention_backward_range(void *arg, size_t begin, size_t end)
{
	AttentionArgs *a = arg;
	int			T = a->T;
	int			C = a->C;
	size_t		TT = (size_t) T * T;

	for (size_t bh = begin; bh < end; bh++)
	{
		size_t		b = bh / a->NH;
		size_t		h = bh % a->NH;
		size_t		head_offset = b * T * C + h * a->HS;
		const real *q_h = a->q + head_offset;
		const real *k_h = a->k + head_offset;
		const real *v_h = a->v + head_offset;
		const real *dout_h = a->dout + head_offset;
		const real *probs = a->probs_in + bh * TT;
		const uint8_t *keep = a->keep != NULL ? a->keep + bh * TT : NULL;
		real	   *work = a->scratch + bh * TT;

		if (a->dv != NULL)
		{
			const real *weights = probs;

			if (keep != NULL)
			{
				apply_keep_mask(work, probs, keep, a->keep_scale, TT);
				weights = work;
			}
			/* dv_h[T,HS] += weights^T @ dout_h */
			cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, a->HS, T,
					   1, weights, T, dout_h, C, 1, a->dv + head_offset, C);
		}

		if (a->dq == NULL && a->dk == NULL)
			continue;

		/* dweights[T,T] = dout_h @ v_h^T */
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, a->HS,
				   1, dout_h, C, v_h, C, 0, work, T);

		softmax_dropout_backward(work, probs, keep, a->keep_scale, T);

		/* The 1/sqrt(HS) of the scores is applied as the gemms' alpha. */
		if (a->dq != NULL)
			cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, a->HS, T,
					   a->score_scale, work, T, k_h, C, 1, a->dq + head_offset, C);
		if (a->dk != NULL)
			cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, a->HS, T,
					   a->score_scale, work, T, q_h, C, 1, a->dk + head_offset, C);
	}
}

/*
 * Run per-head tasks over the engine threads with OpenBLAS single-threaded
 * inside them.  The per-head products are small (T x T x HS): splitting
 * each over OpenBLAS's threads costs more in hand-offs than it gains (4x
 * slower at T = 128, HS = 32), and with our threads busy too they would
 * only compete for the same cores.  Restoring the previous count never
 * starts an OpenBLAS thread (it only grows past its high-water mark), so
 * no thread is created here with the caller's signal mask.
 */
static void
parallel_for_heads(size_t nheads, PeftRangeFn fn, void *ctx)
{
	int			blas_threads = openblas_get_num_threads();

	if (blas_threads > 1)
		openblas_set_num_threads(1);
	peft_parallel_for(nheads, 1, fn, ctx);
	if (blas_threads > 1)
		openblas_set_num_threads(blas_threads);
}

/* Fill the shape fields shared by attention forward and backward. */
static void
attention_args_init(AttentionArgs *a, const real *q, const real *k,
					const real *v, const int32_t *mask, const uint8_t *keep,
					real p, int T, int C, int NH)
{
	memset(a, 0, sizeof(*a));
	a->q = q;
	a->k = k;
	a->v = v;
	a->mask = mask;
	a->keep = p > 0 ? keep : NULL;
	a->keep_scale = dropout_keep_scale(p);
	a->T = T;
	a->C = C;
	a->NH = NH;
	a->HS = C / NH;
	a->score_scale = (real) (1.0 / sqrt((double) a->HS));
}

/* out[B,T,C], probs[B,NH,T,T] = masked softmax attention of q, k, v[B,T,C] */
void
attention_forward(real *out, real *probs, const real *q,
				  const real *k, const real *v, const int32_t *mask,
				  const uint8_t *keep, real p,
				  int B, int T, int C, int NH)
{
	AttentionArgs args;

	if (B <= 0 || T <= 0 || C <= 0 || NH <= 0 || C % NH != 0)
		return;
	attention_args_init(&args, q, k, v, mask, keep, p, T, C, NH);
	args.out = out;
	args.probs = probs;
	parallel_for_heads((size_t) B * NH, attention_forward_range, &args);
}

/* dq, dk, dv [B,T,C] += gradients given dout[B,T,C]; scratch is [B,NH,T,T] */
void
attention_backward(real *dq, real *dk, real *dv, real *scratch,
				   const real *dout, const real *probs,
				   const real *q, const real *k, const real *v,
				   const int32_t *mask, const uint8_t *keep, real p,
				   int B, int T, int C, int NH)
{
	AttentionArgs args;

	if (B <= 0 || T <= 0 || C <= 0 || NH <= 0 || C % NH != 0)
		return;
	if (dq == NULL && dk == NULL && dv == NULL)
		return;
	attention_args_init(&args, q, k, v, mask, keep, p, T, C, NH);
	args.dq = dq;
	args.dk = dk;
	args.dv = dv;
	args.scratch = scratch;
	args.dout = dout;
	args.probs_in = probs;
	parallel_for_heads((size_t) B * NH, attention_backward_range, &args);
}


/* ---- embeddings and pooling ---------------------------------------------- */

typedef struct EmbeddingArgs
{
	real	   *out;
	const int32_t *ids;
	const int32_t *type_ids;
	const real *word;
	const real *pos;
	const real *type;
	int			T;
	int			C;
} EmbeddingArgs;

/* Rows [begin, end) of B*T: word[id] + pos[t] + type[type id]. */
static void
embeddings_range(void *arg, size_t begin, size_t end)
{
	EmbeddingArgs *a = arg;
	int			C = a->C;

	for (size_t row = begin; row < end; row++)
	{
		size_t		t = row % a->T;
		int32_t		type_id = a->type_ids != NULL ? a->type_ids[row] : 0;
		const real *w = a->word + (size_t) a->ids[row] * C;
		const real *ps = a->pos + t * C;
		const real *ty = a->type + (size_t) type_id * C;
		real	   *o = a->out + row * C;

		for (int c = 0; c < C; c++)
			o[c] = w[c] + ps[c] + ty[c];
	}
}

/* out[B,T,C] = word[ids] + pos[t] + type[type_ids or 0] (no LayerNorm) */
void
embeddings_forward(real *out, const int32_t *ids,
				   const int32_t *type_ids, const real *word,
				   const real *pos, const real *type,
				   int B, int T, int C)
{
	EmbeddingArgs args = {out, ids, type_ids, word, pos, type, T, C};

	if (B <= 0 || T <= 0 || C <= 0)
		return;
	peft_parallel_for((size_t) B * T, row_grain((size_t) C), embeddings_range, &args);
}

/* out[B,C] = mean over t with mask[b,t] == 1 of inp[b,t,:] */
void
mean_pool_forward(real *out, const real *inp, const int32_t *mask,
				  int B, int T, int C)
{
	double	   *acc;

	if (B <= 0 || T <= 0 || C <= 0)
		return;
	acc = malloc((size_t) C * sizeof(double));
	for (int b = 0; b < B; b++)
	{
		real	   *o = out + (size_t) b * C;
		int			count = count_valid(mask + (size_t) b * T, T);

		/* No real token (an empty row): zeros, as sentence-transformers. */
		if (count == 0)
		{
			memset(o, 0, (size_t) C * sizeof(real));
			continue;
		}
		if (acc == NULL)
		{
			/* Out of memory for the double accumulator: sum in real. */
			memset(o, 0, (size_t) C * sizeof(real));
			for (int t = 0; t < T; t++)
				if (mask[(size_t) b * T + t])
					for (int c = 0; c < C; c++)
						o[c] += inp[((size_t) b * T + t) * C + c];
			for (int c = 0; c < C; c++)
				o[c] /= (real) count;
			continue;
		}
		memset(acc, 0, (size_t) C * sizeof(double));
		for (int t = 0; t < T; t++)
		{
			const real *x = inp + ((size_t) b * T + t) * C;

			if (mask[(size_t) b * T + t] == 0)
				continue;
			for (int c = 0; c < C; c++)
				acc[c] += (double) x[c];
		}
		for (int c = 0; c < C; c++)
			o[c] = (real) (acc[c] / count);
	}
	free(acc);
}

/* dinp[B,T,C] += dout[b,:] / count(b) where mask is 1 */
void
mean_pool_backward(real *dinp, const real *dout, const int32_t *mask,
				   int B, int T, int C)
{
	if (dinp == NULL || B <= 0 || T <= 0 || C <= 0)
		return;
	for (int b = 0; b < B; b++)
	{
		const real *g = dout + (size_t) b * C;
		int			count = count_valid(mask + (size_t) b * T, T);
		real		inv;

		if (count == 0)
			continue;
		inv = (real) (1.0 / count);
		for (int t = 0; t < T; t++)
		{
			real	   *dx = dinp + ((size_t) b * T + t) * C;

			if (mask[(size_t) b * T + t] == 0)
				continue;
			for (int c = 0; c < C; c++)
				dx[c] += g[c] * inv;
		}
	}
}

/* out[B,C] = inp[b,0,:] */
void
cls_pool_forward(real *out, const real *inp, int B, int T, int C)
{
	for (int b = 0; b < B; b++)
		memcpy(out + (size_t) b * C, inp + (size_t) b * T * C,
			   (size_t) C * sizeof(real));
}

/* dinp[b,0,:] += dout[b,:] */
void
cls_pool_backward(real *dinp, const real *dout, int B, int T, int C)
{
	if (dinp == NULL)
		return;
	for (int b = 0; b < B; b++)
	{
		real	   *dx = dinp + (size_t) b * T * C;
		const real *g = dout + (size_t) b * C;

		for (int c = 0; c < C; c++)
			dx[c] += g[c];
	}
}

/*
 * dinp[B,C] += (dout - x (x . dout) / n^2) / n with n = ||x||; below the
 * clamp the divisor is a constant and the gradient is dout / 1e-12.
 */
void
l2norm_backward(real *dinp, const real *dout, const real *inp,
				const real *norm, int B, int C)
{
	if (dinp == NULL)
		return;
	for (int b = 0; b < B; b++)
	{
		const real *x = inp + (size_t) b * C;
		const real *g = dout + (size_t) b * C;
		real	   *dx = dinp + (size_t) b * C;
		double		n = (double) norm[b];

		if (n >= L2NORM_EPS)
		{
			real		inv_n = (real) (1.0 / n);
			real		proj = (real) (dot_double(x, g, C) / (n * n));

			for (int c = 0; c < C; c++)
				dx[c] += (g[c] - x[c] * proj) * inv_n;
		}
		else
		{
			real		inv_eps = (real) (1.0 / L2NORM_EPS);

			for (int c = 0; c < C; c++)
				dx[c] += g[c] * inv_eps;
		}
	}
}
