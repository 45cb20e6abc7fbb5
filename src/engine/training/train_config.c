/*
 * train_config.c - the training options as one table.
 *
 * A row per option (key, type, range, default, where it lands in
 * PeftTrainConfig, help) is everything the rest of the code knows about
 * it: train_config_default fills the defaults from the table, option_set
 * checks a JSON value (peft_train's options) and option_parse a text value
 * (peft-engine's --flags) against the row and store it, and the SQL
 * layer's hints, the command line's --help and the README's options table
 * are made from it.  Adding an option is a row here plus its use.
 */
#include "train_config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder_adapter.h"
#include "method_table.h"
#include "words.h"

/* Where a PeftTrainConfig field is and its size, as designated initializers. */
#define FIELD(f) .offset = offsetof(PeftTrainConfig, f), .size = sizeof(((PeftTrainConfig *) 0)->f)

/*
 * Rows of the table, by kind (range and default as numbers, then as people
 * read them); a row may end with .methods and .tasks, what it applies to.
 */
#define INT_OPTION(k, f, lo, hi, def, deftext, h, ...) \
	{.key = k, .type = PEFT_OPTION_INT, .min = lo, .max = hi, FIELD(f), .default_value = def, \
	 .default_text = deftext, .help = h, __VA_ARGS__}
#define NUMBER_OPTION(k, f, lo, hi, open, def, deftext, h, ...) \
	{.key = k, .type = PEFT_OPTION_NUMBER, .min = lo, .max = hi, .max_open = open, FIELD(f), \
	 .default_value = def, .default_text = deftext, .help = h, __VA_ARGS__}
#define BOOL_OPTION(k, f, def, h, ...) \
	{.key = k, .type = PEFT_OPTION_BOOL, .min = 0, .max = 1, FIELD(f), .default_value = def, \
	 .default_text = (def) ? "true" : "false", .help = h, __VA_ARGS__}
#define WORD_OPTION(k, f, w, def, deftext, h, ...) \
	{.key = k, .type = PEFT_OPTION_WORD, .words = w, FIELD(f), .default_value = def, \
	 .default_text = deftext, .help = h, __VA_ARGS__}
#define TEXT_OPTION(k, f, h, ...) \
	{.key = k, .type = PEFT_OPTION_TEXT, FIELD(f), .default_text = "none", .help = h, __VA_ARGS__}
#define MODULES_OPTION(k, f, count, def, deftext, h, ...) \
	{.key = k, .type = PEFT_OPTION_MODULES, FIELD(f), .count_offset = offsetof(PeftTrainConfig, count), \
	 .default_value = def, .default_text = deftext, .help = h, __VA_ARGS__}

#define LORA_FAMILY (PEFT_METHOD_LORA | PEFT_METHOD_DORA)
#define CLASSIFICATION (1u << PEFT_TASK_CLASSIFICATION)
#define GENERATION (1u << PEFT_TASK_GENERATION)

/* Most module names an option takes (the size of the arrays in PeftTrainConfig). */
#define MAX_MODULES 16

/*
 * Defaults are Hugging Face's (TrainingArguments, LoraConfig) where they
 * have one.  A default outside the range is a "not given" marker that the
 * engine resolves: learning_rate 0 (the method's, method_table.c),
 * max_steps 0 (epochs decide), max_length 0 (128, capped by the model), hidden_dropout -1 (the model's), feedforward_modules -1
 * names (the method's), target_modules 0 names (the method's).
 */
