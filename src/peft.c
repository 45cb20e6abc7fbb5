/*
 * peft.c - module initialisation and settings of the SQL layer.
 *
 * Loading peft.so (even into the postmaster through
 * shared_preload_libraries) only defines settings: no thread, no BLAS, no
 * GPU.  The engine library is loaded later, by the process that computes.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "peft.h"
#include "worker.h"

PG_MODULE_MAGIC;

#define PEFT_VERSION "0.1.0"

int			peft_threads = 1;
int			peft_device = PEFT_DEVICE_AUTO;

static const struct config_enum_entry device_options[] = {
	{"auto", PEFT_DEVICE_AUTO, false},
	{"cpu", PEFT_DEVICE_CPU, false},
	{"cuda", PEFT_DEVICE_CUDA, false},
	{NULL, 0, false}
};

void		_PG_init(void);

/* Define the settings of the peft.* prefix. */
static void
PeftInitSettings(void)
{
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
}

/* Module load: settings only (see the file comment). */
void
_PG_init(void)
{
	PeftInitSettings();
	PeftInitJobSettings();
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
