/*
 * engine_session.c - the engine's services behind engine_api.h: models,
 * adapters, embedding, prediction and training runs as opaque handles, so
 * the PostgreSQL side never sees engine internals.
 */
#define _GNU_SOURCE				/* qsort_r */
#include "engine_session.h"
#include "train_config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_io.h"
#include "combine.h"
#include "decoder_training.h"
#include "engine_decoder.h"
#include "generate_stream.h"
#include "safetensors.h"
#include "bert.h"
#include "dataset.h"
#include "method_table.h"
#include "network.h"
#include "trainer.h"

/* Rows per forward pass when embedding or predicting many texts, unless configured. */
#define INFERENCE_BATCH 32
/* The most rows per forward pass (as batch_size's range). */
#define MAX_INFERENCE_BATCH 4096

/* Where embed and predict compute in this process, and in batches of how many (session_configure). */
static PeftDevice inference_device = PEFT_DEVICE_CPU;
static PeftPrecision inference_precision = PEFT_PRECISION_FP32;
static int	inference_batch = INFERENCE_BATCH;

/* Tokens embed and predict computed since profile_start (benchmarks). */
static int64_t inference_tokens;

struct PeftModelHandle
{
	BertModel  *bert;			/* an encoder, or */
	DecoderHandle *decoder;		/* a decoder (generate, tokenize, logits) */
	Network    *bare;			/* no adapter, no head: plain embeddings */
};

/* ERROR unless model is an encoder: embeddings, predictions, adapters and training need one. */
static PeftCode
require_encoder(const PeftModelHandle *model, const char *what, PeftError *err)
{
	if (model->bert != NULL)
		return PEFT_OK;
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "%s needs an encoder model; this model is a decoder (text generation and "
					 "its adapters: peft_generate)", what);
}

/* ERROR unless model is a decoder. */
static PeftCode
require_decoder(const PeftModelHandle *model, const char *what, PeftError *err)
{
	if (model->decoder != NULL)
		return PEFT_OK;
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "%s needs a decoder model (a LLaMA-family GGUF file or folder); this model is "
					 "an encoder (%s)", what, model->bert->cfg.model_type);
}

struct PeftAdapterHandle
{
	PeftModelHandle *model;
	Network    *net;			/* over an encoder, or */
	DecoderAdapter *dad;		/* over a decoder */
	LlamaModel *merged;			/* dad folded into the decoder's weights (adapter_merge), or NULL */
};

/* Tokens per training row when max_length is not given (capped by the model). */
#define DEFAULT_MAX_LENGTH 128

struct PeftTrainJob
{
	PeftModelHandle *model;
	PeftTrainConfig config;
	NetworkOptions options;
	Dataset		data;
	uint32_t   *train_rows;
	size_t		ntrain;
	uint32_t   *valid_rows;
	size_t		nvalid;
	Network    *net;
	Trainer    *trainer;
	DecoderTrainJob *dec;		/* a decoder's run: every entrance hands over to it */
};

/* Device, precision, idle release and batch size of later embed/predict calls. */
void
session_configure(const PeftEngineSettings *s)
{
	inference_device = s->device;
	inference_precision = s->precision;
	inference_batch = s->batch_size < 1 ? INFERENCE_BATCH :
		s->batch_size > MAX_INFERENCE_BATCH ? MAX_INFERENCE_BATCH : s->batch_size;
	backend_set_idle_release(s->idle_release_seconds);
}

/* Move an inference network to the configured device (free when already there). */
static PeftCode
use_inference_device(Network *net, PeftError *err)
{
	return network_set_device(net, inference_device, inference_precision, err);
}

