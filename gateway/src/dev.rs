//! The embedded default (`serve --dev`): everything under one data dir. On first start it
//! writes a SoftHSM2 config, random SO and user PINs and an admin token (all mode 0600),
//! and initialises the token; later starts reuse them and the keys.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;

use crate::auth::ClientConfig;
use crate::config::{Config, LogConfig};
use crate::custody::hsm::{auth_pin, find_slot, HsmError, TokenSelector};
use crate::custody::HsmConfig;
use crate::forward::LedgerConfig;
use crate::http::{Limits, ServerConfig};
use crate::secret::{Secret, SecretSource};

pub const TOKEN_LABEL: &str = "bsn-gateway-dev";

/// How to initialise the embedded token on first start.
pub struct DevToken {
    pub label: String,
    pub so_pin: Secret,
    pub user_pin: Secret,
    /// SoftHSM2's token directory: a token is made only while it holds none.
    pub tokens_dir: PathBuf,
}

/// Prepares DIR and returns the config it implies. Sets `SOFTHSM2_CONF`, so it must run
/// before any thread starts (the environment is process-wide).
/// `ledgers` are `--ledger NAME=ethereum+URL` flags; a name given twice adds a node.
pub fn prepare(
    data_dir: &Path,
    listen: SocketAddr,
    ops_listen: SocketAddr,
    ledger_flags: &[String],
) -> anyhow::Result<(Config, DevToken)> {
    let mut ledgers: Vec<LedgerConfig> = Vec::new();
    for flag in ledger_flags {
        let l = LedgerConfig::from_flag(flag).map_err(anyhow::Error::msg)?;
        match ledgers.iter_mut().find(|x| x.name() == l.name()) {
            Some(x) => x.add_node(l).map_err(anyhow::Error::msg)?,
            None => ledgers.push(l),
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir.join("tokens"))
        .with_context(|| format!("create {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolve {}", data_dir.display()))?;
    let conf = data_dir.join("softhsm2.conf");
    if !conf.exists() {
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            data_dir.join("tokens").display()
        );
        write_private(&conf, &text)?;
    }
    std::env::set_var("SOFTHSM2_CONF", &conf);

    let so_pin = read_or_create(&data_dir.join("so.pin"), || {
        hex::encode(crate::util::random_bytes(16))
    })?;
    let user_pin = read_or_create(&data_dir.join("user.pin"), || {
        hex::encode(crate::util::random_bytes(16))
    })?;
    let admin = read_or_create(&data_dir.join("admin.token"), || {
        crate::auth::new_token().0.expose().to_string()
    })?;
    let admin_hash = crate::util::hex0x(&crate::util::sha256(admin.expose().as_bytes()));

    let config = Config {
        data_dir: data_dir.clone(),
        server: ServerConfig {
            listen,
            ops_listen,
            tls: None,
            allow_plaintext: false,
            shutdown_grace_seconds: 10,
            limits: Default::default(),
        },
        hsm: HsmConfig {
            profile: "softhsm2".into(),
            profile_file: None,
            module: None,
            token_label: Some(TOKEN_LABEL.into()),
            token_serial: None,
            pin: SecretSource::File(data_dir.join("user.pin")),
            pool_size: None,
            session_wait_ms: 2000,
            algorithms: Vec::new(),
        },
        keys: crate::custody::KeysConfig::default(),
        audit: crate::audit::anchor::AuditConfig::default(),
        limits: Limits::default(),
        verify: crate::verify::VerifyConfig::default(),
        outbox: crate::outbox::OutboxConfig::default(),
        forward: crate::forward::ForwardConfig::default(),
        ledgers,
        log: LogConfig::default(),
        clients: vec![ClientConfig {
            name: "admin".into(),
            token_sha256: admin_hash,
            operations: vec!["*".into()],
            keys: vec!["*".into()],
            admin: true,
            ledgers: vec!["*".into()],
            certificate_sha256: None,
            transactions_per_second: None,
            transactions_burst: None,
            transactions_per_day: None,
            sign_per_second: None,
            sign_burst: None,
            verify_per_second: None,
            verify_burst: None,
        }],
    };
    config.validate()?;
    Ok((
        config,
        DevToken {
            label: TOKEN_LABEL.into(),
            so_pin,
            user_pin,
            tokens_dir: data_dir.join("tokens"),
        },
    ))
}

/// The config of a data dir that `serve --dev` has already set up, for tools that must not
/// create one (`hsm probe`). Sets `SOFTHSM2_CONF`, as `prepare` does.
pub fn existing(data_dir: &Path) -> anyhow::Result<Config> {
    if !data_dir.join("softhsm2.conf").exists() {
        anyhow::bail!(
            "{} holds no embedded token; start `bsn-gateway serve --dev --data-dir {0}` once",
            data_dir.display()
        );
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    let ops = SocketAddr::from(([127, 0, 0, 1], 9464));
    Ok(prepare(data_dir, listen, ops, &[])?.0)
}

/// Initialises the token and its user PIN on a data dir that has none. What decides is
/// the token directory, not the module's list: SoftHSM2 leaves out a token whose file
/// another process is writing as it loads, and a second token with the same label would
/// hide the first one's keys and make every later start fail.
pub fn ensure_token(pkcs11: &Pkcs11, dev: &DevToken) -> Result<(), HsmError> {
    let (label, so_pin, user_pin) = (dev.label.as_str(), &dev.so_pin, &dev.user_pin);
    let selector = TokenSelector::Label(label.to_string());
    match find_slot(pkcs11, &selector) {
        Ok(_) => return Ok(()),
        Err(HsmError::TokenNotFound(_)) if holds_token(&dev.tokens_dir)? => {
            return Err(HsmError::TokenNotListed(format!(
                "{} holds a token, but SoftHSM2 did not list one labelled {label:?} (its file unreadable, or being written by another process); no second token is made",
                dev.tokens_dir.display()
            )));
        }
        Err(HsmError::TokenNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let ck = |e: cryptoki::error::Error| HsmError::Load(format!("token initialisation: {e}"));
    let free = pkcs11
        .get_slots_with_token()
        .map_err(ck)?
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|t| !t.token_initialized())
        })
        .ok_or_else(|| HsmError::Load("no uninitialised token slot".into()))?;
    pkcs11
        .init_token(free, &auth_pin(so_pin), label)
        .map_err(ck)?;
    // SoftHSM2 renumbers slots after C_InitToken: look the token up again.
    let slot = find_slot(pkcs11, &selector)?;
    let session = pkcs11.open_rw_session(slot).map_err(ck)?;
    session
        .login(UserType::So, Some(&auth_pin(so_pin)))
        .map_err(ck)?;
    session.init_pin(&auth_pin(user_pin)).map_err(ck)?;
    session.logout().map_err(ck)?;
    tracing::info!(label, "initialised a new SoftHSM2 token");
    Ok(())
}

/// Whether SoftHSM2's token directory holds a token (one folder per token).
fn holds_token(tokens_dir: &Path) -> Result<bool, HsmError> {
    let unreadable = |e: std::io::Error| HsmError::Load(format!("{}: {e}", tokens_dir.display()));
    for entry in std::fs::read_dir(tokens_dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<Secret> {
    if !path.exists() {
        write_private(path, &make())?;
    }
    SecretSource::File(path.to_path_buf())
        .read()
        .with_context(|| format!("read {}", path.display()))
}

/// Creates a file readable only by its owner, and syncs it.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
