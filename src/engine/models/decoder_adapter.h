/*
 * decoder_adapter.h - an adapter over a LLaMA-family decoder: LoRA, DoRA
 * or (IA)^3 on the seven linears of every layer, with Hugging Face PEFT's
 * module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
 * down_proj) and tensor names
 * (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight).
 *
 * One adapted linear computes, for input x [N, in] and the frozen,
 * usually quantized weight W [out, in]:
 *
 *   LoRA:    y = x W^T + s (xd A^T) B^T            xd = dropout(x)
 *   DoRA:    y = g (x W^T + s (x A^T) B^T),        g = m / ||W + s B A|| per row
 *   (IA)^3:  y = (x W^T) l, or (feed-forward) y = (x l) W^T
 *
 * The same code serves training (causal_lm.c saves what backward needs in
 * a DadSave) and generation (decoder.c, nothing saved).
 *
 * Orientation: a GGUF model stores q and k permuted for rotation over
 * consecutive pairs; the adapter's parameters follow the model they run
 * on (rows of q/k's B, magnitude and (IA)^3 vectors permuted as the
 * weights are), and are turned to Hugging Face's layout whenever they
 * leave as bytes (decoder_adapter_serialize) and back when they come in.
 */
#ifndef PEFT_ENGINE_DECODER_ADAPTER_H
#define PEFT_ENGINE_DECODER_ADAPTER_H

#include <stdbool.h>
#include <stdint.h>
#include "llama_model.h"
#include "params.h"
#include "real.h"
#include "rng.h"
#include "status.h"

/* The linears of a LLaMA layer, in PEFT's order of module names. */
typedef enum LlamaLinear
{
	LLAMA_Q,
	LLAMA_K,
	LLAMA_V,
	LLAMA_O,
	LLAMA_GATE,
	LLAMA_UP,
	LLAMA_DOWN,
	LLAMA_NUM_LINEAR
} LlamaLinear;

/* "q_proj", ... by LlamaLinear. */
extern const char *const llama_linear_names[LLAMA_NUM_LINEAR];

/* Linear w of layer L. */
const QMatrix *llama_layer_linear(const LlamaLayer *L, int w);

/*
 * Which method an adapter is (one per adapter over a decoder).  Besides
 * the adapted linears:
 *
 *   prompt:     V virtual tokens, prompt_embeddings [V, C], start every
 *               sequence (positions 0 .. V-1; the real tokens' follow).
 *   prefix:     every layer's attention also attends over V key/value
 *               prefixes, prompt_embeddings [V, L * 2 * KV] in PEFT's layout
 *               [token][layer][key, value][kv head][head dim], raw (never
 *               rotated, as PEFT's past_key_values); the real tokens'
 *               positions start at V.
 *   bottleneck: h + up(GELU(down(h))) on the output of the feed-forward's
 *               down product (and of attention's o product: Houlsby), before
 *               the residual; down [C/reduction, C] with a bias, up
 *               [C, C/reduction] with a bias, starting at zero.  Tensors
 *               base_model.model.model.layers.N.{self_attn,mlp}.adapter.
 *               {down,up}.{weight,bias}.
 */
typedef enum DadMethod
{
	DAD_LORA,
	DAD_DORA,
	DAD_IA3,
	DAD_PROMPT,
	DAD_PREFIX,
	DAD_BOTTLENECK
} DadMethod;

/* A method's name as peft_train's method argument spells it ("lora", ..., "adapter"). */
const char *decoder_adapter_method_name(DadMethod method);

typedef struct DecoderAdapterOptions
{
	DadMethod	method;
	int			r;				/* LoRA rank */
	double		alpha;			/* lora_alpha */
	double		dropout;		/* lora_dropout (LoRA only) */
	bool		rslora;			/* scaling alpha / sqrt(r) */
	bool		targets[LLAMA_NUM_LINEAR];
	bool		feedforward[LLAMA_NUM_LINEAR];	/* (IA)^3: scales the input */
	int			virtual_tokens; /* prompt, prefix: num_virtual_tokens (1 .. 256) */
	int			reduction;		/* bottleneck: width = hidden size / reduction */
	bool		after_attention;	/* bottleneck: also after attention (houlsby), not only the feed-forward (pfeiffer) */
	bool		no_init;		/* leave the parameters zero: the caller loads them next (saves prefix
								 * tuning's forward pass and DoRA's row norms) */
	uint64_t	seed;			/* initialisation and dropout */
} DecoderAdapterOptions;

/* Indices into the ParamSet of one linear's tensors, -1 where absent. */
typedef struct DadLinearParams
{
	int			a;				/* lora_A.weight [r, in] */
	int			b;				/* lora_B.weight [out, r] */
	int			vec;			/* DoRA lora_magnitude_vector [out]; (IA)^3 ia3_l [out] or [in] */
} DadLinearParams;

