/*
 * method.h - adapter methods as modules.  Each method is one file filling
 * one MethodModule (method_lora.c: LoRA and DoRA; method_ia3.c,
 * method_bitfit.c, method_bottleneck.c, method_prompt.c, method_prefix.c),
 * registered in one table (method_modules.c).  The network (network.c) and
 * its blocks (encoder_block.c; a decoder block beside it later) call the
 * hooks of the network's modules, in table order, at the places methods
 * act; only a module knows its method.
 *
 *   place                     hook                       method
 *   a linear's input          linear_input               (IA)^3 feed-forward: x l
 *   a linear's output         linear_output              (IA)^3: y l
 *   beside a linear           linear_branch              LoRA, DoRA: y + f(x)
 *   a linear's or a norm's    linear_bias, norm_bias     BitFit: trained copies
 *   bias                                                 of the model's biases
 *   a sublayer's output       sublayer_output            bottleneck adapters
 *   the input embeddings      virtual_embeddings         prompt tuning
 *   attention keys, values    attention_forward          prefix tuning
 *
 * A linear computes y = T(x' W^T + b) + branches(x), x' the input after
 * the input hook (at most one module scales a linear's input), T the
 * output hooks in table order.  Backward runs the same places in reverse.
 * Every hook is optional (NULL).  Hooks see the layer l, the activation
 * slot s of the layer's buffers (l while training; 0 in inference, where
 * one set serves every layer) and the linear or sublayer w.
 */
#ifndef PEFT_ENGINE_METHOD_H
#define PEFT_ENGINE_METHOD_H

#include <stdbool.h>
#include "act_table.h"
#include "network.h"

/* Where parameters are declared, in declaration order (PEFT's tensor order). */
typedef enum MethodSite
{
	SITE_INPUT,					/* before the model: virtual token embeddings */
	SITE_ATTENTION,				/* the keys and values of every layer's attention */
	SITE_EMBEDDINGS,			/* the embeddings' LayerNorm */
	SITE_LINEAR_BIASES,			/* one layer's linear biases */
	SITE_LINEAR,				/* one linear of one layer */
	SITE_SUBLAYERS				/* one layer's LayerNorms and sublayer outputs */
} MethodSite;

/* What a module does at a linear (linear_hooks). */
#define HOOK_INPUT	0x1			/* scales its input */
#define HOOK_OUTPUT	0x2			/* transforms its output in place */
#define HOOK_BRANCH	0x4			/* adds a function of its input to its output */
#define HOOK_MERGES	0x8			/* set by the network: folded in by network_merge */

/* Where a hook runs: layer l, its activation slot s, linear or sublayer w (-1 none). */
typedef struct HookAt
{
	int			l;
	int			s;
	int			w;
} HookAt;

/* One layer's attention as the block lays it out, for a module that computes it. */
typedef struct AttentionIO
{
	real	   *qkv;			/* [N, 3C] query | key | value of each row */
	real	   *out;			/* [N, C] the attention output */
	real	   *probs;			/* attention blocks: the softmax, kept for backward */
	real	   *dropped;		/* the dropped weights (forward), scratch (backward) */
	const uint8_t *keep;		/* the attention dropout mask, NULL without */
	real		p;				/* its probability, 0 without */
	real	   *dqkv;			/* backward: [N, 3C] gradient of qkv, zeroed */
	const real *dout;			/* backward: [N, C] gradient of out */
} AttentionIO;

