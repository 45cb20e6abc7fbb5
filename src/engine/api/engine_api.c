/*
 * engine_api.c - the function table peft.so calls the engine through.
 */
#include "engine_api.h"
#include "engine_session.h"
#include "generate.h"
#include "threadpool.h"

#include <cblas.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "adapter_io.h"
#include "backend.h"
#include "method_table.h"
#include "train_config.h"
#include "version.h"

/* OpenBLAS's own setter; declared here as older cblas.h lack it. */
extern void openblas_set_num_threads(int num_threads);

/* Engine version string. */
static const char *
engine_version(void)
{
	return PEFT_VERSION;
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

	if (nthreads < 1 || nthreads > 256)
		return peft_fail(err, PEFT_ERR_INVALID,
						 "thread count %d is out of range 1..256", nthreads);

	/* Growing either pool starts threads: they must inherit a full mask. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	openblas_set_num_threads(nthreads);
	code = peft_threads_init(nthreads, err);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return code;
}

/*
 * Number of visible CUDA devices (0 when built without CUDA or when its
 * library cannot load).  Loads the CUDA backend; it blocks signals around
 * the first CUDA calls, whose driver threads then inherit the full mask.
 */
static int
engine_cuda_device_count(void)
{
	return backend_cuda_device_count();
}

static const PeftEngineApi engine_api = {
	.abi_version = PEFT_ENGINE_ABI_VERSION,
	.version = engine_version,
	.backends = engine_backends,
	.init = engine_init,
	.cuda_device_count = engine_cuda_device_count,
	.configure = session_configure,
	.free_buffer = free,
	.model_open = session_model_open,
	.model_close = session_model_close,
	.adapter_open = session_adapter_open,
	.adapter_close = session_adapter_close,
	.adapter_memory = session_adapter_memory,
	.adapter_inspect = session_adapter_inspect,
	.adapter_merge = session_adapter_merge,
	.adapter_combine = session_adapter_combine,
	.embed = session_embed,
	.predict = session_predict,
	.predict_mixed = session_predict_mixed,
	.embed_mixed = session_embed_mixed,
	.check_targets = session_check_targets,
	.parse_method = adapter_parse_method,
	.method_name = adapter_methods_name,
	.train_config_default = train_config_default,
	.options = train_config_options,
	.option_set = train_config_set,
	.option_parse = train_config_parse,
	.option_applies = train_config_applies,
	.methods = method_table,
	.train_begin = session_train_begin,
	.train_add_row = session_train_add_row,
	.train_hold_out = session_train_hold_out,
	.train_prepare = session_train_prepare,
	.train_step = session_train_step,
	.train_memory = session_train_memory,
	.train_device = session_train_device,
	.train_evaluate = session_train_evaluate,
	.train_export = session_train_export,
	.train_free = session_train_free,
	.train_parameters = session_train_parameters,
	.train_max_length = session_train_max_length,
	.profile_start = session_profile_start,
	.profile_read = session_profile_read,
	.generate_defaults = generate_defaults,
	.generate = session_generate,
	.generate_mixed = session_generate_mixed,
	.stream_create = session_stream_create,
	.stream_add = session_stream_add,
	.stream_cancel = session_stream_cancel,
	.stream_step = session_stream_step,
	.stream_pending = session_stream_pending,
	.stream_free = session_stream_free,
	.generate_seed = generate_seed,
	.tokenize = session_tokenize,
	.logits = session_logits,
	.train_add_pair = session_train_add_pair,
	.adapter_export_gguf = session_adapter_export_gguf,
	.code_name = peft_code_name,
};

/* The exported entry point. */
const PeftEngineApi *
peft_engine_api(void)
{
	return &engine_api;
}
