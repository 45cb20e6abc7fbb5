/*
 * decoder_ops.cu - RMSNorm, rotary position embeddings, SwiGLU and causal
 * grouped-query attention over a key/value cache on the GPU, the twins of
 * src/engine/ops/ops_decoder.c: the same layouts, row sums in double where the
 * CPU sums in double, RoPE's angles computed in float32 exactly as there
 * (and as transformers), so the two agree to float rounding
 * (test/gpu/test_gpu_decoder_ops.c).
 *
 * Attention is the straightforward kernel: one block per (query row,
 * head), the cached keys taken ATTENTION_CHUNK at a time with an online
 * softmax (running max and sum, the output accumulator rescaled when the
 * max rises), so a context of any length needs only q, the accumulator
 * and one chunk of scores in shared memory.  Decoding a single sequence
 * then runs only Hq blocks; splitting the keys over several blocks
 * (flash-decoding) is the step to take when that shows in a profile.
 */
#include "decoder_ops.h"
#include "cuda_ops.h"

#include <cmath>
#include <cuda_runtime.h>

#define WARP 32
#define RMS_ROWS_PER_BLOCK 8		/* one warp per row, 256 threads */
#define DWEIGHT_COLS 32				/* columns per dweight block */
#define DWEIGHT_ROWS 32				/* row lanes per dweight block */
#define ATTENTION_THREADS 128		/* four warps per (row, head) */
#define ATTENTION_CHUNK 128			/* keys scored per step: one per thread */
/* Largest head size: q and the accumulator in the default 48 KiB of shared memory. */
#define ATTENTION_MAX_D 4096

static_assert(ATTENTION_CHUNK == ATTENTION_THREADS,
			  "each thread holds one key's score of a chunk");

/* ---- device helpers ---------------------------------------------------------- */

/* Sum of x over the 32 lanes of a warp, result in every lane. */
__device__ __forceinline__ double
warp_sum_double(double x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, offset);
	return x;
}

/* Sum of x over the 32 lanes of a warp, result in every lane. */
__device__ __forceinline__ float
warp_sum_float(float x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, offset);
	return x;
}

/* Max of x over the 32 lanes of a warp, result in every lane. */
__device__ __forceinline__ float
warp_max_float(float x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
	return x;
}

/*
 * Max (is_max) or sum of x over the block, returned to every thread;
 * scratch holds one float per warp.  The leading __syncthreads lets a
 * caller reuse scratch back to back.
 */
__device__ float
block_reduce(float x, bool is_max, float *scratch)
{
	int			lane = threadIdx.x % WARP;
	int			warp = threadIdx.x / WARP;
	int			warps = blockDim.x / WARP;

	x = is_max ? warp_max_float(x) : warp_sum_float(x);
	__syncthreads();
	if (lane == 0)
		scratch[warp] = x;
	__syncthreads();
	x = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
	return is_max ? warp_max_float(x) : warp_sum_float(x);
}

/* ---- RMSNorm ------------------------------------------------------------------- */

/* out[N,C] = (x * rstd) * weight; one warp per row, mean of squares in double, as the CPU. */
__global__ void
rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight,
					   int N, int C, float eps)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * RMS_ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *x;
	float	   *y;
	double		sum = 0;
	float		s;

	/* row is uniform across the warp, so whole warps leave together */
	if (row >= N)
		return;
	x = inp + (size_t) row * C;
	y = out + (size_t) row * C;
	for (int c = lane; c < C; c += WARP)
		sum += (double) x[c] * (double) x[c];
	s = (float) (1.0 / sqrt(warp_sum_double(sum) / C + (double) eps));
	for (int c = lane; c < C; c += WARP)
		y[c] = __fmul_rn(__fmul_rn(x[c], s), weight[c]);
	if (lane == 0 && rstd != NULL)
		rstd[row] = s;
}

