//! flannel-rs: a wire-compatible replacement for flannel's VXLAN mode.
pub mod netlink;
pub mod testsupport;
