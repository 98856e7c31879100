#!/usr/bin/env bash
# Builds the Go files here into a jetwasm handler component: ./build.sh [out.wasm]
set -euo pipefail
out="${1:-orders.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")" # absolute, before we cd
cd "$(dirname "$0")"
wit="${JETWASM_WIT:-wit}"
toolchain="$("${JETWASM_TOOLCHAIN:-./toolchain.sh}" go)" # fails the build if the install fails
eval "$toolchain"
world=handler

# wit-bindgen writes a Go module `wit_component` into a temporary directory: one package per
# WIT interface, and a main package that exports the world's function and calls ours
# (`Handle` or `OnTick`) in package `export_wit_world`: the Go files here, copied in.
# (An http-publisher exports an interface instead: package export_wasi_http_incoming_handler.)
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
wit-bindgen go --world "$world" --out-dir "$build" "$wit"
package=export_wit_world
if [ "$world" = http-publisher ]; then package=export_wasi_http_incoming_handler; fi
# For editors: the same bindings in bindings/, and a Go workspace (go.work, go.mod: generated
# here, not sources) over them and the files here, so gopls and `go vet` resolve every import.
rm -rf bindings && cp -r "$build" bindings
go_version="$(go env GOVERSION)" && go_version="${go_version#go}"
printf 'module wit_component/%s\n\ngo %s\n' "$package" "$go_version" >go.mod
printf 'go %s\n\nuse (\n\t.\n\t./bindings\n)\n\nreplace go.bytecodealliance.org/pkg => %s\n' \
    "$go_version" "$JETWASM_GO_PKG" >go.work
mkdir "$build/$package"
cp ./*.go "$build/$package/"
# The bindings' runtime package comes from the toolchain folder, not from the module proxy.
echo "replace go.bytecodealliance.org/pkg => $JETWASM_GO_PKG" >>"$build/go.mod"

# A WASI preview1 core module (c-shared: a library, no main loop)...
(cd "$build" && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    go build -buildmode=c-shared -ldflags=-checklinkname=0 -trimpath -o core.wasm)
# ...which gets the world embedded, then becomes a component via the preview1 adapter.
wasm-tools component embed --world "$world" "$wit" "$build/core.wasm" -o "$build/embedded.wasm"
wasm-tools component new "$build/embedded.wasm" --adapt "$JETWASM_ADAPTER" -o "$out"
