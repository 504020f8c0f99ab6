//! The owner's side of a jemalloc lend pool: allocation and free, on a fast path through the
//! per-thread front cache and a slow path through jemalloc.
//!
//! # Algorithm
//!
//! [`JePool::create`] makes an owner-only region, writes its pool header and creates a jemalloc
//! arena over it with the [extent hooks](super::hooks). Every `mallocx` / `sdallocx` passes
//! `MALLOCX_ARENA(ind) | MALLOCX_TCACHE_NONE`, so heap and pool pointers never mix in a jemalloc
//! thread cache. Those calls are jemalloc's slow path (under the arena's lock), so small blocks
//! go through a front cache of our own, per thread and per pool ([`cache`]): the steady-state
//! alloc + free pair ([`JePool::alloc`], [`JePool::release`] / [`JePool::release_own`], each an
//! inlined fast path with a `#[cold]` rest) makes no jemalloc call and no atomic
//! read-modify-write. Blocks of 1 KiB and up put their header a few cache lines in (slab
//! colouring, [`colour`]), so that a thread's live headers do not share a few L1 sets.
//!
//! # Invariants
//!
//! - Only this process writes headers (borrowers map the pool read-only): the owner trusts what
//!   it wrote (generation, length, class) on its own objects, but still checks an offset's range
//!   and its header's tag, so a wrong offset cannot send a block to the wrong bin or outside the
//!   mapping.
//! - jemalloc keeps the arena's metadata in the pool, so only the owner process may allocate or
//!   free, never a fork child: [`JePool`] records the owner's pid, and with
//!   [`FORKED`] every slow path refuses another process
//!   ([`PoolError::NotOwner`]); the fast path is never reached there (the fork handler cleared
//!   the thread's cache pointer).
//! - Reference counts: the last reference is dropped with a load and a store (only the holder of
//!   the one reference can change the word, as in `Arc::get_mut`); a count above 1 takes an
//!   AcqRel CAS loop as the core arena's `release` does. SYNC POINTs below pair the Acquire loads
//!   in `release` / `release_own` with those CASes, and the pool header's Release magic store
//!   with the reader's Acquire fence.
//! - Generations are unique per pool: caches reserve them in batches from `next_gen`.
//!
//! Part of `raw`, the module that may use `unsafe`: headers are atomics laid over the mapping,
//! and blocks are copied through raw pointers.

use std::ffi::{c_uint, c_void, CString};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use flowipc_core::arena::layout::{st_alloc, st_field, st_free, st_gen, st_is_alloc};
use flowipc_core::arena::{AllocError, BlockError, BlockInfo};
use flowipc_core::CachePadded;
use flowipc_sys::BorrowedFd;
use tikv_jemalloc_sys as je;

use super::cache;
use super::hooks::{install_fork_guard, Hooks, FORKED};
use super::layout::{
    block_of, tag_of, tag_ok, ObjHeader, PoolHeader, CLASS_LARGE, COLOURS, COLOUR_LINE, OBJ_HEADER,
    POOL_HEADER, POOL_MAGIC, POOL_VERSION,
};
use crate::raw::{PoolError, RegionError, SharedRegion, Sharing};

static_assertions::const_assert!(cache::NUM_CLASSES < CLASS_LARGE as usize);

/// The first class whose headers are coloured: blocks of 1 KiB and up.
const FIRST_COLOURED: usize = cache::compute_class_of(1024);

/// The colour of a new object of `size` bytes (header included) in block `p` of class `c`
/// (at least [`FIRST_COLOURED`]).
///
/// Slab colouring: blocks of one class lie a class size apart, and when that is a multiple of
/// 1 KiB (every class from 1 KiB up) their first lines fall in a few L1 sets (5 KiB blocks: 4
/// of 64; 4 KiB blocks: 1), so a thread's few dozen live headers would evict one another. A
/// request that leaves at least a line of slack in its block puts its header that many lines
/// in, picked from the block's address (`p / 4 KiB`, which steps through every colour across
/// consecutive blocks of such classes). Smaller classes spread over enough sets as they are
/// and keep their headers at the start of their blocks, where the tag is written once.
#[inline]
fn colour(p: usize, c: usize, size: usize) -> usize {
    debug_assert!(c >= FIRST_COLOURED);
    let slack_lines = (cache::class_bytes(c) - size) / COLOUR_LINE;
    ((p >> 12) & (COLOURS - 1)).min(slack_lines)
}

