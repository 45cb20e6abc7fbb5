/*
 * layernorm.cu - LayerNorm over the last dimension, forward (saving mean
 * and rstd) and backward, the GPU twins of layernorm_forward/backward in
 * src/engine/ops/ops_cpu.c: biased variance, eps inside the square root, and
 * row sums in double as the CPU does, so the two agree to float rounding.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define WARP 32
#define ROWS_PER_BLOCK 8		/* one warp per row, 256 threads */
#define DPARAM_COLS 32			/* columns per dgamma/dbeta block */
#define DPARAM_ROWS 32			/* row lanes per dgamma/dbeta block */

/* Sum of x over the 32 lanes of a warp, result in every lane. */
__device__ __forceinline__ double
warp_sum(double x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, offset);
	return x;
}

/* out[N,C] = (x - mean) rstd gamma + beta; one warp per row, mean then squared deviations. */
__global__ void
layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp,
						 const float *gamma, const float *beta, int N, int C,
						 float eps)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *x;
	float	   *y;
	double		sum = 0;
	double		mu;
	float		m;
	float		s;

	/* row is uniform across the warp, so whole warps leave together. */
	if (row >= N)
		return;
	x = inp + (size_t) row * C;
	y = out + (size_t) row * C;
	for (int c = lane; c < C; c += WARP)
		sum += (double) x[c];
	mu = warp_sum(sum) / C;
	sum = 0;
	for (int c = lane; c < C; c += WARP)
	{
		double		d = (double) x[c] - mu;

		sum += d * d;
	}
	m = (float) mu;
	s = (float) (1.0 / sqrt(warp_sum(sum) / C + (double) eps));
	for (int c = lane; c < C; c += WARP)
		y[c] = (x[c] - m) * s * gamma[c] + beta[c];
	if (lane == 0)
	{
		if (mean != NULL)
			mean[row] = m;
		if (rstd != NULL)
			rstd[row] = s;
	}
}

/* dinp[N,C] += rstd (g - mean(g) - xhat mean(g xhat)), g = dout gamma; one warp per row. */
__global__ void
layernorm_dinp_kernel(float *dinp, const float *dout, const float *inp,
					  const float *gamma, const float *mean, const float *rstd,
					  int N, int C)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *x;
	const float *dy;
	float	   *dx;
	float		m;
	float		s;
	double		sum_g = 0;
	double		sum_gx = 0;
	float		mean_g;
	float		mean_gx;

	if (row >= N)
		return;
	x = inp + (size_t) row * C;
	dy = dout + (size_t) row * C;
	dx = dinp + (size_t) row * C;
	m = mean[row];
	s = rstd[row];
	for (int c = lane; c < C; c += WARP)
	{
		float		g = dy[c] * gamma[c];
		float		xhat = (x[c] - m) * s;

		sum_g += (double) g;
		sum_gx += (double) g * (double) xhat;
	}
	mean_g = (float) (warp_sum(sum_g) / C);
	mean_gx = (float) (warp_sum(sum_gx) / C);
	for (int c = lane; c < C; c += WARP)
	{
		float		g = dy[c] * gamma[c];
		float		xhat = (x[c] - m) * s;

		dx[c] += s * (g - mean_g - xhat * mean_gx);
	}
}

/*
 * dgamma[C] += sum_n dout xhat, dbeta[C] += sum_n dout: a block of
 * 32 columns x 32 row lanes (coalesced reads along a row), each lane
 * summing every 32nd row in double, then the lanes summed in a fixed
 * order, so the result does not depend on scheduling (no atomics).
 */
