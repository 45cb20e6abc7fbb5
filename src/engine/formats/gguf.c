/*
 * gguf.c - the GGUF reader: every count, length, type, dimension and
 * offset is checked against the bytes that are there before anything is
 * used, so a truncated or hostile file is an error, never a wild read.
 */
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_map.h"

#define GGUF_MAGIC "GGUF"
/* Bounds far above real files (SmolLM2: 271 tensors, 33 keys), below what could exhaust memory. */
#define GGUF_MAX_TENSORS (1 << 20)
#define GGUF_MAX_KVS (1 << 20)
#define GGUF_MAX_NAME 4096
/* Room to name a file in errors (a longer path is cut). */
#define GGUF_LABEL_LEN 320

/* A read position in the file's bytes. */
typedef struct Cursor
{
	const uint8_t *base;
	size_t		size;
	size_t		pos;
} Cursor;

/* Block layout of each known tensor type: values per block, bytes per block. */
static const struct
{
	uint32_t	type;
	const char *name;
	int			values;
	int			bytes;
}			layouts[] = {
	{GGML_F32, "F32", 1, 4}, {GGML_F16, "F16", 1, 2}, {GGML_BF16, "BF16", 1, 2},
	{GGML_Q4_0, "Q4_0", 32, 18}, {GGML_Q4_1, "Q4_1", 32, 20}, {GGML_Q5_0, "Q5_0", 32, 22},
	{GGML_Q5_1, "Q5_1", 32, 24}, {GGML_Q8_0, "Q8_0", 32, 34}, {GGML_Q2_K, "Q2_K", 256, 84},
	{GGML_Q3_K, "Q3_K", 256, 110}, {GGML_Q4_K, "Q4_K", 256, 144}, {GGML_Q5_K, "Q5_K", 256, 176},
	{GGML_Q6_K, "Q6_K", 256, 210},
};

/* Values per block and bytes per block of a tensor type; false if unknown. */
bool
gguf_type_layout(uint32_t type, int *block_values, int *block_bytes)
{
	for (size_t k = 0; k < sizeof(layouts) / sizeof(layouts[0]); k++)
		if (layouts[k].type == type)
		{
			*block_values = layouts[k].values;
			*block_bytes = layouts[k].bytes;
			return true;
		}
	return false;
}

/* "Q4_1" etc.; "unknown" for others. */
const char *
gguf_type_name(uint32_t type)
{
	for (size_t k = 0; k < sizeof(layouts) / sizeof(layouts[0]); k++)
		if (layouts[k].type == type)
			return layouts[k].name;
	return "unknown";
}

/* Take n bytes at the cursor, or fail naming what was being read. */
static PeftCode
take(Cursor *c, size_t n, const uint8_t **at, const char *what, PeftError *err)
{
	if (n > c->size - c->pos)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF file ends inside %s (at byte %zu)", what, c->pos);
	*at = c->base + c->pos;
	c->pos += n;
	return PEFT_OK;
}

/* A little-endian unsigned integer of n bytes (1, 2, 4, 8). */
static PeftCode
read_uint(Cursor *c, int n, uint64_t *out, const char *what, PeftError *err)
{
	const uint8_t *at = NULL;
	PeftCode	rc = take(c, (size_t) n, &at, what, err);

	if (rc != PEFT_OK)
		return rc;
	*out = 0;
	for (int k = n - 1; k >= 0; k--)
		*out = (*out << 8) | at[k];
	return PEFT_OK;
}

/* A string: u64 length, bytes (bounded by what is left in the file). */
static PeftCode
read_string(Cursor *c, const char **str, uint64_t *len, const char *what, PeftError *err)
{
	const uint8_t *at = NULL;
	PeftCode	rc;

	if ((rc = read_uint(c, 8, len, what, err)) != PEFT_OK ||
		(rc = take(c, *len, &at, what, err)) != PEFT_OK)
		return rc;
	*str = (const char *) at;
	return PEFT_OK;
}

