/*
 * params.c - named trainable parameters in contiguous buffers.
 */
#include "params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Declare a parameter; returns its index, or -1 with err set. */
int
paramset_add(ParamSet *set, const char *name, int ndim, int64_t d0,
			 int64_t d1, PeftError *err)
{
	Param	   *p;

	if (set->values != NULL)
	{
		peft_fail(err, PEFT_ERR_INTERNAL, "parameter \"%s\" declared after allocation", name);
		return -1;
	}
	if (set->count == set->capacity)
	{
		int			cap = set->capacity ? set->capacity * 2 : 32;
		Param	   *grown = realloc(set->items, cap * sizeof(Param));

		if (grown == NULL)
		{
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory declaring parameters");
			return -1;
		}
		set->items = grown;
		set->capacity = cap;
	}
	p = &set->items[set->count];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->ndim = ndim;
	p->shape[0] = d0;
	p->shape[1] = ndim > 1 ? d1 : 1;
	p->count = (size_t) d0 * (ndim > 1 ? (size_t) d1 : 1);
	p->offset = set->total;
	set->total += p->count;
	return set->count++;
}

/*
 * Allocate the zeroed buffers once every parameter is declared: the values,
 * and for training the gradients and Adam's moments (NULL otherwise).
 */
PeftCode
paramset_allocate(ParamSet *set, bool training, PeftError *err)
{
	size_t		n = set->total ? set->total : 1;

	set->values = calloc(n, sizeof(real));
	set->grads = training ? calloc(n, sizeof(real)) : NULL;
	set->adam_m = training ? calloc(n, sizeof(real)) : NULL;
	set->adam_v = training ? calloc(n, sizeof(real)) : NULL;
	if (!set->values || (training && (!set->grads || !set->adam_m || !set->adam_v)))
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory allocating %zu parameters", n);
	return PEFT_OK;
}

/* Release the buffers and the list. */
void
paramset_free(ParamSet *set)
{
	free(set->items);
	free(set->values);
	free(set->grads);
	free(set->adam_m);
	free(set->adam_v);
	memset(set, 0, sizeof(*set));
}

/* Index of a parameter by name, or -1. */
int
paramset_find(const ParamSet *set, const char *name)
{
	for (int i = 0; i < set->count; i++)
		if (strcmp(set->items[i].name, name) == 0)
			return i;
	return -1;
}
