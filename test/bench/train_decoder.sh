#!/usr/bin/env bash
# test/bench/train_decoder.sh - decoder fine-tuning speed of peft's engine
# against PyTorch + Hugging Face PEFT (peer_train_decoder.py), side by side
# on the same rows, GGUF, thread count, batch size and steps: LoRA r 8,
# alpha 16 on q_proj and v_proj of SmolLM2-135M-Instruct Q4_1 (peft trains
# on the quantized base; the peer on the weights dequantized to float32),
# prompt/completion rows in the chat template, labels on the completion.
#
#   test/bench/train_decoder.sh [THREADS] [STEPS] [ROWS.tsv]
#
# THREADS: default 2.  STEPS: timed steps, default 10, after $WARMUP
# (default 1) untimed ones on both sides.  Batch size: $BATCH (default 4).
# ROWS.tsv (header prompt<TAB>completion): default
# `scripts/make_demo_data.py --generation`, or, where that mode is missing,
# the 80 rows of test/fixtures/reference/decoder_train/lora.json.  The GGUF:
# $GGUF, default scripts/fetch_model --decoder.  Tokens are every non-pad
# token of the timed steps (prompt and completion); peak RSS is the
# process's (getrusage).  Python: $PEFT_BENCH_PYTHON, or the virtual
# environment $PEFT_BENCH_VENV (default ${XDG_CACHE_HOME:-~/.cache}/peft/bench-venv),
# made on first use.  $PEFT_BENCH_ENGINE_FLAGS adds flags to peft-engine train.
# PRECISION=bf16 trains ours with precision bf16 (products with the frozen
# weights on AMX); the peer stays FP32, as the issue's goal compares, unless
# PEER_AUTOCAST=1 runs it under torch.autocast(bfloat16) for a like-for-like
# figure.
# Output: a table, and build/bench/train_decoder.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${1:-2}
STEPS=${2:-10}
DATA=${3:-}
BATCH=${BATCH:-4}
WARMUP=${WARMUP:-1}
GGUF=${GGUF:-$(scripts/fetch_model --decoder)}
if [ -n "${PEFT_BENCH_PYTHON:-}" ]; then
	PY=$PEFT_BENCH_PYTHON
else
	VENV=${PEFT_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/peft/bench-venv}
	if [ ! -x "$VENV/bin/python" ]; then
		python3 -m venv "$VENV"
	fi
	PY=$VENV/bin/python
	"$PY" -I -c 'import torch, transformers, peft, gguf, numpy' 2>/dev/null ||
		"$PY" -m pip install -q torch transformers peft gguf numpy
fi
make -s -j"$(nproc)" peft-engine >/dev/null || echo "train_decoder: peft-engine did not build; measuring the peer only" >&2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS=$((BATCH * (STEPS + WARMUP)))
if [ -z "$DATA" ]; then
	DATA=$WORK/rows.tsv
	if python3 scripts/make_demo_data.py --help 2>/dev/null | grep -q -- --generation; then
		python3 scripts/make_demo_data.py "$DATA" --generation --rows "$((ROWS > 200 ? ROWS : 200))" 2>/dev/null
	else
		python3 - test/fixtures/reference/decoder_train/lora.json "$DATA" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1], encoding="utf-8"))["data"]["rows"]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write("prompt\tcompletion\n")
    for r in rows:
        f.write(r["prompt"] + "\t" + r["completion"] + "\n")
PY
	fi
fi
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1

field() { python3 -c "import json,sys; v=json.loads(sys.argv[1] or '{}').get(sys.argv[2]); print('' if v is None else v)" "$1" "$2"; }

# measured COMMAND...: its last output line (JSON) with the process's peak RSS added
measured() {
	python3 - "$@" <<'PY'
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
lines = p.stdout.strip().splitlines()
if p.returncode != 0 or not lines:
    print(json.dumps({"error": "exit status %d" % p.returncode}))
    sys.exit(0)
result = json.loads(lines[-1])
result.setdefault("peak_rss_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(json.dumps(result))
PY
}

# peft-engine's --warmup steps count in --max-steps; no validation rows (the
# peer has none), batches in row order rather than grouped by length (as the peer)
ours=$(measured ./peft-engine train --model "$GGUF" --task generation --data "$DATA" --out "$WORK/adapter" \
	--batch-size "$BATCH" --max-steps "$((STEPS + WARMUP))" --warmup "$WARMUP" --threads "$THREADS" --json \
	--validation-fraction 0 --no-group --lora-dropout 0 --precision "${PRECISION:-fp32}" \
	${PEFT_BENCH_ENGINE_FLAGS:-} 2>"$WORK/ours.err")
peer=$("$PY" test/bench/peer_train_decoder.py "$GGUF" "$DATA" --threads "$THREADS" \
	--batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" ${PEER_AUTOCAST:+--autocast-bf16} \
	--json 2>"$WORK/peer.err" | tail -1) || true
[ -n "$peer" ] || { echo "peer_train_decoder.py failed:" >&2; tail -5 "$WORK/peer.err" >&2; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $THREADS, batch $BATCH, $STEPS steps after $WARMUP untimed"
echo "precision: peft ${PRECISION:-fp32} (device $(field "$ours" device)), peer $([ -n "${PEER_AUTOCAST:-}" ] && echo "autocast bf16" || echo fp32)"
echo "peer: torch $(field "$peer" torch), transformers $(field "$peer" transformers), peft $(field "$peer" peft); data $DATA"
if [ -n "$(field "$ours" error)" ]; then
	echo "peft-engine train failed ($(field "$ours" error)):"
	tail -5 "$WORK/ours.err"
fi
printf '%-28s %12s %12s %8s\n' "measure" "peft" "peer" "ratio"
row() {
	if [ -n "$2" ] && [ -n "$3" ]; then
		printf '%-28s %12.1f %12.1f %7.2fx\n' "$1" "$2" "$3" "$(python3 -c "print($2 / $3)")"
	else
		printf '%-28s %12s %12s %8s\n' "$1" "${2:--}" "${3:--}" "-"
	fi
}
row "train tokens/s" "$(field "$ours" tokens_per_second)" "$(field "$peer" tokens_per_second)"
row "train rows/s" "$(field "$ours" rows_per_second)" "$(field "$peer" rows_per_second)"
row "peak RSS MB (less is better)" "$(field "$ours" peak_rss_mb)" "$(field "$peer" peak_rss_mb)"
mkdir -p build/bench
printf '{"threads": %s, "batch_size": %s, "steps": %s, "warmup": %s, "precision": "%s", "peer_autocast": %s, "peft": %s, "peer": %s}\n' \
	"$THREADS" "$BATCH" "$STEPS" "$WARMUP" "${PRECISION:-fp32}" "$([ -n "${PEER_AUTOCAST:-}" ] && echo true || echo false)" "$ours" "${peer:-null}" >build/bench/train_decoder.json
