//! Replays the fuzzing corpus on every `cargo test`, without libFuzzer or a nightly compiler.
//!
//! For every target of `tm2_p2p::fuzzing::TARGETS`, every file of `fuzz/corpus/<target>/` is
//! run through the target's function (the same function the cargo-fuzz shim in
//! `fuzz/fuzz_targets/<target>.rs` calls). The test fails if a corpus directory is missing or
//! empty, or if any input panics, naming each failing file. The hand-written seeds below are
//! replayed too, straight from memory.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` (re)writes the seeds into the
//! corpus as `fuzz/corpus/<target>/seed-<name>`, e.g. after `cargo fuzz cmin` dropped them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tm2_p2p::fuzzing::{self, ALICE_BOB_SHARED, ALICE_EPHEMERAL_PUBLIC, TARGETS};
use tm2_p2p::mconn::packet::{Packet, encode_msg};
use tm2_p2p::pex::{AddressBook, AddressBookConfig, PexMessage};
use tm2_p2p::secret::{DATA_MAX, derive_secrets_and_challenge};
use tm2_p2p::types::{NodeInfo, VersionInfo};
use tm2_p2p::{NetAddress, NodeKey, P2pConfig, PeerId};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn target_fn(name: &str) -> fuzzing::Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// Runs `f(input)`, turning a panic into its message.
fn run(f: fuzzing::Target, input: &[u8]) -> Result<(), String> {
    panic::catch_unwind(AssertUnwindSafe(|| f(input))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".to_owned())
    })
}

