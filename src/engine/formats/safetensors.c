/*
 * safetensors.c - read (memory-mapped, fully validated) and write the
 * safetensors format.
 *
 * Reading checks everything before a single tensor is handed out: the
 * header length, UTF-8, the JSON structure, dtypes, shapes (with overflow
 * checks), offsets inside the data area, and that no two tensors share
 * bytes.  Adapter weights come from a bytea that any user can write, so a
 * malformed buffer must end in an error, never in a crash or a read past
 * the end of the buffer.
 */
#include "safetensors.h"
#include "file_map.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Integers above 2^53 do not survive the trip through a JSON double. */
#define ST_MAX_JSON_INTEGER 9007199254740992.0

/* Label length for messages: enough for a path, cut beyond that. */
#define ST_LABEL_LEN 320

typedef struct DtypeInfo
{
	StDtype		dtype;
	const char *name;
	size_t		size;
} DtypeInfo;

static const DtypeInfo dtype_table[] = {
	{ST_F64, "F64", 8},
	{ST_F32, "F32", 4},
	{ST_F16, "F16", 2},
	{ST_BF16, "BF16", 2},
	{ST_I64, "I64", 8},
	{ST_I32, "I32", 4},
	{ST_I16, "I16", 2},
	{ST_I8, "I8", 1},
	{ST_U8, "U8", 1},
	{ST_BOOL, "BOOL", 1},
};

#define N_DTYPES ((int) (sizeof(dtype_table) / sizeof(dtype_table[0])))

/*
 * Dtypes the format defines but the engine cannot use: a file holding them
 * is well formed, so it is refused as unsupported rather than malformed.
 */
static const char *const unsupported_dtypes[] = {
	"U16", "U32", "U64", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3",
	"F6_E3M2", "F4",
};

/* Where a tensor's bytes lie, for the overlap check. */
typedef struct TensorSpan
{
	uint64_t	begin;
	uint64_t	end;
	const StTensor *tensor;
} TensorSpan;

/* A metadata pair, sorted together by key. */
typedef struct MetaPair
{
	char	   *key;
	char	   *value;
} MetaPair;

/* A tensor to write with its element count, sorted by name. */
typedef struct WriteItem
{
	const StWriteTensor *tensor;
	size_t		nelem;
} WriteItem;

/* A growable byte buffer for building the header when writing. */
typedef struct ByteBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		failed;			/* an allocation failed: stop appending */
} ByteBuf;

/* Bytes per element of a dtype. */
size_t
st_dtype_size(StDtype dtype)
{
	for (int i = 0; i < N_DTYPES; i++)
		if (dtype_table[i].dtype == dtype)
			return dtype_table[i].size;
	return 0;
}

/* Name of a dtype as the format spells it, e.g. "F32". */
const char *
st_dtype_name(StDtype dtype)
{
	for (int i = 0; i < N_DTYPES; i++)
		if (dtype_table[i].dtype == dtype)
			return dtype_table[i].name;
	return "?";
}

/* Read a little-endian 16-bit value from possibly unaligned bytes. */
static inline uint16_t
load_le16(const uint8_t *p)
{
	return (uint16_t) (p[0] | (p[1] << 8));
}