/* dinp[N,C] += rstd (g - xhat mean(g xhat)), g = dout weight, xhat = x rstd; one warp per row. */
__global__ void
rmsnorm_dinp_kernel(float *dinp, const float *dout, const float *inp, const float *weight,
					const float *rstd, int N, int C)
{
	int			lane = threadIdx.x % WARP;
	int			row = blockIdx.x * RMS_ROWS_PER_BLOCK + threadIdx.x / WARP;
	const float *x;
	const float *dy;
	float	   *dx;
	float		s;
	double		sum = 0;
	float		mean_gx;

	if (row >= N)
		return;
	x = inp + (size_t) row * C;
	dy = dout + (size_t) row * C;
	dx = dinp + (size_t) row * C;
	s = rstd[row];
	for (int c = lane; c < C; c += WARP)
		sum += (double) (dy[c] * weight[c]) * (double) (x[c] * s);
	mean_gx = (float) (warp_sum_double(sum) / C);
	for (int c = lane; c < C; c += WARP)
		dx[c] += s * (dy[c] * weight[c] - x[c] * s * mean_gx);
}

/*
 * dweight[C] += sum_n dout xhat: a block of 32 columns x 32 row lanes
 * (coalesced along a row), each lane summing every 32nd row in double,
 * the lanes then summed in a fixed order: no atomics, the same result run
 * to run.
 */
__global__ void
rmsnorm_dweight_kernel(float *dweight, const float *dout, const float *inp,
					   const float *rstd, int N, int C)
{
	__shared__ double part[DWEIGHT_ROWS][DWEIGHT_COLS + 1];
	int			tx = threadIdx.x;
	int			ty = threadIdx.y;
	int			c = blockIdx.x * DWEIGHT_COLS + tx;
	double		acc = 0;

	if (c < C)
		for (int n = ty; n < N; n += DWEIGHT_ROWS)
		{
			size_t		i = (size_t) n * C + c;

			acc += (double) dout[i] * (double) (inp[i] * rstd[n]);
		}
	part[ty][tx] = acc;
	__syncthreads();
	if (ty == 0 && c < C)
	{
		for (int r = 1; r < DWEIGHT_ROWS; r++)
			acc += part[r][tx];
		dweight[c] += (float) acc;
	}
}

/* out[N,C] = rmsnorm(inp) * weight; rstd[N] (may be NULL). */
extern "C" int
peft_cuda_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
						  int N, int C, float eps, void *stream, char *msg, int msglen)
{
	unsigned int blocks;

	if (N < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "rmsnorm_forward: bad shape N=%d C=%d", N, C);
	if (N == 0 || C == 0)
		return 0;
	if (out == NULL || inp == NULL || weight == NULL)
		return peft_cuda_fail(msg, msglen, "rmsnorm_forward: NULL tensor");
	blocks = (unsigned int) ((N + RMS_ROWS_PER_BLOCK - 1) / RMS_ROWS_PER_BLOCK);
	rmsnorm_forward_kernel<<<blocks, RMS_ROWS_PER_BLOCK * WARP, 0, (cudaStream_t) stream>>>
		(out, rstd, inp, weight, N, C, eps);
	return peft_cuda_check_launch("rmsnorm_forward_kernel", msg, msglen);
}

/* dinp[N,C] += ...; dweight[C] += ... (either may be NULL). */
extern "C" int
peft_cuda_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
						   const float *weight, const float *rstd, int N, int C,
						   void *stream, char *msg, int msglen)
{
	cudaStream_t s = (cudaStream_t) stream;

	if (N < 0 || C < 0)
		return peft_cuda_fail(msg, msglen, "rmsnorm_backward: bad shape N=%d C=%d", N, C);
	if (N == 0 || C == 0 || (dinp == NULL && dweight == NULL))
		return 0;
	if (dout == NULL || inp == NULL || rstd == NULL || (dinp != NULL && weight == NULL))
		return peft_cuda_fail(msg, msglen, "rmsnorm_backward: NULL tensor");
	if (dinp != NULL)
	{
		unsigned int blocks = (unsigned int) ((N + RMS_ROWS_PER_BLOCK - 1) / RMS_ROWS_PER_BLOCK);

		rmsnorm_dinp_kernel<<<blocks, RMS_ROWS_PER_BLOCK * WARP, 0, s>>>
			(dinp, dout, inp, weight, rstd, N, C);
		if (peft_cuda_check_launch("rmsnorm_dinp_kernel", msg, msglen) != 0)
			return -1;
	}
	if (dweight != NULL)
	{
		unsigned int blocks = (unsigned int) ((C + DWEIGHT_COLS - 1) / DWEIGHT_COLS);

		rmsnorm_dweight_kernel<<<blocks, dim3(DWEIGHT_COLS, DWEIGHT_ROWS), 0, s>>>
			(dweight, dout, inp, rstd, N, C);
		if (peft_cuda_check_launch("rmsnorm_dweight_kernel", msg, msglen) != 0)
			return -1;
	}
	return 0;
}

