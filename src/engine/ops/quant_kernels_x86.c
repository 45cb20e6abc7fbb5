/*
 * quant_kernels_x86.c - AVX2 and AVX-512 matrix-vector kernels for the
 * types decoders mostly ship in: F32, F16, Q4_0, Q4_1, Q8_0 (SmolLM2's
 * Q4_1 file holds the last two), Q4_K and Q6_K (the Q4_K_M files).
 * Other types use quant.c's scalar kernel.
 *
 * Every engine source is compiled with the same flags (x86-64's baseline),
 * so each kernel carries its own target attribute and quant.c calls one
 * only after quant_cpu_has_* said yes.
 *
 * Q4_0, Q4_1, Q8_0, Q4_K and Q6_K take integer dot products with x
 * rounded to int16 (quant_xq_fill, once a call): a block's quants, widened
 * to int16, meet its 32 values of x in vpmaddwd (or AVX512_VNNI's
 * vpdpwssd), and the exact int32 sums are converted to float once and
 * scaled by the block's d times x's dx.  Converting every quant to float
 * cost twice the time.
 *
 * F32 and F16 take float dot products.
 */
#include "quant_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <math.h>

#if defined(__clang__)
/* see TARGET_DEQUANT; the kernels' explicit FMAs are unaffected */
#pragma STDC FP_CONTRACT OFF
#endif

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/*
 * How far ahead of the block it reads a matrix-vector kernel asks for W
 * (bytes): a page.  A model's weights are a mapped file in 4 KB pages, at
 * whose boundaries the hardware prefetcher stops; without this one thread
 * read SmolLM2's 211 matrices of a token at 7 GB/s, with it at 13-18
 * (1 KB ahead: 9.5; 2 to 16 KB: the same within the noise).
 */
#define QUANT_PREFETCH_BYTES 4096

/* Whether the CPU converts fp16 (older clang cannot ask; every CPU with AVX2 can). */
#if defined(__clang__)
#define CPU_HAS_F16C() true
#else
#define CPU_HAS_F16C() __builtin_cpu_supports("f16c")
#endif

/* Whether this CPU runs the AVX2 kernels. */
bool
quant_cpu_has_avx2(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CPU_HAS_F16C();
}

/* Whether this CPU runs the AVX-512 kernels. */
bool
quant_cpu_has_avx512(void)
{
	__builtin_cpu_init();
	return quant_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
		__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

/* Whether this CPU runs the AVX-512 kernels with AVX512_VNNI's vpdpwssd. */
bool
quant_cpu_has_avx512vnni(void)
{
	return quant_cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
}

/*
 * Define name(mv, r0, r1) calling name_n(mv, r0, r1, N) with N a constant,
 * so that the per-column loops unroll and the accumulators stay in registers.
 */
#define MATVEC_ENTRY(name, target) \
	static target void \
	name(const QuantMatvec *mv, int64_t r0, int64_t r1) \
	{ \
		switch (mv->N) \
		{ \
			case 1: name##_n(mv, r0, r1, 1); break; \
			case 2: name##_n(mv, r0, r1, 2); break; \
			case 3: name##_n(mv, r0, r1, 3); break; \
			default: name##_n(mv, r0, r1, 4); break; \
		} \
	}

/* ---- AVX2: eight floats a register --------------------------------------- */

/* The low 8 bytes of v, unsigned, as floats. */
ALWAYS_INLINE TARGET_AVX2 __m256
u8_to_ps_avx2(__m128i v)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

/* The low 8 bytes of v, signed, as floats. */
ALWAYS_INLINE TARGET_AVX2 __m256
i8_to_ps_avx2(__m128i v)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

/* The high 8 bytes of v moved down. */
ALWAYS_INLINE TARGET_AVX2 __m128i
high8(__m128i v)
{
	return _mm_unpackhi_epi64(v, v);
}

/* The sum of v's lanes. */
ALWAYS_INLINE TARGET_AVX2 float
hsum_avx2(__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* 16 nibble values (value j low nibble, 16 + j high nibble) as four registers. */
ALWAYS_INLINE TARGET_AVX2 void
nibbles_avx2(__m128i raw, bool offset8, __m256 q[4])
{
	const __m128i low4 = _mm_set1_epi8(0x0f);
	__m128i		lo = _mm_and_si128(raw, low4);
	__m128i		hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low4);

	if (offset8)
	{
		/* Q4_0's q - 8, in bytes, then signed */
		lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
		hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
		q[0] = i8_to_ps_avx2(lo);
		q[1] = i8_to_ps_avx2(high8(lo));
		q[2] = i8_to_ps_avx2(hi);
		q[3] = i8_to_ps_avx2(high8(hi));
		return;
	}
	q[0] = u8_to_ps_avx2(lo);
	q[1] = u8_to_ps_avx2(high8(lo));
	q[2] = u8_to_ps_avx2(hi);
	q[3] = u8_to_ps_avx2(high8(hi));
}

/* 32 unsigned bytes as four registers of floats. */
ALWAYS_INLINE TARGET_AVX2 void
u8x32_avx2(__m256i v, __m256 q[4])
{
	__m128i		a = _mm256_castsi256_si128(v);
	__m128i		b = _mm256_extracti128_si256(v, 1);

	q[0] = u8_to_ps_avx2(a);
	q[1] = u8_to_ps_avx2(high8(a));
	q[2] = u8_to_ps_avx2(b);
	q[3] = u8_to_ps_avx2(high8(b));
}

/* Q6_K's 32 values 128 a + 32 j + l (l < 32) of a super-block, as signed bytes q - 32. */
ALWAYS_INLINE TARGET_AVX2 __m256i
q6_k_bytes(const BlockQ6_K *blk, int a, int j)
{
	const __m256i low4 = _mm256_set1_epi8(0x0f);
	__m256i		lo = _mm256_loadu_si256((const __m256i *) (blk->ql + 64 * a + 32 * (j % 2)));
	__m256i		hi = _mm256_loadu_si256((const __m256i *) (blk->qh + 32 * a));

	lo = _mm256_and_si256(_mm256_srl_epi16(lo, _mm_cvtsi32_si128(4 * (j / 2))), low4);
	/* shifting 16-bit lanes moves bits across bytes, but only into bits the mask drops */
	hi = _mm256_and_si256(_mm256_srl_epi16(hi, _mm_cvtsi32_si128(2 * j)), _mm256_set1_epi8(3));
	return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
}

/* F32 and F16 rows (any number of columns): sum w x, the tail in scalar code. */
ALWAYS_INLINE TARGET_AVX2 void
float_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N, bool half)
{
	const int64_t cols = mv->cols;

	for (int64_t r = r0; r < r1; r++)
	{
		const uint8_t *row = mv->w + (size_t) r * mv->row_bytes;
		const float *wf = (const float *) row;
		const uint16_t *wh = (const uint16_t *) row;
		__m256		acc0[QUANT_MATVEC_MAX_N];
		__m256		acc1[QUANT_MATVEC_MAX_N];
		int64_t		c = 0;

		for (int n = 0; n < N; n++)
			acc0[n] = acc1[n] = _mm256_setzero_ps();
		for (; c + 16 <= cols; c += 16)
		{
			__m256		w0 = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (wh + c)))
				: _mm256_loadu_ps(wf + c);
			__m256		w1 = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (wh + c + 8)))
				: _mm256_loadu_ps(wf + c + 8);

			for (int n = 0; n < N; n++)
			{
				const float *x = mv->x + n * cols + c;

				acc0[n] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc0[n]);
				acc1[n] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc1[n]);
			}
		}
		for (int n = 0; n < N; n++)
		{
			const float *x = mv->x + n * cols;
			float		s = hsum_avx2(_mm256_add_ps(acc0[n], acc1[n]));

			for (int64_t i = c; i < cols; i++)
			{
				uint16_t	h;

				if (half)
					memcpy(&h, wh + i, sizeof(h));
				s += (half ? quant_half_to_float(h) : wf[i]) * x[i];
			}
			mv->y[n * mv->ldy + r] = s;
		}
	}
}

