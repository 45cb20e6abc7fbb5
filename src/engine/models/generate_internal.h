/*
 * generate_internal.h - what generate.c shares with generate_stream.c:
 * one prompt's decoding state (Sequence), taking a sampled token into it,
 * the options' checks and each prompt's sampling seed.  Not part of the
 * engine's API.
 */
#ifndef PEFT_ENGINE_GENERATE_INTERNAL_H
#define PEFT_ENGINE_GENERATE_INTERNAL_H

#include "generate.h"
#include "rng.h"

/*
 * Bytes the key/value caches of one group (or a stream's, by default) may
 * take: a slot holds layers x 2 x kv_dim floats per position (46 KB for
 * SmolLM2-135M), so 32 slots of 1,000 positions would be 1.5 GB; groups
 * shrink to stay under this.
 */
#define GENERATE_CACHE_BUDGET ((size_t) 512 << 20)

/* One prompt's decoding state. */
typedef struct Sequence
{
	int32_t    *prompt;			/* its token ids */
	int			prompt_len;
	int			pos;			/* the next token's position */
	int32_t		next;			/* the token to feed at pos */
	bool		done;
	PeftRng		rng;			/* its own sampling (generate_seed_rng) */
	BpeDecoder	utf8;			/* holds a character split over tokens */
	char	   *bytes;			/* the completion's bytes so far (whole characters) */
	size_t		nbytes;
	size_t		cap;
	PeftGeneration *out;
} Sequence;

/* Check the options that the engine reads. */
PeftCode	generate_check_options(const PeftGenerateOptions *o, PeftError *err);

/* Whether prompts are rendered through the chat template (options' chat, -1: when the model has one). */
bool		generate_use_chat(const GenerateModel *g, const PeftGenerateOptions *o);

/*
 * Seed the sampling of prompt index of a call: index 0 with seed itself,
 * others with a mix of both, so a prompt's completion does not depend on
 * the prompts decoded beside it.
 */
void		generate_seed_rng(PeftRng *rng, uint64_t seed, int index);

/* Start s on its prompt ids (taken over), its completion going to out. */
void		sequence_begin(Sequence *s, int32_t *prompt, int prompt_len, PeftGeneration *out);

/*
 * Take the token sampled for s: count it, stop on the end tokens, else
 * add its bytes and check the stop strings and the limits (ctx: positions
 * s may reach); s->done once it ended, its text in s->out.
 */
PeftCode	sequence_take_token(const GenerateModel *g, Sequence *s, int32_t token, int ctx, char *piece,
								const PeftGenerateOptions *o, PeftError *err);

/* Release what s holds (not a finished text, which belongs to s->out). */
void		sequence_release(Sequence *s);

#endif
