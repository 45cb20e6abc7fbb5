/*
 * gemm_bf16.c - C (+)= A . op(B) with bf16 inputs and fp32 sums, on AMX
 * tiles, AVX512_BF16 or plain C (see gemm_bf16.h).
 *
 * A call packs op(B) once into the layout AMX's TDPBF16PS reads ("VNNI":
 * for each 16 columns of C, rows of 16 column pairs (k, k+1) of bf16, 64
 * bytes a row, 1 KB per 32 values of k), shared by every thread.  Each
 * thread then takes blocks of 32 rows of A, packs one block at a time into
 * its own scratch (bf16, 32 rows x 32 values of k per 2 KB, so a 16x32 tile
 * is 1 KB of consecutive bytes), and computes the block's product with
 * every 32 columns of packed B: 2x2 accumulator tiles (C), 2 tiles of A and
 * 2 of B, the 8 tiles AMX has.  K is padded with zeros to a multiple of 32,
 * N to a multiple of 32 and the rows of a block to 32, so the kernels only
 * ever see whole tiles; the padded rows and columns of C are never stored.
 *
 * gemm_bf16_rows packs the same layout from B's rows fetched (dequantized)
 * a few at a time into a thread's scratch, within the same parallel loop,
 * so the packed bytes, and hence the results, are gemm_bf16's.
 *
 * The AVX512_BF16 and scalar paths read the same packed layouts, so all
 * three round the same inputs the same way: only the order of the fp32
 * sums differs.  The tile and AVX-512 code carries function-level target
 * attributes and runs only after the CPU (and Linux, for AMX) said yes, so
 * the file builds with the engine's baseline x86-64 flags and, without
 * them, on any other CPU.
 */
#include "gemm_bf16.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GEMM_BF16_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Values of k in one tile row: 64 bytes of bf16. */
#define KBLOCK 32
/* Rows (and fp32 columns) of an AMX tile. */
#define TILE 16
/* Rows and columns of C one kernel call computes: 2x2 tiles. */
#define BLOCK 32
/* Scratch alignment: a cache line, which tile loads like. */
#define ALIGN 64

/*
 * Least floating-point work a thread's share of a product should hold:
 * below about 4 MFLOP (a few microseconds even on one core's AMX, and
 * hundreds on the scalar path) waking a worker costs more than it saves.
 */
#define MIN_FLOP_PER_CHUNK 4e6

/* A product's arguments, its packed B and how its blocks are split. */
typedef struct GemmBf16Job
{
	GemmBf16Path path;
	bool		trans_b;
	bool		accumulate;
	int			M;
	int			N;
	int			K;
	int			kp;				/* K rounded up to KBLOCK */
	int			np;				/* N rounded up to BLOCK */
	const float *A;
	int			lda;
	const float *B;				/* NULL for gemm_bf16_rows: bp holds op(B) */
	int			ldb;
	GemmBf16RowsFn rows;		/* gemm_bf16_rows: B's rows, dequantized */
	const void *rows_ctx;
	int			chunk;			/* rows of B one rows() call gives (even; not trans_b) */
	size_t		scratch_floats; /* floats of a thread's rows() scratch */
	int			pack_failed;	/* a thread had no scratch (atomic) */
	float	   *C;
	int			ldc;
	uint16_t   *bp;				/* packed B: np / TILE tiles of kp * TILE values */
	int			row_blocks;		/* ceil(M / BLOCK) */
	int			col_blocks;		/* np / BLOCK */
	int			col_chunks;		/* column ranges each row block is split into */
} GemmBf16Job;

/* Values between one 16-column tile of packed B and the next. */
static inline size_t
b_tile_stride(int kp)
{
	return (size_t) kp * TILE;
}