/// A jemalloc arena over a memfd, owned by this process.
///
/// Aligned to 128 bytes so that, inside its `Arc`, the fields every allocation reads do not share
/// a cache line with the `Arc`'s counts (which objects holding the pool bump from every thread).
#[repr(align(128))]
pub(crate) struct JePool {
    arena: c_uint,
    /// `MALLOCX_ARENA | MALLOCX_TCACHE_NONE`: every call into jemalloc.
    flags: i32,
    hooks: NonNull<Hooks>,
    /// Unmapped in Drop only if jemalloc let go of the arena.
    region: ManuallyDrop<SharedRegion>,
    /// The owner process (a fork child has another pid).
    pub(super) pid: u32,
    /// The front cache's side in the pool: its key, the thread caches and shared counters.
    pub(super) shared: cache::PoolShared,
    /// The next generation not yet handed out (front caches take them in batches). On a line
    /// of its own: the fields above are read by every allocation and free on every thread.
    next_gen: CachePadded<AtomicU32>,
    pool_id: u64,
}

// SAFETY: the hooks are only read (and their bump advanced atomically) by jemalloc; the mapping is
// accessed through atomics (headers) or by copies into blocks the caller owns.
unsafe impl Send for JePool {}
// SAFETY: as above; jemalloc arenas are thread-safe, and the front cache is per thread.
unsafe impl Sync for JePool {}

impl JePool {
    /// Creates an owner-only region of `len` bytes ([`SharedRegion::create`] with
    /// [`Sharing::OwnerOnly`]), writes its pool header and creates a jemalloc arena over it.
    pub(crate) fn create(
        name: &std::ffi::CStr,
        len: usize,
        pool_id: u64,
    ) -> Result<Arc<Self>, PoolError> {
        if len <= POOL_HEADER {
            return Err(RegionError::BadSize(len as u64).into());
        }
        // Owner-only: no borrower can map the pool writable by any route (see
        // `flowipc_sys::memfd::seal_owner_only`); jemalloc's extents all come from this mapping.
        let region = SharedRegion::create(name, len, Sharing::OwnerOnly)?;
        let base = region
            .as_mut_ptr()
            .ok_or(RegionError::BadSize(len as u64))? as usize;
        // SAFETY: the mapping is page-aligned and at least POOL_HEADER bytes; the header is atomics.
        let ph = unsafe { &*(base as *const PoolHeader) };
        ph.version.store(POOL_VERSION, Ordering::Relaxed);
        ph.pool_id.store(pool_id, Ordering::Relaxed);
        ph.len.store(len as u64, Ordering::Relaxed);
        // SYNC POINT: pairs with the Acquire fence after the magic load in `JeReader::open`.
        ph.magic.store(POOL_MAGIC, Ordering::Release);
        let hooks = Hooks::leak(base, len, POOL_HEADER);
        let mut arena: c_uint = 0;
        let mut sz = std::mem::size_of::<c_uint>();
        let mut hp: *mut je::extent_hooks_t = hooks.as_ptr().cast();
        // SAFETY: `arenas.create` writes an unsigned into `arena` and reads an `extent_hooks_t *`;
        // the sizes match; the hooks stay alive until the arena is destroyed in Drop.
        let rc = unsafe {
            je::mallctl(
                c"arenas.create".as_ptr(),
                (&mut arena as *mut c_uint).cast(),
                &mut sz,
                (&mut hp as *mut *mut je::extent_hooks_t).cast(),
                std::mem::size_of::<*mut je::extent_hooks_t>(),
            )
        };
        if rc != 0 {
            // SAFETY: jemalloc did not keep the pointer; it is freed once, here.
            unsafe { Hooks::free(hooks) };
            return Err(RegionError::Sys {
                call: "mallctl(arenas.create)",
                errno: flowipc_sys::Errno::from_raw_os_error(rc),
            }
            .into());
        }
        install_fork_guard();
        let pool = Arc::new(JePool {
            arena,
            flags: je::MALLOCX_ARENA(arena as usize) | je::MALLOCX_TCACHE_NONE,
            hooks,
            region: ManuallyDrop::new(region),
            pid: std::process::id(),
            shared: cache::PoolShared::new(),
            next_gen: CachePadded::new(AtomicU32::new(1)),
            pool_id,
        });
        // From here on, thread caches may refer to the pool (at its final address, in the Arc).
        cache::register(pool.shared.key);
        Ok(pool)
    }