__global__ void
layernorm_dparams_kernel(float *dgamma, float *dbeta, const float *dout,
						 const float *inp, const float *mean, const float *rstd,
						 int N, int C)
{
	__shared__ double part_gamma[DPARAM_ROWS][DPARAM_COLS + 1];
	__shared__ double part_beta[DPARAM_ROWS][DPARAM_COLS + 1];
	int			tx = threadIdx.x;
	int			ty = threadIdx.y;
	int			c = blockIdx.x * DPARAM_COLS + tx;
	double		acc_gamma = 0;
	double		acc_beta = 0;

	if (c < C)
		for (int n = ty; n < N; n += DPARAM_ROWS)
		{
			size_t		i = (size_t) n * C + c;
			float		xhat = (inp[i] - mean[n]) * rstd[n];

			acc_gamma += (double) dout[i] * (double) xhat;
			acc_beta += (double) dout[i];
		}
	part_gamma[ty][tx] = acc_gamma;
	part_beta[ty][tx] = acc_beta;
	__syncthreads();
	if (ty == 0 && c < C)
	{
		for (int r = 1; r < DPARAM_ROWS; r++)
		{
			acc_gamma += part_gamma[r][tx];
			acc_beta += part_beta[r][tx];
		}
		if (dgamma != NULL)
			dgamma[c] += (float) acc_gamma;
		if (dbeta != NULL)
			dbeta[c] += (float) acc_beta;
	}
}

/* out[N,C] = layernorm(inp) * gamma + beta; saves mean[N], rstd[N] (either may be NULL). */
extern "C" int
peft_cuda_layernorm_forward(float *out, float *mean, float *rstd,
							const float *inp, const float *gamma,
							const float *beta, int N, int C, float eps,
							void *stream, char *msg, int msglen)
{
	unsigned int blocks;

	if (N < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "layernorm_forward: bad shape N=%d C=%d", N, C);
	if (N == 0 || C == 0)
		return 0;
	if (out == NULL || inp == NULL || gamma == NULL || beta == NULL)
		return peft_cuda_fail(msg, msglen, "layernorm_forward: NULL tensor");
	blocks = (unsigned int) ((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
	layernorm_forward_kernel<<<blocks, ROWS_PER_BLOCK * WARP, 0, (cudaStream_t) stream>>>
		(out, mean, rstd, inp, gamma, beta, N, C, eps);
	return peft_cuda_check_launch("layernorm_forward_kernel", msg, msglen);
}

/* dinp[N,C] += ...; dgamma[C] += ...; dbeta[C] += ... (each may be NULL). */
extern "C" int
peft_cuda_layernorm_backward(float *dinp, float *dgamma, float *dbeta,
							 const float *dout, const float *inp,
							 const float *gamma, const float *mean,
							 const float *rstd, int N, int C,
							 void *stream, char *msg, int msglen)
{
	cudaStream_t s = (cudaStream_t) stream;

	if (N < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "layernorm_backward: bad shape N=%d C=%d", N, C);
	if (N == 0 || C == 0)
		return 0;
	if (dout == NULL || inp == NULL || mean == NULL || rstd == NULL ||
		(dinp != NULL && gamma == NULL))
		return peft_cuda_fail(msg, msglen, "layernorm_backward: NULL tensor");
	if (dinp != NULL)
	{
		unsigned int blocks = (unsigned int) ((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);

		layernorm_dinp_kernel<<<blocks, ROWS_PER_BLOCK * WARP, 0, s>>>
			(dinp, dout, inp, gamma, mean, rstd, N, C);
		if (peft_cuda_check_launch("layernorm_dinp_kernel", msg, msglen) != 0)
			return -1;
	}
	if (dgamma != NULL || dbeta != NULL)
	{
		unsigned int blocks = (unsigned int) ((C + DPARAM_COLS - 1) / DPARAM_COLS);

		layernorm_dparams_kernel<<<blocks, dim3(DPARAM_COLS, DPARAM_ROWS), 0, s>>>
			(dgamma, dbeta, dout, inp, mean, rstd, N, C);
		if (peft_cuda_check_launch("layernorm_dparams_kernel", msg, msglen) != 0)
			return -1;
	}
	return 0;
}
