/*
 * bpe_tokenizer.h - byte-level BPE tokenisation (GPT-2 style), identical to
 * Hugging Face's tokenizers library for the decoder models we run:
 * SmolLM2 (GGUF tokenizer.ggml.pre "smollm"), GPT-2, Llama 3 and Qwen2.
 *
 * A tokenizer is loaded from a GGUF file's metadata (llama.cpp's
 * tokenizer.ggml.* keys, model "gpt2") or from a Hugging Face
 * tokenizer.json (model "BPE" with a ByteLevel pre-tokenizer and decoder).
 * Both are validated completely: a malformed vocabulary, merge list or
 * pre-tokenizer is an error, never a crash.
 *
 * Encoding, in Hugging Face's order:
 *   1. added tokens written in the text are matched first, leftmost and
 *      longest (GGUF: control tokens are special, user-defined ones are
 *      added but not special); special ones only when parse_special;
 *   2. the rest is normalised (NFC where the tokenizer.json says so);
 *   3. the pre-tokenizer cuts it into pieces (pretokenizer.h);
 *   4. each piece's bytes become characters by GPT-2's byte-to-unicode map
 *      and are merged by rank (lowest first, leftmost on ties); a byte with
 *      no token is dropped as Hugging Face drops it (no unk token), or
 *      becomes the unk token or <0xXX> byte tokens where the tokenizer.json
 *      asks for that.
 * No BOS or EOS is added: bpe_encode is add_special_tokens=False; prepend
 * bpe_bos_id() yourself when bpe_add_bos() says the model wants it.
 * Text that is not valid UTF-8 is encoded byte by byte all the same.
 *
 * Decoding maps token characters back to bytes (a token with a character
 * outside the byte alphabet, such as an added token, gives its own UTF-8)
 * and turns invalid UTF-8 into U+FFFD, one per maximal invalid subpart, as
 * Hugging Face's decode does (Rust's from_utf8_lossy, Python's
 * errors="replace").  The streaming decoder (BpeDecoder) holds the bytes of
 * a character cut between tokens until it is complete.
 *
 * A BpeTokenizer is immutable once loaded: any number of threads may
 * encode and decode with it at once (each BpeDecoder belongs to one
 * stream).  Encoding is O(n log n) in the piece length (a heap of merge
 * candidates over a linked list of symbols, merge ranks in a hash table).
 */
#ifndef PEFT_ENGINE_BPE_TOKENIZER_H
#define PEFT_ENGINE_BPE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "gguf.h"
#include "status.h"

typedef struct BpeTokenizer BpeTokenizer;

/* Largest vocabulary accepted (ids 0 .. BPE_MAX_TOKENS - 1). */
#define BPE_MAX_TOKENS (1 << 24)
/* Longest token text accepted, in bytes. */
#define BPE_MAX_TOKEN_BYTES 4096
/* Longest text bpe_encode accepts, in bytes. */
#define BPE_MAX_TEXT_BYTES ((size_t) 1 << 30)
/* What bpe_decoder_flush may write: one U+FFFD. */
#define BPE_FLUSH_MAX_BYTES 3

/*
 * A streaming decoder's state: the bytes of a UTF-8 character begun by one
 * token and not yet completed by the next.  Initialise with
 * bpe_decoder_init; plain data, may be copied.
 */
typedef struct BpeDecoder
{
	uint8_t		pending[4];		/* a valid but incomplete prefix */
	uint8_t		npending;		/* bytes in pending (0-3) */
	uint8_t		need;			/* bytes the character has in all */
} BpeDecoder;

/* ---- loading -------------------------------------------------------------- */

/*
 * From a GGUF file's metadata (the file may be closed afterwards):
 * tokenizer.ggml.model must be "gpt2"; tokens, merges ("a b"), token_type
 * (optional), pre (optional: gpt2 when absent; see pretokenizer.h for the
 * names), bos/eos/unknown/padding_token_id and add_bos/add_eos_token
 * (optional).  Errors: PEFT_ERR_FORMAT for a missing or malformed key (a
 * merge whose parts or result are not tokens, an id out of range...),
 * PEFT_ERR_UNSUPPORTED for another model or pre-tokenizer.
 */
PeftCode	bpe_tokenizer_from_gguf(const GgufFile *file, BpeTokenizer **out, PeftError *err);

/*
 * From the text of a tokenizer.json (len bytes): model.type "BPE" with
 * vocab, merges ("a b" strings or [a, b] pairs), unk_token, fuse_unk,
 * byte_fallback, ignore_merges; added_tokens (special, lstrip, rstrip,
 * single_word, normalized); normalizer null or NFC; pre_tokenizer a
 * ByteLevel or a Sequence of Split (Isolated), Digits and ByteLevel ending
 * with ByteLevel; decoder ByteLevel.  A tokenizer.json has no BOS/EOS
 * (they live in tokenizer_config.json): bpe_bos_id and bpe_eos_id are -1,
 * find them with bpe_token_id.
 */
