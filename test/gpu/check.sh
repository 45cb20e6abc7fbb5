#!/usr/bin/env bash
# test/gpu/check.sh - the GPU check: build (or use a build carried from a
# development machine), run every GPU parity test, then the GPU benchmark
# (test/bench/run_gpu.sh), then the many-adapter benchmark
# (test/gpu/bench_gpu_many_adapters.c: mixed-batch rows/s over 100 LoRA
# adapters, gathered LoRA and per-segment hooks, against one adapter), and
# print a short table last: the parity tests' rows, then the benchmarks'.
# Needs no PostgreSQL.
#
#   test/gpu/check.sh            build with nvcc here if the libraries are
#                                present, else run the carried build
#   test/gpu/check.sh --bundle   (on a development machine) build the GPU
#                                tests and peft-engine with CUDA and gather
#                                what a GPU machine needs under build/:
#                                  build/gpu-tests  the parity test binaries
#                                                   and bench_gpu_* (tests.tar.xz:
#                                                   one solid archive is a
#                                                   fifth of their size)
#                                  build/gpu-bin    peft-engine, peft_engine.so, peft_engine_cuda.so
#                                  build/gpu-libs   the shared libraries they
#                                                   need (the big ones, i.e.
#                                                   OpenBLAS, xz-compressed)
#                                  build/gpu-model  the model in float16
#                                                   (test/gpu/pack_model.py)
#                                and fail if those exceed 60 MiB together
#                                (or 64 MiB with the working tree).
#   test/gpu/check.sh --bundle --trim
#                                the same, first moving the reference
#                                fixtures (test/fixtures/reference, 30 MiB
#                                of the tracked tree; no GPU test reads
#                                them) to build/fixtures-aside, which is
#                                ignored and so not copied to the device:
#                                with them the tree and the bundle pass the
#                                device tool's 64 MiB.  Put them back after
#                                the device call with
#   test/gpu/check.sh --untrim  The
#                                binaries lose their debug information
#                                (strip --strip-debug, in place; set
#                                PEFT_BUNDLE_DEBUG=1 to keep it).  Run it
#                                right before the device call.
#
# The GPU machine has nvcc and PyTorch but none of OpenBLAS, cJSON,
# utf8proc or cmocka, no network and no PostgreSQL: carry those four folders
# (the device tool's carry: build/gpu-tests, build/gpu-libs, build/gpu-bin,
# build/gpu-model; all of build/ would be too big) and run this script.
#
# Benchmark: if build/gpu-model exists it is unpacked (unpack_model.py) into
# a temporary float32 folder that peft-engine and the peers then all load;
# else the model folder $PEFT_MODEL_DIR; with neither, or with no CUDA device
# visible, the benchmark is skipped and the last line says why.  The parity
# tests get the same folder as $PEFT_MODEL_DIR (test_gpu_train compares the
# CPU's and the GPU's loss curves on the real model).  Python:
# $PEFT_BENCH_PYTHON, else python3.  $PEFT_BENCH_STEPS (default 200) and
# $PEFT_BENCH_PRECISIONS (default "tf32 fp32"; "bf16 tf32 fp32" adds bf16,
# if the time allows) go to run_gpu.sh.
#
# Time: the whole check keeps within $PEFT_GPU_CHECK_BUDGET seconds (default
# 480): the parity tests get at most 180 s together, the benchmark what is
# left less the many-adapter benchmark's 60 s, at most 285 s; the
# many-adapter benchmark what is left then, at most 60 s.  Logs: build/gpu-logs, or with $OUT set (the device
# tool, which returns at most 8 files) all in one $OUT/logs.tar.gz (bench/ for the
# benchmark's runs).  Exit status: 1 if a parity test failed, else 0 (a
# benchmark that failed shows n/a in its rows and says so above the table).
set -u
cd "$(dirname "$0")/../.." || exit 1
export PEFT_CUDA=1
CARRY="build/gpu-tests build/gpu-libs build/gpu-bin build/gpu-model"
CARRY_LIMIT=$((60 * 1024 * 1024))

