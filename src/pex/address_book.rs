//! [`AddressBook`]: the addresses this node knows, how they fared, and which peers are banned.
//!
//! # Clock
//! The book uses one clock: wall-clock [`SystemTime`], passed in as `now` (the driver reads it
//! from `actors::clock::wall_now`). Last-seen times, backoff and ban deadlines are all wall
//! times, so they are persisted as unix seconds and survive a restart unchanged. If the wall
//! clock steps backwards, a deadline lasts longer by that step; a time before 1970 is stored
//! as 0.
//!
//! # Good addresses
//! An entry is *good* ([`KnownAddress::is_good`]) when we have connected to it at least once
//! and it has not failed since ([`mark_good`](AddressBook::mark_good) resets the failure
//! count). Only good addresses are shared, and a good one is never evicted. The driver calls
//! `mark_good` for every connected peer, inbound ones too (with their advertised address), so
//! a seed that only receives connections has addresses to give out.
//!
//! # The file
//! [`save`](AddressBook::save) writes versioned JSON ([`to_json`](AddressBook::to_json));
//! [`load`](AddressBook::load) reads only a regular file, and only up to
//! [`AddressBookConfig::max_file_len`] bytes, derived from the capacity.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::{P2pConfig, open_regular_file, read_capped};
use crate::types::{NetAddress, PeerId};

/// The version written in, and the only one accepted from, the persisted file.
pub const FILE_VERSION: u32 = 1;

/// A generous bound on the bytes one entry of the book takes in its file: 1 KiB.
///
/// What [`AddressBook::to_json`] writes for one entry is at most about 550 bytes: the address
/// (a 40-character id, `@`, a DNS name of up to 253 bytes, a port), the source id, three times
/// and the failure count at their widest, the keys and the pretty-printer's indentation. Bans
/// are bounded by the capacity too, and one takes at most about 110 bytes. So 1 KiB per entry
/// covers an entry and a ban with half again to spare; a test fills a book with the widest
/// entries and bans and checks that its file fits.
pub const MAX_FILE_BYTES_PER_ENTRY: u64 = 1024;

/// The smallest limit on the book's file, whatever the capacity: 1 MiB.
///
/// It holds the default book (1000 entries) at its widest, so a book saved before
/// `addr_book_size` was lowered still loads (its first `capacity` entries are kept) instead of
/// being set aside as too large.
pub const MIN_FILE_LEN_LIMIT: u64 = 1024 * 1024;

/// The largest limit on the book's file, whatever the capacity: 64 MiB.
///
/// `addr_book_size` has no upper bound, so the limit derived from it needs one: 64 MiB is
/// [`MAX_FILE_BYTES_PER_ENTRY`] for 65,536 entries (65 times TM2's 1000), and parsing it costs
/// a few times that in memory. A book of more than about 100,000 of the widest entries would
/// write a file larger than this, which would be set aside at the next start.
pub const MAX_FILE_LEN_LIMIT: u64 = 64 * 1024 * 1024;

/// The parameters of an [`AddressBook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBookConfig {
    /// The most addresses kept (`addr_book_size`, default 1000 as TM2). Bans are bounded by the
    /// same number.
    pub capacity: usize,
    /// The wait after the first failure before an address may be dialed again; doubled for
    /// each further failure. Default 30 s.
    pub backoff_base: Duration,
    /// The cap on that wait. Default 1 h.
    pub backoff_max: Duration,
}

impl AddressBookConfig {
    /// `addr_book_size` from the config, with the default backoff.
    pub fn from_config(config: &P2pConfig) -> Self {
        Self {
            capacity: config.addr_book_size,
            ..Self::default()
        }
    }

    /// The largest file [`AddressBook::load`] reads for this capacity:
    /// [`MAX_FILE_BYTES_PER_ENTRY`] per entry, at least [`MIN_FILE_LEN_LIMIT`] and at most
    /// [`MAX_FILE_LEN_LIMIT`]. With the default capacity (1000) it is 1 MiB.
    ///
    /// No book of this capacity writes a larger file, so a larger one is not a book: a file
    /// grown by a disk fault or filled by someone else. It is refused after reading one byte
    /// past the limit, whatever length the file system reports.
    pub fn max_file_len(&self) -> u64 {
        u64::try_from(self.capacity)
            .unwrap_or(u64::MAX)
            .saturating_mul(MAX_FILE_BYTES_PER_ENTRY)
            .clamp(MIN_FILE_LEN_LIMIT, MAX_FILE_LEN_LIMIT)
    }
}

impl Default for AddressBookConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
        }
    }
}

/// What the book knows about one peer's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAddress {
    /// The address.
    pub addr: NetAddress,
    /// The peer that told us (our own id for addresses from config or our own connections).
    pub source: PeerId,
    /// When the address was last added, announced or connected.
    pub last_seen: SystemTime,
    /// When we last started dialing it.
    pub last_attempt: Option<SystemTime>,
    /// When we last connected to it.
    pub last_success: Option<SystemTime>,
    /// Failures since the last success (saturating).
    pub failures: u32,
}

impl KnownAddress {
    /// Connected at least once and no failure since.
    pub const fn is_good(&self) -> bool {
        self.last_success.is_some() && self.failures == 0
    }
}

