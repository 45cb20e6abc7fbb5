/*
 * serve_worker.c - the serving worker: one process per (database, model,
 * device) that holds the model and the adapter cache once and computes
 * peft_predict, peft_embed and peft_generate for every connection.
 *
 * It connects as the bootstrap superuser, so it can read every adapter:
 * callers look their adapter up as themselves before anything is queued,
 * which is where row-level security decides.  Its loop: attach channels
 * announced in its inbox, take complete requests from them, and once
 * peft.serve_max_batch rows wait or the oldest has waited
 * peft.serve_max_wait, compute a batch in one transaction (rows of all its
 * adapters in shared forward passes) and answer each caller.  Generation
 * requests go to the decoding stream instead (serve_generate.c), which
 * takes one step per turn of the loop while it has prompts, so
 * predictions and new prompts are taken between its steps.  An error of
 * one adapter (a corrupt row, an engine error) is that adapter's callers'
 * ERROR; the others are answered.  SIGTERM ends it
 * between engine calls (callers waiting get an ERROR); so does DROP
 * EXTENSION peft, noticed within a second.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "inference.h"
#include "peft.h"
#include "serve.h"

/* How often an idle worker checks that the extension still exists. */
#define IDLE_CHECK_MS 1000

PGDLLEXPORT void peft_serve_worker_main(Datum arg);

/* A caller's channel, attached. */
typedef struct WorkerChannel
{
	dsm_segment *seg;
	shm_mq_handle *request;
	shm_mq_handle *answer;
	bool		busy;			/* a request of it waits or is being answered */
	bool		generating;		/* its request is decoding (serve_generate.c) */
	bool		dropped;
	StringInfoData unsent;		/* an answer the ring had no room for yet */
	bool		sending;
	MemoryContext own;			/* the channel's memory: this struct, its queue handles */
	MemoryContext context;		/* the current request's memory (a child of own) */
	struct WorkerChannel *next;
} WorkerChannel;

/* A request waiting for a batch, and its answer. */
typedef struct Job
{
	WorkerChannel *ch;
	ServeRequest req;
	ServeAnswer ans;
	TimestampTz arrived;
	CachedAdapter *adapter;		/* looked up for this batch */
	bool		done;
	struct Job *next;
} Job;

static ServeWorkerArgs args;
static char worker_model[NAMEDATALEN];	/* the model this worker serves */
static WorkerChannel *channels = NULL;
static Job *queue_head = NULL;
static Job *queue_tail = NULL;
static int	queued_rows = 0;
static int	queued_jobs = 0;

/* Free the slot and wake whoever waits in its inbox (before_shmem_exit). */
static void
ServeWorkerExit(int code, Datum arg)
{
	ServeRegistry *reg = ServeRegistryGet();
	ServeSlot  *s = &reg->slots[args.slot];

	LWLockAcquire(reg->lock, LW_EXCLUSIVE);
	if (s->generation == args.generation)
		ServeFreeSlotLocked(s);
	LWLockRelease(reg->lock);
}

/* Take the slot the starter reserved; false when it was given to another. */
static bool
ClaimSlot(void)
{
	ServeRegistry *reg = ServeRegistryGet();
	ServeSlot  *s = &reg->slots[args.slot];
	bool		ok;

	LWLockAcquire(reg->lock, LW_EXCLUSIVE);
	ok = s->generation == args.generation && s->state == SERVE_SLOT_STARTING;
	if (ok)
	{
		s->state = SERVE_SLOT_RUNNING;
		s->pid = MyProcPid;
		s->procno = MyProc->pgprocno;
	}
	LWLockRelease(reg->lock);
	return ok;
}

/* Drop a channel: its caller left or was canceled. */
static void
DropChannel(WorkerChannel *ch)
{
	if (ch->dropped)
		return;
	ch->dropped = true;
	dsm_detach(ch->seg);
}

