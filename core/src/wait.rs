//! Blocking without system calls: the [`Waiter`] / [`Notifier`] traits and the waiting-word protocol.
//!
//! A side of a ring that finds nothing to do (the consumer on an empty ring, the producer on a full
//! one) may sleep. Sleeping and waking are system calls (futex, eventfd), so this crate only defines
//! the traits; `flowipc` implements them.
//!
//! # The waiting-word protocol (wake-up elision)
//!
//! Each direction has one `u32` *waiting word* in the shared header. `0` means "nobody sleeps"; a
//! non-zero value is the [`WakeKind`] the sleeper needs (futex wake on the word, or a write to its
//! eventfd).
//!
//! ```text
//! sleeper                                  publisher
//! -------                                  ---------
//! waiting = kind                           publish position (Release)
//! fence(SeqCst)            <-- Dekker -->  fence(SeqCst)
//! re-check the ring                        w = waiting
//! if still nothing: wait(waiting, kind)    if w != 0: waiting.swap(0); wake(kind)
//! ```
//!
//! The two SeqCst fences order the sleeper's store of `waiting` against the publisher's store of its
//! position: either the publisher sees `waiting != 0` and wakes, or the sleeper's re-check sees the new
//! position and does not sleep. A wake system call is therefore made only when the other side has
//! announced that it sleeps. The publisher resets the word to `0` before waking, so a sleeper that has
//! not yet entered the kernel finds `word != kind` and returns at once (a futex compares the word
//! atomically with going to sleep). This is the pattern the loom model `wake.rs` checks: no lost
//! wake-up, and no sleep while the ring holds what the sleeper waits for.
//!
//! A word holding a value the peer wrote outside the protocol (hostile or buggy peer) can only cause a
//! needless wake-up or a sleep bounded by the timeout the caller's `check` callback returns; it is
//! never trusted for anything else.

use core::time::Duration;

use crate::sync::{fence, spin_hint, AtomicU32, Ordering};

/// How a sleeping side wants to be woken; stored in the shared waiting word while it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WakeKind {
    /// The sleeper waits with `futex_wait` on the waiting word itself (shared, not `FUTEX_PRIVATE`).
    Futex = 1,
    /// The sleeper waits on an eventfd (e.g. registered with an async reactor); the waker writes it.
    EventFd = 2,
}

impl WakeKind {
    /// Decodes a waiting-word value. `0` means nobody sleeps; any other unknown value (which only a
    /// misbehaving peer writes) is read as [`WakeKind::Futex`], the wake that costs least.
    #[inline]
    pub const fn from_word(word: u32) -> Option<WakeKind> {
        match word {
            0 => None,
            2 => Some(WakeKind::EventFd),
            _ => Some(WakeKind::Futex),
        }
    }

    /// The value stored in the waiting word for this kind.
    #[inline]
    pub const fn word(self) -> u32 {
        self as u32
    }
}

/// Why [`Waiter::wait`] returned. Both outcomes make the caller re-check the ring; the distinction is
/// informational.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken, or the word no longer held `expected`, or a spurious wake-up.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// Puts the calling thread to sleep on a waiting word.
pub trait Waiter {
    /// The wake-up this waiter needs; stored in the waiting word before sleeping.
    fn wake_kind(&self) -> WakeKind;

    /// Sleeps while `word` holds `expected`, for at most `timeout` (`None`: no limit).
    ///
    /// Must return at once if `word` does not hold `expected` when called (the futex semantics: the
    /// comparison and going to sleep are one atomic step with respect to [`Notifier::wake`]).
    /// Spurious returns are allowed.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome;

    /// The CPU the calling thread runs on, if known cheaply (no system call). With it a
    /// spin-then-block wait skips spinning when the peer runs on the same CPU and spins the full
    /// policy otherwise (from the CPU hints in the ring header, which [`Notifier::current_cpu`]
    /// fills); without it (the default) the spins adapt to how waits end ([`SpinBudget`]).
    fn current_cpu(&self) -> Option<u32> {
        None
    }
}

/// Wakes the other side of a ring after the waiting-word protocol has found it asleep.
pub trait Notifier {
    /// Wakes the sleeper on `word`, which asked for `kind`. Called only after the word was seen
    /// non-zero (and reset to zero), so a call usually costs one system call.
    fn wake(&self, word: &AtomicU32, kind: WakeKind);

