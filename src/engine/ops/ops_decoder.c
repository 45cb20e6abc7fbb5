/*
 * ops_decoder.c - the decoder operations of ops_decoder.h: RMSNorm, rotary
 * position embeddings in both pair layouts, SwiGLU and causal
 * grouped-query attention over a key/value cache, each forward and
 * backward.  The CUDA kernels (kernels/decoder_ops.cu) are checked against
 * these, and these against PyTorch/transformers (test/unit/test_ops_decoder.c).
 *
 * Row-wise loops are split over the engine thread pool.  Every parallel
 * loop writes disjoint outputs, or reduces in an order that does not depend
 * on the split, so results are bit-for-bit identical for 1 or N threads.
 * Nothing here allocates: attention keeps its running softmax on the stack
 * (an online softmax over chunks of keys), so decoding a long context
 * needs no scratch buffer from the caller.
 */

/*
 * Let the vectoriser turn float selects into blends (see ops_cpu.c): the
 * engine never enables FP traps.  Before the includes, so inline
 * functions from headers get the same options.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-trapping-math", "vect-cost-model=dynamic")
#endif

#include "ops_decoder.h"

#include <math.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#include "matmul.h"
#include "threadpool.h"
#include "vecmath.h"

/* Columns of dweight reduced together (double accumulators in L1). */
#define RMS_COLUMN_BLOCK 64

/* RoPE pairs whose cos and sin are computed together, then applied to every head. */
#define ROPE_CHUNK 64

/* Pairs whose inverse frequency is computed once per call (head sizes up to 512). */
#define ROPE_TABLE 256

/* Keys scored together by attention before the running softmax is updated. */
#define ATTENTION_CHUNK 64

/* Output values of a head accumulated together in registers (four AVX2 vectors of floats). */
#define ATTENTION_OUT_BLOCK 32


/* ---- RMSNorm -------------------------------------------------------------- */

typedef struct RmsNormArgs
{
	real	   *out;			/* forward: out; backward: dinp */
	real	   *rstd;
	real	   *dweight;
	const real *inp;
	const real *dout;
	const real *weight;
	const real *rstd_in;
	int			N;
	int			C;
	real		eps;
} RmsNormArgs;

/*
 * Normalise rows [begin, end): mean of squares in double, rstd rounded
 * once, then (x * rstd) * weight in that order, as LlamaRMSNorm does.
 */
VEC_CLONES
static void
rmsnorm_forward_range(void *arg, size_t begin, size_t end)
{
	RmsNormArgs *a = arg;
	int			C = a->C;

	for (size_t n = begin; n < end; n++)
	{
		const real *x = a->inp + n * C;
		real	   *y = a->out + n * C;
		double		ms = dot_double(x, x, C) / C;
		real		s = (real) (1.0 / sqrt(ms + (double) a->eps));

		for (int c = 0; c < C; c++)
			y[c] = x[c] * s * a->weight[c];
		if (a->rstd != NULL)
			a->rstd[n] = s;
	}
}

/* out[N,C] = inp * rstd * weight, rstd[N] = 1 / sqrt(mean(inp^2) + eps) (saved for backward; may be NULL) */
void
rmsnorm_forward(real *out, real *rstd, const real *inp, const real *weight,
				int N, int C, real eps)
{
	RmsNormArgs args = {0};

	if (N <= 0 || C <= 0)
		return;
	args.out = out;
	args.rstd = rstd;
	args.inp = inp;
	args.weight = weight;
	args.N = N;
	args.C = C;
	args.eps = eps;
	peft_parallel_for((size_t) N, row_grain((size_t) C), rmsnorm_forward_range, &args);
}

/*
 * dinp for rows [begin, end), with xhat = x rstd and g = dout * weight:
 *   dinp += rstd * (g - xhat * mean(g * xhat))
 * (LayerNorm's without the mean terms: RMSNorm subtracts no mean).
 */
