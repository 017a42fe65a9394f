//! [`AddressBook`]: the addresses this node knows, how they fared, and which peers are banned.
//!
//! # Clock
//! The book uses one clock: wall-clock [`SystemTime`], passed in as `now` (the driver reads it
//! from `actors::clock::wall_now`). Last-seen times, backoff and ban deadlines are all wall
//! times, so they are persisted as unix seconds and survive a restart unchanged. If the wall
//! clock steps backwards, a deadline lasts longer by that step; a time before 1970 is stored
//! as 0.
//!
//! # New and tried addresses
//! What a peer says (about itself when it connects to us, or about others in a response) is
//! untrusted: it enters the book as *new* ([`add_from`](AddressBook::add_from)), labelled with
//! the network group ([`NetGroup`]) of the IP we heard it from. An address becomes *tried*
//! only through [`mark_good`](AddressBook::mark_good), which the driver calls when a dial of
//! ours to it succeeded: then we know someone with that key listens there. An entry is *good*
//! ([`KnownAddress::is_good`]) when it is tried and has not failed since.
//!
//! The two kinds are kept apart and bounded separately (a simpler form of CometBFT's new and
//! old buckets):
//! - **tried** entries take at most half the capacity, and at most
//!   [`group_limit`](AddressBookConfig::group_limit) of them share an address group. Making
//!   room demotes the tried entry with the oldest success (in the same group when the group is
//!   full) back to new: a good entry can lose its place by age.
//! - **new** entries take the rest, and at most `group_limit` of them were heard from one
//!   source group. Making room evicts the worst new entry (most failures, then oldest
//!   last-seen) of the adding entry's own source group when that group is full, otherwise of
//!   the largest source group. So one source, however many identities it makes up, only ever
//!   evicts its own entries or those of the source that holds the most.
//!
//! Choices ([`pick_to_dial`](AddressBook::pick_to_dial),
//! [`sample_for_sharing`](AddressBook::sample_for_sharing)) are drawn round-robin across
//! groups (tried entries by address group, first in each round; new ones by source group), so
//! a response is never 30 addresses of one group while others are known.
//!
//! Groups: a routable IPv4 address by its /16, a routable IPv6 one by its /32, a non-routable
//! one (loopback, private, link-local) by the whole IP (each machine of a local testnet is a
//! group of its own; all nodes on one loopback IP share one), a DNS name by the name.
//!
//! # The file
//! [`save`](AddressBook::save) writes versioned JSON ([`to_json`](AddressBook::to_json));
//! [`load`](AddressBook::load) reads only a regular file, and only up to
//! [`AddressBookConfig::max_file_len`] bytes, derived from the capacity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::config::{P2pConfig, open_regular_file, read_capped};
use crate::types::{Host, NetAddress, PeerId, is_routable_ip};

/// The version written in the persisted file. Version 1 (before new and tried were kept
/// apart) is still read: its entries come back as new, with their history, since version 1
/// marked inbound peers good on their own word.
pub const FILE_VERSION: u32 = 2;

/// The oldest file version [`AddressBook::from_json`] reads.
pub const OLDEST_FILE_VERSION: u32 = 1;

/// The least [`AddressBookConfig::group_limit`] derived from a capacity: 16 (a book smaller
/// than that has one limit, its capacity).
pub const MIN_GROUP_LIMIT: usize = 16;

/// A generous bound on the bytes one entry of the book takes in its file: 1 KiB.
///
/// What [`AddressBook::to_json`] writes for one entry is at most about 630 bytes: the address
/// (a 40-character id, `@`, a DNS name of up to 253 bytes, a port), the source id, three times
/// and the failure count at their widest, the tried flag, a source group (an IP at most, never
/// a name), the keys and the pretty-printer's indentation. Bans
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
    /// The most new entries heard from one source group, and the most tried entries in one
    /// address group ([`NetGroup`]). Default [`default_group_limit`](Self::default_group_limit)
    /// of the capacity (100 for 1000).
    pub group_limit: usize,
}

impl AddressBookConfig {
    /// `addr_book_size` from the config, with the default backoff and group limit.
    pub fn from_config(config: &P2pConfig) -> Self {
        Self::with_capacity(config.addr_book_size)
    }

    /// A config of `capacity` entries, with the default backoff and group limit.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            group_limit: Self::default_group_limit(capacity),
            ..Self::default()
        }
    }

    /// A tenth of `capacity`, at least [`MIN_GROUP_LIMIT`], at most `capacity`: with the
    /// default 1000, a source needs ten groups of its own to fill the new entries.
    pub fn default_group_limit(capacity: usize) -> usize {
        (capacity / 10).max(MIN_GROUP_LIMIT).min(capacity)
    }

    /// The most tried entries: half the capacity (at least 1 when the capacity is not 0).
    pub fn tried_capacity(&self) -> usize {
        (self.capacity / 2).max(1).min(self.capacity)
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
            group_limit: 100,
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
    /// In the tried table: a dial of ours to it succeeded (and it was not demoted since).
    pub tried: bool,
    /// The group of the IP we heard the address from (for a new entry's limit and choices).
    pub source_group: NetGroup,
}

