/*
 * decoder_training.c - a training run of an adapter over a decoder
 * (decoder_training.h): rows tokenised as generation renders prompts,
 * the split, the network and its trainer, validation loss, perplexity and
 * exact match of greedy generations, and the adapter's bytes.
 */
#define _GNU_SOURCE
#include "decoder_training.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_tokenizer.h"
#include "causal_lm.h"
#include "dataset.h"
#include "decoder_trainer.h"
#include "gemm_bf16.h"
#include "method_table.h"

/* Tokens per row when max_length is not given (capped by the model's context). */
#define DEFAULT_GENERATION_MAX_LENGTH 512
/* Validation rows generated for exact match, and the completions' mean length it needs. */
#define EXACT_MATCH_ROWS 200
#define EXACT_MATCH_MAX_TOKENS 32
/* New tokens allowed past the reference's length in exact-match generations. */
#define EXACT_MATCH_SLACK 8

struct DecoderTrainJob
{
	DecoderHandle *h;
	const GenerateModel *gen;
	PeftTrainConfig config;
	DecoderAdapterOptions aopts;
	int32_t		end_token;		/* ends every completion: end-of-turn (chat) or eos */
	Dataset		data;
	int64_t		skipped;		/* rows whose completion alone was too long */
	uint32_t   *train_rows;
	size_t		ntrain;
	uint32_t   *valid_rows;
	size_t		nvalid;
	DecoderAdapter *ad;
	CausalLM   *lm;
	DecoderTrainer *trainer;
};

PeftCode
dtrain_adapter_options(const PeftTrainConfig *c, DecoderAdapterOptions *o, PeftError *err)
{
	static const char *const lora_default[] = {"q_proj", "v_proj"};
	static const char *const ia3_default[] = {"k_proj", "v_proj", "down_proj"};
	static const char *const ff_default[] = {"down_proj"};
	unsigned	m = c->methods ? c->methods : PEFT_METHOD_LORA;
	PeftCode	rc;

	memset(o, 0, sizeof(*o));
	if (m & PEFT_METHOD_BITFIT)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "bitfit trains biases, and the linears of a LLaMA model have none: use lora, dora or ia3");
	/* one method per decoder adapter (dora's bits include lora's) */
	if (m != PEFT_METHOD_LORA && m != (PEFT_METHOD_LORA | PEFT_METHOD_DORA) && m != PEFT_METHOD_DORA &&
		m != PEFT_METHOD_IA3 && m != PEFT_METHOD_PROMPT && m != PEFT_METHOD_PREFIX && m != PEFT_METHOD_ADAPTER)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "an adapter over a decoder is one of lora, dora, ia3, prompt, prefix or adapter, "
						 "not a combination");
	o->seed = c->seed;
	if (m & (PEFT_METHOD_PROMPT | PEFT_METHOD_PREFIX | PEFT_METHOD_ADAPTER))
	{
		o->method = m == PEFT_METHOD_PROMPT ? DAD_PROMPT : m == PEFT_METHOD_PREFIX ? DAD_PREFIX : DAD_BOTTLENECK;
		o->virtual_tokens = c->num_virtual_tokens;
		o->reduction = c->reduction_factor;
		o->after_attention = c->adapter_placement == PEFT_PLACEMENT_HOULSBY;
		return PEFT_OK;
	}
	o->method = (m & PEFT_METHOD_IA3) ? DAD_IA3 : (m & PEFT_METHOD_DORA) ? DAD_DORA : DAD_LORA;
	if (c->num_targets > 0)
		rc = decoder_adapter_parse_targets(o->targets, c->target_modules, c->num_targets, err);
	else if (o->method == DAD_IA3)
		rc = decoder_adapter_parse_targets(o->targets, ia3_default, 3, err);
	else
		rc = decoder_adapter_parse_targets(o->targets, lora_default, 2, err);
	if (rc != PEFT_OK)
		return rc;
	if (o->method == DAD_IA3)
	{
		bool		ff[LLAMA_NUM_LINEAR];

		if (c->num_feedforward > 0)
			rc = decoder_adapter_parse_targets(ff, c->feedforward_modules, c->num_feedforward, err);
		else
			rc = decoder_adapter_parse_targets(ff, ff_default, c->num_feedforward < 0 ? 1 : 0, err);
		if (rc != PEFT_OK)
			return rc;
		/* as PEFT: the default keeps only the feed-forward modules that are targets */
		for (int w = 0; w < LLAMA_NUM_LINEAR; w++)
			o->feedforward[w] = ff[w] && o->targets[w];
	}
	o->r = c->r;
	o->alpha = c->lora_alpha;
	o->dropout = o->method == DAD_LORA ? c->lora_dropout : 0;
	o->rslora = c->use_rslora;
	o->seed = c->seed;
	return PEFT_OK;
}

