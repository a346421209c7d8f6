//! The streaming half of a watch, shared by Nodes and Events: queued lines first, then one
//! line per broadcast message the resource's view turns into one, until the client's timeout,
//! server shutdown or a lagging receiver ends the stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{error_line, parse_rv, status_watch_response};
use crate::app::{AppState, Query, WatchGuard, lock};
use crate::errors::ApiError;

/// How one resource renders its broadcast messages as watch lines.
pub trait WatchView: Send + 'static {
    type Msg: Clone + Send + 'static;

    /// The line for `msg`, if the client gets one; `last_rv` is the newest resourceVersion
    /// delivered so far, for skipping replays and advancing the resume point.
    fn on_message(&mut self, msg: Self::Msg, last_rv: &mut u64) -> Option<Bytes>;
}

/// `timeoutSeconds`, else the server's default watch timeout.
pub fn timeout(q: &Query, default: Duration) -> Result<Duration, ApiError> {
    match q.value("timeoutSeconds") {
        Some(t) => Ok(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}"))
        })?)),
        None => Ok(default),
    }
}

/// `resourceVersion`, where the client resumes from.
pub fn resource_version(q: &Query) -> Result<Option<u64>, ApiError> {
    q.value("resourceVersion").map(parse_rv).transpose()
}

/// The answer when the watch cannot start from the requested point: upstream answers `200` and
/// delivers a `410` as the stream's one ERROR event; other errors stay errors.
pub fn start_failed(e: ApiError) -> Result<Response, ApiError> {
    if e.code == 410 {
        return Ok(status_watch_response(vec![error_line(&e)]));
    }
    Err(e)
}

pub struct Watch<V: WatchView> {
    pub pending: VecDeque<Bytes>,
    pub last_rv: u64,
    pub view: V,
    rx: broadcast::Receiver<V::Msg>,
    deadline: Instant,
    close: CancellationToken,
    _guard: WatchGuard,
}

impl<V: WatchView> Watch<V> {
    /// A watch resuming after `from`, counted as open until its stream is dropped.
    pub fn new(
        app: &Arc<AppState>,
        rx: broadcast::Receiver<V::Msg>,
        timeout: Duration,
        from: u64,
        view: V,
    ) -> Self {
        let close = lock(&app.watch_close).clone();
        Self {
            pending: VecDeque::new(),
            last_rv: from,
            view,
            rx,
            deadline: Instant::now() + timeout,
            close,
            _guard: WatchGuard::new(app.clone()),
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            tokio::select! {
                biased;
                _ = self.close.cancelled() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return None,
                msg = self.rx.recv() => match msg {
                    Ok(msg) => {
                        if let Some(line) = self.view.on_message(msg, &mut self.last_rv) {
                            return Some(line);
                        }
                    }
                    // A watcher too slow for the broadcast buffer is closed, as upstream closes
                    // slow watchers (and so is one outliving the server); the client resumes
                    // from its last resourceVersion.
                    Err(_) => return None,
                },
            }
        }
    }

    /// The streaming `200` response carrying this watch.
    pub fn into_response(self) -> Response {
        let body = futures::stream::unfold(self, |mut s| async move {
            s.next_chunk()
                .await
                .map(|b| (Ok::<Bytes, Infallible>(b), s))
        });
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
