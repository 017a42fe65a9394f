//! [`NetAddress`]: where a peer can be dialed, written `id@host:port` as in TM2.
//!
//! Parsing follows TM2's `NewNetAddressFromString` (scheme stripped, exactly one `@`, a valid
//! [`PeerId`], Go's `SplitHostPort` rules) with three deliberate differences:
//! - a host name is checked for DNS syntax and kept as [`Host::Dns`]; it is **never resolved**
//!   here (TM2 resolves names while decoding peer data, which is I/O inside a decoder and lets a
//!   peer make us issue lookups; resolution is an explicit async step of the runtime);
//! - port 0 is refused (it cannot be dialed);
//! - whitespace anywhere, a bracketed host that is not an IPv6 literal, a numeric-looking name
//!   such as `256.1.1.1`, and a sign in the port are refused instead of being passed on.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are stored as IPv4, as Go prints them, so one
//! endpoint has one representation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{PeerId, PeerIdError};

/// Longest DNS name accepted, in bytes, not counting an optional trailing dot (RFC 1035).
pub const MAX_DNS_NAME_LEN: usize = 253;

/// Longest DNS label accepted, in bytes (RFC 1035).
pub const MAX_DNS_LABEL_LEN: usize = 63;

/// A dialable peer address: the peer's id, a host and a non-zero port (`id@host:port`).
///
/// Always well-formed: every constructor, [`FromStr`] and deserialization check the parts, so a
/// value of this type never needs re-parsing. Whether it may be *dialed* or *shared* is a
/// separate question answered by [`validate`](Self::validate),
/// [`is_routable`](Self::is_routable) and [`is_shareable`](Self::is_shareable).
///
/// Serialized as its string form ([`Display`](fmt::Display)) in every format, the wire codec
/// included; deserializing parses, so a malformed address is a decode error.
///
/// ```
/// use tm2_p2p::NetAddress;
/// let addr: NetAddress = "g1pyysjzgfpyysjzgfpyysjzgfpyysjzgfw8gv0a@127.0.0.1:26656".parse()?;
/// assert_eq!(addr.port(), 26656);
/// assert!(addr.validate().is_ok() && !addr.is_routable()); // dialable, not shared by default
/// assert!("127.0.0.1:26656".parse::<NetAddress>().is_err()); // the id is mandatory
/// # Ok::<(), tm2_p2p::NetAddressError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetAddress {
    /// The id the remote must prove with its key during the handshake.
    id: PeerId,
    /// IP literal or DNS name.
    host: Host,
    /// TCP port, never 0.
    port: u16,
}

/// The host part of a [`NetAddress`].
///
/// `Display` prints an IPv6 address without brackets (the [`NetAddress`] adds them). Ordering:
/// IP literals (IPv4 before IPv6, numerically) before names (byte-wise).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An IP literal. IPv4-mapped IPv6 addresses are stored as [`IpAddr::V4`].
    Ip(IpAddr),
    /// A syntactically valid DNS name, lower-cased, not resolved. Its trailing dot, if any, is
    /// kept (it makes the name absolute for the resolver).
    Dns(String),
}

