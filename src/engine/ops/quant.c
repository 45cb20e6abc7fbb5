/*
 * quant.c - ggml's tensor types: the scalar dequantization every other path
 * is checked against, the products that dequantize W as they go, and the
 * choice of kernel.
 *
 * quant_matmul takes one of two routes.  Up to QUANT_MATVEC_MAX_N columns
 * of x (decoding; up to QUANT_GROUPED_MAX_N while decoding many sequences,
 * quant_set_rows_alone), a matrix-vector kernel reads each
 * block of W once per group of QUANT_MATVEC_MAX_N columns and multiplies
 * its integer quants with the group's columns: the work is reading and
 * unpacking W, so it is shared, and a few rows of W at a time go through
 * every group while they are in cache.  The vector kernels of Q4_0, Q4_1,
 * Q8_0, Q4_K and Q6_K take x rounded to int16 per block of 32 values (once
 * a call) and multiply in integers.  Above that (prompts, training), rows of W are
 * dequantized a tile at a time into a per-thread buffer that stays in the
 * L2 cache, and BLAS multiplies the tile: the float copy of W never exists
 * whole.  Either way every output row is computed by one thread in an
 * order fixed by the shapes, so the thread count never changes a result.
 */
#include "quant.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include "matmul.h"
#include "quant_kernels.h"
#include "threadpool.h"

/* Values dequantized at once by the scalar kernel: a multiple of every block size. */
#define QUANT_CHUNK 256

/*
 * Floats in a tile of W (512 KB, half of a Zen 4's L2 cache; twice that
 * size was no faster, half of it 13% slower at N = 64): rows per tile =
 * this / cols, clamped below.  Tiles depend on cols alone, never on the
 * thread count, so that a result never does either.
 */
#define QUANT_TILE_FLOATS 131072
#define QUANT_TILE_MIN_ROWS 16
#define QUANT_TILE_MAX_ROWS 256

/* The input gradient's tiles: columns (a multiple of every block size) by rows of W. */
#define QUANT_BWD_COLS 256
#define QUANT_BWD_ROWS 128

/*
 * ggml, and the gguf package after it, round d * q before adding the
 * minimum.  Compilers fuse a * b + c into one FMA wherever the target has
 * FMA (not x86-64's baseline, but aarch64's): keep the two roundings.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#define NO_FMA_CONTRACTION
#elif defined(__GNUC__)
#define NO_FMA_CONTRACTION __attribute__((optimize("fp-contract=off")))
#else
#define NO_FMA_CONTRACTION
#endif

typedef enum QuantKernel
{
	KERNEL_BEST = -1,
	KERNEL_SCALAR = 0,
	KERNEL_AVX2 = 1,
	KERNEL_AVX512 = 2,
	KERNEL_AVX512VNNI = 3
} QuantKernel;

static const char *const kernel_names[] = {"scalar", "avx2", "avx512", "avx512vnni"};

/* The path tests forced, or KERNEL_BEST. */
static QuantKernel forced_kernel = KERNEL_BEST;

/* ---- layout -------------------------------------------------------------- */

/* Whether type can be dequantized and multiplied here. */
bool
quant_supported(GgmlType type)
{
	switch (type)
	{
		case GGML_F32:
		case GGML_F16:
		case GGML_BF16:
		case GGML_Q4_0:
		case GGML_Q4_1:
		case GGML_Q5_0:
		case GGML_Q5_1:
		case GGML_Q8_0:
		case GGML_Q2_K:
		case GGML_Q3_K:
		case GGML_Q4_K:
		case GGML_Q5_K:
		case GGML_Q6_K:
			return true;
	}
	return false;
}

/* Values per block and bytes per block of type (1 and 0 when unknown). */
static void
block_layout(GgmlType type, int *values, int *bytes)
{
	if (!gguf_type_layout((uint32_t) type, values, bytes))
	{
		*values = 1;
		*bytes = 0;
	}
}

/* Bytes of one row of cols values of type. */
size_t
quant_row_bytes(GgmlType type, int64_t cols)
{
	int			values;
	int			bytes;

	block_layout(type, &values, &bytes);
	return (size_t) (cols / values) * (size_t) bytes;
}

