//! Sleeping and waking for shared-memory rings: the futex and eventfd implementations of
//! `flowipc_core`'s [`Waiter`] and [`Notifier`] traits.
//!
//! A ring side about to sleep stores in the shared waiting word which kind of wake it needs
//! ([`WakeKind`]): a thread blocked in a synchronous call sleeps in `futex_wait` on the word itself
//! ([`FutexWaiter`]); a side driven by a reactor sleeps on an eventfd it registered there
//! ([`EventFdWaiter`]). The other side's [`PeerWaker`] reads the kind and makes the matching call
//! (`futex_wake` on the word, or a write to the peer's eventfd), and only when the word says
//! somebody sleeps (see `flowipc_core::wait` for the protocol).

use std::time::Duration;

use flowipc_core::sync::AtomicU32;
use flowipc_sys::eventfd::{eventfd, eventfd_read, eventfd_write, EventfdFlags};
use flowipc_sys::socket::{poll, PollFd, PollFlags};
use flowipc_sys::{AsFd, BorrowedFd, Errno, OwnedFd};

pub use flowipc_core::wait::{
    NoopNotifier, SpinWaiter, WaitOutcome, WaitPolicy, WakeKind, DEFAULT_SPINS,
};
pub use flowipc_core::wait::{Notifier, Waiter};

/// Sleeps with `futex_wait` on the shared waiting word (the shared, cross-process form).
#[derive(Debug, Clone, Copy, Default)]
pub struct FutexWaiter;

impl Waiter for FutexWaiter {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::Futex
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        match flowipc_sys::futex::futex_wait(word, expected, timeout) {
            Err(Errno::TIMEDOUT) => WaitOutcome::TimedOut,
            // Ok (woken), AGAIN (word already changed), INTR (signal): all mean "re-check".
            _ => WaitOutcome::Woken,
        }
    }
}

/// Sleeps on an eventfd (readable when the peer writes it), optionally also watching another
/// descriptor (e.g. the channel's socket, so that a dead peer ends the sleep at once).
///
/// The peer must hold a duplicate of [`fd`](Self::fd) in its [`PeerWaker`]. A write that arrives
/// between the check of the word and the `poll` stays in the counter, so no wake-up is lost; a stale
/// count only causes one spurious return.
#[derive(Debug)]
pub struct EventFdWaiter {
    fd: OwnedFd,
    watch: Option<OwnedFd>,
}

impl EventFdWaiter {
    /// Creates a waiter with a new non-blocking eventfd.
    ///
    /// # Errors
    ///
    /// The `eventfd(2)` errno (e.g. `EMFILE`, too many open files).
    pub fn new() -> Result<Self, Errno> {
        Ok(EventFdWaiter {
            fd: eventfd(0, EventfdFlags::NONBLOCK)?,
            watch: None,
        })
    }

    /// Also ends each sleep when the peer of stream socket `fd` shuts down or goes away (`POLLRDHUP`
    /// / `POLLHUP`; data arriving on it does not end the sleep), so a dead peer is noticed at once
    /// rather than at the next peer check. Once the peer is gone every sleep returns at once, so
    /// pair this with a peer check (e.g. `RingReceiver::set_peer_check`) that reports the hang-up.
    pub fn with_watch(mut self, fd: OwnedFd) -> Self {
        self.watch = Some(fd);
        self
    }

    /// The eventfd, to duplicate and hand to the peer's [`PeerWaker`] (or to register with a
    /// reactor).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Waiter for EventFdWaiter {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::EventFd
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        // Relaxed: the ring re-checks its positions with Acquire after this returns; this load only
        // avoids a needless poll when the waker has already reset the word.
        if word.load(flowipc_core::sync::Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        let mut fds = [
            PollFd::new(&self.fd, PollFlags::IN),
            PollFd::new(&self.fd, PollFlags::IN),
        ];
        let n = if let Some(w) = &self.watch {
            fds[1] = PollFd::new(w, PollFlags::RDHUP);
            2
        } else {
            1
        };
        let outcome = match poll(&mut fds[..n], timeout) {
            Ok(0) => WaitOutcome::TimedOut,
            _ => WaitOutcome::Woken,
        };
        // Drain the counter; AGAIN (already drained) is fine.
        let _ = eventfd_read(self.fd.as_fd());
        outcome
    }
}