/// What [`AddressBook::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new entry; `evicted` names the entry that made room, if any.
    Added {
        /// The entry removed to make room.
        evicted: Option<PeerId>,
    },
    /// The id was known: its last-seen time was refreshed (and its address replaced when the
    /// source is the peer itself or the entry was never good).
    Refreshed,
    /// Our own id: never stored.
    OwnId,
    /// The address fails [`NetAddress::validate`].
    Invalid,
    /// The id is banned.
    Banned,
    /// The book is full of good addresses: nothing could be evicted.
    Full,
}

/// Why an address book could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum AddressBookError {
    /// Reading or writing the file failed, or the path names something other than a regular
    /// file (a directory, a pipe, a device), which is not read.
    #[error("address book I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a valid address book (bad JSON, wrong shape).
    #[error("corrupt address book: {0}")]
    Corrupt(String),
    /// The file holds more than `limit` bytes ([`AddressBookConfig::max_file_len`]), more than
    /// any book of the configured capacity writes: treated as corrupt. Nothing of it is parsed
    /// (reading stopped at `limit + 1` bytes), and
    /// [`load_or_set_aside`](AddressBook::load_or_set_aside) moves it aside.
    #[error(
        "address book {} is larger than {limit} bytes, more than a book of this capacity takes",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes accepted ([`AddressBookConfig::max_file_len`]).
        limit: u64,
    },
    /// The file has a version this code does not read.
    #[error("address book version {found}, expected {FILE_VERSION}")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
}

/// The addresses this node knows, by peer id, bounded to `capacity`, plus timed bans.
///
/// Driving protocol (the `PeerExchange` actor):
/// - `add` every address from a response (source = the responder), from config and from our
///   own connections;
/// - before dialing: [`pick_to_dial`](Self::pick_to_dial), then
///   [`mark_attempt`](Self::mark_attempt); after: [`mark_good`](Self::mark_good) or
///   [`mark_failed`](Self::mark_failed);
/// - after `StopPeerForError`: [`ban`](Self::ban);
/// - to answer a request: [`sample_for_sharing`](Self::sample_for_sharing);
/// - periodically and at stop: [`save`](Self::save).
///
/// Entries are kept in id order, so with a seeded RNG every choice is deterministic.
#[derive(Debug, Clone)]
pub struct AddressBook {
    own_id: PeerId,
    config: AddressBookConfig,
    entries: BTreeMap<PeerId, KnownAddress>,
    bans: BTreeMap<PeerId, SystemTime>,
}

impl AddressBook {
    /// An empty book for the node `own_id` (never stored).
    pub fn new(own_id: PeerId, config: AddressBookConfig) -> Self {
        Self {
            own_id,
            config,
            entries: BTreeMap::new(),
            bans: BTreeMap::new(),
        }
    }

    /// Number of known addresses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no address is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `id`.
    pub fn get(&self, id: &PeerId) -> Option<&KnownAddress> {
        self.entries.get(id)
    }

