/*
 * ops_varlen.c - CPU operations on packed (unpadded) batches; see
 * ops_varlen.h for the layout.
 *
 * Attention runs one task per (sequence, head) with single-threaded
 * OpenBLAS products inside, the tasks dealt to the engine threads in
 * contiguous runs of about equal cost (a sequence costs len^2), so one
 * long sentence does not leave the other threads idle.  Every task writes
 * its own rows and blocks, so results do not depend on the thread count.
 */

/*
 * Let the vectoriser turn float selects into blends (see ops_cpu.c): the
 * engine never enables FP traps.  Before the includes, so inline
 * functions from headers get the same options.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-trapping-math", "vect-cost-model=dynamic")
#endif

#include "ops_varlen.h"

#include <math.h>
#include <string.h>

#include "matmul.h"
#include "threadpool.h"
#include "vecmath.h"

/* Most runs the attention tasks are dealt in (threads beyond share runs). */
#define VARLEN_MAX_PARTS 64

/* Columns pooled together, summed in double registers/L1. */
#define POOL_COLUMN_BLOCK 64

/* Length of sequence b. */
static inline int
seq_len(const int32_t *seq_start, int b)
{
	return seq_start[b + 1] - seq_start[b];
}

/* ---- packing ------------------------------------------------------------- */

/* seq_start[B+1] and rows[N] of the real tokens of mask[B,T]; returns N. */
int
varlen_pack(int32_t *seq_start, int32_t *rows, const int32_t *mask, int B, int T)
{
	int			n = 0;

	for (int b = 0; b < B; b++)
	{
		seq_start[b] = n;
		for (int t = 0; t < T; t++)
			if (mask[(size_t) b * T + t])
			{
				if (rows != NULL)
					rows[n] = b * T + t;
				n++;
			}
	}
	seq_start[B] = n;
	return n;
}

/* NH * sum over sequences of len^2. */
size_t
varlen_attention_size(const int32_t *seq_start, int B, int NH)
{
	size_t		total = 0;

	for (int b = 0; b < B; b++)
		total += (size_t) seq_len(seq_start, b) * seq_len(seq_start, b);
	return total * NH;
}


/* ---- embeddings ---------------------------------------------------------- */

typedef struct VarlenEmbeddingArgs
{
	real	   *out;
	const int32_t *ids;
	const int32_t *type_ids;
	const int32_t *rows;
	int			T;
	const real *word;
	const real *pos;
	const real *type;
	int			C;
} VarlenEmbeddingArgs;

/* Packed rows [begin, end): word + position + token type. */
static void
embeddings_range(void *arg, size_t begin, size_t end)
{
	VarlenEmbeddingArgs *a = arg;
	int			C = a->C;

	for (size_t n = begin; n < end; n++)
	{
		size_t		src = (size_t) a->rows[n];
		int32_t		type_id = a->type_ids != NULL ? a->type_ids[src] : 0;
		const real *w = a->word + (size_t) a->ids[src] * C;
		const real *ps = a->pos + (src % a->T) * C;
		const real *ty = a->type + (size_t) type_id * C;
		real	   *o = a->out + n * C;

		for (int c = 0; c < C; c++)
			o[c] = w[c] + ps[c] + ty[c];
	}
}

/* out[N,C] = embeddings of the packed tokens at their padded positions. */
void
varlen_embeddings_forward(real *out, const int32_t *ids, const int32_t *type_ids,
						  const int32_t *rows, int N, int T, const real *word,
						  const real *pos, const real *type, int C)
{
	VarlenEmbeddingArgs args = {out, ids, type_ids, rows, T, word, pos, type, C};

	if (N <= 0 || C <= 0)
		return;
	peft_parallel_for((size_t) N, row_grain((size_t) C), embeddings_range, &args);
}


/* ---- attention: row kernels ---------------------------------------------- */

#ifdef PEFT_DOUBLE

/* Largest of row[0..n). */
static inline real
row_max(const real *row, int n)
{
	real		max = -INFINITY;

	for (int j = 0; j < n; j++)
		if (row[j] > max)
			max = row[j];
	return max;
}

#else