/* Round x to bf16 (nearest even; NaN stays a quiet NaN; denormals to 0). */
static inline uint16_t
bf16_bits(float x)
{
	uint32_t	u;

	memcpy(&u, &x, sizeof(u));
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t) ((u >> 16) | 0x40u);
	/* vcvtne2ps2bf16 reads a float32 denormal as zero (keeping its sign) */
	if ((u & 0x7f800000u) == 0)
		return (uint16_t) ((u >> 16) & 0x8000u);
	return (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* The float a bf16 value stands for. */
static inline float
bf16_float(uint16_t h)
{
	uint32_t	u = (uint32_t) h << 16;
	float		x;

	memcpy(&x, &u, sizeof(x));
	return x;
}

/* x rounded to bf16 as the kernels round their inputs, back as a float. */
float
gemm_bf16_round(float x)
{
	return bf16_float(bf16_bits(x));
}

/* ---- packing, plain C ------------------------------------------------------ */

/*
 * Where a packer reads op(B): src with row stride ld, its first row being
 * B's row base (trans_b: src row n - base holds column n of op(B); else src
 * row k - base holds row k).  For gemm_bf16, B itself from row 0; for
 * gemm_bf16_rows, a thread's scratch of dequantized rows.
 */
typedef struct BSource
{
	const float *src;
	int			ld;
	int			base;
} BSource;

/* Element (k, n) of op(B) from a source, or 0 outside K x N. */
static inline float
op_b_from(const GemmBf16Job *job, BSource s, int k, int n)
{
	if (k >= job->K || n >= job->N)
		return 0.0f;
	return job->trans_b ? s.src[(size_t) (n - s.base) * s.ld + k] : s.src[(size_t) (k - s.base) * s.ld + n];
}

/* Element (k, n) of op(B) as packed in bp (its bf16 value). */
static inline float
op_b_packed(const GemmBf16Job *job, int k, int n)
{
	return bf16_float(job->bp[(size_t) (n / TILE) * b_tile_stride(job->kp) + (size_t) (k / 2) * 2 * TILE +
							  2 * (n % TILE) + k % 2]);
}

/* Element (k, n) of op(B), or 0 outside K x N: from B, or from the packed B when there is no B. */
static inline float
op_b(const GemmBf16Job *job, int k, int n)
{
	if (job->B == NULL)
		return k < job->K && n < job->N ? op_b_packed(job, k, n) : 0.0f;
	return op_b_from(job, (BSource) {job->B, job->ldb, 0}, k, n);
}

/*
 * Pack rows [k0, k1) (even) of 16-column tiles [t0, t1) of op(B) from s:
 * value (k, c) of tile t at kk = k/2, c, k%2.
 */
static void
pack_b_scalar(const GemmBf16Job *job, int t0, int t1, int k0, int k1, BSource s)
{
	for (int t = t0; t < t1; t++)
	{
		uint16_t   *dst = job->bp + (size_t) t * b_tile_stride(job->kp);

		for (int kk = k0 / 2; kk < k1 / 2; kk++)
			for (int c = 0; c < TILE; c++)
			{
				dst[(size_t) kk * 2 * TILE + 2 * c] = bf16_bits(op_b_from(job, s, 2 * kk, t * TILE + c));
				dst[(size_t) kk * 2 * TILE + 2 * c + 1] = bf16_bits(op_b_from(job, s, 2 * kk + 1, t * TILE + c));
			}
	}
}

/*
 * Pack rows [r0, r0 + BLOCK) of A: 32 values of k of the block's 32 rows
 * per 2 KB (row r at r * KBLOCK), zeros past M and K.
 */
static void
pack_a_scalar(const GemmBf16Job *job, int r0, uint16_t *ap)
{
	for (int r = 0; r < BLOCK; r++)
	{
		const float *src = job->A + (size_t) (r0 + r) * job->lda;

		for (int k = 0; k < job->kp; k++)
		{
			float		x = (r0 + r < job->M && k < job->K) ? src[k] : 0.0f;

			ap[(size_t) (k / KBLOCK) * BLOCK * KBLOCK + r * KBLOCK + k % KBLOCK] = bf16_bits(x);
		}
	}
}

/* ---- kernels, plain C ------------------------------------------------------ */

/*
 * Store a 32x32 block of results acc into C's rows x cols corner, adding
 * what C holds when accumulating.
 */
static inline void
store_block(const float *acc, float *C, int ldc, int rows, int cols, bool accumulate)
{
	for (int i = 0; i < rows; i++)
	{
		float	   *c = C + (size_t) i * ldc;

		for (int j = 0; j < cols; j++)
			c[j] = accumulate ? c[j] + acc[i * BLOCK + j] : acc[i * BLOCK + j];
	}
}

/*
 * C block (rows x cols of a 32x32 block) (+)= packed A block . packed B
 * tiles bp and bp + b_tile_stride, in plain C: each (k, k+1) pair added in
 * turn, as vdpbf16ps does.
 */
static void
block_scalar(const uint16_t *ap, const uint16_t *bp, int kp, float *C, int ldc,
			 int rows, int cols, bool accumulate)
{
	float		acc[BLOCK * BLOCK];

	for (int i = 0; i < rows; i++)
		for (int tj = 0; tj < BLOCK / TILE; tj++)
		{
			const uint16_t *b = bp + tj * b_tile_stride(kp);
			float		sum[TILE] = {0};

			for (int kk = 0; kk < kp / 2; kk++)
			{
				const uint16_t *a = ap + (size_t) (kk / TILE) * BLOCK * KBLOCK + i * KBLOCK + (kk % TILE) * 2;
				float		a0 = bf16_float(a[0]);
				float		a1 = bf16_float(a[1]);
				const uint16_t *brow = b + (size_t) kk * 2 * TILE;

				for (int c = 0; c < TILE; c++)
				{
					sum[c] += a0 * bf16_float(brow[2 * c]);
					sum[c] += a1 * bf16_float(brow[2 * c + 1]);
				}
			}
			memcpy(acc + i * BLOCK + tj * TILE, sum, sizeof(sum));
		}
	store_block(acc, C, ldc, rows, cols, accumulate);
}

#ifdef GEMM_BF16_X86

#define TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TARGET_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

/*
 * GCC's tile intrinsics are asm statements that tell the compiler nothing
 * about the memory they read and write: fence them so that packing stores
 * land before the tile loads and tile stores before C is read back.
 */
#define COMPILER_BARRIER() __asm__ __volatile__("" ::: "memory")

/* ---- packing, AVX-512 ------------------------------------------------------ */

/* Lanes [0, n) of a 16-lane mask, n clamped to [0, 16]. */
static inline __mmask16
lanes(int n)
{
	return n <= 0 ? 0 : n >= 16 ? 0xffff : (__mmask16) ((1u << n) - 1);
}

/* 32 floats from src (n of them valid, the rest 0) rounded to bf16. */
TARGET_AVX512BF16 static inline __m512i
load_bf16x32(const float *src, int n)
{
	__m512		lo;
	__m512		hi;

	if (n >= KBLOCK)
	{
		lo = _mm512_loadu_ps(src);
		hi = _mm512_loadu_ps(src + 16);
	}
	else
	{
		lo = _mm512_maskz_loadu_ps(lanes(n), src);
		hi = _mm512_maskz_loadu_ps(lanes(n - 16), src + 16);
	}
	/* the second operand fills the low 16 values */
	return (__m512i) _mm512_cvtne2ps_pbh(hi, lo);
}

/* Transpose a 16x16 matrix of 32-bit values held one row per register. */
TARGET_AVX512BF16 static inline void
transpose_16x16(__m512i r[16])
{
	__m512i		t[16];
	__m512i		u[16];

	/* within each 128-bit lane: 4x4 blocks transposed in two steps */
	for (int i = 0; i < 8; i++)
	{
		t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
	}
	for (int i = 0; i < 4; i++)
	{
		u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
		u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
		u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
		u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
	}
	/* u[4i + j], lane L: rows 4i..4i+3 of column 4L + j; gather lane L of the four */
	for (int j = 0; j < 4; j++)
	{
		__m512i		v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x44);
		__m512i		v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xee);
		__m512i		v2 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x44);
		__m512i		v3 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xee);

		r[j] = _mm512_shuffle_i32x4(v0, v2, 0x88);
		r[4 + j] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
		r[8 + j] = _mm512_shuffle_i32x4(v1, v3, 0x88);
		r[12 + j] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
	}
}