/* Read a little-endian 32-bit value from possibly unaligned bytes. */
static inline uint32_t
load_le32(const uint8_t *p)
{
	return (uint32_t) p[0] | ((uint32_t) p[1] << 8) |
		((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}

/* Read a little-endian 64-bit value from possibly unaligned bytes. */
static inline uint64_t
load_le64(const uint8_t *p)
{
	return (uint64_t) load_le32(p) | ((uint64_t) load_le32(p + 4) << 32);
}

/* Write a little-endian 32-bit value. */
static inline void
store_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
	p[2] = (uint8_t) (v >> 16);
	p[3] = (uint8_t) (v >> 24);
}

/* Write a little-endian 64-bit value. */
static inline void
store_le64(uint8_t *p, uint64_t v)
{
	store_le32(p, (uint32_t) v);
	store_le32(p + 4, (uint32_t) (v >> 32));
}

/*
 * Check strict UTF-8 (no overlong forms, no surrogates, nothing above
 * U+10FFFF); on failure *bad_at is the offset of the offending sequence.
 */
static bool
utf8_valid(const uint8_t *s, size_t len, size_t *bad_at)
{
	size_t		i = 0;

	while (i < len)
	{
		uint8_t		c = s[i];
		size_t		ncont;
		uint32_t	cp;
		uint32_t	min_cp;

		if (c < 0x80)
		{
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
		{
			ncont = 1;
			cp = c & 0x1F;
			min_cp = 0x80;
		}
		else if ((c & 0xF0) == 0xE0)
		{
			ncont = 2;
			cp = c & 0x0F;
			min_cp = 0x800;
		}
		else if ((c & 0xF8) == 0xF0)
		{
			ncont = 3;
			cp = c & 0x07;
			min_cp = 0x10000;
		}
		else
			goto bad;
		if (len - i <= ncont)
			goto bad;
		for (size_t k = 1; k <= ncont; k++)
		{
			if ((s[i + k] & 0xC0) != 0x80)
				goto bad;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			goto bad;
		i += ncont + 1;
	}
	return true;

bad:
	if (bad_at)
		*bad_at = i;
	return false;
}

/*
 * Find what cJSON would let through inside JSON strings but other readers
 * refuse: the escape \u0000, which cJSON decodes into a C string cut short
 * (so the name we see would differ from the name every other reader sees),
 * and raw control characters, which JSON forbids.  Returns a description of
 * the problem, or NULL.
 */
static const char *
json_string_problem(const char *text, size_t len)
{
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		if (!in_string)
		{
			if (text[i] == '"')
				in_string = true;
			continue;
		}
		if ((unsigned char) text[i] < 0x20)
			return "a control character inside a string";
		if (text[i] == '"')
			in_string = false;
		else if (text[i] == '\\')
		{
			if (i + 5 < len && text[i + 1] == 'u' &&
				memcmp(text + i + 2, "0000", 4) == 0)
				return "the escape \\u0000";
			i++;				/* skip the escaped character */
		}
	}
	return NULL;
}

/* An integer-valued JSON number in [0, 2^53]; false for anything else. */
static bool
json_get_uint(const cJSON *item, uint64_t *out)
{
	double		d;

	if (!cJSON_IsNumber(item))
		return false;
	d = item->valuedouble;
	if (!(d >= 0.0) || d > ST_MAX_JSON_INTEGER || d != floor(d))
		return false;
	*out = (uint64_t) d;
	return true;
}

/*
 * Find member key of a JSON object by exact name.  cJSON keeps duplicate
 * keys, and other readers take the last one while cJSON's lookup takes the
 * first: a duplicate is therefore an error, reported through *duplicate.
 */
static const cJSON *
json_member(const cJSON *object, const char *key, bool *duplicate)
{
	const cJSON *found = NULL;
	const cJSON *child;

	*duplicate = false;
	cJSON_ArrayForEach(child, object)
	{
		if (child->string != NULL && strcmp(child->string, key) == 0)
		{
			if (found != NULL)
				*duplicate = true;
			found = child;
		}
	}
	return found;
}

/* Look a dtype up by its name. */
static bool
dtype_from_name(const char *name, StDtype *out)
{
	for (int i = 0; i < N_DTYPES; i++)
	{
		if (strcmp(dtype_table[i].name, name) == 0)
		{
			*out = dtype_table[i].dtype;
			return true;
		}
	}
	return false;
}

/* True for a dtype the format defines that the engine does not handle. */
static bool
dtype_is_known_unsupported(const char *name)
{
	int			n = (int) (sizeof(unsupported_dtypes) / sizeof(unsupported_dtypes[0]));

	for (int i = 0; i < n; i++)
		if (strcmp(unsupported_dtypes[i], name) == 0)
			return true;
	return false;
}

/* Order tensors by name (byte order, which for UTF-8 is code point order). */
static int
compare_tensor_names(const void *a, const void *b)
{
	return strcmp(((const StTensor *) a)->name, ((const StTensor *) b)->name);
}

/* Order spans by begin offset, then end. */
static int
compare_spans(const void *a, const void *b)
{
	const TensorSpan *x = a;
	const TensorSpan *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

/* Order metadata pairs by key. */
static int
compare_meta_pairs(const void *a, const void *b)
{
	return strcmp(((const MetaPair *) a)->key, ((const MetaPair *) b)->key);
}

/* Read a tensor's "dtype" member into t->dtype. */
static PeftCode
parse_tensor_dtype(const cJSON *dtype_item, const char *name,
				   const char *label, StTensor *t, PeftError *err)
{
	if (dtype_item == NULL || !cJSON_IsString(dtype_item))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": \"dtype\" is missing or not a string",
						 label, name);
	if (!dtype_from_name(dtype_item->valuestring, &t->dtype))
	{
		if (dtype_is_known_unsupported(dtype_item->valuestring))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "%s: tensor \"%s\": dtype %s is not supported",
							 label, name, dtype_item->valuestring);
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": unknown dtype \"%s\"",
						 label, name, dtype_item->valuestring);
	}
	return PEFT_OK;
}

/*
 * Read a tensor's "shape" member into t->shape and t->ndim, and its
 * element count into *nelem: each dimension a non-negative integer, the
 * product without overflow.
 */
static PeftCode
parse_tensor_shape(const cJSON *shape_item, const char *name,
				   const char *label, StTensor *t, size_t *nelem,
				   PeftError *err)
{
	const cJSON *dim;
	int			ndim;

	if (shape_item == NULL || !cJSON_IsArray(shape_item))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": \"shape\" is missing or not an array",
						 label, name);
	ndim = cJSON_GetArraySize(shape_item);
	if (ndim > ST_MAX_DIMS)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": %d dimensions, at most %d allowed",
						 label, name, ndim, ST_MAX_DIMS);
	*nelem = 1;
	t->ndim = 0;
	cJSON_ArrayForEach(dim, shape_item)
	{
		uint64_t	d;

		if (!json_get_uint(dim, &d))
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: tensor \"%s\": shape dimension %d is not a non-negative integer",
							 label, name, t->ndim);
		if (d > SIZE_MAX || __builtin_mul_overflow(*nelem, (size_t) d, nelem))
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: tensor \"%s\": element count overflows",
							 label, name);
		t->shape[t->ndim++] = (int64_t) d;
	}
	return PEFT_OK;
}

