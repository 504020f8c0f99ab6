//! Allocator cost: nanoseconds per alloc+free pair of 64 B and 4 KiB objects, with one thread and
//! with two threads allocating from the same allocator at once.
//!
//! Each thread keeps a window of [`WINDOW`] live objects and replaces the oldest on every step (free
//! it, allocate a new one), so that the free lists are exercised rather than one block bouncing.
//! A run is `pairs` steps per thread; the figure is wall time / `pairs` (for two threads, the time
//! each thread takes for its own pairs while the other runs), and the reported `p50_ns` is the
//! median over [`RUNS`] rounds, each of which runs every system once (see [`run`]).
//!
//! Systems:
//! - `flowipc-arena`: the lock-free core allocator (`flowipc_core::arena`) over a sealed memfd,
//!   each bench thread through its own `ArenaCache` (one RMW per pair in the steady state).
//! - `flowipc-arena-jemalloc`: the jemalloc lend provider (`LendPool::create_jemalloc`) at its own
//!   level: `alloc_scoped` + drop, i.e. a block from the pool's per-thread front cache (refilled
//!   by `mallocx` in the pool's jemalloc arena), the 16-byte object header (state word with
//!   generation and refcount, length, magic) and the release of the last reference (header
//!   checks, state store, the block back to the front cache). Only with the `jemalloc-shm`
//!   feature.
//! - `flowipc-lend-object`: the same pool through the full safe object, `LendPool::alloc` + drop:
//!   the above plus the `Arc` on the pool that an `ArenaObject` holds (one atomic increment and
//!   one decrement per object; with two threads, both bump the same counter).
//!
//!   Both jemalloc-pool systems run their 2-thread rows on two threads of the pool's process
//!   (through `PoolAllocator`); each thread has its own front cache of the pool.
//! - `jemalloc-heap`: `mallocx` / `sdallocx` with jemalloc's default thread cache.
//! - `system-heap`: glibc `malloc` / `free` through `std::alloc::System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::time::Instant;

use flowipc_core::arena::{Arena, ArenaCache, Offset, DEFAULT_SPAN_SHIFT};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::AsFd;

use crate::report::Row;

/// Live objects each thread keeps.
const WINDOW: usize = 64;
/// Rounds of runs; the median is reported.
const RUNS: usize = 9;
/// Object sizes measured.
const SIZES: [usize; 2] = [64, 4096];

/// One allocator as the loop sees it: each bench thread gets its own [`ThreadAlloc`] handle (a
/// thread cache, or just a reference), whose `alloc` returns a token that `free` takes back.
trait Allocator: Sync {
    type Thread<'a>: ThreadAlloc
    where
        Self: 'a;
    fn thread(&self) -> Self::Thread<'_>;
}

/// A bench thread's handle on an allocator.
trait ThreadAlloc {
    type Token;
    fn alloc(&mut self, size: usize) -> Self::Token;
    fn free(&mut self, t: Self::Token, size: usize);
}

/// Heap allocators need no per-thread state: the handle is the allocator.
impl<A: HeapAlloc> ThreadAlloc for &A {
    type Token = Ptr;
    fn alloc(&mut self, size: usize) -> Ptr {
        HeapAlloc::alloc(*self, size)
    }
    fn free(&mut self, t: Ptr, size: usize) {
        HeapAlloc::free(*self, t, size)
    }
}

/// The core allocator over a memfd mapping.
struct CoreArena {
    arena: Arena,
    _map: Mapping,
}

impl CoreArena {
    fn new(len: usize) -> Self {
        let fd =
            flowipc_sys::memfd::create_sealed(c"flowipc-bench-arena", len as u64).expect("memfd");
        let map = Mapping::map(fd.as_fd(), 0, len, Access::ReadWrite).expect("mmap");
        let base = NonNull::new(map.as_mut_ptr().expect("writable")).expect("non-null");
        // SAFETY: the mapping is page-aligned, `len` bytes, read-write, and outlives the arena (both
        // live in `CoreArena`, the arena field dropped first); nothing else uses it.
        let arena = unsafe { Arena::init(base, len, DEFAULT_SPAN_SHIFT) }.expect("arena init");
        CoreArena { arena, _map: map }
    }
}

impl Allocator for CoreArena {
    type Thread<'a> = ArenaCache<'a>;
    fn thread(&self) -> ArenaCache<'_> {
        ArenaCache::new(&self.arena)
    }
}

