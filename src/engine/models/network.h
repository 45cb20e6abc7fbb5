/*
 * network.h - the trainable network: a frozen BERT encoder, the adapter
 * methods of its options, and a task head on the pooled sentence embedding.
 *
 *   h0      = LayerNorm(word[ids] + pos[t] + type[0])         (dropout when training)
 *   layer l = post-LN BERT layer (encoder_block.h), whose linears, biases,
 *             sublayers and attention the methods adapt; LoRA's targeted
 *             linears compute y = x W^T + b + scaling * (dropout(x) A^T) B^T
 *   pooled  = mean over real tokens (or the first real token, [CLS]) of h_L
 *   head    = pooled Wc^T + bc: K logits (classification) or 1 value (regression)
 *
 * Each method is a module (method.h, one file each); the network calls
 * their hooks and names none of them.  Parameter names follow Hugging Face
 * PEFT's saved adapters, e.g.
 * base_model.model.encoder.layer.0.attention.self.query.lora_A.weight
 * [r, in], ...lora_B.weight [out, r]; the head is
 * base_model.model.classifier.weight [K, C] and .bias [K] (PEFT's
 * modules_to_save naming).
 */
#ifndef PEFT_ENGINE_NETWORK_H
#define PEFT_ENGINE_NETWORK_H

#include <stdbool.h>
#include <stdint.h>
#include "backend.h"
#include "bert.h"
#include "params.h"
#include "rng.h"

typedef struct LoraOptions
{
	int			r;				/* rank, >= 1 */
	double		alpha;			/* lora_alpha */
	double		dropout;		/* lora_dropout, on the adapter's input */
	bool		rslora;			/* scaling alpha/sqrt(r) instead of alpha/r */
	bool		targets[BERT_NUM_LINEAR];	/* which linears get an adapter */
} LoraOptions;

/* (IA)^3: learned vectors scaling the outputs (or, feed-forward, the inputs) of linears. */
typedef struct Ia3Options
{
	bool		targets[BERT_NUM_LINEAR];
	bool		feedforward[BERT_NUM_LINEAR];	/* scale the input (PEFT's feedforward_modules) */
} Ia3Options;

/*
 * Bottleneck adapters (Houlsby: after attention and after the feed-forward;
 * Pfeiffer: after the feed-forward only): h + up(GELU(down(h))) on the
 * sublayer's output, before the residual and LayerNorm; the up projection
 * starts at zero so a new adapter is the identity.
 */
typedef struct BottleneckOptions
{
	int			reduction;		/* hidden size / bottleneck width; 0: none */
	bool		after_attention;
	bool		after_ffn;
} BottleneckOptions;

typedef struct NetworkOptions
{
	LoraOptions lora;			/* LoRA where lora.targets says */
	bool		dora;			/* LoRA with a learned magnitude vector (PEFT's use_dora) */
	Ia3Options	ia3;
	bool		bitfit;			/* every bias of the encoder trains (BitFit) */
	BottleneckOptions bottleneck;
	int			prompt_tokens;	/* prompt tuning: virtual tokens prepended to every input; 0 none */
	int			prefix_tokens;	/* prefix tuning: key/value prefixes of every layer; 0 none */
	PeftTask	task;
	int			num_labels;		/* classes; 1 for regression; 0: no head */
	double		hidden_dropout; /* base model dropout while training */
	double		attention_dropout;
	uint64_t	seed;			/* initialisation and dropout */
	bool		inference_only; /* weights come from a stored adapter: no initialisation,
								 * no gradients or optimizer state (it cannot train) */
} NetworkOptions;

/* A batch of tokenised rows, right-padded to T. */
typedef struct Batch
{
	int			B;
	int			T;
	const int32_t *ids;			/* [B, T] */
	const int32_t *mask;		/* [B, T] 1 real token, 0 padding */
	const int32_t *labels;		/* [B] class indices (classification) */
	const real *targets;		/* [B] values (regression) */
} Batch;

typedef struct NetworkActivations NetworkActivations;

/* The parameter buffers in the backend's memory (the ParamSet's own on the CPU). */
typedef struct DeviceParams
{
	real	   *values;
	real	   *grads;
	real	   *adam_m;
	real	   *adam_v;
} DeviceParams;

/*
 * Indices into the ParamSet of one layer's trainable tensors, -1 where
 * absent.  The method modules (method.h) fill them; serialization and
 * combination (combine.c) read them.
 */