ALWAYS_INLINE TARGET_AVX2 void
f32_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	float_avx2_n(mv, r0, r1, N, false);
}
MATVEC_ENTRY(f32_avx2, TARGET_AVX2)

ALWAYS_INLINE TARGET_AVX2 void
f16_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	float_avx2_n(mv, r0, r1, N, true);
}
MATVEC_ENTRY(f16_avx2, TARGET_AVX2)

/* ---- AVX2: integer dot products for Q4_0, Q4_1, Q8_0, Q4_K, Q6_K ------------- */

/*
 * These kernels read x in its int16 form (quant_kernels.h): a block's dot
 * product is an exact int32 sum of q xq by vpmaddwd, converted to float
 * once and scaled by d dx.  Q4_1's minimum adds m dx sum xq, Q4_0's offset
 * -8 d dx sum xq: the blocks' fp16 d and m (Q4_1; d twice for Q4_0, d and
 * 0 for Q8_0) are converted together and multiplied by xw's interleaved
 * dx and dx sum xq, the odd lanes summed for the minimum terms.
 */

/* Bytes of a block of the integer kernels' types, and where its quants start. */
ALWAYS_INLINE int
int_block_bytes(GgmlType type)
{
	return type == GGML_Q4_1 ? (int) sizeof(BlockQ4_1) :
		type == GGML_Q8_0 ? (int) sizeof(BlockQ8_0) : (int) sizeof(BlockQ4_0);
}

ALWAYS_INLINE int
int_block_qs(GgmlType type)
{
	return type == GGML_Q4_1 ? 4 : 2;
}

/*
 * The fp16 scales of blocks b0 and b1 as floats: d0, m0, d1, m1 for Q4_1,
 * d0, d0, d1, d1 for Q4_0 (whose minimum is -8 d), d0, 0, d1, 0 for Q8_0.
 */
ALWAYS_INLINE TARGET_AVX2 __m128
pair_scales(GgmlType type, const uint8_t *b0, const uint8_t *b1)
{
	uint32_t	h0;
	uint32_t	h1;

	memcpy(&h0, b0, sizeof(h0));
	memcpy(&h1, b1, sizeof(h1));
	if (type != GGML_Q4_1)
	{
		h0 = (h0 & 0xffff) * (type == GGML_Q4_0 ? 0x10001u : 1u);
		h1 = (h1 & 0xffff) * (type == GGML_Q4_0 ? 0x10001u : 1u);
	}
	return _mm_cvtph_ps(_mm_cvtsi64_si128((long long) ((uint64_t) h1 << 32 | h0)));
}

/* A block's 32 quants as int16 (Q4: 0..15, Q8_0: -128..127): values 0..15 in lo, 16..31 in hi. */
ALWAYS_INLINE TARGET_AVX2 void
block_quants_avx2(GgmlType type, const uint8_t *blk, __m256i *lo, __m256i *hi)
{
	__m256i		w;

	if (type == GGML_Q8_0)
	{
		*lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (blk + 2)));
		*hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (blk + 18)));
		return;
	}
	w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (blk + int_block_qs(type))));
	*lo = _mm256_and_si256(w, _mm256_set1_epi16(0x0f));
	*hi = _mm256_srli_epi16(w, 4);
}

/* The sum of v's eight int32 lanes. */
ALWAYS_INLINE TARGET_AVX2 int32_t
hsum_epi32_avx2(__m256i v)
{
	__m128i		s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));

	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
	return _mm_cvtsi128_si32(s);
}

/* The sum of v's four lanes. */
ALWAYS_INLINE TARGET_AVX2 float
hsum128(__m128 v)
{
	v = _mm_add_ps(v, _mm_movehl_ps(v, v));
	return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* The sum of q xq over a block whose quants are lo, hi and whose xq halves are at xlo, xhi. */
ALWAYS_INLINE TARGET_AVX2 __m256i
block_dot_avx2(__m256i lo, __m256i hi, const int16_t *xlo, const int16_t *xhi)
{
	return _mm256_add_epi32(_mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *) xlo)),
							_mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *) xhi)));
}

/*
 * Q4_0, Q4_1 and Q8_0 rows by integer dot products, a block a register,
 * two blocks' scales at once: d, m times xw's dx, dx sum xq.
 */
ALWAYS_INLINE TARGET_AVX2 void
int_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N, GgmlType type)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nbw = quant_xw_blocks(cols);
	const int	bs = int_block_bytes(type);
	const bool	has_min = type != GGML_Q8_0;
	/* lanes 1 and 3 of the scales: the minimum's (Q4_0: d, times -8) */
	const __m128 min_lanes = _mm_castsi128_ps(_mm_set_epi32(-1, 0, -1, 0));

	for (int64_t r = r0; r < r1; r++)
	{
		const uint8_t *row = mv->w + (size_t) r * mv->row_bytes;
		__m256		acc[QUANT_MATVEC_MAX_N];
		__m128		macc[QUANT_MATVEC_MAX_N];

		for (int n = 0; n < N; n++)
		{
			acc[n] = _mm256_setzero_ps();
			macc[n] = _mm_setzero_ps();
		}
		for (int64_t b = 0; b < nb; b += 2)
		{
			const uint8_t *b0 = row + (size_t) b * bs;
			/* an odd last block pairs with itself; xw's zero padding drops the copy */
			bool		pair = b + 1 < nb;
			__m128		f = pair_scales(type, b0, pair ? b0 + bs : b0);
			__m256i		q[2][2];

			/* a line, or two where a pair is longer (Q8_0), leaves no gap */
			for (int line = 0; line < (2 * bs + 63) / 64; line++)
				_mm_prefetch((const char *) b0 + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			block_quants_avx2(type, b0, &q[0][0], &q[0][1]);
			if (pair)
				block_quants_avx2(type, b0 + bs, &q[1][0], &q[1][1]);
			for (int n = 0; n < N; n++)
			{
				const int16_t *xrow = mv->xq + n * cols;
				/* xw is padded with zeros to eight blocks: reading block nb is safe */
				__m128		g = _mm_mul_ps(f, _mm_loadu_ps(mv->xw + 2 * (n * nbw + b)));
				__m256		d0 = _mm256_broadcastss_ps(g);

				if (has_min)
					macc[n] = _mm_add_ps(macc[n], _mm_and_ps(g, min_lanes));
				acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot_avx2(q[0][0], q[0][1],
																		   xrow + quant_xq_offset(b, nb, 0),
																		   xrow + quant_xq_offset(b, nb, 1))),
										 d0, acc[n]);
				if (pair)
				{
					__m256		d1 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(g), _mm256_set1_epi32(2));

					acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot_avx2(q[1][0], q[1][1],
																			   xrow + quant_xq_offset(b + 1, nb, 0),
																			   xrow + quant_xq_offset(b + 1, nb, 1))),
											 d1, acc[n]);
				}
			}
		}
		for (int n = 0; n < N; n++)
		{
			float		mins = has_min ? hsum128(macc[n]) : 0;

			mv->y[n * mv->ldy + r] = hsum_avx2(acc[n]) + (type == GGML_Q4_0 ? -8 * mins : mins);
		}
	}
}

