//! Where the workspace's other binaries are, for tests of a package that does not build them.
//!
//! Cargo hands an integration test only its own package's binaries (`CARGO_BIN_EXE_*`); the
//! test API server and the cluster CLI are workspace members of their own, built into the
//! same target directory by `cargo build --workspace` (what `hack/test.sh` runs first).

use std::path::PathBuf;

/// The path of workspace binary `name` in the target directory the running test was built
/// into. Panics with the command to run when it has not been built: a test cannot go on
/// without it, and the message says why it stopped.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's own path");
    // Tests run from target/<profile>/deps/; binaries live one level up.
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built; run `cargo build --workspace` (hack/test.sh does) first",
        bin.display()
    );
    bin
}
