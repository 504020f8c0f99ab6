//! A single-producer single-consumer ring of variable-length frames in one (shared) memory region.
//!
//! # Algorithm
//!
//! The region holds a [`RingHeader`] and a buffer of `capacity` bytes (a power of two); see
//! [`layout`] for the bytes. The producer position `tail` and the consumer position
//! `head` are monotonically increasing `u64` byte counters: `tail - head` is the fill level and
//! `pos % capacity` the offset in the buffer. A frame is an 8-byte header (length, kind, tag) and the
//! payload rounded up to 8 bytes; a frame never straddles the end of the buffer: when it would, the
//! producer first writes a padding frame to the end of the buffer and puts the frame at offset 0.
//!
//! The producer writes a frame into free space, then publishes it with a Release store of `tail`;
//! the consumer reads `tail` with Acquire, reads the frame, then frees it with a Release store of
//! `head`, which the producer reads with Acquire before reusing the space. Each side keeps its own
//! position privately (the shared copy is only ever written by it) and caches the peer's last
//! position, so the shared lines are touched only when the cached view runs out (the layout of
//! rtrb and of Lamport's queue with cached indices).
//!
//! After each publish, a side runs the publisher half of the waiting-word protocol of
//! [`wait`](crate::wait): a SeqCst fence, then a load of the peer's waiting word; only if the peer
//! announced that it sleeps does it call the [`Notifier`] (a system call in `flowipc`).
//!
//! The fence must wait for the frame's cache lines to be owned by the producer, which across cores
//! costs most of a push. A producer streaming many frames can *stage* them
//! ([`Producer::try_push_staged`], [`WriteChunk::stage`]) and publish the burst with one
//! [`Producer::flush`]: one tail store, one fence, one wake-up check per burst.
//!
//! # Hostile peer
//!
//! The peer shares the header and the buffer and may write anything there at any time. Every value
//! read from the region is a claim that is checked before it is used: a new peer position must lie
//! between the last one seen and this side's own position (monotone, `tail - head <= capacity`,
//! 8-byte aligned); a frame must be a known kind, lie within what is published and within the buffer;
//! a padding frame must run exactly to the end of the buffer, never start at offset 0, and be followed
//! by a published frame. A failed check returns `Corrupt` and poisons the handle: every later call
//! returns `Corrupt`. No check is retried in a loop, so no peer can make a call spin forever, and no
//! allocation is sized by a peer. Payload bytes are only ever copied or exposed as raw pointers, never
//! as `&[u8]`, because the peer can change them while they are being read.
//!
//! # Sizes
//!
//! The largest payload of a ring is [`max_payload`]`(capacity) = capacity / 2 - 8` bytes.

pub mod layout;

#[cfg(test)]
mod tests;

use core::fmt;
use core::ptr::{self, NonNull};
use core::time::Duration;

#[cfg(any(feature = "alloc", test))]
use alloc::sync::Arc;

use self::layout::{
    decode_frame, encode_frame, frame_size, CLOSED_CONSUMER, CLOSED_PRODUCER, KIND_DATA, KIND_PAD,
};
pub use self::layout::{
    is_valid_capacity, max_payload, region_size, RingHeader, FRAME_HEADER, HEADER_SIZE,
    MAX_CAPACITY, MIN_CAPACITY, REGION_ALIGN, RING_MAGIC, RING_VERSION,
};
use crate::sync::Ordering;
use crate::wait::{
    arm, block_until, note_cpu, wake_if_waiting, Notifier, SpinBudget, WaitPolicy, Waiter, WakeKind,
};

/// How far past `head` a consumer prefetches when it sees newly published bytes: four lines, which
/// covers a frame header and a payload of up to 248 bytes (larger payloads are streamed by the
/// copy itself, where the hardware prefetchers take over).
const PREFETCH_BYTES: usize = 256;

/// Why `try_push`, `write_chunk` or `push_wait` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Not enough free space now; retry after the consumer has drained some (or use `push_wait`).
    Full,
    /// The payload is larger than the ring's largest frame.
    TooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload this ring accepts ([`max_payload`]).
        max: usize,
    },
    /// The consumer closed its side; nothing more will be read.
    Closed,
    /// The shared region holds values no correct consumer writes; the producer is poisoned.
    Corrupt,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => f.write_str("ring is full; retry once the consumer has drained it"),
            PushError::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the ring's largest frame of {max} bytes; \
                 use a larger ring or send it through shared memory"
            ),
            PushError::Closed => f.write_str("the consumer closed the ring"),
            PushError::Corrupt => {
                f.write_str("ring memory is corrupt (misbehaving peer); the ring is unusable")
            }
        }
    }
}

impl core::error::Error for PushError {}

/// Why `try_pop`, `read_chunk` or `pop_wait` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopError {
    /// No frame is published now; retry later (or use `pop_wait`).
    Empty,
    /// The ring is empty and the producer closed its side; no frame will come.
    Closed,
    /// The buffer passed is shorter than the next frame, which stays in the ring.
    BufferTooSmall {
        /// Payload length of the next frame.
        needed: usize,
    },
    /// The shared region holds values no correct producer writes; the consumer is poisoned.
    Corrupt,
}

impl fmt::Display for PopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PopError::Empty => f.write_str("ring is empty"),
            PopError::Closed => f.write_str("the producer closed the ring"),
            PopError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the next frame needs {needed} bytes")
            }
            PopError::Corrupt => {
                f.write_str("ring memory is corrupt (misbehaving peer); the ring is unusable")
            }
        }
    }
}

impl core::error::Error for PopError {}

/// Why `RawRing::init`, `RawRing::attach` or creating a handle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// The region does not start on a [`REGION_ALIGN`]-byte boundary.
    Misaligned,
    /// The capacity is not a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
    BadCapacity(u64),
    /// The region is shorter than the header plus the capacity.
    TooSmall {
        /// Bytes needed ([`region_size`]).
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// The header does not start with [`RING_MAGIC`]: not a ring, or not initialised yet.
    BadMagic,
    /// The header has another layout version than [`RING_VERSION`].
    BadVersion(u32),
    /// The positions in the header are inconsistent (misaligned, or `tail - head > capacity`).
    Corrupt,
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Misaligned => {
                write!(f, "ring region is not aligned to {REGION_ALIGN} bytes")
            }
            AttachError::BadCapacity(c) => write!(
                f,
                "ring capacity {c} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
            ),
            AttachError::TooSmall { needed, len } => {
                write!(
                    f,
                    "ring region of {len} bytes is smaller than the {needed} it needs"
                )
            }
            AttachError::BadMagic => f.write_str("region does not hold an initialised ring"),
            AttachError::BadVersion(v) => write!(
                f,
                "ring layout version {v} is not the supported version {RING_VERSION}; \
                 both processes must use the same flowipc release"
            ),
            AttachError::Corrupt => f.write_str("ring positions are inconsistent (corrupt header)"),
        }
    }
}