impl KnownAddress {
    /// Tried (a dial of ours succeeded) and no failure since.
    pub const fn is_good(&self) -> bool {
        self.tried && self.failures == 0
    }

    /// The group of the address itself.
    pub fn group(&self) -> NetGroup {
        NetGroup::of_host(self.addr.host())
    }

    /// Where choices draw this entry from: tried ones by address group, new ones by source.
    fn bucket(&self) -> (bool, NetGroup) {
        if self.tried {
            (false, self.group())
        } else {
            (true, self.source_group.clone())
        }
    }
}

/// A network group: the unit the book limits and spreads its choices over (see the module
/// docs). Written in the file as text (`Display`; `FromStr` reads every kind but a name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetGroup {
    /// A routable IPv4 address: its first two octets (/16).
    V4([u8; 2]),
    /// A routable IPv6 address: its first four octets (/32).
    V6([u8; 4]),
    /// A non-routable IP (loopback, private, link-local): the whole address.
    Local(IpAddr),
    /// A DNS name, not resolved: the name.
    Name(String),
    /// This node: addresses from its config and from its own dials.
    Own,
}

impl NetGroup {
    /// The group of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of_ip(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if ip.is_unspecified() || !is_routable_ip(ip) {
            return Self::Local(ip);
        }
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                Self::V4([a, b])
            }
            IpAddr::V6(v6) => {
                let [a, b, c, d, ..] = v6.octets();
                Self::V6([a, b, c, d])
            }
        }
    }

    /// The group of an address's host.
    pub fn of_host(host: &Host) -> Self {
        match host {
            Host::Ip(ip) => Self::of_ip(*ip),
            Host::Dns(name) => Self::Name(name.clone()),
        }
    }
}

impl fmt::Display for NetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4([a, b]) => write!(f, "v4:{a}.{b}"),
            Self::V6(o) => write!(f, "v6:{:08x}", u32::from_be_bytes(*o)),
            Self::Local(ip) => write!(f, "ip:{ip}"),
            Self::Name(name) => write!(f, "dns:{name}"),
            Self::Own => f.write_str("own"),
        }
    }
}

impl FromStr for NetGroup {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s == "own" {
            return Ok(Self::Own);
        }
        let (kind, rest) = s.split_once(':').ok_or(())?;
        match kind {
            "v4" => {
                let (a, b) = rest.split_once('.').ok_or(())?;
                Ok(Self::V4([
                    a.parse().map_err(drop)?,
                    b.parse().map_err(drop)?,
                ]))
            }
            "v6" if rest.len() == 8 => Ok(Self::V6(
                u32::from_str_radix(rest, 16).map_err(drop)?.to_be_bytes(),
            )),
            "ip" => Ok(Self::Local(rest.parse().map_err(drop)?)),
            // A name is never written (it is the address's own group when it is one), and
            // reading one would let a file hold entries of any width.
            _ => Err(()),
        }
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
    /// Every slot holds a tried entry (only possible with a capacity of 1): nothing could be
    /// evicted.
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
/// - [`add_from`](Self::add_from) every address from a response (source = the responder and
///   its IP) and the advertised address of every inbound peer (source = itself and the IP it
///   came from): both go in as new;
/// - before dialing: [`pick_to_dial`](Self::pick_to_dial), then
///   [`mark_attempt`](Self::mark_attempt); after a dial of ours succeeded: `add` the address
///   we reached, then [`mark_good`](Self::mark_good) (it becomes tried); after a failure:
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

    /// [`add_from`](Self::add_from) with the address's own group as the source group: for
    /// addresses of our own (config, our dials) and for tests.
    pub fn add(&mut self, addr: NetAddress, source: PeerId, now: SystemTime) -> AddOutcome {
        let group = if source == self.own_id {
            NetGroup::Own
        } else {
            NetGroup::of_host(addr.host())
        };
        self.add_from(addr, source, group, now)
    }

