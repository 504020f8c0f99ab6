//! flowipc: fast, safe inter-process communication on Linux.
//!
//! Two programs open a session and get channels; over them they exchange binary blobs, file descriptors
//! and Cap'n Proto messages, with zero copy through shared memory. This crate is the safe layer that
//! applications use; `flowipc-core` (lock-free structures) and `flowipc-sys` (raw Linux calls) sit
//! beneath it.
//!
//! The crate denies `unsafe` code; the few modules that must map memory or attach core structures opt
//! back in and say why at their top.
//!
//! # A tour
//!
//! - [`channel`]: what applications hold. A [`Channel`] is a bidirectional pipe of messages (any
//!   size, boundaries kept) with file descriptors attached, over a Unix socket, a pair of POSIX
//!   message queues, or two shared-memory rings; sync calls, and [`AsyncChannel`] for tokio. One end
//!   travels to another process as descriptors ([`Channel::into_fds`], [`Channel::send_channel`]).
//! - [`ring`]: the one-way shared-memory ring under the ring channel, for services that want the bare
//!   SPSC ring (in-place [`write_chunk`](ring::RingSender::write_chunk), wait policies).
//! - [`arena`]: shared-memory pools. Objects are allocated in a sealed memfd and cross a channel as a
//!   32-byte [`ArenaHandle`](arena::ArenaHandle) that the receiver validates before it reads.
//! - [`structured`]: Cap'n Proto messages of your schema over any channel: notifications,
//!   requests matched to their responses (sync, callback, async, multi-response), descriptors
//!   attached ([`StructuredChannel`], [`AsyncStructuredChannel`]).
//! - [`error`]: per-operation errors that convert into [`Error`]; each says what to do about it.
//!
//! ```
//! use flowipc::channel::Channel;
//!
//! // Two ends of a shared-memory channel; here both stay in this process.
//! let (mut a, mut b) = Channel::ring_pair()?;
//! a.send(b"ping")?;
//! let mut buf = Vec::new();
//! b.recv(&mut buf)?;
//! assert_eq!(buf, b"ping");
//!
//! // A descriptor travels beside a message and arrives close-on-exec.
//! let (mut x, mut y) = Channel::socket_pair()?;
//! let (r, _w) = flowipc_sys::pipe::pipe().map_err(std::io::Error::from)?;
//! x.send_with_fds(b"a pipe", &[std::os::fd::AsFd::as_fd(&r)])?;
//! let meta = y.recv(&mut buf)?;
//! assert_eq!((buf.as_slice(), meta.fds.len()), (&b"a pipe"[..], 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod arena;
pub mod channel;
pub mod error;
pub mod ring;
pub mod shm;
pub mod structured;
pub mod wait;
mod watch;

#[cfg(feature = "tokio")]
pub use channel::AsyncChannel;
pub use channel::{Channel, ChannelOptions, Message};
pub use error::{Error, Result};
#[cfg(feature = "tokio")]
pub use structured::AsyncStructuredChannel;
pub use structured::{MsgIn, MsgOut, StructuredChannel, StructuredError};

/// The README's examples, compiled and run as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