/* ---- scalar dequantization (the reference) ---------------------------------- */

/* fp16 at p (any alignment) as a float. */
static inline float
half_at(const uint16_t *p)
{
	uint16_t	h;

	memcpy(&h, p, sizeof(h));
	return quant_half_to_float(h);
}

/* One Q4_0 block: d (q - 8). */
static void
dequant_q4_0(const BlockQ4_0 *b, float *out)
{
	float		d = quant_half_to_float(b->d);

	for (int j = 0; j < 16; j++)
	{
		out[j] = d * (float) ((b->qs[j] & 0x0f) - 8);
		out[j + 16] = d * (float) ((b->qs[j] >> 4) - 8);
	}
}

/* One Q4_1 block: d q + m. */
NO_FMA_CONTRACTION static void
dequant_q4_1(const BlockQ4_1 *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		m = quant_half_to_float(b->m);

	for (int j = 0; j < 16; j++)
	{
		out[j] = d * (float) (b->qs[j] & 0x0f) + m;
		out[j + 16] = d * (float) (b->qs[j] >> 4) + m;
	}
}

/* The fifth bits of a Q5 block, value j's at bit j. */
static inline uint32_t
q5_high_bits(const uint8_t qh[4])
{
	return (uint32_t) qh[0] | (uint32_t) qh[1] << 8 | (uint32_t) qh[2] << 16 | (uint32_t) qh[3] << 24;
}

