#!/usr/bin/env bash
# test/bench/mixed_adapters.sh - many adapters over one model, on one server:
#
#   1. ROWS (400) rows through one LoRA adapter, peft_predict(adapter, inputs[])
#   2. the same rows spread over NMIX (100) adapters, peft_predict(adapters[], inputs[])
#      (one shared base pass per batch), and the ratio of rows/s (goal >= 0.8)
#   3. the peer on the same rows and adapters: Hugging Face PEFT's mixed-batch
#      inference (adapter_names per row) against one adapter, one thread
#      (test/bench/peer_mixed.py; $PEFT_BENCH_PYTHON, or a virtual
#      environment at $PEFT_BENCH_VENV made on first use from PyPI)
#   4. a connection cycling through NCYCLE (1000) adapters, one single-row
#      peft_predict each, against the same calls on one adapter (goal <= 1.3x
#      the time), with peft.adapter_cache_size at its default (64MB), and
#      the cache's size afterwards.
#
#   test/bench/mixed_adapters.sh [MODEL_DIR]
#
# MODEL_DIR: the real all-MiniLM-L6-v2 (scripts/fetch_model's folder by
# default).  One adapter is trained for 30 steps; the others are
# peft_combine copies of it scaled by different factors (distinct weights,
# the same shape).  Each timing is the best of PEFT_BENCH_REPEAT (3) runs
# after one warm-up.  Runs the installed peft (make install first).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-$(./scripts/fetch_model --print-dir)}
if [ -n "${PEFT_BENCH_PYTHON:-}" ]; then
	PY=$PEFT_BENCH_PYTHON
