/*
 * peft_engine_main.c - peft-engine, the engine's command-line runner.
 *
 * Drives the engine with no server, for benchmarks, GPU checks and
 * debugging:
 *
 *   peft-engine train   --model DIR --data FILE.tsv --out ADAPTER_DIR [options]
 *   peft-engine predict --model DIR --adapter ADAPTER_DIR --data FILE.tsv
 *   peft-engine embed   --model DIR [--adapter ADAPTER_DIR] --data FILE.tsv [--print]
 *   peft-engine options
 *   peft-engine export-gguf --model FILE.gguf --adapter ADAPTER_DIR --out FILE.gguf
 *
 * It links peft_engine.so and calls it only through its API table
 * (engine_api.h), the way the server's worker and SQL functions do, so a
 * run here trains the same adapter as peft_train on the same rows.  The
 * training flags are the option table's keys with "-" for "_"
 * (--learning-rate, --target-modules, ...), parsed by the engine.
 *
 * Data files hold one row per line: the text, a TAB, the label (the label
 * is the part after the last TAB; predict and embed read the text before
 * the first TAB, or the whole line).  An adapter folder holds
 * adapter_model.safetensors and adapter_config.json as Hugging Face PEFT
 * writes them, plus peft_head.json (task and label names).
 */
#include <errno.h>
#include <getopt.h>
#include <search.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "blas_kernels.h"
#include "cli_files.h"
#include "decoder_commands.h"
#include "engine_api.h"
#include "export_gguf_command.h"

/* Tokens per row of predict and embed unless --max-length (training's default). */
#define DEFAULT_MAX_LENGTH 128

/* What the command line asks for. */
typedef struct Options
{
	const char *model;
	const char *data;
	const char *out;
	const char *adapter;
	int			threads;
	bool		json;
	bool		print;
	bool		profile;		/* time the products (synchronising on a GPU) */
	int			warmup;			/* untimed steps (train) or batches (embed) first */
	bool		merge;			/* predict/embed with the adapter folded into the weights */
	/* training options; device, precision, batch_size and max_length also for predict and embed */
	PeftTrainConfig config;
} Options;

/* Rows of a TSV file: texts, their lengths and (optional) label strings. */
typedef struct Rows
{
	char	  **text;
	size_t	   *length;
	char	  **label;
	size_t		count;
} Rows;

/* Class labels: names by index, and the task they were read for. */
typedef struct Labels
{
	PeftTask	task;
	char	  **names;
	int			count;
} Labels;

/* What the timed part of a run did. */
typedef struct Timing
{
	int			steps;
	long		rows;
	long		tokens;
	double		seconds;
	double		loss;
	double		peak_learning_rate;	/* the schedule's highest (the resolved default when not given) */
	PeftProfile profile;
} Timing;

/* A flag that sets a training option: its key, and the value when the flag takes none. */
typedef struct OptionFlag
{
	const char *flag;
	const char *key;
	const char *value;
} OptionFlag;

/*
 * The runner's own flags (getopt values); option flag i is FLAG_OPTION + i,
 * above every character getopt returns ('?' for an unknown flag).
 */
enum
{
	FLAG_MODEL = 1, FLAG_DATA, FLAG_OUT, FLAG_ADAPTER, FLAG_THREADS, FLAG_JSON, FLAG_PRINT,
	FLAG_PROFILE, FLAG_WARMUP, FLAG_MERGE, FLAG_METHOD, FLAG_TASK, FLAG_HELP, FLAG_OPTION = 1000
};

static const struct option runner_flags[] = {
	{"model", required_argument, NULL, FLAG_MODEL},
	{"data", required_argument, NULL, FLAG_DATA},
	{"out", required_argument, NULL, FLAG_OUT},
	{"adapter", required_argument, NULL, FLAG_ADAPTER},
	{"threads", required_argument, NULL, FLAG_THREADS},
	{"json", no_argument, NULL, FLAG_JSON},
	{"print", no_argument, NULL, FLAG_PRINT},
	{"profile", no_argument, NULL, FLAG_PROFILE},
	{"warmup", required_argument, NULL, FLAG_WARMUP},
	{"merge", no_argument, NULL, FLAG_MERGE},
	{"method", required_argument, NULL, FLAG_METHOD},
	{"task", required_argument, NULL, FLAG_TASK},
	{"help", no_argument, NULL, FLAG_HELP},
};
#define NUM_RUNNER_FLAGS (sizeof(runner_flags) / sizeof(runner_flags[0]))

/* Older names of option flags, kept because scripts use them. */
static const OptionFlag alias_flags[] = {
	{"lr", "learning_rate", NULL},
	{"alpha", "lora_alpha", NULL},
	{"targets", "target_modules", NULL},
	{"feedforward", "feedforward_modules", NULL},
	{"grad-accum", "gradient_accumulation_steps", NULL},
	{"schedule", "lr_scheduler_type", NULL},
	{"virtual-tokens", "num_virtual_tokens", NULL},
	{"rslora", "use_rslora", "true"},
	{"no-group", "group_by_length", "false"},
	{"houlsby", "adapter_placement", "houlsby"},
};
#define NUM_ALIAS_FLAGS (sizeof(alias_flags) / sizeof(alias_flags[0]))

