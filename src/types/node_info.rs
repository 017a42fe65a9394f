//! [`NodeInfo`]: what two nodes tell each other right after the secret-connection handshake,
//! its validation and the compatibility check, following TM2's `types/node_info.go` and
//! `versionset`.
//!
//! Each side sends its `NodeInfo`; the receiver decodes it ([`NodeInfo::decode`], size-limited
//! to [`MAX_NODE_INFO_SIZE`]), then [`validate`](NodeInfo::validate)s it, then checks
//! [`compatible_with`](NodeInfo::compatible_with) its own. Decoding never validates: the two
//! steps fail with different errors and the caller decides the order.
//!
//! ## Wire encoding: TM2's amino
//!
//! A NodeInfo is a protobuf-3 message with TM2's field numbers, zero values left out
//! ([`crate::codec::amino`]); it is exchanged as a sized message, `uvarint(len) body`, whose
//! prefix and body together are at most [`MAX_NODE_INFO_SIZE`] bytes:
//!
//! ```text
//! 1: repeated VersionInfo {1: name, 2: version, 3: optional (bool)}   (every element written)
//! 2: net_address   string "id@ip:port"
//! 3: network       string
//! 4: software      string
//! 5: version       string
//! 6: channels      bytes
//! 7: moniker       string
//! 8: other         {1: tx_index, 2: rpc_address}
//! ```
//!
//! Decoding refuses what gno refuses (unknown fields, fields out of order, wrong wire types)
//! and, stricter, other encodings than gno's (overlong varints, zero values written out). A
//! NodeInfo without a net address decodes in gno and fails its validation; here it fails to
//! decode ([`AminoError::MissingField`]). The address is parsed, never resolved: a host name
//! stays a name (gno resolves it while decoding).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::amino::{self, AminoError, Fields};
use crate::types::{NetAddress, NetAddressError, PeerId};

/// Largest NodeInfo accepted, in bytes, its length prefix included (TM2's `MaxNodeInfoSize`,
/// `types/node_info.go`, the limit of the sized read in the NodeInfo exchange).
pub const MAX_NODE_INFO_SIZE: usize = 10_240;

/// Most channels a node may declare (TM2's `maxNumChannels`, `types/node_info.go`).
pub const MAX_NUM_CHANNELS: usize = 16;

/// Name of the version-set entry for the p2p protocol (TM2 uses the same name).
pub const P2P_VERSION_NAME: &str = "p2p";

/// The version of the p2p wire protocol, advertised under [`P2P_VERSION_NAME`]: TM2's, as a
/// gno.land node advertises it (`bft/node/node.go`). Peers compare only its semver MAJOR.
pub const P2P_PROTOCOL_VERSION: &str = "v1.0.0-rc.0";

/// The version of the protocols a gno.land node advertises besides `app` (`abci`, `bft`,
/// `blockchain`, `p2p`), as gno's `bft/node/node.go` sets them.
pub const GNOLAND_VERSION: &str = "v1.0.0-rc.0";

/// The app version a gno.land node advertises by default (gno.land's `BaseApp` sets `"dev"`).
/// Not a semver, so it only matches another non-semver version.
pub const GNOLAND_APP_VERSION: &str = "dev";

/// The version set of a gno.land node, as gno's `bft/node/node.go` builds it: `abci`, `app`
/// (= `app_version`, [`GNOLAND_APP_VERSION`] on a default node), `bft`, `blockchain`, `p2p`,
/// all required, the others at [`GNOLAND_VERSION`], sorted by name. A gno.land node refuses a
/// peer that lacks any of them, so a node that joins a gno.land network advertises this set
/// (`SwitchBuilder::version_set`, or `tm2p2p node --version-set gnoland`).
pub fn gnoland_version_set(app_version: &str) -> Vec<VersionInfo> {
    ["abci", "app", "bft", "blockchain", P2P_VERSION_NAME]
        .into_iter()
        .map(|name| VersionInfo {
            name: name.into(),
            version: if name == "app" {
                app_version.into()
            } else {
                GNOLAND_VERSION.into()
            },
            optional: false,
        })
        .collect()
}

/// What a node tells its peers about itself (TM2's `NodeInfo`). Fields are listed in wire
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Protocol versions by name; peers must agree on the MAJOR of every name both have, and
    /// a name one side lacks must be optional on the other (see
    /// [`compatible_with`](Self::compatible_with)).
    pub version_set: Vec<VersionInfo>,
    /// The advertised address others dial; its id is the node's id and must equal the key
    /// authenticated by the handshake (the transport checks). An unspecified IP
    /// (`0.0.0.0`) and port 0 are tolerated, as TM2 does (a listener's own address before it
    /// is known); such an address is never dialed or shared. On the wire its id must be lower
    /// case, the only form TM2 writes.
    pub net_address: NetAddress,
    /// The network (chain id); peers on another network are incompatible.
    pub network: String,
    /// Name of the software (TM2 nodes leave it empty).
    pub software: String,
    /// Version of the software; informational, never compared.
    pub version: String,
    /// Channel ids the node's reactors handle; at most [`MAX_NUM_CHANNELS`], no duplicates.
    pub channels: Vec<u8>,
    /// Human-readable node name.
    pub moniker: String,
    /// Miscellaneous fields TM2 carries.
    pub other: NodeInfoOther,
}

/// One entry of a [`NodeInfo`] version set (TM2's `versionset.VersionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionInfo {
    /// What is versioned (`p2p`, `app`, ...); non-empty, unique within a set.
    pub name: String,
    /// A semver string such as `v1.0.0-rc.0`; only its MAJOR is compared.
    pub version: String,
    /// When true, a peer lacking this name is still compatible.
    pub optional: bool,
}

/// The `other` part of a [`NodeInfo`] (TM2's `NodeInfoOther`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfoOther {
    /// Whether the node indexes transactions (`"on"`/`"off"` in TM2), informational.
    pub tx_index: String,
    /// The node's RPC listen address, informational; empty when not served.
    pub rpc_address: String,
}

