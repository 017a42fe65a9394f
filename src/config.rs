//! [`P2pConfig`]: every knob of the p2p layer, with documented defaults, TOML in and out, and
//! validation that names the bad field.
//!
//! The TOML is flat (no `[p2p]` table) and uses TM2's key names where TM2 has the setting
//! (`laddr`, `max_num_inbound_peers`, `flush_throttle_timeout`, ...). Settings TM2 hard-codes
//! (ping interval, timeouts, peer-exchange interval, redial backoff, ...) are fields here with
//! TM2's values as defaults. Every field is optional in a file; a missing one takes its default,
//! and an unknown one is refused, naming it.
//!
//! Value formats:
//! - durations are strings in humantime syntax: `"100ms"`, `"3s"`, `"10m"`;
//! - rates are bytes per second, `0` meaning unlimited;
//! - addresses: `laddr` is `[tcp://]ip:port` (TM2 writes `tcp://0.0.0.0:26656`; the scheme is
//!   stripped), `external_address` and `metrics_addr` are `[tcp://]ip:port` or `""`;
//! - peer lists (`seeds`, `persistent_peers`, `private_peer_ids`) are arrays of strings, or, as
//!   TM2 writes them, one comma-separated string.
//!
//! Parsing ([`P2pConfig::from_toml_str`]) is separate from reading the file
//! ([`P2pConfig::from_toml_file`]); both run [`P2pConfig::validate`]. The file is read only up
//! to [`MAX_CONFIG_FILE_LEN`] bytes.

use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::types::{NetAddress, PeerId};

/// The largest accepted `max_packet_msg_payload_size`: 1 MiB. TM2 has no upper bound; a larger
/// payload only makes every packet buffer that large, and peers with a smaller setting
/// disconnect us anyway (their read limit is derived from their own payload size).
pub const MAX_PACKET_MSG_PAYLOAD_SIZE: usize = 1024 * 1024;

/// The longest accepted moniker, in bytes: far below NodeInfo's 10,240-byte limit, so a long
/// moniker cannot make our own NodeInfo unacceptable to every peer.
pub const MAX_MONIKER_LEN: usize = 1024;

/// The largest config file [`P2pConfig::from_toml_file`] reads: 1 MiB.
///
/// The file `tm2p2p init` writes, with a comment on every key, is about 4 KiB; the only
/// fields that grow are the peer lists (`seeds`, `persistent_peers`, `private_peer_ids`), at
/// under 100 bytes an address, so 1 MiB still holds over ten thousand peers. The bound exists
/// because the path comes from the command line or the home directory and may name anything:
/// a multi-gigabyte log, `/dev/zero`, a pipe that never ends. At most one byte more than this
/// is ever read or held in memory, whatever length the file system reports.
pub const MAX_CONFIG_FILE_LEN: u64 = 1024 * 1024;

/// A log level, as written in the config (`log_level = "debug"`) and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only critical errors.
    Critical,
    /// Errors.
    Error,
    /// Warnings and errors.
    #[serde(alias = "warn")]
    Warning,
    /// What a node operator wants to see.
    #[default]
    Info,
    /// Details for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl std::str::FromStr for LogLevel {
    type Err = ConfigError;

    /// The names the config uses: `critical`, `error`, `warning` (or `warn`), `info`, `debug`,
    /// `trace`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "critical" => Self::Critical,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "log_level",
                    reason: format!(
                        "{s:?} is not one of critical, error, warning, info, debug, trace"
                    ),
                });
            }
        })
    }
}

impl From<LogLevel> for slog::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Critical => Self::Critical,
            LogLevel::Error => Self::Error,
            LogLevel::Warning => Self::Warning,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// The p2p layer's configuration. Build it with [`Default`] and change fields, or load it from
