//! Unix stream sockets: socket pairs, descriptor passing (`SCM_RIGHTS`), peer credentials, `poll`.
//!
//! Descriptors travel as `SCM_RIGHTS` control messages attached to the bytes of a `sendmsg`. The
//! kernel accepts at most [`MAX_FDS_PER_MESSAGE`] (`SCM_MAX_FD`, 253) per message. On a stream
//! socket they are delivered with the first byte of the data they were sent with, so every message
//! carrying descriptors must carry at least one byte. Received descriptors are always close-on-exec
//! (`MSG_CMSG_CLOEXEC`), so a later `exec` does not leak them into another program. If the receiver
//! offers less room than the sender sent (`MSG_CTRUNC`), the kernel drops the excess; flowipc then
//! closes the ones that did arrive and reports [`Errno::MSGSIZE`], so a truncation never leaks a
//! descriptor and never goes unnoticed.
//!
//! [`send_vectored_with_fds`] and [`recv_vectored_with_fds`] gather from and scatter into several
//! buffers in one system call, so a frame header and its payload need not be copied next to each
//! other first.
//!
//! Sends always add `MSG_NOSIGNAL`: a peer that closed its end yields [`Errno::PIPE`], never a
//! process-killing `SIGPIPE`.
//!
//! See `unix(7)`, `sendmsg(2)`, `recvmsg(2)` and `cmsg(3)`.

use core::fmt;
use core::mem::MaybeUninit;
use core::time::Duration;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SocketFlags, SocketType,
};

use crate::{Errno, Result};

pub use crate::fd::set_nonblocking;
pub use rustix::event::{PollFd, PollFlags};
pub use rustix::io::{IoSlice, IoSliceMut};
pub use rustix::net::{RecvFlags, SendFlags, Shutdown, UCred};

/// The most descriptors one message can carry: Linux's `SCM_MAX_FD`.
///
/// Sending more fails with [`Errno::INVAL`], the error the kernel itself returns.
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// `CMSG_LEN(0)` on x86-64: `struct cmsghdr { size_t len; int level; int type; }` is 16 bytes and
/// already 8-byte aligned.
const CMSG_HDR_LEN: usize = 16;

/// Control buffer big enough for one `SCM_RIGHTS` message of [`MAX_FDS_PER_MESSAGE`] descriptors.
const CMSG_BUF_LEN: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE));

const _: () = assert!(CMSG_BUF_LEN >= CMSG_HDR_LEN + MAX_FDS_PER_MESSAGE * 4);

/// A control-message buffer aligned for `cmsghdr`, so rustix uses all of it from its first byte.
#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; CMSG_BUF_LEN]);

