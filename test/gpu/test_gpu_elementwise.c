/*
 * test_gpu_elementwise.c - the CUDA element-wise, LayerNorm, loss and
 * optimiser kernels (kernels/cuda_ops.h) against the CPU reference ops
 * (src/engine/ops/ops.h) on fresh random inputs: outputs are poisoned with
 * 0xFF (NaN) before each GPU run so a kernel that skips an element fails,
 * and accumulated gradients start from random non-zero values so += is
 * tested.  Every test skips when no CUDA device is visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cuda_backend.h"
#include "cuda_ops.h"
#include "ops.h"
#include "rng.h"

#define TOLERANCE 1e-5

#include "gpu_test_util.h"

/* LayerNorm forward (out, mean, rstd) on shapes with and without a C % 32 tail. */
static void
test_layernorm_forward(void **state)
{
	static const int shapes[][2] = {{37, 768}, {5, 45}, {1, 1}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 11);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			N = shapes[s][0], C = shapes[s][1];
		size_t		nc = (size_t) N * C;
		float	   *inp = host_alloc(nc * sizeof(float));
		float	   *gamma = host_alloc(C * sizeof(float));
		float	   *beta = host_alloc(C * sizeof(float));
		float	   *out = host_alloc(nc * sizeof(float));
		float	   *mean = host_alloc(N * sizeof(float));
		float	   *rstd = host_alloc(N * sizeof(float));
		float	   *d_inp, *d_gamma, *d_beta, *d_out, *d_mean, *d_rstd;

		/* an offset mean, so a kernel that forgets to subtract it fails */
		fill_random(inp, nc, -1.0, 3.0, &rng);
		fill_random(gamma, C, 0.5, 1.5, &rng);
		fill_random(beta, C, -0.5, 0.5, &rng);
		layernorm_forward(out, mean, rstd, inp, gamma, beta, N, C, 1e-12f);

		d_inp = to_gpu(inp, nc * sizeof(float));
		d_gamma = to_gpu(gamma, C * sizeof(float));
		d_beta = to_gpu(beta, C * sizeof(float));
		d_out = poisoned_gpu(nc * sizeof(float));
		d_mean = poisoned_gpu(N * sizeof(float));
		d_rstd = poisoned_gpu(N * sizeof(float));
		gpu_ok(peft_cuda_layernorm_forward(d_out, d_mean, d_rstd, d_inp, d_gamma,
										   d_beta, N, C, 1e-12f, NULL,
										   gpu_msg, sizeof(gpu_msg)));
		check_close("layernorm_forward out", d_out, out, nc);
		check_close("layernorm_forward mean", d_mean, mean, N);
		/* C == 1 has zero variance: rstd = 1/sqrt(eps), still finite */
		check_close("layernorm_forward rstd", d_rstd, rstd, N);

		peft_cuda_free(d_inp);
		peft_cuda_free(d_gamma);
		peft_cuda_free(d_beta);
		peft_cuda_free(d_out);
		peft_cuda_free(d_mean);
		peft_cuda_free(d_rstd);
		free(inp);
		free(gamma);
		free(beta);
		free(out);
		free(mean);
		free(rstd);
	}
}

