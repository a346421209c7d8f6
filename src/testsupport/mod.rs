//! Test support shared by integration tests and benchmarks (no feature gate: it only
//! spawns processes and talks HTTP).
pub mod kube_testserver;
