//! What `flanneld diagnose` found, as stable codes with a reason and a fix (pure): the JSON
//! document scripts read and the one-screen text operators read.

use std::fmt::Write as _;

use serde::Serialize;

/// A problem's stable name (part of the JSON interface; never renamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// A Node with a podCIDR and no flannel annotations: nobody can reach its pods.
    NoAnnotations,
    /// A Node flanneld refuses to program (conflict, bad annotation, outside the Network…).
    Rejected,
    MissingRoute,
    MissingNeighbour,
    MissingFdb,
    /// The kernel's entry for a peer carries another VTEP MAC than its annotation.
    WrongMac,
    /// A kernel entry on the VXLAN device that no current Node explains.
    StaleEntry,
    TunnelUnreachable,
    MtuBlackhole,
    DaemonNotRunning,
    /// Our own Node's annotations are missing or differ from what this node advertises.
    AnnotationsClobbered,
    /// The VXLAN device is missing or not up.
    NoDevice,
    /// A Node's public IP is none of its addresses.
    PublicIpNotOwned,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NoAnnotations => "no-annotations",
            Code::Rejected => "rejected",
            Code::MissingRoute => "missing-route",
            Code::MissingNeighbour => "missing-neighbour",
            Code::MissingFdb => "missing-fdb",
            Code::WrongMac => "wrong-mac",
            Code::StaleEntry => "stale-entry",
            Code::TunnelUnreachable => "tunnel-unreachable",
            Code::MtuBlackhole => "mtu-blackhole",
            Code::DaemonNotRunning => "daemon-not-running",
            Code::AnnotationsClobbered => "annotations-clobbered",
            Code::NoDevice => "no-device",
            Code::PublicIpNotOwned => "public-ip-not-owned",
        }
    }
}

/// One problem: what is wrong and why (`detail`), and what to try (`fix`, text output only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: Code,
    pub detail: String,
    #[serde(skip)]
    pub fix: String,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem {
            code,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerReport {
    pub node: String,
    pub ok: bool,
    pub problems: Vec<Problem>,
}

impl PeerReport {
    pub fn new(node: impl Into<String>, problems: Vec<Problem>) -> PeerReport {
        PeerReport {
            node: node.into(),
            ok: problems.is_empty(),
            problems,
        }
    }
}

/// The whole answer. `ok` is false when this node or any peer has a problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub node: String,
    pub ok: bool,
    pub problems: Vec<Problem>,
    pub peers: Vec<PeerReport>,
    /// Context printed above the findings (what was checked), not part of the JSON.
    #[serde(skip)]
    pub context: Vec<String>,
    /// Why the peers' kernel entries and tunnels were not checked (this node has no usable
    /// VXLAN device): their lack of problems then means "none in the API", not healthy.
    #[serde(skip)]
    pub peers_unchecked: Option<String>,
}

impl Report {
    pub fn new(node: impl Into<String>, problems: Vec<Problem>, peers: Vec<PeerReport>) -> Report {
        let ok = problems.is_empty() && peers.iter().all(|p| p.ok);
        Report {
            node: node.into(),
            ok,
            problems,
            peers,
            context: Vec::new(),
            peers_unchecked: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One screen: context, this node's problems, every problem peer on its own lines, all
    /// healthy peers in one summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.context {
            let _ = writeln!(out, "{line}");
        }
        for p in &self.problems {
            let who = if self.node.is_empty() {
                "cluster"
            } else {
                &self.node
            };
            write_problem(&mut out, who, p);
        }
        for peer in self.peers.iter().filter(|p| !p.ok) {
            for p in &peer.problems {
                write_problem(&mut out, &peer.node, p);
            }
        }
        let healthy: Vec<&str> = self
            .peers
            .iter()
            .filter(|p| p.ok)
            .map(|p| p.node.as_str())
            .collect();
        if !healthy.is_empty() {
            const SHOWN: usize = 5;
            let mut names = healthy[..healthy.len().min(SHOWN)].join(", ");
            if healthy.len() > SHOWN {
                let _ = write!(names, ", … {} more", healthy.len() - SHOWN);
            }
            match &self.peers_unchecked {
                None => {
                    let _ = writeln!(out, "ok: {} peers healthy ({names})", healthy.len());
                }
                Some(why) => {
                    let _ = writeln!(
                        out,
                        "not checked: {} peers without problems in the API ({names}); their \
                         entries and tunnels from here were not checked: {why}",
                        healthy.len()
                    );
                }
            }
        }
        let problems =
            self.problems.len() + self.peers.iter().map(|p| p.problems.len()).sum::<usize>();
        if problems == 0 {
            let _ = writeln!(out, "no problem found");
        } else {
            let _ = writeln!(out, "{problems} problem(s) found");
        }
        out
    }
}

fn write_problem(out: &mut String, who: &str, p: &Problem) {
    let _ = write!(out, "{who}: {} — {}", p.code.as_str(), p.detail);
    if !p.fix.is_empty() {
        let _ = write!(out, "; {}", p.fix);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_pinned_shape_and_codes() {
        let r = Report::new(
            "n1",
            vec![],
            vec![
                PeerReport::new("n2", vec![]),
                PeerReport::new(
                    "n3",
                    vec![Problem::new(Code::NoAnnotations, "gone", "look at n3")],
                ),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node": "n1", "ok": false, "problems": [],
                "peers": [
                    {"node": "n2", "ok": true, "problems": []},
                    {"node": "n3", "ok": false,
                     "problems": [{"code": "no-annotations", "detail": "gone"}]}
                ]
            })
        );
    }

    #[test]
    fn serde_names_are_the_stable_codes() {
        for code in [
            Code::NoAnnotations,
            Code::Rejected,
            Code::MissingRoute,
            Code::MissingNeighbour,
            Code::MissingFdb,
            Code::WrongMac,
            Code::StaleEntry,
            Code::TunnelUnreachable,
            Code::MtuBlackhole,
            Code::DaemonNotRunning,
            Code::AnnotationsClobbered,
            Code::NoDevice,
            Code::PublicIpNotOwned,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }

    #[test]
    fn text_puts_healthy_peers_on_one_line_and_each_problem_on_its_own() {
        let peers: Vec<_> = (0..8)
            .map(|i| PeerReport::new(format!("n{i}"), vec![]))
            .chain([PeerReport::new(
                "bad",
                vec![
                    Problem::new(Code::MissingRoute, "no route", "wait"),
                    Problem::new(Code::MissingFdb, "no fdb", ""),
                ],
            )])
            .collect();
        let text = Report::new("me", vec![], peers).to_text();
        assert_eq!(
            text,
            "bad: missing-route — no route; wait\nbad: missing-fdb — no fdb\n\
             ok: 8 peers healthy (n0, n1, n2, n3, n4, … 3 more)\n2 problem(s) found\n"
        );
        assert_eq!(
            Report::new("me", vec![], vec![]).to_text(),
            "no problem found\n"
        );
    }

    #[test]
    fn peers_are_not_called_healthy_when_their_entries_were_not_checked() {
        let mut r = Report::new(
            "me",
            vec![Problem::new(
                Code::NoDevice,
                "flannel.1 does not exist",
                "start it",
            )],
            vec![PeerReport::new("n2", vec![])],
        );
        r.peers_unchecked = Some("flannel.1 is not up".into());
        assert_eq!(
            r.to_text(),
            "me: no-device — flannel.1 does not exist; start it\n\
             not checked: 1 peers without problems in the API (n2); their entries and tunnels \
             from here were not checked: flannel.1 is not up\n1 problem(s) found\n"
        );
    }
}
