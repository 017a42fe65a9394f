//! Replays the fuzzing corpus on every `cargo test`, without libFuzzer or a nightly compiler.
//!
//! For every target of `tm2_p2p::fuzzing::TARGETS`, every file of `fuzz/corpus/<target>/` is
//! run through the target's function (the same function the cargo-fuzz shim in
//! `fuzz/fuzz_targets/<target>.rs` calls). The test fails if a corpus directory is missing or
//! empty, or if any input panics, naming each failing file. The hand-written seeds below are
//! replayed too, straight from memory.
//!
//! The seeds of the wire decoders are amino, TM2's encoding: gno's own encodings (the vectors
//! of `tests/data/tm2_amino.csv`, named `gno-*`), ours, and near-misses of both (overlong
//! varints, zero values written out, fields out of order, unknown fields, truncations,
//! oversize length prefixes).
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` (re)writes the seeds into the
//! corpus as `fuzz/corpus/<target>/seed-<name>`, e.g. after `cargo fuzz cmin` dropped them,
//! and deletes the `seed-*` files of seeds that no longer exist.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use tm2_p2p::codec::amino::{self, WireType};
use tm2_p2p::fuzzing::{self, ALICE_BOB_SHARED, ALICE_EPHEMERAL_PUBLIC, TARGETS};
use tm2_p2p::mconn::packet::{self, Packet, encode_msg};
use tm2_p2p::pex::{AddressBook, AddressBookConfig, PexMessage};
use tm2_p2p::secret::{DATA_MAX, derive_secrets_and_challenge};
use tm2_p2p::types::{MAX_NODE_INFO_SIZE, NodeInfo, VersionInfo};
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
    let mut names = BTreeSet::new();
    for (target, name, input) in seeds() {
        assert!(
            names.insert((target, name.clone())),
            "seed {target}/{name} twice"
        );
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
    let mut written: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (target, name, input) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        let file = format!("seed-{name}");
        fs::write(dir.join(&file), input).unwrap();
        written.entry(target).or_default().insert(file);
    }
    // Seeds renamed or dropped since the last run.
    for (target, files) in written {
        let dir = fuzz_dir().join("corpus").join(target);
        for entry in fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if file.starts_with("seed-") && !files.contains(&file) {
                fs::remove_file(dir.join(file)).unwrap();
            }
        }
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

/// gno's encoding `name` from `tests/data/tm2_amino.csv` (rows `name,hex,description`, checked
/// against our encoders in tests/tm2_vectors.rs).
fn gno(name: &str) -> Vec<u8> {
    static ROWS: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    ROWS.get_or_init(|| {
        include_str!("data/tm2_amino.csv")
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                // Names and hex hold no commas; the description is the rest.
                let mut cols = l.splitn(3, ',');
                let name = cols.next().unwrap().to_owned();
                (name, hex::decode(cols.next().unwrap()).unwrap())
            })
            .collect()
    })
    .get(name)
    .unwrap_or_else(|| panic!("no vector {name} in tests/data/tm2_amino.csv"))
    .clone()
}

// Raw amino, for near-misses: these write what they are given, zero values included.

fn uvarint(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    amino::put_uvarint(&mut out, v);
    out
}

/// A length-delimited field, written even when empty.
fn bytes_field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    amino::put_element(&mut out, number, value);
    out
}

/// A varint field whose value bytes are given as is (overlong, too wide, zero).
fn varint_field(number: u32, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    amino::put_key(&mut out, number, WireType::Varint);
    out.extend_from_slice(raw);
    out
}

/// An Any as gno writes it (an empty value left out).
fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    amino::put_any(&mut out, type_url, value);
    out
}

/// `uvarint(len(body)) body`.
fn sized(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    amino::put_sized(&mut out, body);
    out
}

/// The fields of a canonical message body, each as its exact bytes (key included).
fn split_fields(body: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = amino::Fields::new(body);
    let (mut out, mut at) = (Vec::new(), 0);
    while fields.next().unwrap().is_some() {
        let end = body.len() - fields.remaining();
        out.push(body[at..end].to_vec());
        at = end;
    }
    out
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
    // gno's ephemeral message (key 01..20), then a frame that does not open.
    seed(
        out,
        t,
        "gno-ephemeral-then-frame",
        [vec![255], gno("sts_ephemeral_pubkey_sized"), vec![0; 1044]].concat(),
    );

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
    // The key as the amino Any gno's amino writes for a `crypto.PubKey` field.
    let any_key = |type_url: &str, key: &[u8]| any(type_url, &bytes_field(1, key));
    let any_auth =
        |key: &[u8], sig: &[u8]| sized(&[bytes_field(1, key), bytes_field(2, sig)].concat());
    let ed25519 = "/tm.PubKeyEd25519";
    seed(
        out,
        t,
        "valid-signature-any-key",
        any_auth(&any_key(ed25519, &alice_public), &sig),
    );
    seed(
        out,
        t,
        "any-key-other-type",
        any_auth(&any_key("/tm.PubKeySecp256k1", &alice_public), &sig),
    );
    seed(
        out,
        t,
        "any-key-31-bytes",
        any_auth(&any_key(ed25519, &alice_public[..31]), &sig),
    );
    seed(
        out,
        t,
        "any-key-explicit-empty-value",
        any_auth(&[any(ed25519, &[]), bytes_field(2, b"")].concat(), &sig),
    );
    // gno's auth message: key #1 signing "challenge", not our challenge.
    seed(out, t, "gno-authsig-any-key", gno("sts_authsig_sized"));
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

/// A sized `/p2p.Msg` packet around the raw msg value `value`.
fn raw_msg(value: &[u8]) -> Vec<u8> {
    sized(&any("/p2p.Msg", value))
}

fn mconn_seeds(out: &mut Vec<Seed>) {
    let t = "mconn_packet";
    // Byte 0 picks the maximum packet size; 0 is the default, 1,056 (payload 1,024).
    let at_default = |stream: &[u8]| [&[0u8][..], stream].concat();
    let ping = packet(&Packet::Ping);
    let pong = packet(&Packet::Pong);
    assert_eq!(ping, gno("packet_ping_sized"));

    // gno's packets, as its sendRoutine writes them.
    seed(out, t, "gno-ping", at_default(&gno("packet_ping_sized")));
    seed(out, t, "gno-pong", at_default(&gno("packet_pong_sized")));
    for ch in ["00", "30", "ff"] {
        for eof in [0, 1] {
            for size in ["empty", "1byte", "1024"] {
                seed(
                    out,
                    t,
                    &format!("gno-msg-ch{ch}-eof{eof}-{size}"),
                    at_default(&gno(&format!("packet_msg_sized_ch{ch}_eof{eof}_{size}"))),
                );
            }
        }
    }
    // gno's largest packet (1,048 bytes): within the maximum thanks to its slack.
    seed(
        out,
        t,
        "gno-msg-chff-eof1-1025",
        at_default(&gno("packet_msg_sized_chff_eof1_1025")),
    );
    seed(
        out,
        t,
        "gno-pex-response-30-two-packets",
        at_default(
            &[
                gno("pex_response_30_wire_pkt0"),
                gno("pex_response_30_wire_pkt1"),
            ]
            .concat(),
        ),
    );
    // Anys without their length prefix: refused as a stream, read by the body decoder.
    seed(
        out,
        t,
        "gno-ping-any-unsized",
        at_default(&gno("packet_ping_any")),
    );
    seed(
        out,
        t,
        "gno-msg-any-unsized",
        at_default(&gno("packet_msg_any_ch30_eof1_1byte")),
    );
    // Ours, every type in one stream, no maximum.
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

    // Length prefixes: the maximum holds prefix + body.
    seed(out, t, "prefix-one-over-max", [0, 0x9f, 0x08]);
    seed(out, t, "prefix-at-max-body-missing", [0, 0x9e, 0x08]);
    let over = (1..)
        .find(|&n| packet::msg_framed_len(0xff, true, n) > packet::max_packet_size(1024))
        .unwrap();
    seed(
        out,
        t,
        "msg-one-over-max",
        at_default(&msg(0xff, true, &vec![0xab; over])),
    );
    // gno accepts `8b 00` for 11; we refuse every overlong varint.
    seed(
        out,
        t,
        "overlong-prefix",
        at_default(&[&[0x8b, 0x00][..], &gno("packet_ping_any")].concat()),
    );
    let mut overflow = vec![
        0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
    ];
    seed(out, t, "prefix-overflows-u64", overflow.clone());
    overflow[0] = 3;
    overflow[10] = 0x01;
    seed(out, t, "prefix-u64-max-no-max", overflow);
    seed(out, t, "empty-packet", [0, 0x00]);
    let one_byte = gno("packet_msg_sized_ch30_eof1_1byte");
    seed(
        out,
        t,
        "msg-truncated",
        at_default(&one_byte[..one_byte.len() - 1]),
    );
    seed(
        out,
        t,
        "msg-body-truncated",
        at_default(&sized(&one_byte[1..one_byte.len() - 1])),
    );
    seed(
        out,
        t,
        "msg-trailing-zero",
        at_default(&sized(&[&one_byte[1..], &[0][..]].concat())),
    );
    // A raw maximum of 4, then a payload of 1 (maximum 30, so 5 bytes fit in the slack).
    seed(
        out,
        t,
        "tiny-max-4",
        [[2 | (4 << 2)].as_slice(), &one_byte].concat(),
    );
    seed(
        out,
        t,
        "payload-1-within-slack",
        [vec![1 | (1 << 2)], msg(0xff, true, b"12345")].concat(),
    );

    // The Any around the packet.
    let ping_any = gno("packet_ping_any");
    for (name, any_bytes) in [
        (
            "ping-explicit-empty-value",
            [ping_any.clone(), bytes_field(2, b"")].concat(),
        ),
        (
            "ping-with-value",
            [ping_any.clone(), bytes_field(2, &varint_field(1, &[1]))].concat(),
        ),
        (
            "any-unknown-field-3",
            [ping_any.clone(), bytes_field(3, b"")].concat(),
        ),
        (
            "any-type-url-twice",
            [ping_any.clone(), ping_any.clone()].concat(),
        ),
        (
            "any-value-before-type",
            [
                bytes_field(2, &varint_field(1, &[0x30])),
                bytes_field(1, b"/p2p.Msg"),
            ]
            .concat(),
        ),
        (
            "any-overlong-type-length",
            [&[0x0a, 0x89, 0x00][..], b"/p2p.Ping"].concat(),
        ),
        ("type-unknown", any("/p2p.Pinh", &[])),
        ("type-pex-request", any("/p2p.Request", &[])),
        ("type-empty", bytes_field(1, b"")),
    ] {
        seed(out, t, name, at_default(&sized(&any_bytes)));
    }

    // The Msg value: what gno refuses too, then other encodings than gno's (gno accepts them).
    for (name, value) in [
        ("msg-eof-over-8-bits", &b"\x08\x30\x10\x81\x02"[..]),
        ("msg-channel-256", b"\x08\x80\x02"),
        ("msg-out-of-order", b"\x10\x01\x08\x30"),
        ("msg-unknown-field-4", b"\x08\x30\x20\x01"),
        ("msg-eof-wrong-wire-type", b"\x08\x30\x12\x00"),
        ("msg-channel-fixed32", b"\x0d\x30\x00\x00\x00"),
        ("msg-data-past-end", b"\x1a\x05\xab"),
        ("msg-field-number-0", b"\x00\x01"),
        ("msg-wire-type-3", b"\x0b"),
        ("msg-explicit-channel-0", b"\x08\x00\x10\x01"),
        ("msg-explicit-eof-0", b"\x08\x30\x10\x00"),
        ("msg-explicit-empty-data", b"\x08\x30\x10\x01\x1a\x00"),
        ("msg-eof-2", b"\x08\x30\x10\x02"),
        ("msg-overlong-channel", b"\x08\xb0\x00"),
        ("msg-overlong-data-length", b"\x08\x30\x1a\x81\x00\xab"),
        ("msg-channel-twice", b"\x08\x30\x08\x31"),
    ] {
        seed(out, t, name, at_default(&raw_msg(value)));
    }

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
    // Packets of a payload of 4 may be 10 bytes larger (TM2's slack): 5 bytes pass, 15 do not.
    seed(
        out,
        t,
        "payload-over-config-within-slack",
        [params(0), msg(0x01, true, b"abcde")].concat(),
    );
    let over = (1..)
        .find(|&n| packet::msg_framed_len(0x01, true, n) > packet::max_packet_size(4))
        .unwrap();
    seed(
        out,
        t,
        "packet-over-max",
        [params(0), msg(0x01, true, &vec![b'x'; over])].concat(),
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
    // gno's keep-alives around our messages, in both modes.
    let gno_keepalive = [
        gno("packet_ping_sized"),
        msg(0x01, true, b"ab"),
        gno("packet_pong_sized"),
        gno("packet_ping_sized"),
    ]
    .concat();
    seed(
        out,
        t,
        "gno-keepalive-whole",
        [params(0), gno_keepalive.clone()].concat(),
    );
    seed(
        out,
        t,
        "gno-keepalive-split",
        [params(1), gno_keepalive].concat(),
    );
    seed(
        out,
        t,
        "gno-unknown-channel-0x30",
        [params(0), gno("packet_msg_sized_ch30_eof1_1byte")].concat(),
    );
    // A bad packet after good ones: what came before arrives, the error sticks.
    seed(
        out,
        t,
        "eof-2-after-messages",
        [
            params(0),
            msg(0x01, true, b"ab"),
            raw_msg(b"\x08\x01\x10\x02"),
            msg(0x01, true, b"cd"),
        ]
        .concat(),
    );
    seed(
        out,
        t,
        "overlong-prefix-midstream",
        [
            params(5),
            ping.clone(),
            vec![0x8b, 0x00],
            gno("packet_ping_any"),
        ]
        .concat(),
    );
}

fn our_address(n: u8) -> NetAddress {
    let key = NodeKey::from_seed([n; 32]).unwrap();
    format!("{}@8.8.{n}.1:26656", key.id()).parse().unwrap()
}

/// `fields` edited by `edit`, joined and sized.
fn edited(fields: &[Vec<u8>], edit: impl FnOnce(&mut Vec<Vec<u8>>)) -> Vec<u8> {
    let mut fields = fields.to_vec();
    edit(&mut fields);
    sized(&fields.concat())
}

fn node_info_seeds(out: &mut Vec<Seed>) {
    let t = "node_info";
    // gno's NodeInfos as exchanged (sized): valid, and refused by decoding or validation.
    for name in [
        "realnode",
        "full",
        "minimal",
        "ipv6",
        "unicode_moniker",
        "zero",
        "zero_emptynetaddr",
    ] {
        seed(
            out,
            t,
            &format!("gno-{}", name.replace('_', "-")),
            gno(&format!("nodeinfo_{name}_sized")),
        );
    }
    // A body alone (the target also reads the whole input as a body).
    seed(out, t, "gno-full-body", gno("nodeinfo_full"));

    // Ours.
    let base = NodeInfo::new(our_address(1), "fuzz-net", vec![0x40, 0x50]);
    seed(out, t, "valid-framed", base.encode_framed());
    seed(out, t, "valid-body", base.encode());
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
    seed(out, t, "other-network-framed", other.encode_framed());
    let mut bad = base.clone();
    bad.channels = (0..17).collect();
    seed(out, t, "too-many-channels", bad.encode_framed());
    let mut bad = base.clone();
    bad.channels = vec![0x40, 0x40];
    bad.moniker = " ".into();
    seed(out, t, "duplicate-channel-bad-moniker", bad.encode_framed());
    let mut bad = base.clone();
    bad.version_set[0].version = "v2.0.0".into();
    bad.version_set.push(VersionInfo {
        name: "p2p".into(),
        version: "v1.0.0".into(),
        optional: false,
    });
    seed(out, t, "duplicate-version-name", bad.encode_framed());
    let mut v6 = base.clone();
    v6.net_address = format!("{}@[::]:1", base.id()).parse().unwrap();
    seed(out, t, "unspecified-ipv6", v6.encode_framed());

    // Near-misses of gno's real node.
    let body = gno("nodeinfo_realnode");
    let framed = gno("nodeinfo_realnode_sized");
    assert_eq!(sized(&body), framed);
    seed(
        out,
        t,
        "realnode-overlong-prefix",
        [vec![0xe2, 0x81, 0x00], body.clone()].concat(),
    );
    // 10,239 + a 2-byte prefix: one over the limit, refused from the prefix.
    seed(
        out,
        t,
        "prefix-one-over-limit",
        [uvarint(MAX_NODE_INFO_SIZE as u64 - 1), body.clone()].concat(),
    );
    seed(
        out,
        t,
        "prefix-at-limit-body-short",
        [uvarint(MAX_NODE_INFO_SIZE as u64 - 2), body.clone()].concat(),
    );
    seed(out, t, "realnode-truncated", &framed[..framed.len() - 1]);
    seed(
        out,
        t,
        "realnode-trailing-zero",
        [framed.clone(), vec![0]].concat(),
    );
    // Fields 0-4: the version set (abci, app, bft, blockchain, p2p); 5: net address;
    // 6: network; 7: version; 8: channels; 9: moniker; 10: other.
    let f = split_fields(&body);
    assert_eq!(f.len(), 11);
    let addr = String::from_utf8(f[5][2..].to_vec()).unwrap();
    assert!(addr.len() < 0x80 && addr.ends_with(":26656"), "{addr}");
    let app = |extra: &[u8]| {
        bytes_field(
            1,
            &[
                bytes_field(1, b"app"),
                bytes_field(2, b"dev"),
                extra.to_vec(),
            ]
            .concat(),
        )
    };
    let bad_app_optional_0 = app(&varint_field(3, &[0]));
    let bad_app_optional_2 = app(&varint_field(3, &[2]));
    let bad_app_unknown = app(&bytes_field(4, b"x"));
    let overlong_key = bytes_field(1, &[&[0x8a, 0x00, 0x03][..], b"bft"].concat());
    for (name, input) in [
        // Other encodings than gno's.
        (
            "explicit-empty-software",
            edited(&f, |f| f.insert(7, bytes_field(4, b""))),
        ),
        (
            "version-optional-false-written",
            edited(&f, |f| f[1] = bad_app_optional_0),
        ),
        ("version-overlong-key", edited(&f, |f| f[2] = overlong_key)),
        (
            "address-overlong-length",
            edited(&f, |f| {
                f[5] = [&[0x12, 0x80 | addr.len() as u8, 0x00][..], addr.as_bytes()].concat();
            }),
        ),
        ("empty-other", edited(&f, |f| f[10] = bytes_field(8, b""))),
        // What gno refuses too.
        (
            "version-optional-2",
            edited(&f, |f| f[1] = bad_app_optional_2),
        ),
        (
            "version-unknown-field-4",
            edited(&f, |f| f[1] = bad_app_unknown),
        ),
        ("address-before-version-set", edited(&f, |f| f.swap(4, 5))),
        ("network-before-address", edited(&f, |f| f.swap(5, 6))),
        (
            "network-twice",
            edited(&f, |f| {
                let network = f[6].clone();
                f.insert(7, network);
            }),
        ),
        (
            "unknown-field-9",
            edited(&f, |f| f.push(varint_field(9, &[1]))),
        ),
        (
            "channels-as-varint",
            edited(&f, |f| f[8] = varint_field(6, &[0x40])),
        ),
        (
            "moniker-not-utf8",
            edited(&f, |f| f[9] = bytes_field(7, &[0xff, 0xfe])),
        ),
        ("no-net-address", edited(&f, |f| drop(f.remove(5)))),
        (
            "other-unknown-field",
            edited(&f, |f| {
                f[10] = bytes_field(8, &[bytes_field(1, b"off"), bytes_field(3, b"x")].concat());
            }),
        ),
        // Decodes, then fails validation or compatibility.
        (
            "empty-version-entry",
            edited(&f, |f| f.insert(0, bytes_field(1, b""))),
        ),
        (
            "eighteen-channels",
            edited(&f, |f| f[8] = bytes_field(6, &(0..18).collect::<Vec<u8>>())),
        ),
        (
            "network-fuzz-net",
            edited(&f, |f| f[6] = bytes_field(3, b"fuzz-net")),
        ),
        // Addresses read leniently: decoded, but printed otherwise.
        (
            "address-tcp-scheme",
            edited(&f, |f| {
                f[5] = bytes_field(2, format!("tcp://{addr}").as_bytes())
            }),
        ),
        (
            "address-port-leading-zeros",
            edited(&f, |f| {
                let zeros = addr.replace(":26656", ":0026656");
                f[5] = bytes_field(2, zeros.as_bytes());
            }),
        ),
    ] {
        seed(out, t, &format!("realnode-{name}"), input);
    }
}

fn pex_seeds(out: &mut Vec<Seed>) {
    let t = "pex_message";
    // Byte 0 is the second limit (0..=39); the default is 30.
    let with_limit = |limit: u8, msg: &[u8]| [&[limit][..], msg].concat();
    let request = gno("pex_request_any");
    let response_1 = gno("pex_response_1_any");
    let response_30 = gno("pex_response_30_any");
    assert_eq!(PexMessage::Request.encode(), request);

    // gno's messages.
    seed(out, t, "gno-request", with_limit(30, &request));
    seed(
        out,
        t,
        "gno-response-0",
        with_limit(30, &gno("pex_response_0_any")),
    );
    seed(out, t, "gno-response-1", with_limit(30, &response_1));
    seed(out, t, "gno-response-30", with_limit(30, &response_30));
    seed(
        out,
        t,
        "gno-response-30-limit-29",
        with_limit(29, &response_30),
    );
    seed(out, t, "gno-response-1-limit-0", with_limit(0, &response_1));

    // Ours.
    let good: Vec<NetAddress> = (1..=3).map(our_address).collect();
    seed(
        out,
        t,
        "response-3",
        with_limit(2, &PexMessage::Response(good.clone()).encode()),
    );
    let many: Vec<NetAddress> = (1..=31).map(our_address).collect();
    seed(
        out,
        t,
        "response-31",
        with_limit(39, &PexMessage::Response(many).encode()),
    );
    // Bad entries next to good ones (the wire form is a list of strings): skipped one by one.
    let response = |entries: &[String]| {
        let value: Vec<u8> = entries
            .iter()
            .flat_map(|e| bytes_field(1, e.as_bytes()))
            .collect();
        any("/p2p.Response", &value)
    };
    let id = our_address(9).id();
    let mixed = [
        good[0].to_string(),
        good[0].to_string(),
        format!("{id}@0.0.0.0:26656"),
        format!("{id}@[2001:db8::1]:1"),
        format!("{id}@seed.example.com.:26656"),
        format!("tcp://{id}@[::ffff:1.2.3.4]:0026656"),
        "not an address".into(),
        String::new(),
    ];
    seed(out, t, "response-mixed", with_limit(30, &response(&mixed)));
    // Read leniently: kept, but printed otherwise.
    let ids: Vec<_> = (10..14).map(|n| our_address(n).id()).collect();
    let lenient = [
        format!("tcp://{}@1.2.3.4:26656", ids[0]),
        format!("{}@[::ffff:a0a:a0a]:1", ids[1]),
        format!("{}@Seed.Example.COM:26656", ids[2]),
        format!("{}@1.2.3.4:0026656", ids[3]),
    ];
    seed(
        out,
        t,
        "response-lenient-entries",
        with_limit(30, &response(&lenient)),
    );

    // Near-misses of gno's messages.
    let (_, value) = amino::decode_any(&response_1).unwrap();
    let value = value.to_vec();
    let entry = value[2..].to_vec();
    assert_eq!(bytes_field(1, &entry), value);
    assert!(entry.len() < 0x80);
    // The Response Any with its value written even when empty.
    let raw_response =
        |value: &[u8]| [bytes_field(1, b"/p2p.Response"), bytes_field(2, value)].concat();
    for (name, msg) in [
        // Other encodings than gno's.
        (
            "request-explicit-empty-value",
            [request.clone(), bytes_field(2, b"")].concat(),
        ),
        (
            "request-overlong-type-length",
            [&[0x0a, 0x8c, 0x00][..], b"/p2p.Request"].concat(),
        ),
        ("response-explicit-empty-value", raw_response(b"")),
        (
            "response-overlong-entry-length",
            raw_response(&[&[0x0a, 0x80 | entry.len() as u8, 0x00][..], &entry].concat()),
        ),
        // What gno refuses too.
        (
            "request-with-value",
            [request.clone(), bytes_field(2, &varint_field(1, &[1]))].concat(),
        ),
        (
            "request-type-twice",
            [request.clone(), request.clone()].concat(),
        ),
        (
            "response-value-before-type",
            [bytes_field(2, &value), bytes_field(1, b"/p2p.Response")].concat(),
        ),
        (
            "response-unknown-any-field",
            [response_1.clone(), bytes_field(3, b"")].concat(),
        ),
        (
            "response-unknown-value-field",
            raw_response(&[value.clone(), bytes_field(2, b"x")].concat()),
        ),
        (
            "response-entry-as-varint",
            raw_response(&varint_field(1, &[1])),
        ),
        (
            "response-truncated",
            response_1[..response_1.len() - 1].to_vec(),
        ),
        (
            "response-trailing-zero",
            [response_1.clone(), vec![0]].concat(),
        ),
        ("type-ping", any("/p2p.Ping", &[])),
        ("type-empty", bytes_field(1, b"")),
        // Decodes, with entries skipped.
        ("response-empty-entry", raw_response(&bytes_field(1, b""))),
        (
            "response-entry-not-utf8",
            raw_response(&bytes_field(1, &[0xff, 0xfe])),
        ),
        (
            "response-same-entry-twice",
            raw_response(&[value.clone(), value.clone()].concat()),
        ),
    ] {
        seed(out, t, name, with_limit(30, &msg));
    }
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

    let t = "uvarint";
    for v in [
        0u64,
        1,
        0x7f,
        0x80,
        300,
        0x3fff,
        0x4000,
        1056,
        1057,
        10_240,
        u64::from(u32::MAX),
        1 << 63,
        u64::MAX,
    ] {
        seed(out, t, &format!("v{v}"), uvarint(v));
    }
    // gno accepts overlong forms (`8b 00` for 11); we refuse them.
    seed(out, t, "overlong-0", [0x80, 0x00]);
    seed(out, t, "overlong-11", [0x8b, 0x00]);
    seed(out, t, "overlong-3-bytes", [0xff, 0x80, 0x00]);
    seed(
        out,
        t,
        "overlong-10-bytes",
        [[0x80; 9].as_slice(), &[0x00]].concat(),
    );
    seed(
        out,
        t,
        "overflow-last-byte-2",
        [[0xff; 9].as_slice(), &[0x02]].concat(),
    );
    seed(
        out,
        t,
        "overflow-last-byte-continues",
        [[0xff; 9].as_slice(), &[0x81]].concat(),
    );
    seed(out, t, "continuation-run", [0x80; 16]);
    seed(out, t, "truncated-1", [0x80]);
    seed(out, t, "truncated-9", [0xff; 9]);
    // Sized messages (prefix and body): gno's, one cut short, one with a byte after it.
    let ping = gno("packet_ping_sized");
    seed(out, t, "gno-sized-ping", ping.clone());
    seed(out, t, "gno-sized-node-info", gno("nodeinfo_minimal_sized"));
    seed(out, t, "sized-ping-cut", &ping[..ping.len() - 1]);
    seed(out, t, "sized-ping-trailing-zero", [ping, vec![0]].concat());
    seed(out, t, "prefix-1055", [0x9f, 0x08]);
    // Anys and message bodies for the generic field reader.
    seed(out, t, "gno-any-ping", gno("packet_ping_any"));
    seed(out, t, "gno-any-msg", gno("packet_msg_any_ch30_eof1_1byte"));
    seed(out, t, "gno-any-pex-response", gno("pex_response_1_any"));
    seed(
        out,
        t,
        "gno-msg-value",
        gno("packet_msg_bare_ch30_eof1_1byte"),
    );
    let mut every_type = varint_field(1, &uvarint(300));
    amino::put_key(&mut every_type, 2, WireType::Fixed64);
    every_type.extend_from_slice(&7u64.to_le_bytes());
    every_type.extend_from_slice(&bytes_field(3, b"ab"));
    every_type.extend_from_slice(&bytes_field(3, b""));
    amino::put_key(&mut every_type, 4, WireType::Fixed32);
    every_type.extend_from_slice(&9u32.to_le_bytes());
    seed(out, t, "fields-every-wire-type", every_type);
    seed(out, t, "field-wire-type-6", [0x0e, 0x00]);
    seed(out, t, "field-number-0", [0x00, 0x01]);
    seed(
        out,
        t,
        "field-number-max",
        varint_field((1 << 29) - 1, &[1]),
    );
    seed(
        out,
        t,
        "field-number-over-max",
        [uvarint(1 << 32), vec![1]].concat(),
    );
    seed(out, t, "fields-decreasing", [0x10, 0x01, 0x08, 0x01]);
    seed(out, t, "field-length-past-end", [0x0a, 0x05, 0x01]);
    seed(out, t, "field-fixed64-cut", [0x09, 1, 2, 3]);
    seed(
        out,
        t,
        "any-explicit-empty-value",
        [gno("packet_ping_any"), bytes_field(2, b"")].concat(),
    );
}
