/*
 * sgmv.cu - the LoRA update of every segment of a mixed batch in two
 * launches (Punica's SGMV, S-LoRA's gathered products), the GPU twin of
 * the CPU backend's lora_sgmv loops:
 *
 *   shrink:  xa[rows of s, :r_s] = x[rows of s] A_s^T       (one launch)
 *   expand:  out[rows of s]     += scale_s xa[rows, :r_s] B_s^T
 *
 * Both phases are the same product, C[rows, cols] (+)= P[rows, K] Q[cols,
 * K]^T per segment, with a segment's own Q (A or B), K (in or r_s) and
 * cols (r_s or out).  One block computes a TILE x TILE tile of one
 * segment's C (grid z: the segment, y: row tiles, x: column tiles);
 * blocks past a segment's rows or columns return at once, so segments of
 * any size share one launch.  The sums are FP32 on CUDA cores; for TF32 and
 * BF16 the inputs are rounded as the tensor-core GEMMs round them
 * (gemm.cu), xa included, so the results match the per-segment path's to
 * its rounding, not bit for bit.
 */
#include "cuda_ops.h"
#include "cuda_sgmv.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define TILE 32					/* rows and columns of a block's tile, and its K step */
#define TILE_LANES 8			/* threadIdx.y: each thread has TILE / TILE_LANES rows */
#define ROWS_PER_THREAD (TILE / TILE_LANES)
#define GRID_LIMIT 65535		/* gridDim.y and .z */
#define WORKSPACE_ALIGN 256

/* v rounded to the arithmetic's input precision. */
template <int MATH>
static __device__ __forceinline__ float
round_input(float v)
{
	if (MATH == PEFT_SGMV_BF16)
		return __bfloat162float(__float2bfloat16_rn(v));
	if (MATH == PEFT_SGMV_TF32)
	{
		unsigned	u = __float_as_uint(v);

		/* round to nearest on the 13 bits TF32 drops; Inf and NaN kept */
		if ((u & 0x7f800000u) != 0x7f800000u)
			u = (u + 0x1000u) & 0xffffe000u;
		return __uint_as_float(u);
	}
	return v;
}

/*
 * One tile of C = P Q^T for segment blockIdx.z: shrink (EXPAND false:
 * P = x, Q = A_s, K = in, cols = r_s, C = xa stored) or expand (P = xa,
 * Q = B_s, K = r_s, cols = out, C = out += scale_s times the product).
 * Rows are the segment's rows of P and C (offset by row0).
 */
template <int MATH, bool EXPAND>
static __global__ void
sgmv_kernel(float *C, int ldc, const float *P, int ldp, const PeftSgmvSegment *segs,
			int k_or_cols)
{
	__shared__ float ps[TILE][TILE + 1];
	__shared__ float qs[TILE][TILE + 1];
	const PeftSgmvSegment sg = segs[blockIdx.z];
	int			K = EXPAND ? sg.rank : k_or_cols;
	int			cols = EXPAND ? k_or_cols : sg.rank;
	const float *Q = EXPAND ? sg.B : sg.A;
	int			ldq = EXPAND ? sg.rank : k_or_cols;
	int			r0 = blockIdx.y * TILE;
	int			c0 = blockIdx.x * TILE;
	int			tx = threadIdx.x;
	int			ty = threadIdx.y;
	float		acc[ROWS_PER_THREAD] = {0};

	/* the whole block leaves together, before any barrier */
	if (sg.rank == 0 || r0 >= sg.rows || c0 >= cols)
		return;
	P += (size_t) (sg.row0 + r0) * ldp;
	Q += (size_t) c0 * ldq;
	for (int k0 = 0; k0 < K; k0 += TILE)
	{
		int			k = k0 + tx;

		for (int i = ty; i < TILE; i += TILE_LANES)
		{
			ps[i][tx] = r0 + i < sg.rows && k < K ? round_input<MATH>(P[(size_t) i * ldp + k]) : 0.0f;
			qs[i][tx] = c0 + i < cols && k < K ? round_input<MATH>(Q[(size_t) i * ldq + k]) : 0.0f;
		}
		__syncthreads();
#pragma unroll 8
		for (int kk = 0; kk < TILE; kk++)
		{
			float		q = qs[tx][kk];

#pragma unroll
			for (int j = 0; j < ROWS_PER_THREAD; j++)
				acc[j] = fmaf(ps[ty + j * TILE_LANES][kk], q, acc[j]);
		}
		__syncthreads();
	}
	for (int j = 0; j < ROWS_PER_THREAD; j++)
	{
		int			row = r0 + ty + j * TILE_LANES;
		int			col = c0 + tx;

		if (row < sg.rows && col < cols)
		{
			float	   *c = C + (size_t) (sg.row0 + row) * ldc + col;

			if (EXPAND)
				*c += sg.scale * acc[j];
			else
				*c = acc[j];
		}
	}
}

/* The extent of the segments that add something: rows end, most rows, largest rank. */
static void
extent(const PeftSgmvSegment *segs, int nsegs, int *rows_end, int *max_rows, int *max_rank)
{
	*rows_end = *max_rows = *max_rank = 0;
	for (int s = 0; s < nsegs; s++)
		if (segs[s].rows > 0 && segs[s].rank > 0)
		{
			if (segs[s].row0 + segs[s].rows > *rows_end)
				*rows_end = segs[s].row0 + segs[s].rows;
			if (segs[s].rows > *max_rows)
				*max_rows = segs[s].rows;
			if (segs[s].rank > *max_rank)
				*max_rank = segs[s].rank;
		}
}

