//! The per-thread front cache of a jemalloc lend pool: freed small blocks kept per thread, per
//! pool and per size class, so that the steady-state alloc + free pair makes no jemalloc call, no
//! atomic read-modify-write and no usage-counter update beyond one private byte count.
//!
//! jemalloc 5.3's `mallocx` / `sdallocx` leave their fast path whenever the flags are not 0 (an
//! explicit arena or tcache), and a pool's arena may not go through jemalloc's ordinary thread
//! cache (heap and pool pointers would mix), so every call into jemalloc for a pool is a slow one
//! (`MALLOCX_TCACHE_NONE`, under the arena's lock). This module sits in front of it, the way a
//! tcache does:
//!
//! - Block sizes are rounded up to [`class_size`]: 16-byte steps to 128, then 4 classes per
//!   doubling up to [`MAX_CACHED`] (jemalloc's own small classes), looked up in a table. A block
//!   is always allocated with `mallocx(class_size)` and freed with `sdallocx(class_size)`, so a
//!   cached block serves any request of its class; the object header keeps the requested length.
//! - A [`ThreadCache`] has one bounded LIFO bin per class (fixed arrays); a full bin spills its
//!   older half back to jemalloc, an empty one is refilled with a quarter bin at once
//!   ([`refill_count`]), so that one thread's blocks lie together in jemalloc's slabs.
//! - The caches belong to the pool ([`PoolShared`]: up to [`MAX_CACHES`], made on first use and
//!   freed with the pool), and a thread claims one per pool it allocates or frees in. That lets
//!   `usage()` read every cache's counters without a lock, and lets a cache outlive the thread
//!   that used it, for the next thread to claim. A thread finds its cache through [`LAST`] (the
//!   pool key and cache it used last, a plain thread-local load) or its list of [`Entry`]s.
//!   Threads beyond [`MAX_CACHES`] go to jemalloc on every call.
//! - Usage without per-operation object counts: a cache counts the blocks it took from jemalloc
//!   and gave back (`held`, changed only on refill, spill and flush) and the payload bytes of the
//!   objects allocated minus freed through it (`bytes`, one private load and store per
//!   operation); the objects in use are the blocks held minus the blocks sitting in bins. Blocks
//!   handled without a cache are counted in the pool's shared counters (read-modify-writes).
//!   The sums are exact whenever no thread is allocating or freeing in the pool.
//! - Lifetimes: a pool may be dropped while threads still have its cache in their lists, and
//!   threads may exit while the pool lives. The [registry](Registry) (a mutex) lists live pool
//!   keys (a global counter, never reused). A thread's exit flushes its caches of pools that are
//!   still live back to jemalloc and releases them, under the lock; a pool's `Drop` removes its
//!   key under the lock before it destroys the arena, so a key found in the registry under the
//!   lock names a pool that is alive until the lock is released. Entries of a dead pool are
//!   forgotten, never touched (its caches and blocks went with it).
//! - Generations: each cache reserves [`GEN_BATCH`] generations at a time from the pool (one
//!   `fetch_add` per batch), so they stay unique per pool.
//!
//! Nothing here runs in a fork child: the pool refuses to work there before it reaches the
//! cache, a thread's exit skips entries of pools of another process, and the registry's lock is
//! held across `fork` (`pthread_atfork`) so that a child never inherits it locked.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use flowipc_core::CachePadded;

use super::hooks::FORKED;
use super::JePool;

/// Largest block (header included) the cache holds; larger ones go to jemalloc every time.
pub(super) const MAX_CACHED: usize = 16 << 10;
/// Size classes up to [`MAX_CACHED`]: 8 of 16-byte steps to 128, then 4 per doubling to 16 KiB.
pub(super) const NUM_CLASSES: usize = 8 + 4 * 7;
/// Generations a cache takes from its pool at once.
pub(super) const GEN_BATCH: u32 = 1 << 16;
/// Thread caches a pool has at most; threads beyond these go to jemalloc on every call.
pub(super) const MAX_CACHES: usize = 64;

/// The class of a block of `size` bytes, `1 ..= MAX_CACHED`, from [`CLASS_OF`].
#[inline]
pub(super) fn class_of(size: usize) -> usize {
    debug_assert!((1..=MAX_CACHED).contains(&size));
    CLASS_OF[(size - 1) >> 4] as usize
}

