//! Helpers shared by the core's unit tests (compiled only for tests).

use std::time::Instant;

/// A real instant to build virtual times from (`base() + Duration`): the core never reads the
/// clock, so tests read it once here and add durations.
#[allow(clippy::disallowed_methods)] // The tests' single clock read.
pub(crate) fn base() -> Instant {
    Instant::now()
}
