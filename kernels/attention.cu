/*
 * attention.cu - packed (varlen) multi-head self-attention on the GPU, the
 * same math and layouts as varlen_attention_forward/backward in
 * src/engine/ops/ops_varlen.c (the reference these kernels are checked
 * against by test/gpu/test_gpu_attention.c).
 *
 * This is the straightforward version: one thread block per (packed row,
 * head), probabilities materialised in the packed probs blocks.  BERT's
 * sequences are short (<= 512), so the len x len blocks are small.  A
 * flash-style kernel (tiles of queries x keys in shared memory, online
 * softmax, probs never stored, recomputed in the backward) would replace
 * attention_forward_kernel and the two backward kernels, behind the same
 * C interface.
 *
 * Attention dropout uses a host-drawn keep mask in the probs layout
 * (dropout_mask in ops_cpu.c, so CPU and GPU drop the same weights): probs
 * always keeps the pre-dropout softmax, and the dropped weights
 * probs * keep / (1-p) are recomputed from probs and keep wherever they are
 * needed (the output product, dv), the same float product as the CPU's.
 */
#include "cuda_attention.h"

#include <cmath>
#include <cstdio>
#include <cuda_runtime.h>

/* Threads per block: a warp multiple; rows of length <= 512 need <= 4 passes. */
#define ATTENTION_THREADS 128

/* Largest head size the shared-memory row buffers accept (48 KiB default). */
#define ATTENTION_MAX_HS 8192

/* ---- device helpers ------------------------------------------------------ */

/* Max of val over the warp, broadcast to every lane. */
__device__ inline float
warp_reduce_max(float val)
{
	for (int offset = 16; offset > 0; offset >>= 1)
		val = fmaxf(val, __shfl_xor_sync(0xffffffffu, val, offset));
	return val;
}

/* Sum of val over the warp, broadcast to every lane. */
__device__ inline float
warp_reduce_sum(float val)
{
	for (int offset = 16; offset > 0; offset >>= 1)
		val += __shfl_xor_sync(0xffffffffu, val, offset);
	return val;
}

/*
 * Max (is_max) or sum of val over the block, returned to every thread.
 * blockDim.x must be a multiple of 32; scratch holds 32 floats.  The
 * leading __syncthreads lets callers reuse scratch back to back.
 */
__device__ inline float
block_reduce(float val, bool is_max, float *scratch)
{
	int			lane = threadIdx.x % 32;
	int			warp = threadIdx.x / 32;
	int			warps = blockDim.x / 32;

	val = is_max ? warp_reduce_max(val) : warp_reduce_sum(val);
	__syncthreads();
	if (lane == 0)
		scratch[warp] = val;
	__syncthreads();
	val = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
	return is_max ? warp_reduce_max(val) : warp_reduce_sum(val);
}

/* Where the (sequence, head) of a packed row reads and writes. */
struct RowPlace
{
	int			first;			/* packed row of the sequence's first token */
	int			len;			/* tokens in the sequence */
	size_t		block;			/* first element of its (b, h) probs block */
};

/*
 * Sequence of packed row n (the last b with seq_start[b] <= n, which skips
 * empty sequences) and its probs block for head h.  Every thread computes
 * it redundantly from cached reads: O(log B + B), small beside the row's
 * len * HS work; a flash kernel would take a host-computed prefix instead.
 */
__device__ inline RowPlace
row_place(const int32_t *seq_start, int B, int NH, int n, int h)
{
	RowPlace	place;
	int			lo = 0;
	int			hi = B - 1;
	size_t		before = 0;

	while (lo < hi)
	{
		int			mid = (lo + hi + 1) / 2;

		if (seq_start[mid] <= n)
			lo = mid;
		else
			hi = mid - 1;
	}
	for (int b = 0; b < lo; b++)
	{
		size_t		len = (size_t) (seq_start[b + 1] - seq_start[b]);

		before += len * len;
	}
	place.first = seq_start[lo];
	place.len = seq_start[lo + 1] - seq_start[lo];
	place.block = before * NH + (size_t) h * place.len * place.len;
	return place;
}

/* ---- kernels ------------------------------------------------------------- */

/*
 * Block (n, h): probs row i = n - first of block (b, h) = softmax over j of
 * q[n] . k[first + j] * scale, then out[n, h*HS : (h+1)*HS] = w @ v_h with
 * w the probs row, or with dropout (keep not NULL) the dropped row
 * w[j] = keep[j] ? probs[j] * keep_scale : 0, also stored in dropped when
 * that is not NULL.  Shared memory: q_h of row n (HS floats).
 */
