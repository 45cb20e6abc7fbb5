/*
 * rng.c - deterministic random numbers (xoshiro256**).
 */
#include "rng.h"

/* One splitmix64 step: spreads a seed over the state (and derives seeds, generate.c). */
uint64_t
peft_splitmix64(uint64_t *x)
{
	uint64_t	z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Seed the generator. */
void
peft_rng_seed(PeftRng *rng, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		rng->s[i] = peft_splitmix64(&seed);
}

/* Rotate left. */
static inline uint64_t
rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* Next 64 random bits. */
uint64_t
peft_rng_next(PeftRng *rng)
{
	uint64_t   *s = rng->s;
	uint64_t	result = rotl(s[1] * 5, 7) * 9;
	uint64_t	t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

/* Uniform double in [0, 1) from the top 53 bits. */
double
peft_rng_uniform(PeftRng *rng)
{
	return (peft_rng_next(rng) >> 11) * 0x1.0p-53;
}

/* Uniform integer in [0, n), by rejection to avoid modulo bias. */
uint64_t
peft_rng_below(PeftRng *rng, uint64_t n)
{
	uint64_t	limit;
	uint64_t	x;

	if (n <= 1)
		return 0;
	limit = UINT64_MAX - UINT64_MAX % n;
	do
		x = peft_rng_next(rng);
	while (x >= limit);
	return x % n;
}
