/*
 * engine_api.c - the function table peft.so calls the engine through.
 */
#include "engine_api.h"
#include "threadpool.h"

#include <cblas.h>
#include <pthread.h>
#include <signal.h>

#ifdef PEFT_WITH_CUDA
#include "cuda_backend.h"
#endif

#define PEFT_ENGINE_VERSION "0.1.0"

/* OpenBLAS's own setter; declared here as older cblas.h lack it. */
extern void openblas_set_num_threads(int num_threads);

/* Engine version string. */
static const char *
engine_version(void)
{
	return PEFT_ENGINE_VERSION;
}

/* Backends compiled into this library. */
static const char *
engine_backends(void)
{
#ifdef PEFT_WITH_CUDA
	return "cpu,cuda";
#else
	return "cpu";
#endif
}

/* Size OpenBLAS and our own pool to nthreads. */
static PeftCode
engine_init(int nthreads, PeftError *err)
{
	sigset_t	all;
	sigset_t	saved;
	PeftCode	code;

	if (nthreads < 1 || nthreads > 1024)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "thread count %d is out of range 1..1024", nthreads);

	/* Growing either pool starts threads: they must inherit a full mask. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	openblas_set_num_threads(nthreads);
	code = peft_threads_init(nthreads, err);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return code;
}

/*
 * Number of visible CUDA devices (0 when built without CUDA).  The first
 * CUDA call starts driver threads, so signals are blocked around it: those
 * threads inherit the mask and PostgreSQL's signals stay on the main thread.
 */
static int
engine_cuda_device_count(void)
{
#ifdef PEFT_WITH_CUDA
	sigset_t	all;
	sigset_t	saved;
	int			count;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	count = peft_cuda_device_count();
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return count;
#else
	return 0;
#endif
}

static const PeftEngineApi engine_api = {
	.abi_version = PEFT_ENGINE_ABI_VERSION,
	.version = engine_version,
	.backends = engine_backends,
	.init = engine_init,
	.cuda_device_count = engine_cuda_device_count,
};

/* The exported entry point. */
const PeftEngineApi *
peft_engine_api(void)
{
	return &engine_api;
}
