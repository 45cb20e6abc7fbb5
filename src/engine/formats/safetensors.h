/*
 * safetensors.h - read (memory-mapped, fully validated) and write the
 * safetensors format: 8-byte little-endian header length, a JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *  "__metadata__": {"k": "v"}}, then the tensor bytes.
 *
 * Used for base models (model.safetensors) and for adapter weights, which
 * PostgreSQL stores as safetensors bytes in a bytea: a user can write any
 * bytes there, so st_open_buffer trusts nothing.
 */
#ifndef PEFT_ENGINE_SAFETENSORS_H
#define PEFT_ENGINE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "real.h"
#include "status.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100 * 1024 * 1024)	/* as the reference implementation */

typedef enum StDtype
{
	ST_F64, ST_F32, ST_F16, ST_BF16,
	ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL
} StDtype;

typedef struct StTensor
{
	char	   *name;
	StDtype		dtype;
	int			ndim;
	int64_t		shape[ST_MAX_DIMS];
	size_t		nelem;			/* product of shape (1 for a scalar) */
	size_t		nbytes;			/* nelem * dtype size == end - begin */
	const uint8_t *data;		/* points into the mapping / buffer */
} StTensor;

typedef struct StFile
{
	const uint8_t *base;		/* whole file or buffer */
	size_t		size;
	bool		mapped;			/* true: munmap on close */
	StTensor   *tensors;		/* sorted by name */
	int			ntensors;
	char	  **meta_keys;		/* __metadata__ string pairs, sorted by key */
	char	  **meta_values;
	int			nmeta;
} StFile;

/* Bytes per element of a dtype. */
size_t		st_dtype_size(StDtype dtype);
/* "F32" etc. */
const char *st_dtype_name(StDtype dtype);

/* Map path read-only and validate it completely. */
PeftCode	st_open_file(const char *path, StFile **out, PeftError *err);
/* Validate an in-memory buffer (not copied: it must outlive the StFile). */
PeftCode	st_open_buffer(const uint8_t *buf, size_t len, StFile **out,
						   PeftError *err);
/* Unmap / free. NULL is allowed. */
void		st_close(StFile *file);

/* Find a tensor by exact name; NULL if absent. */
const StTensor *st_find(const StFile *file, const char *name);

/*
 * Check that name exists with exactly the given shape (ndim dims), or fail
 * with a message naming the tensor, expected and actual shape.
 */
PeftCode	st_expect(const StFile *file, const char *name, int ndim,
					  const int64_t *shape, const StTensor **out,
					  PeftError *err);

/* Convert a floating tensor (F64/F32/F16/BF16) to count reals. */
PeftCode	st_to_real(const StTensor *t, real *dst, size_t count,
					   PeftError *err);

/* A tensor to write: float32 data of the given shape. */
typedef struct StWriteTensor
{
	const char *name;
	int			ndim;
	int64_t		shape[ST_MAX_DIMS];
	const real *data;			/* written as F32 */
} StWriteTensor;

/*
 * Serialise tensors (written in name order, F32, 8-byte aligned header) and
 * optional metadata pairs into a malloc'ed buffer.
 */
PeftCode	st_serialize(const StWriteTensor *tensors, int ntensors,
						 const char *const *meta_keys,
						 const char *const *meta_values, int nmeta,
						 uint8_t **out, size_t *outlen, PeftError *err);

#endif
