//! Hostile input for the ring: `attach` over a region that is nothing but fuzz bytes (or a valid ring
//! overwritten with them), then producer and consumer operations interleaved with arbitrary writes to
//! the header (positions, waiting words, config) and to the frame bytes, standing for a peer that
//! writes anything at any time. Errors are fine; a panic, an out-of-bounds access (ASan), a hang, a
//! popped frame longer than the largest payload, a payload or chunk outside the ring buffer, or a
//! poisoned handle that recovers is a bug.
//!
//! Blocking waits (`pop_wait`, `push_wait`, `arm_wake`) run with every policy against a waiter
//! that stands for a sleep during which the peer writes anything into the sleeper's waiting word
//! and into its own CPU hint; the caller's deadline (a bounded number of `check` calls) must end
//! every wait, and no sleep may happen without a `check` before it.
//!
//! Once a ring attaches, the region is moved to an allocation of exactly `region_size(capacity)`
//! bytes, so the buffer ends flush with the allocation: a read or write even one byte past the
//! buffer hits ASan's redzone instead of slack that would hide it.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::ptr::NonNull;
use std::time::Duration;

use arbitrary::Arbitrary;
use flowipc_core::ring::{
    max_payload, region_size, Consumer, PopError, Producer, PushError, RawRing, FRAME_HEADER,
    HEADER_SIZE, REGION_ALIGN,
};
use flowipc_core::sync::{AtomicU32, Ordering};
use flowipc_core::wait::{NoopNotifier, Notifier, WaitOutcome, WaitPolicy, Waiter, WakeKind};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Writes 8 bytes at `at` (anywhere in the region, 8-aligned).
    Poke {
        at: u16,
        bytes: [u8; 8],
    },
    /// Writes a position-like value into one of the header's words.
    Field {
        which: u8,
        value: u64,
        near: bool,
    },
    /// Writes a frame header word at a buffer offset.
    Frame {
        at: u16,
        len: u32,
        kind: u16,
        tag: u16,
    },
    /// The peer publishes a frame where the consumer reads next: writes a frame header at the
    /// shared `head`'s offset and stores `tail = head + the frame's size + 8 * extra`, so a
    /// frame whose claimed end lies past the buffer but within what is published is one step away.
    Publish {
        len: u16,
        kind: u16,
        tag: u16,
        extra: u8,
    },
    Pop {
        buf: u16,
    },
    ReadChunk {
        offset: u16,
    },
    Push {
        len: u16,
    },
    Chunk {
        len: u16,
        commit: u16,
    },
    /// A blocking `pop_wait`, ended by the caller's deadline if no frame comes.
    PopWait {
        buf: u16,
        wait: Wait,
    },
    /// A blocking `push_wait`, ended by the caller's deadline if no room comes.
    PushWait {
        len: u16,
        wait: Wait,
    },
    /// `arm_wake` on one side (the async path's announcement), then `disarm`.
    Arm {
        consumer: bool,
        eventfd: bool,
        disarm: bool,
    },
    /// Attaches again and makes new handles (drops the old ones first).
    Reattach,
}

/// How a blocking wait meets the hostile peer: the policy, what this side says about its CPU,
/// what the peer writes into the waiting word and its CPU hint while this side sleeps, and how
/// many `check` calls the caller allows before its deadline ends the wait.
#[derive(Arbitrary, Debug)]
struct Wait {
    /// 0: busy-poll, 1: spin-then-block, else block.
    policy: u8,
    spins: u8,
    cpu: Option<u8>,
    eventfd: bool,
    peer_word: u32,
    peer_cpu: u32,
    timed_out: bool,
    checks: u8,
}

impl Wait {
    fn policy(&self) -> WaitPolicy {
        match self.policy % 3 {
            0 => WaitPolicy::BusyPoll,
            1 => WaitPolicy::SpinThenBlock {
                spins: u32::from(self.spins),
            },
            _ => WaitPolicy::Block,
        }
    }
}

/// A waiter that never sleeps: each `wait` stands for a sleep during which the peer writes its
/// chosen values into the sleeper's waiting word and into the peer's own CPU hint.
struct HostileWaiter<'a> {
    region: &'a Region,
    wait: &'a Wait,
    /// Header offset of the peer's CPU hint (the one this side reads before spinning).
    peer_hint_at: usize,
    sleeps: Cell<u32>,
}