/// Why a [`NodeInfo`] could not be decoded, or is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeInfoError {
    /// The bytes are not the amino encoding of a NodeInfo: over [`MAX_NODE_INFO_SIZE`],
    /// truncated, trailing bytes, unknown or misordered fields, no net address, ...
    #[error("cannot decode node info: {0}")]
    Decode(#[source] AminoError),
    /// The net address string does not parse (`id@host:port`).
    #[error("cannot decode node info: bad net address")]
    NetAddress(#[source] NetAddressError),
    /// `version` is set but not printable ASCII, or only spaces (TM2's `ErrInvalidVersion`).
    #[error("node info version is not printable ASCII")]
    InvalidVersion,
    /// More than [`MAX_NUM_CHANNELS`] channels (TM2's `ErrExcessiveChannels`).
    #[error("node info declares {count} channels, more than {MAX_NUM_CHANNELS}")]
    ExcessiveChannels {
        /// Number of channels declared.
        count: usize,
    },
    /// A channel id appears twice (TM2's `ErrDuplicateChannels`).
    #[error("node info declares channel {0:#04x} twice")]
    DuplicateChannel(u8),
    /// `moniker` is empty, not printable ASCII, or only spaces (TM2's `ErrInvalidMoniker`).
    #[error("node info moniker is empty or not printable ASCII")]
    InvalidMoniker,
    /// `other.rpc_address` is set but not printable ASCII, or only spaces (TM2's
    /// `ErrInvalidRPCAddress`).
    #[error("node info rpc address is not printable ASCII")]
    InvalidRpcAddress,
    /// `network` is set but not printable ASCII, or only spaces (not checked by TM2).
    #[error("node info network is not printable ASCII")]
    InvalidNetwork,
    /// `software` is set but not printable ASCII, or only spaces (not checked by TM2).
    #[error("node info software is not printable ASCII")]
    InvalidSoftware,
    /// `other.tx_index` is set but not printable ASCII, or only spaces (not checked by TM2).
    #[error("node info tx_index is not printable ASCII")]
    InvalidTxIndex,
    /// A version-set name is empty or not printable ASCII without spaces (not checked by TM2).
    #[error("node info version set entry {index} has an invalid name")]
    InvalidVersionName {
        /// Position of the entry in the set.
        index: usize,
    },
    /// A version-set version is set but not printable ASCII, or only spaces (not checked by
    /// TM2).
    #[error("node info version of {name:?} is not printable ASCII")]
    InvalidVersionInfo {
        /// The entry's name.
        name: String,
    },
    /// A version-set name appears twice (TM2 silently uses the first).
    #[error("node info version set names {name:?} twice")]
    DuplicateVersionName {
        /// The repeated name.
        name: String,
    },
    /// The encoding is larger than [`MAX_NODE_INFO_SIZE`]: the peer would refuse it.
    #[error("node info encodes to {len} bytes, more than {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit, [`MAX_NODE_INFO_SIZE`].
        max: usize,
    },
}

impl NodeInfoError {
    /// True when the error describes bytes or values a peer sent: always, since encoding
    /// cannot fail. Kept so callers ask the error rather than assume.
    pub fn is_peer_fault(&self) -> bool {
        true
    }
}

impl From<AminoError> for NodeInfoError {
    fn from(e: AminoError) -> Self {
        Self::Decode(e)
    }
}

/// Why a peer's [`NodeInfo`] is not compatible with ours, in the order TM2 checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatible {
    /// We require a version name the peer does not send.
    #[error("peer lacks required version {name:?}")]
    PeerLacksVersion {
        /// The name.
        name: String,
    },
    /// The peer requires a version name we do not send.
    #[error("we lack version {name:?} the peer requires")]
    WeLackVersion {
        /// The name.
        name: String,
    },
    /// Both send the name with different semver MAJORs (an invalid semver has major "", so
    /// it only matches another invalid one).
    #[error("version {name:?} differs in major: ours {ours:?}, theirs {theirs:?}")]
    MajorVersionMismatch {
        /// The name.
        name: String,
        /// Our version string.
        ours: String,
        /// Their version string.
        theirs: String,
    },
    /// The networks differ (TM2's `ErrIncompatibleNetworks`).
    #[error("network differs: ours {ours:?}, theirs {theirs:?}")]
    NetworkMismatch {
        /// Our network.
        ours: String,
        /// Their network.
        theirs: String,
    },
    /// No channel id in common (TM2's `ErrNoCommonChannels`).
    #[error("no common channels")]
    NoCommonChannels,
}

impl NodeInfo {
    /// A NodeInfo with this project's defaults: version set `[p2p = P2P_PROTOCOL_VERSION]`
    /// (required), software `tm2-p2p` and this crate's version, the node id as moniker (TM2
    /// defaults to the host name, which a sans-IO core cannot read), `other` empty. Set the
    /// public fields to change any of them.
    pub fn new(net_address: NetAddress, network: impl Into<String>, channels: Vec<u8>) -> Self {
        let moniker = net_address.id().to_string();
        Self {
            version_set: vec![VersionInfo {
                name: P2P_VERSION_NAME.into(),
                version: P2P_PROTOCOL_VERSION.into(),
                optional: false,
            }],
            net_address,
            network: network.into(),
            software: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            channels,
            moniker,
            other: NodeInfoOther::default(),
        }
    }

    /// The node's id: the id of [`net_address`](Self::net_address).
    pub const fn id(&self) -> PeerId {
        self.net_address.id()
    }