/*
 * Largest of row[0..n).  GCC will not vectorise a float max reduction
 * without -ffinite-math-only, so the floats are mapped to integers that
 * sort the same way (flip the magnitude bits of negatives), reduced with an
 * integer max, and mapped back; the mapping is its own inverse.
 */
static inline float
row_max(const float *row, int n)
{
	int32_t		max_key = INT32_MIN;
	int32_t		bits;
	float		max;

	for (int j = 0; j < n; j++)
	{
		int32_t		b;
		int32_t		key;

		memcpy(&b, &row[j], sizeof(b));
		key = b ^ ((b >> 31) & INT32_MAX);
		max_key = key > max_key ? key : max_key;
	}
	bits = max_key ^ ((max_key >> 31) & INT32_MAX);
	memcpy(&max, &bits, sizeof(max));
	return max;
}

#endif

/* In place over scores[rows, n]: softmax of every row. */
VEC_CLONES
static void
softmax_rows(real *restrict scores, int rows, int n)
{
	for (int i = 0; i < rows; i++)
	{
		real	   *restrict row = scores + (size_t) i * n;
		real		max = row_max(row, n);
		real		inv_sum;

		/* Subtracting the max keeps every exponent <= 0: no overflow. */
		for (int j = 0; j < n; j++)
			row[j] = vec_exp(row[j] - max);
		inv_sum = (real) (1.0 / sum_double(row, n));
		for (int j = 0; j < n; j++)
			row[j] *= inv_sum;
	}
}

/* dst[n] = keep ? src * scale : 0 (dropout of attention weights) */
VEC_CLONES
static void
apply_keep(real *restrict dst, const real *restrict src,
		   const uint8_t *restrict keep, real scale, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = keep[i] ? src[i] * scale : 0;
}

/*
 * In place over work[n,n] = d(dropped weights): back through dropout (keep
 * may be NULL), then through each row's softmax:
 *   dscore[i,j] = p[i,j] * (dp[i,j] - sum_k p[i,k] dp[i,k])
 */
VEC_CLONES
static void
softmax_dropout_backward(real *restrict work, const real *restrict probs,
						 const uint8_t *restrict keep, real scale, int n)
{
	for (int i = 0; i < n; i++)
	{
		real	   *restrict row = work + (size_t) i * n;
		const real *restrict p = probs + (size_t) i * n;
		real		dot;

		if (keep != NULL)
		{
			const uint8_t *restrict keep_row = keep + (size_t) i * n;

			for (int j = 0; j < n; j++)
				row[j] = keep_row[j] ? row[j] * scale : 0;
		}
		dot = (real) dot_double(p, row, n);
		for (int j = 0; j < n; j++)
			row[j] = p[j] * (row[j] - dot);
	}
}


/* ---- attention: tasks ---------------------------------------------------- */

typedef struct VarlenAttentionArgs
{
	real	   *out;
	real	   *probs;
	real	   *dropped;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *scratch;
	const real *dout;
	const real *probs_in;
	const real *q;
	const real *k;
	const real *v;
	int			ld;
	const uint8_t *keep;		/* NULL when there is no dropout */
	real		keep_scale;		/* 1/(1-p) for kept probabilities */
	real		score_scale;	/* 1/sqrt(head size) */
	const int32_t *seq_start;
	int			B;
	int			C;
	int			NH;
	int			HS;
	int			parts;
	size_t		part_start[VARLEN_MAX_PARTS + 1];	/* task runs, by (b, h) index */
} VarlenAttentionArgs;

/* Where task (b, h) reads and writes. */
typedef struct HeadTask
{
	int			len;
	size_t		row_offset;		/* first element of head h of the sequence in an [N, ld] tensor */
	size_t		out_offset;		/* the same in an [N, C] tensor */
	size_t		block;			/* first element of its probs block */
} HeadTask;

