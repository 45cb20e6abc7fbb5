#!/usr/bin/env bash
# test/bench/gemm_bf16_bench.sh - build test/bench/gemm_bf16_bench.c with
# the engine's flags and run it: cblas_sgemm against gemm_bf16 on SmolLM2's
# training products (see the .c file).
#
#   test/bench/gemm_bf16_bench.sh [reps] [--scalar]
#
# The binary goes to build/bench/ (BUILD_DIR to change it).
set -eu
cd "$(dirname "$0")/../.."
OUT=${BUILD_DIR:-build}/bench
mkdir -p "$OUT"
${CC:-cc} -std=gnu11 -O3 -g -Wall -Wextra -Wno-unused-parameter -pthread \
	-Isrc/engine/ops -Isrc/engine/api $(pkg-config --cflags openblas) \
	-o "$OUT/gemm_bf16_bench" test/bench/gemm_bf16_bench.c \
	src/engine/ops/gemm_bf16.c src/engine/ops/threadpool.c src/engine/api/status.c \
	$(pkg-config --libs openblas) -lm
lscpu | sed -n 's/^Model name: *//p'
grep -o 'amx_bf16\|amx_tile\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '
echo
exec "$OUT/gemm_bf16_bench" "$@"