/* A name (key or tensor name) as a C string: 1..GGUF_MAX_NAME bytes, no NUL inside. */
static PeftCode
read_name(Cursor *c, char **out, const char *what, PeftError *err)
{
	const char *str;
	uint64_t	len;
	PeftCode	rc = read_string(c, &str, &len, what, err);

	if (rc != PEFT_OK)
		return rc;
	if (len == 0 || len > GGUF_MAX_NAME || memchr(str, '\0', len) != NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF %s at byte %zu is empty, too long or holds a NUL",
						 what, c->pos - len);
	if ((*out = strndup(str, len)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading GGUF names");
	return PEFT_OK;
}

/* Bytes of one scalar value type; 0 for STRING and ARRAY, -1 for an unknown type. */
static int
scalar_size(uint32_t type)
{
	switch (type)
	{
		case GGUF_U8: case GGUF_I8: case GGUF_BOOL:
			return 1;
		case GGUF_U16: case GGUF_I16:
			return 2;
		case GGUF_U32: case GGUF_I32: case GGUF_F32:
			return 4;
		case GGUF_U64: case GGUF_I64: case GGUF_F64:
			return 8;
		case GGUF_STRING: case GGUF_ARRAY:
			return 0;
	}
	return -1;
}

/* Fill a scalar value's fields from its bytes. */
static void
decode_scalar(GgufValue *v, uint64_t bits)
{
	int			bytes = scalar_size(v->type);
	float		f32;
	uint32_t	b32 = (uint32_t) bits;

	v->u = bits;
	v->i = bytes == 8 ? (int64_t) bits : (int64_t) (bits << (64 - 8 * bytes)) >> (64 - 8 * bytes);
	if (v->type == GGUF_F32)
	{
		memcpy(&f32, &b32, 4);
		v->f = f32;
	}
	else if (v->type == GGUF_F64)
		memcpy(&v->f, &bits, 8);
}

/* Read (and check) one value of type into v; arrays are walked to their end, nesting bounded. */
static PeftCode
read_value(Cursor *c, uint32_t type, GgufValue *v, int depth, PeftError *err)
{
	int			bytes = scalar_size(type);
	uint64_t	bits, elem_type, count;
	PeftCode	rc;

	memset(v, 0, sizeof(*v));
	v->type = (GgufValueType) type;
	if (bytes < 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF value type %u at byte %zu is unknown", type, c->pos);
	if (bytes > 0)
	{
		if ((rc = read_uint(c, bytes, &bits, "a value", err)) != PEFT_OK)
			return rc;
		if (type == GGUF_BOOL && bits > 1)
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF boolean at byte %zu is %llu", c->pos - 1,
							 (unsigned long long) bits);
		decode_scalar(v, bits);
		return PEFT_OK;
	}
	if (type == GGUF_STRING)
		return read_string(c, &v->str, &v->len, "a string", err);
	if (depth >= GGUF_MAX_ARRAY_DEPTH)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF arrays nest deeper than %d", GGUF_MAX_ARRAY_DEPTH);
	if ((rc = read_uint(c, 4, &elem_type, "an array's type", err)) != PEFT_OK ||
		(rc = read_uint(c, 8, &count, "an array's length", err)) != PEFT_OK)
		return rc;
	if (scalar_size((uint32_t) elem_type) < 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF array element type %llu is unknown",
						 (unsigned long long) elem_type);
	/* every element takes at least one byte (strings and arrays: 8 or 12): no count beyond the file */
	if (count > c->size - c->pos)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF array of %llu elements at byte %zu runs past the end",
						 (unsigned long long) count, c->pos);
	v->elem_type = (GgufValueType) elem_type;
	v->count = count;
	v->elems = c->base + c->pos;
	if (scalar_size((uint32_t) elem_type) > 0)
	{
		const uint8_t *at = NULL;

		if ((rc = take(c, count * (uint64_t) scalar_size((uint32_t) elem_type), &at, "an array", err)) != PEFT_OK)
			return rc;
		/* booleans in an array are held to the rule of a single one (found by fuzz_gguf) */
		if (elem_type == GGUF_BOOL)
			for (uint64_t k = 0; k < count; k++)
				if (at[k] > 1)
					return peft_fail(err, PEFT_ERR_FORMAT, "GGUF boolean at byte %zu is %u",
									 (size_t) (at + k - c->base), (unsigned) at[k]);
		return PEFT_OK;
	}
	for (uint64_t k = 0; k < count; k++)
	{
		GgufValue	elem;

		if ((rc = read_value(c, (uint32_t) elem_type, &elem, depth + 1, err)) != PEFT_OK)
			return rc;
	}
	return PEFT_OK;
}

/* qsort comparators: by key, by tensor name, by data address. */
static int
by_key(const void *a, const void *b)
{
	return strcmp(((const GgufKv *) a)->key, ((const GgufKv *) b)->key);
}

static int
by_name(const void *a, const void *b)
{
	return strcmp(((const GgufTensor *) a)->name, ((const GgufTensor *) b)->name);
}

static int
by_data(const void *a, const void *b)
{
	const uint8_t *x = (*(const GgufTensor *const *) a)->data;
	const uint8_t *y = (*(const GgufTensor *const *) b)->data;

	return (x > y) - (x < y);
}

/* The header: magic, version 2 or 3, bounded counts. */
static PeftCode
read_header(Cursor *c, GgufFile *f, uint64_t *ntensors, uint64_t *nkv, PeftError *err)
{
	const uint8_t *magic = NULL;
	uint64_t	version;
	PeftCode	rc;

	if ((rc = take(c, 4, &magic, "the header", err)) != PEFT_OK)
		return rc;
	if (memcmp(magic, GGUF_MAGIC, 4) != 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "not a GGUF file (no \"GGUF\" magic)");
	if ((rc = read_uint(c, 4, &version, "the header", err)) != PEFT_OK)
		return rc;
	if (version != 2 && version != 3)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF version %llu is not supported (2 and 3 are)",
						 (unsigned long long) version);
	f->version = (uint32_t) version;
	if ((rc = read_uint(c, 8, ntensors, "the header", err)) != PEFT_OK ||
		(rc = read_uint(c, 8, nkv, "the header", err)) != PEFT_OK)
		return rc;
	if (*ntensors > GGUF_MAX_TENSORS || *nkv > GGUF_MAX_KVS)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF header claims %llu tensors and %llu keys",
						 (unsigned long long) *ntensors, (unsigned long long) *nkv);
	return PEFT_OK;
}

