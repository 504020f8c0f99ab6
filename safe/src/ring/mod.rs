//! A one-way shared-memory ring between two processes: [`ShmRing`], [`RingSender`],
//! [`RingReceiver`].
//!
//! The ring is `flowipc_core`'s lock-free SPSC ring of variable-length frames, laid out in a sealed
//! memfd that one process creates ([`ShmRing::create`]) and sends to the other as a file descriptor
//! (e.g. over a Unix socket with `SCM_RIGHTS`), which maps it with [`ShmRing::open`]. Each process
//! then takes one side: [`ShmRing::sender`] or [`ShmRing::receiver`].
//!
//! On the fast path a send or receive is a copy plus a few atomic operations: no allocation and no
//! system call unless the other side sleeps. Blocking calls follow the side's [`WaitPolicy`] (spin,
//! then sleep on a futex by default) and end with [`RingSendError::PeerGone`] /
//! [`RingRecvError::PeerGone`] when the peer check set with `set_peer_check` or
//! `watch_peer_process` reports the peer dead (checked every [`DEFAULT_PEER_CHECK_INTERVAL`] while
//! blocked), with `Timeout` after the deadline of the `_timeout` variants, and with `Closed` after
//! the other side closed (for a receiver: once every frame sent before was read).
//!
//! ```
//! use flowipc::ring::ShmRing;
//!
//! let ring = ShmRing::create(64 * 1024)?;
//! // ... send `ring.fd()` to the other process, which calls `ShmRing::open(fd)?.receiver()?` ...
//! let mut tx = ring.sender()?;
//! let mut rx = ring.receiver()?; // here: both sides in one process
//! tx.send(b"hello")?;
//! let mut buf = [0u8; 64];
//! let n = rx.recv(&mut buf)?.len;
//! assert_eq!(&buf[..n], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use flowipc_core::ring::{PopError, PushError, WriteChunk};
use flowipc_core::sync::AtomicU32;
use flowipc_sys::process::{pidfd_open, Pid};
use flowipc_sys::socket::{poll, PollFd, PollFlags};
use flowipc_sys::{BorrowedFd, Errno, OwnedFd};

use std::sync::Arc;

use crate::raw::ring_region::{ReceiverHandle, RingRegion, SenderHandle, WaitingWord};
use crate::watch::{Alarm, Watch};
use wait::{WaitOutcome, WakeKind};

mod wait;

pub use crate::raw::ring_region::{RingOpenError, Role};
pub use flowipc_core::ring::{max_payload, FrameInfo, MAX_CAPACITY, MIN_CAPACITY};
pub use wait::{DoorbellWaiter, FutexWaiter, PeerWaker, WaitPolicy, DEFAULT_SPINS};

/// The frame read in place by [`RingReceiver::try_read_chunk`]; freed when dropped.
pub type RingReadChunk<'a> = flowipc_core::ring::ReadChunk<'a, PeerWaker>;

/// How often a blocked side runs its peer check (unless the deadline comes first).
pub const DEFAULT_PEER_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingSendError {
    /// The ring is full (`try_` calls only); retry when the receiver has drained it.
    #[error("the ring is full; retry once the receiver has drained it")]
    WouldBlock,
    /// The message is larger than the ring's largest frame.
    #[error(
        "message of {len} bytes exceeds the ring's largest frame of {max} bytes; \
         create a larger ring or send it through a shared-memory arena"
    )]
    TooLarge {
        /// Message length.
        len: usize,
        /// Largest frame payload of this ring.
        max: usize,
    },
    /// The receiver closed the ring.
    #[error("the receiver closed the ring")]
    Closed,
    /// The peer check reported the receiving process gone.
    #[error("the receiving process is gone")]
    PeerGone,
    /// The deadline passed before there was room.
    #[error("timed out waiting for room in the ring")]
    Timeout,
    /// The ring's memory holds values no correct receiver writes; the ring is unusable.
    #[error("the shared-memory ring is corrupt (misbehaving peer); drop it")]
    Corrupt,
}

impl From<PushError> for RingSendError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Full => RingSendError::WouldBlock,
            PushError::TooLarge { len, max } => RingSendError::TooLarge { len, max },
            PushError::Closed => RingSendError::Closed,
            PushError::Corrupt => RingSendError::Corrupt,
        }
    }
}

/// Why a receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingRecvError {
    /// Nothing to read (`try_` calls only).
    #[error("no message in the ring")]
    WouldBlock,
    /// The sender closed the ring and every message was read.
    #[error("the sender closed the ring")]
    Closed,
    /// The buffer is shorter than the next message, which stays in the ring.
    #[error("buffer too small: the next message needs {needed} bytes")]
    BufferTooSmall {
        /// Length of the next message.
        needed: usize,
    },
    /// The peer check reported the sending process gone.
    #[error("the sending process is gone")]
    PeerGone,
    /// The deadline passed before a message came.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The ring's memory holds values no correct sender writes; the ring is unusable.
    #[error("the shared-memory ring is corrupt (misbehaving peer); drop it")]
    Corrupt,
}

