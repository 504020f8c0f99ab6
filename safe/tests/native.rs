//! Native shared-memory structures between two real processes: the test binary re-executes itself
//! (`--exact <test>`) with `FLOWIPC_NATIVE_ROLE` set, and the child's stdin is one end of a Unix
//! socket pair over which the pool's descriptors (`SCM_RIGHTS`) and the handles travel. Every
//! wait is bounded: socket reads poll with a deadline, child exits are awaited with one.
//!
//! - `nested_tree_read_by_another_process`: a map of string keys to vectors, a vector of parts
//!   (each a byte vector and two numbers) and a vector of strings, built by the owner and read by
//!   the child (which maps the pool at another address); frozen while lent; the owner changes
//!   them after the child released them, and the pool returns to its starting usage.
//! - `killed_borrower_releases_the_tree`: the child is SIGKILLed while holding a lent tree whose
//!   owner-side container was dropped; `reclaim` gives back every block.
//! - `lent_through_a_session`: a vector of strings lent with `Session::lend_native` to a spawned
//!   child, read there through the session's `peer_pool`, released, reclaimed, then changed.
//! - `lend_release_cycles_do_not_leak`: 100,000 lend / read / release cycles of small trees
//!   (10,000 in debug builds); usage is back to the baseline after every batch.

use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::arena::{ArenaHandle, BorrowedPool, BorrowerSetup, LendPool, ShmArena};
use flowipc::native::{
    MapRef, NativeError, ShmAlloc, ShmHashMap, ShmString, ShmVec, StrLink, VecLink, VecRef,
};
use flowipc_sys::socket::{
    poll, recv, recv_with_fds_vec, send, send_with_fds, socketpair_stream, PollFd, PollFlags,
    RecvFlags, SendFlags,
};
use flowipc_sys::{BorrowedFd, OwnedFd};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const ROLE: &str = "FLOWIPC_NATIVE_ROLE";
const H: usize = ArenaHandle::ENCODED_LEN;
const DEADLINE: Duration = Duration::from_secs(120);

/// A part of a file, as perf_demo will lend one: its bytes and two numbers.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Part {
    data: VecLink<u8>,
    size: u64,
    hash: u64,
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

fn spawn(test: &str, sock: OwnedFd) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, "child")
        .stdin(Stdio::from(sock))
        .spawn()
        .expect("spawn child")
}

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

/// Waits (bounded) until `sock` is readable.
fn wait_readable(sock: BorrowedFd<'_>) {
    let mut fds = [PollFd::new(&sock, PollFlags::IN)];
    let n = poll(&mut fds, Some(DEADLINE)).expect("poll");
    assert!(n > 0, "peer silent for {DEADLINE:?}");
}

fn recv_exact(sock: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        wait_readable(sock);
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
    wait_readable(sock);
    let (n, fds) = recv_with_fds_vec(sock, &mut b, RecvFlags::empty()).expect("recv fds");
    assert_eq!((n, fds.len()), (1, 2));
    let mut fds = fds.into_iter();
    BorrowerSetup {
        pool_fd: fds.next().unwrap(),
        return_ring_fd: fds.next().unwrap(),
    }
}

/// Opens the pool in the child after mapping something else first, so the pool lands at another
/// address than in the owner: the structures hold offsets, never pointers.
fn child_pool(sock: BorrowedFd<'_>) -> (BorrowedPool, ShmArena) {
    let shift = ShmArena::create_classic(32 << 20).unwrap();
    (BorrowedPool::open(recv_setup(sock)).unwrap(), shift)
}

