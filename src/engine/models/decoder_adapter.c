/*
 * decoder_adapter.c - LoRA, DoRA and (IA)^3 over a LLaMA-family decoder
 * (decoder_adapter.h): parameters with PEFT's names, PEFT's
 * initialisation, the adapted linear forward and backward, and the
 * adapter's bytes in PEFT's layout.
 */
#include "decoder_adapter.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "gemm_bf16.h"
#include "matmul.h"
#include "ops.h"
#include "quant.h"
#include "safetensors.h"
#include "threadpool.h"

const char *const llama_linear_names[LLAMA_NUM_LINEAR] = {
	"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
};

const char *
decoder_adapter_method_name(DadMethod method)
{
	switch (method)
	{
		case DAD_LORA:
			return "lora";
		case DAD_DORA:
			return "dora";
		case DAD_IA3:
			return "ia3";
		case DAD_PROMPT:
			return "prompt";
		case DAD_PREFIX:
			return "prefix";
		case DAD_BOTTLENECK:
			return "adapter";
	}
	return "?";
}

/* Linear w of layer L. */
const QMatrix *
llama_layer_linear(const LlamaLayer *L, int w)
{
	switch (w)
	{
		case LLAMA_Q:
			return &L->wq;
		case LLAMA_K:
			return &L->wk;
		case LLAMA_V:
			return &L->wv;
		case LLAMA_O:
			return &L->wo;
		case LLAMA_GATE:
			return &L->w_gate;
		case LLAMA_UP:
			return &L->w_up;
		default:
			return &L->w_down;
	}
}

/* ---- products with the frozen weights ----------------------------------- */

#ifdef PEFT_DOUBLE
/*
 * Double builds exist for the gradient checks on tiny models: W is
 * dequantized one row at a time and the sums run in double, so finite
 * differences see the same function the float kernels compute.
 */
static real *
dequantized_row(const QMatrix *m, int64_t r, float *buf, real *out)
{
	quant_dequantize(m->type, (const uint8_t *) m->data + (size_t) r * quant_row_bytes(m->type, m->cols),
					 m->cols, buf);
	for (int64_t c = 0; c < m->cols; c++)
		out[c] = buf[c];
	return out;
}

void
qmatrix_forward(const QMatrix *m, const real *x, int N, real *y, bool bf16)
{
	float	   *buf = malloc(sizeof(float) * m->cols);
	real	   *row = malloc(sizeof(real) * m->cols);

	for (int64_t r = 0; r < m->rows; r++)
	{
		dequantized_row(m, r, buf, row);
		for (int n = 0; n < N; n++)
		{
			real		s = 0;

			for (int64_t c = 0; c < m->cols; c++)
				s += row[c] * x[(size_t) n * m->cols + c];
			y[(size_t) n * m->rows + r] = s;
		}
	}
	free(buf);
	free(row);
}

void
qmatrix_backward(const QMatrix *m, const real *dy, int N, real *dx, bool bf16)
{
	float	   *buf = malloc(sizeof(float) * m->cols);
	real	   *row = malloc(sizeof(real) * m->cols);

	for (int64_t r = 0; r < m->rows; r++)
	{
		dequantized_row(m, r, buf, row);
		for (int n = 0; n < N; n++)
		{
			real		g = dy[(size_t) n * m->rows + r];

			for (int64_t c = 0; c < m->cols; c++)
				dx[(size_t) n * m->cols + c] += g * row[c];
		}
	}
	free(buf);
	free(row);
}
#else
/*
 * Training's products have hundreds of rows: there one float32 copy of
 * the matrix, made for the product, and a single product of full shapes
 * through the engine's threads run faster than tiles (each tile repacked
 * x for its own small GEMM).  Only matrices
 * up to QMATRIX_WHOLE_MAX values take this path (4 MB of scratch, reused:
 * never a copy of the model; the 28-million-value output head keeps its
 * tiles); decoding's few rows keep quant.h's kernels.
 */
#define QMATRIX_WHOLE_MIN_ROWS 64
#define QMATRIX_WHOLE_MAX ((int64_t) 1 << 20)

static _Thread_local float *whole_buf;

/*
 * m dequantized whole into the thread's scratch, or NULL (too large, or
 * no memory: the tiles then).  Dequantized anew every time: a cache keyed
 * by the mapping's address could outlive the model that was mapped there.
 */
static const float *
whole_matrix(const QMatrix *m)
{
	if (m->rows * m->cols > QMATRIX_WHOLE_MAX)
		return NULL;
	if (m->type == GGML_F32)
		return m->data;
	if (whole_buf == NULL && (whole_buf = malloc(sizeof(float) * QMATRIX_WHOLE_MAX)) == NULL)
		return NULL;
	quant_dequantize(m->type, m->data, m->rows * m->cols, whole_buf);
	return whole_buf;
}

/*
 * Values of a matrix one bf16 product takes at most: gemm_bf16_rows packs
 * them as bf16 (8 MB for 4 million), so the 28-million-value output head
 * goes in 7 slices of rows.
 */
#define QMATRIX_BF16_MAX ((int64_t) 1 << 22)

/* Rows of a quantized matrix, for gemm_bf16_rows. */
typedef struct QMatrixRows
{
	GgmlType	type;
	const uint8_t *data;		/* row 0 */
	size_t		row_bytes;
	int64_t		cols;
} QMatrixRows;

/* Rows [first, first + count) dequantized into out (a GemmBf16RowsFn). */
static void
qmatrix_rows(const void *ctx, int first, int count, float *out)
{
	const QMatrixRows *q = ctx;

	quant_dequantize(q->type, q->data + (size_t) first * q->row_bytes, (int64_t) count * q->cols, out);
}

/*
 * BF16 products (precision => 'bf16', on AMX): gemm_bf16_rows dequantizes
 * the matrix a few rows at a time inside its packing (on every thread, into
 * scratch that stays in cache), never as a whole float32 copy; matrices over
 * QMATRIX_BF16_MAX values in slices of rows.  float32 weights go to
 * gemm_bf16 as they are.  Without memory for the packing, the float
 * kernels, a row of a at a time (a slice's rows of a and c are contiguous).
 */