typedef struct LayerParams
{
	int			lora[BERT_NUM_LINEAR][2];	/* 0 = A [r, in], 1 = B [out, r] */
	int			dora[BERT_NUM_LINEAR];	/* magnitude [out] */
	int			ia3[BERT_NUM_LINEAR];	/* [out] or, feed-forward, [in] */
	int			bias[BERT_NUM_LINEAR];	/* BitFit [out]; q, k, v adjacent */
	int			ln_beta[2];		/* BitFit: attention and output LayerNorm biases */
	int			adapter[2][4];	/* bottleneck after attention / ffn: down W, b, up W, b */
} LayerParams;

/* Indices of the trainable tensors outside the layers, -1 where absent (as LayerParams). */
typedef struct ModelParams
{
	int			emb_ln_beta;	/* BitFit: the embeddings' LayerNorm bias */
	int			prompt;			/* prompt tuning: prompt_embeddings [V, C] */
	int			prefix;			/* prefix tuning: prompt_embeddings [V, L * 2 * C] */
} ModelParams;

/*
 * What the method modules do in one layer, gathered when the network is
 * built, so that the blocks ask no module at every step.
 */
typedef struct LayerHooks
{
	unsigned	linear[BERT_NUM_LINEAR];	/* HOOK_* bits (method.h) at each linear */
	int			bias[BERT_NUM_LINEAR];	/* trained bias replacing the model's, -1 none */
	int			norm_bias[2];	/* the same for the attention and output LayerNorms */
	bool		trains;			/* some tensor of the layer trains */
} LayerHooks;

typedef struct MethodModule MethodModule;

/* A module the network's options use, and its state. */
typedef struct ActiveMethod
{
	const MethodModule *m;
	void	   *state;
} ActiveMethod;

#define NETWORK_MAX_METHODS 16

typedef struct MergedWeights MergedWeights;
typedef struct MixedBatch MixedBatch;

typedef struct Network
{
	const BertModel *base;
	NetworkOptions opts;
	real		scaling;		/* alpha / r, or alpha / sqrt(r) */
	ParamSet	params;
	LayerParams *lp;			/* [num_layers] */
	ModelParams mp;
	int			head_weight;
	int			head_bias;
	PeftRng		rng;			/* dropout masks (drawn on the host on every backend) */

	/* the method modules of the options, in table order, and what they do where */
	ActiveMethod methods[NETWORK_MAX_METHODS];
	int			nmethods;
	LayerHooks *hooks;			/* [num_layers] */
	int			emb_norm_bias;	/* trained bias of the embeddings' LayerNorm, -1 none */
	bool		embeddings_train;	/* a tensor at the input or the embeddings trains */
	int			attention;		/* the index in methods of the one computing attention, -1 none */
	int			virtual_tokens; /* positions before every sequence's real tokens */
	int			virtual_rows;	/* of them, rows starting every packed sequence */
	NetworkActivations *act;

	/* where it computes: the CPU backend unless network_set_device says otherwise */
	Backend    *be;
	PeftPrecision precision;
	ModelWeights *weights;		/* the weights the ops read; NULL until first used */
	ModelWeights *shared_weights;	/* the backend's shared copy of the base weights */
	MergedWeights *merged;		/* network_merge's folded weights, or NULL */
	DeviceParams dp;			/* the parameters there */
	bool		dp_bound;		/* dp holds the current parameters */
	bool		dp_newer;		/* dp changed since the host copy (training on a device) */
	bool		pinned;			/* holds optimizer state: no idle release */
	uint64_t	generation;		/* the backend's, when the pointers above were made */
	bool		freeze_dora_norm;	/* tests: reuse the last forward's DoRA norms, the
									 * constant PEFT's detached norm is to finite differences */
	MixedBatch *mixed;			/* during network_forward_mixed: whose hooks run on which rows */
} Network;

/*
 * One adapter's part of a mixed batch (network_forward_mixed): net, a
 * network over the same base (network_mixable), owns sequences
 * [seq0, seq0 + nseqs) of the batch; row0 and rows are its packed rows,
 * filled in by the forward.
 */
typedef struct MixedSegment
{
	Network    *net;
	int			seq0;
	int			nseqs;
	int			row0;
	int			rows;
} MixedSegment;

/* Parse a PEFT target_modules entry list into targets (suffix match as PEFT). */
PeftCode	lora_parse_targets(bool targets[BERT_NUM_LINEAR],
							   const char *const *names, int count,
							   PeftError *err);

