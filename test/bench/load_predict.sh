#!/usr/bin/env bash
# test/bench/load_predict.sh - peft_predict under concurrent load (pgbench).
#
#   test/bench/load_predict.sh [CLIENTS] [SECONDS]      (defaults 16 and 60)
#
# Starts its own temporary cluster (as postgres when root) on port
# $PEFT_BENCH_PORT (54332) with peft.threads = 1, registers the real
# all-MiniLM-L6-v2 (scripts/fetch_model), trains a small adapter 'router'
# (300 generated tickets, 1 epoch), loads a table of short generated tickets,
# then runs pgbench with CLIENTS connections for SECONDS seconds, each
# transaction one
#     SELECT p.label FROM load_texts t, peft_predict('router', t.body) p WHERE t.id = :id
# with a random id.  Halfway through it reads the memory of every pgbench
# backend (pg_stat_activity.application_name = 'pgbench') and of one idle
# backend that never used peft, from /proc/PID/smaps_rollup and
# /proc/PID/smaps (test/bench/backend_memory.py).
#
# Prints tps, latency (average, p50/p95/p99/max from pgbench's per-transaction
# log, and the cold first call of each connection), the CPU time the backends,
# pgbench and everything else on the machine used (from /proc, so that a busy
# machine shows) with the CPU time per prediction, failed transactions, and
# the memory table with a summary line.  Exits non-zero when a transaction
# failed, a client aborted, the server logged an ERROR, or the model mapping
# was not shared.
#
# Environment: PEFT_BENCH_PORT, PEFT_BENCH_KEEP=1 (keep the scratch folder),
# PEFT_BENCH_NO_INSTALL=1 (use the installed
# peft instead of running "make install" first), PEFT_BENCH_TREE=DIR (use the
# peft.so, peft_engine.so and SQL files built in DIR, e.g. a PEFT_CUDA=0
# build, from a private copy of the PostgreSQL installation; nothing is
# installed), PEFT_LOAD_TEXTS (rows in the text table, 1000).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
CLIENTS=${1:-16}
DURATION=${2:-60}
PORT=${PEFT_BENCH_PORT:-54332}
NTEXTS=${PEFT_LOAD_TEXTS:-1000}
NCPU=$(nproc)
THREADS=$((CLIENTS < NCPU ? CLIENTS : NCPU))
MODEL=$(scripts/fetch_model)
BINDIR=$(pg_config --bindir)
BUILD=${PEFT_BENCH_TREE:-}
if [ -n "$BUILD" ]; then
	BUILD=$(cd "$BUILD" && pwd)
	for f in peft.so peft_engine.so peft.control; do
		[ -f "$BUILD/$f" ] || { echo "no $BUILD/$f (build it there first)" >&2; exit 1; }
	done
elif [ "${PEFT_BENCH_NO_INSTALL:-0}" != 1 ]; then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO="sudo"
	make -s -j"$NCPU" all >/dev/null
	$SUDO make -s install >/dev/null
fi

