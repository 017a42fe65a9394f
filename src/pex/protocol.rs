//! The peer-exchange wire messages ([`PexMessage`]) and the per-peer request rate limit
//! ([`RequestLimiter`]).
//!
//! Encoding: the project codec ([`crate::codec`]) of
//! `enum { Request, Response(Vec<String>) }`, each address as its `id@host:port` string
//! (docs/PROTOCOL.md). Decoding differs from TM2 on purpose (reference section 10, item 2):
//! - a response of more than [`MAX_ADDRESSES`] entries (or the caller's limit) is refused with
//!   [`PexError::TooManyAddresses`] (TM2 has no bound below the 5 MiB channel cap);
//! - bad entries are skipped one by one and counted ([`Decoded::skipped`]), where TM2 drops the
//!   whole response for one bad address: an entry is bad when it does not parse, fails
//!   [`NetAddress::validate`], or repeats an id already in the response;
//! - a response with zero good entries (including an empty one) decodes to an empty
//!   `Response`: the peer answered but knows no one we can use. TM2 refuses an empty response
//!   (`errNoPeers`); here it is not a protocol error, so the asker simply treats the request as
//!   answered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::config::P2pConfig;
use crate::types::{NetAddress, PeerId};

/// The most addresses a response may carry (TM2's `maxPeersShared`, the default of
/// `max_pex_addresses`).
pub const MAX_ADDRESSES: usize = 30;

/// The longest address string counted per entry when bounding a message's size: a 40-char id,
/// `@`, a 253-char DNS name, `:` and a 5-digit port, rounded up, plus its length prefix.
pub const MAX_ADDRESS_LEN: usize = 320;

/// A peer-exchange message, sent as one whole mconn message on channel `0x50`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PexMessage {
    /// "Send me addresses you know."
    Request,
    /// The answer: addresses the sender considers good (see the module docs for how bad
    /// entries are treated on decoding).
    Response(Vec<NetAddress>),
}

/// The decoding form: addresses as plain strings, so that one bad entry does not fail the
/// message. Same bytes as [`PexMessage`] (a `NetAddress` serializes as its string).
#[derive(Deserialize)]
enum WireMessage {
    Request,
    Response(Vec<String>),
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
#[derive(Debug, thiserror::Error)]
pub enum PexError {
    /// The bytes are not a peer-exchange message (or are longer than the size limit).
    #[error("undecodable pex message: {0}")]
    Decode(#[from] DecodeError),
    /// A response carries more entries than allowed.
    #[error("pex response with {count} addresses, more than the limit of {max}")]
    TooManyAddresses {
        /// Entries in the response (good and bad).
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl PexMessage {
    /// Encodes the message with the project codec.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }
}

/// The largest encoded message accepted when responses may carry `max_addresses` entries.
pub const fn max_message_len(max_addresses: usize) -> usize {
    // Variant tag and vector length prefix (each at most a 9-byte varint), then the entries.
    18 + max_addresses.saturating_mul(MAX_ADDRESS_LEN)
}

/// Decodes a message, accepting responses of at most [`MAX_ADDRESSES`] entries.
pub fn decode(bytes: &[u8]) -> Result<Decoded, PexError> {
    decode_with_limit(bytes, MAX_ADDRESSES)
}

/// Decodes a message, accepting responses of at most `max_addresses` entries (the config's
/// `max_pex_addresses`). Input longer than [`max_message_len`]`(max_addresses)` is refused
/// before decoding.
pub fn decode_with_limit(bytes: &[u8], max_addresses: usize) -> Result<Decoded, PexError> {
    let wire: WireMessage = codec::decode(bytes, max_message_len(max_addresses))?;
    match wire {
        WireMessage::Request => Ok(Decoded {
            message: PexMessage::Request,
            skipped: 0,
        }),
        WireMessage::Response(entries) => {
            if entries.len() > max_addresses {
                return Err(PexError::TooManyAddresses {
                    count: entries.len(),
                    max: max_addresses,
                });
            }
            let count = entries.len();
            let mut seen = HashSet::with_capacity(count);
            let addrs: Vec<NetAddress> = entries
                .iter()
                .filter_map(|s| s.parse::<NetAddress>().ok())
                .filter(|a| a.validate().is_ok())
                .filter(|a| seen.insert(a.id()))
                .collect();
            Ok(Decoded {
                skipped: count - addrs.len(),
                message: PexMessage::Response(addrs),
            })
        }
    }
}

/// Per-peer rate limit on incoming `Request`s: a peer may ask at most once per `min_interval`.
///
/// The default interval ([`from_config`](Self::from_config)) is `pex_interval / 2`: we ask one
/// random peer per `pex_interval`, so an honest peer running the same config asks any one
/// peer at most that often; half of it leaves room for timer skew. A peer's first request is
/// always allowed.
///
/// Memory is bounded by `capacity` tracked peers. When full, entries whose interval has passed
/// are dropped first (they no longer restrict anything), then the one with the oldest request.
/// The driver should call [`remove`](Self::remove) when a peer disconnects.
#[derive(Debug, Clone)]
pub struct RequestLimiter {
    min_interval: Duration,
    capacity: usize,
    last: HashMap<PeerId, Instant>,
}

impl RequestLimiter {
    /// A limiter allowing one request per `min_interval` per peer, tracking at most `capacity`
    /// peers (at least 1).
    pub fn new(min_interval: Duration, capacity: usize) -> Self {
        Self {
            min_interval,
            capacity: capacity.max(1),
            last: HashMap::new(),
        }
    }

    /// One request per `pex_interval / 2`, tracking as many peers as may be connected
    /// (`max_num_inbound_peers + max_num_outbound_peers`).
    pub fn from_config(config: &P2pConfig) -> Self {
        Self::new(
            config.pex_interval / 2,
            config
                .max_num_inbound_peers
                .saturating_add(config.max_num_outbound_peers),
        )
    }

    /// The minimum interval between two allowed requests from one peer.
    pub const fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Records a request from `peer` at `now`: true when allowed, false when it came less than
    /// `min_interval` after the peer's last *allowed* request (a refused request does not
    /// restart the interval).
    pub fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        if let Some(&last) = self.last.get(&peer) {
            if now.saturating_duration_since(last) < self.min_interval {
                return false;
            }
        } else if self.last.len() >= self.capacity {
            self.make_room(now);
        }
        self.last.insert(peer, now);
        true
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
            .retain(|_, last| now.saturating_duration_since(*last) < min);
        if self.last.len() >= self.capacity {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(id, last)| (**last, **id))
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
        #[derive(Serialize)]
        enum W<'a> {
            #[allow(dead_code)]
            Request,
            Response(&'a [String]),
        }
        codec::encode(&W::Response(entries)).unwrap()
    }

    #[test]
    fn request_round_trips() {
        let bytes = PexMessage::Request.encode().unwrap();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, PexMessage::Request);
        assert_eq!(d.skipped, 0);
    }

    #[test]
    fn wire_bytes_are_pinned() {
        // Variant index as a varint, then a varint count and length-prefixed UTF-8 strings.
        assert_eq!(PexMessage::Request.encode().unwrap(), [0]);
        assert_eq!(PexMessage::Response(vec![]).encode().unwrap(), [1, 0]);
        let a = addr(1, "1.2.3.4:5");
        let s = a.to_string();
        let mut expected = vec![1, 1, u8::try_from(s.len()).unwrap()];
        expected.extend_from_slice(s.as_bytes());
        assert_eq!(PexMessage::Response(vec![a]).encode().unwrap(), expected);
    }

    #[test]
    fn response_round_trips() {
        let addrs = vec![addr(1, "1.2.3.4:26656"), addr(2, "example.com:1")];
        let bytes = PexMessage::Response(addrs.clone()).encode().unwrap();
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
        ];
        let d = decode(&wire_response(&entries)).unwrap();
        assert_eq!(
            d.message,
            PexMessage::Response(vec![addr(1, "1.2.3.4:26656"), addr(4, "10.0.0.1:26656")])
        );
        assert_eq!(d.skipped, 5);
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
    }