/// Why a string or parts do not form a [`NetAddress`], or why an address is not dialable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetAddressError {
    /// The string is empty, or nothing follows the `scheme://` prefix.
    #[error("net address is empty")]
    Empty,
    /// The string contains whitespace.
    #[error("net address contains whitespace")]
    Whitespace,
    /// There is no `@`: the id is mandatory (`id@host:port`).
    #[error("net address has no id (expected id@host:port)")]
    MissingId,
    /// There is more than one `@`.
    #[error("net address has more than one '@'")]
    MultipleAt,
    /// The id part is not a valid peer id.
    #[error("invalid peer id in net address")]
    Id(#[source] PeerIdError),
    /// The host is empty (`id@:26656`, `id@[]:26656`).
    #[error("net address host is empty")]
    EmptyHost,
    /// The host contains `:` outside brackets: an IPv6 literal must be written `[addr]:port`.
    #[error("IPv6 address must be in brackets ([addr]:port)")]
    UnbracketedIpv6,
    /// A `[` without its `]`, a bracket inside an unbracketed host, or text between `]` and
    /// the `:` before the port.
    #[error("misplaced bracket in net address")]
    BadBrackets,
    /// The text inside brackets is not an IPv6 literal.
    #[error("bracketed host is not an IPv6 address")]
    InvalidIpv6,
    /// The host is neither an IP literal nor a valid DNS name.
    #[error("invalid host name")]
    InvalidDnsName(#[source] DnsNameError),
    /// There is no port (no `:` after the host, or nothing after it).
    #[error("net address has no port")]
    MissingPort,
    /// The port is not a base-10 number in 0..=65535.
    #[error("net address port is not a number in 1..=65535")]
    InvalidPort,
    /// The port is 0, which cannot be dialed.
    #[error("net address port is 0")]
    PortZero,
    /// An address a peer sent has an id written in upper case. Bech32 allows it, but TM2
    /// nodes write ids in lower case only and compare them as strings, so no TM2 node could
    /// ever be reached under it.
    #[error("peer id in net address is not written in lower case")]
    NonCanonicalId,
    /// [`NetAddress::validate`]: the IP is unspecified (`0.0.0.0` or `::`).
    #[error("IP address {0} is unspecified")]
    UnspecifiedIp(IpAddr),
    /// [`NetAddress::validate`]: the IP is the IPv4 broadcast address `255.255.255.255`.
    #[error("IP address 255.255.255.255 is the broadcast address")]
    BroadcastIp,
    /// [`NetAddress::validate`]: the IP is in the RFC 3849 documentation range `2001:db8::/32`.
    #[error("IP address {0} is in the documentation range 2001:db8::/32")]
    DocumentationIp(Ipv6Addr),
}

/// Why a host is not a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsNameError {
    /// The name is longer than [`MAX_DNS_NAME_LEN`] bytes (without its trailing dot).
    #[error("name is {len} bytes long, more than {MAX_DNS_NAME_LEN}")]
    TooLong {
        /// Length found.
        len: usize,
    },
    /// A label is empty (`a..b`, a leading dot, or a lone `.`).
    #[error("name has an empty label")]
    EmptyLabel,
    /// A label is longer than [`MAX_DNS_LABEL_LEN`] bytes.
    #[error("label is {len} bytes long, more than {MAX_DNS_LABEL_LEN}")]
    LabelTooLong {
        /// Length found.
        len: usize,
    },
    /// A character other than an ASCII letter, digit, `-` or a dot separating labels.
    #[error("name contains {0:?}")]
    InvalidChar(char),
    /// A label starts or ends with `-`.
    #[error("label starts or ends with '-'")]
    HyphenAtLabelEdge,
    /// The last label is all digits: the string is a malformed IPv4 address (`1.2.3`,
    /// `256.1.1.1`, `01.2.3.4`), not a name (RFC 1123 section 2.1).
    #[error("name looks like a malformed IPv4 address")]
    NumericTopLabel,
}

impl NetAddress {
    /// Builds an address from its parts: a DNS name is syntax-checked and lower-cased, an
    /// IPv4-mapped IPv6 address becomes IPv4, port 0 is refused.
    pub fn new(id: PeerId, host: Host, port: u16) -> Result<Self, NetAddressError> {
        let host = match host {
            Host::Ip(ip) => Host::Ip(normalize_ip(ip)),
            Host::Dns(name) => parse_unbracketed_host(&name)?,
        };
        if port == 0 {
            return Err(NetAddressError::PortZero);
        }
        Ok(Self { id, host, port })
    }

    /// Builds an address from an id and a socket address (port 0 is refused).
    pub fn from_socket_addr(id: PeerId, addr: SocketAddr) -> Result<Self, NetAddressError> {
        Self::new(id, Host::Ip(addr.ip()), addr.port())
    }

    /// The peer's id.
    pub const fn id(&self) -> PeerId {
        self.id
    }

    /// The host: an IP literal or an unresolved DNS name.
    pub const fn host(&self) -> &Host {
        &self.host
    }

    /// The port: never 0, but in the listen address of a peer's `NodeInfo`, which TM2 lets a
    /// node advertise (it fails [`validate`](Self::validate), so it is never dialed, stored or
    /// shared).
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, IPv6 in brackets (Go's `JoinHostPort`; TM2's `DialString`).
    pub fn dial_string(&self) -> String {
        HostPort(self).to_string()
    }

