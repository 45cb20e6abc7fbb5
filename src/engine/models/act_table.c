/*
 * act_table.c - the activation buffers' size table and its one allocation
 * (act_table.h).
 */
#include "act_table.h"

#include <stdlib.h>

/*
 * Every buffer starts on this boundary: CUDA kernels load vectors and the
 * CPU ops' loops vectorise, and the byte-sized dropout masks would
 * otherwise leave the buffers after them unaligned.
 */
#define ACT_ALIGN 256

/* Add a row; the table grows by doubling. */
void
act_add(ActTable *t, void *slot, ActSize size, size_t elem, unsigned when)
{
	if (t->failed)
		return;
	if (t->n == t->cap)
	{
		int			cap = t->cap ? t->cap * 2 : 128;
		ActRow	   *grown = realloc(t->rows, cap * sizeof(ActRow));

		if (grown == NULL)
		{
			t->failed = true;
			return;
		}
		t->rows = grown;
		t->cap = cap;
	}
	t->rows[t->n++] = (ActRow) {(void **) slot, size, elem, when};
}

/* Whether row r is part of the (train, device) layout. */
static bool
row_needed(const ActRow *r, bool train, bool device)
{
	return (!(r->when & ACT_TRAIN) || train) && (!(r->when & ACT_DEVICE) || device);
}

/* Bytes of row r for dims (an empty buffer still gets one element, as a non-NULL pointer). */
static size_t
row_bytes(const ActRow *r, const ActDims *d)
{
	size_t		n = r->size.rows * d->rows + r->size.probs * d->probs +
		r->size.seqs * d->seqs + r->size.ids * d->ids + r->size.fixed;

	return (n ? n : 1) * r->elem;
}

/* Lay the needed rows out in one zeroed allocation and point their slots into it. */
bool
act_table_allocate(ActTable *t, Backend *be, const ActDims *dims, bool train, bool device,
				   bool segment)
{
	size_t		total = 0;
	char	   *base;

	act_table_release(t, be);
	for (int i = 0; i < t->n; i++)
		if (row_needed(&t->rows[i], train, device) && !(segment && (t->rows[i].when & ACT_SHARED)))
			total += (row_bytes(&t->rows[i], dims) + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
	base = be->ops->alloc(be, total ? total : 1);
	if (base == NULL)
		return false;
	t->block = base;
	t->bytes = total;
	for (int i = 0; i < t->n; i++)
		if (row_needed(&t->rows[i], train, device) && !(segment && (t->rows[i].when & ACT_SHARED)))
		{
			*t->rows[i].slot = base;
			base += (row_bytes(&t->rows[i], dims) + ACT_ALIGN - 1) / ACT_ALIGN * ACT_ALIGN;
		}
	return true;
}

/* Release the allocation (be NULL: forget it, already freed); every slot reads NULL again. */
void
act_table_release(ActTable *t, Backend *be)
{
	if (t->block && be)
		be->ops->release(be, t->block);
	t->block = NULL;
	t->bytes = 0;
	for (int i = 0; i < t->n; i++)
		*t->rows[i].slot = NULL;
}

/* Free the rows. */
void
act_table_free(ActTable *t)
{
	free(t->rows);
	t->rows = NULL;
	t->n = t->cap = 0;
}
