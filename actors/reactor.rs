//! What a reactor sees of the network: [`PeerAdded`] (a peer joined, with a [`PeerInfo`] to
//! talk to it), [`Receive`] (a whole message from a peer), [`PeerRemoved`] (it left) and
//! [`DisconnectReason`] (why a peer connection ended, with its policy methods).
//!
//! Per peer and reactor the Switch guarantees: `PeerAdded` before any `Receive`, and
//! `PeerRemoved` exactly once, after the last `Receive`.
//!
//! These are shared by the [`PeerConn`](super::peer_conn::PeerConn) actor, which produces
//! them, and the Switch and reactors, which consume them.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::codec::{self, DecodeError};

use crate::actors::peer_conn::PeerHandle;
use crate::types::{Direction, NodeInfo};

use crate::mconn::MConnectionError;
use crate::secret::FrameError;
use crate::types::PeerId;

/// A whole message a peer sent on one of the reactor's channels. Sent by the peer's
/// [`PeerConn`](super::peer_conn::PeerConn) in the order the peer sent them on that channel.
///
/// A reactor handles it quickly or not: a reactor that falls behind makes reads from that peer
/// wait (a bounded number of messages are in its mailbox per peer and channel), as TM2's
/// inline `Receive` does, rather than queueing without limit.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Receive {
    /// The channel the message arrived on.
    pub channel: u8,
    /// The peer that sent it (the id its key authenticated).
    pub peer: PeerId,
    /// The message, never changed behind the reactor's back. A message that arrived in one
    /// packet is a slice of the buffer of the socket read that brought it (at most 4 KiB,
    /// shared with the other messages of that read): a reactor that keeps many small messages
    /// for long should keep copies (`Bytes::copy_from_slice`) to release those buffers.
    pub payload: Bytes,
}

/// Whole messages one peer sent on one channel, in the order it sent them: what a reactor
/// registered with [`RegisterReactor::batched`](crate::RegisterReactor::batched) gets instead
/// of one [`Receive`] per message. The connection hands over, in one mailbox envelope, the
/// messages it decoded until its socket had nothing more to read (at most [`MAX_BATCH`] of
/// them, or messages holding 256 KiB and one more), so a
/// reactor that takes many small messages pays one actor message, one wake-up and one
/// allocation per batch instead of per message. Same ordering, guarantees and backpressure as
/// [`Receive`] (the bound counts messages, not batches); never empty.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ReceiveBatch {
    /// The channel the messages arrived on.
    pub channel: u8,
    /// The peer that sent them.
    pub peer: PeerId,
    /// The messages, oldest first.
    pub payloads: Vec<Bytes>,
}

/// The most messages one [`ReceiveBatch`] carries. 1,024 (256 until issue 17's second stop):
/// the reactor wakes once per batch, and with 256-byte messages four times fewer wake-ups moved
/// 11 % more messages (docs/PERFORMANCE.md); the memory a batch holds is bounded in bytes
/// anyway.
pub const MAX_BATCH: usize = 1024;

/// A whole message on a typed channel ([`RegisterReactor::typed`](crate::RegisterReactor::typed)),
/// already decoded from the payload by the connection (bincode, standard configuration, at
/// most the channel's `recv_message_capacity`, no trailing bytes; docs/PROTOCOL.md,
/// "Payloads"). A payload that does not decode never reaches the reactor: the connection stops
/// as [`DisconnectReason::UndecodableMessage`] instead. Same ordering and backpressure as
/// [`Receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedReceive<T> {
    /// The channel the message arrived on.
    pub channel: u8,
    /// The peer that sent it.
    pub peer: PeerId,
    /// The decoded message.
    pub message: T,
}

impl<T: 'static> Message for TypedReceive<T> {
    type Result = ();
}

/// Where a channel's messages go: a reactor that takes [`Receive`] (raw bytes), one that takes
/// [`ReceiveBatch`] (raw bytes, several per envelope; made by
/// [`RegisterReactor::batched`](crate::RegisterReactor::batched)), or one that takes
/// [`TypedReceive<T>`] (made by [`RegisterReactor::typed`](crate::RegisterReactor::typed)),
/// whose payloads the connection decodes. `From<Recipient<Receive>>` makes the raw kind.
#[derive(Clone)]
pub struct Delivery(pub(crate) DeliveryKind);

/// See [`Delivery`].
#[derive(Clone)]
pub(crate) enum DeliveryKind {
    /// Raw bytes.
    Raw(Recipient<Receive>),
    /// Decoded values.
    Typed(Arc<dyn TypedSink>),
    /// Raw bytes, several messages per envelope.
    Batched(Recipient<ReceiveBatch>),
}

