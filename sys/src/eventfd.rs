//! Event counters (`eventfd(2)`): a 64-bit counter behind a descriptor that `poll`/epoll can watch.
//!
//! Async channels sleep on an eventfd registered with their reactor instead of on a futex; the
//! waker adds to the counter with [`eventfd_write`], the sleeper collects it with [`eventfd_read`].

use rustix::fd::{BorrowedFd, OwnedFd};

use crate::{Errno, Result};

pub use rustix::event::EventfdFlags;

/// `eventfd(initval, flags | EFD_CLOEXEC)`—creates an event counter starting at `initval`.
///
/// `flags` may add [`EventfdFlags::NONBLOCK`] and [`EventfdFlags::SEMAPHORE`]; close-on-exec is
/// always set.
///
/// # References
///  - [Linux `eventfd(2)`]
///
/// [Linux `eventfd(2)`]: https://man7.org/linux/man-pages/man2/eventfd.2.html
#[doc(alias = "eventfd2")]
pub fn eventfd(initval: u32, flags: EventfdFlags) -> Result<OwnedFd> {
    rustix::event::eventfd(initval, flags | EventfdFlags::CLOEXEC)
}

/// `read(fd, &mut u64, 8)`—takes the counter's value and resets it to 0 (or takes 1 in semaphore
/// mode).
///
/// Blocks while the counter is 0, or fails with [`Errno::AGAIN`] if the eventfd is non-blocking.
///
/// # References
///  - [Linux `eventfd(2)`]
///
/// [Linux `eventfd(2)`]: https://man7.org/linux/man-pages/man2/eventfd.2.html
pub fn eventfd_read(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut buf = [0u8; 8];
    let n = rustix::io::read(fd, &mut buf)?;
    if n != buf.len() {
        // An eventfd always transfers 8 bytes; anything else is not an eventfd.
        return Err(Errno::INVAL);
    }
    Ok(u64::from_ne_bytes(buf))
}

/// `write(fd, &value, 8)`—adds `value` to the counter, waking readers.
///
/// `value` must not be `u64::MAX` ([`Errno::INVAL`]). Blocks if the counter would exceed
/// `u64::MAX - 1`, or fails with [`Errno::AGAIN`] if the eventfd is non-blocking.
///
/// # References
///  - [Linux `eventfd(2)`]
///
/// [Linux `eventfd(2)`]: https://man7.org/linux/man-pages/man2/eventfd.2.html
pub fn eventfd_write(fd: BorrowedFd<'_>, value: u64) -> Result<()> {
    let n = rustix::io::write(fd, &value.to_ne_bytes())?;
    if n != 8 {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// Whether `fd` is an eventfd: `readlink("/proc/self/fd/<fd>")` reads `anon_inode:[eventfd]`.
///
/// For validating a descriptor a peer claims is an eventfd before writing or polling it.
///
/// # References
///  - [Linux `proc_pid_fd(5)`]
///
/// [Linux `proc_pid_fd(5)`]: https://man7.org/linux/man-pages/man5/proc_pid_fd.5.html
#[cfg(feature = "alloc")]
pub fn is_eventfd(fd: BorrowedFd<'_>) -> Result<bool> {
    use rustix::fd::AsRawFd;
    let path = alloc::format!("/proc/self/fd/{}", fd.as_raw_fd());
    let link = rustix::fs::readlink(path.as_str(), alloc::vec::Vec::new())?;
    Ok(link.as_bytes() == b"anon_inode:[eventfd]")
}

#[cfg(all(test, feature = "alloc"))]
mod is_eventfd_tests {
    use super::*;

    #[test]
    fn tells_eventfds_from_other_descriptors() {
        use rustix::fd::AsFd;
        let e = eventfd(0, EventfdFlags::NONBLOCK).unwrap();
        assert!(is_eventfd(e.as_fd()).unwrap());
        let (r, _w) = crate::pipe::pipe().unwrap();
        assert!(!is_eventfd(r.as_fd()).unwrap());
    }
}
