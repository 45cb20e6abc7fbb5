/*
 * interchange.c - adapters in and out of the catalog besides training:
 * peft_import (a Hugging Face PEFT adapter, validated completely before it
 * is stored), peft_merge (predictions use the base weights with the
 * adapter folded in) and peft_combine (a weighted combination of LoRA
 * adapters, as PEFT's add_weighted_adapter).  peft_export and
 * peft_export_config are plain SQL over the catalog (sql/peft--*.sql);
 * peft_export_gguf writes a LoRA over a decoder as llama.cpp's LoRA GGUF.
 *
 * As in adapters.c, rows are read as the caller (row-level security
 * applies) and written as the extension owner after the caller's right to
 * the adapter name is checked.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "peft.h"

PG_FUNCTION_INFO_V1(peft_import);
PG_FUNCTION_INFO_V1(peft_merge);
PG_FUNCTION_INFO_V1(peft_combine);
PG_FUNCTION_INFO_V1(peft_export_gguf);

/* The head's labels of an import: given, or "0" .. "K-1"; checked against K. */
static char *
ImportLabels(ArrayType *given, int K)
{
	char	  **labels = palloc(sizeof(char *) * K);
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (given == NULL)
	{
		for (int i = 0; i < K; i++)
			labels[i] = psprintf("%d", i);
		return CatalogTextArrayLiteral(K, labels);
	}
	deconstruct_array(given, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n != K)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("labels has %d elements, the adapter's head has %d classes", n, K)));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("labels must not contain NULL")));
		labels[i] = TextDatumGetCString(elems[i]);
		for (int j = 0; j < i; j++)
			if (strcmp(labels[i], labels[j]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("label \"%s\" appears twice", labels[i])));
	}
	return CatalogTextArrayLiteral(K, labels);
}

/*
 * What peft_export_config adds under "peft_pg": task and labels (NULL if
 * absent), and the metrics the version is stored with (those exported, or
 * none, with "imported": true).
 */
typedef struct ExportedFacts
{
	char	   *task;
	ArrayType  *labels;
	char	   *metrics;
	char	   *config;			/* the config without "peft_pg" (adapter_config.json's keys) */
} ExportedFacts;

/* Read config's "peft_pg" object (inside SPI); ERROR when it is malformed. */
static void
ReadExportedFacts(Jsonb *config, ExportedFacts *f)
{
	Oid			types[1] = {JSONBOID};
	Datum		values[1] = {JsonbPGetDatum(config)};
	Datum		labels;
	bool		isnull;

	if (SPI_execute_with_args("SELECT CASE WHEN jsonb_typeof(c->'peft_pg') IS DISTINCT FROM 'object' "
							  "  OR jsonb_typeof(coalesce(c->'peft_pg'->'labels', '[]')) <> 'array' "
							  "  OR jsonb_typeof(coalesce(c->'peft_pg'->'task', '\"\"')) <> 'string' "
							  "  OR jsonb_typeof(coalesce(c->'peft_pg'->'metrics', '{}')) <> 'object' "
							  "  THEN c ? 'peft_pg' END, "
							  "c->'peft_pg'->>'task', "
							  "CASE WHEN jsonb_typeof(c->'peft_pg'->'labels') = 'array' "
							  "  THEN ARRAY(SELECT jsonb_array_elements_text(c->'peft_pg'->'labels')) END, "
							  "(coalesce(c->'peft_pg'->'metrics', '{}') || '{\"imported\": true}')::text, "
							  "(c - 'peft_pg')::text "
							  "FROM (SELECT $1 AS c) q",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the adapter config");
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the adapter config's \"peft_pg\" must be an object with a text \"task\", "
						"an array \"labels\" and an object \"metrics\"")));
	f->task = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	labels = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	f->labels = isnull ? NULL : DatumGetArrayTypePCopy(labels);
	if (f->labels != NULL && ArrayGetNItems(ARR_NDIM(f->labels), ARR_DIMS(f->labels)) == 0)
		f->labels = NULL;
	f->metrics = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	f->config = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
}