impl From<Recipient<Receive>> for Delivery {
    fn from(recipient: Recipient<Receive>) -> Self {
        Self(DeliveryKind::Raw(recipient))
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            DeliveryKind::Raw(_) => "Delivery::Raw",
            DeliveryKind::Typed(_) => "Delivery::Typed",
            DeliveryKind::Batched(_) => "Delivery::Batched",
        })
    }
}

impl Delivery {
    /// Batched delivery to `addr`: [`ReceiveBatch`] instead of one [`Receive`] per message.
    pub fn batched<A>(addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<ReceiveBatch>,
    {
        Self(DeliveryKind::Batched(addr.clone().recipient()))
    }

    /// Typed delivery to `addr`: each payload decoded as `T`.
    pub fn typed<T, A>(addr: &Addr<A>) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        A: Actor<Context = Context<A>> + Handler<TypedReceive<T>>,
    {
        Self(DeliveryKind::Typed(Arc::new(TypedAddr::<T, A> {
            addr: addr.clone(),
            _message: PhantomData,
        })))
    }
}

/// A future that completes once a reactor has handled a delivery (or is gone).
pub(crate) type Handled = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Decodes a typed channel's payloads and pushes them to its reactor.
pub(crate) trait TypedSink: Send + Sync {
    /// Decodes `payload` (at most `limit` bytes) and pushes the value to the reactor; with
    /// `ack`, returns a future that completes once the reactor has handled it.
    fn push(
        &self,
        peer: PeerId,
        channel: u8,
        payload: &[u8],
        limit: usize,
        ack: bool,
    ) -> Result<Option<Handled>, DecodeError>;
}

/// [`TypedSink`] for an actor that handles [`TypedReceive<T>`].
struct TypedAddr<T, A: Actor> {
    addr: Addr<A>,
    _message: PhantomData<fn() -> T>,
}

impl<T, A> TypedSink for TypedAddr<T, A>
where
    T: DeserializeOwned + Send + 'static,
    A: Actor<Context = Context<A>> + Handler<TypedReceive<T>>,
{
    fn push(
        &self,
        peer: PeerId,
        channel: u8,
        payload: &[u8],
        limit: usize,
        ack: bool,
    ) -> Result<Option<Handled>, DecodeError> {
        let message: T = codec::decode(payload, limit)?;
        let msg = TypedReceive {
            channel,
            peer,
            message,
        };
        if ack {
            // A fresh clone, as for raw deliveries (see `ReactorLink::deliver`).
            let answer = self.addr.clone().send(msg);
            Ok(Some(Box::pin(async move {
                let _ = answer.await;
            })))
        } else {
            // Bounded by the answered deliveries, as raw ones.
            #[allow(clippy::disallowed_methods)]
            self.addr.do_send(msg);
            Ok(None)
        }
    }
}

/// A peer joined: sent to every registered reactor before any [`Receive`] from that peer (and
/// to a reactor registered later, for every peer already connected).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerAdded {
    /// Who the peer is and how to send to it.
    pub peer: PeerInfo,
}

/// A peer left: sent exactly once to every reactor that got [`PeerAdded`] for it, after the
/// last [`Receive`] from it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PeerRemoved {
    /// The peer.
    pub peer: PeerId,
    /// Why its connection ended.
    pub reason: DisconnectReason,
}

/// What a reactor knows about a connected peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's id (authenticated by the handshake).
    pub id: PeerId,
    /// The NodeInfo it sent (validated and compatible with ours).
    pub node_info: NodeInfo,
    /// Who dialed.
    pub direction: Direction,
    /// Whether the operator listed it as a persistent peer.
    pub persistent: bool,
    /// Whether its address must never be shared by peer exchange.
    pub private: bool,
    /// The remote end of its TCP connection.
    pub socket_addr: SocketAddr,
    /// Sends to this peer directly (no mailbox hop): `try_send` never waits, `send` waits up
    /// to the send timeout for room.
    pub handle: PeerHandle,
}

