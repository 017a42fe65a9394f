//! The [`PeerExchange`] reactor: discovery on channel `0x50`, a reactor like any other.
//!
//! Every `pex_interval`, while the node has fewer outbound peers than `max_num_outbound_peers`,
//! it asks one random connected peer for addresses and dials a few dialable ones from its
//! [`AddressBook`] (and the configured `seeds` while the book knows too few). It answers a
//! request with up to `max_pex_addresses` (default 30) addresses drawn across network groups
//! (never private peers, never the asker, never banned or non-routable ones unless
//! `allow_non_routable`), and uses at most that many of a response (one longer than both that
//! and TM2's 30 is refused as misbehaviour). Compared with TM2:
//!
//! - what a peer says is untrusted: an inbound peer's advertised address and every address in
//!   a response enter the book as new, counted against the network group of the IP they came
//!   from; only a peer we dialed is recorded as tried, at the address we reached (TM2 records
//!   every connected peer's claim alike; see [`crate::pex::address_book`]);
//! - only peers that advertise channel `0x50` are asked (TM2 asks any peer, and one without
//!   the channel drops the connection);
//! - only a response to a request we sent, within [`ANSWER_TIMEOUT`], is accepted (TM2 dials
//!   any response); a peer with nothing to share sends nothing (as TM2 does), so an
//!   unanswered request expires and the peer may be asked again;
//! - we send no empty response (TM2 refuses one as `errNoPeers`), and our own address in a
//!   response (TM2 includes the asker's) is skipped quietly;
//! - bad entries are skipped one by one (TM2 drops a whole response for one);
//! - requests are rate-limited per peer ([`RequestLimiter`]): one is answered per
//!   `min(pex_interval, 3 s) / 2`, those in between are ignored, and a peer that keeps asking
//!   ([`protocol::FLOOD_AFTER_EARLY_REQUESTS`] ignored requests in a row) is stopped for misbehaving and
//!   banned for [`BAN_DURATION`] (TM2 answers every request);
//! - addresses go to the book and are dialed a few per tick, under the Dialer's bounds (TM2
//!   dials a whole response at once);
//! - `seeds` are dialed while the book is small (TM2 ignores `seeds`);
//! - `seed_mode = true` (TM2 has none): the node serves and crawls. It answers a request and
//!   disconnects that peer [`SEED_DISCONNECT_AFTER`] later, without blame, so its slots stay
//!   free; it keeps dialing addresses from its book, asks each for its addresses, and
//!   disconnects it once answered.
//!
//! The book is saved every [`SAVE_EVERY_TICKS`] ticks and when the actor stops, at
//! [`P2pConfig::addr_book_path`] (under `home`); a node without a home keeps it in memory and
//! logs a warning saying so at start.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{OsRng, RngCore, SeedableRng};
use slog::{Logger, debug, info, warn};

use crate::actors::clock;
use crate::actors::events::{EventStream, SwitchEvent};
use crate::actors::metrics::Metrics;
use crate::actors::reactor::{DisconnectReason, PeerAdded, PeerInfo, PeerRemoved, Receive};
use crate::actors::switch::{DialPeers, DisconnectPeer, StopPeerForError, Switch};
use crate::config::P2pConfig;
use crate::mconn::ChannelDescriptor;
use crate::pex::protocol::{self, MAX_ADDRESSES, max_message_len};
use crate::pex::{
    AddressBook, AddressBookConfig, KnownAddress, NetGroup, PexMessage, RequestLimiter,
    RequestVerdict,
};
use crate::types::{NetAddress, PeerId};

/// The peer-exchange channel (TM2's `0x50`).
pub const PEX_CHANNEL: u8 = 0x50;

/// How long a peer stopped for misbehaving on this channel is banned from the book.
pub const BAN_DURATION: Duration = Duration::from_secs(3600);

/// In seed mode, how long after serving a peer it is disconnected: long enough for the
/// response to reach it, short enough that the seed's slots stay free.
pub const SEED_DISCONNECT_AFTER: Duration = Duration::from_secs(2);

/// How long a request waits for its response: a peer with nothing to share does not answer
/// (TM2 sends no empty response), after this it may be asked again and a late response is
/// ignored as unsolicited.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The book is saved every this many ticks (and when the reactor stops).
pub const SAVE_EVERY_TICKS: u64 = 10;

/// The channel descriptor of peer exchange with the default `max_pex_addresses` (30): TM2's
/// priority 1 and queue of 20; messages capped at the largest valid response.
pub fn pex_channel() -> ChannelDescriptor {
    pex_channel_for(MAX_ADDRESSES)
}

