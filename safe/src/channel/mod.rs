//! Channels: bidirectional pipes of messages (byte blobs, boundaries kept, any size), optionally
//! with file descriptors attached, between two processes.
//!
//! # Transports
//!
//! | constructor | transport | descriptors | notes |
//! | --- | --- | --- | --- |
//! | [`Channel::socket_pair`] | Unix stream socket, length-prefixed frames | up to 253 per message | simplest, works everywhere |
//! | [`Channel::mq_pair`] | two POSIX message queues + a companion socket for liveness | no | subject to the kernel's mq limits |
//! | [`Channel::ring_pair`] | two shared-memory rings + a companion socket for descriptors and liveness | up to 253 per message | fastest: no system call while the peer is awake |
//!
//! Every transport has one non-blocking core. The blocking API ([`Channel::send`],
//! [`Channel::recv`], ...) waits on top of it (in `poll`; a socket channel without a deadline in
//! its blocking `sendmsg`/`recvmsg` themselves), the async API ([`AsyncChannel`], feature
//! `tokio`) waits with tokio's reactor, and any other event loop can drive it through
//! [`Channel::readiness`] and the `try_*` calls.
//!
//! # Building and reading in place
//!
//! [`Channel::send_in_place`] has the caller build a message of a given length directly in the
//! transport, and [`Channel::recv_in_place`] lends the received message for reading where it
//! lies ([`MessageWriter`], [`IncomingMessage`]). On the ring transport a message that fits one
//! frame is built in the shared-memory frame the peer reads it from: no copy on either side, so
//! a large message costs what building and reading it costs. Other messages and transports go
//! through a buffer the channel reuses, behind the same calls.
//!
//! # Guarantees
//!
//! - Messages arrive complete, in order, each exactly once, with the descriptors sent with them
//!   (received descriptors are close-on-exec).
//! - Backpressure: a sender blocks (or gets [`SendError::WouldBlock`] in non-blocking mode) while
//!   the peer does not drain; memory stays bounded by one message per side.
//! - [`Channel::close`] reaches the peer after every message sent before it; the peer's receive then
//!   returns [`RecvError::Closed`]. A peer that dies (or drops its end without closing) gives
//!   [`RecvError::PeerGone`] / [`SendError::PeerGone`] once everything it sent has been received.
//! - Whatever the peer sends is validated: a forged length, wrong descriptor counts or a bad
//!   chunk sequence gives [`RecvError::Corrupt`], closes the descriptors that came with it and
//!   poisons the channel. Nothing the peer claims is allocated before the bytes arrive.
//! - [`Channel::split`] gives a sending and a receiving half for use from two threads or tasks.
//!
//! # Wire formats
//!
//! - Socket: each message is an 8-byte header (48-bit length, descriptor count, kind) and the
//!   payload. Descriptors ride the `sendmsg` that starts their message's header; the receiver
//!   accepts a batch only for the header that begins in the bytes of the read that delivered it,
//!   with exactly the declared count. Lengths above [`ChannelOptions::max_message_size`]
//!   (default 1 GiB) are corrupt.
//! - POSIX mq: messages are split into queue messages with a 16-byte chunk header (first/last
//!   flags, index, total length); no descriptors. The companion socket only reports the peer's
//!   death. The kernel's limits (here 10 messages of 8 KiB per queue and about nine queues per
//!   user) give [`OpenError::MqLimit`], which says what to raise.
//! - Ring: a message that fits a ring frame (up to about half the ring) is one frame; longer ones
//!   are frames of a quarter ring, the first carrying the total length; the frame tag holds the
//!   first/last/close flags and the descriptor count. Descriptors go over the companion socket just
//!   before the first frame. The process's peer watcher raises an alarm when the socket hangs
//!   up, which every call reads (one load), so no send goes into a dead peer's ring. Each ring
//!   also has a doorbell pair (a socket pair, rung non-blocking per call) of which each end holds
//!   its own end, so an end is five descriptors. The async ring arms the ring's wake-up and
//!   awaits its doorbell in the reactor; the sync API sleeps on futexes.
//!
//! # Example
//!
//! ```
//! use flowipc::channel::Channel;
//!
//! let (mut a, mut b) = Channel::socket_pair()?;
//! a.send(b"hello")?;
//! let mut buf = Vec::new();
//! b.recv(&mut buf)?;
//! assert_eq!(buf, b"hello");
//! a.close()?;
//! assert!(b.recv(&mut buf).unwrap_err().to_string().contains("closed"));
//! # Ok::<(), flowipc::Error>(())
//! ```
//!
//! To hand a channel to another process, send its descriptors over an existing channel with
//! [`Channel::send_channel`] (or take them with [`Channel::into_fds`] and rebuild with
//! [`Channel::from_fds`]).

mod error;
mod framing;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod in_place;
#[cfg(feature = "tokio")]
mod tokio;
mod transport;

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

pub use self::error::{Corruption, OpenError, RecvError, SendError};
pub use self::in_place::{IncomingMessage, MessageWriter};
#[cfg(feature = "tokio")]
pub use self::tokio::{AsyncChannel, AsyncReceiver, AsyncSender};

use self::transport::mq::{self, MqTransport};
use self::transport::ring::{self, RingTransport};
use self::transport::socket::SocketTransport;
pub use crate::ring::WaitPolicy;

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = flowipc_sys::socket::MAX_FDS_PER_MESSAGE;

/// Default [`ChannelOptions::max_message_size`]: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Limits a receiver enforces on what the peer claims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_message_size: usize,
    pub(crate) max_fds_per_message: usize,
}

/// Progress of one message through a transport's `send_step`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SendCursor {
    /// Transport-defined progress; 0 until something went out.
    pub(crate) pos: usize,
    /// Chunks sent (chunking transports).
    pub(crate) chunk: usize,
    /// Whether the descriptors went out.
    pub(crate) fds_sent: bool,
    /// Whether this is a close marker rather than a message.
    pub(crate) close: bool,
    /// Whether the message carries a channel ([`Channel::send_channel`]): marked on the wire, so
    /// that a plain receive never hands out its internal bytes.
    pub(crate) channel: bool,
}

