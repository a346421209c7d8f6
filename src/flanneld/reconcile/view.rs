//! What the reconciler knows of the kernel between passes, and the kernel monitor that keeps
//! that knowledge honest.

use futures::StreamExt;

use crate::flanneld::datapath;
use crate::flanneld::pure::desired::KernelEntries;
use crate::net::Family;
use crate::netlink::{Monitor, MonitorGroups, Netlink};

use super::Trigger;

/// Entries on one VXLAN device (by family and ifindex).
#[derive(Debug)]
pub(super) struct DeviceEntries {
    pub family: Family,
    pub index: u32,
    pub entries: KernelEntries,
}

/// Per device, two sets of entries:
/// - **wanted**: the desired entries of the last pass — the only copy of them that outlives a
///   pass. A kernel event that contradicts them is drift, and wakes a pass.
/// - **held**: before the first complete node list, what the kernel holds on the device as far
///   as this daemon knows — the last dump plus every addition applied since. A provisional
///   pass runs per list page, and it and the first complete pass plan against this instead of
///   dumping up to 3N entries each time.
///
/// The held view cannot silently go stale: the monitor is opened before the first dump (and
/// after the first pass has ensured its devices, so their creation does not read as drift); a
/// change by someone else that matters to the desired state is drift, which
/// makes the next pass dump, and one that only contradicts the held view (a stale entry
/// deleted) drops it. Only a node-change pass reuses it, and it is kept only from a pass that
/// completed. Without a monitor nothing is held: every pass dumps.
#[derive(Default)]
pub(super) struct KernelView {
    monitor: Option<Monitor>,
    /// The monitor was opened once (it is reopened after a failure, never closed).
    opened: bool,
    wanted: Vec<DeviceEntries>,
    held: Vec<DeviceEntries>,
}

impl KernelView {
    /// Opens the monitor, the first time only: call after a pass's devices are ensured and
    /// before its first dump, so nothing can change unseen between a dump and the next pass.
    pub fn open_monitor_once(&mut self, nl: &Netlink) {
        if !self.opened {
            self.opened = true;
            self.monitor = open_monitor(nl);
        }
    }

    /// The held entries a pass triggered by `trigger` may plan against (taken: a pass that
    /// fails part-way leaves nothing held). Drift, retry and resync passes dump.
    pub fn take_held(&mut self, trigger: Trigger) -> HeldEntries {
        let mut held = std::mem::take(&mut self.held);
        if trigger != Trigger::NodeChange {
            held.clear();
        }
        HeldEntries(held)
    }

    /// Records a completed pass: what it wants on each device, and what it knows is there.
    pub fn record(&mut self, wanted: Vec<DeviceEntries>, held: Vec<DeviceEntries>) {
        self.wanted = wanted;
        self.held = if self.monitor.is_some() {
            held
        } else {
            Vec::new()
        };
    }

    /// Waits until the kernel drifts from the wanted state (or the monitor fails and is
    /// reopened: what happened meanwhile is unknown, so that counts as drift too). Pending
    /// forever without a monitor. Cancel-safe: nothing is lost between events.
    pub async fn drift(&mut self, nl: &Netlink) {
        loop {
            let Some(monitor) = self.monitor.as_mut() else {
                return std::future::pending().await;
            };
            match monitor.next().await {
                Some(Ok(event)) => {
                    let contradicts = |sets: &[DeviceEntries]| {
                        sets.iter()
                            .any(|d| datapath::is_drift(&event, d.family, d.index, &d.entries))
                    };
                    if contradicts(&self.wanted) {
                        tracing::info!(event = ?event, "kernel state drifted from the desired state");
                        return;
                    }
                    // A change to an entry the held view has but no pass wants (yet), e.g. a
                    // stale one deleted by someone: the view no longer matches the kernel.
                    if contradicts(&self.held) {
                        self.held.clear();
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "kernel monitor failed; reopening it");
                    self.reopen(nl);
                    return;
                }
                None => {
                    self.reopen(nl);
                    return;
                }
            }
        }
    }

    fn reopen(&mut self, nl: &Netlink) {
        self.held.clear();
        self.monitor = open_monitor(nl);
    }
}

fn open_monitor(nl: &Netlink) -> Option<Monitor> {
    match nl.monitor(MonitorGroups::ALL) {
        Ok(m) => Some(m),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch kernel changes; relying on the periodic resync");
            None
        }
    }
}

/// Held entries taken for one pass (see [`KernelView::take_held`]).
pub(super) struct HeldEntries(Vec<DeviceEntries>);

impl HeldEntries {
    /// The entries held for this device, if any.
    pub fn take(&mut self, family: Family, index: u32) -> Option<KernelEntries> {
        let i = self
            .0
            .iter()
            .position(|d| d.family == family && d.index == index)?;
        Some(self.0.swap_remove(i).entries)
    }
}
