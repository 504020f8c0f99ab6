//! A borrower's read-only view of a jemalloc lend pool: checks a handle against the object header
//! the owner wrote and copies the object's bytes out.
//!
//! # Hostile owner
//!
//! The borrower maps the pool `PROT_READ` (the memfd is sealed owner-only), so it cannot corrupt
//! the pool, but it cannot trust it either: the owner may write any header at any time. Every
//! value read is a claim checked before use: the pool header's magic, version and length (against
//! the mapping's, which [`SharedRegion::from_fd`] took from `fstat` of a size-sealed memfd), and
//! for each handle the offset (past the pool header, 16-aligned, `offset + len` inside the
//! mapping), the header's tag ([`tag_ok`]), state (allocated, at the handle's generation) and
//! length (at least the handle's). A failed check is an error, never undefined behaviour, a panic
//! or a loop; nothing is allocated. The object's bytes are only copied (`copy_nonoverlapping` into
//! the caller's buffer), never exposed as a reference, since the owner may change them meanwhile.
//!
//! # Synchronisation
//!
//! Header fields are loaded Relaxed; two Acquire fences order what follows them (SYNC POINTs
//! below): in [`JeReader::open`], after the magic, paired with the owner's Release store of the
//! magic; in [`JeReader::check`], after the header check, paired with the owner's writes before it
//! published the handle through the channel that carried it.
//!
//! Compiled with or without the `jemalloc` feature (it needs [`layout`](super::layout), not jemalloc),
//! so borrowers need not build jemalloc and a fuzz target can drive it alone.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use flowipc_core::arena::layout::{st_field, st_gen, st_is_alloc};
use flowipc_core::arena::{ArenaHandle, BlockError, BlockInfo, InitError};

use super::layout::{
    tag_ok, ObjHeader, PoolHeader, OBJ_HEADER, POOL_HEADER, POOL_MAGIC, POOL_VERSION,
};
use crate::raw::arena::copy_from_handle;
use crate::raw::{PoolError, SharedRegion};

/// A borrower's read-only view of a jemalloc lend pool.
pub(crate) struct JeReader {
    region: SharedRegion,
    pool_id: u64,
}

impl JeReader {
    /// Whether `region` (mapped, possibly read-only) starts with the jemalloc pool magic.
    pub(crate) fn is_je_pool(region: &SharedRegion) -> bool {
        if region.len() < POOL_HEADER {
            return false;
        }
        // SAFETY: page-aligned, at least POOL_HEADER bytes; Relaxed atomic loads are sound on
        // read-only memory.
        let ph = unsafe { &*region.as_ptr().cast::<PoolHeader>() };
        ph.magic.load(Ordering::Relaxed) == POOL_MAGIC
    }

    /// Attaches to the jemalloc pool in `region` (already seal-checked by
    /// [`SharedRegion::from_fd`]) after checking its pool header.
    pub(crate) fn open(region: SharedRegion) -> Result<Self, PoolError> {
        if !Self::is_je_pool(&region) {
            return Err(InitError::BadMagic.into());
        }
        // SYNC POINT: pairs with the Release store of the magic in `JePool::create`.
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: as in `is_je_pool`.
        let ph = unsafe { &*region.as_ptr().cast::<PoolHeader>() };
        if ph.version.load(Ordering::Relaxed) != POOL_VERSION {
            return Err(InitError::BadVersion.into());
        }
        if ph.len.load(Ordering::Relaxed) != region.len() as u64 {
            return Err(InitError::Corrupt.into());
        }
        let pool_id = ph.pool_id.load(Ordering::Relaxed);
        Ok(JeReader { region, pool_id })
    }

    /// The pool id read from the header when opened (later changes by the owner are not followed).
    pub(crate) fn pool_tag(&self) -> u64 {
        self.pool_id
    }

    /// Checks a handle against the object header: in range, live at that generation, length fits.
    pub(crate) fn check(&self, h: &ArenaHandle) -> Result<BlockInfo, PoolError> {
        let off = usize::try_from(h.offset).map_err(|_| BlockError::OutOfRange)?;
        if off < POOL_HEADER + OBJ_HEADER
            || off % 16 != 0
            || h.offset.saturating_add(h.len) > self.region.len() as u64
        {
            return Err(BlockError::OutOfRange.into());
        }
        // SAFETY: `off - 16 .. off` is inside the mapping, 16-aligned; Relaxed loads only.
        let hdr = unsafe {
            &*(self
                .region
                .as_ptr()
                .add(off - OBJ_HEADER)
                .cast::<ObjHeader>())
        };
        let s = hdr.state.load(Ordering::Relaxed);
        if !tag_ok(hdr.tag.load(Ordering::Relaxed)) || !st_is_alloc(s) || st_gen(s) != h.generation
        {
            return Err(BlockError::StaleGeneration.into());
        }
        let cap = u64::from(hdr.len.load(Ordering::Relaxed));
        if h.len > cap {
            return Err(BlockError::TooLong.into());
        }
        // SYNC POINT: pairs with the owner's writes before it published the handle (through the
        // channel that carried it); orders our copy after the header check.
        std::sync::atomic::fence(Ordering::Acquire);
        Ok(BlockInfo {
            generation: h.generation,
            capacity: cap,
            refcount: st_field(s),
        })
    }

    /// Checks a handle and returns a pointer to its `h.len` bytes (inside the mapping: `check`
    /// bounded `h.offset + h.len` by the mapping's length).
    pub(crate) fn checked_ptr(&self, h: &ArenaHandle) -> Result<NonNull<u8>, PoolError> {
        self.check(h)?;
        NonNull::new(
            self.region
                .as_ptr()
                .wrapping_add(h.offset as usize)
                .cast_mut(),
        )
        .ok_or_else(|| BlockError::OutOfRange.into())
    }

    /// Checks a handle and copies its bytes from `at` into `buf`.
    pub(crate) fn read_handle(
        &self,
        h: &ArenaHandle,
        at: u64,
        buf: &mut [u8],
    ) -> Result<BlockInfo, PoolError> {
        let info = self.check(h)?;
        // `check` bounded `h.offset + h.len` by the mapping's length and `copy_from_handle` keeps
        // the copy within `h.len`, so the pointer is to mapped bytes; the owner may write them
        // concurrently, so they are only copied, never referenced.
        let base = self.region.as_ptr();
        copy_from_handle(h, at, buf, |o, _| {
            NonNull::new(base.wrapping_add(o.get() as usize).cast_mut())
        })?;
        Ok(info)
    }
}