#[test]
fn every_corpus_file_replays_without_a_finding() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, f) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                failures.push(format!("{}: missing corpus directory ({e})", dir.display()));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        if files.is_empty() {
            failures.push(format!("{}: empty corpus directory", dir.display()));
        }
        for file in files {
            let input = fs::read(&file).unwrap();
            total += 1;
            if let Err(msg) = run(*f, &input) {
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_seed_replays_without_a_finding() {
    let mut failures = Vec::new();
    for (target, name, input) in seeds() {
        if let Err(msg) = run(target_fn(target), &input) {
            failures.push(format!("{target}/seed-{name}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The cargo-fuzz crate, the corpus and `TARGETS` name the same targets.
#[test]
fn fuzz_crate_and_corpus_match_the_target_list() {
    let names: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let listed = |dir: &str, strip: &str| -> BTreeSet<String> {
        fs::read_dir(fuzz_dir().join(dir))
            .unwrap()
            .map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(strip).unwrap_or(&name).to_owned()
            })
            .collect()
    };
    assert_eq!(listed("fuzz_targets", ".rs"), names, "fuzz/fuzz_targets/");
    assert_eq!(listed("corpus", ""), names, "fuzz/corpus/");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &names {
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
    let script =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fuzz.sh")).unwrap();
    for name in &names {
        assert!(
            script.contains(name.as_str()),
            "scripts/fuzz.sh does not run {name}"
        );
    }
}

/// Writes the seeds into the corpus (see the module docs).
#[test]
#[ignore = "writes files: run by hand to refresh the seeds in fuzz/corpus"]
fn write_seeds() {
    for (target, name, input) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), input).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written seeds: valid encodings and the edge cases next to them.
// ---------------------------------------------------------------------------------------------

type Seed = (&'static str, String, Vec<u8>);

fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    handshake_seeds(&mut out);
    frame_seeds(&mut out);
    mconn_seeds(&mut out);
    node_info_seeds(&mut out);
    pex_seeds(&mut out);
    address_book_seeds(&mut out);
    config_seeds(&mut out);
    key_seeds(&mut out);
    string_seeds(&mut out);
    out
}

fn seed(out: &mut Vec<Seed>, target: &'static str, name: &str, input: impl Into<Vec<u8>>) {
    out.push((target, name.to_owned(), input.into()));
}

/// `(seed, public key, id)` of the TM2 node-id vectors.
fn node_vectors() -> Vec<([u8; 32], Vec<u8>, String)> {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tm2_node_ids.csv"),
    )
    .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split(',').map(str::trim).collect();
            let seed: [u8; 32] = hex::decode(cols[0]).unwrap().try_into().unwrap();
            (seed, hex::decode(cols[1]).unwrap(), cols[2].to_owned())
        })
        .collect()
}

fn ephemeral_msg(key: &[u8; 32]) -> Vec<u8> {
    let mut m = vec![0x22, 0x0a, 0x20];
    m.extend_from_slice(key);
    m
}

fn auth_msg(public: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut m = vec![0x64, 0x0a, 0x20];
    m.extend_from_slice(public);
    m.extend_from_slice(&[0x12, 0x40]);
    m.extend_from_slice(sig);
    m
}

fn handshake_seeds(out: &mut Vec<Seed>) {
    let t = "handshake";
    let eph = ephemeral_msg(&ALICE_EPHEMERAL_PUBLIC);
    for chunk in [0u8, 7, 255] {
        let mut m = vec![chunk];
        m.extend_from_slice(&eph);
        m.extend_from_slice(&[0; 1044]);
        seed(out, t, &format!("ephemeral-then-frame-chunk{chunk}"), m);
    }
    seed(
        out,
        t,
        "low-order-zero-key",
        [[255].as_slice(), &ephemeral_msg(&[0; 32])].concat(),
    );
    let mut high = [0xff; 32];
    high[0] = 0xec;
    high[31] = 0x7f;
    seed(
        out,
        t,
        "low-order-p-minus-1",
        [[255].as_slice(), &ephemeral_msg(&high)].concat(),
    );
    // The same message with a two-byte length prefix and field length (non-canonical).
    let mut long = vec![255, 0xa3, 0x00, 0x0a, 0xa0, 0x00];
    long.extend_from_slice(&ALICE_EPHEMERAL_PUBLIC);
    seed(out, t, "ephemeral-overlong-varints", long);
    seed(out, t, "prefix-over-cap", [255, 0x80, 0x08]);
    seed(out, t, "prefix-overflows-u64", [255; 12]);
    seed(out, t, "ephemeral-trailing-field", {
        let mut m = vec![255, 0x24, 0x0a, 0x20];
        m.extend_from_slice(&ALICE_EPHEMERAL_PUBLIC);
        m.extend_from_slice(&[0x12, 0x00]);
        m
    });

    let t = "handshake_auth";
    let challenge = derive_secrets_and_challenge(&ALICE_BOB_SHARED, true).challenge;
    let (alice_seed, alice_public, _) = node_vectors().remove(0);
    let alice = NodeKey::from_seed(alice_seed).unwrap();
    let sig = alice.sign(&challenge);
    seed(out, t, "valid-signature", auth_msg(&alice_public, &sig));
    let mut bad = sig;
    bad[0] ^= 1;
    seed(out, t, "bad-signature", auth_msg(&alice_public, &bad));
    seed(out, t, "signature-by-other-key", auth_msg(&[7; 32], &sig));
    let mut long = vec![0xe5, 0x00, 0x0a, 0xa0, 0x00];
    long.extend_from_slice(&alice_public);
    long.extend_from_slice(&[0x12, 0xc0, 0x00]);
    long.extend_from_slice(&sig);
    seed(out, t, "valid-signature-overlong-varints", long);
    let mut trailing = auth_msg(&alice_public, &sig);
    trailing[0] += 2;
    trailing.extend_from_slice(&[0x1a, 0x00]);
    seed(out, t, "valid-signature-extra-field", trailing);
    seed(
        out,
        t,
        "truncated",
        auth_msg(&alice_public, &sig)[..60].to_vec(),
    );
    seed(out, t, "empty", []);
    seed(out, t, "max-data", vec![0x64; DATA_MAX]);
}

fn frame_seeds(out: &mut Vec<Seed>) {
    let t = "frame_open";
    for (name, len) in [
        ("len0", 0u32),
        ("len1", 1),
        ("len1024", 1024),
        ("len1025", 1025),
        ("len-max", u32::MAX),
    ] {
        let mut m = vec![1];
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(b"data bytes of the frame");
        seed(out, t, &format!("sealed-{name}"), m);
    }
    seed(
        out,
        t,
        "forged-two-frames",
        [vec![0], vec![0x5a; 2 * 1044]].concat(),
    );
}

fn packet(p: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode_framed(&mut out);
    out
}

fn msg(channel: u8, eof: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_msg(channel, eof, data, &mut out);
    out
}

fn mconn_seeds(out: &mut Vec<Seed>) {
    let t = "mconn_packet";
    let ping = packet(&Packet::Ping);
    let pong = packet(&Packet::Pong);
    seed(out, t, "ping", [vec![0], ping.clone()].concat());
    seed(out, t, "pong", [vec![0], pong.clone()].concat());
    seed(
        out,
        t,
        "msg-hello",
        [vec![0], msg(0x40, true, b"hello")].concat(),
    );
    seed(
        out,
        t,
        "msg-1024",
        [vec![0], msg(0x20, false, &[0xab; 1024])].concat(),
    );
    seed(
        out,
        t,
        "msg-1025-over-default",
        [vec![0], msg(0x20, true, &[1; 1025])].concat(),
    );
    seed(
        out,
        t,
        "msg-empty",
        [vec![0], msg(0x01, true, b"")].concat(),
    );
    seed(
        out,
        t,
        "stream",
        [
            vec![3],
            ping.clone(),
            msg(1, false, b"ab"),
            pong.clone(),
            msg(1, true, b"c"),
        ]
        .concat(),
    );
    seed(out, t, "overlong-prefix", [0, 0xfb, 0x02, 0x00, 0x00, 0x00]);
    seed(out, t, "bad-marker", [0, 0xfe, 0x00]);
    seed(out, t, "bad-eof", [0, 0x05, 0x02, 0x40, 0x02, 0x01, b'x']);
    seed(out, t, "unknown-type", [0, 0x01, 0x03]);
    seed(
        out,
        t,
        "data-length-disagrees",
        [0, 0x06, 0x02, 0x40, 0x01, 0x05, b'x', b'y'],
    );
    seed(out, t, "trailing-after-ping", [0, 0x02, 0x00, 0x00]);
    seed(
        out,
        t,
        "huge-prefix",
        [3, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    seed(
        out,
        t,
        "tiny-max",
        [
            2 | (4 << 2),
            0x09,
            0x02,
            0x40,
            0x01,
            0x05,
            b'h',
            b'e',
            b'l',
            b'l',
            b'o',
        ],
    );

    let t = "mconn_recv";
    // payload 4, chunk 3, channel 0x01 limit 10.
    let params = |flags: u8| vec![3u8, 2, 9, flags];
    let conversation = [
        ping.clone(),
        msg(0x01, false, b"abcd"),
        pong.clone(),
        msg(0x01, false, b"efgh"),
        msg(0x40, true, b"one"),
        msg(0x01, true, b"ij"),
        ping.clone(),
        ping.clone(),
        msg(0x40, false, b"1234"),
        msg(0x40, false, b"5678"),
        msg(0x40, true, b"9abc"),
        msg(0x02, true, b"late"),
    ]
    .concat();
    for flags in [0u8, 1, 2, 4, 5, 7] {
        seed(
            out,
            t,
            &format!("conversation-flags{flags}"),
            [params(flags), conversation.clone()].concat(),
        );
    }
    seed(
        out,
        t,
        "message-over-limit",
        [
            params(0),
            msg(0x01, false, b"abcd"),
            msg(0x01, false, b"efgh"),
            msg(0x01, true, b"ijk"),
        ]
        .concat(),
    );
    seed(
        out,
        t,
        "packet-over-max",
        [params(0), msg(0x01, true, b"abcde")].concat(),
    );
    seed(
        out,
        t,
        "unknown-channel",
        [params(1), msg(0x09, true, b"x")].concat(),
    );
    seed(
        out,
        t,
        "empty-messages",
        [params(0), msg(0x01, true, b""), msg(0x40, true, b"")].concat(),
    );
    seed(out, t, "ping-flood", [params(1), ping.repeat(200)].concat());
}

fn our_address(n: u8) -> NetAddress {
    let key = NodeKey::from_seed([n; 32]).unwrap();
    format!("{}@8.8.{n}.1:26656", key.id()).parse().unwrap()
}

fn node_info_seeds(out: &mut Vec<Seed>) {
    let t = "node_info";
    let base = NodeInfo::new(our_address(1), "fuzz-net", vec![0x40, 0x50]);
    seed(out, t, "valid-framed", base.encode_framed().unwrap());
    seed(out, t, "valid-body", base.encode().unwrap());
    let mut other = base.clone();
    other.network = "other-net".into();
    other.version_set.push(VersionInfo {
        name: "app".into(),
        version: "v2.1.0-rc.1+build".into(),
        optional: true,
    });
    other.moniker = "a node".into();
    other.other.rpc_address = "tcp://127.0.0.1:26657".into();
    other.other.tx_index = "on".into();
    seed(
        out,
        t,
        "other-network-framed",
        other.encode_framed().unwrap(),
    );
    let mut bad = base.clone();
    bad.channels = (0..17).collect();
    seed(out, t, "too-many-channels", bad.encode_framed().unwrap());
    let mut bad = base.clone();
    bad.channels = vec![0x40, 0x40];
    bad.moniker = " ".into();
    seed(
        out,
        t,
        "duplicate-channel-bad-moniker",
        bad.encode_framed().unwrap(),
    );
    let mut bad = base.clone();
    bad.version_set[0].version = "v2.0.0".into();
    bad.version_set.push(VersionInfo {
        name: "p2p".into(),
        version: "v1.0.0".into(),
        optional: false,
    });
    seed(
        out,
        t,
        "duplicate-version-name",
        bad.encode_framed().unwrap(),
    );
    let mut v6 = base.clone();
    v6.net_address = format!("{}@[::]:1", base.id()).parse().unwrap();
    seed(out, t, "unspecified-ipv6", v6.encode_framed().unwrap());
    seed(out, t, "prefix-over-limit", [0xfb, 0x01, 0x28]);
    seed(out, t, "prefix-bad-marker", [0xff]);
    let mut long = base.encode_framed().unwrap();
    long.truncate(long.len() - 3);
    seed(out, t, "truncated", long);
}

fn pex_seeds(out: &mut Vec<Seed>) {
    let t = "pex_message";
    seed(
        out,
        t,
        "request",
        [vec![30], PexMessage::Request.encode().unwrap()].concat(),
    );
    let good: Vec<NetAddress> = (1..=3).map(our_address).collect();
    seed(
        out,
        t,
        "response-3",
        [
            vec![2],
            PexMessage::Response(good.clone()).encode().unwrap(),
        ]
        .concat(),
    );
    seed(
        out,
        t,
        "response-empty",
        [vec![0], PexMessage::Response(vec![]).encode().unwrap()].concat(),
    );
    let many: Vec<NetAddress> = (1..=31).map(our_address).collect();
    seed(
        out,
        t,
        "response-31",
        [vec![39], PexMessage::Response(many).encode().unwrap()].concat(),
    );
    // Bad entries next to good ones: the wire form is a list of strings.
    let id = our_address(9).id();
    let entries: Vec<String> = vec![
        good[0].to_string(),
        good[0].to_string(),
        format!("{id}@0.0.0.0:26656"),
        format!("{id}@[2001:db8::1]:1"),
        format!("{id}@seed.example.com.:26656"),
        format!("tcp://{id}@[::ffff:1.2.3.4]:0026656"),
        "not an address".into(),
        String::new(),
    ];
    let bytes = tm2_p2p::codec::encode(&(1u8, entries)).unwrap();
    seed(out, t, "response-mixed", [vec![30], bytes].concat());
}

fn address_book_seeds(out: &mut Vec<Seed>) {
    let t = "address_book";
    let own = NodeKey::from_seed([0xb2; 32]).unwrap().id();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut book = AddressBook::new(own, AddressBookConfig::default());
    for n in 1..=5 {
        book.add(our_address(n), own, t0);
    }
    book.mark_attempt(&our_address(1).id(), t0);
    book.mark_good(&our_address(1).id(), t0);
    book.mark_attempt(&our_address(2).id(), t0);
    book.mark_failed(&our_address(2).id(), t0);
    book.ban(our_address(3).id(), t0 + Duration::from_secs(600));
    seed(out, t, "valid", book.to_json());
    let id = our_address(7).id();
    let extreme = format!(
        r#"{{"version":1,"entries":[
  {{"addr":"{id}@1.2.3.4:5","source":"{id}","last_seen":18446744073709551615,
    "last_attempt":18446744073709551615,"last_success":null,"failures":4294967295}}],
 "bans":[{{"id":"{id}","until":18446744073709551615}}]}}"#
    );
    seed(out, t, "extreme-times", extreme);
    let oddities = format!(
        r#"{{"version":1,"entries":[
  {{"addr":"{own}@1.2.3.4:5","source":"{own}","last_seen":0,"last_attempt":null,"last_success":null,"failures":0}},
  {{"addr":"{id}@0.0.0.0:5","source":"{id}","last_seen":0,"last_attempt":null,"last_success":null,"failures":0}},
  {{"addr":"junk","source":"junk","last_seen":0,"last_attempt":null,"last_success":null,"failures":0}},
  {{"addr":"{id}@example.com:5","source":"{own}","last_seen":1,"last_attempt":2,"last_success":3,"failures":1}},
  {{"addr":"{id}@example.org:5","source":"{own}","last_seen":1,"last_attempt":2,"last_success":3,"failures":0}}]}}"#
    );
    seed(out, t, "own-id-invalid-duplicate-no-bans", oddities);
    seed(out, t, "version-2", r#"{"version":2,"entries":[]}"#);
    seed(out, t, "not-json", "\x00garbage{");
}

