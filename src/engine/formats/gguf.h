/*
 * gguf.h - read GGUF files (llama.cpp's model format, versions 2 and 3),
 * memory-mapped read-only and validated completely before use, as
 * safetensors.h does for Hugging Face files.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64
 * key/value count; the key/values (string key, u32 value type, value;
 * arrays are u32 element type, u64 count, elements, and may nest); the
 * tensor infos (string name, u32 dimension count, u64 dimensions, u32
 * ggml type, u64 offset); padding to general.alignment (32 unless set);
 * the tensor data, each at its offset from there.  A string is a u64
 * length and that many bytes.  Nothing in a file is trusted: counts,
 * lengths, types, dimensions and offsets are bounded by the bytes there.
 */
#ifndef PEFT_ENGINE_GGUF_H
#define PEFT_ENGINE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "status.h"

#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 4	/* arrays of arrays: deeper is refused */
#define GGUF_DEFAULT_ALIGNMENT 32

/* Types of metadata values (the numbers are the file's). */
typedef enum GgufValueType
{
	GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
	GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
	GGUF_I64 = 11, GGUF_F64 = 12
} GgufValueType;

/* Tensor types this reader knows the block layout of (ggml's numbers). */
typedef enum GgmlType
{
	GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
	GGML_Q8_0 = 8, GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13,
	GGML_Q6_K = 14, GGML_BF16 = 30
} GgmlType;

/* One metadata value; strings and arrays point into the mapping. */
typedef struct GgufValue
{
	GgufValueType type;
	uint64_t	u;				/* unsigned integers and bool */
	int64_t		i;				/* signed integers */
	double		f;				/* F32, F64 */
	const char *str;			/* STRING: not NUL-terminated */
	uint64_t	len;			/* STRING: bytes */
	GgufValueType elem_type;	/* ARRAY */
	uint64_t	count;			/* ARRAY: elements */
	const uint8_t *elems;		/* ARRAY: the encoded elements */
} GgufValue;

typedef struct GgufKv
{
	char	   *key;
	GgufValue	value;
} GgufKv;

typedef struct GgufTensor
{
	char	   *name;
	GgmlType	type;
	int			ndim;
	int64_t		dims[GGUF_MAX_DIMS];	/* ggml order: dims[0] is the row length */
	uint64_t	nelem;
	uint64_t	nbytes;
	const uint8_t *data;		/* points into the mapping */
} GgufTensor;

typedef struct GgufFile
{
	const uint8_t *base;
	size_t		size;
	bool		mapped;			/* true: munmap on close */
	uint32_t	version;
	uint32_t	alignment;
	GgufKv	   *kvs;			/* sorted by key */
	int			nkv;
	GgufTensor *tensors;		/* sorted by name */
	int			ntensors;
} GgufFile;

/* Values per block and bytes per block of a tensor type; false if unknown. */
bool		gguf_type_layout(uint32_t type, int *block_values, int *block_bytes);
/* "Q4_1" etc.; "unknown" for others. */
const char *gguf_type_name(uint32_t type);

/* Map path read-only and validate it completely. */
PeftCode	gguf_open_file(const char *path, GgufFile **out, PeftError *err);
/* Validate an in-memory buffer (not copied: it must outlive the GgufFile). */
PeftCode	gguf_open_buffer(const uint8_t *buf, size_t len, GgufFile **out, PeftError *err);
/* Unmap / free.  NULL is allowed. */
void		gguf_close(GgufFile *file);

/* The value of key, or NULL. */
const GgufValue *gguf_find(const GgufFile *file, const char *key);
/* A tensor by exact name, or NULL. */
const GgufTensor *gguf_find_tensor(const GgufFile *file, const char *name);
/* An unsigned integer value of any width (U8..U64, or a non-negative signed one); error naming key otherwise. */
PeftCode	gguf_get_uint(const GgufFile *file, const char *key, uint64_t *out, PeftError *err);
/* A string value as a NUL-terminated copy the caller frees; error naming key otherwise. */
PeftCode	gguf_get_string(const GgufFile *file, const char *key, char **out, PeftError *err);

#endif
