//! Shared server state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::faults::{FaultTable, RequestLog};
use crate::store::Store;

pub struct Settings {
    pub bookmark_interval: Duration,
    /// Server-side watch timeout when the client sends no timeoutSeconds.
    pub default_watch_timeout: Duration,
    pub public_addr: Mutex<String>,
}

pub struct ChurnState {
    pub per_second: f64,
    pub task: JoinHandle<()>,
}

pub struct AppState {
    pub store: Mutex<Store>,
    pub identities: Vec<Identity>,
    pub faults: Mutex<FaultTable>,
    pub log: Mutex<RequestLog>,
    /// Cancelled (and replaced) to close every open watch.
    pub watch_close: Mutex<CancellationToken>,
    pub open_watches: AtomicUsize,
    /// Pods by (namespace, name): flannel only ever GETs its own pod.
    pub pods: Mutex<BTreeMap<(String, String), Value>>,
    pub settings: Settings,
    pub outage_tx: mpsc::UnboundedSender<Duration>,
    pub outage_until: Mutex<Option<Instant>>,
    pub churn: Mutex<Option<ChurnState>>,
}

/// Locks a mutex, recovering from poisoning (a panicking handler must not wedge the server).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements the open-watch counter when a watch stream ends.
pub struct WatchGuard(pub Arc<AppState>);

impl WatchGuard {
    pub fn new(app: Arc<AppState>) -> Self {
        app.open_watches.fetch_add(1, Ordering::SeqCst);
        Self(app)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Query-string parameters (last occurrence wins), percent-decoded.
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(percent_decode(k), percent_decode(v));
        }
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A non-empty value.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "labelSelector=a%3Db%2Cc+in+(x)&watch=1&fieldSelector=metadata.name%3Dn1&x=%zz&y",
        ));
        assert_eq!(q.get("labelSelector"), Some("a=b,c in (x)"));
        assert_eq!(q.get("fieldSelector"), Some("metadata.name=n1"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("y"), Some(""));
        assert_eq!(q.value("y"), None);
    }
}
