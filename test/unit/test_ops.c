/*
 * test_ops.c - the float CPU operations (ops.h, and the padded references
 * of ops_reference.h) against naive reference loops written here in double,
 * their determinism across thread counts, and the engine thread pool.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <cmocka.h>

#include "compare.h"
#include "ops.h"
#include "ops_reference.h"
#include "rng.h"
#include "threadpool.h"

#ifdef PEFT_DOUBLE
#error "test_ops.c checks the float build"
#endif

static PeftRng rng;

/* A new array of n floats uniform in [lo, hi). */
static real *
random_array(size_t n, double lo, double hi)
{
	real	   *x = malloc(n * sizeof(real));

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
		x[i] = (real) (lo + (hi - lo) * peft_rng_uniform(&rng));
	return x;
}

/* A copy of n reals. */
static real *
copy_array(const real *x, size_t n)
{
	real	   *y = malloc(n * sizeof(real));

	assert_non_null(y);
	memcpy(y, x, n * sizeof(real));
	return y;
}

/* mask[B,T]: row b has its last (b % 3) tokens padded. */
static int32_t *
padding_mask(int B, int T)
{
	int32_t    *mask = malloc((size_t) B * T * sizeof(int32_t));

	assert_non_null(mask);
	for (int b = 0; b < B; b++)
		for (int t = 0; t < T; t++)
			mask[b * T + t] = t < T - (b % 3) ? 1 : 0;
	return mask;
}

/* Seed the generator and start two engine threads. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 424242);
	return 0;
}

/* Stop the engine threads. */
static int
teardown(void **state)
{
	(void) state;
	peft_threads_shutdown();
	return 0;
}


/* ---- thread pool ----------------------------------------------------------- */

typedef struct VisitCounts
{
	int		   *count;
	size_t		nchunks;
	size_t		begins[64];
	size_t		ends[64];
	pthread_mutex_t lock;
} VisitCounts;

/* Count each index of [begin, end) and record the chunk. */
static void
count_visits(void *arg, size_t begin, size_t end)
{
	VisitCounts *v = arg;

	for (size_t i = begin; i < end; i++)
		__atomic_fetch_add(&v->count[i], 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&v->lock);
	if (v->nchunks < 64)
	{
		v->begins[v->nchunks] = begin;
		v->ends[v->nchunks] = end;
	}
	v->nchunks++;
	pthread_mutex_unlock(&v->lock);
}

/* Sort chunk records by begin, so two runs can be compared. */
static void
sort_chunks(VisitCounts *v)
{
	for (size_t i = 1; i < v->nchunks; i++)
		for (size_t j = i; j > 0 && v->begins[j - 1] > v->begins[j]; j--)
		{
			size_t		b = v->begins[j];
			size_t		e = v->ends[j];

			v->begins[j] = v->begins[j - 1];
			v->ends[j] = v->ends[j - 1];
			v->begins[j - 1] = b;
			v->ends[j - 1] = e;
		}
}

/* Every index is visited exactly once, and the split is deterministic. */
static void
test_pool_visits_each_index_once(void **state)
{
	static const size_t sizes[] = {0, 1, 2, 3, 7, 100, 1000, 100003};
	static const size_t grains[] = {1, 3, 64, 1000000};

	(void) state;
	for (int threads = 1; threads <= 4; threads++)
	{
		assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);
		assert_int_equal(peft_threads_count(), threads);
		for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++)
			for (size_t gi = 0; gi < sizeof(grains) / sizeof(grains[0]); gi++)
			{
				size_t		n = sizes[si];
				size_t		grain = grains[gi];
				VisitCounts first = {.lock = PTHREAD_MUTEX_INITIALIZER};
				VisitCounts second = {.lock = PTHREAD_MUTEX_INITIALIZER};

				first.count = calloc(n + 1, sizeof(int));
				second.count = calloc(n + 1, sizeof(int));
				peft_parallel_for(n, grain, count_visits, &first);
				peft_parallel_for(n, grain, count_visits, &second);
				for (size_t i = 0; i < n; i++)
				{
					assert_int_equal(first.count[i], 1);
					assert_int_equal(second.count[i], 1);
				}
				assert_true(first.nchunks <= (size_t) threads);
				assert_int_equal(first.nchunks, second.nchunks);
				sort_chunks(&first);
				sort_chunks(&second);
				for (size_t c = 0; c < first.nchunks; c++)
				{
					assert_int_equal(first.begins[c], second.begins[c]);
					assert_int_equal(first.ends[c], second.ends[c]);
					/* Chunks are at least a grain, unless the job is smaller. */
					if (first.nchunks > 1)
						assert_true(first.ends[c] - first.begins[c] >= grain);
				}
				free(first.count);
				free(second.count);
			}
	}
	peft_threads_shutdown();
	assert_int_equal(peft_threads_count(), 1);
}

typedef struct SignalProbe
{
	pthread_t	main_thread;
	pthread_mutex_t lock;
	int			workers_seen;	/* distinct worker threads */
	int			workers_blocked;
	pthread_t	worker[8];
	clockid_t	worker_clock[8];
} SignalProbe;

/*
 * On a worker, check that every catchable signal is blocked.  Every chunk
 * then waits (up to 5 s) until two distinct workers have arrived: with the
 * caller and one worker held up, the other worker must claim a chunk.
 */
