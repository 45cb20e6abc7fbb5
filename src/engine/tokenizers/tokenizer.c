/*
 * tokenizer.c - BERT WordPiece tokenisation, identical to Hugging Face's
 * BertTokenizerFast (the Rust "tokenizers" BertNormalizer, BertPreTokenizer
 * and WordPiece model).
 *
 * The pipeline, in Hugging Face's order:
 *
 *   1. special tokens ([CLS], [SEP], [MASK], ...) written literally in the
 *      text are matched on the raw text and become their own ids;
 *   2. clean: drop U+0000, U+FFFD and "other" characters (Cc, Cf, Co, Cs
 *      but not tab, newline, carriage return; unassigned code points stay);
 *      whitespace becomes a space;
 *   3. CJK ideographs are surrounded by spaces (they become words alone);
 *   4. strip accents: NFD, then drop nonspacing marks (Mn);
 *   5. lowercase (full mapping per character, no final-sigma context);
 *   6. split on whitespace and isolate punctuation (ASCII punctuation and
 *      Unicode P*);
 *   7. WordPiece: greedy longest match first, "##" for continuations; a word
 *      over 100 characters, or one with a piece not in the vocabulary, is
 *      [UNK];
 *   8. [CLS] ... [SEP], truncated to max_length.
 *
 * The text is processed in one streaming pass: each code point is
 * normalised on its own and appended to a fixed word buffer on the stack, so
 * encoding allocates nothing and the tokenizer can be shared by threads.
 *
 * Invalid UTF-8 bytes are dropped: Hugging Face sees U+FFFD for them
 * (Python's errors='replace'), which cleaning removes.
 *
 * Unicode categories are Hugging Face's own (tables below); decomposition,
 * combining classes and lowercase come from utf8proc with the exceptions
 * where Hugging Face's Unicode versions differ.  test/unit/test_tokenizer.c
 * checks every code point against the tokenizers library.
 */
#include "tokenizer.h"
#include "model_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

/* Hugging Face's WordPiece default for max_input_chars_per_word. */
#define DEFAULT_MAX_WORD_CHARS	100
/* The word buffer is on the stack: larger word limits are refused. */
#define MAX_WORD_CHARS_LIMIT	1024
/* A vocab.txt line longer than this is not a token but a damaged file. */
#define MAX_TOKEN_BYTES			1024
/* Refuse files that no real tokenizer comes near (vocab.txt, JSON). */
#define MAX_VOCAB_FILE_BYTES	((size_t) 256 * 1024 * 1024)
#define MAX_VOCAB_TOKENS		(1 << 24)
/* Special tokens matched literally in the text. */
#define MAX_SPECIAL_TOKENS		64
/* Longest canonical decomposition of one code point, with room to spare. */
#define MAX_DECOMPOSITION		32
/* The continuation prefix ("##") is short; longer ones are refused. */
#define MAX_PREFIX_BYTES		16

/* What an ASCII byte is after cleaning, precomputed for the fast path. */
typedef enum AsciiClass
{
	ASCII_DROP,					/* control character: removed */
	ASCII_SPACE,				/* whitespace: ends a word */
	ASCII_PUNCT,				/* punctuation: a word of its own */
	ASCII_WORD					/* part of a word */
} AsciiClass;

/* A special token recognised in the raw text. */
typedef struct SpecialToken
{
	char	   *text;
	size_t		len;
	int32_t		id;
} SpecialToken;

/* One vocabulary entry: its bytes in the string arena and its id. */
typedef struct VocabEntry
{
	uint32_t	offset;
	uint32_t	len;
	uint32_t	hash;
	int32_t		id;
} VocabEntry;

struct Tokenizer
{
	TokenizerOptions opts;
	int			vocab_size;		/* largest id + 1 */

	/* The vocabulary: entries, their bytes, an open-addressing index. */
	VocabEntry *entries;
	int			n_entries;
	char	   *arena;
	size_t		arena_len;
	int32_t    *slots;			/* entry index + 1; 0 = empty */
	uint32_t	slot_mask;
	size_t		max_token_bytes;	/* longest entry, bounds the match */

	int32_t		unk_id;
	int32_t		cls_id;
	int32_t		sep_id;
	int32_t		pad_id;

	char		prefix[MAX_PREFIX_BYTES + 1];	/* "##" */
	size_t		prefix_len;
	uint32_t	prefix_hash;	/* hash state after the prefix */
	int			max_word_chars;

	SpecialToken special[MAX_SPECIAL_TOKENS];
	int			n_special;
	uint8_t		special_first[256];	/* 1 if some special token starts here */

	uint8_t		ascii_class[128];
	uint8_t		ascii_lower[128];
	/* bit set: a BMP code point that normalisation leaves as a plain letter */
	uint8_t		plain_bmp[0x10000 / 8];
};

/*
 * A word being built: its first code points, and how many it has in all
 * (a word longer than the limit becomes [UNK], so the rest is not kept).
 */
typedef struct WordBuffer
{
	int			nchars;
	int			reorder_floor;	/* canonical reordering stops here */
	uint32_t	cps[MAX_WORD_CHARS_LIMIT];
} WordBuffer;

/* Where the splitter sends words and special tokens. */
typedef struct TokenSink TokenSink;
struct TokenSink
{
	void		(*word) (TokenSink *sink, const WordBuffer *word);
	void		(*special) (TokenSink *sink, const SpecialToken *special);
	bool		stop;			/* set by the sink when it wants no more */
};

/* The sink that turns words into ids for tokenizer_encode. */
typedef struct EncodeSink
{
	TokenSink	base;
	const Tokenizer *tok;
	int32_t    *ids;
	int			count;
	int			limit;			/* room for tokens, [SEP] excluded */
} EncodeSink;


/* ---- Unicode properties, as Hugging Face's tables define them ---------- */

/*
 * Hugging Face takes categories from the unicode_categories crate, NFD from
 * unicode-normalization-alignments and lowercase from Rust's std: three
 * Unicode versions, none utf8proc's.  So the categories it uses are its own
 * tables below (independent of the installed utf8proc), and decomposition,
 * combining classes and lowercase come from utf8proc with the exceptions
 * listed.  The tables were printed by test/fixtures/ref_tokens.py
 * --c-tables, which asks the tokenizers library about every code point;
 * test_tokenizer.c checks every code point against its output.
 */
typedef struct CodepointRange
{
	uint32_t	first;
	uint32_t	last;
} CodepointRange;

typedef struct CaseMapping
{
	uint32_t	from;
	uint32_t	to;
} CaseMapping;

/*
 * Generated by test/fixtures/ref_tokens.py --c-tables
 * (tokenizers 0.23.3, utf8proc 2.8.0, Unicode 15.0.0).
 */
/* Cc Cf Co Cs above U+007F: removed by cleaning */
static const CodepointRange hf_other[] = {
	{0x80, 0x9F}, {0xAD, 0xAD}, {0x600, 0x605}, {0x61C, 0x61C},
	{0x6DD, 0x6DD}, {0x70F, 0x70F}, {0x180E, 0x180E}, {0x200B, 0x200F},
	{0x202A, 0x202E}, {0x2060, 0x2064}, {0x2066, 0x206F}, {0xE000, 0xF8FF},
	{0xFEFF, 0xFEFF}, {0xFFF9, 0xFFFB}, {0x110BD, 0x110BD},
	{0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0001, 0xE0001},
	{0xE0020, 0xE007F}, {0xF0000, 0xFFFFD}, {0x100000, 0x10FFFD},
};