/*
 * pack_b_scalar with AVX-512: B [N,K] (trans_b; k0 and k1 then multiples
 * of KBLOCK) by 16x16 transposes of k pairs.
 */
TARGET_AVX512BF16 static void
pack_b_avx512(const GemmBf16Job *job, int t0, int t1, int k0, int k1, BSource s)
{
	int			K = job->K;

	for (int t = t0; t < t1; t++)
	{
		uint16_t   *dst = job->bp + (size_t) t * b_tile_stride(job->kp);
		int			n0 = t * TILE;
		int			ncols = job->N - n0;

		if (job->trans_b)
		{
			const float *src = s.src + (size_t) (n0 - s.base) * s.ld;

			for (int kb = k0; kb < k1; kb += KBLOCK)
			{
				__m512i		r[16];

				/* row c: the 16 (k, k+1) pairs of column n0 + c, then transposed */
				for (int c = 0; c < TILE; c++)
					r[c] = c < ncols ? load_bf16x32(src + (size_t) c * s.ld + kb, K - kb)
						: _mm512_setzero_si512();
				transpose_16x16(r);
				for (int kk = 0; kk < TILE; kk++)
					_mm512_store_si512(dst + (size_t) (kb / 2 + kk) * 2 * TILE, r[kk]);
			}
		}
		else
		{
			/* value c of row k goes to word 2c, of row k + 1 to word 2c + 1 */
			const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12,
														27, 11, 26, 10, 25, 9, 24, 8,
														23, 7, 22, 6, 21, 5, 20, 4,
														19, 3, 18, 2, 17, 1, 16, 0);
			__mmask16	m = lanes(ncols);

			for (int kk = k0 / 2; kk < k1 / 2; kk++)
			{
				int			k = 2 * kk;
				const float *src = s.src + (size_t) (k - s.base) * s.ld + n0;
				__m512		r0 = k < K ? _mm512_maskz_loadu_ps(m, src) : _mm512_setzero_ps();
				__m512		r1 = k + 1 < K ? _mm512_maskz_loadu_ps(m, src + s.ld) : _mm512_setzero_ps();
				__m512i		w = (__m512i) _mm512_cvtne2ps_pbh(r1, r0);

				_mm512_store_si512(dst + (size_t) kk * 2 * TILE, _mm512_permutexvar_epi16(interleave, w));
			}
		}
	}
}

/* pack_a_scalar with AVX-512. */
TARGET_AVX512BF16 static void
pack_a_avx512(const GemmBf16Job *job, int r0, uint16_t *ap)
{
	for (int r = 0; r < BLOCK; r++)
	{
		const float *src = job->A + (size_t) (r0 + r) * job->lda;
		bool		valid = r0 + r < job->M;

		for (int k0 = 0; k0 < job->kp; k0 += KBLOCK)
			_mm512_store_si512(ap + (size_t) (k0 / KBLOCK) * BLOCK * KBLOCK + r * KBLOCK,
							   valid ? load_bf16x32(src + k0, job->K - k0) : _mm512_setzero_si512());
	}
}

