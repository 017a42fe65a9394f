//! The multiplexed connection: prioritised channels, keep-alive and rate limits over one
//! secret connection, as a sans-IO core.
//!
//! Many reactors share one connection per peer. Each owns channels ([`ChannelDescriptor`]);
//! its messages are queued per channel (bounded), split into [`Packet::Msg`] pieces of at most
//! `max_packet_msg_payload_size` bytes, interleaved by priority (TM2's rule: the channel with
//! the least recently-sent bytes ÷ priority goes next), and reassembled on the other side with a
//! per-channel size limit. [`Packet::Ping`]/[`Packet::Pong`] keep the connection alive; token
//! buckets ([`crate::flowrate`]) limit the send and receive rates. It mirrors TM2's
//! `tm2/pkg/p2p/conn/connection.go`; the wire layout is in [`packet`].
//!
//! This module does no I/O: no sockets, no clock (every method that needs the time takes
//! `now`), no tasks, no sleeping. A driver (the `PeerConn` actor) moves bytes and arms timers.
//!
//! ## Driving the core
//!
//! [`MConnection::new`] validates the config and channels. Split it with
//! [`MConnection::into_split`] for a driver with two tasks that share no lock: the writer task
//! owns the [`MConnSender`], the reader task the [`MConnReceiver`].
//!
//! **Writer task** (owns `MConnSender`):
//! 1. On wake-up, call `handle_timeout(now)`; an error (`PongTimeout`, `WriteTimeout`) ends
//!    the connection.
//! 2. Call `poll_transmit(now, &mut buf)` until it returns `bytes == 0`; after each call write
//!    `buf` (then clear it) to the secret connection, and flush the writer when `flush` is set.
//!    Report each partial write with `handle_written(now, n)` and each completed flush with
//!    `handle_flushed(now)`. While a write or flush is blocked (the peer stopped reading),
//!    wake at `deadline()` and call `handle_timeout(now)`: it fails once no byte was taken
//!    for `write_timeout`, or the pong deadline passed.
//!    The core sets `flush` on every call after which nothing more can be sent at that instant
//!    (the queues drained, the send rate limit reached), so the loop never ends with unflushed
//!    bytes; and while data keeps flowing it sets `flush` at least every `flush_throttle`. A
//!    driver that buffers writes (e.g. fills 1024-byte secret frames) therefore adds no delay on
//!    an idle connection, instead of TM2's fixed 100 ms.
//! 3. Wait for the earliest of: a wake-up from `try_send` (a reactor queued a message), a
//!    keep-alive relayed by the reader task, or the instant `poll_timeout()` returns
//!    (`sleep_until`; an instant in the past means go now). Then go to 1.
//!
//! `try_send(channel, payload)` is the only way messages enter; it never blocks and a full
//! queue hands the message back, so "wait up to `send_timeout`" belongs to the driver (retry
//! after the writer made room, e.g. on a notification, never by polling in a loop).
//!
//! **Reader task** (owns `MConnReceiver`):
//! 1. Drain `poll_event()` completely: deliver [`Event::Received`] to the channel's reactor
//!    (a bounded send: a slow reactor pauses reading from this peer); relay
//!    [`Event::PingReceived`] to the writer as `queue_pong()` and [`Event::PongReceived`] as
//!    `handle_pong(now)`, then wake it. Draining before reading more is what bounds buffered
//!    events to what one read can hold.
//! 2. `recv_ready(now)`: on `Err(at)`, sleep until `at` (the receive rate limit), then retry.
//! 3. Read from the secret connection (up to the driver's buffer size) and pass the plaintext
//!    to `handle_bytes(now, bytes)`; an error ends the connection. Go to 1. When the read would
//!    wait (nothing more for now), call `handle_idle()` first: a quiet connection then frees
//!    the spare reassembly buffers it keeps while busy.
//!
//! **Adding a channel** (a reactor registered after the connection started): call
//! `add_channel(desc)` on both halves ([`MConnSender::add_channel`] under the writer's lock,
//! [`MConnReceiver::add_channel`] in the reader task between two `handle_bytes` calls), or on
//! [`MConnection::add_channel`]. The checks are those of construction; the channel goes last in
//! the scheduler's tie-break order; other channels' messages in flight are untouched. A packet
//! is matched to its channel when `handle_bytes` completes it, so the receiver must add the
//! channel before the call that completes the peer's first packet on it, or that packet is
//! [`MConnectionError::UnknownChannel`] as on any connection without the channel.
//!
//! A single-task driver (and the tests) can use [`MConnection`] whole: it answers pings and
//! pongs itself, so its `poll_event` yields only `Received`.
//!
//! ## Bounds a peer cannot push past
//!
//! - A packet is at most [`packet::max_packet_size`] bytes (1,056 for the default payload, TM2's `maxPacketMsgSize`),
//!   checked from the length prefix before the body is buffered.
//! - A message being reassembled is at most the channel's `recv_message_capacity`; the buffer's
//!   capacity never exceeds it.
//! - Any number of pings in a row yields one pong per `flush_throttle`.
//! - A pong counts only as the answer to a ping of ours that was written and flushed; blind
//!   pongs from a peer that does not read cannot hold the pong deadline off.
//! - Output the transport does not take for `write_timeout` ends the connection
//!   ([`MConnectionError::WriteTimeout`]), so a non-reader pins its queues for that long at
//!   most. The queues themselves hold at most `send_queue_capacity + 1` messages of at most
//!   `recv_message_capacity` bytes per channel: `try_send` refuses larger messages, and
//!   channels the peer did not advertise ([`MConnSender::set_peer_channels`]), which the
//!   peer would close the connection over.
//! - Unknown channels, garbled packets and oversize messages end the connection with a typed
//!   [`MConnectionError`].

mod channel;
mod config;
mod connection;
mod error;
pub mod packet;
mod recv;
mod send;
mod spare;

use std::time::Instant;

pub use channel::{ChannelDescriptor, MAX_CHANNELS};
pub use config::{MAX_PAYLOAD_SIZE_LIMIT, MConnConfig, MConnConfigError};
pub use connection::MConnection;
pub use error::MConnectionError;
pub use packet::{DecodeError, Packet};
pub use recv::{Event, MConnReceiver};
pub use send::{
    BATCH_BYTES, DECAY_INTERVAL, GATHER_MIN, Gather, MConnSender, Transmit, TrySendError,
};

use crate::flowrate::TokenBucket;

/// The rate-limit bucket for one direction and its resume quantum: a burst of 20 ms of the rate
/// (at least two full packets), and, once limited, resuming only when 10 ms of the rate (at
/// least one full packet) is available, so a saturated connection wakes ~100 times a second
/// rather than once per packet. Over 3 s at 1 MB/s the burst adds under 1 %.
fn rate_bucket(rate: u64, max_packet_size: usize, now: Instant) -> (TokenBucket, u64) {
    let packet = max_packet_size as u64;
    let burst = (rate / 50).max(2 * packet);
    let quantum = (rate / 100).max(packet).min(burst);
    (TokenBucket::new(rate, burst, now), quantum)
}
