//! `events.k8s.io/v1` Events about our own Node, where operators look first (`kubectl describe
//! node`, `kubectl get events`): annotations restored (naming who removed them), a peer
//! rejected, the datapath repaired, a peer unreachable or reachable again.
//!
//! Every part of the daemon reports through an [`Events`] handle, which never blocks and never
//! fails; the `events` task ([`EventPublisher::run`]) decides with [`Aggregator`] which
//! writes to make. The writes are the ones kube-rs' `Recorder` makes (a create, then merge
//! patches of `series`), so the same two verbs suffice; the Recorder itself is not used
//! because it writes once per occurrence and counts a series by its own writes, while here a
//! series patch carries the count of every occurrence, written or not.
//!
//! Events are optional: upstream's RBAC does not allow them. A 403 is one warning; after it,
//! occurrences are dropped (counted) and one write is tried again every 10 minutes, so granting
//! the role later takes effect without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::{EventDrop, Metrics};
use super::pure::attribution::{Attribution, FIELD_MANAGER};
use super::pure::events::{Aggregator, Key, Limits, Occurrence, Reason, Verdict, Write};

/// Events about cluster-scoped objects live here (as the kubelet's Node Events do).
pub const NAMESPACE: &str = "default";
/// The Events' `reportingController`.
pub const REPORTING_CONTROLLER: &str = FIELD_MANAGER;
/// Occurrences queued for the task at most; beyond it they are dropped (counted).
const QUEUE: usize = 256;
/// One write's bound: a hung API server must not hold the queue for long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a 403, the next attempt.
const FORBIDDEN_RETRY: Duration = Duration::from_secs(600);

/// Reports occurrences; cheap to clone. [`Events::default`] reports nowhere.
#[derive(Clone, Default)]
pub struct Events {
    inner: Option<Arc<Handle>>,
}

struct Handle {
    tx: mpsc::Sender<Occurrence>,
    node: String,
    metrics: Arc<Metrics>,
}

impl Events {
    /// A handle and the task that publishes what it reports, about Node `node`.
    pub fn new(client: Client, node: &str, metrics: Arc<Metrics>) -> (Events, EventPublisher) {
        let (events, rx) = Events::channel(node, metrics.clone());
        let publisher = EventPublisher {
            api: Api::namespaced(client, NAMESPACE),
            node: node.to_string(),
            aggregator: Aggregator::new(Limits::DAEMON, Instant::now()),
            metrics,
            rx,
            forbidden_until: None,
            said_forbidden: false,
            failing: false,
        };
        (events, publisher)
    }

    /// A handle and the receiving end of its queue.
    fn channel(node: &str, metrics: Arc<Metrics>) -> (Events, mpsc::Receiver<Occurrence>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = Events {
            inner: Some(Arc::new(Handle {
                tx,
                node: node.to_string(),
                metrics,
            })),
        };
        (events, rx)
    }

    /// Our annotations were restored `took_ms` after the difference was noticed; `summary`
    /// says what happened and by whom (the heal log line's words).
    pub fn annotations_restored(&self, by: Option<&Attribution>, summary: &str, took_ms: u64) {
        let kind = match by {
            Some(a) => format!("{}/{}", a.manager, a.operation),
            None => "unknown".into(),
        };
        self.report(
            Reason::AnnotationsRestored,
            kind,
            format!("{summary}; restored in {took_ms} ms"),
            None,
        );
    }

    /// `peer` is newly rejected (`kind` the rejection's stable name): nothing is programmed
    /// for it.
    pub fn peer_rejected(&self, peer: &str, kind: &str, reason: &str) {
        self.report(
            Reason::PeerRejected,
            format!("{peer}/{kind}"),
            format!("peer {peer} rejected: {reason}; nothing is programmed for it"),
            Some(peer),
        );
    }

    /// Kernel entries on `device` that nobody asked to change were missing or wrong and are
    /// repaired; `what` lists them.
    pub fn datapath_repaired(&self, device: &str, what: &str) {
        self.report(
            Reason::DatapathRepaired,
            device.to_string(),
            format!("{device}: {what}"),
            None,
        );
    }

    /// A peer's tunnel probe changed state: unreachable after repeated failures, or reachable
    /// again. `detail` says what was probed and what happened.
    pub fn peer_reachability(&self, peer: &str, reachable: bool, detail: &str) {
        let (reason, words) = if reachable {
            (Reason::PeerReachable, "reachable again")
        } else {
            (Reason::PeerUnreachable, "unreachable")
        };
        self.report(
            reason,
            peer.to_string(),
            format!("peer {peer} {words} through the tunnel: {detail}"),
            Some(peer),
        );
    }