/* ---- kernels, AVX512_BF16 and AMX ------------------------------------------ */

/* block_scalar with vdpbf16ps: 8 rows x 32 columns of accumulators at a time. */
TARGET_AVX512BF16 static void
block_avx512(const uint16_t *ap, const uint16_t *bp, int kp, float *C, int ldc,
			 int rows, int cols, bool accumulate)
{
	__mmask16	m0 = lanes(cols);
	__mmask16	m1 = lanes(cols - 16);

	for (int i0 = 0; i0 < rows; i0 += 8)
	{
		__m512		acc[8][2];

		for (int i = 0; i < 8; i++)
			acc[i][0] = acc[i][1] = _mm512_setzero_ps();
		for (int kc = 0; kc < kp / KBLOCK; kc++)
		{
			const uint16_t *a = ap + (size_t) kc * BLOCK * KBLOCK + i0 * KBLOCK;
			const uint16_t *b0 = bp + (size_t) kc * KBLOCK * TILE;
			const uint16_t *b1 = b0 + b_tile_stride(kp);

			for (int kk = 0; kk < TILE; kk++)
			{
				__m512bh	vb0 = (__m512bh) _mm512_load_si512(b0 + kk * 2 * TILE);
				__m512bh	vb1 = (__m512bh) _mm512_load_si512(b1 + kk * 2 * TILE);

				for (int i = 0; i < 8; i++)
				{
					int32_t		pair;
					__m512bh	va;

					memcpy(&pair, a + i * KBLOCK + kk * 2, sizeof(pair));
					va = (__m512bh) _mm512_set1_epi32(pair);
					acc[i][0] = _mm512_dpbf16_ps(acc[i][0], va, vb0);
					acc[i][1] = _mm512_dpbf16_ps(acc[i][1], va, vb1);
				}
			}
		}
		for (int i = 0; i < 8 && i0 + i < rows; i++)
		{
			float	   *c = C + (size_t) (i0 + i) * ldc;

			if (accumulate)
			{
				acc[i][0] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), acc[i][0]);
				acc[i][1] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), acc[i][1]);
			}
			_mm512_mask_storeu_ps(c, m0, acc[i][0]);
			_mm512_mask_storeu_ps(c + 16, m1, acc[i][1]);
		}
	}
}

/* Tile configuration: palette 1, all 8 tiles 16 rows of 64 bytes. */
typedef struct __attribute__((aligned(64))) TileConfig
{
	uint8_t		palette;
	uint8_t		start_row;
	uint8_t		reserved[14];
	uint16_t	colsb[16];
	uint8_t		rows[16];
} TileConfig;

/*
 * Constant, so no store to it can be lost: GCC 12's _tile_loadconfig tells
 * the compiler it reads 8 bytes of the 64.
 */
static const TileConfig amx_config = {
	.palette = 1,
	.colsb = {64, 64, 64, 64, 64, 64, 64, 64},
	.rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* Load this thread's tile configuration (tiles are per-thread state). */
TARGET_AMX static void
amx_begin(void)
{
	_tile_loadconfig(&amx_config);
}

/* Give the tile state back, so the kernel need not save it on a switch. */
TARGET_AMX static void
amx_end(void)
{
	_tile_release();
}

/*
 * block_scalar on AMX: tiles 0-3 hold C (rows 0-15 and 16-31 by columns
 * 0-15 and 16-31), 4-5 the block's two 16-row tiles of A, 6-7 B's two
 * 16-column tiles.  Whole blocks load and store C in place; edge blocks go
 * through a scratch block.
 */
TARGET_AMX static void
block_amx(const uint16_t *ap, const uint16_t *bp, int kp, float *C, int ldc,
		  int rows, int cols, bool accumulate)
{
	float		acc[BLOCK * BLOCK] __attribute__((aligned(64)));
	bool		whole = rows == BLOCK && cols == BLOCK;
	long		cs = (long) ldc * (long) sizeof(float);
	const uint16_t *b1 = bp + b_tile_stride(kp);

	COMPILER_BARRIER();
	if (whole && accumulate)
	{
		_tile_loadd(0, C, cs);
		_tile_loadd(1, C + TILE, cs);
		_tile_loadd(2, C + (size_t) TILE * ldc, cs);
		_tile_loadd(3, C + (size_t) TILE * ldc + TILE, cs);
	}
	else
	{
		_tile_zero(0);
		_tile_zero(1);
		_tile_zero(2);
		_tile_zero(3);
	}
	for (int kc = 0; kc < kp / KBLOCK; kc++)
	{
		const uint16_t *a = ap + (size_t) kc * BLOCK * KBLOCK;
		size_t		boff = (size_t) kc * KBLOCK * TILE;

		_tile_loadd(4, a, 64);
		_tile_loadd(6, bp + boff, 64);
		_tile_dpbf16ps(0, 4, 6);
		_tile_loadd(7, b1 + boff, 64);
		_tile_dpbf16ps(1, 4, 7);
		_tile_loadd(5, a + TILE * KBLOCK, 64);
		_tile_dpbf16ps(2, 5, 6);
		_tile_dpbf16ps(3, 5, 7);
	}
	if (whole)
	{
		_tile_stored(0, C, cs);
		_tile_stored(1, C + TILE, cs);
		_tile_stored(2, C + (size_t) TILE * ldc, cs);
		_tile_stored(3, C + (size_t) TILE * ldc + TILE, cs);
		COMPILER_BARRIER();
		return;
	}
	_tile_stored(0, acc, BLOCK * sizeof(float));
	_tile_stored(1, acc + TILE, BLOCK * sizeof(float));
	_tile_stored(2, acc + TILE * BLOCK, BLOCK * sizeof(float));
	_tile_stored(3, acc + TILE * BLOCK + TILE, BLOCK * sizeof(float));
	COMPILER_BARRIER();
	store_block(acc, C, ldc, rows, cols, accumulate);
}

/* Whether the CPU has AVX-512 F/BW/VL (enabled by the OS) and AVX512_BF16. */
static bool
cpu_has_avx512bf16(void)
{
	unsigned	a,
				b,
				c,
				d;

	__builtin_cpu_init();
	if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
		!__builtin_cpu_supports("avx512vl"))
		return false;
	/* CPUID leaf 7, sub-leaf 1: EAX bit 5 is AVX512_BF16 */
	if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
		return false;
	return (a & (1u << 5)) != 0;
}

