/*
 * gguf_writer.c - a GGUF version 3 file built in memory (gguf_writer.h).
 *
 * The key/values and the tensor data are collected as they are added (the
 * counts and the tensor infos, which come first in the file, are known
 * only at the end); gguf_writer_finish lays them out.  Every number is
 * written byte by byte, little-endian, whatever the host's order.
 */
#include "gguf_writer.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

/* A growing byte buffer. */
typedef struct ByteBuf
{
	uint8_t    *data;
	size_t		len;
	size_t		cap;
} ByteBuf;

typedef struct WriterTensor
{
	char	   *name;
	int			ndim;
	int64_t		dims[GGUF_MAX_DIMS];
	uint64_t	offset;			/* in the data section */
} WriterTensor;

struct GgufWriter
{
	ByteBuf		kv;				/* the encoded key/values */
	char	  **keys;			/* for the duplicate check */
	int			nkeys;
	int			cap_keys;
	WriterTensor *tensors;
	int			ntensors;
	int			cap_tensors;
	ByteBuf		data;			/* the tensors' data, each padded */
};

/* Make room for n more bytes. */
static bool
buf_reserve(ByteBuf *b, size_t n)
{
	size_t		cap;
	uint8_t    *p;

	if (n <= b->cap - b->len)
		return true;
	if (n > SIZE_MAX / 2 - b->len)
		return false;
	cap = b->cap ? b->cap : 256;
	while (cap - b->len < n)
		cap *= 2;
	if ((p = realloc(b->data, cap)) == NULL)
		return false;
	b->data = p;
	b->cap = cap;
	return true;
}

static bool
buf_put(ByteBuf *b, const void *src, size_t n)
{
	if (!buf_reserve(b, n))
		return false;
	if (n > 0)
		memcpy(b->data + b->len, src, n);
	b->len += n;
	return true;
}

/* n zero bytes. */
static bool
buf_zeros(ByteBuf *b, size_t n)
{
	if (!buf_reserve(b, n))
		return false;
	memset(b->data + b->len, 0, n);
	b->len += n;
	return true;
}

/* An unsigned integer of size bytes, little-endian. */
static bool
buf_uint(ByteBuf *b, uint64_t v, int size)
{
	uint8_t		bytes[8];

	for (int i = 0; i < size; i++)
		bytes[i] = (uint8_t) (v >> (8 * i));
	return buf_put(b, bytes, size);
}

/* A GGUF string: u64 length, the bytes (no NUL). */
static bool
buf_string(ByteBuf *b, const char *s)
{
	size_t		n = strlen(s);

	return buf_uint(b, n, 8) && buf_put(b, s, n);
}