impl core::error::Error for AttachError {}

/// Length and tag of a frame read by `try_pop` or `pop_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Payload length in bytes.
    pub len: usize,
    /// The tag the producer pushed it with (0 for `try_push`).
    pub tag: u16,
}

/// A validated view of a ring in memory the caller manages (e.g. a shared mapping).
///
/// Obtained from [`RawRing::init`] or [`RawRing::attach`]; it creates the [`Producer`] and the
/// [`Consumer`] handles.
#[derive(Debug, Clone, Copy)]
pub struct RawRing {
    header: NonNull<RingHeader>,
    buf: NonNull<u8>,
    capacity: usize,
}

#[cfg(not(flowipc_loom))]
impl RawRing {
    /// Writes an empty ring of `capacity` bytes at `region`.
    ///
    /// # Errors
    ///
    /// [`AttachError::Misaligned`], [`AttachError::BadCapacity`] or [`AttachError::TooSmall`].
    ///
    /// # Safety
    ///
    /// `region` must be valid for reads and writes of `len` bytes for as long as the returned view and
    /// every handle made from it live, and nothing else may access those bytes during this call.
    pub unsafe fn init(
        region: *mut u8,
        len: usize,
        capacity: usize,
    ) -> Result<RawRing, AttachError> {
        Self::check_region(region, len, capacity as u64)?;
        let header = region.cast::<RingHeader>();
        // SAFETY: `check_region` proved `region` non-null, aligned for `RingHeader` and at least
        // `HEADER_SIZE` bytes long; the caller grants exclusive access for this call.
        unsafe { ptr::write(header, RingHeader::new(capacity)) };
        // SAFETY: as above; the view only exists after the header was written.
        Ok(unsafe { Self::from_checked(region, capacity) })
    }

    /// Validates the ring header at `region` (magic, version, capacity against `len`).
    ///
    /// # Errors
    ///
    /// Any [`AttachError`] but `Corrupt` (positions are checked when a handle is made).
    ///
    /// # Safety
    ///
    /// `region` must be valid for reads and writes of `len` bytes for as long as the returned view and
    /// every handle made from it live. The bytes may hold anything, and the peer may change them
    /// concurrently: every field is read atomically and checked.
    pub unsafe fn attach(region: *mut u8, len: usize) -> Result<RawRing, AttachError> {
        if region.is_null() || (region as usize) % REGION_ALIGN != 0 {
            return Err(AttachError::Misaligned);
        }
        if len < HEADER_SIZE {
            return Err(AttachError::TooSmall {
                needed: HEADER_SIZE,
                len,
            });
        }
        // SAFETY: non-null, aligned and at least `HEADER_SIZE` valid bytes (checked above and by
        // the caller); every field of `RingHeader` is an atomic, valid for any bit pattern.
        let header = unsafe { &*region.cast::<RingHeader>() };
        // Relaxed: `init` completes before the region's descriptor is sent to the peer, and that
        // hand-over (a system call on both sides) orders the header writes before these loads.
        if header.config.magic.load(Ordering::Relaxed) != RING_MAGIC {
            return Err(AttachError::BadMagic);
        }
        let version = header.config.version.load(Ordering::Relaxed);
        if version != RING_VERSION {
            return Err(AttachError::BadVersion(version));
        }
        let capacity = header.config.capacity.load(Ordering::Relaxed);
        Self::check_region(region, len, capacity)?;
        // SAFETY: `check_region` proved the region holds the header and `capacity` bytes.
        Ok(unsafe { Self::from_checked(region, capacity as usize) })
    }

