//! Anonymous pipes and plain `read`/`write`, used as baselines by the benchmarks and as simple
//! byte channels in tests.

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::pipe::PipeFlags;

use crate::Result;

/// `pipe2(O_CLOEXEC)`—creates a pipe; returns `(read end, write end)`.
///
/// # References
///  - [Linux `pipe(2)`]
///
/// [Linux `pipe(2)`]: https://man7.org/linux/man-pages/man2/pipe.2.html
#[doc(alias = "pipe2")]
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC)
}

/// `read(fd, buf)`—reads up to `buf.len()` bytes; 0 means end of file (all write ends closed).
///
/// # References
///  - [Linux `read(2)`]
///
/// [Linux `read(2)`]: https://man7.org/linux/man-pages/man2/read.2.html
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    rustix::io::read(fd, buf)
}

/// `write(fd, buf)`—writes up to `buf.len()` bytes; returns how many were written.
///
/// Writing to a pipe whose read ends are all closed fails with [`Errno::PIPE`](crate::Errno::PIPE)
/// but, unless the process ignores it, also raises `SIGPIPE` (the Rust runtime ignores it by
/// default in `std` binaries).
///
/// # References
///  - [Linux `write(2)`]
///
/// [Linux `write(2)`]: https://man7.org/linux/man-pages/man2/write.2.html
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize> {
    rustix::io::write(fd, buf)
}
