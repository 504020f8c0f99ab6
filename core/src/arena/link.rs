//! [`BlockLink`]: the offset pointer that data structures stored in a pool use to name another
//! block of the same pool.
//!
//! A pointer means nothing in another process (each maps the pool at its own address), so a
//! structure in shared memory names a block by its byte offset from the start of the pool, with
//! the block's generation and the length it uses: an [`ArenaHandle`] without the pool id, which
//! the pool the link was read from supplies. This is the relocatable-pointer idea of iceoryx2's
//! `RelocatablePointer` and Boost.Interprocess's `offset_ptr`, made checkable: a reader turns the
//! link into a handle with [`to_handle`](BlockLink::to_handle) and checks it like any handle a
//! peer sent (block live at that generation, range inside it) before it reads a byte.
//!
//! A link read from shared memory is a claim by whoever wrote it. Every field is valid for any
//! bytes (the type derives `zerocopy::FromBytes`), so reading one is never undefined behaviour;
//! using it is checked.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::ArenaHandle;

/// Names `len` bytes at `offset` of the pool it is stored in, valid while the block is at
/// `generation`. 24 bytes, `#[repr(C)]`, no padding; the all-zero link is [`NULL`](Self::NULL).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlockLink {
    /// Byte offset of the block from the start of the pool (0: no block).
    pub offset: u64,
    /// Bytes the link covers, at most the block's capacity.
    pub len: u64,
    /// Generation of the block when the link was made.
    pub generation: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

static_assertions::const_assert_eq!(core::mem::size_of::<BlockLink>(), 24);
static_assertions::const_assert_eq!(core::mem::align_of::<BlockLink>(), 8);
static_assertions::const_assert_eq!(core::mem::offset_of!(BlockLink, len), 8);
static_assertions::const_assert_eq!(core::mem::offset_of!(BlockLink, generation), 16);

impl BlockLink {
    /// The link to nothing (every field zero); no pool has a block at offset 0, its header is
    /// there.
    pub const NULL: BlockLink = BlockLink {
        offset: 0,
        len: 0,
        generation: 0,
        reserved: 0,
    };

    /// Whether this is [`NULL`](Self::NULL)'s offset (no block).
    pub const fn is_null(&self) -> bool {
        self.offset == 0
    }

    /// The link part of a handle (its pool id dropped).
    pub const fn from_handle(h: &ArenaHandle) -> Self {
        BlockLink {
            offset: h.offset,
            len: h.len,
            generation: h.generation,
            reserved: 0,
        }
    }

    /// The handle this link names in pool `pool_id`, to check and read like any handle. The
    /// result is unchecked: a forged link gives a handle that the pool refuses.
    pub const fn to_handle(&self, pool_id: u64) -> ArenaHandle {
        ArenaHandle {
            pool_id,
            offset: self.offset,
            len: self.len,
            generation: self.generation,
            reserved: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_handle_and_reads_any_bytes() {
        let h = ArenaHandle {
            pool_id: 9,
            offset: 4096,
            len: 24,
            generation: 3,
            reserved: 0,
        };
        let l = BlockLink::from_handle(&h);
        assert_eq!(l.to_handle(9), h);
        assert!(!l.is_null() && BlockLink::NULL.is_null());
        let back = BlockLink::read_from_bytes(l.as_bytes()).unwrap();
        assert_eq!(back, l);
        let any = BlockLink::read_from_bytes(&[0xff; 24]).unwrap();
        assert_eq!(any.offset, u64::MAX);
    }
}
