/*
 * decoder.h - the forward pass of a LLaMA-family decoder (llama_model.h)
 * over packed rows of many sequences at once, with a key/value cache.
 *
 * A Decoder holds the cache for `slots` sequences of up to `ctx` positions
 * each, and scratch buffers for the largest number of rows one call runs.
 * A call takes new tokens (prompts' tokens when prefilling, one token per
 * sequence when decoding), each tagged with its sequence slot and position;
 * it writes their keys and values into the cache and returns the logits of
 * the rows asked for.  Prompts of different lengths prefill together and
 * decode together: nothing is padded.
 */
#ifndef PEFT_ENGINE_DECODER_H
#define PEFT_ENGINE_DECODER_H

#include <stdint.h>
#include "llama_model.h"
#include "status.h"

typedef struct Decoder Decoder;
typedef struct DecoderAdapter DecoderAdapter;

/*
 * What a decoder with an adapter per sequence reserves for its adapters:
 * cache positions for virtual tokens, scratch for bottleneck layers, the
 * inputs of prompt tuning's virtual tokens.  A slot's adapter can change
 * to any adapter that needs no more (decoder_set_slot_adapter).
 */
typedef struct DecoderRoom
{
	int			virtual_tokens;
	int			bottleneck_width;
	bool		prompt_inputs;
} DecoderRoom;

/*
 * A decoder over model, through adapter (NULL: the base model; the caller
 * keeps it alive), for slots sequences of up to ctx positions.  An
 * adapter's virtual tokens (prompt, prefix tuning) take cache positions of
 * their own before every sequence, so a caller's positions still start at 0.
 */
PeftCode	decoder_create(const LlamaModel *model, DecoderAdapter *adapter, int slots, int ctx,
						   Decoder **out, PeftError *err);

/*
 * The same with an adapter per sequence: slot s through adapters[s]
 * (NULL: the base model; the caller keeps them alive).  Each product with
 * the base weights runs once over every row of a call, and each adapter's
 * part on its sequences' rows (a mixed batch); the cache leaves room for
 * the most virtual tokens of any of them.  per_slot false: adapters[0]
 * for every sequence (decoder_create).
 */
PeftCode	decoder_create_mixed(const LlamaModel *model, DecoderAdapter *const *adapters,
								 bool per_slot, int slots, int ctx, Decoder **out, PeftError *err);

/* Grow room to hold what adapter ad needs as well (NULL: the base model, nothing). */
void		decoder_room_add(DecoderRoom *room, const DecoderAdapter *ad);

/*
 * A decoder with an adapter per sequence, every slot on the base model
 * for now, reserving room for the adapters that decoder_set_slot_adapter
 * may put there later.
 */
PeftCode	decoder_create_room(const LlamaModel *model, const DecoderRoom *room, int slots, int ctx,
								Decoder **out, PeftError *err);

/* Whether a decoder with an adapter per sequence has the room adapter ad needs. */
bool		decoder_room_holds(const Decoder *dec, const DecoderAdapter *ad);

/*
 * Put sequence slot s through ad (NULL: the base model; the caller keeps
 * it alive) from its next row at position 0 on, as a slot is reused.
 * Fails unless the decoder was made with an adapter per sequence and has
 * the room ad needs.
 */
PeftCode	decoder_set_slot_adapter(Decoder *dec, int s, DecoderAdapter *ad, PeftError *err);

/*
 * Run N new rows: token ids[r] of sequence slot[r] at position pos[r]
 * (a sequence's positions 0..pos[r]-1 must be in the cache already or come
 * earlier in this call; a row at position 0 starts its sequence anew, and
 * puts the adapter's virtual tokens before it).  logits[i, vocab] receives the logits of row
 * logit_rows[i], for i < nlogits (logit_rows increasing).
 */
PeftCode	decoder_forward(Decoder *dec, const int32_t *ids, const int32_t *slot,
							const int32_t *pos, int N, const int32_t *logit_rows, int nlogits,
							float *logits, PeftError *err);

/*
 * Compute the output head as the scalar reference does (exact float sums)
 * rather than with decoding's int16-activation kernels: logits for parity
 * checks (about 1e-3 closer to transformers' over the vocabulary).
 */
void		decoder_set_exact_head(Decoder *dec, bool exact);

/* Bytes the decoder allocated (cache and scratch), for memory reports. */
size_t		decoder_bytes(const Decoder *dec);

/* Release (NULL allowed). */
void		decoder_free(Decoder *dec);

#endif