    /// The CPU the calling thread runs on, if known cheaply (no system call): a ring side records
    /// it in the header when it publishes or frees frames, so that a peer waiting on the same CPU
    /// does not spin (see [`Waiter::current_cpu`]). `None` (the default) records nothing.
    fn current_cpu(&self) -> Option<u32> {
        None
    }
}

impl<T: Waiter + ?Sized> Waiter for &T {
    #[inline]
    fn wake_kind(&self) -> WakeKind {
        (**self).wake_kind()
    }

    #[inline]
    fn current_cpu(&self) -> Option<u32> {
        (**self).current_cpu()
    }

    #[inline]
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        (**self).wait(word, expected, timeout)
    }
}

impl<T: Notifier + ?Sized> Notifier for &T {
    #[inline]
    fn wake(&self, word: &AtomicU32, kind: WakeKind) {
        (**self).wake(word, kind)
    }

    #[inline]
    fn current_cpu(&self) -> Option<u32> {
        (**self).current_cpu()
    }
}

/// A [`Waiter`] that never sleeps: `wait` returns at once, so every policy degrades to busy-polling.
///
/// Together with [`NoopNotifier`] it makes a ring usable without any system call (tests, or two
/// threads that both busy-poll). Pair a real waiter with a real notifier otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpinWaiter;

impl Waiter for SpinWaiter {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::Futex
    }

    fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) -> WaitOutcome {
        spin_hint();
        WaitOutcome::Woken
    }
}

/// A [`Notifier`] that wakes nobody. Correct only when the peer never sleeps (it uses
/// [`SpinWaiter`] or [`WaitPolicy::BusyPoll`]); otherwise the peer sleeps until its own timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopNotifier;

impl Notifier for NoopNotifier {
    fn wake(&self, _word: &AtomicU32, _kind: WakeKind) {}
}

/// Spin iterations of [`WaitPolicy::default`] before sleeping.
///
/// One iteration is a re-check of the ring (loads that hit the local cache while the peer is idle)
/// plus a `pause`. Measured on these 2-vCPU EPYC guests: `pause` about 15 ns, a whole iteration
/// 25 ns idle and up to 70 ns on a loaded machine, so 1024 iterations spin about 25-70 us. A
/// blocking hand-off between cores costs about 55 us here (an idle vCPU halts) against about 0.13 us
/// for a spinning one, so spinning for about one blocking hand-off before sleeping keeps a
/// ping-pong at spin speed, while a side that is really idle still sleeps within ~70 us.
pub const DEFAULT_SPINS: u32 = 1024;

/// The fewest spins [`WaitPolicy::SpinThenBlock`] falls back to; see [`SpinBudget`].
pub const MIN_SPINS: u32 = 16;

/// The adaptive part of [`WaitPolicy::SpinThenBlock`] where CPU hints are missing: how many of
/// the policy's spins a side uses now. Each ring side keeps one.
///
/// When both the waiter and the peer tell where they run ([`Waiter::current_cpu`],
/// [`Notifier::current_cpu`]), the ring decides from that instead: no spinning when the peer is on
/// the waiter's CPU, the policy's full spins otherwise. The budget below is the fallback, and it
/// has a known weakness across cores: once waits sleep, it can fall to spins too short for any
/// reply and stay there.
///
/// A wait that ends while spinning (after at least one spin) doubles the budget (up to the
/// policy's `spins`); a wait that has to sleep halves it (down to [`MIN_SPINS`]). When the peer runs on the same CPU, spinning
/// only delays it, so every wait ends up sleeping: the budget falls to the floor within a few
/// messages instead of burning ~25-70 us per message. Across cores, a peer that answers within
/// the budget keeps it at the full `spins`; one that starts answering fast again regrows it from
/// the floor in a few messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinBudget(u32);

impl SpinBudget {
    /// The full budget: the policy's `spins`.
    pub const fn new() -> Self {
        SpinBudget(u32::MAX)
    }

    /// Spins the next wait may use under a policy of `spins`.
    #[inline]
    pub fn limit(self, spins: u32) -> u32 {
        self.0.min(spins)
    }

