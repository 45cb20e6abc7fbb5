/*
 * serve.h - the serving worker (peft.serve = on): one background worker per
 * (database, model, device) computes peft_predict, peft_embed and
 * peft_generate for every connection.
 *
 * serve.c       settings, the registry of workers in shared memory, starting one
 * serve_client.c  the caller's side: its channel to a worker, send and wait
 * serve_worker.c  the worker: gather requests, compute batches, answer
 * serve_generate.c  the worker's decoding: one continuously batched stream
 * serve_protocol.c  the messages both sides exchange
 *
 * A caller talks to a worker through a channel: a DSM segment it creates
 * with two shm_mq rings (requests to the worker, answers back), kept for the
 * session and announced once through the worker's inbox in the registry.
 */
#ifndef PEFT_SERVE_H
#define PEFT_SERVE_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "storage/dsm.h"
#include "storage/lwlock.h"
#include "storage/shm_mq.h"

#include "engine_api.h"

#define SERVE_MAGIC 0x50534552	/* "PSER" */
/* Workers that may run at once on a server (each takes a background worker slot). */
#define SERVE_MAX_WORKERS 16
/* Bytes of each ring of a channel; longer messages stream through. */
#define SERVE_RING_BYTES (64 * 1024)

/* Settings (serve.c) */
extern bool peft_serve;
extern int	peft_serve_max_wait;	/* ms */
extern int	peft_serve_max_batch;	/* rows */
extern int	peft_serve_threads;		/* 0: one per CPU core; default 1 */

/* States of a registry slot. */
typedef enum ServeSlotState
{
	SERVE_SLOT_FREE = 0,
	SERVE_SLOT_STARTING,		/* registered, the process has not claimed it yet */
	SERVE_SLOT_RUNNING
} ServeSlotState;

/* A channel announced to a worker, waiting to be attached. */
typedef struct ServeInboxEntry
{
	dsm_handle	handle;			/* DSM_HANDLE_INVALID: withdrawn */
	int			caller_procno;	/* to wake the caller if the worker ends first */
	uint32		channel_id;		/* also in the segment: a reused handle is told apart */
} ServeInboxEntry;

/* One worker's place in the registry. */
typedef struct ServeSlot
{
	ServeSlotState state;
	uint64		generation;		/* bumped whenever the slot is taken or freed */
	Oid			database;
	char		model[NAMEDATALEN];
	int			device;			/* PeftDevice */
	pid_t		pid;			/* 0 until the process runs */
	int			procno;			/* its PGPROC, for its latch */
	TimestampTz registered;		/* when it was started */
	int			inbox_len;		/* entries used in inbox */
	ServeInboxEntry *inbox;		/* MaxBackends entries, after the slots */
} ServeSlot;

/* The registry, in the main shared memory (needs shared_preload_libraries). */
typedef struct ServeRegistry
{
	LWLock	   *lock;
	uint32		next_channel_id;
	ServeSlot	slots[SERVE_MAX_WORKERS];
} ServeRegistry;

/* What a worker gets in bgw_extra. */
typedef struct ServeWorkerArgs
{
	uint32		magic;
	int			slot;
	uint64		generation;
	Oid			database;
} ServeWorkerArgs;

/* The fixed head of a channel's segment; the two rings follow. */
typedef struct ServeChannelHeader
{
	uint32		magic;
	uint32		channel_id;
	Oid			database;
	char		model[NAMEDATALEN];
	int			device;
	int			caller_pid;
	Size		request_offset;	/* caller -> worker ring */
	Size		answer_offset;	/* worker -> caller ring */
} ServeChannelHeader;

/* Bytes of a channel's segment. */
#define SERVE_CHANNEL_BYTES (MAXALIGN(sizeof(ServeChannelHeader)) + 2 * SERVE_RING_BYTES)

/* What a request asks the worker to compute. */
typedef enum ServeKind
{
	SERVE_PREDICT = 1,			/* peft_predict: rows of one adapter version */
	SERVE_EMBED,				/* peft_embed: rows each through its own adapter (or the bare model) */
	SERVE_GENERATE				/* peft_generate: prompts each through its own adapter, continuously batched */
} ServeKind;

/*
 * One request.  Predict: every row through (adapter, version), as the
 * caller looked it up.  Embed and generate: row i through adapters[i]
 * (NULL: the model alone) at versions[i]; generate's options are the
 * caller's jsonb as text, parsed by the worker, and row i is prompt i of
 * the engine's call (which picks its sampling seed).  No text is NULL
 * but predict's.
 */