ALWAYS_INLINE TARGET_AVX2 void
q4_0_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	int_avx2_n(mv, r0, r1, N, GGML_Q4_0);
}
MATVEC_ENTRY(q4_0_avx2, TARGET_AVX2)

ALWAYS_INLINE TARGET_AVX2 void
q4_1_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	int_avx2_n(mv, r0, r1, N, GGML_Q4_1);
}
MATVEC_ENTRY(q4_1_avx2, TARGET_AVX2)

ALWAYS_INLINE TARGET_AVX2 void
q8_0_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	int_avx2_n(mv, r0, r1, N, GGML_Q8_0);
}
MATVEC_ENTRY(q8_0_avx2, TARGET_AVX2)

/*
 * Block x[0..32) as int16 into lo (values 0..15) and hi (16..31); w[0] =
 * dx, w[1] = dx sum xq.  Rounding is to nearest, ties to even.
 */
ALWAYS_INLINE TARGET_AVX2 void
quantize_block_avx2(const float *x, int16_t *lo, int16_t *hi, float *w)
{
	const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
	__m256		v[4];
	__m256i		m = _mm256_setzero_si256();
	uint32_t	amax_bits;
	float		amax;

	/* the largest |x| by its bits: an infinity or a NaN compares above every finite float */
	for (int k = 0; k < 4; k++)
	{
		v[k] = _mm256_loadu_ps(x + 8 * k);
		m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_castps_si256(v[k]), abs_mask));
	}
	m = _mm256_max_epi32(m, _mm256_permute2x128_si256(m, m, 1));
	m = _mm256_max_epi32(m, _mm256_shuffle_epi32(m, 0x4e));
	m = _mm256_max_epi32(m, _mm256_shuffle_epi32(m, 0xb1));
	amax_bits = (uint32_t) _mm256_cvtsi256_si32(m);
	memcpy(&amax, &amax_bits, sizeof(amax));
	if (amax_bits == 0 || amax_bits >= 0x7f800000)
	{
		memset(lo, 0, 16 * sizeof(int16_t));
		memset(hi, 0, 16 * sizeof(int16_t));
		w[0] = w[1] = amax_bits == 0 ? 0.0f : NAN;
		return;
	}
	if (amax < 0x1p-100f)
	{
		/* 32767 / amax would overflow a float: in double (dx itself may come out subnormal) */
		double		inv = QUANT_XQ_MAX / (double) amax;
		int32_t		s = 0;

		for (int i = 0; i < 32; i++)
		{
			int16_t		q = (int16_t) __builtin_rint(x[i] * inv);

			(i < 16 ? lo : hi)[i % 16] = q;
			s += q;
		}
		w[0] = (float) (amax / (double) QUANT_XQ_MAX);
		w[1] = w[0] * (float) s;
		return;
	}
	{
		__m256		inv = _mm256_set1_ps(QUANT_XQ_MAX / amax);
		__m256i		q[4];

		/* |x inv| <= 32767 within a rounding, so the conversion and the packing never saturate */
		for (int k = 0; k < 4; k++)
			q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], inv),
													  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
		/* packing works within 128-bit lanes: put the four 64-bit quarters back in order */
		_mm256_storeu_si256((__m256i *) lo, _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xd8));
		_mm256_storeu_si256((__m256i *) hi, _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xd8));
		w[0] = amax / QUANT_XQ_MAX;
		/* exact: |sum xq| < 2^20 */
		w[1] = w[0] * (float) hsum_epi32_avx2(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]),
																_mm256_add_epi32(q[2], q[3])));
	}
}

/* Fill mv->xq and mv->xw from x[N, cols] in buf: the integer kernels' x. */
TARGET_AVX2 void
quant_xq_fill(QuantMatvec *mv, const float *x, int N, int64_t cols, void *buf)
{
	const int64_t nb = cols / QK32;
	const int64_t nbw = quant_xw_blocks(cols);
	int16_t    *xq = buf;
	float	   *xw = (float *) (xq + (size_t) N * cols);

	for (int n = 0; n < N; n++)
	{
		int16_t    *row = xq + (size_t) n * cols;
		float	   *w = xw + 2 * (size_t) n * nbw;

		for (int64_t b = 0; b < nb; b++)
			quantize_block_avx2(x + (size_t) n * cols + b * QK32, row + quant_xq_offset(b, nb, 0),
								row + quant_xq_offset(b, nb, 1), w + 2 * b);
		for (int64_t b = nb; b < nbw; b++)
			w[2 * b] = w[2 * b + 1] = 0;
	}
	mv->xq = xq;
	mv->xw = xw;
}

/*
 * A Q4_K super-block's eight 6-bit scales and eight mins as bytes sc0, m0,
 * sc1, m1, ...: quant_k_scales on four 32-bit words (as llama.cpp's
 * kmask trick), then one interleave.
 */
ALWAYS_INLINE TARGET_AVX2 __m128i
q4_k_scale_bytes(const BlockQ4_K *blk)
{
	const uint32_t kmask1 = 0x3f3f3f3f;
	const uint32_t kmask2 = 0x0f0f0f0f;
	const uint32_t kmask3 = 0x03030303;
	uint32_t	u[3];
	uint32_t	sc_lo;
	uint32_t	sc_hi;
	uint32_t	mn_lo;
	uint32_t	mn_hi;
	__m128i		v;

	memcpy(u, blk->scales, sizeof(u));
	/* per byte j < 4: sc = s[j] & 63, m = s[j + 4] & 63; the high four take low nibbles of s[8..11] and s[j] >> 6 */
	sc_lo = u[0] & kmask1;
	mn_lo = u[1] & kmask1;
	sc_hi = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
	mn_hi = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
	v = _mm_set_epi32((int) mn_hi, (int) mn_lo, (int) sc_hi, (int) sc_lo);
	return _mm_unpacklo_epi8(v, _mm_srli_si128(v, 8));
}

/*
 * Q4_K rows by integer dot products: sub-block j of a super-block adds
 * (d sc_j) dx_j sum q xq - (dmin m_j) dx_j sum xq, its two factors the
 * even and odd lanes of the scales times xw.
 */