    #[test]
    fn oversized_and_trailing_input_is_refused() {
        let big = vec![0u8; max_message_len(MAX_ADDRESSES) + 1];
        assert!(matches!(
            decode(&big),
            Err(PexError::Decode(DecodeError::TooLarge { .. }))
        ));
        let mut bytes = PexMessage::Request.encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            decode(&bytes),
            Err(PexError::Decode(DecodeError::TrailingBytes { extra: 1 }))
        ));
    }

    #[test]
    fn limiter_allows_one_request_per_interval() {
        let t0 = base();
        let mut l = RequestLimiter::new(Duration::from_millis(1500), 10);
        assert!(l.allow(peer(1), t0));
        assert!(!l.allow(peer(1), t0 + Duration::from_millis(1000)));
        assert!(l.allow(peer(2), t0 + Duration::from_millis(1000)));
        // A refused request does not restart the interval.
        assert!(l.allow(peer(1), t0 + Duration::from_millis(1500)));
        assert!(!l.allow(peer(1), t0 + Duration::from_millis(2999)));
        assert!(l.allow(peer(1), t0 + Duration::from_millis(3000)));
        l.remove(&peer(1));
        assert!(l.allow(peer(1), t0 + Duration::from_millis(3001)));
    }

    #[test]
    fn limiter_default_is_half_the_pex_interval() {
        let l = RequestLimiter::from_config(&P2pConfig::default());
        assert_eq!(l.min_interval(), P2pConfig::default().pex_interval / 2);
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let t0 = base();
        let mut l = RequestLimiter::new(Duration::from_secs(10), 3);
        for i in 0..3 {
            assert!(l.allow(peer(i), t0 + Duration::from_secs(u64::from(i))));
        }
        // Full, nobody expired: the oldest (peer 0) is dropped.
        assert!(l.allow(peer(3), t0 + Duration::from_secs(3)));
        assert_eq!(l.len(), 3);
        assert!(!l.allow(peer(1), t0 + Duration::from_secs(4)));
        // Expired entries go first.
        assert!(l.allow(peer(4), t0 + Duration::from_secs(12)));
        assert!(l.len() <= 3);
        assert!(!l.allow(peer(4), t0 + Duration::from_secs(13)));
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
            let mut bytes = vec![1u8];
            bytes.extend(tail);
            if let Ok(d) = decode(&bytes)
                && let PexMessage::Response(a) = d.message {
                    prop_assert!(a.len() <= MAX_ADDRESSES);
                }
        }
    }
}
