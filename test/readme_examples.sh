#!/usr/bin/env bash
# test/readme_examples.sh - run the README's "Using it" SQL, as printed,
# in the quick start's database (after ./scripts/quickstart), stopping at
# the first error; what psql prints goes to standard output.
#
#   test/readme_examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PEFT_PORT:-54320}
SQL=$(mktemp)
trap 'rm -f "$SQL"' EXIT
# the ```sql blocks between "## Using it" and the next "## " heading
awk '/^## Using it/ {on = 1; next} /^## / {on = 0} on && /^```sql/ {code = 1; next}
     on && /^```/ {code = 0} code' README.md >"$SQL"
[ -s "$SQL" ] || { echo "README.md has no SQL under \"## Using it\"" >&2; exit 1; }
psql -X -v ON_ERROR_STOP=1 -h localhost -p "$PORT" -U postgres -d peft_demo -f "$SQL"
echo "README examples: all ran"