static __global__ void
attention_forward_kernel(float *out, float *probs, float *dropped,
						 const float *q, const float *k, const float *v, int ld,
						 const uint8_t *keep, float keep_scale,
						 const int32_t *seq_start, int B, int C, int NH,
						 float scale)
{
	extern __shared__ float q_row[];
	__shared__ float reduce_scratch[32];
	int			n = blockIdx.x;
	int			h = blockIdx.y;
	int			HS = C / NH;
	RowPlace	place = row_place(seq_start, B, NH, n, h);
	int			len = place.len;
	size_t		row = place.block + (size_t) (n - place.first) * len;
	float	   *prow = probs + row;
	const uint8_t *keep_row = keep != NULL ? keep + row : NULL;
	const float *k_h = k + (size_t) place.first * ld + (size_t) h * HS;
	const float *v_h = v + (size_t) place.first * ld + (size_t) h * HS;
	float		max = -INFINITY;
	float		sum = 0.0f;
	float		inv_sum;

	for (int d = threadIdx.x; d < HS; d += blockDim.x)
		q_row[d] = q[(size_t) n * ld + (size_t) h * HS + d];
	__syncthreads();

	/* Scores go straight into the probs row, the softmax then runs in place. */
	for (int j = threadIdx.x; j < len; j += blockDim.x)
	{
		const float *kj = k_h + (size_t) j * ld;
		float		dot = 0.0f;

		for (int d = 0; d < HS; d++)
			dot += q_row[d] * kj[d];
		dot *= scale;
		prow[j] = dot;
		max = fmaxf(max, dot);
	}
	max = block_reduce(max, true, reduce_scratch);

	/* Subtracting the row max keeps every exponent <= 0: no overflow. */
	for (int j = threadIdx.x; j < len; j += blockDim.x)
	{
		float		e = expf(prow[j] - max);

		prow[j] = e;
		sum += e;
	}
	sum = block_reduce(sum, false, reduce_scratch);
	inv_sum = 1.0f / sum;
	for (int j = threadIdx.x; j < len; j += blockDim.x)
	{
		float		pj = prow[j] * inv_sum;

		prow[j] = pj;
		if (keep_row != NULL && dropped != NULL)
			dropped[row + j] = keep_row[j] ? pj * keep_scale : 0.0f;
	}
	/* Makes this block's global writes to prow visible to all its threads. */
	__syncthreads();

	for (int d = threadIdx.x; d < HS; d += blockDim.x)
	{
		float		acc = 0.0f;

		if (keep_row == NULL)
			for (int j = 0; j < len; j++)
				acc += prow[j] * v_h[(size_t) j * ld + d];
		else
			for (int j = 0; j < len; j++)
			{
				/* The dropped weight, recomputed: the same product as stored. */
				float		w = keep_row[j] ? prow[j] * keep_scale : 0.0f;

				acc += w * v_h[(size_t) j * ld + d];
			}
		out[(size_t) n * C + (size_t) h * HS + d] = acc;
	}
}

/*
 * Block (n, h), query row i = n - first: d(scores) row i into scratch,
 *   dS[i,j] = P[i,j] * (dP[i,j] - sum_k P[i,k] dP[i,k]),  dP[i,j] = dout_i . v_j
 * with dP first taken back through dropout when keep is not NULL
 * (dP[i,j] = keep[i,j] ? dP[i,j] * keep_scale : 0), as
 * softmax_dropout_backward in ops_varlen.c; then dq[n, head h] +=
 * scale * dS[i,:] @ k_h when dq is not NULL.
 * Shared memory: dout_h of row n (HS floats).
 */
