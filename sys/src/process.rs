//! Process identity, pidfds, CPU placement, fork handlers and a monotonic clock.

use rustix::fd::OwnedFd;
use rustix::process::PidfdFlags;
use rustix::thread::CpuSet;
use rustix::time::ClockId;

use crate::{Errno, Result};

pub use rustix::process::{Gid, Pid, Uid};

/// `pidfd_open(pid, 0)`—a descriptor referring to process `pid`.
///
/// It becomes readable (for `poll`) when the process exits, and keeps referring to the same
/// process even if its pid is reused. Pidfds are always close-on-exec. Fails with
/// [`Errno::SRCH`] if no such process exists.
///
/// # References
///  - [Linux `pidfd_open(2)`]
///
/// [Linux `pidfd_open(2)`]: https://man7.org/linux/man-pages/man2/pidfd_open.2.html
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    rustix::process::pidfd_open(pid, PidfdFlags::empty())
}

/// `getpid()`—the calling process's id.
///
/// # References
///  - [Linux `getpid(2)`]
///
/// [Linux `getpid(2)`]: https://man7.org/linux/man-pages/man2/getpid.2.html
pub fn getpid() -> Pid {
    rustix::process::getpid()
}

/// `sched_setaffinity(0, {cpu})`—pins the calling thread to CPU `cpu`.
///
/// Fails with [`Errno::INVAL`] if `cpu` does not exist or is outside the allowed set (e.g. a
/// cgroup's cpuset).
///
/// # References
///  - [Linux `sched_setaffinity(2)`]
///
/// [Linux `sched_setaffinity(2)`]: https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html
#[doc(alias = "sched_setaffinity")]
pub fn set_cpu_affinity(cpu: usize) -> Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(Errno::INVAL);
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
}

/// `sched_getaffinity(0)`—how many CPUs the calling thread may run on.
///
/// # References
///  - [Linux `sched_getaffinity(2)`]
///
/// [Linux `sched_getaffinity(2)`]: https://man7.org/linux/man-pages/man2/sched_getaffinity.2.html
#[doc(alias = "sched_getaffinity")]
pub fn available_cpus() -> Result<usize> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok(set.count() as usize)
}

/// `sched_getcpu()`—the CPU the calling thread is running on right now.
///
/// # References
///  - [Linux `sched_getcpu(3)`]
///
/// [Linux `sched_getcpu(3)`]: https://man7.org/linux/man-pages/man3/sched_getcpu.3.html
#[doc(alias = "sched_getcpu")]
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

