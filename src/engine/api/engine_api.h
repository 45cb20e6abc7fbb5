/*
 * engine_api.h - the one symbol peft_engine.so exports to peft.so (and to
 * peft-engine, the command-line runner, which links it).
 *
 * peft.so never links the engine: it dlopen()s peft_engine.so on first use
 * (with every signal blocked, so threads started by OpenBLAS or CUDA never
 * receive PostgreSQL's signals), looks up peft_engine_api() and calls
 * through the table it returns.  abi_version guards against a stale
 * library left installed beside a newer peft.so.
 *
 * This header is included by PostgreSQL code, so it uses only opaque
 * handles and plain C types (float is the engine's real type in every
 * shipped build); it must not pull in cblas.h or any engine internals.
 * Buffers the engine returns are freed with free_buffer.
 */
#ifndef PEFT_ENGINE_API_H
#define PEFT_ENGINE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define PEFT_ENGINE_ABI_VERSION 13
#define PEFT_ENGINE_SYMBOL "peft_engine_api"

typedef struct PeftModelHandle PeftModelHandle;		/* a loaded base model */
typedef struct PeftAdapterHandle PeftAdapterHandle;	/* an adapter over a model */
typedef struct PeftTrainJob PeftTrainJob;	/* one training run */
typedef struct PeftGenStream PeftGenStream;	/* a continuous-batching generation stream */

/* What a model folder holds (filled by model_open). */
typedef struct PeftModelInfo
{
	char		architecture[32];	/* "bert" */
	char		weights_dtype[8];	/* "F32", "F16", "BF16" */
	char		pooling[8];		/* "mean" or "cls" */
	bool		normalize;		/* sentence embeddings are L2-normalised */
	int			hidden_size;
	int			num_layers;
	int			num_heads;
	int			intermediate_size;
	int			vocab_size;
	int			max_position;
	int			max_seq_length; /* sentence-transformers', 0 if unset */
	int64_t		parameters;
	int64_t		file_bytes;		/* size of the weights file */
	/* decoders (architecture "llama"): */
	bool		decoder;		/* generates text; embed, predict and train need an encoder */
	int			num_kv_heads;
	char		quantization[16];	/* the type of most matrices: "Q4_1", "F32", "mixed" */
	char		source[8];		/* "gguf" or "hf" ("hf" for every encoder) */
	bool		chat_template;	/* the file has a chat template this engine renders */
	char		weights_file[1024];	/* the file the weights are mapped from (absolute if dir was) */
} PeftModelInfo;

typedef enum PeftTask
{
	PEFT_TASK_CLASSIFICATION,
	PEFT_TASK_REGRESSION,
	PEFT_TASK_GENERATION		/* a decoder learns completions of prompts */
} PeftTask;

/* Where the engine computes (AUTO: CUDA when the build has it and a device is visible). */
typedef enum PeftDevice
{
	PEFT_DEVICE_AUTO,
	PEFT_DEVICE_CPU,
	PEFT_DEVICE_CUDA
} PeftDevice;

/* Arithmetic of CUDA matrix products (the CPU always computes in FP32). */
typedef enum PeftPrecision
{
	PEFT_PRECISION_FP32,		/* exact FP32 */
	PEFT_PRECISION_TF32,		/* TF32 tensor cores, FP32 accumulation */
	PEFT_PRECISION_BF16			/* BF16 operands, FP32 accumulation and master weights */
} PeftPrecision;

/*
 * Adapter methods, combinable as "a+b" (one of LoRA, DoRA, (IA)^3, with
 * BitFit and/or bottleneck adapters): bits of PeftTrainConfig.methods.
 */
#define PEFT_METHOD_LORA		0x01
#define PEFT_METHOD_DORA		0x02	/* LoRA with a magnitude vector */
#define PEFT_METHOD_IA3			0x04
#define PEFT_METHOD_BITFIT		0x08
#define PEFT_METHOD_ADAPTER		0x10	/* bottleneck adapters */
#define PEFT_METHOD_PROMPT		0x20	/* prompt tuning: virtual tokens */
#define PEFT_METHOD_PREFIX		0x40	/* prefix tuning: key/value prefixes */

