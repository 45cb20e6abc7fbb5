/*
 * generate_stream.c - continuous batching: a stream holds a decoder with
 * an adapter per slot, a first-in-first-out queue of tokenised prompts and
 * the sequences decoding in the slots.  Each step admits queued prompts
 * into free slots (all of them prefilled in one decoder pass; a row at
 * position 0 restarts its slot, virtual tokens first), then takes one
 * decoding step over every live sequence; a sequence that finishes leaves
 * its slot at once.
 *
 * Each sequence keeps its own options and its own sampling state, seeded
 * as generate seeds the prompt at its index, and a slot holds the
 * sequence's whole prompt and completion (longer requests are refused as
 * "alone"), so a completion is generate's for the same request.
 *
 * The decoder reserves room for adapters (virtual tokens, bottleneck
 * scratch, prompt inputs).  When the queue's head needs more than it has,
 * admission waits until no sequence is live, then the decoder is made
 * again with room for it too, and keeps it: the head is never passed over
 * and waits at most until the live sequences finish.
 */
#include "generate_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "generate_internal.h"
#include "sampler.h"

/* One prompt of a stream, queued or live. */
typedef struct StreamSeq
{
	struct StreamSeq *next;		/* the next one queued */
	uint64_t	tag;
	DecoderAdapter *adapter;
	PeftGenerateOptions o;		/* the caller's, stop strings pointing at our copies */
	char	  **stop;			/* [o.nstop] copies */
	int			slot;			/* -1 while queued */
	Sequence	seq;
	PeftGeneration gen;
} StreamSeq;

struct GenStream
{
	GenerateModel g;
	int			slots;
	int			ctx;			/* positions for one slot's prompt and completion */
	DecoderRoom room;			/* what the decoder reserves for adapters (it only grows) */
	Decoder    *dec;			/* NULL until a prompt is first admitted */
	StreamSeq **live;			/* [slots] each slot's sequence, or NULL */
	int			nlive;
	StreamSeq  *head;			/* the queue, oldest first */
	StreamSeq  *tail;
	int			nqueued;
	/* one step's rows: at most one per slot */
	StreamSeq **rows;
	int32_t    *ids;
	int32_t    *slot;
	int32_t    *pos;
	int32_t    *last;
	float	   *logits;			/* [slots, vocab] */
	void	   *scratch;		/* the sampler's */
	char	   *piece;			/* a token's bytes */
	PeftStreamResult *done;		/* [slots] the step's finished sequences */
	int			ndone;
};

/* Release one sequence and what it holds. */
static void
free_seq(StreamSeq *ss)
{
	sequence_release(&ss->seq);
	free(ss->gen.text);
	for (int i = 0; ss->stop && i < ss->o.nstop; i++)
		free(ss->stop[i]);
	free(ss->stop);
	free(ss);
}

/* Free slot s (its sequence released elsewhere); the decoder forgets its adapter. */
static void
leave_slot(GenStream *st, int s)
{
	st->live[s] = NULL;
	st->nlive--;
	/* the base model always fits: no pointer to an adapter the caller may free stays behind */
	decoder_set_slot_adapter(st->dec, s, NULL, NULL);
}

/* Drop every sequence, queued, live or finished in this step: the stream is then empty. */
static void
drop_all(GenStream *st)
{
	while (st->head != NULL)
	{
		StreamSeq  *ss = st->head;

		st->head = ss->next;
		free_seq(ss);
	}
	st->tail = NULL;
	st->nqueued = 0;
	for (int s = 0; s < st->slots; s++)
		if (st->live[s] != NULL)
		{
			free_seq(st->live[s]);
			leave_slot(st, s);
		}
	for (int i = 0; st->done && i < st->ndone; i++)
		free(st->done[i].gen.text);
	free(st->done);
	st->done = NULL;
	st->ndone = 0;
}