VEC_CLONES
static void
rmsnorm_dinp_range(void *arg, size_t begin, size_t end)
{
	RmsNormArgs *a = arg;
	int			C = a->C;

	for (size_t n = begin; n < end; n++)
	{
		const real *x = a->inp + n * C;
		const real *dy = a->dout + n * C;
		real	   *dx = a->out + n * C;
		real		s = a->rstd_in[n];
		double		acc[8] = {0};
		double		sum_gx;
		real		mean_gx;
		int			c = 0;

		for (; c + 8 <= C; c += 8)
			for (int k = 0; k < 8; k++)
				acc[k] += (double) (dy[c + k] * a->weight[c + k]) * (double) (x[c + k] * s);
		for (; c < C; c++)
			acc[0] += (double) (dy[c] * a->weight[c]) * (double) (x[c] * s);
		sum_gx = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
			((acc[4] + acc[5]) + (acc[6] + acc[7]));
		mean_gx = (real) (sum_gx / C);
		for (c = 0; c < C; c++)
			dx[c] += s * (dy[c] * a->weight[c] - x[c] * s * mean_gx);
	}
}

/*
 * dweight[c] += sum_n dout * xhat for columns [begin, end), rows summed in
 * order in double, so the split does not change the result.
 */
static void
rmsnorm_dweight_range(void *arg, size_t begin, size_t end)
{
	RmsNormArgs *a = arg;
	int			C = a->C;

	for (size_t c0 = begin; c0 < end; c0 += RMS_COLUMN_BLOCK)
	{
		int			width = (int) (end - c0 < RMS_COLUMN_BLOCK ? end - c0 : RMS_COLUMN_BLOCK);
		double		acc[RMS_COLUMN_BLOCK] = {0};

		for (size_t n = 0; n < (size_t) a->N; n++)
		{
			const real *x = a->inp + n * C + c0;
			const real *dy = a->dout + n * C + c0;
			real		s = a->rstd_in[n];

			for (int c = 0; c < width; c++)
				acc[c] += (double) dy[c] * (double) (x[c] * s);
		}
		for (int c = 0; c < width; c++)
			a->dweight[c0 + c] += (real) acc[c];
	}
}

/* dinp[N,C] += ..., dweight[C] += ... (rstd from the forward) */
void
rmsnorm_backward(real *dinp, real *dweight, const real *dout, const real *inp,
				 const real *weight, const real *rstd, int N, int C)
{
	RmsNormArgs args = {0};

	if (N <= 0 || C <= 0)
		return;
	args.out = dinp;
	args.dweight = dweight;
	args.inp = inp;
	args.dout = dout;
	args.weight = weight;
	args.rstd_in = rstd;
	args.N = N;
	args.C = C;
	if (dinp != NULL)
		peft_parallel_for((size_t) N, row_grain((size_t) C), rmsnorm_dinp_range, &args);
	if (dweight != NULL)
	{
		size_t		grain = row_grain((size_t) N);

		/* Whole cache lines of dweight per chunk. */
		if (grain < 16)
			grain = 16;
		peft_parallel_for((size_t) C, grain, rmsnorm_dweight_range, &args);
	}
}


/* ---- rotary position embeddings ------------------------------------------- */

typedef struct RopeArgs
{
	real	   *x;
	const int32_t *pos;
	int			H;
	int			D;
	double		base;
	RopeLayout	layout;
	real		sign;			/* +1 forward, -1 backward (the inverse rotation) */
	float		inv_freq[ROPE_TABLE];	/* of pairs 0..min(D/2, ROPE_TABLE) */
} RopeArgs;

/*
 * The inverse frequency of pair i, computed as transformers'
 * LlamaRotaryEmbedding does, in float32: 1 / base^(2i/D) with the exponent
 * a float32 quotient and the power rounded to float32 (torch's float pow is
 * within an ulp of this correctly rounded one, not always equal to it).
 * The angle is then pos * inv_freq rounded to float32 (rope_range).  The
 * decoder is compared with transformers, and at position 8000 one float
 * rounding of the angle moves it by 5e-4 rad: a double angle would be more
 * exact but further from the model's reference.
 */
static inline float
rope_inv_freq(int i, int D, double base)
{
	float		exponent = (float) (2 * i) / (float) D;

	return 1.0f / (float) pow(base, (double) exponent);
}

/*
 * Rotate rows [begin, end) of x[N, H*D]: for each chunk of pairs, cos and
 * sin of the float32 angle (libm in double, rounded once: within an ulp of
 * torch's float cos/sin), then every head's pairs (a, b) become
 * (a c - b s, a s + b c), s negated for the inverse rotation.
 */
