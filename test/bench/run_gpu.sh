#!/usr/bin/env bash
# test/bench/run_gpu.sh - GPU benchmark of peft's engine against its peers,
# side by side in one run on one CUDA device, at the same precision:
#   training: LoRA r=8 on query and value of all-MiniLM-L6-v2, batch 64,
#             max_length 128, sentences of 5 to 60 words, random batches
#             (--no-group), vs PyTorch + PEFT in eager mode
#             (test/bench/peer_train.py --device cuda); both sides train 10
#             untimed warm-up steps (peft-engine --warmup 10), then
#             TRAIN_STEPS timed steps, device-synchronised at both ends
#             (peft-engine's --max-steps counts the warm-up steps too, so
#             it is given TRAIN_STEPS + 10: one schedule over both, as the
#             peer's)
#   embedding: the same sentences, batch 64 and batch 256, vs
#             sentence-transformers (peer_embed.py --device cuda, which
#             warms up on 3 batches).  Both timings include tokenising the
#             sentences: peft-engine embed runs without --warmup, so its
#             first batch's one-time costs count against it
#   profile:  peft-engine --profile: achieved TFLOP/s (GEMM + attention
#             flops over device-synchronised seconds) and the GEMM share of
#             the time, for training (--warmup 10) and for embedding at
#             batch 256 (--warmup 3: one-time costs left out)
# for each precision in PRECISIONS (fp32 | tf32 | bf16; see peer_train.py
# for what each means on the PyTorch side).  Prints the machine, the peer
# versions, any notes, and last a table: measure, peft, peer, ratio.
#
#   test/bench/run_gpu.sh MODEL_DIR [TRAIN_STEPS [PRECISIONS]]
#   test/bench/run_gpu.sh --table LOG_DIR     (re-print a run's table)
#
# MODEL_DIR: on the GPU machine, the folder test/gpu/unpack_model.py writes
# from the carried build/gpu-model (test/gpu/check.sh does this), so the
# engine and both peers load the very same (fp16-rounded, float32) weights.
# TRAIN_STEPS defaults to 200; PRECISIONS to "tf32 fp32".
#
# Needs no PostgreSQL, no pkg-config and no network: python3 on the machine
# (or $PEFT_BENCH_PYTHON) with torch, transformers, peft and
# sentence-transformers; peft-engine built with PEFT_CUDA=1 ($PEFT_ENGINE,
# else build/gpu-bin/peft-engine as check.sh --bundle leaves it, else
# ./peft-engine) and its shared libraries findable (check.sh sets
# LD_LIBRARY_PATH for the carried ones).  Where the engine's libraries are
# installed (pkg-config finds them) it is built first instead.
#
# Environment: PEFT_BENCH_EMBED_ROWS (sentences, default 20000),
# PEFT_BENCH_THREADS (CPU threads for both sides, default nproc up to 16),
# PEFT_BENCH_BUDGET (seconds for the whole run, default 270: runs that would
# start later are skipped and show n/a), PEFT_BENCH_RUN_TIMEOUT (seconds per
# run, default 120), PEFT_BENCH_LOGS (default ${OUT:-build/gpu-logs}/bench:
# every run's JSON, stderr and exit code; summary.txt, notes.txt, table.txt).
#
# Expected to take about 3 minutes on an H100 with the defaults (two
# precisions, 16 runs, much of it the peers' Python start-up; an estimate,
# not yet measured).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

# The table, from the JSON files of a run (also used by test/gpu/check.sh
# when the run was cut short).  Writes LOG_DIR/notes.txt and table.txt.
make_table() {
	"${PEFT_BENCH_PYTHON:-python3}" - "$1" <<'PY'
import json, os, sys

logs = sys.argv[1]
with open(os.path.join(logs, "plan.json")) as f:
    plan = json.load(f)
notes = []
cache = {}


def load(name):
    """The last JSON line a run printed, or {} (with a note saying why)."""
    if name in cache:
        return cache[name]
    cache[name] = {}
    try:
        with open(os.path.join(logs, name + ".json"), encoding="utf-8") as f:
            lines = [l for l in f if l.lstrip().startswith("{")]
        if lines:
            cache[name] = json.loads(lines[-1])
            return cache[name]
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(logs, name + ".rc")) as f:
            why = f.read().strip()
    except OSError:
        why = "not run"
    try:
        with open(os.path.join(logs, name + ".err"), errors="replace") as f:
            last = [l.strip() for l in f if l.strip()][-1:]
    except OSError:
        last = []
    notes.append("%s: no result (%s%s)" % (name, why, ": " + last[0][:120] if last else ""))
    return {}


def num(d, key):
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def get(name, precision):
    """A run's result if it ran on cuda at the asked precision, else {} and a note."""
    d = load(name)
    if not d:
        return d
    if d.get("device") != "cuda":
        notes.append("%s: device %r, not cuda: not counted" % (name, d.get("device")))
        return {}
    if d.get("precision") != precision:
        notes.append("%s: precision %r, not %s: not counted" % (name, d.get("precision"), precision))
        return {}
    return d