/* Attach the channels announced in the inbox since the last look. */
static void
AcceptChannels(void)
{
	ServeRegistry *reg = ServeRegistryGet();
	ServeSlot  *s = &reg->slots[args.slot];
	ServeInboxEntry *entries = palloc(sizeof(ServeInboxEntry) * MaxBackends);
	int			n;

	LWLockAcquire(reg->lock, LW_EXCLUSIVE);
	n = s->inbox_len;
	memcpy(entries, s->inbox, sizeof(ServeInboxEntry) * n);
	s->inbox_len = 0;
	LWLockRelease(reg->lock);

	for (int i = 0; i < n; i++)
	{
		dsm_segment *seg;
		ServeChannelHeader *head;
		WorkerChannel *ch;
		shm_mq	   *request;
		shm_mq	   *answer;

		if (entries[i].handle == DSM_HANDLE_INVALID)
			continue;			/* withdrawn */
		seg = dsm_attach(entries[i].handle);
		if (seg == NULL)
			continue;			/* its caller already left */
		dsm_pin_mapping(seg);
		head = dsm_segment_address(seg);
		if (dsm_segment_map_length(seg) < SERVE_CHANNEL_BYTES || head->magic != SERVE_MAGIC ||
			head->channel_id != entries[i].channel_id || head->database != MyDatabaseId)
		{
			dsm_detach(seg);	/* a reused handle, not the channel announced */
			continue;
		}
		request = (shm_mq *) ((char *) head + head->request_offset);
		answer = (shm_mq *) ((char *) head + head->answer_offset);
		shm_mq_set_receiver(request, MyProc);
		shm_mq_set_sender(answer, MyProc);
		{
			MemoryContext own = AllocSetContextCreate(TopMemoryContext, "peft serve channel",
													  ALLOCSET_SMALL_SIZES);
			MemoryContext old = MemoryContextSwitchTo(own);

			ch = palloc0(sizeof(WorkerChannel));
			ch->own = own;
			ch->seg = seg;
			ch->request = shm_mq_attach(request, seg, NULL);
			ch->answer = shm_mq_attach(answer, seg, NULL);
			ch->context = AllocSetContextCreate(own, "peft serve request", ALLOCSET_DEFAULT_SIZES);
			MemoryContextSwitchTo(old);
		}
		ch->next = channels;
		channels = ch;
	}
	pfree(entries);
}

/* Send a channel's pending answer; true once it is all out (or the caller is gone). */
static bool
FlushAnswer(WorkerChannel *ch)
{
	shm_mq_result res = shm_mq_send(ch->answer, ch->unsent.len, ch->unsent.data, true, true);

	if (res == SHM_MQ_WOULD_BLOCK)
		return false;
	if (res == SHM_MQ_DETACHED)
		DropChannel(ch);		/* canceled: skip its answer */
	ch->sending = false;
	ch->busy = false;
	MemoryContextReset(ch->context);
	return true;
}

/* Send ans, the answer to the channel's request of kind (the rest later if the ring is full). */
static void
SendAnswer(WorkerChannel *ch, ServeKind kind, const ServeAnswer *ans)
{
	MemoryContext o = MemoryContextSwitchTo(ch->context);

	initStringInfo(&ch->unsent);
	ServeEncodeAnswer(&ch->unsent, kind, ans);
	MemoryContextSwitchTo(o);
	ch->sending = true;
	(void) FlushAnswer(ch);
}

/* serve_generate.c answers a channel's generation request. */
static void
AnswerGeneration(void *owner, const ServeAnswer *ans)
{
	WorkerChannel *ch = owner;

	ch->generating = false;
	SendAnswer(ch, SERVE_GENERATE, ans);
}

/* Queue a received request: a job for the next batch, or prompts for the decoding stream. */
static void
TakeRequest(WorkerChannel *ch, void *data, Size len)
{
	MemoryContext old = MemoryContextSwitchTo(ch->context);
	Job		   *job = palloc0(sizeof(Job));

	job->ch = ch;
	job->arrived = GetCurrentTimestamp();
	ch->busy = true;
	if (!ServeDecodeRequest(data, len, &job->req))
	{
		job->req.kind = SERVE_PREDICT;	/* a failed answer reads alike for every kind */
		job->req.n = 0;
		job->ans.failed = true;
		job->ans.sqlerrcode = ERRCODE_PROTOCOL_VIOLATION;
		job->ans.message = "malformed request to the serving worker";
		job->done = true;
	}
	MemoryContextSwitchTo(old);
	if (job->req.kind == SERVE_GENERATE && !job->done)
	{
		ch->generating = true;
		ServeGenerateBegin(worker_model, ch, &job->req, AnswerGeneration);
		return;
	}
	if (queue_tail)
		queue_tail->next = job;
	else
		queue_head = job;
	queue_tail = job;
	queued_rows += job->req.n;
	queued_jobs++;
}

/*
 * Whether a channel whose request is decoding was left by its caller (a
 * cancel detaches it): then its prompts leave the stream.
 */
static void
CheckWithdrawn(WorkerChannel *ch)
{
	Size		len;
	void	   *data;

	if (shm_mq_receive(ch->request, &len, &data, true) != SHM_MQ_DETACHED)
		return;
	ServeGenerateWithdraw(ch);
	ch->generating = false;
	ch->busy = false;
	MemoryContextReset(ch->context);
	DropChannel(ch);
}

