//! The shared layout of a jemalloc lend pool: what the owner writes and a borrower reads.
//!
//! # Layout
//!
//! The region (one memfd, mapped read-write by its owner only and read-only by borrowers) starts
//! with a [`PoolHeader`] (magic [`POOL_MAGIC`], version [`POOL_VERSION`], pool id, length) in a
//! reserved [`POOL_HEADER`] bytes, so that a borrower can tell a jemalloc pool from a core arena
//! by the word at offset 0. Everything after it is jemalloc's: extents carved by the hooks, holding
//! jemalloc's metadata and the blocks it hands out.
//!
//! Each object is preceded by a 16-byte [`ObjHeader`], 16-aligned: a state word with the layout
//! of the core arena's (`generation:32 | refcount:31 | allocated:1`,
//! [`flowipc_core::arena::layout`]), the object's length and a tag (the magic [`OBJ_MAGIC`], the
//! header's colour and the block's size class, so a free finds its block and bin without
//! recomputing the class). Small objects' headers start their blocks; larger ones may sit up to
//! [`COLOURS`]` - 1` cache lines in (slab colouring, see the owner's `colour`).
//!
//! # Invariants
//!
//! - Only the owner process writes either header (borrowers' mappings are `PROT_READ` and the
//!   memfd is sealed `F_SEAL_FUTURE_WRITE`); every field is an atomic, so a borrower's loads
//!   race with no plain write.
//! - The pool header is written once, before the owner hands out the descriptor; its magic is
//!   stored last with Release (SYNC POINT, paired with the Acquire fence in the reader's `open`).
//! - To a borrower every header is a claim: [`tag_ok`] refuses a colour of [`COLOURS`] or more, so
//!   [`block_of`] never points before the block even for a tag the owner did not write; offsets,
//!   lengths and states are checked by the reader before use.
//! - The sizes and field offsets below are checked at compile time: changing them changes the
//!   format, and with it [`POOL_VERSION`].
//!
//! Compiled with or without the `jemalloc` feature: reading a pool needs no jemalloc.

// The tag helpers and classes that only the owner uses are dead code without the `jemalloc`
// feature, where only the reader is built.
#![cfg_attr(not(feature = "jemalloc"), allow(dead_code))]

use std::sync::atomic::{AtomicU32, AtomicU64};

/// `b"flowJEMP"`: a jemalloc lend pool.
pub(super) const POOL_MAGIC: u64 = u64::from_le_bytes(*b"flowJEMP");
/// 3: the object header's last word is a tag of magic, colour and size class, and the header
/// may sit some cache lines into its block (2: no colour; 1: a plain magic).
pub(super) const POOL_VERSION: u64 = 3;
/// Marks an object header: the tag's upper 16 bits (`b"jo"`). Below them, a byte of colour
/// (how many [`COLOUR_LINE`]s the header sits after the start of its block) and a byte of the
/// block's size class.
pub(super) const OBJ_MAGIC: u32 = 0x6a6f_0000;
/// The tag's class byte of a block allocated and freed at its exact size (beyond the cache).
pub(super) const CLASS_LARGE: u32 = 0xff;
/// The unit of a header's colour: a cache line.
pub(super) const COLOUR_LINE: usize = 64;
/// Colours a block's header may take: up to 15 lines into the block.
pub(super) const COLOURS: usize = 16;

/// Whether `tag` is an object header's tag: the magic, and a colour below [`COLOURS`] (so that
/// [`block_of`] stays inside the block even for a tag the owner did not write).
#[inline]
pub(super) fn tag_ok(tag: u32) -> bool {
    const MASK: u32 = 0xffff_0000 | !((COLOURS as u32 - 1) << 8) & 0xff00;
    tag & MASK == OBJ_MAGIC
}

/// The tag of a header of colour `colour` in a block of class `class` (or `CLASS_LARGE`).
#[inline]
pub(super) fn tag_of(colour: usize, class: u32) -> u32 {
    debug_assert!(colour < COLOURS && class <= CLASS_LARGE);
    OBJ_MAGIC | (colour as u32) << 8 | class
}

/// The start of the block whose header, at address `h`, has tag `tag`.
#[inline]
pub(super) fn block_of(h: usize, tag: u32) -> usize {
    h - ((tag >> 8) & 0xff) as usize * COLOUR_LINE
}

/// Bytes of the object header.
pub(super) const OBJ_HEADER: usize = 16;
/// Bytes reserved at the start of the region for the pool header.
pub(super) const POOL_HEADER: usize = 4096;

/// The pool header, at offset 0 of the region: written once by the owner, read by borrowers.
#[repr(C)]
pub(super) struct PoolHeader {
    /// [`POOL_MAGIC`], stored last (Release).
    pub(super) magic: AtomicU64,
    /// [`POOL_VERSION`].
    pub(super) version: AtomicU64,
    /// The pool id the owner chose.
    pub(super) pool_id: AtomicU64,
    /// The region's length in bytes, which a borrower checks against its mapping.
    pub(super) len: AtomicU64,
}

/// The header before each object.
#[repr(C)]
pub(super) struct ObjHeader {
    /// `generation:32 | refcount:31 | allocated:1`, as the core arena's state word.
    pub(super) state: AtomicU64,
    /// The object's length in bytes (header excluded).
    pub(super) len: AtomicU32,
    /// `OBJ_MAGIC | colour << 8 | class` (`CLASS_LARGE` beyond the cache).
    pub(super) tag: AtomicU32,
}

mod checks {
    use std::mem::{align_of, offset_of, size_of};

    use static_assertions::const_assert_eq;

    use super::{ObjHeader, PoolHeader, OBJ_HEADER, POOL_HEADER};

    const_assert_eq!(size_of::<PoolHeader>(), 32);
    const_assert_eq!(align_of::<PoolHeader>(), 8);
    const_assert_eq!(offset_of!(PoolHeader, magic), 0);
    const_assert_eq!(offset_of!(PoolHeader, version), 8);
    const_assert_eq!(offset_of!(PoolHeader, pool_id), 16);
    const_assert_eq!(offset_of!(PoolHeader, len), 24);
    static_assertions::const_assert!(size_of::<PoolHeader>() <= POOL_HEADER);

    const_assert_eq!(size_of::<ObjHeader>(), OBJ_HEADER);
    const_assert_eq!(align_of::<ObjHeader>(), 8);
    const_assert_eq!(offset_of!(ObjHeader, state), 0);
    const_assert_eq!(offset_of!(ObjHeader, len), 8);
    const_assert_eq!(offset_of!(ObjHeader, tag), 12);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_colour_and_class_and_refuse_wide_colours() {
        for colour in 0..COLOURS {
            for class in (0..CLASS_LARGE).chain([CLASS_LARGE]) {
                let tag = tag_of(colour, class);
                assert!(tag_ok(tag));
                assert_eq!(tag & 0xff, class);
                assert_eq!(block_of(0x10_0000, tag), 0x10_0000 - colour * COLOUR_LINE);
            }
        }
        // A colour byte of 16 or more never comes from `tag_of`: refused, so a header the owner
        // did not write cannot point its block's start further back.
        for colour in [16u32, 0x80, 0xff] {
            assert!(!tag_ok(OBJ_MAGIC | colour << 8));
        }
        assert!(!tag_ok(0x6a6e_0000), "another magic");
    }
}
