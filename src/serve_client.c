/*
 * serve_client.c - the caller's side of the serving worker: a channel per
 * worker, kept for the session, and one request/answer exchange per chunk
 * of rows.
 *
 * The channel's segment stays mapped across transactions (dsm_pin_mapping)
 * so a session announces itself to a worker once.  A canceled wait
 * withdraws the request by detaching the channel: the worker then finds
 * the answer ring detached and drops it; the next call opens a new one.  A
 * channel whose worker ended between calls is replaced before anything is
 * sent; a worker that ends while a caller waits is an ERROR for that call.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/memutils.h"

#include "inference.h"
#include "peft.h"
#include "serve.h"

/* Channels one session keeps open (one per model and device it predicts with). */
#define MAX_CHANNELS 4
/* How often a waiting caller looks at the registry even without a wake-up. */
#define POLL_MS 1000

typedef struct Channel
{
	bool		open;
	char		model[NAMEDATALEN];
	int			device;
	int			slot;
	uint64		generation;
	uint32		id;
	dsm_segment *seg;
	shm_mq_handle *request;
	shm_mq_handle *answer;
	uint64		last_used;
} Channel;

static Channel channels[MAX_CHANNELS];
static uint64 channel_clock = 0;

/* Detach a channel (the worker sees its rings detached) and take back its inbox entry. */
static void
CloseChannel(Channel *ch)
{
	ServeRegistry *reg = ServeRegistryGet();
	ServeSlot  *s = &reg->slots[ch->slot];

	if (!ch->open)
		return;
	LWLockAcquire(reg->lock, LW_EXCLUSIVE);
	if (s->generation == ch->generation)
		for (int i = 0; i < s->inbox_len; i++)
			if (s->inbox[i].channel_id == ch->id)
				s->inbox[i].handle = DSM_HANDLE_INVALID;
	LWLockRelease(reg->lock);
	ch->open = false;
	/* the detach callbacks shm_mq_attach registered mark both rings detached */
	dsm_detach(ch->seg);
	pfree(ch->request);
	pfree(ch->answer);
	ch->seg = NULL;
}

/* Create a channel to the worker of (model, device), starting the worker if needed. */
static void
OpenChannel(Channel *ch, const char *model, int device)
{
	ServeRegistry *reg = ServeRegistryGet();
	bool		started_here;
	uint64		generation;
	int			slot = ServeFindWorker(model, device, &generation, &started_here);
	dsm_segment *seg = dsm_create(SERVE_CHANNEL_BYTES, 0);
	ServeChannelHeader *head = dsm_segment_address(seg);
	MemoryContext old;
	ServeSlot  *s = &reg->slots[slot];
	bool		announced = false;
	shm_mq	   *request;
	shm_mq	   *answer;

	dsm_pin_mapping(seg);		/* the session keeps it, not the transaction */
	memset(head, 0, sizeof(*head));
	head->magic = SERVE_MAGIC;
	head->database = MyDatabaseId;
	strlcpy(head->model, model, sizeof(head->model));
	head->device = device;
	head->caller_pid = MyProcPid;
	head->request_offset = MAXALIGN(sizeof(ServeChannelHeader));
	head->answer_offset = head->request_offset + SERVE_RING_BYTES;
	request = shm_mq_create((char *) head + head->request_offset, SERVE_RING_BYTES);
	answer = shm_mq_create((char *) head + head->answer_offset, SERVE_RING_BYTES);
	shm_mq_set_sender(request, MyProc);
	shm_mq_set_receiver(answer, MyProc);
	old = MemoryContextSwitchTo(TopMemoryContext);
	ch->request = shm_mq_attach(request, seg, NULL);
	ch->answer = shm_mq_attach(answer, seg, NULL);
	MemoryContextSwitchTo(old);
	ch->seg = seg;
	ch->slot = slot;
	ch->generation = generation;
	strlcpy(ch->model, model, sizeof(ch->model));
	ch->device = device;

	/* announce it in the worker's inbox, and wake the worker if it runs */
	LWLockAcquire(reg->lock, LW_EXCLUSIVE);
	head->channel_id = ch->id = ++reg->next_channel_id;
	if (s->inbox_len >= MaxBackends)
	{
		/* full of withdrawn entries (a busy worker, callers canceling): squeeze them out */
		int			kept = 0;

		for (int i = 0; i < s->inbox_len; i++)
			if (s->inbox[i].handle != DSM_HANDLE_INVALID)
				s->inbox[kept++] = s->inbox[i];
		s->inbox_len = kept;
	}
	if (s->generation == generation && s->state != SERVE_SLOT_FREE && s->inbox_len < MaxBackends)
	{
		s->inbox[s->inbox_len++] = (ServeInboxEntry) {dsm_segment_handle(seg), MyProc->pgprocno, ch->id};
		if (s->state == SERVE_SLOT_RUNNING)
			SetLatch(&ProcGlobal->allProcs[s->procno].procLatch);
		announced = true;
	}
	LWLockRelease(reg->lock);
	ch->open = true;
	if (!announced)
	{
		CloseChannel(ch);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the serving worker of model \"%s\" exited before it could be reached", model),
				 errhint("Call again: a new serving worker starts; see the server log for why this one ended.")));
	}
}

