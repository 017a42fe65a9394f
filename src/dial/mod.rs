//! Dialing policy cores: [`DialQueue`], the time-ordered de-duplicated queue of addresses to
//! dial, [`Backoff`], the per-peer redial delay of persistent peers, and [`ConnectAttempts`],
//! the order and time shares in which the addresses a host name resolved to are tried.
//!
//! Both are sans-IO: no clock (every method that needs the time takes `now: Instant`), no
//! timers, no global RNG (jitter comes from an `RngCore` passed in). The `Dialer` actor owns a
//! [`DialQueue`] and sleeps on one timer until [`DialQueue::next_due`]; the `Redialer` actor
//! keeps one [`Backoff`] per persistent peer and pushes redials into the queue.
//!
//! ## What is fixed compared with TM2 (`tm2/pkg/p2p/dial`, `switch.go`)
//!
//! - TM2's queue is a sorted slice with linear `Has`, no de-duplication and no bound; this one is
//!   O(log n) push and pop, O(1) `contains` by peer id, one entry per peer and bounded.
//! - TM2's dial loop busy-spins while the earliest item is due later; [`DialQueue::next_due`]
//!   gives the driver the one instant to sleep until.
//! - TM2's backoff shifts `base << attempts` in `i64` nanoseconds, which overflows to about zero
//!   after ~34 failures; [`Backoff`] saturates at the cap for any attempt count, `u32::MAX`
//!   included. TM2 clears the backoff on every connect, so a peer that accepts and drops at once
//!   is redialed at full speed forever; [`Backoff`] restarts only after a connection that stayed
//!   up for `redial_backoff_reset_after`, and counts a shorter one as a failure.

mod attempts;
mod backoff;
mod queue;

pub use attempts::{Attempt, ConnectAttempts};
pub use backoff::{Backoff, BackoffConfig, JITTER_PERCENT};
pub use queue::{DEFAULT_DIAL_QUEUE_CAPACITY, DialItem, DialQueue, DialQueueFull, PushOutcome};
