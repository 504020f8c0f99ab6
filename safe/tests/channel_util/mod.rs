//! Helpers shared by the channel tests: re-exec'd child processes, deterministic messages, fd
//! counting.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use flowipc::channel::{Channel, OpenError};

/// Env var naming the role a re-exec'd test binary plays.
pub const ROLE: &str = "FLOWIPC_TEST_ROLE";

/// Serializes tests that count descriptors or use scarce mq queues.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The role of this process, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Re-runs this test binary as a child playing `role` inside test `test`, and hands it `channel`
/// over a bootstrap socket that becomes the child's stdin.
pub fn spawn_child(
    test: &str,
    role: &str,
    channel: Channel,
    extra_env: &[(&str, String)],
) -> Child {
    let (ours, theirs) = flowipc_sys::socket::socketpair_stream().expect("socketpair");
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::from(theirs));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn child");
    let mut boot = Channel::from_socket(ours);
    boot.send_channel(channel)
        .expect("hand the channel to the child");
    child
}

/// In a child: the channel the parent handed over.
pub fn child_channel() -> Channel {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let mut boot = Channel::from_socket(stdin);
    boot.recv_channel()
        .expect("receive the channel from the parent")
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Retries `f` while the kernel's mq limits are exhausted (other tests may hold queues).
pub fn retry_mq<T>(mut f: impl FnMut() -> Result<T, OpenError>) -> T {
    for _ in 0..200 {
        match f() {
            Err(OpenError::MqLimit { .. }) => std::thread::sleep(Duration::from_millis(50)),
            other => return other.expect("create mq channel"),
        }
    }
    panic!("POSIX mq limits stayed exhausted for 10 s");
}

/// A small xorshift generator: both processes derive the same sequence from the same seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The size of message `i` of a stream: mostly up to 4 KiB, 5 % up to 64 KiB, 0.1 % up to 4 MiB
/// (about 5.5 KiB on average).
pub fn size(rng: &mut Rng) -> usize {
    let r = rng.below(1000);
    (if r < 1 {
        rng.below(4 * 1024 * 1024 + 1)
    } else if r < 50 {
        rng.below(64 * 1024 + 1)
    } else {
        rng.below(4096 + 1)
    }) as usize
}

/// How many descriptors message `i` carries: 1 in 8 messages carries 1 to 3.
pub fn fd_count(rng: &mut Rng) -> usize {
    if rng.below(8) == 0 {
        1 + rng.below(3) as usize
    } else {
        0
    }
}

fn word(seq: u64, i: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (i >> 7)
}

/// Fills `buf` with message `seq` of `len` bytes: the sequence number, then a pattern of `seq`.
pub fn fill(seq: u64, len: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(len);
    let mut i = 0u64;
    while buf.len() + 8 <= len {
        let w = if i == 0 { seq } else { word(seq, i) };
        buf.extend_from_slice(&w.to_le_bytes());
        i += 1;
    }
    let rest = len - buf.len();
    let w = if i == 0 { seq } else { word(seq, i) };
    buf.extend_from_slice(&w.to_le_bytes()[..rest]);
}

/// Checks that `buf` is message `seq` of `len` bytes; describes the first difference.
pub fn verify(seq: u64, len: usize, buf: &[u8]) -> Result<(), String> {
    if buf.len() != len {
        let got_seq = buf
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        return Err(format!(
            "message {seq}: length {} instead of {len} (its first word says seq {got_seq:?})",
            buf.len()
        ));
    }
    let mut chunks = buf.chunks_exact(8);
    for (i, c) in chunks.by_ref().enumerate() {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        let want = if i == 0 { seq } else { word(seq, i as u64) };
        if w != want {
            return Err(format!(
                "message {seq}: word {i} is {w:#x}, expected {want:#x} (lost, reordered or corrupt)"
            ));
        }
    }
    let rem = chunks.remainder();
    let i = (len / 8) as u64;
    let want = if i == 0 { seq } else { word(seq, i) };
    if rem != &want.to_le_bytes()[..rem.len()] {
        return Err(format!("message {seq}: tail differs"));
    }
    Ok(())
}

/// Marker files whose descriptors the stress tests attach; the receiver checks which file each
/// received descriptor is.
pub struct Markers {
    pub dir: PathBuf,
    pub files: Vec<File>,
}

pub const MARKERS: usize = 7;

impl Markers {
    pub fn create() -> Markers {
        let dir = std::env::temp_dir().join(format!("flowipc-markers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = (0..MARKERS)
            .map(|j| File::create(dir.join(format!("marker-{j}"))).unwrap())
            .collect();
        Markers { dir, files }
    }

    /// The descriptors message `seq` carries.
    pub fn for_message(&self, seq: u64, n: usize) -> Vec<BorrowedFd<'_>> {
        (0..n)
            .map(|t| self.files[(seq as usize + t) % MARKERS].as_fd())
            .collect()
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that the descriptors of message `seq` are the expected markers, close-on-exec.
pub fn verify_fds(seq: u64, n: usize, fds: &[OwnedFd]) -> Result<(), String> {
    if fds.len() != n {
        return Err(format!(
            "message {seq}: {} descriptors instead of {n}",
            fds.len()
        ));
    }
    for (t, fd) in fds.iter().enumerate() {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        let want = format!("marker-{}", (seq as usize + t) % MARKERS);
        let name = link.to_string_lossy();
        if !name.contains(&format!("/{want}")) {
            return Err(format!(
                "message {seq}: descriptor {t} is {name}, expected {want}"
            ));
        }
        if !flowipc_sys::fd::is_cloexec(fd.as_fd()).map_err(|e| e.to_string())? {
            return Err(format!(
                "message {seq}: descriptor {t} is not close-on-exec"
            ));
        }
    }
    Ok(())
}

/// Number of stress messages: `FLOWIPC_STRESS_MESSAGES` or `default`.
pub fn stress_count(default: u64) -> u64 {
    std::env::var("FLOWIPC_STRESS_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by the transports. The parent calls `stress`, `kill_*`; the child side runs
// from `child_main` when the test binary is re-exec'd with ROLE set.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use flowipc::channel::{RecvError, SendError};

const SEED: u64 = 0x5EED_F10E_1BC0_FFEE;

/// Runs the child side of a scenario; returns when done (the test then "passes" in the child).
pub fn child_main(role: &str) {
    match role {
        "stress" => stress_child(),
        "stress-in-place" => stress_child_in_place(),
        "flood" => {
            let mut ch = child_channel();
            let msg = vec![0xAB; 16 * 1024];
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if ch.send(&msg).is_err() {
                    break;
                }
            }
        }
        "idle" => {
            let _ch = child_channel();
            std::thread::sleep(Duration::from_secs(30));
        }
        other => panic!("unknown child role {other}"),
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// Parent side of the stress test: `n` messages parent -> child, then `n / 4` child -> parent,
/// then an orderly close; every message checked (content, length, order, descriptors).
pub fn stress(test: &str, pair: (Channel, Channel), with_fds: bool, default_n: u64) {
    stress_with(test, pair, with_fds, default_n, false);
}

/// [`stress`] with every message built by `send_in_place` and read by `recv_in_place` on both
/// sides.
pub fn stress_in_place(test: &str, pair: (Channel, Channel), with_fds: bool, default_n: u64) {
    stress_with(test, pair, with_fds, default_n, true);
}

/// Sends message `buf` with `fds`, copied or built in place.
fn send_msg(ch: &mut Channel, buf: &[u8], fds: &[BorrowedFd<'_>], in_place: bool) {
    let sent = if in_place {
        // Built in two pieces, through both ways of writing.
        ch.send_in_place_with_fds(buf.len(), fds, |w| {
            let half = buf.len() / 2;
            w.write_at(half, &buf[half..]);
            std::io::Write::write_all(w, &buf[..half]).unwrap();
        })
    } else {
        ch.send_with_fds(buf, fds)
    };
    sent.unwrap_or_else(|e| panic!("send of {} bytes: {e}", buf.len()));
}

/// Receives the next message into `buf`, copied or read in place; returns its descriptors.
fn recv_msg(ch: &mut Channel, buf: &mut Vec<u8>, in_place: bool) -> Vec<OwnedFd> {
    if !in_place {
        return ch.recv(buf).unwrap_or_else(|e| panic!("recv: {e}")).fds;
    }
    let mut msg = ch
        .recv_in_place()
        .unwrap_or_else(|e| panic!("recv_in_place: {e}"));
    buf.clear();
    std::io::Read::read_to_end(&mut msg, buf).unwrap();
    assert_eq!(buf.len(), msg.len());
    msg.take_fds()
}

fn stress_with(
    test: &str,
    pair: (Channel, Channel),
    with_fds: bool,
    default_n: u64,
    in_place: bool,
) {
    let n = stress_count(default_n);
    let (mut ours, theirs) = pair;
    let markers = Markers::create();
    let mut child = spawn_child(
        test,
        if in_place {
            "stress-in-place"
        } else {
            "stress"
        },
        theirs,
        &[
            ("FLOWIPC_STRESS_N", n.to_string()),
            ("FLOWIPC_STRESS_FDS", u64::from(with_fds).to_string()),
        ],
    );
    let start = Instant::now();
    let mut rng = Rng(SEED);
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let mut nfds = 0u64;
    for seq in 0..n {
        let len = size(&mut rng);
        let k = if with_fds { fd_count(&mut rng) } else { 0 };
        fill(seq, len, &mut buf);
        send_msg(&mut ours, &buf, &markers.for_message(seq, k), in_place);
        bytes += len as u64;
        nfds += k as u64;
    }
    let sent = start.elapsed();
    let mut rng = Rng(SEED ^ 1);
    for seq in 0..n / 4 {
        let len = size(&mut rng);
        let k = if with_fds { fd_count(&mut rng) } else { 0 };
        let fds = recv_msg(&mut ours, &mut buf, in_place);
        verify(seq, len, &buf).unwrap();
        verify_fds(seq, k, &fds).unwrap();
        bytes += len as u64;
    }
    match ours.recv(&mut buf) {
        Err(RecvError::Closed) => {}
        other => panic!("expected Closed after the child's messages, got {other:?}"),
    }
    ours.close().unwrap();
    drop(ours);
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    let total = start.elapsed();
    eprintln!(
        "{test}: {n} + {} messages, {:.2} GB, {nfds}+ fds: parent->child {:.2?}, total {:.2?} \
         ({:.2} GB/s)",
        n / 4,
        bytes as f64 / 1e9,
        sent,
        total,
        bytes as f64 / 1e9 / total.as_secs_f64()
    );
}

fn stress_child() {
    stress_child_with(false);
}

fn stress_child_in_place() {
    stress_child_with(true);
}

fn stress_child_with(in_place: bool) {
    let n = env_u64("FLOWIPC_STRESS_N");
    let with_fds = env_u64("FLOWIPC_STRESS_FDS") == 1;
    let mut ch = child_channel();
    let mut rng = Rng(SEED);
    let mut buf = Vec::new();
    for seq in 0..n {
        let len = size(&mut rng);
        let k = if with_fds { fd_count(&mut rng) } else { 0 };
        let fds = recv_msg(&mut ch, &mut buf, in_place);
        verify(seq, len, &buf).unwrap();
        verify_fds(seq, k, &fds).unwrap();
    }
    let markers = Markers::create();
    let mut rng = Rng(SEED ^ 1);
    for seq in 0..n / 4 {
        let len = size(&mut rng);
        let k = if with_fds { fd_count(&mut rng) } else { 0 };
        fill(seq, len, &mut buf);
        send_msg(&mut ch, &buf, &markers.for_message(seq, k), in_place);
    }
    ch.close().unwrap();
    // The parent closes after receiving everything.
    match ch.recv(&mut buf) {
        Err(RecvError::Closed) => {}
        other => panic!("child expected the end, got {other:?}"),
    }
}

/// Limit for noticing a dead peer.
pub const PEER_GONE_LIMIT: Duration = Duration::from_millis(100);

/// Kills `child` after `delay` on another thread; returns when the kill happened.
pub fn kill_later(
    mut child: Child,
    delay: Duration,
) -> (Arc<StdMutex<Option<Instant>>>, std::thread::JoinHandle<()>) {
    let when = Arc::new(StdMutex::new(None));
    let w = when.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(delay);
        *w.lock().unwrap() = Some(Instant::now());
        child.kill().unwrap();
        child.wait().unwrap();
    });
    (when, h)
}

/// The child floods messages; the parent receives some, SIGKILLs it and must see PeerGone within
/// the limit, with no descriptor leaked.
pub fn kill_mid_stream(test: &str, make: impl FnOnce() -> (Channel, Channel)) {
    let before = open_fds();
    {
        let (mut ours, theirs) = make();
        let mut child = spawn_child(test, "flood", theirs, &[]);
        let mut buf = Vec::new();
        for _ in 0..50 {
            ours.recv(&mut buf).unwrap();
        }
        child.kill().unwrap();
        let t0 = Instant::now();
        let mut drained = 0;
        let err = loop {
            match ours.recv(&mut buf) {
                Ok(_) => drained += 1,
                Err(e) => break e,
            }
        };
        let elapsed = t0.elapsed();
        child.wait().unwrap();
        assert!(
            matches!(err, RecvError::PeerGone),
            "expected PeerGone, got {err:?}"
        );
        assert!(
            elapsed < PEER_GONE_LIMIT,
            "PeerGone after {elapsed:?} (drained {drained} messages)"
        );
        eprintln!("{test}: PeerGone {elapsed:?} after SIGKILL ({drained} messages drained)");
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}

/// The parent blocks in recv on an idle child, which is SIGKILLed.
pub fn kill_blocked_recv(test: &str, make: impl FnOnce() -> (Channel, Channel)) {
    kill_blocked_recv_with(test, make, |ch| ch.recv(&mut Vec::new()).unwrap_err());
}

/// [`kill_blocked_recv`] with the receive `recv` (which must fail).
pub fn kill_blocked_recv_with(
    test: &str,
    make: impl FnOnce() -> (Channel, Channel),
    recv: impl FnOnce(&mut Channel) -> RecvError,
) {
    let before = open_fds();
    {
        let (mut ours, theirs) = make();
        let child = spawn_child(test, "idle", theirs, &[]);
        let (when, killer) = kill_later(child, Duration::from_millis(300));
        let err = recv(&mut ours);
        let now = Instant::now();
        killer.join().unwrap();
        let t0 = when.lock().unwrap().expect("killed");
        assert!(
            matches!(err, RecvError::PeerGone),
            "expected PeerGone, got {err:?}"
        );
        let elapsed = now.saturating_duration_since(t0);
        assert!(elapsed < PEER_GONE_LIMIT, "PeerGone after {elapsed:?}");
        eprintln!("{test}: blocked recv got PeerGone {elapsed:?} after SIGKILL");
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}

/// The parent blocks in send to an idle child (which never drains), which is SIGKILLed.
pub fn kill_blocked_send(test: &str, make: impl FnOnce() -> (Channel, Channel)) {
    let msg = vec![1u8; 64 * 1024];
    kill_blocked_send_with(test, make, |ch| ch.send(&msg));
}

/// [`kill_blocked_send`] with the send `send`, repeated until it fails.
pub fn kill_blocked_send_with(
    test: &str,
    make: impl FnOnce() -> (Channel, Channel),
    mut send: impl FnMut(&mut Channel) -> Result<(), SendError>,
) {
    let before = open_fds();
    {
        let (mut ours, theirs) = make();
        let child = spawn_child(test, "idle", theirs, &[]);
        let (when, killer) = kill_later(child, Duration::from_millis(300));
        let mut sent = 0;
        let err = loop {
            match send(&mut ours) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        let now = Instant::now();
        killer.join().unwrap();
        let t0 = when.lock().unwrap().expect("killed");
        assert!(
            matches!(err, SendError::PeerGone),
            "expected PeerGone, got {err:?}"
        );
        let elapsed = now.saturating_duration_since(t0);
        assert!(elapsed < PEER_GONE_LIMIT, "PeerGone after {elapsed:?}");
        assert!(
            sent < 1000,
            "backpressure: {sent} messages of 64 KiB went into an idle peer"
        );
        eprintln!("{test}: blocked send got PeerGone {elapsed:?} after SIGKILL ({sent} sent)");
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}
