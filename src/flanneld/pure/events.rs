//! Which Kubernetes Event writes to make, and when (pure: the caller passes the time).
//!
//! Something that repeats — a controller clobbering our annotations every second, a flapping
//! peer — must cost a handful of API writes a minute, never one per occurrence. Occurrences
//! with the same [`Key`] (reason, the object they regard, the kind of note) within
//! [`Limits::series_ttl`] of each other are one Event: the first is created at once, later ones
//! only raise its `series.count`, written back at most once per [`Limits::per_key`]. Every
//! write, create or patch, also takes a token from one bucket ([`Limits::burst`] tokens, one
//! more per [`Limits::refill`]), so many distinct keys cannot flood the API either. Nothing
//! is lost while it waits: a series patch carries the count of every occurrence so far.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why an Event is written (its `reason`, `action` and `type` follow from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Our Node's flannel annotations were removed or changed, and we restored them.
    AnnotationsRestored,
    /// A peer Node is not programmed (invalid or conflicting annotations).
    PeerRejected,
    /// Kernel entries the API did not ask to change were missing or wrong, and were repaired.
    DatapathRepaired,
    /// A programmed peer stopped answering through the tunnel.
    PeerUnreachable,
    /// A peer that was unreachable answers again.
    PeerReachable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AnnotationsRestored => "AnnotationsRestored",
            Reason::PeerRejected => "PeerRejected",
            Reason::DatapathRepaired => "DatapathRepaired",
            Reason::PeerUnreachable => "PeerUnreachable",
            Reason::PeerReachable => "PeerReachable",
        }
    }

    /// What flanneld did (the Event's `action`).
    pub fn action(self) -> &'static str {
        match self {
            Reason::AnnotationsRestored => "RestoreAnnotations",
            Reason::PeerRejected => "SelectPeers",
            Reason::DatapathRepaired => "Reconcile",
            Reason::PeerUnreachable | Reason::PeerReachable => "ProbePeer",
        }
    }

    /// `Warning`, or `Normal` for a recovery.
    pub fn is_warning(self) -> bool {
        self != Reason::PeerReachable
    }
}

/// What makes occurrences the same Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub reason: Reason,
    /// The Node the Event is about (ours).
    pub regarding: String,
    /// The kind of note: who clobbered, which peer and why, which device. Occurrences that
    /// differ only in details (a heal's duration) share it.
    pub kind: String,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub key: Key,
    /// Human-readable, at most [`MAX_NOTE`] bytes once written (longer notes are cut). An
    /// Event keeps the note of the occurrence that created it.
    pub note: String,
    /// A second Node involved (the peer), the Event's `related`.
    pub related: Option<String>,
}

/// The API's limit on `note`.
pub const MAX_NOTE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Least time between two writes of the same Event.
    pub per_key: Duration,
    /// Writes allowed at once across all Events.
    pub burst: u32,
    /// One more write allowed per this long, up to `burst`.
    pub refill: Duration,
    /// A series ends after this long without an occurrence; the next one is a new Event
    /// (client-go and kube-rs use 6 minutes).
    pub series_ttl: Duration,
    /// Series tracked at once; an occurrence of a new key beyond this is dropped.
    pub max_keys: usize,
}

impl Limits {
    /// The daemon's: per Event at most 4 writes a minute; all together a burst of 10, then
    /// 10 a minute.
    pub const DAEMON: Limits = Limits {
        per_key: Duration::from_secs(15),
        burst: 10,
        refill: Duration::from_secs(6),
        series_ttl: Duration::from_secs(360),
        max_keys: 512,
    };

    /// The most writes one key can cause over `window` (its create included): the bound a
    /// storm of occurrences of that key stays under.
    pub fn max_writes_per_key(&self, window: Duration) -> u64 {
        let per = self.per_key.as_nanos().max(1);
        1 + window.as_nanos().div_ceil(per) as u64
    }
}

/// A write the caller should make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event (`series` unset): call [`Aggregator::created`] with its name afterwards.
    Create {
        key: Key,
        note: String,
        related: Option<String>,
    },
    /// Raise an existing Event's series to `count` (≥ 2) as of `last_observed`. The note
    /// stays the first occurrence's (the API does not let it change).
    Patch {
        key: Key,
        name: String,
        count: u32,
        last_observed: Instant,
    },
}

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Create { key, .. } | Write::Patch { key, .. } => key,
        }
    }
}

/// What became of an occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write this now.
    Write(Write),
    /// Counted into its series; a later [`Aggregator::due`] writes the count.
    Aggregated,
    /// Too many series at once: not counted anywhere.
    Dropped,
}

