/*
 * inference.c - peft_predict and peft_embed, with a per-backend cache of
 * loaded models and active adapters.
 *
 * A model is mapped once per backend (the weights are a read-only mapping
 * shared with every other process through the page cache) and reloaded if
 * its catalog row changes.  An adapter is cached by (name, version, row
 * version): each call reads the active version's small catalog fields, and
 * only when they changed reads and validates the weights again.  The
 * adapters are kept in least-recently-used order up to
 * peft.adapter_cache_size bytes (what each holds: parameters and the
 * buffers its forwards grew); the adapters a call is using are never let
 * go during it, so one call over more adapters than fit holds them all
 * until the next call trims the cache.  Catalog lookups run as the caller,
 * so row-level security decides which adapters a role may use.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "inference.h"
#include "models.h"
#include "peft.h"
#include "serve.h"

#define MAX_CACHED_MODELS 4
/* Rows per engine call; interrupts are checked between calls. */
#define PREDICT_CHUNK 32
/* Rows per engine call of a mixed-adapter call (larger: rows of one adapter meet in a batch). */
#define MIXED_CHUNK 1024

int			peft_adapter_cache_size = 64 * 1024;	/* kB */

static CachedModel models[MAX_CACHED_MODELS];
/* The cached adapters (each its own allocation, so callers' pointers stay valid), unordered. */
static CachedAdapter **adapters = NULL;
static int	nadapters = 0;
static int	cap_adapters = 0;
static uint64 use_clock = 0;
/* The current call (AdapterCacheBeginCall): the adapters it used are not let go. */
static uint64 call_clock = 1;

static void TrimAdapterCache(void);

/* Close a cached adapter and forget it (the array's last entry takes its place). */
static void
DropCachedAdapter(CachedAdapter *a)
{
	for (int i = 0; i < nadapters; i++)
		if (adapters[i] == a)
		{
			adapters[i] = adapters[--nadapters];
			break;
		}
	if (a->handle)
		PeftEngine()->adapter_close(a->handle);
	for (int i = 0; i < a->nlabels; i++)
		pfree(a->labels[i]);
	if (a->labels)
		pfree(a->labels);
	pfree(a);
}

/* Close a cached model, and every adapter built on it. */
static void
DropCachedModel(CachedModel *m)
{
	for (int i = nadapters - 1; i >= 0; i--)
		if (i < nadapters && adapters[i]->model == m)
			DropCachedAdapter(adapters[i]);
	if (m->handle)
		PeftEngine()->model_close(m->handle);
	memset(m, 0, sizeof(*m));
}

/* Whether the current call uses a (looked it up) or a caller holds it. */
static bool
AdapterInUse(const CachedAdapter *a)
{
	return a->pinned_call == call_clock || a->held > 0;
}

/*
 * ERROR when the current call uses an adapter over m: m cannot be closed
 * under it (re-registered by another session meanwhile, or pushed out by
 * more models than the cache holds).  Retryable: the next call reloads.
 */
static void
RequireModelUnused(const CachedModel *m)
{
	if (m->held > 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("model \"%s\" changed or was unloaded while it was decoding", m->name),
				 errhint("Run the statement again once the decoding under way has ended.")));
	for (int i = 0; i < nadapters; i++)
		if (adapters[i]->model == m && AdapterInUse(adapters[i]))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("model \"%s\" changed or was unloaded while this call was using it", m->name),
					 errhint("Run the statement again; a call uses at most %d models.", MAX_CACHED_MODELS)));
}

/*
 * A new call begins: the adapters it uses from now on are kept until it
 * ends; what the last calls left beyond peft.adapter_cache_size goes now.
 */
void
AdapterCacheBeginCall(void)
{
	call_clock++;
	if (nadapters > 0)
		TrimAdapterCache();
}

/* Bytes the cached adapters hold now (their buffers grow with the batches they compute). */
static size_t
AdapterCacheBytes(void)
{
	size_t		total = 0;

	for (int i = 0; i < nadapters; i++)
		total += PeftEngine()->adapter_memory(adapters[i]->handle);
	return total;
}

/*
 * Let go of the least recently used adapters until the cache holds at
 * most peft.adapter_cache_size, sparing those the current call uses.
 */
static void
TrimAdapterCache(void)
{
	size_t		limit = (size_t) peft_adapter_cache_size * 1024;
	size_t		total = AdapterCacheBytes();

	while (total > limit)
	{
		CachedAdapter *oldest = NULL;

		for (int i = 0; i < nadapters; i++)
			if (!AdapterInUse(adapters[i]) &&
				(oldest == NULL || adapters[i]->last_used < oldest->last_used))
				oldest = adapters[i];
		if (oldest == NULL)
			break;
		total -= Min(total, PeftEngine()->adapter_memory(oldest->handle));
		DropCachedAdapter(oldest);
	}
}

