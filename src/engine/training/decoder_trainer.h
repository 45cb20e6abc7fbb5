/*
 * decoder_trainer.h - the training loop of an adapter over a decoder, as a
 * step function like trainer.h's: micro-batches of prompt/completion rows
 * packed without padding, the loss averaged over every completion token of
 * the optimizer step (as transformers' Trainer averages over the items of
 * an accumulated step), clipping by global norm, AdamW, the same warm-up
 * and decay schedules, and validation loss.
 */
#ifndef PEFT_ENGINE_DECODER_TRAINER_H
#define PEFT_ENGINE_DECODER_TRAINER_H

#include "causal_lm.h"
#include "dataset.h"
#include "trainer.h"

typedef struct DecoderTrainer DecoderTrainer;

/* Prepare training of lm's adapter over rows of ds (indices copied). */
PeftCode	decoder_trainer_create(CausalLM *lm, DecoderAdapter *ad, const Dataset *ds,
								   const uint32_t *rows, size_t nrows, const TrainOptions *opts,
								   DecoderTrainer **out, PeftError *err);
/* One optimizer step; step->done when training is complete. */
PeftCode	decoder_trainer_step(DecoderTrainer *tr, PeftTrainProgress *step, PeftError *err);
int			decoder_trainer_total_steps(const DecoderTrainer *tr);
/* Bytes of the row orders, and of the activations of the run's largest micro-batch. */
size_t		decoder_trainer_memory(const DecoderTrainer *tr);
size_t		decoder_trainer_activation_bytes(const DecoderTrainer *tr);
void		decoder_trainer_free(DecoderTrainer *tr);

/*
 * The mean loss over the completion tokens of rows of ds, in micro-batches
 * of batch_size (no gradients); *targets the tokens it averaged over.
 */
PeftCode	decoder_evaluate_loss(CausalLM *lm, const Dataset *ds, const uint32_t *rows,
								  size_t nrows, int batch_size, double *loss, int64_t *targets,
								  PeftError *err);

#endif
