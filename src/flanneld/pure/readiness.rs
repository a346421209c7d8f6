//! Readiness, the one rule: when this node may take pods, and what it still waits for.
//!
//! Each part of the daemon reports its state into [`Gates`]; `/readyz` answers
//! [`Gates::verdict`] and subnet.env waits for [`Gates::subnet_env_allowed`]. The verdict is
//! computed from the current state every time, so readiness can also be lost again (the
//! traffic rules cannot be checked any more, a pass cannot read the kernel).
//!
//! The datapath part asks that the devices are up and every peer of the complete node list has
//! been attempted; it does not ask that the kernel accepted every entry. A peer whose entries
//! the kernel refuses is marked failed on its own (see [`super::refusals`]): one bad peer must
//! not keep every restarted daemon unready and stall a rollout.

/// The datapath's part, from the reconcile passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DatapathGate {
    /// No pass over the complete node list has finished yet.
    #[default]
    Pending,
    /// A pass over the complete node list ensured the devices and attempted every peer.
    Programmed,
    /// The last pass could not ensure a device or read the kernel.
    Failed(String),
}

/// How a reconcile pass ended, as far as readiness cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassEnd {
    /// Over the complete node list; per-peer kernel refusals included.
    Complete,
    /// Before the node list was complete (only additions were applied).
    Provisional,
    /// The pass stopped early: a device could not be ensured or the kernel not read.
    Failed(String),
}

impl DatapathGate {
    /// The gate after a pass ended.
    pub fn after(&self, end: PassEnd) -> DatapathGate {
        match end {
            PassEnd::Complete => DatapathGate::Programmed,
            PassEnd::Failed(error) => DatapathGate::Failed(error),
            // A provisional pass does not cover every peer; it only shows the devices work.
            PassEnd::Provisional => match self {
                DatapathGate::Failed(_) => DatapathGate::Pending,
                kept => kept.clone(),
            },
        }
    }
}

/// The masquerade / forward rules' part, from the traffic-rules task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrafficGate {
    /// Not attempted yet.
    #[default]
    Pending,
    InPlace,
    /// The last attempt failed (a missing or failing iptables / nft).
    Failing(String),
}

/// Everything readiness depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gates {
    /// Our Node is listed with a podCIDR.
    pub lease: bool,
    /// Our annotations were published as desired once (peers can program us).
    pub annotations_published: bool,
    pub datapath: DatapathGate,
    /// `--ip-masq`: pods need their masquerade rules before they start, so the rules gate
    /// subnet.env and readiness. Without it the forward rules are attempted before
    /// subnet.env is written, but their failure gates nothing.
    pub traffic_required: bool,
    pub traffic: TrafficGate,
    pub subnet_env_written: bool,
}

/// The answer of [`Gates::verdict`]: ready, or what it still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// One line per unmet condition, in start-up order; empty when ready.
    pub waiting_for: Vec<String>,
}

impl Verdict {
    pub fn is_ready(&self) -> bool {
        self.waiting_for.is_empty()
    }
}

impl Gates {
    /// The traffic rules are in place, or not needed before pods start.
    fn traffic_ok(&self) -> bool {
        !self.traffic_required || self.traffic == TrafficGate::InPlace
    }

    /// subnet.env (what lets the CNI plugin wire pods) may be written: the rules were
    /// attempted first (upstream's order), and with `--ip-masq` they are in place.
    pub fn subnet_env_allowed(&self) -> bool {
        self.lease && self.traffic != TrafficGate::Pending && self.traffic_ok()
    }