impl ThreadAlloc for ArenaCache<'_> {
    type Token = Offset;
    fn alloc(&mut self, size: usize) -> Offset {
        ArenaCache::alloc(self, size, 16).expect("arena alloc")
    }
    fn free(&mut self, t: Offset, _size: usize) {
        ArenaCache::free(self, t).expect("arena free");
    }
}

/// A heap allocator (no per-thread state of ours).
trait HeapAlloc: Sync {
    fn alloc(&self, size: usize) -> Ptr;
    fn free(&self, t: Ptr, size: usize);
}

/// A heap pointer, sendable between the bench threads (each token is used by one thread only).
struct Ptr(NonNull<u8>);
// SAFETY: a `Ptr` is an exclusively owned heap block; moving it to another thread is fine.
unsafe impl Send for Ptr {}

struct SystemHeap;

impl Allocator for SystemHeap {
    type Thread<'a> = &'a SystemHeap;
    fn thread(&self) -> &SystemHeap {
        self
    }
}

impl HeapAlloc for SystemHeap {
    fn alloc(&self, size: usize) -> Ptr {
        let layout = Layout::from_size_align(size, 16).expect("layout");
        // SAFETY: non-zero size.
        Ptr(NonNull::new(unsafe { System.alloc(layout) }).expect("malloc"))
    }
    fn free(&self, t: Ptr, size: usize) {
        let layout = Layout::from_size_align(size, 16).expect("layout");
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(t.0.as_ptr(), layout) }
    }
}

struct JemallocHeap;

impl Allocator for JemallocHeap {
    type Thread<'a> = &'a JemallocHeap;
    fn thread(&self) -> &JemallocHeap {
        self
    }
}

impl HeapAlloc for JemallocHeap {
    fn alloc(&self, size: usize) -> Ptr {
        // SAFETY: plain allocation with default flags (16-byte alignment for these sizes).
        Ptr(NonNull::new(unsafe { tikv_jemalloc_sys::mallocx(size, 0) }.cast()).expect("mallocx"))
    }
    fn free(&self, t: Ptr, size: usize) {
        // SAFETY: allocated by `mallocx(size, 0)` above.
        unsafe { tikv_jemalloc_sys::sdallocx(t.0.as_ptr().cast(), size, 0) }
    }
}

/// `pairs` window steps on one thread; returns ns per pair.
fn steps<A: Allocator>(a: &A, size: usize, pairs: usize) -> f64 {
    let mut t = a.thread();
    let mut window: Vec<_> = (0..WINDOW).map(|_| t.alloc(size)).collect();
    let start = Instant::now();
    for i in 0..pairs {
        let slot = i % WINDOW;
        let fresh = t.alloc(size);
        let old = std::mem::replace(&mut window[slot], fresh);
        t.free(old, size);
    }
    let ns = start.elapsed().as_nanos() as f64 / pairs as f64;
    for tok in window {
        t.free(tok, size);
    }
    ns
}

/// One run of ns per pair, with `threads` threads (1 or 2) on the same allocator.
fn run_once<A: Allocator>(a: &A, size: usize, threads: usize, pairs: usize) -> f64 {
    if threads == 1 {
        return steps(a, size, pairs);
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| steps(a, size, pairs)))
            .collect();
        let per: Vec<f64> = hs
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect();
        per.iter().sum::<f64>() / per.len() as f64
    })
}

/// An allocator system with its type erased: `run(threads, size, pairs)` is one [`run_once`].
struct Bench<'a> {
    name: &'static str,
    run: Box<dyn Fn(usize, usize, usize) -> f64 + 'a>,
}

fn system<'a, A: Allocator>(name: &'static str, a: &'a A) -> Bench<'a> {
    Bench {
        name,
        run: Box::new(move |threads, size, pairs| run_once(a, size, threads, pairs)),
    }
}

fn row(system: &str, threads: usize, size: usize, ns: f64) -> Row {
    Row {
        system: system.to_string(),
        mode: if threads == 1 {
            "1-thread"
        } else {
            "2-threads"
        }
        .to_string(),
        placement: "n/a".to_string(),
        kind: "alloc".to_string(),
        size_bytes: size as u64,
        p50_ns: Some(ns),
        p99_ns: None,
        p999_ns: None,
        msgs_per_s: None,
        gbytes_per_s: None,
    }
}

/// The allocator systems this module reports, for `--only`.
pub const SYSTEMS: [&str; 5] = [
    "flowipc-arena",
    "flowipc-arena-jemalloc",
    "flowipc-lend-object",
    "jemalloc-heap",
    "system-heap",
];

