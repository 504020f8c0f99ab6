//! Entry points for the cargo-fuzz targets in `fuzz/` into the structured channel's crate-private
//! decoder and router. Compiled only under `cfg(fuzzing)` (cargo-fuzz sets it) and hidden from
//! the docs: not part of the API.
//!
//! [`FuzzReceiver`] runs exactly what a structured channel's reader runs on each received frame
//! (`wire::decode`, then `Router::route`), without a transport or a thread, and lets the target
//! play this side's part (requests registered, abandoned, responses taken).

use std::os::fd::OwnedFd;

use capnp::any_pointer;

use super::error::End;
use super::router::{Router, Slot};
use super::wire::{self, BodyLimits, Envelope, MsgKind, WireKind};
use super::{MsgIn, StructuredError, StructuredStats};

/// Length of the envelope.
pub const ENVELOPE_LEN: usize = wire::ENVELOPE_LEN;

/// The receiving side of a structured channel, driven frame by frame.
pub struct FuzzReceiver {
    router: Router<any_pointer::Owned>,
    limits: BodyLimits,
}

/// What feeding one frame did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fed {
    /// Routed (see the counters and queues for where it went).
    Routed,
    /// The frame was corrupt: the channel is now ended with this reason.
    Corrupt(String),
    /// The channel had already ended; the frame was ignored.
    Ended,
}

impl FuzzReceiver {
    /// A receiver with these body limits (traversal words, amplification factor, nesting).
    pub fn new(traversal_limit_words: usize, amplification: usize, nesting_limit: i32) -> Self {
        let limits = super::StructuredOptions::new()
            .traversal_limit_words(traversal_limit_words)
            .amplification(amplification)
            .nesting_limit(nesting_limit)
            .body_limits();
        FuzzReceiver {
            router: Router::new(),
            limits,
        }
    }

    /// Registers a request this side sent with id `id`, waiting for one or many responses.
    pub fn register_request(&mut self, id: u64, multi: bool) -> Result<(), StructuredError> {
        let slot = if multi {
            Slot::Multi {
                queue: Default::default(),
                end: None,
            }
        } else {
            Slot::One(None)
        };
        self.router.register(id, slot)
    }

    /// Abandons request `id` (a timeout, or a dropped handle).
    pub fn abandon(&mut self, id: u64) {
        self.router.abandon(id);
    }

    /// Feeds a frame as the reader would.
    pub fn feed(&mut self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Fed {
        if self.router.end.is_some() {
            return Fed::Ended;
        }
        match wire::decode(bytes, fds, &self.limits, None).and_then(|d| self.router.route(d)) {
            // Callbacks are never registered here, so the actions are only unexpected
            // responses: drop them as a handler-less channel does.
            Ok(_actions) => Fed::Routed,
            Err(reason) => {
                self.router.finish(End::Corrupt(reason.clone()));
                Fed::Corrupt(reason)
            }
        }
    }

    /// The next unsolicited message, if any.
    pub fn take_inbox(&mut self) -> Option<Result<MsgIn<any_pointer::Owned>, StructuredError>> {
        self.router.take_inbox()
    }

    /// The response of a one-response request, if it came.
    pub fn take_one(
        &mut self,
        id: u64,
    ) -> Option<Result<MsgIn<any_pointer::Owned>, StructuredError>> {
        self.router.take_one(id)
    }

    /// The next response of a multi-response request, if any.
    pub fn take_multi(
        &mut self,
        id: u64,
    ) -> Option<Result<MsgIn<any_pointer::Owned>, StructuredError>> {
        self.router.take_multi(id)
    }

    /// Whether request `id` is still registered.
    pub fn is_pending(&self, id: u64) -> bool {
        self.router.pending.contains_key(&id)
    }

    /// Reports of unexpected responses waiting to be sent (ids of the peer's responses).
    pub fn reports(&self) -> Vec<u64> {
        self.router.reports.iter().copied().collect()
    }

    /// Messages in the inbox and multi-response queues.
    pub fn queued(&self) -> usize {
        self.router.queued
    }

    /// The counters.
    pub fn stats(&self) -> StructuredStats {
        self.router.stats
    }
}

/// Encodes a frame exactly as a sender does: `kind` 0 notification, 1 request, 2 response, 3
/// unexpected-response report; `body` an already framed capnp message, appended as is.
pub fn encode_frame(
    id: u64,
    originating_id: u64,
    kind: u8,
    fd_count: u16,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let kind = match kind % 4 {
        0 => WireKind::Msg(MsgKind::Notification),
        1 => WireKind::Msg(MsgKind::Request),
        2 => WireKind::Msg(MsgKind::Response),
        _ => WireKind::UnexpectedResponse,
    };
    let env = Envelope {
        id,
        originating_id,
        kind,
        fd_count,
    };
    let mut out = wire::encode_to_vec(&env, None);
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out
}

/// A framed capnp message built by a sender (copy mode), for bodies a target builds with capnp.
pub fn frame_body(
    build: impl FnOnce(&mut capnp::message::Builder<capnp::message::HeapAllocator>),
) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    build(&mut message);
    capnp::serialize::write_message_to_words(&message)
}
