//! Fault injection rules and the append-only request log of the admin API.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::auth::RequestInfo;
use crate::errors::ApiError;
pub use kube_testserver::{Fault, LogEntry};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    pub id: u64,
    #[serde(flatten)]
    pub spec: Fault,
    /// Requests this rule still applies to (absent = unlimited).
    pub remaining: Option<u64>,
    pub hits: u64,
}

/// What the middleware must do to a request.
pub struct FaultAction {
    pub delay: Option<Duration>,
    pub error: Option<ApiError>,
}

#[derive(Default)]
pub struct FaultTable {
    next_id: u64,
    pub rules: Vec<FaultRule>,
}

/// Whether `spec` applies to this request.
fn matches(
    spec: &Fault,
    method: &str,
    path: &str,
    info: &RequestInfo,
    identity: Option<&str>,
) -> bool {
    let verb_ok = match spec.verb.as_deref() {
        None | Some("*") => true,
        Some(v) => v.eq_ignore_ascii_case(&info.verb) || v.eq_ignore_ascii_case(method),
    };
    verb_ok
        && spec.resource.as_deref().is_none_or(|r| r == info.resource)
        && spec
            .name
            .as_deref()
            .is_none_or(|n| info.name.as_deref() == Some(n))
        && spec
            .path_prefix
            .as_deref()
            .is_none_or(|p| path.starts_with(p))
        && spec.identity.as_deref().is_none_or(|i| identity == Some(i))
}

fn injected_error(spec: &Fault, info: &RequestInfo, code: u16) -> ApiError {
    let name = info.name.clone().unwrap_or_default();
    let resource = info.resource.split('/').next().unwrap_or("").to_string();
    let mut err = match code {
        409 => ApiError::conflict(
            &resource,
            &name,
            "injected conflict (kube-testserver fault)",
        ),
        429 => ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
        500 => ApiError::internal("injected fault (kube-testserver)"),
        503 => ApiError::new(
            503,
            "ServiceUnavailable",
            "injected fault: service unavailable",
        ),
        504 => ApiError::new(504, "Timeout", "injected fault: timeout"),
        410 => ApiError::expired("injected fault: resource version expired"),
        404 => ApiError::not_found(&resource, &name),
        403 => ApiError::new(403, "Forbidden", "injected fault: forbidden"),
        other => ApiError::new(
            other,
            "Unknown",
            format!("injected fault with code {other}"),
        ),
    };
    if let Some(m) = &spec.message {
        err.message = m.clone();
    }
    if let Some(secs) = spec.retry_after_seconds {
        err.retry_after_seconds = Some(secs);
    } else if code == 429 {
        err.retry_after_seconds = Some(1);
    }
    err
}

impl FaultTable {
    pub fn add(&mut self, spec: Fault) -> u64 {
        self.next_id += 1;
        self.rules.push(FaultRule {
            id: self.next_id,
            remaining: spec.count,
            spec,
            hits: 0,
        });
        self.next_id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        self.rules.len() != before
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The first live rule matching the request applies (and uses up one of its count).
    pub fn check(
        &mut self,
        method: &str,
        path: &str,
        info: &RequestInfo,
        identity: Option<&str>,
    ) -> Option<FaultAction> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.remaining != Some(0) && matches(&r.spec, method, path, info, identity))?;
        rule.hits += 1;
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(FaultAction {
            delay: rule.spec.delay_ms.map(Duration::from_millis),
            error: rule.spec.code.map(|c| injected_error(&rule.spec, info, c)),
        })
    }
}

/// Append-only, capped: beyond `cap` entries the oldest are dropped and counted.
pub struct RequestLog {
    next_seq: u64,
    cap: usize,
    pub dropped: u64,
    pub entries: VecDeque<LogEntry>,
}

pub const MAX_LOGGED_BODY: usize = 1024 * 1024;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RequestLog {
    pub fn new(cap: usize) -> Self {
        Self {
            next_seq: 1,
            cap: cap.max(1),
            dropped: 0,
            entries: VecDeque::new(),
        }
    }

    pub fn push(&mut self, mut entry: LogEntry) -> u64 {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(entry);
        while self.entries.len() > self.cap {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.next_seq - 1
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Resets the log; sequence numbers keep increasing so `since` cursors stay valid.
    pub fn reset(&mut self) {
        self.entries.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn info(method: &str, path: &str) -> RequestInfo {
        RequestInfo::parse(method, path, &HashMap::new())
    }

    #[test]
    fn counted_rules_expire_and_match_fields() {
        let mut t = FaultTable::default();
        t.add(Fault {
            verb: Some("patch".into()),
            resource: Some("nodes/status".into()),
            count: Some(2),
            code: Some(429),
            ..Default::default()
        });
        let p = "/api/v1/nodes/n1/status";
        assert!(
            t.check("GET", p, &info("GET", "/api/v1/nodes/n1"), None)
                .is_none()
        );
        for _ in 0..2 {
            let a = t
                .check("PATCH", p, &info("PATCH", p), Some("flannel"))
                .unwrap();
            let e = a.error.unwrap();
            assert_eq!(
                (e.code, e.reason, e.retry_after_seconds),
                (429, "TooManyRequests", Some(1))
            );
        }
        assert!(
            t.check("PATCH", p, &info("PATCH", p), Some("flannel"))
                .is_none()
        );
        assert_eq!(t.rules[0].hits, 2);
    }

    #[test]
    fn unlimited_latency_rule_and_identity_filter() {
        let mut t = FaultTable::default();
        let id = t.add(Fault {
            delay_ms: Some(50),
            identity: Some("flannel".into()),
            ..Default::default()
        });
        let p = "/api/v1/nodes";
        assert!(t.check("GET", p, &info("GET", p), Some("admin")).is_none());
        for _ in 0..5 {
            let a = t.check("GET", p, &info("GET", p), Some("flannel")).unwrap();
            assert_eq!(a.delay, Some(Duration::from_millis(50)));
            assert!(a.error.is_none());
        }
        assert!(t.remove(id));
        assert!(
            t.check("GET", p, &info("GET", p), Some("flannel"))
                .is_none()
        );
    }

    #[test]
    fn validation() {
        assert!(Fault::default().validate().is_err());
        assert!(
            Fault {
                code: Some(200),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Fault {
                code: Some(503),
                count: Some(0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Fault {
                code: Some(503),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn log_is_capped_and_sequenced() {
        let mut log = RequestLog::new(2);
        let e = LogEntry {
            seq: 0,
            time_ms: 0,
            method: "GET".into(),
            path: "/".into(),
            content_type: None,
            body: None,
            code: 200,
            identity: None,
            user: None,
            verb: "get".into(),
            resource: String::new(),
            name: None,
            injected: false,
        };
        for _ in 0..3 {
            log.push(e.clone());
        }
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.dropped, 1);
        assert_eq!(log.entries[0].seq, 2);
        log.reset();
        assert_eq!(log.push(e), 4);
    }
}
