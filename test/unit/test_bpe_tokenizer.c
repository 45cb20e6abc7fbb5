/*
 * test_bpe_tokenizer.c - the byte-level BPE tokenizer against Hugging Face.
 *
 * The references in test/fixtures/reference/bpe/ were written by
 * test/fixtures/ref_bpe.py with transformers and tokenizers:
 *   smollm2_cases.json     ids and decoded text of ~590 strings for
 *                          SmolLM2-135M-Instruct, checked from the real
 *                          GGUF (require_real_decoder) and from
 *                          smollm2_tokenizer.json (always);
 *   synthetic_cases.json   a Llama 3 style and a Qwen2 style vocabulary
 *                          trained by the tokenizers library (their
 *                          tokenizer.json, and llama3.gguf), and tiny
 *                          tokenizers for unk, byte fallback, prefix space,
 *                          added-token options...;
 *   codepoints.tsv         how Hugging Face's GPT-2 pattern and Digits
 *                          class every code point, against PCRE2's view.
 * The rest: streaming decode, the buffer API, threads, long inputs, and
 * malformed tokenizer.json and GGUF input (each an error, never a crash).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "bpe_tokenizer.h"
#include "gguf.h"
#include "model_config.h"
#include "pretokenizer.h"
#include "test_util.h"

#define BPE_DIR "test/fixtures/reference/bpe/"
/* What the streaming check may hold: one feed's output. */
#define FEED_ROOM 65536

/* ---- fixtures ---------------------------------------------------------------- */

/* A fixture file's JSON (fails the test when unreadable). */
static cJSON *
fixture_json(const char *name)
{
	char		rel[256];
	cJSON	   *json;

	snprintf(rel, sizeof(rel), BPE_DIR "%s", name);
	json = load_json_file(source_path(rel));
	if (json == NULL)
		fail_msg("cannot read %s", rel);
	return json;
}

/* A tokenizer from a fixture tokenizer.json. */
static BpeTokenizer *
fixture_tokenizer(const char *name)
{
	char		rel[256];
	BpeTokenizer *tok = NULL;
	PeftError	err = {0};

	snprintf(rel, sizeof(rel), BPE_DIR "%s", name);
	if (bpe_tokenizer_load_json(source_path(rel), &tok, &err) != PEFT_OK)
		fail_msg("%s: %s", rel, err.message);
	return tok;
}

/* A tokenizer from a GGUF file. */
static BpeTokenizer *
gguf_tokenizer(const char *path)
{
	GgufFile   *file = NULL;
	BpeTokenizer *tok = NULL;
	PeftError	err = {0};

	if (gguf_open_file(path, &file, &err) != PEFT_OK)
		fail_msg("%s: %s", path, err.message);
	if (bpe_tokenizer_from_gguf(file, &tok, &err) != PEFT_OK)
		fail_msg("%s: %s", path, err.message);
	/* the tokenizer copies what it needs: the file may go */
	gguf_close(file);
	return tok;
}

/* Value of a hex digit. */
static int
hex_digit(char c)
{
	return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* A case's text: "text", or "hex" (UTF-8 bytes) when it holds U+0000; malloc'ed. */
static char *
case_text(const cJSON *c, size_t *len)
{
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
	const cJSON *hex = cJSON_GetObjectItemCaseSensitive(c, "hex");
	char	   *out;

	if (cJSON_IsString(text))
	{
		*len = strlen(text->valuestring);
		out = malloc(*len + 1);
		memcpy(out, text->valuestring, *len + 1);
		return out;
	}
	assert_true(cJSON_IsString(hex));
	*len = strlen(hex->valuestring) / 2;
	out = malloc(*len + 1);
	for (size_t i = 0; i < *len; i++)
		out[i] = (char) (hex_digit(hex->valuestring[2 * i]) * 16 + hex_digit(hex->valuestring[2 * i + 1]));
	out[*len] = '\0';
	return out;
}

/* An array of ids as a malloc'ed int32 array. */
static int32_t *
json_ids(const cJSON *arr, size_t *n)
{
	int32_t    *ids;
	const cJSON *item;
	size_t		k = 0;

	assert_true(cJSON_IsArray(arr));
	*n = (size_t) cJSON_GetArraySize(arr);
	ids = malloc((*n + 1) * sizeof(int32_t));
	cJSON_ArrayForEach(item, arr)
		ids[k++] = (int32_t) item->valuedouble;
	return ids;
}

/* Print ids for a mismatch report. */
static void
print_ids(const char *label, const int32_t *ids, size_t n)
{
	print_message("  %s", label);
	for (size_t i = 0; i < n && i < 40; i++)
		print_message(" %d", ids[i]);
	print_message(n > 40 ? " ...\n" : "\n");
}

/* Whether s[0..len) is valid UTF-8 (a chunk the streaming decoder wrote). */
static bool
valid_utf8(const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *) s;

	for (size_t i = 0; i < len;)
	{
		size_t		n = p[i] < 0x80 ? 1 : p[i] < 0xC2 ? 0 : p[i] < 0xE0 ? 2 : p[i] < 0xF0 ? 3 :
			p[i] < 0xF5 ? 4 : 0;

		if (n == 0 || i + n > len)
			return false;
		for (size_t k = 1; k < n; k++)
			if ((p[i + k] & 0xC0) != 0x80)
				return false;
		i += n;
	}
	return true;
}

/*
 * Feed ids one by one to a streaming decoder: every chunk must be valid
 * UTF-8 and the chunks together the whole decode.
 */
static bool
streaming_matches(const BpeTokenizer *tok, const int32_t *ids, size_t n, const char *whole,
				  size_t whole_len)
{
	static char chunk[FEED_ROOM];
	BpeDecoder	dec;
	char	   *all = malloc(whole_len + 4 * n + 8);
	size_t		used = 0;
	bool		ok = true;
	PeftError	err = {0};

	assert_true(bpe_decode_bound(tok) <= FEED_ROOM);
	bpe_decoder_init(&dec);
	for (size_t i = 0; i < n && ok; i++)
	{
		size_t		got;

		assert_int_equal(bpe_decoder_feed(tok, &dec, ids[i], false, chunk, FEED_ROOM, &got, &err), PEFT_OK);
		ok = valid_utf8(chunk, got) && used + got <= whole_len;
		if (ok)
			memcpy(all + used, chunk, got);
		used += got;
	}
	if (ok)
		used += bpe_decoder_flush(&dec, all + used);
	ok = ok && used == whole_len && memcmp(all, whole, whole_len) == 0;
	free(all);
	return ok;
}

/*
 * Check every case: ids with special tokens parsed ("ids") and read as
 * text ("ids_plain", else "ids"), the decoded text ("decoded", else the
 * text), and the streaming decoder.  Returns the number of cases.
 */