/* ---- rotary position embeddings -------------------------------------------------- */

/*
 * Thread (row, pair i): the angle as ops_decoder.c and transformers compute
 * it (inv_freq = 1 / base^(2i/D) in float32, the exponent a float32
 * quotient, times the position in float32), cos and sin in double rounded
 * once, then pair i of every head turned by it (sign -1: the inverse).
 * The __f*_rn intrinsics keep nvcc from fusing the products into FMAs,
 * so each value is rounded as the CPU rounds it.
 */
__global__ void
rope_kernel(float *x, const int32_t *pos, int N, int H, int D, double base, int layout,
			float sign)
{
	int			half = D / 2;
	size_t		item = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
	int			row;
	int			i;
	float		inv_freq;
	float		angle;
	float		c;
	float		s;
	int			first;
	int			second;

	if (item >= (size_t) N * half)
		return;
	row = (int) (item / half);
	i = (int) (item % half);
	inv_freq = 1.0f / (float) pow(base, (double) ((float) (2 * i) / (float) D));
	angle = __fmul_rn((float) pos[row], inv_freq);
	c = (float) cos((double) angle);
	s = sign * (float) sin((double) angle);
	first = layout == PEFT_CUDA_ROPE_PAIRS ? 2 * i : i;
	second = layout == PEFT_CUDA_ROPE_PAIRS ? 2 * i + 1 : i + half;
	for (int h = 0; h < H; h++)
	{
		float	   *head = x + ((size_t) row * H + h) * D;
		float		a = head[first];
		float		b = head[second];

		head[first] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
		head[second] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
	}
}

/* Launch the rotation (sign +1) or its inverse (sign -1). */
static int
rope_launch(float *x, const int32_t *pos, int N, int H, int D, float base, int layout,
			float sign, void *stream, char *msg, int msglen)
{
	size_t		items;

	if (N < 0 || H < 0 || D < 0 || D % 2 != 0)
		return peft_cuda_fail(msg, msglen, "rope: bad shape N=%d H=%d D=%d (D must be even)",
							  N, H, D);
	if (layout != PEFT_CUDA_ROPE_PAIRS && layout != PEFT_CUDA_ROPE_HALVES)
		return peft_cuda_fail(msg, msglen, "rope: unknown layout %d", layout);
	if (N == 0 || H == 0 || D == 0)
		return 0;
	if (x == NULL || pos == NULL)
		return peft_cuda_fail(msg, msglen, "rope: NULL tensor");
	items = (size_t) N * (D / 2);
	if (items / PEFT_CUDA_THREADS >= 0x7fffffffu)
		return peft_cuda_fail(msg, msglen, "rope: %zu rows x pairs is too many", items);
	rope_kernel<<<(unsigned int) ((items + PEFT_CUDA_THREADS - 1) / PEFT_CUDA_THREADS),
		PEFT_CUDA_THREADS, 0, (cudaStream_t) stream>>>
		(x, pos, N, H, D, (double) base, layout, sign);
	return peft_cuda_check_launch("rope_kernel", msg, msglen);
}

/* Rotate x[N, H*D] in place. */
extern "C" int
peft_cuda_rope_forward(float *x, const int32_t *pos, int N, int H, int D, float base,
					   int layout, void *stream, char *msg, int msglen)
{
	return rope_launch(x, pos, N, H, D, base, layout, 1.0f, stream, msg, msglen);
}

/* dx[N, H*D] in place: the inverse rotation. */
extern "C" int
peft_cuda_rope_backward(float *dx, const int32_t *pos, int N, int H, int D, float base,
						int layout, void *stream, char *msg, int msglen)
{
	return rope_launch(dx, pos, N, H, D, base, layout, -1.0f, stream, msg, msglen);
}

