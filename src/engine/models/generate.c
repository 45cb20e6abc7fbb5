/*
 * generate.c - the generation loop over decoder.h: prompts are prefilled
 * in groups that share the key/value cache (slots), then every unfinished
 * prompt of the group takes one decoding step per forward pass.  The text
 * is assembled from the tokens' bytes through the tokenizer's streaming
 * decoder, so a character split over two tokens comes out whole; stop
 * strings are matched on those bytes.
 */
#define _GNU_SOURCE				/* memmem */
#include "generate_internal.h"

#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "sampler.h"

/* Prompts decoded together: more share each pass over the weights, but each needs a cache slot. */
#define GENERATE_GROUP 32
/* Prompt tokens assumed per slot when sizing groups (longer prompts just make the cache larger). */
#define GENERATE_PROMPT_ESTIMATE 256
/* Bounds on options (the SQL layer and the command line check them too). */
#define MAX_NEW_TOKENS_LIMIT (1 << 20)
#define MAX_STOP 16

void
generate_defaults(PeftGenerateOptions *o)
{
	memset(o, 0, sizeof(*o));
	o->max_new_tokens = 128;
	o->temperature = 0;
	o->top_k = 0;
	o->top_p = 1;
	o->seed = 0;
	o->chat = -1;
}

PeftCode
generate_check_options(const PeftGenerateOptions *o, PeftError *err)
{
	SamplerOptions s = {o->temperature, o->top_k, o->top_p};

	if (o->max_new_tokens < 1 || o->max_new_tokens > MAX_NEW_TOKENS_LIMIT)
		return peft_fail(err, PEFT_ERR_INVALID, "max_new_tokens %d is not in 1..%d",
						 o->max_new_tokens, MAX_NEW_TOKENS_LIMIT);
	if (o->nstop < 0 || o->nstop > MAX_STOP || (o->nstop > 0 && o->stop == NULL))
		return peft_fail(err, PEFT_ERR_INVALID, "%d stop strings (at most %d)", o->nstop, MAX_STOP);
	for (int i = 0; i < o->nstop; i++)
		if (o->stop[i] == NULL || o->stop[i][0] == '\0')
			return peft_fail(err, PEFT_ERR_INVALID, "stop string %d is empty", i + 1);
	return sampler_check(&s, err);
}

bool
generate_use_chat(const GenerateModel *g, const PeftGenerateOptions *o)
{
	return o->chat < 0 ? g->chat != NULL : o->chat != 0;
}

void
generate_seed_rng(PeftRng *rng, uint64_t seed, int index)
{
	peft_rng_seed(rng, generate_seed(seed, index));
}

uint64_t
generate_seed(uint64_t seed, int index)
{
	uint64_t	mixed = seed ^ (uint64_t) index;

	/* index 0 keeps the seed, so a call of one prompt samples as it always did */
	return index == 0 ? seed : peft_splitmix64(&mixed);
}

