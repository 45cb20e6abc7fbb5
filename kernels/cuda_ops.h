/*
 * cuda_ops.h - C interface of the CUDA element-wise, normalisation, loss
 * and optimiser kernels (the .cu files in kernels/), the GPU twins of the CPU reference
 * ops in src/engine/ops.h.
 *
 * Conventions (the same as peft_cuda_probe in cuda_backend.h):
 *  - Every function returns 0 on success, else -1 after writing a
 *    NUL-terminated message into msg[msglen] (msg may be NULL or msglen 0
 *    when the caller does not want the text).  Nothing calls exit().
 *  - Tensor arguments are DEVICE pointers to contiguous row-major float
 *    arrays (uint8_t / int32_t where stated); scalars are host values.
 *  - stream is a cudaStream_t passed as void * so this header needs no CUDA
 *    include; NULL is the default stream.  Launchers are asynchronous: a
 *    0 return means the launch was accepted, and errors raised while the
 *    kernel runs surface at the next synchronising call
 *    (peft_cuda_synchronize or a download).
 *  - Every *_backward ACCUMULATES (+=) into its gradient outputs, and a
 *    gradient output may be NULL where ops.h allows it.
 *  - An empty tensor (a zero size) is a no-op returning 0; a negative size
 *    or a NULL required pointer is an error.
 */
#ifndef PEFT_CUDA_OPS_H
#define PEFT_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* ---- memory helpers (cuda_ops.cu) ---------------------------------------- */

/* *ptr = cudaMalloc(bytes) (bytes == 0 gives NULL). */
int			peft_cuda_alloc(void **ptr, size_t bytes, char *msg, int msglen);
/* cudaFree(ptr); NULL is a no-op and errors are ignored (for cleanup paths). */
void		peft_cuda_free(void *ptr);
/* Copy bytes from host src to device dst (synchronous). */
int			peft_cuda_upload(void *dst, const void *src, size_t bytes,
							 char *msg, int msglen);
/* Copy bytes from device src to host dst (synchronous). */
int			peft_cuda_download(void *dst, const void *src, size_t bytes,
							   char *msg, int msglen);
/* Set bytes of device ptr to the byte value (0xFF poisons floats with NaN). */
int			peft_cuda_memset(void *ptr, int value, size_t bytes,
							 char *msg, int msglen);
/* Wait for stream (NULL: the default stream) and report any kernel error. */
int			peft_cuda_synchronize(void *stream, char *msg, int msglen);

/* Format msg (if any) and return -1; for launchers' argument checks. */
int			peft_cuda_fail(char *msg, int msglen, const char *fmt,...)
#ifdef __GNUC__
			__attribute__((format(printf, 3, 4)))
#endif
			;
/* Return 0 if the last launch succeeded, else -1 with "what: cuda error". */
int			peft_cuda_check_launch(const char *what, char *msg, int msglen);

#ifdef __CUDACC__
/* Threads per block of the grid-stride element-wise kernels. */
#define PEFT_CUDA_THREADS 256

/* Blocks for a grid-stride loop over n items; capped, the loop covers the rest. */
static inline unsigned int
peft_cuda_grid(size_t n, int threads)
{
	size_t		blocks = (n + (size_t) threads - 1) / (size_t) threads;

	return (unsigned int) (blocks > 65536 ? 65536 : blocks);
}
#endif

/* ---- layernorm.cu --------------------------------------------------------- */

/* out[N,C] = (inp - mean) * rstd * gamma + beta; saves mean[N], rstd[N] (either may be NULL) */
int			peft_cuda_layernorm_forward(float *out, float *mean, float *rstd,
										const float *inp, const float *gamma,
										const float *beta, int N, int C,
										float eps, void *stream,
										char *msg, int msglen);
/* dinp[N,C] += ...; dgamma[C] += ...; dbeta[C] += ... (each may be NULL) */
int			peft_cuda_layernorm_backward(float *dinp, float *dgamma, float *dbeta,
										 const float *dout, const float *inp,
										 const float *gamma, const float *mean,
										 const float *rstd, int N, int C,
										 void *stream, char *msg, int msglen);

/* ---- gelu.cu -------------------------------------------------------------- */

/* out[n] = x * 0.5 * (1 + erf(x / sqrt(2))) (out may alias inp) */
int			peft_cuda_gelu_forward(float *out, const float *inp, size_t n,
								   void *stream, char *msg, int msglen);
/* dinp[n] += dout * gelu'(inp) */
int			peft_cuda_gelu_backward(float *dinp, const float *inp,
									const float *dout, size_t n,
									void *stream, char *msg, int msglen);

/* ---- dropout.cu ----------------------------------------------------------- */

/* out[n] = inp * keep / (1-p) (out may alias inp; p <= 0 or keep NULL copies) */
int			peft_cuda_dropout_forward(float *out, const float *inp,
									  const uint8_t *keep, float p, size_t n,
									  void *stream, char *msg, int msglen);