PeftCode
generate_stream_create(const GenerateModel *g, int slots, size_t cache_bytes, GenStream **out,
					   PeftError *err)
{
	const LlamaConfig *c = &g->model->cfg;
	size_t		per_position = (size_t) c->num_layers * 2 * c->num_kv_heads * c->head_dim * sizeof(float);
	size_t		fit;
	GenStream  *st;

	*out = NULL;
	if (slots < 1 || slots > 4096)
		return peft_fail(err, PEFT_ERR_INVALID, "a stream of %d slots (1 to 4096)", slots);
	if (cache_bytes == 0)
		cache_bytes = GENERATE_CACHE_BUDGET;
	fit = cache_bytes / ((size_t) slots * per_position);
	if (fit < 2)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "%zu bytes of cache leave %d slots %zu positions each (a slot needs 2 at least)",
						 cache_bytes, slots, fit);
	if ((st = calloc(1, sizeof(GenStream))) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a stream");
	st->g = *g;
	st->g.adapter = NULL;
	st->slots = slots;
	st->ctx = fit < (size_t) c->context_length ? (int) fit : c->context_length;
	st->live = calloc(slots, sizeof(StreamSeq *));
	st->rows = calloc(slots, sizeof(StreamSeq *));
	st->ids = malloc(sizeof(int32_t) * slots);
	st->slot = malloc(sizeof(int32_t) * slots);
	st->pos = malloc(sizeof(int32_t) * slots);
	st->last = malloc(sizeof(int32_t) * slots);
	st->logits = malloc(sizeof(float) * (size_t) slots * c->vocab_size);
	st->scratch = malloc(sampler_scratch_bytes(c->vocab_size));
	st->piece = malloc(bpe_decode_bound(g->tokenizer));
	if (!st->live || !st->rows || !st->ids || !st->slot || !st->pos || !st->last || !st->logits ||
		!st->scratch || !st->piece)
	{
		generate_stream_free(st);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a stream of %d slots", slots);
	}
	*out = st;
	return PEFT_OK;
}

PeftCode
generate_stream_add(GenStream *st, DecoderAdapter *ad, bool shareable, const char *prompt, size_t len,
					const PeftGenerateOptions *o, int index, uint64_t tag, bool *alone, PeftError *err)
{
	const GenerateModel *g = &st->g;
	int			context_length = g->model->cfg.context_length;
	int			V = shareable ? decoder_adapter_virtual_tokens(ad) : 0;
	int32_t    *ids = NULL;
	int			n = 0;
	StreamSeq  *ss;
	PeftCode	rc;

	*alone = false;
	if ((rc = generate_check_options(o, err)) != PEFT_OK)
		return rc;
	if (index < 0)
		return peft_fail(err, PEFT_ERR_INVALID, "prompt index %d is negative", index);
	if ((rc = generate_prompt_ids(g, prompt, len, generate_use_chat(g, o), o->system, &ids, &n, err)) != PEFT_OK)
		return rc;
	if (n >= context_length - V)
	{
		free(ids);
		return peft_fail(err, PEFT_ERR_INVALID,
						 "the prompt has %d tokens, more than the model's context of %d allows%s",
						 n, context_length, V ? " after the adapter's virtual tokens" : "");
	}
	/*
	 * Merged weights are another model; and generate stops a request longer
	 * than the context at its end, which a slot would stop sooner.
	 */
	if (!shareable || n + o->max_new_tokens > st->ctx || n + o->max_new_tokens + V > context_length)
	{
		free(ids);
		*alone = true;
		return PEFT_OK;
	}
	if ((ss = calloc(1, sizeof(StreamSeq))) == NULL ||
		(ss->stop = calloc(o->nstop > 0 ? o->nstop : 1, sizeof(char *))) == NULL)
	{
		free(ss);
		free(ids);
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory queueing a prompt");
	}
	ss->o = *o;
	for (int i = 0; i < o->nstop; i++)
		if ((ss->stop[i] = strdup(o->stop[i])) == NULL)
		{
			free(ids);
			free_seq(ss);
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory queueing a prompt");
		}
	ss->o.stop = (const char *const *) ss->stop;
	/* the system message is in the tokens already; cancelling is stream_cancel's */
	ss->o.system = NULL;
	ss->o.canceled = NULL;
	ss->o.cancel_arg = NULL;
	ss->tag = tag;
	ss->adapter = ad;
	ss->slot = -1;
	sequence_begin(&ss->seq, ids, n, &ss->gen);
	generate_seed_rng(&ss->seq.rng, o->seed, index);
	if (st->tail)
		st->tail->next = ss;
	else
		st->head = ss;
	st->tail = ss;
	st->nqueued++;
	return PEFT_OK;
}