typedef struct ServeRequest
{
	ServeKind	kind;
	char	   *adapter;		/* predict */
	int			version;		/* predict */
	char	   *row_version;	/* predict: xmin of the catalog row the caller saw */
	char	   *options;		/* generate */
	int			n;
	char	  **texts;			/* NULL for a NULL input (predict) */
	char	  **adapters;		/* embed, generate */
	int		   *versions;		/* embed, generate */
} ServeRequest;

/*
 * One answer: an error for the whole request, or per row a label and a
 * score (predict), an embedding of dim floats (embed), or a completion
 * (generate).
 */
typedef struct ServeAnswer
{
	bool		failed;
	int			sqlerrcode;
	char	   *message;		/* failed only */
	int			n;
	char	  **labels;			/* predict: NULL for regression or a NULL input */
	double	   *scores;			/* predict */
	int			dim;			/* embed */
	float	   *vectors;		/* embed: n x dim */
	char	  **completions;	/* generate */
	int		   *tokens;			/* generate: new tokens */
	int		   *finish;			/* generate: PeftFinishReason */
} ServeAnswer;

/* serve.c */
extern void PeftInitServe(void);
extern bool ServePreloaded(void);
extern ServeRegistry *ServeRegistryGet(void);
/* The slot index of the worker for (this database, model, device), started if needed; *generation. */
extern int	ServeFindWorker(const char *model, int device, uint64 *generation, bool *started_here);
/* Whether the worker of slot, as of generation, still holds it. */
extern bool ServeWorkerAlive(int slot, uint64 generation);
/* Free a slot whose worker is not running (registry lock held), waking whoever waits in its inbox. */
extern void ServeFreeSlotLocked(ServeSlot *s);
/* ERROR (errcode) when peft.serve is on but peft was not preloaded. */
extern void ServeRequirePreload(void);

/* serve_protocol.c */
extern void ServeEncodeRequest(StringInfo buf, const ServeRequest *req);
extern bool ServeDecodeRequest(const char *data, Size len, ServeRequest *req);
/* The answer to a request of kind. */
extern void ServeEncodeAnswer(StringInfo buf, ServeKind kind, const ServeAnswer *ans);
extern bool ServeDecodeAnswer(const char *data, Size len, ServeKind kind, ServeAnswer *ans);

/* serve_client.c: the caller's side (the caller looked up the adapters, as itself) */
/* Predict texts through the serving worker of model. */
extern void ServePredict(const char *model, const char *adapter, int version, const char *row_version,
						 char **texts, int n, char **labels, double *scores);

/* The rows of a call as sent: text i through version versions[i] of names[i] (NULL: the model alone). */
typedef struct ServeRows
{
	int			count;
	char	  **names;
	int		   *versions;
	char	  **texts;
} ServeRows;

/* ERROR unless an adapter over adapter_model may join a call over model (NULL: the first adapter's). */
typedef void (*ServeModelCheck) (const char *adapter, const char *adapter_model, const char *model);

/* Look up (as the caller) the adapters of the rows whose texts are not NULL. */
extern void ServeCollectRows(char **names, char **texts, int n, ServeModelCheck check, char **model,
							 ServeRows *rows);
/* Embed texts, text i through (adapters[i], versions[i]) (NULL: the model alone): n x *dim floats. */
extern float *ServeEmbed(const char *model, char **adapters, int *versions, char **texts, int n, int *dim);
/* Complete prompts, prompt i through (adapters[i], versions[i]), with options (jsonb text). */
extern PeftGeneration *ServeGenerate(const char *model, const char *options, char **adapters, int *versions,
									 char **prompts, int n);

/* serve_generate.c: the worker's decoding, continuously batched */
/* Answer owner's request (kind SERVE_GENERATE) with ans. */
typedef void (*ServeAnswerFn) (void *owner, const ServeAnswer *ans);
/*
 * Start decoding owner's request (its prompts join the running batch at
 * the next step; those that cannot share it are decoded now).  answer is
 * called once, now (an error, or all alone) or from ServeGenerateStep.
 * Outside a transaction.
 */
extern void ServeGenerateBegin(const char *model, void *owner, const ServeRequest *req, ServeAnswerFn answer);
/* Whether prompts are queued or decoding. */
extern bool ServeGenerateBusy(void);
/* One decoding step over every sequence; answers the requests that finished. */
extern void ServeGenerateStep(void);
/* Drop owner's prompts (its caller left); it is not answered. */
extern void ServeGenerateWithdraw(void *owner);

#endif
