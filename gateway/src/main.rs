//! `bsn-gateway`: parse the command line, load config, build the runtime, run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bsn_gateway::config::{Config, LogConfig, LogFormat};

/// Rust's allocations through mimalloc: glibc's malloc and free took 6% of the pinned
/// gateway's CPU under P-256 signing (requests, bodies, futures, audit lines). The C
/// libraries (OpenSSL, the PKCS#11 module) keep glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bsn-gateway",
    version,
    about = "HSM-backed crypto gateway for blockchain service networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Client token tools.
    #[command(subcommand)]
    Token(TokenCommand),
    /// HSM tools.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// Signed A/B firmware updates with anti-rollback in the HSM.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
}

#[derive(Subcommand)]
enum FirmwareCommand {
    /// Pack this build's payloads into an unsigned bundle.
    Build {
        #[arg(long)]
        version: String,
        #[arg(long)]
        security_version: u64,
        #[arg(long)]
        out: PathBuf,
        /// The gateway binary to pack (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Sign a bundle with a release key in custody, through a gateway's sign API.
    Sign {
        file: PathBuf,
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long)]
        key_id: String,
        /// The release key's certificate (then any intermediates), chaining to the root.
        #[arg(long)]
        cert: PathBuf,
    },
    /// Check a bundle: signature chain to the root, manifest hashes, product.
    Verify {
        file: PathBuf,
        /// The vendor root certificate(s), PEM.
        #[arg(long)]
        root: PathBuf,
    },
    /// Verify, refuse a security version below the HSM's minimum, write the inactive
    /// slot and mark it for a trial boot.
    Install {
        file: PathBuf,
        /// The slots' directory.
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "/usr/share/bsn-gateway/vendor-root.pem")]
        vendor_root: PathBuf,
        #[command(flatten)]
        source: Source,
    },
    /// Slots, versions, the active and trial slot, the HSM's minimum security version.
    Status {
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        source: Source,
    },
    /// The trial slot becomes active; the HSM's minimum is raised to its version.
    Commit {
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        source: Source,
    },
    /// End a trial, or go back to the previous slot.
    Rollback {
        #[arg(long)]
        root: PathBuf,
    },
    /// The unit's supervisor: run the trial slot, commit it once ready for
    /// --ready-seconds, roll back by itself when it is not ready in
    /// --ready-timeout-seconds or exits; otherwise run the active slot. The arguments
    /// after `--` are given to the slot's `serve`.
    Run {
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        source: Source,
        #[arg(long, default_value_t = 30)]
        ready_seconds: u64,
        #[arg(long, default_value_t = 120)]
        ready_timeout_seconds: u64,
        #[arg(last = true)]
        serve_args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// List the module's slots, tokens and mechanisms, and say what the profile expects
    /// that is missing. Exits 1 when something is.
    Probe(ProbeArgs),
    /// Compare key records with the token's objects: records whose key is missing, and
    /// token objects no record points at (orphans). A dry run unless --destroy-orphans.
    Reconcile(ReconcileArgs),
}