impl From<PopError> for RingRecvError {
    fn from(e: PopError) -> Self {
        match e {
            PopError::Empty => RingRecvError::WouldBlock,
            PopError::Closed => RingRecvError::Closed,
            PopError::BufferTooSmall { needed } => RingRecvError::BufferTooSmall { needed },
            PopError::Corrupt => RingRecvError::Corrupt,
        }
    }
}

/// A ring in a shared memfd, from which this process takes one side (or both, in tests).
#[derive(Debug, Clone)]
pub struct ShmRing {
    region: RingRegion,
}

impl ShmRing {
    /// Creates a sealed memfd holding an empty ring of `capacity` bytes (a power of two in
    /// [`MIN_CAPACITY`]`..=`[`MAX_CAPACITY`]); the largest message is `capacity / 2 - 8` bytes.
    ///
    /// # Errors
    ///
    /// A bad capacity, or the failing system call.
    pub fn create(capacity: usize) -> Result<Self, RingOpenError> {
        Ok(ShmRing {
            region: RingRegion::create(capacity)?,
        })
    }

    /// Maps a ring created by a peer, checking the memfd's seals and size and the ring header.
    ///
    /// # Errors
    ///
    /// The descriptor is not a sealed memfd, or does not hold a valid ring, or a system call failed.
    pub fn open(fd: OwnedFd) -> Result<Self, RingOpenError> {
        Ok(ShmRing {
            region: RingRegion::open(fd)?,
        })
    }

    /// The memfd, to send to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// Capacity of the frame buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.region.capacity()
    }

    /// The largest message: `capacity / 2 - 8` bytes.
    pub fn max_payload(&self) -> usize {
        max_payload(self.capacity())
    }

    /// Takes the sending side.
    ///
    /// # Errors
    ///
    /// [`RingOpenError::RoleTaken`] if this process already holds it, or inconsistent positions.
    pub fn sender(&self) -> Result<RingSender, RingOpenError> {
        Ok(RingSender {
            handle: self.region.sender()?,
            waker: PeerWaker::futex(),
            waiter: SideWaiter::Futex(None),
            policy: WaitPolicy::default(),
            peer: PeerCheck::default(),
        })
    }

    /// Takes the receiving side.
    ///
    /// # Errors
    ///
    /// [`RingOpenError::RoleTaken`] if this process already holds it, or an inconsistent position.
    pub fn receiver(&self) -> Result<RingReceiver, RingOpenError> {
        Ok(RingReceiver {
            handle: self.region.receiver()?,
            waker: PeerWaker::futex(),
            waiter: SideWaiter::Futex(None),
            policy: WaitPolicy::default(),
            peer: PeerCheck::default(),
        })
    }
}

/// The sleep mechanism of one side.
#[derive(Debug)]
enum SideWaiter {
    /// `futex_wait` on the waiting word; with the alarm of a peer watch, checked right before
    /// each sleep (see `crate::watch`).
    Futex(Option<Arc<Alarm>>),
    Doorbell(DoorbellWaiter),
}

impl SideWaiter {
    /// Forgets the alarm of a peer watch that was replaced.
    fn drop_alarm(&mut self) {
        if let SideWaiter::Futex(alarm) = self {
            *alarm = None;
        }
    }
}

impl wait::Waiter for SideWaiter {
    fn current_cpu(&self) -> Option<u32> {
        match self {
            // A futex sleeper spins first: tell the core where it runs (see `RingHeader`'s CPU
            // hints). A doorbell side is driven by a reactor and does not spin here.
            SideWaiter::Futex(_) => flowipc_sys::process::current_cpu_hint(),
            SideWaiter::Doorbell(_) => None,
        }
    }

    fn wake_kind(&self) -> WakeKind {
        match self {
            SideWaiter::Futex(_) => FutexWaiter.wake_kind(),
            SideWaiter::Doorbell(w) => w.wake_kind(),
        }
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        match self {
            SideWaiter::Futex(alarm) => {
                if alarm.as_ref().is_some_and(|a| a.is_raised()) {
                    return WaitOutcome::Woken;
                }
                FutexWaiter.wait(word, expected, timeout)
            }
            SideWaiter::Doorbell(w) => w.wait(word, expected, timeout),
        }
    }
}

/// The liveness check of the peer, run at most every `interval` while blocked.
struct PeerCheck {
    check: Option<Box<dyn FnMut() -> bool + Send>>,
    interval: Duration,
    /// When `check` last ran. Kept across blocking calls: a per-call clock would run the check (a
    /// `poll` system call) before the first sleep of every call, which in `Block` mode is every
    /// message.
    last: Option<Instant>,
    /// Set once `check` has reported the peer dead: a dead peer does not come back, so later blocked
    /// calls end at once instead of waiting for the next interval.
    gone: bool,
    /// A watch by the process's peer watcher, which replaces `check` and the bounded sleeps.
    watch: Option<Watch>,
    /// The watch's alarm, one pointer away, for the check on every call ([`PeerCheck::gone_now`]).
    alarm: Option<Arc<Alarm>>,
}

impl Default for PeerCheck {
    fn default() -> Self {
        PeerCheck::new(DEFAULT_PEER_CHECK_INTERVAL, None)
    }
}

impl fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCheck")
            .field("set", &self.check.is_some())
            .field("interval", &self.interval)
            .finish()
    }
}

