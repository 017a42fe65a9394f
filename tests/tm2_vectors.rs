//! Every encoding gno's own amino code writes after the handshake (tests/data/tm2_amino.csv, a
//! copy of shared/vectors/tm2_amino.csv, produced by gnolang/gno at 1bf8b2826b7d), reproduced
//! both ways through the public API: our encoder writes exactly gno's bytes, and our decoder
//! reads gno's bytes back to the value (and refuses exactly the rows gno's validation refuses).
//! Needs nothing outside the repository; always runs.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use ring::digest::{SHA256, digest};
use tm2_p2p::codec::amino::{self, AminoError, Fields};
use tm2_p2p::key::NodeKey;
use tm2_p2p::mconn::packet::{self, Packet, PacketRef};
use tm2_p2p::mconn::{ChannelDescriptor, MConnConfig, MConnection};
use tm2_p2p::pex::PexMessage;
use tm2_p2p::pex::protocol::decode as decode_pex;
use tm2_p2p::types::{
    NetAddress, NodeInfo, NodeInfoError, NodeInfoOther, VersionInfo, gnoland_version_set,
};

/// The rows of the CSV by name: (hex bytes, description).
fn rows() -> BTreeMap<String, (Vec<u8>, String)> {
    let csv = include_str!("data/tm2_amino.csv");
    let mut rows = BTreeMap::new();
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        // Names and hex hold no commas; the description (maybe quoted) is the rest.
        let mut parts = line.splitn(3, ',');
        let name = parts.next().unwrap().to_owned();
        let bytes = hex::decode(parts.next().unwrap()).unwrap();
        let description = parts.next().unwrap_or("").to_owned();
        assert!(rows.insert(name, (bytes, description)).is_none());
    }
    rows
}

/// The rows this test checks, so a row added to the file and not looked at fails the test.
struct Checked {
    rows: BTreeMap<String, (Vec<u8>, String)>,
    seen: Vec<String>,
}

impl Checked {
    fn new() -> Self {
        Self {
            rows: rows(),
            seen: Vec::new(),
        }
    }

    fn bytes(&mut self, name: &str) -> Vec<u8> {
        let (bytes, _) = self
            .rows
            .get(name)
            .unwrap_or_else(|| panic!("no row {name}"));
        self.seen.push(name.to_owned());
        bytes.clone()
    }

