/*
 * adamw.cu - the optimiser step over the one contiguous parameter buffer,
 * and the gradient-norm pieces (sum of squares, scale) used for clipping:
 * the GPU twins of adamw_update, sum_squares and scale_inplace in
 * src/engine/ops_cpu.c.
 */
#include "cuda_ops.h"

#include <cmath>
#include <cuda_runtime.h>

#define SUMSQ_THREADS 256
#define SUMSQ_FINAL_THREADS 1024	/* >= PEFT_CUDA_SUMSQ_PARTIALS */

static_assert(SUMSQ_FINAL_THREADS >= PEFT_CUDA_SUMSQ_PARTIALS,
			  "the final reduction reads one partial per thread");

/*
 * One AdamW step on param/grad/m/v[n], grid-stride; the step scalars come
 * from the host, computed in double as the CPU does.
 */
__global__ void
adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
			 float decay, float beta1, float beta2, float eps,
			 float step_size, float bc2_sqrt)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		float		g = grad[i];
		float		mi = beta1 * m[i] + (1.0f - beta1) * g;
		float		vi = beta2 * v[i] + (1.0f - beta2) * g * g;
		float		denom = sqrtf(vi) / bc2_sqrt + eps;

		m[i] = mi;
		v[i] = vi;
		param[i] = param[i] * decay - step_size * mi / denom;
	}
}

/* Tree-sum buf[0..THREADS) of one block into buf[0] (fixed order: deterministic). */
template <int THREADS>
__device__ void
block_sum(double *buf)
{
	for (int half = THREADS / 2; half > 0; half >>= 1)
	{
		__syncthreads();
		if ((int) threadIdx.x < half)
			buf[threadIdx.x] += buf[threadIdx.x + half];
	}
	__syncthreads();
}

/* partial[blockIdx.x] = sum of squares of the block's grid-stride share of g[n], in double. */
__global__ void
sum_squares_partial_kernel(double *partial, const float *g, size_t n)
{
	__shared__ double buf[SUMSQ_THREADS];
	size_t		stride = (size_t) gridDim.x * blockDim.x;
	double		acc = 0;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		double		x = (double) g[i];

		acc += x * x;
	}
	buf[threadIdx.x] = acc;
	block_sum<SUMSQ_THREADS>(buf);
	if (threadIdx.x == 0)
		partial[blockIdx.x] = buf[0];
}

/* *result = sum of partial[count] (count <= SUMSQ_FINAL_THREADS), one block. */
__global__ void
sum_squares_final_kernel(double *result, const double *partial, int count)
{
	__shared__ double buf[SUMSQ_FINAL_THREADS];

	buf[threadIdx.x] = (int) threadIdx.x < count ? partial[threadIdx.x] : 0.0;
	block_sum<SUMSQ_FINAL_THREADS>(buf);
	if (threadIdx.x == 0)
		*result = buf[0];
}

/* g[n] *= s, grid-stride. */
__global__ void
scale_kernel(float *g, float s, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		g[i] *= s;
}

/* One AdamW step over param/grad/m/v[n] (t is 1-based; t < 1 counts as 1). */
extern "C" int
peft_cuda_adamw_update(float *param, const float *grad, float *m, float *v,
					   size_t n, float lr, float beta1, float beta2, float eps,
					   float weight_decay, int t, void *stream,
					   char *msg, int msglen)
{
	float		decay;
	float		step_size;
	float		bc2_sqrt;

	if (n == 0)
		return 0;
	if (param == NULL || grad == NULL || m == NULL || v == NULL)
		return peft_cuda_fail(msg, msglen, "adamw_update: NULL tensor");
	if (t < 1)
		t = 1;
	/* Scalars in double, then rounded once, exactly as adamw_update. */
	decay = (float) (1.0 - (double) lr * (double) weight_decay);
	step_size = (float) ((double) lr / (1.0 - pow((double) beta1, t)));
	bc2_sqrt = (float) sqrt(1.0 - pow((double) beta2, t));
	adamw_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(param, grad, m, v, n, decay, beta1, beta2, eps,
								 step_size, bc2_sqrt);
	return peft_cuda_check_launch("adamw_kernel", msg, msglen);
}

/* *result = sum of squares of g[n] in double; partial is PEFT_CUDA_SUMSQ_PARTIALS doubles of scratch. */
extern "C" int
peft_cuda_sum_squares(double *result, double *partial, const float *g, size_t n,
					  void *stream, char *msg, int msglen)
{
	cudaStream_t s = (cudaStream_t) stream;
	unsigned int blocks;
	cudaError_t err;

	if (result == NULL || (n > 0 && (partial == NULL || g == NULL)))
		return peft_cuda_fail(msg, msglen, "sum_squares: NULL tensor");
	if (n == 0)
	{
		err = cudaMemsetAsync(result, 0, sizeof(double), s);
		if (err != cudaSuccess)
			return peft_cuda_fail(msg, msglen, "sum_squares memset: %s",
								  cudaGetErrorString(err));
		return 0;
	}
	/* The block count depends on n only, so the summation order does too. */
	blocks = (unsigned int) ((n + SUMSQ_THREADS - 1) / SUMSQ_THREADS);
	if (blocks > PEFT_CUDA_SUMSQ_PARTIALS)
		blocks = PEFT_CUDA_SUMSQ_PARTIALS;
	sum_squares_partial_kernel<<<blocks, SUMSQ_THREADS, 0, s>>>(partial, g, n);
	if (peft_cuda_check_launch("sum_squares_partial_kernel", msg, msglen) != 0)
		return -1;
	sum_squares_final_kernel<<<1, SUMSQ_FINAL_THREADS, 0, s>>>(result, partial, (int) blocks);
	return peft_cuda_check_launch("sum_squares_final_kernel", msg, msglen);
}

/* g[n] *= s. */
extern "C" int
peft_cuda_scale_inplace(float *g, float s, size_t n, void *stream,
						char *msg, int msglen)
{
	if (n == 0)
		return 0;
	if (g == NULL)
		return peft_cuda_fail(msg, msglen, "scale_inplace: NULL tensor");
	scale_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(g, s, n);
	return peft_cuda_check_launch("scale_kernel", msg, msglen);
}