impl Waiter for HostileWaiter<'_> {
    fn wake_kind(&self) -> WakeKind {
        if self.wait.eventfd {
            WakeKind::EventFd
        } else {
            WakeKind::Futex
        }
    }

    fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) -> WaitOutcome {
        self.sleeps.set(self.sleeps.get() + 1);
        // Futex semantics: no sleep unless the word still holds `expected`.
        if word.load(Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        word.store(self.wait.peer_word, Ordering::Relaxed);
        self.region
            .write(self.peer_hint_at, &self.wait.peer_cpu.to_le_bytes());
        if self.wait.timed_out {
            WaitOutcome::TimedOut
        } else {
            WaitOutcome::Woken
        }
    }

    fn current_cpu(&self) -> Option<u32> {
        self.wait.cpu.map(u32::from)
    }
}

/// A notifier that wakes nobody and reports a CPU (recorded in this side's hint).
struct CpuNotifier(Option<u32>);

impl Notifier for CpuNotifier {
    fn wake(&self, _word: &AtomicU32, _kind: WakeKind) {}

    fn current_cpu(&self) -> Option<u32> {
        self.0
    }
}

/// Why a blocking call in this target ended.
#[derive(Debug)]
enum WaitError {
    Pop(PopError),
    Push(PushError),
    /// The caller's deadline: `check` was called more often than the input allows.
    Deadline,
}

impl From<PopError> for WaitError {
    fn from(e: PopError) -> Self {
        WaitError::Pop(e)
    }
}

impl From<PushError> for WaitError {
    fn from(e: PushError) -> Self {
        WaitError::Push(e)
    }
}

/// The caller's `check` callback: a short timeout per sleep, and a deadline after `wait.checks`
/// (at most 4) calls; `calls` counts the calls.
fn deadline<'a>(
    wait: &Wait,
    calls: &'a Cell<u32>,
) -> impl FnMut() -> Result<Option<Duration>, WaitError> + 'a {
    let limit = u32::from(wait.checks % 4) + 1;
    move || {
        calls.set(calls.get() + 1);
        if calls.get() > limit {
            Err(WaitError::Deadline)
        } else {
            Ok(Some(Duration::from_millis(1)))
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap_log: u8,
    /// Region length relative to what the capacity needs (negative: too small).
    slack: i8,
    /// `false`: a valid `init` first, then `fill` over it from `fill_at`; `true`: only fuzz bytes.
    raw: bool,
    fill_at: u16,
    fill: Vec<u8>,
    ops: Vec<Op>,
}

const N: &NoopNotifier = &NoopNotifier;

struct Region(NonNull<u8>, Layout);

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `Region::zeroed` with this layout.
        unsafe { dealloc(self.0.as_ptr(), self.1) }
    }
}

