#!/usr/bin/env bash
# test/bench/bitwise.sh - fingerprints of adapters trained from SQL and by
# the command-line runner, for every method, so that a change that must not
# change behaviour (a refactoring) can be shown to leave every adapter's
# weights identical to the bit.
#
#   test/bench/bitwise.sh OUT.tsv              write the fingerprints
#   test/bench/bitwise.sh OUT.tsv BEFORE.tsv   ... and compare with BEFORE
#
# Starts its own temporary cluster (as postgres when root) on port
# $PEFT_BENCH_PORT (54334) with one training thread, generates the tiny test
# model, makes a 400-row learnable table, and for each method trains an
# adapter with peft_train (epochs 2, batch 16, learning rate 0.01, seed 7)
# and the same rows with `peft-engine train` (the same options, one thread);
# writes "method  sql_md5  cli_md5" (MD5 of the adapter_model.safetensors
# bytes).  With BEFORE, prints the methods whose weights changed and exits 1
# if any did.  Runs the installed peft and ./peft-engine (make; sudo make
# install first, or set PEFT_BENCH_INSTALL=1).  PEFT_BITWISE_CLI_ONLY=1
# trains with the runner alone (no server, nothing installed) and compares
# only the CLI column (at 0.2.0 the two columns are equal).
#
# OpenBLAS's kernels change the last bits of every product, so the runs pin
# its SSE3 ones (OPENBLAS_CORETYPE=PRESCOTT, which every x86-64 CPU runs;
# the fingerprints in bitwise-0.2.0.tsv were taken with them) unless
# OPENBLAS_CORETYPE is set.
set -euo pipefail
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-PRESCOTT}
cd "$(dirname "$0")/../.."
OUT=${1:?usage: test/bench/bitwise.sh OUT.tsv [BEFORE.tsv]}
BEFORE=${2:-}
PORT=${PEFT_BENCH_PORT:-54334}
METHODS="lora dora ia3 bitfit adapter prompt prefix lora+bitfit dora+bitfit+adapter"
OPTIONS='{"epochs": 2, "batch_size": 16, "learning_rate": 0.01, "seed": 7}'
if [ "${PEFT_BENCH_INSTALL:-0}" = 1 ]; then
	make -s -j"$(nproc)" all >/dev/null
	if [ "$(id -u)" = 0 ]; then make -s install >/dev/null; else sudo make -s install >/dev/null; fi
fi

CLI_ONLY=${PEFT_BITWISE_CLI_ONLY:-0}
if [ "$CLI_ONLY" = 1 ]; then
	WORK=$(mktemp -d /tmp/peft-bitwise.XXXXXX)
	trap 'rm -rf "$WORK"' EXIT
	make -s -j"$(nproc)" peft-engine >/dev/null
	python3 test/fixtures/make_tiny_model.py "$WORK/tiny" >/dev/null
	# the same 400 rows as the table below, in id order
	python3 - "$WORK/train.tsv" <<'PY'
import sys
a = ['the','movie','was','and','it','service','food','place','we','went']
b = ['good','great','excellent','bad','terrible','awful','table','chair','city','river']
c = ['today','with','our','team','very','really','hotel','room']
with open(sys.argv[1], 'w') as f:
    for i in range(1, 401):
        label = 'positive' if (i * 13) % 10 < 3 else 'negative' if (i * 13) % 10 < 6 else 'neutral'
        f.write(f"{a[(i * 7) % 10]} {b[(i * 13) % 10]} {c[(i * 3) % 8]}\t{label}\n")
PY
else
	. test/bench/cluster.sh
	bench_cluster "$PORT" "peft.train_threads = 1"
	python3 test/fixtures/make_tiny_model.py "$WORK/tiny" >/dev/null
	[ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/tiny"
	psql_q "CREATE EXTENSION peft"
	psql_q "SELECT name FROM peft_register_model('tiny', '$WORK/tiny')" >/dev/null
	psql_q "CREATE TABLE reviews AS
	        SELECT i AS id,
	               (ARRAY['the','movie','was','and','it','service','food','place','we','went'])[1 + (i * 7) % 10] || ' ' ||
	               (ARRAY['good','great','excellent','bad','terrible','awful','table','chair','city','river'])[1 + (i * 13) % 10] || ' ' ||
	               (ARRAY['today','with','our','team','very','really','hotel','room'])[1 + (i * 3) % 8] AS body,
	               CASE WHEN (i * 13) % 10 < 3 THEN 'positive' WHEN (i * 13) % 10 < 6 THEN 'negative' ELSE 'neutral' END AS label
	        FROM generate_series(1, 400) i"
	psql_q "SELECT body || E'\t' || label FROM reviews ORDER BY id" >"$WORK/train.tsv"
fi

: >"$OUT"
for m in $METHODS; do
	sql=-
	if [ "$CLI_ONLY" != 1 ]; then
		psql_q "SELECT peft_train('a', 'tiny', 'reviews', 'body', 'label', method => '$m',
		        options => '$OPTIONS', wait => true)" >/dev/null
		sql=$(psql_q "SELECT md5(peft_export('a'))")
	fi
	./peft-engine train --model "$WORK/tiny" --data "$WORK/train.tsv" --out "$WORK/cli-$m" \
		--method "$m" --epochs 2 --batch-size 16 --lr 0.01 --seed 7 --threads 1 >/dev/null 2>&1
	cli=$(md5sum "$WORK/cli-$m/adapter_model.safetensors" | cut -d' ' -f1)
	printf '%s\t%s\t%s\n' "$m" "$sql" "$cli" | tee -a "$OUT"
done
if [ -n "$BEFORE" ]; then
	if [ "$CLI_ONLY" = 1 ]; then
		cmp=(cut -f1,3)
	else
		cmp=(cat)
	fi
	if diff <("${cmp[@]}" "$BEFORE" | sort) <("${cmp[@]}" "$OUT" | sort); then
		echo "every adapter is identical to the bit ($(wc -l <"$OUT") methods, $([ "$CLI_ONLY" = 1 ] && echo "CLI" || echo "SQL and CLI"))"
	else
		echo "adapters changed (< before, > now)"
		exit 1
	fi
fi
