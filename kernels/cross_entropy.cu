/*
 * cross_entropy.cu - softmax cross-entropy over integer labels, forward
 * (probs and per-row loss) and backward, the GPU twins of
 * cross_entropy_forward/backward in src/engine/ops/ops_cpu.c (row sums and
 * logs in double, as there).
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define WARP 32
#define ROWS_PER_BLOCK 8		/* one warp per row, 256 threads */

/*
 * probs[B,K] = softmax(logits) and loss[B] = log_sum - (z[label] - max),
 * one warp per row; the max is subtracted so exp never overflows.
 */
__global__ void
cross_entropy_forward_kernel(float *probs, float *loss, const float *logits,
							 const int32_t *labels, int B, int K)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *z;
	float		max = -INFINITY;
	double		sum = 0;
	double		log_sum;
	int32_t		label;

	/* row is uniform across the warp, so whole warps leave together. */
	if (row >= B)
		return;
	z = logits + (size_t) row * K;
	for (int k = lane; k < K; k += WARP)
		max = fmaxf(max, z[k]);
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, offset));
	for (int k = lane; k < K; k += WARP)
		sum += exp((double) z[k] - (double) max);
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		sum += __shfl_xor_sync(0xffffffffu, sum, offset);
	log_sum = log(sum);
	if (probs != NULL)
		for (int k = lane; k < K; k += WARP)
			probs[(size_t) row * K + k] =
				(float) exp((double) z[k] - (double) max - log_sum);
	if (lane == 0)
	{
		label = labels[row];
		/* A label outside [0, K) adds no loss rather than reading out of bounds. */
		loss[row] = (label >= 0 && label < K)
			? (float) (log_sum - ((double) z[label] - (double) max)) : 0.0f;
	}
}

/* dlogits[B,K] += (probs - onehot(labels)) * scale, grid-stride over B*K. */
__global__ void
cross_entropy_backward_kernel(float *dlogits, const float *probs,
							  const int32_t *labels, float scale, int K,
							  size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		size_t		b = i / (size_t) K;
		int			k = (int) (i - b * (size_t) K);

		dlogits[i] += (probs[i] - (k == labels[b] ? 1.0f : 0.0f)) * scale;
	}
}

/* probs[B,K] (may be NULL) = softmax(logits[B,K]); loss[B] = per-row cross-entropy. */
extern "C" int
peft_cuda_cross_entropy_forward(float *probs, float *loss, const float *logits,
								const int32_t *labels, int B, int K,
								void *stream, char *msg, int msglen)
{
	unsigned int blocks;

	if (B < 0 || K < 0)
		return peft_cuda_fail(msg, msglen, "cross_entropy_forward: bad shape B=%d K=%d", B, K);
	if (B == 0 || K == 0)
		return 0;
	if (loss == NULL || logits == NULL || labels == NULL)
		return peft_cuda_fail(msg, msglen, "cross_entropy_forward: NULL tensor");
	blocks = (unsigned int) ((B + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
	cross_entropy_forward_kernel<<<blocks, ROWS_PER_BLOCK * WARP, 0,
		(cudaStream_t) stream>>>(probs, loss, logits, labels, B, K);
	return peft_cuda_check_launch("cross_entropy_forward_kernel", msg, msglen);
}

/* dlogits[B,K] += (probs - onehot(labels)) * dloss / B (dlogits may be NULL). */
extern "C" int
peft_cuda_cross_entropy_backward(float *dlogits, const float *probs,
								 const int32_t *labels, float dloss,
								 int B, int K, void *stream,
								 char *msg, int msglen)
{
	size_t		n;

	if (B < 0 || K < 0)
		return peft_cuda_fail(msg, msglen, "cross_entropy_backward: bad shape B=%d K=%d", B, K);
	if (dlogits == NULL || B == 0 || K == 0)
		return 0;
	if (probs == NULL || labels == NULL)
		return peft_cuda_fail(msg, msglen, "cross_entropy_backward: NULL tensor");
	n = (size_t) B * (size_t) K;
	/* dloss / B in float, the same rounding as the CPU's scale. */
	cross_entropy_backward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(dlogits, probs, labels, dloss / (float) B, K, n);
	return peft_cuda_check_launch("cross_entropy_backward_kernel", msg, msglen);
}
