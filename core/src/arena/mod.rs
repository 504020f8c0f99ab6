//! A lock-free allocator over a region that several processes map read-write.
//!
//! # Algorithm
//!
//! The region (layout in [`layout`]) is a header, a span table and `n` equal *spans* (256 KiB by
//! default, a power of two between 256 B and 256 KiB). Spans are handed out once, by a bump pointer
//! (`next_span`, advanced with compare-and-swap), and never returned to it:
//!
//! - *Small blocks* (16 B to 64 KiB, 13 power-of-two classes): a span carved for class `c` starts with
//!   one 8-byte *state word* per block, followed by the blocks, so every block is aligned to its size
//!   relative to the region base. Free blocks of a class form a Treiber stack whose links live in the
//!   state words; the stack head is a *tagged index* (`tag << 32 | block id` in one `AtomicU64`) and
//!   the tag changes on every successful CAS, which defeats ABA.
//! - *Large blocks* are runs of `2^k` spans (order `k`), carved from the same bump pointer; freed runs go
//!   to a per-order Treiber stack (same tagged heads) and are reused whole, never split or merged. The
//!   state word of a run sits in its span table entry, so the payload starts exactly at the span.
//!
//! A state word holds `generation:32 | link-or-refcount:31 | allocated:1`. `free` is one CAS
//! `allocated(g) -> free(g + 1)` on it, so of two racing frees of the same block exactly one wins and the
//! loser gets an error; only the winner then pushes the block, so the free lists are never corrupted by
//! a double free. The same word carries a reference count ([`Arena::retain`] / [`Arena::release`]) for
//! objects shared between processes: the release that takes the count from 1 to 0 frees the block.
//!
//! # Hostile peers and crashes
//!
//! Everything read from the region is a claim: block ids from heads and links are checked against the
//! span count, the span's kind and the class's block count before they become offsets; every CAS loop
//! is bounded (`MAX_RETRIES`), returning `Contended` instead of spinning forever; an inconsistency
//! returns `Corrupt`. No operation takes a lock, so a process that dies mid-operation cannot block the
//! other: it leaks at most the block or span it was working on (popped but not marked, carved but not
//! pushed, marked free but not pushed).
//!
//! The geometry (span size, span count, data offset, class table) is computed locally from the mapping
//! length and the span shift, and only compared with the header, so a peer rewriting the header later
//! cannot move anything out of bounds.

pub mod cache;
pub mod error;
pub mod handle;
pub mod layout;
pub mod link;

#[cfg(test)]
mod tests;

use core::fmt;
#[cfg(not(flowipc_loom))]
use core::ptr::NonNull;

pub use cache::ArenaCache;
pub use error::{AllocError, BlockError, InitError};
pub use handle::{ArenaHandle, HandleDecodeError};
use layout::{
    class_info, head, head_id, head_tag, round_up, st_alloc, st_field, st_free, st_gen,
    st_is_alloc, ArenaHeader, ClassInfo, BLOCK_BITS, HEADER_SIZE, KIND_CONT, KIND_LARGE,
    KIND_SMALL, MAGIC, MAX_SMALL_BLOCK, MIN_BLOCK, NIL, NUM_CLASSES, NUM_ORDERS, SPAN_ENTRY_SIZE,
    VERSION,
};
pub use layout::{DEFAULT_SPAN_SHIFT, MAX_SPAN_SHIFT, MIN_SPAN_SHIFT};
pub use link::BlockLink;

use crate::sync::{fence, AtomicU64, Ordering};

/// Largest alignment `alloc` supports (further capped by the span size).
pub const MAX_ALIGN: usize = 4096;

/// Bound on compare-and-swap attempts in one operation; past it the operation gives up.
const MAX_RETRIES: u32 = 1 << 16;

/// Largest reference count a block can hold.
pub const MAX_REFCOUNT: u32 = NIL - 1;

/// A byte offset from the start of the arena region: how blocks are named in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Offset(u64);

impl Offset {
    /// Wraps a raw offset (for example one decoded from a handle); it is checked when used.
    pub const fn new(raw: u64) -> Self {
        Offset(raw)
    }

    /// The raw byte offset.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// What [`Arena::info`] reports about an allocated block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Generation of the block, incremented by every free.
    pub generation: u32,
    /// Usable bytes from the block's offset.
    pub capacity: u64,
    /// Current reference count (1 after `alloc`).
    pub refcount: u32,
}

/// Usage of one small class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: u64,
    /// Blocks currently allocated.
    pub blocks_in_use: u64,
    /// Spans carved for this class (capacity = spans × blocks per span).
    pub spans: u64,
}

/// A snapshot of the arena's usage counters. The counters live in shared memory, so the figures are
/// what the processes claim; they are exact when all of them follow the protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Per small class, smallest first.
    pub classes: [ClassStats; NUM_CLASSES],
    /// Large runs currently allocated.
    pub large_blocks_in_use: u64,
    /// Bytes held by large runs currently allocated.
    pub large_bytes_in_use: u64,
    /// Spans handed out by the bump pointer so far.
    pub spans_carved: u64,
    /// Spans in the region.
    pub spans_total: u64,
}

