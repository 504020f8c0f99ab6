//! Structured channels: Cap'n Proto messages of the user's schema, as notifications, requests and
//! responses, over any [`Channel`](crate::channel::Channel) (socket, mq, ring).
//!
//! This is what Flow-IPC calls a `struc::Channel`. Programs build messages with ordinary capnp
//! builders ([`MsgOut::body_root`]) and read them with ordinary capnp readers
//! ([`MsgIn::body_root`]); flowipc adds an envelope of its own (message id, the id a response
//! answers, kind, descriptor count) and matches responses to the requests that wait for them.
//!
//! ```
//! # #[path = "../../schema/ping_capnp.rs"]
//! # #[allow(missing_docs, unused, clippy::all)]
//! # mod ping_capnp;
//! use std::time::Duration;
//! use flowipc::channel::Channel;
//! use flowipc::structured::StructuredChannel;
//! use ping_capnp::body;
//!
//! # fn main() -> Result<(), flowipc::Error> {
//! let (a, b) = Channel::ring_pair()?;
//! let a = StructuredChannel::<body::Owned>::new(a)?;
//! let b = StructuredChannel::<body::Owned>::new(b)?;
//!
//! let mut req = a.create_msg();
//! req.body_root().init_ping().set_seq(7);
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         let msg = b.recv().unwrap();
//!         let body::Ping(ping) = msg.body_root().unwrap().which().unwrap() else { panic!() };
//!         let mut resp = b.create_msg();
//!         resp.body_root().init_pong().set_seq(ping.unwrap().get_seq() + 1);
//!         b.send_response(&resp, &msg).unwrap();
//!     });
//!     let resp = a.sync_request(&req, Duration::from_secs(5)).unwrap();
//!     let body::Pong(pong) = resp.body_root().unwrap().which().unwrap() else { panic!() };
//!     assert_eq!(pong.unwrap().get_seq(), 8);
//! });
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! - **Unsolicited messages are a queue the user matches on** ([`StructuredChannel::recv`],
//!   [`AsyncStructuredChannel::recv`]), not a registry of handlers keyed by union variant as in
//!   Flow-IPC. A `match` on `body_root()?.which()?` is checked for exhaustiveness by the compiler
//!   when the schema grows, needs no `'static` boxed closures, reads the same in sync and async
//!   code (`recv()` / `recv().await`, or a `while let` loop), and keeps the user in charge of
//!   which thread handles what. A handler registry is a ten-line loop on top of it; the reverse is
//!   not true.
//! - **Responses are matched by the channel**: [`StructuredChannel::sync_request`] waits (with a
//!   timeout), [`StructuredChannel::request_with`] runs a callback on the channel's reader thread
//!   (the callback form of the sync face), [`AsyncStructuredChannel::async_request`] is a future,
//!   and [`StructuredChannel::request_multi`] / [`AsyncStructuredChannel::request_multi`] take any
//!   number of responses until dropped (Flow-IPC's `expect_msgs`).
//! - One reader per channel (a thread on the sync face, a tokio task on the async face) receives
//!   every frame in order and routes it, so messages are delivered in send order and responses
//!   interleave with notifications as they were sent. The reader stops receiving while
//!   [`StructuredOptions::inbox_capacity`] unsolicited messages wait to be taken (backpressure to
//!   the peer, bounded memory); a request waiting behind a full inbox times out, so drain it.
//!   [`StructuredOptions::receive_in_caller`] drops the reader thread on the sync face: the
//!   waiting threads receive themselves, which saves a thread hand-off per message.
//! - A response that matches nothing pending goes to the unexpected-response handler
//!   ([`StructuredChannel::on_unexpected_response`]) and is reported to its sender, whose handler
//!   gets [`UnexpectedResponse::ReportedByPeer`]. A response to a request that timed out or was
//!   dropped is not unexpected: it is dropped and counted
//!   ([`StructuredStats::late_responses`]).
//! - Peer death (or an orderly close) fails every waiting request with
//!   [`StructuredError::PeerGone`] (or `Closed`) at once, and [`recv`](StructuredChannel::recv)
//!   after the queued messages.
//!
//! # Wire format and modes
//!
//! A frame is flowipc's envelope (`safe/schema/envelope.capnp`, generated Rust checked in) then
//! the user's message in standard capnp segment framing, serialized once, straight into the
//! transport (the ring's shared frame where it fits). The receiver reads it where the transport
//! received it, in a buffer that becomes the [`MsgIn`]. Copy mode is one variant of an internal
//! allocator enum and one of an internal segments enum (`wire` module); zero copy (segments in
//! shared memory, only handles on the wire) adds a variant of each and keeps this API, so code that
//! builds and reads messages does not change.
//!
//! # Hostile peers
//!
//! Every frame is validated before anything is routed: the envelope is read with tight limits,
//! ids must be nonzero and strictly increasing, the kind must make sense (a response names what
//! it answers, a notification names nothing), the descriptor count must match, the body's segment
//! table must cover exactly the frame. A frame that fails poisons the channel
//! ([`StructuredError::Corrupt`]): the stream can no longer be trusted. The body is read with
//! capnp's traversal limit (at most [`StructuredOptions::amplification`] times the body's size, and
//! at most [`StructuredOptions::traversal_limit_words`]) and nesting limit on; exceeding them is a
//! [`StructuredError::Decode`] for that message only. Nothing allocates a size the peer chose
//! beyond the bytes that actually arrived.

mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod heap;
mod router;
mod sync;
#[cfg(feature = "tokio")]
mod tokio;
pub(crate) mod wire;
pub mod zero_copy;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use capnp::traits::Owned;

pub use self::error::StructuredError;
pub use self::sync::{RequestId, Responses, StructuredChannel};
#[cfg(feature = "tokio")]
pub use self::tokio::{AsyncResponses, AsyncStructuredChannel};
pub use self::wire::MsgKind;
pub use self::zero_copy::{ZeroCopy, DEFAULT_INLINE_MAX};

use self::wire::{BodySegments, OutMessage, ShmMessage};

/// Settings of a structured channel; [`open`](StructuredOptions::open) (or
/// [`open_async`](StructuredOptions::open_async)) builds one.
///
/// ```
/// use flowipc::structured::StructuredOptions;
/// # use flowipc::channel::Channel;
/// # #[path = "../../schema/ping_capnp.rs"]
/// # #[allow(missing_docs, unused, clippy::all)]
/// # mod ping_capnp;
///
/// # fn main() -> Result<(), flowipc::Error> {
/// let (a, _b) = Channel::socket_pair()?;
/// let ch = StructuredOptions::new()
///     .max_message_size(1 << 20)
///     .nesting_limit(16)
///     .open::<ping_capnp::body::Owned>(a)?;
/// # drop(ch);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StructuredOptions {
    max_message_size: usize,
    traversal_limit_words: Option<usize>,
    amplification: usize,
    nesting_limit: i32,
    inbox_capacity: usize,
    receive_in_caller: bool,
    zero_copy: Option<ZeroCopy>,
}

