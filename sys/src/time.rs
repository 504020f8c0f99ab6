//! Conversions between `core::time::Duration` and the kernel's `timespec`.

use core::time::Duration;
use rustix::time::{ClockId, Timespec};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A relative timeout as a `timespec`, saturating at `i64::MAX` seconds (about 292 billion years).
pub(crate) fn relative(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// The `CLOCK_REALTIME` instant `d` from now, saturating; the form POSIX mq timeouts take.
pub(crate) fn realtime_deadline(d: Duration) -> Timespec {
    let now = rustix::time::clock_gettime(ClockId::Realtime);
    let rel = relative(d);
    let mut sec = now.tv_sec.saturating_add(rel.tv_sec);
    let mut nsec = now.tv_nsec + rel.tv_nsec; // both < 1e9: no overflow
    if nsec >= NANOS_PER_SEC {
        nsec -= NANOS_PER_SEC;
        sec = sec.saturating_add(1);
    }
    if sec == i64::MAX {
        nsec = nsec.min(NANOS_PER_SEC - 1);
    }
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_saturates() {
        let t = relative(Duration::MAX);
        assert_eq!(t.tv_sec, i64::MAX);
        assert!(t.tv_nsec < NANOS_PER_SEC);
        let t = relative(Duration::from_millis(1500));
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 500_000_000));
    }

    #[test]
    fn deadline_is_normalized_and_in_future() {
        let now = rustix::time::clock_gettime(ClockId::Realtime);
        let t = realtime_deadline(Duration::new(2, 999_999_999));
        assert!(t.tv_nsec >= 0 && t.tv_nsec < NANOS_PER_SEC);
        assert!(t.tv_sec >= now.tv_sec + 2);
        let t = realtime_deadline(Duration::MAX);
        assert_eq!(t.tv_sec, i64::MAX);
        assert!(t.tv_nsec < NANOS_PER_SEC);
    }
}
