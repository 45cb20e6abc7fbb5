/*
 * jobs.c - peft_train, peft_wait, peft_cancel: checking a training request
 * at call time, recording the job and starting its background worker.
 *
 * Transactions (see the README):
 *  - wait => false: the job row is inserted by the caller's transaction and
 *    the worker first waits for that transaction; if it aborts, the row is
 *    gone and the worker exits without doing anything.
 *  - wait => true: the worker inserts and commits the job row itself, like
 *    a separate session, while the caller waits; canceling the waiting
 *    statement cancels the job.
 */
#include "postgres.h"

#include <ctype.h>


#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "parser/parse_coerce.h"
#include "utils/lsyscache.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "catalog.h"
#include "models.h"
#include "peft.h"
#include "train_options.h"
#include "worker.h"
#include "words.h"

int			peft_max_jobs = 1;
int			peft_train_threads = 0;
int			peft_max_train_memory = 1024 * 1024;	/* kB */

PG_FUNCTION_INFO_V1(peft_train);
PG_FUNCTION_INFO_V1(peft_wait);
PG_FUNCTION_INFO_V1(peft_cancel);
PG_FUNCTION_INFO_V1(peft_worker_alive);
PG_FUNCTION_INFO_V1(peft_server_started);

/* Define peft.max_jobs, peft.train_threads, peft.max_train_memory. */
void
PeftInitJobSettings(void)
{
	DefineCustomIntVariable("peft.max_jobs",
							"Training jobs that may run at once in a database; others wait as queued.",
							NULL, &peft_max_jobs, 1, 1, 64, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("peft.train_threads",
							"Threads a training worker computes with (0: one per CPU core).",
							NULL, &peft_train_threads, 0, 0, 256, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("peft.max_train_memory",
							"Memory a training job may use for its tokenised rows.",
							"A job whose data does not fit fails with an error naming this setting.",
							&peft_max_train_memory, 1024 * 1024, 1024, INT_MAX,
							PGC_SUSET, GUC_UNIT_KB, NULL, NULL, NULL);
}

/*
 * True when data starts with the keyword kw as a whole word.  A keyword
 * followed by more identifier characters is the start of a name: the table
 * "withdrawals" or "selections" must not be taken for a WITH or SELECT
 * query (it was, and the call failed with a syntax error).
 */
static bool
StartsWithKeyword(const char *data, const char *kw)
{
	size_t		len = strlen(kw);
	unsigned char next;

	if (pg_strncasecmp(data, kw, len) != 0)
		return false;
	next = (unsigned char) data[len];
	return !(isalnum(next) || next == '_' || next == '$' || next >= 0x80);
}

/* The engine's method names, "lora, dora, ... and prefix". */
static char *
MethodNames(const PeftEngineApi *engine)
{
	StringInfoData buf;
	int			count;
	const PeftMethodInfo *methods = engine->methods(&count);

	initStringInfo(&buf);
	for (int i = 0; i < count; i++)
		appendStringInfo(&buf, "%s%s", i == 0 ? "" : i == count - 1 ? " and " : ", ", methods[i].name);
	return buf.data;
}

/* A copy of data without trailing whitespace and semicolons (as pasted from psql). */
static char *
TrimDataText(const char *data)
{
	char	   *copy = pstrdup(data);
	size_t		n = strlen(copy);

	while (n > 0 && (copy[n - 1] == ';' || isspace((unsigned char) copy[n - 1])))
		copy[--n] = '\0';
	return copy;
}

/* True when data looks like a query rather than a table or view name. */
static bool
IsQuery(const char *data)
{
	while (*data == ' ' || *data == '\t' || *data == '\n' || *data == '\r' || *data == '(')
		data++;
	return StartsWithKeyword(data, "select") || StartsWithKeyword(data, "with") ||
		StartsWithKeyword(data, "values") || StartsWithKeyword(data, "table");
}

/*
 * The FROM item of data: a name is parsed as a possibly-qualified
 * identifier and quoted; a query is wrapped as a subquery.  Either way it
 * runs with the caller's rights.  Every reader of data (training's checks
 * and worker, evaluation, scoring) comes here, so trailing semicolons are
 * ignored for all of them.
 */
static char *
DataSource(const char *given)
{
	char	   *data = TrimDataText(given);
	List	   *names;
	RangeVar   *rv;

	/* the newline ends a "--" comment on the query's last line */
	if (IsQuery(data))
		return psprintf("(%s\n)", data);
	names = stringToQualifiedNameList(data);
	rv = makeRangeVarFromNameList(names);
	return rv->schemaname ? quote_qualified_identifier(rv->schemaname, rv->relname)
		: pstrdup(quote_identifier(rv->relname));
}

/* The SQL text that reads (input::text, label) from data. */
char *
DataQuery(const char *data, const char *input, const char *label, bool regression)
{
	return psprintf("SELECT (peft_data.%s)::text, (peft_data.%s)::%s FROM %s AS peft_data",
					quote_identifier(input), quote_identifier(label),
					regression ? "float8" : "text", DataSource(data));
}

/*
 * Data's columns as the caller sees them (one read-only SELECT, as the
 * worker's cursor needs: a data text that smuggles in a second statement
 * after a ";" is refused here; read-only execution refuses writes).
 */
static TupleDesc
DataColumns(const char *data, const char *what)
{
	SPIPlanPtr	plan = SPI_prepare(psprintf("SELECT peft_data.* FROM %s AS peft_data LIMIT 0",
											DataSource(data)), 0, NULL);

	if (plan == NULL || !SPI_is_cursor_plan(plan) ||
		SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("%s must be a table, a view or a single SELECT query", what)));
	return SPI_tuptable->tupdesc;
}

/* The type of column name of desc (what: "data"); ERROR naming the argument that chose it when absent. */
static Oid
DataColumnType(TupleDesc desc, const char *name, const char *argument, const char *what)
{
	StringInfoData names;

	initStringInfo(&names);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (strcmp(NameStr(att->attname), name) == 0)
			return att->atttypid;
		appendStringInfo(&names, "%s%s", names.len ? ", " : "", quote_identifier(NameStr(att->attname)));
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("%s has no column \"%s\"", what, name),
			 errdetail("Its columns are: %s.", names.len ? names.data : "(none)"),
			 errhint("Name the %s column with %s => 'column' (the default is '%s').",
					 argument, argument, argument)));
	return InvalidOid;
}

