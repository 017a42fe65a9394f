//! The peer-exchange wire messages ([`PexMessage`]) and the per-peer request rate limit
//! ([`RequestLimiter`]).
//!
//! Encoding: TM2's discovery messages, amino Anys ([`crate::codec::amino`]), each sent as one
//! whole mconn message on channel `0x50`:
//!
//! ```text
//! Request  = 0a 0c "/p2p.Request"
//! Response = 0a 0d "/p2p.Response" 12 uvarint(len(peers)) peers
//! peers    = (0a uvarint(len(addr)) addr)*       each addr "id@ip:port"
//! ```
//!
//! Decoding differs from TM2 (`tm2/pkg/p2p/discovery`) on purpose:
//! - a response of more than [`MAX_ADDRESSES`] entries (or the caller's limit) is refused with
//!   [`PexError::TooManyAddresses`] (TM2 has no bound below the 5 MiB channel cap), counted
//!   before any entry is parsed;
//! - bad entries are skipped one by one and counted ([`Decoded::skipped`]), where TM2 drops the
//!   whole response for one bad address: an entry is bad when it does not parse, fails
//!   [`NetAddress::validate`], or repeats an id already in the response;
//! - a response with zero good entries (including an empty one, which gno refuses as
//!   `errNoPeers`) decodes to an empty `Response`: the peer answered but knows no one we can
//!   use. We never *send* an empty response: gno would log it as an error.
//!
//! The message framing itself is canonical as everywhere on the wire: the Any must be
//! exactly gno's encoding (no explicit empty value, no unknown fields, fields in order).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::codec::amino::{self, AminoError, Fields};
use crate::config::P2pConfig;
use crate::types::{NetAddress, PeerId};

/// Type URL of [`PexMessage::Request`].
pub const REQUEST_TYPE: &str = "/p2p.Request";
/// Type URL of [`PexMessage::Response`].
pub const RESPONSE_TYPE: &str = "/p2p.Response";

/// The most addresses a response may carry (TM2's `maxPeersShared`, the default of
/// `max_pex_addresses`).
pub const MAX_ADDRESSES: usize = 30;

/// The longest address entry counted when bounding a message's size: a 40-char id, `@`, a
/// 253-char DNS name, `:` and a 5-digit port, rounded up, plus its key and length prefix.
pub const MAX_ADDRESS_LEN: usize = 320;

/// A peer-exchange message, sent as one whole mconn message on channel `0x50`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexMessage {
    /// "Send me addresses you know."
    Request,
    /// The answer: addresses the sender considers good (see the module docs for how bad
    /// entries are treated on decoding).
    Response(Vec<NetAddress>),
}

/// A decoded message and how many response entries were skipped as bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The message, with only good addresses in a `Response`.
    pub message: PexMessage,
    /// How many response entries were dropped (unparseable, invalid or a repeated id); 0 for
    /// a `Request`.
    pub skipped: usize,
}

/// Why a peer-exchange message could not be decoded. Every variant is the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    /// The message is longer than the receiver accepts; nothing was decoded.
    #[error("pex message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a canonical amino peer-exchange message (another type than
    /// `/p2p.Request` or `/p2p.Response` included).
    #[error("undecodable pex message: {0}")]
    Decode(#[from] AminoError),
    /// A response carries more entries than allowed.
    #[error("pex response with {count} addresses, more than the limit of {max}")]
    TooManyAddresses {
        /// Entries in the response (good and bad) counted so far.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl PexMessage {
    /// Encodes the message (TM2's amino Any). Empty responses encode too (gno's own code writes
    /// them that way), but a node should send none: gno refuses them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Request => amino::put_any(&mut out, REQUEST_TYPE, &[]),
            Self::Response(addrs) => {
                let mut peers = Vec::with_capacity(addrs.len() * 64);
                for addr in addrs {
                    amino::put_element(&mut peers, 1, addr.to_string().as_bytes());
                }
                amino::put_any(&mut out, RESPONSE_TYPE, &peers);
            }
        }
        out
    }
}

/// The largest encoded message accepted when responses may carry `max_addresses` entries.
pub const fn max_message_len(max_addresses: usize) -> usize {
    // The Any's type URL field (15 bytes) and value header (at most 1 + 10 bytes), then the
    // entries.
    26 + max_addresses.saturating_mul(MAX_ADDRESS_LEN)
}

