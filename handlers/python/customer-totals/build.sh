#!/usr/bin/env bash
# Builds app.py into a jetwasm handler component: ./build.sh [out.wasm]
set -euo pipefail
out="${1:-customer-totals.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")" # absolute, before we cd
cd "$(dirname "$0")"
wit="${JETWASM_WIT:-wit}"
toolchain="$("${JETWASM_TOOLCHAIN:-./toolchain.sh}" python)" # fails the build if the install fails
eval "$toolchain"

# Build from a copy of the sources so the build's __pycache__ stays out of this folder.
# The bindings (modules wit_world, componentize_py_types) are generated during the build.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
cp ./*.py "$src/"
# The same bindings in bindings/, for editors and type checkers (see pyrightconfig.json).
rm -rf bindings
componentize-py -d "$wit" -w handler bindings bindings
componentize-py -d "$wit" -w handler componentize app -p "$src" -o "$out"