/*
 * peft_import(adapter, base_model, config jsonb, weights bytea, task text
 * DEFAULT NULL, labels text[] DEFAULT NULL, activate boolean DEFAULT true)
 * RETURNS int: store an adapter saved by Hugging Face PEFT (the contents of
 * adapter_config.json and adapter_model.safetensors) as a new version,
 * after building it over the base model: every tensor name, shape and
 * value is checked.  A classifier head in the weights (PEFT's
 * modules_to_save "classifier") makes it a classification adapter (one
 * output: regression), else an embedding adapter for peft_embed.  A config
 * exported here carries the task, labels and metrics under "peft_pg": they
 * are used where the arguments do not say otherwise.
 */
Datum
peft_import(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *model_name;
	char	   *config;
	bytea	   *weights;
	char	   *task = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	ArrayType  *labels = PG_ARGISNULL(5) ? NULL : PG_GETARG_ARRAYTYPE_P(5);
	bool		activate;
	PeftModelHandle *model;
	PeftAdapterInfo info;
	PeftError	err = {0};
	const char *resolved;
	char	   *labels_literal = NULL;
	int			version;
	ExportedFacts facts;

	PeftRequirePrimary("peft_import");

	/* not STRICT: NULL task and labels mean "from the weights"; nothing else may be NULL */
	PeftRequireArg(fcinfo, 0, "adapter");
	PeftRequireArg(fcinfo, 1, "base_model");
	PeftRequireArg(fcinfo, 2, "config");
	PeftRequireArg(fcinfo, 3, "weights");
	PeftRequireArg(fcinfo, 6, "activate");
	activate = PG_GETARG_BOOL(6);
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	model_name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	weights = PG_GETARG_BYTEA_PP(3);
	CheckCatalogName("adapter", name);

	SPI_connect();
	ReadExportedFacts(PG_GETARG_JSONB_P(2), &facts);
	config = facts.config;
	task = task ? task : facts.task;
	labels = labels ? labels : facts.labels;
	model = PeftModelFor(model_name);
	if (PeftEngine()->adapter_inspect(model, config, strlen(config),
									  (const uint8_t *) VARDATA_ANY(weights),
									  VARSIZE_ANY_EXHDR(weights), &info, &err) != PEFT_OK)
		ereport(ERROR,
				(errcode(err.code == PEFT_ERR_UNSUPPORTED ? ERRCODE_FEATURE_NOT_SUPPORTED :
						 err.code == PEFT_ERR_NOMEM ? ERRCODE_OUT_OF_MEMORY :
						 ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the adapter cannot be imported: %s", err.message)));
	/* the task follows from the head; a given one must agree */
	resolved = info.decoder ? "generation" : info.num_labels == 0 ? "embedding" :
		info.num_labels == 1 ? "regression" : "classification";
	if (task && strcmp(task, resolved) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("task \"%s\" does not match the adapter, whose head makes it \"%s\"",
						task, resolved),
				 errhint("A classifier with one output is a regression head; none means an "
						 "embedding adapter.")));
	if (info.num_labels >= 2)
		labels_literal = ImportLabels(labels, info.num_labels);
	else if (labels)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("labels are given, but the adapter has no classification head")));
	version = CatalogInsertVersion(&(CatalogVersion) {
		.name = name, .base_model = model_name, .method = info.method, .task = resolved,
			.config = config, .labels = labels_literal, .weights = weights,
			.metrics = facts.metrics, .owner = GetUserId(), .activate = activate});
	SPI_finish();
	PG_RETURN_INT32(version);
}

/* Whether a stored method name has a part the engine's method table says merges. */
static bool
Mergeable(const char *method)
{
	const PeftEngineApi *engine = PeftEngine();
	unsigned	bits;
	int			count;
	const PeftMethodInfo *methods = engine->methods(&count);
	PeftError	err = {0};

	if (engine->parse_method(method, &bits, &err) != PEFT_OK)
		return false;
	for (int i = 0; i < count; i++)
		if ((bits & methods[i].bit) && methods[i].mergeable)
			return true;
	return false;
}