/* dinp[n] += dout * keep / (1-p) (p <= 0 or keep NULL: dinp += dout) */
int			peft_cuda_dropout_backward(float *dinp, const float *dout,
									   const uint8_t *keep, float p, size_t n,
									   void *stream, char *msg, int msglen);

/* ---- adamw.cu ------------------------------------------------------------- */

/* One AdamW step over param/grad/m/v[n], as adamw_update (t is 1-based). */
int			peft_cuda_adamw_update(float *param, const float *grad, float *m,
								   float *v, size_t n, float lr, float beta1,
								   float beta2, float eps, float weight_decay,
								   int t, void *stream, char *msg, int msglen);

/* Doubles of device scratch that peft_cuda_sum_squares needs in partial. */
#define PEFT_CUDA_SUMSQ_PARTIALS 1024

/*
 * *result (one device double) = sum of squares of g[n], summed in double
 * in an order fixed by n alone (deterministic run to run); partial is
 * device scratch of PEFT_CUDA_SUMSQ_PARTIALS doubles.
 */
int			peft_cuda_sum_squares(double *result, double *partial,
								  const float *g, size_t n, void *stream,
								  char *msg, int msglen);
/* g[n] *= s */
int			peft_cuda_scale_inplace(float *g, float s, size_t n, void *stream,
									char *msg, int msglen);

/* ---- cross_entropy.cu ----------------------------------------------------- */

/*
 * probs[B,K] = softmax(logits[B,K]) per row (probs may be NULL);
 * loss[B] = -log softmax(logits)[b, labels[b]] (0 for a label outside
 * [0, K)).  The mean loss of cross_entropy_forward is sum(loss) / B.
 */
int			peft_cuda_cross_entropy_forward(float *probs, float *loss,
											const float *logits,
											const int32_t *labels, int B, int K,
											void *stream, char *msg, int msglen);
/* dlogits[B,K] += (probs - onehot(labels)) * dloss / B */
int			peft_cuda_cross_entropy_backward(float *dlogits, const float *probs,
											 const int32_t *labels, float dloss,
											 int B, int K, void *stream,
											 char *msg, int msglen);

/*
 * The sections below (embedding.cu, pooling.cu, linear.cu, mse.cu) run on
 * the default stream and take no stream argument; int32_t arrays (ids,
 * rows, seq_start) are device arrays too.
 */

/* ---- embedding.cu --------------------------------------------------------- */

/*
 * out[n,:] = word[ids[rows[n]]] + pos[rows[n] % T] + type[0] for n < N (as
 * varlen_embeddings_forward with type_ids NULL); ids is [B,T], rows[N] the
 * packed rows' places in it.  An id outside [0, vocab) gives zeros in that
 * row (the host validated ids already, this only keeps the kernel in bounds).
 */
int			peft_cuda_embeddings_forward(float *out, const int32_t *ids,
										 const int32_t *rows, int N, int T,
										 const float *word, const float *pos,
										 const float *type, int C, int vocab,
										 char *msg, int msglen);
/*
 * dword[ids[rows[n]], :] += dout[n, :] (atomics, so the order of additions
 * to a repeated id varies; for trainable embeddings such as prompt tuning).
 * An id outside [0, vocab) adds nothing.
 */
int			peft_cuda_embeddings_backward(float *dword, const float *dout,
										  const int32_t *ids, const int32_t *rows,
										  int N, int C, int vocab,
										  char *msg, int msglen);

/* ---- pooling.cu ----------------------------------------------------------- */

/* Packed layout as ops_varlen.h: sequence b is rows [seq_start[b], seq_start[b+1]) of [N,C]. */

/* out[B,C] = mean of each sequence's rows of inp[N,C] (overwritten; zeros for an empty one) */
int			peft_cuda_mean_pool_forward(float *out, const float *inp,
										const int32_t *seq_start, int B, int C,
										char *msg, int msglen);
/* dinp[N,C] += dout[b,:] / len_b on every row of sequence b */
int			peft_cuda_mean_pool_backward(float *dinp, const float *dout,
										 const int32_t *seq_start, int B, int C,
										 char *msg, int msglen);
/* out[B,C] = each sequence's first row ([CLS]); zeros for an empty one */
int			peft_cuda_cls_pool_forward(float *out, const float *inp,
									   const int32_t *seq_start, int B, int C,
									   char *msg, int msglen);
/* dinp[first row of b,:] += dout[b,:] (nothing for an empty sequence) */
int			peft_cuda_cls_pool_backward(float *dinp, const float *dout,
										const int32_t *seq_start, int B, int C,
										char *msg, int msglen);
