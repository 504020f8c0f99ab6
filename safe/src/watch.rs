//! The peer watcher: one thread per process that learns of a peer's death the moment its socket
//! hangs up and wakes whatever ring side of ours sleeps waiting for that peer.
//!
//! A ring side blocked in `futex_wait` gets no signal when the peer process dies. Bounding every
//! sleep with a timeout and polling the peer's socket at each one notices the death, but a timed
//! futex wait arms and cancels a kernel timer per sleep, which on one CPU costs about a third of a
//! round trip. With the watcher, a ring side sleeps without a timeout: the watcher `poll`s the
//! companion sockets of every watched side (plus an eventfd that tells it the set changed), and
//! when one hangs up it raises that side's [`Alarm`] and then clears and wakes the side's waiting
//! word, as the peer's notifier would have.
//!
//! No wake-up is lost: the sleeper stores its waiting word, fences (`SeqCst`), re-checks the ring,
//! and checks the alarm right before `futex_wait`; the watcher raises the alarm, fences, then
//! stores `0` into the word and wakes it. Either the sleeper sees the alarm, or its `futex_wait`
//! finds the word changed, or the wake finds it asleep (the Dekker pattern of `flowipc_core::wait`;
//! the loom model `watcher_alarm_ends_a_sleep_on_an_empty_ring` checks it).
//!
//! Descriptors are accounted exactly: the thread runs only while something is watched (it exits,
//! closing its eventfd, when the last watch goes), and dropping a [`Watch`] waits until the thread
//! has let go of the watched socket's duplicate, so the duplicate is closed when the drop returns.
//! In a fork child of a process whose watcher runs, registration fails (`ENOTSUP`), and callers
//! fall back to bounded sleeps.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use flowipc_sys::eventfd::{eventfd, eventfd_read, eventfd_write, EventfdFlags};
use flowipc_sys::socket::{poll, PollFd, PollFlags};
use flowipc_sys::Errno;

use crate::raw::ring_region::WaitingWord;

/// How long dropping a watch waits for the thread to let go of its socket. Normally a wake-up
/// and a `poll` (microseconds); the bound only keeps a drop from hanging if the thread is stuck.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Raised by the watcher once the watched peer is gone; it never goes down again.
#[derive(Debug, Default)]
pub(crate) struct Alarm(AtomicBool);

impl Alarm {
    /// Whether the peer is gone.
    pub(crate) fn is_raised(&self) -> bool {
        // SYNC POINT: SeqCst pairs with the SeqCst store and fence in `Entry::fire`; the sleeper
        // loads this after its own SeqCst fence (in `block_until`), so either it sees the alarm
        // or the watcher's later store to the waiting word reaches its `futex_wait`.
        self.0.load(Ordering::SeqCst)
    }
}

/// One watched ring side.
#[derive(Debug)]
struct Entry {
    sock: OwnedFd,
    /// The waiting word of a ring side to clear and wake; `None` for a watch that only raises
    /// its alarm (a transport whose blocking calls `poll` the socket themselves).
    word: Option<WaitingWord>,
    alarm: Arc<Alarm>,
}

impl Entry {
    fn fire(&self) {
        self.alarm.0.store(true, Ordering::SeqCst);
        // SYNC POINT: orders the alarm before the word's reset, pairing with the sleeper's fence
        // between its store of the word and its check of the alarm.
        fence(Ordering::SeqCst);
        if let Some(word) = &self.word {
            let word = word.get();
            word.store(0, flowipc_core::sync::Ordering::Relaxed);
            // One sleeper per word by construction; an error leaves nothing to do.
            let _ = flowipc_sys::futex::futex_wake(word, 1);
        }
    }
}