/* The names of the methods that merge, from the engine's method table. */
static char *
MergeableNames(void)
{
	StringInfoData buf;
	int			count;
	const PeftMethodInfo *methods = PeftEngine()->methods(&count);

	initStringInfo(&buf);
	for (int i = 0; i < count; i++)
		if (methods[i].mergeable)
			appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", methods[i].name);
	return buf.data;
}

/*
 * peft_merge(adapter, version DEFAULT NULL): from now on predictions with
 * that version (the active one when NULL) use the base weights with its
 * LoRA, DoRA or (IA)^3 folded in, as PEFT's merge_and_unload; the outputs
 * are the same to float rounding.  BitFit biases and bottleneck adapters
 * are applied as before.  Returns the version.
 */
Datum
peft_merge(PG_FUNCTION_ARGS)
{
	char	   *name;
	bool		active = PG_ARGISNULL(1);
	int			version = active ? 0 : PG_GETARG_INT32(1);
	Oid			types[3] = {TEXTOID, BOOLOID, INT4OID};
	Datum		values[3];
	OwnerContext octx;
	bool		isnull;
	char	   *method;

	PeftRequirePrimary("peft_merge");

	/* not STRICT: a NULL version means the active one; the name has no NULL meaning */
	PeftRequireArg(fcinfo, 0, "adapter");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	values[0] = CStringGetTextDatum(name);
	values[1] = BoolGetDatum(active);
	values[2] = Int32GetDatum(version);
	SPI_connect();
	if (SPI_execute_with_args("SELECT version, method FROM peft.adapters "
							  "WHERE name = $1 AND (CASE WHEN $2 THEN active ELSE version = $3 END)",
							  3, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read peft.adapters");
	if (SPI_processed == 0)
		CatalogVersionMissing(name, active ? 0 : version);
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	method = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (!Mergeable(method))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("adapter \"%s\" version %d (%s) has nothing to merge", name, version, method),
				 errhint("Adapters of these methods can be merged into the base weights: %s.",
						 MergeableNames())));
	CheckAdapterNameOwner(name, GetUserId());
	values[2] = Int32GetDatum(version);
	CatalogAsOwner(&octx);
	if (SPI_execute_with_args("UPDATE peft.adapters SET merged = true WHERE name = $1 AND version = $3",
							  3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not mark the adapter merged");
	CatalogAsCaller(&octx);
	SPI_finish();
	PG_RETURN_INT32(version);
}

/*
 * peft_combine(adapter, sources text[], weights float8[], combination text
 * DEFAULT 'linear', activate boolean DEFAULT true) RETURNS int: a new
 * version of adapter combining the active versions of sources (plain LoRA
 * adapters of one base model and task), as PEFT's add_weighted_adapter
 * with combination_type 'linear' (equal ranks) or 'cat'.  Classification
 * sources with the same labels give the combination their weighted head.
 */
/* The sources of a combination: their active versions, checked to go together. */
typedef struct CombineSources
{
	int			n;
	char	  **names;
	double	   *factors;
	const char **configs;
	size_t	   *config_lens;
	const uint8_t **weights;
	size_t	   *weights_lens;
	char	   *base_model;		/* shared by all */
	char	   *task;			/* shared by all */
	char	   *labels;			/* text[] literal when all have the same, else NULL */
} CombineSources;

/* Check the sources and weights arrays (no NULL, finite weights, 1..64 of each, as many). */
static void
CombineArguments(ArrayType *src_arr, ArrayType *w_arr, CombineSources *cs)
{
	Datum	   *srcs;
	Datum	   *ws;
	bool	   *nulls;
	int			nw;

	deconstruct_array(src_arr, TEXTOID, -1, false, TYPALIGN_INT, &srcs, &nulls, &cs->n);
	for (int i = 0; i < cs->n; i++)
		if (nulls[i])
			ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("sources must not contain NULL")));
	deconstruct_array(w_arr, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &ws, &nulls, &nw);
	for (int i = 0; i < nw; i++)
		if (nulls[i] || isnan(DatumGetFloat8(ws[i])) || isinf(DatumGetFloat8(ws[i])))
			ereport(ERROR,
					(errcode(nulls[i] ? ERRCODE_NULL_VALUE_NOT_ALLOWED : ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("weights must be finite numbers, not NULL, NaN or infinity")));
	if (cs->n < 1 || cs->n > 64 || nw != cs->n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give 1 to 64 sources and one weight per source (%d sources, %d weights)",
						cs->n, nw)));
	cs->names = palloc(sizeof(char *) * cs->n);
	cs->factors = palloc(sizeof(double) * cs->n);
	for (int i = 0; i < cs->n; i++)
	{
		cs->names[i] = TextDatumGetCString(srcs[i]);
		cs->factors[i] = DatumGetFloat8(ws[i]);
	}
}

