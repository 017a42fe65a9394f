//! [`MConnSender`]: the send half of a connection — per-channel queues, the channel scheduler,
//! packetization, keep-alive deadlines, the send rate limit and the flush decision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use super::channel::{ChannelDescriptor, ChannelIndex};
use super::config::{MConnConfig, MConnConfigError};
use super::error::MConnectionError;
use super::packet::{self, PacketRef};
use super::rate_bucket;
use crate::flowrate::TokenBucket;

/// Most bytes one [`MConnSender::poll_transmit`] call appends for messages (one packet more may
/// overshoot it): TM2's 64 KiB write buffer (`minWriteBufferSize`), so one call fills what TM2
/// would flush at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Smallest piece of a message that [`MConnSender::poll_transmit_gather`] passes by reference
/// rather than copying, so that a transmit of small messages stays one contiguous slice (a
/// judgement, not a tuned figure: half a frame's data).
pub const GATHER_MIN: usize = 512;

/// Period of the recently-sent decay (×0.8), TM2's `updateStats`.
pub const DECAY_INTERVAL: Duration = Duration::from_secs(2);

/// The send half of a connection. Owned by the task that writes to the socket.
///
/// Inputs: [`try_send`](Self::try_send) (from reactors), [`queue_pong`](Self::queue_pong) and
/// [`handle_pong`](Self::handle_pong) (relayed from the receiver's events),
/// [`add_channel`](Self::add_channel),
/// [`handle_timeout`](Self::handle_timeout). Outputs: [`poll_transmit`](Self::poll_transmit)
/// and [`poll_timeout`](Self::poll_timeout). The calling protocol is in the
/// [module docs](super#driving-the-core).
#[derive(Debug)]
pub struct MConnSender {
    /// One entry per descriptor, in descriptor order (the scheduler's tie-break).
    channels: Vec<SendChannel>,
    /// Channel id -> position in `channels`.
    index: ChannelIndex,
    /// Largest piece of a message per packet.
    max_payload: usize,
    /// Copied from the config.
    ping_interval: Duration,
    /// Copied from the config.
    pong_timeout: Duration,
    /// Copied from the config: flush upper bound and pong spacing.
    flush_throttle: Duration,
    /// Send rate limit; consumed by every byte written (control packets included).
    bucket: TokenBucket,
    /// While rate limited, sending resumes once this many bytes of budget are available (so a
    /// saturated connection wakes about every 10 ms, not once per packet).
    resume_quantum: u64,
    /// The latest `now` seen; anchors [`poll_timeout`](Self::poll_timeout).
    last_now: Instant,
    /// When the next ping becomes due.
    next_ping: Instant,
    /// A ping is due and not yet written.
    ping_due: bool,
    /// When the last ping was written, for the round-trip time.
    ping_sent_at: Option<Instant>,
    /// Set when a ping is written, cleared by a pong; reaching it is [`MConnectionError::PongTimeout`].
    pong_deadline: Option<Instant>,
    /// The peer pinged us and the pong is not written yet (coalesces any number of pings).
    pong_requested: bool,
    /// Earliest instant the next pong may be written (one pong per `flush_throttle`).
    next_pong_at: Instant,
    /// When `recently_sent` decays next.
    next_decay: Instant,
    /// When the oldest written-but-not-flushed byte was written; `None` once flushed.
    unflushed_since: Option<Instant>,
    /// Round-trip time of the last answered ping.
    last_rtt: Option<Duration>,
    /// Channels the peer accepts (its NodeInfo), as a bit set over ids; `None` until
    /// [`set_peer_channels`](MConnSender::set_peer_channels): every channel of the connection.
    peer_channels: Option<[u64; 4]>,
    /// Copied from the config: the longest a write may go without progress.
    write_timeout: Duration,
    /// Bytes handed out by `poll_transmit` so far.
    produced: u64,
    /// Of those, bytes the driver reported taken by the transport ([`MConnSender::handle_written`]).
    written: u64,
    /// Of those, bytes a completed flush pushed to the OS ([`MConnSender::handle_flushed`]).
    flushed: u64,
    /// `poll_transmit` asked for a flush that has not completed yet.
    flush_pending: bool,
    /// While output is outstanding (unwritten bytes or a pending flush): when the transport
    /// last made progress (or when the output became outstanding). `None` when all is flushed.
    write_progress_at: Option<Instant>,
    /// Where in the output the unanswered ping ends: it counts as sent, and a pong as its
    /// answer, only once a flush covers it (`flushed >= ping_end`).
    ping_end: Option<u64>,
}

/// Send state of one channel.
#[derive(Debug)]
struct SendChannel {
    id: u8,
    priority: u32,
    /// Most messages in `queue`.
    capacity: usize,
    /// Whole messages waiting; filled by `try_send`, drained by the scheduler.
    queue: VecDeque<Bytes>,
    /// The rest of the message being split into packets (taken from `queue`).
    sending: Option<Bytes>,
    /// Framed bytes written recently, decaying ×0.8 every [`DECAY_INTERVAL`].
    recently_sent: u64,
    /// Largest message accepted: the descriptor's `recv_message_capacity`, which the peer has
    /// too (a larger message would make the peer close the connection).
    max_message: usize,
}

impl SendChannel {
    fn new(d: &ChannelDescriptor) -> Self {
        Self {
            id: d.id,
            priority: d.priority,
            max_message: d.recv_message_capacity,
            capacity: d.send_queue_capacity,
            // Grows on the first messages: an idle channel holds no slots (up to 64 slots of
            // 32 bytes each were allocated per channel and connection end before).
            queue: VecDeque::new(),
            sending: None,
            recently_sent: 0,
        }
    }

    fn has_data(&self) -> bool {
        self.sending.is_some() || !self.queue.is_empty()
    }
}

/// What one [`MConnSender::poll_transmit`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use = "the driver must write the bytes and flush when told"]
pub struct Transmit {
    /// Bytes appended to the caller's buffer (whole packets). 0 means nothing can be sent now:
    /// wait for a new message, a queued pong or [`MConnSender::poll_timeout`].
    pub bytes: usize,
    /// Flush the writer after writing these bytes: nothing more can be sent at this instant
    /// (queues drained or the send rate limit reached), or written data has already waited
    /// `flush_throttle` while more kept coming.
    pub flush: bool,
}