/* The engine's function table. */
static const PeftEngineApi *api;

/* Seconds on a monotonic clock. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* n per second, 0 for an empty interval (no inf in the JSON). */
static double
per_second(double n, double seconds)
{
	return seconds > 0 ? n / seconds : 0;
}

/* Print an engine error and exit. */
static void
die_on(PeftCode rc, const PeftError *err)
{
	if (rc == PEFT_OK)
		return;
	fprintf(stderr, "peft-engine: %s: %s\n", api->code_name(rc), err->message);
	exit(1);
}

/* Print "cannot do path" (with errno's text when set) and exit. */
static void
die(const char *what, const char *path)
{
	fprintf(stderr, "peft-engine: %s %s%s%s\n", what, path, errno ? ": " : "",
			errno ? strerror(errno) : "");
	exit(1);
}

/* The option flags' names, wrapped, for the usage text. */
static void
print_option_flags(FILE *f)
{
	int			count;
	const PeftOption *options = api->options(&count);
	int			column = 8;

	fprintf(f, "training options (`peft-engine options` lists them; true/false flags\n"
			"take `--flag` or `--flag=false`):\n       ");
	for (int i = 0; i < count; i++)
	{
		int			width = (int) strlen(options[i].key) + 3;

		if (column + width > 78)
		{
			fprintf(f, "\n       ");
			column = 8;
		}
		fprintf(f, " --");
		for (const char *c = options[i].key; *c; c++)
			fputc(*c == '_' ? '-' : *c, f);
		column += width;
	}
	fprintf(f, "\n");
}

/* The method names from the method table, as "a|b|...". */
static void
print_method_names(FILE *f)
{
	int			count;
	const PeftMethodInfo *methods = api->methods(&count);

	for (int i = 0; i < count; i++)
		fprintf(f, "%s%s", i ? "|" : "", methods[i].name);
}

/* Print the usage (to stderr after msg, a usage error: exit 2; else to stdout: exit 0). */
static void
usage(const char *msg)
{
	FILE	   *f = msg ? stderr : stdout;

	if (msg)
		fprintf(f, "peft-engine: %s\n", msg);
	fprintf(f,
			"usage: peft-engine train   --model DIR --data FILE --out DIR [options]\n"
			"       peft-engine predict --model DIR --adapter DIR --data FILE [--merge]\n"
			"       peft-engine embed   --model DIR [--adapter DIR] --data FILE [--print]\n"
			"       peft-engine options\n"
			"       peft-engine generate|logits --model FILE.gguf ... (generate --help)\n"
			"       peft-engine export-gguf --model FILE.gguf --adapter DIR --out FILE.gguf\n"
			"runner: --method ");
	print_method_names(f);
	fprintf(f, "|A+B\n"
			"        --task classification|regression --threads N --json --profile\n"
			"        --warmup N (untimed steps or batches first) --device (default cpu)\n"
			"aliases: --lr --alpha --targets --feedforward --grad-accum --schedule\n"
			"         --virtual-tokens --rslora --no-group --houlsby\n");
	print_option_flags(f);
	exit(msg ? 2 : 0);
}

/* Grow rows' arrays when full. */
static void
rows_reserve(Rows *rows, size_t *cap)
{
	if (rows->count < *cap)
		return;
	*cap = *cap ? *cap * 2 : 1024;
	rows->text = realloc(rows->text, *cap * sizeof(char *));
	rows->length = realloc(rows->length, *cap * sizeof(size_t));
	rows->label = realloc(rows->label, *cap * sizeof(char *));
	if (rows->text == NULL || rows->length == NULL || rows->label == NULL)
		die("out of memory reading", "rows");
}

/* Read a TSV file; labels are taken after the last TAB when want_labels. */
static Rows
read_rows(const char *path, bool want_labels)
{
	FILE	   *f = fopen(path, "r");
	Rows		rows = {0};
	size_t		cap = 0;
	char	   *line = NULL;
	size_t		linecap = 0;
	ssize_t		n;

	if (f == NULL)
		die("cannot open", path);
	while ((n = getline(&line, &linecap, f)) >= 0)
	{
		char	   *tab;

		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		rows_reserve(&rows, &cap);
		tab = want_labels ? strrchr(line, '\t') : strchr(line, '\t');
		if (want_labels && tab == NULL)
		{
			fprintf(stderr, "peft-engine: %s line %zu has no TAB before a label\n", path, rows.count + 1);
			exit(1);
		}
		if (tab)
			*tab = '\0';
		rows.text[rows.count] = strdup(line);
		rows.length[rows.count] = strlen(line);
		rows.label[rows.count] = tab ? strdup(tab + 1) : NULL;
		rows.count++;
	}
	free(line);
	fclose(f);
	return rows;
}


