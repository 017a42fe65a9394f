//! The smallest reactor worth copying: two nodes in one process connect over loopback TCP and
//! play ping/pong on a channel of their own, then shut down.
//!
//! Run: `cargo run --example custom_reactor`
//!
//! A reactor is any actix actor that handles three messages from the Switch:
//! - `PeerAdded`: a peer connected (it comes first, before any message from that peer);
//! - `TypedReceive<T>`: a whole message from a peer on one of the reactor's channels, already
//!   decoded as the reactor's message type `T` (any `serde` type; the connection decodes it
//!   with bincode and stops a peer whose bytes are not a `T`);
//! - `PeerRemoved`: the peer left (exactly once, after its last message).
//!
//! Register it with `RegisterReactor::typed::<T, _>(name, channels, &addr)` and the Switch
//! routes its channels to it. To send, use the `PeerHandle` in `PeerAdded` (`try_send_typed`:
//! one peer, no mailbox hop) or ask the Switch (`Broadcast::typed`, `SendTo::typed`,
//! `TrySendTo::typed`). A reactor that speaks an existing byte protocol registers with
//! `RegisterReactor::new` and handles `Receive` (raw bytes) instead.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tm2_p2p::{
    ChannelDescriptor, DialPeers, Node, NodeKey, P2pConfig, PeerAdded, PeerHandle, PeerId,
    PeerRemoved, RegisterReactor, SwitchBuilder, TypedReceive,
};
use tokio::sync::mpsc;

/// Our channel id. Every reactor owns its channels; ids are unique per node (0x50 is peer
/// exchange).
const PING_CHANNEL: u8 = 0x41;
/// What the reactor's channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Message {
    Ping,
    Pong,
}

/// How long the whole exchange may take before the example gives up.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The reactor: answers "ping" with "pong", and sends one "ping" to every peer that joins.
struct PingPong {
    /// Shown in what it prints.
    name: &'static str,
    /// The connected peers, so we can answer them directly.
    peers: HashMap<PeerId, PeerHandle>,
    /// Tells `main` a pong arrived (bounded: one pong per peer is expected).
    pongs: mpsc::Sender<PeerId>,
}

impl Actor for PingPong {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for PingPong {
    type Result = ();

    fn handle(&mut self, msg: PeerAdded, _: &mut Self::Context) {
        let peer = msg.peer;
        println!(
            "{}: peer {} joined ({:?})",
            self.name, peer.id, peer.direction
        );
        // try_send_typed never waits: Ok(false) if the peer's queue is full or it is gone.
        if !matches!(
            peer.handle.try_send_typed(PING_CHANNEL, &Message::Ping),
            Ok(true)
        ) {
            println!("{}: could not queue a ping to {}", self.name, peer.id);
        }
        self.peers.insert(peer.id, peer.handle);
    }
}

impl Handler<TypedReceive<Message>> for PingPong {
    type Result = ();

    fn handle(&mut self, msg: TypedReceive<Message>, _: &mut Self::Context) {
        // Already decoded: bytes that were not a `Message` stopped that peer before this.
        match msg.message {
            Message::Ping => {
                println!("{}: ping from {}, answering pong", self.name, msg.peer);
                if let Some(handle) = self.peers.get(&msg.peer) {
                    let _ = handle.try_send_typed(PING_CHANNEL, &Message::Pong);
                }
            }
            Message::Pong => {
                println!("{}: pong from {}", self.name, msg.peer);
                let _ = self.pongs.try_send(msg.peer);
            }
        }
    }
}

impl Handler<PeerRemoved> for PingPong {
    type Result = ();

    fn handle(&mut self, msg: PeerRemoved, _: &mut Self::Context) {
        println!("{}: peer {} left: {}", self.name, msg.peer, msg.reason);
        self.peers.remove(&msg.peer);
    }
}

/// Starts a node on a free loopback port with a `PingPong` reactor registered on our channel.
async fn start_node(name: &'static str, pongs: mpsc::Sender<PeerId>) -> anyhow::Result<Node> {
    let config = P2pConfig {
        laddr: "127.0.0.1:0".parse()?, // port 0: the OS picks a free one
        ..P2pConfig::default()
    };
    let node = SwitchBuilder::new(config, NodeKey::generate()?)
        .network("ping-pong") // peers on another network are refused
        .spawn()
        .await?;
    let reactor = PingPong {
        name,
        peers: HashMap::new(),
        pongs,
    }
    .start();
    node.switch()
        .send(RegisterReactor::typed::<Message, _>(
            name,
            vec![ChannelDescriptor::new(PING_CHANNEL)],
            &reactor,
        ))
        .await??;
    println!("{name}: listening as {}", node.net_address());
    Ok(node)
}

async fn run() -> anyhow::Result<()> {
    let (pongs_tx, mut pongs) = mpsc::channel(4);
    let alice = start_node("alice", pongs_tx.clone()).await?;
    let bob = start_node("bob", pongs_tx).await?;

    // Alice dials Bob; each side's reactor then pings the other and answers its ping.
    alice
        .switch()
        .send(DialPeers(vec![bob.net_address()]))
        .await?;
    for _ in 0..2 {
        tokio::time::timeout(TIMEOUT, pongs.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no pong within {TIMEOUT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("reactors stopped"))?;
    }

    // Graceful: peers are closed (reactors get PeerRemoved) and the ports released.
    alice.shutdown().await;
    bob.shutdown().await;
    println!("done: both nodes got their pong");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The Switch and reactors are actix actors: they run inside an actix System.
    System::new().block_on(run())
}