impl ArenaStats {
    /// Bytes in allocated blocks (small blocks at their class size, large runs whole).
    pub fn bytes_in_use(&self) -> u64 {
        let small: u64 = self
            .classes
            .iter()
            .map(|c| c.blocks_in_use.wrapping_mul(c.block_size))
            .fold(0, u64::wrapping_add);
        small.wrapping_add(self.large_bytes_in_use)
    }

    /// Blocks (small and large) currently allocated.
    pub fn blocks_in_use(&self) -> u64 {
        self.classes
            .iter()
            .map(|c| c.blocks_in_use)
            .fold(self.large_blocks_in_use, u64::wrapping_add)
    }
}

/// Where the arena's memory comes from.
enum Storage {
    /// Memory mapped or allocated elsewhere; `owned` holds the layout to free it with, if ours.
    #[cfg(not(flowipc_loom))]
    Raw {
        base: NonNull<u8>,
        len: usize,
        #[cfg(any(feature = "alloc", test))]
        owned: Option<core::alloc::Layout>,
    },
    /// loom atomics cannot be laid over bytes: the header and every word after it are real objects,
    /// shared (like a mapping) by every arena built on the same [`ModelRegion`].
    #[cfg(flowipc_loom)]
    Model(alloc::sync::Arc<ModelRegion>),
}

/// loom-model storage standing for a shared region of `len` bytes: a header and the words after
/// it as real atomics. [`Arena::init_model`] and [`Arena::attach_model`] build arenas over it
/// through the same header write and header check as [`Arena::init`] and [`Arena::attach`].
#[cfg(flowipc_loom)]
pub struct ModelRegion {
    header: ArenaHeader,
    words: alloc::vec::Vec<AtomicU64>,
    len: usize,
}

#[cfg(flowipc_loom)]
impl ModelRegion {
    /// A zeroed region of `len` bytes (at least the header).
    pub fn new(len: usize) -> alloc::sync::Arc<Self> {
        let words = (len as u64).saturating_sub(HEADER_SIZE) / 8;
        alloc::sync::Arc::new(ModelRegion {
            header: ArenaHeader::zeroed(),
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            len,
        })
    }
}

/// Kind of a located block.
#[derive(Clone, Copy)]
enum Kind {
    Small(usize),
    Large(usize),
}

/// A lock-free allocator over one region; see the [module docs](self) for the algorithm.
///
/// Cheap to share between threads (`&Arena` is `Sync`); every process maps the region and builds its
/// own `Arena` with [`Arena::init`] (the creator) or [`Arena::attach`] (the others).
pub struct Arena {
    storage: Storage,
    span_shift: u32,
    span_count: u64,
    data_off: u64,
    classes: [ClassInfo; NUM_CLASSES],
}

// SAFETY: all access to the region goes through atomics; the raw base pointer is only offset within
// the validated length. Owned storage is freed only in Drop, which needs `&mut self`.
unsafe impl Send for Arena {}
// SAFETY: as above; no method hands out non-atomic references into the region.
unsafe impl Sync for Arena {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("span_shift", &self.span_shift)
            .field("span_count", &self.span_count)
            .field("data_off", &self.data_off)
            .finish_non_exhaustive()
    }
}

#[cfg(all(any(feature = "alloc", test), not(flowipc_loom)))]
impl Drop for Arena {
    fn drop(&mut self) {
        let Storage::Raw {
            base,
            owned: Some(layout),
            ..
        } = self.storage
        else {
            return;
        };
        // SAFETY: `base` came from `alloc_zeroed(layout)` in `new_owned` and is freed only here.
        unsafe { alloc::alloc::dealloc(base.as_ptr(), layout) };
    }
}

/// Checks the header of a region of `len` bytes that another process (or an earlier `init`)
/// published: magic, version, and the geometry against what `len` and the span shift give.
/// Returns the span shift and the local geometry.
fn check_header(
    h: &ArenaHeader,
    len: u64,
) -> Result<(u32, u64, u64, [ClassInfo; NUM_CLASSES]), InitError> {
    // Relaxed load + Acquire fence rather than an Acquire load: the region may be mapped
    // read-only, where only Relaxed atomic loads are guaranteed not to write.
    if h.magic.load(Ordering::Relaxed) != MAGIC {
        return Err(InitError::BadMagic);
    }
    // SYNC POINT: pairs with the Release store of `magic` at the end of `write_header`.
    fence(Ordering::Acquire);
    if h.version.load(Ordering::Relaxed) != VERSION {
        return Err(InitError::BadVersion);
    }
    let span_shift = h.span_shift.load(Ordering::Relaxed);
    let (span_count, data_off, classes) = derive(len, span_shift)?;
    if h.region_len.load(Ordering::Relaxed) != len
        || h.span_count.load(Ordering::Relaxed) != span_count
        || h.data_off.load(Ordering::Relaxed) != data_off
    {
        return Err(InitError::Corrupt);
    }
    Ok((span_shift, span_count, data_off, classes))
}

