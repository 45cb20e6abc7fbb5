/*
 * tokenizer_hooks.h - test-only entry points into the tokenizer
 * (src/engine/tokenizers/tokenizer.c), for the unit tests and the fuzzer; they are not
 * in peft_engine.so.  tokenizer_hooks.c builds them together with
 * tokenizer.c, whose internals they reach (see there).
 */
#ifndef PEFT_TEST_TOKENIZER_HOOKS_H
#define PEFT_TEST_TOKENIZER_HOOKS_H

#include "tokenizer.h"

/*
 * tokenizer_load_json on an in-memory tokenizer.json image (len bytes, not
 * necessarily NUL-terminated); messages name it "tokenizer.json".
 */
PeftCode	tokenizer_from_json_buffer(const char *buf, size_t len,
									   const TokenizerOptions *opts,
									   Tokenizer **out, PeftError *err);

/* Id of a token string, or -1. */
int			tokenizer_token_id(const Tokenizer *tok, const char *token);

/* Options the tokenizer applies (given, or read from the model folder). */
TokenizerOptions tokenizer_options(const Tokenizer *tok);

/*
 * Normalise and split text as tokenizer_encode does before WordPiece, and
 * write the words separated by single spaces into out[out_size] (always
 * NUL-terminated when out_size > 0, truncated if it does not fit).  A word
 * over the length limit is written as [UNK].  Returns the length of the
 * whole result, without the NUL.
 */
size_t		tokenizer_pretokenize(const Tokenizer *tok, const char *text, size_t len,
								  char *out, size_t out_size);

#endif
