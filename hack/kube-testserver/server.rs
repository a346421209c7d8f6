//! Accept loops: the API listener (plain or TLS) that can be taken down for an outage and
//! brought back on the same port, and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::{AppState, lock};

pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating socket")?;
    // Lets the API listener come back on its port right after an outage.
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on {addr}"))
}

fn serve_connection<I>(io: I, router: Router, token: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = TowerToHyperService::new(router);
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::select! {
            result = conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with error");
                }
            }
            _ = token.cancelled() => {}
        }
    });
}

/// Serves the API until `shutdown`; each outage request drops the listener and every open
/// connection (clients see resets, then connection refused) and rebinds after the duration.
pub async fn run_api(
    app: Arc<AppState>,
    mut listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut outage_rx: mpsc::UnboundedReceiver<Duration>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("API listener address")?;
    loop {
        let connections = CancellationToken::new();
        let outage = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    connections.cancel();
                    return Ok(());
                }
                d = outage_rx.recv() => match d {
                    Some(d) => break d,
                    None => {
                        connections.cancel();
                        return Ok(());
                    }
                },
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let token = connections.child_token();
                    match &tls {
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let router = router.clone();
                            tokio::spawn(async move {
                                match acceptor.accept(stream).await {
                                    Ok(s) => serve_connection(s, router, token),
                                    Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                                }
                            });
                        }
                        None => serve_connection(stream, router.clone(), token),
                    }
                }
            }
        };
        tracing::info!(seconds = outage.as_secs_f64(), "outage: API listener down");
        drop(listener);
        connections.cancel();
        let mut until = tokio::time::Instant::now() + outage;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(until) => break,
                // A further outage request while down extends it.
                d = outage_rx.recv() => if let Some(d) = d {
                    until = until.max(tokio::time::Instant::now() + d);
                },
            }
        }
        // The port may linger briefly; retry the bind for a while.
        let mut attempt = 0;
        listener = loop {
            match bind(addr) {
                Ok(l) => break l,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "rebind after outage failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.context("rebinding API listener after outage")),
            }
        };
        *lock(&app.outage_until) = None;
        tracing::info!("outage over: API listener back");
    }
}
