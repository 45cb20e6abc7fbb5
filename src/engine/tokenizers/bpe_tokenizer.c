/*
 * bpe_tokenizer.c - byte-level BPE tokenisation, identical to Hugging
 * Face's tokenizers library (its BPE model, AddedVocabulary, ByteLevel
 * pre-tokenizer and decoder); see bpe_tokenizer.h.
 *
 * The vocabulary lives in one string arena.  Per id: its model text (what
 * the BPE model and merges know it as) and its display text (an added
 * token's content, else the model text); flags say whether it is special,
 * added, and whether its characters are all in the byte alphabet (decoded
 * through it) or not (decoded as its own UTF-8).  Two open-addressing hash
 * tables answer the hot questions: model text -> id, and (left id, right
 * id) -> (merge rank, merged id).
 *
 * Both loaders (GGUF metadata, tokenizer.json) fill the same structure
 * through the same checked steps: size, model tokens, merges, added
 * tokens, then finish_tokenizer computes the tables derived from them.
 */
#include "bpe_tokenizer.h"
#include "model_config.h"
#include "pretokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

/* Refuse tokenizer.json files that no real tokenizer comes near. */
#define MAX_JSON_BYTES			((size_t) 256 * 1024 * 1024)
/* Merges accepted (a vocabulary has fewer merges than tokens). */
#define MAX_MERGES				BPE_MAX_TOKENS
/* Added tokens accepted. */
#define MAX_ADDED_TOKENS		65536
/* Sequences nested in a tokenizer.json pre-tokenizer or normalizer. */
#define MAX_JSON_DEPTH			4
/* GPT-2's byte alphabet ends below this code point (256 + 68). */
#define BYTE_ALPHABET_END		0x144
/* The string arena is addressed by 32-bit offsets. */
#define MAX_ARENA_BYTES			((size_t) UINT32_MAX)

/* Per-id flags. */
#define TOKEN_HAS_TEXT	0x01		/* the id has a token (ids may have holes) */
#define TOKEN_IN_MODEL	0x02		/* the BPE model knows it (model text valid) */
#define TOKEN_ADDED		0x04		/* an added token */
#define TOKEN_SPECIAL	0x08		/* a special (control) token */
#define TOKEN_RAW		0x10		/* decoded as its own UTF-8, not through the byte map */
#define TOKEN_RESPELLED	0x20		/* GGUF: written outside the byte alphabet, respelled */

/* A string in the arena. */
typedef struct ArenaString
{
	uint32_t	off;
	uint32_t	len;
} ArenaString;

/* An added token, matched in the text before the pre-tokenizer. */
typedef struct AddedToken
{
	int32_t		id;
	ArenaString content;
	bool		special;
	bool		lstrip;			/* takes the white space before it */
	bool		rstrip;			/* takes the white space after it */
	bool		single_word;	/* only between non-word characters */
	bool		normalized;		/* matched in the normalised text */
} AddedToken;

/* One entry of the merge table; rank -1 = empty. */
typedef struct MergeSlot
{
	int32_t		left;
	int32_t		right;
	int32_t		rank;
	int32_t		merged;
} MergeSlot;

struct BpeTokenizer
{
	int32_t		n_ids;			/* largest id + 1 */
	uint8_t    *flags;			/* [n_ids] TOKEN_* */
	ArenaString *model;			/* [n_ids] model text */
	ArenaString *text;			/* [n_ids] display text */
	char	   *arena;
	size_t		arena_len;
	size_t		arena_cap;

	/* model text -> id: slot holds id + 1, 0 = empty */
	int32_t    *vocab_slots;
	uint32_t	vocab_mask;

	MergeSlot  *merges;
	uint32_t	merge_mask;
	int32_t		n_merges;

	AddedToken *added;
	int			n_added;
	/* added tokens of each pass (0 raw, 1 normalised), by first byte, longest first */
	int		   *added_order[2];
	int			added_start[2][257];

	Pretokenizer *pre;
	bool		nfc;			/* NFC before pre-tokenising */
	bool		ignore_merges;	/* a piece that is a token is taken whole */
	bool		byte_fallback;	/* unknown characters as <0xXX> tokens */
	bool		fuse_unk;
	int32_t		model_unk;		/* the BPE model's unk token, -1 = drop unknowns */

	int32_t		bos_id;
	int32_t		eos_id;
	int32_t		pad_id;
	int32_t		unk_id;
	bool		add_bos;
	bool		add_eos;

	/* derived by finish_tokenizer */
	uint16_t	byte_char[256];	/* GPT-2's byte -> code point */
	int16_t		char_byte[BYTE_ALPHABET_END];	/* and back; -1 outside */
	int32_t		byte_id[256];	/* model id of each byte's character, -1 none */
	int32_t		fallback_id[256];	/* <0xXX>, -1 none */
	size_t		max_text_len;
};


/* ---- small helpers -------------------------------------------------------- */

/* Whether s[0..len) is valid UTF-8 (no surrogates, nothing above U+10FFFF). */
static bool
utf8_valid(const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *) s;
	size_t		i = 0;

	while (i < len)
	{
		uint8_t		c = p[i];
		size_t		n;
		uint8_t		lo = 0x80,
					hi = 0xBF;

		if (c < 0x80)
		{
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			n = 2;
		else if (c >= 0xE0 && c <= 0xEF)
			n = 3;
		else if (c >= 0xF0 && c <= 0xF4)
			n = 4;
		else
			return false;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
		else if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
		if (len - i < n || p[i + 1] < lo || p[i + 1] > hi)
			return false;
		for (size_t k = 2; k < n; k++)
			if ((p[i + k] & 0xC0) != 0x80)
				return false;
		i += n;
	}
	return true;
}

/* Decode the valid UTF-8 character at s (n bytes left); its length in *len. */
static uint32_t
utf8_decode(const uint8_t *s, size_t n, size_t *len)
{
	if (s[0] < 0x80 || n < 2)
	{
		*len = 1;
		return s[0];
	}
	if (s[0] < 0xE0)
	{
		*len = 2;
		return ((uint32_t) (s[0] & 0x1F) << 6) | (s[1] & 0x3F);
	}
	if (s[0] < 0xF0 && n >= 3)
	{
		*len = 3;
		return ((uint32_t) (s[0] & 0x0F) << 12) | ((uint32_t) (s[1] & 0x3F) << 6) | (s[2] & 0x3F);
	}
	if (n >= 4)
	{
		*len = 4;
		return ((uint32_t) (s[0] & 0x07) << 18) | ((uint32_t) (s[1] & 0x3F) << 12) |
			((uint32_t) (s[2] & 0x3F) << 6) | (s[3] & 0x3F);
	}
	*len = 1;
	return s[0];
}

/* Encode code point c (< 0x800 here) as UTF-8 into out; returns its length. */
static size_t
utf8_encode_small(uint32_t c, char *out)
{
	if (c < 0x80)
	{
		out[0] = (char) c;
		return 1;
	}
	out[0] = (char) (0xC0 | (c >> 6));
	out[1] = (char) (0x80 | (c & 0x3F));
	return 2;
}

/* Hash of a byte string (FNV-1a, 64 bits folded). */
static uint32_t
hash_bytes(const char *s, size_t len)
{
	uint64_t	h = 1469598103934665603ULL;

	for (size_t i = 0; i < len; i++)
	{
		h ^= (uint8_t) s[i];
		h *= 1099511628211ULL;
	}
	return (uint32_t) (h ^ (h >> 32));
}

/* Hash of a pair of ids (a 64-bit multiplicative mix). */
static uint32_t
hash_pair(int32_t left, int32_t right)
{
	uint64_t	k = ((uint64_t) (uint32_t) left << 32) | (uint32_t) right;

	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return (uint32_t) k;
}

/* Smallest power of two >= 2n (at least 16): a table at most half full. */
static uint32_t
table_size(size_t n)
{
	uint32_t	size = 16;

	while (size < 2 * n)
		size *= 2;
	return size;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + k. */
static void
build_byte_alphabet(BpeTokenizer *tok)
{
	int			extra = 0;

	for (int c = 0; c < BYTE_ALPHABET_END; c++)
		tok->char_byte[c] = -1;
	for (int b = 0; b < 256; b++)
	{
		bool		printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
			(b >= 0xAE && b <= 0xFF);

		tok->byte_char[b] = (uint16_t) (printable ? b : 256 + extra++);
		tok->char_byte[tok->byte_char[b]] = (int16_t) b;
	}
}

/* Whether every character of s is in the byte alphabet. */
static bool
in_byte_alphabet(const BpeTokenizer *tok, const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *) s;
	size_t		i = 0;

	while (i < len)
	{
		size_t		n;
		uint32_t	c = utf8_decode(p + i, len - i, &n);

		if (c >= BYTE_ALPHABET_END || tok->char_byte[c] < 0)
			return false;
		i += n;
	}
	return true;
}


/* ---- building ------------------------------------------------------------- */