/* Keep a newly loaded adapter (a copy of *loaded in TopMemoryContext), then trim. */
static CachedAdapter *
AddCachedAdapter(const CachedAdapter *loaded)
{
	CachedAdapter *a = MemoryContextAlloc(TopMemoryContext, sizeof(CachedAdapter));

	if (nadapters == cap_adapters)
	{
		int			grown = cap_adapters ? cap_adapters * 2 : 16;

		adapters = adapters ? repalloc(adapters, sizeof(CachedAdapter *) * grown) :
			MemoryContextAlloc(TopMemoryContext, sizeof(CachedAdapter *) * grown);
		cap_adapters = grown;
	}
	*a = *loaded;
	adapters[nadapters++] = a;
	TrimAdapterCache();
	return a;
}

/* Hold or release an adapter across SQL that may call peft functions itself (inference.h). */
void
AdapterCacheHold(CachedAdapter *a, bool hold)
{
	a->held += hold ? 1 : -1;
}

PG_FUNCTION_INFO_V1(peft_adapter_cache);

/*
 * peft_adapter_cache() RETURNS TABLE(adapter text, version int, bytes
 * bigint): the adapters this connection keeps parsed, most recently used
 * first, and the memory each holds (the engine is not loaded for it).
 */
Datum
peft_adapter_cache(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CachedAdapter **order = palloc(sizeof(CachedAdapter *) * (nadapters + 1));

	InitMaterializedSRF(fcinfo, 0);
	memcpy(order, adapters, sizeof(CachedAdapter *) * nadapters);
	for (int i = 1; i < nadapters; i++)	/* newest first: insertion sort by last use */
		for (int j = i; j > 0 && order[j]->last_used > order[j - 1]->last_used; j--)
		{
			CachedAdapter *t = order[j];

			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	for (int i = 0; i < nadapters; i++)
	{
		Datum		values[3] = {CStringGetTextDatum(order[i]->name), Int32GetDatum(order[i]->version),
		Int64GetDatum((int64) PeftEngine()->adapter_memory(order[i]->handle))};
		bool		nulls[3] = {false, false, false};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Hold or release a model across calls (inference.h). */
void
ModelCacheHold(CachedModel *m, bool hold)
{
	m->held += hold ? 1 : -1;
}

/* The loaded model of a registered name, loading it (again) when needed. */
CachedModel *
GetModel(const char *name)
{
	CatalogModel *row = CatalogGetModel(name);
	CachedModel *slot = NULL;
	PeftError	err = {0};

	/* every call, cached or not: a file changed in place changes a live mapping too */
	CheckModelFiles(row);

	for (int i = 0; i < MAX_CACHED_MODELS; i++)
	{
		CachedModel *m = &models[i];

		if (m->handle && strcmp(m->name, name) == 0)
		{
			if (strcmp(m->checksum, row->checksum) == 0 && strcmp(m->path, row->path) == 0)
			{
				m->last_used = ++use_clock;
				return m;
			}
			RequireModelUnused(m);
			DropCachedModel(m);	/* re-registered: reload */
		}
	}
	for (int i = 0; i < MAX_CACHED_MODELS; i++)
		if (slot == NULL || models[i].handle == NULL ||
			(slot->handle && models[i].last_used < slot->last_used))
			slot = &models[i];
	if (slot->handle)
	{
		RequireModelUnused(slot);
		DropCachedModel(slot);
	}
	if (PeftEngine()->model_open(row->path, &slot->handle, &slot->info, &err) != PEFT_OK)
	{
		slot->handle = NULL;
		PeftRaiseEngineError(&err);
	}
	strlcpy(slot->name, name, sizeof(slot->name));
	strlcpy(slot->checksum, row->checksum, sizeof(slot->checksum));
	strlcpy(slot->path, row->path, sizeof(slot->path));
	slot->last_used = ++use_clock;
	return slot;
}

/*
 * The engine handle of a registered model (loaded and cached in this
 * backend), for a call that uses no cached adapter (a call of its own:
 * the adapters earlier calls used may be let go).
 */
PeftModelHandle *
PeftModelFor(const char *name)
{
	AdapterCacheBeginCall();
	return GetModel(name)->handle;
}

/*
 * Read and validate the active version of an adapter into slot; merged
 * folds LoRA, DoRA and (IA)^3 into the weights (peft_merge).  An
 * embedding adapter (imported without a head) has no labels.
 */
static void
LoadAdapter(CachedAdapter *slot, const char *name, int version, const char *row_version,
			const char *model_name, const char *task, ArrayType *labels, bool merged)
{
	bool		regression = strcmp(task, "regression") == 0;
	bool		generation = strcmp(task, "generation") == 0;
	bool		embedding = strcmp(task, "embedding") == 0 || generation;
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		values[2] = {CStringGetTextDatum(name), Int32GetDatum(version)};
	bool		isnull;
	char	   *config;
	bytea	   *weights;
	Datum	   *elems = NULL;
	bool	   *nulls = NULL;
	int			nelems = 0;
	PeftError	err = {0};
	CachedModel *model = GetModel(model_name);
	MemoryContext old;

	if (SPI_execute_with_args("SELECT config::text, weights FROM peft.adapters "
							  "WHERE name = $1 AND version = $2",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "adapter \"%s\" version %d vanished", name, version);
	config = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	weights = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (labels)
		deconstruct_array(labels, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (!regression && !embedding && nelems < 2)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("adapter \"%s\" version %d has fewer than two labels", name, version)));

	if (PeftEngine()->adapter_open(model->handle, config, strlen(config),
								   (const uint8_t *) VARDATA_ANY(weights),
								   VARSIZE_ANY_EXHDR(weights),
								   regression ? PEFT_TASK_REGRESSION :
								   generation ? PEFT_TASK_GENERATION : PEFT_TASK_CLASSIFICATION,
								   regression ? 1 : embedding ? 0 : nelems, &slot->handle,
								   &err) != PEFT_OK ||
		(merged && PeftEngine()->adapter_merge(slot->handle, &err) != PEFT_OK))
	{
		if (slot->handle)
			PeftEngine()->adapter_close(slot->handle);
		slot->handle = NULL;
		ereport(ERROR,
				(errcode(err.code == PEFT_ERR_NOMEM ? ERRCODE_OUT_OF_MEMORY : ERRCODE_DATA_CORRUPTED),
				 errmsg("adapter \"%s\" version %d cannot be loaded: %s", name, version, err.message)));
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	strlcpy(slot->name, name, sizeof(slot->name));
	slot->version = version;
	strlcpy(slot->row_version, row_version, sizeof(slot->row_version));
	slot->model = model;
	slot->regression = regression;
	slot->nlabels = regression || embedding ? 0 : nelems;
	slot->labels = slot->nlabels ? palloc(sizeof(char *) * nelems) : NULL;
	for (int i = 0; i < slot->nlabels; i++)
		slot->labels[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
	MemoryContextSwitchTo(old);
}

/* The active version of an adapter the caller may use, cached. */
static CachedAdapter *
GetActiveAdapter(const char *name)
{
	return GetAdapterVersion(name, 0);
}

/*
 * The catalog row of version wanted (0: the active one) of an adapter, as
 * the caller sees it (row-level security decides); ERROR when it cannot.
 * Inside SPI.  Loads nothing: a serving caller (peft.serve) stops here.
 */
void
LookupAdapterVersion(const char *name, int wanted, AdapterRow *row)
{
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		values[2] = {CStringGetTextDatum(name), Int32GetDatum(wanted)};
	bool		isnull;
	Datum		d;

	/* max_length as trained: a number in range, or the model's (an import may carry anything) */
	if (SPI_execute_with_args("SELECT version, xmin::text, base_model, task, labels, merged, "
							  "CASE WHEN jsonb_typeof(metrics->'max_length') = 'number' "
							  "AND (metrics->>'max_length')::numeric BETWEEN 2 AND 1000000 "
							  "THEN round((metrics->>'max_length')::numeric)::int ELSE 0 END "
							  "FROM peft.adapters WHERE name = $1 AND "
							  "CASE WHEN $2 = 0 THEN active ELSE version = $2 END",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.adapters");
	if (SPI_processed == 0)
		CatalogVersionMissing(name, wanted);
	row->version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	row->row_version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	row->model_name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	row->task = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull);
	row->labels = isnull ? NULL : DatumGetArrayTypePCopy(d);
	row->merged = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull));
	row->max_length = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull));
}

/* Version version (0: the active one) of an adapter the caller may use, cached. */
CachedAdapter *
GetAdapterVersion(const char *name, int wanted)
{
	AdapterRow	row;
	int			version;
	char	   *row_version;
	char	   *model_name;
	char	   *task;
	bool		merged;
	int			max_length;
	ArrayType  *labels;
	CachedAdapter loaded = {0};

	LookupAdapterVersion(name, wanted, &row);
	version = row.version;
	row_version = row.row_version;
	model_name = row.model_name;
	task = row.task;
	labels = row.labels;
	merged = row.merged;
	max_length = row.max_length;

	for (int i = nadapters - 1; i >= 0; i--)
	{
		CachedAdapter *a = adapters[i];

		/* other versions of the name stay cached (an evaluation of an old one) */
		if (strcmp(a->name, name) == 0 && (wanted == 0 || a->version == wanted))
		{
			if (a->version == version && strcmp(a->row_version, row_version) == 0)
			{
				/* the model may have been re-registered under it (which drops a) */
				CachedModel *m = GetModel(model_name);

				if (i < nadapters && adapters[i] == a && a->model == m)
				{
					a->last_used = ++use_clock;
					a->pinned_call = call_clock;
					return a;
				}
			}
			else if (!AdapterInUse(a))
				DropCachedAdapter(a);	/* in use: stale, let go by a later trim */
		}
	}
	LoadAdapter(&loaded, name, version, row_version, model_name, task, labels, merged);
	loaded.max_length = max_length;
	loaded.last_used = ++use_clock;
	loaded.pinned_call = call_clock;
	return AddCachedAdapter(&loaded);
}

/*
 * Tell the engine where this session's predictions compute: peft.device,
 * peft.precision and peft.device_idle_release as they are now (cheap; a
 * changed device moves the cached networks on their next use).
 */
static void
ConfigureInference(void)
{
	PeftEngineSettings settings = {0};	/* batch_size 0: the engine's */

	settings.device = (PeftDevice) peft_device;
	settings.precision = (PeftPrecision) peft_precision;
	settings.idle_release_seconds = peft_device_idle_release;
	PeftEngine()->configure(&settings);
}

/* A row of head outputs of a: the most probable label and its probability, or the value. */
static void
RowLabel(const CachedAdapter *a, const float *row, char **label, double *score)
{
	int			best = 0;

	if (a->regression)
	{
		*score = row[0];
		return;
	}
	for (int k = 1; k < a->nlabels; k++)
		if (row[k] > row[best])
			best = k;
	*label = a->labels[best];
	*score = row[best];
}

/* Predict texts[0..n) through a, filling label/score outputs (NULL text: NULL row). */
void
PredictTexts(CachedAdapter *a, char **texts, int n, char **labels, double *scores)
{
	int			K = a->regression ? 1 : a->nlabels;
	float	   *out = palloc(sizeof(float) * PREDICT_CHUNK * K);
	const char *batch[PREDICT_CHUNK];
	size_t		lengths[PREDICT_CHUNK];
	int			map[PREDICT_CHUNK];
	PeftError	err = {0};

	ConfigureInference();
	for (int first = 0; first < n;)
	{
		int			count = 0;

		CHECK_FOR_INTERRUPTS();
		/* gather up to PREDICT_CHUNK non-NULL texts */
		for (; first < n && count < PREDICT_CHUNK; first++)
		{
			labels[first] = NULL;
			if (texts[first] == NULL)
				continue;
			batch[count] = texts[first];
			lengths[count] = strlen(texts[first]);
			map[count++] = first;
		}
		if (count == 0)
			continue;
		if (PeftEngine()->predict(a->handle, batch, lengths, count, a->max_length, out, &err) != PEFT_OK)
			PeftRaiseEngineError(&err);
		for (int i = 0; i < count; i++)
			RowLabel(a, out + (size_t) i * K, &labels[map[i]], &scores[map[i]]);
	}
	pfree(out);
	TrimAdapterCache();			/* the batch's buffers grew: back within the size */
}

/* ERROR unless a has a prediction head (an adapter over an encoder, trained to classify or regress). */
static void
RequireHead(const CachedAdapter *a)
{
	if (a->model->info.decoder)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("adapter \"%s\" is over a decoder (%s): peft_predict needs one over an encoder",
						a->name, a->model->name),
				 errhint("Use peft_generate with it.")));
	if (!a->regression && a->nlabels == 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("adapter \"%s\" has no prediction head (an embedding adapter)", a->name)));
}

