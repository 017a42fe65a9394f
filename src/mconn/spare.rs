//! [`Spares`]: reassembly buffers that come back to their connection when the payload built in
//! them is dropped, so a peer streaming large messages does not cost a fresh allocation per
//! message.
//!
//! A message of several packets is reassembled in a buffer of its own and handed out as a
//! `Bytes` that owns that buffer. Without reuse, every 1 MiB message is a new 1 MiB allocation,
//! grown by doubling (copying what was already reassembled at every step), and its free hands
//! the memory back to the allocator, which may return it to the kernel: the next message then
//! takes a page fault (and the kernel clears the page) for every 4 KiB it writes. Measured on a
//! 1 MiB stream this cost 5-11 % of the whole connection's CPU (docs/PERFORMANCE.md, issue 17,
//! third stop).
//!
//! Here, a payload's buffer goes back on its connection's shelf when the last reference to the
//! payload is dropped (on whatever thread), and the next multi-packet message starts in it. The
//! shelf is bounded and only open while the connection is busy:
//!
//! - at most [`MAX_SPARES`] buffers, each no larger than the largest message the connection's
//!   channels accept (a buffer never grows past its channel's limit);
//! - the receiver opens the shelf when a multi-packet message starts, and its driver closes it
//!   ([`Spares::release`]) whenever the socket has nothing more for now and no message is
//!   being reassembled: a quiet connection holds no spare, and a buffer dropped after that is
//!   freed, not kept;
//! - a payload less than half its buffer's capacity is copied out, and the buffer goes back
//!   at once: a small message never keeps a large buffer alive in a consumer that holds it for
//!   long (a buffer grown by doubling wastes at most as much);
//! - the shelf dies with the receiver; payloads dropped after that free their buffer.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;

/// Buffers a connection's shelf holds at most. Two cover a stream: one message being
/// reassembled while the consumer still holds the previous one or two.
pub(crate) const MAX_SPARES: usize = 2;

/// A connection's shelf of spare reassembly buffers.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    shelf: Arc<Mutex<Shelf>>,
    /// `take` opened the shelf since the last `release` (only the receiver opens it, so it
    /// knows without the lock): a quiet connection's `release` costs no lock.
    opened: bool,
}

#[derive(Debug, Default)]
struct Shelf {
    /// Buffers of dropped payloads are kept (the connection is busy).
    open: bool,
    /// Empty buffers with their capacity; at most [`MAX_SPARES`].
    bufs: Vec<Vec<u8>>,
}

impl Spares {
    /// An empty buffer to reassemble a message in: a spare of at most `max` bytes' capacity if
    /// one came back, else a new empty `Vec` (no allocation). Opens the shelf: buffers of
    /// payloads dropped from now on come back.
    pub(crate) fn take(&mut self, max: usize) -> Vec<u8> {
        self.opened = true;
        let mut shelf = lock(&self.shelf);
        shelf.open = true;
        match shelf.bufs.iter().rposition(|b| b.capacity() <= max) {
            Some(i) => shelf.bufs.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// The reassembled message in `buf` as a payload: `buf` itself (no copy), coming back to
    /// this shelf when the payload is dropped, or, for a message under half of `buf`'s
    /// capacity, a copy of exactly its length while `buf` goes back at once.
    pub(crate) fn payload(&self, buf: Vec<u8>) -> Bytes {
        if buf.len() < buf.capacity() / 2 {
            let payload = Bytes::copy_from_slice(&buf);
            put(&self.shelf, buf);
            return payload;
        }
        Bytes::from_owner(Lent {
            buf,
            home: Arc::downgrade(&self.shelf),
        })
    }

    /// Closes the shelf and frees its buffers: the connection has gone quiet. A payload
    /// dropped from now on frees its buffer, until [`take`](Self::take) opens the shelf again.
    pub(crate) fn release(&mut self) {
        if !std::mem::take(&mut self.opened) {
            return; // closed and emptied by the last release, and not opened since
        }
        let freed = {
            let mut shelf = lock(&self.shelf);
            shelf.open = false;
            std::mem::take(&mut shelf.bufs)
        };
        drop(freed); // outside the lock
    }

    /// Bytes of capacity the shelf holds now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        lock(&self.shelf).bufs.iter().map(Vec::capacity).sum()
    }
}

/// A reassembled message's buffer, owned by the payload made of it.
struct Lent {
    buf: Vec<u8>,
    home: Weak<Mutex<Shelf>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(shelf) = self.home.upgrade() {
            put(&shelf, std::mem::take(&mut self.buf));
        }
    }
}