    /// Adds or refreshes `addr` as a *new* (untried) entry, told by `source` from an IP in
    /// `source_group` at `now` (see the module docs for the limits and what is evicted).
    ///
    /// A known id is refreshed (last seen). Its address is replaced when the peer itself
    /// (`source` = its id, as for an inbound peer) says it moved, or when a third party names
    /// another address for a new entry that failed since its last success (the one we have
    /// does not work). A replaced address is untried: the entry is new again. So a third
    /// party cannot redirect a tried entry, nor a new one that may still work (or move it into
    /// its own source group, where its own adds would evict it).
    pub fn add_from(
        &mut self,
        addr: NetAddress,
        source: PeerId,
        source_group: NetGroup,
        now: SystemTime,
    ) -> AddOutcome {
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
            let failing = !entry.tried && entry.failures > 0;
            if entry.addr != addr && (source == id || failing) {
                entry.addr = addr;
                entry.source = source;
                entry.source_group = source_group.clone();
                entry.tried = false;
                self.trim_new_group(&source_group);
            }
            return AddOutcome::Refreshed;
        }
        let mut evicted = None;
        let in_group = self
            .entries
            .values()
            .filter(|e| !e.tried && e.source_group == source_group)
            .count();
        let victim_group = if in_group >= self.config.group_limit {
            Some(source_group.clone())
        } else if self.entries.len() >= self.config.capacity {
            self.largest_new_group()
        } else {
            None
        };
        if in_group >= self.config.group_limit || self.entries.len() >= self.config.capacity {
            match victim_group.and_then(|g| self.worst_new_in(&g)) {
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
                tried: false,
                source_group,
            },
        );
        AddOutcome::Added { evicted }
    }

    /// Evicts the worst new entries heard from `group` while it holds more than the group
    /// limit (after an entry joined it without an add: a demotion or a moved address).
    fn trim_new_group(&mut self, group: &NetGroup) {
        let count = |b: &Self| {
            b.entries
                .values()
                .filter(|e| !e.tried && e.source_group == *group)
                .count()
        };
        while count(self) > self.config.group_limit {
            let Some(worst) = self.worst_new_in(group) else {
                return;
            };
            self.entries.remove(&worst);
        }
    }

    /// The source group holding the most new entries (ties: the greatest group, so the
    /// choice is deterministic).
    fn largest_new_group(&self) -> Option<NetGroup> {
        let mut counts: BTreeMap<&NetGroup, usize> = BTreeMap::new();
        for e in self.entries.values().filter(|e| !e.tried) {
            *counts.entry(&e.source_group).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(g, n)| (*n, *g))
            .map(|(g, _)| g.clone())
    }

    /// The eviction candidate among the new entries heard from `group`: most failures, then
    /// oldest last-seen.
    fn worst_new_in(&self, group: &NetGroup) -> Option<PeerId> {
        self.entries
            .values()
            .filter(|e| !e.tried && e.source_group == *group)
            .max_by(|a, b| {
                a.failures
                    .cmp(&b.failures)
                    .then(b.last_seen.cmp(&a.last_seen))
                    .then(b.addr.id().cmp(&a.addr.id()))
            })
            .map(|e| e.addr.id())
    }

    /// The tried entry with the oldest success, among those in `group` if given.
    fn oldest_tried(&self, group: Option<&NetGroup>) -> Option<PeerId> {
        self.entries
            .values()
            .filter(|e| e.tried && group.is_none_or(|g| e.group() == *g))
            .min_by_key(|e| (e.last_success, e.addr.id()))
            .map(|e| e.addr.id())
    }

    /// Number of tried entries.
    pub fn tried_len(&self) -> usize {
        self.entries.values().filter(|e| e.tried).count()
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

    /// Records that a dial of ours to `id` succeeded at `now`: failures reset, last seen and
    /// last success set, and the entry moves to the tried table. When that table is full
    /// (half the capacity, or `group_limit` in the entry's address group), the tried entry
    /// with the oldest success (in that group when the group is full) goes back to new.
    /// False when `id` is unknown.
    ///
    /// Call it only for our own dials: an inbound peer's address is what it says about itself.
    pub fn mark_good(&mut self, id: &PeerId, now: SystemTime) -> bool {
        let Some(e) = self.entries.get(id) else {
            return false;
        };
        // Chosen before the entry is promoted, so it is never the one demoted.
        let demote = if e.tried {
            None
        } else {
            let group = e.group();
            let in_group = self
                .entries
                .values()
                .filter(|e| e.tried && e.group() == group)
                .count();
            if in_group >= self.config.group_limit {
                self.oldest_tried(Some(&group))
            } else if self.tried_len() >= self.config.tried_capacity() {
                self.oldest_tried(None)
            } else {
                None
            }
        };
        if let Some(e) = self.entries.get_mut(id) {
            e.failures = 0;
            e.last_success = Some(now);
            e.last_seen = e.last_seen.max(now);
            e.tried = true;
        }
        if let Some(old) = demote.and_then(|d| self.entries.get_mut(&d)) {
            old.tried = false;
            let group = old.source_group.clone();
            self.trim_new_group(&group);
        }
        true
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
    /// the ids in `exclude` (connected or already being dialed), drawn across groups
    /// (see the module docs).
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
            .filter(|e| !exclude.contains(&e.addr.id()) && self.is_dialable(&e.addr.id(), now));
        spread(candidates, n, rng)
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

    /// Up to `n` random addresses to give the peer `asker`, drawn across groups (module docs:
    /// tried ones first in each round): only entries without a failure since their last
    /// success, never `asker` itself, never a peer in `private`, never a banned one, never a
    /// non-routable one unless `allow_non_routable` ([`NetAddress::is_shareable`]).
    ///
    /// New (untried) entries are shared too, as TM2 shares every connected peer: a seed that
    /// only receives connections has nothing else to give. The spread across source groups is
    /// what keeps a source with many identities to its share of a response.
    pub fn sample_for_sharing(
        &self,
        n: usize,
        asker: PeerId,
        private: &HashSet<PeerId>,
        allow_non_routable: bool,
        now: SystemTime,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Vec<NetAddress> {
        let candidates = self.entries.values().filter(|e| {
            let id = e.addr.id();
            e.failures == 0
                && id != asker
                && !private.contains(&id)
                && !self.is_banned(&id, now)
                && e.addr.is_shareable(allow_non_routable)
        });
        spread(candidates, n, rng)
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
                    tried: e.tried,
                    source_group: (e.source_group != e.group()
                        && !matches!(e.source_group, NetGroup::Name(_)))
                    .then(|| e.source_group.to_string()),
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

    /// Reads a book written by [`to_json`](Self::to_json), this version or an older one
    /// ([`OLDEST_FILE_VERSION`]; its entries load as new). A file that is not valid JSON of
    /// that shape is [`AddressBookError::Corrupt`]; single entries that do not parse, carry
    /// our own id or exceed the capacity or their source group's limit are skipped, and tried
    /// entries beyond the tried limits load as new.
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
        if !(OLDEST_FILE_VERSION..=FILE_VERSION).contains(&v.version) {
            return Err(AddressBookError::UnsupportedVersion { found: v.version });
        }
        let file: FileRepr =
            serde_json::from_slice(bytes).map_err(|e| AddressBookError::Corrupt(e.to_string()))?;
        let mut book = Self::new(own_id, config);
        let mut tried_groups: HashMap<NetGroup, usize> = HashMap::new();
        let mut new_groups: HashMap<NetGroup, usize> = HashMap::new();
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
            let group = NetGroup::of_host(addr.host());
            // Version 1 marked inbound peers good on their word: nothing of it is tried.
            let tried = v.version >= 2
                && e.tried
                && *tried_groups.get(&group).unwrap_or(&0) < config.group_limit
                && tried_groups.values().sum::<usize>() < config.tried_capacity();
            let source_group = e
                .source_group
                .and_then(|g| g.parse().ok())
                .unwrap_or_else(|| group.clone());
            if tried {
                *tried_groups.entry(group).or_default() += 1;
            } else {
                let n = new_groups.entry(source_group.clone()).or_default();
                if *n >= config.group_limit {
                    continue;
                }
                *n += 1;
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
                    tried,
                    source_group,
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

/// Up to `n` of `entries`' addresses, drawn across groups: the entries are put in buckets
/// (tried ones by address group, new ones by source group), each bucket shuffled, the
/// buckets in random order with the tried ones first; then one address is taken from each
/// bucket in turn, round after round, until `n` are taken or none is left.
fn spread<'a>(
    entries: impl Iterator<Item = &'a KnownAddress>,
    n: usize,
    rng: &mut (impl RngCore + ?Sized),
) -> Vec<NetAddress> {
    let mut buckets: BTreeMap<(bool, NetGroup), Vec<NetAddress>> = BTreeMap::new();
    for e in entries {
        buckets.entry(e.bucket()).or_default().push(e.addr.clone());
    }
    let (tried, new): (Vec<_>, Vec<_>) = buckets
        .into_iter()
        .map(|((new, _), addrs)| (new, addrs))
        .partition(|(new, _)| !new);
    let (tried_len, new_len) = (tried.len(), new.len());
    let mut order: Vec<Vec<NetAddress>> = sample(tried, tried_len, rng)
        .into_iter()
        .chain(sample(new, new_len, rng))
        .map(|(_, addrs)| {
            let len = addrs.len();
            let mut addrs = sample(addrs, len, rng);
            addrs.reverse(); // taken from the end
            addrs
        })
        .collect();
    let mut out = Vec::with_capacity(n.min(order.iter().map(Vec::len).sum()));
    while out.len() < n && !order.is_empty() {
        order.retain_mut(|bucket| {
            if out.len() < n
                && let Some(a) = bucket.pop()
            {
                out.push(a);
            }
            !bucket.is_empty()
        });
    }
    out
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
    /// Since version 2.
    #[serde(default)]
    tried: bool,
    /// Since version 2 ([`NetGroup`]'s text, never a name); absent when it is the address's
    /// own group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_group: Option<String>,
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

    /// A book without group limits (the tests of everything else).
    fn book(capacity: usize) -> AddressBook {
        AddressBook::new(
            me(),
            AddressBookConfig {
                capacity,
                group_limit: capacity,
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
    fn only_a_book_of_one_tried_entry_refuses_new_ones() {
        let mut b = book(1);
        b.add(addr(1), peer(9), t0());
        b.mark_good(&peer(1), t0());
        assert_eq!(b.add(addr(2), peer(9), secs(1)), AddOutcome::Full);
        // Any larger book keeps room for new entries: tried ones take at most half.
        let mut b = book(4);
        for i in 1..=4 {
            b.add(addr(i), peer(9), t0());
            b.mark_good(&peer(i), secs(u64::from(i)));
        }
        assert_eq!(b.tried_len(), 2);
        assert!(matches!(
            b.add(addr(5), peer(9), secs(9)),
            AddOutcome::Added { evicted: Some(_) }
        ));
        assert_eq!(b.len(), 4);
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
            b.add(addr(i), peer(99), t0()); // never dialed: new, shared too
        }
        b.mark_failed(&peer(40), t0());
        let private: HashSet<PeerId> = (1..=5).map(peer).collect();
        b.ban(peer(6), secs(1000));
        let asker = peer(7);
        let mut r = rng();
        for _ in 0..50 {
            let s = b.sample_for_sharing(30, asker, &private, false, secs(1), &mut r);
            assert_eq!(s.len(), 30); // 8..=39 and 51..=55 are 37 candidates
            let ids: HashSet<PeerId> = s.iter().map(NetAddress::id).collect();
            assert_eq!(ids.len(), 30);
            for id in &ids {
                assert!(!private.contains(id) && *id != asker && *id != peer(6));
                assert!((41..=50).all(|i| *id != peer(i)) && *id != peer(40));
            }
        }
        let all = b.sample_for_sharing(1000, asker, &private, true, secs(1), &mut r);
        assert_eq!(all.len(), 37 + 10);
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
                br#"{"version":3,"entries":[]}"#,
                me(),
                AddressBookConfig::default()
            ),
            Err(AddressBookError::UnsupportedVersion { found: 3 })
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
            group_limit: 10,
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
            group_limit: capacity,
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

    /// Peer `n` of many (beyond `peer`'s 256).
    fn pid(n: u32) -> PeerId {
        let mut bytes = [7u8; 20];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        PeerId::from_bytes(bytes)
    }

    fn v4(n: u32, ip: [u8; 4], port: u16) -> NetAddress {
        NetAddress::from_socket_addr(pid(n), (ip, port).into()).unwrap()
    }

    fn ip(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    /// Checks the book's bounds: capacity, tried share, and both group limits.
    fn assert_bounds(b: &AddressBook) {
        let c = b.config;
        assert!(b.len() <= c.capacity);
        assert!(b.tried_len() <= c.tried_capacity());
        let mut tried: HashMap<NetGroup, usize> = HashMap::new();
        let mut new: HashMap<NetGroup, usize> = HashMap::new();
        for e in b.iter() {
            assert!(e.tried || e.addr.id() != b.own_id);
            let n = if e.tried {
                tried.entry(e.group()).or_default()
            } else {
                new.entry(e.source_group.clone()).or_default()
            };
            *n += 1;
            assert!(*n <= c.group_limit, "{e:?}");
        }
    }

    #[test]
    fn groups_are_slash_16_slash_32_or_the_whole_local_ip() {
        assert_eq!(NetGroup::of_ip(ip([8, 8, 4, 4])), NetGroup::V4([8, 8]));
        assert_eq!(
            NetGroup::of_ip(ip([8, 8, 200, 1])),
            NetGroup::of_ip(ip([8, 8, 4, 4]))
        );
        assert_ne!(
            NetGroup::of_ip(ip([8, 9, 4, 4])),
            NetGroup::of_ip(ip([8, 8, 4, 4]))
        );
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        assert_eq!(NetGroup::of_ip(v6), NetGroup::V6([0x20, 0x01, 0x0d, 0xb8]));
        let mapped: IpAddr = "::ffff:8.8.1.1".parse().unwrap();
        assert_eq!(NetGroup::of_ip(mapped), NetGroup::V4([8, 8]));
        // Loopback and private addresses: each IP its own group.
        for local in [
            [127, 0, 0, 1],
            [127, 0, 0, 2],
            [10, 1, 2, 3],
            [192, 168, 1, 1],
        ] {
            assert_eq!(NetGroup::of_ip(ip(local)), NetGroup::Local(ip(local)));
        }
        // The text form reads back (names are never written).
        for g in [
            NetGroup::V4([8, 8]),
            NetGroup::V6([0x20, 0x01, 0x0d, 0xb8]),
            NetGroup::Local(ip([127, 0, 0, 3])),
            NetGroup::Local("::1".parse().unwrap()),
            NetGroup::Own,
        ] {
            assert_eq!(g.to_string().parse::<NetGroup>(), Ok(g));
        }
        assert!("dns:example.com".parse::<NetGroup>().is_err());
        assert!("v6:123".parse::<NetGroup>().is_err());
    }

    #[test]
    fn what_a_peer_says_is_new_until_our_dial_succeeds() {
        let mut b = AddressBook::new(me(), AddressBookConfig::default());
        let a = v4(1, [8, 8, 1, 1], 26656);
        b.add_from(a.clone(), pid(1), NetGroup::of_ip(ip([8, 8, 1, 1])), t0());
        let e = b.get(&pid(1)).unwrap();
        assert!(!e.tried && !e.is_good());
        assert_eq!(b.tried_len(), 0);
        assert!(b.mark_good(&pid(1), secs(1)));
        assert!(b.get(&pid(1)).unwrap().is_good());
        // A third party cannot move a tried entry; the peer itself can, and is untried again.
        let moved = v4(1, [9, 9, 1, 1], 26656);
        b.add_from(moved.clone(), pid(2), NetGroup::V4([6, 6]), secs(2));
        assert_eq!(b.get(&pid(1)).unwrap().addr, a);
        b.add_from(moved.clone(), pid(1), NetGroup::V4([9, 9]), secs(3));
        let e = b.get(&pid(1)).unwrap();
        assert_eq!(e.addr, moved);
        assert!(!e.tried);
    }

    #[test]
    fn a_third_party_redirects_only_a_failing_new_entry() {
        let mut b = AddressBook::new(me(), AddressBookConfig::default());
        let honest = v4(1, [8, 8, 1, 1], 1);
        b.add_from(honest.clone(), pid(1), NetGroup::V4([8, 8]), t0());
        let elsewhere = v4(1, [6, 6, 6, 6], 1);
        let attacker = NetGroup::V4([6, 6]);
        b.add_from(elsewhere.clone(), pid(2), attacker.clone(), secs(1));
        let e = b.get(&pid(1)).unwrap();
        assert_eq!((&e.addr, &e.source_group), (&honest, &NetGroup::V4([8, 8])));
        assert_eq!(e.last_seen, secs(1));
        // Once it failed, another address is worth a try.
        b.mark_failed(&pid(1), secs(2));
        b.add_from(elsewhere.clone(), pid(2), attacker.clone(), secs(3));
        let e = b.get(&pid(1)).unwrap();
        assert_eq!((&e.addr, &e.source_group), (&elsewhere, &attacker));
    }

    #[test]
    fn one_source_group_holds_at_most_the_group_limit_and_evicts_only_its_own() {
        let config = AddressBookConfig::with_capacity(100);
        assert_eq!(config.group_limit, MIN_GROUP_LIMIT);
        let mut b = AddressBook::new(me(), config);
        // Ten honest entries, one per source group.
        for n in 0..10 {
            let src = [20 + n as u8, 1, 1, 1];
            b.add_from(v4(n, src, 1), pid(n), NetGroup::of_ip(ip(src)), secs(0));
        }
        // An attacker with one source IP makes up 500 identities in 500 /16s.
        let attacker = NetGroup::of_ip(ip([6, 6, 6, 6]));
        for n in 1000..1500 {
            let addr = v4(n, [100 + (n % 100) as u8, (n / 100) as u8, 1, 1], 1);
            let out = b.add_from(addr, pid(n), attacker.clone(), secs(u64::from(n)));
            if let AddOutcome::Added { evicted: Some(e) } = out {
                assert_eq!(b.get(&e), None);
                assert!(e.to_string() != pid(0).to_string());
            }
        }
        assert_bounds(&b);
        let from_attacker = b.iter().filter(|e| e.source_group == attacker).count();
        assert_eq!(from_attacker, config.group_limit);
        assert!((0..10).all(|n| b.get(&pid(n)).is_some()));
        // The attacker's survivors are its latest (oldest last-seen evicted first).
        assert!(b.get(&pid(1499)).is_some() && b.get(&pid(1000)).is_none());
    }

    #[test]
    fn a_full_book_evicts_from_the_largest_source_group() {
        let config = AddressBookConfig {
            capacity: 20,
            group_limit: 8,
            ..AddressBookConfig::default()
        };
        let mut b = AddressBook::new(me(), config);
        // Groups of 8, 8 and 4 fill it.
        let groups = [
            NetGroup::V4([1, 1]),
            NetGroup::V4([2, 2]),
            NetGroup::V4([3, 3]),
        ];
        let mut n = 0;
        for (g, count) in groups.iter().zip([8, 8, 4]) {
            for _ in 0..count {
                b.add_from(
                    v4(n, [50, 50, 0, 1], 1),
                    pid(n),
                    g.clone(),
                    secs(u64::from(n)),
                );
                n += 1;
            }
        }
        assert_eq!(b.len(), 20);
        // A fifth entry of the small group evicts from the largest (the greater of the two
        // of 8), its oldest.
        let out = b.add_from(
            v4(99, [50, 50, 0, 1], 1),
            pid(99),
            groups[2].clone(),
            secs(99),
        );
        assert_eq!(
            out,
            AddOutcome::Added {
                evicted: Some(pid(8))
            }
        );
        assert_bounds(&b);
    }

    #[test]
    fn tried_entries_take_half_and_the_oldest_success_makes_room() {
        let config = AddressBookConfig {
            capacity: 8,
            group_limit: 8,
            ..AddressBookConfig::default()
        };
        let mut b = AddressBook::new(me(), config);
        for n in 0..6 {
            let a = [30 + n as u8, 1, 1, 1];
            b.add(v4(n, a, 1), pid(n), secs(0));
            b.mark_good(&pid(n), secs(u64::from(n) + 1));
        }
        assert_eq!(b.tried_len(), 4);
        // The two oldest successes went back to new: good entries age out.
        assert!(!b.get(&pid(0)).unwrap().tried && !b.get(&pid(1)).unwrap().tried);
        assert!((2..6).all(|n| b.get(&pid(n)).unwrap().is_good()));
        // A success refreshes: pid 2 is now the newest, so pid 3 goes next.
        b.mark_good(&pid(2), secs(20));
        b.mark_good(&pid(0), secs(21));
        assert!(!b.get(&pid(3)).unwrap().tried && b.get(&pid(2)).unwrap().tried);
        assert_bounds(&b);
    }

    #[test]
    fn tried_entries_are_limited_per_address_group() {
        let config = AddressBookConfig {
            capacity: 40,
            group_limit: 3,
            ..AddressBookConfig::default()
        };
        let mut b = AddressBook::new(me(), config);
        for n in 0..5 {
            b.add(v4(n, [8, 8, n as u8, 1], 1), me(), secs(0));
            b.mark_good(&pid(n), secs(u64::from(n) + 1));
        }
        b.add(v4(9, [9, 9, 9, 9], 1), me(), secs(0));
        b.mark_good(&pid(9), secs(10));
        assert_eq!(b.tried_len(), 4); // three of 8.8/16 (the latest) and 9.9/16
        assert!((2..5).all(|n| b.get(&pid(n)).unwrap().tried));
        assert_bounds(&b);
    }

    #[test]
    fn choices_are_spread_across_groups() {
        let mut b = AddressBook::new(me(), AddressBookConfig::default());
        // 100 from one source, one each from five others, three tried.
        for n in 0..100 {
            b.add_from(
                v4(n, [6, 6, 1, 1], n as u16 + 1),
                pid(n),
                NetGroup::V4([6, 6]),
                t0(),
            );
        }
        for n in 100..105 {
            let src = [n as u8, 1, 1, 1];
            b.add_from(v4(n, src, 1), pid(n), NetGroup::of_ip(ip(src)), t0());
        }
        for n in 200..203 {
            b.add(v4(n, [n as u8, 2, 2, 2], 1), me(), t0());
            b.mark_good(&pid(n), t0());
        }
        let honest: HashSet<PeerId> = (100..105).chain(200..203).map(pid).collect();
        let mut r = rng();
        for _ in 0..20 {
            let s = b.sample_for_sharing(10, pid(999), &HashSet::new(), false, secs(1), &mut r);
            assert_eq!(s.len(), 10);
            // Nine groups: every one of the eight small ones is in, and two of the big one.
            let got = s.iter().filter(|a| honest.contains(&a.id())).count();
            assert_eq!(got, 8, "{s:?}");
            // Tried entries come first in a round.
            assert!(
                s[..3].iter().all(|a| b.get(&a.id()).unwrap().tried),
                "{s:?}"
            );
            let picks = b.pick_to_dial(9, secs(1), &HashSet::new(), &mut r);
            assert_eq!(picks.iter().filter(|a| honest.contains(&a.id())).count(), 8);
        }
    }

    #[test]
    fn an_attack_of_1100_identities_from_four_source_ips_leaves_the_honest_ones() {
        // The shape of the attack that poisoned the old book (981 attacker entries, 3 honest,
        // 30 of 30 in a response): the default book; 40 honest peers, 10 of them dialed by
        // us (tried), the others inbound from their own IPs; then 1,100 throwaway identities
        // from four source IPs in three /16s, each saying it lives in a /16 of its own.
        let mut b = AddressBook::new(me(), AddressBookConfig::default());
        let mut now = 0;
        let mut honest = HashSet::new();
        for n in 0..40u32 {
            let at = [11 + n as u8, 3, 0, 1];
            if n < 10 {
                b.add(v4(n, at, 26656), me(), secs(now));
                b.mark_good(&pid(n), secs(now));
            } else {
                b.add_from(v4(n, at, 26656), pid(n), NetGroup::of_ip(ip(at)), secs(now));
            }
            honest.insert(pid(n));
            now += 1;
        }
        let sources = [[6, 6, 0, 1], [6, 6, 0, 2], [7, 7, 0, 1], [9, 9, 0, 1]];
        for n in 10_000..11_100u32 {
            let src = sources[n as usize % 4];
            let claimed = [100 + (n % 100) as u8, (n / 100 % 256) as u8, 0, 1];
            b.add_from(
                v4(n, claimed, 26656),
                pid(n),
                NetGroup::of_ip(ip(src)),
                secs(now),
            );
            now += 1;
        }
        assert_bounds(&b);
        let in_book = b.iter().filter(|e| honest.contains(&e.addr.id())).count();
        let attackers = b.len() - in_book;
        assert_eq!(in_book, 40);
        assert_eq!(attackers, 3 * b.config.group_limit);
        let mut r = rng();
        let mut least = usize::MAX;
        for _ in 0..100 {
            let s = b.sample_for_sharing(30, pid(5000), &HashSet::new(), false, secs(now), &mut r);
            assert_eq!(s.len(), 30);
            least = least.min(s.iter().filter(|a| honest.contains(&a.id())).count());
        }
        // 43 groups (10 tried, 30 honest new, 3 attacker sources) for 30 places: at most 3
        // attacker addresses, and only when their groups are drawn.
        assert!(least >= 27, "only {least} honest of 30");
        println!(
            "attack: {in_book} honest and {attackers} attacker entries in the book; \
             at least {least} honest addresses in each of 100 responses of 30"
        );
    }

    #[test]
    fn a_version_1_book_loads_with_every_entry_new() {
        let json = format!(
            r#"{{"version":1,"entries":[
                {{"addr":"{a}","source":"{s}","last_seen":1,"last_attempt":2,"last_success":3,"failures":0}}
            ]}}"#,
            s = peer(9),
            a = addr(1),
        );
        let b =
            AddressBook::from_json(json.as_bytes(), me(), AddressBookConfig::default()).unwrap();
        let e = b.get(&peer(1)).unwrap();
        assert!(!e.tried && !e.is_good());
        assert_eq!(e.last_success, Some(UNIX_EPOCH + Duration::from_secs(3)));
        assert_eq!(e.source_group, NetGroup::V4([8, 8]));
        // Saved again, it is version 2.
        assert!(
            String::from_utf8(b.to_json())
                .unwrap()
                .contains(r#""version": 2"#)
        );
    }

    #[test]
    fn tried_and_source_groups_survive_a_save() {
        let mut b = AddressBook::new(me(), AddressBookConfig::default());
        b.add(v4(1, [8, 8, 1, 1], 1), me(), t0());
        b.mark_good(&pid(1), t0());
        b.add_from(
            v4(2, [9, 9, 1, 1], 1),
            pid(2),
            NetGroup::Local(ip([127, 0, 0, 5])),
            t0(),
        );
        b.add_from(v4(3, [9, 9, 1, 2], 1), pid(3), NetGroup::V4([9, 9]), t0());
        let back = AddressBook::from_json(&b.to_json(), me(), b.config).unwrap();
        assert_eq!(back.entries, b.entries);
    }

    proptest::proptest! {
        #[test]
        fn the_bounds_hold_whatever_happens(
            ops in proptest::collection::vec((0u8..4, 0u32..300, 0u8..6), 1..600)
        ) {
            let config = AddressBookConfig {
                capacity: 60,
                group_limit: 12,
                ..AddressBookConfig::default()
            };
            let mut b = AddressBook::new(me(), config);
            // One honest entry from a group no one else uses, added first.
            b.add_from(v4(9999, [200, 1, 1, 1], 1), pid(9999), NetGroup::V4([200, 1]), t0());
            for (i, (op, n, g)) in ops.into_iter().enumerate() {
                let now = secs(i as u64 + 1);
                match op {
                    0 | 1 => {
                        let group = NetGroup::V4([g, g]);
                        b.add_from(v4(n, [g + 1, (n % 7) as u8, 0, 1], 1), pid(n), group, now);
                    }
                    2 => {
                        b.mark_good(&pid(n), now);
                    }
                    _ => {
                        b.mark_failed(&pid(n), now);
                    }
                }
                assert_bounds(&b);
                // A small group is never the one evicted from while a larger one exists.
                proptest::prop_assert!(b.get(&pid(9999)).is_some());
            }
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