#[derive(Args)]
struct ReconcileArgs {
    #[command(flatten)]
    source: Source,
    /// Destroy the orphan objects (asks for confirmation unless --yes). Refused while a
    /// gateway runs on the same data dir: a key it is creating would look like an orphan.
    #[arg(long)]
    destroy_orphans: bool,
    #[arg(long, requires = "destroy_orphans")]
    yes: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ProbeArgs {
    #[command(flatten)]
    source: Source,
    /// A built-in profile name or a profile file, instead of the config's.
    #[arg(long)]
    profile: Option<String>,
    /// Do not log in: skip the sign test on session keys.
    #[arg(long)]
    no_login: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the configuration comes from: a file, or the embedded default's data dir.
#[derive(Args)]
struct Source {
    /// The config file (TOML).
    #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// The embedded default: a SoftHSM2 token and all state under --data-dir.
    #[arg(long, requires = "data_dir")]
    dev: bool,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    source: Source,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// With --dev: the operations listener (/metrics, /readyz, /healthz).
    #[arg(long, default_value = "127.0.0.1:9464")]
    ops_listen: SocketAddr,
    /// With --dev: a ledger to forward to, `NAME=ethereum+http://HOST:PORT` or
    /// `NAME=http+http://HOST:PORT` (repeatable; the same NAME again adds a node).
    #[arg(long = "ledger", requires = "dev", value_name = "NAME=KIND+URL")]
    ledgers: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file without starting.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log and every HSM-signed checkpoint in it.
    Verify {
        file: PathBuf,
        /// The audit key's public key (PEM); default: audit-key.pem beside the log.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Checkpoints exported elsewhere ([audit] export_file): each must still be in
        /// the log, which reports a cut tail or a re-chained edit before them.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new bearer token and the token_sha256 to put in [[clients]].
    New,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file)?;
            let profile = config.hsm.profile()?;
            let gaps = config.hsm.gaps(&profile);
            if !gaps.is_empty() {
                anyhow::bail!("{}", gaps.join("\n"));
            }
            // Files the config names are read now, not at the first envelope.
            for ledger in &config.ledgers {
                ledger.check_files().map_err(anyhow::Error::msg)?;
            }
            for w in config.warnings() {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} clients, {} ledgers)",
                file.display(),
                config.clients.len(),
                config.ledgers.len()
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            file,
            key,
            checkpoints,
        }) => audit_verify(&file, key, checkpoints),
        Command::Hsm(HsmCommand::Probe(args)) => probe(args),
        Command::Hsm(HsmCommand::Reconcile(args)) => reconcile(args),
        Command::Firmware(cmd) => firmware(cmd),
        Command::Token(TokenCommand::New) => {
            let (token, hash) = bsn_gateway::auth::new_token();
            println!("token = {}\ntoken_sha256 = \"{hash}\"", token.expose());
            Ok(())
        }
    }
}

fn audit_verify(
    file: &std::path::Path,
    key: Option<PathBuf>,
    checkpoints: Option<PathBuf>,
) -> anyhow::Result<()> {
    use bsn_gateway::audit::{anchor, verify};
    let key_path = key.or_else(|| {
        let p = file.parent()?.join(anchor::KEY_FILE);
        p.exists().then_some(p)
    });
    let key = key_path
        .as_ref()
        .map(|p| -> anyhow::Result<_> {
            let pem = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            openssl::ec::EcKey::public_key_from_pem(&pem)
                .with_context(|| format!("{}: not an EC public key", p.display()))
        })
        .transpose()?;
    let exported = checkpoints
        .as_deref()
        .map(verify::read_exported)
        .transpose()?;
    let r = verify(file, key.as_ref(), exported.as_deref())?;
    println!("{}: {} entries, chain intact", file.display(), r.lines);
    match &key_path {
        Some(p) => println!(
            "checkpoints: {} verified with the audit key {}",
            r.checkpoints,
            p.display()
        ),
        None if r.unchecked > 0 => println!(
            "checkpoints: {} NOT verified: no audit key (give --key audit-key.pem)",
            r.unchecked
        ),
        None => println!("checkpoints: none, and no audit key"),
    }
    if exported.is_some() {
        println!("exported checkpoints: {} found in the log", r.exported);
    }
    println!(
        "anchored to line {}; {} line(s) after it rest on the hash chain alone",
        r.anchored_to,
        r.unanchored()
    );
    Ok(())
}

fn firmware(cmd: FirmwareCommand) -> anyhow::Result<()> {
    use bsn_gateway::firmware::cli;
    match cmd {
        FirmwareCommand::Build {
            version,
            security_version,
            out,
            binary,
        } => cli::build(&version, security_version, &out, binary.as_deref()),
        FirmwareCommand::Sign {
            file,
            gateway,
            token_file,
            key_id,
            cert,
        } => cli::sign(&file, &gateway, &token_file, &key_id, &cert),
        FirmwareCommand::Verify { file, root } => cli::verify(&file, &root),
        FirmwareCommand::Install {
            file,
            root,
            vendor_root,
            source,
        } => cli::install(&file, &root, &vendor_root, &load_source(&source)?),
        FirmwareCommand::Status { root, source } => cli::status(&root, &load_source(&source)?),
        FirmwareCommand::Commit { root, source } => cli::commit(&root, &load_source(&source)?),
        FirmwareCommand::Rollback { root } => cli::rollback(&root),
        FirmwareCommand::Run {
            root,
            source,
            ready_seconds,
            ready_timeout_seconds,
            serve_args,
        } => {
            let gate = cli::Gate {
                ready_for: std::time::Duration::from_secs(ready_seconds),
                timeout: std::time::Duration::from_secs(ready_timeout_seconds),
            };
            let code = cli::run(&root, &load_source(&source)?, gate, &serve_args)?;
            std::process::exit(code)
        }
    }
}