/* dir/name read whole (cli_read_file), or exit. */
static char *
read_file_or_exit(const char *dir, const char *name, size_t *len)
{
	char	   *data = cli_read_file(dir, name, len);

	if (data == NULL)
		exit(1);
	return data;
}

/* Write bytes to dir/name. */
static void
write_file(const char *dir, const char *name, const void *data, size_t len)
{
	char		path[4096];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	errno = 0;
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
		die("cannot write", path);
}

/* qsort comparator for strings. */
static int
compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The class index of label: the next one when first seen (as the worker numbers them). */
static int
label_index(Labels *labels, char *label)
{
	ENTRY		entry = {.key = label, .data = (void *) (intptr_t) labels->count};
	ENTRY	   *found = hsearch(entry, ENTER);

	if (found == NULL)
		die("out of memory numbering", "labels");
	if ((intptr_t) found->data == labels->count)
		labels->names[labels->count++] = found->key;
	return (int) (intptr_t) found->data;
}

/*
 * Sort the labels in byte order (COLLATE "C"), as the worker does, and
 * return map[first-seen index] = sorted index for train_prepare.
 */
static int *
sort_labels(Labels *labels)
{
	char	  **seen = malloc(sizeof(char *) * labels->count);
	int		   *map = malloc(sizeof(int) * labels->count);

	if (seen == NULL || map == NULL)
		die("out of memory sorting", "labels");
	memcpy(seen, labels->names, sizeof(char *) * labels->count);
	qsort(labels->names, labels->count, sizeof(char *), compare_strings);
	for (int i = 0; i < labels->count; i++)
		map[i] = (int) ((char **) bsearch(&seen[i], labels->names, labels->count, sizeof(char *),
										  compare_strings) - labels->names);
	free(seen);
	return map;
}

/* Hand one file's rows to the run: class indices as the worker's, or regression targets. */
static void
add_file_rows(PeftTrainJob *job, const Rows *rows, Labels *labels)
{
	PeftError	err = {0};

	for (size_t i = 0; i < rows->count; i++)
	{
		bool		regression = labels->task == PEFT_TASK_REGRESSION;
		int			label = regression ? 0 : label_index(labels, rows->label[i]);
		double		target = regression ? strtod(rows->label[i], NULL) : 0;

		die_on(api->train_add_row(job, rows->text[i], rows->length[i], label, target, &err), &err);
	}
}

/* Hand every row to the run: the training file's, then the validation file's (valid may be NULL). */
static void
add_rows(PeftTrainJob *job, const Rows *rows, const Rows *valid, Labels *labels)
{
	size_t		count = rows->count + (valid ? valid->count : 0);
	PeftError	err = {0};

	labels->names = malloc(sizeof(char *) * (count + 1));
	if (labels->names == NULL || hcreate(count + 1) == 0)
		die("out of memory numbering", "labels");
	add_file_rows(job, rows, labels);
	if (valid != NULL)
	{
		die_on(api->train_hold_out(job, &err), &err);
		add_file_rows(job, valid, labels);
	}
	hdestroy();
}

/* Start counting the device's products (and the clock) once it is idle. */
static double
clock_start(const Options *o)
{
	PeftError	err = {0};

	die_on(api->profile_start(o->config.device, o->profile, &err), &err);
	return now_seconds();
}

/* Seconds since start once the device is idle, and what it counted. */
static double
clock_stop(const Options *o, double start, PeftProfile *profile)
{
	PeftError	err = {0};

	die_on(api->profile_read(o->config.device, profile, &err), &err);
	return now_seconds() - start;
}

/* JSON fields of the device, precision and profile of a run that took seconds. */
static void
print_profile_json(const Options *o, const PeftProfile *p, double seconds)
{
	printf("\"device\": \"%s\", \"precision\": \"%s\", \"flops\": %.6g, \"tflops\": %.4f",
		   p->device, p->precision, p->flops, per_second(p->flops, seconds) / 1e12);
	if (o->profile)
		printf(", \"gemm_seconds\": %.4f, \"total_seconds\": %.4f, \"gemm_share\": %.4f",
			   p->gemm_seconds, seconds, per_second(p->gemm_seconds, seconds));
}

/* Warm-up steps, then timed steps until the run is done (max_steps or epochs). */
static void
train_steps(PeftTrainJob *job, const Options *o, Timing *t)
{
	PeftTrainProgress p = {0};
	PeftError	err = {0};
	double		start;

	for (int i = 0; i < o->warmup && !p.done; i++)
		die_on(api->train_step(job, &p, &err), &err);
	start = clock_start(o);
	while (!p.done)
	{
		die_on(api->train_step(job, &p, &err), &err);
		if (p.learning_rate > t->peak_learning_rate)
			t->peak_learning_rate = p.learning_rate;
		t->steps++;
		t->rows += p.rows;
		t->tokens += p.tokens;
		if (!o->json && (p.step % 10 == 0 || p.done || p.step == 1))
			fprintf(stderr, "epoch %d step %d/%d loss %.4f lr %.2e grad_norm %.3f\n",
					p.epoch, p.step, p.total_steps, p.loss, p.learning_rate, p.grad_norm);
	}
	t->loss = p.loss;
	t->seconds = clock_stop(o, start, &t->profile);
}

