//! Calls sessions need to authenticate a peer and own a rendezvous name: `SO_PEERPIDFD`, pidfd
//! liveness and pid, and `flock`.
//!
//! `SO_PEERPIDFD` (Linux 6.5) returns a pidfd for the process that connected a Unix socket. A
//! pidfd keeps naming that one process even after it exits and its pid is reused, so a server
//! can read `/proc/<pid>/exe` and then confirm, through the pidfd, that the pid still belonged to
//! the same process while it read. rustix has no `getsockopt` for this option, so
//! [`peer_pidfd`] issues the syscall itself in the private `raw` module below (the same
//! convention as `mq::raw`).

use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::process::Pid;

use crate::{Errno, Result};

/// `getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD)`—a pidfd for the process that connected `sock`.
///
/// The kernel records the peer when the connection is made (`connect`/`socketpair`), so the
/// pidfd names that process even if it has exited since and its pid was reused. Fails with
/// [`Errno::NOPROTOOPT`] on kernels before 6.5 (use [`crate::process::pidfd_open`] on the
/// `SO_PEERCRED` pid there, which is racy against pid reuse) and with [`Errno::SRCH`] if the peer
/// has already been reaped on some kernels. The pidfd is close-on-exec.
///
/// # References
///  - [Linux `unix(7)`, `SO_PEERPIDFD`]
///
/// [Linux `unix(7)`, `SO_PEERPIDFD`]: https://man7.org/linux/man-pages/man7/unix.7.html
#[doc(alias = "SO_PEERPIDFD")]
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    raw::getsockopt_peer_pidfd(sock)
}

/// Whether the process a pidfd names is still running (not yet exited), without waiting.
///
/// A pidfd becomes readable when its process exits; this polls it with a zero timeout.
///
/// # References
///  - [Linux `pidfd_open(2)`]
///
/// [Linux `pidfd_open(2)`]: https://man7.org/linux/man-pages/man2/pidfd_open.2.html
pub fn pidfd_is_alive(pidfd: BorrowedFd<'_>) -> Result<bool> {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let n = rustix::event::poll(&mut fds, Some(&zero))?;
    Ok(n == 0)
}

/// The pid of the process a pidfd names, read from `/proc/self/fdinfo/<fd>` (its `Pid:` line).
///
/// Fails with [`Errno::SRCH`] if the process has exited and been reaped (the kernel reports -1),
/// [`Errno::INVAL`] if `pidfd` is not a pidfd.
///
/// # References
///  - [Linux `pidfd_open(2)`, "/proc/pid/fdinfo"]
///
/// [Linux `pidfd_open(2)`, "/proc/pid/fdinfo"]: https://man7.org/linux/man-pages/man2/pidfd_open.2.html
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Result<Pid> {
    let fd = rustix::fd::AsRawFd::as_raw_fd(&pidfd);
    let mut path = [0u8; 40];
    let prefix = b"/proc/self/fdinfo/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    len += write_decimal(
        &mut path[len..],
        u64::try_from(fd).map_err(|_| Errno::BADF)?,
    );
    // path[len] is already 0: the buffer is larger than any prefix plus a u64.
    let cpath = core::ffi::CStr::from_bytes_until_nul(&path[..=len]).map_err(|_| Errno::INVAL)?;
    let file = rustix::fs::open(cpath, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    while filled < buf.len() {
        let n = rustix::io::read(&file, &mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    parse_fdinfo_pid(&buf[..filled])
}

/// The `Pid:` value of a pidfd's fdinfo text.
fn parse_fdinfo_pid(text: &[u8]) -> Result<Pid> {
    for line in text.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"Pid:") else {
            continue;
        };
        let rest = trim_ascii(rest);
        if rest.first() == Some(&b'-') {
            return Err(Errno::SRCH);
        }
        let mut v: i32 = 0;
        if rest.is_empty() {
            return Err(Errno::INVAL);
        }
        for &c in rest {
            if !c.is_ascii_digit() {
                return Err(Errno::INVAL);
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i32::from(c - b'0')))
                .ok_or(Errno::INVAL)?;
        }
        return Pid::from_raw(v).ok_or(Errno::SRCH);
    }
    Err(Errno::INVAL)
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Writes `v` in decimal at the start of `out`; returns the number of bytes written.
fn write_decimal(out: &mut [u8], mut v: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    n
}

/// `flock(fd, LOCK_EX | LOCK_NB)`—takes an exclusive advisory lock on an open file, or fails
/// at once with [`Errno::WOULDBLOCK`] if another open file description holds one.
///
/// The lock belongs to the open file description and is released when its last descriptor is
/// closed, including when the process is killed: a lock file, unlike a PID file, cannot go stale.
///
/// # References
///  - [Linux `flock(2)`]
///
/// [Linux `flock(2)`]: https://man7.org/linux/man-pages/man2/flock.2.html
#[doc(alias = "flock")]
pub fn flock_exclusive_nonblocking(fd: impl AsFd) -> Result<()> {
    rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive)
}

