/*
 * fuzz_gguf.c - libFuzzer harness for the GGUF reader (src/engine/formats/gguf.c):
 * the input is a whole GGUF file.
 *
 * gguf_open_buffer validates it; when it is accepted, everything the
 * reader handed out is checked against the input's bounds and against
 * itself: every key is looked up and read through gguf_get_uint and
 * gguf_get_string (which must accept exactly the types they document),
 * every array is walked element by element (nested ones too), every
 * tensor is looked up by name, its size recomputed from its type's block
 * layout and each of its bytes read, and the tensors must be aligned and
 * must not overlap.  A tokenizer.chat_template value then goes where the
 * generation code sends it, chat_template_detect, and a template it
 * recognises renders a short conversation.  The input ends at an
 * inaccessible page, so a read past it faults even where the sanitizers do
 * not look.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "fuzz_common.h"
#include "gguf.h"

/* The input's bounds, for the checks below. */
static const uint8_t *input_begin;
static const uint8_t *input_end;

/* Whether [p, p + n) lies inside the input. */
static bool
inside(const uint8_t *p, uint64_t n)
{
	return p >= input_begin && p <= input_end && n <= (uint64_t) (input_end - p);
}

/* Little-endian u64 at p (inside the input: checked by the caller). */
static uint64_t
le64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int k = 7; k >= 0; k--)
		v = (v << 8) | p[k];
	return v;
}

/* Bytes of one scalar value type; 0 for STRING and ARRAY. */
static int
scalar_bytes(GgufValueType type)
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
	FUZZ_CHECK(!"a value type the reader should have refused");
	return -1;
}

/*
 * Walk the encoded elements of an array of elem_type starting at p, as a
 * consumer would, every read inside the input; returns the end.  The reader
 * accepted the file, so each element must be well formed.
 */
static const uint8_t *
walk_array(const uint8_t *p, GgufValueType elem_type, uint64_t count, int depth, uint64_t *sum)
{
	int			bytes = scalar_bytes(elem_type);

	FUZZ_CHECK(depth < GGUF_MAX_ARRAY_DEPTH);
	if (bytes > 0)
	{
		FUZZ_CHECK(count <= (uint64_t) (input_end - input_begin));
		FUZZ_CHECK(inside(p, count * (uint64_t) bytes));
		for (uint64_t k = 0; k < count * (uint64_t) bytes; k++)
			*sum += p[k];
		if (elem_type == GGUF_BOOL)
			for (uint64_t k = 0; k < count; k++)
				FUZZ_CHECK(p[k] <= 1);
		return p + count * (uint64_t) bytes;
	}
	for (uint64_t k = 0; k < count; k++)
	{
		if (elem_type == GGUF_STRING)
		{
			uint64_t	len;

			FUZZ_CHECK(inside(p, 8));
			len = le64(p);
			FUZZ_CHECK(inside(p + 8, len));
			if (len > 0)
				*sum += p[8] + p[8 + len - 1];
			p += 8 + len;
		}
		else
		{
			uint64_t	inner_type, inner_count;

			FUZZ_CHECK(inside(p, 12));
			inner_type = p[0] | (p[1] << 8) | (p[2] << 16) | ((uint64_t) p[3] << 24);
			inner_count = le64(p + 4);
			FUZZ_CHECK(inner_type <= GGUF_F64);
			p = walk_array(p + 12, (GgufValueType) inner_type, inner_count, depth + 1, sum);
		}
	}
	return p;
}

