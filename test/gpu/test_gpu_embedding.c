/*
 * test_gpu_embedding.c - the CUDA embeddings of packed tokens
 * (kernels/embedding.cu) against varlen_embeddings_forward
 * (src/engine/ops/ops_varlen.h) and the word-table gradient against a host
 * loop, on fresh random inputs: outputs are poisoned with 0xFF (NaN)
 * before each GPU run so a kernel that skips an element fails, and the
 * accumulated gradient starts from random non-zero values so += is
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
#include "ops_varlen.h"
#include "rng.h"

#define TOLERANCE 1e-5

#include "gpu_test_util.h"

/* dword[ids[rows[n]], :] += dout[n, :] in packed order, ids outside [0, vocab) skipped. */
static void
embeddings_backward_host(float *dword, const float *dout, const int32_t *ids,
						 const int32_t *rows, int N, int C, int vocab)
{
	for (int n = 0; n < N; n++)
	{
		int32_t		id = ids[rows[n]];

		if (id < 0 || id >= vocab)
			continue;
		for (int c = 0; c < C; c++)
			dword[(size_t) id * C + c] += dout[(size_t) n * C + c];
	}
}

/*
 * Forward against varlen_embeddings_forward and backward against the host
 * loop, on a padded batch with an empty row and a small vocabulary (so ids
 * repeat and the backward's atomics collide); then one id out of range
 * (the forward gives zeros in its row, the backward adds nothing).
 */