static void
bf16_product(const QMatrix *m, const real *a, int N, real *c, bool backward)
{
	int64_t		rows = QMATRIX_BF16_MAX / m->cols > 0 ? QMATRIX_BF16_MAX / m->cols : 1;
	size_t		row_bytes = quant_row_bytes(m->type, m->cols);
	int			cols = (int) m->cols;

	for (int64_t r0 = 0; r0 < m->rows; r0 += rows)
	{
		int			n = (int) (m->rows - r0 < rows ? m->rows - r0 : rows);
		const uint8_t *w = (const uint8_t *) m->data + r0 * row_bytes;
		QMatrixRows q = {m->type, w, row_bytes, m->cols};

		if (m->type == GGML_F32)
		{
			if (backward)
				gemm_bf16(false, N, cols, n, a + r0, (int) m->rows, (const float *) w, cols, c, cols, true);
			else
				gemm_bf16(true, N, n, cols, a, cols, (const float *) w, cols, c + r0, (int) m->rows, false);
			continue;
		}
		if (backward)			/* dx[N, cols] += dy[N, r0 .. r0+n) W[r0 .. r0+n) */
		{
			if (!gemm_bf16_rows(false, N, cols, n, a + r0, (int) m->rows, qmatrix_rows, &q, c, cols, true))
				for (int i = 0; i < N; i++)
					quant_matmul_backward_input(m->type, w, n, m->cols, a + (size_t) i * m->rows + r0, 1,
												c + (size_t) i * cols);
		}
		else					/* y[N, r0 .. r0+n) = x W[r0 .. r0+n)^T */
		{
			if (!gemm_bf16_rows(true, N, n, cols, a, cols, qmatrix_rows, &q, c + r0, (int) m->rows, false))
				for (int i = 0; i < N; i++)
					quant_matmul(m->type, w, n, m->cols, a + (size_t) i * cols, 1,
								 c + (size_t) i * m->rows + r0);
		}
	}
}

void
qmatrix_forward(const QMatrix *m, const real *x, int N, real *y, bool bf16)
{
	const float *w;

	if (bf16 && N >= QMATRIX_WHOLE_MIN_ROWS)
	{
		bf16_product(m, x, N, y, false);
		return;
	}
	w = N >= QMATRIX_WHOLE_MIN_ROWS ? whole_matrix(m) : NULL;
	if (w == NULL)
	{
		quant_matmul(m->type, m->data, m->rows, m->cols, x, N, y);
		return;
	}
	matmul(CblasNoTrans, CblasTrans, N, (int) m->rows, (int) m->cols, 1, x, (int) m->cols, w,
		   (int) m->cols, 0, y, (int) m->rows);
}

void
qmatrix_backward(const QMatrix *m, const real *dy, int N, real *dx, bool bf16)
{
	const float *w;

	if (bf16 && N >= QMATRIX_WHOLE_MIN_ROWS)
	{
		bf16_product(m, dy, N, dx, true);
		return;
	}
	w = N >= QMATRIX_WHOLE_MIN_ROWS ? whole_matrix(m) : NULL;
	if (w == NULL)
	{
		quant_matmul_backward_input(m->type, m->data, m->rows, m->cols, dy, N, dx);
		return;
	}
	matmul(CblasNoTrans, CblasNoTrans, N, (int) m->cols, (int) m->rows, 1, dy, (int) m->rows, w,
		   (int) m->cols, 1, dx, (int) m->cols);
}
#endif

/* Whether an adapter's products with the frozen weights run in BF16 (NULL: the base, FP32). */
static bool
bf16_of(const DecoderAdapter *ad)
{
	return ad != NULL && ad->bf16;
}

/* ---- construction -------------------------------------------------------- */

/* The module path of linear w in layer l, as PEFT names it. */
static void
linear_path(char *buf, size_t len, int l, int w)
{
	snprintf(buf, len, "base_model.model.model.layers.%d.%s.%s", l,
			 w <= LLAMA_O ? "self_attn" : "mlp", llama_linear_names[w]);
}

bool
decoder_adapter_touches(const DecoderAdapter *ad, int l, int w)
{
	return ad != NULL && ad->o.targets[w];
}

/* Scratch of the adapter's own, grown to n reals (one caller at a time). */
typedef struct DadScratch
{
	real	   *p;
	size_t		cap;
} DadScratch;

static _Thread_local DadScratch dad_scratch;

static real *
scratch_reals(size_t n)
{
	if (n > dad_scratch.cap)
	{
		real	   *p = realloc(dad_scratch.p, n * sizeof(real));

		if (p == NULL)
			return NULL;
		dad_scratch.p = p;
		dad_scratch.cap = n;
	}
	return dad_scratch.p;
}

/* Check the options against the model. */
static PeftCode
check_options(const LlamaModel *base, const DecoderAdapterOptions *o, PeftError *err)
{
	bool		any = false;

	for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
	{
		any |= o->targets[w];
		if (o->feedforward[w] && !o->targets[w])
			return peft_fail(err, PEFT_ERR_INVALID,
							 "feedforward module %s is not one of the target modules",
							 llama_linear_names[w]);
	}
	if (base->cfg.num_layers < 1)
		return peft_fail(err, PEFT_ERR_INVALID, "the model has no layers");
	if (o->method == DAD_PROMPT || o->method == DAD_PREFIX)
	{
		if (o->virtual_tokens < 1 || o->virtual_tokens > 256 ||
			o->virtual_tokens >= base->cfg.context_length)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "num_virtual_tokens must be between 1 and 256 (and below the model's context of %d)",
							 base->cfg.context_length);
		return PEFT_OK;
	}
	if (o->method == DAD_BOTTLENECK)
	{
		if (o->reduction < 1 || o->reduction > base->cfg.hidden_size)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "reduction_factor must be between 1 and the hidden size %d, not %d",
							 base->cfg.hidden_size, o->reduction);
		return PEFT_OK;
	}
	if (!any)
		return peft_fail(err, PEFT_ERR_INVALID, "the adapter targets no linear layer");
	if (o->method != DAD_IA3 && (o->r < 1 || o->r > 4096))
		return peft_fail(err, PEFT_ERR_INVALID, "r must be between 1 and 4096, not %d", o->r);
	if (o->method != DAD_IA3 && !(o->alpha > 0 && isfinite(o->alpha)))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_alpha must be positive");
	if (!(o->dropout >= 0 && o->dropout < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "lora_dropout must be in [0, 1)");
	if (o->method == DAD_DORA && o->dropout > 0)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "DoRA on a decoder trains with lora_dropout 0 (set \"lora_dropout\": 0)");
	return PEFT_OK;
}