static int
check_cases(const BpeTokenizer *tok, const cJSON *cases, const char *label)
{
	const cJSON *c;
	int			n_cases = 0;
	int			bad = 0;

	assert_true(cJSON_IsArray(cases));
	cJSON_ArrayForEach(c, cases)
	{
		size_t		len,
					n_want,
					n_plain,
					n_got,
					n_got_plain,
					dlen;
		char	   *text = case_text(c, &len);
		const cJSON *plain_item = cJSON_GetObjectItemCaseSensitive(c, "ids_plain");
		const cJSON *decoded_item = cJSON_GetObjectItemCaseSensitive(c, "decoded");
		int32_t    *want = json_ids(cJSON_GetObjectItemCaseSensitive(c, "ids"), &n_want);
		int32_t    *plain = plain_item ? json_ids(plain_item, &n_plain) : NULL;
		int32_t    *got = NULL;
		int32_t    *got_plain = NULL;
		const char *want_text = decoded_item ? decoded_item->valuestring : text;
		size_t		want_len = decoded_item ? strlen(want_text) : len;
		char	   *decoded = NULL;
		PeftError	err = {0};
		bool		ok;

		assert_int_equal(bpe_encode_alloc(tok, text, len, true, &got, &n_got, &err), PEFT_OK);
		assert_int_equal(bpe_encode_alloc(tok, text, len, false, &got_plain, &n_got_plain, &err), PEFT_OK);
		if (plain == NULL)
		{
			plain = want;
			n_plain = n_want;
		}
		assert_int_equal(bpe_decode(tok, want, n_want, false, &decoded, &dlen, &err), PEFT_OK);
		ok = n_got == n_want && (n_got == 0 || memcmp(got, want, n_got * sizeof(int32_t)) == 0) &&
			n_got_plain == n_plain && (n_plain == 0 || memcmp(got_plain, plain, n_plain * sizeof(int32_t)) == 0) &&
			dlen == want_len && memcmp(decoded, want_text, dlen) == 0 &&
			streaming_matches(tok, want, n_want, decoded, dlen);
		if (!ok)
		{
			if (bad < 8)
			{
				print_message("%s: case %d \"%.60s\" differs\n", label, n_cases, text);
				print_ids("got     ", got, n_got);
				print_ids("expected", want, n_want);
				print_ids("got plain     ", got_plain, n_got_plain);
				print_ids("expected plain", plain, n_plain);
				print_message("  decoded \"%.60s\"\n", decoded);
			}
			bad++;
		}
		if (plain != want)
			free(plain);
		free(want);
		free(got);
		free(got_plain);
		free(decoded);
		free(text);
		n_cases++;
	}
	if (bad > 0)
		fail_msg("%s: %d of %d cases differ from Hugging Face", label, bad, n_cases);
	print_message("%s: %d cases identical to Hugging Face\n", label, n_cases);
	return n_cases;
}

/* The invalid byte sequences of smollm2_cases.json decode as Hugging Face's. */
static void
check_invalid_decodes(const BpeTokenizer *tok, const cJSON *doc)
{
	const cJSON *c;
	int			n = 0;

	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(doc, "invalid_decodes"))
	{
		size_t		n_ids,
					len;
		int32_t    *ids = json_ids(cJSON_GetObjectItemCaseSensitive(c, "ids"), &n_ids);
		const char *want = cJSON_GetObjectItemCaseSensitive(c, "decoded")->valuestring;
		char	   *got;
		PeftError	err = {0};

		assert_int_equal(bpe_decode(tok, ids, n_ids, false, &got, &len, &err), PEFT_OK);
		if (len != strlen(want) || memcmp(got, want, len) != 0)
			fail_msg("invalid UTF-8 case %d decodes as \"%s\", expected \"%s\"", n, got, want);
		assert_true(streaming_matches(tok, ids, n_ids, got, len));
		free(got);
		free(ids);
		n++;
	}
	assert_true(n >= 50);
}


/* ---- SmolLM2 ----------------------------------------------------------------- */

/* From the real GGUF: every case as transformers, and the GGUF's special ids. */
static void
test_smollm2_gguf(void **state)
{
	const char *path = real_decoder_gguf();
	BpeTokenizer *tok;
	cJSON	   *doc;

	require_real_decoder(path != NULL);
	tok = gguf_tokenizer(path);
	doc = fixture_json("smollm2_cases.json");
	assert_int_equal(bpe_vocab_size(tok), 49152);
	assert_int_equal(bpe_bos_id(tok), 1);
	assert_int_equal(bpe_eos_id(tok), 2);
	assert_int_equal(bpe_pad_id(tok), 2);
	assert_int_equal(bpe_unk_id(tok), 0);
	assert_false(bpe_add_bos(tok));
	assert_false(bpe_add_eos(tok));
	assert_int_equal(bpe_token_id(tok, "<|im_end|>", 10), 2);
	assert_int_equal(bpe_token_id(tok, "<|im_start|>", 12), 1);
	for (int32_t id = 0; id < 17; id++)
		assert_true(bpe_is_control(tok, id));
	assert_false(bpe_is_control(tok, 17));
	assert_true(check_cases(tok, cJSON_GetObjectItemCaseSensitive(doc, "cases"), "SmolLM2 GGUF") >= 400);
	check_invalid_decodes(tok, doc);
	cJSON_Delete(doc);
	bpe_tokenizer_free(tok);
}

/* From the tokenizer.json transformers saved: the same ids. */
static void
test_smollm2_json(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	cJSON	   *doc = fixture_json("smollm2_cases.json");

	assert_int_equal(bpe_vocab_size(tok), 49152);
	/* a tokenizer.json names no BOS/EOS */
	assert_int_equal(bpe_bos_id(tok), -1);
	assert_int_equal(bpe_eos_id(tok), -1);
	assert_int_equal(bpe_token_id(tok, "<|im_end|>", 10), 2);
	assert_true(bpe_is_control(tok, 0));
	assert_true(check_cases(tok, cJSON_GetObjectItemCaseSensitive(doc, "cases"), "SmolLM2 tokenizer.json") >= 400);
	check_invalid_decodes(tok, doc);
	cJSON_Delete(doc);
	bpe_tokenizer_free(tok);
}

