/*
 * scoring.c - peft_evaluate and peft_score: an adapter over the rows of a
 * table or query, read as the caller in batches through a cursor.
 *
 * Both read data the way peft_train does (a table or view name, or one
 * SELECT; DataQuery in jobs.c), so what trains on a table evaluates and
 * scores on it too, with the caller's privileges and row security.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "inference.h"
#include "peft.h"
#include "worker.h"

/* Rows fetched from the data cursor at a time (then predicted in engine batches). */
#define SCORE_FETCH 1000

PG_FUNCTION_INFO_V1(peft_evaluate);
PG_FUNCTION_INFO_V1(peft_score);

/* Called with each fetched batch: texts, their second column (label or key), predictions. */
typedef void (*ScoreBatchFn) (void *state, int n, char **texts, char **second,
							  char **labels, double *scores);

/*
 * Predict every row of query (input text, second column text) through a,
 * SCORE_FETCH rows at a time, handing each batch to fn.  Inside SPI.
 */
static void ScoreFetched(CachedAdapter *a, Portal cursor, MemoryContext batch, ScoreBatchFn fn,
						 void *state);

static void
ScoreRows(CachedAdapter *a, const char *query, ScoreBatchFn fn, void *state)
{
	SPIPlanPtr	plan = SPI_prepare(query, 0, NULL);
	Portal		cursor;
	MemoryContext batch;

	if (plan == NULL || !SPI_is_cursor_plan(plan))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("data must be a table, a view or a single SELECT query")));
	cursor = SPI_cursor_open(NULL, plan, NULL, NULL, true);
	batch = AllocSetContextCreate(CurrentMemoryContext, "peft scoring batch", ALLOCSET_DEFAULT_SIZES);
	/* the query may call peft functions, whose calls must not let a go */
	AdapterCacheHold(a, true);
	PG_TRY();
	{
		ScoreFetched(a, cursor, batch, fn, state);
	}
	PG_FINALLY();
	{
		AdapterCacheHold(a, false);
	}
	PG_END_TRY();
	MemoryContextDelete(batch);
	SPI_cursor_close(cursor);
}

