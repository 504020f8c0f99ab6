//! The transports under a [`Channel`](super::Channel): each moves whole messages (and descriptors)
//! in non-blocking steps, blocking inside a step only where its kernel object can do that without
//! depending on state the peer controls.
//!
//! - `socket`: a Unix stream socket; length-prefixed frames, descriptors by `SCM_RIGHTS`.
//! - `mq`: two POSIX message queues and a companion socket; messages split into chunks
//!   (`channel::framing`).
//! - `ring`: two shared-memory rings, a companion socket for descriptors and peer death, and a
//!   doorbell pair per ring for reactors.

pub(crate) mod mq;
pub(crate) mod ring;
pub(crate) mod socket;