VEC_CLONES
static void
rope_range(void *arg, size_t begin, size_t end)
{
	RopeArgs   *a = arg;
	int			D = a->D;
	int			half = D / 2;
	/* Where pair i's two values sit: 2i and 2i+1, or i and i + D/2. */
	int			first_step = a->layout == ROPE_PAIRS ? 2 : 1;
	int			second_offset = a->layout == ROPE_PAIRS ? 1 : half;

	for (size_t n = begin; n < end; n++)
	{
		real	   *row = a->x + n * (size_t) a->H * D;

		for (int i0 = 0; i0 < half; i0 += ROPE_CHUNK)
		{
			int			width = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
			real		cs[ROPE_CHUNK];
			real		sn[ROPE_CHUNK];

			for (int i = 0; i < width; i++)
			{
				int			pair = i0 + i;
				float		inv_freq = pair < ROPE_TABLE ? a->inv_freq[pair] :
					rope_inv_freq(pair, D, a->base);
				double		angle = (float) a->pos[n] * inv_freq;

				cs[i] = (real) cos(angle);
				sn[i] = a->sign * (real) sin(angle);
			}
			for (int h = 0; h < a->H; h++)
			{
				real	   *head = row + (size_t) h * D;

				for (int i = 0; i < width; i++)
				{
					real	   *pa = head + (size_t) (i0 + i) * first_step;
					real	   *pb = pa + second_offset;
					real		va = *pa;
					real		vb = *pb;

					*pa = va * cs[i] - vb * sn[i];
					*pb = va * sn[i] + vb * cs[i];
				}
			}
		}
	}
}

/* Run the rotation (sign +1) or its inverse (sign -1) over x[N, H*D] in place. */
static void
rope_apply(real *x, const int32_t *pos, int N, int H, int D, real base,
		   RopeLayout layout, real sign)
{
	RopeArgs	args = {.x = x, .pos = pos, .H = H, .D = D, .base = (double) base,
	.layout = layout, .sign = sign};

	/* An odd D has no pairing; callers validate head sizes. */
	if (N <= 0 || H <= 0 || D <= 0 || D % 2 != 0)
		return;
	for (int i = 0; i < D / 2 && i < ROPE_TABLE; i++)
		args.inv_freq[i] = rope_inv_freq(i, D, args.base);
	peft_parallel_for((size_t) N, row_grain((size_t) H * D), rope_range, &args);
}

/* Rotate x[N, H*D] in place, row r at position pos[r]. */
void
rope_forward(real *x, const int32_t *pos, int N, int H, int D, real base,
			 RopeLayout layout)
{
	rope_apply(x, pos, N, H, D, base, layout, 1);
}

/* dx[N, H*D] in place: the gradient through the rotation (the inverse rotation). */
void
rope_backward(real *dx, const int32_t *pos, int N, int H, int D, real base,
			  RopeLayout layout)
{
	rope_apply(dx, pos, N, H, D, base, layout, -1);
}


/* ---- SwiGLU --------------------------------------------------------------- */

typedef struct SwigluArgs
{
	real	   *out;			/* forward: out; backward: dgate */
	real	   *dup;
	const real *dout;
	const real *gate;
	const real *up;
} SwigluArgs;

/* sigmoid(x); vec_exp saturates, so x << 0 gives 0 and x >> 0 gives 1, never NaN. */
static inline real
sigmoid(real x)
{
	return 1 / (1 + vec_exp(-x));
}

/* out = gate * sigmoid(gate) * up over [begin, end). */
VEC_CLONES
static void
swiglu_forward_range(void *arg, size_t begin, size_t end)
{
	SwigluArgs *a = arg;

	for (size_t i = begin; i < end; i++)
	{
		real		g = a->gate[i];

		a->out[i] = g * sigmoid(g) * a->up[i];
	}
}

/*
 * Over [begin, end), with sig = sigmoid(gate):
 *   dgate += dout * up * sig * (1 + gate (1 - sig)),  dup += dout * gate * sig
 * One loop per output, so neither carries a NULL test that stops it
 * vectorising.
 */
VEC_CLONES
static void
swiglu_backward_range(void *arg, size_t begin, size_t end)
{
	SwigluArgs *a = arg;

	if (a->out != NULL)
		for (size_t i = begin; i < end; i++)
		{
			real		g = a->gate[i];
			real		sig = sigmoid(g);

			a->out[i] += a->dout[i] * a->up[i] * sig * (1 + g * (1 - sig));
		}
	if (a->dup != NULL)
		for (size_t i = begin; i < end; i++)
		{
			real		g = a->gate[i];

			a->dup[i] += a->dout[i] * g * sigmoid(g);
		}
}

