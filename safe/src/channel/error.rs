//! Per-operation errors of channels.

use std::io;

use crate::ring::RingOpenError;

use flowipc_sys::Errno;

/// What was wrong with bytes or descriptors the peer sent.
///
/// The peer may be buggy or hostile; whatever it sends is checked before use. A corrupt message
/// poisons the channel (every later operation fails with `Poisoned`), and every descriptor that
/// arrived with it has been closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A message header claims more bytes than this side accepts.
    #[error(
        "the peer announced a {claimed}-byte message, above this side's limit of {max} bytes \
         (a forged length, or a peer configured with a larger limit: raise \
         ChannelOptions::max_message_size on this side if the peer is trusted)"
    )]
    TooLarge {
        /// The length the peer claimed.
        claimed: u64,
        /// This side's [`max_message_size`](super::ChannelOptions::max_message_size).
        max: usize,
    },
    /// A frame or chunk header that no correct peer writes.
    #[error("the peer sent an invalid frame header ({0:#018x}); the stream is out of sync")]
    BadHeader(u64),
    /// A message declared more descriptors than this side accepts.
    #[error(
        "the peer attached {declared} file descriptors to one message, above this side's limit \
         of {max} (raise ChannelOptions::max_fds_per_message if that is expected)"
    )]
    TooManyFds {
        /// How many the message declared.
        declared: usize,
        /// This side's limit.
        max: usize,
    },
    /// The kernel truncated the descriptors of a message (`MSG_CTRUNC`): the peer sent more than
    /// this side offered room for. Those that arrived were closed.
    #[error(
        "file descriptors arrived truncated (MSG_CTRUNC): the peer sent more than this side \
         accepts per message; the ones that arrived were closed"
    )]
    FdsTruncated,
    /// The number of descriptors that arrived with a message differs from what it declared.
    #[error("a message declared {declared} file descriptors but {arrived} arrived with it")]
    FdCountMismatch {
        /// How many the message header declared.
        declared: usize,
        /// How many arrived with it.
        arrived: usize,
    },
    /// Descriptors arrived with bytes that no message declaring them began in.
    #[error("file descriptors arrived with the wrong message (no header there declared them)")]
    UnexpectedFds,
    /// Chunks of a split message arrived out of order, duplicated or inconsistent.
    #[error("invalid chunk sequence: {0}")]
    BadChunk(&'static str),
    /// The shared-memory ring holds something no correct peer writes.
    #[error("the shared-memory ring is corrupt: {0}")]
    Ring(String),
}

