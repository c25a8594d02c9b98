#!/usr/bin/env bash
# Builds llama.cpp's llama-server (CPU, portable x86-64-v3, static) from the llama.cpp sources
# vendored in the llama-cpp-python sdist on PyPI, once per machine: the binary is cached by
# version and flags outside the repository. Prints the binary's path on stdout.
#   PYTHON=.venv/bin/python scripts/build-llama-server.sh
set -euo pipefail
TARGET=llama-server PACKAGE=llama-cpp-python VERSION=0.3.36 SOURCES=vendor/llama.cpp \
CHECK=--version MINUTES=8 \
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF" \
exec "$(dirname "$0")/build-from-sdist.sh"