def fmt(v, kind):
    if v is None:
        return "n/a"
    if kind == "rate":
        return "%.1f" % v
    if kind == "tflops":
        return "%.2f" % v
    return "%.0f%%" % (100 * v)


rows = []


def row(measure, ours, peer, kind):
    ratio = "%.2fx" % (ours / peer) if ours is not None and peer else ("n/a" if kind == "rate" else "-")
    rows.append("%-36s %10s %10s %8s" % (measure, fmt(ours, kind),
                                         fmt(peer, kind) if kind == "rate" else "-", ratio))


def profile(d):
    """(tflops, gemm_share) of a --profile run, derived where only parts came."""
    tf, share = num(d, "tflops"), num(d, "gemm_share")
    total = num(d, "total_seconds") or num(d, "seconds")
    if tf is None and num(d, "flops") is not None and total:
        tf = num(d, "flops") / total / 1e12
    if share is None and num(d, "gemm_seconds") is not None and num(d, "total_seconds"):
        share = num(d, "gemm_seconds") / num(d, "total_seconds")
    return tf, share


for p in plan["precisions"]:
    b = plan["train_batch"]
    ours = get("ours_train_%s" % p, p)
    peer = get("peer_train_%s" % p, p)
    row("train sent/s %s b%d (vs PEFT)" % (p, b), num(ours, "rows_per_second"),
        num(peer, "rows_per_second"), "rate")
    if num(ours, "tokens") and num(ours, "rows") and num(peer, "tokens") and num(peer, "rows"):
        notes.append("train %s: real tokens per sentence: peft %.1f, peer %.1f"
                     % (p, ours["tokens"] / ours["rows"], peer["tokens"] / peer["rows"]))
    for eb in plan["embed_batches"]:
        ours = get("ours_embed_%s_b%d" % (p, eb), p)
        peer = get("peer_embed_%s_b%d" % (p, eb), p)
        row("embed sent/s %s b%d (vs s-t)" % (p, eb), num(ours, "rows_per_second"),
            num(peer, "rows_per_second"), "rate")
    plain = get("ours_train_%s" % p, p)
    prof = get("ours_train_%s_prof" % p, p)
    tf, share = profile(prof)
    row("train TFLOP/s %s (profile)" % p, tf, None, "tflops")
    row("train GEMM share %s (profile)" % p, share, None, "share")
    if num(prof, "rows_per_second") and num(plain, "rows_per_second"):
        notes.append("train %s: --profile run at %.0f%% of the plain run's sentences/s"
                     % (p, 100 * num(prof, "rows_per_second") / num(plain, "rows_per_second")))
    eb = plan["profile_embed_batch"]
    prof = get("ours_embed_%s_b%d_prof" % (p, eb), p)
    tf, share = profile(prof)
    row("embed TFLOP/s %s b%d (profile)" % (p, eb), tf, None, "tflops")
    row("embed GEMM share %s b%d (profile)" % (p, eb), share, None, "share")

with open(os.path.join(logs, "notes.txt"), "w") as f:
    f.writelines("note: %s\n" % n for n in dict.fromkeys(notes))
with open(os.path.join(logs, "table.txt"), "w") as f:
    f.write("%-36s %10s %10s %8s\n" % ("measure", "peft", "peer", "ratio"))
    f.writelines(r + "\n" for r in rows)
PY
}

if [ "${1:-}" = "--table" ]; then
	LOGS=${2:?usage: run_gpu.sh --table LOG_DIR}
	make_table "$LOGS" || exit 1
	cat "$LOGS/summary.txt" "$LOGS/notes.txt" "$LOGS/table.txt" 2>/dev/null
	exit 0
fi

MODEL=${1:?usage: test/bench/run_gpu.sh MODEL_DIR [TRAIN_STEPS [PRECISIONS]]}
STEPS=${2:-200}
PRECISIONS=${3:-tf32 fp32}
ROWS=${PEFT_BENCH_EMBED_ROWS:-20000}
PY=${PEFT_BENCH_PYTHON:-python3}
THREADS=${PEFT_BENCH_THREADS:-$(n=$(nproc); echo $((n > 16 ? 16 : n)))}
BUDGET=${PEFT_BENCH_BUDGET:-270}
RUN_TIMEOUT=${PEFT_BENCH_RUN_TIMEOUT:-120}
LOGS=${PEFT_BENCH_LOGS:-${OUT:-build/gpu-logs}/bench}
TRAIN_BATCH=64
EMBED_BATCHES="64 256"
PROFILE_EMBED_BATCH=256
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

for p in $PRECISIONS; do
	case $p in fp32 | tf32 | bf16) ;; *) echo "run_gpu.sh: unknown precision $p (fp32, tf32, bf16)" >&2; exit 2 ;; esac
done
[ -f "$MODEL/config.json" ] || { echo "run_gpu.sh: $MODEL has no config.json" >&2; exit 2; }
if ! "$PY" -I -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
	echo "GPU benchmark skipped: $PY's torch sees no CUDA device (or has no torch)"
	exit 3
