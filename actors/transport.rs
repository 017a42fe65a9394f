//! Connection upgrade: what turns a TCP socket, accepted or dialed, into a verified peer
//! connection.
//!
//! [`upgrade`] runs, each stage under its own timeout (TM2: 3 s each):
//! 1. the secret-connection handshake ([`SecretStream::upgrade`]);
//! 2. the NodeInfo exchange: both sides send `varint(len) NodeInfo` at once; the length is
//!    checked against 10,240 bytes before the body is read; bytes after it stay buffered in the
//!    secret reader for the connection that follows;
//! 3. [`verify_remote`]: valid NodeInfo, authenticated key = claimed id, not ourselves, the
//!    dialed id, compatible.
//!
//! The listener and the bounds on handshakes in progress live in the Transport actor; the
//! functions here are what it runs for each socket.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::actors::secret_stream::{SecretStream, SecretStreamError};
use crate::codec::varint;
use crate::key::NodeKey;
use crate::types::verify_remote;
use crate::types::{Direction, NetAddress, NodeInfo, NodeInfoError, PeerCheckError, PeerId};

/// A connection that passed every check: encrypted, authenticated, compatible.
#[derive(Debug)]
pub struct Upgraded {
    /// The encrypted stream; any bytes the peer sent after its NodeInfo are buffered in it.
    pub stream: SecretStream,
    /// The peer's NodeInfo (validated).
    pub node_info: NodeInfo,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// Who opened the connection.
    pub direction: Direction,
}

impl Upgraded {
    /// The peer's id (authenticated by the handshake, equal to its NodeInfo id).
    pub fn id(&self) -> PeerId {
        self.stream.remote_id()
    }
}

/// The step an upgrade was in when it timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening the TCP connection (dials only).
    Connect,
    /// The secret-connection handshake.
    SecretHandshake,
    /// Sending and receiving NodeInfo.
    NodeInfoExchange,
}

/// Why a connection did not become a peer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket failed or closed (connect refused, reset, EOF mid-exchange).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The secret-connection handshake failed.
    #[error(transparent)]
    Secret(SecretStreamError),
    /// The peer's NodeInfo could not be decoded (too large, malformed).
    #[error("node info: {0}")]
    NodeInfo(#[source] NodeInfoError),
    /// The connection works but the peer is refused (invalid or incompatible NodeInfo, an id
    /// mismatch, ourselves).
    #[error("rejected: {0}")]
    Rejected(#[from] PeerCheckError),
    /// A stage did not finish within its timeout.
    #[error("timed out during {stage:?} after {after:?}")]
    Timeout {
        /// The stage that timed out.
        stage: Stage,
        /// The timeout that expired.
        after: Duration,
    },
    /// The address to dial has a DNS host, which must be resolved first (resolution is an
    /// explicit step, never hidden in a decoder).
    #[error("address {0} is not resolved to an IP")]
    Unresolved(NetAddress),
}

impl TransportError {
    /// True when the remote peer is to blame (its bytes broke the protocol, or it lied about
    /// its id): its address deserves a bad mark.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Secret(e) => e.is_peer_fault(),
            Self::NodeInfo(e) => e.is_peer_fault(),
            Self::Rejected(e) => e.is_peer_fault(),
            Self::Io(_) | Self::Timeout { .. } | Self::Unresolved(_) => false,
        }
    }
}

impl From<SecretStreamError> for TransportError {
    fn from(e: SecretStreamError) -> Self {
        match e {
            SecretStreamError::Timeout(after) => Self::Timeout {
                stage: Stage::SecretHandshake,
                after,
            },
            other => Self::Secret(other),
        }
    }
}

/// Upgrades `tcp` into a verified connection. `dialed` is the id we dialed (outbound), `None`
/// for an accepted connection. `timeout` applies to each stage separately.
pub async fn upgrade(
    tcp: TcpStream,
    key: &NodeKey,
    ours: &NodeInfo,
    dialed: Option<PeerId>,
    timeout: Duration,
) -> Result<Upgraded, TransportError> {
    let remote_addr = tcp.peer_addr()?;
    let mut stream = SecretStream::upgrade(tcp, key, timeout).await?;
    let ours_framed = ours
        .encode_framed()
        .map_err(|e| TransportError::Io(io::Error::other(e)))?;
    let node_info = tokio::time::timeout(timeout, exchange_node_info(&mut stream, &ours_framed))
        .await
        .map_err(|_| TransportError::Timeout {
            stage: Stage::NodeInfoExchange,
            after: timeout,
        })??;
    verify_remote(ours, stream.remote_id(), &node_info, dialed)?;
    let direction = if dialed.is_some() {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    Ok(Upgraded {
        stream,
        node_info,
        remote_addr,
        direction,
    })
}

/// Dials `addr` (which must hold an IP; resolve names first) and upgrades the connection,
/// requiring the peer to be `addr.id()`. `connect_timeout` bounds the TCP connect and
/// `handshake_timeout` each upgrade stage.
pub async fn dial(
    addr: &NetAddress,
    key: &NodeKey,
    ours: &NodeInfo,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<Upgraded, TransportError> {
    let socket = addr
        .socket_addr()
        .ok_or_else(|| TransportError::Unresolved(addr.clone()))?;
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(socket))
        .await
        .map_err(|_| TransportError::Timeout {
            stage: Stage::Connect,
            after: connect_timeout,
        })??;
    upgrade(tcp, key, ours, Some(addr.id()), handshake_timeout).await
}

/// Sends our framed NodeInfo and reads theirs at the same time. Reads exactly the peer's
/// frame, so whatever follows stays in the secret reader's buffer.
async fn exchange_node_info(
    stream: &mut SecretStream,
    ours_framed: &[u8],
) -> Result<NodeInfo, TransportError> {
    let (reader, writer) = stream.halves_mut();
    let send = async {
        writer.write_all(ours_framed).await?;
        writer.flush().await
    };
    let receive = async {
        let mut head = [0u8; varint::MAX_LEN];
        let mut have = 0;
        let body_len = loop {
            reader.read_exact(&mut head[have..=have]).await?;
            have += 1;
            if let Some((_, body_len)) =
                NodeInfo::frame_header(&head[..have]).map_err(TransportError::NodeInfo)?
            {
                break body_len;
            }
        };
        // body_len <= MAX_NODE_INFO_SIZE, checked by frame_header before this allocation.
        let mut body = vec![0u8; body_len];
        reader.read_exact(&mut body).await?;
        NodeInfo::decode(&body).map_err(TransportError::NodeInfo)
    };
    let (sent, received) = tokio::join!(send, receive);
    let node_info = received?;
    sent?;
    Ok(node_info)
}
