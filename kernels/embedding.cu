/*
 * embedding.cu - the embeddings of packed tokens (word + position + token
 * type 0) and the gradient of the word table, the GPU twins of
 * varlen_embeddings_forward in src/engine/ops/ops_varlen.c (with type_ids
 * NULL) and of its backward for trainable tables such as prompt tuning.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

/*
 * out[n,:] = word[ids[rows[n]]] + pos[rows[n] % T] + type[0], one block per
 * packed row (grid-stride over rows), threads along C so reads coalesce.
 * The sum is (word + pos) + type, the CPU's order, so results match bit for
 * bit.  An id outside [0, vocab) gives a row of zeros: the host validated
 * the ids, this only keeps a bad one from reading out of bounds.
 */
static __global__ void
embeddings_forward_kernel(float *out, const int32_t *ids, const int32_t *rows,
						  int N, int T, const float *word, const float *pos,
						  const float *type, int C, int vocab)
{
	for (int n = blockIdx.x; n < N; n += gridDim.x)
	{
		int32_t		src = rows[n];
		int32_t		id = ids[src];
		float	   *o = out + (size_t) n * C;
		const float *w;
		const float *ps;

		/* id is uniform across the block: the whole block takes one branch. */
		if (id < 0 || id >= vocab)
		{
			for (int c = threadIdx.x; c < C; c += blockDim.x)
				o[c] = 0.0f;
			continue;
		}
		w = word + (size_t) id * C;
		ps = pos + (size_t) (src % T) * C;
		for (int c = threadIdx.x; c < C; c += blockDim.x)
			o[c] = w[c] + ps[c] + type[c];
	}
}

/*
 * dword[ids[rows[n]], :] += dout[n, :], one block per packed row; a token
 * repeated in the batch hits the same table row from several blocks, hence
 * atomics (the order of the additions, and so the last bits, may vary).
 */
static __global__ void
embeddings_backward_kernel(float *dword, const float *dout, const int32_t *ids,
						   const int32_t *rows, int N, int C, int vocab)
{
	for (int n = blockIdx.x; n < N; n += gridDim.x)
	{
		int32_t		id = ids[rows[n]];
		const float *g = dout + (size_t) n * C;
		float	   *dw;

		if (id < 0 || id >= vocab)
			continue;
		dw = dword + (size_t) id * C;
		for (int c = threadIdx.x; c < C; c += blockDim.x)
			atomicAdd(&dw[c], g[c]);
	}
}

/* out[N,C] = word[ids[rows[n]]] + pos[rows[n] % T] + type[0]; zero rows for bad ids. */
extern "C" int
peft_cuda_embeddings_forward(float *out, const int32_t *ids, const int32_t *rows,
							 int N, int T, const float *word, const float *pos,
							 const float *type, int C, int vocab,
							 char *msg, int msglen)
{
	if (N < 0 || C < 0 || vocab < 0 || (N > 0 && T <= 0))
		return peft_cuda_fail(msg, msglen,
							  "embeddings_forward: bad shape N=%d T=%d C=%d vocab=%d",
							  N, T, C, vocab);
	if (N == 0 || C == 0)
		return 0;
	if (out == NULL || ids == NULL || rows == NULL || word == NULL ||
		pos == NULL || type == NULL)
		return peft_cuda_fail(msg, msglen, "embeddings_forward: NULL tensor");
	embeddings_forward_kernel<<<peft_cuda_grid((size_t) N, 1), PEFT_CUDA_THREADS>>>
		(out, ids, rows, N, T, word, pos, type, C, vocab);
	return peft_cuda_check_launch("embeddings_forward_kernel", msg, msglen);
}

/* dword[ids[rows[n]], :] += dout[n, :] (atomics; dword NULL is a no-op). */
extern "C" int
peft_cuda_embeddings_backward(float *dword, const float *dout, const int32_t *ids,
							  const int32_t *rows, int N, int C, int vocab,
							  char *msg, int msglen)
{
	if (N < 0 || C < 0 || vocab < 0)
		return peft_cuda_fail(msg, msglen,
							  "embeddings_backward: bad shape N=%d C=%d vocab=%d",
							  N, C, vocab);
	if (N == 0 || C == 0 || dword == NULL)
		return 0;
	if (dout == NULL || ids == NULL || rows == NULL)
		return peft_cuda_fail(msg, msglen, "embeddings_backward: NULL tensor");
	embeddings_backward_kernel<<<peft_cuda_grid((size_t) N, 1), PEFT_CUDA_THREADS>>>
		(dword, dout, ids, rows, N, C, vocab);
	return peft_cuda_check_launch("embeddings_backward_kernel", msg, msglen);
}