/* The open channel of (model, device), opening one (closing the least used) when needed. */
static Channel *
GetChannel(const char *model, int device)
{
	Channel    *ch = NULL;

	for (int i = 0; i < MAX_CHANNELS; i++)
	{
		Channel    *c = &channels[i];

		if (c->open && c->device == device && strcmp(c->model, model) == 0)
		{
			/* its worker ended between calls: nothing was sent, open a new channel */
			if (!ServeWorkerAlive(c->slot, c->generation))
				CloseChannel(c);
			else
			{
				c->last_used = ++channel_clock;
				return c;
			}
		}
	}
	for (int i = 0; i < MAX_CHANNELS; i++)
		if (ch == NULL || !channels[i].open ||
			(ch->open && channels[i].last_used < ch->last_used))
			ch = &channels[i];
	CloseChannel(ch);
	OpenChannel(ch, model, device);
	ch->last_used = ++channel_clock;
	return ch;
}

/* ERROR for a worker that ended while this caller waited for it. */
static void
WorkerGone(Channel *ch)
{
	char	   *model = pstrdup(ch->model);

	CloseChannel(ch);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("the serving worker of model \"%s\" exited before answering", model),
			 errhint("Call again: a new serving worker starts; see the server log for why this one ended.")));
}

/* Wait for a wake-up (or POLL_MS), honouring cancels; ERROR when the worker is gone. */
static void
WaitForWorker(Channel *ch)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, POLL_MS, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (!ServeWorkerAlive(ch->slot, ch->generation))
		WorkerGone(ch);
}

/* Send one message; false when the worker had detached before any of it was taken. */
static bool
SendRequest(Channel *ch, StringInfo msg)
{
	for (;;)
	{
		shm_mq_result res = shm_mq_send(ch->request, msg->len, msg->data, true, true);

		if (res == SHM_MQ_SUCCESS)
			return true;
		if (res == SHM_MQ_DETACHED)
			return false;
		WaitForWorker(ch);
	}
}

/* Receive the answer to the request (of kind) just sent, decoded. */
static void
ReceiveAnswer(Channel *ch, ServeKind kind, ServeAnswer *ans)
{
	for (;;)
	{
		Size		len;
		void	   *data;
		shm_mq_result res = shm_mq_receive(ch->answer, &len, &data, true);

		if (res == SHM_MQ_SUCCESS)
		{
			if (!ServeDecodeAnswer(data, len, kind, ans))
				elog(ERROR, "malformed answer from the serving worker");
			return;
		}
		if (res == SHM_MQ_DETACHED)
			WorkerGone(ch);
		WaitForWorker(ch);
	}
}

/*
 * Exchange one request for its answer (an ERROR when it failed); a
 * channel found detached before the request went out is replaced once
 * (its worker ended between calls).
 */
