//! Peer crates as systems (the `peers` feature).
