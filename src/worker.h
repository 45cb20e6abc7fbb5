/*
 * worker.h - what a peft_train call hands its background worker.
 */
#ifndef PEFT_WORKER_H
#define PEFT_WORKER_H

#include "postgres.h"

#include "port/atomics.h"
#include "storage/dsm.h"

#define PEFT_WORKER_MAGIC 0x50454654	/* "PEFT" */

/* Fixed arguments, copied into bgw_extra (at most BGW_EXTRALEN bytes). */
typedef struct WorkerArgs
{
	uint32		magic;
	Oid			database;
	Oid			owner;			/* extension owner: the worker connects as it */
	Oid			caller;			/* the role whose rights read the data */
	int64		job_id;			/* wait => false: the job row */
	TransactionId caller_xid;	/* wait => false: run once it commits */
	dsm_handle	shared;			/* wait => true: a WaitShared segment */
} WorkerArgs;

/* Stages a waited-for worker reports. */
#define WAIT_STAGE_STARTING 0
#define WAIT_STAGE_JOB_RECORDED 1
#define WAIT_STAGE_FINISHED 2

/*
 * Shared with a caller that waits (wait => true): the worker records the
 * job row itself (so it commits on its own) from the parameters here, and
 * reports back; the caller sets cancel when its statement is canceled.
 */
typedef struct WaitShared
{
	uint32		magic;
	pg_atomic_uint32 stage;
	pg_atomic_uint32 cancel;
	int64		job_id;
	char		status[16];		/* final status, set before FINISHED */
	char		error[1024];	/* the error of a failed job */
	int64		skipped;		/* rows skipped for a NULL input or label */
	Size		params_len;
	char		params[FLEXIBLE_ARRAY_MEMBER];	/* NUL-separated job fields */
} WaitShared;

/* Job fields in the order they are packed into WaitShared.params. */
typedef enum JobField
{
	JOB_ADAPTER,
	JOB_BASE_MODEL,
	JOB_METHOD,
	JOB_TASK,
	JOB_DATA,
	JOB_INPUT,
	JOB_LABEL,
	JOB_OPTIONS,
	JOB_OWNER,
	JOB_SEARCH_PATH,			/* the caller's, for names in the data query */
	JOB_NUM_FIELDS
} JobField;

/* Settings (jobs.c) */
extern int	peft_max_jobs;
extern int	peft_train_threads;
extern int	peft_max_train_memory;

/* The SQL text that reads (input, label) from data, as the caller would. */
extern char *DataQuery(const char *data, const char *input, const char *label,
					   bool regression);

/* Define peft.max_jobs, peft.train_threads, peft.max_train_memory. */
extern void PeftInitJobSettings(void);

#endif
