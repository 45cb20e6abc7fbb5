/*
 * gemm_bf16_bench.c - GFLOP/s of OpenBLAS's cblas_sgemm against gemm_bf16
 * (AMX, AVX512_BF16, optionally plain C) on the products of one SmolLM2-135M
 * training step at 2048 rows: each projection's forward (y = x W^T, B
 * [N,K]) and input gradient (dx = dy W, B [K,N]), at 1 and 2 threads.
 *
 * gemm_bf16's figures include rounding and packing both operands, as every
 * call does (the decoder dequantizes W to float32 per product, so nothing
 * can be packed ahead).  sgemm runs on OpenBLAS's own threads, with the
 * kernels peft picks (blas_kernels.h).  Each figure is the fastest of the
 * timed runs after one warm-up: the machines this runs on are shared, and
 * the fastest run is the one least disturbed by the neighbours.
 *
 * Built and run by test/bench/gemm_bf16_bench.sh; arguments: [reps] [--scalar].
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "blas_kernels.h"
#include "gemm_bf16.h"
#include "threadpool.h"

/* OpenBLAS's thread count and kernels (cblas.h declares them only in some builds). */
void		openblas_set_num_threads(int num_threads);
char	   *openblas_get_corename(void);

typedef struct Shape
{
	const char *name;
	bool		trans_b;
	int			N;
	int			K;
} Shape;

/* SmolLM2-135M: hidden 576, 3 key/value heads of 64, MLP 1536. */
static const Shape shapes[] = {
	{"q,o  fwd  y=xW^T", true, 576, 576},
	{"k,v  fwd  y=xW^T", true, 192, 576},
	{"gate,up fwd", true, 1536, 576},
	{"down fwd", true, 576, 1536},
	{"q,o  bwd  dx=dyW", false, 576, 576},
	{"k,v  bwd  dx=dyW", false, 576, 192},
	{"gate,up bwd", false, 576, 1536},
	{"down bwd", false, 1536, 576},
};
#define NSHAPES ((int) (sizeof(shapes) / sizeof(shapes[0])))
#define ROWS 2048

/* Seconds on the monotonic clock. */
static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One product on a path (-1: sgemm). */
static void
run_once(int path, const Shape *s, const float *A, const float *B, float *C)
{
	if (path < 0)
		cblas_sgemm(CblasRowMajor, CblasNoTrans, s->trans_b ? CblasTrans : CblasNoTrans,
					ROWS, s->N, s->K, 1.0f, A, s->K, B, s->trans_b ? s->K : s->N,
					0.0f, C, s->N);
	else
		gemm_bf16_on((GemmBf16Path) path, s->trans_b, ROWS, s->N, s->K, A, s->K,
					 B, s->trans_b ? s->K : s->N, C, s->N, false);
}

/* Fastest of reps runs after one warm-up, in seconds. */
static double
time_path(int path, const Shape *s, const float *A, const float *B, float *C, int reps)
{
	double		best = 1e30;

	run_once(path, s, A, B, C);
	for (int r = 0; r < reps; r++)
	{
		double		t0 = now();

		run_once(path, s, A, B, C);
		t0 = now() - t0;
		if (t0 < best)
			best = t0;
	}
	return best;
}

int
main(int argc, char **argv)
{
	int			reps = argc > 1 ? atoi(argv[1]) : 9;
	bool		scalar = argc > 2 && strcmp(argv[2], "--scalar") == 0;
	int			paths[3];
	int			npaths = 0;
	size_t		max = (size_t) ROWS * 1536;
	float	   *A = malloc(sizeof(float) * max);
	float	   *B = malloc(sizeof(float) * 1536 * 1536);
	float	   *C = malloc(sizeof(float) * max);

	/* OpenBLAS reads its kernel choice when it loads: set it as peft does, then start again */
	if (peft_blas_choose_kernels())
	{
		execv("/proc/self/exe", argv);
		perror("execv /proc/self/exe");
		return 1;
	}
	if (reps < 1)
		reps = 1;
	for (size_t i = 0; i < max; i++)
		A[i] = (float) ((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
	for (size_t i = 0; i < 1536 * 1536; i++)
		B[i] = (float) ((i * 40503u) % 2001) / 20000.0f - 0.05f;
	if (gemm_bf16_path_available(GEMM_BF16_AMX))
		paths[npaths++] = GEMM_BF16_AMX;
	if (gemm_bf16_path_available(GEMM_BF16_AVX512))
		paths[npaths++] = GEMM_BF16_AVX512;
	if (scalar || npaths == 0)
		paths[npaths++] = GEMM_BF16_SCALAR;

	printf("OpenBLAS kernels %s; rows %d, fastest of %d runs; GFLOP/s = 2MNK / seconds; "
		   "bf16 includes packing\n\n", openblas_get_corename(), ROWS, reps);
	printf("| product | N | K | threads | sgemm |");
	for (int p = 0; p < npaths; p++)
		printf(" %s | x sgemm |", gemm_bf16_path_name((GemmBf16Path) paths[p]));
	printf("\n|---|---|---|---|---|");
	for (int p = 0; p < npaths; p++)
		printf("---|---|");
	printf("\n");
	for (int threads = 1; threads <= 2; threads++)
	{
		double		total[4] = {0};

		openblas_set_num_threads(threads);
		if (peft_threads_init(threads, NULL) != PEFT_OK)
			return 1;
		for (int s = 0; s < NSHAPES; s++)
		{
			double		flop = 2.0 * ROWS * shapes[s].N * shapes[s].K;
			double		t_sgemm = time_path(-1, &shapes[s], A, B, C, reps);

			total[0] += t_sgemm;
			printf("| %s | %d | %d | %d | %.0f |", shapes[s].name, shapes[s].N, shapes[s].K,
				   threads, flop / t_sgemm * 1e-9);
			for (int p = 0; p < npaths; p++)
			{
				double		t = time_path(paths[p], &shapes[s], A, B, C, reps);

				total[1 + p] += t;
				printf(" %.0f | %.2f |", flop / t * 1e-9, t_sgemm / t);
			}
			printf("\n");
			fflush(stdout);
		}
		printf("| all 8, ms | | | %d | %.2f |", threads, total[0] * 1e3);
		for (int p = 0; p < npaths; p++)
			printf(" %.2f | %.2f |", total[1 + p] * 1e3, total[0] / total[1 + p]);
		printf("\n");
	}
	peft_threads_shutdown();
	free(A);
	free(B);
	free(C);
	return 0;
}