/* Bytes of the segment array in the workspace, aligned for the xa after it. */
static size_t
segments_bytes(int nsegs)
{
	size_t		b = (size_t) nsegs * sizeof(PeftSgmvSegment);

	return (b + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
}

/* The segment array, then xa [rows end, max rank]. */
extern "C" size_t
peft_cuda_sgmv_workspace(const PeftSgmvSegment *segs, int nsegs)
{
	int			rows_end;
	int			max_rows;
	int			max_rank;

	extent(segs, nsegs, &rows_end, &max_rows, &max_rank);
	return segments_bytes(nsegs) + (size_t) rows_end * max_rank * sizeof(float);
}

/* Launch the shrink and the expand in one arithmetic, checking each launch. */
template <int MATH>
static int
launch(float *out, int ldo, const float *x, int ldx, const PeftSgmvSegment *dsegs, int nsegs,
	   float *xa, int ldxa, int max_rows, int IN, int OUT, char *msg, int msglen)
{
	dim3		block(TILE, TILE_LANES);
	unsigned	row_tiles = (unsigned) ((max_rows + TILE - 1) / TILE);
	dim3		shrink((unsigned) ((ldxa + TILE - 1) / TILE), row_tiles, (unsigned) nsegs);
	dim3		expand((unsigned) ((OUT + TILE - 1) / TILE), row_tiles, (unsigned) nsegs);

	sgmv_kernel<MATH, false><<<shrink, block>>>(xa, ldxa, x, ldx, dsegs, IN);
	if (peft_cuda_check_launch("sgmv shrink kernel", msg, msglen) != 0)
		return -1;
	sgmv_kernel<MATH, true><<<expand, block>>>(out, ldo, xa, ldxa, dsegs, OUT);
	return peft_cuda_check_launch("sgmv expand kernel", msg, msglen);
}

/* Every segment's LoRA update: shrink into the workspace's xa, expand onto out. */
extern "C" int
peft_cuda_sgmv(float *out, int ldo, const float *x, int ldx, const PeftSgmvSegment *segs,
			   int nsegs, int IN, int OUT, PeftSgmvMath math, void *workspace,
			   size_t workspace_bytes, char *msg, int msglen)
{
	int			rows_end;
	int			max_rows;
	int			max_rank;
	float	   *xa;
	cudaError_t err;

	if (IN < 1 || OUT < 1 || ldx < IN || ldo < OUT || nsegs < 0 || (nsegs > 0 && segs == NULL))
		return peft_cuda_fail(msg, msglen, "sgmv: bad shapes IN=%d OUT=%d ldx=%d ldo=%d nsegs=%d",
							  IN, OUT, ldx, ldo, nsegs);
	if (nsegs > GRID_LIMIT)
		return peft_cuda_fail(msg, msglen, "sgmv: %d segments (at most %d)", nsegs, GRID_LIMIT);
	for (int s = 0; s < nsegs; s++)
		if (segs[s].row0 < 0 || segs[s].rows < 0 || segs[s].rank < 0 ||
			segs[s].rank > PEFT_SGMV_MAX_RANK ||
			(segs[s].rows > 0 && segs[s].rank > 0 && (segs[s].A == NULL || segs[s].B == NULL)))
			return peft_cuda_fail(msg, msglen, "sgmv: segment %d: %d rows at row %d, rank %d "
								  "(at most %d)", s, segs[s].rows, segs[s].row0, segs[s].rank,
								  PEFT_SGMV_MAX_RANK);
	extent(segs, nsegs, &rows_end, &max_rows, &max_rank);
	if (max_rows == 0)
		return 0;
	if ((max_rows + TILE - 1) / TILE > GRID_LIMIT)
		return peft_cuda_fail(msg, msglen, "sgmv: a segment of %d rows is too long", max_rows);
	if (out == NULL || x == NULL || workspace == NULL ||
		workspace_bytes < peft_cuda_sgmv_workspace(segs, nsegs))
		return peft_cuda_fail(msg, msglen, "sgmv: NULL tensor, or a workspace of %zu bytes "
							  "(%zu needed)", workspace_bytes,
							  peft_cuda_sgmv_workspace(segs, nsegs));
	/* pageable host memory: staged before the call returns, ordered on the stream */
	err = cudaMemcpyAsync(workspace, segs, (size_t) nsegs * sizeof(PeftSgmvSegment),
						  cudaMemcpyHostToDevice, 0);
	if (err != cudaSuccess)
		return peft_cuda_fail(msg, msglen, "sgmv: copying the segments: %s",
							  cudaGetErrorString(err));
	xa = (float *) ((char *) workspace + segments_bytes(nsegs));
	switch (math)
	{
		case PEFT_SGMV_TF32:
			return launch<PEFT_SGMV_TF32>(out, ldo, x, ldx, (const PeftSgmvSegment *) workspace,
										  nsegs, xa, max_rank, max_rows, IN, OUT, msg, msglen);
		case PEFT_SGMV_BF16:
			return launch<PEFT_SGMV_BF16>(out, ldo, x, ldx, (const PeftSgmvSegment *) workspace,
										  nsegs, xa, max_rank, max_rows, IN, OUT, msg, msglen);
		default:
			return launch<PEFT_SGMV_FP32>(out, ldo, x, ldx, (const PeftSgmvSegment *) workspace,
										  nsegs, xa, max_rank, max_rows, IN, OUT, msg, msglen);
	}
}