    fn check_region(region: *mut u8, len: usize, capacity: u64) -> Result<(), AttachError> {
        if region.is_null() || (region as usize) % REGION_ALIGN != 0 {
            return Err(AttachError::Misaligned);
        }
        let cap = usize::try_from(capacity).map_err(|_| AttachError::BadCapacity(capacity))?;
        if !is_valid_capacity(cap) {
            return Err(AttachError::BadCapacity(capacity));
        }
        let needed = region_size(cap);
        if len < needed {
            return Err(AttachError::TooSmall { needed, len });
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `region` is non-null, aligned, and valid for `region_size(capacity)` bytes.
    unsafe fn from_checked(region: *mut u8, capacity: usize) -> RawRing {
        // SAFETY: `region` is non-null (caller); the buffer starts `HEADER_SIZE` bytes in, within
        // the `region_size(capacity)` valid bytes.
        unsafe {
            RawRing {
                header: NonNull::new_unchecked(region.cast()),
                buf: NonNull::new_unchecked(region.add(HEADER_SIZE)),
                capacity,
            }
        }
    }
}

impl RawRing {
    /// Capacity of the frame buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The header, e.g. to reach the waiting words from a custom waiter.
    pub fn header(&self) -> &RingHeader {
        // SAFETY: a `RawRing` only exists over a header that lives as long as the view (`init` /
        // `attach` contract).
        unsafe { self.header.as_ref() }
    }

    /// Makes the producer handle, starting at the published `tail`.
    ///
    /// # Errors
    ///
    /// [`AttachError::Corrupt`] if the positions in the header are inconsistent.
    ///
    /// # Safety
    ///
    /// The memory must outlive the handle, and at most one `Producer` may exist for this ring at a
    /// time in this process and any other one that follows the protocol.
    pub unsafe fn producer(&self) -> Result<Producer, AttachError> {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        // SYNC POINT: Acquire pairs with the consumer's Release store of `head` in
        // `Consumer::release`: what it read is done before we overwrite the space.
        let head = h.head.load(Ordering::Acquire);
        if tail % 8 != 0 || head % 8 != 0 || tail.wrapping_sub(head) > self.capacity as u64 {
            return Err(AttachError::Corrupt);
        }
        Ok(Producer {
            ring: *self,
            tail,
            published: tail,
            cached_head: head,
            spin_budget: SpinBudget::new(),
            poisoned: false,
            closed: false,
            #[cfg(any(feature = "alloc", test))]
            _owner: None,
        })
    }

    /// Makes the consumer handle, starting at the published `head`.
    ///
    /// # Errors
    ///
    /// [`AttachError::Corrupt`] if the position in the header is misaligned.
    ///
    /// # Safety
    ///
    /// The memory must outlive the handle, and at most one `Consumer` may exist for this ring at a
    /// time in this process and any other one that follows the protocol.
    pub unsafe fn consumer(&self) -> Result<Consumer, AttachError> {
        let head = self.header().head.load(Ordering::Relaxed);
        if head % 8 != 0 {
            return Err(AttachError::Corrupt);
        }
        Ok(Consumer {
            ring: *self,
            head,
            cached_tail: head,
            spin_budget: SpinBudget::new(),
            poisoned: false,
            closed: false,
            #[cfg(any(feature = "alloc", test))]
            _owner: None,
        })
    }

    #[inline]
    fn mask(&self) -> u64 {
        self.capacity as u64 - 1
    }

    /// Reads the frame header word at buffer offset `pos`.
    ///
    /// # Safety
    ///
    /// `pos` is a multiple of 8 and `pos < capacity` (so `pos + 8 <= capacity`).
    #[inline]
    unsafe fn read_frame_word(&self, pos: usize) -> u64 {
        debug_assert!(pos % 8 == 0 && pos < self.capacity);
        // SAFETY: in bounds and 8-aligned by the caller's contract (the buffer is 8-aligned).
        // Volatile: read exactly once, even though the peer may rewrite it, so the checked value is
        // the used one.
        unsafe { ptr::read_volatile(self.buf.as_ptr().add(pos).cast::<u64>()) }
    }

    /// Hints the CPU to start loading the lines of `len` bytes from buffer offset `pos` (clamped
    /// to the buffer's end and to [`PREFETCH_BYTES`]).
    ///
    /// A consumer that has just seen a new `tail` calls this before parsing the frame at `head`:
    /// the frame header decides how many payload bytes are read, so without the hint the payload's
    /// second line is fetched only after the header's line arrives, one more cross-core transfer
    /// in series per message. A prefetch is only a hint: it reads nothing into the program, cannot
    /// fault, and is not a memory access under the language's model.
    #[inline]
    fn prefetch(&self, pos: usize, len: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri), not(flowipc_loom)))]
        {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let end = pos
                .saturating_add(len.min(PREFETCH_BYTES))
                .min(self.capacity);
            let mut at = pos & !63;
            while at < end {
                // SAFETY: `at < capacity`, so the address lies inside the buffer; a prefetch
                // neither faults nor counts as a read, whatever the peer is writing there.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.buf.as_ptr().add(at).cast::<i8>()) };
                at += 64;
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri), not(flowipc_loom))))]
        let _ = (pos, len);
    }

    /// Writes the frame header word at buffer offset `pos`.
    ///
    /// # Safety
    ///
    /// `pos` is a multiple of 8, `pos < capacity`, and the 8 bytes are free (owned by the producer).
    #[inline]
    unsafe fn write_frame_word(&self, pos: usize, word: u64) {
        debug_assert!(pos % 8 == 0 && pos < self.capacity);
        // SAFETY: in bounds and 8-aligned by the caller's contract.
        unsafe { ptr::write_volatile(self.buf.as_ptr().add(pos).cast::<u64>(), word) }
    }
}

// SAFETY: a `RawRing` is a pair of addresses plus a capacity; all it allows without `unsafe` is
// atomic access to the header, which is `Sync`.
unsafe impl Send for RawRing {}
// SAFETY: as above.
unsafe impl Sync for RawRing {}

/// Memory of a ring made by `Ring::with_capacity`, freed when both handles are gone.
#[cfg(any(feature = "alloc", test))]
struct OwnedRing {
    header: NonNull<RingHeader>,
    buf: NonNull<u8>,
    capacity: usize,
}

#[cfg(any(feature = "alloc", test))]
impl Drop for OwnedRing {
    fn drop(&mut self) {
        // SAFETY: `header` came from `Box::into_raw` in `Ring::with_capacity` and is dropped once.
        drop(unsafe { alloc::boxed::Box::from_raw(self.header.as_ptr()) });
        let layout = core::alloc::Layout::from_size_align(self.capacity, 8)
            .unwrap_or_else(|_| unreachable!("layout was valid at allocation"));
        // SAFETY: `buf` was allocated in `Ring::with_capacity` with this layout and is freed once.
        unsafe { alloc::alloc::dealloc(self.buf.as_ptr(), layout) };
    }
}

// SAFETY: `OwnedRing` owns its allocations; the raw pointers are not shared with anything but the two
// handles, which synchronise through the ring protocol.
#[cfg(any(feature = "alloc", test))]
unsafe impl Send for OwnedRing {}
// SAFETY: as above; `OwnedRing` has no methods.
#[cfg(any(feature = "alloc", test))]
unsafe impl Sync for OwnedRing {}

/// Constructor of a ring in ordinary heap memory (tests, loom, miri, in-process use).
#[derive(Debug)]
pub struct Ring {
    _private: (),
}

impl Ring {
    /// Allocates an empty ring of `capacity` bytes and returns its two handles.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] {
    /// use flowipc_core::ring::Ring;
    /// use flowipc_core::wait::NoopNotifier;
    ///
    /// let (mut tx, mut rx) = Ring::with_capacity(1024);
    /// tx.try_push(b"hello", &NoopNotifier).unwrap();
    /// let mut buf = [0u8; 16];
    /// let info = rx.try_pop(&mut buf, &NoopNotifier).unwrap();
    /// assert_eq!(&buf[..info.len], b"hello");
    /// # }
    /// ```
    #[cfg(any(feature = "alloc", test))]
    pub fn with_capacity(capacity: usize) -> (Producer, Consumer) {
        assert!(
            is_valid_capacity(capacity),
            "ring capacity {capacity} is not a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}"
        );
        let header = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(RingHeader::new(capacity)));
        let layout = core::alloc::Layout::from_size_align(capacity, 8)
            .unwrap_or_else(|_| panic!("ring capacity {capacity} too large"));
        // SAFETY: `layout` has non-zero size (capacity >= MIN_CAPACITY).
        let buf = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let Some(buf) = NonNull::new(buf) else {
            alloc::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `Box::into_raw` never returns null.
        let header = unsafe { NonNull::new_unchecked(header) };
        let owner = Arc::new(OwnedRing {
            header,
            buf,
            capacity,
        });
        let ring = RawRing {
            header,
            buf,
            capacity,
        };
        let producer = Producer {
            ring,
            tail: 0,
            published: 0,
            cached_head: 0,
            spin_budget: SpinBudget::new(),
            poisoned: false,
            closed: false,
            _owner: Some(owner.clone()),
        };
        let consumer = Consumer {
            ring,
            head: 0,
            cached_tail: 0,
            spin_budget: SpinBudget::new(),
            poisoned: false,
            closed: false,
            _owner: Some(owner),
        };
        (producer, consumer)
    }
}

