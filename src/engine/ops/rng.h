/*
 * rng.h - a small deterministic random generator (splitmix64 seeding a
 * xoshiro256** state), so training is reproducible for a given seed.
 */
#ifndef PEFT_ENGINE_RNG_H
#define PEFT_ENGINE_RNG_H

#include <stdint.h>

typedef struct PeftRng
{
	uint64_t	s[4];
} PeftRng;

/* Seed the generator. */
void		peft_rng_seed(PeftRng *rng, uint64_t seed);

/* The next value of the splitmix64 sequence at *x (a well-mixed 64-bit function of it). */
uint64_t	peft_splitmix64(uint64_t *x);

/* Next 64 random bits. */
uint64_t	peft_rng_next(PeftRng *rng);

/* Uniform double in [0, 1). */
double		peft_rng_uniform(PeftRng *rng);

/* Uniform integer in [0, n). */
uint64_t	peft_rng_below(PeftRng *rng, uint64_t n);

#endif
