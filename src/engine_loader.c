/*
 * engine_loader.c - load peft_engine.so on first use in this process.
 *
 * Why a separate library: OpenBLAS starts a thread pool when it is loaded,
 * and CUDA starts threads of its own.  A thread that can receive the
 * postmaster's signals breaks PostgreSQL 15, whose postmaster does real work
 * in signal handlers; backends likewise expect their signals on the main
 * thread.  So peft.so links neither, and the engine is dlopen()ed here with
 * every signal blocked: threads created while loading or initialising
 * inherit the blocked mask, and signals keep reaching the main thread.
 */
#include "postgres.h"

#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "blas_kernels.h"
#include "peft.h"

static const PeftEngineApi *engine = NULL;

/* The SQLSTATE that fits an engine failure code. */
int
PeftEngineErrcode(PeftCode code)
{
	switch (code)
	{
		case PEFT_ERR_IO:
			return ERRCODE_IO_ERROR;
		case PEFT_ERR_FORMAT:
			return ERRCODE_DATA_CORRUPTED;
		case PEFT_ERR_INVALID:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case PEFT_ERR_NOMEM:
			return ERRCODE_OUT_OF_MEMORY;
		case PEFT_ERR_UNSUPPORTED:
			return ERRCODE_FEATURE_NOT_SUPPORTED;
		case PEFT_ERR_DEVICE:
			return ERRCODE_SYSTEM_ERROR;
		case PEFT_ERR_CANCELED:
			return ERRCODE_QUERY_CANCELED;
		default:
			return ERRCODE_INTERNAL_ERROR;
	}
}

/* Turn an engine failure into an ERROR with a fitting errcode. */
void
PeftRaiseEngineError(const PeftError *err)
{
	ereport(ERROR,
			(errcode(PeftEngineErrcode(err->code)),
			 errmsg("%s", err->message[0] ? err->message : "peft engine error")));
}

/* dlopen the engine with every signal blocked; NULL and *why on failure. */
static const PeftEngineApi *
LoadEngineLibrary(const char *path, const char **why)
{
	sigset_t	all;
	sigset_t	saved;
	void	   *handle;
	PeftEngineApiFn api_fn;
	const PeftEngineApi *api = NULL;
	PeftError	err;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);

	/* OpenBLAS sizes its pool from the environment when it loads. */
	if (getenv("OPENBLAS_NUM_THREADS") == NULL)
	{
		char		n[16];

		snprintf(n, sizeof(n), "%d", peft_threads);
		setenv("OPENBLAS_NUM_THREADS", n, 0);
	}
	/* and its kernels from the CPU's model, which VMs hide (blas_kernels.h) */
	(void) peft_blas_choose_kernels();

	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL)
		*why = dlerror();
	else if ((api_fn = (PeftEngineApiFn) dlsym(handle, PEFT_ENGINE_SYMBOL)) == NULL)
		*why = "the library has no peft_engine_api symbol";
	else if ((api = api_fn())->abi_version != PEFT_ENGINE_ABI_VERSION)
	{
		*why = "the library's interface version does not match peft.so";
		api = NULL;
	}
	else if (api->init(peft_threads, &err) != PEFT_OK)
	{
		*why = err.code == PEFT_OK ? "engine initialisation failed" : pstrdup(err.message);
		api = NULL;
	}

	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return api;
}

/* The engine's function table, loading the library on first use. */
const PeftEngineApi *
PeftEngine(void)
{
	char		path[MAXPGPATH];
	const char *why = NULL;

	if (engine != NULL)
		return engine;

	snprintf(path, sizeof(path), "%s/peft_engine.so", pkglib_path);
	engine = LoadEngineLibrary(path, &why);
	if (engine == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FILE),
				 errmsg("could not load the peft engine library \"%s\": %s", path, why),
				 errhint("Run \"make install\" for peft; the engine is installed beside peft.so.")));
	return engine;
}

PG_FUNCTION_INFO_V1(peft_engine_info);

/* Load the engine here and describe it as jsonb. */
Datum
peft_engine_info(PG_FUNCTION_ARGS)
{
	const PeftEngineApi *api = PeftEngine();
	StringInfoData buf;
	char	   *backends = pstrdup(api->backends());
	char	   *tok;
	char	   *save = NULL;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"version\": \"%s\", \"backends\": [", api->version());
	for (tok = strtok_r(backends, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		appendStringInfo(&buf, "%s\"%s\"", first ? "" : ", ", tok);
		first = false;
	}
	appendStringInfo(&buf, "], \"threads\": %d, \"cuda_devices\": %d}",
					 peft_threads, api->cuda_device_count());
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
