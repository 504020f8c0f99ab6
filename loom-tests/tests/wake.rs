//! loom models of the ring's wake-up elision (the waiting-word / Dekker protocol of
//! `flowipc_core::wait`): no lost wake-up, no sleep while the ring holds what the sleeper waits for,
//! and a wake call only when the other side announced that it sleeps.
//!
//! The futex is modelled by a loom `Mutex` + `Condvar`: the sleeper checks the word and starts
//! waiting under the lock (one atomic step, as in the kernel), and the waker takes the lock to
//! notify. A sleep without timeout that is never ended is a lost wake-up, which loom reports as a
//! deadlock (loom's condvar has no spurious wake-ups to hide one).
//!
//! Run with `RUSTFLAGS="--cfg flowipc_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p flowipc-loom-tests
//! --release --test wake`.
#![cfg(flowipc_loom)]

use std::sync::Arc;
use std::time::Duration;

use flowipc_core::ring::{PopError, PushError, Ring};
use flowipc_core::sync::{AtomicU32, AtomicUsize, Ordering};
use flowipc_core::wait::{Notifier, WaitOutcome, WaitPolicy, Waiter, WakeKind};
use flowipc_loom_tests::explore;
use loom::sync::{Condvar, Mutex};
use loom::thread;

/// A futex stand-in shared by both sides.
struct LoomFutex {
    lock: Mutex<()>,
    cond: Condvar,
    /// Calls to `wake` (system calls the real notifier would make).
    wakes: AtomicUsize,
    /// Sleeps actually started (the word still held the expected value).
    sleeps: AtomicUsize,
}

impl LoomFutex {
    fn new() -> Arc<Self> {
        Arc::new(LoomFutex {
            lock: Mutex::new(()),
            cond: Condvar::new(),
            wakes: AtomicUsize::new(0),
            sleeps: AtomicUsize::new(0),
        })
    }
}

impl Waiter for LoomFutex {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::Futex
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        assert!(timeout.is_none(), "models sleep without timeout");
        let guard = self.lock.lock().unwrap();
        // Relaxed: the lock orders this load after a waker's reset of the word (the waker takes
        // the lock after resetting it).
        if word.load(Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        let _guard = self.cond.wait(guard).unwrap();
        WaitOutcome::Woken
    }
}

impl Notifier for LoomFutex {
    fn wake(&self, _word: &AtomicU32, _kind: WakeKind) {
        // (The word was reset by the caller's swap, but the sleeper may already have set it again
        // for its next sleep, so it is not asserted here.)
        self.wakes.fetch_add(1, Ordering::Relaxed);
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
}

fn no_deadline<E>() -> Result<Option<Duration>, E> {
    Ok(None)
}

/// The consumer blocks on an empty ring; the producer publishes two frames with plain `try_push`.
/// Whatever the interleaving, the consumer is woken for each frame it waits for.
#[test]
fn consumer_sleeps_on_empty_and_is_woken() {
    explore("consumer_sleeps_on_empty_and_is_woken", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            tx.try_push(&[1], &*f).unwrap();
            tx.try_push(&[2], &*f).unwrap();
        });
        let mut buf = [0u8; 8];
        for expected in [1u8, 2] {
            let info = rx
                .pop_wait(
                    &mut buf,
                    &*futex,
                    &*futex,
                    WaitPolicy::Block,
                    no_deadline::<PopError>,
                )
                .unwrap();
            assert_eq!((info.len, buf[0]), (1, expected));
        }
        producer.join().unwrap();
        // Elision: every wake call answered an announced sleep.
        assert!(futex.wakes.load(Ordering::Relaxed) <= 2);
    });
}

/// The producer blocks on a full ring (32 bytes hold two 16-byte frames); the consumer drains with
/// blocking pops. Both sides may sleep; neither wake-up is lost, order and contents hold.
#[test]
fn producer_sleeps_on_full_and_is_woken() {
    explore("producer_sleeps_on_full_and_is_woken", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            for i in 0..3u8 {
                tx.push_wait(
                    &[i; 8],
                    0,
                    &*f,
                    &*f,
                    WaitPolicy::Block,
                    no_deadline::<PushError>,
                )
                .unwrap();
            }
        });
        let mut buf = [0u8; 8];
        for i in 0..3u8 {
            let info = rx
                .pop_wait(
                    &mut buf,
                    &*futex,
                    &*futex,
                    WaitPolicy::Block,
                    no_deadline::<PopError>,
                )
                .unwrap();
            assert_eq!((info.len, buf), (8, [i; 8]));
        }
        producer.join().unwrap();
    });
}

/// A wake call is made only when the peer sleeps: with no sleeper, publishing never calls `wake`.
#[test]
fn no_wake_without_sleeper() {
    explore("no_wake_without_sleeper", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            tx.try_push(&[1], &*f).unwrap();
        });
        let mut buf = [0u8; 8];
        loop {
            match rx.try_pop(&mut buf, &*futex) {
                Ok(_) => break,
                Err(PopError::Empty) => thread::yield_now(),
                Err(e) => panic!("pop: {e}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(futex.wakes.load(Ordering::Relaxed), 0);
        assert_eq!(futex.sleeps.load(Ordering::Relaxed), 0);
    });
}