/// Decodes a message, accepting responses of at most [`MAX_ADDRESSES`] entries.
pub fn decode(bytes: &[u8]) -> Result<Decoded, PexError> {
    decode_with_limit(bytes, MAX_ADDRESSES)
}

/// Decodes a message, accepting responses of at most `max_addresses` entries (the config's
/// `max_pex_addresses`). Input longer than [`max_message_len`]`(max_addresses)` is refused
/// before decoding.
pub fn decode_with_limit(bytes: &[u8], max_addresses: usize) -> Result<Decoded, PexError> {
    let max = max_message_len(max_addresses);
    if bytes.len() > max {
        return Err(PexError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (type_url, value) = amino::decode_any(bytes)?;
    match type_url {
        b"/p2p.Request" if value.is_empty() => Ok(Decoded {
            message: PexMessage::Request,
            skipped: 0,
        }),
        b"/p2p.Request" => Err(amino::unexpected_value(value).into()),
        b"/p2p.Response" => decode_response(value, max_addresses),
        other => Err(amino::unexpected_type(other).into()),
    }
}

/// Decodes the value of a Response: field 1, repeated address strings.
fn decode_response(value: &[u8], max_addresses: usize) -> Result<Decoded, PexError> {
    // Count and check the framing first, so nothing is parsed or allocated for a message that
    // is refused.
    let mut entries = Vec::new();
    let mut fields = Fields::new(value);
    while let Some(field) = fields.next()? {
        if field.number != 1 {
            return Err(PexError::Decode(field.unknown()));
        }
        let entry = field.bytes()?;
        if entries.len() == max_addresses {
            return Err(PexError::TooManyAddresses {
                count: max_addresses + 1,
                max: max_addresses,
            });
        }
        entries.push(entry);
    }
    let count = entries.len();
    let mut seen = HashSet::with_capacity(count);
    let addrs: Vec<NetAddress> = entries
        .into_iter()
        .filter_map(|e| NetAddress::parse_shared(std::str::from_utf8(e).ok()?).ok())
        .filter(|a| a.validate().is_ok())
        .filter(|a| seen.insert(a.id()))
        .collect();
    Ok(Decoded {
        skipped: count - addrs.len(),
        message: PexMessage::Response(addrs),
    })
}

/// TM2's discovery interval (`discoveryInterval`, `p2p/discovery`): a gno.land node asks one
/// random peer this often.
pub const TM2_DISCOVERY_INTERVAL: Duration = Duration::from_secs(3);

/// How many requests in a row, each too early, make a peer a flooder (see [`RequestLimiter`]).
pub const FLOOD_AFTER_EARLY_REQUESTS: u32 = 10;

/// What to do with an incoming `Request` ([`RequestLimiter::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Answer it.
    Answer,
    /// Too soon after the last answered request: ignore it (no answer, no blame).
    Ignore,
    /// The peer keeps asking far too often: stop it for misbehaving.
    Flood,
}

/// Per-peer rate limit on incoming `Request`s: a peer is answered at most once per
/// `min_interval`; requests in between are ignored; [`FLOOD_AFTER_EARLY_REQUESTS`] ignored
/// requests in a row (none answered in between) make it a flooder.
///
/// The default interval ([`from_config`](Self::from_config)) is half of the shorter of our
/// `pex_interval` and TM2's [`TM2_DISCOVERY_INTERVAL`]: an honest peer asks one random peer
/// per interval, so any one peer at most that often, and half of it leaves room for timer
/// skew. The peer's interval is its own, not ours: a gno.land node asks every 3 s whatever we
/// configured, and a peer with a shorter interval than we allow is only ignored now and then,
/// never stopped (TM2 does not limit requests at all). A peer's first request is always
/// answered.
///
/// Memory is bounded by `capacity` tracked peers. When full, entries whose interval has passed
/// are dropped first (they no longer restrict anything), then the one with the oldest request.
/// The driver should call [`remove`](Self::remove) when a peer disconnects.
#[derive(Debug, Clone)]
pub struct RequestLimiter {
    min_interval: Duration,
    capacity: usize,
    /// Per peer: the last answered request and how many were ignored since.
    last: HashMap<PeerId, (Instant, u32)>,
}

impl RequestLimiter {
    /// A limiter answering one request per `min_interval` per peer, tracking at most
    /// `capacity` peers (at least 1).
    pub fn new(min_interval: Duration, capacity: usize) -> Self {
        Self {
            min_interval,
            capacity: capacity.max(1),
            last: HashMap::new(),
        }
    }

    /// One request per `min(pex_interval, TM2_DISCOVERY_INTERVAL) / 2`, tracking as many peers
    /// as may be connected (`max_num_inbound_peers + max_num_outbound_peers`).
    pub fn from_config(config: &P2pConfig) -> Self {
        Self::new(
            config.pex_interval.min(TM2_DISCOVERY_INTERVAL) / 2,
            config
                .max_num_inbound_peers
                .saturating_add(config.max_num_outbound_peers),
        )
    }

    /// The minimum interval between two answered requests from one peer.
    pub const fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Records a request from `peer` at `now` and says what to do with it: answer it, ignore
    /// it (less than `min_interval` after the peer's last *answered* request; an ignored
    /// request does not restart the interval), or stop the peer (the
    /// [`FLOOD_AFTER_EARLY_REQUESTS`]th ignored request in a row).
    pub fn check(&mut self, peer: PeerId, now: Instant) -> RequestVerdict {
        if let Some((last, ignored)) = self.last.get_mut(&peer) {
            if now.saturating_duration_since(*last) < self.min_interval {
                *ignored += 1;
                return if *ignored >= FLOOD_AFTER_EARLY_REQUESTS {
                    RequestVerdict::Flood
                } else {
                    RequestVerdict::Ignore
                };
            }
        } else if self.last.len() >= self.capacity {
            self.make_room(now);
        }
        self.last.insert(peer, (now, 0));
        RequestVerdict::Answer
    }

    /// Forgets `peer` (call when it disconnects).
    pub fn remove(&mut self, peer: &PeerId) {
        self.last.remove(peer);
    }

    /// How many peers are tracked.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        let min = self.min_interval;
        self.last
            .retain(|_, (last, _)| now.saturating_duration_since(*last) < min);
        if self.last.len() >= self.capacity {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(id, (last, _))| (*last, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.last.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::base;
    use proptest::prelude::*;

    pub(crate) fn peer(n: u8) -> PeerId {
        PeerId::from_public_key(&[n; 32])
    }

    fn addr(n: u8, host_port: &str) -> NetAddress {
        format!("{}@{host_port}", peer(n)).parse().unwrap()
    }

    fn wire_response(entries: &[String]) -> Vec<u8> {
        let mut peers = Vec::new();
        for e in entries {
            amino::put_element(&mut peers, 1, e.as_bytes());
        }
        let mut out = Vec::new();
        amino::put_any(&mut out, RESPONSE_TYPE, &peers);
        out
    }

    #[test]
    fn request_round_trips() {
        let bytes = PexMessage::Request.encode();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, PexMessage::Request);
        assert_eq!(d.skipped, 0);
    }

    #[test]
    fn wire_bytes_are_pinned() {
        assert_eq!(
            hex::encode(PexMessage::Request.encode()),
            "0a0c2f7032702e52657175657374"
        );
        assert_eq!(
            hex::encode(PexMessage::Response(vec![]).encode()),
            "0a0d2f7032702e526573706f6e7365"
        );
        let a = addr(1, "1.2.3.4:5");
        let s = a.to_string();
        let mut expected = b"\x0a\x0d/p2p.Response\x12".to_vec();
        expected.push(u8::try_from(s.len() + 2).unwrap());
        expected.extend_from_slice(&[0x0a, u8::try_from(s.len()).unwrap()]);
        expected.extend_from_slice(s.as_bytes());
        assert_eq!(PexMessage::Response(vec![a]).encode(), expected);
    }

    #[test]
    fn response_round_trips() {
        let addrs = vec![addr(1, "1.2.3.4:26656"), addr(2, "example.com:1")];
        let bytes = PexMessage::Response(addrs.clone()).encode();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, PexMessage::Response(addrs));
        assert_eq!(d.skipped, 0);
    }

    #[test]
    fn bad_entries_are_skipped_one_by_one() {
        let entries = vec![
            addr(1, "1.2.3.4:26656").to_string(),
            "garbage".to_owned(),
            format!("{}@0.0.0.0:26656", peer(2)), // fails validate()
            format!("{}@255.255.255.255:1", peer(3)), // fails validate()
            addr(4, "10.0.0.1:26656").to_string(),
            addr(1, "5.6.7.8:26656").to_string(), // repeated id
            format!("{}@1.2.3.4:0", peer(5)),     // port 0
            String::new(),                        // empty
            addr(6, "1.2.3.4:26656").to_string().to_uppercase(), // not how TM2 writes ids
        ];
        let d = decode(&wire_response(&entries)).unwrap();
        assert_eq!(
            d.message,
            PexMessage::Response(vec![addr(1, "1.2.3.4:26656"), addr(4, "10.0.0.1:26656")])
        );
        assert_eq!(d.skipped, 7);
        // An entry that is not UTF-8 is one bad entry too.
        let mut peers = Vec::new();
        amino::put_element(&mut peers, 1, &[0xff, 0xfe]);
        amino::put_element(&mut peers, 1, addr(7, "1.2.3.4:1").to_string().as_bytes());
        let mut bytes = Vec::new();
        amino::put_any(&mut bytes, RESPONSE_TYPE, &peers);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, PexMessage::Response(vec![addr(7, "1.2.3.4:1")]));
        assert_eq!(d.skipped, 1);
    }

    #[test]
    fn zero_good_entries_is_an_empty_response() {
        let d = decode(&wire_response(&["x".to_owned()])).unwrap();
        assert_eq!(d.message, PexMessage::Response(vec![]));
        assert_eq!(d.skipped, 1);
        let d = decode(&wire_response(&[])).unwrap();
        assert_eq!(d.message, PexMessage::Response(vec![]));
        assert_eq!(d.skipped, 0);
    }

    #[test]
    fn thirty_entries_pass_and_thirty_one_are_refused() {
        let ok: Vec<String> = (0..30).map(|i| addr(i, "1.2.3.4:1").to_string()).collect();
        let d = decode(&wire_response(&ok)).unwrap();
        assert!(matches!(d.message, PexMessage::Response(ref a) if a.len() == 30));
        let too_many: Vec<String> = (0..31).map(|i| addr(i, "1.2.3.4:1").to_string()).collect();
        assert!(matches!(
            decode(&wire_response(&too_many)),
            Err(PexError::TooManyAddresses { count: 31, max: 30 })
        ));
        // Bad entries count towards the limit too.
        let junk = vec!["x".to_owned(); 31];
        assert!(matches!(
            decode(&wire_response(&junk)),
            Err(PexError::TooManyAddresses { count: 31, .. })
        ));
        // The caller's limit.
        assert!(matches!(
            decode_with_limit(&wire_response(&ok[..4]), 3),
            Err(PexError::TooManyAddresses { count: 4, max: 3 })
        ));
        assert!(decode_with_limit(&wire_response(&ok[..3]), 3).is_ok());
    }

    #[test]
    fn other_types_and_malformed_messages_are_refused() {
        for (bytes, why) in [
            (&b"\x0a\x0c/p2p.Request\x12\x00"[..], "explicit empty value"),
            (
                b"\x0a\x0c/p2p.Request\x12\x02\x08\x01",
                "a value for Request",
            ),
            (b"\x0a\x08/p2p.Msg", "a packet type"),
            (
                b"\x0a\x0d/p2p.Response\x12\x02\x10\x01",
                "unknown response field",
            ),
            (
                b"\x0a\x0d/p2p.Response\x12\x02\x08\x01",
                "entry as a varint",
            ),
            (b"\x12\x00", "no type"),
            (b"", "empty"),
        ] {
            assert!(decode(bytes).is_err(), "{why}");
        }
        assert!(matches!(
            decode(b"\x0a\x08/p2p.Msg"),
            Err(PexError::Decode(AminoError::UnexpectedType(t))) if t == "/p2p.Msg"
        ));
    }

    #[test]
    fn oversized_and_trailing_input_is_refused() {
        let big = vec![0u8; max_message_len(MAX_ADDRESSES) + 1];
        assert!(matches!(decode(&big), Err(PexError::TooLarge { .. })));
        let mut bytes = PexMessage::Request.encode();
        bytes.push(0);
        assert!(decode(&bytes).is_err());
        // The largest legal response fits the limit.
        let longest = format!("{}@{}.example:65535", peer(1), "a".repeat(240));
        let entries: Vec<String> = (0..MAX_ADDRESSES).map(|_| longest.clone()).collect();
        assert!(wire_response(&entries).len() <= max_message_len(MAX_ADDRESSES));
    }

    #[test]
    fn limiter_answers_one_request_per_interval() {
        use RequestVerdict::{Answer, Ignore};
        let t0 = base();
        let ms = Duration::from_millis;
        let mut l = RequestLimiter::new(ms(1500), 10);
        assert_eq!(l.check(peer(1), t0), Answer);
        assert_eq!(l.check(peer(1), t0 + ms(1000)), Ignore);
        assert_eq!(l.check(peer(2), t0 + ms(1000)), Answer);
        // An ignored request does not restart the interval.
        assert_eq!(l.check(peer(1), t0 + ms(1500)), Answer);
        assert_eq!(l.check(peer(1), t0 + ms(2999)), Ignore);
        assert_eq!(l.check(peer(1), t0 + ms(3000)), Answer);
        l.remove(&peer(1));
        assert_eq!(l.check(peer(1), t0 + ms(3001)), Answer);
    }

    #[test]
    fn a_faster_honest_asker_is_ignored_now_and_then_never_stopped() {
        // A peer asking every second, against a limit of 1.5 s: every other request answered.
        let t0 = base();
        let mut l = RequestLimiter::new(Duration::from_millis(1500), 10);
        let verdicts: Vec<RequestVerdict> = (0..100)
            .map(|i| l.check(peer(1), t0 + Duration::from_secs(i)))
            .collect();
        assert!(!verdicts.contains(&RequestVerdict::Flood));
        let answered = verdicts.iter().filter(|v| **v == RequestVerdict::Answer);
        assert_eq!(answered.count(), 50);
    }

    #[test]
    fn a_burst_of_early_requests_is_a_flood() {
        let t0 = base();
        let mut l = RequestLimiter::new(Duration::from_secs(1), 10);
        assert_eq!(l.check(peer(1), t0), RequestVerdict::Answer);
        for _ in 1..FLOOD_AFTER_EARLY_REQUESTS {
            assert_eq!(l.check(peer(1), t0), RequestVerdict::Ignore);
        }
        assert_eq!(l.check(peer(1), t0), RequestVerdict::Flood);
    }

    #[test]
    fn limiter_default_is_half_the_shorter_of_ours_and_tm2s_interval() {
        let l = RequestLimiter::from_config(&P2pConfig::default());
        assert_eq!(l.min_interval(), Duration::from_millis(1500));
        let slow = P2pConfig {
            pex_interval: Duration::from_secs(30),
            ..P2pConfig::default()
        };
        // A gno.land node still asks every 3 s: it must not be refused as too frequent.
        assert_eq!(
            RequestLimiter::from_config(&slow).min_interval(),
            TM2_DISCOVERY_INTERVAL / 2
        );
        let fast = P2pConfig {
            pex_interval: Duration::from_millis(200),
            ..P2pConfig::default()
        };
        assert_eq!(
            RequestLimiter::from_config(&fast).min_interval(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let t0 = base();
        let mut l = RequestLimiter::new(Duration::from_secs(10), 3);
        let at = |s| t0 + Duration::from_secs(s);
        for i in 0..3 {
            assert_eq!(l.check(peer(i), at(u64::from(i))), RequestVerdict::Answer);
        }
        // Full, nobody expired: the oldest (peer 0) is dropped.
        assert_eq!(l.check(peer(3), at(3)), RequestVerdict::Answer);
        assert_eq!(l.len(), 3);
        assert_eq!(l.check(peer(1), at(4)), RequestVerdict::Ignore);
        // Expired entries go first.
        assert_eq!(l.check(peer(4), at(12)), RequestVerdict::Answer);
        assert!(l.len() <= 3);
        assert_eq!(l.check(peer(4), at(13)), RequestVerdict::Ignore);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
            let _ = decode_with_limit(&bytes, 3);
        }

        #[test]
        fn response_prefix_with_random_tail_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut bytes = b"\x0a\x0d/p2p.Response\x12".to_vec();
            bytes.extend(tail);
            if let Ok(d) = decode(&bytes)
                && let PexMessage::Response(a) = d.message {
                    prop_assert!(a.len() <= MAX_ADDRESSES);
                }
        }
    }
}
