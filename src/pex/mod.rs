//! Peer exchange (discovery), the sans-IO part: the [`AddressBook`] of known addresses and
//! the wire [`protocol`] (messages and request rate limiting). The `PeerExchange` actor that
//! drives them on channel `0x50` lives in `actors/`.
//!
//! Differences from TM2 (`tm2/pkg/p2p/discovery`): responses are bounded to
//! `max_pex_addresses` (default 30) entries and bad entries are skipped one by one; requests
//! are rate-limited per peer; the book keeps failure counts, backs off failing addresses, bans
//! misbehaving peers for a time, keeps what peers say (new) apart from what our own dials
//! proved (tried), limits both per network group, and spreads what it dials and shares across
//! groups, never sharing private peers nor the asker (see [`address_book`]).

pub mod address_book;
pub mod protocol;

pub use address_book::{
    AddOutcome, AddressBook, AddressBookConfig, AddressBookError, KnownAddress, NetGroup,
};
pub use protocol::{Decoded, PexError, PexMessage, RequestLimiter, RequestVerdict};
