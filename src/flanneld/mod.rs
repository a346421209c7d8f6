//! `flanneld`, the per-node daemon (kube-subnet-mgr + vxlan).
//!
//! [`pure`] holds every decision (flags, net-conf, annotations, peers, desired state, the
//! diff); the modules here do the I/O around it:
//! - [`daemon`]: start-up order and task wiring, under the [`tasks`] supervisor; [`kube`] the API client
//!   (with [`slim_list`] under it: Node list pages slimmed as they stream in), [`node_cache`] the
//!   Node watcher and its cache, [`keeper`] re-asserts our annotations;
//! - [`reconcile`]: the pass (pure pipeline → [`datapath`] → netlink) and its trigger loop;
//! - [`probe`]: the ICMP probe engine `diagnose` and the daemon's [`prober`] share;
//! - [`traffic`]: runs iptables/nft with the text [`pure::masq`] renders;
//! - [`health`] (`/healthz`, `/readyz`, `/metrics` on the health port; `/status` as well on
//!   the root-only [`status_socket`]), [`metrics`], [`explain`] (`flanneld explain`), [`memory`] (allocator tuning), [`caps`] (the NET_ADMIN start-up check).

pub mod caps;
pub mod daemon;
pub mod datapath;
pub mod diagnose;
pub mod events;
pub mod explain;
pub mod health;
pub mod keeper;
pub mod kube;
pub mod memory;
pub mod metrics;
pub mod node_cache;
pub mod probe;
pub mod prober;
pub mod pure;
pub mod reconcile;
pub mod slim_list;
pub mod status_socket;
pub mod tasks;
pub mod traffic;