impl CmsgBuf {
    const fn new() -> Self {
        CmsgBuf([MaybeUninit::uninit(); CMSG_BUF_LEN])
    }
}

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)`—creates a connected pair of Unix stream
/// sockets.
///
/// # References
///  - [Linux `socketpair(2)`]
///  - [Linux `unix(7)`]
///
/// [Linux `socketpair(2)`]: https://man7.org/linux/man-pages/man2/socketpair.2.html
/// [Linux `unix(7)`]: https://man7.org/linux/man-pages/man7/unix.7.html
#[doc(alias = "socketpair")]
pub fn socketpair_stream() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// `send(sock, bytes, flags | MSG_NOSIGNAL)`—sends bytes.
///
/// Returns how many bytes the kernel took, which on a stream socket may be fewer than
/// `bytes.len()`. With [`SendFlags::DONTWAIT`] a full socket buffer yields [`Errno::AGAIN`].
///
/// # References
///  - [Linux `send(2)`]
///
/// [Linux `send(2)`]: https://man7.org/linux/man-pages/man2/send.2.html
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], flags: SendFlags) -> Result<usize> {
    rustix::net::send(sock, bytes, flags | SendFlags::NOSIGNAL)
}

/// `recv(sock, buf, flags)`—receives bytes.
///
/// Returns the number of bytes written to `buf`; 0 means the peer shut down its sending side (or
/// `buf` is empty). With [`RecvFlags::DONTWAIT`] an empty socket yields [`Errno::AGAIN`].
/// Descriptors sent with these bytes are discarded (closed) by the kernel: use
/// [`recv_with_fds`] on a socket that may carry them.
///
/// # References
///  - [Linux `recv(2)`]
///
/// [Linux `recv(2)`]: https://man7.org/linux/man-pages/man2/recv.2.html
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], flags: RecvFlags) -> Result<usize> {
    rustix::net::recv(sock, buf, flags).map(|(n, _)| n)
}

/// `sendmsg(sock, {bytes, SCM_RIGHTS(fds)}, flags | MSG_NOSIGNAL)`—sends bytes with descriptors
/// attached.
///
/// `fds` may hold 0 to [`MAX_FDS_PER_MESSAGE`] descriptors; more fails with [`Errno::INVAL`]
/// before any syscall. When `fds` is not empty `bytes` must not be empty either ([`Errno::INVAL`]),
/// since a stream socket delivers descriptors with a byte. The descriptors stay open in the sender;
/// the receiver gets new descriptors for the same open files. Returns the number of bytes sent: on
/// a short send the descriptors went with the first part, so send the rest with [`send`].
///
/// # Examples
///
/// ```
/// use flowipc_sys::socket::{
///     recv_with_fds, send_with_fds, socketpair_stream, RecvFds, RecvFlags, SendFlags,
/// };
/// use flowipc_sys::{eventfd, fd, AsFd};
///
/// let (a, b) = socketpair_stream()?;
/// let ev = eventfd::eventfd(7, eventfd::EventfdFlags::empty())?;
/// send_with_fds(a.as_fd(), b"here", &[ev.as_fd()], SendFlags::empty())?;
///
/// let mut buf = [0u8; 16];
/// let mut fds = RecvFds::new();
/// let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds, RecvFlags::empty())?;
/// assert_eq!(&buf[..n], b"here");
/// let received = fds.drain().next().unwrap();
/// assert!(fd::is_cloexec(received.as_fd())?);
/// assert_eq!(eventfd::eventfd_read(received.as_fd())?, 7); // same counter as `ev`
/// # Ok::<(), flowipc_sys::Errno>(())
/// ```
///
/// # References
///  - [Linux `sendmsg(2)`]
///  - [Linux `unix(7)`, `SCM_RIGHTS`]
///
/// [Linux `sendmsg(2)`]: https://man7.org/linux/man-pages/man2/sendmsg.2.html
/// [Linux `unix(7)`, `SCM_RIGHTS`]: https://man7.org/linux/man-pages/man7/unix.7.html
#[doc(alias = "sendmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> Result<usize> {
    send_vectored_with_fds(sock, &[IoSlice::new(bytes)], fds, flags)
}

