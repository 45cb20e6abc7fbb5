#!/usr/bin/env bash
# test/bench/methods.sh - every adapter method on the demo task (support
# tickets, scripts/make_demo_data.py) with all-MiniLM-L6-v2 on the CPU:
# trainable parameters, validation accuracy, training sentences/s, and
# prediction sentences/s with and without merging.  Prints a Markdown
# table for the README.  Same data, seed, epochs and threads for all.
#
#   test/bench/methods.sh [ROWS=3000] [EPOCHS=1] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-3000}
EPOCHS=${2:-1}
THREADS=${3:-2}
MODEL=$(scripts/fetch_model)
make -s peft-engine >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 scripts/make_demo_data.py --rows "$ROWS" "$WORK/all.tsv" >/dev/null
tail -n +2 "$WORK/all.tsv" >"$WORK/train.tsv"          # drop the header line
head -n 1000 "$WORK/train.tsv" | cut -f1 >"$WORK/predict.txt"

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], 'n/a'))" "$1" "$2"; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $THREADS; $ROWS rows, $EPOCHS epoch(s), 10% held out"
echo
echo "| method | learning rate | trainable parameters | validation accuracy | training sentences/s | prediction sentences/s | merged prediction sentences/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for method in lora dora ia3 bitfit adapter prompt prefix lora+bitfit; do
	# each method at its default learning rate (method_table.c, from lr_sweep.sh)
	train=$(./peft-engine train --model "$MODEL" --data "$WORK/train.tsv" --out "$WORK/$method" \
		--method "$method" --epochs "$EPOCHS" --threads "$THREADS" --json 2>/dev/null)
	lr=$(field "$train" learning_rate)
	plain=$(./peft-engine predict --model "$MODEL" --adapter "$WORK/$method" --data "$WORK/predict.txt" \
		--threads "$THREADS" --json 2>/dev/null)
	merged="n/a"
	case $method in lora|dora|ia3|lora+bitfit)
		merged=$(printf '%.1f' "$(field "$(./peft-engine predict --model "$MODEL" --adapter "$WORK/$method" \
			--data "$WORK/predict.txt" --threads "$THREADS" --merge --json 2>/dev/null)" rows_per_second)") ;;
	esac
	printf '| %s | %s | %s | %.3f | %.1f | %.1f | %s |\n' "$method" "$lr" "$(field "$train" parameters)" \
		"$(field "$train" valid_accuracy)" "$(field "$train" rows_per_second)" \
		"$(field "$plain" rows_per_second)" "$merged"
done
