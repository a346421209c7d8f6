//! Integration tests against the real kernel, each inside network namespaces it creates.
//!
//! These tests need root and iproute2. They fail (never skip) when a namespace cannot be made.

mod cni_plugin;
mod cni_races;
mod cni_reference;
mod cni_support;
mod daemon_control;
mod daemon_data;
mod daemon_dual;
mod daemon_events;
mod daemon_outage;
mod daemon_probes;
mod daemon_readiness;
mod daemon_status;
mod daemon_supervision;
mod deploy_e2e;
mod deploy_support;
mod diagnose;
mod e2e_cluster;
mod harness;
mod harness_tests;
mod netlink_addrs;
mod netlink_batch;
mod netlink_links;
mod netlink_monitor;
mod netlink_neigh;
mod netlink_routes;
mod netlink_util;
mod topology_tests;
mod traffic_rules;
