//! Liveness from the reconciler's progress: a reconcile pass that was asked for must complete
//! within a bound, or the daemon is stuck (a netlink request that never returns, a deadlock)
//! and `/healthz` says so, so that the kubelet restarts it. Waiting for work is not stuck.

use std::time::{Duration, Instant};

/// Long enough for a full pass over thousands of peers on a loaded node; a stuck pass never
/// completes at all.
pub const DEFAULT_PASS_BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PassWatchdog {
    bound: Duration,
    /// The oldest request not yet served by a completed pass.
    pending_since: Option<Instant>,
}

/// What liveness reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// A requested pass has not completed for `pending` (longer than `bound`).
    Stuck {
        pending: Duration,
        bound: Duration,
    },
}

impl PassWatchdog {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            pending_since: None,
        }
    }

    /// A pass was asked for at `now`; an earlier unserved request keeps its time.
    pub fn requested(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// A pass completed (with or without kernel errors: it returned).
    pub fn completed(&mut self) {
        self.pending_since = None;
    }

    pub fn liveness(&self, now: Instant) -> Liveness {
        match self.pending_since {
            Some(since) if now.saturating_duration_since(since) > self.bound => Liveness::Stuck {
                pending: now.saturating_duration_since(since),
                bound: self.bound,
            },
            _ => Liveness::Alive,
        }
    }
}

impl Default for PassWatchdog {
    fn default() -> Self {
        Self::new(DEFAULT_PASS_BOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_alive_and_a_pass_pending_past_the_bound_is_stuck() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = PassWatchdog::new(s(10));
        assert_eq!(w.liveness(t0 + s(3600)), Liveness::Alive, "no request");
        w.requested(t0);
        assert_eq!(w.liveness(t0 + s(10)), Liveness::Alive, "within the bound");
        // A later request does not move the oldest one.
        w.requested(t0 + s(8));
        assert_eq!(
            w.liveness(t0 + s(11)),
            Liveness::Stuck {
                pending: s(11),
                bound: s(10)
            }
        );
        w.completed();
        assert_eq!(w.liveness(t0 + s(100)), Liveness::Alive);
        w.requested(t0 + s(100));
        assert_eq!(w.liveness(t0 + s(105)), Liveness::Alive);
    }
}
