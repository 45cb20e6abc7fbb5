/*
 * cuda_ops.cu - device memory helpers and the error reporting shared by
 * the kernel launchers declared in cuda_ops.h.
 */
#include "cuda_ops.h"

#include <cstdarg>
#include <cstdio>
#include <cuda_runtime.h>

/* Format msg (if any) and return -1; for launchers' argument checks. */
extern "C" int
peft_cuda_fail(char *msg, int msglen, const char *fmt,...)
{
	va_list		ap;

	if (msg != NULL && msglen > 0)
	{
		va_start(ap, fmt);
		vsnprintf(msg, (size_t) msglen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Return -1 with "what: <error>" unless err is cudaSuccess. */
static int
check(cudaError_t err, const char *what, char *msg, int msglen)
{
	if (err == cudaSuccess)
		return 0;
	return peft_cuda_fail(msg, msglen, "%s: %s", what, cudaGetErrorString(err));
}

/* Return 0 if the last launch succeeded, else -1 with "what: cuda error". */
extern "C" int
peft_cuda_check_launch(const char *what, char *msg, int msglen)
{
	/* cudaGetLastError also clears a non-sticky error for the next caller. */
	return check(cudaGetLastError(), what, msg, msglen);
}

/* *ptr = cudaMalloc(bytes) (bytes == 0 gives NULL). */
extern "C" int
peft_cuda_alloc(void **ptr, size_t bytes, char *msg, int msglen)
{
	if (ptr == NULL)
		return peft_cuda_fail(msg, msglen, "peft_cuda_alloc: ptr is NULL");
	*ptr = NULL;
	if (bytes == 0)
		return 0;
	if (check(cudaMalloc(ptr, bytes), "cudaMalloc", msg, msglen) != 0)
	{
		/*
		 * A failed cudaMalloc also leaves its error as the thread's last
		 * error, which the next launch check would report as its own
		 * failure (seen on an H100: the kernel after an out-of-memory
		 * reservation "failed" with "out of memory").  Clear it here.
		 */
		(void) cudaGetLastError();
		*ptr = NULL;
		return -1;
	}
	return 0;
}

/* cudaFree(ptr); NULL is a no-op and errors are ignored (for cleanup paths). */
extern "C" void
peft_cuda_free(void *ptr)
{
	if (ptr != NULL)
		cudaFree(ptr);
}

/* Copy bytes from host src to device dst (synchronous). */
extern "C" int
peft_cuda_upload(void *dst, const void *src, size_t bytes, char *msg, int msglen)
{
	if (bytes == 0)
		return 0;
	return check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice),
				 "cudaMemcpy host to device", msg, msglen);
}

/* Copy bytes from device src to host dst (synchronous). */
extern "C" int
peft_cuda_download(void *dst, const void *src, size_t bytes, char *msg, int msglen)
{
	if (bytes == 0)
		return 0;
	return check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost),
				 "cudaMemcpy device to host", msg, msglen);
}

/* Set bytes of device ptr to the byte value (0xFF poisons floats with NaN). */
extern "C" int
peft_cuda_memset(void *ptr, int value, size_t bytes, char *msg, int msglen)
{
	if (bytes == 0)
		return 0;
	return check(cudaMemset(ptr, value, bytes), "cudaMemset", msg, msglen);
}

/* Wait for stream (NULL: the default stream) and report any kernel error. */
extern "C" int
peft_cuda_synchronize(void *stream, char *msg, int msglen)
{
	return check(cudaStreamSynchronize((cudaStream_t) stream),
				 "cudaStreamSynchronize", msg, msglen);
}

/* dst = src, device to device (asynchronous on the default stream). */
extern "C" int
peft_cuda_copy(void *dst, const void *src, size_t bytes, char *msg, int msglen)
{
	if (bytes == 0 || dst == src)
		return 0;
	return check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0),
				 "cudaMemcpy device to device", msg, msglen);
}