/* The key/values, sorted, without duplicates; general.alignment checked. */
static PeftCode
read_kvs(Cursor *c, GgufFile *f, uint64_t nkv, PeftError *err)
{
	const GgufValue *align;
	PeftCode	rc;

	if ((f->kvs = calloc(nkv ? nkv : 1, sizeof(GgufKv))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading GGUF metadata");
	for (uint64_t k = 0; k < nkv; k++)
	{
		uint64_t	type;

		if ((rc = read_name(c, &f->kvs[k].key, "metadata key", err)) != PEFT_OK)
			return rc;
		f->nkv = (int) k + 1;
		if ((rc = read_uint(c, 4, &type, "a value type", err)) != PEFT_OK ||
			(rc = read_value(c, (uint32_t) type, &f->kvs[k].value, 0, err)) != PEFT_OK)
			return rc;
	}
	qsort(f->kvs, f->nkv, sizeof(GgufKv), by_key);
	for (int k = 1; k < f->nkv; k++)
		if (strcmp(f->kvs[k - 1].key, f->kvs[k].key) == 0)
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF metadata key \"%s\" appears twice", f->kvs[k].key);
	f->alignment = GGUF_DEFAULT_ALIGNMENT;
	if ((align = gguf_find(f, "general.alignment")) != NULL)
	{
		if (align->type != GGUF_U32 || align->u == 0 || (align->u & (align->u - 1)) != 0 ||
			align->u > (1u << 20))
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF general.alignment must be a u32 power of two");
		f->alignment = (uint32_t) align->u;
	}
	return PEFT_OK;
}

/* One tensor info: name, dimensions, type, offset (the data is placed later). */
static PeftCode
read_tensor_info(Cursor *c, GgufTensor *t, uint64_t *offset, PeftError *err)
{
	uint64_t	ndim, type, dim;
	int			values, bytes;
	PeftCode	rc;

	if ((rc = read_name(c, &t->name, "tensor name", err)) != PEFT_OK ||
		(rc = read_uint(c, 4, &ndim, "a tensor's dimensions", err)) != PEFT_OK)
		return rc;
	if (ndim < 1 || ndim > GGUF_MAX_DIMS)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensor \"%s\" has %llu dimensions (1 to %d)",
						 t->name, (unsigned long long) ndim, GGUF_MAX_DIMS);
	t->ndim = (int) ndim;
	t->nelem = 1;
	for (int d = 0; d < t->ndim; d++)
	{
		if ((rc = read_uint(c, 8, &dim, "a tensor's dimensions", err)) != PEFT_OK)
			return rc;
		if (dim == 0 || dim > ((uint64_t) 1 << 40) || t->nelem > (((uint64_t) 1 << 48) / dim))
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensor \"%s\" has a dimension of %llu",
							 t->name, (unsigned long long) dim);
		t->dims[d] = (int64_t) dim;
		t->nelem *= dim;
	}
	if ((rc = read_uint(c, 4, &type, "a tensor's type", err)) != PEFT_OK ||
		(rc = read_uint(c, 8, offset, "a tensor's offset", err)) != PEFT_OK)
		return rc;
	if (!gguf_type_layout((uint32_t) type, &values, &bytes))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "GGUF tensor \"%s\" has type %llu, which peft does not read",
						 t->name, (unsigned long long) type);
	t->type = (GgmlType) type;
	if (t->dims[0] % values != 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensor \"%s\": rows of %lld values do not fill %s blocks of %d",
						 t->name, (long long) t->dims[0], gguf_type_name(t->type), values);
	t->nbytes = t->nelem / values * bytes;
	return PEFT_OK;
}

