//! `bsn-gateway`: parse the command line, load config, build the runtime, run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bsn_gateway::config::{Config, LogConfig, LogFormat};

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
}

#[derive(Subcommand)]
enum HsmCommand {
    /// List the module's slots, tokens and mechanisms, and say what the profile expects
    /// that is missing. Exits 1 when something is.
    Probe(ProbeArgs),
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
    /// Check the hash chain of an audit log.
    Verify { file: PathBuf },
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
            config.hsm.profile()?;
            // Files the config names are read now, not at the first envelope.
            for ledger in &config.ledgers {
                ledger.check_files().map_err(anyhow::Error::msg)?;
            }
            println!(
                "{}: ok ({} clients, {} ledgers)",
                file.display(),
                config.clients.len(),
                config.ledgers.len()
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { file }) => {
            let n = bsn_gateway::audit::verify(&file)?;
            println!("{}: {n} entries, chain intact", file.display());
            Ok(())
        }
        Command::Hsm(HsmCommand::Probe(args)) => probe(args),
        Command::Token(TokenCommand::New) => {
            let (token, hash) = bsn_gateway::auth::new_token();
            println!("token = {}\ntoken_sha256 = \"{hash}\"", token.expose());
            Ok(())
        }
    }
}

fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    use bsn_gateway::custody::probe;
    use bsn_gateway::custody::profile::Profile;
    let config = match (&args.source.config, &args.source.data_dir) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(dir)) => bsn_gateway::dev::existing(dir)?,
        (None, None) => unreachable!("clap requires --config or --dev --data-dir"),
    };
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
            let (c, d) = bsn_gateway::dev::prepare(dir, args.listen, &args.ledgers)?;
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
        .block_on(bsn_gateway::app::run(config, dev))
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
