//! [`DialQueue`]: addresses waiting to be dialed, ordered by due time, one entry per peer,
//! bounded.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::types::{NetAddress, PeerId};

/// The default bound on queued dials: 1024.
///
/// The queue only has to hold what the `Dialer` can use soon: the outbound slots (default 10),
/// the persistent peers, and a few rounds of peer-exchange responses (at most 30 addresses
/// each). 1024 items is about 100 KiB, so a network that floods us with addresses through peer
/// exchange costs a bounded amount of memory; beyond it, pushes fail with [`DialQueueFull`].
/// TM2's queue has no bound.
pub const DEFAULT_DIAL_QUEUE_CAPACITY: usize = 1024;

/// One dial to make: where, and not before when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialItem {
    /// The address to dial; its id is the peer id the handshake must authenticate, and the key
    /// the queue de-duplicates on.
    pub address: NetAddress,
    /// The earliest time the dial may start.
    pub due: Instant,
}

impl DialItem {
    /// A dial of `address` due at `due`.
    pub const fn new(address: NetAddress, due: Instant) -> Self {
        Self { address, due }
    }

    /// The peer this dial is for (the address's id).
    pub const fn id(&self) -> PeerId {
        self.address.id()
    }
}

/// What [`DialQueue::push`] did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The peer was not queued; the item is now.
    Queued,
    /// The peer was queued with a later due time; the new item (its address included) replaced
    /// that entry.
    Rescheduled {
        /// The due time the replaced entry had.
        previous_due: Instant,
    },
    /// The peer was already queued, due no later than the new item; the queue is unchanged
    /// and the new item was dropped.
    AlreadyQueued {
        /// The due time of the entry that stays.
        due: Instant,
    },
}

/// [`DialQueue::push`] refused an item for a peer not yet queued because the queue holds
/// [`capacity`](DialQueue::capacity) items. The item is handed back so the caller can report
/// it (a `DialFailed` event) instead of losing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dial queue is full ({capacity} items); dial of {} refused", item.address)]
pub struct DialQueueFull {
    /// The queue's capacity.
    pub capacity: usize,
    /// The refused item.
    pub item: DialItem,
}

impl DialQueueFull {
    /// Always false: a full queue is local back-pressure, whoever sent the addresses.
    pub const fn is_peer_fault(&self) -> bool {
        false
    }
}

/// Addresses waiting to be dialed, ordered by due time, at most one per peer, bounded.
///
/// Calling protocol for a driver (the `Dialer` actor):
/// 1. [`push`](DialQueue::push) items as `DialPeers` and redials arrive; a full queue answers
///    [`DialQueueFull`] with the item, which the driver reports (as `DialFailed`), never drops
///    silently;
/// 2. after any push or pop, arm one timer for [`next_due`](DialQueue::next_due) (none when the
///    queue is empty): there is no polling;
/// 3. when the timer fires (or a dial slot frees up), call [`pop_due`](DialQueue::pop_due)
///    with the current time until it answers `None` or no dial slot is left.
///
/// Ordering: by due time, then first-in first-out among equal due times. A peer (by
/// [`PeerId`]) is queued at most once: see [`push`](DialQueue::push) for which entry wins.
///
/// Costs: [`push`](Self::push), [`pop_due`](Self::pop_due) and [`remove`](Self::remove) are
/// O(log n); [`contains`](Self::contains), [`get`](Self::get), [`next_due`](Self::next_due)
/// and [`len`](Self::len) are O(1) or O(log n) without allocation.
#[derive(Debug, Clone)]
pub struct DialQueue {
    /// The most items held at once; fixed at construction.
    capacity: usize,
    /// The dial order: `(due, seq)` to the queued peer. `seq` makes keys unique and equal due
    /// times first-in first-out. Always holds exactly the keys of `items`.
    order: BTreeMap<(Instant, u64), PeerId>,
    /// The queued items by peer, each with the `seq` of its `order` key.
    items: HashMap<PeerId, (DialItem, u64)>,
    /// The `seq` the next inserted entry gets. It wraps after 2^64 insertions, which cannot
    /// happen in the life of a process.
    next_seq: u64,
}

