# test/bench/cluster.sh - sourced by the benchmark scripts that need their own
# PostgreSQL server: a scratch folder the server account can use, a
# temporary cluster on a port, and psql into it.  As root the server runs as
# the postgres account.
#
#   . test/bench/cluster.sh
#   bench_cluster PORT 'extra postgresql.conf lines'   # sets WORK, starts, traps cleanup
#   psql_q "SQL"                                       # one statement, unaligned, no header

BINDIR=$(pg_config --bindir)

# Run a command as the server account (ourselves when not root).
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"; else env PATH="$BINDIR:$PATH" "$@"; fi
}

# Stop the server and remove the scratch folder (PEFT_BENCH_KEEP=1 keeps it).
bench_cleanup() {
	as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	if [ -n "${PEFT_BENCH_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}

# Make WORK, initialise and start a cluster on port $1 with the lines $2 added.
bench_cluster() {
	WORK=$(mktemp -d /tmp/peft-bench.XXXXXX)
	[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
	chmod 755 "$WORK"
	trap bench_cleanup EXIT
	as_pg initdb -D "$WORK/data" -A trust -U postgres >/dev/null
	cat >>"$WORK/data/postgresql.conf" <<CONF
port = $1
listen_addresses = ''
unix_socket_directories = '$WORK'
max_worker_processes = 16
${2:-}
CONF
	as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
	BENCH_PORT=$1
}

# One statement against the cluster's postgres database; stops the script on an error.
psql_q() {
	as_pg psql -X -q -A -t -h "$WORK" -p "$BENCH_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$1"
}