/*
 * Read a tensor's "data_offsets" member into *begin and *end: two integers
 * in order, inside the data area of data_len bytes, spanning nbytes.
 */
static PeftCode
parse_tensor_offsets(const cJSON *offsets_item, const char *name,
					 const char *label, StDtype dtype, size_t nbytes,
					 size_t data_len, uint64_t *begin, uint64_t *end,
					 PeftError *err)
{
	if (offsets_item == NULL || !cJSON_IsArray(offsets_item) ||
		cJSON_GetArraySize(offsets_item) != 2 ||
		!json_get_uint(cJSON_GetArrayItem(offsets_item, 0), begin) ||
		!json_get_uint(cJSON_GetArrayItem(offsets_item, 1), end))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": \"data_offsets\" must be two non-negative integers",
						 label, name);
	if (*begin > *end)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": data_offsets begin %llu is after end %llu",
						 label, name, (unsigned long long) *begin,
						 (unsigned long long) *end);
	if (*end > data_len)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": data_offsets end %llu is past the %zu bytes of tensor data",
						 label, name, (unsigned long long) *end, data_len);
	if (*end - *begin != nbytes)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": data_offsets span %llu bytes but %s shape needs %zu",
						 label, name, (unsigned long long) (*end - *begin),
						 st_dtype_name(dtype), nbytes);
	return PEFT_OK;
}

/*
 * Validate one tensor entry of the header and fill *t; its bytes must lie
 * within the data area of data_len bytes.  *begin and *end get the offsets.
 */
static PeftCode
parse_tensor_entry(const cJSON *entry, const char *name, const uint8_t *data,
				   size_t data_len, const char *label, StTensor *t,
				   uint64_t *begin, uint64_t *end, PeftError *err)
{
	const cJSON *dtype_item;
	const cJSON *shape_item;
	const cJSON *offsets_item;
	bool		dup_dtype;
	bool		dup_shape;
	bool		dup_offsets;
	size_t		nelem = 0;
	size_t		nbytes;
	PeftCode	code;

	if (!cJSON_IsObject(entry))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": entry is not a JSON object",
						 label, name);
	dtype_item = json_member(entry, "dtype", &dup_dtype);
	shape_item = json_member(entry, "shape", &dup_shape);
	offsets_item = json_member(entry, "data_offsets", &dup_offsets);
	if (dup_dtype || dup_shape || dup_offsets)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": key \"%s\" appears more than once",
						 label, name,
						 dup_dtype ? "dtype" : dup_shape ? "shape" : "data_offsets");

	if ((code = parse_tensor_dtype(dtype_item, name, label, t, err)) != PEFT_OK ||
		(code = parse_tensor_shape(shape_item, name, label, t, &nelem, err)) != PEFT_OK)
		return code;
	if (__builtin_mul_overflow(nelem, st_dtype_size(t->dtype), &nbytes))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: tensor \"%s\": byte size overflows", label, name);
	code = parse_tensor_offsets(offsets_item, name, label, t->dtype, nbytes,
								data_len, begin, end, err);
	if (code != PEFT_OK)
		return code;

	t->nelem = nelem;
	t->nbytes = nbytes;
	t->data = data + *begin;
	return PEFT_OK;
}

/* Read the __metadata__ object: string keys to string values. */
static PeftCode
parse_metadata(const cJSON *meta, const char *label, StFile *file,
			   PeftError *err)
{
	const cJSON *child;
	MetaPair   *pairs;
	int			n = cJSON_GetArraySize(meta);
	int			count = 0;
	PeftCode	code = PEFT_OK;

	if (!cJSON_IsObject(meta))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: \"__metadata__\" is not a JSON object", label);
	if (n == 0)
		return PEFT_OK;
	pairs = calloc((size_t) n, sizeof(MetaPair));
	file->meta_keys = calloc((size_t) n, sizeof(char *));
	file->meta_values = calloc((size_t) n, sizeof(char *));
	if (pairs == NULL || file->meta_keys == NULL || file->meta_values == NULL)
	{
		free(pairs);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "%s: out of memory for %d metadata entries", label, n);
	}
	cJSON_ArrayForEach(child, meta)
	{
		if (!cJSON_IsString(child))
		{
			code = peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: metadata value for \"%s\" is not a string",
							 label, child->string);
			goto done;
		}
		pairs[count].key = strdup(child->string);
		pairs[count].value = strdup(child->valuestring);
		count++;
		if (pairs[count - 1].key == NULL || pairs[count - 1].value == NULL)
		{
			code = peft_fail(err, PEFT_ERR_NOMEM,
							 "%s: out of memory for metadata", label);
			goto done;
		}
	}

	/* sorted keys: duplicates show up as neighbours, and lookup can bisect */
	qsort(pairs, (size_t) count, sizeof(MetaPair), compare_meta_pairs);
	for (int i = 1; i < count; i++)
	{
		if (strcmp(pairs[i - 1].key, pairs[i].key) == 0)
		{
			code = peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: metadata key \"%s\" appears more than once",
							 label, pairs[i].key);
			goto done;
		}
	}