/* Declare every tensor, in PEFT's order (layer, module, A, B, vector). */
static PeftCode
declare(DecoderAdapter *ad, PeftError *err)
{
	const LlamaModel *m = ad->base;

	for (int l = 0; l < m->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const QMatrix *W = llama_layer_linear(&m->layers[l], w);
			DadLinearParams *p = &ad->lin[l][w];
			char		path[160];
			char		name[PARAM_NAME_LEN];

			p->a = p->b = p->vec = -1;
			if (!ad->o.targets[w] || ad->o.method >= DAD_PROMPT)
				continue;
			linear_path(path, sizeof(path), l, w);
			if (ad->o.method == DAD_IA3)
			{
				snprintf(name, sizeof(name), "%s.ia3_l", path);
				p->vec = ad->o.feedforward[w] ? paramset_add(&ad->params, name, 2, 1, W->cols, err) :
					paramset_add(&ad->params, name, 2, W->rows, 1, err);
				if (p->vec < 0)
					return err->code;
				continue;
			}
			snprintf(name, sizeof(name), "%s.lora_A.weight", path);
			if ((p->a = paramset_add(&ad->params, name, 2, ad->o.r, W->cols, err)) < 0)
				return err->code;
			snprintf(name, sizeof(name), "%s.lora_B.weight", path);
			if ((p->b = paramset_add(&ad->params, name, 2, W->rows, ad->o.r, err)) < 0)
				return err->code;
			if (ad->o.method == DAD_DORA)
			{
				snprintf(name, sizeof(name), "%s.lora_magnitude_vector", path);
				if ((p->vec = paramset_add(&ad->params, name, 1, W->rows, 0, err)) < 0)
					return err->code;
			}
		}
	if (decoder_virtual_declare(ad, err) != PEFT_OK || decoder_bottleneck_declare(ad, err) != PEFT_OK)
		return err->code;
	return paramset_allocate(&ad->params, true, err);
}

/* Row norms ||W_o + s B_o A|| of linear w of layer l into out[rows] (inverted when invert). */
typedef struct RowNormArgs
{
	const DecoderAdapter *ad;
	const QMatrix *W;
	const real *A;
	const real *B;
	real	   *out;
	bool		invert;
} RowNormArgs;

static void
row_norms_range(void *arg, size_t begin, size_t end)
{
	const RowNormArgs *a = arg;
	int64_t		in = a->W->cols;
	int			r = a->ad->o.r;
	size_t		row_bytes = quant_row_bytes(a->W->type, in);
	float	   *row = malloc(sizeof(float) * in);

	if (row == NULL)
		return;
	for (size_t o = begin; o < end; o++)
	{
		double		sum = 0;

		quant_dequantize(a->W->type, (const uint8_t *) a->W->data + o * row_bytes, in, row);
		for (int64_t i = 0; i < in; i++)
		{
			double		v = row[i];

			if (a->B)
				for (int k = 0; k < r; k++)
					v += (double) a->ad->scaling * a->B[o * r + k] * a->A[(size_t) k * in + i];
			sum += v * v;
		}
		a->out[o] = (real) (a->invert ? 1.0 / sqrt(sum) : sqrt(sum));
	}
	free(row);
}

static void
row_norms(const DecoderAdapter *ad, int l, int w, bool with_lora, bool invert, real *out)
{
	const DadLinearParams *p = &ad->lin[l][w];
	RowNormArgs args = {
		.ad = ad, .W = llama_layer_linear(&ad->base->layers[l], w),
		.A = with_lora ? param_value(&ad->params, p->a) : NULL,
		.B = with_lora ? param_value(&ad->params, p->b) : NULL,
		.out = out, .invert = invert
	};

	peft_parallel_for((size_t) args.W->rows, 16, row_norms_range, &args);
}

/* As PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a = sqrt(5)), B = 0, m = ||W||, l = 1; then the other methods'. */
static PeftCode
initialise(DecoderAdapter *ad, PeftError *err)
{
	ParamSet   *ps = &ad->params;
	PeftRng		init;

	if (ad->o.no_init)
		return PEFT_OK;
	peft_rng_seed(&init, ad->o.seed);
	for (int l = 0; l < ad->base->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const DadLinearParams *p = &ad->lin[l][w];

			if (p->a >= 0)
			{
				real	   *A = param_value(ps, p->a);
				double		bound = 1.0 / sqrt((double) ps->items[p->a].shape[1]);

				for (size_t i = 0; i < ps->items[p->a].count; i++)
					A[i] = (real) ((2 * peft_rng_uniform(&init) - 1) * bound);
			}
			if (p->vec >= 0 && ad->o.method == DAD_IA3)
				for (size_t i = 0; i < ps->items[p->vec].count; i++)
					param_value(ps, p->vec)[i] = 1;
			else if (p->vec >= 0)
				row_norms(ad, l, w, false, false, param_value(ps, p->vec));
		}
	decoder_bottleneck_initialise(ad, &init);
	return decoder_virtual_initialise(ad, &init, err);
}

PeftCode
decoder_adapter_create(const LlamaModel *base, const DecoderAdapterOptions *o,
					   DecoderAdapter **out, PeftError *err)
{
	DecoderAdapter *ad;
	PeftCode	rc;
	int			L = base->cfg.num_layers;

	*out = NULL;
	if ((rc = check_options(base, o, err)) != PEFT_OK)
		return rc;
	if ((ad = calloc(1, sizeof(DecoderAdapter))) == NULL ||
		(ad->lin = calloc(L, sizeof(*ad->lin))) == NULL ||
		(ad->dora_off = calloc((size_t) L * LLAMA_NUM_LINEAR, sizeof(size_t))) == NULL ||
		(ad->bneck = malloc(sizeof(*ad->bneck) * L)) == NULL)
	{
		decoder_adapter_free(ad);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory building the adapter");
	}
	ad->base = base;
	ad->o = *o;
	ad->virt = -1;
	memset(ad->bneck, 0xff, sizeof(*ad->bneck) * L);	/* every index -1 */
	if (o->method >= DAD_IA3)
		ad->o.r = 0;
	if (o->method >= DAD_PROMPT)
		memset(ad->o.targets, 0, sizeof(ad->o.targets));
	ad->scaling = o->method >= DAD_IA3 ? 0 :
		(real) (o->rslora ? o->alpha / sqrt((double) o->r) : o->alpha / o->r);
	peft_rng_seed(&ad->rng, o->seed ^ 0x9e3779b97f4a7c15ULL);
	if ((rc = declare(ad, err)) != PEFT_OK)
	{
		decoder_adapter_free(ad);
		return rc;
	}
	if (o->method == DAD_DORA)
	{
		size_t		total = 0;

		for (int l = 0; l < L; l++)
			for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			{
				ad->dora_off[l * LLAMA_NUM_LINEAR + w] = total;
				if (o->targets[w])
					total += llama_layer_linear(&base->layers[l], w)->rows;
			}
		if ((ad->dora_inv = calloc(total ? total : 1, sizeof(real))) == NULL)
		{
			decoder_adapter_free(ad);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory building the adapter");
		}
	}
	if ((rc = initialise(ad, err)) != PEFT_OK || (rc = decoder_adapter_refresh(ad, err)) != PEFT_OK)
	{
		decoder_adapter_free(ad);
		return rc;
	}
	*out = ad;
	return PEFT_OK;
}