static void
Exchange(const char *model, const ServeRequest *req, ServeAnswer *ans)
{
	StringInfoData msg;
	Channel    *volatile ch = NULL;

	initStringInfo(&msg);
	ServeEncodeRequest(&msg, req);
	PG_TRY();
	{
		ch = GetChannel(model, peft_device);
		if (!SendRequest(ch, &msg))
		{
			CloseChannel(ch);
			ch = GetChannel(model, peft_device);
			if (!SendRequest(ch, &msg))
				WorkerGone(ch);
		}
		ReceiveAnswer(ch, req->kind, ans);
	}
	PG_CATCH();
	{
		/* withdraw: the worker drops the answer of a detached channel */
		if (ch != NULL)
			CloseChannel(ch);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pfree(msg.data);
	if (ans->failed)
		ereport(ERROR,
				(errcode(ans->sqlerrcode ? ans->sqlerrcode : ERRCODE_INTERNAL_ERROR),
				 errmsg("%s", ans->message ? ans->message : "the serving worker failed")));
	if (ans->n != req->n)
		elog(ERROR, "the serving worker answered %d rows for %d", ans->n, req->n);
}

/*
 * Predict texts[0..n) with version of adapter (looked up by the caller, so
 * its rights were checked) through the serving worker of model: labels[i]
 * (NULL for regression or a NULL text; allocated with SPI_palloc, so they
 * outlive SPI_finish) and scores[i].  Inside SPI.  Rows go in chunks of
 * peft.serve_max_batch, so one large array does not hold a batch alone.
 */
void
ServePredict(const char *model, const char *adapter, int version, const char *row_version,
			 char **texts, int n, char **labels, double *scores)
{
	int			chunk = Max(peft_serve_max_batch, 1);

	ServeRequirePreload();
	for (int i = 0; i < n; i++)
		labels[i] = NULL;
	for (int first = 0; first < n; first += chunk)
	{
		ServeRequest req = {.kind = SERVE_PREDICT, .adapter = (char *) adapter, .version = version,
		.row_version = (char *) row_version, .n = Min(chunk, n - first), .texts = texts + first};
		ServeAnswer ans;
		bool		any = false;

		for (int i = 0; i < req.n; i++)
			any |= texts[first + i] != NULL;
		if (!any)
			continue;
		Exchange(model, &req, &ans);
		for (int i = 0; i < req.n; i++)
		{
			labels[first + i] = ans.labels[i] ? strcpy(SPI_palloc(strlen(ans.labels[i]) + 1), ans.labels[i]) : NULL;
			scores[first + i] = ans.scores[i];
		}
	}
}

/*
 * Embed texts[0..n) (none NULL), text i through version versions[i] of
 * adapters[i] (NULL: the model alone), in the serving worker of model
 * (the caller looked the adapters up): n x *dim floats, palloc'd.
 */
float *
ServeEmbed(const char *model, char **adapters, int *versions, char **texts, int n, int *dim)
{
	ServeRequest req = {.kind = SERVE_EMBED, .n = n, .texts = texts, .adapters = adapters,
	.versions = versions};
	ServeAnswer ans;

	ServeRequirePreload();
	Exchange(model, &req, &ans);
	*dim = ans.dim;
	return ans.vectors;
}

/*
 * Completions of prompts[0..n) (none NULL), prompt i through version
 * versions[i] of adapters[i] (NULL: the base model) and prompt i of the
 * call (its sampling seed), by the serving worker of model with options
 * (peft_generate's jsonb as text, parsed there): palloc'd.
 */
PeftGeneration *
ServeGenerate(const char *model, const char *options, char **adapters, int *versions, char **prompts,
			  int n)
{
	ServeRequest req = {.kind = SERVE_GENERATE, .options = (char *) options, .n = n, .texts = prompts,
	.adapters = adapters, .versions = versions};
	ServeAnswer ans;
	PeftGeneration *out = palloc0(sizeof(PeftGeneration) * (n + 1));

	ServeRequirePreload();
	Exchange(model, &req, &ans);
	for (int i = 0; i < n; i++)
	{
		out[i].text = ans.completions[i];
		out[i].tokens = ans.tokens[i];
		out[i].finish = ans.finish[i] == PEFT_FINISH_LENGTH ? PEFT_FINISH_LENGTH : PEFT_FINISH_STOP;
	}
	return out;
}

/*
 * The rows a call sends: texts[i] not NULL, each through the active
 * version of names[i] (NULL: the model alone).  Every name is looked up
 * here first, as the caller (its rights decide), once, and checked with
 * check(adapter, its model, the model so far); *model (NULL: the first
 * adapter's) receives the model.  Opens and closes its own SPI.
 */
void
ServeCollectRows(char **names, char **texts, int n, ServeModelCheck check, char **model, ServeRows *rows)
{
	int		   *first = palloc(sizeof(int) * (n + 1));
	int		   *versions = palloc0(sizeof(int) * (n + 1));
	MemoryContext caller = CurrentMemoryContext;

	ServeRequirePreload();
	GroupByName(names, n, first);
	SPI_connect();
	for (int i = 0; i < n; i++)
	{
		AdapterRow	row;

		if (names[i] == NULL || first[i] != i)
			continue;
		LookupAdapterVersion(names[i], 0, &row);
		check(names[i], row.model_name, *model);
		if (*model == NULL)
			*model = MemoryContextStrdup(caller, row.model_name);
		versions[i] = row.version;
	}
	SPI_finish();
	rows->names = palloc(sizeof(char *) * (n + 1));
	rows->versions = palloc(sizeof(int) * (n + 1));
	rows->texts = palloc(sizeof(char *) * (n + 1));
	rows->count = 0;
	for (int i = 0; i < n; i++)
		if (texts[i] != NULL)
		{
			rows->names[rows->count] = names[i];
			rows->versions[rows->count] = names[i] ? versions[first[i]] : 0;
			rows->texts[rows->count++] = texts[i];
		}
	pfree(first);
	pfree(versions);
}
