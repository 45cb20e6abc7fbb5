/*
 * test_gguf.c - the GGUF reader against a file the `gguf` Python package
 * wrote (test/fixtures/ref_gguf.py: every metadata kind, alignment 64,
 * F32, F16 and Q8_0 tensors), and against that file damaged: every
 * truncation, every single-byte change of its header and tensor infos,
 * and hand-made faults (magic, version, type, dimensions, offsets,
 * overlap, duplicates) each fail with an error, never a wild read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "gguf.h"
#include "model_config.h"
#include "test_util.h"

/* Bytes from the start of the file to the tensor data (ref_gguf.py's layout, checked below). */
#define FIXTURE_DATA_START 768

/* The fixture's bytes (exits the test on failure); free them. */
static uint8_t *
fixture(size_t *len)
{
	char	   *bytes;
	PeftError	err = {0};

	assert_int_equal(read_small_file(source_path("test/fixtures/reference/small.gguf"), 1 << 20,
									 &bytes, len, &err), PEFT_OK);
	return (uint8_t *) bytes;
}

/* The values ref_gguf.py wrote, read back. */
static void
test_reads_fixture(void **state)
{
	GgufFile   *f;
	PeftError	err = {0};
	uint64_t	u;
	char	   *s;
	const GgufValue *v;
	const GgufTensor *t;
	float		a[8];

	assert_int_equal(gguf_open_file(source_path("test/fixtures/reference/small.gguf"), &f, &err), PEFT_OK);
	assert_int_equal(f->version, 3);
	assert_int_equal(f->alignment, 64);
	assert_int_equal(f->nkv, 17);
	assert_int_equal(gguf_get_string(f, "general.architecture", &s, &err), PEFT_OK);
	assert_string_equal(s, "llama");
	free(s);
	assert_int_equal(gguf_get_uint(f, "llama.block_count", &u, &err), PEFT_OK);
	assert_int_equal(u, 2);
	assert_int_equal(gguf_get_uint(f, "test.u64", &u, &err), PEFT_OK);
	assert_true(u == (1ULL << 40) + 7);
	assert_int_equal(gguf_find(f, "test.u8")->u, 200);
	assert_int_equal(gguf_find(f, "test.i8")->i, -100);
	assert_int_equal(gguf_find(f, "test.u16")->u, 60000);
	assert_int_equal(gguf_find(f, "test.i16")->i, -30000);
	assert_int_equal(gguf_find(f, "test.i32")->i, -2000000000);
	assert_true(gguf_find(f, "test.i64")->i == -(1LL << 40) - 7);
	assert_true(gguf_find(f, "test.f32")->f == 0.25);
	assert_true(gguf_find(f, "test.f64")->f == -1.5e300);
	assert_int_equal(gguf_find(f, "test.bool")->u, 1);
	/* a negative integer is not an unsigned one */
	assert_int_equal(gguf_get_uint(f, "test.i8", &u, &err), PEFT_ERR_FORMAT);
	assert_int_equal(gguf_get_uint(f, "no.such.key", &u, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "no.such.key"));
	v = gguf_find(f, "test.strings");
	assert_int_equal(v->type, GGUF_ARRAY);
	assert_int_equal(v->elem_type, GGUF_STRING);
	assert_int_equal(v->count, 4);
	/* the first element: u64 length 3, then "Ġa" (two bytes of Ġ) */
	assert_int_equal(v->elems[0], 3);
	assert_memory_equal(v->elems + 8, "\xc4\xa0" "a", 3);
	v = gguf_find(f, "test.nested");
	assert_int_equal(v->elem_type, GGUF_ARRAY);
	assert_int_equal(v->count, 2);

	assert_int_equal(f->ntensors, 3);
	t = gguf_find_tensor(f, "a.weight");
	assert_non_null(t);
	assert_int_equal(t->type, GGML_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->dims[0], 4);
	assert_int_equal(t->dims[1], 2);
	assert_int_equal(t->data - f->base, FIXTURE_DATA_START);
	memcpy(a, t->data, sizeof(a));
	for (int k = 0; k < 8; k++)
		assert_true(a[k] == (float) k);
	t = gguf_find_tensor(f, "b.weight");
	assert_int_equal(t->type, GGML_F16);
	assert_int_equal(t->nbytes, 4);
	assert_int_equal(t->data[0] | (t->data[1] << 8), 0x3800);	/* 0.5 in binary16 */
	t = gguf_find_tensor(f, "c.weight");
	assert_int_equal(t->type, GGML_Q8_0);
	assert_int_equal(t->dims[0], 32);
	assert_int_equal(t->nbytes, 34);
	assert_int_equal((t->data - f->base) % 64, 0);
	assert_int_equal(t->data[2 + 31], 31);
	assert_null(gguf_find_tensor(f, "d.weight"));
	gguf_close(f);
}