/* P* above U+007F: isolated by the pre-tokenizer */
static const CodepointRange hf_punct[] = {
	{0xA1, 0xA1}, {0xA7, 0xA7}, {0xAB, 0xAB}, {0xB6, 0xB7}, {0xBB, 0xBB},
	{0xBF, 0xBF}, {0x37E, 0x37E}, {0x387, 0x387}, {0x55A, 0x55F},
	{0x589, 0x58A}, {0x5BE, 0x5BE}, {0x5C0, 0x5C0}, {0x5C3, 0x5C3},
	{0x5C6, 0x5C6}, {0x5F3, 0x5F4}, {0x609, 0x60A}, {0x60C, 0x60D},
	{0x61B, 0x61B}, {0x61E, 0x61F}, {0x66A, 0x66D}, {0x6D4, 0x6D4},
	{0x700, 0x70D}, {0x7F7, 0x7F9}, {0x830, 0x83E}, {0x85E, 0x85E},
	{0x964, 0x965}, {0x970, 0x970}, {0xAF0, 0xAF0}, {0xDF4, 0xDF4},
	{0xE4F, 0xE4F}, {0xE5A, 0xE5B}, {0xF04, 0xF12}, {0xF14, 0xF14},
	{0xF3A, 0xF3D}, {0xF85, 0xF85}, {0xFD0, 0xFD4}, {0xFD9, 0xFDA},
	{0x104A, 0x104F}, {0x10FB, 0x10FB}, {0x1360, 0x1368}, {0x1400, 0x1400},
	{0x166D, 0x166E}, {0x169B, 0x169C}, {0x16EB, 0x16ED}, {0x1735, 0x1736},
	{0x17D4, 0x17D6}, {0x17D8, 0x17DA}, {0x1800, 0x180A}, {0x1944, 0x1945},
	{0x1A1E, 0x1A1F}, {0x1AA0, 0x1AA6}, {0x1AA8, 0x1AAD}, {0x1B5A, 0x1B60},
	{0x1BFC, 0x1BFF}, {0x1C3B, 0x1C3F}, {0x1C7E, 0x1C7F}, {0x1CC0, 0x1CC7},
	{0x1CD3, 0x1CD3}, {0x2010, 0x2027}, {0x2030, 0x2043}, {0x2045, 0x2051},
	{0x2053, 0x205E}, {0x207D, 0x207E}, {0x208D, 0x208E}, {0x2308, 0x230B},
	{0x2329, 0x232A}, {0x2768, 0x2775}, {0x27C5, 0x27C6}, {0x27E6, 0x27EF},
	{0x2983, 0x2998}, {0x29D8, 0x29DB}, {0x29FC, 0x29FD}, {0x2CF9, 0x2CFC},
	{0x2CFE, 0x2CFF}, {0x2D70, 0x2D70}, {0x2E00, 0x2E2E}, {0x2E30, 0x2E42},
	{0x3001, 0x3003}, {0x3008, 0x3011}, {0x3014, 0x301F}, {0x3030, 0x3030},
	{0x303D, 0x303D}, {0x30A0, 0x30A0}, {0x30FB, 0x30FB}, {0xA4FE, 0xA4FF},
	{0xA60D, 0xA60F}, {0xA673, 0xA673}, {0xA67E, 0xA67E}, {0xA6F2, 0xA6F7},
	{0xA874, 0xA877}, {0xA8CE, 0xA8CF}, {0xA8F8, 0xA8FA}, {0xA8FC, 0xA8FC},
	{0xA92E, 0xA92F}, {0xA95F, 0xA95F}, {0xA9C1, 0xA9CD}, {0xA9DE, 0xA9DF},
	{0xAA5C, 0xAA5F}, {0xAADE, 0xAADF}, {0xAAF0, 0xAAF1}, {0xABEB, 0xABEB},
	{0xFD3E, 0xFD3F}, {0xFE10, 0xFE19}, {0xFE30, 0xFE52}, {0xFE54, 0xFE61},
	{0xFE63, 0xFE63}, {0xFE68, 0xFE68}, {0xFE6A, 0xFE6B}, {0xFF01, 0xFF03},
	{0xFF05, 0xFF0A}, {0xFF0C, 0xFF0F}, {0xFF1A, 0xFF1B}, {0xFF1F, 0xFF20},
	{0xFF3B, 0xFF3D}, {0xFF3F, 0xFF3F}, {0xFF5B, 0xFF5B}, {0xFF5D, 0xFF5D},
	{0xFF5F, 0xFF65}, {0x10100, 0x10102}, {0x1039F, 0x1039F},
	{0x103D0, 0x103D0}, {0x1056F, 0x1056F}, {0x10857, 0x10857},
	{0x1091F, 0x1091F}, {0x1093F, 0x1093F}, {0x10A50, 0x10A58},
	{0x10A7F, 0x10A7F}, {0x10AF0, 0x10AF6}, {0x10B39, 0x10B3F},
	{0x10B99, 0x10B9C}, {0x11047, 0x1104D}, {0x110BB, 0x110BC},
	{0x110BE, 0x110C1}, {0x11140, 0x11143}, {0x11174, 0x11175},
	{0x111C5, 0x111C9}, {0x111CD, 0x111CD}, {0x111DB, 0x111DB},
	{0x111DD, 0x111DF}, {0x11238, 0x1123D}, {0x112A9, 0x112A9},
	{0x114C6, 0x114C6}, {0x115C1, 0x115D7}, {0x11641, 0x11643},
	{0x1173C, 0x1173E}, {0x12470, 0x12474}, {0x16A6E, 0x16A6F},
	{0x16AF5, 0x16AF5}, {0x16B37, 0x16B3B}, {0x16B44, 0x16B44},
	{0x1BC9F, 0x1BC9F}, {0x1DA87, 0x1DA8B},
};