/* The fetch loop of ScoreRows: SCORE_FETCH rows at a time through a, each batch to fn. */
static void
ScoreFetched(CachedAdapter *a, Portal cursor, MemoryContext batch, ScoreBatchFn fn, void *state)
{
	char	   *texts[SCORE_FETCH];
	char	   *second[SCORE_FETCH];
	char	   *labels[SCORE_FETCH];
	double		scores[SCORE_FETCH];

	for (;;)
	{
		MemoryContext old;
		int			n;

		CHECK_FOR_INTERRUPTS();
		SPI_cursor_fetch(cursor, true, SCORE_FETCH);
		n = (int) SPI_processed;
		if (n == 0)
			break;
		old = MemoryContextSwitchTo(batch);
		for (int i = 0; i < n; i++)
		{
			texts[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			second[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}
		PredictTexts(a, texts, n, labels, scores);
		fn(state, n, texts, second, labels, scores);
		MemoryContextSwitchTo(old);
		SPI_freetuptable(SPI_tuptable);
		MemoryContextReset(batch);
	}
}

/* Running counts of an evaluation. */
typedef struct EvalState
{
	CachedAdapter *a;
	int64		rows;
	int64		skipped;		/* NULL input or label */
	int64		unknown;		/* classification: a label the adapter does not know */
	int64	   *confusion;		/* [truth * K + predicted] */
	double		sse;			/* regression */
	double		sae;
	double		sum_y;
	double		sum_y2;
} EvalState;

/* The index of label among a's labels, or -1. */
static int
LabelIndex(const CachedAdapter *a, const char *label)
{
	for (int k = 0; k < a->nlabels; k++)
		if (strcmp(a->labels[k], label) == 0)
			return k;
	return -1;
}

/* Tally one batch of an evaluation. */
static void
EvalBatch(void *state, int n, char **texts, char **truth, char **labels, double *scores)
{
	EvalState  *s = (EvalState *) state;

	for (int i = 0; i < n; i++)
	{
		if (texts[i] == NULL || truth[i] == NULL)
		{
			s->skipped++;
			continue;
		}
		s->rows++;
		if (s->a->regression)
		{
			double		y = strtod(truth[i], NULL);
			double		d = scores[i] - y;

			s->sse += d * d;
			s->sae += fabs(d);
			s->sum_y += y;
			s->sum_y2 += y * y;
		}
		else
		{
			int			t = LabelIndex(s->a, truth[i]);

			if (t < 0)
				s->unknown++;
			else
				s->confusion[t * s->a->nlabels + LabelIndex(s->a, labels[i])]++;
		}
	}
}

/* Classification metrics as JSON text: accuracy, macro-F1, per class, the confusion matrix. */
static char *
ClassificationJson(const EvalState *s)
{
	int			K = s->a->nlabels;
	StringInfoData classes;
	StringInfoData names;
	StringInfoData matrix;
	int64		correct = 0;
	double		f1_sum = 0;
	int			present = 0;

	initStringInfo(&classes);
	initStringInfo(&names);
	initStringInfo(&matrix);
	for (int k = 0; k < K; k++)
	{
		int64		tp = s->confusion[k * K + k];
		int64		support = 0;
		int64		predicted = 0;
		double		f1;

		for (int j = 0; j < K; j++)
		{
			support += s->confusion[k * K + j];
			predicted += s->confusion[j * K + k];
		}
		correct += tp;
		f1 = tp ? 2.0 * tp / (support + predicted) : 0;
		/* macro-F1 over the classes present in labels or predictions (as sklearn) */
		if (support + predicted > 0)
		{
			f1_sum += f1;
			present++;
		}
		appendStringInfoString(&classes, k ? ", " : "");
		escape_json(&classes, s->a->labels[k]);
		appendStringInfo(&classes, ": {\"precision\": %.6g, \"recall\": %.6g, \"f1\": %.6g, "
						 "\"support\": " INT64_FORMAT "}",
						 predicted ? (double) tp / predicted : 0, support ? (double) tp / support : 0,
						 f1, support);
		appendStringInfoString(&names, k ? ", " : "");
		escape_json(&names, s->a->labels[k]);
		appendStringInfo(&matrix, "%s[", k ? ", " : "");
		for (int j = 0; j < K; j++)
			appendStringInfo(&matrix, "%s" INT64_FORMAT, j ? ", " : "", s->confusion[k * K + j]);
		appendStringInfoChar(&matrix, ']');
	}
	return psprintf("{\"rows\": " INT64_FORMAT ", \"accuracy\": %.6g, \"macro_f1\": %.6g, "
					"\"classes\": {%s}, \"confusion\": {\"labels\": [%s], \"matrix\": [%s]}, "
					"\"unknown_labels\": " INT64_FORMAT ", \"skipped_rows\": " INT64_FORMAT "}",
					s->rows, s->rows ? (double) correct / s->rows : 0, present ? f1_sum / present : 0,
					classes.data, names.data, matrix.data, s->unknown, s->skipped);
}

/* Regression metrics as JSON text: MSE, MAE, R^2. */
static char *
RegressionJson(const EvalState *s)
{
	double		n = (double) s->rows;
	double		mean = n ? s->sum_y / n : 0;
	double		sst = s->sum_y2 - n * mean * mean;

	return psprintf("{\"rows\": " INT64_FORMAT ", \"mse\": %.6g, \"mae\": %.6g, \"r2\": %.6g, "
					"\"skipped_rows\": " INT64_FORMAT "}",
					s->rows, n ? s->sse / n : 0, n ? s->sae / n : 0, sst > 0 ? 1.0 - s->sse / sst : 0,
					s->skipped);
}

/*
 * peft_evaluate(adapter, data, input DEFAULT 'input', label DEFAULT
 * 'label', version DEFAULT NULL, record DEFAULT false) RETURNS jsonb: the
 * metrics of the adapter's task (the active version, or version) on the
 * rows of data, read as the caller; rows with a NULL input or label are
 * skipped and counted.  record appends them, with the data, to the
 * version's metrics->'evaluations'.
 */
Datum
peft_evaluate(PG_FUNCTION_ARGS)
{
	EvalState	s = {0};
	char	   *result;
	bool		record;
	char	   *data;

	PeftRequireArg(fcinfo, 0, "adapter");
	PeftRequireArg(fcinfo, 1, "data");
	PeftRequireArg(fcinfo, 2, "input");
	PeftRequireArg(fcinfo, 3, "label");
	/* a catalog created by a development build of 0.2.0 declares no record argument */
	if (PG_NARGS() > 5)
		PeftRequireArg(fcinfo, 5, "record");
	record = PG_NARGS() > 5 && PG_GETARG_BOOL(5);
	if (record)
		PeftRequirePrimary("peft_evaluate(record => true)");
	data = text_to_cstring(PG_GETARG_TEXT_PP(1));
	SPI_connect();
	AdapterCacheBeginCall();
	s.a = GetAdapterVersion(text_to_cstring(PG_GETARG_TEXT_PP(0)),
							PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4));
	if (!s.a->regression && s.a->nlabels == 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("adapter \"%s\" has no prediction head (an embedding adapter)", s.a->name)));
	s.confusion = palloc0(sizeof(int64) * (s.a->nlabels ? s.a->nlabels * s.a->nlabels : 1));
	ScoreRows(s.a, DataQuery(data, text_to_cstring(PG_GETARG_TEXT_PP(2)),
							 text_to_cstring(PG_GETARG_TEXT_PP(3)), s.a->regression),
			  EvalBatch, &s);
	result = s.a->regression ? RegressionJson(&s) : ClassificationJson(&s);
	if (record)
	{
		StringInfoData entry;

		initStringInfo(&entry);
		appendStringInfoString(&entry, "{\"data\": ");
		escape_json(&entry, data);
		appendStringInfo(&entry, ", \"at\": \"%s\", \"metrics\": %s}",
						 timestamptz_to_str(GetCurrentTransactionStartTimestamp()), result);
		CatalogRecordEvaluation(s.a->name, s.a->version, entry.data);
	}
	SPI_finish();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(result)));
}

