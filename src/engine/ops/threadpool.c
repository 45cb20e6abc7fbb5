/*
 * threadpool.c - a small fixed pool of worker threads for the engine's
 * element-wise and row-wise loops.
 *
 * One job runs at a time.  peft_parallel_for splits [0, n) into at most
 * nthreads contiguous chunks whose bounds depend only on n, grain and the
 * thread count, so a given thread count always produces the same split
 * (and so the same floating-point results).  The caller and the workers
 * then claim chunks from a shared counter: which thread runs a chunk does
 * not matter to the result, and a worker that the OS has not scheduled yet
 * (a busy database server) never leaves the caller waiting with work left.
 *
 * Workers spin briefly for the next job and then sleep on a condition
 * variable, so an idle engine burns no core.
 *
 * The library is loaded into PostgreSQL backends: every worker is created
 * with all signals blocked, so signals are always delivered to the main
 * thread, whose handlers are the only ones that may run.
 *
 * Calls are safe to nest: a peft_parallel_for issued from inside a range
 * function (on any thread), or from a second thread while the pool is busy,
 * runs inline on its caller.  peft_threads_init and peft_threads_shutdown
 * wait for a running job to finish before they stop the workers.
 */
#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* More threads than this is certainly a configuration mistake. */
#define PEFT_MAX_THREADS 256

/*
 * How many times a thread polls for a state change before sleeping: tens
 * of microseconds, enough to catch the next loop of a training step
 * without a futex wake-up, short enough not to steal a core from OpenBLAS
 * when a matrix product comes next.
 */
#define PEFT_SPIN_ITERATIONS 1000

typedef struct PeftPool
{
	pthread_mutex_t lock;
	pthread_cond_t work_cond;	/* workers wait here for a new generation */
	pthread_cond_t done_cond;	/* the caller waits here for pending == 0 */
	pthread_cond_t idle_cond;	/* init/shutdown wait here for !busy */
	pthread_t  *workers;
	int			nworkers;		/* threads started (nthreads - 1) */
	int			nthreads;		/* threads a loop is split over */
	bool		busy;			/* a job is being run by some caller */
	bool		stopping;

	/*
	 * The current job, written under lock before generation is bumped.
	 * start_generation is what a newly created worker treats as "seen": it
	 * may first run after the first job was posted, and must not skip it.
	 */
	uint64_t	generation;
	uint64_t	start_generation;
	PeftRangeFn fn;
	void	   *ctx;
	size_t		n;
	int			nchunks;

	/*
	 * claim holds the job's generation (high 32 bits) and the next chunk
	 * to hand out (low 32 bits), so a late worker holding an older job's
	 * fields can never claim a chunk of a newer job.
	 */
	uint64_t	claim;
	int			pending;		/* chunks not finished yet */
} PeftPool;

static PeftPool pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.work_cond = PTHREAD_COND_INITIALIZER,
	.done_cond = PTHREAD_COND_INITIALIZER,
	.idle_cond = PTHREAD_COND_INITIALIZER,
	.nthreads = 1,
};

/* True on pool workers and on a caller while it runs a job. */
static __thread bool in_parallel_region = false;

/* Tell the CPU we are spinning (saves power, frees a sibling hyperthread). */
static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Bounds [*begin, *end) of chunk i of n items split into nchunks parts. */
static inline void
chunk_bounds(size_t n, int nchunks, int i, size_t *begin, size_t *end)
{
	size_t		base = n / (size_t) nchunks;
	size_t		extra = n % (size_t) nchunks;
	size_t		ui = (size_t) i;

	/* The first `extra` chunks get one more item than the rest. */
	*begin = ui * base + (ui < extra ? ui : extra);
	*end = *begin + base + (ui < extra ? 1 : 0);
}

/* Claim the next chunk of job generation gen; -1 when none is left. */
static int
claim_chunk(uint32_t gen, int nchunks)
{
	uint64_t	cur = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);

	for (;;)
	{
		if ((uint32_t) (cur >> 32) != gen || (int) (uint32_t) cur >= nchunks)
			return -1;
		if (__atomic_compare_exchange_n(&pool.claim, &cur, cur + 1, false,
										__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return (int) (uint32_t) cur;
	}
}

/* Run chunks of job gen until none is left to claim. */
static void
run_chunks(uint32_t gen, PeftRangeFn fn, void *ctx, size_t n, int nchunks)
{
	int			i;

	while ((i = claim_chunk(gen, nchunks)) >= 0)
	{
		size_t		begin;
		size_t		end;

		chunk_bounds(n, nchunks, i, &begin, &end);
		fn(ctx, begin, end);
		/* Release: the caller may see 0 by polling, without the lock. */
		if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0)
		{
			pthread_mutex_lock(&pool.lock);
			pthread_cond_signal(&pool.done_cond);
			pthread_mutex_unlock(&pool.lock);
		}
	}
}

/* Worker main loop: wait for a generation, help run its chunks, repeat. */
static void *
worker_main(void *arg)
{
	uint64_t	seen;

	(void) arg;
	in_parallel_region = true;

	pthread_mutex_lock(&pool.lock);
	seen = pool.start_generation;
	for (;;)
	{
		PeftRangeFn fn;
		void	   *ctx;
		size_t		n;
		int			nchunks;

		if (pool.stopping)
			break;
		if (pool.generation == seen)
		{
			/* Poll without the lock for a short while, then sleep. */
			pthread_mutex_unlock(&pool.lock);
			for (int spin = 0; spin < PEFT_SPIN_ITERATIONS; spin++)
			{
				if (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) != seen ||
					__atomic_load_n(&pool.stopping, __ATOMIC_ACQUIRE))
					break;
				cpu_relax();
			}
			pthread_mutex_lock(&pool.lock);
			while (pool.generation == seen && !pool.stopping)
				pthread_cond_wait(&pool.work_cond, &pool.lock);
			continue;
		}

		/* Fields read under the lock belong to generation `seen`. */
		seen = pool.generation;
		fn = pool.fn;
		ctx = pool.ctx;
		n = pool.n;
		nchunks = pool.nchunks;
		pthread_mutex_unlock(&pool.lock);

		run_chunks((uint32_t) seen, fn, ctx, n, nchunks);

		pthread_mutex_lock(&pool.lock);
	}
	pthread_mutex_unlock(&pool.lock);
	return NULL;
}