/// Every class boundary is a multiple of 16, so sizes `16 i + 1 ..= 16 (i + 1)` share a class:
/// entry `i` is that class.
const CLASS_OF: [u8; MAX_CACHED / 16] = {
    let mut t = [0; MAX_CACHED / 16];
    let mut i = 0;
    while i < t.len() {
        t[i] = compute_class_of((i + 1) * 16) as u8;
        i += 1;
    }
    t
};

/// The class of a block of `size` bytes, `1 ..= MAX_CACHED`, computed (for [`CLASS_OF`] and
/// other constants).
pub(super) const fn compute_class_of(size: usize) -> usize {
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

/// Most blocks a bin holds (its class's [`BIN_CAP`] may be lower).
const BIN_MAX: usize = 64;

/// One cache of a pool, claimed by one thread at a time: its bins and counters.
///
/// The counters are atomics because `usage()` reads them from any thread; only the claiming
/// thread writes them (a load and a store, no read-modify-write). The bins' blocks and the
/// generation batch are touched by the claiming thread only, through [`Owned`]; a claim is
/// handed from one thread to the next with a Release store and an Acquire CAS of `claimed`.
#[repr(C, align(128))]
pub(super) struct ThreadCache {
    /// Payload bytes allocated minus freed through this cache (two's complement).
    bytes: AtomicU64,
    /// Blocks taken from jemalloc minus blocks given back through this cache (two's complement).
    held: AtomicU64,
    /// Blocks in each class's bin, `<= BIN_CAP[c]`; `items[c][..n[c]]` are they.
    n: [AtomicU16; NUM_CLASSES],
    /// The next generation of the batch, and its end.
    gen_next: UnsafeCell<u32>,
    gen_end: UnsafeCell<u32>,
    /// Whether a thread holds this cache.
    claimed: AtomicBool,
    /// Free blocks (addresses) per class, most recently freed last.
    items: UnsafeCell<[[usize; BIN_MAX]; NUM_CLASSES]>,
}

// SAFETY: the `UnsafeCell`s are accessed only by the thread that claimed the cache (see
// `Owned`); everything other threads read is atomic.
unsafe impl Sync for ThreadCache {}

impl ThreadCache {
    fn new_claimed() -> Box<Self> {
        Box::new(ThreadCache {
            bytes: AtomicU64::new(0),
            held: AtomicU64::new(0),
            n: [const { AtomicU16::new(0) }; NUM_CLASSES],
            gen_next: UnsafeCell::new(0),
            gen_end: UnsafeCell::new(0),
            claimed: AtomicBool::new(true),
            items: UnsafeCell::new([[0; BIN_MAX]; NUM_CLASSES]),
        })
    }

    /// Blocks sitting in the bins.
    fn cached(&self) -> u64 {
        self.n
            .iter()
            .map(|n| u64::from(n.load(Ordering::Relaxed)))
            .sum()
    }
}

/// Adds `delta` (two's complement) to a counter only this thread writes.
#[inline]
fn add_private(c: &AtomicU64, delta: u64) {
    // Relaxed: readers sum racy snapshots, exact once the writers are quiescent (joined, or
    // synchronised with otherwise).
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(delta),
        Ordering::Relaxed,
    );
}

/// The calling thread's claim on a [`ThreadCache`]: the only way to touch its bins. Not `Send`:
/// it stands for this thread's claim. At most one is in use at a time (the callers of [`fast`]
/// and [`with`] never hold two), so the one `&mut` it hands out to a bin is unique.
pub(super) struct Owned<'a>(&'a ThreadCache, PhantomData<*const ()>);