/* out[n] = silu(gate[n]) * up[n] */
void
swiglu_forward(real *out, const real *gate, const real *up, size_t n)
{
	SwigluArgs	args = {out, NULL, NULL, gate, up};

	if (n == 0)
		return;
	peft_parallel_for(n, PARALLEL_GRAIN, swiglu_forward_range, &args);
}

/* dgate[n] += ..., dup[n] += ... */
void
swiglu_backward(real *dgate, real *dup, const real *dout, const real *gate,
				const real *up, size_t n)
{
	SwigluArgs	args = {dgate, dup, dout, gate, up};

	if (n == 0 || (dgate == NULL && dup == NULL))
		return;
	peft_parallel_for(n, PARALLEL_GRAIN, swiglu_backward_range, &args);
}


/* ---- causal GQA attention over a key/value cache --------------------------- */

typedef struct GqaArgs
{
	real	   *out;
	real	   *probs;
	real	   *dq;
	real	   *dkcache;
	real	   *dvcache;
	const real *dout;
	const real *q;
	const real *kcache;
	const real *vcache;
	const real *probs_in;
	const int32_t *slot;
	const int32_t *pos;
	int			N;
	int			Hq;
	int			Hkv;
	int			D;
	int			ctx;
	real		scale;			/* 1/sqrt(D) */
} GqaArgs;

/*
 * a . b over [0, n) in real, in 16 interleaved partial sums combined in a
 * fixed order.  For attention's scores: in float it vectorises without
 * dot_double's conversions, which made prefill scoring 1.5x slower, and
 * moved the outputs against PyTorch by nothing measurable (both stay at
 * 3.2e-7).
 */
static inline real
dot_real(const real *a, const real *b, int n)
{
	real		acc[16] = {0};
	real		s8[8];
	int			i = 0;

	for (; i + 16 <= n; i += 16)
		for (int k = 0; k < 16; k++)
			acc[k] += a[i + k] * b[i + k];
	for (; i < n; i++)
		acc[i % 16] += a[i] * b[i];
	for (int k = 0; k < 8; k++)
		s8[k] = acc[k] + acc[k + 8];
	return ((s8[0] + s8[4]) + (s8[2] + s8[6])) + ((s8[1] + s8[5]) + (s8[3] + s8[7]));
}

/* Row p of key/value head kvh of slot s in a [slots][ctx][Hkv*D] cache. */
static inline size_t
cache_offset(const GqaArgs *a, int s, int p, int kvh)
{
	return (((size_t) s * a->ctx + p) * a->Hkv + kvh) * a->D;
}

/*
 * acc[0..width) += sum_j p[j] v[j * stride + 0..width) over n keys.  A full
 * block of ATTENTION_OUT_BLOCK values is summed in a local array the
 * compiler keeps in vector registers: adding into acc itself key after key
 * stalled every step on storing and reloading the same memory.
 */
static inline void
accumulate_values(real *restrict acc, const real *restrict p, const real *restrict v,
				  size_t stride, int n, int width)
{
	if (width == ATTENTION_OUT_BLOCK)
	{
		real		local[ATTENTION_OUT_BLOCK];

		memcpy(local, acc, sizeof(local));
		for (int j = 0; j < n; j++)
			for (int k = 0; k < ATTENTION_OUT_BLOCK; k++)
				local[k] += p[j] * v[j * stride + k];
		memcpy(acc, local, sizeof(local));
	}
	else
		for (int j = 0; j < n; j++)
			for (int k = 0; k < width; k++)
				acc[k] += p[j] * v[j * stride + k];
}

/*
 * Query row r, head h, attending to positions 0..pos[r] of its slot.
 * Keys are scored ATTENTION_CHUNK at a time; a running max m, sum l and the
 * unnormalised output (kept in out's own row) are rescaled by exp(m_old -
 * m_new) when a chunk raises the max: the online softmax, one pass over the
 * cache with nothing but the stack.  Scores are q.k (dot_real), scaled once.
 * With probs, the raw scores are stored as they come and turned into the
 * softmax at the end, from the final max and sum.
 */