/// TOML; either way call [`validate`](Self::validate) (the loaders do) before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    // ---- node ----
    /// The node's home directory, against which relative paths (`node_key_file`,
    /// `addr_book_file`) are resolved by [`resolve_paths`](Self::resolve_paths) and
    /// [`addr_book_path`](Self::addr_book_path). Default: empty (the caller's `--home`);
    /// [`from_toml_file`](Self::from_toml_file) sets it to the file's directory when the file
    /// leaves it empty. Without a home (and with a relative `addr_book_file`) the address book
    /// is kept in memory only, and the node logs a warning saying so. TM2: `home` (RootDir).
    pub home: PathBuf,
    /// Free text shown to peers in our NodeInfo: non-empty printable ASCII, not only spaces, at
    /// most [`MAX_MONIKER_LEN`] bytes (peers refuse a NodeInfo whose moniker is otherwise).
    /// Default: `"anonymous"` (TM2 uses the host name, falling back to `"anonymous"`; this crate
    /// does no I/O to look it up).
    pub moniker: String,
    /// The node key file (see [`crate::key`]); relative to `home`. Default:
    /// `"secrets/node_key.json"`, as TM2's `node_key_file`.
    pub node_key_file: PathBuf,
    /// The least severe log level the `tm2p2p node` binary shows (`--log-level` overrides it).
    /// The library itself logs to whatever `slog::Logger` the host gives it. Default: `info`,
    /// as TM2's `log_level`.
    pub log_level: LogLevel,

    // ---- listening and advertising ----
    /// The TCP address to listen on; port 0 lets the OS pick one. Written `tcp://ip:port`;
    /// the `tcp://` scheme is optional, other schemes and host names are refused.
    /// Default: `tcp://0.0.0.0:26656`, as TM2's `laddr`.
    #[serde(with = "listen_addr")]
    pub laddr: SocketAddr,
    /// The address advertised to peers in our NodeInfo instead of the listen address (set it
    /// behind NAT or when listening on `0.0.0.0`). Must be a dialable IP and port. Default:
    /// none (`""`), as TM2's `external_address`.
    #[serde(with = "external_addr")]
    pub external_address: Option<SocketAddr>,

    // ---- peers ----
    /// Bootstrap nodes (`id@host:port`), dialed at start when the address book knows too few
    /// addresses. Default: empty. TM2 parses `seeds` but never uses it.
    #[serde(deserialize_with = "seeds", serialize_with = "display_list")]
    pub seeds: Vec<NetAddress>,
    /// Peers (`id@host:port`) to stay connected to: dialed at start and redialed with backoff
    /// forever after any disconnect. Default: empty, as TM2's `persistent_peers` (where a bad
    /// entry is logged and skipped; here it is a config error).
    #[serde(deserialize_with = "persistent_peers", serialize_with = "display_list")]
    pub persistent_peers: Vec<NetAddress>,
    /// Ids of peers whose addresses are never shared by peer exchange. Default: empty, as
    /// TM2's `private_peer_ids`.
    #[serde(deserialize_with = "private_peer_ids", serialize_with = "display_list")]
    pub private_peer_ids: Vec<PeerId>,
    /// The most inbound peers connected at once, not counting persistent peers (which always
    /// get in and take no slot); 0 accepts only persistent peers. Default: 40, as TM2's
    /// `max_num_inbound_peers`.
    pub max_num_inbound_peers: usize,
    /// The most outbound peers connected at once, not counting persistent peers (dialed
    /// whatever the limit: the operator asked for them); 0 dials only persistent peers.
    /// Default: 10, as TM2's `max_num_outbound_peers`, whose comment says it excludes
    /// persistent peers while TM2's code counts them.
    pub max_num_outbound_peers: usize,
    /// Whether non-routable addresses (loopback, RFC 1918 private ranges, link-local, ...) may
    /// be shared and accepted by peer exchange. Set it for a local network whose nodes share
    /// loopback or private addresses. Default: false. TM2 has no switch and shares any valid
    /// address, loopback included.
    pub allow_non_routable: bool,

    // ---- connection (mconn) ----
    /// The longest time written data may wait before it is flushed to the socket. Unlike TM2,
    /// which always waits this long, data is flushed as soon as the send queue drains, so this
    /// is only an upper bound while packets keep coming. Must be positive. Default: 100 ms, as
    /// TM2's `flush_throttle_timeout`.
    #[serde(with = "humantime_serde")]
    pub flush_throttle_timeout: Duration,
    /// The most message bytes in one packet, 1 to [`MAX_PACKET_MSG_PAYLOAD_SIZE`]. Peers must
    /// agree: a peer with a smaller value disconnects us when we send larger packets. Default:
    /// 1024, as TM2's `max_packet_msg_payload_size` (where 0 is accepted and then makes the
    /// sender spin forever on empty packets).
    pub max_packet_msg_payload_size: usize,
    /// Send rate limit per connection, in bytes per second; 0 = unlimited. Default: 5,120,000,
    /// as TM2's `send_rate`.
    pub send_rate: u64,
    /// Receive rate limit per connection, in bytes per second; 0 = unlimited. Default:
    /// 5,120,000, as TM2's `recv_rate`.
    pub recv_rate: u64,
    /// How often a ping is sent on an otherwise quiet connection. Must be longer than
    /// `pong_timeout`. Default: 60 s, as TM2 (hard-coded there).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for the pong answering our ping before closing the connection. Must be
    /// positive and shorter than `ping_interval` (TM2's constructor panics otherwise). Default:
    /// 45 s, as TM2 (hard-coded there).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// How long `SendTo` waits for room in a full peer queue before answering false. Must be
    /// positive. Default: 10 s, as TM2's `defaultSendTimeout`.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long a connection's output may wait without the socket taking a byte before the
    /// peer is dropped as a slow reader (`DisconnectReason::SlowReader`): a peer that stops
    /// reading otherwise pins its queued messages forever. Must be positive. Default: 20 s
    /// (TM2 has no such limit; its writer blocks forever).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On a graceful stop (node shutdown, `DisconnectPeer`), how long a connection may keep
    /// writing the messages already queued before it closes (CometBFT's `FlushStop`, bounded).
    /// 0 = close at once, dropping them. Stops for an error never drain. Default: 500 ms.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,

    // ---- transport and dialing ----
    /// The time allowed for each step of upgrading a connection: the secret-connection
    /// handshake, then the NodeInfo exchange, each gets this long. Must be positive. Default: 3 s,
    /// as TM2 (hard-coded, per step).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The time an accepted connection has to send its first handshake message (its 35-byte
    /// ephemeral key), capped by `handshake_timeout`. An honest peer sends it as soon as the
    /// connection opens, so a silent or trickling socket gives its handshake slot back after
    /// this rather than the whole `handshake_timeout`. Dials are not affected. Must be
    /// positive. Default: 1 s (TM2 has only the 3 s step timeout).
    #[serde(with = "humantime_serde")]
    pub handshake_first_message_timeout: Duration,
    /// The time allowed for one outbound dial to resolve its address and open the TCP
    /// connection (each address a host name resolves to is tried in turn within it); each stage
    /// of the upgrade that follows has `handshake_timeout`. Must be positive. Default: 3 s, as
    /// TM2's `defaultDialTimeout`.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// The most outbound dials in flight at once. Must be positive. Default: 16: enough to fill the
    /// default 10 outbound slots in one round even when some dials fail, while bounding the
    /// sockets and handshakes a burst of `DialPeers` can start. TM2 dials one at a time.
    pub max_concurrent_dials: usize,
    /// The most inbound connections being upgraded (handshake, NodeInfo exchange) at once;
    /// beyond it a new connection takes the slot of the oldest unauthenticated connection of the
    /// subnet holding the most (see `max_handshakes_per_subnet`), or is closed at once when
    /// every slot holds an authenticated one. Must be positive. Default: 64: the default 40
    /// inbound slots plus room for churn, while a flood of half-open connections costs at most
    /// 64 handshakes. TM2 has no bound.
    pub max_handshakes_in_progress: usize,
    /// The most inbound connections from one remote IP being upgraded at once. Must be positive.
    /// Default: 8: a few nodes behind one NAT can connect together, while one host cannot take
    /// all of `max_handshakes_in_progress`. TM2 has no bound.
    pub max_handshakes_per_ip: usize,
    /// The most inbound connections from one subnet (a /24 of IPv4, a /64 of IPv6; loopback
    /// included) being upgraded at once. Must be positive. Default: 16: two hosts' worth, so a
    /// few addresses in one provider's block cannot take every slot. When all
    /// `max_handshakes_in_progress` slots are taken, a newcomer evicts the oldest
    /// unauthenticated connection of the subnet holding the most, rather than being refused.
    /// TM2 has no bound.
    pub max_handshakes_per_subnet: usize,

    // ---- persistent-peer redial ----
    /// The first redial delay of a persistent peer; each failed attempt doubles it (±10 %
    /// jitter) up to `redial_backoff_max`. Must be positive. Default: 1 s, as TM2.
    #[serde(with = "humantime_serde")]
    pub redial_backoff_base: Duration,
    /// The cap on the redial delay. Must be >= `redial_backoff_base`. Default: 10 min, as TM2.
    #[serde(with = "humantime_serde")]
    pub redial_backoff_max: Duration,
    /// How long a persistent peer's connection must stay up before its backoff restarts from
    /// `redial_backoff_base`, so a peer that connects and drops at once is not redialed every
    /// second. Must be positive. Default: 30 s. TM2 resets on every connect.
    #[serde(with = "humantime_serde")]
    pub redial_backoff_reset_after: Duration,

    // ---- peer exchange ----
    /// Whether to run peer exchange (channel `0x50`): ask peers for addresses and answer them.
    /// Default: true, as TM2's `pex`.
    pub pex: bool,
    /// Seed mode: the node only crawls and serves addresses, disconnecting a peer shortly after
    /// answering it so its slots stay free. Requires `pex`. Default: false (TM2 has no seed
    /// mode).
    pub seed_mode: bool,
    /// How often, while below `max_num_outbound_peers`, a random peer is asked for addresses.
    /// Must be positive. Default: 3 s, as TM2's `discoveryInterval`.
    #[serde(with = "humantime_serde")]
    pub pex_interval: Duration,
    /// The most addresses sent in, and used from, one peer-exchange response. Must be positive.
    /// Default: 30, as TM2's `maxPeersShared`. A response longer than both this and TM2's 30
    /// is refused as misbehaviour (gno sends up to 30 whatever our limit, and is never blamed
    /// for it). gno accepts a response of any length, a tm2-p2p node up to the larger of its
    /// limit and 30: raise it above 30 only where every peer accepts as many.
    pub max_pex_addresses: usize,
    /// The address book file; relative to `home`. Default: `"config/addrbook.json"`, as TM2's
    /// `addr_book_file`.
    pub addr_book_file: PathBuf,
    /// The most addresses the address book keeps. Must be positive. Default: 1000, as TM2. At
    /// most half are tried (reached by a dial of ours) and a tenth (at least 16) share a network
    /// group (see [`crate::pex::address_book`]).
    pub addr_book_size: usize,

    // ---- metrics ----
    /// Where to serve Prometheus metrics (`http://ADDR/metrics`, OpenMetrics text); port 0
    /// lets the OS pick one. Must not be the listen address. Default: none (`""`): not served.
    #[serde(with = "metrics_addr")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            home: PathBuf::new(),
            moniker: "anonymous".to_owned(),
            node_key_file: PathBuf::from("secrets/node_key.json"),
            log_level: LogLevel::Info,
            laddr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 26656),
            external_address: None,
            seeds: Vec::new(),
            persistent_peers: Vec::new(),
            private_peer_ids: Vec::new(),
            max_num_inbound_peers: 40,
            max_num_outbound_peers: 10,
            allow_non_routable: false,
            flush_throttle_timeout: Duration::from_millis(100),
            max_packet_msg_payload_size: 1024,
            send_rate: 5_120_000,
            recv_rate: 5_120_000,
            ping_interval: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(45),
            send_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(3),
            handshake_first_message_timeout: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(3),
            max_concurrent_dials: 16,
            max_handshakes_in_progress: 64,
            max_handshakes_per_ip: 8,
            max_handshakes_per_subnet: 16,
            redial_backoff_base: Duration::from_secs(1),
            redial_backoff_max: Duration::from_secs(10 * 60),
            redial_backoff_reset_after: Duration::from_secs(30),
            pex: true,
            seed_mode: false,
            pex_interval: Duration::from_secs(3),
            max_pex_addresses: 30,
            addr_book_file: PathBuf::from("config/addrbook.json"),
            addr_book_size: 1000,
            metrics_addr: None,
        }
    }
}

