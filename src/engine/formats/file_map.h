/*
 * file_map.h - map a model file read-only and shared, for the readers that
 * validate it in place (safetensors.c, gguf.c).
 */
#ifndef PEFT_ENGINE_FILE_MAP_H
#define PEFT_ENGINE_FILE_MAP_H

#include <stddef.h>
#include <stdint.h>
#include "status.h"

/*
 * Map path read-only (MAP_SHARED: every process mapping the same model
 * shares one copy in the page cache).  Only a regular file of at least
 * min_bytes is mapped; a FIFO or device at the path is refused without
 * blocking.  Errors name the file as label, and a short file as too short
 * for a `kind` ("safetensors file").  Release with file_unmap.
 */
PeftCode	file_map(const char *path, const char *label, size_t min_bytes, const char *kind,
					 const uint8_t **base, size_t *size, PeftError *err);
/* Release a mapping made by file_map. */
void		file_unmap(const uint8_t *base, size_t size);

#endif