/*
 * out[B,C] = inp / max(||inp||_2, 1e-12) per row, norm[B] = ||inp||_2
 * (norm may be NULL), as l2norm_forward (sums in double, reciprocal in
 * double rounded once); out may alias inp.
 */
int			peft_cuda_l2norm_forward(float *out, float *norm, const float *inp,
									 int B, int C, char *msg, int msglen);
/*
 * out[BT,C] = zeros everywhere, then row rows[n] = packed row n for n < N
 * (as varlen_scatter_rows; a row outside [0, BT) is skipped).
 */
int			peft_cuda_scatter_rows(float *out, const float *packed,
								   const int32_t *rows, int N, int BT, int C,
								   char *msg, int msglen);

/* ---- linear.cu ------------------------------------------------------------ */

/* out[n, o] += bias[o] for an [N, OUT] tensor with row stride ldo >= OUT */
int			peft_cuda_add_bias(float *out, int ldo, const float *bias,
							   int N, int OUT, char *msg, int msglen);
/*
 * dbias[o] += sum_n dout[n, o] (row stride ldd >= OUT), summed in double in
 * a fixed order without atomics, so the result is the same run to run
 */
int			peft_cuda_bias_backward(float *dbias, const float *dout, int ldd,
									int N, int OUT, char *msg, int msglen);
/* out[n] = a[n] + b[n] (out may alias a or b) */
int			peft_cuda_add(float *out, const float *a, const float *b, size_t n,
						  char *msg, int msglen);

/* ---- mse.cu --------------------------------------------------------------- */

/*
 * sq[b] = (pred[b] - target[b])^2 (difference and square in double); the
 * mean loss of mse_forward is the host's (float) (sum in double of sq / B).
 */
int			peft_cuda_mse_forward(float *sq, const float *pred,
								  const float *target, int B,
								  char *msg, int msglen);
/* dpred[B] += 2 (pred - target) * dloss / B, as mse_backward */
int			peft_cuda_mse_backward(float *dpred, const float *pred,
								   const float *target, float dloss, int B,
								   char *msg, int msglen);

/* ---- adapter_ops.cu -------------------------------------------------------- */

/*
 * dst[i,j] = (or += when accumulate) alpha (vec[j] + offset) src[i,j] for
 * N rows of n columns (row strides ldd, lds; vec NULL reads as ones); dst
 * may be src when not accumulating.
 */
int			peft_cuda_colscale(float *dst, int ldd, const float *src, int lds,
							   const float *vec, float offset, float alpha,
							   int accumulate, int N, int n, char *msg, int msglen);
/* dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j] (b NULL: ones; scale NULL: 1); deterministic */
int			peft_cuda_coldot(float *dvec, const float *a, int lda, const float *b,
							 int ldb, const float *scale, float alpha, int N, int n,
							 char *msg, int msglen);
/* inv[j] = 1 / ||W[j,:]|| for the rows of W [rows, cols] */
int			peft_cuda_row_inv_norms(float *inv, const float *W, int rows, int cols,
									char *msg, int msglen);
/* dst = src, bytes of device memory (asynchronous on the default stream) */
int			peft_cuda_copy(void *dst, const void *src, size_t bytes, char *msg, int msglen);

/* ---- prompt.cu (prompt tuning's virtual tokens) ---------------------------- */

/*
 * out[n,:] = word[ids[rows[n]]] + pos[rows[n] % T + V] + type[0], or for a
 * virtual token (rows[n] = -1 - v) prompt[v] + pos[v] + type[0]
 */
int			peft_cuda_prompt_embeddings(float *out, const int32_t *ids, const int32_t *rows,
										int N, int T, const float *word, const float *pos,
										const float *type, const float *prompt, int V, int C,
										int vocab, char *msg, int msglen);
/* dprompt[v,:] (row stride ldp) += sum over b of demb[seq_start[b] + v, :] (stride lde); deterministic */
int			peft_cuda_prompt_backward(float *dprompt, int ldp, const float *demb, int lde,
									  const int32_t *seq_start, int B, int V, int C,
									  char *msg, int msglen);
/* dst[dst_rows[i]] = src[src_rows[i]], cols columns (a NULL index array is the identity) */
int			peft_cuda_row_copy(float *dst, int ldd, const int32_t *dst_rows, const float *src,
							   int lds, const int32_t *src_rows, int n, int cols,
							   char *msg, int msglen);
/* out[B,C] = mean (cls != 0: first) of each sequence's rows after its first skip */
int			peft_cuda_pool_skip_forward(int cls, float *out, const float *inp,
										const int32_t *seq_start, int B, int C, int skip,
										char *msg, int msglen);
/* dinp += the gradient of peft_cuda_pool_skip_forward */
int			peft_cuda_pool_skip_backward(int cls, float *dinp, const float *dout,
										 const int32_t *seq_start, int B, int C, int skip,
										 char *msg, int msglen);

#ifdef __cplusplus
}
#endif

#endif
