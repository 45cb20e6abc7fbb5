/*
 * prompt.cu - prompt tuning's virtual tokens: the embeddings of a packed
 * batch whose sequences start with V virtual tokens (rows[n] = -1 - v),
 * their gradient, and pooling that skips them.  GPU twins of
 * cpu_embeddings, cpu_prompt_backward and cpu_pool_* (skip > 0) in
 * src/engine/backend_cpu.c.
 */
#include "cuda_ops.h"

#include <cuda_runtime.h>

/* out[n,:] = (word[ids[r]] or prompt[v]) + pos[r % T + V or v] + type[0], grid-stride. */
static __global__ void
prompt_embeddings_kernel(float *out, const int32_t *ids, const int32_t *rows, int N, int T,
						 const float *word, const float *pos, const float *type,
						 const float *prompt, int V, int C, int vocab)
{
	size_t		total = (size_t) N * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			n = (int) (i / C);
		int			c = (int) (i % C);
		int			r = rows[n];
		float		w;
		int			p;

		if (r < 0)
		{
			w = prompt[(size_t) (-1 - r) * C + c];
			p = -1 - r;
		}
		else
		{
			int			id = ids[r];

			w = id >= 0 && id < vocab ? word[(size_t) id * C + c] : 0.0f;
			p = r % T + V;
		}
		out[i] = w + pos[(size_t) p * C + c] + type[c];
	}
}

/* dprompt[v,c] += sum over sequences b of demb[seq_start[b] + v, c], in order of b. */
static __global__ void
prompt_backward_kernel(float *dprompt, int ldp, const float *demb, int lde,
					   const int32_t *seq_start, int B, int V, int C)
{
	size_t		total = (size_t) V * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			v = (int) (i / C);
		int			c = (int) (i % C);
		double		sum = 0;

		for (int b = 0; b < B; b++)
			sum += demb[((size_t) seq_start[b] + v) * lde + c];
		dprompt[(size_t) v * ldp + c] += (float) sum;
	}
}

/* out[b,c] = mean (cls: first) of rows seq_start[b] + skip .. seq_start[b+1] of column c. */
static __global__ void
pool_skip_forward_kernel(float *out, const float *inp, const int32_t *seq_start, int B, int C,
						 int skip, bool cls)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b] + skip;
		int			len = seq_start[b + 1] - first;
		double		sum = 0;

		if (len <= 0)
		{
			out[i] = 0.0f;
			continue;
		}
		if (cls)
		{
			out[i] = inp[(size_t) first * C + c];
			continue;
		}
		for (int n = first; n < first + len; n++)
			sum += inp[(size_t) n * C + c];
		out[i] = (float) (sum / len);
	}
}

/* dinp rows of b (after skip) += dout[b] / len (cls: the first row += dout[b]). */
static __global__ void
pool_skip_backward_kernel(float *dinp, const float *dout, const int32_t *seq_start, int B, int C,
						  int skip, bool cls)
{
	size_t		total = (size_t) B * C;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
	{
		int			b = (int) (i / C);
		int			c = (int) (i % C);
		int			first = seq_start[b] + skip;
		int			len = seq_start[b + 1] - first;
		float		inv;

		if (len <= 0)
			continue;
		if (cls)
		{
			dinp[(size_t) first * C + c] += dout[i];
			continue;
		}
		inv = (float) (1.0 / len);
		for (int n = first; n < first + len; n++)
			dinp[(size_t) n * C + c] += dout[i] * inv;
	}
}

/* Embeddings of a packed batch with V virtual tokens per sequence. */
extern "C" int
peft_cuda_prompt_embeddings(float *out, const int32_t *ids, const int32_t *rows, int N, int T,
							const float *word, const float *pos, const float *type,
							const float *prompt, int V, int C, int vocab, char *msg, int msglen)
{
	size_t		total = (size_t) N * C;

	if (N < 0 || T <= 0 || V < 0 || C <= 0)
		return peft_cuda_fail(msg, msglen, "prompt_embeddings: bad shape N=%d T=%d V=%d C=%d",
							  N, T, V, C);
	if (total == 0)
		return 0;
	/* prompt is read only for virtual rows; prefix tuning passes NULL with V > 0 */
	if (out == NULL || ids == NULL || rows == NULL || word == NULL || pos == NULL ||
		type == NULL)
		return peft_cuda_fail(msg, msglen, "prompt_embeddings: NULL tensor");
	prompt_embeddings_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(
		out, ids, rows, N, T, word, pos, type, prompt, V, C, vocab);
	return peft_cuda_check_launch("prompt_embeddings_kernel", msg, msglen);
}