/// Closing wakes a consumer blocked on an empty ring, which then reads the frame sent before the
/// close and gets `Closed`.
#[test]
fn close_wakes_blocked_consumer() {
    explore("close_wakes_blocked_consumer", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            tx.try_push(&[9], &*f).unwrap();
            tx.close(&*f);
        });
        let mut buf = [0u8; 8];
        let info = rx
            .pop_wait(
                &mut buf,
                &*futex,
                &*futex,
                WaitPolicy::Block,
                no_deadline::<PopError>,
            )
            .unwrap();
        assert_eq!((info.len, buf[0]), (1, 9));
        assert_eq!(
            rx.pop_wait(
                &mut buf,
                &*futex,
                &*futex,
                WaitPolicy::Block,
                no_deadline::<PopError>
            ),
            Err(PopError::Closed)
        );
        producer.join().unwrap();
    });
}

/// Closing the consumer wakes a producer blocked on a full ring, which then gets `Closed`.
#[test]
fn close_wakes_blocked_producer() {
    explore("close_wakes_blocked_producer", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        tx.try_push(&[0; 8], &*futex).unwrap();
        tx.try_push(&[0; 8], &*futex).unwrap();
        let f = futex.clone();
        let producer = thread::spawn(move || {
            tx.push_wait(
                &[1; 8],
                0,
                &*f,
                &*f,
                WaitPolicy::Block,
                no_deadline::<PushError>,
            )
        });
        rx.close(&*futex);
        assert_eq!(producer.join().unwrap(), Err(PushError::Closed));
    });
}

/// Spin-then-block with a short spin: the spin phase and the sleep phase interleave with the
/// publisher in every way, still without a lost wake-up.
#[test]
fn spin_then_block_handoff() {
    explore("spin_then_block_handoff", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            tx.try_push(&[5], &*f).unwrap();
        });
        let mut buf = [0u8; 8];
        let info = rx
            .pop_wait(
                &mut buf,
                &*futex,
                &*futex,
                WaitPolicy::SpinThenBlock { spins: 1 },
                no_deadline::<PopError>,
            )
            .unwrap();
        assert_eq!((info.len, buf[0]), (1, 5));
        producer.join().unwrap();
    });
}

/// A producer staging frames (publishing only when it flushes or must wait): when the ring is full
/// of staged frames, waiting for room publishes them first, so neither side sleeps forever.
#[test]
fn staged_frames_are_flushed_before_sleeping() {
    explore("staged_frames_are_flushed_before_sleeping", || {
        let futex = LoomFutex::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let f = futex.clone();
        let producer = thread::spawn(move || {
            for i in 0..3u8 {
                loop {
                    match tx.try_push_staged(&[i; 8], 0) {
                        Ok(()) => break,
                        Err(PushError::Full) => tx
                            .wait_writable(8, &*f, &*f, WaitPolicy::Block, no_deadline::<PushError>)
                            .unwrap(),
                        Err(e) => panic!("stage: {e}"),
                    }
                }
            }
            tx.flush(&*f);
        });
        let mut buf = [0u8; 8];
        for i in 0..3u8 {
            let info = rx
                .pop_wait(
                    &mut buf,
                    &*futex,
                    &*futex,
                    WaitPolicy::Block,
                    no_deadline::<PopError>,
                )
                .unwrap();
            assert_eq!((info.len, buf), (8, [i; 8]));
        }
        producer.join().unwrap();
    });
}

/// An eventfd stand-in: a counter that `wake` adds to and a reactor wait drains. The reactor's
/// readiness is modelled by blocking on the condvar while the counter is zero; a write that lands
/// before the wait stays in the counter, as in the kernel.
struct LoomEventFd {
    count: Mutex<u64>,
    cond: Condvar,
    /// Calls to `wake` (eventfd writes the real notifier would make).
    writes: AtomicUsize,
}

impl LoomEventFd {
    fn new() -> Arc<Self> {
        Arc::new(LoomEventFd {
            count: Mutex::new(0),
            cond: Condvar::new(),
            writes: AtomicUsize::new(0),
        })
    }

    /// Waits until the counter is non-zero, then drains it (the async side's "await readable,
    /// read the eventfd").
    fn wait_readable(&self) {
        let mut n = self.count.lock().unwrap();
        while *n == 0 {
            n = self.cond.wait(n).unwrap();
        }
        *n = 0;
    }
}

impl Notifier for LoomEventFd {
    fn wake(&self, _word: &AtomicU32, kind: WakeKind) {
        assert_eq!(
            kind,
            WakeKind::EventFd,
            "only the eventfd kind is ever armed here"
        );
        self.writes.fetch_add(1, Ordering::Relaxed);
        *self.count.lock().unwrap() += 1;
        self.cond.notify_all();
    }
}