static void
probe_signal_mask(void *arg, size_t begin, size_t end)
{
	SignalProbe *p = arg;
	static const int signals[] = {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1,
	SIGUSR2, SIGALRM, SIGCHLD, SIGPIPE};
	struct timespec pause = {0, 1000 * 1000};

	(void) begin;
	(void) end;
	if (!pthread_equal(pthread_self(), p->main_thread))
	{
		sigset_t	current;
		bool		all_blocked = true;
		bool		known = false;

		pthread_sigmask(SIG_BLOCK, NULL, &current);
		for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
			if (!sigismember(&current, signals[i]))
				all_blocked = false;
		pthread_mutex_lock(&p->lock);
		for (int w = 0; w < p->workers_seen; w++)
			if (pthread_equal(p->worker[w], pthread_self()))
				known = true;
		if (!known && p->workers_seen < 8)
		{
			p->worker[p->workers_seen] = pthread_self();
			pthread_getcpuclockid(pthread_self(), &p->worker_clock[p->workers_seen]);
			p->workers_seen++;
			if (all_blocked)
				p->workers_blocked++;
		}
		pthread_mutex_unlock(&p->lock);
	}
	for (int i = 0; i < 5000; i++)
	{
		int			seen;

		pthread_mutex_lock(&p->lock);
		seen = p->workers_seen;
		pthread_mutex_unlock(&p->lock);
		if (seen >= 2)
			break;
		nanosleep(&pause, NULL);
	}
}

