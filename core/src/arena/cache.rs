//! A per-thread cache of free small blocks in front of the shared free lists.
//!
//! Every allocator operation on the shared lists costs at least one atomic read-modify-write on a
//! line both processes touch. An [`ArenaCache`], owned by one thread, keeps up to [`CACHE_DEPTH`]
//! free blocks per class in a private array:
//!
//! - `free` still does the CAS `allocated(g) -> free(g + 1)` on the block's state word (so double
//!   frees are caught exactly as without the cache), then keeps the block instead of pushing it; a
//!   full class sends [`BATCH`] blocks back to the shared list as one chain (one CAS on the head).
//! - `alloc` takes a cached block with a plain store `free(g) -> allocated(g)` (the block is ours);
//!   an empty class takes up to [`BATCH`] blocks off the shared list with one CAS (the tag in the
//!   head guarantees the chain it walked did not change in between).
//!
//! So the steady state is one RMW per alloc+free pair instead of three. Cached blocks are free
//! (their state words say so; `stats` does not count them, and a free of one is a double free). A
//! process that dies leaks what its caches held: at most `CACHE_DEPTH` blocks per class per cache.
//! Dropping the cache returns everything to the shared lists.

use super::layout::{
    head, head_id, head_tag, st_alloc, st_field, st_free, st_gen, st_is_alloc, BLOCK_BITS, NIL,
    NUM_CLASSES,
};
use super::{AllocError, Arena, BlockError, Kind, Offset, MAX_RETRIES, MIN_BLOCK};
use crate::sync::Ordering;

/// Free blocks kept per class.
pub const CACHE_DEPTH: usize = 32;
/// Blocks moved between the cache and the shared list at a time.
pub const BATCH: usize = 16;

/// A thread's private cache of free blocks of one [`Arena`]; see the [module docs](self).
///
/// Not `Sync`: one thread uses it (`&mut self`). Make one per thread that allocates a lot.
pub struct ArenaCache<'a> {
    arena: &'a Arena,
    ids: [[u32; CACHE_DEPTH]; NUM_CLASSES],
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
            ids: [[NIL; CACHE_DEPTH]; NUM_CLASSES],
            len: [0; NUM_CLASSES],
        }
    }

    /// The arena behind the cache.
    pub fn arena(&self) -> &'a Arena {
        self.arena
    }

    /// Allocates as [`Arena::alloc`] does, from the cache when it can.
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<Offset, AllocError> {
        let a = self.arena;
        a.check_align(align)?;
        let need = (size.max(align) as u64).max(MIN_BLOCK);
        let Some(c) = a.small_class(need) else {
            return a.alloc_large(need);
        };
        if self.len[c] == 0 {
            self.refill(c)?;
            if self.len[c] == 0 {
                // The shared list is empty too: carve (or fail) the normal way.
                return a.alloc_small(c);
            }
        }
        self.len[c] -= 1;
        let id = self.ids[c][self.len[c]];
        let (span, i) = split(id);
        let st = a.small_state(span, i);
        let s = st.load(Ordering::Relaxed);
        if st_is_alloc(s) {
            // Only a corrupting peer marks a block we hold as allocated: drop it from the cache.
            return Err(AllocError::Corrupt);
        }
        // SYNC POINT: Release pairs with the Acquire state load in `pop`/`refill` of a thread
        // holding a stale head, as the claim store in `Arena::pop` does.
        st.store(st_alloc(st_gen(s), 1), Ordering::Release);
        Ok(Offset(a.small_offset(c, span, i)))
    }

    /// Frees as [`Arena::free`] does (same errors), keeping small blocks in the cache.
    pub fn free(&mut self, off: Offset) -> Result<(), BlockError> {
        let a = self.arena;
        let (st, kind, id, gen) = a.claim_free(off)?;
        let Kind::Small(c) = kind else {
            return a.finish_free(kind, id, st, gen);
        };
        if self.len[c] == CACHE_DEPTH {
            self.flush(c, BATCH)?;
        }
        self.ids[c][self.len[c]] = id;
        self.len[c] += 1;
        Ok(())
    }

    /// Returns every cached block to the shared lists.
    pub fn flush_all(&mut self) {
        for c in 0..NUM_CLASSES {
            let n = self.len[c];
            // On failure (pathological contention) the blocks stay cached for a later try.
            let _ = self.flush(c, n);
        }
    }

    /// Blocks cached for class `c`.
    pub fn cached(&self, c: usize) -> usize {
        self.len.get(c).copied().unwrap_or(0)
    }

    /// Pushes the `n` most recently cached blocks of class `c` as one chain.
    fn flush(&mut self, c: usize, n: usize) -> Result<(), BlockError> {
        if n == 0 {
            return Ok(());
        }
        let a = self.arena;
        let start = self.len[c] - n;
        let chain = &self.ids[c][start..self.len[c]];
        // Link chain[j] -> chain[j + 1]; the blocks are ours (free, out of every list).
        for w in chain.windows(2) {
            let (span, i) = split(w[0]);
            let st = a.small_state(span, i);
            let gen = st_gen(st.load(Ordering::Relaxed));
            st.store(st_free(gen, w[1]), Ordering::Relaxed);
        }
        let last = chain[n - 1];
        let (span, i) = split(last);
        let st = a.small_state(span, i);
        let gen = st_gen(st.load(Ordering::Relaxed));
        a.push(Kind::Small(c), chain[0], st, gen)?;
        self.len[c] = start;
        Ok(())
    }

    /// Takes up to [`BATCH`] blocks of class `c` off the shared list with one CAS.
    fn refill(&mut self, c: usize) -> Result<(), AllocError> {
        let a = self.arena;
        let list = &a.header().small_heads[c];
        let kind = Kind::Small(c);
        // SYNC POINT: as the head load in `Arena::pop` (pairs with `push`'s Release CAS).
        let mut h = list.load(Ordering::Acquire);
        for _ in 0..MAX_RETRIES {
            let first = head_id(h);
            if first == NIL {
                return Ok(());
            }
            // Walk up to BATCH blocks; stop before the first one that is not a free block with a
            // valid link (stale read or corruption): the head then becomes that block's id.
            let mut got = [NIL; BATCH];
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
                got[n] = next;
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
            // unchanged tag means no push or pop happened since `h`, so the links we read are the
            // list's), failure Acquire as the first load.
            match list.compare_exchange(h, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // Cached blocks stay `free(g, link)` until `alloc` marks them; push them so the
                    // first in the list is allocated first.
                    for &id in got[..n].iter().rev() {
                        self.ids[c][self.len[c]] = id;
                        self.len[c] += 1;
                    }
                    return Ok(());
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
