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

#[cfg(test)]
mod tests {
    use flowipc_core::arena::layout::{st_alloc, st_free};
    use flowipc_sys::mmap::Access;

    use super::super::layout::{tag_of, ObjHeader, PoolHeader, CLASS_LARGE, POOL_VERSION};
    use super::*;
    use crate::raw::Sharing;

    /// A forged pool of `len` bytes with its pool header written and no objects: the owner's
    /// writable region.
    fn forged(len: usize) -> SharedRegion {
        let w = SharedRegion::create(c"je-forged", len, Sharing::Shared).unwrap();
        // SAFETY: a fresh read-write mapping of at least `size_of::<PoolHeader>()` bytes (the
        // callers pass page multiples), page-aligned; atomics only.
        let ph = unsafe { &*w.as_mut_ptr().unwrap().cast::<PoolHeader>() };
        ph.version.store(POOL_VERSION, Ordering::Relaxed);
        ph.pool_id.store(7, Ordering::Relaxed);
        ph.len.store(len as u64, Ordering::Relaxed);
        ph.magic.store(POOL_MAGIC, Ordering::Release);
        w
    }

    /// Writes an object header for an object at `off` (the header is at `off - 16`).
    fn put(w: &SharedRegion, off: usize, state: u64, len: u32) {
        assert!(off >= OBJ_HEADER && off % 8 == 0 && off <= w.len());
        // SAFETY: `off - 16 .. off` is inside the writable mapping and 8-aligned; atomics only.
        let h = unsafe {
            &*w.as_mut_ptr()
                .unwrap()
                .add(off - OBJ_HEADER)
                .cast::<ObjHeader>()
        };
        h.state.store(state, Ordering::Relaxed);
        h.len.store(len, Ordering::Relaxed);
        h.tag.store(tag_of(0, CLASS_LARGE), Ordering::Relaxed);
    }

    /// A borrower's read-only view of `w`.
    fn reader(w: &SharedRegion) -> Result<JeReader, PoolError> {
        let fd = w.fd().try_clone_to_owned().unwrap();
        JeReader::open(SharedRegion::from_fd(fd, Access::ReadOnly).unwrap())
    }

    fn handle(offset: u64, len: u64, generation: u32) -> ArenaHandle {
        ArenaHandle {
            pool_id: 7,
            offset,
            len,
            generation,
            reserved: 0,
        }
    }

    fn out_of_range(r: Result<BlockInfo, PoolError>) -> bool {
        matches!(r, Err(PoolError::Block(BlockError::OutOfRange)))
    }

    /// A pool exactly one header long is a pool (with no room for objects); one byte of pool
    /// header short of that is not looked at.
    #[test]
    fn pool_header_at_its_edge() {
        let w = forged(POOL_HEADER);
        let r = reader(&w).unwrap();
        assert_eq!(r.pool_tag(), 7);
        assert!(out_of_range(r.check(&handle(POOL_HEADER as u64, 0, 0))));
        // A region shorter than the pool header is never read as one, whatever it holds.
        let short = SharedRegion::create(c"je-short", 64, Sharing::Shared).unwrap();
        // SAFETY: as in `forged`; 64 bytes hold the 32-byte header.
        let ph = unsafe { &*short.as_mut_ptr().unwrap().cast::<PoolHeader>() };
        ph.magic.store(POOL_MAGIC, Ordering::Release);
        assert!(!JeReader::is_je_pool(&short));
    }

    /// Each check of a handle at its edge: the first and last places an object can be, one
    /// alignment step off, one byte past the mapping, and a freed header at the right generation.
    #[test]
    fn handle_checks_at_their_edges() {
        const LEN: usize = 3 * 4096;
        let w = forged(LEN);
        let first = POOL_HEADER + OBJ_HEADER;
        let last_len = 4096 - OBJ_HEADER;
        let last = LEN - last_len;
        put(&w, first, st_alloc(5, 1), 64);
        put(&w, last, st_alloc(6, 1), last_len as u32);
        let r = reader(&w).unwrap();
        // The first object after the pool header, and one that ends where the mapping does.
        let info = r.check(&handle(first as u64, 64, 5)).unwrap();
        assert_eq!((info.capacity, info.refcount), (64, 1));
        assert!(r.check(&handle(last as u64, last_len as u64, 6)).is_ok());
        let mut buf = [1u8; 8];
        r.read_handle(
            &handle(last as u64, last_len as u64, 6),
            last_len as u64 - 8,
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf, [0; 8]);
        // Inside the pool header (whatever it holds there), off the 16-byte grid, or one byte
        // past the mapping: out of range before any header is read.
        for (off, len) in [
            (POOL_HEADER, 8),
            (POOL_HEADER + 8, 8),
            (first + 8, 8),
            (last, last_len + 1),
            (first, LEN),
        ] {
            assert!(
                out_of_range(r.check(&handle(off as u64, len as u64, 5))),
                "offset {off} len {len}"
            );
        }
        // Longer than the header's length but inside the mapping.
        assert!(matches!(
            r.check(&handle(first as u64, 72, 5)),
            Err(PoolError::Block(BlockError::TooLong))
        ));
        // Freed at the handle's generation, allocated at another, or not a header at all.
        put(&w, first, st_free(5, 0), 64);
        assert!(matches!(
            r.check(&handle(first as u64, 8, 5)),
            Err(PoolError::Block(BlockError::StaleGeneration))
        ));
        put(&w, first, st_alloc(4, 1), 64);
        assert!(matches!(
            r.check(&handle(first as u64, 8, 5)),
            Err(PoolError::Block(BlockError::StaleGeneration))
        ));
        put(&w, first, st_alloc(5, 1), 64);
        // SAFETY: as in `put`: the tag word of the first object's header.
        let tag = unsafe {
            &*w.as_mut_ptr()
                .unwrap()
                .add(first - 4)
                .cast::<std::sync::atomic::AtomicU32>()
        };
        tag.store(0, Ordering::Relaxed);
        assert!(matches!(
            r.check(&handle(first as u64, 8, 5)),
            Err(PoolError::Block(BlockError::StaleGeneration))
        ));
    }
}