/* One Q5_0 block: d (q - 16). */
static void
dequant_q5_0(const BlockQ5_0 *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	uint32_t	qh = q5_high_bits(b->qh);

	for (int j = 0; j < 16; j++)
	{
		int			lo = (b->qs[j] & 0x0f) | ((qh >> j) & 1) << 4;
		int			hi = (b->qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;

		out[j] = d * (float) (lo - 16);
		out[j + 16] = d * (float) (hi - 16);
	}
}

/* One Q5_1 block: d q + m. */
NO_FMA_CONTRACTION static void
dequant_q5_1(const BlockQ5_1 *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		m = quant_half_to_float(b->m);
	uint32_t	qh = q5_high_bits(b->qh);

	for (int j = 0; j < 16; j++)
	{
		int			lo = (b->qs[j] & 0x0f) | ((qh >> j) & 1) << 4;
		int			hi = (b->qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;

		out[j] = d * (float) lo + m;
		out[j + 16] = d * (float) hi + m;
	}
}

/* One Q8_0 block: d q. */
static void
dequant_q8_0(const BlockQ8_0 *b, float *out)
{
	float		d = quant_half_to_float(b->d);

	for (int j = 0; j < 32; j++)
		out[j] = d * (float) b->qs[j];
}

/* One Q2_K super-block: per 16 values (d sc) q - (dmin m). */
NO_FMA_CONTRACTION static void
dequant_q2_k(const BlockQ2_K *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		dmin = quant_half_to_float(b->dmin);

	for (int h = 0; h < 2; h++)
		for (int j = 0; j < 4; j++)
			for (int l = 0; l < 32; l++)
			{
				int			i = 128 * h + 32 * j + l;
				int			g = i / 16;
				float		dl = d * (float) (b->scales[g] & 0x0f);
				float		ml = dmin * (float) (b->scales[g] >> 4);
				int			q = (b->qs[32 * h + l] >> (2 * j)) & 3;

				out[i] = dl * (float) q - ml;
			}
}

/* One Q3_K super-block: per 16 values d (s - 32) (q - 4 unless the high bit is set). */
static void
dequant_q3_k(const BlockQ3_K *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		dl[16];

	for (int g = 0; g < 16; g++)
	{
		int			lo = g < 8 ? b->scales[g] & 0x0f : b->scales[g - 8] >> 4;
		int			hi = (b->scales[8 + g % 4] >> (2 * (g / 4))) & 3;

		dl[g] = d * (float) ((lo | hi << 4) - 32);
	}
	for (int h = 0; h < 2; h++)
		for (int j = 0; j < 4; j++)
			for (int l = 0; l < 32; l++)
			{
				int			i = 128 * h + 32 * j + l;
				int			q = (b->qs[32 * h + l] >> (2 * j)) & 3;
				int			high = (b->hmask[l] >> (i / 32)) & 1;

				out[i] = dl[i / 16] * (float) (q - (high ? 0 : 4));
			}
}

/* One Q4_K super-block: per 32 values (d sc) q - (dmin m). */
NO_FMA_CONTRACTION static void
dequant_q4_k(const BlockQ4_K *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		dmin = quant_half_to_float(b->dmin);
	uint8_t		sc[8];
	uint8_t		mn[8];

	quant_k_scales(b->scales, sc, mn);
	for (int j = 0; j < 8; j++)
	{
		float		dl = d * (float) sc[j];
		float		ml = dmin * (float) mn[j];

		for (int l = 0; l < 32; l++)
		{
			int			q = (b->qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;

			out[j * 32 + l] = dl * (float) q - ml;
		}
	}
}

/* One Q5_K super-block: as Q4_K, with a fifth bit from qh. */
NO_FMA_CONTRACTION static void
dequant_q5_k(const BlockQ5_K *b, float *out)
{
	float		d = quant_half_to_float(b->d);
	float		dmin = quant_half_to_float(b->dmin);
	uint8_t		sc[8];
	uint8_t		mn[8];

	quant_k_scales(b->scales, sc, mn);
	for (int j = 0; j < 8; j++)
	{
		float		dl = d * (float) sc[j];
		float		ml = dmin * (float) mn[j];

		for (int l = 0; l < 32; l++)
		{
			int			q = ((b->qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f) |
				((b->qh[l] >> j) & 1) << 4;

			out[j * 32 + l] = dl * (float) q - ml;
		}
	}
}

/* One Q6_K super-block: per 16 values (d s) (q - 32). */
static void
dequant_q6_k(const BlockQ6_K *b, float *out)
{
	float		d = quant_half_to_float(b->d);

	for (int a = 0; a < 2; a++)
		for (int j = 0; j < 4; j++)
			for (int l = 0; l < 32; l++)
			{
				int			i = 128 * a + 32 * j + l;
				int			lo = (b->ql[64 * a + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0x0f;
				int			hi = (b->qh[32 * a + l] >> (2 * j)) & 3;

				out[i] = (d * (float) b->scales[i / 16]) * (float) ((lo | hi << 4) - 32);
			}
}

/* out[0..n) = the n values at data, exactly as ggml and the gguf package dequantize them. */
static void
dequantize_scalar(GgmlType type, const void *data, int64_t n, float *out)
{
	const uint8_t *p = data;

	switch (type)
	{
		case GGML_F32:
			memcpy(out, p, (size_t) n * sizeof(float));
			return;
		case GGML_F16:
			for (int64_t i = 0; i < n; i++)
				out[i] = half_at((const uint16_t *) (p + 2 * i));
			return;
		case GGML_BF16:
			for (int64_t i = 0; i < n; i++)
			{
				/* the top half of a float's bits */
				uint32_t	bits = (uint32_t) p[2 * i] << 16 | (uint32_t) p[2 * i + 1] << 24;

				memcpy(&out[i], &bits, sizeof(float));
			}
			return;
		case GGML_Q4_0:
			for (int64_t b = 0; b < n / QK32; b++)
				dequant_q4_0((const BlockQ4_0 *) p + b, out + b * QK32);
			return;
		case GGML_Q4_1:
			for (int64_t b = 0; b < n / QK32; b++)
				dequant_q4_1((const BlockQ4_1 *) p + b, out + b * QK32);
			return;
		case GGML_Q5_0:
			for (int64_t b = 0; b < n / QK32; b++)
				dequant_q5_0((const BlockQ5_0 *) p + b, out + b * QK32);
			return;
		case GGML_Q5_1:
			for (int64_t b = 0; b < n / QK32; b++)
				dequant_q5_1((const BlockQ5_1 *) p + b, out + b * QK32);
			return;
		case GGML_Q8_0:
			for (int64_t b = 0; b < n / QK32; b++)
				dequant_q8_0((const BlockQ8_0 *) p + b, out + b * QK32);
			return;
		case GGML_Q2_K:
			for (int64_t b = 0; b < n / QK_K; b++)
				dequant_q2_k((const BlockQ2_K *) p + b, out + b * QK_K);
			return;
		case GGML_Q3_K:
			for (int64_t b = 0; b < n / QK_K; b++)
				dequant_q3_k((const BlockQ3_K *) p + b, out + b * QK_K);
			return;
		case GGML_Q4_K:
			for (int64_t b = 0; b < n / QK_K; b++)
				dequant_q4_k((const BlockQ4_K *) p + b, out + b * QK_K);
			return;
		case GGML_Q5_K:
			for (int64_t b = 0; b < n / QK_K; b++)
				dequant_q5_k((const BlockQ5_K *) p + b, out + b * QK_K);
			return;
		case GGML_Q6_K:
			for (int64_t b = 0; b < n / QK_K; b++)
				dequant_q6_k((const BlockQ6_K *) p + b, out + b * QK_K);
			return;
	}
	/* callers check quant_supported; a wrong type must not pass for zeros */
	for (int64_t i = 0; i < n; i++)
		out[i] = __builtin_nanf("");
}

/* ---- kernel choice ---------------------------------------------------------- */

/* Whether this CPU can run kernel k. */
static bool
kernel_available(QuantKernel k)
{
	switch (k)
	{
		case KERNEL_SCALAR:
			return true;
		case KERNEL_AVX2:
			return quant_cpu_has_avx2();
		case KERNEL_AVX512:
			return quant_cpu_has_avx512();
		case KERNEL_AVX512VNNI:
			return quant_cpu_has_avx512vnni();
		case KERNEL_BEST:
			break;
	}
	return false;
}

/* The path quant_matmul uses now. */
static QuantKernel
active_kernel(void)
{
	/* decided once (threads racing here all store the same value) */
	static volatile QuantKernel best = KERNEL_BEST;

	if (forced_kernel != KERNEL_BEST)
		return forced_kernel;
	if (best == KERNEL_BEST)
		best = kernel_available(KERNEL_AVX512VNNI) ? KERNEL_AVX512VNNI :
			kernel_available(KERNEL_AVX512) ? KERNEL_AVX512 :
			kernel_available(KERNEL_AVX2) ? KERNEL_AVX2 : KERNEL_SCALAR;
	return best;
}

/* Which vector path quant_matmul uses here. */
const char *
quant_kernel_name(void)
{
	return kernel_names[active_kernel()];
}

/* Force a path by name (NULL: the best the CPU has); false if unknown or unavailable. */
bool
quant_force_kernel(const char *name)
{
	if (name == NULL)
	{
		forced_kernel = KERNEL_BEST;
		return true;
	}
	for (int k = KERNEL_SCALAR; k <= KERNEL_AVX512VNNI; k++)
		if (strcmp(name, kernel_names[k]) == 0)
		{
			if (!kernel_available((QuantKernel) k))
				return false;
			forced_kernel = (QuantKernel) k;
			return true;
		}
	return false;
}

/* ---- dequantization on the active path ------------------------------------ */

/* The vector dequantization of the active path for type, or NULL. */
static QuantDequantFn
dequant_kernel(GgmlType type)
{
	switch (active_kernel())
	{
		case KERNEL_AVX512VNNI:
		case KERNEL_AVX512:
		case KERNEL_AVX2:
			return quant_dequant_avx2(type);
		case KERNEL_SCALAR:
		case KERNEL_BEST:
			break;
	}
	return NULL;
}

/*
 * out[0..n) = the n values at data, exactly as ggml and the gguf package
 * dequantize them: on every path (the vector ones are tested against the
 * scalar one bit for bit).
 */
void
quant_dequantize(GgmlType type, const void *data, int64_t n, float *out)
{
	QuantDequantFn fn = dequant_kernel(type);

	if (fn != NULL)
		fn(data, n, out);
	else
		dequantize_scalar(type, data, n, out);
}

/* Dequantize values [c0, c1) of a row of type (both ends on block boundaries). */
static void
dequant_span(GgmlType type, const uint8_t *row, int64_t c0, int64_t c1, float *out)
{
	int			values;
	int			bytes;

	block_layout(type, &values, &bytes);
	quant_dequantize(type, row + (size_t) (c0 / values) * bytes, c1 - c0, out);
}

/* ---- matrix-vector products ------------------------------------------------ */

/*
 * The portable kernel, for every type: dequantize QUANT_CHUNK values of a
 * row with the reference code and take their dot products with the N
 * columns of x, in eight float lanes.
 */
static void
matvec_scalar(const QuantMatvec *mv, int64_t r0, int64_t r1)
{
	float		w[QUANT_CHUNK];

	for (int64_t r = r0; r < r1; r++)
	{
		const uint8_t *row = mv->w + (size_t) r * mv->row_bytes;
		float		acc[QUANT_MATVEC_MAX_N][8] = {{0}};

		for (int64_t c0 = 0; c0 < mv->cols; c0 += QUANT_CHUNK)
		{
			int64_t		len = mv->cols - c0 < QUANT_CHUNK ? mv->cols - c0 : QUANT_CHUNK;

			dequant_span(mv->type, row, c0, c0 + len, w);
			for (int n = 0; n < mv->N; n++)
			{
				const float *x = mv->x + (size_t) n * mv->cols + c0;
				int64_t		i = 0;

				/* eight independent sums, which the compiler keeps in vector registers */
				for (; i + 8 <= len; i += 8)
					for (int k = 0; k < 8; k++)
						acc[n][k] += w[i + k] * x[i + k];
				for (; i < len; i++)
					acc[n][i % 8] += w[i] * x[i];
			}
		}
		for (int n = 0; n < mv->N; n++)
		{
			float		s = 0;

			for (int k = 0; k < 8; k++)
				s += acc[n][k];
			mv->y[n * mv->ldy + r] = s;
		}
	}
}

/* The matrix-vector kernel of the active path for type. */
static QuantMatvecKernel
matvec_kernel(GgmlType type)
{
	QuantMatvecKernel k = {NULL, false};

	switch (active_kernel())
	{
		case KERNEL_AVX512VNNI:
			k = quant_matvec_avx512(type, true);
			break;
		case KERNEL_AVX512:
			k = quant_matvec_avx512(type, false);
			break;
		case KERNEL_AVX2:
			k = quant_matvec_avx2(type);
			break;
		case KERNEL_SCALAR:
		case KERNEL_BEST:
			break;
	}
	if (k.fn == NULL)
		k = (QuantMatvecKernel) {matvec_scalar, false};
	return k;
}

/* Whether quant_matmul takes rows beyond QUANT_MATVEC_MAX_N through the kernels too (quant.h). */
static bool rows_alone = false;

bool
quant_set_rows_alone(bool on)
{
	bool		was = rows_alone;

	rows_alone = on;
	return was;
}

/* Rows of W one group's kernel call covers, so they stay in cache for the next group. */
#define QUANT_GROUP_W_ROWS 16

typedef struct MatvecJob
{
	QuantMatvec mv[QUANT_GROUPED_MAX_N / QUANT_MATVEC_MAX_N];	/* one per group of x's rows */
	int			ngroups;
	QuantMatvecFn fn;
} MatvecJob;

/*
 * Rows [begin, end) of a product: QUANT_GROUP_W_ROWS rows of W at a time,
 * each through every group of x's rows while they are in cache.
 */
static void
matvec_range(void *arg, size_t begin, size_t end)
{
	const MatvecJob *job = arg;

	for (size_t r0 = begin; r0 < end; r0 += QUANT_GROUP_W_ROWS)
	{
		size_t		r1 = r0 + QUANT_GROUP_W_ROWS < end ? r0 + QUANT_GROUP_W_ROWS : end;

		for (int g = 0; g < job->ngroups; g++)
			job->fn(&job->mv[g], (int64_t) r0, (int64_t) r1);
	}
}

/* y[N, rows] = x[N, cols] W^T for N <= QUANT_GROUPED_MAX_N, QUANT_MATVEC_MAX_N rows of x per group. */
static void
matvec(GgmlType type, const void *w, int64_t rows, int64_t cols, const float *x, int N, float *y)
{
	QuantMatvecKernel kernel = matvec_kernel(type);
	MatvecJob	job = {.fn = kernel.fn};
	void	   *xbuf = NULL;

	job.ngroups = (N + QUANT_MATVEC_MAX_N - 1) / QUANT_MATVEC_MAX_N;
	for (int g = 0; g < job.ngroups; g++)
	{
		int			n0 = g * QUANT_MATVEC_MAX_N;

		job.mv[g] = (QuantMatvec) {
			.type = type, .w = w, .row_bytes = quant_row_bytes(type, cols), .cols = cols,
			.x = x + (size_t) n0 * cols, .N = N - n0 < QUANT_MATVEC_MAX_N ? N - n0 : QUANT_MATVEC_MAX_N,
			.y = y + (size_t) n0 * rows, .ldy = rows
		};
	}
	if (kernel.int16_x)
	{
		/*
		 * x rounded to int16, once for all rows (each group's part on a
		 * 64-byte boundary: a row's part is a multiple of 64 bytes); on no
		 * memory, the scalar kernel
		 */
		xbuf = aligned_alloc(64, (quant_xq_bytes(N, cols) + 63) & ~(size_t) 63);
		for (int g = 0; g < job.ngroups && xbuf != NULL; g++)
			quant_xq_fill(&job.mv[g], job.mv[g].x, job.mv[g].N, cols,
						  (char *) xbuf + quant_xq_bytes(g * QUANT_MATVEC_MAX_N, cols));
		if (xbuf == NULL)
			job.fn = matvec_scalar;
	}
	/*
	 * Chunks of at least row_grain(cols N) rows: 28 of SmolLM2's 576
	 * columns, 10 KB of Q4_1 read in under a microsecond, longer than a
	 * spinning worker takes to join; so that even its 192-row matrices
	 * split over two threads, where decoding (bound by reading W from
	 * memory) ran 1.75 times as fast as on one.
	 */
	peft_parallel_for((size_t) rows, row_grain((size_t) cols * (N < QUANT_MATVEC_MAX_N ? N : QUANT_MATVEC_MAX_N)),
					  matvec_range, &job);
	free(xbuf);
}

/* ---- tiled products through BLAS ---------------------------------------------- */

typedef struct TileJob
{
	GgmlType	type;
	const uint8_t *w;
	size_t		row_bytes;
	int64_t		rows;
	int64_t		cols;
	int64_t		tile_rows;
	const float *x;				/* forward: x[N, cols]; backward: dy[N, rows] */
	int64_t		N;
	float	   *y;				/* forward: y[N, rows]; backward: dx[N, cols] */
} TileJob;

/* Rows of W per forward tile, so that a tile holds about QUANT_TILE_FLOATS values. */
static int64_t
forward_tile_rows(int64_t cols)
{
	int64_t		t = QUANT_TILE_FLOATS / (cols > 0 ? cols : 1);

	t -= t % QUANT_TILE_MIN_ROWS;
	if (t < QUANT_TILE_MIN_ROWS)
		return QUANT_TILE_MIN_ROWS;
	return t > QUANT_TILE_MAX_ROWS ? QUANT_TILE_MAX_ROWS : t;
}

/* Forward tiles [begin, end): dequantize each tile's rows, y[:, tile] = x tile^T. */
static void
forward_tiles(void *arg, size_t begin, size_t end)
{
	const TileJob *job = arg;
	float	   *buf = malloc((size_t) (job->tile_rows * job->cols) * sizeof(float));

	for (size_t t = begin; t < end; t++)
	{
		int64_t		r0 = (int64_t) t * job->tile_rows;
		int64_t		r1 = r0 + job->tile_rows < job->rows ? r0 + job->tile_rows : job->rows;

		for (int64_t r = r0; r < r1; r++)
			quant_dequantize(job->type, job->w + (size_t) r * job->row_bytes, job->cols,
							 buf + (size_t) (r - r0) * job->cols);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) job->N, (int) (r1 - r0),
					(int) job->cols, 1.0f, job->x, (int) job->cols, buf, (int) job->cols,
					0.0f, job->y + r0, (int) job->rows);
	}
	free(buf);
}

/* y[N, rows] = x[N, cols] W^T, W [rows, cols] of type. */
void
quant_matmul(GgmlType type, const void *w, int64_t rows, int64_t cols,
			 const float *x, int64_t N, float *y)
{
	TileJob		job;
	int64_t		tiles;

	if (rows <= 0 || N <= 0)
		return;
	if (cols <= 0)
	{
		memset(y, 0, (size_t) (N * rows) * sizeof(float));
		return;
	}
	if (N <= QUANT_MATVEC_MAX_N || (rows_alone && N <= QUANT_GROUPED_MAX_N))
	{
		matvec(type, w, rows, cols, x, (int) N, y);
		return;
	}
	job = (TileJob) {
		.type = type, .w = w, .row_bytes = quant_row_bytes(type, cols), .rows = rows,
		.cols = cols, .tile_rows = forward_tile_rows(cols), .x = x, .N = N, .y = y
	};
	tiles = (rows + job.tile_rows - 1) / job.tile_rows;
	parallel_for_serial_blas((size_t) tiles, 1, forward_tiles, &job);
}

/*
 * Column chunks [begin, end) of dx += dy W: for each chunk, rows of W a
 * tile at a time, dequantized over the chunk's columns, each adding
 * dy[:, tile] tile to dx[:, chunk] in row order.
 */
static void
backward_chunks(void *arg, size_t begin, size_t end)
{
	const TileJob *job = arg;
	float	   *buf = malloc((size_t) (QUANT_BWD_ROWS * QUANT_BWD_COLS) * sizeof(float));

	for (size_t k = begin; k < end; k++)
	{
		int64_t		c0 = (int64_t) k * QUANT_BWD_COLS;
		int64_t		c1 = c0 + QUANT_BWD_COLS < job->cols ? c0 + QUANT_BWD_COLS : job->cols;
		int64_t		width = c1 - c0;

		for (int64_t r0 = 0; r0 < job->rows; r0 += QUANT_BWD_ROWS)
		{
			int64_t		r1 = r0 + QUANT_BWD_ROWS < job->rows ? r0 + QUANT_BWD_ROWS : job->rows;

			for (int64_t r = r0; r < r1; r++)
				dequant_span(job->type, job->w + (size_t) r * job->row_bytes, c0, c1,
							 buf + (size_t) (r - r0) * width);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) job->N, (int) width,
						(int) (r1 - r0), 1.0f, job->x + r0, (int) job->rows, buf, (int) width,
						1.0f, job->y + c0, (int) job->cols);
		}
	}
	free(buf);
}

/* dx[N, cols] += dy[N, rows] W. */
void
quant_matmul_backward_input(GgmlType type, const void *w, int64_t rows, int64_t cols,
							const float *dy, int64_t N, float *dx)
{
	TileJob		job = {
		.type = type, .w = w, .row_bytes = quant_row_bytes(type, cols), .rows = rows,
		.cols = cols, .x = dy, .N = N, .y = dx
	};

	if (rows <= 0 || cols <= 0 || N <= 0)
		return;
	parallel_for_serial_blas((size_t) ((cols + QUANT_BWD_COLS - 1) / QUANT_BWD_COLS), 1,
							 backward_chunks, &job);
}

/* The scalar reference of quant_matmul: each row dequantized, sums in double. */
void
quant_matmul_reference(GgmlType type, const void *w, int64_t rows, int64_t cols,
					   const float *x, int64_t N, float *y)
{
	size_t		row_bytes = quant_row_bytes(type, cols);
	float	   *row = malloc((size_t) (cols > 0 ? cols : 1) * sizeof(float));

	for (int64_t r = 0; r < rows; r++)
	{
		quant_dequantize(type, (const uint8_t *) w + (size_t) r * row_bytes, cols, row);
		for (int64_t n = 0; n < N; n++)
		{
			double		s = 0;

			for (int64_t c = 0; c < cols; c++)
				s += (double) row[c] * x[n * cols + c];
			y[n * rows + r] = (float) s;
		}
	}
	free(row);
}
