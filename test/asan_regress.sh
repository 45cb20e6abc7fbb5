#!/usr/bin/env bash
# test/asan_regress.sh - the pg_regress suite against a server whose peft
# libraries are built with AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   test/asan_regress.sh
#
# 1. Copies the working tree (tracked files and untracked files git does not
#    ignore; or the commit $ASAN_REGRESS_REF, e.g. HEAD, with git archive) to
#    a scratch folder and builds there, so build/, the checkout's libraries and
#    the installed ones are not touched while it builds:
#      peft.so         PGXS, PG_CFLAGS=-fsanitize=address,undefined -fno-omit-frame-pointer
#      peft_engine.so  PEFT_ASAN=1 (-O1, the same sanitizers), PEFT_CUDA=0
#    (CPU only: the CUDA runtime does not run under ASan's default shadow
#    layout, and the suite computes on the CPU anyway).
# 2. Saves the installed peft.so, peft_engine.so, peft.control and
#    peft--*.sql, installs the sanitized ones (each by rename, so processes
#    that have the old files mapped keep them), and restores the saved files
#    on exit, whatever happens (trap).  Installing needs root, or sudo.
# 3. Starts a temporary server (as postgres when root; port $PEFT_ASAN_PORT,
#    54333) with LD_PRELOAD of gcc's libasan, a small shim (below) and
#    libubsan, and ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:
#    halt_on_error=1:log_path=<scratch>/logs/asan
#    (PostgreSQL leaks by design at exit, so no leak check), runs
#    "make installcheck" (the Makefile's REGRESS list and REGRESS_OPTS, as
#    test/run does), stops the server.
# 4. Fails when pg_regress failed or when any ASan or UBSan report was
#    written (the first one is printed).  Last line:
#      asan-regress: N passed, N failed, 0 skipped
#    (N from pg_regress; a sanitizer report counts as one more failure).
#
# The shim, a small library preloaded after libasan, defines two functions:
#  - swift_demangle (returning NULL: "not a Swift name").  PostgreSQL links
#    libldap -> libgnutls -> libp11-kit, and library constructors run before
#    the preloaded ASan runtime's own.  libp11-kit's constructor calls
#    newlocale(), which write-locks glibc's __libc_setlocale_lock and calls
#    malloc(); ASan's malloc initialises the runtime right there, and the
#    symbolizer's start-up does dlsym("swift_demangle") (absent) then
#    dlerror(), whose message translation (dcgettext) read-locks the same
#    lock: glibc refuses (EDEADLK, ignored), the unlock that follows releases
#    newlocale's write lock, the reader count underflows, and the next
#    setlocale() or bindtextdomain() - in the main() of postgres, pg_ctl and
#    psql - waits forever (gcc 12's libasan.so.8 with glibc 2.36, Debian 12;
#    found with a gdb watchpoint on the lock).  With the symbol present the
#    dlsym succeeds and dlerror() has nothing to translate.
#  - __ubsan_default_options ("halt_on_error=1:print_stacktrace=1").  UBSan
#    reads UBSAN_OPTIONS only at its first report, from /proc/self/environ,
#    and by then PostgreSQL has overwritten its environment block with the
#    process title (ps_status.c), so the variable is never seen in a
#    backend.  (ASan reads ASAN_OPTIONS at start-up, before that.)  The
#    two runtimes share their report file (libubsan's sanitizer_common
#    symbols bind to libasan's), so UBSan's start-up would also reset ASan's
#    log_path to stderr: the same log_path is given here.  UBSan's own
#    reports still land in the server's log; both places are read.
#
# What is and is not checked: the postmaster and the backends themselves are
# NOT sanitized (Debian's postgres binary); only the libraries loaded into
# them are instrumented: peft.so (SQL layer, background worker) and
# peft_engine.so (dlopen'ed on first use).  The preloaded runtime replaces
# malloc for the whole process, so heap errors in the engine (malloc) are
# caught, and UB in both libraries; but memory that the SQL layer gets from
# palloc is one big malloc'd block to ASan, so an overrun inside a palloc'd
# chunk is only caught if it leaves the memory context's block.
#
# Environment: PEFT_ASAN_PORT (54333), PEFT_ASAN_PRIVATE=1 (below),
# ASAN_REGRESS_REF (build that commit instead of the working tree),
# PEFT_UBSAN_HALT=0 (UBSan reports and goes on, to list every location; ASan
# always halts), PEFT_ASAN_TIMEOUT (1200 s for pg_regress).
# Logs: build/test-logs/asan-regress*.
#
# Do not run it while another "make install" of peft may run, or while
# another server uses the installed peft (test/run's regress suite): the
# installed files are swapped for the duration.  If they were replaced by
# someone else in the meantime, they are left as they are, with a warning.
# PEFT_ASAN_PRIVATE=1 avoids all of that: the server runs from a private
# copy of the PostgreSQL installation (bin/ copied, lib/ and share/ linked)
# with the sanitized files in it; no root, nothing installed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}
BINDIR=$($PG_CONFIG --bindir)
PKGLIB=$($PG_CONFIG --pkglibdir)
EXTDIR=$($PG_CONFIG --sharedir)/extension
PORT=${PEFT_ASAN_PORT:-54333}
JOBS=$(nproc 2>/dev/null || echo 2)
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
START=$(date +%s)

