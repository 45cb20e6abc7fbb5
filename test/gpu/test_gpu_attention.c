/*
 * test_gpu_attention.c - the CUDA attention, GEMM and LoRA kernels against
 * the CPU reference (ops_varlen.c, matmul.c) on the same random non-zero
 * inputs.  GPU outputs are poisoned with 0xFF bytes (NaN) before each run,
 * so an element a kernel fails to write shows up as an infinite error.
 * Every test skips when no CUDA device is visible.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>
#include <cuda_runtime.h>

#include "cuda_attention.h"
#include "cuda_backend.h"
#include "matmul.h"
#include "ops.h"
#include "ops_varlen.h"
#include "rng.h"
#include "threadpool.h"

#ifdef PEFT_DOUBLE
#error "test_gpu_attention.c checks the float build"
#endif

#define MSG_LEN 256

/* Relative tolerances: max|gpu - cpu| / max(max|cpu|, 1e-6). */
#define TOL_FP32 1e-5
#define TOL_TF32 1e-3
#define TOL_BF16 1e-2
/* Attention chains several reductions in a different order than the CPU. */
#define TOL_ATTENTION 1e-4

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Skip the calling test when there is no CUDA device. */
#define SKIP_WITHOUT_DEVICE() \
	do { \
		if (peft_cuda_device_count() == 0) \
		{ \
			printf("no CUDA device: skipped\n"); \
			skip(); \
		} \
	} while (0)