PeftCode	bpe_tokenizer_from_json(const char *json, size_t len, BpeTokenizer **out,
									PeftError *err);
/* bpe_tokenizer_from_json on a file (at most 256 MiB). */
PeftCode	bpe_tokenizer_load_json(const char *path, BpeTokenizer **out, PeftError *err);
/* Free; NULL is allowed. */
void		bpe_tokenizer_free(BpeTokenizer *tok);

/* ---- the vocabulary ------------------------------------------------------- */

/* Number of ids: the largest id + 1 (the embedding rows the model needs). */
int32_t		bpe_vocab_size(const BpeTokenizer *tok);
/*
 * The id of a token by its text as the vocabulary writes it (len bytes):
 * an added token's content ("<|im_end|>") or a model token in byte-level
 * spelling ("Ġhello"); -1 if none.
 */
int32_t		bpe_token_id(const BpeTokenizer *tok, const char *text, size_t len);
/* A token's text as the vocabulary writes it, and its length; NULL for an id out of range or without a token. */
const char *bpe_token_text(const BpeTokenizer *tok, int32_t id, size_t *len);
/* Whether id is a special token (GGUF: control, token_type 3; tokenizer.json: "special": true). */
bool		bpe_is_control(const BpeTokenizer *tok, int32_t id);

/* The GGUF's tokenizer.ggml.bos_token_id etc., or -1 when not given. */
int32_t		bpe_bos_id(const BpeTokenizer *tok);
int32_t		bpe_eos_id(const BpeTokenizer *tok);
int32_t		bpe_pad_id(const BpeTokenizer *tok);
int32_t		bpe_unk_id(const BpeTokenizer *tok);
/* tokenizer.ggml.add_bos_token / add_eos_token (false when absent). */
bool		bpe_add_bos(const BpeTokenizer *tok);
bool		bpe_add_eos(const BpeTokenizer *tok);

/* ---- encoding ------------------------------------------------------------- */

/*
 * Encode text (len bytes, at most BPE_MAX_TEXT_BYTES) into ids[0..cap).
 * *n_ids receives the number of ids the text has, which may exceed cap:
 * then only the first cap were written, and a second call with a buffer of
 * *n_ids entries gets them all (cap 0 and ids NULL just count).
 * parse_special: special tokens written in the text become their ids
 * (Hugging Face's default); false reads them as plain text
 * (split_special_tokens=True).  Non-special added tokens are matched either
 * way.  Errors: PEFT_ERR_INVALID (arguments), PEFT_ERR_NOMEM.
 */
PeftCode	bpe_encode(const BpeTokenizer *tok, const char *text, size_t len, bool parse_special,
					   int32_t *ids, size_t cap, size_t *n_ids, PeftError *err);
/* bpe_encode into a malloc'ed array (*ids, free it; NULL when *n_ids is 0). */
PeftCode	bpe_encode_alloc(const BpeTokenizer *tok, const char *text, size_t len,
							 bool parse_special, int32_t **ids, size_t *n_ids, PeftError *err);

/* ---- decoding ------------------------------------------------------------- */

/* Start a stream: no pending bytes. */
void		bpe_decoder_init(BpeDecoder *dec);
/* The most bytes one bpe_decoder_feed can write for this tokenizer. */
size_t		bpe_decode_bound(const BpeTokenizer *tok);
/*
 * Feed one id; write to out (cap >= bpe_decode_bound(tok)) the UTF-8 bytes
 * that are now complete, *n_out of them: the token's bytes after those held
 * from before, less the start of a character the token leaves incomplete
 * (held for the next feed); invalid bytes become U+FFFD.  skip_special:
 * special tokens give nothing (skip_special_tokens=True).  An id without a
 * token gives nothing, as in Hugging Face.  Errors: PEFT_ERR_INVALID for an
 * id out of range or cap too small (dec is then unchanged).
 */
PeftCode	bpe_decoder_feed(const BpeTokenizer *tok, BpeDecoder *dec, int32_t id,
							 bool skip_special, char *out, size_t cap, size_t *n_out,
							 PeftError *err);
/*
 * End a stream: write U+FFFD to out (BPE_FLUSH_MAX_BYTES) if bytes of an
 * incomplete character are held; return the bytes written (0 or 3).
 */
size_t		bpe_decoder_flush(BpeDecoder *dec, char *out);
/*
 * Decode n ids into a malloc'ed NUL-terminated string (*text, free it) of
 * *len bytes: the streaming decoder fed every id, then flushed.
 */
PeftCode	bpe_decode(const BpeTokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
					   char **text, size_t *len, PeftError *err);

#endif
