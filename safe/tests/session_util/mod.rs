//! Helpers for the session tests: re-exec'd child processes with roles, bounded waits, app
//! descriptions, descriptor counting.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowipc::session::{App, ClientApp, ServerApp, SessionOptions};

/// Env var naming the role a re-exec'd test binary plays.
pub const ROLE: &str = "FLOWIPC_SESSION_TEST_ROLE";
/// Env var naming the rendezvous directory of a test.
pub const DIR: &str = "FLOWIPC_SESSION_TEST_DIR";
/// Env var naming the server app of a test.
pub const SERVER: &str = "FLOWIPC_SESSION_TEST_SERVER";
/// Env var naming the test binary the apps are registered with (the parent's).
pub const EXE: &str = "FLOWIPC_SESSION_TEST_EXE";
/// Env var with the parent's `uid:gid` (the apps run as that).
pub const IDS: &str = "FLOWIPC_SESSION_TEST_IDS";

/// Serializes tests that count descriptors.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The role of this process, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A fresh rendezvous directory path (not created: the server creates it).
pub fn fresh_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "flowipc-session-test-{}-{tag}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The server and client apps of the tests: both are this test binary, as this user.
pub fn apps(server_name: &str) -> (ServerApp, ClientApp) {
    let exe = std::env::var_os(EXE)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().expect("current_exe"));
    let me = App::current("x").expect("current app");
    let (uid, gid) = std::env::var(IDS)
        .ok()
        .and_then(|v| {
            let (u, g) = v.split_once(':')?;
            Some((u.parse().ok()?, g.parse().ok()?))
        })
        .unwrap_or((me.uid, me.gid));
    let client = App::new("test-client", &exe, uid, gid);
    let server = App::new(server_name, &exe, uid, gid);
    (
        ServerApp::new(server, vec![client.clone()]),
        ClientApp::new(client),
    )
}

/// Options with the test's directory and short timeouts.
pub fn options(dir: &Path) -> SessionOptions {
    SessionOptions::new()
        .rendezvous_dir(dir)
        .handshake_timeout(Duration::from_secs(5))
        .ring_capacity(1 << 16)
}

/// Re-runs this test binary (or `exe`) as a child playing `role` inside test `test`.
pub fn spawn_role(exe: Option<&Path>, test: &str, role: &str, dir: &Path, server: &str) -> Child {
    command(exe, test, role, dir, server)
        .spawn()
        .expect("spawn child")
}

pub fn command(exe: Option<&Path>, test: &str, role: &str, dir: &Path, server: &str) -> Command {
    let registered = std::env::current_exe().expect("current_exe");
    let exe = exe
        .map(Path::to_path_buf)
        .unwrap_or_else(|| registered.clone());
    let mut cmd = Command::new(exe);
    let me = App::current("x").expect("current app");
    cmd.env(EXE, &registered)
        .env(IDS, format!("{}:{}", me.uid, me.gid));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .env(SERVER, server)
        .stdin(Stdio::null());
    cmd
}

/// Waits at most `timeout` for `child`; kills it (and fails) if it does not exit.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGKILL to `child` and reaps it.
pub fn kill9(child: &mut Child) {
    child.kill().expect("kill");
    let _ = child.wait();
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Waits (bounded) for the descriptor count to come back to `baseline`; returns the last count.
pub fn fds_settle(baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = open_fds();
        if n <= baseline || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// In a child: the test's rendezvous directory and server name.
pub fn child_env() -> (PathBuf, String) {
    (
        PathBuf::from(std::env::var(DIR).expect("dir env")),
        std::env::var(SERVER).expect("server env"),
    )
}
