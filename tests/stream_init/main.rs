//! stream-init's integration tests: the `stream-init` binary Cargo built for this package
//! (`CARGO_BIN_EXE_stream-init`) against real `nats-server` processes and clusters started by
//! the harness (`tests/src`).

mod apply;
mod atomic;
mod kv;
