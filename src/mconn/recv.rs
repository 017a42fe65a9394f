//! [`MConnReceiver`]: the receive half of a connection — packet framing across reads,
//! per-channel reassembly with limits, the receive rate limit and the events it produces.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::channel::{ChannelDescriptor, ChannelIndex};
use super::config::{MConnConfig, MConnConfigError};
use super::error::MConnectionError;
use super::packet::{self, PacketRef};
use super::rate_bucket;
use super::spare::Spares;
use crate::flowrate::TokenBucket;

/// What the receive half produced, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole message arrived on `channel`. The payload is owned (no buffer is reused behind
    /// the receiver's back, unlike TM2): the buffer of a message of several packets goes back
    /// to the receiver for a later message only once every reference to the payload is
    /// dropped (see `src/mconn/spare.rs`).
    Received {
        /// The channel id.
        channel: u8,
        /// The reassembled message.
        payload: Bytes,
    },
    /// The peer pinged us: the driver calls [`MConnSender::queue_pong`]. Pings arriving while
    /// one `PingReceived` is still queued are folded into it.
    ///
    /// [`MConnSender::queue_pong`]: super::MConnSender::queue_pong
    PingReceived,
    /// The peer answered a ping: the driver calls [`MConnSender::handle_pong`]. Folded like
    /// `PingReceived`.
    ///
    /// [`MConnSender::handle_pong`]: super::MConnSender::handle_pong
    PongReceived,
}

/// The receive half of a connection. Owned by the task that reads from the socket.
///
/// Inputs: [`handle_bytes`](Self::handle_bytes) and [`add_channel`](Self::add_channel).
/// Outputs: [`poll_event`](Self::poll_event) and
/// [`recv_ready`](Self::recv_ready). The calling protocol is in the
/// [module docs](super#driving-the-core).
#[derive(Debug)]
pub struct MConnReceiver {
    /// One entry per descriptor.
    channels: Vec<RecvChannel>,
    /// Channel id -> position in `channels`.
    index: ChannelIndex,
    /// Largest packet accepted (prefix included).
    max_packet_size: usize,
    /// The start of a packet split across `handle_bytes` calls; never longer than
    /// `max_packet_size`. Empty between packets.
    partial: Vec<u8>,
    /// Events not yet polled.
    inbox: Inbox,
    /// Receive rate limit; consumed by every byte handed in.
    bucket: TokenBucket,
    /// While rate limited, reading resumes once this many bytes of budget are available.
    resume_quantum: u64,
    /// The first error; every later `handle_bytes` returns it again.
    failed: Option<MConnectionError>,
    /// Buffers of delivered multi-packet messages, back from their consumers for the next
    /// message (see `src/mconn/spare.rs`).
    spares: Spares,
}

/// Events not yet polled. Bounded by the input of one `handle_bytes` call if the driver drains
/// it before feeding more: every event needs a packet of at least 2 bytes, and any number of
/// pings (pongs) folds into one event while one is queued.
#[derive(Debug, Default)]
struct Inbox {
    events: VecDeque<Event>,
    /// A `PingReceived` is in `events`.
    ping_queued: bool,
    /// A `PongReceived` is in `events`.
    pong_queued: bool,
}

impl Inbox {
    fn push(&mut self, event: Event) {
        let queued = match event {
            Event::PingReceived => &mut self.ping_queued,
            Event::PongReceived => &mut self.pong_queued,
            Event::Received { .. } => {
                self.events.push_back(event);
                return;
            }
        };
        if !*queued {
            *queued = true;
            self.events.push_back(event);
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        match event {
            Event::PingReceived => self.ping_queued = false,
            Event::PongReceived => self.pong_queued = false,
            Event::Received { .. } => {}
        }
        Some(event)
    }
}

/// Receive state of one channel.
#[derive(Debug)]
struct RecvChannel {
    id: u8,
    /// Initial capacity of `buf` for a multi-packet message.
    buffer_capacity: usize,
    /// Largest message; `buf` never grows past it.
    message_capacity: usize,
    /// The message being reassembled; empty between messages.
    buf: Vec<u8>,
}

impl RecvChannel {
    fn new(d: &ChannelDescriptor) -> Self {
        Self {
            id: d.id,
            buffer_capacity: d.recv_buffer_capacity.min(d.recv_message_capacity),
            message_capacity: d.recv_message_capacity,
            buf: Vec::new(),
        }
    }
}

impl MConnReceiver {
    /// Builds the receive half; `config` and `channels` must already be validated (see
    /// [`MConnection::new`](super::MConnection::new)).
    pub(crate) fn new(
        config: &MConnConfig,
        channels: &[ChannelDescriptor],
        index: ChannelIndex,
        now: Instant,
    ) -> Self {
        let max_packet_size = packet::max_packet_size(config.max_packet_msg_payload_size);
        let (bucket, resume_quantum) = rate_bucket(config.recv_rate, max_packet_size, now);
        Self {
            channels: channels.iter().map(RecvChannel::new).collect(),
            index,
            max_packet_size,
            partial: Vec::new(),
            inbox: Inbox::default(),
            bucket,
            resume_quantum,
            failed: None,
            spares: Spares::default(),
        }
    }