/* dprompt[V,C] += the virtual tokens' gradients summed over sequences. */
extern "C" int
peft_cuda_prompt_backward(float *dprompt, int ldp, const float *demb, int lde,
						  const int32_t *seq_start, int B, int V, int C, char *msg, int msglen)
{
	size_t		total = (size_t) V * C;

	if (B < 0 || V < 0 || C < 0 || ldp < C || lde < C)
		return peft_cuda_fail(msg, msglen, "prompt_backward: bad shape B=%d V=%d C=%d", B, V, C);
	if (total == 0 || B == 0 || dprompt == NULL)
		return 0;
	if (demb == NULL || seq_start == NULL)
		return peft_cuda_fail(msg, msglen, "prompt_backward: NULL tensor");
	prompt_backward_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(
		dprompt, ldp, demb, lde, seq_start, B, V, C);
	return peft_cuda_check_launch("prompt_backward_kernel", msg, msglen);
}

/* dst[dst_rows[i], c] = src[src_rows[i], c], one thread per element. */
static __global__ void
row_copy_kernel(float *dst, int ldd, const int32_t *dst_rows, const float *src, int lds,
				const int32_t *src_rows, int n, int cols)
{
	size_t		total = (size_t) n * cols;
	size_t		stride = (size_t) gridDim.x * blockDim.x;

	for (size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride)
	{
		int			i = (int) (k / cols);
		int			c = (int) (k % cols);

		dst[(size_t) (dst_rows ? dst_rows[i] : i) * ldd + c] =
			src[(size_t) (src_rows ? src_rows[i] : i) * lds + c];
	}
}

/* Copy rows between layouts (prefix tuning's extended attention rows). */
extern "C" int
peft_cuda_row_copy(float *dst, int ldd, const int32_t *dst_rows, const float *src, int lds,
				   const int32_t *src_rows, int n, int cols, char *msg, int msglen)
{
	size_t		total = (size_t) n * cols;

	if (n < 0 || cols < 0 || ldd < cols || lds < cols)
		return peft_cuda_fail(msg, msglen, "row_copy: bad shape n=%d cols=%d ldd=%d lds=%d",
							  n, cols, ldd, lds);
	if (total == 0)
		return 0;
	if (dst == NULL || src == NULL)
		return peft_cuda_fail(msg, msglen, "row_copy: NULL tensor");
	row_copy_kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(
		dst, ldd, dst_rows, src, lds, src_rows, n, cols);
	return peft_cuda_check_launch("row_copy_kernel", msg, msglen);
}

/* A skip-pooling kernel over [B, C]: (out or dinp, inp or dout, seq_start, B, C, skip, cls). */
typedef void (*PoolSkipKernel)(float *, const float *, const int32_t *, int, int, int, bool);

/*
 * The skip-pooling launchers' common part: check B, C and skip ("what: bad
 * shape"), return 0 for an empty batch, or for dst NULL when the kernel
 * accumulates into it, fail on a NULL tensor ("what: NULL tensor"), then
 * launch kernel (named kernel_name in a launch error) with one thread per
 * (sequence, column).
 */
static int
launch_pool_skip(const char *what, PoolSkipKernel kernel, const char *kernel_name,
				 bool accumulate, int cls, float *dst, const float *src,
				 const int32_t *seq_start, int B, int C, int skip, char *msg, int msglen)
{
	size_t		total = (size_t) B * C;

	if (B < 0 || C < 0 || skip < 0)
		return peft_cuda_fail(msg, msglen, "%s: bad shape B=%d C=%d skip=%d", what, B, C, skip);
	if (total == 0 || (accumulate && dst == NULL))
		return 0;
	if (dst == NULL || src == NULL || seq_start == NULL)
		return peft_cuda_fail(msg, msglen, "%s: NULL tensor", what);
	kernel<<<peft_cuda_grid(total, PEFT_CUDA_THREADS), PEFT_CUDA_THREADS>>>(
		dst, src, seq_start, B, C, skip, cls != 0);
	return peft_cuda_check_launch(kernel_name, msg, msglen);
}

/* Mean or [CLS] pooling of each sequence's rows after its first skip. */
extern "C" int
peft_cuda_pool_skip_forward(int cls, float *out, const float *inp, const int32_t *seq_start,
							int B, int C, int skip, char *msg, int msglen)
{
	return launch_pool_skip("pool_skip_forward", pool_skip_forward_kernel,
							"pool_skip_forward_kernel", false, cls, out, inp, seq_start,
							B, C, skip, msg, msglen);
}

/* Its backward (accumulates). */
extern "C" int
peft_cuda_pool_skip_backward(int cls, float *dinp, const float *dout, const int32_t *seq_start,
							 int B, int C, int skip, char *msg, int msglen)
{
	return launch_pool_skip("pool_skip_backward", pool_skip_backward_kernel,
							"pool_skip_backward_kernel", true, cls, dinp, dout, seq_start,
							B, C, skip, msg, msglen);
}
