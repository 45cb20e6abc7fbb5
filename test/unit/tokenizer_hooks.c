/*
 * tokenizer_hooks.c - the tokenizer (src/engine/tokenizers/tokenizer.c) with the
 * test-only entry points of tokenizer_hooks.h.
 *
 * They need the tokenizer's internals (the vocabulary, the JSON loader,
 * the text splitter and its sink interface), which tokenizer.c keeps
 * static.  Rather than widen its interface for the tests, this file
 * includes tokenizer.c itself, and the tests and the fuzzer link this
 * object in place of tokenizer.o (Makefile, test/fuzz/build.sh): the same
 * source, compiled with the same flags, plus the hooks below.
 */
#include "../../src/engine/tokenizers/tokenizer.c"

#include "tokenizer_hooks.h"

/* tokenizer_load_json on an in-memory image (need not be NUL-terminated). */
PeftCode
tokenizer_from_json_buffer(const char *buf, size_t len, const TokenizerOptions *opts,
						   Tokenizer **out, PeftError *err)
{
	if (out == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "tokenizer_from_json_buffer: no output");
	*out = NULL;
	if (buf == NULL || len == 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: empty file");
	return tokenizer_parse_json(buf, len, "tokenizer.json", opts, out, err);
}

/* Id of a token string, or -1. */
int
tokenizer_token_id(const Tokenizer *tok, const char *token)
{
	if (tok == NULL || token == NULL)
		return -1;
	return vocab_id(tok, token, strlen(token));
}

/* Options the tokenizer applies (those given, or found in the model folder). */
TokenizerOptions
tokenizer_options(const Tokenizer *tok)
{
	return tok->opts;
}


/* ---- splitting without WordPiece ---------------------------------------- */

/* The sink that writes words as text for tokenizer_pretokenize. */
typedef struct TextSink
{
	TokenSink	base;
	const Tokenizer *tok;
	char	   *out;
	size_t		out_size;
	size_t		needed;
} TextSink;

/* Text sink: append bytes, counting what would be needed beyond the room. */
static void
text_append(TextSink *ts, const void *bytes, size_t n)
{
	if (ts->needed < ts->out_size)
	{
		size_t		room = ts->out_size - ts->needed;

		memcpy(ts->out + ts->needed, bytes, n < room ? n : room);
	}
	ts->needed += n;
}

/* Text sink: write the word (or the unknown token if too long), space-separated. */
static void
text_word(TokenSink *sink, const WordBuffer *word)
{
	TextSink   *ts = (TextSink *) sink;

	if (ts->needed > 0)
		text_append(ts, " ", 1);
	if (word->nchars > ts->tok->max_word_chars)
	{
		text_append(ts, "[UNK]", 5);
		return;
	}
	for (int i = 0; i < word->nchars; i++)
	{
		uint8_t		buf[4];

		text_append(ts, buf, (size_t) encode_utf8(word->cps[i], buf));
	}
}

/* Text sink: write a special token found in the text as itself. */
static void
text_special(TokenSink *sink, const SpecialToken *special)
{
	TextSink   *ts = (TextSink *) sink;

	if (ts->needed > 0)
		text_append(ts, " ", 1);
	text_append(ts, special->text, special->len);
}

/*
 * Normalise and split text as tokenizer_encode does before WordPiece, and
 * write the words separated by single spaces into out[out_size] (always
 * NUL-terminated when out_size > 0, truncated if it does not fit).  A word
 * over the length limit is written as [UNK].  Returns the length of the
 * whole result, without the NUL.
 */
size_t
tokenizer_pretokenize(const Tokenizer *tok, const char *text, size_t len,
					  char *out, size_t out_size)
{
	TextSink	sink;

	if (tok == NULL)
		return 0;
	sink.base.word = text_word;
	sink.base.special = text_special;
	sink.base.stop = false;
	sink.tok = tok;
	sink.out = out;
	sink.out_size = out != NULL ? out_size : 0;
	sink.needed = 0;
	if (text != NULL && len > 0)
		split_text(tok, (const uint8_t *) text, len, &sink.base);
	if (sink.out_size > 0)
		out[sink.needed < sink.out_size ? sink.needed : sink.out_size - 1] = '\0';
	return sink.needed;
}
