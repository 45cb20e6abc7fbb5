/*
 * backend.h - where the network computes: one table of operations over
 * buffers that live in the backend's memory (host memory for the CPU,
 * device memory for CUDA).  network.c is written once against this table;
 * backend_cpu.c implements it with the reference ops (ops.h, ops_varlen.h,
 * matmul.h) and backend_cuda.c with cuBLAS and the kernels in kernels/.
 * The CPU backend is the reference the CUDA one is tested against.
 *
 * Errors.  CPU operations cannot fail.  CUDA operations can, and most of
 * their errors surface later, at a synchronising call, as CUDA reports
 * them.  So operations return nothing: the first failure is recorded in
 * the Backend, every later operation is skipped, and callers collect it
 * at their synchronisation points with backend_check(), which turns it
 * into a PeftCode (PEFT_ERR_DEVICE, or PEFT_ERR_NOMEM when device memory
 * ran out) and clears it.  Nothing calls exit().
 *
 * Conventions are ops.h's: row-major `real` arrays, *_backward ACCUMULATE
 * into gradients that may be NULL; int32 arrays (ids, rows, seq_start,
 * labels) are in the backend's memory too.
 */
#ifndef PEFT_ENGINE_BACKEND_H
#define PEFT_ENGINE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bert.h"
#include "engine_api.h"
#include "real.h"
#include "status.h"

/* Counters for benchmarks: filled while profile is set. */
typedef struct BackendProfile
{
	bool		enabled;		/* time every product (CUDA: synchronising around it) */
	double		gemm_seconds;
	double		gemm_flops;		/* 2 M N K summed over every product */
	double		attention_flops;	/* scores and weighted sums */
} BackendProfile;

/* The frozen base weights of one encoder layer, in the backend's memory. */
typedef struct LayerWeights
{
	const real *qkv_weight;		/* [3C, C] query | key | value */
	const real *qkv_bias;		/* [3C] */
	const real *weight[BERT_NUM_LINEAR];	/* [out, in] */
	const real *bias[BERT_NUM_LINEAR];
	const real *ln_attn_gamma;
	const real *ln_attn_beta;
	const real *ln_out_gamma;
	const real *ln_out_beta;
} LayerWeights;

/* All frozen base weights of a model, in the backend's memory. */
typedef struct ModelWeights
{
	const real *word;
	const real *pos;
	const real *type;
	const real *ln_emb_gamma;
	const real *ln_emb_beta;
	LayerWeights *layers;		/* [num_layers] */
	void	   *owner;			/* backend-private */
} ModelWeights;

typedef struct Backend Backend;

/* The largest rank lora_sgmv takes (as Punica's SGMV kernels). */
#define BACKEND_SGMV_MAX_RANK 256

/*
 * One segment of a gathered LoRA product (lora_sgmv): rows [row0, row0 +
 * rows) of the batch use this adapter's A and B (in the backend's memory).
 */
typedef struct LoraSegment
{
	const real *A;				/* [rank, in] */
	const real *B;				/* [out, rank] */
	int			row0;
	int			rows;
	int			rank;			/* 0 .. BACKEND_SGMV_MAX_RANK; 0 adds nothing */
	real		scale;			/* alpha / r */
} LoraSegment;

