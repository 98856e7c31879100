#!/usr/bin/env bash
# Builds app.js into a jetwasm handler component: ./build.sh [out.wasm]
set -euo pipefail
out="${1:-orders.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")" # absolute, before we cd
cd "$(dirname "$0")"
wit="${JETWASM_WIT:-wit}"
toolchain="$("${JETWASM_TOOLCHAIN:-./toolchain.sh}" js)" # fails the build if the install fails
eval "$toolchain"

# Syntax first, as ES modules: node names the line of an error; componentize-js would not.
for file in ./*.js; do
    if ! errors="$(node --input-type=module --check <"$file" 2>&1)"; then
        echo "${errors//\[stdin\]/${file#./}}" >&2
        exit 1
    fi
done
# The contract's TypeScript declarations in bindings/, for editors (see jsconfig.json).
rm -rf bindings
node "$JETWASM_JS_TYPES" "$wit" handler bindings
# -d http -d fetch-event: leave out fetch() and incoming HTTP, which the host does not provide.
componentize-js app.js --wit "$wit" --world-name handler -d http -d fetch-event -o "$out"