/// Why [`MConnSender::try_send`] did not queue a message; the message is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// The channel's send queue holds `send_queue_capacity` messages already.
    #[error("send queue of channel {channel:#04x} is full")]
    Full {
        /// The channel id.
        channel: u8,
        /// The message, not queued.
        payload: Bytes,
    },
    /// The connection has no such channel, or the peer did not advertise it (see
    /// [`MConnSender::set_peer_channels`]): the peer would close the connection.
    #[error("unknown channel {channel:#04x}")]
    UnknownChannel {
        /// The channel id.
        channel: u8,
        /// The message, not queued.
        payload: Bytes,
    },
    /// The message is longer than the channel's `recv_message_capacity`. The peer declares
    /// the channel with the same descriptor, so it would close the connection on receiving
    /// it (`MessageTooLarge`), losing what follows; it is refused here instead.
    #[error("message of {len} bytes on channel {channel:#04x} is over the limit of {max}")]
    TooLarge {
        /// The channel id.
        channel: u8,
        /// The message's length.
        len: usize,
        /// The channel's `recv_message_capacity`.
        max: usize,
        /// The message, not queued.
        payload: Bytes,
    },
}

impl TrySendError {
    /// The message that was not queued.
    pub fn into_payload(self) -> Bytes {
        match self {
            Self::Full { payload, .. }
            | Self::UnknownChannel { payload, .. }
            | Self::TooLarge { payload, .. } => payload,
        }
    }
}

impl MConnSender {
    /// Builds the send half; `config` and `channels` must already be validated (see
    /// [`MConnection::new`](super::MConnection::new)).
    pub(crate) fn new(
        config: &MConnConfig,
        channels: &[ChannelDescriptor],
        index: ChannelIndex,
        now: Instant,
    ) -> Self {
        let max_packet = packet::max_packet_size(config.max_packet_msg_payload_size);
        let (bucket, resume_quantum) = rate_bucket(config.send_rate, max_packet, now);
        Self {
            channels: channels.iter().map(SendChannel::new).collect(),
            index,
            max_payload: config.max_packet_msg_payload_size,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            flush_throttle: config.flush_throttle,
            bucket,
            resume_quantum,
            last_now: now,
            next_ping: now + config.ping_interval,
            ping_due: false,
            ping_sent_at: None,
            pong_deadline: None,
            pong_requested: false,
            next_pong_at: now,
            next_decay: now + DECAY_INTERVAL,
            unflushed_since: None,
            last_rtt: None,
            peer_channels: None,
            write_timeout: config.write_timeout,
            produced: 0,
            written: 0,
            flushed: 0,
            flush_pending: false,
            write_progress_at: None,
            ping_end: None,
        }
    }

    // --- commands ---

    /// Adds a channel to the live connection, with the checks of construction: a valid
    /// descriptor, an id not in use, at most [`MAX_CHANNELS`](super::MAX_CHANNELS) channels.
    /// The channel goes last in the scheduler's tie-break order and starts with nothing
    /// recently sent; queued and partly sent messages of the other channels are untouched.
    /// On error nothing changes.
    ///
    /// The peer's receiver must have the channel before our packets on it reach it, or it
    /// closes the connection with `UnknownChannel`.
    pub fn add_channel(&mut self, desc: ChannelDescriptor) -> Result<(), MConnConfigError> {
        self.index.insert(&desc)?;
        self.channels.push(SendChannel::new(&desc));
        Ok(())
    }

    /// Restricts sending to the channels the peer advertised (its NodeInfo's list): a message
    /// on any other channel is refused with [`TrySendError::UnknownChannel`], since the peer
    /// would close the connection on receiving it (TM2's `Peer.Send` checks the same). Until
    /// called, every channel of the connection is assumed to be the peer's too. Applies to
    /// channels added later as well.
    pub fn set_peer_channels(&mut self, channels: &[u8]) {
        let mut set = [0u64; 4];
        for &id in channels {
            set[usize::from(id / 64)] |= 1 << (id % 64);
        }
        self.peer_channels = Some(set);
    }

    /// Queues `payload` on `channel` if its queue has room. Never blocks; a full queue hands
    /// the message back ([`TrySendError::Full`]). The driver then wakes the writer.
    ///
    /// Refused without touching the queue: a channel the connection or the peer lacks
    /// ([`TrySendError::UnknownChannel`]), and a message longer than the channel's
    /// `recv_message_capacity` ([`TrySendError::TooLarge`]): the peer, which has the same
    /// descriptor, would close the connection on either.
    pub fn try_send(&mut self, channel: u8, payload: Bytes) -> Result<(), TrySendError> {
        let Some(pos) = self.index.get(channel).filter(|_| self.peer_has(channel)) else {
            return Err(TrySendError::UnknownChannel { channel, payload });
        };
        let ch = &mut self.channels[pos];
        if payload.len() > ch.max_message {
            return Err(TrySendError::TooLarge {
                channel,
                len: payload.len(),
                max: ch.max_message,
                payload,
            });
        }
        if ch.queue.len() >= ch.capacity {
            return Err(TrySendError::Full { channel, payload });
        }
        ch.queue.push_back(payload);
        Ok(())
    }

    /// Whether [`try_send`](Self::try_send) on `channel` would succeed now. (TM2's `CanSend`
    /// compares against the default capacity 1 instead of the channel's; this uses the
    /// channel's.)
    pub fn can_send(&self, channel: u8) -> bool {
        self.has_channel(channel)
            && self
                .index
                .get(channel)
                .is_some_and(|pos| self.channels[pos].queue.len() < self.channels[pos].capacity)
    }

    /// Whether messages may be sent on `channel`: the connection has it and the peer
    /// advertised it (see [`set_peer_channels`](Self::set_peer_channels)).
    pub fn has_channel(&self, channel: u8) -> bool {
        self.index.get(channel).is_some() && self.peer_has(channel)
    }

    /// The channels messages may be sent on (see [`has_channel`](Self::has_channel)), in the
    /// scheduler's tie-break order.
    pub fn channels(&self) -> Vec<u8> {
        self.channels
            .iter()
            .map(|c| c.id)
            .filter(|&id| self.peer_has(id))
            .collect()
    }

    /// The largest message [`try_send`](Self::try_send) accepts on `channel` (its
    /// `recv_message_capacity`), or `None` for an unknown channel.
    pub fn max_message_size(&self, channel: u8) -> Option<usize> {
        Some(self.channels[self.index.get(channel)?].max_message)
    }

