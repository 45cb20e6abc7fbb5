/*
 * test_sgmv.c - the CPU backend's gathered LoRA product (lora_sgmv, the
 * reference the CUDA kernels are tested against) against what the LoRA
 * hook computes for each segment alone: xa = x A^T, then out += s xa B^T
 * through the backend's linear and gemm.  Rows of no segment and the
 * columns past OUT in each row stride stay as they were; a rank above
 * the limit is an error, not a wrong answer.
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
#include "sgmv_fixture.h"

/*
 * Both are FP32 products of the same values; only the order and width
 * of the sums differ (double loops against BLAS's float ones).
 */
#define SGMV_CPU_TOLERANCE 1e-5

/* out[N, ldo] after every segment's update, one segment at a time as the LoRA hook does it. */
static void
per_segment(const SgmvCase *c, real *out)
{
	Backend    *be = backend_cpu();

	memcpy(out, c->out, sizeof(real) * c->N * c->ldo);
	for (int s = 0; s < c->nsegs; s++)
	{
		const LoraSegment *sg = &c->segs[s];
		real	   *xa = malloc(sizeof(real) * (sg->rows * sg->rank + 1));

		if (sg->rows > 0 && sg->rank > 0)
		{
			be->ops->linear(be, xa, sg->rank, c->x + (size_t) sg->row0 * c->ldx, c->ldx, sg->A,
							NULL, sg->rows, c->IN, sg->rank);
			be->ops->gemm(be, false, true, sg->rows, c->OUT, sg->rank, sg->scale, xa, sg->rank,
						  sg->B, sg->rank, 1, out + (size_t) sg->row0 * c->ldo, c->ldo);
		}
		free(xa);
	}
}

/* One case of IN x OUT: lora_sgmv equals the per-segment products, and touches nothing else. */
static void
check_case(int IN, int OUT, uint64_t seed)
{
	Backend    *be = backend_cpu();
	SgmvCase	c;
	real	   *got;
	real	   *want;
	double		e;
	PeftError	err = {0};

	sgmv_case_make(&c, IN, OUT, seed);
	got = malloc(sizeof(real) * c.N * c.ldo);
	want = malloc(sizeof(real) * c.N * c.ldo);
	memcpy(got, c.out, sizeof(real) * c.N * c.ldo);
	be->ops->lora_sgmv(be, got, c.ldo, c.x, c.ldx, c.segs, c.nsegs, IN, OUT);
	assert_int_equal(backend_check(be, &err), PEFT_OK);
	per_segment(&c, want);
	e = sgmv_normwise(got, want, (size_t) c.N * c.ldo);
	print_message("lora_sgmv %4d x %-4d vs per segment: %.2e (normwise)\n", IN, OUT, e);
	assert_true(e <= SGMV_CPU_TOLERANCE);
	for (int n = 0; n < c.N; n++)
		for (int j = 0; j < c.ldo; j++)
			if (j >= OUT || !sgmv_case_owns(&c, n))
				assert_true(got[(size_t) n * c.ldo + j] == c.out[(size_t) n * c.ldo + j]);
	free(got);
	free(want);
	sgmv_case_free(&c);
}

/* The sizes of MiniLM's linears: 384 -> 384, 384 -> 1536, 1536 -> 384. */
static void
test_sgmv_matches_per_segment(void **state)
{
	check_case(384, 384, 1);
	check_case(384, 1536, 2);
	check_case(1536, 384, 3);
}

/* No segment, or only empty ones: nothing changes, no error. */
static void
test_sgmv_empty(void **state)
{
	Backend    *be = backend_cpu();
	real		out[4] = {1, 2, 3, 4};
	real		x[4] = {1, 1, 1, 1};
	real		w[4] = {1, 1, 1, 1};
	LoraSegment none[2] = {{w, w, 0, 0, 2, 1}, {w, w, 1, 1, 0, 1}};
	PeftError	err = {0};

	be->ops->lora_sgmv(be, out, 2, x, 2, NULL, 0, 2, 2);
	be->ops->lora_sgmv(be, out, 2, x, 2, none, 2, 2, 2);
	assert_int_equal(backend_check(be, &err), PEFT_OK);
	assert_true(out[0] == 1 && out[1] == 2 && out[2] == 3 && out[3] == 4);
}

/* A rank above BACKEND_SGMV_MAX_RANK or a short stride is recorded as invalid. */
static void
test_sgmv_rejects(void **state)
{
	Backend    *be = backend_cpu();
	real		buf[4] = {0};
	LoraSegment big = {buf, buf, 0, 1, BACKEND_SGMV_MAX_RANK + 1, 1};
	PeftError	err = {0};

	be->ops->lora_sgmv(be, buf, 2, buf, 2, &big, 1, 2, 2);
	assert_int_equal(backend_check(be, &err), PEFT_ERR_INVALID);
	be->ops->lora_sgmv(be, buf, 1, buf, 2, NULL, 0, 2, 2);
	assert_int_equal(backend_check(be, &err), PEFT_ERR_INVALID);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sgmv_matches_per_segment),
		cmocka_unit_test(test_sgmv_empty),
		cmocka_unit_test(test_sgmv_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
