/*
 * test_safetensors.c - the safetensors reader and writer.
 *
 * Round trips, the tiny model written by test/fixtures/make_tiny_model.py
 * (an independent writer, in Python) in three dtypes, the real
 * all-MiniLM-L6-v2 file when present, and hostile input: truncations, bit
 * flips, random mutations and hand-crafted headers must all end in an error
 * or a valid file, never a crash or a read out of bounds (run under
 * AddressSanitizer to see the latter).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compare.h"
#include "safetensors_hooks.h"
#include "model_config.h"
#include "test_util.h"

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif


/* Tiny-model folders written once by the group setup. */
static char tiny_root[256];
static bool tiny_available;

/* Path of a tiny-model variant folder, e.g. "f16". */
static void
tiny_dir(char *path, size_t len, const char *variant)
{
	snprintf(path, len, "%s/%s", tiny_root, variant);
}

/* Write the tiny model in f32, f16, bf16 and with the "bert." prefix. */
static int
group_setup(void **state)
{
	static const char *const variants[][2] = {
		{"f32", "--dtype f32"},
		{"f16", "--dtype f16"},
		{"bf16", "--dtype bf16"},
		{"prefix", "--prefix bert."},
	};
	const char *tmp = getenv("TMPDIR");

	(void) state;
	tiny_available = false;
	if (system("command -v python3 >/dev/null 2>&1") != 0)
		return 0;
	snprintf(tiny_root, sizeof(tiny_root), "%s/peft_tiny_XXXXXX",
			 tmp && *tmp ? tmp : "/tmp");
	if (mkdtemp(tiny_root) == NULL)
		return 0;
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++)
	{
		char		cmd[1024];

		snprintf(cmd, sizeof(cmd),
				 "python3 '%s/test/fixtures/make_tiny_model.py' '%s/%s' --seed 7 %s",
				 PEFT_SOURCE_DIR, tiny_root, variants[i][0], variants[i][1]);
		if (system(cmd) != 0)
		{
			print_message("make_tiny_model.py failed: %s\n", cmd);
			return 0;
		}
	}
	tiny_available = true;
	return 0;
}

/* Remove the tiny-model folders. */
static int
group_teardown(void **state)
{
	(void) state;
	if (tiny_root[0] != '\0')
		remove_tree(tiny_root);
	return 0;
}

/* Write a little-endian 64-bit length prefix. */
static void
put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}

/*
 * Build a file image: declared header length, header bytes, then data_len
 * bytes of data (byte i holds i).  The buffer is exactly as long as the
 * file, so ASan catches any read past its end.
 */
static uint8_t *
make_image(const char *header, size_t header_len, uint64_t declared,
		   size_t data_len, size_t *image_len)
{
	uint8_t    *image;

	*image_len = 8 + header_len + data_len;
	image = malloc(*image_len);
	assert_non_null(image);
	put_le64(image, declared);
	memcpy(image + 8, header, header_len);
	for (size_t i = 0; i < data_len; i++)
		image[8 + header_len + i] = (uint8_t) i;
	return image;
}

/* Open a header text followed by data_len bytes; return the code. */
static PeftCode
open_header(const char *header, size_t header_len, size_t data_len,
			PeftError *err)
{
	size_t		len;
	uint8_t    *image = make_image(header, header_len, header_len, data_len, &len);
	StFile	   *file = NULL;
	PeftCode	code;

	peft_error_clear(err);
	code = st_open_buffer(image, len, &file, err);
	if (code == PEFT_OK)
		assert_non_null(file);
	else
		assert_null(file);
	st_close(file);
	free(image);
	return code;
}

/*
 * Check what a successfully opened file promises: every tensor inside the
 * buffer, sizes consistent, floating data convertible.
 */
static void
check_file_invariants(const StFile *file)
{
	const uint8_t *end = file->base + file->size;

	for (int i = 0; i < file->ntensors; i++)
	{
		const StTensor *t = &file->tensors[i];
		size_t		n = 1;

		assert_true(t->data >= file->base + 8 && t->data <= end);
		assert_true(t->nbytes <= (size_t) (end - t->data));
		for (int d = 0; d < t->ndim; d++)
			n *= (size_t) t->shape[d];
		assert_int_equal(n, t->nelem);
		assert_int_equal(t->nbytes, t->nelem * st_dtype_size(t->dtype));
		assert_ptr_equal(st_find(file, t->name), t);
		if (i > 0)
			assert_true(strcmp(file->tensors[i - 1].name, t->name) < 0);
		if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 ||
			t->dtype == ST_F64)
		{
			real	   *values = malloc((t->nelem + 1) * sizeof(real));

			assert_non_null(values);
			assert_int_equal(st_to_real(t, values, t->nelem, NULL), PEFT_OK);
			free(values);
		}
	}
}

/* A small valid file (two tensors, metadata) as the seed for attacks. */
static uint8_t *
small_valid_file(size_t *len)
{
	static const real a[6] = {1, 2, 3, 4, 5, 6};
	static const real b[2] = {-1.5f, 0.25f};
	StWriteTensor tensors[2] = {
		{.name = "w", .ndim = 2, .shape = {2, 3}, .data = a},
		{.name = "b", .ndim = 1, .shape = {2}, .data = b},
	};
	const char *keys[] = {"format"};
	const char *values[] = {"pt"};
	uint8_t    *out = NULL;
	PeftError	err;

	assert_int_equal(st_serialize(tensors, 2, keys, values, 1, &out, len, &err),
					 PEFT_OK);
	return out;
}

/* Dtype sizes and names match the safetensors specification. */
static void
test_dtype_table(void **state)
{
	(void) state;
	assert_int_equal(st_dtype_size(ST_F64), 8);
	assert_int_equal(st_dtype_size(ST_F32), 4);
	assert_int_equal(st_dtype_size(ST_F16), 2);
	assert_int_equal(st_dtype_size(ST_BF16), 2);
	assert_int_equal(st_dtype_size(ST_I64), 8);
	assert_int_equal(st_dtype_size(ST_I32), 4);
	assert_int_equal(st_dtype_size(ST_I16), 2);
	assert_int_equal(st_dtype_size(ST_I8), 1);
	assert_int_equal(st_dtype_size(ST_U8), 1);
	assert_int_equal(st_dtype_size(ST_BOOL), 1);
	assert_string_equal(st_dtype_name(ST_BF16), "BF16");
	assert_string_equal(st_dtype_name(ST_BOOL), "BOOL");
	assert_string_equal(st_dtype_name(ST_I64), "I64");
}

