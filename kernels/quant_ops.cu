/*
 * quant_ops.cu - ggml's quantized weights on the GPU: dequantization and
 * matrix-vector products that dequantize on the fly, the twins of
 * src/engine/ops/quant.c (test/gpu/test_gpu_quant.c checks them against its
 * quant_dequantize).
 *
 * Both kernels work in units of 8 consecutive values of a row: every block
 * size here (1, 32, 256) is 1 or a multiple of 8, so a unit never straddles
 * two blocks, and a warp's 32 lanes take 32 neighbouring units, reading
 * neighbouring bytes of the weights and of x.  Each type is a template
 * instance, so the decoding inlines into the loops.  Dequantization uses
 * the __f*_rn intrinsics, which nvcc never fuses into an FMA: each value is
 * then the float that ggml's C code (and quant.c) computes, bit for bit.
 */
#include "quant_ops.h"
#include "cuda_ops.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C"
{
#include "gguf.h"
}

#define WARP 32
#define MATVEC_WARPS 4			/* rows of W per block, one per warp */
#define MATVEC_N 4				/* rows of x per warp, so W is read once for four */
#define UNIT 8					/* values a lane decodes at a time */

/* Values and bytes per block of the types here (ggml's; the GPU test checks them against gguf.h). */
static bool
type_layout(int type, int *values, int *bytes)
{
	switch (type)
	{
		case GGML_F32:
			*values = 1, *bytes = 4;
			return true;
		case GGML_F16:
		case GGML_BF16:
			*values = 1, *bytes = 2;
			return true;
		case GGML_Q4_0:
			*values = 32, *bytes = 18;
			return true;
		case GGML_Q4_1:
			*values = 32, *bytes = 20;
			return true;
		case GGML_Q8_0:
			*values = 32, *bytes = 34;
			return true;
		case GGML_Q4_K:
			*values = 256, *bytes = 144;
			return true;
		case GGML_Q6_K:
			*values = 256, *bytes = 210;
			return true;
	}
	return false;
}

/* The little-endian fp16 at p (blocks sit at any even offset) as a float; exact. */
__device__ __forceinline__ float
half_at(const uint8_t *p)
{
	return __half2float(__ushort_as_half((unsigned short) (p[0] | p[1] << 8)));
}

/*
 * v[0..8) = values 8u .. 8u+7 of a row of cols values of type TYPE at row;
 * returns how many exist (fewer only at the end of an F32/F16/BF16 row),
 * the rest of v zeroed.  The formulas and their order are ggml's
 * dequantize_row_* (and quant.c's).
 */
template <int TYPE>
__device__ __forceinline__ int
dequant_unit(const uint8_t *row, int64_t cols, int64_t u, float v[UNIT])
{
	int64_t		first = u * UNIT;

	if (TYPE == GGML_F32 || TYPE == GGML_F16 || TYPE == GGML_BF16)
	{
		int			valid = (int) min((int64_t) UNIT, cols - first);

#pragma unroll
		for (int k = 0; k < UNIT; k++)
		{
			int64_t		i = first + k;

			if (k >= valid)
				v[k] = 0.0f;
			else if (TYPE == GGML_F32)
				v[k] = ((const float *) row)[i];
			else if (TYPE == GGML_F16)
				v[k] = half_at(row + 2 * i);
			else
				/* the top half of a float's bits */
				v[k] = __uint_as_float(((unsigned int) row[2 * i] | (unsigned int) row[2 * i + 1] << 8) << 16);
		}
		return valid;
	}
	if (TYPE == GGML_Q4_0 || TYPE == GGML_Q4_1 || TYPE == GGML_Q8_0)
	{
		int			bytes = TYPE == GGML_Q4_0 ? 18 : (TYPE == GGML_Q4_1 ? 20 : 34);
		const uint8_t *b = row + (first / 32) * bytes;
		int			o = (int) (first % 32);
		float		d = half_at(b);

		if (TYPE == GGML_Q8_0)
		{
#pragma unroll
			for (int k = 0; k < UNIT; k++)
				v[k] = __fmul_rn(d, (float) (int8_t) b[2 + o + k]);
		}
		else
		{
			const uint8_t *qs = b + (TYPE == GGML_Q4_0 ? 2 : 4);
			/* values 0..15 are the low nibbles of qs, 16..31 the high ones */
			int			shift = o < 16 ? 0 : 4;
			int			at = o % 16;
			float		m = TYPE == GGML_Q4_1 ? half_at(b + 2) : 0.0f;

#pragma unroll
			for (int k = 0; k < UNIT; k++)
			{
				int			q = (qs[at + k] >> shift) & 0x0f;

				if (TYPE == GGML_Q4_0)
					v[k] = __fmul_rn(d, (float) (q - 8));
				else
					v[k] = __fadd_rn(__fmul_rn(d, (float) q), m);
			}
		}
		return UNIT;
	}
	if (TYPE == GGML_Q4_K)
	{
		/* d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles */
		const uint8_t *b = row + (first / 256) * 144;
		int			o = (int) (first % 256);
		int			j = o / 32;		/* sub-block of 32 values */
		int			l = o % 32;
		const uint8_t *s = b + 4;
		const uint8_t *qs = b + 16 + (j / 2) * 32 + l;
		int			shift = 4 * (j % 2);
		int			sc;
		int			mn;
		float		dl;
		float		ml;

		if (j < 4)
		{
			sc = s[j] & 0x3f;
			mn = s[j + 4] & 0x3f;
		}
		else
		{
			sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
			mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
		}
		dl = __fmul_rn(half_at(b), (float) sc);
		ml = __fmul_rn(half_at(b + 2), (float) mn);
#pragma unroll
		for (int k = 0; k < UNIT; k++)
			v[k] = __fsub_rn(__fmul_rn(dl, (float) ((qs[k] >> shift) & 0x0f)), ml);
		return UNIT;
	}
	if (TYPE == GGML_Q6_K)
	{
		/* ql[128], qh[64], int8 scales[16], d: value 128 a + 32 j + l */
		const uint8_t *b = row + (first / 256) * 210;
		int			o = (int) (first % 256);
		int			a = o / 128;
		int			j = (o % 128) / 32;
		int			l = o % 32;
		const uint8_t *ql = b + 64 * a + 32 * (j % 2) + l;
		const uint8_t *qh = b + 128 + 32 * a + l;
		int			lo_shift = 4 * (j / 2);
		int			hi_shift = 2 * j;
		float		ds = __fmul_rn(half_at(b + 208), (float) (int8_t) b[192 + o / 16]);

#pragma unroll
		for (int k = 0; k < UNIT; k++)
		{
			int			q = ((ql[k] >> lo_shift) & 0x0f) | ((qh[k] >> hi_shift) & 3) << 4;

			v[k] = __fmul_rn(ds, (float) (q - 32));
		}
		return UNIT;
	}
	return 0;
}

