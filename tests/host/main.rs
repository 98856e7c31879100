//! The host's integration tests, one binary by topic: real `nats-server` processes started by
//! the harness (`tests/src`), real components built from `handlers/`, and the `jetwasm`
//! binary Cargo built for this package (`CARGO_BIN_EXE_jetwasm`).

mod authoring;
mod behaviour;
mod chaos;
mod conformance;

mod deploy;
mod drop_in;
mod operations;
mod registry;
mod tenants;

/// The harness starts the host from the binary beside the test executable: exactly the one
/// Cargo built for these tests.
#[test]
fn the_harness_runs_the_binary_cargo_built_for_these_tests() {
    let found = harness::package_bin("jetwasm").unwrap();
    assert_eq!(found, std::path::Path::new(env!("CARGO_BIN_EXE_jetwasm")));
}
