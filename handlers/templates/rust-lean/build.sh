#!/usr/bin/env bash
# Builds this crate into a jetwasm {{world}} component: ./build.sh [out.wasm]
set -euo pipefail
out="${1:-{{name}}.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")" # absolute, before we cd
cd "$(dirname "$0")"
toolchain="$("${JETWASM_TOOLCHAIN:-./toolchain.sh}" rust)" # fails the build if the install fails
eval "$toolchain"

# wasm32-wasip2 output is already a component (without std it imports no WASI): no extra step.
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{name_snake}}.wasm" "$out"