/* Linux's arch_prctl requests (asm/prctl.h), for older headers. */
#ifndef ARCH_REQ_XCOMP_PERM
#define ARCH_REQ_XCOMP_PERM 0x1023
#endif
/* The AMX tile data state component (XTILEDATA) of XSAVE. */
#define XFEATURE_XTILEDATA 18

static bool amx_usable = false;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

/*
 * Ask once whether AMX can run: CPUID leaf 7 EDX bits 24 (AMX-TILE) and 22
 * (AMX-BF16), then Linux's permission to use the tile state, which it
 * grants per process (every thread, present and future); the tile
 * configuration itself is per thread (amx_begin).
 */
static void
amx_probe(void)
{
	unsigned	a,
				b,
				c,
				d;

	if (!cpu_has_avx512bf16())
		return;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return;
	if (!(d & (1u << 24)) || !(d & (1u << 22)))
		return;
	if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
		return;
	amx_usable = true;
}

#endif							/* GEMM_BF16_X86 */

/* Whether AMX tiles can run here (asked of the CPU and Linux once). */
bool
gemm_bf16_amx_available(void)
{
#ifdef GEMM_BF16_X86
	pthread_once(&amx_once, amx_probe);
	return amx_usable;
#else
	return false;
#endif
}

/* Whether a path can run on this CPU. */
bool
gemm_bf16_path_available(GemmBf16Path path)
{
	switch (path)
	{
		case GEMM_BF16_AUTO:
		case GEMM_BF16_SCALAR:
			return true;
		case GEMM_BF16_AMX:
			return gemm_bf16_amx_available();
		case GEMM_BF16_AVX512:
#ifdef GEMM_BF16_X86
			return cpu_has_avx512bf16();
#else
			return false;
#endif
	}
	return false;
}

/* The path gemm_bf16 takes: the first of AMX, AVX512_BF16, scalar available. */
GemmBf16Path
gemm_bf16_best_path(void)
{
	static GemmBf16Path best = GEMM_BF16_AUTO;
	GemmBf16Path p = __atomic_load_n(&best, __ATOMIC_ACQUIRE);

	if (p != GEMM_BF16_AUTO)
		return p;
	if (gemm_bf16_path_available(GEMM_BF16_AMX))
		p = GEMM_BF16_AMX;
	else if (gemm_bf16_path_available(GEMM_BF16_AVX512))
		p = GEMM_BF16_AVX512;
	else
		p = GEMM_BF16_SCALAR;
	__atomic_store_n(&best, p, __ATOMIC_RELEASE);
	return p;
}

/* A path's name. */
const char *
gemm_bf16_path_name(GemmBf16Path path)
{
	switch (path == GEMM_BF16_AUTO ? gemm_bf16_best_path() : path)
	{
		case GEMM_BF16_AMX:
			return "amx";
		case GEMM_BF16_AVX512:
			return "avx512";
		default:
			return "scalar";
	}
}

/* ---- the product ----------------------------------------------------------- */

/* Pack rows [k0, k1) of tiles [t0, t1) of op(B) from s with the path's packer. */
static void
pack_b(const GemmBf16Job *job, int t0, int t1, int k0, int k1, BSource s)
{
#ifdef GEMM_BF16_X86
	if (job->path != GEMM_BF16_SCALAR)
	{
		pack_b_avx512(job, t0, t1, k0, k1, s);
		return;
	}
#endif
	pack_b_scalar(job, t0, t1, k0, k1, s);
}

/* Pack 16-column tiles [begin, end) of op(B) (a peft_parallel_for range). */
static void
pack_b_range(void *arg, size_t begin, size_t end)
{
	const GemmBf16Job *job = arg;

	pack_b(job, (int) begin, (int) end, 0, job->kp, (BSource) {job->B, job->ldb, 0});
}

