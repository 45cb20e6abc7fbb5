/*
 * backend_cuda.c - the CUDA backend: the table of backend.h over device
 * memory, through cuBLAS (kernels/gemm.cu) and the kernels in kernels/.
 *
 * One backend per process, created (and CUDA initialised) on first use, in
 * the process that computes: never in the postmaster or at library load.
 * Every use is bracketed by enter/leave, which hold the backend's lock;
 * all CUDA work runs on the default stream of the thread holding it.
 *
 * Memory.  Every device buffer is registered here, so that idle release
 * can free them all: after `idle_release` seconds without a use (and with
 * no training run pinned), a watcher thread frees every buffer, destroys
 * the cuBLAS handle and resets the device, then bumps the generation so
 * that networks know their pointers are gone (network.c makes them again
 * on the next use).  Base weights are uploaded once per model and shared
 * by every network over it (counted references), with a BF16 twin made on
 * first BF16 use at the same element offsets.
 *
 * Errors of launches and copies are recorded in the Backend (backend.h);
 * nothing here exits.  Built only with CUDA and in float precision.
 */
#if defined(PEFT_WITH_CUDA) && !defined(PEFT_DOUBLE)

#include "backend.h"
#include "cuda_attention.h"
#include "cuda_backend.h"
#include "cuda_ops.h"
#include "cuda_sgmv.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MSG_LEN 256

/* Base weights of one model on the device. */
typedef struct WeightsEntry
{
	uint64_t	serial;			/* BertModel.serial */
	int			refs;
	float	   *block;			/* every tensor, back to back */
	void	   *block_bf16;		/* the same elements in BF16, made on first need */
	size_t		count;			/* floats in block */
	ModelWeights weights;		/* pointers into block */
	struct WeightsEntry *next;
} WeightsEntry;

typedef struct CudaState
{
	pthread_mutex_t lock;
	uint64_t	generation;		/* bumped by every idle release */
	double		last_used;		/* monotonic seconds */
	int			pins;			/* training runs holding optimizer state */
	bool		in_use;			/* between enter and leave */
	sigset_t	saved_mask;		/* the user's signal mask, restored by leave */
	void	  **buffers;		/* every live device allocation */
	size_t		nbuffers;
	size_t		cap_buffers;
	WeightsEntry *weights;
	/* scratch, grown as needed and registered like any buffer */
	float	   *rowloss;		/* per-row losses */
	size_t		cap_rowloss;
	double	   *sumsq;			/* [PEFT_CUDA_SUMSQ_PARTIALS + 1] */
	void	   *bf16_a;			/* operands converted for a BF16 product */
	size_t		cap_bf16_a;
	void	   *bf16_b;
	size_t		cap_bf16_b;
	void	   *sgmv_work;		/* lora_sgmv's segment array and xa */
	size_t		cap_sgmv_work;
	PeftSgmvSegment *sgmv_host;	/* host staging of the segments (never freed by release) */
	int			cap_sgmv_host;
} CudaState;

static atomic_int idle_release_seconds = 0;
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;
static Backend *cuda_backend = NULL;
static bool watcher_started = false;
static int	available = -1;		/* -1 unknown, else 0/1 */

/* Seconds on a monotonic clock. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The state of the process's backend. */
static inline CudaState *
state_of(Backend *be)
{
	return (CudaState *) be->state;
}

/* Record a failed CUDA call; out-of-memory keeps its own code. */
static void
record(Backend *be, const char *what, const char *msg)
{
	PeftCode	code = strstr(msg, "out of memory") ? PEFT_ERR_NOMEM : PEFT_ERR_DEVICE;

	backend_fail(be, code, "%s: %s", what, msg);
}

/* Run a launcher call when no failure is pending: `CALL(be, "what", launcher(..., msg, MSG_LEN))`. */
#define CALL(be, what, expr) \
	do { \
		char		msg[MSG_LEN] = ""; \
		if (!(be)->failed && (expr) != 0) \
			record((be), (what), msg); \
	} while (0)

/* ---- memory -------------------------------------------------------------- */

/* Remember a device buffer for idle release. */
static bool
register_buffer(CudaState *st, void *p)
{
	if (st->nbuffers == st->cap_buffers)
	{
		size_t		cap = st->cap_buffers ? st->cap_buffers * 2 : 512;
		void	  **grown = realloc(st->buffers, cap * sizeof(void *));

		if (grown == NULL)
			return false;
		st->buffers = grown;
		st->cap_buffers = cap;
	}
	st->buffers[st->nbuffers++] = p;
	return true;
}

/* Forget a device buffer (the newest first: buffers are usually freed in reverse). */
static void
unregister_buffer(CudaState *st, void *p)
{
	for (size_t i = st->nbuffers; i-- > 0;)
		if (st->buffers[i] == p)
		{
			st->buffers[i] = st->buffers[--st->nbuffers];
			return;
		}
}