/// `geteuid()`—the effective user id of the calling process.
///
/// # References
///  - [Linux `geteuid(2)`]
///
/// [Linux `geteuid(2)`]: https://man7.org/linux/man-pages/man2/geteuid.2.html
pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `getegid()`—the effective group id of the calling process.
///
/// # References
///  - [Linux `getegid(2)`]
///
/// [Linux `getegid(2)`]: https://man7.org/linux/man-pages/man2/getegid.2.html
pub fn getegid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// The inode number of the file `fd` refers to (`fstat`'s `st_ino`).
///
/// # References
///  - [Linux `fstat(2)`]
///
/// [Linux `fstat(2)`]: https://man7.org/linux/man-pages/man2/fstat.2.html
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// Takes ownership of descriptor `raw`, inherited from the parent process (its number handed
/// over in the environment), after checking that it is an open socket with inode number
/// `expected_ino` (which the parent handed over too, so that a stale number naming some other
/// descriptor is not adopted); marks it close-on-exec so that it is not passed on further.
///
/// Fails with [`Errno::BADF`] if `raw` is not open, [`Errno::NOTSOCK`] if it is not a socket and
/// [`Errno::STALE`] if it is another socket than the parent meant.
///
/// # Safety
///
/// Nothing else in this process may own or use descriptor `raw` (the caller adopts it exactly
/// once, as the parent intended, and no other code in the process refers to that number).
pub unsafe fn adopt_inherited_socket(raw: i32, expected_ino: u64) -> Result<OwnedFd> {
    if raw < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the caller guarantees nobody else owns `raw`; the borrow ends before we adopt it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_getfd(borrowed)?;
    let stat = rustix::fs::fstat(borrowed)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(Errno::NOTSOCK);
    }
    if stat.st_ino != expected_ino {
        return Err(Errno::STALE);
    }
    // SAFETY: `raw` is open (checked above) and the caller guarantees that this process hands its
    // ownership to us alone.
    let owned = unsafe { <OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

mod raw {
    //! The raw `getsockopt(SO_PEERPIDFD)` syscall, which rustix does not provide.
    //!
    //! The x86-64 Linux calling convention: number in `rax`, arguments in `rdi, rsi, rdx, r10,
    //! r8`, result in `rax`, `rcx` and `r11` clobbered, `-4095..=-1` an errno.

    use core::arch::asm;

    use linux_raw_sys::general::__NR_getsockopt;
    use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    use crate::{Errno, Result};

    /// `SOL_SOCKET` (`asm-generic/socket.h`), written out because this crate does not enable
    /// linux-raw-sys's `net` module.
    const SOL_SOCKET: usize = 1;
    /// `SO_PEERPIDFD` (`asm-generic/socket.h`, Linux 6.5).
    const SO_PEERPIDFD: usize = 77;

    pub(super) fn getsockopt_peer_pidfd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
        let mut value: i32 = -1;
        let mut len: u32 = size_of::<i32>() as u32;
        let ret: isize;
        // SAFETY: `value` and `len` are live locals the kernel writes (4 bytes each, `len` says
        // 4); `sock` is a borrowed, open descriptor; getsockopt invalidates nothing else. The asm
        // follows the x86-64 Linux syscall ABI and touches no stack.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") __NR_getsockopt as isize => ret,
                in("rdi") sock.as_raw_fd() as isize,
                in("rsi") SOL_SOCKET,
                in("rdx") SO_PEERPIDFD,
                in("r10") core::ptr::addr_of_mut!(value),
                in("r8") core::ptr::addr_of_mut!(len),
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        if (-4095..0).contains(&ret) {
            return Err(Errno::from_raw_os_error(-ret as i32));
        }
        if len as usize != size_of::<i32>() || value < 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: on success the kernel installed a new descriptor `value` in this process's
        // table for us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(value) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_pid_parses() {
        assert_eq!(
            parse_fdinfo_pid(b"pos:\t0\nflags:\t02000002\nPid:\t4242\nNSpid:\t4242\n")
                .map(Pid::as_raw_nonzero)
                .map(|p| p.get()),
            Ok(4242)
        );
        assert_eq!(parse_fdinfo_pid(b"Pid:\t-1\n"), Err(Errno::SRCH));
        assert_eq!(parse_fdinfo_pid(b"Pid:\tx\n"), Err(Errno::INVAL));
        assert_eq!(parse_fdinfo_pid(b"flags: 0\n"), Err(Errno::INVAL));
    }

    #[test]
    fn peer_pidfd_of_socketpair_names_this_process() {
        let (a, _b) = crate::socket::socketpair_stream().unwrap();
        match peer_pidfd(a.as_fd()) {
            Ok(pidfd) => {
                assert!(pidfd_is_alive(pidfd.as_fd()).unwrap());
                assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), crate::process::getpid());
            }
            // Kernels before 6.5.
            Err(e) => assert_eq!(e, Errno::NOPROTOOPT),
        }
    }
}