/* Next uniform value in [0, 1) from a xorshift64* generator. */
static double
uniform(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (double) ((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

/* A new host array x[n] uniform in +-[0.1, 1) (never zero). */
static float *
random_array(size_t n)
{
	float	   *x = malloc(n * sizeof(float) + 1);

	assert_non_null(x);
	for (size_t i = 0; i < n; i++)
	{
		double		mag = 0.1 + 0.9 * uniform();

		x[i] = (float) (uniform() < 0.5 ? -mag : mag);
	}
	return x;
}

/* A new host copy of x[n]. */
static float *
copy_array(const float *x, size_t n)
{
	float	   *y = malloc(n * sizeof(float) + 1);

	assert_non_null(y);
	memcpy(y, x, n * sizeof(float));
	return y;
}

/* Device buffer of bytes bytes (at least 1). */
static void *
dev_alloc(size_t bytes)
{
	void	   *p = NULL;

	assert_int_equal(cudaMalloc(&p, bytes > 0 ? bytes : 1), cudaSuccess);
	return p;
}

/* Device copy of host x[bytes]. */
static void *
dev_upload(const void *x, size_t bytes)
{
	void	   *p = dev_alloc(bytes);

	assert_int_equal(cudaMemcpy(p, x, bytes, cudaMemcpyHostToDevice), cudaSuccess);
	return p;
}

/* Fill device p[bytes] with 0xFF (NaN as floats). */
static void
dev_poison(void *p, size_t bytes)
{
	assert_int_equal(cudaMemset(p, 0xFF, bytes), cudaSuccess);
}

/* host[n floats] = device p, after all queued work (reports kernel faults). */
static void
dev_download(float *host, const void *p, size_t n)
{
	assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
	assert_int_equal(cudaMemcpy(host, p, n * sizeof(float), cudaMemcpyDeviceToHost),
					 cudaSuccess);
}

/* max|a-b| / max(max|b|, 1e-6) over n values; infinity on any NaN. */
static double
relative_error(const float *a, const float *b, size_t n)
{
	double		diff = 0;
	double		scale = 1e-6;

	for (size_t i = 0; i < n; i++)
	{
		double		d = fabs((double) a[i] - (double) b[i]);

		if (isnan(d))
			return INFINITY;
		if (d > diff)
			diff = d;
		if (fabs((double) b[i]) > scale)
			scale = fabs((double) b[i]);
	}
	return diff / scale;
}

/* Compare gpu[n] (device) with cpu[n] (host), print and check the error. */
static void
expect_close(const char *what, const float *gpu_dev, const float *cpu, size_t n,
			 double tol)
{
	float	   *gpu = malloc(n * sizeof(float) + 1);
	double		err;

	assert_non_null(gpu);
	dev_download(gpu, gpu_dev, n);
	err = relative_error(gpu, cpu, n);
	printf("  %-34s relative error %.3g (tolerance %.0e)\n", what, err, tol);
	free(gpu);
	assert_true(err <= tol);
}

/* Start two engine threads for the CPU reference. */
static int
group_setup(void **state)
{
	(void) state;
	return peft_threads_init(2, NULL) == PEFT_OK ? 0 : -1;
}

/* Stop the engine threads and this thread's cuBLAS handle. */
static int
group_teardown(void **state)
{
	(void) state;
	if (peft_cuda_device_count() > 0)
		peft_cuda_gemm_shutdown();
	peft_threads_shutdown();
	return 0;
}


/* ---- attention ----------------------------------------------------------- */

/* Packed lengths 5, 1, 0 (an empty sequence), 3: N = 9, fused [N, 3C] q|k|v. */
#define ATT_B 4
#define ATT_C 16
#define ATT_NH 2
#define ATT_LD (3 * ATT_C)

static const int att_lengths[ATT_B] = {5, 1, 0, 3};

/* Forward and backward of fused-layout attention against varlen_attention_*. */
static void
test_attention(void **state)
{
	int32_t		seq_start[ATT_B + 1];
	int			N;
	size_t		P;
	float	   *qkv, *dout, *dqkv0;
	float	   *out_cpu, *probs_cpu, *scratch_cpu, *dqkv_cpu;
	float	   *d_qkv, *d_dout, *d_out, *d_probs, *d_scratch, *d_dqkv;
	int32_t    *d_seq;
	char		msg[MSG_LEN] = "";

	(void) state;
	SKIP_WITHOUT_DEVICE();

	seq_start[0] = 0;
	for (int b = 0; b < ATT_B; b++)
		seq_start[b + 1] = seq_start[b] + att_lengths[b];
	N = seq_start[ATT_B];
	P = varlen_attention_size(seq_start, ATT_B, ATT_NH);

	qkv = random_array((size_t) N * ATT_LD);
	dout = random_array((size_t) N * ATT_C);
	/* Non-zero starting gradients check that the backward accumulates. */
	dqkv0 = random_array((size_t) N * ATT_LD);
	out_cpu = calloc((size_t) N * ATT_C, sizeof(float));
	probs_cpu = calloc(P, sizeof(float));
	scratch_cpu = calloc(P, sizeof(float));
	dqkv_cpu = copy_array(dqkv0, (size_t) N * ATT_LD);
	assert_non_null(out_cpu);
	assert_non_null(probs_cpu);
	assert_non_null(scratch_cpu);

	varlen_attention_forward(out_cpu, probs_cpu, NULL, qkv, qkv + ATT_C,
							 qkv + 2 * ATT_C, ATT_LD, NULL, 0, seq_start,
							 ATT_B, ATT_C, ATT_NH);
	varlen_attention_backward(dqkv_cpu, dqkv_cpu + ATT_C, dqkv_cpu + 2 * ATT_C,
							  scratch_cpu, dout, probs_cpu, qkv, qkv + ATT_C,
							  qkv + 2 * ATT_C, ATT_LD, NULL, 0, seq_start,
							  ATT_B, ATT_C, ATT_NH);

	d_seq = dev_upload(seq_start, sizeof(seq_start));
	d_qkv = dev_upload(qkv, (size_t) N * ATT_LD * sizeof(float));
	d_dout = dev_upload(dout, (size_t) N * ATT_C * sizeof(float));
	d_dqkv = dev_upload(dqkv0, (size_t) N * ATT_LD * sizeof(float));
	d_out = dev_alloc((size_t) N * ATT_C * sizeof(float));
	d_probs = dev_alloc(P * sizeof(float));
	d_scratch = dev_alloc(P * sizeof(float));
	dev_poison(d_out, (size_t) N * ATT_C * sizeof(float));
	dev_poison(d_probs, P * sizeof(float));
	dev_poison(d_scratch, P * sizeof(float));

	printf("attention: lengths 5 1 0 3, C=%d NH=%d ld=%d\n", ATT_C, ATT_NH, ATT_LD);
	assert_int_equal(peft_cuda_varlen_attention_forward(
		d_out, d_probs, NULL, d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C, ATT_LD,
		NULL, 0, d_seq, ATT_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("forward out", d_out, out_cpu, (size_t) N * ATT_C, TOL_ATTENTION);
	expect_close("forward probs", d_probs, probs_cpu, P, TOL_ATTENTION);

	/* Backward from the CPU probs, so the two backward passes see one input. */
	assert_int_equal(cudaMemcpy(d_probs, probs_cpu, P * sizeof(float),
								cudaMemcpyHostToDevice), cudaSuccess);
	assert_int_equal(peft_cuda_varlen_attention_backward(
		d_dqkv, d_dqkv + ATT_C, d_dqkv + 2 * ATT_C, d_scratch, d_dout, d_probs,
		d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C, ATT_LD, NULL, 0, d_seq,
		ATT_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("backward dq|dk|dv (accumulated)", d_dqkv, dqkv_cpu,
				 (size_t) N * ATT_LD, TOL_ATTENTION);
	expect_close("backward d(scores) scratch", d_scratch, scratch_cpu, P,
				 TOL_ATTENTION);

	cudaFree(d_seq);
	cudaFree(d_qkv);
	cudaFree(d_dout);
	cudaFree(d_dqkv);
	cudaFree(d_out);
	cudaFree(d_probs);
	cudaFree(d_scratch);
	free(qkv);
	free(dout);
	free(dqkv0);
	free(out_cpu);
	free(probs_cpu);
	free(scratch_cpu);
	free(dqkv_cpu);
}


/* ---- attention dropout --------------------------------------------------- */

/* Packed lengths 7, 1, 0 (an empty sequence), 12: N = 20, fused [N, 3C] q|k|v. */
#define DROP_B 4

static const int drop_lengths[DROP_B] = {7, 1, 0, 12};

/*
 * Attention with dropout of the weights at rate p, the mask drawn by
 * dropout_mask from a seeded PeftRng in the probs layout, against
 * varlen_attention_forward/backward: out, probs (pre-dropout) and dropped
 * of the forward; dq|dk|dv and d(scores) of the backward; then dv alone
 * (the key kernel without the query kernel) and the forward with dropped
 * NULL (the weights used but not stored).
 */
static void
check_attention_dropout(float p, uint64_t seed)
{
	int32_t		seq_start[DROP_B + 1];
	int			N;
	size_t		P;
	size_t		nqkv;
	uint8_t    *keep;
	float	   *qkv, *dout, *dqkv0;
	float	   *out_cpu, *probs_cpu, *dropped_cpu, *scratch_cpu, *dqkv_cpu;
	float	   *d_qkv, *d_dout, *d_out, *d_probs, *d_dropped, *d_scratch, *d_dqkv;
	uint8_t    *d_keep;
	int32_t    *d_seq;
	PeftRng		rng;
	size_t		kept = 0;
	char		msg[MSG_LEN] = "";

	seq_start[0] = 0;
	for (int b = 0; b < DROP_B; b++)
		seq_start[b + 1] = seq_start[b] + drop_lengths[b];
	N = seq_start[DROP_B];
	P = varlen_attention_size(seq_start, DROP_B, ATT_NH);
	nqkv = (size_t) N * ATT_LD;

	keep = malloc(P);
	assert_non_null(keep);
	peft_rng_seed(&rng, seed);
	dropout_mask(keep, P, p, &rng);
	for (size_t i = 0; i < P; i++)
		kept += keep[i];
	qkv = random_array(nqkv);
	dout = random_array((size_t) N * ATT_C);
	/* Non-zero starting gradients check that the backward accumulates. */
	dqkv0 = random_array(nqkv);
	out_cpu = calloc((size_t) N * ATT_C, sizeof(float));
	probs_cpu = calloc(P, sizeof(float));
	dropped_cpu = calloc(P, sizeof(float));
	scratch_cpu = calloc(P, sizeof(float));
	dqkv_cpu = copy_array(dqkv0, nqkv);
	assert_non_null(out_cpu);
	assert_non_null(probs_cpu);
	assert_non_null(dropped_cpu);
	assert_non_null(scratch_cpu);

	varlen_attention_forward(out_cpu, probs_cpu, dropped_cpu, qkv, qkv + ATT_C,
							 qkv + 2 * ATT_C, ATT_LD, keep, p, seq_start,
							 DROP_B, ATT_C, ATT_NH);
	varlen_attention_backward(dqkv_cpu, dqkv_cpu + ATT_C, dqkv_cpu + 2 * ATT_C,
							  scratch_cpu, dout, probs_cpu, qkv, qkv + ATT_C,
							  qkv + 2 * ATT_C, ATT_LD, keep, p, seq_start,
							  DROP_B, ATT_C, ATT_NH);

	d_seq = dev_upload(seq_start, sizeof(seq_start));
	d_keep = dev_upload(keep, P);
	d_qkv = dev_upload(qkv, nqkv * sizeof(float));
	d_dout = dev_upload(dout, (size_t) N * ATT_C * sizeof(float));
	d_dqkv = dev_upload(dqkv0, nqkv * sizeof(float));
	d_out = dev_alloc((size_t) N * ATT_C * sizeof(float));
	d_probs = dev_alloc(P * sizeof(float));
	d_dropped = dev_alloc(P * sizeof(float));
	d_scratch = dev_alloc(P * sizeof(float));
	dev_poison(d_out, (size_t) N * ATT_C * sizeof(float));
	dev_poison(d_probs, P * sizeof(float));
	dev_poison(d_dropped, P * sizeof(float));
	dev_poison(d_scratch, P * sizeof(float));

	printf("attention dropout p=%g: lengths 7 1 0 12, C=%d NH=%d ld=%d, %zu of %zu kept\n",
		   (double) p, ATT_C, ATT_NH, ATT_LD, kept, P);
	assert_int_equal(peft_cuda_varlen_attention_forward(
		d_out, d_probs, d_dropped, d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C,
		ATT_LD, d_keep, p, d_seq, DROP_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("dropout forward out", d_out, out_cpu, (size_t) N * ATT_C,
				 TOL_ATTENTION);
	expect_close("dropout forward probs", d_probs, probs_cpu, P, TOL_ATTENTION);
	expect_close("dropout forward dropped", d_dropped, dropped_cpu, P,
				 TOL_ATTENTION);

	/* Backward from the CPU probs, so the two backward passes see one input. */
	assert_int_equal(cudaMemcpy(d_probs, probs_cpu, P * sizeof(float),
								cudaMemcpyHostToDevice), cudaSuccess);
	assert_int_equal(peft_cuda_varlen_attention_backward(
		d_dqkv, d_dqkv + ATT_C, d_dqkv + 2 * ATT_C, d_scratch, d_dout, d_probs,
		d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C, ATT_LD, d_keep, p, d_seq,
		DROP_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("dropout backward dq|dk|dv", d_dqkv, dqkv_cpu, nqkv,
				 TOL_ATTENTION);
	expect_close("dropout backward d(scores)", d_scratch, scratch_cpu, P,
				 TOL_ATTENTION);

	/* dv alone: dv += dropped^T dout from the key kernel only. */
	memcpy(dqkv_cpu, dqkv0, nqkv * sizeof(float));
	varlen_attention_backward(NULL, NULL, dqkv_cpu + 2 * ATT_C, scratch_cpu, dout,
							  probs_cpu, qkv, qkv + ATT_C, qkv + 2 * ATT_C, ATT_LD,
							  keep, p, seq_start, DROP_B, ATT_C, ATT_NH);
	assert_int_equal(cudaMemcpy(d_dqkv, dqkv0, nqkv * sizeof(float),
								cudaMemcpyHostToDevice), cudaSuccess);
	assert_int_equal(peft_cuda_varlen_attention_backward(
		NULL, NULL, d_dqkv + 2 * ATT_C, NULL, d_dout, d_probs,
		d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C, ATT_LD, d_keep, p, d_seq,
		DROP_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("dropout backward dv only", d_dqkv, dqkv_cpu, nqkv,
				 TOL_ATTENTION);

	/* dropped NULL: the same output, the weights not stored. */
	dev_poison(d_out, (size_t) N * ATT_C * sizeof(float));
	assert_int_equal(peft_cuda_varlen_attention_forward(
		d_out, d_probs, NULL, d_qkv, d_qkv + ATT_C, d_qkv + 2 * ATT_C,
		ATT_LD, d_keep, p, d_seq, DROP_B, N, ATT_C, ATT_NH, msg, MSG_LEN), 0);
	expect_close("dropout forward out, dropped NULL", d_out, out_cpu,
				 (size_t) N * ATT_C, TOL_ATTENTION);

	cudaFree(d_seq);
	cudaFree(d_keep);
	cudaFree(d_qkv);
	cudaFree(d_dout);
	cudaFree(d_dqkv);
	cudaFree(d_out);
	cudaFree(d_probs);
	cudaFree(d_dropped);
	cudaFree(d_scratch);
	free(keep);
	free(qkv);
	free(dout);
	free(dqkv0);
	free(out_cpu);
	free(probs_cpu);
	free(dropped_cpu);
	free(scratch_cpu);
	free(dqkv_cpu);
}

/* Attention dropout at p = 0.1 (BERT's rate) and p = 0.5. */
static void
test_attention_dropout(void **state)
{
	(void) state;
	SKIP_WITHOUT_DEVICE();
	check_attention_dropout(0.1f, 61);
	check_attention_dropout(0.5f, 62);
}


/* ---- GEMM ---------------------------------------------------------------- */

#define GM 37
#define GN 29
#define GK 45

/* Round x to BF16 (nearest even) and back, as the GPU conversion does. */
static float
bf16_round(float x)
{
	uint32_t	bits;

	memcpy(&bits, &x, sizeof(bits));
	bits += 0x7FFFu + ((bits >> 16) & 1u);
	bits &= 0xFFFF0000u;
	memcpy(&x, &bits, sizeof(x));
	return x;
}

/*
 * One GEMM shape and precision (math 0 FP32, 1 TF32, 2 BF16) against
 * matmul(): beta = 0 into a poisoned C, then alpha 1.5, beta 0.5 onto a
 * random C.  A and B are stored with strides larger than their rows.
 */
static void
check_gemm(PeftGemmOp ta, PeftGemmOp tb, int math, double tol)
{
	int			a_rows = ta == PEFT_GEMM_T ? GK : GM;
	int			a_cols = ta == PEFT_GEMM_T ? GM : GK;
	int			b_rows = tb == PEFT_GEMM_T ? GN : GK;
	int			b_cols = tb == PEFT_GEMM_T ? GK : GN;
	int			lda = a_cols + 3;
	int			ldb = b_cols + 2;
	int			ldc = GN + 1;
	size_t		na = (size_t) a_rows * lda;
	size_t		nb = (size_t) b_rows * ldb;
	size_t		nc = (size_t) GM * ldc;
	float	   *A = random_array(na);
	float	   *B = random_array(nb);
	float	   *C0 = random_array(nc);
	float	   *C = copy_array(C0, nc);
	float	   *d_A = dev_upload(A, na * sizeof(float));
	float	   *d_B = dev_upload(B, nb * sizeof(float));
	float	   *d_C = dev_alloc(nc * sizeof(float));
	void	   *d_Ah = NULL;
	void	   *d_Bh = NULL;
	CBLAS_TRANSPOSE cta = ta == PEFT_GEMM_T ? CblasTrans : CblasNoTrans;
	CBLAS_TRANSPOSE ctb = tb == PEFT_GEMM_T ? CblasTrans : CblasNoTrans;
	char		what[64];
	char		msg[MSG_LEN] = "";

	if (math == 2)
	{
		/* The reference multiplies the same BF16-rounded inputs in FP32. */
		d_Ah = dev_alloc(na * 2);
		d_Bh = dev_alloc(nb * 2);
		assert_int_equal(peft_cuda_float_to_bf16(d_Ah, d_A, na, msg, MSG_LEN), 0);
		assert_int_equal(peft_cuda_float_to_bf16(d_Bh, d_B, nb, msg, MSG_LEN), 0);
		for (size_t i = 0; i < na; i++)
			A[i] = bf16_round(A[i]);
		for (size_t i = 0; i < nb; i++)
			B[i] = bf16_round(B[i]);
	}

	for (int pass = 0; pass < 2; pass++)
	{
		float		alpha = pass == 0 ? 1.0f : 1.5f;
		float		beta = pass == 0 ? 0.0f : 0.5f;
		int			rc;

		memcpy(C, C0, nc * sizeof(float));
		matmul(cta, ctb, GM, GN, GK, alpha, A, lda, B, ldb, beta, C, ldc);
		if (pass == 0)
			dev_poison(d_C, nc * sizeof(float));
		else
			assert_int_equal(cudaMemcpy(d_C, C0, nc * sizeof(float),
										cudaMemcpyHostToDevice), cudaSuccess);
		if (math == 2)
			rc = peft_cuda_gemm_bf16(ta, tb, GM, GN, GK, alpha, d_Ah, lda, d_Bh,
									 ldb, beta, d_C, ldc, msg, MSG_LEN);
		else
			rc = peft_cuda_gemm(ta, tb, GM, GN, GK, alpha, d_A, lda, d_B, ldb,
								beta, d_C, ldc, (PeftGemmMath) math, msg, MSG_LEN);
		if (rc != 0)
			printf("  %s\n", msg);
		assert_int_equal(rc, 0);
		/* Row padding of C is never written: compare the M x N values only. */
		for (int i = 0; i < GM; i++)
			for (int j = GN; j < ldc; j++)
				C[(size_t) i * ldc + j] = 0;
		{
			float	   *got = malloc(nc * sizeof(float));
			double		err;

			assert_non_null(got);
			dev_download(got, d_C, nc);
			for (int i = 0; i < GM; i++)
				for (int j = GN; j < ldc; j++)
					got[(size_t) i * ldc + j] = 0;
			err = relative_error(got, C, nc);
			snprintf(what, sizeof(what), "gemm %s%s %s beta=%g",
					 ta == PEFT_GEMM_T ? "T" : "N", tb == PEFT_GEMM_T ? "T" : "N",
					 math == 0 ? "FP32" : math == 1 ? "TF32" : "BF16",
					 (double) beta);
			printf("  %-34s relative error %.3g (tolerance %.0e)\n", what, err, tol);
			free(got);
			assert_true(err <= tol);
		}
	}

	cudaFree(d_A);
	cudaFree(d_B);
	cudaFree(d_C);
	cudaFree(d_Ah);
	cudaFree(d_Bh);
	free(A);
	free(B);
	free(C0);
	free(C);
}

/* All four transpose combinations in FP32, TF32 and BF16. */
static void
test_gemm(void **state)
{
	static const PeftGemmOp ops[2] = {PEFT_GEMM_N, PEFT_GEMM_T};

	(void) state;
	SKIP_WITHOUT_DEVICE();
	printf("gemm: M=%d N=%d K=%d\n", GM, GN, GK);
	for (int ia = 0; ia < 2; ia++)
		for (int ib = 0; ib < 2; ib++)
		{
			check_gemm(ops[ia], ops[ib], 0, TOL_FP32);
			check_gemm(ops[ia], ops[ib], 1, TOL_TF32);
			check_gemm(ops[ia], ops[ib], 2, TOL_BF16);
		}
}

/* Bad shapes are an error with a message, not a cuBLAS abort. */
static void
test_gemm_rejects_bad_shapes(void **state)
{
	char		msg[MSG_LEN] = "";

	(void) state;
	SKIP_WITHOUT_DEVICE();
	assert_int_not_equal(peft_cuda_gemm(PEFT_GEMM_N, PEFT_GEMM_N, 4, 4, 4, 1.0f,
										NULL, 2, NULL, 4, 0.0f, NULL, 4,
										PEFT_GEMM_FP32, msg, MSG_LEN), 0);
	printf("  refused: %s\n", msg);
	assert_true(msg[0] != '\0');
}


/* ---- LoRA ---------------------------------------------------------------- */

#define L_N 11
#define L_OUT 24
#define L_R 4
#define L_LDO (L_OUT + 8)
#define L_SCALING 2.0f

/* LoRA forward and both backward pieces against matmul(). */
static void
test_lora(void **state)
{
	float	   *xa, *Bw, *out0, *dout, *dB0, *out, *dB, *dxa;
	float	   *d_xa, *d_Bw, *d_out, *d_dout, *d_dB, *d_dxa;
	char		msg[MSG_LEN] = "";

	(void) state;
	SKIP_WITHOUT_DEVICE();
	xa = random_array((size_t) L_N * L_R);
	Bw = random_array((size_t) L_OUT * L_R);
	out0 = random_array((size_t) L_N * L_LDO);
	dout = random_array((size_t) L_N * L_LDO);
	dB0 = random_array((size_t) L_OUT * L_R);
	out = copy_array(out0, (size_t) L_N * L_LDO);
	dB = copy_array(dB0, (size_t) L_OUT * L_R);
	dxa = calloc((size_t) L_N * L_R, sizeof(float));
	assert_non_null(dxa);

	/* out += s xa B^T; dB += s dout^T xa; dxa = s dout B (the ld padding too) */
	matmul(CblasNoTrans, CblasTrans, L_N, L_OUT, L_R, L_SCALING, xa, L_R, Bw, L_R,
		   1, out, L_LDO);
	matmul(CblasTrans, CblasNoTrans, L_OUT, L_R, L_N, L_SCALING, dout, L_LDO,
		   xa, L_R, 1, dB, L_R);
	matmul(CblasNoTrans, CblasNoTrans, L_N, L_R, L_OUT, L_SCALING, dout, L_LDO,
		   Bw, L_R, 0, dxa, L_R);

	d_xa = dev_upload(xa, (size_t) L_N * L_R * sizeof(float));
	d_Bw = dev_upload(Bw, (size_t) L_OUT * L_R * sizeof(float));
	d_out = dev_upload(out0, (size_t) L_N * L_LDO * sizeof(float));
	d_dout = dev_upload(dout, (size_t) L_N * L_LDO * sizeof(float));
	d_dB = dev_upload(dB0, (size_t) L_OUT * L_R * sizeof(float));
	d_dxa = dev_alloc((size_t) L_N * L_R * sizeof(float));
	dev_poison(d_dxa, (size_t) L_N * L_R * sizeof(float));

	printf("lora: N=%d OUT=%d r=%d ldo=%d scaling=%g\n", L_N, L_OUT, L_R, L_LDO,
		   (double) L_SCALING);
	assert_int_equal(peft_cuda_lora_forward(d_out, L_LDO, d_xa, d_Bw, L_N, L_OUT,
											L_R, L_SCALING, PEFT_GEMM_FP32,
											msg, MSG_LEN), 0);
	assert_int_equal(peft_cuda_lora_backward_b(d_dB, d_dout, L_LDO, d_xa, L_N,
											   L_OUT, L_R, L_SCALING,
											   PEFT_GEMM_FP32, msg, MSG_LEN), 0);
	assert_int_equal(peft_cuda_lora_backward_xa(d_dxa, d_dout, L_LDO, d_Bw, L_N,
												L_OUT, L_R, L_SCALING,
												PEFT_GEMM_FP32, msg, MSG_LEN), 0);
	expect_close("lora out += s xa B^T", d_out, out, (size_t) L_N * L_LDO, TOL_FP32);
	expect_close("lora dB += s dout^T xa", d_dB, dB, (size_t) L_OUT * L_R, TOL_FP32);
	expect_close("lora dxa = s dout B", d_dxa, dxa, (size_t) L_N * L_R, TOL_FP32);

	cudaFree(d_xa);
	cudaFree(d_Bw);
	cudaFree(d_out);
	cudaFree(d_dout);
	cudaFree(d_dB);
	cudaFree(d_dxa);
	free(xa);
	free(Bw);
	free(out0);
	free(dout);
	free(dB0);
	free(out);
	free(dB);
	free(dxa);
}

/* Run the GPU checks (each skips without a device). */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attention),
		cmocka_unit_test(test_attention_dropout),
		cmocka_unit_test(test_gemm),
		cmocka_unit_test(test_gemm_rejects_bad_shapes),
		cmocka_unit_test(test_lora),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