/// Keeps `buf` (emptied) if the shelf is open and has room; frees it otherwise, outside the
/// lock.
fn put(shelf: &Mutex<Shelf>, mut buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    let mut shelf = lock(shelf);
    if shelf.open && shelf.bufs.len() < MAX_SPARES {
        buf.clear();
        shelf.bufs.push(buf);
        return;
    }
    drop(shelf);
    drop(buf);
}

fn lock(shelf: &Mutex<Shelf>) -> MutexGuard<'_, Shelf> {
    // The shelf's state is valid after any panic (a panic cannot interrupt a push half done).
    shelf.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, capacity: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(capacity);
        buf.resize(len, 7);
        buf
    }

    #[test]
    fn a_dropped_payload_gives_its_buffer_to_the_next_message() {
        let mut spares = Spares::default();
        assert_eq!(spares.take(1 << 20).capacity(), 0, "nothing came back yet");
        let buf = filled(100_000, 100_000);
        let at = buf.as_ptr();
        let payload = spares.payload(buf);
        assert_eq!(payload.as_ptr(), at, "a full buffer is lent, not copied");
        assert_eq!(payload.len(), 100_000);
        assert_eq!(spares.held(), 0, "lent while the payload lives");
        let copy = payload.clone();
        drop(payload);
        assert_eq!(spares.held(), 0, "the last reference brings it back");
        drop(copy);
        assert_eq!(spares.held(), 100_000);
        let again = spares.take(1 << 20);
        assert_eq!(again.as_ptr(), at, "the same buffer, reused");
        assert!(again.is_empty());
        assert_eq!(spares.held(), 0);
    }

    #[test]
    fn a_small_message_in_a_large_buffer_is_copied_and_the_buffer_kept() {
        let mut spares = Spares::default();
        let _ = spares.take(1 << 20); // opens the shelf
        let buf = filled(1_000, 1 << 20);
        let at = buf.as_ptr();
        let payload = spares.payload(buf);
        assert_ne!(payload.as_ptr(), at, "copied out");
        assert_eq!(payload.len(), 1_000);
        assert!(payload.iter().all(|&b| b == 7));
        assert_eq!(spares.held(), 1 << 20, "the buffer is back at once");
    }

    #[test]
    fn the_shelf_holds_at_most_max_spares_and_only_buffers_a_channel_may_use() {
        let mut spares = Spares::default();
        let _ = spares.take(usize::MAX);
        let payloads: Vec<Bytes> = (0..MAX_SPARES + 3)
            .map(|_| spares.payload(filled(4096, 4096)))
            .collect();
        drop(payloads);
        assert_eq!(spares.held(), MAX_SPARES * 4096);
        assert_eq!(
            spares.take(4095).capacity(),
            0,
            "a buffer larger than the channel's limit is not handed to it"
        );
        assert_eq!(spares.take(4096).capacity(), 4096);
    }

    #[test]
    fn a_released_shelf_frees_what_it_held_and_what_comes_back_later() {
        let mut spares = Spares::default();
        let _ = spares.take(usize::MAX);
        let early = spares.payload(filled(4096, 4096));
        let late = spares.payload(filled(4096, 4096));
        drop(early);
        assert_eq!(spares.held(), 4096);
        spares.release();
        assert_eq!(spares.held(), 0);
        drop(late);
        assert_eq!(
            spares.held(),
            0,
            "dropped after the connection went quiet: freed"
        );
        drop(spares.payload(filled(0, 4096)));
        assert_eq!(spares.held(), 0, "a closed shelf takes nothing");
        let _ = spares.take(usize::MAX);
        drop(spares.payload(filled(0, 4096)));
        assert_eq!(spares.held(), 4096, "open again once a message starts");
    }

    #[test]
    fn a_payload_outliving_its_connection_frees_its_buffer() {
        let mut spares = Spares::default();
        let _ = spares.take(usize::MAX);
        let payload = spares.payload(filled(4096, 4096));
        drop(spares);
        assert_eq!(payload.len(), 4096);
        drop(payload); // no shelf to go back to; must not panic
    }

    #[test]
    fn buffers_come_back_from_other_threads() {
        let mut spares = Spares::default();
        let _ = spares.take(usize::MAX);
        let payload = spares.payload(filled(8192, 8192));
        std::thread::spawn(move || drop(payload)).join().unwrap();
        assert_eq!(spares.held(), 8192);
    }
}