PeftCode
generate_prompt_ids(const GenerateModel *g, const char *text, size_t len, bool chat,
					const char *system, int32_t **ids, int *n, PeftError *err)
{
	char	   *rendered = NULL;
	char	   *user;
	size_t		count = 0;
	PeftCode	rc;

	*ids = NULL;
	*n = 0;
	if (chat)
	{
		ChatMessage msgs[2];
		int			nmsgs = 0;

		if (g->chat == NULL)
			return peft_fail(err, PEFT_ERR_INVALID,
							 "the model has no chat template this engine renders: pass chat => false "
							 "for a raw prompt");
		if ((user = strndup(text, len)) == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory rendering a prompt");
		if (system != NULL)
		{
			msgs[nmsgs].role = CHAT_ROLE_SYSTEM;
			msgs[nmsgs++].content = system;
		}
		msgs[nmsgs].role = CHAT_ROLE_USER;
		msgs[nmsgs++].content = user;
		rc = chat_template_render(g->chat, msgs, nmsgs, true, &rendered, err);
		free(user);
		if (rc != PEFT_OK)
			return rc;
		text = rendered;
		len = strlen(rendered);
	}
	else if (system != NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "a system message needs a chat prompt (chat => true)");
	/* special tokens in the text are recognised, as transformers' tokenizers do */
	rc = bpe_encode_alloc(g->tokenizer, text, len, true, ids, &count, err);
	free(rendered);
	if (rc != PEFT_OK)
		return rc;
	if (count == 0)
	{
		free(*ids);
		*ids = NULL;
		return peft_fail(err, PEFT_ERR_INVALID, "the prompt has no tokens");
	}
	*n = (int) count;
	return PEFT_OK;
}

/* Append len bytes to a sequence's completion. */
static bool
append_bytes(Sequence *s, const char *b, size_t len)
{
	if (s->nbytes + len + 1 > s->cap)
	{
		size_t		cap = (s->nbytes + len + 1) * 2;
		char	   *grown = realloc(s->bytes, cap);

		if (grown == NULL)
			return false;
		s->bytes = grown;
		s->cap = cap;
	}
	memcpy(s->bytes + s->nbytes, b, len);
	s->nbytes += len;
	s->bytes[s->nbytes] = '\0';
	return true;
}

/*
 * The earliest stop string in the last bytes of s (those that can hold a
 * match ending in what the new token added); cut the completion there.
 */
static bool
cut_at_stop(Sequence *s, size_t added, const PeftGenerateOptions *o)
{
	const char *best = NULL;

	for (int i = 0; i < o->nstop; i++)
	{
		size_t		slen = strlen(o->stop[i]);
		size_t		from = s->nbytes > added + slen ? s->nbytes - added - slen : 0;
		const char *hit = memmem(s->bytes + from, s->nbytes - from, o->stop[i], slen);

		if (hit && (best == NULL || hit < best))
			best = hit;
	}
	if (best == NULL)
		return false;
	s->nbytes = best - s->bytes;
	s->bytes[s->nbytes] = '\0';
	return true;
}

/*
 * Finish a sequence: its text is its bytes, with U+FFFD for a character
 * left incomplete (as transformers decodes).
 */
static bool
finish(Sequence *s, PeftFinishReason why)
{
	char		tail[BPE_FLUSH_MAX_BYTES];
	size_t		n = bpe_decoder_flush(&s->utf8, tail);

	s->done = true;
	s->out->finish = why;
	if (!append_bytes(s, tail, n) && s->bytes == NULL)
		return false;
	s->out->text = s->bytes ? s->bytes : strdup("");
	s->bytes = NULL;
	return s->out->text != NULL;
}

void
sequence_begin(Sequence *s, int32_t *prompt, int prompt_len, PeftGeneration *out)
{
	s->prompt = prompt;
	s->prompt_len = prompt_len;
	s->pos = prompt_len;
	s->out = out;
	out->prompt_tokens = prompt_len;
	bpe_decoder_init(&s->utf8);
}

void
sequence_release(Sequence *s)
{
	free(s->prompt);
	free(s->bytes);
	s->prompt = NULL;
	s->bytes = NULL;
}

/* Release a group's sequences. */
static void
free_sequences(Sequence *seqs, int n)
{
	for (int i = 0; i < n; i++)
		sequence_release(&seqs[i]);
	free(seqs);
}

PeftCode
sequence_take_token(const GenerateModel *g, Sequence *s, int32_t token, int ctx, char *piece,
					const PeftGenerateOptions *o, PeftError *err)
{
	size_t		len;
	PeftCode	rc;

	s->out->tokens++;
	if (token == g->eos || token == g->end_of_turn)
		return finish(s, PEFT_FINISH_STOP) ? PEFT_OK :
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a completion");
	if ((rc = bpe_decoder_feed(g->tokenizer, &s->utf8, token, false, piece,
							   bpe_decode_bound(g->tokenizer), &len, err)) != PEFT_OK)
		return rc;
	if (!append_bytes(s, piece, len))
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a completion");
	if (o->nstop > 0 && cut_at_stop(s, len, o))
		return finish(s, PEFT_FINISH_STOP) ? PEFT_OK :
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a completion");
	if (s->out->tokens >= o->max_new_tokens || s->pos >= ctx)
		return finish(s, PEFT_FINISH_LENGTH) ? PEFT_OK :
			peft_fail(err, PEFT_ERR_NOMEM, "out of memory for a completion");
	s->next = token;
	return PEFT_OK;
}

/* Where a group's prompts come from: texts (tokenised here) or token ids. */
typedef struct PromptSource
{
	const char *const *texts;
	const size_t *lengths;
	const int32_t *const *ids;
	const int  *nids;
	DecoderAdapter *const *adapters;	/* each prompt's (NULL: the model's g->adapter for all) */
} PromptSource;

/* Prompt i's adapter (NULL: the base model). */
static DecoderAdapter *
source_adapter(const GenerateModel *g, const PromptSource *src, int i)
{
	return src->adapters ? src->adapters[i] : g->adapter;
}

/* Prompt i of src as token ids (malloc'd). */
static PeftCode
source_ids(const GenerateModel *g, const PromptSource *src, int i, bool chat, const char *system,
		   int32_t **ids, int *n, PeftError *err)
{
	if (src->texts)
		return generate_prompt_ids(g, src->texts[i], src->lengths[i], chat, system, ids, n, err);
	if (src->nids[i] < 1)
		return peft_fail(err, PEFT_ERR_INVALID, "the prompt has no tokens");
	if ((*ids = malloc(sizeof(int32_t) * src->nids[i])) == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory generating");
	memcpy(*ids, src->ids[i], sizeof(int32_t) * src->nids[i]);
	*n = src->nids[i];
	return PEFT_OK;
}

/*
 * Generate for a group of n prompts (n <= group_size) sharing one decoder;
 * prompt i is prompt first + i of the call (its sampling seed).
 */
static PeftCode
run_group(const GenerateModel *g, const PromptSource *src, int n, int first,
		  const PeftGenerateOptions *o, bool chat, PeftGeneration *out, PeftError *err)
{
	const LlamaConfig *c = &g->model->cfg;
	Sequence   *seqs = calloc(n, sizeof(Sequence));
	Decoder    *dec = NULL;
	int32_t    *ids = NULL,
			   *slot = NULL,
			   *pos = NULL,
			   *last = NULL;
	float	   *logits = NULL;
	void	   *scratch = NULL;
	char	   *piece = NULL;
	int			ctx = 0,
				total = 0;
	/* the positions the adapters' virtual tokens leave (every sequence gets the most) */
	int			most_virtual = 0;
	int			context;
	PeftCode	rc = PEFT_OK;
	SamplerOptions so = {o->temperature, o->top_k, o->top_p};

	if (seqs == NULL)
		return peft_fail(err, PEFT_ERR_NOMEM, "out of memory generating");
	for (int i = 0; i < n; i++)
		if (decoder_adapter_virtual_tokens(source_adapter(g, src, i)) > most_virtual)
			most_virtual = decoder_adapter_virtual_tokens(source_adapter(g, src, i));
	context = c->context_length - most_virtual;
	for (int i = 0; i < n && rc == PEFT_OK; i++)
	{
		int32_t    *prompt = NULL;
		int			prompt_len = 0;

		rc = source_ids(g, src, i, chat, o->system, &prompt, &prompt_len, err);
		sequence_begin(&seqs[i], prompt, prompt_len, &out[i]);
		generate_seed_rng(&seqs[i].rng, o->seed, first + i);
		if (rc == PEFT_OK && seqs[i].prompt_len >= context)
			rc = peft_fail(err, PEFT_ERR_INVALID,
						   "prompt %d has %d tokens, more than the model's context of %d allows%s",
						   i + 1, seqs[i].prompt_len, c->context_length,
						   context < c->context_length ? " after the adapter's virtual tokens" : "");
		if (rc == PEFT_OK)
		{
			int			need = seqs[i].prompt_len + o->max_new_tokens;

			ctx = need > ctx ? need : ctx;
			total += seqs[i].prompt_len;
		}
	}
	if (ctx > context)
		ctx = context;
	if (rc == PEFT_OK)
		rc = src->adapters ? decoder_create_mixed(g->model, src->adapters, true, n, ctx, &dec, err) :
			decoder_create(g->model, g->adapter, n, ctx, &dec, err);
	if (rc == PEFT_OK &&
		((ids = malloc(sizeof(int32_t) * total)) == NULL || (slot = malloc(sizeof(int32_t) * total)) == NULL ||
		 (pos = malloc(sizeof(int32_t) * total)) == NULL || (last = malloc(sizeof(int32_t) * n)) == NULL ||
		 (logits = malloc(sizeof(float) * (size_t) n * c->vocab_size)) == NULL ||
		 (scratch = malloc(sampler_scratch_bytes(c->vocab_size))) == NULL ||
		 (piece = malloc(bpe_decode_bound(g->tokenizer))) == NULL))
		rc = peft_fail(err, PEFT_ERR_NOMEM, "out of memory generating");
	/* prefill: every prompt's tokens in one call; the logits of each prompt's last token */
	if (rc == PEFT_OK)
	{
		int			r = 0;

		for (int i = 0; i < n; i++)
		{
			for (int t = 0; t < seqs[i].prompt_len; t++, r++)
			{
				ids[r] = seqs[i].prompt[t];
				slot[r] = i;
				pos[r] = t;
			}
			last[i] = r - 1;
		}
		rc = decoder_forward(dec, ids, slot, pos, total, last, n, logits, err);
	}
	/* decode: sample each live sequence's token, then one row per live sequence */
	while (rc == PEFT_OK)
	{
		int			live = 0;

		for (int i = 0, k = 0; i < n && rc == PEFT_OK; i++)
		{
			if (seqs[i].done)
				continue;
			rc = sequence_take_token(g, &seqs[i],
									 sampler_next(logits + (size_t) k++ * c->vocab_size, c->vocab_size,
												  &so, &seqs[i].rng, scratch),
									 ctx, piece, o, err);
		}
		if (rc != PEFT_OK)
			break;
		for (int i = 0; i < n; i++)
			if (!seqs[i].done)
			{
				ids[live] = seqs[i].next;
				slot[live] = i;
				pos[live] = seqs[i].pos++;
				last[live] = live;
				live++;
			}
		if (live == 0)
			break;
		if (o->canceled && o->canceled(o->cancel_arg))
		{
			rc = peft_fail(err, PEFT_ERR_CANCELED, "generation canceled");
			break;
		}
		rc = decoder_forward(dec, ids, slot, pos, live, last, live, logits, err);
	}
	decoder_free(dec);
	free(ids);
	free(slot);
	free(pos);
	free(last);
	free(logits);
	free(scratch);
	free(piece);
	free_sequences(seqs, n);
	return rc;
}

/* Prompts per group: GENERATE_GROUP, fewer when their caches would pass GENERATE_CACHE_BUDGET. */
static int
group_size(const LlamaConfig *c, int max_new_tokens)
{
	size_t		per_slot = (size_t) c->num_layers * 2 * c->num_kv_heads * c->head_dim * sizeof(float) *
		((size_t) max_new_tokens + GENERATE_PROMPT_ESTIMATE);
	size_t		fit = GENERATE_CACHE_BUDGET / (per_slot ? per_slot : 1);

	return fit < 1 ? 1 : fit > GENERATE_GROUP ? GENERATE_GROUP : (int) fit;
}

/* Run every group of the prompts of src. */
static PeftCode
run_all(const GenerateModel *g, const PromptSource *src, int n, const PeftGenerateOptions *o,
		PeftGeneration *out, PeftError *err)
{
	bool		chat;
	int			group;
	PeftCode	rc;

	memset(out, 0, sizeof(PeftGeneration) * (n > 0 ? n : 0));
	if (n < 0)
		return peft_fail(err, PEFT_ERR_INVALID, "%d prompts", n);
	if ((rc = generate_check_options(o, err)) != PEFT_OK)
		return rc;
	chat = generate_use_chat(g, o);
	group = group_size(&g->model->cfg, o->max_new_tokens);
	for (int start = 0; start < n && rc == PEFT_OK; start += group)
	{
		int			count = n - start < group ? n - start : group;
		PromptSource part = {
			.texts = src->texts ? src->texts + start : NULL,
			.lengths = src->lengths ? src->lengths + start : NULL,
			.ids = src->ids ? src->ids + start : NULL,
			.nids = src->nids ? src->nids + start : NULL,
			.adapters = src->adapters ? src->adapters + start : NULL
		};

		rc = run_group(g, &part, count, start, o, chat, out + start, err);
	}
	if (rc != PEFT_OK)
		for (int i = 0; i < n; i++)
		{
			free(out[i].text);
			out[i].text = NULL;
		}
	return rc;
}

PeftCode
generate_run(const GenerateModel *g, const char *const *prompts, const size_t *lengths, int n,
			 const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	PromptSource src = {.texts = prompts, .lengths = lengths};

	return run_all(g, &src, n, o, out, err);
}

PeftCode
generate_run_mixed(const GenerateModel *g, DecoderAdapter *const *adapters, const char *const *prompts,
				   const size_t *lengths, int n, const PeftGenerateOptions *o, PeftGeneration *out,
				   PeftError *err)
{
	PromptSource src = {.texts = prompts, .lengths = lengths, .adapters = adapters};

	return run_all(g, &src, n, o, out, err);
}

PeftCode
generate_run_ids(const GenerateModel *g, const int32_t *const *ids, const int *nids, int n,
				 const PeftGenerateOptions *o, PeftGeneration *out, PeftError *err)
{
	PromptSource src = {.ids = ids, .nids = nids};

	return run_all(g, &src, n, o, out, err);
}
