#!/usr/bin/env bash
# Builds the C files here into a jetwasm {{world}} component: ./build.sh [out.wasm]
set -euo pipefail
out="${1:-{{name}}.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")" # absolute, before we cd
cd "$(dirname "$0")"
wit="${JETWASM_WIT:-wit}"
toolchain="$("${JETWASM_TOOLCHAIN:-./toolchain.sh}" c)" # fails the build if the install fails
eval "$toolchain"
world={{world}}

# wit-bindgen writes $world.h (the WIT types and imports), $world.c (the glue that exports the
# world's function and calls ours, e.g. exports_handler_handle) and ${world}_component_type.o
# (the world, for wasm-tools) into bindings/, kept for editors (see compile_flags.txt).
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
rm -rf bindings
wit-bindgen c --world "$world" --out-dir bindings "$wit" >/dev/null
bindings="bindings/${world//-/_}" # the files' names have no dashes: http_publisher.c, ...

# A WASI preview1 core module (a reactor: a library, no main; --strip-debug drops the debug
# info of wasi-libc, three quarters of the size)...
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Wl,--strip-debug \
    -I bindings -o "$build/core.wasm" ./*.c "$bindings.c" "${bindings}_component_type.o"
# ...made a component via the preview1 adapter.
wasm-tools component new "$build/core.wasm" --adapt "$JETWASM_ADAPTER" -o "$out"