typedef struct DecoderAdapter
{
	const LlamaModel *base;
	DecoderAdapterOptions o;
	real		scaling;		/* alpha / r (or / sqrt(r)) */
	ParamSet	params;
	DadLinearParams (*lin)[LLAMA_NUM_LINEAR];	/* [num_layers] */
	real	   *dora_inv;		/* DoRA: 1 / ||W + s B A|| per row, every (layer, linear) */
	size_t	   *dora_off;		/* [num_layers * LLAMA_NUM_LINEAR] offsets into dora_inv */
	PeftRng		rng;			/* dropout masks */
	int			virt;			/* prompt, prefix: prompt_embeddings; -1 otherwise */
	int			(*bneck)[2][4];	/* bottleneck: [layer][0 after attention, 1 after the feed-forward]
								 * [down W, down b, up W, up b], -1 where absent */
	int			bneck_width;	/* bottleneck: hidden size / reduction */
	bool		bf16;			/* products of many rows with the frozen weights in BF16 (AMX) */
} DecoderAdapter;

/*
 * What one adapted linear saved in its forward for its backward (buffers
 * of the caller's, sized for N rows; NULL where the method needs none:
 * decoder_adapter_save_sizes says which).
 */
typedef struct DadSave
{
	real	   *xa;				/* [N, r] LoRA, DoRA: xd A^T */
	real	   *xd;				/* [N, in] LoRA with dropout: the dropped input */
	uint8_t    *keep;			/* [N, in] its mask */
	real	   *pre;			/* [N, out] DoRA: x W^T; (IA)^3 on the output: x W^T */
} DadSave;

/* Sizes per row of a DadSave's buffers for linear w (0: not needed). */
void		decoder_adapter_save_sizes(const DecoderAdapter *ad, int w, size_t *xa,
									   size_t *xd, size_t *pre);

/* Check options against the model; build the parameters, initialised as PEFT does. */
PeftCode	decoder_adapter_create(const LlamaModel *base, const DecoderAdapterOptions *o,
								   DecoderAdapter **out, PeftError *err);
void		decoder_adapter_free(DecoderAdapter *ad);

/*
 * Whether linear w of any layer is adapted, and whether layer l's is
 * (NULL adapter: none).
 */
/*
 * Inference: turn y = x W^T (linear w of layer l, computed without the
 * adapter, as for other adapters' rows of a mixed batch) into the
 * adapter's output for those rows.  Nothing when the adapter does not
 * touch the linear.
 */
void		decoder_adapter_linear_delta(DecoderAdapter *ad, const QMatrix *W, int l, int w,
										 const real *x, int N, real *y);
bool		decoder_adapter_touches(const DecoderAdapter *ad, int l, int w);

/* Recompute DoRA's row norms after the parameters changed (nothing for other methods). */
PeftCode	decoder_adapter_refresh(DecoderAdapter *ad, PeftError *err);

/*
 * y[N, out] = linear w (weight W) of layer l, adapted, applied to x[N, in]
 * (ad may be NULL: the plain product).  save (may be NULL: inference)
 * receives what backward needs; train draws dropout.
 */
void		decoder_adapter_linear(DecoderAdapter *ad, const QMatrix *W, int l, int w,
								   const real *x, int N, real *y, DadSave *save, bool train);

/*
 * Backward of decoder_adapter_linear: the adapter's gradients += ..., and
 * dx[N, in] += the input gradient (dx NULL: not needed).  dy is
 * overwritten (scratch).  scratch holds N * max(in, out) reals.
 */
void		decoder_adapter_linear_backward(DecoderAdapter *ad, const QMatrix *W, int l, int w,
											const real *x, int N, real *dy, const DadSave *save,
											real *dx, real *scratch);

/*
 * Row index in Hugging Face's layout of row g of a GGUF q/k matrix with
 * heads of D values (GGUF interleaves each head's two halves pairwise).
 */
int64_t		llama_hf_row(int64_t g, int D);

/* ---- prompt and prefix tuning (decoder_virtual.c) ---- */