/* CPU time of a thread clock in seconds. */
static double
clock_seconds(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/*
 * Workers run with all signals blocked, the caller's mask is unchanged, and
 * idle workers sleep instead of spinning.
 */
static void
test_pool_workers_block_signals(void **state)
{
	SignalProbe probe = {.main_thread = pthread_self(),
	.lock = PTHREAD_MUTEX_INITIALIZER};
	sigset_t	before;
	sigset_t	after;
	double		cpu_before[2];
	struct timespec idle = {0, 200 * 1000 * 1000};

	(void) state;
	pthread_sigmask(SIG_BLOCK, NULL, &before);
	assert_int_equal(peft_threads_init(3, NULL), PEFT_OK);
	pthread_sigmask(SIG_BLOCK, NULL, &after);
	assert_int_equal(sigismember(&before, SIGUSR1), sigismember(&after, SIGUSR1));
	assert_int_equal(sigismember(&before, SIGINT), sigismember(&after, SIGINT));

	/* Three chunks; the caller's waits until both workers have one. */
	peft_parallel_for(3, 1, probe_signal_mask, &probe);
	assert_int_equal(probe.workers_seen, 2);
	assert_int_equal(probe.workers_blocked, 2);

	/* Idle for 200 ms: the workers should use (almost) no CPU. */
	for (int w = 0; w < 2; w++)
		cpu_before[w] = clock_seconds(probe.worker_clock[w]);
	nanosleep(&idle, NULL);
	for (int w = 0; w < 2; w++)
	{
		double		used = clock_seconds(probe.worker_clock[w]) - cpu_before[w];

		printf("idle worker %d used %.4f s of CPU in 0.2 s\n", w + 1, used);
		assert_true(used < 0.02);
	}
	peft_threads_shutdown();
}

typedef struct NestedProbe
{
	int		   *count;
	int			inline_ok;
} NestedProbe;

typedef struct InnerProbe
{
	pthread_t	outer_thread;
	int		   *count;
	size_t		base;
	int			same_thread;
} InnerProbe;

/* Inner loop body: record that it ran on the outer call's thread. */
static void
inner_body(void *arg, size_t begin, size_t end)
{
	InnerProbe *p = arg;

	if (!pthread_equal(pthread_self(), p->outer_thread))
		p->same_thread = 0;
	for (size_t i = begin; i < end; i++)
		__atomic_fetch_add(&p->count[p->base + i], 1, __ATOMIC_RELAXED);
}

/* Outer loop body: a nested parallel loop over 100 items per outer item. */
static void
outer_body(void *arg, size_t begin, size_t end)
{
	NestedProbe *p = arg;

	for (size_t i = begin; i < end; i++)
	{
		InnerProbe	inner = {pthread_self(), p->count, i * 100, 1};

		peft_parallel_for(100, 1, inner_body, &inner);
		if (!inner.same_thread)
			__atomic_store_n(&p->inline_ok, 0, __ATOMIC_RELAXED);
	}
}

/* A nested call runs inline on its caller and still covers its range. */
static void
test_pool_nested_runs_inline(void **state)
{
	NestedProbe probe = {.inline_ok = 1};

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	probe.count = calloc(8 * 100, sizeof(int));
	peft_parallel_for(8, 1, outer_body, &probe);
	assert_true(probe.inline_ok);
	for (int i = 0; i < 8 * 100; i++)
		assert_int_equal(probe.count[i], 1);
	free(probe.count);
	peft_threads_shutdown();
}

/* A second thread hammering the pool while the main thread uses it. */
static void *
concurrent_caller(void *arg)
{
	int		   *count = arg;

	for (int r = 0; r < 200; r++)
	{
		VisitCounts v = {.count = count, .lock = PTHREAD_MUTEX_INITIALIZER};

		peft_parallel_for(1000, 1, count_visits, &v);
	}
	return NULL;
}

/* Concurrent callers each get every index once (one runs inline). */
static void
test_pool_concurrent_callers(void **state)
{
	int		   *theirs = calloc(1000, sizeof(int));
	int		   *ours = calloc(1000, sizeof(int));
	pthread_t	other;

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	assert_int_equal(pthread_create(&other, NULL, concurrent_caller, theirs), 0);
	concurrent_caller(ours);
	pthread_join(other, NULL);
	for (int i = 0; i < 1000; i++)
	{
		assert_int_equal(theirs[i], 200);
		assert_int_equal(ours[i], 200);
	}
	free(theirs);
	free(ours);
	peft_threads_shutdown();
}

/* Bad thread counts are refused with a message. */
static void
test_pool_rejects_bad_counts(void **state)
{
	PeftError	err;

	(void) state;
	assert_int_equal(peft_threads_init(0, &err), PEFT_ERR_INVALID);
	assert_true(strlen(err.message) > 0);
	assert_int_equal(peft_threads_init(100000, &err), PEFT_ERR_INVALID);
	assert_int_equal(peft_threads_count(), 1);
}


/* ---- forward values against naive references --------------------------------- */

/* linear with and without bias, and its backward, against plain loops. */
static void
test_linear_matches_naive(void **state)
{
	int			N = 13,
				IC = 17,
				OC = 11;
	real	   *x = random_array((size_t) N * IC, -1, 1);
	real	   *w = random_array((size_t) OC * IC, -1, 1);
	real	   *bias = random_array(OC, -1, 1);
	real	   *out = malloc((size_t) N * OC * sizeof(real));
	real	   *dout = random_array((size_t) N * OC, -1, 1);
	real	   *dx = random_array((size_t) N * IC, -1, 1);
	real	   *dw = random_array((size_t) OC * IC, -1, 1);
	real	   *db = random_array(OC, -1, 1);
	double	   *want = malloc((size_t) N * IC * OC * sizeof(double));

	(void) state;
	for (int with_bias = 0; with_bias <= 1; with_bias++)
	{
		linear_forward(out, x, w, with_bias ? bias : NULL, N, IC, OC);
		for (int n = 0; n < N; n++)
			for (int o = 0; o < OC; o++)
			{
				double		s = with_bias ? bias[o] : 0;

				for (int i = 0; i < IC; i++)
					s += (double) x[n * IC + i] * w[o * IC + i];
				want[n * OC + o] = s;
			}
		compare_close_double(with_bias ? "linear_forward (bias)" : "linear_forward",
					 out, want, (size_t) N * OC, 1e-5, 1e-5);
	}

	/* Backward accumulates onto what the buffers already hold. */
	for (int n = 0; n < N; n++)
		for (int i = 0; i < IC; i++)
		{
			double		s = dx[n * IC + i];

			for (int o = 0; o < OC; o++)
				s += (double) dout[n * OC + o] * w[o * IC + i];
			want[n * IC + i] = s;
		}
	{
		double	   *want_dw = malloc((size_t) OC * IC * sizeof(double));
		double	   *want_db = malloc((size_t) OC * sizeof(double));

		for (int o = 0; o < OC; o++)
		{
			want_db[o] = db[o];
			for (int n = 0; n < N; n++)
				want_db[o] += dout[n * OC + o];
			for (int i = 0; i < IC; i++)
			{
				double		s = dw[o * IC + i];

				for (int n = 0; n < N; n++)
					s += (double) dout[n * OC + o] * x[n * IC + i];
				want_dw[o * IC + i] = s;
			}
		}
		linear_backward(dx, dw, db, dout, x, w, N, IC, OC);
		compare_close_double("linear_backward dinp", dx, want, (size_t) N * IC, 1e-5, 1e-5);
		compare_close_double("linear_backward dweight", dw, want_dw, (size_t) OC * IC, 1e-5, 1e-5);
		compare_close_double("linear_backward dbias", db, want_db, OC, 1e-5, 1e-5);
		free(want_dw);
		free(want_db);
	}
	free(x);
	free(w);
	free(bias);
	free(out);
	free(dout);
	free(dx);
	free(dw);
	free(db);
	free(want);
}

/* layernorm against the textbook formula, with a large mean offset. */
static void
test_layernorm_matches_naive(void **state)
{
	int			N = 9,
				C = 37;
	real	   *x = random_array((size_t) N * C, -2, 2);
	real	   *gamma = random_array(C, 0.5, 1.5);
	real	   *beta = random_array(C, -1, 1);
	real	   *out = malloc((size_t) N * C * sizeof(real));
	real	   *mean = malloc(N * sizeof(real));
	real	   *rstd = malloc(N * sizeof(real));
	double	   *want = malloc((size_t) N * C * sizeof(double));
	double	   *want_mean = malloc(N * sizeof(double));
	double	   *want_rstd = malloc(N * sizeof(double));

	(void) state;
	/* An offset of 1000 would ruin a one-pass E[x^2] - E[x]^2 variance. */
	for (int c = 0; c < C; c++)
		x[c] += 1000;
	layernorm_forward(out, mean, rstd, x, gamma, beta, N, C, 1e-12f);
	for (int n = 0; n < N; n++)
	{
		double		mu = 0;
		double		var = 0;

		for (int c = 0; c < C; c++)
			mu += x[n * C + c];
		mu /= C;
		for (int c = 0; c < C; c++)
			var += (x[n * C + c] - mu) * (x[n * C + c] - mu);
		var /= C;
		want_mean[n] = mu;
		want_rstd[n] = 1 / sqrt(var + 1e-12);
		for (int c = 0; c < C; c++)
			want[n * C + c] = (x[n * C + c] - mu) * want_rstd[n] * gamma[c] + beta[c];
	}
	compare_close_double("layernorm_forward", out, want, (size_t) N * C, 1e-4, 1e-5);
	compare_close_double("layernorm_forward mean", mean, want_mean, N, 0, 1e-6);
	compare_close_double("layernorm_forward rstd", rstd, want_rstd, N, 0, 1e-6);
	free(x);
	free(gamma);
	free(beta);
	free(out);
	free(mean);
	free(rstd);
	free(want);
	free(want_mean);
	free(want_rstd);
}

/* gelu and its derivative on a dense grid against erf in double. */
static void
test_gelu_matches_erf(void **state)
{
	size_t		n = 200001;
	real	   *x = malloc(n * sizeof(real));
	real	   *out = malloc(n * sizeof(real));
	real	   *dx = calloc(n, sizeof(real));
	real	   *ones = malloc(n * sizeof(real));
	double	   *want = malloc(n * sizeof(double));
	double	   *want_dx = malloc(n * sizeof(double));

	(void) state;
	for (size_t i = 0; i < n; i++)
	{
		double		xi;

		x[i] = (real) (-10.0 + 20.0 * i / (n - 1));
		xi = x[i];
		ones[i] = 1;
		want[i] = 0.5 * xi * (1 + erf(xi / sqrt(2.0)));
		want_dx[i] = 0.5 * (1 + erf(xi / sqrt(2.0))) +
			xi * exp(-0.5 * xi * xi) / sqrt(2 * M_PI);
	}
	gelu_forward(out, x, n);
	gelu_backward(dx, x, ones, n);
	/* A few float ulps of the result's scale. */
	compare_close_double("gelu_forward", out, want, n, 3e-7, 3e-7);
	compare_close_double("gelu_backward", dx, want_dx, n, 3e-7, 3e-7);
	free(x);
	free(out);
	free(dx);
	free(ones);
	free(want);
	free(want_dx);
}

/*
 * Naive attention in double: out[B,T,C] and probs[B,NH,T,T] from q, k, v
 * with a key mask and an optional keep mask.
 */
static void
naive_attention(double *out, double *probs, const real *q, const real *k,
				const real *v, const int32_t *mask, const uint8_t *keep,
				double p, int B, int T, int C, int NH)
{
	int			HS = C / NH;
	double		scale = p > 0 ? 1 / (1 - p) : 1;

	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++)
			for (int i = 0; i < T; i++)
			{
				double	   *pr = probs + (((size_t) b * NH + h) * T + i) * T;
				double		max = -INFINITY;
				double		sum = 0;

				for (int j = 0; j < T; j++)
				{
					double		s = 0;

					for (int d = 0; d < HS; d++)
						s += (double) q[(b * T + i) * C + h * HS + d] *
							k[(b * T + j) * C + h * HS + d];
					pr[j] = s / sqrt((double) HS);
					if (mask[b * T + j] && pr[j] > max)
						max = pr[j];
				}
				for (int j = 0; j < T; j++)
				{
					pr[j] = mask[b * T + j] ? exp(pr[j] - max) : 0;
					sum += pr[j];
				}
				for (int j = 0; j < T; j++)
					pr[j] = sum > 0 ? pr[j] / sum : 0;
				for (int d = 0; d < HS; d++)
				{
					double		o = 0;

					for (int j = 0; j < T; j++)
					{
						double		wgt = pr[j];

						if (keep != NULL && p > 0)
							wgt = keep[(pr - probs) + j] ? wgt * scale : 0;
						o += wgt * v[(b * T + j) * C + h * HS + d];
					}
					out[(b * T + i) * C + h * HS + d] = o;
				}
			}
}