/* Settings of inference (embed, predict) in this process; see configure. */
typedef struct PeftEngineSettings
{
	PeftDevice	device;
	PeftPrecision precision;
	int			idle_release_seconds;	/* give the GPU back after this long unused; 0 never */
	int			batch_size;		/* rows per forward pass of embed and predict; 0: 32 */
} PeftEngineSettings;

/* What an adapter's config and weights hold (filled by adapter_inspect). */
typedef struct PeftAdapterInfo
{
	char		method[64];		/* e.g. "lora", "dora+bitfit" */
	int			num_labels;		/* rows of the classifier head; 0: none */
	int64_t		parameters;		/* trainable values */
	int			rank;			/* LoRA r; 0 for other methods */
	bool		decoder;		/* over a decoder: it generates (task generation) */
} PeftAdapterInfo;

typedef enum PeftSchedule
{
	PEFT_SCHEDULE_LINEAR,
	PEFT_SCHEDULE_COSINE,
	PEFT_SCHEDULE_CONSTANT
} PeftSchedule;

/* Where bottleneck adapters sit (words.h: "pfeiffer", "houlsby"). */
typedef enum PeftAdapterPlacement
{
	PEFT_PLACEMENT_PFEIFFER,	/* after the feed-forward block only */
	PEFT_PLACEMENT_HOULSBY		/* after attention too */
} PeftAdapterPlacement;

/*
 * Everything a training run needs.  The fields users set by name are the
 * rows of the option table (options(), train_config.c): their defaults,
 * types, ranges and help come from there; train_config_default fills them.
 */
typedef struct PeftTrainConfig
{
	PeftTask	task;
	int			num_labels;		/* set by train_prepare */
	int			r;
	double		lora_alpha;
	double		lora_dropout;
	bool		use_rslora;
	const char *target_modules[16];
	int			num_targets;
	int			epochs;
	int			batch_size;
	int			gradient_accumulation_steps;
	double		learning_rate;
	double		weight_decay;
	double		warmup_ratio;
	int			warmup_steps;	/* >= 0: replaces warmup_ratio */
	double		max_grad_norm;
	int			max_steps;		/* > 0: this many steps, replacing epochs (Hugging Face's max_steps) */
	PeftSchedule schedule;
	int			max_length;
	double		validation_fraction;
	double		hidden_dropout; /* < 0: the model config's */
	uint64_t	seed;
	/*
	 * Bytes the run may hold, 0 = no limit: the tokenised rows (checked as
	 * they arrive) and, at prepare, those with the parameters, gradients,
	 * optimizer moments, activations and row orders (PeftTrainMemory).
	 */
	size_t		memory_limit;
	PeftDevice	device;
	PeftPrecision precision;
	unsigned	methods;		/* PEFT_METHOD_* bits; 0 reads as LoRA */
	/* (IA)^3: target_modules above; these scale their input (PEFT's feedforward_modules) */
	const char *feedforward_modules[16];
	int			num_feedforward;
	int			reduction_factor;	/* bottleneck width = hidden / this */
	PeftAdapterPlacement adapter_placement;
	int			num_virtual_tokens;	/* prompt and prefix tuning */
	bool		group_by_length;	/* batches of similar lengths (less padding) */
	int			max_classes;	/* classification: most distinct labels */
	bool		activate;		/* the SQL layer's: make the new version active */
	/*
	 * The caller's: where its validation rows come from (a query, a file),
	 * or NULL.  The engine never reads it: it points at the caller's
	 * string, and the rows arrive after train_hold_out.
	 */
	const char *validation_data;
	/* generation (decoders) */
	bool		chat;			/* render prompts with the model's chat template */
	const char *system;			/* the system message of those prompts, or NULL (the template's) */
	bool		eval_generate;	/* exact match of greedy generations in validation */
} PeftTrainConfig;

/* The kinds of value an option takes. */
typedef enum PeftOptionType
{
	PEFT_OPTION_INT,
	PEFT_OPTION_NUMBER,
	PEFT_OPTION_BOOL,
	PEFT_OPTION_WORD,			/* one of the words; stored as its index (an enum) */
	PEFT_OPTION_MODULES,		/* a list of linear layer names */
	PEFT_OPTION_TEXT,			/* any non-empty string, for the caller (kept as its pointer) */
	PEFT_OPTION_NONE			/* (a value only) of no kind an option takes: JSON null, an object */
} PeftOptionType;

