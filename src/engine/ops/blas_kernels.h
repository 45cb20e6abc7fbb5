/*
 * blas_kernels.h - which of OpenBLAS's CPU kernels to use, decided from the
 * CPU's instruction sets, for the programs that load OpenBLAS (peft.so
 * before it loads the engine; peft-engine before it starts).
 *
 * OpenBLAS picks its kernels from the CPU's family and model numbers.  In
 * virtual machines that report a generic model ("Intel Xeon Processor")
 * it falls back to its Prescott (SSE3) kernels, though the CPU has AVX2
 * or AVX-512: every matrix product then runs about 3x slower (measured on
 * all-MiniLM-L6-v2 embedding, test/bench/RESULTS.md).  The instruction
 * sets tell what the kernels need, so OPENBLAS_CORETYPE is set from them
 * when the user has not set it.  It must be set before OpenBLAS loads: it
 * chooses once, in its library constructor.
 */
#ifndef PEFT_ENGINE_BLAS_KERNELS_H
#define PEFT_ENGINE_BLAS_KERNELS_H

#include <stdlib.h>

/* OpenBLAS's core type for this CPU's instruction sets, or NULL to let OpenBLAS decide. */
static inline const char *
peft_blas_core_type(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		__builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
		return "SKYLAKEX";
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return "HASWELL";
#endif
	return NULL;
}

/* Set OPENBLAS_CORETYPE from the instruction sets unless set; true when this set it. */
static inline int
peft_blas_choose_kernels(void)
{
	const char *core = peft_blas_core_type();

	if (getenv("OPENBLAS_CORETYPE") != NULL || core == NULL)
		return 0;
	return setenv("OPENBLAS_CORETYPE", core, 0) == 0;
}

#endif
