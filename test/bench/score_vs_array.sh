#!/usr/bin/env bash
# test/bench/score_vs_array.sh - whole-table scoring: peft_score against the
# array form of peft_predict over the same rows (the aggregate-into-arrays
# pattern the README showed before peft_score), on one server, each timed
# three times (PEFT_BENCH_REPEAT), and peft_evaluate over them; prints
# rows/s of each and the ratio of the first two.
#
#   test/bench/score_vs_array.sh [ROWS] [MODEL_DIR]
#
# Trains a one-step adapter on ROWS (10000) generated sentences over the
# model (default: the tiny test model, so the figure is the SQL layer's
# overhead; pass scripts/fetch_model's folder for the real one).  Runs the
# installed peft (make install first).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${1:-10000}
. test/bench/cluster.sh
bench_cluster "${PEFT_BENCH_PORT:-54335}" "shared_preload_libraries = 'peft'"
MODEL=${2:-}
if [ -z "$MODEL" ]; then
	MODEL=$WORK/tiny
	python3 test/fixtures/make_tiny_model.py "$MODEL" >/dev/null
	[ "$(id -u)" = 0 ] && chown -R postgres: "$MODEL"
fi
psql_q "CREATE EXTENSION peft" >/dev/null
psql_q "SELECT name FROM peft_register_model('m', '$MODEL')" >/dev/null
psql_q "CREATE TABLE t AS SELECT i AS id,
        (ARRAY['good','bad','fine','awful'])[1 + i % 4] || ' movie number ' || i AS body,
        (ARRAY['pos','neg','pos','neg'])[1 + i % 4] AS label FROM generate_series(1, $ROWS) i" >/dev/null
psql_q "SELECT peft_train('a', 'm', 't', 'body', 'label', options => '{\"max_steps\": 1}', wait => true)" >/dev/null

time_sql() {
	local best=
	for _ in $(seq "${PEFT_BENCH_REPEAT:-3}"); do
		local s e
		s=$(date +%s.%N)
		psql_q "$1" >/dev/null
		e=$(date +%s.%N)
		best=$(python3 -c "b='$best'; d=$e-$s; print(d if not b or d < float(b) else b)")
	done
	echo "$best"
}
score=$(time_sql "SELECT count(*) FROM peft_score('a', 't', 'id', 'body')")
array=$(time_sql "SELECT count(*) FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(body ORDER BY id) AS bodies
                  FROM t GROUP BY id / 1000) chunk, LATERAL peft_predict('a', chunk.bodies) p")
evaluate=$(time_sql "SELECT peft_evaluate('a', 't', 'body', 'label')")
python3 - "$ROWS" "$score" "$array" "$evaluate" <<'PY'
import sys
rows, score, array, evaluate = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"rows {rows}: peft_score {rows/score:.0f} rows/s, array form {rows/array:.0f} rows/s, ratio {array/score:.3f}; "
      f"peft_evaluate {evaluate:.1f} s ({rows/evaluate:.0f} rows/s)")
PY
