/*
 * generation.c - peft_generate: text completions of a registered decoder
 * (a LLaMA-family model from GGUF or safetensors), one prompt or many.
 *
 * The model is loaded through the same per-backend cache as embeddings
 * and predictions (inference.c), computed in this backend, and checked for
 * a statement cancel or statement_timeout once per decoding step: the
 * engine stops within one step and the ERROR follows.  With peft.serve =
 * on the adapters are looked up here (the caller's rights) and the
 * prompts decoded by the model's serving worker (serve_generate.c), which
 * parses the options itself: this backend loads no engine.
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "generation.h"
#include "inference.h"
#include "peft.h"
#include "serve.h"

PG_FUNCTION_INFO_V1(peft_generate);
PG_FUNCTION_INFO_V1(peft_generate_array);
PG_FUNCTION_INFO_V1(peft_generate_mixed);

/* The most stop strings and prompts of one call. */
#define MAX_STOP_STRINGS 16
#define MAX_PROMPTS 4096
/* The option keys, for the error that names them. */
#define GENERATE_KEYS "max_new_tokens, temperature, top_k, top_p, seed, stop, chat, system"

/* Whether the statement was canceled or the backend told to end (polled by the engine). */
static bool
StatementCanceled(void *arg)
{
	return QueryCancelPending || ProcDiePending;
}

/* ERROR naming option key and what it must be. */
static void
BadOption(const char *key, const char *must)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("peft_generate option \"%s\" must be %s", key, must)));
}

/* A numeric option's value as a double (NaN and infinity refused). */
static double
NumberOption(const char *key, JsonbValue *v, double min, double max, bool integer, const char *must)
{
	double		d;

	if (v->type != jbvNumeric)
		BadOption(key, must);
	d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow, NumericGetDatum(v->val.numeric)));
	if (isnan(d) || isinf(d) || d < min || d > max || (integer && d != floor(d)))
		BadOption(key, must);
	return d;
}

/* A string option's value as a palloc'd C string. */
static char *
StringOption(const char *key, JsonbValue *v, const char *must)
{
	if (v->type != jbvString)
		BadOption(key, must);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* The stop option: a string or an array of up to MAX_STOP_STRINGS non-empty strings. */
static void
StopOption(JsonbValue *v, PeftGenerateOptions *o)
{
	const char *must = "a non-empty string or an array of up to 16 of them";
	const char **stop = palloc0(sizeof(char *) * MAX_STOP_STRINGS);
	int			n = 0;

	if (v->type == jbvString)
		stop[n++] = StringOption("stop", v, must);
	else if (v->type == jbvBinary)
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;

		if (!JsonContainerIsArray(v->val.binary.data))
			BadOption("stop", must);
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok != WJB_ELEM)
				continue;
			if (n == MAX_STOP_STRINGS)
				BadOption("stop", must);
			stop[n++] = StringOption("stop", &elem, must);
		}
	}
	else
		BadOption("stop", must);
	for (int i = 0; i < n; i++)
		if (stop[i][0] == '\0')
			BadOption("stop", must);
	o->stop = stop;
	o->nstop = n;
}

/*
 * The options jsonb (an object) over the engine's defaults.  Without a
 * seed, sampling draws one at random, so that repeated calls differ as
 * they do in other tools; a seed makes the text repeatable.
 */