/* LayerNorm backward, all gradients and then dgamma alone (dinp, dbeta NULL). */
static void
test_layernorm_backward(void **state)
{
	static const int shapes[][2] = {{37, 768}, {70, 45}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 12);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			N = shapes[s][0], C = shapes[s][1];
		size_t		nc = (size_t) N * C;
		float	   *inp = host_alloc(nc * sizeof(float));
		float	   *dout = host_alloc(nc * sizeof(float));
		float	   *gamma = host_alloc(C * sizeof(float));
		float	   *beta = host_alloc(C * sizeof(float));
		float	   *out = host_alloc(nc * sizeof(float));
		float	   *mean = host_alloc(N * sizeof(float));
		float	   *rstd = host_alloc(N * sizeof(float));
		float	   *dinp0 = host_alloc(nc * sizeof(float));
		float	   *dgamma0 = host_alloc(C * sizeof(float));
		float	   *dbeta0 = host_alloc(C * sizeof(float));
		float	   *dinp = host_alloc(nc * sizeof(float));
		float	   *dgamma = host_alloc(C * sizeof(float));
		float	   *dbeta = host_alloc(C * sizeof(float));
		float	   *d_inp, *d_dout, *d_gamma, *d_mean, *d_rstd;
		float	   *d_dinp, *d_dgamma, *d_dbeta;

		fill_random(inp, nc, -1.0, 3.0, &rng);
		fill_random(dout, nc, -1.0, 1.0, &rng);
		fill_random(gamma, C, 0.5, 1.5, &rng);
		fill_random(beta, C, -0.5, 0.5, &rng);
		fill_random(dinp0, nc, -1.0, 1.0, &rng);
		fill_random(dgamma0, C, -1.0, 1.0, &rng);
		fill_random(dbeta0, C, -1.0, 1.0, &rng);
		layernorm_forward(out, mean, rstd, inp, gamma, beta, N, C, 1e-12f);
		memcpy(dinp, dinp0, nc * sizeof(float));
		memcpy(dgamma, dgamma0, C * sizeof(float));
		memcpy(dbeta, dbeta0, C * sizeof(float));
		layernorm_backward(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, N, C);

		d_inp = to_gpu(inp, nc * sizeof(float));
		d_dout = to_gpu(dout, nc * sizeof(float));
		d_gamma = to_gpu(gamma, C * sizeof(float));
		d_mean = to_gpu(mean, N * sizeof(float));
		d_rstd = to_gpu(rstd, N * sizeof(float));
		d_dinp = to_gpu(dinp0, nc * sizeof(float));
		d_dgamma = to_gpu(dgamma0, C * sizeof(float));
		d_dbeta = to_gpu(dbeta0, C * sizeof(float));
		gpu_ok(peft_cuda_layernorm_backward(d_dinp, d_dgamma, d_dbeta, d_dout,
											d_inp, d_gamma, d_mean, d_rstd,
											N, C, NULL, gpu_msg, sizeof(gpu_msg)));
		check_close("layernorm_backward dinp", d_dinp, dinp, nc);
		check_close("layernorm_backward dgamma", d_dgamma, dgamma, C);
		check_close("layernorm_backward dbeta", d_dbeta, dbeta, C);

		/* NULL gradients are skipped: only dgamma accumulates. */
		memcpy(dgamma, dgamma0, C * sizeof(float));
		layernorm_backward(NULL, dgamma, NULL, dout, inp, gamma, mean, rstd, N, C);
		gpu_ok(peft_cuda_upload(d_dgamma, dgamma0, C * sizeof(float),
								gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_layernorm_backward(NULL, d_dgamma, NULL, d_dout,
											d_inp, d_gamma, d_mean, d_rstd,
											N, C, NULL, gpu_msg, sizeof(gpu_msg)));
		check_close("layernorm_backward dgamma only", d_dgamma, dgamma, C);

		peft_cuda_free(d_inp);
		peft_cuda_free(d_dout);
		peft_cuda_free(d_gamma);
		peft_cuda_free(d_mean);
		peft_cuda_free(d_rstd);
		peft_cuda_free(d_dinp);
		peft_cuda_free(d_dgamma);
		peft_cuda_free(d_dbeta);
		free(inp);
		free(dout);
		free(gamma);
		free(beta);
		free(out);
		free(mean);
		free(rstd);
		free(dinp0);
		free(dgamma0);
		free(dbeta0);
		free(dinp);
		free(dgamma);
		free(dbeta);
	}
}