/* Every prefix that cuts into the last tensor's bytes is refused with an error (the padding after it is not needed). */
static void
test_truncations(void **state)
{
	size_t		len;
	uint8_t    *bytes = fixture(&len);
	size_t		needed = 0;
	GgufFile   *whole;
	PeftError	error = {0};

	assert_int_equal(gguf_open_buffer(bytes, len, &whole, &error), PEFT_OK);
	for (int t = 0; t < whole->ntensors; t++)
		if ((size_t) (whole->tensors[t].data - bytes) + whole->tensors[t].nbytes > needed)
			needed = (size_t) (whole->tensors[t].data - bytes) + whole->tensors[t].nbytes;
	gguf_close(whole);
	assert_int_equal(needed, 896 + 34);
	for (size_t n = 0; n < needed; n++)
	{
		uint8_t    *copy = malloc(n ? n : 1);
		GgufFile   *f = NULL;
		PeftError	err = {0};

		memcpy(copy, bytes, n);
		if (gguf_open_buffer(copy, n, &f, &err) == PEFT_OK)
			fail_msg("a file cut at %zu of %zu bytes was accepted", n, len);
		assert_true(err.message[0] != '\0');
		free(copy);
	}
	free(bytes);
}

/* Every byte before the data, set to each of a few values: accepted or refused, never a crash. */
static void
test_byte_changes(void **state)
{
	static const uint8_t values[] = {0x00, 0x01, 0x07, 0x3f, 0x80, 0xff};
	size_t		len;
	uint8_t    *bytes = fixture(&len);
	int			refused = 0;

	for (size_t at = 0; at < FIXTURE_DATA_START; at++)
		for (size_t k = 0; k < sizeof(values); k++)
		{
			uint8_t    *copy = malloc(len);
			GgufFile   *f = NULL;
			PeftError	err = {0};

			memcpy(copy, bytes, len);
			copy[at] = values[k];
			if (gguf_open_buffer(copy, len, &f, &err) != PEFT_OK)
				refused++;
			else
			{
				/* what was accepted lies inside the buffer */
				for (int t = 0; t < f->ntensors; t++)
					assert_true(f->tensors[t].data >= copy &&
								f->tensors[t].data + f->tensors[t].nbytes <= copy + len);
				gguf_close(f);
			}
			free(copy);
		}
	printf("%d of %d single-byte changes refused\n", refused, FIXTURE_DATA_START * (int) sizeof(values));
	assert_true(refused > 0);
	free(bytes);
}

/* Where tensor name's info starts (its u64 name length), in the fixture's bytes. */
static size_t
info_of(const uint8_t *bytes, size_t len, const char *name)
{
	size_t		n = strlen(name);

	for (size_t at = 8; at + n <= len; at++)
		if (memcmp(bytes + at, name, n) == 0 && bytes[at - 8] == n)
			return at - 8;
	fail_msg("no tensor info for %s", name);
	return 0;
}

/* The error opening bytes with one u64 (or u32 when wide is false) set at `at`. */
static PeftCode
open_patched(const uint8_t *bytes, size_t len, size_t at, uint64_t value, int width, PeftError *err)
{
	uint8_t    *copy = malloc(len);
	GgufFile   *f = NULL;
	PeftCode	rc;

	memcpy(copy, bytes, len);
	for (int k = 0; k < width; k++)
		copy[at + k] = (uint8_t) (value >> (8 * k));
	rc = gguf_open_buffer(copy, len, &f, err);
	gguf_close(f);
	free(copy);
	return rc;
}