    /// The peer pinged us: answer with a pong. Any number of calls before the pong is written
    /// yield one pong, and pongs are at least `flush_throttle` apart, so a ping flood cannot
    /// make us flush more than once per `flush_throttle`.
    pub fn queue_pong(&mut self) {
        self.pong_requested = true;
    }

    /// The peer sent a pong. It answers our ping, and clears the pong deadline, only if that
    /// ping is outstanding: written *and flushed* to the transport ([`handle_flushed`] covers
    /// it). Any other pong is ignored: unsolicited (no ping), or early (our ping still waits
    /// behind unwritten data, so the peer cannot have read it). A peer that never reads and
    /// sends pongs blindly thus cannot keep a congested connection alive; the pong deadline
    /// (checked even while a write is blocked) closes it.
    ///
    /// [`handle_flushed`]: Self::handle_flushed
    pub fn handle_pong(&mut self, now: Instant) {
        let Some(end) = self.ping_end else {
            return;
        };
        if self.flushed < end {
            return;
        }
        self.ping_end = None;
        if self.pong_deadline.take().is_some() {
            self.last_rtt = self
                .ping_sent_at
                .map(|sent| now.saturating_duration_since(sent));
        }
    }

    /// The driver handed `n` more bytes of what [`poll_transmit`](Self::poll_transmit)
    /// produced to the transport (a partial write counts). Progress restarts the
    /// write-progress deadline (`write_timeout`).
    pub fn handle_written(&mut self, now: Instant, n: usize) {
        let n = (n as u64).min(self.produced - self.written);
        if n == 0 {
            return;
        }
        self.written += n;
        self.write_progress_at = Some(now);
        self.settle_write_progress();
    }

    /// The driver's flush completed: every byte it reported written is with the OS. A ping
    /// among them is now outstanding (see [`handle_pong`](Self::handle_pong)).
    pub fn handle_flushed(&mut self, now: Instant) {
        self.flushed = self.written;
        if self.flush_pending {
            self.flush_pending = false;
            self.write_progress_at = Some(now);
        }
        self.settle_write_progress();
    }

    // --- inputs ---

