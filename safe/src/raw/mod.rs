//! Shared-memory regions and the structures laid out in them.
//!
//! This is the one module of `flowipc` that uses `unsafe`: mapping a memfd hands out raw pointers,
//! and attaching `flowipc_core` structures to them (`RawRing::init` / `attach` and the handle
//! constructors) is `unsafe` because their memory must outlive the handles and each ring role must
//! be held once. The code here upholds that by keeping the [`SharedRegion`] (hence the mapping)
//! alive in an `Arc` next to every handle, and by a per-process registry of the ring roles taken, so
//! everything outside this module stays safe code.
//!
//! Every region is a sealed memfd (`F_SEAL_SHRINK | F_SEAL_GROW`): a region received from a peer is
//! accepted only with those seals, so its size, checked with `fstat`, can never change under a
//! reader (no `SIGBUS`). [`SharedRegion`] is the one place that creates such a region
//! ([`SharedRegion::create`], for rings, arenas and jemalloc pools alike) and the one place that
//! checks a received one ([`SharedRegion::from_fd`]); every structure below maps its memory
//! through it. This layer owns its errors ([`RegionError`]); the arena wraps them, and nothing
//! here imports from the layers above.

#![allow(unsafe_code)]

pub(crate) mod arena;
pub(crate) mod jemalloc;
pub(crate) mod ring_region;

use std::fmt;

use flowipc_core::arena::{AllocError, BlockError, InitError};
use flowipc_sys::memfd::{self, SealFlags};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::{AsFd, BorrowedFd, Errno, OwnedFd};

/// Why a shared region could not be created or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A system call failed.
    #[error("{call} failed: {errno}")]
    Sys {
        /// The call that failed.
        call: &'static str,
        /// The error the kernel returned.
        errno: Errno,
    },
    /// The descriptor is not a memfd sealed against shrinking and growing, so the peer could
    /// truncate it under us.
    #[error(
        "shared-memory descriptor lacks the F_SEAL_SHRINK | F_SEAL_GROW seals; \
         the peer must create regions with flowipc (memfd_create + seals)"
    )]
    NotSealed,
    /// The region's size is zero or does not fit the address space.
    #[error("shared-memory region has unusable size {0}")]
    BadSize(u64),
}

/// Why an operation on a pool laid out in a region (a core arena or a jemalloc pool) failed: the
/// raw layer's own error, which the arena layer converts into its public error.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// The region could not be created, accepted or mapped.
    Region(RegionError),
    /// The region does not hold a valid pool.
    Init(InitError),
    /// Allocation failed.
    Alloc(AllocError),
    /// The block or handle is not (or no longer) valid, or a range is outside it.
    Block(BlockError),
    /// The pool belongs to another process (a jemalloc pool used in a fork child).
    #[cfg(feature = "jemalloc")]
    NotOwner,
}

macro_rules! pool_error_from {
    ($($variant:ident($t:ty)),*) => { $(
        impl From<$t> for PoolError {
            fn from(e: $t) -> Self {
                PoolError::$variant(e)
            }
        }
    )* };
}
pool_error_from!(
    Region(RegionError),
    Init(InitError),
    Alloc(AllocError),
    Block(BlockError)
);

/// Maps the `errno` of system call `call` to a [`RegionError::Sys`].
pub(crate) fn sys(call: &'static str) -> impl Fn(Errno) -> RegionError {
    move |errno| RegionError::Sys { call, errno }
}

/// A sealed memfd and its shared mapping, unmapped and closed on drop.
///
/// Hands out raw pointers only: the peer may write the bytes at any time.
pub struct SharedRegion {
    map: Mapping,
    fd: OwnedFd,
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("fd", &self.fd)
            .field("len", &self.map.len())
            .field("access", &self.map.access())
            .finish()
    }
}

