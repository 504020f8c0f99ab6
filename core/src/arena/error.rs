//! Error types of the arena, one per kind of operation.

use core::fmt;

/// Why [`Arena::alloc`](super::Arena::alloc) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// `align` is not a power of two, or exceeds the supported maximum (4096 and the span size).
    BadAlign,
    /// The size exceeds the largest run the region can describe.
    TooLarge,
    /// No free block of this size and no uncarved span left.
    OutOfMemory,
    /// A compare-and-swap kept failing past the retry bound (a peer hammering the same list).
    Contended,
    /// A free list or block state in the region is inconsistent: the peer corrupted it.
    Corrupt,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadAlign => {
                "alignment must be a power of two no larger than 4096 and the span size"
            }
            Self::TooLarge => "allocation larger than the arena can hold",
            Self::OutOfMemory => "arena is full; free blocks or create a larger arena",
            Self::Contended => "allocation gave up after too many failed compare-and-swaps",
            Self::Corrupt => "arena metadata is corrupt (written by a buggy or hostile peer)",
        })
    }
}

impl core::error::Error for AllocError {}

/// Why an operation on an existing block (free, retain, release, info, handle check) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The offset lies outside the arena's data area.
    OutOfRange,
    /// The offset is inside the arena but is not the start of a block.
    NotABlock,
    /// The block is free and was never allocated since its span was carved.
    NotAllocated,
    /// The block is free and had been allocated before: a double free or a use after free.
    DoubleFree,
    /// The block was freed and reallocated since the caller's generation.
    StaleGeneration,
    /// The requested length exceeds the block's capacity.
    TooLong,
    /// The block's reference count is at its maximum.
    RefcountOverflow,
    /// A compare-and-swap kept failing past the retry bound.
    Contended,
    /// The block's state word is inconsistent: the peer corrupted it.
    Corrupt,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => "offset outside the arena",
            Self::NotABlock => "offset is not the start of a block",
            Self::NotAllocated => "block is not allocated",
            Self::DoubleFree => "block already freed (double free or use after free)",
            Self::StaleGeneration => "block was freed and reused since this handle was made",
            Self::TooLong => "length exceeds the block's capacity",
            Self::RefcountOverflow => "reference count overflow",
            Self::Contended => "gave up after too many failed compare-and-swaps",
            Self::Corrupt => "block state is corrupt (written by a buggy or hostile peer)",
        })
    }
}

impl core::error::Error for BlockError {}

/// Why [`Arena::init`](super::Arena::init) or [`Arena::attach`](super::Arena::attach) refused a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The region's base is not 4096-byte aligned.
    Misaligned,
    /// The region cannot hold the header, the span table and one span.
    TooSmall,
    /// The span shift is outside the supported range.
    BadSpanShift,
    /// The header's magic is wrong: not an arena, or not initialised yet.
    BadMagic,
    /// The header's layout version is not the one this build understands.
    BadVersion,
    /// The header's geometry (length, span count, data offset) does not match the mapping.
    Corrupt,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Misaligned => "arena region must be 4096-byte aligned",
            Self::TooSmall => "arena region too small for its header and one span",
            Self::BadSpanShift => "span shift outside 8..=18",
            Self::BadMagic => "not an arena region (bad magic)",
            Self::BadVersion => "arena layout version not supported by this build",
            Self::Corrupt => "arena header geometry does not match the region",
        })
    }
}

impl core::error::Error for InitError {}
