//! Raw Linux calls for flowipc.
//!
//! This is the only crate of flowipc that makes system calls. Each function is a thin, typed wrapper
//! named after its syscall, built on [rustix] where rustix has the call and on a small private shim
//! where it does not (POSIX message queues). Arguments are typed (`OwnedFd`/`BorrowedFd`, flag types)
//! and every call returns `Result<_, Errno>`.
//!
//! # Tour
//!
//! - [`memfd`]: anonymous shared-memory files, sized once and sealed so a peer cannot shrink them
//!   under a reader; [`memfd::reopen_read_only`] makes a descriptor a peer can only map read-only.
//! - [`mmap`]: [`mmap::Mapping`], a `MAP_SHARED` mapping that unmaps on drop and hands out raw
//!   pointers only, because the peer may write the memory at any time.
//! - [`socket`]: Unix stream socket pairs, `SCM_RIGHTS` descriptor passing (up to
//!   [`socket::MAX_FDS_PER_MESSAGE`] per message, received close-on-exec into a fixed-capacity
//!   [`socket::RecvFds`]), `SO_PEERCRED`, buffer sizes and `poll`.
//! - [`mq`]: POSIX message queues (rustix has none; the raw syscalls live in one private module).
//! - [`futex`]: wait/wake on an `AtomicU32`, shared between processes or private to one.
//! - [`wake`]: doorbells, the wake-up descriptors of async ring channels: socket ends rung and
//!   drained non-blocking per call, so a peer sharing them cannot make a call block.
//! - [`eventfd`], [`pipe`]: the other kernel wake-up and byte channels, used by benchmarks and the
//!   process-private peer watcher.
//! - [`process`]: `pidfd_open`, pids, CPU affinity, fork handlers (`pthread_atfork`) and a
//!   monotonic clock for benchmarks.
//! - [`fd`]: close-on-exec and non-blocking flags, `dup`.
//!
//! ```
//! use flowipc_sys::{memfd, mmap::{Access, Mapping}, AsFd};
//!
//! let fd = memfd::create_sealed(c"doc-region", 4096)?;
//! let map = Mapping::map(fd.as_fd(), 0, 4096, Access::ReadWrite)?;
//! let p = map.as_mut_ptr().expect("mapped read-write");
//! // SAFETY: `p` points to 4096 mapped, writable bytes owned by `map`, still alive here.
//! unsafe { p.write(42) };
//! assert!(memfd::set_size(fd.as_fd(), 0).is_err()); // sealed: cannot shrink
//! # Ok::<(), flowipc_sys::Errno>(())
//! ```
//!
//! The crate is `#![no_std]`; the `alloc` feature adds functions returning `Vec`, the `std` feature
//! (default) implies `alloc` and makes [`Errno`] a `std::error::Error` convertible into
//! `std::io::Error`, so `?` works in functions returning `std::io::Result`.

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("flowipc-sys supports Linux on x86-64 only");

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
pub use rustix::io::Errno;

/// The result type of every call in this crate: the value, or the `errno` the kernel returned.
pub type Result<T> = core::result::Result<T, Errno>;

pub mod eventfd;
pub mod fd;
pub mod futex;
pub mod memfd;
pub mod mmap;
pub mod mq;
pub mod pipe;
pub mod process;
pub mod session;
pub mod socket;
pub mod wake;

mod time;
