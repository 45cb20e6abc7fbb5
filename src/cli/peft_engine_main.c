/*
 * peft_engine_main.c - peft-engine, the engine's command-line runner.
 *
 * Drives the engine with no server, for benchmarks, GPU checks and
 * debugging:
 *
 *   peft-engine train   --model DIR --data FILE.tsv --out ADAPTER_DIR [options]
 *   peft-engine predict --model DIR --adapter ADAPTER_DIR --data FILE.tsv
 *   peft-engine embed   --model DIR [--adapter ADAPTER_DIR] --data FILE.tsv [--print]
 *
 * Data files hold one row per line: the text, a TAB, the label (the label
 * is the part after the last TAB; predict and embed read the text before
 * the first TAB, or the whole line).  An adapter folder holds
 * adapter_model.safetensors and adapter_config.json as Hugging Face PEFT
 * writes them, plus peft_head.json (task and label names).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "adapter_io.h"
#include "bert.h"
#include "dataset.h"
#include "engine_api.h"
#include "engine_session.h"
#include "model_config.h"
#include "network.h"
#include "trainer.h"

typedef struct Options
{
	const char *model;
	const char *data;
	const char *out;
	const char *adapter;
	const char *task;
	const char *targets;
	const char *schedule;
	const char *method;			/* lora, dora, ia3, bitfit, adapter, or a+b */
	const char *feedforward;	/* (IA)^3 feed-forward modules, comma-separated */
	int			reduction_factor;
	bool		houlsby;
	int			r;
	double		alpha;
	double		lora_dropout;
	double		hidden_dropout;	/* < 0: the model's config */
	bool		rslora;
	int			max_length;
	double		validation_fraction;
	int			threads;
	int			max_steps;		/* 0: all (benchmarks stop early) */
	int			batch_size;
	bool		print;
	bool		json;
	PeftDevice	device;
	PeftPrecision precision;
	bool		profile;		/* time the products (synchronising on a GPU) */
	int			warmup;			/* untimed steps (train) or batches (embed) first */
	bool		merge;			/* predict/embed with the adapter folded into the weights */
	int			virtual_tokens;	/* prompt tuning; 0: the default */
	TrainOptions train;
} Options;

/* Rows of a TSV file: texts and (optional) label strings. */
typedef struct Rows
{
	char	  **text;
	char	  **label;
	size_t		count;
} Rows;

/* Seconds on a monotonic clock. */
static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Print an engine error and exit. */
static void
die_on(PeftCode rc, const PeftError *err)
{
	if (rc == PEFT_OK)
		return;
	fprintf(stderr, "peft-engine: %s: %s\n", peft_code_name(rc), err->message);
	exit(1);
}