/// [`pex_channel`] for responses of up to `max_addresses` entries (`max_pex_addresses`): the
/// message cap follows the limit, so a node that accepts more entries can receive them.
pub fn pex_channel_for(max_addresses: usize) -> ChannelDescriptor {
    ChannelDescriptor::new(PEX_CHANNEL)
        .with_priority(1)
        .with_send_queue_capacity(20)
        .with_recv_message_capacity(max_message_len(max_addresses.max(MAX_ADDRESSES)))
}

/// The peer-exchange reactor. Started by `SwitchBuilder::spawn` when `pex = true`.
pub struct PeerExchange {
    /// This node's id (the source of the addresses it reached itself).
    own_id: PeerId,
    /// The Switch, for `DialPeers` and `StopPeerForError`.
    switch: Addr<Switch>,
    /// Known addresses.
    book: AddressBook,
    /// Where the book is saved ([`P2pConfig::addr_book_path`]), if the node has a home.
    book_path: Option<PathBuf>,
    /// Per-peer request rate limit.
    limiter: RequestLimiter,
    /// Connected peers.
    peers: HashMap<PeerId, PeerInfo>,
    /// Peers we asked and that have not answered yet, with when we asked: only their
    /// responses are accepted, until [`ANSWER_TIMEOUT`].
    awaiting: HashMap<PeerId, Instant>,
    /// Bootstrap addresses.
    seeds: Vec<NetAddress>,
    /// Peers never shared.
    private: HashSet<PeerId>,
    /// Whether loopback/private addresses may be shared (local networks).
    allow_non_routable: bool,
    /// The most addresses sent in, and accepted from, one response (`max_pex_addresses`).
    max_addresses: usize,
    /// The outbound peer target.
    max_outbound: usize,
    /// Serve and crawl, disconnecting peers once served (see the module docs).
    seed_mode: bool,
    /// How often to ask and dial.
    interval: Duration,
    /// Events of this node (dial outcomes feed the book); taken in `started`.
    events: Option<EventStream>,
    /// Ticks so far (to save the book every few).
    ticks: u64,
    /// Randomness for picking peers and addresses: a ChaCha stream keyed once from the OS.
    /// Drawing from [`OsRng`] itself cost a `getrandom` system call per number, and a pick
    /// shuffles the whole book: a quarter of all CPU in a 1,000-node testnet.
    rng: ChaCha8Rng,
    /// Where the book's size is shown (`tm2p2p_address_book_size`).
    metrics: Metrics,
    /// The node's log.
    log: Logger,
}

impl PeerExchange {
    /// A reactor for the node `own_id` with `config`, reporting to `switch` and watching
    /// `events`. Loads the book from the home (a corrupt file is set aside and reported).
    pub fn new(
        own_id: PeerId,
        config: &P2pConfig,
        switch: Addr<Switch>,
        events: EventStream,
        log: Logger,
    ) -> Self {
        let book_config = AddressBookConfig::from_config(config);
        let book_path = config.addr_book_path();
        let book = match &book_path {
            Some(path) => {
                let (book, error) = AddressBook::load_or_set_aside(path, own_id, book_config);
                match error {
                    Some(e) => {
                        warn!(log, "address book unreadable; set aside, starting empty"; "path" => %path.display(), "error" => %e);
                    }
                    None => {
                        info!(log, "address book loaded"; "path" => %path.display(), "entries" => book.len());
                    }
                }
                book
            }
            None => {
                warn!(
                    log,
                    "no home: the address book is kept in memory and not saved (set `home`, or an absolute `addr_book_file`)"
                );
                AddressBook::new(own_id, book_config)
            }
        };
        Self {
            own_id,
            switch,
            book,
            book_path,
            limiter: RequestLimiter::from_config(config),
            peers: HashMap::new(),
            awaiting: HashMap::new(),
            seeds: config.seeds.clone(),
            private: config.private_peer_ids.iter().copied().collect(),
            allow_non_routable: config.allow_non_routable,
            max_addresses: config.max_pex_addresses,
            max_outbound: config.max_num_outbound_peers,
            seed_mode: config.seed_mode,
            interval: config.pex_interval,
            events: Some(events),
            ticks: 0,
            rng: ChaCha8Rng::from_seed({
                let mut key = [0; 32];
                OsRng.fill_bytes(&mut key);
                key
            }),
            metrics: Metrics::new(),
            log,
        }
    }