/* Copy s into the arena; its place in *where. */
static PeftCode
arena_add(BpeTokenizer *tok, const char *s, size_t len, ArenaString *where, PeftError *err)
{
	if (tok->arena_len + len > MAX_ARENA_BYTES)
		return peft_fail(err, PEFT_ERR_NOMEM, "BPE vocabulary: token texts exceed 4 GiB");
	if (tok->arena_len + len > tok->arena_cap)
	{
		size_t		cap = tok->arena_cap ? tok->arena_cap : 4096;
		char	   *grown;

		while (cap < tok->arena_len + len)
			cap *= 2;
		if (cap > MAX_ARENA_BYTES)
			cap = MAX_ARENA_BYTES;
		grown = realloc(tok->arena, cap);
		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "BPE vocabulary: out of memory");
		tok->arena = grown;
		tok->arena_cap = cap;
	}
	if (len > 0)
		memcpy(tok->arena + tok->arena_len, s, len);
	where->off = (uint32_t) tok->arena_len;
	where->len = (uint32_t) len;
	tok->arena_len += len;
	return PEFT_OK;
}

/* Allocate a tokenizer for n_ids ids, n_entries model tokens and n_merges merges. */
static PeftCode
new_tokenizer(int64_t n_ids, size_t n_entries, size_t n_merges, BpeTokenizer **out,
			  PeftError *err)
{
	BpeTokenizer *tok;

	*out = NULL;
	if (n_ids <= 0 || n_ids > BPE_MAX_TOKENS)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: %lld ids (1 to %d allowed)",
						 (long long) n_ids, BPE_MAX_TOKENS);
	if (n_merges > MAX_MERGES)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: %zu merges (at most %d)",
						 n_merges, MAX_MERGES);
	tok = calloc(1, sizeof(BpeTokenizer));
	if (tok == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "BPE tokenizer: out of memory");
	tok->n_ids = (int32_t) n_ids;
	tok->flags = calloc((size_t) n_ids, 1);
	tok->model = calloc((size_t) n_ids, sizeof(ArenaString));
	tok->text = calloc((size_t) n_ids, sizeof(ArenaString));
	tok->vocab_mask = table_size(n_entries) - 1;
	tok->vocab_slots = calloc((size_t) tok->vocab_mask + 1, sizeof(int32_t));
	tok->merge_mask = table_size(n_merges) - 1;
	tok->merges = malloc(((size_t) tok->merge_mask + 1) * sizeof(MergeSlot));
	tok->bos_id = tok->eos_id = tok->pad_id = tok->unk_id = tok->model_unk = -1;
	if (tok->flags == NULL || tok->model == NULL || tok->text == NULL ||
		tok->vocab_slots == NULL || tok->merges == NULL)
	{
		bpe_tokenizer_free(tok);
		return peft_fail(err, PEFT_ERR_NOMEM, "BPE tokenizer: out of memory");
	}
	for (uint32_t i = 0; i <= tok->merge_mask; i++)
		tok->merges[i].rank = -1;
	build_byte_alphabet(tok);
	*out = tok;
	return PEFT_OK;
}

/* The model id of text s, or -1. */
static int32_t
vocab_lookup(const BpeTokenizer *tok, const char *s, size_t len)
{
	uint32_t	i = hash_bytes(s, len) & tok->vocab_mask;

	for (;;)
	{
		int32_t		slot = tok->vocab_slots[i];
		const ArenaString *m;

		if (slot == 0)
			return -1;
		m = &tok->model[slot - 1];
		if (m->len == len && memcmp(tok->arena + m->off, s, len) == 0)
			return slot - 1;
		i = (i + 1) & tok->vocab_mask;
	}
}

/*
 * Give id the model text s.  A text given twice keeps the later id, as
 * Hugging Face's vocabulary map does; the earlier id loses its token.
 */
static PeftCode
add_model_token(BpeTokenizer *tok, int64_t id, const char *s, size_t len, PeftError *err)
{
	uint32_t	i;
	PeftCode	rc;

	if (id < 0 || id >= tok->n_ids)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: id %lld out of range", (long long) id);
	if (tok->flags[id] & TOKEN_IN_MODEL)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: id %lld given twice", (long long) id);
	if (len > BPE_MAX_TOKEN_BYTES)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: token %lld has %zu bytes (limit %d)",
						 (long long) id, len, BPE_MAX_TOKEN_BYTES);
	if (!utf8_valid(s, len))
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE vocabulary: token %lld is not valid UTF-8",
						 (long long) id);
	if ((rc = arena_add(tok, s, len, &tok->model[id], err)) != PEFT_OK)
		return rc;
	tok->text[id] = tok->model[id];
	tok->flags[id] |= TOKEN_IN_MODEL | TOKEN_HAS_TEXT;
	i = hash_bytes(s, len) & tok->vocab_mask;
	for (;;)
	{
		int32_t		slot = tok->vocab_slots[i];

		if (slot == 0)
		{
			tok->vocab_slots[i] = (int32_t) id + 1;
			return PEFT_OK;
		}
		if (tok->model[slot - 1].len == len &&
			memcmp(tok->arena + tok->model[slot - 1].off, s, len) == 0)
		{
			/* the earlier id keeps no token (it cannot be produced or decoded) */
			tok->flags[slot - 1] &= (uint8_t) ~(TOKEN_IN_MODEL | TOKEN_HAS_TEXT);
			tok->vocab_slots[i] = (int32_t) id + 1;
			return PEFT_OK;
		}
		i = (i + 1) & tok->vocab_mask;
	}
}

/* The merge of (left, right), or NULL. */
static const MergeSlot *
merge_lookup(const BpeTokenizer *tok, int32_t left, int32_t right)
{
	uint32_t	i = hash_pair(left, right) & tok->merge_mask;

	for (;;)
	{
		const MergeSlot *m = &tok->merges[i];

		if (m->rank < 0)
			return NULL;
		if (m->left == left && m->right == right)
			return m;
		i = (i + 1) & tok->merge_mask;
	}
}

/*
 * Add merge number rank: a (alen bytes) + b -> the token a b.  All three
 * must be model tokens (Hugging Face refuses the vocabulary otherwise).  A
 * pair merged twice keeps the later rank, as Hugging Face's map does.
 */