    fn spun_ok(&mut self, spins: u32) {
        self.0 = self.0.saturating_mul(2).min(spins);
    }

    fn slept(&mut self, spins: u32) {
        self.0 = (self.limit(spins) / 2).max(MIN_SPINS.min(spins));
    }
}

impl Default for SpinBudget {
    fn default() -> Self {
        SpinBudget::new()
    }
}

/// How often (in spin iterations) busy-polling calls the caller's `check` callback, so that a deadline
/// or a dead peer is noticed even by a side that never sleeps.
pub const BUSY_CHECK_INTERVAL: u32 = 1024;

/// What a side does when the ring cannot make progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Never sleep: spin until progress (lowest latency, burns a core).
    BusyPoll,
    /// Spin up to `spins` iterations, then sleep (the default, see [`DEFAULT_SPINS`]). The spins
    /// actually used adapt to how waits end; see [`SpinBudget`].
    SpinThenBlock {
        /// Most spin iterations before the first sleep.
        spins: u32,
    },
    /// Sleep at once (lowest CPU use; a cross-core hand-off costs a wake-up from halt).
    Block,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy::SpinThenBlock {
            spins: DEFAULT_SPINS,
        }
    }
}

/// The peer's CPU hint in the ring header (1 + the CPU it last published or released on, 0
/// unknown), if the ring has one.
pub(crate) type CpuHints<'a> = Option<&'a AtomicU32>;

/// Records in `hint` (this side's CPU hint) where the caller runs, if `notifier` knows it cheaply;
/// stores only when it changed, so a side that stays on its CPU only reads its own line.
#[inline]
pub(crate) fn note_cpu<N: Notifier + ?Sized>(hint: &AtomicU32, notifier: &N) {
    if let Some(cpu) = notifier.current_cpu() {
        let v = cpu.wrapping_add(1);
        // Relaxed: a hint, read by the peer for a guess.
        if hint.load(Ordering::Relaxed) != v {
            hint.store(v, Ordering::Relaxed);
        }
    }
}

/// The blocking loop shared by both ring sides.
///
/// Calls `ready` until it returns `Ok(true)` or an error, spinning and sleeping on `word` per
/// `policy`. Before each sleep (and every [`BUSY_CHECK_INTERVAL`] iterations of busy-polling) it calls
/// `check`, which returns the longest sleep allowed (`None`: unbounded) or an error that ends the
/// wait (deadline passed, peer gone). The number of iterations is bounded only by `check`.
pub(crate) fn block_until<W, E, C, R>(
    word: &AtomicU32,
    cpus: CpuHints<'_>,
    waiter: &W,
    policy: WaitPolicy,
    budget: &mut SpinBudget,
    mut check: C,
    mut ready: R,
) -> Result<(), E>
where
    W: Waiter + ?Sized,
    C: FnMut() -> Result<Option<Duration>, E>,
    R: FnMut() -> Result<bool, E>,
{
    // With the CPU known, spinning is decided by where the peer waits: never on our CPU (it
    // cannot run while we spin), the full policy across CPUs (no adaptation, which across cores
    // can fall to spins too short for any reply and stay there).
    let mut adaptive = matches!(policy, WaitPolicy::SpinThenBlock { .. });
    let spin_limit = match policy {
        WaitPolicy::BusyPoll => None,
        WaitPolicy::SpinThenBlock { spins } => match (cpus, waiter.current_cpu()) {
            // Relaxed: a hint the peer wrote for this guess.
            (Some(peer), Some(cpu)) if peer.load(Ordering::Relaxed) != 0 => {
                adaptive = false;
                if peer.load(Ordering::Relaxed) == cpu.wrapping_add(1) {
                    Some(0)
                } else {
                    Some(spins)
                }
            }
            _ => Some(budget.limit(spins)),
        },
        WaitPolicy::Block => Some(0),
    };
    let mut spins: u32 = 0;
    let mut slept = false;
    loop {
        if ready()? {
            // Only a wait that spun and did not sleep says spinning pays; one that was ready at
            // once says nothing (on one CPU that is common: the peer ran while this side was
            // preempted after its send).
            if let (WaitPolicy::SpinThenBlock { spins: max }, true, false, true) =
                (policy, adaptive, slept, spins > 0)
            {
                budget.spun_ok(max);
            }
            return Ok(());
        }
        match spin_limit {
            None => {
                spins = spins.wrapping_add(1);
                if spins % BUSY_CHECK_INTERVAL == 0 {
                    check()?;
                }
                spin_hint();
                continue;
            }
            Some(limit) if spins < limit => {
                spins += 1;
                spin_hint();
                continue;
            }
            Some(_) => {}
        }
        let timeout = check()?;
        if let (WaitPolicy::SpinThenBlock { spins }, true, false) = (policy, adaptive, slept) {
            budget.slept(spins);
        }
        slept = true;
        let kind = waiter.wake_kind().word();
        // An RMW, not a plain store: it reads (and so is ordered after) the peer's last reset of the
        // word. A plain store is just as correct under the C++ model, whose modification order is
        // total, but loom orders a store unordered with the reset only partially and then lets the
        // peer's load after its fence miss it (a false lost wake-up at 4+ preemptions). On x86 both
        // are one instruction on a line this side owns; this is the slow path anyway.
        word.swap(kind, Ordering::Relaxed);
        // SYNC POINT (Dekker, sleeper side): orders the store of `word` above before the re-check of
        // the peer's position below. Pairs with the fence in `wake_if_waiting`, which sits between the
        // peer's position store and its load of `word`.
        fence(Ordering::SeqCst);
        match ready() {
            Ok(false) => {}
            other => {
                word.store(0, Ordering::Relaxed);
                return other.map(|_| ());
            }
        }
        waiter.wait(word, kind, timeout);
        // Leave the word clear between sleeps so the peer does not pay for wake-ups while this side
        // is awake; the next sleep sets it again before its re-check.
        word.store(0, Ordering::Relaxed);
    }
}