impl PeerCheck {
    /// A check run at most every `interval`, not yet run, with the peer not yet seen dead.
    fn new(interval: Duration, check: Option<Box<dyn FnMut() -> bool + Send>>) -> Self {
        PeerCheck {
            check,
            interval,
            last: None,
            gone: false,
            watch: None,
            alarm: None,
        }
    }

    /// Whether the peer is known to be gone, for every call, blocking or not, so that nothing is
    /// sent into a ring nobody will read. With the peer watcher this is one load (the watcher
    /// raised the alarm when the companion socket hung up); with a `check` only, the check runs at
    /// most every `interval` (a clock read per call, a `poll` per interval); with neither, the
    /// peer is never known gone.
    #[inline]
    fn gone_now(&mut self) -> bool {
        if self.gone {
            return true;
        }
        match &self.alarm {
            Some(alarm) => {
                if alarm.is_raised() {
                    self.gone = true;
                }
                self.gone
            }
            None if self.check.is_some() => self.run_check_if_due(),
            None => false,
        }
    }

    /// Makes the next [`gone_now`](Self::gone_now) run the fallback check whatever the interval.
    #[cfg(feature = "tokio")]
    fn soon(&mut self) {
        self.last = None;
    }

    /// Runs `check` if `interval` has passed since it last ran; whether the peer is gone.
    #[cold]
    fn run_check_if_due(&mut self) -> bool {
        let now = Instant::now();
        if let Some(check) = self.check.as_mut() {
            if self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval)
            {
                self.last = Some(now);
                if !check() {
                    self.gone = true;
                }
            }
        }
        self.gone
    }

    /// The `check` callback of the core's blocking calls: ends the wait with `timeout` after
    /// `deadline` or `gone` when the peer check fails, and bounds each sleep so both are noticed.
    fn callback<'a, E: Copy + 'a>(
        &'a mut self,
        deadline: Option<Instant>,
        timeout: E,
        gone: E,
    ) -> impl FnMut() -> Result<Option<Duration>, E> + 'a {
        move || {
            if self.gone {
                return Err(gone);
            }
            let now = Instant::now();
            let mut slice = None;
            if let Some(d) = deadline {
                if now >= d {
                    return Err(timeout);
                }
                slice = Some(d - now);
            }
            if let Some(watch) = &self.watch {
                // The watcher wakes the sleep when the peer goes: no bounded sleeps, no polls.
                if watch.alarm().is_raised() {
                    self.gone = true;
                    return Err(gone);
                }
            } else if let Some(check) = self.check.as_mut() {
                if self
                    .last
                    .is_none_or(|t| now.duration_since(t) >= self.interval)
                {
                    self.last = Some(now);
                    if !check() {
                        self.gone = true;
                        return Err(gone);
                    }
                }
                slice = Some(slice.map_or(self.interval, |s| s.min(self.interval)));
            }
            Ok(slice)
        }
    }

    /// Lets the process's peer watcher end blocked calls when `sock` hangs up (see
    /// `crate::watch`); the waiter checks the same alarm before each sleep.
    fn watch_socket(
        &mut self,
        waiter: &mut SideWaiter,
        sock: BorrowedFd<'_>,
        word: WaitingWord,
    ) -> Result<(), Errno> {
        let watch = Watch::new(sock, Some(word))?;
        if let SideWaiter::Futex(alarm) = waiter {
            *alarm = Some(watch.alarm().clone());
        }
        self.alarm = Some(watch.alarm().clone());
        self.watch = Some(watch);
        Ok(())
    }

    fn watch_process(&mut self, pid: Pid) -> Result<(), Errno> {
        let pidfd = pidfd_open(pid)?;
        *self = PeerCheck::new(self.interval, Some(Box::new(move || process_alive(&pidfd))));
        Ok(())
    }
}

/// `false` once the process behind `pidfd` has exited (the pidfd polls readable).
fn process_alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    !matches!(poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0)
}