/* serialize -> open_buffer -> to_real gives back names, shapes, values, metadata. */
static void
test_round_trip(void **state)
{
	real		w[6] = {0.5f, -1, 3.25f, 1e-20f, -0.0f, 65504};
	real		bias[4] = {1, 2, 3, 4};
	real		scalar[1] = {42};
	StWriteTensor tensors[4] = {
		{.name = "zeta.weight", .ndim = 2, .shape = {2, 3}, .data = w},
		{.name = "alpha.bias", .ndim = 1, .shape = {4}, .data = bias},
		{.name = "scalar", .ndim = 0, .data = scalar},
		{.name = "empty", .ndim = 2, .shape = {0, 5}, .data = NULL},
	};
	const char *keys[] = {"format", "peft_type"};
	const char *values[] = {"pt", "LORA"};
	uint8_t    *buf = NULL;
	size_t		len = 0;
	uint64_t	header_len;
	StFile	   *file = NULL;
	PeftError	err;
	real		got[6];
	const StTensor *t;

	(void) state;
	assert_int_equal(st_serialize(tensors, 4, keys, values, 2, &buf, &len, &err),
					 PEFT_OK);

	/* header padded with spaces so the data starts 8-byte aligned */
	header_len = 0;
	for (int i = 7; i >= 0; i--)
		header_len = (header_len << 8) | buf[i];
	assert_int_equal(header_len % 8, 0);
	assert_int_equal(len, 8 + header_len + (6 + 4 + 1) * 4);
	assert_true(buf[8] == '{');

	assert_int_equal(st_open_buffer(buf, len, &file, &err), PEFT_OK);
	assert_false(file->mapped);
	assert_int_equal(file->ntensors, 4);
	assert_string_equal(file->tensors[0].name, "alpha.bias");
	assert_string_equal(file->tensors[1].name, "empty");
	assert_string_equal(file->tensors[2].name, "scalar");
	assert_string_equal(file->tensors[3].name, "zeta.weight");
	check_file_invariants(file);

	/* written in name order, contiguously */
	assert_ptr_equal(file->tensors[0].data, buf + 8 + header_len);
	assert_ptr_equal(file->tensors[2].data, buf + 8 + header_len + 16);
	assert_ptr_equal(file->tensors[3].data, buf + 8 + header_len + 20);

	t = st_find(file, "zeta.weight");
	assert_non_null(t);
	assert_int_equal(t->dtype, ST_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 2);
	assert_int_equal(t->shape[1], 3);
	assert_int_equal(st_to_real(t, got, 6, &err), PEFT_OK);
	assert_memory_equal(got, w, sizeof(w));
	assert_true(signbit(got[4]));

	t = st_find(file, "scalar");
	assert_int_equal(t->ndim, 0);
	assert_int_equal(t->nelem, 1);
	assert_int_equal(st_to_real(t, got, 1, &err), PEFT_OK);
	assert_true(got[0] == 42);

	t = st_find(file, "empty");
	assert_int_equal(t->nelem, 0);
	assert_int_equal(t->nbytes, 0);
	assert_int_equal(st_to_real(t, got, 0, &err), PEFT_OK);

	assert_string_equal(st_metadata(file, "format"), "pt");
	assert_string_equal(st_metadata(file, "peft_type"), "LORA");
	assert_null(st_metadata(file, "missing"));
	assert_null(st_find(file, "zeta"));
	assert_null(st_find(file, ""));
	st_close(file);
	free(buf);
}

/* Names needing JSON escapes survive the round trip. */
static void
test_round_trip_escaped_names(void **state)
{
	static const real v[1] = {7};
	const char *odd = "quote\" back\\slash\nnew\ttab \x01 caf\xc3\xa9";
	StWriteTensor tensors[1] = {{.name = odd, .ndim = 1, .shape = {1}, .data = v}};
	const char *keys[] = {"k\"ey"};
	const char *values[] = {"v\\al\n"};
	uint8_t    *buf = NULL;
	size_t		len;
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	assert_int_equal(st_serialize(tensors, 1, keys, values, 1, &buf, &len, &err),
					 PEFT_OK);
	assert_int_equal(st_open_buffer(buf, len, &file, &err), PEFT_OK);
	assert_non_null(st_find(file, odd));
	assert_string_equal(st_metadata(file, "k\"ey"), "v\\al\n");
	st_close(file);
	free(buf);
}

