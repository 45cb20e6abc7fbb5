#!/usr/bin/env bash
# test/bench/mixed_generate.sh - 16 prompts over 16 LoRA adapters of
# SmolLM2-135M-Instruct (Q4_1), on one server:
#
#   1. one call, peft_generate(model, prompts[], adapters[]): every prompt
#      decoded together, the base products shared (peft.threads 1, then 2)
#   2. NCLIENTS (16) connections at once, each peft_generate(model, prompt,
#      adapter => its own) for one prompt: separate connections computing alone
#
# and the generated tokens/s of each (greedy, max_new_tokens MAX_NEW (32)).
#
#   test/bench/mixed_generate.sh [GGUF]
#
# One adapter is trained for 2 steps; the other 15 are peft_import copies of
# it under other names (separate adapters to the server).  Runs the installed
# peft (make install first).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF=${1:-$(./scripts/fetch_model --decoder)}
NCLIENTS=${NCLIENTS:-16}
MAX_NEW=${MAX_NEW:-32}
. test/bench/cluster.sh
bench_cluster "${PEFT_BENCH_PORT:-54337}" "max_connections = 64"
psql_q "CREATE EXTENSION peft" >/dev/null
psql_q "SELECT name FROM peft_register_model('smol', '$GGUF')" >/dev/null
psql_q "CREATE TABLE pairs AS SELECT format('Join %s and %s.', a, b) AS prompt, format('%s-%s', a, b) AS completion
        FROM unnest(ARRAY['red','blue','green','gold']) a, unnest(ARRAY['cat','dog','owl']) b" >/dev/null
psql_q "SELECT peft_train('g1', 'smol', 'pairs', input => 'prompt', label => 'completion', task => 'generation',
        options => '{\"max_steps\": 2, \"batch_size\": 2, \"eval_generate\": false}', wait => true)" >/dev/null
psql_q "SELECT count(peft_import('g' || i, 'smol', peft_export_config('g1'), peft_export('g1')))
        FROM generate_series(2, $NCLIENTS) i" >/dev/null

OPTIONS="{\"max_new_tokens\": $MAX_NEW}"
PROMPTS="ARRAY(SELECT format('Write a short story about a %s number %s.', (ARRAY['cat','dog','owl','fox'])[1 + i % 4], i)
               FROM generate_series(1, $NCLIENTS) i ORDER BY i)"
ADAPTERS="ARRAY(SELECT 'g' || i FROM generate_series(1, $NCLIENTS) i ORDER BY i)"

# Seconds and generated tokens of one mixed call in a fresh connection with peft.threads = $1.
mixed_call() {
	local s e tokens
	s=$(date +%s.%N)
	tokens=$(as_pg psql -X -qAt -h "$WORK" -p "$BENCH_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
		-c "SET peft.threads = $1" \
		-c "SELECT sum(tokens) FROM peft_generate('smol', $PROMPTS, $ADAPTERS, '$OPTIONS')")
	e=$(date +%s.%N)
	echo "$(python3 -c "print($e - $s)") $tokens"
}
# Seconds and generated tokens of NCLIENTS connections at once, one prompt and adapter each.
separate_calls() {
	local s e
	rm -f "$WORK"/sep.*
	s=$(date +%s.%N)
	for i in $(seq "$NCLIENTS"); do
		as_pg psql -X -qAt -h "$WORK" -p "$BENCH_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
			-c "SELECT tokens FROM peft_generate('smol', ARRAY[($PROMPTS)[$i]], 'g$i', '$OPTIONS')" \
			>"$WORK/sep.$i" &
	done
	wait
	e=$(date +%s.%N)
	echo "$(python3 -c "print($e - $s)") $(cat "$WORK"/sep.* | awk '{s += $1} END {print s}')"
}
mixed_call 1 >/dev/null			# warm the page cache
m1=$(mixed_call 1)
m2=$(mixed_call 2)
sep=$(separate_calls)
python3 - "$NCLIENTS" "$m1" "$m2" "$sep" <<'PY'
import sys
n = int(sys.argv[1])
rows = [("one mixed call, peft.threads 1", sys.argv[2]), ("one mixed call, peft.threads 2", sys.argv[3]),
        (f"{n} connections at once, one prompt each", sys.argv[4])]
rate = {}
for name, figures in rows:
    seconds, tokens = figures.split()
    rate[name] = float(tokens) / float(seconds)
    print(f"{name:45s} {int(tokens):5d} tokens in {float(seconds):6.2f} s: {rate[name]:7.1f} tokens/s")
base = rate[rows[2][0]]
print(f"ratio to {n} separate connections: threads 1 {rate[rows[0][0]] / base:.2f}x, threads 2 {rate[rows[1][0]] / base:.2f}x")
PY