/// The configuration and state calls both sides of a ring share, written once for both (the
/// sides differ only in their handle, their error type and which way they wait).
macro_rules! side_config {
    ($side:ident, $err:ident, $peer:ident, $waits:literal, $when:literal) => {
        impl $side {
            /// Capacity of the ring's frame buffer in bytes.
            pub fn capacity(&self) -> usize {
                self.handle.capacity()
            }

            /// The largest message: `capacity / 2 - 8` bytes.
            pub fn max_payload(&self) -> usize {
                max_payload(self.handle.capacity())
            }

            /// `true` once the other side has closed the ring (for a receiver, messages sent
            /// before may still be pending).
            pub fn is_closed(&self) -> bool {
                self.handle.is_closed()
            }

            /// `true` once corruption was detected; every call then fails with `Corrupt`.
            pub fn is_poisoned(&self) -> bool {
                self.handle.is_poisoned()
            }

            #[doc = concat!("Sets how blocking calls wait ", $waits, " (default: spin briefly, then futex).")]
            pub fn set_policy(&mut self, policy: WaitPolicy) {
                self.policy = policy;
            }

            #[doc = concat!("Sets a check run every `interval` while blocked; when it returns `false`, the blocked call fails with [`", stringify!($err), "::PeerGone`].")]
            pub fn set_peer_check(
                &mut self,
                interval: Duration,
                check: impl FnMut() -> bool + Send + 'static,
            ) {
                self.peer = PeerCheck::new(interval, Some(Box::new(check)));
                self.waiter.drop_alarm();
            }

            #[doc = concat!("Makes every call fail with [`", stringify!($err), "::PeerGone`] as soon as `sock` (a socket the peer holds the other end of) hangs up (a blocked call at once, the others at their next look at the ring, with one load).")]
            ///
            /// A per-process watcher thread polls the socket and wakes this side, so sleeps need
            /// no timeout (a timed futex wait costs a kernel timer per sleep); this replaces
            /// `set_peer_check`.
            ///
            /// # Errors
            ///
            /// `EMFILE` and the like from duplicating `sock`; `ENOTSUP` when the watcher cannot
            /// run in this process (its thread could not start, or this is a fork child of a
            /// process that used it): keep a `set_peer_check` then.
            pub fn watch_peer_socket(&mut self, sock: BorrowedFd<'_>) -> Result<(), Errno> {
                let word = self.handle.waiting_word();
                self.peer.watch_socket(&mut self.waiter, sock, word)
            }

            #[doc = concat!("Makes calls fail with [`", stringify!($err), "::PeerGone`] once process `pid` has exited (checked with a pidfd every [`DEFAULT_PEER_CHECK_INTERVAL`]).")]
            ///
            /// # Errors
            ///
            /// `ESRCH` if no such process exists.
            pub fn watch_peer_process(&mut self, pid: Pid) -> Result<(), Errno> {
                self.peer.watch_process(pid)
            }

            #[doc = concat!("Sleep on `waiter`'s doorbell instead of a futex when the ring is ", $when, "; the other side must ring it through [`", stringify!($peer), "::set_peer_doorbell`] with the other end of its pair.")]
            pub fn use_doorbell(&mut self, waiter: DoorbellWaiter) {
                self.waiter = SideWaiter::Doorbell(waiter);
            }

            #[doc = concat!("This side's end of the doorbell pair to ring when the other side sleeps on its end (see [`", stringify!($peer), "::use_doorbell`]).")]
            pub fn set_peer_doorbell(&mut self, fd: OwnedFd) {
                self.waker.set_doorbell(Some(fd));
            }

            /// Withdraws an `arm_doorbell_wake` that is no longer needed.
            pub fn disarm(&self) {
                self.handle.disarm();
            }

            /// Makes the next call run the fallback peer check at once (see `set_peer_check`).
            #[cfg(feature = "tokio")]
            pub(crate) fn check_peer_soon(&mut self) {
                self.peer.soon();
            }
        }
    };
}

side_config!(RingSender, RingSendError, RingReceiver, "for room", "full");
side_config!(
    RingReceiver,
    RingRecvError,
    RingSender,
    "for a message",
    "empty"
);

/// The sending side of a [`ShmRing`]. Dropping it closes the ring (the receiver reads what was
/// sent, then gets [`RingRecvError::Closed`]).
#[derive(Debug)]
pub struct RingSender {
    handle: SenderHandle,
    waker: PeerWaker,
    waiter: SideWaiter,
    policy: WaitPolicy,
    peer: PeerCheck,
}

impl RingSender {
    /// Sends `data` as one message if there is room now.
    ///
    /// # Errors
    ///
    /// [`RingSendError::WouldBlock`] when full, `TooLarge`, `Closed`, `Corrupt`.
    #[inline]
    pub fn try_send(&mut self, data: &[u8]) -> Result<(), RingSendError> {
        self.try_send_tagged(data, 0)
    }

    /// [`try_send`](Self::try_send) with a 16-bit tag delivered with the message.
    ///
    /// # Errors
    ///
    /// As [`try_send`](Self::try_send).
    #[inline]
    pub fn try_send_tagged(&mut self, data: &[u8], tag: u16) -> Result<(), RingSendError> {
        if self.peer.gone_now() {
            return Err(RingSendError::PeerGone);
        }
        self.handle
            .try_push_tagged(data, tag, &self.waker)
            .map_err(RingSendError::from)
    }

    /// Sends `data` as one message, waiting for room per the policy.
    ///
    /// # Errors
    ///
    /// `TooLarge`, `Closed`, `PeerGone`, `Corrupt`.
    #[inline]
    pub fn send(&mut self, data: &[u8]) -> Result<(), RingSendError> {
        self.send_until(data, 0, None)
    }

    /// [`send`](Self::send) with a 16-bit tag delivered with the message.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    #[inline]
    pub fn send_tagged(&mut self, data: &[u8], tag: u16) -> Result<(), RingSendError> {
        self.send_until(data, tag, None)
    }

    /// [`send`](Self::send) giving up with [`RingSendError::Timeout`] after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus `Timeout`.
    pub fn send_timeout(&mut self, data: &[u8], timeout: Duration) -> Result<(), RingSendError> {
        self.send_until(data, 0, Some(Instant::now() + timeout))
    }