/*
 * C[r0:r1, c0:c1] (+)= A . op(B) element by element, rounding as the
 * packers do: for K = 0, and when the packed B or a thread's packed rows
 * cannot be allocated (slow, but the product never fails).
 */
static void
rows_unpacked(const GemmBf16Job *job, int r0, int r1, int c0, int c1)
{
	for (int i = r0; i < r1; i++)
		for (int j = c0; j < c1; j++)
		{
			float		sum = 0.0f;
			float	   *c = job->C + (size_t) i * job->ldc + j;

			for (int k = 0; k < job->K; k++)
				sum += gemm_bf16_round(job->A[(size_t) i * job->lda + k]) * gemm_bf16_round(op_b(job, k, j));
			*c = job->accumulate ? *c + sum : sum;
		}
}

/* Pack a row block into ap with the path's packer. */
static void
pack_a(const GemmBf16Job *job, int r0, uint16_t *ap)
{
#ifdef GEMM_BF16_X86
	if (job->path != GEMM_BF16_SCALAR)
	{
		pack_a_avx512(job, r0, ap);
		return;
	}
#endif
	pack_a_scalar(job, r0, ap);
}

/* C block at row r0, column c0 (+)= packed A block . packed B columns c0.. on the job's path. */
static void
block(const GemmBf16Job *job, const uint16_t *ap, int r0, int c0)
{
	int			rows = job->M - r0 < BLOCK ? job->M - r0 : BLOCK;
	int			cols = job->N - c0 < BLOCK ? job->N - c0 : BLOCK;
	const uint16_t *bp = job->bp + (size_t) (c0 / TILE) * b_tile_stride(job->kp);
	float	   *C = job->C + (size_t) r0 * job->ldc + c0;

	switch (job->path)
	{
#ifdef GEMM_BF16_X86
		case GEMM_BF16_AMX:
			block_amx(ap, bp, job->kp, C, job->ldc, rows, cols, job->accumulate);
			break;
		case GEMM_BF16_AVX512:
			block_avx512(ap, bp, job->kp, C, job->ldc, rows, cols, job->accumulate);
			break;
#endif
		default:
			block_scalar(ap, bp, job->kp, C, job->ldc, rows, cols, job->accumulate);
			break;
	}
}

/*
 * Work items [begin, end): item u is row block u / col_chunks and that
 * block's column range u % col_chunks.  A row block is packed once and
 * meets the columns of B in order, so C is written row block by row block,
 * 32 sequential streams.  (Packing several row blocks and taking each 32
 * columns of B through all of them reads B less often but scatters the
 * writes of C over more rows: with 128 rows, SmolLM2's 1536-column forward
 * ran at half the speed.)
 */
/* A thread's buffers, kept between calls: A's packing, the shared packed B, rows of B. */
typedef enum BufferKind
{
	BUFFER_A,
	BUFFER_B,
	BUFFER_ROWS,
	NUM_BUFFERS
} BufferKind;

typedef struct ThreadBuffers
{
	void	   *p[NUM_BUFFERS];
	size_t		cap[NUM_BUFFERS];
} ThreadBuffers;

static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;
static bool buffers_key_ok;

/* At a thread's exit: its buffers go with it (the engine's pool ends its threads at shutdown). */
static void
free_thread_buffers(void *arg)
{
	ThreadBuffers *t = arg;

	for (int k = 0; k < NUM_BUFFERS; k++)
		free(t->p[k]);
	free(t);
}

static void
make_buffers_key(void)
{
	buffers_key_ok = pthread_key_create(&buffers_key, free_thread_buffers) == 0;
}

/*
 * The calling thread's buffer of kind k, at least bytes, kept between
 * calls and grown as needed: training makes thousands of products a step,
 * and a buffer freed and allocated again each time came back as page
 * faults (5% of a step).  NULL when the memory is not there.
 */
static void *
thread_buffer(BufferKind k, size_t bytes)
{
	ThreadBuffers *t;

	pthread_once(&buffers_once, make_buffers_key);
	if (!buffers_key_ok)
		return NULL;
	if ((t = pthread_getspecific(buffers_key)) == NULL)
	{
		if ((t = calloc(1, sizeof(ThreadBuffers))) == NULL)
			return NULL;
		if (pthread_setspecific(buffers_key, t) != 0)
		{
			free(t);
			return NULL;
		}
	}
	if (bytes > t->cap[k])
	{
		void	   *p = aligned_alloc(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);

		if (p == NULL)
			return NULL;
		free(t->p[k]);
		t->p[k] = p;
		t->cap[k] = bytes;
	}
	return t->p[k];
}