static __global__ void
attention_backward_query_kernel(float *dq, float *scratch, const float *dout,
								const float *probs, const float *k,
								const float *v, int ld,
								const uint8_t *keep, float keep_scale,
								const int32_t *seq_start, int B, int C, int NH,
								float scale)
{
	extern __shared__ float dout_row[];
	__shared__ float reduce_scratch[32];
	int			n = blockIdx.x;
	int			h = blockIdx.y;
	int			HS = C / NH;
	RowPlace	place = row_place(seq_start, B, NH, n, h);
	int			len = place.len;
	size_t		row = place.block + (size_t) (n - place.first) * len;
	const float *prow = probs + row;
	const uint8_t *keep_row = keep != NULL ? keep + row : NULL;
	float	   *ds = scratch + row;
	const float *k_h = k + (size_t) place.first * ld + (size_t) h * HS;
	const float *v_h = v + (size_t) place.first * ld + (size_t) h * HS;
	float		pdp = 0.0f;

	for (int d = threadIdx.x; d < HS; d += blockDim.x)
		dout_row[d] = dout[(size_t) n * C + (size_t) h * HS + d];
	__syncthreads();

	for (int j = threadIdx.x; j < len; j += blockDim.x)
	{
		const float *vj = v_h + (size_t) j * ld;
		float		dp = 0.0f;

		for (int d = 0; d < HS; d++)
			dp += dout_row[d] * vj[d];
		/* Gradient of the dropped weight to the pre-dropout one. */
		if (keep_row != NULL)
			dp = keep_row[j] ? dp * keep_scale : 0.0f;
		ds[j] = dp;
		pdp += prow[j] * dp;
	}
	pdp = block_reduce(pdp, false, reduce_scratch);
	/* Each thread rewrites only the entries it wrote: no barrier needed here. */
	for (int j = threadIdx.x; j < len; j += blockDim.x)
		ds[j] = prow[j] * (ds[j] - pdp);
	if (dq == NULL)
		return;
	__syncthreads();

	for (int d = threadIdx.x; d < HS; d += blockDim.x)
	{
		float		acc = 0.0f;

		for (int j = 0; j < len; j++)
			acc += ds[j] * k_h[(size_t) j * ld + d];
		dq[(size_t) n * ld + (size_t) h * HS + d] += scale * acc;
	}
}

/*
 * Block (n, h), key row j = n - first: the column sums that a per-query
 * block could only produce with atomics, so the result is deterministic:
 *   dv[n, head h] += sum_i W[i,j] dout_i,  dk[n, head h] += scale * sum_i dS[i,j] q_i
 * where W is the weights the forward multiplied v by: P, or with dropout
 * the dropped P[i,j] * keep[i,j] * keep_scale, recomputed here from probs
 * and keep (dk only when dS was computed into scratch).
 */
static __global__ void
attention_backward_key_kernel(float *dk, float *dv, const float *scratch,
							  const float *dout, const float *probs,
							  const float *q, int ld,
							  const uint8_t *keep, float keep_scale,
							  const int32_t *seq_start, int B, int C, int NH,
							  float scale)
{
	int			n = blockIdx.x;
	int			h = blockIdx.y;
	int			HS = C / NH;
	RowPlace	place = row_place(seq_start, B, NH, n, h);
	int			len = place.len;
	int			j = n - place.first;
	const float *pcol = probs + place.block + j;
	const uint8_t *keep_col = keep != NULL ? keep + place.block + j : NULL;
	const float *dscol = scratch + place.block + j;
	const float *q_h = q + (size_t) place.first * ld + (size_t) h * HS;
	const float *dout_h = dout + (size_t) place.first * C + (size_t) h * HS;

	for (int d = threadIdx.x; d < HS; d += blockDim.x)
	{
		size_t		at = (size_t) n * ld + (size_t) h * HS + d;

		if (dv != NULL)
		{
			float		acc = 0.0f;

			if (keep_col == NULL)
				for (int i = 0; i < len; i++)
					acc += pcol[(size_t) i * len] * dout_h[(size_t) i * C + d];
			else
				for (int i = 0; i < len; i++)
				{
					size_t		at_i = (size_t) i * len;
					float		w = keep_col[at_i] ? pcol[at_i] * keep_scale : 0.0f;

					acc += w * dout_h[(size_t) i * C + d];
				}
			dv[at] += acc;
		}
		if (dk != NULL)
		{
			float		acc = 0.0f;

			for (int i = 0; i < len; i++)
				acc += dscol[(size_t) i * len] * q_h[(size_t) i * ld + d];
			dk[at] += scale * acc;
		}
	}
}

/* ---- launchers ----------------------------------------------------------- */

/* Check the shapes shared by forward and backward; 0 when they are valid. */
static int
check_shapes(int B, int N, int C, int NH, int ld, char *msg, int msglen)
{
	if (B < 0 || N < 0 || C <= 0 || NH <= 0 || C % NH != 0 || ld < C)
	{
		snprintf(msg, msglen,
				 "CUDA attention: bad shapes B=%d N=%d C=%d NH=%d ld=%d",
				 B, N, C, NH, ld);
		return -1;
	}
	if (C / NH > ATTENTION_MAX_HS || NH > 65535)
	{
		snprintf(msg, msglen,
				 "CUDA attention: head size %d or head count %d too large",
				 C / NH, NH);
		return -1;
	}
	return 0;
}