impl SendCursor {
    fn started(&self) -> bool {
        self.pos > 0 || self.chunk > 0 || self.fds_sent
    }
}

/// How long a transport step may wait: the one blocking mode every transport takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// Return at once (`Step::Blocked` / nothing received).
    Never,
    /// Wait as long as it takes.
    Forever,
    /// Wait until this instant.
    Until(Instant),
}

impl Blocking {
    /// `Forever` without a deadline, `Until` with one.
    pub(crate) fn until(deadline: Option<Instant>) -> Self {
        deadline.map_or(Blocking::Forever, Blocking::Until)
    }

    /// Whether the step may wait at all.
    pub(crate) fn is_blocking(self) -> bool {
        self != Blocking::Never
    }

    /// For a blocking step, how long it may still wait (`Some(None)`: without limit; zero once
    /// the deadline passed); `None` for a non-blocking one.
    pub(crate) fn timeout(self) -> Option<Option<Duration>> {
        match self {
            Blocking::Never => None,
            Blocking::Forever => Some(None),
            Blocking::Until(d) => Some(Some(d.saturating_duration_since(Instant::now()))),
        }
    }

    /// Whether the deadline has passed (never without one).
    pub(crate) fn expired(self) -> bool {
        matches!(self, Blocking::Until(d) if Instant::now() >= d)
    }
}

/// Outcome of a transport step that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Done,
    Blocked,
}

/// Which transport a channel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// A Unix stream socket.
    Socket,
    /// A pair of POSIX message queues plus a companion socket.
    Mq,
    /// Two shared-memory rings plus a companion socket.
    Ring,
}

impl TransportKind {
    /// The one-byte form sent beside the descriptors by `send_channel` and the session layer.
    pub(crate) fn code(self) -> u8 {
        match self {
            TransportKind::Socket => 1,
            TransportKind::Mq => 2,
            TransportKind::Ring => 3,
        }
    }

    /// The kind a [`code`](Self::code) stands for; `None` for an unknown code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TransportKind::Socket),
            2 => Some(TransportKind::Mq),
            3 => Some(TransportKind::Ring),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TransportKind::Socket => "socket",
            TransportKind::Mq => "mq",
            TransportKind::Ring => "ring",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings for creating channels; [`Default`] gives the documented defaults.
///
/// ```
/// use flowipc::channel::ChannelOptions;
///
/// let (a, b) = ChannelOptions::new().max_message_size(64 << 20).socket_pair()?;
/// # drop((a, b));
/// # Ok::<(), flowipc::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    max_message_size: usize,
    max_fds_per_message: usize,
    mq_max_messages: Option<i64>,
    mq_message_size: Option<i64>,
    ring_capacity: usize,
    wait_policy: WaitPolicy,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_fds_per_message: MAX_FDS_PER_MESSAGE,
            mq_max_messages: None,
            mq_message_size: None,
            ring_capacity: ring::DEFAULT_RING_CAPACITY,
            wait_policy: WaitPolicy::default(),
        }
    }
}

impl ChannelOptions {
    /// The defaults: 1 GiB messages, 253 descriptors per message, the system's mq defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest message this side sends or accepts (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    ///
    /// A peer announcing a longer message gets the channel poisoned with
    /// [`Corruption::TooLarge`]. Memory for a message grows with the bytes that actually arrive,
    /// so a large limit costs nothing until a large message comes.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The most descriptors this side accepts with one message (default and maximum 253). A peer
    /// sending more gets the channel poisoned and the descriptors closed.
    pub fn max_fds_per_message(mut self, count: usize) -> Self {
        self.max_fds_per_message = count.min(MAX_FDS_PER_MESSAGE);
        self
    }

    /// Messages per POSIX queue (default: the system's `/proc/sys/fs/mqueue/msg_default`).
    pub fn mq_max_messages(mut self, count: u32) -> Self {
        self.mq_max_messages = Some(i64::from(count));
        self
    }

    /// Bytes per POSIX queue message (default: the system's `msgsize_default`); longer channel
    /// messages are split into chunks of this size.
    pub fn mq_message_size(mut self, bytes: usize) -> Self {
        // Past i64::MAX the kernel refuses the queue (`EINVAL`), as it does any size over its
        // `msgsize_max`; saturating keeps that error where the queue is created.
        self.mq_message_size = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        self
    }

