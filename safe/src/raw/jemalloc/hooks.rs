//! The C callbacks of a jemalloc lend pool: the extent hooks jemalloc allocates the pool's
//! memory through, and the `pthread_atfork` handlers that keep a fork child away from the pool.
//!
//! # Algorithm
//!
//! The owner creates a jemalloc arena (`arenas.create`) with these extent hooks. They carve
//! extents from the owner's one mapping of the memfd with a bump pointer (a CAS loop on
//! [`Hooks`]' `next`): an extent is never handed out twice, never given back (`dalloc` opts out,
//! so jemalloc keeps it and reuses it itself), never decommitted or purged, and may be split and
//! merged freely because every extent lies in the one mapping. Fresh memfd pages are zero, so
//! `alloc` reports its extents zeroed and committed.
//!
//! # Invariants
//!
//! - A [`Hooks`] outlives the arena it is registered with: made by [`Hooks::leak`], freed by
//!   [`Hooks::free`] only after `arena.<i>.destroy` succeeded (or `arenas.create` failed).
//! - `table` is the first field of the `#[repr(C)]` [`Hooks`] (checked at compile time), so the
//!   pointer jemalloc passes back to a hook is the struct's.
//! - The bump only partitions the mapping: Relaxed suffices, jemalloc orders its own use of
//!   the extents. Every extent lies in `[POOL_HEADER, len)` of the mapping.
//! - [`FORKED`] is set in a fork child before any of its code runs; with the owner's pid it
//!   keeps the child off the pool (jemalloc's metadata lives in the pool, shared with the parent).
//!   The handlers go through `flowipc_sys::process::pthread_atfork`, the crate's only route to C.
//!
//! Part of `raw`, the module that may use `unsafe`: the hooks are C callbacks over raw memory.

use std::ffi::{c_uint, c_void};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use flowipc_sys::process;
use tikv_jemalloc_sys as je;

use super::cache;

/// The hooks table jemalloc calls back with, followed by the state the callbacks need; jemalloc
/// hands the `extent_hooks_t` pointer back to every hook, and since it is the first field of this
/// `#[repr(C)]` struct the hook can recover the rest.
#[repr(C)]
pub(super) struct Hooks {
    /// What jemalloc calls: first, so that its pointer is the struct's.
    table: je::extent_hooks_t,
    /// The mapping's first byte (as an address).
    base: usize,
    /// The mapping's length.
    len: usize,
    /// Offset of the first byte never handed out.
    next: AtomicUsize,
}

impl Hooks {
    /// Hooks that carve extents from the `len` bytes mapped at `base`, from offset `start` on
    /// (the bytes before it are the pool header's). Leaked: jemalloc keeps the pointer until the
    /// arena is destroyed, and the owner frees it then with [`Hooks::free`].
    pub(super) fn leak(base: usize, len: usize, start: usize) -> NonNull<Hooks> {
        let table = je::extent_hooks_t {
            alloc: Some(hook_alloc),
            dalloc: Some(hook_dalloc),
            destroy: Some(hook_destroy),
            commit: Some(hook_commit),
            decommit: Some(hook_keep),
            purge_lazy: Some(hook_keep),
            purge_forced: Some(hook_keep),
            split: Some(hook_split),
            merge: Some(hook_merge),
        };
        NonNull::from(Box::leak(Box::new(Hooks {
            table,
            base,
            len,
            next: AtomicUsize::new(start),
        })))
    }

    /// Frees hooks made by [`Hooks::leak`].
    ///
    /// # Safety
    ///
    /// `hooks` came from [`Hooks::leak`], is freed once, and jemalloc no longer holds it (the
    /// arena it was registered with was never created or has been destroyed).
    pub(super) unsafe fn free(hooks: NonNull<Hooks>) {
        // SAFETY: per the contract, a leaked box nobody uses any more.
        drop(unsafe { Box::from_raw(hooks.as_ptr()) });
    }
}

mod checks {
    use std::mem::offset_of;

    use static_assertions::const_assert_eq;

    use super::Hooks;

    // `hooks` recovers a `&Hooks` from the table pointer jemalloc passes back.
    const_assert_eq!(offset_of!(Hooks, table), 0);
}