static void
test_embeddings(void **state)
{
	/* B, T, C, vocab */
	static const int shapes[][4] = {{4, 9, 768, 13}, {3, 6, 45, 4}};
	PeftRng		rng;

	(void) state;
	require_device();
	peft_rng_seed(&rng, 21);
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int			B = shapes[s][0], T = shapes[s][1];
		int			C = shapes[s][2], vocab = shapes[s][3];
		size_t		bt = (size_t) B * T;
		int32_t    *mask = host_alloc(bt * sizeof(int32_t));
		int32_t    *ids = host_alloc(bt * sizeof(int32_t));
		int32_t    *bad_ids = host_alloc(bt * sizeof(int32_t));
		int32_t    *seq_start = host_alloc((size_t) (B + 1) * sizeof(int32_t));
		int32_t    *rows = host_alloc(bt * sizeof(int32_t));
		float	   *word = host_alloc((size_t) vocab * C * sizeof(float));
		float	   *pos = host_alloc((size_t) T * C * sizeof(float));
		float	   *type = host_alloc((size_t) 2 * C * sizeof(float));
		float	   *dword0 = host_alloc((size_t) vocab * C * sizeof(float));
		float	   *dword = host_alloc((size_t) vocab * C * sizeof(float));
		float	   *out;
		float	   *dout;
		int32_t    *d_ids, *d_bad_ids, *d_rows;
		float	   *d_word, *d_pos, *d_type, *d_out, *d_dout, *d_dword;
		size_t		nc;
		int			N;

		/* Random padding, row 1 all padding (an empty sequence). */
		for (size_t i = 0; i < bt; i++)
		{
			mask[i] = peft_rng_uniform(&rng) < 0.7;
			ids[i] = (int32_t) peft_rng_below(&rng, (uint64_t) vocab);
		}
		for (int t = 0; t < T; t++)
			mask[T + t] = 0;
		/* At least two real tokens, in different sequences. */
		mask[0] = 1;
		mask[(size_t) (B - 1) * T] = 1;
		N = varlen_pack(seq_start, rows, mask, B, T);
		assert_true(N >= 2);
		nc = (size_t) N * C;
		out = host_alloc(nc * sizeof(float));
		dout = host_alloc(nc * sizeof(float));
		fill_random(word, (size_t) vocab * C, -1.0, 1.0, &rng);
		fill_random(pos, (size_t) T * C, -1.0, 1.0, &rng);
		fill_random(type, (size_t) 2 * C, -1.0, 1.0, &rng);
		fill_random(dout, nc, -1.0, 1.0, &rng);
		fill_random(dword0, (size_t) vocab * C, -1.0, 1.0, &rng);

		d_ids = to_gpu(ids, bt * sizeof(int32_t));
		d_rows = to_gpu(rows, (size_t) N * sizeof(int32_t));
		d_word = to_gpu(word, (size_t) vocab * C * sizeof(float));
		d_pos = to_gpu(pos, (size_t) T * C * sizeof(float));
		d_type = to_gpu(type, (size_t) 2 * C * sizeof(float));
		d_dout = to_gpu(dout, nc * sizeof(float));
		d_dword = to_gpu(dword0, (size_t) vocab * C * sizeof(float));
		d_out = poisoned_gpu(nc * sizeof(float));

		varlen_embeddings_forward(out, ids, NULL, rows, N, T, word, pos, type, C);
		gpu_ok(peft_cuda_embeddings_forward(d_out, d_ids, d_rows, N, T, d_word,
											d_pos, d_type, C, vocab,
											gpu_msg, sizeof(gpu_msg)));
		check_close("embeddings_forward", d_out, out, nc);

		memcpy(dword, dword0, (size_t) vocab * C * sizeof(float));
		embeddings_backward_host(dword, dout, ids, rows, N, C, vocab);
		gpu_ok(peft_cuda_embeddings_backward(d_dword, d_dout, d_ids, d_rows, N, C,
											 vocab, gpu_msg, sizeof(gpu_msg)));
		check_close("embeddings_backward (repeats)", d_dword, dword,
					(size_t) vocab * C);

		/* Packed rows 1 and N-1 get ids out of range: zeros, no gradient. */
		memcpy(bad_ids, ids, bt * sizeof(int32_t));
		bad_ids[rows[1]] = vocab;
		bad_ids[rows[N - 1]] = -1;
		memset(out + (size_t) C, 0, (size_t) C * sizeof(float));
		memset(out + (size_t) (N - 1) * C, 0, (size_t) C * sizeof(float));
		d_bad_ids = to_gpu(bad_ids, bt * sizeof(int32_t));
		gpu_ok(peft_cuda_memset(d_out, 0xFF, nc * sizeof(float), gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_embeddings_forward(d_out, d_bad_ids, d_rows, N, T, d_word,
											d_pos, d_type, C, vocab,
											gpu_msg, sizeof(gpu_msg)));
		check_close("embeddings_forward bad ids", d_out, out, nc);
		memcpy(dword, dword0, (size_t) vocab * C * sizeof(float));
		embeddings_backward_host(dword, dout, bad_ids, rows, N, C, vocab);
		gpu_ok(peft_cuda_upload(d_dword, dword0, (size_t) vocab * C * sizeof(float),
								gpu_msg, sizeof(gpu_msg)));
		gpu_ok(peft_cuda_embeddings_backward(d_dword, d_dout, d_bad_ids, d_rows, N,
											 C, vocab, gpu_msg, sizeof(gpu_msg)));
		check_close("embeddings_backward bad ids", d_dword, dword,
					(size_t) vocab * C);

		peft_cuda_free(d_ids);
		peft_cuda_free(d_bad_ids);
		peft_cuda_free(d_rows);
		peft_cuda_free(d_word);
		peft_cuda_free(d_pos);
		peft_cuda_free(d_type);
		peft_cuda_free(d_out);
		peft_cuda_free(d_dout);
		peft_cuda_free(d_dword);
		free(mask);
		free(ids);
		free(bad_ids);
		free(seq_start);
		free(rows);
		free(word);
		free(pos);
		free(type);
		free(dword0);
		free(dword);
		free(out);
		free(dout);
	}
}

/* Empty sizes are no-ops (even with NULL tensors); negative sizes and NULL tensors are errors. */
static void
test_embeddings_arguments(void **state)
{
	float		dummy = 1.0f;

	(void) state;
	require_device();
	assert_int_equal(peft_cuda_embeddings_forward(NULL, NULL, NULL, 0, 4, NULL, NULL,
												  NULL, 8, 10, gpu_msg,
												  sizeof(gpu_msg)), 0);
	assert_int_equal(peft_cuda_embeddings_backward(NULL, NULL, NULL, NULL, 3, 8, 10,
												   gpu_msg, sizeof(gpu_msg)), 0);
	assert_int_not_equal(peft_cuda_embeddings_forward(&dummy, NULL, NULL, -1, 4, NULL,
													  NULL, NULL, 8, 10, gpu_msg,
													  sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_embeddings_forward(&dummy, NULL, NULL, 3, 4, NULL,
													  NULL, NULL, 8, 10, gpu_msg,
													  sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
	assert_int_not_equal(peft_cuda_embeddings_backward(&dummy, NULL, NULL, NULL, 3, 8,
													   10, gpu_msg, sizeof(gpu_msg)), 0);
	print_message("refused: %s\n", gpu_msg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_embeddings),
		cmocka_unit_test(test_embeddings_arguments),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