void
decoder_adapter_free(DecoderAdapter *ad)
{
	if (ad == NULL)
		return;
	paramset_free(&ad->params);
	free(ad->lin);
	free(ad->dora_inv);
	free(ad->dora_off);
	free(ad->bneck);
	free(ad);
}

PeftCode
decoder_adapter_refresh(DecoderAdapter *ad, PeftError *err)
{
	if (ad->o.method != DAD_DORA)
		return PEFT_OK;
	for (int l = 0; l < ad->base->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			if (ad->o.targets[w])
				row_norms(ad, l, w, true, true, ad->dora_inv + ad->dora_off[l * LLAMA_NUM_LINEAR + w]);
	return PEFT_OK;
}

void
decoder_adapter_save_sizes(const DecoderAdapter *ad, int w, size_t *xa, size_t *xd, size_t *pre)
{
	const QMatrix *W = llama_layer_linear(&ad->base->layers[0], w);

	*xa = *xd = *pre = 0;
	if (!ad->o.targets[w])
		return;
	if (ad->o.method != DAD_IA3)
		*xa = ad->o.r;
	if (ad->o.method == DAD_LORA && ad->o.dropout > 0)
		*xd = W->cols;
	if (ad->o.method == DAD_DORA || (ad->o.method == DAD_IA3 && !ad->o.feedforward[w]))
		*pre = W->rows;
}

/* ---- the adapted linear --------------------------------------------------- */

/* y[n, j] *= v[j] over N rows of C */
static void
scale_columns(real *y, const real *v, int N, int C)
{
	for (int n = 0; n < N; n++)
		for (int j = 0; j < C; j++)
			y[(size_t) n * C + j] *= v[j];
}

/*
 * The adapter's part of linear w of layer l given y = x W^T already
 * (everything but (IA)^3 on the input, which changes the product itself):
 * (IA)^3's output scaling, or LoRA's / DoRA's branch.
 */
static void
linear_after_base(DecoderAdapter *ad, const QMatrix *W, int l, int w, const real *x, int N,
				  real *y, DadSave *save, bool train)
{
	const DadLinearParams *p = &ad->lin[l][w];
	const ParamSet *ps = &ad->params;
	int			in = (int) W->cols;
	int			out = (int) W->rows;
	int			r = ad->o.r;
	const real *xd = x;
	real	   *xa;

	if (ad->o.method == DAD_IA3)
	{
		if (save)
			memcpy(save->pre, y, sizeof(real) * N * out);
		scale_columns(y, param_value(ps, p->vec), N, out);
		return;
	}
	if (train && ad->o.dropout > 0 && save)
	{
		dropout_mask(save->keep, (size_t) N * in, (real) ad->o.dropout, &ad->rng);
		dropout_forward(save->xd, x, save->keep, (real) ad->o.dropout, (size_t) N * in);
		xd = save->xd;
	}
	xa = save ? save->xa : scratch_reals((size_t) N * r);
	/* xa[N, r] = xd A^T; y += s xa B^T */
	matmul(CblasNoTrans, CblasTrans, N, r, in, 1, xd, in, param_value(ps, p->a), in, 0, xa, r);
	if (ad->o.method == DAD_DORA)
	{
		const real *inv = ad->dora_inv + ad->dora_off[l * LLAMA_NUM_LINEAR + w];
		const real *m = param_value(ps, p->vec);

		if (save)
			memcpy(save->pre, y, sizeof(real) * N * out);
		matmul(CblasNoTrans, CblasTrans, N, out, r, ad->scaling, xa, r, param_value(ps, p->b), r,
			   1, y, out);
		for (int n = 0; n < N; n++)
			for (int j = 0; j < out; j++)
				y[(size_t) n * out + j] *= m[j] * inv[j];
		return;
	}
	matmul(CblasNoTrans, CblasTrans, N, out, r, ad->scaling, xa, r, param_value(ps, p->b), r,
		   1, y, out);
}

/* y = x' W^T with (IA)^3's scaling of the input x' = x v (feed-forward modules). */
static void
linear_scaled_input(DecoderAdapter *ad, const QMatrix *W, int l, int w, const real *x, int N, real *y)
{
	const real *v = param_value(&ad->params, ad->lin[l][w].vec);
	int			in = (int) W->cols;
	real	   *xs = scratch_reals((size_t) N * in);

	for (size_t i = 0; i < (size_t) N * in; i++)
		xs[i] = x[i] * v[i % in];
	qmatrix_forward(W, xs, N, y, bf16_of(ad));
}

void
decoder_adapter_linear(DecoderAdapter *ad, const QMatrix *W, int l, int w, const real *x, int N,
					   real *y, DadSave *save, bool train)
{
	if (!decoder_adapter_touches(ad, l, w))
	{
		qmatrix_forward(W, x, N, y, bf16_of(ad));
		return;
	}
	if (ad->o.method == DAD_IA3 && ad->o.feedforward[w])
	{
		linear_scaled_input(ad, W, l, w, x, N, y);
		return;
	}
	qmatrix_forward(W, x, N, y, bf16_of(ad));
	linear_after_base(ad, W, l, w, x, N, y, save, train);
}

/* The adapter's part of an inference product y = x W^T computed without it (decoder_adapter.h). */
void
decoder_adapter_linear_delta(DecoderAdapter *ad, const QMatrix *W, int l, int w, const real *x,
							 int N, real *y)
{
	if (!decoder_adapter_touches(ad, l, w))
		return;
	if (ad->o.method == DAD_IA3 && ad->o.feedforward[w])
		linear_scaled_input(ad, W, l, w, x, N, y);	/* the product itself changes */
	else
		linear_after_base(ad, W, l, w, x, N, y, NULL, false);
}

/* Gradients of A and B given dy (the branch's output gradient before s), and the branch's dx. */
static void
lora_backward(DecoderAdapter *ad, const DadLinearParams *p, int in, int out, const real *x,
			  int N, const real *dy, const DadSave *save, real *dx, real *scratch)
{
	ParamSet   *ps = &ad->params;
	int			r = ad->o.r;
	real		s = ad->scaling;
	bool		drop = ad->o.dropout > 0;
	const real *xd = drop ? save->xd : x;
	real	   *dxa = scratch_reals((size_t) N * r);

	/* dB[out, r] += s dy^T xa;  dxa[N, r] = s dy B;  dA[r, in] += dxa^T xd */
	matmul(CblasTrans, CblasNoTrans, out, r, N, s, dy, out, save->xa, r, 1, param_grad(ps, p->b), r);
	matmul(CblasNoTrans, CblasNoTrans, N, r, out, s, dy, out, param_value(ps, p->b), r, 0, dxa, r);
	matmul(CblasTrans, CblasNoTrans, r, in, N, 1, dxa, r, xd, in, 1, param_grad(ps, p->a), in);
	if (dx == NULL)
		return;
	if (!drop)
	{
		matmul(CblasNoTrans, CblasNoTrans, N, in, r, 1, dxa, r, param_value(ps, p->a), in, 1, dx, in);
		return;
	}
	matmul(CblasNoTrans, CblasNoTrans, N, in, r, 1, dxa, r, param_value(ps, p->a), in, 0, scratch, in);
	dropout_backward(dx, scratch, save->keep, (real) ad->o.dropout, (size_t) N * in);
}

void
decoder_adapter_linear_backward(DecoderAdapter *ad, const QMatrix *W, int l, int w, const real *x,
								int N, real *dy, const DadSave *save, real *dx, real *scratch)
{
	const DadLinearParams *p;
	ParamSet   *ps;
	int			in = (int) W->cols;
	int			out = (int) W->rows;

	if (!decoder_adapter_touches(ad, l, w))
	{
		if (dx)
			qmatrix_backward(W, dy, N, dx, bf16_of(ad));
		return;
	}
	p = &ad->lin[l][w];
	ps = &ad->params;
	if (ad->o.method == DAD_IA3)
	{
		const real *v = param_value(ps, p->vec);
		real	   *dv = param_grad(ps, p->vec);

		if (ad->o.feedforward[w])
		{
			/* y = (x v) W^T: d(xv) = dy W; dv_i += sum_n d(xv)[n,i] x[n,i]; dx += d(xv) v */
			memset(scratch, 0, sizeof(real) * N * in);
			qmatrix_backward(W, dy, N, scratch, bf16_of(ad));
			for (int n = 0; n < N; n++)
				for (int i = 0; i < in; i++)
				{
					real		g = scratch[(size_t) n * in + i];

					dv[i] += g * x[(size_t) n * in + i];
					if (dx)
						dx[(size_t) n * in + i] += g * v[i];
				}
			return;
		}
		/* y = (x W^T) v: dv_j += sum_n dy[n,j] pre[n,j]; the product's gradient is dy v */
		for (int n = 0; n < N; n++)
			for (int j = 0; j < out; j++)
				dv[j] += dy[(size_t) n * out + j] * save->pre[(size_t) n * out + j];
		scale_columns(dy, v, N, out);
		if (dx)
			qmatrix_backward(W, dy, N, dx, bf16_of(ad));
		return;
	}
	if (ad->o.method == DAD_DORA)
	{
		const real *inv = ad->dora_inv + ad->dora_off[l * LLAMA_NUM_LINEAR + w];
		const real *m = param_value(ps, p->vec);
		real	   *dm = param_grad(ps, p->vec);
		real		s = ad->scaling;

		/*
		 * y = g (pre + s u), u = xa B^T, g = m inv: dm_j += inv_j sum_n dy
		 * (pre + s u), summed in double (hundreds of rows of terms that
		 * cancel; float sums missed PEFT's gradient by 1.2e-4 normwise)
		 */
		double	   *sum = calloc(out, sizeof(double));

		matmul(CblasNoTrans, CblasTrans, N, out, ad->o.r, 1, save->xa, ad->o.r,
			   param_value(ps, p->b), ad->o.r, 0, scratch, out);
		for (int n = 0; n < N; n++)
			for (int j = 0; j < out; j++)
			{
				size_t		k = (size_t) n * out + j;

				if (sum)
					sum[j] += (double) dy[k] * (save->pre[k] + s * scratch[k]);
				dy[k] *= m[j] * inv[j];
			}
		for (int j = 0; sum && j < out; j++)
			dm[j] += (real) (inv[j] * sum[j]);
		free(sum);
	}
	if (dx)
		qmatrix_backward(W, dy, N, dx, bf16_of(ad));
	lora_backward(ad, p, in, out, x, N, dy, save, dx, scratch);
}

/* ---- bytes in PEFT's layout ------------------------------------------------ */

int64_t
llama_hf_row(int64_t g, int D)
{
	int64_t		head = g / D;
	int64_t		k = g % D;

	return head * D + (k % 2) * (D / 2) + k / 2;
}

/* Whether tensor i's rows are q or k output rows stored in GGUF's permuted order. */
static bool
permuted_rows(const DecoderAdapter *ad, int i, int *rows_dim)
{
	if (ad->base->cfg.rope_layout != ROPE_PAIRS)
		return false;
	for (int l = 0; l < ad->base->cfg.num_layers; l++)
		for (int w = LLAMA_Q; w <= LLAMA_K; w++)
		{
			const DadLinearParams *p = &ad->lin[l][w];

			if (i == p->b || (i == p->vec && !ad->o.feedforward[w]))
			{
				*rows_dim = ad->params.items[i].shape[0];
				return true;
			}
		}
	return false;
}

/* Copy tensor i between the model's row order and Hugging Face's (to_hf or back). */
static void
convert_rows(const DecoderAdapter *ad, int i, const real *src, real *dst, bool to_hf)
{
	const Param *p = &ad->params.items[i];
	int			rows;
	size_t		width;
	int			D = ad->base->cfg.head_dim;

	if (!permuted_rows(ad, i, &rows))
	{
		memcpy(dst, src, sizeof(real) * p->count);
		return;
	}
	width = p->count / rows;
	for (int64_t g = 0; g < rows; g++)
	{
		int64_t		h = llama_hf_row(g, D);

		if (to_hf)
			memcpy(dst + h * width, src + g * width, sizeof(real) * width);
		else
			memcpy(dst + g * width, src + h * width, sizeof(real) * width);
	}
}

void
decoder_adapter_tensor_to_hf(const DecoderAdapter *ad, int i, const real *src, real *dst)
{
	convert_rows(ad, i, src, dst, true);
}

PeftCode
decoder_adapter_serialize(const DecoderAdapter *ad, uint8_t **out, size_t *len, PeftError *err)
{
	const ParamSet *ps = &ad->params;
	StWriteTensor *t = calloc(ps->count ? ps->count : 1, sizeof(StWriteTensor));
	real	   *hf = malloc(sizeof(real) * (ps->total ? ps->total : 1));
	static const char *const keys[] = {"format"};
	static const char *const values[] = {"pt"};
	PeftCode	rc;

	if (t == NULL || hf == NULL)
	{
		free(t);
		free(hf);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory serialising the adapter");
	}
	for (int i = 0; i < ps->count; i++)
	{
		const Param *p = &ps->items[i];

		convert_rows(ad, i, param_value(ps, i), hf + p->offset, true);
		t[i].name = p->name;
		t[i].ndim = p->ndim;
		t[i].shape[0] = p->shape[0];
		t[i].shape[1] = p->shape[1];
		t[i].data = hf + p->offset;
	}
	rc = st_serialize(t, ps->count, keys, values, 1, out, len, err);
	free(t);
	free(hf);
	return rc;
}

PeftCode
decoder_adapter_load(DecoderAdapter *ad, const uint8_t *bytes, size_t len, PeftError *err)
{
	ParamSet   *ps = &ad->params;
	StFile	   *file;
	real	   *hf = NULL;
	PeftCode	rc;

	if ((rc = st_open_buffer(bytes, len, &file, err)) != PEFT_OK)
		return rc;
	if (file->ntensors != ps->count)
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT,
					   "adapter weights hold %d tensors, the adapter's config needs %d",
					   file->ntensors, ps->count);
		goto done;
	}
	if ((hf = malloc(sizeof(real) * (ps->total ? ps->total : 1))) == NULL)
	{
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading the adapter");
		goto done;
	}
	for (int i = 0; i < ps->count && rc == PEFT_OK; i++)
	{
		const Param *p = &ps->items[i];
		const StTensor *t;
		int64_t		shape1[2] = {p->shape[0], 0};

		/* DoRA's magnitude is [out]; (IA)^3 vectors are 2-D as PEFT saves them */
		if ((rc = st_expect(file, p->name, p->ndim, p->ndim == 1 ? shape1 : p->shape, &t, err)) != PEFT_OK ||
			(rc = st_to_real(t, hf + p->offset, p->count, err)) != PEFT_OK)
			break;
		for (size_t j = 0; j < p->count; j++)
			if (!isfinite(hf[p->offset + j]))
			{
				rc = peft_fail(err, PEFT_ERR_FORMAT,
							   "adapter tensor \"%s\" holds a non-finite value", p->name);
				break;
			}
		if (rc == PEFT_OK)
			convert_rows(ad, i, hf + p->offset, param_value(ps, i), false);
	}
	if (rc == PEFT_OK)
		rc = decoder_adapter_refresh(ad, err);
