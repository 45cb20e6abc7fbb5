/*
 * network.h - the trainable network: a frozen BERT encoder, LoRA adapters on
 * chosen linear layers, and a task head on the pooled sentence embedding.
 *
 *   h0      = LayerNorm(word[ids] + pos[t] + type[0])         (dropout when training)
 *   layer l = post-LN BERT layer whose targeted linears compute
 *             y = x W^T + b + scaling * (dropout(x) A^T) B^T
 *   pooled  = mean over real tokens (or the first real token, [CLS]) of h_L
 *   head    = pooled Wc^T + bc: K logits (classification) or 1 value (regression)
 *
 * Parameter names follow Hugging Face PEFT's saved adapters, e.g.
 * base_model.model.encoder.layer.0.attention.self.query.lora_A.weight
 * [r, in], ...lora_B.weight [out, r]; the head is
 * base_model.model.classifier.weight [K, C] and .bias [K] (PEFT's
 * modules_to_save naming).
 */
#ifndef PEFT_ENGINE_NETWORK_H
#define PEFT_ENGINE_NETWORK_H

#include <stdbool.h>
#include <stdint.h>
#include "bert.h"
#include "params.h"
#include "rng.h"

typedef enum TaskKind
{
	TASK_CLASSIFICATION,
	TASK_REGRESSION
} TaskKind;

typedef struct LoraOptions
{
	int			r;				/* rank, >= 1 */
	double		alpha;			/* lora_alpha */
	double		dropout;		/* lora_dropout, on the adapter's input */
	bool		rslora;			/* scaling alpha/sqrt(r) instead of alpha/r */
	bool		targets[BERT_NUM_LINEAR];	/* which linears get an adapter */
} LoraOptions;

typedef struct NetworkOptions
{
	LoraOptions lora;
	TaskKind	task;
	int			num_labels;		/* classes; 1 for regression; 0: no head */
	double		hidden_dropout; /* base model dropout while training */
	double		attention_dropout;
	uint64_t	seed;			/* initialisation and dropout */
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

typedef struct Network
{
	const BertModel *base;
	NetworkOptions opts;
	real		scaling;		/* alpha / r, or alpha / sqrt(r) */
	ParamSet	params;
	/* parameter indices: lora[layer][linear][0 = A, 1 = B], -1 if absent */
	int			(*lora)[BERT_NUM_LINEAR][2];
	int			head_weight;
	int			head_bias;
	PeftRng		rng;			/* dropout masks */
	NetworkActivations *act;
} Network;

/* Parse a PEFT target_modules entry list into targets (suffix match as PEFT). */
PeftCode	lora_parse_targets(bool targets[BERT_NUM_LINEAR],
							   const char *const *names, int count,
							   PeftError *err);

/* Build the network and initialise it as PEFT does (A Kaiming-uniform, B zero). */
PeftCode	network_create(const BertModel *base, const NetworkOptions *opts,
						   Network **out, PeftError *err);
void		network_free(Network *net);

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
 * Last hidden states [B, T, C], for parity tests.  The network computes
 * only the real tokens (mask 1): padded rows of hidden are zeros.
 */
PeftCode	network_hidden_states(Network *net, const Batch *batch,
								  real *hidden, PeftError *err);

#endif
