//! Arenas between two real processes: the test binary re-executes itself (`--exact <test>`) with
//! `FLOWIPC_ARENA_ROLE` set, and the child's stdin is one end of a Unix socket pair over which the
//! descriptors (`SCM_RIGHTS`) and handles travel.
//!
//! - `lend_cycles_two_processes`: random alloc / lend / read / release cycles with checksums (1 M
//!   objects in release builds), then the pool is back to its starting usage.
//! - `killed_borrower_is_reclaimed`: a borrower SIGKILLed while holding objects; the owner reclaims
//!   every one of them.
//! - `classic_two_processes`: both processes allocate in one read-write arena and free each other's
//!   objects.

use std::hash::{DefaultHasher, Hasher};
use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::arena::{
    ArenaError, ArenaHandle, BlockError, BorrowedPool, BorrowerSetup, LendPool, PoolUsage, ShmArena,
};
use flowipc_sys::socket::{
    recv, recv_with_fds_vec, send, send_with_fds, socketpair_stream, RecvFlags, SendFlags,
};
use flowipc_sys::{BorrowedFd, OwnedFd};

const ROLE: &str = "FLOWIPC_ARENA_ROLE";
const H: usize = ArenaHandle::ENCODED_LEN;

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Re-executes this test binary running only `test`, in `role`, with `sock` as its stdin.
fn spawn(test: &str, role: &str, sock: OwnedFd) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::from(sock))
        .spawn()
        .expect("spawn child")
}

/// The child's end of the socket pair.
fn child_socket() -> OwnedFd {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin")
}

fn send_all(sock: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = send(sock, bytes, SendFlags::NOSIGNAL).expect("send");
        bytes = &bytes[n..];
    }
}

fn recv_exact(sock: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match recv(sock, &mut buf[got..], RecvFlags::empty()).expect("recv") {
            0 => return false,
            n => got += n,
        }
    }
    true
}

fn send_frame(sock: BorrowedFd<'_>, payload: &[u8]) {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    send_all(sock, &v);
}

fn recv_frame(sock: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    if !recv_exact(sock, &mut len) {
        return None;
    }
    let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
    recv_exact(sock, &mut v).then_some(v)
}

fn send_setup(sock: BorrowedFd<'_>, setup: &BorrowerSetup) {
    send_with_fds(
        sock,
        b"S",
        &[setup.pool_fd.as_fd(), setup.return_ring_fd.as_fd()],
        SendFlags::NOSIGNAL,
    )
    .expect("send fds");
}

