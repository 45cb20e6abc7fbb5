/*
 * test_gpu_mse.c - the CUDA mean squared error (kernels/mse.cu) against
 * mse_forward/backward (src/engine/ops/ops.h) on fresh random inputs: the
 * per-row squares are poisoned with 0xFF (NaN) before the GPU run and
 * summed on the host as the launcher's contract says, and the accumulated
 * gradient starts from random non-zero values so += is tested.  Every
 * test skips when no CUDA device is visible.
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

/* Loss (host sum in double of the GPU squares, / B) and gradient, for a batch and a single row. */
static void
test_mse(void **state)
{
	static const int sizes[] = {37, 1, 1000};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 51);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
	{
		int			B = sizes[s];
		float	   *pred = host_alloc(B * sizeof(float));
		float	   *target = host_alloc(B * sizeof(float));
		float	   *sq = host_alloc(B * sizeof(float));
		float	   *dpred = host_alloc(B * sizeof(float));
		float	   *d_pred, *d_target, *d_sq, *d_dpred;
		float		cpu_loss;
		float		gpu_loss;
		double		total = 0;
		double		err;

		fill_random(pred, B, -2.0, 2.0, &rng);
		fill_random(target, B, -2.0, 2.0, &rng);
		fill_random(dpred, B, -1.0, 1.0, &rng);
		d_pred = to_gpu(pred, B * sizeof(float));
		d_target = to_gpu(target, B * sizeof(float));
		d_dpred = to_gpu(dpred, B * sizeof(float));
		d_sq = poisoned_gpu(B * sizeof(float));

		cpu_loss = mse_forward(pred, target, B);
		gpu_ok(peft_cuda_mse_forward(d_sq, d_pred, d_target, B, gpu_msg, sizeof(gpu_msg)));
		from_gpu(sq, d_sq, B * sizeof(float));
		/* The host half of the loss, as mse_forward: sum in double, / B, to float. */
		for (int b = 0; b < B; b++)
			total += (double) sq[b];
		gpu_loss = (float) (total / B);
		err = fabs((double) gpu_loss - (double) cpu_loss) /
			(fabs((double) cpu_loss) > 1e-6 ? fabs((double) cpu_loss) : 1e-6);
		print_message("%-32s B=%-8d rel err %.3g\n", "mse_forward loss", B, err);
		if (!(err <= TOLERANCE))
			fail_msg("mse loss B=%d: relative error %.3g", B, err);

		mse_backward(dpred, pred, target, 0.7f, B);
		gpu_ok(peft_cuda_mse_backward(d_dpred, d_pred, d_target, 0.7f, B,
									  gpu_msg, sizeof(gpu_msg)));
		check_close("mse_backward", d_dpred, dpred, B);

		peft_cuda_free(d_pred);
		peft_cuda_free(d_target);
		peft_cuda_free(d_sq);
		peft_cuda_free(d_dpred);
		free(pred);
		free(target);
		free(sq);
		free(dpred);
	}
}

/* Empty sizes and a NULL gradient are no-ops; negative sizes and NULL tensors are errors. */
static void
test_mse_arguments(void **state)
{
	float		dummy = 1.0f;

	(void) state;
	require_device();
	assert_int_equal(peft_cuda_mse_forward(NULL, NULL, NULL, 0, gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_mse_backward(NULL, NULL, NULL, 1.0f, 4,
											gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_not_equal(peft_cuda_mse_forward(&dummy, &dummy, &dummy, -1,
											   gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_mse_forward(&dummy, NULL, &dummy, 4,
											   gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_mse_backward(&dummy, &dummy, NULL, 1.0f, 4,
												gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mse),
		cmocka_unit_test(test_mse_arguments),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
