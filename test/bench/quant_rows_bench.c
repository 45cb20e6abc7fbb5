/*
 * quant_rows_bench.c - the two routes of quant_matmul for N rows of x on
 * SmolLM2-135M's shapes (Q4_1, 576 -> 1536 and the Q8_0 head's 576 ->
 * 49152 in slices): the float tiles through BLAS (prompts, training)
 * against the int16 matrix-vector kernels in groups of four rows
 * (quant_set_rows_alone: decoding steps of many sequences).  Prints
 * microseconds per row of x for each N and the ratio.  The weights are
 * random blocks with sane scales: the time does not depend on the values.
 *
 *   test/bench/quant_rows_bench.sh [threads]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant.h"
#include "threadpool.h"

void		openblas_set_num_threads(int);

/* Seconds on the monotonic clock. */
static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Random Q4_1 or Q8_0 rows whose fp16 scales are 2^-7-ish (no NaN or infinity). */
static uint8_t *
random_blocks(GgmlType type, int64_t rows, int64_t cols)
{
	size_t		rb = quant_row_bytes(type, cols);
	int			bytes = type == GGML_Q4_1 ? 20 : 34;
	uint8_t    *w = malloc(rb * rows);

	for (size_t i = 0; i < rb * rows; i++)
		w[i] = (uint8_t) rand();
	for (int64_t r = 0; r < rows; r++)
		for (int64_t b = 0; b < cols / 32; b++)
		{
			uint16_t   *h = (uint16_t *) (w + r * rb + b * bytes);

			h[0] = 0x2000;
			if (type == GGML_Q4_1)
				h[1] = 0x2000;
		}
	return w;
}

/* Microseconds per row of x of y = x W^T on one route. */
static double
time_route(GgmlType type, const uint8_t *w, int64_t rows, int64_t cols, const float *x, int N,
		   float *y, bool alone)
{
	int			reps = 600 / N + 20;
	double		t0;

	quant_set_rows_alone(alone);
	quant_matmul(type, w, rows, cols, x, N, y);	/* warm */
	t0 = now();
	for (int i = 0; i < reps; i++)
		quant_matmul(type, w, rows, cols, x, N, y);
	quant_set_rows_alone(false);
	return (now() - t0) / reps / N * 1e6;
}

int
main(int argc, char **argv)
{
	static const int Ns[] = {1, 4, 5, 8, 16, 32, 64};
	static const struct
	{
		const char *name;
		GgmlType	type;
		int64_t		rows;
		int64_t		cols;
	}			shapes[] = {
		{"gate/up Q4_1 576->1536", GGML_Q4_1, 1536, 576},
		{"head Q8_0 576->8192 (slice)", GGML_Q8_0, 8192, 576},
	};
	int			threads = argc > 1 ? atoi(argv[1]) : 1;
	PeftError	err;
	float	   *x = malloc(sizeof(float) * 64 * 576);
	float	   *y = malloc(sizeof(float) * 64 * 8192);

	if (peft_threads_init(threads, &err) != PEFT_OK)
	{
		fprintf(stderr, "threads: %s\n", err.message);
		return 1;
	}
	openblas_set_num_threads(1);	/* the tiles run one BLAS call per engine thread */
	for (int i = 0; i < 64 * 576; i++)
		x[i] = (float) (rand() % 2001 - 1000) / 1000.0f;
	printf("kernel path: %s, engine threads: %d\n", quant_kernel_name(), threads);
	printf("| shape | N | tiles us/row | grouped us/row | tiles / grouped |\n|---|---:|---:|---:|---:|\n");
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		uint8_t    *w = random_blocks(shapes[s].type, shapes[s].rows, shapes[s].cols);

		for (size_t i = 0; i < sizeof(Ns) / sizeof(Ns[0]); i++)
		{
			double		tiles = time_route(shapes[s].type, w, shapes[s].rows, shapes[s].cols, x, Ns[i], y, false);
			double		grouped = time_route(shapes[s].type, w, shapes[s].rows, shapes[s].cols, x, Ns[i], y, true);

			printf("| %s | %d | %.2f | %.2f | %.2fx |\n", shapes[s].name, Ns[i], tiles, grouped, tiles / grouped);
		}
		free(w);
	}
	peft_threads_shutdown();
	free(x);
	free(y);
	return 0;
}
