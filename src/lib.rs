//! flannel-rs: a wire-compatible replacement for flannel's VXLAN mode.
pub mod flanneld;
pub mod netlink;
pub mod netns;
pub mod testsupport;
