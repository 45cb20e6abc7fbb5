#!/usr/bin/env bash
# test/bench/run_cpu.sh - CPU benchmark of peft's engine against its peers,
# side by side in one run on this machine with the same thread count:
#   training: LoRA r=8 on query and value of all-MiniLM-L6-v2, batch 32,
#             max_length 128, sentences of 5 to 60 words, vs PyTorch + PEFT
#   embedding: the same sentences, batch 32, vs sentence-transformers
# Prints a table with the ratios; record it in test/bench/RESULTS.md.
#
#   test/bench/run_cpu.sh [THREADS] [TRAIN_STEPS]
#
# The peers run from a virtual environment outside the repository
# ($PEFT_BENCH_VENV, default ~/.cache/peft/bench-venv), created on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${1:-2}
STEPS=${2:-30}
MODEL=$(scripts/fetch_model)
VENV=${PEFT_BENCH_VENV:-$HOME/.cache/peft/bench-venv}
if [ ! -x "$VENV/bin/python" ]; then
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install --quiet torch transformers peft sentence-transformers
fi
make -s peft-engine >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 test/bench/make_bench_data.py "$WORK/data.tsv" 2000
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

ours_train=$(./peft-engine train --model "$MODEL" --data "$WORK/data.tsv" --threads "$THREADS" \
	--batch-size 32 --max-length 128 --max-steps "$STEPS" --validation-fraction 0 --no-group --json 2>/dev/null)
peer_train=$("$VENV/bin/python" test/bench/peer_train.py "$MODEL" "$WORK/data.tsv" \
	--steps "$STEPS" --batch-size 32 --threads "$THREADS" 2>/dev/null | tail -1)
ours_embed=$(./peft-engine embed --model "$MODEL" --data "$WORK/data.tsv" --threads "$THREADS" \
	--batch-size 32 --max-length 128 --json 2>/dev/null)
peer_embed=$("$VENV/bin/python" test/bench/peer_embed.py "$MODEL" "$WORK/data.tsv" \
	--batch-size 32 --threads "$THREADS" 2>/dev/null | tail -1)

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $THREADS"
echo "peers: $("$VENV/bin/python" -I -c 'import torch, transformers, peft, sentence_transformers as s; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, sentence-transformers {s.__version__}")')"
printf '%-34s %12s %12s %8s\n' "measure" "peft" "peer" "ratio"
row() {
	printf '%-34s %12.1f %12.1f %7.2fx\n' "$1" "$2" "$3" "$(python3 -c "print($2 / $3)")"
}
row "train sentences/s (vs PEFT)" "$(field "$ours_train" rows_per_second)" "$(field "$peer_train" rows_per_second)"
row "train tokens/s (vs PEFT)" "$(field "$ours_train" tokens_per_second)" "$(field "$peer_train" tokens_per_second)"
row "embed sentences/s (vs s-t)" "$(field "$ours_embed" rows_per_second)" "$(field "$peer_embed" rows_per_second)"