else
	VENV=${PEFT_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/peft/bench-venv}
	[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
	PY=$VENV/bin/python
	"$PY" -c 'import torch, transformers, peft, safetensors' 2>/dev/null ||
		"$VENV/bin/pip" install --quiet torch transformers peft safetensors
fi
ROWS=${ROWS:-400}
NMIX=${NMIX:-100}
NCYCLE=${NCYCLE:-1000}
. test/bench/cluster.sh
bench_cluster "${PEFT_BENCH_PORT:-54336}" ""
psql_q "CREATE EXTENSION peft" >/dev/null
psql_q "SELECT name FROM peft_register_model('m', '$MODEL')" >/dev/null
psql_q "CREATE TABLE t AS SELECT i AS id,
        (ARRAY['my printer','the invoice','our shipment','the password reset','a refund'])[1 + i % 5] ||
        (ARRAY[' is broken again',' was charged twice',' never arrived',' does not work',' is late'])[1 + (i / 5) % 5] ||
        ' since order ' || i || ', please help' AS body,
        (ARRAY['technical','billing','shipping','account','returns'])[1 + i % 5] AS label
        FROM generate_series(1, 2000) i" >/dev/null
psql_q "SELECT peft_train('a1', 'm', 't', 'body', 'label', options => '{\"max_steps\": 30}', wait => true)" >/dev/null
psql_q "SELECT count(peft_combine('a' || i, ARRAY['a1'], ARRAY[0.5 + i / $NCYCLE.0])) FROM generate_series(2, $NCYCLE) i" >/dev/null

# Best wall time of a psql script (file $1) over PEFT_BENCH_REPEAT runs after a warm-up, in one connection each.
time_script() {
	local best=
	for k in $(seq 0 "${PEFT_BENCH_REPEAT:-3}"); do
		local s e
		s=$(date +%s.%N)
		as_pg psql -h "$WORK" -p "$BENCH_PORT" -U postgres -X -q -v ON_ERROR_STOP=1 -f "$1" >/dev/null
		e=$(date +%s.%N)
		[ "$k" = 0 ] && continue
		best=$(python3 -c "b='$best'; d=$e-$s; print(d if not b or d < float(b) else b)")
	done
	echo "$best"
}
# The warm-up and the timed runs of one query in one connection: $2 runs of it.
repeat_query() {
	local file=$WORK/$1.sql
	: >"$file"
	for _ in $(seq "$3"); do echo "$2;" >>"$file"; done
	chmod 644 "$file"
	echo "$file"
}
INPUTS="(SELECT array_agg(body ORDER BY id) FROM t WHERE id <= $ROWS)"
ONE=$(repeat_query one "SELECT count(*) FROM peft_predict('a1', $INPUTS)" 5)
MIX=$(repeat_query mix "SELECT count(*) FROM peft_predict((SELECT array_agg('a' || (1 + id % $NMIX) ORDER BY id) FROM t WHERE id <= $ROWS), $INPUTS)" 5)
one=$(time_script "$ONE")
mix=$(time_script "$MIX")

# The peer: the same rows and adapters in Hugging Face PEFT (exported from here).
mkdir -p "$WORK/peer"
psql_q "SELECT n, encode(peft_export(n), 'hex'), encode(convert_to(peft_export_config(n)::text, 'UTF8'), 'hex')
        FROM (SELECT 'a' || i AS n FROM generate_series(1, $NMIX) i) s" |
	python3 -c '
import sys
for line in sys.stdin:
    name, weights, config = line.strip().split("|")
    open(sys.argv[1] + "/" + name + ".safetensors", "wb").write(bytes.fromhex(weights))
    open(sys.argv[1] + "/" + name + ".json", "wb").write(bytes.fromhex(config))
' "$WORK/peer"
psql_q "SELECT 'a' || (1 + id % $NMIX) || E'\t' || body FROM t WHERE id <= $ROWS ORDER BY id" >"$WORK/peer/rows.tsv"
peer=$(HF_HUB_OFFLINE=1 "$PY" test/bench/peer_mixed.py "$MODEL" "$WORK/peer" "$WORK/peer/rows.tsv" 2>/dev/null | tail -1)

# Cycling: NCYCLE single-row calls, adapter a1..aN in turn, against a1 every time.
CYC=$WORK/cycle.sql
SAME=$WORK/same.sql
: >"$CYC"
: >"$SAME"
for i in $(seq "$NCYCLE"); do
	echo "SELECT label FROM peft_predict('a$i', 'my printer is broken again since order $i, please help');" >>"$CYC"
	echo "SELECT label FROM peft_predict('a1', 'my printer is broken again since order $i, please help');" >>"$SAME"
done
echo "SELECT count(*), sum(bytes) FROM peft_adapter_cache();" >>"$CYC"
chmod 644 "$CYC" "$SAME"
cycle=$(time_script "$CYC")
same=$(time_script "$SAME")
cache=$(as_pg psql -h "$WORK" -p "$BENCH_PORT" -U postgres -X -qAt -f "$CYC" | tail -1)
python3 - "$ROWS" "$NMIX" "$NCYCLE" "$one" "$mix" "$cycle" "$same" "$cache" "$peer" <<'PY'
import json, sys
rows, nmix, ncycle = map(int, sys.argv[1:4])
one, mix, cycle, same = map(float, sys.argv[4:8])
count, size = sys.argv[8].split('|')
peer = json.loads(sys.argv[9])
# one and mix ran the query 5 times per connection
print(f"{rows} rows, one adapter:       {5 * rows / one:8.1f} rows/s")
print(f"{rows} rows, {nmix} adapters mixed: {5 * rows / mix:8.1f} rows/s   ratio {one / mix:.3f} (goal >= 0.8)")
print(f"peer (PEFT, 1 thread): one adapter {peer['one_rows_per_s']:.1f} rows/s, {peer['adapters']} adapters mixed"
      f" {peer['mixed_rows_per_s']:.1f} rows/s, ratio {peer['mixed_rows_per_s'] / peer['one_rows_per_s']:.3f}")
print(f"ours / peer: one adapter {5 * rows / one / peer['one_rows_per_s']:.2f}x,"
      f" mixed {5 * rows / mix / peer['mixed_rows_per_s']:.2f}x")
print(f"{ncycle} single-row calls cycling {ncycle} adapters: {cycle:.2f} s; on one adapter: {same:.2f} s;"
      f" ratio {cycle / same:.3f} (goal <= 1.3)")
print(f"adapter cache after cycling: {count} adapters, {int(size) / 2**20:.1f} MB (peft.adapter_cache_size 64MB)")
PY
