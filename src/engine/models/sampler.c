/*
 * sampler.c - greedy decoding and temperature / top-k / top-p sampling.
 */
#define _GNU_SOURCE				/* qsort_r */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

PeftCode
sampler_check(const SamplerOptions *o, PeftError *err)
{
	if (!(o->temperature >= 0) || !isfinite(o->temperature))
		return peft_fail(err, PEFT_ERR_INVALID, "temperature %g is not a number >= 0", o->temperature);
	if (o->top_k < 0)
		return peft_fail(err, PEFT_ERR_INVALID, "top_k %d is negative", o->top_k);
	if (!(o->top_p > 0 && o->top_p <= 1))
		return peft_fail(err, PEFT_ERR_INVALID, "top_p %g is not in (0, 1]", o->top_p);
	return PEFT_OK;
}

size_t
sampler_scratch_bytes(int vocab)
{
	return (size_t) vocab * (sizeof(float) + sizeof(int32_t));
}

/* The first index of the largest logit (as torch.argmax). */
static int32_t
argmax(const float *logits, int vocab)
{
	int32_t		best = 0;

	for (int i = 1; i < vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

/* Order token indexes by descending logit, ties by index (a total order: deterministic). */
static int
by_logit_desc(const void *a, const void *b, void *keys)
{
	const float *sort_keys = keys;
	int32_t		i = *(const int32_t *) a,
				j = *(const int32_t *) b;

	if (sort_keys[i] != sort_keys[j])
		return sort_keys[i] > sort_keys[j] ? -1 : 1;
	return i < j ? -1 : i > j;
}

int32_t
sampler_next(const float *logits, int vocab, const SamplerOptions *o, PeftRng *rng, void *scratch)
{
	float	   *p = scratch;
	int32_t    *order = (int32_t *) (p + vocab);
	int			keep = vocab;
	double		total = 0,
				cum = 0,
				u;

	if (o->temperature == 0)
		return argmax(logits, vocab);
	for (int i = 0; i < vocab; i++)
		order[i] = i;
	/*
	 * A full sort of 50k entries costs about a millisecond; with top_k the
	 * candidates are the k best, found by the same sort (kept simple: one
	 * decoding step's products cost far more).
	 */
	qsort_r(order, vocab, sizeof(int32_t), by_logit_desc, (void *) logits);
	if (o->top_k > 0 && o->top_k < keep)
		keep = o->top_k;
	/* softmax of logits / temperature over the kept tokens, stable from the largest */
	for (int i = 0; i < keep; i++)
	{
		p[i] = (float) exp(((double) logits[order[i]] - logits[order[0]]) / o->temperature);
		total += p[i];
	}
	/* top-p: the smallest prefix whose probability reaches top_p (at least one token) */
	if (o->top_p < 1)
	{
		int			n = 0;

		for (; n < keep; n++)
		{
			cum += p[n] / total;
			if (cum >= o->top_p)
			{
				n++;
				break;
			}
		}
		keep = n < 1 ? 1 : n;
		total = 0;
		for (int i = 0; i < keep; i++)
			total += p[i];
	}
	u = peft_rng_uniform(rng) * total;
	cum = 0;
	for (int i = 0; i < keep; i++)
	{
		cum += p[i];
		if (u < cum)
			return order[i];
	}
	return order[keep - 1];
}
