/*
 * dataset.c - compact tokenised rows, validation split, batching.
 */
#define _GNU_SOURCE				/* qsort_r */
#include "dataset.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Bytes of n elements of size sz, whole pages (what a mapping spans). */
static size_t
mapped_bytes(size_t n, size_t sz)
{
	size_t		page = (size_t) sysconf(_SC_PAGESIZE);

	return (n * sz + page - 1) / page * page;
}

/*
 * Grow an array to hold need elements of size sz (doubling).  The arrays
 * are their own mappings, grown by mremap: pages move without a copy, so a
 * doubling never holds the old and the new array at once (realloc's copy
 * did, and the peak memory of a job reading a big table was twice its
 * rows).  Pages never written stay unallocated.
 */
static int
grow(void **ptr, size_t *cap, size_t need, size_t sz)
{
	size_t		ncap;
	void	   *p;

	if (need <= *cap)
		return 0;
	ncap = *cap ? *cap : 1024;
	while (ncap < need)
		ncap *= 2;
	if (*ptr == NULL)
		p = mmap(NULL, mapped_bytes(ncap, sz), PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	else
		p = mremap(*ptr, mapped_bytes(*cap, sz), mapped_bytes(ncap, sz), MREMAP_MAYMOVE);
	if (p == MAP_FAILED)
		return -1;
	*ptr = p;
	*cap = ncap;
	return 0;
}

/* Bytes of the dataset's rows (what is written: unwritten capacity takes no memory). */
size_t
dataset_memory(const Dataset *ds)
{
	return ds->ntokens * sizeof(int32_t) + ds->count * sizeof(Example);
}

/* Tokenise text and append it as a row. */
PeftCode
dataset_add(Dataset *ds, const Tokenizer *tok, const char *text, size_t len,
			int max_length, int32_t label, real target, PeftError *err)
{
	Example    *ex;
	int			n;

	if (max_length < 2)
		return peft_fail(err, PEFT_ERR_INVALID, "max_length must be at least 2");
	if (grow((void **) &ds->tokens, &ds->cap_tokens, ds->ntokens + max_length,
			 sizeof(int32_t)) != 0 ||
		grow((void **) &ds->rows, &ds->cap_rows, ds->count + 1, sizeof(Example)) != 0)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory holding %zu training rows", ds->count);
	if (ds->memory_limit && dataset_memory(ds) + (size_t) max_length * sizeof(int32_t) +
		sizeof(Example) > ds->memory_limit)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "the tokenised training data exceeds the memory limit of %zu kB "
						 "after %zu rows", ds->memory_limit / 1024, ds->count);
	n = tokenizer_encode(tok, text, len, max_length, ds->tokens + ds->ntokens);
	ex = &ds->rows[ds->count++];
	ex->offset = ds->ntokens;
	ex->length = n;
	ex->label = label;
	ex->target = target;
	ex->prompt_len = 0;
	ds->ntokens += n;
	return PEFT_OK;
}

/* Append a row of token ids (a decoder's prompt and completion). */
PeftCode
dataset_add_ids(Dataset *ds, const int32_t *ids, int n, int prompt_len, PeftError *err)
{
	Example    *ex;

	if (n < 1 || prompt_len < 0 || prompt_len > n)
		return peft_fail(err, PEFT_ERR_INVALID, "a row of %d tokens with a prompt of %d", n, prompt_len);
	if (grow((void **) &ds->tokens, &ds->cap_tokens, ds->ntokens + n, sizeof(int32_t)) != 0 ||
		grow((void **) &ds->rows, &ds->cap_rows, ds->count + 1, sizeof(Example)) != 0)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory holding %zu training rows", ds->count);
	if (ds->memory_limit && dataset_memory(ds) + (size_t) n * sizeof(int32_t) +
		sizeof(Example) > ds->memory_limit)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "the tokenised training data exceeds the memory limit of %zu kB "
						 "after %zu rows", ds->memory_limit / 1024, ds->count);
	memcpy(ds->tokens + ds->ntokens, ids, sizeof(int32_t) * n);
	ex = &ds->rows[ds->count++];
	memset(ex, 0, sizeof(*ex));
	ex->offset = ds->ntokens;
	ex->length = n;
	ex->prompt_len = prompt_len;
	ds->ntokens += n;
	return PEFT_OK;
}

