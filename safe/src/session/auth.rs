//! Who is at the other end of a Unix socket, from kernel facts only.
//!
//! 1. uid, gid, pid from `SO_PEERCRED` (recorded by the kernel at `connect`).
//! 2. A pidfd for the peer from `SO_PEERPIDFD` (Linux 6.5+), which names the connecting process
//!    even if its pid has been reused since. Fallback (older kernels): `pidfd_open` on the
//!    `SO_PEERCRED` pid; a pid reused between `connect` and that call would go unnoticed, which
//!    is the window every pre-6.5 server has.
//! 3. The pid the pidfd names (its fdinfo) must be the `SO_PEERCRED` pid.
//! 4. `/proc/<pid>/exe` is read, then the pidfd is checked to be still running: if it is, the
//!    pid was not reused during the read, so the executable is the peer's.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use flowipc_sys::Errno;

/// The kernel's account of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// Its process id (when it connected).
    pub pid: i32,
    /// Its effective user id (when it connected).
    pub uid: u32,
    /// Its effective group id (when it connected).
    pub gid: u32,
    /// Its executable, if this process may read `/proc/<pid>/exe`.
    pub exe: Option<PathBuf>,
    /// Whether the pid was pinned through `SO_PEERPIDFD` (false: the `pidfd_open` fallback).
    pub pinned: bool,
}

/// Why the peer could not be identified.
#[derive(Debug)]
pub(super) enum IdentifyError {
    /// The peer exited before it could be checked (or its pid was reused).
    Gone,
    /// A system call failed.
    Os(&'static str, Errno),
}

/// Identifies the peer of `sock`; also returns the pidfd that names it (kept by the session to
/// tell a dead peer from one that only closed a channel).
pub(super) fn identify(sock: BorrowedFd<'_>) -> Result<(PeerIdentity, OwnedFd), IdentifyError> {
    let cred = flowipc_sys::socket::peer_credentials(sock)
        .map_err(|e| IdentifyError::Os("getsockopt(SO_PEERCRED)", e))?;
    let pid = cred.pid.as_raw_nonzero().get();
    let (pidfd, pinned) = match flowipc_sys::session::peer_pidfd(sock) {
        Ok(fd) => (fd, true),
        Err(Errno::NOPROTOOPT | Errno::INVAL) => match flowipc_sys::process::pidfd_open(cred.pid) {
            Ok(fd) => (fd, false),
            Err(Errno::SRCH) => return Err(IdentifyError::Gone),
            Err(e) => return Err(IdentifyError::Os("pidfd_open", e)),
        },
        Err(Errno::SRCH) => return Err(IdentifyError::Gone),
        Err(e) => return Err(IdentifyError::Os("getsockopt(SO_PEERPIDFD)", e)),
    };
    match flowipc_sys::session::pidfd_pid(pidfd.as_fd()) {
        Ok(p) if p.as_raw_nonzero().get() == pid => {}
        Ok(_) | Err(Errno::SRCH) => return Err(IdentifyError::Gone),
        Err(e) => return Err(IdentifyError::Os("reading the pidfd's pid", e)),
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    match flowipc_sys::session::pidfd_is_alive(pidfd.as_fd()) {
        Ok(true) => {}
        Ok(false) => return Err(IdentifyError::Gone),
        Err(e) => return Err(IdentifyError::Os("poll(pidfd)", e)),
    }
    Ok((
        PeerIdentity {
            pid,
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
            exe,
            pinned,
        },
        pidfd,
    ))
}
