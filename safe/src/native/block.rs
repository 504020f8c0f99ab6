//! The one unsafe part of the native structures: a writable window on a block this process owns.
//!
//! A [`BlockBuf`] holds an [`ArenaObject`] and the pointer to its bytes in this process's writable
//! mapping ([`ArenaObject::as_mut_ptr`], valid while the object lives, which the buffer keeps
//! alive). Every access is bounds-checked against the object's length, moves bytes by copying
//! through raw pointers and never forms a Rust reference over the block, so a classic-arena peer
//! writing the same bytes concurrently can make a value wrong, never undefined behaviour (the
//! crate's model for shared memory, see `raw::arena`). In a lend pool no other process can write
//! at all (the borrowers' mapping is read-only and the memfd sealed against writable mappings).

#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::arena::{ArenaError, ArenaObject, BlockError};

static_assertions::assert_impl_all!(ArenaObject: Send, Sync);

/// A block of this process's pool with a cached pointer for fast copies in and out.
pub(crate) struct BlockBuf {
    ptr: NonNull<u8>,
    len: usize,
    obj: ArenaObject,
}

// SAFETY: the pointer is only a cache of `obj.as_mut_ptr()`, used only through `&self`/`&mut self`
// methods that copy bytes; `ArenaObject` itself is `Send` and `Sync`, and the mapping it keeps
// alive is process-wide.
unsafe impl Send for BlockBuf {}
// SAFETY: as above; `&self` methods only copy bytes out.
unsafe impl Sync for BlockBuf {}

impl BlockBuf {
    pub(crate) fn new(obj: ArenaObject) -> Result<Self, ArenaError> {
        let ptr = obj.as_mut_ptr()?;
        Ok(BlockBuf {
            ptr,
            len: obj.len(),
            obj,
        })
    }

    pub(crate) fn object(&self) -> &ArenaObject {
        &self.obj
    }

    pub(crate) fn into_object(self) -> ArenaObject {
        self.obj
    }

    /// Bytes of the block.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn check(&self, at: usize, n: usize) -> Result<(), ArenaError> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BlockError::TooLong.into()),
        }
    }

    /// Copies `data` to byte `at`.
    #[inline]
    pub(crate) fn write(&mut self, at: usize, data: &[u8]) -> Result<(), ArenaError> {
        self.check(at, data.len())?;
        // SAFETY: `check` keeps `[at, at + len)` inside the object's bytes of the writable mapping
        // that `obj` keeps alive; `data` is this process's memory, not the block. No reference.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), data.len())
        };
        Ok(())
    }

    /// Copies bytes from byte `at` into `buf`.
    #[inline]
    pub(crate) fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), ArenaError> {
        self.check(at, buf.len())?;
        // SAFETY: as in `write`, the source lies inside the object's bytes; `buf` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies the first `n` bytes of `from` to the start of this block.
    pub(crate) fn copy_from(&mut self, from: &BlockBuf, n: usize) -> Result<(), ArenaError> {
        from.check(0, n)?;
        self.check(0, n)?;
        // SAFETY: both ranges were checked against their blocks; two live objects are two
        // different blocks, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(from.ptr.as_ptr(), self.ptr.as_ptr(), n) };
        Ok(())
    }

    /// Zeroes bytes `[at, at + n)`.
    pub(crate) fn zero(&mut self, at: usize, n: usize) -> Result<(), ArenaError> {
        self.check(at, n)?;
        // SAFETY: the range was checked against the block, as in `write`.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(at), 0, n) };
        Ok(())
    }
}