    fn report(&self, reason: Reason, kind: String, note: String, related: Option<&str>) {
        let Some(h) = &self.inner else {
            return;
        };
        let occ = Occurrence {
            key: Key {
                reason,
                regarding: h.node.clone(),
                kind,
            },
            note,
            related: related.map(str::to_string),
        };
        if h.tx.try_send(occ).is_err() {
            h.metrics.count_events_dropped(EventDrop::Limit, 1);
        }
    }
}

/// The `events` task: aggregates occurrences and writes Events.
pub struct EventPublisher {
    api: Api<Event>,
    node: String,
    aggregator: Aggregator,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Occurrence>,
    /// After a 403: no write before this.
    forbidden_until: Option<Instant>,
    said_forbidden: bool,
    /// The last write failed (other than 403): said once, until one succeeds.
    failing: bool,
}

impl EventPublisher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wake = self.aggregator.next_due(Instant::now());
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                occ = self.rx.recv() => {
                    let Some(occ) = occ else {
                        // Every handle is gone: shutting down.
                        shutdown.cancelled().await;
                        return;
                    };
                    self.on_occurrence(occ).await;
                }
                _ = sleep => {
                    for w in self.aggregator.due(Instant::now()) {
                        self.write(w).await;
                    }
                }
            }
        }
    }

    async fn on_occurrence(&mut self, occ: Occurrence) {
        let now = Instant::now();
        if self.forbidden_until.is_some_and(|t| now < t) {
            self.metrics.count_events_dropped(EventDrop::Forbidden, 1);
            return;
        }
        match self.aggregator.observe(occ, now) {
            Verdict::Write(w) => self.write(w).await,
            Verdict::Aggregated => self.metrics.count_event_aggregated(),
            Verdict::Dropped => self.metrics.count_events_dropped(EventDrop::Limit, 1),
        }
    }

    async fn write(&mut self, w: Write) {
        let key = w.key().clone();
        let outcome = tokio::time::timeout(WRITE_TIMEOUT, self.send(&w)).await;
        let err = match outcome {
            Ok(Ok(carried)) => {
                if let (Write::Create { .. }, Some(name)) = (&w, carried.1) {
                    self.aggregator.created(&key, name);
                }
                self.aggregator.settled(&key, Some(carried.0));
                self.metrics.count_event_written();
                self.forbidden_until = None;
                let was_failing = std::mem::take(&mut self.failing);
                if std::mem::take(&mut self.said_forbidden) || was_failing {
                    tracing::info!(node = %self.node, "publishing Events again");
                }
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => {
                self.failed(&key, "no answer within 10 s".into());
                return;
            }
        };
        let (code, error) = match &err {
            kube::Error::Api(status) => (Some(status.code), status.message.clone()),
            other => (None, other.to_string()),
        };
        match code {
            Some(403) => {
                // Optional RBAC: say it once, drop what is pending, try again much later.
                self.aggregator.settled(&key, None);
                let lost = self.aggregator.clear();
                self.metrics
                    .count_events_dropped(EventDrop::Forbidden, lost);
                self.forbidden_until = Some(Instant::now() + FORBIDDEN_RETRY);
                if !std::mem::replace(&mut self.said_forbidden, true) {
                    tracing::warn!(
                        node = %self.node,
                        error = %error,
                        "not permitted to publish Events (events.k8s.io create/patch): no Node \
                         Events are written, everything else goes on (the optional role is \
                         deploy/kube-flannel-rs-events.yml); trying again every 10 minutes"
                    );
                } else {
                    tracing::debug!(node = %self.node, error = %error, "Events still not permitted");
                }
            }
            Some(404) if matches!(w, Write::Patch { .. }) => {
                // The Event is gone (deleted, or expired by the API server's TTL): its series
                // ends; the next occurrence creates a new one.
                let lost = self.aggregator.forget(&key);
                self.metrics.count_events_dropped(EventDrop::Error, lost);
                if code == Some(404) {
                    tracing::debug!(node = %self.node, reason = key.reason.as_str(),
                        "the Event of this series is gone; the next occurrence starts a new one");
                } else {
                    tracing::warn!(node = %self.node, reason = key.reason.as_str(), error = %error,
                        "the API refused an Event write; its series ends, the next occurrence starts a new one");
                }
            }
            _ => self.failed(&key, error),
        }
    }

    fn failed(&mut self, key: &Key, error: String) {
        self.aggregator.settled(key, None);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(node = %self.node, reason = key.reason.as_str(), error = %error,
                "publishing an Event failed; retrying with the next write of its series");
        } else {
            tracing::debug!(node = %self.node, reason = key.reason.as_str(), error = %error,
                "publishing an Event failed");
        }
    }

    /// One API write: the count it carried, and the created Event's name.
    async fn send(&self, w: &Write) -> Result<(u32, Option<String>), kube::Error> {
        match w {
            Write::Create { key, note, related } => {
                let event = self.new_event(key, note, related.as_deref());
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                let created = self.api.create(&params, &event).await?;
                Ok((1, created.metadata.name.or(event.metadata.name)))
            }
            Write::Patch {
                name,
                count,
                last_observed,
                ..
            } => {
                let ago = Instant::now().saturating_duration_since(*last_observed);
                let at = Timestamp::now()
                    .checked_sub(ago)
                    .unwrap_or(Timestamp::now());
                let patch = json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(at)},
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                self.api.patch(name, &params, &Patch::Merge(&patch)).await?;
                Ok((*count, None))
            }
        }
    }

    fn new_event(&self, key: &Key, note: &str, related: Option<&str>) -> Event {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                // Unique per create, as client-go and kube-rs name them.
                name: Some(format!("{}.{:x}", key.regarding, now.as_nanosecond())),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            reason: Some(key.reason.as_str().into()),
            action: Some(key.reason.action().into()),
            note: Some(note.into()),
            type_: Some(
                if key.reason.is_warning() {
                    "Warning"
                } else {
                    "Normal"
                }
                .into(),
            ),
            regarding: Some(node_ref(&key.regarding)),
            related: related.map(node_ref),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            // The API allows 128 characters; node names may be longer.
            reporting_instance: Some(
                format!("{REPORTING_CONTROLLER}-{}", self.node)
                    .chars()
                    .take(128)
                    .collect(),
            ),
            ..Event::default()
        }
    }
}

