//! The health server: `/healthz` (liveness) answers from the daemon's first moment and fails
//! once a requested reconcile pass is stuck (see [`PassWatchdog`]), `/readyz`
//! turns 200 once the lease is known and the first full reconcile is done, `/metrics` exposes
//! counters, and `/status` explains the daemon's view in one JSON document.
//!
//! Upstream starts its health server only after the node informer synced, so a long initial
//! list can get the pod killed by its liveness probe; we bind before anything else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio_util::sync::CancellationToken;

use super::pure::watchdog::{Liveness, PassWatchdog};

/// Renders a document on demand (metrics text, status JSON).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What the health endpoints report; shared with the daemon's tasks.
pub struct HealthState {
    ready: AtomicBool,
    watchdog: SharedWatchdog,
    metrics: Render,
    status: Render,
}

impl HealthState {
    pub fn new(metrics: Render, status: Render) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            watchdog: Arc::new(Mutex::new(PassWatchdog::default())),
            metrics,
            status,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The reconciler's watchdog, which `/healthz` consults.
    pub fn watchdog(&self) -> SharedWatchdog {
        self.watchdog.clone()
    }

    pub fn liveness(&self) -> Liveness {
        self.watchdog
            .lock()
            .map(|w| w.liveness(Instant::now()))
            .unwrap_or(Liveness::Alive)
    }
}

/// The reconciler marks requests and completed passes; the health server reads.
pub type SharedWatchdog = Arc<Mutex<PassWatchdog>>;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("listen on {addr} for the health server: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the listener now (so a port conflict is a start-up error) and returns the bound
/// address and a future that serves until `shutdown` is cancelled.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<HealthState>,
    shutdown: CancellationToken,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    HealthError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    let app = router(state);
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    };
    Ok((bound, serve))
}

/// Upstream answers exact paths with any method; so do we.
fn router(state: Arc<HealthState>) -> Router {
    let live_state = state.clone();
    let ready_state = state.clone();
    let metrics_state = state.clone();
    let status_state = state;
    Router::new()
        .route(
            "/healthz",
            any(move || {
                let state = live_state.clone();
                async move {
                    match state.liveness() {
                        Liveness::Alive => (StatusCode::OK, "flanneld is running".to_string()),
                        Liveness::Stuck { pending, bound } => {
                            tracing::error!(
                                pending_ms = pending.as_millis() as u64,
                                bound_ms = bound.as_millis() as u64,
                                "a requested reconcile pass has not completed; unhealthy"
                            );
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!(
                                    "flanneld is stuck: a reconcile pass requested {} ms ago has not completed (bound {} ms)",
                                    pending.as_millis(),
                                    bound.as_millis()
                                ),
                            )
                        }
                    }
                    .into_response()
                }
            }),
        )
        .route(
            "/readyz",
            any(move || {
                let state = ready_state.clone();
                async move {
                    if state.is_ready() {
                        (StatusCode::OK, "flanneld is ready").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "flanneld is not ready yet")
                            .into_response()
                    }
                }
            }),
        )
        .route(
            "/metrics",
            any(move || {
                let state = metrics_state.clone();
                async move { text((state.metrics)(), "text/plain; version=0.0.4") }
            }),
        )
        .route(
            "/status",
            any(move || {
                let state = status_state.clone();
                async move { text((state.status)(), "application/json") }
            }),
        )
}

fn text(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_follows_state_and_liveness_follows_the_watchdog() {
        let state = HealthState::new(
            Arc::new(|| "flanneld_heals_total 3\n".to_string()),
            Arc::new(|| "{\"node\":\"n1\"}".to_string()),
        );
        let token = CancellationToken::new();
        let (addr, serve) = bind("127.0.0.1:0".parse().unwrap(), state.clone(), token.clone())
            .await
            .unwrap();
        let server = tokio::spawn(serve);

        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        assert!(live.ends_with("flanneld is running"), "{live}");

        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.ends_with("flanneld is not ready yet"));

        state.set_ready(true);
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

        assert!(
            get(addr, "/metrics")
                .await
                .ends_with("flanneld_heals_total 3\n")
        );
        assert!(get(addr, "/status").await.ends_with("{\"node\":\"n1\"}"));

        // A pass requested longer ago than the bound and not completed: unhealthy.
        let watchdog = state.watchdog();
        *watchdog.lock().unwrap() = PassWatchdog::new(std::time::Duration::from_millis(1));
        watchdog.lock().unwrap().requested(Instant::now());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let stuck = get(addr, "/healthz").await;
        assert!(stuck.starts_with("HTTP/1.1 503"), "{stuck}");
        assert!(stuck.contains("reconcile pass"), "{stuck}");
        watchdog.lock().unwrap().completed();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        token.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let state = HealthState::new(Arc::new(String::new), Arc::new(String::new));
        let err = match bind(addr, state, CancellationToken::new()).await {
            Err(e) => e,
            Ok(_) => panic!("bind on a taken port succeeded"),
        };
        assert!(err.to_string().contains("health server"), "{err}");
    }
}
