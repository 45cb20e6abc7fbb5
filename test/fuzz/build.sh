#!/usr/bin/env bash
# test/fuzz/build.sh - build the libFuzzer harnesses test/fuzz/fuzz_*.c into
# build/fuzz/ with clang, AddressSanitizer, UBSan and coverage.
#
#   test/fuzz/build.sh            build (only what changed)
#
# The engine sources (src/engine/*/*.c, CPU only) are compiled here with the
# include and pkg-config flags of the Makefile's ENGINE_CFLAGS/ENGINE_LIBS
# (ENGINE_PKGS is read from the Makefile) plus the sanitizers, archived into
# build/fuzz/libengine-fuzz.a, and each harness links what it needs from it.
# As in the unit tests, a module with test-only entry points
# (test/unit/X_hooks.c, which includes src/engine/X.c) is compiled from its
# hooks file.
# Environment: CC (clang), JOBS (nproc).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
CC=${CC:-clang}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
OUT=build/fuzz
OBJ=$OUT/obj

if ! command -v "$CC" >/dev/null; then
	echo "fuzz: $CC not found (scripts/install_deps installs clang and libclang-rt-14-dev)" >&2
	exit 1
fi
PKGS=$(sed -n 's/^ENGINE_PKGS *= *//p' Makefile)
[ -n "$PKGS" ] || { echo "fuzz: ENGINE_PKGS not found in the Makefile" >&2; exit 1; }

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-std=gnu11 -g -O1 -fno-omit-frame-pointer -pthread -Wall -Wextra \
-Wno-unused-parameter -Wno-sign-compare $(for d in src/engine/*/; do printf -- '-I%s ' "${d%/}"; done)-Ikernels -Itest/unit \
$(pkg-config --cflags $PKGS) -DPEFT_SOURCE_DIR=\"$ROOT\" $SAN"
LIBS="$(pkg-config --libs $PKGS) -lm -pthread"

mkdir -p "$OBJ"
# Changed flags or compiler: rebuild everything.
STAMP="$CC $("$CC" --version | head -1) $CFLAGS"
if [ "$(cat "$OBJ/flags" 2>/dev/null)" != "$STAMP" ]; then
	rm -f "$OBJ"/*.o
	printf '%s' "$STAMP" >"$OBJ/flags"
fi

# Engine objects, coverage-instrumented for the fuzzer (no main).  An object
# is rebuilt when its source (or hooks file) or any engine or test header is
# newer.
newest_header=$(ls -t src/engine/*/*.h test/unit/*.h | head -1)
stale=()
for src in src/engine/*/*.c; do
	name=$(basename "${src%.c}")
	obj=$OBJ/$name.o
	build=$src
	[ -f "test/unit/${name}_hooks.c" ] && build=test/unit/${name}_hooks.c
	if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$build" -nt "$obj" ] ||
		[ "$newest_header" -nt "$obj" ]; then
		stale+=("$build")
	fi
done
# Objects of sources that are gone must not stay in the archive.
for obj in "$OBJ"/*.o; do
	[ -e "$obj" ] || continue
	compgen -G "src/engine/*/$(basename "${obj%.o}").c" >/dev/null || rm -f "$obj"
done
if [ ${#stale[@]} -gt 0 ]; then
	echo "fuzz: compiling ${#stale[@]} engine sources"
	export CC CFLAGS OBJ
	printf '%s\n' "${stale[@]}" | xargs -P "$JOBS" -I{} sh -c \
		'$CC $CFLAGS -fsanitize=fuzzer-no-link -c "$1" -o "$OBJ/$(basename "${1%.c}" _hooks).o"' sh {}
fi
rm -f "$OUT/libengine-fuzz.a"
ar rcs "$OUT/libengine-fuzz.a" "$OBJ"/*.o

# One binary per harness.
for src in test/fuzz/fuzz_*.c; do
	bin=$OUT/$(basename "${src%.c}")
	if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ test/fuzz/fuzz_common.h -nt "$bin" ] ||
		[ "$OUT/libengine-fuzz.a" -nt "$bin" ]; then
		echo "fuzz: linking $bin"
		# shellcheck disable=SC2086
		$CC $CFLAGS -fsanitize=fuzzer -Itest/fuzz -o "$bin" "$src" "$OUT/libengine-fuzz.a" $LIBS
	fi
done
echo "fuzz: harnesses in $OUT: $(cd "$OUT" && ls fuzz_* | tr '\n' ' ')"
