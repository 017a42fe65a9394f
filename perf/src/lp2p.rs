//! The rust-libp2p side: TCP + noise + yamux as `SwarmBuilder` puts them together, with
//! `libp2p-stream` for raw streams (the counterpart of an mconn channel). Every swarm and
//! connection task runs on the same 2-worker multi-thread runtime as tm2-p2p's connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};

use crate::common::{Figure, Tally, Window, heap_live, io_runtime, report_heap, rss, wait_count};

/// The protocol of the measured stream.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/tm2-perf/stream/1");

/// Read buffer of the receiving side (the stream's own reads are small).
const READ_BUFFER: usize = 64 * 1024;

/// Write buffer of the buffered 256-byte sender.
const WRITE_BUFFER: usize = 64 * 1024;

/// How the sender of 256-byte messages writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writes {
    /// One `write_all` per message on the yamux stream (as `PeerHandle::send` is one call per
    /// message); yamux turns each into a data frame, noise batches frames up to 64 KiB.
    PerMessage,
    /// Through a 64 KiB `BufWriter`, so yamux sees 64 KiB writes.
    Buffered,
}

/// A swarm with the stream behaviour, default TCP (`TCP_NODELAY` on), noise and yamux
/// configurations. The idle timeout is raised so connections without streams stay open (the
/// default closes them at once), as tm2-p2p's do.
fn swarm() -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build())
}

/// Starts `swarm` listening on 127.0.0.1 and returns the address it bound, with its peer id.
async fn listen(swarm: &mut Swarm<libp2p_stream::Behaviour>) -> anyhow::Result<Multiaddr> {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address.with(Protocol::P2p(*swarm.local_peer_id())));
        }
    }
}

/// Polls `swarm` on the I/O runtime for at most `limit`, handing each event to `on_event`.
fn drive<F>(mut swarm: Swarm<libp2p_stream::Behaviour>, limit: Duration, mut on_event: F)
where
    F: FnMut(&mut Swarm<libp2p_stream::Behaviour>, SwarmEvent<()>) + Send + 'static,
{
    io_runtime().spawn(async move {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let event = swarm.select_next_some().await;
                on_event(&mut swarm, event);
            }
        })
        .await;
    });
}

/// How long a swarm is driven: the window plus generous room for set-up.
fn drive_limit(window: Window) -> Duration {
    window.warmup + window.duration + Duration::from_secs(60)
}

/// A dial to `addr` that never waits for or skips on other connections to the same peer.
fn dial_opts(peer: PeerId, addr: &Multiaddr) -> DialOpts {
    DialOpts::peer_id(peer)
        .addresses(vec![addr.clone()])
        .condition(PeerCondition::Always)
        .build()
}

/// One connection, one stream; the dialer writes `size`-byte messages, each behind a 4-byte
/// big-endian length, as fast as the stream takes them; the listener reads them whole (one
/// buffer per message, as tm2-p2p delivers) and counts bytes (`size >= 1024`) or messages.
async fn stream(window: Window, size: usize, writes: Writes) -> anyhow::Result<Figure> {
    let limit = drive_limit(window);
    let mut listener = swarm()?;
    let addr = listen(&mut listener).await?;
    let listener_id = *listener.local_peer_id();
    let mut incoming = listener.behaviour().new_control().accept(PROTOCOL)?;
    drive(listener, limit, |_, _| {});
    let mut dialer = swarm()?;
    let mut control = dialer.behaviour().new_control();
    dialer.dial(dial_opts(listener_id, &addr))?;
    drive(dialer, limit, |_, _| {});

    let received = Arc::new(Tally::default());
    let tally = received.clone();
    let count_bytes = size >= 1024;
    io_runtime().spawn(async move {
        let Some((_, stream)) = incoming.next().await else {
            return;
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
        let mut head = [0u8; 4];
        while reader.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes(head) as usize;
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).await.is_err() {
                break;
            }
            tally.add(if count_bytes { len as u64 } else { 1 });
        }
    });

    let stream = control
        .open_stream(listener_id, PROTOCOL)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open a stream: {e:?}"))?;
    let mut frame = Vec::with_capacity(4 + size);
    frame.extend_from_slice(&(size as u32).to_be_bytes());
    frame.resize(4 + size, 0x5a);
    let tally = received.clone();
    io_runtime().spawn(async move {
        match writes {
            Writes::PerMessage => send_loop(stream, &frame, &tally).await,
            Writes::Buffered => {
                send_loop(
                    BufWriter::with_capacity(WRITE_BUFFER, stream),
                    &frame,
                    &tally,
                )
                .await;
            }
        }
    });
    let rate = window.rate(&received.count).await;
    received.stop.store(true, Ordering::Relaxed);
    Ok(rate)
}