static PeftCode
add_merge(BpeTokenizer *tok, int32_t rank, const char *a, size_t alen, const char *b,
		  size_t blen, PeftError *err)
{
	char		joined[2 * BPE_MAX_TOKEN_BYTES];
	int32_t		left,
				right,
				merged;
	uint32_t	i;

	if ((left = vocab_lookup(tok, a, alen)) < 0 || (right = vocab_lookup(tok, b, blen)) < 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE merges: merge %d (\"%.*s\" \"%.*s\") names a token "
						 "not in the vocabulary", rank + 1, (int) (alen > 64 ? 64 : alen), a,
						 (int) (blen > 64 ? 64 : blen), b);
	memcpy(joined, a, alen);
	memcpy(joined + alen, b, blen);
	if ((merged = vocab_lookup(tok, joined, alen + blen)) < 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE merges: merge %d (\"%.*s\" \"%.*s\") makes a token "
						 "not in the vocabulary", rank + 1, (int) (alen > 64 ? 64 : alen), a,
						 (int) (blen > 64 ? 64 : blen), b);
	i = hash_pair(left, right) & tok->merge_mask;
	while (tok->merges[i].rank >= 0 && (tok->merges[i].left != left || tok->merges[i].right != right))
		i = (i + 1) & tok->merge_mask;
	if (tok->merges[i].rank < 0)
		tok->n_merges++;
	tok->merges[i].left = left;
	tok->merges[i].right = right;
	tok->merges[i].rank = rank;
	tok->merges[i].merged = merged;
	return PEFT_OK;
}

/* Add merge number rank from its "a b" form: exactly one space. */
static PeftCode
add_merge_line(BpeTokenizer *tok, int32_t rank, const char *line, size_t len, PeftError *err)
{
	const char *space = memchr(line, ' ', len);

	if (space == NULL || memchr(space + 1, ' ', len - (size_t) (space - line) - 1) != NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE merges: merge %d (\"%.*s\") is not two tokens "
						 "separated by one space", rank + 1, (int) (len > 64 ? 64 : len), line);
	return add_merge(tok, rank, line, (size_t) (space - line), space + 1,
					 len - (size_t) (space - line) - 1, err);
}

/*
 * Add an added token.  Its content is its display text; a content given
 * twice keeps the first (Hugging Face adds a content once).
 */
static PeftCode
add_added_token(BpeTokenizer *tok, const AddedToken *spec, const char *content, size_t len,
				PeftError *err)
{
	AddedToken *a;
	PeftCode	rc;

	if (spec->id < 0 || spec->id >= tok->n_ids)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE added tokens: id %d out of range", spec->id);
	if (len == 0 || len > BPE_MAX_TOKEN_BYTES || !utf8_valid(content, len))
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE added tokens: token %d is empty, longer than %d "
						 "bytes or not UTF-8", spec->id, BPE_MAX_TOKEN_BYTES);
	for (int i = 0; i < tok->n_added; i++)
	{
		const AddedToken *b = &tok->added[i];

		if (b->content.len == len && memcmp(tok->arena + b->content.off, content, len) == 0)
			return PEFT_OK;
		if (b->id == spec->id)
			return peft_fail(err, PEFT_ERR_FORMAT, "BPE added tokens: id %d given twice", spec->id);
	}
	if (tok->n_added >= MAX_ADDED_TOKENS)
		return peft_fail(err, PEFT_ERR_FORMAT, "BPE added tokens: more than %d", MAX_ADDED_TOKENS);
	if (tok->n_added % 64 == 0)
	{
		AddedToken *grown = realloc(tok->added, (size_t) (tok->n_added + 64) * sizeof(AddedToken));

		if (grown == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "BPE added tokens: out of memory");
		tok->added = grown;
	}
	a = &tok->added[tok->n_added];
	*a = *spec;
	if ((rc = arena_add(tok, content, len, &a->content, err)) != PEFT_OK)
		return rc;
	tok->n_added++;
	tok->text[a->id] = a->content;
	tok->flags[a->id] |= TOKEN_HAS_TEXT | TOKEN_ADDED | (a->special ? TOKEN_SPECIAL : 0);
	return PEFT_OK;
}

/* An added token's sort key: its first byte and length. */
typedef struct AddedOrderKey
{
	int			index;
	uint8_t		first;
	uint32_t	len;
} AddedOrderKey;

/* By first byte, then longest first, then by position: leftmost-longest matching. */
static int
compare_added(const void *a, const void *b)
{
	const AddedOrderKey *x = a;
	const AddedOrderKey *y = b;

	if (x->first != y->first)
		return x->first < y->first ? -1 : 1;
	if (x->len != y->len)
		return x->len > y->len ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Index the added tokens of each pass by first byte, longest first. */
static PeftCode
index_added(BpeTokenizer *tok, PeftError *err)
{
	AddedOrderKey *keys = malloc((size_t) (tok->n_added + 1) * sizeof(AddedOrderKey));

	if (keys == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "BPE added tokens: out of memory");
	for (int pass = 0; pass < 2; pass++)
	{
		int			n = 0;

		for (int i = 0; i < tok->n_added; i++)
			if ((int) tok->added[i].normalized == pass)
			{
				keys[n].index = i;
				keys[n].first = (uint8_t) tok->arena[tok->added[i].content.off];
				keys[n].len = tok->added[i].content.len;
				n++;
			}
		qsort(keys, (size_t) n, sizeof(AddedOrderKey), compare_added);
		tok->added_order[pass] = malloc((size_t) (n + 1) * sizeof(int));
		if (tok->added_order[pass] == NULL)
		{
			free(keys);
			return peft_fail(err, PEFT_ERR_NOMEM, "BPE added tokens: out of memory");
		}
		for (int i = 0; i < n; i++)
			tok->added_order[pass][i] = keys[i].index;
		/* added_start[pass][b] .. [b + 1]: the tokens starting with byte b */
		for (int b = 0, i = 0; b <= 256; b++)
		{
			while (i < n && keys[i].first < b)
				i++;
			tok->added_start[pass][b] = i;
		}
	}
	free(keys);
	return PEFT_OK;
}

/* Compute the tables derived from the vocabulary; check what encoding needs. */
static PeftCode
finish_tokenizer(BpeTokenizer *tok, PeftError *err)
{
	char		name[8];

	for (int b = 0; b < 256; b++)
	{
		char		c[2];
		size_t		n = utf8_encode_small(tok->byte_char[b], c);

		tok->byte_id[b] = vocab_lookup(tok, c, n);
		snprintf(name, sizeof(name), "<0x%02X>", b);
		tok->fallback_id[b] = vocab_lookup(tok, name, strlen(name));
	}
	for (int32_t id = 0; id < tok->n_ids; id++)
	{
		const ArenaString *t = &tok->text[id];

		if (!(tok->flags[id] & TOKEN_HAS_TEXT))
			continue;
		if (!in_byte_alphabet(tok, tok->arena + t->off, t->len))
			tok->flags[id] |= TOKEN_RAW;
		if (t->len > tok->max_text_len)
			tok->max_text_len = t->len;
	}
	if (tok->pre == NULL || !pretokenizer_ends_byte_level(tok->pre))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "BPE tokenizer: the pre-tokenizer must end with ByteLevel");
	return index_added(tok, err);
}

/* Free everything. */
void
bpe_tokenizer_free(BpeTokenizer *tok)
{
	if (tok == NULL)
		return;
	free(tok->flags);
	free(tok->model);
	free(tok->text);
	free(tok->arena);
	free(tok->vocab_slots);
	free(tok->merges);
	free(tok->added);
	free(tok->added_order[0]);
	free(tok->added_order[1]);
	pretokenizer_free(tok->pre);
	free(tok);
}


/* ---- loading from GGUF ------------------------------------------------------ */

/* Walks the encoded elements of a GGUF string array, bounded by the mapping. */
typedef struct GgufStrings
{
	const uint8_t *p;
	const uint8_t *end;
	uint64_t	left;
} GgufStrings;

/* Start walking the string array under key; error naming it if it is not one. */
static PeftCode
gguf_strings(const GgufFile *file, const char *key, GgufStrings *it, uint64_t *count,
			 PeftError *err)
{
	const GgufValue *v = gguf_find(file, key);

	if (v == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s is missing", key);
	if (v->type != GGUF_ARRAY || v->elem_type != GGUF_STRING)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s is not an array of strings", key);
	if (v->elems < file->base || v->elems > file->base + file->size)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s lies outside the file", key);
	it->p = v->elems;
	it->end = file->base + file->size;
	it->left = v->count;
	*count = v->count;
	return PEFT_OK;
}

/* The next string of the walk (bounds checked again: the file is not trusted). */
static PeftCode
gguf_next_string(GgufStrings *it, const char *key, const char **s, size_t *len, PeftError *err)
{
	uint64_t	n;

	if (it->left == 0 || (size_t) (it->end - it->p) < 8)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s is truncated", key);
	memcpy(&n, it->p, 8);		/* little-endian, as the reader requires */
	if (n > (uint64_t) (it->end - it->p - 8))
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s is truncated", key);
	*s = (const char *) it->p + 8;
	*len = (size_t) n;
	it->p += 8 + n;
	it->left--;
	return PEFT_OK;
}

/* An optional id key: -1 when absent, an error when present but not an id. */
static PeftCode
gguf_optional_id(const GgufFile *file, const char *key, int32_t n_ids, int32_t *out,
				 PeftError *err)
{
	uint64_t	u;
	PeftCode	rc;

	*out = -1;
	if (gguf_find(file, key) == NULL)
		return PEFT_OK;
	if ((rc = gguf_get_uint(file, key, &u, err)) != PEFT_OK)
		return rc;
	if (u >= (uint64_t) n_ids)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s = %llu is not an id (vocabulary of %d)",
						 key, (unsigned long long) u, n_ids);
	*out = (int32_t) u;
	return PEFT_OK;
}

/* An optional boolean key: false when absent. */
static PeftCode
gguf_optional_bool(const GgufFile *file, const char *key, bool *out, PeftError *err)
{
	const GgufValue *v = gguf_find(file, key);

	*out = false;
	if (v == NULL)
		return PEFT_OK;
	if (v->type != GGUF_BOOL)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %s is not a boolean", key);
	*out = v->u != 0;
	return PEFT_OK;
}

/*
 * The model tokens.  A token with a character outside the byte alphabet is
 * respelled as the characters of its UTF-8 bytes, as transformers' GGUF
 * loader does (llama.cpp writes some added tokens unspelled).
 */
static PeftCode
gguf_load_tokens(BpeTokenizer *tok, const GgufFile *file, PeftError *err)
{
	static const char key[] = "tokenizer.ggml.tokens";
	char		respelled[2 * BPE_MAX_TOKEN_BYTES];
	GgufStrings it;
	uint64_t	count;
	PeftCode	rc;

	if ((rc = gguf_strings(file, key, &it, &count, err)) != PEFT_OK)
		return rc;
	for (int32_t id = 0; id < tok->n_ids; id++)
	{
		const char *s = NULL;
		size_t		len = 0;
		bool		respell;

		if ((rc = gguf_next_string(&it, key, &s, &len, err)) != PEFT_OK)
			return rc;
		respell = len <= BPE_MAX_TOKEN_BYTES && utf8_valid(s, len) && !in_byte_alphabet(tok, s, len);
		if (respell)
		{
			size_t		n = 0;

			for (size_t i = 0; i < len; i++)
				n += utf8_encode_small(tok->byte_char[(uint8_t) s[i]], respelled + n);
			s = respelled;
			len = n;
		}
		if ((rc = add_model_token(tok, id, s, len, err)) != PEFT_OK)
			return rc;
		if (respell)
			tok->flags[id] |= TOKEN_RESPELLED;
	}
	return PEFT_OK;
}

/* The merges, in rank order. */
static PeftCode
gguf_load_merges(BpeTokenizer *tok, const GgufFile *file, PeftError *err)
{
	static const char key[] = "tokenizer.ggml.merges";
	GgufStrings it;
	uint64_t	count;
	PeftCode	rc;

	if ((rc = gguf_strings(file, key, &it, &count, err)) != PEFT_OK)
		return rc;
	for (uint64_t i = 0; i < count; i++)
	{
		const char *s = "";
		size_t		len = 0;

		if ((rc = gguf_next_string(&it, key, &s, &len, err)) != PEFT_OK ||
			(rc = add_merge_line(tok, (int32_t) i, s, len, err)) != PEFT_OK)
			return rc;
	}
	return PEFT_OK;
}

/*
 * Added tokens from tokenizer.ggml.token_type, as transformers' GGUF loader
 * makes them: control (3) tokens are special, user-defined (4) ones added
 * but not special; only those spelled in the byte alphabet (a control
 * token that is not is a llama.cpp mislabel).  None is normalised.
 */
static PeftCode
gguf_load_added(BpeTokenizer *tok, const GgufFile *file, PeftError *err)
{
	const GgufValue *v = gguf_find(file, "tokenizer.ggml.token_type");
	PeftCode	rc;

	if (v == NULL)
		return PEFT_OK;
	if (v->type != GGUF_ARRAY || v->elem_type != GGUF_I32 || v->count != (uint64_t) tok->n_ids)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: tokenizer.ggml.token_type is not an "
						 "array of %d int32", tok->n_ids);
	if (v->elems < file->base || (size_t) (file->base + file->size - v->elems) / 4 < v->count)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: tokenizer.ggml.token_type is truncated");
	for (int32_t id = 0; id < tok->n_ids; id++)
	{
		int32_t		type;
		AddedToken	spec = {0};
		const ArenaString *t = &tok->model[id];

		memcpy(&type, v->elems + 4 * (size_t) id, 4);
		if (type < 0 || type > 6)
			return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: token %d has type %d (0 to 6 allowed)",
							 id, type);
		if ((type != 3 && type != 4) || !(tok->flags[id] & TOKEN_IN_MODEL) ||
			(tok->flags[id] & TOKEN_RESPELLED) || t->len == 0)
			continue;
		spec.id = id;
		spec.special = type == 3;
		if ((rc = add_added_token(tok, &spec, tok->arena + t->off, t->len, err)) != PEFT_OK)
			return rc;
	}
	return PEFT_OK;
}

