//! This machine, as the xtask crates see it: the checkout's root, child processes and ports on
//! 127.0.0.1 ([`proc`]), and the third-party tools the tests and rigs run, installed on first use
//! ([`tools`]).
//!
//! Used by the console (`ota-console`), the test rigs (`testbed`) and the CLI (`xtask`); it uses
//! no other crate of the workspace.

pub mod proc;
pub mod tools;

use std::path::PathBuf;

/// The workspace root (this crate is `xtask/machine`, two levels below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).expect("xtask/machine is two levels below the workspace root").to_path_buf()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_the_workspace_root() {
        let manifest = std::fs::read_to_string(super::root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{}", super::root().display());
        assert!(super::root().join("xtask/machine").is_dir());
    }
}