fn load_source(source: &Source) -> anyhow::Result<Config> {
    match (&source.config, &source.data_dir) {
        (Some(path), _) => Ok(Config::load(path)?),
        (None, Some(dir)) => bsn_gateway::dev::existing(dir),
        (None, None) => unreachable!("clap requires --config or --dev --data-dir"),
    }
}

fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    use bsn_gateway::custody::{reconcile, store::KeyStore};
    let config = load_source(&args.source)?;
    let profile = config.hsm.profile()?;
    // Holding the outbox lock proves no gateway runs on this data dir.
    let _lock = if args.destroy_orphans {
        let dir = config.data_dir.join("outbox");
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::File::create(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "a gateway is running on {}: stop it before destroying orphans (a key it is creating would look like one)",
                config.data_dir.display()
            )
        })?;
        Some(lock)
    } else {
        None
    };
    let records =
        KeyStore::read_only(&config.data_dir.join("keys.jsonl")).context("key metadata journal")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let hsm_cfg = config.hsm.clone();
        let hsm =
            tokio::task::spawn_blocking(move || hsm_cfg.open_hsm(&profile, 1, None)).await??;
        let objects = hsm.run("find", "any", true, |h, s| h.object_ids(s)).await?;
        let report = reconcile::compare(&records, &objects, &[bsn_gateway::audit::anchor::KEY_ID]);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} key records, {} token objects",
                records.len(),
                objects.values().map(|o| o.total).sum::<usize>()
            );
            for id in &report.missing {
                println!("missing: record {id} has no private key object on the token");
            }
            for o in &report.orphans {
                println!(
                    "orphan: CKA_ID {} ({} objects) has no key record",
                    o.id, o.objects
                );
            }
            if report.missing.is_empty() && report.orphans.is_empty() {
                println!("records and token agree");
            }
        }
        if args.destroy_orphans && !report.orphans.is_empty() {
            if !args.yes {
                eprint!(
                    "destroy {} orphan object(s)? They cannot be recovered. Type yes: ",
                    report.orphan_objects()
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    anyhow::bail!("not confirmed; nothing destroyed");
                }
            }
            let mut destroyed = 0;
            for o in &report.orphans {
                let id = hex::decode(&o.id)?;
                destroyed += hsm
                    .run("destroy", "any", true, move |h, s| h.destroy(s, &id))
                    .await?;
            }
            println!("destroyed {destroyed} orphan object(s)");
        }
        drop(objects);
        tokio::task::spawn_blocking(move || hsm.shutdown()).await?;
        anyhow::Ok(())
    })
}

fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use bsn_gateway::custody::probe;
    use bsn_gateway::custody::profile::Profile;
    let config = load_source(&args.source)?;
    let profile = match &args.profile {
        Some(p) if p.ends_with(".toml") || p.contains('/') => {
            Profile::from_file(std::path::Path::new(p))?
        }
        Some(name) => Profile::built_in(name)?,
        None => config.hsm.profile()?,
    };
    let module = profile.module_path(config.hsm.module.as_deref())?;
    let pin = if args.no_login {
        None
    } else {
        Some(config.hsm.pin.read().context("HSM PIN")?)
    };
    let report = probe::probe(&probe::Target {
        module: &module,
        profile: &profile,
        selector: &config.hsm.selector(),
        pin: pin.as_ref(),
        pool_size: config.hsm.pool_size.unwrap_or(profile.default_pool_size),
        gaps: config.hsm.gaps(&profile),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    match report.missing().count() {
        0 => Ok(()),
        n => anyhow::bail!("{n} expectation(s) of profile {} not met", profile.name),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The dev setup edits the environment, so it runs before the runtime starts threads.
    let (config, dev) = match (&args.source.config, &args.source.data_dir) {
        (Some(path), _) => (Config::load(path)?, None),
        (None, Some(dir)) => {
            let (c, d) =
                bsn_gateway::dev::prepare(dir, args.listen, args.ops_listen, &args.ledgers)?;
            (c, Some(d))
        }
        (None, None) => unreachable!("clap requires --config or --dev --data-dir"),
    };
    let mut log = config.log.clone();
    if args.log_json {
        log.format = LogFormat::Json;
    }
    init_logging(&log);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(bsn_gateway::app::run(
            config,
            dev,
            args.source.config.clone(),
        ))
}

fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BSN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
