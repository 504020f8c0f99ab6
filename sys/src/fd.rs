//! Descriptor flags: close-on-exec, non-blocking, and duplication.
//!
//! Every descriptor flowipc creates is close-on-exec so that it never leaks into a program the
//! process executes; passing one to a child is explicit (`SCM_RIGHTS`, or `dup2` onto stdin).

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::OFlags;
use rustix::io::FdFlags;

use crate::Result;

/// `fcntl(fd, F_SETFD, FD_CLOEXEC or 0)`—sets or clears close-on-exec.
///
/// # References
///  - [Linux `fcntl(2)`]
///
/// [Linux `fcntl(2)`]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_SETFD")]
#[doc(alias = "FD_CLOEXEC")]
pub fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> Result<()> {
    let mut flags = rustix::io::fcntl_getfd(fd)?;
    flags.set(FdFlags::CLOEXEC, cloexec);
    rustix::io::fcntl_setfd(fd, flags)
}

/// `fcntl(fd, F_GETFD) & FD_CLOEXEC`—whether the descriptor is closed on `exec`.
///
/// # References
///  - [Linux `fcntl(2)`]
///
/// [Linux `fcntl(2)`]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_GETFD")]
pub fn is_cloexec(fd: BorrowedFd<'_>) -> Result<bool> {
    Ok(rustix::io::fcntl_getfd(fd)?.contains(FdFlags::CLOEXEC))
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, 0)`—a new close-on-exec descriptor for the same open file.
///
/// The two descriptors share the file offset and status flags (such as `O_NONBLOCK`).
///
/// # References
///  - [Linux `fcntl(2)`]
///
/// [Linux `fcntl(2)`]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_DUPFD_CLOEXEC")]
#[doc(alias = "dup")]
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// `ioctl(fd, FIONBIO, &nonblocking)`—sets or clears `O_NONBLOCK` on the open file.
///
/// The flag belongs to the open file, so it changes for every descriptor sharing it (duplicates,
/// and copies received through `SCM_RIGHTS` by another process). Works for sockets, pipes,
/// eventfds and POSIX mq descriptors alike.
///
/// # References
///  - [Linux `ioctl_fionbio(2const)`]
///  - [Linux `fcntl(2)`, `O_NONBLOCK`]
///
/// [Linux `ioctl_fionbio(2const)`]: https://man7.org/linux/man-pages/man2/FIONBIO.2const.html
/// [Linux `fcntl(2)`, `O_NONBLOCK`]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "FIONBIO")]
#[doc(alias = "O_NONBLOCK")]
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> Result<()> {
    rustix::io::ioctl_fionbio(fd, nonblocking)
}

/// `fcntl(fd, F_GETFL) & O_NONBLOCK`—whether the open file is in non-blocking mode.
///
/// # References
///  - [Linux `fcntl(2)`]
///
/// [Linux `fcntl(2)`]: https://man7.org/linux/man-pages/man2/fcntl.2.html
#[doc(alias = "F_GETFL")]
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> Result<bool> {
    Ok(rustix::fs::fcntl_getfl(fd)?.contains(OFlags::NONBLOCK))
}
