//! README.md cannot drift from the code:
//! - its configuration reference lists every `P2pConfig` field, each with exactly its default,
//!   and no field that does not exist;
//! - its "use it from Rust" snippet is the body of [`readme_api`] below, which compiles here
//!   and runs against a real second node.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tm2_p2p::{
    NetAddress, NodeKey, P2pConfig, PeerAdded, PeerRemoved, Receive, SwitchBuilder, SwitchEvent,
};

const README: &str = include_str!("../README.md");
const CONFIG_START: &str = "<!-- config-reference:start -->";
const CONFIG_END: &str = "<!-- config-reference:end -->";
const API_START: &str = "<!-- api:start -->";
const API_END: &str = "<!-- api:end -->";
/// What the README writes in the default column of a field whose default is no value at all
/// (an `Option` that is `None` and not written by `to_toml_string`).
const UNSET: &str = "unset";

/// The text between two markers of the README.
fn section(start: &str, end: &str) -> &'static str {
    let from = README
        .find(start)
        .unwrap_or_else(|| panic!("README.md has no {start}"));
    let to = README[from..]
        .find(end)
        .unwrap_or_else(|| panic!("README.md has no {end} after {start}"));
    &README[from + start.len()..from + to]
}

/// One row of the README's configuration reference: `` | `key` | `default` | meaning | ``.
#[derive(Debug)]
struct Row {
    default: String,
    meaning: String,
}

/// The reference rows by key. A table row is a line starting with `` | ` ``; header and
/// separator rows and everything else (headings, prose) are skipped.
fn readme_rows() -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for line in section(CONFIG_START, CONFIG_END).lines() {
        let line = line.trim();
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 3,
            "a reference row needs key | default | meaning: {line}"
        );
        let key = unquote(cells[0]).unwrap_or_else(|| panic!("key not in backticks: {line}"));
        let default = if cells[1] == UNSET {
            UNSET.to_owned()
        } else {
            unquote(cells[1])
                .unwrap_or_else(|| panic!("default neither `value` nor {UNSET}: {line}"))
                .to_owned()
        };
        let meaning = cells[2..].join("|").trim().to_owned();
        let row = Row { default, meaning };
        assert!(
            rows.insert(key.to_owned(), row).is_none(),
            "README lists `{key}` twice"
        );
    }
    rows
}