VEC_CLONES
static void
attention_forward_head(const GqaArgs *a, int r, int h)
{
	int			D = a->D;
	int			kvh = h / (a->Hq / a->Hkv);
	int			s = a->slot[r];
	int			len = a->pos[r] + 1;
	const real *qh = a->q + ((size_t) r * a->Hq + h) * D;
	real	   *oh = a->out + ((size_t) r * a->Hq + h) * D;
	real	   *prow = a->probs != NULL ? a->probs + ((size_t) r * a->Hq + h) * a->ctx : NULL;
	real		max = -INFINITY;
	double		sum = 0;
	real		inv_sum;

	memset(oh, 0, (size_t) D * sizeof(real));
	for (int j0 = 0; j0 < len; j0 += ATTENTION_CHUNK)
	{
		int			width = len - j0 < ATTENTION_CHUNK ? len - j0 : ATTENTION_CHUNK;
		real		score[ATTENTION_CHUNK];
		real		chunk_max = -INFINITY;
		real		new_max;

		for (int j = 0; j < width; j++)
		{
			const real *kj = a->kcache + cache_offset(a, s, j0 + j, kvh);

			score[j] = dot_real(qh, kj, D) * a->scale;
			chunk_max = score[j] > chunk_max ? score[j] : chunk_max;
		}
		if (prow != NULL)
			memcpy(prow + j0, score, (size_t) width * sizeof(real));
		new_max = chunk_max > max ? chunk_max : max;
		if (new_max > max && max != -INFINITY)
		{
			/* Rescale what the earlier chunks summed to the new max. */
			real		shrink = vec_exp(max - new_max);

			sum *= shrink;
			for (int d = 0; d < D; d++)
				oh[d] *= shrink;
		}
		max = new_max;
		/* Every exponent is <= 0: no overflow. */
		for (int j = 0; j < width; j++)
			score[j] = vec_exp(score[j] - max);
		sum += sum_double(score, width);
		for (int d0 = 0; d0 < D; d0 += ATTENTION_OUT_BLOCK)
			accumulate_values(oh + d0, score, a->vcache + cache_offset(a, s, j0, kvh) + d0,
							  (size_t) a->Hkv * D, width,
							  D - d0 < ATTENTION_OUT_BLOCK ? D - d0 : ATTENTION_OUT_BLOCK);
	}
	inv_sum = (real) (1.0 / sum);
	for (int d = 0; d < D; d++)
		oh[d] *= inv_sum;
	if (prow != NULL)
		for (int j = 0; j < len; j++)
			prow[j] = vec_exp(prow[j] - max) * inv_sum;
}

/*
 * The rows of slot s (*T of them, malloc'ed) and the cache positions they
 * span (*L), with *buf of matrices * T * L + vectors * T * D reals for an
 * item's products; NULL (nothing allocated) without the memory.
 */
static int32_t *
slot_rows(const GqaArgs *a, int s, int matrices, int vectors, int *T, int *L, real **buf)
{
	int32_t    *rows = malloc(sizeof(int32_t) * a->N);

	*T = *L = 0;
	*buf = NULL;
	if (rows == NULL)
		return NULL;
	for (int r = 0; r < a->N; r++)
		if (a->slot[r] == s)
		{
			rows[(*T)++] = r;
			*L = a->pos[r] + 1 > *L ? a->pos[r] + 1 : *L;
		}
	*buf = malloc(sizeof(real) * ((size_t) matrices * *T * *L + (size_t) vectors * *T * a->D + 1));
	if (*buf == NULL)
	{
		free(rows);
		return NULL;
	}
	return rows;
}

/*
 * Training's forward of item (slot s, key/value head kvh) as matrix
 * products, as the backward (attention_backward_item): per query head of
 * the group, S = Q K^T / sqrt(D) over the slot's T rows and first L cache
 * positions, the causal softmax of each row into probs, and O = P V.
 * Returns false, having done nothing, without memory for its buffers.
 */