impl Owned<'_> {
    /// Adds to the cache's payload byte count (two's complement).
    #[inline]
    pub(super) fn add_bytes(&mut self, delta: u64) {
        add_private(&self.0.bytes, delta);
    }

    /// Adds to the cache's count of blocks held from jemalloc (two's complement).
    #[inline]
    pub(super) fn add_held(&mut self, delta: u64) {
        add_private(&self.0.held, delta);
    }

    /// A fresh generation, unique in the pool (until the 32-bit counter wraps).
    #[inline]
    pub(super) fn next_gen(&mut self, pool: &JePool) -> u32 {
        // SAFETY: only the claiming thread (ours, see `Owned`) touches the batch.
        let (next, end) = unsafe { (&mut *self.0.gen_next.get(), &mut *self.0.gen_end.get()) };
        if *next == *end {
            *next = pool.reserve_gens(GEN_BATCH);
            *end = next.wrapping_add(GEN_BATCH);
        }
        let g = *next;
        *next = g.wrapping_add(1);
        g
    }

    /// Class `c`'s bin.
    #[inline]
    fn bin(&mut self, c: usize) -> &mut [usize; BIN_MAX] {
        // SAFETY: only the claiming thread (ours) touches the bins, and `&mut self` is its one
        // way in, so this is the only reference to the array.
        unsafe { &mut (*self.0.items.get())[c] }
    }

    /// A cached block of class `c`, if any.
    #[inline]
    pub(super) fn pop(&mut self, c: usize) -> Option<usize> {
        let n = self.0.n[c].load(Ordering::Relaxed) as usize;
        if n == 0 {
            return None;
        }
        self.0.n[c].store(n as u16 - 1, Ordering::Relaxed);
        // `n - 1 < BIN_MAX` (a power of two), so the mask only spares a bounds check.
        Some(self.bin(c)[(n - 1) & (BIN_MAX - 1)])
    }

    /// Whether class `c`'s bin has room for one more block.
    #[inline]
    pub(super) fn has_room(&self, c: usize) -> bool {
        self.0.n[c].load(Ordering::Relaxed) < BIN_CAP[c]
    }

    /// Caches block `p` of class `c`; `false` (and nothing cached) if the bin is full.
    #[inline]
    pub(super) fn push(&mut self, c: usize, p: usize) -> bool {
        if !self.has_room(c) {
            return false;
        }
        self.push_unchecked(c, p);
        true
    }

    /// Caches block `p` of class `c`, whose bin [has room](Self::has_room).
    #[inline]
    pub(super) fn push_unchecked(&mut self, c: usize, p: usize) {
        let n = self.0.n[c].load(Ordering::Relaxed);
        debug_assert!(n < BIN_CAP[c]);
        // The mask keeps a broken caller inside the bin (it would lose blocks, not memory safety).
        self.bin(c)[n as usize & (BIN_MAX - 1)] = p;
        self.0.n[c].store(n + 1, Ordering::Relaxed);
    }

    /// Takes the older half of class `c`'s bin out, handing each block to `free`; returns how
    /// many.
    pub(super) fn spill_half(&mut self, c: usize, mut free: impl FnMut(usize)) -> u64 {
        let n = self.0.n[c].load(Ordering::Relaxed) as usize;
        let half = n / 2;
        let bin = self.bin(c);
        bin[..half].iter().for_each(|&p| free(p));
        bin.copy_within(half..n, 0);
        self.0.n[c].store((n - half) as u16, Ordering::Relaxed);
        half as u64
    }

    /// Empties every bin into `free(class, block)`; returns how many blocks.
    pub(super) fn drain_all(&mut self, mut free: impl FnMut(usize, usize)) -> u64 {
        let mut total = 0;
        for c in 0..NUM_CLASSES {
            let n = self.0.n[c].load(Ordering::Relaxed) as usize;
            self.bin(c)[..n].iter().for_each(|&p| free(c, p));
            self.0.n[c].store(0, Ordering::Relaxed);
            total += n as u64;
        }
        total
    }
}

/// Counters of blocks handled without a cache (large blocks, threads without one), updated
/// with read-modify-writes.
#[derive(Default)]
pub(super) struct Uncached {
    bytes: AtomicU64,
    held: AtomicU64,
}