    /// All entries, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &KnownAddress> {
        self.entries.values()
    }

    /// Adds or refreshes `addr`, told by `source` at `now`. When the book is full, the worst
    /// entry is evicted: the most failures, then the oldest last-seen; a good entry
    /// ([`KnownAddress::is_good`]) is never evicted. A known id keeps its address unless
    /// `source` is the peer itself or the entry was never good, so a third party cannot
    /// redirect a working peer.
    pub fn add(&mut self, addr: NetAddress, source: PeerId, now: SystemTime) -> AddOutcome {
        let id = addr.id();
        if id == self.own_id {
            return AddOutcome::OwnId;
        }
        if addr.validate().is_err() {
            return AddOutcome::Invalid;
        }
        if self.is_banned(&id, now) {
            return AddOutcome::Banned;
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_seen = entry.last_seen.max(now);
            if entry.addr != addr && (source == id || !entry.is_good()) {
                entry.addr = addr;
                entry.source = source;
            }
            return AddOutcome::Refreshed;
        }
        let mut evicted = None;
        if self.entries.len() >= self.config.capacity {
            match self.worst() {
                Some(worst) => {
                    self.entries.remove(&worst);
                    evicted = Some(worst);
                }
                None => return AddOutcome::Full,
            }
        }
        self.entries.insert(
            id,
            KnownAddress {
                addr,
                source,
                last_seen: now,
                last_attempt: None,
                last_success: None,
                failures: 0,
            },
        );
        AddOutcome::Added { evicted }
    }

    /// The eviction candidate: not good, most failures, then oldest last-seen.
    fn worst(&self) -> Option<PeerId> {
        self.entries
            .values()
            .filter(|e| !e.is_good())
            .max_by(|a, b| {
                a.failures
                    .cmp(&b.failures)
                    .then(b.last_seen.cmp(&a.last_seen))
                    .then(b.addr.id().cmp(&a.addr.id()))
            })
            .map(|e| e.addr.id())
    }

    /// Removes `id`'s entry.
    pub fn remove(&mut self, id: &PeerId) -> Option<KnownAddress> {
        self.entries.remove(id)
    }

    /// Records that a dial of `id` starts at `now`. False when `id` is unknown.
    pub fn mark_attempt(&mut self, id: &PeerId, now: SystemTime) -> bool {
        self.entries
            .get_mut(id)
            .map(|e| e.last_attempt = Some(now))
            .is_some()
    }

    /// Records a connection to `id` at `now`: failures reset, last seen and last success set.
    /// False when `id` is unknown.
    pub fn mark_good(&mut self, id: &PeerId, now: SystemTime) -> bool {
        self.entries
            .get_mut(id)
            .map(|e| {
                e.failures = 0;
                e.last_success = Some(now);
                e.last_seen = e.last_seen.max(now);
            })
            .is_some()
    }

    /// Records a failed dial of `id` at `now` (also the start of its backoff). False when
    /// `id` is unknown.
    pub fn mark_failed(&mut self, id: &PeerId, now: SystemTime) -> bool {
        self.entries
            .get_mut(id)
            .map(|e| {
                e.failures = e.failures.saturating_add(1);
                e.last_attempt = Some(e.last_attempt.map_or(now, |t| t.max(now)));
            })
            .is_some()
    }

    /// The wait after `failures` failures: `min(base × 2^(failures-1), max)`, zero for none.
    pub fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.config
            .backoff_base
            .checked_mul(1u32 << shift)
            .map_or(self.config.backoff_max, |d| d.min(self.config.backoff_max))
    }

    /// When `id` may next be dialed: `None` when unknown, else the end of its backoff (or of
    /// its ban, whichever is later).
    pub fn next_dial_at(&self, id: &PeerId) -> Option<SystemTime> {
        let e = self.entries.get(id)?;
        let backoff_end = match (e.failures, e.last_attempt) {
            (0, _) | (_, None) => UNIX_EPOCH,
            (n, Some(t)) => saturating_add(t, self.backoff(n)),
        };
        Some(match self.bans.get(id) {
            Some(&until) => backoff_end.max(until),
            None => backoff_end,
        })
    }

    /// True when `id` is known, not banned and not in backoff at `now`.
    pub fn is_dialable(&self, id: &PeerId, now: SystemTime) -> bool {
        self.next_dial_at(id).is_some_and(|t| t <= now)
    }

    /// Up to `n` random dialable addresses (see [`is_dialable`](Self::is_dialable)), skipping
    /// the ids in `exclude` (connected or already being dialed).
    pub fn pick_to_dial(
        &self,
        n: usize,
        now: SystemTime,
        exclude: &HashSet<PeerId>,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Vec<NetAddress> {
        let candidates = self
            .entries
            .values()
            .filter(|e| !exclude.contains(&e.addr.id()) && self.is_dialable(&e.addr.id(), now))
            .map(|e| e.addr.clone())
            .collect();
        sample(candidates, n, rng)
    }

    /// Bans `id` until `until`: it is neither dialed, shared nor re-added before then. Its
    /// entry, if any, is kept (with its history). A later ban only extends an earlier one.
    /// Bans are bounded by the capacity: when full, the earliest-ending ban is dropped (an
    /// expired one if there is any).
    pub fn ban(&mut self, id: PeerId, until: SystemTime) {
        if id == self.own_id {
            return;
        }
        if !self.bans.contains_key(&id) && self.bans.len() >= self.config.capacity.max(1) {
            let earliest = self
                .bans
                .iter()
                .min_by_key(|(id, t)| (**t, **id))
                .map(|(id, _)| *id);
            if let Some(e) = earliest {
                self.bans.remove(&e);
            }
        }
        let t = self.bans.entry(id).or_insert(until);
        *t = (*t).max(until);
    }

    /// True when `id` is banned at `now`.
    pub fn is_banned(&self, id: &PeerId, now: SystemTime) -> bool {
        self.bans.get(id).is_some_and(|&until| now < until)
    }

    /// Forgets bans that ended by `now`.
    pub fn prune_bans(&mut self, now: SystemTime) {
        self.bans.retain(|_, until| now < *until);
    }

    /// Up to `n` random good addresses to give the peer `asker`: never `asker` itself, never a
    /// peer in `private`, never a banned one, never a non-routable one unless
    /// `allow_non_routable` ([`NetAddress::is_shareable`]).
    pub fn sample_for_sharing(
        &self,
        n: usize,
        asker: PeerId,
        private: &HashSet<PeerId>,
        allow_non_routable: bool,
        now: SystemTime,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Vec<NetAddress> {
        let candidates = self
            .entries
            .values()
            .filter(|e| {
                let id = e.addr.id();
                e.is_good()
                    && id != asker
                    && !private.contains(&id)
                    && !self.is_banned(&id, now)
                    && e.addr.is_shareable(allow_non_routable)
            })
            .map(|e| e.addr.clone())
            .collect();
        sample(candidates, n, rng)
    }

    /// The book as versioned JSON: entries with times in unix seconds, and the bans.
    pub fn to_json(&self) -> Vec<u8> {
        let file = FileRepr {
            version: FILE_VERSION,
            entries: self
                .entries
                .values()
                .map(|e| FileEntry {
                    addr: e.addr.to_string(),
                    source: e.source.to_string(),
                    last_seen: unix_secs(e.last_seen),
                    last_attempt: e.last_attempt.map(unix_secs),
                    last_success: e.last_success.map(unix_secs),
                    failures: e.failures,
                })
                .collect(),
            bans: self
                .bans
                .iter()
                .map(|(id, until)| FileBan {
                    id: id.to_string(),
                    until: unix_secs(*until),
                })
                .collect(),
        };
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    /// Reads a book written by [`to_json`](Self::to_json). A file that is not valid JSON of
    /// that shape is [`AddressBookError::Corrupt`]; single entries that do not parse, carry
    /// our own id or exceed the capacity are skipped.
    pub fn from_json(
        bytes: &[u8],
        own_id: PeerId,
        config: AddressBookConfig,
    ) -> Result<Self, AddressBookError> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|e| AddressBookError::Corrupt(e.to_string()))?;
        if v.version != FILE_VERSION {
            return Err(AddressBookError::UnsupportedVersion { found: v.version });
        }
        let file: FileRepr =
            serde_json::from_slice(bytes).map_err(|e| AddressBookError::Corrupt(e.to_string()))?;
        let mut book = Self::new(own_id, config);
        for b in file.bans {
            if let Ok(id) = b.id.parse::<PeerId>() {
                book.ban(id, from_unix_secs(b.until));
            }
        }
        for e in file.entries {
            if book.entries.len() >= config.capacity {
                break;
            }
            let (Ok(addr), Ok(source)) = (e.addr.parse::<NetAddress>(), e.source.parse()) else {
                continue;
            };
            let id = addr.id();
            if id == own_id || addr.validate().is_err() || book.entries.contains_key(&id) {
                continue;
            }
            book.entries.insert(
                id,
                KnownAddress {
                    addr,
                    source,
                    last_seen: from_unix_secs(e.last_seen),
                    last_attempt: e.last_attempt.map(from_unix_secs),
                    last_success: e.last_success.map(from_unix_secs),
                    failures: e.failures,
                },
            );
        }
        Ok(book)
    }

    /// Writes the book to `path` atomically: to `<path>.tmp` in the same directory, fsynced,
    /// renamed over `path`, then the directory fsynced (best effort). Missing parent
    /// directories are created (a new node home has no `config/` yet).
    pub fn save(&self, path: &Path) -> Result<(), AddressBookError> {
        let io_err = |source| AddressBookError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let tmp = sibling(path, ".tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(io_err)?;
            f.write_all(&self.to_json()).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        fs::rename(&tmp, path).map_err(io_err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename durable on Linux; not possible everywhere, so errors are ignored.
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Loads the book from `path`. A missing file gives an empty book; a corrupt one is an
    /// error the caller reports (see [`load_or_set_aside`](Self::load_or_set_aside)).
    ///
    /// Only a regular file (or a symlink to one) is read: anything else (a directory, a pipe,
    /// a device such as `/dev/zero`) is [`AddressBookError::Io`], found before opening it, so a
    /// pipe with no writer does not block. A file of more than
    /// [`config.max_file_len()`](AddressBookConfig::max_file_len) bytes is
    /// [`AddressBookError::TooLarge`], found after reading one byte past the limit.
    pub fn load(
        path: &Path,
        own_id: PeerId,
        config: AddressBookConfig,
    ) -> Result<Self, AddressBookError> {
        let io_err = |source| AddressBookError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match open_regular_file(path) {
            Ok((file, _)) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::new(own_id, config)),
            Err(source) => return Err(io_err(source)),
        };
        let limit = config.max_file_len();
        let Some(bytes) = read_capped(file, limit).map_err(io_err)? else {
            return Err(AddressBookError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        };
        Self::from_json(&bytes, own_id, config)
    }

    /// Loads the book from `path`; when that fails, starts empty and returns the error for the
    /// caller to report. A corrupt, too large or unsupported file is first moved aside to
    /// `<path>.corrupt` (replacing an earlier one) so the next save does not destroy it; an
    /// error doing so is ignored (the load error is what gets reported). After an I/O error
    /// (which includes a path that is not a regular file) nothing is moved.
    pub fn load_or_set_aside(
        path: &Path,
        own_id: PeerId,
        config: AddressBookConfig,
    ) -> (Self, Option<AddressBookError>) {
        match Self::load(path, own_id, config) {
            Ok(book) => (book, None),
            Err(e) => {
                if !matches!(e, AddressBookError::Io { .. }) {
                    let _ = fs::rename(path, sibling(path, ".corrupt"));
                }
                (Self::new(own_id, config), Some(e))
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Up to `n` of `items` in random order (partial Fisher-Yates).
fn sample<T>(mut items: Vec<T>, n: usize, rng: &mut (impl RngCore + ?Sized)) -> Vec<T> {
    let n = n.min(items.len());
    for i in 0..n {
        let j = i + uniform(rng, items.len() - i);
        items.swap(i, j);
    }
    items.truncate(n);
    items
}

/// A uniform integer in `0..bound` (`bound > 0`), without modulo bias.
fn uniform(rng: &mut (impl RngCore + ?Sized), bound: usize) -> usize {
    let bound = bound as u64;
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return usize::try_from(x % bound).unwrap_or(0);
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The latest time read from a book file, in unix seconds (3000-01-01T00:00:00Z). A file may
/// hold any `u64`; `UNIX_EPOCH + u64::MAX` seconds does not fit in a `SystemTime` (adding it
/// panics), so later times, which no real clock produces, are read as this one.
const MAX_FILE_TIME_SECS: u64 = 32_503_680_000;

fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.min(MAX_FILE_TIME_SECS))
}

/// `t + d`, or, when that does not fit in a `SystemTime`, a time no earlier than `t` and at
/// least [`MAX_FILE_TIME_SECS`]: a deadline that far away is never reached either way.
fn saturating_add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d)
        .unwrap_or_else(|| t.max(from_unix_secs(MAX_FILE_TIME_SECS)))
}

#[derive(Serialize, Deserialize)]
struct FileRepr {
    version: u32,
    entries: Vec<FileEntry>,
    #[serde(default)]
    bans: Vec<FileBan>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    addr: String,
    source: String,
    last_seen: u64,
    last_attempt: Option<u64>,
    last_success: Option<u64>,
    failures: u32,
}

#[derive(Serialize, Deserialize)]
struct FileBan {
    id: String,
    until: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn secs(s: u64) -> SystemTime {
        t0() + Duration::from_secs(s)
    }

    fn peer(n: u8) -> PeerId {
        PeerId::from_public_key(&[n; 32])
    }

    fn addr(n: u8) -> NetAddress {
        format!("{}@8.8.{n}.1:26656", peer(n)).parse().unwrap()
    }

    fn local_addr(n: u8) -> NetAddress {
        format!("{}@127.0.0.{n}:26656", peer(n)).parse().unwrap()
    }

    fn me() -> PeerId {
        peer(0)
    }

    fn book(capacity: usize) -> AddressBook {
        AddressBook::new(
            me(),
            AddressBookConfig {
                capacity,
                ..AddressBookConfig::default()
            },
        )
    }

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(42)
    }

    #[test]
    fn own_id_and_invalid_addresses_are_refused() {
        let mut b = book(10);
        let own: NetAddress = format!("{}@1.2.3.4:1", me()).parse().unwrap();
        assert_eq!(b.add(own, peer(1), t0()), AddOutcome::OwnId);
        let bad: NetAddress = format!("{}@0.0.0.0:1", peer(1)).parse().unwrap();
        assert_eq!(b.add(bad, peer(1), t0()), AddOutcome::Invalid);
        assert!(b.is_empty());
        assert_eq!(
            b.add(addr(1), peer(2), t0()),
            AddOutcome::Added { evicted: None }
        );
        assert_eq!(b.add(addr(1), peer(2), secs(5)), AddOutcome::Refreshed);
        assert_eq!(b.get(&peer(1)).unwrap().last_seen, secs(5));
        assert!(!b.mark_good(&peer(3), t0()));
        assert!(!b.mark_failed(&peer(3), t0()));
        assert!(!b.mark_attempt(&peer(3), t0()));
    }

    #[test]
    fn refreshing_a_known_id_in_a_full_book_evicts_nothing() {
        let mut b = book(1);
        b.add(addr(1), peer(9), t0());
        assert_eq!(b.add(addr(1), peer(9), secs(1)), AddOutcome::Refreshed);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn third_party_cannot_redirect_a_good_peer() {
        let mut b = book(10);
        b.add(addr(1), peer(1), t0());
        b.mark_good(&peer(1), t0());
        let moved: NetAddress = format!("{}@9.9.9.9:1", peer(1)).parse().unwrap();
        b.add(moved.clone(), peer(2), secs(1));
        assert_eq!(b.get(&peer(1)).unwrap().addr, addr(1));
        b.add(moved.clone(), peer(1), secs(2));
        assert_eq!(b.get(&peer(1)).unwrap().addr, moved);
    }

    #[test]
    fn capacity_is_kept_and_eviction_spares_good_addresses() {
        let mut b = book(4);
        for i in 1..=4 {
            b.add(addr(i), peer(9), secs(u64::from(i)));
        }
        b.mark_good(&peer(1), secs(10)); // good, and the oldest seen
        b.mark_failed(&peer(3), secs(10));
        b.mark_failed(&peer(3), secs(11));
        b.mark_failed(&peer(4), secs(10));
        // Most failures goes first.
        assert_eq!(
            b.add(addr(5), peer(9), secs(20)),
            AddOutcome::Added {
                evicted: Some(peer(3))
            }
        );
        // Then most failures again (peer 4 has one).
        assert_eq!(
            b.add(addr(6), peer(9), secs(21)),
            AddOutcome::Added {
                evicted: Some(peer(4))
            }
        );
        // Then the oldest last-seen that is not good: peer 2 (peer 1 is older but good).
        assert_eq!(
            b.add(addr(7), peer(9), secs(22)),
            AddOutcome::Added {
                evicted: Some(peer(2))
            }
        );
        assert_eq!(b.len(), 4);
        assert!(b.get(&peer(1)).is_some());
    }

    #[test]
    fn a_book_full_of_good_addresses_refuses_new_ones() {
        let mut b = book(2);
        for i in 1..=2 {
            b.add(addr(i), peer(9), t0());
            b.mark_good(&peer(i), t0());
        }
        assert_eq!(b.add(addr(3), peer(9), secs(1)), AddOutcome::Full);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn failing_addresses_back_off_and_recover() {
        let mut b = book(10);
        b.add(addr(1), peer(9), t0());
        assert!(b.is_dialable(&peer(1), t0()));
        assert!(!b.is_dialable(&peer(2), t0()));
        b.mark_attempt(&peer(1), t0());
        b.mark_failed(&peer(1), t0());
        assert!(!b.is_dialable(&peer(1), secs(29)));
        assert!(b.is_dialable(&peer(1), secs(30)));
        b.mark_attempt(&peer(1), secs(30));
        b.mark_failed(&peer(1), secs(30));
        assert!(!b.is_dialable(&peer(1), secs(89)));
        assert!(b.is_dialable(&peer(1), secs(90)));
        assert_eq!(b.backoff(1000), Duration::from_secs(3600));
        b.mark_good(&peer(1), secs(90));
        assert!(b.is_dialable(&peer(1), secs(90)));
        let mut r = rng();
        assert_eq!(
            b.pick_to_dial(5, secs(90), &HashSet::new(), &mut r),
            vec![addr(1)]
        );
        let excl = HashSet::from([peer(1)]);
        assert!(b.pick_to_dial(5, secs(90), &excl, &mut r).is_empty());
    }

    #[test]
    fn pick_to_dial_skips_backoff_and_returns_at_most_n() {
        let mut b = book(100);
        for i in 1..=20 {
            b.add(addr(i), peer(99), t0());
        }
        for i in 1..=5 {
            b.mark_failed(&peer(i), t0());
        }
        let mut r = rng();
        let picked = b.pick_to_dial(8, secs(1), &HashSet::new(), &mut r);
        assert_eq!(picked.len(), 8);
        let ids: HashSet<PeerId> = picked.iter().map(NetAddress::id).collect();
        assert_eq!(ids.len(), 8);
        assert!((1..=5).all(|i| !ids.contains(&peer(i))));
        assert_eq!(
            b.pick_to_dial(100, secs(1), &HashSet::new(), &mut r).len(),
            15
        );
        // Same seed, same choice.
        assert_eq!(
            b.pick_to_dial(8, secs(1), &HashSet::new(), &mut rng()),
            picked
        );
    }

    #[test]
    fn ban_blocks_until_it_expires() {
        let mut b = book(10);
        b.add(addr(1), peer(9), t0());
        b.mark_good(&peer(1), t0());
        b.ban(peer(1), secs(100));
        b.ban(peer(1), secs(50)); // does not shorten
        let private = HashSet::new();
        assert!(b.is_banned(&peer(1), secs(99)));
        assert!(!b.is_dialable(&peer(1), secs(99)));
        assert!(
            b.sample_for_sharing(10, peer(9), &private, false, secs(99), &mut rng())
                .is_empty()
        );
        assert_eq!(
            b.add(addr(2), peer(9), t0()),
            AddOutcome::Added { evicted: None }
        );
        b.ban(peer(2), secs(10));
        b.remove(&peer(2));
        assert_eq!(b.add(addr(2), peer(9), secs(5)), AddOutcome::Banned);
        assert!(!b.is_banned(&peer(1), secs(100)));
        assert!(b.is_dialable(&peer(1), secs(100)));
        assert_eq!(
            b.sample_for_sharing(10, peer(9), &private, false, secs(100), &mut rng()),
            vec![addr(1)]
        );
        assert_eq!(
            b.add(addr(2), peer(9), secs(10)),
            AddOutcome::Added { evicted: None }
        );
        b.prune_bans(secs(100));
        assert!(b.bans.is_empty());
    }

    #[test]
    fn bans_are_bounded() {
        let mut b = book(3);
        for i in 1..=5 {
            b.ban(peer(i), secs(u64::from(i) * 10));
        }
        assert_eq!(b.bans.len(), 3);
        assert!(b.is_banned(&peer(5), secs(1)));
        assert!(!b.is_banned(&peer(1), secs(1)));
    }

    #[test]
    fn sharing_never_returns_private_asker_banned_or_non_routable() {
        let mut b = book(100);
        for i in 1..=40 {
            b.add(addr(i), peer(99), t0());
            b.mark_good(&peer(i), t0());
        }
        for i in 41..=50 {
            b.add(local_addr(i), peer(99), t0());
            b.mark_good(&peer(i), t0());
        }
        for i in 51..=55 {
            b.add(addr(i), peer(99), t0()); // never connected: not good
        }
        b.mark_failed(&peer(40), t0());
        let private: HashSet<PeerId> = (1..=5).map(peer).collect();
        b.ban(peer(6), secs(1000));
        let asker = peer(7);
        let mut r = rng();
        for _ in 0..50 {
            let s = b.sample_for_sharing(30, asker, &private, false, secs(1), &mut r);
            assert_eq!(s.len(), 30); // 8..=39 is 32 candidates
            let ids: HashSet<PeerId> = s.iter().map(NetAddress::id).collect();
            assert_eq!(ids.len(), 30);
            for id in &ids {
                assert!(!private.contains(id) && *id != asker && *id != peer(6));
                assert!((41..=55).all(|i| *id != peer(i)) && *id != peer(40));
            }
        }
        let all = b.sample_for_sharing(1000, asker, &private, true, secs(1), &mut r);
        assert_eq!(all.len(), 32 + 10);
        assert!(
            b.sample_for_sharing(0, asker, &private, true, secs(1), &mut r)
                .is_empty()
        );
    }

    #[test]
    fn json_round_trips() {
        let mut b = book(10);
        b.add(addr(1), peer(9), secs(1));
        b.add(local_addr(2), peer(9), secs(2));
        b.mark_attempt(&peer(1), secs(3));
        b.mark_good(&peer(1), secs(4));
        b.mark_failed(&peer(2), secs(5));
        b.ban(peer(3), secs(100));
        let back = AddressBook::from_json(&b.to_json(), me(), b.config).unwrap();
        assert_eq!(back.entries, b.entries);
        assert_eq!(back.bans, b.bans);
    }

    #[test]
    fn from_json_skips_bad_entries_and_refuses_other_versions() {
        let json = format!(
            r#"{{"version":1,"entries":[
                {{"addr":"nope","source":"{s}","last_seen":1,"last_attempt":null,"last_success":null,"failures":0}},
                {{"addr":"{own}@1.2.3.4:5","source":"{s}","last_seen":1,"last_attempt":null,"last_success":null,"failures":0}},
                {{"addr":"{a}","source":"{s}","last_seen":1,"last_attempt":null,"last_success":null,"failures":0}}
            ]}}"#,
            s = peer(9),
            own = me(),
            a = addr(1),
        );
        let b =
            AddressBook::from_json(json.as_bytes(), me(), AddressBookConfig::default()).unwrap();
        assert_eq!(b.len(), 1);
        assert!(matches!(
            AddressBook::from_json(
                br#"{"version":2,"entries":[]}"#,
                me(),
                AddressBookConfig::default()
            ),
            Err(AddressBookError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            AddressBook::from_json(b"{not json", me(), AddressBookConfig::default()),
            Err(AddressBookError::Corrupt(_))
        ));
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut b = book(10);
        b.add(addr(1), peer(9), secs(1));
        b.mark_good(&peer(1), secs(2));
        b.ban(peer(4), secs(50));
        b.save(&path).unwrap();
        b.add(addr(2), peer(9), secs(3));
        b.save(&path).unwrap(); // overwrite
        assert!(!dir.path().join("addrbook.json.tmp").exists());
        let back = AddressBook::load(&path, me(), b.config).unwrap();
        assert_eq!(back.entries, b.entries);
        assert!(back.is_banned(&peer(4), secs(49)));
        // Missing file: empty.
        let empty = AddressBook::load(&dir.path().join("none.json"), me(), b.config).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn times_past_what_system_time_holds_load_clamped() {
        // Found by the address_book fuzz target (fuzz/corpus/address_book/seed-extreme-times):
        // UNIX_EPOCH + u64::MAX seconds panicked while loading.
        let id = peer(7);
        let json = format!(
            r#"{{"version":1,"entries":[{{"addr":"{id}@8.8.7.1:5","source":"{id}",
              "last_seen":18446744073709551615,"last_attempt":18446744073709551615,
              "last_success":null,"failures":4294967295}}],
              "bans":[{{"id":"{}","until":18446744073709551615}}]}}"#,
            peer(8)
        );
        let b =
            AddressBook::from_json(json.as_bytes(), me(), AddressBookConfig::default()).unwrap();
        let far = UNIX_EPOCH + Duration::from_secs(MAX_FILE_TIME_SECS);
        assert_eq!(b.get(&id).unwrap().last_seen, far);
        assert!(b.next_dial_at(&id).unwrap() >= far);
        assert!(!b.is_dialable(&id, t0()));
        assert!(b.is_banned(&peer(8), t0()));
        // What it saves loads back the same.
        let saved = b.to_json();
        let again = AddressBook::from_json(&saved, me(), AddressBookConfig::default()).unwrap();
        assert_eq!(again.to_json(), saved);
        assert!(String::from_utf8(saved).unwrap().contains("32503680000"));
    }

    #[test]
    fn backoff_end_saturates_instead_of_overflowing() {
        let config = AddressBookConfig {
            capacity: 10,
            backoff_base: Duration::MAX,
            backoff_max: Duration::MAX,
        };
        let mut b = AddressBook::new(me(), config);
        b.add(addr(1), peer(9), t0());
        b.mark_attempt(&peer(1), t0());
        b.mark_failed(&peer(1), t0());
        assert!(b.next_dial_at(&peer(1)).unwrap() > t0());
        assert!(!b.is_dialable(&peer(1), t0()));
    }

    #[test]
    fn corrupt_file_is_an_error_and_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        fs::write(&path, b"\x00garbage{").unwrap();
        assert!(matches!(
            AddressBook::load(&path, me(), AddressBookConfig::default()),
            Err(AddressBookError::Corrupt(_))
        ));
        let (b, err) = AddressBook::load_or_set_aside(&path, me(), AddressBookConfig::default());
        assert!(b.is_empty());
        assert!(matches!(err, Some(AddressBookError::Corrupt(_))));
        assert!(!path.exists());
        assert_eq!(
            fs::read(dir.path().join("addrbook.json.corrupt")).unwrap(),
            b"\x00garbage{"
        );
        // The node can save a fresh book in its place.
        b.save(&path).unwrap();
        assert!(AddressBook::load(&path, me(), AddressBookConfig::default()).is_ok());
    }

    /// A book file padded with whitespace (which JSON allows) to exactly `len` bytes.
    fn padded_file(b: &AddressBook, len: u64) -> Vec<u8> {
        let mut json = b.to_json();
        json.resize(usize::try_from(len).unwrap(), b' ');
        json
    }

    #[test]
    fn file_over_the_limit_is_too_large_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut b = book(10);
        b.add(addr(1), peer(9), secs(1));
        let limit = b.config.max_file_len();
        assert_eq!(limit, MIN_FILE_LEN_LIMIT);
        // A valid book, one byte too long: refused for its size, before parsing.
        let contents = padded_file(&b, limit + 1);
        fs::write(&path, &contents).unwrap();
        let err = AddressBook::load(&path, me(), b.config).unwrap_err();
        assert!(
            matches!(&err, AddressBookError::TooLarge { path: p, limit: l } if *p == path && *l == limit),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("addrbook.json") && msg.contains(&limit.to_string()),
            "{msg}"
        );
        // Handled as a corrupt file: the node starts empty and the file is kept aside, whole.
        let (empty, err) = AddressBook::load_or_set_aside(&path, me(), b.config);
        assert!(empty.is_empty());
        assert!(
            matches!(err, Some(AddressBookError::TooLarge { .. })),
            "{err:?}"
        );
        assert!(!path.exists());
        assert_eq!(
            fs::read(dir.path().join("addrbook.json.corrupt")).unwrap(),
            contents
        );
    }

    #[test]
    fn file_of_exactly_the_limit_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        let mut b = book(10);
        b.add(addr(1), peer(9), secs(1));
        let limit = b.config.max_file_len();
        // A valid book of exactly the limit loads.
        fs::write(&path, padded_file(&b, limit)).unwrap();
        let back = AddressBook::load(&path, me(), b.config).unwrap();
        assert_eq!(back.entries, b.entries);
        // Garbage of exactly the limit gets past the size check to the parser.
        fs::write(&path, vec![b'x'; usize::try_from(limit).unwrap()]).unwrap();
        assert!(matches!(
            AddressBook::load(&path, me(), b.config),
            Err(AddressBookError::Corrupt(_))
        ));
    }

    #[test]
    fn file_limit_follows_the_capacity_between_floor_and_ceiling() {
        let limit = |capacity| {
            AddressBookConfig {
                capacity,
                ..AddressBookConfig::default()
            }
            .max_file_len()
        };
        assert_eq!(limit(0), MIN_FILE_LEN_LIMIT);
        assert_eq!(limit(1), MIN_FILE_LEN_LIMIT);
        assert_eq!(
            AddressBookConfig::default().max_file_len(),
            MIN_FILE_LEN_LIMIT
        );
        assert_eq!(limit(4096), 4096 * MAX_FILE_BYTES_PER_ENTRY);
        assert_eq!(limit(65_536), MAX_FILE_LEN_LIMIT);
        assert_eq!(limit(65_537), MAX_FILE_LEN_LIMIT);
        assert_eq!(limit(usize::MAX), MAX_FILE_LEN_LIMIT);
    }

    #[test]
    fn a_full_book_of_the_widest_entries_and_bans_fits_its_limit() {
        // Above the floor, so the per-entry bound is what is checked.
        let capacity = 1100;
        let config = AddressBookConfig {
            capacity,
            ..AddressBookConfig::default()
        };
        assert!(config.max_file_len() > MIN_FILE_LEN_LIMIT);
        // The longest DNS name (253 bytes), the largest times and failure count.
        let host = format!("{a}.{a}.{a}.{b}", a = "a".repeat(63), b = "b".repeat(61));
        assert_eq!(host.len(), 253);
        let id = |n: usize| {
            let mut bytes = [0xff; 20];
            bytes[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            PeerId::from_bytes(bytes)
        };
        let entries: Vec<String> = (0..capacity)
            .map(|n| {
                format!(
                    r#"{{"addr":"{}@{host}:65535","source":"{}","last_seen":{max},"last_attempt":{max},"last_success":{max},"failures":{}}}"#,
                    id(n),
                    id(n + capacity),
                    u32::MAX,
                    max = u64::MAX
                )
            })
            .collect();
        let bans: Vec<String> = (0..capacity)
            .map(|n| format!(r#"{{"id":"{}","until":{}}}"#, id(n + capacity), u64::MAX))
            .collect();
        let json = format!(
            r#"{{"version":1,"entries":[{}],"bans":[{}]}}"#,
            entries.join(","),
            bans.join(",")
        );
        let b = AddressBook::from_json(json.as_bytes(), me(), config).unwrap();
        assert_eq!((b.len(), b.bans.len()), (capacity, capacity));
        let written = b.to_json().len() as u64;
        // What save writes fits, with at least a third of the limit to spare.
        assert!(
            written * 3 < config.max_file_len() * 2,
            "{written} bytes for {capacity} entries and bans, limit {}",
            config.max_file_len()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("addrbook.json");
        b.save(&path).unwrap();
        assert_eq!(
            AddressBook::load(&path, me(), config).unwrap().len(),
            capacity
        );
    }

    /// Runs `load_or_set_aside` on another thread and waits for it, so a load that blocks
    /// fails the test instead of hanging it.
    #[cfg(unix)]
    fn load_or_set_aside_within_30s(path: &Path) -> (AddressBook, Option<AddressBookError>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(AddressBook::load_or_set_aside(
                &path,
                me(),
                AddressBookConfig::default(),
            ));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("AddressBook::load blocked")
    }

    #[cfg(unix)]
    #[test]
    fn endless_sources_are_refused_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for path in [&zero, &fifo] {
            let (b, err) = load_or_set_aside_within_30s(path);
            assert!(b.is_empty());
            assert!(
                matches!(&err, Some(AddressBookError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput),
                "{}: {err:?}",
                path.display()
            );
            // An I/O error: nothing moved aside; the next save replaces the path.
            assert!(fs::symlink_metadata(path).is_ok());
            assert!(!sibling(path, ".corrupt").exists());
            b.save(path).unwrap();
            assert!(fs::symlink_metadata(path).unwrap().is_file());
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_into_from_json_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)
        ) {
            let _ = AddressBook::from_json(&bytes, me(), AddressBookConfig::default());
        }
    }
}
