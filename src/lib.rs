//! flannel-rs: a wire-compatible replacement for flannel's VXLAN mode.
#[path = "cni-plugin/mod.rs"]
pub mod cni;
pub mod flanneld;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod subnet_env;
