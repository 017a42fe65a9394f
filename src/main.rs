//! `tm2p2p`: the command-line front end of the tm2-p2p runtime.
//!
//! Thin by design: parse the command line, load or create what the command needs, call the
//! library, report. Errors are boxed (`anyhow`) only here, at the binary's edge.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tm2_p2p::{NodeKey, P2pConfig, SwitchBuilder};

/// tm2-p2p: a peer-to-peer network runtime modelled on Tendermint2's p2p layer.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node home: a node key (secrets/node_key.json) and config.toml with defaults.
    Init {
        /// The node's home directory.
        #[arg(long, default_value_os_t = default_home())]
        home: PathBuf,
    },
    /// Print the node id of the key in a node home.
    ShowId {
        /// The node's home directory.
        #[arg(long, default_value_os_t = default_home())]
        home: PathBuf,
    },
    /// Run a node from its home (config.toml and the node key) until Ctrl-C, then shut down
    /// gracefully.
    Node {
        /// The node's home directory (create it with `tm2p2p init`).
        #[arg(long, default_value_os_t = default_home())]
        home: PathBuf,
        /// The network (chain id) this node belongs to; peers on another network are refused.
        #[arg(long, default_value = "tm2p2p")]
        network: String,
        /// The least severe log level shown.
        #[arg(long, value_enum, default_value_t = LogLevel::Info)]
        log_level: LogLevel,
        /// Log output: human-readable lines, or one JSON object a line.
        #[arg(long, value_enum, default_value_t = LogFormat::Term)]
        log_format: LogFormat,
    },
}

/// The least severe log level shown.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogLevel {
    /// Only critical errors.
    Critical,
    /// Errors.
    Error,
    /// Warnings and errors.
    Warning,
    /// What a node operator wants to see.
    Info,
    /// Details for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for slog::Level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Critical => Self::Critical,
            LogLevel::Error => Self::Error,
            LogLevel::Warning => Self::Warning,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// How the node writes its log.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines on stderr.
    Term,
    /// One JSON object a line on stderr.
    Json,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".tm2p2p"),
        |h| PathBuf::from(h).join(".tm2p2p"),
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!(
                "\nStart with `tm2p2p init`, then `tm2p2p node`. The local testnet comes next."
            );
            Ok(())
        }
        Some(Command::Init { home }) => init(&home),
        Some(Command::ShowId { home }) => show_id(&home),
        Some(Command::Node {
            home,
            network,
            log_level,
            log_format,
        }) => {
            let log = logger(log_format, log_level);
            actix::System::new().block_on(run_node(&home, network, log))
        }
    }
}

/// A logger to stderr in the chosen format, showing `level` and more severe.
fn logger(format: LogFormat, level: LogLevel) -> slog::Logger {
    use slog::Drain;
    let level = slog::Level::from(level);
    match format {
        LogFormat::Term => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            slog::Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
        LogFormat::Json => {
            let drain =
                std::sync::Mutex::new(slog_json::Json::default(std::io::stderr())).map(slog::Fuse);
            slog::Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
    }
}

/// Runs a node from `home` until Ctrl-C (or SIGTERM), then shuts it down gracefully.
async fn run_node(home: &Path, network: String, log: slog::Logger) -> anyhow::Result<()> {
    let config_path = home.join("config.toml");
    if !config_path.exists() {
        bail!(
            "no config at {}; run `tm2p2p init --home {}` first",
            config_path.display(),
            home.display()
        );
    }
    let mut config = P2pConfig::from_toml_file(&config_path)?;
    config.resolve_paths(home);
    let key = NodeKey::load(&config.node_key_file)?;
    let node = SwitchBuilder::new(config, key)
        .network(network)
        .logger(log.clone())
        .spawn()
        .await?;
    // Handlers are installed before we announce ourselves, so a Ctrl-C right after the
    // announcement is caught rather than killing the process.
    let stop = StopSignals::install()?;
    slog::info!(log, "node started"; "address" => %node.net_address());
    if let Some(addr) = node.metrics_addr() {
        slog::info!(log, "metrics on http://{}/metrics", addr);
    }
    println!("listening as {}", node.net_address());
    stop.wait().await;
    slog::info!(log, "shutting down");
    node.shutdown().await;
    println!("stopped");
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM handlers, installed on creation.
struct StopSignals {
    /// SIGINT.
    interrupt: tokio::signal::unix::Signal,
    /// SIGTERM.
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs both handlers.
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

fn init(home: &Path) -> anyhow::Result<()> {
    let config_path = home.join("config.toml");
    let config = if config_path.exists() {
        P2pConfig::from_toml_file(&config_path)
            .with_context(|| format!("existing {} is invalid", config_path.display()))?
    } else {
        let config = P2pConfig::default();
        std::fs::create_dir_all(home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        std::fs::write(&config_path, config.to_commented_toml()?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        println!("wrote {}", config_path.display());
        config
    };
    let mut config = config;
    config.resolve_paths(home);
    let key_path = config.node_key_file;
    let existed = key_path.exists();
    let key = NodeKey::load_or_generate(&key_path)?;
    println!(
        "{} node key {} (id {})",
        if existed { "kept" } else { "created" },
        key_path.display(),
        key.id()
    );
    Ok(())
}

fn show_id(home: &Path) -> anyhow::Result<()> {
    let config_path = home.join("config.toml");
    let mut config = if config_path.exists() {
        P2pConfig::from_toml_file(&config_path)?
    } else {
        P2pConfig::default()
    };
    config.resolve_paths(home);
    let key_path = config.node_key_file;
    if !key_path.exists() {
        bail!(
            "no node key at {}; run `tm2p2p init --home {}`",
            key_path.display(),
            home.display()
        );
    }
    println!("{}", NodeKey::load(&key_path)?.id());
    Ok(())
}
