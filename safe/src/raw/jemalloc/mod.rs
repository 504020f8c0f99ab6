//! The jemalloc lend provider: a jemalloc arena whose extents come from one sealed memfd.
//!
//! The owner creates an owner-only region, writes a pool header at its start and creates a
//! jemalloc arena over the rest, whose extents its extent hooks (`hooks`) carve with a bump
//! pointer. Objects are allocated and freed by the owner only (`owner`), mostly through a front
//! cache per thread and pool (`cache`); borrowers map the pool read-only and check every handle
//! against the object header the owner wrote ([`reader`]). The bytes both sides agree on are in
//! [`layout`].
//!
//! | module | what | needs jemalloc |
//! | --- | --- | --- |
//! | [`layout`] | `#[repr(C)]` pool and object headers, tags and colours (offsets checked at compile time) | no |
//! | [`reader`] | [`JeReader`], the borrower's checked, copying view | no |
//! | `hooks` | the extent hooks and the `pthread_atfork` handlers (C callbacks) | yes |
//! | `owner` | `JePool`: create, alloc / free fast and slow paths, drop | yes |
//! | `cache` | the per-thread front cache of small blocks | yes |
//!
//! [`layout`] and [`reader`] build without the `jemalloc` feature: a borrower needs no jemalloc
//! to read a pool, and a fuzz target can drive the reader alone.
//!
//! Part of `raw`, the module that may use `unsafe`: the hooks are C callbacks over raw memory, and
//! headers are atomics laid over the mapping.

#[cfg(feature = "jemalloc")]
mod cache;
#[cfg(feature = "jemalloc")]
mod hooks;
pub(crate) mod layout;
#[cfg(feature = "jemalloc")]
mod owner;
pub(crate) mod reader;

#[cfg(feature = "jemalloc")]
pub(crate) use owner::JePool;
pub(crate) use reader::JeReader;
