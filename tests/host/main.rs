//! The host's integration tests, one binary by topic: real `nats-server` processes started by
//! the harness (`tests/src`), real components built from `handlers/`, and the `jetwasm`
//! binary Cargo built for this package (`CARGO_BIN_EXE_jetwasm`).

mod authoring;
mod batches;
mod behaviour;
mod chaos;
mod conformance;

mod deploy;
mod drop_in;
mod operations;
mod registry;
mod state;
mod tenants;

/// The harness starts the host from the binary beside the test executable: exactly the one
/// Cargo built for these tests.
#[test]
fn the_harness_runs_the_binary_cargo_built_for_these_tests() {
    let found = harness::package_bin("jetwasm").unwrap();
    assert_eq!(found, std::path::Path::new(env!("CARGO_BIN_EXE_jetwasm")));
}

/// Runs `jetwasm ARGS` (the binary Cargo built for these tests) to completion; returns whether
/// it succeeded, and its stdout followed by its stderr.
pub fn jetwasm<I, S>(args: I) -> (bool, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(args)
        .output()
        .expect("running jetwasm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
