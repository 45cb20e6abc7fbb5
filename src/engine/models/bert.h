/*
 * bert.h - a frozen BERT-family encoder loaded from a Hugging Face folder.
 *
 * The weights stay in the read-only mapping of model.safetensors when they
 * are F32 and aligned (every process on the host then shares one copy
 * through the page cache); F16/BF16 files, or double-precision test builds,
 * get a converted private copy.  Tensor names are accepted with or without
 * the "bert." prefix.  The model code lives here alone so that other
 * architectures (a LLaMA-style decoder) can sit beside it later.
 */
#ifndef PEFT_ENGINE_BERT_H
#define PEFT_ENGINE_BERT_H

#include <stdint.h>
#include "model_config.h"
#include "real.h"
#include "safetensors.h"
#include "status.h"
#include "tokenizer.h"

/* The linear layers of one encoder layer that adapters can target. */
typedef enum BertLinear
{
	BERT_QUERY,
	BERT_KEY,
	BERT_VALUE,
	BERT_ATTN_OUT,				/* attention.output.dense */
	BERT_INTERMEDIATE,			/* intermediate.dense */
	BERT_OUTPUT,				/* output.dense */
	BERT_NUM_LINEAR
} BertLinear;

typedef struct BertLinearWeights
{
	const real *weight;			/* [out, in] */
	const real *bias;			/* [out] */
	int			in;
	int			out;
} BertLinearWeights;

typedef struct BertLayer
{
	BertLinearWeights linear[BERT_NUM_LINEAR];
	const real *ln_attn_gamma;	/* attention.output.LayerNorm [C] */
	const real *ln_attn_beta;
	const real *ln_out_gamma;	/* output.LayerNorm [C] */
	const real *ln_out_beta;
} BertLayer;

typedef struct BertModel
{
	ModelConfig cfg;
	Tokenizer  *tokenizer;
	StFile	   *file;			/* the mapping the weights point into */
	real	  **owned;			/* converted copies, when not zero-copy */
	int			nowned;
	const real *word_embeddings;	/* [V, C] */
	const real *position_embeddings;	/* [P, C] */
	const real *token_type_embeddings;	/* [types, C] */
	const real *ln_emb_gamma;	/* embeddings.LayerNorm */
	const real *ln_emb_beta;
	BertLayer  *layers;			/* [num_layers] */
	real	   *qkv_weight;		/* [L, 3C, C] query | key | value side by side */
	real	   *qkv_bias;		/* [L, 3C]: one product per layer instead of three */
	int64_t		parameters;		/* count of the weights used */
	size_t		file_bytes;		/* size of model.safetensors */
	char		weights_dtype[8];	/* dtype of the file, e.g. "F32" */
	uint64_t	serial;			/* unique in the process: names it in device caches */
} BertModel;

/* Module path of a linear inside layer l, e.g. "encoder.layer.3.attention.self.query". */
void		bert_linear_path(char *buf, size_t len, int layer, BertLinear which);
/* Short name of a linear, e.g. "query", "attention.output.dense". */
const char *bert_linear_name(BertLinear which);

/* Load and validate a model folder (config, tokenizer, weights). */
PeftCode	bert_load(const char *dir, BertModel **out, PeftError *err);
/* Free a model (NULL allowed). */
void		bert_free(BertModel *model);

#endif