ALWAYS_INLINE TARGET_AVX2 void
q4_k_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nsb = cols / QK_K;
	const __m256 min_lanes = _mm256_castsi256_ps(_mm256_set_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
	const __m256i low4 = _mm256_set1_epi16(0x0f);

	for (int64_t r = r0; r < r1; r++)
	{
		const BlockQ4_K *blk = (const BlockQ4_K *) (mv->w + (size_t) r * mv->row_bytes);
		__m256		acc[QUANT_MATVEC_MAX_N];
		__m256		macc[QUANT_MATVEC_MAX_N];

		for (int n = 0; n < N; n++)
			acc[n] = macc[n] = _mm256_setzero_ps();
		for (int64_t s = 0; s < nsb; s++)
		{
			uint32_t	ddmin;
			__m256		dd;
			__m128i		scm = q4_k_scale_bytes(&blk[s]);
			__m256		h[2];
			__m256		p[QUANT_MATVEC_MAX_N][2];

			for (int line = 0; line < 3; line++)
				_mm_prefetch((const char *) &blk[s] + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			memcpy(&ddmin, &blk[s], sizeof(ddmin));
			/* d, dmin, d, dmin, ... */
			dd = _mm256_cvtph_ps(_mm_set1_epi32((int) ddmin));
			h[0] = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scm)));
			h[1] = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8))));
			for (int n = 0; n < N; n++)
				for (int k = 0; k < 2; k++)
				{
					p[n][k] = _mm256_mul_ps(h[k], _mm256_loadu_ps(mv->xw + 2 * (n * nb + 8 * s) + 8 * k));
					macc[n] = _mm256_add_ps(macc[n], _mm256_and_ps(p[n][k], min_lanes));
				}
			for (int c = 0; c < 4; c++)
			{
				__m256i		w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (blk[s].qs + 32 * c)));
				__m256i		w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (blk[s].qs + 32 * c + 16)));
				/* sub-block 2c: the low nibbles, 2c + 1: the high ones */
				__m256i		q[2][2] = {
					{_mm256_and_si256(w0, low4), _mm256_and_si256(w1, low4)},
					{_mm256_srli_epi16(w0, 4), _mm256_srli_epi16(w1, 4)}
				};

				for (int n = 0; n < N; n++)
					for (int h2 = 0; h2 < 2; h2++)
					{
						int64_t		b = 8 * s + 2 * c + h2;
						const int16_t *xrow = mv->xq + n * cols;
						__m256i		sum = block_dot_avx2(q[h2][0], q[h2][1], xrow + quant_xq_offset(b, nb, 0),
														 xrow + quant_xq_offset(b, nb, 1));
						/* lane 2 (2c + h2) % 8 of the scales: d sc dx */
						__m256		d = _mm256_permutevar8x32_ps(p[n][c / 2],
																 _mm256_set1_epi32(2 * ((2 * c + h2) % 4)));

						acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc[n]);
					}
			}
		}
		for (int n = 0; n < N; n++)
			mv->y[n * mv->ldy + r] = hsum_avx2(acc[n]) - hsum_avx2(macc[n]);
	}
}
MATVEC_ENTRY(q4_k_avx2, TARGET_AVX2)

/*
 * A Q6_K super-block's 16 scales (one a 16 values) as floats times d and
 * times x's dx of their blocks: lane 2 k + h for half h of block k, as
 * the scales themselves are ordered; in two registers.
 */
ALWAYS_INLINE TARGET_AVX2 void
q6_k_scales_avx2(const BlockQ6_K *blk, const float *xw, __m256 p[2])
{
	uint16_t	dh;
	__m256		d;
	__m128i		sc = _mm_loadu_si128((const __m128i *) blk->scales);

	memcpy(&dh, &blk->d, sizeof(dh));
	d = _mm256_set1_ps(_cvtsh_ss(dh));
	/* xw holds dx, dx sum xq a block: dx twice a block is its even lanes duplicated */
	p[0] = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))),
						 _mm256_moveldup_ps(_mm256_loadu_ps(xw)));
	p[1] = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))),
						 _mm256_moveldup_ps(_mm256_loadu_ps(xw + 8)));
}

/*
 * Q6_K rows by integer dot products: block k (32 values) of a super-block
 * adds d s dx sum (q - 32) xq over each of its halves, s the half's scale.
 */
ALWAYS_INLINE TARGET_AVX2 void
q6_k_avx2_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nsb = cols / QK_K;

	for (int64_t r = r0; r < r1; r++)
	{
		const BlockQ6_K *blk = (const BlockQ6_K *) (mv->w + (size_t) r * mv->row_bytes);
		__m256		acc[QUANT_MATVEC_MAX_N];

		for (int n = 0; n < N; n++)
			acc[n] = _mm256_setzero_ps();
		for (int64_t s = 0; s < nsb; s++)
		{
			__m256		p[QUANT_MATVEC_MAX_N][2];

			for (int line = 0; line < 4; line++)
				_mm_prefetch((const char *) &blk[s] + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			for (int n = 0; n < N; n++)
				q6_k_scales_avx2(&blk[s], mv->xw + 2 * (n * nb + 8 * s), p[n]);
			for (int a = 0; a < 2; a++)
				for (int j = 0; j < 4; j++)
				{
					/* block k = 4 a + j: values q - 32, signed */
					__m256i		v = q6_k_bytes(&blk[s], a, j);
					__m256i		lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
					__m256i		hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1));
					int64_t		b = 8 * s + 4 * a + j;

					for (int n = 0; n < N; n++)
					{
						const int16_t *xrow = mv->xq + n * cols;
						__m256i		s0 = _mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *) (xrow + quant_xq_offset(b, nb, 0))));
						__m256i		s1 = _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *) (xrow + quant_xq_offset(b, nb, 1))));
						/* lanes 2 j and 2 j + 1 of the register for a */
						__m256		d0 = _mm256_permutevar8x32_ps(p[n][a], _mm256_set1_epi32(2 * j));
						__m256		d1 = _mm256_permutevar8x32_ps(p[n][a], _mm256_set1_epi32(2 * j + 1));

						acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), d0, acc[n]);
						acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), d1, acc[n]);
					}
				}
		}
		for (int n = 0; n < N; n++)
			mv->y[n * mv->ldy + r] = hsum_avx2(acc[n]);
	}
}
MATVEC_ENTRY(q6_k_avx2, TARGET_AVX2)

/* The AVX2 kernel for type, or {NULL, false}. */
QuantMatvecKernel
quant_matvec_avx2(GgmlType type)
{
	switch (type)
	{
		case GGML_F32:
			return (QuantMatvecKernel) {f32_avx2, false};
		case GGML_F16:
			return (QuantMatvecKernel) {f16_avx2, false};
		case GGML_Q4_0:
			return (QuantMatvecKernel) {q4_0_avx2, true};
		case GGML_Q4_1:
			return (QuantMatvecKernel) {q4_1_avx2, true};
		case GGML_Q8_0:
			return (QuantMatvecKernel) {q8_0_avx2, true};
		case GGML_Q4_K:
			return (QuantMatvecKernel) {q4_k_avx2, true};
		case GGML_Q6_K:
			return (QuantMatvecKernel) {q6_k_avx2, true};
		default:
			return (QuantMatvecKernel) {NULL, false};
	}
}

/* ---- AVX2 dequantization, for the tiles of the BLAS route ------------------- */

/*
 * The scalar code rounds d q before adding the minimum, as ggml does; GCC
 * would fuse a multiply and an add into one FMA here (the target has FMA),
 * which rounds once: keep the two roundings.  (Clang fuses only within one
 * expression, as the pragma at the top of the file forbids.)
 */
#if defined(__clang__)
#define TARGET_DEQUANT TARGET_AVX2
#else
#define TARGET_DEQUANT __attribute__((target("avx2,fma,f16c"), optimize("fp-contract=off")))
#endif

