/*
 * trainer.c - optimizer steps, schedule, clipping and evaluation.
 */
#include "trainer.h"
#include "method_table.h"
#include "train_config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct Trainer
{
	Network    *net;
	const Dataset *ds;
	TrainOptions opts;
	uint32_t   *rows;			/* training rows */
	uint32_t   *order;			/* this epoch's order */
	StepCursor	at;				/* rows, position, epoch, steps */
	PeftRng		rng;
	BatchBuffer buf;
	size_t		activation_bytes;	/* of the largest batch (network_reserve) */
};

/*
 * The trainer's options of a training configuration: what peft_train's
 * options say (train_config.c's table), and AdamW's constants, which are
 * torch's and Hugging Face's defaults and not options.
 */
void
train_options_from_config(const PeftTrainConfig *c, TrainOptions *o)
{
	memset(o, 0, sizeof(*o));
	o->epochs = c->epochs;
	o->batch_size = c->batch_size;
	o->grad_accum = c->gradient_accumulation_steps;
	/* not given (0): the methods' own (method_table.c) */
	o->learning_rate = c->learning_rate > 0 ? c->learning_rate : methods_learning_rate(c->methods);
	o->weight_decay = c->weight_decay;
	o->beta1 = 0.9;
	o->beta2 = 0.999;
	o->adam_eps = 1e-8;
	o->warmup_ratio = c->warmup_ratio;
	o->warmup_steps = c->warmup_steps;
	o->schedule = c->schedule;
	o->max_grad_norm = c->max_grad_norm;
	o->max_steps = c->max_steps;
	o->group_by_length = c->group_by_length;
	o->shuffle = true;
	o->seed = c->seed;
}

/* peft_train's defaults (the option table's), as trainer options. */
void
train_options_default(TrainOptions *o)
{
	PeftTrainConfig c;

	train_config_default(&c);
	train_options_from_config(&c, o);
}

/* Warm-up steps for a run of total_steps. */
static int
warmup_steps(const TrainOptions *o, int total_steps)
{
	if (o->warmup_steps >= 0)
		return o->warmup_steps;
	return (int) ceil(o->warmup_ratio * total_steps);
}

/* Multiplier of the peak learning rate at optimizer step s (0-based), as transformers' schedulers. */
double
schedule_factor(const TrainOptions *o, int step, int total_steps)
{
	int			warm = warmup_steps(o, total_steps);
	double		progress;

	if (step < warm)
		return (double) step / (warm > 0 ? warm : 1);
	if (o->schedule == PEFT_SCHEDULE_CONSTANT)
		return 1.0;
	if (total_steps <= warm)
		return 0.0;
	progress = (double) (step - warm) / (total_steps - warm);
	if (o->schedule == PEFT_SCHEDULE_COSINE)
		return fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
	return fmax(0.0, 1.0 - progress);
}

