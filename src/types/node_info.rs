//! [`NodeInfo`]: what two nodes tell each other right after the secret-connection handshake,
//! its validation and the compatibility check, following TM2's `types/node_info.go` and
//! `versionset`.
//!
//! Each side sends its `NodeInfo`; the receiver decodes it ([`NodeInfo::decode`], size-limited
//! to [`MAX_NODE_INFO_SIZE`]), then [`validate`](NodeInfo::validate)s it, then checks
//! [`compatible_with`](NodeInfo::compatible_with) its own. Decoding never validates: the two
//! steps fail with different errors and the caller decides the order.
//!
//! The encoding is this project's codec ([`crate::codec`], bincode), fields in TM2's order; it
//! is not TM2's amino encoding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError, varint};
use crate::types::{NetAddress, PeerId};

/// Largest encoded `NodeInfo` accepted, in bytes (TM2's `MaxNodeInfoSize`, `types/node_info.go`).
pub const MAX_NODE_INFO_SIZE: usize = 10_240;

/// Most channels a node may declare (TM2's `maxNumChannels`, `types/node_info.go`).
pub const MAX_NUM_CHANNELS: usize = 16;

/// Name of the version-set entry for the p2p protocol (TM2 uses the same name).
pub const P2P_VERSION_NAME: &str = "p2p";

/// The version of this project's p2p wire protocol (NodeInfo, packets, peer exchange as
/// written in docs/PROTOCOL.md), advertised under [`P2P_VERSION_NAME`]. Peers compare only its
/// semver MAJOR, so it is bumped to `v2.0.0` on any incompatible wire change. A TM2 node also
/// sends `p2p` `v1...` but never gets this far: its NodeInfo (amino) does not decode here.
pub const P2P_PROTOCOL_VERSION: &str = "v1.0.0";

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
    /// (`0.0.0.0`) is tolerated, as TM2 does: the listener's own address before it is known.
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

/// Why a [`NodeInfo`] could not be decoded or encoded, or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum NodeInfoError {
    /// The bytes are not a NodeInfo: over [`MAX_NODE_INFO_SIZE`], truncated, trailing bytes,
    /// or malformed (a bad net address string included).
    #[error("cannot decode node info")]
    Decode(#[source] DecodeError),
    /// Encoding failed (does not happen for well-formed values; kept so it is no panic).
    #[error("cannot encode node info")]
    Encode(#[source] EncodeError),
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
    /// True when the error describes bytes or values a peer sent (every variant but
    /// [`NodeInfoError::Encode`], which is a local bug): the peer is to blame and its address
    /// can be marked bad.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, Self::Encode(_))
    }
}

