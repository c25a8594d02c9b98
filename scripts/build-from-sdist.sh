#!/usr/bin/env bash
# Builds one CMake target from the C++ sources a PyPI sdist vendors, once per machine: the
# binary is cached by name and version outside the repository (with any files named in
# KEEP copied beside it). Prints the binary's path on stdout. Called by build-llama-server.sh
# and build-whisper-server.sh, which set:
#   TARGET    the CMake target and the binary's name     (llama-server)
#   PACKAGE   the PyPI package and its version            (llama-cpp-python 0.3.36)
#   SOURCES   the CMake source folder inside the sdist    (vendor/llama.cpp)
#   FLAGS     CMake's configure flags
#   CHECK     arguments the built binary must exit 0 on   (--version)
#   KEEP      files from the sources to cache beside it   (optional)
#   MINUTES   what the build takes on 2 cores, said once
set -euo pipefail
: "${TARGET:?} ${PACKAGE:?} ${VERSION:?} ${SOURCES:?} ${FLAGS:?} ${CHECK:?} ${MINUTES:?}"
CACHE="${LABCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labctl}/$TARGET-$VERSION-portable"
BIN="$CACHE/$TARGET"
cached=1
for f in ${KEEP:-}; do [ -s "$CACHE/$(basename "$f")" ] || cached=0; done
# shellcheck disable=SC2086
if [ "$cached" = 1 ] && [ -x "$BIN" ] && "$BIN" $CHECK >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "build $TARGET: $tool is missing (apt-get install cmake g++)" >&2; exit 1; }
done
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building $TARGET from PyPI's $PACKAGE $VERSION sdist (about $MINUTES min on 2 cores, once)" >&2
# --no-binary names this one package: with :all: pip would build cmake itself from source.
"$PY" -m pip download --quiet --no-deps --no-binary "$PACKAGE" "$PACKAGE==$VERSION" -d "$work/sdist" >&2
tar xzf "$work"/sdist/*.tar.gz -C "$work"
src=$(echo "$work"/*-"$VERSION"/"$SOURCES")
# shellcheck disable=SC2086
if ! cmake -S "$src" -B "$work/build" $FLAGS >"$work/configure.log" 2>&1; then
    tail -30 "$work/configure.log" >&2
    exit 1
fi
if ! cmake --build "$work/build" --target "$TARGET" -j"$(nproc)" >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    exit 1
fi
mkdir -p "$CACHE"
for f in ${KEEP:-}; do
    cp "$src/$f" "$CACHE/$(basename "$f").tmp"
    mv "$CACHE/$(basename "$f").tmp" "$CACHE/$(basename "$f")"
done
cp "$work/build/bin/$TARGET" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