impl Default for StructuredOptions {
    fn default() -> Self {
        StructuredOptions {
            max_message_size: crate::channel::DEFAULT_MAX_MESSAGE_SIZE,
            traversal_limit_words: None,
            amplification: 8,
            nesting_limit: 64,
            inbox_capacity: 4096,
            receive_in_caller: false,
            zero_copy: None,
        }
    }
}

impl StructuredOptions {
    /// The defaults: limits sized for the channel's default 1 GiB messages, traversal at most 8x
    /// a message's size, nesting 64, 4096 queued messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel's [`ChannelOptions::max_message_size`](crate::channel::ChannelOptions::max_message_size);
    /// the default traversal limit is sized from it (one read of every word of the largest
    /// message). Set it to what the channel was built with.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The most words a reader of one message may traverse (capnp's traversal limit), whatever
    /// the message's size; default `max_message_size / 8`.
    pub fn traversal_limit_words(mut self, words: usize) -> Self {
        self.traversal_limit_words = Some(words);
        self
    }

    /// Traversal limit relative to a message's actual size: at most `factor` times its words
    /// (plus 1024) may be traversed (default 8). Stops amplification (many pointers to one
    /// object) while a large message reads fine.
    pub fn amplification(mut self, factor: usize) -> Self {
        self.amplification = factor.max(1);
        self
    }

    /// capnp's nesting limit for message bodies (default 64).
    pub fn nesting_limit(mut self, depth: i32) -> Self {
        self.nesting_limit = depth.max(1);
        self
    }

    /// How many received messages (unsolicited, and responses of multi-response requests) may wait
    /// to be taken before the channel stops receiving (default 4096).
    pub fn inbox_capacity(mut self, count: usize) -> Self {
        self.inbox_capacity = count.max(1);
        self
    }

    /// Sync face only: no reader thread; the threads that wait ([`sync_request`], [`recv`],
    /// [`Responses::recv_timeout`], ...) receive and route frames themselves, one at a time.
    /// This saves a thread hand-off per message (the lowest latency), but nothing is received
    /// while no thread waits: callbacks of [`request_with`] run in whichever waiting thread
    /// receives their response, and the peer's death is seen by the next wait. Default off.
    ///
    /// [`sync_request`]: StructuredChannel::sync_request
    /// [`recv`]: StructuredChannel::recv
    /// [`request_with`]: StructuredChannel::request_with
    pub fn receive_in_caller(mut self, yes: bool) -> Self {
        self.receive_in_caller = yes;
        self
    }