impl DialQueue {
    /// An empty queue holding at most `capacity` items. A capacity of 0 refuses every new peer
    /// (useful only to disable dialing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: BTreeMap::new(),
            items: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Queues `item`, one entry per peer id:
    /// - a peer not queued is added ([`PushOutcome::Queued`]), or refused with
    ///   [`DialQueueFull`] when the queue is full;
    /// - a peer already queued keeps the **earlier** due time: when the new item is due
    ///   strictly earlier it replaces the queued entry *whole, address included*
    ///   ([`PushOutcome::Rescheduled`]), and it is ordered after items already queued for that
    ///   same instant; otherwise the queued entry, with its own address and place in line,
    ///   stays and the new item is dropped ([`PushOutcome::AlreadyQueued`]). Keeping one
    ///   address per entry, the one of the most urgent request, means the dial goes to an
    ///   address someone asked for at that time rather than a mix of two requests. A peer
    ///   already queued never makes the queue full.
    pub fn push(&mut self, item: DialItem) -> Result<PushOutcome, DialQueueFull> {
        let len = self.items.len();
        match self.items.entry(item.id()) {
            Entry::Occupied(mut queued) => {
                let (old, old_seq) = queued.get();
                let previous_due = old.due;
                if item.due >= previous_due {
                    return Ok(PushOutcome::AlreadyQueued { due: previous_due });
                }
                self.order.remove(&(previous_due, *old_seq));
                let seq = self.next_seq;
                self.next_seq = seq.wrapping_add(1);
                self.order.insert((item.due, seq), item.id());
                queued.insert((item, seq));
                Ok(PushOutcome::Rescheduled { previous_due })
            }
            Entry::Vacant(slot) => {
                if len >= self.capacity {
                    return Err(DialQueueFull {
                        capacity: self.capacity,
                        item,
                    });
                }
                let seq = self.next_seq;
                self.next_seq = seq.wrapping_add(1);
                self.order.insert((item.due, seq), item.id());
                slot.insert((item, seq));
                Ok(PushOutcome::Queued)
            }
        }
    }

    /// Removes and returns the earliest item if it is due at `now` (`due <= now`); `None` when
    /// the queue is empty or the earliest item is due later (then sleep until
    /// [`next_due`](Self::next_due)).
    pub fn pop_due(&mut self, now: Instant) -> Option<DialItem> {
        let entry = self.order.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let id = entry.remove();
        // `order` and `items` hold the same peers (struct invariant), so this is always Some.
        self.items.remove(&id).map(|(item, _)| item)
    }

    /// Removes the peer's entry, if queued, and returns it (e.g. the peer connected inbound,
    /// or the operator no longer wants it).
    pub fn remove(&mut self, id: &PeerId) -> Option<DialItem> {
        let (item, seq) = self.items.remove(id)?;
        self.order.remove(&(item.due, seq));
        Some(item)
    }

    /// The due time of the earliest item: the one instant a driver sleeps until. `None` when
    /// the queue is empty.
    pub fn next_due(&self) -> Option<Instant> {
        self.order.first_key_value().map(|(&(due, _), _)| due)
    }

    /// Whether a dial to this peer is queued. O(1).
    pub fn contains(&self, id: &PeerId) -> bool {
        self.items.contains_key(id)
    }

    /// The queued entry for this peer, if any.
    pub fn get(&self, id: &PeerId) -> Option<&DialItem> {
        self.items.get(id).map(|(item, _)| item)
    }

    /// The queued items in dial order (due time, then first in first out).
    pub fn iter(&self) -> impl Iterator<Item = &DialItem> + '_ {
        self.order
            .values()
            .filter_map(|id| self.items.get(id).map(|(item, _)| item))
    }

    /// The number of queued items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most items the queue holds.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a push for a peer not yet queued would be refused.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }
}

