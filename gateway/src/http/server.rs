//! Accepts connections (plain, or TLS/mTLS through OpenSSL), serves HTTP/1.1 and HTTP/2,
//! and on shutdown stops accepting and drains in-flight requests within a grace period.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use openssl::ssl::{
    select_next_proto, AlpnError, Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::idle::{IdleIo, InFlight};
use super::{AppState, ListenerLimits, TlsConfig};
use crate::metrics as m;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn tls_acceptor(cfg: &TlsConfig) -> Result<SslAcceptor, String> {
    let ctx = |what: &str, e: openssl::error::ErrorStack| format!("TLS {what}: {e}");
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| ctx("setup", e))?;
    b.set_certificate_chain_file(&cfg.cert_file)
        .map_err(|e| ctx(&format!("cert_file {}", cfg.cert_file.display()), e))?;
    b.set_private_key_file(&cfg.key_file, SslFiletype::PEM)
        .map_err(|e| ctx(&format!("key_file {}", cfg.key_file.display()), e))?;
    b.check_private_key()
        .map_err(|e| ctx("key does not match the certificate", e))?;
    b.set_alpn_select_callback(|_, client| {
        select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    if let Some(ca) = &cfg.client_ca_file {
        b.set_ca_file(ca)
            .map_err(|e| ctx(&format!("client_ca_file {}", ca.display()), e))?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

/// Open connections per source address; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct SourceSlot {
    table: PerSource,
    ip: IpAddr,
}

impl PerSource {
    fn take(&self, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

fn builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.http2_max_header_list_size)
        .max_pending_accept_reset_streams(limits.http2_max_pending_accept_reset_streams);
    b
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `/v1`, `/healthz`, `/openapi.json`.
    Api,
    /// `/metrics`, `/readyz`, `/healthz`.
    Ops,
}

pub async fn serve(
    role: Role,
    listener: TcpListener,
    tls: Option<SslAcceptor>,
    state: Arc<AppState>,
    limits: &ListenerLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = builder(limits);
    let tls = tls.map(Arc::new);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let first_bytes = Duration::from_millis(limits.header_read_timeout_ms);
    let per_source = PerSource::default();
    for route in super::router::ROUTES
        .into_iter()
        .filter(|_| role == Role::Api)
    {
        let _ = metrics::histogram!(m::HTTP_REQUEST_SECONDS, "route" => route);
        for method in super::router::allowed(route) {
            let method = super::router::method_label(method);
            metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => "200")
                .absolute(0);
        }
    }
    for reason in ["max_connections", "max_connections_per_ip"] {
        metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Over a cap, the connection is closed at once: the listener itself never waits.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "max_connections")
                .increment(1);
            continue;
        };
        let Some(slot) = per_source.take(peer.ip(), limits.max_connections_per_ip) else {
            metrics::counter!(m::CONNECTIONS_REFUSED_TOTAL, "reason" => "max_connections_per_ip")
                .increment(1);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        tokio::spawn(async move {
            let _held = (permit, slot);
            let in_flight = Arc::new(InFlight::default());
            let counted = in_flight.clone();
            let service = move |certificate: Option<[u8; 32]>| {
                let in_flight = counted.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let busy = in_flight.busy();
                    async move {
                        let _busy = busy;
                        Ok::<_, Infallible>(match role {
                            Role::Api => super::router::handle(state, req, certificate).await,
                            Role::Ops => super::ops::handle(state, req).await,
                        })
                    }
                })
            };
            let result = match tls {
                None => {
                    // The HTTP/1-or-2 detection waits for the first bytes with no timer of
                    // its own: a connection that sends nothing is closed here.
                    let mut first = [0u8; 1];
                    let peeked = tokio::time::timeout(first_bytes, tcp.peek(&mut first)).await;
                    if !matches!(peeked, Ok(Ok(1..))) {
                        return;
                    }
                    watcher
                        .watch(builder.serve_connection(
                            TokioIo::new(IdleIo::new(tcp, in_flight, idle)),
                            service(None),
                        ))
                        .await
                }
                Some(acceptor) => {
                    let stream = match handshake(&acceptor, tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    // The client certificate, when one was presented, by its SHA-256: a
                    // client bound to a certificate is only itself over that one.
                    let certificate = stream
                        .ssl()
                        .peer_certificate()
                        .and_then(|c| c.to_der().ok())
                        .map(|der| crate::util::sha256(&der));
                    watcher
                        .watch(builder.serve_connection(
                            TokioIo::new(IdleIo::new(stream, in_flight, idle)),
                            service(certificate),
                        ))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}

async fn handshake(
    acceptor: &SslAcceptor,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_openssl::SslStream<tokio::net::TcpStream>, String> {
    let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(stream)
}