/* Print the training figures and validation metrics (one JSON line with --json). */
static void
print_training(const Options *o, const Timing *t, int64_t parameters, const PeftMetrics *m)
{
	if (!o->json)
	{
		printf("trained %d steps in %.1f s: %.1f rows/s, %.0f tokens/s\n"
			   "validation (%lld rows): loss %.4f accuracy %.4f macro-F1 %.4f mse %.4f r2 %.4f\n",
			   t->steps, t->seconds, per_second(t->rows, t->seconds),
			   per_second(t->tokens, t->seconds), (long long) m->rows, m->loss, m->accuracy,
			   m->macro_f1, m->mse, m->r2);
		return;
	}
	printf("{\"steps\": %d, \"rows\": %ld, \"tokens\": %ld, \"seconds\": %.4f, "
		   "\"rows_per_second\": %.3f, \"tokens_per_second\": %.1f, \"final_loss\": %.6f, "
		   "\"parameters\": %lld, \"learning_rate\": %.6g, ",
		   t->steps, t->rows, t->tokens, t->seconds, per_second(t->rows, t->seconds),
		   per_second(t->tokens, t->seconds), t->loss, (long long) parameters, t->peak_learning_rate);
	print_profile_json(o, &t->profile, t->seconds);
	printf(", \"valid_rows\": %lld, \"valid_loss\": %.6f, \"valid_accuracy\": %.6f, "
		   "\"valid_macro_f1\": %.6f, \"valid_mse\": %.6f, \"valid_r2\": %.6f}\n",
		   (long long) m->rows, m->loss, m->accuracy, m->macro_f1, m->mse, m->r2);
}

/* Write the run's adapter folder: weights, adapter_config.json and peft_head.json. */
static void
save_adapter(PeftTrainJob *job, const Options *o, const Labels *labels)
{
	uint8_t    *weights;
	size_t		nweights;
	char	   *config;
	cJSON	   *head = cJSON_CreateObject();
	char	   *head_text;
	PeftError	err = {0};
	bool		regression = labels->task == PEFT_TASK_REGRESSION;

	die_on(api->train_export(job, o->model, &weights, &nweights, &config, &err), &err);
	mkdir(o->out, 0755);
	write_file(o->out, "adapter_model.safetensors", weights, nweights);
	write_file(o->out, "adapter_config.json", config, strlen(config));
	cJSON_AddStringToObject(head, "task", regression ? "regression" : "classification");
	if (!regression)
		cJSON_AddItemToObject(head, "labels",
							  cJSON_CreateStringArray((const char *const *) labels->names, labels->count));
	head_text = cJSON_Print(head);
	write_file(o->out, "peft_head.json", head_text, strlen(head_text));
	api->free_buffer(weights);
	api->free_buffer(config);
	free(head_text);
	cJSON_Delete(head);
}

/* Hand prompt/completion rows to a generation run (a first line "prompt<TAB>completion" is a header). */
static void
add_pairs(PeftTrainJob *job, const Rows *rows)
{
	PeftError	err = {0};

	for (size_t i = 0; i < rows->count; i++)
	{
		if (i == 0 && strcmp(rows->text[0], "prompt") == 0 && strcmp(rows->label[0], "completion") == 0)
			continue;
		die_on(api->train_add_pair(job, rows->text[i], rows->length[i], rows->label[i],
								   strlen(rows->label[i]), &err), &err);
	}
}

/* Print a generation run's figures and validation metrics (one JSON line with --json). */
static void
print_generation_training(const Options *o, const Timing *t, int64_t parameters, const PeftMetrics *m,
						  const char *device)
{
	if (!o->json)
	{
		printf("trained %d steps in %.1f s: %.2f rows/s, %.0f tokens/s\n"
			   "validation (%lld rows): loss %.4f perplexity %.3f exact match %.4f (%lld generated); "
			   "%lld rows skipped (completion longer than max_length)\n",
			   t->steps, t->seconds, per_second(t->rows, t->seconds), per_second(t->tokens, t->seconds),
			   (long long) m->rows, m->loss, m->perplexity, m->exact_match, (long long) m->generated,
			   (long long) m->skipped);
		return;
	}
	printf("{\"steps\": %d, \"rows\": %ld, \"tokens\": %ld, \"seconds\": %.4f, "
		   "\"rows_per_second\": %.3f, \"tokens_per_second\": %.1f, \"final_loss\": %.6f, "
		   "\"parameters\": %lld, \"learning_rate\": %.6g, \"valid_rows\": %lld, \"valid_loss\": %.6f, "
		   "\"valid_perplexity\": %.6f, \"valid_exact_match\": %.6f, \"generated\": %lld, \"skipped\": %lld, "
		   "\"device\": \"%s\"}\n",
		   t->steps, t->rows, t->tokens, t->seconds, per_second(t->rows, t->seconds),
		   per_second(t->tokens, t->seconds), t->loss, (long long) parameters, t->peak_learning_rate,
		   (long long) m->rows, m->loss, m->perplexity, m->exact_match, (long long) m->generated,
		   (long long) m->skipped, device);
}

