/*
 * cuda_sgmv.h - C interface of the gathered LoRA product over segments
 * (kernels/sgmv.cu): every adapter's low-rank update of a mixed batch in
 * two launches, Punica's SGMV (shrink, then expand), instead of two small
 * GEMMs per adapter.  Conventions as cuda_ops.h: device tensors, 0 on
 * success, else -1 with a message; launches on the default stream.
 */
#ifndef PEFT_CUDA_SGMV_H
#define PEFT_CUDA_SGMV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* The largest rank the kernels take (backend.h's BACKEND_SGMV_MAX_RANK). */
#define PEFT_SGMV_MAX_RANK 256

/* One segment: rows [row0, row0 + rows) use A [rank, in] and B [out, rank] (device). */
typedef struct PeftSgmvSegment
{
	const float *A;
	const float *B;
	int			row0;
	int			rows;
	int			rank;			/* 0 adds nothing */
	float		scale;
} PeftSgmvSegment;

/*
 * Arithmetic of the products, as the GEMMs' (gemm.cu): FP32, TF32 (inputs
 * rounded to TF32, FP32 sums) or BF16 (inputs rounded to BF16, FP32 sums).
 */
typedef enum PeftSgmvMath
{
	PEFT_SGMV_FP32 = 0,
	PEFT_SGMV_TF32 = 1,
	PEFT_SGMV_BF16 = 2
} PeftSgmvMath;

/* Bytes of device workspace peft_cuda_sgmv needs for these segments (host array). */
size_t		peft_cuda_sgmv_workspace(const PeftSgmvSegment *segs, int nsegs);

/*
 * out[rows of s] (row stride ldo, OUT wide) += scale_s (x[rows] A_s^T)
 * B_s^T for every segment s of segs[nsegs] (a HOST array; segments must
 * not overlap), x IN wide with row stride ldx.  The segments are copied
 * into workspace (cudaMemcpyAsync from host memory: the host array may be
 * reused at once), followed by xa = x A^T for every segment ([rows end,
 * max rank], one launch), then out += scale xa B^T (one launch).
 * workspace holds peft_cuda_sgmv_workspace(segs, nsegs) bytes and must
 * not be reused before these launches have run (the default stream
 * orders them before any later use on it).
 */
int			peft_cuda_sgmv(float *out, int ldo, const float *x, int ldx,
						   const PeftSgmvSegment *segs, int nsegs, int IN, int OUT,
						   PeftSgmvMath math, void *workspace, size_t workspace_bytes,
						   char *msg, int msglen);

#ifdef __cplusplus
}
#endif

#endif
