/*
 * sampler.h - the next token from a row of logits: greedy (temperature 0)
 * or sampled after temperature, top-k and top-p, in that order, as
 * Hugging Face's generate applies its logits warpers.  Deterministic for a
 * seed: the random numbers come from the engine's own generator (rng.h).
 */
#ifndef PEFT_ENGINE_SAMPLER_H
#define PEFT_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>
#include "rng.h"
#include "status.h"

typedef struct SamplerOptions
{
	double		temperature;	/* 0: greedy */
	int			top_k;			/* 0: every token */
	double		top_p;			/* 1: every token */
} SamplerOptions;

/* Check the options' ranges (temperature >= 0, top_k >= 0, top_p in (0, 1]). */
PeftCode	sampler_check(const SamplerOptions *opts, PeftError *err);

/*
 * The next token of logits[vocab].  scratch holds vocab floats and vocab
 * ints (sampler_scratch_bytes); logits are not changed.
 */
int32_t		sampler_next(const float *logits, int vocab, const SamplerOptions *opts,
						 PeftRng *rng, void *scratch);

/* Bytes of scratch sampler_next needs for a vocabulary. */
size_t		sampler_scratch_bytes(int vocab);

#endif