/* Exact GELU forward and backward over the range where erf saturates. */
static void
test_gelu(void **state)
{
	const size_t n = 100003;
	float	   *inp;
	float	   *dout;
	float	   *out;
	float	   *dinp;
	float	   *d_inp, *d_dout, *d_out, *d_dinp;
	PeftRng		rng;

	(void) state;
	require_device();
	inp = host_alloc(n * sizeof(float));
	dout = host_alloc(n * sizeof(float));
	out = host_alloc(n * sizeof(float));
	dinp = host_alloc(n * sizeof(float));
	peft_rng_seed(&rng, 13);
	fill_random(inp, n, -6.0, 6.0, &rng);
	fill_random(dout, n, -1.0, 1.0, &rng);
	fill_random(dinp, n, -1.0, 1.0, &rng);
	d_inp = to_gpu(inp, n * sizeof(float));
	d_dout = to_gpu(dout, n * sizeof(float));
	d_dinp = to_gpu(dinp, n * sizeof(float));
	d_out = poisoned_gpu(n * sizeof(float));

	gelu_forward(out, inp, n);
	gpu_ok(peft_cuda_gelu_forward(d_out, d_inp, n, NULL, gpu_msg, sizeof(gpu_msg)));
	check_close("gelu_forward", d_out, out, n);

	gelu_backward(dinp, inp, dout, n);
	gpu_ok(peft_cuda_gelu_backward(d_dinp, d_inp, d_dout, n, NULL,
								   gpu_msg, sizeof(gpu_msg)));
	check_close("gelu_backward", d_dinp, dinp, n);

	peft_cuda_free(d_inp);
	peft_cuda_free(d_dout);
	peft_cuda_free(d_out);
	peft_cuda_free(d_dinp);
	free(inp);
	free(dout);
	free(out);
	free(dinp);
}

/* Dropout with a host-drawn mask, forward and backward, then p = 0 (copy / plain +=). */
static void
test_dropout(void **state)
{
	const size_t n = 100003;
	const float p = 0.1f;
	float	   *inp;
	float	   *dout;
	float	   *out;
	float	   *dinp0;
	float	   *dinp;
	uint8_t    *keep;
	float	   *d_inp, *d_dout, *d_out, *d_dinp;
	uint8_t    *d_keep;
	PeftRng		rng;

	(void) state;
	require_device();
	inp = host_alloc(n * sizeof(float));
	dout = host_alloc(n * sizeof(float));
	out = host_alloc(n * sizeof(float));
	dinp0 = host_alloc(n * sizeof(float));
	dinp = host_alloc(n * sizeof(float));
	keep = host_alloc(n);
	peft_rng_seed(&rng, 14);
	fill_random(inp, n, -2.0, 2.0, &rng);
	fill_random(dout, n, -1.0, 1.0, &rng);
	fill_random(dinp0, n, -1.0, 1.0, &rng);
	dropout_mask(keep, n, p, &rng);
	d_inp = to_gpu(inp, n * sizeof(float));
	d_dout = to_gpu(dout, n * sizeof(float));
	d_keep = to_gpu(keep, n);
	d_out = poisoned_gpu(n * sizeof(float));
	d_dinp = to_gpu(dinp0, n * sizeof(float));

	dropout_forward(out, inp, keep, p, n);
	gpu_ok(peft_cuda_dropout_forward(d_out, d_inp, d_keep, p, n, NULL,
									 gpu_msg, sizeof(gpu_msg)));
	check_close("dropout_forward", d_out, out, n);

	memcpy(dinp, dinp0, n * sizeof(float));
	dropout_backward(dinp, dout, keep, p, n);
	gpu_ok(peft_cuda_dropout_backward(d_dinp, d_dout, d_keep, p, n, NULL,
									  gpu_msg, sizeof(gpu_msg)));
	check_close("dropout_backward", d_dinp, dinp, n);

	/* p = 0: forward copies, backward accumulates dout unscaled */
	gpu_ok(peft_cuda_memset(d_out, 0xFF, n * sizeof(float), gpu_msg, sizeof(gpu_msg)));
	dropout_forward(out, inp, keep, 0.0f, n);
	gpu_ok(peft_cuda_dropout_forward(d_out, d_inp, d_keep, 0.0f, n, NULL,
									 gpu_msg, sizeof(gpu_msg)));
	check_close("dropout_forward p=0", d_out, out, n);
	memcpy(dinp, dinp0, n * sizeof(float));
	dropout_backward(dinp, dout, keep, 0.0f, n);
	gpu_ok(peft_cuda_upload(d_dinp, dinp0, n * sizeof(float), gpu_msg, sizeof(gpu_msg)));
	gpu_ok(peft_cuda_dropout_backward(d_dinp, d_dout, d_keep, 0.0f, n, NULL,
									  gpu_msg, sizeof(gpu_msg)));
	check_close("dropout_backward p=0", d_dinp, dinp, n);

	peft_cuda_free(d_inp);
	peft_cuda_free(d_dout);
	peft_cuda_free(d_keep);
	peft_cuda_free(d_out);
	peft_cuda_free(d_dinp);
	free(inp);
	free(dout);
	free(out);
	free(dinp0);
	free(dinp);
	free(keep);
}