PeftCode
dtrain_begin(DecoderHandle *h, const PeftTrainConfig *config, DecoderTrainJob **out, PeftError *err)
{
	const GenerateModel *gen = decoder_handle_gen(h);
	int			context = gen->model->cfg.context_length;
	DecoderTrainJob *job;
	PeftCode	rc;

	*out = NULL;
	if (config->task != PEFT_TASK_GENERATION)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "a decoder learns completions: train it with task => 'generation' (prompt in "
						 "input, completion in label)");
	if (config->chat && gen->chat == NULL)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "the model has no chat template this engine renders: train with "
						 "options => '{\"chat\": false}' for raw prompts");
	if (config->system && !config->chat)
		return peft_fail(err, PEFT_ERR_INVALID, "option system needs chat prompts (chat true)");
	if (config->device == PEFT_DEVICE_CUDA)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "decoders train on the CPU for now: use device cpu or auto (precision bf16 runs "
						 "the products on AMX where the CPU has it)");
	if ((job = calloc(1, sizeof(DecoderTrainJob))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory starting training");
	job->h = h;
	job->gen = gen;
	job->config = *config;
	if (job->config.max_length == 0)
		job->config.max_length = context < DEFAULT_GENERATION_MAX_LENGTH ? context :
			DEFAULT_GENERATION_MAX_LENGTH;
	job->end_token = config->chat ? gen->end_of_turn : gen->eos;
	job->data.memory_limit = config->memory_limit;
	if ((rc = dtrain_adapter_options(config, &job->aopts, err)) != PEFT_OK)
	{
		free(job);
		return rc;
	}
	if (job->config.max_length < 2 || job->config.max_length > context)
		rc = peft_fail(err, PEFT_ERR_INVALID, "max_length must be between 2 and %d (the model's context)",
					   context);
	else if (job->end_token < 0)
		rc = peft_fail(err, PEFT_ERR_INVALID,
					   "the model's tokenizer names no %s token to end completions with",
					   config->chat ? "end-of-turn" : "end-of-sequence");
	if (rc != PEFT_OK)
	{
		free(job);
		return rc;
	}
	*out = job;
	return PEFT_OK;
}

PeftCode
dtrain_add_pair(DecoderTrainJob *job, const char *prompt, size_t prompt_len, const char *completion,
				size_t completion_len, PeftError *err)
{
	const GenerateModel *g = job->gen;
	int32_t    *p = NULL;
	int32_t    *c = NULL;
	int32_t    *row = NULL;
	int			np = 0;
	size_t		nc = 0;
	int			max = job->config.max_length;
	PeftCode	rc;

	if (job->trainer != NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "rows added after training started");
	if ((rc = generate_prompt_ids(g, prompt, prompt_len, job->config.chat, job->config.system,
								  &p, &np, err)) != PEFT_OK)
		return rc;
	/* the completion as plain text: special tokens written in it are not parsed */
	if ((rc = bpe_encode_alloc(g->tokenizer, completion, completion_len, false, &c, &nc, err)) != PEFT_OK)
	{
		free(p);
		return rc;
	}
	if ((int64_t) nc + 1 >= max)
	{
		/* no room for one prompt token beside the completion: counted, not trained on */
		job->skipped++;
		free(p);
		free(c);
		return PEFT_OK;
	}
	if ((row = malloc(sizeof(int32_t) * (np + nc + 1))) == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory holding a training row");
	else
	{
		/* cut from the prompt's start, never from the completion */
		int			keep = np + (int) nc + 1 > max ? max - (int) nc - 1 : np;

		memcpy(row, p + (np - keep), sizeof(int32_t) * keep);
		memcpy(row + keep, c, sizeof(int32_t) * nc);
		row[keep + nc] = job->end_token;
		rc = dataset_add_ids(&job->data, row, keep + (int) nc + 1, keep, err);
	}
	free(row);
	free(p);
	free(c);
	return rc;
}

PeftCode
dtrain_hold_out(DecoderTrainJob *job, PeftError *err)
{
	if (job->trainer != NULL || job->data.held_out)
		return peft_fail(err, PEFT_ERR_INTERNAL, "validation rows begin once, before training");
	job->data.held_out = true;
	job->data.first_held_out = job->data.count;
	return PEFT_OK;
}

void
dtrain_memory(DecoderTrainJob *job, PeftTrainMemory *m)
{
	size_t		state = job->ad ? job->ad->params.total * sizeof(real) * 4 : 0;

	m->data = (int64_t) (dataset_memory(&job->data) + (job->ntrain + job->nvalid) * sizeof(uint32_t) +
						 (job->trainer ? decoder_trainer_memory(job->trainer) : 0));
	m->state = (int64_t) state;
	m->activations = (int64_t) (job->trainer ? decoder_trainer_activation_bytes(job->trainer) : 0);
}

/* Fail when what the prepared run holds exceeds config.memory_limit. */
static PeftCode
check_memory(DecoderTrainJob *job, PeftError *err)
{
	PeftTrainMemory m;
	size_t		total;

	dtrain_memory(job, &m);
	total = (size_t) (m.data + m.state + m.activations);
	if (job->config.memory_limit == 0 || total <= job->config.memory_limit)
		return PEFT_OK;
	return peft_fail(err, PEFT_ERR_NOMEM,
					 "training needs %zu kB (rows %lld kB, parameters and optimizer %lld kB, "
					 "activations %lld kB), over the memory limit of %zu kB: lower batch_size or "
					 "max_length (gradient_accumulation_steps keeps the effective batch)",
					 total / 1024, (long long) m.data / 1024, (long long) m.state / 1024,
					 (long long) m.activations / 1024, job->config.memory_limit / 1024);
}

PeftCode
dtrain_prepare(DecoderTrainJob *job, int64_t *train_rows, int64_t *valid_rows, int *total_steps,
			   PeftError *err)
{
	const PeftTrainConfig *c = &job->config;
	TrainOptions t;
	PeftCode	rc;

	if ((rc = dataset_split(&job->data, c->validation_fraction, c->seed, &job->train_rows,
							&job->ntrain, &job->valid_rows, &job->nvalid, err)) != PEFT_OK)
		return rc;
	if (job->data.held_out && job->nvalid == 0)
		return peft_fail(err, PEFT_ERR_INVALID, "the validation data has no row with both input and label set");
	if (job->ntrain == 0)
		return peft_fail(err, PEFT_ERR_INVALID, job->skipped > 0 ?
						 "no training rows: every completion is longer than max_length allows" :
						 "no training rows remain after the validation split");
	if ((rc = decoder_adapter_create(job->gen->model, &job->aopts, &job->ad, err)) != PEFT_OK ||
		(rc = causal_lm_create(job->gen->model, job->ad, &job->lm, err)) != PEFT_OK)
		return rc;
	/* bf16 where AMX makes it pay; elsewhere (its fallbacks are slower than sgemm) FP32, and dtrain_device says so */
	job->ad->bf16 = c->precision == PEFT_PRECISION_BF16 && gemm_bf16_amx_available();
	train_options_from_config(c, &t);
	if ((rc = decoder_trainer_create(job->lm, job->ad, &job->data, job->train_rows, job->ntrain, &t,
									 &job->trainer, err)) != PEFT_OK ||
		(rc = check_memory(job, err)) != PEFT_OK)
		return rc;
	*train_rows = (int64_t) job->ntrain;
	*valid_rows = (int64_t) job->nvalid;
	*total_steps = decoder_trainer_total_steps(job->trainer);
	return PEFT_OK;
}

PeftCode
dtrain_step(DecoderTrainJob *job, PeftTrainProgress *p, PeftError *err)
{
	if (job->trainer == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "training step before prepare");
	return decoder_trainer_step(job->trainer, p, err);
}

const char *
dtrain_device(DecoderTrainJob *job)
{
	return job->ad && job->ad->bf16 ? "cpu-bf16" : "cpu";
}

int64_t
dtrain_parameters(DecoderTrainJob *job)
{
	return job->ad ? (int64_t) job->ad->params.total : 0;
}

int
dtrain_max_length(DecoderTrainJob *job)
{
	return job->config.max_length;
}

/* text[0..*len) without leading and trailing white space. */
static const char *
trimmed(const char *text, size_t *len)
{
	while (*len > 0 && isspace((unsigned char) text[0]))
	{
		text++;
		(*len)--;
	}
	while (*len > 0 && isspace((unsigned char) text[*len - 1]))
		(*len)--;
	return text;
}

/*
 * Exact match of greedy generations on the first up to EXACT_MATCH_ROWS
 * validation rows: the completion generated from the row's prompt tokens,
 * trimmed, against the row's completion decoded, trimmed.
 */
static PeftCode
exact_match(DecoderTrainJob *job, PeftMetrics *m, PeftError *err)
{
	const Dataset *ds = &job->data;
	int			n = (int) (job->nvalid < EXACT_MATCH_ROWS ? job->nvalid : EXACT_MATCH_ROWS);
	const int32_t **ids = calloc(n ? n : 1, sizeof(int32_t *));
	int		   *nids = calloc(n ? n : 1, sizeof(int));
	PeftGeneration *out = calloc(n ? n : 1, sizeof(PeftGeneration));
	GenerateModel g = *job->gen;
	PeftGenerateOptions o;
	int64_t		completion_tokens = 0;
	int			longest = 0;
	int			equal = 0;
	PeftCode	rc = PEFT_OK;

	m->exact_match = -1;
	if (ids == NULL || nids == NULL || out == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory evaluating");
	for (int i = 0; rc == PEFT_OK && i < n; i++)
	{
		const Example *ex = &ds->rows[job->valid_rows[i]];
		int			len = ex->length - ex->prompt_len;

		ids[i] = ds->tokens + ex->offset;
		nids[i] = ex->prompt_len;
		completion_tokens += len;
		longest = len > longest ? len : longest;
	}
	if (rc != PEFT_OK || n == 0 || completion_tokens >= (int64_t) n * EXACT_MATCH_MAX_TOKENS)
		goto done;
	generate_defaults(&o);
	o.max_new_tokens = longest + EXACT_MATCH_SLACK;
	o.chat = 0;					/* the prompt tokens are already rendered */
	g.adapter = job->ad;
	if ((rc = generate_run_ids(&g, ids, nids, n, &o, out, err)) != PEFT_OK)
		goto done;
	for (int i = 0; i < n && rc == PEFT_OK; i++)
	{
		const Example *ex = &ds->rows[job->valid_rows[i]];
		char	   *want = NULL;
		size_t		want_len = 0;
		size_t		got_len = strlen(out[i].text);
		const char *got;
		const char *w;

		/* the reference without its end token */
		rc = bpe_decode(g.tokenizer, ds->tokens + ex->offset + ex->prompt_len,
						ex->length - ex->prompt_len - 1, true, &want, &want_len, err);
		if (rc != PEFT_OK)
			break;
		got = trimmed(out[i].text, &got_len);
		w = trimmed(want, &want_len);
		equal += got_len == want_len && memcmp(got, w, got_len) == 0;
		free(want);
	}
	if (rc == PEFT_OK)
	{
		m->exact_match = (double) equal / n;
		m->generated = n;
	}
done:
	for (int i = 0; out && i < n; i++)
		free(out[i].text);
	free(out);
	free(ids);
	free(nids);
	return rc;
}

PeftCode
dtrain_evaluate(DecoderTrainJob *job, PeftMetrics *m, PeftError *err)
{
	int64_t		targets;
	PeftCode	rc;

	memset(m, 0, sizeof(*m));
	m->exact_match = -1;
	m->skipped = job->skipped;
	if (job->lm == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "evaluation before prepare");
	if ((rc = decoder_evaluate_loss(job->lm, &job->data, job->valid_rows, job->nvalid,
									job->config.batch_size, &m->loss, &targets, err)) != PEFT_OK)
		return rc;
	m->rows = (int64_t) job->nvalid;
	m->perplexity = targets > 0 ? exp(m->loss) : 0;
	/* the evaluation's buffers go: generation and the next step size their own */
	causal_lm_release(job->lm);
	if (job->config.eval_generate && job->nvalid > 0)
		rc = exact_match(job, m, err);
	return rc;
}

PeftCode
dtrain_export(DecoderTrainJob *job, const char *base_model, uint8_t **weights, size_t *weights_len,
			  char **config, PeftError *err)
{
	PeftCode	rc;

	*weights = NULL;
	*config = NULL;
	if (job->ad == NULL)
		return peft_fail(err, PEFT_ERR_INTERNAL, "export before prepare");
	if ((rc = decoder_adapter_serialize(job->ad, weights, weights_len, err)) != PEFT_OK)
		return rc;
	if ((rc = decoder_adapter_config_json(job->ad, base_model, config, err)) != PEFT_OK)
	{
		free(*weights);
		*weights = NULL;
	}
	return rc;
}

void
dtrain_free(DecoderTrainJob *job)
{
	if (job == NULL)
		return;
	decoder_trainer_free(job->trainer);
	causal_lm_free(job->lm);
	decoder_adapter_free(job->ad);
	dataset_free(&job->data);
	free(job->train_rows);
	free(job->valid_rows);
	free(job);
}

PeftCode
dadapter_open(DecoderHandle *h, const char *config, size_t config_len, const uint8_t *weights,
			  size_t weights_len, DecoderAdapter **out, PeftError *err)
{
	DecoderAdapterOptions o;
	PeftCode	rc;

	*out = NULL;
	if ((rc = decoder_adapter_options_from_config(config, config_len, &o, err)) != PEFT_OK)
		return rc;
	o.no_init = true;			/* the weights come next */
	if ((rc = decoder_adapter_create(decoder_handle_gen(h)->model, &o, out, err)) != PEFT_OK)
		return rc;
	if ((rc = decoder_adapter_load(*out, weights, weights_len, err)) != PEFT_OK)
	{
		decoder_adapter_free(*out);
		*out = NULL;
	}
	return rc;
}
