#!/usr/bin/env bash
# test/bench/quant_rows_bench.sh - build test/bench/quant_rows_bench.c with
# the engine's sources and run it: quant_matmul's float tiles against the
# grouped int16 kernels for N rows of x (decoding steps of many sequences).
#
#   test/bench/quant_rows_bench.sh [threads]
#
# The binary goes to build/bench/ (BUILD_DIR to change it).
set -eu
cd "$(dirname "$0")/../.."
OUT=${BUILD_DIR:-build}/bench
mkdir -p "$OUT"
${CC:-cc} -std=gnu11 -O3 -g -Wall -Wno-unused-parameter -pthread \
	-Isrc/engine/ops -Isrc/engine/api -Isrc/engine/formats $(pkg-config --cflags openblas) \
	-o "$OUT/quant_rows_bench" test/bench/quant_rows_bench.c \
	src/engine/ops/quant.c src/engine/ops/quant_kernels_x86.c src/engine/ops/matmul.c \
	src/engine/ops/threadpool.c src/engine/api/status.c src/engine/formats/gguf.c \
	src/engine/formats/file_map.c $(pkg-config --libs openblas) -lm
lscpu | sed -n 's/^Model name: *//p'
exec "$OUT/quant_rows_bench" "$@"