/*
 * One training option: a row of the option table, the single source of
 * peft_train's options keys, peft-engine's --flags (the key with "-" for
 * "_"), their checks, defaults and help, and the README's options table.
 */
typedef struct PeftOption
{
	const char *key;			/* "learning_rate" */
	PeftOptionType type;
	double		min;			/* INT, NUMBER: the range */
	double		max;
	bool		max_open;		/* max itself is out of range */
	const char *const *words;	/* WORD: NULL-terminated (words.h) */
	size_t		offset;			/* where the value lands in PeftTrainConfig */
	size_t		size;			/* its size: int, uint64_t, double, bool or an enum */
	size_t		count_offset;	/* MODULES: the int that counts the names */
	double		default_value;	/* INT, NUMBER, BOOL, WORD (the index) */
	const char *default_text;	/* the default as people read it */
	const char *help;			/* one line */
	unsigned	methods;		/* PEFT_METHOD_* bits it applies to; 0: every method */
	unsigned	tasks;			/* bits 1 << PeftTask it applies to; 0: every task */
} PeftOption;

/* A value for an option, as the caller has it (JSON, a command line). */
typedef struct PeftOptionValue
{
	PeftOptionType type;		/* INT and NUMBER are both given as number */
	double		number;
	bool		boolean;
	const char *word;
	const char *const *names;	/* MODULES (the config keeps copies) */
	int			nnames;
} PeftOptionValue;

/* A method, as the method table describes it. */
typedef struct PeftMethodInfo
{
	const char *name;			/* "lora", as in method => 'lora' and "a+b" */
	unsigned	bit;			/* PEFT_METHOD_* */
	const char *peft_type;		/* PEFT's peft_type when used alone; NULL: PEFT has none */
	bool		mergeable;		/* peft_merge can fold it into the base weights */
	unsigned	tasks;			/* the tasks it trains for: bits 1 << PeftTask */
	const char *architectures;	/* the model families it works on: model_type values, comma-separated */
	double		learning_rate;	/* the default peak learning rate (test/bench/lr_sweep.sh) */
	const char *help;			/* one line */
} PeftMethodInfo;

/* How the caller of generate says stop (a statement cancel): polled once per decoding step. */
typedef bool (*PeftCancelFn) (void *arg);

/* Options of generate (generate_defaults fills them). */
typedef struct PeftGenerateOptions
{
	int			max_new_tokens; /* at most this many new tokens per prompt */
	double		temperature;	/* 0: greedy */
	int			top_k;			/* 0: off */
	double		top_p;			/* 1: off */
	uint64_t	seed;			/* of the sampling; the same seed gives the same text */
	const char *const *stop;	/* generation ends before the first of these strings */
	int			nstop;
	int			chat;			/* 1: the prompt is a user turn of the model's chat template; 0: raw text; -1: 1 when the model has a template */
	const char *system;			/* the system message of a chat prompt, or NULL (the template's default) */
	PeftCancelFn canceled;		/* may be NULL */
	void	   *cancel_arg;
} PeftGenerateOptions;

/* Why a completion ended. */
typedef enum PeftFinishReason
{
	PEFT_FINISH_STOP,			/* end-of-sequence token or a stop string */
	PEFT_FINISH_LENGTH			/* max_new_tokens, or the model's context */
} PeftFinishReason;

/* One prompt's completion (text freed with free_buffer). */
typedef struct PeftGeneration
{
	char	   *text;
	int			tokens;			/* new tokens generated (the end token included) */
	int			prompt_tokens;
	PeftFinishReason finish;
} PeftGeneration;

/* A finished (or failed) sequence of a stream. */
typedef struct PeftStreamResult
{
	uint64_t	tag;			/* the caller's tag from stream_add */
	PeftCode	code;			/* PEFT_OK, or why this sequence alone failed */
	char		message[PEFT_ERROR_MESSAGE_LEN];	/* when code != PEFT_OK */
	PeftGeneration gen;			/* text freed with free_buffer (NULL when failed) */
} PeftStreamResult;