/* Read the active version of every source (as the caller) and check they combine. */
static void
ReadSources(CombineSources *cs)
{
	bool		same_labels = true;

	cs->configs = palloc(sizeof(char *) * cs->n);
	cs->config_lens = palloc(sizeof(size_t) * cs->n);
	cs->weights = palloc(sizeof(uint8_t *) * cs->n);
	cs->weights_lens = palloc(sizeof(size_t) * cs->n);
	for (int i = 0; i < cs->n; i++)
	{
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(cs->names[i])};
		bool		isnull;
		bytea	   *w;
		char	   *row_model;
		char	   *row_task;
		char	   *row_labels;

		if (SPI_execute_with_args("SELECT config::text, weights, base_model, task, labels::text "
								  "FROM peft.adapters WHERE name = $1 AND active",
								  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read peft.adapters");
		if (SPI_processed == 0)
			CatalogVersionMissing(cs->names[i], 0);
		cs->configs[i] = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		cs->config_lens[i] = strlen(cs->configs[i]);
		w = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		cs->weights[i] = (const uint8_t *) VARDATA(w);
		cs->weights_lens[i] = VARSIZE(w) - VARHDRSZ;
		row_model = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		row_task = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
		row_labels = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
		if (i == 0)
		{
			cs->base_model = row_model;
			cs->task = row_task;
			cs->labels = row_labels;
		}
		else if (strcmp(cs->base_model, row_model) != 0 || strcmp(cs->task, row_task) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("adapter \"%s\" has base model %s and task %s, not %s and %s",
							cs->names[i], row_model, row_task, cs->base_model, cs->task)));
		else
			same_labels &= (cs->labels == NULL && row_labels == NULL) ||
				(cs->labels && row_labels && strcmp(cs->labels, row_labels) == 0);
	}
	if (!same_labels)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the sources' labels differ: their heads cannot be combined")));
}