/* The tensor infos and their data: aligned, inside the file, not overlapping, names unique. */
static PeftCode
read_tensors(Cursor *c, GgufFile *f, uint64_t ntensors, PeftError *err)
{
	uint64_t   *offsets = calloc(ntensors ? ntensors : 1, sizeof(uint64_t));
	GgufTensor **order = calloc(ntensors ? ntensors : 1, sizeof(GgufTensor *));
	size_t		data_start;
	PeftCode	rc = PEFT_OK;

	if (offsets == NULL || order == NULL ||
		(f->tensors = calloc(ntensors ? ntensors : 1, sizeof(GgufTensor))) == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading GGUF tensors");
	for (uint64_t k = 0; rc == PEFT_OK && k < ntensors; k++)
	{
		rc = read_tensor_info(c, &f->tensors[k], &offsets[k], err);
		f->ntensors = (int) k + 1;
	}
	data_start = (c->pos + f->alignment - 1) / f->alignment * f->alignment;
	for (int k = 0; rc == PEFT_OK && k < f->ntensors; k++)
	{
		GgufTensor *t = &f->tensors[k];

		if (offsets[k] % f->alignment != 0 || data_start > f->size ||
			offsets[k] > f->size - data_start || t->nbytes > f->size - data_start - offsets[k])
			rc = peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensor \"%s\": offset %llu (%llu bytes) is misaligned "
						   "or outside the file", t->name, (unsigned long long) offsets[k],
						   (unsigned long long) t->nbytes);
		else
			t->data = f->base + data_start + offsets[k];
		order[k] = t;
	}
	if (rc == PEFT_OK)
	{
		qsort(order, f->ntensors, sizeof(GgufTensor *), by_data);
		for (int k = 1; rc == PEFT_OK && k < f->ntensors; k++)
			if (order[k - 1]->data + order[k - 1]->nbytes > order[k]->data)
				rc = peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensors \"%s\" and \"%s\" overlap",
							   order[k - 1]->name, order[k]->name);
	}
	if (rc == PEFT_OK)
	{
		qsort(f->tensors, f->ntensors, sizeof(GgufTensor), by_name);
		for (int k = 1; rc == PEFT_OK && k < f->ntensors; k++)
			if (strcmp(f->tensors[k - 1].name, f->tensors[k].name) == 0)
				rc = peft_fail(err, PEFT_ERR_FORMAT, "GGUF tensor \"%s\" appears twice", f->tensors[k].name);
	}
	free(offsets);
	free(order);
	return rc;
}

