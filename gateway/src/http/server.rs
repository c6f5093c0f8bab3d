//! Accepts connections (plain, or TLS/mTLS through OpenSSL), serves HTTP/1.1 and HTTP/2,
//! and on shutdown stops accepting and drains in-flight requests within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use openssl::ssl::{
    select_next_proto, AlpnError, Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode,
};
use tokio::net::TcpListener;

use super::AppState;
use super::TlsConfig;

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

pub async fn serve(
    listener: TcpListener,
    tls: Option<SslAcceptor>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let tls = tls.map(Arc::new);
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
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(super::router::handle(state, req).await) }
            });
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), service))
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
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
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
