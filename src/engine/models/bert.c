/*
 * bert.c - load a BERT-family encoder from a Hugging Face model folder.
 */
#include "bert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const linear_names[BERT_NUM_LINEAR] = {
	"query", "key", "value",
	"attention.output.dense", "intermediate.dense", "output.dense"
};

static const char *const linear_paths[BERT_NUM_LINEAR] = {
	"attention.self.query", "attention.self.key", "attention.self.value",
	"attention.output.dense", "intermediate.dense", "output.dense"
};

/* Short name of a linear, as used in target_modules. */
const char *
bert_linear_name(BertLinear which)
{
	return linear_names[which];
}

/* Module path of a linear inside layer l (without any "bert." prefix). */
void
bert_linear_path(char *buf, size_t len, int layer, BertLinear which)
{
	snprintf(buf, len, "encoder.layer.%d.%s", layer, linear_paths[which]);
}

/* Find name, or "bert." + name (checkpoints saved from BertFor* models). */
static const StTensor *
find_weight(const StFile *file, const char *name)
{
	char		prefixed[256];
	const StTensor *t = st_find(file, name);

	if (t != NULL)
		return t;
	snprintf(prefixed, sizeof(prefixed), "bert.%s", name);
	return st_find(file, prefixed);
}

/*
 * Resolve one weight of the expected shape: point into the mapping when it
 * is F32, aligned and real is float; else convert into a private copy.
 */
static PeftCode
bind_weight(BertModel *model, const char *name, int ndim, int64_t d0,
			int64_t d1, const real **out, PeftError *err)
{
	const StTensor *t = find_weight(model->file, name);
	int64_t		shape[2] = {d0, d1};
	real	   *copy;

	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "model.safetensors has no tensor \"%s\" (nor \"bert.%s\")",
						 name, name);
	if (st_expect(model->file, t->name, ndim, shape, &t, err) != PEFT_OK)
		return err ? err->code : PEFT_ERR_FORMAT;
	model->parameters += (int64_t) t->nelem;
#ifndef PEFT_DOUBLE
	if (t->dtype == ST_F32 && ((uintptr_t) t->data % sizeof(float)) == 0)
	{
		*out = (const real *) t->data;
		return PEFT_OK;
	}
#endif
	copy = malloc(t->nelem * sizeof(real));
	if (copy == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory converting \"%s\"", name);
	model->owned[model->nowned++] = copy;
	if (st_to_real(t, copy, t->nelem, err) != PEFT_OK)
		return err ? err->code : PEFT_ERR_FORMAT;
	*out = copy;
	return PEFT_OK;
}

/* Bind every weight of layer l. */
static PeftCode
bind_layer(BertModel *model, int l, PeftError *err)
{
	const ModelConfig *cfg = &model->cfg;
	BertLayer  *layer = &model->layers[l];
	int			C = cfg->hidden_size;
	int			FF = cfg->intermediate_size;
	char		path[128];
	char		name[192];
	PeftCode	rc;

	for (int w = 0; w < BERT_NUM_LINEAR; w++)
	{
		BertLinearWeights *lin = &layer->linear[w];

		lin->in = (w == BERT_OUTPUT) ? FF : C;
		lin->out = (w == BERT_INTERMEDIATE) ? FF : C;
		bert_linear_path(path, sizeof(path), l, w);
		snprintf(name, sizeof(name), "%s.weight", path);
		if ((rc = bind_weight(model, name, 2, lin->out, lin->in, &lin->weight, err)) != PEFT_OK)
			return rc;
		snprintf(name, sizeof(name), "%s.bias", path);
		if ((rc = bind_weight(model, name, 1, lin->out, 0, &lin->bias, err)) != PEFT_OK)
			return rc;
	}
	snprintf(name, sizeof(name), "encoder.layer.%d.attention.output.LayerNorm.weight", l);
	if ((rc = bind_weight(model, name, 1, C, 0, &layer->ln_attn_gamma, err)) != PEFT_OK)
		return rc;
	snprintf(name, sizeof(name), "encoder.layer.%d.attention.output.LayerNorm.bias", l);
	if ((rc = bind_weight(model, name, 1, C, 0, &layer->ln_attn_beta, err)) != PEFT_OK)
		return rc;
	snprintf(name, sizeof(name), "encoder.layer.%d.output.LayerNorm.weight", l);
	if ((rc = bind_weight(model, name, 1, C, 0, &layer->ln_out_gamma, err)) != PEFT_OK)
		return rc;
	snprintf(name, sizeof(name), "encoder.layer.%d.output.LayerNorm.bias", l);
	return bind_weight(model, name, 1, C, 0, &layer->ln_out_beta, err);
}