    #[inline]
    fn send_until(
        &mut self,
        data: &[u8],
        tag: u16,
        deadline: Option<Instant>,
    ) -> Result<(), RingSendError> {
        if self.peer.gone_now() {
            return Err(RingSendError::PeerGone);
        }
        match self.handle.try_push_tagged(data, tag, &self.waker) {
            Err(PushError::Full) => {}
            other => return other.map_err(RingSendError::from),
        }
        self.wait_room(data.len(), deadline)?;
        self.try_send_tagged(data, tag)
    }

    /// Waits until a message of `len` bytes fits.
    #[cold]
    fn wait_room(&mut self, len: usize, deadline: Option<Instant>) -> Result<(), RingSendError> {
        let check = self
            .peer
            .callback(deadline, RingSendError::Timeout, RingSendError::PeerGone);
        self.handle
            .wait_writable(len, &self.waker, &self.waiter, self.policy, check)
    }

    /// Writes `data` as one message into the ring without making it visible yet: the receiver sees
    /// it at the next [`flush`](Self::flush), `send` or `commit`. Staging a burst and flushing once
    /// pays the cross-core publish cost (a full fence and the wake-up check) once per burst.
    ///
    /// # Errors
    ///
    /// [`RingSendError::WouldBlock`] when full (staged messages are then flushed, so the receiver
    /// can drain them), `TooLarge`, `Closed`, `Corrupt`.
    #[inline]
    pub fn try_stage(&mut self, data: &[u8]) -> Result<(), RingSendError> {
        if self.peer.gone_now() {
            return Err(RingSendError::PeerGone);
        }
        match self.handle.try_push_staged(data, 0) {
            Err(PushError::Full) => {
                self.flush();
                Err(RingSendError::WouldBlock)
            }
            other => other.map_err(RingSendError::from),
        }
    }

    /// [`try_stage`](Self::try_stage), waiting for room per the policy (staged messages are
    /// flushed before waiting).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    #[inline]
    pub fn stage(&mut self, data: &[u8]) -> Result<(), RingSendError> {
        if self.peer.gone_now() {
            return Err(RingSendError::PeerGone);
        }
        match self.handle.try_push_staged(data, 0) {
            Err(PushError::Full) => {}
            other => return other.map_err(RingSendError::from),
        }
        self.wait_room(data.len(), None)?;
        self.handle
            .try_push_staged(data, 0)
            .map_err(RingSendError::from)
    }

    /// Makes staged messages visible and wakes the receiver if it sleeps.
    #[inline]
    pub fn flush(&mut self) {
        self.handle.flush(&self.waker);
    }

    /// Bytes of staged messages (frames included) not yet flushed.
    pub fn staged_bytes(&self) -> usize {
        self.handle.staged_bytes()
    }

    /// Reserves room for a message of up to `len` bytes to build in place, if there is room now.
    ///
    /// # Errors
    ///
    /// As [`try_send`](Self::try_send).
    #[inline]
    pub fn try_write_chunk(&mut self, len: usize) -> Result<RingWriteChunk<'_>, RingSendError> {
        if self.peer.gone_now() {
            return Err(RingSendError::PeerGone);
        }
        let chunk = self.handle.write_chunk(len)?;
        Ok(RingWriteChunk {
            chunk,
            waker: &self.waker,
        })
    }

    /// [`try_write_chunk`](Self::try_write_chunk), waiting for room per the policy (and up to
    /// `timeout`, if given).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), plus `Timeout`.
    pub fn write_chunk(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<RingWriteChunk<'_>, RingSendError> {
        if matches!(self.handle.write_chunk(len).map(drop), Err(PushError::Full)) {
            self.wait_room(len, timeout.map(|t| Instant::now() + t))?;
        }
        self.try_write_chunk(len)
    }

    /// Flushes staged messages, closes the ring and wakes the receiver (also done on drop).
    pub fn close(&mut self) {
        self.handle.close(&self.waker);
    }

    /// For a sender driven by a reactor: announces that it waits for room on its doorbell (whose
    /// other end the receiver rings through [`RingReceiver::set_peer_doorbell`]) and
    /// re-checks the ring. Flushes staged messages first.
    ///
    /// `Ok(true)`: the receiver freed space meanwhile, try again. `Ok(false)`: the receiver's next
    /// read (or close) rings the doorbell; wait for it to become readable, drain it, try again,
    /// and arm again before the next wait.
    ///
    /// # Errors
    ///
    /// [`RingSendError::Closed`] or [`RingSendError::Corrupt`].
    pub fn arm_doorbell_wake(&mut self) -> Result<bool, RingSendError> {
        self.handle.flush(&self.waker);
        self.handle
            .arm_wake(WakeKind::EventFd)
            .map_err(RingSendError::from)
    }
}

impl Drop for RingSender {
    fn drop(&mut self) {
        self.close();
    }
}

/// Room for one message reserved in the ring, built in place and sent by [`commit`](Self::commit);
/// dropping it sends nothing.
#[derive(Debug)]
pub struct RingWriteChunk<'a> {
    chunk: WriteChunk<'a>,
    waker: &'a PeerWaker,
}

