//! Test support shared by integration tests, benchmarks and the local cluster (no feature
//! gate: it only creates namespaces, spawns processes and talks HTTP).
pub mod bins;
pub mod cluster;
pub mod cni_runtime;
pub mod iproute;
pub mod kube_testserver;
pub mod lab;
pub mod procfs;
pub mod topology;
