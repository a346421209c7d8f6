//! The flanneld daemon's library: everything but the thin `main.rs`.
pub mod health;
pub mod keeper;
pub mod kube;
pub mod node_cache;