void
ParseGenerateOptions(Jsonb *options, PeftGenerateOptions *o)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		seeded = false;

	PeftEngine()->generate_defaults(o);
	if (!JB_ROOT_IS_OBJECT(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("peft_generate options must be a JSON object"),
				 errhint("Keys: " GENERATE_KEYS ".")));
	it = JsonbIteratorInit(&options->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (v.type == jbvNull)
			continue;			/* null: the default */
		if (strcmp(key, "max_new_tokens") == 0)
			o->max_new_tokens = (int) NumberOption(key, &v, 1, 1 << 20, true, "an integer from 1");
		else if (strcmp(key, "temperature") == 0)
			o->temperature = NumberOption(key, &v, 0, 100, false, "a number from 0 (greedy) to 100");
		else if (strcmp(key, "top_k") == 0)
			o->top_k = (int) NumberOption(key, &v, 0, INT_MAX, true, "an integer >= 0 (0: off)");
		else if (strcmp(key, "top_p") == 0)
		{
			o->top_p = NumberOption(key, &v, 0, 1, false, "a number in (0, 1]");
			if (o->top_p <= 0)
				BadOption(key, "a number in (0, 1]");
		}
		else if (strcmp(key, "seed") == 0)
		{
			o->seed = (uint64_t) NumberOption(key, &v, 0, 9007199254740991.0, true,
											  "an integer from 0 to 2^53 - 1");
			seeded = true;
		}
		else if (strcmp(key, "stop") == 0)
			StopOption(&v, o);
		else if (strcmp(key, "chat") == 0)
		{
			if (v.type != jbvBool)
				BadOption(key, "true or false");
			o->chat = v.val.boolean ? 1 : 0;
		}
		else if (strcmp(key, "system") == 0)
			o->system = StringOption(key, &v, "a string");
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown peft_generate option \"%s\"", key),
					 errhint("Keys: " GENERATE_KEYS ".")));
	}
	if (!seeded && o->temperature > 0)
		o->seed = pg_prng_uint64(&pg_global_prng_state);
	o->canceled = StatementCanceled;
	o->cancel_arg = NULL;
}

/* ERROR unless an adapter over adapter_model may serve model_name (NULL: the adapter's own). */
static void
RequireAdapterModel(const char *adapter, const char *adapter_model, const char *model_name)
{
	if (model_name != NULL && strcmp(model_name, adapter_model) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("adapter \"%s\" was trained over model \"%s\", not \"%s\"",
						adapter, adapter_model, model_name),
				 errhint("Pass model NULL to use the adapter's own base model.")));
}

/*
 * Version (0: the active one) of adapter, if the caller may use it,
 * checked to be over a decoder and (model_name not NULL) over that one.
 * Inside SPI.
 */
CachedAdapter *
GenerationAdapter(const char *model_name, const char *adapter, int version)
{
	CachedAdapter *a = GetAdapterVersion(adapter, version);

	RequireAdapterModel(adapter, a->model->name, model_name);
	if (!a->model->info.decoder)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("adapter \"%s\" is over an encoder (%s): peft_generate needs one over a decoder",
						adapter, a->model->name),
				 errhint("Use peft_predict or peft_embed with it.")));
	return a;
}

/* ERROR for an engine failure of generation; a stop for a cancel becomes the cancel's own ERROR. */
static void
RaiseGenerationError(PeftCode rc, const PeftError *err)
{
	if (rc == PEFT_ERR_CANCELED)
	{
		CHECK_FOR_INTERRUPTS();
		/* held off (or a flag cleared meanwhile): still a cancel */
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling peft_generate")));
	}
	PeftRaiseEngineError(err);
}

/* Replace the engine's completion texts by copies in this memory context (the engine's freed). */
static void
TakeTexts(PeftGeneration *g, int n)
{
	for (int i = 0; i < n; i++)
	{
		char	   *copy = pstrdup(g[i].text ? g[i].text : "");

		PeftEngine()->free_buffer(g[i].text);
		g[i].text = copy;
	}
}

/*
 * peft.serve = on: the prompts[0..n) that are not NULL, prompt i through
 * the active version of names[i] (NULL: the base model), decoded by the
 * serving worker of model_name (NULL: the adapters' model); out[k] for the
 * k-th of them.  Every adapter named is looked up here as the caller
 * first; nothing is loaded in this backend.
 */
static PeftGeneration *
ServeGenerateTexts(const char *model_name, char **names, char **prompts, int n, Jsonb *options)
{
	char	   *model = model_name ? pstrdup(model_name) : NULL;
	ServeRows	rows;

	ServeCollectRows(names, prompts, n, RequireAdapterModel, &model, &rows);
	if (rows.count == 0)
		return palloc0(sizeof(PeftGeneration));
	return ServeGenerate(model, JsonbToCString(NULL, &options->root, VARSIZE(options)),
						 rows.names, rows.versions, rows.texts, rows.count);
}

/*
 * Generate for n prompts (none NULL) through the active version of
 * adapter (NULL: the base model); the texts come back in this memory
 * context.  An engine stop for a cancel becomes the cancel's own ERROR.
 */
