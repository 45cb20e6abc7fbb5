/*
 * train_options.c - peft_train's options jsonb: every key known, typed and
 * in range, or an ERROR at call time (a doomed job is never queued).  The
 * worker parses the same stored jsonb again with the same code.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "train_options.h"

typedef enum OptionKind
{
	OPT_INT,
	OPT_NUMBER,
	OPT_BOOL,
	OPT_STRING,
	OPT_STRINGS
} OptionKind;

typedef struct OptionSpec
{
	const char *key;
	OptionKind	kind;
	double		min;
	double		max;
	bool		max_exclusive;
} OptionSpec;

static const OptionSpec option_specs[] = {
	{"r", OPT_INT, 1, 4096},
	{"lora_alpha", OPT_NUMBER, 1e-6, 1e6},
	{"lora_dropout", OPT_NUMBER, 0, 1, true},
	{"use_rslora", OPT_BOOL},
	{"target_modules", OPT_STRINGS},
	{"epochs", OPT_INT, 1, 10000},
	{"max_steps", OPT_INT, 1, 2147483647},
	{"batch_size", OPT_INT, 1, 4096},
	{"gradient_accumulation_steps", OPT_INT, 1, 1024},
	{"learning_rate", OPT_NUMBER, 1e-9, 1, true},
	{"weight_decay", OPT_NUMBER, 0, 1, true},
	{"warmup_ratio", OPT_NUMBER, 0, 1},
	{"max_grad_norm", OPT_NUMBER, 0, 1e6},
	{"lr_scheduler_type", OPT_STRING},
	{"max_length", OPT_INT, 2, 65536},
	{"validation_fraction", OPT_NUMBER, 0, 0.9},
	{"hidden_dropout", OPT_NUMBER, 0, 1, true},
	{"seed", OPT_INT, 0, 2147483647},
	{"feedforward_modules", OPT_STRINGS},
	{"reduction_factor", OPT_INT, 1, 4096},
	{"num_virtual_tokens", OPT_INT, 1, 256},
	{"adapter_placement", OPT_STRING},
	{"device", OPT_STRING},
	{"precision", OPT_STRING},
	{"activate", OPT_BOOL},
};

static int	ParseModules(const char *key, JsonbValue *v, const char *names[16],
						 const PeftEngineApi *engine);

/* Raise the ERROR of a bad option. */
static void
BadOption(const char *key, const char *fmt, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid option \"%s\": %s", key, fmt),
			 detail ? errdetail("%s", detail) : 0));
}

/* Find the spec of a key, or raise an ERROR listing the known keys. */
static const OptionSpec *
FindSpec(const char *key)
{
	StringInfoData known;

	for (size_t i = 0; i < lengthof(option_specs); i++)
		if (strcmp(option_specs[i].key, key) == 0)
			return &option_specs[i];
	initStringInfo(&known);
	for (size_t i = 0; i < lengthof(option_specs); i++)
		appendStringInfo(&known, "%s%s", i ? ", " : "", option_specs[i].key);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown option \"%s\"", key),
			 errhint("Known options: %s.", known.data)));
	return NULL;
}

/* A number from a jsonb numeric value. */
static double
NumericValue(JsonbValue *v)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
}