/// `` `text` `` without its backticks.
fn unquote(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`')
}

/// Every key `P2pConfig` accepts, from its `Deserialize` impl: serde passes the struct's field
/// names to `deserialize_struct`, whatever `to_toml_string` writes or skips. So a new field,
/// even one left out of the TOML when unset, is in this list.
fn config_keys() -> &'static [&'static str] {
    /// A deserializer that only records the field names it is asked for.
    struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom(
                "P2pConfig no longer deserializes as a plain struct",
            ))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(de::Error::custom("field names recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields = None;
    let _ = P2pConfig::deserialize(FieldNames(&mut fields));
    fields.expect("P2pConfig's Deserialize did not name its fields (flatten? a custom impl?)")
}

#[test]
fn config_reference_lists_every_field_with_its_default() {
    let keys = config_keys();
    let defaults: toml::Table = P2pConfig::default()
        .to_toml_string()
        .unwrap()
        .parse()
        .unwrap();
    for key in defaults.keys() {
        assert!(
            keys.contains(&key.as_str()),
            "to_toml_string wrote unknown `{key}`"
        );
    }
    let rows = readme_rows();
    let mut problems = Vec::new();
    for key in keys {
        let Some(row) = rows.get(*key) else {
            let default = defaults
                .get(*key)
                .map_or(UNSET.to_owned(), |v| format!("`{v}`"));
            problems.push(format!(
                "README lacks `{key}`: add `| `{key}` | {default} | <meaning> |`"
            ));
            continue;
        };
        if row.meaning.is_empty() {
            problems.push(format!("README gives `{key}` no meaning"));
        }
        match defaults.get(*key) {
            None if row.default != UNSET => problems.push(format!(
                "README says `{key}` defaults to `{}`, but it is unset by default: write {UNSET}",
                row.default
            )),
            None => {}
            Some(value) => {
                // The README value, read as TOML, must be the default value.
                let readme_value = format!("{key} = {}", row.default)
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove(*key));
                if readme_value.as_ref() != Some(value) {
                    problems.push(format!(
                        "README says `{key}` defaults to {}, but it is `{value}`",
                        if row.default == UNSET {
                            UNSET.to_owned()
                        } else {
                            format!("`{}`", row.default)
                        }
                    ));
                }
            }
        }
    }
    for key in rows.keys() {
        if !keys.contains(&key.as_str()) {
            problems.push(format!(
                "README lists `{key}`, which P2pConfig does not have"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "README.md configuration reference is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn config_reference_meanings_are_the_ones_in_the_code() {
    // One source: `P2pConfig::key_docs`, which also writes the comments of `tm2p2p init`'s
    // config.toml. On a mismatch, the table to paste is printed.
    let rows = readme_rows();
    let defaults: toml::Table = P2pConfig::default()
        .to_toml_string()
        .unwrap()
        .parse()
        .unwrap();
    let mut differ = Vec::new();
    let mut table = String::from("| key | default | meaning |\n| --- | --- | --- |\n");
    for (key, meaning) in P2pConfig::key_docs() {
        let default = defaults
            .get(*key)
            .map_or(UNSET.to_owned(), ToString::to_string);
        table.push_str(&format!("| `{key}` | `{default}` | {meaning} |\n"));
        if rows.get(*key).is_none_or(|row| row.meaning != *meaning) {
            differ.push(*key);
        }
    }
    assert!(
        differ.is_empty() && rows.len() == P2pConfig::key_docs().len(),
        "README's configuration reference differs from P2pConfig::key_docs() for {differ:?}; \
         paste:\n{table}"
    );
}

#[test]
fn config_reference_defaults_read_back_as_the_default_config() {
    let toml: String = readme_rows()
        .iter()
        .filter(|(_, row)| row.default != UNSET)
        .map(|(key, row)| format!("{key} = {}\n", row.default))
        .collect();
    assert_eq!(
        P2pConfig::from_toml_str(&toml).unwrap(),
        P2pConfig::default(),
        "{toml}"
    );
}

/// The README's "use it from Rust" snippet is the body of this function, between the markers
/// (checked by `readme_api_snippet_is_this_code`), so it compiles; `readme_api_snippet_runs`
/// runs it. Formatted by hand for the README, hence `rustfmt::skip`.
#[rustfmt::skip]
async fn readme_api(
    home: &Path,
    log: slog::Logger,
    chat: Addr<Chat>,
    other: NetAddress,
) -> Result<(), Box<dyn std::error::Error>> {
    // readme-api:start
    use tm2_p2p::bytes::Bytes;
    use tm2_p2p::{Broadcast, ChannelDescriptor, DialPeers, GetPeers, NodeKey, P2pConfig,
                  RegisterReactor, StopPeerForError, SwitchBuilder, SwitchEvent, TrySendTo};

    let key = NodeKey::load_or_generate(home.join("secrets/node_key.json"))?;
    let config = P2pConfig::from_toml_file(home.join("config.toml"))?; // or P2pConfig::default()
    let node = SwitchBuilder::new(config, key)
        .network("my-chain")   // in NodeInfo; peers on another network are refused
        .logger(log)           // slog::Logger; the default discards
        // `chat` is your reactor: an actor that handles PeerAdded, Receive and PeerRemoved.
        // Registered here, before the first connection, so every peer learns channel 0x40.
        .reactor(RegisterReactor::new("chat", vec![ChannelDescriptor::new(0x40)], &chat))
        .spawn()               // binds first, so a bind error surfaces here
        .await?;
    let switch = node.switch();                       // Addr<Switch>: all you talk to
    println!("listening as {}", node.net_address());  // id@ip:port actually bound

    let mut events = node.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    switch.send(DialPeers(vec![other])).await?;       // other: "id@ip:port".parse()?
    let Some(SwitchEvent::PeerConnected { peer, .. }) = events.recv().await else {
        return Err("node stopped".into());
    };

    let hi = Bytes::from_static(b"hi");
    switch.send(Broadcast { channel: 0x40, payload: hi.clone() }).await?;  // never blocks
    let queued: bool = switch.send(TrySendTo { peer, channel: 0x40, payload: hi }).await?;
    let peers = switch.send(GetPeers).await?;         // a PeerSetSnapshot
    println!("{} peers; queued: {queued}", peers.peers.len());
    switch.send(StopPeerForError { peer, reason: "bad block".into() }).await?;
    node.shutdown().await;     // graceful: peers closed, tasks ended, port released
    // readme-api:end
    Ok(())
}

/// A reactor that ignores everything: all the snippet needs.
struct Chat;

impl Actor for Chat {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Chat {
    type Result = ();
    fn handle(&mut self, _: PeerAdded, _: &mut Self::Context) {}
}

impl Handler<PeerRemoved> for Chat {
    type Result = ();
    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}

impl Handler<Receive> for Chat {
    type Result = ();
    fn handle(&mut self, _: Receive, _: &mut Self::Context) {}
}

#[test]
fn readme_api_snippet_is_this_code() {
    let source = include_str!("readme.rs");
    let body = source
        .split("// readme-api:start\n")
        .nth(1)
        .and_then(|rest| rest.split("    // readme-api:end").next())
        .unwrap();
    let ours: Vec<&str> = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l).trim_end())
        .collect();
    let block = section(API_START, API_END);
    let readme: Vec<&str> = block
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no ```rust block between {API_START} and {API_END}"))
        .lines()
        .map(str::trim_end)
        .collect();
    assert_eq!(
        readme,
        ours,
        "README's API snippet differs from readme_api() in tests/readme.rs; paste:\n{}",
        ours.join("\n")
    );
}

