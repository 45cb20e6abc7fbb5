/*
 * serve.c - settings of the serving worker, its registry in shared memory,
 * and starting a worker on first use.
 *
 * Callers must find the one worker of (database, model, device) and wake
 * it, so the workers are listed in the main shared memory, which an
 * extension can only reserve while it is preloaded: peft.serve = on needs
 * shared_preload_libraries = 'peft' (a clear ERROR otherwise).  Loading
 * peft.so defines the settings and, in the postmaster, asks for the
 * registry's memory; it starts nothing (workers start on first use).
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "peft.h"
#include "serve.h"

bool		peft_serve = false;
int			peft_serve_max_wait = 2;
int			peft_serve_max_batch = 32;
int			peft_serve_threads = 0;

/* A slot registered this long ago whose process never claimed it is taken back. */
#define SERVE_START_TIMEOUT_MS 60000

static bool serve_preloaded = false;
static bool defining = false;	/* a value set before peft was loaded is applied now */
static ServeRegistry *registry = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Bytes of the registry and its inboxes. */
static Size
RegistrySize(void)
{
	return add_size(MAXALIGN(sizeof(ServeRegistry)),
					mul_size(mul_size(SERVE_MAX_WORKERS, MaxBackends), sizeof(ServeInboxEntry)));
}

/* Reserve the registry's memory and lock (postmaster, while preloading). */
static void
ServeShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(RegistrySize());
	RequestNamedLWLockTranche("peft serve", 1);
}

/* Create or find the registry (every process of a preloading server). */
static void
ServeShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	registry = ShmemInitStruct("peft serve registry", RegistrySize(), &found);
	if (!found)
	{
		ServeInboxEntry *inboxes = (ServeInboxEntry *) ((char *) registry + MAXALIGN(sizeof(ServeRegistry)));

		memset(registry, 0, RegistrySize());
		registry->lock = &(GetNamedLWLockTranche("peft serve"))->lock;
		for (int i = 0; i < SERVE_MAX_WORKERS; i++)
			registry->slots[i].inbox = inboxes + (Size) i * MaxBackends;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Refuse SET peft.serve = on in a session when the registry does not exist.
 * A value the session set before peft was loaded is let through (refused
 * then, it would only be a WARNING and the calls would quietly compute
 * here): the first call raises ServeRequirePreload's ERROR instead.
 */
static bool
CheckServe(bool *newval, void **extra, GucSource source)
{
	if (*newval && !serve_preloaded && !defining && source >= PGC_S_INTERACTIVE)
	{
		GUC_check_errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE);
		GUC_check_errmsg("peft.serve needs peft in shared_preload_libraries");
		GUC_check_errhint("Add 'peft' to shared_preload_libraries in postgresql.conf and restart the server.");
		return false;
	}
	return true;
}