/* The tuplestore peft_score writes to. */
typedef struct ScoreState
{
	ReturnSetInfo *rsinfo;
} ScoreState;

/* Write one batch of peft_score's rows. */
static void
ScoreBatch(void *state, int n, char **texts, char **keys, char **labels, double *scores)
{
	ScoreState *s = (ScoreState *) state;

	for (int i = 0; i < n; i++)
	{
		Datum		values[3] = {0};
		bool		nulls[3] = {keys[i] == NULL, labels[i] == NULL, texts[i] == NULL};

		if (keys[i])
			values[0] = CStringGetTextDatum(keys[i]);
		if (labels[i])
			values[1] = CStringGetTextDatum(labels[i]);
		values[2] = Float8GetDatum(scores[i]);
		tuplestore_putvalues(s->rsinfo->setResult, s->rsinfo->setDesc, values, nulls);
	}
}

/*
 * peft_score(adapter, data, key, input DEFAULT 'input') RETURNS TABLE(key
 * text, label text, score float8): every row of data, read as the caller,
 * predicted in batches, with its key column as text (a NULL input: NULL
 * label and score).
 */
Datum
peft_score(PG_FUNCTION_ARGS)
{
	ScoreState	s = {(ReturnSetInfo *) fcinfo->resultinfo};
	CachedAdapter *a;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	AdapterCacheBeginCall();
	a = GetAdapterVersion(text_to_cstring(PG_GETARG_TEXT_PP(0)), 0);
	ScoreRows(a, DataQuery(text_to_cstring(PG_GETARG_TEXT_PP(1)),
						   text_to_cstring(PG_GETARG_TEXT_PP(3)),
						   text_to_cstring(PG_GETARG_TEXT_PP(2)), false),
			  ScoreBatch, &s);
	SPI_finish();
	return (Datum) 0;
}
