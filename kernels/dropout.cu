/*
 * dropout.cu - apply a host-drawn keep mask (dropout_mask in ops_cpu.c, so
 * CPU and GPU runs drop the same elements) forward and backward.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

/* 1/(1-p) computed in double then rounded once, as dropout_scale in ops_cpu.c. */
static float
dropout_scale(float p)
{
	if (p >= 1.0f)
		return 0.0f;
	return (float) (1.0 / (1.0 - (double) p));
}

/* out[n] = keep ? inp * scale : 0, grid-stride (out may alias inp). */
__global__ void
dropout_forward_kernel(float *out, const float *inp, const uint8_t *keep,
					   float scale, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		out[i] = keep[i] ? inp[i] * scale : 0.0f;
}

/* dinp[n] += keep ? dout * scale : 0, grid-stride; keep NULL keeps all (scale 1). */
__global__ void
dropout_backward_kernel(float *dinp, const float *dout, const uint8_t *keep,
						float scale, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		dinp[i] += (keep == NULL || keep[i]) ? dout[i] * scale : 0.0f;
}

/* out[n] = inp * keep / (1-p) (p <= 0 or keep NULL copies). */
extern "C" int
peft_cuda_dropout_forward(float *out, const float *inp, const uint8_t *keep,
						  float p, size_t n, void *stream, char *msg, int msglen)
{
	cudaError_t err;

	if (n == 0)
		return 0;
	if (out == NULL || inp == NULL)
		return peft_cuda_fail(msg, msglen, "dropout_forward: NULL tensor");
	if (p <= 0.0f || keep == NULL)
	{
		if (out == inp)
			return 0;
		err = cudaMemcpyAsync(out, inp, n * sizeof(float),
							  cudaMemcpyDeviceToDevice, (cudaStream_t) stream);
		if (err != cudaSuccess)
			return peft_cuda_fail(msg, msglen, "dropout_forward copy: %s",
								  cudaGetErrorString(err));
		return 0;
	}
	dropout_forward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(out, inp, keep, dropout_scale(p), n);
	return peft_cuda_check_launch("dropout_forward_kernel", msg, msglen);
}

/* dinp[n] += dout * keep / (1-p) (p <= 0 or keep NULL: dinp += dout). */
extern "C" int
peft_cuda_dropout_backward(float *dinp, const float *dout, const uint8_t *keep,
						   float p, size_t n, void *stream, char *msg, int msglen)
{
	float		scale = 1.0f;

	if (n == 0 || dinp == NULL)
		return 0;
	if (dout == NULL)
		return peft_cuda_fail(msg, msglen, "dropout_backward: NULL dout");
	if (p <= 0.0f || keep == NULL)
		keep = NULL;			/* plain accumulation, as the CPU */
	else
		scale = dropout_scale(p);
	dropout_backward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(dinp, dout, keep, scale, n);
	return peft_cuda_check_launch("dropout_backward_kernel", msg, msglen);
}
