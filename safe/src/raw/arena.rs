//! The unsafe half of the arenas: mapping the memfd, attaching `flowipc_core::arena` to it, and
//! copying bytes in and out of blocks.
//!
//! Part of `raw`, the one module that opts back into `unsafe` (the crate denies it), because
//! attaching a core arena to a mapping and copying through raw pointers cannot be expressed in safe
//! code. It upholds the core's contracts by keeping each [`SharedRegion`] in the same struct as the
//! arena attached to it (so the memory outlives every use), by bounds-checking every copy against
//! the block's validated capacity, and by never creating a Rust reference to bytes a peer can
//! write: data moves only by copying. Regions are created and their seals checked by
//! [`SharedRegion`] alone; errors are the raw layer's [`PoolError`].

use std::ffi::CStr;
use std::ptr::NonNull;

use flowipc_core::arena::{Arena, ArenaHandle, ArenaReader, BlockError, BlockInfo, Offset};
use flowipc_sys::mmap::Access;
use flowipc_sys::{BorrowedFd, OwnedFd};

use super::jemalloc::JeReader;
use super::{PoolError, RegionError, SharedRegion, Sharing};

/// The first byte of a region mapped read-write (as every region this process creates or opens
/// for writing is).
fn writable_base(region: &SharedRegion) -> Result<NonNull<u8>, RegionError> {
    region
        .as_mut_ptr()
        .and_then(NonNull::new)
        .ok_or(RegionError::BadSize(region.len() as u64))
}

/// Copies `len` bytes at `at` in the checked block out to `buf`.
fn copy_out(p: NonNull<u8>, buf: &mut [u8]) {
    // SAFETY: the caller derived `p` from `payload_ptr(.., buf.len())` (or, for a jemalloc pool,
    // from a range `JeReader::check` bounded), so the source is inside the mapping; `buf` is our own memory and cannot overlap the mapping. The peer may write the source
    // concurrently: we copy bytes (any value is fine) and never form a reference to them.
    unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), buf.as_mut_ptr(), buf.len()) }
}

/// An arena in a read-write mapping (classic pools and the owner of a lend pool).
pub(crate) struct MappedArena {
    // Field order: the arena (which holds pointers into the mapping) is dropped before the region.
    arena: Arena,
    region: SharedRegion,
    /// The pool id: chosen at creation, or read from the header when opened (later changes to
    /// the header by the peer are not followed).
    pool_id: u64,
}

impl MappedArena {
    /// Creates a region of `len` bytes ([`SharedRegion::create`]: [`Sharing::Shared`] for a
    /// classic arena, [`Sharing::OwnerOnly`] for a lend pool, which no other process can ever map
    /// writable) and initialises an arena in it.
    pub(crate) fn create(
        name: &CStr,
        len: usize,
        pool_id: u64,
        sharing: Sharing,
    ) -> Result<Self, PoolError> {
        let region = SharedRegion::create(name, len, sharing)?;
        let base = writable_base(&region)?;
        let shift = flowipc_core::arena::DEFAULT_SPAN_SHIFT;
        // SAFETY: the mapping is page-aligned, `len` bytes, read-write, and lives in `self` beside
        // the arena; other processes reach it only through arenas attached to the same memfd.
        let arena = unsafe { Arena::init(base, len, shift) }?;
        arena.set_pool_tag(pool_id);
        Ok(MappedArena {
            arena,
            region,
            pool_id,
        })
    }