/* Train an adapter over a decoder on prompt/completion rows and save it as a PEFT folder. */
static int
command_train_generation(PeftModelHandle *model, const Options *o)
{
	Rows		rows = read_rows(o->data, true);
	PeftTrainJob *job;
	int64_t		ntrain, nvalid;
	int			total_steps;
	Timing		t = {0};
	PeftMetrics m;
	PeftError	err = {0};

	die_on(api->train_begin(model, &o->config, &job, &err), &err);
	add_pairs(job, &rows);
	if (o->config.validation_data)
	{
		Rows		valid = read_rows(o->config.validation_data, true);

		die_on(api->train_hold_out(job, &err), &err);
		add_pairs(job, &valid);
	}
	die_on(api->train_prepare(job, 0, NULL, &ntrain, &nvalid, &total_steps, &err), &err);
	fprintf(stderr, "training on %lld rows (%lld validation), %d steps, %lld trainable parameters, on %s\n",
			(long long) ntrain, (long long) nvalid, total_steps,
			(long long) api->train_parameters(job), api->train_device(job));
	train_steps(job, o, &t);
	die_on(api->train_evaluate(job, &m, &err), &err);
	print_generation_training(o, &t, api->train_parameters(job), &m, api->train_device(job));
	if (o->out)
	{
		uint8_t    *weights;
		size_t		nweights;
		char	   *config;

		die_on(api->train_export(job, o->model, &weights, &nweights, &config, &err), &err);
		mkdir(o->out, 0755);
		write_file(o->out, "adapter_model.safetensors", weights, nweights);
		write_file(o->out, "adapter_config.json", config, strlen(config));
		api->free_buffer(weights);
		api->free_buffer(config);
	}
	api->train_free(job);
	return 0;
}

/* Train an adapter on a TSV file, as peft_train's worker does, and save it as a PEFT folder. */
static int
command_train(PeftModelHandle *model, const Options *o)
{
	Rows		rows = read_rows(o->data, true);
	Rows		valid = {0};
	Labels		labels = {.task = o->config.task};
	bool		regression = labels.task == PEFT_TASK_REGRESSION;
	int		   *map = NULL;
	PeftTrainJob *job;
	int64_t		ntrain, nvalid;
	int			total_steps;
	Timing		t = {0};
	PeftMetrics m;
	PeftError	err = {0};

	die_on(api->train_begin(model, &o->config, &job, &err), &err);
	if (o->config.validation_data)
		valid = read_rows(o->config.validation_data, true);
	add_rows(job, &rows, o->config.validation_data ? &valid : NULL, &labels);
	if (!regression && labels.count < 2)
		usage("classification needs at least two distinct labels");
	if (!regression)
		map = sort_labels(&labels);
	die_on(api->train_prepare(job, regression ? 1 : labels.count, map, &ntrain, &nvalid,
							  &total_steps, &err), &err);
	fprintf(stderr, "training on %lld rows (%lld validation), %d steps, %lld trainable parameters, on %s\n",
			(long long) ntrain, (long long) nvalid, total_steps,
			(long long) api->train_parameters(job), api->train_device(job));
	train_steps(job, o, &t);
	die_on(api->train_evaluate(job, &m, &err), &err);
	print_training(o, &t, api->train_parameters(job), &m);
	if (o->out)
		save_adapter(job, o, &labels);
	api->train_free(job);
	free(map);
	return 0;
}

/* Read peft_head.json of an adapter folder: the task and the label names. */
static Labels
read_head(const char *dir)
{
	size_t		len;
	char	   *text = read_file_or_exit(dir, "peft_head.json", &len);
	cJSON	   *head = cJSON_Parse(text);
	const cJSON *task = cJSON_GetObjectItem(head, "task");
	const cJSON *names = cJSON_GetObjectItem(head, "labels");
	Labels		labels = {0};

	if (!cJSON_IsString(task))
		usage("peft_head.json has no task");
	labels.task = strcmp(task->valuestring, "regression") == 0 ?
		PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION;
	labels.count = labels.task == PEFT_TASK_REGRESSION ? 1 : cJSON_GetArraySize(names);
	labels.names = calloc(labels.count, sizeof(char *));
	for (int i = 0; labels.task == PEFT_TASK_CLASSIFICATION && i < labels.count; i++)
	{
		const cJSON *name = cJSON_GetArrayItem(names, i);

		if (!cJSON_IsString(name))
			usage("peft_head.json has a label that is not a string");
		labels.names[i] = strdup(name->valuestring);
	}
	free(text);
	cJSON_Delete(head);
	return labels;
}