/* Define the peft.serve* settings and, while preloading, ask for the registry. */
void
PeftInitServe(void)
{
	defining = true;
	DefineCustomBoolVariable("peft.serve",
							 "Compute peft_predict, peft_embed and peft_generate in a shared serving worker instead of the calling connection.",
							 "One background worker per (database, model, device) holds the model and "
							 "batches rows from every connection; needs shared_preload_libraries = 'peft'.",
							 &peft_serve, false, PGC_SUSET, 0, CheckServe, NULL, NULL);
	defining = false;
	DefineCustomIntVariable("peft.serve_max_wait",
							"How long the serving worker waits for more rows before computing a batch.",
							"Counted from the oldest waiting request; 0 computes what has arrived at once.",
							&peft_serve_max_wait, 2, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("peft.serve_max_batch",
							"Rows the serving worker computes at most in one batch, across sessions and adapters.",
							NULL, &peft_serve_max_batch, 32, 1, 4096, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("peft.serve_threads",
							"Threads a serving worker computes with (0: one per CPU core).",
							"Read when the worker starts.  The worker computes every connection's rows, "
							"so by default it uses every core (on a quiet 2-vCPU VM two threads gave "
							"1.5x the throughput of one).",
							&peft_serve_threads, 0, 0, 1024, PGC_SIGHUP, 0, NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	serve_preloaded = true;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ServeShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ServeShmemStartup;
}

/* Whether peft was preloaded (so the registry exists). */
bool
ServePreloaded(void)
{
	return serve_preloaded && registry != NULL;
}

/* The registry (NULL unless preloaded). */
ServeRegistry *
ServeRegistryGet(void)
{
	return registry;
}

/* ERROR (object_not_in_prerequisite_state) when peft.serve is used without preloading. */
void
ServeRequirePreload(void)
{
	if (!ServePreloaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("peft.serve is on, but peft is not in shared_preload_libraries"),
				 errdetail("The serving workers are listed in shared memory that only a preloaded library can reserve."),
				 errhint("Add 'peft' to shared_preload_libraries and restart the server, "
						 "or SET peft.serve = off to compute in this connection.")));
}

/*
 * Whether the worker of slot, as of generation, still holds it.  A worker
 * registered long ago that never started (a failed fork) is given up here,
 * or its callers would wait for it until canceled.
 */
bool
ServeWorkerAlive(int slot, uint64 generation)
{
	ServeSlot  *s = &registry->slots[slot];
	bool		alive;
	bool		stale;

	LWLockAcquire(registry->lock, LW_SHARED);
	alive = s->generation == generation && s->state != SERVE_SLOT_FREE;
	stale = alive && s->state == SERVE_SLOT_STARTING &&
		TimestampDifferenceExceeds(s->registered, GetCurrentTimestamp(), SERVE_START_TIMEOUT_MS);
	LWLockRelease(registry->lock);
	if (stale)
	{
		LWLockAcquire(registry->lock, LW_EXCLUSIVE);
		if (s->generation == generation && s->state == SERVE_SLOT_STARTING)
			ServeFreeSlotLocked(s);
		LWLockRelease(registry->lock);
		alive = false;
	}
	return alive;
}

/* Free a slot that is not running (under the lock), waking whoever waits in its inbox. */
void
ServeFreeSlotLocked(ServeSlot *s)
{
	for (int i = 0; i < s->inbox_len; i++)
		if (s->inbox[i].handle != DSM_HANDLE_INVALID)
			SetLatch(&ProcGlobal->allProcs[s->inbox[i].caller_procno].procLatch);
	s->state = SERVE_SLOT_FREE;
	s->generation++;
	s->pid = 0;
	s->inbox_len = 0;
}

/* Register the worker process of slot (as of generation); ERROR when no background worker slot is free. */
static void
RegisterServeWorker(int slot, uint64 generation)
{
	BackgroundWorker w;
	BackgroundWorkerHandle *handle;
	ServeWorkerArgs args = {SERVE_MAGIC, slot, generation, MyDatabaseId};

	StaticAssertStmt(sizeof(ServeWorkerArgs) <= BGW_EXTRALEN, "ServeWorkerArgs must fit bgw_extra");
	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "peft");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "peft_serve_worker_main");
	snprintf(w.bgw_name, BGW_MAXLEN, "peft serving worker");
	snprintf(w.bgw_type, BGW_MAXLEN, "peft serving");
	w.bgw_notify_pid = 0;
	memcpy(w.bgw_extra, &args, sizeof(args));
	if (!RegisterDynamicBackgroundWorker(&w, &handle))
	{
		LWLockAcquire(registry->lock, LW_EXCLUSIVE);
		if (registry->slots[slot].generation == generation)
			ServeFreeSlotLocked(&registry->slots[slot]);
		LWLockRelease(registry->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a serving worker: no background worker slot is free"),
				 errhint("Raise max_worker_processes, or SET peft.serve = off.")));
	}
}

/*
 * The slot of the worker for (this database, model, device), taking a free
 * slot and starting its process when there is none; *generation is the
 * slot's, to tell later whether that worker still holds it.
 */
int
ServeFindWorker(const char *model, int device, uint64 *generation, bool *started_here)
{
	int			found = -1;
	int			free_slot = -1;
	TimestampTz now = GetCurrentTimestamp();

	*started_here = false;
	LWLockAcquire(registry->lock, LW_EXCLUSIVE);
	for (int i = 0; i < SERVE_MAX_WORKERS; i++)
	{
		ServeSlot  *s = &registry->slots[i];

		/* a process that never claimed its slot (it failed to start) gives it back */
		if (s->state == SERVE_SLOT_STARTING &&
			TimestampDifferenceExceeds(s->registered, now, SERVE_START_TIMEOUT_MS))
			ServeFreeSlotLocked(s);
		if (s->state == SERVE_SLOT_FREE)
		{
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (s->database == MyDatabaseId && s->device == device && strcmp(s->model, model) == 0)
		{
			found = i;
			break;
		}
	}
	if (found < 0 && free_slot >= 0)
	{
		ServeSlot  *s = &registry->slots[free_slot];

		found = free_slot;
		s->state = SERVE_SLOT_STARTING;
		s->generation++;
		s->database = MyDatabaseId;
		strlcpy(s->model, model, sizeof(s->model));
		s->device = device;
		s->pid = 0;
		s->procno = -1;
		s->registered = now;
		s->inbox_len = 0;
		*started_here = true;
	}
	if (found >= 0)
		*generation = registry->slots[found].generation;
	LWLockRelease(registry->lock);
	if (found < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a serving worker for model \"%s\": %d are running already",
						model, SERVE_MAX_WORKERS),
				 errdetail("One serving worker runs per database, model and device."),
				 errhint("SET peft.serve = off, or stop idle workers with pg_terminate_backend.")));
	if (*started_here)
		RegisterServeWorker(found, *generation);
	return found;
}