/// The sleeper's half of the protocol without the sleep, for a side driven by a reactor: stores
/// `kind` in `word`, fences, then calls `ready`. If that finds progress (or fails), the word is
/// cleared again and the result returned; otherwise (`Ok(false)`) the word stays set, so the
/// peer's next publish or release wakes this side the way `kind` asks (for an eventfd: writes it).
pub(crate) fn arm<E, R>(word: &AtomicU32, kind: WakeKind, ready: R) -> Result<bool, E>
where
    R: FnOnce() -> Result<bool, E>,
{
    // An RMW for the same reason as in `block_until`: it is ordered after the peer's last reset.
    word.swap(kind.word(), Ordering::Relaxed);
    // SYNC POINT (Dekker, sleeper side): orders the store of `word` above before the re-check of
    // the peer's position in `ready`. Pairs with the fence in `wake_if_waiting`, which sits between
    // the peer's position store and its load of `word`.
    fence(Ordering::SeqCst);
    let r = ready();
    if !matches!(r, Ok(false)) {
        word.store(0, Ordering::Relaxed);
    }
    r
}

/// The publisher's side of the protocol: call after storing a new position.
#[inline]
pub(crate) fn wake_if_waiting<N: Notifier + ?Sized>(word: &AtomicU32, notifier: &N) {
    // SYNC POINT (Dekker, publisher side): orders the position store the caller just made before the
    // load of `word`. Pairs with the fence in `block_until` between the sleeper's store of `word` and
    // its re-check of this side's position.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != 0 {
        // Reset before waking so a sleeper that has not reached the kernel yet sees `word != kind`
        // and returns; the swap makes only one waker pay for a given sleep. Relaxed suffices: the
        // data the sleeper needs was ordered by the fence above and its own Acquire re-check, and
        // the futex / eventfd orders the wake with the sleep.
        let prev = word.swap(0, Ordering::Relaxed);
        if let Some(kind) = WakeKind::from_word(prev) {
            notifier.wake(word, kind);
        }
    }
}

#[cfg(all(test, not(flowipc_loom)))]
mod tests {
    use super::*;

    /// `block_until` under a spin-then-block policy of 1024 spins, with a `ready` that succeeds on
    /// its `at`-th call.
    fn spin_wait<W: Waiter>(cpus: CpuHints<'_>, waiter: &W, budget: &mut SpinBudget, at: u32) {
        let word = AtomicU32::new(0);
        let mut calls = 0;
        block_until(
            &word,
            cpus,
            waiter,
            WaitPolicy::SpinThenBlock { spins: 1024 },
            budget,
            || Ok::<_, ()>(None),
            || {
                calls += 1;
                Ok(calls >= at)
            },
        )
        .unwrap();
    }

