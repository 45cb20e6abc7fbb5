/*
 * decoder_commands.c - peft-engine's commands for decoders:
 *
 *   peft-engine generate --model FILE.gguf|DIR (--prompt TEXT | --prompts FILE) [--adapter DIR]
 *                        [--chat | --raw] [--system TEXT] [--max-new-tokens N]
 *                        [--temperature T] [--top-k K] [--top-p P] [--seed S]
 *                        [--stop TEXT]... [--threads N] [--json]
 *   peft-engine logits   --model FILE.gguf|DIR --prompt TEXT [--chat | --raw]
 *                        [--system TEXT] [--top N] [--out FILE] [--threads N]
 *
 * generate prints each completion (or, with --json, one object with the
 * completions, token counts, finish reasons and timings); --prompts reads
 * one prompt per line and decodes them all together.  logits prints the
 * prompt's token ids and its last position's N largest logits as JSON, and
 * writes every logit (float32, little-endian) to --out: the parity scripts
 * compare those with transformers'.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_files.h"
#include "decoder_commands.h"

/* The most prompts --prompts reads, and stop strings --stop takes. */
#define MAX_CLI_PROMPTS 4096
#define MAX_CLI_STOP 16

enum
{
	DF_MODEL = 1, DF_PROMPT, DF_PROMPTS, DF_CHAT, DF_RAW, DF_SYSTEM, DF_MAX_NEW, DF_TEMPERATURE,
	DF_TOP_K, DF_TOP_P, DF_SEED, DF_STOP, DF_THREADS, DF_JSON, DF_TOP, DF_OUT, DF_HELP, DF_ADAPTER
};

static const struct option decoder_flags[] = {
	{"model", required_argument, NULL, DF_MODEL},
	{"adapter", required_argument, NULL, DF_ADAPTER},
	{"prompt", required_argument, NULL, DF_PROMPT},
	{"prompts", required_argument, NULL, DF_PROMPTS},
	{"chat", no_argument, NULL, DF_CHAT},
	{"raw", no_argument, NULL, DF_RAW},
	{"system", required_argument, NULL, DF_SYSTEM},
	{"max-new-tokens", required_argument, NULL, DF_MAX_NEW},
	{"temperature", required_argument, NULL, DF_TEMPERATURE},
	{"top-k", required_argument, NULL, DF_TOP_K},
	{"top-p", required_argument, NULL, DF_TOP_P},
	{"seed", required_argument, NULL, DF_SEED},
	{"stop", required_argument, NULL, DF_STOP},
	{"threads", required_argument, NULL, DF_THREADS},
	{"json", no_argument, NULL, DF_JSON},
	{"top", required_argument, NULL, DF_TOP},
	{"out", required_argument, NULL, DF_OUT},
	{"help", no_argument, NULL, DF_HELP},
	{NULL, 0, NULL, 0}
};

/* What the flags said. */
typedef struct DecoderArgs
{
	const char *model;
	const char *prompt;
	const char *prompts_file;
	const char *adapter;		/* a PEFT adapter folder, or NULL */
	const char *out;
	int			threads;
	int			top;
	bool		json;
	PeftGenerateOptions gen;
	const char *stop[MAX_CLI_STOP];
} DecoderArgs;

/* Print the usage (to stderr after msg: exit 2; else stdout: exit 0). */
static void
decoder_usage(const char *msg)
{
	FILE	   *f = msg ? stderr : stdout;

	if (msg)
		fprintf(f, "peft-engine: %s\n", msg);
	fprintf(f,
			"usage: peft-engine generate --model FILE.gguf|DIR (--prompt TEXT | --prompts FILE) [--adapter DIR]\n"
			"                            [--chat | --raw] [--system TEXT] [--max-new-tokens N]\n"
			"                            [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
			"                            [--stop TEXT]... [--threads N] [--json]\n"
			"       peft-engine logits   --model FILE.gguf|DIR --prompt TEXT [--adapter DIR] [--chat | --raw]\n"
			"                            [--system TEXT] [--top N] [--out FILE] [--threads N]\n"
			"--chat: the prompt is a user turn of the model's chat template (the default when it\n"
			"has one); --raw: the text as it is.  --prompts: one prompt per line, decoded together.\n");
	exit(msg ? 2 : 0);
}

/* A number from text within [min, max] (a usage error otherwise). */
static double
number_arg(const char *text, const char *flag, double min, double max, bool integer)
{
	char	   *end;
	double		v = strtod(text, &end);

	if (end == text || *end != '\0' || !(v >= min && v <= max) || (integer && v != (long long) v))
	{
		fprintf(stderr, "peft-engine: --%s takes %s from %g to %g, not \"%s\"\n", flag,
				integer ? "an integer" : "a number", min, max, text);
		exit(2);
	}
	return v;
}

