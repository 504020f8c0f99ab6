//! POSIX message queues (`mq_overview(7)`), on raw syscalls since rustix has none.
//!
//! A queue holds up to `maxmsg` messages of up to `msgsize` bytes each, delivered highest priority
//! first (FIFO within a priority). On Linux an mq descriptor is an ordinary file descriptor: it can
//! be polled, and passed to another process over `SCM_RIGHTS`. flowipc opens each queue under a
//! random name, unlinks the name at once with [`mq_unlink`] and passes the descriptor, so no name
//! survives a crash; the queue lives as long as a descriptor refers to it.
//!
//! Names: the C library's `mq_open("/name")` strips the leading `/` before calling the kernel.
//! These functions accept the name with or without that one leading `/`, and reject an empty name
//! or one with any other `/` ([`Errno::INVAL`]); at most 255 bytes.
//!
//! Timeouts: the kernel takes an absolute `CLOCK_REALTIME` deadline. [`mq_timedsend`] and
//! [`mq_timedreceive`] take a relative `Duration` and add it to the current real time, so a jump
//! of the wall clock during the wait (e.g. NTP stepping it) lengthens or shortens the wait.
//!
//! Limits on this kind of machine (`/proc/sys/fs/mqueue`): `msg_max` 10 and `msgsize_max` 8192 for
//! unprivileged processes (larger attributes give [`Errno::INVAL`]), and 819200 bytes of queues per
//! user (`RLIMIT_MSGQUEUE`; exceeding it gives [`Errno::MFILE`]).

mod raw;

use core::ffi::CStr;
use core::time::Duration;

use rustix::fd::{BorrowedFd, OwnedFd};

use crate::{Errno, Result};

pub use rustix::fs::{Mode, OFlags};

/// The attributes of a queue: the kernel's `struct mq_attr`.
///
/// Only [`maxmsg`](MqAttr::maxmsg) and [`msgsize`](MqAttr::msgsize) matter when creating a queue,
/// and only [`flags`](MqAttr::flags) (`O_NONBLOCK` or 0) when setting attributes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqAttr {
    /// `mq_flags`: [`MqAttr::NONBLOCK`] or 0.
    pub flags: i64,
    /// `mq_maxmsg`: the most messages the queue holds.
    pub maxmsg: i64,
    /// `mq_msgsize`: the largest message in bytes.
    pub msgsize: i64,
    /// `mq_curmsgs`: messages currently queued (read-only).
    pub curmsgs: i64,
    reserved: [i64; 4],
}

// Layout of the kernel's `struct mq_attr` on x86-64: four `long`s and `long __reserved[4]`.
const _: () = {
    use core::mem::offset_of;
    assert!(size_of::<core::ffi::c_long>() == size_of::<i64>());
    assert!(size_of::<MqAttr>() == 64);
    assert!(align_of::<MqAttr>() == 8);
    assert!(offset_of!(MqAttr, flags) == 0);
    assert!(offset_of!(MqAttr, maxmsg) == 8);
    assert!(offset_of!(MqAttr, msgsize) == 16);
    assert!(offset_of!(MqAttr, curmsgs) == 24);
    assert!(offset_of!(MqAttr, reserved) == 32);
};

impl MqAttr {
    /// The value of [`flags`](MqAttr::flags) meaning non-blocking (`O_NONBLOCK`).
    pub const NONBLOCK: i64 = linux_raw_sys::general::O_NONBLOCK as i64;

    /// Attributes for creating a queue of `maxmsg` messages of up to `msgsize` bytes.
    pub const fn new(maxmsg: i64, msgsize: i64) -> Self {
        MqAttr {
            flags: 0,
            maxmsg,
            msgsize,
            curmsgs: 0,
            reserved: [0; 4],
        }
    }

    /// Whether [`flags`](MqAttr::flags) has `O_NONBLOCK`.
    pub const fn is_nonblocking(&self) -> bool {
        self.flags & Self::NONBLOCK != 0
    }
}

/// Removes one leading '/', then checks the name is non-empty and has no other '/'.
fn kernel_name(name: &CStr) -> Result<&CStr> {
    let bytes = name.to_bytes_with_nul();
    let name = match bytes {
        [b'/', rest @ ..] => CStr::from_bytes_with_nul(rest).map_err(|_| Errno::INVAL)?,
        _ => name,
    };
    if name.is_empty() || name.to_bytes().contains(&b'/') {
        return Err(Errno::INVAL);
    }
    Ok(name)
}