/* Bind the embedding tables and every layer. */
static PeftCode
bind_weights(BertModel *model, PeftError *err)
{
	const ModelConfig *cfg = &model->cfg;
	int			C = cfg->hidden_size;
	PeftCode	rc;

	/* 5 embedding tensors plus 16 per layer is the most we convert. */
	model->owned = calloc(5 + 16 * (size_t) cfg->num_layers, sizeof(real *));
	model->layers = calloc(cfg->num_layers, sizeof(BertLayer));
	if (model->owned == NULL || model->layers == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading the model");

	if ((rc = bind_weight(model, "embeddings.word_embeddings.weight", 2,
						  cfg->vocab_size, C, &model->word_embeddings, err)) != PEFT_OK ||
		(rc = bind_weight(model, "embeddings.position_embeddings.weight", 2,
						  cfg->max_position, C, &model->position_embeddings, err)) != PEFT_OK ||
		(rc = bind_weight(model, "embeddings.token_type_embeddings.weight", 2,
						  cfg->type_vocab_size, C, &model->token_type_embeddings, err)) != PEFT_OK ||
		(rc = bind_weight(model, "embeddings.LayerNorm.weight", 1, C, 0,
						  &model->ln_emb_gamma, err)) != PEFT_OK ||
		(rc = bind_weight(model, "embeddings.LayerNorm.bias", 1, C, 0,
						  &model->ln_emb_beta, err)) != PEFT_OK)
		return rc;
	for (int l = 0; l < cfg->num_layers; l++)
		if ((rc = bind_layer(model, l, err)) != PEFT_OK)
			return rc;
	return PEFT_OK;
}

/*
 * Copy each layer's query, key and value weights side by side, so the three
 * projections are one matrix product.  One copy per process, shared by
 * every network built on the model.
 */
static PeftCode
fuse_qkv(BertModel *model, PeftError *err)
{
	size_t		C = model->cfg.hidden_size;
	size_t		L = model->cfg.num_layers;

	model->qkv_weight = malloc(sizeof(real) * (L * 3 * C * C > 0 ? L * 3 * C * C : 1));
	model->qkv_bias = malloc(sizeof(real) * (L * 3 * C > 0 ? L * 3 * C : 1));
	if (model->qkv_weight == NULL || model->qkv_bias == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading the model");
	for (size_t l = 0; l < L; l++)
		for (int w = BERT_QUERY; w <= BERT_VALUE; w++)
		{
			const BertLinearWeights *lin = &model->layers[l].linear[w];

			memcpy(model->qkv_weight + (l * 3 + w) * C * C, lin->weight, sizeof(real) * C * C);
			memcpy(model->qkv_bias + (l * 3 + w) * C, lin->bias, sizeof(real) * C);
		}
	return PEFT_OK;
}

/* Load and validate a model folder (config, tokenizer, weights). */
PeftCode
bert_load(const char *dir, BertModel **out, PeftError *err)
{
	static _Atomic uint64_t last_serial = 0;
	BertModel  *model = calloc(1, sizeof(BertModel));
	TokenizerOptions topts;
	char		path[4096];
	PeftCode	rc;

	*out = NULL;
	if (model == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory loading the model");
	model->serial = ++last_serial;
	if ((rc = model_config_load(&model->cfg, dir, err)) != PEFT_OK)
		goto fail;

	topts.lowercase = model->cfg.do_lower_case;
	topts.strip_accents = model->cfg.strip_accents;
	topts.split_chinese = model->cfg.tokenize_chinese_chars;
	if ((rc = tokenizer_load_dir(dir, &topts, &model->tokenizer, err)) != PEFT_OK)
		goto fail;
	if (tokenizer_vocab_size(model->tokenizer) > model->cfg.vocab_size)
	{
		rc = peft_fail(err, PEFT_ERR_FORMAT,
					   "the vocabulary has %d tokens but config.json says vocab_size %d",
					   tokenizer_vocab_size(model->tokenizer), model->cfg.vocab_size);
		goto fail;
	}

	if (snprintf(path, sizeof(path), "%s/model.safetensors", dir) >= (int) sizeof(path))
	{
		rc = peft_fail(err, PEFT_ERR_INVALID, "model folder path is too long");
		goto fail;
	}
	if ((rc = st_open_file(path, &model->file, err)) != PEFT_OK)
		goto fail;
	model->file_bytes = model->file->size;
	if ((rc = bind_weights(model, err)) != PEFT_OK ||
		(rc = fuse_qkv(model, err)) != PEFT_OK)
		goto fail;
	snprintf(model->weights_dtype, sizeof(model->weights_dtype), "%s",
			 st_dtype_name(find_weight(model->file, "embeddings.word_embeddings.weight")->dtype));
	*out = model;
	return PEFT_OK;

fail:
	bert_free(model);
	return rc;
}

/* Free a model (NULL allowed). */
void
bert_free(BertModel *model)
{
	if (model == NULL)
		return;
	for (int i = 0; i < model->nowned; i++)
		free(model->owned[i]);
	free(model->owned);
	free(model->layers);
	free(model->qkv_weight);
	free(model->qkv_bias);
	st_close(model->file);
	tokenizer_free(model->tokenizer);
	free(model);
}