/* Two AdamW steps (t = 1 and t = 7) on param, m and v. */
static void
test_adamw(void **state)
{
	const size_t n = 100003;
	float	   *param;
	float	   *grad;
	float	   *m;
	float	   *v;
	float	   *d_param, *d_grad, *d_m, *d_v;
	PeftRng		rng;

	(void) state;
	require_device();
	param = host_alloc(n * sizeof(float));
	grad = host_alloc(n * sizeof(float));
	m = host_alloc(n * sizeof(float));
	v = host_alloc(n * sizeof(float));
	peft_rng_seed(&rng, 15);
	fill_random(param, n, -1.0, 1.0, &rng);
	fill_random(grad, n, -1.0, 1.0, &rng);
	fill_random(m, n, -0.1, 0.1, &rng);
	fill_random(v, n, 0.001, 0.01, &rng);	/* second moments are >= 0 */
	d_param = to_gpu(param, n * sizeof(float));
	d_grad = to_gpu(grad, n * sizeof(float));
	d_m = to_gpu(m, n * sizeof(float));
	d_v = to_gpu(v, n * sizeof(float));

	for (int t = 1; t <= 7; t += 6)
	{
		adamw_update(param, grad, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
		gpu_ok(peft_cuda_adamw_update(d_param, d_grad, d_m, d_v, n, 1e-3f, 0.9f,
									  0.999f, 1e-8f, 0.01f, t, NULL,
									  gpu_msg, sizeof(gpu_msg)));
		check_close("adamw param", d_param, param, n);
		check_close("adamw m", d_m, m, n);
		check_close("adamw v", d_v, v, n);
	}

	peft_cuda_free(d_param);
	peft_cuda_free(d_grad);
	peft_cuda_free(d_m);
	peft_cuda_free(d_v);
	free(param);
	free(grad);
	free(m);
	free(v);
}

/* Sum of squares (more elements than partial blocks x threads) and scale. */
static void
test_sum_squares_scale(void **state)
{
	static const size_t sizes[] = {1, 1000, 1000003};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 16);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
	{
		size_t		n = sizes[s];
		float	   *g = host_alloc(n * sizeof(float));
		float	   *d_g;
		double	   *d_result, *d_partial;
		double		cpu, gpu, err;

		fill_random(g, n, -1.0, 1.0, &rng);
		d_g = to_gpu(g, n * sizeof(float));
		d_result = poisoned_gpu(sizeof(double));
		d_partial = poisoned_gpu(PEFT_CUDA_SUMSQ_PARTIALS * sizeof(double));

		cpu = sum_squares(g, n);
		gpu_ok(peft_cuda_sum_squares(d_result, d_partial, d_g, n, NULL,
									 gpu_msg, sizeof(gpu_msg)));
		from_gpu(&gpu, d_result, sizeof(double));
		err = fabs(gpu - cpu) / (fabs(cpu) > 1e-6 ? fabs(cpu) : 1e-6);
		print_message("%-32s n=%-8zu rel err %.3g\n", "sum_squares", n, err);
		if (!(err <= TOLERANCE))
			fail_msg("sum_squares n=%zu: relative error %.3g", n, err);

		scale_inplace(g, 0.37f, n);
		gpu_ok(peft_cuda_scale_inplace(d_g, 0.37f, n, NULL, gpu_msg, sizeof(gpu_msg)));
		check_close("scale_inplace", d_g, g, n);

		peft_cuda_free(d_g);
		peft_cuda_free(d_result);
		peft_cuda_free(d_partial);
		free(g);
	}
}