done:
	/* hand every allocated string to the file, so st_close frees them all */
	for (int i = 0; i < count; i++)
	{
		file->meta_keys[i] = pairs[i].key;
		file->meta_values[i] = pairs[i].value;
	}
	file->nmeta = count;
	free(pairs);
	return code;
}

/*
 * Check the raw header of base[0..size): an 8-byte length within the limit
 * and the file, then header bytes free of NUL and valid UTF-8.
 */
static PeftCode
check_header_bytes(const uint8_t *base, size_t size, const char *label,
				   uint64_t *header_len, PeftError *err)
{
	size_t		bad_at = 0;

	if (size < 8)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: %zu bytes is too short for a safetensors file",
						 label, size);
	*header_len = load_le64(base);
	if (*header_len > ST_MAX_HEADER)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header length %llu exceeds the limit of %d bytes",
						 label, (unsigned long long) *header_len, ST_MAX_HEADER);
	if (*header_len > size - 8)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header length %llu runs past the end of the %zu-byte file",
						 label, (unsigned long long) *header_len, size);
	if (memchr(base + 8, '\0', (size_t) *header_len) != NULL)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header contains a NUL byte", label);
	if (!utf8_valid(base + 8, (size_t) *header_len, &bad_at))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header is not valid UTF-8 (at byte %zu)",
						 label, bad_at);
	return PEFT_OK;
}

/*
 * Parse the header_len bytes of JSON after the length into *root, a JSON
 * object.  cJSON needs a NUL-terminated string, so it parses a private
 * copy, *header, which the caller frees (on failure too).
 */
static PeftCode
parse_header_json(const uint8_t *base, uint64_t header_len, const char *label,
				  char **header, cJSON **root, PeftError *err)
{
	const char *parse_end = NULL;
	const char *problem;

	*header = malloc((size_t) header_len + 1);
	if (*header == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "%s: out of memory for a %llu-byte header",
						 label, (unsigned long long) header_len);
	memcpy(*header, base + 8, (size_t) header_len);
	(*header)[header_len] = '\0';
	if ((problem = json_string_problem(*header, (size_t) header_len)) != NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: header contains %s",
						 label, problem);
	*root = cJSON_ParseWithOpts(*header, &parse_end, true);
	if (*root == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header is not valid JSON (near byte %zu)", label,
						 parse_end ? (size_t) (parse_end - *header) : (size_t) 0);
	if (!cJSON_IsObject(*root))
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: header is not a JSON object", label);
	return PEFT_OK;
}

/*
 * Fill file's tensors (pointing into data[0..data_len)) and metadata from
 * the header object root, in the header's order; spans[] has room for one
 * per entry.
 */
static PeftCode
parse_header_entries(const cJSON *root, const uint8_t *data, size_t data_len,
					 const char *label, StFile *file, TensorSpan *spans,
					 PeftError *err)
{
	const cJSON *child;
	bool		seen_metadata = false;
	PeftCode	code;

	cJSON_ArrayForEach(child, root)
	{
		StTensor   *t;

		if (strcmp(child->string, "__metadata__") == 0)
		{
			if (seen_metadata)
				return peft_fail(err, PEFT_ERR_FORMAT,
								 "%s: \"__metadata__\" appears more than once",
								 label);
			seen_metadata = true;
			code = parse_metadata(child, label, file, err);
			if (code != PEFT_OK)
				return code;
			continue;
		}
		t = &file->tensors[file->ntensors];
		t->name = strdup(child->string);
		if (t->name == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM,
							 "%s: out of memory for tensor names", label);
		file->ntensors++;
		code = parse_tensor_entry(child, t->name, data, data_len, label, t,
								  &spans[file->ntensors - 1].begin,
								  &spans[file->ntensors - 1].end, err);
		if (code != PEFT_OK)
			return code;
	}
	return PEFT_OK;
}

/*
 * Sort file's tensors by name: duplicates become neighbours, and st_find
 * can bisect.  A name that appears twice is an error.
 */
static PeftCode
sort_tensor_names(StFile *file, const char *label, PeftError *err)
{
	if (file->ntensors > 1)
		qsort(file->tensors, (size_t) file->ntensors, sizeof(StTensor),
			  compare_tensor_names);
	for (int i = 1; i < file->ntensors; i++)
	{
		if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: tensor \"%s\" appears more than once",
							 label, file->tensors[i].name);
	}
	return PEFT_OK;
}

/*
 * Refuse tensors that share bytes of data: fill spans[] (one per tensor)
 * with their offsets, sort them by offset and compare neighbours.
 */
