#!/usr/bin/env bash
# test/bench/serve_pgbench.sh - peft_predict (or peft_generate) with
# peft.serve = off and on, under pgbench.
#
#   test/bench/serve_pgbench.sh [SECONDS] [CLIENTS...]      (defaults 30, and 16 64)
#   PEFT_BENCH_WORKLOAD=generate test/bench/serve_pgbench.sh 60 16
#
# Starts its own temporary cluster (as postgres when root) on port
# $PEFT_BENCH_PORT (54338), with peft preloaded, from a private copy of the
# PostgreSQL installation holding this tree's peft.so, peft_engine.so and SQL
# files (build them first; nothing is installed).  Registers the real
# all-MiniLM-L6-v2 (scripts/fetch_model), trains one LoRA adapter on 200
# generated tickets (1 epoch, max_length 64) and stores 15 copies of it under
# other names (superuser INSERTs into peft.adapters): 16 adapters that each
# load and cache on their own, computing the same network.  Then for each
# CLIENTS, serve = off and then on (PGOPTIONS=-c peft.serve=...), pgbench
# runs SECONDS seconds of
#     SELECT p.label FROM load_texts t, peft_predict('r' || :a, t.body) p WHERE t.id = :id
# with a random adapter of the 16 and a random short text.  Before each
# serve = on run one call per adapter starts the worker and loads the
# adapters; in serve = off every connection loads what it uses itself (its
# first call is left out of the percentiles, not of tps).
#
# Prints per run: tps, p50/p95/p99 latency (ms, from pgbench's
# per-transaction log), failed transactions, and the mean Pss and
# Private_Dirty of the pgbench backends (/proc/PID/smaps_rollup, read halfway
# through), plus the serving worker's; then the serve on/off tps ratio per
# client count.
#
# PEFT_BENCH_WORKLOAD=generate: the decoder SmolLM2-135M-Instruct Q4_1
# (scripts/fetch_model --decoder) instead, one generation LoRA (3 steps on
# 32 prompt/completion rows) stored under 16 names, and pgbench runs
#     INSERT INTO gen_log SELECT g.tokens FROM prompts p,
#         peft_generate('smol', ARRAY[p.prompt], ARRAY['g' || :a], '{"max_new_tokens": N}') g
#     WHERE p.id = :id
# (N = $PEFT_BENCH_NEW_TOKENS, default 32; greedy): every client one
# prompt at a time, so with serve = on the worker decodes all clients'
# prompts in one continuously batched stream, and with serve = off each
# connection decodes its own.  The figure is generated tokens per second
# (the tokens gen_log collected over the run), besides tps and latencies.
#
# Environment: PEFT_BENCH_PORT, PEFT_BENCH_KEEP=1 (keep the scratch folder),
# PEFT_BENCH_MAX_WAIT (peft.serve_max_wait, default 2ms),
# PEFT_BENCH_MAX_BATCH (peft.serve_max_batch, default 32),
# PEFT_BENCH_SERVE_THREADS (peft.serve_threads, default 0: one per core),
# PEFT_BENCH_ADAPTERS (how many of the 16 the calls pick from, default 16:
# 1 shows what batching rows of one adapter across sessions gives).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DURATION=${1:-30}
shift || true
CLIENT_LIST=${*:-16 64}
PORT=${PEFT_BENCH_PORT:-54338}
NCPU=$(nproc)
MODEL=$(scripts/fetch_model --print-dir 2>/dev/null || echo /var/cache/peft/all-MiniLM-L6-v2)
WORKLOAD=${PEFT_BENCH_WORKLOAD:-predict}
NEW_TOKENS=${PEFT_BENCH_NEW_TOKENS:-32}
case $WORKLOAD in
predict) ;;
generate) DECODER=$(scripts/fetch_model --decoder --print-dir) ;;
*) echo "PEFT_BENCH_WORKLOAD must be predict or generate" >&2; exit 2 ;;
esac
BINDIR=$(pg_config --bindir)
for f in peft.so peft_engine.so peft.control; do
	[ -f "$ROOT/$f" ] || { echo "no $ROOT/$f: run make first" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/peft-serve-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
chmod 755 "$WORK"
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"; else env PATH="$BINDIR:$PATH" "$@"; fi
}
SAMPLER_PID=""
cleanup() {
	[ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
	as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	if [ -n "${PEFT_BENCH_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A private copy of the installation (bin/ copied, lib/ and share/ linked
# entry by entry) with this tree's files copied in: the installed peft and
# every linked file are left alone (nothing is written through a link).
. test/private_pg.sh
private_pg "$WORK/pg"
cp "$ROOT/peft.so" "$ROOT/peft_engine.so" "$PRIV_PKGLIB/"
cp "$ROOT/peft.control" "$ROOT"/sql/peft--*.sql "$PRIV_EXTDIR/"
BINDIR=$PRIV_BINDIR

as_pg initdb -D "$WORK/data" -A trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_connections = 120
max_worker_processes = 16
shared_preload_libraries = 'peft'
peft.threads = 1
peft.device = cpu
peft.train_threads = $NCPU
peft.serve_max_wait = ${PEFT_BENCH_MAX_WAIT:-2ms}
peft.serve_max_batch = ${PEFT_BENCH_MAX_BATCH:-32}
peft.serve_threads = ${PEFT_BENCH_SERVE_THREADS:-0}
EOF
as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
export PGHOST=$WORK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
PSQL=(as_pg psql -X -q -At -v ON_ERROR_STOP=1)

python3 scripts/make_demo_data.py "$WORK/train.tsv" --rows 200 --seed 11 2>/dev/null
python3 scripts/make_demo_data.py "$WORK/texts.tsv" --rows 2000 --seed 12 2>/dev/null
chmod 644 "$WORK"/*.tsv
"${PSQL[@]}" >/dev/null <<SQL
CREATE EXTENSION peft;
SELECT count(*) FROM peft_register_model('minilm', '$MODEL');
CREATE TABLE tickets (id bigserial PRIMARY KEY, body text, queue text);
\copy tickets (body, queue) FROM '$WORK/train.tsv' WITH (FORMAT text, HEADER true)
CREATE TEMP TABLE raw (body text, queue text);
\copy raw FROM '$WORK/texts.tsv' WITH (FORMAT text, HEADER true)
CREATE TABLE load_texts AS
SELECT row_number() OVER ()::int AS id, body
FROM (SELECT body FROM raw WHERE array_length(regexp_split_to_array(body, '\s+'), 1) <= 32 LIMIT 1000) s;
ALTER TABLE load_texts ADD PRIMARY KEY (id);
ANALYZE load_texts;
SELECT peft_train('r0', 'minilm', 'tickets', 'body', 'queue',
	options => '{"epochs": 1, "batch_size": 16, "max_length": 64, "learning_rate": 0.005, "seed": 42}', wait => true);
INSERT INTO peft.adapters (name, version, base_model, method, task, config, labels, weights, metrics, active)
SELECT 'r' || i, version, base_model, method, task, config, labels, weights, metrics, true
FROM peft.adapters, generate_series(1, 15) i WHERE name = 'r0' AND active;
SQL
ntexts=$("${PSQL[@]}" -c "SELECT count(*) FROM load_texts")
words=$("${PSQL[@]}" -c "SELECT round(avg(array_length(regexp_split_to_array(body, '\s+'), 1)), 1) FROM load_texts")

if [ "$WORKLOAD" = generate ]; then
	"${PSQL[@]}" >/dev/null <<SQL
SELECT count(*) FROM peft_register_model('smol', '$DECODER');
CREATE TABLE pairs (id int, prompt text, completion text);
INSERT INTO pairs
SELECT i, format('Mix the words %s and %s into one line.', a, b), format('%s-%s', a, b)
FROM (SELECT i, (ARRAY['red','blue','green','yellow','black','white','purple','orange'])[1 + (i * 7) % 8] AS a,
             (ARRAY['red','blue','green','yellow','black','white','purple','orange'])[1 + (i * 3 + i / 8) % 8] AS b
      FROM generate_series(1, 32) i) s;
SELECT peft_train('g0', 'smol', 'SELECT prompt, completion FROM pairs', input => 'prompt', label => 'completion',
	task => 'generation', options => '{"max_steps": 3, "batch_size": 4, "eval_generate": false, "seed": 42}', wait => true);
INSERT INTO peft.adapters (name, version, base_model, method, task, config, labels, weights, metrics, active)
SELECT 'g' || i, version, base_model, method, task, config, labels, weights, metrics, true
FROM peft.adapters, generate_series(1, 15) i WHERE name = 'g0' AND active;
CREATE TABLE prompts AS
SELECT id, 'Write one sentence about: ' || body AS prompt FROM load_texts WHERE id <= 200;
CREATE TABLE gen_log (tokens int);
SQL
	ntexts=200
	cat >"$WORK/predict.sql" <<EOF
\\set a random(0, $((${PEFT_BENCH_ADAPTERS:-16} - 1)))
\\set id random(1, :ntexts)
INSERT INTO gen_log SELECT g.tokens FROM prompts p,
	peft_generate('smol', ARRAY[p.prompt], ARRAY['g' || :a], '{"max_new_tokens": $NEW_TOKENS}') g WHERE p.id = :id;
EOF
else
	cat >"$WORK/predict.sql" <<EOF
\\set a random(0, $((${PEFT_BENCH_ADAPTERS:-16} - 1)))
\\set id random(1, :ntexts)
SELECT p.label FROM load_texts t, peft_predict('r' || :a, t.body) p WHERE t.id = :id;
EOF
fi
chmod 644 "$WORK/predict.sql"

# Mean Pss and Private_Dirty (kB) of the processes whose pids are given.
memory() {
	python3 - "$@" <<'EOF'
import sys
tot = {"Pss": 0, "Private_Dirty": 0}
n = 0
for pid in sys.argv[1:]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                w = line.split()
                if w[0].rstrip(":") in tot:
                    tot[w[0].rstrip(":")] += int(w[1])
        n += 1
    except OSError:
        pass
print("%d %.1f %.1f" % (n, tot["Pss"] / max(n, 1) / 1024, tot["Private_Dirty"] / max(n, 1) / 1024))
EOF
}

# Halfway through a run: memory of the pgbench backends and of the serving worker.
sampler() {
	local out=$1
	sleep $((DURATION / 2))
	memory $("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'") >"$out.clients"
	memory $("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'peft serving'") >"$out.worker"
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
for clients in $CLIENT_LIST; do
	for serve in off on; do
		run=$WORK/run-$clients-$serve
		mkdir -p "$run"
		chown postgres: "$run"
		if [ "$serve" = on ] && [ "$WORKLOAD" = generate ]; then
			# start the worker and load the 16 adapters in it
			"${PSQL[@]}" -c "SET peft.serve = on" -c "SELECT count(*) FROM peft_generate('smol',
				array_fill('warm up'::text, ARRAY[16]), ARRAY(SELECT 'g' || i FROM generate_series(0, 15) i),
				'{\"max_new_tokens\": 1}')" >/dev/null
		elif [ "$serve" = on ]; then
			# start the worker and load the 16 adapters in it
			"${PSQL[@]}" -c "SET peft.serve = on" \
				-c "SELECT count(*) FROM generate_series(0, 15) i, peft_predict('r' || i, 'warm up') p" >/dev/null
		fi
		if [ "$WORKLOAD" = generate ]; then "${PSQL[@]}" -c "TRUNCATE gen_log"; fi
		sampler "$run/mem" &
		SAMPLER_PID=$!
		set +e
		as_pg env PGOPTIONS="-c peft.serve=$serve" pgbench -n -M prepared -c "$clients" -j "$NCPU" -T "$DURATION" \
			--log --log-prefix="$run/log" -D ntexts="$ntexts" -f "$WORK/predict.sql" \
			>"$run/pgbench.out" 2>"$run/pgbench.err"
		set -e
		wait "$SAMPLER_PID" || true
		SAMPLER_PID=""
		tokens=0
		if [ "$WORKLOAD" = generate ]; then tokens=$("${PSQL[@]}" -c "SELECT coalesce(sum(tokens), 0) FROM gen_log"); fi
		python3 - "$run" "$clients" "$serve" "$tokens" "$DURATION" >>"$RESULTS" <<'EOF'
import glob, re, sys
run, clients, serve, tokens, duration = sys.argv[1:6]
out = open(run + "/pgbench.out").read()
num = lambda pat: (re.search(pat, out) or [None, "nan"])[1]
tps = float(num(r"tps = ([0-9.]+)"))
failed = num(r"number of failed transactions: (\d+)")
if failed == "nan":
    failed = "0"
warm = []
for path in glob.glob(run + "/log.*"):
    for line in open(path):
        c = line.split()
        if c[1] != "0":              # a connection's first call (loads) left out
            warm.append(int(c[2]) / 1000.0)
warm.sort()
q = lambda p: warm[min(len(warm) - 1, int(round(p / 100.0 * (len(warm) - 1))))] if warm else float("nan")
mem = open(run + "/mem.clients").read().split()
wmem = open(run + "/mem.worker").read().split()
worker = "%s / %s" % (wmem[1], wmem[2]) if wmem[0] != "0" else "-"
print("%s %s %.1f %.1f %.1f %.1f %s %s %s %s %.1f" % (clients, serve, tps, q(50), q(95), q(99), failed,
                                                 mem[1], mem[2], worker.replace(" ", ""),
                                                 int(tokens) / float(duration)))
EOF
	done
done
errors=$(grep -c 'ERROR' "$WORK/server.log" || true)

if [ "$WORKLOAD" = generate ]; then
	echo "peft.serve off vs on: SmolLM2-135M-Instruct Q4_1, calls over ${PEFT_BENCH_ADAPTERS:-16} LoRA adapters, single-prompt peft_generate,"
	echo "greedy, max_new_tokens $NEW_TOKENS, $DURATION s per run, $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
else
	echo "peft.serve off vs on: all-MiniLM-L6-v2, calls over ${PEFT_BENCH_ADAPTERS:-16} LoRA adapters (r=8 default), single-row peft_predict,"
	echo "texts of $words words on average ($ntexts texts), $DURATION s per run, $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
fi
echo "peft.threads = 1 per connection, serving worker threads = ${PEFT_BENCH_SERVE_THREADS:-0}, serve_max_wait = ${PEFT_BENCH_MAX_WAIT:-2ms}, serve_max_batch = ${PEFT_BENCH_MAX_BATCH:-32}"
echo
echo "| clients | serve | tps | tokens/s | p50 ms | p95 ms | p99 ms | failed | Pss/conn MiB | Private_Dirty/conn MiB | worker Pss/Private_Dirty MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while read -r c s tps p50 p95 p99 failed pss pd worker tokps; do
	[ "$WORKLOAD" = generate ] || tokps=-
	echo "| $c | $s | $tps | $tokps | $p50 | $p95 | $p99 | $failed | $pss | $pd | $worker |"
done <"$RESULTS"
echo
for clients in $CLIENT_LIST; do
	awk -v c="$clients" -v w="$WORKLOAD" '$1 == c && $2 == "off" {off = $3; toff = $11} $1 == c && $2 == "on" {on = $3; ton = $11}
		END {if (off > 0) printf "%s clients: serve on / off = %.2fx tps", c, on / off;
		     if (w == "generate" && toff > 0) printf ", %.2fx generated tokens/s", ton / toff; print ""}' "$RESULTS"
done
echo "server log ERROR lines: $errors"