typedef struct BackendOps
{
	/* ---- memory ---- */
	/* Zeroed buffer of bytes (NULL with an error recorded on failure). */
	void	   *(*alloc) (Backend *be, size_t bytes);
	void		(*release) (Backend *be, void *p);
	void		(*upload) (Backend *be, void *dst, const void *host, size_t bytes);
	void		(*download) (Backend *be, void *host, const void *src, size_t bytes);
	void		(*zero) (Backend *be, void *p, size_t bytes);
	/* dst = src, both in the backend's memory */
	void		(*copy) (Backend *be, void *dst, const void *src, size_t bytes);
	/* Wait for queued work; errors of it are recorded. */
	void		(*sync) (Backend *be);

	/*
	 * Bracket every use: enter takes the backend's lock and returns its
	 * generation, which changes when idle release has freed every buffer
	 * (the caller's pointers are then stale and must be made again);
	 * leave releases the lock.  pin(+1/-1) keeps idle release away while
	 * a training run holds optimizer state in the backend's memory.
	 */
	uint64_t	(*enter) (Backend *be);
	void		(*leave) (Backend *be);
	void		(*pin) (Backend *be, int delta);
	/* The base weights of model in this backend's memory (kept and shared). */
	PeftCode	(*weights_acquire) (Backend *be, const BertModel *model,
									ModelWeights **out, PeftError *err);
	void		(*weights_release) (Backend *be, ModelWeights *weights);

	/* ---- products ---- */
	/* C[M,N] = alpha op(A) op(B) + beta C, as cblas_gemm row-major. */
	void		(*gemm) (Backend *be, bool trans_a, bool trans_b, int M, int N, int K,
						 real alpha, const real *A, int lda, const real *B, int ldb,
						 real beta, real *C, int ldc);
	/* out[N, OUT] (row stride ldo) = x[N, IN] (stride ldx) W^T + bias (bias may be NULL). */
	void		(*linear) (Backend *be, real *out, int ldo, const real *x, int ldx,
						   const real *W, const real *bias, int N, int IN, int OUT);
	/* dx[N,C] += dout W, dW[K,C] += dout^T x, db[K] += colsum(dout) (the head; any may be NULL). */
	void		(*linear_backward) (Backend *be, real *dx, real *dW, real *db,
									const real *dout, const real *x, const real *W,
									int N, int C, int K);

	/*
	 * Every segment's LoRA update in one call (Punica's SGMV): for each
	 * segment s of segs[nsegs] (a host array; segments do not overlap),
	 * out[rows of s] (row stride ldo, OUT wide) += scale_s (x[rows] A_s^T)
	 * B_s^T, x IN wide with row stride ldx.  Two phases: x A^T into an
	 * [N, max rank] scratch, then that times B^T onto out; CUDA runs each
	 * as one launch over all segments, in the backend's precision (the
	 * CPU's loops are FP32 with double sums, the reference).  A rank above
	 * BACKEND_SGMV_MAX_RANK or a bad shape records PEFT_ERR_INVALID.
	 */
	void		(*lora_sgmv) (Backend *be, real *out, int ldo, const real *x, int ldx,
							  const LoraSegment *segs, int nsegs, int IN, int OUT);

	/* ---- encoder ---- */
	/*
	 * out[n] = word[ids[rows[n]]] + pos[rows[n] % T + V] + type[0]; a
	 * virtual token (rows[n] = -1 - v, prompt tuning) gets prompt[v] +
	 * pos[v] + type[0].  V = 0 and prompt NULL without prompt tuning.
	 */
	void		(*embeddings) (Backend *be, real *out, const int32_t *ids,
							   const int32_t *rows, int N, int T, const real *word,
							   const real *pos, const real *type, const real *prompt,
							   int V, int C, int vocab);
	/*
	 * dprompt[v] += sum_b demb[seq_start[b] + v], C columns, row strides
	 * ldp and lde (each sequence's first V rows are virtual: prompt and
	 * prefix tuning's gradients)
	 */
	void		(*prompt_backward) (Backend *be, real *dprompt, int ldp, const real *demb,
									int lde, const int32_t *seq_start, int B, int V, int C);
	/*
	 * dst[dst_rows[i]] = src[src_rows[i]] for i < n, cols columns, row
	 * strides ldd and lds (a NULL index array is the identity)
	 */
	void		(*row_copy) (Backend *be, real *dst, int ldd, const int32_t *dst_rows,
							 const real *src, int lds, const int32_t *src_rows, int n, int cols);
	void		(*layernorm_forward) (Backend *be, real *out, real *mean, real *rstd,
									  const real *inp, const real *gamma,
									  const real *beta, int N, int C, real eps);
	/* dinp += input gradient; dbeta += colsum(dout) when not NULL (BitFit) */
	void		(*layernorm_backward) (Backend *be, real *dinp, real *dbeta, const real *dout,
									   const real *inp, const real *gamma,
									   const real *mean, const real *rstd, int N, int C);
	void		(*gelu_forward) (Backend *be, real *out, const real *inp, size_t n);
	void		(*gelu_backward) (Backend *be, real *dinp, const real *inp,
								  const real *dout, size_t n);
	void		(*add) (Backend *be, real *out, const real *a, const real *b, size_t n);
	/* out = inp * keep / (1-p); the backward pass reuses it to mask gradients */
	void		(*dropout) (Backend *be, real *out, const real *inp,
							const uint8_t *keep, real p, size_t n);
	/* dinp += dout * keep / (1-p) */
	void		(*dropout_backward) (Backend *be, real *dinp, const real *dout,
									 const uint8_t *keep, real p, size_t n);
	/* as varlen_attention_forward / _backward (ops_varlen.h), N = seq_start[B] */
	void		(*attention_forward) (Backend *be, real *out, real *probs, real *dropped,
									  const real *q, const real *k, const real *v, int ld,
									  const uint8_t *keep, real p, const int32_t *seq_start,
									  int B, int N, int C, int NH);
	void		(*attention_backward) (Backend *be, real *dq, real *dk, real *dv,
									   real *scratch, const real *dout, const real *probs,
									   const real *q, const real *k, const real *v, int ld,
									   const uint8_t *keep, real p,
									   const int32_t *seq_start, int B, int N, int C, int NH);
	/*
	 * out[B,C] = mean (cls: first row) of each sequence's rows after its
	 * first skip (virtual tokens); backward +=
	 */
	void		(*pool_forward) (Backend *be, bool cls, real *out, const real *inp,
								 const int32_t *seq_start, int B, int C, int skip);
	void		(*pool_backward) (Backend *be, bool cls, real *dinp, const real *dout,
								  const int32_t *seq_start, int B, int C, int skip);
	void		(*l2norm_forward) (Backend *be, real *out, real *norm, const real *inp,
								   int B, int C);
	/* out[BT,C] = zeros, then packed row n at rows[n] (negative rows, virtual tokens, skipped) */
	void		(*scatter_rows) (Backend *be, real *out, const real *packed,
								 const int32_t *rows, int N, int BT, int C);

	/* ---- adapter methods: per-column scaling and reductions ---- */
	/*
	 * dst[i,j] = (or += when accumulate) alpha (vec[j] + offset) src[i,j]
	 * for N rows of n columns (row strides ldd, lds; vec NULL reads as
	 * ones); dst may be src when not accumulating.  (IA)^3 scaling and
	 * DoRA's magnitude.
	 */
	void		(*colscale) (Backend *be, real *dst, int ldd, const real *src, int lds,
							 const real *vec, real offset, real alpha, bool accumulate,
							 int N, int n);
	/*
	 * dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j] over N rows (b NULL:
	 * the column sums of a; scale NULL: 1): gradients of per-column
	 * vectors and of biases.
	 */
	void		(*coldot) (Backend *be, real *dvec, const real *a, int lda, const real *b,
						   int ldb, const real *scale, real alpha, int N, int n);
	/* inv[j] = 1 / ||W[j,:]|| for the rows of W [rows, cols] (DoRA's weight norm) */
	void		(*row_inv_norms) (Backend *be, real *inv, const real *W, int rows, int cols);

	/* ---- losses (the mean loss comes back to the host) ---- */
	double		(*cross_entropy_forward) (Backend *be, real *probs, const real *logits,
										  const int32_t *labels, int B, int K);
	void		(*cross_entropy_backward) (Backend *be, real *dlogits, const real *probs,
										   const int32_t *labels, real dloss, int B, int K);
	double		(*mse_forward) (Backend *be, const real *pred, const real *target, int B);
	void		(*mse_backward) (Backend *be, real *dpred, const real *pred,
								 const real *target, real dloss, int B);

	/* ---- optimizer, over all parameters at once ---- */
	double		(*sum_squares) (Backend *be, const real *g, size_t n);
	void		(*scale) (Backend *be, real *g, real s, size_t n);
	void		(*adamw) (Backend *be, real *param, const real *grad, real *m, real *v,
						  size_t n, real lr, real beta1, real beta2, real eps,
						  real weight_decay, int t);

	/* Destroy a backend made by a create function (not the static CPU one). */
	void		(*destroy) (Backend *be);
} BackendOps;