static PeftCode
check_no_overlap(const StFile *file, const uint8_t *data, TensorSpan *spans,
				 const char *label, PeftError *err)
{
	for (int i = 0; i < file->ntensors; i++)
	{
		const StTensor *t = &file->tensors[i];

		spans[i].begin = (uint64_t) (t->data - data);
		spans[i].end = spans[i].begin + t->nbytes;
		spans[i].tensor = t;
	}
	if (file->ntensors > 1)
		qsort(spans, (size_t) file->ntensors, sizeof(TensorSpan), compare_spans);
	for (int i = 1; i < file->ntensors; i++)
	{
		if (spans[i].begin < spans[i - 1].end)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: tensors \"%s\" and \"%s\" overlap",
							 label, spans[i - 1].tensor->name,
							 spans[i].tensor->name);
	}
	return PEFT_OK;
}

/*
 * Validate base[0..size) as a safetensors file and build the StFile.  label
 * says what is being read, for messages.  On failure nothing is kept (the
 * caller unmaps).
 */
static PeftCode
st_parse(const uint8_t *base, size_t size, bool mapped, const char *label,
		 StFile **out, PeftError *err)
{
	StFile	   *file = NULL;
	char	   *header = NULL;
	cJSON	   *root = NULL;
	TensorSpan *spans = NULL;
	uint64_t	header_len = 0;
	const uint8_t *data;
	size_t		data_len;
	int			nentries;
	PeftCode	code;

	*out = NULL;
	code = check_header_bytes(base, size, label, &header_len, err);
	if (code != PEFT_OK)
		return code;
	code = parse_header_json(base, header_len, label, &header, &root, err);
	if (code != PEFT_OK)
		goto fail;

	data = base + 8 + header_len;
	data_len = size - 8 - (size_t) header_len;
	nentries = cJSON_GetArraySize(root);
	file = calloc(1, sizeof(StFile));
	if (file == NULL ||
		(nentries > 0 &&
		 ((file->tensors = calloc((size_t) nentries, sizeof(StTensor))) == NULL ||
		  (spans = calloc((size_t) nentries, sizeof(TensorSpan))) == NULL)))
	{
		code = peft_fail(err, PEFT_ERR_NOMEM,
						 "%s: out of memory for %d tensors", label, nentries);
		goto fail;
	}
	file->base = base;
	file->size = size;
	if ((code = parse_header_entries(root, data, data_len, label, file, spans,
									 err)) != PEFT_OK ||
		(code = sort_tensor_names(file, label, err)) != PEFT_OK ||
		(code = check_no_overlap(file, data, spans, label, err)) != PEFT_OK)
		goto fail;

	free(spans);
	cJSON_Delete(root);
	free(header);
	file->mapped = mapped;
	*out = file;
	return PEFT_OK;

fail:
	free(spans);
	cJSON_Delete(root);
	free(header);
	if (file != NULL)
	{
		file->mapped = false;	/* the caller owns the bytes until success */
		st_close(file);
	}
	return code;
}

/* Map path read-only and validate it completely. */
PeftCode
st_open_file(const char *path, StFile **out, PeftError *err)
{
	char		label[ST_LABEL_LEN];
	const uint8_t *map;
	size_t		size;
	PeftCode	code;

	*out = NULL;
	snprintf(label, sizeof(label), "safetensors file \"%s\"", path);
	if ((code = file_map(path, label, 8, "safetensors file", &map, &size, err)) != PEFT_OK)
		return code;
	code = st_parse(map, size, true, label, out, err);
	if (code != PEFT_OK)
		file_unmap(map, size);
	return code;
}

/* Validate an in-memory buffer (not copied: it must outlive the StFile). */
PeftCode
st_open_buffer(const uint8_t *buf, size_t len, StFile **out, PeftError *err)
{
	if (buf == NULL && len > 0)
	{
		*out = NULL;
		return peft_fail(err, PEFT_ERR_INVALID, "safetensors buffer is NULL");
	}
	return st_parse(buf, len, false, "safetensors data", out, err);
}

/* Unmap / free. NULL is allowed. */
void
st_close(StFile *file)
{
	if (file == NULL)
		return;
	for (int i = 0; i < file->ntensors; i++)
		free(file->tensors[i].name);
	free(file->tensors);
	for (int i = 0; i < file->nmeta; i++)
	{
		free(file->meta_keys[i]);
		free(file->meta_values[i]);
	}
	free(file->meta_keys);
	free(file->meta_values);
	if (file->mapped)
		file_unmap(file->base, file->size);
	free(file);
}