/* out[0..n) = the values of the blocks at w, grid-stride over units of 8. */
template <int TYPE>
__global__ void
quant_dequantize_kernel(const uint8_t *w, int64_t n, float *out)
{
	int64_t		units = (n + UNIT - 1) / UNIT;
	int64_t		stride = (int64_t) gridDim.x * blockDim.x;

	for (int64_t u = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride)
	{
		float		v[UNIT];
		int			valid = dequant_unit<TYPE>(w, n, u, v);

		for (int k = 0; k < valid; k++)
			out[u * UNIT + k] = v[k];
	}
}

/* Sum of x over the 32 lanes of a warp, result in every lane. */
__device__ __forceinline__ float
warp_sum(float x)
{
	for (int offset = WARP / 2; offset > 0; offset >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, offset);
	return x;
}

/*
 * y[n, r] = W[r, :] . x[n, :] for row r of this warp and rows n0..n0+3 of
 * x: each lane decodes every 32nd unit of the row once and multiplies it
 * into up to four float sums, which the warp then adds up.
 */
template <int TYPE>
__global__ void
quant_matvec_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols,
					const float *x, int64_t N, float *y)
{
	int			lane = threadIdx.x % WARP;
	int64_t		r = (int64_t) blockIdx.x * MATVEC_WARPS + threadIdx.x / WARP;
	int64_t		n0 = (int64_t) blockIdx.y * MATVEC_N;
	int			nn = (int) min((int64_t) MATVEC_N, N - n0);
	int64_t		units = (cols + UNIT - 1) / UNIT;
	const uint8_t *row;
	float		acc[MATVEC_N] = {0.0f, 0.0f, 0.0f, 0.0f};

	/* r is uniform across the warp, so whole warps leave together */
	if (r >= rows)
		return;
	row = w + (size_t) r * row_bytes;
	for (int64_t u = lane; u < units; u += WARP)
	{
		float		v[UNIT];
		int			valid = dequant_unit<TYPE>(row, cols, u, v);

#pragma unroll
		for (int n = 0; n < MATVEC_N; n++)
			if (n < nn)
			{
				const float *xr = x + (size_t) (n0 + n) * cols + u * UNIT;

				for (int k = 0; k < valid; k++)
					acc[n] += v[k] * xr[k];
			}
	}
#pragma unroll
	for (int n = 0; n < MATVEC_N; n++)
	{
		float		sum = warp_sum(acc[n]);

		if (lane == 0 && n < nn)
			y[(size_t) (n0 + n) * rows + r] = sum;
	}
}

