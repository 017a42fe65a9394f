//! # tm2-p2p
//!
//! An actor-based peer-to-peer network runtime modelled on Tendermint2's p2p layer (the
//! networking of the gno.land chain), built on actix.
//!
//! A host program spawns the `Switch` actor, registers its own *reactor* actors and from then
//! on sends typed messages (`DialPeers`, `Broadcast`, `SendTo`, ...). The runtime listens,
//! dials, authenticates and encrypts every connection with a handshake byte-compatible with
//! TM2's secret connection, multiplexes prioritised channels over it, keeps peers alive,
//! limits them, redials persistent ones and discovers new ones by peer exchange.
//!
//! ## Layers
//!
//! ```text
//!   host program / reactors (mempool, consensus, chat, ...)      actors (runtime feature)
//!        |  RegisterReactor, Broadcast, SendTo       ^ PeerAdded, Receive, PeerRemoved
//!   +----v-------------------------------------------+-----+
//!   | Switch actor: peer set, reactors by channel, events   |
//!   +----+---------------------------------+----------------+
//!        | verified connections            | per-peer
//!   +----v-------------+            +------v---------------+
//!   | Transport actor  |            | PeerConn actor       |
//!   | listen, dial,    |            |  mconn core          |  <- src/mconn (sans-IO)
//!   | upgrade          |            +----------------------+
//!   +----+-------------+
//!        | secret core (src/secret, sans-IO): X25519 + Ed25519 STS, ChaCha20-Poly1305 frames
//!   +----v-------------+
//!   |   TCP            |
//!   +------------------+
//! ```
//!
//! ## What this crate is not
//!
//! - The core modules in this crate (everything except [`actors`](crate#runtime)) do no I/O,
//!   read no clock and use no global RNG: time and randomness are passed in, so they are
//!   deterministic and tested without sockets. `cargo check --lib --no-default-features`
//!   proves they never touch actix or tokio.
//! - It speaks TM2's wire, all of it: the pre-Merlin secret connection, then NodeInfo, mconn
//!   packets and peer-exchange messages in TM2's amino encoding ([`codec::amino`], byte for
//!   byte what gno's code writes; docs/PROTOCOL.md), so it holds connections with real Go
//!   TM2 (gno.land) nodes. It is not wire-compatible with CometBFT/Tendermint >= 0.33 p2p,
//!   whose secret connection differs.
//!
//! ## Runtime
//!
//! The `runtime` feature (on by default) compiles the actix actors of the `actors/` directory
//! as `tm2_p2p::actors`; the `cli` feature (also default) adds the `tm2p2p` binary and the
//! local testnet. A library takes `default-features = false, features = ["runtime"]`.
//!
//! ## Example
//!
//! Two nodes in one process, each with a reactor on channel `0x40`: one dials the other and
//! broadcasts, the other's reactor receives.
//!
//! ```
//! # #[cfg(feature = "runtime")] {
//! use tm2_p2p::actix::prelude::*;
//! use tm2_p2p::{
//!     Broadcast, ChannelDescriptor, DialPeers, NodeKey, P2pConfig, PeerAdded, PeerRemoved,
//!     Receive, RegisterReactor, SwitchBuilder,
//! };
//!
//! /// A reactor: an actor that handles `PeerAdded`, `Receive` and `PeerRemoved`. This one
//! /// hands the first message it receives to the test (any channel will do; this one is
//! /// tokio's, which actix runs on).
//! struct Inbox(Option<tokio::sync::oneshot::Sender<Vec<u8>>>);
//! impl Actor for Inbox {
//!     type Context = Context<Self>;
//! }
//! impl Handler<PeerAdded> for Inbox {
//!     type Result = ();
//!     fn handle(&mut self, _: PeerAdded, _: &mut Context<Self>) {}
//! }
//! impl Handler<PeerRemoved> for Inbox {
//!     type Result = ();
//!     fn handle(&mut self, _: PeerRemoved, _: &mut Context<Self>) {}
//! }
//! impl Handler<Receive> for Inbox {
//!     type Result = ();
//!     fn handle(&mut self, msg: Receive, _: &mut Context<Self>) {
//!         if let Some(tx) = self.0.take() {
//!             let _ = tx.send(msg.payload.to_vec());
//!         }
//!     }
//! }
//!
//! actix::System::new().block_on(async {
//!     // Loopback, any free port, no peer exchange: the two nodes see only each other.
//!     let config = || P2pConfig {
//!         laddr: "127.0.0.1:0".parse().unwrap(),
//!         pex: false,
//!         ..P2pConfig::default()
//!     };
//!     let (tx, rx) = tokio::sync::oneshot::channel();
//!     let mut nodes = Vec::new();
//!     for inbox in [Inbox(None).start(), Inbox(Some(tx)).start()] {
//!         let node = SwitchBuilder::new(config(), NodeKey::generate().unwrap())
//!             .network("demo")
//!             .reactor(RegisterReactor::new("inbox", vec![ChannelDescriptor::new(0x40)], &inbox))
//!             .spawn()
//!             .await
//!             .unwrap();
//!         nodes.push(node);
//!     }
//!     let (a, b) = (&nodes[0], &nodes[1]);
//!     a.switch().send(DialPeers(vec![b.net_address()])).await.unwrap();
//!     a.wait_for_peers(1).await.unwrap();
//!     let payload = tm2_p2p::bytes::Bytes::from_static(b"hello");
//!     a.switch().send(Broadcast { channel: 0x40, payload }).await.unwrap();
//!     assert_eq!(rx.await.unwrap(), b"hello");
//!     for node in &nodes {
//!         node.shutdown().await;
//!     }
//! });
//! # }
//! ```