/// Local geometry derived from `(len, span_shift)`.
fn derive(len: u64, span_shift: u32) -> Result<(u64, u64, [ClassInfo; NUM_CLASSES]), InitError> {
    if !(MIN_SPAN_SHIFT..=MAX_SPAN_SHIFT).contains(&span_shift) {
        return Err(InitError::BadSpanShift);
    }
    let (count, data_off) = layout::geometry(len, span_shift).ok_or(InitError::TooSmall)?;
    let classes = core::array::from_fn(|c| class_info(c, span_shift));
    Ok((count, data_off, classes))
}

impl Arena {
    /// Bytes of a region of `len` bytes with spans of `1 << span_shift` bytes that are not in spans
    /// (header, span table, padding), or `None` if no span fits.
    pub fn overhead(len: usize, span_shift: u32) -> Option<u64> {
        layout::geometry(len as u64, span_shift).map(|(n, _)| len as u64 - (n << span_shift))
    }

    /// Allocates a zeroed, 4096-aligned region of `len` bytes on the heap and initialises an arena
    /// in it (tests, fuzzing and single-process use).
    #[cfg(all(any(feature = "alloc", test), not(flowipc_loom)))]
    pub fn new_owned(len: usize, span_shift: u32) -> Result<Self, InitError> {
        derive(len as u64, span_shift)?;
        let layout = core::alloc::Layout::from_size_align(len, MAX_ALIGN)
            .map_err(|_| InitError::TooSmall)?;
        // SAFETY: `derive` succeeded, so `len >= HEADER_SIZE > 0`: the layout is not zero-sized.
        let base = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(base) else {
            alloc::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `base` is valid for `len` bytes, aligned to 4096, exclusively ours until dropped.
        let mut arena = unsafe { Self::init(base, len, span_shift) }?;
        let Storage::Raw { owned, .. } = &mut arena.storage;
        *owned = Some(layout);
        Ok(arena)
    }

    /// Builds an arena in loom-model storage standing for a region of `len` bytes.
    #[cfg(flowipc_loom)]
    pub fn new_owned(len: usize, span_shift: u32) -> Result<Self, InitError> {
        Self::init_model(&ModelRegion::new(len), span_shift)
    }

    /// [`Arena::init`] over loom-model storage: the same header write, ending in the Release
    /// store of the magic that [`Arena::attach_model`] pairs with.
    #[cfg(flowipc_loom)]
    pub fn init_model(
        region: &alloc::sync::Arc<ModelRegion>,
        span_shift: u32,
    ) -> Result<Self, InitError> {
        let len = region.len;
        let (span_count, data_off, classes) = derive(len as u64, span_shift)?;
        let arena = Arena {
            storage: Storage::Model(region.clone()),
            span_shift,
            span_count,
            data_off,
            classes,
        };
        arena.write_header(len as u64);
        Ok(arena)
    }

    /// [`Arena::attach`] over loom-model storage: the same header check.
    #[cfg(flowipc_loom)]
    pub fn attach_model(region: &alloc::sync::Arc<ModelRegion>) -> Result<Self, InitError> {
        let (span_shift, span_count, data_off, classes) =
            check_header(&region.header, region.len as u64)?;
        Ok(Arena {
            storage: Storage::Model(region.clone()),
            span_shift,
            span_count,
            data_off,
            classes,
        })
    }

    /// Initialises a new arena in `len` bytes at `base`, overwriting the header and span table.
    ///
    /// `span_shift` is `log2` of the span size ([`DEFAULT_SPAN_SHIFT`] = 256 KiB spans); smaller
    /// spans suit small regions.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads and writes of `len` bytes for the life of the returned `Arena`,
    /// aligned to 4096, and accessed by others (other processes included) only through arenas built
    /// on it and through blocks they allocate. No other `Arena` may be using the region during `init`.
    #[cfg(not(flowipc_loom))]
    pub unsafe fn init(base: NonNull<u8>, len: usize, span_shift: u32) -> Result<Self, InitError> {
        if base.as_ptr() as usize % MAX_ALIGN != 0 {
            return Err(InitError::Misaligned);
        }
        let (span_count, data_off, classes) = derive(len as u64, span_shift)?;
        let arena = Arena {
            #[cfg(any(feature = "alloc", test))]
            storage: Storage::Raw {
                base,
                len,
                owned: None,
            },
            #[cfg(not(any(feature = "alloc", test)))]
            storage: Storage::Raw { base, len },
            span_shift,
            span_count,
            data_off,
            classes,
        };
        arena.write_header(len as u64);
        Ok(arena)
    }

    /// Attaches to an arena that another process (or an earlier `init`) set up in `len` bytes at
    /// `base`, checking the header's magic, version and geometry against the mapping.
    ///
    /// # Safety
    ///
    /// As for [`Arena::init`]: `base` valid for reads and writes of `len` bytes for the life of the
    /// `Arena`, aligned to 4096, used by others only through arenas and their blocks. The content
    /// may be anything: a corrupt region yields errors, not undefined behaviour.
    #[cfg(not(flowipc_loom))]
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Self, InitError> {
        if base.as_ptr() as usize % MAX_ALIGN != 0 {
            return Err(InitError::Misaligned);
        }
        if (len as u64) < HEADER_SIZE {
            return Err(InitError::TooSmall);
        }
        // SAFETY: the region holds at least HEADER_SIZE bytes at a 4096-aligned base, and every
        // header field is atomic, so the peer may write it concurrently.
        let h = unsafe { &*base.as_ptr().cast::<ArenaHeader>() };
        let (span_shift, span_count, data_off, classes) = check_header(h, len as u64)?;
        Ok(Arena {
            #[cfg(any(feature = "alloc", test))]
            storage: Storage::Raw {
                base,
                len,
                owned: None,
            },
            #[cfg(not(any(feature = "alloc", test)))]
            storage: Storage::Raw { base, len },
            span_shift,
            span_count,
            data_off,
            classes,
        })
    }

    fn write_header(&self, len: u64) {
        let h = self.header();
        for i in 0..self.span_count {
            self.kind_word(i).store(0, Ordering::Relaxed);
            self.large_state(i).store(0, Ordering::Relaxed);
        }
        for hd in &h.small_heads {
            hd.store(head(NIL, 0), Ordering::Relaxed);
        }
        for hd in &h.large_heads {
            hd.store(head(NIL, 0), Ordering::Relaxed);
        }
        h.next_span.store(0, Ordering::Relaxed);
        h.pool_tag.store(0, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.span_shift.store(self.span_shift, Ordering::Relaxed);
        h.region_len.store(len, Ordering::Relaxed);
        h.span_count.store(self.span_count, Ordering::Relaxed);
        h.data_off.store(self.data_off, Ordering::Relaxed);
        // SYNC POINT: pairs with the Acquire load of `magic` in `attach`; publishes the rest.
        h.magic.store(MAGIC, Ordering::Release);
    }

    // ---- raw access ---------------------------------------------------------------------------------

    #[inline]
    fn header(&self) -> &ArenaHeader {
        match &self.storage {
            #[cfg(not(flowipc_loom))]
            // SAFETY: `init`/`attach` checked that `len >= HEADER_SIZE` at a 4096-aligned base; the
            // header is all atomics, so shared access is sound while the peer writes it.
            Storage::Raw { base, .. } => unsafe { &*base.as_ptr().cast::<ArenaHeader>() },
            #[cfg(flowipc_loom)]
            Storage::Model(region) => &region.header,
        }
    }

    /// The atomic word at byte offset `off`; `off` is 8-aligned, `>= HEADER_SIZE` and `off + 8 <= len`
    /// by construction (every caller derives it from validated indices).
    #[inline(always)]
    fn word(&self, off: u64) -> &AtomicU64 {
        debug_assert!(off >= HEADER_SIZE && off % 8 == 0);
        match &self.storage {
            #[cfg(not(flowipc_loom))]
            Storage::Raw { base, len, .. } => {
                assert!(off + 8 <= *len as u64, "arena word offset out of bounds");
                // SAFETY: in bounds (checked above) and 8-aligned (base is 4096-aligned, off 8-aligned);
                // all metadata words are accessed only atomically.
                unsafe { &*base.as_ptr().add(off as usize).cast::<AtomicU64>() }
            }
            #[cfg(flowipc_loom)]
            Storage::Model(region) => &region.words[((off - HEADER_SIZE) / 8) as usize],
        }
    }

    #[inline]
    fn kind_word(&self, span: u64) -> &AtomicU64 {
        debug_assert!(span < self.span_count);
        self.word(HEADER_SIZE + span * SPAN_ENTRY_SIZE)
    }

    #[inline]
    fn large_state(&self, span: u64) -> &AtomicU64 {
        debug_assert!(span < self.span_count);
        self.word(HEADER_SIZE + span * SPAN_ENTRY_SIZE + 8)
    }

    #[inline(always)]
    fn span_base(&self, span: u64) -> u64 {
        self.data_off + (span << self.span_shift)
    }

    #[inline(always)]
    fn small_state(&self, span: u64, i: u64) -> &AtomicU64 {
        self.word(self.span_base(span) + 8 * i)
    }

    #[inline(always)]
    fn small_offset(&self, c: usize, span: u64, i: u64) -> u64 {
        self.span_base(span) + self.classes[c].first + i * self.classes[c].block
    }

    /// Span kind, as claimed by the region.
    #[inline]
    fn kind(&self, span: u64) -> u64 {
        let kind = self.kind_word(span).load(Ordering::Relaxed);
        // SYNC POINT: pairs with the Release store of the kind when the span is carved. (A fence
        // instead of an Acquire load keeps this usable on read-only mappings; see `attach`.)
        fence(Ordering::Acquire);
        kind
    }

    /// Validates a small block id of class `c` read from the region.
    fn resolve_small(&self, c: usize, id: u32) -> Option<&AtomicU64> {
        let span = u64::from(id >> BLOCK_BITS);
        let i = u64::from(id & ((1 << BLOCK_BITS) - 1));
        if span >= self.span_count
            || i >= self.classes[c].count
            || self.kind(span) != KIND_SMALL | c as u64
        {
            return None;
        }
        Some(self.small_state(span, i))
    }

    /// Validates a large run id (first span) of order `k` read from the region.
    fn resolve_large(&self, k: usize, id: u32) -> Option<&AtomicU64> {
        let span = u64::from(id);
        if span >= self.span_count
            || (1u64 << k) > self.span_count - span
            || self.kind(span) != KIND_LARGE | k as u64
        {
            return None;
        }
        Some(self.large_state(span))
    }

    fn resolve(&self, kind: Kind, id: u32) -> Option<&AtomicU64> {
        match kind {
            Kind::Small(c) => self.resolve_small(c, id),
            Kind::Large(k) => self.resolve_large(k, id),
        }
    }

    fn list_head(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Small(c) => &self.header().small_heads[c],
            Kind::Large(k) => &self.header().large_heads[k],
        }
    }

    // ---- free lists ---------------------------------------------------------------------------------

    /// Pops a block off the list of `kind` and marks it allocated with refcount 1.
    /// Returns the block id and its generation, or `None` if the list is empty.
    fn pop(&self, kind: Kind) -> Result<Option<(u32, u32)>, AllocError> {
        let list = self.list_head(kind);
        // SYNC POINT: pairs with the Release CAS in `push` (and the release sequence of later CASes
        // on this head): makes the pushed block's state word and the freeing side's writes visible.
        let mut h = list.load(Ordering::Acquire);
        for _ in 0..MAX_RETRIES {
            let id = head_id(h);
            if id == NIL {
                return Ok(None);
            }
            let next_ok = self.resolve(kind, id).and_then(|st| {
                // SYNC POINT: Acquire pairs with the Release of the claim CAS below in another
                // popper: if we see the block already claimed, we also see the head CAS that came
                // before the claim, so the re-load of the head below cannot return the stale `h`.
                let s = st.load(Ordering::Acquire);
                let next = st_field(s);
                let valid = !st_is_alloc(s) && (next == NIL || self.resolve(kind, next).is_some());
                valid.then_some((st, s, next))
            });
            let Some((st, s, next)) = next_ok else {
                // Either `h` is stale (the block was popped meanwhile) or the region is corrupt.
                // SYNC POINT: as the first load of the head.
                let now = list.load(Ordering::Acquire);
                if now == h {
                    return Err(AllocError::Corrupt);
                }
                h = now;
                continue;
            };
            let new = head(next, head_tag(h).wrapping_add(1));
            // SYNC POINT: success AcqRel pairs with `push`'s Release CAS (we take over the block) and
            // continues the release sequence for later poppers; failure Acquire as the first load.
            match list.compare_exchange(h, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // The tag did not change since we read `s`, so `s` is the block's current state
                    // and the block is now ours: nobody else writes its state word until it is
                    // allocated (free and release CAS it from "allocated" only), so a store does.
                    let gen = st_gen(s);
                    // SYNC POINT: Release pairs with the Acquire state load above in a popper
                    // holding a stale head (see there).
                    st.store(st_alloc(gen, 1), Ordering::Release);
                    return Ok(Some((id, gen)));
                }
                Err(now) => h = now,
            }
        }
        Err(AllocError::Contended)
    }

