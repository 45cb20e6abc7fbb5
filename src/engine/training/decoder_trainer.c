/*
 * decoder_trainer.c - the training loop of an adapter over a decoder
 * (decoder_trainer.h).
 */
#include "decoder_trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

struct DecoderTrainer
{
	CausalLM   *lm;
	DecoderAdapter *ad;
	const Dataset *ds;
	TrainOptions opts;
	uint32_t   *rows;			/* training rows */
	uint32_t   *order;			/* this epoch's order */
	StepCursor	at;				/* rows, position, epoch, steps */
	PeftRng		rng;
	/* the packed micro-batch */
	int32_t    *ids;
	int32_t    *start;
	int32_t    *prompt_len;
	size_t		cap_ids;
	size_t		activation_bytes;
};

/* Pack rows[0..count) of ds into the trainer's batch arrays. */
static PeftCode
pack(const Dataset *ds, const uint32_t *rows, int count, int32_t **ids, size_t *cap,
	 int32_t *start, int32_t *prompt_len, LmBatch *b, PeftError *err)
{
	size_t		n = 0;

	for (int i = 0; i < count; i++)
		n += ds->rows[rows[i]].length;
	if (n > *cap)
	{
		int32_t    *p = realloc(*ids, n * sizeof(int32_t));

		if (p == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory packing a batch");
		*ids = p;
		*cap = n;
	}
	start[0] = 0;
	for (int i = 0; i < count; i++)
	{
		const Example *ex = &ds->rows[rows[i]];

		memcpy(*ids + start[i], ds->tokens + ex->offset, sizeof(int32_t) * ex->length);
		start[i + 1] = start[i] + ex->length;
		prompt_len[i] = ex->prompt_len;
	}
	*b = (LmBatch) {.B = count, .ids = *ids, .start = start, .prompt_len = prompt_len};
	return PEFT_OK;
}

/* Targets (completion tokens) of a row. */
static int64_t
row_targets(const Example *ex)
{
	int			first = ex->prompt_len > 1 ? ex->prompt_len : 1;

	return ex->length > first ? ex->length - first : 0;
}

/* This epoch's row order: shuffled (length-grouped), or as given. */
static void
epoch_order(DecoderTrainer *tr)
{
	if (!tr->opts.shuffle)
		memcpy(tr->order, tr->rows, tr->at.nrows * sizeof(uint32_t));
	else
		dataset_epoch_order(tr->ds, tr->rows, tr->at.nrows, tr->opts.batch_size,
							tr->opts.group_by_length, &tr->rng, tr->order);
}

/* Tokens of the batch_size longest rows, and the longest: the largest micro-batch's shape. */
static void
largest_batch(const Dataset *ds, const uint32_t *rows, size_t n, int batch_size, int *tokens,
			  int *longest)
{
	int32_t    *len = malloc(sizeof(int32_t) * (n ? n : 1));
	int64_t		sum = 0;

	*longest = 1;
	*tokens = 1;
	if (len == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		len[i] = ds->rows[rows[i]].length;
	/* partial selection of the batch_size largest */
	for (int k = 0; k < batch_size && (size_t) k < n; k++)
	{
		size_t		best = k;

		for (size_t i = k + 1; i < n; i++)
			if (len[i] > len[best])
				best = i;
		{
			int32_t		t = len[k];

			len[k] = len[best];
			len[best] = t;
		}
		sum += len[k];
	}
	*longest = n ? len[0] : 1;
	*tokens = (int) (sum > 0 ? sum : 1);
	free(len);
}

PeftCode
decoder_trainer_create(CausalLM *lm, DecoderAdapter *ad, const Dataset *ds, const uint32_t *rows,
					   size_t nrows, const TrainOptions *opts, DecoderTrainer **out, PeftError *err)
{
	DecoderTrainer *tr;
	int			tokens,
				longest;
	PeftCode	rc;

	*out = NULL;
	if ((rc = train_options_check(opts, err)) != PEFT_OK)
		return rc;
	if (nrows == 0)
		return peft_fail(err, PEFT_ERR_INVALID, "no training rows");
	if ((tr = calloc(1, sizeof(DecoderTrainer))) == NULL ||
		(tr->rows = malloc(nrows * sizeof(uint32_t))) == NULL ||
		(tr->order = malloc(nrows * sizeof(uint32_t))) == NULL ||
		(tr->start = malloc((opts->batch_size + 1) * sizeof(int32_t))) == NULL ||
		(tr->prompt_len = malloc(opts->batch_size * sizeof(int32_t))) == NULL)
	{
		decoder_trainer_free(tr);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the trainer");
	}
	tr->lm = lm;
	tr->ad = ad;
	tr->ds = ds;
	tr->opts = *opts;
	memcpy(tr->rows, rows, nrows * sizeof(uint32_t));
	if ((rc = step_cursor_init(&tr->at, nrows, opts, err)) != PEFT_OK)
	{
		decoder_trainer_free(tr);
		return rc;
	}
	peft_rng_seed(&tr->rng, opts->seed ^ 0x0bdeULL);
	epoch_order(tr);
	largest_batch(ds, rows, nrows, opts->batch_size, &tokens, &longest);
	tr->activation_bytes = causal_lm_activation_bytes(ad->base, ad, tokens,
													  opts->batch_size, longest, true);
	*out = tr;
	return PEFT_OK;
}

int
decoder_trainer_total_steps(const DecoderTrainer *tr)
{
	return tr->at.total_steps;
}

size_t
decoder_trainer_memory(const DecoderTrainer *tr)
{
	return tr->at.nrows * sizeof(uint32_t) * 2 + tr->cap_ids * sizeof(int32_t);
}

size_t
decoder_trainer_activation_bytes(const DecoderTrainer *tr)
{
	return tr->activation_bytes;
}

void
decoder_trainer_free(DecoderTrainer *tr)
{
	if (tr == NULL)
		return;
	free(tr->rows);
	free(tr->order);
	free(tr->ids);
	free(tr->start);
	free(tr->prompt_len);
	free(tr);
}

/* Clip the gradients to max_norm (torch's clip_grad_norm_), then one AdamW step. */
static double
optimizer_step(ParamSet *ps, const TrainOptions *o, double lr, int t)
{
	double		norm = sqrt(sum_squares(ps->grads, ps->total));

	if (o->max_grad_norm > 0)
	{
		double		coef = o->max_grad_norm / (norm + 1e-6);

		if (coef < 1.0)
			scale_inplace(ps->grads, (real) coef, ps->total);
	}
	adamw_update(ps->values, ps->grads, ps->adam_m, ps->adam_v, ps->total, (real) lr,
				 (real) o->beta1, (real) o->beta2, (real) o->adam_eps, (real) o->weight_decay, t);
	return norm;
}

PeftCode
decoder_trainer_step(DecoderTrainer *tr, PeftTrainProgress *st, PeftError *err)
{
	const TrainOptions *o = &tr->opts;
	ParamSet   *ps = &tr->ad->params;
	int			in_step;
	int64_t		step_targets = 0;
	double		loss_sum = 0;
	double		lr;
	PeftCode	rc;

	if (!step_begin(&tr->at, o, st, &in_step))
		return PEFT_OK;
	memset(ps->grads, 0, sizeof(real) * ps->total);
	/* the step's loss is the mean over all its completion tokens: count them first */
	for (size_t i = tr->at.position; i < tr->at.nrows && i < tr->at.position + (size_t) in_step * o->batch_size; i++)
		step_targets += row_targets(&tr->ds->rows[tr->order[i]]);
	for (int micro = 0; micro < in_step; micro++)
	{
		size_t		count = tr->at.nrows - tr->at.position;
		LmBatch		b;
		double		loss;
		int64_t		targets;

		if (count > (size_t) o->batch_size)
			count = o->batch_size;
		if ((rc = pack(tr->ds, tr->order + tr->at.position, (int) count, &tr->ids, &tr->cap_ids,
					   tr->start, tr->prompt_len, &b, err)) != PEFT_OK)
			return rc;
		if (step_targets > 0 &&
			(rc = causal_lm_loss(tr->lm, &b, 1.0 / step_targets, &loss, &targets, err)) != PEFT_OK)
			return rc;
		if (step_targets > 0)
			loss_sum += loss;
		st->rows += (int) count;
		st->tokens += b.start[b.B];
		tr->at.position += count;
	}
	if (!isfinite(loss_sum))
		return peft_fail(err, PEFT_ERR_INVALID, "the loss became %g at step %d: lower learning_rate",
						 loss_sum, tr->at.step + 1);
	lr = o->learning_rate * schedule_factor(o, tr->at.step, tr->at.total_steps);
	tr->at.step++;
	st->grad_norm = optimizer_step(ps, o, lr, tr->at.step);
	st->loss = step_targets > 0 ? loss_sum / step_targets : 0;
	if (step_end(&tr->at, st, lr))
		epoch_order(tr);
	return PEFT_OK;
}

PeftCode
decoder_evaluate_loss(CausalLM *lm, const Dataset *ds, const uint32_t *rows, size_t nrows,
					  int batch_size, double *loss, int64_t *targets, PeftError *err)
{
	int32_t    *ids = NULL;
	size_t		cap = 0;
	int32_t    *start = malloc(sizeof(int32_t) * (batch_size + 1));
	int32_t    *plen = malloc(sizeof(int32_t) * batch_size);
	double		sum = 0;
	PeftCode	rc = PEFT_OK;

	*loss = 0;
	*targets = 0;
	if (start == NULL || plen == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory evaluating");
	for (size_t pos = 0; rc == PEFT_OK && pos < nrows; pos += batch_size)
	{
		int			count = (int) (nrows - pos < (size_t) batch_size ? nrows - pos : (size_t) batch_size);
		LmBatch		b;
		double		l;
		int64_t		t;

		if ((rc = pack(ds, rows + pos, count, &ids, &cap, start, plen, &b, err)) == PEFT_OK &&
			(rc = causal_lm_loss(lm, &b, 0, &l, &t, err)) == PEFT_OK)
		{
			sum += l;
			*targets += t;
		}
	}
	if (rc == PEFT_OK && *targets > 0)
		*loss = sum / *targets;
	free(ids);
	free(start);
	free(plen);
	return rc;
}
