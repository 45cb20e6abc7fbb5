/*
 * backend_cpu.c - the CPU backend: the reference ops (ops.h, ops_varlen.h)
 * and the threaded products (matmul.h) over host memory.  Nothing here can
 * fail except allocation, so most entries are one call.
 */
#include "backend.h"
#include "matmul.h"
#include "ops.h"
#include "ops_varlen.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Seconds on a monotonic clock (for the profile). */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Zeroed host buffer. */
static void *
cpu_alloc(Backend *be, size_t bytes)
{
	void	   *p = calloc(bytes ? bytes : 1, 1);

	if (p == NULL)
		backend_fail(be, PEFT_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
	return p;
}

/* Free a host buffer. */
static void
cpu_release(Backend *be, void *p)
{
	free(p);
}

/* Host to "device" is a copy (callers skip it where they can alias). */
static void
cpu_copy(Backend *be, void *dst, const void *src, size_t bytes)
{
	if (bytes > 0 && dst != src)
		memcpy(dst, src, bytes);
}

/* Zero bytes of p. */
static void
cpu_zero(Backend *be, void *p, size_t bytes)
{
	memset(p, 0, bytes);
}

/* Nothing is queued on the CPU. */
static void
cpu_sync(Backend *be)
{
}

/* The CPU backend is used by one thread at a time and never releases. */
static uint64_t
cpu_enter(Backend *be)
{
	return 0;
}

/* Nothing to unlock. */
static void
cpu_leave(Backend *be)
{
}

/* Nothing to pin. */
static void
cpu_pin(Backend *be, int delta)
{
}

/* The base weights as the model holds them: pointers, no copy. */
static PeftCode
cpu_weights_acquire(Backend *be, const BertModel *m, ModelWeights **out, PeftError *err)
{
	ModelWeights *w = calloc(1, sizeof(ModelWeights));
	int			L = m->cfg.num_layers;
	size_t		C = m->cfg.hidden_size;

	*out = NULL;
	if (w == NULL || (w->layers = calloc(L, sizeof(LayerWeights))) == NULL)
	{
		free(w);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for the model's weights");
	}
	w->word = m->word_embeddings;
	w->pos = m->position_embeddings;
	w->type = m->token_type_embeddings;
	w->ln_emb_gamma = m->ln_emb_gamma;
	w->ln_emb_beta = m->ln_emb_beta;
	for (int l = 0; l < L; l++)
	{
		const BertLayer *src = &m->layers[l];
		LayerWeights *dst = &w->layers[l];

		dst->qkv_weight = m->qkv_weight + (size_t) l * 3 * C * C;
		dst->qkv_bias = m->qkv_bias + (size_t) l * 3 * C;
		for (int k = 0; k < BERT_NUM_LINEAR; k++)
		{
			dst->weight[k] = src->linear[k].weight;
			dst->bias[k] = src->linear[k].bias;
		}
		dst->ln_attn_gamma = src->ln_attn_gamma;
		dst->ln_attn_beta = src->ln_attn_beta;
		dst->ln_out_gamma = src->ln_out_gamma;
		dst->ln_out_beta = src->ln_out_beta;
	}
	*out = w;
	return PEFT_OK;
}

/* Free the pointer table (the weights belong to the model). */
static void
cpu_weights_release(Backend *be, ModelWeights *w)
{
	if (w == NULL)
		return;
	free(w->layers);
	free(w);
}

/* C = alpha op(A) op(B) + beta C on the engine threads. */
static void
cpu_gemm(Backend *be, bool ta, bool tb, int M, int N, int K, real alpha,
		 const real *A, int lda, const real *B, int ldb, real beta, real *C, int ldc)
{
	double		t0 = be->profile.enabled ? now_seconds() : 0;

	matmul(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
		   M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
	be->profile.gemm_flops += 2.0 * M * N * K;
	if (be->profile.enabled)
		be->profile.gemm_seconds += now_seconds() - t0;
}

/* out = x W^T + bias. */
static void
cpu_linear(Backend *be, real *out, int ldo, const real *x, int ldx,
		   const real *W, const real *bias, int N, int IN, int OUT)
{
	double		t0 = be->profile.enabled ? now_seconds() : 0;

	matmul_linear(out, ldo, x, ldx, W, bias, N, IN, OUT);
	be->profile.gemm_flops += 2.0 * N * IN * OUT;
	if (be->profile.enabled)
		be->profile.gemm_seconds += now_seconds() - t0;
}

/*
 * Every segment's LoRA update, row by row in plain loops: the reference
 * the CUDA kernels are tested against.  xa is rounded to real between the
 * phases, as the scratch of the two-phase products holds it.
 */
static void
cpu_lora_sgmv(Backend *be, real *out, int ldo, const real *x, int ldx,
			  const LoraSegment *segs, int nsegs, int IN, int OUT)
{
	real		xa[BACKEND_SGMV_MAX_RANK];

	if (!backend_sgmv_valid(be, ldo, ldx, segs, nsegs, IN, OUT))
		return;
	for (int s = 0; s < nsegs; s++)
	{
		const LoraSegment *sg = &segs[s];

		for (int n = sg->row0; sg->rank > 0 && n < sg->row0 + sg->rows; n++)
		{
			const real *xr = x + (size_t) n * ldx;
			real	   *o = out + (size_t) n * ldo;

			for (int k = 0; k < sg->rank; k++)
			{
				const real *a = sg->A + (size_t) k * IN;
				double		sum = 0;

				for (int i = 0; i < IN; i++)
					sum += (double) xr[i] * a[i];
				xa[k] = (real) sum;
			}
			for (int j = 0; j < OUT; j++)
			{
				const real *b = sg->B + (size_t) j * sg->rank;
				double		sum = 0;

				for (int k = 0; k < sg->rank; k++)
					sum += (double) xa[k] * b[k];
				o[j] += (real) (sg->scale * sum);
			}
		}
		be->profile.gemm_flops += 2.0 * sg->rows * sg->rank * (IN + OUT);
	}
}

/* The head's backward (ops.h linear_backward). */
static void
cpu_linear_backward(Backend *be, real *dx, real *dW, real *db, const real *dout,
					const real *x, const real *W, int N, int C, int K)
{
	linear_backward(dx, dW, db, dout, x, W, N, C, K);
}

/* Packed embeddings (token type 0), with prompt tuning's virtual tokens when V > 0. */
static void
cpu_embeddings(Backend *be, real *out, const int32_t *ids, const int32_t *rows,
			   int N, int T, const real *word, const real *pos, const real *type,
			   const real *prompt, int V, int C, int vocab)
{
	if (V == 0)
	{
		varlen_embeddings_forward(out, ids, NULL, rows, N, T, word, pos, type, C);
		return;
	}
	for (int n = 0; n < N; n++)
	{
		real	   *o = out + (size_t) n * C;
		int			r = rows[n];
		const real *w = r < 0 ? prompt + (size_t) (-1 - r) * C : word + (size_t) ids[r] * C;
		const real *p = pos + (size_t) (r < 0 ? -1 - r : r % T + V) * C;

		for (int c = 0; c < C; c++)
			o[c] = w[c] + p[c] + type[c];
	}
}

/* dprompt[v] += the gradients of every sequence's virtual token v (summed in double). */
static void
cpu_prompt_backward(Backend *be, real *dprompt, int ldp, const real *demb, int lde,
					const int32_t *seq_start, int B, int V, int C)
{
	for (int v = 0; v < V; v++)
		for (int c = 0; c < C; c++)
		{
			double		sum = 0;

			for (int b = 0; b < B; b++)
				sum += demb[((size_t) seq_start[b] + v) * lde + c];
			dprompt[(size_t) v * ldp + c] += (real) sum;
		}
}

/* dst[dst_rows[i]] = src[src_rows[i]] (NULL: identity). */
static void
cpu_row_copy(Backend *be, real *dst, int ldd, const int32_t *dst_rows, const real *src, int lds,
			 const int32_t *src_rows, int n, int cols)
{
	for (int i = 0; i < n; i++)
		memcpy(dst + (size_t) (dst_rows ? dst_rows[i] : i) * ldd,
			   src + (size_t) (src_rows ? src_rows[i] : i) * lds, sizeof(real) * cols);
}

/* LayerNorm forward, saving mean and rstd. */
static void
cpu_layernorm_forward(Backend *be, real *out, real *mean, real *rstd, const real *inp,
					  const real *gamma, const real *beta, int N, int C, real eps)
{
	layernorm_forward(out, mean, rstd, inp, gamma, beta, N, C, eps);
}

/* LayerNorm input gradient, and beta's when trained (gamma is frozen). */
static void
cpu_layernorm_backward(Backend *be, real *dinp, real *dbeta, const real *dout,
					   const real *inp, const real *gamma, const real *mean,
					   const real *rstd, int N, int C)
{
	layernorm_backward(dinp, NULL, dbeta, dout, inp, gamma, mean, rstd, N, C);
}

/* Exact GELU. */
static void
cpu_gelu_forward(Backend *be, real *out, const real *inp, size_t n)
{
	gelu_forward(out, inp, n);
}

/* GELU backward (accumulates). */
static void
cpu_gelu_backward(Backend *be, real *dinp, const real *inp, const real *dout, size_t n)
{
	gelu_backward(dinp, inp, dout, n);
}

/* out = a + b. */
static void
cpu_add(Backend *be, real *out, const real *a, const real *b, size_t n)
{
	add_forward(out, a, b, n);
}

/* out = inp * keep / (1-p). */
static void
cpu_dropout(Backend *be, real *out, const real *inp, const uint8_t *keep, real p, size_t n)
{
	dropout_forward(out, inp, keep, p, n);
}

/* dinp += dout * keep / (1-p). */
static void
cpu_dropout_backward(Backend *be, real *dinp, const real *dout, const uint8_t *keep,
					 real p, size_t n)
{
	dropout_backward(dinp, dout, keep, p, n);
}

/* Attention flops of a packed batch: q k^T and probs v, 2 len^2 C each. */
static double
attention_flops(const int32_t *seq_start, int B, int C)
{
	double		flops = 0;

	for (int b = 0; b < B; b++)
	{
		double		len = seq_start[b + 1] - seq_start[b];

		flops += 4.0 * len * len * C;
	}
	return flops;
}

/* Packed attention forward. */
static void
cpu_attention_forward(Backend *be, real *out, real *probs, real *dropped,
					  const real *q, const real *k, const real *v, int ld,
					  const uint8_t *keep, real p, const int32_t *seq_start,
					  int B, int N, int C, int NH)
{
	varlen_attention_forward(out, probs, dropped, q, k, v, ld, keep, p, seq_start, B, C, NH);
	be->profile.attention_flops += attention_flops(seq_start, B, C);
}

/* Packed attention backward. */
static void
cpu_attention_backward(Backend *be, real *dq, real *dk, real *dv, real *scratch,
					   const real *dout, const real *probs, const real *q,
					   const real *k, const real *v, int ld, const uint8_t *keep,
					   real p, const int32_t *seq_start, int B, int N, int C, int NH)
{
	varlen_attention_backward(dq, dk, dv, scratch, dout, probs, q, k, v, ld, keep, p,
							  seq_start, B, C, NH);
	be->profile.attention_flops += 2 * attention_flops(seq_start, B, C);
}

/* Mean or [CLS] pooling. */
static void
cpu_pool_forward(Backend *be, bool cls, real *out, const real *inp,
				 const int32_t *seq_start, int B, int C, int skip)
{
	if (skip == 0 && cls)
		varlen_cls_pool_forward(out, inp, seq_start, B, C);
	else if (skip == 0)
		varlen_mean_pool_forward(out, inp, seq_start, B, C);
	else
		for (int b = 0; b < B; b++)
		{
			int			first = seq_start[b] + skip;
			int			len = seq_start[b + 1] - first;
			real	   *o = out + (size_t) b * C;

			for (int c = 0; c < C; c++)
			{
				double		sum = 0;

				for (int n = first; n < first + (cls ? (len > 0) : len); n++)
					sum += inp[(size_t) n * C + c];
				o[c] = len <= 0 ? 0 : (real) (cls ? sum : sum / len);
			}
		}
}

/* Pooling backward (accumulates). */
static void
cpu_pool_backward(Backend *be, bool cls, real *dinp, const real *dout,
				  const int32_t *seq_start, int B, int C, int skip)
{
	if (skip == 0 && cls)
		varlen_cls_pool_backward(dinp, dout, seq_start, B, C);
	else if (skip == 0)
		varlen_mean_pool_backward(dinp, dout, seq_start, B, C);
	else
		for (int b = 0; b < B; b++)
		{
			int			first = seq_start[b] + skip;
			int			len = seq_start[b + 1] - first;
			real		inv = len > 0 ? (real) (1.0 / len) : 0;

			for (int n = first; n < first + (cls ? (len > 0) : len); n++)
				for (int c = 0; c < C; c++)
					dinp[(size_t) n * C + c] += cls ? dout[(size_t) b * C + c]
						: dout[(size_t) b * C + c] * inv;
		}
}

/* Row-wise L2 normalisation. */
static void
cpu_l2norm_forward(Backend *be, real *out, real *norm, const real *inp, int B, int C)
{
	l2norm_forward(out, norm, inp, B, C);
}

/* Packed rows back to the padded layout. */
static void
cpu_scatter_rows(Backend *be, real *out, const real *packed, const int32_t *rows,
				 int N, int BT, int C)
{
	varlen_scatter_rows(out, packed, rows, N, BT, C);
}

/* dst = (or +=) alpha (vec[j] + offset) src, column by column. */
static void
cpu_colscale(Backend *be, real *dst, int ldd, const real *src, int lds, const real *vec,
			 real offset, real alpha, bool accumulate, int N, int n)
{
	for (int i = 0; i < N; i++)
	{
		real	   *d = dst + (size_t) i * ldd;
		const real *x = src + (size_t) i * lds;

		for (int j = 0; j < n; j++)
		{
			real		v = alpha * ((vec ? vec[j] : 1) + offset) * x[j];

			d[j] = accumulate ? d[j] + v : v;
		}
	}
}

/* dvec[j] += alpha scale[j] sum_i a[i,j] b[i,j], summed in double. */
static void
cpu_coldot(Backend *be, real *dvec, const real *a, int lda, const real *b, int ldb,
		   const real *scale, real alpha, int N, int n)
{
	for (int j = 0; j < n; j++)
	{
		double		sum = 0;

		for (int i = 0; i < N; i++)
			sum += (double) a[(size_t) i * lda + j] * (b ? b[(size_t) i * ldb + j] : 1);
		dvec[j] += (real) (alpha * (scale ? scale[j] : 1) * sum);
	}
}

/* inv[j] = 1 / ||W[j,:]||, in double. */
static void
cpu_row_inv_norms(Backend *be, real *inv, const real *W, int rows, int cols)
{
	for (int j = 0; j < rows; j++)
	{
		double		sum = 0;

		for (int i = 0; i < cols; i++)
			sum += (double) W[(size_t) j * cols + i] * W[(size_t) j * cols + i];
		inv[j] = (real) (1.0 / sqrt(sum));
	}
}

/* Mean cross-entropy. */
static double
cpu_cross_entropy_forward(Backend *be, real *probs, const real *logits,
						  const int32_t *labels, int B, int K)
{
	return cross_entropy_forward(probs, logits, labels, B, K);
}

/* Cross-entropy backward (accumulates). */
static void
cpu_cross_entropy_backward(Backend *be, real *dlogits, const real *probs,
						   const int32_t *labels, real dloss, int B, int K)
{
	cross_entropy_backward(dlogits, probs, labels, dloss, B, K);
}

/* Mean squared error. */
static double
cpu_mse_forward(Backend *be, const real *pred, const real *target, int B)
{
	return mse_forward(pred, target, B);
}

/* MSE backward (accumulates). */
static void
cpu_mse_backward(Backend *be, real *dpred, const real *pred, const real *target,
				 real dloss, int B)
{
	mse_backward(dpred, pred, target, dloss, B);
}

/* Sum of squares in double. */
static double
cpu_sum_squares(Backend *be, const real *g, size_t n)
{
	return sum_squares(g, n);
}

/* g *= s. */
static void
cpu_scale(Backend *be, real *g, real s, size_t n)
{
	scale_inplace(g, s, n);
}

/* One AdamW step over every parameter. */
static void
cpu_adamw(Backend *be, real *param, const real *grad, real *m, real *v, size_t n,
		  real lr, real beta1, real beta2, real eps, real weight_decay, int t)
{
	adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
}

/* The static CPU backend is never destroyed. */
static void
cpu_destroy(Backend *be)
{
}

static const BackendOps cpu_ops = {
	.alloc = cpu_alloc,
	.release = cpu_release,
	.upload = cpu_copy,
	.download = cpu_copy,
	.zero = cpu_zero,
	.copy = cpu_copy,
	.sync = cpu_sync,
	.enter = cpu_enter,
	.leave = cpu_leave,
	.pin = cpu_pin,
	.weights_acquire = cpu_weights_acquire,
	.weights_release = cpu_weights_release,
	.gemm = cpu_gemm,
	.linear = cpu_linear,
	.linear_backward = cpu_linear_backward,
	.lora_sgmv = cpu_lora_sgmv,
	.embeddings = cpu_embeddings,
	.prompt_backward = cpu_prompt_backward,
	.row_copy = cpu_row_copy,
	.layernorm_forward = cpu_layernorm_forward,
	.layernorm_backward = cpu_layernorm_backward,
	.gelu_forward = cpu_gelu_forward,
	.gelu_backward = cpu_gelu_backward,
	.add = cpu_add,
	.dropout = cpu_dropout,
	.dropout_backward = cpu_dropout_backward,
	.attention_forward = cpu_attention_forward,
	.attention_backward = cpu_attention_backward,
	.pool_forward = cpu_pool_forward,
	.pool_backward = cpu_pool_backward,
	.l2norm_forward = cpu_l2norm_forward,
	.scatter_rows = cpu_scatter_rows,
	.colscale = cpu_colscale,
	.coldot = cpu_coldot,
	.row_inv_norms = cpu_row_inv_norms,
	.cross_entropy_forward = cpu_cross_entropy_forward,
	.cross_entropy_backward = cpu_cross_entropy_backward,
	.mse_forward = cpu_mse_forward,
	.mse_backward = cpu_mse_backward,
	.sum_squares = cpu_sum_squares,
	.scale = cpu_scale,
	.adamw = cpu_adamw,
	.destroy = cpu_destroy,
};

/*
 * The process's CPU backend.  Its profile counters are shared by every
 * network of the process, which is how the CLI and benchmarks read them.
 */
Backend *
backend_cpu(void)
{
	static Backend cpu = {
		.ops = &cpu_ops,
		.kind = PEFT_DEVICE_CPU,
		.name = "cpu",
		.host_memory = true,
		.precision = PEFT_PRECISION_FP32,
	};

	return &cpu;
}