/* Mn: removed when stripping accents */
static const CodepointRange hf_nonspacing_mark[] = {
	{0x300, 0x33F}, {0x342, 0x342}, {0x345, 0x36F}, {0x483, 0x487},
	{0x591, 0x5BD}, {0x5BF, 0x5BF}, {0x5C1, 0x5C2}, {0x5C4, 0x5C5},
	{0x5C7, 0x5C7}, {0x610, 0x61A}, {0x64B, 0x65F}, {0x670, 0x670},
	{0x6D6, 0x6DC}, {0x6DF, 0x6E4}, {0x6E7, 0x6E8}, {0x6EA, 0x6ED},
	{0x711, 0x711}, {0x730, 0x74A}, {0x7A6, 0x7B0}, {0x7EB, 0x7F3},
	{0x816, 0x819}, {0x81B, 0x823}, {0x825, 0x827}, {0x829, 0x82D},
	{0x859, 0x85B}, {0x8E3, 0x902}, {0x93A, 0x93A}, {0x93C, 0x93C},
	{0x941, 0x948}, {0x94D, 0x94D}, {0x951, 0x957}, {0x962, 0x963},
	{0x981, 0x981}, {0x9BC, 0x9BC}, {0x9C1, 0x9C4}, {0x9CD, 0x9CD},
	{0x9E2, 0x9E3}, {0xA01, 0xA02}, {0xA3C, 0xA3C}, {0xA41, 0xA42},
	{0xA47, 0xA48}, {0xA4B, 0xA4D}, {0xA51, 0xA51}, {0xA70, 0xA71},
	{0xA75, 0xA75}, {0xA81, 0xA82}, {0xABC, 0xABC}, {0xAC1, 0xAC5},
	{0xAC7, 0xAC8}, {0xACD, 0xACD}, {0xAE2, 0xAE3}, {0xB01, 0xB01},
	{0xB3C, 0xB3C}, {0xB3F, 0xB3F}, {0xB41, 0xB44}, {0xB4D, 0xB4D},
	{0xB56, 0xB56}, {0xB62, 0xB63}, {0xB82, 0xB82}, {0xBC0, 0xBC0},
	{0xBCD, 0xBCD}, {0xC00, 0xC00}, {0xC3E, 0xC40}, {0xC46, 0xC47},
	{0xC4A, 0xC4D}, {0xC55, 0xC56}, {0xC62, 0xC63}, {0xC81, 0xC81},
	{0xCBC, 0xCBC}, {0xCBF, 0xCBF}, {0xCC6, 0xCC6}, {0xCCC, 0xCCD},
	{0xCE2, 0xCE3}, {0xD01, 0xD01}, {0xD41, 0xD44}, {0xD4D, 0xD4D},
	{0xD62, 0xD63}, {0xDCA, 0xDCA}, {0xDD2, 0xDD4}, {0xDD6, 0xDD6},
	{0xE31, 0xE31}, {0xE34, 0xE3A}, {0xE47, 0xE4E}, {0xEB1, 0xEB1},
	{0xEB4, 0xEB9}, {0xEBB, 0xEBC}, {0xEC8, 0xECD}, {0xF18, 0xF19},
	{0xF35, 0xF35}, {0xF37, 0xF37}, {0xF39, 0xF39}, {0xF71, 0xF72},
	{0xF74, 0xF74}, {0xF77, 0xF77}, {0xF79, 0xF7E}, {0xF80, 0xF80},
	{0xF82, 0xF84}, {0xF86, 0xF87}, {0xF8D, 0xF92}, {0xF94, 0xF97},
	{0xF99, 0xF9C}, {0xF9E, 0xFA1}, {0xFA3, 0xFA6}, {0xFA8, 0xFAB},
	{0xFAD, 0xFB8}, {0xFBA, 0xFBC}, {0xFC6, 0xFC6}, {0x102D, 0x1030},
	{0x1032, 0x1037}, {0x1039, 0x103A}, {0x103D, 0x103E}, {0x1058, 0x1059},
	{0x105E, 0x1060}, {0x1071, 0x1074}, {0x1082, 0x1082}, {0x1085, 0x1086},
	{0x108D, 0x108D}, {0x109D, 0x109D}, {0x135D, 0x135F}, {0x1712, 0x1714},
	{0x1732, 0x1734}, {0x1752, 0x1753}, {0x1772, 0x1773}, {0x17B4, 0x17B5},
	{0x17B7, 0x17BD}, {0x17C6, 0x17C6}, {0x17C9, 0x17D3}, {0x17DD, 0x17DD},
	{0x180B, 0x180D}, {0x18A9, 0x18A9}, {0x1920, 0x1922}, {0x1927, 0x1928},
	{0x1932, 0x1932}, {0x1939, 0x193B}, {0x1A17, 0x1A18}, {0x1A1B, 0x1A1B},
	{0x1A56, 0x1A56}, {0x1A58, 0x1A5E}, {0x1A60, 0x1A60}, {0x1A62, 0x1A62},
	{0x1A65, 0x1A6C}, {0x1A73, 0x1A7C}, {0x1A7F, 0x1A7F}, {0x1AB0, 0x1ABD},
	{0x1B00, 0x1B03}, {0x1B34, 0x1B34}, {0x1B36, 0x1B3A}, {0x1B3C, 0x1B3C},
	{0x1B42, 0x1B42}, {0x1B6B, 0x1B73}, {0x1B80, 0x1B81}, {0x1BA2, 0x1BA5},
	{0x1BA8, 0x1BA9}, {0x1BAB, 0x1BAD}, {0x1BE6, 0x1BE6}, {0x1BE8, 0x1BE9},
	{0x1BED, 0x1BED}, {0x1BEF, 0x1BF1}, {0x1C2C, 0x1C33}, {0x1C36, 0x1C37},
	{0x1CD0, 0x1CD2}, {0x1CD4, 0x1CE0}, {0x1CE2, 0x1CE8}, {0x1CED, 0x1CED},
	{0x1CF4, 0x1CF4}, {0x1CF8, 0x1CF9}, {0x1DC0, 0x1DF5}, {0x1DFC, 0x1DFF},
	{0x20D0, 0x20DC}, {0x20E1, 0x20E1}, {0x20E5, 0x20F0}, {0x2CEF, 0x2CF1},
	{0x2D7F, 0x2D7F}, {0x2DE0, 0x2DFF}, {0x302A, 0x302D}, {0x3099, 0x309A},
	{0xA66F, 0xA66F}, {0xA674, 0xA67D}, {0xA69E, 0xA69F}, {0xA6F0, 0xA6F1},
	{0xA802, 0xA802}, {0xA806, 0xA806}, {0xA80B, 0xA80B}, {0xA825, 0xA826},
	{0xA8C4, 0xA8C4}, {0xA8E0, 0xA8F1}, {0xA926, 0xA92D}, {0xA947, 0xA951},
	{0xA980, 0xA982}, {0xA9B3, 0xA9B3}, {0xA9B6, 0xA9B9}, {0xA9BC, 0xA9BC},
	{0xA9E5, 0xA9E5}, {0xAA29, 0xAA2E}, {0xAA31, 0xAA32}, {0xAA35, 0xAA36},
	{0xAA43, 0xAA43}, {0xAA4C, 0xAA4C}, {0xAA7C, 0xAA7C}, {0xAAB0, 0xAAB0},
	{0xAAB2, 0xAAB4}, {0xAAB7, 0xAAB8}, {0xAABE, 0xAABF}, {0xAAC1, 0xAAC1},
	{0xAAEC, 0xAAED}, {0xAAF6, 0xAAF6}, {0xABE5, 0xABE5}, {0xABE8, 0xABE8},
	{0xABED, 0xABED}, {0xFB1E, 0xFB1E}, {0xFE00, 0xFE0F}, {0xFE20, 0xFE2F},
	{0x101FD, 0x101FD}, {0x102E0, 0x102E0}, {0x10376, 0x1037A},
	{0x10A01, 0x10A03}, {0x10A05, 0x10A06}, {0x10A0C, 0x10A0F},
	{0x10A38, 0x10A3A}, {0x10A3F, 0x10A3F}, {0x10AE5, 0x10AE6},
	{0x11001, 0x11001}, {0x11038, 0x11046}, {0x1107F, 0x11081},
	{0x110B3, 0x110B6}, {0x110B9, 0x110BA}, {0x11100, 0x11102},
	{0x11127, 0x1112B}, {0x1112D, 0x1112D}, {0x11130, 0x11134},
	{0x11173, 0x11173}, {0x11180, 0x11181}, {0x111B6, 0x111BE},
	{0x111CA, 0x111CC}, {0x1122F, 0x11231}, {0x11234, 0x11234},
	{0x11236, 0x11237}, {0x112DF, 0x112DF}, {0x112E3, 0x112EA},
	{0x11300, 0x11301}, {0x1133C, 0x1133C}, {0x11340, 0x11340},
	{0x11366, 0x1136C}, {0x11370, 0x11374}, {0x114B3, 0x114B8},
	{0x114BA, 0x114BA}, {0x114BF, 0x114C0}, {0x114C2, 0x114C3},
	{0x115B2, 0x115B5}, {0x115BC, 0x115BD}, {0x115BF, 0x115C0},
	{0x115DC, 0x115DD}, {0x11633, 0x1163A}, {0x1163D, 0x1163D},
	{0x1163F, 0x11640}, {0x116AB, 0x116AB}, {0x116AD, 0x116AD},
	{0x116B0, 0x116B5}, {0x116B7, 0x116B7}, {0x1171D, 0x1171F},
	{0x11722, 0x11725}, {0x11727, 0x1172B}, {0x16AF0, 0x16AF4},
	{0x16B30, 0x16B36}, {0x16F8F, 0x16F92}, {0x1BC9D, 0x1BC9E},
	{0x1D167, 0x1D169}, {0x1D17B, 0x1D182}, {0x1D185, 0x1D18B},
	{0x1D1AA, 0x1D1AD}, {0x1D242, 0x1D244}, {0x1DA00, 0x1DA36},
	{0x1DA3B, 0x1DA6C}, {0x1DA75, 0x1DA75}, {0x1DA84, 0x1DA84},
	{0x1DA9B, 0x1DA9F}, {0x1DAA1, 0x1DAAF}, {0x1E8D0, 0x1E8D6},
	{0xE0100, 0xE01EF},
};

/* decomposed by utf8proc, left whole by Hugging Face's NFD */
static const CodepointRange hf_no_decomposition[] = {
	{0x11938, 0x11938},
};

