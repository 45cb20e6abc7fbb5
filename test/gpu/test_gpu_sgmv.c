/*
 * test_gpu_sgmv.c - the CUDA backend's gathered LoRA product (lora_sgmv,
 * kernels/sgmv.cu) against the CPU backend's (the reference loops), called
 * through the backend table on the cases of sgmv_fixture.h: empty
 * segments, one row, ranks 1 to 256 (and 0), MiniLM's linear sizes (384
 * and 1536 wide), row strides wider than the matrices, rows of no
 * segment.  In FP32, TF32 and BF16; rows and columns the op must not touch
 * must come back unchanged bit for bit.  Skips when no CUDA device is
 * visible.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "gpu_backend_util.h"
#include "sgmv_fixture.h"

/*
 * Normwise limits against the CPU's FP32 loops (double sums).  Guesses
 * until measured on a GPU: FP32 differs only in the order of float sums
 * (K up to 1536); TF32 rounds every input to 10 bits of mantissa (2^-11
 * relative) and BF16 to 7 (2^-8), xa included, with FP32 sums.
 */
#define SGMV_FP32_TOLERANCE 1e-5
#define SGMV_TF32_TOLERANCE 5e-3
#define SGMV_BF16_TOLERANCE 3e-2

/* One case of IN x OUT in precision p: CUDA within limit of the CPU, untouched elements exact. */
static void
check_case(int IN, int OUT, PeftPrecision p, double limit, uint64_t seed)
{
	Backend    *cpu = backend_cpu();
	SgmvCase	c;
	size_t		nout;
	real	   *want;
	real	   *got;
	real	   *d_w;
	real	   *d_x;
	real	   *d_out;
	double		e;
	PeftError	err = {0};

	sgmv_case_make(&c, IN, OUT, seed);
	nout = (size_t) c.N * c.ldo;
	want = malloc(sizeof(real) * nout);
	got = malloc(sizeof(real) * nout);
	memcpy(want, c.out, sizeof(real) * nout);
	cpu->ops->lora_sgmv(cpu, want, c.ldo, c.x, c.ldx, c.segs, c.nsegs, IN, OUT);
	assert_int_equal(backend_check(cpu, &err), PEFT_OK);

	gpu->ops->enter(gpu);
	gpu->precision = p;
	d_w = to_device(c.weights, c.nweights);
	d_x = to_device(c.x, (size_t) c.N * c.ldx);
	d_out = to_device(c.out, nout);
	sgmv_case_point(&c, d_w);
	gpu->ops->lora_sgmv(gpu, d_out, c.ldo, d_x, c.ldx, c.segs, c.nsegs, IN, OUT);
	gpu->ops->download(gpu, got, d_out, sizeof(real) * nout);
	gpu->ops->sync(gpu);
	gpu->ops->release(gpu, d_w);
	gpu->ops->release(gpu, d_x);
	gpu->ops->release(gpu, d_out);
	gpu->precision = PEFT_PRECISION_FP32;
	gpu->ops->leave(gpu);
	device_ok();

	e = sgmv_normwise(got, want, nout);
	print_message("lora_sgmv %-4s %4d x %-4d CUDA vs CPU: rel err %.2e (limit %.0e)\n",
				  gemm_precision_name(p), IN, OUT, e, limit);
	for (int n = 0; n < c.N; n++)
		for (int j = 0; j < c.ldo; j++)
			if (j >= OUT || !sgmv_case_owns(&c, n))
				if (got[(size_t) n * c.ldo + j] != c.out[(size_t) n * c.ldo + j])
					fail_msg("element [%d, %d] of no segment changed", n, j);
	assert_true(e <= limit);
	free(want);
	free(got);
	sgmv_case_free(&c);
}

/* Every size of MiniLM's linears in precision p. */
static void
check_sizes(PeftPrecision p, double limit)
{
	require_device();
	check_case(384, 384, p, limit, 1);
	check_case(384, 1536, p, limit, 2);
	check_case(1536, 384, p, limit, 3);
	check_case(1536, 1536, p, limit, 4);
}

/* FP32: the kernels' float sums against the CPU's double ones. */
static void
test_sgmv_fp32(void **state)
{
	check_sizes(PEFT_PRECISION_FP32, SGMV_FP32_TOLERANCE);
}

/* TF32: inputs rounded as tensor cores round them. */
static void
test_sgmv_tf32(void **state)
{
	check_sizes(PEFT_PRECISION_TF32, SGMV_TF32_TOLERANCE);
}

/* BF16: inputs rounded to BF16, FP32 sums. */
static void
test_sgmv_bf16(void **state)
{
	check_sizes(PEFT_PRECISION_BF16, SGMV_BF16_TOLERANCE);
}

/* A rank above the limit is a recorded error, and the backend works after it is collected. */
static void
test_sgmv_rejects(void **state)
{
	real		host[4] = {0};
	real	   *d;
	LoraSegment big;
	PeftCode	device_ok_code;
	PeftCode	rejected;
	PeftError	err = {0};

	require_device();
	gpu->ops->enter(gpu);
	d = to_device(host, 4);
	device_ok_code = backend_check(gpu, &err);
	big = (LoraSegment) {d, d, 0, 1, BACKEND_SGMV_MAX_RANK + 1, 1};
	gpu->ops->lora_sgmv(gpu, d, 2, d, 2, &big, 1, 2, 2);
	rejected = backend_check(gpu, &err);
	gpu->ops->release(gpu, d);
	gpu->ops->leave(gpu);
	assert_int_equal(device_ok_code, PEFT_OK);
	assert_int_equal(rejected, PEFT_ERR_INVALID);
	device_ok();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sgmv_fp32),
		cmocka_unit_test(test_sgmv_tf32),
		cmocka_unit_test(test_sgmv_bf16),
		cmocka_unit_test(test_sgmv_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
