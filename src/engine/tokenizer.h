/*
 * tokenizer.h - BERT WordPiece tokenisation, identical to Hugging Face's
 * BertTokenizer(Fast) for uncased and cased models.
 */
#ifndef PEFT_ENGINE_TOKENIZER_H
#define PEFT_ENGINE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "status.h"

typedef struct Tokenizer Tokenizer;

typedef struct TokenizerOptions
{
	bool		lowercase;		/* do_lower_case */
	bool		strip_accents;	/* NFD + drop Mn (default: = lowercase) */
	bool		split_chinese;	/* tokenize_chinese_chars */
} TokenizerOptions;

/* Load vocab.txt (one token per line, id = line number). */
PeftCode	tokenizer_load_vocab(const char *path, const TokenizerOptions *opts,
								 Tokenizer **out, PeftError *err);
/* Same from an in-memory vocab.txt image. */
PeftCode	tokenizer_from_buffer(const char *buf, size_t len,
								  const TokenizerOptions *opts,
								  Tokenizer **out, PeftError *err);
/* Load the WordPiece vocabulary of a tokenizer.json (when vocab.txt is absent). */
PeftCode	tokenizer_load_json(const char *path, const TokenizerOptions *opts,
								Tokenizer **out, PeftError *err);
/* Same from an in-memory tokenizer.json image (len bytes, not necessarily NUL-terminated). */
PeftCode	tokenizer_from_json_buffer(const char *buf, size_t len,
									   const TokenizerOptions *opts,
									   Tokenizer **out, PeftError *err);
/* Load from a model folder: vocab.txt, else tokenizer.json. */
PeftCode	tokenizer_load_dir(const char *dir, const TokenizerOptions *opts,
							   Tokenizer **out, PeftError *err);
void		tokenizer_free(Tokenizer *tok);

/* Vocabulary size. */
int			tokenizer_vocab_size(const Tokenizer *tok);
/* Id of a token string, or -1. */
int			tokenizer_token_id(const Tokenizer *tok, const char *token);

/*
 * Encode text (len bytes of UTF-8; invalid bytes are handled like HF's
 * lossy decoding) as [CLS] tokens... [SEP], truncated so the total is at
 * most max_length (>= 2).  Writes ids[max_length]; returns the count
 * (0, writing nothing, when max_length < 2).  Thread-safe, allocates nothing.
 */
int			tokenizer_encode(const Tokenizer *tok, const char *text, size_t len,
							 int max_length, int32_t *ids);

/* Options the tokenizer applies (given, or read from the model folder). */
TokenizerOptions tokenizer_options(const Tokenizer *tok);

/*
 * Normalise and split text as tokenizer_encode does before WordPiece, and
 * write the words separated by single spaces into out[out_size] (always
 * NUL-terminated when out_size > 0, truncated if it does not fit).  A word
 * over the length limit is written as [UNK].  Returns the length of the
 * whole result, without the NUL.  For tests and diagnostics.
 */
size_t		tokenizer_pretokenize(const Tokenizer *tok, const char *text, size_t len,
								  char *out, size_t out_size);

#endif
