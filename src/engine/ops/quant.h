/*
 * quant.h - ggml's quantized tensor types: dequantization, and matrix
 * products that dequantize blocks on the fly inside the kernel, so that a
 * quantized model is never copied to float32 (its 540 MB for SmolLM2-135M
 * would be 28 GB for a 7B model).
 *
 * Weights are in ggml's layout: a [rows, cols] matrix is rows rows of cols
 * values each (cols a multiple of the type's block size), each row a run of
 * blocks (gguf.h's gguf_type_layout gives the block sizes).  That is
 * PyTorch's [out_features, in_features]: y = W x.
 *
 * Every function has a scalar reference; the vector paths (AVX2, AVX-512,
 * AVX-512 with VNNI, chosen at run time from the CPU's features) are
 * tested against it.
 */
#ifndef PEFT_ENGINE_QUANT_H
#define PEFT_ENGINE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "gguf.h"
#include "status.h"

/* Whether type can be dequantized and multiplied here. */
bool		quant_supported(GgmlType type);

/* Bytes of one row of cols values of type (cols a multiple of its block). */
size_t		quant_row_bytes(GgmlType type, int64_t cols);

/*
 * out[0..n) = the n values at data (n a multiple of the type's block),
 * exactly as ggml (and the gguf Python package) dequantize them, on every
 * path (only an F16 signalling NaN may come out quiet on a vector path).
 */
void		quant_dequantize(GgmlType type, const void *data, int64_t n, float *out);

/*
 * y[N, rows] = x[N, cols] W^T, W [rows, cols] of type (y overwritten).
 * N = 1 is decoding's matrix-vector product; larger N (prompts, batched
 * decoding, training) dequantizes tiles of W into a small per-thread buffer
 * and multiplies them through BLAS.  Split over the engine's thread pool;
 * the result does not depend on the thread count.
 *
 * Up to 4 columns of x on a vector path, Q4_0, Q4_1, Q8_0, Q4_K and Q6_K
 * take integer dot products with x rounded to int16 per block of 32 values (relative
 * error about 1.5e-5 against quant_matmul_reference, rather than float
 * rounding's 1e-7); a NaN or an infinity in x still makes its column's
 * outputs non-finite.
 */
void		quant_matmul(GgmlType type, const void *w, int64_t rows, int64_t cols,
						 const float *x, int64_t N, float *y);

/*
 * Rows of x up to which a product runs the matrix-vector kernels, in
 * groups of four rows, rather than dequantized tiles through BLAS, while
 * rows_alone is set (below): on SmolLM2's 576 x 1536 Q4_1 matrix (AVX-512
 * VNNI, one thread) 16 rows took 23 us a row in groups against 77 us
 * through BLAS, and 64 rows 23 against 61 at 65 (test/bench/RESULTS.md).
 */
#define QUANT_GROUPED_MAX_N 64

/*
 * While rows_alone is set, quant_matmul computes up to QUANT_GROUPED_MAX_N columns of x
 * through the matrix-vector kernels too, four at a time: each column's
 * result is then the one it gets alone, whatever it is batched with, and
 * 16 columns cost about a third of the BLAS route's time.  Meant for
 * decoding steps of many sequences (decoder_forward sets it around them);
 * prompts and training keep the float route, which is closer to float32.
 * Per process (the engine computes on its caller's thread).  Returns the
 * previous setting.
 */
bool		quant_set_rows_alone(bool rows_alone);

/*
 * dx[N, cols] += dy[N, rows] W: the input gradient through a frozen
 * quantized weight (training adapters on a quantized base, next issue).
 */
void		quant_matmul_backward_input(GgmlType type, const void *w, int64_t rows, int64_t cols,
										const float *dy, int64_t N, float *dx);

/* The scalar reference of quant_matmul, for the tests. */
void		quant_matmul_reference(GgmlType type, const void *w, int64_t rows, int64_t cols,
								   const float *x, int64_t N, float *y);

/* Which vector path quant_matmul uses here: "avx512vnni", "avx512", "avx2" or "scalar". */
const char *quant_kernel_name(void);

/*
 * Force a path ("scalar", "avx2", "avx512", "avx512vnni": AVX-512 with
 * vpdpwssd in the integer kernels; NULL: the best the CPU has); false if
 * unavailable.
 */
bool		quant_force_kernel(const char *name);

#endif