/* Zeroed device buffer of bytes. */
static void *
cuda_alloc(Backend *be, size_t bytes)
{
	CudaState  *st = state_of(be);
	void	   *p = NULL;
	char		msg[MSG_LEN] = "";

	if (be->failed)
		return NULL;
	if (bytes == 0)
		bytes = 16;
	if (peft_cuda_alloc(&p, bytes, msg, MSG_LEN) != 0)
	{
		backend_fail(be, strstr(msg, "out of memory") ? PEFT_ERR_NOMEM : PEFT_ERR_DEVICE,
					 "allocating %zu bytes of device memory: %s", bytes, msg);
		return NULL;
	}
	if (peft_cuda_memset(p, 0, bytes, msg, MSG_LEN) != 0 || !register_buffer(st, p))
	{
		peft_cuda_free(p);
		backend_fail(be, PEFT_ERR_DEVICE, "preparing %zu bytes of device memory: %s",
					 bytes, msg[0] ? msg : "out of host memory");
		return NULL;
	}
	return p;
}

/* Free a device buffer (NULL allowed). */
static void
cuda_release(Backend *be, void *p)
{
	if (p == NULL)
		return;
	unregister_buffer(state_of(be), p);
	peft_cuda_free(p);
}

/* Host to device. */
static void
cuda_upload(Backend *be, void *dst, const void *host, size_t bytes)
{
	CALL(be, "upload", peft_cuda_upload(dst, host, bytes, msg, MSG_LEN));
}

/* Device to host (synchronous: errors of queued kernels surface here). */
static void
cuda_download(Backend *be, void *host, const void *src, size_t bytes)
{
	CALL(be, "download", peft_cuda_download(host, src, bytes, msg, MSG_LEN));
}

/* Zero device bytes. */
static void
cuda_zero(Backend *be, void *p, size_t bytes)
{
	CALL(be, "memset", peft_cuda_memset(p, 0, bytes, msg, MSG_LEN));
}

/* Device to device. */
static void
cuda_copy(Backend *be, void *dst, const void *src, size_t bytes)
{
	CALL(be, "copy", peft_cuda_copy(dst, src, bytes, msg, MSG_LEN));
}

/* Wait for queued work. */
static void
cuda_sync(Backend *be)
{
	CALL(be, "synchronize", peft_cuda_synchronize(NULL, msg, MSG_LEN));
}

/* Take the lock; the generation tells callers whether idle release intervened. */
static uint64_t
cuda_enter(Backend *be)
{
	CudaState  *st = state_of(be);

	sigset_t	all;
	sigset_t	saved;

	/*
	 * CUDA may start threads inside any call (a context made again after
	 * idle release, for one): block every signal while it runs, so those
	 * threads inherit a full mask and PostgreSQL's signals stay on the
	 * main thread; they are delivered at leave.
	 */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	pthread_mutex_lock(&st->lock);
	st->saved_mask = saved;
	st->in_use = true;
	st->last_used = now_seconds();
	return st->generation;
}

