//! What TM2's wire alone costs on this machine: the work any TM2-compatible implementation must
//! do for a measurement, measured without the rest of tm2-p2p (no mconn, no actors, no Switch),
//! so the table can say whether a goal on the ratio to libp2p is reachable at all here.
//!
//! - `cpu`: the cryptography only, in memory, on one thread: for throughput, sealing and opening
//!   every 1024 data bytes as one ChaCha20-Poly1305 frame (TM2's fixed frame) and copying the
//!   opened data into its message (see [`seal_open`]); for connections,
//!   two `Handshake` cores run against each other (both sides' X25519 key generation and
//!   agreement, HKDF, Ed25519 signature and verification, auth frames).
//! - `tcp`: the same over loopback TCP with the crate's own secret layer and nothing above it:
//!   a `SecretStream` streaming 1 MiB writes, or TCP connect plus the transport upgrade (secret
//!   handshake and NodeInfo exchange) with the given number in flight.
//! - `plain` (throughput only): loopback TCP with no cryptography, a blocking thread per end,
//!   1 MiB writes (the kernel's cheapest case here: 64 KiB writes cost it about twice the CPU
//!   per byte). Not a floor of TM2's wire by itself; its CPU per byte added to `cpu`'s is.
//!
//! Each figure comes with its CPU time, so the caller can turn it into a ceiling: a rate per
//! CPU-second times the cores the machine has is the most any implementation doing at least
//! this work can reach here.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ring::rand::SystemRandom;
use tm2_p2p::actors::secret_stream::{SecretStream, WRITE_BATCH_FRAMES};
use tm2_p2p::actors::transport::upgrade;
use tm2_p2p::secret::{DATA_MAX, FRAME_LEN, FrameOpener, FrameSealer, Handshake};
use tm2_p2p::{NetAddress, NodeInfo, NodeKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Figure, Tally, Window, io_runtime};

/// Timeout of each upgrade stage (never reached on loopback).
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `work` on a thread of its own until the window is over; `work` returns what one call
/// did (bytes or connections), counted into the window's rate.
fn on_one_thread(
    window: Window,
    mut work: impl FnMut() -> anyhow::Result<u64> + Send + 'static,
) -> anyhow::Result<Figure> {
    let tally = Arc::new(Tally::default());
    let worker = {
        let tally = tally.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !tally.stopped() {
                tally.add(work()?);
            }
            Ok(())
        })
    };
    let rate = io_runtime().block_on(window.rate(&tally.count));
    tally.stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's worker thread panicked"))??;
    Ok(rate)
}

/// Seal and open of every 1024 data bytes, in memory, one thread: data bytes per second.
/// A byte rate of TM2's secret layer as a rate of 256-byte messages: each is one mconn packet
/// on TM2's wire (channel, eof and the payload in an amino `/p2p.Msg` Any, length-prefixed),
/// and the secret layer's work is per byte. The frames' fixed cost is already in the byte rate
/// (every frame carries 1024 data bytes, as when small packets fill frames back to back).
pub(crate) fn per_packet(bytes: Figure) -> Figure {
    let mut packet = Vec::new();
    tm2_p2p::mconn::packet::encode_msg(0x30, true, &[0x5a; 256], &mut packet);
    let len = packet.len() as f64;
    Figure {
        value: bytes.value / len,
        per_cpu_second: bytes.per_cpu_second.map(|r| r / len),
    }
}