#[derive(Debug, Clone)]
struct Series {
    note: String,
    related: Option<String>,
    /// Occurrences so far.
    count: u32,
    /// The count the API holds (0: not created yet).
    written: u32,
    /// The created Event's name.
    name: Option<String>,
    /// A write of this series is in flight (no second one until it is settled).
    in_flight: bool,
    last_write: Option<Instant>,
    last_seen: Instant,
}

#[derive(Debug, Clone)]
pub struct Aggregator {
    limits: Limits,
    series: HashMap<Key, Series>,
    tokens: u32,
    /// When the bucket last gained a token (or was full).
    refilled: Instant,
}

impl Aggregator {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            series: HashMap::new(),
            tokens: limits.burst,
            refilled: now,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Records an occurrence at `now`.
    pub fn observe(&mut self, occ: Occurrence, now: Instant) -> Verdict {
        self.expire(now);
        let Occurrence { key, note, related } = occ;
        if !self.series.contains_key(&key) && self.series.len() >= self.limits.max_keys {
            return Verdict::Dropped;
        }
        let s = self.series.entry(key.clone()).or_insert_with(|| Series {
            note: String::new(),
            related: None,
            count: 0,
            written: 0,
            name: None,
            in_flight: false,
            last_write: None,
            last_seen: now,
        });
        s.count = s.count.saturating_add(1);
        s.note = note;
        s.related = related;
        s.last_seen = now;
        match self.write_if_due(&key, now) {
            Some(w) => Verdict::Write(w),
            None => Verdict::Aggregated,
        }
    }

    /// The writes that are due at `now`: series with occurrences the API has not seen yet
    /// whose per-key interval has passed, while tokens last (oldest key first, so a busy key
    /// cannot starve the others).
    pub fn due(&mut self, now: Instant) -> Vec<Write> {
        self.expire(now);
        let mut keys: Vec<(Instant, Key)> = self
            .series
            .iter()
            .filter(|(_, s)| s.count > s.written && !s.in_flight)
            .map(|(k, s)| (s.last_write.unwrap_or(s.last_seen), k.clone()))
            .collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|(_, k)| self.write_if_due(&k, now))
            .collect()
    }

    /// When [`Aggregator::due`] may next return something (`None`: nothing is pending).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let token_at = if self.tokens > 0 {
            now
        } else {
            self.refilled + self.limits.refill
        };
        self.series
            .values()
            .filter(|s| s.count > s.written && !s.in_flight)
            .map(|s| {
                let key_at = s.last_write.map_or(now, |t| t + self.limits.per_key);
                key_at.max(token_at)
            })
            .min()
    }

    /// The Event `key`'s create succeeded under `name`.
    pub fn created(&mut self, key: &Key, name: String) {
        if let Some(s) = self.series.get_mut(key) {
            s.name = Some(name);
        }
    }

    /// The write for `key` ended; `written` is the count it carried when the API accepted it,
    /// `None` when it failed (the occurrences stay pending and are tried again later).
    pub fn settled(&mut self, key: &Key, written: Option<u32>) {
        if let Some(s) = self.series.get_mut(key) {
            s.in_flight = false;
            if let Some(n) = written {
                s.written = s.written.max(n);
            } else if s.name.is_none() {
                // A failed create: the next write creates again.
                s.written = 0;
            }
        }
    }

    /// Forgets every series (Events are not permitted): returns the occurrences that were
    /// never written.
    pub fn clear(&mut self) -> u64 {
        let lost = self.series.values().map(unwritten).sum();
        self.series.clear();
        lost
    }

    /// Ends `key`'s series (its Event is gone): returns its occurrences never written.
    pub fn forget(&mut self, key: &Key) -> u64 {
        self.series.remove(key).map_or(0, |s| unwritten(&s))
    }

    /// Series tracked now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.limits.series_ttl;
        // A series with unwritten occurrences is kept until they are written.
        self.series.retain(|_, s| {
            s.in_flight || s.count > s.written || now.saturating_duration_since(s.last_seen) < ttl
        });
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.limits.burst {
            self.refilled = now;
            return;
        }
        let per = self.limits.refill.as_nanos().max(1);
        let gained = now.saturating_duration_since(self.refilled).as_nanos() / per;
        if gained > 0 {
            let gained = u32::try_from(gained).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(gained).min(self.limits.burst);
            self.refilled += self.limits.refill * gained.min(self.limits.burst);
            if self.tokens >= self.limits.burst {
                self.refilled = now;
            }
        }
    }

    fn write_if_due(&mut self, key: &Key, now: Instant) -> Option<Write> {
        self.refill(now);
        let per_key = self.limits.per_key;
        let s = self.series.get_mut(key)?;
        let key_ready = !s.in_flight
            && s.count > s.written
            && s.last_write
                .is_none_or(|t| now.saturating_duration_since(t) >= per_key);
        if !key_ready || self.tokens == 0 {
            return None;
        }
        self.tokens -= 1;
        s.in_flight = true;
        s.last_write = Some(now);
        Some(match &s.name {
            // The create counts one occurrence; a later patch carries the rest.
            None => Write::Create {
                key: key.clone(),
                note: truncate(&s.note, MAX_NOTE),
                related: s.related.clone(),
            },
            Some(name) => Write::Patch {
                key: key.clone(),
                name: name.clone(),
                count: s.count,
                last_observed: s.last_seen,
            },
        })
    }
}