/*
 * Check the types of the input and label columns: the input text-like (a
 * cast in a query otherwise), a regression label a number, a
 * classification label not a float (a classifier with a class per value).
 */
static void
CheckDataTypes(const char *data, const char *input, const char *label, PeftTask task,
			   const char *what)
{
	bool		regression = task == PEFT_TASK_REGRESSION;
	TupleDesc	desc = DataColumns(data, what);
	Oid			input_type = DataColumnType(desc, input, "input", what);
	Oid			label_type = DataColumnType(desc, label, "label", what);
	bool		integer = label_type == INT2OID || label_type == INT4OID || label_type == INT8OID;
	bool		fractional = label_type == FLOAT4OID || label_type == FLOAT8OID || label_type == NUMERICOID;

	if (TypeCategory(getBaseType(input_type)) != TYPCATEGORY_STRING)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("input column \"%s\" has type %s, but the input must be text",
						input, format_type_be(input_type)),
				 errhint("Cast it in a query: data => 'SELECT %s::text AS %s, ... FROM ...'.",
						 quote_identifier(input), quote_identifier(input))));
	if (regression && !integer && !fractional)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("label column \"%s\" has type %s, but regression needs a number",
						label, format_type_be(label_type))));
	if (task == PEFT_TASK_CLASSIFICATION && fractional)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("label column \"%s\" has type %s, but classification needs class names",
						label, format_type_be(label_type)),
				 errdetail("Each distinct value would become a class of its own."),
				 errhint("To predict the number, use task => 'regression'; for classes, "
						 "cast the label to text in a query.")));
}