    /// Zero copy: messages this side creates are built in its lend pool and sent as segment
    /// handles; messages from the peer are read where it built them (or copied first, see
    /// [`ZeroCopy::copy_on_receive`]). Set it on both sides, each with its own side's
    /// [`ZeroCopy`] ([`Session::zero_copy`](crate::session::Session::zero_copy)). Nothing else
    /// changes: messages are built and read with the same calls, and copy-mode frames from the
    /// peer are still accepted. See the [`zero_copy`] module for the protocol and the soundness
    /// model.
    pub fn zero_copy(mut self, zc: ZeroCopy) -> Self {
        self.zero_copy = Some(zc);
        self
    }

    /// Builds a [`StructuredChannel`] over `channel`; starts its reader thread (unless
    /// [`receive_in_caller`](Self::receive_in_caller)).
    pub fn open<M: Owned + 'static>(
        &self,
        channel: crate::channel::Channel,
    ) -> Result<StructuredChannel<M>, crate::Error> {
        StructuredChannel::with_options(channel, self)
    }

    /// Builds an [`AsyncStructuredChannel`] over `channel`; spawns its reader task on the current
    /// tokio runtime (call it inside one).
    #[cfg(feature = "tokio")]
    pub fn open_async<M: Owned + 'static>(
        &self,
        channel: crate::channel::AsyncChannel,
    ) -> Result<AsyncStructuredChannel<M>, crate::Error> {
        AsyncStructuredChannel::with_options(channel, self)
    }

    pub(crate) fn body_limits(&self) -> wire::BodyLimits {
        wire::BodyLimits {
            traversal_limit_words: self
                .traversal_limit_words
                .unwrap_or(self.max_message_size / 8)
                .max(64),
            explicit_traversal_limit: self.traversal_limit_words,
            amplification: self.amplification,
            nesting_limit: self.nesting_limit,
        }
    }

    pub(crate) fn zero_copy_setting(&self) -> Option<&ZeroCopy> {
        self.zero_copy.as_ref()
    }
}

/// A new message in the mode `zc` names; `bytes`, if given, sizes its first segment.
pub(crate) fn new_message(zc: Option<&ZeroCopy>, bytes: Option<usize>) -> OutMessage {
    let first_words = bytes.map(|b| u32::try_from(b.div_ceil(8)).unwrap_or(u32::MAX));
    match zc {
        Some(zc) => OutMessage::Shm(ShmMessage::new(zc, first_words)),
        None => OutMessage::heap(first_words),
    }
}

/// An outgoing message: a capnp builder of the user's root type `M`, with descriptors attached.
/// Made by [`StructuredChannel::create_msg`] (the channel picks the allocator of its mode).
///
/// A message may be sent any number of times. In zero copy, the peer reads the segments that
/// were sent while it holds the message; so the first [`body_root`](Self::body_root) after a
/// send copies the message to fresh segments and changes those (the copy costs the message's
/// size once; build a new message instead where that matters).
pub struct MsgOut<M> {
    message: OutMessage,
    fds: Vec<OwnedFd>,
    _root: PhantomData<fn() -> M>,
}

impl<M: Owned> MsgOut<M> {
    pub(crate) fn new(mut message: OutMessage) -> Self {
        match &mut message {
            OutMessage::Heap(b) => {
                b.init_root::<M::Builder<'_>>();
            }
            OutMessage::Shm(m) => {
                m.builder.init_root::<M::Builder<'_>>();
            }
        }
        MsgOut {
            message,
            fds: Vec::new(),
            _root: PhantomData,
        }
    }

