#!/usr/bin/env bash
# test/fuzz/run.sh - run every libFuzzer harness built by test/fuzz/build.sh.
#
#   test/fuzz/run.sh [SECONDS]      each harness for SECONDS (default 30)
#
# Each harness runs on a copy of its seed corpus test/fuzz/corpus/<harness>/
# (the committed corpus is never written) in build/fuzz/work/<harness>/,
# with ASan, UBSan and leak detection, a per-harness -max_len, and prints
# one line: result, executions, final coverage (cov:/ft:), corpus size.
# The exit status is non-zero when any harness found something (crash,
# leak, timeout, out-of-memory, sanitizer report, broken invariant); the
# input that triggered it is kept in build/fuzz/work/<harness>/artifacts/.
#
# Environment: FUZZ_JOBS (harnesses run at once; default: the CPU count),
# FUZZ_LOG_DIR (where fuzz-<name>.log goes; default build/fuzz/work),
# FUZZ_ONLY (space-separated harness names, e.g. "fuzz_config"),
# PEFT_TINY_MODEL_DIR (the tiny model; generated once here when unset).
set -u
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-30}
OUT=build/fuzz
WORK=$OUT/work
LOG_DIR=${FUZZ_LOG_DIR:-$WORK}
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
export OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# The largest input each harness is given (its seeds fit).
max_len_for() {
	case $1 in
		fuzz_config) echo 4096 ;;
		fuzz_tokenizer) echo 16384 ;;
		fuzz_safetensors | fuzz_adapter | fuzz_gguf) echo 32768 ;;
		fuzz_bpe) echo 40000 ;;  # a 16-19 KB tokenizer.json or GGUF image comes before the text
		*) echo 8192 ;;
	esac
}

harnesses=()
for src in test/fuzz/fuzz_*.c; do
	name=$(basename "${src%.c}")
	if [ -n "${FUZZ_ONLY:-}" ] && [[ " $FUZZ_ONLY " != *" $name "* ]]; then
		continue
	fi
	if [ ! -x "$OUT/$name" ]; then
		echo "$name: not built (run test/fuzz/build.sh)"
		exit 1
	fi
	harnesses+=("$name")
done
[ ${#harnesses[@]} -gt 0 ] || { echo "fuzz: no harness to run"; exit 1; }
mkdir -p "$WORK" "$LOG_DIR"

# The tiny model, generated once (per run of this script) for the harnesses
# that need one.
if [ ! -f "${PEFT_TINY_MODEL_DIR:-/nonexistent}/model.safetensors" ]; then
	TINY=$PWD/$WORK/tiny-model.$$
	trap 'rm -rf "$TINY"' EXIT
	if ! python3 test/fixtures/make_tiny_model.py "$TINY" >/dev/null; then
		echo "fuzz: could not generate the tiny model"
		exit 1
	fi
	export PEFT_TINY_MODEL_DIR=$TINY
fi

# Run one harness for SECONDS_EACH on a fresh copy of its corpus.
run_one() {
	local name=$1 dir=$WORK/$1
	rm -rf "$dir"
	mkdir -p "$dir/corpus" "$dir/artifacts"
	if [ -d "test/fuzz/corpus/$name" ]; then
		cp test/fuzz/corpus/"$name"/* "$dir/corpus/" 2>/dev/null
	fi
	local dict=()
	[ -f "test/fuzz/$name.dict" ] && dict=(-dict="test/fuzz/$name.dict")
	"$OUT/$name" -max_total_time="$SECONDS_EACH" -max_len="$(max_len_for "$name")" \
		-timeout=30 -rss_limit_mb=2560 -detect_leaks=1 -print_final_stats=1 \
		"${dict[@]}" -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
		>"$LOG_DIR/fuzz-${name#fuzz_}.log" 2>&1
	echo $? >"$dir/rc"
}

# What a harness's log says happened: "ok" or the kind of finding.
finding_in() {
	local log=$1 rc=$2
	if grep -q 'ERROR: LeakSanitizer' "$log"; then echo "leak"
	elif grep -q 'ERROR: AddressSanitizer' "$log"; then echo "asan: $(grep -m1 -o 'AddressSanitizer: [A-Za-z-]*' "$log" | cut -d' ' -f2)"
	elif grep -q 'runtime error:' "$log"; then echo "ubsan: $(grep -m1 -o 'runtime error: .*' "$log" | cut -c16-80)"
	elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then echo "timeout"
	elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then echo "out-of-memory"
	elif grep -q 'fuzz: check failed' "$log"; then echo "check failed: $(grep -m1 -o 'fuzz: check failed.*' "$log" | cut -c20-120)"
	elif grep -q 'ERROR: libFuzzer' "$log"; then echo "$(grep -m1 -o 'ERROR: libFuzzer: .*' "$log" | cut -c19-80)"
	elif [ "$rc" != 0 ]; then echo "exit status $rc"
	elif ! grep -q '^Done [0-9]* runs' "$log"; then echo "did not finish"
	else echo "ok"
	fi
}

start=$(date +%s)
running=0
for name in "${harnesses[@]}"; do
	if [ "$running" -ge "$JOBS" ]; then
		wait -n
		running=$((running - 1))
	fi
	run_one "$name" &
	running=$((running + 1))
done
wait

failed=0
for name in "${harnesses[@]}"; do
	log=$LOG_DIR/fuzz-${name#fuzz_}.log
	rc=$(cat "$WORK/$name/rc" 2>/dev/null || echo 1)
	result=$(finding_in "$log" "$rc")
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
	files=$(find "$WORK/$name/corpus" -type f | wc -l)
	kb=$(($(find "$WORK/$name/corpus" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') / 1024))
	printf '%-17s %-4s %6s s %10s execs  %-22s corpus %5d files %6d KB' \
		"$name:" "$([ "$result" = ok ] && echo ok || echo FAIL)" "${took:-?}" \
		"${execs:-?}" "${cov:-cov: ? ft: ?}" "$files" "$kb"
	if [ "$result" != ok ]; then
		failed=$((failed + 1))
		printf '  %s (log: %s, input: %s)' "$result" "$log" \
			"$(ls "$WORK/$name/artifacts/"* 2>/dev/null | head -1)"
	fi
	printf '\n'
done
echo "fuzz: ${#harnesses[@]} harnesses, $failed with findings, $(($(date +%s) - start)) s"
[ "$failed" = 0 ]