    #[inline]
    fn check_owner(&self) -> Result<(), PoolError> {
        if FORKED.load(Ordering::Relaxed) && std::process::id() != self.pid {
            return Err(PoolError::NotOwner);
        }
        Ok(())
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The id written in the pool header.
    pub(crate) fn pool_id(&self) -> u64 {
        self.pool_id
    }

    #[inline]
    fn base(&self) -> usize {
        self.region.as_ptr() as usize
    }

    /// Allocates `len` bytes (after a header) aligned to 16; returns `(offset, generation)`.
    ///
    /// The fast path, a small object whose class's bin in this thread's cache has a block, is
    /// inlined; everything else (refills, large objects, the checks that this is the owner
    /// process) is [`alloc_slow`](Self::alloc_slow). A fork child never takes the fast path: its
    /// fork handler cleared the thread's cache pointer, so it always reaches those checks.
    #[inline]
    pub(crate) fn alloc(&self, len: usize) -> Result<(u64, u32), PoolError> {
        if len <= cache::MAX_CACHED - OBJ_HEADER {
            if let Some(mut tc) = cache::fast(self) {
                let c = cache::class_of(len + OBJ_HEADER);
                if let Some(p) = tc.pop(c) {
                    let gen = tc.next_gen(self);
                    tc.add_bytes(len as u64);
                    let h = Self::place_header(p, c, len + OBJ_HEADER);
                    return Ok(self.init_object(h, len as u32, gen));
                }
            }
        }
        self.alloc_slow(len)
    }

    /// [`alloc`](Self::alloc) beyond its fast path.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, len: usize) -> Result<(u64, u32), PoolError> {
        self.check_owner()?;
        let len32 = u32::try_from(len).map_err(|_| AllocError::TooLarge)?;
        let size = len + OBJ_HEADER;
        let cached = if size <= cache::MAX_CACHED {
            let c = cache::class_of(size);
            cache::with(self, |tc| self.alloc_cached(tc, c, len))
        } else {
            None
        };
        let (h, gen) = match cached {
            Some(r) => r?,
            None => self.alloc_uncached(size, len)?,
        };
        Ok(self.init_object(h, len32, gen))
    }

    /// Where the header of a new object of `size` bytes (header included) goes in block `p` of
    /// class `c` (16-aligned, inside the mapping, ours): the block's start, whose tag
    /// `init_block` wrote, or for a coloured class [`colour`] lines in, where this writes the
    /// tag.
    #[inline]
    fn place_header(p: usize, c: usize, size: usize) -> usize {
        if c < FIRST_COLOURED {
            return p;
        }
        let col = colour(p, c, size);
        let h = p + col * COLOUR_LINE;
        // SAFETY: `h + OBJ_HEADER <= p + class_bytes(c) - size + OBJ_HEADER <= p +
        // class_bytes(c)`, inside the block; the header is atomics.
        let hdr = unsafe { &*(h as *const ObjHeader) };
        hdr.tag.store(tag_of(col, c as u32), Ordering::Relaxed);
        h
    }