impl Uncached {
    /// Counts a block taken from jemalloc (`taken`) or given back, for an object of `len` bytes.
    pub(super) fn count(&self, taken: bool, len: u64) {
        let (held, bytes) = if taken {
            (1, len)
        } else {
            (1u64.wrapping_neg(), len.wrapping_neg())
        };
        self.held.fetch_add(held, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The pool's side of the cache: its key, its thread caches and the uncached counters.
pub(super) struct PoolShared {
    /// Never reused: names the pool in threads' entries and the registry.
    pub(super) key: u64,
    /// Caches made so far (null: not yet); each lives until the pool is dropped.
    caches: [AtomicPtr<ThreadCache>; MAX_CACHES],
    /// On lines of their own, away from the key that every fast path reads.
    pub(super) uncached: CachePadded<Uncached>,
}

impl PoolShared {
    pub(super) fn new() -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        PoolShared {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            caches: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CACHES],
            uncached: CachePadded::new(Uncached::default()),
        }
    }

    /// Claims a free cache (made if need be), or `None` when all [`MAX_CACHES`] are taken.
    fn claim(&self) -> Option<*const ThreadCache> {
        for slot in &self.caches {
            // SYNC POINT: Acquire pairs with the AcqRel CAS that published the cache below.
            let mut tc = slot.load(Ordering::Acquire);
            if tc.is_null() {
                let fresh = Box::into_raw(ThreadCache::new_claimed());
                // SYNC POINT: AcqRel: Release publishes the new cache to other claimers and to
                // `totals`; Acquire (on failure) pairs with the winner's publication.
                match slot.compare_exchange(
                    ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(fresh),
                    Err(now) => {
                        // SAFETY: `fresh` came from `Box::into_raw` above and was never shared.
                        drop(unsafe { Box::from_raw(fresh) });
                        tc = now;
                    }
                }
            }
            // SAFETY: non-null slots point at caches that live as long as `self`.
            let c = unsafe { &*tc };
            // SYNC POINT: Acquire pairs with the Release store in `release`: we continue from the
            // previous holder's bins and counters.
            if !c.claimed.load(Ordering::Relaxed)
                && c.claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(tc);
            }
        }
        None
    }

    /// Gives back a cache `claim` returned.
    fn release(&self, tc: *const ThreadCache) {
        // SAFETY: `tc` came from `claim` on `self`, which is alive.
        let c = unsafe { &*tc };
        // SYNC POINT: Release pairs with the Acquire CAS in `claim`.
        c.claimed.store(false, Ordering::Release);
    }

    /// The caches made so far.
    fn caches(&self) -> impl Iterator<Item = &ThreadCache> {
        self.caches.iter().filter_map(|slot| {
            // SAFETY: non-null slots point at caches that live as long as `self`; Acquire
            // pairs with their publication in `claim`.
            unsafe { slot.load(Ordering::Acquire).as_ref() }
        })
    }

    /// Caches made so far.
    #[cfg(test)]
    pub(super) fn caches_made(&self) -> usize {
        self.caches().count()
    }

    /// Sums every counter: `(objects in use, their payload bytes, blocks held from jemalloc)`.
    pub(super) fn totals(&self) -> (u64, u64, u64) {
        let (mut bytes, mut held, mut cached) = (
            self.uncached.bytes.load(Ordering::Relaxed),
            self.uncached.held.load(Ordering::Relaxed),
            0u64,
        );
        for c in self.caches() {
            bytes = bytes.wrapping_add(c.bytes.load(Ordering::Relaxed));
            held = held.wrapping_add(c.held.load(Ordering::Relaxed));
            cached += c.cached();
        }
        (held.wrapping_sub(cached), bytes, held)
    }
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        for slot in &mut self.caches {
            let tc = *slot.get_mut();
            if !tc.is_null() {
                // SAFETY: made by `Box::into_raw` in `claim`; the pool is going, and with it
                // every way to reach the cache (its key left the registry first).
                drop(unsafe { Box::from_raw(tc) });
            }
        }
    }
}

thread_local! {
    /// The part of a thread's cache list the fast path reads: the key of the pool last used (0,
    /// no pool's key, when none) and the cache the thread holds in it, valid while that pool is
    /// (the caller's `&JePool` with this key proves it). A `Cell` of a `Copy` pair without a
    /// destructor, so that reading it is a plain thread-local load.
    static LAST: Cell<(u64, *const ThreadCache)> = const { Cell::new((0, ptr::null())) };
    /// Set when this thread's entries were flushed at its exit: no cache any more.
    static GONE: Cell<bool> = const { Cell::new(false) };
}

/// A cache this thread holds in one pool.
struct Entry {
    key: u64,
    /// The pool; dereferenced only while `key` is live in the registry (thread exit).
    pool: *const JePool,
    /// The pool's owner process: a fork child never flushes its parent's caches.
    pid: u32,
    /// Our claim in the pool (same validity as `pool`).
    tc: *const ThreadCache,
}