/* ---- SwiGLU ----------------------------------------------------------------------- */

/* sigmoid(x); expf overflows to inf for x << 0, giving 0, never NaN. */
__device__ __forceinline__ float
sigmoid(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

/* out[n] = gate * sigmoid(gate) * up, grid-stride. */
__global__ void
swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		float		g = gate[i];

		out[i] = g * sigmoid(g) * up[i];
	}
}

/* dgate += dout up sig (1 + g (1 - sig)), dup += dout g sig, grid-stride. */
__global__ void
swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
					   const float *up, size_t n)
{
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
	{
		float		g = gate[i];
		float		sig = sigmoid(g);

		if (dgate != NULL)
			dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
		if (dup != NULL)
			dup[i] += dout[i] * g * sig;
	}
}

/* out[n] = silu(gate) * up. */
extern "C" int
peft_cuda_swiglu_forward(float *out, const float *gate, const float *up, size_t n,
						 void *stream, char *msg, int msglen)
{
	if (n == 0)
		return 0;
	if (out == NULL || gate == NULL || up == NULL)
		return peft_cuda_fail(msg, msglen, "swiglu_forward: NULL tensor");
	swiglu_forward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(out, gate, up, n);
	return peft_cuda_check_launch("swiglu_forward_kernel", msg, msglen);
}