/* Every key: found, read as an integer and as a string exactly when its type allows. */
static void
check_keys(const GgufFile *f)
{
	uint64_t	sum = 0;

	FUZZ_CHECK(f->nkv >= 0 && (f->nkv == 0 || f->kvs != NULL));
	for (int k = 0; k < f->nkv; k++)
	{
		const GgufKv *kv = &f->kvs[k];
		const GgufValue *v = &kv->value;
		size_t		keylen;
		uint64_t	u = 0;
		char	   *s = NULL;
		PeftError	err = {0};
		bool		is_unsigned = v->type == GGUF_U8 || v->type == GGUF_U16 ||
			v->type == GGUF_U32 || v->type == GGUF_U64;
		bool		is_signed = v->type == GGUF_I8 || v->type == GGUF_I16 ||
			v->type == GGUF_I32 || v->type == GGUF_I64;
		PeftCode	rc;

		FUZZ_CHECK(kv->key != NULL);
		keylen = strlen(kv->key);
		FUZZ_CHECK(keylen >= 1 && keylen <= 4096);
		if (k > 0)
			FUZZ_CHECK(strcmp(f->kvs[k - 1].key, kv->key) < 0);
		FUZZ_CHECK(gguf_find(f, kv->key) == v);

		rc = gguf_get_uint(f, kv->key, &u, &err);
		if (is_unsigned || (is_signed && v->i >= 0))
			FUZZ_CHECK(rc == PEFT_OK && u == (is_unsigned ? v->u : (uint64_t) v->i));
		else
			FUZZ_CHECK(rc == PEFT_ERR_FORMAT && strstr(err.message, kv->key) != NULL);

		rc = gguf_get_string(f, kv->key, &s, &err);
		if (v->type == GGUF_STRING)
		{
			/* the copy stops at a NUL inside the value, as strndup does */
			FUZZ_CHECK(rc == PEFT_OK && s != NULL);
			FUZZ_CHECK(inside((const uint8_t *) v->str, v->len));
			FUZZ_CHECK(strlen(s) <= v->len && memcmp(s, v->str, strlen(s)) == 0);
			FUZZ_CHECK(strlen(s) == v->len || v->str[strlen(s)] == '\0');
			free(s);
		}
		else
			FUZZ_CHECK(rc == PEFT_ERR_FORMAT && err.message[0] != '\0');

		if (v->type == GGUF_BOOL)
			FUZZ_CHECK(v->u <= 1);
		if (v->type == GGUF_ARRAY)
		{
			FUZZ_CHECK(v->elem_type <= GGUF_F64);
			walk_array(v->elems, v->elem_type, v->count, 0, &sum);
		}
	}
	/* sum keeps the walks from being optimized away */
	FUZZ_CHECK(sum != UINT64_MAX);
}

/* qsort comparator: tensors by data address. */
static int
by_address(const void *a, const void *b)
{
	const uint8_t *x = (*(const GgufTensor *const *) a)->data;
	const uint8_t *y = (*(const GgufTensor *const *) b)->data;

	return (x > y) - (x < y);
}

/* Every tensor: found by name, its size from its layout, inside the input, aligned, not overlapping another. */
static void
check_tensors(const GgufFile *f)
{
	const GgufTensor **order;
	uint64_t	sum = 0;

	FUZZ_CHECK(f->ntensors >= 0 && (f->ntensors == 0 || f->tensors != NULL));
	order = malloc(sizeof(*order) * (size_t) (f->ntensors > 0 ? f->ntensors : 1));
	FUZZ_CHECK(order != NULL);
	for (int k = 0; k < f->ntensors; k++)
	{
		const GgufTensor *t = &f->tensors[k];
		int			values = 0,
					bytes = 0;
		uint64_t	n = 1;
		size_t		namelen;

		FUZZ_CHECK(t->name != NULL);
		namelen = strlen(t->name);
		FUZZ_CHECK(namelen >= 1 && namelen <= 4096);
		if (k > 0)
			FUZZ_CHECK(strcmp(f->tensors[k - 1].name, t->name) < 0);
		FUZZ_CHECK(gguf_find_tensor(f, t->name) == t);
		FUZZ_CHECK(t->ndim >= 1 && t->ndim <= GGUF_MAX_DIMS);
		for (int d = 0; d < t->ndim; d++)
		{
			FUZZ_CHECK(t->dims[d] > 0);
			n *= (uint64_t) t->dims[d];
		}
		FUZZ_CHECK(n == t->nelem);
		FUZZ_CHECK(gguf_type_layout(t->type, &values, &bytes));
		FUZZ_CHECK(strcmp(gguf_type_name(t->type), "unknown") != 0);
		FUZZ_CHECK(t->dims[0] % values == 0);
		FUZZ_CHECK(t->nbytes == t->nelem / (uint64_t) values * (uint64_t) bytes);
		FUZZ_CHECK(inside(t->data, t->nbytes));
		/* the data starts at a multiple of the alignment, each offset too */
		FUZZ_CHECK((size_t) (t->data - f->base) % f->alignment == 0);
		for (uint64_t b = 0; b < t->nbytes; b++)
			sum += t->data[b];
		order[k] = t;
	}
	qsort(order, (size_t) f->ntensors, sizeof(*order), by_address);
	for (int k = 1; k < f->ntensors; k++)
		FUZZ_CHECK(order[k - 1]->data + order[k - 1]->nbytes <= order[k]->data);
	FUZZ_CHECK(sum != UINT64_MAX);
	free(order);
}