/* combining class > 0 in utf8proc, 0 (never reordered) in Hugging Face */
static const CodepointRange hf_ccc_zero[] = {
	{0x7FD, 0x7FD}, {0x898, 0x89F}, {0x8CA, 0x8D3}, {0x9FE, 0x9FE},
	{0xC3C, 0xC3C}, {0xD3B, 0xD3C}, {0xEBA, 0xEBA}, {0x1715, 0x1715},
	{0x1ABF, 0x1ACE}, {0x1DF6, 0x1DFA}, {0xA82C, 0xA82C}, {0x10D24, 0x10D27},
	{0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
	{0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B},
	{0x1145E, 0x1145E}, {0x11839, 0x1183A}, {0x1193D, 0x1193E},
	{0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
	{0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42},
	{0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42},
	{0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136},
	{0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

/* Rust's lowercase where it differs from utf8proc's (newer Unicode) */
static const CaseMapping hf_lowercase[] = {
	{0x1C89, 0x1C8A}, {0xA7CB, 0x264}, {0xA7CC, 0xA7CD}, {0xA7CE, 0xA7CF},
	{0xA7D2, 0xA7D3}, {0xA7D4, 0xA7D5}, {0xA7DA, 0xA7DB}, {0xA7DC, 0x19B},
	{0x10D50, 0x10D70}, {0x10D51, 0x10D71}, {0x10D52, 0x10D72},
	{0x10D53, 0x10D73}, {0x10D54, 0x10D74}, {0x10D55, 0x10D75},
	{0x10D56, 0x10D76}, {0x10D57, 0x10D77}, {0x10D58, 0x10D78},
	{0x10D59, 0x10D79}, {0x10D5A, 0x10D7A}, {0x10D5B, 0x10D7B},
	{0x10D5C, 0x10D7C}, {0x10D5D, 0x10D7D}, {0x10D5E, 0x10D7E},
	{0x10D5F, 0x10D7F}, {0x10D60, 0x10D80}, {0x10D61, 0x10D81},
	{0x10D62, 0x10D82}, {0x10D63, 0x10D83}, {0x10D64, 0x10D84},
	{0x10D65, 0x10D85}, {0x16EA0, 0x16EBB}, {0x16EA1, 0x16EBC},
	{0x16EA2, 0x16EBD}, {0x16EA3, 0x16EBE}, {0x16EA4, 0x16EBF},
	{0x16EA5, 0x16EC0}, {0x16EA6, 0x16EC1}, {0x16EA7, 0x16EC2},
	{0x16EA8, 0x16EC3}, {0x16EA9, 0x16EC4}, {0x16EAA, 0x16EC5},
	{0x16EAB, 0x16EC6}, {0x16EAC, 0x16EC7}, {0x16EAD, 0x16EC8},
	{0x16EAE, 0x16EC9}, {0x16EAF, 0x16ECA}, {0x16EB0, 0x16ECB},
	{0x16EB1, 0x16ECC}, {0x16EB2, 0x16ECD}, {0x16EB3, 0x16ECE},
	{0x16EB4, 0x16ECF}, {0x16EB5, 0x16ED0}, {0x16EB6, 0x16ED1},
	{0x16EB7, 0x16ED2}, {0x16EB8, 0x16ED3},
};

/* Whether cp lies in one of n sorted, disjoint ranges. */
static bool
in_ranges(uint32_t cp, const CodepointRange *ranges, int n)
{
	int			lo = 0;
	int			hi = n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (cp < ranges[mid].first)
			hi = mid - 1;
		else if (cp > ranges[mid].last)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

#define IN_TABLE(cp, table) \
	in_ranges((cp), (table), (int) (sizeof(table) / sizeof((table)[0])))

/* Rust's char::is_whitespace: the Unicode White_Space property. */
static inline bool
is_whitespace(uint32_t cp)
{
	if (cp < 0x80)
		return cp == ' ' || (cp >= '\t' && cp <= '\r');
	switch (cp)
	{
		case 0x85:
		case 0xA0:
		case 0x1680:
		case 0x2028:
		case 0x2029:
		case 0x202F:
		case 0x205F:
		case 0x3000:
			return true;
		default:
			return cp >= 0x2000 && cp <= 0x200A;
	}
}

/*
 * BertNormalizer's is_control: Cc Cf Co Cs (but not tab, newline, carriage
 * return); unassigned code points are not "other" there and stay letters.
 */
static inline bool
is_control(uint32_t cp)
{
	if (cp < 0x80)
		return (cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0x7F;
	return IN_TABLE(cp, hf_other);
}

/* BertPreTokenizer's punctuation: ASCII punctuation or Unicode P*. */
static inline bool
is_punctuation(uint32_t cp)
{
	if (cp < 0x80)
		return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) ||
			(cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
	return IN_TABLE(cp, hf_punct);
}

/* Nonspacing mark (Mn): what strip_accents removes after NFD. */
static inline bool
is_nonspacing_mark(uint32_t cp)
{
	return cp >= 0x300 && IN_TABLE(cp, hf_nonspacing_mark);
}

/* BertNormalizer's is_chinese_char: the CJK ideograph blocks. */
static inline bool
is_chinese_char(uint32_t cp)
{
	return (cp >= 0x4E00 && cp <= 0x9FFF) ||
		(cp >= 0x3400 && cp <= 0x4DBF) ||
		(cp >= 0x20000 && cp <= 0x2A6DF) ||
		(cp >= 0x2A700 && cp <= 0x2B73F) ||
		(cp >= 0x2B740 && cp <= 0x2B81F) ||
		(cp >= 0x2B920 && cp <= 0x2CEAF) ||
		(cp >= 0xF900 && cp <= 0xFAFF) ||
		(cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Canonical combining class, for NFD's reordering of marks. */
static inline int
combining_class(uint32_t cp)
{
	int			ccc;

	if (cp < 0x300)
		return 0;
	ccc = utf8proc_get_property((utf8proc_int32_t) cp)->combining_class;
	if (ccc != 0 && IN_TABLE(cp, hf_ccc_zero))
		return 0;
	return ccc;
}

/*
 * Rust's char::to_lowercase: writes 1 or 2 code points to out.  utf8proc has
 * the simple mapping; U+0130 is the only character whose full lowercase is
 * two characters; characters newer than utf8proc's Unicode are in the table.
 */
static inline int
to_lowercase(uint32_t cp, uint32_t *out)
{
	int			lo = 0;
	int			hi = (int) (sizeof(hf_lowercase) / sizeof(hf_lowercase[0])) - 1;

	if (cp == 0x130)
	{
		out[0] = 'i';
		out[1] = 0x307;
		return 2;
	}
	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (cp < hf_lowercase[mid].from)
			hi = mid - 1;
		else if (cp > hf_lowercase[mid].from)
			lo = mid + 1;
		else
		{
			out[0] = hf_lowercase[mid].to;
			return 1;
		}
	}
	out[0] = (uint32_t) utf8proc_tolower((utf8proc_int32_t) cp);
	return 1;
}

/*
 * Canonical decomposition (NFD) of one code point into out; returns the
 * count.  Characters newer than Hugging Face's normalisation tables are left
 * whole, as it leaves them.
 */
static int
decompose(uint32_t cp, uint32_t *out)
{
	utf8proc_int32_t buf[MAX_DECOMPOSITION];
	utf8proc_ssize_t n;
	int			last_boundclass = 0;

	if (cp < 0xC0 || IN_TABLE(cp, hf_no_decomposition))
	{
		out[0] = cp;
		return 1;
	}
	n = utf8proc_decompose_char((utf8proc_int32_t) cp, buf, MAX_DECOMPOSITION,
								UTF8PROC_DECOMPOSE, &last_boundclass);
	if (n <= 0 || n > MAX_DECOMPOSITION)
	{
		out[0] = cp;
		return 1;
	}
	for (utf8proc_ssize_t i = 0; i < n; i++)
		out[i] = (uint32_t) buf[i];
	return (int) n;
}


/* ---- UTF-8 ------------------------------------------------------------- */

/*
 * Decode one code point at *pos, advancing it; returns -1 for an invalid
 * sequence, of which one byte is consumed.  Python's errors='replace'
 * replaces the same bytes with U+FFFD, which cleaning then removes, so the
 * valid text around them decodes identically.
 */
static inline int32_t
decode_utf8(const uint8_t *s, size_t len, size_t *pos)
{
	size_t		i = *pos;
	uint8_t		b0 = s[i];
	uint32_t	cp;
	int			need;
	uint8_t		lo = 0x80;
	uint8_t		hi = 0xBF;

	if (b0 < 0x80)
	{
		*pos = i + 1;
		return b0;
	}
	if (b0 >= 0xC2 && b0 <= 0xDF)
	{
		need = 1;
		cp = b0 & 0x1F;
	}
	else if (b0 >= 0xE0 && b0 <= 0xEF)
	{
		need = 2;
		cp = b0 & 0x0F;
		if (b0 == 0xE0)
			lo = 0xA0;			/* overlong */
		else if (b0 == 0xED)
			hi = 0x9F;			/* surrogates */
	}
	else if (b0 >= 0xF0 && b0 <= 0xF4)
	{
		need = 3;
		cp = b0 & 0x07;
		if (b0 == 0xF0)
			lo = 0x90;			/* overlong */
		else if (b0 == 0xF4)
			hi = 0x8F;			/* above U+10FFFF */
	}
	else
	{
		*pos = i + 1;
		return -1;
	}
	if (len - i - 1 < (size_t) need)
	{
		*pos = i + 1;
		return -1;
	}
	for (int k = 1; k <= need; k++)
	{
		uint8_t		b = s[i + k];

		if (b < lo || b > hi)
		{
			*pos = i + 1;
			return -1;
		}
		lo = 0x80;
		hi = 0xBF;
		cp = (cp << 6) | (b & 0x3F);
	}
	*pos = i + 1 + need;
	return (int32_t) cp;
}

/* Encode cp as UTF-8 into out (4 bytes of room); returns the length. */
static inline int
encode_utf8(uint32_t cp, uint8_t *out)
{
	if (cp < 0x80)
	{
		out[0] = (uint8_t) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		out[0] = (uint8_t) (0xC0 | (cp >> 6));
		out[1] = (uint8_t) (0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000)
	{
		out[0] = (uint8_t) (0xE0 | (cp >> 12));
		out[1] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
		out[2] = (uint8_t) (0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (uint8_t) (0xF0 | (cp >> 18));
	out[1] = (uint8_t) (0x80 | ((cp >> 12) & 0x3F));
	out[2] = (uint8_t) (0x80 | ((cp >> 6) & 0x3F));
	out[3] = (uint8_t) (0x80 | (cp & 0x3F));
	return 4;
}

/* Whether s[0..len) is valid UTF-8 without NUL bytes. */
static bool
valid_utf8_text(const uint8_t *s, size_t len)
{
	size_t		pos = 0;

	while (pos < len)
	{
		if (s[pos] == 0 || decode_utf8(s, len, &pos) < 0)
			return false;
	}
	return true;
}


/* ---- vocabulary hash table --------------------------------------------- */

#define FNV_OFFSET	2166136261u
#define FNV_PRIME	16777619u

/* Continue an FNV-1a hash over len bytes. */
static inline uint32_t
hash_bytes(uint32_t h, const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
	{
		h ^= s[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* Final mix, so that the low bits used as the slot index are well spread. */
static inline uint32_t
hash_finish(uint32_t h)
{
	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	h ^= h >> 13;
	return h;
}

/*
 * Find the entry whose bytes are prefix (if with_prefix) followed by
 * s[0..len); returns its index or -1.
 */
static inline int
vocab_find(const Tokenizer *tok, bool with_prefix, const uint8_t *s, size_t len)
{
	uint32_t	h;
	size_t		total = len + (with_prefix ? tok->prefix_len : 0);
	uint32_t	slot;

	h = with_prefix ? tok->prefix_hash : FNV_OFFSET;
	h = hash_finish(hash_bytes(h, s, len));
	for (slot = h & tok->slot_mask;; slot = (slot + 1) & tok->slot_mask)
	{
		int32_t		e = tok->slots[slot];
		const VocabEntry *entry;
		const char *bytes;

		if (e == 0)
			return -1;
		entry = &tok->entries[e - 1];
		if (entry->hash != h || entry->len != total)
			continue;
		bytes = tok->arena + entry->offset;
		if (with_prefix)
		{
			if (memcmp(bytes, tok->prefix, tok->prefix_len) != 0)
				continue;
			bytes += tok->prefix_len;
		}
		if (memcmp(bytes, s, len) == 0)
			return e - 1;
	}
}

/*
 * Add a token with its id to the table; a token seen before takes the new
 * id (Hugging Face's vocab dict keeps the last occurrence).  The arena and
 * the entry array are sized by the caller.
 */
static void
vocab_insert(Tokenizer *tok, const char *s, size_t len, int32_t id)
{
	int			found = vocab_find(tok, false, (const uint8_t *) s, len);
	VocabEntry *entry;
	uint32_t	slot;

	if (id >= tok->vocab_size)
		tok->vocab_size = id + 1;
	if (found >= 0)
	{
		tok->entries[found].id = id;
		return;
	}
	entry = &tok->entries[tok->n_entries];
	entry->offset = (uint32_t) tok->arena_len;
	entry->len = (uint32_t) len;
	entry->hash = hash_finish(hash_bytes(FNV_OFFSET, (const uint8_t *) s, len));
	entry->id = id;
	memcpy(tok->arena + tok->arena_len, s, len);
	tok->arena[tok->arena_len + len] = '\0';
	tok->arena_len += len + 1;
	for (slot = entry->hash & tok->slot_mask; tok->slots[slot] != 0;
		 slot = (slot + 1) & tok->slot_mask)
		;
	tok->slots[slot] = ++tok->n_entries;
	if (len > tok->max_token_bytes)
		tok->max_token_bytes = len;
}

/* Id of s[0..len), or -1. */
static int32_t
vocab_id(const Tokenizer *tok, const char *s, size_t len)
{
	int			e = vocab_find(tok, false, (const uint8_t *) s, len);

	return e < 0 ? -1 : tok->entries[e].id;
}


/* ---- construction ------------------------------------------------------ */

/* Fill opts with the uncased BERT defaults (all-MiniLM-L6-v2). */
static void
default_options(TokenizerOptions *opts)
{
	opts->lowercase = true;
	opts->strip_accents = true;
	opts->split_chinese = true;
}

/*
 * Allocate a tokenizer with room for n_tokens entries of arena_bytes bytes
 * in all (terminators included).
 */
static PeftCode
tokenizer_alloc(size_t n_tokens, size_t arena_bytes,
				const TokenizerOptions *opts, Tokenizer **out, PeftError *err)
{
	Tokenizer  *tok;
	size_t		nslots = 16;

	*out = NULL;
	while (nslots < n_tokens * 2)
		nslots *= 2;
	tok = calloc(1, sizeof(Tokenizer));
	if (tok == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for tokenizer");
	tok->entries = malloc((n_tokens > 0 ? n_tokens : 1) * sizeof(VocabEntry));
	tok->arena = malloc(arena_bytes > 0 ? arena_bytes : 1);
	tok->slots = calloc(nslots, sizeof(int32_t));
	if (tok->entries == NULL || tok->arena == NULL || tok->slots == NULL)
	{
		tokenizer_free(tok);
		return peft_fail(err, PEFT_ERR_NOMEM,
						 "out of memory for a vocabulary of %zu tokens", n_tokens);
	}
	tok->slot_mask = (uint32_t) (nslots - 1);
	if (opts != NULL)
		tok->opts = *opts;
	else
		default_options(&tok->opts);
	tok->max_word_chars = DEFAULT_MAX_WORD_CHARS;
	strcpy(tok->prefix, "##");
	tok->prefix_len = 2;
	tok->unk_id = tok->cls_id = tok->sep_id = tok->pad_id = -1;
	*out = tok;
	return PEFT_OK;
}

/*
 * Whether normalisation leaves cp unchanged as a letter with combining
 * class 0, so that the text splitter can append it without further work.
 */
static bool
passes_unchanged(const Tokenizer *tok, uint32_t cp)
{
	uint32_t	buf[MAX_DECOMPOSITION];

	if (cp == 0 || cp == 0xFFFD || (cp >= 0xD800 && cp <= 0xDFFF) ||
		is_control(cp) || is_whitespace(cp) || is_punctuation(cp))
		return false;
	if (tok->opts.split_chinese && is_chinese_char(cp))
		return false;
	if (tok->opts.strip_accents &&
		(decompose(cp, buf) != 1 || buf[0] != cp || is_nonspacing_mark(cp) ||
		 combining_class(cp) != 0))
		return false;
	if (tok->opts.lowercase && (to_lowercase(cp, buf) != 1 || buf[0] != cp))
		return false;
	return true;
}

/* Register a literal special token; tokens not in the vocabulary are skipped. */
static PeftCode
add_special_token(Tokenizer *tok, const char *text, int32_t id, PeftError *err)
{
	size_t		len = strlen(text);
	SpecialToken *special;

	if (len == 0 || id < 0)
		return PEFT_OK;
	for (int i = 0; i < tok->n_special; i++)
	{
		if (tok->special[i].len == len && memcmp(tok->special[i].text, text, len) == 0)
		{
			tok->special[i].id = id;
			return PEFT_OK;
		}
	}
	if (tok->n_special >= MAX_SPECIAL_TOKENS)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "more than %d added tokens", MAX_SPECIAL_TOKENS);
	special = &tok->special[tok->n_special];
	special->text = strdup(text);
	if (special->text == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for special tokens");
	special->len = len;
	special->id = id;
	tok->special_first[(uint8_t) text[0]] = 1;
	tok->n_special++;
	return PEFT_OK;
}

/*
 * Finish a tokenizer whose vocabulary is loaded: find the special tokens
 * (all four are required), register BERT's five as literals in the text
 * unless the caller registers its own (tokenizer.json's added_tokens), and
 * precompute the tables of the fast path.
 */
static PeftCode
tokenizer_finish(Tokenizer *tok, const char *unk_token, const char *source,
				 bool literal_defaults, PeftError *err)
{
	static const char *const literal[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
	PeftCode	rc;

	if (tok->n_entries == 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: empty vocabulary", source);
	tok->unk_id = vocab_id(tok, unk_token, strlen(unk_token));
	tok->cls_id = vocab_id(tok, "[CLS]", 5);
	tok->sep_id = vocab_id(tok, "[SEP]", 5);
	tok->pad_id = vocab_id(tok, "[PAD]", 5);
	if (tok->unk_id < 0)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: vocabulary has no unknown token \"%s\"", source, unk_token);
	if (tok->cls_id < 0 || tok->sep_id < 0 || tok->pad_id < 0)
		return peft_fail(err, PEFT_ERR_FORMAT,
						 "%s: vocabulary lacks %s", source,
						 tok->cls_id < 0 ? "[CLS]" : tok->sep_id < 0 ? "[SEP]" : "[PAD]");
	for (size_t i = 0; literal_defaults && i < sizeof(literal) / sizeof(literal[0]); i++)
	{
		rc = add_special_token(tok, literal[i],
							   vocab_id(tok, literal[i], strlen(literal[i])), err);
		if (rc != PEFT_OK)
			return rc;
	}

	tok->prefix_hash = hash_bytes(FNV_OFFSET, (const uint8_t *) tok->prefix,
								  tok->prefix_len);
	for (uint32_t c = 0; c < 128; c++)
	{
		uint32_t	lower = c;

		if (c == '\t' || c == '\n' || c == '\r' || c == ' ')
			tok->ascii_class[c] = ASCII_SPACE;
		else if (c < 0x20 || c == 0x7F)
			tok->ascii_class[c] = ASCII_DROP;
		else if (is_punctuation(c))
			tok->ascii_class[c] = ASCII_PUNCT;
		else
			tok->ascii_class[c] = ASCII_WORD;
		if (tok->opts.lowercase && c >= 'A' && c <= 'Z')
			lower = c + ('a' - 'A');
		tok->ascii_lower[c] = (uint8_t) lower;
	}
	for (uint32_t c = 0x80; c < 0x10000; c++)
	{
		if (passes_unchanged(tok, c))
			tok->plain_bmp[c >> 3] |= (uint8_t) (1 << (c & 7));
	}
	return PEFT_OK;
}

/* Release a tokenizer (NULL is allowed). */
void
tokenizer_free(Tokenizer *tok)
{
	if (tok == NULL)
		return;
	for (int i = 0; i < tok->n_special; i++)
		free(tok->special[i].text);
	free(tok->entries);
	free(tok->arena);
	free(tok->slots);
	free(tok);
}

/*
 * Find the end of the line starting at pos, the way Python's readlines()
 * does in text mode: "\n", "\r\n" and a lone "\r" all end a line.  Sets
 * *next to the start of the following line.
 */
static size_t
line_end(const char *buf, size_t len, size_t pos, size_t *next)
{
	size_t		i = pos;

	while (i < len && buf[i] != '\n' && buf[i] != '\r')
		i++;
	if (i < len && buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n')
		*next = i + 2;
	else
		*next = i < len ? i + 1 : i;
	return i;
}

/*
 * Load a vocab.txt image: one token per line, its id the line number
 * (counted from 0).  Like transformers' load_vocab, lines end at "\n",
 * "\r\n" or "\r", a last line without a newline still counts, other trailing
 * whitespace is kept, and a duplicate token takes its last line's id.  A
 * leading UTF-8 byte order mark is skipped.  Empty input, invalid UTF-8, NUL
 * bytes, lines over 1024 bytes and missing [CLS] [SEP] [UNK] [PAD] are
 * format errors.
 */
PeftCode
tokenizer_from_buffer(const char *buf, size_t len, const TokenizerOptions *opts,
					  Tokenizer **out, PeftError *err)
{
	size_t		pos = 0;
	size_t		next;
	size_t		n_lines = 0;
	Tokenizer  *tok;
	PeftCode	rc;
	int32_t		id = 0;

	if (out == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "tokenizer_from_buffer: no output");
	*out = NULL;
	if (buf == NULL || len == 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "vocab.txt: empty vocabulary");
	if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
		pos = 3;

	/* First pass: validate and count, so that nothing is allocated twice. */
	for (size_t p = pos; p < len; p = next)
	{
		size_t		end = line_end(buf, len, p, &next);

		n_lines++;
		if (end - p > MAX_TOKEN_BYTES)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "vocab.txt: line %zu is longer than %d bytes",
							 n_lines, MAX_TOKEN_BYTES);
		if (!valid_utf8_text((const uint8_t *) buf + p, end - p))
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "vocab.txt: line %zu is not valid UTF-8 text", n_lines);
		if (n_lines > MAX_VOCAB_TOKENS)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "vocab.txt: more than %d lines", MAX_VOCAB_TOKENS);
	}
	if (n_lines == 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "vocab.txt: empty vocabulary");

	rc = tokenizer_alloc(n_lines, len - pos + n_lines, opts, &tok, err);
	if (rc != PEFT_OK)
		return rc;
	for (size_t p = pos; p < len; p = next)
	{
		size_t		end = line_end(buf, len, p, &next);

		vocab_insert(tok, buf + p, end - p, id++);
	}
	rc = tokenizer_finish(tok, "[UNK]", "vocab.txt", true, err);
	if (rc != PEFT_OK)
	{
		tokenizer_free(tok);
		return rc;
	}
	*out = tok;
	return PEFT_OK;
}

/* Read a whole file into a malloc'ed, NUL-terminated buffer. */
static PeftCode
read_file(const char *path, char **data, size_t *len, PeftError *err)
{
	FILE	   *f;
	struct stat st;
	char	   *buf;
	size_t		got;

	*data = NULL;
	*len = 0;
	f = fopen(path, "rb");
	if (f == NULL)
		return peft_fail(err, PEFT_ERR_IO, "cannot open \"%s\": %s", path, strerror(errno));
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
	{
		fclose(f);
		return peft_fail(err, PEFT_ERR_IO, "\"%s\" is not a regular file", path);
	}
	if ((size_t) st.st_size > MAX_VOCAB_FILE_BYTES)
	{
		fclose(f);
		return peft_fail(err, PEFT_ERR_FORMAT, "\"%s\" is too large for a tokenizer (%lld bytes)",
						 path, (long long) st.st_size);
	}
	buf = malloc((size_t) st.st_size + 1);
	if (buf == NULL)
	{
		fclose(f);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory reading \"%s\"", path);
	}
	got = fread(buf, 1, (size_t) st.st_size, f);
	if (ferror(f))
	{
		fclose(f);
		free(buf);
		return peft_fail(err, PEFT_ERR_IO, "cannot read \"%s\"", path);
	}
	fclose(f);
	buf[got] = '\0';
	*data = buf;
	*len = got;
	return PEFT_OK;
}

/* Load vocab.txt (one token per line, id = line number). */
PeftCode
tokenizer_load_vocab(const char *path, const TokenizerOptions *opts,
					 Tokenizer **out, PeftError *err)
{
	char	   *data;
	size_t		len;
	PeftCode	rc;

	if (out == NULL || path == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "tokenizer_load_vocab: no path or output");
	*out = NULL;
	rc = read_file(path, &data, &len, err);
	if (rc != PEFT_OK)
		return rc;
	rc = tokenizer_from_buffer(data, len, opts, out, err);
	free(data);
	if (rc != PEFT_OK && err != NULL)
	{
		char		msg[PEFT_ERROR_MESSAGE_LEN];

		/* name the file rather than "vocab.txt" */
		snprintf(msg, sizeof(msg), "%s", err->message);
		if (strncmp(msg, "vocab.txt: ", 11) == 0)
			peft_fail(err, rc, "%s: %s", path, msg + 11);
	}
	return rc;
}

/*
 * Options from a tokenizer.json normalizer (a BertNormalizer); used when
 * the caller passes none.  strip_accents null means "as lowercase".
 */
static PeftCode
options_from_normalizer(const cJSON *normalizer, const char *path,
						TokenizerOptions *opts, PeftError *err)
{
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(normalizer, "type");
	const cJSON *item;

	default_options(opts);
	if (!cJSON_IsString(type) || strcmp(type->valuestring, "BertNormalizer") != 0)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "%s: normalizer is not a BertNormalizer", path);
	item = cJSON_GetObjectItemCaseSensitive(normalizer, "lowercase");
	if (cJSON_IsBool(item))
		opts->lowercase = cJSON_IsTrue(item);
	item = cJSON_GetObjectItemCaseSensitive(normalizer, "handle_chinese_chars");
	if (cJSON_IsBool(item))
		opts->split_chinese = cJSON_IsTrue(item);
	item = cJSON_GetObjectItemCaseSensitive(normalizer, "strip_accents");
	opts->strip_accents = cJSON_IsBool(item) ? cJSON_IsTrue(item) : opts->lowercase;
	return PEFT_OK;
}

/*
 * Find the WordPiece model of a parsed tokenizer.json: root's "model"
 * object, of type WordPiece, and its "vocab" object.
 */
static PeftCode
json_wordpiece_model(const cJSON *root, const char *path, const cJSON **model,
					 const cJSON **vocab, PeftError *err)
{
	const cJSON *type;

	*model = cJSON_GetObjectItemCaseSensitive(root, "model");
	type = cJSON_GetObjectItemCaseSensitive(*model, "type");
	*vocab = cJSON_GetObjectItemCaseSensitive(*model, "vocab");
	if (!cJSON_IsObject(*model))
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: no \"model\" object", path);
	if (!cJSON_IsString(type) || strcmp(type->valuestring, "WordPiece") != 0)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "%s: model type is %s, not WordPiece", path,
						 cJSON_IsString(type) ? type->valuestring : "missing");
	if (!cJSON_IsObject(*vocab))
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: model.vocab is not an object", path);
	return PEFT_OK;
}

/*
 * Check every entry of model.vocab (token -> id) and count the tokens and
 * the arena bytes their strings need.
 */
static PeftCode
json_vocab_size(const cJSON *vocab, const char *path, size_t *n_tokens,
				size_t *arena_bytes, PeftError *err)
{
	const cJSON *item;

	*n_tokens = 0;
	*arena_bytes = 0;
	cJSON_ArrayForEach(item, vocab)
	{
		size_t		len = item->string ? strlen(item->string) : 0;

		if (!cJSON_IsNumber(item) || item->valuedouble < 0 ||
			item->valuedouble >= MAX_VOCAB_TOKENS ||
			item->valuedouble != (double) item->valueint)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: model.vocab[\"%.64s\"] is not a valid id", path,
							 item->string ? item->string : "");
		if (len > MAX_TOKEN_BYTES)
			return peft_fail(err, PEFT_ERR_FORMAT,
							 "%s: a vocabulary token is longer than %d bytes",
							 path, MAX_TOKEN_BYTES);
		(*n_tokens)++;
		*arena_bytes += len + 1;
	}
	if (*n_tokens == 0)
		return peft_fail(err, PEFT_ERR_FORMAT, "%s: empty vocabulary", path);
	return PEFT_OK;
}

/*
 * Apply the WordPiece model's settings to tok: continuing_subword_prefix
 * and max_input_chars_per_word; *unk_token gets its unk_token if it has one.
 */
static PeftCode
json_model_settings(Tokenizer *tok, const cJSON *model, const char *path,
					const char **unk_token, PeftError *err)
{
	const cJSON *item;

	item = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
	if (cJSON_IsString(item))
		*unk_token = item->valuestring;
	item = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
	if (cJSON_IsString(item))
	{
		if (strlen(item->valuestring) > MAX_PREFIX_BYTES)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "%s: continuing_subword_prefix is too long", path);
		strcpy(tok->prefix, item->valuestring);
		tok->prefix_len = strlen(item->valuestring);
	}
	item = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
	if (cJSON_IsNumber(item))
	{
		if (item->valuedouble < 1 || item->valuedouble > MAX_WORD_CHARS_LIMIT)
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "%s: max_input_chars_per_word must be 1..%d",
							 path, MAX_WORD_CHARS_LIMIT);
		tok->max_word_chars = item->valueint;
	}
	return PEFT_OK;
}

/*
 * Finish tok (special ids, unk_token) and add the added tokens of root
 * that are matched in the raw text.  Hugging Face matches exactly the
 * added tokens in the text.  Those with "normalized": true would be
 * matched after normalisation; BERT has none and they are ignored, as are
 * lstrip, rstrip and single_word.
 */
static PeftCode
json_finish(Tokenizer *tok, const cJSON *root, const char *unk_token,
			const char *path, PeftError *err)
{
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	const cJSON *item;
	PeftCode	rc;

	rc = tokenizer_finish(tok, unk_token, path, !cJSON_IsArray(added), err);
	cJSON_ArrayForEach(item, added)
	{
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
		const cJSON *normalized = cJSON_GetObjectItemCaseSensitive(item, "normalized");

		if (rc != PEFT_OK)
			break;
		if (!cJSON_IsString(content) || !cJSON_IsNumber(id) || cJSON_IsTrue(normalized))
			continue;
		if (id->valueint < 0 || id->valueint >= tok->vocab_size)
			continue;
		rc = add_special_token(tok, content->valuestring, id->valueint, err);
	}
	return rc;
}

/*
 * Load from a parsed tokenizer.json: model.vocab (token -> id) of a
 * WordPiece model, its unk_token, continuing_subword_prefix and
 * max_input_chars_per_word, and the added tokens that are matched in the
 * raw text (those with "normalized": false).
 */
static PeftCode
tokenizer_from_json(const cJSON *root, const char *path,
					const TokenizerOptions *opts, Tokenizer **out, PeftError *err)
{
	const cJSON *model;
	const cJSON *vocab;
	const cJSON *item;
	const char *unk_token = "[UNK]";
	TokenizerOptions json_opts;
	size_t		n_tokens;
	size_t		arena_bytes;
	Tokenizer  *tok;
	PeftCode	rc;

	*out = NULL;
	if ((rc = json_wordpiece_model(root, path, &model, &vocab, err)) != PEFT_OK)
		return rc;
	if (opts == NULL)
	{
		const cJSON *normalizer = cJSON_GetObjectItemCaseSensitive(root, "normalizer");

		if (cJSON_IsObject(normalizer))
		{
			rc = options_from_normalizer(normalizer, path, &json_opts, err);
			if (rc != PEFT_OK)
				return rc;
		}
		else
			default_options(&json_opts);
		opts = &json_opts;
	}
	if ((rc = json_vocab_size(vocab, path, &n_tokens, &arena_bytes, err)) != PEFT_OK)
		return rc;

	rc = tokenizer_alloc(n_tokens, arena_bytes, opts, &tok, err);
	if (rc != PEFT_OK)
		return rc;
	cJSON_ArrayForEach(item, vocab)
		vocab_insert(tok, item->string, strlen(item->string), item->valueint);
	if ((rc = json_model_settings(tok, model, path, &unk_token, err)) != PEFT_OK ||
		(rc = json_finish(tok, root, unk_token, path, err)) != PEFT_OK)
	{
		tokenizer_free(tok);
		return rc;
	}
	*out = tok;
	return PEFT_OK;
}

/* Parse len bytes of tokenizer.json text; label names it in messages. */
static PeftCode
tokenizer_parse_json(const char *data, size_t len, const char *label,
					 const TokenizerOptions *opts, Tokenizer **out, PeftError *err)
{
	cJSON	   *root = NULL;
	PeftCode	rc;

	if ((rc = parse_json_text(data, len, label, &root, err)) != PEFT_OK)
		return rc;
	rc = tokenizer_from_json(root, label, opts, out, err);
	cJSON_Delete(root);
	return rc;
}

/* Load the WordPiece vocabulary of a tokenizer.json (when vocab.txt is absent). */
PeftCode
tokenizer_load_json(const char *path, const TokenizerOptions *opts,
					Tokenizer **out, PeftError *err)
{
	char	   *data;
	size_t		len;
	PeftCode	rc;

	if (out == NULL || path == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "tokenizer_load_json: no path or output");
	*out = NULL;
	rc = read_file(path, &data, &len, err);
	if (rc != PEFT_OK)
		return rc;
	rc = tokenizer_parse_json(data, len, path, opts, out, err);
	free(data);
	return rc;
}

/*
 * Options from tokenizer_config.json (do_lower_case, strip_accents,
 * tokenize_chinese_chars); uncased defaults where absent or unreadable.
 */
static void
options_from_config(const char *dir, TokenizerOptions *opts)
{
	char		path[4096];
	char	   *data;
	size_t		len;
	cJSON	   *root;
	const cJSON *item;

	default_options(opts);
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	if (read_file(path, &data, &len, NULL) != PEFT_OK)
		return;
	root = cJSON_ParseWithLength(data, len);
	free(data);
	if (root == NULL)
		return;
	item = cJSON_GetObjectItemCaseSensitive(root, "do_lower_case");
	if (cJSON_IsBool(item))
		opts->lowercase = cJSON_IsTrue(item);
	item = cJSON_GetObjectItemCaseSensitive(root, "tokenize_chinese_chars");
	if (cJSON_IsBool(item))
		opts->split_chinese = cJSON_IsTrue(item);
	item = cJSON_GetObjectItemCaseSensitive(root, "strip_accents");
	opts->strip_accents = cJSON_IsBool(item) ? cJSON_IsTrue(item) : opts->lowercase;
	cJSON_Delete(root);
}

/*
 * Load from a model folder: vocab.txt, else tokenizer.json.  Without opts,
 * the options come from tokenizer_config.json (vocab.txt) or the
 * tokenizer.json normalizer.
 */
PeftCode
tokenizer_load_dir(const char *dir, const TokenizerOptions *opts,
				   Tokenizer **out, PeftError *err)
{
	char		path[4096];
	struct stat st;
	TokenizerOptions config_opts;

	if (out == NULL || dir == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "tokenizer_load_dir: no folder or output");
	*out = NULL;
	if (strlen(dir) > sizeof(path) - 32)
		return peft_fail(err, PEFT_ERR_INVALID, "model folder path is too long");
	snprintf(path, sizeof(path), "%s/vocab.txt", dir);
	if (stat(path, &st) == 0)
	{
		if (opts == NULL)
		{
			options_from_config(dir, &config_opts);
			opts = &config_opts;
		}
		return tokenizer_load_vocab(path, opts, out, err);
	}
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	if (stat(path, &st) == 0)
		return tokenizer_load_json(path, opts, out, err);
	return peft_fail(err, PEFT_ERR_IO,
					 "model folder \"%s\" has neither vocab.txt nor tokenizer.json", dir);
}

/* Vocabulary size (largest id + 1, the embedding rows it needs). */
int
tokenizer_vocab_size(const Tokenizer *tok)
{
	return tok == NULL ? 0 : tok->vocab_size;
}


/* ---- splitting text into words ----------------------------------------- */

/* Hand the word to the sink (if it has characters) and start a new one. */
static inline void
word_flush(WordBuffer *word, TokenSink *sink)
{
	if (word->nchars > 0 && !sink->stop)
		sink->word(sink, word);
	word->nchars = 0;
	word->reorder_floor = 0;
}

/* Append a starter (combining class 0) to the word. */
static inline void
word_append_starter(const Tokenizer *tok, WordBuffer *word, uint32_t cp)
{
	int			n = word->nchars++;

	if (n < tok->max_word_chars)	/* else too long: [UNK] anyway */
	{
		word->cps[n] = cp;
		word->reorder_floor = n + 1;
	}
}

/*
 * Append a code point to the word.  With NFD active, a combining mark is
 * moved before the marks of higher combining class that precede it, back
 * to the last starter: NFD's canonical ordering.
 */
static inline void
word_append(const Tokenizer *tok, WordBuffer *word, uint32_t cp)
{
	int			n;
	int			ccc;

	if (!tok->opts.strip_accents || (ccc = combining_class(cp)) == 0)
	{
		word_append_starter(tok, word, cp);
		return;
	}
	n = word->nchars++;
	if (n >= tok->max_word_chars)
		return;
	while (n > word->reorder_floor && combining_class(word->cps[n - 1]) > ccc)
	{
		word->cps[n] = word->cps[n - 1];
		n--;
	}
	word->cps[n] = cp;
}

/* Route one normalised code point: whitespace, punctuation or word. */
static inline void
add_normalized(const Tokenizer *tok, WordBuffer *word, TokenSink *sink,
			   uint32_t cp)
{
	if (is_whitespace(cp))
		word_flush(word, sink);
	else if (is_punctuation(cp))
	{
		word_flush(word, sink);
		word_append_starter(tok, word, cp);
		word_flush(word, sink);
	}
	else
		word_append(tok, word, cp);
}

/* Normalise one non-ASCII code point of the text and route the result. */
static void
add_codepoint(const Tokenizer *tok, WordBuffer *word, TokenSink *sink,
			  uint32_t cp)
{
	uint32_t	decomposed[MAX_DECOMPOSITION];
	int			n;
	bool		chinese;

	if (cp == 0 || cp == 0xFFFD || is_control(cp))
		return;
	if (is_whitespace(cp))
	{
		word_flush(word, sink);
		return;
	}
	chinese = tok->opts.split_chinese && is_chinese_char(cp);
	if (chinese)
		word_flush(word, sink);
	if (tok->opts.strip_accents)
		n = decompose(cp, decomposed);
	else
	{
		decomposed[0] = cp;
		n = 1;
	}
	for (int i = 0; i < n; i++)
	{
		uint32_t	c = decomposed[i];

		if (tok->opts.strip_accents && is_nonspacing_mark(c))
		{
			/* a removed starter still ends NFD's reordering run */
			if (combining_class(c) == 0 && word->nchars <= tok->max_word_chars)
				word->reorder_floor = word->nchars;
			continue;
		}
		if (tok->opts.lowercase)
		{
			uint32_t	lower[2];
			int			nl = to_lowercase(c, lower);

			for (int k = 0; k < nl; k++)
				add_normalized(tok, word, sink, lower[k]);
		}
		else
			add_normalized(tok, word, sink, c);
	}
	if (chinese)
		word_flush(word, sink);
}

/* The special token that starts at text[pos] (the longest), or NULL. */
static inline const SpecialToken *
match_special(const Tokenizer *tok, const uint8_t *text, size_t len, size_t pos)
{
	const SpecialToken *best = NULL;

	for (int i = 0; i < tok->n_special; i++)
	{
		const SpecialToken *s = &tok->special[i];

		if (s->len <= len - pos && memcmp(text + pos, s->text, s->len) == 0 &&
			(best == NULL || s->len > best->len))
			best = s;
	}
	return best;
}

/*
 * Normalise and split text into words (and literal special tokens), handing
 * each to the sink in order, until the text ends or the sink stops.
 */
static void
split_text(const Tokenizer *tok, const uint8_t *text, size_t len, TokenSink *sink)
{
	WordBuffer	word;
	size_t		pos = 0;

	word.nchars = 0;
	word.reorder_floor = 0;
	while (pos < len && !sink->stop)
	{
		uint8_t		b = text[pos];
		int32_t		cp;

		if (tok->special_first[b])
		{
			const SpecialToken *special = match_special(tok, text, len, pos);

			if (special != NULL)
			{
				word_flush(&word, sink);
				if (!sink->stop)
					sink->special(sink, special);
				pos += special->len;
				continue;
			}
		}
		if (b < 0x80)
		{
			switch (tok->ascii_class[b])
			{
				case ASCII_DROP:
					break;
				case ASCII_SPACE:
					word_flush(&word, sink);
					break;
				case ASCII_PUNCT:
					word_flush(&word, sink);
					word_append_starter(tok, &word, b);
					word_flush(&word, sink);
					break;
				default:
					word_append_starter(tok, &word, tok->ascii_lower[b]);
					break;
			}
			pos++;
			continue;
		}
		cp = decode_utf8(text, len, &pos);
		if (cp < 0)
			continue;
		if (cp < 0x10000 && (tok->plain_bmp[cp >> 3] & (1 << (cp & 7))))
			word_append_starter(tok, &word, (uint32_t) cp);
		else
			add_codepoint(tok, &word, sink, (uint32_t) cp);
	}
	word_flush(&word, sink);
}


/* ---- WordPiece and the sinks ------------------------------------------- */

/*
 * WordPiece a word: greedy longest match first from the left, continuation
 * pieces with the prefix.  Writes the ids to pieces[] and returns their
 * count, or 0 when the word is [UNK] (too long, or some piece not found).
 */
static int
wordpiece(const Tokenizer *tok, const WordBuffer *word, int32_t *pieces)
{
	uint8_t		bytes[MAX_WORD_CHARS_LIMIT * 4];
	int			offsets[MAX_WORD_CHARS_LIMIT + 1];
	int			n = word->nchars;
	int			start = 0;
	int			count = 0;

	if (n > tok->max_word_chars)
		return 0;
	offsets[0] = 0;
	for (int i = 0; i < n; i++)
		offsets[i + 1] = offsets[i] + encode_utf8(word->cps[i], bytes + offsets[i]);

	while (start < n)
	{
		size_t		extra = start > 0 ? tok->prefix_len : 0;
		int			end = n;
		int			found = -1;

		/* no vocabulary entry is longer than max_token_bytes */
		while (end > start &&
			   (size_t) (offsets[end] - offsets[start]) + extra > tok->max_token_bytes)
			end--;
		for (; end > start; end--)
		{
			found = vocab_find(tok, start > 0, bytes + offsets[start],
							   (size_t) (offsets[end] - offsets[start]));
			if (found >= 0)
				break;
		}
		if (found < 0)
			return 0;
		pieces[count++] = tok->entries[found].id;
		start = end;
	}
	return count;
}

/* Encode sink: WordPiece the word and append its ids while there is room. */
static void
encode_word(TokenSink *sink, const WordBuffer *word)
{
	EncodeSink *es = (EncodeSink *) sink;
	int32_t		pieces[MAX_WORD_CHARS_LIMIT];
	int			n = wordpiece(es->tok, word, pieces);

	if (n == 0)
	{
		pieces[0] = es->tok->unk_id;
		n = 1;
	}
	for (int i = 0; i < n && es->count < es->limit; i++)
		es->ids[es->count++] = pieces[i];
	if (es->count >= es->limit)
		sink->stop = true;
}

/* Encode sink: a special token written in the text is its id. */
static void
encode_special(TokenSink *sink, const SpecialToken *special)
{
	EncodeSink *es = (EncodeSink *) sink;

	if (es->count < es->limit)
		es->ids[es->count++] = special->id;
	if (es->count >= es->limit)
		sink->stop = true;
}

/*
 * Encode text (len bytes of UTF-8; invalid bytes are dropped, as Hugging
 * Face's lossy decoding then cleaning does) as [CLS] tokens... [SEP],
 * truncated so the total is at most max_length.  Writes ids[max_length];
 * returns the count, or 0 when max_length < 2 or tok is NULL.
 */
int
tokenizer_encode(const Tokenizer *tok, const char *text, size_t len,
				 int max_length, int32_t *ids)
{
	EncodeSink	sink;

	if (tok == NULL || ids == NULL || max_length < 2)
		return 0;
	if (text == NULL)
		len = 0;
	sink.base.word = encode_word;
	sink.base.special = encode_special;
	sink.base.stop = false;
	sink.tok = tok;
	sink.ids = ids;
	sink.count = 0;
	sink.limit = max_length - 1;	/* leave room for [SEP] */
	ids[sink.count++] = tok->cls_id;
	if (sink.count >= sink.limit)
		sink.base.stop = true;
	else if (len > 0)
		split_text(tok, (const uint8_t *) text, len, &sink.base);
	ids[sink.count++] = tok->sep_id;
	return sink.count;
}
