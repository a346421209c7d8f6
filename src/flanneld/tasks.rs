//! The supervisor: every long-lived task of the daemon is spawned here under a name. The
//! daemon has no use for a task that stopped while it runs, so the first one to end or panic
//! before shutdown ends the daemon with one line naming it; the DaemonSet restarts it with the
//! datapath as it was (nothing is flushed on exit).
//!
//! With `panic = "abort"` (the dist profile) a panic ends the process before the supervisor
//! hears of it, so a panic hook names the task itself.

use std::future::Future;
use std::panic::AssertUnwindSafe;
#[cfg(panic = "abort")]
use std::sync::Once;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

tokio::task_local! {
    static TASK_NAME: &'static str;
}

/// How a supervised task stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    Ended,
    Panicked(String),
}

/// A supervised task that stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match &self.how {
    ExitKind::Ended => format!("task {} ended unexpectedly", self.name),
    ExitKind::Panicked(msg) => format!("task {} panicked: {msg}", self.name),
})]
pub struct TaskExit {
    pub name: &'static str,
    pub how: ExitKind,
}

/// Spawns and owns the tasks; dropping the last clone aborts those still running.
#[derive(Clone)]
pub struct Tasks {
    set: Arc<Mutex<JoinSet<()>>>,
    exits: mpsc::UnboundedSender<TaskExit>,
}

/// The receiving end: which task stopped first.
pub struct Exits {
    rx: mpsc::UnboundedReceiver<TaskExit>,
}

impl Tasks {
    pub fn new() -> (Tasks, Exits) {
        install_panic_hook();
        let (exits, rx) = mpsc::unbounded_channel();
        (
            Tasks {
                set: Arc::new(Mutex::new(JoinSet::new())),
                exits,
            },
            Exits { rx },
        )
    }

    /// Runs `fut` as the task `name`. Its end, or its panic, is reported to [`Exits`].
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let exits = self.exits.clone();
        let fut = TASK_NAME.scope(name, test_faults::wrap(name, fut));
        let supervised = async move {
            let how = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(()) => ExitKind::Ended,
                Err(payload) => ExitKind::Panicked(panic_message(payload.as_ref())),
            };
            let _ = exits.send(TaskExit { name, how });
        };
        // A poisoned lock only means a panic elsewhere while spawning; the set is intact.
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(supervised);
    }
}

impl Exits {
    /// The next task to stop; pending forever once every [`Tasks`] clone is gone.
    pub async fn next(&mut self) -> TaskExit {
        match self.rx.recv().await {
            Some(exit) => exit,
            None => std::future::pending().await,
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// With `panic = "abort"` the supervisor never hears of a panic: the panic hook names the task
/// (the default hook only names the worker thread). With unwinding the supervisor's error is
/// that line.
fn install_panic_hook() {
    #[cfg(panic = "abort")]
    {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Ok(name) = TASK_NAME.try_with(|n| *n) {
                    eprintln!("flanneld: task {name} panicked");
                }
                previous(info);
            }));
        });
    }
}

/// Faults a test build can inject into a named task, to test the supervisor from outside the
/// process: `FLANNELD_TEST_FAULT_FILE` names a file; once it holds a line `<task>:panic` or
/// `<task>:end`, that task panics or returns. Only in builds with debug assertions: a
/// release or dist build has no such behaviour.
pub(crate) mod test_faults {
    use std::future::Future;

    /// Whether the fault file holds `line` (always false outside test builds).
    pub(crate) fn active(line: &str) -> bool {
        #[cfg(debug_assertions)]
        {
            if let Some(path) = std::env::var_os("FLANNELD_TEST_FAULT_FILE") {
                return std::fs::read_to_string(path)
                    .is_ok_and(|text| text.lines().any(|l| l.trim() == line));
            }
        }
        let _ = line;
        false
    }

    /// `FLANNELD_TEST_PASS_BOUND_MS`: a shorter liveness bound for a test (None outside
    /// test builds).
    pub(crate) fn pass_bound() -> Option<std::time::Duration> {
        millis("FLANNELD_TEST_PASS_BOUND_MS")
    }

    /// `FLANNELD_TEST_HEADER_TIMEOUT_MS`: another header-read timeout for the health port, so
    /// a test can tell the connection cap's work from the timeout's (None outside test builds).
    pub(crate) fn header_read_timeout() -> Option<std::time::Duration> {
        millis("FLANNELD_TEST_HEADER_TIMEOUT_MS")
    }

    /// A duration knob in milliseconds from `var` (never read outside test builds).
    fn millis(var: &str) -> Option<std::time::Duration> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let ms = std::env::var(var).ok()?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    }

    /// `FLANNELD_TEST_PROBE_BASE_MS` / `FLANNELD_TEST_PROBE_WAIT_MS`: a quicker tunnel
    /// prober for a test (None outside test builds, or when neither is set).
    pub(crate) fn prober_timing() -> Option<crate::flanneld::prober::ProberTiming> {
        let (base, wait) = (
            millis("FLANNELD_TEST_PROBE_BASE_MS"),
            millis("FLANNELD_TEST_PROBE_WAIT_MS"),
        );
        if base.is_none() && wait.is_none() {
            return None;
        }
        let d = crate::flanneld::prober::ProberTiming::default();
        Some(crate::flanneld::prober::ProberTiming {
            base: base.unwrap_or(d.base),
            wait: wait.unwrap_or(d.wait),
            ..d
        })
    }

    #[cfg(debug_assertions)]
    pub(crate) async fn wrap<F>(name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if std::env::var_os("FLANNELD_TEST_FAULT_FILE").is_none() {
            return fut.await;
        }
        let (panic_line, end_line) = (format!("{name}:panic"), format!("{name}:end"));
        let faults = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if active(&panic_line) {
                    panic!("injected test fault");
                }
                if active(&end_line) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = fut => {}
            _ = faults => {}
        }
    }

    #[cfg(not(debug_assertions))]
    pub(crate) fn wrap<F>(_name: &'static str, fut: F) -> F
    where
        F: Future<Output = ()> + Send + 'static,
    {
        fut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_task_to_end_or_panic_is_named() {
        let (tasks, mut exits) = Tasks::new();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("short", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        let exit = exits.next().await;
        assert_eq!(
            exit,
            TaskExit {
                name: "short",
                how: ExitKind::Ended
            }
        );
        assert_eq!(exit.to_string(), "task short ended unexpectedly");

        tasks.spawn("boom", async { panic!("it broke") });
        let exit = exits.next().await;
        assert_eq!(exit.name, "boom");
        assert_eq!(exit.how, ExitKind::Panicked("it broke".into()));
        assert_eq!(exit.to_string(), "task boom panicked: it broke");
    }

    #[tokio::test]
    async fn dropping_the_supervisor_stops_its_tasks() {
        let (tasks, _exits) = Tasks::new();
        let (tx, mut rx) = mpsc::channel::<()>(1);
        tasks.spawn("holds-a-sender", async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(tasks);
        // The sender is dropped with the aborted task.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .is_none()
        );
    }
}
