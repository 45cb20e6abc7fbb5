/*
 * gguf_writer.h - write a GGUF file (version 3, little-endian) into memory:
 * metadata of the types an adapter file needs (string, u32, f32) and F32
 * tensors.  gguf.h reads what this writes, as does llama.cpp.
 *
 * Layout written: "GGUF", u32 3, u64 tensor count, u64 key/value count,
 * the key/values in the order added, the tensor infos in the order added
 * (offsets relative to the data section), zero padding to the alignment
 * (32: general.alignment is not written), then each tensor's data, each
 * padded with zeros to the alignment, the last one too (ggml reads the
 * data section as the sum of the padded sizes).
 *
 * Keys and tensor names must be unique and non-empty; tensor names are
 * shorter than 64 bytes (ggml's GGML_MAX_NAME holds the NUL).
 */
#ifndef PEFT_ENGINE_GGUF_WRITER_H
#define PEFT_ENGINE_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include "status.h"

#define GGUF_WRITER_VERSION 3
#define GGUF_WRITER_MAX_NAME 63

typedef struct GgufWriter GgufWriter;

/* An empty file to fill; NULL when out of memory. */
GgufWriter *gguf_writer_create(void);
/* Release (NULL allowed). */
void		gguf_writer_free(GgufWriter *w);

/* Metadata: key = value. */
PeftCode	gguf_writer_add_string(GgufWriter *w, const char *key, const char *value,
								   PeftError *err);
PeftCode	gguf_writer_add_u32(GgufWriter *w, const char *key, uint32_t value, PeftError *err);
PeftCode	gguf_writer_add_f32(GgufWriter *w, const char *key, float value, PeftError *err);

/*
 * An F32 tensor of ndim (1..4) dimensions in ggml's order (dims[0] is the
 * row length, the fastest-varying index); data holds their product of
 * floats, copied.
 */
PeftCode	gguf_writer_add_tensor_f32(GgufWriter *w, const char *name, int ndim,
									   const int64_t *dims, const float *data, PeftError *err);

/* The file's bytes (malloc'ed, the caller frees); w is left as it was. */
PeftCode	gguf_writer_finish(const GgufWriter *w, uint8_t **out, size_t *len, PeftError *err);

#endif
