//! The unsafe half of the arenas: mapping the memfd, attaching `flowipc_core::arena` to it, and
//! copying bytes in and out of blocks.
//!
//! Part of `shm`, the one module that opts back into `unsafe` (the crate denies it), because
//! attaching a core arena to a mapping and copying through raw pointers cannot be expressed in safe
//! code. It upholds the core's contracts by keeping each [`Mapping`] in the same struct as the arena
//! attached to it (so the memory outlives every use), by bounds-checking every copy against the
//! block's validated capacity, and by never creating a Rust reference to bytes a peer can write:
//! data moves only by copying.

use std::ffi::CStr;
use std::ptr::NonNull;

use flowipc_core::arena::{Arena, ArenaHandle, ArenaReader, BlockError, BlockInfo, Offset};
use flowipc_sys::memfd::{self, SealFlags};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::{AsFd, BorrowedFd, Errno, OwnedFd};

use crate::arena::ArenaError;

/// Plain old data: a `Copy` type for which every bit pattern is a valid value and that has no
/// padding bytes, so it can be copied to and from shared memory that a peer may have written.
///
/// # Safety
///
/// Implement it only for types that are `#[repr(C)]` or `#[repr(transparent)]` (or primitive),
/// contain no padding, no pointers or references, and accept every bit pattern (so no `bool`,
/// `char`, enums or `NonZero*`).
pub unsafe trait Pod: Copy + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: primitive integers and floats accept every bit pattern and have no padding.
        unsafe impl Pod for $t {}
    )* };
}
pod!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
// SAFETY: an array of `Pod` has no padding between elements and accepts every bit pattern.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The bytes of a `Pod` value.
pub(crate) fn pod_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes are initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A `Pod` value from bytes (`bytes.len() == size_of::<T>()`).
pub(crate) fn pod_from_bytes<T: Pod>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), std::mem::size_of::<T>());
    // SAFETY: the length matches and `T: Pod` accepts every bit pattern; unaligned read.
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}

fn sys(call: &'static str) -> impl Fn(Errno) -> ArenaError {
    move |errno| ArenaError::Sys { call, errno }
}

/// Maps `fd` after checking its size seals; returns the mapping.
fn map_sealed(fd: BorrowedFd<'_>, access: Access) -> Result<Mapping, ArenaError> {
    let seals = memfd::get_seals(fd).map_err(|e| match e {
        Errno::INVAL => ArenaError::NotSealed,
        errno => ArenaError::Sys {
            call: "fcntl(F_GET_SEALS)",
            errno,
        },
    })?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(ArenaError::NotSealed);
    }
    let size = memfd::size(fd).map_err(sys("fstat"))?;
    let len = usize::try_from(size)
        .ok()
        .filter(|&l| l != 0 && l <= isize::MAX as usize)
        .ok_or(ArenaError::BadSize(size))?;
    Mapping::map(fd, 0, len, access).map_err(sys("mmap"))
}

/// Copies `len` bytes at `at` in the checked block out to `buf`.
fn copy_out(p: NonNull<u8>, buf: &mut [u8]) {
    // SAFETY: the caller derived `p` from `payload_ptr(.., buf.len())`, so the source is inside the
    // mapping; `buf` is our own memory and cannot overlap the mapping. The peer may write the source
    // concurrently: we copy bytes (any value is fine) and never form a reference to them.
    unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), buf.as_mut_ptr(), buf.len()) }
}

/// An arena in a read-write mapping (classic pools and the owner of a lend pool).
pub(crate) struct MappedArena {
    // Field order: the arena (which holds pointers into the mapping) is dropped before the mapping.
    arena: Arena,
    map: Mapping,
    fd: OwnedFd,
    /// The pool id: chosen at creation, or read from the header when opened (later changes to
    /// the header by the peer are not followed).
    pool_id: u64,
}

impl MappedArena {
    /// Creates a sealed memfd of `len` bytes, maps it read-write and initialises an arena in it.
    ///
    /// With `owner_only` (a lend pool), the memfd is sealed with `F_SEAL_FUTURE_WRITE` right after
    /// this mapping is made, so no other process can ever map it writable, whatever descriptor it
    /// gets (a read-only one reopened read-write through `/proc/self/fd` included).
    pub(crate) fn create(
        name: &CStr,
        len: usize,
        pool_id: u64,
        owner_only: bool,
    ) -> Result<Self, ArenaError> {
        let fd = if owner_only {
            memfd::create_sized(name, len as u64)
        } else {
            memfd::create_sealed(name, len as u64)
        }
        .map_err(sys("memfd_create"))?;
        let map = Mapping::map(fd.as_fd(), 0, len, Access::ReadWrite).map_err(sys("mmap"))?;
        if owner_only {
            memfd::seal_owner_only(fd.as_fd()).map_err(sys("fcntl(F_ADD_SEALS)"))?;
        }
        let base = map
            .as_mut_ptr()
            .and_then(NonNull::new)
            .ok_or(ArenaError::BadSize(len as u64))?;
        let shift = flowipc_core::arena::DEFAULT_SPAN_SHIFT;
        // SAFETY: the mapping is page-aligned, `len` bytes, read-write, and lives in `self` beside
        // the arena; other processes reach it only through arenas attached to the same memfd.
        let arena = unsafe { Arena::init(base, len, shift) }?;
        arena.set_pool_tag(pool_id);
        Ok(MappedArena {
            arena,
            map,
            fd,
            pool_id,
        })
    }

