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
        match wire::decode(bytes, fds, &self.limits, None, None).and_then(|d| self.router.route(d))
        {
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

/// Zero copy, driven by a target: a sender's lend pool with a few blocks the target writes
/// (forged capnp content) and lends, and a receiver that decodes forged segment tables against
/// it exactly as a zero-copy channel's reader does (`wire::decode` with the receiver's pools),
/// then walks every message it accepts.
pub struct FuzzZeroCopy {
    sender: super::ZeroCopy,
    receiver: super::ZeroCopy,
    blocks: Vec<crate::arena::ArenaObject>,
    held: Vec<Box<capnp::message::Reader<wire::BodySegments>>>,
    limits: BodyLimits,
    next_id: u64,
}

impl FuzzZeroCopy {
    /// Two pools of 4 MiB and, in the sender's, zeroed blocks of these sizes (each at most
    /// 64 KiB).
    #[allow(unsafe_code)]
    pub fn new(block_sizes: &[usize]) -> Self {
        use std::sync::Arc;

        use crate::arena::{BorrowedPool, LendPool};
        let a = Arc::new(LendPool::create(4 << 20).expect("pool"));
        let b = Arc::new(LendPool::create(4 << 20).expect("pool"));
        let (a_to_b, a_setup) = a.add_borrower().expect("borrower");
        let (b_to_a, b_setup) = b.add_borrower().expect("borrower");
        let seen_by_b = Arc::new(BorrowedPool::open(a_setup).expect("map"));
        let seen_by_a = Arc::new(BorrowedPool::open(b_setup).expect("map"));
        let blocks = block_sizes
            .iter()
            .map(|&n| a.alloc_zeroed(n.clamp(8, 64 << 10)).expect("block"))
            .collect();
        // SAFETY: nothing writes the sender's blocks while the receiver reads them (the target
        // writes between decodes only; a write during a read is the model's "inconsistent
        // values", which this single thread cannot produce).
        let (sender, receiver) = unsafe {
            (
                // Every message lent, however small: the handle path is what is fuzzed.
                super::ZeroCopy::from_pools(a, a_to_b, seen_by_a, None).inline_max(0),
                super::ZeroCopy::from_pools(b, b_to_a, seen_by_b, None).inline_max(0),
            )
        };
        FuzzZeroCopy {
            sender,
            receiver,
            blocks,
            held: Vec::new(),
            limits: super::StructuredOptions::new()
                .traversal_limit_words(1 << 20)
                .body_limits(),
            next_id: 1,
        }
    }

    /// Blocks in the sender's pool.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The handle of block `i` (no reference added).
    pub fn handle(&self, i: usize) -> crate::arena::ArenaHandle {
        self.blocks[i % self.blocks.len()].handle()
    }

    /// The sender writes `bytes` into block `i` at `at` (clipped to the block). Only between
    /// decodes: no message may be held (they are dropped first).
    pub fn write(&mut self, i: usize, at: usize, bytes: &[u8]) {
        self.held.clear();
        let b = &self.blocks[i % self.blocks.len()];
        let at = at.min(b.len());
        let n = bytes.len().min(b.len() - at);
        b.write(at, &bytes[..n]).expect("write");
    }

    /// Lends block `i` to the receiver (as a send does); returns its handle.
    pub fn lend(&self, i: usize) -> crate::arena::ArenaHandle {
        let (pool, to) = self.sender.own_pool();
        pool.lend(&self.blocks[i % self.blocks.len()], to)
            .expect("lend")
    }

    /// Decodes a zero-copy frame whose segment table is `table`; a message it accepts is walked
    /// in full and kept (`keep`) or dropped (its segments given back). Returns the words walked,
    /// or why the frame or the walk failed.
    pub fn feed(&mut self, table: &[u8], keep: bool) -> Result<u64, String> {
        let env = Envelope {
            id: self.next_id,
            originating_id: 0,
            kind: WireKind::Msg(MsgKind::Notification),
            fd_count: 0,
        };
        self.next_id += 1;
        let frame = wire::encode_shared_to_vec(&env, table);
        let decoded = wire::decode(frame, Vec::new(), &self.limits, Some(&self.receiver), None)?;
        let wire::Decoded::Msg { body, .. } = decoded else {
            return Err("not a message".into());
        };
        let walked = body
            .get_root::<any_pointer::Reader<'_>>()
            .and_then(|r| r.target_size())
            .map(|s| s.word_count)
            .map_err(|e| e.to_string());
        if keep && self.held.len() < 64 {
            self.held.push(body);
        }
        walked
    }

    /// Drops the held messages, then ends the sender's lending (as when the receiver dies) and
    /// frees the blocks; returns the sender's pool usage, which must be zero.
    pub fn finish(mut self) -> crate::arena::PoolUsage {
        self.held.clear();
        let (pool, to) = self.sender.own_pool();
        let _ = pool.reclaim(to);
        self.blocks.clear();
        self.sender.own_pool().0.usage()
    }
}
