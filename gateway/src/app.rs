//! The one place that wires the parts together: HSM, custody (key store, audit log and its
//! checkpoints), authentication, verification, admission (outbox, forwarder), metrics and
//! the HTTP server; SIGHUP reloads; then tears them down in order on shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::admission::Admission;
use crate::audit::anchor::Anchor;
use crate::audit::{AuditEntry, AuditLog};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::custody::Custody;
use crate::dev::DevToken;
use crate::forward::Forwarder;
use crate::http::AppState;
use crate::outbox::Outbox;
use crate::verify::Engine;
use anyhow::Context;

/// Starts everything, serves until SIGTERM/SIGINT, drains, and closes the HSM.
/// `config_path` is re-read on SIGHUP (clients, their policies and quotas).
pub async fn run(
    config: Config,
    dev: Option<DevToken>,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::install();
    for w in config.warnings() {
        tracing::warn!("config: {w}");
    }
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("data dir {}", data.display()))?;
    let audit = AuditLog::open(&data.join("audit.log"), config.audit.checkpoint_lines)?;
    let prepare = dev.map(|dev| -> crate::custody::Prepare {
        Box::new(move |pkcs11| crate::dev::ensure_token(pkcs11, &dev))
    });
    let custody = Custody::open(&config.hsm, &config.keys, data, audit.clone(), prepare).await?;
    let hsm = custody.hsm().clone();
    let anchor = Anchor::open(audit.clone(), hsm.clone(), &config.audit, data)
        .await
        .context("audit checkpoint key")?;
    anchor.spawn();

    let auth = Arc::new(Authenticator::new(&config.clients).map_err(anyhow::Error::msg)?);
    tokio::spawn(crate::auth::summarise_failures(
        auth.failures(),
        audit.clone(),
        Duration::from_secs(config.audit.auth_failure_summary_seconds),
    ));
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::http::server::tls_acceptor)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let verify = Arc::new(Engine::start(&config.verify).context("verification workers")?);
    tracing::info!(workers = verify.workers(), "verification engine started");
    let (outbox, pending) = Outbox::open(&data.join("outbox"), &config.outbox).context("outbox")?;
    let forward = Forwarder::start(&config.ledgers, &config.forward, outbox.clone(), pending)
        .map_err(anyhow::Error::msg)?;
    let cas = crate::ca::Cas::open(custody.clone(), data)?;
    let admission = Admission::new(
        custody.clone(),
        cas.clone(),
        verify.clone(),
        outbox,
        forward,
        config.limits.max_items,
    );
    let state = Arc::new(AppState {
        readiness: Arc::default(),
        custody: custody.clone(),
        cas,
        admission,
        verify,
        auth: auth.clone(),
        metrics,
        limits: config.limits.clone(),
    });
    crate::http::ops::Readiness::start(&state).await;
    tokio::spawn(reload_on_sighup(config_path, auth, audit.clone()));

    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))
    };
    let listener = bind(config.server.listen).await?;
    let ops_listener = bind(config.server.ops_listen).await?;
    let addr = listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;
    write_addr(data, "ops.addr", &ops_addr.to_string())?;
    write_addr(data, "gateway.addr", &addr.to_string())?;
    tracing::info!(%addr, %ops_addr, tls = tls.is_some(), keys = custody.all().len(), "serving");
    // The HSM pool is open and the listeners bound: systemd may start what depends on us.
    crate::notify::notify(&format!("READY=1\nSTATUS=serving on {addr}"));

    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    use crate::http::server::{serve, Role};
    tokio::join!(
        serve(
            Role::Api,
            listener,
            tls,
            state.clone(),
            &config.server.limits,
            stopped(stop_rx.clone()),
            grace,
        ),
        serve(
            Role::Ops,
            ops_listener,
            None,
            state.clone(),
            &config.server.limits,
            stopped(stop_rx),
            grace,
        ),
    );

    // Key operations and admissions whose clients left are still the process's to finish:
    // a key made in the token must get its record and audit line before the HSM closes.
    if !crate::owned::drained(grace).await {
        tracing::warn!(
            running = crate::owned::running(),
            "owned operations still running after the grace period; stopping anyway"
        );
    }
    // A clean stop ends the log with a signed head, so a cut tail shows even without
    // an exported checkpoint.
    match anchor.checkpoint().await {
        Ok(Some(cp)) => tracing::info!(seq = cp.seq, "audit checkpoint at shutdown"),
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "audit checkpoint at shutdown failed"),
    }
    drop(state);
    drop(custody);
    drop(anchor);
    tokio::task::spawn_blocking(move || hsm.shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-reads the config file and swaps in its clients (policies, quotas, tokens)
/// without dropping a connection. A config that fails validation is refused, its errors
/// logged, and the running clients kept. Either way the reload is audited.
async fn reload_on_sighup(path: Option<PathBuf>, auth: Arc<Authenticator>, audit: AuditLog) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; config reload is off");
        return;
    };
    for result in ["ok", "refused"] {
        metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("SIGHUP: the embedded default has no config file to reload");
            continue;
        };
        let outcome = crate::config::Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let n = auth.replace(&c.clients)?;
                for w in c.warnings() {
                    tracing::warn!("config: {w}");
                }
                Ok(n)
            });
        let (result, detail) = match &outcome {
            Ok(n) => {
                tracing::info!(
                    clients = n,
                    "SIGHUP: clients reloaded; other sections take effect at restart"
                );
                ("ok", format!("{n} clients"))
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config refused; the running clients stay");
                ("refused", e.chars().take(512).collect())
            }
        };
        metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
        let entry = AuditEntry {
            client: "-".into(),
            operation: "reload",
            result: result.into(),
            detail: Some(detail),
            ..Default::default()
        };
        if let Err(e) = audit.append(entry).await {
            tracing::error!(error = %e, "cannot audit the reload");
        }
    }
}

/// Tells tests and scripts a bound address (useful with port 0).
fn write_addr(data: &Path, name: &str, addr: &str) -> anyhow::Result<()> {
    let tmp = data.join(format!("{name}.tmp"));
    std::fs::write(&tmp, addr)?;
    std::fs::rename(&tmp, data.join(name))?;
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