/* One optimizer step's report. */
typedef struct PeftTrainProgress
{
	int			step;			/* optimizer steps done (1-based after a step) */
	int			total_steps;
	int			epoch;			/* 1-based epoch of this step */
	double		loss;			/* mean loss of this step's micro-batches */
	double		learning_rate;	/* used by this step */
	double		grad_norm;		/* before clipping */
	int			rows;			/* rows processed by this step */
	int			tokens;			/* real (non-pad) tokens processed */
	bool		epoch_end;		/* this step finished a pass over the training rows */
	bool		done;			/* no steps remain */
} PeftTrainProgress;

/* What a prepared run holds, in bytes (memory_limit covers their sum). */
typedef struct PeftTrainMemory
{
	int64_t		data;			/* tokenised rows, validation split and row orders */
	int64_t		state;			/* trainable parameters, gradients, Adam moments */
	int64_t		activations;	/* buffers for the largest batch */
} PeftTrainMemory;

/*
 * What a device's matrix products did since profile_start, for
 * benchmarks: the counters belong to the process's backend of that
 * device, shared by every network computing there.
 */
typedef struct PeftProfile
{
	char		device[8];		/* the backend that computed: "cpu" or "cuda" */
	char		precision[8];	/* of its products ("fp32" on the CPU) */
	double		flops;			/* 2 M N K over every product, plus attention's */
	double		gemm_seconds;	/* time in the products; 0 unless timed */
	int64_t		tokens;			/* tokens of the texts embed and predict computed (any device) */
} PeftProfile;

/* Validation metrics (classification or regression fields). */
typedef struct PeftMetrics
{
	int64_t		rows;
	double		loss;
	double		accuracy;
	double		macro_f1;
	double		mse;
	double		mae;
	double		r2;
	/* generation: loss is the mean over completion tokens */
	double		perplexity;		/* exp(loss) */
	double		exact_match;	/* share of greedy completions equal to the reference, or -1: not run */
	int64_t		generated;		/* validation rows generated for exact_match */
	int64_t		skipped;		/* rows left out: the completion alone was longer than max_length */
} PeftMetrics;

