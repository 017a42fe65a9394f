//! Peers: admission decisions.

mod handshakes;

pub use handshakes::{HandshakeSlots, SlotRefused};
