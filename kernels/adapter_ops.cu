/*
 * adapter_ops.cu - the per-column operations of the adapter methods:
 * scaling columns by a vector ((IA)^3, DoRA's magnitude), per-column dot
 * products (the gradients of those vectors and of biases), and the inverse
 * row norms of a matrix (DoRA's weight norm).  GPU twins of colscale,
 * coldot and row_inv_norms in src/engine/backend_cpu.c.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

#define WARP 32
#define COLUMNS_PER_BLOCK 32	/* coldot: a warp-wide tile of columns */
#define ROW_LANES 8				/* coldot: rows summed side by side per column */

/* dst[i,j] (=, or += when accumulate) alpha (vec[j] + offset) src[i,j], grid-stride. */
static __global__ void
colscale_kernel(float *dst, int ldd, const float *src, int lds, const float *vec,
				float offset, float alpha, bool accumulate, int N, int n)
{
	size_t		total = (size_t) N * n;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride)
	{
		int			i = (int) (k / n);
		int			j = (int) (k % n);
		float		v = alpha * ((vec ? vec[j] : 1.0f) + offset) * src[(size_t) i * lds + j];
		float	   *d = dst + (size_t) i * ldd + j;

		*d = accumulate ? *d + v : v;
	}
}

/*
 * dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j]: block (x) takes 32
 * columns; its ROW_LANES x 32 threads each sum every ROW_LANES-th row of
 * one column in double, then lane 0 of each column adds the partial sums
 * in a fixed order (deterministic, no atomics).
 */
static __global__ void
coldot_kernel(float *dvec, const float *a, int lda, const float *b, int ldb,
			  const float *scale, float alpha, int N, int n)
{
	__shared__ double partial[ROW_LANES][COLUMNS_PER_BLOCK];
	int			col = threadIdx.x;
	int			lane = threadIdx.y;
	int			j = blockIdx.x * COLUMNS_PER_BLOCK + col;
	double		sum = 0;

	if (j < n)
		for (int i = lane; i < N; i += ROW_LANES)
			sum += (double) a[(size_t) i * lda + j] * (b ? (double) b[(size_t) i * ldb + j] : 1.0);
	partial[lane][col] = sum;
	__syncthreads();
	if (lane == 0 && j < n)
	{
		double		total = 0;

		for (int k = 0; k < ROW_LANES; k++)
			total += partial[k][col];
		dvec[j] += (float) (alpha * (scale ? scale[j] : 1.0f) * total);
	}
}

/* inv[j] = 1 / ||W[j,:]|| (sum of squares in double), one warp per row. */
static __global__ void
row_inv_norms_kernel(float *inv, const float *W, int rows, int cols)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
	double		sum = 0;

	if (row >= rows)
		return;
	for (int c = lane; c < cols; c += WARP)
	{
		double		x = W[(size_t) row * cols + c];

		sum += x * x;
	}
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		sum += __shfl_xor_sync(0xffffffffu, sum, offset);
	if (lane == 0)
		inv[row] = (float) (1.0 / sqrt(sum));
}

/* dst (=/+=) alpha (vec + offset) src, column-wise. */
extern "C" int
peft_cuda_colscale(float *dst, int ldd, const float *src, int lds, const float *vec,
				   float offset, float alpha, int accumulate, int N, int n,
				   char *msg, int msglen)
{
	size_t		total = (size_t) N * n;

	if (N < 0 || n < 0 || ldd < n || lds < n)
		return peft_cuda_fail(msg, msglen, "colscale: bad shape N=%d n=%d ldd=%d lds=%d",
							  N, n, ldd, lds);
	if (total == 0)
		return 0;
	if (dst == NULL || src == NULL)
		return peft_cuda_fail(msg, msglen, "colscale: NULL tensor");
	colscale_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(
		dst, ldd, src, lds, vec, offset, alpha, accumulate != 0, N, n);
	return peft_cuda_check_launch("colscale_kernel", msg, msglen);
}

/* dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j] (b, scale may be NULL). */
extern "C" int
peft_cuda_coldot(float *dvec, const float *a, int lda, const float *b, int ldb,
				 const float *scale, float alpha, int N, int n, char *msg, int msglen)
{
	dim3		block(COLUMNS_PER_BLOCK, ROW_LANES);
	unsigned	blocks;

	if (N < 0 || n < 0 || lda < n || (b != NULL && ldb < n))
		return peft_cuda_fail(msg, msglen, "coldot: bad shape N=%d n=%d lda=%d ldb=%d",
							  N, n, lda, ldb);
	if (n == 0 || dvec == NULL)
		return 0;
	if (N > 0 && a == NULL)
		return peft_cuda_fail(msg, msglen, "coldot: NULL tensor");
	blocks = (unsigned) ((n + COLUMNS_PER_BLOCK - 1) / COLUMNS_PER_BLOCK);
	coldot_kernel<<<blocks, block>>>(dvec, a, lda, b, ldb, scale, alpha, N, n);
	return peft_cuda_check_launch("coldot_kernel", msg, msglen);
}

/* inv[j] = 1 / ||W[j,:]|| for rows x cols W. */
extern "C" int
peft_cuda_row_inv_norms(float *inv, const float *W, int rows, int cols, char *msg, int msglen)
{
	const int	warps = 8;

	if (rows < 0 || cols < 0)
		return peft_cuda_fail(msg, msglen, "row_inv_norms: bad shape %d x %d", rows, cols);
	if (rows == 0)
		return 0;
	if (inv == NULL || W == NULL)
		return peft_cuda_fail(msg, msglen, "row_inv_norms: NULL tensor");
	row_inv_norms_kernel<<<(unsigned) ((rows + warps - 1) / warps), warps * WARP>>>(
		inv, W, rows, cols);
	return peft_cuda_check_launch("row_inv_norms_kernel", msg, msglen);
}