    /// Pushes the chain `first ..= last` (linked through their state words already, `last_state`
    /// being `last`'s word) onto the list of `kind`, setting `last`'s state to `free(gen, old head)`.
    fn push(
        &self,
        kind: Kind,
        first: u32,
        last_state: &AtomicU64,
        gen: u32,
    ) -> Result<(), BlockError> {
        let list = self.list_head(kind);
        let mut h = list.load(Ordering::Relaxed);
        for _ in 0..MAX_RETRIES {
            // Only we own the chain, but a popper holding a stale head may read this word.
            // SYNC POINT: Release pairs with the Acquire state load in `pop` / `refill`: a popper
            // that sees this link also sees what made it valid (the span carving behind the old
            // head) and the head CASes before ours, so its re-load of the head is not stale and
            // it does not mistake a stale view for corruption.
            last_state.store(st_free(gen, head_id(h)), Ordering::Release);
            let new = head(first, head_tag(h).wrapping_add(1));
            // SYNC POINT: Release pairs with the Acquire load / AcqRel CAS of the head in `pop`,
            // publishing the state word above and every write the freeing process made to the block.
            match list.compare_exchange(h, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => h = now,
            }
        }
        Err(BlockError::Contended)
    }

    /// Takes `n` spans from the bump pointer; returns the first.
    fn carve(&self, n: u64) -> Result<u64, AllocError> {
        let bump = &self.header().next_span;
        let mut cur = bump.load(Ordering::Relaxed);
        for _ in 0..MAX_RETRIES {
            // A peer may have written anything: clamp before use.
            if cur > self.span_count || n > self.span_count - cur {
                return Err(AllocError::OutOfMemory);
            }
            // Relaxed: the bump only reserves; the spans are published by the Release kind stores.
            match bump.compare_exchange(cur, cur + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(cur),
                Err(now) => cur = now,
            }
        }
        Err(AllocError::Contended)
    }