    /// Writes the length and state of a new object of `len` bytes with generation `gen`,
    /// whose header (tag already written) is at address `h`; returns `(offset, gen)`. The
    /// header and the `len` bytes after it lie in one block (inside the mapping, held by nobody
    /// else: fresh from jemalloc or popped from our cache).
    #[inline]
    fn init_object(&self, h: usize, len: u32, gen: u32) -> (u64, u32) {
        // SAFETY: per the contract above; the header is atomics.
        let hdr = unsafe { &*(h as *const ObjHeader) };
        hdr.len.store(len, Ordering::Relaxed);
        hdr.state.store(st_alloc(gen, 1), Ordering::Relaxed);
        ((h + OBJ_HEADER - self.base()) as u64, gen)
    }

    /// A block of class `c` from this thread's cache (or jemalloc): the address of its header
    /// (tag written) and a generation.
    #[inline]
    fn alloc_cached(
        &self,
        tc: &mut cache::Owned<'_>,
        c: usize,
        len: usize,
    ) -> Result<(usize, u32), PoolError> {
        let p = match tc.pop(c) {
            Some(p) => p,
            None => self.refill(tc, c)?,
        };
        let gen = tc.next_gen(self);
        tc.add_bytes(len as u64);
        Ok((Self::place_header(p, c, len + OBJ_HEADER), gen))
    }

    /// A fresh block of class `c` from jemalloc, and a few more into the (empty) bin, so that a
    /// thread's blocks lie together rather than interleaved with another thread's in the same
    /// jemalloc slab (which would put two threads' headers on one cache line). When the pool is
    /// full, this thread's cached blocks go back first and the allocation is tried once more.
    #[cold]
    fn refill(&self, tc: &mut cache::Owned<'_>, c: usize) -> Result<usize, PoolError> {
        let size = cache::class_bytes(c);
        let mut p = self.je_alloc(size);
        if p == 0 {
            self.flush(tc);
            p = self.je_alloc(size);
        }
        if p == 0 {
            return Err(AllocError::OutOfMemory.into());
        }
        Self::init_block(p, c as u32);
        // The extra blocks go in in reverse, so that they are popped in address order.
        let mut extra = [0usize; cache::REFILL_MAX];
        let want = cache::refill_count(c);
        let mut n = 0;
        while n < want {
            let q = self.je_alloc(size);
            if q == 0 {
                break;
            }
            Self::init_block(q, c as u32);
            extra[n] = q;
            n += 1;
        }
        for &q in extra[..n].iter().rev() {
            let cached = tc.push(c, q);
            debug_assert!(cached, "refill runs on an empty bin");
        }
        tc.add_held(1 + n as u64);
        Ok(p)
    }

    /// Without a thread cache (a large block, or a thread whose cache is gone): straight from
    /// jemalloc, counted in the pool's shared counters. Returns the header's address (the
    /// block's start: colour 0, tag written) and a generation.
    #[cold]
    fn alloc_uncached(&self, size: usize, len: usize) -> Result<(usize, u32), PoolError> {
        let size = Self::block_size(size);
        let p = self.je_alloc(size);
        if p == 0 {
            return Err(AllocError::OutOfMemory.into());
        }
        Self::init_block(p, Self::class_tag(size));
        let gen = self.reserve_gens(1);
        self.shared.uncached.count(true, len as u64);
        Ok((p, gen))
    }

    /// Writes the header at the start of a block fresh from jemalloc (its memory may hold
    /// anything, such as an earlier object's bytes): a free state, so that no stale handle
    /// finds a live object there, and the tag of colour 0 and `class` (a cache class, or
    /// `CLASS_LARGE`).
    fn init_block(p: usize, class: u32) {
        // SAFETY: `p` is a fresh 16-aligned block of at least OBJ_HEADER bytes in the mapping;
        // the header is atomics.
        let hdr = unsafe { &*(p as *const ObjHeader) };
        hdr.state.store(st_free(0, 0), Ordering::Relaxed);
        hdr.tag.store(tag_of(0, class), Ordering::Relaxed);
    }