static bool
attention_forward_item(const GqaArgs *a, int s, int kvh)
{
	int			D = a->D;
	int			group = a->Hq / a->Hkv;
	int			ld = a->Hkv * D;
	int			T,
				L;
	real	   *buf;
	int32_t    *rows = slot_rows(a, s, 1, 2, &T, &L, &buf);
	real	   *S,
			   *Q,
			   *O;
	size_t		base = cache_offset(a, s, 0, kvh);

	if (rows == NULL)
		return false;
	S = buf;
	Q = S + (size_t) T * L;
	O = Q + (size_t) T * D;
	for (int h = kvh * group; T > 0 && h < (kvh + 1) * group; h++)
	{
		for (int t = 0; t < T; t++)
			memcpy(Q + (size_t) t * D, a->q + ((size_t) rows[t] * a->Hq + h) * D, sizeof(real) * D);
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, D, a->scale, Q, D, a->kcache + base, ld,
				   0, S, L);
		for (int t = 0; t < T; t++)
		{
			real	   *st = S + (size_t) t * L;
			int			len = a->pos[rows[t]] + 1;
			real		max = st[0];
			double		sum = 0;
			real		inv;

			for (int j = 1; j < len; j++)
				max = st[j] > max ? st[j] : max;
			for (int j = 0; j < len; j++)
			{
				st[j] = vec_exp(st[j] - max);
				sum += st[j];
			}
			inv = (real) (1.0 / sum);
			for (int j = 0; j < len; j++)
				st[j] *= inv;
			memset(st + len, 0, sizeof(real) * (L - len));
			memcpy(a->probs + ((size_t) rows[t] * a->Hq + h) * a->ctx, st, sizeof(real) * len);
		}
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, L, 1, S, L, a->vcache + base, ld, 0,
				   O, D);
		for (int t = 0; t < T; t++)
			memcpy(a->out + ((size_t) rows[t] * a->Hq + h) * D, O + (size_t) t * D, sizeof(real) * D);
	}
	free(rows);
	free(buf);
	return true;
}

/* Training's forward of (slot, key/value head) items [begin, end); row by row without memory. */
static void
attention_forward_slot_range(void *arg, size_t begin, size_t end)
{
	GqaArgs    *a = arg;
	int			group = a->Hq / a->Hkv;

	for (size_t item = begin; item < end; item++)
	{
		int			s = (int) (item / a->Hkv);
		int			kvh = (int) (item % a->Hkv);

		if (attention_forward_item(a, s, kvh))
			continue;
		for (int r = 0; r < a->N; r++)
			if (a->slot[r] == s)
				for (int h = kvh * group; h < (kvh + 1) * group; h++)
					attention_forward_head(a, r, h);
	}
}

/* Forward of (row, head) items [begin, end), item = r * Hq + h. */
static void
attention_forward_range(void *arg, size_t begin, size_t end)
{
	GqaArgs    *a = arg;

	for (size_t item = begin; item < end; item++)
		attention_forward_head(a, (int) (item / a->Hq), (int) (item % a->Hq));
}

/* Whether the shapes and the rows' slots and positions can be attended over. */
static bool
attention_args_valid(const int32_t *slot, const int32_t *pos, int N, int Hq,
					 int Hkv, int D, int ctx)
{
	if (N <= 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || ctx <= 0 || Hq % Hkv != 0)
		return false;
	for (int r = 0; r < N; r++)
		if (slot[r] < 0 || pos[r] < 0 || pos[r] >= ctx)
			return false;
	return true;
}

/*
 * (row, head) items per chunk so that a chunk holds about PARALLEL_GRAIN
 * multiply-adds: a single decoded token over a long context still splits
 * over its heads, while many short prefill rows go in runs.
 */
static size_t
attention_grain(const int32_t *pos, int N, int Hq, int D)
{
	double		keys = 0;
	double		per_item;

	for (int r = 0; r < N; r++)
		keys += pos[r] + 1;
	per_item = 2.0 * D * keys / N;
	return per_item >= PARALLEL_GRAIN ? 1 : (size_t) (PARALLEL_GRAIN / per_item);
}

/*
 * Causal grouped-query attention of N query rows over the cache (see the
 * header).  A row outside its cache (slot < 0, pos < 0 or >= ctx) or a head count
 * that does not group (Hq % Hkv) leaves everything untouched: callers
 * validate; this only keeps the loops in bounds.
 */