/// `sendmsg(sock, {bufs..., SCM_RIGHTS(fds)}, flags | MSG_NOSIGNAL)`—sends several buffers as one
/// stretch of bytes (gather), with descriptors attached.
///
/// Like [`send_with_fds`], but the bytes are the concatenation of `bufs`, so a header and a
/// payload kept apart go out in one system call without being copied together first. `fds` may
/// hold 0 to [`MAX_FDS_PER_MESSAGE`] descriptors ([`Errno::INVAL`] beyond, before any syscall);
/// when it is not empty the buffers must not all be empty ([`Errno::INVAL`]). Returns the number
/// of bytes sent, counted across `bufs`: a stream socket may take fewer than all of them (always
/// so with [`SendFlags::DONTWAIT`] and a full socket buffer, or when a signal interrupts a
/// blocking send after some bytes went). The descriptors went with the first byte; send the rest
/// without them. At most `UIO_MAXIOV` (1024) buffers ([`Errno::MSGSIZE`] from the kernel beyond).
///
/// # Examples
///
/// ```
/// use flowipc_sys::socket::{
///     recv_with_fds, send_vectored_with_fds, socketpair_stream, IoSlice, RecvFds, RecvFlags,
///     SendFlags,
/// };
/// use flowipc_sys::{eventfd, AsFd};
///
/// let (a, b) = socketpair_stream()?;
/// let ev = eventfd::eventfd(3, eventfd::EventfdFlags::empty())?;
/// let parts = [IoSlice::new(b"head:"), IoSlice::new(b"body")];
/// assert_eq!(send_vectored_with_fds(a.as_fd(), &parts, &[ev.as_fd()], SendFlags::empty())?, 9);
///
/// let mut buf = [0u8; 16];
/// let mut fds = RecvFds::new();
/// let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds, RecvFlags::empty())?;
/// assert_eq!(&buf[..n], b"head:body");
/// assert_eq!(fds.len(), 1);
/// # Ok::<(), flowipc_sys::Errno>(())
/// ```
///
/// # References
///  - [Linux `sendmsg(2)`]
///  - [Linux `unix(7)`, `SCM_RIGHTS`]
///
/// [Linux `sendmsg(2)`]: https://man7.org/linux/man-pages/man2/sendmsg.2.html
/// [Linux `unix(7)`, `SCM_RIGHTS`]: https://man7.org/linux/man-pages/man7/unix.7.html
#[doc(alias = "sendmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub fn send_vectored_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE || (!fds.is_empty() && bufs.iter().all(|b| b.is_empty())) {
        return Err(Errno::INVAL);
    }
    let mut space = CmsgBuf::new();
    let mut control = SendAncillaryBuffer::new(&mut space.0);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // Unreachable: the buffer is sized for MAX_FDS_PER_MESSAGE descriptors.
        return Err(Errno::NOBUFS);
    }
    rustix::net::sendmsg(sock, bufs, &mut control, flags | SendFlags::NOSIGNAL)
}

/// `recvmsg(sock, {buf, SCM_RIGHTS}, flags | MSG_CMSG_CLOEXEC)`—receives bytes and the descriptors
/// sent with them.
///
/// Received descriptors are appended to `fds`, close-on-exec. The kernel is offered room for
/// [`fds.remaining()`](RecvFds::remaining) descriptors only, so a [`RecvFds::with_limit`] container
/// bounds how many one call accepts. Returns the number of bytes written to `buf` (0: the peer shut
/// down its sending side).
///
/// # Errors
///
/// - [`Errno::MSGSIZE`] if the message carried more descriptors than `fds` had room for
///   (`MSG_CTRUNC`). The kernel has dropped the excess; this function closes the ones that did
///   arrive in this call (`fds` is left as it was before the call), so nothing leaks. The bytes of
///   that message were consumed, so a stream protocol should treat the connection as broken.
/// - [`Errno::AGAIN`] with [`RecvFlags::DONTWAIT`] when nothing is waiting; [`Errno::INTR`] if a
///   signal interrupted the wait.
///
/// # References
///  - [Linux `recvmsg(2)`]
///  - [Linux `unix(7)`, `SCM_RIGHTS`]
///  - [Linux `cmsg(3)`]
///
/// [Linux `recvmsg(2)`]: https://man7.org/linux/man-pages/man2/recvmsg.2.html
/// [Linux `unix(7)`, `SCM_RIGHTS`]: https://man7.org/linux/man-pages/man7/unix.7.html
/// [Linux `cmsg(3)`]: https://man7.org/linux/man-pages/man3/cmsg.3.html
#[doc(alias = "recvmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut RecvFds,
    flags: RecvFlags,
) -> Result<usize> {
    recv_vectored_with_fds(sock, &mut [IoSliceMut::new(buf)], fds, flags)
}

