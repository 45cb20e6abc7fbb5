/*
 * act_table.h - activation buffers as a table: each row names a pointer,
 * how many elements it needs for a batch (a formula in the batch's
 * dimensions), the element size and when it is needed.  The network builds
 * the table once (its own rows, the block's, each method module's); every
 * growth walks it once to lay the buffers out in one allocation.
 */
#ifndef PEFT_ENGINE_ACT_TABLE_H
#define PEFT_ENGINE_ACT_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include "backend.h"

/*
 * Elements of a buffer: rows * packed rows + probs * attention elements +
 * seqs * sequences + ids * padded token ids + fixed.
 */
typedef struct ActSize
{
	size_t		rows;
	size_t		probs;
	size_t		seqs;
	size_t		ids;
	size_t		fixed;
} ActSize;

/* The batch dimensions a layout holds. */
typedef struct ActDims
{
	size_t		rows;
	size_t		probs;
	size_t		seqs;
	size_t		ids;
} ActDims;

/* When a buffer is needed (bits; none: always). */
#define ACT_TRAIN	0x1			/* only in the training layout (kept for backward) */
#define ACT_DEVICE	0x2			/* only on a device (the CPU uses the host arrays) */
#define ACT_SHARED	0x4			/* the network's own forward: not in a mixed batch's segment
								 * layout, where the hosting network computes those */

typedef struct ActRow
{
	void	  **slot;			/* the pointer the buffer's address goes to */
	ActSize		size;
	size_t		elem;			/* bytes per element */
	unsigned	when;			/* ACT_* */
} ActRow;

typedef struct ActTable
{
	ActRow	   *rows;
	int			n;
	int			cap;
	bool		failed;			/* a row could not be added (out of host memory) */
	void	   *block;			/* the one allocation in the backend, or NULL */
	size_t		bytes;			/* its size */
} ActTable;

/* Add a row (a failure is remembered in t->failed). */
void		act_add(ActTable *t, void *slot, ActSize size, size_t elem, unsigned when);

/* Add a row for the pointer p, its element size taken from its type. */
#define ACT_ADD(t, p, size, when) act_add((t), (void *) &(p), (size), sizeof(*(p)), (when))

/* ACT_TRAIN for the buffers of layer slot s > 0: inference keeps one layer's. */
static inline unsigned
act_layer_when(int s)
{
	return s > 0 ? ACT_TRAIN : 0;
}

/*
 * Lay out the rows needed by (train, device; segment: no ACT_SHARED row) for dims in one zeroed
 * allocation in be, and point every slot into it (the others at NULL).
 * False when the allocation failed (be records why; every slot is NULL).
 */
bool		act_table_allocate(ActTable *t, Backend *be, const ActDims *dims,
							   bool train, bool device, bool segment);

/*
 * Release the allocation and set every slot to NULL; be NULL forgets it
 * (the backend's idle release already freed it).
 */
void		act_table_release(ActTable *t, Backend *be);

/* Free the table itself (after act_table_release). */
void		act_table_free(ActTable *t);

#endif