typedef struct PeftEngineApi
{
	int			abi_version;

	/* Engine version string (version.h), e.g. "0.2.0". */
	const char *(*version) (void);

	/* Backends compiled in, comma-separated: "cpu" or "cpu,cuda". */
	const char *(*backends) (void);

	/* Start the engine's thread pool with nthreads (>= 1). */
	PeftCode	(*init) (int nthreads, PeftError *err);

	/* Number of CUDA devices visible, 0 without CUDA or a device. */
	int			(*cuda_device_count) (void);

	/* Device, precision, idle release and batch size of later embed/predict calls. */
	void		(*configure) (const PeftEngineSettings *settings);

	/* Free a buffer the engine returned. */
	void		(*free_buffer) (void *buffer);

	/* Load and validate a model folder (weights memory-mapped). */
	PeftCode	(*model_open) (const char *dir, PeftModelHandle **out,
							   PeftModelInfo *info, PeftError *err);
	void		(*model_close) (PeftModelHandle *model);

	/*
	 * Build an adapter from its adapter_config.json text and safetensors
	 * weights (validated); num_labels 0 means no head (embeddings only).
	 */
	PeftCode	(*adapter_open) (PeftModelHandle *model, const char *config,
								 size_t config_len, const uint8_t *weights,
								 size_t weights_len, PeftTask task,
								 int num_labels, PeftAdapterHandle **out,
								 PeftError *err);
	void		(*adapter_close) (PeftAdapterHandle *adapter);

	/*
	 * Bytes an open adapter holds in this process: its parameters and the
	 * activation buffers its forwards grew (a decoder adapter: its
	 * parameter set, gradients and moments included); the base model not
	 * counted.
	 */
	size_t		(*adapter_memory) (PeftAdapterHandle *adapter);

	/*
	 * Validate an adapter's config and weights over model completely (as
	 * adapter_open would, the head's size read from the weights) and
	 * describe it.
	 */
	PeftCode	(*adapter_inspect) (PeftModelHandle *model, const char *config,
									size_t config_len, const uint8_t *weights,
									size_t weights_len, PeftAdapterInfo *info,
									PeftError *err);

	/* Fold LoRA, DoRA and (IA)^3 into the weights of an open adapter. */
	PeftCode	(*adapter_merge) (PeftAdapterHandle *adapter, PeftError *err);

	/*
	 * A weighted combination of n LoRA adapters over model, as PEFT's
	 * add_weighted_adapter: "linear" (equal ranks; A = sum sign sqrt(|w s|)
	 * A_i, B = sum sqrt(|w s|) B_i) or "cat" (ranks concatenated, A_i
	 * scaled by w s); the result has r = lora_alpha = its rank.  With a
	 * head of equal size in every source, the head is the weighted sum
	 * of theirs; else none.  Outputs are freed with free_buffer.
	 */
	PeftCode	(*adapter_combine) (PeftModelHandle *model, int n,
									const char *const *configs, const size_t *config_lens,
									const uint8_t *const *weights, const size_t *weights_lens,
									const double *factors, const char *combination,
									const char *base_model, uint8_t **out_weights,
									size_t *out_weights_len, char **out_config,
									PeftError *err);

	/*
	 * Sentence embeddings out[n, hidden] of texts (in their order), through
	 * adapter if not NULL; computed in batches of similar length, longest
	 * first, as sentence-transformers' encode.
	 */
	PeftCode	(*embed) (PeftModelHandle *model, PeftAdapterHandle *adapter,
						  const char *const *texts, const size_t *lengths,
						  int n, int max_length, float *out, PeftError *err);

	/* Head outputs out[n, num_labels]: class probabilities, or the value. */
	PeftCode	(*predict) (PeftAdapterHandle *adapter, const char *const *texts,
							const size_t *lengths, int n, int max_length,
							float *out, PeftError *err);

	/*
	 * Head outputs of rows of many adapters over one encoder (S-LoRA's
	 * mixed batches): row i through adapters[i], truncated at
	 * max_lengths[i] (NULL or 0: the model's), its num_labels outputs at
	 * out + i * ldo (ldo >= every adapter's num_labels).  The base
	 * products run once over the rows of every adapter (LoRA, DoRA,
	 * (IA)^3, BitFit, bottleneck adapters; prompt tuning's virtual tokens
	 * packed per sequence; prefix tuning's attention on its own
	 * sequences), each adapter's methods and head on its own rows; merged
	 * adapters, whose products differ from the base's, compute their rows
	 * in batches of their own.
	 */
	PeftCode	(*predict_mixed) (PeftAdapterHandle *const *adapters, const char *const *texts,
								  const size_t *lengths, const int *max_lengths, int n,
								  float *out, int ldo, PeftError *err);

	/* The same for sentence embeddings out[n, hidden]; adapters[i] NULL: the bare model. */
	PeftCode	(*embed_mixed) (PeftModelHandle *model, PeftAdapterHandle *const *adapters,
								const char *const *texts, const size_t *lengths,
								const int *max_lengths, int n, float *out, PeftError *err);

	/* Check target_modules names against the BERT linear layers. */
	PeftCode	(*check_targets) (const char *const *names, int count, PeftError *err);

	/* Parse a method name: a row of the method table, or "a+b" (methods() lists them). */
	PeftCode	(*parse_method) (const char *name, unsigned *methods, PeftError *err);
	/* The canonical name of PEFT_METHOD_* bits into buf[len], e.g. "dora+bitfit". */
	const char *(*method_name) (unsigned methods, char *buf, size_t len);

	/* Defaults of a training run. */
	void		(*train_config_default) (PeftTrainConfig *config);
	/* The option table: *count rows. */
	const PeftOption *(*options) (int *count);
	/* Check value against option key's type and range and store it in config. */
	PeftCode	(*option_set) (PeftTrainConfig *config, const char *key,
							   const PeftOptionValue *value, PeftError *err);
	/*
	 * The same from text, as a command line has it (numbers, true/false,
	 * words, comma-separated module names; config keeps copies).
	 */
	PeftCode	(*option_parse) (PeftTrainConfig *config, const char *key,
								 const char *text, PeftError *err);
	/*
	 * Check that option key (given explicitly) applies to the methods
	 * (PEFT_METHOD_* bits) and task of a run: an error names those it
	 * applies to.
	 */
	PeftCode	(*option_applies) (const char *key, unsigned methods, PeftTask task,
								   PeftError *err);
	/* The method table: *count rows. */
	const PeftMethodInfo *(*methods) (int *count);
	/* Start a run: rows are added next. */
	PeftCode	(*train_begin) (PeftModelHandle *model,
								const PeftTrainConfig *config,
								PeftTrainJob **out, PeftError *err);
	/* Tokenise and keep one row (label: class index; target: value). */
	PeftCode	(*train_add_row) (PeftTrainJob *job, const char *text,
								  size_t len, int label, double target,
								  PeftError *err);
	/*
	 * Rows added from now on are the validation rows: train_prepare holds
	 * them out instead of splitting off validation_fraction of the rest.
	 */
	PeftCode	(*train_hold_out) (PeftTrainJob *job, PeftError *err);
	/*
	 * Split, build the network and the schedule once every row is in.
	 * Classification: num_labels classes, and label_map (may be NULL)
	 * renumbers the labels rows were added with (map[old] = new).
	 */
	PeftCode	(*train_prepare) (PeftTrainJob *job, int num_labels,
								  const int *label_map, int64_t *train_rows,
								  int64_t *valid_rows, int *total_steps,
								  PeftError *err);
	/* One optimizer step. */
	PeftCode	(*train_step) (PeftTrainJob *job, PeftTrainProgress *progress,
							   PeftError *err);
	/* What a prepared run holds. */
	void		(*train_memory) (PeftTrainJob *job, PeftTrainMemory *memory);
	/* Where a prepared run computes: "cpu" or "cuda". */
	const char *(*train_device) (PeftTrainJob *job);
	/* Validation metrics of the current weights. */
	PeftCode	(*train_evaluate) (PeftTrainJob *job, PeftMetrics *metrics,
								   PeftError *err);
	/* Weights (safetensors) and adapter_config.json; free with free_buffer. */
	PeftCode	(*train_export) (PeftTrainJob *job, const char *base_model,
								 uint8_t **weights, size_t *weights_len,
								 char **config, PeftError *err);
	void		(*train_free) (PeftTrainJob *job);

	/* Trainable values of a prepared run. */
	int64_t		(*train_parameters) (PeftTrainJob *job);
	/* Tokens per row the run keeps (max_length as resolved for the model). */
	int			(*train_max_length) (PeftTrainJob *job);
	/*
	 * Wait for what device has queued, then count its products from zero,
	 * timing each when time_products (on CUDA that synchronises around
	 * every product, slowing the run a little).
	 */
	PeftCode	(*profile_start) (PeftDevice device, bool time_products, PeftError *err);
	/* Wait for what device has queued, then what it counted since profile_start. */
	PeftCode	(*profile_read) (PeftDevice device, PeftProfile *profile, PeftError *err);
	/* Defaults of generate: 128 new tokens, greedy, chat when the model has a template. */
	void		(*generate_defaults) (PeftGenerateOptions *options);

	/*
	 * Completions of n prompts by a decoder, computed together (prompts of
	 * different lengths share every decoding step).  out[i] for prompt i.
	 */
	PeftCode	(*generate) (PeftModelHandle *model, PeftAdapterHandle *adapter,
							 const char *const *prompts, const size_t *lengths, int n,
							 const PeftGenerateOptions *options, PeftGeneration *out,
							 PeftError *err);

	/*
	 * The same with prompt i through adapters[i] (NULL: the base model),
	 * every adapter over model: the prompts are decoded together, each
	 * product with the base weights once per step over every sequence and
	 * each adapter's part on its own sequences; merged adapters' prompts
	 * run over their folded weights, each adapter's together.
	 */
	PeftCode	(*generate_mixed) (PeftModelHandle *model, PeftAdapterHandle *const *adapters,
								   const char *const *prompts, const size_t *lengths, int n,
								   const PeftGenerateOptions *options, PeftGeneration *out,
								   PeftError *err);

	/*
	 * Continuous batching: a stream over decoder model for up to slots
	 * sequences at once, whose key/value caches take at most cache_bytes
	 * together (0: a default, 512 MB).  Prompts join the running batch
	 * between steps and finished ones leave, freeing their slot.
	 */
	PeftCode	(*stream_create) (PeftModelHandle *model, int slots, size_t cache_bytes,
								  PeftGenStream **out, PeftError *err);

	/*
	 * Queue one prompt through adapter (NULL: the base model; the caller
	 * keeps the adapter alive until the tag's result comes back or
	 * stream_cancel), with its own options (copied, stop strings included;
	 * options->canceled is ignored), as prompt index of its call (index only
	 * picks the sampling seed, as generate seeds prompt index).  The prompt
	 * is tokenised and checked here: an error (bad options, chat without a
	 * template, a prompt longer than the model's context) is returned and
	 * nothing is queued.  *alone = true, PEFT_OK, nothing queued: the prompt
	 * cannot share the stream (a merged adapter, or prompt tokens +
	 * max_new_tokens more than one slot's positions): run it with generate
	 * or generate_mixed instead.
	 */
	PeftCode	(*stream_add) (PeftGenStream *st, PeftAdapterHandle *adapter, const char *prompt,
							   size_t len, const PeftGenerateOptions *options, int index,
							   uint64_t tag, bool *alone, PeftError *err);

	/* Drop the sequence tagged tag (queued or decoding), freeing its slot; false if it is not there. */
	bool		(*stream_cancel) (PeftGenStream *st, uint64_t tag);

	/*
	 * One step: admit queued prompts into free slots (first in, first out;
	 * all admitted ones prefilled in one decoder pass), then one decoding
	 * step over every live sequence (one pass over all of them, the base
	 * products once, each adapter's part on its rows).  The sequences that
	 * finished in this step come back in *results (*nresults of them; the
	 * array freed with free_buffer, each gen.text too).  A failure of the
	 * step as a whole (out of memory, a device error) returns its code:
	 * every sequence is then dropped and the stream is empty but usable.
	 */
	PeftCode	(*stream_step) (PeftGenStream *st, PeftStreamResult **results, int *nresults,
								PeftError *err);

	/* Sequences queued or decoding. */
	int			(*stream_pending) (PeftGenStream *st);

	/* Release a stream and every sequence in it (NULL allowed). */
	void		(*stream_free) (PeftGenStream *st);

	/*
	 * The seed prompt index of a call with options->seed samples with
	 * (index 0: the seed itself): a prompt decoded alone with it samples as
	 * it would at that place in the call.
	 */
	uint64_t	(*generate_seed) (uint64_t seed, int index);

	/*
	 * The decoder's tokens of text (special tokens in it recognised when
	 * special), *ids freed with free_buffer; with chat, the text is first
	 * rendered as a user turn as generate renders it.
	 */
	PeftCode	(*tokenize) (PeftModelHandle *model, const char *text, size_t len, bool chat,
							 const char *system, int32_t **ids, int *n, PeftError *err);

	/* A decoder's logits out[vocab] after the n tokens ids, through adapter if not NULL (parity checks). */
	PeftCode	(*logits) (PeftModelHandle *model, PeftAdapterHandle *adapter, const int32_t *ids,
						   int n, float *out, PeftError *err);

	/*
	 * Tokenise and keep one row of a generation run: the prompt (rendered
	 * as a user turn when the run's chat option holds) and the completion
	 * the loss is computed on.
	 */
	PeftCode	(*train_add_pair) (PeftTrainJob *job, const char *prompt, size_t prompt_len,
								   const char *completion, size_t completion_len,
								   PeftError *err);

	/*
	 * A decoder adapter (its adapter_config.json text and safetensors
	 * weights, PEFT's layout) as llama.cpp's LoRA GGUF; *out freed with
	 * free_buffer.
	 */
	PeftCode	(*adapter_export_gguf) (PeftModelHandle *model, const char *config,
										size_t config_len, const uint8_t *weights,
										size_t weights_len, uint8_t **out, size_t *out_len,
										PeftError *err);

	/* Name of a code, e.g. "format error", for messages. */
	const char *(*code_name) (PeftCode code);
} PeftEngineApi;

typedef const PeftEngineApi *(*PeftEngineApiFn) (void);

/* The engine's function table (exported from peft_engine.so). */
PEFT_EXPORT const PeftEngineApi *peft_engine_api(void);

#endif
