//! A terminal chat over tm2-p2p: a line typed in one terminal appears in the other.
//!
//! Run, in terminal 1:
//!
//! ```text
//! cargo run --example chat -- --laddr 127.0.0.1:26656
//! ```
//!
//! It prints its address, `listening as g1...@127.0.0.1:26656`. In terminal 2, pass that
//! address:
//!
//! ```text
//! cargo run --example chat -- --laddr 127.0.0.1:26657 --peer g1...@127.0.0.1:26656
//! ```
//!
//! Type a line and press Enter in either terminal; it appears in the other as
//! `<sender id, shortened>: line`. Ctrl-C or Ctrl-D quits. More terminals work the same way
//! (each with its own `--laddr`); peer exchange introduces them to each other, and a line goes
//! to every peer a node is connected to. `--home DIR` keeps the node key in `DIR/node_key.json`
//! so the address stays the same between runs; without it every run has a fresh identity.
//!
//! What it shows: a typed reactor (`Chat`, which receives `ChatMessage` values: the connection
//! decodes them and stops a peer whose bytes are not one) on its own channel,
//! `Broadcast::typed` to send, `AddPersistentPeers` to connect (and reconnect when the other
//! side restarts), `subscribe` for connect and disconnect events, and a graceful `shutdown`.

use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tm2_p2p::{
    AddPersistentPeers, Broadcast, ChannelDescriptor, GetPeers, NetAddress, NodeKey, P2pConfig,
    PeerAdded, PeerId, PeerRemoved, RegisterReactor, SwitchBuilder, SwitchEvent, TypedReceive,
};
use tokio::sync::mpsc;

/// The chat's channel.
const CHAT_CHANNEL: u8 = 0x40;
/// The longest line sent, in bytes. A peer sending a longer message is disconnected by the
/// connection layer (`recv_message_capacity`, which adds room for the encoding's length).
const MAX_LINE: usize = 1024;

/// What travels on the chat channel (bincode-encoded by `Broadcast::typed`, decoded by the
/// receiving connection before `Chat` sees it).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum ChatMessage {
    /// A line typed by the sender.
    Line(String),
}
/// Typed lines waiting to be sent; the stdin thread waits when it is full.
const INPUT_QUEUE: usize = 16;

/// Chat with other nodes from this terminal.
#[derive(Debug, Parser)]
struct Args {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:26656")]
    laddr: SocketAddr,
    /// A node to connect to, `id@ip:port` as printed by the other chat; may be repeated.
    /// It is redialed whenever the connection drops.
    #[arg(long)]
    peer: Vec<NetAddress>,
    /// Keep the node key in DIR/node_key.json (created on first use), so the address printed
    /// stays the same between runs. Without it, a fresh key each run.
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// The network (chain id); only nodes with the same one connect.
    #[arg(long, default_value = "tm2p2p-chat")]
    network: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    System::new().block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = match &args.home {
        Some(dir) => NodeKey::load_or_generate(dir.join("node_key.json"))
            .with_context(|| format!("node key in {}", dir.display()))?,
        None => NodeKey::generate()?,
    };
    let config = P2pConfig {
        laddr: args.laddr,
        // Peer exchange may share loopback addresses, so chats on one machine find each other.
        allow_non_routable: true,
        // Retry a peer that is not up yet within seconds, not minutes.
        redial_backoff_max: Duration::from_secs(5),
        ..P2pConfig::default()
    };
    let node = SwitchBuilder::new(config, key)
        .network(args.network)
        .spawn()
        .await
        .with_context(|| format!("cannot start a node on {}", args.laddr))?;
    // Subscribe before connecting, so no event is missed.
    let mut events = node.subscribe(|e| {
        matches!(
            e,
            SwitchEvent::PeerConnected { .. }
                | SwitchEvent::PeerDisconnected { .. }
                | SwitchEvent::DialFailed { .. }
        )
    });
    // Register the reactor before dialing: a peer learns our channels in the handshake.
    let chat = Chat.start();
    node.switch()
        .send(RegisterReactor::typed::<ChatMessage, _>(
            "chat",
            vec![chat_channel()],
            &chat,
        ))
        .await??;
    let wanted: Vec<PeerId> = args.peer.iter().map(NetAddress::id).collect();
    if !args.peer.is_empty() {
        node.switch().send(AddPersistentPeers(args.peer)).await?;
    }

    let me = node.net_address();
    println!("listening as {me}");
    println!(
        "from another terminal: cargo run --example chat -- --laddr 127.0.0.1:<another port> \
         --peer {me}"
    );