    /// The tag's class byte for a block of `size` bytes (header included).
    fn class_tag(size: usize) -> u32 {
        if size <= cache::MAX_CACHED {
            cache::class_of(size) as u32
        } else {
            CLASS_LARGE
        }
    }

    /// The size a block of `size` bytes is allocated and freed with: its class for small
    /// blocks (so that a cached block fits any request of its class), else `size`.
    #[inline]
    fn block_size(size: usize) -> usize {
        if size <= cache::MAX_CACHED {
            cache::class_bytes(cache::class_of(size))
        } else {
            size
        }
    }

    /// `mallocx(size)` in our arena; 0 when it is full.
    fn je_alloc(&self, size: usize) -> usize {
        // SAFETY: allocation in our arena without a tcache; size is non-zero.
        unsafe { je::mallocx(size, self.flags) as usize }
    }

    /// `sdallocx` of block `p`, allocated with `je_alloc(size)`.
    fn je_free(&self, p: usize, size: usize) {
        // SAFETY: per the caller: `p` came from `mallocx(size, self.flags)` in this arena and is
        // freed once.
        unsafe { je::sdallocx(p as *mut c_void, size, self.flags) };
    }

    /// `n` fresh generations: the first of them.
    pub(super) fn reserve_gens(&self, n: u32) -> u32 {
        self.next_gen.fetch_add(n, Ordering::Relaxed)
    }

    /// Gives every block cache `tc` holds back to jemalloc.
    pub(super) fn flush(&self, tc: &mut cache::Owned<'_>) {
        // Cached blocks of class `c` were allocated with `class_size(c)`.
        let n = tc.drain_all(|c, p| self.je_free(p, cache::class_bytes(c)));
        tc.add_held(n.wrapping_neg());
    }

    /// Blocks taken from jemalloc and not given back: live objects plus blocks in thread caches.
    #[cfg(test)]
    pub(crate) fn held_blocks(&self) -> u64 {
        self.shared.totals().2
    }

    /// Thread caches made in this pool so far, and how many it may have.
    #[cfg(test)]
    pub(crate) fn caches_made(&self) -> (usize, usize) {
        (self.shared.caches_made(), cache::MAX_CACHES)
    }

    /// The header of the object at `off`, if `off` could be one (range and alignment only).
    #[inline]
    fn header(&self, off: u64) -> Option<&ObjHeader> {
        let off = usize::try_from(off).ok()?;
        if off < POOL_HEADER + OBJ_HEADER || off > self.region.len() || off % 16 != 0 {
            return None;
        }
        // SAFETY: `off - 16 .. off` is inside the mapping and 16-aligned; the header is atomics.
        Some(unsafe { &*((self.base() + off - OBJ_HEADER) as *const ObjHeader) })
    }

    /// Live object at `off` with generation `gen`: its header.
    #[inline]
    fn live(&self, off: u64, gen: u32) -> Result<&ObjHeader, BlockError> {
        let h = self.header(off).ok_or(BlockError::OutOfRange)?;
        let s = h.state.load(Ordering::Relaxed);
        if !tag_ok(h.tag.load(Ordering::Relaxed)) || !st_is_alloc(s) || st_gen(s) != gen {
            return Err(BlockError::StaleGeneration);
        }
        Ok(h)
    }

    /// The generation and length of one of this process's own live objects at `off`, from its
    /// header (which only this process writes). `(0, 0)` if `off` names no live object, which
    /// cannot happen for an offset `alloc` returned and whose reference the caller holds.
    pub(crate) fn own_parts(&self, off: u64) -> (u32, u64) {
        match self.header(off) {
            Some(h) if tag_ok(h.tag.load(Ordering::Relaxed)) => {
                let s = h.state.load(Ordering::Relaxed);
                debug_assert!(st_is_alloc(s));
                (st_gen(s), u64::from(h.len.load(Ordering::Relaxed)))
            }
            _ => (0, 0),
        }
    }

