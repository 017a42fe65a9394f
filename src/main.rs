//! `tm2p2p`: the command-line front end of the tm2-p2p runtime.
//!
//! Thin by design: parse the command line, load or create what the command needs, call the
//! library, report. Errors are boxed (`anyhow`) only here, at the binary's edge.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::Actor;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tm2_p2p::actors::gossip::{
    DEFAULT_SUBSCRIBER_CAPACITY, Deliveries, GetGossipStats, Gossip, GossipConfig, Publish,
    SubscribeDelivered, gossip_channel,
};
use tm2_p2p::actors::testnet::{self, TestnetConfig, TestnetProgress};
use tm2_p2p::config::LogLevel;
use tm2_p2p::types::gnoland_version_set;
use tm2_p2p::{NodeKey, P2pConfig, RegisterReactor, SwitchBuilder};

/// tm2-p2p: a peer-to-peer network runtime modelled on Tendermint2's p2p layer.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Without a command, runs `tm2p2p testnet` with its defaults."
)]
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
        /// The least severe log level shown: critical, error, warning, info, debug or trace
        /// [default: `log_level` in config.toml, `info`].
        #[arg(long)]
        log_level: Option<LogLevel>,
        /// Log output: human-readable lines, or one JSON object a line.
        #[arg(long, value_enum, default_value_t = LogFormat::Term)]
        log_format: LogFormat,
        /// Publish a gossip message `<moniker or id>-<n>` this often (e.g. `2s`, `500ms`);
        /// off by default. Every node logs each gossip message it delivers.
        #[arg(long, value_parser = humantime::parse_duration)]
        publish_every: Option<Duration>,
        /// The protocol versions the node advertises. `tm2p2p`: p2p only, with the gossip
        /// reactor on channel 0x30 (tm2-p2p networks). `gnoland`: the set a gno.land node
        /// requires (abci, app, bft, blockchain, p2p) and peer exchange only, no gossip (gno's
        /// mempool owns 0x30): the node joins a gno.land network of `--network <chain id>` to
        /// discover and serve addresses.
        #[arg(long, value_enum, default_value_t = VersionSetArg::Tm2p2p)]
        version_set: VersionSetArg,
        /// With `--version-set gnoland`: the `app` version to advertise; it must have the same
        /// semver major as the network's (a non-semver such as gno.land's default `dev` only
        /// matches another non-semver).
        #[arg(long, default_value = tm2_p2p::types::GNOLAND_APP_VERSION)]
        app_version: String,
    },
    /// Run a local testnet in this process (the default command).
    ///
    /// A seed and N nodes, each on its own loopback IP (127.a.b.1; all on 127.0.0.1 where other
    /// loopback IPs cannot be bound, or with --one-ip), discover each other by peer exchange,
    /// gossip M messages from random nodes, and a table reports how it went. Exits non-zero if
    /// the network did not converge or a message was lost.
    Testnet(TestnetArgs),
}

/// `tm2p2p testnet` options; the defaults are [`TestnetConfig::default`]'s.
#[derive(Debug, Args)]
struct TestnetArgs {
    /// Gossiping nodes, besides the seed.
    #[arg(long, default_value_t = TestnetConfig::default().nodes)]
    nodes: usize,
    /// Messages to publish, each from a random node.
    #[arg(long, default_value_t = TestnetConfig::default().messages)]
    messages: usize,
    /// Seeds the RNG that picks publishers and payloads (the same seed repeats a run).
    #[arg(long, default_value_t = TestnetConfig::default().rng_seed)]
    seed_rng: u64,
    /// Seconds allowed for the network to converge, and for each wait on the next delivery.
    #[arg(long, default_value_t = TestnetConfig::default().converge_timeout.as_secs())]
    timeout: u64,
    /// At most this many messages published and not yet delivered everywhere.
    #[arg(long, default_value_t = TestnetConfig::default().max_in_flight)]
    in_flight: usize,
    /// Put every node on 127.0.0.1 instead of one loopback IP each (the address book and the
    /// handshake limits then see one host, which slows convergence past about 100 nodes).
    #[arg(long)]
    one_ip: bool,
    /// Turn peer exchange off, so the nodes cannot find each other (tests the failure path).
    #[arg(long, hide = true)]
    no_discovery: bool,
}

impl TestnetArgs {
    fn config(&self) -> TestnetConfig {
        let timeout = Duration::from_secs(self.timeout);
        TestnetConfig {
            nodes: self.nodes,
            messages: self.messages,
            rng_seed: self.seed_rng,
            converge_timeout: timeout,
            delivery_timeout: timeout,
            discovery: !self.no_discovery,
            max_in_flight: self.in_flight,
            spread_addresses: !self.one_ip,
            ..TestnetConfig::default()
        }
    }
}