/* Visit tasks (b, h) with index in [begin, end) in order, calling fn on each. */
static void
for_each_task(const VarlenAttentionArgs *a, size_t begin, size_t end,
			  void (*fn) (const VarlenAttentionArgs *, const HeadTask *))
{
	size_t		b = begin / a->NH;
	size_t		block = 0;

	/* Blocks of the sequences before b. */
	for (size_t i = 0; i < b; i++)
		block += (size_t) a->NH * seq_len(a->seq_start, (int) i) * seq_len(a->seq_start, (int) i);
	for (size_t task = begin; task < end; task++)
	{
		HeadTask	t;
		size_t		h = task % a->NH;

		if (task > begin && h == 0)
		{
			block += (size_t) a->NH * seq_len(a->seq_start, (int) b) * seq_len(a->seq_start, (int) b);
			b++;
		}
		t.len = seq_len(a->seq_start, (int) b);
		if (t.len == 0)
			continue;
		t.row_offset = (size_t) a->seq_start[b] * a->ld + h * a->HS;
		t.out_offset = (size_t) a->seq_start[b] * a->C + h * a->HS;
		t.block = block + h * (size_t) t.len * t.len;
		fn(a, &t);
	}
}

/* Forward of one (sequence, head). */
static void
attention_forward_task(const VarlenAttentionArgs *a, const HeadTask *t)
{
	int			n = t->len;
	real	   *probs = a->probs + t->block;
	const real *weights = probs;

	/* scores[n,n] = q_h k_h^T / sqrt(HS); head slices have row stride ld */
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, a->HS,
			   a->score_scale, a->q + t->row_offset, a->ld,
			   a->k + t->row_offset, a->ld, 0, probs, n);
	softmax_rows(probs, n, n);
	if (a->keep != NULL)
	{
		real	   *dropped = a->dropped + t->block;

		apply_keep(dropped, probs, a->keep + t->block, a->keep_scale, (size_t) n * n);
		weights = dropped;
	}
	/* out_h[n,HS] = weights[n,n] @ v_h[n,HS] */
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, a->HS, n,
			   1, weights, n, a->v + t->row_offset, a->ld,
			   0, a->out + t->out_offset, a->C);
}

/* Backward of one (sequence, head). */
static void
attention_backward_task(const VarlenAttentionArgs *a, const HeadTask *t)
{
	int			n = t->len;
	const real *probs = a->probs_in + t->block;
	const uint8_t *keep = a->keep != NULL ? a->keep + t->block : NULL;
	const real *dout_h = a->dout + t->out_offset;
	real	   *work = a->scratch + t->block;

	if (a->dv != NULL)
	{
		const real *weights = probs;

		if (keep != NULL)
		{
			apply_keep(work, probs, keep, a->keep_scale, (size_t) n * n);
			weights = work;
		}
		/* dv_h[n,HS] += weights^T @ dout_h */
		cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, a->HS, n,
				   1, weights, n, dout_h, a->C, 1, a->dv + t->row_offset, a->ld);
	}
	if (a->dq == NULL && a->dk == NULL)
		return;

	/* dweights[n,n] = dout_h @ v_h^T, then back through dropout and softmax */
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, a->HS,
			   1, dout_h, a->C, a->v + t->row_offset, a->ld, 0, work, n);
	softmax_dropout_backward(work, probs, keep, a->keep_scale, n);

	/* The 1/sqrt(HS) of the scores is applied as the products' alpha. */
	if (a->dq != NULL)
		cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, a->HS, n,
				   a->score_scale, work, n, a->k + t->row_offset, a->ld,
				   1, a->dq + t->row_offset, a->ld);
	if (a->dk != NULL)
		cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, a->HS, n,
				   a->score_scale, work, n, a->q + t->row_offset, a->ld,
				   1, a->dk + t->row_offset, a->ld);
}

/* Forward of the task runs [begin, end). */
static void
attention_forward_range(void *arg, size_t begin, size_t end)
{
	VarlenAttentionArgs *a = arg;

	for (size_t part = begin; part < end; part++)
		for_each_task(a, a->part_start[part], a->part_start[part + 1],
					  attention_forward_task);
}

/* Backward of the task runs [begin, end). */
static void
attention_backward_range(void *arg, size_t begin, size_t end)
{
	VarlenAttentionArgs *a = arg;

	for (size_t part = begin; part < end; part++)
		for_each_task(a, a->part_start[part], a->part_start[part + 1],
					  attention_backward_task);
}

/*
 * Deal the B*NH tasks into contiguous runs of about equal cost, one per
 * engine thread: a task costs about len^2 * HS multiply-adds plus a fixed
 * overhead per product call.
 */