/* Load from GGUF metadata (see the header). */
PeftCode
bpe_tokenizer_from_gguf(const GgufFile *file, BpeTokenizer **out, PeftError *err)
{
	BpeTokenizer *tok = NULL;
	const GgufValue *tokens;
	const GgufValue *merges;
	char	   *model = NULL;
	char	   *pre = NULL;
	PeftCode	rc;

	if (out == NULL || file == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_tokenizer_from_gguf: no file or output");
	*out = NULL;
	if ((rc = gguf_get_string(file, "tokenizer.ggml.model", &model, err)) != PEFT_OK)
		return rc;
	if (strcmp(model, "gpt2") != 0)
	{
		rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "GGUF tokenizer: model \"%.64s\" is not byte-level "
					   "BPE (\"gpt2\")", model);
		free(model);
		return rc;
	}
	free(model);
	tokens = gguf_find(file, "tokenizer.ggml.tokens");
	merges = gguf_find(file, "tokenizer.ggml.merges");
	if (tokens == NULL || tokens->type != GGUF_ARRAY)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: tokenizer.ggml.tokens is missing");
	if (merges == NULL || merges->type != GGUF_ARRAY)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: tokenizer.ggml.merges is missing");
	if (tokens->count > BPE_MAX_TOKENS)
		return peft_fail(err, PEFT_ERR_FORMAT, "GGUF tokenizer: %llu tokens (at most %d)",
						 (unsigned long long) tokens->count, BPE_MAX_TOKENS);
	if ((rc = new_tokenizer((int64_t) tokens->count, (size_t) tokens->count,
							merges->count > MAX_MERGES ? (size_t) MAX_MERGES + 1 : (size_t) merges->count,
							&tok, err)) != PEFT_OK)
		return rc;

	if (gguf_find(file, "tokenizer.ggml.pre") != NULL)
		rc = gguf_get_string(file, "tokenizer.ggml.pre", &pre, err);
	if (rc == PEFT_OK)
		rc = pretokenizer_from_name(pre ? pre : "gpt2", &tok->pre, err);
	/* llama.cpp takes a Llama 3 piece that is a token whole, as its tokenizer.json says */
	tok->ignore_merges = pre != NULL && (strcmp(pre, "llama3") == 0 || strcmp(pre, "llama-v3") == 0 ||
										 strcmp(pre, "llama-bpe") == 0);
	free(pre);
	if (rc == PEFT_OK)
		rc = gguf_load_tokens(tok, file, err);
	if (rc == PEFT_OK)
		rc = gguf_load_merges(tok, file, err);
	if (rc == PEFT_OK)
		rc = gguf_load_added(tok, file, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_id(file, "tokenizer.ggml.bos_token_id", tok->n_ids, &tok->bos_id, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_id(file, "tokenizer.ggml.eos_token_id", tok->n_ids, &tok->eos_id, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_id(file, "tokenizer.ggml.padding_token_id", tok->n_ids, &tok->pad_id, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_id(file, "tokenizer.ggml.unknown_token_id", tok->n_ids, &tok->unk_id, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_bool(file, "tokenizer.ggml.add_bos_token", &tok->add_bos, err);
	if (rc == PEFT_OK)
		rc = gguf_optional_bool(file, "tokenizer.ggml.add_eos_token", &tok->add_eos, err);
	/* the BPE model has no unk token: a byte without a token is dropped, as in transformers */
	if (rc == PEFT_OK)
		rc = finish_tokenizer(tok, err);
	if (rc != PEFT_OK)
	{
		bpe_tokenizer_free(tok);
		return rc;
	}
	*out = tok;
	return PEFT_OK;
}


/* ---- loading from tokenizer.json --------------------------------------------- */

/* A member of obj that must be a string (or absent: NULL, when optional). */
static PeftCode
json_string(const cJSON *obj, const char *name, bool optional, const char **out, PeftError *err)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

	*out = NULL;
	if ((item == NULL || cJSON_IsNull(item)) && optional)
		return PEFT_OK;
	if (!cJSON_IsString(item) || item->valuestring == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: \"%s\" is %s", name,
						 item == NULL ? "missing" : "not a string");
	*out = item->valuestring;
	return PEFT_OK;
}

/* A member of obj that must be a boolean; dflt when absent or null. */
static PeftCode
json_bool(const cJSON *obj, const char *name, bool dflt, bool *out, PeftError *err)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

	*out = dflt;
	if (item == NULL || cJSON_IsNull(item))
		return PEFT_OK;
	if (!cJSON_IsBool(item))
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: \"%s\" is not a boolean", name);
	*out = cJSON_IsTrue(item);
	return PEFT_OK;
}

/* A JSON number that must be an integer in [0, BPE_MAX_TOKENS). */
static PeftCode
json_id(const cJSON *item, const char *what, int64_t *out, PeftError *err)
{
	double		d;

	if (!cJSON_IsNumber(item))
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: %s has no numeric id", what);
	d = item->valuedouble;
	if (!(d >= 0 && d < BPE_MAX_TOKENS) || d != (double) (int64_t) d)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: %s has id %g (0 to %d allowed)",
						 what, d, BPE_MAX_TOKENS - 1);
	*out = (int64_t) d;
	return PEFT_OK;
}

/* The "type" of a JSON object, or "" when absent. */
static const char *
json_type(const cJSON *obj)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");

	return cJSON_IsString(t) && t->valuestring ? t->valuestring : "";
}