/* attention forward against the naive loops, with padding and dropout. */
static void
test_attention_matches_naive(void **state)
{
	int			B = 3,
				T = 11,
				C = 24,
				NH = 4;
	size_t		n = (size_t) B * T * C;
	size_t		np = (size_t) B * NH * T * T;
	real	   *q = random_array(n, -2, 2);
	real	   *k = random_array(n, -2, 2);
	real	   *v = random_array(n, -1, 1);
	int32_t    *mask = padding_mask(B, T);
	uint8_t    *keep = malloc(np);
	real	   *out = malloc(n * sizeof(real));
	real	   *probs = malloc(np * sizeof(real));
	double	   *want = malloc(n * sizeof(double));
	double	   *want_probs = malloc(np * sizeof(double));
	PeftRng		mask_rng;

	(void) state;
	assert_int_equal(peft_threads_init(2, NULL), PEFT_OK);
	peft_rng_seed(&mask_rng, 99);
	dropout_mask(keep, np, 0.2f, &mask_rng);

	attention_forward(out, probs, q, k, v, mask, NULL, 0, B, T, C, NH);
	naive_attention(want, want_probs, q, k, v, mask, NULL, 0, B, T, C, NH);
	compare_close_double("attention_forward", out, want, n, 1e-6, 1e-5);
	compare_close_double("attention_forward probs", probs, want_probs, np, 1e-7, 1e-5);

	attention_forward(out, probs, q, k, v, mask, keep, 0.2f, B, T, C, NH);
	naive_attention(want, want_probs, q, k, v, mask, keep, 0.2, B, T, C, NH);
	compare_close_double("attention_forward dropout", out, want, n, 1e-6, 1e-5);
	compare_close_double("attention_forward dropout probs", probs, want_probs, np, 1e-7, 1e-5);

	/* Padded keys get exactly zero weight. */
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++)
			for (int i = 0; i < T; i++)
				for (int j = 0; j < T; j++)
					if (!mask[b * T + j])
						assert_true(probs[(((size_t) b * NH + h) * T + i) * T + j] == 0);

	/* A sequence with no real token at all: zeros, not NaN. */
	for (int t = 0; t < T; t++)
		mask[T + t] = 0;
	attention_forward(out, probs, q, k, v, mask, NULL, 0, B, T, C, NH);
	for (size_t i = (size_t) T * C; i < (size_t) 2 * T * C; i++)
		assert_true(out[i] == 0);
	for (size_t i = 0; i < n; i++)
		assert_true(isfinite(out[i]));

	/* Scores far apart: exp must not overflow. */
	for (size_t i = 0; i < n; i++)
		q[i] *= 200;
	attention_forward(out, probs, q, k, v, mask, NULL, 0, B, T, C, NH);
	for (size_t i = 0; i < np; i++)
		assert_true(isfinite(probs[i]));

	free(q);
	free(k);
	free(v);
	free(mask);
	free(keep);
	free(out);
	free(probs);
	free(want);
	free(want_probs);
	peft_threads_shutdown();
}