/// Why a peer's [`NodeInfo`] is not compatible with ours, in the order TM2 checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

    /// Encodes with the project codec. The result is not checked against
    /// [`MAX_NODE_INFO_SIZE`]; [`validate`](Self::validate) does that.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// Encodes for the NodeInfo exchange: `varint(len) body` (docs/PROTOCOL.md 2.1).
    pub fn encode_framed(&self) -> Result<Vec<u8>, EncodeError> {
        let body = self.encode()?;
        let mut out = Vec::with_capacity(varint::MAX_LEN + body.len());
        varint::put(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads the length prefix of a framed NodeInfo at the start of `buf`: `Ok(None)` until the
    /// prefix is complete, then `(prefix length, body length)`. A body over
    /// [`MAX_NODE_INFO_SIZE`] is refused here, before a byte of it is read.
    pub fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize)>, NodeInfoError> {
        let max = varint::MAX_LEN + MAX_NODE_INFO_SIZE;
        match varint::frame_header(buf, max) {
            Ok(Some((prefix, total))) if total - prefix <= MAX_NODE_INFO_SIZE => {
                Ok(Some((prefix, total - prefix)))
            }
            Ok(Some((prefix, total))) => Err(NodeInfoError::Decode(DecodeError::TooLarge {
                len: total - prefix,
                max: MAX_NODE_INFO_SIZE,
            })),
            Ok(None) => Ok(None),
            Err(varint::FrameError::TooLarge { len, .. }) => {
                Err(NodeInfoError::Decode(DecodeError::TooLarge {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    max: MAX_NODE_INFO_SIZE,
                }))
            }
            Err(varint::FrameError::Prefix(e)) => Err(NodeInfoError::Decode(
                DecodeError::Malformed(format!("NodeInfo length prefix: {e}")),
            )),
        }
    }

    /// Decodes bytes from a peer, refusing more than [`MAX_NODE_INFO_SIZE`] before reading
    /// anything. Does not [`validate`](Self::validate).
    pub fn decode(bytes: &[u8]) -> Result<Self, NodeInfoError> {
        codec::decode(bytes, MAX_NODE_INFO_SIZE).map_err(NodeInfoError::Decode)
    }

    /// Checks the fields, first by TM2's rules in TM2's order (the net address is well-formed
    /// by type, unspecified IPs tolerated; `version`; channel count; duplicate channels;
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
        let len = self.encode().map_err(NodeInfoError::Encode)?.len();
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
        let framed = i.encode_framed().unwrap();
        let (prefix, body) = NodeInfo::frame_header(&framed).unwrap().unwrap();
        assert_eq!(prefix + body, framed.len());
        assert_eq!(NodeInfo::decode(&framed[prefix..]).unwrap(), i);
        assert_eq!(NodeInfo::frame_header(&[]).unwrap(), None);
        assert_eq!(NodeInfo::frame_header(&[0xfb, 0x01]).unwrap(), None);
    }

    #[test]
    fn oversize_frame_is_refused_from_its_prefix() {
        let mut buf = Vec::new();
        varint::put(&mut buf, MAX_NODE_INFO_SIZE as u64 + 1);
        let err = NodeInfo::frame_header(&buf).unwrap_err();
        assert!(
            matches!(err, NodeInfoError::Decode(DecodeError::TooLarge { .. })),
            "{err:?}"
        );
        let mut buf = Vec::new();
        varint::put(&mut buf, u64::MAX);
        assert!(NodeInfo::frame_header(&buf).is_err());
        assert!(NodeInfo::frame_header(&[0xff]).is_err());
        let mut buf = Vec::new();
        varint::put(&mut buf, MAX_NODE_INFO_SIZE as u64);
        assert_eq!(
            NodeInfo::frame_header(&buf).unwrap(),
            Some((3, MAX_NODE_INFO_SIZE))
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
        let base = i.encode().unwrap().len();
        // The moniker's length prefix grows to 3 bytes past 250: pad so the total lands exactly.
        let room = MAX_NODE_INFO_SIZE - base + i.moniker.len() - 2;
        i.moniker = "m".repeat(room);
        assert_eq!(i.encode().unwrap().len(), MAX_NODE_INFO_SIZE);
        i.validate().unwrap();
        let bytes = i.encode().unwrap();
        assert_eq!(NodeInfo::decode(&bytes).unwrap(), i);
        i.moniker.push('m');
        let bytes = i.encode().unwrap();
        assert!(matches!(
            i.validate(),
            Err(NodeInfoError::TooLarge { len, max })
                if max == MAX_NODE_INFO_SIZE && len == MAX_NODE_INFO_SIZE + 1
        ));
        assert!(matches!(
            NodeInfo::decode(&bytes),
            Err(NodeInfoError::Decode(DecodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn decode_does_not_validate() {
        let mut i = info();
        i.channels = vec![7; 20];
        i.moniker = String::new();
        let back = NodeInfo::decode(&i.encode().unwrap()).unwrap();
        assert_eq!(back, i);
        assert!(back.validate().is_err());
    }

    #[test]
    fn wire_layout_is_the_fields_in_tm2_order() {
        let mut i = info();
        i.version_set.push(vi("app", "", true));
        i.other = NodeInfoOther {
            tx_index: "on".into(),
            rpc_address: "tcp://127.0.0.1:26657".into(),
        };
        let tuple = (
            i.version_set
                .iter()
                .map(|v| (v.name.clone(), v.version.clone(), v.optional))
                .collect::<Vec<_>>(),
            i.net_address.to_string(),
            i.network.clone(),
            i.software.clone(),
            i.version.clone(),
            i.channels.clone(),
            i.moniker.clone(),
            (i.other.tx_index.clone(), i.other.rpc_address.clone()),
        );
        assert_eq!(i.encode().unwrap(), codec::encode(&tuple).unwrap());
    }

    #[test]
    fn garbage_net_address_on_the_wire_fails_to_decode() {
        let i = info();
        for bad in [
            "",
            "garbage",
            "127.0.0.1:26656",
            &format!("{ID}@127.0.0.1:0"),
        ] {
            let tuple = (
                &i.version_set,
                bad,
                &i.network,
                &i.software,
                &i.version,
                &i.channels,
                &i.moniker,
                &i.other,
            );
            let bytes = codec::encode(&tuple).unwrap();
            assert!(
                matches!(
                    NodeInfo::decode(&bytes),
                    Err(NodeInfoError::Decode(DecodeError::Malformed(_)))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn truncated_and_padded_bytes_fail_to_decode() {
        let bytes = info().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(NodeInfo::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut padded = bytes;
        padded.push(0);
        assert!(matches!(
            NodeInfo::decode(&padded),
            Err(NodeInfoError::Decode(DecodeError::TrailingBytes {
                extra: 1
            }))
        ));
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
            let bytes = i.encode().unwrap();
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
            let mut bytes = i.encode().unwrap();
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
