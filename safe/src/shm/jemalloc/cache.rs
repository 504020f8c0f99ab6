//! The per-thread front cache of a jemalloc lend pool: freed small blocks kept per thread, per
//! pool and per size class, so that the steady-state alloc + free pair makes no jemalloc call and
//! no atomic read-modify-write.
//!
//! jemalloc 5.3's `mallocx` / `sdallocx` leave their fast path whenever the flags are not 0 (an
//! explicit arena or tcache), and a pool's arena may not go through jemalloc's ordinary thread
//! cache (heap and pool pointers would mix), so every call into jemalloc for a pool is a slow one
//! (`MALLOCX_TCACHE_NONE`, under the arena's lock). This module sits in front of it, the way a
//! tcache does:
//!
//! - Block sizes are rounded up to [`class_size`]: 16-byte steps to 128, then 4 classes per
//!   doubling up to [`MAX_CACHED`] (jemalloc's own small classes). A block is always allocated with
//!   `mallocx(class_size)` and freed with `sdallocx(class_size)`, so a cached block serves any
//!   request of its class; the object header keeps the requested length.
//! - Each thread holds [`ENTRIES`]: one [`PoolCache`] per pool it used, found by the pool's key (a
//!   global counter, never reused), the last one used ([`LAST`]) checked first with a plain
//!   thread-local load. A `PoolCache` has one bounded LIFO bin per class (a fixed array); a full
//!   bin spills its older half back to jemalloc, an empty one is refilled with a quarter bin at
//!   once ([`refill_count`]), so that one thread's blocks lie together in jemalloc's slabs.
//! - Lifetimes: a pool may be dropped while other threads still cache its blocks, and threads may
//!   exit while the pool lives. The [registry](Registry) (a mutex) lists live pool keys. A thread's
//!   exit flushes its bins into the pools that are still live, under the lock; a pool's `Drop`
//!   removes its key under the lock before it destroys the arena, so a key found in the registry
//!   under the lock names a pool that is alive until the lock is released. Cached blocks of a dead
//!   pool are forgotten, never touched (the arena's destruction took their memory back).
//! - Generations: each `PoolCache` reserves [`GEN_BATCH`] generations at a time from the pool (one
//!   `fetch_add` per batch), so they stay unique per pool.
//! - Usage counters: each `PoolCache` owns one cache-padded [`Slot`] of the pool, written by that
//!   thread only (load + store), which `usage()` sums; when every slot is taken, the pool's last
//!   slot is shared and updated with read-modify-writes. A released slot keeps its values for the
//!   next thread that claims it.
//!
//! Nothing here runs in a fork child: the pool refuses to work there before it reaches the
//! cache, a thread's exit skips caches of pools of another process, and the registry's lock is
//! held across `fork` (`pthread_atfork`) so that a child never inherits it locked.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::JePool;

/// Largest block (header included) the cache holds; larger ones go to jemalloc every time.
pub(super) const MAX_CACHED: usize = 16 << 10;
/// Size classes up to [`MAX_CACHED`]: 8 of 16-byte steps to 128, then 4 per doubling to 16 KiB.
pub(super) const NUM_CLASSES: usize = 8 + 4 * 7;
/// Generations a `PoolCache` takes from its pool at once.
pub(super) const GEN_BATCH: u32 = 1 << 16;
/// Private counter slots per pool; one more is shared.
pub(super) const NUM_SLOTS: usize = 32;
/// Index of the shared slot (read-modify-write updates).
pub(super) const SHARED_SLOT: usize = NUM_SLOTS;

/// The class of a block of `size` bytes, `1 ..= MAX_CACHED`.
#[inline]
pub(super) fn class_of(size: usize) -> usize {
    debug_assert!((1..=MAX_CACHED).contains(&size));
    if size <= 128 {
        size.div_ceil(16) - 1
    } else {
        // `size - 1` lies in `[2^lg, 2^(lg+1))` with `lg` in 7..=13; its top three bits pick one
        // of the four classes of that doubling.
        let lg = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
        8 + (lg - 7) * 4 + (((size - 1) >> (lg - 2)) - 4)
    }
}

/// The block size of class `c`, `c < NUM_CLASSES`.
#[inline]
pub(super) const fn class_size(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let lg = (c - 8) / 4 + 7;
        (1 << lg) + (((c - 8) % 4 + 1) << (lg - 2))
    }
}

/// Blocks a bin of class `c` holds at most: about 128 KiB, between 8 and 64 blocks.
const fn bin_cap_of(c: usize) -> usize {
    let n = (128 << 10) / class_size(c);
    if n < 8 {
        8
    } else if n > 64 {
        64
    } else {
        n
    }
}