/* Load and validate a model folder. */
PeftCode
session_model_open(const char *dir, PeftModelHandle **out, PeftModelInfo *info,
				   PeftError *err)
{
	PeftModelHandle *m = calloc(1, sizeof(PeftModelHandle));
	const ModelConfig *cfg;
	PeftCode	rc;

	*out = NULL;
	if (m == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory opening a model");
	if (decoder_handle_detect(dir))
	{
		if ((rc = decoder_handle_open(dir, &m->decoder, info, err)) != PEFT_OK)
		{
			free(m);
			return rc;
		}
		*out = m;
		return PEFT_OK;
	}
	if ((rc = bert_load(dir, &m->bert, err)) != PEFT_OK)
	{
		free(m);
		return rc;
	}
	cfg = &m->bert->cfg;
	if (info)
	{
		memset(info, 0, sizeof(*info));
		snprintf(info->architecture, sizeof(info->architecture), "%s", cfg->model_type);
		snprintf(info->weights_dtype, sizeof(info->weights_dtype), "%s", m->bert->weights_dtype);
		snprintf(info->pooling, sizeof(info->pooling), "%s",
				 cfg->pooling == POOLING_CLS ? "cls" : "mean");
		info->normalize = cfg->normalize;
		info->hidden_size = cfg->hidden_size;
		info->num_layers = cfg->num_layers;
		info->num_heads = cfg->num_heads;
		info->intermediate_size = cfg->intermediate_size;
		info->vocab_size = cfg->vocab_size;
		info->max_position = cfg->max_position;
		info->max_seq_length = cfg->max_seq_length;
		info->parameters = m->bert->parameters;
		info->file_bytes = (int64_t) m->bert->file_bytes;
		snprintf(info->source, sizeof(info->source), "hf");
		snprintf(info->weights_file, sizeof(info->weights_file), "%s/model.safetensors", dir);
	}
	*out = m;
	return PEFT_OK;
}

/* Release a model (NULL allowed); its adapters must be closed first. */
void
session_model_close(PeftModelHandle *model)
{
	if (model == NULL)
		return;
	network_free(model->bare);
	bert_free(model->bert);
	decoder_handle_close(model->decoder);
	free(model);
}

/*
 * The network of an adapter's config and weights over model, with a head
 * of num_labels outputs for task: every name, shape and value checked.
 */
static PeftCode
adapter_network(PeftModelHandle *model, const char *config, size_t config_len,
				const uint8_t *weights, size_t weights_len, PeftTask task, int num_labels,
				Network **out, PeftError *err)
{
	NetworkOptions opts = {0};
	PeftCode	rc;

	*out = NULL;
	if ((rc = adapter_options_from_config(config, config_len, &opts, err)) != PEFT_OK)
		return rc;
	opts.task = task;
	opts.num_labels = num_labels;
	opts.inference_only = true;	/* opened adapters only compute; training builds its own */
	if ((rc = network_create(model->bert, &opts, out, err)) != PEFT_OK)
		return rc;
	if ((rc = adapter_load_weights(*out, weights, weights_len, err)) != PEFT_OK)
	{
		network_free(*out);
		*out = NULL;
	}
	return rc;
}

/* Build an adapter from its config text and validated weights. */
PeftCode
session_adapter_open(PeftModelHandle *model, const char *config, size_t config_len,
					 const uint8_t *weights, size_t weights_len, PeftTask task,
					 int num_labels, PeftAdapterHandle **out, PeftError *err)
{
	PeftAdapterHandle *a;
	PeftCode	rc;

	*out = NULL;
	a = calloc(1, sizeof(PeftAdapterHandle));
	if (a == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory opening an adapter");
	a->model = model;
	if (model->decoder != NULL)
	{
		if ((rc = dadapter_open(model->decoder, config, config_len, weights, weights_len, &a->dad,
								err)) != PEFT_OK)
		{
			session_adapter_close(a);
			return rc;
		}
		*out = a;
		return PEFT_OK;
	}
	if ((rc = adapter_network(model, config, config_len, weights, weights_len,
							  task == PEFT_TASK_REGRESSION ? PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION,
							  num_labels, &a->net, err)) != PEFT_OK)
	{
		session_adapter_close(a);
		return rc;
	}
	*out = a;
	return PEFT_OK;
}

/* Rows of the classifier head in adapter weights (0: none), without validating the rest. */
static PeftCode
head_rows(const uint8_t *weights, size_t len, int *rows, PeftError *err)
{
	StFile	   *file;
	PeftCode	rc;

	*rows = 0;
	if ((rc = st_open_buffer(weights, len, &file, err)) != PEFT_OK)
		return rc;
	for (int i = 0; i < file->ntensors; i++)
		if (strcmp(file->tensors[i].name, "base_model.model.classifier.weight") == 0 ||
			strcmp(file->tensors[i].name, "base_model.classifier.weight") == 0)
		{
			if (file->tensors[i].ndim != 2 || file->tensors[i].shape[0] < 1 ||
				file->tensors[i].shape[0] > 100000)
				rc = peft_fail(err, PEFT_ERR_FORMAT, "the classifier weight has a bad shape");
			else
				*rows = (int) file->tensors[i].shape[0];
		}
	st_close(file);
	return rc;
}

/* A network of config and weights over model, the head's size taken from the weights. */
static PeftCode
network_from_bytes(PeftModelHandle *model, const char *config, size_t config_len,
				   const uint8_t *weights, size_t weights_len, Network **out, PeftError *err)
{
	int			rows;
	PeftCode	rc;

	*out = NULL;
	if ((rc = head_rows(weights, weights_len, &rows, err)) != PEFT_OK)
		return rc;
	return adapter_network(model, config, config_len, weights, weights_len,
						   rows == 1 ? PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION, rows, out, err);
}

/* Validate an adapter completely and describe it. */
PeftCode
session_adapter_inspect(PeftModelHandle *model, const char *config, size_t config_len,
						const uint8_t *weights, size_t weights_len, PeftAdapterInfo *info,
						PeftError *err)
{
	Network    *net;
	PeftCode	rc;

	memset(info, 0, sizeof(*info));
	if (model->decoder != NULL)
	{
		DecoderAdapter *ad;

		if ((rc = dadapter_open(model->decoder, config, config_len, weights, weights_len, &ad,
								err)) != PEFT_OK)
			return rc;
		snprintf(info->method, sizeof(info->method), "%s", decoder_adapter_method_name(ad->o.method));
		info->parameters = (int64_t) ad->params.total;
		info->rank = ad->o.r;	/* 0 but for LoRA and DoRA */
		info->decoder = true;
		decoder_adapter_free(ad);
		return PEFT_OK;
	}
	if ((rc = network_from_bytes(model, config, config_len, weights, weights_len, &net, err)) != PEFT_OK)
		return rc;
	adapter_method_name(&net->opts, info->method, sizeof(info->method));
	info->num_labels = net->opts.num_labels;
	info->parameters = (int64_t) net->params.total;
	for (int w = 0; w < BERT_NUM_LINEAR; w++)
		if (net->opts.lora.targets[w])
			info->rank = net->opts.lora.r;
	network_free(net);
	return PEFT_OK;
}

/* Fold LoRA, DoRA and (IA)^3 into the adapter's weights. */
PeftCode
session_adapter_merge(PeftAdapterHandle *adapter, PeftError *err)
{
	if (adapter->dad != NULL)
		return adapter->merged ? PEFT_OK : decoder_adapter_merge(adapter->dad, &adapter->merged, err);
	return network_merge(adapter->net, err);
}

/* A weighted combination of LoRA adapters (PEFT's add_weighted_adapter). */
PeftCode
session_adapter_combine(PeftModelHandle *model, int n, const char *const *configs,
						const size_t *config_lens, const uint8_t *const *weights,
						const size_t *weights_lens, const double *factors,
						const char *combination, const char *base_model,
						uint8_t **out_weights, size_t *out_weights_len, char **out_config,
						PeftError *err)
{
	Network   **src;
	Network    *net = NULL;
	bool		cat;
	PeftCode	rc = PEFT_OK;

	*out_weights = NULL;
	*out_config = NULL;
	if ((rc = require_encoder(model, "combining adapters", err)) != PEFT_OK)
		return rc;
	if (strcmp(combination, "linear") != 0 && strcmp(combination, "cat") != 0)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "combination \"%s\" is not supported (linear or cat)", combination);
	cat = strcmp(combination, "cat") == 0;
	if (n < 1 || n > 64)
		return peft_fail(err, PEFT_ERR_INVALID, "combine between 1 and 64 adapters, not %d", n);
	src = calloc(n, sizeof(Network *));
	if (src == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory combining adapters");
	for (int i = 0; i < n && rc == PEFT_OK; i++)
		rc = network_from_bytes(model, configs[i], config_lens[i], weights[i], weights_lens[i],
								&src[i], err);
	if (rc == PEFT_OK)
		rc = combine_lora(model->bert, src, n, factors, cat, &net, err);
	if (rc == PEFT_OK && (rc = adapter_serialize(net, out_weights, out_weights_len, err)) == PEFT_OK)
		rc = adapter_config_json(net, base_model, out_config, err);
	if (rc != PEFT_OK)
	{
		free(*out_weights);
		*out_weights = NULL;
	}
	network_free(net);
	for (int i = 0; i < n; i++)
		network_free(src[i]);
	free(src);
	return rc;
}

/* Release an adapter (NULL allowed). */
void
session_adapter_close(PeftAdapterHandle *adapter)
{
	if (adapter == NULL)
		return;
	network_free(adapter->net);
	if (adapter->dad)
		decoder_adapter_merged_free(adapter->merged, adapter->dad->base);
	decoder_adapter_free(adapter->dad);
	free(adapter);
}

/* Bytes an open adapter holds: parameters and activations (network_memory); not the base. */
size_t
session_adapter_memory(PeftAdapterHandle *adapter)
{
	size_t		activations;

	if (adapter->net != NULL)
		return network_memory(adapter->net, &activations);
	return adapter->dad->params.total * sizeof(float) * 4;
}

/* Tokenise texts[0 .. n) into ds (emptied first), counting their tokens. */
static PeftCode
tokenize_rows(const BertModel *bert, const char *const *texts, const size_t *lengths,
			  int n, int max_length, Dataset *ds, PeftError *err)
{
	PeftCode	rc;

	ds->ntokens = ds->count = 0;
	for (int i = 0; i < n; i++)
	{
		if ((rc = dataset_add(ds, bert->tokenizer, texts[i], lengths[i], max_length, 0, 0,
							  err)) != PEFT_OK)
			return rc;
		inference_tokens += ds->rows[i].length;
	}
	return PEFT_OK;
}

/* The sequence length limit: the request's, capped by the model. */
static int
effective_max_length(const BertModel *bert, int max_length)
{
	int			limit = bert->cfg.max_position;

	if (max_length <= 0)
		max_length = bert->cfg.max_seq_length > 0 ? bert->cfg.max_seq_length : limit;
	return max_length < limit ? max_length : limit;
}

/* The network embed computes with: the adapter's, or the model's bare one (made on first use). */
static PeftCode
embedding_network(PeftModelHandle *model, PeftAdapterHandle *adapter, Network **net,
				  PeftError *err)
{
	PeftCode	rc;

	if (adapter != NULL)
		*net = adapter->net;
	else
	{
		if (model->bare == NULL)
		{
			NetworkOptions opts = {0};

			if ((rc = network_create(model->bert, &opts, &model->bare, err)) != PEFT_OK)
				return rc;
		}
		*net = model->bare;
	}
	return use_inference_device(*net, err);
}

/* qsort_r comparator of row indices: longer rows first, then input order. */
static int
longer_first(const void *a, const void *b, void *data)
{
	const Dataset *ds = data;
	uint32_t	ia = *(const uint32_t *) a;
	uint32_t	ib = *(const uint32_t *) b;
	int32_t		la = ds->rows[ia].length;
	int32_t		lb = ds->rows[ib].length;

	if (la != lb)
		return la > lb ? -1 : 1;
	return (ia > ib) - (ia < ib);
}

/*
 * Embed the tokenised rows of ds into out (input order), in batches of
 * rows of similar length, longest first (as sentence-transformers'
 * encode): less padding, and the largest buffers are made first.
 */
static PeftCode
embed_sorted(Network *net, const Dataset *ds, float *out, PeftError *err)
{
	int			n = (int) ds->count;
	int			C = net->base->cfg.hidden_size;
	uint32_t   *order = malloc(sizeof(uint32_t) * (n > 0 ? n : 1));
	float	   *rows = malloc(sizeof(float) * (size_t) inference_batch * C);
	BatchBuffer buf = {0};
	PeftCode	rc = PEFT_OK;

	if (order == NULL || rows == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for embeddings");
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		order[i] = (uint32_t) i;
	if (rc == PEFT_OK)
		qsort_r(order, n, sizeof(uint32_t), longer_first, (void *) ds);
	for (int first = 0; rc == PEFT_OK && first < n; first += inference_batch)
	{
		int			count = n - first < inference_batch ? n - first : inference_batch;
		Batch		batch;

		if ((rc = dataset_make_batch(ds, order + first, count, &buf, &batch, err)) != PEFT_OK ||
			(rc = network_embed(net, &batch, rows, err)) != PEFT_OK)
			break;
		for (int i = 0; i < count; i++)
			memcpy(out + (size_t) order[first + i] * C, rows + (size_t) i * C, sizeof(float) * C);
	}
	batch_buffer_free(&buf);
	free(rows);
	free(order);
	return rc;
}

/*
 * Below this an embedding component becomes 0: sqrt(FLT_MIN), so the
 * product of any two components is 0 exactly or a normal float.  Sentence
 * embeddings of all-MiniLM-L6-v2 have components near 1e-33 in the same
 * dimensions, and SQL multiplying two vectors as real failed with "value
 * out of range: underflow" (PostgreSQL refuses a float4 product that
 * rounds to 0); no kept component changes.
 */
#define EMBED_FLUSH_BELOW 1.0842022e-19f

/* Components below EMBED_FLUSH_BELOW in magnitude become 0. */
static void
flush_tiny(float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fabsf(x[i]) < EMBED_FLUSH_BELOW)
			x[i] = 0.0f;
}

/* Sentence embeddings of texts, through adapter when given. */
PeftCode
session_embed(PeftModelHandle *model, PeftAdapterHandle *adapter,
			  const char *const *texts, const size_t *lengths, int n,
			  int max_length, float *out, PeftError *err)
{
	Network    *net;
	Dataset		ds = {0};
	PeftCode	rc;

	if ((rc = require_encoder(model, "peft_embed", err)) != PEFT_OK ||
		(rc = embedding_network(model, adapter, &net, err)) != PEFT_OK)
		return rc;
	max_length = effective_max_length(model->bert, max_length);
	if ((rc = tokenize_rows(model->bert, texts, lengths, n, max_length, &ds, err)) == PEFT_OK)
		rc = embed_sorted(net, &ds, out, err);
	dataset_free(&ds);
	if (rc == PEFT_OK)
		flush_tiny(out, (size_t) n * model->bert->cfg.hidden_size);
	return rc;
}

/* Each of count rows of K logits in z becomes class probabilities (softmax). */
static void
softmax_rows(float *z, int count, int K)
{
	for (int i = 0; i < count; i++)
	{
		float	   *row = z + (size_t) i * K;
		float		top = row[0];
		double		sum = 0;

		for (int k = 1; k < K; k++)
			top = row[k] > top ? row[k] : top;
		for (int k = 0; k < K; k++)
			sum += (row[k] = expf(row[k] - top));
		for (int k = 0; k < K; k++)
			row[k] = (float) (row[k] / sum);
	}
}

/* Head outputs of texts: class probabilities, or the regression value. */
PeftCode
session_predict(PeftAdapterHandle *adapter, const char *const *texts,
				const size_t *lengths, int n, int max_length, float *out,
				PeftError *err)
{
	Network    *net = adapter->net;
	const BertModel *bert = adapter->model->bert;
	int			K;
	uint32_t   *idx;
	Dataset		ds = {0};
	BatchBuffer buf = {0};
	PeftCode	rc = PEFT_OK;

	if (net == NULL)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "peft_predict needs an adapter over an encoder; this one is over a decoder "
						 "(peft_generate with adapter => ...)");
	K = net->opts.num_labels;
	idx = malloc(sizeof(uint32_t) * inference_batch);
	if (K < 1)
		rc = peft_fail(err, PEFT_ERR_INVALID, "this adapter has no prediction head");
	else if (idx == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a batch");
	else
		rc = use_inference_device(net, err);
	max_length = effective_max_length(bert, max_length);
	for (int i = 0; rc == PEFT_OK && i < inference_batch; i++)
		idx[i] = (uint32_t) i;
	for (int first = 0; first < n && rc == PEFT_OK; first += inference_batch)
	{
		int			count = n - first < inference_batch ? n - first : inference_batch;
		float	   *z = out + (size_t) first * K;
		Batch		batch;

		if ((rc = tokenize_rows(bert, texts + first, lengths + first, count, max_length,
								&ds, err)) != PEFT_OK ||
			(rc = dataset_make_batch(&ds, idx, count, &buf, &batch, err)) != PEFT_OK ||
			(rc = network_forward(net, &batch, false, z, NULL, err)) != PEFT_OK)
			break;
		if (net->opts.task == PEFT_TASK_CLASSIFICATION)
			softmax_rows(z, count, K);
	}
	free(idx);
	batch_buffer_free(&buf);
	dataset_free(&ds);
	return rc;
}

/* ---- mixed-adapter batches ------------------------------------------------ */

/* A request's rows of many adapters: which adapter each row uses, and their tokens. */
typedef struct MixedRows
{
	PeftModelHandle *model;
	PeftAdapterHandle *const *adapters;	/* [n], NULL: the bare model */
	int			n;
	int		   *group;			/* [n] the first row with the same adapter */
	bool	   *shared;			/* [n] its adapter can share the base's forward */
	Dataset		ds;				/* row i = text i */
	Network    *host;			/* the bare network the shared products run in */
	bool		predict;		/* head outputs (else embeddings) */
	float	   *out;			/* predict: row i at out + i * ldo; embed: [n, C] */
	int			ldo;
} MixedRows;

/*
 * qsort_r comparator of row indices: rows that share the base's forward
 * first, then by adapter group (first appearance), then input order.
 */
static int
by_group(const void *a, const void *b, void *data)
{
	const MixedRows *mr = data;
	uint32_t	ia = *(const uint32_t *) a;
	uint32_t	ib = *(const uint32_t *) b;

	if (mr->shared[ia] != mr->shared[ib])
		return mr->shared[ia] ? -1 : 1;
	if (mr->group[ia] != mr->group[ib])
		return mr->group[ia] < mr->group[ib] ? -1 : 1;
	return (ia > ib) - (ia < ib);
}

/* The network row i computes through: its adapter's, or the bare model's. */
static Network *
row_network(const MixedRows *mr, uint32_t i)
{
	return mr->adapters[i] ? mr->adapters[i]->net : mr->host;
}

/*
 * Check every row's adapter (over this model, an encoder's, with a head
 * when predicting), move each to the inference device, and group the
 * rows; then tokenise them (each truncated at its adapter's max_length).
 */
static PeftCode
mixed_prepare(MixedRows *mr, const char *const *texts, const size_t *lengths,
			  const int *max_lengths, PeftError *err)
{
	const BertModel *bert = mr->model->bert;
	PeftCode	rc;

	if ((rc = require_encoder(mr->model, mr->predict ? "peft_predict" : "peft_embed", err)) != PEFT_OK ||
		(rc = embedding_network(mr->model, NULL, &mr->host, err)) != PEFT_OK)
		return rc;
	for (int i = 0; i < mr->n; i++)
	{
		PeftAdapterHandle *a = mr->adapters[i];

		mr->group[i] = i;
		for (int j = 0; j < i; j++)
			if (mr->adapters[j] == a)
			{
				mr->group[i] = mr->group[j];
				break;
			}
		if (mr->group[i] != i)
			continue;			/* checked at its first row */
		if (a == NULL && mr->predict)
			return peft_fail(err, PEFT_ERR_INVALID, "row %d has no adapter: prediction needs one", i + 1);
		if (a != NULL && a->model != mr->model)
			return peft_fail(err, PEFT_ERR_INVALID, "row %d's adapter is over another model", i + 1);
		if (a != NULL && a->net == NULL)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "row %d's adapter is over a decoder (peft_generate)", i + 1);
		if (a != NULL && mr->predict &&
			(a->net->opts.num_labels < 1 || a->net->opts.num_labels > mr->ldo))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "row %d's adapter has no prediction head, or one wider than %d",
							 i + 1, mr->ldo);
		if (a != NULL && (rc = use_inference_device(a->net, err)) != PEFT_OK)
			return rc;
	}
	for (int i = 0; i < mr->n; i++)
	{
		if ((rc = dataset_add(&mr->ds, bert->tokenizer, texts[i], lengths[i],
							  effective_max_length(bert, max_lengths ? max_lengths[i] : 0), 0, 0,
							  err)) != PEFT_OK)
			return rc;
		inference_tokens += mr->ds.rows[i].length;
	}
	return PEFT_OK;
}

