/*
 * pretokenizer.h - the regex pre-tokenizers of byte-level BPE vocabularies
 * (GPT-2, SmolLM2, Llama 3, Qwen2), as Hugging Face's tokenizers library
 * and llama.cpp split text before the BPE merges.
 *
 * A pre-tokenizer is a sequence of steps; each step cuts every piece the
 * previous one produced into smaller pieces, and the last step's pieces go
 * to a sink (the BPE model).  The steps are Hugging Face's:
 *
 *   split       a regular expression; matches and the text between them
 *               become pieces of their own ("Split", behavior "Isolated",
 *               invert false);
 *   digits      every numeric character alone, or runs of them ("Digits");
 *   byte level  optionally a space put in front of a piece that does not
 *               start with one, then optionally the GPT-2 pattern
 *               ("ByteLevel"; the mapping of bytes to characters is the BPE
 *               model's business, not this file's).
 *
 * Patterns are compiled by PCRE2 (JIT where available) with UTF and UCP, so
 * \p{L}, \p{N} and \s have their Unicode meaning as in Oniguruma, which
 * Hugging Face uses.  Text that is not valid UTF-8 is accepted: invalid
 * bytes match nothing and end up as pieces of their own.
 *
 * A Pretokenizer is immutable once built and may be shared by threads;
 * pretokenizer_run allocates its own matching state.
 */
#ifndef PEFT_ENGINE_PRETOKENIZER_H
#define PEFT_ENGINE_PRETOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include "status.h"

/* Steps in one pre-tokenizer: more is refused. */
#define PRETOK_MAX_STEPS 8

/* The GPT-2 pattern, as Hugging Face's ByteLevel pre-tokenizer writes it. */
#define PRETOK_GPT2_PATTERN \
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama 3's: case-insensitive contractions, 1-3 digit groups. */
#define PRETOK_LLAMA3_PATTERN \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" \
	"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2's: Llama 3's with single digits. */
#define PRETOK_QWEN2_PATTERN \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" \
	"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct Pretokenizer Pretokenizer;

/*
 * Where pieces go: called once per piece, in text order, with len > 0.
 * The piece may point into a buffer of the run (a piece with a space put
 * in front), valid only during the call.  A code other than PEFT_OK stops
 * the run and is returned by pretokenizer_run.
 */
typedef PeftCode (*PretokSink) (void *ctx, const char *piece, size_t len, PeftError *err);

/* An empty pre-tokenizer (no step: the whole text is one piece). */
PeftCode	pretokenizer_create(Pretokenizer **out, PeftError *err);

/*
 * A pre-tokenizer by the name llama.cpp gives it in tokenizer.ggml.pre:
 *   "gpt2", "gpt-2"                       ByteLevel with the GPT-2 pattern;
 *   "smollm", "starcoder"                 every digit alone, then GPT-2;
 *   "llama3", "llama-v3", "llama-bpe"     the Llama 3 pattern;
 *   "qwen2", "deepseek-r1-qwen"           the Qwen2 pattern.
 * Others are PEFT_ERR_UNSUPPORTED.
 */
PeftCode	pretokenizer_from_name(const char *name, Pretokenizer **out, PeftError *err);

/*
 * Append a split by pattern (len bytes, not NUL-terminated): a regular
 * expression, or the literal text when literal is true.  A pattern that
 * PCRE2 rejects is PEFT_ERR_FORMAT with PCRE2's message and offset.
 */
PeftCode	pretokenizer_add_split(Pretokenizer *p, const char *pattern, size_t len,
								   bool literal, PeftError *err);
/* Append Digits: each numeric character alone (individual) or runs of them. */
PeftCode	pretokenizer_add_digits(Pretokenizer *p, bool individual, PeftError *err);
/* Append ByteLevel: a space in front of pieces that lack one, the GPT-2 split. */
PeftCode	pretokenizer_add_byte_level(Pretokenizer *p, bool add_prefix_space,
										bool use_regex, PeftError *err);

/* Whether the last step is ByteLevel (what a byte-level BPE model needs). */
bool		pretokenizer_ends_byte_level(const Pretokenizer *p);

/* Free; NULL is allowed. */
void		pretokenizer_free(Pretokenizer *p);

/*
 * Cut text (len bytes) into pieces and hand each to sink.  Empty text gives
 * no piece.  Fails with the sink's code, PEFT_ERR_NOMEM, or
 * PEFT_ERR_INVALID when PCRE2 gives up on a pathological pattern (its
 * match limit).
 */
PeftCode	pretokenizer_run(const Pretokenizer *p, const char *text, size_t len,
							 PretokSink sink, void *ctx, PeftError *err);

#endif
