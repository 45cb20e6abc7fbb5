/*
 * mse.cu - mean squared error of a regression head, the GPU twin of
 * mse_forward/backward in src/engine/ops_cpu.c.  The forward leaves the
 * B squared errors on the device; the host sums them in double and divides
 * by B, as mse_forward does (B is a batch, a handful of values, not worth a
 * device reduction and a second scalar read-back).
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

/* sq[b] = (pred[b] - target[b])^2, the difference and square in double as mse_forward. */
static __global__ void
mse_forward_kernel(float *sq, const float *pred, const float *target, int B)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t b = (size_t) blockIdx.x * blockDim.x + threadIdx.x; b < (size_t) B; b += stride)
	{
		double		d = (double) pred[b] - (double) target[b];

		sq[b] = (float) (d * d);
	}
}

/* dpred[b] += (pred[b] - target[b]) * scale, in float as mse_backward. */
static __global__ void
mse_backward_kernel(float *dpred, const float *pred, const float *target,
					float scale, int B)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t b = (size_t) blockIdx.x * blockDim.x + threadIdx.x; b < (size_t) B; b += stride)
		dpred[b] += (pred[b] - target[b]) * scale;
}

/* sq[B] = (pred - target)^2; the mean loss of mse_forward is (float) (sum in double of sq / B). */
extern "C" int
peft_cuda_mse_forward(float *sq, const float *pred, const float *target, int B,
					  char *msg, int msglen)
{
	if (B < 0)
		return peft_cuda_fail(msg, msglen, "mse_forward: bad shape B=%d", B);
	if (B == 0)
		return 0;
	if (sq == NULL || pred == NULL || target == NULL)
		return peft_cuda_fail(msg, msglen, "mse_forward: NULL tensor");
	mse_forward_kernel<<<peft_cuda_grid((size_t) B, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>
		(sq, pred, target, B);
	return peft_cuda_check_launch("mse_forward_kernel", msg, msglen);
}

/* dpred[B] += 2 (pred - target) * dloss / B (dpred NULL is a no-op). */
extern "C" int
peft_cuda_mse_backward(float *dpred, const float *pred, const float *target,
					   float dloss, int B, char *msg, int msglen)
{
	float		scale;

	if (B < 0)
		return peft_cuda_fail(msg, msglen, "mse_backward: bad shape B=%d", B);
	if (B == 0 || dpred == NULL)
		return 0;
	if (pred == NULL || target == NULL)
		return peft_cuda_fail(msg, msglen, "mse_backward: NULL tensor");
	/* The same float expression as mse_backward, so the factor is bit-identical. */
	scale = 2 * dloss / (float) B;
	mse_backward_kernel<<<peft_cuda_grid((size_t) B, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>
		(dpred, pred, target, scale, B);
	return peft_cuda_check_launch("mse_backward_kernel", msg, msglen);
}