/* Open a saved adapter folder over model (merged with --merge); its head's labels in labels. */
static PeftAdapterHandle *
open_adapter(PeftModelHandle *model, const Options *o, Labels *labels)
{
	size_t		config_len, weights_len;
	char	   *config = read_file_or_exit(o->adapter, "adapter_config.json", &config_len);
	char	   *weights = read_file_or_exit(o->adapter, "adapter_model.safetensors", &weights_len);
	PeftAdapterHandle *adapter;
	PeftError	err = {0};

	*labels = read_head(o->adapter);
	die_on(api->adapter_open(model, config, config_len, (const uint8_t *) weights, weights_len,
							 labels->task, labels->count, &adapter, &err), &err);
	if (o->merge)
		die_on(api->adapter_merge(adapter, &err), &err);
	free(config);
	free(weights);
	return adapter;
}

/* Device, precision and batch size of predict and embed, from the option flags. */
static void
configure_inference(const Options *o)
{
	PeftEngineSettings settings = {
		.device = o->config.device,
		.precision = o->config.precision,
		.batch_size = o->config.batch_size,
	};

	api->configure(&settings);
}

/* Tokens per row of predict and embed: --max-length, or training's default. */
static int
inference_max_length(const Options *o)
{
	return o->config.max_length > 0 ? o->config.max_length : DEFAULT_MAX_LENGTH;
}

/* Print each row's most likely label and its probability, or "\tvalue" (regression). */
static void
print_predictions(const Labels *labels, const float *out, size_t count)
{
	for (size_t i = 0; i < count; i++)
	{
		const float *p = out + i * labels->count;
		int			best = 0;

		if (labels->task == PEFT_TASK_REGRESSION)
		{
			printf("\t%.6f\n", p[0]);
			continue;
		}
		for (int k = 1; k < labels->count; k++)
			if (p[k] > p[best])
				best = k;
		printf("%s\t%.6f\n", labels->names[best], p[best]);
	}
}

/* Print the predicted label and probability (or value) of every row. */
static int
command_predict(PeftModelHandle *model, const Options *o)
{
	Rows		rows = read_rows(o->data, false);
	Labels		labels;
	PeftAdapterHandle *adapter = open_adapter(model, o, &labels);
	float	   *out = malloc(sizeof(float) * (rows.count ? rows.count : 1) * labels.count);
	PeftError	err = {0};
	double		start;

	if (out == NULL)
		die("out of memory for", "predictions");
	configure_inference(o);
	start = now_seconds();
	die_on(api->predict(adapter, (const char *const *) rows.text, rows.length, (int) rows.count,
						inference_max_length(o), out, &err), &err);
	if (o->json)
	{
		double		elapsed = now_seconds() - start;

		printf("{\"rows\": %zu, \"seconds\": %.4f, \"rows_per_second\": %.3f, \"merged\": %s}\n",
			   rows.count, elapsed, per_second(rows.count, elapsed), o->merge ? "true" : "false");
	}
	else
		print_predictions(&labels, out, rows.count);
	free(out);
	api->adapter_close(adapter);
	return 0;
}

/* The rows longer_text_first compares (qsort passes no context). */
static const Rows *sort_rows;

/* qsort comparator of row indices: longer texts (in bytes) first. */
static int
longer_text_first(const void *a, const void *b)
{
	size_t		la = sort_rows->length[*(const size_t *) a];
	size_t		lb = sort_rows->length[*(const size_t *) b];

	return (la < lb) - (la > lb);
}

/*
 * Embed the batch_size longest texts warmup times, untimed: device set-up,
 * weights upload and the largest batch's buffers stay out of the timing
 * (the engine embeds longest first).
 */
static void
warm_up_embed(PeftModelHandle *model, PeftAdapterHandle *adapter, const Rows *rows,
			  const Options *o, float *out)
{
	size_t		count = rows->count < (size_t) o->config.batch_size ? rows->count : (size_t) o->config.batch_size;
	size_t	   *order = malloc(sizeof(size_t) * (rows->count ? rows->count : 1));
	const char **texts = malloc(sizeof(char *) * (count ? count : 1));
	size_t	   *lengths = malloc(sizeof(size_t) * (count ? count : 1));
	PeftError	err = {0};

	if (order == NULL || texts == NULL || lengths == NULL)
		die("out of memory for", "warm-up");
	for (size_t i = 0; i < rows->count; i++)
		order[i] = i;
	sort_rows = rows;
	qsort(order, rows->count, sizeof(size_t), longer_text_first);
	for (size_t i = 0; i < count; i++)
	{
		texts[i] = rows->text[order[i]];
		lengths[i] = rows->length[order[i]];
	}
	for (int i = 0; i < o->warmup && count > 0; i++)
		die_on(api->embed(model, adapter, texts, lengths, (int) count, inference_max_length(o),
						  out, &err), &err);
	free(order);
	free(texts);
	free(lengths);
}

