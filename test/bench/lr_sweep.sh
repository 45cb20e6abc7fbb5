#!/usr/bin/env bash
# test/bench/lr_sweep.sh - validation accuracy after a fixed number of
# epochs for a grid of learning rates per method on the demo task (the
# evidence for the default learning rate), with peft-engine on the
# server's training path.
#
#   test/bench/lr_sweep.sh [ROWS] [EPOCHS] [THREADS]
#
# ROWS demo tickets (3000; scripts/make_demo_data.py, seed 2026), 10% held
# out, max_length 64, batch 32, seed 42.  Prints "method lr accuracy
# macro_f1 seconds" lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-3000}
EPOCHS=${2:-1}
THREADS=${3:-1}
MODEL=$(scripts/fetch_model)
make -s peft-engine >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 scripts/make_demo_data.py "$WORK/all.tsv" --rows "$ROWS" >/dev/null
tail -n +2 "$WORK/all.tsv" >"$WORK/data.tsv"
GRID=${PEFT_SWEEP_GRID:-"lora:5e-4,1e-3,2e-3,5e-3 dora:5e-4,2e-3 ia3:2e-3,1e-2,3e-2"}
echo "method lr accuracy macro_f1 seconds (rows $ROWS, epochs $EPOCHS)"
for entry in $GRID; do
	method=${entry%%:*}
	for lr in ${entry#*:}; do
		lr=${lr//,/ }
		for one in $lr; do
			./peft-engine train --model "$MODEL" --data "$WORK/data.tsv" --method "$method" \
				--epochs "$EPOCHS" --learning-rate "$one" --max-length 64 --threads "$THREADS" --json 2>/dev/null |
				python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$method', '$one', round(d['valid_accuracy'],4), round(d['valid_macro_f1'],4), round(d['seconds'],1))"
		done
	done
done
