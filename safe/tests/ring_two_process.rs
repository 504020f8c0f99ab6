//! Two real processes over a real sealed memfd ring.
//!
//! The test binary re-executes itself (`current_exe`, `--exact child_entry`) with the role in an
//! environment variable and the ring's memfd as its standard input. Without the variable,
//! `child_entry` does nothing, so it passes in ordinary runs.
//!
//! - `ten_million_frames`: the parent sends frames of random sizes (copying and in place), each with
//!   a sequence number and a checksum; the child checks that none is lost, duplicated, reordered or
//!   corrupted. 10 million frames with `--release` (1 million in debug builds; `FLOWIPC_RING_FRAMES`
//!   overrides).
//! - `sigkill_*`: a peer killed with SIGKILL while the other side is blocked on the ring is reported
//!   as `PeerGone` (the blocked side watches the peer's pidfd).

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::ring::{RingRecvError, RingSendError, ShmRing, WaitPolicy};
use flowipc_sys::process::Pid;

const ROLE_VAR: &str = "FLOWIPC_RING_CHILD";
const FRAMES_VAR: &str = "FLOWIPC_RING_FRAMES";
const CAPACITY: usize = 1 << 16;

/// xorshift64*: the frame sizes and payloads both sides derive from the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Payload length of frame `seq`: mostly small, sometimes up to the ring's largest frame.
fn frame_len(rng: &mut Rng, max: usize) -> usize {
    let r = rng.next();
    match r % 256 {
        0 => 16 + (r >> 8) as usize % (max - 15),
        1..=32 => 16 + (r >> 8) as usize % 1024,
        _ => 16 + (r >> 8) as usize % 112,
    }
}

/// FNV-1a over `bytes`, 8 at a time.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Fills `frame` (16 header bytes: seq, checksum; then payload from `seq`).
fn fill_frame(frame: &mut [u8], seq: u64) {
    let mut rng = Rng(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for c in frame[16..].chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    let sum = checksum(&frame[16..]);
    frame[..8].copy_from_slice(&seq.to_le_bytes());
    frame[8..16].copy_from_slice(&sum.to_le_bytes());
}

fn frames() -> u64 {
    std::env::var(FRAMES_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            1_000_000
        } else {
            10_000_000
        })
}

fn spawn_child(role: &str, ring: &ShmRing) -> Child {
    let fd = ring.fd().try_clone_to_owned().expect("dup memfd");
    Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(FRAMES_VAR, frames().to_string())
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32).expect("child pid is positive")
}

/// The child side; a no-op unless spawned by one of the tests below.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("stdin");
    let ring = ShmRing::open(fd).expect("open ring from stdin");
    match role.as_str() {
        "verify" => verify_frames(&ring),
        "send-one-then-hang" => {
            let mut tx = ring.sender().unwrap();
            tx.send(b"ready").unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        "receive-one-then-hang" => {
            let mut rx = ring.receiver().unwrap();
            let mut buf = [0u8; 16];
            rx.recv(&mut buf).unwrap();
            std::io::stdout().write_all(b"ready\n").unwrap();
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown role {other}"),
    }
}

/// Child role "verify": receives every frame and checks sequence, length and checksum.
fn verify_frames(ring: &ShmRing) {
    let mut rx = ring.receiver().unwrap();
    let max = rx.max_payload();
    let n = frames();
    let mut sizes = Rng(0x5eed);
    let mut buf = vec![0u8; max];
    let mut bytes = 0u64;
    for seq in 0..n {
        let len = frame_len(&mut sizes, max);
        let got = if seq % 2 == 0 {
            rx.recv(&mut buf).expect("recv").len
        } else {
            let chunk = rx.read_chunk(None).expect("read_chunk");
            chunk.read(0, &mut buf)
        };
        assert_eq!(got, len, "frame {seq}: wrong length");
        let got_seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert_eq!(got_seq, seq, "lost, duplicated or reordered frame");
        let sum = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        assert_eq!(
            sum,
            checksum(&buf[16..len]),
            "frame {seq}: corrupted payload"
        );
        bytes += len as u64;
    }
    assert_eq!(
        rx.recv(&mut buf),
        Err(RingRecvError::Closed),
        "frames after the last"
    );
    println!("child verified {n} frames, {bytes} bytes");
}

#[test]
fn ten_million_frames() {
    let ring = ShmRing::create(CAPACITY).unwrap();
    let child = spawn_child("verify", &ring);
    let mut tx = ring.sender().unwrap();
    tx.watch_peer_process(pid_of(&child)).unwrap();
    let max = tx.max_payload();
    let n = frames();
    let mut sizes = Rng(0x5eed);
    let mut frame = vec![0u8; max];
    let start = Instant::now();
    let mut bytes = 0u64;
    for seq in 0..n {
        let len = frame_len(&mut sizes, max);
        fill_frame(&mut frame[..len], seq);
        if seq % 3 == 0 {
            let mut chunk = tx.write_chunk(len, None).expect("write_chunk");
            chunk.write(0, &frame[..len]);
            chunk.commit(len);
        } else {
            tx.send(&frame[..len]).expect("send");
        }
        bytes += len as u64;
    }
    drop(tx);
    let out = child.wait_with_output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {report}");
    assert!(report.contains(&format!("child verified {n} frames, {bytes} bytes")));
    eprintln!(
        "{n} frames, {:.1} MB in {secs:.2} s: {:.2} M frames/s, {:.2} GB/s",
        bytes as f64 / 1e6,
        n as f64 / secs / 1e6,
        bytes as f64 / secs / 1e9
    );
}

#[test]
fn sigkill_of_sender_ends_blocked_receive() {
    let ring = ShmRing::create(4096).unwrap();
    let mut child = spawn_child("send-one-then-hang", &ring);
    let mut rx = ring.receiver().unwrap();
    rx.watch_peer_process(pid_of(&child)).unwrap();
    rx.set_policy(WaitPolicy::Block);
    let mut buf = [0u8; 16];
    let info = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..info.len], b"ready");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        t
    });
    let res = rx.recv(&mut buf);
    let detected = Instant::now();
    let killed = killer.join().unwrap();
    assert_eq!(res, Err(RingRecvError::PeerGone));
    let latency = detected.duration_since(killed);
    eprintln!("blocked receive saw SIGKILLed sender after {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
}

#[test]
fn sigkill_of_receiver_ends_blocked_send() {
    let ring = ShmRing::create(4096).unwrap();
    let mut child = spawn_child("receive-one-then-hang", &ring);
    let mut tx = ring.sender().unwrap();
    tx.watch_peer_process(pid_of(&child)).unwrap();
    tx.send(b"x").unwrap();
    // Wait until the child has taken it, so the ring then fills up and stays full. (The child's
    // test harness prints its own lines first.)
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.ends_with("ready\n") {
        line.clear();
        assert_ne!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap(),
            0,
            "child quit"
        );
    }
    while tx.try_send(&[0; 1000]).is_ok() {}
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        t
    });
    let res = tx.send(&[0; 1000]);
    let detected = Instant::now();
    let killed = killer.join().unwrap();
    assert_eq!(res, Err(RingSendError::PeerGone));
    let latency = detected.duration_since(killed);
    eprintln!("blocked send saw SIGKILLed receiver after {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
}