/// A thread's caches, one per pool it used; flushed and released when the thread exits.
struct Entries(RefCell<Vec<Entry>>);

thread_local! {
    static ENTRIES: Entries = const { Entries(RefCell::new(Vec::new())) };
}

/// This thread's cache for `pool` if it is the one it used last: the fast path's lookup, one
/// thread-local load and a compare. `None` sends the caller to its slow path, which uses
/// [`with`]. Always `None` in a fork child until it uses a pool of its own (the child handler
/// cleared `LAST`, and [`find_or_claim`] refuses pools of another process).
#[inline]
pub(super) fn fast(pool: &JePool) -> Option<Owned<'_>> {
    let (key, tc) = LAST.get();
    // SAFETY: a `LAST` naming `pool`'s key holds this thread's claim in `pool`, alive as long as
    // `pool` is.
    (key == pool.shared.key).then(|| Owned(unsafe { &*tc }, PhantomData))
}

/// Runs `f` on this thread's cache for `pool`; `None` if there is none to be had (the thread is
/// exiting and its caches are gone, the pool has no cache left, or this is a fork child of the
/// pool's owner).
///
/// `f` must not call back into `with`: it gets the one [`Owned`] of the cache. The callers pass
/// closures that run only this module's and `JePool`'s code and jemalloc's `mallocx` /
/// `sdallocx` (whose only callbacks, the extent hooks, touch no cache).
#[inline]
pub(super) fn with<R>(pool: &JePool, f: impl FnOnce(&mut Owned<'_>) -> R) -> Option<R> {
    let (key, last) = LAST.get();
    let tc = if key == pool.shared.key {
        last
    } else {
        find_or_claim(pool)?
    };
    // SAFETY: `tc` is this thread's claim in `pool` (see `LAST`), alive as long as `pool` is,
    // and no other `Owned` of it exists while `f` runs (see above).
    Some(f(&mut Owned(unsafe { &*tc }, PhantomData)))
}

/// Points `LAST` at this thread's cache in `pool`, claimed if it has none yet.
#[cold]
fn find_or_claim(pool: &JePool) -> Option<*const ThreadCache> {
    if GONE.get() || (FORKED.load(Ordering::Relaxed) && pool.pid != std::process::id()) {
        return None;
    }
    let key = pool.shared.key;
    ENTRIES
        .try_with(|e| {
            let mut entries = e.0.try_borrow_mut().ok()?;
            LAST.set((0, ptr::null()));
            let tc = match entries.iter().find(|e| e.key == key) {
                Some(e) => e.tc,
                None => {
                    let tc = pool.shared.claim()?;
                    // Forget the entries of pools that died meanwhile (their caches went with
                    // them).
                    if !entries.is_empty() {
                        let reg = registry();
                        entries.retain(|e| reg.live.contains(&e.key));
                    }
                    entries.push(Entry {
                        key,
                        pool,
                        pid: pool.pid,
                        tc,
                    });
                    tc
                }
            };
            LAST.set((key, tc));
            Some(tc)
        })
        .ok()
        .flatten()
}

impl Drop for Entries {
    fn drop(&mut self) {
        // No cache is in use: the thread is exiting. Nothing may reach the entries after this.
        let _ = GONE.try_with(|g| g.set(true));
        let _ = LAST.try_with(|l| l.set((0, ptr::null())));
        let entries = self.0.get_mut();
        if FORKED.load(Ordering::Relaxed) {
            let me = std::process::id();
            entries.retain(|e| e.pid == me);
        }
        if entries.is_empty() {
            return;
        }
        let reg = registry();
        for e in entries.iter() {
            if reg.live.contains(&e.key) {
                // SAFETY: the key is live and we hold the registry's lock, so the pool's `Drop`
                // has not begun (it removes the key under this lock first): `e.pool` and its
                // caches are alive until we unlock; `e.tc` is our claim.
                let (pool, tc) = unsafe { (&*e.pool, &*e.tc) };
                pool.flush(&mut Owned(tc, PhantomData));
                pool.shared.release(e.tc);
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

/// `pthread_atfork` child: forget the cache the forking thread used last, so that the child's
/// next pool call takes the slow path, whose checks refuse the parent's pools.
pub(super) fn fork_child_forget() {
    let _ = LAST.try_with(|l| l.set((0, ptr::null())));
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