    /// Advances the timers to `now`: decays the recently-sent counters, makes a ping due, and
    /// fails with [`MConnectionError::PongTimeout`] once `pong_timeout` has passed since an
    /// unanswered ping, or with [`MConnectionError::WriteTimeout`] once output has been
    /// outstanding (unwritten, or its flush not completed) for `write_timeout` without the
    /// transport taking a byte (and keeps failing).
    ///
    /// The driver must call it at [`deadline`](Self::deadline) even while a write or flush is
    /// blocked (a peer that stops reading blocks it forever).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MConnectionError> {
        self.advance(now);
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(MConnectionError::PongTimeout);
        }
        if self.write_deadline().is_some_and(|d| now >= d) {
            return Err(MConnectionError::WriteTimeout {
                timeout: self.write_timeout,
            });
        }
        Ok(())
    }

    // --- outputs ---

    /// Appends packets to `out`: first a due pong and ping (these never wait for the rate
    /// limit, but count against it), then message packets up to [`BATCH_BYTES`] and the send
    /// budget, channel by channel as the scheduler picks them. Message bytes are copied straight
    /// from the queued `Bytes` into `out`; nothing is allocated per packet.
    ///
    /// Call it until it returns `bytes == 0`, writing `out` after each call and flushing when
    /// `flush` is set (see [`Transmit`]).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Transmit {
        self.transmit(now, out)
    }

    /// [`poll_transmit`](Self::poll_transmit) into a [`Gather`]: the same bytes, but each
    /// piece of a message of at least [`GATHER_MIN`] bytes is passed by reference (a slice of
    /// the queued `Bytes`, no copy) between the packet bytes around it. A driver whose writer
    /// copies its input anyway (the secret stream copies every byte into the frame it is sealed
    /// in) then copies message data once instead of twice. Until written, `out` keeps those
    /// messages' buffers alive.
    pub fn poll_transmit_gather(&mut self, now: Instant, out: &mut Gather) -> Transmit {
        self.transmit(now, out)
    }

    fn transmit<O: PacketOut>(&mut self, now: Instant, out: &mut O) -> Transmit {
        self.advance(now);
        let start = out.len();
        if self.pong_requested && now >= self.next_pong_at {
            out.control(PacketRef::Pong);
            self.pong_requested = false;
            self.next_pong_at = now + self.flush_throttle;
        }
        if self.ping_due {
            out.control(PacketRef::Ping);
            self.ping_due = false;
            self.ping_sent_at = Some(now);
            self.pong_deadline.get_or_insert(now + self.pong_timeout);
            let end = self.produced + (out.len() - start) as u64;
            self.ping_end.get_or_insert(end);
        }
        let budget = self.data_budget(now);
        let data_start = out.len();
        while out.len() - data_start < budget && self.write_next_packet(out) {}

        let bytes = out.len() - start;
        self.bucket.consume(now, bytes as u64);
        if bytes > 0 {
            self.unflushed_since.get_or_insert(now);
            self.produced += bytes as u64;
        }
        let flush = match self.unflushed_since {
            Some(since)
                if !self.can_transmit(now)
                    || now.saturating_duration_since(since) >= self.flush_throttle =>
            {
                self.unflushed_since = None;
                true
            }
            _ => false,
        };
        if bytes > 0 || flush {
            self.flush_pending |= flush;
            self.write_progress_at.get_or_insert(now);
        }
        Transmit { bytes, flush }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) fails if nothing
    /// changes before: the pong deadline or the write-progress deadline. A driver blocked in a
    /// write or flush sleeps until this (not [`poll_timeout`](Self::poll_timeout), whose
    /// pings and decays cannot be served while blocked) and then calls `handle_timeout`.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pong_deadline, self.write_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) (then `poll_transmit`) must
    /// run: the next ping, the pong deadline, the next decay while counters are non-zero, a
    /// deferred pong, or the end of a rate-limit pause while messages wait. An instant in the
    /// past means "now".
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_ping;
        let mut consider = |t: Instant| next = next.min(t);
        if self.ping_due {
            consider(self.last_now);
        }
        if let Some(deadline) = self.deadline() {
            consider(deadline);
        }
        if self.pong_requested {
            consider(self.next_pong_at);
        }
        if self.channels.iter().any(|c| c.recently_sent > 0) {
            consider(self.next_decay);
        }
        if self.has_data() && !self.bucket.is_unlimited() {
            let resume = self
                .bucket
                .available_at(self.last_now, self.resume_quantum)
                .unwrap_or(self.last_now);
            consider(resume);
        }
        Some(next)
    }

    // --- getters ---

    /// Whether anything waits to be sent: a message (queued or partly sent), a due ping or a
    /// requested pong. It may still have to wait for the rate limit or the pong spacing.
    pub fn has_pending(&self) -> bool {
        self.has_data() || self.ping_due || self.pong_requested
    }

    /// Whether a message is queued or partly sent (pings and pongs aside): a draining driver
    /// is done once this is false and the last transmit was written and flushed.
    pub fn has_messages(&self) -> bool {
        self.has_data()
    }

    /// Payload bytes held by the send queues: every queued message plus the unsent rest of
    /// the ones being split into packets. (Buffers shared with other connections count in
    /// full.) At most `Σ (send_queue_capacity + 1) × recv_message_capacity` over the channels.
    pub fn queued_bytes(&self) -> usize {
        self.channels
            .iter()
            .map(|c| {
                c.queue.iter().map(Bytes::len).sum::<usize>()
                    + c.sending.as_ref().map_or(0, Bytes::len)
            })
            .sum()
    }

    /// Messages waiting in `channel`'s queue (excluding one being split into packets), or
    /// `None` for an unknown channel.
    pub fn queued(&self, channel: u8) -> Option<usize> {
        Some(self.channels[self.index.get(channel)?].queue.len())
    }

    /// The decaying count of bytes recently sent on `channel` (what the scheduler compares),
    /// or `None` for an unknown channel.
    pub fn recently_sent(&self, channel: u8) -> Option<u64> {
        Some(self.channels[self.index.get(channel)?].recently_sent)
    }

    /// Round-trip time of the last ping that got its pong.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Bytes [`poll_transmit`](Self::poll_transmit) produced that the driver has not yet
    /// reported written ([`handle_written`](Self::handle_written)).
    pub fn unwritten(&self) -> u64 {
        self.produced - self.written
    }

    // --- helpers ---

    fn peer_has(&self, channel: u8) -> bool {
        self.peer_channels
            .is_none_or(|set| set[usize::from(channel / 64)] & (1 << (channel % 64)) != 0)
    }

    /// When output outstanding since the last progress fails the write-progress check.
    fn write_deadline(&self) -> Option<Instant> {
        self.write_progress_at.map(|at| at + self.write_timeout)
    }

    /// Stops the write-progress clock once nothing is outstanding.
    fn settle_write_progress(&mut self) {
        if self.written == self.produced && !self.flush_pending {
            self.write_progress_at = None;
        }
    }

    fn has_data(&self) -> bool {
        self.channels.iter().any(SendChannel::has_data)
    }

    /// Whether a `poll_transmit` at `now` would write something.
    fn can_transmit(&self, now: Instant) -> bool {
        self.ping_due
            || (self.pong_requested && now >= self.next_pong_at)
            || (self.has_data() && self.data_budget(now) > 0)
    }

    /// Message bytes allowed at `now`: a batch when unlimited; while rate limited, nothing until
    /// `resume_quantum` bytes of budget are available, then up to the budget.
    fn data_budget(&self, now: Instant) -> usize {
        if self.bucket.is_unlimited() {
            return BATCH_BYTES;
        }
        let available = self.bucket.available(now);
        if available < self.resume_quantum {
            return 0;
        }
        usize::try_from(available).map_or(BATCH_BYTES, |a| a.min(BATCH_BYTES))
    }

    fn advance(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if now >= self.next_ping {
            self.ping_due = true;
            self.next_ping = now + self.ping_interval;
        }
        if now >= self.next_decay {
            let late = now.duration_since(self.next_decay).as_nanos();
            let period = DECAY_INTERVAL.as_nanos();
            // After ~200 decays any u64 is 0; bound the loop for a driver that slept for days.
            let decays = (late / period + 1).min(256);
            for ch in &mut self.channels {
                for _ in 0..decays {
                    if ch.recently_sent == 0 {
                        break;
                    }
                    ch.recently_sent = decay(ch.recently_sent);
                }
            }
            // `late % period` < 2 s in nanoseconds, fits in u64.
            let into_period = Duration::from_nanos((late % period) as u64);
            self.next_decay = now + (DECAY_INTERVAL - into_period);
        }
    }

    /// TM2's scheduling rule: among channels with data, the lowest `recently_sent / priority`,
    /// ties to the earlier channel.
    fn pick_channel(&self) -> Option<usize> {
        let mut best: Option<(usize, &SendChannel)> = None;
        for (pos, ch) in self.channels.iter().enumerate() {
            if !ch.has_data() {
                continue;
            }
            // a/pa < b/pb  <=>  a·pb < b·pa, exact in u128.
            let better = best.is_none_or(|(_, b)| {
                u128::from(ch.recently_sent) * u128::from(b.priority)
                    < u128::from(b.recently_sent) * u128::from(ch.priority)
            });
            if better {
                best = Some((pos, ch));
            }
        }
        best.map(|(pos, _)| pos)
    }

    /// Writes the next packet of the scheduled channel; false when no channel has data.
    fn write_next_packet<O: PacketOut>(&mut self, out: &mut O) -> bool {
        let Some(pos) = self.pick_channel() else {
            return false;
        };
        let max_payload = self.max_payload;
        let ch = &mut self.channels[pos];
        let Some(mut msg) = ch.sending.take().or_else(|| ch.queue.pop_front()) else {
            return false; // unreachable: pick_channel only returns channels with data
        };
        let eof = msg.len() <= max_payload;
        let n = msg.len().min(max_payload);
        let before = out.len();
        out.msg(ch.id, eof, &msg, n);
        if !eof {
            msg.advance(n);
            ch.sending = Some(msg);
        }
        ch.recently_sent = ch.recently_sent.saturating_add((out.len() - before) as u64);
        true
    }
}

/// Where [`MConnSender`]'s transmit writes packets.
trait PacketOut {
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// Appends a ping or pong.
    fn control(&mut self, packet: PacketRef<'_>);
    /// Appends a `Msg` packet carrying the first `n` bytes of `msg`.
    fn msg(&mut self, channel: u8, eof: bool, msg: &Bytes, n: usize);
}

impl PacketOut for Vec<u8> {
    fn len(&self) -> usize {
        Self::len(self)
    }

    fn control(&mut self, packet: PacketRef<'_>) {
        packet.encode_framed(self);
    }

