# test/private_pg.sh - sourced by the scripts that run a server with this
# tree's peft without installing it (test/asan_regress.sh with
# PEFT_ASAN_PRIVATE=1, test/bench/load_predict.sh, test/bench/serve_pgbench.sh).
#
#   . test/private_pg.sh
#   private_pg DEST      # sets PRIV_BINDIR, PRIV_PKGLIB, PRIV_EXTDIR ($PG_CONFIG's installation)
#
# The server finds its library and share folders relative to its own
# binary, so a copy of bin/ beside symbolic links to every entry of lib/
# and share/ runs as the installed server does.  peft's own entries are
# left out, for the caller to copy its files into PRIV_PKGLIB and
# PRIV_EXTDIR: nothing is ever written through a link, so the installed
# peft and the rest of the installation are left alone.

# Make the private installation under $1 (an empty folder).
private_pg() {
	local dest=$1 pgc=${PG_CONFIG:-pg_config} bindir pkglib sharedir f
	bindir=$($pgc --bindir)
	pkglib=$($pgc --pkglibdir)
	sharedir=$($pgc --sharedir)
	mkdir -p "$dest$bindir" "$dest$pkglib" "$dest$sharedir/extension"
	cp -a "$bindir/." "$dest$bindir/"
	for f in "$pkglib"/* "$sharedir"/*; do
		[ "$f" = "$sharedir/extension" ] || ln -s "$f" "$dest$f"
	done
	for f in "$sharedir"/extension/*; do ln -s "$f" "$dest$f"; done
	rm -f "$dest$pkglib"/peft.so "$dest$pkglib"/peft_engine.so "$dest$pkglib"/peft_engine_cuda.so \
		"$dest$sharedir"/extension/peft[.-]*
	PRIV_BINDIR=$dest$bindir
	PRIV_PKGLIB=$dest$pkglib
	PRIV_EXTDIR=$dest$sharedir/extension
}