/// The writing side of a ring.
///
/// Made by `Ring::with_capacity` or [`RawRing::producer`]. Dropping it closes the producer side
/// (without waking a sleeping consumer; call [`Producer::close`] for that).
pub struct Producer {
    ring: RawRing,
    /// Own position, staged frames included; authoritative (the shared copy is only ever written
    /// from here).
    tail: u64,
    /// Position last stored to the shared `tail`; `tail - published` bytes are staged.
    published: u64,
    /// Last validated consumer position: `tail - capacity <= cached_head <= tail`.
    cached_head: u64,
    /// Spins the next wait may use; see [`SpinBudget`].
    spin_budget: SpinBudget,
    poisoned: bool,
    closed: bool,
    #[cfg(any(feature = "alloc", test))]
    _owner: Option<Arc<OwnedRing>>,
}

// SAFETY: the handle is the unique producer of its ring (constructor contracts); moving it to
// another thread moves that role. It has no interior mutability reachable through `&Producer`
// except atomics.
unsafe impl Send for Producer {}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.capacity)
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Producer {
    /// Capacity of the frame buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity
    }

    /// The largest payload [`try_push`](Self::try_push) accepts: `capacity / 2 - 8`.
    pub fn max_payload(&self) -> usize {
        max_payload(self.ring.capacity)
    }

    /// `true` once corruption was detected; every operation then fails with `Corrupt`.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// `true` if the consumer has closed its side.
    pub fn is_closed(&self) -> bool {
        self.ring.header().config.closed.load(Ordering::Relaxed) & CLOSED_CONSUMER != 0
    }

    /// The ring view this handle works on.
    pub fn raw(&self) -> &RawRing {
        &self.ring
    }

    /// Copies `data` into the ring as one frame with tag 0 and publishes it.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] (nothing written), [`PushError::TooLarge`], [`PushError::Closed`],
    /// [`PushError::Corrupt`].
    #[inline]
    pub fn try_push<N: Notifier + ?Sized>(
        &mut self,
        data: &[u8],
        notifier: &N,
    ) -> Result<(), PushError> {
        self.try_push_tagged(data, 0, notifier)
    }

    /// Copies `data` into the ring as one frame carrying `tag` and publishes it; wakes the consumer
    /// through `notifier` if it sleeps.
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push).
    #[inline]
    pub fn try_push_tagged<N: Notifier + ?Sized>(
        &mut self,
        data: &[u8],
        tag: u16,
        notifier: &N,
    ) -> Result<(), PushError> {
        let mut chunk = self.write_chunk(data.len())?;
        chunk.write(0, data);
        chunk.commit(data.len(), tag, notifier);
        Ok(())
    }

    /// Reserves space for a frame of up to `len` payload bytes to be written in place.
    ///
    /// Nothing is visible to the consumer until [`WriteChunk::commit`]; dropping the chunk publishes
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push).
    #[inline]
    pub fn write_chunk(&mut self, len: usize) -> Result<WriteChunk<'_>, PushError> {
        let (pad, frame_pos) = self.reserve(len)?;
        Ok(WriteChunk {
            producer: self,
            pad,
            frame_pos,
            len,
        })
    }

    /// Checks `len` and the free space; returns `(padding bytes, frame offset)`.
    #[inline]
    fn reserve(&mut self, len: usize) -> Result<(usize, usize), PushError> {
        let need = self.check_len(len)?;
        let (pad, need) = self.layout_for(need);
        if self.free() < need as u64 {
            self.refresh_head()?;
            if self.free() < need as u64 {
                return Err(PushError::Full);
            }
        }
        let frame_pos = ((self.tail + pad as u64) & self.ring.mask()) as usize;
        Ok((pad, frame_pos))
    }

    /// Validates the handle state and `len`; returns the frame size of `len`.
    #[inline]
    fn check_len(&self, len: usize) -> Result<usize, PushError> {
        if self.poisoned {
            return Err(PushError::Corrupt);
        }
        let max = self.max_payload();
        if len > max {
            return Err(PushError::TooLarge { len, max });
        }
        if self.is_closed() {
            return Err(PushError::Closed);
        }
        Ok(frame_size(len))
    }

    /// For a frame of `size` bytes at the current tail: `(padding, padding + size)`.
    #[inline]
    fn layout_for(&self, size: usize) -> (usize, usize) {
        let pos = (self.tail & self.ring.mask()) as usize;
        let to_end = self.ring.capacity - pos;
        if size > to_end {
            (to_end, to_end + size)
        } else {
            (0, size)
        }
    }

    /// Free bytes according to the cached consumer position.
    #[inline]
    fn free(&self) -> u64 {
        self.ring.capacity as u64 - self.tail.wrapping_sub(self.cached_head)
    }

    /// Re-reads the consumer position and validates it.
    fn refresh_head(&mut self) -> Result<(), PushError> {
        // SYNC POINT: Acquire pairs with the consumer's Release store of `head` in
        // `Consumer::release`: its reads of the frames it freed happen before we overwrite them.
        let head = self.ring.header().head.load(Ordering::Acquire);
        // The consumer only moves forward, never past what we published, in steps of whole frames.
        let moved = head.wrapping_sub(self.cached_head);
        let used_before = self.tail.wrapping_sub(self.cached_head);
        if moved > used_before || head % 8 != 0 {
            self.poisoned = true;
            return Err(PushError::Corrupt);
        }
        self.cached_head = head;
        Ok(())
    }

    /// Publishes every frame written so far and wakes a sleeping consumer.
    #[inline]
    fn publish<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        self.store_tail();
        let h = self.ring.header();
        note_cpu(&h.producer_line.cpu, notifier);
        wake_if_waiting(&h.consumer_line.waiting, notifier);
    }

    /// Stores the private position to the shared `tail`, making staged frames visible.
    #[inline]
    fn store_tail(&mut self) {
        self.published = self.tail;
        // SYNC POINT: Release pairs with the consumer's Acquire load of `tail` in
        // `Consumer::refresh_tail`: the frame bytes written before are visible once it sees the tail.
        self.ring.header().tail.store(self.tail, Ordering::Release);
    }

    /// Copies `data` into the ring as one frame carrying `tag` without publishing it: the consumer
    /// sees it at the next [`flush`](Self::flush) or publishing push. Staging a burst and flushing
    /// once pays the publish fence (and the wake-up check) once per burst instead of per frame.
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push). On `Full`, flush first: staged frames hold space that the
    /// consumer cannot free before it sees them.
    #[inline]
    pub fn try_push_staged(&mut self, data: &[u8], tag: u16) -> Result<(), PushError> {
        let mut chunk = self.write_chunk(data.len())?;
        chunk.write(0, data);
        chunk.stage(data.len(), tag);
        Ok(())
    }

    /// Publishes staged frames (if any) and wakes the consumer if it sleeps.
    #[inline]
    pub fn flush<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        if self.tail != self.published {
            self.publish(notifier);
        }
    }

    /// Bytes of staged (written, not yet published) frames.
    pub fn staged_bytes(&self) -> usize {
        self.tail.wrapping_sub(self.published) as usize
    }

    /// Waits until a frame of `len` payload bytes fits, per `policy`; first publishes staged frames
    /// through `notifier` (the consumer could not free their space otherwise).
    ///
    /// `check` is called before each sleep (and every [`BUSY_CHECK_INTERVAL`] spins of busy-polling);
    /// it returns the longest sleep allowed (`None`: unbounded) or an error that ends the wait (a
    /// deadline passed, the peer is gone). The sleeper is woken by the consumer's notifier.
    ///
    /// [`BUSY_CHECK_INTERVAL`]: crate::wait::BUSY_CHECK_INTERVAL
    ///
    /// # Errors
    ///
    /// What `check` returns, or a [`PushError`] other than `Full`.
    pub fn wait_writable<N, W, E, C>(
        &mut self,
        len: usize,
        notifier: &N,
        waiter: &W,
        policy: WaitPolicy,
        check: C,
    ) -> Result<(), E>
    where
        N: Notifier + ?Sized,
        W: Waiter + ?Sized,
        E: From<PushError>,
        C: FnMut() -> Result<Option<Duration>, E>,
    {
        self.flush(notifier);
        let header = self.ring.header;
        // SAFETY: the header outlives the handle (constructor contract), hence this call.
        let h = unsafe { header.as_ref() };
        let word = &h.producer_line.waiting;
        let cpus = Some(&h.consumer_line.cpu);
        let mut budget = self.spin_budget;
        let r = block_until(word, cpus, waiter, policy, &mut budget, check, || {
            let need = self.check_len(len)?;
            let (_, need) = self.layout_for(need);
            if self.free() >= need as u64 {
                return Ok(true);
            }
            self.refresh_head()?;
            Ok(self.free() >= need as u64)
        });
        self.spin_budget = budget;
        r
    }

    /// Announces that this side is about to wait for room without sleeping here (e.g. on an
    /// eventfd registered with a reactor): stores `kind` in the producer's waiting word, fences,
    /// and re-reads the consumer position.
    ///
    /// `Ok(true)`: the consumer freed space since this side last looked (retry the push; the word
    /// is clear again). `Ok(false)`: nothing changed, the word stays set and the consumer's next
    /// release or close wakes this side as `kind` asks (once; arm again after each wake-up).
    /// Publish staged frames first (see [`flush`](Self::flush)): the consumer cannot free their
    /// space before it sees them. A stale armed word only costs the peer one needless wake; see
    /// [`disarm`](Self::disarm).
    ///
    /// # Errors
    ///
    /// [`PushError::Closed`] (the consumer is gone) or [`PushError::Corrupt`]; the word is clear.
    pub fn arm_wake(&mut self, kind: WakeKind) -> Result<bool, PushError> {
        let header = self.ring.header;
        // SAFETY: the header outlives the handle (constructor contract), hence this call.
        let word = unsafe { &header.as_ref().producer_line.waiting };
        arm(word, kind, || {
            if self.poisoned {
                return Err(PushError::Corrupt);
            }
            if self.is_closed() {
                return Err(PushError::Closed);
            }
            let before = self.cached_head;
            self.refresh_head()?;
            Ok(self.cached_head != before)
        })
    }

    /// Clears this side's waiting word (after [`arm_wake`](Self::arm_wake), once this side no
    /// longer waits), so the consumer stops paying for wake-ups.
    pub fn disarm(&self) {
        self.ring
            .header()
            .producer_line
            .waiting
            .store(0, Ordering::Relaxed);
    }

    /// [`try_push_tagged`](Self::try_push_tagged), waiting for space per `policy`; see
    /// [`wait_writable`](Self::wait_writable) for `check`.
    ///
    /// # Errors
    ///
    /// As [`wait_writable`](Self::wait_writable).
    pub fn push_wait<N, W, E, C>(
        &mut self,
        data: &[u8],
        tag: u16,
        notifier: &N,
        waiter: &W,
        policy: WaitPolicy,
        check: C,
    ) -> Result<(), E>
    where
        N: Notifier + ?Sized,
        W: Waiter + ?Sized,
        E: From<PushError>,
        C: FnMut() -> Result<Option<Duration>, E>,
    {
        match self.try_push_tagged(data, tag, notifier) {
            Err(PushError::Full) => {}
            other => return other.map_err(E::from),
        }
        self.wait_writable(data.len(), notifier, waiter, policy, check)?;
        self.try_push_tagged(data, tag, notifier).map_err(E::from)
    }

    /// Publishes staged frames, closes the producer side and wakes the consumer if it sleeps. The
    /// consumer reads every frame published before, then gets [`PopError::Closed`].
    pub fn close<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        if self.tail != self.published {
            self.store_tail();
        }
        self.mark_closed();
        wake_if_waiting(&self.ring.header().consumer_line.waiting, notifier);
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            // SYNC POINT: Release pairs with the consumer's Acquire load of `closed` in
            // `Consumer::refresh_tail`: every tail store before this is visible once it sees the bit.
            self.ring
                .header()
                .config
                .closed
                .fetch_or(CLOSED_PRODUCER, Ordering::Release);
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.closed && self.tail != self.published && !self.poisoned {
            self.store_tail();
        }
        self.mark_closed();
    }
}

