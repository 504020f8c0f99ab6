//! Anonymous shared-memory files (`memfd_create`) and their seals.
//!
//! Every shared region in flowipc is a memfd: created close-on-exec with sealing allowed, sized once,
//! then sealed with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` ([`create_sealed`]) so that a peer
//! holding the descriptor cannot truncate it under a reader (which would turn the reader's next access
//! into `SIGBUS`). Nothing is named in the file system: the kernel frees the memory when the last
//! descriptor and mapping go away. See `memfd_create(2)` and the "File Sealing" section of `fcntl(2)`.

use core::ffi::CStr;

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{MemfdFlags, Mode, OFlags};

use crate::{Errno, Result};

pub use rustix::fs::SealFlags;

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`—creates an anonymous
/// shared-memory file of size 0.
///
/// The descriptor is close-on-exec and accepts seals. Where the kernel knows `MFD_NOEXEC_SEAL`
/// (Linux 6.3+), the file is also made non-executable for good, so [`get_seals`] then reports
/// [`SealFlags::EXEC`]; on older kernels that flag is dropped. `name` is only a label shown in
/// `/proc/<pid>/fd` (as `/memfd:<name>`); it need not be unique.
///
/// # References
///  - [Linux `memfd_create(2)`]
///
/// [Linux `memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html
pub fn memfd_create(name: &CStr) -> Result<OwnedFd> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match rustix::fs::memfd_create(name, base | MemfdFlags::NOEXEC_SEAL) {
        // EINVAL: a kernel older than 6.3 that does not know MFD_NOEXEC_SEAL.
        Err(Errno::INVAL) => rustix::fs::memfd_create(name, base),
        other => other,
    }
}

/// `ftruncate(fd, len)`—sets the size of a memfd (or any regular file).
///
/// Fails with [`Errno::PERM`] once the file carries a seal that forbids the change
/// ([`SealFlags::SHRINK`] or [`SealFlags::GROW`]).
///
/// # References
///  - [Linux `ftruncate(2)`]
///
/// [Linux `ftruncate(2)`]: https://man7.org/linux/man-pages/man2/ftruncate.2.html
#[doc(alias = "ftruncate")]
pub fn set_size(fd: BorrowedFd<'_>, len: u64) -> Result<()> {
    rustix::fs::ftruncate(fd, len)
}

/// `fstat(fd).st_size`—returns the current size of a file in bytes.
///
/// # References
///  - [Linux `fstat(2)`]
///
/// [Linux `fstat(2)`]: https://man7.org/linux/man-pages/man2/fstat.2.html
#[doc(alias = "fstat")]
pub fn size(fd: BorrowedFd<'_>) -> Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| Errno::OVERFLOW)
}

/// `fcntl(fd, F_ADD_SEALS, seals)`—adds seals to a memfd. Seals can never be removed.
///
/// Fails with [`Errno::PERM`] if the file is already sealed with [`SealFlags::SEAL`], and with
/// [`Errno::BUSY`] when adding [`SealFlags::WRITE`] while a writable shared mapping exists.
///
/// # References
///  - [Linux `fcntl(2)`, File Sealing]
///  - [Linux `memfd_create(2)`]
///
/// [Linux `fcntl(2)`, File Sealing]: https://man7.org/linux/man-pages/man2/fcntl.2.html
/// [Linux `memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html
#[doc(alias = "F_ADD_SEALS")]
pub fn add_seals(fd: BorrowedFd<'_>, seals: SealFlags) -> Result<()> {
    rustix::fs::fcntl_add_seals(fd, seals)
}

/// `fcntl(fd, F_GET_SEALS)`—returns the seals a memfd carries.
///
/// A peer should check these on a region it receives before trusting its size.
///
/// # References
///  - [Linux `fcntl(2)`, File Sealing]
///
/// [Linux `fcntl(2)`, File Sealing]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_GET_SEALS")]
pub fn get_seals(fd: BorrowedFd<'_>) -> Result<SealFlags> {
    rustix::fs::fcntl_get_seals(fd)
}

/// The seals [`create_sealed`] applies: the size is fixed and no further seal can be added.
pub const SIZE_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// `memfd_create` + `ftruncate` + `F_ADD_SEALS`—creates a memfd of `len` bytes whose size can never
/// change again.
///
/// The seals are [`SIZE_SEALS`] (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so the content stays
/// writable through the returned descriptor but no holder can truncate or grow it; a mapping of
/// `len` bytes can therefore never raise `SIGBUS`. Because `F_SEAL_SEAL` is set, no other seal (such
/// as `F_SEAL_FUTURE_WRITE`) can be added later: build the region by hand with [`memfd_create`],
/// [`set_size`] and [`add_seals`] if you need that.
///
/// # References
///  - [Linux `memfd_create(2)`]
///  - [Linux `fcntl(2)`, File Sealing]
///
/// [Linux `memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html
/// [Linux `fcntl(2)`, File Sealing]: https://man7.org/linux/man-pages/man2/fcntl.2.html
pub fn create_sealed(name: &CStr, len: u64) -> Result<OwnedFd> {
    let fd = memfd_create(name)?;
    set_size(rustix::fd::AsFd::as_fd(&fd), len)?;
    add_seals(rustix::fd::AsFd::as_fd(&fd), SIZE_SEALS)?;
    Ok(fd)
}

