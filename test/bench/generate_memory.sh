#!/usr/bin/env bash
# test/bench/generate_memory.sh - memory of backends that generate with a
# decoder: the GGUF file is one read-only mapping shared by every backend
# through the page cache, so each backend's private memory is its own work
# (key/value cache, scratch, tokenizer, the engine's code and heap), not a
# copy of the model.
#
#   test/bench/generate_memory.sh [BACKENDS] [GGUF]     (default 4, SmolLM2 Q4_1)
#
# Starts its own temporary cluster (as postgres when root) on port
# $PEFT_BENCH_PORT (54334) with the installed peft, registers the GGUF, and
# opens BACKENDS connections that each generate 64 tokens and then hold
# still while test/bench/backend_memory.py reads their /proc/PID/smaps:
# Rss, Pss, private and shared bytes, and the model file's own mapping.
# One more connection that never calls peft is the baseline.  Prints the
# table and the float32 size the model would take as a copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-4}
GGUF=${2:-$(scripts/fetch_model --decoder)}
PORT=${PEFT_BENCH_PORT:-54334}
BINDIR=$(pg_config --bindir)
WORK=$(mktemp -d /tmp/peft-genmem.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"

# Run as the server's account (postgres when we are root).
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"; else env PATH="$BINDIR:$PATH" "$@"; fi
}
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

as_pg initdb -D "$WORK/data" -A trust -U postgres >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
peft.threads = 1
peft.device = cpu
EOF
as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres)
as_pg "${PSQL[@]}" -c "CREATE EXTENSION peft" -c "SELECT peft_register_model('smollm2', '$GGUF')" >/dev/null

# Each connection: its pid, one generation, then a long sleep to be measured in.
for i in $(seq 1 "$N"); do
	as_pg "${PSQL[@]}" -c "SELECT pg_backend_pid()" \
		-c "SELECT length(peft_generate('smollm2', 'Tell me about PostgreSQL number $i.', options => '{\"max_new_tokens\": 64}')) > 0" \
		-c "SELECT pg_sleep(600)" >"$WORK/conn$i.out" 2>&1 &
	PIDS+=($!)
done
as_pg "${PSQL[@]}" -c "SELECT pg_backend_pid()" -c "SELECT pg_sleep(600)" >"$WORK/base.out" 2>&1 &
PIDS+=($!)
# Wait until every generating connection has printed its answer (two lines).
for _ in $(seq 1 600); do
	done_count=0
	for i in $(seq 1 "$N"); do
		[ "$(wc -l <"$WORK/conn$i.out")" -ge 2 ] && done_count=$((done_count + 1))
	done
	[ "$done_count" = "$N" ] && break
	sleep 0.5
done
procs=()
for i in $(seq 1 "$N"); do
	grep -q '^t$' "$WORK/conn$i.out" || { echo "connection $i failed:"; cat "$WORK/conn$i.out"; exit 1; }
	procs+=("generate:$(head -1 "$WORK/conn$i.out")")
done
procs+=("baseline:$(head -1 "$WORK/base.out")")
PARAMS=$(as_pg "${PSQL[@]}" -c "SELECT parameters FROM peft.models WHERE name = 'smollm2'")
echo "$N backends generating with $(basename "$GGUF") ($(du -m "$GGUF" | cut -f1) MB file; a float32 copy of its" \
	"$PARAMS parameters would be $((PARAMS * 4 / 1048576)) MiB in each backend)"
as_pg python3 "$ROOT/test/bench/backend_memory.py" --model "$(basename "$GGUF")" --summary generate "${procs[@]}"