/* Parse generate's and logits' flags. */
static void
parse_decoder_flags(const PeftEngineApi *api, int argc, char **argv, DecoderArgs *a)
{
	int			c;

	memset(a, 0, sizeof(*a));
	a->threads = 1;
	a->top = 10;
	api->generate_defaults(&a->gen);
	a->gen.stop = a->stop;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", decoder_flags, NULL)) != -1)
		switch (c)
		{
			case DF_MODEL: a->model = optarg; break;
			case DF_ADAPTER: a->adapter = optarg; break;
			case DF_PROMPT: a->prompt = optarg; break;
			case DF_PROMPTS: a->prompts_file = optarg; break;
			case DF_CHAT: a->gen.chat = 1; break;
			case DF_RAW: a->gen.chat = 0; break;
			case DF_SYSTEM: a->gen.system = optarg; break;
			case DF_MAX_NEW: a->gen.max_new_tokens = (int) number_arg(optarg, "max-new-tokens", 1, 1 << 20, true); break;
			case DF_TEMPERATURE: a->gen.temperature = number_arg(optarg, "temperature", 0, 100, false); break;
			case DF_TOP_K: a->gen.top_k = (int) number_arg(optarg, "top-k", 0, 1 << 30, true); break;
			case DF_TOP_P: a->gen.top_p = number_arg(optarg, "top-p", 1e-9, 1, false); break;
			case DF_SEED: a->gen.seed = (uint64_t) number_arg(optarg, "seed", 0, 9007199254740991.0, true); break;
			case DF_STOP:
				if (a->gen.nstop == MAX_CLI_STOP)
					decoder_usage("at most 16 --stop strings");
				a->stop[a->gen.nstop++] = optarg;
				break;
			case DF_THREADS: a->threads = (int) number_arg(optarg, "threads", 1, 256, true); break;
			case DF_JSON: a->json = true; break;
			case DF_TOP: a->top = (int) number_arg(optarg, "top", 1, 1 << 24, true); break;
			case DF_OUT: a->out = optarg; break;
			case DF_HELP: decoder_usage(NULL); break;
			default: decoder_usage("unknown flag (--help lists them)");
		}
	if (optind < argc)
		decoder_usage("unexpected argument");
	if (a->model == NULL)
		decoder_usage("--model is required");
}

/* Exit with the engine's message when rc is an error. */
static void
check(const PeftEngineApi *api, PeftCode rc, const PeftError *err)
{
	if (rc == PEFT_OK)
		return;
	fprintf(stderr, "peft-engine: %s: %s\n", api->code_name(rc), err->message);
	exit(1);
}

/* Seconds on a monotonic clock. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The lines of a file as prompts (empty lines skipped); *n of them. */
static char **
read_prompts(const char *path, int *n)
{
	FILE	   *f = fopen(path, "r");
	char	  **prompts = calloc(MAX_CLI_PROMPTS, sizeof(char *));
	char	   *line = NULL;
	size_t		cap = 0;
	ssize_t		len;

	*n = 0;
	if (f == NULL || prompts == NULL)
	{
		fprintf(stderr, "peft-engine: cannot read %s\n", path);
		exit(1);
	}
	while ((len = getline(&line, &cap, f)) >= 0)
	{
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		if (*n == MAX_CLI_PROMPTS)
			decoder_usage("at most 4096 prompts");
		prompts[(*n)++] = strdup(line);
	}
	free(line);
	fclose(f);
	if (*n == 0)
		decoder_usage("--prompts file has no prompts");
	return prompts;
}

/* Print s as a JSON string. */
static void
print_json_string(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", stdout);
		else if (*p == '\t')
			fputs("\\t", stdout);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}


/* A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) over a decoder. */
static PeftAdapterHandle *
open_decoder_adapter(const PeftEngineApi *api, PeftModelHandle *model, const char *dir)
{
	size_t		config_len,
				weights_len;
	char	   *config = cli_read_file(dir, "adapter_config.json", &config_len);
	char	   *weights = cli_read_file(dir, "adapter_model.safetensors", &weights_len);
	PeftAdapterHandle *adapter;
	PeftError	err = {0};

	if (config == NULL || weights == NULL)
		exit(1);
	check(api, api->adapter_open(model, config, config_len, (const uint8_t *) weights, weights_len,
								 PEFT_TASK_GENERATION, 0, &adapter, &err), &err);
	free(config);
	free(weights);
	return adapter;
}