/* peft_combine(adapter, sources, weights, combination, activate): see above. */
Datum
peft_combine(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *combination;
	bool		activate;
	CombineSources cs = {0};
	uint8_t    *out_weights;
	size_t		out_len;
	char	   *out_config;
	bytea	   *stored;
	PeftAdapterInfo info;
	PeftModelHandle *model;
	PeftError	err = {0};
	int			version;

	PeftRequirePrimary("peft_combine");

	/*
	 * STRICT since 0.2.0; a database still at 0.1.0 declares it CALLED ON
	 * NULL INPUT and reaches this same code, so the arguments are checked.
	 */
	PeftRequireArg(fcinfo, 0, "adapter");
	PeftRequireArg(fcinfo, 1, "sources");
	PeftRequireArg(fcinfo, 2, "weights");
	PeftRequireArg(fcinfo, 3, "combination");
	PeftRequireArg(fcinfo, 4, "activate");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	combination = text_to_cstring(PG_GETARG_TEXT_PP(3));
	activate = PG_GETARG_BOOL(4);
	CheckCatalogName("adapter", name);
	CombineArguments(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2), &cs);

	SPI_connect();
	ReadSources(&cs);
	model = PeftModelFor(cs.base_model);
	if (PeftEngine()->adapter_combine(model, cs.n, cs.configs, cs.config_lens, cs.weights,
									  cs.weights_lens, cs.factors, combination, cs.base_model,
									  &out_weights, &out_len, &out_config, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	stored = palloc(VARHDRSZ + out_len);
	SET_VARSIZE(stored, VARHDRSZ + out_len);
	memcpy(VARDATA(stored), out_weights, out_len);
	PeftEngine()->free_buffer(out_weights);
	/* the stored row describes itself: validate it exactly as an import would */
	if (PeftEngine()->adapter_inspect(model, out_config, strlen(out_config),
									  (const uint8_t *) VARDATA(stored), out_len, &info, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	version = CatalogInsertVersion(&(CatalogVersion) {
		.name = name, .base_model = cs.base_model, .method = info.method,
			.task = info.num_labels == 0 ? "embedding" : cs.task, .config = out_config,
			.labels = info.num_labels >= 2 ? cs.labels : NULL, .weights = stored,
			.metrics = psprintf("{\"combined\": {\"combination\": \"%s\", \"sources\": %d}}",
								combination, cs.n),
			.owner = GetUserId(), .activate = activate});
	PeftEngine()->free_buffer(out_config);
	SPI_finish();
	PG_RETURN_INT32(version);
}

/*
 * peft_export_gguf(adapter, version DEFAULT NULL) RETURNS bytea: a version
 * (the active one when NULL) of a LoRA adapter over a decoder as llama.cpp's
 * LoRA GGUF, the file llama-cli --lora, Ollama's ADAPTER and
 * llama-cpp-python's lora_path load.  The row is read as peft_export reads
 * it (peft._adapter_version, as the caller: row-level security applies);
 * the engine converts the stored PEFT weights, checking every tensor
 * against the base model.
 */
Datum
peft_export_gguf(PG_FUNCTION_ARGS)
{
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		values[2];
	char		nulls[2] = {' ', PG_ARGISNULL(1) ? 'n' : ' '};
	char	   *name;
	char	   *model_name;
	char	   *config;
	int			version;
	bytea	   *weights;
	bool		isnull;
	uint8_t    *gguf;
	size_t		gguf_len;
	bytea	   *result;
	PeftError	err = {0};

	/* not STRICT: a NULL version means the active one; the name has no NULL meaning */
	PeftRequireArg(fcinfo, 0, "adapter");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	values[0] = CStringGetTextDatum(name);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	SPI_connect();
	if (SPI_execute_with_args("SELECT a.version, a.base_model, a.config::text, a.weights, "
							  "coalesce((m.config->>'decoder')::boolean, false) "
							  "FROM peft._adapter_version($1, $2) a "
							  "LEFT JOIN peft.models m ON m.name = a.base_model",
							  2, types, values, nulls, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read peft.adapters");
	version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	model_name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	config = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	weights = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("adapter \"%s\" version %d is over model \"%s\", an encoder: "
						"llama.cpp's LoRA GGUF holds adapters over decoders", name, version, model_name),
				 errhint("peft_export and peft_export_config give it in Hugging Face PEFT's format.")));
	if (PeftEngine()->adapter_export_gguf(PeftModelFor(model_name), config, strlen(config),
										  (const uint8_t *) VARDATA_ANY(weights),
										  VARSIZE_ANY_EXHDR(weights), &gguf, &gguf_len, &err) != PEFT_OK)
		PeftRaiseEngineError(&err);
	SPI_finish();
	if (gguf_len > MaxAllocSize - VARHDRSZ)
	{
		PeftEngine()->free_buffer(gguf);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the GGUF file of adapter \"%s\" version %d has %zu bytes, more than a bytea holds",
						name, version, gguf_len)));
	}
	result = palloc(VARHDRSZ + gguf_len);
	SET_VARSIZE(result, VARHDRSZ + gguf_len);
	memcpy(VARDATA(result), gguf, gguf_len);
	PeftEngine()->free_buffer(gguf);
	PG_RETURN_BYTEA_P(result);
}