void
gqa_attention_forward(real *out, real *probs, const real *q,
					  const real *kcache, const real *vcache,
					  const int32_t *slot, const int32_t *pos,
					  int N, int Hq, int Hkv, int D, int ctx)
{
	GqaArgs		args = {0};

	if (!attention_args_valid(slot, pos, N, Hq, Hkv, D, ctx))
		return;
	args.out = out;
	args.probs = probs;
	args.q = q;
	args.kcache = kcache;
	args.vcache = vcache;
	args.slot = slot;
	args.pos = pos;
	args.N = N;
	args.Hq = Hq;
	args.Hkv = Hkv;
	args.D = D;
	args.ctx = ctx;
	args.scale = (real) (1.0 / sqrt((double) D));
	if (probs != NULL)
	{
		/* training: whole slots as matrix products */
		int			slots = 0;

		for (int r = 0; r < N; r++)
			slots = slot[r] >= slots ? slot[r] + 1 : slots;
		parallel_for_serial_blas((size_t) slots * Hkv, 1, attention_forward_slot_range, &args);
		return;
	}
	peft_parallel_for((size_t) N * Hq, attention_grain(pos, N, Hq, D),
					  attention_forward_range, &args);
}

/*
 * Backward of query row r, head h, with P its softmax row:
 *   dP_j = dout . v_j,   dS_j = P_j (dP_j - sum_k P_k dP_k)
 *   dq += scale sum_j dS_j k_j,  dk_j += scale dS_j q,  dv_j += P_j dout
 * Two passes over the keys: the first for sum_k P_k dP_k, the second for
 * the gradients.
 */
VEC_CLONES
static void
attention_backward_head(const GqaArgs *a, int r, int h, int kvh, real *dp)
{
	int			D = a->D;
	int			s = a->slot[r];
	int			len = a->pos[r] + 1;
	size_t		row = (size_t) r * a->Hq + h;
	const real *qh = a->q + row * D;
	const real *dy = a->dout + row * D;
	const real *p = a->probs_in + row * a->ctx;
	real	   *dqh = a->dq != NULL ? a->dq + row * D : NULL;
	bool		scores = a->dq != NULL || a->dkcache != NULL;
	double		pdp = 0;

	/*
	 * dp_j = dy . v_j once (dot_real, as the forward's scores; dp NULL, out
	 * of memory for a long context: twice), their p-weighted sum in double
	 */
	if (scores)
		for (int j = 0; j < len; j++)
		{
			real		dpj = dot_real(dy, a->vcache + cache_offset(a, s, j, kvh), D);

			if (dp)
				dp[j] = dpj;
			pdp += (double) p[j] * dpj;
		}
	for (int j = 0; j < len; j++)
	{
		size_t		at = cache_offset(a, s, j, kvh);

		if (a->dvcache != NULL)
		{
			real	   *dvj = a->dvcache + at;

			for (int d = 0; d < D; d++)
				dvj[d] += p[j] * dy[d];
		}
		if (scores)
		{
			real		dpj = dp ? dp[j] : dot_real(dy, a->vcache + at, D);
			real		ds = (real) ((double) p[j] * (dpj - pdp)) * a->scale;
			const real *kj = a->kcache + at;

			if (dqh != NULL)
				for (int d = 0; d < D; d++)
					dqh[d] += ds * kj[d];
			if (a->dkcache != NULL)
			{
				real	   *dkj = a->dkcache + at;

				for (int d = 0; d < D; d++)
					dkj[d] += ds * qh[d];
			}
		}
	}
}

/*
 * Backward of item (slot s, key/value head kvh) as small matrix products:
 * the slot's T rows against its first L cache positions, per query head h
 * of the group, with P the saved attention weights (zero past each row's
 * position):
 *
 *   dV += P^T dY;   dP = dY V^T;   dS = P (dP - rowsum(P dP)) / sqrt(D);
 *   dQ += dS K;     dK += dS^T Q.
 *
 * Row by row the same sums ran at a tenth of the products' speed (a third
 * of a training step's time went to attention's backward).  Returns false,
 * having done nothing, when its few buffers cannot be had.
 */
