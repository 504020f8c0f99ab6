//! Raw Linux calls for flowipc.
//!
//! This is the only crate of flowipc that makes system calls. Each function is a thin, typed wrapper
//! named after its syscall, built on [rustix] where rustix has the call and on a small private shim
//! where it does not (POSIX message queues).

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "std")]
extern crate std;

pub use rustix::io::Errno;
