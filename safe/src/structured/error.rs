//! [`StructuredError`]: why a structured-channel operation failed, and what to do about it.

use crate::channel::{RecvError, SendError};

/// Why a structured-channel operation failed. Converts into [`crate::Error`] with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// No response came within the timeout. A response that arrives later is dropped and counted
    /// in [`StructuredStats::late_responses`](super::StructuredStats::late_responses).
    #[error(
        "no response within the timeout; a late response will be dropped and counted, so retry \
         with a longer timeout or check that the peer answers this request"
    )]
    TimedOut,
    /// No message is queued ([`try_recv`](super::StructuredChannel::try_recv)).
    #[error("no message is queued yet; retry later or wait with recv")]
    WouldBlock,
    /// The peer closed the channel in an orderly way; every message it sent has been delivered,
    /// and no response to a request still waiting will come.
    #[error("the peer closed the structured channel; no more messages or responses will come")]
    Closed,
    /// The peer's process exited or it dropped its end: every waiting request fails with this.
    #[error(
        "the peer is gone (its process exited or it dropped its end); every request still \
         waiting failed, open a new channel to go on"
    )]
    PeerGone,
    /// The peer sent a frame that is not a valid structured message (malformed envelope, bad
    /// segment table, ids out of order, a kind that makes no sense, a wrong descriptor count).
    /// The channel is poisoned: every later call fails with this reason.
    #[error(
        "the peer sent an invalid structured message ({reason}); the channel is unusable now, drop \
         it and distrust the peer"
    )]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// Reading a message's body failed: it is malformed, or reading it went past the traversal
    /// or nesting limit.
    #[error(
        "reading the message body failed: {0}; if the message is legitimately large or deep, \
         raise StructuredOptions::traversal_limit_words / nesting_limit"
    )]
    Decode(#[from] capnp::Error),
    /// The transport refused to send.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The transport failed to receive (other than an orderly close or the peer's death).
    #[error("receiving on the structured channel failed: {0}")]
    Recv(String),
    /// A zero-copy message did not fit in this side's lend pool: building it needed a segment of
    /// `needed` bytes that the pool could not give.
    #[error(
        "a zero-copy message needed a segment of {needed} bytes that the lend pool could not give \
         ({reason}); give the session larger pools (SessionOptions::arenas) or build smaller \
         messages"
    )]
    SharedMemory {
        /// Bytes of the segment that did not fit.
        needed: usize,
        /// What the pool said.
        reason: String,
    },
    /// Lending a zero-copy message's segments to the peer failed.
    #[error("lending a zero-copy message's segments to the peer failed: {0}")]
    Lend(#[source] crate::arena::ArenaError),
    /// The message cannot be sent this way (for example a response to a message of the peer's
    /// that was itself a response).
    #[error("{0}")]
    Usage(&'static str),
}

impl StructuredError {
    /// The peer's process exited or dropped its end.
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            StructuredError::PeerGone | StructuredError::Send(SendError::PeerGone)
        )
    }

    /// The wait ended without a response.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, StructuredError::TimedOut)
    }
}

/// How the receiving side of a structured channel ended; every waiter gets it as an error.
#[derive(Debug, Clone)]
pub(crate) enum End {
    Closed,
    PeerGone,
    Corrupt(String),
    Recv(String),
    /// This side dropped or closed the channel.
    Local,
}

impl End {
    pub(crate) fn from_recv(e: RecvError) -> End {
        match e {
            RecvError::Closed => End::Closed,
            RecvError::PeerGone => End::PeerGone,
            RecvError::Corrupt(c) => End::Corrupt(format!("transport: {c}")),
            other => End::Recv(other.to_string()),
        }
    }

    pub(crate) fn to_error(&self) -> StructuredError {
        match self {
            End::Closed => StructuredError::Closed,
            End::PeerGone => StructuredError::PeerGone,
            End::Corrupt(reason) => StructuredError::Corrupt {
                reason: reason.clone(),
            },
            End::Recv(s) => StructuredError::Recv(s.clone()),
            End::Local => StructuredError::Usage("this side closed the structured channel"),
        }
    }
}

/// Reading a body with capnp's own accessors gives `capnp::Error`; `?` takes it to
/// [`crate::Error`] as a [`StructuredError::Decode`].
impl From<capnp::Error> for crate::Error {
    fn from(e: capnp::Error) -> Self {
        crate::Error::Structured(StructuredError::Decode(e))
    }
}

/// A union variant or enum value this side's schema does not know (`which()`), as a
/// [`StructuredError::Decode`].
impl From<capnp::NotInSchema> for StructuredError {
    fn from(e: capnp::NotInSchema) -> Self {
        StructuredError::Decode(e.into())
    }
}

/// As for [`StructuredError`].
impl From<capnp::NotInSchema> for crate::Error {
    fn from(e: capnp::NotInSchema) -> Self {
        crate::Error::Structured(e.into())
    }
}