///
/// With `Opened::CopiedOut`, each frame's opened data is also copied into a 1 MiB message buffer,
/// as a receiver that hands out whole messages must: the data of consecutive frames is not
/// contiguous where it is opened (each frame has its length field, padding and tag around it,
/// and TM2's packet headers fall anywhere in it), and ring opens in place. Small messages need
/// no such copy (one can be a slice of the buffer it was opened in), so their floor leaves it
/// out (`Opened::InPlace`).
pub(crate) fn seal_open(window: Window, opened: Opened) -> anyhow::Result<Figure> {
    let key = [7u8; 32];
    let mut sealer = FrameSealer::from_raw_key(&key, 0)?;
    let mut opener = FrameOpener::from_raw_key(&key, 0)?;
    let data = vec![0x5au8; DATA_MAX];
    let mut frame = [0u8; FRAME_LEN];
    let mut message = match opened {
        Opened::CopiedOut => vec![0u8; 1 << 20],
        Opened::InPlace => Vec::new(),
    };
    let mut at = 0;
    on_one_thread(window, move || {
        // 64 frames per turn (in memory the batch size does not matter).
        for _ in 0..64 {
            sealer.seal(&data, &mut frame)?;
            let opened = opener.open(&mut frame)?;
            anyhow::ensure!(
                opened.len() == DATA_MAX,
                "a frame opened to the wrong length"
            );
            if !message.is_empty() {
                if at + DATA_MAX > message.len() {
                    at = 0;
                }
                message[at..at + DATA_MAX].copy_from_slice(opened);
                at += DATA_MAX;
            }
        }
        Ok((64 * DATA_MAX) as u64)
    })
}

/// Where [`seal_open`] leaves the opened data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Opened {
    /// Left where it was opened.
    InPlace,
    /// Copied into a message buffer.
    CopiedOut,
}

/// Both sides of a handshake run against each other in memory, one thread: handshakes per
/// second.
pub(crate) fn handshakes(window: Window) -> anyhow::Result<Figure> {
    let (a, b) = (NodeKey::generate()?, NodeKey::generate()?);
    let rng = SystemRandom::new();
    on_one_thread(window, move || {
        let mut sides = [Handshake::new(&a, &rng)?, Handshake::new(&b, &rng)?];
        // Four messages cross in all; a handshake that needs more is broken.
        for _ in 0..8 {
            if sides.iter().all(Handshake::is_established) {
                break;
            }
            for from in 0..2 {
                while let Some(bytes) = sides[from].poll_transmit() {
                    let used = sides[1 - from].handle_bytes(&bytes)?;
                    anyhow::ensure!(used == bytes.len(), "a handshake message was not consumed");
                }
            }
        }
        let [a, b] = sides;
        let (a, b) = (a.finish()?, b.finish()?);
        anyhow::ensure!(a.remote_public_key != b.remote_public_key, "sides mixed up");
        Ok(1)
    })
}

/// A `SecretStream` over loopback TCP, one direction, 1 MiB writes: bytes per second at the
/// reader.
pub(crate) fn secret_stream(window: Window) -> anyhow::Result<Figure> {
    io_runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (ka, kb) = (NodeKey::generate()?, NodeKey::generate()?);
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            anyhow::Ok(SecretStream::upgrade(tcp, &kb, STAGE_TIMEOUT).await?)
        });
        let dialed = SecretStream::upgrade(TcpStream::connect(addr).await?, &ka, STAGE_TIMEOUT);
        let (dialed, accepted) = tokio::join!(dialed, accept);
        let (_, mut writer) = dialed?.into_split();
        let (mut reader, _) = accepted??.into_split();
        let tally = Arc::new(Tally::default());
        let counted = tally.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counted.add(n as u64);
            }
        });
        let stop = tally.clone();
        tokio::spawn(async move {
            let msg = vec![0x5au8; 1 << 20];
            while !stop.stopped() {
                if writer.write_all(&msg).await.is_err() {
                    stop.fail();
                    break;
                }
            }
        });
        let rate = window.rate(&tally.count).await;
        tally.stop.store(true, Ordering::Relaxed);
        anyhow::ensure!(
            tally.failures.load(Ordering::Relaxed) == 0,
            "the writer failed"
        );
        Ok(rate)
    })
}

