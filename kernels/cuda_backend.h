/*
 * cuda_backend.h - C interface of the CUDA backend (the .cu files in kernels/).
 * Nothing here initialises CUDA until a function is called, and every
 * function reports failure through a return value, never exit().
 */
#ifndef PEFT_CUDA_BACKEND_H
#define PEFT_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C"
{
#endif

/* Number of CUDA devices usable by this process (0 on any CUDA error). */
int			peft_cuda_device_count(void);

/*
 * Create and destroy a cuBLAS handle on the current device to prove the
 * runtime and cuBLAS work; returns 0 on success, else fills msg.
 */
int			peft_cuda_probe(char *msg, int msglen);

/*
 * Destroy the cuBLAS handle and reset the device (every allocation and the
 * context's memory go back); the next CUDA call starts afresh.
 */
void		peft_cuda_release_device(void);

#ifdef __cplusplus
}
#endif

#endif
