//! The lock-free core of flowipc: a single-producer single-consumer ring of variable-length frames and
//! an arena allocator, both laid out in memory the caller hands in, plus the wait/notify traits that a
//! higher crate implements with futex or eventfd.
//!
//! This crate is `#![no_std]` and makes no system calls, so loom and miri can run it alone. Every value
//! it reads from shared memory is treated as a claim by a possibly hostile peer and checked before use.

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(any(feature = "alloc", flowipc_loom, test))]
extern crate alloc;
#[cfg(any(flowipc_loom, test))]
extern crate std;

pub mod arena;
pub mod cache_padded;
pub mod ring;
pub mod sync;
pub mod wait;

pub use cache_padded::CachePadded;