/// Why a configuration could not be loaded or is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file holds more than `limit` ([`MAX_CONFIG_FILE_LEN`]) bytes: it is not a
    /// config file (or the path names a device or an endless pipe). Nothing of it is parsed,
    /// and reading stopped at `limit + 1` bytes.
    #[error(
        "config file {} is larger than {limit} bytes, the most accepted; is it the right file?",
        path.display()
    )]
    TooLarge {
        /// The config file.
        path: PathBuf,
        /// The most bytes accepted ([`MAX_CONFIG_FILE_LEN`]).
        limit: u64,
    },
    /// The text is not valid TOML for this config: a syntax error, an unknown field (named in
    /// the message), a value of the wrong type, or a value that does not parse (a duration, an
    /// address, a peer id); the message gives the line.
    #[error("cannot parse config{}: {source}", path_suffix(.path.as_deref()))]
    Parse {
        /// The config file, when it came from one.
        path: Option<PathBuf>,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The config cannot be written as TOML: a count or rate is above `i64::MAX` (the largest
    /// TOML integer) or a path is not valid UTF-8.
    #[error("cannot write config as TOML: {0}")]
    Serialize(#[source] toml::ser::Error),
    /// A value parsed but is not acceptable (zero where a positive value is needed, a
    /// contradiction between fields, ...).
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// The TOML key of the bad field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads everything `reader` yields if that is at most `limit` bytes; `Ok(None)` when there is
/// more. Never reads, nor holds in memory, more than `limit + 1` bytes, whatever the source: a
/// file larger than it should be, one growing while it is read, a pipe, a device such as
/// `/dev/zero`. (A file's reported length is no bound: a pipe or a device reports 0.)
///
/// The one reader of local files with a size limit, shared by the config, the node key and the
/// address book loaders.
pub(crate) fn read_capped(reader: impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Opens `path` for reading if it is a regular file, with its metadata; an `InvalidInput`
/// error ("not a regular file") otherwise. Checked before opening, because opening a FIFO for
/// reading blocks until a writer comes, and again on the open handle, for a file swapped in
/// meanwhile. Used by the node key and address book loaders.
pub(crate) fn open_regular_file(path: &Path) -> io::Result<(std::fs::File, std::fs::Metadata)> {
    let not_a_file = || io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_a_file());
    }
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_a_file());
    }
    Ok((file, metadata))
}

fn path_suffix(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

impl P2pConfig {
    /// Parses a TOML document and [validates](Self::validate) it. Missing fields take their
    /// defaults; unknown fields are refused.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let config: Self =
            toml::from_str(toml).map_err(|source| ConfigError::Parse { path: None, source })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and [validates](Self::validate) a TOML file. Relative paths in it are
    /// left as written; see [`resolve_paths`](Self::resolve_paths). When the file leaves `home`
    /// empty, `home` is the file's directory: a node home holds its `config.toml` (as
    /// `tm2p2p init` writes it), so `addr_book_file` lands in that home, as documented.
    ///
    /// At most [`MAX_CONFIG_FILE_LEN`] bytes are accepted: a longer file (or an endless source
    /// such as `/dev/zero`) is [`ConfigError::TooLarge`], found after reading one byte past the
    /// limit. The path may be a pipe (`--config <(generate-config)`); opening one waits for its
    /// writer, as any reader of a pipe does. Text that is not UTF-8 is [`ConfigError::Io`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let io_err = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let Some(bytes) = read_capped(file, MAX_CONFIG_FILE_LEN).map_err(io_err)? else {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_CONFIG_FILE_LEN,
            });
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let mut config = Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: Some(path.to_owned()),
                source,
            },
            other => other,
        })?;
        if config.home.as_os_str().is_empty() {
            config.home = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            };
        }
        Ok(config)
    }

    /// The config as TOML, every field written; [`from_toml_str`](Self::from_toml_str) reads it
    /// back to an equal config.
    ///
    /// Fails only for what TOML cannot represent, which a config read from TOML never holds: a
    /// count or rate above `i64::MAX`, or a path that is not valid UTF-8.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Serialize)
    }

    /// Every key with what it means, in the order the keys are written: the text of the
    /// README's configuration reference and of the comments in
    /// [`to_commented_toml`](Self::to_commented_toml).
    pub fn key_docs() -> &'static [(&'static str, &'static str)] {
        KEY_DOCS
    }

    /// The config as TOML with a comment above every key saying what it does and its default:
    /// what `tm2p2p init` writes. Parses back to the same config.
    pub fn to_commented_toml(&self) -> Result<String, ConfigError> {
        let plain = self.to_toml_string()?;
        let defaults = Self::default().to_toml_string()?;
        let default_of = |key: &str| {
            defaults
                .lines()
                .find_map(|l| l.split_once(" = ").filter(|(k, _)| *k == key))
                .map(|(_, v)| v)
        };
        let mut out = String::from(
            "# tm2-p2p node configuration. Every key is optional: a missing key takes its\n\
             # default; an unknown key is refused. Durations: \"100ms\", \"3s\", \"10m\".\n",
        );
        for line in plain.lines() {
            let key = line.split(" = ").next().unwrap_or_default();
            if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| *k == key) {
                out.push('\n');
                for doc_line in wrap(doc, 92) {
                    out.push_str("# ");
                    out.push_str(&doc_line);
                    out.push('\n');
                }
                out.push_str("# Default: ");
                out.push_str(default_of(key).unwrap_or("unset"));
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
        Ok(out)
    }

    /// Checks every field, returning the first problem found, named by its TOML key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_moniker(&self.moniker)?;
        nonempty_path("node_key_file", &self.node_key_file)?;
        nonempty_path("addr_book_file", &self.addr_book_file)?;
        if let Some(addr) = self.external_address
            && (addr.ip().is_unspecified() || addr.port() == 0)
        {
            return invalid(
                "external_address",
                format!("{addr} cannot be dialed: it needs a specific IP and a non-zero port"),
            );
        }
        for (field, list) in [
            ("seeds", &self.seeds),
            ("persistent_peers", &self.persistent_peers),
        ] {
            for addr in list {
                if let Err(e) = addr.validate() {
                    return invalid(field, format!("{addr} cannot be dialed: {e}"));
                }
            }
        }
        if self.max_packet_msg_payload_size == 0
            || self.max_packet_msg_payload_size > MAX_PACKET_MSG_PAYLOAD_SIZE
        {
            return invalid(
                "max_packet_msg_payload_size",
                format!(
                    "{} is outside 1..={MAX_PACKET_MSG_PAYLOAD_SIZE} (0 would make the sender spin \
                     forever on empty packets)",
                    self.max_packet_msg_payload_size
                ),
            );
        }
        for (field, value) in [
            ("max_concurrent_dials", self.max_concurrent_dials),
            (
                "max_handshakes_in_progress",
                self.max_handshakes_in_progress,
            ),
            ("max_handshakes_per_ip", self.max_handshakes_per_ip),
            ("max_handshakes_per_subnet", self.max_handshakes_per_subnet),
            ("max_pex_addresses", self.max_pex_addresses),
            ("addr_book_size", self.addr_book_size),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1".to_owned());
            }
        }
        for (field, value) in [
            ("flush_throttle_timeout", self.flush_throttle_timeout),
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("send_timeout", self.send_timeout),
            ("write_timeout", self.write_timeout),
            ("handshake_timeout", self.handshake_timeout),
            (
                "handshake_first_message_timeout",
                self.handshake_first_message_timeout,
            ),
            ("dial_timeout", self.dial_timeout),
            ("redial_backoff_base", self.redial_backoff_base),
            ("redial_backoff_max", self.redial_backoff_max),
            (
                "redial_backoff_reset_after",
                self.redial_backoff_reset_after,
            ),
            ("pex_interval", self.pex_interval),
        ] {
            if value.is_zero() {
                return invalid(field, "must be greater than zero".to_owned());
            }
        }
        if self.pong_timeout >= self.ping_interval {
            return invalid(
                "pong_timeout",
                format!(
                    "{} must be shorter than ping_interval ({})",
                    humantime::format_duration(self.pong_timeout),
                    humantime::format_duration(self.ping_interval)
                ),
            );
        }
        if self.redial_backoff_max < self.redial_backoff_base {
            return invalid(
                "redial_backoff_max",
                format!(
                    "{} is shorter than redial_backoff_base ({})",
                    humantime::format_duration(self.redial_backoff_max),
                    humantime::format_duration(self.redial_backoff_base)
                ),
            );
        }
        if self.seed_mode && !self.pex {
            return invalid("seed_mode", "requires pex = true".to_owned());
        }
        if let Some(addr) = self.metrics_addr
            && addr.port() != 0
            && addr.port() == self.laddr.port()
            && (addr.ip() == self.laddr.ip()
                || addr.ip().is_unspecified()
                || self.laddr.ip().is_unspecified())
        {
            return invalid(
                "metrics_addr",
                format!("{addr} is the p2p listen address (laddr); pick another port"),
            );
        }
        Ok(())
    }

    /// Records `home` and resolves `node_key_file` and `addr_book_file` against it: a relative
    /// path is joined to `home`, an absolute one is kept (TM2's `rootify`). A relative `home`
    /// is first made absolute against the current directory, so every path is absolute
    /// afterwards: resolving again, or joining to `home` again, changes nothing, and a later
    /// change of directory does not move the files. The binary calls this with its `--home`
    /// directory before opening either file.
    pub fn resolve_paths(&mut self, home: impl Into<PathBuf>) {
        let home = home.into();
        self.home = std::path::absolute(&home).unwrap_or(home);
        self.node_key_file = self.home.join(&self.node_key_file);
        self.addr_book_file = self.home.join(&self.addr_book_file);
    }

    /// Where the address book is saved, resolved once here for every entry point (the binary,
    /// a host with a config from [`from_toml_file`](Self::from_toml_file) or built in code):
    /// `addr_book_file` when absolute, else `addr_book_file` under `home` made absolute
    /// against the current directory; `None` when both are relative and `home` is empty (no
    /// home: the book lives in memory).
    pub fn addr_book_path(&self) -> Option<PathBuf> {
        let path = if self.addr_book_file.is_absolute() {
            self.addr_book_file.clone()
        } else if self.home.as_os_str().is_empty() {
            return None;
        } else {
            self.home.join(&self.addr_book_file)
        };
        Some(std::path::absolute(&path).unwrap_or(path))
    }
}