/*
 * attention backward against a naive double implementation of the same
 * chain rule (dropout, softmax, scores), with padding and dropout.
 */
static void
test_attention_backward_matches_naive(void **state)
{
	int			B = 2,
				T = 9,
				C = 12,
				NH = 3,
				HS = 4;
	double		p = 0.3;
	double		scale = 1 / (1 - p);
	size_t		n = (size_t) B * T * C;
	size_t		np = (size_t) B * NH * T * T;
	real	   *q = random_array(n, -2, 2);
	real	   *k = random_array(n, -2, 2);
	real	   *v = random_array(n, -1, 1);
	real	   *dout = random_array(n, -1, 1);
	real	   *dq = random_array(n, -1, 1);
	real	   *dk = random_array(n, -1, 1);
	real	   *dv = random_array(n, -1, 1);
	int32_t    *mask = padding_mask(B, T);
	uint8_t    *keep = malloc(np);
	real	   *out = malloc(n * sizeof(real));
	real	   *probs = malloc(np * sizeof(real));
	real	   *scratch = malloc(np * sizeof(real));
	double	   *want_out = malloc(n * sizeof(double));
	double	   *P = malloc(np * sizeof(double));
	double	   *want_dq = malloc(n * sizeof(double));
	double	   *want_dk = malloc(n * sizeof(double));
	double	   *want_dv = malloc(n * sizeof(double));
	PeftRng		mask_rng;

	(void) state;
	peft_rng_seed(&mask_rng, 5);
	dropout_mask(keep, np, (real) p, &mask_rng);
	naive_attention(want_out, P, q, k, v, mask, keep, p, B, T, C, NH);
	for (size_t i = 0; i < n; i++)
	{
		want_dq[i] = dq[i];
		want_dk[i] = dk[i];
		want_dv[i] = dv[i];
	}
	for (int b = 0; b < B; b++)
		for (int h = 0; h < NH; h++)
			for (int i = 0; i < T; i++)
			{
				size_t		row = (((size_t) b * NH + h) * T + i) * T;
				double		dP[64];
				double		dot = 0;

				for (int j = 0; j < T; j++)
				{
					double		da = 0;
					double		kept = keep[row + j] ? scale : 0;

					for (int d = 0; d < HS; d++)
					{
						da += (double) dout[(b * T + i) * C + h * HS + d] *
							v[(b * T + j) * C + h * HS + d];
						want_dv[(b * T + j) * C + h * HS + d] +=
							P[row + j] * kept * dout[(b * T + i) * C + h * HS + d];
					}
					dP[j] = da * kept;
					dot += P[row + j] * dP[j];
				}
				for (int j = 0; j < T; j++)
				{
					double		ds = P[row + j] * (dP[j] - dot) / sqrt((double) HS);

					for (int d = 0; d < HS; d++)
					{
						want_dq[(b * T + i) * C + h * HS + d] += ds * k[(b * T + j) * C + h * HS + d];
						want_dk[(b * T + j) * C + h * HS + d] += ds * q[(b * T + i) * C + h * HS + d];
					}
				}
			}

	attention_forward(out, probs, q, k, v, mask, keep, (real) p, B, T, C, NH);
	attention_backward(dq, dk, dv, scratch, dout, probs, q, k, v, mask, keep,
					   (real) p, B, T, C, NH);
	compare_close_double("attention_backward dq", dq, want_dq, n, 1e-5, 1e-5);
	compare_close_double("attention_backward dk", dk, want_dk, n, 1e-5, 1e-5);
	compare_close_double("attention_backward dv", dv, want_dv, n, 1e-5, 1e-5);

	free(q);
	free(k);
	free(v);
	free(dout);
	free(dq);
	free(dk);
	free(dv);
	free(mask);
	free(keep);
	free(out);
	free(probs);
	free(scratch);
	free(want_out);
	free(P);
	free(want_dq);
	free(want_dk);
	free(want_dv);
}

/* cross_entropy against log-sum-exp by hand, including huge logits. */
static void
test_cross_entropy_by_hand(void **state)
{
	/* Two rows of three logits. */
	real		logits[6] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, 0.0f};
	int32_t		labels[2] = {2, 0};
	real		probs[6];
	real		dlogits[6] = {0};
	double		lse0 = log(exp(1.0) + exp(2.0) + exp(3.0));
	double		lse1 = log(exp(-1.0) + exp(0.5) + exp(0.0));
	double		want = ((lse0 - 3.0) + (lse1 + 1.0)) / 2;
	double		want_probs[6];
	real		loss;

	/* Logits near float's limit for exp: only a max-shifted softmax survives. */
	real		big[2] = {1000.0f, 1000.0f};
	int32_t		big_label = 1;
	real		big_probs[2];

	(void) state;
	loss = cross_entropy_forward(probs, logits, labels, 2, 3);
	assert_true(fabs(loss - want) < 1e-6);
	for (int i = 0; i < 3; i++)
	{
		want_probs[i] = exp(logits[i] - lse0);
		want_probs[3 + i] = exp(logits[3 + i] - lse1);
	}
	compare_close_double("cross_entropy_forward probs", probs, want_probs, 6, 1e-7, 1e-6);

	/* (probs - onehot) * dloss / B, added to what is there. */
	dlogits[0] = 1.0f;
	cross_entropy_backward(dlogits, probs, labels, 2.0f, 2, 3);
	for (int i = 0; i < 6; i++)
	{
		double		onehot = (i == 2 || i == 3) ? 1 : 0;

		want_probs[i] = (want_probs[i] - onehot) * 2.0 / 2 + (i == 0 ? 1 : 0);
	}
	compare_close_double("cross_entropy_backward", dlogits, want_probs, 6, 1e-6, 1e-6);

	loss = cross_entropy_forward(big_probs, big, &big_label, 1, 2);
	assert_true(fabs(loss - log(2.0)) < 1e-6);
	assert_true(fabs(big_probs[0] - 0.5f) < 1e-7 && fabs(big_probs[1] - 0.5f) < 1e-7);
}

