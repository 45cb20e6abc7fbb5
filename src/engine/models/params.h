/*
 * params.h - the trainable parameters of an adapter, named as Hugging Face
 * PEFT names them, in one contiguous buffer each for values, gradients and
 * the two AdamW moments (so clipping and the optimizer are single loops,
 * and the CUDA backend can upload each with one copy).
 */
#ifndef PEFT_ENGINE_PARAMS_H
#define PEFT_ENGINE_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "real.h"
#include "status.h"

#define PARAM_NAME_LEN 192

typedef struct Param
{
	char		name[PARAM_NAME_LEN];
	int			ndim;
	int64_t		shape[2];
	size_t		offset;			/* into the buffers, in reals */
	size_t		count;
} Param;

typedef struct ParamSet
{
	Param	   *items;
	int			count;
	int			capacity;
	size_t		total;			/* reals in each buffer */
	real	   *values;
	real	   *grads;
	real	   *adam_m;
	real	   *adam_v;
} ParamSet;

/* Declare a parameter (before paramset_allocate); returns its index or -1. */
int			paramset_add(ParamSet *set, const char *name, int ndim,
						 int64_t d0, int64_t d1, PeftError *err);
/*
 * Allocate the zeroed buffers once every parameter is declared: values, and
 * for training gradients and Adam's moments (else those stay NULL).
 */
PeftCode	paramset_allocate(ParamSet *set, bool training, PeftError *err);
/* Release the buffers and the list. */
void		paramset_free(ParamSet *set);
/* Index of a parameter by name, or -1. */
int			paramset_find(const ParamSet *set, const char *name);

/* Value and gradient of parameter i. */
static inline real *
param_value(const ParamSet *set, int i)
{
	return set->values + set->items[i].offset;
}

static inline real *
param_grad(const ParamSet *set, int i)
{
	return set->grads + set->items[i].offset;
}

#endif