/* Find a tensor by exact name (binary search over sorted names). */
const StTensor *
st_find(const StFile *file, const char *name)
{
	int			lo = 0;
	int			hi;

	if (file == NULL || name == NULL)
		return NULL;
	hi = file->ntensors - 1;
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			cmp = strcmp(name, file->tensors[mid].name);

		if (cmp == 0)
			return &file->tensors[mid];
		if (cmp < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Format a shape as "[384, 384]" into buf. */
static void
format_shape(char *buf, size_t buflen, int ndim, const int64_t *shape)
{
	size_t		used;

	used = (size_t) snprintf(buf, buflen, "[");
	for (int i = 0; i < ndim && used < buflen; i++)
		used += (size_t) snprintf(buf + used, buflen - used, "%s%lld",
								  i > 0 ? ", " : "", (long long) shape[i]);
	if (used < buflen)
		snprintf(buf + used, buflen - used, "]");
}

/*
 * Check that name exists with exactly the given shape, or fail with a
 * message naming the tensor, its shape and the expected one.
 */
PeftCode
st_expect(const StFile *file, const char *name, int ndim,
		  const int64_t *shape, const StTensor **out, PeftError *err)
{
	const StTensor *t = st_find(file, name);
	bool		same;

	if (out)
		*out = NULL;
	if (t == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "tensor \"%s\" is missing", name);
	same = (t->ndim == ndim);
	for (int i = 0; same && i < ndim; i++)
		same = (t->shape[i] == shape[i]);
	if (!same)
	{
		char		have[ST_MAX_DIMS * 24];
		char		want[ST_MAX_DIMS * 24];

		format_shape(have, sizeof(have), t->ndim, t->shape);
		format_shape(want, sizeof(want), ndim < 0 ? 0 :
					 ndim > ST_MAX_DIMS ? ST_MAX_DIMS : ndim, shape);
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "tensor \"%s\" has shape %s, expected %s%s",
						 name, have, want, ndim > ST_MAX_DIMS ? " ..." : "");
	}
	if (out)
		*out = t;
	return PEFT_OK;
}

/*
 * Widen an IEEE half to float: exact for every value, subnormals and
 * signed zero included; infinities stay infinite and NaNs stay NaN.
 */
static inline float
f16_to_float(uint16_t h)
{
	uint32_t	sign = (uint32_t) (h & 0x8000) << 16;
	uint32_t	exponent = (h >> 10) & 0x1F;
	uint32_t	mantissa = h & 0x3FF;
	uint32_t	bits;
	float		f;

	if (exponent == 0)
	{
		/* zero or subnormal: mantissa * 2^-24, exactly representable */
		f = ldexpf((float) mantissa, -24);
		return sign ? -f : f;
	}
	if (exponent == 0x1F)
		bits = sign | 0x7F800000u | (mantissa << 13);
	else
		bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* Widen a bfloat16: it is the top half of a float32. */
static inline float
bf16_to_float(uint16_t h)
{
	uint32_t	bits = (uint32_t) h << 16;
	float		f;

	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* Convert a floating tensor (F64/F32/F16/BF16) to count reals. */
PeftCode
st_to_real(const StTensor *t, real *dst, size_t count, PeftError *err)
{
	const uint8_t *p;

	if (t == NULL || (dst == NULL && count > 0))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_to_real: tensor or destination is NULL");
	if (count != t->nelem)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "tensor \"%s\" has %zu elements, caller expected %zu",
						 t->name, t->nelem, count);
	p = t->data;
	switch (t->dtype)
	{
		case ST_F64:
			for (size_t i = 0; i < count; i++)
			{
				uint64_t	bits = load_le64(p + 8 * i);
				double		d;

				memcpy(&d, &bits, sizeof(d));
				dst[i] = (real) d;
			}
			return PEFT_OK;
		case ST_F32:
			for (size_t i = 0; i < count; i++)
			{
				uint32_t	bits = load_le32(p + 4 * i);
				float		f;

				memcpy(&f, &bits, sizeof(f));
				dst[i] = (real) f;
			}
			return PEFT_OK;
		case ST_F16:
			for (size_t i = 0; i < count; i++)
				dst[i] = (real) f16_to_float(load_le16(p + 2 * i));
			return PEFT_OK;
		case ST_BF16:
			for (size_t i = 0; i < count; i++)
				dst[i] = (real) bf16_to_float(load_le16(p + 2 * i));
			return PEFT_OK;
		default:
			break;
	}
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "tensor \"%s\" has dtype %s, expected a floating-point dtype",
					 t->name, st_dtype_name(t->dtype));
}

/* Make room for n more bytes in a ByteBuf. */
static bool
bytebuf_reserve(ByteBuf *buf, size_t n)
{
	size_t		need;
	size_t		cap;
	char	   *grown;

	if (buf->failed)
		return false;
	if (__builtin_add_overflow(buf->len, n, &need))
	{
		buf->failed = true;
		return false;
	}
	if (need <= buf->cap)
		return true;
	cap = buf->cap ? buf->cap : 256;
	while (cap < need)
	{
		if (__builtin_mul_overflow(cap, 2, &cap))
		{
			buf->failed = true;
			return false;
		}
	}
	grown = realloc(buf->data, cap);
	if (grown == NULL)
	{
		buf->failed = true;
		return false;
	}
	buf->data = grown;
	buf->cap = cap;
	return true;
}

/* Append n bytes. */
static void
bytebuf_append(ByteBuf *buf, const char *s, size_t n)
{
	if (!bytebuf_reserve(buf, n))
		return;
	memcpy(buf->data + buf->len, s, n);
	buf->len += n;
}

/* Append a NUL-terminated string. */
static void
bytebuf_puts(ByteBuf *buf, const char *s)
{
	bytebuf_append(buf, s, strlen(s));
}

/* Append an unsigned integer in decimal (never in exponent form). */
static void
bytebuf_put_u64(ByteBuf *buf, uint64_t v)
{
	char		digits[24];
	int			n = snprintf(digits, sizeof(digits), "%llu", (unsigned long long) v);

	bytebuf_append(buf, digits, (size_t) n);
}

/* Append s as a quoted JSON string, escaping what JSON requires. */
static void
bytebuf_put_json_string(ByteBuf *buf, const char *s)
{
	bytebuf_append(buf, "\"", 1);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		char		esc[8];

		if (*p == '"' || *p == '\\')
		{
			esc[0] = '\\';
			esc[1] = (char) *p;
			bytebuf_append(buf, esc, 2);
		}
		else if (*p < 0x20)
		{
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			bytebuf_append(buf, esc, 6);
		}
		else
			bytebuf_append(buf, (const char *) p, 1);
	}
	bytebuf_append(buf, "\"", 1);
}

