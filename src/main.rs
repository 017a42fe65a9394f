//! `tm2p2p`: the command-line front end of the tm2-p2p runtime.
//!
//! Thin by design: parse the command line, load or create what the command needs, call the
//! library, report. Errors are boxed (`anyhow`) only here, at the binary's edge.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tm2_p2p::{NodeKey, P2pConfig};

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
                "\nThe local testnet and `tm2p2p node` come next; today `init` and \
                 `show-id` work."
            );
            Ok(())
        }
        Some(Command::Init { home }) => init(&home),
        Some(Command::ShowId { home }) => show_id(&home),
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
        std::fs::write(&config_path, config.to_toml_string()?)
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