    /// The socket address when the host is an IP literal; `None` for a DNS name, which must be
    /// resolved first.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Dns(_) => None,
        }
    }

    /// Checks that the address can be dialed, as TM2's `NetAddress.Validate`: the IP is not
    /// unspecified (`0.0.0.0`, `::`), not `255.255.255.255` and not in the RFC 3849
    /// documentation range `2001:db8::/32`. Loopback and private ranges are valid. A DNS name
    /// passes (its syntax was checked on construction). The port is not 0 (only a peer's
    /// advertised `NodeInfo` address can hold port 0).
    pub fn validate(&self) -> Result<(), NetAddressError> {
        if self.port == 0 {
            return Err(NetAddressError::PortZero);
        }
        let Host::Ip(ip) = self.host else {
            return Ok(());
        };
        if ip.is_unspecified() {
            return Err(NetAddressError::UnspecifiedIp(ip));
        }
        match ip {
            IpAddr::V4(v4) if v4 == Ipv4Addr::BROADCAST => Err(NetAddressError::BroadcastIp),
            IpAddr::V6(v6) if in_v6_prefix(v6, [0x2001, 0x0db8], 32) => {
                Err(NetAddressError::DocumentationIp(v6))
            }
            _ => Ok(()),
        }
    }

    /// True when the address is valid ([`validate`](Self::validate)) and reachable from the
    /// public internet, by TM2's `Routable` rules: not in RFC 1918 (`10/8`, `172.16/12`,
    /// `192.168/16`), RFC 3927 (`169.254/16`), link-local IPv6 (`fe80::/10`), RFC 4193
    /// (`fc00::/7`), RFC 4843 (`2001:10::/28`), loopback, or `0.0.0.0/8`.
    ///
    /// Two deliberate differences from TM2: TM2 checks only `fe80::/64` of the `fe80::/10`
    /// link-local block, and it calls multicast addresses (`224/4`, `ff00::/8`) routable;
    /// neither can be a peer's address, so both are non-routable here.
    ///
    /// For a DNS name, routability is only known once it is resolved; until then `localhost`
    /// and names under `.localhost` (RFC 6761) are not routable and any other name is.
    pub fn is_routable(&self) -> bool {
        if self.validate().is_err() {
            return false;
        }
        match &self.host {
            Host::Ip(ip) => is_routable_ip(*ip),
            Host::Dns(name) => {
                let name = name.strip_suffix('.').unwrap_or(name);
                name != "localhost" && !name.ends_with(".localhost")
            }
        }
    }

    /// This address with an unspecified IP (`0.0.0.0` or `::`, which TM2 nodes advertise
    /// before they know their address) replaced by `seen`, the IP the peer's connection came
    /// from; the id and advertised port stay. Any other address is returned unchanged.
    pub fn or_seen_ip(&self, seen: IpAddr) -> Self {
        match self.host.ip() {
            Some(ip) if ip.is_unspecified() => Self {
                host: Host::Ip(normalize_ip(seen)),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// True when the address may be given to other peers: it is valid and either routable or
    /// `allow_non_routable` is set. `allow_non_routable` is the config switch (default false;
    /// local testnets on loopback or a private network set it).
    pub fn is_shareable(&self, allow_non_routable: bool) -> bool {
        self.validate().is_ok() && (allow_non_routable || self.is_routable())
    }
}

impl Host {
    /// The IP address, when the host is an IP literal.
    pub const fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Dns(_) => None,
        }
    }
}

/// Strips an IPv4 mapping so one endpoint has one form.
fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// True when the first `bits` bits of `ip` equal those of the prefix given as its leading
/// 16-bit groups.
fn in_v6_prefix<const N: usize>(ip: Ipv6Addr, groups: [u16; N], bits: u32) -> bool {
    let mut prefix = [0u16; 8];
    prefix[..N].copy_from_slice(&groups);
    let prefix = u128::from(Ipv6Addr::from(prefix));
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    u128::from(ip) & mask == prefix & mask
}

/// TM2's `Routable` minus the `Validate` part (the caller checked it).
pub(crate) fn is_routable_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let rfc1918 = a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168);
            let rfc3927 = a == 169 && b == 254;
            let local = v4.is_loopback() || a == 0;
            !(rfc1918 || rfc3927 || local || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            let link_local = in_v6_prefix(v6, [0xfe80], 10);
            let rfc4193 = in_v6_prefix(v6, [0xfc00], 7);
            let rfc4843 = in_v6_prefix(v6, [0x2001, 0x0010], 28);
            !(link_local || rfc4193 || rfc4843 || v6.is_loopback() || v6.is_multicast())
        }
    }
}

/// Checks DNS name syntax: labels of 1..=63 ASCII letters, digits and inner hyphens, at most
/// 253 bytes without an optional trailing dot, and a last label that is not all digits.
fn check_dns_name(name: &str) -> Result<(), DnsNameError> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > MAX_DNS_NAME_LEN {
        return Err(DnsNameError::TooLong { len: bare.len() });
    }
    let mut last = "";
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(DnsNameError::EmptyLabel);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(DnsNameError::InvalidChar(c));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(DnsNameError::LabelTooLong { len: label.len() });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DnsNameError::HyphenAtLabelEdge);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DnsNameError::NumericTopLabel);
    }
    Ok(())
}

/// A host written without brackets: an IPv4 literal or a DNS name. (An unbracketed IPv6
/// literal is only accepted from [`NetAddress::new`], where no port follows.)
fn parse_unbracketed_host(host: &str) -> Result<Host, NetAddressError> {
    if host.is_empty() {
        return Err(NetAddressError::EmptyHost);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Host::Ip(normalize_ip(ip)));
    }
    check_dns_name(host).map_err(NetAddressError::InvalidDnsName)?;
    Ok(Host::Dns(host.to_ascii_lowercase()))
}

