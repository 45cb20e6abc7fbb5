/*
 * fuzz_tokenizer.c - libFuzzer harness for the WordPiece tokenizer
 * (src/engine/tokenizers/tokenizer.c): the vocabulary loaders (vocab.txt and
 * tokenizer.json images) and the tokenisation of arbitrary bytes.
 *
 * Input: flags, max_length, a 16-bit little-endian length N, N bytes of
 * vocabulary, and the rest is the text.
 *   flags bit 0: the vocabulary is a tokenizer.json (else a vocab.txt);
 *   bits 1-3: lowercase, strip_accents, split_chinese;
 *   bit 4: no options given (the loader's defaults / tokenizer.json's
 *   normalizer).
 * The text is encoded with the fuzzed vocabulary when it loads, and always
 * with the tiny test model's real vocabulary under the options of bits 1-3.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "tokenizer_hooks.h"

#define FULL_MAX_LENGTH 8192

/* The tiny model's vocabulary under each of the 8 option combinations. */
static Tokenizer *fixed[8];

/* Options from the three option bits of the flags byte. */
static TokenizerOptions
options_from_bits(int bits)
{
	TokenizerOptions opts;

	opts.lowercase = (bits & 1) != 0;
	opts.strip_accents = (bits & 2) != 0;
	opts.split_chinese = (bits & 4) != 0;
	return opts;
}

/* Load the fixed vocabulary once per process. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char		path[4096 + 16];
	PeftError	err = {0};

	snprintf(path, sizeof(path), "%s/vocab.txt", fuzz_tiny_model_dir());
	for (int bits = 0; bits < 8; bits++)
	{
		TokenizerOptions opts = options_from_bits(bits);

		if (tokenizer_load_vocab(path, &opts, &fixed[bits], &err) != PEFT_OK)
		{
			fprintf(stderr, "fuzz: cannot load %s: %s\n", path, err.message);
			exit(1);
		}
	}
	return 0;
}

/*
 * Encode text with max_length and check the result: [CLS] ... [SEP], at
 * most max_length ids, every id a row of the embedding table, and a prefix
 * of the untruncated encoding.
 */
static void
check_encode(const Tokenizer *tok, const char *text, size_t len, int max_length)
{
	static int32_t ids[FULL_MAX_LENGTH];
	static int32_t full[FULL_MAX_LENGTH];
	int			vocab = tokenizer_vocab_size(tok);
	int			cls = tokenizer_token_id(tok, "[CLS]");
	int			sep = tokenizer_token_id(tok, "[SEP]");
	int			n = tokenizer_encode(tok, text, len, max_length, ids);
	int			nfull;

	if (max_length < 2)
	{
		FUZZ_CHECK(n == 0);
		return;
	}
	FUZZ_CHECK(n >= 2 && n <= max_length);
	FUZZ_CHECK(ids[0] == cls && ids[n - 1] == sep);
	for (int i = 0; i < n; i++)
		FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab);

	nfull = tokenizer_encode(tok, text, len, FULL_MAX_LENGTH, full);
	FUZZ_CHECK(nfull >= n && nfull <= FULL_MAX_LENGTH);
	FUZZ_CHECK(memcmp(ids, full, sizeof(int32_t) * (size_t) (n - 1)) == 0);
	if (nfull < FULL_MAX_LENGTH && n < max_length)
		FUZZ_CHECK(nfull == n);	/* not truncated: the same ids */
}

/* Pre-tokenise into a small and an exact buffer; they must agree. */
static void
check_pretokenize(const Tokenizer *tok, const char *text, size_t len)
{
	char		small[16];
	size_t		needed = tokenizer_pretokenize(tok, text, len, small, sizeof(small));
	char	   *whole = malloc(needed + 1);
	size_t		again;

	FUZZ_CHECK(whole != NULL);
	again = tokenizer_pretokenize(tok, text, len, whole, needed + 1);
	FUZZ_CHECK(again == needed && whole[needed] == '\0');
	FUZZ_CHECK(strlen(small) == (needed < sizeof(small) ? needed : sizeof(small) - 1));
	FUZZ_CHECK(memcmp(small, whole, strlen(small)) == 0);
	FUZZ_CHECK(tokenizer_pretokenize(tok, text, len, NULL, 0) == needed);
	free(whole);
}

/* libFuzzer entry point: flags, max_length, vocabulary length, vocabulary, text. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TokenizerOptions opts;
	Tokenizer  *tok = NULL;
	PeftError	err = {0};
	const char *vocab;
	const char *text;
	size_t		vocab_len;
	size_t		text_len;
	int			flags;
	int			max_length;
	PeftCode	rc;

	if (size < 4)
		return 0;
	flags = data[0];
	max_length = data[1];
	vocab_len = fuzz_le16(data + 2);
	if (vocab_len > size - 4)
		vocab_len = size - 4;
	text_len = size - 4 - vocab_len;
	vocab = (const char *) fuzz_guarded_copy(0, data + 4, vocab_len);
	text = (const char *) fuzz_guarded_copy(1, data + 4 + vocab_len, text_len);
	opts = options_from_bits(flags >> 1);

	if (flags & 1)
		rc = tokenizer_from_json_buffer(vocab, vocab_len, (flags & 16) ? NULL : &opts,
										&tok, &err);
	else
		rc = tokenizer_from_buffer(vocab, vocab_len, (flags & 16) ? NULL : &opts,
								   &tok, &err);
	if (rc == PEFT_OK)
	{
		FUZZ_CHECK(tok != NULL && tokenizer_vocab_size(tok) > 0);
		FUZZ_CHECK(tokenizer_token_id(tok, "[UNK]") >= 0 ||
				   (flags & 1));	/* tokenizer.json may name its own */
		check_encode(tok, text, text_len, max_length);
		check_pretokenize(tok, text, text_len);
		tokenizer_free(tok);
	}
	else
		FUZZ_CHECK(tok == NULL && err.code != PEFT_OK && err.message[0] != '\0');

	check_encode(fixed[(flags >> 1) & 7], text, text_len, max_length);
	check_pretokenize(fixed[(flags >> 1) & 7], text, text_len);
	return 0;
}