/*
 * Check data (what: "data" or "validation_data"), its columns and its rows
 * as the caller, before queuing anything.
 */
static void
CheckData(const char *data, const char *input, const char *label, PeftTask task, const char *what)
{
	char	   *query = DataQuery(data, input, label, task == PEFT_TASK_REGRESSION);
	bool		validation = strcmp(what, "data") != 0;
	char	   *first;

	CheckDataTypes(data, input, label, task, what);

	/* at least one usable row, and for classification (training) two classes */
	if (SPI_execute(psprintf("SELECT q.* FROM (%s) q WHERE q IS NOT NULL LIMIT 1", query),
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the %s", what);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("the %s data has no row with both input and label set",
						validation ? "validation" : "training")));
	if (task != PEFT_TASK_CLASSIFICATION || validation)
		return;
	first = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	{
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(first)};

		if (SPI_execute_with_args(psprintf("SELECT 1 FROM (%s) q(i, l) WHERE i IS NOT NULL "
										   "AND l IS NOT NULL AND l <> $1 LIMIT 1", query),
								  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the training data");
	}
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the training data has a single class (\"%s\")", first),
				 errhint("Classification needs at least two distinct labels.")));
}

/* Fill a worker registration for args. */
static void
PrepareWorker(BackgroundWorker *w, const WorkerArgs *args, bool notify)
{
	memset(w, 0, sizeof(*w));
	w->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w->bgw_start_time = BgWorkerStart_RecoveryFinished;
	w->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w->bgw_library_name, BGW_MAXLEN, "peft");
	snprintf(w->bgw_function_name, BGW_MAXLEN, "peft_train_worker_main");
	snprintf(w->bgw_name, BGW_MAXLEN, "peft training job");
	snprintf(w->bgw_type, BGW_MAXLEN, "peft training");
	w->bgw_notify_pid = notify ? MyProcPid : 0;
	memcpy(w->bgw_extra, args, sizeof(WorkerArgs));
}

/* Register a worker; ERROR (never a silent loss) when no slot is free. */
static BackgroundWorkerHandle *
StartWorker(const WorkerArgs *args, bool notify)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *handle;

	StaticAssertStmt(sizeof(WorkerArgs) <= BGW_EXTRALEN, "WorkerArgs must fit bgw_extra");
	PrepareWorker(&w, args, notify);
	if (!RegisterDynamicBackgroundWorker(&w, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a training worker: no background worker slot is free"),
				 errhint("Raise max_worker_processes, or wait for other jobs to finish.")));
	return handle;
}

/* Pack the job fields into a WaitShared segment. */
static dsm_segment *
CreateWaitShared(char **fields)
{
	Size		len = 0;
	dsm_segment *seg;
	WaitShared *shared;
	char	   *p;

	for (int i = 0; i < JOB_NUM_FIELDS; i++)
		len += strlen(fields[i]) + 1;
	seg = dsm_create(offsetof(WaitShared, params) + len, 0);
	shared = dsm_segment_address(seg);
	shared->magic = PEFT_WORKER_MAGIC;
	pg_atomic_init_u32(&shared->stage, WAIT_STAGE_STARTING);
	pg_atomic_init_u32(&shared->cancel, 0);
	shared->job_id = 0;
	shared->status[0] = '\0';
	shared->error[0] = '\0';
	shared->params_len = len;
	p = shared->params;
	for (int i = 0; i < JOB_NUM_FIELDS; i++)
	{
		strcpy(p, fields[i]);
		p += strlen(fields[i]) + 1;
	}
	return seg;
}

/*
 * True when process worker waits for a lock that this backend holds,
 * directly or through other waiting processes (pg_blocking_pids, followed
 * transitively).
 */