/// Space for one frame reserved by [`Producer::write_chunk`], written in place.
///
/// The bytes are shared memory: write them through [`write`](Self::write) or
/// [`as_mut_ptr`](Self::as_mut_ptr) (a raw pointer, because a misbehaving consumer could write them
/// too, which a `&mut [u8]` would forbid). Commit with [`commit`](Self::commit); dropping the chunk
/// publishes nothing.
#[derive(Debug)]
pub struct WriteChunk<'a> {
    producer: &'a mut Producer,
    pad: usize,
    frame_pos: usize,
    len: usize,
}

impl<'a> WriteChunk<'a> {
    /// Payload bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if the chunk has no payload bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the reserved payload: valid for writes of [`len`](Self::len) bytes (8-byte aligned)
    /// until the chunk is committed or dropped. Bytes not written before commit are published with
    /// whatever the memory held.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `frame_pos + 8 + len <= capacity` (`reserve` fitted the frame before the end).
        unsafe {
            self.producer
                .ring
                .buf
                .as_ptr()
                .add(self.frame_pos + FRAME_HEADER)
        }
    }

    /// Copies `data` to payload offset `offset`.
    ///
    /// # Panics
    ///
    /// If `offset + data.len() > self.len()`.
    #[inline]
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset.checked_add(data.len());
        assert!(
            end.is_some_and(|end| end <= self.len),
            "write of {} bytes at {offset} past the chunk's {} bytes",
            data.len(),
            self.len
        );
        let dst = self.as_mut_ptr();
        // SAFETY: `offset + data.len() <= len` (asserted), the reserved bytes are free for the
        // producer, and `data` is not in the ring's free space (we own it until publish).
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst.add(offset), data.len()) };
    }

    /// Publishes the first `len` payload bytes as one frame carrying `tag` (with any staged frames
    /// before it), and wakes the consumer through `notifier` if it sleeps.
    ///
    /// # Panics
    ///
    /// If `len > self.len()`.
    #[inline]
    pub fn commit<N: Notifier + ?Sized>(self, len: usize, tag: u16, notifier: &N) {
        let producer = self.finish(len, tag);
        producer.publish(notifier);
    }

    /// Completes the first `len` payload bytes as one frame carrying `tag` without publishing it
    /// (see [`Producer::try_push_staged`]).
    ///
    /// # Panics
    ///
    /// If `len > self.len()`.
    #[inline]
    pub fn stage(self, len: usize, tag: u16) {
        self.finish(len, tag);
    }

    /// Writes the frame (and padding) headers and advances the private position.
    #[inline]
    fn finish(self, len: usize, tag: u16) -> &'a mut Producer {
        assert!(
            len <= self.len,
            "commit of {len} bytes exceeds the chunk's {}",
            self.len
        );
        let ring = self.producer.ring;
        if self.pad != 0 {
            let pos = (self.producer.tail & ring.mask()) as usize;
            // SAFETY: `pos` is the 8-aligned tail offset with `pad = capacity - pos >= 8` free bytes
            // reserved for the padding frame.
            unsafe {
                ring.write_frame_word(
                    pos,
                    encode_frame((self.pad - FRAME_HEADER) as u32, KIND_PAD, 0),
                )
            };
        }
        // SAFETY: `frame_pos` is 8-aligned with `frame_size(self.len)` reserved bytes.
        unsafe { ring.write_frame_word(self.frame_pos, encode_frame(len as u32, KIND_DATA, tag)) };
        self.producer.tail = self
            .producer
            .tail
            .wrapping_add((self.pad + frame_size(len)) as u64);
        self.producer
    }
}

