#!/usr/bin/env bash
# Builds whisper.cpp's whisper-server (CPU, portable, static) from the whisper.cpp 1.8.5
# sources vendored in the pywhispercpp sdist on PyPI, once per machine: the binary is cached
# by version outside the repository, beside it the sdist's for-tests-ggml-tiny.bin (its
# header, mel filters and vocabulary, which the tests' generated models reuse). Prints the
# binary's path on stdout.
#   PYTHON=.venv/bin/python scripts/build-whisper-server.sh
set -euo pipefail
TARGET=whisper-server PACKAGE=pywhispercpp VERSION=1.5.1 SOURCES=whisper.cpp \
CHECK=--help MINUTES=2 KEEP=models/for-tests-ggml-tiny.bin \
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DWHISPER_BUILD_TESTS=OFF \
-DWHISPER_SDL2=OFF -DWHISPER_CURL=OFF -DWHISPER_FFMPEG=OFF -DWHISPER_BUILD_EXAMPLES=ON \
-DWHISPER_BUILD_SERVER=ON" \
exec "$(dirname "$0")/build-from-sdist.sh"