/// Who may write a region [`SharedRegion::create`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Every holder of the descriptor may map it read-write (rings, classic arenas). Sealed
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` at creation ([`memfd::create_sealed`]).
    Shared,
    /// Only the creator's own mapping can write (lend pools): sealed `F_SEAL_SHRINK |
    /// F_SEAL_GROW` at creation and `F_SEAL_FUTURE_WRITE | F_SEAL_SEAL` right after the creator has
    /// mapped it ([`memfd::create_sized`], then [`memfd::seal_owner_only`]), so no other process
    /// can ever map it writable, whatever descriptor it gets (a read-only one reopened read-write
    /// through `/proc/self/fd` included).
    OwnerOnly,
}

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes (a memfd sized once and sealed as `sharing`
    /// says) mapped read-write.
    ///
    /// # Errors
    ///
    /// [`RegionError::BadSize`] for `len == 0`, or the failing system call.
    pub fn create(
        name: &std::ffi::CStr,
        len: usize,
        sharing: Sharing,
    ) -> Result<Self, RegionError> {
        if len == 0 {
            return Err(RegionError::BadSize(0));
        }
        let fd = match sharing {
            Sharing::Shared => memfd::create_sealed(name, len as u64),
            Sharing::OwnerOnly => memfd::create_sized(name, len as u64),
        }
        .map_err(sys("memfd_create"))?;
        let map = Mapping::map(fd.as_fd(), 0, len, Access::ReadWrite).map_err(sys("mmap"))?;
        if sharing == Sharing::OwnerOnly {
            // After our mapping, before anyone else can have the descriptor.
            memfd::seal_owner_only(fd.as_fd()).map_err(sys("fcntl(F_ADD_SEALS)"))?;
        }
        Ok(SharedRegion { map, fd })
    }

    /// Maps a region received from a peer, after checking its seals and taking its size from
    /// `fstat`.
    ///
    /// # Errors
    ///
    /// [`RegionError::NotSealed`], [`RegionError::BadSize`], or the failing system call.
    pub fn from_fd(fd: OwnedFd, access: Access) -> Result<Self, RegionError> {
        let seals = memfd::get_seals(fd.as_fd()).map_err(|e| match e {
            Errno::INVAL => RegionError::NotSealed,
            errno => RegionError::Sys {
                call: "fcntl(F_GET_SEALS)",
                errno,
            },
        })?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(RegionError::NotSealed);
        }
        let size = memfd::size(fd.as_fd()).map_err(sys("fstat"))?;
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| l != 0 && l <= isize::MAX as usize)
            .ok_or(RegionError::BadSize(size))?;
        let map = Mapping::map(fd.as_fd(), 0, len, access).map_err(sys("mmap"))?;
        Ok(SharedRegion { map, fd })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The memfd, to send to a peer (e.g. with `SCM_RIGHTS`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How the region is mapped.
    pub fn access(&self) -> Access {
        self.map.access()
    }

    /// First byte, valid for [`len`](Self::len) bytes of reads while `self` lives.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// First byte for writing, or `None` if mapped read-only.
    #[inline]
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.map.as_mut_ptr()
    }

    /// The mapping and the memfd, for an owner that must unmap or leak them apart (a jemalloc
    /// pool whose arena could not be destroyed leaks its mapping but still closes the memfd).
    #[cfg(feature = "jemalloc")]
    pub(crate) fn into_parts(self) -> (Mapping, OwnedFd) {
        (self.map, self.fd)
    }

    /// `(st_dev, st_ino)` of the memfd: identifies the region across mappings in this process.
    fn identity(&self) -> Result<(u64, u64), RegionError> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::from(self.fd.try_clone().map_err(|e| RegionError::Sys {
            call: "dup",
            errno: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
        })?);
        let meta = file.metadata().map_err(|e| RegionError::Sys {
            call: "fstat",
            errno: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
        })?;
        Ok((meta.dev(), meta.ino()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        let fd = memfd::memfd_create(c"flowipc-test").unwrap();
        memfd::set_size(fd.as_fd(), len).unwrap();
        if !seals.is_empty() {
            memfd::add_seals(fd.as_fd(), seals).unwrap();
        }
        fd
    }

    /// A region from a peer is mapped only with both size seals, and never with size 0.
    #[test]
    fn from_fd_checks_seals_and_size() {
        let both = SealFlags::SHRINK | SealFlags::GROW;
        for seals in [SealFlags::empty(), SealFlags::SHRINK, SealFlags::GROW] {
            assert!(
                matches!(
                    SharedRegion::from_fd(memfd(4096, seals), Access::ReadOnly),
                    Err(RegionError::NotSealed)
                ),
                "{seals:?}"
            );
        }
        assert!(matches!(
            SharedRegion::from_fd(memfd(0, both), Access::ReadOnly),
            Err(RegionError::BadSize(0))
        ));
        let r = SharedRegion::from_fd(memfd(8192, both), Access::ReadWrite).unwrap();
        assert_eq!(r.len(), 8192);
        assert_eq!(r.access(), Access::ReadWrite);
    }
}