static PeftGeneration *
GenerateTexts(const char *model_name, const char *adapter, char **prompts, int n, Jsonb *options)
{
	PeftGenerateOptions o;
	PeftGeneration *out = palloc0(sizeof(PeftGeneration) * (n ? n : 1));
	size_t	   *lengths = palloc(sizeof(size_t) * (n ? n : 1));
	PeftModelHandle *model;
	PeftAdapterHandle *handle = NULL;
	PeftError	err = {0};
	PeftCode	rc;

	if (peft_serve)
	{
		char	  **names = palloc(sizeof(char *) * (n + 1));
		char	  **sent = palloc0(sizeof(char *) * (n + 1));

		/* one row more than prompts, a NULL one: with none, the adapter is still checked */
		for (int i = 0; i <= n; i++)
			names[i] = (char *) adapter;
		memcpy(sent, prompts, sizeof(char *) * n);
		return ServeGenerateTexts(model_name, names, sent, n + 1, options);
	}
	ParseGenerateOptions(options, &o);
	for (int i = 0; i < n; i++)
		lengths[i] = strlen(prompts[i]);
	SPI_connect();
	AdapterCacheBeginCall();
	if (adapter != NULL)
	{
		CachedAdapter *a = GenerationAdapter(model_name, adapter, 0);

		model = a->model->handle;
		handle = a->handle;
	}
	else
		model = PeftModelFor(model_name);
	SPI_finish();
	if (n == 0)
		return out;
	rc = PeftEngine()->generate(model, handle, (const char *const *) prompts, lengths, n, &o, out, &err);
	if (rc != PEFT_OK)
		RaiseGenerationError(rc, &err);
	TakeTexts(out, n);
	return out;
}

/* ERROR unless the model (argument 0) or an adapter (argument 2) is given: a NULL model means the adapter's. */
static void
RequireModelOrAdapter(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0) && PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"model\" must not be null without an adapter"),
				 errhint("Name the model, or an adapter over it (model NULL then means the adapter's).")));
}

/* A completion's text as a text datum. */
static text *
CompletionText(const PeftGeneration *g)
{
	return cstring_to_text(g->text ? g->text : "");
}

/*
 * peft_generate(model, prompt, adapter DEFAULT NULL, options DEFAULT '{}')
 * RETURNS text.  A NULL prompt gives NULL; a NULL adapter is the base model.
 */
Datum
peft_generate(PG_FUNCTION_ARGS)
{
	char	   *prompt;
	PeftGeneration *g;

	RequireModelOrAdapter(fcinfo);
	PeftRequireArg(fcinfo, 3, "options");
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	prompt = text_to_cstring(PG_GETARG_TEXT_PP(1));
	g = GenerateTexts(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)),
					  PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
					  &prompt, 1, PG_GETARG_JSONB_P(3));
	PG_RETURN_TEXT_P(CompletionText(&g[0]));
}

/*
 * peft_generate(model, prompts text[], adapter DEFAULT NULL, options DEFAULT
 * '{}') RETURNS TABLE(ord int, completion text, tokens int, finish_reason
 * text): every prompt decoded together; a NULL element gives a row of
 * NULLs.  finish_reason is 'stop' (end of sequence or a stop string) or
 * 'length' (max_new_tokens or the model's context).
 */