    /// [`spin_wait`] without CPU hints, never sleeping for real.
    fn wait_ready_at(budget: &mut SpinBudget, at: u32) {
        spin_wait(None, &SpinWaiter, budget, at);
    }

    /// A waiter on a known CPU whose sleeps return at once; counts them.
    struct OnCpu {
        cpu: u32,
        sleeps: core::cell::Cell<u32>,
    }

    impl Waiter for OnCpu {
        fn wake_kind(&self) -> WakeKind {
            WakeKind::Futex
        }

        fn wait(&self, _: &AtomicU32, _: u32, _: Option<Duration>) -> WaitOutcome {
            self.sleeps.set(self.sleeps.get() + 1);
            WaitOutcome::Woken
        }

        fn current_cpu(&self) -> Option<u32> {
            Some(self.cpu)
        }
    }

    /// [`spin_wait`] as a side on CPU 3 whose peer's hint is `peer_hint`; how often it slept.
    fn wait_with_hint(peer_hint: u32, at: u32, budget: &mut SpinBudget) -> u32 {
        let hint = AtomicU32::new(peer_hint);
        let waiter = OnCpu {
            cpu: 3,
            sleeps: core::cell::Cell::new(0),
        };
        spin_wait(Some(&hint), &waiter, budget, at);
        waiter.sleeps.get()
    }

    #[test]
    fn cpu_hints_decide_spinning() {
        let mut b = SpinBudget::new();
        // The peer publishes on our CPU (hint 1 + 3): no spinning, straight to sleep.
        assert_eq!(wait_with_hint(4, 3, &mut b), 1);
        // On another CPU: the full policy's spins, even when the adaptive budget is at its floor,
        // which hints leave alone.
        for _ in 0..12 {
            b.slept(1024);
        }
        assert_eq!(b.limit(1024), MIN_SPINS);
        assert_eq!(wait_with_hint(1, 500, &mut b), 0);
        assert_eq!(b.limit(1024), MIN_SPINS);
        // Past the policy's spins it sleeps (the stub's sleeps end at once, so several times).
        assert!(wait_with_hint(1, 1100, &mut b) > 0);
        // No hint yet (0): the adaptive budget decides; at its floor of 16 spins a wait that the
        // full policy would have spun through sleeps.
        assert!(wait_with_hint(0, 100, &mut b) > 0);
    }