    // --- inputs ---

    /// Adds a channel to the live connection, with the checks of construction: a valid
    /// descriptor, an id not in use, at most [`MAX_CHANNELS`](super::MAX_CHANNELS) channels.
    /// On error nothing changes.
    ///
    /// Packets are looked up when [`handle_bytes`](Self::handle_bytes) has a whole one, so
    /// every packet on the channel completed by a `handle_bytes` call after this one is
    /// accepted, including one whose first bytes were buffered earlier; a packet on it
    /// completed before this call was `UnknownChannel`, which ended the connection. Messages
    /// being reassembled on other channels are untouched.
    pub fn add_channel(&mut self, desc: ChannelDescriptor) -> Result<(), MConnConfigError> {
        self.index.insert(&desc)?;
        self.channels.push(RecvChannel::new(&desc));
        Ok(())
    }

    /// Feeds bytes read from the (decrypted) stream, received at `now`: decodes every whole
    /// packet into events and keeps an incomplete packet's start for the next call. Counts the
    /// bytes against the receive rate limit.
    ///
    /// On error the connection is finished: events queued before the bad packet can still be
    /// polled, and every later call returns the same error.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), MConnectionError> {
        self.handle_input(now, bytes, None)
    }

    /// Like [`handle_bytes`](Self::handle_bytes), for bytes the driver hands over as one
    /// shared buffer: a message that arrives in one packet of `chunk` is delivered as a slice
    /// of it (no allocation or copy per message; the messages of one chunk share its
    /// allocation). Messages reassembled from several packets, or from a packet split across
    /// calls, get a buffer of their own as with `handle_bytes`.
    pub fn handle_chunk(&mut self, now: Instant, chunk: &Bytes) -> Result<(), MConnectionError> {
        self.handle_input(now, chunk, Some(chunk))
    }