/* Cross-entropy forward (probs, mean loss) and backward, one label out of range. */
static void
test_cross_entropy(void **state)
{
	static const int shapes[][2] = {{37, 5}, {9, 300}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 17);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			B = shapes[s][0], K = shapes[s][1];
		size_t		bk = (size_t) B * K;
		float	   *logits = host_alloc(bk * sizeof(float));
		float	   *probs = host_alloc(bk * sizeof(float));
		float	   *dlogits = host_alloc(bk * sizeof(float));
		float	   *loss = host_alloc(B * sizeof(float));
		int32_t    *labels = host_alloc(B * sizeof(int32_t));
		float	   *d_logits, *d_probs, *d_dlogits, *d_loss;
		int32_t    *d_labels;
		float		cpu_loss;
		double		gpu_loss = 0;
		double		err;

		fill_random(logits, bk, -4.0, 4.0, &rng);
		fill_random(dlogits, bk, -1.0, 1.0, &rng);
		for (int b = 0; b < B; b++)
			labels[b] = (int32_t) peft_rng_below(&rng, (uint64_t) K);
		labels[B - 1] = -1;		/* the caller's bug: no loss, no read out of bounds */
		d_logits = to_gpu(logits, bk * sizeof(float));
		d_labels = to_gpu(labels, B * sizeof(int32_t));
		d_dlogits = to_gpu(dlogits, bk * sizeof(float));
		d_probs = poisoned_gpu(bk * sizeof(float));
		d_loss = poisoned_gpu(B * sizeof(float));

		cpu_loss = cross_entropy_forward(probs, logits, labels, B, K);
		gpu_ok(peft_cuda_cross_entropy_forward(d_probs, d_loss, d_logits, d_labels,
											   B, K, NULL, gpu_msg, sizeof(gpu_msg)));
		check_close("cross_entropy_forward probs", d_probs, probs, bk);
		from_gpu(loss, d_loss, B * sizeof(float));
		for (int b = 0; b < B; b++)
			gpu_loss += loss[b];
		gpu_loss /= B;
		err = fabs(gpu_loss - cpu_loss) / (fabs(cpu_loss) > 1e-6 ? fabs(cpu_loss) : 1e-6);
		print_message("%-32s B=%-8d rel err %.3g\n", "cross_entropy_forward loss", B, err);
		if (!(err <= TOLERANCE))
			fail_msg("cross_entropy loss: relative error %.3g", err);

		cross_entropy_backward(dlogits, probs, labels, 0.7f, B, K);
		gpu_ok(peft_cuda_cross_entropy_backward(d_dlogits, d_probs, d_labels, 0.7f,
												B, K, NULL, gpu_msg, sizeof(gpu_msg)));
		check_close("cross_entropy_backward", d_dlogits, dlogits, bk);

		peft_cuda_free(d_logits);
		peft_cuda_free(d_labels);
		peft_cuda_free(d_dlogits);
		peft_cuda_free(d_probs);
		peft_cuda_free(d_loss);
		free(logits);
		free(probs);
		free(dlogits);
		free(loss);
		free(labels);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layernorm_forward),
		cmocka_unit_test(test_layernorm_backward),
		cmocka_unit_test(test_gelu),
		cmocka_unit_test(test_dropout),
		cmocka_unit_test(test_adamw),
		cmocka_unit_test(test_sum_squares_scale),
		cmocka_unit_test(test_cross_entropy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