typedef struct MethodModule
{
	const char *name;

	/* ---- construction ---- */
	/* Check the options against the base model (every module, used or not). */
	PeftCode	(*check) (const BertModel *base, const NetworkOptions *o, PeftError *err);
	/* Whether the options use the method: only then are the hooks below called. */
	bool		(*enabled) (const NetworkOptions *o);
	/* Virtual positions before every sequence's real tokens, *rows of them packed rows. */
	int			(*virtual_tokens) (const NetworkOptions *o, int *rows);
	/* The module's state for a network (*state may stay NULL); destroy frees it. */
	PeftCode	(*create) (Network *net, void **state, PeftError *err);
	void		(*destroy) (void *st);
	/* Declare the parameters at a site (network_declare); false on failure. */
	bool		(*declare) (Network *net, void *st, MethodSite site, int l, int w,
							PeftError *err);
	/* Initialise them as PEFT does (the modules draw from one generator in table order). */
	void		(*initialise) (Network *net, void *st, PeftRng *rng);
	/* Add the module's activation buffers to the table. */
	void		(*acts) (Network *net, void *st, ActTable *t);

	/* ---- batches ---- */
	/* After the network packed a batch: the module's own layout (it may raise act->nprobs). */
	PeftCode	(*pack) (Network *net, void *st, const Batch *b, PeftError *err);
	/* Give the backend the module's integer arrays of the batch. */
	void		(*upload) (Network *net, void *st, const Batch *b);

	/* ---- the input embeddings ---- */
	/* [V, C] the virtual tokens that start every packed sequence */
	const real *(*virtual_embeddings) (Network *net, void *st);
	/* demb[N, C]: the gradient of the summed embeddings (before their LayerNorm) */
	void		(*embeddings_backward) (Network *net, void *st, const real *demb);

	/* ---- biases: the index of a trained copy replacing the model's, -1 none ---- */
	int			(*linear_bias) (const Network *net, void *st, int l, int w);
	/* LayerNorm which (0 attention, 1 output) of layer l; l = -1: the embeddings' */
	int			(*norm_bias) (const Network *net, void *st, int l, int which);

	/* ---- linears ---- */
	/* HOOK_* bits of what the module does at linear w of layer l */
	unsigned	(*linear_hooks) (const Network *net, void *st, int l, int w);
	/* x [N, in] -> the input the product reads (the module's buffer) */
	const real *(*linear_input) (Network *net, void *st, HookAt at, const real *x, int N);
	/* out [N, out] (row stride ldo) = x' W^T + b: transformed in place */
	void		(*linear_output) (Network *net, void *st, HookAt at, real *out, int ldo,
								  int N, bool train);
	/* out += the branch of x, the linear's input before any input hook */
	void		(*linear_branch) (Network *net, void *st, HookAt at, real *out, int ldo,
								  const real *x, int N, bool train);
	/*
	 * dx [N, in] = beta dx + the input gradient, given dxin = dout W (the
	 * gradient of the scaled input); the module's gradients too.
	 */
	void		(*linear_input_backward) (Network *net, void *st, HookAt at, real *dx,
										  real beta, const real *dxin, const real *x, int N);
	/* dout (writable, stride ldd): the module's gradients, then dout becomes the gradient before the transform */
	void		(*linear_output_backward) (Network *net, void *st, HookAt at, real *dout,
										   int ldd, int N);
	/* the branch's gradients given dout; dx [N, in] += its input gradient (dx NULL: not needed) */
	void		(*linear_branch_backward) (Network *net, void *st, HookAt at, real *dx,
										   const real *dout, int ldd, const real *x, int N);
	/*
	 * Fold into row o of linear w's merged weight (host, double): row [in]
	 * (W's row so far), *scale (to multiply the row), *bias.
	 */
	void		(*merge_row) (const Network *net, void *st, int l, int w, int o,
							  double *row, double *scale, double *bias);

	/* ---- sublayers and attention ---- */
	/* h [N, C], the output of sublayer w (0 attention, 1 feed-forward), in place */
	void		(*sublayer_output) (Network *net, void *st, HookAt at, real *h, int N);
	/* da, the gradient of its output -> the buffer holding its input's gradient (da itself when none) */
	const real *(*sublayer_backward) (Network *net, void *st, HookAt at, const real *da, int N);
	/* Compute the attention of layer at.l (instead of the block's) */
	void		(*attention_forward) (Network *net, void *st, HookAt at, const AttentionIO *io);
	void		(*attention_backward) (Network *net, void *st, HookAt at, const AttentionIO *io);
} MethodModule;

/* The table of modules, in the order their hooks run; *count rows. */
const MethodModule *const *method_modules(int *count);

/* The modules, one file each. */
extern const MethodModule method_lora;
extern const MethodModule method_ia3;
extern const MethodModule method_bitfit;
extern const MethodModule method_bottleneck;
extern const MethodModule method_prompt;
extern const MethodModule method_prefix;

#endif