/// The reading side of a ring.
///
/// Made by `Ring::with_capacity` or [`RawRing::consumer`]. Dropping it closes the consumer side
/// (without waking a sleeping producer; call [`Consumer::close`] for that).
pub struct Consumer {
    ring: RawRing,
    /// Own position; authoritative (the shared copy is only ever written from here).
    head: u64,
    /// Last validated producer position: `head <= cached_tail <= head + capacity`, on a frame
    /// boundary.
    cached_tail: u64,
    /// Spins the next wait may use; see [`SpinBudget`].
    spin_budget: SpinBudget,
    poisoned: bool,
    closed: bool,
    #[cfg(any(feature = "alloc", test))]
    _owner: Option<Arc<OwnedRing>>,
}

// SAFETY: the handle is the unique consumer of its ring (constructor contracts); moving it to
// another thread moves that role.
unsafe impl Send for Consumer {}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity)
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// A frame located by [`Consumer::peek`]: payload offset, length, tag, position after it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    payload: usize,
    len: usize,
    tag: u16,
    next_head: u64,
}

impl Consumer {
    /// Capacity of the frame buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.ring.capacity
    }

    /// `true` once corruption was detected; every operation then fails with `Corrupt`.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// `true` if the producer has closed its side (frames published before may still be pending).
    pub fn is_closed(&self) -> bool {
        self.ring.header().config.closed.load(Ordering::Relaxed) & CLOSED_PRODUCER != 0
    }

    /// The ring view this handle works on.
    pub fn raw(&self) -> &RawRing {
        &self.ring
    }

    /// Copies the next frame into `buf` and frees it in the ring; wakes the producer through
    /// `notifier` if it sleeps on a full ring.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`], [`PopError::Closed`], [`PopError::BufferTooSmall`] (the frame stays),
    /// [`PopError::Corrupt`].
    #[inline]
    pub fn try_pop<N: Notifier + ?Sized>(
        &mut self,
        buf: &mut [u8],
        notifier: &N,
    ) -> Result<FrameInfo, PopError> {
        let frame = self.peek()?;
        if buf.len() < frame.len {
            return Err(PopError::BufferTooSmall { needed: frame.len });
        }
        // SAFETY: `peek` validated `payload + len <= capacity`; `buf` is ours and holds `len` bytes;
        // the source is shared memory, copied as plain bytes (any value is valid for `u8`).
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.buf.as_ptr().add(frame.payload),
                buf.as_mut_ptr(),
                frame.len,
            )
        };
        self.release(frame.next_head, notifier);
        Ok(FrameInfo {
            len: frame.len,
            tag: frame.tag,
        })
    }

    /// Whether a frame is pending, without consuming or borrowing it: `Ok(())` if
    /// [`read_chunk`](Self::read_chunk) or [`try_pop`](Self::try_pop) would now find one (which
    /// has then been located and validated).
    ///
    /// For a caller that must decide whether to wait before it takes a chunk (a chunk borrows the
    /// consumer, so it cannot be taken first and dropped on the slow path).
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`], [`PopError::Closed`], [`PopError::Corrupt`].
    #[inline]
    pub fn poll_frame(&mut self) -> Result<(), PopError> {
        self.peek().map(drop)
    }

    /// Gives in-place access to the next frame; it is freed (and a sleeping producer woken) when the
    /// chunk is dropped.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`], [`PopError::Closed`], [`PopError::Corrupt`].
    #[inline]
    pub fn read_chunk<'a, N: Notifier + ?Sized>(
        &'a mut self,
        notifier: &'a N,
    ) -> Result<ReadChunk<'a, N>, PopError> {
        let frame = self.peek()?;
        Ok(ReadChunk {
            consumer: self,
            notifier,
            frame,
        })
    }

    /// Locates and validates the next frame without consuming it.
    #[inline]
    fn peek(&mut self) -> Result<Frame, PopError> {
        if self.poisoned {
            return Err(PopError::Corrupt);
        }
        if self.cached_tail == self.head && !self.refresh_tail()? {
            return Err(if self.closed_and_drained()? {
                PopError::Closed
            } else {
                PopError::Empty
            });
        }
        match self.locate() {
            Some(frame) => Ok(frame),
            None => {
                self.poisoned = true;
                Err(PopError::Corrupt)
            }
        }
    }

    /// Parses the frame at `head`, skipping one padding frame; `None` if the bytes are not a valid
    /// frame within `head..cached_tail` (which is non-empty).
    #[inline]
    fn locate(&self) -> Option<Frame> {
        let cap = self.ring.capacity;
        let mut head = self.head;
        // At most two steps: a padding frame ends at the buffer's end, and one at offset 0 is
        // rejected, so the second step must find data.
        for _ in 0..2 {
            let avail = self.cached_tail.wrapping_sub(head) as usize;
            let pos = (head & self.ring.mask()) as usize;
            // SAFETY: `head` is 8-aligned (checked on attach, advanced by frame sizes) and `pos <
            // capacity` by the mask.
            let word = unsafe { self.ring.read_frame_word(pos) };
            let (len, kind, tag) = decode_frame(word);
            let len = len as usize;
            match kind {
                KIND_DATA => {
                    if len > max_payload(cap) {
                        return None;
                    }
                    let size = frame_size(len);
                    if size > avail || pos + size > cap {
                        return None;
                    }
                    return Some(Frame {
                        payload: pos + FRAME_HEADER,
                        len,
                        tag,
                        next_head: head.wrapping_add(size as u64),
                    });
                }
                KIND_PAD => {
                    let skip = cap - pos;
                    // Padding runs exactly to the end, is not the whole buffer, and is followed by
                    // at least a published frame header.
                    if pos == 0
                        || len + FRAME_HEADER != skip
                        || tag != 0
                        || skip + FRAME_HEADER > avail
                    {
                        return None;
                    }
                    head = head.wrapping_add(skip as u64);
                }
                _ => return None,
            }
        }
        None
    }

    /// Re-reads the producer position; `Ok(true)` if frames are pending.
    fn refresh_tail(&mut self) -> Result<bool, PopError> {
        // SYNC POINT: Acquire pairs with the producer's Release store of `tail` in
        // `Producer::publish`: the frames up to it are visible.
        let tail = self.ring.header().tail.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head);
        let seen = self.cached_tail.wrapping_sub(self.head);
        if avail > self.ring.capacity as u64 || avail < seen || tail % 8 != 0 {
            self.poisoned = true;
            return Err(PopError::Corrupt);
        }
        self.cached_tail = tail;
        if avail > seen {
            self.ring
                .prefetch((self.head & self.ring.mask()) as usize, avail as usize);
        }
        Ok(avail != 0)
    }

    /// Called on an empty ring: `Ok(true)` if the producer closed and nothing more was published.
    fn closed_and_drained(&mut self) -> Result<bool, PopError> {
        // SYNC POINT: Acquire pairs with the producer's Release `fetch_or` in `Producer::mark_closed`:
        // every tail it stored before closing is visible to the re-read below.
        if self.ring.header().config.closed.load(Ordering::Acquire) & CLOSED_PRODUCER == 0 {
            return Ok(false);
        }
        Ok(!self.refresh_tail()?)
    }

    /// Frees everything before `next_head` and wakes a producer sleeping on a full ring.
    #[inline]
    fn release<N: Notifier + ?Sized>(&mut self, next_head: u64, notifier: &N) {
        self.head = next_head;
        let h = self.ring.header();
        // SYNC POINT: Release pairs with the producer's Acquire load of `head` in
        // `Producer::refresh_head`: our reads of the freed frames happen before it reuses them.
        h.head.store(next_head, Ordering::Release);
        note_cpu(&h.consumer_line.cpu, notifier);
        wake_if_waiting(&h.producer_line.waiting, notifier);
    }

    /// Waits until a frame is pending (or the ring is closed and drained), per `policy`; see
    /// [`Producer::wait_writable`] for `check`.
    ///
    /// # Errors
    ///
    /// What `check` returns, [`PopError::Closed`] or [`PopError::Corrupt`].
    pub fn wait_readable<W, E, C>(
        &mut self,
        waiter: &W,
        policy: WaitPolicy,
        check: C,
    ) -> Result<(), E>
    where
        W: Waiter + ?Sized,
        E: From<PopError>,
        C: FnMut() -> Result<Option<Duration>, E>,
    {
        let header = self.ring.header;
        // SAFETY: the header outlives the handle (constructor contract), hence this call.
        let h = unsafe { header.as_ref() };
        let word = &h.consumer_line.waiting;
        let cpus = Some(&h.producer_line.cpu);
        let mut budget = self.spin_budget;
        let r = block_until(word, cpus, waiter, policy, &mut budget, check, || {
            if self.poisoned {
                return Err(PopError::Corrupt.into());
            }
            if self.cached_tail != self.head || self.refresh_tail()? {
                return Ok(true);
            }
            if self.closed_and_drained()? {
                return Err(PopError::Closed.into());
            }
            Ok(false)
        });
        self.spin_budget = budget;
        r
    }

    /// Announces that this side is about to wait for a frame without sleeping here (e.g. on an
    /// eventfd registered with a reactor): stores `kind` in the consumer's waiting word, fences,
    /// and re-checks the ring.
    ///
    /// `Ok(true)`: a frame is pending or the producer closed (pop again; the word is clear again).
    /// `Ok(false)`: the ring is empty, the word stays set and the producer's next publish or
    /// close wakes this side as `kind` asks (once; arm again after each wake-up). A stale armed
    /// word only costs the peer one needless wake; see [`disarm`](Self::disarm).
    ///
    /// # Errors
    ///
    /// [`PopError::Corrupt`]; the word is clear.
    pub fn arm_wake(&mut self, kind: WakeKind) -> Result<bool, PopError> {
        let header = self.ring.header;
        // SAFETY: the header outlives the handle (constructor contract), hence this call.
        let word = unsafe { &header.as_ref().consumer_line.waiting };
        arm(word, kind, || {
            if self.poisoned {
                return Err(PopError::Corrupt);
            }
            if self.cached_tail != self.head || self.refresh_tail()? {
                return Ok(true);
            }
            self.closed_and_drained()
        })
    }

    /// Clears this side's waiting word (after [`arm_wake`](Self::arm_wake), once this side no
    /// longer waits), so the producer stops paying for wake-ups.
    pub fn disarm(&self) {
        self.ring
            .header()
            .consumer_line
            .waiting
            .store(0, Ordering::Relaxed);
    }

    /// [`try_pop`](Self::try_pop), waiting for a frame per `policy`; see
    /// [`Producer::wait_writable`] for `check`.
    ///
    /// # Errors
    ///
    /// As [`wait_readable`](Self::wait_readable), plus [`PopError::BufferTooSmall`].
    pub fn pop_wait<N, W, E, C>(
        &mut self,
        buf: &mut [u8],
        notifier: &N,
        waiter: &W,
        policy: WaitPolicy,
        check: C,
    ) -> Result<FrameInfo, E>
    where
        N: Notifier + ?Sized,
        W: Waiter + ?Sized,
        E: From<PopError>,
        C: FnMut() -> Result<Option<Duration>, E>,
    {
        match self.try_pop(buf, notifier) {
            Err(PopError::Empty) => {}
            other => return other.map_err(E::from),
        }
        self.wait_readable(waiter, policy, check)?;
        self.try_pop(buf, notifier).map_err(E::from)
    }

    /// Closes the consumer side and wakes the producer if it sleeps; it then gets
    /// [`PushError::Closed`].
    pub fn close<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        self.mark_closed();
        wake_if_waiting(&self.ring.header().producer_line.waiting, notifier);
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            // Relaxed: the producer only stops on this bit; nothing is published with it. A producer
            // asleep on a full ring sees it through the SeqCst fences of the waiting protocol
            // (`close` runs the publisher half after this store).
            self.ring
                .header()
                .config
                .closed
                .fetch_or(CLOSED_CONSUMER, Ordering::Relaxed);
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.mark_closed();
    }
}