/// The async consumer's loop: pop; on `Empty` arm the eventfd wake, re-check, and if still empty
/// wait for the eventfd. The producer publishes with plain `try_push`. No frame is waited for
/// without a write of the eventfd reaching the waiter (a lost wake-up is a loom deadlock).
#[test]
fn armed_consumer_is_woken_through_eventfd() {
    explore("armed_consumer_is_woken_through_eventfd", || {
        let efd = LoomEventFd::new();
        let (mut tx, mut rx) = Ring::with_capacity(64);
        let e = efd.clone();
        let producer = thread::spawn(move || {
            for i in 0..2u8 {
                tx.try_push(&[i; 4], &*e).unwrap();
            }
        });
        let mut buf = [0u8; 4];
        let mut got = 0u8;
        while got < 2 {
            match rx.try_pop(&mut buf, &*efd) {
                Ok(info) => {
                    assert_eq!((info.len, buf), (4, [got; 4]));
                    got += 1;
                }
                Err(PopError::Empty) => {
                    if !rx.arm_wake(WakeKind::EventFd).unwrap() {
                        efd.wait_readable();
                    }
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        producer.join().unwrap();
        // One write per armed wait at most: two frames, so at most two writes.
        assert!(efd.writes.load(Ordering::Relaxed) <= 2);
    });
}

/// The async producer's loop on a full ring (32 bytes hold two 16-byte frames): push; on `Full`
/// arm, re-check, and wait for the eventfd the consumer's release writes. Both directions armed
/// at once: the consumer also waits through its own eventfd.
#[test]
fn armed_producer_is_woken_through_eventfd() {
    explore("armed_producer_is_woken_through_eventfd", || {
        let tx_efd = LoomEventFd::new();
        let rx_efd = LoomEventFd::new();
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let (te, re) = (tx_efd.clone(), rx_efd.clone());
        let producer = thread::spawn(move || {
            let mut i = 0u8;
            while i < 3 {
                // The consumer sleeps on `re`; this side's own wake-ups come through `te`.
                match tx.try_push(&[i; 8], &*re) {
                    Ok(()) => i += 1,
                    Err(PushError::Full) => {
                        if !tx.arm_wake(WakeKind::EventFd).unwrap() {
                            te.wait_readable();
                        }
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut buf = [0u8; 8];
        let mut got = 0u8;
        while got < 3 {
            match rx.try_pop(&mut buf, &*tx_efd) {
                Ok(info) => {
                    assert_eq!((info.len, buf), (8, [got; 8]));
                    got += 1;
                }
                Err(PopError::Empty) => {
                    if !rx.arm_wake(WakeKind::EventFd).unwrap() {
                        rx_efd.wait_readable();
                    }
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        producer.join().unwrap();
    });
}

/// The peer watcher of `flowipc` (`safe/src/watch.rs`) ends a sleep that nothing in the ring
/// will end: it raises an alarm (`SeqCst` store, `SeqCst` fence), then resets the sleeper's
/// waiting word and wakes it, as the peer's notifier would. The sleeper's waiter checks the alarm
/// right before it sleeps, and its check callback turns a raised alarm into an error. Whatever
/// the interleaving, the consumer blocked on an empty ring returns the error: no lost wake-up.
#[test]
fn watcher_alarm_ends_a_sleep_on_an_empty_ring() {
    use flowipc_core::sync::AtomicBool;

    /// The sleeper's waiter: the futex stand-in, after a look at the alarm.
    struct AlarmedFutex {
        futex: Arc<LoomFutex>,
        alarm: Arc<AtomicBool>,
    }

    impl Waiter for AlarmedFutex {
        fn wake_kind(&self) -> WakeKind {
            WakeKind::Futex
        }

        fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
            if self.alarm.load(Ordering::SeqCst) {
                return WaitOutcome::Woken;
            }
            self.futex.wait(word, expected, timeout)
        }
    }

    #[derive(Debug, PartialEq)]
    enum Ended {
        Ring(PopError),
        PeerGone,
    }

    impl From<PopError> for Ended {
        fn from(e: PopError) -> Self {
            Ended::Ring(e)
        }
    }

    loom::model(|| {
        let futex = LoomFutex::new();
        let alarm = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = Ring::with_capacity(32);
        let (f, a) = (futex.clone(), alarm.clone());
        // The watcher reaches the consumer's waiting word through the producer's view of the same
        // header, and keeps the producer open (a closed ring would end the wait with `Closed`).
        let watcher = thread::spawn(move || {
            let word = tx.raw().header().consumer_waiting();
            a.store(true, Ordering::SeqCst);
            flowipc_core::sync::fence(Ordering::SeqCst);
            word.store(0, Ordering::Relaxed);
            f.wake(word, WakeKind::Futex);
            tx
        });
        let waiter = AlarmedFutex {
            futex: futex.clone(),
            alarm: alarm.clone(),
        };
        let check = || {
            if alarm.load(Ordering::SeqCst) {
                Err(Ended::PeerGone)
            } else {
                Ok(None)
            }
        };
        assert_eq!(
            rx.wait_readable(&waiter, WaitPolicy::Block, check),
            Err(Ended::PeerGone)
        );
        drop(watcher.join().unwrap());
    });
}