static bool
attention_backward_item(const GqaArgs *a, int s, int kvh)
{
	int			D = a->D;
	int			group = a->Hq / a->Hkv;
	int			ld = a->Hkv * D;	/* the cache's row stride */
	int			T,
				L;
	real	   *buf;
	int32_t    *rows = slot_rows(a, s, 2, 3, &T, &L, &buf);
	real	   *P,
			   *dP,
			   *dY,
			   *Q,
			   *dQ;
	bool		scores = a->dq != NULL || a->dkcache != NULL;
	size_t		base = cache_offset(a, s, 0, kvh);

	if (rows == NULL)
		return false;
	P = buf;
	dP = P + (size_t) T * L;
	dY = dP + (size_t) T * L;
	Q = dY + (size_t) T * D;
	dQ = Q + (size_t) T * D;
	for (int h = kvh * group; T > 0 && h < (kvh + 1) * group; h++)
	{
		for (int t = 0; t < T; t++)
		{
			size_t		row = (size_t) rows[t] * a->Hq + h;
			int			len = a->pos[rows[t]] + 1;

			memcpy(P + (size_t) t * L, a->probs_in + row * a->ctx, sizeof(real) * len);
			memset(P + (size_t) t * L + len, 0, sizeof(real) * (L - len));
			memcpy(dY + (size_t) t * D, a->dout + row * D, sizeof(real) * D);
			memcpy(Q + (size_t) t * D, a->q + row * D, sizeof(real) * D);
		}
		if (a->dvcache != NULL)
			cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, T, 1, P, L, dY, D, 1,
					   a->dvcache + base, ld);
		if (!scores)
			continue;
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, D, 1, dY, D, a->vcache + base, ld, 0,
				   dP, L);
		for (int t = 0; t < T; t++)
		{
			real	   *pt = P + (size_t) t * L;
			real	   *dpt = dP + (size_t) t * L;
			double		pdp = 0;

			for (int j = 0; j < L; j++)
				pdp += (double) pt[j] * dpt[j];
			for (int j = 0; j < L; j++)
				dpt[j] = (real) ((double) pt[j] * (dpt[j] - pdp)) * a->scale;
		}
		if (a->dq != NULL)
		{
			cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, L, 1, dP, L, a->kcache + base, ld,
					   0, dQ, D);
			for (int t = 0; t < T; t++)
			{
				real	   *dqh = a->dq + ((size_t) rows[t] * a->Hq + h) * D;

				for (int d = 0; d < D; d++)
					dqh[d] += dQ[(size_t) t * D + d];
			}
		}
		if (a->dkcache != NULL)
			cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, T, 1, dP, L, Q, D, 1,
					   a->dkcache + base, ld);
	}
	free(rows);
	free(buf);
	return true;
}

/*
 * Backward of items [begin, end), item = slot * Hkv + kvh: every row of
 * that slot, every query head of that group.  Only this item writes the
 * slot's cache gradients of head kvh and those rows' dq heads, so items
 * run in parallel without atomics and the sums' order is fixed.  Out of
 * memory for an item's buffers, it goes row by row.
 */
static void
attention_backward_range(void *arg, size_t begin, size_t end)
{
	GqaArgs    *a = arg;
	int			group = a->Hq / a->Hkv;
	real		stack[1024];
	real	   *dp = a->ctx <= 1024 ? stack : malloc(sizeof(real) * a->ctx);

	for (size_t item = begin; item < end; item++)
	{
		int			s = (int) (item / a->Hkv);
		int			kvh = (int) (item % a->Hkv);

		if (attention_backward_item(a, s, kvh))
			continue;
		for (int r = 0; r < a->N; r++)
			if (a->slot[r] == s)
				for (int h = kvh * group; h < (kvh + 1) * group; h++)
					attention_backward_head(a, r, h, kvh, dp);
	}
	if (dp != stack)
		free(dp);
}

/* dq[N, Hq*D] += ..., dkcache/dvcache (cache-shaped) += ...; probs from the forward */
void
gqa_attention_backward(real *dq, real *dkcache, real *dvcache, const real *dout,
					   const real *q, const real *kcache, const real *vcache,
					   const real *probs, const int32_t *slot, const int32_t *pos,
					   int N, int Hq, int Hkv, int D, int ctx)
{
	GqaArgs		args = {0};
	int			slots = 0;

	if (dq == NULL && dkcache == NULL && dvcache == NULL)
		return;
	if (!attention_args_valid(slot, pos, N, Hq, Hkv, D, ctx))
		return;
	for (int r = 0; r < N; r++)
		if (slot[r] >= slots)
			slots = slot[r] + 1;
	args.dq = dq;
	args.dkcache = dkcache;
	args.dvcache = dvcache;
	args.dout = dout;
	args.q = q;
	args.kcache = kcache;
	args.vcache = vcache;
	args.probs_in = probs;
	args.slot = slot;
	args.pos = pos;
	args.N = N;
	args.Hq = Hq;
	args.Hkv = Hkv;
	args.D = D;
	args.ctx = ctx;
	args.scale = (real) (1.0 / sqrt((double) D));
	parallel_for_serial_blas((size_t) slots * Hkv, 1, attention_backward_range, &args);
}