/* Take complete requests from idle channels; retry answers that did not fit. */
static void
PollChannels(void)
{
	WorkerChannel **link = &channels;

	while (*link)
	{
		WorkerChannel *ch = *link;

		if (!ch->dropped && ch->sending)
			(void) FlushAnswer(ch);
		if (!ch->dropped && ch->generating)
			CheckWithdrawn(ch);
		if (!ch->dropped && !ch->busy)
		{
			Size		len;
			void	   *data;
			shm_mq_result res = shm_mq_receive(ch->request, &len, &data, true);

			if (res == SHM_MQ_DETACHED)
				DropChannel(ch);
			else if (res == SHM_MQ_SUCCESS)
				TakeRequest(ch, data, len);
		}
		if (ch->dropped && !ch->busy)
		{
			*link = ch->next;
			MemoryContextDelete(ch->own);	/* the struct, its handles, its requests */
			continue;
		}
		link = &ch->next;
	}
}

/*
 * The one call that computes: row i of texts[0..n) through adapters[i]
 * (adapters of the worker's model), in shared forward passes.
 */
static void
ServeCompute(CachedAdapter **adapters, char **texts, int n, char **labels, double *scores)
{
	PredictMixed(adapters, texts, n, labels, scores);
}

/* Look up (and load, when not cached) the adapter of the jobs of one version.  Inside a transaction. */
static void
ResolveJobs(Job **jobs, int njobs)
{
	CachedAdapter *a;

	SPI_connect();
	a = GetAdapterVersion(jobs[0]->req.adapter, jobs[0]->req.version);
	SPI_finish();
	for (int j = 0; j < njobs; j++)
		jobs[j]->adapter = a;
}

/* Compute the rows of jobs (resolved) in one call and copy their answers out.  Inside a transaction. */
static void
ComputeJobs(Job **jobs, int njobs)
{
	int			n = 0;
	char	  **texts;
	char	  **labels;
	double	   *scores;
	CachedAdapter **adapters;

	for (int j = 0; j < njobs; j++)
		n += jobs[j]->req.n;
	texts = palloc(sizeof(char *) * (n + 1));
	adapters = palloc(sizeof(CachedAdapter *) * (n + 1));
	labels = palloc0(sizeof(char *) * (n + 1));
	scores = palloc0(sizeof(double) * (n + 1));
	for (int j = 0, k = 0; j < njobs; j++)
		for (int i = 0; i < jobs[j]->req.n; i++, k++)
		{
			texts[k] = jobs[j]->req.texts[i];
			adapters[k] = jobs[j]->adapter;
		}
	ServeCompute(adapters, texts, n, labels, scores);
	/* copy the labels out: they point into the adapter cache */
	for (int j = 0, k = 0; j < njobs; j++)
	{
		Job		   *job = jobs[j];
		MemoryContext old = MemoryContextSwitchTo(job->ch->context);

		job->ans.n = job->req.n;
		job->ans.labels = palloc0(sizeof(char *) * (job->req.n + 1));
		job->ans.scores = palloc0(sizeof(double) * (job->req.n + 1));
		for (int i = 0; i < job->req.n; i++, k++)
		{
			job->ans.labels[i] = labels[k] ? pstrdup(labels[k]) : NULL;
			job->ans.scores[i] = scores[k];
		}
		job->done = true;
		MemoryContextSwitchTo(old);
	}
}

/*
 * Run step over jobs in a subtransaction; true when it succeeded.  On an
 * error, when answer_error, the error becomes the jobs' answer.
 */