    /// Bytes of each of the two rings of a ring channel (a power of two, default 1 MiB). Messages
    /// up to about half of it travel as one frame; longer ones are split.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// How a blocked ring channel waits (default: spin briefly, then sleep on a futex); ignored by
    /// the other transports, which wait in `poll`.
    pub fn wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.wait_policy = policy;
        self
    }

    /// A connected pair of ring channels; see [`Channel::ring_pair`].
    pub fn ring_pair(&self) -> Result<(Channel, Channel), OpenError> {
        let (a, b) = ring::create(self.ring_capacity)?;
        let make = |end| {
            Channel::new(
                Transport::Ring(Box::new(RingTransport::new(
                    end,
                    self.wait_policy,
                    self.limits(),
                ))),
                self.limits(),
            )
        };
        Ok((make(a), make(b)))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_message_size: self.max_message_size,
            max_fds_per_message: self.max_fds_per_message,
        }
    }

    /// A connected pair of socket channels; see [`Channel::socket_pair`].
    pub fn socket_pair(&self) -> Result<(Channel, Channel), OpenError> {
        let (a, b) =
            flowipc_sys::socket::socketpair_stream().map_err(|e| OpenError::os("socketpair", e))?;
        Ok((self.from_socket(a), self.from_socket(b)))
    }

    /// A connected pair of mq channels; see [`Channel::mq_pair`].
    pub fn mq_pair(&self) -> Result<(Channel, Channel), OpenError> {
        let ((arx, atx, asock), (brx, btx, bsock)) =
            mq::create(self.mq_max_messages, self.mq_message_size)?;
        let a = MqTransport::new(arx, atx, asock, self.limits())?;
        let b = MqTransport::new(brx, btx, bsock, self.limits())?;
        Ok((
            Channel::new(Transport::Mq(a), self.limits()),
            Channel::new(Transport::Mq(b), self.limits()),
        ))
    }

    /// A socket channel over a connected Unix stream socket whose peer speaks this protocol.
    pub fn from_socket(&self, sock: OwnedFd) -> Channel {
        Channel::new(
            Transport::Socket(SocketTransport::new(sock, self.limits())),
            self.limits(),
        )
    }

    /// Re-creates a channel from the descriptors of [`Channel::into_fds`].
    pub fn from_fds(&self, fds: ChannelFds) -> Result<Channel, OpenError> {
        let kind = fds.kind;
        let bad = |reason: &str| OpenError::BadFds {
            kind: kind.name(),
            reason: reason.to_owned(),
        };
        let mut it = fds.fds.into_iter();
        let transport = match kind {
            TransportKind::Socket => match (it.next(), it.next()) {
                (Some(sock), None) => Transport::Socket(SocketTransport::new(sock, self.limits())),
                _ => return Err(bad("expected exactly one descriptor")),
            },
            TransportKind::Mq => match (it.next(), it.next(), it.next(), it.next()) {
                (Some(rx), Some(tx), Some(sock), None) => {
                    Transport::Mq(MqTransport::new(rx, tx, sock, self.limits())?)
                }
                _ => {
                    return Err(bad(
                        "expected three descriptors (rx queue, tx queue, socket)",
                    ))
                }
            },
            TransportKind::Ring => Transport::Ring(Box::new(RingTransport::new(
                ring::open(it.collect())?,
                self.wait_policy,
                self.limits(),
            ))),
        };
        Ok(Channel::new(transport, self.limits()))
    }
}

/// Everything needed to re-create one end of a channel, possibly in another process: its
/// transport kind and its descriptors.
#[derive(Debug)]
pub struct ChannelFds {
    kind: TransportKind,
    fds: Vec<OwnedFd>,
}

/// Marks the body of a message carrying a channel (see [`Channel::send_channel`]); the message
/// is also flagged as a channel message by the transport's framing.
const CHANNEL_TAG: &[u8; 8] = b"FIPCchan";

/// The body of a message carrying the channel `fds`: the tag, then the transport's code.
pub(crate) fn channel_message(fds: &ChannelFds) -> Vec<u8> {
    let mut msg = CHANNEL_TAG.to_vec();
    msg.push(fds.kind.code());
    msg
}