/// The words of `text` in lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// What each key means: the one text the README's configuration reference (checked equal by
/// tests/readme.rs) and the comments `to_commented_toml` writes are made of, in the order the
/// keys are written. (The fields' rustdoc says more for library users: reasons, TM2's
/// behaviour.)
const KEY_DOCS: &[(&str, &str)] = &[
    (
        "home",
        "The node's home; relative paths (`node_key_file`, `addr_book_file`) are resolved against it. Set by `--home`; left empty in a file read with `P2pConfig::from_toml_file`, it is that file's directory. Without a home the address book is kept in memory only (the node logs a warning).",
    ),
    (
        "moniker",
        "A name shown to peers in our NodeInfo: printable ASCII, at most 1024 bytes.",
    ),
    (
        "node_key_file",
        "The node key (Ed25519, TM2's format), relative to `home`.",
    ),
    (
        "log_level",
        "Least severe log level `tm2p2p node` shows: critical, error, warning, info, debug, trace; `--log-level` overrides it.",
    ),
    (
        "laddr",
        "Address to listen on, `tcp://ip:port`; port 0 picks a free one.",
    ),
    (
        "external_address",
        "Address advertised to peers instead of `laddr` (behind NAT, or when listening on 0.0.0.0); `\"\"` = none.",
    ),
    (
        "metrics_addr",
        "Where to serve Prometheus metrics (`ip:port`, port 0 picks one); `\"\"` = off.",
    ),
    (
        "seeds",
        "Bootstrap nodes, `id@host:port`, dialed while the address book knows too few addresses.",
    ),
    (
        "persistent_peers",
        "Peers to stay connected to, `id@host:port`: redialed forever with backoff, outside the peer limits.",
    ),
    (
        "private_peer_ids",
        "Peer ids whose addresses peer exchange never shares.",
    ),
    (
        "max_num_inbound_peers",
        "Most inbound peers at once, persistent peers not counted; 0 = only persistent peers.",
    ),
    (
        "max_num_outbound_peers",
        "Most outbound peers at once, persistent peers not counted; 0 = dial only persistent peers.",
    ),
    (
        "allow_non_routable",
        "Let peer exchange share and accept loopback and private addresses (local networks, testnets).",
    ),
    (
        "flush_throttle_timeout",
        "Longest time written data waits before a flush (data is flushed as soon as the send queue drains).",
    ),
    (
        "max_packet_msg_payload_size",
        "Message bytes per packet, 1 to 1 MiB; peers must agree.",
    ),
    ("send_rate", "Send limit per peer, bytes/s; 0 = unlimited."),
    (
        "recv_rate",
        "Receive limit per peer, bytes/s; 0 = unlimited.",
    ),
    (
        "ping_interval",
        "How often a quiet connection is pinged; longer than `pong_timeout`.",
    ),
    (
        "pong_timeout",
        "A peer that does not answer a ping within this is disconnected.",
    ),
    (
        "send_timeout",
        "How long `SendTo` waits for room in a full peer queue before answering false.",
    ),
    (
        "write_timeout",
        "A peer whose socket takes no byte for this long (it stopped reading) is dropped as a slow reader.",
    ),
    (
        "drain_timeout",
        "On shutdown or `DisconnectPeer`, how long already-queued messages may still be written before the connection closes; `0s` = close at once.",
    ),
    (
        "handshake_timeout",
        "Time allowed for each upgrade step: the secret-connection handshake, then the NodeInfo exchange.",
    ),
    (
        "handshake_first_message_timeout",
        "Time an accepted connection has to send its first handshake message (its ephemeral key; an honest peer sends it at once); capped by `handshake_timeout`.",
    ),
    (
        "dial_timeout",
        "Time allowed for a dial to resolve its address and open the TCP connection (each address a name resolves to in turn); each upgrade stage then has `handshake_timeout`.",
    ),
    (
        "max_concurrent_dials",
        "Most outbound dials in flight at once.",
    ),
    (
        "max_handshakes_in_progress",
        "Most inbound connections being upgraded at once; when all are taken, a newcomer evicts the oldest unauthenticated connection of the subnet holding the most.",
    ),
    (
        "max_handshakes_per_ip",
        "Most inbound connections being upgraded at once from one IP.",
    ),
    (
        "max_handshakes_per_subnet",
        "Most inbound connections being upgraded at once from one /24 (IPv4) or /64 (IPv6), loopback included.",
    ),
    (
        "redial_backoff_base",
        "First redial delay of a persistent peer; doubles after each failure (±10 % jitter).",
    ),
    ("redial_backoff_max", "Longest redial delay."),
    (
        "redial_backoff_reset_after",
        "A persistent peer's connection up this long restarts its backoff from the base.",
    ),
    (
        "pex",
        "Peer exchange on channel 0x50: ask peers for addresses and answer them.",
    ),
    (
        "seed_mode",
        "Only crawl and serve addresses, disconnecting peers once answered; needs `pex`.",
    ),
    (
        "pex_interval",
        "How often a random peer is asked for addresses while below `max_num_outbound_peers`.",
    ),
    (
        "max_pex_addresses",
        "Most addresses sent in, and used from, one peer-exchange response (one longer than both this and TM2's 30 is refused).",
    ),
    (
        "addr_book_file",
        "The address book file, relative to `home`.",
    ),
    (
        "addr_book_size",
        "Most addresses the address book keeps: at most half of them tried (reached by a dial of ours), and at most a tenth (at least 16) per network group (docs/ARCHITECTURE.md, \"Peer-exchange core\").",
    ),
];