/// Wakes the other side of a ring the way its waiting word asks: `futex_wake` on the word, or a
/// write to the peer's eventfd if one was given.
///
/// Without a peer eventfd, an `EventFd` request falls back to `futex_wake` (which then wakes
/// nobody; the peer's sleep ends at its timeout).
#[derive(Debug, Default)]
pub struct PeerWaker {
    eventfd: Option<OwnedFd>,
}

impl PeerWaker {
    /// A waker for a peer that sleeps on futexes only.
    pub fn futex() -> Self {
        PeerWaker { eventfd: None }
    }

    /// A waker that can also write the peer's eventfd.
    pub fn with_eventfd(fd: OwnedFd) -> Self {
        PeerWaker { eventfd: Some(fd) }
    }

    /// Sets or replaces the peer's eventfd.
    pub fn set_eventfd(&mut self, fd: Option<OwnedFd>) {
        self.eventfd = fd;
    }
}

impl Notifier for PeerWaker {
    #[inline]
    fn current_cpu(&self) -> Option<u32> {
        flowipc_sys::process::current_cpu_hint()
    }

    fn wake(&self, word: &AtomicU32, kind: WakeKind) {
        match (kind, &self.eventfd) {
            (WakeKind::EventFd, Some(fd)) => {
                // AGAIN: the counter is saturated, so the peer has a wake pending anyway.
                let _ = eventfd_write(fd.as_fd(), 1);
            }
            _ => {
                // One sleeper per word by construction. An error (EFAULT cannot happen for a
                // live reference) leaves nothing to do.
                let _ = flowipc_sys::futex::futex_wake(word, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn futex_waiter_times_out_and_returns_on_changed_word() {
        let w = AtomicU32::new(1);
        let t = Instant::now();
        assert_eq!(
            FutexWaiter.wait(&w, 1, Some(Duration::from_millis(5))),
            WaitOutcome::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(5));
        assert_eq!(FutexWaiter.wait(&w, 2, None), WaitOutcome::Woken);
    }

    #[test]
    fn futex_wake_reaches_sleeper() {
        let w = Arc::new(AtomicU32::new(1));
        let w2 = w.clone();
        let t = std::thread::spawn(move || FutexWaiter.wait(&w2, 1, Some(Duration::from_secs(5))));
        std::thread::sleep(Duration::from_millis(20));
        w.store(0, flowipc_core::sync::Ordering::Relaxed);
        PeerWaker::futex().wake(&w, WakeKind::Futex);
        assert_eq!(t.join().unwrap(), WaitOutcome::Woken);
    }

    #[test]
    fn eventfd_waiter_is_woken_by_peer_waker() {
        let waiter = EventFdWaiter::new().unwrap();
        let waker = PeerWaker::with_eventfd(waiter.fd().try_clone_to_owned().unwrap());
        let w = AtomicU32::new(WakeKind::EventFd.word());
        assert_eq!(
            waiter.wait(&w, WakeKind::EventFd.word(), Some(Duration::from_millis(1))),
            WaitOutcome::TimedOut
        );
        waker.wake(&w, WakeKind::EventFd);
        let t = Instant::now();
        assert_eq!(
            waiter.wait(&w, WakeKind::EventFd.word(), Some(Duration::from_secs(5))),
            WaitOutcome::Woken
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        // The counter was drained: the next wait times out again.
        assert_eq!(
            waiter.wait(&w, WakeKind::EventFd.word(), Some(Duration::from_millis(1))),
            WaitOutcome::TimedOut
        );
    }

    #[test]
    fn eventfd_waiter_watch_ends_sleep_on_peer_hangup_not_on_data() {
        let (a, b) = flowipc_sys::socket::socketpair_stream().unwrap();
        let waiter = EventFdWaiter::new().unwrap().with_watch(a);
        let w = AtomicU32::new(WakeKind::EventFd.word());
        let k = WakeKind::EventFd.word();
        flowipc_sys::socket::send(b.as_fd(), b"data", flowipc_sys::socket::SendFlags::empty())
            .unwrap();
        assert_eq!(
            waiter.wait(&w, k, Some(Duration::from_millis(5))),
            WaitOutcome::TimedOut,
            "pending data must not end the sleep"
        );
        drop(b);
        let t = Instant::now();
        assert_eq!(
            waiter.wait(&w, k, Some(Duration::from_secs(5))),
            WaitOutcome::Woken
        );
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
