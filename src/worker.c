/*
 * worker.c - the background worker that runs one training job.
 *
 * It connects as the extension's owner (on PostgreSQL 15 a worker cannot
 * connect as a role without LOGIN) and switches to the calling role for
 * everything that touches user data, so privileges and row-level security
 * apply to what it reads.  Its work is a sequence of short transactions:
 * record the job, read the rows through an SPI cursor into the engine,
 * then train outside any transaction, committing progress to the job row
 * every couple of seconds, and finally insert the adapter version and mark
 * the job succeeded in one transaction, so no half-written row is ever
 * visible.
 */
#include "postgres.h"

#include <math.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "loss_history.h"
#include "models.h"
#include "peft.h"
#include "train_options.h"
#include "worker.h"

/* Progress is committed at least this often while training. */
#define PROGRESS_INTERVAL_MS 1000
/* Rows fetched from the data cursor at a time. */
#define FETCH_ROWS 1000
/* Longest classification label, in bytes. */
#define MAX_LABEL_BYTES 255
#define MAX_CLASSES 10000
/* max_length when the options give none (capped by the model). */

PGDLLEXPORT void peft_train_worker_main(Datum arg);

static volatile sig_atomic_t got_sigterm = false;

/* The memory context BeginStep found current, restored by EndStep. */
static MemoryContext step_caller_context = NULL;

/* Everything the worker knows about its job. */
typedef struct Job
{
	WorkerArgs	args;
	WaitShared *shared;			/* wait => true only */
	int64		id;
	char	   *fields[JOB_NUM_FIELDS];
	char	   *model_path;
	bool		regression;
	bool		generation;		/* prompt/completion rows over a decoder */
	PeftTrainConfig config;		/* the job's options over the defaults */
	const PeftEngineApi *engine;
	PeftModelHandle *model;
	PeftTrainJob *train;
	/* data */
	int64		rows;
	int64		skipped;
	int			nlabels;
	char	  **labels;			/* sorted */
	HTAB	   *label_index;
	/* progress */
	TimestampTz started;
	int64		trained_rows;
	int64		trained_tokens;		/* real tokens of the steps (prompt and completion) */
	double		step_seconds;	/* in train_step only (no evaluation) */
	StringInfoData epochs;		/* JSON array of per-epoch metrics */
	LossHistory history;		/* loss and learning rate per step, thinned */
	bool		has_loss_steps; /* the catalog has loss_steps and lr_history (0.2.0) */
	PeftTrainMemory memory;		/* what the prepared run holds */
	long		peak_private_kb;	/* largest private resident memory seen (SampleMemory) */
	MemoryContext context;		/* what lives as long as the job */
	bool		canceled;
	bool		marked;			/* the row records this process as its worker */
} Job;

typedef struct LabelEntry
{
	char		label[MAX_LABEL_BYTES + 1];
	int			index;			/* first-seen order */
} LabelEntry;

/* SIGTERM: finish the current step, then record the job as failed. */
static void
WorkerSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Start a transaction with a snapshot and SPI. */
static void
BeginStep(void)
{
	step_caller_context = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/*
 * Finish SPI and commit, back in the memory context BeginStep found:
 * commit leaves TopMemoryContext current, where whatever the job then
 * allocated would stay until the process ends.
 */
static void
EndStep(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	MemoryContextSwitchTo(step_caller_context);
}

/* Run SQL with text parameters (NULL for SQL NULL); returns SPI's code. */
static int
ExecText(const char *sql, int nargs, const char **args)
{
	Oid			types[16];
	Datum		values[16];
	char		nulls[16];

	for (int i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	return SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
}

/* The job id as text, for parameters. */
static const char *
JobIdText(const Job *job)
{
	return psprintf("%lld", (long long) job->id);
}

/*
 * After a write to the job's row: ERROR unless it reached the row.  Every
 * write after MarkStarted matches the row by id and by worker_pid =
 * pg_backend_pid(), so a worker whose row is gone stops instead of going on
 * unseen: DROP EXTENSION peft leaves it no row, and DROP then CREATE
 * EXTENSION makes new rows that reuse the ids, which it must not write
 * into (it did: it set another job's progress, inserted its own adapter
 * under that job and marked it succeeded).
 */
static void
CheckOwnRow(const Job *job)
{
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the row of training job %lld is gone", (long long) job->id),
				 errdetail("The extension was dropped, or the row deleted, while the job ran.")));
}

