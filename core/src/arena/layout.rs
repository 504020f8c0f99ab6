//! The bytes of an arena region: the `#[repr(C)]` header, the span table and the encodings of the
//! words stored in them.
//!
//! ```text
//! offset 0            HEADER_SIZE                        data_off (multiple of the span size)
//! | ArenaHeader        | span table: 2 words per span | pad | span 0 | span 1 | ... | span n-1 |
//! ```
//!
//! A span table entry is `[kind, state]`: `kind` says what the span holds (unused, blocks of one small
//! class, the first span of a large run, or a continuation of one); `state` is the block state word of
//! a large run. A small span starts with one state word per block, followed by the blocks themselves,
//! the first one at a multiple of the block size.

use crate::sync::{AtomicU32, AtomicU64};

/// `b"flowARNA"` as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"flowARNA");
/// Layout version; bumped on any change to this file. 2: free blocks held by a thread cache carry
/// the link [`CACHED`].
pub const VERSION: u32 = 2;

/// Number of small size classes: payloads of 16 B, 32 B, ... 64 KiB.
pub const NUM_CLASSES: usize = 13;
/// Smallest block, and the granule of every block size.
pub const MIN_BLOCK: u64 = 16;
/// Largest small block (class `NUM_CLASSES - 1`).
pub const MAX_SMALL_BLOCK: u64 = MIN_BLOCK << (NUM_CLASSES - 1);
/// Number of large-run orders: a run of order `k` is `2^k` spans.
pub const NUM_ORDERS: usize = 17;

/// Smallest allowed `log2(span size)` (256 B, used by loom models).
pub const MIN_SPAN_SHIFT: u32 = 8;
/// Largest allowed `log2(span size)` (256 KiB, the default).
pub const MAX_SPAN_SHIFT: u32 = 18;
/// Default `log2(span size)`.
pub const DEFAULT_SPAN_SHIFT: u32 = 18;

/// Bits of a block id that hold the block index within its span.
pub const BLOCK_BITS: u32 = 14;
/// "No block": the end of a free list. Fits the 31-bit link field of a state word.
pub const NIL: u32 = (1 << 31) - 1;
/// Link of a free block that a thread cache holds (out of every shared list). Never a block id:
/// the largest id is `(MAX_SPANS - 1) << BLOCK_BITS | ((1 << BLOCK_BITS) - 2)`, below it.
pub const CACHED: u32 = NIL - 1;
/// Most spans a region may hold, so that every block id stays below [`NIL`].
pub const MAX_SPANS: u64 = (NIL >> BLOCK_BITS) as u64;

static_assertions::const_assert!(
    (((MAX_SPANS - 1) << BLOCK_BITS) | ((1 << BLOCK_BITS) - 2)) < CACHED as u64
);

/// Bytes per span table entry.
pub const SPAN_ENTRY_SIZE: u64 = 16;

/// Span kind: not carved yet.
pub const KIND_UNUSED: u64 = 0;
/// Span kind tag: blocks of small class `kind & 0xff`.
pub const KIND_SMALL: u64 = 1 << 8;
/// Span kind tag: first span of a large run of order `kind & 0xff`.
pub const KIND_LARGE: u64 = 2 << 8;
/// Span kind: a later span of a large run.
pub const KIND_CONT: u64 = 3 << 8;

// The kinds are told apart by their tag byte, and a class or order fits below it.
static_assertions::const_assert!(
    KIND_UNUSED >> 8 == 0 && KIND_SMALL >> 8 == 1 && KIND_LARGE >> 8 == 2 && KIND_CONT >> 8 == 3
);

/// The header at offset 0 of every arena region.
///
/// Every field is atomic because the peer may write any of them at any time; after `attach` only
/// the allocation fields are used, and the geometry is recomputed locally and compared.
#[repr(C)]
pub struct ArenaHeader {
    /// [`MAGIC`], stored last by `init` (Release) and checked first by `attach` (Acquire).
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// `log2` of the span size.
    pub span_shift: AtomicU32,
    /// Length of the whole region in bytes.
    pub region_len: AtomicU64,
    /// Number of spans in the region.
    pub span_count: AtomicU64,
    /// Offset of span 0.
    pub data_off: AtomicU64,
    /// Free for the user of the arena (flowipc stores the pool id here); never interpreted.
    pub pool_tag: AtomicU64,
    /// Reserved, zero.
    pub reserved0: [AtomicU64; 2],
    /// Bump pointer: index of the first span never carved.
    pub next_span: AtomicU64,
    /// Reserved, zero (keeps `next_span` on its own cache line).
    pub reserved1: [AtomicU64; 7],
    /// Tagged heads of the small-class free lists: `tag << 32 | block id`.
    pub small_heads: [AtomicU64; NUM_CLASSES],
    /// Tagged heads of the large-run free lists: `tag << 32 | first span`.
    pub large_heads: [AtomicU64; NUM_ORDERS],
    /// Reserved, zero.
    pub reserved2: [AtomicU64; 34],
}

/// Size of [`ArenaHeader`]; the span table starts here.
pub const HEADER_SIZE: u64 = 640;

