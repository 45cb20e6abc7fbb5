/*
 * serve_generate.c - the serving worker's decoding: every connection's
 * peft_generate prompts in one continuously batched stream (the engine's
 * stream_*).  A request's prompts join the running batch at the next
 * decoding step and leave it as they finish, so a short completion never
 * waits for a long one and a new caller never waits for a batch to drain.
 *
 * Each request is checked as peft_generate checks it here (its options,
 * its adapters over a decoder and over the worker's model) before any of
 * its prompts is queued; an error answers only that request.  The adapters
 * a request uses, and the model, are held in the worker's cache while its
 * prompts decode.  A prompt the stream cannot take (a merged adapter, or
 * more positions than a slot holds) is decoded alone at once, with the
 * seed it would have had in the call.  The stream is freed when it runs
 * empty, so a re-registered model is picked up by the next request.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "generation.h"
#include "inference.h"
#include "peft.h"
#include "serve.h"

/* Bits of a stream tag that hold the prompt's index in its request (peft_generate takes at most 4096). */
#define TAG_INDEX_BITS 16

/* A request whose prompts are decoding. */
typedef struct GenRequest
{
	uint64		id;
	void	   *owner;
	ServeAnswerFn answer;
	MemoryContext cxt;			/* this struct and its results */
	int			n;
	int			remaining;		/* prompts still in the stream */
	char	  **completions;
	int		   *tokens;
	int		   *finish;
	CachedAdapter **held;		/* adapters held while it decodes (n entries, NULLs allowed) */
	bool		failed;
	int			sqlerrcode;
	char	   *message;
	struct GenRequest *next;
} GenRequest;

static PeftGenStream *stream = NULL;
static CachedModel *stream_model = NULL;	/* held while the stream exists */
static GenRequest *requests = NULL;
static uint64 next_id = 1;

/* The stream tag of prompt index of request r. */
static uint64_t
TagOf(const GenRequest *r, int index)
{
	return (r->id << TAG_INDEX_BITS) | (uint64_t) index;
}

/* Release what r holds and free it (it is no longer listed). */
static void
FreeRequest(GenRequest *r)
{
	for (int i = 0; i < r->n; i++)
		if (r->held[i])
			AdapterCacheHold(r->held[i], false);
	MemoryContextDelete(r->cxt);
}

/* Take r off the list. */
static void
Unlist(GenRequest *r)
{
	for (GenRequest **link = &requests; *link; link = &(*link)->next)
		if (*link == r)
		{
			*link = r->next;
			return;
		}
}

/* Drop r's prompts still in the stream. */
static void
CancelPrompts(GenRequest *r)
{
	for (int i = 0; i < r->n && stream; i++)
		(void) PeftEngine()->stream_cancel(stream, TagOf(r, i));
	r->remaining = 0;
}

/* Answer r (its completions, or its error), then free it. */
static void
Finish(GenRequest *r)
{
	ServeAnswer ans = {0};

	ans.failed = r->failed;
	ans.sqlerrcode = r->sqlerrcode;
	ans.message = r->message;
	ans.n = r->n;
	ans.completions = r->completions;
	ans.tokens = r->tokens;
	ans.finish = r->finish;
	r->answer(r->owner, &ans);
	FreeRequest(r);
}

/* Record a failure of r (the first one counts) and stop its other prompts. */
static void
Fail(GenRequest *r, int sqlerrcode, const char *message)
{
	if (!r->failed)
	{
		r->failed = true;
		r->sqlerrcode = sqlerrcode;
		r->message = MemoryContextStrdup(r->cxt, message);
	}
	CancelPrompts(r);
}

/* Free the stream once it is empty, letting the model go. */
static void
ReleaseIdleStream(void)
{
	if (stream == NULL || PeftEngine()->stream_pending(stream) > 0)
		return;
	PeftEngine()->stream_free(stream);
	stream = NULL;
	ModelCacheHold(stream_model, false);
	stream_model = NULL;
}

/* The stream over m, created when there is none. */
static PeftGenStream *
StreamFor(CachedModel *m)
{
	PeftError	err = {0};

	if (stream != NULL && stream_model != m)
		ReleaseIdleStream();	/* a model loaded again: only an empty stream can follow it */
	if (stream != NULL && stream_model != m)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("model \"%s\" changed while the serving worker was decoding with it", m->name),
				 errhint("Run the statement again.")));
	if (stream == NULL)
	{
		if (PeftEngine()->stream_create(m->handle, Max(peft_serve_max_batch, 1), 0, &stream, &err) != PEFT_OK)
			PeftRaiseEngineError(&err);
		stream_model = m;
		ModelCacheHold(m, true);
	}
	return stream;
}

/* Keep completion g as prompt i's answer of r (its text copied; the engine's stays the caller's to free). */
static void
TakeCompletion(GenRequest *r, int i, const PeftGeneration *g)
{
	r->completions[i] = MemoryContextStrdup(r->cxt, g->text ? g->text : "");
	r->tokens[i] = g->tokens;
	r->finish[i] = g->finish;
}

/* Whether the worker was told to end (polled by a decoding run alone). */
static bool
WorkerStopping(void *arg)
{
	return ProcDiePending;
}

/* Decode prompt i of r alone now, with the seed it has as prompt i of its call. */
static void
DecodeAlone(GenRequest *r, int i, CachedModel *m, PeftAdapterHandle *adapter, const char *prompt,
			const PeftGenerateOptions *o)
{
	PeftGenerateOptions own = *o;
	PeftGeneration g = {0};
	size_t		len = strlen(prompt);
	PeftError	err = {0};
	PeftCode	rc;

	own.seed = PeftEngine()->generate_seed(o->seed, i);
	rc = PeftEngine()->generate_mixed(m->handle, &adapter, &prompt, &len, 1, &own, &g, &err);
	if (rc != PEFT_OK)
		PeftRaiseEngineError(&err);
	TakeCompletion(r, i, &g);
	PeftEngine()->free_buffer(g.text);
}