    /// The root of the message: an ordinary capnp builder of `M`.
    pub fn body_root(&mut self) -> M::Builder<'_> {
        match &mut self.message {
            // The root was initialized as an `M` when the message was made and nothing else
            // writes it, and `get_root` of a valid struct pointer cannot fail.
            OutMessage::Heap(b) => b
                .get_root()
                .expect("the root of a MsgOut is always an initialized struct"),
            OutMessage::Shm(m) => {
                if m.lent.load(std::sync::atomic::Ordering::Acquire) {
                    // Copy on write: the peer may be reading the sent segments.
                    let mut fresh = ShmMessage::new(&m.zc, None);
                    let copied = m
                        .builder
                        .get_root_as_reader::<capnp::any_pointer::Reader<'_>>()
                        .and_then(|old| fresh.builder.set_root(old));
                    if let Err(e) = copied {
                        // Not expected for a message this side built (the allocator cannot
                        // fail); never write the lent segments, even then.
                        tracing::error!("zero copy: copying a sent message failed: {e}");
                    }
                    *m = fresh;
                }
                m.builder
                    .get_root()
                    .expect("the root of a MsgOut is always an initialized struct")
            }
        }
    }

    /// The root as a reader (for checks before sending).
    pub fn body_reader(&self) -> Result<M::Reader<'_>, StructuredError> {
        match &self.message {
            OutMessage::Heap(b) => Ok(b.get_root_as_reader()?),
            OutMessage::Shm(m) => Ok(m.builder.get_root_as_reader()?),
        }
    }

    /// Attaches a descriptor: the peer gets its own copy (close-on-exec) with the message. Socket
    /// and ring transports; at most 253 per message.
    pub fn attach_fd(&mut self, fd: OwnedFd) {
        self.fds.push(fd);
    }

    /// The descriptors attached so far.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the attached descriptors back (for example to reuse the message without them).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Bytes of the body in copy mode (its serialized size), without the 40-byte envelope; a
    /// zero-copy message puts only `8 + 32 x segments` bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.message.body_wire_len()
    }

    pub(crate) fn parts(&self) -> (&OutMessage, Vec<BorrowedFd<'_>>) {
        (&self.message, self.fds.iter().map(AsFd::as_fd).collect())
    }
}

impl<M> fmt::Debug for MsgOut<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgOut")
            .field("fds", &self.fds.len())
            .finish_non_exhaustive()
    }
}

/// A received message: its envelope's facts, a capnp reader of the user's root type `M` over the
/// bytes as received, and its descriptors.
pub struct MsgIn<M> {
    id: u64,
    originating_id: u64,
    kind: MsgKind,
    /// Boxed: the reader is most of a message's size, and a `MsgIn` moves several times
    /// between the receive and its taker (a 160-byte copy each; boxed, the rest fits in
    /// registers).
    body: Box<capnp::message::Reader<BodySegments>>,
    fds: Vec<OwnedFd>,
    _root: PhantomData<fn() -> M>,
}

impl<M: Owned> MsgIn<M> {
    /// The root of the message: an ordinary capnp reader of `M`, with the channel's traversal and
    /// nesting limits. Each call counts against the traversal limit; keep the reader.
    pub fn body_root(&self) -> Result<M::Reader<'_>, StructuredError> {
        Ok(self.body.get_root()?)
    }
}

impl<M> MsgIn<M> {
    /// The sender's id of this message.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// For a response: the id of this side's message it answers.
    pub fn originating_id(&self) -> Option<u64> {
        (self.originating_id != 0).then_some(self.originating_id)
    }

    /// Notification, request or response.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }

    /// Whether the sender waits for a response ([`send_response`](StructuredChannel::send_response)).
    pub fn expects_response(&self) -> bool {
        self.kind == MsgKind::Request
    }

    /// The descriptors that came with the message (close-on-exec), in the order attached.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the descriptors out of the message (they are closed with it otherwise).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Size of the body in 8-byte words, as received.
    pub fn body_words(&self) -> usize {
        self.body.size_in_words()
    }
}

impl<M> fmt::Debug for MsgIn<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgIn")
            .field("id", &self.id)
            .field("originating_id", &self.originating_id)
            .field("kind", &self.kind)
            .field("fds", &self.fds.len())
            .finish_non_exhaustive()
    }
}

/// A response that found nothing waiting for it, given to the unexpected-response handler.
#[non_exhaustive]
pub enum UnexpectedResponse<M> {
    /// The peer sent this response to a message of ours that nothing waits for (never a request,
    /// or already answered). The peer has been told.
    Received(MsgIn<M>),
    /// The peer reports that our response `response_id` matched nothing of its own.
    ReportedByPeer {
        /// Id of the response this side sent.
        response_id: u64,
    },
}

impl<M> fmt::Debug for UnexpectedResponse<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnexpectedResponse::Received(msg) => f.debug_tuple("Received").field(msg).finish(),
            UnexpectedResponse::ReportedByPeer { response_id } => f
                .debug_struct("ReportedByPeer")
                .field("response_id", response_id)
                .finish(),
        }
    }
}

/// Counters of a structured channel ([`StructuredChannel::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StructuredStats {
    /// Frames sent (messages, responses, reports).
    pub sent: u64,
    /// Frames received and routed.
    pub received: u64,
    /// Responses that came after their request timed out or was dropped; dropped.
    pub late_responses: u64,
    /// Responses that matched nothing; handed to the handler and reported to the peer.
    pub unexpected_responses: u64,
    /// Reports from the peer that one of our responses matched nothing.
    pub reported_by_peer: u64,
    /// Reports to the peer that could not be sent (the channel was full or gone).
    pub reports_dropped: u64,
}