/// Splits `host:port` by Go's `SplitHostPort` rules (IPv6 hosts bracketed) and parses both.
fn parse_host_port(s: &str, port_zero: PortZero) -> Result<(Host, u16), NetAddressError> {
    if s.is_empty() {
        return Err(NetAddressError::EmptyHost);
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(NetAddressError::BadBrackets);
        };
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(NetAddressError::MissingPort),
            None => return Err(NetAddressError::BadBrackets),
        };
        if host.is_empty() {
            return Err(NetAddressError::EmptyHost);
        }
        let v6 = host
            .parse::<Ipv6Addr>()
            .map_err(|_| NetAddressError::InvalidIpv6)?;
        (Host::Ip(normalize_ip(IpAddr::V6(v6))), port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(NetAddressError::MissingPort);
        };
        if host.contains(':') {
            return Err(NetAddressError::UnbracketedIpv6);
        }
        if host.contains(['[', ']']) {
            return Err(NetAddressError::BadBrackets);
        }
        (parse_unbracketed_host(host)?, port)
    };
    Ok((host, parse_port(port, port_zero)?))
}

/// Whether a parsed address may have port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortZero {
    Refused,
    Kept,
}

/// A base-10 port in 1..=65535 (0..=65535 when `port_zero` keeps 0). Leading zeros are
/// accepted as Go's `ParseUint` does; a sign is not.
fn parse_port(s: &str, port_zero: PortZero) -> Result<u16, NetAddressError> {
    if s.is_empty() {
        return Err(NetAddressError::MissingPort);
    }
    let mut port: u16 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return Err(NetAddressError::InvalidPort);
        }
        port = port
            .checked_mul(10)
            .and_then(|p| p.checked_add(u16::from(b - b'0')))
            .ok_or(NetAddressError::InvalidPort)?;
    }
    if port == 0 && port_zero == PortZero::Refused {
        return Err(NetAddressError::PortZero);
    }
    Ok(port)
}

/// Who wrote the text being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// An operator or a file of ours: an upper-case id is accepted and lower-cased.
    Local,
    /// A peer, on the wire: the id must be in the lower case TM2 writes.
    Peer,
}

impl NetAddress {
    /// Parses the listen address in a peer's `NodeInfo`: as [`FromStr`], but the id must be
    /// lower case ([`NetAddressError::NonCanonicalId`]) and port 0, which TM2 lets a node
    /// advertise, is kept (the address then fails [`validate`](Self::validate)).
    pub(crate) fn parse_advertised(s: &str) -> Result<Self, NetAddressError> {
        parse(s, Writer::Peer, PortZero::Kept)
    }

    /// Parses an address a peer shared (a peer-exchange entry): as [`FromStr`], but the id must
    /// be lower case ([`NetAddressError::NonCanonicalId`]).
    pub(crate) fn parse_shared(s: &str) -> Result<Self, NetAddressError> {
        parse(s, Writer::Peer, PortZero::Refused)
    }
}

/// Parses `[scheme://]id@host:port` (see the module docs).
fn parse(s: &str, writer: Writer, port_zero: PortZero) -> Result<NetAddress, NetAddressError> {
    if s.chars().any(char::is_whitespace) {
        return Err(NetAddressError::Whitespace);
    }
    let rest = s.split_once("://").map_or(s, |(_, rest)| rest);
    if rest.is_empty() {
        return Err(NetAddressError::Empty);
    }
    let mut parts = rest.split('@');
    let (Some(id), Some(host_port), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(if rest.contains('@') {
            NetAddressError::MultipleAt
        } else {
            NetAddressError::MissingId
        });
    };
    if writer == Writer::Peer && id.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NetAddressError::NonCanonicalId);
    }
    let id = id.parse::<PeerId>().map_err(NetAddressError::Id)?;
    let (host, port) = parse_host_port(host_port, port_zero)?;
    Ok(NetAddress { id, host, port })
}

impl FromStr for NetAddress {
    type Err = NetAddressError;

    /// Parses `[scheme://]id@host:port` (see the module docs).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s, Writer::Local, PortZero::Refused)
    }
}

/// Writes `host:port` with IPv6 bracketed.
struct HostPort<'a>(&'a NetAddress);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.0.port),
            host => write!(f, "{host}:{}", self.0.port),
        }
    }
}

impl fmt::Display for NetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, HostPort(self))
    }
}

impl fmt::Debug for NetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetAddress({self})")
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