/// The next frame, read in place; freed when dropped.
///
/// The payload lives in shared memory that a misbehaving producer could rewrite at any time, so it is
/// offered only as copies ([`read`](Self::read)) or as a raw pointer ([`as_ptr`](Self::as_ptr)),
/// never as `&[u8]` (whose contents the compiler may assume do not change).
pub struct ReadChunk<'a, N: Notifier + ?Sized> {
    consumer: &'a mut Consumer,
    notifier: &'a N,
    frame: Frame,
}

impl<N: Notifier + ?Sized> fmt::Debug for ReadChunk<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("len", &self.frame.len)
            .field("tag", &self.frame.tag)
            .finish()
    }
}

impl<N: Notifier + ?Sized> ReadChunk<'_, N> {
    /// Payload length.
    pub fn len(&self) -> usize {
        self.frame.len
    }

    /// `true` for a frame without payload.
    pub fn is_empty(&self) -> bool {
        self.frame.len == 0
    }

    /// The tag the producer pushed the frame with.
    pub fn tag(&self) -> u16 {
        self.frame.tag
    }

    /// Start of the payload: valid for reads of [`len`](Self::len) bytes (8-byte aligned) until the
    /// chunk is dropped. Read it with `ptr::copy`/`read_volatile`-style accesses; the bytes may
    /// change under a misbehaving producer, and must not be made into a reference.
    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: `peek` validated `payload + len <= capacity`.
        unsafe { self.consumer.ring.buf.as_ptr().add(self.frame.payload) }
    }

    /// Copies payload bytes from `offset` into `dst`; returns how many were copied
    /// (`min(dst.len(), len - offset)`, 0 if `offset >= len`).
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> usize {
        let n = self.frame.len.saturating_sub(offset).min(dst.len());
        if n != 0 {
            // SAFETY: `offset + n <= len`, within the validated payload; `dst` holds `n` bytes.
            unsafe { ptr::copy_nonoverlapping(self.as_ptr().add(offset), dst.as_mut_ptr(), n) };
        }
        n
    }

    /// Appends the payload from `offset` on to `out` and returns how many bytes that was.
    ///
    /// Unlike `resize` followed by [`read`](Self::read), the new bytes are written once, not zeroed
    /// first: for a large message that saves a pass over the data. The growth is bounded by the
    /// frame's validated length.
    #[cfg(any(feature = "alloc", test))]
    pub fn extend_vec(&self, offset: usize, out: &mut alloc::vec::Vec<u8>) -> usize {
        let n = self.frame.len.saturating_sub(offset);
        out.reserve(n);
        let old = out.len();
        if n != 0 {
            // SAFETY: `offset + n <= len`, within the validated payload; `reserve` made room for `n`
            // bytes after `old` in `out`, and the source is shared memory, never `out` itself.
            unsafe {
                ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr().add(old), n);
            }
        }
        // SAFETY: the `n` bytes after `old` were initialised by the copy above.
        unsafe { out.set_len(old + n) };
        n
    }

    /// Copies the whole payload into a new vector.
    #[cfg(any(feature = "alloc", test))]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::new();
        self.extend_vec(0, &mut v);
        v
    }

    /// Frees the frame now (the same as dropping the chunk).
    pub fn release(self) {}

    /// Leaves the frame in the ring, unread: the next [`Consumer::read_chunk`] (or pop) returns
    /// it again, validated afresh. For a reader that decides from the tag how to consume a frame
    /// and wants a borrow of it that outlives this call.
    pub fn keep(self) {
        // Nothing to undo: the consumer's `head` moves only in `release`, and the chunk owns no
        // resource of its own.
        core::mem::forget(self);
    }
}

impl<N: Notifier + ?Sized> Drop for ReadChunk<'_, N> {
    fn drop(&mut self) {
        self.consumer.release(self.frame.next_head, self.notifier);
    }
}