/* Token texts, lookups and flags. */
static void
test_vocabulary(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	size_t		len;
	const char *t;
	int32_t		id;

	t = bpe_token_text(tok, 2, &len);
	assert_non_null(t);
	assert_int_equal(len, 10);
	assert_memory_equal(t, "<|im_end|>", 10);
	/* model tokens are spelled in the byte alphabet: " world" is "Ġworld" */
	id = bpe_token_id(tok, "\xc4\xa0world", 7);
	assert_int_equal(id, 905);
	t = bpe_token_text(tok, id, &len);
	assert_int_equal(len, 7);
	assert_memory_equal(t, "\xc4\xa0world", 7);
	assert_false(bpe_is_control(tok, id));
	assert_int_equal(bpe_token_id(tok, "no such token", 13), -1);
	assert_null(bpe_token_text(tok, -1, &len));
	assert_null(bpe_token_text(tok, 49152, &len));
	assert_false(bpe_is_control(tok, -1));
	assert_false(bpe_is_control(tok, 1 << 30));
	assert_int_equal(bpe_vocab_size(NULL), 0);
	assert_int_equal(bpe_token_id(NULL, "a", 1), -1);
	bpe_tokenizer_free(tok);
	bpe_tokenizer_free(NULL);
}


/* ---- the second family and the options ----------------------------------------- */

/* The Llama 3 style vocabulary from its tokenizer.json and from llama.cpp's GGUF. */
static void
test_llama3(void **state)
{
	cJSON	   *doc = fixture_json("synthetic_cases.json");
	const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "llama3");
	BpeTokenizer *tok = fixture_tokenizer("llama3_tokenizer.json");

	assert_true(check_cases(tok, cases, "Llama 3 tokenizer.json") >= 400);
	bpe_tokenizer_free(tok);
	tok = gguf_tokenizer(source_path(BPE_DIR "llama3.gguf"));
	assert_int_equal(bpe_bos_id(tok), bpe_token_id(tok, "<|begin_of_text|>", 17));
	assert_int_equal(bpe_eos_id(tok), bpe_token_id(tok, "<|eot_id|>", 10));
	assert_true(bpe_add_bos(tok));
	assert_true(bpe_is_control(tok, bpe_eos_id(tok)));
	assert_false(bpe_is_control(tok, bpe_token_id(tok, "<tool>", 6)));
	/*
	 * The GGUF knows no lstrip or single_word: its added tokens match
	 * plainly, so only the cases without them are compared.
	 */
	{
		cJSON	   *plain = cJSON_CreateArray();
		const cJSON *c;

		cJSON_ArrayForEach(c, cases)
		{
			const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");

			if (!cJSON_IsString(text) || (strstr(text->valuestring, "<tool>") == NULL &&
										  strstr(text->valuestring, "[[word]]") == NULL))
				cJSON_AddItemToArray(plain, cJSON_Duplicate(c, true));
		}
		assert_true(check_cases(tok, plain, "Llama 3 GGUF") >= 400);
		cJSON_Delete(plain);
	}
	bpe_tokenizer_free(tok);
	cJSON_Delete(doc);
}

/* The Qwen2 style vocabulary (single digits, NFC). */
static void
test_qwen2(void **state)
{
	cJSON	   *doc = fixture_json("synthetic_cases.json");
	BpeTokenizer *tok = fixture_tokenizer("qwen2_tokenizer.json");

	assert_true(check_cases(tok, cJSON_GetObjectItemCaseSensitive(doc, "qwen2"), "Qwen2 tokenizer.json") >= 400);
	bpe_tokenizer_free(tok);
	cJSON_Delete(doc);
}

/* The tiny tokenizers: unk, fuse_unk, byte_fallback, prefix space, added-token options. */
static void
test_features(void **state)
{
	cJSON	   *doc = fixture_json("synthetic_cases.json");
	const cJSON *f;
	int			n = 0;

	cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(doc, "features"))
	{
		const char *name = cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring;
		char	   *json = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(f, "tokenizer"));
		BpeTokenizer *tok = NULL;
		PeftError	err = {0};

		if (bpe_tokenizer_from_json(json, strlen(json), &tok, &err) != PEFT_OK)
			fail_msg("feature %s: %s", name, err.message);
		check_cases(tok, cJSON_GetObjectItemCaseSensitive(f, "cases"), name);
		bpe_tokenizer_free(tok);
		free(json);
		n++;
	}
	assert_int_equal(n, 10);
	cJSON_Delete(doc);
}


/* ---- the pre-tokenizer's Unicode classes --------------------------------------- */

/* Offsets of the pieces a pre-tokenizer makes of a probe. */
typedef struct Pieces
{
	const char *base;
	int			n;
	size_t		start[8];
	size_t		end[8];
} Pieces;

/* PretokSink: record a piece's offsets. */
static PeftCode
record_piece(void *ctx, const char *piece, size_t len, PeftError *err)
{
	Pieces	   *p = ctx;

	if (p->n < 8)
	{
		p->start[p->n] = (size_t) (piece - p->base);
		p->end[p->n] = p->start[p->n] + len;
	}
	p->n++;
	return PEFT_OK;
}

/* Cut before c after (UTF-8 of one code point in the middle). */
static Pieces
cut(const Pretokenizer *pre, char before, const char *c, size_t clen, char after)
{
	static char probe[8];
	Pieces		p = {probe, 0, {0}, {0}};
	PeftError	err = {0};

	probe[0] = before;
	memcpy(probe + 1, c, clen);
	probe[1 + clen] = after;
	assert_int_equal(pretokenizer_run(pre, probe, clen + 2, record_piece, &p, &err), PEFT_OK);
	return p;
}

/* The class codepoints.tsv gives a code point as PCRE2 sees it (see ref_bpe.py). */
static int
pcre2_class(const Pretokenizer *gpt2, const Pretokenizer *digits, uint32_t cp)
{
	char		c[4];
	size_t		n;
	int			cls = 0;
	Pieces		p;

	if (cp < 0x80)
		c[0] = (char) cp, n = 1;
	else if (cp < 0x800)
		c[0] = (char) (0xC0 | (cp >> 6)), c[1] = (char) (0x80 | (cp & 0x3F)), n = 2;
	else if (cp < 0x10000)
		c[0] = (char) (0xE0 | (cp >> 12)), c[1] = (char) (0x80 | ((cp >> 6) & 0x3F)),
			c[2] = (char) (0x80 | (cp & 0x3F)), n = 3;
	else
		c[0] = (char) (0xF0 | (cp >> 18)), c[1] = (char) (0x80 | ((cp >> 12) & 0x3F)),
			c[2] = (char) (0x80 | ((cp >> 6) & 0x3F)), c[3] = (char) (0x80 | (cp & 0x3F)), n = 4;
	p = cut(gpt2, 'a', c, n, '1');
	if (cp == 0x20)
		cls |= 4;
	else if (p.n == 2 && p.end[0] == 1 + n)
		cls |= 1;
	else if (p.n == 2 && p.end[0] == 1)
		cls |= 2;
	else if (cut(gpt2, '!', c, n, '!').n == 3)
		cls |= 4;
	if (cut(digits, 'a', c, n, 'a').n == 3)
		cls |= 8;
	return cls;
}

