#!/usr/bin/env bash
# test/gpu/check.sh - the GPU check: build (or use a build carried from a
# development machine), run every GPU parity test, then the GPU benchmark,
# and print a short table last.  Needs no PostgreSQL.
#
#   test/gpu/check.sh            build with nvcc here if the libraries are
#                                present, else run the carried build
#   test/gpu/check.sh --bundle   (on a development machine) build and copy the
#                                shared libraries the tests need into
#                                build/gpu-libs, so a GPU machine with only
#                                the CUDA toolkit can run them
#
# The GPU machine has nvcc and PyTorch but none of OpenBLAS, cJSON,
# utf8proc or cmocka, and cannot fetch them: carry build/ (with gpu-libs).
set -u
cd "$(dirname "$0")/../.."
export PEFT_CUDA=1

bundle() {
	make -s -j"$(nproc)" PEFT_CUDA=1 gpu-tests peft_engine.so >/dev/null || exit 1
	mkdir -p build/gpu-libs
	for bin in build/gpu/test_gpu_* peft_engine.so; do
		ldd "$bin" | awk '/=> \// {print $3}' |
			grep -E 'openblas|gfortran|quadmath|cjson|utf8proc|cmocka' |
			while read -r lib; do cp -L "$lib" build/gpu-libs/; done
	done
	ls build/gpu-libs
}

if [ "${1:-}" = "--bundle" ]; then
	bundle
	exit 0
fi

# Build here when the host libraries exist; otherwise use the carried build.
if pkg-config --exists openblas libcjson libutf8proc 2>/dev/null; then
	make -s -j"$(nproc)" PEFT_CUDA=1 gpu-tests >/dev/null || { echo "build failed"; exit 1; }
fi
export LD_LIBRARY_PATH="$PWD/build/gpu-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUTDIR=${OUT:-build/gpu-logs}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 >"$OUTDIR/device.txt"

status=0
rows=()
for bin in build/gpu/test_gpu_*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	timeout 300 "$bin" >"$OUTDIR/$name.log" 2>&1
	rc=$?
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	k=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$OUTDIR/$name.log" | tail -1)
	[ "$rc" != 0 ] && [ "${f:-0}" = 0 ] && f=1
	[ "${f:-0}" != 0 ] && status=1
	rows+=("$(printf '%-28s %6s %6s %7s' "$name" "${p:-0}" "${f:-0}" "${k:-0}")")
	grep -E 'rel err|error' "$OUTDIR/$name.log" | head -40
done

echo
if [ -s "$OUTDIR/device.txt" ]; then echo "device: $(cat "$OUTDIR/device.txt")"; else echo "device: none visible"; fi
printf '%-28s %6s %6s %7s\n' "parity test" passed failed skipped
for r in "${rows[@]}"; do echo "$r"; done
echo "GPU benchmark: not yet (the engine has no CUDA training path; issue 5)"
exit $status
