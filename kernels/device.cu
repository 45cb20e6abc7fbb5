/*
 * device.cu - CUDA device discovery and a cuBLAS smoke probe.
 */
#include "cuda_backend.h"
#include "cuda_attention.h"

#include <cstdio>
#include <cublas_v2.h>
#include <cuda_runtime.h>

/* Number of CUDA devices usable by this process (0 on any CUDA error). */
extern "C" int
peft_cuda_device_count(void)
{
	int			count = 0;

	if (cudaGetDeviceCount(&count) != cudaSuccess)
	{
		cudaGetLastError();		/* clear the sticky "no device" error */
		return 0;
	}
	return count;
}

/* Create and destroy a cuBLAS handle to prove the stack works. */
extern "C" int
peft_cuda_probe(char *msg, int msglen)
{
	cublasHandle_t handle;
	cublasStatus_t status;

	if (peft_cuda_device_count() == 0)
	{
		snprintf(msg, msglen, "no CUDA device is visible");
		return -1;
	}
	status = cublasCreate(&handle);
	if (status != CUBLAS_STATUS_SUCCESS)
	{
		snprintf(msg, msglen, "cublasCreate failed with status %d", (int) status);
		return -1;
	}
	cublasDestroy(handle);
	return 0;
}

/*
 * Give the device back: destroy the cuBLAS handle and reset the primary
 * context, freeing every allocation and the context's own memory.  The
 * next CUDA call starts afresh.  The caller has freed or forgotten every
 * device pointer and holds the lock that serialises CUDA use.
 */
extern "C" void
peft_cuda_release_device(void)
{
	peft_cuda_gemm_shutdown();
	cudaDeviceReset();
	cudaGetLastError();
}