/* Check model's settings this tokenizer supports and read its flags. */
static PeftCode
json_model_options(BpeTokenizer *tok, const cJSON *model, PeftError *err)
{
	const char *s;
	const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
	PeftCode	rc;

	if (*json_type(model) != '\0' && strcmp(json_type(model), "BPE") != 0)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: model type \"%.32s\" is not BPE",
						 json_type(model));
	if (dropout != NULL && !cJSON_IsNull(dropout) &&
		!(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
	if ((rc = json_string(model, "continuing_subword_prefix", true, &s, err)) != PEFT_OK)
		return rc;
	if (s != NULL && *s != '\0')
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: continuing_subword_prefix is not supported");
	if ((rc = json_string(model, "end_of_word_suffix", true, &s, err)) != PEFT_OK)
		return rc;
	if (s != NULL && *s != '\0')
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: end_of_word_suffix is not supported");
	if ((rc = json_bool(model, "fuse_unk", false, &tok->fuse_unk, err)) != PEFT_OK ||
		(rc = json_bool(model, "byte_fallback", false, &tok->byte_fallback, err)) != PEFT_OK ||
		(rc = json_bool(model, "ignore_merges", false, &tok->ignore_merges, err)) != PEFT_OK)
		return rc;
	return PEFT_OK;
}

/* The vocabulary object: text -> id. */
static PeftCode
json_vocab(BpeTokenizer *tok, const cJSON *vocab, PeftError *err)
{
	const cJSON *item;
	PeftCode	rc;

	cJSON_ArrayForEach(item, vocab)
	{
		int64_t		id = 0;

		if (item->string == NULL)
			return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: vocab entry without a token");
		if ((rc = json_id(item, "a vocab entry", &id, err)) != PEFT_OK ||
			(rc = add_model_token(tok, id, item->string, strlen(item->string), err)) != PEFT_OK)
			return rc;
	}
	return PEFT_OK;
}

/* The merges: "a b" strings or [a, b] pairs, in rank order. */
static PeftCode
json_merges(BpeTokenizer *tok, const cJSON *merges, PeftError *err)
{
	const cJSON *item;
	int32_t		rank = 0;
	PeftCode	rc;

	cJSON_ArrayForEach(item, merges)
	{
		if (cJSON_IsString(item) && item->valuestring != NULL)
			rc = add_merge_line(tok, rank, item->valuestring, strlen(item->valuestring), err);
		else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 &&
				 cJSON_IsString(item->child) && cJSON_IsString(item->child->next) &&
				 strlen(item->child->valuestring) <= BPE_MAX_TOKEN_BYTES &&
				 strlen(item->child->next->valuestring) <= BPE_MAX_TOKEN_BYTES)
			rc = add_merge(tok, rank, item->child->valuestring, strlen(item->child->valuestring),
						   item->child->next->valuestring, strlen(item->child->next->valuestring), err);
		else
			rc = peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: merge %d is neither \"a b\" nor "
						   "[\"a\", \"b\"] of tokens", rank + 1);
		if (rc != PEFT_OK)
			return rc;
		rank++;
	}
	return PEFT_OK;
}

/* The added_tokens array. */
static PeftCode
json_added(BpeTokenizer *tok, const cJSON *added, PeftError *err)
{
	const cJSON *item;
	PeftCode	rc;

	cJSON_ArrayForEach(item, added)
	{
		AddedToken	spec = {0};
		const char *content;
		int64_t		id = 0;

		if (!cJSON_IsObject(item))
			return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: an added token is not an object");
		if ((rc = json_id(cJSON_GetObjectItemCaseSensitive(item, "id"), "an added token", &id, err)) != PEFT_OK ||
			(rc = json_string(item, "content", false, &content, err)) != PEFT_OK ||
			(rc = json_bool(item, "special", false, &spec.special, err)) != PEFT_OK ||
			(rc = json_bool(item, "lstrip", false, &spec.lstrip, err)) != PEFT_OK ||
			(rc = json_bool(item, "rstrip", false, &spec.rstrip, err)) != PEFT_OK ||
			(rc = json_bool(item, "single_word", false, &spec.single_word, err)) != PEFT_OK ||
			(rc = json_bool(item, "normalized", !spec.special, &spec.normalized, err)) != PEFT_OK)
			return rc;
		spec.id = (int32_t) id;
		if ((rc = add_added_token(tok, &spec, content, strlen(content), err)) != PEFT_OK)
			return rc;
	}
	return PEFT_OK;
}

/* The normalizer: null, NFC, or a Sequence of those. */
static PeftCode
json_normalizer(BpeTokenizer *tok, const cJSON *norm, int depth, PeftError *err)
{
	const char *type;

	if (norm == NULL || cJSON_IsNull(norm))
		return PEFT_OK;
	type = json_type(norm);
	if (strcmp(type, "NFC") == 0)
	{
		tok->nfc = true;
		return PEFT_OK;
	}
	if (strcmp(type, "Sequence") == 0 && depth < MAX_JSON_DEPTH)
	{
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
		const cJSON *item;
		PeftCode	rc;

		if (!cJSON_IsArray(list))
			return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: normalizer Sequence without a list");
		cJSON_ArrayForEach(item, list)
			if ((rc = json_normalizer(tok, item, depth + 1, err)) != PEFT_OK)
			return rc;
		return PEFT_OK;
	}
	return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: normalizer \"%.32s\" is not supported "
					 "(null or NFC)", type);
}

/* A Split step: an Isolated, not inverted split by a Regex or String pattern. */
static PeftCode
json_split(Pretokenizer *pre, const cJSON *node, PeftError *err)
{
	const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(node, "pattern");
	const char *behavior;
	const char *text = NULL;
	bool		literal = false;
	bool		invert;
	PeftCode	rc;

	if ((rc = json_string(node, "behavior", false, &behavior, err)) != PEFT_OK ||
		(rc = json_bool(node, "invert", false, &invert, err)) != PEFT_OK)
		return rc;
	if (strcmp(behavior, "Isolated") != 0 || invert)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: Split behavior \"%.32s\"%s is not "
						 "supported (Isolated)", behavior, invert ? " inverted" : "");
	if (cJSON_IsObject(pattern))
	{
		if ((rc = json_string(pattern, "Regex", true, &text, err)) != PEFT_OK)
			return rc;
		if (text == NULL)
		{
			if ((rc = json_string(pattern, "String", false, &text, err)) != PEFT_OK)
				return rc;
			literal = true;
		}
	}
	if (text == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: Split without a Regex or String pattern");
	return pretokenizer_add_split(pre, text, strlen(text), literal, err);
}

/* One pre-tokenizer node: Sequence, Split, Digits or ByteLevel. */
static PeftCode
json_pre_tokenizer(Pretokenizer *pre, const cJSON *node, int depth, PeftError *err)
{
	const char *type;
	PeftCode	rc;

	if (!cJSON_IsObject(node))
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: the pre-tokenizer is missing "
						 "(a byte-level BPE needs ByteLevel)");
	type = json_type(node);
	if (strcmp(type, "Sequence") == 0 && depth < MAX_JSON_DEPTH)
	{
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "pretokenizers");
		const cJSON *item;

		if (!cJSON_IsArray(list))
			return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: pre-tokenizer Sequence without a list");
		cJSON_ArrayForEach(item, list)
			if ((rc = json_pre_tokenizer(pre, item, depth + 1, err)) != PEFT_OK)
			return rc;
		return PEFT_OK;
	}
	if (strcmp(type, "Split") == 0)
		return json_split(pre, node, err);
	if (strcmp(type, "Digits") == 0)
	{
		bool		individual;

		if ((rc = json_bool(node, "individual_digits", false, &individual, err)) != PEFT_OK)
			return rc;
		return pretokenizer_add_digits(pre, individual, err);
	}
	if (strcmp(type, "ByteLevel") == 0)
	{
		bool		prefix,
					regex;

		/* Hugging Face's defaults when a field is left out */
		if ((rc = json_bool(node, "add_prefix_space", true, &prefix, err)) != PEFT_OK ||
			(rc = json_bool(node, "use_regex", true, &regex, err)) != PEFT_OK)
			return rc;
		return pretokenizer_add_byte_level(pre, prefix, regex, err);
	}
	return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer \"%.32s\" is not supported "
					 "(Sequence, Split, Digits, ByteLevel)", type);
}

/* Parse the whole document into tok (allocated here). */
static PeftCode
json_tokenizer(const cJSON *root, BpeTokenizer **out, PeftError *err)
{
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "decoder");
	const cJSON *item;
	const char *unk;
	int64_t		max_id = -1;
	BpeTokenizer *tok;
	PeftCode	rc;

	if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: model.vocab (object) or model.merges "
						 "(array) is missing");
	if (added != NULL && !cJSON_IsNull(added) && !cJSON_IsArray(added))
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: added_tokens is not an array");
	if (!cJSON_IsObject(decoder) || strcmp(json_type(decoder), "ByteLevel") != 0)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED, "tokenizer.json: the decoder must be ByteLevel");
	/* the ids decide the size: find the largest first */
	cJSON_ArrayForEach(item, vocab)
		if (cJSON_IsNumber(item) && item->valuedouble > max_id && item->valuedouble < BPE_MAX_TOKENS)
		max_id = (int64_t) item->valuedouble;
	cJSON_ArrayForEach(item, added)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");

		if (cJSON_IsNumber(id) && id->valuedouble > max_id && id->valuedouble < BPE_MAX_TOKENS)
			max_id = (int64_t) id->valuedouble;
	}
	if ((rc = new_tokenizer(max_id + 1, (size_t) cJSON_GetArraySize(vocab),
							(size_t) cJSON_GetArraySize(merges), &tok, err)) != PEFT_OK)
		return rc;
	if ((rc = json_model_options(tok, model, err)) == PEFT_OK &&
		(rc = json_vocab(tok, vocab, err)) == PEFT_OK &&
		(rc = json_merges(tok, merges, err)) == PEFT_OK &&
		(rc = json_added(tok, added, err)) == PEFT_OK &&
		(rc = json_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0, err)) == PEFT_OK &&
		(rc = pretokenizer_create(&tok->pre, err)) == PEFT_OK &&
		(rc = json_pre_tokenizer(tok->pre, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
								 0, err)) == PEFT_OK &&
		(rc = json_string(model, "unk_token", true, &unk, err)) == PEFT_OK)
	{
		if (unk != NULL && (tok->model_unk = vocab_lookup(tok, unk, strlen(unk))) < 0)
			rc = peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: unk_token \"%.64s\" is not in the vocabulary", unk);
		tok->unk_id = tok->model_unk;
		if (rc == PEFT_OK)
			rc = finish_tokenizer(tok, err);
	}
	if (rc != PEFT_OK)
	{
		bpe_tokenizer_free(tok);
		return rc;
	}
	*out = tok;
	return PEFT_OK;
}