/* Build the network (on the CPU) and initialise it as PEFT does (A Kaiming-uniform, B zero). */
PeftCode	network_create(const BertModel *base, const NetworkOptions *opts,
						   Network **out, PeftError *err);
void		network_free(Network *net);

/*
 * Compute on another device from now on (AUTO: CUDA when available); the
 * parameters move with the network.  precision applies to CUDA products.
 */
PeftCode	network_set_device(Network *net, PeftDevice kind, PeftPrecision precision,
							   PeftError *err);

/*
 * The host copy of the parameters (params.values) is authoritative for
 * every backend until training changes them on a device: after writing
 * params.values call network_params_changed, and before reading them after
 * training call network_params_fetch.  On the CPU both are free.
 */
void		network_params_changed(Network *net);
PeftCode	network_params_fetch(Network *net, PeftError *err);

/* Keep (true) or stop keeping the optimizer state safe from idle release. */
void		network_pin(Network *net, bool pin);

/*
 * Size the activation buffers once for the largest batch a run will use
 * (B sequences of T tokens), so that its steps allocate nothing.
 */
PeftCode	network_reserve(Network *net, int B, int T, bool train, PeftError *err);
/* Bytes held for training: parameters, gradients, moments, activations (also in *activations). */
size_t		network_memory(const Network *net, size_t *activations);
/* Free the activation buffers (they grow again with the next batch). */
void		network_release_activations(Network *net);

/*
 * Fold LoRA, DoRA and (IA)^3 into private copies of the weights (and
 * biases) they touch, as PEFT's merge_and_unload: the network then runs
 * those linears as plain products.  BitFit biases, bottleneck adapters and
 * the head stay as they are.  Inference only (backward refuses).
 */
PeftCode	network_merge(Network *net, PeftError *err);

/* Zero every parameter gradient. */
PeftCode	network_zero_grads(Network *net, PeftError *err);

/*
 * Clip the gradients to max_norm by global norm (0: no clipping), then one
 * AdamW step (t 1-based) over every parameter; *grad_norm receives the
 * norm before clipping, as torch's clip_grad_norm_.
 */
PeftCode	network_optimizer_step(Network *net, double lr, double beta1, double beta2,
								   double eps, double weight_decay, int t,
								   double max_norm, double *grad_norm, PeftError *err);

/*
 * Forward a batch.  train keeps every activation for backward and applies
 * dropout.  outputs receives [B, num_labels] logits (or values).  With
 * labels/targets in the batch, *loss receives the mean loss (else 0).
 * Only the real tokens are computed (any mask pattern; a token keeps the
 * position embedding of its column t), so padding costs nothing.
 */
PeftCode	network_forward(Network *net, const Batch *batch, bool train,
							real *outputs, double *loss, PeftError *err);

/* Gradients of the last training forward's mean loss, times loss_scale, are ADDED to params.grads. */
PeftCode	network_backward(Network *net, const Batch *batch, real loss_scale,
							 PeftError *err);

/*
 * Sentence embeddings [B, C] of a batch through the network's adapters:
 * pooling and L2 normalisation as the model's sentence-transformers config
 * says.  A network with no targets and num_labels 0 is the bare model.
 */
PeftCode	network_embed(Network *net, const Batch *batch, real *embeddings,
						  PeftError *err);

/*
 * Whether member's rows can share host's forward in a mixed batch: same
 * base, same backend and precision, and not merged (a merged adapter's
 * products are not the base's).
 */
bool		network_mixable(const Network *host, const Network *member);

/*
 * Forward a batch whose sequences belong to different adapters (the
 * S-LoRA/Punica way): host, a network without methods over the base, runs
 * the base products once over every packed row, and each segment's
 * network runs its methods' hooks on its own rows (segments in sequence
 * order, covering the batch; a segment's net may be host itself: the
 * bare model).  outputs (may be NULL) receives each sequence's head
 * outputs at outputs + b * ldo, from its segment's head; embeddings (may
 * be NULL) receives [B, C] sentence embeddings as network_embed's.
 * Inference only.
 */
PeftCode	network_forward_mixed(Network *host, MixedSegment *segments, int nsegments,
								  const Batch *batch, real *outputs, int ldo,
								  real *embeddings, PeftError *err);

/*
 * Last hidden states [B, T, C], for parity tests.  The network computes
 * only the real tokens (mask 1): padded rows of hidden are zeros.
 */
PeftCode	network_hidden_states(Network *net, const Batch *batch,
								  real *hidden, PeftError *err);

#endif