static void
compute_range(void *arg, size_t begin, size_t end)
{
	const GemmBf16Job *job = arg;
	uint16_t   *ap = thread_buffer(BUFFER_A, (size_t) BLOCK * job->kp * sizeof(uint16_t));
	int			packed = -1;

#ifdef GEMM_BF16_X86
	if (ap != NULL && job->path == GEMM_BF16_AMX)
		amx_begin();
#endif
	for (size_t u = begin; u < end; u++)
	{
		int			rb = (int) (u / job->col_chunks);
		int			cc = (int) (u % job->col_chunks);
		int			cb0 = (int) ((long) cc * job->col_blocks / job->col_chunks);
		int			cb1 = (int) ((long) (cc + 1) * job->col_blocks / job->col_chunks);

		if (ap == NULL)
		{
			int			r1 = (rb + 1) * BLOCK < job->M ? (rb + 1) * BLOCK : job->M;
			int			c1 = cb1 * BLOCK < job->N ? cb1 * BLOCK : job->N;

			rows_unpacked(job, rb * BLOCK, r1, cb0 * BLOCK, c1);
			continue;
		}
		if (rb != packed)
		{
			pack_a(job, rb * BLOCK, ap);
			packed = rb;
		}
		for (int cb = cb0; cb < cb1; cb++)
			block(job, ap, rb * BLOCK, cb * BLOCK);
	}
#ifdef GEMM_BF16_X86
	if (ap != NULL && job->path == GEMM_BF16_AMX)
		amx_end();
#endif
}

/*
 * A product's job before op(B) is packed: its shape, A and C, the path, and
 * how B's columns are laid out in tiles.
 */
static void
job_init(GemmBf16Job *job, GemmBf16Path path, bool trans_b, int M, int N, int K,
		 const float *A, int lda, float *C, int ldc, bool accumulate)
{
	if (path == GEMM_BF16_AUTO || !gemm_bf16_path_available(path))
		path = gemm_bf16_best_path();
	memset(job, 0, sizeof(*job));
	job->path = path;
	job->trans_b = trans_b;
	job->accumulate = accumulate;
	job->M = M;
	job->N = N;
	job->K = K > 0 ? K : 0;
	job->kp = (job->K + KBLOCK - 1) / KBLOCK * KBLOCK;
	job->np = (N + BLOCK - 1) / BLOCK * BLOCK;
	job->A = A;
	job->lda = lda;
	job->C = C;
	job->ldc = ldc;
	job->row_blocks = (M + BLOCK - 1) / BLOCK;
	job->col_blocks = job->np / BLOCK;
	job->col_chunks = 1;
}

/* The shared packed B of a job (the calling thread's, kept), or NULL. */
static uint16_t *
job_packed_b(const GemmBf16Job *job)
{
	if (job->kp == 0)
		return NULL;
	return thread_buffer(BUFFER_B,
						 (size_t) job->np / TILE * b_tile_stride(job->kp) * sizeof(uint16_t));
}

/* C (+)= A . packed op(B), split over the threads. */
static void
job_compute(GemmBf16Job *job)
{
	int			threads = peft_threads_count();
	size_t		items;
	double		item_flop;
	size_t		grain;

	/*
	 * Rows split the work best (each thread packs only its own rows of A);
	 * with fewer than 4 row blocks a thread, columns are split too.
	 */
	job->col_chunks = 1;
	if (threads > 1 && job->row_blocks < 4 * threads)
	{
		job->col_chunks = (4 * threads + job->row_blocks - 1) / job->row_blocks;
		if (job->col_chunks > job->col_blocks)
			job->col_chunks = job->col_blocks;
	}
	items = (size_t) job->row_blocks * job->col_chunks;
	item_flop = 2.0 * BLOCK * ((double) job->np / job->col_chunks) * job->kp;
	grain = (size_t) (MIN_FLOP_PER_CHUNK / item_flop) + 1;
	peft_parallel_for(items, grain, compute_range, job);
}

/* C (+)= A . op(B) on a given path (see gemm_bf16.h). */
void
gemm_bf16_on(GemmBf16Path path, bool trans_b, int M, int N, int K,
			 const float *A, int lda, const float *B, int ldb,
			 float *C, int ldc, bool accumulate)
{
	GemmBf16Job job;

	if (M <= 0 || N <= 0)
		return;
	job_init(&job, path, trans_b, M, N, K, A, lda, C, ldc, accumulate);
	job.B = B;
	job.ldb = ldb;

	/* B packed once, shared; without memory for it, the unpacked loop */
	job.bp = job_packed_b(&job);
	if (job.bp == NULL)
	{
		rows_unpacked(&job, 0, M, 0, N);
		return;
	}
	peft_parallel_for((size_t) job.np / TILE, 1 + PARALLEL_GRAIN / b_tile_stride(job.kp), pack_b_range, &job);
	job_compute(&job);
}

