//! The actix runtime: one actor per file, each a thin shell over a sans-IO core of the crate.
//!
//! The clock is read in exactly one place, [`clock`]; everything else receives `now`.

pub mod clock;
pub mod dialer;
pub mod events;
pub mod gossip;
pub mod metrics;
pub mod node;
pub mod peer_conn;
pub mod pex;
pub mod reactor;
pub mod redialer;
pub mod secret_stream;
pub mod switch;
#[cfg(feature = "cli")]
pub mod testnet;
pub mod transport;
