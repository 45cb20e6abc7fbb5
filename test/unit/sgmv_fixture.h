/*
 * sgmv_fixture.h - random cases of the gathered LoRA product (the
 * backend's lora_sgmv) shared by its CPU unit test and its GPU parity
 * test: segments of every awkward size (empty, one row, many; ranks 1 to
 * 256, rank 0), gaps of rows no segment owns, and row strides wider than
 * the matrices, so that what the op must not touch can be checked.
 */
#ifndef PEFT_SGMV_FIXTURE_H
#define PEFT_SGMV_FIXTURE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"

#define SGMV_CASE_SEGS 12
#define SGMV_PAD 5				/* extra columns of x's and out's row strides */

/* One case: the segments' A and B point into weights (host memory). */
typedef struct SgmvCase
{
	int			IN;
	int			OUT;
	int			ldx;
	int			ldo;
	int			N;				/* rows of x and out */
	int			nsegs;
	LoraSegment segs[SGMV_CASE_SEGS];
	size_t		a_off[SGMV_CASE_SEGS];	/* offsets of A and B in weights */
	size_t		b_off[SGMV_CASE_SEGS];
	real	   *weights;
	size_t		nweights;
	real	   *x;				/* [N, ldx] */
	real	   *out;			/* [N, ldo]: the output before the update */
} SgmvCase;

/* Uniform in [-bound, bound). */
static inline real
sgmv_uniform(PeftRng *rng, double bound)
{
	return (real) (bound * (2 * peft_rng_uniform(rng) - 1));
}

/* Point the segments' A and B into base (the weights' host or device copy). */
static inline void
sgmv_case_point(SgmvCase *c, const real *base)
{
	for (int s = 0; s < c->nsegs; s++)
	{
		c->segs[s].A = base + c->a_off[s];
		c->segs[s].B = base + c->b_off[s];
	}
}

/* A case over IN x OUT linears: segments of fixed awkward rows and ranks, random values. */
static inline void
sgmv_case_make(SgmvCase *c, int IN, int OUT, uint64_t seed)
{
	static const int rows[SGMV_CASE_SEGS] = {3, 0, 1, 40, 7, 0, 33, 1, 65, 2, 5, 17};
	static const int ranks[SGMV_CASE_SEGS] = {1, 8, 64, 256, 8, 1, 256, 64, 16, 0, 4, 8};
	PeftRng		rng;
	int			row = 2;		/* rows 0 and 1 belong to no segment */

	memset(c, 0, sizeof(*c));
	peft_rng_seed(&rng, seed);
	c->IN = IN;
	c->OUT = OUT;
	c->ldx = IN + SGMV_PAD;
	c->ldo = OUT + SGMV_PAD;
	c->nsegs = SGMV_CASE_SEGS;
	for (int s = 0; s < SGMV_CASE_SEGS; s++)
	{
		c->a_off[s] = c->nweights;
		c->nweights += (size_t) ranks[s] * IN;
		c->b_off[s] = c->nweights;
		c->nweights += (size_t) OUT * ranks[s];
		c->segs[s] = (LoraSegment) {NULL, NULL, row, rows[s], ranks[s],
			(real) (0.5 + s % 3)};
		row += rows[s] + (s % 4 == 0);	/* a gap of one row after some */
	}
	c->N = row + 1;
	c->weights = malloc(sizeof(real) * (c->nweights ? c->nweights : 1));
	c->x = malloc(sizeof(real) * c->N * c->ldx);
	c->out = malloc(sizeof(real) * c->N * c->ldo);
	for (size_t i = 0; i < c->nweights; i++)
		c->weights[i] = sgmv_uniform(&rng, 1.0 / sqrt((double) IN));
	for (size_t i = 0; i < (size_t) c->N * c->ldx; i++)
		c->x[i] = sgmv_uniform(&rng, 1.0);
	for (size_t i = 0; i < (size_t) c->N * c->ldo; i++)
		c->out[i] = sgmv_uniform(&rng, 1.0);
	sgmv_case_point(c, c->weights);
}

/* Free a case's arrays. */
static inline void
sgmv_case_free(SgmvCase *c)
{
	free(c->weights);
	free(c->x);
	free(c->out);
}

/* Whether row n belongs to a segment of c that adds something. */
static inline bool
sgmv_case_owns(const SgmvCase *c, int n)
{
	for (int s = 0; s < c->nsegs; s++)
		if (c->segs[s].rank > 0 && n >= c->segs[s].row0 && n < c->segs[s].row0 + c->segs[s].rows)
			return true;
	return false;
}

/* max |a - b| over max |b| (infinite on a non-finite value) over n elements. */
static inline double
sgmv_normwise(const real *a, const real *b, size_t n)
{
	double		diff = 0;
	double		top = 0;

	for (size_t i = 0; i < n; i++)
	{
		if (!isfinite((double) a[i]) || !isfinite((double) b[i]))
			return INFINITY;
		diff = fmax(diff, fabs((double) a[i] - (double) b[i]));
		top = fmax(top, fabs((double) b[i]));
	}
	return diff / fmax(top, 1e-30);
}

#endif