/* Every code point is a letter, number, space or numeric as Hugging Face says. */
static void
test_codepoint_classes(void **state)
{
	char	   *data;
	size_t		len;
	PeftError	err = {0};
	Pretokenizer *gpt2;
	Pretokenizer *digits;
	uint32_t   *first = malloc(4096 * sizeof(uint32_t));
	int		   *cls = malloc(4096 * sizeof(int));
	int			nruns = 0;
	int			bad = 0;
	int			run = 0;

	assert_int_equal(read_small_file(source_path(BPE_DIR "codepoints.tsv"), 1 << 20, &data, &len, &err), PEFT_OK);
	for (char *line = strtok(data, "\n"); line != NULL; line = strtok(NULL, "\n"))
	{
		if (line[0] == '#')
			continue;
		assert_true(nruns < 4096);
		assert_int_equal(sscanf(line, "%x\t%d", &first[nruns], &cls[nruns]), 2);
		nruns++;
	}
	assert_true(nruns > 1000);
	assert_int_equal(pretokenizer_from_name("gpt2", &gpt2, &err), PEFT_OK);
	assert_int_equal(pretokenizer_create(&digits, &err), PEFT_OK);
	assert_int_equal(pretokenizer_add_digits(digits, true, &err), PEFT_OK);
	for (uint32_t cp = 0; cp < 0x110000; cp++)
	{
		int			got;

		if (cp >= 0xD800 && cp <= 0xDFFF)
			continue;
		while (run + 1 < nruns && first[run + 1] <= cp)
			run++;
		got = pcre2_class(gpt2, digits, cp);
		if (got != cls[run])
		{
			if (bad < 20)
				print_message("U+%04X: PCRE2 class %d, Hugging Face %d\n", cp, got, cls[run]);
			bad++;
		}
	}
	print_message("code points classed differently from Hugging Face: %d\n", bad);
	assert_int_equal(bad, 0);
	pretokenizer_free(gpt2);
	pretokenizer_free(digits);
	free(first);
	free(cls);
	free(data);
}


/* ---- the API ------------------------------------------------------------------- */