Datum
peft_generate_array(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *array;
	Datum	   *elems;
	bool	   *isnull;
	int			n;
	int			count = 0;
	char	  **prompts;
	PeftGeneration *g;

	RequireModelOrAdapter(fcinfo);
	PeftRequireArg(fcinfo, 1, "prompts");
	PeftRequireArg(fcinfo, 3, "options");
	array = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("prompts must be a one-dimensional array")));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &isnull, &n);
	if (n > MAX_PROMPTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("peft_generate takes at most %d prompts per call, not %d", MAX_PROMPTS, n)));
	prompts = palloc(sizeof(char *) * (n ? n : 1));
	for (int i = 0; i < n; i++)
		if (!isnull[i])
			prompts[count++] = TextDatumGetCString(elems[i]);
	InitMaterializedSRF(fcinfo, 0);
	g = GenerateTexts(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)),
					  PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
					  prompts, count, PG_GETARG_JSONB_P(3));
	for (int i = 0, k = 0; i < n; i++)
	{
		Datum		values[4] = {Int32GetDatum(i + 1), 0, 0, 0};
		bool		nulls[4] = {false, isnull[i], isnull[i], isnull[i]};

		if (!isnull[i])
		{
			values[2] = Int32GetDatum(g[k].tokens);
			values[3] = CStringGetTextDatum(g[k].finish == PEFT_FINISH_LENGTH ? "length" : "stop");
			values[1] = PointerGetDatum(CompletionText(&g[k]));
			k++;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * In this backend: the prompts[0..n) that are not NULL, prompt i through
 * the active version of names[i] (NULL: the base model), decoded together
 * (the engine's generate_mixed); out[k] for the k-th of them.  Every
 * adapter is looked up (the caller's rights checked) before anything is
 * computed.
 */
static PeftGeneration *
GenerateMixedHere(const char *model_name, char **names, char **prompts, int n, Jsonb *options)
{
	int		   *group = palloc(sizeof(int) * (n + 1));
	PeftGeneration *done = palloc0(sizeof(PeftGeneration) * (n + 1));
	PeftAdapterHandle **handles = palloc0(sizeof(PeftAdapterHandle *) * (n + 1));
	PeftAdapterHandle **batch_handles = palloc0(sizeof(PeftAdapterHandle *) * (n + 1));
	char	  **batch = palloc(sizeof(char *) * (n + 1));
	size_t	   *lengths = palloc(sizeof(size_t) * (n + 1));
	int			count = 0;
	PeftModelHandle *model;
	PeftGenerateOptions o;
	PeftError	err = {0};
	PeftCode	rc;

	GroupByName(names, n, group);
	ParseGenerateOptions(options, &o);
	SPI_connect();
	model = PeftModelFor(model_name);	/* begins the call: the adapters below stay until it ends */
	for (int i = 0; i < n; i++)
		handles[i] = names[i] == NULL ? NULL : group[i] != i ? handles[group[i]] :
			GenerationAdapter(model_name, names[i], 0)->handle;
	SPI_finish();
	for (int i = 0; i < n; i++)
		if (prompts[i] != NULL)
		{
			batch[count] = prompts[i];
			batch_handles[count] = handles[i];
			lengths[count++] = strlen(prompts[i]);
		}
	if (count > 0 &&
		(rc = PeftEngine()->generate_mixed(model, batch_handles, (const char *const *) batch, lengths,
										   count, &o, done, &err)) != PEFT_OK)
		RaiseGenerationError(rc, &err);
	TakeTexts(done, count);
	return done;
}

/*
 * peft_generate(model, prompts text[], adapters text[], options DEFAULT
 * '{}') RETURNS TABLE(ord int, adapter text, completion text, tokens int,
 * finish_reason text): prompt i through the active version of adapters[i]
 * (NULL: the base model), every adapter over model, looked up (the
 * caller's rights checked) before anything is generated; then every
 * prompt is decoded together, each product with the base weights once
 * per step for all of them, here or (peft.serve) in the serving worker
 * with every other connection's prompts.  A NULL prompt gives a row of
 * NULLs.
 */
Datum
peft_generate_mixed(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *model_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *options = PG_GETARG_JSONB_P(3);
	int			n;
	int			nnames;
	char	  **prompts = InputTexts(PG_GETARG_ARRAYTYPE_P(1), "prompts", &n);
	char	  **names = InputTexts(PG_GETARG_ARRAYTYPE_P(2), "adapters", &nnames);
	PeftGeneration *done;

	RequireSameLength("adapters", nnames, "prompts", n);
	if (n > MAX_PROMPTS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("peft_generate takes at most %d prompts per call, not %d", MAX_PROMPTS, n)));
	InitMaterializedSRF(fcinfo, 0);
	done = peft_serve ? ServeGenerateTexts(model_name, names, prompts, n, options) :
		GenerateMixedHere(model_name, names, prompts, n, options);
	for (int i = 0, k = 0; i < n; i++)
	{
		Datum		values[5] = {Int32GetDatum(i + 1), 0, 0, 0, 0};
		bool		nulls[5] = {false, names[i] == NULL, prompts[i] == NULL, prompts[i] == NULL,
		prompts[i] == NULL};

		if (names[i] != NULL)
			values[1] = CStringGetTextDatum(names[i]);
		if (prompts[i] != NULL)
		{
			values[3] = Int32GetDatum(done[k].tokens);
			values[4] = CStringGetTextDatum(done[k].finish == PEFT_FINISH_LENGTH ? "length" : "stop");
			values[2] = PointerGetDatum(CompletionText(&done[k]));
			k++;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
