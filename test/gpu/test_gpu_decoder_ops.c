/*
 * test_gpu_decoder_ops.c - the CUDA decoder kernels (kernels/decoder_ops.h)
 * against the CPU operations of src/engine/ops/ops_decoder.h on fresh random
 * inputs: RMSNorm, RoPE in both layouts, SwiGLU, each forward and
 * backward, and causal GQA attention over a key/value cache (prefill rows
 * in a shuffled order, decode rows, contexts over several chunks of keys,
 * a row outside the cache).  Outputs are poisoned with 0xFF (NaN) before
 * each GPU run, so an element a kernel skips fails; accumulated gradients
 * start from random values, so += is tested.  The error is
 * max|gpu - cpu| / max|cpu| (gpu_test_util.h's relative_error).  Tests
 * that need a device skip without one; the argument checks run anyway.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "decoder_ops.h"
#include "ops_decoder.h"
#include "rng.h"
#include "threadpool.h"

#include "gpu_test_util.h"

#ifdef PEFT_DOUBLE
#error "test_gpu_decoder_ops.c checks the float build"
#endif

/*
 * Tolerances (relative, as above).  Not yet measured on a GPU: each is set
 * from what the arithmetic allows, to be replaced by a few times the
 * figure of the first run.
 */
/* the same float products, row sums in double in another order: a few ulps */
#define TOL_RMSNORM 1e-6
/* dinp may fuse into FMAs where the CPU rounds twice */
#define TOL_RMSNORM_BACKWARD 1e-5
/* the same float32 angle, cos/sin in double rounded once, products unfused: ulps */
#define TOL_ROPE 1e-6
/* expf against the CPU's vec_exp, each within 2 ulps */
#define TOL_SWIGLU 1e-6
/* float dot products and sums in another order than the CPU's double ones */
#define TOL_ATTENTION 1e-5

_Static_assert(PEFT_CUDA_ROPE_PAIRS == ROPE_PAIRS && PEFT_CUDA_ROPE_HALVES == ROPE_HALVES,
			   "decoder_ops.h's layout numbers are ops_decoder.h's");

static PeftRng rng;

/* Seed the generator; two engine threads run the CPU references. */
static int
setup(void **state)
{
	(void) state;
	peft_rng_seed(&rng, 4242);
	return peft_threads_init(2, NULL) == PEFT_OK ? 0 : -1;
}

/* Stop the engine threads. */
static int
teardown(void **state)
{
	(void) state;
	peft_threads_shutdown();
	return 0;
}

/* Compare dev[n] with cpu[n]; print the error and fail above tol. */
static void
check_tol(const char *what, const void *dev, const float *cpu, size_t n, double tol)
{
	float	   *gpu = host_alloc(n * sizeof(float));
	double		err;

	from_gpu(gpu, dev, n * sizeof(float));
	err = relative_error(gpu, cpu, n);
	print_message("%-36s n=%-8zu rel err %.3g (limit %.1g)\n", what, n, err, tol);
	free(gpu);
	if (!(err <= tol))
		fail_msg("%s: relative error %.3g > %.1g", what, err, tol);
}

/* A new host copy of x[n]. */
static float *
copy_of(const float *x, size_t n)
{
	float	   *y = host_alloc(n * sizeof(float));

	memcpy(y, x, n * sizeof(float));
	return y;
}


/* ---- RMSNorm ------------------------------------------------------------------ */

