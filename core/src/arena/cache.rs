//! A per-thread cache of free small blocks in front of the shared free lists.
//!
//! Every operation on the shared lists costs at least one atomic read-modify-write on a line both
//! processes touch, and on x86 a locked instruction also drains the store buffer. An
//! [`ArenaCache`], owned by one thread, keeps up to [`CACHE_DEPTH`] free blocks per class in a
//! private array, so that its steady state (a free followed by an alloc of the same class) makes
//! no atomic read-modify-write at all:
//!
//! - `free` checks the block's state word (an Acquire load: allocated, so a second free of it, a
//!   stale offset or a block that was never allocated is refused exactly as by
//!   [`Arena::free`]) and *stores* `free(g + 1, CACHED)`, recording `(block, g + 1)` in the cache.
//!   A full class sends [`BATCH`] blocks back to the shared list as one chain.
//! - `alloc` takes the last cached entry and checks that its state word is still exactly
//!   `free(g, CACHED)` before storing `allocated(g)`; an entry that fails the check (see below) is
//!   dropped and the next one tried. An empty class takes up to [`BATCH`] blocks off the shared
//!   list with one CAS on the head (its tag guarantees that the chain walked did not change) and
//!   marks them `CACHED`.
//! - The flush turns each entry `free(g, CACHED)` into a list link with a CAS, so every block
//!   enters the shared list at most once, then pushes the chain with one CAS on the head.
//!
//! # What the cache does not detect
//!
//! A load followed by a store is not a consensus: two threads (or processes) that free the *same*
//! block at the same instant (a double free that is also a data race, a bug in the caller) may
//! both see it allocated and both cache it. [`Arena::free`] and [`ArenaCache::free_checked`] (a
//! CAS) report the second of such racing frees; [`ArenaCache::free`] does not. The damage is
//! limited, never undefined behaviour: of two caches holding the same `(block, g)`, only one flush
//! CAS succeeds, and `alloc` hands out an entry only if its state word still says `free(g,
//! CACHED)`, so the block usually ends up in one place. But if the late free's store lands after
//! the block went back to the shared list, the list's link is overwritten and the class reports
//! [`AllocError::Corrupt`] (as it does for a corrupting peer) instead of handing out blocks; and
//! two caches allocating the duplicate at the same instant both get it. Sequential double frees,
//! stale offsets and frees of free blocks are always refused, as by `Arena::free`.
//!
//! A free racing a `release` of the same block by another holder of a reference behaves as with
//! [`Arena::free`] (the block is freed once, and the release either counts down or finds it
//! gone); only a holder that frees a block it holds no reference to can lose that race.
//!
//! Cached blocks are free (their state words say so; `stats` does not count them, and a free of
//! one is a double free). A process that dies leaks what its caches held: at most `CACHE_DEPTH`
//! blocks per class per cache. Dropping the cache returns everything to the shared lists.

use super::layout::{
    head, head_id, head_tag, st_alloc, st_field, st_free, st_gen, st_is_alloc, BLOCK_BITS, CACHED,
    NIL, NUM_CLASSES,
};
use super::{AllocError, Arena, BlockError, Kind, Offset, MAX_RETRIES, MIN_BLOCK};
use crate::sync::Ordering;

/// Free blocks kept per class.
pub const CACHE_DEPTH: usize = 32;
/// Blocks moved between the cache and the shared list at a time.
pub const BATCH: usize = 16;

/// One cached block: its id and the generation its state word must still show.
#[derive(Clone, Copy)]
struct Entry {
    id: u32,
    gen: u32,
}

const EMPTY: Entry = Entry { id: NIL, gen: 0 };

/// A thread's private cache of free blocks of one [`Arena`]; see the [module docs](self).
///
/// Not `Sync`: one thread uses it (`&mut self`). Make one per thread that allocates a lot.
pub struct ArenaCache<'a> {
    arena: &'a Arena,
    entries: [[Entry; CACHE_DEPTH]; NUM_CLASSES],
    len: [usize; NUM_CLASSES],
}

