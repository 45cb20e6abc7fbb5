/*
 * linear.cu - the element-wise pieces around the cuBLAS products of a
 * linear layer (gemm.cu): adding the bias to the product, the bias
 * gradient, and a plain sum of two tensors (residual connections).  The
 * GPU twins of the bias handling in linear_forward/backward and of
 * add_forward in src/engine/ops_cpu.c.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define DBIAS_COLS 32			/* columns per bias-gradient block (one warp wide) */
#define DBIAS_ROWS 32			/* row lanes per bias-gradient block */

/* out[n, o] += bias[o] over an [N, OUT] view with row stride ldo, grid-stride. */
static __global__ void
add_bias_kernel(float *out, int ldo, const float *bias, int N, int OUT)
{
	size_t		total = (size_t) N * OUT;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		size_t		n = i / OUT;
		int			o = (int) (i % OUT);

		out[n * ldo + o] += bias[o];
	}
}

/*
 * dbias[o] += sum_n dout[n, o]: a block of 32 columns x 32 row lanes
 * (a warp reads 32 consecutive columns of a row), each lane summing every
 * 32nd row in double, then the lanes summed in a fixed order by the first
 * row of threads.  No atomics, so the result is the same run to run.
 */
static __global__ void
bias_backward_kernel(float *dbias, const float *dout, int ldd, int N, int OUT)
{
	__shared__ double part[DBIAS_ROWS][DBIAS_COLS + 1];
	int			tx = threadIdx.x;
	int			ty = threadIdx.y;
	int			o = blockIdx.x * DBIAS_COLS + tx;
	double		acc = 0;

	if (o < OUT)
		for (int n = ty; n < N; n += DBIAS_ROWS)
			acc += (double) dout[(size_t) n * ldd + o];
	part[ty][tx] = acc;
	__syncthreads();
	if (ty == 0 && o < OUT)
	{
		for (int r = 1; r < DBIAS_ROWS; r++)
			acc += part[r][tx];
		dbias[o] += (float) acc;
	}
}

/* out[i] = a[i] + b[i], grid-stride; out may alias a or b (each i read, then written). */
static __global__ void
add_kernel(float *out, const float *a, const float *b, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		out[i] = a[i] + b[i];
}

/* out[n, o] += bias[o] for an [N, OUT] tensor with row stride ldo >= OUT. */
extern "C" int
peft_cuda_add_bias(float *out, int ldo, const float *bias, int N, int OUT,
				   char *msg, int msglen)
{
	size_t		total = (size_t) N * OUT;

	if (N < 0 || OUT < 0)
		return peft_cuda_fail(msg, msglen, "add_bias: bad shape N=%d OUT=%d", N, OUT);
	if (N == 0 || OUT == 0)
		return 0;
	if (ldo < OUT)
		return peft_cuda_fail(msg, msglen, "add_bias: ldo %d < OUT %d", ldo, OUT);
	if (out == NULL || bias == NULL)
		return peft_cuda_fail(msg, msglen, "add_bias: NULL tensor");
	add_bias_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>
		(out, ldo, bias, N, OUT);
	return peft_cuda_check_launch("add_bias_kernel", msg, msglen);
}

/* dbias[o] += sum_n dout[n, o] (row stride ldd >= OUT), deterministic; dbias NULL is a no-op. */
extern "C" int
peft_cuda_bias_backward(float *dbias, const float *dout, int ldd, int N, int OUT,
						char *msg, int msglen)
{
	unsigned int blocks;

	if (N < 0 || OUT < 0)
		return peft_cuda_fail(msg, msglen, "bias_backward: bad shape N=%d OUT=%d", N, OUT);
	if (N == 0 || OUT == 0 || dbias == NULL)
		return 0;
	if (ldd < OUT)
		return peft_cuda_fail(msg, msglen, "bias_backward: ldd %d < OUT %d", ldd, OUT);
	if (dout == NULL)
		return peft_cuda_fail(msg, msglen, "bias_backward: NULL dout");
	blocks = (unsigned int) ((OUT + DBIAS_COLS - 1) / DBIAS_COLS);
	bias_backward_kernel<<<blocks, dim3(DBIAS_COLS, DBIAS_ROWS)>>>(dbias, dout, ldd, N, OUT);
	return peft_cuda_check_launch("bias_backward_kernel", msg, msglen);
}

/* out[n] = a[n] + b[n] (out may alias a or b). */
extern "C" int
peft_cuda_add(float *out, const float *a, const float *b, size_t n,
			  char *msg, int msglen)
{
	if (n == 0)
		return 0;
	if (out == NULL || a == NULL || b == NULL)
		return peft_cuda_fail(msg, msglen, "add: NULL tensor");
	add_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(out, a, b, n);
	return peft_cuda_check_launch("add_kernel", msg, msglen);
}
