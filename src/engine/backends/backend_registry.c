/*
 * backend_registry.c - which backend computes for a device setting: the
 * CPU's, or CUDA's from peft_engine_cuda.so, found and loaded on first use.
 *
 * The backends call only backend.c (their shared error recording), never
 * this file, so the calls between the backend files have no cycle.
 */
#define _GNU_SOURCE				/* dladdr */
#include "backend.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The backend for a device choice (AUTO: CUDA when available, else the CPU). */
PeftCode
backend_for(PeftDevice kind, Backend **out, PeftError *err)
{
	switch (kind)
	{
		case PEFT_DEVICE_CPU:
			*out = backend_cpu();
			return PEFT_OK;
		case PEFT_DEVICE_CUDA:
			return backend_cuda(out, err);
		case PEFT_DEVICE_AUTO:
			if (backend_cuda_available())
				return backend_cuda(out, err);
			*out = backend_cpu();
			return PEFT_OK;
	}
	return peft_fail(err, PEFT_ERR_INVALID, "unknown device %d", (int) kind);
}

#if defined(PEFT_WITH_CUDA) && !defined(PEFT_DOUBLE)
/* Linked in by test programs; absent (NULL) in peft_engine.so. */
extern const CudaBackendApi *peft_cuda_backend_api(void) __attribute__((weak));

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static const CudaBackendApi *cuda_table = NULL;
static char cuda_load_error[256] = "";
static int	idle_release_seconds = 0;	/* passed on when the backend loads */

/*
 * Find the CUDA backend: linked in, or peft_engine_cuda.so from the folder
 * of the library this code is in, loaded with every signal blocked (its
 * libraries may start threads, which must not take PostgreSQL's signals).
 */
static void
cuda_load(void)
{
	Dl_info		info;
	char		path[4096];
	const char *slash;
	void	   *lib;
	const CudaBackendApi *(*fn) (void);
	sigset_t	all;
	sigset_t	saved;

	if (peft_cuda_backend_api)
	{
		cuda_table = peft_cuda_backend_api();
		cuda_table->set_idle_release(idle_release_seconds);
		return;
	}
	if (dladdr((void *) &cuda_load, &info) == 0 || info.dli_fname == NULL ||
		(slash = strrchr(info.dli_fname, '/')) == NULL)
	{
		snprintf(cuda_load_error, sizeof(cuda_load_error), "cannot locate the engine library");
		return;
	}
	snprintf(path, sizeof(path), "%.*s/peft_engine_cuda.so", (int) (slash - info.dli_fname),
			 info.dli_fname);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	if (lib == NULL)
	{
		snprintf(cuda_load_error, sizeof(cuda_load_error), "%s", dlerror());
		return;
	}
	fn = (const CudaBackendApi *(*) (void)) dlsym(lib, PEFT_CUDA_BACKEND_SYMBOL);
	if (fn == NULL || fn()->abi_version != PEFT_CUDA_BACKEND_ABI)
	{
		snprintf(cuda_load_error, sizeof(cuda_load_error),
				 "%.200s is not this engine's CUDA backend", path);
		return;
	}
	cuda_table = fn();
	cuda_table->set_idle_release(idle_release_seconds);
}

/* The CUDA backend's table, loaded on first use; NULL when it cannot be. */
static const CudaBackendApi *
cuda_api(void)
{
	pthread_once(&cuda_once, cuda_load);
	return cuda_table;
}

/*
 * Whether the machine has an NVIDIA device node.  Without one CUDA cannot
 * see a device, so device "auto" settles on the CPU without loading the
 * CUDA library (and its ~90 MiB of cuBLAS) in every connection.
 */
static bool
nvidia_device_node(void)
{
	return access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0 ||
		access("/dev/dxg", F_OK) == 0;	/* WSL2 */
}

/* Whether CUDA can be used here (a device node, the library loads, a device is visible). */
bool
backend_cuda_available(void)
{
	if (peft_cuda_backend_api == NULL && !nvidia_device_node())
		return false;
	return cuda_api() != NULL && cuda_api()->available();
}

/* The process's CUDA backend (an error without the library or a device). */
PeftCode
backend_cuda(Backend **out, PeftError *err)
{
	*out = NULL;
	if (cuda_api() == NULL)
		return peft_fail(err, PEFT_ERR_UNSUPPORTED,
						 "device \"cuda\" is not available: the CUDA backend cannot be loaded (%s)",
						 cuda_load_error);
	return cuda_api()->get(out, err);
}

/* Idle release of the CUDA backend; loads nothing when CUDA was never used. */
void
backend_set_idle_release(int seconds)
{
	idle_release_seconds = seconds;
	if (cuda_table != NULL)
		cuda_table->set_idle_release(seconds);
}

/* Number of visible CUDA devices (0 without the library). */
int
backend_cuda_device_count(void)
{
	return cuda_api() ? cuda_api()->device_count() : 0;
}
#else
/* Builds without CUDA (and double-precision test builds) have no device. */
bool
backend_cuda_available(void)
{
	return false;
}

/* Builds without CUDA: device "cuda" is an error. */
PeftCode
backend_cuda(Backend **out, PeftError *err)
{
	*out = NULL;
	return peft_fail(err, PEFT_ERR_UNSUPPORTED,
					 "device \"cuda\" is not available: this engine was built without CUDA");
}

/* Nothing to release without CUDA. */
void
backend_set_idle_release(int seconds)
{
	(void) seconds;
}

/* No CUDA: no devices. */
int
backend_cuda_device_count(void)
{
	return 0;
}
#endif