/// `tm2p2p node --version-set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VersionSetArg {
    /// `p2p` only, and the gossip reactor: a tm2-p2p network.
    Tm2p2p,
    /// What a gno.land node requires, and peer exchange only.
    Gnoland,
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

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ", skipping a cause whose text the message before it
/// already includes (the library's errors print their source), and without a backtrace.
fn describe(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_testnet(TestnetConfig::default()),
        Some(Command::Testnet(args)) => run_testnet(args.config()),
        Some(Command::Init { home }) => init(&home),
        Some(Command::ShowId { home }) => show_id(&home),
        Some(Command::Node {
            home,
            network,
            log_level,
            log_format,
            publish_every,
            version_set,
            app_version,
        }) => {
            let config = load_node_config(&home)?;
            let level = log_level.unwrap_or(config.log_level);
            let log = logger(log_format, level);
            let gnoland = (version_set == VersionSetArg::Gnoland).then_some(app_version);
            if gnoland.is_some() && publish_every.is_some() {
                bail!(
                    "--publish-every needs the gossip reactor, which --version-set gnoland does not run"
                );
            }
            if gnoland.is_some() && !config.pex {
                bail!(
                    "--version-set gnoland runs peer exchange only: set `pex = true` in {}",
                    home.join("config.toml").display()
                );
            }
            actix::System::new().block_on(run_node(config, network, publish_every, gnoland, log))
        }
    }
}

/// A logger to stderr in the chosen format, showing `level` and more severe.
/// A log line's time: RFC 3339 in UTC with milliseconds (`2026-12-05T17:50:01.123Z`), so lines
/// from different days, machines and time zones sort and compare.
fn timestamp(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    write!(
        out,
        "{}",
        humantime::format_rfc3339_millis(tm2_p2p::actors::clock::wall_now())
    )
}

fn logger(format: LogFormat, level: LogLevel) -> slog::Logger {
    use slog::Drain;
    let level = slog::Level::from(level);
    match format {
        LogFormat::Term => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator)
                .use_custom_timestamp(timestamp)
                .build()
                .fuse();
            slog::Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
        LogFormat::Json => {
            let drain =
                std::sync::Mutex::new(slog_json::Json::default(std::io::stderr())).map(slog::Fuse);
            slog::Logger::root(slog::LevelFilter::new(drain, level).fuse(), slog::o!())
        }
    }
}

/// The config of the node home `home`, validated, with its paths resolved against `home`.
fn load_node_config(home: &Path) -> anyhow::Result<P2pConfig> {
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
    Ok(config)
}

/// Runs a node from its config until Ctrl-C (or SIGTERM), then shuts it down gracefully. With
/// `gnoland` (the app version), it advertises gno.land's version set and runs peer exchange
/// only.
async fn run_node(
    config: P2pConfig,
    network: String,
    publish_every: Option<Duration>,
    gnoland: Option<String>,
    log: slog::Logger,
) -> anyhow::Result<()> {
    let key = NodeKey::load(&config.node_key_file)?;
    let name = if config.moniker == P2pConfig::default().moniker {
        key.id().to_string()
    } else {
        config.moniker.clone()
    };
    let builder = SwitchBuilder::new(config, key)
        .network(network)
        .logger(log.clone());
    let (node, gossip) = match gnoland {
        Some(app_version) => {
            let node = builder
                .version_set(gnoland_version_set(&app_version))
                .spawn()
                .await?;
            (node, None)
        }
        None => {
            let gossip = Gossip::new(GossipConfig::default(), log.clone()).start();
            let node = builder
                .reactor(RegisterReactor::batched(
                    "gossip",
                    vec![gossip_channel()],
                    &gossip,
                ))
                .spawn()
                .await?;
            let gossip = NodeGossip::start(gossip, name, publish_every, &log).await?;
            (node, Some(gossip))
        }
    };
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
    if let Some(gossip) = gossip {
        gossip.stop(&log).await;
    }
    node.shutdown().await;
    println!("stopped");
    Ok(())
}

/// The gossip reactor of `tm2p2p node`: logs every delivery, and publishes now and then if
/// asked.
struct NodeGossip {
    /// The reactor.
    gossip: actix::Addr<Gossip>,
    /// Logs deliveries; ends with the reactor.
    logging: tokio::task::JoinHandle<()>,
    /// Publishes every `--publish-every`, if set.
    publishing: Option<tokio::task::JoinHandle<()>>,
}

