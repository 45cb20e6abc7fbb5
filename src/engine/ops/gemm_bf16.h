/*
 * gemm_bf16.h - matrix products with bf16 inputs and fp32 accumulation, as
 * PyTorch's autocast computes a linear layer on the CPU.
 *
 * A and B are float32 in memory; the kernel rounds every element to bf16
 * (round to nearest even, float32 denormals to zero, as the AVX512_BF16
 * conversion does) while it packs them, multiplies the bf16 values exactly
 * and sums in fp32.  Three paths compute the same thing and differ only in
 * the order of the fp32 sums:
 *
 *   amx      Intel AMX tiles (Sapphire Rapids and later): 16x16 fp32 tiles,
 *            2x2 of them per block of C;
 *   avx512   AVX512_BF16's vdpbf16ps (Cooper Lake, Zen 4 and later);
 *   scalar   plain C, on any CPU (and every non-x86 one).
 *
 * gemm_bf16 takes the fastest path the CPU (and, for AMX, the Linux kernel)
 * allows, chosen once; gemm_bf16_on runs a named one, for tests and
 * benchmarks.  Work is split over the engine's thread pool (threadpool.h)
 * by blocks of 32 rows, and of columns when the rows are too few.
 */
#ifndef PEFT_ENGINE_GEMM_BF16_H
#define PEFT_ENGINE_GEMM_BF16_H

#include <stdbool.h>

typedef enum GemmBf16Path
{
	GEMM_BF16_AUTO = 0,			/* the fastest available */
	GEMM_BF16_AMX,
	GEMM_BF16_AVX512,
	GEMM_BF16_SCALAR
} GemmBf16Path;

/*
 * Whether AMX tiles (AMX-TILE, AMX-BF16) can run here: the CPU has them and
 * Linux granted this process the tile state (arch_prctl, asked once).
 */
bool		gemm_bf16_amx_available(void);

/* Whether a path can run on this CPU (GEMM_BF16_AUTO and SCALAR always can). */
bool		gemm_bf16_path_available(GemmBf16Path path);

/* The path gemm_bf16 takes. */
GemmBf16Path gemm_bf16_best_path(void);

/* "amx", "avx512", "scalar" (AUTO: the best path's name). */
const char *gemm_bf16_path_name(GemmBf16Path path);

/* x rounded to bf16 as the kernels round their inputs, back as a float. */
float		gemm_bf16_round(float x);

/*
 * C[M,N] (+)= A[M,K] . op(B), all row-major with row strides lda, ldb, ldc
 * (in floats).  op(B) is B^T for B [N,K] when trans_b (a linear layer's
 * forward, y = x W^T), B itself for B [K,N] otherwise (its input gradient,
 * dx = dy W).  accumulate adds to C; otherwise C is overwritten (and never
 * read, so it may hold NaN).
 */
void		gemm_bf16(bool trans_b, int M, int N, int K,
					  const float *A, int lda, const float *B, int ldb,
					  float *C, int ldc, bool accumulate);

/* gemm_bf16 on a given path (an unavailable one falls back to the best). */
void		gemm_bf16_on(GemmBf16Path path, bool trans_b, int M, int N, int K,
						 const float *A, int lda, const float *B, int ldb,
						 float *C, int ldc, bool accumulate);

/*
 * Rows [first, first + count) of a [rows, cols] matrix as floats, dense
 * (count * cols values) at out: a quantized weight dequantized, say.  Called
 * from several threads at once, each with its own out.
 */
typedef void (*GemmBf16RowsFn) (const void *ctx, int first, int count, float *out);

/*
 * gemm_bf16 with B given by its rows: row i of the matrix is what rows(ctx,
 * i, ...) gives, B [N,K] when trans_b (rows has N rows of K values), B
 * [K,N] otherwise (K rows of N).  B is never held as float32 whole: its
 * packing, split over the threads like gemm_bf16's, fetches a few rows at a
 * time into a small scratch of each thread's (16 rows when trans_b, up to
 * 32 KB of rows otherwise) and packs them from there.  The result has the
 * same bits as gemm_bf16 on the matrix rows gives, on every path.
 *
 * False, with nothing done (C untouched), when the calling thread cannot
 * have the memory for packed B (2 bytes a value, rounded up to 32 columns
 * of op(B) and 32 values of k) and one scratch; the buffers are kept per
 * thread between calls, so a product no larger than one that ran on the
 * same thread does not fail.
 */
bool		gemm_bf16_rows(bool trans_b, int M, int N, int K, const float *A, int lda,
						   GemmBf16RowsFn rows, const void *ctx, float *C, int ldc, bool accumulate);

/* gemm_bf16_rows on a given path (an unavailable one falls back to the best). */
bool		gemm_bf16_rows_on(GemmBf16Path path, bool trans_b, int M, int N, int K,
							  const float *A, int lda, GemmBf16RowsFn rows, const void *ctx,
							  float *C, int ldc, bool accumulate);

#endif