static bool
WorkerBlockedByMe(int worker)
{
	MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext, "peft blockers",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(tmp);
	int			pids[64];
	int			n = 0;
	bool		found = false;

	pids[n++] = worker;
	for (int i = 0; i < n && !found; i++)
	{
		ArrayType  *blockers = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids,
																	 Int32GetDatum(pids[i])));
		int32	   *b = (int32 *) ARR_DATA_PTR(blockers);
		int			nb = ArrayGetNItems(ARR_NDIM(blockers), ARR_DIMS(blockers));

		for (int j = 0; j < nb && !found; j++)
		{
			bool		seen = false;

			found = b[j] == MyProcPid;
			for (int k = 0; k < n; k++)
				seen |= pids[k] == b[j];
			if (!seen && n < (int) lengthof(pids))
				pids[n++] = b[j];
		}
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(tmp);
	return found;
}

/*
 * ERROR when the job's worker waits for a lock held by this transaction.
 * The caller waits for the worker on a latch, which the deadlock detector
 * does not see, so such a cycle hung all of them for good: e.g. DROP
 * EXTENSION peft (or ALTER or VACUUM FULL of a catalog table, or DROP TABLE
 * of the data) queued behind this transaction's locks from its call-time
 * checks, with the worker queued behind it; or a lock this transaction took
 * on the data before calling.
 */
static void
CheckNotBlockingWorker(int64 job_id, int worker)
{
	if (worker > 0 && WorkerBlockedByMe(worker))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected: training job %lld waits for a lock held by this transaction",
						(long long) job_id),
				 errdetail("Its worker (PID %d) waits, directly or behind other sessions, for a lock "
						   "this transaction holds, while this transaction waits for the job.", worker),
				 errhint("Wait for jobs outside transactions that lock the data or peft's tables, "
						 "or call peft_train with wait => false.")));
}

/* Wait for a worker we started; a canceled wait cancels the job. */
static void
WaitForWorker(BackgroundWorkerHandle *handle, WaitShared *shared)
{
	pid_t		pid;

	PG_TRY();
	{
		for (int round = 1;; round++)
		{
			if (pg_atomic_read_u32(&shared->stage) == WAIT_STAGE_FINISHED)
				break;
			if (GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 200, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (round % 5 == 0)
				CheckNotBlockingWorker(shared->job_id, (int) pid);
		}
	}
	PG_CATCH();
	{
		pg_atomic_write_u32(&shared->cancel, 1);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* NOTICE of skipped rows; ERROR for a failed job (and, if canceled_is_error, a canceled one). */
static void
RaiseOutcome(int64 job_id, const char *status, const char *error, bool canceled_is_error,
			 int64 skipped)
{
	if (skipped > 0)
		ereport(NOTICE,
				(errmsg("training job %lld skipped " INT64_FORMAT " rows whose input or label is NULL",
						(long long) job_id, skipped),
				 errdetail("peft.jobs.metrics->'skipped_rows' records the count.")));
	if (strcmp(status, "failed") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("training job %lld failed: %s", (long long) job_id,
						error && *error ? error : "unknown error")));
	if (canceled_is_error && strcmp(status, "canceled") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("training job %lld was canceled", (long long) job_id)));
}

/* Raise a failed job's error in the caller, reading its row. */
static void
RaiseJobOutcome(int64 job_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};

	if (SPI_execute_with_args("SELECT status, error, coalesce((metrics->>'skipped_rows')::bigint, 0) "
							  "FROM peft.jobs WHERE id = $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld is not visible", (long long) job_id)));
	RaiseOutcome(job_id, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), false,
				 pg_strtoint64(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3)));
}

/*
 * The job's fields from peft_train's arguments, checked: adapter name, task,
 * method (canonical), and the options with the caller's peft.device and
 * peft.precision pinned (the worker parses them again with its own
 * settings; the caller's own keys win); the parsed options in *parsed.
 */