static void
split_tasks(VarlenAttentionArgs *a)
{
	size_t		tasks = (size_t) a->B * a->NH;
	int			parts = peft_threads_count();
	double		total = 0;
	double		done = 0;
	int			part = 1;

	if (parts > VARLEN_MAX_PARTS)
		parts = VARLEN_MAX_PARTS;
	if ((size_t) parts > tasks)
		parts = (int) (tasks > 0 ? tasks : 1);
	for (int b = 0; b < a->B; b++)
	{
		double		len = seq_len(a->seq_start, b);

		total += a->NH * (len * len * a->HS + 256.0);
	}
	a->parts = parts;
	a->part_start[0] = 0;
	for (size_t task = 0; task < tasks && part < parts; task++)
	{
		double		len = seq_len(a->seq_start, (int) (task / a->NH));

		done += len * len * a->HS + 256.0;
		/* Close run `part` once it holds its share of the total. */
		while (part < parts && done >= total * part / parts)
			a->part_start[part++] = task + 1;
	}
	while (part <= parts)
		a->part_start[part++] = tasks;
}

/* Fill the fields forward and backward share. */
static void
attention_args_init(VarlenAttentionArgs *a, const real *q, const real *k,
					const real *v, int ld, const uint8_t *keep, real p,
					const int32_t *seq_start, int B, int C, int NH)
{
	memset(a, 0, sizeof(*a));
	a->q = q;
	a->k = k;
	a->v = v;
	a->ld = ld;
	a->keep = p > 0 ? keep : NULL;
	a->keep_scale = dropout_keep_scale(p);
	a->seq_start = seq_start;
	a->B = B;
	a->C = C;
	a->NH = NH;
	a->HS = C / NH;
	a->score_scale = (real) (1.0 / sqrt((double) a->HS));
	split_tasks(a);
}

/* out[N,C], probs (packed blocks) = attention of each sequence over itself. */
void
varlen_attention_forward(real *out, real *probs, real *dropped,
						 const real *q, const real *k, const real *v, int ld,
						 const uint8_t *keep, real p,
						 const int32_t *seq_start, int B, int C, int NH)
{
	VarlenAttentionArgs args;

	if (B <= 0 || C <= 0 || NH <= 0 || C % NH != 0 || ld < C)
		return;
	attention_args_init(&args, q, k, v, ld, keep, p, seq_start, B, C, NH);
	args.out = out;
	args.probs = probs;
	args.dropped = dropped;
	parallel_for_serial_blas((size_t) args.parts, 1, attention_forward_range, &args);
}

/* dq, dk, dv [N, ld] += attention gradients given dout[N,C]. */
void
varlen_attention_backward(real *dq, real *dk, real *dv, real *scratch,
						  const real *dout, const real *probs,
						  const real *q, const real *k, const real *v, int ld,
						  const uint8_t *keep, real p,
						  const int32_t *seq_start, int B, int C, int NH)
{
	VarlenAttentionArgs args;

	if (B <= 0 || C <= 0 || NH <= 0 || C % NH != 0 || ld < C)
		return;
	if (dq == NULL && dk == NULL && dv == NULL)
		return;
	attention_args_init(&args, q, k, v, ld, keep, p, seq_start, B, C, NH);
	args.dq = dq;
	args.dk = dk;
	args.dv = dv;
	args.scratch = scratch;
	args.dout = dout;
	args.probs_in = probs;
	parallel_for_serial_blas((size_t) args.parts, 1, attention_backward_range, &args);
}


/* ---- pooling and scattering ---------------------------------------------- */

typedef struct VarlenPoolArgs
{
	real	   *out;			/* forward: out[B,C]; backward: dinp[N,C] */
	const real *inp;			/* forward: inp[N,C]; backward: dout[B,C] */
	const int32_t *seq_start;
	int			C;
} VarlenPoolArgs;