done:
	free(hf);
	st_close(file);
	return rc;
}

/* A JSON list of the linears marked in flags. */
static cJSON *
module_list(const bool flags[LLAMA_NUM_LINEAR])
{
	cJSON	   *list = cJSON_CreateArray();

	for (int w = 0; list && w < LLAMA_NUM_LINEAR; w++)
		if (flags[w])
			cJSON_AddItemToArray(list, cJSON_CreateString(llama_linear_names[w]));
	return list;
}

/* root printed into *out, then freed. */
static PeftCode
print_config(cJSON *root, char **out, PeftError *err)
{
	*out = cJSON_Print(root);
	cJSON_Delete(root);
	if (*out == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing adapter_config.json");
	return PEFT_OK;
}

/*
 * PEFT's config for prompt and prefix tuning (what save_pretrained writes
 * for a LLaMA model: prefix tuning's token_dim and num_attention_heads
 * are the key/value heads'), and ours for bottleneck adapters (PEFT has none).
 */
static PeftCode
virtual_or_bottleneck_config(const DecoderAdapter *ad, cJSON *root, const char *base_model,
							 char **out, PeftError *err)
{
	const LlamaConfig *c = &ad->base->cfg;
	const DecoderAdapterOptions *o = &ad->o;
	bool		prefix = o->method == DAD_PREFIX;

	cJSON_AddStringToObject(root, "peft_type", prefix ? "PREFIX_TUNING" :
							o->method == DAD_PROMPT ? "PROMPT_TUNING" : "BOTTLENECK");
	cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(root, "base_model_name_or_path", base_model ? base_model : "");
	if (o->method == DAD_BOTTLENECK)
	{
		cJSON_AddNumberToObject(root, "reduction_factor", o->reduction);
		cJSON_AddStringToObject(root, "adapter_placement", o->after_attention ? "houlsby" : "pfeiffer");
		cJSON_AddStringToObject(root, "non_linearity", "gelu");
	}
	else
	{
		cJSON_AddNumberToObject(root, "num_virtual_tokens", o->virtual_tokens);
		cJSON_AddNumberToObject(root, "token_dim", prefix ? c->num_kv_heads * c->head_dim : c->hidden_size);
		cJSON_AddNumberToObject(root, "num_transformer_submodules", 1);
		cJSON_AddNumberToObject(root, "num_attention_heads", prefix ? c->num_kv_heads : c->num_heads);
		cJSON_AddNumberToObject(root, "num_layers", c->num_layers);
		if (prefix)
		{
			cJSON_AddNumberToObject(root, "encoder_hidden_size", c->num_kv_heads * c->head_dim);
			cJSON_AddBoolToObject(root, "prefix_projection", 0);
		}
		else
			cJSON_AddStringToObject(root, "prompt_tuning_init", "SAMPLE_VOCAB");
	}
	cJSON_AddBoolToObject(root, "inference_mode", 1);
	return print_config(root, out, err);
}

PeftCode
decoder_adapter_config_json(const DecoderAdapter *ad, const char *base_model, char **out,
							PeftError *err)
{
	const DecoderAdapterOptions *o = &ad->o;
	cJSON	   *root = cJSON_CreateObject();

	*out = NULL;
	if (root == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing adapter_config.json");
	if (o->method >= DAD_PROMPT)
		return virtual_or_bottleneck_config(ad, root, base_model, out, err);
	cJSON_AddStringToObject(root, "peft_type", o->method == DAD_IA3 ? "IA3" : "LORA");
	cJSON_AddStringToObject(root, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(root, "base_model_name_or_path", base_model ? base_model : "");
	cJSON_AddItemToObject(root, "target_modules", module_list(o->targets));
	if (o->method == DAD_IA3)
	{
		cJSON_AddItemToObject(root, "feedforward_modules", module_list(o->feedforward));
		cJSON_AddBoolToObject(root, "init_ia3_weights", 1);
	}
	else
	{
		cJSON_AddNumberToObject(root, "r", o->r);
		cJSON_AddNumberToObject(root, "lora_alpha", o->alpha);
		cJSON_AddNumberToObject(root, "lora_dropout", o->dropout);
		cJSON_AddStringToObject(root, "bias", "none");
		cJSON_AddBoolToObject(root, "use_rslora", o->rslora);
		cJSON_AddBoolToObject(root, "use_dora", o->method == DAD_DORA);
		cJSON_AddBoolToObject(root, "init_lora_weights", 1);
	}
	cJSON_AddBoolToObject(root, "fan_in_fan_out", 0);
	cJSON_AddBoolToObject(root, "inference_mode", 1);
	cJSON_AddNullToObject(root, "modules_to_save");
	return print_config(root, out, err);
}

PeftCode
decoder_adapter_parse_targets(bool flags[LLAMA_NUM_LINEAR], const char *const *names, int count,
							  PeftError *err)
{
	memset(flags, 0, sizeof(bool) * LLAMA_NUM_LINEAR);
	for (int i = 0; i < count; i++)
	{
		const char *name = names[i];
		const char *last = strrchr(name, '.');
		bool		found = false;

		if (strcmp(name, "all-linear") == 0)
		{
			for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
				flags[w] = true;
			continue;
		}
		last = last ? last + 1 : name;
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			if (strcmp(last, llama_linear_names[w]) == 0)
			{
				flags[w] = found = true;
				break;
			}
		if (!found)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "target module \"%s\" is not a linear of a LLaMA layer (q_proj, k_proj, "
							 "v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear)", name);
	}
	return PEFT_OK;
}

/* target_modules (or feedforward_modules) of a config: a list of names or one string. */
static PeftCode
config_targets(const cJSON *root, const char *key, bool flags[LLAMA_NUM_LINEAR], PeftError *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
	const char *names[64];
	int			n = 0;
	const cJSON *item;

	memset(flags, 0, sizeof(bool) * LLAMA_NUM_LINEAR);
	if (v == NULL || cJSON_IsNull(v))
		return PEFT_OK;
	if (cJSON_IsString(v))
		return decoder_adapter_parse_targets(flags, (const char *const *) &v->valuestring, 1, err);
	if (!cJSON_IsArray(v))
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: %s must be a list of names", key);
	cJSON_ArrayForEach(item, v)
	{
		if (!cJSON_IsString(item) || n == 64)
			return peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: %s must be a list of names", key);
		names[n++] = item->valuestring;
	}
	return decoder_adapter_parse_targets(flags, names, n, err);
}

/* Fail on a config key set to something this engine does not compute. */
static PeftCode
refuse_unsupported(const cJSON *root, PeftError *err)
{
	static const char *const must_be_empty[] = {
		"modules_to_save", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern"
	};
	const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
	const cJSON *fan = cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out");

	for (size_t i = 0; i < sizeof(must_be_empty) / sizeof(must_be_empty[0]); i++)
	{
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, must_be_empty[i]);

		if (v && !cJSON_IsNull(v) && !((cJSON_IsArray(v) || cJSON_IsObject(v)) && v->child == NULL))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "adapter_config.json: %s is not supported for decoders", must_be_empty[i]);
	}
	if (bias && !(cJSON_IsString(bias) && strcmp(bias->valuestring, "none") == 0))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "adapter_config.json: bias must be \"none\" (LLaMA linears have no biases)");
	if (fan && cJSON_IsTrue(fan))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter_config.json: fan_in_fan_out is not supported");
	return PEFT_OK;
}