    /// Encodes the body (TM2's amino, no length prefix). The result is not checked against
    /// [`MAX_NODE_INFO_SIZE`]; [`validate`](Self::validate) does that.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut inner = Vec::with_capacity(64);
        for v in &self.version_set {
            inner.clear();
            amino::put_bytes_field(&mut inner, 1, v.name.as_bytes());
            amino::put_bytes_field(&mut inner, 2, v.version.as_bytes());
            amino::put_bool_field(&mut inner, 3, v.optional);
            amino::put_element(&mut out, 1, &inner);
        }
        amino::put_bytes_field(&mut out, 2, self.net_address.to_string().as_bytes());
        amino::put_bytes_field(&mut out, 3, self.network.as_bytes());
        amino::put_bytes_field(&mut out, 4, self.software.as_bytes());
        amino::put_bytes_field(&mut out, 5, self.version.as_bytes());
        amino::put_bytes_field(&mut out, 6, &self.channels);
        amino::put_bytes_field(&mut out, 7, self.moniker.as_bytes());
        inner.clear();
        amino::put_bytes_field(&mut inner, 1, self.other.tx_index.as_bytes());
        amino::put_bytes_field(&mut inner, 2, self.other.rpc_address.as_bytes());
        amino::put_bytes_field(&mut out, 8, &inner);
        out
    }

    /// Encodes for the NodeInfo exchange: `uvarint(len) body`, as gno's `MarshalSizedWriter`.
    pub fn encode_framed(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(amino::sized_len(body.len()));
        amino::put_sized(&mut out, &body);
        out
    }

    /// Reads the length prefix of a framed NodeInfo at the start of `buf`: `Ok(None)` until the
    /// prefix is complete, then `(prefix length, body length)`. A NodeInfo whose prefix and
    /// body exceed [`MAX_NODE_INFO_SIZE`] is refused here, before a byte of the body is read.
    pub fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize)>, NodeInfoError> {
        Ok(amino::sized_header(buf, MAX_NODE_INFO_SIZE)?
            .map(|(prefix, total)| (prefix, total - prefix)))
    }

    /// Decodes a framed NodeInfo (`uvarint(len) body`, exactly all of `bytes`).
    pub fn decode_framed(bytes: &[u8]) -> Result<Self, NodeInfoError> {
        Self::decode(amino::sized_body(bytes, MAX_NODE_INFO_SIZE)?)
    }

    /// Decodes a body (no length prefix) from a peer, refusing a body that could not be
    /// exchanged (with its prefix over [`MAX_NODE_INFO_SIZE`] bytes) before reading anything.
    /// Does not [`validate`](Self::validate).
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeInfoError> {
        let framed = amino::sized_len(bytes.len());
        if framed > MAX_NODE_INFO_SIZE {
            return Err(AminoError::TooLarge {
                len: framed as u64,
                max: MAX_NODE_INFO_SIZE,
            }
            .into());
        }
        let mut version_set = Vec::new();
        let mut net_address = None;
        let (mut network, mut software, mut version, mut moniker) =
            (String::new(), String::new(), String::new(), String::new());
        let mut channels = Vec::new();
        let mut other = NodeInfoOther::default();
        let mut fields = Fields::new(bytes);
        while let Some(field) = fields.next()? {
            match field.number {
                1 => version_set.push(decode_version_info(field.bytes()?)?),
                2 => {
                    let text = field.nonempty_str()?;
                    net_address = Some(
                        NetAddress::parse_advertised(text).map_err(NodeInfoError::NetAddress)?,
                    );
                }
                3 => field.nonempty_str()?.clone_into(&mut network),
                4 => field.nonempty_str()?.clone_into(&mut software),
                5 => field.nonempty_str()?.clone_into(&mut version),
                6 => field.nonempty_bytes()?.clone_into(&mut channels),
                7 => field.nonempty_str()?.clone_into(&mut moniker),
                8 => other = decode_other(field.nonempty_bytes()?)?,
                _ => return Err(field.unknown().into()),
            }
        }
        Ok(Self {
            version_set,
            net_address: net_address.ok_or(AminoError::MissingField(2))?,
            network,
            software,
            version,
            channels,
            moniker,
            other,
        })
    }

    /// Checks the fields, first by TM2's rules in TM2's order (the net address is well-formed
    /// by type, unspecified IPs and port 0 tolerated; `version`; channel count; duplicate channels;
    /// `moniker`; `other.rpc_address`), then this project's additions: `network`, `software`
    /// and `other.tx_index` printable like `version`, version-set names non-empty printable
    /// ASCII without spaces and unique, versions printable like `version`, and the encoding at
    /// most [`MAX_NODE_INFO_SIZE`] bytes (so our own NodeInfo is one peers accept).
    pub fn validate(&self) -> Result<(), NodeInfoError> {
        if !is_optional_text(&self.version) {
            return Err(NodeInfoError::InvalidVersion);
        }
        if self.channels.len() > MAX_NUM_CHANNELS {
            return Err(NodeInfoError::ExcessiveChannels {
                count: self.channels.len(),
            });
        }
        let mut seen = [false; 256];
        for &ch in &self.channels {
            if std::mem::replace(&mut seen[usize::from(ch)], true) {
                return Err(NodeInfoError::DuplicateChannel(ch));
            }
        }
        if self.moniker.is_empty() || !is_optional_text(&self.moniker) {
            return Err(NodeInfoError::InvalidMoniker);
        }
        if !is_optional_text(&self.other.rpc_address) {
            return Err(NodeInfoError::InvalidRpcAddress);
        }
        if !is_optional_text(&self.network) {
            return Err(NodeInfoError::InvalidNetwork);
        }
        if !is_optional_text(&self.software) {
            return Err(NodeInfoError::InvalidSoftware);
        }
        if !is_optional_text(&self.other.tx_index) {
            return Err(NodeInfoError::InvalidTxIndex);
        }
        let mut names = BTreeSet::new();
        for (index, info) in self.version_set.iter().enumerate() {
            if info.name.is_empty() || !info.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(NodeInfoError::InvalidVersionName { index });
            }
            if !is_optional_text(&info.version) {
                return Err(NodeInfoError::InvalidVersionInfo {
                    name: info.name.clone(),
                });
            }
            if !names.insert(info.name.as_str()) {
                return Err(NodeInfoError::DuplicateVersionName {
                    name: info.name.clone(),
                });
            }
        }
        let len = amino::sized_len(self.encode().len());
        if len > MAX_NODE_INFO_SIZE {
            return Err(NodeInfoError::TooLarge {
                len,
                max: MAX_NODE_INFO_SIZE,
            });
        }
        Ok(())
    }

    /// Checks that a peer (`theirs`) can talk to us (`self`), as TM2's `CompatibleWith`, in
    /// its order: version sets (every name on only one side must be optional there; names on
    /// both sides must share the semver MAJOR, as Go's `x/mod/semver`), then the same network,
    /// then at least one common channel. Software versions are not compared. When several
    /// version names conflict, the first by name is reported (TM2 joins them in map order).
    pub fn compatible_with(&self, theirs: &Self) -> Result<(), Incompatible> {
        let ours_by_name = by_name(&self.version_set);
        let theirs_by_name = by_name(&theirs.version_set);
        let names: BTreeSet<&str> = ours_by_name
            .keys()
            .chain(theirs_by_name.keys())
            .copied()
            .collect();
        for name in names {
            match (ours_by_name.get(name), theirs_by_name.get(name)) {
                (Some(o), Some(t)) if semver_major(&o.version) != semver_major(&t.version) => {
                    return Err(Incompatible::MajorVersionMismatch {
                        name: name.into(),
                        ours: o.version.clone(),
                        theirs: t.version.clone(),
                    });
                }
                (Some(o), None) if !o.optional => {
                    return Err(Incompatible::PeerLacksVersion { name: name.into() });
                }
                (None, Some(t)) if !t.optional => {
                    return Err(Incompatible::WeLackVersion { name: name.into() });
                }
                _ => {}
            }
        }
        if self.network != theirs.network {
            return Err(Incompatible::NetworkMismatch {
                ours: self.network.clone(),
                theirs: theirs.network.clone(),
            });
        }
        if !self.channels.iter().any(|c| theirs.channels.contains(c)) {
            return Err(Incompatible::NoCommonChannels);
        }
        Ok(())
    }
}