/* Hand-made faults, each refused with a message that says what is wrong. */
static void
test_faults(void **state)
{
	size_t		len;
	uint8_t    *bytes = fixture(&len);
	size_t		c = info_of(bytes, len, "c.weight");
	size_t		b = info_of(bytes, len, "b.weight");
	/* c.weight's info: name (8 + 8 bytes), u32 ndim, 2 u64 dims, u32 type, u64 offset */
	size_t		c_ndim = c + 16, c_dim0 = c + 20, c_type = c + 36, c_offset = c + 40;
	size_t		b_offset = b + 40;
	PeftError	err = {0};

	assert_int_equal(open_patched(bytes, len, 0, 'X', 1, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "magic"));
	assert_int_equal(open_patched(bytes, len, 4, 1, 4, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "version 1"));
	assert_int_equal(open_patched(bytes, len, 8, 1ULL << 40, 8, &err), PEFT_ERR_FORMAT);
	assert_int_equal(open_patched(bytes, len, c_ndim, 5, 4, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "5 dimensions"));
	assert_int_equal(open_patched(bytes, len, c_dim0, 0, 8, &err), PEFT_ERR_FORMAT);
	assert_int_equal(open_patched(bytes, len, c_dim0, 16, 8, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "blocks of 32"));
	assert_int_equal(open_patched(bytes, len, c_type, 99, 4, &err), PEFT_ERR_UNSUPPORTED);
	assert_int_equal(open_patched(bytes, len, c_offset, 65, 8, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "misaligned"));
	assert_int_equal(open_patched(bytes, len, c_offset, 1ULL << 62, 8, &err), PEFT_ERR_FORMAT);
	/* b.weight moved onto a.weight */
	assert_int_equal(open_patched(bytes, len, b_offset, 0, 8, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "overlap"));
	/* c.weight renamed b.weight */
	assert_int_equal(open_patched(bytes, len, c + 8, 'b', 1, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "twice"));
	free(bytes);
}

/* An array of booleans holding a 2 is refused as a single boolean of 2 is (found by fuzz_gguf). */
static void
test_bool_array(void **state)
{
	/* "GGUF", version 3, 0 tensors, 1 key: "k", ARRAY of BOOL, 2 elements */
	uint8_t		bytes[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
		1, 0, 0, 0, 0, 0, 0, 0, 'k', GGUF_ARRAY, 0, 0, 0, GGUF_BOOL, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
	1, 0};
	GgufFile   *f = NULL;
	PeftError	err = {0};
	const GgufValue *v;

	assert_int_equal(gguf_open_buffer(bytes, sizeof(bytes), &f, &err), PEFT_OK);
	v = gguf_find(f, "k");
	assert_non_null(v);
	assert_int_equal(v->elem_type, GGUF_BOOL);
	assert_int_equal(v->count, 2);
	gguf_close(f);
	bytes[sizeof(bytes) - 1] = 2;
	assert_int_equal(gguf_open_buffer(bytes, sizeof(bytes), &f, &err), PEFT_ERR_FORMAT);
	assert_null(f);
	assert_non_null(strstr(err.message, "boolean"));
}

/* Paths that are not a GGUF file to map: refused without blocking, naming the file (as st_open_file's). */
static void
test_open_paths(void **state)
{
	char		dir[256];
	char		path[512];
	GgufFile   *f = NULL;
	PeftError	err = {0};
	FILE	   *out;

	make_temp_dir(dir, sizeof(dir));
	assert_int_equal(gguf_open_file(dir, &f, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));
	/* a FIFO must not block the open */
	snprintf(path, sizeof(path), "%s/fifo.gguf", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(gguf_open_file(path, &f, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));
	/* shorter than the header */
	snprintf(path, sizeof(path), "%s/short.gguf", dir);
	out = fopen(path, "wb");
	assert_non_null(out);
	assert_int_equal(fwrite("GGUF", 1, 4, out), 4);
	assert_int_equal(fclose(out), 0);
	assert_int_equal(gguf_open_file(path, &f, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "too short for a GGUF file"));
	snprintf(path, sizeof(path), "%s/missing.gguf", dir);
	assert_int_equal(gguf_open_file(path, &f, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, path));
	assert_null(f);
	remove_tree(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reads_fixture),
		cmocka_unit_test(test_truncations),
		cmocka_unit_test(test_byte_changes),
		cmocka_unit_test(test_faults),
		cmocka_unit_test(test_bool_array),
		cmocka_unit_test(test_open_paths),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
