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

#ifdef __cplusplus
}
#endif

#endif