#[actix::test]
async fn readme_api_snippet_runs() {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let home = tempfile::tempdir().unwrap();
    let config = P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        ..P2pConfig::default()
    };
    std::fs::write(
        home.path().join("config.toml"),
        config.to_commented_toml().unwrap(),
    )
    .unwrap();
    let other = SwitchBuilder::new(config, NodeKey::generate().unwrap())
        .network("my-chain")
        .spawn()
        .await
        .unwrap();
    let mut gone = other.subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
    let log = slog::Logger::root(slog::Discard, slog::o!());
    tokio::time::timeout(
        TIMEOUT,
        readme_api(home.path(), log, Chat.start(), other.net_address()),
    )
    .await
    .expect("the snippet did not finish")
    .unwrap();
    // The snippet's node dialed `other`, then dropped it.
    assert!(matches!(
        tokio::time::timeout(TIMEOUT, gone.recv()).await.unwrap(),
        Some(SwitchEvent::PeerDisconnected { .. })
    ));
    other.shutdown().await;
    // Its address book is in its home, as the README says (`addr_book_file`, relative to
    // `home`), though the snippet never set `home`: it was never saved.
    let book = home.path().join("config/addrbook.json");
    let text = std::fs::read_to_string(&book)
        .unwrap_or_else(|e| panic!("no address book at {}: {e}", book.display()));
    assert!(
        text.contains(&other.net_address().id().to_string()),
        "{text}"
    );
}

/// The README's `[dependencies]` block and API snippet, as a crate of their own next to nothing
/// else: what a new user pastes must compile with only what the README lists (`tm2-p2p` and
/// `actix`). Checked with cargo into `target/readme-host`, offline, with this repository's
/// Cargo.lock (so the crates are the ones already fetched).
#[test]
fn readme_snippet_compiles_in_a_crate_with_only_the_readmes_dependencies() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = section("## Use it as a library", API_START);
    let dependencies = library
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("no ```toml block under \"Use it as a library\"");
    assert!(
        dependencies.contains("path = \"../tm2-p2p\""),
        "{dependencies}"
    );
    let dependencies = dependencies.replace(
        "path = \"../tm2-p2p\"",
        &format!("path = {:?}", repo.display()),
    );
    let snippet = section(API_START, API_END)
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-host\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             publish = false\n\n{dependencies}\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::copy(repo.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("src/main.rs"),
        format!(
            r#"#![allow(dead_code, unused)]
use actix::prelude::*;

/// The user's reactor.
struct Chat;
impl Actor for Chat {{
    type Context = Context<Self>;
}}
impl Handler<tm2_p2p::PeerAdded> for Chat {{
    type Result = ();
    fn handle(&mut self, _: tm2_p2p::PeerAdded, _: &mut Self::Context) {{}}
}}
impl Handler<tm2_p2p::PeerRemoved> for Chat {{
    type Result = ();
    fn handle(&mut self, _: tm2_p2p::PeerRemoved, _: &mut Self::Context) {{}}
}}
impl Handler<tm2_p2p::Receive> for Chat {{
    type Result = ();
    fn handle(&mut self, _: tm2_p2p::Receive, _: &mut Self::Context) {{}}
}}

async fn run(
    home: &std::path::Path,
    log: tm2_p2p::slog::Logger,
    chat: Addr<Chat>,
    other: tm2_p2p::NetAddress,
) -> Result<(), Box<dyn std::error::Error>> {{
{snippet}
    Ok(())
}}

fn main() {{}}
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO"))
        .args(["check", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.path().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(repo.join("target/readme-host"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's snippet does not compile with only the README's dependencies:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