/* wait => true: record the job row from the caller's parameters and commit. */
static void
RecordJobFromShared(Job *job)
{
	char	   *p = job->shared->params;

	for (int i = 0; i < JOB_NUM_FIELDS; i++)
	{
		job->fields[i] = pstrdup(p);
		p += strlen(p) + 1;
	}
	BeginStep();
	job->id = CatalogInsertJob(job->fields);
	EndStep();
	job->shared->job_id = job->id;
	pg_atomic_write_u32(&job->shared->stage, WAIT_STAGE_JOB_RECORDED);
}

/*
 * wait => false: wait for the caller's transaction to end, then read the
 * job row; false if it is gone (the caller rolled back) or was canceled.
 */
static bool
LoadJobAfterCaller(Job *job)
{
	const char *id;
	const char *cols = "adapter, base_model, method, task, data, input_column, "
		"label_column, options::text, owner, search_path, status, cancel_requested";

	job->id = job->args.job_id;
	id = JobIdText(job);
	StartTransactionCommand();
	XactLockTableWait(job->args.caller_xid, NULL, NULL, XLTW_None);
	CommitTransactionCommand();
	MemoryContextSwitchTo(job->context);	/* commit left TopMemoryContext current */

	BeginStep();
	ExecText(psprintf("SELECT %s FROM peft.job_rows WHERE id = $1::bigint", cols), 1, &id);
	if (SPI_processed == 0)
	{
		EndStep();
		return false;
	}
	for (int i = 0; i < JOB_NUM_FIELDS; i++)
		job->fields[i] = MemoryContextStrdup(TopMemoryContext,
											 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1));
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, JOB_NUM_FIELDS + 1), "queued") != 0 ||
		strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, JOB_NUM_FIELDS + 2), "t") == 0)
	{
		ExecText("UPDATE peft.job_rows SET status = 'canceled', finished_at = now() "
				 "WHERE id = $1::bigint AND status = 'queued'", 1, &id);
		EndStep();
		return false;
	}
	EndStep();
	return true;
}

/* True when a cancel was asked for, through the row or the waiting caller. */
static bool
CancelRequested(Job *job)
{
	const char *id = JobIdText(job);

	if (job->shared && pg_atomic_read_u32(&job->shared->cancel))
		return true;
	ExecText("SELECT cancel_requested FROM peft.job_rows "
			 "WHERE id = $1::bigint AND worker_pid = pg_backend_pid()", 1, &id);
	CheckOwnRow(job);
	return strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
}

/* Mark the job running with this process as its worker. */
static void
MarkStarted(Job *job, const char *status)
{
	const char *args[3] = {JobIdText(job), status,
	timestamptz_to_str(MyStartTimestamp)};

	BeginStep();
	ExecText(job->marked ?
			 "UPDATE peft.job_rows SET status = $2, worker_pid = pg_backend_pid(), "
			 "worker_started = $3::timestamptz, "
			 "started_at = CASE WHEN $2 = 'running' THEN now() END "
			 "WHERE id = $1::bigint AND worker_pid = pg_backend_pid()" :
			 "UPDATE peft.job_rows SET status = $2, worker_pid = pg_backend_pid(), "
			 "worker_started = $3::timestamptz, "
			 "started_at = CASE WHEN $2 = 'running' THEN now() END "
			 "WHERE id = $1::bigint AND worker_pid IS NULL",
			 3, args);
	CheckOwnRow(job);
	EndStep();
	job->marked = true;
}

/*
 * Wait for one of peft.max_jobs slots (session advisory locks, released
 * when this process ends however it ends); false if canceled meanwhile.
 */