static const PeftOption option_table[] = {
	INT_OPTION("r", r, 1, 4096, 8, "8", "LoRA rank (1..4096)", .methods = LORA_FAMILY),
	NUMBER_OPTION("lora_alpha", lora_alpha, 1e-6, 1e6, false, 16, "16",
				  "scaling numerator: updates are scaled by alpha/r (or alpha/sqrt(r) with `use_rslora`)", .methods = LORA_FAMILY),
	NUMBER_OPTION("lora_dropout", lora_dropout, 0, 1, true, 0.1, "0.1", "dropout on the adapter's input", .methods = LORA_FAMILY),
	BOOL_OPTION("use_rslora", use_rslora, 0, "rank-stabilised scaling alpha/sqrt(r)", .methods = LORA_FAMILY),
	MODULES_OPTION("target_modules", target_modules, num_targets, 0,
				   "`[\"query\", \"value\"]`; (IA)^3: `[\"key\", \"value\", \"output.dense\"]`; decoders: "
				   "`[\"q_proj\", \"v_proj\"]`, (IA)^3 `[\"k_proj\", \"v_proj\", \"down_proj\"]`",
				   "linear layers to adapt, matched like Hugging Face PEFT (exact name or dotted suffix, "
				   "so `output.dense` names both dense outputs): `query`, `key`, `value`, "
				   "`attention.output.dense`, `intermediate.dense`, `output.dense`, `dense`; decoders: "
				   "`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`, or `all-linear`",
				   .methods = LORA_FAMILY | PEFT_METHOD_IA3),
	INT_OPTION("epochs", epochs, 1, 10000, 3, "3", "passes over the training rows"),
	INT_OPTION("max_steps", max_steps, 1, 2147483647, 0, "none",
			   "stop after this many optimizer steps instead (Hugging Face's `max_steps`: it replaces "
			   "`epochs`, running as many passes as it takes, and the learning-rate schedule spans it); "
			   "validation runs at the end of every pass and at the last step"),
	INT_OPTION("batch_size", batch_size, 1, 4096, 32, "32", "rows per micro-batch"),
	INT_OPTION("gradient_accumulation_steps", gradient_accumulation_steps, 1, 1024, 1, "1",
			   "micro-batches per optimizer step"),
	NUMBER_OPTION("learning_rate", learning_rate, 1e-9, 1, true, 0,
				  "the method's: lora, dora, adapter 5e-3; ia3, bitfit 1e-2; prompt, prefix 3e-2 "
				  "(combined: the lowest)",
				  "peak learning rate (AdamW, decoupled weight decay)"),
	NUMBER_OPTION("weight_decay", weight_decay, 0, 1, true, 0.01, "0.01", "AdamW weight decay"),
	NUMBER_OPTION("warmup_ratio", warmup_ratio, 0, 1, false, 0.06, "0.06", "share of steps with linear warm-up"),
	INT_OPTION("warmup_steps", warmup_steps, 0, 2147483647, -1, "none",
			   "steps of linear warm-up, instead of `warmup_ratio` (Hugging Face's `warmup_steps`)"),
	WORD_OPTION("lr_scheduler_type", schedule, peft_schedule_words, PEFT_SCHEDULE_LINEAR, "`linear`",
				"`linear`, `cosine` or `constant` after warm-up"),
	NUMBER_OPTION("max_grad_norm", max_grad_norm, 0, 1e6, false, 1.0, "1.0",
				  "clip gradients to this global norm (0: off)"),
	INT_OPTION("max_length", max_length, 2, 65536, 0, "128 (capped by the model); generation 512",
			   "tokens per row, including `[CLS]` and `[SEP]`; generation: prompt (template included) and "
			   "completion, cut from the prompt's start, never from the completion"),
	NUMBER_OPTION("validation_fraction", validation_fraction, 0, 0.9, false, 0.1, "0.1",
				  "rows held out (deterministically, by `seed`) for validation metrics"),
	TEXT_OPTION("validation_data", validation_data,
				"validation rows from elsewhere instead of `validation_fraction`: in SQL a table, view or "
				"query read as the caller with the same `input` and `label` columns (the job trains on every "
				"row of `data`); for `peft-engine` a file like `--data`"),
	BOOL_OPTION("group_by_length", group_by_length, 1,
				"batch rows of similar lengths together (less padding; Hugging Face's `group_by_length`)"),
	NUMBER_OPTION("hidden_dropout", hidden_dropout, 0, 1, true, -1, "the model's (0.1)",
				  "dropout inside the frozen model while training"),
	INT_OPTION("seed", seed, 0, 2147483647, 42, "42", "initialisation, dropout, split and batch order"),
	MODULES_OPTION("feedforward_modules", feedforward_modules, num_feedforward, -1,
				   "`[\"output.dense\"]`; decoders `[\"down_proj\"]`",
				   "(IA)^3: the modules whose input (not output) is scaled", .methods = PEFT_METHOD_IA3),
	INT_OPTION("reduction_factor", reduction_factor, 1, 4096, 16, "16",
			   "`adapter`: bottleneck width = hidden size / this", .methods = PEFT_METHOD_ADAPTER),
	INT_OPTION("num_virtual_tokens", num_virtual_tokens, 1, 256, 8, "8",
			   "`prompt`, `prefix`: virtual tokens (prompt tuning) or prefixes per layer (prefix tuning)",
			   .methods = PEFT_METHOD_PROMPT | PEFT_METHOD_PREFIX),
	WORD_OPTION("adapter_placement", adapter_placement, peft_placement_words, PEFT_PLACEMENT_PFEIFFER,
				"`pfeiffer`", "`adapter`: `pfeiffer` (after the feed-forward) or `houlsby` (after attention too)",
				.methods = PEFT_METHOD_ADAPTER),
	WORD_OPTION("device", device, peft_device_words, PEFT_DEVICE_AUTO, "`peft.device`",
				"`auto` (CUDA when the engine has it and a device is visible, else the CPU), `cpu` or "
				"`cuda` (an error where no device is usable); the job's `metrics` record the one used"),
	WORD_OPTION("precision", precision, peft_precision_words, PEFT_PRECISION_FP32, "`peft.precision`",
				"matrix products on CUDA: `fp32`, `tf32` (tensor cores) or `bf16` (BF16 operands); both "
				"accumulate in FP32 and keep FP32 adapter weights; on the CPU encoders compute in FP32, "
				"decoders' products with the frozen weights take `bf16` where the CPU has AMX (metrics "
				"`device` `cpu-bf16`; elsewhere FP32)"),
	INT_OPTION("max_classes", max_classes, 2, 100000, 100, "100",
			   "classification: most distinct labels among the rows read (more is an error: a numeric "
			   "label may want `task => 'regression'`)", .tasks = CLASSIFICATION),
	BOOL_OPTION("activate", activate, 1, "make the new version the active one"),
	BOOL_OPTION("chat", chat, 1,
				"generation: render each prompt as a user turn of the model's chat template (false: raw "
				"text); the completion then ends with the template's end-of-turn token", .tasks = GENERATION),
	TEXT_OPTION("system", system, "generation: the system message of chat prompts (default: the "
				"template's own)", .tasks = GENERATION),
	BOOL_OPTION("eval_generate", eval_generate, 1,
				"generation: validation also generates greedily for up to 200 validation rows and reports "
				"the exact-match rate (only when completions average under 32 tokens)", .tasks = GENERATION),
};