/// `sched_getcpu(3)` through the C library—the CPU the calling thread runs on, cheaply: glibc
/// 2.35 and later read it from the thread's rseq area (no system call), older ones from the
/// vDSO. For a hint on a hot path (where a ring's peer waits); [`current_cpu`] is the plain system
/// call. `None` if the C library reports an error.
///
/// # References
///  - [Linux `sched_getcpu(3)`]
///  - [Linux `rseq(2)`]
///
/// [Linux `sched_getcpu(3)`]: https://man7.org/linux/man-pages/man3/sched_getcpu.3.html
/// [Linux `rseq(2)`]: https://man7.org/linux/man-pages/man2/rseq.2.html
#[cfg(feature = "std")]
#[doc(alias = "sched_getcpu")]
#[inline]
pub fn current_cpu_hint() -> Option<u32> {
    extern "C" {
        fn sched_getcpu() -> core::ffi::c_int;
    }
    // SAFETY: no arguments; it reads only the C library's thread-local state (std links it).
    let cpu = unsafe { sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// A handler [`pthread_atfork`] runs around `fork`: a plain C function of no arguments.
pub type ForkHandler = extern "C" fn();

/// `pthread_atfork(prepare, parent, child)`—registers handlers the C library runs around every
/// `fork` in this process: `prepare` in the forking thread before the fork, `parent` in it after,
/// and `child` in the child's only thread.
///
/// Handlers run in registration order for `parent` and `child` and in reverse order for
/// `prepare`, so a component registering after another (jemalloc registers its own when it
/// initialises) has its `prepare` run first. A registration lasts for the life of the process.
/// Fails with [`Errno::NOMEM`] if the C library cannot record the handlers.
///
/// # Safety
///
/// Each handler runs inside `fork`, wherever in the program that is called: it must not take a
/// lock the forking thread may already hold, nor unwind. `child` runs in a copy of the process
/// with one thread; after a fork of a multi-threaded process it may only make async-signal-safe
/// calls and touch state it knows no other thread of the parent held (e.g. release locks its
/// own `prepare` took).
///
/// # References
///  - [POSIX `pthread_atfork`]
///  - [Linux `pthread_atfork(3)`]
///
/// [POSIX `pthread_atfork`]: https://pubs.opengroup.org/onlinepubs/9799919799/functions/pthread_atfork.html
/// [Linux `pthread_atfork(3)`]: https://man7.org/linux/man-pages/man3/pthread_atfork.3.html
#[cfg(feature = "std")]
#[doc(alias = "atfork")]
pub unsafe fn pthread_atfork(
    prepare: Option<ForkHandler>,
    parent: Option<ForkHandler>,
    child: Option<ForkHandler>,
) -> Result<()> {
    extern "C" {
        #[link_name = "pthread_atfork"]
        fn c_pthread_atfork(
            prepare: Option<ForkHandler>,
            parent: Option<ForkHandler>,
            child: Option<ForkHandler>,
        ) -> core::ffi::c_int;
    }
    // SAFETY: the arguments are null or C functions of no arguments, as the C declaration
    // expects (std links the C library); what the handlers do is the caller's contract.
    match unsafe { c_pthread_atfork(prepare, parent, child) } {
        0 => Ok(()),
        errno => Err(Errno::from_raw_os_error(errno)),
    }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds—a clock that never jumps, for measuring.
///
/// # References
///  - [Linux `clock_gettime(2)`]
///
/// [Linux `clock_gettime(2)`]: https://man7.org/linux/man-pages/man2/clock_gettime.2.html
#[doc(alias = "clock_gettime")]
#[doc(alias = "CLOCK_MONOTONIC")]
pub fn clock_monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(ClockId::Monotonic);
    // CLOCK_MONOTONIC is non-negative and fits u64 nanoseconds for 584 years of uptime.
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`—asks the kernel to kill the calling process when the thread
/// that created it exits.
///
/// Benchmark servers and test children use it so that a parent that dies (or gives up on a hung
/// peer) never leaves them behind, spinning or blocked on shared memory.
///
/// # References
///  - [Linux `prctl(2)`]
///
/// [Linux `prctl(2)`]: https://man7.org/linux/man-pages/man2/prctl.2.html
#[doc(alias = "PR_SET_PDEATHSIG")]
pub fn set_parent_death_kill() -> Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_moves_forward() {
        let a = clock_monotonic_ns();
        let b = clock_monotonic_ns();
        assert!(b >= a && a > 0);
    }

    #[test]
    fn cpus_and_affinity() {
        let n = available_cpus().unwrap();
        assert!(n >= 1);
        assert_eq!(set_cpu_affinity(CpuSet::MAX_CPU), Err(Errno::INVAL));
    }

    /// The cheap hint agrees with the system call once the thread is pinned to one CPU.
    #[test]
    fn cpu_hint_follows_pinning() {
        let n = available_cpus().unwrap();
        for cpu in 0..n.min(4) {
            if set_cpu_affinity(cpu).is_err() {
                continue;
            }
            assert_eq!(current_cpu(), cpu);
            assert_eq!(current_cpu_hint(), Some(cpu as u32));
        }
    }

    /// Registering no handlers succeeds and changes nothing.
    #[test]
    fn atfork_registers() {
        // SAFETY: no handlers, so nothing runs at fork time.
        assert_eq!(unsafe { pthread_atfork(None, None, None) }, Ok(()));
    }

    #[test]
    fn pidfd_of_self() {
        let fd = pidfd_open(getpid()).unwrap();
        assert!(crate::fd::is_cloexec(rustix::fd::AsFd::as_fd(&fd)).unwrap());
    }
}