/* Check a string to be written: non-NULL and valid UTF-8. */
static PeftCode
check_write_string(const char *s, const char *what, PeftError *err)
{
	if (s == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "st_serialize: %s is NULL", what);
	if (!utf8_valid((const uint8_t *) s, strlen(s), NULL))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: %s \"%s\" is not valid UTF-8", what, s);
	return PEFT_OK;
}

/* Order tensors to write by name. */
static int
compare_write_items(const void *a, const void *b)
{
	return strcmp(((const WriteItem *) a)->tensor->name,
				  ((const WriteItem *) b)->tensor->name);
}

/* Check the metadata to write: valid UTF-8 strings, no key given twice. */
static PeftCode
check_write_metadata(const char *const *meta_keys,
					 const char *const *meta_values, int nmeta, PeftError *err)
{
	PeftCode	code;

	for (int i = 0; i < nmeta; i++)
	{
		if ((code = check_write_string(meta_keys[i], "metadata key", err)) != PEFT_OK ||
			(code = check_write_string(meta_values[i], "metadata value", err)) != PEFT_OK)
			return code;
		for (int j = 0; j < i; j++)
			if (strcmp(meta_keys[i], meta_keys[j]) == 0)
				return peft_fail(err, PEFT_ERR_INVALID,
								 "st_serialize: metadata key \"%s\" given twice",
								 meta_keys[i]);
	}
	return PEFT_OK;
}

/*
 * Check one tensor to write: its name, its shape, a size whose byte
 * offsets a JSON number holds exactly, and data unless it is empty.  Sets
 * *nelem to its element count.
 */
static PeftCode
check_write_tensor(const StWriteTensor *t, size_t *nelem, PeftError *err)
{
	size_t		n = 1;
	PeftCode	code;

	if ((code = check_write_string(t->name, "tensor name", err)) != PEFT_OK)
		return code;
	if (strcmp(t->name, "__metadata__") == 0)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: \"__metadata__\" is reserved, not a tensor name");
	if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: tensor \"%s\" has %d dimensions",
						 t->name, t->ndim);
	for (int d = 0; d < t->ndim; d++)
	{
		if (t->shape[d] < 0 ||
			__builtin_mul_overflow(n, (uint64_t) t->shape[d], &n))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "st_serialize: tensor \"%s\" has a bad shape",
							 t->name);
	}
	if (n > (size_t) ST_MAX_JSON_INTEGER / 4)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: tensor \"%s\" is too large", t->name);
	if (n > 0 && t->data == NULL)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: tensor \"%s\" has no data", t->name);
	*nelem = n;
	return PEFT_OK;
}

/*
 * Check every tensor to write and return them in *out (malloc'ed, NULL on
 * failure) sorted by name, the order they are written in; a name given
 * twice is an error.
 */
static PeftCode
collect_write_items(const StWriteTensor *tensors, int ntensors,
					WriteItem **out, PeftError *err)
{
	WriteItem  *items;
	PeftCode	code;

	*out = NULL;
	items = malloc(sizeof(WriteItem) * (size_t) (ntensors > 0 ? ntensors : 1));
	if (items == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "st_serialize: out of memory");
	for (int i = 0; i < ntensors; i++)
	{
		items[i].tensor = &tensors[i];
		if ((code = check_write_tensor(&tensors[i], &items[i].nelem, err)) != PEFT_OK)
			goto fail;
	}
	if (ntensors > 1)
		qsort(items, (size_t) ntensors, sizeof(WriteItem), compare_write_items);
	for (int i = 1; i < ntensors; i++)
	{
		if (strcmp(items[i - 1].tensor->name, items[i].tensor->name) == 0)
		{
			code = peft_fail(err, PEFT_ERR_INVALID,
							 "st_serialize: tensor \"%s\" given twice",
							 items[i].tensor->name);
			goto fail;
		}
	}
	*out = items;
	return PEFT_OK;

fail:
	free(items);
	return code;
}

