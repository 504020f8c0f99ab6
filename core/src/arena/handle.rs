//! The handle that names an arena object across processes: pool id, offset, length, generation.
//!
//! A handle is a claim made by the peer that sent it. [`ArenaHandle::from_bytes`] checks only its
//! encoding; [`Arena::check_handle`](super::Arena::check_handle) checks it against the arena (live
//! block at that generation, length within capacity) and the holder of the pools checks the pool id.

use core::fmt;

/// A reference to `len` bytes at `offset` in pool `pool_id`, valid while the block is at `generation`.
///
/// 32 bytes, `#[repr(C)]`; [`to_bytes`](Self::to_bytes) gives its little-endian wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ArenaHandle {
    /// Which pool (arena) the block is in; assigned by the pool's owner.
    pub pool_id: u64,
    /// Byte offset of the block from the start of the pool.
    pub offset: u64,
    /// Bytes of the object, at most the block's capacity.
    pub len: u64,
    /// Generation of the block when the handle was made.
    pub generation: u32,
    /// Reserved, zero on the wire.
    pub reserved: u32,
}

static_assertions::const_assert_eq!(
    core::mem::size_of::<ArenaHandle>(),
    ArenaHandle::ENCODED_LEN
);
static_assertions::const_assert_eq!(core::mem::offset_of!(ArenaHandle, offset), 8);
static_assertions::const_assert_eq!(core::mem::offset_of!(ArenaHandle, len), 16);
static_assertions::const_assert_eq!(core::mem::offset_of!(ArenaHandle, generation), 24);

/// Why [`ArenaHandle::from_bytes`] refused some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleDecodeError {
    /// Not exactly [`ArenaHandle::ENCODED_LEN`] bytes.
    BadLength,
    /// The reserved field is not zero.
    Reserved,
    /// `offset + len` overflows.
    Overflow,
}

impl fmt::Display for HandleDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadLength => "arena handle must be exactly 32 bytes",
            Self::Reserved => "arena handle has non-zero reserved bits (newer or corrupt sender)",
            Self::Overflow => "arena handle range overflows",
        })
    }
}

impl core::error::Error for HandleDecodeError {}

impl ArenaHandle {
    /// Bytes of the wire form.
    pub const ENCODED_LEN: usize = 32;

    /// The little-endian wire form.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..8].copy_from_slice(&self.pool_id.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.generation.to_le_bytes());
        b[28..32].copy_from_slice(&self.reserved.to_le_bytes());
        b
    }

    /// Decodes the wire form, checking the length, the reserved field and that the range does not
    /// overflow. The result is still a claim: check it against the pool before use.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HandleDecodeError> {
        let b: &[u8; Self::ENCODED_LEN] =
            bytes.try_into().map_err(|_| HandleDecodeError::BadLength)?;
        let u64_at = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = ArenaHandle {
            pool_id: u64_at(0),
            offset: u64_at(8),
            len: u64_at(16),
            generation: u32_at(24),
            reserved: u32_at(28),
        };
        if h.reserved != 0 {
            return Err(HandleDecodeError::Reserved);
        }
        if h.offset.checked_add(h.len).is_none() {
            return Err(HandleDecodeError::Overflow);
        }
        Ok(h)
    }
}
