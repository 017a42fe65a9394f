//! Identity and address types: [`PeerId`], [`NetAddress`], [`NodeInfo`], [`Direction`].

mod net_address;
mod node_info;
mod peer_id;
mod verify;

pub(crate) use net_address::is_routable_ip;
pub use net_address::{
    DnsNameError, Host, MAX_DNS_LABEL_LEN, MAX_DNS_NAME_LEN, NetAddress, NetAddressError,
};
pub use node_info::{
    GNOLAND_APP_VERSION, GNOLAND_VERSION, Incompatible, MAX_NODE_INFO_SIZE, MAX_NUM_CHANNELS,
    NodeInfo, NodeInfoError, NodeInfoOther, P2P_PROTOCOL_VERSION, P2P_VERSION_NAME, VersionInfo,
    gnoland_version_set,
};
pub use peer_id::{PEER_ID_LEN, PEER_ID_PREFIX, PeerId, PeerIdError};
pub use verify::{PeerCheckError, verify_remote};

use serde::{Deserialize, Serialize};

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// The remote dialed us.
    Inbound,
    /// We dialed the remote.
    Outbound,
}

impl Direction {
    /// True for [`Direction::Outbound`].
    pub const fn is_outbound(self) -> bool {
        matches!(self, Self::Outbound)
    }
}