fn invalid(field: &'static str, reason: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { field, reason })
}

fn nonempty_path(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return invalid(
            field,
            "must not be empty (remove the line to use the default)".to_owned(),
        );
    }
    Ok(())
}

/// The moniker rules of TM2's NodeInfo validation (`tm2/pkg/p2p/types/node_info.go`), plus a
/// length cap.
fn check_moniker(moniker: &str) -> Result<(), ConfigError> {
    let reason = if moniker.trim_matches(' ').is_empty() {
        "must not be empty or only spaces"
    } else if !moniker.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        "must be printable ASCII"
    } else if moniker.len() > MAX_MONIKER_LEN {
        return invalid(
            "moniker",
            format!(
                "is {} bytes long, more than {MAX_MONIKER_LEN}",
                moniker.len()
            ),
        );
    } else {
        return Ok(());
    };
    invalid("moniker", reason.to_owned())
}

/// Parses a listen address: `[tcp://]ip:port`.
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.split_once("://") {
        Some(("tcp", rest)) => rest,
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?} (only tcp)")),
        None => s,
    };
    addr.parse()
        .map_err(|_| format!("{s:?} is not ip:port (host names are not resolved here)"))
}

/// `laddr`: a `SocketAddr` written `tcp://ip:port`.
mod listen_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("tcp://{addr}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse_socket_addr(&s).map_err(|e| de::Error::custom(format!("laddr: {e}")))
    }
}

/// `external_address`: an optional `SocketAddr`, `""` when unset (TM2's empty string).
mod external_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serialize_optional_addr(addr, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        deserialize_optional_addr(d, "external_address")
    }
}

/// `metrics_addr`: an optional `SocketAddr`, `""` when unset.
mod metrics_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serialize_optional_addr(addr, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        deserialize_optional_addr(d, "metrics_addr")
    }
}

/// Writes an optional address as `ip:port`, or `""` when unset.
fn serialize_optional_addr<S: Serializer>(
    addr: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(""),
    }
}

/// Reads an optional address, `[tcp://]ip:port` or `""`; an error names `field`.
fn deserialize_optional_addr<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    parse_socket_addr(&s)
        .map(Some)
        .map_err(|e| de::Error::custom(format!("{field}: {e}")))
}

/// Writes a list as an array of its items' display strings.
fn display_list<T: fmt::Display, S: Serializer>(list: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(ToString::to_string))
}

fn seeds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NetAddress>, D::Error> {
    d.deserialize_any(ListVisitor::new("seeds"))
}

fn persistent_peers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NetAddress>, D::Error> {
    d.deserialize_any(ListVisitor::new("persistent_peers"))
}

fn private_peer_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
    d.deserialize_any(ListVisitor::new("private_peer_ids"))
}

/// Reads a list of `T` from an array of strings or from one comma-separated string (TM2's
/// form: split on `,`, trim spaces, drop empty items). An entry that does not parse is an
/// error naming the field and the entry.
struct ListVisitor<T> {
    field: &'static str,
    item: PhantomData<T>,
}

impl<T> ListVisitor<T> {
    const fn new(field: &'static str) -> Self {
        Self {
            field,
            item: PhantomData,
        }
    }
}

impl<T> ListVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn parse<E: de::Error>(&self, entry: &str) -> Result<T, E> {
        entry
            .parse()
            .map_err(|e| E::custom(format!("{}: bad entry {entry:?}: {e}", self.field)))
    }
}