pub mod codec;
pub mod config;
pub mod dial;
pub mod flowrate;
#[doc(hidden)]
pub mod fuzzing;
pub mod key;
pub mod mconn;
pub mod peers;
pub mod pex;
pub mod secret;
pub mod throttle;
pub mod types;

#[cfg(test)]
mod testing;

// The actix runtime lives in the top-level actors/ directory so that the layering is visible in
// the tree; it is a module of this library behind the `runtime` feature, which also owns the
// actix and tokio dependencies (see docs/ARCHITECTURE.md).
#[cfg(feature = "runtime")]
#[path = "../actors/mod.rs"]
pub mod actors;

// The crates whose types the API takes (an actor's `Addr`, a message's `Bytes`, the node's
// `slog::Logger`, a host's metrics `Registry`), at the versions this crate was built with: a host needs no other dependency
// than actix (for its own actors' derive macros and `#[actix::main]`).
#[cfg(feature = "runtime")]
pub use actix;
pub use bytes;
#[cfg(feature = "runtime")]
pub use prometheus_client;
pub use slog;

// Every type the public API takes or returns is nameable from the crate root: the messages
// and handles, and every error down to the last enum a host matches on.
#[cfg(feature = "runtime")]
pub use actors::{
    events::{DialError, EVENT_BUFFER, EventStream, InboundRejection, SwitchEvent},
    metrics::{InvalidNamespace, Metrics},
    node::{Node, SwitchBuilder},
    peer_conn::PeerHandle,
    reactor::{
        Delivery, DisconnectReason, MAX_BATCH, PeerAdded, PeerInfo, PeerRemoved, Receive,
        ReceiveBatch, TypedReceive,
    },
    secret_stream::SecretStreamError,
    switch::{
        AddPersistentPeers, Broadcast, DialPeers, DisconnectPeer, GetPeers, PeerSetSnapshot,
        ReactorRecipients, RegisterReactor, SendTo, Shutdown, StopPeerForError, Switch,
        SwitchError, TrySendTo,
    },
    transport::{InboundRejectReason, Stage, TransportError},
};
pub use config::{ConfigError, P2pConfig};
pub use key::{KeyError, KeyFileError, KeyFormatError, NodeKey};
pub use mconn::{ChannelDescriptor, MConnConfigError, MConnectionError};
pub use peers::{RejectReason, SlotRefused};
pub use secret::{FrameError, HandshakeError};
pub use types::{
    Direction, Incompatible, NetAddress, NetAddressError, NodeInfo, NodeInfoError, NodeInfoOther,
    PeerCheckError, PeerId, PeerIdError, VersionInfo,
};