/* Mean of the rows of sequences [begin, end), summed in double in row order. */
static void
mean_pool_range(void *arg, size_t begin, size_t end)
{
	VarlenPoolArgs *a = arg;
	int			C = a->C;

	for (size_t b = begin; b < end; b++)
	{
		int			first = a->seq_start[b];
		int			len = seq_len(a->seq_start, (int) b);
		real	   *o = a->out + b * C;

		/* No real token (an empty row): zeros, as sentence-transformers. */
		if (len == 0)
		{
			memset(o, 0, (size_t) C * sizeof(real));
			continue;
		}
		for (int c0 = 0; c0 < C; c0 += POOL_COLUMN_BLOCK)
		{
			int			width = C - c0 < POOL_COLUMN_BLOCK ? C - c0 : POOL_COLUMN_BLOCK;
			double		acc[POOL_COLUMN_BLOCK] = {0};

			for (int n = first; n < first + len; n++)
			{
				const real *x = a->inp + (size_t) n * C + c0;

				for (int c = 0; c < width; c++)
					acc[c] += (double) x[c];
			}
			for (int c = 0; c < width; c++)
				o[c0 + c] = (real) (acc[c] / len);
		}
	}
}

/* out[B,C] = mean of each sequence's rows. */
void
varlen_mean_pool_forward(real *out, const real *inp, const int32_t *seq_start,
						 int B, int C)
{
	VarlenPoolArgs args = {out, inp, seq_start, C};

	if (B <= 0 || C <= 0)
		return;
	peft_parallel_for((size_t) B, 1, mean_pool_range, &args);
}

/* dinp rows of sequences [begin, end) += dout[b] / len. */
static void
mean_pool_backward_range(void *arg, size_t begin, size_t end)
{
	VarlenPoolArgs *a = arg;
	int			C = a->C;

	for (size_t b = begin; b < end; b++)
	{
		int			len = seq_len(a->seq_start, (int) b);
		const real *g = a->inp + b * C;
		real		inv;

		if (len == 0)
			continue;
		inv = (real) (1.0 / len);
		for (int n = a->seq_start[b]; n < a->seq_start[b + 1]; n++)
		{
			real	   *dx = a->out + (size_t) n * C;

			for (int c = 0; c < C; c++)
				dx[c] += g[c] * inv;
		}
	}
}

/* dinp[N,C] += dout[b,:] / len_b on the rows of sequence b. */
void
varlen_mean_pool_backward(real *dinp, const real *dout, const int32_t *seq_start,
						  int B, int C)
{
	VarlenPoolArgs args = {dinp, dout, seq_start, C};

	if (dinp == NULL || B <= 0 || C <= 0)
		return;
	peft_parallel_for((size_t) B, 1, mean_pool_backward_range, &args);
}

/* out[B,C] = first row of each sequence (zeros when empty). */
void
varlen_cls_pool_forward(real *out, const real *inp, const int32_t *seq_start,
						int B, int C)
{
	for (int b = 0; b < B; b++)
	{
		real	   *o = out + (size_t) b * C;

		if (seq_len(seq_start, b) == 0)
			memset(o, 0, (size_t) C * sizeof(real));
		else
			memcpy(o, inp + (size_t) seq_start[b] * C, (size_t) C * sizeof(real));
	}
}

/* dinp[first row of b,:] += dout[b,:]. */
void
varlen_cls_pool_backward(real *dinp, const real *dout, const int32_t *seq_start,
						 int B, int C)
{
	if (dinp == NULL)
		return;
	for (int b = 0; b < B; b++)
	{
		real	   *dx = dinp + (size_t) seq_start[b] * C;
		const real *g = dout + (size_t) b * C;

		if (seq_len(seq_start, b) == 0)
			continue;
		for (int c = 0; c < C; c++)
			dx[c] += g[c];
	}
}

/* out[BT,C]: packed rows at their padded places, zeros elsewhere. */
void
varlen_scatter_rows(real *out, const real *packed, const int32_t *rows,
					int N, int BT, int C)
{
	if (BT <= 0 || C <= 0)
		return;
	memset(out, 0, (size_t) BT * C * sizeof(real));
	for (int n = 0; n < N; n++)
		if (rows[n] >= 0 && rows[n] < BT)	/* a virtual token has no padded place */
			memcpy(out + (size_t) rows[n] * C, packed + (size_t) n * C,
				   (size_t) C * sizeof(real));
}