    fn names(&self, prefix: &str) -> Vec<String> {
        self.rows
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// The deterministic key `i` of the vectors: Ed25519 seed = SHA-256("tm2peer-vector-key-<i>").
fn vector_key(i: u32) -> NodeKey {
    let seed = digest(&SHA256, format!("tm2peer-vector-key-{i}").as_bytes());
    NodeKey::from_seed(seed.as_ref().try_into().unwrap()).unwrap()
}

fn address(key: u32, host_port: &str) -> NetAddress {
    format!("{}@{host_port}", vector_key(key).id())
        .parse()
        .unwrap()
}

fn vi(name: &str, version: &str, optional: bool) -> VersionInfo {
    VersionInfo {
        name: name.into(),
        version: version.into(),
        optional,
    }
}

/// The NodeInfo values gno encoded, by row name (without `_sized`).
fn node_infos() -> Vec<(&'static str, NodeInfo, Result<(), &'static str>)> {
    let p2p_only = vec![vi("p2p", "v1.0.0-rc.0", false)];
    let minimal = |key, host_port: &str, moniker: &str| NodeInfo {
        version_set: p2p_only.clone(),
        net_address: address(key, host_port),
        network: "tm2p2p".into(),
        software: String::new(),
        version: String::new(),
        channels: vec![0x30],
        moniker: moniker.into(),
        other: NodeInfoOther::default(),
    };
    let mut full_set = gnoland_version_set("v0.1.0");
    full_set[1].optional = true;
    vec![
        (
            "nodeinfo_realnode",
            NodeInfo {
                version_set: gnoland_version_set("dev"),
                net_address: address(1, "127.0.0.1:26656"),
                network: "test5".into(),
                software: String::new(),
                version: "v1.0.0-rc.0".into(),
                channels: vec![0x40, 0x20, 0x21, 0x22, 0x23, 0x30, 0x50],
                moniker: "gnode-1".into(),
                other: NodeInfoOther {
                    tx_index: "off".into(),
                    rpc_address: "tcp://127.0.0.1:26657".into(),
                },
            },
            Ok(()),
        ),
        (
            "nodeinfo_full",
            NodeInfo {
                version_set: full_set,
                net_address: address(2, "10.1.2.3:26656"),
                network: "gnoland-test".into(),
                software: "tm2peer".into(),
                version: "v1.2.3".into(),
                channels: vec![0x40, 0x20, 0x21, 0x22, 0x23, 0x30, 0x50],
                moniker: "full-node".into(),
                other: NodeInfoOther {
                    tx_index: "on".into(),
                    rpc_address: "tcp://0.0.0.0:26657".into(),
                },
            },
            Ok(()),
        ),
        (
            "nodeinfo_minimal",
            minimal(3, "127.0.0.1:26656", "m"),
            Ok(()),
        ),
        ("nodeinfo_ipv6", minimal(4, "[::1]:26656", "v6"), Ok(())),
        (
            "nodeinfo_unicode_moniker",
            minimal(5, "127.0.0.1:26656", "nœud-ü-🚀"),
            Err("invalid node moniker"),
        ),
    ]
}

#[test]
fn every_row_is_checked() {
    let mut c = Checked::new();
    node_info_rows(&mut c);
    packet_rows(&mut c);
    pex_rows(&mut c);
    // The two handshake frames are checked by the secret module's unit tests (their encoders
    // are internal): src/secret/wire.rs.
    c.seen.push("sts_ephemeral_pubkey_sized".into());
    c.seen.push("sts_authsig_sized".into());
    c.seen.sort();
    c.seen.dedup();
    let all: Vec<String> = c.rows.keys().cloned().collect();
    assert_eq!(c.seen, all, "rows not checked");
    assert_eq!(all.len(), 57);
}

fn node_info_rows(c: &mut Checked) {
    for (name, info, validity) in node_infos() {
        let bare = c.bytes(name);
        let sized = c.bytes(&format!("{name}_sized"));
        assert_eq!(hex::encode(info.encode()), hex::encode(&bare), "{name}");
        assert_eq!(
            hex::encode(info.encode_framed()),
            hex::encode(&sized),
            "{name}"
        );
        assert_eq!(NodeInfo::decode(&bare).unwrap(), info, "{name}");
        assert_eq!(NodeInfo::decode_framed(&sized).unwrap(), info, "{name}");
        let (prefix, body) = NodeInfo::frame_header(&sized).unwrap().unwrap();
        assert_eq!(prefix + body, sized.len());
        match validity {
            Ok(()) => info.validate().unwrap(),
            Err(why) => {
                assert!(c.rows[name].1.contains(why), "{name}");
                assert_eq!(info.validate(), Err(NodeInfoError::InvalidMoniker));
            }
        }
    }
    // What the real node looks like on the wire: `e2 01` and 226 bytes.
    assert_eq!(&c.bytes("nodeinfo_realnode_sized")[..2], [0xe2, 0x01]);

    // The zero NodeInfo: gno encodes it to nothing (`00` sized), decodes it, and refuses it in
    // validation (no net address). Our NodeInfo always has an address: decoding refuses.
    assert!(c.bytes("nodeinfo_zero").is_empty());
    assert_eq!(
        NodeInfo::decode(&[]),
        Err(NodeInfoError::Decode(AminoError::MissingField(2)))
    );
    assert_eq!(
        NodeInfo::decode_framed(&c.bytes("nodeinfo_zero_sized")),
        Err(NodeInfoError::Decode(AminoError::MissingField(2)))
    );
    // An empty NetAddress marshals as "<nil>:0", which gno itself cannot read back.
    for name in [
        "nodeinfo_zero_emptynetaddr",
        "nodeinfo_zero_emptynetaddr_sized",
    ] {
        let bytes = c.bytes(name);
        let result = if name.ends_with("_sized") {
            NodeInfo::decode_framed(&bytes)
        } else {
            NodeInfo::decode(&bytes)
        };
        assert!(
            matches!(result, Err(NodeInfoError::NetAddress(_))),
            "{name}: {result:?}"
        );
    }
    let (empty, why) = &c.rows["nodeinfo_zero_emptynetaddr_roundtrip_error"];
    assert!(empty.is_empty() && why.contains("invalid net address"));
    c.seen
        .push("nodeinfo_zero_emptynetaddr_roundtrip_error".into());

    // A NetAddress on its own is its `id@ip:port` string.
    let bytes = c.bytes("netaddress_string");
    let mut fields = Fields::new(&bytes);
    let text = fields.next().unwrap().unwrap().str().unwrap();
    assert_eq!(fields.next(), Ok(None));
    let addr: NetAddress = text.parse().unwrap();
    assert_eq!(addr, address(1, "127.0.0.1:26656"));
    let mut again = Vec::new();
    amino::put_element(&mut again, 1, addr.to_string().as_bytes());
    assert_eq!(again, bytes);
}

/// The payload gno's vectors carry: bytes `j % 256`, except a 1-byte payload, `ab`.
fn payload(len: usize) -> Vec<u8> {
    if len == 1 {
        vec![0xab]
    } else {
        (0..len).map(|j| (j % 256) as u8).collect()
    }
}

fn framed(p: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode_framed(&mut out);
    out
}

fn packet_rows(c: &mut Checked) {
    let max = packet::max_packet_size(1024);
    for (name, p) in [
        ("packet_ping_sized", Packet::Ping),
        ("packet_pong_sized", Packet::Pong),
    ] {
        let bytes = c.bytes(name);
        assert_eq!(framed(&p), bytes, "{name}");
        assert_eq!(
            packet::decode_framed(&bytes, max).unwrap(),
            Some((p.as_ref(), bytes.len()))
        );
    }
    let ping_any = c.bytes("packet_ping_any");
    assert_eq!(packet::decode_body(&ping_any), Ok(PacketRef::Ping));
    assert_eq!(framed(&Packet::Ping)[1..], ping_any[..]);

    let any = c.bytes("packet_msg_any_ch30_eof1_1byte");
    let msg = PacketRef::Msg {
        channel: 0x30,
        eof: true,
        data: &[0xab],
    };
    assert_eq!(packet::decode_body(&any), Ok(msg));
    assert_eq!(framed(&msg.to_packet())[1..], any[..]);
    // The Msg value inside the Any.
    let bare = c.bytes("packet_msg_bare_ch30_eof1_1byte");
    let mut wrapped = Vec::new();
    amino::put_any(&mut wrapped, packet::MSG_TYPE, &bare);
    assert_eq!(wrapped, any);

    let names = c.names("packet_msg_sized_");
    assert_eq!(names.len(), 24);
    for name in names {
        // packet_msg_sized_ch<hex>_eof<0|1>_<empty|1byte|1024|1025>
        let parts: Vec<&str> = name["packet_msg_sized_".len()..].split('_').collect();
        let channel = u8::from_str_radix(&parts[0][2..], 16).unwrap();
        let eof = parts[1] == "eof1";
        let data = payload(match parts[2] {
            "empty" => 0,
            "1byte" => 1,
            n => n.parse().unwrap(),
        });
        let bytes = c.bytes(&name);
        let mut ours = Vec::new();
        packet::encode_msg(channel, eof, &data, &mut ours);
        assert_eq!(hex::encode(&ours), hex::encode(&bytes), "{name}");
        assert_eq!(
            ours.len(),
            packet::msg_framed_len(channel, eof, data.len()),
            "{name}"
        );
        let want = PacketRef::Msg {
            channel,
            eof,
            data: &data,
        };
        assert_eq!(
            packet::decode_framed(&bytes, max),
            Ok(Some((want, bytes.len()))),
            "{name}"
        );
        assert!(bytes.len() <= max, "{name}");
    }
    let size = c.bytes("max_packet_msg_size_payload1024");
    assert_eq!(u32::from_be_bytes(size.try_into().unwrap()), 1056);
    assert_eq!(max, 1056);
}

/// The packets our connection writes for one message on channel 0x50, as gno's
/// `Channel.nextPacketMsg` splits it (1,024 bytes a packet).
fn wire_packets(message: &[u8]) -> Vec<Vec<u8>> {
    #[allow(clippy::disallowed_methods)] // Any instant: the core only compares instants.
    let now = Instant::now();
    let mut conn = MConnection::new(
        &MConnConfig::default(),
        &[ChannelDescriptor::new(0x50)],
        now,
    )
    .unwrap();
    conn.try_send(0x50, Bytes::copy_from_slice(message))
        .unwrap();
    let mut out = Vec::new();
    while conn.poll_transmit(now, &mut out).bytes > 0 {}
    let mut packets = Vec::new();
    let mut rest = &out[..];
    while let Some((_, used)) = packet::decode_framed(rest, 1056).unwrap() {
        packets.push(rest[..used].to_vec());
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    packets
}

fn pex_rows(c: &mut Checked) {
    let request = c.bytes("pex_request_any");
    assert_eq!(PexMessage::Request.encode(), request);
    assert_eq!(decode_pex(&request).unwrap().message, PexMessage::Request);
    assert_eq!(wire_packets(&request), vec![c.bytes("pex_request_wire")]);

    for n in [0u32, 1, 30] {
        let addrs: Vec<NetAddress> = (0..n)
            .map(|i| address(100 + i, &format!("127.0.0.{}:{}", 1 + i, 26656 + i)))
            .collect();
        let any = c.bytes(&format!("pex_response_{n}_any"));
        let response = PexMessage::Response(addrs.clone());
        assert_eq!(hex::encode(response.encode()), hex::encode(&any), "{n}");
        let decoded = decode_pex(&any).unwrap();
        assert_eq!((decoded.message, decoded.skipped), (response, 0), "{n}");
        let wire: Vec<Vec<u8>> = c
            .names(&format!("pex_response_{n}_wire_pkt"))
            .iter()
            .map(|name| c.bytes(name))
            .collect();
        assert_eq!(wire.len(), if n == 30 { 2 } else { 1 });
        assert_eq!(wire_packets(&any), wire, "{n}");
    }
    // gno refuses the empty response (ValidateBasic: no peers received); we read it as an
    // answer with nothing in it, and never send one (actors/pex.rs).
    assert!(c.rows["pex_response_0_any"].1.contains("FAILS"));
}