    /// The length of one of this process's own live objects at `off` (as [`own_parts`](Self::own_parts)).
    #[inline]
    pub(crate) fn own_len(&self, off: u64) -> u64 {
        self.header(off)
            .map_or(0, |h| u64::from(h.len.load(Ordering::Relaxed)))
    }

    /// Drops the reference the caller holds on its own object at `off` (an offset `alloc`
    /// returned): the owner's own release, for objects that never crossed a process boundary.
    /// It trusts what this process wrote in the header (the generation, and that the object is
    /// live, because the caller's reference keeps it so) instead of checking it against a value
    /// carried beside the offset; the range and the tag are still checked, so a wrong offset
    /// cannot send a block to the wrong bin. Returns whether the object was freed.
    #[inline]
    pub(crate) fn release_own(&self, off: u64) -> Result<bool, PoolError> {
        if let Some(h) = self.header(off) {
            // SYNC POINT: Acquire as in `release` (pairs with the other holders' AcqRel releases).
            let s = h.state.load(Ordering::Acquire);
            if self.free_last_cached(h, s) {
                return Ok(true);
            }
            // The fast path just declined: straight to the full path, not through `release`,
            // which would try it again.
            return self.release_slow(off, st_gen(s));
        }
        Err(BlockError::OutOfRange.into())
    }

    /// The fast path of a release: if state `s` (just read from `h`) is live with the caller's
    /// reference as the only one, the block is of a cached class and this thread's cache has
    /// room in its bin, frees the object into the cache and returns `true`. Otherwise changes
    /// nothing: the caller takes the full path. Never taken in a fork child (see `alloc`).
    #[inline]
    fn free_last_cached(&self, h: &ObjHeader, s: u64) -> bool {
        let tag = h.tag.load(Ordering::Relaxed);
        let c = (tag & 0xff) as usize;
        // `s == st_alloc(st_gen(s), 1)`: allocated, one reference.
        if s as u32 != st_alloc(0, 1) as u32 || !tag_ok(tag) || c >= cache::NUM_CLASSES {
            return false;
        }
        let Some(mut tc) = cache::fast(self) else {
            return false;
        };
        if !tc.has_room(c) {
            return false;
        }
        // The only reference, ours: no other thread can change the word (see `release`).
        // Relaxed: as in `release`.
        h.state
            .store(st_free(st_gen(s).wrapping_add(1), 0), Ordering::Relaxed);
        let len = h.len.load(Ordering::Relaxed);
        debug_assert_eq!(c as u32, Self::class_tag(len as usize + OBJ_HEADER));
        tc.push_unchecked(c, block_of((h as *const ObjHeader) as usize, tag));
        tc.add_bytes(u64::from(len).wrapping_neg());
        true
    }

    pub(crate) fn info(&self, off: u64, gen: u32) -> Result<BlockInfo, BlockError> {
        let h = self.live(off, gen)?;
        let s = h.state.load(Ordering::Relaxed);
        Ok(BlockInfo {
            generation: gen,
            capacity: u64::from(h.len.load(Ordering::Relaxed)),
            refcount: st_field(s),
        })
    }

    pub(crate) fn retain(&self, off: u64, gen: u32) -> Result<(), PoolError> {
        self.check_owner()?;
        let h = self.live(off, gen)?;
        // Only the owner process writes headers, and `live` checked the generation: an increment
        // of the refcount field (bits 1..32) cannot carry into the generation below 2^30 refs.
        h.state.fetch_add(2, Ordering::Relaxed);
        Ok(())
    }

    /// Drops a reference; the last one frees the object. Returns whether it did.
    ///
    /// The last reference is dropped with a load and a store, no read-modify-write: only this
    /// process writes headers (borrowers map the pool read-only), and in it every reference is
    /// held by an object or a borrower's lend record, and adding one (`retain`) needs one of them.
    /// So when the count is 1 and the caller holds that reference, no other thread can change
    /// the word until we do, as in `Arc::get_mut`. A count above 1 takes the CAS loop.
    #[inline]
    pub(crate) fn release(&self, off: u64, gen: u32) -> Result<bool, PoolError> {
        if let Some(h) = self.header(off) {
            // SYNC POINT: Acquire as below.
            let s = h.state.load(Ordering::Acquire);
            if st_gen(s) == gen && self.free_last_cached(h, s) {
                return Ok(true);
            }
        }
        self.release_slow(off, gen)
    }