impl Default for DialQueue {
    /// An empty queue of [`DEFAULT_DIAL_QUEUE_CAPACITY`].
    fn default() -> Self {
        Self::new(DEFAULT_DIAL_QUEUE_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::types::Host;

    use crate::testing::base;

    const S: Duration = Duration::from_secs(1);

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 20])
    }

    fn addr(n: u8, port: u16) -> NetAddress {
        NetAddress::new(id(n), Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), port).unwrap()
    }

    fn item(n: u8, due: Instant) -> DialItem {
        DialItem::new(addr(n, 26656), due)
    }

    fn drain(queue: &mut DialQueue, now: Instant) -> Vec<DialItem> {
        std::iter::from_fn(|| queue.pop_due(now)).collect()
    }

    fn ids(items: &[DialItem]) -> Vec<u8> {
        items.iter().map(|i| i.id().as_bytes()[0]).collect()
    }

    #[test]
    fn zero_capacity_refuses_every_new_peer() {
        let t = base();
        let mut queue = DialQueue::new(0);
        let err = queue.push(item(1, t)).unwrap_err();
        assert_eq!(err.capacity, 0);
        assert_eq!(err.item, item(1, t));
        assert!(!err.is_peer_fault());
        assert!(queue.is_empty());
        assert_eq!(queue.next_due(), None);
    }

    #[test]
    fn full_queue_refuses_new_peer_and_hands_item_back() {
        let t = base();
        let mut queue = DialQueue::new(2);
        queue.push(item(1, t)).unwrap();
        queue.push(item(2, t)).unwrap();
        assert!(queue.is_full());
        let err = queue.push(item(3, t)).unwrap_err();
        assert_eq!(err.item, item(3, t));
        assert_eq!(
            err.to_string(),
            format!(
                "dial queue is full (2 items); dial of {} refused",
                addr(3, 26656)
            )
        );
        assert_eq!(queue.len(), 2);
        assert!(!queue.contains(&id(3)));
    }

    #[test]
    fn full_queue_still_reschedules_a_queued_peer() {
        let t = base();
        let mut queue = DialQueue::new(1);
        queue.push(item(1, t + 5 * S)).unwrap();
        assert_eq!(
            queue.push(item(1, t)),
            Ok(PushOutcome::Rescheduled {
                previous_due: t + 5 * S
            })
        );
        assert_eq!(
            queue.push(item(1, t + 9 * S)),
            Ok(PushOutcome::AlreadyQueued { due: t })
        );
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn room_frees_up_after_pop_and_remove() {
        let t = base();
        let mut queue = DialQueue::new(2);
        queue.push(item(1, t)).unwrap();
        queue.push(item(2, t)).unwrap();
        assert!(queue.push(item(3, t)).is_err());
        queue.pop_due(t).unwrap();
        assert_eq!(queue.push(item(3, t)), Ok(PushOutcome::Queued));
        queue.remove(&id(2)).unwrap();
        assert_eq!(queue.push(item(4, t)), Ok(PushOutcome::Queued));
    }

    #[test]
    fn pop_due_returns_nothing_before_the_due_time() {
        let t = base();
        let mut queue = DialQueue::default();
        assert_eq!(queue.pop_due(t), None);
        queue.push(item(1, t + 10 * S)).unwrap();
        assert_eq!(queue.pop_due(t), None);
        assert_eq!(queue.pop_due(t + 10 * S - Duration::from_nanos(1)), None);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop_due(t + 10 * S), Some(item(1, t + 10 * S)));
        assert!(queue.is_empty());
    }

    #[test]
    fn pops_by_due_time_then_first_in_first_out() {
        let t = base();
        let mut queue = DialQueue::default();
        for (n, due) in [(1, 3), (2, 1), (3, 2), (4, 1), (5, 3), (6, 0)] {
            queue.push(item(n, t + due * S)).unwrap();
        }
        assert_eq!(
            ids(&queue.iter().cloned().collect::<Vec<_>>()),
            [6, 2, 4, 3, 1, 5]
        );
        assert_eq!(ids(&drain(&mut queue, t + S)), [6, 2, 4]);
        assert_eq!(ids(&drain(&mut queue, t + 3 * S)), [3, 1, 5]);
    }

    #[test]
    fn next_due_is_the_earliest_due_time() {
        let t = base();
        let mut queue = DialQueue::default();
        assert_eq!(queue.next_due(), None);
        queue.push(item(1, t + 5 * S)).unwrap();
        queue.push(item(2, t + 2 * S)).unwrap();
        assert_eq!(queue.next_due(), Some(t + 2 * S));
        queue.remove(&id(2));
        assert_eq!(queue.next_due(), Some(t + 5 * S));
    }

    #[test]
    fn pushing_a_queued_peer_keeps_the_earlier_due_time_and_its_address() {
        let t = base();
        let mut queue = DialQueue::default();
        let first = DialItem::new(addr(1, 1000), t + 5 * S);
        queue.push(first.clone()).unwrap();

        // Later or equal: the queued entry (address included) stays.
        let later = DialItem::new(addr(1, 2000), t + 9 * S);
        assert_eq!(
            queue.push(later),
            Ok(PushOutcome::AlreadyQueued { due: t + 5 * S })
        );
        let same_time = DialItem::new(addr(1, 3000), t + 5 * S);
        assert_eq!(
            queue.push(same_time),
            Ok(PushOutcome::AlreadyQueued { due: t + 5 * S })
        );
        assert_eq!(queue.get(&id(1)), Some(&first));

        // Earlier: the new item replaces it whole.
        let earlier = DialItem::new(addr(1, 4000), t + S);
        assert_eq!(
            queue.push(earlier.clone()),
            Ok(PushOutcome::Rescheduled {
                previous_due: t + 5 * S
            })
        );
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next_due(), Some(t + S));
        assert_eq!(drain(&mut queue, t + 10 * S), [earlier]);
    }

    #[test]
    fn rescheduled_peer_goes_after_items_already_due_at_that_time() {
        let t = base();
        let mut queue = DialQueue::default();
        queue.push(item(1, t + 5 * S)).unwrap();
        queue.push(item(2, t)).unwrap();
        queue.push(item(1, t)).unwrap();
        assert_eq!(ids(&drain(&mut queue, t)), [2, 1]);
    }

    #[test]
    fn contains_and_remove_track_queued_peers() {
        let t = base();
        let mut queue = DialQueue::default();
        assert!(!queue.contains(&id(1)));
        assert_eq!(queue.remove(&id(1)), None);
        queue.push(item(1, t)).unwrap();
        queue.push(item(2, t)).unwrap();
        assert!(queue.contains(&id(1)));
        assert_eq!(queue.remove(&id(1)), Some(item(1, t)));
        assert_eq!(queue.remove(&id(1)), None);
        assert!(!queue.contains(&id(1)));
        assert!(queue.contains(&id(2)));
        assert_eq!(drain(&mut queue, t), [item(2, t)]);
        assert!(!queue.contains(&id(2)));
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Push { peer: u8, port: u16, due: u8 },
        Pop { now: u8 },
        Remove { peer: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, 1u16..4, 0u8..20)
                .prop_map(|(peer, port, due)| Op::Push { peer, port, due }),
            2 => (0u8..20).prop_map(|now| Op::Pop { now }),
            1 => (0u8..12).prop_map(|peer| Op::Remove { peer }),
        ]
    }

    proptest! {
        /// Against a plain model (a vector kept in insertion order, searched linearly), every
        /// push outcome, every pop and the final drain order agree.
        #[test]
        fn behaves_like_a_sorted_model(
            ops in proptest::collection::vec(op(), 0..200),
            cap in 0usize..10,
        ) {
            let t = base();
            let mut queue = DialQueue::new(cap);
            // (due, insertion counter, item)
            let mut model: Vec<(Instant, u64, DialItem)> = Vec::new();
            let mut counter = 0u64;
            for op in ops {
                match op {
                    Op::Push { peer, port, due } => {
                        let new = DialItem::new(addr(peer, port), t + u32::from(due) * S);
                        let got = queue.push(new.clone());
                        let pos = model.iter().position(|(_, _, i)| i.id() == new.id());
                        let want = match pos {
                            Some(p) if new.due < model[p].0 => {
                                let previous_due = model[p].0;
                                model[p] = (new.due, counter, new);
                                counter += 1;
                                Ok(PushOutcome::Rescheduled { previous_due })
                            }
                            Some(p) => Ok(PushOutcome::AlreadyQueued { due: model[p].0 }),
                            None if model.len() >= cap => {
                                Err(DialQueueFull { capacity: cap, item: new })
                            }
                            None => {
                                model.push((new.due, counter, new));
                                counter += 1;
                                Ok(PushOutcome::Queued)
                            }
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Pop { now } => {
                        let now = t + u32::from(now) * S;
                        let min = model
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (d, c, _))| (*d, *c))
                            .map(|(p, _)| p);
                        let want = match min {
                            Some(p) if model[p].0 <= now => Some(model.remove(p).2),
                            _ => None,
                        };
                        prop_assert_eq!(queue.pop_due(now), want);
                    }
                    Op::Remove { peer } => {
                        let want = model
                            .iter()
                            .position(|(_, _, i)| i.id() == id(peer))
                            .map(|p| model.remove(p).2);
                        prop_assert_eq!(queue.remove(&id(peer)), want);
                    }
                }
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.next_due(), model.iter().map(|(d, _, _)| *d).min());
                for peer in 0..12 {
                    let queued = model.iter().any(|(_, _, i)| i.id() == id(peer));
                    prop_assert_eq!(queue.contains(&id(peer)), queued);
                }
            }
            model.sort_by_key(|(d, c, _)| (*d, *c));
            let sorted: Vec<DialItem> = model.into_iter().map(|(_, _, i)| i).collect();
            prop_assert_eq!(queue.iter().cloned().collect::<Vec<_>>(), sorted.clone());
            prop_assert_eq!(drain(&mut queue, t + 100 * S), sorted);
            prop_assert!(queue.is_empty());
        }
    }
}