/* Check and store one option. */
static void
ApplyOption(TrainOptionsSql *o, const char *key, JsonbValue *v,
			const PeftEngineApi *engine)
{
	const OptionSpec *spec = FindSpec(key);
	PeftTrainConfig *c = &o->config;
	double		x = 0;

	switch (spec->kind)
	{
		case OPT_INT:
		case OPT_NUMBER:
			if (v->type != jbvNumeric)
				BadOption(key, "must be a number", NULL);
			x = NumericValue(v);
			if (!isfinite(x) || (spec->kind == OPT_INT && x != floor(x)))
				BadOption(key, spec->kind == OPT_INT ? "must be an integer" : "must be finite", NULL);
			if (x < spec->min || x > spec->max || (spec->max_exclusive && x >= spec->max))
				BadOption(key, psprintf("%.15g is out of range [%.15g, %.15g%s", x, spec->min, spec->max,
										spec->max_exclusive ? ")" : "]"), NULL);
			break;
		case OPT_BOOL:
			if (v->type != jbvBool)
				BadOption(key, "must be true or false", NULL);
			break;
		case OPT_STRING:
			if (v->type != jbvString)
				BadOption(key, "must be a string", NULL);
			break;
		case OPT_STRINGS:
			break;				/* handled below */
	}

	if (strcmp(key, "r") == 0)
		c->r = (int) x;
	else if (strcmp(key, "lora_alpha") == 0)
		c->lora_alpha = x;
	else if (strcmp(key, "lora_dropout") == 0)
		c->lora_dropout = x;
	else if (strcmp(key, "use_rslora") == 0)
		c->use_rslora = v->val.boolean;
	else if (strcmp(key, "reduction_factor") == 0)
		c->reduction_factor = (int) x;
	else if (strcmp(key, "num_virtual_tokens") == 0)
		c->num_virtual_tokens = (int) x;
	else if (strcmp(key, "epochs") == 0)
		c->epochs = (int) x;
	else if (strcmp(key, "max_steps") == 0)
		c->max_steps = (int) x;
	else if (strcmp(key, "batch_size") == 0)
		c->batch_size = (int) x;
	else if (strcmp(key, "gradient_accumulation_steps") == 0)
		c->gradient_accumulation_steps = (int) x;
	else if (strcmp(key, "learning_rate") == 0)
		c->learning_rate = x;
	else if (strcmp(key, "weight_decay") == 0)
		c->weight_decay = x;
	else if (strcmp(key, "warmup_ratio") == 0)
		c->warmup_ratio = x;
	else if (strcmp(key, "max_grad_norm") == 0)
		c->max_grad_norm = x;
	else if (strcmp(key, "max_length") == 0)
		c->max_length = (int) x;
	else if (strcmp(key, "validation_fraction") == 0)
		c->validation_fraction = x;
	else if (strcmp(key, "hidden_dropout") == 0)
		c->hidden_dropout = x;
	else if (strcmp(key, "seed") == 0)
		c->seed = (uint64_t) x;
	else if (strcmp(key, "activate") == 0)
		o->activate = v->val.boolean;
	else if (strcmp(key, "lr_scheduler_type") == 0)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

		if (strcmp(s, "linear") == 0)
			c->schedule = PEFT_SCHEDULE_LINEAR;
		else if (strcmp(s, "cosine") == 0)
			c->schedule = PEFT_SCHEDULE_COSINE;
		else if (strcmp(s, "constant") == 0)
			c->schedule = PEFT_SCHEDULE_CONSTANT;
		else
			BadOption(key, "must be linear, cosine or constant", NULL);
	}
	else if (strcmp(key, "device") == 0)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

		if (strcmp(s, "auto") == 0)
			c->device = PEFT_DEVICE_AUTO;
		else if (strcmp(s, "cpu") == 0)
			c->device = PEFT_DEVICE_CPU;
		else if (strcmp(s, "cuda") == 0)
			c->device = PEFT_DEVICE_CUDA;
		else
			BadOption(key, "must be auto, cpu or cuda", NULL);
	}
	else if (strcmp(key, "precision") == 0)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

		if (strcmp(s, "fp32") == 0)
			c->precision = PEFT_PRECISION_FP32;
		else if (strcmp(s, "tf32") == 0)
			c->precision = PEFT_PRECISION_TF32;
		else if (strcmp(s, "bf16") == 0)
			c->precision = PEFT_PRECISION_BF16;
		else
			BadOption(key, "must be fp32, tf32 or bf16", NULL);
	}
	else if (strcmp(key, "target_modules") == 0)
		c->num_targets = ParseModules(key, v, c->target_modules, engine);
	else if (strcmp(key, "feedforward_modules") == 0)
		c->num_feedforward = ParseModules(key, v, c->feedforward_modules, engine);
	else if (strcmp(key, "adapter_placement") == 0)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

		if (strcmp(s, "houlsby") == 0)
			c->houlsby = true;
		else if (strcmp(s, "pfeiffer") == 0)
			c->houlsby = false;
		else
			BadOption(key, "must be houlsby or pfeiffer", NULL);
	}
}

/*
 * A list of module names (a string or an array of strings, at most 16),
 * checked against the model's linear layers; returns how many.
 */
static int
ParseModules(const char *key, JsonbValue *v, const char *names[16], const PeftEngineApi *engine)
{
	int			n = 0;
	PeftError	err = {0};

	if (v->type == jbvString)
		names[n++] = pnstrdup(v->val.string.val, v->val.string.len);
	else if (v->type == jbvBinary)
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		bool		is_array = false;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_BEGIN_ARRAY)
				is_array = true;
			else if (tok == WJB_ELEM)
			{
				if (elem.type != jbvString)
					BadOption(key, "must be an array of strings", NULL);
				if (n == 16)
					BadOption(key, "lists too many modules", NULL);
				names[n++] = pnstrdup(elem.val.string.val, elem.val.string.len);
			}
			else if (tok == WJB_KEY)
				break;
		}
		if (!is_array)
			BadOption(key, "must be an array of strings", NULL);
	}
	else
		BadOption(key, "must be an array of strings", NULL);
	if (n == 0 && strcmp(key, "target_modules") == 0)
		BadOption(key, "must name at least one module", NULL);
	if (n > 0 && engine->check_targets(names, n, &err) != PEFT_OK)
		BadOption(key, err.message, NULL);
	return n;
}

/* Parse and check options over the engine's defaults. */
void
ParseTrainOptions(Jsonb *options, const PeftEngineApi *engine, TrainOptionsSql *out)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	memset(out, 0, sizeof(*out));
	engine->train_config_default(&out->config);
	out->config.max_length = 0;	/* unless given: 128, capped by the model */
	out->activate = true;
	/* unless given: the session's peft.device and peft.precision */
	out->config.device = (PeftDevice) peft_device;
	out->config.precision = (PeftPrecision) peft_precision;

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
			ApplyOption(out, key, &v, engine);
	}
}