/// Decodes one element of the version set: `{1: name, 2: version, 3: optional}`.
fn decode_version_info(bytes: &[u8]) -> Result<VersionInfo, AminoError> {
    let mut info = VersionInfo {
        name: String::new(),
        version: String::new(),
        optional: false,
    };
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next()? {
        match field.number {
            1 => field.nonempty_str()?.clone_into(&mut info.name),
            2 => field.nonempty_str()?.clone_into(&mut info.version),
            3 => info.optional = field.true_bool()?,
            _ => return Err(field.unknown()),
        }
    }
    Ok(info)
}

/// Decodes `other`: `{1: tx_index, 2: rpc_address}`.
fn decode_other(bytes: &[u8]) -> Result<NodeInfoOther, AminoError> {
    let mut other = NodeInfoOther::default();
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next()? {
        match field.number {
            1 => field.nonempty_str()?.clone_into(&mut other.tx_index),
            2 => field.nonempty_str()?.clone_into(&mut other.rpc_address),
            _ => return Err(field.unknown()),
        }
    }
    Ok(other)
}

/// The first entry of each name (Go's `VersionSet.Get` returns the first match).
fn by_name(set: &[VersionInfo]) -> BTreeMap<&str, &VersionInfo> {
    let mut map = BTreeMap::new();
    for info in set {
        map.entry(info.name.as_str()).or_insert(info);
    }
    map
}

/// TM2's rule for optional text fields: empty, or printable ASCII (32..=126) that is not only
/// spaces.
fn is_optional_text(s: &str) -> bool {
    s.is_empty()
        || (s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) && s.bytes().any(|b| b != b' '))
}

/// The semver MAJOR of `v` (`"v1.0.0-rc.0"` -> `"v1"`), or `None` when `v` is not valid as
/// Go's `golang.org/x/mod/semver` defines it: `v` then MAJOR[.MINOR[.PATCH[-PRE][+BUILD]]],
/// numbers without leading zeros, pre-release and build only after a full
/// MAJOR.MINOR.PATCH, identifiers non-empty `[0-9A-Za-z-]`, numeric pre-release identifiers
/// without leading zeros. `None` equals `None`, as Go's `""` equals `""`.
fn semver_major(v: &str) -> Option<&str> {
    let rest = v.strip_prefix('v')?;
    let (major, rest) = split_number(rest)?;
    let major = &v[..1 + major.len()];
    if rest.is_empty() {
        return Some(major);
    }
    let (_minor, rest) = split_number(rest.strip_prefix('.')?)?;
    if rest.is_empty() {
        return Some(major);
    }
    let (_patch, rest) = split_number(rest.strip_prefix('.')?)?;
    let (pre, build) = match rest.split_once('+') {
        Some((pre, build)) => (pre, Some(build)),
        None => (rest, None),
    };
    if !pre.is_empty() {
        let pre = pre.strip_prefix('-')?;
        let ok = identifiers_ok(pre, |id| {
            !(id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
        });
        if !ok {
            return None;
        }
    }
    if let Some(build) = build
        && !identifiers_ok(build, |_| true)
    {
        return None;
    }
    Some(major)
}

/// Splits a leading decimal number without leading zeros off `s`.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    if num.is_empty() || (num.len() > 1 && num.starts_with('0')) {
        return None;
    }
    Some((num, rest))
}