fn config_seeds(out: &mut Vec<Seed>) {
    let t = "config";
    seed(
        out,
        t,
        "default-commented",
        P2pConfig::default().to_commented_toml().unwrap(),
    );
    let (a, b) = (our_address(1), our_address(2));
    seed(
        out,
        t,
        "tm2-style",
        format!(
            "laddr = \"tcp://0.0.0.0:26656\"\nexternal_address = \"\"\nseeds = \"{a}\"\n\
             persistent_peers = \"{a},{b}\"\nprivate_peer_ids = \"{}\"\nflush_throttle_timeout = \"100ms\"\n\
             max_num_inbound_peers = 40\nmax_num_outbound_peers = 10\nsend_rate = 5120000\n\
             recv_rate = 0\npex = true\nseed_mode = true\nmoniker = \"node-1\"\n",
            b.id()
        ),
    );
    seed(
        out,
        t,
        "durations",
        "ping_interval = \"1ns\"\npong_timeout = \"1ns\"\nhandshake_timeout = \"584542046090years\"\n",
    );
    seed(
        out,
        t,
        "pong-not-below-ping",
        "ping_interval = \"10s\"\npong_timeout = \"10s\"\n",
    );
    seed(out, t, "unknown-key", "no_such_key = 1\n");
    seed(
        out,
        t,
        "payload-limits",
        "max_packet_msg_payload_size = 1048576\naddr_book_size = 1\n",
    );
    seed(
        out,
        t,
        "ipv6-external",
        "external_address = \"[2001:db8::1]:26656\"\nladdr = \"[::]:0\"\n",
    );
}