/* Check training options. */
PeftCode
train_options_check(const TrainOptions *o, PeftError *err)
{
	if (o->epochs < 1 || o->epochs > 100000)
		return peft_fail(err, PEFT_ERR_INVALID, "epochs must be between 1 and 100000");
	if (o->batch_size < 1 || o->batch_size > 65536)
		return peft_fail(err, PEFT_ERR_INVALID, "batch_size must be between 1 and 65536");
	if (o->grad_accum < 1 || o->grad_accum > 65536)
		return peft_fail(err, PEFT_ERR_INVALID, "gradient_accumulation_steps must be between 1 and 65536");
	if (!(o->learning_rate > 0 && o->learning_rate < 10))
		return peft_fail(err, PEFT_ERR_INVALID, "learning_rate must be in (0, 10)");
	if (!(o->weight_decay >= 0 && o->weight_decay < 10))
		return peft_fail(err, PEFT_ERR_INVALID, "weight_decay must be in [0, 10)");
	if (!(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
		!(o->adam_eps > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "Adam betas must be in [0, 1) and eps positive");
	if (!(o->warmup_ratio >= 0 && o->warmup_ratio <= 1))
		return peft_fail(err, PEFT_ERR_INVALID, "warmup_ratio must be in [0, 1]");
	if (!(o->max_grad_norm >= 0))
		return peft_fail(err, PEFT_ERR_INVALID, "max_grad_norm must be non-negative");
	if (o->max_steps < 0)
		return peft_fail(err, PEFT_ERR_INVALID, "max_steps must not be negative");
	return PEFT_OK;
}

/* Put this epoch's row order in tr->order: shuffled, or as given (opts.shuffle false). */
static void
epoch_order(Trainer *tr)
{
	const TrainOptions *o = &tr->opts;

	if (!o->shuffle)
		memcpy(tr->order, tr->rows, tr->at.nrows * sizeof(uint32_t));
	else
		dataset_epoch_order(tr->ds, tr->rows, tr->at.nrows, o->batch_size,
							o->group_by_length, &tr->rng, tr->order);
}

/* Prepare training over the given rows. */
PeftCode
trainer_create(Network *net, const Dataset *ds, const uint32_t *rows,
			   size_t nrows, const TrainOptions *opts, Trainer **out,
			   PeftError *err)
{
	Trainer    *tr;
	PeftCode	rc;

	*out = NULL;
	if ((rc = train_options_check(opts, err)) != PEFT_OK)
		return rc;
	if (nrows == 0)
		return peft_fail(err, PEFT_ERR_INVALID, "no training rows");
	tr = calloc(1, sizeof(Trainer));
	if (tr == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the trainer");
	tr->net = net;
	tr->ds = ds;
	tr->opts = *opts;
	tr->rows = malloc(nrows * sizeof(uint32_t));
	tr->order = malloc(nrows * sizeof(uint32_t));
	if (tr->rows == NULL || tr->order == NULL)
	{
		trainer_free(tr);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory creating the trainer");
	}
	memcpy(tr->rows, rows, nrows * sizeof(uint32_t));
	if ((rc = step_cursor_init(&tr->at, nrows, opts, err)) != PEFT_OK)
	{
		trainer_free(tr);
		return rc;
	}
	peft_rng_seed(&tr->rng, opts->seed ^ 0x0bdeULL);
	epoch_order(tr);
	/*
	 * Size the buffers once for the longest rows: on a device so that steps
	 * allocate nothing; on the CPU only to learn their size (what
	 * peft.max_train_memory counts before the first step), then let them go
	 * and grow with the batches, which was a quarter faster on the CPU than
	 * training in buffers sized for the worst batch from the start.
	 */
	{
		int			longest = 1;

		for (size_t i = 0; i < nrows; i++)
			if (ds->rows[rows[i]].length > longest)
				longest = ds->rows[rows[i]].length;
		if ((rc = network_reserve(net, opts->batch_size, longest, true, err)) != PEFT_OK)
		{
			trainer_free(tr);
			return rc;
		}
		(void) network_memory(net, &tr->activation_bytes);
		if (net->be->host_memory)
			network_release_activations(net);
	}
	network_pin(net, true);
	*out = tr;
	return PEFT_OK;
}

/* Bytes of the row order arrays. */
size_t
trainer_memory(const Trainer *tr)
{
	return tr->at.nrows * sizeof(uint32_t) * 2;
}

/* Bytes of the activations of the run's largest batch. */
size_t
trainer_activation_bytes(const Trainer *tr)
{
	return tr->activation_bytes;
}

/* Total optimizer steps of the run. */
int
trainer_total_steps(const Trainer *tr)
{
	return tr->at.total_steps;
}

/* Release the trainer (not the network or data). */
void
trainer_free(Trainer *tr)
{
	if (tr == NULL)
		return;
	network_pin(tr->net, false);
	free(tr->rows);
	free(tr->order);
	batch_buffer_free(&tr->buf);
	free(tr);
}

PeftCode
step_cursor_init(StepCursor *c, size_t nrows, const TrainOptions *o, PeftError *err)
{
	size_t		batches = (nrows + o->batch_size - 1) / o->batch_size;
	size_t		per_epoch = (batches + o->grad_accum - 1) / o->grad_accum;

	memset(c, 0, sizeof(*c));
	c->nrows = nrows;
	if (o->max_steps == 0 && (double) o->epochs * per_epoch > INT32_MAX)
		return peft_fail(err, PEFT_ERR_INVALID, "epochs x steps per epoch exceeds %d steps", INT32_MAX);
	/* as Hugging Face's max_steps: it replaces epochs, and the schedule spans it */
	c->total_steps = o->max_steps > 0 ? o->max_steps : (int) (o->epochs * per_epoch);
	return PEFT_OK;
}

bool
step_begin(const StepCursor *c, const TrainOptions *o, PeftTrainProgress *st, int *micro)
{
	size_t		remaining = (c->nrows - c->position + o->batch_size - 1) / o->batch_size;

	memset(st, 0, sizeof(*st));
	if (c->step >= c->total_steps)
	{
		st->done = true;
		st->step = c->step;
		st->total_steps = c->total_steps;
		return false;
	}
	st->epoch = c->epoch + 1;
	*micro = remaining < (size_t) o->grad_accum ? (int) remaining : o->grad_accum;
	return true;
}

bool
step_end(StepCursor *c, PeftTrainProgress *st, double lr)
{
	st->learning_rate = lr;
	st->step = c->step;
	st->total_steps = c->total_steps;
	st->done = c->step >= c->total_steps;
	if (c->position < c->nrows)
		return false;
	st->epoch_end = true;
	c->position = 0;
	c->epoch++;
	return !st->done;
}

/* Run one optimizer step over grad_accum micro-batches. */
PeftCode
trainer_step(Trainer *tr, PeftTrainProgress *st, PeftError *err)
{
	const TrainOptions *o = &tr->opts;
	int			in_step;
	double		loss_sum = 0;
	double		lr;
	PeftCode	rc;

	if (!step_begin(&tr->at, o, st, &in_step))
		return PEFT_OK;
	if ((rc = network_zero_grads(tr->net, err)) != PEFT_OK)
		return rc;
	for (int micro = 0; micro < in_step; micro++)
	{
		size_t		count = tr->at.nrows - tr->at.position;
		Batch		batch;
		double		loss;

		if (count > (size_t) o->batch_size)
			count = o->batch_size;
		if ((rc = dataset_make_batch(tr->ds, tr->order + tr->at.position, (int) count,
									 &tr->buf, &batch, err)) != PEFT_OK ||
			(rc = network_forward(tr->net, &batch, true, NULL, &loss, err)) != PEFT_OK ||
			(rc = network_backward(tr->net, &batch, (real) (1.0 / in_step), err)) != PEFT_OK)
			return rc;
		if (!isfinite(loss))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "the loss became %g at step %d: lower learning_rate",
							 loss, tr->at.step + 1);
		loss_sum += loss / in_step;
		st->rows += (int) count;
		for (size_t i = 0; i < (size_t) batch.B * batch.T; i++)
			st->tokens += batch.mask[i];
		tr->at.position += count;
	}

	lr = o->learning_rate * schedule_factor(o, tr->at.step, tr->at.total_steps);
	tr->at.step++;
	if ((rc = network_optimizer_step(tr->net, lr, o->beta1, o->beta2, o->adam_eps,
									 o->weight_decay, tr->at.step, o->max_grad_norm,
									 &st->grad_norm, err)) != PEFT_OK)
		return rc;
	st->loss = loss_sum;
	/* next epoch: a fresh order */
	if (step_end(&tr->at, st, lr))
		epoch_order(tr);
	return PEFT_OK;
}

/* Running sums of an evaluation: per-class counts, or regression errors. */
typedef struct EvalTally
{
	int			K;
	bool		classify;
	size_t	   *tp;				/* per class: true positives, false positives, false negatives */
	size_t	   *fp;
	size_t	   *fn;
	size_t		correct;
	double		loss_sum;
	double		sum_y;			/* regression: sums of targets, their squares and errors */
	double		sum_y2;
	double		sse;
	double		sae;
} EvalTally;

/* Add count rows of a batch: head outputs out[count, K], labels or targets in batch. */
static void
tally_batch(EvalTally *t, const real *out, const Batch *batch, int count)
{
	int			K = t->K;

	for (int i = 0; i < count; i++)
	{
		if (t->classify)
		{
			int			best = 0;

			for (int k = 1; k < K; k++)
				if (out[i * K + k] > out[i * K + best])
					best = k;
			if (best == batch->labels[i])
			{
				t->correct++;
				t->tp[best]++;
			}
			else
			{
				t->fp[best]++;
				t->fn[batch->labels[i]]++;
			}
		}
		else
		{
			double		d = out[i] - batch->targets[i];

			t->sse += d * d;
			t->sae += fabs(d);
			t->sum_y += batch->targets[i];
			t->sum_y2 += (double) batch->targets[i] * batch->targets[i];
		}
	}
}

/* The metrics of nrows (> 0) tallied rows. */
static void
tally_metrics(const EvalTally *t, size_t nrows, PeftMetrics *m)
{
	m->rows = (int64_t) nrows;
	m->loss = t->loss_sum / nrows;
	if (t->classify)
	{
		double		f1_sum = 0;
		int			classes = 0;

		m->accuracy = (double) t->correct / nrows;
		/* macro-F1 over classes present in labels or predictions (as sklearn) */
		for (int k = 0; k < t->K; k++)
		{
			size_t		denom = 2 * t->tp[k] + t->fp[k] + t->fn[k];

			if (denom == 0)
				continue;
			f1_sum += 2.0 * t->tp[k] / denom;
			classes++;
		}
		m->macro_f1 = classes ? f1_sum / classes : 0;
	}
	else
	{
		double		mean = t->sum_y / nrows;
		double		sst = t->sum_y2 - nrows * mean * mean;

		m->mse = t->sse / nrows;
		m->mae = t->sae / nrows;
		m->r2 = sst > 0 ? 1.0 - t->sse / sst : 0.0;
	}
}

/* Evaluate the network on rows of ds in batches (no dropout). */
PeftCode
evaluate(Network *net, const Dataset *ds, const uint32_t *rows, size_t nrows,
		 int batch_size, PeftMetrics *m, PeftError *err)
{
	int			K = net->opts.num_labels;
	EvalTally	t = {.K = K, .classify = net->opts.task == PEFT_TASK_CLASSIFICATION};
	BatchBuffer buf = {0};
	real	   *out = malloc(sizeof(real) * (size_t) batch_size * K);
	PeftCode	rc = PEFT_OK;

	memset(m, 0, sizeof(*m));
	t.tp = calloc(K, sizeof(size_t));
	t.fp = calloc(K, sizeof(size_t));
	t.fn = calloc(K, sizeof(size_t));
	if (out == NULL || t.tp == NULL || t.fp == NULL || t.fn == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory evaluating");
	for (size_t pos = 0; rc == PEFT_OK && pos < nrows; pos += batch_size)
	{
		int			count = (int) ((nrows - pos) < (size_t) batch_size ? nrows - pos : (size_t) batch_size);
		Batch		batch;
		double		loss;

		if ((rc = dataset_make_batch(ds, rows + pos, count, &buf, &batch, err)) == PEFT_OK &&
			(rc = network_forward(net, &batch, false, out, &loss, err)) == PEFT_OK)
		{
			t.loss_sum += loss * count;
			tally_batch(&t, out, &batch, count);
		}
	}
	if (rc == PEFT_OK && nrows > 0)
		tally_metrics(&t, nrows, m);
	batch_buffer_free(&buf);
	free(out);
	free(t.tp);
	free(t.fp);
	free(t.fn);
	return rc;
}
