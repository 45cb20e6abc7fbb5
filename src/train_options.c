/*
 * train_options.c - peft_train's options jsonb: every key known, typed and
 * in range, or an ERROR at call time (a doomed job is never queued).  The
 * options are the engine's table (options(), src/engine/training/train_config.c):
 * this file only turns each JSON value into a PeftOptionValue and lets the
 * engine check and store it.  The worker parses the same stored jsonb
 * again with the same code.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "train_options.h"

/* Most module names a list option takes (PeftTrainConfig's arrays). */
#define MAX_MODULE_NAMES 16

/* Raise the ERROR of an unknown key, listing the known ones. */
static void
UnknownOption(const char *key, const PeftEngineApi *engine)
{
	StringInfoData known;
	int			count;
	const PeftOption *options = engine->options(&count);

	initStringInfo(&known);
	for (int i = 0; i < count; i++)
		appendStringInfo(&known, "%s%s", i ? ", " : "", options[i].key);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown option \"%s\"", key),
			 errhint("Known options: %s.", known.data)));
}

/* A JSON array of strings as names (at most MAX_MODULE_NAMES + 1, to let the engine say too many). */
static int
JsonStrings(const char *key, JsonbValue *v, const char **names)
{
	JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
	JsonbValue	elem;
	JsonbIteratorToken tok;
	bool		is_array = false;
	int			n = 0;

	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_ARRAY)
			is_array = true;
		else if (tok == WJB_ELEM)
		{
			if (elem.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid option \"%s\": must be an array of strings", key)));
			if (n <= MAX_MODULE_NAMES)
				names[n++] = pnstrdup(elem.val.string.val, elem.val.string.len);
		}
		else if (tok == WJB_KEY)
			break;
	}
	return is_array ? n : -1;
}

/* One option from JSON through the engine's checks into config. */
static void
ApplyOption(PeftTrainConfig *config, const char *key, JsonbValue *v, const PeftEngineApi *engine)
{
	PeftOptionValue value = {0};
	PeftError	err = {0};
	const char **names = palloc0(sizeof(char *) * (MAX_MODULE_NAMES + 1));

	switch (v->type)
	{
		case jbvNumeric:
			value.type = PEFT_OPTION_NUMBER;
			value.number = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
															  NumericGetDatum(v->val.numeric)));
			break;
		case jbvBool:
			value.type = PEFT_OPTION_BOOL;
			value.boolean = v->val.boolean;
			break;
		case jbvString:
			value.type = PEFT_OPTION_WORD;
			value.word = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		case jbvBinary:
			value.type = PEFT_OPTION_MODULES;
			value.nnames = JsonStrings(key, v, names);
			value.names = names;
			if (value.nnames < 0)
				value.type = PEFT_OPTION_NONE;	/* an object */
			break;
		default:
			value.type = PEFT_OPTION_NONE;	/* null */
			break;
	}
	if (engine->option_set(config, key, &value, &err) == PEFT_OK)
		return;
	if (strncmp(err.message, "unknown option", 14) == 0)
		UnknownOption(key, engine);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", err.message)));
}

/* ERROR unless option key applies to methods and task (its hint: where it does). */
static void
CheckOptionApplies(const char *key, const PeftEngineApi *engine, unsigned methods, PeftTask task)
{
	PeftError	err = {0};

	if (engine->option_applies(key, methods, task, &err) != PEFT_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", err.message),
				 errhint("Leave it out, or choose a method => or task => it applies to.")));
}

/* Parse and check options over the engine's defaults and the session's settings. */
void
ParseTrainOptions(Jsonb *options, const PeftEngineApi *engine, unsigned methods, PeftTask task,
				  PeftTrainConfig *out)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	bool		fraction_given = false;

	engine->train_config_default(out);
	/* unless given: the session's peft.device and peft.precision */
	out->device = (PeftDevice) peft_device;
	out->precision = (PeftPrecision) peft_precision;

	if (!JB_ROOT_IS_OBJECT(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object")));
	it = JsonbIteratorInit(&options->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			ApplyOption(out, key, &v, engine);
			CheckOptionApplies(key, engine, methods, task);
			fraction_given |= strcmp(key, "validation_fraction") == 0;
		}
	}
	if (out->validation_data && fraction_given)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options \"validation_data\" and \"validation_fraction\" exclude each other"),
				 errdetail("With validation_data every row of data trains.")));
	out->methods = methods;
	out->task = task;
}
