//! The health server: `/healthz` (liveness) answers from the daemon's first moment and fails
//! once a requested reconcile pass is stuck (see [`PassWatchdog`]), `/readyz` answers the
//! readiness rule ([`Gates::verdict`]: 503 with what it waits for, one line each, until the
//! lease, the datapath, the traffic rules, subnet.env and the annotations are in place),
//! `/metrics` exposes counters. The health port (reachable from pods) serves only those;
//! `/status`, the daemon's view in one JSON document with every peer's addresses, is served on
//! the private socket. Both cap their connections and the time a client may take to send its
//! headers.
//!
//! Upstream starts its health server only after the node informer synced, so a long initial
//! list can get the pod killed by its liveness probe; we bind before anything else.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::pure::readiness::{Gates, Verdict};
use super::pure::watchdog::{Liveness, PassWatchdog};
use super::status_socket::{self, SocketError, StatusSocket};

/// Renders a document on demand (metrics text, status JSON).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What the health endpoints report; shared with the daemon's tasks.
pub struct HealthState {
    readiness: Readiness,
    watchdog: SharedWatchdog,
    metrics: Render,
    status: Render,
}

impl HealthState {
    pub fn new(metrics: Render, status: Render, readiness: Readiness) -> Arc<Self> {
        Arc::new(Self {
            readiness,
            watchdog: Arc::new(Mutex::new(PassWatchdog::default())),
            metrics,
            status,
        })
    }

    /// The gates the daemon's tasks report into; `/readyz` answers their verdict.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
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

/// The shared readiness [`Gates`]: every task updates its own gate, the health server and the
/// daemon's start-up sequence read (and wait on) them.
#[derive(Clone)]
pub struct Readiness(watch::Sender<Gates>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(watch::Sender::new(Gates::default()))
    }
}

impl Readiness {
    /// Changes the gates; waiters wake only when something changed.
    pub fn update(&self, f: impl FnOnce(&mut Gates)) {
        self.0.send_if_modified(|g| {
            let before = g.clone();
            f(g);
            *g != before
        });
    }

    pub fn gates(&self) -> Gates {
        self.0.borrow().clone()
    }

    pub fn verdict(&self) -> Verdict {
        self.0.borrow().verdict()
    }