/// [`bin_cap_of`] for every class, so the hot path does not divide.
const BIN_CAP: [u16; NUM_CLASSES] = {
    let mut t = [0; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = bin_cap_of(c) as u16;
        c += 1;
    }
    t
};

/// Most blocks a refill takes from jemalloc beyond the one it returns.
pub(super) const REFILL_MAX: usize = 16;

/// Blocks a refill of class `c`'s (empty) bin takes beyond the one it returns: a quarter of
/// the bin, so that a thread's blocks of a class come from jemalloc together.
#[inline]
pub(super) fn refill_count(c: usize) -> usize {
    (BIN_CAP[c] as usize / 4).min(REFILL_MAX)
}

/// [`class_size`] for every class.
const CLASS_SIZE: [u32; NUM_CLASSES] = {
    let mut t = [0; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = class_size(c) as u32;
        c += 1;
    }
    t
};

/// The block size of class `c` from the table.
#[inline]
pub(super) fn class_bytes(c: usize) -> usize {
    CLASS_SIZE[c] as usize
}

/// One thread's usage counters for one pool (or the shared fallback), on its own cache lines so
/// that two threads never write the same line.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Slot {
    /// Objects allocated minus objects freed through this slot (two's complement).
    pub(super) objects: AtomicU64,
    /// Their payload bytes, likewise.
    pub(super) bytes: AtomicU64,
    /// Blocks taken from jemalloc minus blocks given back (cached blocks included).
    pub(super) held: AtomicU64,
    /// Whether a `PoolCache` owns the slot.
    claimed: AtomicBool,
}

impl Slot {
    /// Adds `delta` (two's complement) to `c`: a load and a store in a private slot.
    #[inline]
    pub(super) fn add(c: &AtomicU64, shared: bool, delta: u64) {
        if shared {
            c.fetch_add(delta, Ordering::Relaxed);
        } else {
            // Relaxed: only the owning thread writes a private slot; readers sum racy snapshots,
            // exact once the writers are quiescent (joined, or synchronised with otherwise).
            c.store(
                c.load(Ordering::Relaxed).wrapping_add(delta),
                Ordering::Relaxed,
            );
        }
    }
}

/// The pool's side of the cache: its key and counter slots.
pub(super) struct PoolShared {
    /// Never reused: names the pool in thread caches and the registry.
    pub(super) key: u64,
    pub(super) slots: Box<[Slot; NUM_SLOTS + 1]>,
}

impl PoolShared {
    pub(super) fn new() -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        PoolShared {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            slots: Box::new(std::array::from_fn(|_| Slot::default())),
        }
    }

    /// Claims a free private slot, or gives the shared one; `(slot, shared)`.
    fn claim_slot(&self) -> (*const Slot, bool) {
        for s in &self.slots[..NUM_SLOTS] {
            // SYNC POINT: Acquire pairs with the Release store in `release_slot`: we continue
            // from the previous owner's last counter values.
            if !s.claimed.load(Ordering::Relaxed)
                && s.claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return (s, false);
            }
        }
        (&self.slots[SHARED_SLOT], true)
    }

    /// Gives back a slot `claim_slot` returned (the shared one is never claimed).
    fn release_slot(&self, s: *const Slot) {
        // SAFETY: `s` came from `claim_slot` on `self`, which is alive.
        let s = unsafe { &*s };
        if !std::ptr::eq(s, &self.slots[SHARED_SLOT]) {
            // SYNC POINT: Release pairs with the Acquire CAS in `claim_slot`.
            s.claimed.store(false, Ordering::Release);
        }
    }

    /// Sums every slot: `(objects, bytes, held)`.
    pub(super) fn totals(&self) -> (u64, u64, u64) {
        self.slots.iter().fold((0, 0, 0), |(o, b, h), s| {
            (
                o.wrapping_add(s.objects.load(Ordering::Relaxed)),
                b.wrapping_add(s.bytes.load(Ordering::Relaxed)),
                h.wrapping_add(s.held.load(Ordering::Relaxed)),
            )
        })
    }
}

/// One thread's cache for one pool.
pub(super) struct PoolCache {
    key: u64,
    /// The pool; dereferenced only while `key` is live in the registry (thread exit) or while the
    /// caller holds `&JePool` with this key (every other use).
    pool: *const JePool,
    /// The pool's owner process: a fork child never flushes its parent's caches.
    pid: u32,
    /// Our counter slot in the pool (same validity as `pool`).
    slot: *const Slot,
    /// Whether `slot` is the pool's shared slot (read-modify-write updates).
    shared: bool,
    gen_next: u32,
    gen_end: u32,
    /// Free blocks per class, most recently freed last.
    bins: [Bin; NUM_CLASSES],
}