/// `recvmsg(sock, {bufs..., SCM_RIGHTS}, flags | MSG_CMSG_CLOEXEC)`—receives bytes into several
/// buffers in turn (scatter), and the descriptors sent with them.
///
/// Like [`recv_with_fds`], with the same descriptor handling and errors, but the bytes fill
/// `bufs` one after the other: the first buffer is filled before anything lands in the second.
/// Returns the total number of bytes received (0: the peer shut down its sending side, or all
/// buffers are empty). With [`RecvFlags::WAITALL`] a blocking call waits until every buffer is
/// full, the peer shuts down, descriptors arrive (the kernel ends a read after the bytes that
/// carried them), or a signal interrupts it after some bytes arrived.
///
/// # Examples
///
/// ```
/// use flowipc_sys::socket::{
///     recv_vectored_with_fds, send, socketpair_stream, IoSliceMut, RecvFds, RecvFlags,
///     SendFlags,
/// };
/// use flowipc_sys::AsFd;
///
/// let (a, b) = socketpair_stream()?;
/// send(a.as_fd(), b"12345678payload", SendFlags::empty())?;
/// let (mut header, mut body) = ([0u8; 8], [0u8; 16]);
/// let mut fds = RecvFds::new();
/// let mut bufs = [IoSliceMut::new(&mut header), IoSliceMut::new(&mut body)];
/// let n = recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut fds, RecvFlags::empty())?;
/// assert_eq!((n, &header, &body[..n - 8]), (15, b"12345678", &b"payload"[..]));
/// # Ok::<(), flowipc_sys::Errno>(())
/// ```
///
/// # References
///  - [Linux `recvmsg(2)`]
///  - [Linux `unix(7)`, `SCM_RIGHTS`]
///  - [Linux `cmsg(3)`]
///
/// [Linux `recvmsg(2)`]: https://man7.org/linux/man-pages/man2/recvmsg.2.html
/// [Linux `unix(7)`, `SCM_RIGHTS`]: https://man7.org/linux/man-pages/man7/unix.7.html
/// [Linux `cmsg(3)`]: https://man7.org/linux/man-pages/man3/cmsg.3.html
#[doc(alias = "recvmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub fn recv_vectored_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &mut [IoSliceMut<'_>],
    fds: &mut RecvFds,
    flags: RecvFlags,
) -> Result<usize> {
    let before = fds.len();
    let room = fds.remaining();
    let mut space = CmsgBuf::new();
    // Offer exactly CMSG_LEN(room * 4) bytes, not CMSG_SPACE: with the padding of CMSG_SPACE the
    // kernel could deliver one descriptor more than `room`.
    let control_len = if room == 0 {
        0
    } else {
        CMSG_HDR_LEN + room * size_of::<i32>()
    };
    let mut control = RecvAncillaryBuffer::new(&mut space.0[..control_len]);
    let msg = rustix::net::recvmsg(sock, bufs, &mut control, flags | RecvFlags::CMSG_CLOEXEC)?;
    let mut overflow = false;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            for fd in received {
                // A descriptor that does not fit is dropped (closed) at once; cannot happen given
                // the control length above, but must not leak if it did.
                overflow |= fds.push(fd).is_err();
            }
        }
    }
    if overflow || msg.flags.contains(ReturnFlags::CTRUNC) {
        fds.truncate(before);
        return Err(Errno::MSGSIZE);
    }
    Ok(msg.bytes)
}

/// [`recv_with_fds`] returning the descriptors in a `Vec`; accepts up to [`MAX_FDS_PER_MESSAGE`].
///
/// Errors are those of [`recv_with_fds`]; on error no descriptor stays open.
///
/// # References
///  - [Linux `recvmsg(2)`]
///
/// [Linux `recvmsg(2)`]: https://man7.org/linux/man-pages/man2/recvmsg.2.html
#[cfg(feature = "alloc")]
#[doc(alias = "recvmsg")]
pub fn recv_with_fds_vec(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: RecvFlags,
) -> Result<(usize, alloc::vec::Vec<OwnedFd>)> {
    let mut fds = RecvFds::new();
    let n = recv_with_fds(sock, buf, &mut fds, flags)?;
    Ok((n, fds.into_iter().collect()))
}

/// A fixed-capacity, allocation-free container for descriptors received by [`recv_with_fds`].
///
/// Holds up to [`limit`](RecvFds::limit) descriptors (at most [`MAX_FDS_PER_MESSAGE`]), in arrival
/// order. Dropping it closes whatever it still holds; take descriptors out with
/// [`drain`](RecvFds::drain) or by value with [`into_iter`](IntoIterator::into_iter). It is about
/// 1 KiB, so it can live on the stack.
pub struct RecvFds {
    /// Slots `..len` are `Some`, slots `len..` are `None`.
    slots: [Option<OwnedFd>; MAX_FDS_PER_MESSAGE],
    len: usize,
    limit: usize,
}