    /// `bytes` is `source`'s contents when `source` is given.
    fn handle_input(
        &mut self,
        now: Instant,
        bytes: &[u8],
        source: Option<&Bytes>,
    ) -> Result<(), MConnectionError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.bucket.consume(now, bytes.len() as u64);
        let result = self.process(bytes, source);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
            self.partial = Vec::new();
            for ch in &mut self.channels {
                ch.buf = Vec::new();
            }
            self.spares.release();
        }
        result
    }

    /// Tells the receiver the socket has nothing more for now. If no message is being
    /// reassembled either, the connection is quiet: the spare buffers it kept for the next
    /// large message are freed, and buffers of messages delivered earlier are freed when
    /// dropped instead of coming back (see `src/mconn/spare.rs`). Call it whenever a read would
    /// wait; while messages stream in, a message is nearly always in progress and the spares
    /// stay.
    pub fn handle_idle(&mut self) {
        if self.partial.is_empty() && self.channels.iter().all(|ch| ch.buf.is_empty()) {
            self.spares.release();
        }
    }

    // --- outputs ---

    /// The next event, in arrival order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.inbox.pop()
    }

    /// Whether the driver may read more from the socket at `now`: `Ok(())`, or `Err(at)` with
    /// the instant the receive rate limit allows reading again (the driver waits on a timer,
    /// never blocks a thread). Always `Ok` when the rate is unlimited.
    pub fn recv_ready(&self, now: Instant) -> Result<(), Instant> {
        match self.bucket.available_at(now, self.resume_quantum) {
            None => Ok(()),
            Some(at) => Err(at),
        }
    }

    // --- getters ---

    /// Events waiting for [`poll_event`](Self::poll_event).
    pub fn pending_events(&self) -> usize {
        self.inbox.events.len()
    }

    /// The largest packet this receiver accepts, prefix included.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Removes the ping/pong events, returning whether there was a ping and a pong (for
    /// [`MConnection`](super::MConnection), which answers them itself).
    pub(crate) fn take_keepalive(&mut self) -> (bool, bool) {
        let inbox = &mut self.inbox;
        let seen = (inbox.ping_queued, inbox.pong_queued);
        if seen != (false, false) {
            inbox.events.retain(|e| matches!(e, Event::Received { .. }));
            inbox.ping_queued = false;
            inbox.pong_queued = false;
        }
        seen
    }

    // --- helpers ---

    /// `source`, when given, is the buffer `input` lies in: single-packet messages are sliced
    /// from it.
    fn process(
        &mut self,
        mut input: &[u8],
        source: Option<&Bytes>,
    ) -> Result<(), MConnectionError> {
        if !self.partial.is_empty() {
            input = self.complete_partial(input)?;
            if !self.partial.is_empty() {
                return Ok(()); // all of `input` went into the partial packet
            }
        }
        // Decode straight from the caller's slice; only an incomplete tail is copied.
        while !input.is_empty() {
            match packet::decode_framed(input, self.max_packet_size)? {
                Some((packet, used)) => {
                    self.on_packet(packet, source)?;
                    input = &input[used..];
                }
                None => {
                    // Incomplete: shorter than its checked length prefix, or than a prefix.
                    self.partial.extend_from_slice(input);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `input` into `partial` until it holds a whole packet (then handles it
    /// and clears `partial`) or `input` runs out; returns the unused rest of `input`.
    fn complete_partial<'a>(&mut self, mut input: &'a [u8]) -> Result<&'a [u8], MConnectionError> {
        loop {
            let need = match packet::framed_len(&self.partial, self.max_packet_size)? {
                Some(total) => total - self.partial.len(),
                // Prefix incomplete: a prefix is at most 9 bytes, and `framed_len` refuses a
                // bad marker, so one byte at a time until it is complete is enough and bounded.
                None => 1,
            };
            if need == 0 {
                break;
            }
            if input.is_empty() {
                return Ok(input);
            }
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        // Taken out so the packet can borrow it while `on_packet` borrows `self`.
        let partial = std::mem::take(&mut self.partial);
        let result = match packet::decode_framed(&partial, self.max_packet_size)? {
            Some((packet, _)) => self.on_packet(packet, None),
            None => Ok(()), // unreachable: `partial` holds exactly one whole packet
        };
        // Keep the allocation for the next split packet.
        self.partial = partial;
        self.partial.clear();
        result.map(|()| input)
    }

    /// `source`, when given, holds the packet's bytes (see [`process`](Self::process)).
    fn on_packet(
        &mut self,
        packet: PacketRef<'_>,
        source: Option<&Bytes>,
    ) -> Result<(), MConnectionError> {
        let (channel, eof, data) = match packet {
            PacketRef::Ping => {
                self.inbox.push(Event::PingReceived);
                return Ok(());
            }
            PacketRef::Pong => {
                self.inbox.push(Event::PongReceived);
                return Ok(());
            }
            PacketRef::Msg { channel, eof, data } => (channel, eof, data),
        };
        let pos = self
            .index
            .get(channel)
            .ok_or(MConnectionError::UnknownChannel(channel))?;
        let ch = &mut self.channels[pos];
        let events = &mut self.inbox;
        let len = ch.buf.len() + data.len();
        if len > ch.message_capacity {
            return Err(MConnectionError::MessageTooLarge {
                channel: ch.id,
                len,
                max: ch.message_capacity,
            });
        }
        if eof && ch.buf.is_empty() {
            // Single-packet message: a slice of the caller's buffer, or one exact allocation;
            // no reassembly buffer either way.
            let payload = match source {
                Some(source) => slice_or_copy(source, data),
                None => Bytes::copy_from_slice(data),
            };
            events.push(Event::Received { channel, payload });
            return Ok(());
        }
        if ch.buf.capacity() == 0 {
            // A message of several packets starts: in the buffer of an earlier one if its
            // consumer dropped it.
            ch.buf = self.spares.take(ch.message_capacity);
        }
        if ch.buf.capacity() < len {
            // Grow geometrically from the configured initial capacity, but never past the
            // message limit (`Vec`'s own doubling could overshoot it).
            let target = (ch.buf.capacity() * 2)
                .max(ch.buffer_capacity)
                .min(ch.message_capacity)
                .max(len);
            ch.buf.reserve_exact(target - ch.buf.len());
        }
        ch.buf.extend_from_slice(data);
        if eof {
            events.push(Event::Received {
                channel,
                payload: self.spares.payload(std::mem::take(&mut ch.buf)),
            });
        }
        Ok(())
    }

    /// Capacity of `channel`'s reassembly buffer (tests check it never passes the limit).
    #[cfg(test)]
    fn reassembly_capacity(&self, channel: u8) -> usize {
        self.channels[self.index.get(channel).unwrap()]
            .buf
            .capacity()
    }
}

/// `data` as a slice of `source` when it lies inside it (it always does: packets borrow the
/// input), else a copy; never panics, unlike `Bytes::slice_ref`.
fn slice_or_copy(source: &Bytes, data: &[u8]) -> Bytes {
    let start = (data.as_ptr() as usize).wrapping_sub(source.as_ptr() as usize);
    if start <= source.len() && data.len() <= source.len() - start {
        source.slice(start..start + data.len())
    } else {
        Bytes::copy_from_slice(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mconn::packet::{DecodeError, Packet, encode_msg};
    use proptest::prelude::*;
    use std::time::Duration;

    use crate::testing::base;

    fn receiver_with(
        config: MConnConfig,
        channels: &[ChannelDescriptor],
    ) -> (MConnReceiver, Instant) {
        config.validate().unwrap();
        let t0 = base();
        let index = ChannelIndex::new(channels).unwrap();
        (MConnReceiver::new(&config, channels, index, t0), t0)
    }

    fn unlimited() -> MConnConfig {
        MConnConfig {
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        }
    }

    fn receiver(channels: &[ChannelDescriptor]) -> (MConnReceiver, Instant) {
        receiver_with(unlimited(), channels)
    }

    fn msg(channel: u8, eof: bool, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_msg(channel, eof, data, &mut out);
        out
    }

    fn events(rx: &mut MConnReceiver) -> Vec<Event> {
        std::iter::from_fn(|| rx.poll_event()).collect()
    }

    fn received(channel: u8, payload: &[u8]) -> Event {
        Event::Received {
            channel,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn unknown_channel_is_an_error_and_sticks() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        let mut bytes = msg(1, true, b"ok");
        bytes.extend(msg(9, true, b"x"));
        assert_eq!(
            rx.handle_bytes(t0, &bytes),
            Err(MConnectionError::UnknownChannel(9))
        );
        // What arrived before the bad packet is still delivered.
        assert_eq!(events(&mut rx), [received(1, b"ok")]);
        assert_eq!(
            rx.handle_bytes(t0, &msg(1, true, b"again")),
            Err(MConnectionError::UnknownChannel(9))
        );
        assert!(events(&mut rx).is_empty());
    }

    #[test]
    fn oversized_message_fails_before_the_buffer_passes_the_limit() {
        let chans = [ChannelDescriptor::new(1)
            .with_recv_buffer_capacity(100)
            .with_recv_message_capacity(3000)];
        let (mut rx, t0) = receiver(&chans);
        // 1000-byte pieces: a plain `Vec` would double from 2000 to 4000 on the third one.
        let piece = [0xaa; 1000];
        for _ in 0..3 {
            rx.handle_bytes(t0, &msg(1, false, &piece)).unwrap();
            assert!(rx.reassembly_capacity(1) <= 3000);
        }
        assert_eq!(
            rx.handle_bytes(t0, &msg(1, false, &piece)),
            Err(MConnectionError::MessageTooLarge {
                channel: 1,
                len: 4000,
                max: 3000
            })
        );
        assert!(events(&mut rx).is_empty());
    }

    /// Feeds `packets` packets of 1000 bytes on channel 1, the last one ending a message, and
    /// returns that message.
    fn whole(rx: &mut MConnReceiver, t0: Instant, packets: usize, fill: u8) -> Bytes {
        for i in 0..packets {
            rx.handle_bytes(t0, &msg(1, i + 1 == packets, &[fill; 1000]))
                .unwrap();
        }
        let [Event::Received { payload, .. }] = &events(rx)[..] else {
            panic!("one message expected");
        };
        assert!(payload.iter().all(|&b| b == fill));
        payload.clone()
    }

    #[test]
    fn a_dropped_messages_buffer_takes_the_next_message_of_several_packets() {
        let chans = [ChannelDescriptor::new(1).with_recv_message_capacity(1 << 20)];
        let (mut rx, t0) = receiver(&chans);
        let first = whole(&mut rx, t0, 64, 1);
        assert_eq!(first.len(), 64_000);
        let at = first.as_ptr();
        let held = whole(&mut rx, t0, 64, 2);
        assert_ne!(
            held.as_ptr(),
            at,
            "the first is still held: a buffer of its own"
        );
        drop(first);
        let third = whole(&mut rx, t0, 64, 3);
        assert_eq!(third.as_ptr(), at, "reassembled in the first one's buffer");
        assert_eq!(rx.reassembly_capacity(1), 0, "lent out with the payload");
        drop((held, third));
        assert_eq!(rx.spares.held(), 2 * 64 * 1024, "both buffers are back");
    }

    #[test]
    fn idle_frees_the_spares_unless_a_message_is_in_progress() {
        let chans = [ChannelDescriptor::new(1).with_recv_message_capacity(1 << 20)];
        let (mut rx, t0) = receiver(&chans);
        let (a, b) = (whole(&mut rx, t0, 8, 1), whole(&mut rx, t0, 8, 2));
        drop((a, b));
        let two = rx.spares.held();
        assert!(two >= 2 * 8000, "both buffers came back");
        rx.handle_bytes(t0, &msg(1, false, &[3; 1000])).unwrap();
        let one = rx.spares.held();
        assert!(one > 0 && one < two, "the next message took one");
        rx.handle_idle();
        assert_eq!(rx.spares.held(), one, "a message is in progress: kept");
        let last = whole(&mut rx, t0, 7, 3); // the rest of the message: 8,000 bytes in all
        assert_eq!(last.len(), 8000);
        assert_eq!(rx.spares.held(), one, "lent out with the payload");
        rx.handle_idle();
        assert_eq!(rx.spares.held(), 0, "quiet: freed");
        drop(last);
        assert_eq!(rx.spares.held(), 0, "dropped while quiet: freed, not kept");
        drop(whole(&mut rx, t0, 8, 4));
        assert!(rx.spares.held() > 0, "busy again: kept again");
    }

    #[test]
    fn a_broken_connection_frees_its_spares() {
        let chans = [ChannelDescriptor::new(1).with_recv_message_capacity(1 << 20)];
        let (mut rx, t0) = receiver(&chans);
        drop(whole(&mut rx, t0, 8, 1));
        assert!(rx.spares.held() > 0);
        assert!(rx.handle_bytes(t0, &msg(9, true, &[0; 10])).is_err());
        assert_eq!(rx.spares.held(), 0);
    }

    #[test]
    fn single_packet_message_over_the_limit_is_refused() {
        let chans = [ChannelDescriptor::new(1).with_recv_message_capacity(10)];
        let (mut rx, t0) = receiver(&chans);
        assert_eq!(
            rx.handle_bytes(t0, &msg(1, true, &[0; 11])),
            Err(MConnectionError::MessageTooLarge {
                channel: 1,
                len: 11,
                max: 10
            })
        );
    }

    #[test]
    fn message_of_exactly_the_limit_is_accepted_with_an_exact_buffer() {
        let chans = [ChannelDescriptor::new(1)
            .with_recv_buffer_capacity(1 << 20)
            .with_recv_message_capacity(2000)];
        let (mut rx, t0) = receiver(&chans);
        rx.handle_bytes(t0, &msg(1, false, &[1; 1000])).unwrap();
        assert_eq!(rx.reassembly_capacity(1), 2000, "initial capacity capped");
        rx.handle_bytes(t0, &msg(1, true, &[2; 1000])).unwrap();
        let [Event::Received { payload, .. }] = &events(&mut rx)[..] else {
            panic!("one message expected");
        };
        assert_eq!(payload.len(), 2000);
    }

    #[test]
    fn oversize_length_prefix_fails_before_the_body_is_buffered() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        // A prefix announcing 60 000 bytes (uvarint e0 d4 03), then nothing else.
        assert_eq!(
            rx.handle_bytes(t0, &[0xe0, 0xd4, 0x03]),
            Err(MConnectionError::Decode(DecodeError::TooLarge {
                len: 60_003,
                max: 1056
            }))
        );
        // Same when the prefix itself arrives split across reads.
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        rx.handle_bytes(t0, &[0xe0]).unwrap();
        rx.handle_bytes(t0, &[0xd4]).unwrap();
        assert!(matches!(
            rx.handle_bytes(t0, &[0x03]),
            Err(MConnectionError::Decode(DecodeError::TooLarge { .. }))
        ));
        // A prefix of continuation bytes only is refused by its tenth byte, never buffered
        // further.
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        let mut refused = false;
        for _ in 0..10 {
            if rx.handle_bytes(t0, &[0xff]).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn garbled_packet_is_a_decode_error() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        assert_eq!(
            rx.handle_bytes(t0, b"\x0b\x0a\x09/p2p.Pinx"),
            Err(MConnectionError::Decode(DecodeError::UnknownPacketType(
                "/p2p.Pinx".into()
            )))
        );
    }

    #[test]
    fn chunk_messages_are_slices_of_the_chunk_and_split_ones_get_their_own_buffer() {
        let mut stream = msg(1, true, b"first");
        stream.extend(msg(2, false, &[7; 30]));
        stream.extend(msg(2, true, &[8; 10]));
        stream.extend(msg(1, true, b"second"));
        stream.extend(msg(1, true, &[9; 50]));
        // The last packet is cut in two: its message is completed by the next chunk.
        let cut = stream.len() - 20;
        let first = Bytes::copy_from_slice(&stream[..cut]);
        let second = Bytes::copy_from_slice(&stream[cut..]);
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1), ChannelDescriptor::new(2)]);
        rx.handle_chunk(t0, &first).unwrap();
        rx.handle_chunk(t0, &second).unwrap();
        let got = events(&mut rx);
        let mut reassembled = vec![7; 30];
        reassembled.extend([8; 10]);
        assert_eq!(
            got,
            [
                received(1, b"first"),
                received(2, &reassembled),
                received(1, b"second"),
                received(1, &[9; 50]),
            ]
        );
        let inside = |payload: &Bytes, chunk: &Bytes| {
            let (p, c) = (payload.as_ptr() as usize, chunk.as_ptr() as usize);
            p >= c && p + payload.len() <= c + chunk.len()
        };
        let payloads: Vec<&Bytes> = got
            .iter()
            .map(|e| match e {
                Event::Received { payload, .. } => payload,
                _ => unreachable!(),
            })
            .collect();
        assert!(inside(payloads[0], &first));
        assert!(inside(payloads[2], &first));
        assert!(!inside(payloads[1], &first) && !inside(payloads[1], &second));
        assert!(!inside(payloads[3], &first) && !inside(payloads[3], &second));
    }

    #[test]
    fn slice_or_copy_copies_what_lies_outside_the_source() {
        let source = Bytes::from_static(b"0123456789");
        let inner = slice_or_copy(&source, &source[2..5]);
        assert_eq!(
            (&inner[..], inner.as_ptr()),
            (&b"234"[..], source[2..].as_ptr())
        );
        let other = [1u8, 2, 3];
        let copied = slice_or_copy(&source, &other);
        assert_eq!(&copied[..], &other);
        assert_ne!(copied.as_ptr(), other.as_ptr());
        // Straddling the end: copied, never a panic.
        let long = Bytes::from_static(b"0123456789abcdef");
        let straddle = slice_or_copy(&long.slice(0..10), &long[8..12]);
        assert_eq!(&straddle[..], b"89ab");
    }

    #[test]
    fn packets_split_at_every_point_are_reassembled() {
        let mut stream = msg(1, false, &[7; 600]);
        stream.extend(msg(2, true, b"x"));
        stream.extend(msg(1, true, &[8; 400]));
        Packet::Ping.encode_framed(&mut stream);
        for cut1 in 0..stream.len() {
            for cut2 in [
                cut1,
                (cut1 + 1).min(stream.len()),
                (cut1 + 700).min(stream.len()),
            ] {
                let (mut rx, t0) =
                    receiver(&[ChannelDescriptor::new(1), ChannelDescriptor::new(2)]);
                rx.handle_bytes(t0, &stream[..cut1]).unwrap();
                rx.handle_bytes(t0, &stream[cut1..cut2]).unwrap();
                rx.handle_bytes(t0, &stream[cut2..]).unwrap();
                let mut whole = vec![7; 600];
                whole.extend([8; 400]);
                assert_eq!(
                    events(&mut rx),
                    [received(2, b"x"), received(1, &whole), Event::PingReceived],
                    "cuts {cut1} {cut2}"
                );
                assert!(rx.partial.is_empty());
            }
        }
    }

    #[test]
    fn interleaved_channels_reassemble_independently() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1), ChannelDescriptor::new(2)]);
        let mut bytes = msg(1, false, b"a1");
        bytes.extend(msg(2, false, b"b1"));
        bytes.extend(msg(2, true, b"b2"));
        bytes.extend(msg(1, true, b"a2"));
        rx.handle_bytes(t0, &bytes).unwrap();
        assert_eq!(
            events(&mut rx),
            [received(2, b"b1b2"), received(1, b"a1a2")]
        );
    }

    #[test]
    fn ping_flood_folds_into_one_event_until_polled() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            Packet::Ping.encode_framed(&mut bytes);
            Packet::Pong.encode_framed(&mut bytes);
        }
        rx.handle_bytes(t0, &bytes).unwrap();
        assert_eq!(rx.pending_events(), 2);
        assert_eq!(events(&mut rx), [Event::PingReceived, Event::PongReceived]);
        rx.handle_bytes(t0, &bytes[..12]).unwrap();
        assert_eq!(events(&mut rx), [Event::PingReceived]);
    }

    #[test]
    fn empty_message_is_delivered() {
        let (mut rx, t0) = receiver(&[ChannelDescriptor::new(1)]);
        rx.handle_bytes(t0, &msg(1, true, b"")).unwrap();
        assert_eq!(events(&mut rx), [received(1, b"")]);
    }

    #[test]
    fn receive_rate_limit_pauses_reading_until_the_budget_returns() {
        let config = MConnConfig {
            recv_rate: 100_000,
            ..unlimited()
        };
        let (mut rx, t0) = receiver_with(config, &[ChannelDescriptor::new(1)]);
        assert_eq!(rx.recv_ready(t0), Ok(()));
        // Burst 2 × 1056 = 2112 bytes; reading 5066 leaves 2954 bytes of debt, resuming needs
        // 1056 (one largest packet) more: 4010 bytes at 100 kB/s.
        let stream: Vec<u8> = (0..5).flat_map(|_| msg(1, true, &[0; 1010])).collect();
        rx.handle_bytes(t0, &stream[..5066]).unwrap();
        let at = rx.recv_ready(t0).unwrap_err();
        assert_eq!(at, t0 + Duration::from_nanos(40_100_000));
        assert_eq!(rx.recv_ready(at), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let chans = [
                ChannelDescriptor::new(0).with_recv_message_capacity(100),
                ChannelDescriptor::new(1),
                ChannelDescriptor::new(2),
            ];
            let (mut rx, t0) = receiver(&chans);
            for chunk in &chunks {
                if rx.handle_bytes(t0, chunk).is_err() {
                    break;
                }
                prop_assert!(rx.partial.len() <= rx.max_packet_size());
                while rx.poll_event().is_some() {}
            }
        }

        #[test]
        fn random_packet_like_bytes_never_panic(
            pieces in proptest::collection::vec((0u8..4, 0u8..3, proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
        ) {
            // Mostly well-framed packets with random channels and eof bytes, to go deeper
            // than fully random input does.
            let chans = [
                ChannelDescriptor::new(0).with_recv_message_capacity(64),
                ChannelDescriptor::new(1),
            ];
            let (mut rx, t0) = receiver(&chans);
            let mut stream = Vec::new();
            for (channel, eof, data) in &pieces {
                let body = [&[2, *channel, *eof, data.len() as u8][..], data].concat();
                stream.push(body.len() as u8);
                stream.extend(body);
            }
            // The same through both entries: the shared-chunk one must deliver the same events.
            let (mut rx2, _) = receiver(&chans);
            let by_bytes = rx.handle_bytes(t0, &stream);
            let by_chunk = rx2.handle_chunk(t0, &Bytes::from(stream));
            prop_assert_eq!(by_bytes, by_chunk);
            prop_assert_eq!(events(&mut rx), events(&mut rx2));
        }
    }
}