/* No tensors and no metadata is a valid, empty file. */
static void
test_serialize_empty(void **state)
{
	uint8_t    *buf = NULL;
	size_t		len;
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	assert_int_equal(st_serialize(NULL, 0, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_OK);
	assert_int_equal(len, 16);
	assert_memory_equal(buf + 8, "{}      ", 8);
	assert_int_equal(st_open_buffer(buf, len, &file, &err), PEFT_OK);
	assert_int_equal(file->ntensors, 0);
	assert_int_equal(file->nmeta, 0);
	assert_null(st_find(file, "x"));
	st_close(file);
	free(buf);
}

/* st_serialize refuses bad arguments instead of writing a broken file. */
static void
test_serialize_rejects(void **state)
{
	static const real v[4] = {1, 2, 3, 4};
	StWriteTensor dup[2] = {
		{.name = "x", .ndim = 1, .shape = {4}, .data = v},
		{.name = "x", .ndim = 1, .shape = {4}, .data = v},
	};
	StWriteTensor negative = {.name = "n", .ndim = 1, .shape = {-1}, .data = v};
	StWriteTensor too_many = {.name = "m", .ndim = ST_MAX_DIMS + 1, .data = v};
	StWriteTensor no_data = {.name = "d", .ndim = 1, .shape = {4}, .data = NULL};
	StWriteTensor bad_utf8 = {.name = "bad\xff", .ndim = 1, .shape = {4}, .data = v};
	StWriteTensor reserved = {.name = "__metadata__", .ndim = 1, .shape = {4}, .data = v};
	StWriteTensor no_name = {.name = NULL, .ndim = 1, .shape = {4}, .data = v};
	StWriteTensor overflow = {.name = "o", .ndim = 3,
	.shape = {INT64_MAX, INT64_MAX, 2}, .data = v};
	const char *keys[] = {"a", "a"};
	const char *values[] = {"1", "2"};
	uint8_t    *buf = (uint8_t *) 1;
	size_t		len = 1;
	PeftError	err;

	(void) state;
	assert_int_equal(st_serialize(dup, 2, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_null(buf);
	assert_int_equal(len, 0);
	assert_non_null(strstr(err.message, "\"x\" given twice"));
	assert_int_equal(st_serialize(&negative, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&too_many, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&no_data, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&bad_utf8, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&reserved, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&no_name, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(&overflow, 1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(dup, 1, keys, values, 2, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_serialize(dup, -1, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_ERR_INVALID);
	assert_null(buf);
}

/*
 * st_serialize writes what Python's safetensors writes for the same tensors
 * and metadata, byte for byte (test/fixtures/ref_safetensors.py wrote the
 * fixture once): the header's key order, padding and offsets, -0.0, a
 * subnormal-range value and a scalar included.
 */
static void
test_serialize_like_python(void **state)
{
	real		w[6] = {0.5f, -1, 3.25f, 1e-20f, -0.0f, 65504};
	real		s[1] = {42};
	StWriteTensor tensors[2] = {
		{.name = "layer.weight", .ndim = 2, .shape = {2, 3}, .data = w},
		{.name = "a.scalar", .ndim = 0, .data = s},
	};
	const char *keys[] = {"format"};
	const char *values[] = {"pt"};
	uint8_t    *buf = NULL;
	size_t		len;
	char	   *want = NULL;
	size_t		want_len = 0;
	PeftError	err;

	(void) state;
	assert_int_equal(read_small_file(source_path("test/fixtures/reference/serialize_python.safetensors"),
									 1 << 20, &want, &want_len, &err), PEFT_OK);
	assert_int_equal(st_serialize(tensors, 2, keys, values, 1, &buf, &len, &err), PEFT_OK);
	if (len != want_len || memcmp(buf, want, len) != 0)
	{
		size_t		at = 0;

		while (at < len && at < want_len && buf[at] == (uint8_t) want[at])
			at++;
		fail_msg("st_serialize wrote %zu bytes, Python's safetensors %zu; first difference at byte %zu",
				 len, want_len, at);
	}
	free(buf);
	free(want);
}

/* st_find finds every one of many tensors, and nothing else. */
static void
test_find_many(void **state)
{
	enum
	{
		N = 257
	};
	static real v[1] = {1};
	StWriteTensor *tensors = calloc(N, sizeof(StWriteTensor));
	char	  (*names)[16] = calloc(N, 16);
	uint8_t    *buf = NULL;
	size_t		len;
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	assert_non_null(tensors);
	assert_non_null(names);
	for (int i = 0; i < N; i++)
	{
		/* scrambled order: the writer and the reader must both sort */
		snprintf(names[i], 16, "t%03d", (i * 97) % N);
		tensors[i].name = names[i];
		tensors[i].ndim = 1;
		tensors[i].shape[0] = 1;
		tensors[i].data = v;
	}
	assert_int_equal(st_serialize(tensors, N, NULL, NULL, 0, &buf, &len, &err),
					 PEFT_OK);
	assert_int_equal(st_open_buffer(buf, len, &file, &err), PEFT_OK);
	assert_int_equal(file->ntensors, N);
	for (int i = 0; i < N; i++)
	{
		char		name[16];
		const StTensor *t;

		snprintf(name, sizeof(name), "t%03d", i);
		t = st_find(file, name);
		assert_non_null(t);
		assert_string_equal(t->name, name);
	}
	assert_null(st_find(file, "t257"));
	assert_null(st_find(file, "t"));
	assert_null(st_find(file, "t0000"));
	assert_null(st_find(file, "a"));
	assert_null(st_find(file, "z"));
	st_close(file);
	free(buf);
	free(tensors);
	free(names);
}

/* st_expect reports name, actual and expected shape; passes on a match. */
static void
test_expect(void **state)
{
	static real v[384 * 384];
	StWriteTensor t = {.name = "encoder.layer.0.attention.self.query.weight",
	.ndim = 2, .shape = {384, 384}, .data = v};
	const int64_t good[2] = {384, 384};
	const int64_t bad[2] = {384, 385};
	const int64_t flat[1] = {147456};
	uint8_t    *buf = NULL;
	size_t		len;
	StFile	   *file = NULL;
	const StTensor *found = NULL;
	PeftError	err;

	(void) state;
	assert_int_equal(st_serialize(&t, 1, NULL, NULL, 0, &buf, &len, &err), PEFT_OK);
	assert_int_equal(st_open_buffer(buf, len, &file, &err), PEFT_OK);

	assert_int_equal(st_expect(file, t.name, 2, good, &found, &err), PEFT_OK);
	assert_non_null(found);
	assert_int_equal(st_expect(file, t.name, 2, bad, &found, &err),
					 PEFT_ERR_FORMAT);
	assert_null(found);
	assert_string_equal(err.message,
						"tensor \"encoder.layer.0.attention.self.query.weight\" has shape [384, 384], expected [384, 385]");
	assert_int_equal(st_expect(file, t.name, 1, flat, NULL, &err),
					 PEFT_ERR_FORMAT);
	assert_string_equal(err.message,
						"tensor \"encoder.layer.0.attention.self.query.weight\" has shape [384, 384], expected [147456]");
	assert_int_equal(st_expect(file, "pooler.dense.weight", 2, good, NULL, &err),
					 PEFT_ERR_FORMAT);
	assert_string_equal(err.message, "tensor \"pooler.dense.weight\" is missing");
	st_close(file);
	free(buf);
}

/* Open a one-tensor file of a dtype holding raw little-endian bytes. */
static StFile *
open_raw_tensor(const char *dtype, const uint8_t *bytes, size_t nbytes,
				size_t elem_size, uint8_t **image)
{
	char		header[256];
	size_t		len;
	StFile	   *file = NULL;
	PeftError	err;

	/* a 1-byte tensor first so the one under test sits at an odd address */
	snprintf(header, sizeof(header),
			 "{\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
			 "\"x\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[1,%zu]}}",
			 dtype, nbytes / elem_size, nbytes + 1);
	*image = make_image(header, strlen(header), strlen(header), nbytes + 1, &len);
	memcpy(*image + 8 + strlen(header) + 1, bytes, nbytes);
	if (st_open_buffer(*image, len, &file, &err) != PEFT_OK)
		fail_msg("%s", err.message);
	return file;
}

/* F16 decoding: normals, subnormals, signed zero, largest, inf, nan. */
static void
test_f16_values(void **state)
{
	static const uint16_t bits[] = {
		0x0000, 0x8000, 0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400,
		0x0001, 0x8001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0xFC01,
	};
	const double expected[] = {
		0.0, -0.0, 1.0, -2.0, 0.333251953125, 65504.0, 6.103515625e-05,
		5.9604644775390625e-08, -5.9604644775390625e-08,
		6.097555160522461e-05, INFINITY, -INFINITY, NAN, NAN,
	};
	enum
	{
		N = sizeof(bits) / sizeof(bits[0])
	};
	uint8_t		bytes[2 * N];
	uint8_t    *image;
	StFile	   *file;
	real		got[N];

	(void) state;
	for (int i = 0; i < N; i++)
	{
		bytes[2 * i] = (uint8_t) bits[i];
		bytes[2 * i + 1] = (uint8_t) (bits[i] >> 8);
	}
	file = open_raw_tensor("F16", bytes, sizeof(bytes), 2, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, N, NULL), PEFT_OK);
	for (int i = 0; i < N; i++)
	{
		if (isnan(expected[i]))
			assert_true(isnan(got[i]));
		else
		{
			assert_true(got[i] == (real) expected[i]);
			assert_int_equal(signbit(got[i]) != 0, signbit(expected[i]) != 0);
		}
	}
	st_close(file);
	free(image);
}

/* BF16 decoding: the top half of a float32, specials included. */
static void
test_bf16_values(void **state)
{
	static const uint16_t bits[] = {
		0x0000, 0x8000, 0x3F80, 0xC040, 0x3EAB, 0x7F7F, 0x0001,
		0x7F80, 0xFF80, 0x7FC0,
	};
	const double expected[] = {
		0.0, -0.0, 1.0, -3.0, 0.333984375, 3.3895313892515355e+38,
		9.183549615799121e-41, INFINITY, -INFINITY, NAN,
	};
	enum
	{
		N = sizeof(bits) / sizeof(bits[0])
	};
	uint8_t		bytes[2 * N];
	uint8_t    *image;
	StFile	   *file;
	real		got[N];

	(void) state;
	for (int i = 0; i < N; i++)
	{
		bytes[2 * i] = (uint8_t) bits[i];
		bytes[2 * i + 1] = (uint8_t) (bits[i] >> 8);
	}
	file = open_raw_tensor("BF16", bytes, sizeof(bytes), 2, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, N, NULL), PEFT_OK);
	for (int i = 0; i < N; i++)
	{
		if (isnan(expected[i]))
			assert_true(isnan(got[i]));
		else
		{
			assert_true(got[i] == (real) expected[i]);
			assert_int_equal(signbit(got[i]) != 0, signbit(expected[i]) != 0);
		}
	}
	st_close(file);
	free(image);
}

/* F64 and F32 decode from unaligned little-endian bytes. */
static void
test_f64_f32_values(void **state)
{
	const double d[3] = {1.0 / 3.0, -1e300, 2.5};
	const float f[3] = {1.0f / 3.0f, -7.0f, 1e-40f};
	uint8_t		bytes[24];
	uint8_t    *image;
	StFile	   *file;
	real		got[3];

	(void) state;
	for (int i = 0; i < 3; i++)
	{
		uint64_t	b;

		memcpy(&b, &d[i], 8);
		put_le64(bytes + 8 * i, b);
	}
	file = open_raw_tensor("F64", bytes, 24, 8, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, 3, NULL), PEFT_OK);
	assert_true(got[0] == (real) (1.0 / 3.0));
	assert_true(got[2] == 2.5);
	/* -1e300 does not fit a float: it becomes -inf there */
	assert_true(got[1] < 0 && (sizeof(real) == 8 ? got[1] == -1e300 : isinf(got[1])));
	st_close(file);
	free(image);

	for (int i = 0; i < 3; i++)
	{
		uint32_t	b;

		memcpy(&b, &f[i], 4);
		for (int k = 0; k < 4; k++)
			bytes[4 * i + k] = (uint8_t) (b >> (8 * k));
	}
	file = open_raw_tensor("F32", bytes, 12, 4, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, 3, NULL), PEFT_OK);
	for (int i = 0; i < 3; i++)
		assert_true(got[i] == (real) f[i]);
	st_close(file);
	free(image);
}

/* st_to_real refuses integer dtypes and a wrong element count. */
static void
test_to_real_errors(void **state)
{
	uint8_t		bytes[8] = {1, 0, 0, 0, 2, 0, 0, 0};
	uint8_t    *image;
	StFile	   *file;
	real		got[4];
	PeftError	err;

	(void) state;
	file = open_raw_tensor("I32", bytes, 8, 4, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, 2, &err),
					 PEFT_ERR_UNSUPPORTED);
	assert_non_null(strstr(err.message, "I32"));
	st_close(file);
	free(image);

	file = open_raw_tensor("F32", bytes, 8, 4, &image);
	assert_int_equal(st_to_real(st_find(file, "x"), got, 3, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_to_real(st_find(file, "x"), got, 1, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(st_to_real(NULL, got, 1, &err), PEFT_ERR_INVALID);
	st_close(file);
	free(image);
}

/* Every proper prefix of a valid file is rejected without reading past it. */
static void
test_truncations(void **state)
{
	size_t		full;
	uint8_t    *valid = small_valid_file(&full);
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	for (size_t len = 0; len < full; len++)
	{
		uint8_t    *copy = malloc(len > 0 ? len : 1);

		assert_non_null(copy);
		memcpy(copy, valid, len);
		if (st_open_buffer(copy, len, &file, &err) == PEFT_OK)
			fail_msg("a %zu-byte prefix of a %zu-byte file was accepted", len, full);
		assert_null(file);
		assert_int_equal(err.code, PEFT_ERR_FORMAT);
		free(copy);
	}
	assert_int_equal(st_open_buffer(valid, full, &file, &err), PEFT_OK);
	st_close(file);
	free(valid);
}

/* Every single-bit flip of the length and header: an error or a valid file. */
static void
test_header_bit_flips(void **state)
{
	size_t		full;
	uint8_t    *valid = small_valid_file(&full);
	size_t		header_end = 8 + (size_t) valid[0] + ((size_t) valid[1] << 8);
	int			accepted = 0;
	int			rejected = 0;

	(void) state;
	for (size_t pos = 0; pos < header_end; pos++)
	{
		for (int bit = 0; bit < 8; bit++)
		{
			uint8_t    *copy = malloc(full);
			StFile	   *file = NULL;
			PeftError	err;

			assert_non_null(copy);
			memcpy(copy, valid, full);
			copy[pos] ^= (uint8_t) (1 << bit);
			if (st_open_buffer(copy, full, &file, &err) == PEFT_OK)
			{
				check_file_invariants(file);
				accepted++;
			}
			else
			{
				assert_null(file);
				assert_true(err.message[0] != '\0');
				rejected++;
			}
			st_close(file);
			free(copy);
		}
	}
	print_message("bit flips: %d accepted as valid, %d rejected\n",
				  accepted, rejected);
	assert_true(rejected > 0);
	free(valid);
}

/* Thousands of seeded random byte mutations: an error or a valid file. */
static void
test_random_mutations(void **state)
{
	size_t		full;
	uint8_t    *valid = small_valid_file(&full);
	uint64_t	x = 0x9E3779B97F4A7C15ULL;

	(void) state;
	for (int round = 0; round < 20000; round++)
	{
		uint8_t    *copy = malloc(full);
		StFile	   *file = NULL;
		int			nmut;

		assert_non_null(copy);
		memcpy(copy, valid, full);

		/* xorshift64: a fixed sequence, so a failure reproduces */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		nmut = 1 + (int) (x % 4);
		for (int m = 0; m < nmut; m++)
		{
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			/* mostly the header, whose bytes are the ones parsed */
			copy[8 + (x >> 8) % (full - 8 < 160 ? full - 8 : 160)] = (uint8_t) x;
		}
		if (st_open_buffer(copy, full, &file, NULL) == PEFT_OK)
			check_file_invariants(file);
		st_close(file);
		free(copy);
	}
	free(valid);
}

/* Length prefixes that are too large, past the end, or in a too-short file. */
static void
test_bad_length_prefix(void **state)
{
	const char *header = "{}";
	uint8_t    *image;
	size_t		len;
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	image = make_image(header, 2, UINT64_C(1) << 63, 0, &len);
	assert_int_equal(st_open_buffer(image, len, &file, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "exceeds the limit"));
	free(image);

	image = make_image(header, 2, (uint64_t) ST_MAX_HEADER + 1, 0, &len);
	assert_int_equal(st_open_buffer(image, len, &file, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "exceeds the limit"));
	free(image);

	image = make_image(header, 2, 3, 0, &len);
	assert_int_equal(st_open_buffer(image, len, &file, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "runs past the end"));
	free(image);

	image = make_image(header, 2, 100, 4, &len);
	assert_int_equal(st_open_buffer(image, len, &file, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "runs past the end"));
	free(image);

	for (size_t n = 0; n < 8; n++)
	{
		uint8_t    *tiny = malloc(n > 0 ? n : 1);

		memset(tiny, 0, n > 0 ? n : 1);
		assert_int_equal(st_open_buffer(tiny, n, &file, &err), PEFT_ERR_FORMAT);
		assert_non_null(strstr(err.message, "too short"));
		free(tiny);
	}
	assert_int_equal(st_open_buffer(NULL, 0, &file, &err), PEFT_ERR_FORMAT);
	assert_int_equal(st_open_buffer(NULL, 10, &file, &err), PEFT_ERR_INVALID);
}

typedef struct HeaderCase
{
	const char *what;
	const char *header;
	size_t		data_len;
	PeftCode	expected;
	const char *message_part;	/* must appear in the error message */
} HeaderCase;

#define T(name, body) "\"" name "\":{" body "}"
#define F32x2(begin, end) "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" #begin "," #end "]"

static const HeaderCase header_cases[] = {
	{"empty header", "", 0, PEFT_ERR_FORMAT, "not valid JSON"},
	{"not JSON", "hello world", 0, PEFT_ERR_FORMAT, "not valid JSON"},
	{"truncated JSON", "{\"a\":{\"dtype\":\"F32\"", 0, PEFT_ERR_FORMAT, "not valid JSON"},
	{"trailing garbage", "{} x", 0, PEFT_ERR_FORMAT, "not valid JSON"},
	{"JSON array", "[1, 2, 3]", 0, PEFT_ERR_FORMAT, "not a JSON object"},
	{"JSON string", "\"text\"", 0, PEFT_ERR_FORMAT, "not a JSON object"},
	{"JSON number", "8", 0, PEFT_ERR_FORMAT, "not a JSON object"},
	{"entry not an object", "{\"a\":5}", 0, PEFT_ERR_FORMAT, "not a JSON object"},
	{"entry is null", "{\"a\":null}", 0, PEFT_ERR_FORMAT, "not a JSON object"},
	{"missing dtype", "{" T("a", "\"shape\":[2],\"data_offsets\":[0,8]") "}", 8,
	PEFT_ERR_FORMAT, "\"dtype\" is missing"},
	{"dtype not a string", "{" T("a", "\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "\"dtype\""},
	{"unknown dtype", "{" T("a", "\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "unknown dtype \"F33\""},
	{"lower-case dtype", "{" T("a", "\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "unknown dtype"},
	{"unsupported dtype", "{" T("a", "\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]") "}",
	2, PEFT_ERR_UNSUPPORTED, "F8_E4M3"},
	{"missing shape", "{" T("a", "\"dtype\":\"F32\",\"data_offsets\":[0,8]") "}", 8,
	PEFT_ERR_FORMAT, "\"shape\""},
	{"shape not an array", "{" T("a", "\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "\"shape\""},
	{"negative shape", "{" T("a", "\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "dimension 0"},
	{"fractional shape", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]") "}",
	12, PEFT_ERR_FORMAT, "dimension 1"},
	{"huge shape", "{" T("a", "\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "dimension 0"},
	{"infinite shape", "{" T("a", "\"dtype\":\"F32\",\"shape\":[1e999],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "dimension 0"},
	{"shape of strings", "{" T("a", "\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "dimension 0"},
	{"shape of booleans", "{" T("a", "\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]") "}",
	4, PEFT_ERR_FORMAT, "dimension 0"},
	{"nine dimensions", "{" T("a", "\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]") "}",
	4, PEFT_ERR_FORMAT, "9 dimensions"},
	{"element count overflow", "{" T("a", "\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]") "}",
	0, PEFT_ERR_FORMAT, "element count overflows"},
	{"byte size overflow", "{" T("a", "\"dtype\":\"F64\",\"shape\":[9007199254740992,512],\"data_offsets\":[0,0]") "}",
	0, PEFT_ERR_FORMAT, "byte size overflows"},
	{"zero times huge", "{" T("a", "\"dtype\":\"F32\",\"shape\":[0,9007199254740994],\"data_offsets\":[0,0]") "}",
	0, PEFT_ERR_FORMAT, "dimension 1"},
	{"missing offsets", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2]") "}", 8,
	PEFT_ERR_FORMAT, "data_offsets"},
	{"offsets not an array", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":8") "}",
	8, PEFT_ERR_FORMAT, "data_offsets"},
	{"one offset", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]") "}",
	8, PEFT_ERR_FORMAT, "data_offsets"},
	{"three offsets", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]") "}",
	8, PEFT_ERR_FORMAT, "data_offsets"},
	{"negative offset", "{" T("a", F32x2(-8, 0)) "}", 8, PEFT_ERR_FORMAT, "data_offsets"},
	{"fractional offsets", "{" T("a", F32x2(0.5, 8.5)) "}", 9, PEFT_ERR_FORMAT, "data_offsets"},
	{"offset as string", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",8]") "}",
	8, PEFT_ERR_FORMAT, "data_offsets"},
	{"huge offsets", "{" T("a", F32x2(18446744073709551608, 18446744073709551616)) "}",
	8, PEFT_ERR_FORMAT, "data_offsets"},
	{"offsets past the data", "{" T("a", F32x2(4, 12)) "}", 8, PEFT_ERR_FORMAT,
	"past the 8 bytes"},
	{"offsets far past the data", "{" T("a", F32x2(1000000, 1000008)) "}", 8,
	PEFT_ERR_FORMAT, "past the"},
	{"begin after end", "{" T("a", F32x2(8, 0)) "}", 8, PEFT_ERR_FORMAT, "after end"},
	{"size mismatch", "{" T("a", F32x2(0, 4)) "}", 8, PEFT_ERR_FORMAT, "needs 8"},
	{"size mismatch, larger", "{" T("a", F32x2(0, 12)) "}", 12, PEFT_ERR_FORMAT, "needs 8"},
	{"overlapping tensors", "{" T("a", F32x2(0, 8)) "," T("b", F32x2(4, 12)) "}", 12,
	PEFT_ERR_FORMAT, "overlap"},
	{"same bytes twice", "{" T("a", F32x2(0, 8)) "," T("b", F32x2(0, 8)) "}", 8,
	PEFT_ERR_FORMAT, "overlap"},
	{"empty tensor inside another", "{" T("a", F32x2(0, 8)) ","
		T("b", "\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]") "}", 8,
	PEFT_ERR_FORMAT, "overlap"},
	{"duplicate names", "{" T("a", F32x2(0, 8)) "," T("a", F32x2(8, 16)) "}", 16,
	PEFT_ERR_FORMAT, "\"a\" appears more than once"},
	{"duplicate key in entry", "{" T("a", "\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]") "}",
	8, PEFT_ERR_FORMAT, "appears more than once"},
	{"escaped NUL in name", "{" T("a\\u0000b", F32x2(0, 8)) "}", 8, PEFT_ERR_FORMAT,
	"\\u0000"},
	{"raw newline in a name", "{" T("a\nb", F32x2(0, 8)) "}", 8, PEFT_ERR_FORMAT,
	"control character"},
	{"raw tab in metadata", "{\"__metadata__\":{\"k\":\"a\tb\"}}", 0, PEFT_ERR_FORMAT,
	"control character"},
	{"metadata not an object", "{\"__metadata__\":[\"a\"]}", 0, PEFT_ERR_FORMAT,
	"__metadata__"},
	{"metadata is a string", "{\"__metadata__\":\"pt\"}", 0, PEFT_ERR_FORMAT,
	"__metadata__"},
	{"metadata value a number", "{\"__metadata__\":{\"format\":5}}", 0,
	PEFT_ERR_FORMAT, "\"format\" is not a string"},
	{"metadata value an object", "{\"__metadata__\":{\"format\":{}}}", 0,
	PEFT_ERR_FORMAT, "not a string"},
	{"metadata value null", "{\"__metadata__\":{\"format\":null}}", 0,
	PEFT_ERR_FORMAT, "not a string"},
	{"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
	PEFT_ERR_FORMAT, "more than once"},
	{"metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
	PEFT_ERR_FORMAT, "\"k\" appears more than once"},
	{"invalid UTF-8", "{\"\xff\":{}}", 0, PEFT_ERR_FORMAT, "UTF-8"},
	{"overlong UTF-8", "{\"\xc0\xaf\":{}}", 0, PEFT_ERR_FORMAT, "UTF-8"},
	{"UTF-8 surrogate", "{\"\xed\xa0\x80\":{}}", 0, PEFT_ERR_FORMAT, "UTF-8"},
	{"UTF-8 above U+10FFFF", "{\"\xf4\x90\x80\x80\":{}}", 0, PEFT_ERR_FORMAT, "UTF-8"},
	{"cut UTF-8 sequence", "{\"a\":{}}\xe2\x82", 0, PEFT_ERR_FORMAT, "UTF-8"},
	{"lone surrogate escape", "{" T("\\ud800", F32x2(0, 8)) "}", 8, PEFT_ERR_FORMAT,
	"JSON"},

	/* valid corner cases */
	{"empty object", "{}", 0, PEFT_OK, NULL},
	{"space padding", "{}      ", 0, PEFT_OK, NULL},
	{"metadata only", "{\"__metadata__\":{\"format\":\"pt\"}}", 0, PEFT_OK, NULL},
	{"scalar", "{" T("s", "\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]") "}",
	4, PEFT_OK, NULL},
	{"zero-size tensor", "{" T("z", "\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]") "}",
	0, PEFT_OK, NULL},
	{"two empty tensors at one offset", "{" T("y", "\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]") ","
		T("z", "\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[4,4]") "}", 4, PEFT_OK, NULL},
	{"unaligned offsets", "{" T("p", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]") ","
		T("q", F32x2(1, 9)) "}", 9, PEFT_OK, NULL},
	{"gap between tensors", "{" T("a", F32x2(0, 8)) "," T("b", F32x2(12, 20)) "}", 20,
	PEFT_OK, NULL},
	{"bytes after the last tensor", "{" T("a", F32x2(0, 8)) "}", 100, PEFT_OK, NULL},
	{"unknown key in entry", "{" T("a", F32x2(0, 8) ",\"extra\":[1]") "}", 8, PEFT_OK, NULL},
	{"integer written as 8.0", "{" T("a", "\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8e0]") "}",
	8, PEFT_OK, NULL},
	{"every dtype", "{" T("a", "\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]") ","
		T("b", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]") ","
		T("c", "\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[12,14]") ","
		T("d", "\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[14,16]") ","
		T("e", "\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]") ","
		T("f", "\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[24,28]") ","
		T("g", "\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[28,30]") ","
		T("h", "\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[30,31]") ","
		T("i", "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[31,32]") ","
		T("j", "\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[32,33]") "}",
	33, PEFT_OK, NULL},
	{"non-ASCII name", "{" T("caf\xc3\xa9 \xf0\x9f\x98\x80", F32x2(0, 8)) "}", 8, PEFT_OK, NULL},
};

/* Each hand-crafted header gives the expected code and message. */
static void
test_crafted_headers(void **state)
{
	(void) state;
	for (size_t i = 0; i < sizeof(header_cases) / sizeof(header_cases[0]); i++)
	{
		const HeaderCase *c = &header_cases[i];
		PeftError	err;
		PeftCode	code;

		code = open_header(c->header, strlen(c->header), c->data_len, &err);
		if (code != c->expected)
			fail_msg("case \"%s\": expected %s, got %s (%s)", c->what,
					 peft_code_name(c->expected), peft_code_name(code),
					 err.message);
		if (c->message_part && strstr(err.message, c->message_part) == NULL)
			fail_msg("case \"%s\": message \"%s\" lacks \"%s\"", c->what,
					 err.message, c->message_part);
	}
}

/* A NUL byte inside the header is refused (cJSON would stop there). */
static void
test_nul_in_header(void **state)
{
	static const char header[] = "{\"a\":{}}\0 {\"b\":5}";
	static const char in_name[] = "{\"a\0b\":{}}";
	PeftError	err;

	(void) state;
	assert_int_equal(open_header(header, sizeof(header) - 1, 0, &err),
					 PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "NUL"));
	assert_int_equal(open_header(in_name, sizeof(in_name) - 1, 0, &err),
					 PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "NUL"));
}

/* Deep nesting fails cleanly (cJSON's nesting limit), never by stack overflow. */
static void
test_deep_nesting(void **state)
{
	enum
	{
		DEPTH = 100000
	};
	char	   *header = malloc(2 * DEPTH + 16);
	size_t		len = 0;
	PeftError	err;

	(void) state;
	assert_non_null(header);
	len += (size_t) sprintf(header, "{\"a\":");
	for (int i = 0; i < DEPTH; i++)
		header[len++] = '[';
	for (int i = 0; i < DEPTH; i++)
		header[len++] = ']';
	header[len++] = '}';
	assert_int_equal(open_header(header, len, 0, &err), PEFT_ERR_FORMAT);
	free(header);
}

/* The value seen through st_find matches the value given at its offset. */
static void
test_data_pointers(void **state)
{
	const char *header = "{" T("a", F32x2(8, 16)) "," T("b", F32x2(0, 8)) "}";
	size_t		len;
	uint8_t    *image = make_image(header, strlen(header), strlen(header), 16, &len);
	StFile	   *file = NULL;
	PeftError	err;

	(void) state;
	assert_int_equal(st_open_buffer(image, len, &file, &err), PEFT_OK);
	assert_ptr_equal(st_find(file, "a")->data, image + 8 + strlen(header) + 8);
	assert_ptr_equal(st_find(file, "b")->data, image + 8 + strlen(header));
	assert_int_equal(st_find(file, "a")->data[0], 8);
	st_close(file);
	free(image);
}

/* st_open_file maps a file, and reports missing, non-regular and short files. */
static void
test_open_file(void **state)
{
	char		dir[256];
	char		path[512];
	size_t		len;
	uint8_t    *valid = small_valid_file(&len);
	StFile	   *file = NULL;
	PeftError	err;
	FILE	   *f;
	real		got[2];

	(void) state;
	make_temp_dir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(valid, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(st_open_file(path, &file, &err), PEFT_OK);
	assert_true(file->mapped);
	assert_int_equal(file->size, len);
	assert_int_equal(file->ntensors, 2);
	assert_int_equal(st_to_real(st_find(file, "b"), got, 2, &err), PEFT_OK);
	assert_true(got[0] == -1.5f && got[1] == 0.25f);
	st_close(file);

	/* truncated on disk */
	f = fopen(path, "wb");
	assert_int_equal(fwrite(valid, 1, len - 1, f), len - 1);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(st_open_file(path, &file, &err), PEFT_ERR_FORMAT);
	assert_null(file);
	assert_non_null(strstr(err.message, path));

	/* empty */
	f = fopen(path, "wb");
	assert_int_equal(fclose(f), 0);
	assert_int_equal(st_open_file(path, &file, &err), PEFT_ERR_FORMAT);
	assert_non_null(strstr(err.message, "too short"));

	/* a directory */
	assert_int_equal(st_open_file(dir, &file, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));

	/* a FIFO must not block the open */
	snprintf(path, sizeof(path), "%s/fifo.safetensors", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(st_open_file(path, &file, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, "not a regular file"));

	/* missing */
	snprintf(path, sizeof(path), "%s/missing.safetensors", dir);
	assert_int_equal(st_open_file(path, &file, &err), PEFT_ERR_IO);
	assert_non_null(strstr(err.message, path));
	assert_non_null(strstr(err.message, "No such file"));

	st_close(NULL);
	remove_tree(dir);
	free(valid);
}

/* Read a whole floating tensor of a tiny-model file as reals. */
static real *
read_tensor(const StFile *file, const char *name, size_t *count)
{
	const StTensor *t = st_find(file, name);
	real	   *values;
	PeftError	err;

	if (t == NULL)
		fail_msg("tensor %s missing", name);
	values = malloc((t->nelem + 1) * sizeof(real));
	assert_non_null(values);
	if (st_to_real(t, values, t->nelem, &err) != PEFT_OK)
		fail_msg("%s", err.message);
	*count = t->nelem;
	return values;
}

/* Open one tiny-model variant's model.safetensors. */
static StFile *
open_tiny(const char *variant)
{
	char		dir[512];
	char		path[640];
	StFile	   *file = NULL;
	PeftError	err;

	tiny_dir(dir, sizeof(dir), variant);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	if (st_open_file(path, &file, &err) != PEFT_OK)
		fail_msg("%s", err.message);
	return file;
}

/* The tiny model: BERT names, shapes, position ids, LayerNorm and pad row. */
static void
test_tiny_model_f32(void **state)
{
	static const char *const layer_tensors[] = {
		"attention.self.query.weight", "attention.self.query.bias",
		"attention.self.key.weight", "attention.self.key.bias",
		"attention.self.value.weight", "attention.self.value.bias",
		"attention.output.dense.weight", "attention.output.dense.bias",
		"attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
		"intermediate.dense.weight", "intermediate.dense.bias",
		"output.dense.weight", "output.dense.bias",
		"output.LayerNorm.weight", "output.LayerNorm.bias",
	};
	const int64_t qshape[2] = {64, 64};
	const int64_t ishape[2] = {128, 64};
	const int64_t oshape[2] = {64, 128};
	const int64_t pshape[2] = {1, 64};
	StFile	   *file;
	const StTensor *t;
	PeftError	err;
	real	   *v;
	size_t		n;
	double		sum = 0;
	double		sumsq = 0;

	(void) state;
	if (!tiny_available)
	{
		print_message("python3 or make_tiny_model.py unavailable: skipped\n");
		skip();
	}
	file = open_tiny("f32");
	assert_int_equal(file->ntensors, 6 + 2 * 16 + 2);
	assert_string_equal(st_metadata(file, "format"), "pt");
	for (int layer = 0; layer < 2; layer++)
	{
		for (size_t k = 0; k < sizeof(layer_tensors) / sizeof(layer_tensors[0]); k++)
		{
			char		name[128];

			snprintf(name, sizeof(name), "encoder.layer.%d.%s", layer,
					 layer_tensors[k]);
			t = st_find(file, name);
			if (t == NULL)
				fail_msg("tensor %s missing", name);
			assert_int_equal(t->dtype, ST_F32);
		}
	}
	assert_int_equal(st_expect(file, "encoder.layer.1.attention.self.query.weight",
							   2, qshape, NULL, &err), PEFT_OK);
	assert_int_equal(st_expect(file, "encoder.layer.1.intermediate.dense.weight",
							   2, ishape, NULL, &err), PEFT_OK);
	assert_int_equal(st_expect(file, "encoder.layer.0.output.dense.weight",
							   2, oshape, NULL, &err), PEFT_OK);

	/* position ids: int64 0..63, like the real checkpoint */
	assert_int_equal(st_expect(file, "embeddings.position_ids", 2, pshape, &t,
							   &err), PEFT_OK);
	assert_int_equal(t->dtype, ST_I64);
	for (int i = 0; i < 64; i++)
	{
		int64_t		id;

		memcpy(&id, t->data + 8 * i, 8);
		assert_int_equal(id, i);
	}

	/* LayerNorm starts at gamma 1, beta 0 */
	v = read_tensor(file, "encoder.layer.1.output.LayerNorm.weight", &n);
	for (size_t i = 0; i < n; i++)
		assert_true(v[i] == 1);
	free(v);
	v = read_tensor(file, "embeddings.LayerNorm.bias", &n);
	for (size_t i = 0; i < n; i++)
		assert_true(v[i] == 0);
	free(v);

	/* word embeddings ~ N(0, 0.02) with the [PAD] row zero */
	v = read_tensor(file, "embeddings.word_embeddings.weight", &n);
	for (size_t i = 0; i < 32; i++)
		assert_true(v[i] == 0);
	for (size_t i = 32; i < n; i++)
	{
		sum += v[i];
		sumsq += (double) v[i] * v[i];
	}
	sum /= (double) (n - 32);
	sumsq = sqrt(sumsq / (double) (n - 32) - sum * sum);
	assert_true(fabs(sum) < 0.002);
	assert_true(sumsq > 0.018 && sumsq < 0.022);
	free(v);
	st_close(file);
}

/* The f16, bf16 and prefixed files hold the f32 weights within dtype precision. */
static void
test_tiny_model_dtypes(void **state)
{
	StFile	   *f32;
	StFile	   *f16;
	StFile	   *bf16;
	StFile	   *prefixed;

	(void) state;
	if (!tiny_available)
	{
		print_message("python3 or make_tiny_model.py unavailable: skipped\n");
		skip();
	}
	f32 = open_tiny("f32");
	f16 = open_tiny("f16");
	bf16 = open_tiny("bf16");
	prefixed = open_tiny("prefix");
	assert_int_equal(f16->ntensors, f32->ntensors);
	assert_int_equal(bf16->ntensors, f32->ntensors);
	assert_int_equal(prefixed->ntensors, f32->ntensors);

	for (int i = 0; i < f32->ntensors; i++)
	{
		const StTensor *t = &f32->tensors[i];
		const StTensor *h = st_find(f16, t->name);
		const StTensor *b = st_find(bf16, t->name);
		char		prefixed_name[256];
		char		what[300];
		real	   *ref;
		real	   *half;
		real	   *brain;
		real	   *same;
		size_t		n;

		assert_non_null(h);
		assert_non_null(b);
		snprintf(prefixed_name, sizeof(prefixed_name), "bert.%s", t->name);
		assert_non_null(st_find(prefixed, prefixed_name));
		if (t->dtype == ST_I64)
		{
			assert_int_equal(h->dtype, ST_I64);
			assert_memory_equal(h->data, t->data, t->nbytes);
			continue;
		}
		assert_int_equal(h->dtype, ST_F16);
		assert_int_equal(b->dtype, ST_BF16);
		assert_int_equal(h->nelem, t->nelem);
		assert_int_equal(b->nelem, t->nelem);
		ref = read_tensor(f32, t->name, &n);
		half = read_tensor(f16, t->name, &n);
		brain = read_tensor(bf16, t->name, &n);
		same = read_tensor(prefixed, prefixed_name, &n);
		/* half: 11 significant bits, subnormal spacing 2^-24 */
		snprintf(what, sizeof(what), "%s f16 vs f32", t->name);
		compare_close(what, half, ref, n, 0x1p-25, 0x1p-11);
		/* bfloat16: 8 significant bits */
		snprintf(what, sizeof(what), "%s bf16 vs f32", t->name);
		compare_close(what, brain, ref, n, 0, 0x1p-8);
		snprintf(what, sizeof(what), "%s prefixed vs f32", t->name);
		compare_close(what, same, ref, n, 0, 0);
		free(ref);
		free(half);
		free(brain);
		free(same);
	}
	st_close(f32);
	st_close(f16);
	st_close(bf16);
	st_close(prefixed);
}

/* The real all-MiniLM-L6-v2 file (require_real_model). */
static void
test_real_model(void **state)
{
	const char *dir = real_model_dir();
	char		path[4096 + 32];
	StFile	   *file = NULL;
	PeftError	err;
	const StTensor *t;
	const int64_t word[2] = {30522, 384};
	const int64_t square[2] = {384, 384};
	const int64_t up[2] = {1536, 384};
	const int64_t down[2] = {384, 1536};
	const int64_t vec[1] = {384};
	const int64_t positions[2] = {1, 512};
	real	   *v;
	size_t		n;

	(void) state;
	require_real_model(dir != NULL);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	if (st_open_file(path, &file, &err) != PEFT_OK)
		fail_msg("%s", err.message);

	/* 104 tensors; the header's 105th entry is __metadata__ */
	assert_int_equal(file->ntensors, 104);
	assert_string_equal(st_metadata(file, "format"), "pt");
	assert_int_equal(st_expect(file, "embeddings.word_embeddings.weight", 2,
							   word, NULL, &err), PEFT_OK);
	for (int layer = 0; layer < 6; layer++)
	{
		char		name[128];

		snprintf(name, sizeof(name), "encoder.layer.%d.attention.self.query.weight", layer);
		assert_int_equal(st_expect(file, name, 2, square, NULL, &err), PEFT_OK);
		snprintf(name, sizeof(name), "encoder.layer.%d.intermediate.dense.weight", layer);
		assert_int_equal(st_expect(file, name, 2, up, NULL, &err), PEFT_OK);
		snprintf(name, sizeof(name), "encoder.layer.%d.output.dense.weight", layer);
		assert_int_equal(st_expect(file, name, 2, down, NULL, &err), PEFT_OK);
		snprintf(name, sizeof(name), "encoder.layer.%d.output.LayerNorm.bias", layer);
		assert_int_equal(st_expect(file, name, 1, vec, NULL, &err), PEFT_OK);
	}
	assert_int_equal(st_expect(file, "encoder.layer.0.attention.self.query.weight",
							   2, up, NULL, &err), PEFT_ERR_FORMAT);
	assert_string_equal(err.message,
						"tensor \"encoder.layer.0.attention.self.query.weight\" has shape [384, 384], expected [1536, 384]");

	assert_int_equal(st_expect(file, "embeddings.position_ids", 2, positions,
							   &t, &err), PEFT_OK);
	assert_int_equal(t->dtype, ST_I64);
	for (int i = 0; i < 512; i++)
	{
		int64_t		id;

		memcpy(&id, t->data + 8 * i, 8);
		assert_int_equal(id, i);
	}

	/* trained weights: finite, not all zero, LayerNorm gammas near 1 */
	v = read_tensor(file, "embeddings.word_embeddings.weight", &n);
	assert_int_equal(n, (size_t) 30522 * 384);
	for (size_t i = 0; i < n; i++)
		assert_true(isfinite(v[i]) && fabs(v[i]) < 10);
	free(v);
	v = read_tensor(file, "encoder.layer.5.output.LayerNorm.weight", &n);
	{
		double		mean = 0;

		for (size_t i = 0; i < n; i++)
			mean += v[i];
		mean /= (double) n;
		assert_true(mean > 0.2 && mean < 5);
	}
	free(v);
	for (int i = 0; i < file->ntensors; i++)
		assert_true(file->tensors[i].dtype == ST_F32 ||
					file->tensors[i].dtype == ST_I64);
	check_file_invariants(file);
	st_close(file);
}

/* Run every safetensors test; the group setup writes the tiny models once. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dtype_table),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_round_trip_escaped_names),
		cmocka_unit_test(test_serialize_empty),
		cmocka_unit_test(test_serialize_rejects),
		cmocka_unit_test(test_serialize_like_python),
		cmocka_unit_test(test_find_many),
		cmocka_unit_test(test_expect),
		cmocka_unit_test(test_f16_values),
		cmocka_unit_test(test_bf16_values),
		cmocka_unit_test(test_f64_f32_values),
		cmocka_unit_test(test_to_real_errors),
		cmocka_unit_test(test_truncations),
		cmocka_unit_test(test_header_bit_flips),
		cmocka_unit_test(test_random_mutations),
		cmocka_unit_test(test_bad_length_prefix),
		cmocka_unit_test(test_crafted_headers),
		cmocka_unit_test(test_nul_in_header),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_data_pointers),
		cmocka_unit_test(test_open_file),
		cmocka_unit_test(test_tiny_model_f32),
		cmocka_unit_test(test_tiny_model_dtypes),
		cmocka_unit_test(test_real_model),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