struct Backend
{
	const BackendOps *ops;
	PeftDevice	kind;			/* PEFT_DEVICE_CPU or PEFT_DEVICE_CUDA */
	const char *name;			/* "cpu" or "cuda" */
	bool		host_memory;	/* buffers are host pointers */
	PeftPrecision precision;
	bool		failed;			/* an operation failed: see error */
	PeftError	error;
	BackendProfile profile;
	void	   *state;			/* implementation-private */
};

/* The process's CPU backend (static; never destroyed). */
Backend    *backend_cpu(void);

/*
 * The CUDA backend's entry points.  CUDA builds put the CUDA backend and
 * kernels in their own library, peft_engine_cuda.so beside peft_engine.so,
 * which backend.c loads only when CUDA is first asked for: a process that
 * never computes on a GPU never maps cuBLAS (about 90 MiB per connection).
 * Test programs link it in directly instead.
 */
#define PEFT_CUDA_BACKEND_ABI 1
#define PEFT_CUDA_BACKEND_SYMBOL "peft_cuda_backend_api"

typedef struct CudaBackendApi
{
	int			abi_version;
	bool		(*available) (void);
	PeftCode	(*get) (Backend **out, PeftError *err);
	void		(*set_idle_release) (int seconds);
	int			(*device_count) (void);
} CudaBackendApi;

