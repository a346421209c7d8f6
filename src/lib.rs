//! flannel-rs: a wire-compatible replacement for flannel's VXLAN mode.
#[path = "cni-plugin/mod.rs"]
pub mod cni;
pub mod flanneld;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod subnet_env;

/// Helpers for the unit tests of every module.
#[cfg(test)]
pub(crate) mod test_util {
    /// A per-test directory under the temp dir (`frs-<tag>-…`), removed on drop.
    pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("frs-{tag}-"))
            .tempdir()
            .unwrap()
    }
}
