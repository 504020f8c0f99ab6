//! Helpers for the multi-process kernel tests: re-exec the test binary as a child that runs one
//! test in a given role, with one end of a socket pair as its stdin.
#![allow(dead_code)] // each test binary uses a subset

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the role a re-executed test binary plays.
pub const ROLE_ENV: &str = "FLOWIPC_SYS_TEST_ROLE";

/// How long any child may run before the parent kills it and fails the test.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(20);

/// The role this process was started in, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A child test process, killed if dropped before it was waited for (e.g. when the parent's
/// test panics), so a failing test leaves no process behind.
pub struct ChildProcess(Child);

impl ChildProcess {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the child, panicking (and so killing it on drop) if it outlives
    /// [`CHILD_DEADLINE`].
    pub fn wait_bounded(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > CHILD_DEADLINE {
                panic!(
                    "child {} did not finish within {CHILD_DEADLINE:?}",
                    self.0.id()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Re-executes this test binary to run only `test_name` in `role`, with `stdin` as its fd 0.
pub fn spawn_child(test_name: &str, role: &str, stdin: OwnedFd) -> ChildProcess {
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::from(stdin))
        // The child harness's own summary would clutter ours; its panics go to stderr.
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child test process");
    ChildProcess(child)
}

/// The child's end of the socket: its stdin.
pub fn child_socket() -> BorrowedFd<'static> {
    // `Stdin` is a `'static` handle, so fd 0 stays open for the whole process.
    let stdin: &'static std::io::Stdin = Box::leak(Box::new(std::io::stdin()));
    stdin.as_fd()
}

/// Waits up to `timeout` for `fd` to become readable; panics otherwise.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) {
    use flowipc_sys::socket::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let n = poll(&mut fds, Some(timeout)).expect("poll");
    assert_eq!(n, 1, "fd not readable within {timeout:?}");
}

/// A name unique to this process and call, for POSIX mqs.
pub fn unique_name(tag: &str) -> std::ffi::CString {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::ffi::CString::new(format!(
        "/flowipc-sys-test-{tag}-{}-{n}-{t}",
        std::process::id()
    ))
    .unwrap()
}
