/*
 * safetensors_hooks.c - the safetensors reader and writer
 * (src/engine/formats/safetensors.c) with the test-only lookup of
 * safetensors_hooks.h.  Built as tokenizer_hooks.c is (it includes
 * safetensors.c and replaces safetensors.o in the tests and the fuzzer),
 * although st_metadata needs only the public StFile: one rule for every
 * module's test-only entry points.
 */
#include "../../src/engine/formats/safetensors.c"

#include "safetensors_hooks.h"

/* Metadata value for key, or NULL (binary search over sorted keys). */
const char *
st_metadata(const StFile *file, const char *key)
{
	int			lo = 0;
	int			hi;

	if (file == NULL || key == NULL)
		return NULL;
	hi = file->nmeta - 1;
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			cmp = strcmp(key, file->meta_keys[mid]);

		if (cmp == 0)
			return file->meta_values[mid];
		if (cmp < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}
