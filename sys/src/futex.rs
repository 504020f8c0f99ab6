//! Futex wait and wake on a 32-bit word (`futex(2)`).
//!
//! A futex lets a thread sleep until another thread changes a word in memory and wakes it. The
//! check of the word and the decision to sleep are atomic in the kernel, which is what prevents a
//! lost wake-up: [`futex_wait`] sleeps only if the word still holds `expected`.
//!
//! [`futex_wait`] and [`futex_wake`] use the shared (non-`FUTEX_PRIVATE_FLAG`) form, which keys the
//! wait queue on the physical page, so they work on a word in a `MAP_SHARED` mapping that several
//! processes map (at different addresses). The `_private` variants key on the virtual address and
//! are faster, but only meet waiters in the same process.
//!
//! Waits may return spuriously; callers loop, re-checking the word.

use core::sync::atomic::AtomicU32;
use core::time::Duration;

use rustix::thread::futex;

use crate::Result;

fn wait(
    word: &AtomicU32,
    flags: futex::Flags,
    expected: u32,
    timeout: Option<Duration>,
) -> Result<()> {
    let ts = timeout.map(crate::time::relative);
    futex::wait(word, flags, expected, ts.as_ref())
}

/// `futex(word, FUTEX_WAIT, expected, timeout)`—sleeps while `*word == expected`, across processes.
///
/// `timeout` is relative, measured on `CLOCK_MONOTONIC`; `None` waits indefinitely. Returns `Ok`
/// when woken (possibly spuriously).
///
/// # Errors
///
/// - [`Errno::AGAIN`](crate::Errno::AGAIN): `*word != expected` when the call started;
/// - [`Errno::TIMEDOUT`](crate::Errno::TIMEDOUT): the timeout passed;
/// - [`Errno::INTR`](crate::Errno::INTR): a signal handler ran.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use flowipc_sys::futex::{futex_wait, futex_wake};
///
/// static WORD: AtomicU32 = AtomicU32::new(0);
/// let waker = std::thread::spawn(|| {
///     std::thread::sleep(Duration::from_millis(10));
///     WORD.store(1, Ordering::Release);
///     futex_wake(&WORD, 1)
/// });
/// while WORD.load(Ordering::Acquire) == 0 {
///     // Ok (woken), AGAIN (already changed), TIMEDOUT or INTR: re-check the word.
///     let _ = futex_wait(&WORD, 0, Some(Duration::from_secs(1)));
/// }
/// waker.join().unwrap()?;
/// # Ok::<(), flowipc_sys::Errno>(())
/// ```
///
/// # References
///  - [Linux `futex(2)`]
///  - [Linux `futex(7)`]
///
/// [Linux `futex(2)`]: https://man7.org/linux/man-pages/man2/futex.2.html
/// [Linux `futex(7)`]: https://man7.org/linux/man-pages/man7/futex.7.html
#[doc(alias = "futex")]
#[doc(alias = "FUTEX_WAIT")]
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Result<()> {
    wait(word, futex::Flags::empty(), expected, timeout)
}

/// `futex(word, FUTEX_WAKE, count)`—wakes up to `count` waiters on `word`, in any process.
///
/// Returns how many were woken. Use `u32::MAX` (clamped by the kernel) to wake all. Store the new
/// value before waking, or a waiter may go back to sleep.
///
/// # References
///  - [Linux `futex(2)`]
///  - [Linux `futex(7)`]
///
/// [Linux `futex(2)`]: https://man7.org/linux/man-pages/man2/futex.2.html
/// [Linux `futex(7)`]: https://man7.org/linux/man-pages/man7/futex.7.html
#[doc(alias = "futex")]
#[doc(alias = "FUTEX_WAKE")]
pub fn futex_wake(word: &AtomicU32, count: u32) -> Result<usize> {
    futex::wake(word, futex::Flags::empty(), count.min(i32::MAX as u32))
}

/// `futex(word, FUTEX_WAIT_PRIVATE, expected, timeout)`—[`futex_wait`] for a word used by one
/// process only.
///
/// Not woken by [`futex_wake`] from another process. Errors as for [`futex_wait`].
///
/// # References
///  - [Linux `futex(2)`]
///
/// [Linux `futex(2)`]: https://man7.org/linux/man-pages/man2/futex.2.html
#[doc(alias = "futex")]
#[doc(alias = "FUTEX_WAIT_PRIVATE")]
pub fn futex_wait_private(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> Result<()> {
    wait(word, futex::Flags::PRIVATE, expected, timeout)
}

/// `futex(word, FUTEX_WAKE_PRIVATE, count)`—[`futex_wake`] for a word used by one process only.
///
/// # References
///  - [Linux `futex(2)`]
///
/// [Linux `futex(2)`]: https://man7.org/linux/man-pages/man2/futex.2.html
#[doc(alias = "futex")]
#[doc(alias = "FUTEX_WAKE_PRIVATE")]
pub fn futex_wake_private(word: &AtomicU32, count: u32) -> Result<usize> {
    futex::wake(word, futex::Flags::PRIVATE, count.min(i32::MAX as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;
    use core::sync::atomic::Ordering;

    #[test]
    fn wait_on_changed_value_is_again() {
        let w = AtomicU32::new(1);
        assert_eq!(futex_wait(&w, 0, None), Err(Errno::AGAIN));
        assert_eq!(futex_wait_private(&w, 0, None), Err(Errno::AGAIN));
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let d = Some(Duration::from_millis(10));
        assert_eq!(futex_wait(&w, 0, d), Err(Errno::TIMEDOUT));
        assert_eq!(futex_wait_private(&w, 0, d), Err(Errno::TIMEDOUT));
    }

    #[test]
    fn wake_without_waiter() {
        let w = AtomicU32::new(0);
        assert_eq!(futex_wake(&w, u32::MAX), Ok(0));
        assert_eq!(futex_wake_private(&w, 1), Ok(0));
        w.store(1, Ordering::Relaxed);
    }
}
