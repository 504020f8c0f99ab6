//! A hostile peer attacks through the descriptors it shares, not only through bytes, and a dead
//! peer must be noticed by every call. One test per attack of the audit table in the crate docs
//! (`flowipc` "Descriptors a peer holds"); each runs the attacker in a real fork child that holds
//! the same open file descriptions as the victim (the parent), as a process that created a pair
//! and kept duplicates would. Every wait is bounded, so a regression fails instead of hanging.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowipc::arena::LendPool;
use flowipc::channel::{Channel, ChannelFds, RecvError, SendError};
use flowipc::ring::ShmRing;
use flowipc_sys::socket::{self, PollFd, PollFlags, SendFlags};

extern "C" {
    fn fork() -> i32;
    fn _exit(status: i32) -> !;
    fn kill(pid: i32, sig: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

const SIGKILL: i32 = 9;
/// How long a call under attack may take before the test calls it stuck.
const STUCK: Duration = Duration::from_secs(3);

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fork child running `f`, which reports through the write end of a pipe.
struct Child {
    pid: i32,
    reaped: bool,
}

impl Child {
    /// Forks; the child runs `f(report)` and then sleeps until killed (it holds its descriptors).
    fn spawn(f: impl FnOnce(&mut std::fs::File)) -> (Child, std::fs::File) {
        let (r, w) = flowipc_sys::pipe::pipe().unwrap();
        // SAFETY: the child runs `f`, which makes system calls and allocates (glibc's fork makes
        // malloc usable in the child) but takes no lock another thread of the parent could hold,
        // and it leaves through `_exit` or SIGKILL, never through the parent's destructors.
        let pid = unsafe { fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            drop(r);
            let mut w = std::fs::File::from(w);
            f(&mut w);
            let _ = w.write_all(b"R");
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        drop(w);
        (Child { pid, reaped: false }, std::fs::File::from(r))
    }

    /// SIGKILLs the child and reaps it.
    fn kill(&mut self) {
        if !self.reaped {
            // SAFETY: plain system calls on our own child's pid.
            unsafe {
                kill(self.pid, SIGKILL);
                let mut status = 0;
                waitpid(self.pid, &mut status, 0);
            }
            self.reaped = true;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) for the child's "ready" byte.
fn wait_ready(report: &mut std::fs::File) {
    let mut pfd = [PollFd::new(&*report, PollFlags::IN)];
    let n = socket::poll(&mut pfd, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(n, 1, "the attacker never got ready");
    let mut b = [0u8; 1];
    let got = std::io::Read::read(report, &mut b).unwrap();
    assert_eq!(
        &b[..got],
        b"R",
        "the attacker failed (it exits before reporting ready)"
    );
}

/// Runs `f` on a thread and returns its result, or `None` if it is still running after `limit`
/// (the thread is then left stuck: the test fails right after).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// The peer's end as bare descriptors: dropping them in the parent after the fork closes them
/// without the orderly close a dropped `Channel` would send through the shared ring.
fn bare(ch: Channel) -> Vec<OwnedFd> {
    ch.into_fds().unwrap().into_parts().1
}

/// Duplicates of `ch`'s descriptors (same open file descriptions) and `ch` rebuilt from them.
fn with_dups(ch: Channel) -> (Channel, Vec<OwnedFd>) {
    let (code, fds) = ch.into_fds().unwrap().into_parts();
    let dups = fds
        .iter()
        .map(|fd| fd.try_clone().unwrap())
        .collect::<Vec<_>>();
    let ch = Channel::from_fds(ChannelFds::from_parts(code, fds)).unwrap();
    (ch, dups)
}

/// What an attacker does to a wake-up descriptor it shares: make it blocking, then make the
/// victim's next write to it block if it can (an eventfd: saturate the counter; a socket: fill
/// the buffer the victim writes into, from the victim's own end).
fn jam(fd: BorrowedFd<'_>) {
    flowipc_sys::fd::set_nonblocking(fd, false).unwrap();
    if flowipc_sys::eventfd::is_eventfd(fd).unwrap_or(false) {
        flowipc_sys::eventfd::eventfd_write(fd, 0xffff_ffff_ffff_fffe).unwrap();
    } else {
        let chunk = [0u8; 4096];
        let mut n = 0;
        while socket::send(fd, &chunk, SendFlags::DONTWAIT).is_ok() {
            n += 1;
            assert!(n < 1 << 16, "the socket buffer never filled");
        }
    }
}

/// Attack 1: the peer clears `O_NONBLOCK` on the ring's wake-up descriptors, jams them, and asks
/// for descriptor wake-ups in both waiting words; the victim's send and receive must still finish.
/// (With eventfds, the victim stuck in `write(2)` for ever.)
#[test]
fn ring_wakeup_descriptors_cannot_be_jammed() {
    let _g = serial();
    let (a, b) = Channel::ring_pair().unwrap();
    let b = bare(b);
    let (mut a, dups) = with_dups(a);
    let (child, mut report) = Child::spawn(move |_| {
        for fd in &dups[3..] {
            jam(fd.as_fd());
        }
        // dups[0] is the victim's tx ring: become its receiver and ask for a descriptor wake-up.
        let tx_ring = ShmRing::open(dups[0].try_clone().unwrap()).unwrap();
        let mut rx = tx_ring.receiver().unwrap();
        assert!(!rx.arm_doorbell_wake().unwrap());
        // dups[1] is the victim's rx ring: send it a message, then ask to be woken for room.
        let rx_ring = ShmRing::open(dups[1].try_clone().unwrap()).unwrap();
        let mut tx = rx_ring.sender().unwrap();
        // One frame of a FIRST|LAST message with no descriptors (the channel's framing).
        tx.try_send_tagged(b"hi", 0x03).unwrap();
        let _ = tx.arm_doorbell_wake();
        std::mem::forget((rx, tx, tx_ring, rx_ring, b));
    });
    wait_ready(&mut report);
    let out = bounded(STUCK, move || {
        let sent = a.send(b"ping");
        let mut buf = Vec::new();
        let got = a
            .recv_timeout(&mut buf, Duration::from_secs(1))
            .map(|_| buf);
        (sent, got)
    });
    drop(child);
    let (sent, got) = out.expect("a send or receive stuck on a jammed wake-up descriptor");
    sent.expect("send under attack");
    assert_eq!(got.expect("receive under attack"), b"hi");
}

/// Attack 1b: the same jam against an async ring channel, which sleeps on its doorbells.
#[cfg(feature = "tokio")]
#[test]
fn async_ring_survives_jammed_and_hung_up_doorbells() {
    let _g = serial();
    let (a, b) = Channel::ring_pair().unwrap();
    let b = bare(b);
    let (a, dups) = with_dups(a);
    let (child, mut report) = Child::spawn(move |_| {
        for fd in &dups[3..] {
            jam(fd.as_fd());
            // And shut the doorbell down: nobody will ever ring it again.
            let _ = socket::shutdown(fd.as_fd(), socket::Shutdown::Both);
        }
        std::mem::forget(b);
    });
    wait_ready(&mut report);
    let out = bounded(STUCK, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut a = a.into_async().unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), a.recv(&mut buf)).await
        })
    });
    drop(child);
    let res = out.expect("the async receive spun or hung on a shut-down doorbell");
    // Nobody can wake us any more: the receive ends with PeerGone (not a hang, not a spin).
    match res {
        Ok(Err(RecvError::PeerGone)) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
}

/// Attack 2: a lend-pool borrower reopens its read-only pool descriptor read-write through
/// `/proc/self/fd` and tries to write the pool (mapping, `write(2)`, hole punching). Every route
/// must be refused, and the owner's object and allocator must be untouched.
fn lend_pool_is_read_only_for_borrowers(pool: LendPool) {
    let obj = pool.alloc_bytes(&[0x5a; 256]).unwrap();
    let (_id, setup) = pool.add_borrower().unwrap();
    let pool_fd = setup.pool_fd;
    let (child, mut report) = Child::spawn(move |report| {
        let path = format!("/proc/self/fd/{}", pool_fd.as_raw_fd());
        let mut verdict = Vec::new();
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Err(_) => verdict.push(b'o'), // could not even reopen it writable: fine too
            Ok(f) => {
                let len = f.metadata().unwrap().len() as usize;
                let map = flowipc_sys::mmap::Mapping::map(
                    f.as_fd(),
                    0,
                    len,
                    flowipc_sys::mmap::Access::ReadWrite,
                );
                verdict.push(if map.is_err() { b'm' } else { b'M' });
                let wrote = f.write_at(&[0xee; 64], 4096);
                verdict.push(if wrote.is_err() { b'w' } else { b'W' });
                let punched = rustix::fs::fallocate(
                    &f,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    0,
                    len as u64,
                );
                verdict.push(if punched.is_err() { b'p' } else { b'P' });
            }
        }
        report.write_all(&verdict).unwrap();
    });
    // The verdict bytes, then the ready byte.
    let mut pfd = [PollFd::new(&report, PollFlags::IN)];
    assert_eq!(
        socket::poll(&mut pfd, Some(Duration::from_secs(10))).unwrap(),
        1
    );
    std::thread::sleep(Duration::from_millis(50));
    let mut verdict = Vec::new();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut report, &mut buf).unwrap();
    verdict.extend_from_slice(&buf[..n]);
    drop(child);
    assert!(
        verdict == b"omwpR" || verdict == b"mwpR" || verdict == b"oR",
        "a borrower wrote the pool: {}",
        String::from_utf8_lossy(&verdict)
    );
    assert_eq!(obj.to_vec().unwrap(), vec![0x5a; 256]);
    let again = pool
        .alloc_bytes(&[1; 64])
        .expect("the pool still allocates");
    assert_eq!(again.to_vec().unwrap(), vec![1; 64]);
}