/// TCP connect plus the transport upgrade (secret handshake, NodeInfo exchange and checks) on
/// both ends over loopback, `concurrency` in flight, nothing started after it: upgrades per
/// second completed by the accepting side.
pub(crate) fn upgrades(window: Window, concurrency: usize) -> anyhow::Result<Figure> {
    io_runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server_key = NodeKey::generate()?;
        let server_addr: NetAddress = format!("{}@127.0.0.1:{port}", server_key.id()).parse()?;
        let server_info = NodeInfo::new(server_addr.clone(), "perf", vec![0x30]);
        let tally = Arc::new(Tally::default());
        {
            let tally = tally.clone();
            tokio::spawn(async move {
                let (key, info) = (Arc::new(server_key), Arc::new(server_info));
                while let Ok((tcp, _)) = listener.accept().await {
                    let (key, info, tally) = (key.clone(), info.clone(), tally.clone());
                    tokio::spawn(async move {
                        match upgrade(tcp, &key, &info, None, STAGE_TIMEOUT).await {
                            Ok(_) => tally.add(1),
                            Err(_) => tally.fail(),
                        }
                    });
                }
            });
        }
        for _ in 0..concurrency {
            let key = NodeKey::generate()?;
            let addr: NetAddress = format!("{}@127.0.0.1:1", key.id()).parse()?;
            let info = NodeInfo::new(addr, "perf", vec![0x30]);
            let (server_addr, tally) = (server_addr.clone(), tally.clone());
            let socket = server_addr
                .socket_addr()
                .ok_or_else(|| anyhow::anyhow!("the server address has no IP"))?;
            tokio::spawn(async move {
                while !tally.stopped() {
                    let Ok(tcp) = TcpStream::connect(socket).await else {
                        tally.fail();
                        continue;
                    };
                    let dialed = upgrade(tcp, &key, &info, Some(server_addr.id()), STAGE_TIMEOUT);
                    if dialed.await.is_err() {
                        tally.fail();
                    }
                }
            });
        }
        let rate = window.rate(&tally.count).await;
        tally.stop.store(true, Ordering::Relaxed);
        let failures = tally.failures.load(Ordering::Relaxed);
        if failures > 0 {
            eprintln!("floor: {failures} upgrades failed");
        }
        Ok(rate)
    })
}

/// Plain loopback TCP, no cryptography: one thread writes 1 MiB at a time, another reads
/// 64 KiB at a time (blocking sockets, nothing else running): bytes per second. Its rate per
/// CPU-second is what the kernel alone costs per byte when the bytes cross from one core to
/// the other, as they must when sealing and opening use both cores.
pub(crate) fn plain_tcp(window: Window) -> anyhow::Result<Figure> {
    let msg = vec![0x5au8; 1 << 20];
    blocking_stream(window, move |socket| {
        socket.write_all(&msg)?;
        Ok(msg.len() as u64)
    })
}

/// One thread seals `WRITE_BATCH_FRAMES` frames of 1024 data bytes at a time (the secret
/// stream's batch) and
/// writes them to a blocking loopback socket; another reads and discards them: data bytes per
/// second. No opening, no mconn: the most one core that seals a connection's frames in order
/// and writes them (tm2-p2p's writer task, TM2's goroutine) sends here, whatever the other
/// core does.
pub(crate) fn seal_and_send(window: Window) -> anyhow::Result<Figure> {
    let mut sealer = FrameSealer::from_raw_key(&[7u8; 32], 0)?;
    let data = vec![0x5au8; DATA_MAX];
    let mut batch = vec![0u8; WRITE_BATCH_FRAMES * FRAME_LEN];
    blocking_stream(window, move |socket| {
        for frame in batch.chunks_exact_mut(FRAME_LEN) {
            let frame: &mut [u8; FRAME_LEN] = frame.try_into()?;
            sealer.seal(&data, frame)?;
        }
        socket.write_all(&batch)?;
        Ok((WRITE_BATCH_FRAMES * DATA_MAX) as u64)
    })
}

/// A blocking loopback TCP connection: one thread calls `write` on its end until the window
/// is over, counting what each call returns; another reads and discards (64 KiB reads).
fn blocking_stream(
    window: Window,
    mut write: impl FnMut(&mut std::net::TcpStream) -> anyhow::Result<u64> + Send + 'static,
) -> anyhow::Result<Figure> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut writer = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (mut reader, _) = listener.accept()?;
    let read = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let tally = Arc::new(Tally::default());
    let written = {
        let tally = tally.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !tally.stopped() {
                tally.add(write(&mut writer)?);
            }
            Ok(())
        })
    };
    let rate = io_runtime().block_on(window.rate(&tally.count));
    tally.stop.store(true, Ordering::Relaxed);
    written
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    read.join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    Ok(rate)
}
