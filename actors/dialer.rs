//! The [`Dialer`] actor: drives the [`DialQueue`] with one timer and a bound on dials in
//! flight.
//!
//! It sleeps on a single `ctx.run_later` armed for [`DialQueue::next_due`] (cancelled and
//! re-armed after every input), so an idle node or one waiting for a redial costs no CPU; TM2's
//! dial loop busy-spins while the earliest item is due later. When items are due it starts up
//! to `max_concurrent_dials` dials. Each dial:
//!
//! 1. asks the Switch ([`BeginDial`]) whether it still makes sense *now*: not ourselves, not
//!    connected, not already being dialed, an outbound slot free counting the dials in flight
//!    (TM2 checks the limit only when queueing). The Switch answers [`DialCheck::Go`] (and
//!    counts the dial as in flight), [`DialCheck::Refused`] (it has published `DialFailed`), or
//!    [`DialCheck::Defer`] (the only obstacle is other dials in flight: the item goes back to
//!    the queue and the Dialer starts nothing more until one of them finishes);
//! 2. asks the Transport to [`Dial`], which resolves a host name and tries each of its
//!    addresses in turn within `dial_timeout` (an unresolvable name is a failed dial), and
//!    bounds the upgrade by `handshake_timeout`;
//! 3. hands the outcome to the Switch ([`DialFinished`]), which admits the connection and
//!    publishes `PeerConnected`, or publishes `DialFailed`.
//!
//! An address the queue refuses (full) is reported the same way, as a [`DialFinished`] with
//! [`DialError::QueueFull`], so no address disappears silently.
//!
//! | message | from | reply |
//! | --- | --- | --- |
//! | [`QueueDials`] | Switch (`DialPeers`), Redialer | `()` (outcomes are Switch events) |
//! | [`StopDialing`] | Switch (shutdown) | `()` |

use std::io;
use std::sync::Arc;

use actix::fut::wrap_future;
use actix::prelude::*;
use slog::{Logger, debug};

use crate::actors::clock;
use crate::actors::events::DialError;
use crate::actors::switch::{BeginDial, DialCheck, DialFinished};
use crate::actors::transport::{Dial, TransportError};
use crate::dial::{DialItem, DialQueue, PushOutcome};
use crate::types::NetAddress;

/// Where the Dialer reports: the Switch's two dial messages.
#[derive(Clone)]
pub struct DialerSwitch {
    /// Asked before each dial.
    pub begin: Recipient<BeginDial>,
    /// Told every outcome.
    pub finished: Recipient<DialFinished>,
}

/// The Dialer actor; spawned by [`SwitchBuilder`](crate::actors::node::SwitchBuilder).
pub struct Dialer {
    /// Addresses waiting for their due time.
    queue: DialQueue,
    /// The bound on dials in flight (`max_concurrent_dials`).
    max_in_flight: usize,
    /// Dials started and not yet reported to the Switch.
    in_flight: usize,
    /// The one timer, armed for the queue's earliest due time.
    timer: Option<SpawnHandle>,
    /// Set when the Switch deferred a dial because of other dials in flight: start nothing
    /// until one of them finishes.
    blocked: bool,
    /// Set by [`StopDialing`].
    stopped: bool,
    /// The Switch.
    switch: DialerSwitch,
    /// The Transport.
    transport: Recipient<Dial>,
    /// The node's log.
    log: Logger,
}

impl Dialer {
    /// A dialer with a queue of `capacity` items and at most `max_in_flight` (at least 1) dials
    /// at once.
    pub fn new(
        capacity: usize,
        max_in_flight: usize,
        switch: DialerSwitch,
        transport: Recipient<Dial>,
        log: Logger,
    ) -> Self {
        Self {
            queue: DialQueue::new(capacity),
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            timer: None,
            blocked: false,
            stopped: false,
            switch,
            transport,
            log,
        }
    }

    /// Queues one item; a full queue is reported to the Switch as a failed dial.
    fn push(&mut self, item: DialItem, ctx: &mut Context<Self>) {
        if self.stopped {
            self.report(item.address, Err(DialError::Shutdown), ctx);
            return;
        }
        match self.queue.push(item) {
            Ok(PushOutcome::Queued | PushOutcome::Rescheduled { .. }) => {}
            Ok(PushOutcome::AlreadyQueued { .. }) => {
                // The earlier entry for this peer stays; its dial reports the outcome.
            }
            Err(full) => {
                let capacity = full.capacity;
                self.report(
                    full.item.address,
                    Err(DialError::QueueFull { capacity }),
                    ctx,
                );
            }
        }
    }

