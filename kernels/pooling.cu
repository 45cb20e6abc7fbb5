/*
 * pooling.cu - sentence pooling of packed batches (mean of each sequence's
 * rows, or its first row), L2 normalisation of the pooled rows, and the
 * scatter of packed rows back to the padded [B, T] layout: the GPU twins of
 * varlen_mean_pool_*, varlen_cls_pool_*, varlen_scatter_rows
 * (src/engine/ops/ops_varlen.c) and l2norm_forward (src/engine/ops/ops_cpu.c).
 *
 * Sequence b is rows [seq_start[b], seq_start[b+1]) of an [N, C] tensor,
 * seq_start being a device array; a sequence may be empty.  Pooling gives
 * one thread per (sequence, column): a warp reads consecutive columns of a
 * row (coalesced), each thread walks its sequence's rows in order, so sums
 * are in the CPU's order and no two threads write the same element.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define WARP 32
#define ROWS_PER_BLOCK 8		/* l2norm: one warp per row, 256 threads */

/* Smallest norm l2norm divides by, as L2NORM_EPS in ops_cpu.c. */
#define L2NORM_EPS 1e-12

/* out[b,c] = mean over the rows of sequence b of inp[:, c], summed in double in row order. */
static __global__ void
mean_pool_forward_kernel(float *out, const float *inp, const int32_t *seq_start,
						 int B, int C)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b];
		int			len = seq_start[b + 1] - first;
		double		acc = 0;

		/* No real token (an empty sequence): zeros, as the CPU. */
		if (len <= 0)
		{
			out[i] = 0.0f;
			continue;
		}
		for (int n = first; n < first + len; n++)
			acc += (double) inp[(size_t) n * C + c];
		out[i] = (float) (acc / len);
	}
}

/* dinp[n,c] += dout[b,c] * (1/len_b) on every row n of sequence b. */
static __global__ void
mean_pool_backward_kernel(float *dinp, const float *dout, const int32_t *seq_start,
						  int B, int C)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b];
		int			len = seq_start[b + 1] - first;
		float		g;
		float		inv;

		if (len <= 0)
			continue;
		/* The reciprocal in double rounded once, then a float product, as the CPU. */
		inv = (float) (1.0 / len);
		g = dout[i];
		for (int n = first; n < first + len; n++)
			dinp[(size_t) n * C + c] += g * inv;
	}
}

/* out[b,c] = inp[first row of b, c], 0 for an empty sequence. */
static __global__ void
cls_pool_forward_kernel(float *out, const float *inp, const int32_t *seq_start,
						int B, int C)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b];

		out[i] = seq_start[b + 1] > first ? inp[(size_t) first * C + c] : 0.0f;
	}
}

/*
 * dinp[first row of b, c] += dout[b,c].  An empty sequence is skipped: its
 * seq_start is the first row of the next sequence, which is not its own.
 */
static __global__ void
cls_pool_backward_kernel(float *dinp, const float *dout, const int32_t *seq_start,
						 int B, int C)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b];

		if (seq_start[b + 1] > first)
			dinp[(size_t) first * C + c] += dout[i];
	}
}

/* Sum of x over the 32 lanes of a warp, result in every lane. */
static __device__ __forceinline__ double
warp_sum(double x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, offset);
	return x;
}

/*
 * out[b,:] = inp[b,:] / max(||inp[b,:]||, 1e-12), norm[b] = ||inp[b,:]||
 * (norm may be NULL), one warp per row: the squares summed in double, the
 * reciprocal taken in double and rounded once, as l2norm_forward.  Every
 * lane rescales the same columns it read, so out may alias inp.
 */
static __global__ void
l2norm_forward_kernel(float *out, float *norm, const float *inp, int B, int C)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *x;
	float	   *y;
	double		sum = 0;
	double		n;
	float		inv;

	/* row is uniform across the warp, so whole warps leave together. */
	if (row >= B)
		return;
	x = inp + (size_t) row * C;
	y = out + (size_t) row * C;
	for (int c = lane; c < C; c += WARP)
		sum += (double) x[c] * (double) x[c];
	n = sqrt(warp_sum(sum));
	inv = (float) (1.0 / (n > L2NORM_EPS ? n : L2NORM_EPS));
	for (int c = lane; c < C; c += WARP)
		y[c] = x[c] * inv;
	if (lane == 0 && norm != NULL)
		norm[row] = (float) n;
}

/* out row rows[n] = packed row n (out zeroed before); a row outside [0, BT) is skipped. */
static __global__ void
scatter_rows_kernel(float *out, const float *packed, const int32_t *rows,
					int N, int BT, int C)
{
	size_t		total = (size_t) N * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			n = (int) (i / C);
		int			c = (int) (i % C);
		int32_t		dst = rows[n];

		if (dst >= 0 && dst < BT)
			out[(size_t) dst * C + c] = packed[i];
	}
}

/* A pooling kernel over [B, C]: (out or dinp, inp or dout, seq_start, B, C). */
typedef void (*PoolKernel)(float *, const float *, const int32_t *, int, int);