/* Wait for any running job, then stop and join the workers. */
static void
stop_workers(void)
{
	pthread_mutex_lock(&pool.lock);
	while (pool.busy)
		pthread_cond_wait(&pool.idle_cond, &pool.lock);
	__atomic_store_n(&pool.stopping, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&pool.work_cond);
	pthread_mutex_unlock(&pool.lock);

	for (int i = 0; i < pool.nworkers; i++)
		pthread_join(pool.workers[i], NULL);

	pthread_mutex_lock(&pool.lock);
	free(pool.workers);
	pool.workers = NULL;
	pool.nworkers = 0;
	__atomic_store_n(&pool.nthreads, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&pool.stopping, false, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&pool.lock);
}

/* Start nthreads-1 workers, all signals blocked; idempotent per count. */
PeftCode
peft_threads_init(int nthreads, PeftError *err)
{
	sigset_t	all_signals;
	sigset_t	old_mask;
	int			rc;

	if (nthreads < 1 || nthreads > PEFT_MAX_THREADS)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "thread count %d is out of range 1..%d",
						 nthreads, PEFT_MAX_THREADS);
	if (in_parallel_region)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "cannot resize the thread pool from inside a parallel loop");
	if (nthreads == peft_threads_count())
		return PEFT_OK;

	stop_workers();
	if (nthreads == 1)
		return PEFT_OK;

	pool.workers = calloc((size_t) (nthreads - 1), sizeof(pthread_t));
	if (pool.workers == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "cannot allocate %d thread handles", nthreads - 1);

	/*
	 * New threads inherit the creator's signal mask: block everything
	 * around pthread_create so no worker can ever take a PostgreSQL signal.
	 */
	pool.start_generation = pool.generation;
	sigfillset(&all_signals);
	pthread_sigmask(SIG_BLOCK, &all_signals, &old_mask);
	for (int i = 0; i < nthreads - 1; i++)
	{
		rc = pthread_create(&pool.workers[i], NULL, worker_main, NULL);
		if (rc != 0)
		{
			pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
			stop_workers();
			return peft_fail(err, rc == EAGAIN ? PEFT_ERR_NOMEM : PEFT_ERR_INTERNAL,
							 "cannot start engine thread %d of %d: %s",
							 i + 2, nthreads, strerror(rc));
		}
		pool.nworkers = i + 1;
	}
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);

	pthread_mutex_lock(&pool.lock);
	__atomic_store_n(&pool.nthreads, nthreads, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&pool.lock);
	return PEFT_OK;
}

/* Number of threads loops are split over (1 before init). */
int
peft_threads_count(void)
{
	return __atomic_load_n(&pool.nthreads, __ATOMIC_ACQUIRE);
}

/* Run fn over [0, n) in at most nthreads contiguous chunks of >= grain items. */
void
peft_parallel_for(size_t n, size_t grain, PeftRangeFn fn, void *ctx)
{
	size_t		max_chunks;
	int			nchunks;
	uint32_t	gen;

	if (n == 0)
		return;
	if (grain == 0)
		grain = 1;

	max_chunks = n / grain;
	nchunks = peft_threads_count();
	if ((size_t) nchunks > max_chunks)
		nchunks = max_chunks > 0 ? (int) max_chunks : 1;

	/* Small jobs, single-threaded pools and nested calls run inline. */
	if (nchunks <= 1 || in_parallel_region)
	{
		fn(ctx, 0, n);
		return;
	}

	pthread_mutex_lock(&pool.lock);
	if (pool.busy || pool.nthreads < nchunks)
	{
		/* Another thread owns the pool (or it shrank): do it ourselves. */
		pthread_mutex_unlock(&pool.lock);
		fn(ctx, 0, n);
		return;
	}
	pool.busy = true;
	pool.fn = fn;
	pool.ctx = ctx;
	pool.n = n;
	pool.nchunks = nchunks;
	__atomic_store_n(&pool.pending, nchunks, __ATOMIC_RELEASE);
	gen = (uint32_t) (pool.generation + 1);
	__atomic_store_n(&pool.claim, (uint64_t) gen << 32, __ATOMIC_RELEASE);
	__atomic_store_n(&pool.generation, pool.generation + 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&pool.work_cond);
	pthread_mutex_unlock(&pool.lock);

	/* The caller works too, claiming chunks like any worker. */
	in_parallel_region = true;
	run_chunks(gen, fn, ctx, n, nchunks);
	in_parallel_region = false;

	/* Workers usually finish at about the same time: spin, then sleep. */
	for (int spin = 0; spin < PEFT_SPIN_ITERATIONS; spin++)
	{
		if (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) == 0)
			break;
		cpu_relax();
	}
	pthread_mutex_lock(&pool.lock);
	while (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) > 0)
		pthread_cond_wait(&pool.done_cond, &pool.lock);
	pool.busy = false;
	pool.fn = NULL;
	pool.ctx = NULL;
	pthread_cond_broadcast(&pool.idle_cond);
	pthread_mutex_unlock(&pool.lock);
}

/* Stop and join the workers; loops then run on the caller alone. */
void
peft_threads_shutdown(void)
{
	if (in_parallel_region)
		return;
	stop_workers();
}