/* dgate[n] += ..., dup[n] += ... (either may be NULL). */
extern "C" int
peft_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
						  const float *up, size_t n, void *stream, char *msg, int msglen)
{
	if (n == 0 || (dgate == NULL && dup == NULL))
		return 0;
	if (dout == NULL || gate == NULL || up == NULL)
		return peft_cuda_fail(msg, msglen, "swiglu_backward: NULL tensor");
	swiglu_backward_kernel<<<peft_cuda_grid(n, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS, 0,
		(cudaStream_t) stream>>>(dgate, dup, dout, gate, up, n);
	return peft_cuda_check_launch("swiglu_backward_kernel", msg, msglen);
}

/* ---- causal GQA attention over the cache ------------------------------------------ */

/*
 * Block (r, h): out[r, h] = softmax_j(q . k_j / sqrt(D)) v_j over positions
 * j = 0..pos[r] of slot[r], key/value head h / (Hq/Hkv).  Per chunk of
 * ATTENTION_CHUNK keys: each warp scores every fourth key (lanes across D,
 * coalesced), then the running max m and sum l are updated and the
 * accumulator (shared, thread d owns element d) rescaled by exp(m_old -
 * m_new) before the chunk's weights times v are added.  With probs, the
 * raw scores are written as they come and turned into the softmax at the
 * end from the final m and l, as the CPU does.
 * Shared memory: q[D], acc[D], then the chunk's scores.
 */
__global__ void
gqa_attention_forward_kernel(float *out, float *probs, const float *q, const float *kcache,
							 const float *vcache, const int32_t *slot, const int32_t *pos,
							 int Hq, int Hkv, int D, int ctx, int slots, float scale)
{
	extern __shared__ float shared[];
	__shared__ float reduce_scratch[ATTENTION_THREADS / WARP];
	float	   *q_row = shared;
	float	   *acc = shared + D;
	float	   *score = shared + 2 * D;
	int			r = blockIdx.x;
	int			h = blockIdx.y;
	int			kvh = h / (Hq / Hkv);
	int			lane = threadIdx.x % WARP;
	int			warp = threadIdx.x / WARP;
	int			warps = blockDim.x / WARP;
	int			s = slot[r];
	int			len = pos[r] + 1;
	size_t		head = (size_t) r * Hq + h;
	float	   *out_h = out + head * D;
	float	   *prow = probs != NULL ? probs + head * ctx : NULL;
	float		max = -INFINITY;
	float		sum = 0.0f;
	float		inv_sum;

	/* Outside the cache: zeros, and nothing read (the block leaves as a whole). */
	if (s < 0 || s >= slots || len < 1 || len > ctx)
	{
		for (int d = threadIdx.x; d < D; d += blockDim.x)
			out_h[d] = 0.0f;
		return;
	}
	for (int d = threadIdx.x; d < D; d += blockDim.x)
	{
		q_row[d] = q[head * D + d];
		acc[d] = 0.0f;
	}
	__syncthreads();

	for (int j0 = 0; j0 < len; j0 += ATTENTION_CHUNK)
	{
		int			width = min(len - j0, ATTENTION_CHUNK);
		float		mine;
		float		new_max;
		float		shrink;

		for (int jj = warp; jj < width; jj += warps)
		{
			const float *kj = kcache + (((size_t) s * ctx + j0 + jj) * Hkv + kvh) * D;
			float		dot = 0.0f;

			for (int d = lane; d < D; d += WARP)
				dot += q_row[d] * kj[d];
			dot = warp_sum_float(dot) * scale;
			if (lane == 0)
			{
				score[jj] = dot;
				if (prow != NULL)
					prow[j0 + jj] = dot;
			}
		}
		__syncthreads();
		mine = threadIdx.x < width ? score[threadIdx.x] : -INFINITY;
		new_max = fmaxf(max, block_reduce(mine, true, reduce_scratch));
		/* exp(-inf) is 0: the first chunk scales the empty accumulator by 0 */
		shrink = expf(max - new_max);
		mine = threadIdx.x < width ? expf(mine - new_max) : 0.0f;
		sum = sum * shrink + block_reduce(mine, false, reduce_scratch);
		max = new_max;
		/* block_reduce's barriers ordered the reads of score above before this write */
		if (threadIdx.x < width)
			score[threadIdx.x] = mine;
		__syncthreads();
		for (int d = threadIdx.x; d < D; d += blockDim.x)
		{
			const float *v_d = vcache + (((size_t) s * ctx + j0) * Hkv + kvh) * D + d;
			size_t		step = (size_t) Hkv * D;
			float		a = acc[d] * shrink;

			for (int jj = 0; jj < width; jj++)
				a += score[jj] * v_d[jj * step];
			acc[d] = a;
		}
		/* the next chunk overwrites score */
		__syncthreads();
	}
	inv_sum = 1.0f / sum;
	for (int d = threadIdx.x; d < D; d += blockDim.x)
		out_h[d] = acc[d] * inv_sum;
	/* the raw scores this block wrote are visible to all its threads after the barriers above */
	if (prow != NULL)
		for (int j = threadIdx.x; j < len; j += blockDim.x)
			prow[j] = expf(prow[j] - max) * inv_sum;
}

/* out[N, Hq*D] (and probs) = causal GQA attention of the rows over the cache. */
extern "C" int
peft_cuda_gqa_attention_forward(float *out, float *probs, const float *q, const float *kcache,
								const float *vcache, const int32_t *slot, const int32_t *pos,
								int N, int Hq, int Hkv, int D, int ctx, int slots,
								void *stream, char *msg, int msglen)
{
	size_t		shared_bytes;

	if (N < 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || ctx <= 0 || slots <= 0 || Hq % Hkv != 0)
		return peft_cuda_fail(msg, msglen,
							  "gqa_attention_forward: bad shape N=%d Hq=%d Hkv=%d D=%d ctx=%d slots=%d",
							  N, Hq, Hkv, D, ctx, slots);
	if (D > ATTENTION_MAX_D || Hq > 65535)
		return peft_cuda_fail(msg, msglen,
							  "gqa_attention_forward: head size %d or %d heads too large", D, Hq);
	if (N == 0)
		return 0;
	if (out == NULL || q == NULL || kcache == NULL || vcache == NULL || slot == NULL ||
		pos == NULL)
		return peft_cuda_fail(msg, msglen, "gqa_attention_forward: NULL tensor");
	shared_bytes = (2 * (size_t) D + ATTENTION_CHUNK) * sizeof(float);
	gqa_attention_forward_kernel<<<dim3((unsigned int) N, (unsigned int) Hq), ATTENTION_THREADS,
		shared_bytes, (cudaStream_t) stream>>>
		(out, probs, q, kcache, vcache, slot, pos, Hq, Hkv, D, ctx, slots,
		 (float) (1.0 / sqrt((double) D)));
	return peft_cuda_check_launch("gqa_attention_forward_kernel", msg, msglen);
}