/// Most blocks a bin holds (its class's [`BIN_CAP`] may be lower).
const BIN_MAX: usize = 64;

/// A bounded LIFO of free blocks (addresses) of one class.
struct Bin {
    /// Blocks held, `<= BIN_MAX`; `items[..n]` are they.
    n: usize,
    items: [usize; BIN_MAX],
}

impl Bin {
    const EMPTY: Bin = Bin {
        n: 0,
        items: [0; BIN_MAX],
    };
}

impl PoolCache {
    /// Adds to our slot's counters (two's complement deltas).
    #[inline]
    pub(super) fn count(&self, pool: &JePool, objects: u64, bytes: u64) {
        debug_assert_eq!(self.key, pool.shared.key);
        // SAFETY: `pool` (the caller's, with our key) is alive, and so is its slot array.
        let s = unsafe { &*self.slot };
        Slot::add(&s.objects, self.shared, objects);
        Slot::add(&s.bytes, self.shared, bytes);
    }

    /// Adds to our slot's count of blocks held from jemalloc.
    #[inline]
    pub(super) fn count_held(&self, pool: &JePool, delta: u64) {
        debug_assert_eq!(self.key, pool.shared.key);
        // SAFETY: as in `count`.
        let s = unsafe { &*self.slot };
        Slot::add(&s.held, self.shared, delta);
    }

    /// A fresh generation, unique in the pool (until the 32-bit counter wraps).
    #[inline]
    pub(super) fn next_gen(&mut self, pool: &JePool) -> u32 {
        if self.gen_next == self.gen_end {
            self.gen_next = pool.reserve_gens(GEN_BATCH);
            self.gen_end = self.gen_next.wrapping_add(GEN_BATCH);
        }
        let g = self.gen_next;
        self.gen_next = g.wrapping_add(1);
        g
    }

    /// A cached block of class `c`, if any.
    #[inline]
    pub(super) fn pop(&mut self, c: usize) -> Option<usize> {
        let bin = &mut self.bins[c];
        if bin.n == 0 {
            return None;
        }
        bin.n -= 1;
        // `n < BIN_MAX` (a power of two), so the mask only spares a bounds check.
        Some(bin.items[bin.n & (BIN_MAX - 1)])
    }

    /// Caches block `p` of class `c`; `false` (and nothing cached) if the bin is full.
    #[inline]
    pub(super) fn push(&mut self, c: usize, p: usize) -> bool {
        let bin = &mut self.bins[c];
        if bin.n >= BIN_CAP[c] as usize {
            return false;
        }
        bin.items[bin.n & (BIN_MAX - 1)] = p;
        bin.n += 1;
        true
    }

    /// Takes the older half of class `c`'s bin out, handing each block to `free`.
    pub(super) fn spill_half(&mut self, c: usize, mut free: impl FnMut(usize)) -> u64 {
        let bin = &mut self.bins[c];
        let half = bin.n / 2;
        bin.items[..half].iter().for_each(|&p| free(p));
        bin.items.copy_within(half..bin.n, 0);
        bin.n -= half;
        half as u64
    }

    /// Empties every bin into `free(class, block)`.
    pub(super) fn drain_all(&mut self, mut free: impl FnMut(usize, usize)) {
        for (c, bin) in self.bins.iter_mut().enumerate() {
            bin.items[..bin.n].iter().for_each(|&p| free(c, p));
            bin.n = 0;
        }
    }
}

thread_local! {
    /// The part of a thread's cache the fast path reads: the key of the pool last used (0, no
    /// pool's key, when none) and its entry, which points into a `Box` held by [`ENTRIES`] and
    /// is valid while that entry is kept (an entry is removed only at thread exit or when its
    /// pool is dead, and this is reset first). A `Cell` of a `Copy` pair without a destructor,
    /// so that reading it is a plain thread-local load.
    static LAST: Cell<(u64, *mut PoolCache)> = const { Cell::new((0, std::ptr::null_mut())) };
    /// Set when this thread's entries were flushed at its exit: no cache any more.
    static GONE: Cell<bool> = const { Cell::new(false) };
}

/// A thread's caches, one per pool it used; flushed when the thread exits.
struct Entries(RefCell<Vec<Box<PoolCache>>>);

thread_local! {
    static ENTRIES: Entries = const { Entries(RefCell::new(Vec::new())) };
}