/* Release the dataset's memory. */
void
dataset_free(Dataset *ds)
{
	if (ds->tokens)
		munmap(ds->tokens, mapped_bytes(ds->cap_tokens, sizeof(int32_t)));
	if (ds->rows)
		munmap(ds->rows, mapped_bytes(ds->cap_rows, sizeof(Example)));
	memset(ds, 0, sizeof(*ds));
}

/* Fisher-Yates shuffle of idx[n]. */
static void
shuffle(uint32_t *idx, size_t n, PeftRng *rng)
{
	for (size_t i = n; i > 1; i--)
	{
		size_t		j = peft_rng_below(rng, i);
		uint32_t	t = idx[i - 1];

		idx[i - 1] = idx[j];
		idx[j] = t;
	}
}

/* qsort_r comparator: rows by tokens, then label, then target. */
static int
by_content(const void *a, const void *b, void *arg)
{
	const Dataset *ds = arg;
	const Example *ea = &ds->rows[*(const uint32_t *) a];
	const Example *eb = &ds->rows[*(const uint32_t *) b];
	int32_t		n = ea->length < eb->length ? ea->length : eb->length;
	int			cmp = 0;

	for (int32_t i = 0; i < n && cmp == 0; i++)
		cmp = (ds->tokens[ea->offset + i] > ds->tokens[eb->offset + i]) -
			(ds->tokens[ea->offset + i] < ds->tokens[eb->offset + i]);
	if (cmp == 0)
		cmp = (ea->length > eb->length) - (ea->length < eb->length);
	if (cmp == 0)
		cmp = (ea->label > eb->label) - (ea->label < eb->label);
	if (cmp == 0)
		cmp = (ea->target > eb->target) - (ea->target < eb->target);
	return cmp;
}

/* Split rows deterministically into train and validation index arrays. */
PeftCode
dataset_split(const Dataset *ds, double fraction, uint64_t seed,
			  uint32_t **train, size_t *ntrain, uint32_t **valid,
			  size_t *nvalid, PeftError *err)
{
	uint32_t   *all;
	size_t		nv;
	PeftRng		rng;

	if (!(fraction >= 0 && fraction < 1))
		return peft_fail(err, PEFT_ERR_INVALID, "validation_fraction must be in [0, 1)");
	all = malloc((ds->count ? ds->count : 1) * sizeof(uint32_t));
	*valid = malloc((ds->count ? ds->count : 1) * sizeof(uint32_t));
	if (all == NULL || *valid == NULL)
	{
		free(all);
		free(*valid);
		*valid = NULL;
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory splitting the data");
	}
	for (size_t i = 0; i < ds->count; i++)
		all[i] = (uint32_t) i;
	/*
	 * Put the rows in an order that depends only on their contents before
	 * the seeded shuffle: a table's physical order changes with COPY's
	 * buffering, updates and VACUUM, and the same rows and seed must give
	 * the same adapter however they were stored or read.
	 */
	if (ds->held_out)
	{
		/* the caller's own validation rows; content order, as for the split */
		nv = ds->count - ds->first_held_out;
		memcpy(*valid, all + ds->first_held_out, nv * sizeof(uint32_t));
		qsort_r(all, ds->first_held_out, sizeof(uint32_t), by_content, (void *) ds);
		qsort_r(*valid, nv, sizeof(uint32_t), by_content, (void *) ds);
		*nvalid = nv;
		*train = all;
		*ntrain = ds->first_held_out;
		return PEFT_OK;
	}
	qsort_r(all, ds->count, sizeof(uint32_t), by_content, (void *) ds);
	peft_rng_seed(&rng, seed ^ 0x7a11da7aULL);
	shuffle(all, ds->count, &rng);
	nv = (size_t) (fraction * ds->count + 0.5);
	if (fraction > 0 && nv == 0 && ds->count > 1)
		nv = 1;
	if (nv >= ds->count)
		nv = ds->count - (ds->count > 0);
	memcpy(*valid, all, nv * sizeof(uint32_t));
	memmove(all, all + nv, (ds->count - nv) * sizeof(uint32_t));
	*nvalid = nv;
	*train = all;
	*ntrain = ds->count - nv;
	return PEFT_OK;
}