/* Q4_0 blocks: d (q - 8). */
static TARGET_DEQUANT void
dequant_q4_0_avx2(const uint8_t *src, int64_t n, float *out)
{
	const BlockQ4_0 *blk = (const BlockQ4_0 *) src;

	for (int64_t b = 0; b < n / QK32; b++, out += QK32)
	{
		__m256		q[4];
		__m256		d = _mm256_set1_ps(_cvtsh_ss(blk[b].d));

		nibbles_avx2(_mm_loadu_si128((const __m128i *) blk[b].qs), true, q);
		for (int k = 0; k < 4; k++)
			_mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(d, q[k]));
	}
}

/* Q4_1 blocks: d q + m. */
static TARGET_DEQUANT void
dequant_q4_1_avx2(const uint8_t *src, int64_t n, float *out)
{
	const BlockQ4_1 *blk = (const BlockQ4_1 *) src;

	for (int64_t b = 0; b < n / QK32; b++, out += QK32)
	{
		__m256		q[4];
		__m256		d = _mm256_set1_ps(_cvtsh_ss(blk[b].d));
		__m256		m = _mm256_set1_ps(_cvtsh_ss(blk[b].m));

		nibbles_avx2(_mm_loadu_si128((const __m128i *) blk[b].qs), false, q);
		for (int k = 0; k < 4; k++)
			_mm256_storeu_ps(out + 8 * k, _mm256_add_ps(_mm256_mul_ps(d, q[k]), m));
	}
}

/* Q8_0 blocks: d q. */
static TARGET_DEQUANT void
dequant_q8_0_avx2(const uint8_t *src, int64_t n, float *out)
{
	const BlockQ8_0 *blk = (const BlockQ8_0 *) src;

	for (int64_t b = 0; b < n / QK32; b++, out += QK32)
	{
		__m256		d = _mm256_set1_ps(_cvtsh_ss(blk[b].d));

		for (int k = 0; k < 4; k++)
		{
			__m128i		v = _mm_loadl_epi64((const __m128i *) (blk[b].qs + 8 * k));

			_mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(d, i8_to_ps_avx2(v)));
		}
	}
}

/* Q4_K super-blocks: per 32 values (d sc) q - (dmin m). */
static TARGET_DEQUANT void
dequant_q4_k_avx2(const uint8_t *src, int64_t n, float *out)
{
	const BlockQ4_K *blk = (const BlockQ4_K *) src;
	const __m256i low4 = _mm256_set1_epi8(0x0f);

	for (int64_t s = 0; s < n / QK_K; s++, out += QK_K)
	{
		float		d = _cvtsh_ss(blk[s].d);
		float		dmin = _cvtsh_ss(blk[s].dmin);
		uint8_t		sc[8];
		uint8_t		mn[8];

		quant_k_scales(blk[s].scales, sc, mn);
		for (int c = 0; c < 4; c++)
		{
			__m256i		raw = _mm256_loadu_si256((const __m256i *) (blk[s].qs + 32 * c));
			__m256		q[2][4];

			u8x32_avx2(_mm256_and_si256(raw, low4), q[0]);
			u8x32_avx2(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), q[1]);
			for (int h = 0; h < 2; h++)
			{
				int			j = 2 * c + h;
				__m256		dl = _mm256_set1_ps(d * (float) sc[j]);
				__m256		ml = _mm256_set1_ps(dmin * (float) mn[j]);

				for (int k = 0; k < 4; k++)
					_mm256_storeu_ps(out + 32 * j + 8 * k, _mm256_sub_ps(_mm256_mul_ps(dl, q[h][k]), ml));
			}
		}
	}
}

/* Q6_K super-blocks: per 16 values (d s) (q - 32). */
static TARGET_DEQUANT void
dequant_q6_k_avx2(const uint8_t *src, int64_t n, float *out)
{
	const BlockQ6_K *blk = (const BlockQ6_K *) src;

	for (int64_t s = 0; s < n / QK_K; s++, out += QK_K)
	{
		float		d = _cvtsh_ss(blk[s].d);

		for (int a = 0; a < 2; a++)
			for (int j = 0; j < 4; j++)
			{
				__m256i		v = q6_k_bytes(&blk[s], a, j);
				__m128i		v0 = _mm256_castsi256_si128(v);
				__m128i		v1 = _mm256_extracti128_si256(v, 1);
				int			g = 8 * a + 2 * j;
				__m256		s0 = _mm256_set1_ps(d * (float) blk[s].scales[g]);
				__m256		s1 = _mm256_set1_ps(d * (float) blk[s].scales[g + 1]);
				float	   *o = out + 128 * a + 32 * j;

				_mm256_storeu_ps(o, _mm256_mul_ps(s0, i8_to_ps_avx2(v0)));
				_mm256_storeu_ps(o + 8, _mm256_mul_ps(s0, i8_to_ps_avx2(high8(v0))));
				_mm256_storeu_ps(o + 16, _mm256_mul_ps(s1, i8_to_ps_avx2(v1)));
				_mm256_storeu_ps(o + 24, _mm256_mul_ps(s1, i8_to_ps_avx2(high8(v1))));
			}
	}
}

/* F16 values (any count); NaNs come out quiet, as the conversion instruction makes them. */
static TARGET_DEQUANT void
dequant_f16_avx2(const uint8_t *src, int64_t n, float *out)
{
	int64_t		i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + 2 * i))));
	for (; i < n; i++)
	{
		uint16_t	h;

		memcpy(&h, src + 2 * i, sizeof(h));
		out[i] = quant_half_to_float(h);
	}
}

/* The AVX2 dequantization of type, or NULL. */
QuantDequantFn
quant_dequant_avx2(GgmlType type)
{
	switch (type)
	{
		case GGML_F16:
			return dequant_f16_avx2;
		case GGML_Q4_0:
			return dequant_q4_0_avx2;
		case GGML_Q4_1:
			return dequant_q4_1_avx2;
		case GGML_Q8_0:
			return dequant_q8_0_avx2;
		case GGML_Q4_K:
			return dequant_q4_k_avx2;
		case GGML_Q6_K:
			return dequant_q6_k_avx2;
		default:
			return NULL;
	}
}

/* ---- AVX-512: sixteen floats a register ------------------------------------ */

/* 16 weights of an F32 or F16 row from column c, the first count of them (the rest 0). */
ALWAYS_INLINE TARGET_AVX512 __m512
weights16_512(const uint8_t *row, int64_t c, __mmask16 mask, bool half)
{
	if (half)
		return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + 2 * c));
	return _mm512_maskz_loadu_ps(mask, row + 4 * c);
}

/* F32 and F16 rows (any number of columns): sum w x, the tail under a mask. */
ALWAYS_INLINE TARGET_AVX512 void
float_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N, bool half)
{
	const int64_t cols = mv->cols;

	for (int64_t r = r0; r < r1; r++)
	{
		const uint8_t *row = mv->w + (size_t) r * mv->row_bytes;
		__m512		acc0[QUANT_MATVEC_MAX_N];
		__m512		acc1[QUANT_MATVEC_MAX_N];
		int64_t		c = 0;

		for (int n = 0; n < N; n++)
			acc0[n] = acc1[n] = _mm512_setzero_ps();
		for (; c + 32 <= cols; c += 32)
		{
			__m512		w0 = weights16_512(row, c, 0xffff, half);
			__m512		w1 = weights16_512(row, c + 16, 0xffff, half);

			for (int n = 0; n < N; n++)
			{
				const float *x = mv->x + n * cols + c;

				acc0[n] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc0[n]);
				acc1[n] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc1[n]);
			}
		}
		for (; c < cols; c += 16)
		{
			__mmask16	mask = cols - c >= 16 ? 0xffff : (__mmask16) ((1u << (cols - c)) - 1);
			__m512		w0 = weights16_512(row, c, mask, half);

			for (int n = 0; n < N; n++)
				acc0[n] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, mv->x + n * cols + c), acc0[n]);
		}
		for (int n = 0; n < N; n++)
			mv->y[n * mv->ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[n], acc1[n]));
	}
}