/* Validate an in-memory buffer (not copied: it must outlive the GgufFile). */
PeftCode
gguf_open_buffer(const uint8_t *buf, size_t len, GgufFile **out, PeftError *err)
{
	GgufFile   *f = calloc(1, sizeof(GgufFile));
	Cursor		c = {.base = buf, .size = len, .pos = 0};
	uint64_t	ntensors = 0, nkv = 0;
	PeftCode	rc;

	*out = NULL;
	if (f == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory opening a GGUF file");
	f->base = buf;
	f->size = len;
	if ((rc = read_header(&c, f, &ntensors, &nkv, err)) != PEFT_OK ||
		(rc = read_kvs(&c, f, nkv, err)) != PEFT_OK ||
		(rc = read_tensors(&c, f, ntensors, err)) != PEFT_OK)
	{
		gguf_close(f);
		return rc;
	}
	*out = f;
	return PEFT_OK;
}

/* Map path read-only and validate it completely. */
PeftCode
gguf_open_file(const char *path, GgufFile **out, PeftError *err)
{
	char		label[GGUF_LABEL_LEN];
	const uint8_t *map;
	size_t		size;
	PeftCode	rc;

	*out = NULL;
	snprintf(label, sizeof(label), "GGUF file \"%s\"", path);
	/* the header: magic, version and two counts */
	if ((rc = file_map(path, label, 24, "GGUF file", &map, &size, err)) != PEFT_OK)
		return rc;
	if ((rc = gguf_open_buffer(map, size, out, err)) != PEFT_OK)
	{
		file_unmap(map, size);
		return rc;
	}
	(*out)->mapped = true;
	return PEFT_OK;
}

/* Unmap / free.  NULL is allowed. */
void
gguf_close(GgufFile *file)
{
	if (file == NULL)
		return;
	for (int k = 0; k < file->nkv; k++)
		free(file->kvs[k].key);
	for (int k = 0; k < file->ntensors; k++)
		free(file->tensors[k].name);
	free(file->kvs);
	free(file->tensors);
	if (file->mapped)
		file_unmap(file->base, file->size);
	free(file);
}

/* The value of key, or NULL. */
const GgufValue *
gguf_find(const GgufFile *file, const char *key)
{
	GgufKv		probe = {.key = (char *) key};
	const GgufKv *kv = bsearch(&probe, file->kvs, file->nkv, sizeof(GgufKv), by_key);

	return kv ? &kv->value : NULL;
}

/* A tensor by exact name, or NULL. */
const GgufTensor *
gguf_find_tensor(const GgufFile *file, const char *name)
{
	GgufTensor	probe = {.name = (char *) name};

	return bsearch(&probe, file->tensors, file->ntensors, sizeof(GgufTensor), by_name);
}

/* An unsigned integer value of any width (or a non-negative signed one); error naming key otherwise. */
PeftCode
gguf_get_uint(const GgufFile *file, const char *key, uint64_t *out, PeftError *err)
{
	const GgufValue *v = gguf_find(file, key);
	bool		is_unsigned = v && (v->type == GGUF_U8 || v->type == GGUF_U16 ||
									v->type == GGUF_U32 || v->type == GGUF_U64);
	bool		is_signed = v && (v->type == GGUF_I8 || v->type == GGUF_I16 ||
								  v->type == GGUF_I32 || v->type == GGUF_I64);

	if (!is_unsigned && !(is_signed && v->i >= 0))
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF key %s is %s", key,
						 v ? "not a non-negative integer" : "missing");
	*out = is_unsigned ? v->u : (uint64_t) v->i;
	return PEFT_OK;
}

/* A string value as a NUL-terminated copy the caller frees; error naming key otherwise. */
PeftCode
gguf_get_string(const GgufFile *file, const char *key, char **out, PeftError *err)
{
	const GgufValue *v = gguf_find(file, key);

	if (v == NULL || v->type != GGUF_STRING)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF key %s is %s", key, v ? "not a string" : "missing");
	if ((*out = strndup(v->str, v->len)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading GGUF key %s", key);
	return PEFT_OK;
}
