#!/usr/bin/env bash
# test/bench/worker_memory.sh - peak memory of a training worker against the
# size of its table: the worker must grow by its tokenised rows and nothing
# else (issue 11).
#
#   test/bench/worker_memory.sh [ROWS ...]        (default: 20000 2000000)
#
# Starts its own temporary cluster (as postgres when root) on port
# $PEFT_BENCH_PORT (54333), registers all-MiniLM-L6-v2 (scripts/fetch_model),
# and for each ROWS makes a table of that many short three-word rows (three
# classes) and trains a LoRA adapter on it: 1 epoch cut short by max_steps
# (20 steps of 32 rows), 0.1% held out.  While the job runs it reads the
# worker's private resident memory (RssAnon in /proc/PID/status) until the
# worker is gone; the adapter's metrics->'memory' gives what the engine
# counted (rows_kb: tokenised rows, the validation split and row orders;
# state_kb: parameters, gradients, Adam moments; activations_kb), the
# largest private memory the worker saw in itself (sampled after every
# batch of rows and every step) and its VmHWM, all resident memory at its
# peak: that also counts the shared buffers the data query touched (a small
# table's pages are all cached, a big one's go through a 256 kB ring) and
# the mapped model, which are the server's, not the job's.  Prints one line
# per table and, for the first and last, the growth of the private peak
# against the growth of rows_kb.
#
# Environment: PEFT_BENCH_PORT, PEFT_BENCH_NO_INSTALL=1 (use the installed
# peft), PEFT_BENCH_CANCEL_AFTER_READ=1 (cancel each job once its rows are
# read: measures the reading phase of builds without max_steps),
# PEFT_BENCH_OPTIONS (the training options, JSON), PEFT_BENCH_KEEP=1 (keep
# the scratch folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=${PEFT_BENCH_PORT:-54333}
SIZES=${*:-"20000 2000000"}
OPTIONS=${PEFT_BENCH_OPTIONS:-'{"epochs": 1, "max_steps": 20, "batch_size": 32, "validation_fraction": 0.001, "learning_rate": 0.002}'}
MODEL=$(scripts/fetch_model)
if [ "${PEFT_BENCH_NO_INSTALL:-0}" != 1 ]; then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO="sudo"
	make -s -j"$(nproc)" all >/dev/null
	$SUDO make -s install >/dev/null
fi

. test/bench/cluster.sh
bench_cluster "$PORT" "peft.max_train_memory = '8GB'
peft.train_threads = $(nproc)"
psql_q "CREATE EXTENSION peft"
psql_q "SELECT name FROM peft_register_model('minilm', '$MODEL')" >/dev/null

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; PostgreSQL $(pg_config --version | cut -d' ' -f2); peft $(psql_q 'SELECT peft_version()')"
printf '%10s %10s %10s %10s %15s %12s %14s %10s\n' rows rows_kb state_kb acts_kb peak_private_kb peak_rss_kb read+train_s status
declare -a PEAKS ROWKBS
for n in $SIZES; do
	t=rows_$n
	psql_q "CREATE TABLE $t AS
	        SELECT i AS id,
	               (ARRAY['good','great','bad','awful','fine','okay'])[1 + i % 6] || ' ' ||
	               (ARRAY['movie','food','service','room','team'])[1 + (i / 6) % 5] || ' ' ||
	               (ARRAY['today','again','really','here'])[1 + (i / 30) % 4] AS body,
	               (ARRAY['positive','positive','negative','negative','neutral','neutral'])[1 + i % 6] AS label
	        FROM generate_series(1, $n) i"
	start=$(date +%s.%N)
	job=$(psql_q "SELECT peft_train('m$n', 'minilm', '$t', 'body', 'label', options => '$OPTIONS')")
	peak=0
	pid=""
	canceled=0
	while :; do
		row=$(psql_q "SELECT status, coalesce(worker_pid, 0), total_steps IS NOT NULL FROM peft.jobs WHERE id = $job")
		status=${row%%|*}
		rest=${row#*|}
		pid=${rest%%|*}
		prepared=${rest#*|}
		if [ "$pid" != 0 ] && [ -r "/proc/$pid/status" ]; then
			hwm=$(sed -n 's/^RssAnon:\s*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
			[ -n "$hwm" ] && [ "$hwm" -gt "$peak" ] && peak=$hwm
		fi
		case $status in succeeded|failed|canceled) break ;; esac
		if [ "${PEFT_BENCH_CANCEL_AFTER_READ:-0}" = 1 ] && [ "$prepared" = t ] && [ $canceled = 0 ]; then
			psql_q "SELECT peft_cancel($job)" >/dev/null
			canceled=1
		fi
		sleep 0.2
	done
	secs=$(echo "$(date +%s.%N) - $start" | bc)
	mem=$(psql_q "SELECT concat_ws('|', m->>'rows_kb', m->>'state_kb', m->>'activations_kb',
	                               m->>'peak_private_kb', m->>'peak_rss_kb')
	              FROM (SELECT metrics->'memory' AS m FROM peft.adapters WHERE name = 'm$n') a")
	IFS='|' read -r rows_kb state_kb acts_kb own_peak rss <<<"${mem:-||||}"
	# the worker's own samples see every batch and step; the poll may miss some
	[ -n "$own_peak" ] && [ "$own_peak" -gt "$peak" ] && peak=$own_peak
	printf '%10s %10s %10s %10s %15s %12s %14.1f %10s\n' "$n" "${rows_kb:--}" "${state_kb:--}" "${acts_kb:--}" \
		"$peak" "${rss:--}" "$secs" "$status"
	[ "$status" = failed ] && psql_q "SELECT error FROM peft.jobs WHERE id = $job"
	PEAKS+=("$peak")
	ROWKBS+=("${rows_kb:-0}")
	psql_q "DROP TABLE $t"
done
if [ ${#PEAKS[@]} -ge 2 ]; then
	dpeak=$((PEAKS[-1] - PEAKS[0]))
	drows=$((ROWKBS[-1] - ROWKBS[0]))
	echo "private peak grew by $dpeak kB; the counted rows grew by $drows kB$( [ "$drows" -gt 0 ] && \
		printf '; ratio %.3f' "$(echo "$dpeak / $drows" | bc -l)")"
fi
