//! The one place that names atomics and `UnsafeCell`.
//!
//! Everything else in this crate imports its synchronisation primitives from here, so the same
//! algorithms compile against `core` atomics normally and against loom's model-checked ones under
//! `--cfg flowipc_loom`.

#[cfg(not(flowipc_loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(flowipc_loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Spin-loop hint; under loom it yields so that the model explores the other thread.
#[inline]
pub fn spin_hint() {
    #[cfg(not(flowipc_loom))]
    core::hint::spin_loop();
    #[cfg(flowipc_loom)]
    loom::thread::yield_now();
}