/// `memfd_create` + `ftruncate` + `F_ADD_SEALS(F_SEAL_SHRINK | F_SEAL_GROW)`—creates a memfd of
/// `len` bytes whose size can never change, but which still takes more seals: the first half of a
/// region that only its creator may write. Map it read-write, then call [`seal_owner_only`].
///
/// # References
///  - [Linux `memfd_create(2)`]
///  - [Linux `fcntl(2)`, File Sealing]
///
/// [Linux `memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html
/// [Linux `fcntl(2)`, File Sealing]: https://man7.org/linux/man-pages/man2/fcntl.2.html
pub fn create_sized(name: &CStr, len: u64) -> Result<OwnedFd> {
    let fd = memfd_create(name)?;
    set_size(rustix::fd::AsFd::as_fd(&fd), len)?;
    add_seals(
        rustix::fd::AsFd::as_fd(&fd),
        SealFlags::SHRINK.union(SealFlags::GROW),
    )?;
    Ok(fd)
}

/// The seals [`seal_owner_only`] adds: no new writable mapping and no `write(2)` by anyone, and no
/// further seal.
pub const OWNER_ONLY_SEALS: SealFlags = SealFlags::FUTURE_WRITE.union(SealFlags::SEAL);

/// `F_ADD_SEALS(F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)`—after its creator has mapped it read-write,
/// makes a region of [`create_sized`] writable through that mapping only.
///
/// From then on no holder of any descriptor for the file (including one reopened read-write
/// through `/proc/self/fd/N`) can map it writable, `write(2)` it, `mprotect` a read-only mapping to
/// writable, or punch holes in it (all fail with [`Errno::PERM`]); mappings that already exist keep
/// working. This is what keeps a lend pool's borrowers read-only.
///
/// # References
///  - [Linux `fcntl(2)`, File Sealing]
///
/// [Linux `fcntl(2)`, File Sealing]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_SEAL_FUTURE_WRITE")]
pub fn seal_owner_only(fd: BorrowedFd<'_>) -> Result<()> {
    add_seals(fd, OWNER_ONLY_SEALS)
}

/// `open("/proc/self/fd/<fd>", O_RDONLY | O_CLOEXEC)`—opens a new, read-only descriptor for the same
/// file.
///
/// A peer given only this descriptor can map the region `PROT_READ` but can neither map it writable
/// nor later `mprotect` such a mapping to `PROT_WRITE` (both fail with [`Errno::ACCESS`]), and cannot
/// `ftruncate` it ([`Errno::INVAL`]). It still sees every write made through other descriptors.
/// Needs `/proc` mounted.
///
/// # References
///  - [Linux `open(2)`]
///  - [Linux `proc_pid_fd(5)`]
///
/// [Linux `open(2)`]: https://man7.org/linux/man-pages/man2/open.2.html
/// [Linux `proc_pid_fd(5)`]: https://man7.org/linux/man-pages/man5/proc_pid_fd.5.html
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 32];
    let path = proc_self_fd_path(rustix::fd::AsRawFd::as_raw_fd(&fd), &mut buf);
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}

/// Writes `/proc/self/fd/<fd>\0` into `buf` and returns it as a C string.
fn proc_self_fd_path(fd: i32, buf: &mut [u8; 32]) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    // A valid descriptor is non-negative; at most 10 decimal digits.
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[i..];
    let end = PREFIX.len() + digits.len();
    buf[PREFIX.len()..end].copy_from_slice(digits);
    buf[end] = 0;
    // Cannot fail: exactly one NUL, at `end`.
    CStr::from_bytes_with_nul(&buf[..=end]).unwrap_or(c"/proc/self/fd/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_path_formats() {
        let mut b = [0u8; 32];
        assert_eq!(proc_self_fd_path(0, &mut b), c"/proc/self/fd/0");
        assert_eq!(proc_self_fd_path(1234, &mut b), c"/proc/self/fd/1234");
        assert_eq!(
            proc_self_fd_path(i32::MAX, &mut b),
            c"/proc/self/fd/2147483647"
        );
    }
}