/*
 * The pooling launchers' common part: check B and C ("what: bad shape"),
 * return 0 for an empty batch, or for dst NULL when the kernel accumulates
 * into it (a gradient nobody wants), fail on a NULL tensor ("what: NULL
 * tensor"), then launch kernel (named kernel_name in a launch error) with
 * one thread per (sequence, column).
 */
static int
launch_pool(const char *what, PoolKernel kernel, const char *kernel_name, bool accumulate,
			float *dst, const float *src, const int32_t *seq_start, int B, int C,
			char *msg, int msglen)
{
	size_t		total = (size_t) B * C;

	if (B < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "%s: bad shape B=%d C=%d", what, B, C);
	if (total == 0 || (accumulate && dst == NULL))
		return 0;
	if (dst == NULL || src == NULL || seq_start == NULL)
		return peft_cuda_fail(msg, msglen, "%s: NULL tensor", what);
	kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>
		(dst, src, seq_start, B, C);
	return peft_cuda_check_launch(kernel_name, msg, msglen);
}

/* out[B,C] = mean of each sequence's rows of inp[N,C] (out overwritten; zeros for an empty one). */
extern "C" int
peft_cuda_mean_pool_forward(float *out, const float *inp, const int32_t *seq_start,
							int B, int C, char *msg, int msglen)
{
	return launch_pool("mean_pool_forward", mean_pool_forward_kernel, "mean_pool_forward_kernel",
					   false, out, inp, seq_start, B, C, msg, msglen);
}

/* dinp[N,C] += dout[b,:] / len_b on every row of sequence b (dinp NULL is a no-op). */
extern "C" int
peft_cuda_mean_pool_backward(float *dinp, const float *dout, const int32_t *seq_start,
							 int B, int C, char *msg, int msglen)
{
	return launch_pool("mean_pool_backward", mean_pool_backward_kernel, "mean_pool_backward_kernel",
					   true, dinp, dout, seq_start, B, C, msg, msglen);
}

/* out[B,C] = each sequence's first row ([CLS]); zeros for an empty one. */
extern "C" int
peft_cuda_cls_pool_forward(float *out, const float *inp, const int32_t *seq_start,
						   int B, int C, char *msg, int msglen)
{
	return launch_pool("cls_pool_forward", cls_pool_forward_kernel, "cls_pool_forward_kernel",
					   false, out, inp, seq_start, B, C, msg, msglen);
}

/* dinp[first row of b,:] += dout[b,:] (dinp NULL is a no-op). */
extern "C" int
peft_cuda_cls_pool_backward(float *dinp, const float *dout, const int32_t *seq_start,
							int B, int C, char *msg, int msglen)
{
	return launch_pool("cls_pool_backward", cls_pool_backward_kernel, "cls_pool_backward_kernel",
					   true, dinp, dout, seq_start, B, C, msg, msglen);
}

/* out[B,C] = inp / max(||inp||_2, 1e-12), norm[B] = ||inp|| (norm may be NULL). */
extern "C" int
peft_cuda_l2norm_forward(float *out, float *norm, const float *inp, int B, int C,
						 char *msg, int msglen)
{
	unsigned int blocks;

	if (B < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "l2norm_forward: bad shape B=%d C=%d", B, C);
	if (B == 0)
		return 0;
	/* C == 0 still has norms to write (all 0), as the CPU. */
	if ((out == NULL && C > 0) || inp == NULL)
		return peft_cuda_fail(msg, msglen, "l2norm_forward: NULL tensor");
	blocks = (unsigned int) ((B + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
	l2norm_forward_kernel<<<blocks, ROWS_PER_BLOCK * WARP>>>(out, norm, inp, B, C);
	return peft_cuda_check_launch("l2norm_forward_kernel", msg, msglen);
}

/* out[BT,C]: zeros everywhere, then row rows[n] = packed row n. */
extern "C" int
peft_cuda_scatter_rows(float *out, const float *packed, const int32_t *rows,
					   int N, int BT, int C, char *msg, int msglen)
{
	cudaError_t err;
	size_t		total = (size_t) N * C;

	if (N < 0 || BT < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "scatter_rows: bad shape N=%d BT=%d C=%d",
							  N, BT, C);
	if (BT == 0 || C == 0)
		return 0;
	if (out == NULL || (N > 0 && (packed == NULL || rows == NULL)))
		return peft_cuda_fail(msg, msglen, "scatter_rows: NULL tensor");
	/* The padded rows are the ones no packed row lands on: clear all first. */
	err = cudaMemsetAsync(out, 0, (size_t) BT * C * sizeof(float), 0);
	if (err != cudaSuccess)
		return peft_cuda_fail(msg, msglen, "scatter_rows memset: %s",
							  cudaGetErrorString(err));
	if (N == 0)
		return 0;
	scatter_rows_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>
		(out, packed, rows, N, BT, C);
	return peft_cuda_check_launch("scatter_rows_kernel", msg, msglen);
}
