//! The crate-wide [`Error`] and its per-operation parts.
//!
//! Each operation returns its own small error type ([`SendError`], [`RecvError`], [`OpenError`]), so
//! a caller can match exactly the cases that operation has. All of them convert into [`Error`] with
//! `?`, for code that just wants to propagate. Every message says what the user can do about it
//! where that is knowable.

pub use crate::channel::{Corruption, OpenError, RecvError, SendError};

/// Any error flowipc returns.
///
/// Use the predicates ([`is_peer_gone`](Error::is_peer_gone), [`is_closed`](Error::is_closed),
/// [`is_would_block`](Error::is_would_block)) to react to the common cases without matching each
/// operation's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Sending a message failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Receiving a message failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Creating or re-creating a channel failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A structured-channel (Cap'n Proto) operation failed.
    #[error(transparent)]
    Structured(#[from] crate::structured::StructuredError),
}

impl Error {
    /// The peer's process exited or it dropped its end without closing: nothing more will come.
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::PeerGone) | Error::Recv(RecvError::PeerGone)
        ) || matches!(self, Error::Structured(e) if e.is_peer_gone())
    }

    /// The channel was closed in an orderly way (by the peer for a receive, by this side for a
    /// send).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::Closed) | Error::Recv(RecvError::Closed)
        )
    }

    /// The operation would have blocked (non-blocking mode or `try_*`); retry when ready.
    pub fn is_would_block(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::WouldBlock) | Error::Recv(RecvError::WouldBlock)
        )
    }
}

/// `Result` with flowipc's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