/// `mq_open(name, flags | O_CLOEXEC, mode, attr)`—opens or creates a message queue.
///
/// `flags` holds the access mode ([`OFlags::RDONLY`], [`OFlags::WRONLY`] or [`OFlags::RDWR`]) and
/// optionally [`OFlags::CREATE`], [`OFlags::EXCL`], [`OFlags::NONBLOCK`]; close-on-exec is always
/// added. `mode` and `attr` apply only when the queue is created; `attr: None` gives the system
/// defaults. See the [module docs](self) for names and limits.
///
/// # Errors
///
/// [`Errno::EXIST`] (`CREATE | EXCL` on an existing name), [`Errno::NOENT`], [`Errno::INVAL`] (bad
/// name or attributes over the limits), [`Errno::MFILE`] (per-user byte limit, or descriptor
/// table full), [`Errno::NOSPC`] (system-wide queue count), [`Errno::ACCESS`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use flowipc_sys::mq::{self, Mode, MqAttr, OFlags};
/// use flowipc_sys::{AsFd, Errno};
///
/// let name = format!("/flowipc-doc-{}", std::process::id());
/// let name = std::ffi::CString::new(name).unwrap();
/// let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
/// let q = mq::mq_open(&name, flags, Mode::from_bits_truncate(0o600), Some(&MqAttr::new(4, 64)))?;
/// mq::mq_unlink(&name)?; // the descriptor keeps the queue alive
///
/// mq::mq_send(q.as_fd(), b"hi", 5)?;
/// let mut buf = [0u8; 64]; // at least the queue's msgsize
/// assert_eq!(mq::mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::from_secs(1)))?, (2, 5));
/// let empty = mq::mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::from_millis(1)));
/// assert_eq!(empty, Err(Errno::TIMEDOUT));
/// # Ok::<(), Errno>(())
/// ```
///
/// # References
///  - [Linux `mq_open(3)`]
///  - [Linux `mq_overview(7)`]
///
/// [Linux `mq_open(3)`]: https://man7.org/linux/man-pages/man3/mq_open.3.html
/// [Linux `mq_overview(7)`]: https://man7.org/linux/man-pages/man7/mq_overview.7.html
pub fn mq_open(name: &CStr, flags: OFlags, mode: Mode, attr: Option<&MqAttr>) -> Result<OwnedFd> {
    let name = kernel_name(name)?;
    raw::mq_open(name, (flags | OFlags::CLOEXEC).bits(), mode.bits(), attr)
}

/// `mq_unlink(name)`—removes a queue's name; open descriptors keep working.
///
/// The queue itself is freed when its last descriptor is closed.
///
/// # References
///  - [Linux `mq_unlink(3)`]
///
/// [Linux `mq_unlink(3)`]: https://man7.org/linux/man-pages/man3/mq_unlink.3.html
pub fn mq_unlink(name: &CStr) -> Result<()> {
    raw::mq_unlink(kernel_name(name)?)
}

/// `mq_send(fd, msg, prio)`—queues a message, blocking while the queue is full.
///
/// Errors as for [`mq_timedsend`], without the timeout.
///
/// # References
///  - [Linux `mq_send(3)`]
///
/// [Linux `mq_send(3)`]: https://man7.org/linux/man-pages/man3/mq_send.3.html
pub fn mq_send(fd: BorrowedFd<'_>, msg: &[u8], prio: u32) -> Result<()> {
    raw::mq_timedsend(fd, msg, prio, None)
}

/// `mq_timedsend(fd, msg, prio, now + timeout)`—queues a message, waiting at most `timeout` while
/// the queue is full.
///
/// `timeout` is relative and converted to the absolute `CLOCK_REALTIME` deadline the kernel takes;
/// `None` waits without limit (like [`mq_send`]). `prio` must be below 32768.
///
/// # Errors
///
/// [`Errno::AGAIN`] (queue full, non-blocking), [`Errno::TIMEDOUT`], [`Errno::MSGSIZE`] (`msg`
/// longer than the queue's `msgsize`), [`Errno::BADF`] (not open for writing), [`Errno::INTR`].
///
/// # References
///  - [Linux `mq_send(3)`]
///
/// [Linux `mq_send(3)`]: https://man7.org/linux/man-pages/man3/mq_send.3.html
pub fn mq_timedsend(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    prio: u32,
    timeout: Option<Duration>,
) -> Result<()> {
    let deadline = timeout.map(crate::time::realtime_deadline);
    raw::mq_timedsend(fd, msg, prio, deadline.as_ref())
}

/// `mq_receive(fd, buf, &prio)`—takes the oldest highest-priority message, blocking while the
/// queue is empty. Returns (message length, priority).
///
/// Errors as for [`mq_timedreceive`], without the timeout.
///
/// # References
///  - [Linux `mq_receive(3)`]
///
/// [Linux `mq_receive(3)`]: https://man7.org/linux/man-pages/man3/mq_receive.3.html
pub fn mq_receive(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, u32)> {
    raw::mq_timedreceive(fd, buf, None)
}