/* RMSNorm forward (out, rstd) and backward (all, then dweight alone), shapes with a C % 32 tail. */
static void
test_rmsnorm(void **state)
{
	static const int shapes[][2] = {{37, 576}, {5, 45}, {1, 1}, {300, 2048}};

	(void) state;
	require_device();
	for (size_t sh = 0; sh < sizeof(shapes) / sizeof(shapes[0]); sh++)
	{
		int			N = shapes[sh][0], C = shapes[sh][1];
		size_t		nc = (size_t) N * C;
		float	   *inp = host_alloc(nc * sizeof(float));
		float	   *weight = host_alloc(C * sizeof(float));
		float	   *dout = host_alloc(nc * sizeof(float));
		float	   *out = host_alloc(nc * sizeof(float));
		float	   *rstd = host_alloc(N * sizeof(float));
		float	   *dinp0 = host_alloc(nc * sizeof(float));
		float	   *dweight0 = host_alloc(C * sizeof(float));
		float	   *dinp, *dweight;
		float	   *d_inp, *d_weight, *d_dout, *d_out, *d_rstd, *d_dinp, *d_dweight;

		/* an offset mean, so a kernel that subtracts it fails */
		fill_random(inp, nc, -1.0, 3.0, &rng);
		fill_random(weight, C, 0.5, 1.5, &rng);
		fill_random(dout, nc, -1.0, 1.0, &rng);
		fill_random(dinp0, nc, -1.0, 1.0, &rng);
		fill_random(dweight0, C, -1.0, 1.0, &rng);
		rmsnorm_forward(out, rstd, inp, weight, N, C, 1e-5f);
		dinp = copy_of(dinp0, nc);
		dweight = copy_of(dweight0, C);
		rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C);

		d_inp = to_gpu(inp, nc * sizeof(float));
		d_weight = to_gpu(weight, C * sizeof(float));
		d_dout = to_gpu(dout, nc * sizeof(float));
		d_out = poisoned_gpu(nc * sizeof(float));
		d_rstd = poisoned_gpu(N * sizeof(float));
		gpu_ok(peft_cuda_rmsnorm_forward(d_out, d_rstd, d_inp, d_weight, N, C, 1e-5f, NULL,
										 gpu_msg, sizeof(gpu_msg)));
		check_tol("rmsnorm_forward out", d_out, out, nc, TOL_RMSNORM);
		check_tol("rmsnorm_forward rstd", d_rstd, rstd, N, TOL_RMSNORM);

		/* backward from the CPU's rstd, so only the backward is compared */
		gpu_ok(peft_cuda_upload(d_rstd, rstd, N * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		d_dinp = to_gpu(dinp0, nc * sizeof(float));
		d_dweight = to_gpu(dweight0, C * sizeof(float));
		gpu_ok(peft_cuda_rmsnorm_backward(d_dinp, d_dweight, d_dout, d_inp, d_weight, d_rstd,
										  N, C, NULL, gpu_msg, sizeof(gpu_msg)));
		check_tol("rmsnorm_backward dinp", d_dinp, dinp, nc, TOL_RMSNORM_BACKWARD);
		check_tol("rmsnorm_backward dweight", d_dweight, dweight, C, TOL_RMSNORM_BACKWARD);

		/* dinp NULL: only dweight accumulates */
		memcpy(dweight, dweight0, C * sizeof(float));
		rmsnorm_backward(NULL, dweight, dout, inp, weight, rstd, N, C);
		gpu_ok(peft_cuda_upload(d_dweight, dweight0, C * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_rmsnorm_backward(NULL, d_dweight, d_dout, d_inp, d_weight, d_rstd,
										  N, C, NULL, gpu_msg, sizeof(gpu_msg)));
		check_tol("rmsnorm_backward dweight only", d_dweight, dweight, C, TOL_RMSNORM_BACKWARD);

		peft_cuda_free(d_inp);
		peft_cuda_free(d_weight);
		peft_cuda_free(d_dout);
		peft_cuda_free(d_out);
		peft_cuda_free(d_rstd);
		peft_cuda_free(d_dinp);
		peft_cuda_free(d_dweight);
		free(inp);
		free(weight);
		free(dout);
		free(out);
		free(rstd);
		free(dinp0);
		free(dweight0);
		free(dinp);
		free(dweight);
	}
}


/* ---- RoPE ----------------------------------------------------------------------- */

/* RoPE forward and backward, both layouts, positions up to 32767, head sizes 64, 128 and 6. */
static void
test_rope(void **state)
{
	static const int shapes[][3] = {{37, 9, 64}, {5, 3, 128}, {70, 2, 6}};
	static const float bases[] = {100000.0f, 10000.0f, 500000.0f};

	(void) state;
	require_device();
	for (size_t sh = 0; sh < sizeof(shapes) / sizeof(shapes[0]); sh++)
		for (int layout = ROPE_PAIRS; layout <= ROPE_HALVES; layout++)
		{
			int			N = shapes[sh][0], H = shapes[sh][1], D = shapes[sh][2];
			size_t		n = (size_t) N * H * D;
			float	   *x = host_alloc(n * sizeof(float));
			float	   *fwd;
			float	   *bwd;
			int32_t    *pos = host_alloc(N * sizeof(int32_t));
			float	   *d_x;
			int32_t    *d_pos;
			char		what[64];

			fill_random(x, n, -1.0, 1.0, &rng);
			for (int r = 0; r < N; r++)
				pos[r] = r == 0 ? 0 : (int32_t) (peft_rng_uniform(&rng) * 32768);
			fwd = copy_of(x, n);
			rope_forward(fwd, pos, N, H, D, bases[sh], (RopeLayout) layout);
			bwd = copy_of(x, n);
			rope_backward(bwd, pos, N, H, D, bases[sh], (RopeLayout) layout);

			d_pos = to_gpu(pos, N * sizeof(int32_t));
			d_x = to_gpu(x, n * sizeof(float));
			gpu_ok(peft_cuda_rope_forward(d_x, d_pos, N, H, D, bases[sh], layout, NULL,
										  gpu_msg, sizeof(gpu_msg)));
			snprintf(what, sizeof(what), "rope_forward %s D=%d", layout ? "halves" : "pairs", D);
			check_tol(what, d_x, fwd, n, TOL_ROPE);
			gpu_ok(peft_cuda_upload(d_x, x, n * sizeof(float), gpu_msg, sizeof(gpu_msg)));
			gpu_ok(peft_cuda_rope_backward(d_x, d_pos, N, H, D, bases[sh], layout, NULL,
										   gpu_msg, sizeof(gpu_msg)));
			snprintf(what, sizeof(what), "rope_backward %s D=%d", layout ? "halves" : "pairs", D);
			check_tol(what, d_x, bwd, n, TOL_ROPE);

			peft_cuda_free(d_x);
			peft_cuda_free(d_pos);
			free(x);
			free(fwd);
			free(bwd);
			free(pos);
		}
}


/* ---- SwiGLU ---------------------------------------------------------------------- */

/* SwiGLU forward and backward over gates where silu saturates; then dgate alone. */
static void
test_swiglu(void **state)
{
	const size_t n = 100003;
	float	   *gate = host_alloc(n * sizeof(float));
	float	   *up = host_alloc(n * sizeof(float));
	float	   *dout = host_alloc(n * sizeof(float));
	float	   *out = host_alloc(n * sizeof(float));
	float	   *dgate0 = host_alloc(n * sizeof(float));
	float	   *dup0 = host_alloc(n * sizeof(float));
	float	   *dgate, *dup;
	float	   *d_gate, *d_up, *d_dout, *d_out, *d_dgate, *d_dup;

	(void) state;
	require_device();
	fill_random(gate, n, -20.0, 20.0, &rng);
	fill_random(up, n, -1.0, 1.0, &rng);
	fill_random(dout, n, -1.0, 1.0, &rng);
	fill_random(dgate0, n, -1.0, 1.0, &rng);
	fill_random(dup0, n, -1.0, 1.0, &rng);
	swiglu_forward(out, gate, up, n);
	dgate = copy_of(dgate0, n);
	dup = copy_of(dup0, n);
	swiglu_backward(dgate, dup, dout, gate, up, n);

	d_gate = to_gpu(gate, n * sizeof(float));
	d_up = to_gpu(up, n * sizeof(float));
	d_dout = to_gpu(dout, n * sizeof(float));
	d_out = poisoned_gpu(n * sizeof(float));
	d_dgate = to_gpu(dgate0, n * sizeof(float));
	d_dup = to_gpu(dup0, n * sizeof(float));
	gpu_ok(peft_cuda_swiglu_forward(d_out, d_gate, d_up, n, NULL, gpu_msg, sizeof(gpu_msg)));
	check_tol("swiglu_forward", d_out, out, n, TOL_SWIGLU);
	gpu_ok(peft_cuda_swiglu_backward(d_dgate, d_dup, d_dout, d_gate, d_up, n, NULL,
									 gpu_msg, sizeof(gpu_msg)));
	check_tol("swiglu_backward dgate", d_dgate, dgate, n, TOL_SWIGLU);
	check_tol("swiglu_backward dup", d_dup, dup, n, TOL_SWIGLU);

	memcpy(dgate, dgate0, n * sizeof(float));
	swiglu_backward(dgate, NULL, dout, gate, up, n);
	gpu_ok(peft_cuda_upload(d_dgate, dgate0, n * sizeof(float), gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_swiglu_backward(d_dgate, NULL, d_dout, d_gate, d_up, n, NULL,
									 gpu_msg, sizeof(gpu_msg)));
	check_tol("swiglu_backward dgate only", d_dgate, dgate, n, TOL_SWIGLU);

	peft_cuda_free(d_gate);
	peft_cuda_free(d_up);
	peft_cuda_free(d_dout);
	peft_cuda_free(d_out);
	peft_cuda_free(d_dgate);
	peft_cuda_free(d_dup);
	free(gate);
	free(up);
	free(dout);
	free(out);
	free(dgate0);
	free(dup0);
	free(dgate);
	free(dup);
}


/* ---- attention ---------------------------------------------------------------------- */

/* One attention shape: heads, head size, cache, and how many rows of each kind. */
typedef struct AttentionShape
{
	int			Hq;
	int			Hkv;
	int			D;
	int			ctx;
	int			slots;
} AttentionShape;

/*
 * Rows: a prompt of 90 tokens in slot 1, the continuation of a long
 * context in slot 2 (positions ctx-40 .. ctx-1, several chunks of keys),
 * and one decode row in slot 0 at position 5, all shuffled together.
 * Returns the row count; slot and pos must hold 131 rows.
 */
static int
attention_rows(int32_t *slot, int32_t *pos, int ctx)
{
	int			n = 0;

	for (int p = 0; p < 90; p++, n++)
	{
		slot[n] = 1;
		pos[n] = p;
	}
	for (int p = ctx - 40; p < ctx; p++, n++)
	{
		slot[n] = 2;
		pos[n] = p;
	}
	slot[n] = 0;
	pos[n++] = 5;
	for (int i = n - 1; i > 0; i--)
	{
		int			j = (int) (peft_rng_uniform(&rng) * (i + 1));
		int32_t		t;

		t = slot[i], slot[i] = slot[j], slot[j] = t;
		t = pos[i], pos[i] = pos[j], pos[j] = t;
	}
	return n;
}

/*
 * probs of rows [N][Hq][ctx] with only positions 0..pos[r] meaningful,
 * packed into a new array of just those (the kernels leave the rest).
 */
static float *
pack_probs(const float *probs, const int32_t *pos, int N, int Hq, int ctx, size_t *count)
{
	size_t		total = 0;
	float	   *packed;

	for (int r = 0; r < N; r++)
		total += (size_t) Hq * (pos[r] + 1);
	packed = host_alloc(total * sizeof(float));
	total = 0;
	for (int r = 0; r < N; r++)
		for (int h = 0; h < Hq; h++)
		{
			memcpy(packed + total, probs + ((size_t) r * Hq + h) * ctx,
				   (pos[r] + 1) * sizeof(float));
			total += pos[r] + 1;
		}
	*count = total;
	return packed;
}

/* GQA (group 3, D 64), MQA (D 256: several head elements per thread) and MHA (D 8) over the cache. */
static void
test_gqa_attention(void **state)
{
	static const AttentionShape shapes[] = {
		{9, 3, 64, 300, 3}, {4, 1, 256, 200, 4}, {2, 2, 8, 129, 3}
	};

	(void) state;
	require_device();
	for (size_t sh = 0; sh < sizeof(shapes) / sizeof(shapes[0]); sh++)
	{
		const AttentionShape *s = &shapes[sh];
		int32_t		slot[131], pos[131];
		int			N = attention_rows(slot, pos, s->ctx);
		size_t		nq = (size_t) N * s->Hq * s->D;
		size_t		ncache = (size_t) s->slots * s->ctx * s->Hkv * s->D;
		size_t		nprobs = (size_t) N * s->Hq * s->ctx;
		float	   *q = host_alloc(nq * sizeof(float));
		float	   *kcache = host_alloc(ncache * sizeof(float));
		float	   *vcache = host_alloc(ncache * sizeof(float));
		float	   *out = host_alloc(nq * sizeof(float));
		float	   *probs = host_alloc(nprobs * sizeof(float));
		float	   *gpu_probs = host_alloc(nprobs * sizeof(float));
		float	   *cpu_packed, *gpu_packed;
		size_t		npacked;
		float	   *d_q, *d_k, *d_v, *d_out, *d_probs;
		int32_t    *d_slot, *d_pos;
		char		what[64];

		fill_random(q, nq, -1.0, 1.0, &rng);
		/* keys large enough that the softmax is far from uniform */
		fill_random(kcache, ncache, -2.0, 2.0, &rng);
		fill_random(vcache, ncache, -1.0, 1.0, &rng);
		gqa_attention_forward(out, probs, q, kcache, vcache, slot, pos, N, s->Hq, s->Hkv,
							  s->D, s->ctx);

		d_q = to_gpu(q, nq * sizeof(float));
		d_k = to_gpu(kcache, ncache * sizeof(float));
		d_v = to_gpu(vcache, ncache * sizeof(float));
		d_slot = to_gpu(slot, N * sizeof(int32_t));
		d_pos = to_gpu(pos, N * sizeof(int32_t));
		d_out = poisoned_gpu(nq * sizeof(float));
		d_probs = poisoned_gpu(nprobs * sizeof(float));
		gpu_ok(peft_cuda_gqa_attention_forward(d_out, d_probs, d_q, d_k, d_v, d_slot, d_pos, N,
											   s->Hq, s->Hkv, s->D, s->ctx, s->slots, NULL,
											   gpu_msg, sizeof(gpu_msg)));
		snprintf(what, sizeof(what), "gqa_attention Hq=%d Hkv=%d D=%d out", s->Hq, s->Hkv, s->D);
		check_tol(what, d_out, out, nq, TOL_ATTENTION);
		from_gpu(gpu_probs, d_probs, nprobs * sizeof(float));
		cpu_packed = pack_probs(probs, pos, N, s->Hq, s->ctx, &npacked);
		gpu_packed = pack_probs(gpu_probs, pos, N, s->Hq, s->ctx, &npacked);
		{
			double		err = relative_error(gpu_packed, cpu_packed, npacked);

			print_message("%-36s n=%-8zu rel err %.3g (limit %.1g)\n", "gqa_attention probs",
						  npacked, err, TOL_ATTENTION);
			if (!(err <= TOL_ATTENTION))
				fail_msg("gqa_attention probs: relative error %.3g", err);
		}

		/* Without probs the output is the same. */
		gpu_ok(peft_cuda_memset(d_out, 0xFF, nq * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_gqa_attention_forward(d_out, NULL, d_q, d_k, d_v, d_slot, d_pos, N,
											   s->Hq, s->Hkv, s->D, s->ctx, s->slots, NULL,
											   gpu_msg, sizeof(gpu_msg)));
		check_tol("gqa_attention out (no probs)", d_out, out, nq, TOL_ATTENTION);

		peft_cuda_free(d_q);
		peft_cuda_free(d_k);
		peft_cuda_free(d_v);
		peft_cuda_free(d_slot);
		peft_cuda_free(d_pos);
		peft_cuda_free(d_out);
		peft_cuda_free(d_probs);
		free(q);
		free(kcache);
		free(vcache);
		free(out);
		free(probs);
		free(gpu_probs);
		free(cpu_packed);
		free(gpu_packed);
	}
}

/* A row whose slot or position is outside the cache gets zeros, and reads nothing outside it. */
static void
test_gqa_attention_out_of_cache(void **state)
{
	enum
	{
		Hq = 2, Hkv = 1, D = 8, CTX = 4, SLOTS = 2, N = 3
	};
	int32_t		slot[N] = {2, 0, -1};
	int32_t		pos[N] = {0, 4, 0};
	size_t		ncache = (size_t) SLOTS * CTX * Hkv * D;
	float	   *cache = host_alloc(ncache * sizeof(float));
	float		zeros[N * Hq * D] = {0};
	float	   *d_q, *d_k, *d_out;
	int32_t    *d_slot, *d_pos;

	(void) state;
	require_device();
	fill_random(cache, ncache, -1.0, 1.0, &rng);
	d_q = to_gpu(zeros, sizeof(zeros));
	d_k = to_gpu(cache, ncache * sizeof(float));
	d_slot = to_gpu(slot, sizeof(slot));
	d_pos = to_gpu(pos, sizeof(pos));
	d_out = poisoned_gpu(sizeof(zeros));
	gpu_ok(peft_cuda_gqa_attention_forward(d_out, NULL, d_q, d_k, d_k, d_slot, d_pos, N, Hq, Hkv,
										   D, CTX, SLOTS, NULL, gpu_msg, sizeof(gpu_msg)));
	check_tol("gqa_attention rows outside the cache", d_out, zeros, N * Hq * D, 0);
	peft_cuda_free(d_q);
	peft_cuda_free(d_k);
	peft_cuda_free(d_slot);
	peft_cuda_free(d_pos);
	peft_cuda_free(d_out);
	free(cache);
}

/* Bad shapes are refused before anything is launched (runs without a device too). */
static void
test_argument_checks(void **state)
{
	float		x = 0;
	int32_t		i = 0;

	(void) state;
	assert_int_equal(peft_cuda_rope_forward(&x, &i, 1, 1, 5, 10000.0f, PEFT_CUDA_ROPE_PAIRS,
											NULL, gpu_msg, sizeof(gpu_msg)), -1);
	print_message("odd head size: %s\n", gpu_msg);
	assert_int_equal(peft_cuda_rope_backward(&x, &i, 1, 1, 4, 10000.0f, 7, NULL,
											 gpu_msg, sizeof(gpu_msg)), -1);
	assert_int_equal(peft_cuda_gqa_attention_forward(&x, NULL, &x, &x, &x, &i, &i, 1, 3, 2, 8,
													 4, 1, NULL, gpu_msg, sizeof(gpu_msg)), -1);
	print_message("heads that do not group: %s\n", gpu_msg);
	assert_int_equal(peft_cuda_rmsnorm_forward(&x, NULL, &x, &x, -1, 4, 1e-5f, NULL,
											   gpu_msg, sizeof(gpu_msg)), -1);
	assert_int_equal(peft_cuda_swiglu_forward(NULL, &x, &x, 1, NULL, gpu_msg, sizeof(gpu_msg)), -1);
	/* empty tensors are no-ops, even with NULL pointers */
	assert_int_equal(peft_cuda_swiglu_forward(NULL, NULL, NULL, 0, NULL, gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_gqa_attention_forward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 2,
													 1, 8, 4, 1, NULL, gpu_msg, sizeof(gpu_msg)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_argument_checks),
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_swiglu),
		cmocka_unit_test(test_gqa_attention),
		cmocka_unit_test(test_gqa_attention_out_of_cache),
	};

	return cmocka_run_group_tests_name("CUDA decoder ops against the CPU", tests, setup, teardown);
}
