//! The `flannel` CNI plugin: upstream's flannel → bridge → host-local chain in one process.
//!
//! The binary (`src/cni-plugin/main.rs`) only calls [`main_entry`]; everything else lives here
//! so the integration tests and the benchmark can reach it.

pub mod config;
pub mod delegate;
pub mod env;
pub mod ipam;
pub mod ipmasq;
pub mod state;
pub mod subnet_env;
pub mod sysctl;
pub mod types;