/* Print a usage error and exit. */
static void
usage(const char *msg)
{
	if (msg)
		fprintf(stderr, "peft-engine: %s\n", msg);
	fprintf(stderr,
			"usage: peft-engine train   --model DIR --data FILE --out DIR [options]\n"
			"       peft-engine predict --model DIR --adapter DIR --data FILE\n"
			"       peft-engine embed   --model DIR [--adapter DIR] --data FILE [--print]\n"
			"options: --task classification|regression --r N --alpha X --lora-dropout X\n"
			"         --method lora|dora|ia3|bitfit|adapter|prompt|A+B --targets query,value\n"
			"         --virtual-tokens N\n"
			"         --feedforward output.dense --reduction-factor N --houlsby\n"
			"         --rslora --epochs N --batch-size N --lr X\n"
			"         --weight-decay X --warmup-ratio X --schedule linear|cosine|constant\n"
			"         --grad-accum N --max-grad-norm X --max-length N --hidden-dropout X\n"
			"         --validation-fraction X --seed N --threads N --max-steps N --no-group\n"
			"         --device auto|cpu|cuda --precision fp32|tf32|bf16 --profile\n"
			"         --warmup N --merge --json --print\n");
	exit(2);
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
	{
		fprintf(stderr, "peft-engine: cannot open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	while ((n = getline(&line, &linecap, f)) >= 0)
	{
		char	   *tab;

		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (rows.count == cap)
		{
			cap = cap ? cap * 2 : 1024;
			rows.text = realloc(rows.text, cap * sizeof(char *));
			rows.label = realloc(rows.label, cap * sizeof(char *));
		}
		tab = want_labels ? strrchr(line, '\t') : strchr(line, '\t');
		if (want_labels && tab == NULL)
		{
			fprintf(stderr, "peft-engine: %s line %zu has no TAB before a label\n", path, rows.count + 1);
			exit(1);
		}
		if (tab)
			*tab = '\0';
		rows.text[rows.count] = strdup(line);
		rows.label[rows.count] = tab ? strdup(tab + 1) : NULL;
		rows.count++;
	}
	free(line);
	fclose(f);
	return rows;
}

/* qsort comparator for strings. */
static int
compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Sorted distinct labels of rows (classification classes). */
static char **
distinct_labels(const Rows *rows, int *count)
{
	char	  **sorted = malloc((rows->count ? rows->count : 1) * sizeof(char *));
	int			n = 0;

	memcpy(sorted, rows->label, rows->count * sizeof(char *));
	qsort(sorted, rows->count, sizeof(char *), compare_strings);
	for (size_t i = 0; i < rows->count; i++)
		if (n == 0 || strcmp(sorted[n - 1], sorted[i]) != 0)
			sorted[n++] = sorted[i];
	*count = n;
	return sorted;
}

/* Index of label in the sorted list (binary search), or -1. */
static int
label_index(char **labels, int count, const char *label)
{
	char	  **hit = bsearch(&label, labels, count, sizeof(char *), compare_strings);

	return hit ? (int) (hit - labels) : -1;
}

/* Write bytes to dir/name. */
static void
write_file(const char *dir, const char *name, const void *data, size_t len)
{
	char		path[4096];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
	{
		fprintf(stderr, "peft-engine: cannot write %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

/* Move net to the chosen device and start its profile afresh. */
static void
place_network(Network *net, const Options *o)
{
	PeftError	err = {0};

	die_on(network_set_device(net, o->device, o->precision, &err), &err);
	net->be->profile = (BackendProfile) {.enabled = o->profile};
}

/* Wait for the device, then the time; for honest wall-clock figures. */
static double
synced_seconds(Network *net)
{
	PeftError	err = {0};

	net->be->ops->enter(net->be);
	net->be->ops->sync(net->be);
	net->be->ops->leave(net->be);
	die_on(backend_check(net->be, &err), &err);
	return now_seconds();
}

/* JSON fields of the device, precision and profile of a run that took seconds. */
static void
print_profile_json(const Network *net, const Options *o, double seconds)
{
	const BackendProfile *p = &net->be->profile;
	double		flops = p->gemm_flops + p->attention_flops;

	printf("\"device\": \"%s\", \"precision\": \"%s\", \"flops\": %.6g, \"tflops\": %.4f",
		   net->be->name, net->be->host_memory ? "fp32" : gemm_precision_name(o->precision),
		   flops, flops / seconds / 1e12);
	if (o->profile)
		printf(", \"gemm_seconds\": %.4f, \"total_seconds\": %.4f, \"gemm_share\": %.4f",
			   p->gemm_seconds, seconds, p->gemm_seconds / seconds);
}

/* Split a comma-separated list (modified in place) into at most 16 names; returns the count. */
static int
split_names(char *list, const char *names[16])
{
	int			n = 0;

	for (char *tok = strtok(list, ","); tok && n < 16; tok = strtok(NULL, ","))
		names[n++] = tok;
	return n;
}

/* Network options of the method, modules and hyper-parameters on the command line. */
static void
method_options(const Options *o, const BertModel *model, NetworkOptions *nopts)
{
	PeftTrainConfig c;
	PeftError	err = {0};
	char	   *targets = o->targets ? strdup(o->targets) : NULL;
	char	   *ff = o->feedforward ? strdup(o->feedforward) : NULL;

	peft_engine_api()->train_config_default(&c);
	die_on(adapter_parse_method(o->method, &c.methods, &err), &err);
	if (targets)
		c.num_targets = split_names(targets, c.target_modules);
	if (ff)
		c.num_feedforward = split_names(ff, c.feedforward_modules);
	c.r = o->r;
	c.lora_alpha = o->alpha;
	c.lora_dropout = o->lora_dropout;
	c.use_rslora = o->rslora;
	c.reduction_factor = o->reduction_factor;
	c.adapter_placement = o->houlsby ? PEFT_PLACEMENT_HOULSBY : PEFT_PLACEMENT_PFEIFFER;
	if (o->virtual_tokens > 0)
		c.num_virtual_tokens = o->virtual_tokens;
	c.hidden_dropout = o->hidden_dropout;
	c.seed = o->train.seed;
	die_on(session_network_options(&c, model, nopts, &err), &err);
	free(targets);
	free(ff);
}

/* Train an adapter on a TSV file and save it as a PEFT folder. */
static int
command_train(BertModel *model, const Options *o)
{
	Rows		rows = read_rows(o->data, true);
	bool		regression = strcmp(o->task, "regression") == 0;
	int			nlabels = 1;
	char	  **labels = NULL;
	Dataset		ds = {0};
	NetworkOptions nopts = {0};
	Network    *net;
	Trainer    *tr;
	uint32_t   *train_rows, *valid_rows;
	size_t		ntrain, nvalid;
	PeftError	err = {0};
	PeftTrainProgress	st = {0};
	PeftMetrics m;
	double		start, elapsed;
	long		rows_done = 0, tokens_done = 0;
	uint8_t    *bytes;
	size_t		nbytes;
	char	   *config;
	cJSON	   *head;
	char	   *head_text;
	int			steps = 0;

	if (!regression)
	{
		labels = distinct_labels(&rows, &nlabels);
		if (nlabels < 2)
			usage("classification needs at least two distinct labels");
	}
	for (size_t i = 0; i < rows.count; i++)
	{
		int32_t		label = regression ? 0 : label_index(labels, nlabels, rows.label[i]);
		real		target = regression ? (real) strtod(rows.label[i], NULL) : 0;

		die_on(dataset_add(&ds, model->tokenizer, rows.text[i], strlen(rows.text[i]),
						   o->max_length, label, target, &err), &err);
	}
	die_on(dataset_split(&ds, o->validation_fraction, o->train.seed, &train_rows, &ntrain,
						 &valid_rows, &nvalid, &err), &err);

	method_options(o, model, &nopts);
	nopts.task = regression ? PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION;
	nopts.num_labels = regression ? 1 : nlabels;
	die_on(network_create(model, &nopts, &net, &err), &err);
	place_network(net, o);
	die_on(trainer_create(net, &ds, train_rows, ntrain, &o->train, &tr, &err), &err);

	fprintf(stderr, "training on %zu rows (%zu validation), %d steps, %d trainable parameters, on %s\n",
			ntrain, nvalid, trainer_total_steps(tr), (int) net->params.total, net->be->name);
	for (int i = 0; i < o->warmup && !st.done; i++)
		die_on(trainer_step(tr, &st, &err), &err);
	net->be->profile = (BackendProfile) {.enabled = o->profile};
	start = synced_seconds(net);
	while (!st.done && (o->max_steps == 0 || steps < o->max_steps))
	{
		die_on(trainer_step(tr, &st, &err), &err);
		steps++;
		rows_done += st.rows;
		tokens_done += st.tokens;
		if (!o->json && (st.step % 10 == 0 || st.done || st.step == 1))
			fprintf(stderr, "epoch %d step %d/%d loss %.4f lr %.2e grad_norm %.3f\n",
					st.epoch, st.step, st.total_steps, st.loss, st.learning_rate, st.grad_norm);
	}
	elapsed = synced_seconds(net) - start;

	if (o->json)
	{
		printf("{\"steps\": %d, \"rows\": %ld, \"tokens\": %ld, \"seconds\": %.4f, "
			   "\"rows_per_second\": %.3f, \"tokens_per_second\": %.1f, \"final_loss\": %.6f, "
			   "\"parameters\": %zu, ",
			   steps, rows_done, tokens_done, elapsed, rows_done / elapsed,
			   tokens_done / elapsed, st.loss, net->params.total);
		print_profile_json(net, o, elapsed);
	}
	die_on(evaluate(net, &ds, valid_rows, nvalid, o->train.batch_size, &m, &err), &err);
	if (o->json)
		printf(", \"valid_rows\": %zu, \"valid_loss\": %.6f, \"valid_accuracy\": %.6f, "
			   "\"valid_macro_f1\": %.6f, \"valid_mse\": %.6f, \"valid_r2\": %.6f}\n",
			   m.rows, m.loss, m.accuracy, m.macro_f1, m.mse, m.r2);
	else
		printf("trained %d steps in %.1f s: %.1f rows/s, %.0f tokens/s\n"
			   "validation (%zu rows): loss %.4f accuracy %.4f macro-F1 %.4f mse %.4f r2 %.4f\n",
			   steps, elapsed, rows_done / elapsed, tokens_done / elapsed, m.rows, m.loss,
			   m.accuracy, m.macro_f1, m.mse, m.r2);

	if (o->out)
	{
		die_on(network_params_fetch(net, &err), &err);
		mkdir(o->out, 0755);
		die_on(adapter_serialize(net, &bytes, &nbytes, &err), &err);
		write_file(o->out, "adapter_model.safetensors", bytes, nbytes);
		die_on(adapter_config_json(net, o->model, &config, &err), &err);
		write_file(o->out, "adapter_config.json", config, strlen(config));
		head = cJSON_CreateObject();
		cJSON_AddStringToObject(head, "task", o->task);
		if (!regression)
			cJSON_AddItemToObject(head, "labels",
								  cJSON_CreateStringArray((const char *const *) labels, nlabels));
		head_text = cJSON_Print(head);
		write_file(o->out, "peft_head.json", head_text, strlen(head_text));
		free(bytes);
		free(config);
		free(head_text);
		cJSON_Delete(head);
	}
	trainer_free(tr);
	network_free(net);
	dataset_free(&ds);
	free(train_rows);
	free(valid_rows);
	return 0;
}

/* Read a whole file from dir/name (exits on failure). */
static char *
read_adapter_file(const char *dir, const char *name, size_t *len)
{
	char		path[4096];
	char	   *data;
	PeftError	err = {0};

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	die_on(read_small_file(path, (size_t) 1 << 31, &data, len, &err), &err);
	return data;
}

/* Build the network of a saved adapter folder; labels/count for classification. */
static Network *
load_adapter(BertModel *model, const char *dir, char ***labels, int *nlabels)
{
	size_t		len;
	char	   *config = read_adapter_file(dir, "adapter_config.json", &len);
	char	   *headtext = read_adapter_file(dir, "peft_head.json", &len);
	char	   *weights;
	cJSON	   *head = cJSON_Parse(headtext);
	const cJSON *task = cJSON_GetObjectItem(head, "task");
	const cJSON *names = cJSON_GetObjectItem(head, "labels");
	NetworkOptions nopts = {0};
	Network    *net;
	PeftError	err = {0};

	if (!cJSON_IsString(task))
		usage("peft_head.json has no task");
	die_on(adapter_options_from_config(config, strlen(config), &nopts, &err), &err);
	nopts.task = strcmp(task->valuestring, "regression") == 0 ? PEFT_TASK_REGRESSION : PEFT_TASK_CLASSIFICATION;
	*nlabels = nopts.task == PEFT_TASK_REGRESSION ? 1 : cJSON_GetArraySize(names);
	*labels = calloc(*nlabels, sizeof(char *));
	for (int i = 0; nopts.task == PEFT_TASK_CLASSIFICATION && i < *nlabels; i++)
		(*labels)[i] = strdup(cJSON_GetArrayItem(names, i)->valuestring);
	nopts.num_labels = *nlabels;
	die_on(network_create(model, &nopts, &net, &err), &err);
	weights = read_adapter_file(dir, "adapter_model.safetensors", &len);
	die_on(adapter_load_weights(net, (const uint8_t *) weights, len, &err), &err);
	free(weights);
	free(config);
	free(headtext);
	cJSON_Delete(head);
	return net;
}

/* Tokenise rows[first..first+count) into a padded batch. */
static void
make_text_batch(const BertModel *model, const Rows *rows, size_t first, int count,
				int max_length, Dataset *ds, BatchBuffer *buf, Batch *batch)
{
	PeftError	err = {0};
	uint32_t	idx[4096];

	ds->ntokens = ds->count = 0;
	for (int i = 0; i < count; i++)
	{
		die_on(dataset_add(ds, model->tokenizer, rows->text[first + i],
						   strlen(rows->text[first + i]), max_length, 0, 0, &err), &err);
		idx[i] = (uint32_t) i;
	}
	die_on(dataset_make_batch(ds, idx, count, buf, batch, &err), &err);
}

/* Print the predicted label and probability (or value) of every row. */
static int
command_predict(BertModel *model, const Options *o)
{
	Rows		rows = read_rows(o->data, false);
	char	  **labels;
	int			K;
	Network    *net = load_adapter(model, o->adapter, &labels, &K);
	Dataset		ds = {0};
	BatchBuffer buf = {0};
	real	   *out = malloc(sizeof(real) * o->batch_size * K);
	PeftError	err = {0};
	double		start;

	if (o->merge)
		die_on(network_merge(net, &err), &err);
	place_network(net, o);
	start = now_seconds();
	for (size_t pos = 0; pos < rows.count; pos += o->batch_size)
	{
		int			count = (int) (rows.count - pos < (size_t) o->batch_size ? rows.count - pos : (size_t) o->batch_size);
		Batch		b;

		make_text_batch(model, &rows, pos, count, o->max_length, &ds, &buf, &b);
		die_on(network_forward(net, &b, false, out, NULL, &err), &err);
		for (int i = 0; i < count && !o->json; i++)
		{
			if (net->opts.task == PEFT_TASK_REGRESSION)
			{
				printf("\t%.6f\n", out[i]);
				continue;
			}
			{
				real	   *z = out + (size_t) i * K;
				int			best = 0;
				double		sum = 0;

				for (int k = 1; k < K; k++)
					if (z[k] > z[best])
						best = k;
				for (int k = 0; k < K; k++)
					sum += exp(z[k] - z[best]);
				printf("%s\t%.6f\n", labels[best], 1.0 / sum);
			}
		}
	}
	if (o->json)
	{
		double		elapsed = synced_seconds(net) - start;

		printf("{\"rows\": %zu, \"seconds\": %.4f, \"rows_per_second\": %.3f, \"merged\": %s}\n",
			   rows.count, elapsed, rows.count / elapsed, o->merge ? "true" : "false");
	}
	free(out);
	batch_buffer_free(&buf);
	dataset_free(&ds);
	network_free(net);
	return 0;
}

static const Dataset *length_ds;

/* qsort comparator: longer rows first (as sentence-transformers' encode). */
static int
by_length(const void *a, const void *b)
{
	int32_t		la = length_ds->rows[*(const uint32_t *) a].length;
	int32_t		lb = length_ds->rows[*(const uint32_t *) b].length;

	return (la < lb) - (la > lb);
}

/*
 * Embed every row, in batches of similar length (sorted like
 * sentence-transformers' encode); print throughput, or the vectors in input
 * order with --print.
 */
static int
command_embed(BertModel *model, const Options *o)
{
	Rows		rows = read_rows(o->data, false);
	int			C = model->cfg.hidden_size;
	char	  **labels = NULL;
	int			K = 0;
	Network    *net;
	NetworkOptions nopts = {0};
	Dataset		ds = {0};
	BatchBuffer buf = {0};
	real	   *emb = malloc(sizeof(real) * (rows.count ? rows.count : 1) * C);
	real	   *batch_emb = malloc(sizeof(real) * o->batch_size * C);
	uint32_t   *order = malloc(sizeof(uint32_t) * (rows.count ? rows.count : 1));
	PeftError	err = {0};
	double		start;
	double		elapsed;
	double		tokenize_seconds;
	long		tokens = 0;

	if (o->adapter)
		net = load_adapter(model, o->adapter, &labels, &K);
	else
		die_on(network_create(model, &nopts, &net, &err), &err);
	place_network(net, o);
	start = now_seconds();
	for (size_t i = 0; i < rows.count; i++)
	{
		die_on(dataset_add(&ds, model->tokenizer, rows.text[i], strlen(rows.text[i]),
						   o->max_length, 0, 0, &err), &err);
		order[i] = (uint32_t) i;
	}
	length_ds = &ds;
	qsort(order, rows.count, sizeof(uint32_t), by_length);
	tokenize_seconds = now_seconds() - start;
	/* warm-up batches (device set-up, weights upload) stay out of the timing; tokenising stays in */
	for (int i = 0; i < o->warmup && rows.count > 0; i++)
	{
		Batch		b;
		int			count = rows.count < (size_t) o->batch_size ? (int) rows.count : o->batch_size;

		die_on(dataset_make_batch(&ds, order, count, &buf, &b, &err), &err);
		die_on(network_embed(net, &b, batch_emb, &err), &err);
	}
	if (o->warmup > 0)
	{
		net->be->profile = (BackendProfile) {.enabled = o->profile};
		start = synced_seconds(net) - tokenize_seconds;
	}
	for (size_t pos = 0; pos < rows.count; pos += o->batch_size)
	{
		int			count = (int) (rows.count - pos < (size_t) o->batch_size ? rows.count - pos : (size_t) o->batch_size);
		Batch		b;

		die_on(dataset_make_batch(&ds, order + pos, count, &buf, &b, &err), &err);
		die_on(network_embed(net, &b, batch_emb, &err), &err);
		for (int i = 0; i < b.B * b.T; i++)
			tokens += b.mask[i];
		for (int i = 0; i < count; i++)
			memcpy(emb + (size_t) order[pos + i] * C, batch_emb + (size_t) i * C, sizeof(real) * C);
	}
	elapsed = synced_seconds(net) - start;
	for (size_t i = 0; o->print && i < rows.count; i++)
		for (int c = 0; c < C; c++)
			printf("%.7g%c", emb[i * C + c], c + 1 < C ? ' ' : '\n');
	if (o->json)
	{
		printf("{\"rows\": %zu, \"tokens\": %ld, \"seconds\": %.4f, \"rows_per_second\": %.3f, "
			   "\"tokens_per_second\": %.1f, ",
			   rows.count, tokens, elapsed, rows.count / elapsed, tokens / elapsed);
		print_profile_json(net, o, elapsed);
		printf("}\n");
	}
	else if (!o->print)
		printf("embedded %zu rows in %.2f s: %.1f rows/s\n", rows.count, elapsed, rows.count / elapsed);
	free(emb);
	free(batch_emb);
	free(order);
	batch_buffer_free(&buf);
	dataset_free(&ds);
	network_free(net);
	return 0;
}

/* Parse options after the command word. */
static void
parse_options(int argc, char **argv, Options *o)
{
	static const struct option longopts[] = {
		{"model", required_argument, NULL, 'm'},
		{"data", required_argument, NULL, 'd'},
		{"out", required_argument, NULL, 'o'},
		{"adapter", required_argument, NULL, 'a'},
		{"task", required_argument, NULL, 1},
		{"r", required_argument, NULL, 2},
		{"alpha", required_argument, NULL, 3},
		{"lora-dropout", required_argument, NULL, 4},
		{"targets", required_argument, NULL, 5},
		{"rslora", no_argument, NULL, 6},
		{"epochs", required_argument, NULL, 7},
		{"batch-size", required_argument, NULL, 8},
		{"lr", required_argument, NULL, 9},
		{"weight-decay", required_argument, NULL, 10},
		{"warmup-ratio", required_argument, NULL, 11},
		{"schedule", required_argument, NULL, 12},
		{"grad-accum", required_argument, NULL, 13},
		{"max-grad-norm", required_argument, NULL, 14},
		{"max-length", required_argument, NULL, 15},
		{"validation-fraction", required_argument, NULL, 16},
		{"seed", required_argument, NULL, 17},
		{"threads", required_argument, NULL, 18},
		{"max-steps", required_argument, NULL, 19},
		{"hidden-dropout", required_argument, NULL, 20},
		{"print", no_argument, NULL, 21},
		{"json", no_argument, NULL, 22},
		{"no-group", no_argument, NULL, 23},
		{"device", required_argument, NULL, 24},
		{"precision", required_argument, NULL, 25},
		{"profile", no_argument, NULL, 26},
		{"warmup", required_argument, NULL, 27},
		{"method", required_argument, NULL, 28},
		{"feedforward", required_argument, NULL, 29},
		{"reduction-factor", required_argument, NULL, 30},
		{"houlsby", no_argument, NULL, 31},
		{"merge", no_argument, NULL, 32},
		{"virtual-tokens", required_argument, NULL, 33},
		{NULL, 0, NULL, 0}
	};
	int			c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'm': o->model = optarg; break;
			case 'd': o->data = optarg; break;
			case 'o': o->out = optarg; break;
			case 'a': o->adapter = optarg; break;
			case 1: o->task = optarg; break;
			case 2: o->r = atoi(optarg); break;
			case 3: o->alpha = atof(optarg); break;
			case 4: o->lora_dropout = atof(optarg); break;
			case 5: o->targets = optarg; break;
			case 6: o->rslora = true; break;
			case 7: o->train.epochs = atoi(optarg); break;
			case 8: o->train.batch_size = o->batch_size = atoi(optarg); break;
			case 9: o->train.learning_rate = atof(optarg); break;
			case 10: o->train.weight_decay = atof(optarg); break;
			case 11: o->train.warmup_ratio = atof(optarg); break;
			case 12:
				if (strcmp(optarg, "linear") == 0)
					o->train.schedule = PEFT_SCHEDULE_LINEAR;
				else if (strcmp(optarg, "cosine") == 0)
					o->train.schedule = PEFT_SCHEDULE_COSINE;
				else if (strcmp(optarg, "constant") == 0)
					o->train.schedule = PEFT_SCHEDULE_CONSTANT;
				else
					usage("--schedule is linear, cosine or constant");
				break;
			case 13: o->train.grad_accum = atoi(optarg); break;
			case 14: o->train.max_grad_norm = atof(optarg); break;
			case 15: o->max_length = atoi(optarg); break;
			case 16: o->validation_fraction = atof(optarg); break;
			case 17: o->train.seed = strtoull(optarg, NULL, 10); break;
			case 18: o->threads = atoi(optarg); break;
			case 19: o->max_steps = atoi(optarg); break;
			case 20: o->hidden_dropout = atof(optarg); break;
			case 21: o->print = true; break;
			case 22: o->json = true; break;
			case 23: o->train.group_by_length = false; break;
			case 24:
				if (!device_kind_parse(optarg, &o->device))
					usage("--device is auto, cpu or cuda");
				break;
			case 25:
				if (!gemm_precision_parse(optarg, &o->precision))
					usage("--precision is fp32, tf32 or bf16");
				break;
			case 26: o->profile = true; break;
			case 27: o->warmup = atoi(optarg); break;
			case 28: o->method = optarg; break;
			case 29: o->feedforward = optarg; break;
			case 30: o->reduction_factor = atoi(optarg); break;
			case 31: o->houlsby = true; break;
			case 32: o->merge = true; break;
			case 33: o->virtual_tokens = atoi(optarg); break;
			default: usage(NULL);
		}
	}
}

/* Entry point: peft-engine COMMAND [options]. */
int
main(int argc, char **argv)
{
	Options		o = {0};
	BertModel  *model;
	PeftError	err = {0};
	const char *command;

	if (argc < 2)
		usage(NULL);
	command = argv[1];
	train_options_default(&o.train);
	o.task = "classification";
	o.targets = NULL;			/* the method's default modules */
	o.method = "lora";
	o.reduction_factor = 16;
	o.r = 8;
	o.alpha = 16;
	o.lora_dropout = 0.1;
	o.hidden_dropout = -1;
	o.max_length = 128;
	o.validation_fraction = 0.1;
	o.threads = 1;
	o.batch_size = 32;
	o.device = PEFT_DEVICE_CPU;
	o.precision = PEFT_PRECISION_FP32;
	parse_options(argc - 1, argv + 1, &o);
	if (o.model == NULL || o.data == NULL)
		usage("--model and --data are required");
	if (o.batch_size < 1 || o.batch_size > 4096)
		usage("--batch-size must be between 1 and 4096");
	die_on(peft_engine_api()->init(o.threads, &err), &err);
	die_on(bert_load(o.model, &model, &err), &err);
	if (strcmp(command, "train") == 0)
		return command_train(model, &o);
	if (strcmp(command, "predict") == 0)
	{
		if (o.adapter == NULL)
			usage("predict needs --adapter");
		return command_predict(model, &o);
	}
	if (strcmp(command, "embed") == 0)
		return command_embed(model, &o);
	usage("unknown command");
	return 2;
}