/// The channel a message flagged as carrying one describes; hostile input, checked.
pub(crate) fn channel_fds(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<ChannelFds, OpenError> {
    match bytes.split_last() {
        Some((&code, tag)) if tag == CHANNEL_TAG => match TransportKind::from_code(code) {
            Some(kind) => Ok(ChannelFds::from_parts(kind, fds)),
            None => Err(OpenError::BadFds {
                kind: "unknown",
                reason: format!("unknown transport code {code}; is the peer a newer flowipc?"),
            }),
        },
        _ => Err(OpenError::BadFds {
            kind: "any",
            reason: "a message flagged as a channel has a malformed body".to_owned(),
        }),
    }
}

impl ChannelFds {
    /// The transport these descriptors belong to.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The descriptors, in the transport's order.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Splits into the transport and the descriptors, for handing them to another process by a
    /// path of your own (inheritance across `fork`/`exec`, a socket you already have). Between
    /// two flowipc programs, [`Channel::send_channel`] and sessions do this for you.
    pub fn into_parts(self) -> (TransportKind, Vec<OwnedFd>) {
        (self.kind, self.fds)
    }

    /// Puts descriptors received by a path of your own back together. Nothing is checked here:
    /// [`Channel::from_fds`] checks that they are what `kind` needs.
    pub fn from_parts(kind: TransportKind, fds: Vec<OwnedFd>) -> Self {
        ChannelFds { kind, fds }
    }
}

/// What [`Channel::recv`] got besides the bytes.
#[derive(Debug)]
#[non_exhaustive]
pub struct RecvMeta {
    /// Length of the message (the buffer's new length).
    pub len: usize,
    /// Descriptors that came with the message (close-on-exec), in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// A received message with its descriptors, from [`Channel::recv_owned`].
#[derive(Debug, Default)]
pub struct Message {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Descriptors that came with the message (close-on-exec), in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// The descriptors an event loop watches to drive a channel with the `try_*` calls.
///
/// Socket and mq channels signal all progress through these. A ring channel's data moves through
/// shared memory, which no descriptor reports: for a ring channel `recv` and `send` are its
/// companion socket (hang-up and descriptors only), so an event loop must also retry
/// `try_recv`/`try_send` periodically (the [`AsyncChannel`] does so with a back-off).
#[derive(Debug, Clone, Copy)]
pub struct Readiness<'a> {
    /// Becomes readable when [`Channel::try_recv`] may make progress.
    pub recv: BorrowedFd<'a>,
    /// Becomes writable when [`Channel::try_send`] may make progress.
    pub send: BorrowedFd<'a>,
    /// Reports hang-up (`POLLHUP`) when the peer is gone, for transports whose `recv` and `send`
    /// descriptors do not show it; `None` when they do.
    pub peer: Option<BorrowedFd<'a>>,
}

#[derive(Debug)]
enum Transport {
    Socket(SocketTransport),
    Mq(MqTransport),
    /// Boxed: the ring handles are several hundred bytes.
    Ring(Box<RingTransport>),
}

impl Transport {
    /// One send step. Blocking: the ring waits inside (until the deadline, if any) rather than
    /// returning `Blocked` at once; the socket blocks in its system calls when there is no
    /// deadline; the others wait in [`Transport::wait`].
    #[inline]
    fn send_step(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        block: Blocking,
    ) -> Result<Step, SendError> {
        match self {
            Transport::Socket(t) => t.send_step(cur, data, fds, block == Blocking::Forever),
            Transport::Mq(t) => t.send_step(cur, data, fds, block.is_blocking()),
            Transport::Ring(t) => t.send_step(cur, data, fds, block),
        }
    }

    /// One receive step. `in_place`: the ring leaves a one-frame message in the ring for
    /// [`RingTransport::take_in_place`]; the other transports always fill `out`.
    #[inline]
    fn recv_step(
        &mut self,
        out: &mut Vec<u8>,
        block: Blocking,
        in_place: bool,
    ) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        match self {
            Transport::Socket(t) => t.recv_step(out, block == Blocking::Forever),
            Transport::Mq(t) => t.recv_step(out, block.is_blocking()),
            Transport::Ring(t) => t.recv_step(out, block, in_place),
        }
    }

    fn wait(&self, send: bool, timeout: Option<Duration>) -> Result<(), flowipc_sys::Errno> {
        match self {
            Transport::Socket(t) => t.wait(send, timeout),
            Transport::Mq(t) => t.wait(send, timeout),
            // The ring waited inside its step already.
            Transport::Ring(_) => Ok(()),
        }
    }

    fn discard(&mut self) {
        match self {
            Transport::Socket(t) => t.discard(),
            Transport::Mq(t) => t.discard(),
            Transport::Ring(t) => t.discard(),
        }
    }

    fn has_buffered_input(&self) -> bool {
        match self {
            Transport::Socket(t) => t.has_buffered_input(),
            Transport::Mq(t) => t.has_buffered_input(),
            Transport::Ring(t) => t.has_buffered_input(),
        }
    }

    /// Whether the message the last successful receive step returned carries a channel (mq
    /// carries no descriptors, hence no channels).
    #[inline]
    fn last_carries_channel(&self) -> bool {
        match self {
            Transport::Socket(t) => t.last_carries_channel(),
            Transport::Mq(_) => false,
            Transport::Ring(t) => t.last_carries_channel(),
        }
    }

    fn readiness(&self) -> Readiness<'_> {
        match self {
            Transport::Socket(t) => Readiness {
                recv: t.fd(),
                send: t.fd(),
                peer: None,
            },
            Transport::Mq(t) => Readiness {
                recv: t.recv_fd(),
                send: t.send_fd(),
                peer: Some(t.peer_fd()),
            },
            Transport::Ring(t) => Readiness {
                recv: t.sock(),
                send: t.sock(),
                peer: Some(t.sock()),
            },
        }
    }

    fn kind(&self) -> TransportKind {
        match self {
            Transport::Socket(_) => TransportKind::Socket,
            Transport::Mq(_) => TransportKind::Mq,
            Transport::Ring(_) => TransportKind::Ring,
        }
    }
}

/// Time left until `deadline` (zero once it passed); `None` without a deadline.
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A message whose sending was interrupted (non-blocking mode or a dropped future): the channel
/// owns a copy and finishes it before anything else.
#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    cursor: SendCursor,
}

/// One end of a bidirectional channel of messages. See the [module docs](self).
///
/// A `Channel` is `Send`: move it to the thread (or, via [`Channel::into_async`], the task) that
/// uses it. Dropping it closes it; the peer sees [`RecvError::Closed`] if the close marker could be
/// written without blocking, else [`RecvError::PeerGone`]: call [`Channel::close`] to be sure.
#[derive(Debug)]
pub struct Channel {
    /// `Some` from creation until [`Channel::into_fds`] consumes the channel.
    transport: Option<Transport>,
    limits: Limits,
    pending: Option<Pending>,
    /// Where [`Channel::send_in_place`] builds a message it cannot build in the transport, and
    /// [`Channel::recv_in_place`] receives one it cannot leave there; reused.
    stage: Vec<u8>,
    nonblocking: bool,
    closed: bool,
    poisoned: bool,
    /// A received message held back for the next receive of the right kind: a channel that a
    /// plain receive met (for [`Channel::recv_channel`]), or an ordinary message that
    /// `recv_channel` met (for the next [`Channel::recv`]). Nothing received is ever dropped.
    held: Option<Held>,
}

/// A message a receive took off the transport but did not hand out (see `Channel::held`).
#[derive(Debug)]
struct Held {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    channel: bool,
}

impl Channel {
    fn new(transport: Transport, limits: Limits) -> Self {
        Channel {
            transport: Some(transport),
            limits,
            held: None,
            pending: None,
            stage: Vec::new(),
            nonblocking: false,
            closed: false,
            poisoned: false,
        }
    }

    /// A connected pair of channels over a Unix stream socket pair, with default
    /// [`ChannelOptions`]. Keep one, or pass one to a child process ([`Channel::into_fds`]).
    pub fn socket_pair() -> Result<(Channel, Channel), OpenError> {
        ChannelOptions::default().socket_pair()
    }

    /// A connected pair of channels over two POSIX message queues (plus a companion socket that
    /// reports peer death), with default [`ChannelOptions`]. Carries no descriptors.
    ///
    /// Fails with [`OpenError::MqLimit`] when the kernel's queue limits are exhausted.
    pub fn mq_pair() -> Result<(Channel, Channel), OpenError> {
        ChannelOptions::default().mq_pair()
    }

