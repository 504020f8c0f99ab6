//! The crate-wide [`Error`] and its per-operation parts.
//!
//! Each operation returns its own small error type ([`SendError`], [`RecvError`], [`OpenError`],
//! [`RingSendError`], [`ArenaError`], ...), so a caller can match exactly the cases that operation
//! has. Every public error type of the crate converts into [`Error`] with `?`, for code that just
//! wants to propagate. Every message says what the user can do about it where that is knowable.

pub use crate::arena::{AllocError, ArenaError, BlockError, HandleDecodeError, InitError};
pub use crate::channel::{Corruption, OpenError, RecvError, SendError};
pub use crate::raw::RegionError;
pub use crate::ring::{RingOpenError, RingRecvError, RingSendError};

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
    /// Sending on a bare ring failed.
    #[error(transparent)]
    RingSend(#[from] RingSendError),
    /// Receiving from a bare ring failed.
    #[error(transparent)]
    RingRecv(#[from] RingRecvError),
    /// Creating or opening a bare ring failed.
    #[error(transparent)]
    RingOpen(#[from] RingOpenError),
    /// A shared-memory arena or lend pool operation failed.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// Creating or mapping a shared-memory region failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A session operation failed.
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// A native shared-memory structure operation failed.
    #[error(transparent)]
    Native(#[from] crate::native::NativeError),
}

/// The core allocator's errors arrive wrapped as an [`ArenaError`].
macro_rules! via_arena {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Arena(ArenaError::from(e))
            }
        }
    )*};
}
via_arena!(AllocError, BlockError, HandleDecodeError, InitError);

impl From<flowipc_core::ring::AttachError> for Error {
    fn from(e: flowipc_core::ring::AttachError) -> Self {
        Error::RingOpen(RingOpenError::Attach(e))
    }
}

impl Error {
    /// The peer's process exited or it dropped its end without closing: nothing more will come.
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::PeerGone)
                | Error::Recv(RecvError::PeerGone)
                | Error::RingSend(RingSendError::PeerGone)
                | Error::RingRecv(RingRecvError::PeerGone)
                | Error::Session(crate::session::SessionError::PeerGone)
                | Error::Session(crate::session::SessionError::Send(SendError::PeerGone))
                | Error::Session(crate::session::SessionError::Recv(RecvError::PeerGone))
        ) || matches!(self, Error::Structured(e) if e.is_peer_gone())
    }

    /// The channel was closed in an orderly way (by the peer for a receive, by this side for a
    /// send).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::Closed)
                | Error::Recv(RecvError::Closed)
                | Error::RingSend(RingSendError::Closed)
                | Error::RingRecv(RingRecvError::Closed)
                | Error::Structured(crate::structured::StructuredError::Closed)
                | Error::Session(crate::session::SessionError::Closed)
        )
    }

    /// The operation would have blocked (non-blocking mode or `try_*`); retry when ready.
    pub fn is_would_block(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::WouldBlock)
                | Error::Recv(RecvError::WouldBlock)
                | Error::RingSend(RingSendError::WouldBlock)
                | Error::RingRecv(RingRecvError::WouldBlock)
                | Error::Structured(crate::structured::StructuredError::WouldBlock)
        )
    }

    /// The peer broke the protocol in shared memory or on the wire: distrust it. (An I/O failure
    /// of this process's own system calls is not corruption.)
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::Corrupt(_))
                | Error::Recv(RecvError::Corrupt(_))
                | Error::RingSend(RingSendError::Corrupt)
                | Error::RingRecv(RingRecvError::Corrupt)
                | Error::Structured(crate::structured::StructuredError::Corrupt { .. })
        )
    }

    /// A deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Send(SendError::TimedOut)
                | Error::Recv(RecvError::TimedOut)
                | Error::RingSend(RingSendError::Timeout)
                | Error::RingRecv(RingRecvError::Timeout)
                | Error::Structured(crate::structured::StructuredError::TimedOut)
                | Error::Session(crate::session::SessionError::TimedOut(_))
        )
    }
}

/// `Result` with flowipc's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every public error type converts with `?` (this fails to compile otherwise).
    #[test]
    fn every_public_error_converts() {
        fn conv<E: Into<Error>>(e: E) -> Error {
            e.into()
        }
        assert!(conv(SendError::PeerGone).is_peer_gone());
        assert!(conv(RecvError::TimedOut).is_timeout());
        assert!(conv(RingSendError::Corrupt).is_corrupt());
        assert!(conv(RingRecvError::WouldBlock).is_would_block());
        assert!(conv(RingOpenError::RoleTaken(crate::ring::Role::Sender))
            .to_string()
            .contains("already holds"));
        assert!(matches!(conv(RegionError::NotSealed), Error::Region(_)));
        assert!(matches!(
            conv(ArenaError::NotOwner),
            Error::Arena(ArenaError::NotOwner)
        ));
        assert!(matches!(
            conv(flowipc_core::ring::AttachError::BadMagic),
            Error::RingOpen(_)
        ));
        let _ = conv(OpenError::BadOptions("x".into()));
    }
}
