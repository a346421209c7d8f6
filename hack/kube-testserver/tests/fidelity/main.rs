//! Fidelity tests for hack/kube-testserver: real HTTP(S) against the real binary, with raw
//! requests, kube-rs and kubectl.

mod common;
mod events;
mod faults;
mod kube_client;
mod kubectl;
mod managed_fields;
mod semantics;