#[test]
fn core_lend_pool_is_read_only_for_borrowers() {
    let _g = serial();
    lend_pool_is_read_only_for_borrowers(LendPool::create(1 << 20).unwrap());
}

#[cfg(feature = "jemalloc")]
#[test]
fn jemalloc_lend_pool_is_read_only_for_borrowers() {
    let _g = serial();
    lend_pool_is_read_only_for_borrowers(LendPool::create_jemalloc(8 << 20).unwrap());
}

/// Attack 3: the creator of an mq pair keeps duplicates of the end it handed over and clears
/// `O_NONBLOCK` on them; the other side's `try_recv` must still return at once, and after the
/// creator dies a blocking `recv` must end with `PeerGone`.
#[test]
fn mq_peer_cannot_make_calls_block_by_clearing_nonblock() {
    let _g = serial();
    let (a, b) = Channel::mq_pair().unwrap();
    let b = bare(b);
    let (mut a, dups) = with_dups(a);
    let (mut child, mut report) = Child::spawn(move |_| {
        for fd in &dups[..2] {
            flowipc_sys::mq::mq_set_nonblocking(fd.as_fd(), false).unwrap();
        }
        std::mem::forget(b);
    });
    wait_ready(&mut report);
    let (a_back, first) = bounded(STUCK, move || {
        let mut buf = Vec::new();
        let r = a.try_recv(&mut buf).map(drop);
        (a, r)
    })
    .expect("try_recv blocked on an mq descriptor whose O_NONBLOCK the peer cleared");
    assert!(matches!(first, Err(RecvError::WouldBlock)), "{first:?}");
    let mut a = a_back;
    child.kill();
    let t0 = Instant::now();
    let res = bounded(STUCK, move || {
        let mut buf = Vec::new();
        a.recv(&mut buf).map(drop)
    })
    .expect("a blocking recv never saw the creator's death");
    assert!(matches!(res, Err(RecvError::PeerGone)), "{res:?}");
    eprintln!(
        "mq: PeerGone {:?} after the creator was reaped",
        t0.elapsed()
    );
}