/* The option table: *count rows. */
const PeftOption *
train_config_options(int *count)
{
	*count = (int) (sizeof(option_table) / sizeof(option_table[0]));
	return option_table;
}

/* The row of key, or NULL. */
const PeftOption *
train_config_find(const char *key)
{
	for (size_t i = 0; i < sizeof(option_table) / sizeof(option_table[0]); i++)
		if (strcmp(option_table[i].key, key) == 0)
			return &option_table[i];
	return NULL;
}

/* Check that option key, given explicitly, applies to a run's methods and task. */
PeftCode
train_config_applies(const char *key, unsigned methods, PeftTask task, PeftError *err)
{
	const PeftOption *o = train_config_find(key);
	char		names[128];
	char		given[64];

	if (o == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "unknown option \"%s\"", key);
	if (o->methods && !(o->methods & methods))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "option \"%s\" does not apply to method %s: it applies to %s", key,
						 adapter_methods_name(methods, given, sizeof(given)),
						 method_names_list(o->methods, " or ", names, sizeof(names)));
	if (o->tasks && !(o->tasks & (1u << task)))
	{
		names[0] = '\0';
		for (int t = 0; peft_task_words[t]; t++)
			if (o->tasks & (1u << t))
				snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
						 names[0] ? " or " : "", peft_task_words[t]);
		return peft_fail(err, PEFT_ERR_INVALID, "option \"%s\" does not apply to task %s: it applies to %s",
						 key, peft_task_words[task], names);
	}
	return PEFT_OK;
}

/* Store a number in an option's field, whatever its C type (by its size and type). */
static void
store_number(PeftTrainConfig *c, const PeftOption *o, double x)
{
	char	   *at = (char *) c + o->offset;

	if (o->type == PEFT_OPTION_NUMBER)
		*(double *) at = x;
	else if (o->type == PEFT_OPTION_BOOL)
		*(bool *) at = x != 0;
	else if (o->size == sizeof(uint64_t))
		*(uint64_t *) at = (uint64_t) (int64_t) x;
	else
		*(int *) at = (int) x;	/* int and the enums of WORD options */
}