impl RecvFds {
    /// An empty container accepting up to [`MAX_FDS_PER_MESSAGE`] descriptors.
    pub const fn new() -> Self {
        Self::with_limit(MAX_FDS_PER_MESSAGE)
    }

    /// An empty container accepting at most `limit` descriptors (clamped to
    /// [`MAX_FDS_PER_MESSAGE`]).
    ///
    /// A receiver that expects few descriptors uses a small limit so that a peer sending more gets
    /// the message rejected ([`Errno::MSGSIZE`] from [`recv_with_fds`]) instead of filling its
    /// descriptor table.
    pub const fn with_limit(limit: usize) -> Self {
        RecvFds {
            slots: [const { None }; MAX_FDS_PER_MESSAGE],
            len: 0,
            limit: if limit < MAX_FDS_PER_MESSAGE {
                limit
            } else {
                MAX_FDS_PER_MESSAGE
            },
        }
    }

    /// How many descriptors it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no descriptor.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most descriptors it accepts.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many more descriptors it accepts: `limit() - len()`.
    pub fn remaining(&self) -> usize {
        self.limit - self.len
    }

    /// The descriptor at `index` (arrival order), if any.
    pub fn get(&self, index: usize) -> Option<BorrowedFd<'_>> {
        self.slots[..self.len].get(index)?.as_ref().map(AsFd::as_fd)
    }

    /// Borrows the held descriptors in arrival order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            slots: self.slots[..self.len].iter(),
        }
    }

    /// Takes out all held descriptors in arrival order, leaving the container empty.
    ///
    /// Descriptors the iterator has not yielded when it is dropped are closed.
    pub fn drain(&mut self) -> Drain<'_> {
        let len = self.len;
        self.len = 0;
        Drain {
            slots: self.slots[..len].iter_mut(),
        }
    }

    /// Closes every held descriptor.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Closes the descriptors from index `len` on; no-op if it holds `len` or fewer.
    pub fn truncate(&mut self, len: usize) {
        while self.len > len {
            self.len -= 1;
            self.slots[self.len] = None;
        }
    }

    /// Appends `fd`, or gives it back if the container is at its limit.
    pub fn push(&mut self, fd: OwnedFd) -> core::result::Result<(), OwnedFd> {
        if self.len >= self.limit {
            return Err(fd);
        }
        self.slots[self.len] = Some(fd);
        self.len += 1;
        Ok(())
    }
}