/* mse, pooling, l2norm, embeddings, add, scale and sum_squares by hand. */
static void
test_small_ops_by_hand(void **state)
{
	int			B = 3,
				T = 4,
				C = 5;
	size_t		n = (size_t) B * T * C;
	real	   *x = random_array(n, -1, 1);
	real	   *out = malloc(n * sizeof(real));
	real		norm[12];
	double	   *want = malloc(n * sizeof(double));
	int32_t    *mask = padding_mask(B, T);

	(void) state;
	{
		real		pred[3] = {1.0f, 2.0f, -1.0f};
		real		target[3] = {0.5f, 2.0f, 1.0f};
		real		dpred[3] = {1.0f, 0.0f, 0.0f};
		double		want_d[3] = {1.0 + 2 * 0.5 * 3.0 / 3, 0, 2 * -2.0 * 3.0 / 3};

		assert_true(fabs(mse_forward(pred, target, 3) - (0.25 + 0 + 4) / 3) < 1e-6);
		mse_backward(dpred, pred, target, 3.0f, 3);
		compare_close_double("mse_backward", dpred, want_d, 3, 1e-6, 1e-6);
	}

	mean_pool_forward(out, x, mask, B, T, C);
	for (int b = 0; b < B; b++)
		for (int c = 0; c < C; c++)
		{
			double		s = 0;
			int			count = 0;

			for (int t = 0; t < T; t++)
				if (mask[b * T + t])
				{
					s += x[(b * T + t) * C + c];
					count++;
				}
			want[b * C + c] = s / count;
		}
	compare_close_double("mean_pool_forward", out, want, (size_t) B * C, 1e-7, 1e-6);

	cls_pool_forward(out, x, B, T, C);
	for (int b = 0; b < B; b++)
		for (int c = 0; c < C; c++)
			want[b * C + c] = x[b * T * C + c];
	compare_close_double("cls_pool_forward", out, want, (size_t) B * C, 0, 0);

	l2norm_forward(out, norm, x, B * T, C);
	for (int r = 0; r < B * T; r++)
	{
		double		s = 0;

		for (int c = 0; c < C; c++)
			s += (double) x[r * C + c] * x[r * C + c];
		for (int c = 0; c < C; c++)
			want[r * C + c] = x[r * C + c] / sqrt(s);
	}
	compare_close_double("l2norm_forward", out, want, n, 1e-7, 1e-6);

	/* A zero vector is divided by the 1e-12 clamp: stays zero, no NaN. */
	memset(x, 0, C * sizeof(real));
	l2norm_forward(out, norm, x, 1, C);
	for (int c = 0; c < C; c++)
		assert_true(out[c] == 0);

	{
		int32_t		ids[6] = {3, 0, 2, 1, 1, 4};
		int32_t		types[6] = {0, 1, 1, 0, 0, 1};
		real	   *word = random_array(5 * C, -1, 1);
		real	   *pos = random_array(3 * C, -1, 1);
		real	   *type = random_array(2 * C, -1, 1);

		embeddings_forward(out, ids, types, word, pos, type, 2, 3, C);
		for (int r = 0; r < 6; r++)
			for (int c = 0; c < C; c++)
				want[r * C + c] = (double) word[ids[r] * C + c] +
					pos[(r % 3) * C + c] + type[types[r] * C + c];
		compare_close_double("embeddings_forward", out, want, 6 * C, 1e-6, 1e-6);
		embeddings_forward(out, ids, NULL, word, pos, type, 2, 3, C);
		for (int r = 0; r < 6; r++)
			for (int c = 0; c < C; c++)
				want[r * C + c] = (double) word[ids[r] * C + c] +
					pos[(r % 3) * C + c] + type[c];
		compare_close_double("embeddings_forward (no types)", out, want, 6 * C, 1e-6, 1e-6);
		free(word);
		free(pos);
		free(type);
	}

	{
		real		a[4] = {1, 2, 3, 4};
		real		b[4] = {0.5f, -2, 1, 0};
		double		want_sum[4] = {1.5, 0, 4, 4};
		double		want_scaled[4] = {3, 0, 8, 8};

		add_forward(a, a, b, 4);	/* out aliases a */
		compare_close_double("add_forward", a, want_sum, 4, 0, 0);
		scale_inplace(a, 2.0f, 4);
		compare_close_double("scale_inplace", a, want_scaled, 4, 0, 0);
		assert_true(sum_squares(a, 4) == 9 + 0 + 64 + 64);
	}

	free(x);
	free(out);
	free(want);
	free(mask);
}