    /// Reports an outcome that involved no dial (full queue, shutdown) to the Switch.
    fn report(
        &mut self,
        address: NetAddress,
        result: Result<crate::actors::transport::Upgraded, DialError>,
        ctx: &mut Context<Self>,
    ) {
        let finished = self.switch.finished.clone();
        // `send` waits for room in the Switch's mailbox; nothing is dropped.
        ctx.spawn(wrap_future(async move {
            let _ = finished.send(DialFinished { address, result }).await;
        }));
    }

    /// Starts every due dial the bound allows, then re-arms the one timer for the next due
    /// item (or leaves it unarmed: nothing queued, or every slot busy, in which case a finishing
    /// dial calls this again).
    fn run(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.stopped {
            return;
        }
        let now = clock::now();
        while !self.blocked && self.in_flight < self.max_in_flight {
            let Some(item) = self.queue.pop_due(now) else {
                break;
            };
            self.start(item, ctx);
        }
        if self.blocked || self.in_flight >= self.max_in_flight {
            return;
        }
        if let Some(due) = self.queue.next_due() {
            let delay = due.saturating_duration_since(now);
            self.timer = Some(ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.run(ctx);
            }));
        }
    }

    /// Starts one dial (steps 1-3 of the module documentation).
    fn start(&mut self, item: DialItem, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        let switch = self.switch.clone();
        let transport = self.transport.clone();
        let address = item.address.clone();
        let dial = async move {
            match switch
                .begin
                .send(BeginDial {
                    address: address.clone(),
                })
                .await
            {
                Ok(DialCheck::Go) => {}
                Ok(DialCheck::Defer) => return Step::Deferred,
                // Refused (already published by the Switch), or the Switch is gone.
                Ok(DialCheck::Refused) | Err(_) => return Step::Done,
            }
            let result = transport
                .send(Dial {
                    addr: address.clone(),
                })
                .await
                .unwrap_or_else(|_| Err(TransportError::Io(io::Error::other("transport stopped"))))
                .map_err(|e| DialError::Transport(Arc::new(e)));
            // Waits until the Switch has handled the outcome, so its count of dials in flight
            // has dropped before this slot frees.
            let _ = switch.finished.send(DialFinished { address, result }).await;
            Step::Done
        };
        ctx.spawn(wrap_future::<_, Self>(dial).map(move |step, act, ctx| {
            act.in_flight -= 1;
            match step {
                Step::Deferred => {
                    debug!(act.log, "dial deferred: outbound slots held by dials in flight"; "address" => %item.address);
                    // Only dials in flight hold the slots, so one of them finishes and
                    // unblocks; with none left (a race with the Switch), retry at once.
                    act.blocked = act.in_flight > 0;
                    act.push(item, ctx);
                }
                Step::Done => act.blocked = false,
            }
            act.run(ctx);
        }));
    }
}

/// How a dial future ended.
enum Step {
    /// Reported to the Switch (or the Switch is gone).
    Done,
    /// The Switch said to wait for the dials in flight.
    Deferred,
}

impl Actor for Dialer {
    type Context = Context<Self>;
}

/// Queues addresses to dial at their due times. De-duplicated by peer id (the earlier due time
/// wins); an address the full queue refuses is reported as `DialFailed`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct QueueDials(pub Vec<DialItem>);

impl Handler<QueueDials> for Dialer {
    type Result = ();

    fn handle(&mut self, msg: QueueDials, ctx: &mut Self::Context) {
        for item in msg.0 {
            self.push(item, ctx);
        }
        self.run(ctx);
    }
}

/// Stops dialing (node shutdown): queued addresses are reported as failed with
/// [`DialError::Shutdown`], dials in flight finish (the Switch reports them as shut down), and
/// the actor stops once none is left.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopDialing;

impl Handler<StopDialing> for Dialer {
    type Result = ();

    fn handle(&mut self, _: StopDialing, ctx: &mut Self::Context) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let queued: Vec<NetAddress> = self.queue.iter().map(|i| i.address.clone()).collect();
        for address in queued {
            let _ = self.queue.remove(&address.id());
            self.report(address, Err(DialError::Shutdown), ctx);
        }
    }
}
