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
 * Then a frozen Q4_1 weight (W [rows, cols], ggml's blocks of 32: fp16 d,
 * fp16 m, 16 bytes of nibbles) as the decoder's bf16 training multiplies
 * it, at 2 threads, in ms: dequantized whole into a float buffer on the
 * calling thread and handed to gemm_bf16 (as bf16_product did), against
 * gemm_bf16_rows dequantizing rows inside its packing, on every thread.
 * The bench dequantizes with its own plain-C Q4_1 code (it links no
 * quant.c), the same code for both.
 *
 * Built and run by test/bench/gemm_bf16_bench.sh; arguments: [reps] [--scalar].
 */
#include <stdbool.h>
#include <stdint.h>
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

/* ---- a Q4_1 weight ---------------------------------------------------------- */

#define Q4_1_VALUES 32
#define Q4_1_BYTES 20			/* fp16 d, fp16 m, 16 bytes of nibbles */

/* An IEEE half's value (normal numbers and zero, as the weights here hold). */
static float
half_float(uint16_t h)
{
	uint32_t	sign = (uint32_t) (h & 0x8000u) << 16;
	uint32_t	exp = (h >> 10) & 0x1fu;
	uint32_t	mant = h & 0x3ffu;
	uint32_t	u = exp == 0 ? sign : sign | ((exp + 112u) << 23) | (mant << 13);
	float		x;

	memcpy(&x, &u, sizeof(x));
	return x;
}

/* A half for x (truncated: any value will do for a benchmark's weight). */
static uint16_t
float_half(float x)
{
	uint32_t	u;
	int			exp;

	memcpy(&u, &x, sizeof(u));
	exp = (int) ((u >> 23) & 0xffu) - 112;
	if (exp <= 0)
		return (uint16_t) ((u >> 16) & 0x8000u);
	return (uint16_t) (((u >> 16) & 0x8000u) | ((uint32_t) exp << 10) | ((u >> 13) & 0x3ffu));
}

/* n values (a multiple of 32) of Q4_1 blocks as ggml lays them: nibble j low, j + 16 high. */
static void
q4_1_dequantize(const uint8_t *blocks, int64_t n, float *out)
{
	for (int64_t b = 0; b < n / Q4_1_VALUES; b++)
	{
		const uint8_t *blk = blocks + b * Q4_1_BYTES;
		uint16_t	dh;
		uint16_t	mh;
		float		d;
		float		m;

		memcpy(&dh, blk, 2);
		memcpy(&mh, blk + 2, 2);
		d = half_float(dh);
		m = half_float(mh);
		for (int j = 0; j < 16; j++)
		{
			out[b * Q4_1_VALUES + j] = (float) (blk[4 + j] & 0xf) * d + m;
			out[b * Q4_1_VALUES + j + 16] = (float) (blk[4 + j] >> 4) * d + m;
		}
	}
}

/* A Q4_1 matrix [rows, cols] in memory. */
typedef struct Q4Matrix
{
	int			rows;
	int			cols;
	uint8_t    *data;
} Q4Matrix;

/* A GemmBf16RowsFn over a Q4Matrix. */
static void
q4_rows(const void *ctx, int first, int count, float *out)
{
	const Q4Matrix *w = ctx;
	size_t		row_bytes = (size_t) w->cols / Q4_1_VALUES * Q4_1_BYTES;

	q4_1_dequantize(w->data + (size_t) first * row_bytes, (int64_t) count * w->cols, out);
}

/* A random Q4_1 matrix (scales about a trained model's: d ~ 0.005, m ~ -0.04). */
static Q4Matrix
q4_make(int rows, int cols)
{
	Q4Matrix	w = {rows, cols, NULL};
	size_t		bytes = (size_t) rows * cols / Q4_1_VALUES * Q4_1_BYTES;
	uint32_t	x = 12345;

	w.data = malloc(bytes);
	for (size_t b = 0; b < bytes / Q4_1_BYTES; b++)
	{
		uint8_t    *blk = w.data + b * Q4_1_BYTES;
		uint16_t	dh;
		uint16_t	mh;

		x = x * 1664525u + 1013904223u;
		dh = float_half(0.002f + (float) (x >> 8) * 0x1p-24f * 0.006f);
		mh = float_half(-0.02f - (float) (x & 0xff) / 256.0f * 0.04f);
		memcpy(blk, &dh, 2);
		memcpy(blk + 2, &mh, 2);
		for (int j = 0; j < 16; j++)
		{
			x = x * 1664525u + 1013904223u;
			blk[4 + j] = (uint8_t) (x >> 24);
		}
	}
	return w;
}

