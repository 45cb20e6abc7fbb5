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
/* Load from a model folder: vocab.txt, else tokenizer.json. */
PeftCode	tokenizer_load_dir(const char *dir, const TokenizerOptions *opts,
							   Tokenizer **out, PeftError *err);
void		tokenizer_free(Tokenizer *tok);

/* Vocabulary size. */
int			tokenizer_vocab_size(const Tokenizer *tok);

/*
 * Encode text (len bytes of UTF-8; invalid bytes are handled like HF's
 * lossy decoding) as [CLS] tokens... [SEP], truncated so the total is at
 * most max_length (>= 2).  Writes ids[max_length]; returns the count
 * (0, writing nothing, when max_length < 2).  Thread-safe, allocates nothing.
 */
int			tokenizer_encode(const Tokenizer *tok, const char *text, size_t len,
							 int max_length, int32_t *ids);

#endif