    /// Maps a classic arena received from a peer read-write (after [`SharedRegion::from_fd`]'s
    /// seal check) and attaches to it.
    pub(crate) fn open(fd: OwnedFd) -> Result<Self, PoolError> {
        let region = SharedRegion::from_fd(fd, Access::ReadWrite)?;
        let base = writable_base(&region)?;
        // SAFETY: as in `create`; `attach` validates the header and tolerates any content.
        let arena = unsafe { Arena::attach(base, region.len()) }?;
        let pool_id = arena.pool_tag();
        Ok(MappedArena {
            arena,
            region,
            pool_id,
        })
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The pool id (see the field).
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    pub(crate) fn len(&self) -> usize {
        self.region.len()
    }

    /// Checks that `[at, at + len)` lies inside the live block `off` (generation `gen`).
    fn span(&self, off: Offset, gen: u32, at: u64, len: usize) -> Result<NonNull<u8>, PoolError> {
        let info = self.arena.info(off)?;
        if info.generation != gen {
            return Err(BlockError::StaleGeneration.into());
        }
        let end = at.checked_add(len as u64).ok_or(BlockError::TooLong)?;
        if end > info.capacity {
            return Err(BlockError::TooLong.into());
        }
        let start = Offset::new(off.get() + at);
        self.arena
            .payload_ptr(start, len as u64)
            .ok_or_else(|| BlockError::OutOfRange.into())
    }

    /// A pointer to bytes `[0, len)` of the live block `off` (generation `gen`), in this
    /// process's writable mapping; valid while the mapping lives. The bytes are shared memory: the
    /// caller writes them only through raw pointers (or a reference it may hold because nothing
    /// else writes the block, e.g. a block only this process has a reference to).
    pub(crate) fn block_ptr(
        &self,
        off: Offset,
        gen: u32,
        len: usize,
    ) -> Result<NonNull<u8>, PoolError> {
        self.span(off, gen, 0, len)
    }

    /// Copies `data` into block `off` at byte `at`.
    pub(crate) fn write(
        &self,
        off: Offset,
        gen: u32,
        at: u64,
        data: &[u8],
    ) -> Result<(), PoolError> {
        let p = self.span(off, gen, at, data.len())?;
        // SAFETY: `span` checked that the destination lies inside the mapping (and the block); the
        // mapping is writable; `data` is our memory and cannot overlap it. No reference is formed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
        Ok(())
    }

    /// Copies bytes of block `off` at byte `at` into `buf`.
    pub(crate) fn read(
        &self,
        off: Offset,
        gen: u32,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), PoolError> {
        let p = self.span(off, gen, at, buf.len())?;
        copy_out(p, buf);
        Ok(())
    }

    /// Checks a handle (pool id checked by the caller) and copies its bytes from `at` into `buf`.
    pub(crate) fn read_handle(
        &self,
        h: &ArenaHandle,
        at: u64,
        buf: &mut [u8],
    ) -> Result<BlockInfo, PoolError> {
        let info = self.arena.check_handle(h)?;
        copy_from_handle(h, at, buf, |o, l| self.arena.payload_ptr(o, l))?;
        Ok(info)
    }
}

/// Copies bytes `[at, at + buf.len())` of the handle's object into `buf`, after checking that
/// they lie within the handle's `len`. `ptr(offset, len)` gives a pointer to `len` bytes at
/// `offset` of the mapping the handle was checked against, readable while the caller's borrow of
/// it lasts, or `None` when they lie outside it.
pub(super) fn copy_from_handle(
    h: &ArenaHandle,
    at: u64,
    buf: &mut [u8],
    ptr: impl Fn(Offset, u64) -> Option<NonNull<u8>>,
) -> Result<(), PoolError> {
    let end = at
        .checked_add(buf.len() as u64)
        .ok_or(BlockError::TooLong)?;
    if end > h.len {
        return Err(BlockError::TooLong.into());
    }
    let p = ptr(Offset::new(h.offset + at), buf.len() as u64).ok_or(BlockError::OutOfRange)?;
    copy_out(p, buf);
    Ok(())
}

/// A lend pool mapped read-only in a borrower: a core arena or a jemalloc pool (with or without
/// the `jemalloc` feature: reading one needs no jemalloc), told apart by the magic at offset 0.
pub(crate) enum MappedReader {
    /// A core arena; the reader is dropped before the mapping it points into.
    Core {
        reader: Box<ArenaReader>,
        _region: SharedRegion,
    },
    /// A jemalloc pool (read without jemalloc: the reader needs only the shared layout).
    Je(JeReader),
}

impl MappedReader {
    /// Maps a lend pool's (read-only) descriptor `PROT_READ` and attaches a reader.
    pub(crate) fn open(fd: OwnedFd) -> Result<Self, PoolError> {
        let region = SharedRegion::from_fd(fd, Access::ReadOnly)?;
        if JeReader::is_je_pool(&region) {
            return Ok(MappedReader::Je(JeReader::open(region)?));
        }
        let base = NonNull::new(region.as_ptr().cast_mut())
            .ok_or(RegionError::BadSize(region.len() as u64))?;
        // SAFETY: the mapping is page-aligned and `region.len()` bytes, lives beside the reader,
        // and is only loaded from (Relaxed atomics and byte copies), which is sound on `PROT_READ`
        // memory.
        let reader = Box::new(unsafe { ArenaReader::attach(base, region.len()) }?);
        Ok(MappedReader::Core {
            reader,
            _region: region,
        })
    }

    pub(crate) fn pool_tag(&self) -> u64 {
        match self {
            MappedReader::Core { reader, .. } => reader.pool_tag(),
            MappedReader::Je(r) => r.pool_tag(),
        }
    }

    /// Checks a handle (pool id checked by the caller) and copies its bytes from `at` into `buf`.
    pub(crate) fn read_handle(
        &self,
        h: &ArenaHandle,
        at: u64,
        buf: &mut [u8],
    ) -> Result<BlockInfo, PoolError> {
        match self {
            MappedReader::Core { reader, .. } => {
                let info = reader.check_handle(h)?;
                copy_from_handle(h, at, buf, |o, l| reader.payload_ptr(o, l))?;
                Ok(info)
            }
            MappedReader::Je(r) => r.read_handle(h, at, buf),
        }
    }

    /// Checks a handle and returns a pointer to its `h.len` bytes in the read-only mapping; valid
    /// while this reader lives. The owner may write those bytes (only by breaking the lend
    /// protocol); whoever forms a reference over them states that model.
    pub(crate) fn checked_ptr(&self, h: &ArenaHandle) -> Result<NonNull<u8>, PoolError> {
        match self {
            MappedReader::Core { reader, .. } => {
                reader.check_handle(h)?;
                reader
                    .payload_ptr(Offset::new(h.offset), h.len)
                    .ok_or_else(|| BlockError::OutOfRange.into())
            }
            MappedReader::Je(r) => r.checked_ptr(h),
        }
    }

    /// Checks a handle without copying.
    pub(crate) fn check(&self, h: &ArenaHandle) -> Result<BlockInfo, PoolError> {
        match self {
            MappedReader::Core { reader, .. } => Ok(reader.check_handle(h)?),
            MappedReader::Je(r) => r.check(h),
        }
    }
}
