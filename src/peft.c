/*
 * peft.c - module initialisation and settings of the SQL layer.
 *
 * Loading peft.so (even into the postmaster through
 * shared_preload_libraries) only defines settings: no thread, no BLAS, no
 * GPU.  The engine library is loaded later, by the process that computes.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "inference.h"
#include "peft.h"
#include "serve.h"
#include "version.h"
#include "words.h"
#include "worker.h"

PG_MODULE_MAGIC;

int			peft_threads = 1;
int			peft_device = PEFT_DEVICE_AUTO;
int			peft_precision = PEFT_PRECISION_FP32;
int			peft_device_idle_release = 60;

/* The settings' words come from words.h, which the engine's option table uses too. */
static struct config_enum_entry device_options[lengthof(peft_device_words)];
static struct config_enum_entry precision_options[lengthof(peft_precision_words)];

/* A GUC enum table of a NULL-terminated word list (index = value). */
static void
WordEntries(struct config_enum_entry *entries, const char *const *words)
{
	int			i;

	for (i = 0; words[i] != NULL; i++)
		entries[i] = (struct config_enum_entry) {words[i], i, false};
	entries[i] = (struct config_enum_entry) {NULL, 0, false};
}

void		_PG_init(void);

/* Define the settings of the peft.* prefix. */
static void
PeftInitSettings(void)
{
	WordEntries(device_options, peft_device_words);
	WordEntries(precision_options, peft_precision_words);
	DefineCustomIntVariable("peft.threads",
							"Threads one backend computes with (OpenBLAS and the engine's own loops).",
							"Read when the engine is first loaded in a process; "
							"keep it small so many connections do not oversubscribe the CPUs.",
							&peft_threads,
							1, 1, 1024,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("peft.device",
							 "Where the engine computes: auto, cpu or cuda.",
							 "auto uses CUDA when the build has it and a device is present.",
							 &peft_device,
							 PEFT_DEVICE_AUTO, device_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomEnumVariable("peft.precision",
							 "Arithmetic of matrix products on CUDA: fp32, tf32 or bf16.",
							 "tf32 and bf16 use tensor cores and accumulate in FP32; "
							 "the CPU always computes in FP32.",
							 &peft_precision,
							 PEFT_PRECISION_FP32, precision_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("peft.device_idle_release",
							"Seconds a connection keeps GPU memory after its last prediction.",
							"After this long without a peft_predict or peft_embed call, the "
							"connection frees the model, adapters and buffers it holds on the "
							"GPU and releases the device; 0 keeps them until it exits.",
							&peft_device_idle_release,
							60, 0, 86400,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("peft.adapter_cache_size",
							"Memory a connection keeps parsed adapters in, between calls.",
							"Adapters are kept by name and version in least-recently-used order "
							"up to this size (parameters and the buffers their batches grew); "
							"a call keeps every adapter it uses until it ends.  0 keeps none.",
							&peft_adapter_cache_size,
							64 * 1024, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
}

/* Module load: settings only (see the file comment). */
void
_PG_init(void)
{
	PeftInitSettings();
	PeftInitJobSettings();
	PeftInitServe();
	/*
	 * Reserve the prefix only after every peft.* setting is defined: it
	 * removes the placeholders still undefined at that point, which threw
	 * away peft.max_jobs, peft.train_threads and peft.max_train_memory
	 * from postgresql.conf (with a WARNING in every backend loading peft).
	 */
	MarkGUCPrefixReserved("peft");
}

PG_FUNCTION_INFO_V1(peft_version);

/* Version of the SQL layer; does not load the engine. */
Datum
peft_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(PEFT_VERSION));
}

/* ERROR when a non-STRICT function's argument without a NULL meaning is NULL. */
void
PeftRequireArg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (argno >= PG_NARGS() || PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
}

/*
 * ERROR on a hot standby: catalog rows are written on the primary and
 * reach standbys by replication, which is also how they get adapters.
 */
void
PeftRequirePrimary(const char *function)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s cannot run on a standby server", function),
				 errdetail("This server is in recovery: peft's catalog is read-only here."),
				 errhint("Run %s on the primary; the rows it writes (adapters, jobs, models) reach "
						 "this standby by replication, and peft_predict and peft_embed work here.",
						 function)));
}