static PeftTask
TrainFields(FunctionCallInfo fcinfo, char **fields, PeftTrainConfig *parsed)
{
	PeftTask	task;
	const PeftEngineApi *engine = PeftEngine();
	Jsonb	   *options = PG_GETARG_JSONB_P(7);
	unsigned	methods;
	PeftError	err = {0};

	fields[JOB_ADAPTER] = text_to_cstring(PG_GETARG_TEXT_PP(0));
	fields[JOB_BASE_MODEL] = text_to_cstring(PG_GETARG_TEXT_PP(1));
	fields[JOB_DATA] = text_to_cstring(PG_GETARG_TEXT_PP(2));
	fields[JOB_INPUT] = text_to_cstring(PG_GETARG_TEXT_PP(3));
	fields[JOB_LABEL] = text_to_cstring(PG_GETARG_TEXT_PP(4));
	fields[JOB_TASK] = text_to_cstring(PG_GETARG_TEXT_PP(5));
	fields[JOB_METHOD] = text_to_cstring(PG_GETARG_TEXT_PP(6));
	fields[JOB_OWNER] = GetUserNameFromId(GetUserId(), false);
	fields[JOB_SEARCH_PATH] = pstrdup(GetConfigOption("search_path", false, false));

	CheckCatalogName("adapter", fields[JOB_ADAPTER]);
	if (peft_word_index(peft_task_words, fields[JOB_TASK]) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown task \"%s\"", fields[JOB_TASK]),
				 errhint("Use 'classification' or 'regression' (encoders), or 'generation' (decoders).")));
	task = (PeftTask) peft_word_index(peft_task_words, fields[JOB_TASK]);
	if (engine->parse_method(fields[JOB_METHOD], &methods, &err) != PEFT_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", err.message),
				 errhint("Methods: %s, or a combination such as lora+bitfit.",
						 MethodNames(engine))));
	fields[JOB_METHOD] = (char *) engine->method_name(methods, palloc(64), 64);
	options = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
												 DirectFunctionCall1(jsonb_in, CStringGetDatum(
													 psprintf("{\"device\": \"%s\", \"precision\": \"%s\"}",
															  peft_device_words[peft_device],
															  peft_precision_words[peft_precision]))),
												 JsonbPGetDatum(options)));
	fields[JOB_OPTIONS] = JsonbToCString(NULL, &options->root, VARSIZE(options));
	ParseTrainOptions(options, engine, methods, task, parsed);
	if (parsed->device == PEFT_DEVICE_CUDA && engine->cuda_device_count() == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("device \"cuda\" is not available"),
				 errdetail("This server's engine has no usable CUDA device."),
				 errhint("Use \"device\": \"auto\" or \"cpu\".")));
	return task;
}

/* Whether a canonical method name trains over a decoder: one method, not bitfit. */
static bool
DecoderMethod(const char *method)
{
	static const char *const names[] = {"lora", "dora", "ia3", "prompt", "prefix", "adapter"};

	for (int i = 0; i < lengthof(names); i++)
		if (strcmp(method, names[i]) == 0)
			return true;
	return false;
}

/*
 * What can be checked in the catalog and the data before a job is queued
 * (inside SPI): the model and its files, max_length against its positions,
 * the data readable by the caller with usable rows, the adapter name.
 */