/*
 * Predict texts[0..n), row i through a[i], in shared forward passes
 * (inference.h): MIXED_CHUNK rows per engine call, interrupts checked
 * between calls.
 */
void
PredictMixed(CachedAdapter **a, char **texts, int n, char **labels, double *scores)
{
	int			ldo = 1;
	int			chunk = Min(n, MIXED_CHUNK);
	PeftAdapterHandle **handles = palloc(sizeof(PeftAdapterHandle *) * (chunk + 1));
	const char **batch = palloc(sizeof(char *) * (chunk + 1));
	size_t	   *lengths = palloc(sizeof(size_t) * (chunk + 1));
	int		   *max_lengths = palloc(sizeof(int) * (chunk + 1));
	int		   *map = palloc(sizeof(int) * (chunk + 1));
	float	   *out;
	PeftError	err = {0};

	for (int i = 0; i < n; i++)
	{
		RequireHead(a[i]);
		ldo = Max(ldo, a[i]->regression ? 1 : a[i]->nlabels);
	}
	out = palloc(sizeof(float) * (chunk + 1) * ldo);
	ConfigureInference();
	for (int first = 0; first < n;)
	{
		int			count = 0;

		CHECK_FOR_INTERRUPTS();
		for (; first < n && count < chunk; first++)
		{
			labels[first] = NULL;
			if (texts[first] == NULL)
				continue;
			handles[count] = a[first]->handle;
			batch[count] = texts[first];
			lengths[count] = strlen(texts[first]);
			max_lengths[count] = a[first]->max_length;
			map[count++] = first;
		}
		if (count == 0)
			continue;
		if (PeftEngine()->predict_mixed(handles, batch, lengths, max_lengths, count, out, ldo,
										&err) != PEFT_OK)
			PeftRaiseEngineError(&err);
		for (int i = 0; i < count; i++)
			RowLabel(a[map[i]], out + (size_t) i * ldo, &labels[map[i]], &scores[map[i]]);
	}
	TrimAdapterCache();			/* the batches' buffers grew: back within the size */
}