/* Fill every option's default (the other fields are zero; task classification, method LoRA). */
void
train_config_default(PeftTrainConfig *c)
{
	memset(c, 0, sizeof(*c));
	c->task = PEFT_TASK_CLASSIFICATION;
	c->methods = PEFT_METHOD_LORA;
	for (size_t i = 0; i < sizeof(option_table) / sizeof(option_table[0]); i++)
	{
		const PeftOption *o = &option_table[i];

		if (o->type == PEFT_OPTION_MODULES)
			*(int *) ((char *) c + o->count_offset) = (int) o->default_value;
		else if (o->type == PEFT_OPTION_TEXT)
			continue;			/* NULL: not given */
		else
			store_number(c, o, o->default_value);
	}
}

/* An error about option o: "invalid option "key": ...". */
static PeftCode
bad_value(PeftError *err, const PeftOption *o, const char *what)
{
	return peft_fail(err, PEFT_ERR_INVALID, "invalid option \"%s\": %s", o->key, what);
}

/* The words of a WORD option as "a, b or c" into buf. */
static const char *
word_list(const char *const *words, char *buf, size_t len)
{
	buf[0] = '\0';
	for (int i = 0; words[i]; i++)
		snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", i == 0 ? "" : words[i + 1] ? ", " : " or ",
				 words[i]);
	return buf;
}

/*
 * The engine's lasting copy of a module name: configs are copied by value and
 * outlive the caller's strings, so they point here.  Names are checked first,
 * so the set is small (the suffixes of the model's linear paths).
 */
static const char *
intern_module_name(const char *name)
{
	static char *names[64];

	for (int i = 0; i < 64; i++)
	{
		if (names[i] == NULL)
			return (names[i] = strdup(name));
		if (strcmp(names[i], name) == 0)
			return names[i];
	}
	return NULL;
}

/* Check a module list and store it (as the engine's copies of the names). */
static PeftCode
set_modules(PeftTrainConfig *c, const PeftOption *o, const char *const *names, int n, PeftError *err)
{
	const char **slots = (const char **) ((char *) c + o->offset);
	bool		flags[BERT_NUM_LINEAR];
	bool		llama_flags[LLAMA_NUM_LINEAR];
	PeftError	cause = {0};
	PeftError	other = {0};

	if (n == 0 && strcmp(o->key, "target_modules") == 0)
		return bad_value(err, o, "must name at least one module");
	if (n > MAX_MODULES)
		return bad_value(err, o, "lists too many modules");
	/*
	 * Names of an encoder's linears or of a decoder's: which model the run
	 * trains is not known here (train_begin checks them against it).
	 */
	if (n > 0 && lora_parse_targets(flags, names, n, &cause) != PEFT_OK &&
		decoder_adapter_parse_targets(llama_flags, names, n, &other) != PEFT_OK)
	{
		char		both[sizeof(cause.message) + 128];

		snprintf(both, sizeof(both), "%s (decoders: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
				 "down_proj or all-linear)", cause.message);
		return bad_value(err, o, both);
	}
	for (int i = 0; i < n; i++)
		if ((slots[i] = intern_module_name(names[i])) == NULL)
			return peft_fail(err, PEFT_ERR_NOMEM, "out of memory for module names");
	*(int *) ((char *) c + o->count_offset) = n;
	return PEFT_OK;
}