impl Default for RecvFds {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RecvFds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over the descriptors of a [`RecvFds`], borrowed; from [`RecvFds::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    slots: core::slice::Iter<'a, Option<OwnedFd>>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = BorrowedFd<'a>;

    fn next(&mut self) -> Option<BorrowedFd<'a>> {
        self.slots.next()?.as_ref().map(AsFd::as_fd)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a RecvFds {
    type Item = BorrowedFd<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator taking the descriptors out of a [`RecvFds`]; from [`RecvFds::drain`].
#[derive(Debug)]
pub struct Drain<'a> {
    slots: core::slice::IterMut<'a, Option<OwnedFd>>,
}

impl Iterator for Drain<'_> {
    type Item = OwnedFd;

    fn next(&mut self) -> Option<OwnedFd> {
        self.slots.next()?.take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl ExactSizeIterator for Drain<'_> {}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        // Close what was not taken, so the slots are all `None` again.
        self.slots.by_ref().for_each(|slot| *slot = None);
    }
}

/// Iterator taking the descriptors out of a [`RecvFds`] by value.
#[derive(Debug)]
pub struct IntoIter {
    fds: RecvFds,
    next: usize,
}

impl Iterator for IntoIter {
    type Item = OwnedFd;

    fn next(&mut self) -> Option<OwnedFd> {
        if self.next >= self.fds.len {
            return None;
        }
        let fd = self.fds.slots[self.next].take();
        self.next += 1;
        fd
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.fds.len - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for IntoIter {}

impl IntoIterator for RecvFds {
    type Item = OwnedFd;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter { fds: self, next: 0 }
    }
}

/// `shutdown(sock, how)`—shuts down reading, writing or both on a socket.
///
/// After `Shutdown::Write` the peer reads end-of-stream (0) once it has read all data sent before.
///
/// # References
///  - [Linux `shutdown(2)`]
///
/// [Linux `shutdown(2)`]: https://man7.org/linux/man-pages/man2/shutdown.2.html
pub fn shutdown(sock: BorrowedFd<'_>, how: Shutdown) -> Result<()> {
    rustix::net::shutdown(sock, how)
}

/// `getsockopt(sock, SOL_SOCKET, SO_PEERCRED)`—the pid, uid and gid of the peer process.
///
/// The kernel records these when the connection is made (or the pair created); the peer cannot
/// forge them.
///
/// # References
///  - [Linux `unix(7)`, `SO_PEERCRED`]
///
/// [Linux `unix(7)`, `SO_PEERCRED`]: https://man7.org/linux/man-pages/man7/unix.7.html
#[doc(alias = "SO_PEERCRED")]
pub fn peer_credentials(sock: BorrowedFd<'_>) -> Result<UCred> {
    rustix::net::sockopt::socket_peercred(sock)
}

/// `setsockopt(sock, SOL_SOCKET, SO_SNDBUF, size)`—sets the send buffer size.
///
/// The kernel doubles the value (for bookkeeping) and caps it at `net.core.wmem_max`.
///
/// # References
///  - [Linux `socket(7)`, `SO_SNDBUF`]
///
/// [Linux `socket(7)`, `SO_SNDBUF`]: https://man7.org/linux/man-pages/man7/socket.7.html
#[doc(alias = "SO_SNDBUF")]
pub fn set_send_buffer_size(sock: BorrowedFd<'_>, size: usize) -> Result<()> {
    rustix::net::sockopt::set_socket_send_buffer_size(sock, size)
}

/// `getsockopt(sock, SOL_SOCKET, SO_SNDBUF)`—the send buffer size.
///
/// # References
///  - [Linux `socket(7)`, `SO_SNDBUF`]
///
/// [Linux `socket(7)`, `SO_SNDBUF`]: https://man7.org/linux/man-pages/man7/socket.7.html
#[doc(alias = "SO_SNDBUF")]
pub fn send_buffer_size(sock: BorrowedFd<'_>) -> Result<usize> {
    rustix::net::sockopt::socket_send_buffer_size(sock)
}

/// `setsockopt(sock, SOL_SOCKET, SO_RCVBUF, size)`—sets the receive buffer size.
///
/// The kernel doubles the value (for bookkeeping) and caps it at `net.core.rmem_max`.
///
/// # References
///  - [Linux `socket(7)`, `SO_RCVBUF`]
///
/// [Linux `socket(7)`, `SO_RCVBUF`]: https://man7.org/linux/man-pages/man7/socket.7.html
#[doc(alias = "SO_RCVBUF")]
pub fn set_recv_buffer_size(sock: BorrowedFd<'_>, size: usize) -> Result<()> {
    rustix::net::sockopt::set_socket_recv_buffer_size(sock, size)
}

/// `getsockopt(sock, SOL_SOCKET, SO_RCVBUF)`—the receive buffer size.
///
/// # References
///  - [Linux `socket(7)`, `SO_RCVBUF`]
///
/// [Linux `socket(7)`, `SO_RCVBUF`]: https://man7.org/linux/man-pages/man7/socket.7.html
#[doc(alias = "SO_RCVBUF")]
pub fn recv_buffer_size(sock: BorrowedFd<'_>) -> Result<usize> {
    rustix::net::sockopt::socket_recv_buffer_size(sock)
}

/// `ppoll(fds, timeout)`—waits until one of `fds` is ready or `timeout` passes.
///
/// `None` waits indefinitely. Returns how many entries have events; 0 means the timeout passed.
/// Read each entry's [`PollFd::revents`]. Works on any descriptor (sockets, eventfds, pipes, mq,
/// pidfds).
///
/// # References
///  - [Linux `poll(2)`]
///
/// [Linux `poll(2)`]: https://man7.org/linux/man-pages/man2/poll.2.html
#[doc(alias = "ppoll")]
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<usize> {
    let ts = timeout.map(crate::time::relative);
    rustix::event::poll(fds, ts.as_ref())
}
