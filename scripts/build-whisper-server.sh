#!/usr/bin/env bash
# Builds whisper.cpp's whisper-server (CPU, portable, static) from the whisper.cpp sources
# vendored in the pywhispercpp sdist on PyPI, once per machine: the binary is cached by version
# outside the repository, beside it the sdist's for-tests-ggml-tiny.bin (its header, mel filters
# and vocabulary, which the tests' generated models reuse). Prints the binary's path on stdout.
#   PYTHON=.venv/bin/python scripts/build-whisper-server.sh
set -euo pipefail
VERSION=1.5.1
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DWHISPER_BUILD_TESTS=OFF \
-DWHISPER_SDL2=OFF -DWHISPER_CURL=OFF -DWHISPER_FFMPEG=OFF -DWHISPER_BUILD_EXAMPLES=ON -DWHISPER_BUILD_SERVER=ON"
CACHE="${LABCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labctl}/whisper-server-$VERSION-portable"
BIN="$CACHE/whisper-server"
if [ -x "$BIN" ] && [ -s "$CACHE/for-tests-ggml-tiny.bin" ] && "$BIN" --help >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "build-whisper-server: $tool is missing (apt-get install cmake g++)" >&2; exit 1; }
done
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building whisper-server from PyPI's pywhispercpp $VERSION sdist (whisper.cpp 1.8.5; a few minutes on 2 cores, once)" >&2
# --no-binary names this one package: with :all: pip would build cmake itself from source.
"$PY" -m pip download --quiet --no-deps --no-binary pywhispercpp "pywhispercpp==$VERSION" -d "$work/sdist" >&2
tar xzf "$work/sdist/pywhispercpp-$VERSION.tar.gz" -C "$work"
src="$work/pywhispercpp-$VERSION/whisper.cpp"
# shellcheck disable=SC2086
if ! cmake -S "$src" -B "$work/build" $FLAGS >"$work/configure.log" 2>&1; then
    tail -30 "$work/configure.log" >&2
    exit 1
fi
if ! cmake --build "$work/build" --target whisper-server -j"$(nproc)" >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    exit 1
fi
mkdir -p "$CACHE"
cp "$src/models/for-tests-ggml-tiny.bin" "$CACHE/for-tests-ggml-tiny.bin.tmp"
mv "$CACHE/for-tests-ggml-tiny.bin.tmp" "$CACHE/for-tests-ggml-tiny.bin"
cp "$work/build/bin/whisper-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