impl NodeGossip {
    /// Starts logging the deliveries of the node's `gossip` reactor; with `publish_every`,
    /// publishes `"<name>-<n>"` at that interval.
    async fn start(
        gossip: actix::Addr<Gossip>,
        name: String,
        publish_every: Option<Duration>,
        log: &slog::Logger,
    ) -> anyhow::Result<Self> {
        let deliveries = gossip
            .send(SubscribeDelivered {
                capacity: DEFAULT_SUBSCRIBER_CAPACITY,
            })
            .await?;
        let logging = actix::spawn(log_deliveries(deliveries, log.clone()));
        let publishing = publish_every.map(|every| {
            let (gossip, log) = (gossip.clone(), log.clone());
            actix::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await; // The first tick is immediate; publish after `every`.
                for n in 1u64.. {
                    ticks.tick().await;
                    let payload = bytes::Bytes::from(format!("{name}-{n}"));
                    match gossip.send(Publish(payload)).await {
                        Ok(Ok(id)) => slog::debug!(log, "gossip published"; "id" => %id, "n" => n),
                        Ok(Err(e)) => slog::warn!(log, "gossip publish refused"; "error" => %e),
                        Err(_) => return,
                    }
                }
            })
        });
        Ok(Self {
            gossip,
            logging,
            publishing,
        })
    }

    /// Stops publishing and logs the reactor's totals.
    async fn stop(self, log: &slog::Logger) {
        if let Some(p) = self.publishing {
            p.abort();
        }
        if let Ok(s) = self.gossip.send(GetGossipStats).await {
            slog::info!(log, "gossip totals"; "published" => s.published, "delivered" => s.delivered,
                "duplicates" => s.duplicates, "forwarded" => s.forwarded, "dropped" => s.dropped);
        }
        self.logging.abort();
    }
}

/// Logs each delivery at info level.
async fn log_deliveries(mut deliveries: Deliveries, log: slog::Logger) {
    while let Some(d) = deliveries.recv().await {
        let from = d.from.map_or_else(|| "self".to_owned(), |p| p.to_string());
        slog::info!(log, "gossip delivered";
            "id" => %d.id, "from" => from, "size" => d.payload.len(), "text" => printable(&d.payload));
    }
}

/// Runs the local testnet, shows progress, prints the table; an error if it did not converge
/// or lost a message.
fn run_testnet(config: TestnetConfig) -> anyhow::Result<()> {
    println!(
        "local testnet: a seed and {} nodes on {}, then {} gossip messages",
        config.nodes,
        if config.spread_addresses {
            "loopback, one IP each"
        } else {
            "127.0.0.1"
        },
        config.messages
    );
    let report = actix::System::new().block_on(testnet::run(config, Bars::default()))?;
    println!();
    print!("{report}");
    if report.lost() > 0 {
        bail!("{} of {} deliveries lost", report.lost(), report.expected);
    }
    if !report.is_complete() {
        bail!("{} deliveries were duplicated or unknown", report.anomalies);
    }
    Ok(())
}

/// The testnet's progress bars (indicatif hides them when stderr is not a terminal).
#[derive(Default)]
struct Bars {
    /// Nodes with enough peers, of all nodes.
    discovery: Option<indicatif::ProgressBar>,
    /// Deliveries made, of expected.
    gossip: Option<indicatif::ProgressBar>,
}

impl Bars {
    fn bar(len: u64, message: &'static str, unit: &str) -> indicatif::ProgressBar {
        let template = format!("{{spinner}} {{msg:<18}} [{{bar:30}}] {{pos}}/{{len}} {unit}");
        let style = indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = indicatif::ProgressBar::new(len)
            .with_style(style)
            .with_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }
}

impl TestnetProgress for Bars {
    fn one_ip(&mut self, tried: Ipv4Addr, error: &io::Error) {
        eprintln!("cannot bind {tried} ({error}): every node runs on 127.0.0.1");
    }

    fn started(&mut self, nodes: usize) {
        self.discovery = Some(Self::bar(nodes as u64, "discovering peers", "nodes"));
    }

    fn discovery(&mut self, ready: usize, _nodes: usize) {
        if let Some(bar) = &self.discovery {
            bar.set_position(ready as u64);
        }
    }

    fn converged(&mut self, _elapsed: Duration) {
        if let Some(bar) = self.discovery.take() {
            bar.finish_with_message("converged");
            end_line(&bar);
        }
    }

    fn gossip_started(&mut self, expected: u64) {
        self.gossip = Some(Self::bar(expected, "gossip", "deliveries"));
    }

    fn delivered(&mut self, delivered: u64, _expected: u64) {
        if let Some(bar) = &self.gossip {
            bar.set_position(delivered);
        }
    }

    fn gossip_finished(&mut self) {
        if let Some(bar) = self.gossip.take() {
            bar.finish_with_message("gossip done");
            end_line(&bar);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        // A run that failed leaves its bar where it stopped, so the error reads below it.
        for bar in [self.discovery.take(), self.gossip.take()]
            .into_iter()
            .flatten()
        {
            bar.abandon();
            end_line(&bar);
        }
    }
}

/// Moves past a finished bar's line (indicatif leaves the cursor on it), so what comes next
/// starts on a line of its own; nothing when the bar is hidden (not a terminal).
fn end_line(bar: &indicatif::ProgressBar) {
    if !bar.is_hidden() {
        eprintln!();
    }
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

/// The start of a gossip payload as log-safe text: at most 64 characters, anything but
/// printable ASCII replaced by `.` (payloads come from peers).
fn printable(payload: &[u8]) -> String {
    payload
        .iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}
