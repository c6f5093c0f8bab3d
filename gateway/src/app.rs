//! The one place that wires the parts together: HSM, key store, audit log, authentication,
//! metrics and the HTTP server, then tears them down in order on shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::custody::hsm::{self, Hsm};
use crate::custody::store::KeyStore;
use crate::custody::Custody;
use crate::forward::Forwarder;
use crate::http::Limits;
use crate::outbox::Outbox;
use crate::verify::Engine;

pub struct AppState {
    pub custody: Custody,
    pub auth: Authenticator,
    pub audit: AuditLog,
    pub metrics: PrometheusHandle,
    pub limits: Limits,
    pub verify: Engine,
    pub outbox: Outbox,
    pub forward: Forwarder,
}

/// Set only by the embedded default: how to initialise its token on first start.
pub struct DevToken {
    pub label: String,
    pub so_pin: crate::secret::Secret,
}

/// Starts everything, serves until SIGTERM/SIGINT, drains, and closes the HSM.
pub async fn run(config: Config, dev: Option<DevToken>) -> anyhow::Result<()> {
    let metrics = crate::metrics::install();
    let profile = config.hsm.profile()?;
    let module = profile.module_path(config.hsm.module.as_deref())?;
    let pin = config.hsm.pin.read().context("HSM PIN")?;
    let pool_size = config.hsm.pool_size.unwrap_or(profile.default_pool_size);
    if profile.max_sessions > 0 && pool_size >= profile.max_sessions {
        anyhow::bail!(
            "pool_size {pool_size} leaves no session for the anchor: {} allows {}",
            profile.name,
            profile.max_sessions
        );
    }
    let hsm_cfg = config.hsm.clone();
    let quirks = profile.quirks.clone();
    let user_pin = pin.clone();
    let hsm = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Hsm>> {
        let pkcs11 = hsm::load_module(&module)?;
        if let Some(dev) = &dev {
            crate::dev::ensure_token(&pkcs11, &dev.label, &dev.so_pin, &user_pin)?;
        }
        let slot = hsm::find_slot(&pkcs11, &hsm_cfg.selector())?;
        Ok(Hsm::open(
            pkcs11,
            slot,
            user_pin,
            quirks,
            pool_size,
            hsm_cfg.session_wait(),
        )?)
    })
    .await??;
    drop(pin);
    tracing::info!(profile = %profile.name, pool_size, "HSM session pool open");

    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("data dir {}", data.display()))?;
    let store = KeyStore::open(&data.join("keys.jsonl")).context("key metadata journal")?;
    let audit = AuditLog::open(&data.join("audit.log"))?;
    let auth = Authenticator::new(&config.clients).map_err(anyhow::Error::msg)?;
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::http::server::tls_acceptor)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let verify = Engine::start(&config.verify).context("verification workers")?;
    tracing::info!(workers = verify.workers(), "verification engine started");
    let (outbox, pending) = Outbox::open(&data.join("outbox"), &config.outbox).context("outbox")?;
    let forward = Forwarder::start(&config.ledgers, &config.forward, outbox.clone(), pending)
        .map_err(anyhow::Error::msg)?;
    let state = Arc::new(AppState {
        custody: Custody::new(hsm.clone(), store, profile),
        auth,
        audit,
        metrics,
        limits: config.limits.clone(),
        verify,
        outbox,
        forward,
    });

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("bind {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    write_addr(data, &addr.to_string())?;
    tracing::info!(%addr, tls = tls.is_some(), keys = state.custody.list().len(), "serving");
    // The HSM pool is open and the listener bound: systemd may start what depends on us.
    crate::notify::notify(&format!("READY=1\nSTATUS=serving on {addr}"));

    crate::http::server::serve(
        listener,
        tls,
        state.clone(),
        shutdown_signal(),
        Duration::from_secs(config.server.shutdown_grace_seconds),
    )
    .await;

    drop(state);
    tokio::task::spawn_blocking(move || hsm.shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Tells tests and scripts the bound address (useful with port 0).
fn write_addr(data: &Path, addr: &str) -> anyhow::Result<()> {
    let tmp = data.join("gateway.addr.tmp");
    std::fs::write(&tmp, addr)?;
    std::fs::rename(&tmp, data.join("gateway.addr"))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    crate::notify::notify("STOPPING=1");
}
