/*
 * test_tokenizer.c - the WordPiece tokenizer against Hugging Face.
 *
 * The reference files in test/fixtures/reference/ were written by
 * test/fixtures/ref_tokens.py with the tokenizers library:
 *   tokens.tsv      ids of BertTokenizerFast (all-MiniLM-L6-v2) for test
 *                   strings; checked when the model folder is present
 *                   (/var/cache/peft/all-MiniLM-L6-v2 or $PEFT_MODEL_DIR);
 *   codepoints.tsv  normalisation and splitting of every Unicode code point;
 *                   checked always, with a tiny vocabulary.
 * The other tests use small hand-made vocabularies.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "tokenizer_hooks.h"

#ifndef PEFT_SOURCE_DIR
#define PEFT_SOURCE_DIR "."
#endif

#define REFERENCE_DIR PEFT_SOURCE_DIR "/test/fixtures/reference"
#define REFERENCE_MAX_LENGTH 128

/*
 * A small vocabulary: the special tokens (ids 0-4, as BERT numbers them
 * 0, 100, 101, 102, 103 differently but that does not matter here), then
 * words and continuation pieces.
 */
static const char small_vocab[] =
	"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"	/* 0-4 */
	"un\n##aff\n##able\n##a\n##ff\n"		/* 5-9 */
	"aff\nable\nhello\nworld\n,\n"			/* 10-14 */
	"!\ncafe\nnaive\n中\n文\n"				/* 15-19 */
	"a\n##c\nb\n##b\n[\n"					/* 20-24 */
	"]\nmask\nhe\n##llo\nhell\n";			/* 25-29 */

enum
{
	ID_PAD, ID_UNK, ID_CLS, ID_SEP, ID_MASK,
	ID_UN, ID_CAFF, ID_CABLE, ID_CA, ID_CFF,
	ID_AFF, ID_ABLE, ID_HELLO, ID_WORLD, ID_COMMA,
	ID_BANG, ID_CAFE, ID_NAIVE, ID_ZHONG, ID_WEN,
	ID_A, ID_CC, ID_B, ID_CB, ID_LBRACKET,
	ID_RBRACKET, ID_MASKWORD, ID_HE, ID_CLLO, ID_HELL
};

/* Build the small-vocabulary tokenizer with uncased options. */
static Tokenizer *
small_tokenizer(void)
{
	Tokenizer  *tok = NULL;
	PeftError	err;
	TokenizerOptions opts = {.lowercase = true, .strip_accents = true, .split_chinese = true};

	assert_int_equal(tokenizer_from_buffer(small_vocab, strlen(small_vocab), &opts,
										   &tok, &err), PEFT_OK);
	assert_non_null(tok);
	return tok;
}

/* Encode a NUL-terminated string; returns the count. */
static int
encode_str(const Tokenizer *tok, const char *text, int max_length, int32_t *ids)
{
	return tokenizer_encode(tok, text, strlen(text), max_length, ids);
}

/* Pre-tokenize a NUL-terminated string into out. */
static void
pretokenize_str(const Tokenizer *tok, const char *text, char *out, size_t size)
{
	tokenizer_pretokenize(tok, text, strlen(text), out, size);
}

/* Assert that text encodes to exactly the expected ids. */
static void
assert_encodes(const Tokenizer *tok, const char *text, size_t len, int max_length,
			   const int32_t *expected, int n_expected)
{
	int32_t		ids[512];
	int			n;

	assert_true(max_length <= 512);
	n = tokenizer_encode(tok, text, len, max_length, ids);
	if (n != n_expected || memcmp(ids, expected, sizeof(int32_t) * n) != 0)
	{
		print_message("encoding \"%.*s\": got", (int) len, text);
		for (int i = 0; i < n; i++)
			print_message(" %d", ids[i]);
		print_message(", expected");
		for (int i = 0; i < n_expected; i++)
			print_message(" %d", expected[i]);
		print_message("\n");
		fail();
	}
}

#define ASSERT_ENCODES(tok, text, ...) \
	do { \
		const int32_t expected_[] = {__VA_ARGS__}; \
		assert_encodes((tok), (text), strlen(text), 128, expected_, \
					   (int) (sizeof(expected_) / sizeof(expected_[0]))); \
	} while (0)

