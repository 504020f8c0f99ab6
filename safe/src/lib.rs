//! flowipc: fast, safe inter-process communication on Linux.
//!
//! Two programs open a session and get channels; over them they exchange binary blobs, file descriptors
//! and Cap'n Proto messages, with zero copy through shared memory. This crate is the safe layer that
//! applications use; `flowipc-core` (lock-free structures) and `flowipc-sys` (raw Linux calls) sit
//! beneath it.
//!
//! The crate denies `unsafe` code; the few modules that must map memory or attach core structures opt
//! back in and say why at their top.

#![deny(unsafe_code)]

pub mod arena;
pub mod channel;
pub mod error;
pub mod ring;
pub mod shm;
pub mod wait;

#[cfg(feature = "tokio")]
pub use channel::AsyncChannel;
pub use channel::{Channel, ChannelOptions, Message};
pub use error::{Error, Result};