/* Check a value against option key and store it. */
PeftCode
train_config_set(PeftTrainConfig *c, const char *key, const PeftOptionValue *v, PeftError *err)
{
	const PeftOption *o = train_config_find(key);
	char		buf[256];
	double		x = v->number;
	int			index;

	if (o == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "unknown option \"%s\"", key);
	switch (o->type)
	{
		case PEFT_OPTION_INT:
		case PEFT_OPTION_NUMBER:
			if (v->type != PEFT_OPTION_INT && v->type != PEFT_OPTION_NUMBER)
				return bad_value(err, o, "must be a number");
			if (!isfinite(x) || (o->type == PEFT_OPTION_INT && x != floor(x)))
				return bad_value(err, o, o->type == PEFT_OPTION_INT ? "must be an integer" : "must be finite");
			if (x < o->min || x > o->max || (o->max_open && x >= o->max))
			{
				snprintf(buf, sizeof(buf), "%.15g is out of range [%.15g, %.15g%s", x, o->min, o->max,
						 o->max_open ? ")" : "]");
				return bad_value(err, o, buf);
			}
			store_number(c, o, x);
			return PEFT_OK;
		case PEFT_OPTION_BOOL:
			if (v->type != PEFT_OPTION_BOOL)
				return bad_value(err, o, "must be true or false");
			store_number(c, o, v->boolean);
			return PEFT_OK;
		case PEFT_OPTION_WORD:
			if (v->type != PEFT_OPTION_WORD || v->word == NULL)
				return bad_value(err, o, "must be a string");
			if ((index = peft_word_index(o->words, v->word)) < 0)
			{
				char		words[192];

				snprintf(buf, sizeof(buf), "must be %s", word_list(o->words, words, sizeof(words)));
				return bad_value(err, o, buf);
			}
			store_number(c, o, index);
			return PEFT_OK;
		case PEFT_OPTION_TEXT:
			if (v->type != PEFT_OPTION_WORD || v->word == NULL)
				return bad_value(err, o, "must be a string");
			if (v->word[strspn(v->word, " \t\r\n;")] == '\0')
				return bad_value(err, o, "must not be empty");
			*(const char **) ((char *) c + o->offset) = v->word;
			return PEFT_OK;
		case PEFT_OPTION_MODULES:
			if (v->type == PEFT_OPTION_WORD && v->word != NULL)
				return set_modules(c, o, &v->word, 1, err);
			if (v->type != PEFT_OPTION_MODULES)
				return bad_value(err, o, "must be an array of strings");
			return set_modules(c, o, v->names, v->nnames, err);
		case PEFT_OPTION_NONE:
			break;
	}
	return peft_fail(err, PEFT_ERR_INTERNAL, "option \"%s\" has an unknown type", key);
}

/* The same from text: a number, true/false, a word, or comma-separated names. */
PeftCode
train_config_parse(PeftTrainConfig *c, const char *key, const char *text, PeftError *err)
{
	const PeftOption *o = train_config_find(key);
	PeftOptionValue v = {0};
	char	   *end;

	if (o == NULL)
		return peft_fail(err, PEFT_ERR_INVALID, "unknown option \"%s\"", key);
	switch (o->type)
	{
		case PEFT_OPTION_INT:
		case PEFT_OPTION_NUMBER:
			errno = 0;
			v.type = PEFT_OPTION_NUMBER;
			v.number = strtod(text, &end);
			if (end == text || *end != '\0' || errno == ERANGE)
				return bad_value(err, o, "must be a number");
			break;
		case PEFT_OPTION_BOOL:
			v.type = PEFT_OPTION_BOOL;
			if (strcmp(text, "true") == 0 || strcmp(text, "on") == 0 || strcmp(text, "1") == 0)
				v.boolean = true;
			else if (strcmp(text, "false") != 0 && strcmp(text, "off") != 0 && strcmp(text, "0") != 0)
				return bad_value(err, o, "must be true or false");
			break;
		case PEFT_OPTION_WORD:
		case PEFT_OPTION_TEXT:
			v.type = PEFT_OPTION_WORD;
			v.word = text;
			break;
		case PEFT_OPTION_NONE:
			break;
		case PEFT_OPTION_MODULES:
			{
				/* split a copy at commas; set_modules keeps its own copies */
				const char *kept[MAX_MODULES + 1];
				char		copy[1024];
				char	   *save = NULL;
				int			n = 0;

				if (strlen(text) >= sizeof(copy))
					return bad_value(err, o, "is too long");
				strcpy(copy, text);
				for (char *at = strtok_r(copy, ",", &save); at && n <= MAX_MODULES;
					 at = strtok_r(NULL, ",", &save))
					kept[n++] = at;
				v.type = PEFT_OPTION_MODULES;
				v.names = (const char *const *) kept;
				v.nnames = n;
				return train_config_set(c, key, &v, err);
			}
	}
	return train_config_set(c, key, &v, err);
}
