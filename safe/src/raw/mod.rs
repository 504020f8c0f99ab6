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
//! reader (no `SIGBUS`).

#![allow(unsafe_code)]

pub(crate) mod arena;
#[cfg(feature = "jemalloc")]
pub(crate) mod jemalloc;
pub(crate) mod ring_region;

use std::fmt;

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

fn sys(call: &'static str) -> impl Fn(Errno) -> RegionError {
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

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes (a memfd sized once and sealed) mapped
    /// read-write.
    ///
    /// # Errors
    ///
    /// [`RegionError::BadSize`] for `len == 0`, or the failing system call.
    pub fn create(name: &std::ffi::CStr, len: usize) -> Result<Self, RegionError> {
        if len == 0 {
            return Err(RegionError::BadSize(0));
        }
        let fd = memfd::create_sealed(name, len as u64).map_err(sys("memfd_create"))?;
        let map = Mapping::map(fd.as_fd(), 0, len, Access::ReadWrite).map_err(sys("mmap"))?;
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
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// First byte for writing, or `None` if mapped read-only.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        self.map.as_mut_ptr()
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
