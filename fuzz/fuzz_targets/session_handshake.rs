//! Hostile session handshake bytes: arbitrary bytes with an arbitrary descriptor count go to
//! `flowipc::session::wire::parse`, the parser every control message of a session (the server's
//! first read from an unauthenticated client included) goes through.
//!
//! Checked: no panic, no hang (one pass over the input); a message that parses re-encodes to
//! exactly the input (the format is canonical, so nothing of it is ignored); every length, count
//! and descriptor number it reports lies within the protocol's limits; and a message that parses
//! with `n` descriptors is one whose type takes `n` (the parser never accepts descriptors a
//! message does not own, which the session would otherwise have to close).
#![no_main]

use arbitrary::Arbitrary;
use flowipc::session::wire::{self, ControlMessage};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    fd_count: u8,
    /// Prefix the well-formed header so the fuzzer reaches the bodies quickly.
    with_header: bool,
    msg_type: u8,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut bytes = Vec::with_capacity(input.body.len() + 6);
    if input.with_header {
        bytes.extend_from_slice(&wire::MAGIC);
        bytes.push(wire::VERSION);
        bytes.push(input.msg_type);
    }
    bytes.extend_from_slice(&input.body);
    let fds = usize::from(input.fd_count);
    let Ok(msg) = wire::parse(&bytes, fds) else {
        return;
    };
    assert_eq!(wire::encode(&msg), bytes, "the format is canonical");
    match &msg {
        ControlMessage::Hello {
            name,
            init,
            metadata,
            ..
        } => {
            assert_eq!(fds, 0);
            assert!(name.len() <= wire::MAX_NAME);
            assert!(init.len() <= wire::MAX_INIT_CHANNELS);
            assert!(metadata.len() <= wire::MAX_METADATA);
        }
        ControlMessage::Welcome {
            name,
            init,
            metadata,
            arena_size,
            ..
        } => {
            assert_eq!(fds, 0);
            assert!(name.len() <= wire::MAX_NAME);
            assert!(init.len() <= wire::MAX_INIT_CHANNELS);
            assert!(metadata.len() <= wire::MAX_METADATA);
            assert!(*arena_size <= wire::MAX_ARENA_SIZE);
        }
        ControlMessage::Channel { metadata, .. } => {
            assert!((1..=wire::MAX_CHANNEL_FDS).contains(&fds));
            assert!(metadata.len() <= wire::MAX_METADATA);
        }
        ControlMessage::Refused { reason } | ControlMessage::OpenRefused { reason, .. } => {
            assert_eq!(fds, 0);
            assert!(reason.len() <= wire::MAX_REASON);
        }
        ControlMessage::Arena { kind } => {
            let want = match kind {
                wire::ArenaKind::Classic | wire::ArenaKind::App => 1,
                wire::ArenaKind::Lend => 2,
            };
            assert_eq!(fds, want);
        }
        ControlMessage::Ready { lend } => assert_eq!(fds, if *lend { 2 } else { 0 }),
        ControlMessage::OpenAccepted { .. } | ControlMessage::Close => assert_eq!(fds, 0),
    }
});
