#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU, portable x86-64-v3, static) from the llama.cpp sources
# vendored in the llama-cpp-python sdist on PyPI, once per machine: the binary is cached by
# version and flags outside the repository. Prints the binary's path on stdout.
#   PYTHON=.venv/bin/python scripts/build-llama-server.sh
set -euo pipefail
VERSION=0.3.36
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF"
CACHE="${LABCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labctl}/llama-server-$VERSION-portable"
BIN="$CACHE/llama-server"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "build-llama-server: $tool is missing (apt-get install cmake g++)" >&2; exit 1; }
done
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server $VERSION from PyPI's llama-cpp-python sdist (about 8 min on 2 cores, once)" >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work/sdist" >&2
tar xzf "$work/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$work"
# shellcheck disable=SC2086
if ! cmake -S "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$work/build" $FLAGS >"$work/configure.log" 2>&1; then
    tail -30 "$work/configure.log" >&2
    exit 1
fi
if ! cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    exit 1
fi
mkdir -p "$CACHE"
cp "$work/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