/// Writes `frame` to `out` until the driver stops the run.
async fn send_loop<W: AsyncWrite + Unpin>(mut out: W, frame: &[u8], tally: &Tally) {
    while !tally.stopped() {
        if out.write_all(frame).await.is_err() {
            tally.fail();
            return;
        }
    }
    let _ = out.flush().await;
}

/// Single-connection throughput with 1 MiB messages, in bytes per second at the receiver.
pub(crate) fn throughput(window: Window) -> anyhow::Result<Figure> {
    io_runtime().block_on(stream(window, 1 << 20, Writes::PerMessage))
}

/// 256-byte messages per second on one stream.
pub(crate) fn messages(window: Window, writes: Writes) -> anyhow::Result<Figure> {
    io_runtime().block_on(stream(window, 256, writes))
}

/// Connections per second into one listener: one dialer swarm keeps `concurrency` dials in
/// flight, starting a new one whenever it reports a connection established (TCP, noise XX
/// handshake, yamux). Counted when the listener's swarm reports `ConnectionEstablished`; the
/// listener then closes the connection. (The dialer cannot close it itself at that point:
/// multistream-select lets the dialer finish before the listener has, and a close then makes
/// the listener's upgrade fail.)
pub(crate) fn connections(window: Window, concurrency: usize) -> anyhow::Result<Figure> {
    io_runtime().block_on(async move {
        let limit = drive_limit(window);
        let mut listener = swarm()?;
        let addr = listen(&mut listener).await?;
        let listener_id = *listener.local_peer_id();
        let established = Arc::new(Tally::default());
        let tally = established.clone();
        drive(listener, limit, move |swarm, event| match event {
            SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                tally.add(1);
                swarm.close_connection(connection_id);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                if tally.failures.load(Ordering::Relaxed) < 3 {
                    eprintln!("libp2p: inbound connection failed: {error}");
                }
                tally.fail();
            }
            _ => {}
        });
        let mut dialer = swarm()?;
        for _ in 0..concurrency {
            dialer.dial(dial_opts(listener_id, &addr))?;
        }
        let tally = established.clone();
        drive(dialer, limit, move |swarm, event| {
            let redial = match event {
                SwarmEvent::ConnectionEstablished { .. } => true,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    if tally.failures.load(Ordering::Relaxed) < 3 {
                        eprintln!("libp2p: dial failed: {error}");
                    }
                    tally.fail();
                    true
                }
                _ => false,
            };
            if redial && !tally.stopped() && swarm.dial(dial_opts(listener_id, &addr)).is_err() {
                tally.fail();
            }
        });
        let rate = window.rate(&established.count).await;
        established.stop.store(true, Ordering::Relaxed);
        let failed = established.failures.load(Ordering::Relaxed);
        if failed > 0 {
            eprintln!("libp2p: {failed} connection failures");
        }
        Ok(rate)
    })
}

/// RSS growth per connection end with `n` idle connections from one dialer swarm to one
/// listener swarm (dialed one after the other, no stream open); both ends live in this
/// process, so the growth is divided by `2 n`.
pub(crate) fn memory(n: usize) -> anyhow::Result<Figure> {
    io_runtime().block_on(async move {
        let limit = Duration::from_secs(120);
        let mut listener = swarm()?;
        let addr = listen(&mut listener).await?;
        let listener_id = *listener.local_peer_id();
        let dialer = swarm()?;
        let before = rss();
        let heap_before = heap_live();
        let inbound = Arc::new(AtomicU64::new(0));
        let counter = inbound.clone();
        drive(listener, limit, move |_, event| {
            if let SwarmEvent::ConnectionEstablished { .. } = event {
                counter.fetch_add(1, Ordering::AcqRel);
            }
        });
        let outbound = Arc::new(AtomicU64::new(0));
        let counter = outbound.clone();
        let mut dialer = dialer;
        dialer.dial(dial_opts(listener_id, &addr))?;
        drive(dialer, limit, move |swarm, event| {
            let redial = match event {
                SwarmEvent::ConnectionEstablished { .. } => {
                    counter.fetch_add(1, Ordering::AcqRel) + 1 < n as u64
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    eprintln!("libp2p: dial failed: {error}");
                    true
                }
                _ => false,
            };
            if redial {
                let _ = swarm.dial(dial_opts(listener_id, &addr));
            }
        });
        let n64 = n as u64;
        let wait = Duration::from_secs(60);
        if !wait_count(&outbound, n64, wait).await || !wait_count(&inbound, n64, wait).await {
            anyhow::bail!(
                "only {} outbound / {} inbound of {n} connections",
                outbound.load(Ordering::Acquire),
                inbound.load(Ordering::Acquire)
            );
        }
        let after = rss();
        report_heap("libp2p", heap_before, 2 * n);
        Ok(Figure::plain(
            after.saturating_sub(before) as f64 / (2 * n) as f64,
        ))
    })
}
