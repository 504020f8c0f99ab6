//! Taking the session socket a spawning parent left inherited (see [`Session::spawn`]).
//!
//! This is the one place of the session module that opts back into `unsafe`: adopting a
//! descriptor by number is an ownership claim the compiler cannot check. It is made once per
//! process (an atomic flag), only for the number the parent wrote into `FLOWIPC_SESSION_FD`
//! together with the socket's inode, which `flowipc_sys` checks before adopting it.
//!
//! [`Session::spawn`]: super::Session::spawn
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{SessionError, SESSION_FD_ENV};

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Parses `"<fd>:<inode>"`.
fn parse(value: &str) -> Option<(i32, u64)> {
    let (fd, ino) = value.split_once(':')?;
    Some((fd.parse().ok()?, ino.parse().ok()?))
}

pub(super) fn take_session_socket() -> Result<OwnedFd, SessionError> {
    let value = std::env::var(SESSION_FD_ENV).map_err(|_| SessionError::NotSpawned)?;
    let (fd, ino) = parse(&value).ok_or(SessionError::NotSpawned)?;
    // Relaxed is enough: the flag only has to let one caller through, it orders nothing else.
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Err(SessionError::NotSpawned);
    }
    // SAFETY: the parent (Session::spawn) made descriptor `fd` inheritable for this process and
    // named it only in this variable; the TAKEN flag lets this happen once per process, and the
    // inode check (in adopt_inherited_socket) rejects a number that now names anything else.
    unsafe { flowipc_sys::session::adopt_inherited_socket(fd, ino) }
        .map_err(|_| SessionError::NotSpawned)
}