/* Launch the dequantize kernel instance of TYPE. */
template <int TYPE>
static void
launch_dequantize(const void *w, int64_t n, float *out, cudaStream_t stream)
{
	size_t		units = (size_t) ((n + UNIT - 1) / UNIT);

	quant_dequantize_kernel<TYPE><<<peft_cuda_grid(units, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS,
		0, stream>>>((const uint8_t *) w, n, out);
}

/* Launch the matvec kernel instance of TYPE. */
template <int TYPE>
static void
launch_matvec(const void *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
			  int64_t N, float *y, cudaStream_t stream)
{
	dim3		grid((unsigned int) ((rows + MATVEC_WARPS - 1) / MATVEC_WARPS),
					 (unsigned int) ((N + MATVEC_N - 1) / MATVEC_N));

	quant_matvec_kernel<TYPE><<<grid, MATVEC_WARPS * WARP, 0, stream>>>
		((const uint8_t *) w, row_bytes, rows, cols, x, N, y);
}

/* Whether the kernels here take ggml type `type`. */
extern "C" int
peft_cuda_quant_supported(int type)
{
	int			values;
	int			bytes;

	return type_layout(type, &values, &bytes) ? 1 : 0;
}

/* out[0..n) = dequantized values at w. */
extern "C" int
peft_cuda_quant_dequantize(int type, const void *w, int64_t n, float *out, void *stream,
						   char *msg, int msglen)
{
	cudaStream_t s = (cudaStream_t) stream;
	int			values;
	int			bytes;

	if (!type_layout(type, &values, &bytes))
		return peft_cuda_fail(msg, msglen, "quant_dequantize: unsupported type %d", type);
	if (n < 0 || n % values != 0)
		return peft_cuda_fail(msg, msglen,
							  "quant_dequantize: %lld values are not whole blocks of %d",
							  (long long) n, values);
	if (n == 0)
		return 0;
	if (w == NULL || out == NULL)
		return peft_cuda_fail(msg, msglen, "quant_dequantize: NULL tensor");
	switch (type)
	{
		case GGML_F32:
			launch_dequantize<GGML_F32>(w, n, out, s);
			break;
		case GGML_F16:
			launch_dequantize<GGML_F16>(w, n, out, s);
			break;
		case GGML_BF16:
			launch_dequantize<GGML_BF16>(w, n, out, s);
			break;
		case GGML_Q4_0:
			launch_dequantize<GGML_Q4_0>(w, n, out, s);
			break;
		case GGML_Q4_1:
			launch_dequantize<GGML_Q4_1>(w, n, out, s);
			break;
		case GGML_Q8_0:
			launch_dequantize<GGML_Q8_0>(w, n, out, s);
			break;
		case GGML_Q4_K:
			launch_dequantize<GGML_Q4_K>(w, n, out, s);
			break;
		case GGML_Q6_K:
			launch_dequantize<GGML_Q6_K>(w, n, out, s);
			break;
	}
	return peft_cuda_check_launch("quant_dequantize_kernel", msg, msglen);
}

/* y[N, rows] = x[N, cols] W^T, W dequantized on the fly. */
extern "C" int
peft_cuda_quant_matvec(int type, const void *w, int64_t rows, int64_t cols, const float *x,
					   int64_t N, float *y, void *stream, char *msg, int msglen)
{
	cudaStream_t s = (cudaStream_t) stream;
	int			values;
	int			bytes;
	size_t		row_bytes;

	if (!type_layout(type, &values, &bytes))
		return peft_cuda_fail(msg, msglen, "quant_matvec: unsupported type %d", type);
	if (rows < 0 || cols < 0 || N < 0 || cols % values != 0)
		return peft_cuda_fail(msg, msglen,
							  "quant_matvec: bad shape rows=%lld cols=%lld N=%lld (cols in blocks of %d)",
							  (long long) rows, (long long) cols, (long long) N, values);
	if ((rows + MATVEC_WARPS - 1) / MATVEC_WARPS > 0x7fffffff ||
		(N + MATVEC_N - 1) / MATVEC_N > 65535)
		return peft_cuda_fail(msg, msglen, "quant_matvec: rows=%lld or N=%lld too large",
							  (long long) rows, (long long) N);
	if (rows == 0 || N == 0)
		return 0;
	if (w == NULL || x == NULL || y == NULL)
		return peft_cuda_fail(msg, msglen, "quant_matvec: NULL tensor");
	/* cols == 0 runs too: no unit to decode, so y gets the empty sums, zeros */
	row_bytes = (size_t) (cols / values) * (size_t) bytes;
	switch (type)
	{
		case GGML_F32:
			launch_matvec<GGML_F32>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_F16:
			launch_matvec<GGML_F16>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_BF16:
			launch_matvec<GGML_BF16>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_Q4_0:
			launch_matvec<GGML_Q4_0>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_Q4_1:
			launch_matvec<GGML_Q4_1>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_Q8_0:
			launch_matvec<GGML_Q8_0>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_Q4_K:
			launch_matvec<GGML_Q4_K>(w, row_bytes, rows, cols, x, N, y, s);
			break;
		case GGML_Q6_K:
			launch_matvec<GGML_Q6_K>(w, row_bytes, rows, cols, x, N, y, s);
			break;
	}
	return peft_cuda_check_launch("quant_matvec_kernel", msg, msglen);
}
