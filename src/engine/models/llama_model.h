/*
 * llama_model.h - a LLaMA-family decoder's configuration and weights, from
 * a GGUF file (llama.cpp's layout, weights usually quantized) or from a
 * Hugging Face folder (config.json + model.safetensors, F32/F16/BF16).
 *
 * The weights are never copied: every matrix points into the file's
 * read-only mapping, in its own type, and quant.h's kernels dequantize
 * blocks as they multiply.  Only the small RMSNorm weight vectors are
 * converted to float32.  Both layouts load into the same structure; what
 * differs is recorded (rope_layout: GGUF stores q and k permuted for
 * rotation over consecutive pairs, Hugging Face rotates the two halves).
 */
#ifndef PEFT_ENGINE_LLAMA_MODEL_H
#define PEFT_ENGINE_LLAMA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "gguf.h"
#include "ops_decoder.h"
#include "safetensors.h"
#include "status.h"

/* A weight matrix [rows, cols] (PyTorch's [out, in]) in its file's type. */
typedef struct QMatrix
{
	GgmlType	type;
	int64_t		rows;
	int64_t		cols;
	const void *data;			/* into the mapping */
} QMatrix;

typedef struct LlamaLayer
{
	float	   *attn_norm;		/* [hidden] */
	QMatrix		wq;				/* [heads * head_dim, hidden] */
	QMatrix		wk;				/* [kv_heads * head_dim, hidden] */
	QMatrix		wv;				/* [kv_heads * head_dim, hidden] */
	QMatrix		wo;				/* [hidden, heads * head_dim] */
	float	   *ffn_norm;		/* [hidden] */
	QMatrix		w_gate;			/* [ffn, hidden] */
	QMatrix		w_up;			/* [ffn, hidden] */
	QMatrix		w_down;			/* [hidden, ffn] */
} LlamaLayer;

typedef struct LlamaConfig
{
	int			num_layers;
	int			hidden_size;
	int			intermediate_size;
	int			num_heads;
	int			num_kv_heads;
	int			head_dim;
	int			vocab_size;
	int			context_length;
	double		rope_base;
	double		rms_eps;
	RopeLayout	rope_layout;
	bool		tied_embeddings;	/* the output head is the embedding matrix */
} LlamaConfig;

typedef struct LlamaModel
{
	LlamaConfig cfg;
	LlamaLayer *layers;
	QMatrix		embed;			/* [vocab, hidden] */
	float	   *final_norm;		/* [hidden] */
	QMatrix		output;			/* [vocab, hidden]: embed when tied */
	char		source[8];		/* "gguf" or "hf" */
	char		quantization[16];	/* the type most matrices have: "Q4_1", "F32", "mixed" */
	char	   *chat_template;	/* Jinja text from the file, or NULL */
	char	   *path;			/* the GGUF file, or the folder */
	GgufFile   *gguf;			/* one of these two is set */
	StFile	   *st;
	int64_t		parameters;
	int64_t		file_bytes;
} LlamaModel;

/*
 * Whether path is a decoder this loader reads: a .gguf file, a folder
 * holding exactly one .gguf file, or a folder whose config.json names a
 * LLaMA-family model_type.  *gguf_path receives the GGUF file (malloc'd)
 * when there is one, else NULL.
 */
bool		llama_model_detect(const char *path, char **gguf_path);

/* Load from a GGUF file or a Hugging Face folder (llama_model_detect's path). */
PeftCode	llama_model_load(const char *path, LlamaModel **out, PeftError *err);

/* Load from an open GGUF file (taken over: closed with the model). */
PeftCode	llama_model_from_gguf(GgufFile *file, LlamaModel **out, PeftError *err);

/* Release a model (NULL allowed). */
void		llama_model_free(LlamaModel *model);

#endif
