//! The one place the runtime reads the clock. Cores receive `now` as an argument, so tests can
//! drive them with any time they like; lints forbid `Instant::now` everywhere else.

use std::time::{Instant, SystemTime};

/// The current monotonic time.
#[allow(clippy::disallowed_methods)] // The single sanctioned clock read.
pub fn now() -> Instant {
    Instant::now()
}

/// The current wall-clock time (for timestamps that outlive the process, such as the address
/// book's last-seen times).
#[allow(clippy::disallowed_methods)] // The single sanctioned wall-clock read.
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}