/// Defect 4: after the peer is SIGKILLed and reaped, sends must fail with `PeerGone` within a few
/// milliseconds on every transport, blocking or not; none may go on succeeding until a buffer fills.
fn send_to_dead_peer_fails_promptly(name: &str, make: fn() -> (Channel, Channel)) {
    let (mut a, b) = make();
    // The victim takes its sending side (and the watch on the peer) while the peer lives.
    a.send(b"hello").unwrap();
    let b = bare(b);
    let (mut child, mut report) = Child::spawn(move |_| std::mem::forget(b));
    wait_ready(&mut report);
    child.kill();
    let reaped = Instant::now();
    let out = bounded(STUCK, move || {
        // Paced like an application that sends now and then, so that a transport which goes on
        // accepting messages for a dead peer (until its buffer fills) shows it by the clock.
        let msg = [7u8; 1024];
        let mut ok = 0u32;
        let mut last_ok = None;
        let err = loop {
            // Alternate non-blocking and blocking sends: both must learn of the death.
            let r = if ok % 2 == 0 {
                a.try_send(&msg)
            } else {
                a.send(&msg)
            };
            match r {
                Ok(()) => {
                    ok += 1;
                    last_ok = Some(reaped.elapsed());
                    if reaped.elapsed() > Duration::from_millis(500) {
                        break SendError::WouldBlock;
                    }
                    // 6 ms: even a 10-message queue then takes longer than the limit to fill.
                    std::thread::sleep(Duration::from_millis(6));
                }
                Err(e) => break e,
            }
        };
        (ok, last_ok, err, reaped.elapsed())
    });
    let (ok, last_ok, err, took) = out.expect("a send to a dead peer blocked");
    eprintln!(
        "{name}: PeerGone {took:?} after the peer was reaped; {ok} sends succeeded first, the \
         last at {last_ok:?}"
    );
    assert!(matches!(err, SendError::PeerGone), "{name}: {err:?}");
    assert!(
        took < Duration::from_millis(50),
        "{name}: sends went on succeeding for {took:?} ({ok} of them)"
    );
}