/* Virtual tokens the adapter puts before every sequence (prompt, prefix); 0 for the others. */
int			decoder_adapter_virtual_tokens(const DecoderAdapter *ad);
/* Declare and initialise prompt_embeddings (called by decoder_adapter_create). */
PeftCode	decoder_virtual_declare(DecoderAdapter *ad, PeftError *err);
PeftCode	decoder_virtual_initialise(DecoderAdapter *ad, PeftRng *init, PeftError *err);
/* Prompt tuning: virtual token v's input embedding [C]. */
const real *decoder_adapter_prompt_row(const DecoderAdapter *ad, int v);
/* Prompt tuning: its gradient += dx[C]. */
void		decoder_adapter_prompt_backward(DecoderAdapter *ad, int v, const real *dx);
/*
 * Prefix tuning: layer l's keys and values of the V virtual tokens, in the
 * model's layout, into k[V, KV] and v[V, KV] (a sequence's cache positions
 * 0 .. V-1).
 */
void		decoder_adapter_prefix_kv(const DecoderAdapter *ad, int l, real *k, real *v);
/* Prefix tuning: the gradients of layer l's prefixes += dk[V, KV], dv[V, KV]. */
void		decoder_adapter_prefix_backward(DecoderAdapter *ad, int l, const real *dk, const real *dv);

/* ---- bottleneck adapters (decoder_bottleneck.c) ---- */

/* Declare and initialise the bottleneck tensors (called by decoder_adapter_create). */
PeftCode	decoder_bottleneck_declare(DecoderAdapter *ad, PeftError *err);
void		decoder_bottleneck_initialise(DecoderAdapter *ad, PeftRng *init);
/* Whether layer l has a bottleneck adapter at place (0 after attention, 1 after the feed-forward). */
bool		decoder_adapter_has_bottleneck(const DecoderAdapter *ad, int l, int place);
/*
 * h[N, C] += up(GELU(down(h))) in place: down[N, width] receives the down
 * product (backward needs it), act[N, width] is scratch; training also
 * passes in_save [N, C] for the input (NULL: inference).
 */
void		decoder_adapter_bottleneck(DecoderAdapter *ad, int l, int place, real *h, int N,
									   real *in_save, real *down, real *act);
/*
 * Backward: dh[N, C], the gradient of the adapter's output, becomes that
 * of its input; the adapter's gradients accumulate.  scratch holds
 * 2 N width reals.
 */
void		decoder_adapter_bottleneck_backward(DecoderAdapter *ad, int l, int place, real *dh, int N,
												const real *in_save, const real *down_save, real *scratch);

/* Parameter i's values (or gradients) src in Hugging Face's row order into dst. */
void		decoder_adapter_tensor_to_hf(const DecoderAdapter *ad, int i, const real *src, real *dst);

/* The safetensors bytes (PEFT's names, Hugging Face orientation), malloc'ed. */
PeftCode	decoder_adapter_serialize(const DecoderAdapter *ad, uint8_t **out, size_t *len,
									  PeftError *err);
/* Load safetensors bytes saved as above (or by PEFT): every tensor present, shaped, finite. */
PeftCode	decoder_adapter_load(DecoderAdapter *ad, const uint8_t *bytes, size_t len,
								 PeftError *err);
/* adapter_config.json (PEFT's, task_type CAUSAL_LM) of the adapter, malloc'ed. */
PeftCode	decoder_adapter_config_json(const DecoderAdapter *ad, const char *base_model,
										char **out, PeftError *err);
/* Options from adapter_config.json text (what PEFT writes for LoRA, DoRA and IA3). */
PeftCode	decoder_adapter_options_from_config(const char *json, size_t len,
												DecoderAdapterOptions *o, PeftError *err);
/*
 * Parse PEFT target_modules names into flags: "all-linear", or names whose
 * last component is one of the seven linears ("q_proj", "self_attn.q_proj").
 */
PeftCode	decoder_adapter_parse_targets(bool flags[LLAMA_NUM_LINEAR],
										  const char *const *names, int count,
										  PeftError *err);

/*
 * The base model with the adapter folded in, as PEFT's merge_and_unload:
 * the linears it touches become private float32 copies (W + s B A, DoRA's
 * rows rescaled, (IA)^3's rows or columns scaled); every other matrix still
 * points into the base's mapping.  Free with decoder_adapter_merged_free.
 */
PeftCode	decoder_adapter_merge(const DecoderAdapter *ad, LlamaModel **merged, PeftError *err);
void		decoder_adapter_merged_free(LlamaModel *merged, const LlamaModel *base);

/*
 * Products with a frozen model weight in `real` (quant.h's kernels in
 * float builds; row by row in double for the gradient checks):
 * y[N, rows] = x W^T, and dx[N, cols] += dy W.  bf16: products of 64 rows
 * or more round both sides to BF16 and sum in FP32 (gemm_bf16.h; as
 * PyTorch's autocast), float builds only.
 */
void		qmatrix_forward(const QMatrix *m, const real *x, int N, real *y, bool bf16);
void		qmatrix_backward(const QMatrix *m, const real *dy, int N, real *dx, bool bf16);

#endif