/* qsort_r comparator: longer rows first, then by content (never by position). */
static int
by_length_desc(const void *a, const void *b, void *arg)
{
	const Dataset *ds = arg;
	int32_t		la = ds->rows[*(const uint32_t *) a].length;
	int32_t		lb = ds->rows[*(const uint32_t *) b].length;

	if (la != lb)
		return la > lb ? -1 : 1;
	return by_content(a, b, arg);
}

/* Order rows for one epoch, grouping similar lengths into batches. */
void
dataset_epoch_order(const Dataset *ds, const uint32_t *rows, size_t n,
					int batch_size, bool group_by_length, PeftRng *rng,
					uint32_t *order)
{
	size_t		window = (size_t) batch_size * 50;
	size_t		nbatches = (n + batch_size - 1) / batch_size;
	uint32_t   *perm;
	uint32_t   *tmp;

	memcpy(order, rows, n * sizeof(uint32_t));
	shuffle(order, n, rng);
	if (!group_by_length || n <= (size_t) batch_size)
		return;
	for (size_t w = 0; w < n; w += window)
		qsort_r(order + w, (n - w < window) ? n - w : window, sizeof(uint32_t),
				by_length_desc, (void *) ds);

	/* shuffle whole batches so lengths do not follow a pattern; the last
	 * (possibly short) batch keeps its place at the end */
	perm = malloc(nbatches * sizeof(uint32_t));
	tmp = malloc(n * sizeof(uint32_t));
	if (perm == NULL || tmp == NULL)
	{
		free(perm);
		free(tmp);
		return;					/* grouped but unshuffled batches are still valid */
	}
	for (size_t b = 0; b < nbatches; b++)
		perm[b] = (uint32_t) b;
	shuffle(perm, nbatches - (n % batch_size != 0), rng);
	for (size_t b = 0, out = 0; b < nbatches; b++)
	{
		size_t		start = (size_t) perm[b] * batch_size;
		size_t		len = (start + batch_size <= n) ? (size_t) batch_size : n - start;

		memcpy(tmp + out, order + start, len * sizeof(uint32_t));
		out += len;
	}
	memcpy(order, tmp, n * sizeof(uint32_t));
	free(perm);
	free(tmp);
}

/* Build a right-padded batch of the given rows. */
PeftCode
dataset_make_batch(const Dataset *ds, const uint32_t *rows, int count,
				   BatchBuffer *buf, Batch *batch, PeftError *err)
{
	int			T = 2;
	size_t		cells;

	for (int i = 0; i < count; i++)
		if (ds->rows[rows[i]].length > T)
			T = ds->rows[rows[i]].length;
	cells = (size_t) count * T;
	if (cells > buf->cap || count > buf->cap_rows)
	{
		batch_buffer_free(buf);
		buf->ids = malloc(cells * sizeof(int32_t));
		buf->mask = malloc(cells * sizeof(int32_t));
		buf->labels = malloc(count * sizeof(int32_t));
		buf->targets = malloc(count * sizeof(real));
		if (!buf->ids || !buf->mask || !buf->labels || !buf->targets)
		{
			batch_buffer_free(buf);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a batch");
		}
		buf->cap = cells;
		buf->cap_rows = count;
	}
	for (int i = 0; i < count; i++)
	{
		const Example *ex = &ds->rows[rows[i]];

		memcpy(buf->ids + (size_t) i * T, ds->tokens + ex->offset, ex->length * sizeof(int32_t));
		for (int t = 0; t < T; t++)
			buf->mask[(size_t) i * T + t] = t < ex->length;
		for (int t = ex->length; t < T; t++)
			buf->ids[(size_t) i * T + t] = 0;	/* [PAD] */
		buf->labels[i] = ex->label;
		buf->targets[i] = ex->target;
	}
	batch->B = count;
	batch->T = T;
	batch->ids = buf->ids;
	batch->mask = buf->mask;
	batch->labels = buf->labels;
	batch->targets = buf->targets;
	return PEFT_OK;
}

/* Release a batch buffer. */
void
batch_buffer_free(BatchBuffer *buf)
{
	free(buf->ids);
	free(buf->mask);
	free(buf->labels);
	free(buf->targets);
	memset(buf, 0, sizeof(*buf));
}