/// Waits (bounded) for the child to exit; kills it past the deadline.
fn wait_child(mut child: Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("child did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn handles(msg: &[u8]) -> Vec<ArenaHandle> {
    msg.chunks_exact(H)
        .map(|c| ArenaHandle::from_bytes(c).unwrap())
        .collect()
}

fn word(i: u64) -> String {
    format!("key-{i}-{}", "x".repeat((i % 7) as usize))
}

// ---- nested tree --------------------------------------------------------------------------------

const KEYS: u64 = 300;
const PARTS: usize = 64;

#[test]
fn nested_tree_read_by_another_process() {
    if role().is_some() {
        return nested_reader();
    }
    let pool = LendPool::create(32 << 20).unwrap();
    let base = pool.usage();
    let (mine, theirs) = socketpair_stream().unwrap();
    let child = spawn("nested_tree_read_by_another_process", theirs);
    let (id, setup) = pool.add_borrower().unwrap();
    send_setup(mine.as_fd(), &setup);
    drop(setup);

    let alloc = ShmAlloc::from(&pool);
    let mut map: ShmHashMap<StrLink, VecLink<u64>> = ShmHashMap::new_in(&alloc).unwrap();
    for i in 0..KEYS {
        let v: Vec<u64> = (0..i % 13).map(|j| i * 1000 + j).collect();
        let link = map.adopt(ShmVec::from_slice_in(&alloc, &v).unwrap());
        map.insert_str(&word(i), link).unwrap();
    }
    let mut file: ShmVec<Part> = ShmVec::new_in(&alloc).unwrap();
    for p in 0..PARTS {
        let bytes: Vec<u8> = (0..p * 97).map(|j| (j * p) as u8).collect();
        let hash = bytes.iter().map(|&b| u64::from(b)).sum();
        let data = file.adopt(ShmVec::from_slice_in(&alloc, &bytes).unwrap());
        file.push(Part {
            data,
            size: bytes.len() as u64,
            hash,
        })
        .unwrap();
    }
    let mut words: ShmVec<StrLink> = ShmVec::new_in(&alloc).unwrap();
    for w in ["zero", "one", "two", "three", "ünïcödé"] {
        let l = words.adopt(ShmString::from_str_in(&alloc, w).unwrap());
        words.push(l).unwrap();
    }
    let mut msg = Vec::new();
    for h in [
        map.lend(&pool, id).unwrap(),
        file.lend(&pool, id).unwrap(),
        words.lend(&pool, id).unwrap(),
    ] {
        msg.extend_from_slice(&h.to_bytes());
    }
    send_frame(mine.as_fd(), &msg);
    assert_eq!(recv_frame(mine.as_fd()).unwrap(), b"read");
    // Frozen while the child holds them.
    assert!(matches!(
        map.insert_str("new", VecLink::NULL),
        Err(NativeError::Lent)
    ));
    assert!(matches!(words.push(StrLink::NULL), Err(NativeError::Lent)));
    send_frame(mine.as_fd(), b"release");
    assert_eq!(recv_frame(mine.as_fd()).unwrap(), b"released");
    assert!(wait_child(child).success(), "the reader failed");
    assert_eq!(pool.drain_returns(id).unwrap(), 3);

    // Given back: the owner changes them.
    let link = map.adopt(ShmVec::from_slice_in(&alloc, &[1u64, 2]).unwrap());
    map.insert_str("new", link).unwrap();
    assert_eq!(map.len() as u64, KEYS + 1);
    let l = words.adopt(ShmString::from_str_in(&alloc, "four").unwrap());
    words.push(l).unwrap();
    file.truncate(10).unwrap();
    assert_eq!(file.len(), 10);
    drop((map, file, words));
    assert_eq!(pool.usage(), base, "every block freed");
}

fn nested_reader() {
    let sock = child_socket();
    let (pool, _shift) = child_pool(sock.as_fd());
    let hs = handles(&recv_frame(sock.as_fd()).unwrap());
    assert_eq!(hs.len(), 3);
    {
        let map = MapRef::<StrLink, VecLink<u64>>::open(&pool, &hs[0]).unwrap();
        assert_eq!(map.len() as u64, KEYS);
        assert!(!map.is_empty());
        for i in 0..KEYS {
            let v = map.get_str(&word(i)).unwrap().expect("key present");
            let want: Vec<u64> = (0..i % 13).map(|j| i * 1000 + j).collect();
            assert_eq!(v.open(&pool).unwrap().to_vec().unwrap(), want);
        }
        assert!(map.get_str("absent").unwrap().is_none());
        let file = VecRef::<Part>::open(&pool, &hs[1]).unwrap();
        assert_eq!(file.len(), PARTS);
        for (p, part) in file.iter().enumerate() {
            let part = part.unwrap();
            let data = part.data.open(&pool).unwrap().to_vec().unwrap();
            assert_eq!(data.len() as u64, part.size);
            assert_eq!(data.len(), p * 97);
            assert_eq!(data.iter().map(|&b| u64::from(b)).sum::<u64>(), part.hash);
        }
        let words = VecRef::<StrLink>::open(&pool, &hs[2]).unwrap();
        let got: Vec<String> = words
            .iter()
            .map(|l| l.unwrap().open(&pool).unwrap().to_string().unwrap())
            .collect();
        assert_eq!(got, ["zero", "one", "two", "three", "ünïcödé"]);
    }
    send_frame(sock.as_fd(), b"read");
    assert_eq!(recv_frame(sock.as_fd()).unwrap(), b"release");
    for h in hs {
        pool.release(h).unwrap();
    }
    send_frame(sock.as_fd(), b"released");
}

// ---- SIGKILLed borrower -------------------------------------------------------------------------

#[test]
fn killed_borrower_releases_the_tree() {
    if role().is_some() {
        return holder();
    }
    let pool = LendPool::create(16 << 20).unwrap();
    let base = pool.usage();
    let (mine, theirs) = socketpair_stream().unwrap();
    let mut child = spawn("killed_borrower_releases_the_tree", theirs);
    let (id, setup) = pool.add_borrower().unwrap();
    send_setup(mine.as_fd(), &setup);
    drop(setup);
    let alloc = ShmAlloc::from(&pool);
    let mut v: ShmVec<StrLink> = ShmVec::new_in(&alloc).unwrap();
    for i in 0..100 {
        let l = v.adopt(ShmString::from_str_in(&alloc, &word(i)).unwrap());
        v.push(l).unwrap();
    }
    let h = v.lend(&pool, id).unwrap();
    drop(v);
    send_frame(mine.as_fd(), &h.to_bytes());
    assert_eq!(recv_frame(mine.as_fd()).unwrap(), b"holding");
    child.kill().unwrap();
    assert!(!wait_child(child).success());
    assert_eq!(
        pool.usage().objects,
        101,
        "the dead borrower's references keep the tree"
    );
    pool.reclaim(id).unwrap();
    assert_eq!(pool.usage(), base);
}

fn holder() {
    let sock = child_socket();
    let (pool, _shift) = child_pool(sock.as_fd());
    let h = handles(&recv_frame(sock.as_fd()).unwrap())[0];
    let v = VecRef::<StrLink>::open(&pool, &h).unwrap();
    assert_eq!(v.len(), 100);
    let s = v.get(42).unwrap().open(&pool).unwrap().to_string().unwrap();
    assert_eq!(s, word(42));
    send_frame(sock.as_fd(), b"holding");
    // Wait to be killed (bounded, in case the parent died first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- cycles -------------------------------------------------------------------------------------

const CYCLES: usize = if cfg!(debug_assertions) {
    10_000
} else {
    100_000
};
const BATCH: usize = 1000;

#[test]
fn lend_release_cycles_do_not_leak() {
    if role().is_some() {
        return cycler();
    }
    let pool = LendPool::create(64 << 20).unwrap();
    let base = pool.usage();
    let (mine, theirs) = socketpair_stream().unwrap();
    let child = spawn("lend_release_cycles_do_not_leak", theirs);
    let (id, setup) = pool.add_borrower().unwrap();
    send_setup(mine.as_fd(), &setup);
    drop(setup);
    let alloc = ShmAlloc::from(&pool);
    let mut n = 0u64;
    for _ in 0..CYCLES / BATCH {
        let mut msg = Vec::with_capacity(BATCH * H);
        for _ in 0..BATCH {
            let mut v: ShmVec<VecLink<u64>> = ShmVec::new_in(&alloc).unwrap();
            let l = v.adopt(ShmVec::from_slice_in(&alloc, &[n, n + 1]).unwrap());
            v.push(l).unwrap();
            msg.extend_from_slice(&v.lend(&pool, id).unwrap().to_bytes());
            n += 1;
        }
        send_frame(mine.as_fd(), &msg);
        assert_eq!(recv_frame(mine.as_fd()).unwrap(), b"done");
        assert_eq!(pool.drain_returns(id).unwrap(), BATCH);
        assert_eq!(pool.usage(), base, "after {n} cycles");
    }
    drop(mine);
    assert!(wait_child(child).success(), "the reader failed");
    assert_eq!(pool.lent_to(id), 0);
    assert_eq!(pool.bogus_returns(), 0);
}

fn cycler() {
    let sock = child_socket();
    let (pool, _shift) = child_pool(sock.as_fd());
    let mut n = 0u64;
    while let Some(msg) = recv_frame(sock.as_fd()) {
        for h in handles(&msg) {
            {
                let v = VecRef::<VecLink<u64>>::open(&pool, &h).unwrap();
                let inner = v.get(0).unwrap().open(&pool).unwrap();
                assert_eq!(inner.to_vec().unwrap(), [n, n + 1]);
            }
            pool.release(h).unwrap();
            n += 1;
        }
        send_frame(sock.as_fd(), b"done");
    }
}

// ---- through a session --------------------------------------------------------------------------

#[test]
fn lent_through_a_session() {
    if std::env::var_os(flowipc::session::SESSION_FD_ENV).is_some() {
        return session_child();
    }
    if role().is_some() {
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "lent_through_a_session",
        "--nocapture",
        "--test-threads=1",
    ]);
    let opts = flowipc::session::SessionOptions::new()
        .init_channel(flowipc::channel::TransportKind::Socket)
        .arenas(8 << 20)
        .handshake_timeout(Duration::from_secs(10));
    let (mut s, mut child) = flowipc::Session::spawn(&mut cmd, &opts).expect("spawn");
    let mut ch = s.take_init_channels().pop().unwrap();
    let alloc = ShmAlloc::from(s.lend_pool().expect("lend pool"));
    let mut v: ShmVec<StrLink> = ShmVec::new_in(&alloc).unwrap();
    for i in 0..10 {
        let l = v.adopt(ShmString::from_str_in(&alloc, &word(i)).unwrap());
        v.push(l).unwrap();
    }
    let h = s.lend_native(&v).unwrap();
    ch.send(&h.to_bytes()).unwrap();
    let mut buf = Vec::new();
    ch.recv_timeout(&mut buf, DEADLINE).unwrap();
    assert_eq!(buf, b"released");
    assert_eq!(s.reclaim_lent().unwrap(), 1);
    let l = v.adopt(ShmString::from_str_in(&alloc, "after").unwrap());
    v.push(l).unwrap();
    assert_eq!(v.len(), 11);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLINE, "child did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.wait().unwrap().success());
}

fn session_child() {
    let mut s = flowipc::Session::from_env().expect("from_env");
    let mut ch = s.take_init_channels().pop().unwrap();
    let mut buf = Vec::new();
    ch.recv_timeout(&mut buf, DEADLINE).unwrap();
    let h = ArenaHandle::from_bytes(&buf).unwrap();
    let pool = s.peer_pool().expect("the parent's lend pool");
    {
        let v = VecRef::<StrLink>::open(pool, &h).unwrap();
        let got: Vec<String> = v
            .iter()
            .map(|l| l.unwrap().open(&*pool).unwrap().to_string().unwrap())
            .collect();
        assert_eq!(got, (0..10).map(word).collect::<Vec<_>>());
    }
    pool.release(h).unwrap();
    ch.send(b"released").unwrap();
}