    /// Shows the book's size in `metrics` (the node's) instead of a private registry.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        metrics.set_address_book_size(self.book.len());
        Self { metrics, ..self }
    }

    /// Updates the book-size gauge (after anything that may add or evict an address).
    fn book_changed(&self) {
        self.metrics.set_address_book_size(self.book.len());
    }

    /// The address book (for tests and metrics).
    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    /// One discovery round.
    fn tick(&mut self) {
        self.ticks += 1;
        let now = clock::wall_now();
        let outbound = self
            .peers
            .values()
            .filter(|p| p.direction.is_outbound())
            .count();
        let asked_before = clock::now().checked_sub(ANSWER_TIMEOUT);
        self.awaiting
            .retain(|_, asked| asked_before.is_none_or(|t| *asked > t));
        if outbound < self.max_outbound {
            self.ask_someone();
            let exclude: HashSet<PeerId> = self.peers.keys().copied().collect();
            let want = self.max_outbound - outbound;
            let mut picks = self.book.pick_to_dial(want, now, &exclude, &mut self.rng);
            for addr in &picks {
                self.book.mark_attempt(&addr.id(), now);
            }
            if self.book.len() < want {
                picks.extend(
                    self.seeds
                        .iter()
                        .filter(|s| !exclude.contains(&s.id()))
                        .cloned(),
                );
            }
            if !picks.is_empty() {
                // Control message, once per tick; the Dialer bounds what happens next.
                #[allow(clippy::disallowed_methods)]
                self.switch.do_send(DialPeers(picks));
            }
        }
        if self.ticks.is_multiple_of(SAVE_EVERY_TICKS) {
            self.save();
        }
        self.book_changed();
    }

    /// Sends a request to one random connected peer that has the peer-exchange channel and
    /// is not already asked.
    fn ask_someone(&mut self) {
        let candidates: Vec<&PeerInfo> = self
            .peers
            .values()
            .filter(|p| {
                p.node_info.channels.contains(&PEX_CHANNEL) && !self.awaiting.contains_key(&p.id)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let pick = candidates[(self.rng.next_u64() % candidates.len() as u64) as usize];
        let bytes = PexMessage::Request.encode();
        if pick.handle.try_send(PEX_CHANNEL, Bytes::from(bytes)) {
            self.awaiting.insert(pick.id, clock::now());
        }
    }

    /// Answers a request from `peer`.
    fn answer(&mut self, peer: PeerId) {
        let now = clock::wall_now();
        let addrs = self.book.sample_for_sharing(
            self.max_addresses,
            peer,
            &self.private,
            self.allow_non_routable,
            now,
            &mut self.rng,
        );
        let Some(info) = self.peers.get(&peer) else {
            return;
        };
        if addrs.is_empty() {
            // TM2 refuses an empty response; it sends none either.
            return;
        }
        let bytes = PexMessage::Response(addrs).encode();
        // A full queue means the peer is not reading; it loses this answer.
        let _ = info.handle.try_send(PEX_CHANNEL, Bytes::from(bytes));
    }

    /// Stops a peer that broke the peer-exchange rules, and bans it.
    fn punish(&mut self, peer: PeerId, reason: &str) {
        debug!(self.log, "peer exchange misbehaviour"; "peer" => %peer, "reason" => reason);
        self.book.ban(peer, clock::wall_now() + BAN_DURATION);
        // Control message, at most once per offence; StopPeerForError is idempotent.
        #[allow(clippy::disallowed_methods)]
        self.switch.do_send(StopPeerForError {
            peer,
            reason: format!("peer exchange: {reason}"),
        });
    }

    /// In seed mode, disconnects `peer` after `delay` without blame.
    fn release_later(&self, peer: PeerId, delay: Duration, ctx: &mut Context<Self>) {
        if !self.seed_mode {
            return;
        }
        ctx.run_later(delay, move |act, _| {
            // Control message, once per served peer; DisconnectPeer is idempotent.
            #[allow(clippy::disallowed_methods)]
            act.switch.do_send(DisconnectPeer {
                peer,
                reason: "seed: addresses served".into(),
            });
        });
    }

    /// Saves the book if the node has a home.
    fn save(&self) {
        if let Some(path) = &self.book_path
            && let Err(e) = self.book.save(path)
        {
            warn!(self.log, "cannot save the address book"; "path" => %path.display(), "error" => %e);
        }
    }
}

impl Actor for PeerExchange {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(events) = self.events.take() {
            ctx.add_stream(events.into_stream());
        }
        ctx.run_interval(self.interval, |act, _| act.tick());
        // A first round right away: seeds and known addresses need not wait an interval.
        ctx.run_later(Duration::ZERO, |act, _| act.tick());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.save();
    }
}

impl StreamHandler<SwitchEvent> for PeerExchange {
    fn handle(&mut self, event: SwitchEvent, _: &mut Self::Context) {
        let now = clock::wall_now();
        // Only dial failures are subscribed to: a connection is recorded when the reactor gets
        // `PeerAdded`, which says who dialed.
        if let SwitchEvent::DialFailed { address, .. } = event {
            self.book.mark_failed(&address.id(), now);
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The node's event bus is gone; keep serving requests until stopped.
    }
}

impl Handler<PeerAdded> for PeerExchange {
    type Result = ();