/* Counting, a short buffer, the alloc form, and bad arguments. */
static void
test_encode_buffers(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	const char *text = "<|im_start|>user\nhi<|im_end|>";
	const int32_t want[] = {1, 4093, 198, 6004, 2};
	int32_t		ids[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
	int32_t    *all;
	size_t		n;
	PeftError	err = {0};

	assert_int_equal(bpe_encode(tok, text, strlen(text), true, NULL, 0, &n, &err), PEFT_OK);
	assert_int_equal(n, 5);
	assert_int_equal(bpe_encode(tok, text, strlen(text), true, ids, 3, &n, &err), PEFT_OK);
	assert_int_equal(n, 5);
	assert_memory_equal(ids, want, 3 * sizeof(int32_t));
	assert_int_equal(ids[3], -7);
	assert_int_equal(bpe_encode(tok, text, strlen(text), true, ids, 8, &n, &err), PEFT_OK);
	assert_int_equal(n, 5);
	assert_memory_equal(ids, want, sizeof(want));
	assert_int_equal(bpe_encode_alloc(tok, text, strlen(text), true, &all, &n, &err), PEFT_OK);
	assert_int_equal(n, 5);
	assert_memory_equal(all, want, sizeof(want));
	free(all);
	assert_int_equal(bpe_encode_alloc(tok, "", 0, true, &all, &n, &err), PEFT_OK);
	assert_int_equal(n, 0);
	assert_null(all);
	assert_int_equal(bpe_encode(tok, NULL, 0, true, NULL, 0, &n, &err), PEFT_OK);
	assert_int_equal(n, 0);
	assert_int_equal(bpe_encode(NULL, "a", 1, true, ids, 8, &n, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_encode(tok, NULL, 1, true, ids, 8, &n, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_encode(tok, "a", 1, true, NULL, 8, &n, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_encode(tok, "a", 1, true, ids, 8, NULL, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_encode(tok, "a", BPE_MAX_TEXT_BYTES + 1, true, ids, 8, &n, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_encode_alloc(tok, "a", 1, true, NULL, &n, &err), PEFT_ERR_INVALID);
	bpe_tokenizer_free(tok);
}

/*
 * Invalid UTF-8 in the text is encoded byte by byte (bytes with a token),
 * and decodes back to U+FFFD as Hugging Face would show it.
 */
static void
test_encode_invalid_utf8(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	const char	text[] = "ab\xe6\x97 cd\x80\xbf!";
	int32_t    *ids;
	size_t		n,
				len;
	char	   *back;
	PeftError	err = {0};

	assert_int_equal(bpe_encode_alloc(tok, text, sizeof(text) - 1, true, &ids, &n, &err), PEFT_OK);
	assert_true(n >= 6);
	assert_int_equal(bpe_decode(tok, ids, n, false, &back, &len, &err), PEFT_OK);
	assert_string_equal(back, "ab\xef\xbf\xbd cd\xef\xbf\xbd\xef\xbf\xbd!");
	free(back);
	free(ids);
	bpe_tokenizer_free(tok);
}

/* A character cut over tokens is held until complete; flush gives U+FFFD. */
static void
test_streaming_decode(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	const char *hug = "\xf0\x9f\xa4\x97";	/* U+1F917, several tokens */
	static char out[FEED_ROOM];
	BpeDecoder	dec,
				copy;
	int32_t    *ids;
	size_t		n,
				got;
	PeftError	err = {0};

	assert_int_equal(bpe_encode_alloc(tok, hug, 4, true, &ids, &n, &err), PEFT_OK);
	assert_true(n >= 2);
	bpe_decoder_init(&dec);
	for (size_t i = 0; i + 1 < n; i++)
	{
		assert_int_equal(bpe_decoder_feed(tok, &dec, ids[i], false, out, sizeof(out), &got, &err), PEFT_OK);
		assert_int_equal(got, 0);
	}
	copy = dec;
	assert_int_equal(bpe_decoder_feed(tok, &dec, ids[n - 1], false, out, sizeof(out), &got, &err), PEFT_OK);
	assert_int_equal(got, 4);
	assert_memory_equal(out, hug, 4);
	assert_int_equal(bpe_decoder_flush(&dec, out), 0);
	/* the stream ends inside the character: one U+FFFD */
	assert_int_equal(bpe_decoder_flush(&copy, out), 3);
	assert_memory_equal(out, "\xef\xbf\xbd", 3);
	assert_int_equal(bpe_decoder_flush(&copy, out), 0);
	/* a special token in the middle ends the character: U+FFFD, then the token */
	bpe_decoder_init(&dec);
	assert_int_equal(bpe_decoder_feed(tok, &dec, ids[0], false, out, sizeof(out), &got, &err), PEFT_OK);
	assert_int_equal(bpe_decoder_feed(tok, &dec, 2, false, out, sizeof(out), &got, &err), PEFT_OK);
	assert_int_equal(got, 13);
	assert_memory_equal(out, "\xef\xbf\xbd<|im_end|>", 13);
	/* skipped special tokens give nothing */
	assert_int_equal(bpe_decoder_feed(tok, &dec, 2, true, out, sizeof(out), &got, &err), PEFT_OK);
	assert_int_equal(got, 0);
	free(ids);
	bpe_tokenizer_free(tok);
}

/* Ids out of range and a short output buffer are refused; the state is kept. */
static void
test_decode_errors(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	static char out[FEED_ROOM];
	BpeDecoder	dec;
	size_t		got,
				len;
	char	   *text;
	const int32_t bad[] = {19556, 49152};
	const int32_t with_special[] = {1, 19556, 2};
	PeftError	err = {0};

	bpe_decoder_init(&dec);
	assert_int_equal(bpe_decoder_feed(tok, &dec, -1, false, out, sizeof(out), &got, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_decoder_feed(tok, &dec, 49152, false, out, sizeof(out), &got, &err), PEFT_ERR_INVALID);
	assert_non_null(strstr(err.message, "49152"));
	assert_int_equal(bpe_decoder_feed(tok, &dec, 5, false, out, bpe_decode_bound(tok) - 1, &got, &err),
					 PEFT_ERR_INVALID);
	assert_int_equal(bpe_decoder_feed(tok, NULL, 5, false, out, sizeof(out), &got, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_decode(tok, bad, 2, false, &text, &len, &err), PEFT_ERR_INVALID);
	assert_null(text);
	assert_int_equal(bpe_decode(tok, NULL, 1, false, &text, &len, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_decode(tok, NULL, 0, false, &text, &len, &err), PEFT_OK);
	assert_int_equal(len, 0);
	assert_string_equal(text, "");
	free(text);
	assert_int_equal(bpe_decode(tok, with_special, 3, true, &text, &len, &err), PEFT_OK);
	assert_string_equal(text, "Hello");
	free(text);
	assert_int_equal(bpe_decode(tok, with_special, 3, false, &text, &len, &err), PEFT_OK);
	assert_string_equal(text, "<|im_start|>Hello<|im_end|>");
	free(text);
	bpe_tokenizer_free(tok);
}

/* Seconds since some fixed point. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* Encode and decode back; returns the seconds encoding took. */
static double
round_trip(const BpeTokenizer *tok, const char *text, size_t len, size_t *n_ids)
{
	int32_t    *ids;
	char	   *back;
	size_t		blen;
	double		t0 = now_seconds();
	double		took;
	PeftError	err = {0};

	assert_int_equal(bpe_encode_alloc(tok, text, len, true, &ids, n_ids, &err), PEFT_OK);
	took = now_seconds() - t0;
	assert_int_equal(bpe_decode(tok, ids, *n_ids, false, &back, &blen, &err), PEFT_OK);
	assert_int_equal(blen, len);
	assert_memory_equal(back, text, len);
	free(back);
	free(ids);
	return took;
}

/*
 * Pieces of a megabyte (one word of letters, one run of spaces) encode in
 * about linear time: a quadratic merge loop would take minutes.
 */
static void
test_long_pieces(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	size_t		len = 1 << 20;
	char	   *text = malloc(len);
	size_t		n;
	double		t_letters,
				t_random,
				t_spaces;
	unsigned	seed = 7;

	memset(text, 'a', len);
	t_letters = round_trip(tok, text, len, &n);
	for (size_t i = 0; i < len; i++)
	{
		seed = seed * 1103515245u + 12345u;
		text[i] = (char) ('a' + (seed >> 16) % 26);
	}
	t_random = round_trip(tok, text, len, &n);
	assert_true(n > len / 8);
	memset(text, ' ', len);
	t_spaces = round_trip(tok, text, len, &n);
	print_message("1 MiB piece: 'a' %.2f s, random letters %.2f s, spaces %.2f s\n",
				  t_letters, t_random, t_spaces);
	/* generous: sanitizer builds are several times slower */
	assert_true(t_letters < 20 && t_random < 20 && t_spaces < 20);
	free(text);
	bpe_tokenizer_free(tok);
}

/* What one thread of test_threads encodes and checks. */
typedef struct ThreadJob
{
	const BpeTokenizer *tok;
	const cJSON *cases;
	int			mismatches;
} ThreadJob;

/* Encode every case and count those that differ from the reference. */
static void *
thread_main(void *arg)
{
	ThreadJob  *job = arg;
	const cJSON *c;

	for (int round = 0; round < 3; round++)
		cJSON_ArrayForEach(c, job->cases)
		{
			size_t		len,
						n_want,
						n;
			char	   *text = case_text(c, &len);
			int32_t    *want = json_ids(cJSON_GetObjectItemCaseSensitive(c, "ids"), &n_want);
			int32_t    *got = NULL;
			PeftError	err = {0};

			if (bpe_encode_alloc(job->tok, text, len, true, &got, &n, &err) != PEFT_OK || n != n_want ||
				(n > 0 && memcmp(got, want, n * sizeof(int32_t)) != 0))
				job->mismatches++;
			free(got);
			free(want);
			free(text);
		}
	return NULL;
}

/* Four threads share one tokenizer. */
static void
test_threads(void **state)
{
	BpeTokenizer *tok = fixture_tokenizer("smollm2_tokenizer.json");
	cJSON	   *doc = fixture_json("smollm2_cases.json");
	pthread_t	threads[4];
	ThreadJob	jobs[4];

	for (int i = 0; i < 4; i++)
	{
		jobs[i].tok = tok;
		jobs[i].cases = cJSON_GetObjectItemCaseSensitive(doc, "cases");
		jobs[i].mismatches = 0;
		assert_int_equal(pthread_create(&threads[i], NULL, thread_main, &jobs[i]), 0);
	}
	for (int i = 0; i < 4; i++)
	{
		assert_int_equal(pthread_join(threads[i], NULL), 0);
		assert_int_equal(jobs[i].mismatches, 0);
	}
	cJSON_Delete(doc);
	bpe_tokenizer_free(tok);
}


/* ---- malformed tokenizer.json ---------------------------------------------------- */

/* A small valid tokenizer.json that the faults below change one thing of. */
#define GOOD_PRE "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define GOOD_DECODER "{\"type\":\"ByteLevel\"}"
#define GOOD_VOCAB "{\"a\":0,\"b\":1,\"ab\":2,\"\xc4\xa0\":3}"
#define GOOD_MERGES "[\"a b\"]"
#define TOKENIZER_JSON(added, norm, pre, decoder, model) \
	"{\"added_tokens\":" added ",\"normalizer\":" norm ",\"pre_tokenizer\":" pre \
	",\"decoder\":" decoder ",\"model\":" model "}"
#define MODEL(vocab, merges) "{\"type\":\"BPE\",\"vocab\":" vocab ",\"merges\":" merges "}"
#define GOOD_JSON TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES))

/* The code bpe_tokenizer_from_json gives for json. */
static PeftCode
json_code(const char *json, PeftError *err)
{
	BpeTokenizer *tok = NULL;
	PeftCode	rc = bpe_tokenizer_from_json(json, strlen(json), &tok, err);

	assert_true((rc == PEFT_OK) == (tok != NULL));
	bpe_tokenizer_free(tok);
	return rc;
}

/* One fault: its JSON, the code it must give, a word the message must hold. */
typedef struct JsonFault
{
	const char *json;
	PeftCode	code;
	const char *message;
} JsonFault;

/* Each fault is refused with the right code and a message naming it. */
static void
test_malformed_json(void **state)
{
	static const JsonFault faults[] = {
		{"", PEFT_ERR_FORMAT, "JSON"},
		{"[1,2]", PEFT_ERR_FORMAT, "object"},
		{"{}", PEFT_ERR_FORMAT, "vocab"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, "{\"type\":\"BPE\",\"merges\":[]}"),
		PEFT_ERR_FORMAT, "vocab"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, "{\"type\":\"BPE\",\"vocab\":" GOOD_VOCAB "}"),
		PEFT_ERR_FORMAT, "merges"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{}", "[]")), PEFT_ERR_FORMAT, "ids"},
		/* merges: unknown part, unknown result, not two parts, bad pair */
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[\"a c\"]")),
		PEFT_ERR_FORMAT, "merge 1"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[\"a b\",\"b a\"]")),
		PEFT_ERR_FORMAT, "merge 2"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[\"ab\"]")),
		PEFT_ERR_FORMAT, "one space"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[\"a  b\"]")),
		PEFT_ERR_FORMAT, "one space"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[[\"a\"]]")),
		PEFT_ERR_FORMAT, "merge 1"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[[\"a\",2]]")),
		PEFT_ERR_FORMAT, "merge 1"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, "[7]")),
		PEFT_ERR_FORMAT, "merge 1"},
		/* ids: negative, fractional, too large, not a number, twice */
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"a\":-1}", "[]")), PEFT_ERR_FORMAT, "id"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"a\":0.5}", "[]")), PEFT_ERR_FORMAT, "id"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"a\":1e12}", "[]")), PEFT_ERR_FORMAT, "id"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"a\":\"0\"}", "[]")), PEFT_ERR_FORMAT, "id"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"a\":0,\"b\":0}", "[]")),
		PEFT_ERR_FORMAT, "twice"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER, MODEL("{\"\xff\":0}", "[]")),
		PEFT_ERR_FORMAT, "UTF-8"},
		/* added tokens */
		{TOKENIZER_JSON("{}", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "added_tokens"},
		{TOKENIZER_JSON("[{\"id\":9}]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "content"},
		{TOKENIZER_JSON("[{\"content\":\"<s>\"}]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "id"},
		{TOKENIZER_JSON("[{\"id\":4,\"content\":\"\"}]", "null", GOOD_PRE, GOOD_DECODER,
						MODEL(GOOD_VOCAB, GOOD_MERGES)), PEFT_ERR_FORMAT, "empty"},
		{TOKENIZER_JSON("[{\"id\":4,\"content\":\"<s>\"},{\"id\":4,\"content\":\"<t>\"}]", "null", GOOD_PRE,
						GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)), PEFT_ERR_FORMAT, "twice"},
		{TOKENIZER_JSON("[{\"id\":4,\"content\":\"<s>\",\"special\":1}]", "null", GOOD_PRE, GOOD_DECODER,
						MODEL(GOOD_VOCAB, GOOD_MERGES)), PEFT_ERR_FORMAT, "boolean"},
		{TOKENIZER_JSON("[7]", "null", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "object"},
		/* unsupported parts */
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER,
						"{\"type\":\"WordPiece\",\"vocab\":" GOOD_VOCAB ",\"merges\":[]}"),
		PEFT_ERR_UNSUPPORTED, "WordPiece"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER,
						"{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":" GOOD_VOCAB ",\"merges\":[]}"),
		PEFT_ERR_UNSUPPORTED, "dropout"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER,
						"{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"vocab\":" GOOD_VOCAB ",\"merges\":[]}"),
		PEFT_ERR_UNSUPPORTED, "continuing_subword_prefix"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, GOOD_DECODER,
						"{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":" GOOD_VOCAB ",\"merges\":[]}"),
		PEFT_ERR_FORMAT, "unk_token"},
		{TOKENIZER_JSON("[]", "{\"type\":\"NFKC\"}", GOOD_PRE, GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "NFKC"},
		{TOKENIZER_JSON("[]", "null", "null", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "ByteLevel"},
		{TOKENIZER_JSON("[]", "null", "{\"type\":\"Metaspace\"}", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "Metaspace"},
		{TOKENIZER_JSON("[]", "null", "{\"type\":\"Sequence\",\"pretokenizers\":[" GOOD_PRE ",{\"type\":\"Digits\"}]}",
						GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)), PEFT_ERR_UNSUPPORTED, "end with ByteLevel"},
		{TOKENIZER_JSON("[]", "null", "{\"type\":\"Sequence\"}", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "Sequence"},
		{TOKENIZER_JSON("[]", "null",
						"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
						"\"behavior\":\"Isolated\"}," GOOD_PRE "]}", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "pattern"},
		{TOKENIZER_JSON("[]", "null",
						"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
						"\"behavior\":\"Removed\"}," GOOD_PRE "]}", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "Removed"},
		{TOKENIZER_JSON("[]", "null",
						"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
						"\"behavior\":\"Isolated\",\"invert\":true}," GOOD_PRE "]}", GOOD_DECODER,
						MODEL(GOOD_VOCAB, GOOD_MERGES)), PEFT_ERR_UNSUPPORTED, "inverted"},
		{TOKENIZER_JSON("[]", "null",
						"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{},"
						"\"behavior\":\"Isolated\"}," GOOD_PRE "]}", GOOD_DECODER, MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_FORMAT, "String"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, "null", MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "decoder"},
		{TOKENIZER_JSON("[]", "null", GOOD_PRE, "{\"type\":\"WordPiece\"}", MODEL(GOOD_VOCAB, GOOD_MERGES)),
		PEFT_ERR_UNSUPPORTED, "decoder"},
	};
	PeftError	err = {0};

	assert_int_equal(json_code(GOOD_JSON, &err), PEFT_OK);
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
	{
		PeftCode	rc = json_code(faults[i].json, &err);

		if (rc != faults[i].code || strstr(err.message, faults[i].message) == NULL)
			fail_msg("fault %zu: code %d (%s), expected %d with \"%s\"\n  %s", i, rc, err.message,
					 faults[i].code, faults[i].message, faults[i].json);
	}
	assert_int_equal(bpe_tokenizer_from_json(NULL, 0, NULL, &err), PEFT_ERR_INVALID);
	assert_int_equal(bpe_tokenizer_load_json("/nonexistent/tokenizer.json", &(BpeTokenizer *) {NULL}, &err),
					 PEFT_ERR_IO);
}

/* Every prefix of a real tokenizer.json is refused (a prefix is never whole JSON). */
static void
test_truncated_json(void **state)
{
	char	   *data;
	size_t		len;
	PeftError	err = {0};
	BpeTokenizer *tok;

	assert_int_equal(read_small_file(source_path(BPE_DIR "llama3_tokenizer.json"), 1 << 20, &data, &len, &err),
					 PEFT_OK);
	assert_int_equal(bpe_tokenizer_from_json(data, len, &tok, &err), PEFT_OK);
	bpe_tokenizer_free(tok);
	for (size_t cut = 0; cut < len; cut += 1 + cut / 64)
	{
		tok = (BpeTokenizer *) 1;
		assert_int_equal(bpe_tokenizer_from_json(data, cut, &tok, &err), PEFT_ERR_FORMAT);
		assert_null(tok);
	}
	free(data);
}


/* ---- malformed GGUF ----------------------------------------------------------- */

/* A GGUF image built in memory: header and key/values, no tensors. */
typedef struct GgufImage
{
	uint8_t    *buf;
	size_t		len;
	size_t		cap;
	uint64_t	nkv;
} GgufImage;

/* Append bytes. */
static void
image_put(GgufImage *g, const void *p, size_t n)
{
	if (g->len + n > g->cap)
	{
		g->cap = 2 * (g->len + n) + 256;
		g->buf = realloc(g->buf, g->cap);
	}
	memcpy(g->buf + g->len, p, n);
	g->len += n;
}

/* Append a little-endian integer of n bytes. */
static void
image_int(GgufImage *g, uint64_t v, size_t n)
{
	image_put(g, &v, n);
}

/* Append a GGUF string. */
static void
image_string(GgufImage *g, const char *s)
{
	image_int(g, strlen(s), 8);
	image_put(g, s, strlen(s));
}

/* Start an image: magic, version 3, no tensors, the key count patched at the end. */
static void
image_start(GgufImage *g)
{
	memset(g, 0, sizeof(*g));
	image_put(g, "GGUF", 4);
	image_int(g, 3, 4);
	image_int(g, 0, 8);
	image_int(g, 0, 8);
}

/* A string key/value. */
static void
image_kv_string(GgufImage *g, const char *key, const char *value)
{
	image_string(g, key);
	image_int(g, GGUF_STRING, 4);
	image_string(g, value);
	g->nkv++;
}

/* A u32 key/value. */
static void
image_kv_u32(GgufImage *g, const char *key, uint32_t value)
{
	image_string(g, key);
	image_int(g, GGUF_U32, 4);
	image_int(g, value, 4);
	g->nkv++;
}

/* An array of strings. */
static void
image_kv_strings(GgufImage *g, const char *key, const char *const *values, size_t n)
{
	image_string(g, key);
	image_int(g, GGUF_ARRAY, 4);
	image_int(g, GGUF_STRING, 4);
	image_int(g, n, 8);
	for (size_t i = 0; i < n; i++)
		image_string(g, values[i]);
	g->nkv++;
}

/* An array of int32. */
static void
image_kv_i32s(GgufImage *g, const char *key, const int32_t *values, size_t n, GgufValueType type)
{
	image_string(g, key);
	image_int(g, GGUF_ARRAY, 4);
	image_int(g, type, 4);
	image_int(g, n, 8);
	for (size_t i = 0; i < n; i++)
		image_int(g, (uint32_t) values[i], 4);
	g->nkv++;
}

/* What to put in a test GGUF: each field may be changed by a fault. */
typedef struct GgufSpec
{
	const char *model;
	const char *pre;
	const char *const *tokens;
	size_t		ntokens;
	const char *const *merges;
	size_t		nmerges;
	const int32_t *types;
	size_t		ntypes;
	GgufValueType types_type;
	int64_t		bos;			/* -1: absent */
} GgufSpec;

static const char *const good_tokens[] = {"a", "b", "ab", "\xc4\xa0", "<s>", "\xc4\xa0" "ab"};
static const char *const good_merges[] = {"a b", "\xc4\xa0 ab"};
static const int32_t good_types[] = {1, 1, 1, 1, 3, 1};

/* The code bpe_tokenizer_from_gguf gives for spec (and the message in err). */
static PeftCode
gguf_code(const GgufSpec *spec, PeftError *err)
{
	GgufImage	g;
	GgufFile   *file = NULL;
	BpeTokenizer *tok = NULL;
	PeftCode	rc;

	image_start(&g);
	if (spec->model)
		image_kv_string(&g, "tokenizer.ggml.model", spec->model);
	if (spec->pre)
		image_kv_string(&g, "tokenizer.ggml.pre", spec->pre);
	if (spec->tokens)
		image_kv_strings(&g, "tokenizer.ggml.tokens", spec->tokens, spec->ntokens);
	if (spec->merges)
		image_kv_strings(&g, "tokenizer.ggml.merges", spec->merges, spec->nmerges);
	if (spec->types)
		image_kv_i32s(&g, "tokenizer.ggml.token_type", spec->types, spec->ntypes, spec->types_type);
	if (spec->bos >= 0)
		image_kv_u32(&g, "tokenizer.ggml.bos_token_id", (uint32_t) spec->bos);
	memcpy(g.buf + 16, &g.nkv, 8);
	assert_int_equal(gguf_open_buffer(g.buf, g.len, &file, err), PEFT_OK);
	rc = bpe_tokenizer_from_gguf(file, &tok, err);
	assert_true((rc == PEFT_OK) == (tok != NULL));
	if (rc == PEFT_OK)
	{
		int32_t		ids[8];
		size_t		n;
		PeftError	e2 = {0};

		/* "ab ab" -> ab, Ġab; "<s>" is special where token_type says so */
		assert_int_equal(bpe_encode(tok, "ab ab", 5, true, ids, 8, &n, &e2), PEFT_OK);
		assert_int_equal(n, 2);
		assert_int_equal(ids[0], 2);
		assert_int_equal(ids[1], 5);
		assert_int_equal(bpe_encode(tok, "<s>", 3, true, ids, 8, &n, &e2), PEFT_OK);
		assert_int_equal(n, spec->types ? 1 : 0);
		assert_true(n == 0 || ids[0] == 4);
	}
	bpe_tokenizer_free(tok);
	gguf_close(file);
	free(g.buf);
	return rc;
}

/* Hand-made GGUF metadata: one fault at a time. */
static void
test_malformed_gguf(void **state)
{
	static const char *const bad_utf8[] = {"a", "b", "ab", "\xc4\xa0", "<s>", "\xff"};
	static const char *const unknown_part[] = {"a c"};
	static const char *const unknown_result[] = {"b a"};
	static const char *const three_parts[] = {"a b c"};
	static const char *const no_space[] = {"ab"};
	static const int32_t bad_type[] = {1, 1, 1, 1, 9, 1};
	GgufSpec	good = {"gpt2", "gpt2", good_tokens, 6, good_merges, 2, good_types, 6, GGUF_I32, 4};
	GgufSpec	s;
	PeftError	err = {0};

	assert_int_equal(gguf_code(&good, &err), PEFT_OK);
	s = good;
	s.pre = NULL;				/* gpt2 by default */
	assert_int_equal(gguf_code(&s, &err), PEFT_OK);
	s = good;
	s.types = NULL;				/* no added tokens: "<s>" is still a model token */
	assert_int_equal(gguf_code(&s, &err), PEFT_OK);

#define EXPECT_GGUF(field_changes, code, word) \
	do { \
		s = good; \
		field_changes; \
		assert_int_equal(gguf_code(&s, &err), code); \
		if (strstr(err.message, word) == NULL) \
			fail_msg("message \"%s\" lacks \"%s\"", err.message, word); \
	} while (0)

	EXPECT_GGUF(s.model = NULL, PEFT_ERR_FORMAT, "tokenizer.ggml.model");
	EXPECT_GGUF(s.model = "llama", PEFT_ERR_UNSUPPORTED, "llama");
	EXPECT_GGUF(s.pre = "tekken", PEFT_ERR_UNSUPPORTED, "tekken");
	EXPECT_GGUF(s.tokens = NULL, PEFT_ERR_FORMAT, "tokens");
	EXPECT_GGUF(s.ntokens = 0, PEFT_ERR_FORMAT, "0 ids");
	EXPECT_GGUF(s.tokens = bad_utf8, PEFT_ERR_FORMAT, "UTF-8");
	EXPECT_GGUF(s.merges = NULL, PEFT_ERR_FORMAT, "merges");
	EXPECT_GGUF((s.merges = unknown_part, s.nmerges = 1), PEFT_ERR_FORMAT, "not in the vocabulary");
	EXPECT_GGUF((s.merges = unknown_result, s.nmerges = 1), PEFT_ERR_FORMAT, "makes a token");
	EXPECT_GGUF((s.merges = three_parts, s.nmerges = 1), PEFT_ERR_FORMAT, "one space");
	EXPECT_GGUF((s.merges = no_space, s.nmerges = 1), PEFT_ERR_FORMAT, "one space");
	EXPECT_GGUF(s.ntypes = 5, PEFT_ERR_FORMAT, "token_type");
	EXPECT_GGUF(s.types_type = GGUF_U32, PEFT_ERR_FORMAT, "token_type");
	EXPECT_GGUF(s.types = bad_type, PEFT_ERR_FORMAT, "type 9");
	EXPECT_GGUF(s.bos = 6, PEFT_ERR_FORMAT, "bos_token_id");
#undef EXPECT_GGUF
	assert_int_equal(bpe_tokenizer_from_gguf(NULL, &(BpeTokenizer *) {NULL}, &err), PEFT_ERR_INVALID);
}

/*
 * llama3.gguf cut short anywhere, or with any one byte of its metadata
 * changed: the reader or the tokenizer refuses it, or it loads and
 * encodes; never a wild read (the sanitizer build checks).
 */
static void
test_damaged_gguf(void **state)
{
	char	   *bytes;
	size_t		len;
	PeftError	err = {0};
	int			loaded = 0;

	assert_int_equal(read_small_file(source_path(BPE_DIR "llama3.gguf"), 1 << 20, &bytes, &len, &err), PEFT_OK);
	for (size_t n = 0; n <= len; n += 1 + n / 256)
	{
		uint8_t    *copy = malloc(n + 1);
		GgufFile   *file = NULL;
		BpeTokenizer *tok = NULL;

		memcpy(copy, bytes, n);
		if (gguf_open_buffer(copy, n, &file, &err) == PEFT_OK)
		{
			if (bpe_tokenizer_from_gguf(file, &tok, &err) == PEFT_OK)
				loaded++;
			bpe_tokenizer_free(tok);
			gguf_close(file);
		}
		free(copy);
	}
	for (size_t at = 0; at < len; at += 3)
	{
		uint8_t    *copy = malloc(len);
		GgufFile   *file = NULL;
		BpeTokenizer *tok = NULL;

		memcpy(copy, bytes, len);
		copy[at] ^= 0x41;
		if (gguf_open_buffer(copy, len, &file, &err) == PEFT_OK &&
			bpe_tokenizer_from_gguf(file, &tok, &err) == PEFT_OK)
		{
			int32_t    *ids;
			size_t		n;

			assert_int_equal(bpe_encode_alloc(tok, "Hello <|eot_id|> 123 world!", 27, true, &ids, &n, &err),
							 PEFT_OK);
			for (size_t i = 0; i < n; i++)
				assert_true(ids[i] >= 0 && ids[i] < bpe_vocab_size(tok));
			free(ids);
			loaded++;
		}
		bpe_tokenizer_free(tok);
		gguf_close(file);
		free(copy);
	}
	print_message("damaged llama3.gguf: %d of the variants still load\n", loaded);
	free(bytes);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_smollm2_gguf),
		cmocka_unit_test(test_smollm2_json),
		cmocka_unit_test(test_vocabulary),
		cmocka_unit_test(test_llama3),
		cmocka_unit_test(test_qwen2),
		cmocka_unit_test(test_features),
		cmocka_unit_test(test_codepoint_classes),
		cmocka_unit_test(test_encode_buffers),
		cmocka_unit_test(test_encode_invalid_utf8),
		cmocka_unit_test(test_streaming_decode),
		cmocka_unit_test(test_decode_errors),
		cmocka_unit_test(test_long_pieces),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_malformed_json),
		cmocka_unit_test(test_truncated_json),
		cmocka_unit_test(test_malformed_gguf),
		cmocka_unit_test(test_damaged_gguf),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
