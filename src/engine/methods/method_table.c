/*
 * method_table.c - the adapter methods as one table: a row per method is
 * what parsing, canonical names, the SQL layer's hints and merge checks
 * know about it.  Combinations ("lora+bitfit") are at most one of LoRA,
 * DoRA and (IA)^3, with any of BitFit, bottleneck adapters and one of
 * prompt and prefix tuning.
 */
#include "method_table.h"

#include <stdio.h>
#include <string.h>

/* Every method trains a head for both tasks on BERT-family encoders. */
#define ENCODER_TASKS ((1u << PEFT_TASK_CLASSIFICATION) | (1u << PEFT_TASK_REGRESSION))
#define ENCODERS "bert"

/*
 * Default learning rates: of the rates swept, the lowest whose validation
 * accuracy after one epoch, averaged over seeds and over the demo tickets
 * and the VADER lexicon, is within 0.005 of the best
 * (test/bench/lr_sweep.sh; test/bench/RESULTS.md, 2026-12-05).  BitFit,
 * adapters, prompt and prefix tuning won at the top of the grid.
 */
#define LORA_LR 5e-3
#define IA3_LR 1e-2
#define BITFIT_LR 1e-2
#define ADAPTER_LR 5e-3
#define PROMPT_LR 3e-2
#define PREFIX_LR 3e-2

static const PeftMethodInfo methods[] = {
	{"lora", PEFT_METHOD_LORA, "LORA", true, ENCODER_TASKS, ENCODERS, LORA_LR,
	 "LoRA A and B on target_modules (default query, value)"},
	{"dora", PEFT_METHOD_DORA, "LORA", true, ENCODER_TASKS, ENCODERS, LORA_LR,
	 "LoRA plus a magnitude per output row (PEFT's use_dora)"},
	{"ia3", PEFT_METHOD_IA3, "IA3", true, ENCODER_TASKS, ENCODERS, IA3_LR,
	 "vectors scaling the outputs (or, for feedforward_modules, the inputs) of target_modules"},
	{"bitfit", PEFT_METHOD_BITFIT, NULL, false, ENCODER_TASKS, ENCODERS, BITFIT_LR,
	 "every bias of the encoder (with LoRA or DoRA: PEFT's bias \"all\")"},
	{"adapter", PEFT_METHOD_ADAPTER, NULL, false, ENCODER_TASKS, ENCODERS, ADAPTER_LR,
	 "bottleneck adapters after the feed-forward block (and attention: houlsby)"},
	{"prompt", PEFT_METHOD_PROMPT, "PROMPT_TUNING", false, ENCODER_TASKS, ENCODERS, PROMPT_LR,
	 "num_virtual_tokens trainable input embeddings before every input"},
	{"prefix", PEFT_METHOD_PREFIX, "PREFIX_TUNING", false, ENCODER_TASKS, ENCODERS, PREFIX_LR,
	 "num_virtual_tokens trainable keys and values in every layer"},
};
#define NMETHODS ((int) (sizeof(methods) / sizeof(methods[0])))

/* The default learning rate of a run of methods: the lowest of theirs (0 reads as LoRA). */
double
methods_learning_rate(unsigned bits)
{
	double		lr = 0;

	for (int k = 0; k < NMETHODS; k++)
		if ((bits ? bits : PEFT_METHOD_LORA) & methods[k].bit)
			lr = lr == 0 || methods[k].learning_rate < lr ? methods[k].learning_rate : lr;
	return lr;
}

/* The method table: *count rows. */
const PeftMethodInfo *
method_table(int *count)
{
	*count = NMETHODS;
	return methods;
}

/* The names of the methods in bits as "a, b, ...<last>z" into buf (last: " and ", " or "). */
const char *
method_names_list(unsigned bits, const char *last, char *buf, size_t len)
{
	int			left = 0;

	for (int k = 0; k < NMETHODS; k++)
		left += (bits & methods[k].bit) != 0;
	buf[0] = '\0';
	for (int k = 0; k < NMETHODS; k++)
		if (bits & methods[k].bit)
		{
			left--;
			snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", methods[k].name,
					 left > 1 ? ", " : left == 1 ? last : "");
		}
	return buf;
}

/* The canonical name of PEFT_METHOD_* bits, e.g. "dora+bitfit". */
const char *
adapter_methods_name(unsigned bits, char *buf, size_t len)
{
	buf[0] = '\0';
	for (int k = 0; k < NMETHODS; k++)
		if (bits & methods[k].bit)
			snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", buf[0] ? "+" : "", methods[k].name);
	return buf;
}

/* Whether any of the methods in bits can be folded into the base weights. */
bool
methods_mergeable(unsigned bits)
{
	for (int k = 0; k < NMETHODS; k++)
		if ((bits & methods[k].bit) && methods[k].mergeable)
			return true;
	return false;
}

/* Parse "lora", "dora", ... or a "+" combination into PEFT_METHOD_* bits. */
PeftCode
adapter_parse_method(const char *name, unsigned *out, PeftError *err)
{
	const char *at = name;
	unsigned	bits = 0;
	char		names[128];

	*out = 0;
	while (*at)
	{
		size_t		len = strcspn(at, "+");
		unsigned	bit = 0;

		for (int k = 0; k < NMETHODS; k++)
			if (strlen(methods[k].name) == len && strncmp(methods[k].name, at, len) == 0)
				bit = methods[k].bit;
		if (bit == 0 || (bits & bit))
			return peft_fail(err, PEFT_ERR_INVALID,
							 "method \"%s\" is not a combination of %s (each at most once, joined by +)",
							 name, method_names_list(~0u, " and ", names, sizeof(names)));
		bits |= bit;
		at += len;
		if (*at == '+')
			at++;
	}
	if (bits == 0)
		return peft_fail(err, PEFT_ERR_INVALID, "method is empty");
	if (__builtin_popcount(bits & (PEFT_METHOD_LORA | PEFT_METHOD_DORA | PEFT_METHOD_IA3)) > 1)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "method \"%s\" combines more than one of lora, dora and ia3", name);
	if ((bits & PEFT_METHOD_PROMPT) && (bits & PEFT_METHOD_PREFIX))
		return peft_fail(err, PEFT_ERR_INVALID,
						 "method \"%s\" combines prompt and prefix tuning", name);
	*out = bits;
	return PEFT_OK;
}

/* Whether architecture is one of the comma-separated names in list. */
static bool
names_contain(const char *list, const char *architecture)
{
	size_t		n = strlen(architecture);

	for (const char *at = list; *at; at += strcspn(at, ","), at += (*at == ','))
		if (strncmp(at, architecture, n) == 0 && (at[n] == ',' || at[n] == '\0'))
			return true;
	return false;
}

/* Check that every method in bits trains for task on a model of architecture. */
PeftCode
methods_check_support(unsigned bits, PeftTask task, const char *architecture, PeftError *err)
{
	for (int k = 0; k < NMETHODS; k++)
	{
		if (!(bits & methods[k].bit))
			continue;
		if (!(methods[k].tasks & (1u << task)))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED, "method %s does not train for this task",
							 methods[k].name);
		if (!names_contain(methods[k].architectures, architecture))
			return peft_fail(err, PEFT_ERR_UNSUPPORTED,
							 "method %s does not work on %s models (it works on: %s)",
							 methods[k].name, architecture, methods[k].architectures);
	}
	return PEFT_OK;
}
