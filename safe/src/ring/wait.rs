//! Sleeping and waking for shared-memory rings: the futex and doorbell implementations of
//! `flowipc_core`'s [`Waiter`] and [`Notifier`] traits.
//!
//! A ring side about to sleep stores in the shared waiting word which kind of wake it needs
//! ([`WakeKind`]): a thread blocked in a synchronous call sleeps in `futex_wait` on the word itself
//! ([`FutexWaiter`]); a side driven by a reactor sleeps on a doorbell it registered there
//! ([`DoorbellWaiter`]; `WakeKind::EventFd` names this kind: any descriptor a reactor can watch).
//! The other side's [`PeerWaker`] reads the kind and makes the matching call (`futex_wake` on the
//! word, or a ring of the doorbell), and only when the word says somebody sleeps (see
//! `flowipc_core::wait` for the protocol).
//!
//! The word is in shared memory, so the peer chooses what it asks for; every answer is harmless:
//! `futex_wake` never blocks, and a doorbell is rung non-blocking per call
//! (`flowipc_sys::wake`), where an eventfd's write could be made to block by a peer sharing it.

use std::time::Duration;

use std::sync::atomic::AtomicBool;

use flowipc_core::sync::AtomicU32;
use flowipc_sys::socket::{poll, PollFd, PollFlags};
use flowipc_sys::wake::Drained;
use flowipc_sys::{AsFd, BorrowedFd, Errno, OwnedFd};

pub use flowipc_core::wait::{Notifier, WaitOutcome, WaitPolicy, Waiter, WakeKind, DEFAULT_SPINS};

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

/// Sleeps on a doorbell (`flowipc_sys::wake`: readable when the peer rings it), optionally also
/// watching another descriptor (e.g. the channel's socket, so that a dead peer ends the sleep at
/// once).
///
/// The peer's [`PeerWaker`] holds the other end of the doorbell pair (see [`DoorbellWaiter::new`]).
/// A ring that arrives between the check of the word and the `poll` stays pending on the socket,
/// so no wake-up is lost; a stale ring only causes one spurious return. Nothing the peer does to
/// its end (flags, filling the buffer, shutting it down) can make a wait block beyond its timeout
/// or spin: once the peer's end hangs up, waits fall back to `futex_wait` on the word, which the
/// peer watcher still ends.
#[derive(Debug)]
pub struct DoorbellWaiter {
    fd: OwnedFd,
    watch: Option<OwnedFd>,
    hung_up: AtomicBool,
}

impl DoorbellWaiter {
    /// Creates a waiter on a new doorbell pair; returns it and the other end, for the peer's
    /// [`PeerWaker::with_doorbell`].
    ///
    /// # Errors
    ///
    /// The `socketpair(2)` errno (e.g. `EMFILE`, too many open files).
    pub fn new() -> Result<(Self, OwnedFd), Errno> {
        let (mine, peer) = flowipc_sys::wake::pair()?;
        Ok((Self::from_fd(mine), peer))
    }

    /// A waiter on `fd`, this side's end of a doorbell pair whose other end the peer rings.
    pub fn from_fd(fd: OwnedFd) -> Self {
        DoorbellWaiter {
            fd,
            watch: None,
            hung_up: AtomicBool::new(false),
        }
    }

    /// Also ends each sleep when the peer of stream socket `fd` shuts down or goes away (`POLLRDHUP`
    /// / `POLLHUP`; data arriving on it does not end the sleep), so a dead peer is noticed at once
    /// rather than at the next peer check. Once the peer is gone every sleep returns at once, so
    /// pair this with a peer check (e.g. `RingReceiver::set_peer_check`) that reports the hang-up.
    pub fn with_watch(mut self, fd: OwnedFd) -> Self {
        self.watch = Some(fd);
        self
    }

    /// The doorbell, to register with a reactor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Waiter for DoorbellWaiter {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::EventFd
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        // Relaxed: the ring re-checks its positions with Acquire after this returns; this load only
        // avoids a needless poll when the waker has already reset the word.
        if word.load(flowipc_core::sync::Ordering::Relaxed) != expected {
            return WaitOutcome::Woken;
        }
        if self.hung_up.load(std::sync::atomic::Ordering::Relaxed) {
            // Nobody rings a hung-up doorbell, and it stays readable: sleep on the word instead.
            return FutexWaiter.wait(word, expected, timeout);
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
        if let Ok(Drained::HungUp) = flowipc_sys::wake::drain(self.fd.as_fd()) {
            self.hung_up
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        outcome
    }
}

/// Wakes the other side of a ring the way its waiting word asks: `futex_wake` on the word, or a
/// ring of the peer's doorbell if one was given.
///
/// Without a doorbell, an `EventFd` request falls back to `futex_wake` (which then wakes nobody;
/// the peer's sleep ends at its timeout). A ring never blocks (`flowipc_sys::wake::ring`), so a
/// peer that asks for doorbell wake-ups costs at most a system call per publish.
#[derive(Debug, Default)]
pub struct PeerWaker {
    doorbell: Option<OwnedFd>,
}

impl PeerWaker {
    /// A waker for a peer that sleeps on futexes only.
    pub fn futex() -> Self {
        PeerWaker { doorbell: None }
    }

    /// A waker that can also ring the peer's doorbell (this side's end of the pair).
    pub fn with_doorbell(fd: OwnedFd) -> Self {
        PeerWaker { doorbell: Some(fd) }
    }

    /// Sets or replaces the doorbell.
    pub fn set_doorbell(&mut self, fd: Option<OwnedFd>) {
        self.doorbell = fd;
    }
}

impl Notifier for PeerWaker {
    #[inline]
    fn current_cpu(&self) -> Option<u32> {
        flowipc_sys::process::current_cpu_hint()
    }

    fn wake(&self, word: &AtomicU32, kind: WakeKind) {
        match (kind, &self.doorbell) {
            (WakeKind::EventFd, Some(fd)) => {
                // An error means the peer's end is closed: nobody is left to wake.
                let _ = flowipc_sys::wake::ring(fd.as_fd());
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
    fn doorbell_waiter_is_woken_by_peer_waker() {
        let (waiter, peer) = DoorbellWaiter::new().unwrap();
        let waker = PeerWaker::with_doorbell(peer);
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
        // The ring was drained: the next wait times out again.
        assert_eq!(
            waiter.wait(&w, WakeKind::EventFd.word(), Some(Duration::from_millis(1))),
            WaitOutcome::TimedOut
        );
    }

    #[test]
    fn hung_up_doorbell_neither_spins_nor_blocks() {
        let (waiter, peer) = DoorbellWaiter::new().unwrap();
        drop(peer);
        let w = AtomicU32::new(WakeKind::EventFd.word());
        let k = WakeKind::EventFd.word();
        // The first wait sees the hang-up; later ones sleep on the word for their timeout rather
        // than returning at once for ever.
        let _ = waiter.wait(&w, k, Some(Duration::from_millis(1)));
        let t = Instant::now();
        assert_eq!(
            waiter.wait(&w, k, Some(Duration::from_millis(20))),
            WaitOutcome::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn doorbell_waiter_watch_ends_sleep_on_peer_hangup_not_on_data() {
        let (a, b) = flowipc_sys::socket::socketpair_stream().unwrap();
        let (waiter, _peer) = DoorbellWaiter::new().unwrap();
        let waiter = waiter.with_watch(a);
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