fn recv_setup(sock: BorrowedFd<'_>) -> BorrowerSetup {
    let mut b = [0u8; 1];
    let (n, fds) = recv_with_fds_vec(sock, &mut b, RecvFlags::empty()).expect("recv fds");
    assert_eq!((n, fds.len()), (1, 2));
    let mut fds = fds.into_iter();
    BorrowerSetup {
        pool_fd: fds.next().unwrap(),
        return_ring_fd: fds.next().unwrap(),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

fn checksum(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(data);
    h.finish()
}

fn wait_ok(mut child: Child) {
    let status = child.wait().expect("wait");
    assert!(status.success(), "child failed: {status}");
}

// ---- lend: random cycles ------------------------------------------------------------------------

const CYCLES: usize = if cfg!(debug_assertions) {
    50_000
} else {
    1_000_000
};

#[test]
fn lend_cycles_two_processes() {
    if role().is_some() {
        return borrower_cycles();
    }
    lend_cycles(
        "lend_cycles_two_processes",
        LendPool::create(64 << 20).unwrap(),
    );
}

#[cfg(feature = "jemalloc")]
#[test]
fn lend_cycles_two_processes_jemalloc() {
    if role().is_some() {
        return borrower_cycles();
    }
    lend_cycles(
        "lend_cycles_two_processes_jemalloc",
        LendPool::create_jemalloc(64 << 20).unwrap(),
    );
}

fn lend_cycles(test: &str, pool: LendPool) {
    let started = Instant::now();
    let (mine, theirs) = socketpair_stream().unwrap();
    let child = spawn(test, "borrower", theirs);
    let start = pool.usage();
    let (id, setup) = pool.add_borrower().unwrap();
    send_setup(mine.as_fd(), &setup);
    drop(setup);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut total, mut bytes) = (0usize, 0u64);
    let mut data = vec![0u8; 256 << 10];
    while total < CYCLES {
        let batch = (1 + rng.next() % 64) as usize;
        let mut keep = Vec::new();
        let mut msg = Vec::with_capacity(batch * (H + 8));
        for _ in 0..batch {
            let r = rng.next();
            let size = match r % 256 {
                0 => 1 + (r >> 8) as usize % (256 << 10), // large runs
                1..=16 => 1 + (r >> 8) as usize % (64 << 10),
                _ => 1 + (r >> 8) as usize % 1024,
            };
            rng.fill(&mut data[..size]);
            let obj = pool.alloc_bytes(&data[..size]).unwrap();
            let h = pool.lend(&obj, id).unwrap();
            msg.extend_from_slice(&h.to_bytes());
            msg.extend_from_slice(&checksum(&data[..size]).to_le_bytes());
            bytes += size as u64;
            // Half the time the owner drops its reference before the borrower is done: the
            // borrower's reference must keep the object alive.
            if r & (1 << 60) != 0 {
                keep.push(obj);
            }
        }
        send_frame(mine.as_fd(), &msg);
        let ack = recv_frame(mine.as_fd()).expect("borrower ack");
        assert_eq!(
            ack,
            (batch as u32).to_le_bytes(),
            "borrower saw bad objects"
        );
        drop(keep);
        pool.drain_returns(id).unwrap();
        total += batch;
    }
    send_frame(mine.as_fd(), &[]);
    wait_ok(child);
    pool.drain_returns(id).unwrap();
    assert_eq!(pool.lent_to(id), 0);
    assert_eq!(pool.bogus_returns(), 0);
    assert_eq!(pool.usage(), start);
    eprintln!(
        "{test}: {total} objects, {} MiB, {:?}",
        bytes >> 20,
        started.elapsed()
    );
}

fn borrower_cycles() {
    let sock = child_socket();
    let pool = BorrowedPool::open(recv_setup(sock.as_fd())).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut held: Vec<ArenaHandle> = Vec::new();
    while let Some(msg) = recv_frame(sock.as_fd()) {
        if msg.is_empty() {
            break;
        }
        let mut ok = 0u32;
        for rec in msg.chunks_exact(H + 8) {
            let h = ArenaHandle::from_bytes(&rec[..H]).unwrap();
            let sum = u64::from_le_bytes(rec[H..].try_into().unwrap());
            let v = pool.view(&h).unwrap();
            if checksum(&v.to_vec().unwrap()) == sum {
                ok += 1;
            }
            // A forged generation or length is refused.
            let forged = ArenaHandle {
                generation: h.generation.wrapping_add(1),
                ..h
            };
            assert!(matches!(
                pool.view(&forged),
                Err(ArenaError::Block(BlockError::StaleGeneration))
            ));
            let too_long = ArenaHandle {
                len: h.len + (1 << 20),
                ..h
            };
            assert!(pool.view(&too_long).is_err());
            // Return most at once, hold some across batches.
            if rng.next() % 4 == 0 && held.len() < 256 {
                held.push(h);
            } else {
                pool.release(h).unwrap();
            }
        }
        // Release some of the older ones.
        for _ in 0..held.len() / 2 {
            let h = held.swap_remove((rng.next() % held.len() as u64) as usize);
            pool.release(h).unwrap();
        }
        send_frame(sock.as_fd(), &ok.to_le_bytes());
    }
    for h in held {
        pool.release(h).unwrap();
    }
}

// ---- lend: SIGKILLed borrower -------------------------------------------------------------------

#[test]
fn killed_borrower_is_reclaimed() {
    if role().is_some() {
        return borrower_hold();
    }
    killed_borrower(
        "killed_borrower_is_reclaimed",
        LendPool::create(16 << 20).unwrap(),
    );
}

#[cfg(feature = "jemalloc")]
#[test]
fn killed_borrower_is_reclaimed_jemalloc() {
    if role().is_some() {
        return borrower_hold();
    }
    killed_borrower(
        "killed_borrower_is_reclaimed_jemalloc",
        LendPool::create_jemalloc(16 << 20).unwrap(),
    );
}

fn killed_borrower(test: &str, pool: LendPool) {
    let (mine, theirs) = socketpair_stream().unwrap();
    let mut child = spawn(test, "holder", theirs);
    let (id, setup) = pool.add_borrower().unwrap();
    send_setup(mine.as_fd(), &setup);
    drop(setup);
    let mut msg = Vec::new();
    let mut objs = Vec::new();
    for i in 0..300usize {
        let obj = pool.alloc_bytes(&vec![i as u8; 1 + i * 37]).unwrap();
        msg.extend_from_slice(&pool.lend(&obj, id).unwrap().to_bytes());
        objs.push(obj);
    }
    send_frame(mine.as_fd(), &msg);
    // The borrower read them all, gave 100 back, and now holds 200.
    assert_eq!(recv_frame(mine.as_fd()).unwrap(), b"holding");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    drop(objs);
    assert_eq!(
        pool.usage().objects,
        300,
        "the borrower's references keep all alive"
    );
    assert_eq!(pool.lent_to(id), 300, "returns not drained yet");
    assert_eq!(pool.reclaim(id).unwrap(), 300);
    assert_eq!(pool.usage(), PoolUsage::default());
    assert!(matches!(
        pool.drain_returns(id),
        Err(ArenaError::UnknownBorrower(_))
    ));
}

fn borrower_hold() {
    let sock = child_socket();
    let pool = BorrowedPool::open(recv_setup(sock.as_fd())).unwrap();
    let msg = recv_frame(sock.as_fd()).unwrap();
    for (i, rec) in msg.chunks_exact(H).enumerate() {
        let h = ArenaHandle::from_bytes(rec).unwrap();
        assert_eq!(
            pool.view(&h).unwrap().to_vec().unwrap(),
            vec![i as u8; 1 + i * 37]
        );
        if i % 3 == 0 {
            pool.release(h).unwrap();
        }
    }
    send_frame(sock.as_fd(), b"holding");
    // Wait to be killed (bounded, in case the parent died first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- classic: both allocate ---------------------------------------------------------------------

const CLASSIC_OBJECTS: usize = if cfg!(debug_assertions) {
    5_000
} else {
    50_000
};

#[test]
fn classic_two_processes() {
    if role().is_some() {
        return classic_child();
    }
    let (mine, theirs) = socketpair_stream().unwrap();
    let child = spawn("classic_two_processes", "classic", theirs);
    let arena = ShmArena::create_classic(32 << 20).unwrap();
    send_with_fds(mine.as_fd(), b"A", &[arena.fd()], SendFlags::NOSIGNAL).unwrap();
    let mut rng = Rng(77);
    let mut data = vec![0u8; 8192];
    let mut received = 0;
    loop {
        // Our objects go to the child, which adopts and frees them.
        let mut msg = Vec::new();
        for _ in 0..32 {
            let size = 1 + (rng.next() % 8192) as usize;
            rng.fill(&mut data[..size]);
            let h = arena.alloc_bytes(&data[..size]).unwrap().into_handle();
            msg.extend_from_slice(&h.to_bytes());
            msg.extend_from_slice(&checksum(&data[..size]).to_le_bytes());
        }
        send_frame(mine.as_fd(), &msg);
        // The child's objects come back; we adopt, check and free them.
        let theirs = recv_frame(mine.as_fd()).unwrap();
        if theirs.is_empty() {
            break;
        }
        for rec in theirs.chunks_exact(H + 8) {
            let obj = arena
                .adopt(ArenaHandle::from_bytes(&rec[..H]).unwrap())
                .unwrap();
            assert_eq!(
                checksum(&obj.to_vec().unwrap()),
                u64::from_le_bytes(rec[H..].try_into().unwrap())
            );
            received += 1;
        }
    }
    wait_ok(child);
    assert_eq!(received, CLASSIC_OBJECTS);
    assert_eq!(arena.stats().blocks_in_use(), 0);
    assert_eq!(arena.stats().bytes_in_use(), 0);
}

fn classic_child() {
    let sock = child_socket();
    let mut b = [0u8; 1];
    let (_, mut fds) = recv_with_fds_vec(sock.as_fd(), &mut b, RecvFlags::empty()).unwrap();
    let arena = ShmArena::open(fds.pop().unwrap()).unwrap();
    let mut rng = Rng(99);
    let mut data = vec![0u8; 8192];
    let mut sent = 0;
    while let Some(msg) = recv_frame(sock.as_fd()) {
        for rec in msg.chunks_exact(H + 8) {
            let obj = arena
                .adopt(ArenaHandle::from_bytes(&rec[..H]).unwrap())
                .unwrap();
            assert_eq!(
                checksum(&obj.to_vec().unwrap()),
                u64::from_le_bytes(rec[H..].try_into().unwrap())
            );
        }
        if sent == CLASSIC_OBJECTS {
            send_frame(sock.as_fd(), &[]);
            break;
        }
        let mut out = Vec::new();
        for _ in 0..32.min(CLASSIC_OBJECTS - sent) {
            let size = 1 + (rng.next() % 8192) as usize;
            rng.fill(&mut data[..size]);
            let obj = arena.alloc_bytes(&data[..size]).unwrap();
            out.extend_from_slice(&obj.share().unwrap().to_bytes());
            out.extend_from_slice(&checksum(&data[..size]).to_le_bytes());
            sent += 1;
            // `obj` drops here: the parent's adopted reference keeps the block alive.
        }
        send_frame(sock.as_fd(), &out);
    }
}
