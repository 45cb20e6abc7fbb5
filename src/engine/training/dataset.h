/*
 * dataset.h - tokenised training rows kept compactly (one int32 array of
 * token ids plus a small record per row), the deterministic validation
 * split, and length-grouped batching that cuts padding.
 */
#ifndef PEFT_ENGINE_DATASET_H
#define PEFT_ENGINE_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "network.h"
#include "rng.h"
#include "status.h"
#include "tokenizer.h"

typedef struct Example
{
	size_t		offset;			/* into Dataset.tokens */
	int32_t		length;			/* tokens including [CLS] and [SEP] */
	int32_t		label;			/* class index (classification) */
	real		target;			/* value (regression) */
	int32_t		prompt_len;		/* generation: leading tokens without loss (the prompt) */
} Example;

typedef struct Dataset
{
	int32_t    *tokens;
	size_t		ntokens;
	size_t		cap_tokens;
	Example    *rows;
	size_t		count;
	size_t		cap_rows;
	size_t		memory_limit;	/* bytes; 0 = unlimited */
	bool		held_out;		/* rows from first_held_out on are the validation rows */
	size_t		first_held_out;
} Dataset;

/* Tokenise text and append it as a row (fails past memory_limit). */
PeftCode	dataset_add(Dataset *ds, const Tokenizer *tok, const char *text,
						size_t len, int max_length, int32_t label, real target,
						PeftError *err);
/*
 * Append a row of token ids as they are (a decoder's prompt and completion,
 * the first prompt_len of them the prompt); fails past memory_limit.
 */
PeftCode	dataset_add_ids(Dataset *ds, const int32_t *ids, int n, int prompt_len,
							PeftError *err);
/* Bytes of the rows held (token ids and row records). */
size_t		dataset_memory(const Dataset *ds);
void		dataset_free(Dataset *ds);

/*
 * Split rows deterministically (seeded shuffle): the first
 * round(fraction * count) shuffled rows go to *valid, the rest to *train;
 * both are index arrays the caller frees.  With held_out set, the rows
 * from first_held_out on are *valid and the others *train (fraction
 * unused), each in the order of their contents.
 */
PeftCode	dataset_split(const Dataset *ds, double fraction, uint64_t seed,
						  uint32_t **train, size_t *ntrain,
						  uint32_t **valid, size_t *nvalid, PeftError *err);

/*
 * Order rows for one epoch: shuffle, then within windows of 50 batches sort
 * by length so each batch pads little, then shuffle the batches.  order
 * receives n indices; batch b is order[b*batch_size ...].
 */
void		dataset_epoch_order(const Dataset *ds, const uint32_t *rows, size_t n,
								int batch_size, bool group_by_length,
								PeftRng *rng, uint32_t *order);

/* Reusable padded batch storage. */
typedef struct BatchBuffer
{
	int32_t    *ids;
	int32_t    *mask;
	int32_t    *labels;
	real	   *targets;
	size_t		cap;			/* cells of ids/mask */
	int			cap_rows;
} BatchBuffer;

/* Build a right-padded batch of the given rows into buf; batch points into it. */
PeftCode	dataset_make_batch(const Dataset *ds, const uint32_t *rows, int count,
							   BatchBuffer *buf, Batch *batch, PeftError *err);
void		batch_buffer_free(BatchBuffer *buf);

#endif