    fn handle(&mut self, msg: PeerAdded, _: &mut Self::Context) {
        let info = msg.peer;
        let now = clock::wall_now();
        if info.direction.is_outbound() {
            // We dialed it and it proved its key: the address we reached is tried.
            if let Ok(reached) = NetAddress::from_socket_addr(info.id, info.socket_addr) {
                self.book.add(reached, self.own_id, now);
            }
            self.book.mark_good(&info.id, now);
        } else {
            // What it says about itself, with an unspecified IP replaced by the one it came
            // from: untrusted, a new entry counted against the group of the IP it came from.
            let addr = info.node_info.net_address.or_seen_ip(info.socket_addr.ip());
            let group = NetGroup::of_ip(info.socket_addr.ip());
            self.book.add_from(addr, info.id, group, now);
        }
        self.peers.insert(info.id, info);
        self.book_changed();
    }
}

impl Handler<PeerRemoved> for PeerExchange {
    type Result = ();

    fn handle(&mut self, msg: PeerRemoved, _: &mut Self::Context) {
        self.peers.remove(&msg.peer);
        self.awaiting.remove(&msg.peer);
        self.limiter.remove(&msg.peer);
        if matches!(msg.reason, DisconnectReason::Misbehaved(_)) {
            self.book.ban(msg.peer, clock::wall_now() + BAN_DURATION);
        }
    }
}

impl Handler<Receive> for PeerExchange {
    type Result = ();

    fn handle(&mut self, msg: Receive, ctx: &mut Self::Context) {
        let peer = msg.peer;
        // A response of up to TM2's 30 is never the sender's fault (gno sends up to 30,
        // whatever our limit): one longer than both that and our limit is refused; of one we
        // decode, the first `max_addresses` are used.
        let limit = self.max_addresses.max(MAX_ADDRESSES);
        match protocol::decode_with_limit(&msg.payload, limit) {
            Err(e) => self.punish(peer, &format!("undecodable message: {e}")),
            Ok(decoded) => match decoded.message {
                PexMessage::Request => match self.limiter.check(peer, clock::now()) {
                    RequestVerdict::Answer => {
                        self.answer(peer);
                        self.release_later(peer, SEED_DISCONNECT_AFTER, ctx);
                    }
                    RequestVerdict::Ignore => {
                        debug!(self.log, "peer-exchange request too soon, ignored"; "peer" => %peer);
                    }
                    RequestVerdict::Flood => self.punish(peer, "requests too often"),
                },
                PexMessage::Response(addrs) => {
                    if self.awaiting.remove(&peer).is_none() {
                        debug!(self.log, "unsolicited peer-exchange response ignored"; "peer" => %peer);
                        return;
                    }
                    let now = clock::wall_now();
                    // Counted against the responder's group, whatever the addresses say.
                    let group = self.peers.get(&peer).map_or_else(
                        || NetGroup::of_ip(std::net::Ipv4Addr::UNSPECIFIED.into()),
                        |p| NetGroup::of_ip(p.socket_addr.ip()),
                    );
                    for addr in addrs.into_iter().take(self.max_addresses) {
                        self.book.add_from(addr, peer, group.clone(), now);
                    }
                    self.book_changed();
                    // A seed crawling: this peer has told us what it knows.
                    self.release_later(peer, Duration::ZERO, ctx);
                    if decoded.skipped > 0 {
                        debug!(self.log, "skipped bad addresses"; "peer" => %peer, "skipped" => decoded.skipped);
                    }
                }
            },
        }
    }
}

/// Saves the book and stops the reactor (sent by `Node::shutdown`); the book is on disk when
/// this is answered.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopExchange;

impl Handler<StopExchange> for PeerExchange {
    type Result = ();

    fn handle(&mut self, _: StopExchange, ctx: &mut Self::Context) {
        self.save();
        ctx.stop();
    }
}

/// Asks for the number of addresses in the book (tests, metrics).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "usize")]
pub struct BookSize;

impl Handler<BookSize> for PeerExchange {
    type Result = usize;

    fn handle(&mut self, _: BookSize, _: &mut Self::Context) -> usize {
        self.book.len()
    }
}

/// Asks for a copy of every entry of the book, in id order (tests, diagnostics).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<KnownAddress>")]
pub struct BookEntries;

impl Handler<BookEntries> for PeerExchange {
    type Result = Vec<KnownAddress>;

    fn handle(&mut self, _: BookEntries, _: &mut Self::Context) -> Vec<KnownAddress> {
        self.book.iter().cloned().collect()
    }
}