/* Load from the text of a tokenizer.json. */
PeftCode
bpe_tokenizer_from_json(const char *json, size_t len, BpeTokenizer **out, PeftError *err)
{
	cJSON	   *root;
	PeftCode	rc;

	if (out == NULL || (json == NULL && len > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_tokenizer_from_json: no text or output");
	*out = NULL;
	if (len > MAX_JSON_BYTES)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: %zu bytes (limit %zu)", len, MAX_JSON_BYTES);
	root = cJSON_ParseWithLength(json, len);
	if (root == NULL)
		return peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: not valid JSON");
	rc = cJSON_IsObject(root) ? json_tokenizer(root, out, err) :
		peft_fail(err, PEFT_ERR_FORMAT, "tokenizer.json: not a JSON object");
	cJSON_Delete(root);
	return rc;
}

/* Load a tokenizer.json file. */
PeftCode
bpe_tokenizer_load_json(const char *path, BpeTokenizer **out, PeftError *err)
{
	char	   *data;
	size_t		len;
	PeftCode	rc;

	if (out == NULL || path == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_tokenizer_load_json: no path or output");
	*out = NULL;
	if ((rc = read_small_file(path, MAX_JSON_BYTES, &data, &len, err)) != PEFT_OK)
		return rc;
	rc = bpe_tokenizer_from_json(data, len, out, err);
	free(data);
	return rc;
}


/* ---- the vocabulary -------------------------------------------------------- */

/* Number of ids. */
int32_t
bpe_vocab_size(const BpeTokenizer *tok)
{
	return tok ? tok->n_ids : 0;
}

/* Id of a token by its text: added tokens first, then the model's. */
int32_t
bpe_token_id(const BpeTokenizer *tok, const char *text, size_t len)
{
	if (tok == NULL || (text == NULL && len > 0))
		return -1;
	for (int i = 0; i < tok->n_added; i++)
	{
		const ArenaString *c = &tok->added[i].content;

		if (c->len == len && memcmp(tok->arena + c->off, text, len) == 0)
			return tok->added[i].id;
	}
	return vocab_lookup(tok, text, len);
}

/* A token's display text. */
const char *
bpe_token_text(const BpeTokenizer *tok, int32_t id, size_t *len)
{
	if (tok == NULL || id < 0 || id >= tok->n_ids || !(tok->flags[id] & TOKEN_HAS_TEXT))
	{
		if (len)
			*len = 0;
		return NULL;
	}
	if (len)
		*len = tok->text[id].len;
	return tok->arena + tok->text[id].off;
}

/* Whether id is special. */
bool
bpe_is_control(const BpeTokenizer *tok, int32_t id)
{
	return tok != NULL && id >= 0 && id < tok->n_ids && (tok->flags[id] & TOKEN_SPECIAL) != 0;
}

/* Special ids from the GGUF keys, -1 when absent. */
int32_t
bpe_bos_id(const BpeTokenizer *tok)
{
	return tok ? tok->bos_id : -1;
}

/* The end-of-sequence id, -1 when absent. */
int32_t
bpe_eos_id(const BpeTokenizer *tok)
{
	return tok ? tok->eos_id : -1;
}

/* The padding id, -1 when absent. */
int32_t
bpe_pad_id(const BpeTokenizer *tok)
{
	return tok ? tok->pad_id : -1;
}

/* The unknown-token id, -1 when absent. */
int32_t
bpe_unk_id(const BpeTokenizer *tok)
{
	return tok ? tok->unk_id : -1;
}

/* Whether the model wants BOS first. */
bool
bpe_add_bos(const BpeTokenizer *tok)
{
	return tok != NULL && tok->add_bos;
}

/* Whether the model wants EOS last. */
bool
bpe_add_eos(const BpeTokenizer *tok)
{
	return tok != NULL && tok->add_eos;
}


/* ---- encoding ---------------------------------------------------------------- */

/* A symbol of the word being merged: a doubly linked list in an array. */
typedef struct Symbol
{
	int32_t		id;
	int32_t		prev;
	int32_t		next;
	bool		removed;
} Symbol;

/* A merge candidate: the pair starting at pos merges into merged. */
typedef struct Candidate
{
	int32_t		rank;
	int32_t		pos;
	int32_t		merged;
} Candidate;

/* The state of one bpe_encode call: output and scratch buffers. */
typedef struct Encoder
{
	const BpeTokenizer *tok;
	bool		parse_special;
	int32_t    *ids;
	size_t		cap;
	size_t		count;
	bool		grow;			/* bpe_encode_alloc: ids is ours to enlarge */
	Symbol	   *sym;
	Candidate  *heap;
	size_t		sym_cap;		/* heap holds 3 * sym_cap */
	size_t		heap_len;
	char	   *mapped;			/* a piece in byte-level spelling */
	size_t		mapped_cap;
	PeftError  *err;
} Encoder;

/* Append one id to the output (counted even beyond cap). */
static PeftCode
emit(Encoder *enc, int32_t id)
{
	if (enc->count >= enc->cap && enc->grow)
	{
		size_t		cap = enc->cap ? 2 * enc->cap : 64;
		int32_t    *grown = realloc(enc->ids, cap * sizeof(int32_t));

		if (grown == NULL)
			return peft_fail(enc->err, PEFT_ERR_NOMEM, "BPE encode: out of memory");
		enc->ids = grown;
		enc->cap = cap;
	}
	if (enc->count < enc->cap)
		enc->ids[enc->count] = id;
	enc->count++;
	return PEFT_OK;
}

/* Make room for a word of n symbols and its candidates. */
static PeftCode
reserve_symbols(Encoder *enc, size_t n)
{
	Symbol	   *sym;
	Candidate  *heap;

	if (n <= enc->sym_cap)
		return PEFT_OK;
	if (n > (size_t) INT32_MAX / 3)
		return peft_fail(enc->err, PEFT_ERR_INVALID, "BPE encode: a piece of %zu bytes", n);
	sym = realloc(enc->sym, n * sizeof(Symbol));
	if (sym != NULL)
		enc->sym = sym;
	heap = realloc(enc->heap, 3 * n * sizeof(Candidate));
	if (heap != NULL)
		enc->heap = heap;
	if (sym == NULL || heap == NULL)
		return peft_fail(enc->err, PEFT_ERR_NOMEM, "BPE encode: out of memory");
	enc->sym_cap = n;
	return PEFT_OK;
}

/* Whether candidate a comes before b: lower rank, then leftmost. */
static inline bool
candidate_before(const Candidate *a, const Candidate *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

/* Push a candidate onto the heap (room was reserved: at most 3 per symbol). */
static void
heap_push(Encoder *enc, int32_t rank, int32_t pos, int32_t merged)
{
	Candidate  *h = enc->heap;
	size_t		i = enc->heap_len++;
	Candidate	c = {rank, pos, merged};

	while (i > 0 && candidate_before(&c, &h[(i - 1) / 2]))
	{
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = c;
}

/* Pop the first candidate. */
static Candidate
heap_pop(Encoder *enc)
{
	Candidate  *h = enc->heap;
	Candidate	top = h[0];
	Candidate	last = h[--enc->heap_len];
	size_t		n = enc->heap_len;
	size_t		i = 0;

	for (;;)
	{
		size_t		child = 2 * i + 1;

		if (child >= n)
			break;
		if (child + 1 < n && candidate_before(&h[child + 1], &h[child]))
			child++;
		if (!candidate_before(&h[child], &last))
			break;
		h[i] = h[child];
		i = child;
	}
	if (n > 0)
		h[i] = last;
	return top;
}

/* Queue the merge of the pair starting at pos, if the pair has one. */
static void
queue_pair(Encoder *enc, int32_t pos)
{
	const Symbol *s = enc->sym;
	const MergeSlot *m;

	if (pos < 0 || s[pos].next < 0)
		return;
	m = merge_lookup(enc->tok, s[pos].id, s[s[pos].next].id);
	if (m != NULL)
		heap_push(enc, m->rank, pos, m->merged);
}

/*
 * Merge the word's symbols as Hugging Face's Word::merge_all does: always
 * the candidate of lowest rank, leftmost on ties; a candidate whose pair
 * has changed since it was queued is dropped when it comes up.
 */
static void
merge_word(Encoder *enc, int32_t n)
{
	Symbol	   *s = enc->sym;

	enc->heap_len = 0;
	for (int32_t i = 0; i + 1 < n; i++)
		queue_pair(enc, i);
	while (enc->heap_len > 0)
	{
		Candidate	top = heap_pop(enc);
		int32_t		right;
		const MergeSlot *m;

		if (s[top.pos].removed || (right = s[top.pos].next) < 0)
			continue;
		m = merge_lookup(enc->tok, s[top.pos].id, s[right].id);
		if (m == NULL || m->merged != top.merged)
			continue;
		s[top.pos].id = top.merged;
		s[right].removed = true;
		s[top.pos].next = s[right].next;
		if (s[right].next >= 0)
			s[s[right].next].prev = top.pos;
		queue_pair(enc, s[top.pos].prev);
		queue_pair(enc, top.pos);
	}
}

/* Append a symbol to the word being built. */
static inline void
push_symbol(Encoder *enc, int32_t *n, int32_t id)
{
	Symbol	   *s = &enc->sym[*n];

	s->id = id;
	s->prev = *n - 1;
	s->next = -1;
	s->removed = false;
	if (*n > 0)
		enc->sym[*n - 1].next = *n;
	(*n)++;
}

/* Spell piece in the byte alphabet into enc->mapped; its length in *n. */
static PeftCode
map_piece(Encoder *enc, const char *piece, size_t len, size_t *n)
{
	if (2 * len > enc->mapped_cap)
	{
		char	   *grown = realloc(enc->mapped, 2 * len);

		if (grown == NULL)
			return peft_fail(enc->err, PEFT_ERR_NOMEM, "BPE encode: out of memory");
		enc->mapped = grown;
		enc->mapped_cap = 2 * len;
	}
	*n = 0;
	for (size_t i = 0; i < len; i++)
		*n += utf8_encode_small(enc->tok->byte_char[(uint8_t) piece[i]], enc->mapped + *n);
	return PEFT_OK;
}

/*
 * The symbols of an unknown byte, as Hugging Face's BPE treats a character
 * it has no token for: its <0xXX> tokens (byte_fallback, each UTF-8 byte of
 * the byte's character), else the unk token (fused with a preceding one
 * when fuse_unk), else nothing.  *unk holds a pending unk symbol.
 */
static void
unknown_byte(Encoder *enc, uint8_t byte, int32_t *n, int32_t *unk)
{
	const BpeTokenizer *tok = enc->tok;

	if (tok->byte_fallback)
	{
		char		c[2];
		size_t		len = utf8_encode_small(tok->byte_char[byte], c);
		bool		all = true;

		for (size_t k = 0; k < len; k++)
			all = all && tok->fallback_id[(uint8_t) c[k]] >= 0;
		if (all)
		{
			/* (a pending unk stays pending, after these, as in Hugging Face) */
			for (size_t k = 0; k < len; k++)
				push_symbol(enc, n, tok->fallback_id[(uint8_t) c[k]]);
			return;
		}
	}
	if (tok->model_unk < 0)
		return;
	if (*unk >= 0 && !tok->fuse_unk)
		push_symbol(enc, n, *unk);
	*unk = tok->model_unk;
}

/* BPE-encode one piece of the pre-tokenizer (the PretokSink). */
static PeftCode
encode_piece(void *ctx, const char *piece, size_t len, PeftError *err)
{
	Encoder    *enc = ctx;
	const BpeTokenizer *tok = enc->tok;
	int32_t		n = 0;
	int32_t		unk = -1;
	PeftCode	rc;

	if (tok->ignore_merges)
	{
		size_t		mlen = 0;
		int32_t		id;

		if ((rc = map_piece(enc, piece, len, &mlen)) != PEFT_OK)
			return rc;
		if ((id = vocab_lookup(tok, enc->mapped, mlen)) >= 0)
			return emit(enc, id);
	}
	if (len == 1 && tok->byte_id[(uint8_t) piece[0]] >= 0)
		return emit(enc, tok->byte_id[(uint8_t) piece[0]]);
	/*
	 * A byte makes one symbol, two with byte fallback; a pending unk is
	 * pushed by the byte after it, which pushed nothing, or at the end.
	 */
	if ((rc = reserve_symbols(enc, (tok->byte_fallback ? 2 : 1) * len + 1)) != PEFT_OK)
		return rc;
	for (size_t i = 0; i < len; i++)
	{
		int32_t		id = tok->byte_id[(uint8_t) piece[i]];

		if (id < 0)
		{
			unknown_byte(enc, (uint8_t) piece[i], &n, &unk);
			continue;
		}
		if (unk >= 0)
			push_symbol(enc, &n, unk);
		unk = -1;
		push_symbol(enc, &n, id);
	}
	if (unk >= 0)
		push_symbol(enc, &n, unk);
	merge_word(enc, n);
	for (int32_t i = 0; i < n; i++)
		if (!enc->sym[i].removed && (rc = emit(enc, enc->sym[i].id)) != PEFT_OK)
			return rc;
	return PEFT_OK;
}

/* Rust's char::is_whitespace: the White_Space property. */
static bool
is_white_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
		(c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
		c == 0x205F || c == 0x3000;
}

/* A word character for single_word: a letter, a number or '_'. */
static bool
is_word_char(uint32_t c)
{
	utf8proc_category_t cat;

	if (c == '_')
		return true;
	cat = utf8proc_category((utf8proc_int32_t) c);
	return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
		(cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* The character ending at s[end] (end > 0), and where it starts. */
static uint32_t
char_before(const char *s, size_t end, size_t *start)
{
	size_t		i = end - 1;
	size_t		n;

	while (i > 0 && end - i < 4 && ((uint8_t) s[i] & 0xC0) == 0x80)
		i--;
	*start = i;
	return utf8_decode((const uint8_t *) s + i, end - i, &n);
}

/* Whether an added token at s[start..stop) stands alone as a word. */
static bool
single_word_ok(const char *s, size_t len, size_t start, size_t stop)
{
	size_t		at;
	size_t		n;

	if (start > 0 && is_word_char(char_before(s, start, &at)))
		return false;
	if (stop < len && is_word_char(utf8_decode((const uint8_t *) s + stop, len - stop, &n)))
		return false;
	return true;
}

static PeftCode encode_segment(Encoder *enc, const char *s, size_t len, int pass);

/* Encode text between added tokens: normalise after pass 0, pre-tokenise after pass 1. */
static PeftCode
encode_gap(Encoder *enc, const char *s, size_t len, int pass)
{
	const BpeTokenizer *tok = enc->tok;
	utf8proc_uint8_t *nfc = NULL;
	utf8proc_ssize_t nlen;
	PeftCode	rc;

	if (len == 0)
		return PEFT_OK;
	if (pass == 1)
		return pretokenizer_run(tok->pre, s, len, encode_piece, enc, enc->err);
	if (tok->nfc)
	{
		/* text that is not UTF-8 cannot be normalised and is kept as it is */
		nlen = utf8proc_map((const utf8proc_uint8_t *) s, (utf8proc_ssize_t) len, &nfc,
							UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		if (nlen == UTF8PROC_ERROR_NOMEM)
			return peft_fail(enc->err, PEFT_ERR_NOMEM, "BPE encode: out of memory");
		if (nlen >= 0)
		{
			rc = encode_segment(enc, (const char *) nfc, (size_t) nlen, 1);
			free(nfc);
			return rc;
		}
	}
	return encode_segment(enc, s, len, 1);
}

/*
 * Find the added tokens of a pass in s, leftmost and longest as Hugging
 * Face's Aho-Corasick does, and encode them and the text between.  A match
 * that is skipped (special without parse_special, single_word not alone)
 * stays text, and no other match may start inside it.
 */
static PeftCode
encode_segment(Encoder *enc, const char *s, size_t len, int pass)
{
	const BpeTokenizer *tok = enc->tok;
	const int  *order = tok->added_order[pass];
	size_t		done = 0;		/* text before this is encoded */
	size_t		i = 0;
	PeftCode	rc;

	if (tok->added_start[pass][256] == 0)
		return encode_gap(enc, s, len, pass);
	while (i < len)
	{
		uint8_t		b = (uint8_t) s[i];
		const AddedToken *match = NULL;
		size_t		start,
					stop;

		for (int k = tok->added_start[pass][b]; k < tok->added_start[pass][b + 1]; k++)
		{
			const AddedToken *a = &tok->added[order[k]];

			if (a->content.len <= len - i && memcmp(tok->arena + a->content.off, s + i, a->content.len) == 0)
			{
				match = a;
				break;
			}
		}
		if (match == NULL)
		{
			i++;
			continue;
		}
		start = i;
		stop = i + match->content.len;
		if ((match->special && !enc->parse_special) ||
			(match->single_word && !single_word_ok(s, len, start, stop)))
		{
			i = stop;
			continue;
		}
		while (match->lstrip && start > done)
		{
			size_t		at;

			if (!is_white_space(char_before(s, start, &at)))
				break;
			start = at < done ? done : at;
		}
		while (match->rstrip && stop < len)
		{
			size_t		n;

			if (!is_white_space(utf8_decode((const uint8_t *) s + stop, len - stop, &n)))
				break;
			stop += n;
		}
		if ((rc = encode_gap(enc, s + done, start - done, pass)) != PEFT_OK ||
			(rc = emit(enc, match->id)) != PEFT_OK)
			return rc;
		done = i = stop;
	}
	return encode_gap(enc, s + done, len - done, pass);
}

/* Free an encoder's scratch buffers (not the output). */
static void
encoder_free(Encoder *enc)
{
	free(enc->sym);
	free(enc->heap);
	free(enc->mapped);
}

/* Run an encoder over text. */
static PeftCode
run_encoder(Encoder *enc, const char *text, size_t len)
{
	if (len > BPE_MAX_TEXT_BYTES)
		return peft_fail(enc->err, PEFT_ERR_INVALID, "BPE encode: a text of %zu bytes (limit %zu)",
						 len, BPE_MAX_TEXT_BYTES);
	return encode_segment(enc, text, len, 0);
}

/* Encode into the caller's buffer; count all. */
PeftCode
bpe_encode(const BpeTokenizer *tok, const char *text, size_t len, bool parse_special,
		   int32_t *ids, size_t cap, size_t *n_ids, PeftError *err)
{
	Encoder		enc = {0};
	PeftCode	rc;

	if (n_ids != NULL)
		*n_ids = 0;
	if (tok == NULL || n_ids == NULL || (text == NULL && len > 0) || (ids == NULL && cap > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode: NULL argument");
	enc.tok = tok;
	enc.parse_special = parse_special;
	enc.ids = ids;
	enc.cap = cap;
	enc.err = err;
	rc = run_encoder(&enc, text, len);
	encoder_free(&enc);
	if (rc == PEFT_OK)
		*n_ids = enc.count;
	return rc;
}

/* Encode into a malloc'ed array. */
PeftCode
bpe_encode_alloc(const BpeTokenizer *tok, const char *text, size_t len, bool parse_special,
				 int32_t **ids, size_t *n_ids, PeftError *err)
{
	Encoder		enc = {0};
	PeftCode	rc;

	if (ids != NULL)
		*ids = NULL;
	if (n_ids != NULL)
		*n_ids = 0;
	if (tok == NULL || ids == NULL || n_ids == NULL || (text == NULL && len > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_encode_alloc: NULL argument");
	enc.tok = tok;
	enc.parse_special = parse_special;
	enc.grow = true;
	enc.err = err;
	rc = run_encoder(&enc, text, len);
	encoder_free(&enc);
	if (rc != PEFT_OK || enc.count == 0)
	{
		free(enc.ids);
		return rc;
	}
	*ids = enc.ids;
	*n_ids = enc.count;
	return PEFT_OK;
}


/* ---- decoding ---------------------------------------------------------------- */

/* Write U+FFFD. */
static size_t
put_replacement(char *out)
{
	out[0] = (char) 0xEF;
	out[1] = (char) 0xBF;
	out[2] = (char) 0xBD;
	return 3;
}

/*
 * Feed one byte to the UTF-8 state: write what is complete.  An invalid
 * byte, or a held prefix that the byte does not continue, is one U+FFFD
 * (Unicode's "maximal subpart" practice, as Rust's and Python's lossy
 * decoders); the byte is then read afresh.
 */
static size_t
decoder_byte(BpeDecoder *dec, uint8_t b, char *out)
{
	size_t		n = 0;

	if (dec->npending > 0)
	{
		uint8_t		lead = dec->pending[0];
		uint8_t		lo = 0x80,
					hi = 0xBF;

		if (dec->npending == 1)
		{
			if (lead == 0xE0)
				lo = 0xA0;
			else if (lead == 0xED)
				hi = 0x9F;
			else if (lead == 0xF0)
				lo = 0x90;
			else if (lead == 0xF4)
				hi = 0x8F;
		}
		if (b >= lo && b <= hi)
		{
			dec->pending[dec->npending++] = b;
			if (dec->npending < dec->need)
				return 0;
			memcpy(out, dec->pending, dec->need);
			n = dec->need;
			dec->npending = 0;
			return n;
		}
		n = put_replacement(out);
		dec->npending = 0;
	}
	if (b < 0x80)
		out[n++] = (char) b;
	else if (b >= 0xC2 && b <= 0xF4)
	{
		dec->pending[0] = b;
		dec->npending = 1;
		dec->need = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
	}
	else
		n += put_replacement(out + n);
	return n;
}

/* Start a stream. */
void
bpe_decoder_init(BpeDecoder *dec)
{
	if (dec != NULL)
		memset(dec, 0, sizeof(*dec));
}

/* Each byte of a token (and the 3 held) may become a 3-byte U+FFFD. */
size_t
bpe_decode_bound(const BpeTokenizer *tok)
{
	return tok ? 3 * (tok->max_text_len + 3) : 0;
}

/* Feed one id. */
PeftCode
bpe_decoder_feed(const BpeTokenizer *tok, BpeDecoder *dec, int32_t id, bool skip_special,
				 char *out, size_t cap, size_t *n_out, PeftError *err)
{
	const uint8_t *t;
	size_t		len;
	size_t		n = 0;

	if (n_out != NULL)
		*n_out = 0;
	if (tok == NULL || dec == NULL || out == NULL || n_out == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_decoder_feed: NULL argument");
	if (id < 0 || id >= tok->n_ids)
		return peft_fail(err, PEFT_ERR_INVALID, "BPE decode: id %d out of range (vocabulary of %d)",
						 id, tok->n_ids);
	if (cap < bpe_decode_bound(tok))
		return peft_fail(err, PEFT_ERR_INVALID, "BPE decode: output room %zu < bpe_decode_bound %zu",
						 cap, bpe_decode_bound(tok));
	if (!(tok->flags[id] & TOKEN_HAS_TEXT) || (skip_special && (tok->flags[id] & TOKEN_SPECIAL)))
		return PEFT_OK;
	t = (const uint8_t *) tok->arena + tok->text[id].off;
	len = tok->text[id].len;
	if (tok->flags[id] & TOKEN_RAW)
	{
		for (size_t i = 0; i < len; i++)
			n += decoder_byte(dec, t[i], out + n);
	}
	else
	{
		for (size_t i = 0; i < len;)
		{
			size_t		k;
			uint32_t	c = utf8_decode(t + i, len - i, &k);

			/* TOKEN_RAW is clear: every character is in the alphabet */
			n += decoder_byte(dec, (uint8_t) tok->char_byte[c], out + n);
			i += k;
		}
	}
	*n_out = n;
	return PEFT_OK;
}

/* End a stream. */
size_t
bpe_decoder_flush(BpeDecoder *dec, char *out)
{
	if (dec == NULL || dec->npending == 0)
		return 0;
	dec->npending = 0;
	return put_replacement(out);
}

/* Decode a whole id array. */
PeftCode
bpe_decode(const BpeTokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
		   char **text, size_t *len, PeftError *err)
{
	BpeDecoder	dec;
	size_t		bound;
	size_t		used = 0;
	size_t		cap;
	char	   *buf;
	PeftCode	rc = PEFT_OK;

	if (text != NULL)
		*text = NULL;
	if (len != NULL)
		*len = 0;
	if (tok == NULL || text == NULL || len == NULL || (ids == NULL && n > 0))
		return peft_fail(err, PEFT_ERR_INVALID, "bpe_decode: NULL argument");
	bound = bpe_decode_bound(tok);
	cap = 2 * bound + 64;
	if ((buf = malloc(cap)) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "BPE decode: out of memory");
	bpe_decoder_init(&dec);
	for (size_t i = 0; i < n && rc == PEFT_OK; i++)
	{
		size_t		wrote;

		if (cap - used < bound + BPE_FLUSH_MAX_BYTES + 1)
		{
			char	   *grown = realloc(buf, 2 * cap);

			if (grown == NULL)
			{
				rc = peft_fail(err, PEFT_ERR_NOMEM, "BPE decode: out of memory");
				break;
			}
			buf = grown;
			cap *= 2;
		}
		rc = bpe_decoder_feed(tok, &dec, ids[i], skip_special, buf + used, cap - used, &wrote, err);
		used += wrote;
	}
	if (rc != PEFT_OK)
	{
		free(buf);
		return rc;
	}
	used += bpe_decoder_flush(&dec, buf + used);
	buf[used] = '\0';
	*text = buf;
	*len = used;
	return PEFT_OK;
}