impl core::fmt::Debug for ArenaCache<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ArenaCache")
            .field("cached", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a> ArenaCache<'a> {
    /// An empty cache in front of `arena`.
    pub fn new(arena: &'a Arena) -> Self {
        ArenaCache {
            arena,
            entries: [[EMPTY; CACHE_DEPTH]; NUM_CLASSES],
            len: [0; NUM_CLASSES],
        }
    }

    /// The arena behind the cache.
    pub fn arena(&self) -> &'a Arena {
        self.arena
    }

    /// Allocates as [`Arena::alloc`] does, from the cache when it can.
    #[inline]
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<Offset, AllocError> {
        let a = self.arena;
        a.check_align(align)?;
        let need = (size.max(align) as u64).max(MIN_BLOCK);
        let Some(c) = a.small_class(need) else {
            return a.alloc_large(need);
        };
        if let Some(n) = self.len[c].checked_sub(1) {
            self.len[c] = n;
            if let Some(off) = self.take(c, self.entries[c][n]) {
                return Ok(off);
            }
        }
        self.alloc_slow(c)
    }

    /// Marks the cached block `e` of class `c` allocated and returns its offset, or `None` if its
    /// state word no longer says `free(e.gen, CACHED)` (another cache holds it too, after racing
    /// frees, or a peer wrote the word): the entry is then dropped.
    #[inline]
    fn take(&self, c: usize, e: Entry) -> Option<Offset> {
        let a = self.arena;
        let (span, i) = split(e.id);
        let st = a.small_state(span, i);
        if st.load(Ordering::Relaxed) != st_free(e.gen, CACHED) {
            return None;
        }
        // SYNC POINT: Release pairs with the Acquire state load in `pop`/`refill` of a thread
        // holding a stale head, as the claim store in `Arena::pop` does.
        st.store(st_alloc(e.gen, 1), Ordering::Release);
        Some(Offset(a.small_offset(c, span, i)))
    }

    /// The cache of class `c` is empty (or its last entry was dropped): use the rest, refill
    /// from the shared list, or carve.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, c: usize) -> Result<Offset, AllocError> {
        loop {
            while let Some(n) = self.len[c].checked_sub(1) {
                self.len[c] = n;
                if let Some(off) = self.take(c, self.entries[c][n]) {
                    return Ok(off);
                }
            }
            if !self.refill(c)? {
                // The shared list is empty: carve (or fail) the normal way.
                return self.arena.alloc_small(c);
            }
        }
    }

    /// Frees as [`Arena::free`] does (same errors for sequential misuse; see the
    /// [module docs](self) for racing frees), keeping small blocks in the cache.
    #[inline]
    pub fn free(&mut self, off: Offset) -> Result<(), BlockError> {
        let a = self.arena;
        let (st, kind, id, _) = a.locate(off)?;
        let Kind::Small(c) = kind else {
            return a.free(off);
        };
        // SYNC POINT: Acquire pairs with the Release (AcqRel) CAS of `release` by the other
        // holders, so their reads of the block happen before it is reused.
        let s = st.load(Ordering::Acquire);
        if !st_is_alloc(s) {
            return Err(Arena::free_error(s));
        }
        let gen = st_gen(s).wrapping_add(1);
        // SYNC POINT: Release pairs with the Acquire state load of a popper holding a stale head
        // (see `Arena::pop`): seeing CACHED there, it also sees the head CAS that took the block
        // off the list before our Acquire load above, so its re-load of the head is not stale.
        st.store(st_free(gen, CACHED), Ordering::Release);
        if self.len[c] == CACHE_DEPTH {
            self.flush(c, BATCH);
        }
        self.entries[c][self.len[c]] = Entry { id, gen };
        self.len[c] += 1;
        Ok(())
    }

    /// Frees as [`free`](Self::free) does, but claims the block with a CAS as [`Arena::free`]
    /// does, so that of two frees of the same block racing each other exactly one succeeds. Costs
    /// one atomic read-modify-write more.
    pub fn free_checked(&mut self, off: Offset) -> Result<(), BlockError> {
        let a = self.arena;
        let (st, kind, id, gen) = a.claim_free(off)?;
        let Kind::Small(c) = kind else {
            return a.finish_free(kind, id, st, gen);
        };
        // We own the free block: mark it cached. SYNC POINT: Release as the store in `free`.
        st.store(st_free(gen, CACHED), Ordering::Release);
        if self.len[c] == CACHE_DEPTH {
            self.flush(c, BATCH);
        }
        self.entries[c][self.len[c]] = Entry { id, gen };
        self.len[c] += 1;
        Ok(())
    }

    /// Returns every cached block to the shared lists.
    pub fn flush_all(&mut self) {
        for c in 0..NUM_CLASSES {
            let n = self.len[c];
            self.flush(c, n);
        }
    }

    /// Blocks cached for class `c`.
    pub fn cached(&self, c: usize) -> usize {
        self.len.get(c).copied().unwrap_or(0)
    }

    /// Pushes the `n` most recently cached blocks of class `c` as one chain.
    ///
    /// Each block's word goes `free(g, CACHED) -> free(g, link)` by CAS; a block whose CAS fails
    /// is not ours alone (a duplicate left by racing frees, or a peer's write) and is left out.
    #[cold]
    #[inline(never)]
    fn flush(&mut self, c: usize, n: usize) {
        let a = self.arena;
        let start = self.len[c] - n;
        // Walk from the newest entry down, so each block links to the one claimed before it.
        let mut first: Option<Entry> = None;
        let mut last: Option<Entry> = None;
        for j in (start..self.len[c]).rev() {
            let e = self.entries[c][j];
            let (span, i) = split(e.id);
            let link = first.map_or(NIL, |f| f.id);
            // SYNC POINT: Release for a popper holding a stale head, as the store in `free`; the
            // chain itself is published by the head CAS in `push`.
            let won = a
                .small_state(span, i)
                .compare_exchange(
                    st_free(e.gen, CACHED),
                    st_free(e.gen, link),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok();
            if won {
                last = last.or(Some(e));
                first = Some(e);
            }
        }
        self.len[c] = start;
        let (Some(first), Some(last)) = (first, last) else {
            return;
        };
        let (span, i) = split(last.id);
        // On failure (pathological contention: MAX_RETRIES lost CASes) the chain is out of the
        // cache and not in the list: it leaks, bounded by one flush, as when a process dies
        // mid-push.
        let _ = a.push(Kind::Small(c), first.id, a.small_state(span, i), last.gen);
    }

    /// Takes up to [`BATCH`] blocks of class `c` off the shared list with one CAS; returns
    /// whether it took any.
    fn refill(&mut self, c: usize) -> Result<bool, AllocError> {
        let a = self.arena;
        let list = &a.header().small_heads[c];
        let kind = Kind::Small(c);
        // SYNC POINT: as the head load in `Arena::pop` (pairs with `push`'s Release CAS).
        let mut h = list.load(Ordering::Acquire);
        for _ in 0..MAX_RETRIES {
            let first = head_id(h);
            if first == NIL {
                return Ok(false);
            }
            // Walk up to BATCH blocks; stop before the first one that is not a free block with a
            // valid link (stale read or corruption): the head then becomes that block's id.
            let mut got = [EMPTY; BATCH];
            let mut n = 0;
            let mut next = first;
            while n < BATCH && next != NIL {
                let Some(st) = a.resolve(kind, next) else {
                    break;
                };
                // SYNC POINT: Acquire as in `Arena::pop` (pairs with the Release claim stores).
                let s = st.load(Ordering::Acquire);
                let link = st_field(s);
                if st_is_alloc(s) || (link != NIL && a.resolve(kind, link).is_none()) {
                    break;
                }
                got[n] = Entry {
                    id: next,
                    gen: st_gen(s),
                };
                n += 1;
                next = link;
            }
            if n == 0 {
                // The head itself is not a usable free block: stale `h`, or corruption.
                // SYNC POINT: as the first load of the head.
                let now = list.load(Ordering::Acquire);
                if now == h {
                    return Err(AllocError::Corrupt);
                }
                h = now;
                continue;
            }
            let new = head(next, head_tag(h).wrapping_add(1));
            // SYNC POINT: as the CAS in `Arena::pop`: success AcqRel takes over the chain (the
            // unchanged tag means no push or pop happened since `h`, so the links and generations
            // we read are the list's), failure Acquire as the first load.
            match list.compare_exchange(h, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // The blocks are ours: mark them cached, and push them so that the first in
                    // the list is allocated first.
                    for &e in got[..n].iter().rev() {
                        let (span, i) = split(e.id);
                        // SYNC POINT: Release pairs with the Acquire state load of a popper
                        // holding a stale head (as the claim store in `Arena::pop`): seeing
                        // CACHED, an invalid link, it also sees our head CAS and retries.
                        a.small_state(span, i)
                            .store(st_free(e.gen, CACHED), Ordering::Release);
                        self.entries[c][self.len[c]] = e;
                        self.len[c] += 1;
                    }
                    return Ok(true);
                }
                Err(now) => h = now,
            }
        }
        Err(AllocError::Contended)
    }
}

impl Drop for ArenaCache<'_> {
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// `(span, index)` of a block id.
fn split(id: u32) -> (u64, u64) {
    (
        u64::from(id >> BLOCK_BITS),
        u64::from(id & ((1 << BLOCK_BITS) - 1)),
    )
}