/// A Node as the kubelet refers to it in Events: uid = name, which is what `kubectl describe
/// node` searches for.
fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(rx: &mut mpsc::Receiver<Occurrence>) -> Occurrence {
        rx.try_recv().expect("an occurrence")
    }

    #[test]
    fn each_report_is_keyed_by_what_makes_it_the_same_event() {
        let metrics = Arc::new(Metrics::new());
        let (events, mut rx) = Events::channel("n1", metrics.clone());

        events.peer_reachability("n2", false, "3 ICMP probes to 10.244.2.0 unanswered");
        let o = one(&mut rx);
        assert_eq!(o.key.reason, Reason::PeerUnreachable);
        assert_eq!(
            (o.key.regarding.as_str(), o.key.kind.as_str()),
            ("n1", "n2")
        );
        assert_eq!(o.related.as_deref(), Some("n2"));
        assert_eq!(
            o.note,
            "peer n2 unreachable through the tunnel: 3 ICMP probes to 10.244.2.0 unanswered"
        );
        events.peer_reachability("n2", true, "answered in 0.3 ms");
        let o = one(&mut rx);
        assert_eq!(o.key.reason, Reason::PeerReachable);
        assert!(!o.key.reason.is_warning());

        events.peer_rejected("evil", "bad_public_ip", "IPv4 public IP is ours");
        let o = one(&mut rx);
        assert_eq!(o.key.kind, "evil/bad_public_ip");
        assert_eq!(
            o.note,
            "peer evil rejected: IPv4 public IP is ours; nothing is programmed for it"
        );

        events.annotations_restored(None, "flannel annotations were missing", 3);
        let o = one(&mut rx);
        assert_eq!(o.key.kind, "unknown");
        assert_eq!(o.note, "flannel annotations were missing; restored in 3 ms");

        events.datapath_repaired(
            "flannel.1",
            "restored missing route 10.244.2.0/24 via 10.244.2.0",
        );
        assert_eq!(one(&mut rx).key.kind, "flannel.1");
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_default_handle_reports_nowhere() {
        let metrics = Arc::new(Metrics::new());
        let (events, _rx) = Events::channel("n1", metrics.clone());
        for _ in 0..QUEUE + 3 {
            events.datapath_repaired("flannel.1", "x");
        }
        assert_eq!(metrics.event_counts(), (0, 0, 3));
        Events::default().datapath_repaired("flannel.1", "x");
    }

    #[test]
    fn nodes_are_referred_to_as_the_kubelet_does() {
        let r = node_ref("n1");
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.uid.as_deref(), Some("n1"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert!(r.namespace.is_none());
    }
}
