/*
 * generate_stream.h - continuous batching over decoder.h: prompts, each
 * through its own adapter and with its own options, join a running batch
 * between decoding steps and leave it when they finish, freeing their
 * slot for the next.  A prompt's completion equals generate's for the
 * same prompt, adapter, options and index in its call.  engine_api.h's
 * stream_* functions.
 */
#ifndef PEFT_ENGINE_GENERATE_STREAM_H
#define PEFT_ENGINE_GENERATE_STREAM_H

#include "generate.h"

typedef struct GenStream GenStream;

/*
 * A stream over g's model (g->adapter is not used) for up to slots
 * sequences at once, caches within about cache_bytes (0: the default).
 */
PeftCode	generate_stream_create(const GenerateModel *g, int slots, size_t cache_bytes,
								   GenStream **out, PeftError *err);

/*
 * Queue a prompt through ad (NULL: the base model); engine_api.h's
 * stream_add.  shareable false (a merged adapter): only check the prompt
 * and options, then answer *alone.
 */
PeftCode	generate_stream_add(GenStream *st, DecoderAdapter *ad, bool shareable, const char *prompt,
								size_t len, const PeftGenerateOptions *o, int index, uint64_t tag,
								bool *alone, PeftError *err);

/* Drop the sequence tagged tag, queued or live; false if it is not there. */
bool		generate_stream_cancel(GenStream *st, uint64_t tag);

/* Admit queued prompts, then decode one step; engine_api.h's stream_step. */
PeftCode	generate_stream_step(GenStream *st, PeftStreamResult **results, int *nresults,
								 PeftError *err);

/* Sequences queued or live. */
int			generate_stream_pending(const GenStream *st);

/* Release (NULL allowed). */
void		generate_stream_free(GenStream *st);

#endif