/// Recovers our state from jemalloc's pointer.
///
/// # Safety
///
/// `h` must be the `table` field of a live `Hooks`: jemalloc passes back exactly the pointer given to
/// `arenas.create`, which points at a boxed `Hooks` that outlives the arena.
unsafe fn hooks<'a>(h: *mut je::extent_hooks_t) -> &'a Hooks {
    // SAFETY: per the function's contract; `table` is at offset 0 of the `#[repr(C)]` `Hooks`.
    unsafe { &*h.cast::<Hooks>() }
}

unsafe extern "C" fn hook_alloc(
    h: *mut je::extent_hooks_t,
    new_addr: *mut c_void,
    size: usize,
    align: usize,
    zero: *mut bool,
    commit: *mut bool,
    _arena: c_uint,
) -> *mut c_void {
    // SAFETY: jemalloc passes the pointer we registered.
    let hk = unsafe { hooks(h) };
    if !new_addr.is_null() || !align.is_power_of_two() {
        return ptr::null_mut();
    }
    let mut cur = hk.next.load(Ordering::Relaxed);
    loop {
        let start = (hk.base + cur).next_multiple_of(align) - hk.base;
        let Some(end) = start.checked_add(size).filter(|&e| e <= hk.len) else {
            return ptr::null_mut();
        };
        // Relaxed: the bump only partitions the mapping; jemalloc orders its own use of extents.
        match hk
            .next
            .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                // SAFETY: jemalloc passes valid out-pointers. Fresh memfd pages are zero and never
                // handed out twice; the shared mapping is always committed.
                unsafe {
                    *zero = true;
                    *commit = true;
                }
                return (hk.base + start) as *mut c_void;
            }
            Err(now) => cur = now,
        }
    }
}

/// Declares a hook that does nothing but answer `$ret` (jemalloc's hooks return `false` for
/// success and `true` to opt out), with the arguments jemalloc passes after the table pointer.
macro_rules! answer_hook {
    ($(#[$doc:meta])* $name:ident($($arg:ty),*) -> $ret_ty:ty { $ret:expr }) => {
        $(#[$doc])*
        unsafe extern "C" fn $name(_: *mut je::extent_hooks_t, $(_: $arg),*) -> $ret_ty {
            $ret
        }
    };
}

answer_hook!(
    /// Opt out of deallocation: jemalloc retains the extent and reuses it.
    hook_dalloc(*mut c_void, usize, bool, c_uint) -> bool { true }
);
/// Nothing to do: the mapping goes when the pool does.
unsafe extern "C" fn hook_destroy(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: bool,
    _: c_uint,
) {
}

answer_hook!(
    /// Always committed: success.
    hook_commit(*mut c_void, usize, usize, usize, c_uint) -> bool { false }
);
answer_hook!(
    /// Decommit and purge: opt out (the memory stays as it is).
    hook_keep(*mut c_void, usize, usize, usize, c_uint) -> bool { true }
);
answer_hook!(
    /// Splitting an extent of our mapping needs no work: success.
    hook_split(*mut c_void, usize, usize, usize, bool, c_uint) -> bool { false }
);
answer_hook!(
    /// Merging two adjacent extents of our mapping needs no work: success.
    hook_merge(*mut c_void, usize, *mut c_void, usize, bool, c_uint) -> bool { false }
);

/// Set in a fork child (by the child handler), where the pool must not be touched.
pub(super) static FORKED: AtomicBool = AtomicBool::new(false);

/// Installs the fork handlers. Called after jemalloc is initialised (it registers its own
/// handlers then), so that ours are registered later and prepare runs first: the registry's lock
/// is taken before jemalloc's locks, the order a thread-exit flush takes them in.
pub(super) fn install_fork_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers only store to an atomic, clear a thread-local, and lock or unlock
        // the registry's mutex (a lock the forking thread can always take: it never forks while
        // holding it; the child releases only the guard its own prepare took); none unwinds.
        let registered = unsafe {
            process::pthread_atfork(
                Some(cache::fork_prepare),
                Some(cache::fork_release),
                Some(fork_child),
            )
        };
        // Fails only with ENOMEM. The pool works without the handlers, as it always has; a fork
        // child of this process would then not be kept off it.
        let _ = registered;
    });
}

/// The child handler: mark the process as a fork child, forget the forking thread's cache, and
/// release the registry's lock taken by `prepare`.
extern "C" fn fork_child() {
    FORKED.store(true, Ordering::Relaxed);
    cache::fork_child_forget();
    cache::fork_release();
}