    /// A connected pair of channels over two shared-memory rings (one per direction, 1 MiB
    /// each by default) plus a companion socket that carries descriptors and reports peer death,
    /// with default [`ChannelOptions`]. The fastest transport: a message that fits the ring costs
    /// one copy in and one copy out, and no system call while the peer is awake.
    ///
    /// Hand one end to another process before using it (see [`Channel::into_fds`]).
    pub fn ring_pair() -> Result<(Channel, Channel), OpenError> {
        ChannelOptions::default().ring_pair()
    }

    /// A socket channel over a connected Unix stream socket whose peer is a flowipc socket
    /// channel; default [`ChannelOptions`].
    pub fn from_socket(sock: OwnedFd) -> Channel {
        ChannelOptions::default().from_socket(sock)
    }

    /// Re-creates a channel from [`ChannelFds`] with default [`ChannelOptions`].
    pub fn from_fds(fds: ChannelFds) -> Result<Channel, OpenError> {
        ChannelOptions::default().from_fds(fds)
    }

    /// Gives up this end, returning what is needed to re-create it (in this or another process).
    ///
    /// An unfinished send is completed first (blocking). Fails with [`SendError::Poisoned`] on a
    /// broken channel. Bytes of the peer already read into this end's buffer would be lost, so
    /// hand a channel over before receiving on it (or after a complete exchange).
    pub fn into_fds(mut self) -> Result<ChannelFds, SendError> {
        self.flush_pending_blocking()?;
        if self.poisoned {
            return Err(SendError::Poisoned);
        }
        debug_assert!(!self.tr().has_buffered_input());
        let kind = self.kind();
        let fds = match self.transport.take() {
            Some(Transport::Socket(t)) => vec![t.into_fd()],
            Some(Transport::Mq(t)) => t.into_fds(),
            Some(Transport::Ring(t)) => t.into_fds()?,
            None => Vec::new(),
        };
        Ok(ChannelFds { kind, fds })
    }

    /// The longest message this channel sends or accepts ([`ChannelOptions::max_message_size`]).
    pub fn max_message_size(&self) -> usize {
        self.limits.max_message_size
    }

    /// Which transport this channel uses.
    pub fn kind(&self) -> TransportKind {
        self.tr().kind()
    }

