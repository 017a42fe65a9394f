//! [`MConnConfig`]: per-connection settings, with TM2's node values as defaults, and
//! [`MConnConfigError`], why a config or a channel set is refused.

use std::time::Duration;

/// Largest accepted `max_packet_msg_payload_size`: far above any sane value (TM2 uses 1024),
/// low enough that the receive-side partial-packet buffer stays small.
pub const MAX_PAYLOAD_SIZE_LIMIT: usize = 1 << 20;

/// Settings of one multiplexed connection (TM2's `MConnConfig`, `tm2/pkg/p2p/conn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MConnConfig {
    /// Largest piece of a message carried by one packet; longer messages are split. Both sides
    /// must agree: a receiver refuses packets larger than its own setting allows. Default 1024.
    pub max_packet_msg_payload_size: usize,
    /// How often we ping the peer. Default 60 s.
    pub ping_interval: Duration,
    /// How long after a ping we wait for its pong before giving up on the peer; must be shorter
    /// than `ping_interval`. Default 45 s.
    pub pong_timeout: Duration,
    /// Upper bound on how long written packets may wait before a flush while data keeps
    /// flowing, and the minimum spacing between two pongs (so a ping flood cannot make us flush
    /// more often). Data is flushed as soon as the send queues drain, not after this delay as
    /// TM2 does. Default 100 ms.
    pub flush_throttle: Duration,
    /// Send limit in bytes per second; 0 = unlimited. Default 5 120 000 (TM2's node value).
    pub send_rate: u64,
    /// Receive limit in bytes per second; 0 = unlimited. Default 5 120 000 (TM2's node value).
    pub recv_rate: u64,
    /// How long output may wait with no byte taken by the transport (a write or flush blocked
    /// because the peer stopped reading) before the connection fails with
    /// [`WriteTimeout`](super::MConnectionError::WriteTimeout). TM2 has no such limit (its
    /// writer blocks forever and the pong timer, checked between writes, never fires).
    /// Default 20 s.
    pub write_timeout: Duration,
}

impl From<&crate::config::P2pConfig> for MConnConfig {
    /// The connection settings a node's configuration gives every peer connection.
    fn from(c: &crate::config::P2pConfig) -> Self {
        Self {
            max_packet_msg_payload_size: c.max_packet_msg_payload_size,
            ping_interval: c.ping_interval,
            pong_timeout: c.pong_timeout,
            flush_throttle: c.flush_throttle_timeout,
            send_rate: c.send_rate,
            recv_rate: c.recv_rate,
            write_timeout: c.write_timeout,
        }
    }
}

impl Default for MConnConfig {
    fn default() -> Self {
        Self {
            max_packet_msg_payload_size: 1024,
            ping_interval: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(45),
            flush_throttle: Duration::from_millis(100),
            send_rate: 5_120_000,
            recv_rate: 5_120_000,
            write_timeout: Duration::from_secs(20),
        }
    }
}

impl MConnConfig {
    /// Checks the settings: payload in `1..=MAX_PAYLOAD_SIZE_LIMIT`, non-zero durations, and
    /// `pong_timeout < ping_interval` (TM2 panics on the latter).
    pub fn validate(&self) -> Result<(), MConnConfigError> {
        if self.max_packet_msg_payload_size == 0 {
            return Err(MConnConfigError::ZeroPayloadSize);
        }
        if self.max_packet_msg_payload_size > MAX_PAYLOAD_SIZE_LIMIT {
            return Err(MConnConfigError::PayloadSizeTooLarge {
                size: self.max_packet_msg_payload_size,
                max: MAX_PAYLOAD_SIZE_LIMIT,
            });
        }
        for (field, value) in [
            ("pong_timeout", self.pong_timeout),
            ("flush_throttle", self.flush_throttle),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return Err(MConnConfigError::ZeroDuration(field));
            }
        }
        if self.pong_timeout >= self.ping_interval {
            return Err(MConnConfigError::PongTimeoutNotBelowPingInterval {
                pong_timeout: self.pong_timeout,
                ping_interval: self.ping_interval,
            });
        }
        Ok(())
    }
}

