/*
 * quant_kernels.h - what quant.c and its vector kernels
 * (quant_kernels_x86.c) share: ggml's block layouts, the fp16 and K-quant
 * scale decoders, and the matrix-vector kernel interface.  Internal to the
 * engine; quant.h is the interface.
 *
 * The blocks are packed structs: a row's blocks follow one another with no
 * padding, so a block (and its fp16 fields) can sit at any even or odd
 * address of a mapped file.
 */
#ifndef PEFT_ENGINE_QUANT_KERNELS_H
#define PEFT_ENGINE_QUANT_KERNELS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include "gguf.h"

/* Values per K-quant super-block (ggml's QK_K). */
#define QK_K 256
/* Values per block of the 32-value types, and per K-quant sub-block. */
#define QK32 32
/* Columns of x a matrix-vector kernel multiplies at once (quant.c uses tiles and BLAS above). */
#define QUANT_MATVEC_MAX_N 4

typedef struct __attribute__((packed)) BlockQ4_0
{
	uint16_t	d;				/* fp16 scale */
	uint8_t		qs[16];			/* value j: low nibble of qs[j]; value 16 + j: high nibble */
} BlockQ4_0;

typedef struct __attribute__((packed)) BlockQ4_1
{
	uint16_t	d;				/* fp16 scale */
	uint16_t	m;				/* fp16 minimum */
	uint8_t		qs[16];			/* as Q4_0 */
} BlockQ4_1;

typedef struct __attribute__((packed)) BlockQ5_0
{
	uint16_t	d;
	uint8_t		qh[4];			/* bit j of this little-endian u32: value j's fifth bit */
	uint8_t		qs[16];			/* the low four bits, as Q4_0 */
} BlockQ5_0;

typedef struct __attribute__((packed)) BlockQ5_1
{
	uint16_t	d;
	uint16_t	m;
	uint8_t		qh[4];
	uint8_t		qs[16];
} BlockQ5_1;

typedef struct __attribute__((packed)) BlockQ8_0
{
	uint16_t	d;
	int8_t		qs[32];
} BlockQ8_0;

typedef struct __attribute__((packed)) BlockQ2_K
{
	uint8_t		scales[16];		/* per 16 values: low nibble scales d, high nibble dmin */
	uint8_t		qs[64];			/* value 128 h + 32 j + l: bits 2j..2j+1 of qs[32 h + l] */
	uint16_t	d;
	uint16_t	dmin;
} BlockQ2_K;

typedef struct __attribute__((packed)) BlockQ3_K
{
	uint8_t		hmask[32];		/* value 32 k + l: bit k of hmask[l], set means no -4 */
	uint8_t		qs[64];			/* low two bits, laid out as Q2_K's */
	uint8_t		scales[12];		/* sixteen 6-bit scales, offset by 32 */
	uint16_t	d;
} BlockQ3_K;

typedef struct __attribute__((packed)) BlockQ4_K
{
	uint16_t	d;
	uint16_t	dmin;
	uint8_t		scales[12];		/* eight 6-bit scales and eight 6-bit mins */
	uint8_t		qs[128];		/* value 64 c + 32 h + l: nibble h of qs[32 c + l] */
} BlockQ4_K;

typedef struct __attribute__((packed)) BlockQ5_K
{
	uint16_t	d;
	uint16_t	dmin;
	uint8_t		scales[12];		/* as Q4_K */
	uint8_t		qh[32];			/* value 32 j + l: fifth bit is bit j of qh[l] */
	uint8_t		qs[128];		/* as Q4_K */
} BlockQ5_K;

typedef struct __attribute__((packed)) BlockQ6_K
{
	uint8_t		ql[128];		/* value 128 a + 32 j + l: nibble j/2 of ql[64 a + 32 (j%2) + l] */
	uint8_t		qh[64];			/* ... and bits 2j..2j+1 of qh[32 a + l] above it */
	int8_t		scales[16];		/* per 16 values */
	uint16_t	d;
} BlockQ6_K;

_Static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
			   sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34, "ggml's 32-value block sizes");
_Static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
			   sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "ggml's K-quant block sizes");

/* An IEEE half as a float (exact: every half is a float; a NaN keeps its payload). */
static inline float
quant_half_to_float(uint16_t h)
{
	uint32_t	sign = (uint32_t) (h & 0x8000) << 16;
	uint32_t	exponent = (h >> 10) & 0x1f;
	uint32_t	mantissa = h & 0x3ff;
	uint32_t	bits;
	float		f;

	if (exponent == 0x1f)
		bits = sign | 0x7f800000 | mantissa << 13;
	else if (exponent != 0)
		bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
	else
	{
		/* zero or subnormal: mantissa * 2^-24, exact in float */
		f = (float) mantissa * 0x1p-24f;
		memcpy(&bits, &f, sizeof(bits));
		bits |= sign;
	}
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* Q4_K's and Q5_K's eight 6-bit scales and mins, unpacked from their 12 bytes. */
static inline void
quant_k_scales(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8])
{
	for (int j = 0; j < 4; j++)
	{
		sc[j] = s[j] & 0x3f;
		mn[j] = s[j + 4] & 0x3f;
		/* the second four keep their low nibbles in bytes 8..11, their top bits atop the first four */
		sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
		mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
	}
}

