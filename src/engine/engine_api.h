/*
 * engine_api.h - the one symbol peft_engine.so exports to peft.so.
 *
 * peft.so never links the engine: it dlopen()s peft_engine.so on first use
 * (with every signal blocked, so threads started by OpenBLAS or CUDA never
 * receive PostgreSQL's signals), looks up peft_engine_api() and calls
 * through the table it returns.  abi_version guards against a stale
 * library left installed beside a newer peft.so.
 */
#ifndef PEFT_ENGINE_API_H
#define PEFT_ENGINE_API_H

#include "status.h"

#define PEFT_ENGINE_ABI_VERSION 1
#define PEFT_ENGINE_SYMBOL "peft_engine_api"

typedef struct PeftEngineApi
{
	int			abi_version;

	/* Engine version string, e.g. "0.1.0". */
	const char *(*version) (void);

	/* Backends compiled in, comma-separated: "cpu" or "cpu,cuda". */
	const char *(*backends) (void);

	/* Start the engine's thread pool with nthreads (>= 1). */
	PeftCode	(*init) (int nthreads, PeftError *err);

	/* Number of CUDA devices visible, 0 without CUDA or a device. */
	int			(*cuda_device_count) (void);
} PeftEngineApi;

typedef const PeftEngineApi *(*PeftEngineApiFn) (void);

/* The engine's function table (exported from peft_engine.so). */
const PeftEngineApi *peft_engine_api(void);

#endif