ALWAYS_INLINE TARGET_AVX512 void
f32_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	float_512_n(mv, r0, r1, N, false);
}
MATVEC_ENTRY(f32_512, TARGET_AVX512)

ALWAYS_INLINE TARGET_AVX512 void
f16_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	float_512_n(mv, r0, r1, N, true);
}
MATVEC_ENTRY(f16_512, TARGET_AVX512)

/* ---- AVX-512: integer dot products for Q4_0, Q4_1, Q8_0, Q4_K, Q6_K ---------- */

/*
 * acc + the sums of adjacent products of a and b's int16 lanes: AVX512_VNNI's
 * vpdpwssd, or vpmaddwd and an add.  In assembly, so that the kernels built
 * without the VNNI target (the CPUs that lack it) can share the code.
 */
ALWAYS_INLINE TARGET_AVX512 __m512i
dpwssd_512(__m512i acc, __m512i a, __m512i b, bool vnni)
{
	if (!vnni)
		return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
	__asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
	return acc;
}

/*
 * Two blocks' quants as int16 in xq's pair order: qa the first halves of
 * b0 then b1, qb their second halves (Q4: the low and the high nibbles of
 * the two blocks' 16 bytes, no shuffle).
 */
ALWAYS_INLINE TARGET_AVX512 void
pair_quants_512(GgmlType type, const uint8_t *b0, const uint8_t *b1, __m512i *qa, __m512i *qb)
{
	const int	qs = int_block_qs(type);
	__m256i		raw = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) (b0 + qs))),
											  _mm_loadu_si128((const __m128i *) (b1 + qs)), 1);

	if (type == GGML_Q8_0)
	{
		__m256i		raw2 = _mm256_inserti128_si256(
			_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) (b0 + qs + 16))),
			_mm_loadu_si128((const __m128i *) (b1 + qs + 16)), 1);

		*qa = _mm512_cvtepi8_epi16(raw);
		*qb = _mm512_cvtepi8_epi16(raw2);
		return;
	}
	*qa = _mm512_cvtepu8_epi16(raw);
	*qb = _mm512_srli_epi16(*qa, 4);
	*qa = _mm512_and_si512(*qa, _mm512_set1_epi16(0x0f));
}

/* A mask of the lowest n (clamped to 0..32) of 32 lanes. */
ALWAYS_INLINE uint32_t
lanes_below(int n)
{
	return n >= 32 ? 0xffffffffu : n <= 0 ? 0 : (1u << n) - 1;
}

/*
 * The fp16 scales of the count (1..8) blocks at blk, as 16 halves: d, m
 * of each (Q4_1), d, d (Q4_0), d, 0 (Q8_0); zeros after count.  Gathered
 * from vector loads by one or two permutes: from a stack buffer of scalar
 * copies instead, the vector load waited for the stores to retire (store
 * forwarding cannot join eight stores), which cost more than the products.
 * The loads are masked to the blocks' bytes, so never read past W.
 */
ALWAYS_INLINE TARGET_AVX512 __m256i
group_headers_512(GgmlType type, const uint8_t *blk, int count)
{
	if (type == GGML_Q4_1)
	{
		/* 20-byte blocks: block j's d, m is dword 5 j */
		const __m512i idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 31, 26, 21, 16, 15, 10, 5, 0);
		__m512i		a = _mm512_maskz_loadu_epi32((__mmask16) lanes_below(5 * count), blk);
		__m512i		b = _mm512_maskz_loadu_epi32((__mmask16) lanes_below(5 * count - 20), blk + 80);
		__m512i		h = _mm512_maskz_permutex2var_epi32((__mmask16) lanes_below(count), a, idx, b);

		return _mm512_castsi512_si256(h);
	}
	if (type == GGML_Q4_0)
	{
		/* 18-byte blocks: block j's d is word 9 j, wanted twice */
		const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
											 63, 63, 54, 54, 45, 45, 36, 36, 27, 27, 18, 18, 9, 9, 0, 0);
		__m512i		a = _mm512_maskz_loadu_epi16(lanes_below(9 * count), blk);
		__m512i		b = _mm512_maskz_loadu_epi16(lanes_below(9 * count - 32), blk + 64);

		return _mm512_castsi512_si256(_mm512_maskz_permutex2var_epi16(lanes_below(2 * count), a, idx, b));
	}
	{
		/* 34-byte blocks: block j's d is word 17 j of the four from byte 0, and of the four from byte 136 */
		const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
											 0, 51, 0, 34, 0, 17, 0, 0, 0, 51, 0, 34, 0, 17, 0, 0);
		uint32_t	keep = lanes_below(2 * count) & 0x5555;
		__m512i		a = _mm512_maskz_loadu_epi16(lanes_below(17 * count), blk);
		__m512i		b = _mm512_maskz_loadu_epi16(lanes_below(17 * count - 32), blk + 64);
		__m512i		c = _mm512_maskz_loadu_epi16(lanes_below(17 * count - 68), blk + 136);
		__m512i		d = _mm512_maskz_loadu_epi16(lanes_below(17 * count - 100), blk + 200);
		__m512i		lo = _mm512_maskz_permutex2var_epi16(keep & 0x00ff, a, idx, b);
		__m512i		hi = _mm512_maskz_permutex2var_epi16(keep & 0xff00, c, idx, d);

		return _mm512_castsi512_si256(_mm512_or_si512(lo, hi));
	}
}

/*
 * Q4_0, Q4_1 and Q8_0 rows by integer dot products, a block pair a
 * register: its int32 lanes 0..7 sum block 2p's products, 8..15 block
 * 2p + 1's.  Eight blocks' scales at once: d, m times xw's dx and
 * dx sum xq in the lanes of p, from which one permute spreads a pair's
 * two d dx over the lanes of its sums.
 */