/*
 * peft.serve = on: look up the active version of name as the caller (the
 * privilege check; nothing is loaded here, so this process maps no engine
 * or weights) and have the serving worker of its model predict.  Inside SPI.
 */
static void
ServePredictActive(const char *name, char **texts, int n, char **labels, double *scores)
{
	AdapterRow	row;

	ServeRequirePreload();
	LookupAdapterVersion(name, 0, &row);
	ServePredict(row.model_name, name, row.version, row.row_version, texts, n, labels, scores);
}

PG_FUNCTION_INFO_V1(peft_predict);
PG_FUNCTION_INFO_V1(peft_predict_array);
PG_FUNCTION_INFO_V1(peft_embed);
PG_FUNCTION_INFO_V1(peft_embed_array);
PG_FUNCTION_INFO_V1(peft_cosine);
PG_FUNCTION_INFO_V1(peft_predict_mixed);
PG_FUNCTION_INFO_V1(peft_embed_mixed);

/*
 * peft_predict(adapter, input) RETURNS TABLE(label text, score float8): a
 * NULL input gives one row of NULLs, as the array form does for a NULL
 * element (so a LATERAL call keeps its row).
 */
Datum
peft_predict(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name;
	char	   *input;
	CachedAdapter *a;
	char	   *label;
	double		score;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	PeftRequireArg(fcinfo, 0, "adapter");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	input = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	if (peft_serve)
		ServePredictActive(name, &input, 1, &label, &score);
	else
	{
		AdapterCacheBeginCall();
		a = GetActiveAdapter(name);
		PredictTexts(a, &input, 1, &label, &score);
	}
	SPI_finish();
	values[0] = label ? CStringGetTextDatum(label) : (Datum) 0;
	nulls[0] = label == NULL;
	values[1] = Float8GetDatum(score);
	nulls[1] = input == NULL;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/* The texts of a one-dimensional text[] argument (NULL for its NULL elements); *n of them. */
char	  **
InputTexts(ArrayType *inputs, const char *argument, int *n)
{
	Datum	   *elems;
	bool	   *isnull;
	char	  **texts;

	if (ARR_NDIM(inputs) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", argument)));
	deconstruct_array(inputs, TEXTOID, -1, false, TYPALIGN_INT, &elems, &isnull, n);
	texts = palloc(sizeof(char *) * (*n + 1));
	for (int i = 0; i < *n; i++)
		texts[i] = isnull[i] ? NULL : TextDatumGetCString(elems[i]);
	return texts;
}

/*
 * first[i] = the first row naming the same adapter as row i (NULL names
 * the same "no adapter"): each group is computed or looked up once.
 */
void
GroupByName(char **names, int n, int *first)
{
	for (int i = 0; i < n; i++)
	{
		first[i] = i;
		for (int j = 0; j < i; j++)
			if (first[j] == j && (names[j] == NULL) == (names[i] == NULL) &&
				(names[i] == NULL || strcmp(names[j], names[i]) == 0))
			{
				first[i] = j;
				break;
			}
	}
}

/* peft_predict(adapter, inputs text[]) RETURNS TABLE(ord int, label text, score float8) */
Datum
peft_predict_array(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *inputs = PG_GETARG_ARRAYTYPE_P(1);
	int			n;
	char	  **texts = InputTexts(inputs, "inputs", &n);
	char	  **labels = palloc(sizeof(char *) * (n + 1));
	double	   *scores = palloc0(sizeof(double) * (n + 1));
	CachedAdapter *a;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	if (peft_serve)
		ServePredictActive(name, texts, n, labels, scores);
	else
	{
		AdapterCacheBeginCall();
		a = GetActiveAdapter(name);
		PredictTexts(a, texts, n, labels, scores);
	}
	SPI_finish();
	for (int i = 0; i < n; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, labels[i] == NULL, texts[i] == NULL};

		values[0] = Int32GetDatum(i + 1);
		values[1] = labels[i] ? CStringGetTextDatum(labels[i]) : (Datum) 0;
		values[2] = Float8GetDatum(scores[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ERROR unless an adapter over adapter_model may embed for model (NULL: any). */
static void
RequireEmbeddingModel(const char *adapter, const char *adapter_model, const char *model)
{
	if (model != NULL && strcmp(adapter_model, model) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("adapter \"%s\" was trained on model \"%s\", not \"%s\"",
						adapter, adapter_model, model)));
}

/* The model of name and the active adapter of adapter_name (NULL: none), checked to match. */
static CachedModel *
EmbeddingModel(const char *name, const char *adapter_name, CachedAdapter **adapter)
{
	CachedModel *m = GetModel(name);

	*adapter = NULL;
	if (adapter_name == NULL)
		return m;
	*adapter = GetActiveAdapter(adapter_name);
	RequireEmbeddingModel(adapter_name, (*adapter)->model->name, name);
	return m;
}

/*
 * peft.serve = on: the embeddings of the texts[0..n) that are not NULL,
 * text i through the active version of names[i] (NULL: the model alone),
 * computed by the serving worker of model_name: *dim floats each, the
 * k-th such text's at k.  The adapters are looked up here as the caller;
 * nothing is loaded in this backend.
 */
static float *
ServeEmbedTexts(const char *model_name, char **names, char **texts, int n, int *dim)
{
	char	   *model = pstrdup(model_name);
	ServeRows	rows;

	ServeCollectRows(names, texts, n, RequireEmbeddingModel, &model, &rows);
	*dim = 0;
	return rows.count ? ServeEmbed(model, rows.names, rows.versions, rows.texts, rows.count, dim) : NULL;
}

/* A real[] of the n floats at x. */
static ArrayType *
RealArray(const float *x, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		elems[i] = Float4GetDatum(x[i]);
	return construct_array(elems, n, FLOAT4OID, sizeof(float4), true, TYPALIGN_INT);
}

/* Embeddings of texts[0..n) (none NULL) through the active adapter_name (NULL: none), here: *dim floats each. */
static float *
EmbedHere(const char *model_name, const char *adapter_name, char **texts, int n, int *dim)
{
	size_t	   *lengths = palloc(sizeof(size_t) * (n + 1));
	CachedModel *m;
	CachedAdapter *a;
	float	   *out;
	PeftError	err = {0};

	for (int i = 0; i < n; i++)
		lengths[i] = strlen(texts[i]);
	SPI_connect();
	AdapterCacheBeginCall();
	m = EmbeddingModel(model_name, adapter_name, &a);
	*dim = m->info.hidden_size;
	out = SPI_palloc(sizeof(float) * (size_t) (n ? n : 1) * m->info.hidden_size);
	ConfigureInference();
	if (n > 0 &&
		PeftEngine()->embed(m->handle, a ? a->handle : NULL, (const char *const *) texts, lengths, n,
							a ? a->max_length : 0, out, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	SPI_finish();
	return out;
}

/* peft_embed(model, input, adapter DEFAULT NULL) RETURNS real[] (here, or by the serving worker) */
Datum
peft_embed(PG_FUNCTION_ARGS)
{
	char	   *model_name;
	char	   *adapter_name;
	char	   *input;
	float	   *out;
	int			dim;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	model_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	input = text_to_cstring(PG_GETARG_TEXT_PP(1));
	adapter_name = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	out = peft_serve ? ServeEmbedTexts(model_name, &adapter_name, &input, 1, &dim) :
		EmbedHere(model_name, adapter_name, &input, 1, &dim);
	PG_RETURN_ARRAYTYPE_P(RealArray(out, dim));
}

/*
 * peft_embed(model, inputs text[], adapter DEFAULT NULL) RETURNS
 * TABLE(ord int, embedding real[]): the texts in batches; ord is the
 * 1-based position in inputs; a NULL element gives a NULL embedding.
 */
Datum
peft_embed_array(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *model_name;
	char	   *adapter_name;
	char	  **all;
	char	  **texts;
	int			n;
	int			count = 0;
	int			dim;
	float	   *out;

	PeftRequireArg(fcinfo, 0, "model");
	PeftRequireArg(fcinfo, 1, "inputs");
	model_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	adapter_name = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	all = InputTexts(PG_GETARG_ARRAYTYPE_P(1), "inputs", &n);
	texts = palloc(sizeof(char *) * (n + 1));
	for (int i = 0; i < n; i++)
		if (all[i] != NULL)
			texts[count++] = all[i];

	InitMaterializedSRF(fcinfo, 0);
	if (peft_serve)
	{
		char	  **names = palloc(sizeof(char *) * (n + 1));

		/* one row more than inputs, a NULL one: with none, the adapter is still checked */
		for (int i = 0; i <= n; i++)
			names[i] = adapter_name;
		all = repalloc(all, sizeof(char *) * (n + 1));
		all[n] = NULL;
		out = ServeEmbedTexts(model_name, names, all, n + 1, &dim);
	}
	else
		out = EmbedHere(model_name, adapter_name, texts, count, &dim);
	for (int i = 0, k = 0; i < n; i++)
	{
		Datum		values[2] = {Int32GetDatum(i + 1), (Datum) 0};
		bool		nulls[2] = {false, all[i] == NULL};

		if (all[i] != NULL)
			values[1] = PointerGetDatum(RealArray(out + (size_t) k++ * dim, dim));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* A name's entry in LookupAdapters' table. */
typedef struct NamedAdapter
{
	char		name[NAMEDATALEN];
	CachedAdapter *adapter;
} NamedAdapter;

/*
 * The active version of each row's adapter (names[i] NULL: out[i] NULL, or
 * an ERROR when nulls_allowed is false), every distinct name looked up once
 * as the caller, before anything is computed: an adapter the role cannot
 * see is an ERROR naming it.  Every adapter must be over one model, that
 * of model_name when given; *model receives it.  Inside SPI.
 */
static void
LookupAdapters(char **names, int n, bool nulls_allowed, const char *model_name,
			   CachedAdapter **out, CachedModel **model)
{
	HASHCTL		ctl = {0};
	HTAB	   *seen;
	CachedAdapter *first = NULL;

	*model = model_name ? GetModel(model_name) : NULL;
	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(NamedAdapter);
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("peft adapters of a call", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (int i = 0; i < n; i++)
	{
		NamedAdapter *entry;
		bool		found;

		out[i] = NULL;
		if (names[i] == NULL)
		{
			if (!nulls_allowed)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("adapters must not contain NULLs (element %d is NULL)", i + 1)));
			continue;
		}
		if (strlen(names[i]) >= NAMEDATALEN)
			CatalogVersionMissing(names[i], 0);	/* no adapter has so long a name */
		entry = hash_search(seen, names[i], HASH_ENTER, &found);
		if (!found)
		{
			entry->adapter = GetActiveAdapter(names[i]);
			if (*model == NULL)
				*model = entry->adapter->model;
			if (entry->adapter->model != *model)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("adapter \"%s\" was trained on model \"%s\", not \"%s\"",
								names[i], entry->adapter->model->name,
								model_name ? model_name : first->model->name),
						 errhint("One call computes over one base model; these adapters need one "
								 "call per model.")));
			if (first == NULL)
				first = entry->adapter;
		}
		out[i] = entry->adapter;
	}
	hash_destroy(seen);
}

/* ERROR unless two arrays have the same number of elements (inference.h). */
void
RequireSameLength(const char *a, int na, const char *b, int nb)
{
	if (na != nb)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s and %s must have the same length, not %d and %d", a, b, na, nb)));
}

/*
 * peft.serve = on, the mixed form: every adapter's active version looked
 * up as the caller first (nothing loaded here; one model for all), then
 * each adapter's rows through the serving worker, which batches them with
 * every other connection's.  Inside SPI.
 */
static void
ServePredictMixed(char **names, char **texts, int n, char **labels, double *scores)
{
	AdapterRow *found = palloc(sizeof(AdapterRow) * (n + 1));
	int		   *first = palloc(sizeof(int) * (n + 1));
	char	  **part = palloc(sizeof(char *) * (n + 1));
	char	  **part_labels = palloc(sizeof(char *) * (n + 1));
	double	   *part_scores = palloc(sizeof(double) * (n + 1));

	ServeRequirePreload();
	GroupByName(names, n, first);
	for (int i = 0; i < n; i++)
	{
		if (names[i] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("adapters must not contain NULLs (element %d is NULL)", i + 1)));
		if (first[i] != i)
			continue;
		LookupAdapterVersion(names[i], 0, &found[i]);
		if (strcmp(found[i].model_name, found[0].model_name) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("adapter \"%s\" was trained on model \"%s\", not \"%s\"",
							names[i], found[i].model_name, found[0].model_name),
					 errhint("One call computes over one base model; these adapters need one "
							 "call per model.")));
	}
	for (int i = 0; i < n; i++)
	{
		int			k = 0;

		if (first[i] != i)
			continue;
		for (int j = i; j < n; j++)
			if (first[j] == i)
				part[k++] = texts[j];
		ServePredict(found[i].model_name, names[i], found[i].version, found[i].row_version, part, k,
					 part_labels, part_scores);
		for (int j = i, m = 0; j < n; j++)
			if (first[j] == i)
			{
				labels[j] = part_labels[m];
				scores[j] = part_scores[m++];
			}
	}
}

/*
 * peft_predict(adapters text[], inputs text[]) RETURNS TABLE(ord int,
 * adapter text, label text, score float8): input i through the active
 * version of adapters[i], rows of many adapters in shared forward passes.
 * A NULL input gives a row of NULLs; a NULL adapter is an ERROR.
 */
Datum
peft_predict_mixed(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			nnames;
	int			n;
	char	  **names = InputTexts(PG_GETARG_ARRAYTYPE_P(0), "adapters", &nnames);
	char	  **texts = InputTexts(PG_GETARG_ARRAYTYPE_P(1), "inputs", &n);
	char	  **labels = palloc(sizeof(char *) * (n + 1));
	double	   *scores = palloc0(sizeof(double) * (n + 1));
	CachedAdapter **rows = palloc(sizeof(CachedAdapter *) * (n + 1));
	CachedModel *model;

	RequireSameLength("adapters", nnames, "inputs", n);
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	if (peft_serve)
		ServePredictMixed(names, texts, n, labels, scores);
	else
	{
		AdapterCacheBeginCall();
		LookupAdapters(names, n, false, NULL, rows, &model);
		PredictMixed(rows, texts, n, labels, scores);
	}
	SPI_finish();
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, labels[i] == NULL, texts[i] == NULL};

		values[0] = Int32GetDatum(i + 1);
		values[1] = CStringGetTextDatum(names[i]);
		values[2] = labels[i] ? CStringGetTextDatum(labels[i]) : (Datum) 0;
		values[3] = Float8GetDatum(scores[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Embed texts[0..n) (none NULL) by model, text i through a[i] (NULL: the
 * model alone; each over model) in shared forward passes: out[n, hidden].
 */
void
EmbedMixed(CachedModel *model, CachedAdapter **a, char **texts, int n, float *out)
{
	PeftAdapterHandle **handles = palloc(sizeof(PeftAdapterHandle *) * (n + 1));
	size_t	   *lengths = palloc(sizeof(size_t) * (n + 1));
	int		   *max_lengths = palloc(sizeof(int) * (n + 1));
	int			C = model->info.hidden_size;
	PeftError	err = {0};

	for (int i = 0; i < n; i++)
	{
		handles[i] = a[i] ? a[i]->handle : NULL;
		lengths[i] = strlen(texts[i]);
		max_lengths[i] = a[i] ? a[i]->max_length : 0;
	}
	ConfigureInference();
	for (int first = 0; first < n; first += MIXED_CHUNK)
	{
		CHECK_FOR_INTERRUPTS();
		if (PeftEngine()->embed_mixed(model->handle, handles + first, (const char **) texts + first,
									  lengths + first, max_lengths + first, Min(MIXED_CHUNK, n - first),
									  out + (size_t) first * C, &err) != PEFT_OK)
			PeftRaiseEngineError(&err);
	}
	pfree(handles);
	pfree(lengths);
	pfree(max_lengths);
}

/*
 * Here: the embeddings of the texts[0..n) that are not NULL, text i
 * through the active version of names[i] (NULL: the model alone), in
 * shared forward passes; *dim floats each, the k-th such text's at k.
 */
static float *
EmbedMixedHere(const char *model_name, char **names, char **texts, int n, int *dim)
{
	CachedAdapter **rows = palloc(sizeof(CachedAdapter *) * (n + 1));
	char	  **batch = palloc(sizeof(char *) * (n + 1));
	CachedModel *model;
	float	   *out;
	int			count = 0;

	SPI_connect();
	AdapterCacheBeginCall();
	LookupAdapters(names, n, true, model_name, rows, &model);
	*dim = model->info.hidden_size;
	for (int i = 0; i < n; i++)
		if (texts[i] != NULL)
		{
			rows[count] = rows[i];
			batch[count++] = texts[i];
		}
	out = SPI_palloc(sizeof(float) * (size_t) (count + 1) * *dim);	/* outlives SPI_finish */
	EmbedMixed(model, rows, batch, count, out);
	SPI_finish();
	return out;
}

/*
 * peft_embed(model text, inputs text[], adapters text[]) RETURNS
 * TABLE(ord int, embedding real[]): input i through the active version of
 * adapters[i] (NULL: the bare model), in shared forward passes; a NULL
 * input gives a NULL embedding.
 */
Datum
peft_embed_mixed(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *model_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			n;
	int			nnames;
	char	  **texts = InputTexts(PG_GETARG_ARRAYTYPE_P(1), "inputs", &n);
	char	  **names = InputTexts(PG_GETARG_ARRAYTYPE_P(2), "adapters", &nnames);
	float	   *out;
	int			C;

	RequireSameLength("adapters", nnames, "inputs", n);
	InitMaterializedSRF(fcinfo, 0);
	out = peft_serve ? ServeEmbedTexts(model_name, names, texts, n, &C) :
		EmbedMixedHere(model_name, names, texts, n, &C);
	for (int i = 0, k = 0; i < n; i++)
	{
		Datum		values[2] = {Int32GetDatum(i + 1), (Datum) 0};
		bool		nulls[2] = {false, texts[i] == NULL};

		if (texts[i] != NULL)
			values[1] = PointerGetDatum(RealArray(out + (size_t) k++ * C, C));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The float4 elements of a one-dimensional real[] without NULLs (ERROR otherwise). */
static float4 *
RealElements(ArrayType *a, const char *argument, int *n)
{
	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", argument)));
	if (array_contains_nulls(a))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain NULLs", argument)));
	*n = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	return (float4 *) ARR_DATA_PTR(a);
}

/*
 * peft_cosine(a real[], b real[]) RETURNS float8: the cosine similarity of
 * two vectors of one length, in double precision; NULL when either is all
 * zeros (no direction).
 */
Datum
peft_cosine(PG_FUNCTION_ARGS)
{
	int			na;
	int			nb;
	float4	   *a = RealElements(PG_GETARG_ARRAYTYPE_P(0), "a", &na);
	float4	   *b = RealElements(PG_GETARG_ARRAYTYPE_P(1), "b", &nb);
	double		dot = 0;
	double		aa = 0;
	double		bb = 0;

	if (na != nb)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("vectors of different lengths (%d and %d)", na, nb)));
	for (int i = 0; i < na; i++)
	{
		dot += (double) a[i] * b[i];
		aa += (double) a[i] * a[i];
		bb += (double) b[i] * b[i];
	}
	if (!isfinite(dot) || !isfinite(aa) || !isfinite(bb))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("vectors must be finite")));
	if (aa == 0 || bb == 0)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(dot / (sqrt(aa) * sqrt(bb)));
}