impl Region {
    /// A zeroed allocation of exactly `len` bytes (at least 8), aligned for a ring.
    fn zeroed(len: usize) -> Option<Region> {
        let layout = Layout::from_size_align(len.max(8), REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        NonNull::new(unsafe { alloc_zeroed(layout) }).map(|p| Region(p, layout))
    }

    fn ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    fn len(&self) -> usize {
        self.1.size()
    }

    /// A copy of the first `len` bytes (`len <= self.len()`) in an allocation of exactly `len`.
    fn prefix(&self, len: usize) -> Option<Region> {
        let r = Region::zeroed(len)?;
        // SAFETY: both allocations hold at least `len` bytes and are distinct; no handle is alive.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(), r.ptr(), len) };
        Some(r)
    }

    /// The little-endian word at `at`, a header offset (`at + 8 <= HEADER_SIZE <= len` once a
    /// ring attached).
    fn read_u64(&self, at: usize) -> u64 {
        assert!(at + 8 <= HEADER_SIZE && HEADER_SIZE <= self.len());
        let mut b = [0u8; 8];
        // SAFETY: in bounds (asserted); plain bytes, single-threaded (stands for the peer's read).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(at), b.as_mut_ptr(), 8) };
        u64::from_le_bytes(b)
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        let len = self.len();
        if bytes.len() > len {
            return;
        }
        let at = at.min(len - bytes.len());
        // SAFETY: in bounds; single-threaded, no handle call is running, and the ring accesses the
        // region only through atomics and raw pointers (this stands for the peer's writes).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr().add(at), bytes.len()) };
    }

    /// Asserts that `len` bytes at `p` lie inside the ring buffer of capacity `cap` (after the
    /// header, before the end of the allocation), and that a payload leaves room for its frame
    /// header before it.
    fn assert_in_buffer(&self, p: *const u8, len: usize, cap: usize, what: &str) {
        let start = self.ptr() as usize + HEADER_SIZE;
        let end = start + cap;
        assert_eq!(end, self.ptr() as usize + self.len(), "buffer not flush");
        let p = p as usize;
        assert!(
            p >= start + FRAME_HEADER && p + len <= end,
            "{what} of {len} bytes at buffer offset {} outside the {cap}-byte buffer",
            p.wrapping_sub(start)
        );
    }
}

type Handles = (usize, Option<Producer>, Option<Consumer>);

/// Attaches over `region`. When the header names a ring smaller than the region, the region is
/// first replaced by a copy of exactly `region_size(capacity)` bytes, so the buffer ends flush with
/// its allocation. Returns the capacity and whichever handles the positions allow.
fn attach(region: &mut Region) -> Option<Handles> {
    // SAFETY: `region` is valid for its length and outlives every view and handle made here (the
    // caller drops the handles before it drops or replaces the region); `attach` validates
    // whatever the bytes hold.
    let raw = unsafe { RawRing::attach(region.ptr(), region.len()) }.ok()?;
    let need = region_size(raw.capacity());
    assert!(need <= region.len());
    let raw = if need < region.len() {
        *region = region.prefix(need)?;
        // SAFETY: as above, over the exact copy; the old view is not used again.
        unsafe { RawRing::attach(region.ptr(), need) }.expect("same bytes attach again")
    } else {
        raw
    };
    assert_eq!(region_size(raw.capacity()), region.len());
    // SAFETY: memory outlives the handles; one producer and one consumer at a time (the old ones
    // are dropped before `attach` runs again).
    let tx = unsafe { raw.producer() }.ok();
    // SAFETY: as above.
    let rx = unsafe { raw.consumer() }.ok();
    Some((raw.capacity(), tx, rx))
}

fuzz_target!(|input: Input| {
    let cap = 32usize << (input.cap_log % 10);
    let len = (region_size(cap) as isize + isize::from(input.slack) * 8).max(8) as usize;
    let Some(mut region) = Region::zeroed(len) else {
        return;
    };
    if !input.raw {
        // SAFETY: `region` is valid for `len` bytes, and no view of it survives a replacement
        // (`attach` makes new ones).
        let _ = unsafe { RawRing::init(region.ptr(), len, cap) };
    }
    region.write(usize::from(input.fill_at) & !7, &input.fill);

    let Some((mut rcap, mut tx, mut rx)) = attach(&mut region) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 16];
    let (mut tx_poisoned, mut rx_poisoned) = (false, false);

    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Poke { at, bytes } => region.write(usize::from(at) & !7, &bytes),
            Op::Field { which, value, near } => {
                // Header words: magic 0, version|closed 8, capacity 16, tail 128, head 256,
                // consumer_waiting 384, producer_waiting 512.
                let at = [0usize, 8, 16, 128, 256, 384, 512][usize::from(which) % 7];
                let value = if near {
                    // Close to the current positions, to reach the subtle checks.
                    let cur = region.read_u64(at);
                    cur.wrapping_add(value % 256).wrapping_sub(128)
                } else {
                    value
                };
                region.write(at, &value.to_le_bytes());
            }
            Op::Frame {
                at,
                len: flen,
                kind,
                tag,
            } => {
                let at = HEADER_SIZE + (usize::from(at) % rcap & !7);
                let word = u64::from(flen) | u64::from(kind % 4) << 32 | u64::from(tag) << 48;
                region.write(at, &word.to_le_bytes());
            }
            Op::Publish {
                len: flen,
                kind,
                tag,
                extra,
            } => {
                let head = region.read_u64(256);
                let at = HEADER_SIZE + (head as usize % rcap & !7);
                let word = u64::from(flen) | u64::from(kind % 4) << 32 | u64::from(tag) << 48;
                region.write(at, &word.to_le_bytes());
                let size = (FRAME_HEADER as u64 + u64::from(flen) + 7) & !7;
                let tail = head.wrapping_add(size + 8 * u64::from(extra % 4));
                region.write(128, &tail.to_le_bytes());
            }
            Op::Pop { buf: n } => {
                if let Some(rx) = rx.as_mut() {
                    match rx.try_pop(&mut buf[..usize::from(n)], N) {
                        Ok(info) => {
                            assert!(!rx_poisoned, "poisoned consumer recovered");
                            assert!(info.len <= max_payload(rcap));
                        }
                        Err(PopError::Corrupt) => rx_poisoned = true,
                        Err(_) => assert!(!rx_poisoned, "poisoned consumer recovered"),
                    }
                }
            }
            Op::ReadChunk { offset } => {
                if let Some(rx) = rx.as_mut() {
                    match rx.read_chunk(N) {
                        Ok(chunk) => {
                            assert!(!rx_poisoned, "poisoned consumer recovered");
                            assert!(chunk.len() <= max_payload(rcap));
                            region.assert_in_buffer(chunk.as_ptr(), chunk.len(), rcap, "payload");
                            chunk.read(usize::from(offset), &mut buf);
                        }
                        Err(PopError::Corrupt) => rx_poisoned = true,
                        Err(_) => assert!(!rx_poisoned, "poisoned consumer recovered"),
                    }
                }
            }
            Op::Push { len: n } => {
                if let Some(tx) = tx.as_mut() {
                    match tx.try_push(&buf[..usize::from(n)], N) {
                        Ok(()) => assert!(!tx_poisoned, "poisoned producer recovered"),
                        Err(PushError::Corrupt) => tx_poisoned = true,
                        Err(_) => assert!(!tx_poisoned, "poisoned producer recovered"),
                    }
                }
            }
            Op::Chunk { len: n, commit } => {
                if let Some(tx) = tx.as_mut() {
                    match tx.write_chunk(usize::from(n)) {
                        Ok(mut chunk) => {
                            assert!(!tx_poisoned, "poisoned producer recovered");
                            let clen = chunk.len();
                            region.assert_in_buffer(chunk.as_mut_ptr(), clen, rcap, "chunk");
                            chunk.write(0, &buf[..usize::from(n)]);
                            chunk.commit(usize::from(commit) % (usize::from(n) + 1), 1, N);
                        }
                        Err(PushError::Corrupt) => tx_poisoned = true,
                        Err(_) => assert!(!tx_poisoned, "poisoned producer recovered"),
                    }
                }
            }
            Op::PopWait { buf: n, wait } => {
                if let Some(rx) = rx.as_mut() {
                    // The consumer reads the producer's CPU hint (producer line, offset 512 + 4).
                    let waiter = HostileWaiter {
                        region: &region,
                        wait: &wait,
                        peer_hint_at: 516,
                        sleeps: Cell::new(0),
                    };
                    let calls = Cell::new(0);
                    let notifier = CpuNotifier(wait.cpu.map(u32::from));
                    let r = rx.pop_wait(
                        &mut buf[..usize::from(n)],
                        &notifier,
                        &waiter,
                        wait.policy(),
                        deadline(&wait, &calls),
                    );
                    assert!(waiter.sleeps.get() <= calls.get(), "slept without a check");
                    match r {
                        Ok(info) => {
                            assert!(!rx_poisoned, "poisoned consumer recovered");
                            assert!(info.len <= max_payload(rcap));
                        }
                        Err(WaitError::Pop(PopError::Corrupt)) => rx_poisoned = true,
                        Err(_) => assert!(!rx_poisoned, "poisoned consumer recovered"),
                    }
                }
            }
            Op::PushWait { len: n, wait } => {
                if let Some(tx) = tx.as_mut() {
                    // The producer reads the consumer's CPU hint (consumer line, offset 384 + 4).
                    let waiter = HostileWaiter {
                        region: &region,
                        wait: &wait,
                        peer_hint_at: 388,
                        sleeps: Cell::new(0),
                    };
                    let calls = Cell::new(0);
                    let notifier = CpuNotifier(wait.cpu.map(u32::from));
                    let r = tx.push_wait(
                        &buf[..usize::from(n)],
                        2,
                        &notifier,
                        &waiter,
                        wait.policy(),
                        deadline(&wait, &calls),
                    );
                    assert!(waiter.sleeps.get() <= calls.get(), "slept without a check");
                    match r {
                        Ok(()) => assert!(!tx_poisoned, "poisoned producer recovered"),
                        Err(WaitError::Push(PushError::Corrupt)) => tx_poisoned = true,
                        Err(_) => assert!(!tx_poisoned, "poisoned producer recovered"),
                    }
                }
            }
            Op::Arm {
                consumer,
                eventfd,
                disarm,
            } => {
                let kind = if eventfd {
                    WakeKind::EventFd
                } else {
                    WakeKind::Futex
                };
                if consumer {
                    if let Some(rx) = rx.as_mut() {
                        match rx.arm_wake(kind) {
                            Ok(_) => assert!(!rx_poisoned, "poisoned consumer recovered"),
                            Err(PopError::Corrupt) => rx_poisoned = true,
                            Err(_) => assert!(!rx_poisoned, "poisoned consumer recovered"),
                        }
                        if disarm {
                            rx.disarm();
                        }
                    }
                } else if let Some(tx) = tx.as_mut() {
                    match tx.arm_wake(kind) {
                        Ok(_) => assert!(!tx_poisoned, "poisoned producer recovered"),
                        Err(PushError::Corrupt) => tx_poisoned = true,
                        Err(_) => assert!(!tx_poisoned, "poisoned producer recovered"),
                    }
                    if disarm {
                        tx.disarm();
                    }
                }
            }
            Op::Reattach => {
                drop(tx.take());
                drop(rx.take());
                match attach(&mut region) {
                    Some((c, t, r)) => {
                        (rcap, tx, rx) = (c, t, r);
                        (tx_poisoned, rx_poisoned) = (false, false);
                    }
                    None => return,
                }
            }
        }
    }
    drop(tx);
    drop(rx);
    drop(region);
});