/* dropout masks follow the seed and the rate; forward scales by 1/(1-p). */
static void
test_dropout_mask_and_scale(void **state)
{
	size_t		n = 100000;
	uint8_t    *keep = malloc(n);
	uint8_t    *again = malloc(n);
	real		x[4] = {1, 2, 3, 4};
	real		out[4];
	uint8_t		keep4[4] = {1, 0, 1, 1};
	PeftRng		a;
	size_t		kept = 0;

	(void) state;
	peft_rng_seed(&a, 1);
	dropout_mask(keep, n, 0.1f, &a);
	peft_rng_seed(&a, 1);
	dropout_mask(again, n, 0.1f, &a);
	assert_memory_equal(keep, again, n);
	for (size_t i = 0; i < n; i++)
		kept += keep[i];
	/* 90% kept, within 5 standard deviations (about 0.5%). */
	assert_true(fabs((double) kept / n - 0.9) < 0.005);

	peft_rng_seed(&a, 1);
	dropout_mask(keep, n, 0.0f, &a);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(keep[i], 1);

	dropout_forward(out, x, keep4, 0.5f, 4);
	assert_true(out[0] == 2 && out[1] == 0 && out[2] == 6 && out[3] == 8);
	dropout_forward(out, x, NULL, 0.0f, 4);
	assert_memory_equal(out, x, sizeof(x));
	dropout_forward(x, x, keep4, 0.5f, 4);	/* in place */
	assert_true(x[0] == 2 && x[1] == 0 && x[2] == 6 && x[3] == 8);
	free(keep);
	free(again);
}

/*
 * AdamW, two steps worked out by hand (lr 0.1, betas 0.9/0.999, eps 1e-8,
 * weight decay 0.01; param 1, gradients 0.5 then -0.25):
 *   step 1: param = 1 * (1 - 0.001) = 0.999
 *           m = 0.05, v = 0.001 * 0.25 = 2.5e-4
 *           denom = sqrt(2.5e-4) / sqrt(1 - 0.999) + 1e-8 = 0.5 + 1e-8
 *           param -= (0.1 / 0.1) * 0.05 / denom       -> 0.899000002
 *   step 2: param = 0.899000002 * 0.999               = 0.898101001998
 *           m = 0.9 * 0.05 - 0.1 * 0.25               = 0.02
 *           v = 0.999 * 2.5e-4 + 0.001 * 0.0625       = 3.1225e-4
 *           bc1 = 1 - 0.81 = 0.19, bc2 = 1 - 0.998001 = 0.001999
 *           denom = sqrt(3.1225e-4) / sqrt(0.001999) + 1e-8
 *           param -= (0.1 / 0.19) * 0.02 / denom      -> 0.8714698...
 */