/*
 * Check r's request as peft_generate does and queue its prompts (the ones
 * the stream cannot take are decoded now).  ERROR on the first problem;
 * the caller then drops what was queued.  In a transaction.
 */
static void
QueuePrompts(GenRequest *r, const char *model, const ServeRequest *req)
{
	Jsonb	   *options = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(req->options)));
	PeftAdapterHandle **handles = palloc0(sizeof(PeftAdapterHandle *) * (req->n + 1));
	PeftGenerateOptions o;
	CachedModel *m;
	PeftError	err = {0};

	ParseGenerateOptions(options, &o);
	/* no statement to cancel here: a run alone stops when the worker is told to end (the stream ignores it) */
	o.canceled = WorkerStopping;
	SPI_connect();
	AdapterCacheBeginCall();
	m = GetModel(model);
	for (int i = 0; i < req->n; i++)
		if (req->adapters[i] != NULL)
		{
			r->held[i] = GenerationAdapter(model, req->adapters[i], req->versions[i]);
			AdapterCacheHold(r->held[i], true);
			handles[i] = r->held[i]->handle;
		}
	SPI_finish();
	if (!m->info.decoder)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" is an encoder: peft_generate needs a decoder", model)));
	(void) StreamFor(m);
	for (int i = 0; i < req->n; i++)
	{
		bool		alone = false;

		if (PeftEngine()->stream_add(stream, handles[i], req->texts[i], strlen(req->texts[i]), &o, i,
									 TagOf(r, i), &alone, &err) != PEFT_OK)
			PeftRaiseEngineError(&err);
		if (alone)
			DecodeAlone(r, i, m, handles[i], req->texts[i], &o);
		else
			r->remaining++;
	}
}

/* See serve.h. */
void
ServeGenerateBegin(const char *model, void *owner, const ServeRequest *req, ServeAnswerFn answer)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "peft serve generation",
											  ALLOCSET_DEFAULT_SIZES);
	GenRequest *r = MemoryContextAllocZero(cxt, sizeof(GenRequest));

	r->id = next_id++;
	r->owner = owner;
	r->answer = answer;
	r->cxt = cxt;
	r->n = req->n;
	r->completions = MemoryContextAllocZero(cxt, sizeof(char *) * (req->n + 1));
	r->tokens = MemoryContextAllocZero(cxt, sizeof(int) * (req->n + 1));
	r->finish = MemoryContextAllocZero(cxt, sizeof(int) * (req->n + 1));
	r->held = MemoryContextAllocZero(cxt, sizeof(CachedAdapter *) * (req->n + 1));
	r->next = requests;
	requests = r;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		QueuePrompts(r, model, req);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		Fail(r, edata->sqlerrcode, edata->message);
		ereport(LOG,
				(errmsg("peft serving worker: a generation request failed: %s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(TopMemoryContext);
	if (r->remaining == 0)
	{
		Unlist(r);
		Finish(r);
	}
	ReleaseIdleStream();
}

/* See serve.h. */
bool
ServeGenerateBusy(void)
{
	return stream != NULL && PeftEngine()->stream_pending(stream) > 0;
}

/* The listed request of a stream tag (NULL: withdrawn meanwhile). */
static GenRequest *
RequestOfTag(uint64_t tag)
{
	for (GenRequest *r = requests; r; r = r->next)
		if (r->id == tag >> TAG_INDEX_BITS)
			return r;
	return NULL;
}

/* See serve.h. */
void
ServeGenerateStep(void)
{
	PeftStreamResult *results = NULL;
	int			nresults = 0;
	PeftError	err = {0};

	if (!ServeGenerateBusy())
		return;
	if (PeftEngine()->stream_step(stream, &results, &nresults, &err) != PEFT_OK)
	{
		/* the step as a whole failed: the stream dropped every sequence */
		ereport(LOG, (errmsg("peft serving worker: a decoding step failed: %s", err.message)));
		for (GenRequest *r = requests; r; r = r->next)
			Fail(r, PeftEngineErrcode(err.code), err.message[0] ? err.message : "peft engine error");
	}
	for (int k = 0; k < nresults; k++)
	{
		PeftStreamResult *res = &results[k];
		GenRequest *r = RequestOfTag(res->tag);
		int			i = (int) (res->tag & ((1 << TAG_INDEX_BITS) - 1));

		if (r != NULL && i < r->n && !r->failed)
		{
			if (res->code != PEFT_OK)
				Fail(r, PeftEngineErrcode(res->code), res->message);
			else
			{
				TakeCompletion(r, i, &res->gen);
				r->remaining--;
			}
		}
		PeftEngine()->free_buffer(res->gen.text);
	}
	PeftEngine()->free_buffer(results);
	/* answer the requests that are complete (or failed) */
	for (GenRequest **link = &requests; *link;)
	{
		GenRequest *r = *link;

		if (r->remaining > 0 && !r->failed)
		{
			link = &r->next;
			continue;
		}
		*link = r->next;
		Finish(r);
	}
	ReleaseIdleStream();
}

/* See serve.h. */
void
ServeGenerateWithdraw(void *owner)
{
	for (GenRequest **link = &requests; *link;)
	{
		GenRequest *r = *link;

		if (r->owner != owner)
		{
			link = &r->next;
			continue;
		}
		*link = r->next;
		CancelPrompts(r);
		FreeRequest(r);
	}
	ReleaseIdleStream();
}