/* An integer field of a config from lo to hi. */
static PeftCode
config_int(const cJSON *root, const char *key, int lo, int hi, int *v, PeftError *err)
{
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, key);

	if (!cJSON_IsNumber(n) || n->valuedouble != floor(n->valuedouble) ||
		n->valuedouble < lo || n->valuedouble > hi)
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: %s must be an integer from %d to %d",
						 key, lo, hi);
	*v = (int) n->valuedouble;
	return PEFT_OK;
}

/* Options of PROMPT_TUNING, PREFIX_TUNING (no projection, one submodule) and BOTTLENECK configs. */
static PeftCode
virtual_or_bottleneck_options(const cJSON *root, const char *type, DecoderAdapterOptions *o,
							  PeftError *err)
{
	const cJSON *sub = cJSON_GetObjectItemCaseSensitive(root, "num_transformer_submodules");
	const cJSON *place = cJSON_GetObjectItemCaseSensitive(root, "adapter_placement");
	const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "non_linearity");

	if (strcmp(type, "BOTTLENECK") == 0)
	{
		o->method = DAD_BOTTLENECK;
		if (!cJSON_IsString(place) ||
			(strcmp(place->valuestring, "houlsby") != 0 && strcmp(place->valuestring, "pfeiffer") != 0))
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "adapter_config.json: adapter_placement must be \"houlsby\" or \"pfeiffer\"");
		if (act && !cJSON_IsNull(act) && !(cJSON_IsString(act) && strcmp(act->valuestring, "gelu") == 0))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adapter_config.json: non_linearity must be \"gelu\"");
		o->after_attention = strcmp(place->valuestring, "houlsby") == 0;
		return config_int(root, "reduction_factor", 1, 65536, &o->reduction, err);
	}
	o->method = strcmp(type, "PREFIX_TUNING") == 0 ? DAD_PREFIX : DAD_PROMPT;
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "prefix_projection")))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "adapter_config.json: prefix_projection is not supported (its MLP is training-only; "
						 "save the adapter from PEFT after training, or train with prefix_projection false)");
	if (sub && !cJSON_IsNull(sub) && !(cJSON_IsNumber(sub) && sub->valuedouble == 1))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "adapter_config.json: num_transformer_submodules must be 1 for a decoder");
	return config_int(root, "num_virtual_tokens", 1, 256, &o->virtual_tokens, err);
}