static void
CheckTrainCatalog(char **fields, const PeftTrainConfig *parsed, PeftTask task)
{
	bool		decoder;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			max_position;

	CheckModelFiles(CatalogGetModel(fields[JOB_BASE_MODEL]));
	values[0] = CStringGetTextDatum(fields[JOB_BASE_MODEL]);
	SPI_execute_with_args("SELECT max_position, coalesce((config->>'decoder')::boolean, false) "
						  "FROM peft.models WHERE name = $1",
						  1, types, values, NULL, true, 1);
	max_position = atoi(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	/* decoders learn completions; encoders classify and regress: say so before any work */
	decoder = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2), "t") == 0;
	if (decoder && task != PEFT_TASK_GENERATION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" is a decoder: it trains with task => 'generation'",
						fields[JOB_BASE_MODEL]),
				 errhint("Put the prompts in input and the completions to learn in label.")));
	if (decoder && !DecoderMethod(fields[JOB_METHOD]))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("method \"%s\" does not train over a decoder", fields[JOB_METHOD]),
				 errdetail("An adapter over a decoder is one of lora, dora, ia3, prompt, prefix or adapter "
						   "(bitfit has no biases to train in a LLaMA model; combinations train on encoders)."),
				 errhint("Use method => 'lora'.")));
	if (!decoder && task == PEFT_TASK_GENERATION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model \"%s\" is an encoder: task 'generation' trains a decoder",
						fields[JOB_BASE_MODEL]),
				 errhint("Register a LLaMA-family GGUF file or folder with peft_register_model.")));
	if (parsed->max_length > max_position)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid option \"max_length\": %d exceeds the model's %d positions",
						parsed->max_length, max_position)));
	CheckData(fields[JOB_DATA], fields[JOB_INPUT], fields[JOB_LABEL], task, "data");
	if (parsed->validation_data)
		CheckData(parsed->validation_data, fields[JOB_INPUT], fields[JOB_LABEL], task,
				  "validation_data");
	CheckAdapterNameOwner(fields[JOB_ADAPTER], GetUserId());
}

/*
 * wait => false: record the job in the caller's transaction and start its
 * worker, which waits for that transaction to end; returns the job id.
 */
static int64
StartJob(char **fields, WorkerArgs *args)
{
	int64		job_id = CatalogInsertJob(fields);

	args->job_id = job_id;
	args->caller_xid = GetTopTransactionId();
	SPI_finish();
	(void) StartWorker(args, false);
	return job_id;
}

/*
 * wait => true: the worker records the job and trains while the caller
 * waits; returns the job id, or raises the job's error.
 */
static int64
RunJobAndWait(char **fields, WorkerArgs *args)
{
	dsm_segment *seg = CreateWaitShared(fields);
	WaitShared *shared = dsm_segment_address(seg);
	BackgroundWorkerHandle *handle;
	pid_t		pid;
	int64		job_id;

	args->shared = dsm_segment_handle(seg);
	handle = StartWorker(args, true);
	if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("the training worker could not start")));
	WaitForWorker(handle, shared);
	job_id = shared->job_id;
	if (pg_atomic_read_u32(&shared->stage) != WAIT_STAGE_FINISHED || job_id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the training worker exited before finishing the job"),
				 errhint("See the server log.")));
	/* the outcome travels through shared memory: the caller's snapshot may predate the worker's commits */
	RaiseOutcome(job_id, shared->status, shared->error, true, shared->skipped);
	dsm_detach(seg);
	SPI_finish();
	return job_id;
}

/*
 * peft_train(adapter, base_model, data, input, label, task, method, options, wait)
 * RETURNS bigint: the job id.
 */
Datum
peft_train(PG_FUNCTION_ARGS)
{
	char	   *fields[JOB_NUM_FIELDS];
	bool		wait = PG_GETARG_BOOL(8);
	PeftTrainConfig parsed;
	PeftTask	task;
	WorkerArgs	args = {0};

	PeftRequirePrimary("peft_train");
	task = TrainFields(fcinfo, fields, &parsed);
	SPI_connect();
	CheckTrainCatalog(fields, &parsed, task);
	args.magic = PEFT_WORKER_MAGIC;
	args.database = MyDatabaseId;
	args.owner = ExtensionOwner();
	args.caller = GetUserId();
	PG_RETURN_INT64(wait ? RunJobAndWait(fields, &args) : StartJob(fields, &args));
}

/* Terminal job statuses. */
static bool
IsFinished(const char *status)
{
	return strcmp(status, "succeeded") == 0 || strcmp(status, "failed") == 0 ||
		strcmp(status, "canceled") == 0;
}

