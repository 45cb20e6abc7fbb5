/*
 * fuzz_bpe.c - libFuzzer harness for the byte-level BPE tokenizer
 * (src/engine/tokenizers/bpe_tokenizer.c, pretokenizer.c): the tokenizer.json and
 * GGUF loaders, encoding arbitrary bytes, and decoding.
 *
 * Input: flags, a 16-bit little-endian length N, N bytes of tokenizer
 * (a tokenizer.json, or a GGUF image when flags bit 0 is set), and the
 * rest is the text.  Bit 1: parse special tokens; bit 2: skip special
 * tokens when decoding.
 * The text is encoded with the fuzzed tokenizer when it loads, and always
 * with the committed Llama 3 style and SmolLM2 vocabularies
 * (test/fixtures/reference/bpe/).  Invariants: every id is in the
 * vocabulary; counting, a short buffer and the alloc form agree; decoding
 * gives valid UTF-8 and the streaming decoder gives the same bytes; with the
 * Llama 3 vocabulary (all 256 bytes, no normaliser) valid UTF-8 text
 * decodes back to itself unless it holds "<tool>", an added token that
 * swallows the white space before it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "bpe_tokenizer.h"
#include "gguf.h"
#include "model_config.h"

#define BPE_FIXTURES PEFT_SOURCE_DIR "/test/fixtures/reference/bpe/"

static BpeTokenizer *llama3;
static BpeTokenizer *smollm2;

/* Load the fixed tokenizers once per process. */
int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	PeftError	err = {0};

	if (bpe_tokenizer_load_json(BPE_FIXTURES "llama3_tokenizer.json", &llama3, &err) != PEFT_OK ||
		bpe_tokenizer_load_json(BPE_FIXTURES "smollm2_tokenizer.json", &smollm2, &err) != PEFT_OK)
	{
		fprintf(stderr, "fuzz: cannot load the BPE fixtures: %s\n", err.message);
		exit(1);
	}
	return 0;
}

/* Whether s[0..len) is valid UTF-8. */
static bool
valid_utf8(const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *) s;

	for (size_t i = 0; i < len;)
	{
		uint8_t		c = p[i];
		size_t		n = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
		uint8_t		lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
		uint8_t		hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;

		if (n == 0 || i + n > len)
			return false;
		if (n > 1 && (p[i + 1] < lo || p[i + 1] > hi))
			return false;
		for (size_t k = 2; k < n; k++)
			if ((p[i + k] & 0xC0) != 0x80)
				return false;
		i += n;
	}
	return true;
}

/* Whether needle occurs in s[0..len). */
static bool
contains(const char *s, size_t len, const char *needle)
{
	size_t		n = strlen(needle);

	for (size_t i = 0; i + n <= len; i++)
		if (memcmp(s + i, needle, n) == 0)
			return true;
	return false;
}

/* Decode ids whole and streaming; they must agree and be valid UTF-8.  Returns the text. */
static char *
check_decode(const BpeTokenizer *tok, const int32_t *ids, size_t n, bool skip_special, size_t *len)
{
	char	   *whole;
	char	   *chunk = malloc(bpe_decode_bound(tok) + BPE_FLUSH_MAX_BYTES);
	size_t		used = 0;
	BpeDecoder	dec;
	PeftError	err = {0};

	FUZZ_CHECK(chunk != NULL);
	FUZZ_CHECK(bpe_decode(tok, ids, n, skip_special, &whole, len, &err) == PEFT_OK);
	FUZZ_CHECK(whole[*len] == '\0' && valid_utf8(whole, *len));
	bpe_decoder_init(&dec);
	for (size_t i = 0; i < n; i++)
	{
		size_t		got;

		FUZZ_CHECK(bpe_decoder_feed(tok, &dec, ids[i], skip_special, chunk,
									bpe_decode_bound(tok), &got, &err) == PEFT_OK);
		FUZZ_CHECK(valid_utf8(chunk, got));
		FUZZ_CHECK(used + got <= *len && memcmp(whole + used, chunk, got) == 0);
		used += got;
	}
	used += bpe_decoder_flush(&dec, chunk);
	FUZZ_CHECK(used == *len);
	free(chunk);
	return whole;
}

/* Encode text three ways (count, short buffer, alloc) and decode it; returns the decoded text. */
static char *
check_encode(const BpeTokenizer *tok, const char *text, size_t len, int flags, size_t *out_len)
{
	bool		parse_special = (flags & 2) != 0;
	int32_t		few[4];
	int32_t    *ids;
	size_t		n,
				counted,
				short_n;
	char	   *decoded;
	PeftError	err = {0};

	FUZZ_CHECK(bpe_encode(tok, text, len, parse_special, NULL, 0, &counted, &err) == PEFT_OK);
	FUZZ_CHECK(bpe_encode(tok, text, len, parse_special, few, 4, &short_n, &err) == PEFT_OK);
	FUZZ_CHECK(bpe_encode_alloc(tok, text, len, parse_special, &ids, &n, &err) == PEFT_OK);
	FUZZ_CHECK(counted == n && short_n == n);
	FUZZ_CHECK((n == 0) == (ids == NULL));
	FUZZ_CHECK(n == 0 || memcmp(few, ids, (n < 4 ? n : 4) * sizeof(int32_t)) == 0);
	for (size_t i = 0; i < n; i++)
		FUZZ_CHECK(ids[i] >= 0 && ids[i] < bpe_vocab_size(tok));
	decoded = check_decode(tok, ids, n, (flags & 4) != 0, out_len);
	free(ids);
	return decoded;
}

/* libFuzzer entry point: flags, tokenizer length, tokenizer, text. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *spec;
	const char *text;
	size_t		spec_len,
				text_len,
				len;
	BpeTokenizer *tok = NULL;
	PeftError	err = {0};
	char	   *decoded;
	int			flags;

	if (size < 3)
		return 0;
	flags = data[0];
	spec_len = fuzz_le16(data + 1);
	if (spec_len > size - 3)
		spec_len = size - 3;
	text_len = size - 3 - spec_len;
	spec = fuzz_guarded_copy(0, data + 3, spec_len);
	text = (const char *) fuzz_guarded_copy(1, data + 3 + spec_len, text_len);

	if (flags & 1)
	{
		GgufFile   *file = NULL;

		if (gguf_open_buffer(spec, spec_len, &file, &err) == PEFT_OK)
		{
			if (bpe_tokenizer_from_gguf(file, &tok, &err) != PEFT_OK)
				FUZZ_CHECK(tok == NULL);
			gguf_close(file);
		}
	}
	else if (bpe_tokenizer_from_json((const char *) spec, spec_len, &tok, &err) != PEFT_OK)
		FUZZ_CHECK(tok == NULL);
	if (tok != NULL)
	{
		FUZZ_CHECK(bpe_vocab_size(tok) > 0);
		free(check_encode(tok, text, text_len, flags, &len));
		bpe_tokenizer_free(tok);
	}

	decoded = check_encode(llama3, text, text_len, flags & ~4, &len);
	if (valid_utf8(text, text_len) && !contains(text, text_len, "<tool>"))
		FUZZ_CHECK(len == text_len && memcmp(decoded, text, len) == 0);
	free(decoded);
	free(check_encode(smollm2, text, text_len, flags, &len));
	return 0;
}
