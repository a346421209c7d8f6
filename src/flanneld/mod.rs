//! The pure, kernel- and network-independent core of `flanneld` (kube-subnet-mgr + vxlan).
//!
//! Data flow (see docs/architecture.md): flags + net-conf.json → [`config`]/[`netconf`];
//! Node objects → [`node::NodeInfo`] (slim cache) → [`peers`] (parse + validate) →
//! [`desired`] (kernel state as a pure function) → [`plan`] (diff against the kernel's actual
//! state). Our own Node's annotations are computed and patched via [`annotations`]. Side
//! outputs: [`subnet_env`], [`masq`] rule text, [`metrics`]. Interface selection in [`iface`]
//! works on plain data so that the netlink layer only has to list links.

pub mod annotations;
pub mod config;
pub mod desired;
pub mod iface;
pub mod masq;
pub mod metrics;
pub mod netconf;
pub mod node;
pub mod peers;
pub mod plan;
pub mod subnet_env;
pub mod types;