bundle() {
	local py=${PEFT_BENCH_PYTHON:-/work/venv-ref/bin/python} bin lib total tree
	[ -x "$py" ] || py=python3
	make -s -j"$(nproc)" PEFT_CUDA=1 gpu-tests peft_engine.so peft_engine_cuda.so peft-engine >/dev/null ||
		{ echo "bundle: the CUDA build failed"; exit 1; }
	rm -rf build/gpu-libs build/gpu-bin build/gpu-tests
	mkdir -p build/gpu-libs build/gpu-bin build/gpu-tests
	# peft-engine finds peft_engine.so beside itself (rpath $ORIGIN).
	cp peft-engine peft_engine.so peft_engine_cuda.so build/gpu-bin/
	for bin in build/gpu/test_gpu_* build/gpu-bench/bench_gpu_* build/gpu-bin/peft_engine.so build/gpu-bin/peft_engine_cuda.so build/gpu-bin/peft-engine; do
		ldd "$bin" | awk '/=> \// {print $3}' |
			grep -E 'openblas|gfortran|quadmath|cjson|utf8proc|pcre2|cmocka' |
			while read -r lib; do cp -L "$lib" build/gpu-libs/; done
	done
	# OpenBLAS alone is about 35 MiB: the big libraries travel compressed.
	for lib in build/gpu-libs/*; do
		[ "$(stat -c %s "$lib")" -gt 1048576 ] || continue
		xz -6 -T0 -f "$lib" 2>/dev/null ||
			"$py" -c 'import lzma, os, shutil, sys
with open(sys.argv[1], "rb") as s, lzma.open(sys.argv[1] + ".xz", "wb", preset=6) as d:
    shutil.copyfileobj(s, d)
os.remove(sys.argv[1])' "$lib" || { echo "bundle: cannot compress $lib"; exit 1; }
	done
	# Debug information is half of each binary (PEFT_BUNDLE_DEBUG=1 keeps it).
	if [ -z "${PEFT_BUNDLE_DEBUG:-}" ]; then
		strip --strip-debug build/gpu/test_gpu_* build/gpu-bench/bench_gpu_* build/gpu-bin/peft-engine build/gpu-bin/peft_engine.so build/gpu-bin/peft_engine_cuda.so
	fi
	# The test binaries share most of their code: one solid archive.
	tar -cJf build/gpu-tests/tests.tar.xz -C build/gpu $(cd build/gpu && ls test_gpu_*) \
		-C ../gpu-bench $(cd build/gpu-bench && ls bench_gpu_*) ||
		{ echo "bundle: cannot archive the test binaries"; exit 1; }
	ls -l build/gpu-tests build/gpu-libs build/gpu-bin
	"$py" test/gpu/pack_model.py "${PEFT_MODEL_DIR:-$(scripts/fetch_model)}" build/gpu-model ||
		{ echo "bundle: packing the model failed"; exit 1; }
	# shellcheck disable=SC2086 # CARRY is a list of paths
	total=$(find $CARRY -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
	# The working tree travels too (tracked and untracked, not ignored files).
	tree=$(git ls-files -z -co --exclude-standard 2>/dev/null | xargs -0 -r stat -c %s 2>/dev/null |
		awk '{s += $1} END {print s + 0}')
	echo "all of build/: $(du -sh build | cut -f1) (not all of it is carried)"
	awk -v t="$total" -v w="$tree" -v l="$CARRY_LIMIT" 'BEGIN {
		printf "to carry: %.1f MiB (limit %d MiB) + the working tree %.1f MiB = %.1f MiB (the device tool takes 64)\n",
			t / 1048576, l / 1048576, w / 1048576, (t + w) / 1048576 }'
	if [ "$total" -gt "$CARRY_LIMIT" ] || [ $((total + tree)) -gt $((64 * 1024 * 1024)) ]; then
		echo "bundle: too big to carry (with test/fixtures/reference in the tree: --bundle --trim); the biggest files:"
		# shellcheck disable=SC2086
		find $CARRY -type f -printf '%s %p\n' | sort -rn | head -15 |
			awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}'
		exit 1
	fi
	echo "device tool: carry [\"${CARRY// /\", \"}\"], command test/gpu/check.sh"
}

ASIDE=build/fixtures-aside
# Move the reference fixtures out of the working tree (see --trim above).
trim() {
	[ -d test/fixtures/reference ] || { echo "trim: test/fixtures/reference is not there (already aside?)"; return; }
	[ ! -e "$ASIDE" ] || { echo "trim: $ASIDE exists: run --untrim first"; exit 1; }
	mkdir -p build
	mv test/fixtures/reference "$ASIDE"
	echo "trim: test/fixtures/reference moved to $ASIDE; after the device call: test/gpu/check.sh --untrim"
}

if [ "${1:-}" = "--untrim" ]; then
	[ -d "$ASIDE" ] || { echo "untrim: nothing in $ASIDE"; exit 1; }
	[ ! -e test/fixtures/reference ] || { echo "untrim: test/fixtures/reference exists already"; exit 1; }
	mv "$ASIDE" test/fixtures/reference
	echo "untrim: test/fixtures/reference is back"
	exit 0
fi
if [ "${1:-}" = "--bundle" ]; then
	[ "${2:-}" = "--trim" ] && trim
	bundle
	exit 0
fi

BUDGET=${PEFT_GPU_CHECK_BUDGET:-480}
PARITY_MAX=180
BENCH_MAX=285
MANY_MAX=60
PY=${PEFT_BENCH_PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Build here when the host libraries exist; otherwise use the carried build.
if pkg-config --exists openblas libcjson libutf8proc libpcre2-8 2>/dev/null; then
	timeout 600 make -s -j"$(nproc)" PEFT_CUDA=1 gpu-tests >/dev/null || { echo "build failed"; exit 1; }
fi
# The carried libraries; the compressed ones are unpacked into $TMP/lib.
mkdir -p "$TMP/lib"
for xzlib in build/gpu-libs/*.xz; do
	[ -f "$xzlib" ] || continue
	out=$TMP/lib/$(basename "$xzlib" .xz)
	xz -dc "$xzlib" >"$out" 2>/dev/null ||
		"$PY" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as s, open(sys.argv[2], "wb") as d:
    shutil.copyfileobj(s, d)' "$xzlib" "$out" ||
		echo "cannot unpack $xzlib"
done
# cuBLAS and the CUDA runtime: the toolkit's, where the loader's cache lacks them.
export LD_LIBRARY_PATH="$TMP/lib:$PWD/build/gpu-libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The parity tests and bench_gpu_*: the carried archive, else this machine's build.
TESTS=build/gpu
MANY_BIN=build/gpu-bench/bench_gpu_many_adapters
if [ -f build/gpu-tests/tests.tar.xz ]; then
	mkdir -p "$TMP/tests"
	tar -C "$TMP/tests" -xJf build/gpu-tests/tests.tar.xz || echo "cannot unpack build/gpu-tests/tests.tar.xz"
	TESTS=$TMP/tests
	MANY_BIN=$TMP/tests/bench_gpu_many_adapters
fi
OUTDIR=build/gpu-logs
[ -n "${OUT:-}" ] && OUTDIR=$TMP/logs
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 >"$OUTDIR/device.txt"
START=$SECONDS
BENCH_LOGS=$OUTDIR/bench
rm -rf "$BENCH_LOGS" "$OUTDIR/bench.log" "$OUTDIR/unpack.log"

# The model, for test_gpu_train (the CPU and CUDA loss curves, via
# $PEFT_MODEL_DIR) and the benchmark; wanted only where a device is.
bench=""
MODEL=""
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU' &&
	! "$PY" -I -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
	bench="GPU benchmark: skipped: no CUDA device (nvidia-smi lists none, $PY's torch sees none)"
elif [ -f build/gpu-model/pack.json ]; then
	echo "unpacking build/gpu-model"
	if timeout -k 5 120 "$PY" test/gpu/unpack_model.py build/gpu-model "$TMP/model" >"$OUTDIR/unpack.log" 2>&1; then
		MODEL=$TMP/model
	else
		bench="GPU benchmark: skipped: unpacking build/gpu-model failed (see $OUTDIR/unpack.log)"
	fi
elif [ -n "${PEFT_MODEL_DIR:-}" ] && [ -f "$PEFT_MODEL_DIR/config.json" ]; then
	MODEL=$PEFT_MODEL_DIR
else
	bench="GPU benchmark: skipped: no model (neither build/gpu-model, from check.sh --bundle, nor \$PEFT_MODEL_DIR)"
fi
[ -n "$MODEL" ] && export PEFT_MODEL_DIR=$MODEL

status=0
rows=()
PARITY_START=$SECONDS
for bin in "$TESTS"/test_gpu_*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	left=$((PARITY_MAX - (SECONDS - PARITY_START)))
	if [ "$left" -lt 5 ]; then
		rows+=("$(printf '%-28s %s' "$name" "not run: the parity tests' ${PARITY_MAX} s were spent")")
		status=1
		continue
	fi
	timeout -k 5 "$left" "$bin" >"$OUTDIR/$name.log" 2>&1
	rc=$?
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	[ "$rc" != 0 ] && [ "${f:-0}" = 0 ] && f=1
	[ "${f:-0}" != 0 ] && status=1
	note=""
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note=" timed out"; fi
	rows+=("$(printf '%-28s %6s %6s %7s%s' "$name" "${p:-0}" "${f:-0}" "${k:-0}" "$note")")
	grep -E 'rel err|error' "$OUTDIR/$name.log" | head -40
done
echo "parity tests took $((SECONDS - PARITY_START)) s"

# The benchmark.
if [ -z "$bench" ]; then
	t=$((BUDGET - (SECONDS - START) - 10 - MANY_MAX))
	[ "$t" -gt "$BENCH_MAX" ] && t=$BENCH_MAX
	if [ "$t" -lt 60 ]; then
		bench="GPU benchmark: skipped: only ${t} s of the check's ${BUDGET} s left"
	else
		echo "benchmark (up to $t s; log $OUTDIR/bench.log)"
		PEFT_BENCH_LOGS=$BENCH_LOGS PEFT_BENCH_BUDGET=$((t - 20)) PEFT_BENCH_PYTHON=$PY \
			timeout -k 5 "$t" bash test/bench/run_gpu.sh "$MODEL" "${PEFT_BENCH_STEPS:-200}" \
			"${PEFT_BENCH_PRECISIONS:-tf32 fp32}" >"$OUTDIR/bench.log" 2>&1
		rc=$?
		tail -n 25 "$OUTDIR/bench.log" | grep -E '^  [a-z_0-9]+: ' | grep -v ': exit 0' || true
		if [ ! -f "$BENCH_LOGS/plan.json" ]; then
			bench="GPU benchmark: failed before any run (exit $rc: $(tail -n 1 "$OUTDIR/bench.log"))"
		else
			[ "$rc" = 0 ] || bench="GPU benchmark: exit $rc (see $OUTDIR/bench.log); the table holds what finished"
			if [ "$rc" != 0 ] || [ ! -f "$BENCH_LOGS/table.txt" ]; then
				PEFT_BENCH_PYTHON=$PY bash test/bench/run_gpu.sh --table "$BENCH_LOGS" >/dev/null 2>&1
			fi
		fi
	fi
fi

# The many-adapter benchmark: rows in the benchmark table's layout, in many.txt.
many=""
if [ -n "$MODEL" ]; then
	t=$((BUDGET - (SECONDS - START) - 5))
	[ "$t" -gt "$MANY_MAX" ] && t=$MANY_MAX
	if [ ! -x "$MANY_BIN" ]; then
		many="many-adapter benchmark: not built ($MANY_BIN)"
	elif [ "$t" -lt 20 ]; then
		many="many-adapter benchmark: skipped: only ${t} s of the check's ${BUDGET} s left"
	else
		echo "many-adapter benchmark (up to $t s; log $OUTDIR/many.log)"
		PEFT_MODEL_DIR=$MODEL timeout -k 5 "$t" "$MANY_BIN" "${PEFT_BENCH_PRECISIONS:-tf32 fp32}" 2 \
			>"$OUTDIR/many.log" 2>&1
		rc=$?
		grep -v '^#' "$OUTDIR/many.log" | grep 'LoRA rows/s' >"$OUTDIR/many.txt"
		[ "$rc" = 0 ] || many="many-adapter benchmark: exit $rc: $(tail -n 1 "$OUTDIR/many.log")"
	fi
else
	many="many-adapter benchmark: skipped: no device or no model"
fi

echo
if [ -s "$OUTDIR/device.txt" ]; then echo "device: $(cat "$OUTDIR/device.txt")"; else echo "device: none visible"; fi
[ -f "$BENCH_LOGS/summary.txt" ] && cat "$BENCH_LOGS/summary.txt"
[ -f "$BENCH_LOGS/notes.txt" ] && cat "$BENCH_LOGS/notes.txt"
[ -n "$bench" ] && [ -f "$BENCH_LOGS/table.txt" ] && echo "$bench"
printf '%-28s %6s %6s %7s\n' "parity test" passed failed skipped
for r in "${rows[@]}"; do echo "$r"; done
if [ -f "$BENCH_LOGS/table.txt" ] && [ -f "$BENCH_LOGS/plan.json" ]; then
	cat "$BENCH_LOGS/table.txt"
else
	echo "${bench:-GPU benchmark: no table (see $OUTDIR/bench.log)}"
fi
[ -s "$OUTDIR/many.txt" ] && cat "$OUTDIR/many.txt"
[ -n "$many" ] && echo "$many"

# The device tool returns at most 8 files: the logs travel as one archive.
[ -n "${OUT:-}" ] && tar -C "$TMP" -czf "$OUT/logs.tar.gz" logs
exit $status
