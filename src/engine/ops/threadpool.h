/*
 * threadpool.h - the engine's own worker threads for element-wise and
 * row-wise loops (OpenBLAS keeps its own pool for matrix products).
 *
 * Workers are started with every signal blocked, so PostgreSQL's signals
 * always reach the calling (main) thread, and they never call back into the
 * caller's code other than the range function handed to peft_parallel_for.
 */
#ifndef PEFT_ENGINE_THREADPOOL_H
#define PEFT_ENGINE_THREADPOOL_H

#include <stddef.h>
#include "status.h"

/* Work on items [begin, end); ctx is the caller's. */
typedef void (*PeftRangeFn) (void *ctx, size_t begin, size_t end);

/* Start nthreads-1 workers (the caller is the last); idempotent per count. */
PeftCode	peft_threads_init(int nthreads, PeftError *err);

/* Number of threads loops are split over (1 before init). */
int			peft_threads_count(void);

/*
 * Run fn over [0, n) split into contiguous chunks of at least grain items.
 * The split depends only on n, grain and the thread count, so results are
 * deterministic for a given thread count.
 */
void		peft_parallel_for(size_t n, size_t grain, PeftRangeFn fn, void *ctx);

/* Stop and join the workers. */
void		peft_threads_shutdown(void);

/*
 * Items per chunk below which handing work to another thread costs more
 * (a wake-up, a cache miss) than it saves.
 */
#define PARALLEL_GRAIN 16384

/* Rows per chunk so that a chunk holds about PARALLEL_GRAIN items. */
static inline size_t
row_grain(size_t row_len)
{
	if (row_len == 0 || row_len >= PARALLEL_GRAIN)
		return 1;
	return PARALLEL_GRAIN / row_len;
}

#endif