/* The bits of a float, as the file holds them. */
static uint32_t
float_bits(float f)
{
	uint32_t	u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

/* Padding that brings n to a multiple of GGUF_DEFAULT_ALIGNMENT. */
static size_t
padding(size_t n)
{
	return (GGUF_DEFAULT_ALIGNMENT - n % GGUF_DEFAULT_ALIGNMENT) % GGUF_DEFAULT_ALIGNMENT;
}

GgufWriter *
gguf_writer_create(void)
{
	return calloc(1, sizeof(GgufWriter));
}

void
gguf_writer_free(GgufWriter *w)
{
	if (w == NULL)
		return;
	for (int i = 0; i < w->nkeys; i++)
		free(w->keys[i]);
	for (int i = 0; i < w->ntensors; i++)
		free(w->tensors[i].name);
	free(w->keys);
	free(w->tensors);
	free(w->kv.data);
	free(w->data.data);
	free(w);
}

/* Check and record a new key, then write it and the value's type. */
static PeftCode
begin_kv(GgufWriter *w, const char *key, GgufValueType type, PeftError *err)
{
	if (key == NULL || key[0] == '\0')
		return peft_fail(err, PEFT_ERR_INVALID, "a GGUF metadata key must not be empty");
	for (int i = 0; i < w->nkeys; i++)
		if (strcmp(w->keys[i], key) == 0)
			return peft_fail(err, PEFT_ERR_INVALID, "GGUF metadata key \"%s\" is added twice", key);
	if (w->nkeys == w->cap_keys)
	{
		int			cap = w->cap_keys ? w->cap_keys * 2 : 16;
		char	  **keys = realloc(w->keys, sizeof(char *) * cap);

		if (keys == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF metadata");
		w->keys = keys;
		w->cap_keys = cap;
	}
	if ((w->keys[w->nkeys] = strdup(key)) == NULL ||
		!buf_string(&w->kv, key) || !buf_uint(&w->kv, type, 4))
	{
		free(w->keys[w->nkeys]);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF metadata");
	}
	w->nkeys++;
	return PEFT_OK;
}

PeftCode
gguf_writer_add_string(GgufWriter *w, const char *key, const char *value, PeftError *err)
{
	PeftCode	rc;

	if (value == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "GGUF metadata key \"%s\" has no value", key);
	if ((rc = begin_kv(w, key, GGUF_STRING, err)) != PEFT_OK)
		return rc;
	if (!buf_string(&w->kv, value))
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF metadata");
	return PEFT_OK;
}

PeftCode
gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t value, PeftError *err)
{
	PeftCode	rc;

	if ((rc = begin_kv(w, key, GGUF_U32, err)) != PEFT_OK)
		return rc;
	if (!buf_uint(&w->kv, value, 4))
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF metadata");
	return PEFT_OK;
}

PeftCode
gguf_writer_add_f32(GgufWriter *w, const char *key, float value, PeftError *err)
{
	PeftCode	rc;

	if ((rc = begin_kv(w, key, GGUF_F32, err)) != PEFT_OK)
		return rc;
	if (!buf_uint(&w->kv, float_bits(value), 4))
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF metadata");
	return PEFT_OK;
}

PeftCode
gguf_writer_add_tensor_f32(GgufWriter *w, const char *name, int ndim, const int64_t *dims,
						   const float *data, PeftError *err)
{
	WriterTensor *t;
	uint64_t	count = 1;
	size_t		name_len = name ? strlen(name) : 0;

	if (name_len == 0 || name_len > GGUF_WRITER_MAX_NAME)
		return peft_fail(err, PEFT_ERR_INVALID, "a GGUF tensor name has 1 to %d bytes, not %zu",
						 GGUF_WRITER_MAX_NAME, name_len);
	if (ndim < 1 || ndim > GGUF_MAX_DIMS)
		return peft_fail(err, PEFT_ERR_INVALID, "GGUF tensor \"%s\" has %d dimensions (1 to %d)",
						 name, ndim, GGUF_MAX_DIMS);
	for (int d = 0; d < ndim; d++)
	{
		if (dims[d] < 1 || (uint64_t) dims[d] > (SIZE_MAX / sizeof(float)) / count)
			return peft_fail(err, PEFT_ERR_INVALID, "GGUF tensor \"%s\": dimension %d is %lld",
							 name, d, (long long) dims[d]);
		count *= (uint64_t) dims[d];
	}
	for (int i = 0; i < w->ntensors; i++)
		if (strcmp(w->tensors[i].name, name) == 0)
			return peft_fail(err, PEFT_ERR_INVALID, "GGUF tensor \"%s\" is added twice", name);
	if (w->ntensors == w->cap_tensors)
	{
		int			cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
		WriterTensor *grown = realloc(w->tensors, sizeof(WriterTensor) * cap);

		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF tensors");
		w->tensors = grown;
		w->cap_tensors = cap;
	}
	t = &w->tensors[w->ntensors];
	memset(t, 0, sizeof(*t));
	t->ndim = ndim;
	memcpy(t->dims, dims, sizeof(int64_t) * ndim);
	t->offset = w->data.len;	/* a multiple of the alignment: every tensor is padded */
	if ((t->name = strdup(name)) == NULL ||
		!buf_reserve(&w->data, (size_t) count * sizeof(float) + GGUF_DEFAULT_ALIGNMENT))
	{
		free(t->name);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing GGUF tensor \"%s\"", name);
	}
	for (uint64_t i = 0; i < count; i++)
		buf_uint(&w->data, float_bits(data[i]), 4);		/* room was reserved */
	buf_zeros(&w->data, padding(w->data.len));
	w->ntensors++;
	return PEFT_OK;
}

PeftCode
gguf_writer_finish(const GgufWriter *w, uint8_t **out, size_t *len, PeftError *err)
{
	ByteBuf		f = {0};
	bool		ok;

	*out = NULL;
	*len = 0;
	ok = buf_put(&f, "GGUF", 4) && buf_uint(&f, GGUF_WRITER_VERSION, 4) &&
		buf_uint(&f, (uint64_t) w->ntensors, 8) && buf_uint(&f, (uint64_t) w->nkeys, 8) &&
		buf_put(&f, w->kv.data, w->kv.len);
	for (int i = 0; ok && i < w->ntensors; i++)
	{
		const WriterTensor *t = &w->tensors[i];

		ok = buf_string(&f, t->name) && buf_uint(&f, (uint64_t) t->ndim, 4);
		for (int d = 0; ok && d < t->ndim; d++)
			ok = buf_uint(&f, (uint64_t) t->dims[d], 8);
		ok = ok && buf_uint(&f, GGML_F32, 4) && buf_uint(&f, t->offset, 8);
	}
	ok = ok && buf_zeros(&f, padding(f.len)) && buf_put(&f, w->data.data, w->data.len);
	if (!ok)
	{
		free(f.data);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory writing a GGUF file");
	}
	*out = f.data;
	*len = f.len;
	return PEFT_OK;
}