    let (input_tx, mut input) = mpsc::channel(INPUT_QUEUE);
    // A plain thread, not tokio's stdin: a blocking read of a terminal cannot be cancelled, and
    // this thread does not keep the process alive at exit.
    std::thread::spawn(move || read_stdin(&input_tx));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            line = input.recv() => match line {
                Some(Input::Line(line)) => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let peers = node.switch().send(GetPeers).await?;
                    if peers.peers.is_empty() {
                        println!("(nobody is connected yet; not sent)");
                        continue;
                    }
                    let message = ChatMessage::Line(line);
                    node.switch().send(Broadcast::typed(CHAT_CHANNEL, &message)?).await?;
                }
                Some(Input::TooLong(len)) => {
                    println!("(line too long: {len} bytes, at most {MAX_LINE}; not sent)");
                }
                Some(Input::Failed(e)) => {
                    println!("(cannot read the terminal: {e})");
                    break;
                }
                None => break, // Ctrl-D: end of input
            },
            event = events.recv() => match event {
                Some(event) => print_event(&event, &wanted),
                None => break,
            },
        }
    }
    println!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// The chat channel: bounded messages, and room for a burst of typed lines per peer.
fn chat_channel() -> ChannelDescriptor {
    ChannelDescriptor::new(CHAT_CHANNEL)
        .with_send_queue_capacity(64)
        .with_recv_buffer_capacity(MAX_LINE + 8)
        .with_recv_message_capacity(MAX_LINE + 8)
}

/// The chat reactor: prints every line a peer sends. Joins and leaves are printed from the
/// node's events in `run`, so `PeerAdded` and `PeerRemoved` have nothing to do here.
struct Chat;

impl Actor for Chat {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Chat {
    type Result = ();
    fn handle(&mut self, _: PeerAdded, _: &mut Self::Context) {}
}

impl Handler<PeerRemoved> for Chat {
    type Result = ();
    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}

impl Handler<TypedReceive<ChatMessage>> for Chat {
    type Result = ();
    fn handle(&mut self, msg: TypedReceive<ChatMessage>, _: &mut Self::Context) {
        let ChatMessage::Line(line) = msg.message;
        println!("{}: {}", short(&msg.peer), printable(&line));
    }
}

/// Prints joins and leaves, and failed dials of the `--peer` nodes (`wanted`); other failed
/// dials (addresses learned by peer exchange) are not worth a line.
fn print_event(event: &SwitchEvent, wanted: &[PeerId]) {
    match event {
        SwitchEvent::PeerConnected {
            peer,
            direction,
            remote,
        } => {
            let how = if direction.is_outbound() {
                "we dialed"
            } else {
                "it dialed us"
            };
            println!("* {} connected ({how}, {remote})", short(peer));
        }
        SwitchEvent::PeerDisconnected { peer, reason } => {
            println!("* {} disconnected: {reason}", short(peer));
        }
        SwitchEvent::DialFailed { address, error } if wanted.contains(&address.id()) => {
            println!("* cannot reach {address}: {error} (retrying)");
        }
        _ => {}
    }
}

/// The first characters of a peer id: enough to tell a handful of peers apart.
fn short(id: &PeerId) -> String {
    id.to_string().chars().take(12).collect()
}

/// A peer's text as text that cannot mess up the terminal: control characters (escape
/// sequences included) become U+FFFD. (Invalid UTF-8 never gets here: it does not decode.)
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// What the stdin thread reads.
#[derive(Debug)]
enum Input {
    /// A line, without its line ending.
    Line(String),
    /// A line longer than `MAX_LINE` bytes (this many), skipped.
    TooLong(usize),
    /// Reading failed.
    Failed(std::io::Error),
}

/// Reads lines from stdin until end of input, never holding more than `MAX_LINE + 1` bytes of
/// one line, and forwards them; returns when stdin ends or `run` stops listening.
fn read_stdin(tx: &mpsc::Sender<Input>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        let input = match (&mut stdin)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return, // end of input: dropping `tx` tells `run`
            Ok(_) if line.ends_with(b"\n") || line.len() <= MAX_LINE => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                Input::Line(String::from_utf8_lossy(&line).into_owned())
            }
            Ok(_) => match skip_line(&mut stdin) {
                Ok(rest) => Input::TooLong(line.len().saturating_add(rest)),
                Err(e) => Input::Failed(e),
            },
            Err(e) => Input::Failed(e),
        };
        if tx.blocking_send(input).is_err() {
            return;
        }
    }
}

/// Skips the rest of a line, in bounded chunks; returns how many bytes it skipped (without the
/// newline).
fn skip_line(input: &mut impl BufRead) -> std::io::Result<usize> {
    let mut skipped = 0usize;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            input.consume(end + 1);
            return Ok(skipped.saturating_add(end));
        }
        let len = buf.len();
        input.consume(len);
        skipped = skipped.saturating_add(len);
    }
}