    #[test]
    fn note_cpu_stores_only_changes() {
        struct At(Option<u32>);
        impl Notifier for At {
            fn wake(&self, _: &AtomicU32, _: WakeKind) {}
            fn current_cpu(&self) -> Option<u32> {
                self.0
            }
        }
        let hint = AtomicU32::new(0);
        note_cpu(&hint, &At(None));
        assert_eq!(hint.load(Ordering::Relaxed), 0);
        note_cpu(&hint, &At(Some(0)));
        assert_eq!(hint.load(Ordering::Relaxed), 1);
        note_cpu(&hint, &At(Some(5)));
        assert_eq!(hint.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn spin_budget_follows_how_waits_end() {
        let mut b = SpinBudget::new();
        assert_eq!(b.limit(1024), 1024);
        // Ready after 2000 checks: the 1024 spins run out and the wait sleeps.
        wait_ready_at(&mut b, 2000);
        assert_eq!(b.limit(1024), 512);
        for _ in 0..10 {
            wait_ready_at(&mut b, 2000);
        }
        assert_eq!(b.limit(1024), MIN_SPINS);
        // Ready at the first check: nothing learnt.
        wait_ready_at(&mut b, 1);
        assert_eq!(b.limit(1024), MIN_SPINS);
        // Ready after a few spins, within the budget: it doubles, up to the policy's spins.
        wait_ready_at(&mut b, 3);
        assert_eq!(b.limit(1024), 2 * MIN_SPINS);
        for _ in 0..10 {
            wait_ready_at(&mut b, 3);
        }
        assert_eq!(b.limit(1024), 1024);
        // A smaller policy caps it, and a zero-spin policy stays at zero.
        assert_eq!(b.limit(100), 100);
        let mut z = SpinBudget::new();
        z.slept(0);
        assert_eq!(z.limit(0), 0);
    }

    /// Busy-polling keeps calling `check` every [`BUSY_CHECK_INTERVAL`] spins for as long as it
    /// polls, so a dead peer or a deadline found late still ends the wait: here `check` reports
    /// an error only after 20 intervals. (`ready` gives up after 100 intervals, so a busy-poll that
    /// stopped checking fails the test instead of spinning for ever.)
    #[test]
    fn busy_poll_checks_all_along() {
        #[derive(Debug, PartialEq)]
        enum Stop {
            Check(u32),
            Stuck,
        }
        let word = AtomicU32::new(0);
        let (mut polls, mut checks) = (0u32, 0u32);
        let polls_at_check = core::cell::Cell::new(0u32);
        let got = block_until(
            &word,
            None,
            &SpinWaiter,
            WaitPolicy::BusyPoll,
            &mut SpinBudget::new(),
            || {
                checks += 1;
                if polls_at_check.get() >= 20 * BUSY_CHECK_INTERVAL {
                    Err(Stop::Check(checks))
                } else {
                    Ok(None)
                }
            },
            || {
                polls += 1;
                polls_at_check.set(polls);
                if polls > 100 * BUSY_CHECK_INTERVAL {
                    Err(Stop::Stuck)
                } else {
                    Ok(false)
                }
            },
        );
        // One check per interval: the 20th interval's check is the one that stops the wait.
        assert_eq!(got, Err(Stop::Check(20)));
    }

    /// `0` in a waiting word means nobody sleeps; the waker must not call the notifier for it.
    /// Unknown values (only a misbehaving peer writes them) read as the cheapest wake.
    #[test]
    fn waiting_words_decode() {
        assert_eq!(WakeKind::from_word(0), None);
        assert_eq!(WakeKind::from_word(1), Some(WakeKind::Futex));
        assert_eq!(WakeKind::from_word(2), Some(WakeKind::EventFd));
        assert_eq!(WakeKind::from_word(7), Some(WakeKind::Futex));
        for k in [WakeKind::Futex, WakeKind::EventFd] {
            assert_eq!(WakeKind::from_word(k.word()), Some(k));
        }
    }

    /// The traits' defaults know no CPU, and the blanket impls for references forward every
    /// method to the referent (a ring side is often handed `&waiter` / `&notifier`).
    #[test]
    fn defaults_and_reference_impls() {
        struct Plain;
        impl Waiter for Plain {
            fn wake_kind(&self) -> WakeKind {
                WakeKind::EventFd
            }
            fn wait(&self, _: &AtomicU32, _: u32, _: Option<Duration>) -> WaitOutcome {
                WaitOutcome::TimedOut
            }
        }
        impl Notifier for Plain {
            fn wake(&self, _: &AtomicU32, _: WakeKind) {}
        }
        assert_eq!(Waiter::current_cpu(&Plain), None);
        assert_eq!(Notifier::current_cpu(&Plain), None);

        struct Counting {
            wakes: core::cell::Cell<u32>,
        }
        impl Notifier for Counting {
            fn wake(&self, word: &AtomicU32, kind: WakeKind) {
                assert_eq!((word.load(Ordering::Relaxed), kind), (9, WakeKind::EventFd));
                self.wakes.set(self.wakes.get() + 1);
            }
            fn current_cpu(&self) -> Option<u32> {
                Some(7)
            }
        }
        let on5 = OnCpu {
            cpu: 5,
            sleeps: core::cell::Cell::new(0),
        };
        let by_ref: &OnCpu = &on5;
        assert_eq!(Waiter::current_cpu(&by_ref), Some(5));
        assert_eq!(Waiter::wake_kind(&by_ref), WakeKind::Futex);
        let word = AtomicU32::new(9);
        assert_eq!(Waiter::wait(&by_ref, &word, 9, None), WaitOutcome::Woken);
        assert_eq!(on5.sleeps.get(), 1);
        let n = Counting {
            wakes: core::cell::Cell::new(0),
        };
        let n_ref: &Counting = &n;
        Notifier::wake(&n_ref, &word, WakeKind::EventFd);
        assert_eq!(n.wakes.get(), 1);
        assert_eq!(Notifier::current_cpu(&n_ref), Some(7));
    }
}