#[test]
fn ring_send_to_dead_peer_fails_promptly() {
    let _g = serial();
    send_to_dead_peer_fails_promptly("ring", || Channel::ring_pair().unwrap());
}

#[test]
fn socket_send_to_dead_peer_fails_promptly() {
    let _g = serial();
    send_to_dead_peer_fails_promptly("socket", || Channel::socket_pair().unwrap());
}

#[test]
fn mq_send_to_dead_peer_fails_promptly() {
    let _g = serial();
    send_to_dead_peer_fails_promptly("mq", || Channel::mq_pair().unwrap());
}

/// Corruption seen by a sender: the peer (here, memory it shares) leaves impossible positions in
/// the ring; the send reports `Corrupt`, distinct from an OS failure.
#[test]
fn corrupt_ring_on_the_send_side_is_corrupt_not_io() {
    let _g = serial();
    let (a, b) = Channel::ring_pair().unwrap();
    let (mut a, dups) = with_dups(a);
    a.send(b"x").unwrap();
    // Scribble over the consumer's position in the victim's tx ring (the header's first lines),
    // as a peer may: the consumer position now runs ahead of the producer's.
    let len = flowipc_sys::memfd::size(dups[0].as_fd()).unwrap() as usize;
    let map = flowipc_sys::mmap::Mapping::map(
        dups[0].as_fd(),
        0,
        len,
        flowipc_sys::mmap::Access::ReadWrite,
    )
    .unwrap();
    let p = map.as_mut_ptr().unwrap();
    // SAFETY: `p` points to `len` mapped, writable bytes; the store at the consumer position's
    // offset (256, checked by `offset_of!` asserts in flowipc-core's ring layout) races only with
    // the victim's atomics, which treat the memory as hostile anyway.
    unsafe { (p.add(256) as *mut u64).write_volatile(u64::MAX / 3) };
    let err = loop {
        match a.try_send(&[1; 64]) {
            Ok(()) => {}
            Err(e) => break e,
        }
    };
    drop(b);
    assert!(matches!(err, SendError::Corrupt(_)), "{err:?}");
}