/// `(threads, object size)` of every configuration, in the order rows are reported.
const CONFIGS: [(usize, usize); 4] = [(1, SIZES[0]), (1, SIZES[1]), (2, SIZES[0]), (2, SIZES[1])];

/// Measures the systems named in `only` (all when empty) and returns one row per system and
/// configuration.
///
/// The runs are interleaved: each of [`RUNS`] rounds measures every configuration once per
/// system, the systems back to back within a configuration, and a row's figure is the median
/// over the rounds. A slow stretch of the shared host then hits every system alike instead of
/// the one that happened to be running, so the ratios between systems (what the targets
/// compare) hold within a run.
pub fn run(quick: bool, only: &[String]) -> Vec<Row> {
    let pairs = if quick { 200_000 } else { 2_000_000 };
    let core = CoreArena::new(64 << 20);
    #[cfg(feature = "jemalloc-shm")]
    let pool = flowipc::arena::LendPool::create_jemalloc(256 << 20).expect("jemalloc pool");
    #[cfg(feature = "jemalloc-shm")]
    let pool_alloc = pool.allocator();
    #[cfg(feature = "jemalloc-shm")]
    let (scoped, object) = (ScopedLend(&pool_alloc), ObjectLend(&pool_alloc));
    let mut systems = vec![system("flowipc-arena", &core)];
    #[cfg(feature = "jemalloc-shm")]
    systems.extend([
        system("flowipc-arena-jemalloc", &scoped),
        system("flowipc-lend-object", &object),
    ]);
    systems.extend([
        system("jemalloc-heap", &JemallocHeap),
        system("system-heap", &SystemHeap),
    ]);
    systems.retain(|s| only.is_empty() || only.iter().any(|o| o == s.name));
    // Warm-up: carve spans, fill caches.
    for s in &systems {
        for &(_, size) in &CONFIGS {
            (s.run)(1, size, pairs / 10);
        }
    }
    let mut samples = vec![[const { Vec::new() }; CONFIGS.len()]; systems.len()];
    for _ in 0..RUNS {
        for (c, &(threads, size)) in CONFIGS.iter().enumerate() {
            for (s, per_config) in systems.iter().zip(&mut samples) {
                per_config[c].push((s.run)(threads, size, pairs));
            }
        }
    }
    let mut out = Vec::new();
    for (s, per_config) in systems.iter().zip(samples) {
        for (&(threads, size), mut runs) in CONFIGS.iter().zip(per_config) {
            runs.sort_by(f64::total_cmp);
            out.push(row(s.name, threads, size, runs[runs.len() / 2]));
        }
    }
    out
}

/// `LendPool::alloc_scoped`: objects that borrow the pool.
#[cfg(feature = "jemalloc-shm")]
struct ScopedLend<'p>(&'p flowipc::arena::PoolAllocator);

/// `LendPool::alloc`: objects that hold an `Arc` on the pool.
#[cfg(feature = "jemalloc-shm")]
struct ObjectLend<'p>(&'p flowipc::arena::PoolAllocator);

/// A bench thread's handle on a lend pool: its `PoolAllocator` (`Sync`).
#[cfg(feature = "jemalloc-shm")]
struct LendThread<'p, const OWNED: bool>(&'p flowipc::arena::PoolAllocator);

#[cfg(feature = "jemalloc-shm")]
impl Allocator for ScopedLend<'_> {
    type Thread<'a>
        = LendThread<'a, false>
    where
        Self: 'a;
    fn thread(&self) -> LendThread<'_, false> {
        LendThread(self.0)
    }
}

#[cfg(feature = "jemalloc-shm")]
impl Allocator for ObjectLend<'_> {
    type Thread<'a>
        = LendThread<'a, true>
    where
        Self: 'a;
    fn thread(&self) -> LendThread<'_, true> {
        LendThread(self.0)
    }
}

#[cfg(feature = "jemalloc-shm")]
impl<'p> ThreadAlloc for LendThread<'p, false> {
    type Token = flowipc::arena::ScopedObject<'p>;
    fn alloc(&mut self, size: usize) -> Self::Token {
        self.0.alloc_scoped(size).expect("lend alloc")
    }
    fn free(&mut self, t: Self::Token, _size: usize) {
        drop(t);
    }
}

#[cfg(feature = "jemalloc-shm")]
impl ThreadAlloc for LendThread<'_, true> {
    type Token = flowipc::arena::ArenaObject;
    fn alloc(&mut self, size: usize) -> Self::Token {
        self.0.alloc(size).expect("lend alloc")
    }
    fn free(&mut self, t: Self::Token, _size: usize) {
        drop(t);
    }
}