/* Copy a batch's results (rows idx[0 .. count)) to the rows they belong to. */
static void
mixed_scatter(MixedRows *mr, const uint32_t *idx, int count, const float *res)
{
	int			C = mr->model->bert->cfg.hidden_size;

	for (int i = 0; i < count; i++)
	{
		if (!mr->predict)
		{
			memcpy(mr->out + (size_t) idx[i] * C, res + (size_t) i * C, sizeof(float) * C);
			continue;
		}
		{
			Network    *net = row_network(mr, idx[i]);
			float	   *row = mr->out + (size_t) idx[i] * mr->ldo;

			memcpy(row, res + (size_t) i * mr->ldo, sizeof(float) * net->opts.num_labels);
			if (net->opts.task == PEFT_TASK_CLASSIFICATION)
				softmax_rows(row, 1, net->opts.num_labels);
		}
	}
}

/*
 * One batch of rows idx[0 .. count): one shared forward when every row's
 * network is mixable (segments of equal adapters in a row), else (one
 * adapter's rows) that adapter's own forward.  res holds count results.
 */
static PeftCode
mixed_batch(MixedRows *mr, const uint32_t *idx, int count, bool shared, BatchBuffer *buf,
			MixedSegment *segs, float *res, PeftError *err)
{
	Batch		batch;
	int			nseg = 0;
	Network    *net = row_network(mr, idx[0]);
	PeftCode	rc;

	if ((rc = dataset_make_batch(&mr->ds, idx, count, buf, &batch, err)) != PEFT_OK)
		return rc;
	if (!shared && mr->predict)
		rc = network_forward(net, &batch, false, res, NULL, err);
	else if (!shared)
		rc = network_embed(net, &batch, res, err);
	else
	{
		for (int i = 0; i < count; i++)
		{
			if (nseg > 0 && segs[nseg - 1].net == row_network(mr, idx[i]))
			{
				segs[nseg - 1].nseqs++;
				continue;
			}
			segs[nseg++] = (MixedSegment) {row_network(mr, idx[i]), i, 1, 0, 0};
		}
		rc = network_forward_mixed(mr->host, segs, nseg, &batch, mr->predict ? res : NULL,
								   mr->ldo, mr->predict ? NULL : res, err);
	}
	if (rc == PEFT_OK && !shared && mr->predict && mr->ldo != net->opts.num_labels)
	{
		/* network_forward packs K per row: spread them to ldo apart, from the last row down */
		int			K = net->opts.num_labels;

		for (int i = count - 1; i >= 0; i--)
			memmove(res + (size_t) i * mr->ldo, res + (size_t) i * K, sizeof(float) * K);
	}
	if (rc == PEFT_OK)
		mixed_scatter(mr, idx, count, res);
	return rc;
}