impl RingWriteChunk<'_> {
    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.chunk.len()
    }

    /// `true` if no bytes are reserved.
    pub fn is_empty(&self) -> bool {
        self.chunk.is_empty()
    }

    /// Copies `data` to offset `offset` of the message.
    ///
    /// # Panics
    ///
    /// If `offset + data.len() > self.len()`.
    #[inline]
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        self.chunk.write(offset, data);
    }

    /// The reserved bytes (8-byte aligned), valid for writes of [`len`](Self::len) bytes until
    /// commit or drop. Shared memory: write through the pointer, never make a reference.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.chunk.as_mut_ptr()
    }

    /// Sends the first `len` bytes as one message.
    ///
    /// # Panics
    ///
    /// If `len > self.len()`.
    #[inline]
    pub fn commit(self, len: usize) {
        self.commit_tagged(len, 0);
    }

    /// Sends the first `len` bytes as one message carrying `tag`.
    ///
    /// # Panics
    ///
    /// If `len > self.len()`.
    #[inline]
    pub fn commit_tagged(self, len: usize, tag: u16) {
        self.chunk.commit(len, tag, self.waker);
    }

    /// Completes the first `len` bytes as one message carrying `tag` without making it visible
    /// (see [`RingSender::try_stage`]).
    ///
    /// # Panics
    ///
    /// If `len > self.len()`.
    #[inline]
    pub fn stage_tagged(self, len: usize, tag: u16) {
        self.chunk.stage(len, tag);
    }
}

/// The receiving side of a [`ShmRing`]. Dropping it closes the ring (sends then fail with
/// [`RingSendError::Closed`]).
#[derive(Debug)]
pub struct RingReceiver {
    handle: ReceiverHandle,
    waker: PeerWaker,
    waiter: SideWaiter,
    policy: WaitPolicy,
    peer: PeerCheck,
}

impl RingReceiver {
    /// Copies the next message into `buf` if there is one.
    ///
    /// # Errors
    ///
    /// [`RingRecvError::WouldBlock`] when empty, `Closed`, `BufferTooSmall` (the message stays),
    /// `Corrupt`.
    #[inline]
    pub fn try_recv(&mut self, buf: &mut [u8]) -> Result<FrameInfo, RingRecvError> {
        // Checked before the pop, not after: a frame published before the peer died is then
        // visible to the pop (the alarm's store follows the death, which follows the publish),
        // so `PeerGone` never hides a frame.
        let gone = self.peer.gone_now();
        match self.handle.try_pop(buf, &self.waker) {
            Err(PopError::Empty) if gone => Err(RingRecvError::PeerGone),
            other => other.map_err(RingRecvError::from),
        }
    }

    /// Copies the next message into `buf`, waiting for one per the policy.
    ///
    /// # Errors
    ///
    /// `Closed`, `BufferTooSmall` (the message stays), `PeerGone`, `Corrupt`.
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<FrameInfo, RingRecvError> {
        self.recv_until(buf, None)
    }

    /// [`recv`](Self::recv) giving up with [`RingRecvError::Timeout`] after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), plus `Timeout`.
    pub fn recv_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<FrameInfo, RingRecvError> {
        self.recv_until(buf, Some(Instant::now() + timeout))
    }

    #[inline]
    fn recv_until(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<FrameInfo, RingRecvError> {
        match self.handle.try_pop(buf, &self.waker) {
            Err(PopError::Empty) => {}
            other => return other.map_err(RingRecvError::from),
        }
        match self.wait_message(deadline) {
            // A last look: frames published before the death are still delivered.
            Ok(()) | Err(RingRecvError::PeerGone) => {}
            Err(e) => return Err(e),
        }
        self.try_recv(buf)
    }

    /// Waits until a message is pending.
    #[cold]
    fn wait_message(&mut self, deadline: Option<Instant>) -> Result<(), RingRecvError> {
        let check = self
            .peer
            .callback(deadline, RingRecvError::Timeout, RingRecvError::PeerGone);
        self.handle.wait_readable(&self.waiter, self.policy, check)
    }

    /// Gives in-place access to the next message if there is one; it is freed when the chunk is
    /// dropped. The bytes are read by copying ([`RingReadChunk::read`]) or through a raw pointer.
    ///
    /// # Errors
    ///
    /// [`RingRecvError::WouldBlock`] when empty, `Closed`, `Corrupt`.
    #[inline]
    pub fn try_read_chunk(&mut self) -> Result<RingReadChunk<'_>, RingRecvError> {
        // Before the read, as in `try_recv`.
        let gone = self.peer.gone_now();
        match self.handle.read_chunk(&self.waker) {
            Err(PopError::Empty) if gone => Err(RingRecvError::PeerGone),
            other => other.map_err(RingRecvError::from),
        }
    }

    /// [`try_read_chunk`](Self::try_read_chunk), waiting for a message per the policy (and up to
    /// `timeout`, if given).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), plus `Timeout`.
    pub fn read_chunk(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<RingReadChunk<'_>, RingRecvError> {
        // Wait only for an empty ring: a frame that is there is taken without entering the wait
        // (which would note this CPU and set up the peer check for nothing).
        if let Err(PopError::Empty) = self.handle.poll_frame() {
            match self.wait_message(timeout.map(|t| Instant::now() + t)) {
                // A last look, as in `recv`.
                Ok(()) | Err(RingRecvError::PeerGone) => {}
                Err(e) => return Err(e),
            }
        }
        self.try_read_chunk()
    }

