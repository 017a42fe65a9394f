//! Soak test: written next.