impl<'de, T> Visitor<'de> for ListVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: an array of strings or a comma-separated string",
            self.field
        )
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
        s.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| self.parse(entry))
            .collect()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = seq.next_element::<String>()? {
            out.push(self.parse(&entry)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_parses_the_config_names_and_names_the_field_otherwise() {
        for (text, level) in [
            ("critical", LogLevel::Critical),
            ("error", LogLevel::Error),
            ("warning", LogLevel::Warning),
            ("warn", LogLevel::Warning),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(text.parse::<LogLevel>().unwrap(), level);
        }
        assert!(matches!(
            "loud".parse::<LogLevel>(),
            Err(ConfigError::Invalid {
                field: "log_level",
                ..
            })
        ));
    }
    use proptest::prelude::*;

    const ID_A: &str = "g1x36slx9at870e9rd53d2405n80s4ff94dx42dl";
    const ID_B: &str = "g1zw0rjs8xfd2fzu3q3rv6p46pv28usfhqc8742q";

    /// The error of parsing `toml`, as text.
    fn parse_err(toml: &str) -> String {
        match P2pConfig::from_toml_str(toml) {
            Err(e @ ConfigError::Parse { .. }) => e.to_string(),
            other => panic!("expected a parse error for {toml:?}, got {other:?}"),
        }
    }

    /// The field named by the validation error of `config`.
    fn invalid_field(config: &P2pConfig) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn unknown_field_is_refused_naming_it() {
        let msg = parse_err("max_num_inbound_peers = 3\nmax_inbund_peers = 3\n");
        assert!(msg.contains("unknown field `max_inbund_peers`"), "{msg}");
        // A [p2p] table (TM2's whole config.toml) is an unknown field too, not silently skipped.
        let msg = parse_err("[p2p]\nladdr = \"tcp://0.0.0.0:1\"\n");
        assert!(msg.contains("unknown field `p2p`"), "{msg}");
    }

    #[test]
    fn zero_payload_size_is_refused_naming_the_field() {
        let err = P2pConfig::from_toml_str("max_packet_msg_payload_size = 0").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "max_packet_msg_payload_size",
                ..
            }
        ));
        assert!(
            err.to_string().contains("max_packet_msg_payload_size"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_and_syntax_are_parse_errors() {
        for bad in [
            "max_num_inbound_peers = \"40\"",
            "max_num_inbound_peers = -1",
            "max_num_inbound_peers = 1.5",
            "pex = \"yes\"",
            "send_rate = -5",
            "ping_interval = 60",
            "moniker = ",
            "laddr = [\"tcp://0.0.0.0:1\"]",
            "seeds = 5",
            "seeds = [5]",
        ] {
            parse_err(bad);
        }
    }

    #[test]
    fn bad_durations_are_parse_errors_naming_the_line() {
        for bad in ["\"\"", "\"3\"", "\"-3s\"", "\"3 parsecs\"", "\"s\""] {
            let msg = parse_err(&format!("dial_timeout = {bad}"));
            assert!(msg.contains("dial_timeout"), "{msg}");
        }
    }

    #[test]
    fn bad_listen_addresses_are_refused() {
        for bad in [
            "\"udp://0.0.0.0:26656\"",
            "\"localhost:26656\"",
            "\"0.0.0.0\"",
            "\"tcp://\"",
            "\"\"",
            "\"0.0.0.0:65536\"",
            "\"::1:26656\"",
        ] {
            let msg = parse_err(&format!("laddr = {bad}"));
            assert!(msg.contains("laddr"), "{msg}");
        }
    }

    #[test]
    fn bad_peer_entries_are_errors_naming_the_field() {
        for field in ["seeds", "persistent_peers"] {
            for value in [
                "[\"not-an-address\"]".to_owned(),
                format!("[\"{ID_A}@1.2.3.4:0\"]"),
                format!("[\"{ID_A}@1.2.3.4\"]"),
                format!("\"{ID_A}@1.2.3.4:26656, nope\""),
                // Multi-line array: the message must name the field, not only the entry's line.
                format!("[\n  \"{ID_A}@1.2.3.4:26656\",\n  \"1.2.3.4:26656\",\n]"),
            ] {
                let msg = parse_err(&format!("{field} = {value}"));
                assert!(msg.contains(&format!("{field}: bad entry")), "{msg}");
            }
            // Parsed, but not dialable: refused by validate, naming the field.
            let err = P2pConfig::from_toml_str(&format!("{field} = [\"{ID_A}@0.0.0.0:26656\"]"))
                .unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { field: f, .. } if f == field),
                "{err}"
            );
        }
        let msg = parse_err("private_peer_ids = [\"g1notanid\"]");
        assert!(msg.contains("private_peer_ids: bad entry"), "{msg}");
    }

    #[test]
    fn each_validation_rule_names_its_field() {
        type Rule = (&'static str, fn(&mut P2pConfig));
        let rules: &[Rule] = &[
            ("moniker", |c| c.moniker = String::new()),
            ("moniker", |c| c.moniker = "   ".to_owned()),
            ("moniker", |c| c.moniker = "caf\u{e9}".to_owned()),
            ("moniker", |c| c.moniker = "tab\there".to_owned()),
            ("moniker", |c| c.moniker = "x".repeat(MAX_MONIKER_LEN + 1)),
            ("node_key_file", |c| c.node_key_file = PathBuf::new()),
            ("addr_book_file", |c| c.addr_book_file = PathBuf::new()),
            ("external_address", |c| {
                c.external_address = Some("0.0.0.0:26656".parse().unwrap());
            }),
            ("external_address", |c| {
                c.external_address = Some("1.2.3.4:0".parse().unwrap());
            }),
            ("metrics_addr", |c| {
                c.metrics_addr = Some(c.laddr);
            }),
            ("metrics_addr", |c| {
                c.laddr = "127.0.0.1:26656".parse().unwrap();
                c.metrics_addr = Some("0.0.0.0:26656".parse().unwrap());
            }),
            ("max_packet_msg_payload_size", |c| {
                c.max_packet_msg_payload_size = 0;
            }),
            ("max_packet_msg_payload_size", |c| {
                c.max_packet_msg_payload_size = MAX_PACKET_MSG_PAYLOAD_SIZE + 1;
            }),
            ("max_concurrent_dials", |c| c.max_concurrent_dials = 0),
            ("max_handshakes_in_progress", |c| {
                c.max_handshakes_in_progress = 0;
            }),
            ("max_handshakes_per_ip", |c| c.max_handshakes_per_ip = 0),
            ("max_handshakes_per_subnet", |c| {
                c.max_handshakes_per_subnet = 0;
            }),
            ("max_pex_addresses", |c| c.max_pex_addresses = 0),
            ("addr_book_size", |c| c.addr_book_size = 0),
            ("flush_throttle_timeout", |c| {
                c.flush_throttle_timeout = Duration::ZERO;
            }),
            ("ping_interval", |c| c.ping_interval = Duration::ZERO),
            ("pong_timeout", |c| c.pong_timeout = Duration::ZERO),
            ("pong_timeout", |c| c.pong_timeout = c.ping_interval),
            ("pong_timeout", |c| {
                c.pong_timeout = c.ping_interval + Duration::from_nanos(1);
            }),
            ("send_timeout", |c| c.send_timeout = Duration::ZERO),
            ("write_timeout", |c| c.write_timeout = Duration::ZERO),
            ("handshake_timeout", |c| {
                c.handshake_timeout = Duration::ZERO
            }),
            ("handshake_first_message_timeout", |c| {
                c.handshake_first_message_timeout = Duration::ZERO;
            }),
            ("dial_timeout", |c| c.dial_timeout = Duration::ZERO),
            ("redial_backoff_base", |c| {
                c.redial_backoff_base = Duration::ZERO;
            }),
            ("redial_backoff_max", |c| {
                c.redial_backoff_max = c.redial_backoff_base - Duration::from_nanos(1);
            }),
            ("redial_backoff_reset_after", |c| {
                c.redial_backoff_reset_after = Duration::ZERO;
            }),
            ("pex_interval", |c| c.pex_interval = Duration::ZERO),
            ("seed_mode", |c| {
                c.seed_mode = true;
                c.pex = false;
            }),
        ];
        for (field, break_it) in rules {
            let mut config = P2pConfig::default();
            break_it(&mut config);
            assert_eq!(invalid_field(&config), *field);
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let mut config = P2pConfig::default();
        config.max_packet_msg_payload_size = 1;
        config.pong_timeout = config.ping_interval - Duration::from_nanos(1);
        config.redial_backoff_max = config.redial_backoff_base;
        config.max_num_inbound_peers = 0;
        config.max_num_outbound_peers = 0;
        config.send_rate = 0;
        config.recv_rate = 0;
        config.moniker = "x".repeat(MAX_MONIKER_LEN);
        config.seed_mode = true;
        config.drain_timeout = Duration::ZERO;
        config.validate().unwrap();
        config.max_packet_msg_payload_size = MAX_PACKET_MSG_PAYLOAD_SIZE;
        config.validate().unwrap();
    }

    #[test]
    fn defaults_are_valid_and_tm2s() {
        let config = P2pConfig::default();
        config.validate().unwrap();
        assert_eq!(config.laddr, "0.0.0.0:26656".parse().unwrap());
        assert_eq!(config.max_num_inbound_peers, 40);
        assert_eq!(config.max_num_outbound_peers, 10);
        assert_eq!(config.max_packet_msg_payload_size, 1024);
        assert_eq!((config.send_rate, config.recv_rate), (5_120_000, 5_120_000));
        assert_eq!(config.flush_throttle_timeout, Duration::from_millis(100));
        assert_eq!(config.ping_interval, Duration::from_secs(60));
        assert_eq!(config.pong_timeout, Duration::from_secs(45));
        assert_eq!(config.pex_interval, Duration::from_secs(3));
        assert_eq!(config.write_timeout, Duration::from_secs(20));
        assert_eq!(config.drain_timeout, Duration::from_millis(500));
        assert_eq!(config.node_key_file, Path::new("secrets/node_key.json"));
        assert_eq!(config.addr_book_file, Path::new("config/addrbook.json"));
        // An empty document is the defaults.
        assert_eq!(P2pConfig::from_toml_str("").unwrap(), config);
    }

    #[test]
    fn partial_toml_keeps_defaults_for_the_rest() {
        let config = P2pConfig::from_toml_str(
            "laddr = \"tcp://127.0.0.1:0\"\nflush_throttle_timeout = \"10ms\"\n\
             dial_timeout = \"3s\"\nredial_backoff_max = \"10m\"\npex = false\n",
        )
        .unwrap();
        assert_eq!(config.laddr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.flush_throttle_timeout, Duration::from_millis(10));
        assert_eq!(config.dial_timeout, Duration::from_secs(3));
        assert_eq!(config.redial_backoff_max, Duration::from_secs(600));
        assert!(!config.pex);
        let expected = P2pConfig {
            laddr: config.laddr,
            flush_throttle_timeout: config.flush_throttle_timeout,
            pex: false,
            ..P2pConfig::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn listen_addresses_with_and_without_scheme() {
        for (text, want) in [
            ("tcp://0.0.0.0:26656", "0.0.0.0:26656"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("tcp://[::1]:26656", "[::1]:26656"),
        ] {
            let config = P2pConfig::from_toml_str(&format!("laddr = \"{text}\"")).unwrap();
            assert_eq!(config.laddr, want.parse::<SocketAddr>().unwrap());
        }
    }

    #[test]
    fn external_address_empty_or_set() {
        let config = P2pConfig::from_toml_str("external_address = \"\"").unwrap();
        assert_eq!(config.external_address, None);
        let config =
            P2pConfig::from_toml_str("external_address = \"tcp://203.0.113.7:26656\"").unwrap();
        assert_eq!(
            config.external_address,
            Some("203.0.113.7:26656".parse().unwrap())
        );
        let msg = parse_err("external_address = \"node.example.com:26656\"");
        assert!(msg.contains("external_address"), "{msg}");
    }

    #[test]
    fn peer_lists_as_arrays_or_tm2_comma_strings() {
        let a = format!("{ID_A}@1.2.3.4:26656");
        let b = format!("{ID_B}@[2001:4860::1]:26656");
        let from_array = P2pConfig::from_toml_str(&format!(
            "persistent_peers = [\"{a}\", \"{b}\"]\nseeds = [\"tcp://{a}\"]\n\
             private_peer_ids = [\"{ID_A}\"]"
        ))
        .unwrap();
        let from_string = P2pConfig::from_toml_str(&format!(
            "persistent_peers = \" {a} ,, {b},\"\nseeds = \"tcp://{a}\"\n\
             private_peer_ids = \"{ID_A}\""
        ))
        .unwrap();
        assert_eq!(from_array, from_string);
        let shown: Vec<String> = from_array
            .persistent_peers
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, [a.clone(), b]);
        assert_eq!(from_array.seeds[0].to_string(), a);
        assert_eq!(from_array.private_peer_ids[0].to_string(), ID_A);
        // TM2's default empty string is an empty list.
        let empty = P2pConfig::from_toml_str("seeds = \"\"\npersistent_peers = \" , \"").unwrap();
        assert!(empty.seeds.is_empty() && empty.persistent_peers.is_empty());
    }

    #[test]
    fn metrics_addr_is_off_by_default_and_parses() {
        assert_eq!(P2pConfig::default().metrics_addr, None);
        let config = P2pConfig::from_toml_str("metrics_addr = \"127.0.0.1:26660\"").unwrap();
        assert_eq!(
            config.metrics_addr,
            Some("127.0.0.1:26660".parse().unwrap())
        );
        assert!(
            config
                .to_toml_string()
                .unwrap()
                .contains("metrics_addr = \"127.0.0.1:26660\"")
        );
        let config = P2pConfig::from_toml_str("metrics_addr = \"\"").unwrap();
        assert_eq!(config.metrics_addr, None);
        // Port 0 (the OS picks) is fine, even with laddr on port 0 too.
        let config =
            P2pConfig::from_toml_str("laddr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"")
                .unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:0".parse().unwrap()));
        let msg = parse_err("metrics_addr = \"localhost:26660\"");
        assert!(msg.contains("metrics_addr"), "{msg}");
    }

    #[test]
    fn to_toml_string_round_trips() {
        let mut config = P2pConfig::default();
        config.to_toml_string().unwrap();
        assert_eq!(
            P2pConfig::from_toml_str(&config.to_toml_string().unwrap()).unwrap(),
            config
        );
        config.moniker = "node \"one\" \\ two".to_owned();
        config.external_address = Some("[2001:4860::1]:26656".parse().unwrap());
        config.metrics_addr = Some("127.0.0.1:26660".parse().unwrap());
        config.persistent_peers = vec![format!("{ID_A}@10.0.0.1:26656").parse().unwrap()];
        config.seeds = vec![format!("{ID_B}@seed.example.com:26656").parse().unwrap()];
        config.private_peer_ids = vec![ID_B.parse().unwrap()];
        config.flush_throttle_timeout = Duration::from_micros(1500);
        config.pong_timeout = Duration::new(59, 999_999_999);
        let text = config.to_toml_string().unwrap();
        assert!(text.contains("laddr = \"tcp://0.0.0.0:26656\""), "{text}");
        assert!(
            text.contains("external_address = \"[2001:4860::1]:26656\""),
            "{text}"
        );
        assert_eq!(P2pConfig::from_toml_str(&text).unwrap(), config);
    }

    #[test]
    fn unwritable_integer_is_a_serialize_error() {
        let config = P2pConfig {
            send_rate: u64::MAX,
            ..P2pConfig::default()
        };
        assert!(matches!(
            config.to_toml_string(),
            Err(ConfigError::Serialize(_))
        ));
    }

    #[test]
    fn from_toml_file_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = P2pConfig::from_toml_file(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "bogus = 1\n").unwrap();
        let err = P2pConfig::from_toml_file(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad.toml") && msg.contains("bogus"), "{msg}");

        let invalid = dir.path().join("invalid.toml");
        std::fs::write(&invalid, "max_concurrent_dials = 0\n").unwrap();
        let err = P2pConfig::from_toml_file(&invalid).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                field: "max_concurrent_dials",
                ..
            }
        ));

        let good = dir.path().join("config.toml");
        let config = P2pConfig {
            max_num_outbound_peers: 3,
            ..P2pConfig::default()
        };
        std::fs::write(&good, config.to_toml_string().unwrap()).unwrap();
        let home = dir.path().to_owned();
        assert_eq!(
            P2pConfig::from_toml_file(&good).unwrap(),
            P2pConfig { home, ..config }
        );
    }

    /// `len` bytes that are one valid TOML comment line: `# xxx...x\n`.
    fn comment_of_len(len: u64) -> Vec<u8> {
        let len = usize::try_from(len).unwrap();
        let mut text = vec![b'x'; len];
        text[0] = b'#';
        text[len - 1] = b'\n';
        text
    }

    #[test]
    fn config_file_over_the_limit_is_too_large_even_when_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        // Valid TOML (a comment), one byte too long.
        std::fs::write(&path, comment_of_len(MAX_CONFIG_FILE_LEN + 1)).unwrap();
        let err = P2pConfig::from_toml_file(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::TooLarge { path: p, limit } if *p == path && *limit == MAX_CONFIG_FILE_LEN),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("huge.toml") && msg.contains(&MAX_CONFIG_FILE_LEN.to_string()),
            "{msg}"
        );
    }

    #[test]
    fn config_file_of_exactly_the_limit_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // Valid TOML of exactly the limit loads.
        std::fs::write(&path, comment_of_len(MAX_CONFIG_FILE_LEN)).unwrap();
        assert_eq!(
            P2pConfig::from_toml_file(&path).unwrap(),
            P2pConfig {
                home: dir.path().to_owned(),
                ..P2pConfig::default()
            }
        );
        // Garbage of exactly the limit gets past the size check to the parser.
        let garbage = vec![b'@'; usize::try_from(MAX_CONFIG_FILE_LEN).unwrap()];
        std::fs::write(&path, garbage).unwrap();
        let err = P2pConfig::from_toml_file(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { path: Some(p), .. } if *p == path),
            "{err}"
        );
    }

    #[test]
    fn config_file_that_is_not_utf8_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, b"moniker = \"\xff\"\n").unwrap();
        let err = P2pConfig::from_toml_file(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData),
            "{err:?}"
        );
    }

    #[test]
    fn the_config_init_writes_is_far_below_the_limit() {
        let text = P2pConfig::default().to_commented_toml().unwrap();
        assert!(
            (text.len() as u64) < MAX_CONFIG_FILE_LEN / 16,
            "{}",
            text.len()
        );
    }

    #[cfg(unix)]
    #[test]
    fn endless_config_sources_are_read_only_up_to_the_limit() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        // A symlink to /dev/zero: endless NUL bytes, and a reported length of 0.
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = P2pConfig::from_toml_file(&zero).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");

        // A pipe whose writer never stops on its own (`--config <(yes '#')`).
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            let mut pipe = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .unwrap();
            let chunk = [b'#'; 64 * 1024];
            let mut sent = 0_u64;
            // Stops when the reader closes the pipe (EPIPE), or after 64 times the limit.
            while sent < 64 * MAX_CONFIG_FILE_LEN && pipe.write_all(&chunk).is_ok() {
                sent += chunk.len() as u64;
            }
            sent
        });
        let err = P2pConfig::from_toml_file(&fifo).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        let sent = writer.join().unwrap();
        assert!(sent < 64 * MAX_CONFIG_FILE_LEN, "the reader kept reading");
    }

    #[test]
    fn read_capped_stops_one_byte_past_the_limit() {
        let endless = io::repeat(7);
        assert_eq!(read_capped(endless, 10).unwrap(), None);
        // Exactly limit + 1 bytes are consumed from the source.
        let mut source = &[7_u8; 100][..];
        assert_eq!(read_capped(&mut source, 10).unwrap(), None);
        assert_eq!(source.len(), 89);
        assert_eq!(
            read_capped(&[1_u8, 2, 3][..], 3).unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(read_capped(&[1_u8, 2, 3][..], 2).unwrap(), None);
        assert_eq!(read_capped(&[][..], 0).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_relative_home_resolves_once_to_absolute_paths() {
        let cwd = std::env::current_dir().unwrap();
        let mut config = P2pConfig::default();
        config.resolve_paths("./node1");
        assert_eq!(config.home, cwd.join("node1"));
        let book = cwd.join("node1/config/addrbook.json");
        assert_eq!(config.addr_book_file, book);
        assert_eq!(config.addr_book_path(), Some(book.clone()));
        // Again: nothing moves (the book went to <home>/<home>/config/addrbook.json).
        config.resolve_paths(config.home.clone());
        assert_eq!(config.addr_book_path(), Some(book));
        assert_eq!(
            config.node_key_file,
            cwd.join("node1/secrets/node_key.json")
        );
    }

    #[test]
    fn the_address_book_path_needs_a_home_or_an_absolute_file() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(P2pConfig::default().addr_book_path(), None);
        let relative_home = P2pConfig {
            home: PathBuf::from("node2"),
            ..P2pConfig::default()
        };
        assert_eq!(
            relative_home.addr_book_path(),
            Some(cwd.join("node2/config/addrbook.json"))
        );
        let absolute_file = P2pConfig {
            addr_book_file: PathBuf::from("/var/lib/p2p/book.json"),
            ..P2pConfig::default()
        };
        assert_eq!(
            absolute_file.addr_book_path(),
            Some(PathBuf::from("/var/lib/p2p/book.json"))
        );
    }

    #[test]
    fn a_config_file_without_a_home_is_in_its_own_home() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, P2pConfig::default().to_commented_toml().unwrap()).unwrap();
        let config = P2pConfig::from_toml_file(&path).unwrap();
        assert_eq!(config.home, dir.path());
        assert_eq!(
            config.addr_book_path(),
            Some(dir.path().join("config/addrbook.json"))
        );
        // A home the file sets is kept.
        let elsewhere = P2pConfig {
            home: PathBuf::from("/srv/node"),
            ..P2pConfig::default()
        };
        std::fs::write(&path, elsewhere.to_toml_string().unwrap()).unwrap();
        assert_eq!(P2pConfig::from_toml_file(&path).unwrap(), elsewhere);
    }

    #[test]
    fn resolve_paths_joins_relative_and_keeps_absolute() {
        let mut config = P2pConfig {
            addr_book_file: PathBuf::from("/var/lib/p2p/book.json"),
            ..P2pConfig::default()
        };
        config.resolve_paths("/home/node");
        assert_eq!(config.home, Path::new("/home/node"));
        assert_eq!(
            config.node_key_file,
            Path::new("/home/node/secrets/node_key.json")
        );
        assert_eq!(config.addr_book_file, Path::new("/var/lib/p2p/book.json"));
    }

    fn arb_duration() -> impl Strategy<Value = Duration> {
        // Up to about 300 years, at nanosecond precision: humantime must write and read it back
        // exactly.
        (0u64..10_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
    }

    fn arb_socket_addr() -> impl Strategy<Value = SocketAddr> {
        (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    fn arb_net_address() -> impl Strategy<Value = NetAddress> {
        (any::<[u8; 20]>(), any::<IpAddr>(), 1u16..).prop_map(|(id, ip, port)| {
            NetAddress::from_socket_addr(PeerId::from_bytes(id), SocketAddr::new(ip, port)).unwrap()
        })
    }

    fn arb_config() -> impl Strategy<Value = P2pConfig> {
        let text = "[ -~]{0,40}";
        (
            (
                text,
                text,
                arb_socket_addr(),
                proptest::option::of(arb_socket_addr()),
                proptest::collection::vec(arb_net_address(), 0..4),
                proptest::collection::vec(any::<[u8; 20]>(), 0..4),
                0usize..=i64::MAX as usize,
                0u64..=i64::MAX as u64,
                any::<bool>(),
            ),
            proptest::collection::vec(arb_duration(), 10),
        )
            .prop_map(
                |((moniker, path, laddr, external, peers, ids, count, rate, flag), d)| P2pConfig {
                    moniker,
                    node_key_file: PathBuf::from(&path),
                    laddr,
                    external_address: external,
                    metrics_addr: external,
                    seeds: peers.clone(),
                    persistent_peers: peers,
                    private_peer_ids: ids.into_iter().map(PeerId::from_bytes).collect(),
                    max_num_inbound_peers: count,
                    max_concurrent_dials: count / 3,
                    send_rate: rate,
                    recv_rate: rate / 7,
                    pex: flag,
                    seed_mode: !flag,
                    flush_throttle_timeout: d[0],
                    ping_interval: d[1],
                    pong_timeout: d[2],
                    send_timeout: d[3],
                    handshake_timeout: d[4],
                    dial_timeout: d[5],
                    redial_backoff_base: d[6],
                    redial_backoff_max: d[7],
                    redial_backoff_reset_after: d[8],
                    pex_interval: d[9],
                    ..P2pConfig::default()
                },
            )
    }

    proptest! {
        #[test]
        fn any_config_survives_toml(config in arb_config()) {
            // Serialization alone, without validation: every representable value comes back.
            let text = config.to_toml_string().unwrap();
            let back: P2pConfig = toml::from_str(&text).unwrap();
            prop_assert_eq!(back, config);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = P2pConfig::from_toml_str(&text);
        }

        #[test]
        fn arbitrary_key_values_never_panic(
            key in "[a-z_]{1,30}",
            value in "[\"\\[\\] ,.:@a-z0-9_-]{0,40}",
        ) {
            let _ = P2pConfig::from_toml_str(&format!("{key} = {value}"));
        }
    }

    #[test]
    fn every_key_gets_a_comment_and_the_commented_file_parses_back() {
        let config = P2pConfig::default();
        let text = config.to_commented_toml().unwrap();
        for line in config.to_toml_string().unwrap().lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(
                KEY_DOCS.iter().any(|(k, _)| *k == key),
                "no comment for `{key}`: add it to KEY_DOCS"
            );
        }
        assert_eq!(P2pConfig::from_toml_str(&text).unwrap(), config);
        assert!(text.contains("# Address to listen on"));
        assert!(
            text.contains("# Default: \"tcp://0.0.0.0:26656\""),
            "{text}"
        );
    }
}
