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
//! - [`native`]: vectors, strings, boxes and hash maps built in a pool with familiar methods,
//!   nested through offset links, lent to the peer as one handle and read there in place through
//!   views that check every offset, length and chain ([`native::ShmVec`], [`native::VecRef`]).
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

//!
//! # Descriptors a peer holds
//!
//! A peer attacks through the descriptors it shares as well as through bytes: file status flags
//! such as `O_NONBLOCK` live in the open file description, which both processes share; a counter
//! can be saturated; a memfd can be reopened read-write through `/proc/self/fd/N`; a socket can be
//! shut down from the other end. The process that created a pair may also have kept duplicates
//! of the end it handed over. No flowipc call depends on state a peer can change through a
//! descriptor. Every descriptor flowipc hands to a peer, what the peer can do with it, and why
//! that cannot hang, crash or corrupt this side (later transports and sessions are held to the
//! same table; `safe/tests/hostile_peer.rs` runs the attacks with real processes):
//!
//! | descriptor | what the peer can do | why it is harmless |
//! | --- | --- | --- |
//! | ring memfd (both sides map it read-write) | write any bytes; `ftruncate` / grow; punch holes; add seals; flip flags | Sealed `F_SEAL_SHRINK \| F_SEAL_GROW \| F_SEAL_SEAL` at creation and refused without those seals, so the size never changes (no `SIGBUS`) and no seal can be added; holes read as zeros, and every value read from the ring is validated (`Corrupt`, never UB). Flags do not matter to `mmap`. |
//! | classic arena memfd (both map it read-write) | the same | The same seals; every header, offset and generation read from the arena is validated. |
//! | lend pool memfd, core or jemalloc (borrowers get a read-only descriptor) | reopen `/proc/self/fd/N` read-write, then `mmap` writable, `write(2)`, punch holes; `ftruncate` | The owner seals `F_SEAL_FUTURE_WRITE \| F_SEAL_SEAL` right after mapping it: every writable route fails with `EPERM`, and the size seals stop resizing. Test: `*_lend_pool_is_read_only_for_borrowers`. |
//! | lend return ring memfd (borrower produces, owner consumes) | as a ring memfd | As a ring memfd; a returned handle is checked against the owner's record of what it lent (`bogus_returns` counts the rest). |
//! | ring doorbells (one socket pair per ring, each side holds its own end) | clear `O_NONBLOCK`; fill the buffer; shut down or close its end; shrink buffers; attach descriptors | Rung and drained with `MSG_DONTWAIT` per call: a full buffer means a wake-up is already pending, never a block. A hung-up doorbell ends an async wait with `PeerGone` and makes a sync waiter sleep on the futex instead (no spin). Descriptors attached to doorbell bytes are closed by the kernel (no control buffer). An eventfd could be jammed here (no per-call non-blocking write exists for it), which is why doorbells replaced eventfds. Tests: `ring_wakeup_descriptors_cannot_be_jammed`, `async_ring_survives_jammed_and_hung_up_doorbells`. |
//! | companion socket of a ring, socket channel | clear `O_NONBLOCK`; stop reading; shut down; send forged bytes or descriptors | Every call passes `MSG_DONTWAIT`; a full socket is backpressure with a deadline; a hang-up is `PeerGone` (the peer watcher raises an alarm that every call reads); forged frames are `Corrupt`, and descriptors beyond what a frame declares are closed. |
//! | POSIX mq descriptors (the creator may keep duplicates of both queues) | clear `O_NONBLOCK` (`mq_setattr`); fill or drain a queue | No flag is set or relied on: every queue call is `mq_timedsend` / `mq_timedreceive` with a deadline that has passed, so it never blocks; blocking calls wait in `poll` beside the companion socket. Draining our queue equals not sending. Test: `mq_peer_cannot_make_calls_block_by_clearing_nonblock`. |
//! | session rendezvous socket (a Unix socket in a directory of mode 0700/0750) | connect and send anything; squat the path | The server decides from kernel facts (SO_PEERCRED, the executable pinned through SO_PEERPIDFD) before it reads a byte; the handshake parser is total and fuzzed (`session_handshake`); a squatter fails the client's checks of the directory's owner and mode and of the server's credentials. |
//! | a session's socket (handshake, then channel requests) | send forged requests or descriptors; stop reading; shut down | Every request is bounded (at most 64 pending) and parsed by the same total parser; a hang-up ends the session with `PeerGone`; channels it hands over are the channel kinds above, with their own rows. |
//! | (not handed over) the peer watcher's eventfd, pidfds, the rendezvous lock file | - | Private to this process (the lock file is `flock`ed, never read for trust). |
//!
//! A dead peer is noticed by every call: the watcher's alarm is read on each send and on each
//! receive that finds nothing (tests `*_send_to_dead_peer_fails_promptly`: the first send after
//! the peer was reaped fails, tens of microseconds later).

#![deny(unsafe_code)]

pub mod arena;
pub mod channel;
pub mod error;
pub mod native;
pub mod raw;
pub mod ring;
pub mod session;
pub mod structured;
mod watch;

#[cfg(feature = "tokio")]
pub use channel::AsyncChannel;
pub use channel::{Channel, ChannelOptions, Message};
pub use error::{Error, Result};
pub use session::{Session, SessionError, SessionServer};
#[cfg(feature = "tokio")]
pub use structured::AsyncStructuredChannel;
pub use structured::{MsgIn, MsgOut, StructuredChannel, StructuredError};

/// The README's examples, compiled and run as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