/* Print embeddings[count, C] as "%.7g" values, a row per line. */
static void
print_embeddings(const float *emb, size_t count, int C)
{
	for (size_t i = 0; i < count; i++)
		for (int c = 0; c < C; c++)
			printf("%.7g%c", emb[i * C + c], c + 1 < C ? ' ' : '\n');
}

/*
 * Embed every row (the engine batches rows of similar length, like
 * sentence-transformers' encode); print throughput, or the vectors in
 * input order with --print.
 */
static int
command_embed(PeftModelHandle *model, const PeftModelInfo *info, const Options *o)
{
	Rows		rows = read_rows(o->data, false);
	Labels		labels;
	PeftAdapterHandle *adapter = o->adapter ? open_adapter(model, o, &labels) : NULL;
	int			C = info->hidden_size;
	float	   *emb = malloc(sizeof(float) * (rows.count ? rows.count : 1) * C);
	PeftProfile profile;
	PeftError	err = {0};
	double		start, elapsed;

	if (emb == NULL)
		die("out of memory for", "embeddings");
	configure_inference(o);
	warm_up_embed(model, adapter, &rows, o, emb);
	start = clock_start(o);
	die_on(api->embed(model, adapter, (const char *const *) rows.text, rows.length,
					  (int) rows.count, inference_max_length(o), emb, &err), &err);
	elapsed = clock_stop(o, start, &profile);
	if (o->print)
		print_embeddings(emb, rows.count, C);
	if (o->json)
	{
		printf("{\"rows\": %zu, \"tokens\": %lld, \"seconds\": %.4f, \"rows_per_second\": %.3f, "
			   "\"tokens_per_second\": %.1f, ",
			   rows.count, (long long) profile.tokens, elapsed, per_second(rows.count, elapsed),
			   per_second(profile.tokens, elapsed));
		print_profile_json(o, &profile, elapsed);
		printf("}\n");
	}
	else if (!o->print)
		printf("embedded %zu rows in %.2f s: %.1f rows/s\n", rows.count, elapsed,
			   per_second(rows.count, elapsed));
	free(emb);
	api->adapter_close(adapter);
	return 0;
}

/* Print the option table as the README's Markdown table (the same rows). */
static int
command_options(void)
{
	int			count;
	const PeftOption *options = api->options(&count);

	printf("| key | default | meaning |\n|---|---|---|\n");
	for (int i = 0; i < count; i++)
		printf("| `%s` | %s | %s |\n", options[i].key, options[i].default_text, options[i].help);
	return 0;
}

/*
 * The getopt table: the runner's flags, the aliases, and a flag per
 * option of the table (its key with "-" for "_"); flags[i] is what
 * getopt value FLAG_OPTION + i sets.
 */
static struct option *
build_flags(OptionFlag **flags)
{
	int			count;
	const PeftOption *options = api->options(&count);
	size_t		nflags = NUM_ALIAS_FLAGS + count;
	struct option *longopts = calloc(NUM_RUNNER_FLAGS + nflags + 1, sizeof(struct option));

	*flags = calloc(nflags, sizeof(OptionFlag));
	if (longopts == NULL || *flags == NULL)
		die("out of memory for", "flags");
	memcpy(longopts, runner_flags, sizeof(runner_flags));
	memcpy(*flags, alias_flags, sizeof(alias_flags));
	for (int i = 0; i < count; i++)
	{
		char	   *flag = strdup(options[i].key);

		for (char *c = flag; *c; c++)
			*c = *c == '_' ? '-' : *c;
		(*flags)[NUM_ALIAS_FLAGS + i] = (OptionFlag) {flag, options[i].key, NULL};
	}
	for (size_t i = 0; i < nflags; i++)
	{
		const OptionFlag *f = &(*flags)[i];
		bool		boolean = i >= NUM_ALIAS_FLAGS && options[i - NUM_ALIAS_FLAGS].type == PEFT_OPTION_BOOL;

		longopts[NUM_RUNNER_FLAGS + i] = (struct option) {
			f->flag, f->value ? no_argument : boolean ? optional_argument : required_argument,
			NULL, FLAG_OPTION + (int) i
		};
	}
	return longopts;
}

/* A non-negative count from text (a usage error otherwise). */
static int
parse_count(const char *text, const char *flag)
{
	char	   *end;
	long		n = strtol(text, &end, 10);

	if (end == text || *end != '\0' || n < 0 || n > 1000000)
	{
		fprintf(stderr, "peft-engine: --%s takes a count, not \"%s\"\n", flag, text);
		exit(2);
	}
	return (int) n;
}