fn key_seeds(out: &mut Vec<Seed>) {
    let t = "node_key";
    for (i, (seed_bytes, public, _)) in node_vectors().into_iter().enumerate().take(3) {
        let key = NodeKey::from_seed(seed_bytes).unwrap();
        assert_eq!(key.public_key().as_slice(), public.as_slice());
        seed(out, t, &format!("tm2-vector-{i}"), key.to_key_file_json());
        seed(
            out,
            t,
            &format!("raw-vector-{i}"),
            key.to_keypair_bytes().to_vec(),
        );
    }
    let key = NodeKey::from_seed([1; 32]).unwrap();
    let mut pair = key.to_keypair_bytes();
    pair[63] ^= 1;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
    seed(
        out,
        t,
        "public-half-mismatch",
        format!("{{\"priv_key\":\"{b64}\"}}"),
    );
    seed(out, t, "short", "{\"priv_key\":\"AAAA\"}");
    seed(out, t, "bad-base64", "{\"priv_key\":\"!!!!\"}");
    seed(
        out,
        t,
        "extra-field",
        format!("{{\"priv_key\":\"{b64}\",\"x\":1}}"),
    );
    seed(
        out,
        t,
        "tm2-amino-shape",
        "{\"priv_key\":{\"@type\":\"/tm.PrivKeyEd25519\",\"value\":\"AAAA\"}}",
    );
}