/// `mq_timedreceive(fd, buf, &prio, now + timeout)`—takes the oldest highest-priority message,
/// waiting at most `timeout` while the queue is empty. Returns (message length, priority).
///
/// `timeout` is relative, converted to an absolute `CLOCK_REALTIME` deadline; `None` waits without
/// limit.
///
/// # Errors
///
/// [`Errno::MSGSIZE`] (`buf` shorter than the queue's `msgsize`, even if the message would fit),
/// [`Errno::AGAIN`] (queue empty, non-blocking), [`Errno::TIMEDOUT`], [`Errno::BADF`] (not open
/// for reading), [`Errno::INTR`].
///
/// # References
///  - [Linux `mq_receive(3)`]
///
/// [Linux `mq_receive(3)`]: https://man7.org/linux/man-pages/man3/mq_receive.3.html
pub fn mq_timedreceive(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<(usize, u32)> {
    let deadline = timeout.map(crate::time::realtime_deadline);
    raw::mq_timedreceive(fd, buf, deadline.as_ref())
}

/// The absolute deadline that has always passed (the epoch): a timed call with it never sleeps.
const EXPIRED: rustix::time::Timespec = rustix::time::Timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

/// `mq_timedsend(fd, msg, prio, <the epoch>)`—queues a message if there is room now, and never
/// blocks, whatever the descriptor's `O_NONBLOCK` flag says.
///
/// The flag belongs to the open file description, which every process holding a duplicate of `fd`
/// shares and can change; a deadline that has already passed makes the call non-blocking per
/// call instead. A full queue gives [`Errno::AGAIN`] in both cases.
///
/// # Errors
///
/// [`Errno::AGAIN`] (queue full), [`Errno::MSGSIZE`], [`Errno::BADF`], [`Errno::INTR`].
///
/// # References
///  - [Linux `mq_send(3)`]
///
/// [Linux `mq_send(3)`]: https://man7.org/linux/man-pages/man3/mq_send.3.html
pub fn mq_try_send(fd: BorrowedFd<'_>, msg: &[u8], prio: u32) -> Result<()> {
    match raw::mq_timedsend(fd, msg, prio, Some(&EXPIRED)) {
        Err(Errno::TIMEDOUT) => Err(Errno::AGAIN),
        other => other,
    }
}

/// `mq_timedreceive(fd, buf, &prio, <the epoch>)`—takes a message if one is queued now, and never
/// blocks, whatever the descriptor's `O_NONBLOCK` flag says (see [`mq_try_send`]).
///
/// # Errors
///
/// [`Errno::AGAIN`] (queue empty), [`Errno::MSGSIZE`], [`Errno::BADF`], [`Errno::INTR`].
///
/// # References
///  - [Linux `mq_receive(3)`]
///
/// [Linux `mq_receive(3)`]: https://man7.org/linux/man-pages/man3/mq_receive.3.html
pub fn mq_try_receive(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, u32)> {
    match raw::mq_timedreceive(fd, buf, Some(&EXPIRED)) {
        Err(Errno::TIMEDOUT) => Err(Errno::AGAIN),
        other => other,
    }
}

/// `mq_getsetattr(fd, NULL, &attr)`—the queue's attributes and current message count.
///
/// # References
///  - [Linux `mq_getattr(3)`]
///
/// [Linux `mq_getattr(3)`]: https://man7.org/linux/man-pages/man3/mq_getattr.3.html
#[doc(alias = "mq_getsetattr")]
pub fn mq_getattr(fd: BorrowedFd<'_>) -> Result<MqAttr> {
    raw::mq_getsetattr(fd, None)
}

/// `mq_getsetattr(fd, attr, &old)`—sets the descriptor's flags; returns the attributes from before.
///
/// Only `attr.flags` is used (0 or [`MqAttr::NONBLOCK`]; anything else is [`Errno::INVAL`]); the
/// size fields of a queue are fixed at creation. The flag belongs to the open file description,
/// like `O_NONBLOCK` of [`crate::fd::set_nonblocking`].
///
/// # References
///  - [Linux `mq_getattr(3)`]
///
/// [Linux `mq_getattr(3)`]: https://man7.org/linux/man-pages/man3/mq_getattr.3.html
#[doc(alias = "mq_getsetattr")]
pub fn mq_setattr(fd: BorrowedFd<'_>, attr: &MqAttr) -> Result<MqAttr> {
    raw::mq_getsetattr(fd, Some(attr))
}

/// `mq_setattr` with only `O_NONBLOCK` changed—makes sends and receives on `fd` fail with
/// [`Errno::AGAIN`] instead of blocking (or block again).
///
/// # References
///  - [Linux `mq_getattr(3)`]
///
/// [Linux `mq_getattr(3)`]: https://man7.org/linux/man-pages/man3/mq_getattr.3.html
#[doc(alias = "mq_setattr")]
pub fn mq_set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> Result<()> {
    let mut attr = MqAttr::default();
    if nonblocking {
        attr.flags = MqAttr::NONBLOCK;
    }
    mq_setattr(fd, &attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(kernel_name(c"/q").unwrap(), c"q");
        assert_eq!(kernel_name(c"q").unwrap(), c"q");
        assert_eq!(kernel_name(c"/"), Err(Errno::INVAL));
        assert_eq!(kernel_name(c""), Err(Errno::INVAL));
        assert_eq!(kernel_name(c"//q"), Err(Errno::INVAL));
        assert_eq!(kernel_name(c"/a/b"), Err(Errno::INVAL));
    }
}