impl Serialize for NetAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = NetAddress;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a net address string id@host:port")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NetAddress, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "g1m6kmam774klwlh4dhmhaatd7al02m0h0jwnyc6";

    fn id() -> PeerId {
        ID.parse().unwrap()
    }

    fn addr(host_port: &str) -> NetAddress {
        format!("{ID}@{host_port}").parse().unwrap()
    }

    fn err(s: &str) -> NetAddressError {
        s.parse::<NetAddress>().unwrap_err()
    }

    #[test]
    fn bad_inputs_each_get_their_own_error() {
        use NetAddressError as E;
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 4].join("."); // 255 bytes
        let cases: Vec<(String, NetAddressError)> = vec![
            (String::new(), E::Empty),
            ("tcp://".into(), E::Empty),
            ("1.2.3.4:26656".into(), E::MissingId),
            (format!("{ID}@{ID}@1.2.3.4:26656"), E::MultipleAt),
            ("@1.2.3.4:26656".into(), E::Id(PeerIdError::Empty)),
            (
                "g1m6kmam774klwlh4dhmhaatd7al02m0h0jwnyc7@1.2.3.4:26656".into(),
                E::Id(PeerIdError::BadChecksum),
            ),
            (format!("{ID}@"), E::EmptyHost),
            (format!("{ID}@:26656"), E::EmptyHost),
            (format!("{ID}@[]:26656"), E::EmptyHost),
            (format!("{ID}@1.2.3.4"), E::MissingPort),
            (format!("{ID}@1.2.3.4:"), E::MissingPort),
            (format!("{ID}@[::1]"), E::MissingPort),
            (format!("{ID}@1.2.3.4:0"), E::PortZero),
            (format!("{ID}@1.2.3.4:00"), E::PortZero),
            (format!("{ID}@1.2.3.4:65536"), E::InvalidPort),
            (format!("{ID}@1.2.3.4:99999999999999999999"), E::InvalidPort),
            (format!("{ID}@1.2.3.4:abc"), E::InvalidPort),
            (format!("{ID}@1.2.3.4:+80"), E::InvalidPort),
            (format!("{ID}@1.2.3.4:-80"), E::InvalidPort),
            (format!("{ID}@1.2.3.4:80x"), E::InvalidPort),
            (format!("{ID}@::1:26656"), E::UnbracketedIpv6),
            (format!("{ID}@::1"), E::UnbracketedIpv6),
            (format!("{ID}@a:b:26656"), E::UnbracketedIpv6),
            (format!("{ID}@[::1:26656"), E::BadBrackets),
            (format!("{ID}@[::1]x:26656"), E::BadBrackets),
            (format!("{ID}@::1]:26656"), E::UnbracketedIpv6),
            (format!("{ID}@a]:26656"), E::BadBrackets),
            (format!("{ID}@[1.2.3.4]:26656"), E::InvalidIpv6),
            (format!("{ID}@[example.com]:26656"), E::InvalidIpv6),
            (format!("{ID}@[fe80::1%eth0]:26656"), E::InvalidIpv6),
            (format!("{ID}@[::1]]:26656"), E::BadBrackets),
            (
                format!("{ID}@{long_label}.com:1"),
                E::InvalidDnsName(DnsNameError::LabelTooLong { len: 64 }),
            ),
            (
                format!("{ID}@{long_name}:1"),
                E::InvalidDnsName(DnsNameError::TooLong { len: 255 }),
            ),
            (
                format!("{ID}@-a.com:1"),
                E::InvalidDnsName(DnsNameError::HyphenAtLabelEdge),
            ),
            (
                format!("{ID}@a-.com:1"),
                E::InvalidDnsName(DnsNameError::HyphenAtLabelEdge),
            ),
            (
                format!("{ID}@my_host.com:1"),
                E::InvalidDnsName(DnsNameError::InvalidChar('_')),
            ),
            (
                format!("{ID}@hé.com:1"),
                E::InvalidDnsName(DnsNameError::InvalidChar('é')),
            ),
            (
                format!("{ID}@a..com:1"),
                E::InvalidDnsName(DnsNameError::EmptyLabel),
            ),
            (
                format!("{ID}@.com:1"),
                E::InvalidDnsName(DnsNameError::EmptyLabel),
            ),
            (
                format!("{ID}@.:1"),
                E::InvalidDnsName(DnsNameError::EmptyLabel),
            ),
            (
                format!("{ID}@com..:1"),
                E::InvalidDnsName(DnsNameError::EmptyLabel),
            ),
            (
                format!("{ID}@256.1.1.1:1"),
                E::InvalidDnsName(DnsNameError::NumericTopLabel),
            ),
            (
                format!("{ID}@1.2.3:1"),
                E::InvalidDnsName(DnsNameError::NumericTopLabel),
            ),
            (
                format!("{ID}@01.2.3.4:1"),
                E::InvalidDnsName(DnsNameError::NumericTopLabel),
            ),
            (
                format!("{ID}@1234:1"),
                E::InvalidDnsName(DnsNameError::NumericTopLabel),
            ),
            (format!(" {ID}@1.2.3.4:1"), E::Whitespace),
            (format!("{ID}@1.2.3.4:1 "), E::Whitespace),
            (format!("{ID}@1.2.3.4:1\n"), E::Whitespace),
            (format!("{ID} @1.2.3.4:1"), E::Whitespace),
            (format!("{ID}@1.2.3.4 :1"), E::Whitespace),
            (format!("{ID}@1.2.3.4:\u{a0}1"), E::Whitespace),
        ];
        for (input, want) in cases {
            assert_eq!(err(&input), want, "input {input:?}");
        }
    }

    #[test]
    fn bad_id_keeps_the_typed_source() {
        let e = err("x@1.2.3.4:1");
        assert!(matches!(e, NetAddressError::Id(PeerIdError::Syntax(_))));
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<PeerIdError>().is_some());
    }

    #[test]
    fn good_inputs_parse_to_their_parts() {
        let v4 = |a, b, c, d| Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        let v6 = |s: &str| Host::Ip(IpAddr::V6(s.parse().unwrap()));
        let dns = |s: &str| Host::Dns(s.into());
        let long_ok = [
            &*"a".repeat(63),
            &*"b".repeat(63),
            &*"c".repeat(63),
            &*"d".repeat(61),
        ]
        .join(".");
        assert_eq!(long_ok.len(), 253);
        let cases: Vec<(String, Host, u16, String)> = vec![
            // (input, host, port, canonical display of host:port)
            (
                "1.2.3.4:26656".into(),
                v4(1, 2, 3, 4),
                26656,
                "1.2.3.4:26656".into(),
            ),
            ("0.0.0.0:1".into(), v4(0, 0, 0, 0), 1, "0.0.0.0:1".into()),
            (
                "1.2.3.4:65535".into(),
                v4(1, 2, 3, 4),
                65535,
                "1.2.3.4:65535".into(),
            ),
            (
                "1.2.3.4:026656".into(),
                v4(1, 2, 3, 4),
                26656,
                "1.2.3.4:26656".into(),
            ),
            ("[::1]:26656".into(), v6("::1"), 26656, "[::1]:26656".into()),
            ("[::]:26656".into(), v6("::"), 26656, "[::]:26656".into()),
            (
                "[2001:DB8:0:0::1]:7".into(),
                v6("2001:db8::1"),
                7,
                "[2001:db8::1]:7".into(),
            ),
            (
                "[::ffff:1.2.3.4]:80".into(),
                v4(1, 2, 3, 4),
                80,
                "1.2.3.4:80".into(),
            ),
            (
                "[::ffff:0102:0304]:80".into(),
                v4(1, 2, 3, 4),
                80,
                "1.2.3.4:80".into(),
            ),
            (
                "localhost:80".into(),
                dns("localhost"),
                80,
                "localhost:80".into(),
            ),
            (
                "Node-1.Example.COM:80".into(),
                dns("node-1.example.com"),
                80,
                "node-1.example.com:80".into(),
            ),
            (
                "example.com.:80".into(),
                dns("example.com."),
                80,
                "example.com.:80".into(),
            ),
            (
                "1.2.3.com:80".into(),
                dns("1.2.3.com"),
                80,
                "1.2.3.com:80".into(),
            ),
            ("123abc:80".into(), dns("123abc"), 80, "123abc:80".into()),
            (
                format!("{long_ok}:1"),
                dns(&long_ok),
                1,
                format!("{long_ok}:1"),
            ),
            (
                format!("{long_ok}.:1"),
                dns(&format!("{long_ok}.")),
                1,
                format!("{long_ok}.:1"),
            ),
        ];
        for (input, host, port, canonical) in cases {
            for prefix in ["", "tcp://", "udp://", "://", "anything://"] {
                let s = format!("{prefix}{ID}@{input}");
                let a: NetAddress = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
                assert_eq!(a.id(), id(), "{s}");
                assert_eq!(a.host(), &host, "{s}");
                assert_eq!(a.port(), port, "{s}");
                assert_eq!(a.dial_string(), canonical, "{s}");
                assert_eq!(a.to_string(), format!("{ID}@{canonical}"), "{s}");
            }
        }
    }

    #[test]
    fn only_the_first_scheme_is_stripped() {
        assert!(matches!(
            err(&format!("tcp://udp://{ID}@1.2.3.4:1")),
            NetAddressError::Id(_)
        ));
    }

    #[test]
    fn constructors_check_and_normalise() {
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        let a = NetAddress::new(id(), Host::Ip(IpAddr::V6(mapped)), 5).unwrap();
        assert_eq!(a.host(), &Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        let a = NetAddress::new(id(), Host::Dns("Foo.Bar".into()), 5).unwrap();
        assert_eq!(a.host(), &Host::Dns("foo.bar".into()));
        assert_eq!(
            NetAddress::new(id(), Host::Dns("a_b".into()), 5),
            Err(NetAddressError::InvalidDnsName(DnsNameError::InvalidChar(
                '_'
            )))
        );
        assert_eq!(
            NetAddress::new(id(), Host::Dns(String::new()), 5),
            Err(NetAddressError::EmptyHost)
        );
        assert_eq!(
            NetAddress::new(id(), Host::Ip(Ipv4Addr::LOCALHOST.into()), 0),
            Err(NetAddressError::PortZero)
        );
        let sa: SocketAddr = "[::1]:9".parse().unwrap();
        let a = NetAddress::from_socket_addr(id(), sa).unwrap();
        assert_eq!(a.socket_addr(), Some(sa));
        assert_eq!(a.to_string(), format!("{ID}@[::1]:9"));
        let sa: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            NetAddress::from_socket_addr(id(), sa),
            Err(NetAddressError::PortZero)
        );
        assert_eq!(addr("example.com:1").socket_addr(), None);
    }

    #[test]
    fn validate_table() {
        use NetAddressError as E;
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let cases: Vec<(&str, Result<(), NetAddressError>)> = vec![
            (
                "0.0.0.0:1",
                Err(E::UnspecifiedIp(Ipv4Addr::UNSPECIFIED.into())),
            ),
            (
                "[::]:1",
                Err(E::UnspecifiedIp(Ipv6Addr::UNSPECIFIED.into())),
            ),
            ("255.255.255.255:1", Err(E::BroadcastIp)),
            ("[2001:db8::]:1", Err(E::DocumentationIp(v6("2001:db8::")))),
            (
                "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:1",
                Err(E::DocumentationIp(v6(
                    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                ))),
            ),
            ("[2001:db7:ffff:ffff:ffff:ffff:ffff:ffff]:1", Ok(())),
            ("[2001:db9::]:1", Ok(())),
            ("255.255.255.254:1", Ok(())),
            ("0.0.0.1:1", Ok(())),
            ("127.0.0.1:1", Ok(())),
            ("10.0.0.1:1", Ok(())),
            ("192.168.1.1:1", Ok(())),
            ("[::1]:1", Ok(())),
            ("[fe80::1]:1", Ok(())),
            ("8.8.8.8:1", Ok(())),
            ("localhost:1", Ok(())),
            ("example.com:1", Ok(())),
        ];
        for (input, want) in cases {
            assert_eq!(addr(input).validate(), want, "{input}");
        }
    }

    #[test]
    fn routability_table_covers_every_boundary() {
        let cases: Vec<(&str, bool)> = vec![
            // invalid is never routable
            ("0.0.0.0:1", false),
            ("255.255.255.255:1", false),
            ("[::]:1", false),
            ("[2001:db8::1]:1", false),
            // 0.0.0.0/8 and loopback
            ("0.255.255.255:1", false),
            ("1.0.0.0:1", true),
            ("127.0.0.1:1", false),
            ("127.255.255.255:1", false),
            ("126.255.255.255:1", true),
            ("128.0.0.0:1", true),
            ("[::1]:1", false),
            ("[::2]:1", true),
            // RFC 1918
            ("9.255.255.255:1", true),
            ("10.0.0.0:1", false),
            ("10.255.255.255:1", false),
            ("11.0.0.0:1", true),
            ("172.15.255.255:1", true),
            ("172.16.0.0:1", false),
            ("172.31.255.255:1", false),
            ("172.32.0.0:1", true),
            ("192.167.255.255:1", true),
            ("192.168.0.0:1", false),
            ("192.168.255.255:1", false),
            ("192.169.0.0:1", true),
            // RFC 3927
            ("169.253.255.255:1", true),
            ("169.254.0.0:1", false),
            ("169.254.255.255:1", false),
            ("169.255.0.0:1", true),
            // mapped IPv4 is judged as IPv4
            ("[::ffff:10.0.0.1]:1", false),
            ("[::ffff:8.8.8.8]:1", true),
            // link-local: all of fe80::/10 (TM2 checks only fe80::/64)
            ("[fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", true),
            ("[fe80::]:1", false),
            ("[fe80::ffff:ffff:ffff:ffff]:1", false),
            ("[fe80:0:0:1::]:1", false),
            ("[febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", false),
            ("[fec0::]:1", true),
            // multicast (TM2 calls it routable)
            ("223.255.255.255:1", true),
            ("224.0.0.1:1", false),
            ("239.255.255.255:1", false),
            ("240.0.0.0:1", true),
            ("[ff02::1]:1", false),
            ("[feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", true),
            // RFC 4193
            ("[fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", true),
            ("[fc00::]:1", false),
            ("[fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:1", false),
            ("[fe00::]:1", true),
            // RFC 4843
            ("[2001:f:ffff:ffff:ffff:ffff:ffff:ffff]:1", true),
            ("[2001:10::]:1", false),
            ("[2001:1f:ffff:ffff:ffff:ffff:ffff:ffff]:1", false),
            ("[2001:20::]:1", true),
            // public
            ("8.8.8.8:1", true),
            ("[2606:4700::1111]:1", true),
            // names
            ("localhost:1", false),
            ("LOCALHOST.:1", false),
            ("a.localhost:1", false),
            ("localhost.com:1", true),
            ("notlocalhost:1", true),
            ("example.com:1", true),
        ];
        for (input, want) in cases {
            let a = addr(input);
            assert_eq!(a.is_routable(), want, "{input}");
            assert_eq!(a.is_shareable(false), want, "{input}");
            assert_eq!(a.is_shareable(true), a.validate().is_ok(), "{input}");
        }
    }

    #[test]
    fn serde_forms_are_the_string() {
        let a = addr("[::1]:26656");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<NetAddress>(&json).unwrap(), a);
        let wire = crate::codec::encode(&a).unwrap();
        assert_eq!(wire, crate::codec::encode(&a.to_string()).unwrap());
        assert_eq!(crate::codec::decode::<NetAddress>(&wire, 1024).unwrap(), a);
        assert!(serde_json::from_str::<NetAddress>("\"g1@1.2.3.4:1\"").is_err());
        assert!(serde_json::from_str::<NetAddress>("7").is_err());
    }

    #[test]
    fn malformed_address_on_the_wire_is_a_decode_error() {
        for bad in ["", "1.2.3.4:1", "x@1.2.3.4:1", &format!("{ID}@1.2.3.4:0")] {
            let wire = crate::codec::encode(&bad.to_string()).unwrap();
            let e = crate::codec::decode::<NetAddress>(&wire, 1024).unwrap_err();
            assert!(
                matches!(e, crate::codec::DecodeError::Malformed(_)),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn ordering_is_total_and_deterministic() {
        let mut v = [
            addr("example.com:1"),
            addr("[::1]:1"),
            addr("1.2.3.4:2"),
            addr("1.2.3.4:1"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(NetAddress::dial_string).collect();
        assert_eq!(s, ["1.2.3.4:1", "1.2.3.4:2", "[::1]:1", "example.com:1"]);
    }

    /// Strategy for well-formed addresses of every host kind (shared with node_info tests).
    pub(crate) fn arb_net_address() -> impl Strategy<Value = NetAddress> {
        let label = "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?";
        let dns = (
            proptest::collection::vec(label, 0..4),
            "[a-z]([a-z0-9-]{0,10}[a-z0-9])?",
            any::<bool>(),
        )
            .prop_map(|(mut labels, top, dot)| {
                labels.push(top);
                let mut name = labels.join(".");
                if dot {
                    name.push('.');
                }
                Host::Dns(name)
            });
        let host = prop_oneof![
            any::<Ipv4Addr>().prop_map(|ip| Host::Ip(ip.into())),
            any::<Ipv6Addr>().prop_map(|ip| Host::Ip(ip.into())),
            dns,
        ];
        (any::<[u8; 20]>(), host, 1..=u16::MAX).prop_map(|(id, host, port)| {
            NetAddress::new(PeerId::from_bytes(id), host, port).unwrap()
        })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(a in arb_net_address()) {
            let s = a.to_string();
            prop_assert_eq!(s.parse::<NetAddress>().unwrap(), a.clone());
            prop_assert_eq!(format!("tcp://{s}").parse::<NetAddress>().unwrap(), a.clone());
            prop_assert_eq!(format!("{}@{}", a.id(), a.dial_string()), s);
        }

        #[test]
        fn codec_round_trip(a in arb_net_address()) {
            let wire = crate::codec::encode(&a).unwrap();
            prop_assert_eq!(crate::codec::decode::<NetAddress>(&wire, 1024).unwrap(), a);
        }

        #[test]
        fn socket_addr_round_trip(id in any::<[u8; 20]>(), sa in any::<SocketAddr>()) {
            let id = PeerId::from_bytes(id);
            match NetAddress::from_socket_addr(id, sa) {
                Ok(a) => {
                    let back = a.socket_addr().unwrap();
                    prop_assert_eq!(back.port(), sa.port());
                    prop_assert_eq!(back.ip(), normalize_ip(sa.ip()));
                    prop_assert_eq!(a.to_string().parse::<NetAddress>().unwrap(), a);
                }
                Err(e) => prop_assert_eq!((e, sa.port()), (NetAddressError::PortZero, 0)),
            }
        }

        #[test]
        fn random_strings_never_panic(s in ".{0,80}") {
            let _ = s.parse::<NetAddress>();
            let _ = format!("{ID}@{s}").parse::<NetAddress>();
        }

        #[test]
        fn near_miss_strings_never_panic(s in "[g1@:\\[\\]a-z0-9.%/-]{0,60}") {
            if let Ok(a) = format!("{ID}@{s}").parse::<NetAddress>() {
                prop_assert_eq!(a.to_string().parse::<NetAddress>().unwrap(), a);
            }
        }

        #[test]
        fn random_bytes_into_the_decoder_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = crate::codec::decode::<NetAddress>(&bytes, 1024);
        }
    }

    #[test]
    fn or_seen_ip_replaces_only_an_unspecified_ip() {
        let seen = IpAddr::from([10, 1, 2, 3]);
        for (input, want) in [
            ("0.0.0.0:26656", "10.1.2.3:26656"),
            ("[::]:26656", "10.1.2.3:26656"),
            ("8.8.8.8:26656", "8.8.8.8:26656"),
            ("example.com:26656", "example.com:26656"),
        ] {
            assert_eq!(addr(input).or_seen_ip(seen), addr(want), "{input}");
        }
    }
}