/* C (+)= A . op(B) on the fastest path this machine has. */
void
gemm_bf16(bool trans_b, int M, int N, int K,
		  const float *A, int lda, const float *B, int ldb,
		  float *C, int ldc, bool accumulate)
{
	gemm_bf16_on(GEMM_BF16_AUTO, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

/* ---- B given by rows ------------------------------------------------------- */

/*
 * Floats of B's rows a thread dequantizes at a time when B is [K,N]
 * (32 KB: they stay in L1 while they are packed).
 */
#define ROWS_SCRATCH_FLOATS 8192

/* The thread's scratch for a job's rows of B, or NULL (the job then marked failed). */
static float *
rows_scratch(GemmBf16Job *job)
{
	float	   *scratch = thread_buffer(BUFFER_ROWS, job->scratch_floats * sizeof(float));

	if (scratch == NULL)
		__atomic_store_n(&job->pack_failed, 1, __ATOMIC_RELAXED);
	return scratch;
}

/*
 * trans_b: 16-column tiles [begin, end) of op(B), each from its 16 rows of
 * B [N,K] fetched into the thread's scratch and packed from there.
 */
static void
pack_rows_trans_range(void *arg, size_t begin, size_t end)
{
	GemmBf16Job *job = arg;
	float	   *scratch = rows_scratch(job);

	if (scratch == NULL)
		return;
	for (size_t t = begin; t < end; t++)
	{
		int			n0 = (int) t * TILE;
		int			n = job->N - n0 < TILE ? job->N - n0 : TILE;

		/* a tile wholly past N (N rounded up to 32) is zeros: nothing to fetch */
		if (n > 0)
			job->rows(job->rows_ctx, n0, n, scratch);
		pack_b(job, (int) t, (int) t + 1, 0, job->kp, (BSource) {scratch, job->K, n0});
	}
}

/*
 * Not trans_b: blocks [begin, end) of KBLOCK rows of B [K,N], chunk rows
 * at a time fetched into the thread's scratch and packed into every tile.
 */
static void
pack_rows_plain_range(void *arg, size_t begin, size_t end)
{
	GemmBf16Job *job = arg;
	float	   *scratch = rows_scratch(job);
	int			tiles = job->np / TILE;

	if (scratch == NULL)
		return;
	for (size_t b = begin; b < end; b++)
	{
		int			kend = (int) (b + 1) * KBLOCK;

		for (int k0 = (int) b * KBLOCK; k0 < kend; k0 += job->chunk)
		{
			int			k1 = k0 + job->chunk < kend ? k0 + job->chunk : kend;
			int			n = (k1 < job->K ? k1 : job->K) - k0;

			/* rows past K (K rounded up to 32) are zeros: nothing to fetch */
			if (n > 0)
				job->rows(job->rows_ctx, k0, n, scratch);
			pack_b(job, 0, tiles, k0, k1, (BSource) {scratch, job->N, k0});
		}
	}
}

/* C (+)= A . op(B), B given by rows, on a given path (see gemm_bf16.h). */
bool
gemm_bf16_rows_on(GemmBf16Path path, bool trans_b, int M, int N, int K,
				  const float *A, int lda, GemmBf16RowsFn rows, const void *ctx,
				  float *C, int ldc, bool accumulate)
{
	GemmBf16Job job;
	size_t		items;
	size_t		grain;
	PeftRangeFn pack;

	if (M <= 0 || N <= 0)
		return true;
	job_init(&job, path, trans_b, M, N, K, A, lda, C, ldc, accumulate);
	job.rows = rows;
	job.rows_ctx = ctx;
	if (job.kp == 0)
	{
		/* K = 0: C = 0 or left as it is, B never read */
		rows_unpacked(&job, 0, M, 0, N);
		return true;
	}
	if (trans_b)
	{
		/* 16 whole rows of B [N,K] make a tile's 16 columns of op(B) */
		job.scratch_floats = (size_t) TILE * job.K;
		items = (size_t) job.np / TILE;
		grain = 1 + PARALLEL_GRAIN / b_tile_stride(job.kp);
		pack = pack_rows_trans_range;
	}
	else
	{
		/* an even number of rows of B [K,N] (pairs of k), 2 to KBLOCK of them */
		job.chunk = ROWS_SCRATCH_FLOATS / N / 2 * 2;
		job.chunk = job.chunk < 2 ? 2 : job.chunk > KBLOCK ? KBLOCK : job.chunk;
		job.scratch_floats = (size_t) job.chunk * N;
		items = (size_t) job.kp / KBLOCK;
		grain = 1 + PARALLEL_GRAIN / ((size_t) KBLOCK * job.np);
		pack = pack_rows_plain_range;
	}

	/*
	 * The calling thread's packed B and scratch first: without them nothing
	 * is done.  A worker without scratch leaves its tiles, and the calling
	 * thread then packs them all itself.
	 */
	job.bp = job_packed_b(&job);
	if (job.bp == NULL || rows_scratch(&job) == NULL)
		return false;
	peft_parallel_for(items, grain, pack, &job);
	if (__atomic_load_n(&job.pack_failed, __ATOMIC_RELAXED))
		pack(&job, 0, items);
	job_compute(&job);
	return true;
}

/* gemm_bf16_rows_on on the fastest path this machine has. */
bool
gemm_bf16_rows(bool trans_b, int M, int N, int K, const float *A, int lda,
			   GemmBf16RowsFn rows, const void *ctx, float *C, int ldc, bool accumulate)
{
	return gemm_bf16_rows_on(GEMM_BF16_AUTO, trans_b, M, N, K, A, lda, rows, ctx, C, ldc, accumulate);
}