/* Release the lock. */
static void
cuda_leave(Backend *be)
{
	CudaState  *st = state_of(be);
	sigset_t	saved = st->saved_mask;

	st->last_used = now_seconds();
	st->in_use = false;
	pthread_mutex_unlock(&st->lock);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

/* Count training runs that hold optimizer state (called between enter and leave). */
static void
cuda_pin(Backend *be, int delta)
{
	state_of(be)->pins += delta;
}

/* Grow a registered scratch buffer to hold bytes; false on failure (recorded). */
static bool
ensure_scratch(Backend *be, void **buf, size_t *cap, size_t bytes)
{
	if (*cap >= bytes && *buf != NULL)
		return true;
	cuda_release(be, *buf);
	*buf = NULL;
	*cap = 0;
	*buf = cuda_alloc(be, bytes + bytes / 2);
	if (*buf == NULL)
		return false;
	*cap = bytes + bytes / 2;
	return true;
}

/* ---- base weights -------------------------------------------------------- */

/* Floats of the device block of a model: embeddings, then each layer's tensors. */
static size_t
weights_count(const BertModel *m)
{
	const ModelConfig *c = &m->cfg;
	size_t		C = c->hidden_size;
	size_t		FF = c->intermediate_size;
	size_t		per_layer = 3 * C * C + 3 * C	/* fused q/k/v */
		+ C * C + C + FF * C + FF + C * FF + C	/* attention output, intermediate, output */
		+ 4 * C;				/* two LayerNorms */

	return (size_t) c->vocab_size * C + (size_t) c->max_position * C +
		(size_t) c->type_vocab_size * C + 2 * C + c->num_layers * per_layer;
}

/* Copy n floats of src to the block at *at and point *dst there. */
static void
place(Backend *be, float *block, size_t *at, const real **dst, const real *src, size_t n)
{
	cuda_upload(be, block + *at, src, n * sizeof(float));
	*dst = block + *at;
	*at += n;
}

/* Upload a model's weights into one block; the q/k/v weights are rows of the fused copy. */
static PeftCode
weights_upload(Backend *be, const BertModel *m, WeightsEntry *e, PeftError *err)
{
	const ModelConfig *c = &m->cfg;
	size_t		C = c->hidden_size;
	size_t		at = 0;

	e->count = weights_count(m);
	e->weights.layers = calloc(c->num_layers, sizeof(LayerWeights));
	if (e->weights.layers == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for the model's weights");
	e->block = cuda_alloc(be, e->count * sizeof(float));
	if (e->block == NULL)
		return backend_check(be, err);
	place(be, e->block, &at, &e->weights.word, m->word_embeddings, (size_t) c->vocab_size * C);
	place(be, e->block, &at, &e->weights.pos, m->position_embeddings, (size_t) c->max_position * C);
	place(be, e->block, &at, &e->weights.type, m->token_type_embeddings, (size_t) c->type_vocab_size * C);
	place(be, e->block, &at, &e->weights.ln_emb_gamma, m->ln_emb_gamma, C);
	place(be, e->block, &at, &e->weights.ln_emb_beta, m->ln_emb_beta, C);
	for (int l = 0; l < c->num_layers; l++)
	{
		const BertLayer *src = &m->layers[l];
		LayerWeights *dst = &e->weights.layers[l];

		place(be, e->block, &at, &dst->qkv_weight, m->qkv_weight + (size_t) l * 3 * C * C, 3 * C * C);
		place(be, e->block, &at, &dst->qkv_bias, m->qkv_bias + (size_t) l * 3 * C, 3 * C);
		for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		{
			dst->weight[w] = dst->qkv_weight + (size_t) w * C * C;
			dst->bias[w] = dst->qkv_bias + (size_t) w * C;
		}
		for (int w = BERT_ATTN_OUT; w < BERT_NUM_LINEAR; w++)
		{
			const BertLinearWeights *lin = &src->linear[w];

			place(be, e->block, &at, &dst->weight[w], lin->weight, (size_t) lin->out * lin->in);
			place(be, e->block, &at, &dst->bias[w], lin->bias, lin->out);
		}
		place(be, e->block, &at, &dst->ln_attn_gamma, src->ln_attn_gamma, C);
		place(be, e->block, &at, &dst->ln_attn_beta, src->ln_attn_beta, C);
		place(be, e->block, &at, &dst->ln_out_gamma, src->ln_out_gamma, C);
		place(be, e->block, &at, &dst->ln_out_beta, src->ln_out_beta, C);
	}
	if (at != e->count)
		return peft_fail(err, PEFT_ERR_INTERNAL, "weights block holds %zu floats, not %zu",
						 at, e->count);
	return backend_check(be, err);
}

/* Free an entry's device memory and itself. */
static void
weights_entry_free(Backend *be, WeightsEntry *e, bool release)
{
	if (release)
	{
		cuda_release(be, e->block);
		cuda_release(be, e->block_bf16);
	}
	free(e->weights.layers);
	free(e);
}

/* The model's weights on the device: uploaded on first use, shared after. */
static PeftCode
cuda_weights_acquire(Backend *be, const BertModel *m, ModelWeights **out, PeftError *err)
{
	CudaState  *st = state_of(be);
	WeightsEntry *e;
	PeftCode	rc;

	*out = NULL;
	for (e = st->weights; e != NULL; e = e->next)
		if (e->serial == m->serial)
		{
			e->refs++;
			*out = &e->weights;
			return PEFT_OK;
		}
	e = calloc(1, sizeof(WeightsEntry));
	if (e == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for the model's weights");
	if ((rc = weights_upload(be, m, e, err)) != PEFT_OK)
	{
		weights_entry_free(be, e, true);
		return rc;
	}
	e->serial = m->serial;
	e->refs = 1;
	e->weights.owner = e;
	e->next = st->weights;
	st->weights = e;
	*out = &e->weights;
	return PEFT_OK;
}

/* Drop a reference; the last one frees the model's device copy. */
static void
cuda_weights_release(Backend *be, ModelWeights *w)
{
	CudaState  *st = state_of(be);
	WeightsEntry *e = w ? (WeightsEntry *) w->owner : NULL;

	if (e == NULL || --e->refs > 0)
		return;
	for (WeightsEntry **link = &st->weights; *link != NULL; link = &(*link)->next)
		if (*link == e)
		{
			*link = e->next;
			break;
		}
	weights_entry_free(be, e, true);
}

/* ---- products ------------------------------------------------------------ */

/*
 * A BF16 version of operand p (stored rows x cols, row stride ld): the
 * weights block's twin at the same offset when p lies in a model's block
 * (converted once), else a conversion into scratch.  NULL on failure.
 */
static const void *
bf16_operand(Backend *be, const float *p, int rows, int cols, int ld, bool first)
{
	CudaState  *st = state_of(be);
	size_t		n = rows > 0 ? (size_t) (rows - 1) * ld + cols : 0;
	void	  **buf = first ? &st->bf16_a : &st->bf16_b;
	size_t	   *cap = first ? &st->cap_bf16_a : &st->cap_bf16_b;

	for (WeightsEntry *e = st->weights; e != NULL; e = e->next)
		if (p >= e->block && p + n <= e->block + e->count)
		{
			if (e->block_bf16 == NULL)
			{
				e->block_bf16 = cuda_alloc(be, e->count * 2);
				if (e->block_bf16 == NULL)
					return NULL;
				CALL(be, "weights to bf16",
					 peft_cuda_float_to_bf16(e->block_bf16, e->block, e->count, msg, MSG_LEN));
			}
			return (const uint16_t *) e->block_bf16 + (p - e->block);
		}
	if (!ensure_scratch(be, buf, cap, n * 2 + 16))
		return NULL;
	CALL(be, "operand to bf16", peft_cuda_float_to_bf16(*buf, p, n, msg, MSG_LEN));
	return *buf;
}

/* C = alpha op(A) op(B) + beta C in the backend's precision. */
static void
cuda_gemm(Backend *be, bool ta, bool tb, int M, int N, int K, real alpha,
		  const real *A, int lda, const real *B, int ldb, real beta, real *C, int ldc)
{
	PeftGemmOp	opa = ta ? PEFT_GEMM_T : PEFT_GEMM_N;
	PeftGemmOp	opb = tb ? PEFT_GEMM_T : PEFT_GEMM_N;
	double		t0 = 0;

	if (be->failed || M == 0 || N == 0)
		return;
	if (be->profile.enabled)
	{
		cuda_sync(be);
		t0 = now_seconds();
	}
	if (be->precision == PEFT_PRECISION_BF16 && K > 0)
	{
		const void *a16 = bf16_operand(be, A, ta ? K : M, ta ? M : K, lda, true);
		const void *b16 = bf16_operand(be, B, tb ? N : K, tb ? K : N, ldb, false);

		if (a16 != NULL && b16 != NULL)
			CALL(be, "bf16 gemm", peft_cuda_gemm_bf16(opa, opb, M, N, K, alpha, a16, lda,
													  b16, ldb, beta, C, ldc, msg, MSG_LEN));
	}
	else
		CALL(be, "gemm", peft_cuda_gemm(opa, opb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
										be->precision == PEFT_PRECISION_TF32 ? PEFT_GEMM_TF32
										: PEFT_GEMM_FP32, msg, MSG_LEN));
	be->profile.gemm_flops += 2.0 * M * N * K;
	if (be->profile.enabled)
	{
		cuda_sync(be);
		be->profile.gemm_seconds += now_seconds() - t0;
	}
}

/* out = x W^T (+ bias): one product, then the bias broadcast over rows. */
static void
cuda_linear(Backend *be, real *out, int ldo, const real *x, int ldx,
			const real *W, const real *bias, int N, int IN, int OUT)
{
	cuda_gemm(be, false, true, N, OUT, IN, 1.0f, x, ldx, W, IN, 0.0f, out, ldo);
	if (bias != NULL)
		CALL(be, "add_bias", peft_cuda_add_bias(out, ldo, bias, N, OUT, msg, MSG_LEN));
}

/* Copy segs into the host array of the kernels' type; false on failure (recorded). */
static bool
stage_segments(Backend *be, const LoraSegment *segs, int nsegs)
{
	CudaState  *st = state_of(be);

	if (nsegs > st->cap_sgmv_host)
	{
		PeftSgmvSegment *grown = realloc(st->sgmv_host, sizeof(PeftSgmvSegment) * nsegs);

		if (grown == NULL)
		{
			backend_fail(be, PEFT_ERR_NOMEM, "out of memory for %d LoRA segments", nsegs);
			return false;
		}
		st->sgmv_host = grown;
		st->cap_sgmv_host = nsegs;
	}
	for (int s = 0; s < nsegs; s++)
		st->sgmv_host[s] = (PeftSgmvSegment) {segs[s].A, segs[s].B, segs[s].row0, segs[s].rows,
											  segs[s].rank, segs[s].scale};
	return true;
}

/* Every segment's LoRA update in one shrink and one expand launch (sgmv.cu). */
static void
cuda_lora_sgmv(Backend *be, real *out, int ldo, const real *x, int ldx,
			   const LoraSegment *segs, int nsegs, int IN, int OUT)
{
	CudaState  *st = state_of(be);
	PeftSgmvMath math = be->precision == PEFT_PRECISION_BF16 ? PEFT_SGMV_BF16 :
		be->precision == PEFT_PRECISION_TF32 ? PEFT_SGMV_TF32 : PEFT_SGMV_FP32;
	double		t0 = 0;
	size_t		bytes;

	if (!backend_sgmv_valid(be, ldo, ldx, segs, nsegs, IN, OUT) || nsegs == 0 ||
		!stage_segments(be, segs, nsegs))
		return;
	bytes = peft_cuda_sgmv_workspace(st->sgmv_host, nsegs);
	if (!ensure_scratch(be, &st->sgmv_work, &st->cap_sgmv_work, bytes))
		return;
	if (be->profile.enabled)
	{
		cuda_sync(be);
		t0 = now_seconds();
	}
	CALL(be, "lora sgmv", peft_cuda_sgmv(out, ldo, x, ldx, st->sgmv_host, nsegs, IN, OUT, math,
										 st->sgmv_work, st->cap_sgmv_work, msg, MSG_LEN));
	for (int s = 0; s < nsegs; s++)
		be->profile.gemm_flops += 2.0 * segs[s].rows * segs[s].rank * (IN + OUT);
	if (be->profile.enabled)
	{
		cuda_sync(be);
		be->profile.gemm_seconds += now_seconds() - t0;
	}
}

/* The head's backward: dx += dout W, dW += dout^T x, db += colsum(dout). */
static void
cuda_linear_backward(Backend *be, real *dx, real *dW, real *db, const real *dout,
					 const real *x, const real *W, int N, int C, int K)
{
	if (dx != NULL)
		cuda_gemm(be, false, false, N, C, K, 1.0f, dout, K, W, C, 1.0f, dx, C);
	if (dW != NULL)
		cuda_gemm(be, true, false, K, C, N, 1.0f, dout, K, x, C, 1.0f, dW, C);
	if (db != NULL)
		CALL(be, "bias_backward", peft_cuda_bias_backward(db, dout, K, N, K, msg, MSG_LEN));
}

/* ---- encoder ------------------------------------------------------------- */

/* Packed embeddings, with prompt tuning's virtual tokens when V > 0. */
static void
cuda_embeddings(Backend *be, real *out, const int32_t *ids, const int32_t *rows,
				int N, int T, const real *word, const real *pos, const real *type,
				const real *prompt, int V, int C, int vocab)
{
	if (V == 0)
		CALL(be, "embeddings", peft_cuda_embeddings_forward(out, ids, rows, N, T, word, pos, type,
															C, vocab, msg, MSG_LEN));
	else
		CALL(be, "prompt embeddings",
			 peft_cuda_prompt_embeddings(out, ids, rows, N, T, word, pos, type, prompt, V, C,
										 vocab, msg, MSG_LEN));
}

/* The virtual tokens' gradients. */
static void
cuda_prompt_backward(Backend *be, real *dprompt, int ldp, const real *demb, int lde,
					 const int32_t *seq_start, int B, int V, int C)
{
	CALL(be, "prompt backward",
		 peft_cuda_prompt_backward(dprompt, ldp, demb, lde, seq_start, B, V, C, msg, MSG_LEN));
}

/* Rows between layouts. */
static void
cuda_row_copy(Backend *be, real *dst, int ldd, const int32_t *dst_rows, const real *src, int lds,
			  const int32_t *src_rows, int n, int cols)
{
	CALL(be, "row copy", peft_cuda_row_copy(dst, ldd, dst_rows, src, lds, src_rows, n, cols,
											 msg, MSG_LEN));
}

/* LayerNorm forward. */
static void
cuda_layernorm_forward(Backend *be, real *out, real *mean, real *rstd, const real *inp,
					   const real *gamma, const real *beta, int N, int C, real eps)
{
	CALL(be, "layernorm", peft_cuda_layernorm_forward(out, mean, rstd, inp, gamma, beta, N, C,
													  eps, NULL, msg, MSG_LEN));
}

/* LayerNorm input gradient, and beta's when trained. */
static void
cuda_layernorm_backward(Backend *be, real *dinp, real *dbeta, const real *dout,
						const real *inp, const real *gamma, const real *mean,
						const real *rstd, int N, int C)
{
	CALL(be, "layernorm backward",
		 peft_cuda_layernorm_backward(dinp, NULL, dbeta, dout, inp, gamma, mean, rstd, N, C,
									  NULL, msg, MSG_LEN));
}

/* Exact GELU. */
static void
cuda_gelu_forward(Backend *be, real *out, const real *inp, size_t n)
{
	CALL(be, "gelu", peft_cuda_gelu_forward(out, inp, n, NULL, msg, MSG_LEN));
}

/* GELU backward. */
static void
cuda_gelu_backward(Backend *be, real *dinp, const real *inp, const real *dout, size_t n)
{
	CALL(be, "gelu backward", peft_cuda_gelu_backward(dinp, inp, dout, n, NULL, msg, MSG_LEN));
}

/* out = a + b. */
static void
cuda_add(Backend *be, real *out, const real *a, const real *b, size_t n)
{
	CALL(be, "add", peft_cuda_add(out, a, b, n, msg, MSG_LEN));
}

/* out = inp * keep / (1-p). */
static void
cuda_dropout(Backend *be, real *out, const real *inp, const uint8_t *keep, real p, size_t n)
{
	CALL(be, "dropout", peft_cuda_dropout_forward(out, inp, keep, p, n, NULL, msg, MSG_LEN));
}

/* dinp += dout * keep / (1-p). */
static void
cuda_dropout_backward(Backend *be, real *dinp, const real *dout, const uint8_t *keep,
					  real p, size_t n)
{
	CALL(be, "dropout backward",
		 peft_cuda_dropout_backward(dinp, dout, keep, p, n, NULL, msg, MSG_LEN));
}

/* Packed attention forward. */
static void
cuda_attention_forward(Backend *be, real *out, real *probs, real *dropped,
					   const real *q, const real *k, const real *v, int ld,
					   const uint8_t *keep, real p, const int32_t *seq_start,
					   int B, int N, int C, int NH)
{
	CALL(be, "attention", peft_cuda_varlen_attention_forward(out, probs, dropped, q, k, v, ld,
															 keep, p, seq_start, B, N, C, NH,
															 msg, MSG_LEN));
}

/* Packed attention backward. */
static void
cuda_attention_backward(Backend *be, real *dq, real *dk, real *dv, real *scratch,
						const real *dout, const real *probs, const real *q,
						const real *k, const real *v, int ld, const uint8_t *keep,
						real p, const int32_t *seq_start, int B, int N, int C, int NH)
{
	CALL(be, "attention backward",
		 peft_cuda_varlen_attention_backward(dq, dk, dv, scratch, dout, probs, q, k, v, ld,
											 keep, p, seq_start, B, N, C, NH, msg, MSG_LEN));
}

/* Mean or [CLS] pooling. */
static void
cuda_pool_forward(Backend *be, bool cls, real *out, const real *inp,
				  const int32_t *seq_start, int B, int C, int skip)
{
	if (skip > 0)
		CALL(be, "pool", peft_cuda_pool_skip_forward(cls, out, inp, seq_start, B, C, skip,
													 msg, MSG_LEN));
	else if (cls)
		CALL(be, "cls pool", peft_cuda_cls_pool_forward(out, inp, seq_start, B, C, msg, MSG_LEN));
	else
		CALL(be, "mean pool", peft_cuda_mean_pool_forward(out, inp, seq_start, B, C, msg, MSG_LEN));
}

/* Pooling backward. */
static void
cuda_pool_backward(Backend *be, bool cls, real *dinp, const real *dout,
				   const int32_t *seq_start, int B, int C, int skip)
{
	if (skip > 0)
		CALL(be, "pool backward", peft_cuda_pool_skip_backward(cls, dinp, dout, seq_start, B, C,
															   skip, msg, MSG_LEN));
	else if (cls)
		CALL(be, "cls pool backward",
			 peft_cuda_cls_pool_backward(dinp, dout, seq_start, B, C, msg, MSG_LEN));
	else
		CALL(be, "mean pool backward",
			 peft_cuda_mean_pool_backward(dinp, dout, seq_start, B, C, msg, MSG_LEN));
}

/* Row-wise L2 normalisation. */
static void
cuda_l2norm_forward(Backend *be, real *out, real *norm, const real *inp, int B, int C)
{
	CALL(be, "l2norm", peft_cuda_l2norm_forward(out, norm, inp, B, C, msg, MSG_LEN));
}

/* Packed rows back to the padded layout. */
static void
cuda_scatter_rows(Backend *be, real *out, const real *packed, const int32_t *rows,
				  int N, int BT, int C)
{
	CALL(be, "scatter rows", peft_cuda_scatter_rows(out, packed, rows, N, BT, C, msg, MSG_LEN));
}

/* ---- adapter methods ------------------------------------------------------ */

/* dst (=/+=) alpha (vec + offset) src, column by column. */
static void
cuda_colscale(Backend *be, real *dst, int ldd, const real *src, int lds, const real *vec,
			  real offset, real alpha, bool accumulate, int N, int n)
{
	CALL(be, "colscale", peft_cuda_colscale(dst, ldd, src, lds, vec, offset, alpha,
											accumulate, N, n, msg, MSG_LEN));
}

/* dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j]. */
static void
cuda_coldot(Backend *be, real *dvec, const real *a, int lda, const real *b, int ldb,
			const real *scale, real alpha, int N, int n)
{
	CALL(be, "coldot", peft_cuda_coldot(dvec, a, lda, b, ldb, scale, alpha, N, n, msg, MSG_LEN));
}

/* inv[j] = 1 / ||W[j,:]||. */
static void
cuda_row_inv_norms(Backend *be, real *inv, const real *W, int rows, int cols)
{
	CALL(be, "row norms", peft_cuda_row_inv_norms(inv, W, rows, cols, msg, MSG_LEN));
}

/* ---- losses -------------------------------------------------------------- */

/* Mean of B per-row losses left in the scratch (summed in double on the host). */
static double
mean_row_loss(Backend *be, int B)
{
	CudaState  *st = state_of(be);
	float	   *host = malloc(sizeof(float) * (B > 0 ? B : 1));
	double		total = 0;

	if (host == NULL)
	{
		backend_fail(be, PEFT_ERR_NOMEM, "out of host memory for losses");
		return 0;
	}
	cuda_download(be, host, st->rowloss, sizeof(float) * B);
	for (int b = 0; b < B && !be->failed; b++)
		total += host[b];
	free(host);
	return B > 0 ? total / B : 0;
}

/* Mean cross-entropy (and the softmax in probs). */
static double
cuda_cross_entropy_forward(Backend *be, real *probs, const real *logits,
						   const int32_t *labels, int B, int K)
{
	CudaState  *st = state_of(be);

	if (!ensure_scratch(be, (void **) &st->rowloss, &st->cap_rowloss, sizeof(float) * B))
		return 0;
	CALL(be, "cross entropy", peft_cuda_cross_entropy_forward(probs, st->rowloss, logits, labels,
															  B, K, NULL, msg, MSG_LEN));
	return mean_row_loss(be, B);
}

/* Cross-entropy backward. */
static void
cuda_cross_entropy_backward(Backend *be, real *dlogits, const real *probs,
							const int32_t *labels, real dloss, int B, int K)
{
	CALL(be, "cross entropy backward",
		 peft_cuda_cross_entropy_backward(dlogits, probs, labels, dloss, B, K, NULL, msg,
										  MSG_LEN));
}

/* Mean squared error. */
static double
cuda_mse_forward(Backend *be, const real *pred, const real *target, int B)
{
	CudaState  *st = state_of(be);

	if (!ensure_scratch(be, (void **) &st->rowloss, &st->cap_rowloss, sizeof(float) * B))
		return 0;
	CALL(be, "mse", peft_cuda_mse_forward(st->rowloss, pred, target, B, msg, MSG_LEN));
	return mean_row_loss(be, B);
}

/* MSE backward. */
static void
cuda_mse_backward(Backend *be, real *dpred, const real *pred, const real *target,
				  real dloss, int B)
{
	CALL(be, "mse backward", peft_cuda_mse_backward(dpred, pred, target, dloss, B, msg, MSG_LEN));
}

/* ---- optimizer ----------------------------------------------------------- */

/* Sum of squares of every gradient, reduced on the device in double. */
static double
cuda_sum_squares(Backend *be, const real *g, size_t n)
{
	CudaState  *st = state_of(be);
	double		result = 0;

	if (st->sumsq == NULL)
	{
		st->sumsq = cuda_alloc(be, sizeof(double) * (PEFT_CUDA_SUMSQ_PARTIALS + 1));
		if (st->sumsq == NULL)
			return 0;
	}
	CALL(be, "sum of squares", peft_cuda_sum_squares(st->sumsq, st->sumsq + 1, g, n, NULL,
													 msg, MSG_LEN));
	cuda_download(be, &result, st->sumsq, sizeof(double));
	return result;
}

/* g *= s. */
static void
cuda_scale(Backend *be, real *g, real s, size_t n)
{
	CALL(be, "scale", peft_cuda_scale_inplace(g, s, n, NULL, msg, MSG_LEN));
}

/* One AdamW step over every parameter, in one launch. */
static void
cuda_adamw(Backend *be, real *param, const real *grad, real *m, real *v, size_t n,
		   real lr, real beta1, real beta2, real eps, real weight_decay, int t)
{
	CALL(be, "adamw", peft_cuda_adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps,
											 weight_decay, t, NULL, msg, MSG_LEN));
}

/* The process's backend lives as long as the process. */
static void
cuda_destroy(Backend *be)
{
}

static const BackendOps cuda_ops = {
	.alloc = cuda_alloc,
	.release = cuda_release,
	.upload = cuda_upload,
	.download = cuda_download,
	.zero = cuda_zero,
	.copy = cuda_copy,
	.sync = cuda_sync,
	.enter = cuda_enter,
	.leave = cuda_leave,
	.pin = cuda_pin,
	.weights_acquire = cuda_weights_acquire,
	.weights_release = cuda_weights_release,
	.gemm = cuda_gemm,
	.linear = cuda_linear,
	.linear_backward = cuda_linear_backward,
	.lora_sgmv = cuda_lora_sgmv,
	.embeddings = cuda_embeddings,
	.prompt_backward = cuda_prompt_backward,
	.row_copy = cuda_row_copy,
	.layernorm_forward = cuda_layernorm_forward,
	.layernorm_backward = cuda_layernorm_backward,
	.gelu_forward = cuda_gelu_forward,
	.gelu_backward = cuda_gelu_backward,
	.add = cuda_add,
	.dropout = cuda_dropout,
	.dropout_backward = cuda_dropout_backward,
	.attention_forward = cuda_attention_forward,
	.attention_backward = cuda_attention_backward,
	.pool_forward = cuda_pool_forward,
	.pool_backward = cuda_pool_backward,
	.l2norm_forward = cuda_l2norm_forward,
	.scatter_rows = cuda_scatter_rows,
	.colscale = cuda_colscale,
	.coldot = cuda_coldot,
	.row_inv_norms = cuda_row_inv_norms,
	.cross_entropy_forward = cuda_cross_entropy_forward,
	.cross_entropy_backward = cuda_cross_entropy_backward,
	.mse_forward = cuda_mse_forward,
	.mse_backward = cuda_mse_backward,
	.sum_squares = cuda_sum_squares,
	.scale = cuda_scale,
	.adamw = cuda_adamw,
	.destroy = cuda_destroy,
};

/* ---- idle release -------------------------------------------------------- */

/*
 * Free everything and give the device back (the lock is held): networks
 * see the new generation on their next use and make their buffers again.
 */
static void
release_everything(Backend *be)
{
	CudaState  *st = state_of(be);

	for (size_t i = 0; i < st->nbuffers; i++)
		peft_cuda_free(st->buffers[i]);
	st->nbuffers = 0;
	while (st->weights != NULL)
	{
		WeightsEntry *e = st->weights;

		st->weights = e->next;
		weights_entry_free(be, e, false);
	}
	st->rowloss = NULL;
	st->cap_rowloss = 0;
	st->sumsq = NULL;
	st->bf16_a = st->bf16_b = NULL;
	st->cap_bf16_a = st->cap_bf16_b = 0;
	st->sgmv_work = NULL;
	st->cap_sgmv_work = 0;
	peft_cuda_release_device();
	st->generation++;
	be->failed = false;
	peft_error_clear(&be->error);
}

/* The watcher: once a second, release the device after idle_release_seconds unused. */
static void *
idle_watcher(void *arg)
{
	Backend    *be = arg;
	CudaState  *st = state_of(be);
	struct timespec pause = {1, 0};

	for (;;)
	{
		int			idle = atomic_load(&idle_release_seconds);

		nanosleep(&pause, NULL);
		if (idle <= 0)
			continue;
		pthread_mutex_lock(&st->lock);
		if (!st->in_use && st->pins == 0 && st->nbuffers > 0 &&
			now_seconds() - st->last_used >= idle)
			release_everything(be);
		pthread_mutex_unlock(&st->lock);
	}
	return NULL;
}

/* Start the watcher once, with every signal blocked (PostgreSQL's go to the main thread). */
static void
start_watcher(Backend *be)
{
	sigset_t	all;
	sigset_t	old;
	pthread_t	thread;

	if (watcher_started)
		return;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (pthread_create(&thread, NULL, idle_watcher, be) == 0)
	{
		pthread_detach(thread);
		watcher_started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Seconds of idleness before the device is given back (0: never). */
static void
cuda_set_idle_release(int seconds)
{
	atomic_store(&idle_release_seconds, seconds > 0 ? seconds : 0);
	pthread_mutex_lock(&create_lock);
	if (seconds > 0 && cuda_backend != NULL)
		start_watcher(cuda_backend);
	pthread_mutex_unlock(&create_lock);
}

/* ---- creation ------------------------------------------------------------ */

/* Whether a CUDA device is visible (asked once per process, with signals blocked). */
static bool
cuda_available(void)
{
	sigset_t	all;
	sigset_t	saved;

	pthread_mutex_lock(&create_lock);
	if (available < 0)
	{
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &saved);
		available = peft_cuda_device_count() > 0 ? 1 : 0;
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
	}
	pthread_mutex_unlock(&create_lock);
	return available == 1;
}

/* The process's CUDA backend, made on first use. */
static PeftCode
cuda_get(Backend **out, PeftError *err)
{
	Backend    *be;
	CudaState  *st;
	char		msg[MSG_LEN] = "";
	sigset_t	all;
	sigset_t	saved;
	int			probe;

	*out = NULL;
	if (!cuda_available())
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "device \"cuda\" is not available: no CUDA device is visible");
	pthread_mutex_lock(&create_lock);
	if (cuda_backend == NULL)
	{
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &saved);
		probe = peft_cuda_probe(msg, MSG_LEN);
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
		if (probe != 0)
		{
			pthread_mutex_unlock(&create_lock);
			return peft_fail(err, PEFT_ERR_DEVICE, "CUDA does not work here: %s", msg);
		}
		be = calloc(1, sizeof(Backend));
		st = calloc(1, sizeof(CudaState));
		if (be == NULL || st == NULL)
		{
			free(be);
			free(st);
			pthread_mutex_unlock(&create_lock);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the CUDA backend");
		}
		pthread_mutex_init(&st->lock, NULL);
		st->generation = 1;
		st->last_used = now_seconds();
		be->ops = &cuda_ops;
		be->kind = PEFT_DEVICE_CUDA;
		be->name = "cuda";
		be->host_memory = false;
		be->precision = PEFT_PRECISION_FP32;
		be->state = st;
		cuda_backend = be;
		if (atomic_load(&idle_release_seconds) > 0)
			start_watcher(be);
	}
	*out = cuda_backend;
	pthread_mutex_unlock(&create_lock);
	return PEFT_OK;
}

/* Number of visible devices, with signals blocked (CUDA may start threads). */
static int
cuda_device_count(void)
{
	sigset_t	all;
	sigset_t	saved;
	int			count;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	count = peft_cuda_device_count();
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return count;
}

/* The table peft_engine.so finds in this library (or a test program links in). */
PEFT_EXPORT const CudaBackendApi *
peft_cuda_backend_api(void)
{
	static const CudaBackendApi api = {
		.abi_version = PEFT_CUDA_BACKEND_ABI,
		.available = cuda_available,
		.get = cuda_get,
		.set_idle_release = cuda_set_idle_release,
		.device_count = cuda_device_count,
	};

	return &api;
}

#endif							/* PEFT_WITH_CUDA && !PEFT_DOUBLE */