/* peft_wait(job) RETURNS peft.jobs: block until the job ends. */
Datum
peft_wait(PG_FUNCTION_ARGS)
{
	int64		job_id = PG_GETARG_INT64(0);
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};
	bool		isnull;
	Datum		result;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("peft_wait cannot see a job's progress in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errhint("Call it in a READ COMMITTED transaction.")));
	SPI_connect();
	if (SPI_execute_with_args("SELECT xmin FROM peft.job_rows WHERE id = $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.jobs");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) job_id)));
	if (TransactionIdIsCurrentTransactionId(
											DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
																				SPI_tuptable->tupdesc, 1, &isnull))))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job %lld was created by this transaction and cannot start before it commits",
						(long long) job_id),
				 errhint("Commit first, or call peft_train with wait => true.")));
	for (int round = 1;; round++)
	{
		char	   *status;
		char	   *worker;

		/* read_only = false: each poll takes a fresh snapshot */
		if (SPI_execute_with_args("SELECT status, worker_pid FROM peft.jobs WHERE id = $1",
								  1, types, values, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job %lld does not exist", (long long) job_id)));
		status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		worker = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		if (IsFinished(status))
			break;
		if (round % 5 == 0 && worker != NULL)
			CheckNotBlockingWorker(job_id, atoi(worker));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 200, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	RaiseJobOutcome(job_id);
	SPI_execute_with_args("SELECT * FROM peft.jobs WHERE id = $1", 1, types, values, NULL, false, 1);
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc));
	SPI_finish();
	PG_RETURN_DATUM(result);
}

/* peft_cancel(job) RETURNS boolean: ask a queued or running job to stop. */
Datum
peft_cancel(PG_FUNCTION_ARGS)
{
	int64		job_id = PG_GETARG_INT64(0);
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job_id)};
	char	   *status;
	OwnerContext octx;

	PeftRequirePrimary("peft_cancel");

	SPI_connect();
	if (SPI_execute_with_args("SELECT status FROM peft.jobs WHERE id = $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.jobs");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job %lld does not exist", (long long) job_id)));
	status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (IsFinished(status))
	{
		SPI_finish();
		PG_RETURN_BOOL(false);
	}
	CatalogAsOwner(&octx);
	SPI_execute_with_args("UPDATE peft.job_rows SET cancel_requested = true WHERE id = $1",
						  1, types, values, NULL, false, 0);
	CatalogAsCaller(&octx);
	SPI_finish();
	PG_RETURN_BOOL(true);
}

/* peft._worker_alive(pid, started): is that worker process still running? */
Datum
peft_worker_alive(PG_FUNCTION_ARGS)
{
	int			pid;
	TimestampTz started;
	int			n;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	pid = PG_GETARG_INT32(0);
	started = PG_GETARG_TIMESTAMPTZ(1);
	/* a fresh look each call: peft_wait polls within one transaction */
	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);

		if (local && local->backendStatus.st_procpid == pid &&
			local->backendStatus.st_proc_start_timestamp == started)
			PG_RETURN_BOOL(true);
	}
	PG_RETURN_BOOL(false);
}

/*
 * peft._server_started(): when the server last started or, after a crash
 * restart, reinitialised.  A queued job with no worker recorded and created
 * before that can no longer start: dynamic workers do not survive either.
 * pg_postmaster_start_time() alone is not enough: it keeps the postmaster's
 * start across a crash restart (restart_after_crash), so such a job showed
 * "queued" forever and peft_wait on it never returned.  The checkpointer is
 * restarted with every reinitialisation (any other exit of it is itself a
 * crash), before connections are accepted again, so its start time is used.
 */
Datum
peft_server_started(PG_FUNCTION_ARGS)
{
	TimestampTz started = PgStartTime;
	int			n;

	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);

		if (local && local->backendStatus.st_backendType == B_CHECKPOINTER &&
			local->backendStatus.st_proc_start_timestamp > started)
			started = local->backendStatus.st_proc_start_timestamp;
	}
	PG_RETURN_TIMESTAMPTZ(started);
}