    /// The descriptors an event loop watches to drive this channel with `try_*` calls.
    pub fn readiness(&self) -> Readiness<'_> {
        self.tr().readiness()
    }

    /// In non-blocking mode, [`send`](Channel::send) and [`recv`](Channel::recv) return
    /// `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.nonblocking = nonblocking;
    }

    /// Whether the channel is in non-blocking mode.
    pub fn is_nonblocking(&self) -> bool {
        self.nonblocking
    }

    /// Sends a message, waiting while the peer does not drain (unless non-blocking).
    #[inline]
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_with_fds(data, &[])
    }

    /// Sends a message with descriptors attached (at most [`MAX_FDS_PER_MESSAGE`]; socket and
    /// ring transports, mq gives [`SendError::FdsUnsupported`]). The descriptors stay open here;
    /// the peer gets its own, close-on-exec.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use flowipc::channel::Channel;
    ///
    /// let (mut a, mut b) = Channel::socket_pair()?;
    /// let file = std::fs::File::open("/dev/null").unwrap();
    /// a.send_with_fds(b"a file", &[file.as_fd()])?;
    /// let msg = b.recv_owned()?;
    /// assert_eq!((msg.bytes.as_slice(), msg.fds.len()), (&b"a file"[..], 1));
    /// # Ok::<(), flowipc::Error>(())
    /// ```
    #[inline]
    pub fn send_with_fds(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        if self.nonblocking {
            return self.try_send_with_fds(data, fds);
        }
        self.send_until(data, fds, false, None)
    }

    /// Sends a message, waiting at most `timeout` for room: [`SendError::TimedOut`] then, and
    /// nothing of the message was sent.
    pub fn send_timeout(&mut self, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send_with_fds_timeout(data, &[], timeout)
    }

    /// [`send_with_fds`](Channel::send_with_fds) waiting at most `timeout` for room
    /// ([`SendError::TimedOut`]: nothing was sent).
    ///
    /// A message longer than the transport takes at once may be cut off by the deadline after
    /// part of it went out; the channel then keeps the rest (as [`try_send`](Channel::try_send)
    /// does) and sends it before anything else, and the call returns `Ok`.
    pub fn send_with_fds_timeout(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.send_until(data, fds, false, Some(Instant::now() + timeout))
    }

    /// Sends a message (`channel`: one that carries a channel), blocking until `deadline`.
    #[inline]
    fn send_until(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        channel: bool,
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        if !channel && fds.is_empty() && self.try_send_fast(data) {
            return Ok(());
        }
        self.check_send(data, fds)?;
        self.flush_pending_until(deadline)?;
        let mut cur = SendCursor {
            channel,
            ..SendCursor::default()
        };
        loop {
            match self.step_send(&mut cur, data, fds, Blocking::until(deadline))? {
                Step::Done => return Ok(()),
                Step::Blocked => {
                    let timeout = match remaining(deadline) {
                        Some(Duration::ZERO) if cur.started() => {
                            self.pending = Some(Pending {
                                data: data.to_vec(),
                                cursor: cur,
                            });
                            return Ok(());
                        }
                        Some(Duration::ZERO) => return Err(SendError::TimedOut),
                        t => t,
                    };
                    self.wait(true, timeout)
                        .map_err(|e| SendError::os("poll", e))?
                }
            }
        }
    }

    /// Sends a message if that can be done without waiting.
    ///
    /// `Ok` means the whole message is accepted and will be delivered in order: if only part of
    /// it fit, the channel keeps a copy of the rest and sends it before anything else.
    /// [`SendError::WouldBlock`] means nothing of it was sent.
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.try_send_with_fds(data, &[])
    }

    /// [`try_send`](Channel::try_send) with descriptors attached.
    pub fn try_send_with_fds(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SendError> {
        if fds.is_empty() && self.try_send_fast(data) {
            return Ok(());
        }
        self.check_send(data, fds)?;
        if !self.flush_pending(false)? {
            return Err(SendError::WouldBlock);
        }
        let mut cur = SendCursor::default();
        match self.step_send(&mut cur, data, fds, Blocking::Never)? {
            Step::Done => Ok(()),
            Step::Blocked if cur.started() => {
                self.pending = Some(Pending {
                    data: data.to_vec(),
                    cursor: cur,
                });
                Ok(())
            }
            Step::Blocked => Err(SendError::WouldBlock),
        }
    }

    /// Finishes sending a message that [`try_send`](Channel::try_send) (or non-blocking
    /// [`send`](Channel::send)) accepted only in part, without waiting:
    /// [`SendError::WouldBlock`] if some of it is still queued here.
    pub fn try_flush(&mut self) -> Result<(), SendError> {
        if self.flush_pending(false)? {
            Ok(())
        } else {
            Err(SendError::WouldBlock)
        }
    }

    /// Waits until a message accepted in part by a non-blocking send is fully handed to the
    /// transport.
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.flush_pending_blocking()
    }

    /// Receives the next message into `buf` (replacing its contents; its allocation is reused
    /// for later messages), waiting for it unless non-blocking.
    ///
    /// Returns [`RecvError::Closed`] once the peer closed and everything before has been
    /// received, [`RecvError::PeerGone`] if it died instead.
    #[inline]
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        if self.nonblocking {
            self.try_recv(buf)
        } else {
            self.recv_until(buf, None, false)
        }
    }

    /// Receives the next message as an owned [`Message`].
    pub fn recv_owned(&mut self) -> Result<Message, RecvError> {
        let mut bytes = Vec::new();
        let meta = self.recv(&mut bytes)?;
        Ok(Message {
            bytes,
            fds: meta.fds,
        })
    }

    /// Receives a message if one is complete without waiting, else [`RecvError::WouldBlock`].
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        if self.try_recv_fast(buf) {
            return Ok(RecvMeta {
                len: buf.len(),
                fds: Vec::new(),
            });
        }
        match self.step_recv(buf, Blocking::Never, false)? {
            Some(fds) => Ok(RecvMeta {
                len: buf.len(),
                fds,
            }),
            None => Err(RecvError::WouldBlock),
        }
    }

    /// Receives the next message, waiting at most `timeout` ([`RecvError::TimedOut`]).
    pub fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<RecvMeta, RecvError> {
        self.recv_until(buf, Some(Instant::now() + timeout), false)
    }

    /// Closes this side for sending: the peer receives [`RecvError::Closed`] after every message
    /// sent before. Waits until the close marker is handed to the transport. Receiving stays
    /// possible until the peer closes too.
    pub fn close(&mut self) -> Result<(), SendError> {
        if self.closed {
            return Ok(());
        }
        if self.poisoned {
            return Err(SendError::Poisoned);
        }
        self.flush_pending_blocking()?;
        let mut cur = SendCursor {
            close: true,
            ..SendCursor::default()
        };
        loop {
            match self.step_send(&mut cur, &[], &[], Blocking::Forever)? {
                Step::Done => break,
                Step::Blocked => self
                    .wait(true, None)
                    .map_err(|e| SendError::os("poll", e))?,
            }
        }
        self.closed = true;
        Ok(())
    }

    /// Sends another channel's end to the peer, which takes it with
    /// [`recv_channel`](Channel::recv_channel). `self` must carry descriptors (socket or ring);
    /// `channel` may be of any transport, and a ring channel must not have been used yet
    /// ([`SendError::NotTransferable`]; `channel` is then dropped).
    ///
    /// The message is marked as a channel on the wire: a plain [`recv`](Channel::recv) on the
    /// other side gets [`RecvError::ChannelMessage`] and the channel stays queued for
    /// `recv_channel`.
    pub fn send_channel(&mut self, channel: Channel) -> Result<(), SendError> {
        let fds = channel.into_fds()?;
        let msg = channel_message(&fds);
        let borrowed: Vec<BorrowedFd<'_>> = fds.fds.iter().map(AsFd::as_fd).collect();
        self.send_until(&msg, &borrowed, true, None)
    }

    /// Receives a channel end sent with [`send_channel`](Channel::send_channel), with default
    /// [`ChannelOptions`].
    pub fn recv_channel(&mut self) -> Result<Channel, crate::Error> {
        self.recv_channel_with(&ChannelOptions::default())
    }

    /// [`recv_channel`](Channel::recv_channel) re-creating the channel with `options` (limits,
    /// wait policy).
    ///
    /// An ordinary message met instead gives [`RecvError::NotAChannel`] and stays queued: the next
    /// [`recv`](Channel::recv) returns it.
    pub fn recv_channel_with(&mut self, options: &ChannelOptions) -> Result<Channel, crate::Error> {
        let mut bytes = Vec::new();
        let got = self.recv(&mut bytes);
        self.take_channel(got, bytes, options)
    }

    /// The end of a channel receive (sync and async): a channel message is opened, an ordinary
    /// one held for the next receive.
    pub(crate) fn take_channel(
        &mut self,
        got: Result<RecvMeta, RecvError>,
        bytes: Vec<u8>,
        options: &ChannelOptions,
    ) -> Result<Channel, crate::Error> {
        match got {
            Ok(meta) => {
                self.held = Some(Held {
                    bytes,
                    fds: meta.fds,
                    channel: false,
                });
                Err(RecvError::NotAChannel.into())
            }
            Err(RecvError::ChannelMessage) => {
                let held = self.held.take().ok_or(RecvError::Poisoned)?;
                Ok(options.from_fds(channel_fds(&held.bytes, held.fds)?)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The ring transport, if this is a ring channel (for the async face's armed wake-ups).
    #[cfg(feature = "tokio")]
    pub(crate) fn ring_transport(&mut self) -> Option<&mut RingTransport> {
        match self.transport.as_mut() {
            Some(Transport::Ring(t)) => Some(t),
            _ => None,
        }
    }

    #[inline]
    fn tr(&self) -> &Transport {
        self.transport
            .as_ref()
            .expect("a channel has its transport until into_fds consumes it")
    }

    #[inline]
    fn tr_mut(&mut self) -> &mut Transport {
        self.transport
            .as_mut()
            .expect("a channel has its transport until into_fds consumes it")
    }

    #[inline]
    fn recv_until(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
        in_place: bool,
    ) -> Result<RecvMeta, RecvError> {
        if !in_place && self.try_recv_fast(buf) {
            return Ok(RecvMeta {
                len: buf.len(),
                fds: Vec::new(),
            });
        }
        loop {
            if let Some(fds) = self.step_recv(buf, Blocking::until(deadline), in_place)? {
                return Ok(RecvMeta {
                    len: buf.len(),
                    fds,
                });
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(RecvError::TimedOut);
                    }
                    Some(d - now)
                }
            };
            self.wait(false, timeout)
                .map_err(|e| RecvError::os("poll", e))?;
        }
    }

    fn wait(&self, send: bool, timeout: Option<Duration>) -> Result<(), flowipc_sys::Errno> {
        self.tr().wait(send, timeout)
    }

    /// The ring's fast send ([`RingTransport::try_send_fast`]) when nothing needs the general
    /// path: a usable channel, nothing pending, a message within the size limit. `false`: nothing
    /// was sent.
    #[inline]
    fn try_send_fast(&mut self, data: &[u8]) -> bool {
        if self.poisoned
            || self.closed
            || self.pending.is_some()
            || data.len() > self.limits.max_message_size
        {
            return false;
        }
        match self.transport.as_mut() {
            Some(Transport::Ring(t)) => t.try_send_fast(data),
            _ => false,
        }
    }

    /// The ring's fast receive ([`RingTransport::try_recv_fast`]) when nothing needs the
    /// general path: a usable channel holding no message back. `false`: nothing was received.
    #[inline]
    fn try_recv_fast(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.poisoned || self.held.is_some() {
            return false;
        }
        match self.transport.as_mut() {
            Some(Transport::Ring(t)) => t.try_recv_fast(buf),
            _ => false,
        }
    }

    #[inline]
    fn check_send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        self.check_send_len(data.len(), fds)
    }

    #[inline]
    fn check_send_len(&self, len: usize, fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        if self.poisoned {
            return Err(SendError::Poisoned);
        }
        if self.closed {
            return Err(SendError::Closed);
        }
        if len > self.limits.max_message_size {
            return Err(SendError::TooLarge {
                len,
                max: self.limits.max_message_size,
            });
        }
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(SendError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            });
        }
        Ok(())
    }

    /// One transport step; an error after part of the message went out poisons the channel.
    #[inline]
    fn step_send(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        block: Blocking,
    ) -> Result<Step, SendError> {
        let result = self.tr_mut().send_step(cur, data, fds, block);
        if let Err(e) = &result {
            if cur.started() && !matches!(e, SendError::PeerGone) {
                self.poisoned = true;
            }
        }
        result
    }

    #[inline]
    fn step_recv(
        &mut self,
        buf: &mut Vec<u8>,
        block: Blocking,
        in_place: bool,
    ) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        if self.poisoned {
            return Err(RecvError::Poisoned);
        }
        if self.held.is_some() {
            return self.take_held(buf);
        }
        let result = self.tr_mut().recv_step(buf, block, in_place);
        match result {
            Err(RecvError::Corrupt(_) | RecvError::Io { .. }) => {
                self.poisoned = true;
                self.tr_mut().discard();
            }
            Ok(Some(fds)) if self.tr().last_carries_channel() => {
                // Never in place: the ring assembles channel messages in `buf`.
                self.held = Some(Held {
                    bytes: std::mem::take(buf),
                    fds,
                    channel: true,
                });
                return Err(RecvError::ChannelMessage);
            }
            _ => {}
        }
        result
    }

    /// A held message for a receive (see `Channel::held`): an ordinary one is handed out, a
    /// channel stays for `recv_channel`.
    #[cold]
    fn take_held(&mut self, buf: &mut Vec<u8>) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        match self.held.take() {
            Some(h) if h.channel => {
                self.held = Some(h);
                Err(RecvError::ChannelMessage)
            }
            Some(h) => {
                *buf = h.bytes;
                Ok(Some(h.fds))
            }
            None => Ok(None),
        }
    }

    /// Tries to finish an interrupted send. `Ok(true)`: nothing pending any more.
    fn flush_pending(&mut self, block: bool) -> Result<bool, SendError> {
        let Some(mut p) = self.pending.take() else {
            return Ok(true);
        };
        let mode = if block {
            Blocking::Forever
        } else {
            Blocking::Never
        };
        match self.step_send(&mut p.cursor, &p.data, &[], mode) {
            Ok(Step::Done) => Ok(true),
            Ok(Step::Blocked) => {
                self.pending = Some(p);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn flush_pending_blocking(&mut self) -> Result<(), SendError> {
        self.flush_pending_until(None)
    }

    /// Finishes an interrupted send, waiting until `deadline` ([`SendError::TimedOut`]).
    #[inline]
    fn flush_pending_until(&mut self, deadline: Option<Instant>) -> Result<(), SendError> {
        if self.pending.is_none() {
            return Ok(());
        }
        self.flush_pending_slow(deadline)
    }

    #[cold]
    fn flush_pending_slow(&mut self, deadline: Option<Instant>) -> Result<(), SendError> {
        while !self.flush_pending(true)? {
            let timeout = match remaining(deadline) {
                Some(Duration::ZERO) => return Err(SendError::TimedOut),
                t => t,
            };
            self.wait(true, timeout)
                .map_err(|e| SendError::os("poll", e))?;
        }
        Ok(())
    }

    /// Keeps the unsent rest of an interrupted message (a dropped async send).
    #[cfg(feature = "tokio")]
    pub(crate) fn abandon_send(&mut self, data: &[u8], cursor: SendCursor) {
        if cursor.started() {
            self.pending = Some(Pending {
                data: data.to_vec(),
                cursor,
            });
        }
    }
}

impl Channel {
    /// Splits the channel into a sending and a receiving half that can be used at the same time
    /// from different threads (each half is `Send`).
    ///
    /// The halves share the transport: the sending half holds duplicates of its descriptors. The
    /// peer sees the channel closed when the sending half is closed or dropped; it sees the
    /// channel gone once both halves are dropped.
    ///
    /// ```
    /// use flowipc::channel::Channel;
    ///
    /// let (a, mut b) = Channel::socket_pair()?;
    /// let (mut tx, mut rx) = a.split()?;
    /// let echo = std::thread::spawn(move || {
    ///     let msg = b.recv_owned().unwrap();
    ///     b.send(&msg.bytes).unwrap();
    /// });
    /// tx.send(b"hi")?;
    /// assert_eq!(rx.recv_owned()?.bytes, b"hi");
    /// echo.join().unwrap();
    /// # Ok::<(), flowipc::Error>(())
    /// ```
    pub fn split(mut self) -> Result<(ChannelSender, ChannelReceiver), OpenError> {
        let half = match self.tr_mut() {
            Transport::Socket(t) => {
                Transport::Socket(t.split_sender().map_err(|e| OpenError::os("dup", e))?)
            }
            Transport::Mq(t) => Transport::Mq(t.split_sender()?),
            Transport::Ring(t) => Transport::Ring(Box::new(t.split_sender()?)),
        };
        let mut sender = Channel::new(half, self.limits);
        sender.pending = self.pending.take();
        sender.nonblocking = self.nonblocking;
        sender.closed = self.closed;
        sender.poisoned = self.poisoned;
        // The receiving half never sends: no close marker when it is dropped.
        self.closed = true;
        Ok((ChannelSender(sender), ChannelReceiver(self)))
    }
}

/// The sending half of a [`Channel`], from [`Channel::split`].
#[derive(Debug)]
pub struct ChannelSender(Channel);

/// The receiving half of a [`Channel`], from [`Channel::split`].
#[derive(Debug)]
pub struct ChannelReceiver(Channel);

impl ChannelSender {
    /// See [`Channel::send`].
    #[inline]
    pub fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.0.send(data)
    }

    /// See [`Channel::send_with_fds`].
    #[inline]
    pub fn send_with_fds(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        self.0.send_with_fds(data, fds)
    }

    /// See [`Channel::try_send`].
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.0.try_send(data)
    }

    /// See [`Channel::try_send_with_fds`].
    pub fn try_send_with_fds(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SendError> {
        self.0.try_send_with_fds(data, fds)
    }

    /// See [`Channel::send_in_place`].
    pub fn send_in_place<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.0.send_in_place(len, build)
    }

    /// See [`Channel::send_in_place_with_fds`].
    pub fn send_in_place_with_fds<R>(
        &mut self,
        len: usize,
        fds: &[BorrowedFd<'_>],
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.0.send_in_place_with_fds(len, fds, build)
    }

    /// See [`Channel::flush`].
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.0.flush()
    }

    /// See [`Channel::try_flush`].
    pub fn try_flush(&mut self) -> Result<(), SendError> {
        self.0.try_flush()
    }

    /// See [`Channel::close`].
    pub fn close(&mut self) -> Result<(), SendError> {
        self.0.close()
    }

    /// See [`Channel::set_nonblocking`].
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.0.set_nonblocking(nonblocking);
    }

    /// See [`Channel::readiness`] (use its `send` and `peer` descriptors).
    pub fn readiness(&self) -> Readiness<'_> {
        self.0.readiness()
    }
}

