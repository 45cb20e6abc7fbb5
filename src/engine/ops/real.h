/*
 * real.h - the engine's floating-point type.
 *
 * Engine math is written once against `real`.  Normal builds use float;
 * the gradient-check tests compile the same sources with -DPEFT_DOUBLE so
 * central finite differences are accurate enough to compare at 1e-4.
 */
#ifndef PEFT_ENGINE_REAL_H
#define PEFT_ENGINE_REAL_H

#include <cblas.h>
#include <math.h>

#ifdef PEFT_DOUBLE
typedef double real;
#define cblas_gemm cblas_dgemm
#define cblas_gemv cblas_dgemv
#define REAL_EPSILON 1e-12
#else
typedef float real;
#define cblas_gemm cblas_sgemm
#define cblas_gemv cblas_sgemv
#define REAL_EPSILON 1e-6f
#endif

#endif