/// Why [`send`](super::Channel::send) (or another send operation) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Non-blocking mode (or `try_send`) and the peer has not drained enough: nothing was sent.
    /// Retry when the channel's send-readiness descriptor is writable.
    #[error("the channel is full and would block; nothing was sent, retry when it is writable")]
    WouldBlock,
    /// A send with a timeout found no room in time; nothing of the message was sent.
    #[error("timed out waiting for room in the channel; nothing was sent")]
    TimedOut,
    /// This side already called [`close`](super::Channel::close).
    #[error("this side closed the channel; open a new channel to send more")]
    Closed,
    /// The peer's process exited or it dropped its end of the channel.
    #[error(
        "the peer is gone (its process exited or it dropped its end); nothing more can be sent"
    )]
    PeerGone,
    /// The message is longer than the channel accepts.
    #[error(
        "a message of {len} bytes exceeds this channel's limit of {max} bytes; raise \
         ChannelOptions::max_message_size on both sides, or put the data in a shared-memory arena \
         and send a handle"
    )]
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The channel's limit.
        max: usize,
    },
    /// More descriptors than one message can carry.
    #[error(
        "{count} file descriptors attached to one message, at most {max} fit; spread them over \
         several messages"
    )]
    TooManyFds {
        /// How many were attached.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// This transport carries no file descriptors.
    #[error(
        "the POSIX mq transport carries no file descriptors; use the socket or ring transport to \
         send descriptors"
    )]
    FdsUnsupported,
    /// The peer broke the protocol in memory both sides share (a misbehaving or malicious peer,
    /// not an OS failure); the channel is unusable from now on.
    #[error(
        "the peer corrupted the channel's shared state, the channel is now unusable: {0}; drop \
         it, and distrust the peer"
    )]
    Corrupt(Corruption),
    /// [`send_channel`](super::Channel::send_channel) or [`into_fds`](super::Channel::into_fds)
    /// of a ring channel that was already used: its ring sides belong to this process now, and
    /// giving them up would close the rings for the peer. Nothing was sent.
    #[error(
        "a ring channel can be handed over only before its first send or receive; hand it over \
         first, or create a new pair for the other process"
    )]
    NotTransferable,
    /// Taking this end's side of the shared-memory ring failed (see the cause).
    #[error("taking this end's side of the shared-memory ring failed: {0}")]
    Ring(#[source] RingOpenError),
    /// An earlier error left the channel in an unknown state.
    #[error(
        "the channel is broken by an earlier error (see the first error it returned); drop it and \
         open a new one"
    )]
    Poisoned,
    /// The operating system refused an operation.
    #[error("{op} failed: {source}")]
    Io {
        /// What flowipc was doing.
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// Why [`recv`](super::Channel::recv) (or another receive operation) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Non-blocking mode (or `try_recv`) and no complete message is there yet. Retry when the
    /// channel's descriptor ([`AsFd`](std::os::fd::AsFd)) is readable.
    #[error("no message is ready yet; retry when the channel is readable")]
    WouldBlock,
    /// [`recv_timeout`](super::Channel::recv_timeout) waited the whole timeout for nothing.
    #[error("timed out waiting for a message")]
    TimedOut,
    /// The peer closed the channel in an orderly way and every message it sent before has been
    /// received.
    #[error("the peer closed the channel; every message it sent has been received")]
    Closed,
    /// The peer's process exited, or it dropped its end without closing, and everything it sent
    /// has been received.
    #[error("the peer is gone (its process exited or it dropped its end without closing)")]
    PeerGone,
    /// The peer sent something invalid. The channel is poisoned; descriptors that came with it
    /// were closed.
    #[error("the peer sent a corrupt message, the channel is now unusable: {0}")]
    Corrupt(#[from] Corruption),
    /// The next message carries a channel ([`send_channel`](super::Channel::send_channel)); it
    /// stays queued: take it with [`recv_channel`](super::Channel::recv_channel).
    #[error("the next message carries a channel; take it with recv_channel (it is still queued)")]
    ChannelMessage,
    /// [`recv_channel`](super::Channel::recv_channel) found an ordinary message; it stays queued:
    /// the next [`recv`](super::Channel::recv) returns it.
    #[error("the next message is not a channel; it is still queued for recv")]
    NotAChannel,
    /// Taking this end's side of the shared-memory ring failed (see the cause).
    #[error("taking this end's side of the shared-memory ring failed: {0}")]
    Ring(#[source] RingOpenError),
    /// An earlier error left the channel in an unknown state.
    #[error(
        "the channel is broken by an earlier error (see the first error it returned); drop it and \
         open a new one"
    )]
    Poisoned,
    /// The operating system refused an operation.
    #[error("{op} failed: {source}")]
    Io {
        /// What flowipc was doing.
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// Why creating a channel (or re-creating one from descriptors) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The kernel's POSIX message-queue limits are exhausted.
    #[error(
        "POSIX mq limit reached ({source}): close other mq channels, raise \
         /proc/sys/fs/mqueue/queues_max or the per-user RLIMIT_MSGQUEUE (`ulimit -q`; each queue \
         costs msg_max x msgsize bytes of it, see /proc/sys/fs/mqueue/msg_max and msgsize_max), \
         or use the socket or ring transport"
    )]
    MqLimit {
        /// The system error (`EMFILE`, `ENOSPC`, `ENFILE` or `EINVAL`).
        #[source]
        source: io::Error,
    },
    /// The descriptors handed to `from_fds` do not make up a channel of that kind.
    #[error("these descriptors do not make up a {kind} channel: {reason}")]
    BadFds {
        /// The transport that was asked for.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The options are not usable.
    #[error("invalid channel options: {0}")]
    BadOptions(String),
    /// Creating or opening a shared-memory ring failed (see the cause).
    #[error("setting up the shared-memory ring failed: {0}")]
    Ring(#[from] RingOpenError),
    /// An async channel was asked for outside a tokio runtime with IO enabled.
    #[error(
        "into_async needs a tokio runtime with IO enabled: call it inside the runtime (from an \
         async fn it runs, or after `Runtime::enter`), built with `enable_io()` or `enable_all()`"
    )]
    NoRuntime,
    /// The operating system refused an operation.
    #[error("{op} failed: {source}")]
    Io {
        /// What flowipc was doing.
        op: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.raw_os_error())
}

impl SendError {
    pub(crate) fn os(op: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => SendError::PeerGone,
            _ => SendError::Io {
                op,
                source: io(errno),
            },
        }
    }
}

impl RecvError {
    pub(crate) fn os(op: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::CONNRESET | Errno::PIPE | Errno::NOTCONN => RecvError::PeerGone,
            _ => RecvError::Io {
                op,
                source: io(errno),
            },
        }
    }
}

impl OpenError {
    pub(crate) fn os(op: &'static str, errno: Errno) -> Self {
        OpenError::Io {
            op,
            source: io(errno),
        }
    }
}
