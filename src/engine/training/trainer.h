/*
 * trainer.h - the training loop as a step function: AdamW with decoupled
 * weight decay, linear warm-up then linear or cosine decay, clipping by
 * global norm, gradient accumulation, length-grouped batches, and
 * validation metrics.  The caller drives it one optimizer step at a time
 * (the CLI in a loop; the background worker between progress reports and
 * cancellation checks), so nothing in here calls back into the caller.
 */
#ifndef PEFT_ENGINE_TRAINER_H
#define PEFT_ENGINE_TRAINER_H

#include <stdbool.h>
#include <stdint.h>
#include "dataset.h"
#include "engine_api.h"
#include "network.h"

typedef struct TrainOptions
{
	int			epochs;
	int			batch_size;
	int			grad_accum;		/* micro-batches per optimizer step */
	double		learning_rate;
	double		weight_decay;
	double		beta1;
	double		beta2;
	double		adam_eps;
	double		warmup_ratio;	/* of total steps, when warmup_steps < 0 */
	int			warmup_steps;
	PeftSchedule schedule;
	double		max_grad_norm;	/* 0: no clipping */
	int			max_steps;		/* > 0: exactly this many steps, over as many epochs as it takes */
	bool		group_by_length;
	/*
	 * false: every epoch takes the rows in the order given (batch b is
	 * rows[b * batch_size ...]), so a test can replay a reference run's
	 * batches step by step; peft_train always shuffles.
	 */
	bool		shuffle;
	uint64_t	seed;
} TrainOptions;

/* The trainer's options of a training configuration (AdamW's constants added). */
void		train_options_from_config(const PeftTrainConfig *c, TrainOptions *o);
/* peft_train's defaults, as trainer options. */
void		train_options_default(TrainOptions *o);

/* Check the options' ranges (a clear error naming the first bad one). */
PeftCode	train_options_check(const TrainOptions *o, PeftError *err);

/* Multiplier of the peak learning rate at optimizer step s (0-based). */
double		schedule_factor(const TrainOptions *o, int step, int total_steps);

/*
 * Where a run stands, for the step functions of the encoder's trainer and
 * the decoder's (decoder_trainer.c): rows in this epoch's order, the next
 * one, the 0-based epoch, the steps done of total.
 */
typedef struct StepCursor
{
	size_t		nrows;
	size_t		position;
	int			epoch;
	int			step;
	int			total_steps;
} StepCursor;

/*
 * A cursor at the start of a run over nrows rows: total_steps from
 * max_steps, else epochs (as Hugging Face counts them); an error when that
 * passes INT32_MAX.
 */
PeftCode	step_cursor_init(StepCursor *c, size_t nrows, const TrainOptions *o, PeftError *err);

/*
 * Start a step report: false (and st says done) when no step remains;
 * else *micro receives the step's micro-batches, which never cross an
 * epoch boundary (as Hugging Face's).
 */
bool		step_begin(const StepCursor *c, const TrainOptions *o, PeftTrainProgress *st, int *micro);
/*
 * Finish a step that ran with learning rate lr: count it, report it in st
 * and move to the next epoch when the rows are used up; true when a new
 * epoch's order is needed.
 */
bool		step_end(StepCursor *c, PeftTrainProgress *st, double lr);

typedef struct Trainer Trainer;

/* Prepare training over the given rows of ds (indices copied). */
PeftCode	trainer_create(Network *net, const Dataset *ds, const uint32_t *rows,
						   size_t nrows, const TrainOptions *opts,
						   Trainer **out, PeftError *err);
/* Run one optimizer step; step->done when training is complete. */
PeftCode	trainer_step(Trainer *tr, PeftTrainProgress *step, PeftError *err);
int			trainer_total_steps(const Trainer *tr);
/* Bytes the trainer holds besides the network and the data (row orders). */
size_t		trainer_memory(const Trainer *tr);
/* Bytes of the activations of the run's largest batch. */
size_t		trainer_activation_bytes(const Trainer *tr);
void		trainer_free(Trainer *tr);

/* Evaluate the network on rows of ds in batches (no dropout). */
PeftCode	evaluate(Network *net, const Dataset *ds, const uint32_t *rows,
					 size_t nrows, int batch_size, PeftMetrics *m,
					 PeftError *err);

#endif