static bool
RunIsolated(void (*step) (Job **, int), Job **jobs, int njobs, bool answer_error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		step(jobs, njobs);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ok = false;
		for (int j = 0; j < njobs && answer_error; j++)
		{
			jobs[j]->ans.failed = true;
			jobs[j]->ans.sqlerrcode = edata->sqlerrcode;
			jobs[j]->ans.message = MemoryContextStrdup(jobs[j]->ch->context, edata->message);
			jobs[j]->done = true;
		}
		if (answer_error)
			ereport(LOG,
					(errmsg("peft serving worker: a request of adapter \"%s\" failed: %s",
							jobs[0]->req.adapter ? jobs[0]->req.adapter :
							jobs[0]->req.adapters && jobs[0]->req.adapters[0] ? jobs[0]->req.adapters[0] : "(none)",
							edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return ok;
}

/*
 * Compute a batch's predictions: each adapter version's lookup on its own
 * (a failure answers only its jobs), then every resolved row in one mixed
 * call; if that fails, adapter by adapter, so an adapter the mixed forward
 * refuses (an embedding adapter, an engine error of one) fails only its
 * callers.
 */
static void
ComputePredictions(Job **batch, int n)
{
	Job		  **group = palloc(sizeof(Job *) * n);
	Job		  **resolved = palloc(sizeof(Job *) * n);
	int		   *group_start = palloc(sizeof(int) * (n + 1));
	bool	   *taken = palloc0(sizeof(bool) * n);
	int			nresolved = 0;
	int			ngroups = 0;

	for (int i = 0; i < n; i++)
	{
		int			ng = 0;

		if (taken[i] || batch[i]->done)
			continue;
		for (int j = i; j < n; j++)
			if (!taken[j] && !batch[j]->done && batch[j]->req.version == batch[i]->req.version &&
				strcmp(batch[j]->req.adapter, batch[i]->req.adapter) == 0)
			{
				taken[j] = true;
				group[ng++] = batch[j];
			}
		if (!RunIsolated(ResolveJobs, group, ng, true))
			continue;
		group_start[ngroups++] = nresolved;
		for (int j = 0; j < ng; j++)
			resolved[nresolved++] = group[j];
	}
	group_start[ngroups] = nresolved;
	if (nresolved == 0 || RunIsolated(ComputeJobs, resolved, nresolved, false))
		return;
	for (int g = 0; g < ngroups; g++)
		(void) RunIsolated(ComputeJobs, resolved + group_start[g], group_start[g + 1] - group_start[g], true);
}

/*
 * Embed the rows of jobs (kind SERVE_EMBED) in one call, each through its
 * adapter version (NULL: the model alone), and copy the vectors out.
 * Inside a transaction.
 */
static void
ComputeEmbeddings(Job **jobs, int njobs)
{
	int			n = 0;
	CachedModel *m;
	CachedAdapter **rows;
	char	  **texts;
	float	   *out;
	int			dim;

	for (int j = 0; j < njobs; j++)
		n += jobs[j]->req.n;
	rows = palloc0(sizeof(CachedAdapter *) * (n + 1));
	texts = palloc(sizeof(char *) * (n + 1));
	SPI_connect();
	m = GetModel(worker_model);
	for (int j = 0, k = 0; j < njobs; j++)
		for (int i = 0; i < jobs[j]->req.n; i++, k++)
		{
			const ServeRequest *req = &jobs[j]->req;

			texts[k] = req->texts[i];
			if (req->adapters[i] == NULL)
				continue;
			rows[k] = GetAdapterVersion(req->adapters[i], req->versions[i]);
			if (rows[k]->model != m)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("adapter \"%s\" was trained on model \"%s\", not \"%s\"",
								req->adapters[i], rows[k]->model->name, worker_model)));
		}
	SPI_finish();
	dim = m->info.hidden_size;
	out = palloc(sizeof(float) * ((Size) n * dim + 1));
	EmbedMixed(m, rows, texts, n, out);
	for (int j = 0, k = 0; j < njobs; j++)
	{
		Job		   *job = jobs[j];
		Size		bytes = sizeof(float) * (Size) job->req.n * dim;

		job->ans.n = job->req.n;
		job->ans.dim = dim;
		job->ans.vectors = MemoryContextAlloc(job->ch->context, bytes + sizeof(float));
		memcpy(job->ans.vectors, out + (Size) k * dim, bytes);
		k += job->req.n;
		job->done = true;
	}
}

/*
 * Compute a batch: its predictions together, its embeddings together (if
 * that fails, request by request, so only the callers at fault fail).
 */
static void
ComputeBatch(Job **batch, int n)
{
	Job		  **predict = palloc(sizeof(Job *) * (n + 1));
	Job		  **embed = palloc(sizeof(Job *) * (n + 1));
	int			npredict = 0;
	int			nembed = 0;

	for (int i = 0; i < n; i++)
		if (!batch[i]->done)
		{
			if (batch[i]->req.kind == SERVE_EMBED)
				embed[nembed++] = batch[i];
			else
				predict[npredict++] = batch[i];
		}
	AdapterCacheBeginCall();
	if (npredict > 0)
		ComputePredictions(predict, npredict);
	if (nembed > 0 && !RunIsolated(ComputeEmbeddings, embed, nembed, false))
		for (int j = 0; j < nembed; j++)
			(void) RunIsolated(ComputeEmbeddings, embed + j, 1, true);
}

/* The extension's oid now (InvalidOid: dropped); in a transaction. */
static Oid
CurrentExtension(void)
{
	return get_extension_oid("peft", true);
}

/* Take up to peft.serve_max_batch rows of waiting jobs, compute them, answer. */
static void
RunBatch(void)
{
	Job		  **batch = palloc(sizeof(Job *) * (queued_jobs + 1));
	int			n = 0;
	int			rows = 0;
	bool		dropped;
	MemoryContext batch_cxt = AllocSetContextCreate(TopMemoryContext, "peft serve batch",
													ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;

	while (queue_head && (n == 0 || rows + queue_head->req.n <= peft_serve_max_batch))
	{
		Job		   *job = queue_head;

		queue_head = job->next;
		if (queue_head == NULL)
			queue_tail = NULL;
		queued_rows -= job->req.n;
		queued_jobs--;
		rows += job->req.n;
		batch[n++] = job;
	}

	pgstat_report_activity(STATE_RUNNING, "peft serving batch");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	old = MemoryContextSwitchTo(batch_cxt);
	dropped = CurrentExtension() == InvalidOid;
	if (dropped)
		for (int i = 0; i < n; i++)
		{
			batch[i]->ans.failed = true;
			batch[i]->ans.sqlerrcode = ERRCODE_UNDEFINED_OBJECT;
			batch[i]->ans.message = "extension \"peft\" was dropped";
			batch[i]->done = true;
		}
	else
		ComputeBatch(batch, n);
	MemoryContextSwitchTo(old);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextDelete(batch_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);

	for (int i = 0; i < n; i++)
		SendAnswer(batch[i]->ch, batch[i]->req.kind, &batch[i]->ans);
	pfree(batch);
	if (dropped)
	{
		ereport(LOG, (errmsg("peft serving worker: the extension was dropped; exiting")));
		proc_exit(0);
	}
}

/* Exit when the extension is gone (checked in a short transaction). */
static void
CheckExtension(void)
{
	Oid			oid;

	StartTransactionCommand();
	oid = CurrentExtension();
	CommitTransactionCommand();
	MemoryContextSwitchTo(TopMemoryContext);
	if (oid == InvalidOid)
	{
		ereport(LOG, (errmsg("peft serving worker: the extension was dropped; exiting")));
		proc_exit(0);
	}
}

/* Milliseconds until the oldest waiting job has waited peft.serve_max_wait (0: now). */
static long
WaitLeftMs(void)
{
	TimestampTz due = TimestampTzPlusMilliseconds(queue_head->arrived, peft_serve_max_wait);
	long		us = (long) (due - GetCurrentTimestamp());

	return us <= 0 ? 0 : (us + 999) / 1000;
}

/* Entry point of a serving worker. */
void
peft_serve_worker_main(Datum arg)
{
	TimestampTz last_check = 0;
	int			threads;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	if (args.magic != SERVE_MAGIC || !ServePreloaded() || args.slot < 0 || args.slot >= SERVE_MAX_WORKERS)
		elog(ERROR, "peft serving worker started with bad arguments");
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	if (!ClaimSlot())
		proc_exit(0);			/* its starter gave up on it: another owns the slot */
	before_shmem_exit(ServeWorkerExit, 0);

	BackgroundWorkerInitializeConnectionByOid(args.database, BOOTSTRAP_SUPERUSERID, 0);
	/* its own statements resolve names in pg_catalog only */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	peft_device = ServeRegistryGet()->slots[args.slot].device;
	strlcpy(worker_model, ServeRegistryGet()->slots[args.slot].model, sizeof(worker_model));
	threads = peft_serve_threads > 0 ? peft_serve_threads : (int) sysconf(_SC_NPROCESSORS_ONLN);
	peft_threads = threads < 1 ? 1 : threads;
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(TopMemoryContext);

	for (;;)
	{
		long		timeout = IDLE_CHECK_MS;

		ResetLatch(MyLatch);
		/* a cancel (pg_cancel_backend) stops the batch it hits, not the worker */
		QueryCancelPending = false;
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		AcceptChannels();
		PollChannels();
		if (queue_head)
		{
			timeout = queued_rows >= peft_serve_max_batch ? 0 : WaitLeftMs();
			if (timeout == 0)
			{
				RunBatch();
				continue;		/* look again at once: more may have arrived meanwhile */
			}
		}
		if ((queue_head == NULL || ServeGenerateBusy()) &&
			TimestampDifferenceExceeds(last_check, GetCurrentTimestamp(), IDLE_CHECK_MS))
		{
			CheckExtension();
			last_check = GetCurrentTimestamp();
		}
		if (ServeGenerateBusy())
		{
			/* one decoding step, then new requests and due predictions before the next */
			ServeGenerateStep();
			continue;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout,
						 PG_WAIT_EXTENSION);
	}
}