ALWAYS_INLINE TARGET_AVX512 void
int_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N, GgmlType type, bool vnni)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nbw = quant_xw_blocks(cols);
	const int	bs = int_block_bytes(type);
	const bool	has_min = type != GGML_Q8_0;
	const __m512 min_factor = _mm512_set1_ps(type == GGML_Q4_0 ? -8.0f : 1.0f);
	/* pair k of a group: d dx of block 2k in lanes 0..7, of block 2k + 1 in 8..15 */
	const __m512i spread[4] = {
		_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
		_mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4),
		_mm512_set_epi32(10, 10, 10, 10, 10, 10, 10, 10, 8, 8, 8, 8, 8, 8, 8, 8),
		_mm512_set_epi32(14, 14, 14, 14, 14, 14, 14, 14, 12, 12, 12, 12, 12, 12, 12, 12)
	};

	for (int64_t r = r0; r < r1; r++)
	{
		const uint8_t *row = mv->w + (size_t) r * mv->row_bytes;
		__m512		acc[QUANT_MATVEC_MAX_N];
		__m512		macc[QUANT_MATVEC_MAX_N];
		float		last[QUANT_MATVEC_MAX_N] = {0};

		for (int n = 0; n < N; n++)
			acc[n] = macc[n] = _mm512_setzero_ps();
		for (int64_t g = 0; g < nb; g += 8)
		{
			const uint8_t *blk = row + (size_t) g * bs;
			int			count = nb - g < 8 ? (int) (nb - g) : 8;
			__m512		h = _mm512_cvtph_ps(group_headers_512(type, blk, count));
			__m512		p[QUANT_MATVEC_MAX_N];
			int			k = 0;

			/* one a line: a run of lines ceil(group / 64) long a group leaves no gap */
			for (int line = 0; line < (8 * bs + 63) / 64; line++)
				_mm_prefetch((const char *) blk + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			for (int n = 0; n < N; n++)
			{
				p[n] = _mm512_mul_ps(h, _mm512_loadu_ps(mv->xw + 2 * (n * nbw + g)));
				if (has_min)
					macc[n] = _mm512_add_ps(macc[n], p[n]);
			}
			for (; 2 * k + 2 <= count; k++)
			{
				const uint8_t *b0 = blk + (size_t) (2 * k) * bs;
				__m512i		qa;
				__m512i		qb;

				pair_quants_512(type, b0, b0 + bs, &qa, &qb);
				for (int n = 0; n < N; n++)
				{
					const int16_t *xp = mv->xq + n * cols + 32 * (g + 2 * k);
					__m512i		s = _mm512_madd_epi16(qa, _mm512_loadu_si512(xp));

					s = dpwssd_512(s, qb, _mm512_loadu_si512(xp + 32), vnni);
					acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(spread[k], p[n]), acc[n]);
				}
			}
			if (2 * k < count)
			{
				/* an odd last block, alone */
				const uint8_t *b0 = blk + (size_t) (2 * k) * bs;
				__m256i		lo;
				__m256i		hi;

				block_quants_avx2(type, b0, &lo, &hi);
				for (int n = 0; n < N; n++)
				{
					const int16_t *xp = mv->xq + n * cols + 32 * (g + 2 * k);
					float		d = _mm_cvtss_f32(_mm512_castps512_ps128(
						_mm512_permutexvar_ps(_mm512_set1_epi32(4 * k), p[n])));

					last[n] = d * (float) hsum_epi32_avx2(block_dot_avx2(lo, hi, xp, xp + 16));
				}
			}
		}
		for (int n = 0; n < N; n++)
		{
			/* the odd lanes of macc hold the minimum terms */
			__m512		t = has_min ? _mm512_mask3_fmadd_ps(macc[n], min_factor, acc[n], 0xaaaa) : acc[n];

			mv->y[n * mv->ldy + r] = _mm512_reduce_add_ps(t) + last[n];
		}
	}
}

#define TARGET_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* Define name (plain AVX-512) and name_vnni (with vpdpwssd) for type's integer kernel. */
#define INT_KERNELS_512(name, type) \
	ALWAYS_INLINE TARGET_AVX512 void \
	name##_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N) \
	{ \
		int_512_n(mv, r0, r1, N, type, false); \
	} \
	MATVEC_ENTRY(name, TARGET_AVX512) \
	ALWAYS_INLINE TARGET_AVX512VNNI void \
	name##_vnni_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N) \
	{ \
		int_512_n(mv, r0, r1, N, type, true); \
	} \
	MATVEC_ENTRY(name##_vnni, TARGET_AVX512VNNI)

INT_KERNELS_512(q4_0_512, GGML_Q4_0)
INT_KERNELS_512(q4_1_512, GGML_Q4_1)
INT_KERNELS_512(q8_0_512, GGML_Q8_0)

/*
 * Q4_K rows by integer dot products, as q4_k_avx2_n: a super-block's
 * eight scales and mins in one register, times xw; a pair of sub-blocks
 * (the low and high nibbles of 32 bytes) a register of sums, its halves
 * swapped into xq's pair order.
 */
ALWAYS_INLINE TARGET_AVX512 void
q4_k_int_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N, bool vnni)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nsb = cols / QK_K;
	const __m512i low4 = _mm512_set1_epi16(0x0f);
	const __m512i spread[4] = {
		_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
		_mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4),
		_mm512_set_epi32(10, 10, 10, 10, 10, 10, 10, 10, 8, 8, 8, 8, 8, 8, 8, 8),
		_mm512_set_epi32(14, 14, 14, 14, 14, 14, 14, 14, 12, 12, 12, 12, 12, 12, 12, 12)
	};

	for (int64_t r = r0; r < r1; r++)
	{
		const BlockQ4_K *blk = (const BlockQ4_K *) (mv->w + (size_t) r * mv->row_bytes);
		__m512		acc[QUANT_MATVEC_MAX_N];
		__m512		macc[QUANT_MATVEC_MAX_N];

		for (int n = 0; n < N; n++)
			acc[n] = macc[n] = _mm512_setzero_ps();
		for (int64_t s = 0; s < nsb; s++)
		{
			uint32_t	ddmin;
			__m512		h;
			__m512		p[QUANT_MATVEC_MAX_N];

			for (int line = 0; line < 3; line++)
				_mm_prefetch((const char *) &blk[s] + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			memcpy(&ddmin, &blk[s], sizeof(ddmin));
			h = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_set1_epi32((int) ddmin)),
							  _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q4_k_scale_bytes(&blk[s]))));
			for (int n = 0; n < N; n++)
			{
				p[n] = _mm512_mul_ps(h, _mm512_loadu_ps(mv->xw + 2 * (n * nb + 8 * s)));
				macc[n] = _mm512_add_ps(macc[n], p[n]);
			}
			for (int c = 0; c < 4; c++)
			{
				__m512i		w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *) (blk[s].qs + 32 * c)));
				__m512i		lo = _mm512_and_si512(w, low4);
				__m512i		hi = _mm512_srli_epi16(w, 4);
				/* first halves of sub-blocks 2c and 2c + 1, then their second halves */
				__m512i		qa = _mm512_shuffle_i64x2(lo, hi, 0x44);
				__m512i		qb = _mm512_shuffle_i64x2(lo, hi, 0xee);

				for (int n = 0; n < N; n++)
				{
					const int16_t *xp = mv->xq + n * cols + QK_K * s + 64 * c;
					__m512i		sum = _mm512_madd_epi16(qa, _mm512_loadu_si512(xp));

					sum = dpwssd_512(sum, qb, _mm512_loadu_si512(xp + 32), vnni);
					acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_permutexvar_ps(spread[c], p[n]), acc[n]);
				}
			}
		}
		for (int n = 0; n < N; n++)
			mv->y[n * mv->ldy + r] = _mm512_reduce_add_ps(
				_mm512_mask3_fmadd_ps(macc[n], _mm512_set1_ps(-1.0f), acc[n], 0xaaaa));
	}
}

ALWAYS_INLINE TARGET_AVX512 void
q4_k_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	q4_k_int_512_n(mv, r0, r1, N, false);
}
MATVEC_ENTRY(q4_k_512, TARGET_AVX512)

ALWAYS_INLINE TARGET_AVX512VNNI void
q4_k_512_vnni_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	q4_k_int_512_n(mv, r0, r1, N, true);
}
MATVEC_ENTRY(q4_k_512_vnni, TARGET_AVX512VNNI)