WORK=$(mktemp -d /tmp/peft-load.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
chmod 755 "$WORK"
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"; else env PATH="$BINDIR:$PATH" "$@"; fi
}
BASELINE_PID=""
SAMPLER_PID=""
cleanup() {
	[ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
	[ -n "$BASELINE_PID" ] && kill "$BASELINE_PID" 2>/dev/null
	as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	if [ -n "${PEFT_BENCH_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
if [ -n "$BUILD" ]; then
	# Run the server from a private copy of the installation (bin/ copied,
	# lib/ and share/ linked: it finds them relative to its binary) with
	# that tree's peft files, leaving the installed peft alone.
	. test/private_pg.sh
	private_pg "$WORK/pg"
	cp "$BUILD/peft.so" "$BUILD/peft_engine.so" "$PRIV_PKGLIB/"
	cp "$BUILD/peft.control" "$BUILD"/sql/peft--*.sql "$PRIV_EXTDIR/"
	BINDIR=$PRIV_BINDIR
	ENGINE_SO=$PRIV_PKGLIB/peft_engine.so
else
	ENGINE_SO=$(pg_config --pkglibdir)/peft_engine.so
fi
as_pg initdb -D "$WORK/data" -A trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_connections = $((CLIENTS + 20))
max_worker_processes = 16
peft.threads = 1
peft.device = cpu
peft.train_threads = $NCPU
EOF
as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
export PGHOST=$WORK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1)

# Training rows, and short texts to predict (another seed: not the training rows).
python3 scripts/make_demo_data.py "$WORK/train.tsv" --rows 300 --seed 11 2>/dev/null
python3 scripts/make_demo_data.py "$WORK/texts.tsv" --rows $((NTEXTS * 2)) --seed 12 2>/dev/null
"${PSQL[@]}" >/dev/null <<SQL
CREATE EXTENSION peft;
SELECT count(*) FROM peft_register_model('minilm', '$MODEL');
CREATE TABLE tickets (id bigserial PRIMARY KEY, body text, queue text);
\copy tickets (body, queue) FROM '$WORK/train.tsv' WITH (FORMAT text, HEADER true)
CREATE TEMP TABLE raw (body text, queue text);
\copy raw FROM '$WORK/texts.tsv' WITH (FORMAT text, HEADER true)
-- short texts: at most 32 words
CREATE TABLE load_texts AS
SELECT row_number() OVER ()::int AS id, body
FROM (SELECT body FROM raw WHERE array_length(regexp_split_to_array(body, '\s+'), 1) <= 32 LIMIT $NTEXTS) s;
ALTER TABLE load_texts ADD PRIMARY KEY (id);
ANALYZE load_texts;
SQL
ntexts=$("${PSQL[@]}" -c "SELECT count(*) FROM load_texts")
words=$("${PSQL[@]}" -c "SELECT round(avg(array_length(regexp_split_to_array(body, '\s+'), 1)), 1) FROM load_texts")
start=$(date +%s.%N)
"${PSQL[@]}" -c "SELECT peft_train('router', 'minilm', 'tickets', 'body', 'queue',
	options => '{\"epochs\": 1, \"batch_size\": 16, \"max_length\": 64, \"learning_rate\": 0.005, \"seed\": 42}', wait => true)" >/dev/null
train_s=$(python3 -c "import time; print(round(time.time() - $start, 1))")
acc=$("${PSQL[@]}" -c "SELECT round((metrics->'final'->>'accuracy')::numeric, 3) FROM peft.adapters WHERE name = 'router' AND active")

cat >"$WORK/predict.sql" <<'EOF'
\set id random(1, :ntexts)
SELECT p.label FROM load_texts t, peft_predict('router', t.body) p WHERE t.id = :id;
EOF

# An idle backend that has never loaded peft, for comparison.
PGAPPNAME=baseline "${PSQL[@]}" -c "SELECT count(*) FROM pg_class; SELECT pg_sleep($DURATION + 30)" >/dev/null 2>&1 &
BASELINE_PID=$!

# Halfway through the run, read the backends' memory; 1.5 s before its end,
# the CPU time they, pgbench and the whole machine (/proc/stat) have used.
sampler() {
	local t0=$1 pgbench_pid=$2 procs=() pids=() pid left
	sleep $((DURATION / 2))
	for pid in $("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' ORDER BY pid"); do
		procs+=("pgbench:$pid")
		pids+=("$pid")
	done
	for pid in $("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'baseline'"); do
		procs+=("baseline:$pid")
	done
	echo "${#pids[@]}" >"$WORK/mem.count"
	python3 "$ROOT/test/bench/backend_memory.py" --json "$WORK/mem.json" --summary pgbench "${procs[@]}" \
		>"$WORK/mem.txt" 2>&1
	echo $? >"$WORK/mem.rc"
	left=$(python3 -c "import time; print(max(0.0, $t0 + $DURATION - 1.5 - time.time()))")
	sleep "$left"
	{
		echo "time $(date +%s.%N)"
		head -1 /proc/stat
		for pid in "${pids[@]}"; do echo "backend $(cat "/proc/$pid/stat" 2>/dev/null)"; done
		echo "client $(cat "/proc/$pgbench_pid/stat" 2>/dev/null)"
	} >"$WORK/cpu.end"
}

{ echo "time $(date +%s.%N)"; head -1 /proc/stat; } >"$WORK/cpu.start"
t0=$(date +%s.%N)
set +e
pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -r \
	--log --log-prefix="$WORK/pgbench_log" -D ntexts="$ntexts" -f "$WORK/predict.sql" \
	>"$WORK/pgbench.out" 2>"$WORK/pgbench.err" &
pgbench_pid=$!
sampler "$t0" "$pgbench_pid" &
SAMPLER_PID=$!
wait "$pgbench_pid"
pgbench_rc=$?
wait "$SAMPLER_PID"
SAMPLER_PID=""
set -e
kill "$BASELINE_PID" 2>/dev/null || true
BASELINE_PID=""

num() { sed -n "s/^$1 *\([0-9.]*\).*/\1/p" "$WORK/pgbench.out" | head -1; }
tps=$(num 'tps = ')
lat_avg=$(num 'latency average = ')
done_tx=$(num 'number of transactions actually processed: ')
failed_tx=$(num 'number of failed transactions: ')
failed_tx=${failed_tx:-0}
aborted=$(grep -c 'aborted' "$WORK/pgbench.err" || true)
errors=$(grep -c 'ERROR' "$WORK/server.log" || true)
pcts=$(python3 - "$WORK" <<'EOF'
import glob, sys
warm, cold = [], []
for path in glob.glob(sys.argv[1] + "/pgbench_log.*"):
    with open(path) as f:
        for line in f:
            c = line.split()
            (cold if c[1] == "1" else warm).append(int(c[2]) / 1000.0)
warm.sort()
n = len(warm)
mean = sum(warm) / n if n else float("nan")
sd = (sum((x - mean) ** 2 for x in warm) / n) ** 0.5 if n else float("nan")
q = lambda p: warm[min(len(warm) - 1, int(round(p / 100.0 * (len(warm) - 1))))] if warm else float("nan")
print("%d warm calls: mean %.1f ms, stddev %.1f, p50 %.1f, p95 %.1f, p99 %.1f, max %.1f; first call of each connection (%d, loads the engine): mean %.1f ms"
      % (n, mean, sd, q(50), q(95), q(99), warm[-1] if warm else float("nan"), len(cold),
         sum(cold) / len(cold) if cold else float("nan")))
EOF
)

cpu=$(python3 - "$WORK" "$(getconf CLK_TCK)" "$NCPU" <<'EOF'
import glob, sys
work, hz, ncpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(path):
    t, stat, backends, client = None, None, [], None
    for line in open(path):
        w = line.split()
        if not w:
            continue
        if w[0] == "time":
            t = float(w[1])
        elif w[0] == "cpu":
            stat = [int(x) for x in w[1:]]
        elif w[0] in ("backend", "client") and len(w) > 1:
            f = line.split(")", 1)[1].split()      # fields after (comm)
            ticks = int(f[11]) + int(f[12])       # utime + stime
            if w[0] == "backend":
                backends.append(ticks)
            else:
                client = ticks
    return t, stat, backends, client
try:
    t0, s0, _, _ = read(work + "/cpu.start")
    t1, s1, backends, client = read(work + "/cpu.end")
except (OSError, ValueError, TypeError):
    print("CPU: not measured")
    sys.exit(0)
wall = t1 - t0
d = [b - a for a, b in zip(s0, s1)]
busy = (sum(d) - d[3] - d[4]) / hz              # all but idle and iowait
done = 0
for path in glob.glob(work + "/pgbench_log.*"):
    for line in open(path):
        c = line.split()
        if int(c[4]) + int(c[5]) / 1e6 <= t1:
            done += 1
ours = sum(backends) / hz
cl = (client or 0) / hz
print("CPU over the first %.1f s: the %d peft backends %.1f CPU-s, pgbench %.1f, everything else %.1f, "
      "idle %.1f (of %d cores x %.1f s); %.2f CPU-ms per prediction (%d predictions, engine loads included)"
      % (wall, len(backends), ours, cl, max(0.0, busy - ours - cl), max(0.0, ncpu * wall - busy),
         ncpu, wall, 1000.0 * ours / done if done else float("nan"), done))
EOF
)
engine_deps=$(ldd "$ENGINE_SO" 2>/dev/null || true)
if [[ $engine_deps == *libcublas* ]]; then
	engine_kind="CUDA build, links cuBLAS"
elif [ -e "$(dirname "$ENGINE_SO")/peft_engine_cuda.so" ]; then
	engine_kind="CUDA build, cuBLAS in peft_engine_cuda.so (loaded only to compute on CUDA)"
else
	engine_kind="CPU-only build"
fi
echo "peft: ${BUILD:-the installed files} (engine $ENGINE_SO: $engine_kind)"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $NCPU cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; $(pg_config --version)"
echo "load: $CLIENTS clients, $THREADS pgbench threads, ${DURATION} s, peft.threads = 1, -M prepared; $ntexts texts of $words words on average"
echo "adapter: 300 rows, 1 epoch, trained in $train_s s, validation accuracy $acc"
echo "transactions: $done_tx, tps $tps (pgbench, without initial connection time); latency average $lat_avg ms (pgbench)"
echo "latency: $pcts"
echo "$cpu"
echo "failed transactions: $failed_tx; aborted clients: $aborted; server ERRORs: $errors; pgbench exit status $pgbench_rc"
sed -n '/statement latencies/,$p' "$WORK/pgbench.out"
cat "$WORK/mem.txt"
rc=0
if [ "$pgbench_rc" != 0 ] || [ "$failed_tx" != 0 ] || [ "$aborted" != 0 ] || [ "$errors" != 0 ] || [ -z "$tps" ]; then
	echo "FAILED: transactions failed or clients aborted"
	cat "$WORK/pgbench.err"
	grep ERROR "$WORK/server.log" | head -5
	rc=1
fi
if [ "$(cat "$WORK/mem.rc" 2>/dev/null)" != 0 ]; then
	echo "FAILED: backend memory not read, or the model mapping is not shared"
	rc=1
fi
if [ "$(cat "$WORK/mem.count" 2>/dev/null)" != "$CLIENTS" ]; then
	echo "note: $(cat "$WORK/mem.count" 2>/dev/null) pgbench backends found at the halfway point, $CLIENTS expected"
fi
exit $rc
