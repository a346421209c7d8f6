//! Where a named cluster lives between CLI invocations, and how its leftovers are swept.
//!
//! A cluster named NAME owns exactly:
//! - network namespaces `frs-NAME-*` (the name starts with a letter, so the test suites'
//!   stale-namespace cleanup, which only touches `frs-<pid>-…`, never sees them);
//! - the run dir `/tmp/frs-cluster-NAME/`: `state.json`, `control.sock`, `supervisor.log`
//!   and the lab's files (API server state, kubeconfigs, subnet.env, CNI data, daemon logs);
//! - the processes it started (supervisor, kube-testserver, one flanneld per node), all
//!   inside those namespaces except the supervisor; `state.json` records each with its
//!   kernel start time so a recycled pid is never signalled.
//!
//! `sweep` removes all of that — after a clean stop, a crash or a `kill -9` of the
//! supervisor alike — and nothing else.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use flannel_rs::netns::{NETNS_RUN_DIR, delete_netns};

/// Validates a cluster name: a lowercase letter, then up to 15 lowercase letters or digits.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 16
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        bail!(
            "invalid cluster name {name:?}: use a lowercase letter followed by up to 15 \
             lowercase letters or digits (it prefixes every namespace: frs-NAME-…)"
        );
    }
    Ok(())
}

/// The paths of one named cluster.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub name: String,
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_string(),
            dir: std::env::temp_dir().join(format!("frs-cluster-{name}")),
        })
    }

    /// Namespace name prefix of this cluster.
    pub fn netns_prefix(&self) -> String {
        format!("frs-{}-", self.name)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }

    /// Creates the run dir (mode 0700).
    pub fn create(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))
    }

    pub fn read_state(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Atomically replaces state.json.
    pub fn write_state(&self, state: &State) -> anyhow::Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(state)?;
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.state_path())
            .with_context(|| format!("rename {}", tmp.display()))
    }

    /// The namespaces under this cluster's prefix that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = self.netns_prefix();
        let mut v: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The supervisor of this cluster, when it still runs.
    pub fn live_supervisor(&self) -> Option<Proc> {
        self.read_state()
            .map(|s| s.supervisor)
            .filter(Proc::is_alive)
    }
}

/// A process as recorded: pid plus the kernel's start time (clock ticks since boot), which
/// together identify it even after the pid is recycled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub role: String,
    pub pid: u32,
    pub start_ticks: u64,
}

impl Proc {
    pub fn of(role: &str, pid: u32) -> Option<Self> {
        Some(Self {
            role: role.to_string(),
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Still the same process, still running (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .is_ok_and(|s| proc_state(&s) == Some('Z'))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> bool {
        self.is_alive()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig).is_ok()
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if !self.is_alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.is_alive()
    }
}

/// Field 22 (starttime) of /proc/PID/stat; the command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its closing parenthesis.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so starttime (22) is the 20th field here.
    after.split_whitespace().nth(19)?.parse().ok()
}

fn proc_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub netns_prefix: String,
    pub run_dir: PathBuf,
    /// `starting`, `ready`, `stopping`.
    pub phase: String,
    pub supervisor: Proc,
    pub processes: Vec<Proc>,
    pub namespaces: Vec<String>,
    pub nodes: Vec<String>,
    pub pods: Vec<String>,
}

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// The supervisor was running and stopped (it tears its cluster down itself).
    pub stopped_supervisor: Option<u32>,
    pub killed: Vec<String>,
    pub namespaces: Vec<String>,
    pub removed_dir: bool,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.stopped_supervisor.is_none()
            && self.killed.is_empty()
            && self.namespaces.is_empty()
            && !self.removed_dir
    }
}

/// Removes everything of this cluster: asks a live supervisor to tear down (SIGTERM; SIGKILL
/// after `grace`), kills recorded processes that still run, deletes the namespaces under the
/// prefix (killing whatever runs inside) and removes the run dir.
pub fn sweep(run: &RunDir, grace: Duration) -> SweepReport {
    let mut report = SweepReport::default();
    let state = run.read_state();
    if let Some(state) = &state {
        let sup = &state.supervisor;
        if sup.pid != std::process::id() && sup.signal(nix::sys::signal::Signal::SIGTERM) {
            report.stopped_supervisor = Some(sup.pid);
            if !sup.wait_gone(grace) {
                sup.signal(nix::sys::signal::Signal::SIGKILL);
                sup.wait_gone(Duration::from_secs(2));
            }
        }
        for p in &state.processes {
            if p.signal(nix::sys::signal::Signal::SIGKILL) {
                report.killed.push(format!("{} (pid {})", p.role, p.pid));
            }
        }
    }
    for ns in run.namespaces() {
        delete_netns(&ns);
        report.namespaces.push(ns);
    }
    if run.dir.exists() {
        report.removed_dir = std::fs::remove_dir_all(&run.dir).is_ok();
    }
    report
}

/// Everything of the cluster that still exists (for a final "nothing left" check).
pub fn leftovers(run: &RunDir, processes: &[Proc]) -> Vec<String> {
    let mut left: Vec<String> = run
        .namespaces()
        .into_iter()
        .map(|n| format!("namespace {n}"))
        .collect();
    for p in processes.iter().filter(|p| p.is_alive()) {
        left.push(format!("process {} (pid {})", p.role, p.pid));
    }
    if run.dir.exists() {
        left.push(format!("dir {}", run.dir.display()));
    }
    left
}

pub fn describe(report: &SweepReport) -> String {
    let mut parts = Vec::new();
    if let Some(pid) = report.stopped_supervisor {
        parts.push(format!("stopped the supervisor (pid {pid})"));
    }
    if !report.killed.is_empty() {
        parts.push(format!("killed {}", report.killed.join(", ")));
    }
    if !report.namespaces.is_empty() {
        parts.push(format!(
            "deleted {} namespace(s) ({})",
            report.namespaces.len(),
            report.namespaces.join(" ")
        ));
    }
    if report.removed_dir {
        parts.push("removed the run dir".into());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["demo", "a", "k8s1", "abcdefghijklmnop"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "1abc",
            "Demo",
            "a-b",
            "a_b",
            "abcdefghijklmnopq",
            "../x",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stat_fields_parse_with_odd_command_names() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(proc_state(stat), Some('S'));
        let own = Proc::of("me", std::process::id()).unwrap();
        assert!(own.is_alive());
        let recycled = Proc {
            start_ticks: own.start_ticks + 1,
            ..own
        };
        assert!(
            !recycled.is_alive(),
            "a different start time is another process"
        );
    }

    #[test]
    fn paths_follow_the_name() {
        let r = RunDir::new("demo").unwrap();
        assert_eq!(r.netns_prefix(), "frs-demo-");
        assert!(r.dir.ends_with("frs-cluster-demo"));
        assert!(r.socket_path().starts_with(&r.dir));
    }
}