    fn msg(&mut self, channel: u8, eof: bool, msg: &Bytes, n: usize) {
        packet::encode_msg(channel, eof, &msg[..n], self);
    }
}

/// Packets as [`MConnSender::poll_transmit_gather`] writes them: bytes it copied (packet
/// framing, pings and pongs, small pieces of messages) and, between them, pieces of messages
/// by reference. [`slices`](Self::slices) gives them in wire order.
#[derive(Debug, Default)]
pub struct Gather {
    /// The copied bytes.
    head: Vec<u8>,
    /// Pieces by reference, each with the length of `head` when it was appended: it goes on
    /// the wire after `head[..at]` and before the rest.
    refs: Vec<(usize, Bytes)>,
    /// Bytes in `refs`.
    ref_bytes: usize,
}

impl Gather {
    /// A gather with no buffers (they grow with use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes gathered.
    pub fn len(&self) -> usize {
        self.head.len() + self.ref_bytes
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the bytes, keeping the buffers' capacity (and releasing the messages referred
    /// to).
    pub fn clear(&mut self) {
        self.head.clear();
        self.refs.clear();
        self.ref_bytes = 0;
    }

    /// Bytes of buffer the gather itself holds (its copied bytes' capacity; the messages it
    /// refers to are the queues' buffers).
    pub fn capacity(&self) -> usize {
        self.head.capacity()
    }

    /// The gathered bytes as one slice, when nothing is passed by reference (small messages
    /// only): a writer needs no list of slices then.
    pub fn as_contiguous(&self) -> Option<&[u8]> {
        self.refs.is_empty().then_some(&self.head[..])
    }

    /// The gathered bytes in wire order, as non-empty slices.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        (0..)
            .map_while(|i| self.segment(i))
            .filter(|slice| !slice.is_empty())
    }

    /// The `i`th segment of the gathered bytes in wire order (copied bytes and pieces by
    /// reference alternate, starting with copied ones; a segment may be empty), `None` past
    /// the last.
    fn segment(&self, i: usize) -> Option<&[u8]> {
        let k = i / 2;
        if i % 2 == 1 {
            return self.refs.get(k).map(|(_, piece)| &piece[..]);
        }
        if k > self.refs.len() {
            return None;
        }
        let from = k.checked_sub(1).map_or(0, |prev| self.refs[prev].0);
        let to = self.refs.get(k).map_or(self.head.len(), |(at, _)| *at);
        self.head.get(from..to)
    }
}

impl PacketOut for Gather {
    fn len(&self) -> usize {
        Self::len(self)
    }

    fn control(&mut self, packet: PacketRef<'_>) {
        packet.encode_framed(&mut self.head);
    }

    fn msg(&mut self, channel: u8, eof: bool, msg: &Bytes, n: usize) {
        if n < GATHER_MIN {
            packet::encode_msg(channel, eof, &msg[..n], &mut self.head);
        } else {
            packet::encode_msg_head(channel, eof, n, &mut self.head);
            self.refs.push((self.head.len(), msg.slice(..n)));
            self.ref_bytes += n;
        }
    }
}

/// `floor(x × 0.8)` without overflow (TM2 multiplies as float and truncates).
fn decay(x: u64) -> u64 {
    x / 5 * 4 + x % 5 * 4 / 5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mconn::packet::{Packet, decode_framed};

    use crate::testing::base;

    const MS: Duration = Duration::from_millis(1);

    fn sender_with(
        config: MConnConfig,
        channels: &[ChannelDescriptor],
        now: Instant,
    ) -> MConnSender {
        config.validate().unwrap();
        let index = ChannelIndex::new(channels).unwrap();
        MConnSender::new(&config, channels, index, now)
    }

    fn unlimited() -> MConnConfig {
        MConnConfig {
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        }
    }

    fn decode_all(mut bytes: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (p, used) = decode_framed(bytes, 1 << 20).unwrap().unwrap();
            out.push(p.to_packet());
            bytes = &bytes[used..];
        }
        out
    }

    /// Drains the sender at `now` the way a driver does, writing and flushing at once; returns
    /// the packets and the flushes.
    fn drain(tx: &mut MConnSender, now: Instant) -> (Vec<Packet>, usize) {
        let mut out = Vec::new();
        let mut flushes = 0;
        loop {
            let t = tx.poll_transmit(now, &mut out);
            tx.handle_written(now, t.bytes);
            if t.flush {
                tx.handle_flushed(now);
            }
            flushes += usize::from(t.flush);
            if t.bytes == 0 {
                break;
            }
        }
        (decode_all(&out), flushes)
    }

    // --- what the peer accepts ---

    #[test]
    fn a_message_over_the_channels_recv_message_capacity_is_refused_and_handed_back() {
        let t0 = base();
        let chans = [ChannelDescriptor::new(1)
            .with_send_queue_capacity(4)
            .with_recv_message_capacity(100)];
        let mut tx = sender_with(unlimited(), &chans, t0);
        assert_eq!(tx.max_message_size(1), Some(100));
        let err = tx.try_send(1, Bytes::from(vec![0; 101])).unwrap_err();
        assert!(matches!(
            err,
            TrySendError::TooLarge {
                channel: 1,
                len: 101,
                max: 100,
                ..
            }
        ));
        assert_eq!(err.into_payload().len(), 101);
        assert_eq!(tx.queued(1), Some(0));
        tx.try_send(1, Bytes::from(vec![0; 100])).unwrap();
        assert_eq!(tx.queued(1), Some(1));
        assert_eq!(tx.queued_bytes(), 100);
    }

    #[test]
    fn channels_the_peer_did_not_advertise_are_refused() {
        let t0 = base();
        let chans = [ChannelDescriptor::new(1), ChannelDescriptor::new(0x50)];
        let mut tx = sender_with(unlimited(), &chans, t0);
        assert_eq!(tx.channels(), [1, 0x50], "unrestricted until told");
        tx.set_peer_channels(&[1, 0x40]);
        assert_eq!(tx.channels(), [1]);
        assert!(tx.has_channel(1) && !tx.has_channel(0x50) && !tx.has_channel(0x40));
        assert!(!tx.can_send(0x50));
        assert!(matches!(
            tx.try_send(0x50, Bytes::from_static(b"x")),
            Err(TrySendError::UnknownChannel { channel: 0x50, .. })
        ));
        // A channel added later that the peer advertised is usable; one it did not, is not.
        tx.add_channel(ChannelDescriptor::new(0x40)).unwrap();
        tx.add_channel(ChannelDescriptor::new(0x41)).unwrap();
        assert_eq!(tx.channels(), [1, 0x40]);
        tx.try_send(0x40, Bytes::from_static(b"x")).unwrap();
        assert!(tx.try_send(0x41, Bytes::from_static(b"x")).is_err());
        assert_eq!(tx.queued(0x40), Some(1));
    }