/*
 * Q6_K rows by integer dot products, a pair of blocks a register: blocks
 * 4 a + j and 4 a + j + 1 (j even) take the low (j = 0) or high (j = 2)
 * nibbles of ql[64 a .. 64 a + 64) and bits 2 j .. 2 j + 3 of
 * qh[32 a .. 32 a + 32), joined as bytes and widened; first halves and
 * second halves get their own sums, as their scales differ (so there is
 * no sum for vpdpwssd to add to, and no VNNI variant).
 */
ALWAYS_INLINE TARGET_AVX512 void
q6_k_int_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	const int64_t cols = mv->cols;
	const int64_t nb = cols / QK32;
	const int64_t nsb = cols / QK_K;
	const __m256i low4 = _mm256_set1_epi8(0x0f);
	const __m256i bits45 = _mm256_set1_epi8(0x30);
	/* qh's bits for blocks j, j + 1 moved to bits 4, 5: left 4 and 2 (j = 0), right 0 and 2 (j = 2) */
	const __m256i shl01 = _mm256_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4);
	const __m256i shr23 = _mm256_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
	const __m512i offset = _mm512_set1_epi16(32);

	for (int64_t r = r0; r < r1; r++)
	{
		const BlockQ6_K *blk = (const BlockQ6_K *) (mv->w + (size_t) r * mv->row_bytes);
		__m512		acc[QUANT_MATVEC_MAX_N];

		for (int n = 0; n < N; n++)
			acc[n] = _mm512_setzero_ps();
		for (int64_t s = 0; s < nsb; s++)
		{
			uint16_t	dh;
			__m512		f;
			__m512		p[QUANT_MATVEC_MAX_N];

			for (int line = 0; line < 4; line++)
				_mm_prefetch((const char *) &blk[s] + QUANT_PREFETCH_BYTES + 64 * line, _MM_HINT_T0);
			memcpy(&dh, &blk[s].d, sizeof(dh));
			/* lane 2 k + h: d times the scale of half h of block k, times dx of block k */
			f = _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(dh)),
							  _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) blk[s].scales))));
			for (int n = 0; n < N; n++)
				p[n] = _mm512_mul_ps(f, _mm512_moveldup_ps(_mm512_loadu_ps(mv->xw + 2 * (n * nb + 8 * s))));
			for (int a = 0; a < 2; a++)
			{
				const uint8_t *ql = blk[s].ql + 64 * a;
				const uint8_t *qh = blk[s].qh + 32 * a;
				/* values 0..15 (la, ha) and 16..31 (lb, hb) of blocks j and j + 1, side by side */
				__m256i		la = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) ql)),
														 _mm_loadu_si128((const __m128i *) (ql + 32)), 1);
				__m256i		lb = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *) (ql + 16))),
														 _mm_loadu_si128((const __m128i *) (ql + 48)), 1);
				__m256i		ha = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) qh));
				__m256i		hb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) (qh + 16)));

				for (int j = 0; j < 4; j += 2)
				{
					int			k = 4 * a + j;
					/* low nibbles for j = 0, high for j = 2; (l & 0x0f) | h in one ternary logic op */
					__m256i		ln_a = j == 0 ? la : _mm256_srli_epi16(la, 4);
					__m256i		ln_b = j == 0 ? lb : _mm256_srli_epi16(lb, 4);
					__m256i		hn_a = j == 0 ? _mm256_sllv_epi16(ha, shl01) : _mm256_srlv_epi16(ha, shr23);
					__m256i		hn_b = j == 0 ? _mm256_sllv_epi16(hb, shl01) : _mm256_srlv_epi16(hb, shr23);
					__m256i		ba = _mm256_ternarylogic_epi32(ln_a, low4, _mm256_and_si256(hn_a, bits45), 0xea);
					__m256i		bb = _mm256_ternarylogic_epi32(ln_b, low4, _mm256_and_si256(hn_b, bits45), 0xea);
					__m512i		qa = _mm512_sub_epi16(_mm512_cvtepu8_epi16(ba), offset);
					__m512i		qb = _mm512_sub_epi16(_mm512_cvtepu8_epi16(bb), offset);
					const __m512i ia = _mm512_set_epi32(2 * k + 2, 2 * k + 2, 2 * k + 2, 2 * k + 2, 2 * k + 2,
														2 * k + 2, 2 * k + 2, 2 * k + 2, 2 * k, 2 * k, 2 * k,
														2 * k, 2 * k, 2 * k, 2 * k, 2 * k);
					const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(1));

					for (int n = 0; n < N; n++)
					{
						const int16_t *xp = mv->xq + n * cols + QK_K * s + 32 * k;
						__m512i		sa = _mm512_madd_epi16(qa, _mm512_loadu_si512(xp));
						__m512i		sb = _mm512_madd_epi16(qb, _mm512_loadu_si512(xp + 32));

						acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sa), _mm512_permutexvar_ps(ia, p[n]), acc[n]);
						acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sb), _mm512_permutexvar_ps(ib, p[n]), acc[n]);
					}
				}
			}
		}
		for (int n = 0; n < N; n++)
			mv->y[n * mv->ldy + r] = _mm512_reduce_add_ps(acc[n]);
	}
}

ALWAYS_INLINE TARGET_AVX512 void
q6_k_512_n(const QuantMatvec *mv, int64_t r0, int64_t r1, const int N)
{
	q6_k_int_512_n(mv, r0, r1, N);
}
MATVEC_ENTRY(q6_k_512, TARGET_AVX512)

/* The AVX-512 kernel for type (with VNNI or not), or {NULL, false}. */
QuantMatvecKernel
quant_matvec_avx512(GgmlType type, bool vnni)
{
	switch (type)
	{
		case GGML_F32:
			return (QuantMatvecKernel) {f32_512, false};
		case GGML_F16:
			return (QuantMatvecKernel) {f16_512, false};
		case GGML_Q4_0:
			return (QuantMatvecKernel) {vnni ? q4_0_512_vnni : q4_0_512, true};
		case GGML_Q4_1:
			return (QuantMatvecKernel) {vnni ? q4_1_512_vnni : q4_1_512, true};
		case GGML_Q8_0:
			return (QuantMatvecKernel) {vnni ? q8_0_512_vnni : q8_0_512, true};
		case GGML_Q4_K:
			return (QuantMatvecKernel) {vnni ? q4_k_512_vnni : q4_k_512, true};
		case GGML_Q6_K:
			return (QuantMatvecKernel) {q6_k_512, true};
		default:
			return (QuantMatvecKernel) {NULL, false};
	}
}

#else							/* not x86-64: the scalar kernel only */

bool
quant_cpu_has_avx2(void)
{
	return false;
}

bool
quant_cpu_has_avx512(void)
{
	return false;
}

bool
quant_cpu_has_avx512vnni(void)
{
	return false;
}

void
quant_xq_fill(QuantMatvec *mv, const float *x, int N, int64_t cols, void *buf)
{
}

QuantMatvecKernel
quant_matvec_avx2(GgmlType type)
{
	return (QuantMatvecKernel) {NULL, false};
}

QuantMatvecKernel
quant_matvec_avx512(GgmlType type, bool vnni)
{
	return (QuantMatvecKernel) {NULL, false};
}

QuantDequantFn
quant_dequant_avx2(GgmlType type)
{
	return NULL;
}

#endif