static bool
AcquireSlot(Job *job)
{
	for (;;)
	{
		bool		got = false;
		bool		cancel;

		BeginStep();
		for (int slot = 0; slot < peft_max_jobs && !got; slot++)
		{
			SPI_execute(psprintf("SELECT pg_try_advisory_lock(%d, %d)", 0x50454654, slot), false, 1);
			got = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
		}
		cancel = !got && CancelRequested(job);
		EndStep();
		if (got)
			return true;
		if (cancel || got_sigterm)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PROGRESS_INTERVAL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Open the base model and check the options again (as at call time). */
static void
OpenModel(Job *job)
{
	Jsonb	   *options;
	unsigned	methods;
	PeftModelInfo info;
	PeftError	err = {0};
	CatalogModel *row;
	int			threads = peft_train_threads > 0 ? peft_train_threads : (int) sysconf(_SC_NPROCESSORS_ONLN);

	BeginStep();
	row = CatalogGetModel(job->fields[JOB_BASE_MODEL]);
	CheckModelFiles(row);
	job->has_loss_steps = CatalogHasColumn("job_rows", "loss_steps");
	job->model_path = MemoryContextStrdup(TopMemoryContext, row->path);
	EndStep();

	/* the worker computes with peft.train_threads, not peft.threads */
	peft_threads = threads < 1 ? 1 : threads;
	job->engine = PeftEngine();
	options = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(job->fields[JOB_OPTIONS])));
	if (job->engine->parse_method(job->fields[JOB_METHOD], &methods, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	job->regression = strcmp(job->fields[JOB_TASK], "regression") == 0;
	job->generation = strcmp(job->fields[JOB_TASK], "generation") == 0;
	ParseTrainOptions(options, job->engine, methods,
					  job->regression ? PEFT_TASK_REGRESSION :
					  job->generation ? PEFT_TASK_GENERATION : PEFT_TASK_CLASSIFICATION, &job->config);
	job->config.memory_limit = (size_t) peft_max_train_memory * 1024;
	if (job->engine->model_open(job->model_path, &job->model, &info, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	if (job->engine->train_begin(job->model, &job->config, &job->train, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
}

/* A "Name: N kB" field of /proc/self/status, or -1 where /proc does not tell. */
static long
ProcStatusKb(const char *field)
{
	FILE	   *f = fopen("/proc/self/status", "r");
	char		line[256];
	size_t		len = strlen(field);
	long		kb = -1;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, len) == 0 && line[len] == ':')
		{
			kb = strtol(line + len + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

/*
 * Note this process's private (anonymous) resident memory, keeping the
 * largest seen.  The peak of all resident memory (VmHWM) also counts the
 * shared buffers the data query touched and the mapped model's pages,
 * which grow with a small table but belong to the server, not the job.
 */
static void
SampleMemory(Job *job)
{
	long		kb = ProcStatusKb("RssAnon");

	if (kb > job->peak_private_kb)
		job->peak_private_kb = kb;
}

/*
 * Raise an engine error of training; running out of memory (over
 * peft.max_train_memory, or malloc failing) names the setting in the
 * message, which is what the job row keeps.
 */
static void
TrainEngineError(const PeftError *err)
{
	if (err->code == PEFT_ERR_NOMEM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s: raise peft.max_train_memory, or train on fewer or shorter rows "
						"or with a smaller batch_size", err->message)));
	PeftRaiseEngineError(err);
}

/* Index of a classification label, assigned in first-seen order. */
static int
LabelIndex(Job *job, const char *label)
{
	LabelEntry *entry;
	bool		found;
	char		key[MAX_LABEL_BYTES + 1] = {0};

	if (strlen(label) > MAX_LABEL_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("a label value is longer than %d bytes", MAX_LABEL_BYTES)));
	strlcpy(key, label, sizeof(key));
	entry = hash_search(job->label_index, key, HASH_ENTER, &found);
	if (!found)
	{
		if (job->nlabels == MAX_CLASSES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the labels have more than %d distinct values", MAX_CLASSES),
					 errhint("Use task => 'regression' for a numeric target.")));
		entry->index = job->nlabels++;
	}
	return entry->index;
}

/* Read every row of a data query through a cursor, as the caller, into the engine. */
static void
ReadQueryRows(Job *job, const char *data)
{
	Oid			save_user;
	int			save_sec;
	Portal		portal;
	SPIPlanPtr	plan;
	PeftError	err = {0};
	int			nestlevel;
	MemoryContext batch = AllocSetContextCreate(job->context, "peft data batch",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContext spi;

	BeginStep();

	/*
	 * The data query is the caller's SQL running in this session: it may
	 * change settings (set_config('search_path', ...)) that would then apply
	 * to the owner's statements that follow.  Run it at its own GUC nesting
	 * level, undone below, with the search_path the caller had when it
	 * called peft_train, so names resolve as they did at call time.
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", job->fields[JOB_SEARCH_PATH],
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(job->args.caller, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	plan = SPI_prepare(DataQuery(data, job->fields[JOB_INPUT],
								 job->fields[JOB_LABEL], job->regression), 0, NULL);
	if (plan == NULL)
		elog(ERROR, "could not prepare the data query: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, FETCH_ROWS);
		if (SPI_processed == 0)
			break;

		/*
		 * Detoasted inputs and label copies go into a context reset after
		 * every batch: in SPI's they stayed until the whole table was read,
		 * so the worker grew with the table, beyond the tokenised rows.
		 */
		spi = MemoryContextSwitchTo(batch);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			bool		null_input, null_label;
			Datum		input = SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &null_input);
			Datum		label = SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &null_label);
			text	   *t;
			PeftCode	rc;

			if (null_input || null_label)
			{
				job->skipped++;
				continue;
			}
			t = DatumGetTextPP(input);
			if (job->generation)
			{
				text	   *c = DatumGetTextPP(label);

				rc = job->engine->train_add_pair(job->train, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
												 VARDATA_ANY(c), VARSIZE_ANY_EXHDR(c), &err);
			}
			else if (job->regression)
				rc = job->engine->train_add_row(job->train, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
												0, DatumGetFloat8(label), &err);
			else
				rc = job->engine->train_add_row(job->train, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
												LabelIndex(job, TextDatumGetCString(label)), 0, &err);
			if (rc != PEFT_OK)
				TrainEngineError(&err);
			job->rows++;
		}
		MemoryContextSwitchTo(spi);
		MemoryContextReset(batch);
		SampleMemory(job);
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	SetUserIdAndSecContext(save_user, save_sec);
	AtEOXact_GUC(false, nestlevel);
	EndStep();
	MemoryContextDelete(batch);
}

/* Read the training rows, then any validation_data rows (held out), into the engine. */
static void
ReadRows(Job *job)
{
	HASHCTL		ctl = {0};
	PeftError	err = {0};

	ctl.keysize = MAX_LABEL_BYTES + 1;
	ctl.entrysize = sizeof(LabelEntry);
	ctl.hcxt = TopMemoryContext;
	job->label_index = hash_create("peft labels", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ReadQueryRows(job, job->fields[JOB_DATA]);
	if (job->config.validation_data == NULL)
		return;
	if (job->engine->train_hold_out(job->train, &err) != PEFT_OK)
		TrainEngineError(&err);
	ReadQueryRows(job, job->config.validation_data);
}

/* qsort comparator for label strings (byte order, as COLLATE "C"). */
static int
CompareLabels(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Sort the labels; map[first-seen index] = sorted index. */
static int *
SortLabels(Job *job)
{
	HASH_SEQ_STATUS seq;
	LabelEntry *e;
	char	  **byindex = palloc(sizeof(char *) * job->nlabels);
	int		   *map = palloc(sizeof(int) * job->nlabels);

	job->labels = MemoryContextAlloc(TopMemoryContext, sizeof(char *) * job->nlabels);
	hash_seq_init(&seq, job->label_index);
	while ((e = hash_seq_search(&seq)) != NULL)
		byindex[e->index] = e->label;
	memcpy(job->labels, byindex, sizeof(char *) * job->nlabels);
	qsort(job->labels, job->nlabels, sizeof(char *), CompareLabels);
	for (int i = 0; i < job->nlabels; i++)
		for (int j = 0; j < job->nlabels; j++)
			if (job->labels[j] == byindex[i])
				map[i] = j;
	return map;
}

/* Commit a progress report; returns true when the job should stop. */
static bool
ReportProgress(Job *job, const PeftTrainProgress *p)
{
	double		seconds = (GetCurrentTimestamp() - job->started) / 1e6;
	double		rate = seconds > 0 ? job->trained_rows / seconds : 0;
	double		eta = p->step > 0 ? seconds * (p->total_steps - p->step) / p->step : 0;
	const char *args[11];
	bool		stop;

	args[0] = JobIdText(job);
	args[1] = psprintf("%d", p->epoch);
	args[2] = psprintf("%d", p->step);
	args[3] = psprintf("%d", p->total_steps);
	args[4] = psprintf("%.17g", p->loss);
	args[5] = psprintf("%.6g", rate);
	args[6] = psprintf("%.3f seconds", eta);
	args[7] = psprintf("%.6g", p->total_steps > 0 ? (double) p->step / p->total_steps : 0);
	LossHistoryArrays(&job->history, (char **) &args[8], (char **) &args[9], (char **) &args[10]);
	BeginStep();
	/* a database still at 0.1.0 has no loss_steps: its loss_history gets a point per report */
	ExecText(psprintf("UPDATE peft.job_rows SET epoch = $2::int, step = $3::int, total_steps = $4::int, "
					  "loss = $5::float8, samples_per_second = $6::float8, eta = $7::interval, "
					  "progress = least($8::real, 1), %s "
					  "WHERE id = $1::bigint AND worker_pid = pg_backend_pid()",
					  job->has_loss_steps ? "loss_steps = $9::int[], loss_history = $10::float8[], "
					  "lr_history = $11::float8[]" : "loss_history = loss_history || $5::float8"),
			 job->has_loss_steps ? 11 : 8, args);
	CheckOwnRow(job);
	stop = CancelRequested(job);
	EndStep();
	return stop || got_sigterm;
}

/*
 * What the run holds, counted against peft.max_train_memory, as a JSON
 * object in kB; with peak, also the worker's peak resident memory (which
 * includes the pages of the mapped model it touched and the server's own).
 */
static char *
MemoryJson(Job *job, bool peak)
{
	const PeftTrainMemory *m = &job->memory;
	long		rss = peak ? ProcStatusKb("VmHWM") : -1;

	if (peak)
		SampleMemory(job);
	return psprintf("{\"rows_kb\": %lld, \"state_kb\": %lld, \"activations_kb\": %lld, "
					"\"limit_kb\": %d%s%s}",
					(long long) (m->data / 1024), (long long) (m->state / 1024),
					(long long) (m->activations / 1024), peft_max_train_memory,
					rss >= 0 ? psprintf(", \"peak_rss_kb\": %ld", rss) : "",
					peak && job->peak_private_kb >= 0 ?
					psprintf(", \"peak_private_kb\": %ld", job->peak_private_kb) : "");
}

/* Validation metrics as a JSON object. */
static char *
MetricsJson(Job *job, const PeftMetrics *m, int epoch)
{
	if (job->generation)
		return psprintf("{\"epoch\": %d, \"rows\": %lld, \"loss\": %.6g, \"perplexity\": %.6g, "
						"\"exact_match\": %s, \"generated\": %lld, \"long_rows_skipped\": %lld}",
						epoch, (long long) m->rows, m->loss, m->perplexity,
						m->exact_match < 0 ? "null" : psprintf("%.6g", m->exact_match),
						(long long) m->generated, (long long) m->skipped);
	if (job->regression)
		return psprintf("{\"epoch\": %d, \"rows\": %lld, \"loss\": %.6g, \"mse\": %.6g, "
						"\"mae\": %.6g, \"r2\": %.6g}", epoch, (long long) m->rows,
						m->loss, m->mse, m->mae, m->r2);
	return psprintf("{\"epoch\": %d, \"rows\": %lld, \"loss\": %.6g, \"accuracy\": %.6g, "
					"\"macro_f1\": %.6g}", epoch, (long long) m->rows, m->loss,
					m->accuracy, m->macro_f1);
}

/* Evaluate after an epoch and record the metrics in the job row. */
static char *
EvaluateEpoch(Job *job, int epoch)
{
	PeftMetrics m;
	PeftError	err = {0};
	char	   *json;
	const char *args[2];

	if (job->engine->train_evaluate(job->train, &m, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	json = MetricsJson(job, &m, epoch);
	appendStringInfo(&job->epochs, "%s%s", job->epochs.len > 1 ? ", " : "", json);
	args[0] = JobIdText(job);
	args[1] = psprintf("%s]", job->epochs.data);
	BeginStep();
	ExecText("UPDATE peft.job_rows SET metrics = jsonb_set(metrics, '{epochs}', $2::jsonb) "
			 "WHERE id = $1::bigint AND worker_pid = pg_backend_pid()", 2, args);
	CheckOwnRow(job);
	EndStep();
	return json;
}

/* Insert the adapter version and mark the job succeeded, in one transaction. */
static void
SaveAdapter(Job *job, const char *final_metrics, int64 train_rows, int64 valid_rows)
{
	uint8_t    *weights;
	size_t		weights_len;
	char	   *config;
	PeftError	err = {0};
	CatalogVersion v = {0};
	double		seconds = (GetCurrentTimestamp() - job->started) / 1e6;

	/* base_model_name_or_path: the registered name, as peft_combine writes it */
	if (job->engine->train_export(job->train, job->fields[JOB_BASE_MODEL], &weights, &weights_len,
								  &config, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	v.weights = palloc(VARHDRSZ + weights_len);
	SET_VARSIZE(v.weights, VARHDRSZ + weights_len);
	memcpy(VARDATA(v.weights), weights, weights_len);
	job->engine->free_buffer(weights);
	v.config = pstrdup(config);
	job->engine->free_buffer(config);

	v.name = job->fields[JOB_ADAPTER];
	v.base_model = job->fields[JOB_BASE_MODEL];
	v.method = job->fields[JOB_METHOD];
	v.task = job->fields[JOB_TASK];
	v.labels = job->regression || job->generation ? NULL :
		CatalogTextArrayLiteral(job->nlabels, job->labels);
	v.metrics = psprintf("{\"final\": %s, \"epochs\": [%s], "
						 "\"train_rows\": %lld, \"valid_rows\": %lld, "
						 "\"skipped_rows\": %lld, \"parameters\": %lld, \"max_length\": %d, "
						 "\"train_seconds\": %.3f, \"train_tokens\": %lld, \"rows_per_second\": %.4g, "
						 "\"tokens_per_second\": %.4g, \"device\": \"%s\", \"memory\": %s}",
						 final_metrics, job->epochs.data + 1,
						 (long long) train_rows, (long long) valid_rows,
						 (long long) job->skipped, (long long) job->engine->train_parameters(job->train),
						 job->engine->train_max_length(job->train),
						 seconds, (long long) job->trained_tokens,
						 job->step_seconds > 0 ? job->trained_rows / job->step_seconds : 0,
						 job->step_seconds > 0 ? job->trained_tokens / job->step_seconds : 0,
						 job->engine->train_device(job->train), MemoryJson(job, true));
	v.job = job->id;
	v.owner = job->args.caller;
	v.activate = job->config.activate;

	BeginStep();
	(void) CatalogInsertVersion(&v);
	/* the job's row must still be this worker's: if not, the error rolls the version back */
	ExecText("UPDATE peft.job_rows SET status = 'succeeded', progress = 1, finished_at = now(), "
			 "eta = '0'::interval WHERE id = $1::bigint AND worker_pid = pg_backend_pid()",
			 1, (const char *[]) {JobIdText(job)});
	CheckOwnRow(job);
	EndStep();
}

/* Train step by step, reporting progress and evaluating after each epoch. */
static void
Train(Job *job)
{
	PeftError	err = {0};
	PeftTrainProgress p = {0};
	int64		train_rows, valid_rows;
	int			total_steps;
	int		   *map = NULL;
	TimestampTz last_report = 0;
	char	   *final_metrics = NULL;
	MemoryContext step;
	const char *args[2];

	if (job->rows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("the training data has no row with both input and label set (%lld skipped)",
						(long long) job->skipped)));
	if (!job->regression && !job->generation)
	{
		if (job->nlabels < 2)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the training data has a single class")));
		map = SortLabels(job);
	}
	job->config.num_labels = job->regression ? 1 : job->generation ? 0 : job->nlabels;
	if (job->engine->train_prepare(job->train, job->config.num_labels, map,
								   &train_rows, &valid_rows, &total_steps, &err) != PEFT_OK)
		TrainEngineError(&err);
	job->engine->train_memory(job->train, &job->memory);
	SampleMemory(job);

	args[0] = JobIdText(job);
	args[1] = psprintf("{\"train_rows\": %lld, \"valid_rows\": %lld, \"skipped_rows\": %lld, "
					   "\"device\": \"%s\", \"memory\": %s}",
					   (long long) train_rows, (long long) valid_rows, (long long) job->skipped,
					   job->engine->train_device(job->train), MemoryJson(job, false));
	BeginStep();
	ExecText("UPDATE peft.job_rows SET total_steps = $3::int, epoch = 1, step = 0, "
			 "metrics = $2::jsonb WHERE id = $1::bigint AND worker_pid = pg_backend_pid()", 3,
			 (const char *[]) {args[0], args[1], psprintf("%d", total_steps)});
	CheckOwnRow(job);
	EndStep();

	initStringInfo(&job->epochs);
	appendStringInfoChar(&job->epochs, '[');
	LossHistoryInit(&job->history);
	job->started = GetCurrentTimestamp();
	/* what one step's reports allocate is freed after the step */
	step = AllocSetContextCreate(job->context, "peft training step", ALLOCSET_SMALL_SIZES);
	MemoryContextSwitchTo(step);
	while (!p.done)
	{
		TimestampTz step_start = GetCurrentTimestamp();

		if (job->engine->train_step(job->train, &p, &err) != PEFT_OK)
			PeftRaiseEngineError(&err);
		job->step_seconds += (GetCurrentTimestamp() - step_start) / 1e6;
		job->trained_rows += p.rows;
		job->trained_tokens += p.tokens;
		LossHistoryAdd(&job->history, p.step, p.loss, p.learning_rate);
		if (p.epoch_end || p.done)
			final_metrics = MemoryContextStrdup(job->context, EvaluateEpoch(job, p.epoch));
		if (p.done || TimestampDifferenceExceeds(last_report, GetCurrentTimestamp(),
												 PROGRESS_INTERVAL_MS))
		{
			last_report = GetCurrentTimestamp();
			if (ReportProgress(job, &p))
			{
				job->canceled = !got_sigterm;
				if (got_sigterm)
					ereport(ERROR,
							(errcode(ERRCODE_ADMIN_SHUTDOWN),
							 errmsg("the training worker was terminated by an administrator command")));
				MemoryContextSwitchTo(job->context);
				return;
			}
		}
		MemoryContextReset(step);
		SampleMemory(job);
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextSwitchTo(job->context);
	if (final_metrics == NULL)
		final_metrics = EvaluateEpoch(job, p.epoch);
	SaveAdapter(job, final_metrics, train_rows, valid_rows);
}

/* Record the job's end (canceled or failed) in its own transaction. */
static void
RecordEnd(Job *job, const char *status, const char *error)
{
	const char *args[3] = {JobIdText(job), status, error};

	BeginStep();
	/* only this worker's row (see CheckOwnRow); none left is no error here */
	ExecText(job->marked ?
			 "UPDATE peft.job_rows SET status = $2, error = $3, finished_at = now() "
			 "WHERE id = $1::bigint AND worker_pid = pg_backend_pid()" :
			 "UPDATE peft.job_rows SET status = $2, error = $3, finished_at = now() "
			 "WHERE id = $1::bigint AND worker_pid IS NULL", 3, args);
	EndStep();
}

/* Publish the outcome to a waiting caller. */
static void
PublishOutcome(Job *job, const char *status, const char *error)
{
	if (job->shared == NULL)
		return;
	strlcpy(job->shared->status, status, sizeof(job->shared->status));
	strlcpy(job->shared->error, error ? error : "", sizeof(job->shared->error));
	job->shared->skipped = job->skipped;
	pg_atomic_write_u32(&job->shared->stage, WAIT_STAGE_FINISHED);
}

/* Take a job slot, or record why the job ended while waiting for one. */
static bool
HoldSlot(Job *job)
{
	const char *status;

	if (AcquireSlot(job))
		return true;
	status = got_sigterm ? "failed" : "canceled";
	RecordEnd(job, status,
			  got_sigterm ? "the training worker was terminated by an administrator command" : NULL);
	PublishOutcome(job, status, NULL);
	return false;
}

/* The job from start to end; errors propagate to the caller. */
static void
RunJob(Job *job)
{
	if (job->shared)
		RecordJobFromShared(job);
	else if (!LoadJobAfterCaller(job))
		return;					/* rolled back or canceled before it started */
	pgstat_report_activity(STATE_RUNNING, psprintf("peft training job %lld", (long long) job->id));
	MarkStarted(job, "queued");
	if (!HoldSlot(job))
		return;
	MarkStarted(job, "running");
	OpenModel(job);
	ReadRows(job);

	/*
	 * The data query ran in this session as the caller, and
	 * pg_advisory_unlock_all() there would have released our slot: take it
	 * again (a no-op re-lock when it is still held) so peft.max_jobs holds
	 * while training.
	 */
	if (!HoldSlot(job))
		return;
	Train(job);
	if (job->canceled)
	{
		RecordEnd(job, "canceled", NULL);
		PublishOutcome(job, "canceled", NULL);
		return;
	}
	PublishOutcome(job, "succeeded", NULL);
}

/* Entry point of a training worker. */
void
peft_train_worker_main(Datum arg)
{
	Job		   *job = MemoryContextAllocZero(TopMemoryContext, sizeof(Job));
	dsm_segment *seg = NULL;
	MemoryContext work = AllocSetContextCreate(TopMemoryContext, "peft job",
											   ALLOCSET_DEFAULT_SIZES);

	pqsignal(SIGTERM, WorkerSigterm);
	BackgroundWorkerUnblockSignals();
	memcpy(&job->args, MyBgworkerEntry->bgw_extra, sizeof(WorkerArgs));
	if (job->args.magic != PEFT_WORKER_MAGIC)
		elog(ERROR, "peft training worker started with bad arguments");
	BackgroundWorkerInitializeConnectionByOid(job->args.database, job->args.owner, 0);

	/*
	 * This session runs as the extension owner: resolve the names in its own
	 * statements in pg_catalog only, whatever search_path the database or
	 * role settings give (ReadRows restores that default for the data query).
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	if (job->args.shared != 0)
	{
		seg = dsm_attach(job->args.shared);
		if (seg == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the caller of peft_train stopped waiting before the worker started")));
		job->shared = dsm_segment_address(seg);
	}

	job->context = work;
	MemoryContextSwitchTo(work);
	PG_TRY();
	{
		RunJob(job);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(work);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		if (job->id != 0)
		{
			RecordEnd(job, "failed", edata->message);
			PublishOutcome(job, "failed", edata->message);
		}
		ereport(LOG,
				(errmsg("peft training job %lld failed: %s", (long long) job->id, edata->message)));
	}
	PG_END_TRY();
	if (job->train)
		job->engine->train_free(job->train);
	if (job->model)
		job->engine->model_close(job->model);
	if (seg)
		dsm_detach(seg);
	proc_exit(0);
}
