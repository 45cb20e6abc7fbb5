/*
 * gelu.cu - exact (erf) GELU forward and backward, the GPU twins of
 * gelu_forward/gelu_backward in src/engine/ops_cpu.c.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define INV_SQRT_2PI 0.39894228029898381711f

/* out[n] = x * Phi(x), grid-stride; normcdff is erfc-based, so accurate for x << 0. */
__global__ void
gelu_forward_kernel(float *out, const float *inp, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		float		x = inp[i];

		out[i] = x * normcdff(x);
	}
}

/* dinp[n] += dout * (Phi(x) + x phi(x)), grid-stride. */
__global__ void
gelu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		float		x = inp[i];
		float		gauss = expf(-0.5f * x * x);
		float		dgelu = normcdff(x) + x * gauss * INV_SQRT_2PI;

		dinp[i] += dout[i] * dgelu;
	}
}

/* out[n] = gelu(inp[n]) (out may alias inp). */
extern "C" int
peft_cuda_gelu_forward(float *out, const float *inp, size_t n,
					   void *stream, char *msg, int msglen)
{
	if (n == 0)
		return 0;
	if (out == NULL || inp == NULL)
		return peft_cuda_fail(msg, msglen, "gelu_forward: NULL tensor");
	gelu_forward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(out, inp, n);
	return peft_cuda_check_launch("gelu_forward_kernel", msg, msglen);
}

/* dinp[n] += dout[n] * gelu'(inp[n]). */
extern "C" int
peft_cuda_gelu_backward(float *dinp, const float *inp, const float *dout,
						size_t n, void *stream, char *msg, int msglen)
{
	if (n == 0 || dinp == NULL)
		return 0;
	if (inp == NULL || dout == NULL)
		return peft_cuda_fail(msg, msglen, "gelu_backward: NULL tensor");
	gelu_backward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(dinp, inp, dout, n);
	return peft_cuda_check_launch("gelu_backward_kernel", msg, msglen);
}