/// What the thread and the watches share, under one lock.
#[derive(Debug, Default)]
struct State {
    /// Watched and not yet fired.
    entries: Vec<Arc<Entry>>,
    /// The thread's wake-up, while it runs.
    changed: Option<Arc<OwnedFd>>,
    /// Bumped by the thread each time it has dropped its previous snapshot of `entries`.
    generation: u64,
    /// The thread, to be joined once it has exited (by the last watch's drop, or by the next
    /// watch before it starts a new thread), so that no thread of ours outlives the last watch:
    /// a detached thread still exiting at process exit shows up as a leak under LeakSanitizer.
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Watcher {
    state: Mutex<State>,
    /// Signalled with each new `generation`.
    turned: Condvar,
    pid: u32,
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's watcher; `None` in a fork child of a process that had one (its thread, if any,
/// did not survive the fork).
fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Watcher> = OnceLock::new();
    let w = WATCHER.get_or_init(|| Watcher {
        state: Mutex::new(State::default()),
        turned: Condvar::new(),
        pid: std::process::id(),
    });
    (w.pid == std::process::id()).then_some(w)
}

/// The thread: polls the watched sockets until none is left.
fn run(w: &'static Watcher) {
    loop {
        let (live, changed) = {
            let mut st = w.lock();
            st.generation += 1;
            w.turned.notify_all();
            if st.entries.is_empty() {
                // Closed under the lock: a watch that waits for this generation finds the
                // descriptor gone, and a new watch starts a new thread.
                st.changed = None;
                return;
            }
            let Some(changed) = st.changed.clone() else {
                return;
            };
            (st.entries.clone(), changed)
        };
        let mut fds = Vec::with_capacity(live.len() + 1);
        fds.push(PollFd::new(&*changed, PollFlags::IN));
        fds.extend(live.iter().map(|e| PollFd::new(&e.sock, PollFlags::RDHUP)));
        // EINTR or ENOMEM: go round again with a fresh set.
        if poll(&mut fds, None).is_ok() {
            if fds[0].revents().contains(PollFlags::IN) {
                let _ = eventfd_read(changed.as_fd());
            }
            let fired: Vec<&Arc<Entry>> = live
                .iter()
                .zip(&fds[1..])
                .filter(|(_, pfd)| {
                    pfd.revents()
                        .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
                })
                .map(|(e, _)| e)
                .collect();
            if !fired.is_empty() {
                for e in &fired {
                    e.fire();
                }
                // A hung-up socket stays readable: stop polling it.
                w.lock()
                    .entries
                    .retain(|e| !fired.iter().any(|f| Arc::ptr_eq(e, f)));
            }
        }
        // The snapshot (and so the descriptors of watches dropped meanwhile) goes before the next
        // generation is announced.
        drop(fds);
        drop(live);
        drop(changed);
    }
}

/// Keeps a ring side watched; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    entry: Arc<Entry>,
}

impl Watch {
    /// Watches `sock` (a duplicate is kept) for a hang-up that means the peer is gone; then raises
    /// the alarm and, if given, clears and wakes `word`, the waiting word of a ring side that may
    /// sleep on it.
    ///
    /// # Errors
    ///
    /// `ENOTSUP` in a fork child of a process that used the watcher; the errors of `dup`,
    /// `eventfd` and thread creation (`EAGAIN`).
    pub(crate) fn new(sock: BorrowedFd<'_>, word: Option<WaitingWord>) -> Result<Self, Errno> {
        let w = watcher().ok_or(Errno::NOTSUP)?;
        let entry = Arc::new(Entry {
            sock: flowipc_sys::fd::dup_cloexec(sock)?,
            word,
            alarm: Arc::new(Alarm::default()),
        });
        let mut st = w.lock();
        match &st.changed {
            Some(changed) => {
                let _ = eventfd_write(changed.as_fd(), 1);
            }
            None => {
                // The previous thread (if any) set `changed` to `None` as its last act under the
                // lock, so it has finished or is returning: the join is immediate.
                if let Some(old) = st.thread.take() {
                    let _ = old.join();
                }
                let changed = Arc::new(eventfd(0, EventfdFlags::NONBLOCK)?);
                let handle = std::thread::Builder::new()
                    .name("flowipc-peer-watch".into())
                    .spawn(move || run(w))
                    .map_err(|_| Errno::AGAIN)?;
                st.changed = Some(changed);
                st.thread = Some(handle);
            }
        }
        st.entries.push(entry.clone());
        Ok(Watch { entry })
    }

    /// The alarm raised when the peer is gone.
    pub(crate) fn alarm(&self) -> &Arc<Alarm> {
        &self.entry.alarm
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(w) = watcher() else {
            return;
        };
        let mut st = w.lock();
        st.entries.retain(|e| !Arc::ptr_eq(e, &self.entry));
        let Some(changed) = st.changed.clone() else {
            // No thread runs, so none holds our entry.
            return;
        };
        let _ = eventfd_write(changed.as_fd(), 1);
        drop(changed);
        // Wait until the thread has dropped the snapshot that may hold our entry, so that the
        // socket's duplicate is closed when this returns.
        let seen = st.generation;
        let (st, _) = w
            .turned
            .wait_timeout_while(st, RELEASE_TIMEOUT, |st| st.generation == seen)
            .unwrap_or_else(|e| e.into_inner());
        if !st.entries.is_empty() {
            return;
        }
        // The last watch: wait (bounded) until the thread has seen the set empty and stopped,
        // then join it, unless a new watch has started another meanwhile.
        let (mut st, _) = w
            .turned
            .wait_timeout_while(st, RELEASE_TIMEOUT, |st| {
                st.changed.is_some() && st.entries.is_empty()
            })
            .unwrap_or_else(|e| e.into_inner());
        if st.changed.is_none() {
            if let Some(thread) = st.thread.take() {
                drop(st);
                let _ = thread.join();
            }
        }
    }
}
