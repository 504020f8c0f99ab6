//! The shared-memory layout of a ring: [`RingHeader`] followed by `capacity` bytes of frames.
//!
//! ```text
//! offset   0  line 0: magic u64 | version u32 | closed u32 | capacity u64     (written at init / close)
//! offset 128  line 1: tail u64   producer position, written by the producer only
//! offset 256  line 2: head u64   consumer position, written by the consumer only
//! offset 384  line 3: consumer waiting u32 | consumer cpu u32   waiting: set by a consumer about to
//!                                                                 sleep on an empty ring
//! offset 512  line 4: producer waiting u32 | producer cpu u32   the same for a full ring
//! offset 640  frames: capacity bytes (a power of two), 8-byte aligned
//! ```
//!
//! A side's `cpu` is a hint: 1 + the CPU it last published (producer) or freed frames (consumer)
//! on, 0 if unknown. A side about to spin
//! for the peer skips the spinning when the peer's hint names its own CPU (the peer cannot run
//! while it spins). The peer may write anything there; a wrong hint costs only speed.
//!
//! Each frame is an 8-byte header followed by its payload rounded up to 8 bytes. The header is one
//! little-endian `u64`: bits 0..32 payload length, bits 32..48 kind (1 data, 2 padding),
//! bits 48..64 the caller's tag. A padding frame fills the bytes from its position to the end of the
//! buffer when the next frame would not fit before the wrap; its length field is exactly the bytes it
//! skips minus its header, and it never starts at offset 0.

use crate::cache_padded::CachePadded;
use crate::sync::{AtomicU32, AtomicU64};

/// `b"FLOWRING"` read as a little-endian `u64`.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"FLOWRING");
/// Layout version; bumped on any incompatible change of this file.
pub const RING_VERSION: u32 = 1;
/// Size of the frame header in bytes; also the frame alignment.
pub const FRAME_HEADER: usize = 8;
/// Smallest capacity accepted (the largest payload is then 8 bytes).
pub const MIN_CAPACITY: usize = 32;
/// Largest capacity accepted (4 GiB), so that every payload length fits the header's `u32`.
pub const MAX_CAPACITY: usize = 1 << 32;

/// Frame kind of a data frame.
pub(crate) const KIND_DATA: u16 = 1;
/// Frame kind of a padding frame at the wrap.
pub(crate) const KIND_PAD: u16 = 2;

/// Bit in [`RingHeader`]'s `closed` word: the producer has closed its side.
pub(crate) const CLOSED_PRODUCER: u32 = 1;
/// Bit in [`RingHeader`]'s `closed` word: the consumer has closed its side.
pub(crate) const CLOSED_CONSUMER: u32 = 2;

/// The fields written once at initialisation (and the `closed` bits, once each).
#[repr(C)]
pub(crate) struct Config {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) closed: AtomicU32,
    pub(crate) capacity: AtomicU64,
}

/// The header at the start of a ring's shared region.
///
/// Every field is atomic, so a peer writing any bytes into it at any time cannot make a read of it
/// undefined behaviour; what the values claim is checked before use.
#[repr(C)]
pub struct RingHeader {
    pub(crate) config: CachePadded<Config>,
    pub(crate) tail: CachePadded<AtomicU64>,
    pub(crate) head: CachePadded<AtomicU64>,
    pub(crate) consumer_line: CachePadded<WaitLine>,
    pub(crate) producer_line: CachePadded<WaitLine>,
}

/// One side's waiting word and CPU hint.
#[repr(C)]
pub(crate) struct WaitLine {
    pub(crate) waiting: AtomicU32,
    pub(crate) cpu: AtomicU32,
}

impl WaitLine {
    fn new() -> Self {
        WaitLine {
            waiting: AtomicU32::new(0),
            cpu: AtomicU32::new(0),
        }
    }
}

/// Size of [`RingHeader`]: the frame buffer starts this many bytes into the region.
pub const HEADER_SIZE: usize = core::mem::size_of::<RingHeader>();

/// Alignment the region passed to `init` / `attach` must have.
pub const REGION_ALIGN: usize = core::mem::align_of::<RingHeader>();

