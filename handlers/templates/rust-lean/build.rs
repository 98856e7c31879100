//! Starts the component's linear memory at 1.25 MiB: the 1 MiB stack, the static data, and
//! the rest free for the heap (src/lean.rs), so that most calls never grow it. Raise it if the
//! linker says the initial memory is too small (more static data than fits).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=--initial-memory=1310720");
    }
}