    /// Maps a classic arena received from a peer read-write and attaches to it.
    pub(crate) fn open(fd: OwnedFd) -> Result<Self, ArenaError> {
        let map = map_sealed(fd.as_fd(), Access::ReadWrite)?;
        let base = map
            .as_mut_ptr()
            .and_then(NonNull::new)
            .ok_or(ArenaError::BadSize(0))?;
        // SAFETY: as in `create`; `attach` validates the header and tolerates any content.
        let arena = unsafe { Arena::attach(base, map.len()) }?;
        let pool_id = arena.pool_tag();
        Ok(MappedArena {
            arena,
            map,
            fd,
            pool_id,
        })
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The pool id (see the field).
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Checks that `[at, at + len)` lies inside the live block `off` (generation `gen`).
    fn span(&self, off: Offset, gen: u32, at: u64, len: usize) -> Result<NonNull<u8>, ArenaError> {
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

    /// Copies `data` into block `off` at byte `at`.
    pub(crate) fn write(
        &self,
        off: Offset,
        gen: u32,
        at: u64,
        data: &[u8],
    ) -> Result<(), ArenaError> {
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
    ) -> Result<(), ArenaError> {
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
    ) -> Result<BlockInfo, ArenaError> {
        let info = self.arena.check_handle(h)?;
        let p = handle_span(h, at, buf.len(), |o, l| self.arena.payload_ptr(o, l))?;
        copy_out(p, buf);
        Ok(info)
    }
}

/// Bounds of `[at, at + len)` within the handle's `len`, as a pointer.
fn handle_span(
    h: &ArenaHandle,
    at: u64,
    len: usize,
    ptr: impl Fn(Offset, u64) -> Option<NonNull<u8>>,
) -> Result<NonNull<u8>, ArenaError> {
    let end = at.checked_add(len as u64).ok_or(BlockError::TooLong)?;
    if end > h.len {
        return Err(BlockError::TooLong.into());
    }
    ptr(Offset::new(h.offset + at), len as u64).ok_or_else(|| BlockError::OutOfRange.into())
}

/// A lend pool mapped read-only in a borrower: a core arena or (with the `jemalloc` feature) a
/// jemalloc pool, told apart by the magic at offset 0.
pub(crate) enum MappedReader {
    /// A core arena; the reader is dropped before the mapping it points into.
    Core {
        reader: Box<ArenaReader>,
        _map: Mapping,
        _fd: OwnedFd,
    },
    /// A jemalloc pool.
    #[cfg(feature = "jemalloc")]
    Je(super::jemalloc::JeReader),
}

impl MappedReader {
    /// Maps a lend pool's (read-only) descriptor `PROT_READ` and attaches a reader.
    pub(crate) fn open(fd: OwnedFd) -> Result<Self, ArenaError> {
        let map = map_sealed(fd.as_fd(), Access::ReadOnly)?;
        #[cfg(feature = "jemalloc")]
        if super::jemalloc::JeReader::is_je_pool(&map) {
            return Ok(MappedReader::Je(super::jemalloc::JeReader::open(map, fd)?));
        }
        let base = NonNull::new(map.as_ptr().cast_mut()).ok_or(ArenaError::BadSize(0))?;
        // SAFETY: the mapping is page-aligned and `map.len()` bytes, lives beside the reader, and is
        // only loaded from (Relaxed atomics and byte copies), which is sound on `PROT_READ` memory.
        let reader = Box::new(unsafe { ArenaReader::attach(base, map.len()) }?);
        Ok(MappedReader::Core {
            reader,
            _map: map,
            _fd: fd,
        })
    }

    pub(crate) fn pool_tag(&self) -> u64 {
        match self {
            MappedReader::Core { reader, .. } => reader.pool_tag(),
            #[cfg(feature = "jemalloc")]
            MappedReader::Je(r) => r.pool_tag(),
        }
    }

    /// Checks a handle (pool id checked by the caller) and copies its bytes from `at` into `buf`.
    pub(crate) fn read_handle(
        &self,
        h: &ArenaHandle,
        at: u64,
        buf: &mut [u8],
    ) -> Result<BlockInfo, ArenaError> {
        match self {
            MappedReader::Core { reader, .. } => {
                let info = reader.check_handle(h)?;
                let p = handle_span(h, at, buf.len(), |o, l| reader.payload_ptr(o, l))?;
                copy_out(p, buf);
                Ok(info)
            }
            #[cfg(feature = "jemalloc")]
            MappedReader::Je(r) => r.read_handle(h, at, buf),
        }
    }

    /// Checks a handle without copying.
    pub(crate) fn check(&self, h: &ArenaHandle) -> Result<BlockInfo, ArenaError> {
        match self {
            MappedReader::Core { reader, .. } => Ok(reader.check_handle(h)?),
            #[cfg(feature = "jemalloc")]
            MappedReader::Je(r) => r.check(h),
        }
    }
}
