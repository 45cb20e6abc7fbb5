/*
 * quant_ops.h - C interface of the CUDA kernels for ggml's quantized
 * weights (kernels/quant_ops.cu): dequantization, and matrix-vector
 * products that dequantize the weight blocks on the fly, the GPU twins of
 * src/engine/ops/quant.h (checked against quant_dequantize by
 * test/gpu/test_gpu_quant.c).  A quantized model stays quantized in device
 * memory: never a float32 copy of its weights.
 *
 * type is ggml's tensor type number (GgmlType in src/engine/formats/gguf.h); the
 * kernels take F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K and Q6_K, in ggml's
 * block layouts.  Weights are [rows, cols], each row a run of blocks (cols
 * a multiple of the type's block), as quant.h.
 *
 * Conventions as cuda_ops.h: 0 on success, else -1 with a message in
 * msg[msglen]; DEVICE pointers; stream a cudaStream_t as void * (NULL: the
 * default stream); asynchronous launches.
 */
#ifndef PEFT_CUDA_QUANT_OPS_H
#define PEFT_CUDA_QUANT_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* Whether the kernels here take ggml type `type`. */
int			peft_cuda_quant_supported(int type);

/*
 * out[0..n) = the n values at w (n a multiple of the type's block),
 * exactly as quant_dequantize (the same float operations, none fused).
 */
int			peft_cuda_quant_dequantize(int type, const void *w, int64_t n, float *out,
									   void *stream, char *msg, int msglen);

/*
 * y[N, rows] = x[N, cols] W^T (y overwritten), W [rows, cols] of type:
 * one warp per row of W and up to four rows of x, each lane dequantizing
 * runs of 8 values and multiplying them into float sums.  N = 1 is
 * decoding; for long prompts, dequantizing tiles into a cuBLAS GEMM is the
 * faster path.
 */
int			peft_cuda_quant_matvec(int type, const void *w, int64_t rows, int64_t cols,
								   const float *x, int64_t N, float *y,
								   void *stream, char *msg, int msglen);

#ifdef __cplusplus
}
#endif

#endif