/*
 * Compute every row: rows sorted by adapter, mixable adapters first; their
 * rows in shared batches of up to inference_batch rows (many adapters
 * each), every other adapter's rows in batches of their own.
 */
static PeftCode
mixed_run(MixedRows *mr, PeftError *err)
{
	int			n = mr->n;
	int			width = mr->predict ? mr->ldo : mr->model->bert->cfg.hidden_size;
	uint32_t   *order = malloc(sizeof(uint32_t) * n);
	uint32_t   *idx = malloc(sizeof(uint32_t) * inference_batch);
	MixedSegment *segs = malloc(sizeof(MixedSegment) * inference_batch);
	float	   *res = malloc(sizeof(float) * (size_t) inference_batch * width);
	BatchBuffer buf = {0};
	PeftCode	rc = PEFT_OK;

	if (order == NULL || idx == NULL || segs == NULL || res == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a mixed batch");
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		order[i] = (uint32_t) i;
	if (rc == PEFT_OK)
		qsort_r(order, n, sizeof(uint32_t), by_group, mr);
	for (int start = 0; rc == PEFT_OK && start < n;)
	{
		bool		shared = mr->shared[order[start]];
		int			count = 0;

		idx[count++] = order[start++];
		while (start < n && count < inference_batch &&
			   (shared ? mr->shared[order[start]] : mr->group[order[start]] == mr->group[idx[0]]))
			idx[count++] = order[start++];
		rc = mixed_batch(mr, idx, count, shared, &buf, segs, res, err);
	}
	free(order);
	free(idx);
	free(segs);
	free(res);
	batch_buffer_free(&buf);
	return rc;
}

/* The work of predict_mixed and embed_mixed: check, tokenise, compute, free. */
static PeftCode
mixed_compute(MixedRows *mr, const char *const *texts, const size_t *lengths,
			  const int *max_lengths, PeftError *err)
{
	PeftCode	rc = PEFT_OK;

	if (mr->n < 0 || (mr->predict && mr->ldo < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "bad row count %d or output width %d",
						 mr->n, mr->ldo);
	if (mr->n == 0)
		return PEFT_OK;
	mr->group = malloc(sizeof(int) * mr->n);
	mr->shared = malloc(sizeof(bool) * mr->n);
	if (mr->group == NULL || mr->shared == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a mixed batch");
	if (rc == PEFT_OK)
		rc = mixed_prepare(mr, texts, lengths, max_lengths, err);
	for (int i = 0; rc == PEFT_OK && i < mr->n; i++)
		mr->shared[i] = network_mixable(mr->host, row_network(mr, (uint32_t) i));
	if (rc == PEFT_OK)
		rc = mixed_run(mr, err);
	free(mr->group);
	free(mr->shared);
	dataset_free(&mr->ds);
	return rc;
}

/* Head outputs of rows of many adapters over one model (engine_api.h). */
PeftCode
session_predict_mixed(PeftAdapterHandle *const *adapters, const char *const *texts,
					  const size_t *lengths, const int *max_lengths, int n, float *out,
					  int ldo, PeftError *err)
{
	MixedRows	mr = {0};

	if (n > 0 && adapters[0] == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "row 1 has no adapter: prediction needs one");
	mr.model = n > 0 ? adapters[0]->model : NULL;
	mr.adapters = adapters;
	mr.n = n;
	mr.predict = true;
	mr.out = out;
	mr.ldo = ldo;
	return mixed_compute(&mr, texts, lengths, max_lengths, err);
}

/* Sentence embeddings of rows of many adapters (NULL: the bare model) over model (engine_api.h). */
PeftCode
session_embed_mixed(PeftModelHandle *model, PeftAdapterHandle *const *adapters,
					const char *const *texts, const size_t *lengths, const int *max_lengths,
					int n, float *out, PeftError *err)
{
	MixedRows	mr = {0};
	PeftCode	rc;

	mr.model = model;
	mr.adapters = adapters;
	mr.n = n;
	mr.out = out;
	rc = mixed_compute(&mr, texts, lengths, max_lengths, err);
	if (rc == PEFT_OK && n > 0)
		flush_tiny(out, (size_t) n * model->bert->cfg.hidden_size);
	return rc;
}

/* Check target_modules names against the BERT linear layers. */
PeftCode
session_check_targets(const char *const *names, int count, PeftError *err)
{
	bool		targets[BERT_NUM_LINEAR];

	return lora_parse_targets(targets, names, count, err);
}

/*
 * Network options of a training configuration: the methods' modules
 * (defaults as PEFT's for BERT: LoRA on query and value; (IA)^3 on key,
 * value and output.dense, output.dense as feed-forward), dropout and seed.
 */
PeftCode
session_network_options(const PeftTrainConfig *c, const BertModel *bert, NetworkOptions *o,
						PeftError *err)
{
	static const char *const lora_default[] = {"query", "value"};
	static const char *const ia3_default[] = {"key", "value", "output.dense"};
	static const char *const ff_default[] = {"output.dense"};
	unsigned	m = c->methods ? c->methods : PEFT_METHOD_LORA;
	bool		ia3 = (m & PEFT_METHOD_IA3) != 0;
	bool		targets[BERT_NUM_LINEAR] = {0};
	PeftCode	rc;

	memset(o, 0, sizeof(*o));
	if (m & (PEFT_METHOD_LORA | PEFT_METHOD_DORA | PEFT_METHOD_IA3))
	{
		if (c->num_targets > 0)
			rc = lora_parse_targets(targets, c->target_modules, c->num_targets, err);
		else if (ia3)
			rc = lora_parse_targets(targets, ia3_default, 3, err);
		else
			rc = lora_parse_targets(targets, lora_default, 2, err);
		if (rc != PEFT_OK)
			return rc;
	}
	if (ia3)
	{
		bool		ff[BERT_NUM_LINEAR] = {0};

		memcpy(o->ia3.targets, targets, sizeof(targets));
		if (c->num_feedforward > 0)
			rc = lora_parse_targets(ff, c->feedforward_modules, c->num_feedforward, err);
		else if (c->num_feedforward < 0)
			rc = lora_parse_targets(ff, ff_default, 1, err);
		else
			rc = PEFT_OK;
		if (rc != PEFT_OK)
			return rc;
		/* the default keeps only the feed-forward modules that are targets */
		for (int w = 0; w < BERT_NUM_LINEAR; w++)
			o->ia3.feedforward[w] = ff[w] && (targets[w] || c->num_feedforward > 0);
	}
	else
		memcpy(o->lora.targets, targets, sizeof(targets));
	if (m & PEFT_METHOD_PROMPT)
		o->prompt_tokens = c->num_virtual_tokens;
	if (m & PEFT_METHOD_PREFIX)
		o->prefix_tokens = c->num_virtual_tokens;
	o->dora = (m & PEFT_METHOD_DORA) != 0;
	o->bitfit = (m & PEFT_METHOD_BITFIT) != 0;
	if (m & PEFT_METHOD_ADAPTER)
	{
		o->bottleneck.reduction = c->reduction_factor;
		o->bottleneck.after_attention = c->adapter_placement == PEFT_PLACEMENT_HOULSBY;
		o->bottleneck.after_ffn = true;
	}
	o->lora.r = c->r;
	o->lora.alpha = c->lora_alpha;
	o->lora.dropout = c->lora_dropout;
	o->lora.rslora = c->use_rslora;
	o->task = c->task;
	o->hidden_dropout = c->hidden_dropout >= 0 ? c->hidden_dropout : bert->cfg.hidden_dropout;
	o->attention_dropout = c->hidden_dropout >= 0 ? c->hidden_dropout : bert->cfg.attention_dropout;
	o->seed = c->seed;
	return PEFT_OK;
}

/* Start a run: check what can be checked before any row arrives. */
PeftCode
session_train_begin(PeftModelHandle *model, const PeftTrainConfig *config,
					PeftTrainJob **out, PeftError *err)
{
	PeftTrainJob *job;
	NetworkOptions *o;
	PeftCode	rc;

	*out = NULL;
	if (model->decoder == NULL && config->task == PEFT_TASK_GENERATION)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "task generation trains a decoder (a LLaMA-family GGUF or folder); this model "
						 "is an encoder (%s)", model->bert->cfg.model_type);
	job = calloc(1, sizeof(PeftTrainJob));
	if (job == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory starting training");
	job->model = model;
	job->config = *config;
	if (model->decoder != NULL)
	{
		if ((rc = dtrain_begin(model->decoder, config, &job->dec, err)) != PEFT_OK)
		{
			free(job);
			return rc;
		}
		*out = job;
		return PEFT_OK;
	}
	/* max_length not given: 128, or the model's own limit if lower (as sentence-transformers') */
	if (job->config.max_length == 0)
	{
		const ModelConfig *cfg = &model->bert->cfg;
		int			limit = cfg->max_seq_length > 0 ? cfg->max_seq_length : cfg->max_position;

		job->config.max_length = limit < DEFAULT_MAX_LENGTH ? limit : DEFAULT_MAX_LENGTH;
	}
	job->data.memory_limit = config->memory_limit;
	o = &job->options;
	if ((rc = methods_check_support(config->methods ? config->methods : PEFT_METHOD_LORA, config->task,
									model->bert->cfg.model_type, err)) != PEFT_OK ||
		(rc = session_network_options(config, model->bert, o, err)) != PEFT_OK)
	{
		free(job);
		return rc;
	}
	if (job->config.max_length < 2 || job->config.max_length > model->bert->cfg.max_position)
	{
		free(job);
		return peft_fail(err, PEFT_ERR_INVALID, "max_length must be between 2 and %d",
						 model->bert->cfg.max_position);
	}
	*out = job;
	return PEFT_OK;
}

/* Tokenise and keep one row. */
PeftCode
session_train_add_row(PeftTrainJob *job, const char *text, size_t len, int label,
					  double target, PeftError *err)
{
	if (job->dec != NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "a generation run takes prompt/completion rows");
	if (job->trainer != NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "rows added after training started");
	if (job->config.task == PEFT_TASK_CLASSIFICATION && label < 0)
		return peft_fail(err, PEFT_ERR_INVALID, "label index %d out of range", label);
	if (job->config.task == PEFT_TASK_REGRESSION && !isfinite(target))
		return peft_fail(err, PEFT_ERR_INVALID, "regression targets must be finite");
	return dataset_add(&job->data, job->model->bert->tokenizer, text, len,
					   job->config.max_length, label, (real) target, err);
}

/* Rows added from now on are the validation rows. */
PeftCode
session_train_hold_out(PeftTrainJob *job, PeftError *err)
{
	if (job->dec != NULL)
		return dtrain_hold_out(job->dec, err);
	if (job->trainer != NULL || job->data.held_out)
		return peft_fail(err, PEFT_ERR_INTERNAL, "validation rows begin once, before training");
	job->data.held_out = true;
	job->data.first_held_out = job->data.count;
	return PEFT_OK;
}

/* Fail when what the prepared run holds exceeds config.memory_limit. */
static PeftCode
check_train_memory(PeftTrainJob *job, PeftError *err)
{
	PeftTrainMemory m;
	size_t		total;

	session_train_memory(job, &m);
	total = (size_t) (m.data + m.state + m.activations);
	if (job->config.memory_limit == 0 || total <= job->config.memory_limit)
		return PEFT_OK;
	return peft_fail(err, PEFT_ERR_NOMEM,
					 "training needs %zu kB (rows %lld kB, parameters and optimizer %lld kB, "
					 "activations %lld kB), over the memory limit of %zu kB",
					 total / 1024, (long long) m.data / 1024, (long long) m.state / 1024,
					 (long long) m.activations / 1024, job->config.memory_limit / 1024);
}

/* Split, build the network and the trainer once every row is in. */
PeftCode
session_train_prepare(PeftTrainJob *job, int num_labels, const int *label_map,
					  int64_t *train_rows, int64_t *valid_rows, int *total_steps,
					  PeftError *err)
{
	const PeftTrainConfig *c = &job->config;
	TrainOptions t;
	PeftCode	rc;

	if (job->dec != NULL)
		return dtrain_prepare(job->dec, train_rows, valid_rows, total_steps, err);
	if (c->task == PEFT_TASK_REGRESSION)
		num_labels = 1;
	else if (num_labels < 2)
		return peft_fail(err, PEFT_ERR_INVALID, "classification needs at least two classes");
	else if (c->max_classes > 0 && num_labels > c->max_classes)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "the rows have %d distinct labels, more than max_classes (%d): a classifier "
						 "with a class per value; for a number to predict, train with task regression",
						 num_labels, c->max_classes);
	for (size_t i = 0; i < job->data.count; i++)
	{
		Example    *ex = &job->data.rows[i];

		if (c->task != PEFT_TASK_CLASSIFICATION)
			continue;
		if (ex->label < 0 || ex->label >= num_labels)
			return peft_fail(err, PEFT_ERR_INVALID, "label index %d out of range", ex->label);
		if (label_map)
			ex->label = label_map[ex->label];
	}
	job->config.num_labels = num_labels;
	job->options.num_labels = num_labels;

	if ((rc = dataset_split(&job->data, c->validation_fraction, c->seed,
							&job->train_rows, &job->ntrain, &job->valid_rows,
							&job->nvalid, err)) != PEFT_OK)
		return rc;
	if (job->data.held_out && job->nvalid == 0)
		return peft_fail(err, PEFT_ERR_INVALID, "the validation data has no row with both input and label set");
	if (job->ntrain == 0)
		return peft_fail(err, PEFT_ERR_INVALID, job->data.held_out ?
						 "the training data has no row with both input and label set" :
						 "no training rows remain after the validation split");
	if ((rc = network_create(job->model->bert, &job->options, &job->net, err)) != PEFT_OK ||
		(rc = network_set_device(job->net, c->device, c->precision,
								 err)) != PEFT_OK)
		return rc;
	train_options_from_config(c, &t);
	if ((rc = trainer_create(job->net, &job->data, job->train_rows, job->ntrain, &t,
							 &job->trainer, err)) != PEFT_OK ||
		(rc = check_train_memory(job, err)) != PEFT_OK)
		return rc;
	*train_rows = (int64_t) job->ntrain;
	*valid_rows = (int64_t) job->nvalid;
	*total_steps = trainer_total_steps(job->trainer);
	return PEFT_OK;
}

/* One optimizer step. */
PeftCode
session_train_step(PeftTrainJob *job, PeftTrainProgress *p, PeftError *err)
{
	if (job->dec != NULL)
		return dtrain_step(job->dec, p, err);
	if (job->trainer == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "training step before prepare");
	return trainer_step(job->trainer, p, err);
}

/* What a prepared run holds. */
void
session_train_memory(PeftTrainJob *job, PeftTrainMemory *m)
{
	size_t		activations = 0;
	size_t		network;

	if (job->dec != NULL)
	{
		dtrain_memory(job->dec, m);
		return;
	}
	network = job->net ? network_memory(job->net, &activations) : 0;

	m->data = (int64_t) (dataset_memory(&job->data) + (job->ntrain + job->nvalid) * sizeof(uint32_t) +
						 (job->trainer ? trainer_memory(job->trainer) : 0));
	m->state = (int64_t) (network - activations);
	/* what the largest batch needs, whether or not its buffers are held now */
	m->activations = (int64_t) (job->trainer ? trainer_activation_bytes(job->trainer) : activations);
}

/* Where a prepared run computes. */
const char *
session_train_device(PeftTrainJob *job)
{
	if (job->dec != NULL)
		return dtrain_device(job->dec); /* decoders train on the CPU for now */
	return job->net ? job->net->be->name : "none";
}

/* Trainable values of a prepared run (0 before prepare). */
int64_t
session_train_parameters(PeftTrainJob *job)
{
	if (job->dec != NULL)
		return dtrain_parameters(job->dec);
	return job->net ? (int64_t) job->net->params.total : 0;
}

/* Tokens per row the run keeps (max_length as resolved for the model). */
int
session_train_max_length(PeftTrainJob *job)
{
	if (job->dec != NULL)
		return dtrain_max_length(job->dec);
	return job->config.max_length;
}

/* The backend a device choice computes on, once what it has queued is done. */
static PeftCode
synced_backend(PeftDevice device, Backend **be, PeftError *err)
{
	PeftCode	rc;

	if ((rc = backend_for(device, be, err)) != PEFT_OK)
		return rc;
	(*be)->ops->enter(*be);
	(*be)->ops->sync(*be);
	(*be)->ops->leave(*be);
	return backend_check(*be, err);
}

/* Count device's products (and inference tokens) from zero, timing them when asked. */
PeftCode
session_profile_start(PeftDevice device, bool time_products, PeftError *err)
{
	Backend    *be;
	PeftCode	rc;

	if ((rc = synced_backend(device, &be, err)) != PEFT_OK)
		return rc;
	be->profile = (BackendProfile) {.enabled = time_products};
	inference_tokens = 0;
	return PEFT_OK;
}

/* What device counted since profile_start. */
PeftCode
session_profile_read(PeftDevice device, PeftProfile *p, PeftError *err)
{
	Backend    *be;
	PeftCode	rc;

	memset(p, 0, sizeof(*p));
	if ((rc = synced_backend(device, &be, err)) != PEFT_OK)
		return rc;
	snprintf(p->device, sizeof(p->device), "%s", be->name);
	snprintf(p->precision, sizeof(p->precision), "%s",
			 be->host_memory ? "fp32" : gemm_precision_name(be->precision));
	p->flops = be->profile.gemm_flops + be->profile.attention_flops;
	p->gemm_seconds = be->profile.gemm_seconds;
	p->tokens = inference_tokens;
	return PEFT_OK;
}

/* Validation metrics of the current weights. */
PeftCode
session_train_evaluate(PeftTrainJob *job, PeftMetrics *m, PeftError *err)
{
	if (job->dec != NULL)
		return dtrain_evaluate(job->dec, m, err);
	if (job->net == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "evaluation before prepare");
	return evaluate(job->net, &job->data, job->valid_rows, job->nvalid, job->config.batch_size,
					m, err);
}

/* Weights (safetensors) and adapter_config.json of the run. */
PeftCode
session_train_export(PeftTrainJob *job, const char *base_model, uint8_t **weights,
					 size_t *weights_len, char **config, PeftError *err)
{
	PeftCode	rc;

	*weights = NULL;
	*config = NULL;
	if (job->dec != NULL)
		return dtrain_export(job->dec, base_model, weights, weights_len, config, err);
	if (job->net == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "export before prepare");
	if ((rc = network_params_fetch(job->net, err)) != PEFT_OK ||
		(rc = adapter_serialize(job->net, weights, weights_len, err)) != PEFT_OK)
		return rc;
	if ((rc = adapter_config_json(job->net, base_model, config, err)) != PEFT_OK)
	{
		free(*weights);
		*weights = NULL;
	}
	return rc;
}

/* Release a run (NULL allowed). */
void
session_train_free(PeftTrainJob *job)
{
	if (job == NULL)
		return;
	dtrain_free(job->dec);
	trainer_free(job->trainer);
	network_free(job->net);
	dataset_free(&job->data);
	free(job->train_rows);
	free(job->valid_rows);
	free(job);
}

/* ---- decoders ------------------------------------------------------------ */

/* Completions of n prompts (engine_api's generate). */
PeftCode
session_generate(PeftModelHandle *model, PeftAdapterHandle *adapter, const char *const *prompts,
				 const size_t *lengths, int n, const PeftGenerateOptions *options,
				 PeftGeneration *out, PeftError *err)
{
	PeftCode	rc;

	if ((rc = require_decoder(model, "peft_generate", err)) != PEFT_OK)
		return rc;
	if (adapter != NULL && (adapter->model != model || adapter->dad == NULL))
		return peft_fail(err, PEFT_ERR_INVALID, "the adapter is not one over this model");
	/* a merged adapter runs as plain products over its folded weights */
	return decoder_handle_generate(model->decoder, adapter && !adapter->merged ? adapter->dad : NULL,
								   adapter ? adapter->merged : NULL, prompts, lengths, n, options,
								   out, err);
}

/*
 * Prompts idx[0 .. k) of a mixed generation through adapter merged's
 * folded weights (merged != NULL) or, merged NULL, through each one's
 * adapter in one mixed run; results to out[idx[j]].
 */
static PeftCode
generate_subset(PeftModelHandle *model, PeftAdapterHandle *const *adapters, const LlamaModel *merged,
				const char *const *prompts, const size_t *lengths, const int *idx, int k,
				const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	const char **texts = malloc(sizeof(char *) * (k > 0 ? k : 1));
	size_t	   *lens = malloc(sizeof(size_t) * (k > 0 ? k : 1));
	DecoderAdapter **dads = malloc(sizeof(DecoderAdapter *) * (k > 0 ? k : 1));
	PeftGeneration *part = calloc(k > 0 ? k : 1, sizeof(PeftGeneration));
	PeftCode	rc;

	if (!texts || !lens || !dads || !part)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory generating");
	else
	{
		for (int j = 0; j < k; j++)
		{
			texts[j] = prompts[idx[j]];
			lens[j] = lengths[idx[j]];
			dads[j] = adapters[idx[j]] ? adapters[idx[j]]->dad : NULL;
		}
		rc = merged ? decoder_handle_generate(model->decoder, NULL, merged, texts, lens, k, o, part, err) :
			decoder_handle_generate_mixed(model->decoder, dads, texts, lens, k, o, part, err);
		for (int j = 0; rc == PEFT_OK && j < k; j++)
			out[idx[j]] = part[j];
	}
	free(texts);
	free(lens);
	free(dads);
	free(part);
	return rc;
}

/* Completions of prompts through an adapter each (engine_api's generate_mixed). */
PeftCode
session_generate_mixed(PeftModelHandle *model, PeftAdapterHandle *const *adapters,
					   const char *const *prompts, const size_t *lengths, int n,
					   const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	int		   *idx = malloc(sizeof(int) * (n > 0 ? n : 1));
	bool	   *done = calloc(n > 0 ? n : 1, sizeof(bool));
	PeftCode	rc = PEFT_OK;
	int			k = 0;

	memset(out, 0, sizeof(PeftGeneration) * (n > 0 ? n : 0));
	if ((rc = require_decoder(model, "peft_generate", err)) == PEFT_OK && (!idx || !done))
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory generating");
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		if (adapters[i] != NULL && (adapters[i]->model != model || adapters[i]->dad == NULL))
			rc = peft_fail(err, PEFT_ERR_INVALID, "prompt %d's adapter is not one over this model", i + 1);
	/* every prompt of an unmerged adapter (or none) in one mixed run */
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		if (adapters[i] == NULL || adapters[i]->merged == NULL)
		{
			idx[k++] = i;
			done[i] = true;
		}
	if (rc == PEFT_OK && k > 0)
		rc = generate_subset(model, adapters, NULL, prompts, lengths, idx, k, o, out, err);
	/* each merged adapter's prompts over its own weights */
	for (int i = 0; rc == PEFT_OK && i < n; i++)
	{
		if (done[i])
			continue;
		k = 0;
		for (int j = i; j < n; j++)
			if (!done[j] && adapters[j] == adapters[i])
			{
				idx[k++] = j;
				done[j] = true;
			}
		rc = generate_subset(model, adapters, adapters[i]->merged, prompts, lengths, idx, k, o, out, err);
	}
	if (rc != PEFT_OK)
		for (int i = 0; i < n; i++)
		{
			free(out[i].text);
			out[i].text = NULL;
		}
	free(idx);
	free(done);
	return rc;
}

/* A continuous-batching stream over a decoder's model. */
struct PeftGenStream
{
	PeftModelHandle *model;		/* whose adapters may join */
	GenStream  *gen;
};

/* A stream over decoder model (engine_api's stream_create). */
PeftCode
session_stream_create(PeftModelHandle *model, int slots, size_t cache_bytes, PeftGenStream **out,
					  PeftError *err)
{
	PeftGenStream *st;
	PeftCode	rc;

	*out = NULL;
	if ((rc = require_decoder(model, "a generation stream", err)) != PEFT_OK)
		return rc;
	if ((st = calloc(1, sizeof(PeftGenStream))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a stream");
	st->model = model;
	if ((rc = decoder_handle_stream_create(model->decoder, slots, cache_bytes, &st->gen, err)) != PEFT_OK)
	{
		free(st);
		return rc;
	}
	*out = st;
	return PEFT_OK;
}

/* Queue a prompt through adapter, or answer alone for a merged one (engine_api's stream_add). */
PeftCode
session_stream_add(PeftGenStream *st, PeftAdapterHandle *adapter, const char *prompt, size_t len,
				   const PeftGenerateOptions *o, int index, uint64_t tag, bool *alone, PeftError *err)
{
	*alone = false;
	if (adapter != NULL && (adapter->model != st->model || adapter->dad == NULL))
		return peft_fail(err, PEFT_ERR_INVALID, "the adapter is not one over the stream's model");
	/* a merged adapter's folded weights are another model: its prompts run with generate */
	return generate_stream_add(st->gen, adapter ? adapter->dad : NULL, adapter == NULL || adapter->merged == NULL,
							   prompt, len, o, index, tag, alone, err);
}

/* engine_api's stream_cancel. */
bool
session_stream_cancel(PeftGenStream *st, uint64_t tag)
{
	return generate_stream_cancel(st->gen, tag);
}

/* engine_api's stream_step. */
PeftCode
session_stream_step(PeftGenStream *st, PeftStreamResult **results, int *nresults, PeftError *err)
{
	return generate_stream_step(st->gen, results, nresults, err);
}

/* engine_api's stream_pending. */
int
session_stream_pending(PeftGenStream *st)
{
	return generate_stream_pending(st->gen);
}

/* engine_api's stream_free. */
void
session_stream_free(PeftGenStream *st)
{
	if (st == NULL)
		return;
	generate_stream_free(st->gen);
	free(st);
}

/* A decoder's token ids of a text (engine_api's tokenize). */
PeftCode
session_tokenize(PeftModelHandle *model, const char *text, size_t len, bool chat, const char *system,
				 int32_t **ids, int *n, PeftError *err)
{
	PeftCode	rc;

	if ((rc = require_decoder(model, "tokenize", err)) != PEFT_OK)
		return rc;
	return decoder_handle_tokenize(model->decoder, text, len, chat, system, ids, n, err);
}

/* A decoder's last logits after ids (engine_api's logits). */
PeftCode
session_logits(PeftModelHandle *model, PeftAdapterHandle *adapter, const int32_t *ids, int n,
			   float *out, PeftError *err)
{
	PeftCode	rc;

	if ((rc = require_decoder(model, "logits", err)) != PEFT_OK)
		return rc;
	if (adapter != NULL && (adapter->model != model || adapter->dad == NULL))
		return peft_fail(err, PEFT_ERR_INVALID, "the adapter is not one over this model");
	return decoder_handle_logits(model->decoder, adapter ? adapter->dad : NULL, ids, n, out, err);
}

/* Keep one prompt/completion row of a generation run (engine_api's train_add_pair). */
PeftCode
session_train_add_pair(PeftTrainJob *job, const char *prompt, size_t prompt_len,
					   const char *completion, size_t completion_len, PeftError *err)
{
	if (job->dec == NULL)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "prompt/completion rows train a decoder with task generation");
	return dtrain_add_pair(job->dec, prompt, prompt_len, completion, completion_len, err);
}

/* A decoder adapter as llama.cpp's LoRA GGUF (engine_api's adapter_export_gguf). */
PeftCode
session_adapter_export_gguf(PeftModelHandle *model, const char *config, size_t config_len,
							const uint8_t *weights, size_t weights_len, uint8_t **out,
							size_t *out_len, PeftError *err)
{
	PeftCode	rc;

	*out = NULL;
	*out_len = 0;
	if ((rc = require_decoder(model, "exporting an adapter as llama.cpp's LoRA GGUF", err)) != PEFT_OK)
		return rc;
	return decoder_handle_export_gguf(model->decoder, config, config_len, weights, weights_len, out,
									  out_len, err);
}