    /// [`release`](Self::release) beyond its fast path.
    #[cold]
    #[inline(never)]
    fn release_slow(&self, off: u64, gen: u32) -> Result<bool, PoolError> {
        self.check_owner()?;
        let h = self.header(off).ok_or(BlockError::OutOfRange)?;
        let tag = h.tag.load(Ordering::Relaxed);
        if !tag_ok(tag) {
            return Err(BlockError::StaleGeneration.into());
        }
        // SYNC POINT: Acquire pairs with the Release half of the AcqRel CASes below by the other
        // holders (their use of the object happens before we free it), as `Arc::drop` does.
        let mut s = h.state.load(Ordering::Acquire);
        if s == st_alloc(gen, 1) {
            // Relaxed: the block goes back to our cache or jemalloc, whose reuse of it happens
            // on this thread or after a synchronising hand-over; a borrower reading the header
            // concurrently sees either state (both are checked).
            h.state
                .store(st_free(gen.wrapping_add(1), 0), Ordering::Relaxed);
            self.dealloc(h, tag);
            return Ok(true);
        }
        loop {
            if !st_is_alloc(s) || st_gen(s) != gen || st_field(s) == 0 {
                return Err(BlockError::StaleGeneration.into());
            }
            let last = st_field(s) == 1;
            let new = if last {
                st_free(gen.wrapping_add(1), 0)
            } else {
                st_alloc(gen, st_field(s) - 1)
            };
            // SYNC POINT: AcqRel as in the core arena's `release`: the last release sees every
            // other holder's use of the object before it is freed.
            match h
                .state
                .compare_exchange(s, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) if last => {
                    self.dealloc(h, tag);
                    return Ok(true);
                }
                Ok(_) => return Ok(false),
                Err(now) => s = now,
            }
        }
    }

    /// Gives the block of header `h` (whose tag is `tag`) back, to this thread's cache or
    /// jemalloc, after its state went to free.
    #[inline]
    fn dealloc(&self, h: &ObjHeader, tag: u32) {
        // The length and tag `alloc` wrote (only this process writes headers): the block's
        // class is the one it was allocated with, and it starts the tag's colour lines before
        // the header.
        let p = block_of((h as *const ObjHeader) as usize, tag);
        let len = h.len.load(Ordering::Relaxed);
        let size = len as usize + OBJ_HEADER;
        let c = (tag & 0xff) as usize;
        debug_assert_eq!(tag & 0xff, Self::class_tag(size));
        if c < cache::NUM_CLASSES {
            let cached = cache::with(self, |tc| {
                if !tc.push(c, p) {
                    self.spill(tc, c, p);
                }
                tc.add_bytes(u64::from(len).wrapping_neg());
            });
            if cached.is_some() {
                return;
            }
        }
        self.free_uncached(p, size, c, len);
    }

    /// Class `c`'s bin is full: gives its older half back to jemalloc, then caches `p`.
    #[cold]
    fn spill(&self, tc: &mut cache::Owned<'_>, c: usize, p: usize) {
        let n = tc.spill_half(c, |old| self.je_free(old, cache::class_bytes(c)));
        tc.add_held(n.wrapping_neg());
        let cached = tc.push(c, p);
        debug_assert!(cached);
    }

    /// Frees block `p` (of class `c`, or `CLASS_LARGE`; of an object of `len` bytes, `size`
    /// with the header) to jemalloc.
    #[cold]
    fn free_uncached(&self, p: usize, size: usize, c: usize, len: u32) {
        // The block was allocated with its class's size, or exactly `size` beyond the classes.
        let block = if c < cache::NUM_CLASSES {
            cache::class_bytes(c)
        } else {
            size
        };
        self.je_free(p, block);
        self.shared.uncached.count(false, u64::from(len));
    }

    /// The address of byte `at` of the live object at `off` (generation `gen`), after checking
    /// that `len` bytes from there lie inside the object and the mapping.
    fn span(&self, off: u64, gen: u32, at: u64, len: usize) -> Result<usize, PoolError> {
        let info = self.info(off, gen)?;
        let end = at.checked_add(len as u64).ok_or(BlockError::TooLong)?;
        // The header is the owner's own (borrowers cannot write the pool); still, never copy
        // outside the mapping.
        if end > info.capacity || off.saturating_add(end) > self.region.len() as u64 {
            return Err(BlockError::TooLong.into());
        }
        Ok(self.base() + (off + at) as usize)
    }

    /// A pointer to bytes `[0, len)` of the live object `off` (generation `gen`) in the writable
    /// mapping; valid while the pool lives.
    pub(crate) fn block_ptr(
        &self,
        off: u64,
        gen: u32,
        len: usize,
    ) -> Result<NonNull<u8>, PoolError> {
        let p = self.span(off, gen, 0, len)?;
        NonNull::new(p as *mut u8).ok_or_else(|| BlockError::OutOfRange.into())
    }

    /// Copies `data` into the object at `off` (generation `gen`) from byte `at`.
    pub(crate) fn write(&self, off: u64, gen: u32, at: u64, data: &[u8]) -> Result<(), PoolError> {
        let p = self.span(off, gen, at, data.len())?;
        // SAFETY: `span` checked that `[p, p + len)` lies inside the live object (against its
        // header, which the owner wrote and only it can write), inside the writable mapping.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p as *mut u8, data.len()) };
        Ok(())
    }

    /// Copies bytes of the object from byte `at` into `buf`.
    pub(crate) fn read(
        &self,
        off: u64,
        gen: u32,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), PoolError> {
        let p = self.span(off, gen, at, buf.len())?;
        // SAFETY: as in `write`; `buf` is our memory.
        unsafe { ptr::copy_nonoverlapping(p as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Objects and payload bytes currently allocated (exact when no thread is allocating or
    /// freeing in the pool).
    pub(crate) fn usage(&self) -> (u64, u64) {
        let (objects, bytes, _) = self.shared.totals();
        (objects, bytes)
    }
}

impl Drop for JePool {
    fn drop(&mut self) {
        // SAFETY: `self.region` is taken exactly once, here, and not used through `self` again;
        // the memory stays mapped while `region` lives (or forever, once leaked).
        let region = unsafe { ManuallyDrop::take(&mut self.region) };
        if FORKED.load(Ordering::Relaxed) && std::process::id() != self.pid {
            // A fork child must not touch the arena: leak our share of it.
            leak_mapping(region);
            return;
        }
        // From now on no thread flushes its cache into this pool; blocks still cached are
        // forgotten (the arena's destruction below takes their memory back).
        cache::unregister(self.shared.key);
        let name = CString::new(format!("arena.{}.destroy", self.arena)).expect("no NUL");
        // SAFETY: destroys our arena; no other reference to it remains (every object's block was
        // allocated through `self`, which is being dropped; no jemalloc tcache holds any, since
        // every call passed MALLOCX_TCACHE_NONE; and no thread cache will use its blocks again).
        let rc = unsafe {
            je::mallctl(
                name.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if rc == 0 {
            // SAFETY: the arena is gone, so jemalloc will not call the hooks again; freed once.
            unsafe { Hooks::free(self.hooks) };
            drop(region);
        } else {
            // jemalloc may still use the hooks and the memory: leak both rather than unmap.
            leak_mapping(region);
        }
    }
}

/// Closes `region`'s memfd but leaves its memory mapped for good (jemalloc, or a fork's parent,
/// may still use it).
fn leak_mapping(region: SharedRegion) {
    let (map, _fd) = region.into_parts();
    std::mem::forget(map);
}