    // ---- allocation ---------------------------------------------------------------------------------

    /// Allocates `size` bytes aligned to `align` (a power of two up to [`MAX_ALIGN`] and the span
    /// size) and returns the block's offset. The block starts with refcount 1.
    ///
    /// Sizes up to 64 KiB that fit a span come from the small classes (rounded up to a power of two,
    /// at least 16); larger ones take a run of `2^k` whole spans.
    pub fn alloc(&self, size: usize, align: usize) -> Result<Offset, AllocError> {
        self.check_align(align)?;
        let need = (size.max(align) as u64).max(MIN_BLOCK);
        match self.small_class(need) {
            Some(c) => self.alloc_small(c),
            None => self.alloc_large(need),
        }
    }

    /// The small class serving `need` bytes, if one does (and fits a span).
    #[inline]
    fn small_class(&self, need: u64) -> Option<usize> {
        if need > MAX_SMALL_BLOCK {
            return None;
        }
        let c = (need.next_power_of_two().trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize;
        (self.classes[c].count > 0).then_some(c)
    }

    /// Checks `align` for [`Arena::alloc`].
    #[inline]
    fn check_align(&self, align: usize) -> Result<(), AllocError> {
        if !align.is_power_of_two() || align > MAX_ALIGN || align as u64 > (1u64 << self.span_shift)
        {
            return Err(AllocError::BadAlign);
        }
        Ok(())
    }

    fn alloc_small(&self, c: usize) -> Result<Offset, AllocError> {
        let info = self.classes[c];
        let id = match self.pop(Kind::Small(c))? {
            Some((id, _gen)) => id,
            None => {
                let span = self.carve(1)?;
                // Block 0 is ours; blocks 1.. are chained and pushed.
                for i in 1..info.count - 1 {
                    let next = ((span as u32) << BLOCK_BITS) | (i as u32 + 1);
                    self.small_state(span, i)
                        .store(st_free(0, next), Ordering::Relaxed);
                }
                self.small_state(span, 0)
                    .store(st_alloc(0, 1), Ordering::Relaxed);
                // SYNC POINT: pairs with the Acquire kind load in `resolve_small` / `locate`.
                self.kind_word(span)
                    .store(KIND_SMALL | c as u64, Ordering::Release);
                if info.count > 1 {
                    let first = ((span as u32) << BLOCK_BITS) | 1;
                    // Pushing can fail only under pathological contention: then the span's free
                    // blocks leak (bounded: one span), but block 0 is still ours.
                    let _ = self.push(
                        Kind::Small(c),
                        first,
                        self.small_state(span, info.count - 1),
                        0,
                    );
                }
                (span as u32) << BLOCK_BITS
            }
        };
        let span = u64::from(id >> BLOCK_BITS);
        let i = u64::from(id & ((1 << BLOCK_BITS) - 1));
        Ok(Offset(self.small_offset(c, span, i)))
    }

    fn alloc_large(&self, need: u64) -> Result<Offset, AllocError> {
        let spans = need.div_ceil(1u64 << self.span_shift);
        let k = spans.next_power_of_two().trailing_zeros() as usize;
        if k >= NUM_ORDERS || (1u64 << k) > self.span_count {
            return Err(AllocError::TooLarge);
        }
        let span = match self.pop(Kind::Large(k))? {
            Some((id, _gen)) => u64::from(id),
            None => {
                let span = self.carve(1 << k)?;
                for s in span + 1..span + (1 << k) {
                    self.kind_word(s).store(KIND_CONT, Ordering::Relaxed);
                }
                self.large_state(span)
                    .store(st_alloc(0, 1), Ordering::Relaxed);
                // SYNC POINT: pairs with the Acquire kind load in `resolve_large` / `locate`.
                self.kind_word(span)
                    .store(KIND_LARGE | k as u64, Ordering::Release);
                span
            }
        };
        Ok(Offset(self.span_base(span)))
    }

    // ---- existing blocks ----------------------------------------------------------------------------

    /// Finds the block starting at `off`: its state word, kind, id and capacity.
    #[inline]
    fn locate(&self, off: Offset) -> Result<(&AtomicU64, Kind, u32, u64), BlockError> {
        let off = off.0;
        let end = self.data_off + (self.span_count << self.span_shift);
        if off < self.data_off || off >= end {
            return Err(BlockError::OutOfRange);
        }
        let span = (off - self.data_off) >> self.span_shift;
        let rel = off - self.span_base(span);
        let kind = self.kind(span);
        if kind & !0xff == KIND_SMALL && ((kind & 0xff) as usize) < NUM_CLASSES {
            let c = (kind & 0xff) as usize;
            let info = self.classes[c];
            // `block` is a power of two: mask and shift instead of dividing.
            if info.count == 0 || rel < info.first || (rel - info.first) & (info.block - 1) != 0 {
                return Err(BlockError::NotABlock);
            }
            let i = (rel - info.first) >> info.block.trailing_zeros();
            if i >= info.count {
                return Err(BlockError::NotABlock);
            }
            let id = ((span as u32) << BLOCK_BITS) | i as u32;
            Ok((self.small_state(span, i), Kind::Small(c), id, info.block))
        } else if kind & !0xff == KIND_LARGE && ((kind & 0xff) as usize) < NUM_ORDERS {
            let k = (kind & 0xff) as usize;
            if rel != 0 || (1u64 << k) > self.span_count - span {
                return Err(BlockError::NotABlock);
            }
            Ok((
                self.large_state(span),
                Kind::Large(k),
                span as u32,
                (1u64 << k) << self.span_shift,
            ))
        } else {
            Err(BlockError::NotABlock)
        }
    }

    #[inline]
    fn free_error(s: u64) -> BlockError {
        if st_gen(s) == 0 {
            BlockError::NotAllocated
        } else {
            BlockError::DoubleFree
        }
    }

    /// After winning the CAS to `free(gen)`: account and push.
    fn finish_free(&self, kind: Kind, id: u32, st: &AtomicU64, gen: u32) -> Result<(), BlockError> {
        self.push(kind, id, st, gen)
    }

    /// Frees the block at `off` whatever its reference count.
    ///
    /// A second free of the same block, an offset that is not a block start, or a free block return
    /// an error and leave the free lists intact.
    pub fn free(&self, off: Offset) -> Result<(), BlockError> {
        let (st, kind, id, gen) = self.claim_free(off)?;
        self.finish_free(kind, id, st, gen)
    }

    /// The CAS `allocated(g) -> free(g + 1)` on the block at `off`: after it, the caller alone owns
    /// the (now free) block and must push it on a list (or cache it). Returns the new generation.
    #[inline]
    fn claim_free(&self, off: Offset) -> Result<(&AtomicU64, Kind, u32, u32), BlockError> {
        let (st, kind, id, _) = self.locate(off)?;
        let mut s = st.load(Ordering::Relaxed);
        for _ in 0..MAX_RETRIES {
            if !st_is_alloc(s) {
                return Err(Self::free_error(s));
            }
            let gen = st_gen(s).wrapping_add(1);
            // SYNC POINT: AcqRel pairs with the AcqRel CASes of `release` by other holders, so their
            // reads of the block happen before it is reused.
            match st.compare_exchange(s, st_free(gen, NIL), Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok((st, kind, id, gen)),
                Err(now) => s = now,
            }
        }
        Err(BlockError::Contended)
    }

    /// Reports the generation, capacity and reference count of the allocated block at `off`.
    pub fn info(&self, off: Offset) -> Result<BlockInfo, BlockError> {
        let (st, _, _, capacity) = self.locate(off)?;
        let s = st.load(Ordering::Relaxed);
        if !st_is_alloc(s) {
            return Err(Self::free_error(s));
        }
        Ok(BlockInfo {
            generation: st_gen(s),
            capacity,
            refcount: st_field(s),
        })
    }

    /// Adds one reference to the block at `off`, which must still be at generation `gen`.
    /// Returns the new count.
    pub fn retain(&self, off: Offset, gen: u32) -> Result<u32, BlockError> {
        let (st, ..) = self.locate(off)?;
        let mut s = st.load(Ordering::Relaxed);
        for _ in 0..MAX_RETRIES {
            let refs = Self::check_live(s, gen)?;
            if refs >= MAX_REFCOUNT {
                return Err(BlockError::RefcountOverflow);
            }
            // Relaxed: taking a reference from one we hold needs no ordering (as `Arc::clone`).
            match st.compare_exchange(
                s,
                st_alloc(gen, refs + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(refs + 1),
                Err(now) => s = now,
            }
        }
        Err(BlockError::Contended)
    }

    /// Drops one reference to the block at `off` (generation `gen`); the release that drops the last
    /// one frees the block and returns `true`.
    pub fn release(&self, off: Offset, gen: u32) -> Result<bool, BlockError> {
        let (st, kind, id, _) = self.locate(off)?;
        let mut s = st.load(Ordering::Relaxed);
        for _ in 0..MAX_RETRIES {
            let refs = Self::check_live(s, gen)?;
            let last = refs == 1;
            let new = if last {
                st_free(gen.wrapping_add(1), NIL)
            } else {
                st_alloc(gen, refs - 1)
            };
            // SYNC POINT: Release orders our use of the block before the count drop; Acquire (for the
            // last one) pairs with the other holders' releases, as in `Arc::drop`.
            match st.compare_exchange(s, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) if last => {
                    return self
                        .finish_free(kind, id, st, gen.wrapping_add(1))
                        .map(|()| true)
                }
                Ok(_) => return Ok(false),
                Err(now) => s = now,
            }
        }
        Err(BlockError::Contended)
    }

    /// Checks that `s` is allocated at generation `gen` with a sane count; returns the count.
    fn check_live(s: u64, gen: u32) -> Result<u32, BlockError> {
        if !st_is_alloc(s) || st_gen(s) != gen {
            return Err(BlockError::StaleGeneration);
        }
        match st_field(s) {
            0 => Err(BlockError::Corrupt),
            n => Ok(n),
        }
    }

    /// Checks a handle received from a peer against this arena: the offset is a live block at the
    /// handle's generation and `len` fits its capacity. (The pool id is the caller's business.)
    pub fn check_handle(&self, h: &ArenaHandle) -> Result<BlockInfo, BlockError> {
        let info = match self.info(Offset(h.offset)) {
            Err(BlockError::NotAllocated | BlockError::DoubleFree) => {
                return Err(BlockError::StaleGeneration)
            }
            other => other?,
        };
        if info.generation != h.generation {
            return Err(BlockError::StaleGeneration);
        }
        if h.len > info.capacity {
            return Err(BlockError::TooLong);
        }
        Ok(info)
    }

    /// Usage statistics, counted by walking the carved spans' state words (there are no shared
    /// counters, so allocation and free pay nothing for them). The walk is not atomic: taken while
    /// others allocate, it is a blend of before and after. Cost: one load per block of every
    /// carved span (about 10 000 per 256 KiB span of 16-byte blocks).
    pub fn stats(&self) -> ArenaStats {
        let carved = self
            .header()
            .next_span
            .load(Ordering::Relaxed)
            .min(self.span_count);
        let mut out = ArenaStats {
            classes: [ClassStats::default(); NUM_CLASSES],
            large_blocks_in_use: 0,
            large_bytes_in_use: 0,
            spans_carved: carved,
            spans_total: self.span_count,
        };
        for (c, cs) in out.classes.iter_mut().enumerate() {
            cs.block_size = self.classes[c].block;
        }
        for span in 0..carved {
            let kind = self.kind(span);
            let tag = kind & !0xff;
            let n = (kind & 0xff) as usize;
            if tag == KIND_SMALL && n < NUM_CLASSES && self.classes[n].count > 0 {
                let cs = &mut out.classes[n];
                cs.spans += 1;
                for i in 0..self.classes[n].count {
                    if st_is_alloc(self.small_state(span, i).load(Ordering::Relaxed)) {
                        cs.blocks_in_use += 1;
                    }
                }
            } else if tag == KIND_LARGE
                && n < NUM_ORDERS
                && (1u64 << n) <= self.span_count - span
                && st_is_alloc(self.large_state(span).load(Ordering::Relaxed))
            {
                out.large_blocks_in_use += 1;
                out.large_bytes_in_use += (1u64 << n) << self.span_shift;
            }
        }
        out
    }

    /// The user's tag stored in the header (flowipc keeps the pool id there). A claim by the peer.
    pub fn pool_tag(&self) -> u64 {
        self.header().pool_tag.load(Ordering::Relaxed)
    }

    /// Stores the user's tag in the header (the creator does this once, before sharing the region).
    pub fn set_pool_tag(&self, tag: u64) {
        self.header().pool_tag.store(tag, Ordering::Relaxed);
    }

    /// Bytes per span.
    pub fn span_size(&self) -> u64 {
        1 << self.span_shift
    }

    /// Pointer to `len` bytes at `off`, if they lie inside the region (the block need not be live:
    /// check with [`Arena::info`] or [`Arena::check_handle`] first).
    ///
    /// Dereferencing it is the caller's `unsafe`: the peer may write those bytes concurrently.
    #[cfg(not(flowipc_loom))]
    pub fn payload_ptr(&self, off: Offset, len: u64) -> Option<NonNull<u8>> {
        let Storage::Raw {
            base, len: region, ..
        } = &self.storage;
        let end = off.0.checked_add(len)?;
        if off.0 < self.data_off || end > *region as u64 {
            return None;
        }
        // SAFETY: `off < end <= region length`, so the result stays inside the region's allocation.
        NonNull::new(unsafe { base.as_ptr().add(off.0 as usize) })
    }

    /// Usable capacity of a block of class rounded from `size`, as `alloc(size, 1)` would give it.
    pub fn block_size_for(&self, size: usize) -> u64 {
        let need = (size as u64).max(MIN_BLOCK);
        if need <= MAX_SMALL_BLOCK {
            let c =
                (need.next_power_of_two().trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize;
            if self.classes[c].count > 0 {
                return self.classes[c].block;
            }
        }
        round_up(need, 1 << self.span_shift).next_power_of_two()
    }
}

/// A read-only attachment to an arena that another process owns (the lend mode): it can check
/// handles and locate their bytes, nothing else. Every access it makes is a Relaxed atomic load
/// (plus fences), which is sound on a `PROT_READ` mapping.
#[cfg(not(flowipc_loom))]
#[derive(Debug)]
pub struct ArenaReader {
    inner: Arena,
}

#[cfg(not(flowipc_loom))]
impl ArenaReader {
    /// Attaches read-only to the arena in `len` bytes at `base`, checking the header as
    /// [`Arena::attach`] does.
    ///
    /// # Safety
    ///
    /// `base` must be valid for reads of `len` bytes for the life of the reader and aligned to
    /// 4096; it may be mapped read-only. Its content may be anything and may change at any time.
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Self, InitError> {
        // SAFETY: forwarded from the caller; `Arena::attach` only loads (Relaxed), and the reader
        // exposes no method that stores.
        unsafe { Arena::attach(base, len) }.map(|inner| ArenaReader { inner })
    }

    /// Checks a handle as [`Arena::check_handle`] does.
    pub fn check_handle(&self, h: &ArenaHandle) -> Result<BlockInfo, BlockError> {
        self.inner.check_handle(h)
    }

    /// The pool tag in the header (a claim by the owner).
    pub fn pool_tag(&self) -> u64 {
        self.inner.pool_tag()
    }

    /// Pointer to `len` bytes at `off` if they lie inside the region; see [`Arena::payload_ptr`].
    pub fn payload_ptr(&self, off: Offset, len: u64) -> Option<NonNull<u8>> {
        self.inner.payload_ptr(off, len)
    }
}