/* Turn a pending launch error into a message; 0 when there is none. */
static int
check_launch(const char *what, char *msg, int msglen)
{
	cudaError_t err = cudaGetLastError();

	if (err != cudaSuccess)
	{
		snprintf(msg, msglen, "%s: %s", what, cudaGetErrorString(err));
		return -1;
	}
	return 0;
}

/* 1/(1-p) computed in double then rounded once (0 when p >= 1), as dropout_scale in ops_cpu.c. */
static float
keep_scale_of(float p)
{
	if (p >= 1.0f)
		return 0.0f;
	return (float) (1.0 / (1.0 - (double) p));
}

/* Scale of the scores, the same float as the CPU reference computes. */
static float
score_scale(int C, int NH)
{
	return (float) (1.0 / sqrt((double) (C / NH)));
}

/* out[N,C], probs (and dropped with dropout) = attention of each packed sequence over itself. */
extern "C" int
peft_cuda_varlen_attention_forward(float *out, float *probs, float *dropped,
								   const float *q, const float *k,
								   const float *v, int ld,
								   const uint8_t *keep, float p,
								   const int32_t *seq_start, int B, int N,
								   int C, int NH, char *msg, int msglen)
{
	dim3		grid;
	size_t		shared;

	if (check_shapes(B, N, C, NH, ld, msg, msglen) != 0)
		return -1;
	/* As the CPU reference: no dropout unless p > 0 and a mask is given. */
	if (!(p > 0))
		keep = NULL;
	if (N > 0 && (out == NULL || probs == NULL || q == NULL || k == NULL ||
				  v == NULL || seq_start == NULL))
	{
		snprintf(msg, msglen, "CUDA attention forward: a required buffer is NULL");
		return -1;
	}
	if (B == 0 || N == 0)
		return 0;
	grid = dim3((unsigned) N, (unsigned) NH);
	shared = (size_t) (C / NH) * sizeof(float);
	attention_forward_kernel<<<grid, ATTENTION_THREADS, shared>>>(
		out, probs, dropped, q, k, v, ld, keep, keep_scale_of(p), seq_start,
		B, C, NH, score_scale(C, NH));
	return check_launch("attention_forward_kernel", msg, msglen);
}

/* dq, dk, dv [N, ld] += attention gradients given dout[N,C]. */
extern "C" int
peft_cuda_varlen_attention_backward(float *dq, float *dk, float *dv,
									float *scratch, const float *dout,
									const float *probs, const float *q,
									const float *k, const float *v, int ld,
									const uint8_t *keep, float p,
									const int32_t *seq_start, int B, int N,
									int C, int NH, char *msg, int msglen)
{
	dim3		grid;
	size_t		shared;
	float		scale;
	float		keep_scale;

	if (check_shapes(B, N, C, NH, ld, msg, msglen) != 0)
		return -1;
	if (!(p > 0))
		keep = NULL;
	if (B == 0 || N == 0 || (dq == NULL && dk == NULL && dv == NULL))
		return 0;
	/* scratch carries d(scores) from the query kernel to dk. */
	if (dout == NULL || probs == NULL || q == NULL || k == NULL || v == NULL ||
		seq_start == NULL || ((dq != NULL || dk != NULL) && scratch == NULL))
	{
		snprintf(msg, msglen, "CUDA attention backward: a required buffer is NULL");
		return -1;
	}
	grid = dim3((unsigned) N, (unsigned) NH);
	shared = (size_t) (C / NH) * sizeof(float);
	scale = score_scale(C, NH);
	keep_scale = keep_scale_of(p);
	/* d(scores) is needed by dq and dk; the key kernel runs after it on the stream. */
	if (dq != NULL || dk != NULL)
	{
		attention_backward_query_kernel<<<grid, ATTENTION_THREADS, shared>>>(
			dq, scratch, dout, probs, k, v, ld, keep, keep_scale, seq_start,
			B, C, NH, scale);
		if (check_launch("attention_backward_query_kernel", msg, msglen) != 0)
			return -1;
	}
	if (dk != NULL || dv != NULL)
	{
		/* One thread per head column: a warp multiple covering HS up to 1024 per pass. */
		int			threads = ((C / NH + 31) / 32) * 32;

		if (threads > 1024)
			threads = 1024;
		attention_backward_key_kernel<<<grid, threads>>>(
			dk, dv, scratch, dout, probs, q, ld, keep, keep_scale, seq_start,
			B, C, NH, scale);
		if (check_launch("attention_backward_key_kernel", msg, msglen) != 0)
			return -1;
	}
	return 0;
}
