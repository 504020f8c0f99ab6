//! Shared memory mappings of a file (`mmap(MAP_SHARED)`), unmapped on drop.
//!
//! A [`Mapping`] deliberately hands out raw pointers and never `&[u8]` or `&mut [u8]`: the bytes are
//! shared with another process that may write them at any moment, and a Rust reference promises that
//! the memory does not change (or, for `&mut`, that nobody else can see it) while the reference lives.
//! Another process does not honour that promise, so such a reference would be undefined behaviour.
//! Callers read and write through the pointers with volatile or atomic accesses (or copy out first,
//! then validate the copy), treating every value read as a claim by a possibly hostile peer.
//!
//! Mapping past the end of a file succeeds but touching those pages raises `SIGBUS`; flowipc maps only
//! memfds whose size is sealed (see [`crate::memfd::create_sealed`]), so check the seals and the
//! size of a region received from a peer before mapping it.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use rustix::fd::BorrowedFd;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use crate::{Errno, Result};

/// How a [`Mapping`] may be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `PROT_READ`: writes through the mapping fault.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

impl Access {
    fn prot(self) -> ProtFlags {
        match self {
            Access::ReadOnly => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        }
    }

    fn mprotect(self) -> MprotectFlags {
        match self {
            Access::ReadOnly => MprotectFlags::READ,
            Access::ReadWrite => MprotectFlags::READ | MprotectFlags::WRITE,
        }
    }
}

/// A `MAP_SHARED` mapping of part of a file, unmapped when dropped.
///
/// It exposes only raw pointers (see the [module docs](self) for why). The pointers are valid for
/// [`len`](Mapping::len) bytes until the `Mapping` is dropped; using them after that is a bug the
/// compiler cannot catch, so keep the `Mapping` alive alongside whatever uses its memory.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: AtomicBool,
}

// SAFETY: a `Mapping` owns an address range, not Rust-visible data: it hands out raw pointers only,
// whose users are responsible for synchronizing their accesses; munmap may run on any thread.
unsafe impl Send for Mapping {}
// SAFETY: the `&self` methods read plain fields or the atomic `writable` flag, and `protect` is a
// syscall the kernel serializes; no `&self` method gives out references into the mapped bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, offset)`—maps `len` bytes of `fd` starting at `offset`.
    ///
    /// `offset` must be a multiple of the page size (4096) and `len` non-zero, else
    /// [`Errno::INVAL`]. Mapping [`Access::ReadWrite`] needs a descriptor opened for reading and
    /// writing ([`Errno::ACCESS`] otherwise) and fails with [`Errno::PERM`] on a memfd sealed with
    /// `F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE`.
    ///
    /// # References
    ///  - [Linux `mmap(2)`]
    ///
    /// [Linux `mmap(2)`]: https://man7.org/linux/man-pages/man2/mmap.2.html
    #[doc(alias = "mmap")]
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize, access: Access) -> Result<Mapping> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a null hint without MAP_FIXED lets the kernel pick an unused range, so no existing
        // memory of this process is replaced.
        let addr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                access.prot(),
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(Mapping {
            ptr,
            len,
            writable: AtomicBool::new(access == Access::ReadWrite),
        })
    }

    /// The first mapped byte. Valid for [`len`](Mapping::len) bytes of reads while `self` lives.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first mapped byte for writing, or `None` if the mapping is read-only.
    pub fn as_mut_ptr(&self) -> Option<*mut u8> {
        // Relaxed: the flag mirrors the page protection and orders nothing; the kernel enforces it.
        self.writable
            .load(Ordering::Relaxed)
            .then_some(self.ptr.as_ptr())
    }

    /// The mapped length in bytes, as passed to [`map`](Mapping::map).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping cannot be empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The access the pages currently allow, as last set by [`map`](Mapping::map) or
    /// [`protect`](Mapping::protect).
    pub fn access(&self) -> Access {
        // Relaxed: see `as_mut_ptr`.
        if self.writable.load(Ordering::Relaxed) {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        }
    }

    /// `mprotect(ptr, len, prot)`—changes the access of the whole mapping.
    ///
    /// Upgrading to [`Access::ReadWrite`] fails with [`Errno::ACCESS`] if the file was mapped
    /// through a read-only descriptor (see [`crate::memfd::reopen_read_only`]) or, on a memfd sealed
    /// with `F_SEAL_FUTURE_WRITE` before the read-only mapping was made; this is what lets a writer
    /// hand out a region a reader cannot corrupt. Downgrading never needs permission.
    ///
    /// Callers must not be writing through a pointer from [`as_mut_ptr`](Mapping::as_mut_ptr) while
    /// downgrading, or that write faults.
    ///
    /// # References
    ///  - [Linux `mprotect(2)`]
    ///
    /// [Linux `mprotect(2)`]: https://man7.org/linux/man-pages/man2/mprotect.2.html
    #[doc(alias = "mprotect")]
    pub fn protect(&self, access: Access) -> Result<()> {
        // SAFETY: the range is exactly the one this `Mapping` owns; changing its protection cannot
        // invalidate Rust references because none into it are ever handed out.
        unsafe {
            rustix::mm::mprotect(
                self.ptr.as_ptr().cast::<c_void>(),
                self.len,
                access.mprotect(),
            )?
        };
        // Relaxed: see `as_mut_ptr`.
        self.writable
            .store(access == Access::ReadWrite, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Mapping {
    /// `munmap(ptr, len)`.
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a range this `Mapping` mapped and owns exclusively; it is
        // unmapped once, here, and no Rust reference into it exists.
        let result = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
        // munmap of a range we mapped cannot fail; nothing useful to do in drop if it did.
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}