/* Read a whole file into a malloc'ed NUL-terminated buffer, or NULL. */
static char *
slurp(const char *path, size_t *len)
{
	FILE	   *f = fopen(path, "rb");
	char	   *buf;
	long		size;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t) size + 1);
	assert_non_null(buf);
	*len = fread(buf, 1, (size_t) size, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* Value of a hex digit, or -1. */
static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Undo ref_tokens.py's escaping (\\ \t \n \r \xHH) of s[0..len) into out;
 * returns the byte count.
 */
static size_t
unescape(const char *s, size_t len, char *out)
{
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		if (s[i] != '\\' || i + 1 >= len)
		{
			out[n++] = s[i];
			continue;
		}
		i++;
		switch (s[i])
		{
			case 't':
				out[n++] = '\t';
				break;
			case 'n':
				out[n++] = '\n';
				break;
			case 'r':
				out[n++] = '\r';
				break;
			case 'x':
				assert_true(i + 2 < len);
				assert_true(hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0);
				out[n++] = (char) (hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
				i += 2;
				break;
			default:
				out[n++] = s[i];
				break;
		}
	}
	return n;
}

/*
 * Compare tokenizer_encode with every line of tokens.tsv for the given
 * tokenizer; returns the number of mismatches and sets *total.
 */
static int
compare_with_reference(const Tokenizer *tok, const char *label, int *total)
{
	size_t		len;
	char	   *data = slurp(REFERENCE_DIR "/tokens.tsv", &len);
	char	   *line;
	char	   *text;
	int			mismatches = 0;
	int			lineno = 0;

	assert_non_null(data);
	text = malloc(len + 1);
	assert_non_null(text);
	*total = 0;
	for (line = data; line < data + len;)
	{
		char	   *end = memchr(line, '\n', (size_t) (data + len - line));
		char	   *tab;
		char	   *p;
		size_t		text_len;
		int32_t		expected[REFERENCE_MAX_LENGTH];
		int32_t		got[REFERENCE_MAX_LENGTH];
		int			n_expected = 0;
		int			n_got;

		if (end == NULL)
			end = data + len;
		*end = '\0';
		lineno++;
		tab = memchr(line, '\t', (size_t) (end - line));
		assert_non_null(tab);
		text_len = unescape(line, (size_t) (tab - line), text);
		for (p = tab + 1; *p != '\0';)
		{
			char	   *next;
			long		id = strtol(p, &next, 10);

			assert_true(next != p);
			assert_true(n_expected < REFERENCE_MAX_LENGTH);
			expected[n_expected++] = (int32_t) id;
			p = next;
			while (*p == ' ')
				p++;
		}
		n_got = tokenizer_encode(tok, text, text_len, REFERENCE_MAX_LENGTH, got);
		(*total)++;
		if (n_got != n_expected || memcmp(got, expected, sizeof(int32_t) * n_got) != 0)
		{
			if (mismatches < 10)
			{
				print_message("%s: tokens.tsv line %d (%.60s) differs:\n  got     ",
							  label, lineno, line);
				for (int i = 0; i < n_got; i++)
					print_message(" %d", got[i]);
				print_message("\n  expected");
				for (int i = 0; i < n_expected; i++)
					print_message(" %d", expected[i]);
				print_message("\n");
			}
			mismatches++;
		}
		line = end + 1;
	}
	free(text);
	free(data);
	return mismatches;
}

/* The real vocab.txt gives Hugging Face's ids for every reference string. */
static void
test_reference_tokens_vocab_txt(void **state)
{
	const char *dir = real_model_dir();
	Tokenizer  *tok = NULL;
	PeftError	err;
	int			total;
	int			mismatches;

	(void) state;
	require_real_model(dir != NULL);
	assert_int_equal(tokenizer_load_dir(dir, NULL, &tok, &err), PEFT_OK);
	assert_int_equal(tokenizer_vocab_size(tok), 30522);
	assert_int_equal(tokenizer_token_id(tok, "[CLS]"), 101);
	mismatches = compare_with_reference(tok, "vocab.txt", &total);
	print_message("tokens.tsv (vocab.txt): %d of %d strings match Hugging Face\n",
				  total - mismatches, total);
	tokenizer_free(tok);
	assert_true(total >= 300);
	assert_int_equal(mismatches, 0);
}

/* The real tokenizer.json gives the same ids as vocab.txt. */
static void
test_reference_tokens_json(void **state)
{
	const char *dir = real_model_dir();
	char		path[8192];
	Tokenizer  *tok = NULL;
	PeftError	err;
	int			total;
	int			mismatches;
	struct stat st;

	(void) state;
	require_real_model(dir != NULL);
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	/* all-MiniLM-L6-v2 ships one: a folder without it is incomplete */
	require_real_model(stat(path, &st) == 0);
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_OK);
	assert_true(tokenizer_options(tok).lowercase);
	assert_true(tokenizer_options(tok).strip_accents);
	assert_true(tokenizer_options(tok).split_chinese);
	assert_int_equal(tokenizer_vocab_size(tok), 30522);
	mismatches = compare_with_reference(tok, "tokenizer.json", &total);
	print_message("tokens.tsv (tokenizer.json): %d of %d strings match Hugging Face\n",
				  total - mismatches, total);
	tokenizer_free(tok);
	assert_int_equal(mismatches, 0);
}