/// Why a peer connection ended. Reported exactly once per connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed or reset the TCP connection.
    #[error("connection closed by the peer")]
    RemoteClosed,
    /// Reading or writing the socket failed for another reason.
    #[error("i/o error ({kind:?}): {message}")]
    Io {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The error's text.
        message: String,
    },
    /// A secret-connection frame failed to open (tampered, truncated, bad length) or the
    /// nonces ran out.
    #[error("secret connection: {0}")]
    Secret(FrameError),
    /// The peer broke the mconn protocol: a garbled packet, an unknown channel, a message over
    /// the channel's `recv_message_capacity`.
    #[error("protocol violation: {0}")]
    Protocol(MConnectionError),
    /// The peer did not answer our ping within `pong_timeout`.
    #[error("no pong within the pong timeout")]
    PongTimeout,
    /// The peer stopped reading: our output waited `write_timeout` without its socket taking
    /// a byte ([`MConnectionError::WriteTimeout`]). Dropped so that it cannot pin what was
    /// queued for it.
    #[error("slow reader: no write progress for {0:?}")]
    SlowReader(std::time::Duration),
    /// A message on a typed channel ([`RegisterReactor::typed`](crate::RegisterReactor::typed))
    /// did not decode as the channel's type (bincode, within the channel's
    /// `recv_message_capacity`, no trailing bytes).
    #[error("undecodable message on channel {channel:#04x}: {error}")]
    UndecodableMessage {
        /// The channel.
        channel: u8,
        /// Why it did not decode.
        error: String,
    },
    /// A reactor or the Switch judged the peer's messages bad (`StopPeerForError`).
    #[error("peer misbehaved: {0}")]
    Misbehaved(String),
    /// Stopped on request of this node, not because of the peer (e.g. a duplicate connection
    /// or an operator command).
    #[error("stopped: {0}")]
    Stopped(String),
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
    /// A simultaneous connection with the same peer won the tie-break and takes this one's
    /// place. Closed at once, without a drain: the peer has no link while the old connection
    /// drains (the new one is admitted only after it ends), and right after start-up many links
    /// are replaced at once (a drain there lost gossip in the local testnet).
    #[error("replaced by a simultaneous connection")]
    Replaced,
    /// A bug in this node (a connection task panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DisconnectReason {
    /// Whether the peer is to blame (its address deserves a bad mark), as opposed to the
    /// network, a silent but possibly honest peer, or this node.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Secret(e) => e.is_peer_fault(),
            Self::Protocol(e) => e.is_peer_fault(),
            Self::Misbehaved(_) | Self::UndecodableMessage { .. } => true,
            Self::RemoteClosed
            | Self::Io { .. }
            | Self::PongTimeout
            | Self::SlowReader(_)
            | Self::Stopped(_)
            | Self::Replaced
            | Self::Shutdown
            | Self::Internal(_) => false,
        }
    }
}

impl From<MConnectionError> for DisconnectReason {
    fn from(e: MConnectionError) -> Self {
        match e {
            MConnectionError::PongTimeout => Self::PongTimeout,
            MConnectionError::WriteTimeout { timeout } => Self::SlowReader(timeout),
            other => Self::Protocol(other),
        }
    }
}

impl From<io::Error> for DisconnectReason {
    /// A [`FrameError`] carried by the secret stream becomes [`Secret`](Self::Secret); a
    /// closed, reset or truncated connection becomes [`RemoteClosed`](Self::RemoteClosed).
    fn from(e: io::Error) -> Self {
        if let Some(frame) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<FrameError>())
        {
            return Self::Secret(*frame);
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::RemoteClosed,
            kind => Self::Io {
                kind,
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_errors_inside_io_errors_keep_their_type() {
        let e = io::Error::new(io::ErrorKind::InvalidData, FrameError::Decrypt);
        let reason = DisconnectReason::from(e);
        assert_eq!(reason, DisconnectReason::Secret(FrameError::Decrypt));
        assert!(reason.is_peer_fault());
    }

    #[test]
    fn closed_and_reset_connections_are_remote_closed_and_not_a_fault() {
        for kind in [io::ErrorKind::ConnectionReset, io::ErrorKind::BrokenPipe] {
            let reason = DisconnectReason::from(io::Error::from(kind));
            assert_eq!(reason, DisconnectReason::RemoteClosed);
            assert!(!reason.is_peer_fault());
        }
        let other = DisconnectReason::from(io::Error::other("boom"));
        assert!(matches!(
            other,
            DisconnectReason::Io {
                kind: io::ErrorKind::Other,
                ..
            }
        ));
    }

    #[test]
    fn pong_timeout_is_its_own_reason_and_protocol_errors_are_faults() {
        assert_eq!(
            DisconnectReason::from(MConnectionError::PongTimeout),
            DisconnectReason::PongTimeout
        );
        assert!(!DisconnectReason::PongTimeout.is_peer_fault());
        let timeout = std::time::Duration::from_secs(3);
        assert_eq!(
            DisconnectReason::from(MConnectionError::WriteTimeout { timeout }),
            DisconnectReason::SlowReader(timeout)
        );
        assert!(!DisconnectReason::SlowReader(timeout).is_peer_fault());
        let big = DisconnectReason::from(MConnectionError::MessageTooLarge {
            channel: 1,
            len: 2,
            max: 1,
        });
        assert!(matches!(big, DisconnectReason::Protocol(_)));
        assert!(big.is_peer_fault());
        assert!(DisconnectReason::Misbehaved("bad block".into()).is_peer_fault());
        assert!(!DisconnectReason::Stopped("duplicate".into()).is_peer_fault());
    }
}