#[cfg(not(flowipc_loom))]
mod layout_checks {
    use super::ArenaHeader;
    use core::mem::{align_of, offset_of, size_of};
    static_assertions::const_assert_eq!(size_of::<ArenaHeader>() as u64, super::HEADER_SIZE);
    static_assertions::const_assert_eq!(align_of::<ArenaHeader>(), 8);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, magic), 0);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, version), 8);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, span_shift), 12);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, region_len), 16);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, span_count), 24);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, data_off), 32);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, pool_tag), 40);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, next_span), 64);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, small_heads), 128);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, large_heads), 232);
    static_assertions::const_assert_eq!(offset_of!(ArenaHeader, reserved2), 368);
    // The atomics have the layout of the plain integers the peer sees.
    static_assertions::assert_eq_size!(crate::sync::AtomicU64, u64);
    static_assertions::assert_eq_align!(crate::sync::AtomicU64, u64);
}

impl ArenaHeader {
    /// A zeroed header (loom models and owned regions).
    #[cfg(flowipc_loom)]
    pub fn zeroed() -> Self {
        fn z<const N: usize>() -> [AtomicU64; N] {
            core::array::from_fn(|_| AtomicU64::new(0))
        }
        ArenaHeader {
            magic: AtomicU64::new(0),
            version: AtomicU32::new(0),
            span_shift: AtomicU32::new(0),
            region_len: AtomicU64::new(0),
            span_count: AtomicU64::new(0),
            data_off: AtomicU64::new(0),
            pool_tag: AtomicU64::new(0),
            reserved0: z(),
            next_span: AtomicU64::new(0),
            reserved1: z(),
            small_heads: z(),
            large_heads: z(),
            reserved2: z(),
        }
    }
}

// ---- block state word ----------------------------------------------------------------------------
//
// bit 0        1 = allocated
// bits 1..32   free: id of the next free block (NIL ends the list); allocated: reference count
// bits 32..64  generation, incremented by every free

/// State word of a free block.
#[inline]
pub const fn st_free(gen: u32, link: u32) -> u64 {
    ((gen as u64) << 32) | (((link & NIL) as u64) << 1)
}

/// State word of an allocated block.
#[inline]
pub const fn st_alloc(gen: u32, refs: u32) -> u64 {
    ((gen as u64) << 32) | (((refs & NIL) as u64) << 1) | 1
}

/// Whether the state word says "allocated".
#[inline]
pub const fn st_is_alloc(s: u64) -> bool {
    s & 1 == 1
}

/// Generation of a state word.
#[inline]
pub const fn st_gen(s: u64) -> u32 {
    (s >> 32) as u32
}

/// Link (free) or reference count (allocated) of a state word; at most [`NIL`].
#[inline]
pub const fn st_field(s: u64) -> u32 {
    ((s >> 1) as u32) & NIL
}

// ---- tagged free-list head -------------------------------------------------------------------------

/// A free-list head: `tag << 32 | id`. The tag changes on every successful CAS, so a head that
/// was popped and pushed back (ABA) no longer compares equal.
#[inline]
pub const fn head(id: u32, tag: u32) -> u64 {
    ((tag as u64) << 32) | id as u64
}

/// Block id in a head.
#[inline]
pub const fn head_id(h: u64) -> u32 {
    h as u32
}

/// Tag in a head.
#[inline]
pub const fn head_tag(h: u64) -> u32 {
    (h >> 32) as u32
}

// ---- geometry --------------------------------------------------------------------------------------

/// Where the blocks of one small class sit in a span; computed locally, never read from the region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassInfo {
    /// Block size in bytes.
    pub block: u64,
    /// Blocks per span; 0 when the class does not fit a span (its sizes go to the large path).
    pub count: u64,
    /// Offset of block 0 within the span (after the state words, rounded up to `block`).
    pub first: u64,
}

/// Round `x` up to a multiple of the power of two `a`.
#[inline]
pub const fn round_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

/// Geometry of small class `c` in spans of `1 << span_shift` bytes.
pub fn class_info(c: usize, span_shift: u32) -> ClassInfo {
    debug_assert!(c < NUM_CLASSES);
    let block = MIN_BLOCK << c;
    let span = 1u64 << span_shift;
    // 8 bytes of state per block plus the block. The bound without rounding is exact: block and
    // span are powers of two, so with `m = span / block` (an integer once block <= span),
    // `n * (block + 8) <= span` gives `n + 8n / block <= m`, hence `n + ceil(8n / block) <= m`,
    // which is `round_up(8n, block) + n * block <= span`. A block larger than the span gives 0.
    // The cap keeps every block index inside BLOCK_BITS (it binds only past MAX_SPAN_SHIFT).
    let n = (span / (block + 8)).min((1 << BLOCK_BITS) - 1);
    debug_assert!(n == 0 || round_up(8 * n, block) + n * block <= span);
    ClassInfo {
        block,
        count: n,
        first: if n == 0 { 0 } else { round_up(8 * n, block) },
    }
}

/// Span count and offset of span 0 for a region of `len` bytes, or `None` if not even one span fits.
pub fn geometry(len: u64, span_shift: u32) -> Option<(u64, u64)> {
    let span = 1u64 << span_shift;
    let avail = len.checked_sub(HEADER_SIZE)?;
    let mut n = (avail / (span + SPAN_ENTRY_SIZE)).min(MAX_SPANS);
    while n > 0 {
        let data_off = round_up(HEADER_SIZE + n * SPAN_ENTRY_SIZE, span);
        if data_off + n * span <= len {
            return Some((n, data_off));
        }
        n -= 1;
    }
    None
}