/* Write cp as UTF-8 to out; returns the length. */
static int
put_utf8(uint32_t cp, char *out)
{
	if (cp < 0x80)
	{
		out[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		out[0] = (char) (0xC0 | (cp >> 6));
		out[1] = (char) (0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000)
	{
		out[0] = (char) (0xE0 | (cp >> 12));
		out[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char) (0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char) (0xF0 | (cp >> 18));
	out[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char) (0x80 | (cp & 0x3F));
	return 4;
}

/*
 * Expand a codepoints.tsv pattern for code point cp into the text that
 * tokenizer_pretokenize writes (words separated by spaces).
 */
static void
expand_pattern(const char *pattern, uint32_t cp, char *out, size_t size)
{
	size_t		n = 0;
	const char *p = pattern;

	while (*p != '\0')
	{
		assert_true(n + 8 < size);
		if (*p == '|')
		{
			out[n++] = ' ';
			p++;
		}
		else if (*p == ' ')
			p++;
		else if (*p == '*')
		{
			n += (size_t) put_utf8(cp, out + n);
			p++;
		}
		else
		{
			char	   *end;
			unsigned long c = strtoul(p, &end, 16);

			assert_true(end != p);
			n += (size_t) put_utf8((uint32_t) c, out + n);
			p = end;
		}
	}
	out[n] = '\0';
}

/* Every code point is normalised and split as Hugging Face does it. */
static void
test_reference_codepoints(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	size_t		len;
	char	   *data = slurp(REFERENCE_DIR "/codepoints.tsv", &len);
	char	   *line;
	uint32_t	next_cp = 0;
	int			checked = 0;
	int			mismatches = 0;
	char		expected[256];

	(void) state;
	assert_non_null(data);

	/*
	 * Walk the runs in order; the code points between them have the
	 * default pattern "61 * 61".
	 */
	line = data;
	for (;;)
	{
		uint32_t	first = 0x110000;
		uint32_t	last = 0x110000;
		const char *pattern = NULL;
		char	   *end = NULL;

		if (line < data + len)
		{
			char	   *tab;
			char	   *dash;

			end = strchr(line, '\n');
			if (end != NULL)
				*end = '\0';
			tab = strchr(line, '\t');
			assert_non_null(tab);
			*tab = '\0';
			first = (uint32_t) strtoul(line, &dash, 16);
			last = *dash == '-' ? (uint32_t) strtoul(dash + 1, NULL, 16) : first;
			pattern = tab + 1;
		}
		for (uint32_t cp = next_cp; cp <= last && cp < 0x110000; cp++)
		{
			char		text[8];
			char		got[256];
			int			n;

			if (cp >= 0xD800 && cp <= 0xDFFF)
				continue;
			text[0] = 'a';
			n = 1 + put_utf8(cp, text + 1);
			text[n++] = 'a';
			expand_pattern(cp < first ? "61 * 61" : pattern, cp, expected, sizeof(expected));
			tokenizer_pretokenize(tok, text, (size_t) n, got, sizeof(got));
			checked++;
			if (strcmp(got, expected) != 0)
			{
				if (mismatches < 20)
					print_message("U+%04X: got \"%s\", expected \"%s\"\n", cp, got, expected);
				mismatches++;
			}
		}
		if (pattern == NULL)
			break;
		next_cp = last + 1;
		line = end != NULL ? end + 1 : data + len;
	}
	print_message("codepoints.tsv: %d of %d code points match Hugging Face\n",
				  checked - mismatches, checked);
	free(data);
	tokenizer_free(tok);
	assert_int_equal(checked, 0x110000 - 0x800);
	assert_int_equal(mismatches, 0);
}

/* Greedy longest match first, with ## continuation pieces. */
static void
test_wordpiece_greedy(void **state)
{
	Tokenizer  *tok = small_tokenizer();

	(void) state;
	ASSERT_ENCODES(tok, "unaffable", ID_CLS, ID_UN, ID_CAFF, ID_CABLE, ID_SEP);
	/* the whole word beats "hell" and "he" */
	ASSERT_ENCODES(tok, "hello", ID_CLS, ID_HELLO, ID_SEP);
	ASSERT_ENCODES(tok, "aff able", ID_CLS, ID_AFF, ID_ABLE, ID_SEP);
	ASSERT_ENCODES(tok, "aaa", ID_CLS, ID_A, ID_CA, ID_CA, ID_SEP);
	ASSERT_ENCODES(tok, "acb", ID_CLS, ID_A, ID_CC, ID_CB, ID_SEP);
	ASSERT_ENCODES(tok, "ab", ID_CLS, ID_A, ID_CB, ID_SEP);
	ASSERT_ENCODES(tok, "unaffa", ID_CLS, ID_UN, ID_CAFF, ID_CA, ID_SEP);
	tokenizer_free(tok);
}

/* A word with any piece missing from the vocabulary is one [UNK]. */
static void
test_wordpiece_unknown(void **state)
{
	Tokenizer  *tok = small_tokenizer();

	(void) state;
	ASSERT_ENCODES(tok, "unaffablez", ID_CLS, ID_UNK, ID_SEP);
	ASSERT_ENCODES(tok, "hellx world", ID_CLS, ID_UNK, ID_WORLD, ID_SEP);
	ASSERT_ENCODES(tok, "z", ID_CLS, ID_UNK, ID_SEP);
	/* "hello" then no "##s": the whole word is lost */
	ASSERT_ENCODES(tok, "hellos", ID_CLS, ID_UNK, ID_SEP);
	/* "he" + "##llo" would do, but greedy takes "hell" and no "##o": no backtracking */
	ASSERT_ENCODES(tok, "hellohell", ID_CLS, ID_UNK, ID_SEP);
	tokenizer_free(tok);
}

/* A word over 100 characters is [UNK]; exactly 100 is split normally. */
static void
test_long_word(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	char		text[512];
	int32_t		ids[256];
	int			n;

	(void) state;
	memset(text, 'a', 100);
	n = tokenizer_encode(tok, text, 100, 256, ids);
	assert_int_equal(n, 102);
	assert_int_equal(ids[1], ID_A);
	assert_int_equal(ids[100], ID_CA);

	memset(text, 'a', 101);
	n = tokenizer_encode(tok, text, 101, 256, ids);
	assert_int_equal(n, 3);
	assert_int_equal(ids[1], ID_UNK);

	/* the limit counts characters, not bytes: 100 "á" (stripped to "a") */
	for (int i = 0; i < 100; i++)
		memcpy(text + 2 * i, "\xc3\xa1", 2);	/* á -> a */
	n = tokenizer_encode(tok, text, 200, 256, ids);
	assert_int_equal(n, 102);
	assert_int_equal(ids[1], ID_A);

	/* the limit applies after stripping: 100 letters + 5 removed marks */
	memset(text, 'a', 100);
	for (int i = 0; i < 5; i++)
		memcpy(text + 100 + 2 * i, "\xcc\x81", 2);	/* U+0301 */
	n = tokenizer_encode(tok, text, 110, 256, ids);
	assert_int_equal(n, 102);

	/* a long word of 1000 characters does not overflow anything */
	memset(text, 'b', 500);
	n = tokenizer_encode(tok, text, 500, 256, ids);
	assert_int_equal(n, 3);
	assert_int_equal(ids[1], ID_UNK);
	tokenizer_free(tok);
}

/* Truncation keeps [CLS] first and [SEP] last within max_length. */
static void
test_truncation(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	int32_t		ids[8];
	const char *text = "hello world hello world unaffable";

	(void) state;
	assert_int_equal(encode_str(tok, text, 5, ids), 5);
	assert_int_equal(ids[0], ID_CLS);
	assert_int_equal(ids[1], ID_HELLO);
	assert_int_equal(ids[2], ID_WORLD);
	assert_int_equal(ids[3], ID_HELLO);
	assert_int_equal(ids[4], ID_SEP);

	/* a word's pieces are cut in the middle, as Hugging Face does */
	assert_int_equal(encode_str(tok, "unaffable", 4, ids), 4);
	assert_int_equal(ids[1], ID_UN);
	assert_int_equal(ids[2], ID_CAFF);
	assert_int_equal(ids[3], ID_SEP);

	assert_int_equal(encode_str(tok, text, 2, ids), 2);
	assert_int_equal(ids[0], ID_CLS);
	assert_int_equal(ids[1], ID_SEP);

	/* exactly fitting: nothing lost */
	assert_int_equal(encode_str(tok, "hello world", 4, ids), 4);
	assert_int_equal(ids[2], ID_WORLD);

	/* no room at all is refused, not overrun */
	ids[0] = -7;
	assert_int_equal(encode_str(tok, text, 1, ids), 0);
	assert_int_equal(encode_str(tok, text, 0, ids), 0);
	assert_int_equal(ids[0], -7);
	tokenizer_free(tok);
}

/* Empty and blank text give [CLS] [SEP]. */
static void
test_empty(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	int32_t		ids[4];

	(void) state;
	ASSERT_ENCODES(tok, "", ID_CLS, ID_SEP);
	ASSERT_ENCODES(tok, "   \t\n\r  ", ID_CLS, ID_SEP);
	ASSERT_ENCODES(tok, "\x01\x02\x7f", ID_CLS, ID_SEP);
	ASSERT_ENCODES(tok, "\xe2\x80\x8b\xef\xbb\xbf", ID_CLS, ID_SEP);	/* ZWSP, BOM */
	assert_int_equal(tokenizer_encode(tok, NULL, 0, 4, ids), 2);
	assert_int_equal(ids[0], ID_CLS);
	assert_int_equal(ids[1], ID_SEP);
	tokenizer_free(tok);
}

/* Normalisation: case, accents, CJK, punctuation, whitespace, controls. */
static void
test_normalisation(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	char		out[128];

	(void) state;
	ASSERT_ENCODES(tok, "HeLLo, World!", ID_CLS, ID_HELLO, ID_COMMA, ID_WORLD, ID_BANG, ID_SEP);
	ASSERT_ENCODES(tok, "Caf\xc3\xa9 NA\xc3\x8fVE", ID_CLS, ID_CAFE, ID_NAIVE, ID_SEP);
	ASSERT_ENCODES(tok, "cafe\xcc\x81", ID_CLS, ID_CAFE, ID_SEP);
	ASSERT_ENCODES(tok, "\xe4\xb8\xad\xe6\x96\x87", ID_CLS, ID_ZHONG, ID_WEN, ID_SEP);
	ASSERT_ENCODES(tok, "hello\xe4\xb8\xadworld", ID_CLS, ID_HELLO, ID_ZHONG, ID_WORLD, ID_SEP);
	/* NBSP splits; a control character and a zero-width space join */
	ASSERT_ENCODES(tok, "hello\xc2\xa0world", ID_CLS, ID_HELLO, ID_WORLD, ID_SEP);
	ASSERT_ENCODES(tok, "hel\x01lo wor\xe2\x80\x8bld", ID_CLS, ID_HELLO, ID_WORLD, ID_SEP);

	pretokenize_str(tok, "\xc4\xb0stanbul \xe2\x84\xab x\xe2\x80\x94y", out, sizeof(out));
	assert_string_equal(out, "istanbul a x \xe2\x80\x94 y");
	/* the output is truncated to the room given, the length is the full one */
	assert_int_equal(tokenizer_pretokenize(tok, "hello world", 11, out, 6), 11);
	assert_string_equal(out, "hello");
	tokenizer_free(tok);
}

/* Cased options keep case and accents but still clean and split. */
static void
test_cased_options(void **state)
{
	TokenizerOptions opts = {.lowercase = false, .strip_accents = false, .split_chinese = true};
	Tokenizer  *tok = NULL;
	PeftError	err;
	char		out[128];

	(void) state;
	assert_int_equal(tokenizer_from_buffer(small_vocab, strlen(small_vocab), &opts,
										   &tok, &err), PEFT_OK);
	pretokenize_str(tok, "Caf\xc3\xa9, NA\xc3\x8fVE\x01!\xe4\xb8\xad", out, sizeof(out));
	assert_string_equal(out, "Caf\xc3\xa9 , NA\xc3\x8fVE ! \xe4\xb8\xad");
	ASSERT_ENCODES(tok, "hello Hello", ID_CLS, ID_HELLO, ID_UNK, ID_SEP);
	tokenizer_free(tok);

	/* lowercase without stripping: U+0130 becomes "i" + U+0307 */
	opts.lowercase = true;
	assert_int_equal(tokenizer_from_buffer(small_vocab, strlen(small_vocab), &opts,
										   &tok, &err), PEFT_OK);
	pretokenize_str(tok, "\xc4\xb0X\xc3\x89", out, sizeof(out));
	assert_string_equal(out, "i\xcc\x87x\xc3\xa9");
	tokenizer_free(tok);
}

/* Special tokens written in the text become their ids, case-sensitively. */
static void
test_special_tokens_in_text(void **state)
{
	Tokenizer  *tok = small_tokenizer();

	(void) state;
	ASSERT_ENCODES(tok, "hello [MASK] world", ID_CLS, ID_HELLO, ID_MASK, ID_WORLD, ID_SEP);
	ASSERT_ENCODES(tok, "a[SEP]b", ID_CLS, ID_A, ID_SEP, ID_B, ID_SEP);
	ASSERT_ENCODES(tok, "[mask]", ID_CLS, ID_LBRACKET, ID_MASKWORD, ID_RBRACKET, ID_SEP);
	ASSERT_ENCODES(tok, "[MASK", ID_CLS, ID_LBRACKET, ID_MASKWORD, ID_SEP);
	ASSERT_ENCODES(tok, "[[UNK]]", ID_CLS, ID_LBRACKET, ID_UNK, ID_RBRACKET, ID_SEP);
	tokenizer_free(tok);
}

/* Invalid UTF-8 bytes are dropped, never crash, and do not split words. */
static void
test_invalid_utf8(void **state)
{
	Tokenizer  *tok = small_tokenizer();
	int32_t		ids[64];
	char		text[64];
	unsigned int seed = 12345;

	(void) state;
	ASSERT_ENCODES(tok, "un\xff" "aff\xc3" "able", ID_CLS, ID_UN, ID_CAFF, ID_CABLE, ID_SEP);
	ASSERT_ENCODES(tok, "\xed\xa0\x80hello", ID_CLS, ID_HELLO, ID_SEP);	/* surrogate */
	ASSERT_ENCODES(tok, "\xc0\xafhello", ID_CLS, ID_HELLO, ID_SEP);	/* overlong "/" */
	ASSERT_ENCODES(tok, "hello\xf4\x90\x80\x80", ID_CLS, ID_HELLO, ID_SEP);	/* > U+10FFFF */
	ASSERT_ENCODES(tok, "hello\xe4\xb8", ID_CLS, ID_HELLO, ID_SEP);	/* truncated at end */
	ASSERT_ENCODES(tok, "\xe2\x82" "a", ID_CLS, ID_A, ID_SEP);

	/* random bytes: any output is well-formed */
	for (int round = 0; round < 20000; round++)
	{
		int			len = (int) (rand_r(&seed) % sizeof(text));
		int			n;

		for (int i = 0; i < len; i++)
			text[i] = (char) (rand_r(&seed) & 0xFF);
		n = tokenizer_encode(tok, text, (size_t) len, 1 + (int) (rand_r(&seed) % 64), ids);
		assert_true(n == 0 || (n >= 2 && ids[0] == ID_CLS && ids[n - 1] == ID_SEP));
		for (int i = 0; i < n; i++)
			assert_true(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(tok));
	}
	tokenizer_free(tok);
}

/* Load a vocab image, expecting the given code; frees what it gets. */
static void
expect_vocab_error(const char *buf, size_t len, PeftCode code, const char *needle)
{
	Tokenizer  *tok = (Tokenizer *) 0x1;
	PeftError	err;

	peft_error_clear(&err);
	assert_int_equal(tokenizer_from_buffer(buf, len, NULL, &tok, &err), code);
	assert_null(tok);
	if (needle != NULL && strstr(err.message, needle) == NULL)
	{
		print_message("message \"%s\" lacks \"%s\"\n", err.message, needle);
		fail();
	}
}

/* Hostile vocabularies are format errors, never crashes. */
static void
test_hostile_vocab(void **state)
{
	char		garbage[4096];
	char	   *long_line;
	unsigned int seed = 777;

	(void) state;
	expect_vocab_error("", 0, PEFT_ERR_FORMAT, "empty vocabulary");
	expect_vocab_error(NULL, 0, PEFT_ERR_FORMAT, "empty vocabulary");
	expect_vocab_error("\xef\xbb\xbf", 3, PEFT_ERR_FORMAT, "empty vocabulary");
	expect_vocab_error("[PAD]\n[UNK]\n[CLS]\nhello\n", 24, PEFT_ERR_FORMAT, "[SEP]");
	expect_vocab_error("[PAD]\n[CLS]\n[SEP]\n", 18, PEFT_ERR_FORMAT, "[UNK]");
	expect_vocab_error("[UNK]\n[CLS]\n[SEP]\n", 18, PEFT_ERR_FORMAT, "[PAD]");
	expect_vocab_error("[PAD]\n[UNK]\n[SEP]\n", 18, PEFT_ERR_FORMAT, "[CLS]");
	expect_vocab_error("[pad]\n[unk]\n[cls]\n[sep]\n", 24, PEFT_ERR_FORMAT, NULL);
	expect_vocab_error("[PAD]\n[UNK]\n[CLS]\n[SEP]\nbad\xff\n", 28, PEFT_ERR_FORMAT,
					   "line 5 is not valid UTF-8");
	expect_vocab_error("[PAD]\n[UNK]\0\n[CLS]\n[SEP]\n", 25, PEFT_ERR_FORMAT, "line 2");

	long_line = malloc(5000);
	assert_non_null(long_line);
	memcpy(long_line, "[PAD]\n[UNK]\n[CLS]\n[SEP]\n", 24);
	memset(long_line + 24, 'x', 2000);
	expect_vocab_error(long_line, 2024, PEFT_ERR_FORMAT, "longer than");
	free(long_line);

	/* binary garbage: an error or, by chance, a tokenizer; never a crash */
	for (int round = 0; round < 200; round++)
	{
		Tokenizer  *tok = NULL;
		PeftError	err;
		size_t		len = 1 + rand_r(&seed) % sizeof(garbage);

		for (size_t i = 0; i < len; i++)
			garbage[i] = (char) (rand_r(&seed) & 0xFF);
		assert_int_not_equal(tokenizer_from_buffer(garbage, len, NULL, &tok, &err), PEFT_OK);
		assert_null(tok);
	}
}

/* Line endings, duplicates, a missing final newline, a byte order mark. */
static void
test_vocab_lines(void **state)
{
	Tokenizer  *tok = NULL;
	PeftError	err;
	const char	crlf[] = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello \r\nworld";
	const char	dup[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\nhello\n";
	const char	cr[] = "\xef\xbb\xbf[PAD]\r[UNK]\r[CLS]\r[SEP]\r\rhello\n\nworld\n";

	(void) state;
	/* CRLF ends lines; other trailing whitespace stays; no final newline */
	assert_int_equal(tokenizer_from_buffer(crlf, strlen(crlf), NULL, &tok, &err), PEFT_OK);
	assert_int_equal(tokenizer_vocab_size(tok), 6);
	assert_int_equal(tokenizer_token_id(tok, "[SEP]"), 3);
	assert_int_equal(tokenizer_token_id(tok, "hello "), 4);
	assert_int_equal(tokenizer_token_id(tok, "hello"), -1);
	assert_int_equal(tokenizer_token_id(tok, "world"), 5);
	tokenizer_free(tok);

	/* a duplicate takes its last line's id; the size counts every line */
	assert_int_equal(tokenizer_from_buffer(dup, strlen(dup), NULL, &tok, &err), PEFT_OK);
	assert_int_equal(tokenizer_vocab_size(tok), 7);
	assert_int_equal(tokenizer_token_id(tok, "hello"), 6);
	ASSERT_ENCODES(tok, "hello world", 2, 6, 5, 3);
	tokenizer_free(tok);

	/* a lone CR ends a line (Python's universal newlines); BOM skipped */
	assert_int_equal(tokenizer_from_buffer(cr, strlen(cr), NULL, &tok, &err), PEFT_OK);
	assert_int_equal(tokenizer_token_id(tok, "[PAD]"), 0);
	assert_int_equal(tokenizer_token_id(tok, "hello"), 5);
	assert_int_equal(tokenizer_token_id(tok, ""), 6);
	assert_int_equal(tokenizer_token_id(tok, "world"), 7);
	assert_int_equal(tokenizer_vocab_size(tok), 8);
	tokenizer_free(tok);
}

/* Write text to a fresh file in dir. */
static void
write_file(const char *dir, const char *name, const char *text)
{
	char		path[4096];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* Remove a file of dir, if there. */
static void
remove_file(const char *dir, const char *name)
{
	char		path[4096];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	unlink(path);
}

/* Folders: vocab.txt first, else tokenizer.json; bad JSON is an error. */
static void
test_load_dir(void **state)
{
	char		dir[] = "/tmp/peft_tok_XXXXXX";
	char		path[4096];
	Tokenizer  *tok = NULL;
	PeftError	err;

	(void) state;
	assert_non_null(mkdtemp(dir));
	assert_int_equal(tokenizer_load_dir(dir, NULL, &tok, &err), PEFT_ERR_IO);
	assert_null(tok);

	write_file(dir, "tokenizer.json",
			   "{\"added_tokens\": [{\"id\": 4, \"content\": \"<m>\", \"normalized\": false}],"
			   " \"normalizer\": {\"type\": \"BertNormalizer\", \"lowercase\": false,"
			   " \"strip_accents\": null, \"handle_chinese_chars\": true},"
			   " \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\","
			   " \"continuing_subword_prefix\": \"@@\", \"max_input_chars_per_word\": 5,"
			   " \"vocab\": {\"[PAD]\": 0, \"[UNK]\": 1, \"[CLS]\": 2, \"[SEP]\": 3,"
			   " \"<m>\": 4, \"Hi\": 5, \"@@ya\": 6, \"long\": 7, \"@@er\": 8}}}");
	assert_int_equal(tokenizer_load_dir(dir, NULL, &tok, &err), PEFT_OK);
	assert_false(tokenizer_options(tok).lowercase);
	assert_false(tokenizer_options(tok).strip_accents);
	assert_int_equal(tokenizer_vocab_size(tok), 9);
	ASSERT_ENCODES(tok, "Hiya<m>longer hi", 2, 5, 6, 4, 1, 1, 3);
	tokenizer_free(tok);

	/* vocab.txt wins, with tokenizer_config.json's options */
	write_file(dir, "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nHI\nhi\n");
	write_file(dir, "tokenizer_config.json", "{\"do_lower_case\": false}");
	assert_int_equal(tokenizer_load_dir(dir, NULL, &tok, &err), PEFT_OK);
	ASSERT_ENCODES(tok, "HI hi", 2, 4, 5, 3);
	tokenizer_free(tok);
	remove_file(dir, "tokenizer_config.json");
	assert_int_equal(tokenizer_load_dir(dir, NULL, &tok, &err), PEFT_OK);
	ASSERT_ENCODES(tok, "HI hi", 2, 5, 5, 3);
	tokenizer_free(tok);
	remove_file(dir, "vocab.txt");

	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	write_file(dir, "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}");
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_ERR_UNSUPPORTED);
	write_file(dir, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_ERR_FORMAT);
	write_file(dir, "tokenizer.json",
			   "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[PAD]\": -1}}}");
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_ERR_FORMAT);
	write_file(dir, "tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": ");
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_ERR_FORMAT);
	write_file(dir, "tokenizer.json", "\x89PNG\r\n\x1a\n\x01\x02garbage");
	assert_int_equal(tokenizer_load_json(path, NULL, &tok, &err), PEFT_ERR_FORMAT);
	assert_null(tok);
	remove_file(dir, "tokenizer.json");
	rmdir(dir);

	assert_int_equal(tokenizer_load_vocab("/nonexistent/vocab.txt", NULL, &tok, &err),
					 PEFT_ERR_IO);
	assert_int_equal(tokenizer_load_vocab("/tmp", NULL, &tok, &err), PEFT_ERR_IO);
}

/* tokenizer.json from memory: the buffer need not end in a NUL. */
static void
test_json_buffer(void **state)
{
	static const char json[] =
		"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[PAD]\": 0,"
		" \"[UNK]\": 1, \"[CLS]\": 2, \"[SEP]\": 3, \"hi\": 4}}}";
	char	   *copy = malloc(sizeof(json) - 1);
	Tokenizer  *tok = NULL;
	PeftError	err;

	(void) state;
	memcpy(copy, json, sizeof(json) - 1);	/* no NUL after the text */
	assert_int_equal(tokenizer_from_json_buffer(copy, sizeof(json) - 1, NULL, &tok, &err),
					 PEFT_OK);
	assert_int_equal(tokenizer_vocab_size(tok), 5);
	ASSERT_ENCODES(tok, "Hi there", 2, 4, 1, 3);
	tokenizer_free(tok);
	assert_int_equal(tokenizer_from_json_buffer(copy, sizeof(json) - 3, NULL, &tok, &err),
					 PEFT_ERR_FORMAT);
	assert_null(tok);
	assert_int_equal(tokenizer_from_json_buffer(NULL, 0, NULL, &tok, &err), PEFT_ERR_FORMAT);
	free(copy);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reference_tokens_vocab_txt),
		cmocka_unit_test(test_reference_tokens_json),
		cmocka_unit_test(test_reference_codepoints),
		cmocka_unit_test(test_wordpiece_greedy),
		cmocka_unit_test(test_wordpiece_unknown),
		cmocka_unit_test(test_long_word),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_normalisation),
		cmocka_unit_test(test_cased_options),
		cmocka_unit_test(test_special_tokens_in_text),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_hostile_vocab),
		cmocka_unit_test(test_vocab_lines),
		cmocka_unit_test(test_load_dir),
		cmocka_unit_test(test_json_buffer),
	};

	return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