/* One product through W: whole dequantization then gemm_bf16 (dense), or gemm_bf16_rows. */
static void
q4_run_once(bool rows_form, bool trans_b, const Q4Matrix *w, const float *A, float *C, float *dense)
{
	/* trans_b: y[ROWS, rows] = x W^T; else dx[ROWS, cols] = dy W */
	int			N = trans_b ? w->rows : w->cols;
	int			K = trans_b ? w->cols : w->rows;

	if (rows_form)
	{
		if (!gemm_bf16_rows(trans_b, ROWS, N, K, A, K, q4_rows, w, C, N, false))
			abort();
		return;
	}
	q4_1_dequantize(w->data, (int64_t) w->rows * w->cols, dense);
	gemm_bf16(trans_b, ROWS, N, K, A, K, dense, w->cols, C, N, false);
}

/* Fastest of reps runs after one warm-up, in seconds. */
static double
q4_time(bool rows_form, bool trans_b, const Q4Matrix *w, const float *A, float *C, float *dense, int reps)
{
	double		best = 1e30;

	q4_run_once(rows_form, trans_b, w, A, C, dense);
	for (int r = 0; r < reps; r++)
	{
		double		t0 = now();

		q4_run_once(rows_form, trans_b, w, A, C, dense);
		t0 = now() - t0;
		if (t0 < best)
			best = t0;
	}
	return best;
}

/* The Q4_1 table: SmolLM2's MLP weights (gate/up [1536, 576], down [576, 1536]) both ways. */
static void
q4_bench(const float *A, float *C, int reps)
{
	static const int dims[][2] = {{1536, 576}, {576, 1536}};
	float	   *dense = malloc(sizeof(float) * 1536 * 576);
	float	   *C2 = malloc(sizeof(float) * (size_t) ROWS * 1536);
	double		total[2] = {0};

	if (peft_threads_init(2, NULL) != PEFT_OK)
		exit(1);
	printf("\nQ4_1 weight, %d rows of A, 2 threads, %s, ms (fastest of %d)\n\n", ROWS,
		   gemm_bf16_path_name(GEMM_BF16_AUTO), reps);
	printf("| W [rows, cols] | product | dequantize + gemm_bf16 | gemm_bf16_rows | speed-up |\n");
	printf("|---|---|---|---|---|\n");
	for (int d = 0; d < 2; d++)
	{
		Q4Matrix	w = q4_make(dims[d][0], dims[d][1]);

		for (int tb = 1; tb >= 0; tb--)
		{
			int			N = tb ? w.rows : w.cols;
			double		t_dense = q4_time(false, tb, &w, A, C, dense, reps);
			double		t_rows = q4_time(true, tb, &w, A, C2, dense, reps);

			/* the same bits, or the comparison means nothing */
			if (memcmp(C, C2, sizeof(float) * (size_t) ROWS * N) != 0)
			{
				fprintf(stderr, "gemm_bf16_rows and gemm_bf16 differ on Q4_1 %dx%d tb=%d\n",
						w.rows, w.cols, tb);
				exit(1);
			}
			total[0] += t_dense;
			total[1] += t_rows;
			printf("| %d x %d | %s | %.3f | %.3f | %.2f |\n", w.rows, w.cols,
				   tb ? "fwd y=xW^T (trans_b)" : "bwd dx=dyW", t_dense * 1e3, t_rows * 1e3,
				   t_dense / t_rows);
			fflush(stdout);
		}
		free(w.data);
	}
	printf("| all 4 | | %.3f | %.3f | %.2f |\n", total[0] * 1e3, total[1] * 1e3, total[0] / total[1]);
	free(dense);
	free(C2);
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
	q4_bench(A, C, reps);
	peft_threads_shutdown();
	free(A);
	free(B);
	free(C);
	return 0;
}