static void
test_adamw_two_steps_by_hand(void **state)
{
	real		param[1] = {1.0f};
	real		m[1] = {0};
	real		v[1] = {0};
	real		g1[1] = {0.5f};
	real		g2[1] = {-0.25f};
	double		p1 = 0.999 - 0.05 / (0.5 + 1e-8);
	double		p2 = p1 * 0.999 - (0.1 / 0.19) * 0.02 /
		(sqrt(3.1225e-4) / sqrt(0.001999) + 1e-8);

	(void) state;
	/*
	 * 0.999f is 0.99900001287, so 1 - beta2 is off by 1.3e-5 relative and
	 * so is v; the same factor is in 1 - beta2^t and cancels in the step.
	 */
	adamw_update(param, g1, m, v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
	assert_true(fabs(m[0] - 0.05) < 1e-7 && fabs(v[0] / 2.5e-4 - 1) < 2e-5);
	assert_true(fabs(param[0] - p1) < 1e-6);
	adamw_update(param, g2, m, v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 2);
	assert_true(fabs(m[0] - 0.02) < 1e-7 && fabs(v[0] / 3.1225e-4 - 1) < 2e-5);
	printf("adamw step 2: %.9f, by hand %.9f\n", param[0], p2);
	assert_true(fabs(param[0] - p2) < 1e-6);
}


/* ---- determinism across thread counts ----------------------------------------- */

/* Outputs of every parallelised op for one thread count. */
typedef struct ParallelOutputs
{
	real	   *linear_out;
	real	   *dbias;
	real	   *ln_out;
	real	   *ln_dx;
	real	   *dgamma;
	real	   *dbeta;
	real	   *gelu_out;
	real	   *gelu_dx;
	real	   *attn_out;
	real	   *attn_probs;
	real	   *dq;
	real	   *dk;
	real	   *dv;
	real	   *emb;
	real	   *drop;
	real	   *param;
	double		sumsq;
} ParallelOutputs;

enum
{
	DET_N = 600, DET_C = 384, DET_FF = 1536,
	DET_B = 4, DET_T = 37, DET_AC = 96, DET_NH = 4,
	DET_VOCAB = 50
};

/* Run every parallelised op on fixed inputs with the given thread count. */
static void
run_parallel_ops(int threads, ParallelOutputs *o, const real *x,
				 const real *w, const real *ff, const uint8_t *keep)
{
	size_t		nx = (size_t) DET_N * DET_C;
	size_t		nff = (size_t) DET_N * DET_FF;
	size_t		na = (size_t) DET_B * DET_T * DET_AC;
	size_t		np = (size_t) DET_B * DET_NH * DET_T * DET_T;
	real	   *mean = malloc(DET_N * sizeof(real));
	real	   *rstd = malloc(DET_N * sizeof(real));
	real	   *scratch = malloc(np * sizeof(real));
	real	   *m = calloc(nx, sizeof(real));
	real	   *v = calloc(nx, sizeof(real));
	int32_t    *mask = padding_mask(DET_B, DET_T);
	int32_t    *ids = malloc(DET_N * sizeof(int32_t));

	assert_int_equal(peft_threads_init(threads, NULL), PEFT_OK);

	o->linear_out = malloc(nx * sizeof(real));
	linear_forward(o->linear_out, x, w, x, DET_N, DET_C, DET_C);
	o->dbias = calloc(DET_C, sizeof(real));
	linear_backward(NULL, NULL, o->dbias, x, x, w, DET_N, DET_C, DET_C);

	o->ln_out = malloc(nx * sizeof(real));
	layernorm_forward(o->ln_out, mean, rstd, x, w, w + DET_C, DET_N, DET_C, 1e-12f);
	o->ln_dx = calloc(nx, sizeof(real));
	o->dgamma = calloc(DET_C, sizeof(real));
	o->dbeta = calloc(DET_C, sizeof(real));
	layernorm_backward(o->ln_dx, o->dgamma, o->dbeta, w, x, w, mean, rstd, DET_N, DET_C);

	o->gelu_out = malloc(nff * sizeof(real));
	gelu_forward(o->gelu_out, ff, nff);
	o->gelu_dx = calloc(nff, sizeof(real));
	gelu_backward(o->gelu_dx, ff, ff + 1, nff - 1);

	o->attn_out = malloc(na * sizeof(real));
	o->attn_probs = malloc(np * sizeof(real));
	attention_forward(o->attn_out, o->attn_probs, x, x + na, x + 2 * na, mask,
					  keep, 0.1f, DET_B, DET_T, DET_AC, DET_NH);
	o->dq = calloc(na, sizeof(real));
	o->dk = calloc(na, sizeof(real));
	o->dv = calloc(na, sizeof(real));
	attention_backward(o->dq, o->dk, o->dv, scratch, w, o->attn_probs,
					   x, x + na, x + 2 * na, mask, keep, 0.1f,
					   DET_B, DET_T, DET_AC, DET_NH);

	for (int i = 0; i < DET_N; i++)
		ids[i] = (i * 7) % DET_VOCAB;
	o->emb = malloc(nx * sizeof(real));
	embeddings_forward(o->emb, ids, NULL, x, w, ff, DET_N / 60, 60, DET_C);

	o->drop = malloc(nff * sizeof(real));
	dropout_forward(o->drop, ff, keep, 0.1f, nff);
	dropout_backward(o->drop, ff, keep, 0.1f, nff);

	o->param = copy_array(x, nx);
	adamw_update(o->param, w, m, v, nx, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
	adamw_update(o->param, x, m, v, nx, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 2);
	o->sumsq = sum_squares(ff, nff);

	free(mean);
	free(rstd);
	free(scratch);
	free(m);
	free(v);
	free(mask);
	free(ids);
}

/* Free one thread count's outputs. */
static void
free_parallel_outputs(ParallelOutputs *o)
{
	free(o->linear_out);
	free(o->dbias);
	free(o->ln_out);
	free(o->ln_dx);
	free(o->dgamma);
	free(o->dbeta);
	free(o->gelu_out);
	free(o->gelu_dx);
	free(o->attn_out);
	free(o->attn_probs);
	free(o->dq);
	free(o->dk);
	free(o->dv);
	free(o->emb);
	free(o->drop);
	free(o->param);
}

/* Parallelised ops give bit-identical results on 1 and 2 threads. */
static void
test_results_identical_across_thread_counts(void **state)
{
	size_t		nx = (size_t) DET_N * DET_C;
	size_t		nff = (size_t) DET_N * DET_FF;
	size_t		na = (size_t) DET_B * DET_T * DET_AC;
	size_t		np = (size_t) DET_B * DET_NH * DET_T * DET_T;
	real	   *x = random_array(nx, -2, 2);
	real	   *w = random_array(nx, -1, 1);
	real	   *ff = random_array(nff, -4, 4);
	uint8_t    *keep = malloc(nff > np ? nff : np);
	ParallelOutputs one;
	ParallelOutputs two;
	PeftRng		mask_rng;

	(void) state;
	peft_rng_seed(&mask_rng, 3);
	dropout_mask(keep, nff > np ? nff : np, 0.1f, &mask_rng);
	run_parallel_ops(1, &one, x, w, ff, keep);
	run_parallel_ops(2, &two, x, w, ff, keep);

#define SAME(field, count) \
	assert_memory_equal(one.field, two.field, (count) * sizeof(real))
	SAME(linear_out, nx);
	SAME(dbias, DET_C);
	SAME(ln_out, nx);
	SAME(ln_dx, nx);
	SAME(dgamma, DET_C);
	SAME(dbeta, DET_C);
	SAME(gelu_out, nff);
	SAME(gelu_dx, nff);
	SAME(attn_out, na);
	SAME(attn_probs, np);
	SAME(dq, na);
	SAME(dk, na);
	SAME(dv, na);
	SAME(emb, nx);
	SAME(drop, nff);
	SAME(param, nx);
#undef SAME
	assert_true(one.sumsq == two.sumsq);

	free_parallel_outputs(&one);
	free_parallel_outputs(&two);
	free(x);
	free(w);
	free(ff);
	free(keep);
	peft_threads_shutdown();
}

/* Run the tests; the thread-pool ones first, before OpenBLAS is busy. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_workers_block_signals),
		cmocka_unit_test(test_pool_visits_each_index_once),
		cmocka_unit_test(test_pool_nested_runs_inline),
		cmocka_unit_test(test_pool_concurrent_callers),
		cmocka_unit_test(test_pool_rejects_bad_counts),
		cmocka_unit_test(test_linear_matches_naive),
		cmocka_unit_test(test_layernorm_matches_naive),
		cmocka_unit_test(test_gelu_matches_erf),
		cmocka_unit_test(test_attention_matches_naive),
		cmocka_unit_test(test_attention_backward_matches_naive),
		cmocka_unit_test(test_cross_entropy_by_hand),
		cmocka_unit_test(test_small_ops_by_hand),
		cmocka_unit_test(test_dropout_mask_and_scale),
		cmocka_unit_test(test_adamw_two_steps_by_hand),
		cmocka_unit_test(test_results_identical_across_thread_counts),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