/* The file's chat template, as the generation code reads it: recognised or refused, and rendered when recognised. */
static void
check_chat_template(const GgufFile *f)
{
	static const ChatMessage msgs[] = {{CHAT_ROLE_USER, " hello "}, {CHAT_ROLE_ASSISTANT, "hi"},
	{CHAT_ROLE_USER, "bye"}};
	char	   *jinja = NULL;
	char	   *text = NULL;
	ChatTemplate t;
	PeftError	err = {0};
	PeftCode	rc;

	if (gguf_get_string(f, "tokenizer.chat_template", &jinja, &err) != PEFT_OK)
		return;
	rc = chat_template_detect(jinja, NULL, &t, &err);
	if (rc != PEFT_OK)
	{
		FUZZ_CHECK(rc == PEFT_ERR_INVALID && err.message[0] != '\0' && t.kind == CHAT_TEMPLATE_RAW &&
				   t.default_system == NULL && t.bos == NULL);
		free(jinja);
		return;
	}
	FUZZ_CHECK(t.kind == CHAT_TEMPLATE_CHATML || t.kind == CHAT_TEMPLATE_LLAMA3);
	FUZZ_CHECK(t.stop != NULL && t.name != NULL);
	FUZZ_CHECK(chat_template_render(&t, msgs, 3, true, &text, &err) == PEFT_OK);
	FUZZ_CHECK(strncmp(text, t.kind == CHAT_TEMPLATE_CHATML ? "<|im_start|>" : "<|begin_of_text|>", 12) == 0);
	FUZZ_CHECK(strstr(text, "bye") != NULL);
	free(text);
	chat_template_free(&t);
	free(jinja);
}

/* libFuzzer entry point: the input is a GGUF file. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	GgufFile   *f = NULL;
	PeftError	err = {0};
	const GgufValue *align;
	uint64_t	u;

	data = fuzz_guarded_copy(0, data, size);
	input_begin = data;
	input_end = data + size;
	if (gguf_open_buffer(data, size, &f, &err) != PEFT_OK)
	{
		FUZZ_CHECK(f == NULL && err.code != PEFT_OK && err.message[0] != '\0');
		return 0;
	}
	FUZZ_CHECK(f->base == data && f->size == size && !f->mapped);
	FUZZ_CHECK(f->version == 2 || f->version == 3);
	FUZZ_CHECK(f->alignment > 0 && (f->alignment & (f->alignment - 1)) == 0);
	align = gguf_find(f, "general.alignment");
	FUZZ_CHECK(align == NULL ? f->alignment == GGUF_DEFAULT_ALIGNMENT :
			   align->type == GGUF_U32 && align->u == f->alignment);
	check_keys(f);
	check_tensors(f);
	check_chat_template(f);
	FUZZ_CHECK(gguf_find(f, "no such key \x01") == NULL);
	FUZZ_CHECK(gguf_find_tensor(f, "no such tensor \x01") == NULL);
	FUZZ_CHECK(gguf_get_uint(f, "no such key \x01", &u, &err) == PEFT_ERR_FORMAT);
	gguf_close(f);
	return 0;
}