finish() {
	local passed=$1 failed=$2
	cleanup
	trap - EXIT
	echo "asan-regress: run time $(($(date +%s) - START)) s"
	echo "asan-regress: $passed passed, $failed failed, 0 skipped"
	[ "$failed" = 0 ]
	exit
}

as_server_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- env PATH="$BINDIR:$PATH" "$@"
	else
		env PATH="$BINDIR:$PATH" "$@"
	fi
}

SCRATCH=$(mktemp -d /tmp/peft-asan-regress.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$SCRATCH"
chmod 755 "$SCRATCH"
LOGS=$SCRATCH/logs           # sanitizer reports and the server's log
SAVED=$SCRATCH/saved         # the installed files, restored on exit
TREE=$SCRATCH/tree
mkdir -p "$LOGS" "$SAVED" "$TREE"
[ "$(id -u)" = 0 ] && chown postgres: "$LOGS"
INSTALLED=()                 # "destination sanitized-copy" pairs we put in place
DATA=$SCRATCH/data
KEEP_LOGS=$ROOT/build/test-logs
mkdir -p "$KEEP_LOGS"

restore() {
	local dst ours name
	for pair in "${INSTALLED[@]}"; do
		dst=${pair%% *}
		ours=${pair#* }
		name=$(basename "$dst")
		if [ -e "$dst" ] && ! cmp -s "$dst" "$ours"; then
			echo "asan-regress: warning: $dst was replaced while this ran; left as it is"
		elif [ -e "$SAVED/$name" ]; then
			$SUDO cp -p "$SAVED/$name" "$dst.asan-restore" && $SUDO mv -f "$dst.asan-restore" "$dst"
		else
			$SUDO rm -f "$dst"    # was not installed before
		fi
	done
	INSTALLED=()
}
cleanup() {
	if [ -f "$DATA/postmaster.pid" ]; then
		as_server_user pg_ctl -D "$DATA" -m immediate stop >/dev/null 2>&1
	fi
	restore
	if [ -d "$SCRATCH" ]; then
		rm -rf "$KEEP_LOGS/asan-regress"
		cp -r "$LOGS" "$KEEP_LOGS/asan-regress" 2>/dev/null
		rm -rf "$SCRATCH"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for lib in "$LIBASAN" "$LIBUBSAN"; do
	if [ ! -e "$lib" ]; then
		echo "asan-regress: no sanitizer runtime $lib (install gcc's libasan/libubsan)"
		finish 0 1
	fi
done

# ---- 1. build the sanitized libraries in a copy of the tree -------------------
echo "== copy the tree to $TREE"
if [ -n "${ASAN_REGRESS_REF:-}" ]; then
	git archive "$ASAN_REGRESS_REF" | tar -x -C "$TREE" || finish 0 1
else
	git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -cf - | tar -x -C "$TREE" || finish 0 1
fi
echo "== build peft.so and peft_engine.so with $SAN_FLAGS"
BUILD_LOG=$KEEP_LOGS/asan-regress-build.log
if ! make -C "$TREE" -j"$JOBS" PEFT_ASAN=1 PEFT_CUDA=0 with_llvm=no \
	PG_CFLAGS="$SAN_FLAGS" PG_LDFLAGS="-fsanitize=address,undefined" peft.so peft_engine.so \
	>"$BUILD_LOG" 2>&1; then
	tail -30 "$BUILD_LOG"
	echo "asan-regress: the sanitized build failed (log: $BUILD_LOG)"
	finish 0 1
fi
for lib in peft.so peft_engine.so; do
	syms=$(nm -D "$TREE/$lib")
	if ! grep -q '__asan_report' <<<"$syms" || ! grep -q '__ubsan_handle' <<<"$syms"; then
		echo "asan-regress: $lib is not instrumented"
		finish 0 1
	fi
done

# ---- 2-3. a server with the sanitizer runtimes preloaded, and pg_regress -----
# The shim (see the header).
SHIM=$SCRATCH/asan_shim.so
cat >"$SCRATCH/asan_shim.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
/* Present, so ASan's start-up inside libp11-kit's constructor calls no dlerror(). */
char *swift_demangle(const char *name, size_t len, char *out, size_t *outlen, uint32_t flags);
char *swift_demangle(const char *name, size_t len, char *out, size_t *outlen, uint32_t flags) { return NULL; }
/* UBSan cannot read UBSAN_OPTIONS once PostgreSQL has set its process title. */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void) { return "halt_on_error=HALT:print_stacktrace=1:log_path=LOGPATH"; }
EOF
sed -i -e "s|HALT|${PEFT_UBSAN_HALT:-1}|" -e "s|LOGPATH|$LOGS/asan|" "$SCRATCH/asan_shim.c"
gcc -shared -fPIC -O2 -o "$SHIM" "$SCRATCH/asan_shim.c" || finish 0 1
PRELOAD="$LIBASAN $SHIM $LIBUBSAN"
python3 "$TREE/test/fixtures/make_tiny_model.py" "$SCRATCH/tiny-model" >"$LOGS/tiny-model.log" 2>&1 ||
	{ cat "$LOGS/tiny-model.log"; finish 0 1; }
[ "$(id -u)" = 0 ] && chown -R postgres: "$SCRATCH/tiny-model"

as_server_user initdb -D "$DATA" -A trust -U postgres -E UTF8 --no-locale >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log"; finish 0 1; }
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SCRATCH'
shared_preload_libraries = 'peft'
max_worker_processes = 16
EOF
# ---- save the installed files, install the sanitized ones (as late as possible)
if [ "${PEFT_ASAN_PRIVATE:-0}" = 1 ]; then
	# A private copy of the PostgreSQL installation (test/private_pg.sh):
	# the system's installation is never touched.
	. test/private_pg.sh
	private_pg "$SCRATCH/pg"
	BINDIR=$PRIV_BINDIR
	PKGLIB=$PRIV_PKGLIB
	EXTDIR=$PRIV_EXTDIR
	SUDO=""
	echo "== install into a private copy of the installation, $SCRATCH/pg"
else
	echo "== install into $PKGLIB (saved copies in $SAVED)"
fi
install_file() {   # source destination-folder mode
	local src=$1 dst mode=$3
	dst=$2/$(basename "$1")
	if [ "${PEFT_ASAN_PRIVATE:-0}" = 1 ]; then
		install -m "$mode" "$src" "$dst"
		return
	fi
	[ -e "$dst" ] && cp -p "$dst" "$SAVED/"
	INSTALLED+=("$dst $src")
	$SUDO install -m "$mode" "$src" "$dst.asan-new" && $SUDO mv -f "$dst.asan-new" "$dst"
}
install_file "$TREE/peft.so" "$PKGLIB" 755 || finish 0 1
install_file "$TREE/peft_engine.so" "$PKGLIB" 755 || finish 0 1
install_file "$TREE/peft.control" "$EXTDIR" 644 || finish 0 1
for f in "$TREE"/sql/peft--*.sql; do
	install_file "$f" "$EXTDIR" 644 || finish 0 1
done

echo "== start the server with LD_PRELOAD=$PRELOAD"
if ! as_server_user env LD_PRELOAD="$PRELOAD" \
	ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$LOGS/asan" \
	UBSAN_OPTIONS="halt_on_error=${PEFT_UBSAN_HALT:-1}:print_stacktrace=1:log_path=$LOGS/asan" \
	timeout 120 pg_ctl -D "$DATA" -l "$LOGS/server.log" -w -t 90 start >/dev/null; then
	cat "$LOGS/server.log"
	finish 0 1
fi
# The sanitizers must really be in the server's processes.
if ! grep -q libasan "/proc/$(head -1 "$DATA/postmaster.pid")/maps" 2>/dev/null; then
	echo "asan-regress: the postmaster has no ASan runtime mapped"
	finish 0 1
fi

echo "== pg_regress"
REGRESS_LOG=$KEEP_LOGS/asan-regress.log
PGHOST=$SCRATCH PGPORT=$PORT PGUSER=postgres PEFT_TINY_MODEL_DIR="$SCRATCH/tiny-model" \
	timeout "${PEFT_ASAN_TIMEOUT:-1200}" make -C "$TREE" PEFT_CUDA=0 with_llvm=no installcheck >"$REGRESS_LOG" 2>&1
grep -E ' \.\.\. ' "$REGRESS_LOG"
as_server_user pg_ctl -D "$DATA" -m fast stop >/dev/null 2>&1
restore    # put the saved files back at once; the trap would do it too

passed=0
failed=0
summary=$(grep -E 'tests (passed|failed)' "$REGRESS_LOG" | tail -1)
if [[ "$summary" =~ All\ ([0-9]+)\ tests\ passed ]]; then
	passed=${BASH_REMATCH[1]}
elif [[ "$summary" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
	failed=${BASH_REMATCH[1]}
	passed=$((BASH_REMATCH[2] - failed))
	[ -f "$TREE/regression.diffs" ] && head -60 "$TREE/regression.diffs"
	cp "$TREE/regression.diffs" "$KEEP_LOGS/asan-regress.diffs" 2>/dev/null
else
	failed=1
	tail -20 "$REGRESS_LOG"
fi

# ---- 4. sanitizer reports -------------------------------------------------------
reports=$(ls "$LOGS"/asan.* 2>/dev/null)
if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$LOGS/server.log"; then
	reports=$(printf '%s\n%s' "$reports" "$LOGS/server.log" | sed '/^$/d')
fi
if [ -n "$reports" ]; then
	echo "asan-regress: sanitizer reports in: $(for r in $reports; do basename "$r"; done | tr '\n' ' ')(copied to $KEEP_LOGS/asan-regress/)"
	first=$(echo "$reports" | head -1)
	echo "---- $(basename "$first")"
	grep -E -m1 -A40 'ERROR: AddressSanitizer|runtime error:' "$first" | grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2} ' | head -50
	echo "----"
	echo "asan-regress: distinct UBSan locations (count):"
	cat $reports | grep -ho '^[^ ]*:[0-9]*:[0-9]*: runtime error: .*' | sort | uniq -c | sort -rn | head -20
	failed=$((failed + 1))
else
	echo "asan-regress: no ASan or UBSan report"
fi
finish "$passed" "$failed"