bool
generate_stream_cancel(GenStream *st, uint64_t tag)
{
	StreamSeq  *prev = NULL;

	for (StreamSeq *ss = st->head; ss != NULL; prev = ss, ss = ss->next)
		if (ss->tag == tag)
		{
			if (prev)
				prev->next = ss->next;
			else
				st->head = ss->next;
			if (st->tail == ss)
				st->tail = prev;
			st->nqueued--;
			free_seq(ss);
			return true;
		}
	for (int s = 0; s < st->slots; s++)
		if (st->live[s] != NULL && st->live[s]->tag == tag)
		{
			free_seq(st->live[s]);
			leave_slot(st, s);
			return true;
		}
	return false;
}

/* Hand a finished (rc PEFT_OK) or failed sequence back as a result of this step, freeing its slot. */
static void
retire(GenStream *st, StreamSeq *ss, PeftCode rc, const PeftError *why)
{
	PeftStreamResult *r = &st->done[st->ndone++];

	memset(r, 0, sizeof(*r));
	r->tag = ss->tag;
	r->code = rc;
	r->gen = ss->gen;
	ss->gen.text = NULL;
	if (rc != PEFT_OK)
	{
		snprintf(r->message, sizeof(r->message), "%s", why->message);
		free(r->gen.text);
		r->gen.text = NULL;
	}
	leave_slot(st, ss->slot);
	free_seq(ss);
}

/* Sample ss's next token from its logits, take it; retire ss when it ends (or fails alone). */
static void
advance(GenStream *st, StreamSeq *ss, const float *logits)
{
	SamplerOptions so = {ss->o.temperature, ss->o.top_k, ss->o.top_p};
	int			vocab = st->g.model->cfg.vocab_size;
	int32_t		token = sampler_next(logits, vocab, &so, &ss->seq.rng, st->scratch);
	PeftError	why = {0};
	PeftCode	rc;

	/* the slot holds the whole request (stream_add), so max_new_tokens ends it first, as in generate */
	rc = sequence_take_token(&st->g, &ss->seq, token, ss->seq.prompt_len + ss->o.max_new_tokens,
							 st->piece, &ss->o, &why);
	if (rc != PEFT_OK || ss->seq.done)
		retire(st, ss, rc, &why);
}

/* Make the decoder again with room for ad as well (no sequence is live). */
static PeftCode
grow(GenStream *st, const DecoderAdapter *ad, PeftError *err)
{
	DecoderRoom room = st->room;
	int			left;
	PeftCode	rc;

	decoder_room_add(&room, ad);
	left = st->g.model->cfg.context_length - room.virtual_tokens;
	decoder_free(st->dec);
	st->dec = NULL;
	/* stream_add kept each request within both bounds, after its own virtual tokens */
	rc = decoder_create_room(st->g.model, &room, st->slots, st->ctx < left ? st->ctx : left, &st->dec, err);
	if (rc == PEFT_OK)
		st->room = room;
	return rc;
}

