//! The checks a connection must pass after the secret handshake and the NodeInfo exchange,
//! before it becomes a peer: who the peer proved to be must match what it claims and what we
//! dialed, its NodeInfo must be valid and compatible with ours, and it must not be us.

use crate::types::{Incompatible, NodeInfo, NodeInfoError, PeerId};

/// Why a connection is refused after its handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerCheckError {
    /// The peer's NodeInfo breaks a validation rule.
    #[error("invalid node info: {0}")]
    InvalidNodeInfo(#[source] NodeInfoError),
    /// The key the peer authenticated with is not the id its NodeInfo claims (TM2's
    /// "connection ID does not match node info ID").
    #[error("peer authenticated as {authenticated} but its node info claims {claimed}")]
    IdMismatch {
        /// The id derived from the authenticated key.
        authenticated: PeerId,
        /// The id in the peer's NodeInfo.
        claimed: PeerId,
    },
    /// The peer is this node (a dial of our own address, or a loop through a proxy). TM2 has
    /// no such check in its transport.
    #[error("connection to ourselves")]
    SelfConnection,
    /// We dialed one id and reached another (TM2's "connection ID does not match dialed ID"):
    /// the address book is stale, or someone is in the middle.
    #[error("dialed {dialed} but reached {authenticated}")]
    DialedIdMismatch {
        /// The id we dialed.
        dialed: PeerId,
        /// The id the peer authenticated as.
        authenticated: PeerId,
    },
    /// The peer's NodeInfo is valid but not compatible with ours (another network, another
    /// major protocol version, no common channel).
    #[error("incompatible peer: {0}")]
    Incompatible(#[from] Incompatible),
}

impl PeerCheckError {
    /// True when the peer is to blame (its address deserves a bad mark): an invalid NodeInfo,
    /// or claiming or reaching an id it does not hold. An incompatible peer is not at fault
    /// (it belongs to another network), nor is a connection to ourselves.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::InvalidNodeInfo(e) => e.is_peer_fault(),
            Self::IdMismatch { .. } | Self::DialedIdMismatch { .. } => true,
            Self::SelfConnection | Self::Incompatible(_) => false,
        }
    }
}

/// Checks a remote after the handshake, in this order: its NodeInfo is valid; the key it
/// authenticated with is the id its NodeInfo claims; it is not us; it is the id we dialed (for
/// an outbound connection); its NodeInfo is compatible with ours.
pub fn verify_remote(
    ours: &NodeInfo,
    authenticated: PeerId,
    theirs: &NodeInfo,
    dialed: Option<PeerId>,
) -> Result<(), PeerCheckError> {
    theirs.validate().map_err(PeerCheckError::InvalidNodeInfo)?;
    let claimed = theirs.id();
    if claimed != authenticated {
        return Err(PeerCheckError::IdMismatch {
            authenticated,
            claimed,
        });
    }
    if authenticated == ours.id() {
        return Err(PeerCheckError::SelfConnection);
    }
    if let Some(dialed) = dialed
        && dialed != authenticated
    {
        return Err(PeerCheckError::DialedIdMismatch {
            dialed,
            authenticated,
        });
    }
    ours.compatible_with(theirs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NetAddress;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 20])
    }

    fn info(n: u8, network: &str, channels: &[u8]) -> NodeInfo {
        let addr: NetAddress = format!("{}@127.0.0.1:26656", id(n)).parse().unwrap();
        NodeInfo::new(addr, network.to_owned(), channels.to_vec())
    }

    #[test]
    fn a_good_peer_passes_with_and_without_a_dialed_id() {
        let (ours, theirs) = (info(1, "net", &[0x40]), info(2, "net", &[0x40, 0x50]));
        assert!(verify_remote(&ours, id(2), &theirs, None).is_ok());
        assert!(verify_remote(&ours, id(2), &theirs, Some(id(2))).is_ok());
    }

    #[test]
    fn invalid_node_info_is_refused_first() {
        let ours = info(1, "net", &[0x40]);
        let mut theirs = info(2, "net", &[0x40]);
        theirs.channels = vec![0x40, 0x40];
        let err = verify_remote(&ours, id(9), &theirs, Some(id(8))).unwrap_err();
        assert!(matches!(err, PeerCheckError::InvalidNodeInfo(_)), "{err:?}");
        assert!(err.is_peer_fault());
    }

    #[test]
    fn a_claimed_id_that_is_not_the_authenticated_key_is_refused() {
        let (ours, theirs) = (info(1, "net", &[0x40]), info(2, "net", &[0x40]));
        let err = verify_remote(&ours, id(3), &theirs, None).unwrap_err();
        assert!(
            matches!(err, PeerCheckError::IdMismatch { authenticated, claimed }
                if authenticated == id(3) && claimed == id(2)),
            "{err:?}"
        );
        assert!(err.is_peer_fault());
    }

    #[test]
    fn connecting_to_ourselves_is_refused() {
        let ours = info(1, "net", &[0x40]);
        let err = verify_remote(&ours, id(1), &ours.clone(), None).unwrap_err();
        assert!(matches!(err, PeerCheckError::SelfConnection), "{err:?}");
        assert!(!err.is_peer_fault());
    }

    #[test]
    fn reaching_another_id_than_dialed_is_refused() {
        let (ours, theirs) = (info(1, "net", &[0x40]), info(2, "net", &[0x40]));
        let err = verify_remote(&ours, id(2), &theirs, Some(id(7))).unwrap_err();
        assert!(
            matches!(err, PeerCheckError::DialedIdMismatch { dialed, authenticated }
                if dialed == id(7) && authenticated == id(2)),
            "{err:?}"
        );
    }

    #[test]
    fn incompatible_peers_are_refused_without_blame() {
        let ours = info(1, "net", &[0x40]);
        let err = verify_remote(&ours, id(2), &info(2, "other", &[0x40]), None).unwrap_err();
        assert!(matches!(
            err,
            PeerCheckError::Incompatible(Incompatible::NetworkMismatch { .. })
        ));
        assert!(!err.is_peer_fault());
        let err = verify_remote(&ours, id(2), &info(2, "net", &[0x41]), None).unwrap_err();
        assert!(matches!(
            err,
            PeerCheckError::Incompatible(Incompatible::NoCommonChannels)
        ));
    }
}