    pub fn subscribe(&self) -> watch::Receiver<Gates> {
        self.0.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("listen on {addr} for the health server: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// How many connections the health port holds at once. Beyond it the oldest is closed, so
/// idle or slow clients cannot keep the kubelet's probe out.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server takes from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Which documents a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exposure {
    /// The health port: probes and metrics, nothing about peers.
    Public,
    /// The root-only socket: everything, `/status` included.
    Private,
}

/// Binds the health port now (so a port conflict is a start-up error) and returns the bound
/// address and a future that serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<HealthState>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = ()>), HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    let app = router(state, Exposure::Public);
    Ok((bound, serve(listener, app, limits, shutdown)))
}

/// Binds the private status socket at `path` (see [`status_socket`](super::status_socket));
/// the returned guard removes it when dropped.
pub fn bind_private(
    path: &Path,
    state: Arc<HealthState>,
    shutdown: CancellationToken,
) -> Result<(StatusSocket, impl Future<Output = ()> + use<>), HealthError> {
    let (listener, guard) = status_socket::bind(path)?;
    let app = router(state, Exposure::Private);
    Ok((guard, serve(listener, app, Limits::default(), shutdown)))
}

/// A listener the server accepts connections from.
trait Acceptor: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next_conn(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next_conn(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next_conn(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Serves HTTP/1.1 on every accepted connection, each a task of this future's own (dropped
/// with it), at most `limits.max_connections` at a time: a new connection over the cap
/// closes the oldest one rather than being refused, so a flood of idle connections cannot
/// lock out a prober that sends its request at once.
async fn serve(listener: impl Acceptor, app: Router, limits: Limits, shutdown: CancellationToken) {
    let mut conns = JoinSet::new();
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    let mut said_capped = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(done) = conns.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                open.retain(|h| h.id() != id);
            }
            accepted = listener.next_conn() => match accepted {
                Ok(io) => {
                    if open.len() >= limits.max_connections.max(1) {
                        if let Some(oldest) = open.pop_front() {
                            oldest.abort();
                        }
                        if !said_capped {
                            tracing::warn!(cap = limits.max_connections, "health server at its connection cap; closing the oldest connections");
                            said_capped = true;
                        }
                    }
                    let service = TowerToHyperService::new(app.clone());
                    open.push_back(conns.spawn(async move {
                        let mut http = http1::Builder::new();
                        http.timer(TokioTimer::new())
                            .header_read_timeout(limits.header_read_timeout);
                        if let Err(err) = http.serve_connection(TokioIo::new(io), service).await {
                            tracing::debug!(error = %err, "health connection closed with an error");
                        }
                    }));
                }
                Err(err) => {
                    // Out of file descriptors, mostly: wait instead of spinning on it.
                    tracing::warn!(error = %err, "health server: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

/// Upstream answers exact paths with any method; so do we.
fn router(state: Arc<HealthState>, exposure: Exposure) -> Router {
    let live_state = state.clone();
    let ready_state = state.clone();
    let metrics_state = state.clone();
    let status_state = state;
    let public = Router::new()
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
                    let verdict = state.readiness.verdict();
                    if verdict.is_ready() {
                        (StatusCode::OK, "flanneld is ready".to_string()).into_response()
                    } else {
                        let mut body = "flanneld is not ready:".to_string();
                        for line in &verdict.waiting_for {
                            body.push_str("\n  ");
                            body.push_str(line);
                        }
                        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
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
        );
    match exposure {
        Exposure::Public => public,
        Exposure::Private => public.route(
            "/status",
            any(move || {
                let state = status_state.clone();
                async move { text((state.status)(), "application/json") }
            }),
        ),
    }
}

fn text(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flanneld::pure::readiness::{DatapathGate, TrafficGate};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_on(mut stream: impl AsyncRead + AsyncWrite + Unpin, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        get_on(tokio::net::TcpStream::connect(addr).await.unwrap(), path).await
    }

    fn state() -> Arc<HealthState> {
        HealthState::new(
            Arc::new(|| "flanneld_heals_total 3\n".to_string()),
            Arc::new(|| "{\"node\":\"n1\"}".to_string()),
            Readiness::default(),
        )
    }

    async fn public(limits: Limits) -> (SocketAddr, Arc<HealthState>, CancellationToken) {
        let state = state();
        let token = CancellationToken::new();
        let (addr, serve) = bind(
            "127.0.0.1:0".parse().unwrap(),
            state.clone(),
            limits,
            token.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(serve);
        (addr, state, token)
    }

    #[tokio::test]
    async fn readiness_follows_state_and_liveness_follows_the_watchdog() {
        let (addr, state, token) = public(Limits::default()).await;

        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        assert!(live.ends_with("flanneld is running"), "{live}");

        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.contains("flanneld is not ready:\n  lease: "),
            "{not_ready}"
        );

        let readiness = state.readiness();
        readiness.update(|g| {
            *g = Gates {
                lease: true,
                annotations_published: true,
                datapath: DatapathGate::Programmed,
                traffic_required: true,
                traffic: TrafficGate::Failing("`iptables` is not installed".into()),
                subnet_env_written: false,
            }
        });
        let waiting = get(addr, "/readyz").await;
        assert!(waiting.starts_with("HTTP/1.1 503"), "{waiting}");
        assert!(
            waiting.ends_with(
                "flanneld is not ready:\n  traffic rules (--ip-masq): `iptables` is not installed\n  subnet.env: waits for the lease and the traffic rules"
            ),
            "{waiting}"
        );
        readiness.update(|g| {
            g.traffic = TrafficGate::InPlace;
            g.subnet_env_written = true;
        });
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

        assert!(
            get(addr, "/metrics")
                .await
                .ends_with("flanneld_heals_total 3\n")
        );
        // Peers' addresses are not for pods to read.
        assert!(get(addr, "/status").await.starts_with("HTTP/1.1 404"));

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
    }

    #[tokio::test]
    async fn the_private_socket_serves_status_and_the_probes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flanneld-subnet.env.sock");
        let token = CancellationToken::new();
        let (guard, serve) = bind_private(&path, state(), token.clone()).unwrap();
        let server = tokio::spawn(serve);
        let conn = || tokio::net::UnixStream::connect(&path);
        let status = get_on(conn().await.unwrap(), "/status").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(status.ends_with("{\"node\":\"n1\"}"), "{status}");
        let ready = get_on(conn().await.unwrap(), "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        token.cancel();
        server.await.unwrap();
        drop(guard);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn idle_connections_over_the_cap_close_the_oldest_and_probes_still_answer() {
        let cap = 4;
        let (addr, _state, token) = public(Limits {
            max_connections: cap,
            header_read_timeout: Duration::from_secs(600),
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..3 * cap {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let live = get(addr, "/healthz").await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        // The server closed all but the newest `cap` of ours (the probe made room too).
        let mut closed = 0;
        for mut c in idle {
            let mut buf = [0u8; 16];
            match tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        assert!(closed >= 2 * cap, "{closed} of {} closed", 3 * cap);
        token.cancel();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let (addr, _state, token) = public(Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_millis(100),
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The bound only keeps a broken server from hanging the test.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the server kept a half-sent request open");
        assert!(
            !String::from_utf8_lossy(&rest).contains(" 200 "),
            "{rest:?}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        token.cancel();
    }

    #[tokio::test]
    async fn readiness_waiters_wake_only_on_a_change() {
        let readiness = Readiness::default();
        let mut rx = readiness.subscribe();
        readiness.update(|g| g.lease = false);
        assert!(!rx.has_changed().unwrap(), "nothing changed");
        readiness.update(|g| g.lease = true);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().lease);
        assert!(readiness.gates().lease);
        assert!(!readiness.verdict().is_ready());
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let state = HealthState::new(
            Arc::new(String::new),
            Arc::new(String::new),
            Readiness::default(),
        );
        let err = match bind(addr, state, Limits::default(), CancellationToken::new()).await {
            Err(e) => e,
            Ok(_) => panic!("bind on a taken port succeeded"),
        };
        assert!(err.to_string().contains("health server"), "{err}");
    }
}