fn unwritten(s: &Series) -> u64 {
    u64::from(s.count.saturating_sub(s.written))
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(reason: Reason, kind: &str) -> Occurrence {
        Occurrence {
            key: Key {
                reason,
                regarding: "n1".into(),
                kind: kind.into(),
            },
            note: format!("{kind} happened"),
            related: None,
        }
    }

    const LIMITS: Limits = Limits {
        per_key: Duration::from_secs(15),
        burst: 3,
        refill: Duration::from_secs(6),
        series_ttl: Duration::from_secs(360),
        max_keys: 4,
    };

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    /// Runs one key's writes as the publisher would, all succeeding; returns (creates, patches,
    /// the last count written).
    fn settle_all(a: &mut Aggregator, writes: Vec<Write>, stats: &mut (u32, u32, u32)) {
        for w in writes {
            match w {
                Write::Create { key, .. } => {
                    stats.0 += 1;
                    a.created(&key, format!("ev-{}", key.kind));
                    a.settled(&key, Some(1));
                    stats.2 = stats.2.max(1);
                }
                Write::Patch { key, count, .. } => {
                    stats.1 += 1;
                    assert!(count >= 2);
                    a.settled(&key, Some(count));
                    stats.2 = count;
                }
            }
        }
    }

    #[test]
    fn the_first_occurrence_is_created_at_once() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let v = a.observe(occ(Reason::AnnotationsRestored, "rancher"), t0);
        let Verdict::Write(Write::Create { key, note, .. }) = v else {
            panic!("{v:?}")
        };
        assert_eq!(key.reason, Reason::AnnotationsRestored);
        assert_eq!(note, "rancher happened");
        assert_eq!(a.next_due(t0), None, "nothing else pending");
    }

    #[test]
    fn a_storm_of_one_key_is_a_few_writes_and_its_count_is_exact() {
        // 100 occurrences in 10 s, then time for the last series patch.
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let mut stats = (0, 0, 0);
        for i in 0..100 {
            let now = secs(t0, f64::from(i) * 0.1);
            if let Verdict::Write(w) = a.observe(occ(Reason::AnnotationsRestored, "rancher"), now) {
                settle_all(&mut a, vec![w], &mut stats);
            }
            let due = a.due(now);
            settle_all(&mut a, due, &mut stats);
        }
        let mut now = secs(t0, 10.0);
        while let Some(at) = a.next_due(now) {
            now = at;
            let due = a.due(now);
            settle_all(&mut a, due, &mut stats);
        }
        assert_eq!(stats.0, 1, "one Event");
        assert_eq!(stats.2, 100, "its series counts every occurrence");
        let window = now - t0;
        assert!(u64::from(stats.0 + stats.1) <= LIMITS.max_writes_per_key(window));
        assert!(stats.1 <= 2, "{stats:?} in {window:?}");
    }

    #[test]
    fn different_kinds_are_different_events() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        assert!(matches!(
            a.observe(occ(Reason::AnnotationsRestored, "rancher"), t0),
            Verdict::Write(Write::Create { .. })
        ));
        assert!(matches!(
            a.observe(occ(Reason::AnnotationsRestored, "kubectl"), t0),
            Verdict::Write(Write::Create { .. })
        ));
        assert!(matches!(
            a.observe(occ(Reason::PeerRejected, "rancher"), t0),
            Verdict::Write(Write::Create { .. })
        ));
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn the_global_bucket_bounds_many_keys_and_refills() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let mut writes = 0;
        for i in 0..4 {
            if let Verdict::Write(w) = a.observe(occ(Reason::PeerRejected, &format!("p{i}")), t0) {
                a.created(w.key(), "x".into());
                a.settled(w.key(), Some(1));
                writes += 1;
            }
        }
        assert_eq!(writes, 3, "burst");
        // The fourth waits for a token, not for its key.
        assert_eq!(a.next_due(t0), Some(t0 + LIMITS.refill));
        assert!(a.due(secs(t0, 5.9)).is_empty());
        let due = a.due(secs(t0, 6.0));
        assert!(
            matches!(&due[..], [Write::Create { key, .. }] if key.kind == "p3"),
            "{due:?}"
        );
    }

    #[test]
    fn too_many_series_drop_new_keys_but_count_known_ones() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        for i in 0..4 {
            a.observe(occ(Reason::PeerRejected, &format!("p{i}")), t0);
        }
        assert_eq!(
            a.observe(occ(Reason::PeerRejected, "p9"), t0),
            Verdict::Dropped
        );
        assert_ne!(
            a.observe(occ(Reason::PeerRejected, "p0"), t0),
            Verdict::Dropped
        );
    }

    #[test]
    fn a_quiet_series_ends_and_the_next_occurrence_is_a_new_event() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let Verdict::Write(w) = a.observe(occ(Reason::PeerUnreachable, "n2"), t0) else {
            panic!()
        };
        a.created(w.key(), "ev1".into());
        a.settled(w.key(), Some(1));
        let later = t0 + LIMITS.series_ttl + Duration::from_secs(1);
        assert!(matches!(
            a.observe(occ(Reason::PeerUnreachable, "n2"), later),
            Verdict::Write(Write::Create { .. })
        ));
    }

    #[test]
    fn a_patch_waits_for_its_key_interval_and_carries_the_count() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let o = || occ(Reason::AnnotationsRestored, "rancher");
        let Verdict::Write(w) = a.observe(o(), t0) else {
            panic!()
        };
        a.created(w.key(), "ev1".into());
        a.settled(w.key(), Some(1));
        assert_eq!(a.observe(o(), secs(t0, 1.0)), Verdict::Aggregated);
        assert_eq!(a.observe(o(), secs(t0, 2.0)), Verdict::Aggregated);
        assert_eq!(a.next_due(secs(t0, 2.0)), Some(t0 + LIMITS.per_key));
        let due = a.due(t0 + LIMITS.per_key);
        let [
            Write::Patch {
                name,
                count,
                last_observed,
                ..
            },
        ] = &due[..]
        else {
            panic!("{due:?}")
        };
        assert_eq!((name.as_str(), *count), ("ev1", 3));
        assert_eq!(*last_observed, secs(t0, 2.0));
    }

    #[test]
    fn a_failed_write_is_retried_later_and_a_failed_create_creates_again() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let o = || occ(Reason::DatapathRepaired, "flannel.1");
        let Verdict::Write(w) = a.observe(o(), t0) else {
            panic!()
        };
        a.settled(w.key(), None);
        assert_eq!(a.next_due(t0), Some(t0 + LIMITS.per_key));
        let due = a.due(t0 + LIMITS.per_key);
        assert!(matches!(&due[..], [Write::Create { .. }]), "{due:?}");
    }

    #[test]
    fn clearing_reports_what_was_not_written() {
        let t0 = Instant::now();
        let mut a = Aggregator::new(LIMITS, t0);
        let o = || occ(Reason::AnnotationsRestored, "rancher");
        let Verdict::Write(w) = a.observe(o(), t0) else {
            panic!()
        };
        a.settled(w.key(), None);
        a.observe(o(), t0);
        assert_eq!(a.clear(), 2);
        assert_eq!(a.next_due(t0), None);
        assert!(a.is_empty());
    }

    #[test]
    fn the_per_key_bound_is_what_the_limits_allow() {
        let l = Limits::DAEMON;
        assert_eq!(l.max_writes_per_key(Duration::ZERO), 1);
        assert_eq!(l.max_writes_per_key(Duration::from_secs(15)), 2);
        assert_eq!(l.max_writes_per_key(Duration::from_secs(16)), 3);
        assert_eq!(l.max_writes_per_key(Duration::from_secs(60)), 5);
    }

    #[test]
    fn notes_are_cut_at_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(MAX_NOTE);
        let cut = truncate(&long, MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE && cut.len() >= MAX_NOTE - 1);
        assert_eq!(truncate("short", MAX_NOTE), "short");
    }
}
