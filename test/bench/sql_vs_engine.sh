#!/usr/bin/env bash
# test/bench/sql_vs_engine.sh - in-database training and inference against the
# standalone engine (peft-engine), on the real all-MiniLM-L6-v2:
#   1. peft_train(..., wait => true) on a ROWS-row ticket table (default 5,000)
#      and peft-engine train on the same rows and options: validation
#      accuracy, and in-database throughput as a share of the engine's;
#   2. peft_predict over 1,000 rows against peft-engine predict with the same
#      adapter (exported from peft.adapters): every label must agree;
#   3. peft_embed over 10,000 rows in one query: sentences per second.
# Starts its own server (as postgres when root) on port $PEFT_BENCH_PORT.
#
#   test/bench/sql_vs_engine.sh [ROWS] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-5000}
EPOCHS=${2:-1}
PORT=${PEFT_BENCH_PORT:-54331}
THREADS=${PEFT_BENCH_THREADS:-$(nproc)}
MODEL=$(scripts/fetch_model)
BINDIR=$(pg_config --bindir)
make -s install >/dev/null
make -s peft-engine >/dev/null

WORK=$(mktemp -d /tmp/peft-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
chmod 755 "$WORK"
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"; else env PATH="$BINDIR:$PATH" "$@"; fi
}
cleanup() {
	as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT
as_pg initdb -D "$WORK/data" -A trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_worker_processes = 16
peft.train_threads = $THREADS
peft.threads = $THREADS
EOF
as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres)

python3 scripts/make_demo_data.py "$WORK/tickets.tsv" --rows "$ROWS" 2>/dev/null
python3 scripts/make_demo_data.py "$WORK/embed.tsv" --rows 10000 --seed 7 2>/dev/null
tail -n +2 "$WORK/tickets.tsv" >"$WORK/train.tsv"
OPTIONS="{\"epochs\": $EPOCHS, \"max_length\": 64, \"learning_rate\": 0.001, \"seed\": 42}"

"${PSQL[@]}" <<SQL
CREATE EXTENSION peft;
SELECT count(*) FROM peft_register_model('minilm', '$MODEL');
CREATE TABLE tickets (id bigserial PRIMARY KEY, body text, queue text);
\copy tickets (body, queue) FROM '$WORK/tickets.tsv' WITH (FORMAT text, HEADER true)
CREATE TABLE embed_rows (id bigserial PRIMARY KEY, body text, queue text);
\copy embed_rows (body, queue) FROM '$WORK/embed.tsv' WITH (FORMAT text, HEADER true)
SQL

# 1. training: in the database, then the engine alone, same rows and options
start=$(date +%s.%N)
job=$("${PSQL[@]}" -c "SELECT peft_train('router', 'minilm', 'tickets', 'body', 'queue', options => '$OPTIONS', wait => true)")
sql_wall=$(python3 -c "import time; print(time.time() - $start)")
read -r sql_rate sql_acc sql_train_s <<<"$("${PSQL[@]}" -F ' ' -c "SELECT j.samples_per_second, a.metrics->'final'->>'accuracy', a.metrics->>'train_seconds' FROM peft.jobs j JOIN peft.adapters a ON a.job = j.id WHERE j.id = $job")"

start=$(date +%s.%N)
engine=$(./peft-engine train --model "$MODEL" --data "$WORK/train.tsv" --threads "$THREADS" \
	--epochs "$EPOCHS" --max-length 64 --lr 0.001 --seed 42 --batch-size 32 --json --out "$WORK/engine-adapter" 2>/dev/null)
engine_wall=$(python3 -c "import time; print(time.time() - $start)")
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
engine_rate=$(field "$engine" rows_per_second)
engine_acc=$(field "$engine" valid_accuracy)

# 2. predictions: the database's adapter, exported, scored by both (peft_predict
#    truncates at the model's max_seq_length, 256 for all-MiniLM-L6-v2)
mkdir -p "$WORK/db-adapter"
"${PSQL[@]}" -c "SELECT encode(weights, 'base64') FROM peft.adapters WHERE name = 'router' AND active" | base64 -d >"$WORK/db-adapter/adapter_model.safetensors"
"${PSQL[@]}" -c "SELECT config FROM peft.adapters WHERE name = 'router' AND active" >"$WORK/db-adapter/adapter_config.json"
"${PSQL[@]}" -c "SELECT json_build_object('task', task, 'labels', labels) FROM peft.adapters WHERE name = 'router' AND active" >"$WORK/db-adapter/peft_head.json"
"${PSQL[@]}" -c "SELECT body FROM tickets ORDER BY id LIMIT 1000" >"$WORK/predict.txt"
"${PSQL[@]}" -c "SELECT p.label FROM (SELECT array_agg(body ORDER BY id) AS b FROM (SELECT * FROM tickets ORDER BY id LIMIT 1000) s) t, LATERAL peft_predict('router', t.b) p ORDER BY p.ord" >"$WORK/sql-labels.txt"
./peft-engine predict --model "$MODEL" --adapter "$WORK/db-adapter" --data "$WORK/predict.txt" --max-length 256 --threads "$THREADS" | cut -f1 >"$WORK/engine-labels.txt"
agree=$(paste "$WORK/sql-labels.txt" "$WORK/engine-labels.txt" | awk -F'\t' '$1 == $2' | wc -l)
total=$(wc -l <"$WORK/sql-labels.txt")

# 3. embeddings: 10,000 rows in one query
start=$(date +%s.%N)
"${PSQL[@]}" -c "SELECT count(peft_embed('minilm', body)) FROM embed_rows" >/dev/null
embed_s=$(python3 -c "import time; print(time.time() - $start)")

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; threads $THREADS; rows $ROWS; epochs $EPOCHS"
printf 'validation accuracy: database %.4f, engine %.4f\n' "$sql_acc" "$engine_acc"
printf 'training rows/s (training loop): database %.1f, engine %.1f, ratio %.3f\n' "$sql_rate" "$engine_rate" \
	"$(python3 -c "print($sql_rate / $engine_rate)")"
printf 'end to end (call to adapter row / process): database %.1f s, engine %.1f s, ratio %.3f\n' \
	"$sql_wall" "$engine_wall" "$(python3 -c "print($engine_wall / $sql_wall)")"
echo "peft_predict vs peft-engine predict: $agree of $total labels agree"
printf 'peft_embed over 10000 rows in one query: %.1f s, %.1f sentences/s\n' "$embed_s" \
	"$(python3 -c "print(10000 / $embed_s)")"