fn string_seeds(out: &mut Vec<Seed>) {
    let t = "net_address";
    let id: PeerId = node_vectors()[0].2.parse().unwrap();
    for (name, s) in [
        ("ipv4", format!("{id}@1.2.3.4:26656")),
        ("scheme", format!("tcp://{id}@127.0.0.1:1")),
        ("ipv6", format!("{id}@[2001:4860::8888]:443")),
        ("ipv4-mapped", format!("{id}@[::ffff:10.0.0.1]:5")),
        ("dns", format!("{id}@Seed-1.Example.COM.:26656")),
        ("localhost", format!("{id}@localhost:26656")),
        ("numeric-name", format!("{id}@256.1.1.1:1")),
        ("port-zero", format!("{id}@1.2.3.4:0")),
        ("port-leading-zeros", format!("{id}@1.2.3.4:000080")),
        ("two-at", format!("{id}@{id}@1.2.3.4:1")),
        ("unbracketed-v6", format!("{id}@::1:80")),
        ("id-only", id.to_string()),
        ("id-upper", id.to_string().to_uppercase()),
        ("id-bad-checksum", format!("{}q", &id.to_string()[..39])),
        (
            "id-other-prefix",
            "cosmos1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc5lzv7xu".to_owned(),
        ),
    ] {
        seed(out, t, name, s);
    }
    seed(out, t, "codec-peer-id", id.as_bytes().to_vec());
    let addr: NetAddress = format!("{id}@1.2.3.4:26656").parse().unwrap();
    seed(
        out,
        t,
        "codec-address",
        tm2_p2p::codec::encode(&addr).unwrap(),
    );

    let t = "varint";
    for v in [
        0u64,
        250,
        251,
        0xffff,
        0x1_0000,
        0xffff_ffff,
        0x1_0000_0000,
        u64::MAX,
    ] {
        let mut b = Vec::new();
        tm2_p2p::codec::varint::put(&mut b, v);
        seed(out, t, &format!("v{v}"), b);
    }
    seed(out, t, "overlong-u16", [0xfb, 0x05, 0x00]);
    seed(out, t, "overlong-u64", [0xfd, 1, 0, 0, 0, 0, 0, 0, 0]);
    seed(out, t, "marker-fe", [0xfe]);
    seed(out, t, "truncated-u32", [0xfc, 1, 2]);
}