/*
 * x for the integer kernels: each row of x cut into blocks of 32 values,
 * each block stored as int16 xq = round(x / dx), dx = max |x| / 32767
 * (so |xq| <= 32767 and x = dx xq within dx / 2).  A weight block's dot
 * product with x is then dx times an exact int32 sum of q xq (|q| <= 128:
 * 32 products stay below 2^28), converted to float once.  A block holding
 * an infinity or a NaN gets dx NaN (and xq 0), so that its products come
 * out NaN as float ones would be non-finite; an all-zero block dx 0.
 */
#define QUANT_XQ_MAX 32767

/*
 * Where the 16 values [16 h, 16 h + 16) of block b (of nb) sit in a row of
 * xq.  Blocks go in pairs (2p, 2p + 1), each pair's 64 values ordered as
 * the first halves of both blocks, then the second halves: the order in
 * which one AVX-512 register takes two blocks' nibbles (low nibbles of 16
 * bytes are a block's first half, high nibbles its second) without a
 * shuffle.  An odd last block is stored as it is.
 */
static inline int64_t
quant_xq_offset(int64_t b, int64_t nb, int h)
{
	if (b == nb - 1 && nb % 2 == 1)
		return 32 * b + 16 * h;
	return 64 * (b / 2) + 32 * h + 16 * (b % 2);
}

/*
 * Blocks of a row of xw: cols / 32 rounded up to 8, so that the kernels
 * convert the scales of eight blocks at once (the extra ones zero).
 */
static inline int64_t
quant_xw_blocks(int64_t cols)
{
	return (cols / 32 + 7) & ~(int64_t) 7;
}

/*
 * One matrix-vector product's arguments: y[n, r] = sum_c W[r, c] x[n, c]
 * for n < N (at most QUANT_MATVEC_MAX_N), rows r handed to the kernel.
 */
typedef struct QuantMatvec
{
	GgmlType	type;
	const uint8_t *w;			/* row r at w + r * row_bytes */
	size_t		row_bytes;
	int64_t		cols;
	const float *x;				/* [N, cols] */
	int			N;
	/* the integer kernels' x (quant_xq_fill): */
	const int16_t *xq;			/* [N, cols]: x / dx rounded, in quant_xq_offset's order */
	const float *xw;			/* [N, quant_xw_blocks(cols), 2]: dx, and dx times the sum of xq */
	float	   *y;				/* y[n * ldy + r] */
	int64_t		ldy;
} QuantMatvec;

/* Bytes quant_xq_fill writes for x[N, cols] (cols a multiple of 32). */
static inline size_t
quant_xq_bytes(int N, int64_t cols)
{
	return (size_t) N * ((size_t) cols * sizeof(int16_t) + (size_t) quant_xw_blocks(cols) * 2 * sizeof(float));
}

/*
 * Fill mv->xq and mv->xw from x[N, cols] in buf (quant_xq_bytes, 64-byte
 * aligned): the integer kernels' x.  AVX2, as every integer kernel.
 */
void		quant_xq_fill(QuantMatvec *mv, const float *x, int N, int64_t cols, void *buf);

/* Compute rows [r0, r1) of a product; each row alone, so the split never changes a result. */
typedef void (*QuantMatvecFn) (const QuantMatvec *mv, int64_t r0, int64_t r1);

/* A matrix-vector kernel, and whether it reads x's int16 form (xq ...) rather than x. */
typedef struct QuantMatvecKernel
{
	QuantMatvecFn fn;
	bool		int16_x;
} QuantMatvecKernel;

/*
 * Dequantize n values (whole blocks) at src into out, bit for bit as
 * quant.c's scalar code: the tiles of the BLAS route are made this way.
 */
typedef void (*QuantDequantFn) (const uint8_t *src, int64_t n, float *out);

/* Whether this CPU runs the AVX2 (with FMA, F16C), the AVX-512 and the AVX-512 VNNI kernels. */
bool		quant_cpu_has_avx2(void);
bool		quant_cpu_has_avx512(void);
bool		quant_cpu_has_avx512vnni(void);

/*
 * The AVX2 or AVX-512 kernel for type ({NULL, false} where there is none:
 * the scalar one serves); vnni: use AVX512_VNNI's vpdpwssd.
 */
QuantMatvecKernel quant_matvec_avx2(GgmlType type);
QuantMatvecKernel quant_matvec_avx512(GgmlType type, bool vnni);

/* The AVX2 dequantization of type (the AVX-512 path's too), or NULL where there is none. */
QuantDequantFn quant_dequant_avx2(GgmlType type);

#endif