/* Move queued prompts into free slots, oldest first, and prefill them in one pass. */
static PeftCode
admit(GenStream *st, PeftError *err)
{
	int			vocab = st->g.model->cfg.vocab_size;
	int			n = 0,
				total = 0,
				r = 0;
	int32_t    *ids,
			   *slot,
			   *pos;
	PeftCode	rc = PEFT_OK;

	while (st->head != NULL && st->nlive < st->slots)
	{
		StreamSeq  *ss = st->head;
		int			s = 0;

		if (st->dec == NULL || !decoder_room_holds(st->dec, ss->adapter))
		{
			/* the head waits for the live sequences to finish; none passes it meanwhile */
			if (st->nlive > 0)
				break;
			if ((rc = grow(st, ss->adapter, err)) != PEFT_OK)
				return rc;
		}
		while (st->live[s] != NULL)
			s++;
		if ((rc = decoder_set_slot_adapter(st->dec, s, ss->adapter, err)) != PEFT_OK)
			return rc;
		st->head = ss->next;
		if (st->head == NULL)
			st->tail = NULL;
		st->nqueued--;
		ss->next = NULL;
		ss->slot = s;
		st->live[s] = ss;
		st->nlive++;
		st->rows[n++] = ss;
		total += ss->seq.prompt_len;
	}
	if (n == 0)
		return PEFT_OK;
	ids = malloc(sizeof(int32_t) * total);
	slot = malloc(sizeof(int32_t) * total);
	pos = malloc(sizeof(int32_t) * total);
	if (ids == NULL || slot == NULL || pos == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory prefilling %d prompts", n);
	else
	{
		for (int i = 0; i < n; i++)
		{
			const Sequence *q = &st->rows[i]->seq;

			for (int t = 0; t < q->prompt_len; t++, r++)
			{
				ids[r] = q->prompt[t];
				slot[r] = st->rows[i]->slot;
				pos[r] = t;
			}
			st->last[i] = r - 1;
		}
		rc = decoder_forward(st->dec, ids, slot, pos, total, st->last, n, st->logits, err);
	}
	free(ids);
	free(slot);
	free(pos);
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		advance(st, st->rows[i], st->logits + (size_t) i * vocab);
	return rc;
}

/* One decoding step over every live sequence: a row each. */
static PeftCode
decode(GenStream *st, PeftError *err)
{
	int			vocab = st->g.model->cfg.vocab_size;
	int			n = 0;
	PeftCode	rc;

	for (int s = 0; s < st->slots; s++)
	{
		StreamSeq  *ss = st->live[s];

		if (ss == NULL)
			continue;
		st->rows[n] = ss;
		st->ids[n] = ss->seq.next;
		st->slot[n] = s;
		st->pos[n] = ss->seq.pos++;
		st->last[n] = n;
		n++;
	}
	if (n == 0)
		return PEFT_OK;
	rc = decoder_forward(st->dec, st->ids, st->slot, st->pos, n, st->last, n, st->logits, err);
	for (int i = 0; rc == PEFT_OK && i < n; i++)
		advance(st, st->rows[i], st->logits + (size_t) i * vocab);
	return rc;
}

PeftCode
generate_stream_step(GenStream *st, PeftStreamResult **results, int *nresults, PeftError *err)
{
	PeftCode	rc;

	*results = NULL;
	*nresults = 0;
	st->ndone = 0;
	/* each slot's sequence finishes at most once a step */
	if ((st->done = malloc(sizeof(PeftStreamResult) * st->slots)) == NULL)
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a stream step");
	else if ((rc = admit(st, err)) == PEFT_OK)
		rc = decode(st, err);
	if (rc != PEFT_OK)
	{
		drop_all(st);
		return rc;
	}
	if (st->ndone > 0)
		*results = st->done;
	else
		free(st->done);
	*nresults = st->ndone;
	st->done = NULL;
	st->ndone = 0;
	return PEFT_OK;
}

int
generate_stream_pending(const GenStream *st)
{
	return st->nqueued + st->nlive;
}

void
generate_stream_free(GenStream *st)
{
	if (st == NULL)
		return;
	if (st->live)
		drop_all(st);
	decoder_free(st->dec);
	free(st->live);
	free(st->rows);
	free(st->ids);
	free(st->slot);
	free(st->pos);
	free(st->last);
	free(st->logits);
	free(st->scratch);
	free(st->piece);
	free(st);
}