/// Runs `f` on this thread's cache for `pool`; `None` if there is none to be had (the thread is
/// exiting and its cache is gone).
///
/// `f` must not call back into `with`: it gets the one `&mut` to the entry. The callers pass
/// closures that run only this module's and `JePool`'s code and jemalloc's `mallocx` /
/// `sdallocx` (whose only callbacks, the extent hooks, touch no thread cache); the bins are fixed
/// arrays, so not even Rust's global allocator runs inside `f`.
#[inline]
pub(super) fn with<R>(pool: &JePool, f: impl FnOnce(&mut PoolCache) -> R) -> Option<R> {
    let (key, last) = LAST.get();
    let pc = if key == pool.shared.key {
        last
    } else {
        find_or_insert(pool)?
    };
    // SAFETY: `pc` points into a live entry (see `LAST`), and nothing else refers to it while
    // `f` runs (see above).
    Some(f(unsafe { &mut *pc }))
}

/// Points `LAST` at `pool`'s entry, made if missing.
#[cold]
fn find_or_insert(pool: &JePool) -> Option<*mut PoolCache> {
    if GONE.get() {
        return None;
    }
    let key = pool.shared.key;
    ENTRIES
        .try_with(|e| {
            let mut entries = e.0.try_borrow_mut().ok()?;
            LAST.set((0, std::ptr::null_mut()));
            let i = match entries.iter().position(|e| e.key == key) {
                Some(i) => i,
                None => {
                    // Forget the caches of pools that died meanwhile (their blocks went with
                    // their arenas).
                    if !entries.is_empty() {
                        let reg = registry();
                        entries.retain(|e| reg.live.contains(&e.key));
                    }
                    let (slot, shared) = pool.shared.claim_slot();
                    entries.push(Box::new(PoolCache {
                        key,
                        pool,
                        pid: pool.pid,
                        slot,
                        shared,
                        gen_next: 0,
                        gen_end: 0,
                        bins: [Bin::EMPTY; NUM_CLASSES],
                    }));
                    entries.len() - 1
                }
            };
            let pc: *mut PoolCache = &mut *entries[i];
            LAST.set((key, pc));
            Some(pc)
        })
        .ok()
        .flatten()
}

impl Drop for Entries {
    fn drop(&mut self) {
        // No entry is in use: the thread is exiting. Nothing may reach the entries after this.
        let _ = GONE.try_with(|g| g.set(true));
        let _ = LAST.try_with(|l| l.set((0, std::ptr::null_mut())));
        let entries = self.0.get_mut();
        if super::FORKED.load(Ordering::Relaxed) {
            let me = std::process::id();
            entries.retain(|e| e.pid == me);
        }
        if entries.is_empty() {
            return;
        }
        let reg = registry();
        for e in entries.iter_mut() {
            if reg.live.contains(&e.key) {
                // SAFETY: the key is live and we hold the registry's lock, so the pool's `Drop`
                // has not begun (it removes the key under this lock first): `e.pool` is alive
                // until we unlock.
                let pool = unsafe { &*e.pool };
                pool.flush(e);
                pool.shared.release_slot(e.slot);
            }
        }
    }
}

/// Keys of the live pools of this process.
pub(super) struct Registry {
    live: Vec<u64>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { live: Vec::new() });

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while the lock was held cannot leave the key list half-updated.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a new pool's key.
pub(super) fn register(key: u64) {
    registry().live.push(key);
}

/// Unregisters a pool's key: once this returns, no thread will touch the pool from its cache
/// again.
pub(super) fn unregister(key: u64) {
    registry().live.retain(|&k| k != key);
}

thread_local! {
    /// The registry's lock, held by the forking thread across `fork`.
    static FORK_HELD: RefCell<Option<MutexGuard<'static, Registry>>> = const { RefCell::new(None) };
}

/// `pthread_atfork` prepare: take the registry's lock so that the child does not inherit it held
/// by a thread that does not exist there. Must be registered after jemalloc's own handlers, so
/// that it runs before jemalloc's prepare (a flush holds this lock, then takes arena locks).
pub(super) extern "C" fn fork_prepare() {
    let _ = FORK_HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            *h = Some(registry());
        }
    });
}

/// `pthread_atfork` parent and child: release the lock `fork_prepare` took.
pub(super) extern "C" fn fork_release() {
    let _ = FORK_HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            drop(h.take());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_and_match_jemalloc() {
        let mut prev = 0;
        for c in 0..NUM_CLASSES {
            let s = class_size(c);
            assert!(s > prev, "classes increase");
            assert_eq!(class_of(s), c);
            assert_eq!(class_of(prev + 1), c);
            // SAFETY: nallocx only computes a size.
            let usable = unsafe { tikv_jemalloc_sys::nallocx(s, 0) };
            assert_eq!(usable, s, "class {c} is a jemalloc size class");
            prev = s;
        }
        assert_eq!(prev, MAX_CACHED);
        for size in 1..=MAX_CACHED {
            let c = class_of(size);
            assert!(class_size(c) >= size && (c == 0 || class_size(c - 1) < size));
        }
    }
}