    // --- write progress ---

    fn write_timeout_config() -> MConnConfig {
        MConnConfig {
            write_timeout: Duration::from_secs(5),
            ..unlimited()
        }
    }

    #[test]
    fn output_the_transport_never_takes_fails_after_write_timeout() {
        let t0 = base();
        let mut tx = sender_with(write_timeout_config(), &[ChannelDescriptor::new(1)], t0);
        assert_eq!(tx.deadline(), None, "nothing outstanding, no deadline");
        tx.try_send(1, Bytes::from(vec![1; 3000])).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(t0, &mut out);
        assert!(t.bytes > 0);
        let deadline = t0 + Duration::from_secs(5);
        assert_eq!(tx.deadline(), Some(deadline));
        assert!(tx.poll_timeout().unwrap() <= deadline);
        tx.handle_timeout(deadline - MS).unwrap();
        assert_eq!(
            tx.handle_timeout(deadline),
            Err(MConnectionError::WriteTimeout {
                timeout: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn each_partial_write_and_the_flush_restart_the_write_deadline() {
        let t0 = base();
        let mut tx = sender_with(write_timeout_config(), &[ChannelDescriptor::new(1)], t0);
        tx.try_send(1, Bytes::from(vec![1; 3000])).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(t0, &mut out);
        assert!(t.flush, "queue drained");
        // A byte every 4 s: never 5 s without progress.
        let mut now = t0;
        for _ in 0..t.bytes {
            now += Duration::from_secs(4);
            tx.handle_timeout(now).unwrap();
            tx.handle_written(now, 1);
        }
        assert_eq!(tx.unwritten(), 0);
        // Written, but the flush is still blocked: the deadline runs from the last write.
        assert_eq!(tx.deadline(), Some(now + Duration::from_secs(5)));
        now += Duration::from_secs(4);
        tx.handle_flushed(now);
        assert_eq!(tx.deadline(), None, "all flushed: nothing outstanding");
        tx.handle_timeout(now + Duration::from_secs(50)).unwrap();
    }

    #[test]
    fn written_output_without_a_requested_flush_has_no_deadline() {
        let t0 = base();
        let chans = [ChannelDescriptor::new(1).with_send_queue_capacity(4)];
        let mut tx = sender_with(write_timeout_config(), &chans, t0);
        tx.try_send(1, Bytes::from(vec![7; 200_000])).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(t0, &mut out);
        assert!(!t.flush);
        tx.handle_written(t0, t.bytes);
        assert_eq!(tx.deadline(), None);
    }

    // --- pongs ---

    #[test]
    fn a_pong_before_our_ping_was_flushed_is_ignored() {
        let t0 = base();
        let config = MConnConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(4),
            ..unlimited()
        };
        let mut tx = sender_with(config, &[ChannelDescriptor::new(1)], t0);
        let ping_at = t0 + Duration::from_secs(10);
        tx.handle_timeout(ping_at).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(ping_at, &mut out);
        assert_eq!(decode_all(&out), [Packet::Ping]);
        // The ping sits in the driver's buffer (the peer stopped reading): a blind pong is
        // not its answer.
        tx.handle_pong(ping_at + MS);
        assert_eq!(tx.last_rtt(), None);
        // Written but not yet flushed: still not.
        tx.handle_written(ping_at + 2 * MS, t.bytes);
        tx.handle_pong(ping_at + 3 * MS);
        let deadline = ping_at + Duration::from_secs(4);
        assert_eq!(tx.deadline(), Some(deadline));
        assert_eq!(
            tx.handle_timeout(deadline),
            Err(MConnectionError::PongTimeout)
        );
    }

    #[test]
    fn a_pong_after_our_ping_was_flushed_answers_it() {
        let t0 = base();
        let config = MConnConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(4),
            ..unlimited()
        };
        let mut tx = sender_with(config, &[ChannelDescriptor::new(1)], t0);
        let ping_at = t0 + Duration::from_secs(10);
        tx.handle_timeout(ping_at).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(ping_at, &mut out);
        tx.handle_pong(ping_at + MS); // early: ignored
        tx.handle_written(ping_at + 2 * MS, t.bytes);
        tx.handle_flushed(ping_at + 3 * MS);
        tx.handle_pong(ping_at + 30 * MS);
        assert_eq!(tx.last_rtt(), Some(30 * MS));
        assert_eq!(tx.deadline(), None);
        tx.handle_timeout(ping_at + Duration::from_secs(9)).unwrap();
    }

    #[test]
    fn unknown_channel_hands_the_message_back() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        let err = tx.try_send(2, Bytes::from_static(b"x")).unwrap_err();
        assert!(matches!(
            err,
            TrySendError::UnknownChannel { channel: 2, .. }
        ));
        assert_eq!(err.into_payload(), Bytes::from_static(b"x"));
        assert!(!tx.can_send(2));
    }

    #[test]
    fn full_queue_rejects_try_send_and_hands_the_message_back() {
        let t0 = base();
        let chans = [ChannelDescriptor::new(1).with_send_queue_capacity(2)];
        let mut tx = sender_with(unlimited(), &chans, t0);
        tx.try_send(1, Bytes::from_static(b"a")).unwrap();
        assert!(
            tx.can_send(1),
            "capacity is the channel's, not TM2's default 1"
        );
        tx.try_send(1, Bytes::from_static(b"b")).unwrap();
        assert!(!tx.can_send(1));
        let err = tx.try_send(1, Bytes::from_static(b"c")).unwrap_err();
        assert!(matches!(err, TrySendError::Full { channel: 1, .. }));
        assert_eq!(err.into_payload(), Bytes::from_static(b"c"));
        assert_eq!(tx.queued(1), Some(2));
        // Once the scheduler took the messages there is room again.
        let _ = drain(&mut tx, t0);
        assert!(tx.can_send(1));
    }

    #[test]
    fn messages_are_split_into_payload_sized_packets_with_eof_on_the_last() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(5)], t0);
        let msg: Bytes = (0..2500u32).map(|i| i as u8).collect::<Vec<_>>().into();
        tx.try_send(5, msg.clone()).unwrap();
        let (packets, flushes) = drain(&mut tx, t0);
        let expect = [(0, 1024, false), (1024, 2048, false), (2048, 2500, true)];
        assert_eq!(packets.len(), 3);
        for (p, (from, to, eof)) in packets.iter().zip(expect) {
            assert_eq!(
                p,
                &Packet::Msg {
                    channel: 5,
                    eof,
                    data: msg.slice(from..to)
                }
            );
        }
        assert_eq!(flushes, 1, "one flush once the queue drained");
        assert!(!tx.has_pending());
    }

    /// Runs the same messages through `poll_transmit` and `poll_transmit_gather` of two
    /// identical senders, with a ping and a pong due; returns both outputs and how many bytes
    /// the gather passed by reference.
    fn both_transmits(sizes: &[(u8, usize)]) -> (Vec<u8>, Vec<u8>, usize) {
        let t0 = base();
        let chans = [
            ChannelDescriptor::new(1)
                .with_send_queue_capacity(64)
                .with_recv_message_capacity(1 << 21),
            ChannelDescriptor::new(0x42)
                .with_priority(3)
                .with_send_queue_capacity(64)
                .with_recv_message_capacity(1 << 21),
        ];
        let mut plain = sender_with(unlimited(), &chans, t0);
        let mut gather = sender_with(unlimited(), &chans, t0);
        for (i, &(channel, len)) in sizes.iter().enumerate() {
            let msg: Bytes = (0..len)
                .map(|b| (b * 7 + i) as u8)
                .collect::<Vec<_>>()
                .into();
            plain.try_send(channel, msg.clone()).unwrap();
            gather.try_send(channel, msg).unwrap();
        }
        // A ping falls due and the peer asked for a pong: both control packets go out too.
        let later = t0 + Duration::from_secs(3600);
        for tx in [&mut plain, &mut gather] {
            tx.queue_pong();
            tx.handle_timeout(later).unwrap();
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut out = Gather::new();
        let mut by_ref = 0;
        for _ in 0..10_000 {
            let ta = plain.poll_transmit(later, &mut a);
            let tb = gather.poll_transmit_gather(later, &mut out);
            assert_eq!(ta, tb, "the same transmit decisions");
            assert_eq!(out.len(), tb.bytes);
            by_ref += out.ref_bytes;
            for slice in out.slices() {
                assert!(!slice.is_empty());
                b.extend_from_slice(slice);
            }
            out.clear();
            if ta.bytes == 0 {
                return (a, b, by_ref);
            }
        }
        panic!("the senders never drained");
    }

    #[test]
    fn a_gather_carries_the_same_bytes_as_a_copied_transmit() {
        let sizes = [
            (1, 0),
            (1, 10),
            (0x42, GATHER_MIN - 1),
            (1, GATHER_MIN),
            (0x42, 1024),
            (1, 1025),
            (0x42, 5000),
            (1, 1 << 20),
        ];
        let (plain, gathered, by_ref) = both_transmits(&sizes);
        assert_eq!(gathered, plain);
        let total: usize = sizes.iter().map(|&(_, n)| n).sum();
        // Everything but the two small messages, and the 5000 and 1025-byte messages' tails
        // under GATHER_MIN, went by reference.
        assert!(
            by_ref > total - 2 * GATHER_MIN - 1024,
            "{by_ref} of {total}"
        );
        let packets = decode_all(&gathered);
        assert!(packets.contains(&Packet::Ping) && packets.contains(&Packet::Pong));
    }

    proptest::proptest! {
        #[test]
        fn any_messages_gather_to_the_same_bytes(
            sizes in proptest::collection::vec(
                (proptest::prop_oneof![proptest::strategy::Just(1u8), proptest::strategy::Just(0x42u8)],
                 0usize..5000),
                0..20,
            ),
        ) {
            let (plain, gathered, _) = both_transmits(&sizes);
            proptest::prop_assert_eq!(gathered, plain);
        }
    }

    #[test]
    fn empty_message_is_one_empty_eof_packet() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(5)], t0);
        tx.try_send(5, Bytes::new()).unwrap();
        assert!(tx.has_pending());
        let (packets, _) = drain(&mut tx, t0);
        assert_eq!(
            packets,
            [Packet::Msg {
                channel: 5,
                eof: true,
                data: Bytes::new()
            }]
        );
    }

    #[test]
    fn idle_sender_writes_nothing_and_never_asks_to_flush() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        let mut out = Vec::new();
        assert_eq!(tx.poll_transmit(t0, &mut out), Transmit::default());
        assert!(out.is_empty());
        // Only the ping timer is armed on an idle connection.
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_batch_is_bounded_and_asks_for_another_call_without_flushing() {
        let t0 = base();
        let chans = [ChannelDescriptor::new(1).with_send_queue_capacity(4)];
        let mut tx = sender_with(unlimited(), &chans, t0);
        tx.try_send(1, Bytes::from(vec![7; 200_000])).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(t0, &mut out);
        assert!(
            t.bytes >= BATCH_BYTES && t.bytes < BATCH_BYTES + 1033,
            "{t:?}"
        );
        assert!(!t.flush, "more can go right now");
        // A driver that keeps writing past flush_throttle is told to flush anyway.
        let t = tx.poll_transmit(t0 + 100 * MS, &mut out);
        assert!(t.bytes > 0 && t.flush, "{t:?}");
    }

    #[test]
    fn higher_priority_channel_gets_proportionally_more_packets() {
        let t0 = base();
        let chans = [
            ChannelDescriptor::new(1).with_priority(1),
            ChannelDescriptor::new(2).with_priority(3),
        ];
        let mut tx = sender_with(unlimited(), &chans, t0);
        tx.try_send(1, Bytes::from(vec![0; 40 * 1024])).unwrap();
        tx.try_send(2, Bytes::from(vec![0; 40 * 1024])).unwrap();
        let mut out = Vec::new();
        let _ = tx.poll_transmit(t0, &mut out);
        let order: Vec<u8> = decode_all(&out)[..8]
            .iter()
            .map(|p| match p {
                Packet::Msg { channel, .. } => *channel,
                other => panic!("{other:?}"),
            })
            .collect();
        // Ties go to the earlier channel; then channel 2 may send 3 packets per packet of 1.
        assert_eq!(order, [1, 2, 2, 2, 1, 2, 2, 2]);
    }

    #[test]
    fn recently_sent_decays_by_a_fifth_every_two_seconds() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        tx.try_send(1, Bytes::from(vec![0; 1024])).unwrap();
        let _ = drain(&mut tx, t0);
        // One full packet: 1046 bytes with its prefix.
        assert_eq!(tx.recently_sent(1), Some(1046));
        assert_eq!(tx.poll_timeout(), Some(t0 + DECAY_INTERVAL));
        tx.handle_timeout(t0 + DECAY_INTERVAL - MS).unwrap();
        assert_eq!(tx.recently_sent(1), Some(1046));
        tx.handle_timeout(t0 + DECAY_INTERVAL).unwrap();
        assert_eq!(tx.recently_sent(1), Some(836));
        // Two periods late: two decays, and the next deadline stays on the 2 s grid.
        tx.handle_timeout(t0 + 3 * DECAY_INTERVAL + 500 * MS)
            .unwrap();
        assert_eq!(tx.recently_sent(1), Some(534));
        assert_eq!(tx.next_decay, t0 + 4 * DECAY_INTERVAL);
        // Days later the counter is simply 0 (and the loop was bounded).
        tx.handle_timeout(t0 + Duration::from_secs(86_400 * 30))
            .unwrap();
        assert_eq!(tx.recently_sent(1), Some(0));
        assert_eq!(decay(u64::MAX), (u128::from(u64::MAX) * 4 / 5) as u64);
        assert_eq!(decay(9), 7);
    }

    #[test]
    fn missing_pong_times_out_exactly_after_pong_timeout() {
        let t0 = base();
        let config = MConnConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(4),
            ..unlimited()
        };
        let mut tx = sender_with(config, &[ChannelDescriptor::new(1)], t0);
        let ping_at = t0 + Duration::from_secs(10);
        assert_eq!(tx.poll_timeout(), Some(ping_at));
        tx.handle_timeout(ping_at).unwrap();
        let (packets, flushes) = drain(&mut tx, ping_at);
        assert_eq!((packets, flushes), (vec![Packet::Ping], 1));
        let deadline = ping_at + Duration::from_secs(4);
        assert_eq!(tx.poll_timeout(), Some(deadline));
        tx.handle_timeout(deadline - Duration::from_nanos(1))
            .unwrap();
        assert_eq!(
            tx.handle_timeout(deadline),
            Err(MConnectionError::PongTimeout)
        );
        assert_eq!(
            tx.handle_timeout(deadline + MS),
            Err(MConnectionError::PongTimeout)
        );
    }

    #[test]
    fn pong_in_time_clears_the_deadline_and_records_the_round_trip() {
        let t0 = base();
        let config = MConnConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(4),
            ..unlimited()
        };
        let mut tx = sender_with(config, &[ChannelDescriptor::new(1)], t0);
        let ping_at = t0 + Duration::from_secs(10);
        tx.handle_timeout(ping_at).unwrap();
        let _ = drain(&mut tx, ping_at);
        tx.handle_pong(ping_at + 30 * MS);
        assert_eq!(tx.last_rtt(), Some(30 * MS));
        assert_eq!(tx.poll_timeout(), Some(ping_at + Duration::from_secs(10)));
        tx.handle_timeout(ping_at + Duration::from_secs(9)).unwrap();
        // The next ping goes out on schedule.
        tx.handle_timeout(ping_at + Duration::from_secs(10))
            .unwrap();
        let (packets, _) = drain(&mut tx, ping_at + Duration::from_secs(10));
        assert_eq!(packets, [Packet::Ping]);
    }

    #[test]
    fn unsolicited_pong_is_harmless() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        tx.handle_pong(t0);
        assert_eq!(tx.last_rtt(), None);
        tx.handle_timeout(t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn ping_flood_yields_one_pong_per_flush_throttle() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        for _ in 0..1000 {
            tx.queue_pong();
        }
        let (packets, flushes) = drain(&mut tx, t0);
        assert_eq!((packets, flushes), (vec![Packet::Pong], 1));
        // More pings right away: the pong waits for the throttle, no extra flush now.
        tx.queue_pong();
        assert!(tx.has_pending());
        assert_eq!(drain(&mut tx, t0 + 50 * MS), (vec![], 0));
        assert_eq!(tx.poll_timeout(), Some(t0 + 100 * MS));
        assert_eq!(drain(&mut tx, t0 + 100 * MS), (vec![Packet::Pong], 1));
    }

    #[test]
    fn pong_rides_with_data_in_the_same_flush() {
        let t0 = base();
        let mut tx = sender_with(unlimited(), &[ChannelDescriptor::new(1)], t0);
        tx.try_send(1, Bytes::from_static(b"hi")).unwrap();
        tx.queue_pong();
        let (packets, flushes) = drain(&mut tx, t0);
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0], Packet::Pong);
        assert_eq!(flushes, 1);
    }

    #[test]
    fn rate_limited_sender_pauses_flushes_and_says_when_to_resume() {
        let t0 = base();
        let config = MConnConfig {
            send_rate: 100_000,
            ..unlimited()
        };
        let chans = [ChannelDescriptor::new(1).with_send_queue_capacity(8)];
        let mut tx = sender_with(config, &chans, t0);
        // Burst: max(rate / 50, 2 × 1056) = 2112 bytes; resume quantum 1056 bytes (the largest
        // packet). Packets of 1044 bytes (1024 of data, not the last) go while budget is left:
        // three, 1020 bytes into debt.
        tx.try_send(1, Bytes::from(vec![1; 10_000])).unwrap();
        let mut out = Vec::new();
        let t = tx.poll_transmit(t0, &mut out);
        assert_eq!(
            t,
            Transmit {
                bytes: 3 * 1044,
                flush: true
            }
        );
        assert_eq!(tx.poll_transmit(t0, &mut out).bytes, 0);
        // Repaying 1020 and gaining 1056: 2076 bytes at 100 kB/s take 20.76 ms.
        let resume = tx.poll_timeout().unwrap();
        assert_eq!(resume, t0 + Duration::from_nanos(20_760_000));
        assert_eq!(tx.poll_transmit(resume - MS, &mut out).bytes, 0);
        let t = tx.poll_transmit(resume, &mut out);
        assert_eq!(
            t,
            Transmit {
                bytes: 2 * 1044,
                flush: true
            }
        );
    }
}