/// Dot-separated identifiers, each non-empty `[0-9A-Za-z-]` and accepted by `extra`.
fn identifiers_ok(s: &str, extra: impl Fn(&str) -> bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && extra(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::net_address::tests::arb_net_address;
    use proptest::prelude::*;

    #[test]
    fn framed_round_trip_and_header() {
        let i = info();
        let framed = i.encode_framed();
        let (prefix, body) = NodeInfo::frame_header(&framed).unwrap().unwrap();
        assert_eq!(prefix + body, framed.len());
        assert_eq!(NodeInfo::decode(&framed[prefix..]).unwrap(), i);
        assert_eq!(NodeInfo::decode_framed(&framed).unwrap(), i);
        assert_eq!(NodeInfo::frame_header(&[]).unwrap(), None);
        assert_eq!(NodeInfo::frame_header(&[0xe2]).unwrap(), None);
    }

    #[test]
    fn oversize_frame_is_refused_from_its_prefix() {
        // The limit holds prefix and body: a body of 10,239 bytes (2-byte prefix) is over.
        let mut buf = Vec::new();
        amino::put_uvarint(&mut buf, MAX_NODE_INFO_SIZE as u64 - 1);
        let err = NodeInfo::frame_header(&buf).unwrap_err();
        assert!(
            matches!(err, NodeInfoError::Decode(AminoError::TooLarge { len, .. }) if len == 10_241),
            "{err:?}"
        );
        let mut buf = Vec::new();
        amino::put_uvarint(&mut buf, u64::MAX);
        assert!(NodeInfo::frame_header(&buf).is_err());
        assert!(NodeInfo::frame_header(&[0x80, 0x00]).is_err());
        let mut buf = Vec::new();
        amino::put_uvarint(&mut buf, MAX_NODE_INFO_SIZE as u64 - 2);
        assert_eq!(
            NodeInfo::frame_header(&buf).unwrap(),
            Some((2, MAX_NODE_INFO_SIZE - 2))
        );
    }

    #[test]
    fn bad_peer_bytes_are_the_peers_fault() {
        let err = NodeInfo::decode(&[0xff; 8]).unwrap_err();
        assert!(err.is_peer_fault(), "{err:?}");
        assert!(NodeInfoError::DuplicateChannel(1).is_peer_fault());
    }

    const ID: &str = "g1m6kmam774klwlh4dhmhaatd7al02m0h0jwnyc6";

    fn info() -> NodeInfo {
        let addr: NetAddress = format!("{ID}@127.0.0.1:26656").parse().unwrap();
        NodeInfo::new(addr, "test-chain", vec![0x40, 0x20, 0x50])
    }

    fn vi(name: &str, version: &str, optional: bool) -> VersionInfo {
        VersionInfo {
            name: name.into(),
            version: version.into(),
            optional,
        }
    }

    #[test]
    fn defaults_are_valid() {
        let i = info();
        i.validate().unwrap();
        assert_eq!(i.id().to_string(), ID);
        assert_eq!(i.moniker, ID);
        assert_eq!(i.version_set, [vi("p2p", P2P_PROTOCOL_VERSION, false)]);
        assert_eq!(semver_major(P2P_PROTOCOL_VERSION), Some("v1"));
        i.compatible_with(&i).unwrap();
    }

    #[test]
    fn unspecified_listen_address_is_tolerated() {
        let mut i = info();
        i.net_address = format!("{ID}@0.0.0.0:26656").parse().unwrap();
        i.validate().unwrap();
        i.net_address = format!("{ID}@[::]:26656").parse().unwrap();
        i.validate().unwrap();
    }

    #[test]
    fn an_advertised_port_0_decodes_and_validates_but_is_not_dialable() {
        let mut i = info();
        let addr = format!("{ID}@127.0.0.1:0");
        let bytes = with_address(addr.as_bytes());
        let back = NodeInfo::decode(&bytes).unwrap();
        assert_eq!(back.net_address.port(), 0);
        assert_eq!(back.net_address.to_string(), addr);
        back.validate().unwrap();
        assert_eq!(back.encode(), bytes, "re-encodes to the same bytes");
        assert_eq!(
            back.net_address.validate(),
            Err(crate::types::NetAddressError::PortZero)
        );
        i.net_address = back.net_address;
        i.validate().unwrap();
    }

    #[test]
    fn an_upper_case_id_on_the_wire_is_refused() {
        let addr = format!("{ID}@127.0.0.1:26656").to_uppercase();
        assert!(
            addr.parse::<NetAddress>().is_ok(),
            "an operator may write it"
        );
        assert!(matches!(
            NodeInfo::decode(&with_address(addr.as_bytes())),
            Err(NodeInfoError::NetAddress(
                crate::types::NetAddressError::NonCanonicalId
            ))
        ));
    }

    #[test]
    fn invalid_fields_each_get_their_own_error() {
        type Edit = fn(&mut NodeInfo);
        type Want = fn(&NodeInfoError) -> bool;
        let cases: Vec<(&str, Edit, Want)> = vec![
            (
                "version unprintable",
                |i| i.version = "v1\n".into(),
                |e| matches!(e, NodeInfoError::InvalidVersion),
            ),
            (
                "version non-ascii",
                |i| i.version = "vé".into(),
                |e| matches!(e, NodeInfoError::InvalidVersion),
            ),
            (
                "version spaces",
                |i| i.version = "   ".into(),
                |e| matches!(e, NodeInfoError::InvalidVersion),
            ),
            (
                "17 channels",
                |i| i.channels = (0..17).collect(),
                |e| matches!(e, NodeInfoError::ExcessiveChannels { count: 17 }),
            ),
            (
                "duplicate channel",
                |i| i.channels = vec![1, 2, 3, 2],
                |e| matches!(e, NodeInfoError::DuplicateChannel(2)),
            ),
            (
                "empty moniker",
                |i| i.moniker = String::new(),
                |e| matches!(e, NodeInfoError::InvalidMoniker),
            ),
            (
                "space moniker",
                |i| i.moniker = " ".into(),
                |e| matches!(e, NodeInfoError::InvalidMoniker),
            ),
            (
                "tab moniker",
                |i| i.moniker = "a\tb".into(),
                |e| matches!(e, NodeInfoError::InvalidMoniker),
            ),
            (
                "del moniker",
                |i| i.moniker = "a\x7f".into(),
                |e| matches!(e, NodeInfoError::InvalidMoniker),
            ),
            (
                "unicode moniker",
                |i| i.moniker = "nœud".into(),
                |e| matches!(e, NodeInfoError::InvalidMoniker),
            ),
            (
                "rpc spaces",
                |i| i.other.rpc_address = "  ".into(),
                |e| matches!(e, NodeInfoError::InvalidRpcAddress),
            ),
            (
                "rpc nul",
                |i| i.other.rpc_address = "tcp://\0".into(),
                |e| matches!(e, NodeInfoError::InvalidRpcAddress),
            ),
            (
                "network",
                |i| i.network = "chain\n".into(),
                |e| matches!(e, NodeInfoError::InvalidNetwork),
            ),
            (
                "software",
                |i| i.software = " ".into(),
                |e| matches!(e, NodeInfoError::InvalidSoftware),
            ),
            (
                "tx_index",
                |i| i.other.tx_index = "\u{1b}[0m".into(),
                |e| matches!(e, NodeInfoError::InvalidTxIndex),
            ),
            (
                "empty version name",
                |i| i.version_set.push(vi("", "v1", false)),
                |e| matches!(e, NodeInfoError::InvalidVersionName { index: 1 }),
            ),
            (
                "spaced version name",
                |i| i.version_set.insert(0, vi("a b", "v1", false)),
                |e| matches!(e, NodeInfoError::InvalidVersionName { index: 0 }),
            ),
            (
                "bad version",
                |i| i.version_set.push(vi("app", "v1\r", false)),
                |e| matches!(e, NodeInfoError::InvalidVersionInfo { name } if name == "app"),
            ),
            (
                "duplicate version name",
                |i| i.version_set.push(vi("p2p", "v2", true)),
                |e| matches!(e, NodeInfoError::DuplicateVersionName { name } if name == "p2p"),
            ),
            (
                "oversize",
                |i| i.moniker = "m".repeat(MAX_NODE_INFO_SIZE),
                |e| {
                    matches!(e, NodeInfoError::TooLarge { len, max }
                        if *max == MAX_NODE_INFO_SIZE && *len > MAX_NODE_INFO_SIZE)
                },
            ),
        ];
        for (what, edit, want) in cases {
            let mut i = info();
            edit(&mut i);
            let e = i.validate().unwrap_err();
            assert!(want(&e), "{what}: {e:?}");
        }
    }

    #[test]
    fn validation_follows_tm2_order() {
        // Everything wrong at once: the version is reported first, then channels, ...
        let mut i = info();
        i.version = "\n".into();
        i.channels = vec![1; 17];
        i.moniker = String::new();
        i.other.rpc_address = "\n".into();
        assert!(matches!(i.validate(), Err(NodeInfoError::InvalidVersion)));
        i.version = String::new();
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::ExcessiveChannels { .. })
        ));
        i.channels = vec![1, 1];
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::DuplicateChannel(1))
        ));
        i.channels = vec![1];
        assert!(matches!(i.validate(), Err(NodeInfoError::InvalidMoniker)));
        i.moniker = "m".into();
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::InvalidRpcAddress)
        ));
        i.other.rpc_address = "tcp://0.0.0.0:26657".into();
        i.validate().unwrap();
    }

    #[test]
    fn sizes_at_the_limit() {
        let mut i = info();
        i.channels = (0..16).collect();
        i.validate().unwrap();
        let base = i.encode_framed().len();
        // The moniker's length grows to 2 bytes past 127: pad so the framed total (prefix
        // 2 bytes) lands exactly on the limit.
        let room = MAX_NODE_INFO_SIZE - base + i.moniker.len() - 1;
        i.moniker = "m".repeat(room);
        assert_eq!(i.encode_framed().len(), MAX_NODE_INFO_SIZE);
        i.validate().unwrap();
        let framed = i.encode_framed();
        assert_eq!(NodeInfo::decode_framed(&framed).unwrap(), i);
        i.moniker.push('m');
        let framed = i.encode_framed();
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::TooLarge { len, max })
                if max == MAX_NODE_INFO_SIZE && len == MAX_NODE_INFO_SIZE + 1
        ));
        assert!(matches!(
            NodeInfo::decode_framed(&framed),
            Err(NodeInfoError::Decode(AminoError::TooLarge { .. }))
        ));
        i.moniker = "m".repeat(MAX_NODE_INFO_SIZE);
        assert!(matches!(
            NodeInfo::decode(&i.encode()),
            Err(NodeInfoError::Decode(AminoError::TooLarge { .. }))
        ));
    }

    #[test]
    fn decode_does_not_validate() {
        let mut i = info();
        i.channels = vec![7; 20];
        i.moniker = String::new();
        let back = NodeInfo::decode(&i.encode()).unwrap();
        assert_eq!(back, i);
        assert!(back.validate().is_err());
    }

    #[test]
    fn wire_layout_is_the_fields_in_tm2_order() {
        let mut i = info();
        i.version_set.push(vi("app", "", true));
        i.software = "sw".into();
        i.version = "v2".into();
        i.other = NodeInfoOther {
            tx_index: "on".into(),
            rpc_address: "tcp://127.0.0.1:26657".into(),
        };
        i.moniker = "m".into();
        let addr = i.net_address.to_string();
        let mut want = b"\x0a\x12\x0a\x03p2p\x12\x0bv1.0.0-rc.0".to_vec();
        want.extend_from_slice(b"\x0a\x07\x0a\x03app\x18\x01");
        want.extend_from_slice(&[0x12, addr.len() as u8]);
        want.extend_from_slice(addr.as_bytes());
        want.extend_from_slice(b"\x1a\x0atest-chain\x22\x02sw\x2a\x02v2\x32\x03\x40\x20\x50");
        want.extend_from_slice(b"\x3a\x01m\x42\x1b\x0a\x02on\x12\x15tcp://127.0.0.1:26657");
        assert_eq!(hex::encode(i.encode()), hex::encode(&want));
        // Zero values are left out: no software, version or other at all.
        let mut bare = info();
        bare.software.clear();
        bare.version.clear();
        let bytes = bare.encode();
        assert!(
            !bytes
                .windows(2)
                .any(|w| w == [0x22, 0x00] || w == [0x42, 0x00])
        );
        assert_eq!(NodeInfo::decode(&bytes).unwrap(), bare);
    }

    /// A NodeInfo body with `address` (raw text) as field 2 and a moniker.
    fn with_address(address: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        amino::put_bytes_field(&mut out, 2, address);
        amino::put_bytes_field(&mut out, 7, b"m");
        out
    }

    #[test]
    fn garbage_net_address_on_the_wire_fails_to_decode() {
        for bad in [
            "garbage",
            "127.0.0.1:26656",
            "<nil>:0",
            &format!("{ID}@127.0.0.1:65536"),
            &format!("{ID}@:26656"),
        ] {
            assert!(
                matches!(
                    NodeInfo::decode(&with_address(bad.as_bytes())),
                    Err(NodeInfoError::NetAddress(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            NodeInfo::decode(&with_address(&[0xff])),
            Err(NodeInfoError::Decode(AminoError::InvalidUtf8(2)))
        );
        // No address at all: gno decodes it and fails validation; we fail to decode.
        assert_eq!(
            NodeInfo::decode(&[]),
            Err(NodeInfoError::Decode(AminoError::MissingField(2)))
        );
        // A host name is kept as a name, never resolved.
        let named =
            NodeInfo::decode(&with_address(format!("{ID}@node.example:26656").as_bytes())).unwrap();
        assert_eq!(
            named.net_address.to_string(),
            format!("{ID}@node.example:26656")
        );
    }

    #[test]
    fn what_gno_refuses_and_other_encodings_fail_to_decode() {
        let good = info().encode();
        let addr_field = with_address(info().net_address.to_string().as_bytes());
        for (bytes, why) in [
            (
                [good.clone(), b"\x4a\x01x".to_vec()].concat(),
                "unknown field 9",
            ),
            (
                [good.clone(), b"\x1a\x01x".to_vec()].concat(),
                "field 3 after field 8",
            ),
            (
                [b"\x22\x01x".to_vec(), addr_field.clone()].concat(),
                "field 4 before field 2",
            ),
            (
                [addr_field.clone(), b"\x42\x00".to_vec()].concat(),
                "empty other written out",
            ),
            (
                [addr_field.clone(), b"\x1a\x00".to_vec()].concat(),
                "empty network written out",
            ),
            (
                [addr_field.clone(), b"\x30\x01".to_vec()].concat(),
                "channels as a varint",
            ),
            (
                [b"\x0a\x02\x18\x00".to_vec(), addr_field.clone()].concat(),
                "optional false written out",
            ),
            (
                [b"\x0a\x02\x18\x02".to_vec(), addr_field.clone()].concat(),
                "optional 2",
            ),
            (
                [b"\x0a\x02\x20\x01".to_vec(), addr_field.clone()].concat(),
                "unknown version field",
            ),
            (
                [addr_field.clone(), b"\x42\x02\x18\x01".to_vec()].concat(),
                "unknown other field",
            ),
        ] {
            assert!(NodeInfo::decode(&bytes).is_err(), "{why}");
        }
        // Every element of a repeated field is written, even an empty one: that decodes.
        let empty_entry = [b"\x0a\x00".to_vec(), addr_field].concat();
        let i = NodeInfo::decode(&empty_entry).unwrap();
        assert_eq!(i.version_set, vec![vi("", "", false)]);
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::InvalidVersionName { index: 0 })
        ));
    }

    #[test]
    fn truncated_and_padded_bytes_fail_to_decode() {
        let bytes = info().encode();
        // Amino has no end marker: a cut between fields is a shorter NodeInfo (the sized
        // framing is what protects the exchange), a cut inside a field is an error.
        let mut boundaries = vec![0];
        let mut fields = Fields::new(&bytes);
        while fields.next().unwrap().is_some() {
            boundaries.push(bytes.len() - fields.remaining());
        }
        for cut in 0..bytes.len() {
            match NodeInfo::decode(&bytes[..cut]) {
                Ok(i) if boundaries.contains(&cut) => assert_ne!(i, info()),
                Err(NodeInfoError::Decode(AminoError::MissingField(2)))
                    if boundaries.contains(&cut) => {}
                Err(_) if !boundaries.contains(&cut) => {}
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let framed = info().encode_framed();
        for cut in 0..framed.len() {
            assert!(
                NodeInfo::decode_framed(&framed[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut padded = framed;
        padded.push(0);
        assert_eq!(
            NodeInfo::decode_framed(&padded),
            Err(NodeInfoError::Decode(AminoError::TrailingBytes(1)))
        );
    }

    #[test]
    fn incompatibilities_each_get_their_own_error() {
        type Edit = fn(&mut NodeInfo);
        let cases: Vec<(&str, Edit, Edit, Result<(), Incompatible>)> = vec![
            (
                "we require a name they lack",
                |o| o.version_set.push(vi("app", "v1", false)),
                |_| {},
                Err(Incompatible::PeerLacksVersion { name: "app".into() }),
            ),
            (
                "they require a name we lack",
                |_| {},
                |t| t.version_set.push(vi("app", "v1", false)),
                Err(Incompatible::WeLackVersion { name: "app".into() }),
            ),
            (
                "our optional name they lack",
                |o| o.version_set.push(vi("app", "v1", true)),
                |_| {},
                Ok(()),
            ),
            (
                "their optional name we lack",
                |_| {},
                |t| t.version_set.push(vi("app", "v1", true)),
                Ok(()),
            ),
            (
                "optional on the other side does not excuse a missing name",
                |o| o.version_set.push(vi("app", "v1", false)),
                |t| t.version_set.push(vi("other", "v1", true)),
                Err(Incompatible::PeerLacksVersion { name: "app".into() }),
            ),
            (
                "different majors",
                |o| o.version_set[0].version = "v1.2.3".into(),
                |t| t.version_set[0].version = "v2.0.0".into(),
                Err(Incompatible::MajorVersionMismatch {
                    name: "p2p".into(),
                    ours: "v1.2.3".into(),
                    theirs: "v2.0.0".into(),
                }),
            ),
            (
                "optional does not excuse a major mismatch",
                |o| o.version_set.push(vi("app", "v1", true)),
                |t| t.version_set.push(vi("app", "v2", true)),
                Err(Incompatible::MajorVersionMismatch {
                    name: "app".into(),
                    ours: "v1".into(),
                    theirs: "v2".into(),
                }),
            ),
            (
                "same major, different minor and pre-release",
                |o| o.version_set[0].version = "v1.0.0-rc.0".into(),
                |t| t.version_set[0].version = "v1.9.3+build".into(),
                Ok(()),
            ),
            (
                "v0 majors match",
                |o| o.version_set[0].version = "v0.3.1".into(),
                |t| t.version_set[0].version = "v0.1".into(),
                Ok(()),
            ),
            (
                "two invalid versions are compatible",
                |o| o.version_set[0].version = "1.0.0".into(),
                |t| t.version_set[0].version = "garbage".into(),
                Ok(()),
            ),
            (
                "invalid vs valid is not",
                |o| o.version_set[0].version = "v1.0".into(),
                |t| t.version_set[0].version = "v1.0.0-".into(),
                Err(Incompatible::MajorVersionMismatch {
                    name: "p2p".into(),
                    ours: "v1.0".into(),
                    theirs: "v1.0.0-".into(),
                }),
            ),
            (
                "invalid vs v0.0.0 is not",
                |o| o.version_set[0].version = String::new(),
                |t| t.version_set[0].version = "v0.0.0".into(),
                Err(Incompatible::MajorVersionMismatch {
                    name: "p2p".into(),
                    ours: String::new(),
                    theirs: "v0.0.0".into(),
                }),
            ),
            (
                "first conflicting name wins",
                |o| o.version_set.push(vi("zzz", "v1", false)),
                |t| t.version_set.push(vi("aaa", "v1", false)),
                Err(Incompatible::WeLackVersion { name: "aaa".into() }),
            ),
            (
                "network",
                |_| {},
                |t| t.network = "other-chain".into(),
                Err(Incompatible::NetworkMismatch {
                    ours: "test-chain".into(),
                    theirs: "other-chain".into(),
                }),
            ),
            (
                "version set is checked before network",
                |_| {},
                |t| {
                    t.network = "other-chain".into();
                    t.version_set.clear();
                },
                Err(Incompatible::PeerLacksVersion { name: "p2p".into() }),
            ),
            (
                "no common channel",
                |_| {},
                |t| t.channels = vec![0x21, 0x22],
                Err(Incompatible::NoCommonChannels),
            ),
            (
                "they have no channels",
                |_| {},
                |t| t.channels.clear(),
                Err(Incompatible::NoCommonChannels),
            ),
            (
                "network is checked before channels",
                |_| {},
                |t| {
                    t.channels.clear();
                    t.network = String::new();
                },
                Err(Incompatible::NetworkMismatch {
                    ours: "test-chain".into(),
                    theirs: String::new(),
                }),
            ),
            (
                "one common channel is enough",
                |_| {},
                |t| t.channels = vec![0x99, 0x50],
                Ok(()),
            ),
            (
                "software and version are not compared",
                |_| {},
                |t| {
                    t.software = "else".into();
                    t.version = "9".into();
                },
                Ok(()),
            ),
        ];
        for (what, ours, theirs, want) in cases {
            let (mut o, mut t) = (info(), info());
            ours(&mut o);
            theirs(&mut t);
            assert_eq!(o.compatible_with(&t), want, "{what}");
        }
    }

    #[test]
    fn semver_major_matches_go() {
        let cases = [
            // invalid
            ("", None),
            ("v", None),
            ("1.0.0", None),
            ("V1.0.0", None),
            ("v01", None),
            ("v1.01", None),
            ("v1.0.01", None),
            ("v1.", None),
            ("v1.0.", None),
            ("v1.0.0.0", None),
            ("v1.2-pre", None),
            ("v1-pre", None),
            ("v1+build", None),
            ("v1.0.0-", None),
            ("v1.0.0-01", None),
            ("v1.0.0-rc..1", None),
            ("v1.0.0-rc_1", None),
            ("v1.0.0+", None),
            ("v1.0.0+a+b", None),
            ("v1.0.0+a..b", None),
            ("v1.0.0x", None),
            ("v1.0.0 ", None),
            ("v-1", None),
            // valid
            ("v0", Some("v0")),
            ("v1", Some("v1")),
            ("v1.2", Some("v1")),
            ("v0.3.1", Some("v0")),
            ("v1.0.0-rc.0", Some("v1")),
            ("v1.0.0-0", Some("v1")),
            ("v1.0.0-0a", Some("v1")),
            ("v1.0.0-01a", Some("v1")),
            ("v1.0.0--", Some("v1")),
            ("v1.0.0+01", Some("v1")),
            ("v1.0.0-rc.1+build.001", Some("v1")),
            ("v10.20.30", Some("v10")),
            (
                "v123456789012345678901234567890.0.0",
                Some("v123456789012345678901234567890"),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(semver_major(v), want, "{v:?}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[!-~][ -~]{0,20}"]
    }

    fn arb_valid_node_info() -> impl Strategy<Value = NodeInfo> {
        let version_set =
            proptest::collection::btree_map("[!-~]{1,10}", (text(), any::<bool>()), 0..6).prop_map(
                |m| {
                    m.into_iter()
                        .map(|(name, (version, optional))| VersionInfo {
                            name,
                            version,
                            optional,
                        })
                        .collect::<Vec<_>>()
                },
            );
        let channels = proptest::collection::btree_set(any::<u8>(), 0..=MAX_NUM_CHANNELS)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>());
        (
            version_set,
            arb_net_address(),
            (text(), text(), text()),
            channels,
            "[!-~][ -~]{0,40}",
            (text(), text()),
        )
            .prop_map(
                |(
                    version_set,
                    net_address,
                    (network, software, version),
                    channels,
                    moniker,
                    (tx_index, rpc_address),
                )| {
                    NodeInfo {
                        version_set,
                        net_address,
                        network,
                        software,
                        version,
                        channels,
                        moniker,
                        other: NodeInfoOther {
                            tx_index,
                            rpc_address,
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(i in arb_valid_node_info()) {
            prop_assert!(i.validate().is_ok(), "{:?}", i.validate());
            let bytes = i.encode();
            let back = NodeInfo::decode(&bytes).unwrap();
            prop_assert!(back.validate().is_ok());
            prop_assert_eq!(back, i.clone());
            prop_assert_eq!(i.compatible_with(&i), if i.channels.is_empty() {
                Err(Incompatible::NoCommonChannels)
            } else {
                Ok(())
            });
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(i) = NodeInfo::decode(&bytes) {
                let _ = i.validate();
                let _ = i.compatible_with(&i);
            }
        }

        #[test]
        fn mutated_encodings_never_panic(i in arb_valid_node_info(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = i.encode();
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Ok(i) = NodeInfo::decode(&bytes) {
                let _ = i.validate();
            }
        }

        #[test]
        fn semver_major_never_panics_and_is_a_prefix(v in "[v0-9.+a-z-]{0,16}") {
            if let Some(major) = semver_major(&v) {
                prop_assert!(v.starts_with(major));
                prop_assert!(major.len() >= 2);
            }
        }
    }
}
