//! Doorbells: wake-up descriptors that two processes share and that no peer can make block.
//!
//! A ring side driven by a reactor sleeps until a descriptor becomes readable, and its peer makes
//! it readable after a publish. An `eventfd` looks made for this, but both processes then hold the
//! same *open file description*, and the file status flags (`O_NONBLOCK`) and the counter live
//! there: a peer can clear `O_NONBLOCK` and saturate the counter, and the next `write(2)` of the
//! waker blocks for ever (Linux has no per-call non-blocking write for eventfds: `pwritev2` with
//! `RWF_NOWAIT` fails with `EOPNOTSUPP` on them).
//!
//! A doorbell is instead one end of a Unix stream socket pair, and every call here chooses
//! non-blocking per call (`MSG_DONTWAIT`, `MSG_NOSIGNAL`), so no flag a peer sets through a
//! shared descriptor changes what these calls do:
//!
//! - [`ring`] sends one byte to the other end. A full buffer ([`Errno::AGAIN`]) means the other end
//!   already has unread bytes, so it is readable and the wake-up is not lost; it is reported as
//!   success.
//! - [`drain`] takes up to 64 pending bytes. A peer that keeps ringing can make the owner see a
//!   spurious wake-up, never an unbounded loop.
//! - End-of-stream (the peer closed or shut down its end) is reported as [`Drained::HungUp`], so a
//!   waiter learns that nobody will ring again.
//!
//! # References
//!  - [Linux `unix(7)`]
//!  - [Linux `send(2)`], `MSG_DONTWAIT`
//!
//! [Linux `unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html
//! [Linux `send(2)`]: https://man7.org/linux/man-pages/man2/send.2.html

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::{Errno, Result};

/// What [`drain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing was pending.
    Empty,
    /// At least one ring was pending (and up to 64 were taken).
    Rung,
    /// The other end is closed or shut down: it will never ring again.
    HungUp,
}

/// A connected pair of doorbell ends (`socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`): ringing
/// one makes the other readable.
pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    crate::socket::socketpair_stream()
}

/// Rings the other end of doorbell `fd`: `send(fd, [1], MSG_DONTWAIT | MSG_NOSIGNAL)`.
///
/// Never blocks, whatever the descriptor's flags. A full buffer counts as success (a ring is
/// already pending there).
///
/// # Errors
///
/// [`Errno::PIPE`] or [`Errno::CONNRESET`] once the other end is closed; [`Errno::NOTSOCK`] if `fd`
/// is not a socket.
#[inline]
pub fn ring(fd: BorrowedFd<'_>) -> Result<()> {
    match crate::socket::send(fd, &[1], SendFlags::DONTWAIT) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes the rings pending on doorbell `fd` (up to 64): `recv(fd, buf, MSG_DONTWAIT)`.
///
/// Never blocks, whatever the descriptor's flags.
///
/// # Errors
///
/// [`Errno::NOTSOCK`] if `fd` is not a socket, and other `recv(2)` errors. `EINTR` is retried.
pub fn drain(fd: BorrowedFd<'_>) -> Result<Drained> {
    let mut buf = [0u8; 64];
    loop {
        return match crate::socket::recv(fd, &mut buf, RecvFlags::DONTWAIT) {
            Ok(0) => Ok(Drained::HungUp),
            Ok(_) => Ok(Drained::Rung),
            Err(Errno::AGAIN) => Ok(Drained::Empty),
            Err(Errno::INTR) => continue,
            Err(e) => Err(e),
        };
    }
}

/// Whether `fd` can serve as a doorbell: a Unix stream socket (`SO_DOMAIN`, `SO_TYPE`).
///
/// For checking descriptors a peer hands over before registering them with a reactor.
pub fn is_doorbell(fd: BorrowedFd<'_>) -> bool {
    matches!(
        rustix::net::sockopt::socket_domain(fd),
        Ok(AddressFamily::UNIX)
    ) && matches!(
        rustix::net::sockopt::socket_type(fd),
        Ok(SocketType::STREAM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    #[test]
    fn ring_then_drain() {
        let (a, b) = pair().unwrap();
        assert!(is_doorbell(a.as_fd()));
        assert_eq!(drain(b.as_fd()).unwrap(), Drained::Empty);
        ring(a.as_fd()).unwrap();
        ring(a.as_fd()).unwrap();
        assert_eq!(drain(b.as_fd()).unwrap(), Drained::Rung);
        assert_eq!(drain(b.as_fd()).unwrap(), Drained::Empty);
        drop(a);
        assert_eq!(drain(b.as_fd()).unwrap(), Drained::HungUp);
        assert!(ring(b.as_fd()).is_err());
    }

    #[test]
    fn blocking_flags_and_a_full_buffer_do_not_block() {
        let (a, b) = pair().unwrap();
        // What a hostile peer holding the same open file descriptions would do: clear
        // O_NONBLOCK on both and fill the buffer towards `b`.
        crate::fd::set_nonblocking(a.as_fd(), false).unwrap();
        crate::fd::set_nonblocking(b.as_fd(), false).unwrap();
        let mut n = 0u64;
        while crate::socket::send(a.as_fd(), &[0; 4096], SendFlags::DONTWAIT).is_ok() {
            n += 1;
            assert!(n < 1 << 20, "the socket buffer never filled");
        }
        // Full: the ring is reported done (a ring is pending), without blocking.
        ring(a.as_fd()).unwrap();
        // Empty the other way: drain returns at once although the descriptor is blocking.
        assert_eq!(drain(a.as_fd()).unwrap(), Drained::Empty);
        assert_eq!(drain(b.as_fd()).unwrap(), Drained::Rung);
    }

    #[test]
    fn other_descriptors_are_not_doorbells() {
        let e = crate::eventfd::eventfd(0, crate::eventfd::EventfdFlags::empty()).unwrap();
        assert!(!is_doorbell(e.as_fd()));
        let (r, _w) = crate::pipe::pipe().unwrap();
        assert!(!is_doorbell(r.as_fd()));
    }
}
