//! Raw POSIX message-queue syscalls, which rustix does not provide.
//!
//! This is the only place in flowipc-sys that issues a `syscall` instruction itself. Each shim takes
//! typed, borrowed arguments, so the unsafety stays here: the pointers handed to the kernel come
//! from live references whose lengths are passed alongside. Syscall numbers come from
//! `linux-raw-sys`; the calling convention is the x86-64 Linux one (number in `rax`, arguments in
//! `rdi, rsi, rdx, r10, r8`, result in `rax`, `rcx` and `r11` clobbered, `-4095..=-1` an errno).
//! See `syscall(2)` and the kernel's `ipc/mqueue.c`.

use core::arch::asm;
use core::ffi::CStr;
use core::ptr;

use linux_raw_sys::general::{
    __NR_mq_getsetattr, __NR_mq_open, __NR_mq_timedreceive, __NR_mq_timedsend, __NR_mq_unlink,
    __kernel_timespec,
};
use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::time::Timespec;

use super::MqAttr;
use crate::{Errno, Result};

// rustix's `Timespec` must match the kernel's 64-bit `timespec` for the pointer casts below.
const _: () = {
    assert!(size_of::<Timespec>() == size_of::<__kernel_timespec>());
    assert!(align_of::<Timespec>() == align_of::<__kernel_timespec>());
    assert!(
        core::mem::offset_of!(Timespec, tv_sec) == core::mem::offset_of!(__kernel_timespec, tv_sec)
    );
    assert!(
        core::mem::offset_of!(Timespec, tv_nsec)
            == core::mem::offset_of!(__kernel_timespec, tv_nsec)
    );
};

/// Issues syscall `nr` with five arguments and decodes the result.
///
/// # Safety
///
/// The arguments must be valid for syscall `nr`: every pointer among them must point to memory the
/// kernel may read (or write, for output arguments) for the length the syscall uses, for the whole
/// call, and the syscall must not invalidate memory or descriptors Rust code still relies on.
unsafe fn syscall5(
    nr: u32,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
) -> Result<usize> {
    let ret: isize;
    // SAFETY: the caller guarantees the arguments are valid for `nr`; the asm follows the x86-64
    // Linux syscall ABI, declaring the registers the kernel clobbers (rcx, r11) and touching no stack.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            in("r8") a4,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags),
        );
    }
    if (-4095..0).contains(&ret) {
        Err(Errno::from_raw_os_error(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

fn timeout_ptr(abs_timeout: Option<&Timespec>) -> usize {
    abs_timeout.map_or(ptr::null(), ptr::from_ref) as usize
}

/// `mq_open(name, oflag, mode, attr)`; `name` has no leading '/'.
pub(super) fn mq_open(
    name: &CStr,
    oflag: u32,
    mode: u32,
    attr: Option<&MqAttr>,
) -> Result<OwnedFd> {
    let attr = attr.map_or(ptr::null(), ptr::from_ref) as usize;
    // SAFETY: `name` is a NUL-terminated string and `attr` null or a live `#[repr(C)] mq_attr`,
    // both only read by the kernel during the call.
    let fd = unsafe {
        syscall5(
            __NR_mq_open,
            name.as_ptr() as usize,
            oflag as usize,
            mode as usize,
            attr,
            0,
        )?
    };
    // SAFETY: on success mq_open returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mq_unlink(name)`; `name` has no leading '/'.
pub(super) fn mq_unlink(name: &CStr) -> Result<()> {
    // SAFETY: `name` is a NUL-terminated string, read by the kernel during the call only.
    unsafe { syscall5(__NR_mq_unlink, name.as_ptr() as usize, 0, 0, 0, 0) }.map(drop)
}

/// `mq_timedsend(fd, msg, prio, abs_timeout)`; `None` blocks without limit.
pub(super) fn mq_timedsend(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    prio: u32,
    abs_timeout: Option<&Timespec>,
) -> Result<()> {
    // SAFETY: `msg` is readable for `msg.len()` bytes and the timeout null or a live timespec
    // whose layout matches the kernel's (checked above); the kernel only reads them.
    unsafe {
        syscall5(
            __NR_mq_timedsend,
            fd.as_raw_fd() as usize,
            msg.as_ptr() as usize,
            msg.len(),
            prio as usize,
            timeout_ptr(abs_timeout),
        )
    }
    .map(drop)
}

/// `mq_timedreceive(fd, buf, &prio, abs_timeout)`; returns (length, priority).
pub(super) fn mq_timedreceive(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    abs_timeout: Option<&Timespec>,
) -> Result<(usize, u32)> {
    let mut prio: u32 = 0;
    // SAFETY: `buf` is writable for `buf.len()` bytes, `prio` a live u32, the timeout null or a
    // live timespec; the kernel writes at most `buf.len()` bytes and one u32.
    let n = unsafe {
        syscall5(
            __NR_mq_timedreceive,
            fd.as_raw_fd() as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            ptr::from_mut(&mut prio) as usize,
            timeout_ptr(abs_timeout),
        )?
    };
    Ok((n.min(buf.len()), prio))
}

/// `mq_getsetattr(fd, new, &old)`; returns the attributes before the call.
pub(super) fn mq_getsetattr(fd: BorrowedFd<'_>, new: Option<&MqAttr>) -> Result<MqAttr> {
    let mut old = MqAttr::default();
    let new = new.map_or(ptr::null(), ptr::from_ref) as usize;
    // SAFETY: `new` is null or a live `#[repr(C)] mq_attr` the kernel reads, `old` a live one it
    // writes; layouts are checked in `mq`.
    unsafe {
        syscall5(
            __NR_mq_getsetattr,
            fd.as_raw_fd() as usize,
            new,
            ptr::from_mut(&mut old) as usize,
            0,
            0,
        )?
    };
    Ok(old)
}