PeftCode
decoder_adapter_options_from_config(const char *json, size_t len, DecoderAdapterOptions *o,
									PeftError *err)
{
	cJSON	   *root = cJSON_ParseWithLength(json, len);
	const cJSON *type,
			   *task;
	PeftCode	rc;

	memset(o, 0, sizeof(*o));
	if (root == NULL || !cJSON_IsObject(root))
	{
		cJSON_Delete(root);
		return peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json is not a JSON object");
	}
	type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
	task = cJSON_GetObjectItemCaseSensitive(root, "task_type");
	if (!cJSON_IsString(type) ||
		(strcmp(type->valuestring, "LORA") != 0 && strcmp(type->valuestring, "IA3") != 0 &&
		 strcmp(type->valuestring, "PROMPT_TUNING") != 0 && strcmp(type->valuestring, "PREFIX_TUNING") != 0 &&
		 strcmp(type->valuestring, "BOTTLENECK") != 0))
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "adapters over decoders are LORA (with or without use_dora), IA3, PROMPT_TUNING, "
					   "PREFIX_TUNING or BOTTLENECK, not %.64s",
					   cJSON_IsString(type) ? type->valuestring : "(no peft_type)");
	else if (task && !cJSON_IsNull(task) &&
			 !(cJSON_IsString(task) && strcmp(task->valuestring, "CAUSAL_LM") == 0))
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED,
					   "adapter_config.json: task_type must be CAUSAL_LM for a decoder");
	else if (strcmp(type->valuestring, "LORA") != 0 && strcmp(type->valuestring, "IA3") != 0)
		rc = virtual_or_bottleneck_options(root, type->valuestring, o, err);
	else if ((rc = refuse_unsupported(root, err)) == PEFT_OK &&
			 (rc = config_targets(root, "target_modules", o->targets, err)) == PEFT_OK)
	{
		if (strcmp(type->valuestring, "IA3") == 0)
		{
			o->method = DAD_IA3;
			rc = config_targets(root, "feedforward_modules", o->feedforward, err);
		}
		else
		{
			const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
			const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
			const cJSON *drop = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");

			o->method = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_dora")) ? DAD_DORA : DAD_LORA;
			o->rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_rslora"));
			if (!cJSON_IsNumber(r) || r->valuedouble != (int) r->valuedouble)
				rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: r must be an integer");
			else if (!cJSON_IsNumber(alpha))
				rc = peft_fail(err, PEFT_ERR_FORMAT, "adapter_config.json: lora_alpha must be a number");
			else
			{
				o->r = r->valueint;
				o->alpha = alpha->valuedouble;
				/* dropout is training's: an adapter loaded for inference computes without it */
				o->dropout = cJSON_IsNumber(drop) && o->method == DAD_LORA ? drop->valuedouble : 0;
			}
		}
	}
	cJSON_Delete(root);
	return rc;
}