/* peft-engine generate. */
int
command_generate(const PeftEngineApi *api, int argc, char **argv)
{
	DecoderArgs a;
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	char	  **prompts;
	size_t	   *lengths;
	PeftGeneration *out;
	PeftAdapterHandle *adapter = NULL;
	int			n = 1;
	long		prompt_tokens = 0,
				new_tokens = 0;
	double		t0,
				seconds;

	parse_decoder_flags(api, argc, argv, &a);
	if ((a.prompt == NULL) == (a.prompts_file == NULL))
		decoder_usage("generate needs --prompt or --prompts (one of them)");
	check(api, api->init(a.threads, &err), &err);
	check(api, api->model_open(a.model, &model, &info, &err), &err);
	if (a.prompt)
	{
		prompts = malloc(sizeof(char *));
		prompts[0] = strdup(a.prompt);
	}
	else
		prompts = read_prompts(a.prompts_file, &n);
	lengths = malloc(sizeof(size_t) * n);
	out = calloc(n, sizeof(PeftGeneration));
	for (int i = 0; i < n; i++)
		lengths[i] = strlen(prompts[i]);
	if (a.adapter)
		adapter = open_decoder_adapter(api, model, a.adapter);
	t0 = now_seconds();
	check(api, api->generate(model, adapter, (const char *const *) prompts, lengths, n, &a.gen, out, &err), &err);
	seconds = now_seconds() - t0;
	for (int i = 0; i < n; i++)
	{
		prompt_tokens += out[i].prompt_tokens;
		new_tokens += out[i].tokens;
	}
	if (a.json)
	{
		printf("{\"model\": ");
		print_json_string(a.model);
		printf(", \"threads\": %d, \"prompts\": %d, \"prompt_tokens\": %ld, \"new_tokens\": %ld, "
			   "\"seconds\": %.6f, \"completions\": [", a.threads, n, prompt_tokens, new_tokens, seconds);
		for (int i = 0; i < n; i++)
		{
			printf("%s{\"text\": ", i ? ", " : "");
			print_json_string(out[i].text);
			printf(", \"tokens\": %d, \"prompt_tokens\": %d, \"finish_reason\": \"%s\"}",
				   out[i].tokens, out[i].prompt_tokens, out[i].finish == PEFT_FINISH_LENGTH ? "length" : "stop");
		}
		printf("]}\n");
	}
	else
		for (int i = 0; i < n; i++)
			printf("%s%s\n", n > 1 ? "---\n" : "", out[i].text);
	for (int i = 0; i < n; i++)
	{
		api->free_buffer(out[i].text);
		free(prompts[i]);
	}
	free(prompts);
	free(lengths);
	free(out);
	api->adapter_close(adapter);
	api->model_close(model);
	return 0;
}

/* peft-engine logits. */
int
command_logits(const PeftEngineApi *api, int argc, char **argv)
{
	DecoderArgs a;
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	int32_t    *ids;
	int			n;
	float	   *logits;
	int		   *order;
	PeftAdapterHandle *adapter = NULL;
	double		t0,
				seconds;

	parse_decoder_flags(api, argc, argv, &a);
	if (a.prompt == NULL)
		decoder_usage("logits needs --prompt");
	check(api, api->init(a.threads, &err), &err);
	check(api, api->model_open(a.model, &model, &info, &err), &err);
	check(api, api->tokenize(model, a.prompt, strlen(a.prompt), a.gen.chat != 0 && (a.gen.chat == 1 || info.chat_template),
							 a.gen.system, &ids, &n, &err), &err);
	logits = malloc(sizeof(float) * info.vocab_size);
	order = malloc(sizeof(int) * info.vocab_size);
	t0 = now_seconds();
	if (a.adapter)
		adapter = open_decoder_adapter(api, model, a.adapter);
	check(api, api->logits(model, adapter, ids, n, logits, &err), &err);
	seconds = now_seconds() - t0;
	if (a.out)
	{
		FILE	   *f = fopen(a.out, "wb");

		if (f == NULL || fwrite(logits, sizeof(float), info.vocab_size, f) != (size_t) info.vocab_size ||
			fclose(f) != 0)
		{
			fprintf(stderr, "peft-engine: cannot write %s\n", a.out);
			return 1;
		}
	}
	/* the top N by selection: N is small */
	for (int i = 0; i < info.vocab_size; i++)
		order[i] = i;
	if (a.top > info.vocab_size)
		a.top = info.vocab_size;
	for (int k = 0; k < a.top; k++)
		for (int i = k + 1; i < info.vocab_size; i++)
			if (logits[order[i]] > logits[order[k]])
			{
				int			t = order[k];

				order[k] = order[i];
				order[i] = t;
			}
	printf("{\"prompt_tokens\": %d, \"seconds\": %.6f, \"ids\": [", n, seconds);
	for (int i = 0; i < n; i++)
		printf("%s%d", i ? ", " : "", ids[i]);
	printf("], \"top\": [");
	for (int k = 0; k < a.top; k++)
		printf("%s[%d, %.6f]", k ? ", " : "", order[k], logits[order[k]]);
	printf("]}\n");
	api->free_buffer(ids);
	free(logits);
	free(order);
	api->adapter_close(adapter);
	api->model_close(model);
	return 0;
}