impl ChannelReceiver {
    /// See [`Channel::recv`].
    #[inline]
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        self.0.recv(buf)
    }

    /// See [`Channel::recv_owned`].
    pub fn recv_owned(&mut self) -> Result<Message, RecvError> {
        self.0.recv_owned()
    }

    /// See [`Channel::try_recv`].
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        self.0.try_recv(buf)
    }

    /// See [`Channel::recv_in_place`].
    pub fn recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        self.0.recv_in_place()
    }

    /// See [`Channel::try_recv_in_place`].
    pub fn try_recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        self.0.try_recv_in_place()
    }

    /// See [`Channel::recv_timeout`].
    pub fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<RecvMeta, RecvError> {
        self.0.recv_timeout(buf, timeout)
    }

    /// [`recv`](Self::recv), waiting until `deadline` at the latest ([`RecvError::TimedOut`]):
    /// for callers that already hold a deadline (no clock read to turn it into a timeout).
    pub(crate) fn recv_until(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<RecvMeta, RecvError> {
        self.0.recv_until(buf, Some(deadline), false)
    }

    /// See [`Channel::set_nonblocking`].
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.0.set_nonblocking(nonblocking);
    }

    /// See [`Channel::readiness`] (use its `recv` and `peer` descriptors).
    pub fn readiness(&self) -> Readiness<'_> {
        self.0.readiness()
    }
}

impl AsFd for ChannelReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsFd for Channel {
    /// The descriptor that becomes readable when [`Channel::try_recv`] may make progress (see
    /// [`Channel::readiness`] for the others).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tr().readiness().recv
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if self.closed || self.poisoned || self.pending.is_some() {
            return;
        }
        // Best effort, never blocking: a peer that does not drain sees PeerGone instead.
        let mut cur = SendCursor {
            close: true,
            ..SendCursor::default()
        };
        if let Some(t) = self.transport.as_mut() {
            let _ = t.send_step(&mut cur, &[], &[], Blocking::Never);
        }
    }
}