fi

# The engine: built here where its libraries are installed, else the carried one.
if [ -n "${PEFT_ENGINE:-}" ]; then
	ENGINE=$PEFT_ENGINE
elif pkg-config --exists openblas libcjson libutf8proc 2>/dev/null; then
	make -s PEFT_CUDA=1 peft-engine >/dev/null || { echo "run_gpu.sh: building peft-engine failed" >&2; exit 1; }
	ENGINE=./peft-engine
elif [ -x build/gpu-bin/peft-engine ]; then
	ENGINE=build/gpu-bin/peft-engine
else
	ENGINE=./peft-engine
fi

rm -rf "$LOGS"
mkdir -p "$LOGS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" test/bench/make_bench_data.py "$WORK/data.tsv" "$ROWS"
"$PY" -c 'import json, sys; json.dump({"precisions": sys.argv[1].split(), "steps": int(sys.argv[2]),
	"rows": int(sys.argv[3]), "train_batch": int(sys.argv[4]),
	"embed_batches": [int(b) for b in sys.argv[5].split()], "profile_embed_batch": int(sys.argv[6])},
	open(sys.argv[7], "w"))' "$PRECISIONS" "$STEPS" "$ROWS" "$TRAIN_BATCH" "$EMBED_BATCHES" \
	"$PROFILE_EMBED_BATCH" "$LOGS/plan.json"

{
	echo "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1);" \
		"$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; threads $THREADS"
	echo "peers: $("$PY" -I -c 'import torch, transformers, peft, sentence_transformers as s; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, peft {peft.__version__}, sentence-transformers {s.__version__}")' 2>&1 | tail -1)"
	echo "engine: $ENGINE; model: $MODEL"
	echo "workload: train $STEPS steps, batch $TRAIN_BATCH, max_length 128, LoRA r=8 query,value; embed $ROWS sentences, batch ${EMBED_BATCHES// /, }"
} >"$LOGS/summary.txt"
cat "$LOGS/summary.txt"

START=$SECONDS
# run NAME COMMAND...: stdout to NAME.json, stderr to NAME.err, exit code to
# NAME.rc; each run gets RUN_TIMEOUT seconds or what is left of the budget.
run() {
	local name=$1 left t rc
	shift
	left=$((BUDGET - (SECONDS - START)))
	if [ "$left" -lt 15 ]; then
		echo "skipped: out of time (budget ${BUDGET}s)" >"$LOGS/$name.rc"
		echo "  $name: skipped (out of time)"
		return
	fi
	t=$((left < RUN_TIMEOUT ? left : RUN_TIMEOUT))
	local t0=$SECONDS
	timeout -k 5 "$t" "$@" >"$LOGS/$name.json" 2>"$LOGS/$name.err"
	rc=$?
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		echo "timed out after ${t}s" >"$LOGS/$name.rc"
	else
		echo "exit $rc" >"$LOGS/$name.rc"
	fi
	echo "  $name: $(cat "$LOGS/$name.rc"), $((SECONDS - t0)) s"
}

COMMON=(--model "$MODEL" --data "$WORK/data.tsv" --threads "$THREADS" --max-length 128 --device cuda --json)
for p in $PRECISIONS; do
	echo "precision $p:"
	run "ours_train_$p" "$ENGINE" train "${COMMON[@]}" --precision "$p" --batch-size "$TRAIN_BATCH" \
		--warmup 10 --max-steps "$((STEPS + 10))" --validation-fraction 0 --no-group
	run "peer_train_$p" "$PY" test/bench/peer_train.py "$MODEL" "$WORK/data.tsv" --device cuda \
		--precision "$p" --warmup 10 --steps "$STEPS" --batch-size "$TRAIN_BATCH" --threads "$THREADS"
	for b in $EMBED_BATCHES; do
		run "ours_embed_${p}_b$b" "$ENGINE" embed "${COMMON[@]}" --precision "$p" --batch-size "$b"
		run "peer_embed_${p}_b$b" "$PY" test/bench/peer_embed.py "$MODEL" "$WORK/data.tsv" --device cuda \
			--precision "$p" --batch-size "$b" --threads "$THREADS"
	done
	run "ours_train_${p}_prof" "$ENGINE" train "${COMMON[@]}" --precision "$p" --batch-size "$TRAIN_BATCH" \
		--warmup 10 --max-steps "$((STEPS + 10))" --validation-fraction 0 --no-group --profile
	run "ours_embed_${p}_b${PROFILE_EMBED_BATCH}_prof" "$ENGINE" embed "${COMMON[@]}" --precision "$p" \
		--batch-size "$PROFILE_EMBED_BATCH" --warmup 3 --profile
done
echo "runs took $((SECONDS - START)) s; logs in $LOGS"

make_table "$LOGS" || { echo "run_gpu.sh: making the table failed" >&2; exit 1; }
echo
cat "$LOGS/notes.txt" "$LOGS/table.txt"