/* ---- merging ------------------------------------------------------------- */

/* Row o of linear w of layer l with the adapter folded in (double, as PEFT's merge_and_unload). */
static void
merged_row(const DecoderAdapter *ad, int l, int w, int64_t o, const float *base_row, double *row)
{
	const DadLinearParams *p = &ad->lin[l][w];
	const ParamSet *ps = &ad->params;
	int64_t		in = llama_layer_linear(&ad->base->layers[l], w)->cols;

	for (int64_t i = 0; i < in; i++)
		row[i] = base_row[i];
	if (ad->o.method == DAD_IA3)
	{
		const real *v = param_value(ps, p->vec);

		for (int64_t i = 0; i < in; i++)
			row[i] *= ad->o.feedforward[w] ? v[i] : v[o];
		return;
	}
	{
		const real *A = param_value(ps, p->a);
		const real *B = param_value(ps, p->b);
		int			r = ad->o.r;
		double		norm = 0;

		for (int64_t i = 0; i < in; i++)
		{
			double		ba = 0;

			for (int k = 0; k < r; k++)
				ba += (double) B[o * r + k] * A[(size_t) k * in + i];
			row[i] += ad->scaling * ba;
			norm += row[i] * row[i];
		}
		if (ad->o.method == DAD_DORA)
			for (int64_t i = 0; i < in; i++)
				row[i] *= param_value(ps, p->vec)[o] / sqrt(norm);
	}
}

PeftCode
decoder_adapter_merge(const DecoderAdapter *ad, LlamaModel **out, PeftError *err)
{
	const LlamaModel *base = ad->base;
	int			L = base->cfg.num_layers;
	LlamaModel *m = malloc(sizeof(LlamaModel));

	*out = NULL;
	if (ad->o.method >= DAD_PROMPT)
	{
		free(m);
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "only LoRA, DoRA and (IA)^3 fold into the model's weights; %s adapters add tokens "
						 "or layers and are applied as they are",
						 ad->o.method == DAD_BOTTLENECK ? "bottleneck" :
						 ad->o.method == DAD_PREFIX ? "prefix tuning" : "prompt tuning");
	}
	if (m == NULL || (*m = *base, m->layers = malloc(sizeof(LlamaLayer) * L)) == NULL)
	{
		free(m);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory merging the adapter");
	}
	memcpy(m->layers, base->layers, sizeof(LlamaLayer) * L);
	for (int l = 0; l < L; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const QMatrix *W = llama_layer_linear(&base->layers[l], w);
			QMatrix    *M = (QMatrix *) llama_layer_linear(&m->layers[l], w);
			size_t		row_bytes = quant_row_bytes(W->type, W->cols);
			float	   *data;
			float	   *row = malloc(sizeof(float) * W->cols);
			double	   *merged = malloc(sizeof(double) * W->cols);

			if (!ad->o.targets[w])
			{
				free(row);
				free(merged);
				continue;
			}
			data = malloc(sizeof(float) * W->rows * W->cols);
			if (data == NULL || row == NULL || merged == NULL)
			{
				free(data);
				free(row);
				free(merged);
				decoder_adapter_merged_free(m, base);
				return peft_fail(err, PEFT_ERR_NOMEM, "out of memory merging the adapter");
			}
			for (int64_t o = 0; o < W->rows; o++)
			{
				quant_dequantize(W->type, (const uint8_t *) W->data + o * row_bytes, W->cols, row);
				merged_row(ad, l, w, o, row, merged);
				for (int64_t i = 0; i < W->cols; i++)
					data[o * W->cols + i] = (float) merged[i];
			}
			*M = (QMatrix) {.type = GGML_F32, .rows = W->rows, .cols = W->cols, .data = data};
			free(row);
			free(merged);
		}
	*out = m;
	return PEFT_OK;
}

void
decoder_adapter_merged_free(LlamaModel *merged, const LlamaModel *base)
{
	if (merged == NULL)
		return;
	for (int l = 0; merged->layers && l < base->cfg.num_layers; l++)
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
		{
			const QMatrix *M = llama_layer_linear(&merged->layers[l], w);

			if (M->data != llama_layer_linear(&base->layers[l], w)->data)
				free((void *) M->data);
		}
	free(merged->layers);
	free(merged);
}