/* Apply one of the runner's flags; false for an unknown one. */
static bool
runner_flag(Options *o, int flag, const char *arg)
{
	PeftError	err = {0};

	switch (flag)
	{
		case FLAG_MODEL: o->model = arg; return true;
		case FLAG_DATA: o->data = arg; return true;
		case FLAG_OUT: o->out = arg; return true;
		case FLAG_ADAPTER: o->adapter = arg; return true;
		case FLAG_THREADS: o->threads = parse_count(arg, "threads"); return true;
		case FLAG_JSON: o->json = true; return true;
		case FLAG_PRINT: o->print = true; return true;
		case FLAG_PROFILE: o->profile = true; return true;
		case FLAG_WARMUP: o->warmup = parse_count(arg, "warmup"); return true;
		case FLAG_MERGE: o->merge = true; return true;
		case FLAG_METHOD:
			die_on(api->parse_method(arg, &o->config.methods, &err), &err);
			return true;
		case FLAG_TASK:
			if (strcmp(arg, "classification") == 0)
				o->config.task = PEFT_TASK_CLASSIFICATION;
			else if (strcmp(arg, "regression") == 0)
				o->config.task = PEFT_TASK_REGRESSION;
			else if (strcmp(arg, "generation") == 0)
				o->config.task = PEFT_TASK_GENERATION;
			else
				usage("--task is classification, regression or generation");
			return true;
	}
	return false;
}

/* Parse the flags after the command word. */
static void
parse_flags(int argc, char **argv, Options *o)
{
	OptionFlag *flags;
	struct option *longopts = build_flags(&flags);
	PeftError	err = {0};
	int			c;
	const char *given[256];
	int			ngiven = 0;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		if (c >= FLAG_OPTION)
		{
			const OptionFlag *f = &flags[c - FLAG_OPTION];
			const char *text = f->value ? f->value : optarg ? optarg : "true";

			die_on(api->option_parse(&o->config, f->key, text, &err), &err);
			if (ngiven < 256)
				given[ngiven++] = f->key;
		}
		else if (c == FLAG_HELP)
			usage(NULL);
		else if (!runner_flag(o, c, optarg))
			usage("unknown flag (--help lists them)");
	}
	if (optind < argc)
		usage("unexpected argument (a true/false flag takes --flag=VALUE)");
	/* as peft_train: an option given for a method or task it does not apply to is an error */
	for (int i = 0; i < ngiven; i++)
	{
		die_on(api->option_applies(given[i], o->config.methods, o->config.task, &err), &err);
		if (strcmp(given[i], "validation_fraction") == 0 && o->config.validation_data)
			usage("--validation-fraction and --validation-data exclude each other");
	}
}

/* Entry point: peft-engine COMMAND [options]. */
int
main(int argc, char **argv)
{
	Options		o = {.threads = 1};
	PeftModelHandle *model;
	PeftModelInfo info;
	PeftError	err = {0};
	const char *command;

	/* OpenBLAS has chosen its kernels by now: start again with the right ones (blas_kernels.h) */
	if (peft_blas_choose_kernels())
	{
		execv("/proc/self/exe", argv);
		unsetenv("OPENBLAS_CORETYPE");	/* no /proc: go on with OpenBLAS's choice */
	}
	api = peft_engine_api();
	if (api->abi_version != PEFT_ENGINE_ABI_VERSION)
	{
		fprintf(stderr, "peft-engine: peft_engine.so has ABI %d, this runner %d\n",
				api->abi_version, PEFT_ENGINE_ABI_VERSION);
		return 1;
	}
	if (argc < 2)
		usage("no command");
	command = argv[1];
	if (strcmp(command, "--help") == 0 || strcmp(command, "help") == 0)
		usage(NULL);
	/* the decoder's commands take their own flags */
	if (strcmp(command, "generate") == 0)
		return command_generate(api, argc - 1, argv + 1);
	if (strcmp(command, "logits") == 0)
		return command_logits(api, argc - 1, argv + 1);
	if (strcmp(command, "export-gguf") == 0)
		return command_export_gguf(api, argc - 1, argv + 1);
	api->train_config_default(&o.config);
	o.config.device = PEFT_DEVICE_CPU;	/* the runner's default, as peft.device is the server's */
	parse_flags(argc - 1, argv + 1, &o);
	if (strcmp(command, "options") == 0)
		return command_options();
	if (o.model == NULL || o.data == NULL)
		usage("--model and --data are required");
	die_on(api->init(o.threads, &err), &err);
	die_on(api->model_open(o.model, &model, &info, &err), &err);
	if (strcmp(command, "train") == 0)
		return o.config.task == PEFT_TASK_GENERATION ? command_train_generation(model, &o) :
			command_train(model, &o);
	if (strcmp(command, "predict") == 0)
	{
		if (o.adapter == NULL)
			usage("predict needs --adapter");
		return command_predict(model, &o);
	}
	if (strcmp(command, "embed") == 0)
		return command_embed(model, &info, &o);
	usage("unknown command");
	return 2;
}