/* Number of visible CUDA devices (0 without the CUDA library or a device). */
int			backend_cuda_device_count(void);

/* Whether this build has CUDA and a device is visible (initialises CUDA). */
bool		backend_cuda_available(void);

/*
 * The process's CUDA backend, created (and CUDA initialised) on first use;
 * an error when the build has no CUDA or no device is visible.  Its
 * precision field is set by each user before its products (network.c).
 */
PeftCode	backend_cuda(Backend **out, PeftError *err);

/* The backend for a device choice (AUTO: CUDA when available, else the CPU). */
PeftCode	backend_for(PeftDevice kind, Backend **out, PeftError *err);

/*
 * Seconds of idleness after which the CUDA backend frees every device
 * buffer it holds and releases the device (0: never).  Used by
 * prediction in long-lived server processes.
 */
void		backend_set_idle_release(int seconds);

/* Collect a recorded failure: PEFT_OK, or its code and message (then cleared). */
PEFT_EXPORT PeftCode backend_check(Backend *be, PeftError *err);

/* Record a failure (the first one wins); for implementations. */
PEFT_EXPORT void backend_fail(Backend *be, PeftCode code, const char *fmt,...)
#ifdef __GNUC__
			__attribute__((format(printf, 3, 4)))
#endif
			;

/*
 * Whether lora_sgmv's arguments are valid (records PEFT_ERR_INVALID when
 * not); false too when a failure is pending.  For implementations.
 */
PEFT_EXPORT bool backend_sgmv_valid(Backend *be, int ldo, int ldx, const LoraSegment *segs,
									int nsegs, int IN, int OUT);

/* "fp32", "tf32" or "bf16". */
const char *gemm_precision_name(PeftPrecision p);

#endif