/* Append one tensor's header entry: F32, its shape, data_offsets [begin, end]. */
static void
put_tensor_entry(ByteBuf *header, const StWriteTensor *t, uint64_t begin,
				 uint64_t end)
{
	bytebuf_put_json_string(header, t->name);
	bytebuf_puts(header, ":{\"dtype\":\"F32\",\"shape\":[");
	for (int d = 0; d < t->ndim; d++)
	{
		if (d > 0)
			bytebuf_puts(header, ",");
		bytebuf_put_u64(header, (uint64_t) t->shape[d]);
	}
	bytebuf_puts(header, "],\"data_offsets\":[");
	bytebuf_put_u64(header, begin);
	bytebuf_puts(header, ",");
	bytebuf_put_u64(header, end);
	bytebuf_puts(header, "]}");
}

/*
 * Build the header JSON: metadata first, then the tensors in items' order,
 * their data back to back.  *data_len gets the bytes of tensor data.
 */
static PeftCode
build_header(ByteBuf *header, const WriteItem *items, int ntensors,
			 const char *const *meta_keys, const char *const *meta_values,
			 int nmeta, uint64_t *data_len, PeftError *err)
{
	uint64_t	offset = 0;

	bytebuf_puts(header, "{");
	if (nmeta > 0)
	{
		bytebuf_puts(header, "\"__metadata__\":{");
		for (int i = 0; i < nmeta; i++)
		{
			if (i > 0)
				bytebuf_puts(header, ",");
			bytebuf_put_json_string(header, meta_keys[i]);
			bytebuf_puts(header, ":");
			bytebuf_put_json_string(header, meta_values[i]);
		}
		bytebuf_puts(header, "}");
	}
	for (int i = 0; i < ntensors; i++)
	{
		uint64_t	begin = offset;
		uint64_t	nbytes = (uint64_t) items[i].nelem * 4;

		if (__builtin_add_overflow(offset, nbytes, &offset))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "st_serialize: total size overflows");
		if (i > 0 || nmeta > 0)
			bytebuf_puts(header, ",");
		put_tensor_entry(header, items[i].tensor, begin, offset);
	}
	bytebuf_puts(header, "}");
	if (header->failed)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "st_serialize: out of memory for the header");
	*data_len = offset;
	return PEFT_OK;
}

/*
 * Lay out the file in a malloc'ed *out of *outlen bytes: the header length,
 * the header padded with spaces so tensor data starts 8-byte aligned, then
 * each tensor's data as little-endian F32.
 */
static PeftCode
assemble_file(const ByteBuf *header, const WriteItem *items, int ntensors,
			  uint64_t data_len, uint8_t **out, size_t *outlen, PeftError *err)
{
	size_t		padded_len = (header->len + 7) & ~(size_t) 7;
	size_t		total;
	uint8_t    *result;
	uint8_t    *dst;

	if (padded_len > ST_MAX_HEADER || data_len > SIZE_MAX ||
		__builtin_add_overflow(8 + padded_len, (size_t) data_len, &total))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: result is too large");
	result = malloc(total > 0 ? total : 1);
	if (result == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "st_serialize: out of memory for %zu bytes", total);
	store_le64(result, padded_len);
	memcpy(result + 8, header->data, header->len);
	memset(result + 8 + header->len, ' ', padded_len - header->len);
	dst = result + 8 + padded_len;
	for (int i = 0; i < ntensors; i++)
	{
		const StWriteTensor *t = items[i].tensor;

		for (size_t k = 0; k < items[i].nelem; k++)
		{
			float		f = (float) t->data[k];
			uint32_t	bits;

			memcpy(&bits, &f, sizeof(bits));
			store_le32(dst, bits);
			dst += 4;
		}
	}
	*out = result;
	*outlen = total;
	return PEFT_OK;
}

/*
 * Serialise tensors (written in name order, F32, 8-byte aligned header) and
 * optional metadata pairs into a malloc'ed buffer.  Every argument is
 * checked before anything is written.
 */
PeftCode
st_serialize(const StWriteTensor *tensors, int ntensors,
			 const char *const *meta_keys, const char *const *meta_values,
			 int nmeta, uint8_t **out, size_t *outlen, PeftError *err)
{
	ByteBuf		header = {0};
	WriteItem  *items = NULL;
	uint64_t	data_len = 0;
	PeftCode	code;

	*out = NULL;
	*outlen = 0;
	if (ntensors < 0 || nmeta < 0 || (ntensors > 0 && tensors == NULL) ||
		(nmeta > 0 && (meta_keys == NULL || meta_values == NULL)))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "st_serialize: bad tensor or metadata arrays");
	if ((code = check_write_metadata(meta_keys, meta_values, nmeta, err)) != PEFT_OK ||
		(code = collect_write_items(tensors, ntensors, &items, err)) != PEFT_OK)
		return code;
	code = build_header(&header, items, ntensors, meta_keys, meta_values, nmeta,
						&data_len, err);
	if (code == PEFT_OK)
		code = assemble_file(&header, items, ntensors, data_len, out, outlen, err);
	free(header.data);
	free(items);
	return code;
}
