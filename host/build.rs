//! `jetwasm new` embeds the templates, the WIT contract and the toolchain script: rebuild the
//! host when any of them changes.

fn main() {
    for path in [
        "../handlers/templates",
        "../handlers/toolchain.sh",
        "../wit",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
