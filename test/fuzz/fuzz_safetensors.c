/*
 * fuzz_safetensors.c - libFuzzer harness for the safetensors reader
 * (src/engine/formats/safetensors.c): the input is a whole file or bytea.
 *
 * st_open_buffer validates it; when it is accepted, every tensor is looked
 * up, checked against its own shape, converted (floating dtypes) and the
 * metadata read back; the float tensors are then written with st_serialize
 * and read again, and must come back identical.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "safetensors_hooks.h"

/* Whether st_to_real converts this dtype. */
static bool
is_float_dtype(StDtype dtype)
{
	return dtype == ST_F64 || dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16;
}

/* Check that what st_open_buffer accepted is self-consistent and in bounds. */
static void
check_file(const StFile *file, const uint8_t *data, size_t size)
{
	FUZZ_CHECK(file->base == data && file->size == size);
	FUZZ_CHECK(file->ntensors >= 0 && file->nmeta >= 0);
	for (int i = 0; i < file->ntensors; i++)
	{
		const StTensor *t = &file->tensors[i];
		size_t		n = 1;

		FUZZ_CHECK(t->name != NULL);
		FUZZ_CHECK(strcmp(t->name, "__metadata__") != 0);
		FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
		for (int d = 0; d < t->ndim; d++)
		{
			FUZZ_CHECK(t->shape[d] >= 0);
			n *= (size_t) t->shape[d];
		}
		FUZZ_CHECK(n == t->nelem);
		FUZZ_CHECK(t->nbytes == t->nelem * st_dtype_size(t->dtype));
		FUZZ_CHECK(t->data >= data + 8 && t->data + t->nbytes <= data + size);
		if (i > 0)
			FUZZ_CHECK(strcmp(file->tensors[i - 1].name, t->name) < 0);
	}
	for (int i = 0; i < file->nmeta; i++)
		FUZZ_CHECK(st_metadata(file, file->meta_keys[i]) == file->meta_values[i]);
}

/* st_expect refuses the tensor under another shape (one more dimension, or a dimension off by one). */
static void
check_wrong_shape(const StFile *file, const StTensor *t)
{
	int64_t		shape[ST_MAX_DIMS + 1];
	const StTensor *found = t;
	PeftError	err = {0};

	memcpy(shape, t->shape, sizeof(t->shape));
	shape[t->ndim] = 1;
	FUZZ_CHECK(st_expect(file, t->name, t->ndim + 1, shape, &found, &err) == PEFT_ERR_FORMAT &&
			   found == NULL && err.message[0] != '\0');
	if (t->ndim > 0)
	{
		shape[t->ndim - 1]++;
		FUZZ_CHECK(st_expect(file, t->name, t->ndim, shape, NULL, &err) == PEFT_ERR_FORMAT);
	}
}

/* Convert every tensor, then write the float ones and read them back. */
static void
convert_and_round_trip(const StFile *file)
{
	int			n = file->ntensors;
	real	  **values = calloc((size_t) (n > 0 ? n : 1), sizeof(real *));
	StWriteTensor *out = calloc((size_t) (n > 0 ? n : 1), sizeof(StWriteTensor));
	int			nout = 0;
	uint8_t    *bytes = NULL;
	size_t		len = 0;
	StFile	   *again = NULL;
	PeftError	err = {0};

	FUZZ_CHECK(values != NULL && out != NULL);
	for (int i = 0; i < n; i++)
	{
		const StTensor *t = &file->tensors[i];
		const StTensor *found = NULL;
		PeftCode	rc;

		FUZZ_CHECK(st_find(file, t->name) == t);
		FUZZ_CHECK(st_expect(file, t->name, t->ndim, t->shape, &found, &err) == PEFT_OK &&
				   found == t);
		check_wrong_shape(file, t);
		values[i] = malloc((t->nelem > 0 ? t->nelem : 1) * sizeof(real));
		FUZZ_CHECK(values[i] != NULL);
		rc = st_to_real(t, values[i], t->nelem, &err);
		if (!is_float_dtype(t->dtype))
		{
			FUZZ_CHECK(rc == PEFT_ERR_UNSUPPORTED);
			continue;
		}
		FUZZ_CHECK(rc == PEFT_OK);
		/* a wrong count is refused, never read past the tensor */
		FUZZ_CHECK(st_to_real(t, values[i], t->nelem + 1, &err) == PEFT_ERR_INVALID);
		out[nout].name = t->name;
		out[nout].ndim = t->ndim;
		memcpy(out[nout].shape, t->shape, sizeof(t->shape));
		out[nout].data = values[i];
		nout++;
	}

	FUZZ_CHECK(st_serialize(out, nout, (const char *const *) file->meta_keys,
							(const char *const *) file->meta_values, file->nmeta,
							&bytes, &len, &err) == PEFT_OK);
	if (st_open_buffer(bytes, len, &again, &err) != PEFT_OK)
	{
		fprintf(stderr, "fuzz: st_serialize wrote what st_open_buffer refuses: %s\n",
				err.message);
		abort();
	}
	FUZZ_CHECK(again->ntensors == nout && again->nmeta == file->nmeta);
	for (int i = 0; i < nout; i++)
	{
		const StTensor *t = st_find(again, out[i].name);
		real	   *copy;

		FUZZ_CHECK(t != NULL && t->dtype == ST_F32 && t->ndim == out[i].ndim);
		FUZZ_CHECK(memcmp(t->shape, out[i].shape, sizeof(int64_t) * (size_t) t->ndim) == 0);
		copy = malloc((t->nelem > 0 ? t->nelem : 1) * sizeof(real));
		FUZZ_CHECK(copy != NULL);
		FUZZ_CHECK(st_to_real(t, copy, t->nelem, &err) == PEFT_OK);
		FUZZ_CHECK(memcmp(copy, out[i].data, t->nelem * sizeof(real)) == 0);
		free(copy);
	}
	for (int i = 0; i < file->nmeta; i++)
	{
		const char *v = st_metadata(again, file->meta_keys[i]);

		FUZZ_CHECK(v != NULL && strcmp(v, file->meta_values[i]) == 0);
	}

	st_close(again);
	free(bytes);
	for (int i = 0; i < n; i++)
		free(values[i]);
	free(values);
	free(out);
}

/* libFuzzer entry point: the input is a safetensors image. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	StFile	   *file = NULL;
	PeftError	err = {0};

	data = fuzz_guarded_copy(0, data, size);
	if (st_open_buffer(data, size, &file, &err) != PEFT_OK)
	{
		FUZZ_CHECK(file == NULL && err.code != PEFT_OK && err.message[0] != '\0');
		return 0;
	}
	check_file(file, data, size);
	convert_and_round_trip(file);
	FUZZ_CHECK(st_find(file, "no such tensor \x01") == NULL);
	st_close(file);
	return 0;
}
