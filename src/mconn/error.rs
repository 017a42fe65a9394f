//! [`MConnectionError`]: why a running connection must be closed.

use super::packet::DecodeError;

/// Why a running connection must be closed. Once a method returned one, the connection is
/// finished: the receiver keeps answering with the same error, and the driver should close the
/// socket and report the reason once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MConnectionError {
    /// The peer sent a packet on a channel this connection does not have (TM2:
    /// "unknown channel").
    #[error("packet on unknown channel {0:#04x}")]
    UnknownChannel(u8),
    /// The message being reassembled on `channel` would exceed the channel's
    /// `recv_message_capacity`; detected before the buffer grows past the limit (TM2:
    /// "received message exceeds available capacity").
    #[error("message on channel {channel:#04x} reached {len} bytes, over the limit of {max}")]
    MessageTooLarge {
        /// The channel id.
        channel: u8,
        /// Bytes the message would have had with the offending packet.
        len: usize,
        /// The channel's `recv_message_capacity`.
        max: usize,
    },
    /// No pong arrived within `pong_timeout` of our ping (TM2: "pong timeout").
    #[error("no pong within the pong timeout")]
    PongTimeout,
    /// Our output waited `timeout` (the config's `write_timeout`) without the transport
    /// taking a byte: the peer stopped reading (a slow or hostile reader), and everything
    /// queued for it would stay pinned in memory.
    #[error("no write progress for {timeout:?}: the peer does not read")]
    WriteTimeout {
        /// The configured `write_timeout`.
        timeout: std::time::Duration,
    },
    /// The peer's bytes are not a valid packet (oversized, unknown type, malformed).
    #[error("invalid packet: {0}")]
    Decode(#[from] DecodeError),
}

impl MConnectionError {
    /// Whether the peer broke the protocol (so its address deserves a bad mark), as opposed
    /// to a silence that a slow or partitioned but honest peer can cause ([`PongTimeout`],
    /// [`WriteTimeout`]).
    ///
    /// [`PongTimeout`]: Self::PongTimeout
    /// [`WriteTimeout`]: Self::WriteTimeout
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::UnknownChannel(_) | Self::MessageTooLarge { .. } | Self::Decode(_) => true,
            Self::PongTimeout | Self::WriteTimeout { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_violations_are_peer_faults_and_silence_is_not() {
        assert!(MConnectionError::UnknownChannel(1).is_peer_fault());
        assert!(
            MConnectionError::MessageTooLarge {
                channel: 1,
                len: 2,
                max: 1
            }
            .is_peer_fault()
        );
        assert!(MConnectionError::Decode(DecodeError::InvalidEof(2)).is_peer_fault());
        assert!(!MConnectionError::PongTimeout.is_peer_fault());
        let timeout = std::time::Duration::from_secs(1);
        assert!(!MConnectionError::WriteTimeout { timeout }.is_peer_fault());
    }
}