    /// Ready: lease known, the datapath programmed, the traffic rules in place when
    /// `--ip-masq` asks for them, subnet.env written, our annotations published.
    pub fn verdict(&self) -> Verdict {
        let mut waiting_for = Vec::new();
        if !self.lease {
            waiting_for.push("lease: our Node is not listed with a podCIDR yet".to_string());
        }
        match &self.datapath {
            DatapathGate::Programmed => {}
            DatapathGate::Pending => waiting_for.push(
                "datapath: no reconcile pass over the complete node list has finished yet"
                    .to_string(),
            ),
            DatapathGate::Failed(error) => waiting_for.push(format!("datapath: {error}")),
        }
        if !self.traffic_ok() {
            waiting_for.push(match &self.traffic {
                TrafficGate::Failing(error) => format!("traffic rules (--ip-masq): {error}"),
                _ => "traffic rules (--ip-masq): not installed yet".to_string(),
            });
        }
        if !self.subnet_env_written {
            waiting_for.push(if self.subnet_env_allowed() {
                "subnet.env: not written yet".to_string()
            } else {
                "subnet.env: waits for the lease and the traffic rules".to_string()
            });
        }
        if !self.annotations_published {
            waiting_for.push("annotations: not published on our Node yet".to_string());
        }
        Verdict { waiting_for }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_gates(traffic_required: bool) -> Gates {
        Gates {
            lease: true,
            annotations_published: true,
            datapath: DatapathGate::Programmed,
            traffic_required,
            traffic: TrafficGate::InPlace,
            subnet_env_written: true,
        }
    }

    #[test]
    fn all_gates_met_is_ready() {
        for required in [false, true] {
            assert!(ready_gates(required).verdict().is_ready());
        }
        let fresh = Gates::default().verdict();
        assert!(!fresh.is_ready());
        assert_eq!(fresh.waiting_for.len(), 4, "{fresh:?}");
    }

    #[test]
    fn with_ip_masq_failing_rules_block_subnet_env_and_readiness() {
        let mut g = ready_gates(true);
        g.subnet_env_written = false;
        g.traffic = TrafficGate::Failing("`iptables` is not installed or not on PATH".into());
        assert!(!g.subnet_env_allowed());
        let v = g.verdict();
        assert_eq!(
            v.waiting_for,
            [
                "traffic rules (--ip-masq): `iptables` is not installed or not on PATH",
                "subnet.env: waits for the lease and the traffic rules",
            ]
        );
        g.traffic = TrafficGate::Pending;
        assert!(!g.subnet_env_allowed());
        assert_eq!(
            g.verdict().waiting_for[0],
            "traffic rules (--ip-masq): not installed yet"
        );
        g.traffic = TrafficGate::InPlace;
        assert!(g.subnet_env_allowed());
        assert_eq!(g.verdict().waiting_for, ["subnet.env: not written yet"]);
        g.subnet_env_written = true;
        assert!(g.verdict().is_ready());
        // Lost again when the rules can no longer be checked.
        g.traffic = TrafficGate::Failing("`iptables -S` failed".into());
        assert!(!g.verdict().is_ready());
    }

    #[test]
    fn without_ip_masq_the_rules_are_attempted_first_but_gate_nothing() {
        let mut g = ready_gates(false);
        g.traffic = TrafficGate::Failing("`iptables` is not installed or not on PATH".into());
        assert!(g.subnet_env_allowed());
        assert!(g.verdict().is_ready());
        g.traffic = TrafficGate::Pending;
        assert!(!g.subnet_env_allowed());
        g.traffic = TrafficGate::InPlace;
        g.lease = false;
        assert!(!g.subnet_env_allowed());
    }

    #[test]
    fn a_complete_pass_programs_the_datapath_whatever_single_peers_did() {
        let pending = DatapathGate::Pending;
        assert_eq!(pending.after(PassEnd::Provisional), DatapathGate::Pending);
        assert_eq!(pending.after(PassEnd::Complete), DatapathGate::Programmed);
        let failed = pending.after(PassEnd::Failed("create flannel.1: EPERM".into()));
        assert_eq!(
            failed,
            DatapathGate::Failed("create flannel.1: EPERM".into())
        );
        let mut g = ready_gates(true);
        g.datapath = failed.clone();
        assert_eq!(
            g.verdict().waiting_for,
            ["datapath: create flannel.1: EPERM"]
        );
        // A provisional pass that works clears the failure but does not program everyone.
        assert_eq!(failed.after(PassEnd::Provisional), DatapathGate::Pending);
        // A re-list (provisional passes again) keeps what the last complete pass did.
        let programmed = DatapathGate::Programmed;
        assert_eq!(
            programmed.after(PassEnd::Provisional),
            DatapathGate::Programmed
        );
        assert!(matches!(
            programmed.after(PassEnd::Failed("dump: ENOBUFS".into())),
            DatapathGate::Failed(_)
        ));
    }

    #[test]
    fn reasons_come_in_start_up_order() {
        let g = Gates {
            traffic_required: true,
            ..Gates::default()
        };
        let v = g.verdict();
        let prefixes: Vec<&str> = v
            .waiting_for
            .iter()
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            prefixes,
            [
                "lease",
                "datapath",
                "traffic rules (--ip-masq)",
                "subnet.env",
                "annotations"
            ]
        );
    }
}