    /// Waits per the policy until a frame is pending (or the deadline passes: `Timeout`). Ends
    /// with `Ok` also when the peer is gone, so that the caller's next try takes frames
    /// published before the death and only then reports `PeerGone`.
    pub(crate) fn wait_for_message(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(), RingRecvError> {
        match self.wait_message(deadline) {
            Err(RingRecvError::PeerGone) => Ok(()),
            other => other,
        }
    }

    /// Closes the ring and wakes the sender (also done on drop).
    pub fn close(&mut self) {
        self.handle.close(&self.waker);
    }

    /// For a receiver driven by a reactor: announces that it waits for a message on its doorbell
    /// (whose other end the sender rings through [`RingSender::set_peer_doorbell`]) and
    /// re-checks the ring.
    ///
    /// `Ok(true)`: a message is pending (or the sender closed), receive again. `Ok(false)`: the
    /// sender's next message (or close) rings the doorbell; wait for it to become readable, drain
    /// it, receive again, and arm again before the next wait.
    ///
    /// # Errors
    ///
    /// [`RingRecvError::Corrupt`].
    pub fn arm_doorbell_wake(&mut self) -> Result<bool, RingRecvError> {
        self.handle
            .arm_wake(WakeKind::EventFd)
            .map_err(RingRecvError::from)
    }
}

impl Drop for RingReceiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_recv_in_one_process() {
        let ring = ShmRing::create(4096).unwrap();
        assert_eq!(ring.max_payload(), 2040);
        let mut tx = ring.sender().unwrap();
        let mut rx = ring.receiver().unwrap();
        assert!(matches!(
            ring.sender(),
            Err(RingOpenError::RoleTaken(Role::Sender))
        ));
        tx.send(b"one").unwrap();
        tx.try_send_tagged(b"two", 2).unwrap();
        let mut chunk = tx.try_write_chunk(16).unwrap();
        chunk.write(0, b"three!");
        chunk.commit_tagged(5, 3);
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), FrameInfo { len: 3, tag: 0 });
        assert_eq!(&buf[..3], b"one");
        assert_eq!(rx.try_recv(&mut buf).unwrap(), FrameInfo { len: 3, tag: 2 });
        let c = rx.try_read_chunk().unwrap();
        assert_eq!((c.len(), c.tag()), (5, 3));
        assert_eq!(c.read(0, &mut buf), 5);
        drop(c);
        assert_eq!(&buf[..5], b"three");
        assert_eq!(rx.try_recv(&mut buf), Err(RingRecvError::WouldBlock));
        assert_eq!(
            rx.recv_timeout(&mut buf, Duration::from_millis(5)),
            Err(RingRecvError::Timeout)
        );
        assert_eq!(
            tx.try_send(&[0; 2041]),
            Err(RingSendError::TooLarge {
                len: 2041,
                max: 2040
            })
        );
        drop(tx);
        assert_eq!(rx.recv(&mut buf), Err(RingRecvError::Closed));
        // The role is free again once the handle is gone.
        let _tx = ring.sender().unwrap();
    }

    #[test]
    fn staged_messages_flush_in_bursts() {
        let ring = ShmRing::create(1024).unwrap();
        let mut tx = ring.sender().unwrap();
        let mut rx = ring.receiver().unwrap();
        let mut buf = [0u8; 8];
        for i in 0..4u8 {
            tx.stage(&[i; 8]).unwrap();
        }
        assert_eq!(tx.staged_bytes(), 64);
        assert_eq!(rx.try_recv(&mut buf), Err(RingRecvError::WouldBlock));
        tx.flush();
        for i in 0..4u8 {
            assert_eq!(rx.recv(&mut buf).unwrap().len, 8);
            assert_eq!(buf, [i; 8]);
        }
        // Staging into a full ring flushes, so a receiver thread can drain it.
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let mut n = 0u64;
            while rx.recv(&mut buf).is_ok() {
                assert_eq!(u64::from_le_bytes(buf), n);
                n += 1;
            }
            n
        });
        for i in 0..10_000u64 {
            tx.stage(&i.to_le_bytes()).unwrap();
        }
        drop(tx);
        assert_eq!(t.join().unwrap(), 10_000);
    }

    #[test]
    fn open_checks_the_descriptor() {
        let ring = ShmRing::create(1024).unwrap();
        let other = ShmRing::open(ring.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(other.capacity(), 1024);
        let _rx = ring.receiver().unwrap();
        // Same memfd mapped twice in one process: still one receiver.
        assert!(matches!(
            other.receiver(),
            Err(RingOpenError::RoleTaken(Role::Receiver))
        ));
        // Not sealed: an unsealed memfd.
        let fd = flowipc_sys::memfd::memfd_create(c"plain").unwrap();
        flowipc_sys::memfd::set_size(std::os::fd::AsFd::as_fd(&fd), 8192).unwrap();
        assert!(matches!(
            ShmRing::open(fd),
            Err(RingOpenError::Region(crate::raw::RegionError::NotSealed))
        ));
        // Sealed but not a ring.
        let fd = flowipc_sys::memfd::create_sealed(c"zeros", 8192).unwrap();
        assert!(matches!(
            ShmRing::open(fd),
            Err(RingOpenError::Attach(
                flowipc_core::ring::AttachError::BadMagic
            ))
        ));
    }

    #[test]
    fn blocked_sides_wake_each_other_across_threads() {
        for policy in [
            WaitPolicy::Block,
            WaitPolicy::default(),
            WaitPolicy::BusyPoll,
        ] {
            let ring = ShmRing::create(256).unwrap();
            let mut tx = ring.sender().unwrap();
            let mut rx = ring.receiver().unwrap();
            tx.set_policy(policy);
            rx.set_policy(policy);
            let n = 20_000u64;
            let t = std::thread::spawn(move || {
                for i in 0..n {
                    tx.send(&i.to_le_bytes()).unwrap();
                }
            });
            let mut buf = [0u8; 8];
            for i in 0..n {
                rx.recv(&mut buf).unwrap();
                assert_eq!(u64::from_le_bytes(buf), i);
            }
            assert_eq!(rx.recv(&mut buf), Err(RingRecvError::Closed));
            t.join().unwrap();
        }
    }

    #[test]
    fn doorbell_wakeups() {
        let ring = ShmRing::create(256).unwrap();
        let mut tx = ring.sender().unwrap();
        let mut rx = ring.receiver().unwrap();
        let (rx_waiter, rx_bell) = DoorbellWaiter::new().unwrap();
        tx.set_peer_doorbell(rx_bell);
        rx.use_doorbell(rx_waiter);
        let (tx_waiter, tx_bell) = DoorbellWaiter::new().unwrap();
        rx.set_peer_doorbell(tx_bell);
        tx.use_doorbell(tx_waiter);
        tx.set_policy(WaitPolicy::Block);
        rx.set_policy(WaitPolicy::Block);
        let n = 20_000u64;
        let t = std::thread::spawn(move || {
            for i in 0..n {
                tx.send(&i.to_le_bytes()).unwrap();
            }
        });
        let mut buf = [0u8; 8];
        for i in 0..n {
            rx.recv(&mut buf).unwrap();
            assert_eq!(u64::from_le_bytes(buf), i);
        }
        t.join().unwrap();
    }

    #[test]
    fn peer_check_ends_blocked_calls() {
        let ring = ShmRing::create(64).unwrap();
        let mut rx = ring.receiver().unwrap();
        let mut tx = ring.sender().unwrap();
        let start = Instant::now();
        let mut calls = 0;
        rx.set_peer_check(Duration::from_millis(10), move || {
            calls += 1;
            calls < 3
        });
        let mut buf = [0u8; 8];
        assert_eq!(rx.recv(&mut buf), Err(RingRecvError::PeerGone));
        assert!(start.elapsed() < Duration::from_secs(1));
        tx.send(&[0; 24]).unwrap();
        tx.send(&[0; 24]).unwrap();
        tx.set_peer_check(Duration::from_millis(5), || false);
        assert_eq!(tx.send(&[0; 8]), Err(RingSendError::PeerGone));
        assert_eq!(
            tx.write_chunk(8, Some(Duration::from_millis(1))).err(),
            Some(RingSendError::PeerGone)
        );
    }

    /// The peer watcher ends blocked sends and receives (with no bounded sleeps) when the watched
    /// socket hangs up, whenever in the sleep protocol the hang-up lands; frames published before
    /// it are still delivered.
    #[test]
    fn socket_watch_ends_blocked_calls_whenever_the_hangup_lands() {
        use std::os::fd::AsFd;
        for round in 0..200u64 {
            let ring = ShmRing::create(64).unwrap();
            let mut rx = ring.receiver().unwrap();
            let mut tx = ring.sender().unwrap();
            rx.set_policy(WaitPolicy::Block);
            tx.set_policy(WaitPolicy::Block);
            let (ours, theirs) = flowipc_sys::socket::socketpair_stream().unwrap();
            let (ours2, theirs2) = flowipc_sys::socket::socketpair_stream().unwrap();
            rx.watch_peer_socket(ours.as_fd()).unwrap();
            tx.watch_peer_socket(ours2.as_fd()).unwrap();
            tx.send(&[7; 8]).unwrap();
            // Fill the ring so that the next send blocks.
            while tx.try_send(&[0; 24]).is_ok() {}
            let hang_up = std::thread::spawn(move || {
                // From "before the sleep" to "long asleep".
                std::thread::sleep(Duration::from_micros(round % 50 * 20));
                drop(theirs);
                drop(theirs2);
            });
            // The sender stays open (a closed ring would end the receive with `Closed`).
            let sender = std::thread::spawn(move || (tx.send(&[1; 24]), tx));
            let mut buf = [0u8; 24];
            assert_eq!(rx.recv(&mut buf).map(|f| f.len), Ok(8), "round {round}");
            // Drain what fits, then block until the hang-up (the sender may have got room).
            let err = loop {
                match rx.recv(&mut buf) {
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            assert_eq!(err, RingRecvError::PeerGone, "round {round}");
            hang_up.join().unwrap();
            let (sent, _tx) = sender.join().unwrap();
            assert!(
                matches!(sent, Ok(()) | Err(RingSendError::PeerGone)),
                "round {round}: {sent:?}"
            );
        }
    }
}