impl RingHeader {
    /// The word a consumer about to sleep on an empty ring sets (see [`crate::wait`]).
    ///
    /// For a process-local helper that must end that sleep from outside the protocol (a watcher
    /// that learnt the peer died): it stores `0` and wakes the word, as the producer's notifier
    /// would.
    pub fn consumer_waiting(&self) -> &AtomicU32 {
        &self.consumer_line.waiting
    }

    /// The word a producer about to sleep on a full ring sets; as
    /// [`consumer_waiting`](Self::consumer_waiting).
    pub fn producer_waiting(&self) -> &AtomicU32 {
        &self.producer_line.waiting
    }

    /// A header for an empty ring of `capacity` bytes (already validated).
    pub(crate) fn new(capacity: usize) -> Self {
        RingHeader {
            config: CachePadded::new(Config {
                magic: AtomicU64::new(RING_MAGIC),
                version: AtomicU32::new(RING_VERSION),
                closed: AtomicU32::new(0),
                capacity: AtomicU64::new(capacity as u64),
            }),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            consumer_line: CachePadded::new(WaitLine::new()),
            producer_line: CachePadded::new(WaitLine::new()),
        }
    }
}

/// Bytes a region must have for a ring of `capacity` bytes.
pub const fn region_size(capacity: usize) -> usize {
    HEADER_SIZE + capacity
}

/// The largest payload a ring of `capacity` bytes accepts: `capacity / 2 - 8`.
///
/// A frame of at most half the ring always fits once the ring is empty, wherever the wrap falls
/// (padding plus frame is then at most `capacity`).
pub const fn max_payload(capacity: usize) -> usize {
    capacity / 2 - FRAME_HEADER
}

/// `true` if `capacity` is a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
pub const fn is_valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && capacity >= MIN_CAPACITY && capacity <= MAX_CAPACITY
}

/// Frame bytes taken by a payload of `len` bytes: header plus payload rounded up to 8.
/// `len <= MAX_CAPACITY`, so this cannot overflow.
#[inline]
pub(crate) const fn frame_size(len: usize) -> usize {
    FRAME_HEADER + ((len + 7) & !7)
}

/// Encodes a frame header word.
#[inline]
pub(crate) const fn encode_frame(len: u32, kind: u16, tag: u16) -> u64 {
    (len as u64) | ((kind as u64) << 32) | ((tag as u64) << 48)
}

/// Decodes a frame header word into `(len, kind, tag)`.
#[inline]
pub(crate) const fn decode_frame(word: u64) -> (u32, u16, u16) {
    (word as u32, (word >> 32) as u16, (word >> 48) as u16)
}

// Layout checks: the header is shared between processes built separately, so its shape is part of
// the wire format. Loom's atomics are larger than the real ones, so the checks apply without loom.
#[cfg(not(flowipc_loom))]
mod checks {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};
    use static_assertions::const_assert_eq;

    const_assert_eq!(size_of::<Config>(), 24);
    const_assert_eq!(offset_of!(Config, magic), 0);
    const_assert_eq!(offset_of!(Config, version), 8);
    const_assert_eq!(offset_of!(Config, closed), 12);
    const_assert_eq!(offset_of!(Config, capacity), 16);
    const_assert_eq!(size_of::<RingHeader>(), 640);
    const_assert_eq!(align_of::<RingHeader>(), 128);
    const_assert_eq!(offset_of!(RingHeader, config), 0);
    const_assert_eq!(offset_of!(RingHeader, tail), 128);
    const_assert_eq!(offset_of!(RingHeader, head), 256);
    const_assert_eq!(offset_of!(RingHeader, consumer_line), 384);
    const_assert_eq!(offset_of!(RingHeader, producer_line), 512);
    const_assert_eq!(offset_of!(WaitLine, waiting), 0);
    const_assert_eq!(offset_of!(WaitLine, cpu), 4);
    const_assert_eq!(HEADER_SIZE % FRAME_HEADER, 0);
    const_assert_eq!(frame_size(0), 8);
    const_assert_eq!(frame_size(1), 16);
    const_assert_eq!(frame_size(8), 16);
    const_assert_eq!(max_payload(MIN_CAPACITY), 8);
}
