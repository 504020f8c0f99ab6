//! A value padded and aligned to a cache-line pair, so that two of them never share a line.
//!
//! On x86-64 the spatial prefetcher pulls cache lines in pairs, so false sharing shows up between
//! adjacent 64-byte lines; 128 bytes keeps the producer and consumer positions apart (as crossbeam does).
//! Other targets get the same 128 bytes: it wastes a little memory and is never wrong.

use core::fmt;
use core::ops::{Deref, DerefMut};

/// Pads and aligns a value to 128 bytes.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(128))]
pub struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Pads `value`.
    pub const fn new(value: T) -> Self {
        Self { value }
    }

    /// Returns the inner value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for CachePadded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CachePadded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePadded")
            .field("value", &self.value)
            .finish()
    }
}

static_assertions::assert_eq_size!(CachePadded<u64>, [u8; 128]);
static_assertions::const_assert_eq!(core::mem::align_of::<CachePadded<u64>>(), 128);
