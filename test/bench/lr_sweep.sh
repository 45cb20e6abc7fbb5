#!/usr/bin/env bash
# test/bench/lr_sweep.sh - validation accuracy after a fixed number of
# epochs for a grid of learning rates per method and seeds (the evidence
# for the default learning rates), with peft-engine on the server's
# training path.
#
#   test/bench/lr_sweep.sh [ROWS] [EPOCHS] [THREADS]
#
# PEFT_SWEEP_DATA picks the labelled set:
#   demo  (default) ROWS demo tickets (scripts/make_demo_data.py, seed 2026,
#         6 queues, 5% label noise);
#   vader the VADER sentiment lexicon that the vaderSentiment 3.3.2 wheel
#         ships (7,517 words, emoticons and phrases rated by ten people;
#         label: the sign of the mean rating), ROWS ignored.
# 10% held out, max_length 64, batch 32.  PEFT_SWEEP_GRID lists
# method:lr,lr,...; PEFT_SWEEP_SEEDS the seeds (42).  Prints
# "data method lr seed accuracy macro_f1 seconds" lines.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-3000}
EPOCHS=${2:-1}
THREADS=${3:-1}
DATA=${PEFT_SWEEP_DATA:-demo}
MODEL=$(scripts/fetch_model)
make -s peft-engine >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
case $DATA in
demo)
	python3 scripts/make_demo_data.py "$WORK/all.tsv" --rows "$ROWS" >/dev/null
	tail -n +2 "$WORK/all.tsv" >"$WORK/data.tsv"
	;;
vader)
	# A pinned wheel from PyPI; its lexicon is "token<TAB>mean<TAB>sd<TAB>ratings".
	python3 -m pip download --no-deps -q -d "$WORK" vaderSentiment==3.3.2
	python3 - "$WORK"/vaderSentiment-3.3.2-*.whl "$WORK/data.tsv" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    lines = z.read("vaderSentiment/vader_lexicon.txt").decode("utf-8").splitlines()
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in lines:
        token, mean = line.split("\t")[:2]
        if float(mean) != 0 and "\\" not in token:
            out.write(f"{token}\t{'positive' if float(mean) > 0 else 'negative'}\n")
EOF
	;;
*)
	echo "PEFT_SWEEP_DATA must be demo or vader" >&2
	exit 2
	;;
esac
GRID=${PEFT_SWEEP_GRID:-"lora:5e-4,1e-3,2e-3,5e-3 dora:5e-4,2e-3 ia3:2e-3,1e-2,3e-2"}
SEEDS=${PEFT_SWEEP_SEEDS:-42}
echo "data method lr seed accuracy macro_f1 seconds ($(wc -l <"$WORK/data.tsv") rows, epochs $EPOCHS)"
for entry in $GRID; do
	method=${entry%%:*}
	for lr in ${entry#*:}; do
		lr=${lr//,/ }
		for one in $lr; do
			for seed in $SEEDS; do
				# a run that fails says so and the sweep goes on
				if ! ./peft-engine train --model "$MODEL" --data "$WORK/data.tsv" --method "$method" \
					--epochs "$EPOCHS" --learning-rate "$one" --max-length 64 --seed "$seed" \
					--threads "$THREADS" --json >"$WORK/run.json" 2>"$WORK/run.err"; then
					echo "$DATA $method $one $seed failed: $(tail -1 "$WORK/run.err")"
					continue
				fi
				python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('$DATA', '$method', '$one', '$seed', round(d['valid_accuracy'],4), round(d['valid_macro_f1'],4), round(d['seconds'],1))" "$WORK/run.json"
			done
		done
	done
done