/// Why a connection cannot be built from a config and a channel set. Always a local fault
/// (configuration or reactor registration), never the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MConnConfigError {
    /// `max_packet_msg_payload_size` is 0 (TM2 accepts it, then spins sending empty packets).
    #[error("max_packet_msg_payload_size must be > 0")]
    ZeroPayloadSize,
    /// `max_packet_msg_payload_size` is above [`MAX_PAYLOAD_SIZE_LIMIT`].
    #[error("max_packet_msg_payload_size {size} exceeds {max}")]
    PayloadSizeTooLarge {
        /// The configured size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A duration that must be positive is zero; names the field.
    #[error("{0} must be > 0")]
    ZeroDuration(&'static str),
    /// `pong_timeout` is not shorter than `ping_interval`, so a ping could be sent before the
    /// previous one timed out.
    #[error("pong_timeout {pong_timeout:?} must be shorter than ping_interval {ping_interval:?}")]
    PongTimeoutNotBelowPingInterval {
        /// The configured pong timeout.
        pong_timeout: Duration,
        /// The configured ping interval.
        ping_interval: Duration,
    },
    /// More channels than [`MAX_CHANNELS`](super::MAX_CHANNELS).
    #[error("{count} channels exceed the maximum of {max}")]
    TooManyChannels {
        /// How many descriptors were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// Two descriptors share this channel id.
    #[error("channel {0:#04x} is declared twice")]
    DuplicateChannel(u8),
    /// This channel's priority is 0 (TM2 panics).
    #[error("channel {0:#04x} has priority 0")]
    ZeroPriority(u8),
    /// A capacity of this channel is 0; names the field.
    #[error("channel {channel:#04x} has {field} 0")]
    ZeroCapacity {
        /// The channel id.
        channel: u8,
        /// The zero field.
        field: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_payload_size_is_refused() {
        let c = MConnConfig {
            max_packet_msg_payload_size: 0,
            ..MConnConfig::default()
        };
        assert_eq!(c.validate(), Err(MConnConfigError::ZeroPayloadSize));
    }

    #[test]
    fn huge_payload_size_is_refused() {
        let c = MConnConfig {
            max_packet_msg_payload_size: MAX_PAYLOAD_SIZE_LIMIT + 1,
            ..MConnConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(MConnConfigError::PayloadSizeTooLarge { .. })
        ));
    }

    #[test]
    fn pong_timeout_must_be_below_ping_interval() {
        let c = MConnConfig {
            pong_timeout: Duration::from_secs(60),
            ..MConnConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(MConnConfigError::PongTimeoutNotBelowPingInterval { .. })
        ));
    }

    #[test]
    fn zero_durations_are_refused_naming_the_field() {
        let c = MConnConfig {
            flush_throttle: Duration::ZERO,
            ..MConnConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(MConnConfigError::ZeroDuration("flush_throttle"))
        );
        let c = MConnConfig {
            pong_timeout: Duration::ZERO,
            ..MConnConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(MConnConfigError::ZeroDuration("pong_timeout"))
        );
        let c = MConnConfig {
            write_timeout: Duration::ZERO,
            ..MConnConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(MConnConfigError::ZeroDuration("write_timeout"))
        );
    }

    #[test]
    fn defaults_are_tm2_node_values_and_valid() {
        let c = MConnConfig::default();
        assert_eq!(c.max_packet_msg_payload_size, 1024);
        assert_eq!(c.ping_interval, Duration::from_secs(60));
        assert_eq!(c.pong_timeout, Duration::from_secs(45));
        assert_eq!(c.flush_throttle, Duration::from_millis(100));
        assert_eq!((c.send_rate, c.recv_rate), (5_120_000, 5_120_000));
        assert_eq!(c.write_timeout, Duration::from_secs(20));
        assert_eq!(c.validate(), Ok(()));
    }
}
