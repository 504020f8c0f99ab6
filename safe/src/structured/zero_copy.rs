//! Zero copy: a message's segments are built in the sender's lend pool, and only their handles
//! travel; the receiver reads the segments where they lie, through its read-only mapping.
//!
//! # Protocol
//!
//! - **Build.** `ShmAllocator` is a `capnp::message::Allocator` over the sender's
//!   [`PoolAllocator`]: every segment is an [`ArenaObject`] of the sender's lend pool, zeroed, 16-byte
//!   aligned, sized like capnp's `GrowHeuristically` (the first 512 words, then each segment as
//!   large as all before it together, at most [`MAX_SEGMENT_WORDS`]). A segment the pool cannot
//!   give is taken from the heap instead so that building goes on (the allocator interface cannot
//!   fail); sending that message then fails with [`StructuredError::SharedMemory`], which says how
//!   much was needed.
//! - **Send** (`lend_segments`). The sender first drains the handles the receiver gave back,
//!   then lends every segment to the receiver ([`LendPool::lend`]: one more reference on the
//!   block, recorded in the receiver's table) and sends the envelope (`bodyEncoding =
//!   sharedSegments`) followed by the segment table: a count word and one 32-byte
//!   [`ArenaHandle`] per segment, whose `len` is the segment's used bytes. A message of any size
//!   is `8 + 32 n` bytes on the wire (n is about `log2(size / 8 KiB)`). If the send fails, the
//!   lends are taken back. The sender's own `MsgOut` keeps its references, so it can be sent
//!   again; after a send, its next [`body_root`](super::MsgOut::body_root) copies the message to
//!   fresh segments first ("copy on write"), so safe code never writes a segment the receiver may
//!   be reading. A message of at most [`ZeroCopy::inline_max`] bytes (default 1 KiB) is copied
//!   into the frame instead (`bodyEncoding = inlineSegments`, as in copy mode): for it the lend,
//!   the check and the return cost more than the copy.
//! - **Receive** (`read_segments`). The receiver checks the table (1..=512 segments, the exact
//!   length, reserved bits zero) and every handle against the sender's pool as it maps it
//!   (pool id, 8-byte aligned offset and length, a live block of that generation whose capacity
//!   holds the length, inside the mapping), rejects overlapping segments, and builds a
//!   `capnp::message::Reader` over those ranges: no copy. The traversal limit is the channel's
//!   `amplification` times the message's words (plus 1024), so a 1 GiB message reads fine while
//!   an amplification bomb still stops; a [`traversal_limit_words`](super::StructuredOptions::traversal_limit_words) set explicitly caps it too.
//! - **Release.** Dropping the `MsgIn` gives every handle back through the pool's return ring
//!   ([`BorrowedPool::release_later`]: never blocks; a full ring queues the handle for the next
//!   release). The sender drains returns at each send and in [`ZeroCopy::reclaim`]; a block is
//!   freed when the sender's `MsgOut` and every lend of it are gone. When the receiving process
//!   dies, the sender's channel sees the peer gone, confirms through the peer's pidfd that the
//!   process has exited, and reclaims everything lent to it ([`LendPool::reclaim`]).
//!
//! # Soundness model
//!
//! The receiver forms `&[u8]` (capnp's segment slices, and through them `&[u8]` / `&str` of
//! `Data` and `Text` fields) over shared memory. Who can write it, and when:
//!
//! - **The receiver never can.** Its mapping is `PROT_READ`, made from a descriptor reopened
//!   read-only, of a memfd sealed with `F_SEAL_FUTURE_WRITE`: no process but the owner can map
//!   the pool writable or `write(2)` to it, and the receiver cannot `mprotect` its mapping to
//!   writable. The pool's size is sealed, so the mapping never shrinks under a reader (no
//!   `SIGBUS`), and the receiver keeps it mapped while any `MsgIn` that points into it lives.
//! - **The sender can, but only by breaking the protocol.** Through safe code it cannot: a sent
//!   segment is written again only after copy-on-write moved the message elsewhere, and a block is
//!   reused only after every reference (the receiver's included) is gone. A sender that breaks
//!   the protocol with `unsafe` code, frees a block early, or is compromised can change bytes the
//!   receiver is reading.
//! - **What that can and cannot do.** Every length and offset the receiver uses to bound a read
//!   comes from the checked handle, copied into its private memory before use; capnp checks every
//!   pointer it follows against the segment it is in (whose length is ours), and the traversal and
//!   nesting limits bound the work. So bytes changed underneath make this process read
//!   *inconsistent values* (a field that changes between two reads, a `Text` that is not UTF-8,
//!   which capnp reports as an error) but never read outside the mapping, and never read memory
//!   that is not the sender's pool.
//! - **Rust's memory model.** A `&[u8]` whose bytes change while it lives is, to the Rust
//!   abstract machine, a data race, and so undefined behaviour, whatever the hardware does: the
//!   compiler may assume two loads through it return the same value. That is the same position
//!   as every `mmap` of a file another process can write (memmap2's `Mmap` makes the caller
//!   promise it cannot happen). Our promise is the first two points: the only writer is a sender
//!   that breaks the protocol. Sessions authenticate the sender's program (its uid, gid and
//!   executable, by kernel facts), so [`Session::zero_copy`](crate::session::Session::zero_copy)
//!   is safe; [`ZeroCopy::from_pools`] over descriptors from anywhere is `unsafe`, with that
//!   promise as its contract.
//! - **For peers that are not trusted**, [`ZeroCopy::copy_on_receive`] copies every segment into
//!   private memory (one copy, with the handles checked as above) before anything reads it, and
//!   gives the segments back at once: no reference into shared memory is ever formed, so nothing
//!   the peer does can be more than wrong bytes.

#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use capnp::message::{self, ReaderSegments};
use capnp::Word;
use flowipc_core::arena::ArenaHandle;

use super::StructuredError;
use crate::arena::{
    ArenaError, ArenaObject, BorrowedPool, BorrowerId, LendPool, PoolAllocator, PoolUsage,
};

/// Largest segment the allocator asks for, in words (1 GiB): a message larger than that has
/// several segments.
pub const MAX_SEGMENT_WORDS: u32 = 1 << 27;

/// The first segment of a message, in words (4 KiB: half of capnp's suggested first segment,
/// since every segment is zeroed when it is allocated and small messages are the common case).
const FIRST_SEGMENT_WORDS: u32 = 512;

/// Most segments a message may have (as capnp's own segment table allows).
pub const MAX_SEGMENTS: usize = 512;

/// Bytes of one segment handle on the wire.
const HANDLE_LEN: usize = ArenaHandle::ENCODED_LEN;

/// How long building a message waits for the peer to give segments back when the pool is full.
const POOL_WAIT: Duration = Duration::from_secs(2);

/// How long a channel that saw its peer go waits for the peer's process to be reported exited
/// (its descriptors close a moment before its pidfd becomes readable).
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// The shared memory of one zero-copy link: this side's lend pool (where its messages are built)
/// and the peer's, mapped read-only (where the peer's messages are read). Get one from a session
/// ([`Session::zero_copy`](crate::session::Session::zero_copy)) and give it to
/// [`StructuredOptions::zero_copy`](super::StructuredOptions::zero_copy) on both sides:
///
/// ```ignore
/// let zc = session.zero_copy()?;
/// let ch = StructuredOptions::new().zero_copy(zc).open::<body::Owned>(channel)?;
/// ```
///
/// Cheap to clone; every clone shares the pools. See the [module docs](self) for the protocol
/// and the soundness model.
#[derive(Clone)]
pub struct ZeroCopy {
    pools: Arc<Pools>,
    copy_on_receive: bool,
    inline_max: usize,
}

/// Default of [`ZeroCopy::inline_max`]: lending a message and giving it back costs both sides
/// about a microsecond of bookkeeping (the lend table, the segment check, the return ring),
/// more than copying a kilobyte twice.
pub const DEFAULT_INLINE_MAX: usize = 1024;

pub(crate) struct Pools {
    own: Arc<LendPool>,
    alloc: PoolAllocator,
    borrower: BorrowerId,
    peer: Arc<BorrowedPool>,
    peer_pidfd: Option<Arc<OwnedFd>>,
    reclaimed: AtomicBool,
}

impl fmt::Debug for ZeroCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZeroCopy")
            .field("own_pool", &self.pools.own.pool_id())
            .field("peer_pool", &self.pools.peer.pool_id())
            .field("copy_on_receive", &self.copy_on_receive)
            .field("inline_max", &self.inline_max)
            .finish()
    }
}

impl ZeroCopy {
    /// Zero copy over pools set up by hand: `own` is this side's lend pool, in which `borrower`
    /// is the peer; `peer` is the peer's lend pool, of which this side is a borrower.
    /// `peer_pidfd`, if given, names the peer's process: when the channel sees the peer gone and
    /// that process has exited, everything lent to it is reclaimed.
    ///
    /// # Safety
    ///
    /// Messages received over a channel with this setting are read in place, as `&[u8]` over
    /// `peer`'s memory, which its owner can write. The caller promises that the owner of `peer`
    /// does not write a segment it sent until it has been given back (as a flowipc sender never
    /// does through safe code): a process trusted as much as a session's authenticated peer. For
    /// a peer not trusted that much, call [`copy_on_receive(true)`](Self::copy_on_receive),
    /// which makes no such assumption.
    pub unsafe fn from_pools(
        own: Arc<LendPool>,
        borrower: BorrowerId,
        peer: Arc<BorrowedPool>,
        peer_pidfd: Option<Arc<OwnedFd>>,
    ) -> ZeroCopy {
        ZeroCopy {
            pools: Arc::new(Pools {
                alloc: own.allocator(),
                own,
                borrower,
                peer,
                peer_pidfd,
                reclaimed: AtomicBool::new(false),
            }),
            copy_on_receive: false,
            inline_max: DEFAULT_INLINE_MAX,
        }
    }

    /// Messages of at most `bytes` (serialized) sent over channels with this setting are copied
    /// into the frame instead of lent: for small messages the lend costs more than the copy.
    /// Default [`DEFAULT_INLINE_MAX`]; 0 lends every message. Receivers need no setting: a
    /// frame says how its body travels.
    pub fn inline_max(mut self, bytes: usize) -> Self {
        self.inline_max = bytes;
        self
    }

    /// Whether a message of `bytes` serialized goes inline ([`inline_max`](Self::inline_max)).
    pub(crate) fn inlines(&self, bytes: usize) -> bool {
        bytes <= self.inline_max
    }

    /// Received messages are copied into private memory (and their segments given back) before
    /// they are read, instead of read in place: one copy per message, and nothing the sender
    /// does to shared memory can affect them. Sending stays zero copy. Default off.
    pub fn copy_on_receive(mut self, yes: bool) -> Self {
        self.copy_on_receive = yes;
        self
    }

    /// Whether `other` is this link's pools (a clone of the same [`ZeroCopy`]).
    pub(crate) fn same_pools(&self, other: &ZeroCopy) -> bool {
        Arc::ptr_eq(&self.pools, &other.pools)
    }

    /// Whether received messages are copied ([`copy_on_receive`](Self::copy_on_receive)).
    pub fn copies_on_receive(&self) -> bool {
        self.copy_on_receive
    }

    /// Takes back what the peer has given back, then reports what this side's pool holds: the
    /// blocks of messages being built, kept, or still held by the peer.
    pub fn pool_usage(&self) -> PoolUsage {
        let _ = self.reclaim();
        self.pools.own.usage()
    }

    /// Segments the peer holds now (lent and not yet given back, as far as this side has seen).
    pub fn lent(&self) -> usize {
        let _ = self.reclaim();
        self.pools.own.lent_to(self.pools.borrower)
    }

    /// Takes back the segments the peer has given back; returns how many. Each send does this
    /// too.
    pub fn reclaim(&self) -> Result<usize, ArenaError> {
        if self.pools.reclaimed.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.pools.own.drain_returns(self.pools.borrower)
    }

    /// For fuzzing: this side's pool and the peer's id in it.
    #[cfg(fuzzing)]
    pub(crate) fn own_pool(&self) -> (&LendPool, BorrowerId) {
        (&self.pools.own, self.pools.borrower)
    }

    /// An allocator whose first segment is `first_words` (default: 512 words).
    pub(crate) fn allocator(&self, first_words: Option<u32>) -> ShmAllocator {
        ShmAllocator {
            pools: self.pools.clone(),
            segments: Arc::new(Mutex::new(Vec::new())),
            next_words: first_words
                .unwrap_or(FIRST_SEGMENT_WORDS)
                .clamp(1, MAX_SEGMENT_WORDS),
        }
    }

    /// The channel saw the peer go (or close): if its process has exited, take back everything
    /// lent to it, once. A peer that only closed its channel may still hold messages, so nothing
    /// is reclaimed while its process lives (the pool is freed with the session then).
    pub(crate) fn peer_ended(&self) {
        let Some(pidfd) = &self.pools.peer_pidfd else {
            return;
        };
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match flowipc_sys::session::pidfd_is_alive(pidfd.as_fd()) {
                Ok(false) => break,
                Ok(true) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => return,
            }
        }
        if !self.pools.reclaimed.swap(true, Ordering::AcqRel) {
            match self.pools.own.reclaim(self.pools.borrower) {
                Ok(n) => tracing::debug!("zero copy: the peer exited; reclaimed {n} segments"),
                Err(e) => tracing::warn!("zero copy: reclaiming a dead peer's segments: {e}"),
            }
        }
    }
}

/// One segment of a message being built.
pub(crate) struct Segment {
    ptr: NonNull<u8>,
    mem: SegmentMemory,
}

enum SegmentMemory {
    Shared(ArenaObject),
    /// The pool could not give it (`needed` bytes); the message cannot be sent zero copy.
    Heap {
        _words: Vec<Word>,
        needed: usize,
        error: String,
    },
}

// SAFETY: `ptr` points into the segment's own memory (an arena object, which keeps its pool
// mapped, or a heap vector), which moves with the `Segment`; nothing about it is thread-bound.
unsafe impl Send for Segment {}
// SAFETY: `&Segment` gives only the address (no access through it).
unsafe impl Sync for Segment {}

/// The segments of one message, shared by its allocator (which adds and removes them) and the
/// `OutMessage` (which lends them at send).
pub(crate) type SegmentTable = Arc<Mutex<Vec<Segment>>>;

fn table(t: &SegmentTable) -> MutexGuard<'_, Vec<Segment>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `capnp::message::Allocator` over a lend pool; see the [module docs](self).
pub(crate) struct ShmAllocator {
    pools: Arc<Pools>,
    segments: SegmentTable,
    next_words: u32,
}

impl ShmAllocator {
    pub(crate) fn segments(&self) -> SegmentTable {
        self.segments.clone()
    }

    /// A block of `bytes` from the pool. When the pool is full, what the peer still holds is
    /// what fills it: take back what it gave back and retry, for up to [`POOL_WAIT`] (the pool
    /// is the flow control of zero copy, as a full ring is of a channel).
    fn alloc(&self, bytes: usize) -> Result<ArenaObject, ArenaError> {
        let pools = &self.pools;
        let mut deadline = None;
        let mut pause = Duration::from_micros(20);
        loop {
            let e = match pools.alloc.alloc(bytes) {
                Ok(obj) => return Ok(obj),
                Err(e) => e,
            };
            let gone = pools.reclaimed.load(Ordering::Acquire);
            if !gone && pools.own.drain_returns(pools.borrower).unwrap_or(0) > 0 {
                continue;
            }
            let end = *deadline.get_or_insert_with(|| Instant::now() + POOL_WAIT);
            if gone || pools.own.lent_to(pools.borrower) == 0 || Instant::now() >= end {
                return Err(e);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

// SAFETY: `allocate_segment` returns zeroed memory of `words * 8` bytes, 16-byte aligned (an arena
// object's payload, or a `Vec<Word>`), valid until `deallocate_segment` (the segment table owns
// it until then, and nothing else frees it).
unsafe impl message::Allocator for ShmAllocator {
    fn allocate_segment(&mut self, minimum_size: u32) -> (NonNull<u8>, u32) {
        let words = minimum_size
            .max(self.next_words)
            .clamp(1, MAX_SEGMENT_WORDS.max(minimum_size));
        self.next_words = self.next_words.saturating_add(words).min(MAX_SEGMENT_WORDS);
        let bytes = words as usize * 8;
        let seg = match self
            .alloc(bytes)
            .and_then(|obj| Ok((obj.as_mut_ptr()?, obj)))
        {
            Ok((ptr, obj)) => {
                // SAFETY: `ptr` is `bytes` writable bytes of a block only this process holds a
                // reference to (it was just allocated), so nothing reads them concurrently.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
                Segment {
                    ptr,
                    mem: SegmentMemory::Shared(obj),
                }
            }
            Err(error) => {
                let mut words_vec = Word::allocate_zeroed_vec(words as usize);
                let ptr = NonNull::new(Word::words_to_bytes_mut(&mut words_vec).as_mut_ptr())
                    .unwrap_or(NonNull::dangling());
                Segment {
                    ptr,
                    mem: SegmentMemory::Heap {
                        _words: words_vec,
                        needed: bytes,
                        error: error.to_string(),
                    },
                }
            }
        };
        let ptr = seg.ptr;
        table(&self.segments).push(seg);
        (ptr, words)
    }

    unsafe fn deallocate_segment(&mut self, ptr: NonNull<u8>, _word_size: u32, _words_used: u32) {
        let mut t = table(&self.segments);
        if let Some(i) = t.iter().position(|s| s.ptr == ptr) {
            // Dropping the object releases this message's reference; a lent block lives on
            // until the receiver gives it back.
            t.swap_remove(i);
        }
    }
}

/// Lends the segments of a built message to the peer and returns the body to send (the segment
/// table) and the handles lent (to take back if the send fails).
pub(crate) fn lend_segments(
    zc: &ZeroCopy,
    builder: &message::Builder<ShmAllocator>,
    segments: &SegmentTable,
) -> Result<(Vec<u8>, Vec<ArenaHandle>), StructuredError> {
    let pools = &zc.pools;
    if pools.reclaimed.load(Ordering::Acquire) {
        return Err(StructuredError::PeerGone);
    }
    let out = builder.get_segments_for_output();
    if out.len() > MAX_SEGMENTS {
        return Err(StructuredError::Usage(
            "a zero-copy message has more than 512 segments; build it with fewer, larger parts",
        ));
    }
    let t = table(segments);
    let mut objs = Vec::with_capacity(out.len());
    for seg in out.iter() {
        let found = t
            .iter()
            .find(|s| s.ptr.as_ptr().cast_const() == seg.as_ptr());
        match found.map(|s| &s.mem) {
            Some(SegmentMemory::Shared(obj)) => objs.push(obj),
            Some(SegmentMemory::Heap { needed, error, .. }) => {
                return Err(StructuredError::SharedMemory {
                    needed: *needed,
                    reason: error.clone(),
                })
            }
            None => {
                return Err(StructuredError::Usage(
                    "a zero-copy message's segment is not one its allocator made",
                ))
            }
        }
    }
    let mut lent = Vec::with_capacity(out.len());
    // Frees what the peer gave back before adding to its table, under the same lock.
    pools
        .own
        .drain_and_lend_many(objs.into_iter(), pools.borrower, &mut lent)
        .map_err(StructuredError::Lend)?;
    let mut body = Vec::with_capacity(8 + out.len() * HANDLE_LEN);
    body.extend_from_slice(&(out.len() as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for (h, seg) in lent.iter().zip(out.iter()) {
        let h = ArenaHandle {
            len: seg.len() as u64,
            ..*h
        };
        body.extend_from_slice(&h.to_bytes());
    }
    Ok((body, lent))
}

/// Takes back lends whose send failed.
pub(crate) fn unlend(zc: &ZeroCopy, lent: &[ArenaHandle]) {
    for h in lent {
        zc.pools.own.unlend(h, zc.pools.borrower);
    }
}

/// A received body's segments in the sender's pool, read in place; dropping it gives them back.
pub(crate) struct SharedSegments {
    pool: Arc<BorrowedPool>,
    /// `(start, bytes)` of each segment, checked against the pool.
    ranges: Vec<(NonNull<u8>, usize)>,
    handles: Vec<ArenaHandle>,
}

// SAFETY: the pointers are into the pool's read-only mapping, which `pool` keeps mapped; they
// are only read, from any thread (see the soundness model in the module docs).
unsafe impl Send for SharedSegments {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for SharedSegments {}

impl SharedSegments {
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        let &(ptr, len) = self.ranges.get(id as usize)?;
        // SAFETY: `read_segments` checked that `[ptr, ptr + len)` is a live block's range inside
        // the pool's mapping, which `self.pool` keeps mapped for as long as `self` (and so the
        // returned borrow) lives; the bytes are valid `u8`s whatever they hold. That nothing
        // writes them while the borrow lives is the sender's side of the soundness model in the
        // module docs (the receiver's mapping is read-only).
        Some(unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) })
    }

    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }
}

impl Drop for SharedSegments {
    fn drop(&mut self) {
        give_back(&self.pool, &self.handles);
    }
}

fn give_back(pool: &BorrowedPool, handles: &[ArenaHandle]) {
    if handles.is_empty() {
        return;
    }
    if let Err(e) = pool.release_many_later(handles) {
        tracing::warn!("zero copy: giving segments back failed: {e}");
    }
}

/// A received body copied out of shared memory ([`ZeroCopy::copy_on_receive`]).
pub(crate) struct PrivateSegments {
    words: Vec<Word>,
    /// `(first word, words)` of each segment in `words`.
    bounds: Vec<(usize, usize)>,
}

impl PrivateSegments {
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        let &(start, n) = self.bounds.get(id as usize)?;
        Some(Word::words_to_bytes(&self.words[start..start + n]))
    }

    pub(crate) fn len(&self) -> usize {
        self.bounds.len()
    }
}

/// A received zero-copy body, in place or copied.
pub(crate) enum ZcBody {
    Shared(SharedSegments),
    Private(PrivateSegments),
}

impl ZcBody {
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        match self {
            ZcBody::Shared(s) => s.get(id),
            ZcBody::Private(p) => p.get(id),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ZcBody::Shared(s) => s.len(),
            ZcBody::Private(p) => p.len(),
        }
    }

    /// Total words of the message.
    pub(crate) fn words(&self) -> usize {
        (0..self.len() as u32)
            .map(|i| self.get(i).map_or(0, |s| s.len() / 8))
            .sum()
    }
}

impl ReaderSegments for ZcBody {
    fn get_segment(&self, id: u32) -> Option<&[u8]> {
        self.get(id)
    }

    fn len(&self) -> usize {
        ZcBody::len(self)
    }
}

/// Checks a received segment table against the peer's pool and returns the body over those
/// segments. `Err` is why the frame is corrupt; the handles that parsed are given back.
pub(crate) fn read_segments(zc: &ZeroCopy, body: &[u8]) -> Result<ZcBody, String> {
    let pool = &zc.pools.peer;
    if body.len() < 8 {
        return Err(format!(
            "a zero-copy body of {} bytes: it must hold a segment table",
            body.len()
        ));
    }
    let count = u32::from_le_bytes(body[0..4].try_into().unwrap_or_default()) as usize;
    let reserved = u32::from_le_bytes(body[4..8].try_into().unwrap_or_default());
    if reserved != 0 || count == 0 || count > MAX_SEGMENTS {
        return Err(format!(
            "a zero-copy segment table of {count} segments (reserved word {reserved:#x}): 1 to \
             {MAX_SEGMENTS} are allowed"
        ));
    }
    if body.len() != 8 + count * HANDLE_LEN {
        return Err(format!(
            "a zero-copy segment table of {count} segments in {} bytes (expected {})",
            body.len(),
            8 + count * HANDLE_LEN
        ));
    }
    let mut handles = Vec::with_capacity(count);
    for chunk in body[8..].chunks_exact(HANDLE_LEN) {
        match ArenaHandle::from_bytes(chunk) {
            Ok(h) if h.pool_id == pool.pool_id() => handles.push(h),
            Ok(h) => {
                give_back(pool, &handles);
                return Err(format!(
                    "a zero-copy segment in pool {:#x}, not the peer's pool {:#x}",
                    h.pool_id,
                    pool.pool_id()
                ));
            }
            Err(e) => {
                give_back(pool, &handles);
                return Err(format!("a malformed zero-copy segment handle: {e:?}"));
            }
        }
    }
    match check_ranges(pool, &handles) {
        Ok(ranges) => {
            if zc.copy_on_receive {
                let body = copy_out(&ranges);
                give_back(pool, &handles);
                Ok(ZcBody::Private(body))
            } else {
                Ok(ZcBody::Shared(SharedSegments {
                    pool: pool.clone(),
                    ranges,
                    handles,
                }))
            }
        }
        Err(reason) => {
            give_back(pool, &handles);
            Err(reason)
        }
    }
}

fn check_ranges(
    pool: &BorrowedPool,
    handles: &[ArenaHandle],
) -> Result<Vec<(NonNull<u8>, usize)>, String> {
    let overlap = |a: &ArenaHandle, b: &ArenaHandle| {
        a.offset < b.offset + b.len && b.offset < a.offset + a.len
    };
    let mut ranges = Vec::with_capacity(handles.len());
    for (i, h) in handles.iter().enumerate() {
        if h.offset % 8 != 0 || h.len % 8 != 0 || h.len == 0 {
            return Err(format!(
                "zero-copy segment {i} at offset {} of {} bytes: segments are whole, aligned words",
                h.offset, h.len
            ));
        }
        if h.len / 8 > u64::from(u32::MAX) {
            return Err(format!(
                "zero-copy segment {i} of {} bytes is too long",
                h.len
            ));
        }
        let ptr = pool
            .checked_ptr(h)
            .map_err(|e| format!("zero-copy segment {i} does not name a live block: {e}"))?;
        ranges.push((ptr, h.len as usize));
    }
    // `offset + len` cannot overflow: each handle was checked inside the mapping above.
    let overlapping = if handles.len() <= 8 {
        (0..handles.len()).any(|i| (0..i).any(|j| overlap(&handles[i], &handles[j])))
    } else {
        let mut sorted: Vec<(u64, u64)> = handles
            .iter()
            .map(|h| (h.offset, h.offset + h.len))
            .collect();
        sorted.sort_unstable();
        sorted.windows(2).any(|w| w[1].0 < w[0].1)
    };
    if overlapping {
        return Err("zero-copy segments overlap".to_owned());
    }
    Ok(ranges)
}

fn copy_out(ranges: &[(NonNull<u8>, usize)]) -> PrivateSegments {
    let total: usize = ranges.iter().map(|r| r.1 / 8).sum();
    let mut words = Word::allocate_zeroed_vec(total);
    let mut bounds = Vec::with_capacity(ranges.len());
    let dst = Word::words_to_bytes_mut(&mut words);
    let mut at = 0;
    for &(ptr, len) in ranges {
        // SAFETY: `check_ranges` checked `[ptr, ptr + len)` inside the mapping, which the caller's
        // pool keeps mapped during this call. The bytes are copied with a raw copy, never
        // referenced, so a concurrent write by the owner only makes the copy wrong.
        unsafe { std::ptr::copy_nonoverlapping(ptr.as_ptr(), dst[at..].as_mut_ptr(), len) };
        bounds.push((at / 8, len / 8));
        at += len;
    }
    PrivateSegments { words, bounds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (ZeroCopy, ZeroCopy) {
        let a = Arc::new(LendPool::create(8 << 20).unwrap());
        let b = Arc::new(LendPool::create(8 << 20).unwrap());
        let (a_to_b, a_setup) = a.add_borrower().unwrap();
        let (b_to_a, b_setup) = b.add_borrower().unwrap();
        let a_seen_by_b = Arc::new(BorrowedPool::open(a_setup).unwrap());
        let b_seen_by_a = Arc::new(BorrowedPool::open(b_setup).unwrap());
        // SAFETY: both ends are this test, which follows the protocol.
        unsafe {
            (
                ZeroCopy::from_pools(a, a_to_b, b_seen_by_a, None).inline_max(0),
                ZeroCopy::from_pools(b, b_to_a, a_seen_by_b, None).inline_max(0),
            )
        }
    }

    fn build(zc: &ZeroCopy, data: &[u8]) -> (message::Builder<ShmAllocator>, SegmentTable) {
        let alloc = zc.allocator(None);
        let segs = alloc.segments();
        let mut b = message::Builder::new(alloc);
        b.init_root::<capnp::any_pointer::Builder<'_>>()
            .set_as::<capnp::data::Owned>(data)
            .unwrap();
        (b, segs)
    }

    #[test]
    fn lend_read_release_round_trip() {
        let (a, b) = pair();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let (msg, segs) = build(&a, &data);
        let (body, lent) = lend_segments(&a, &msg, &segs).unwrap();
        assert_eq!(body.len(), 8 + lent.len() * HANDLE_LEN);
        assert_eq!(a.lent(), lent.len());
        let got = read_segments(&b, &body).unwrap();
        assert!(matches!(got, ZcBody::Shared(_)));
        // Each segment is sent at the length the message used, not its block's capacity.
        let out = msg.get_segments_for_output();
        assert_eq!(got.len(), out.len());
        for (i, seg) in out.iter().enumerate() {
            assert_eq!(
                got.get(i as u32).map(<[u8]>::len),
                Some(seg.len()),
                "segment {i}"
            );
        }
        assert_eq!(got.words(), out.iter().map(|s| s.len() / 8).sum::<usize>());
        let reader = message::Reader::new(got, Default::default());
        let root: capnp::data::Reader<'_> = reader
            .get_root::<capnp::any_pointer::Reader<'_>>()
            .unwrap()
            .get_as()
            .unwrap();
        assert_eq!(root, &data[..]);
        drop(reader);
        assert_eq!(a.lent(), 0, "the receiver gave every segment back");
        drop(msg);
        assert_eq!(a.pool_usage().objects, 0);
    }

    #[test]
    fn copy_on_receive_gives_back_at_once() {
        let (a, b) = pair();
        let b = b.copy_on_receive(true);
        let (msg, segs) = build(&a, b"hello");
        let (body, _) = lend_segments(&a, &msg, &segs).unwrap();
        let got = read_segments(&b, &body).unwrap();
        assert!(matches!(got, ZcBody::Private(_)));
        assert_eq!(a.lent(), 0);
        let reader = message::Reader::new(got, Default::default());
        let root: capnp::data::Reader<'_> = reader
            .get_root::<capnp::any_pointer::Reader<'_>>()
            .unwrap()
            .get_as()
            .unwrap();
        assert_eq!(root, b"hello");
    }

    #[test]
    fn forged_tables_are_refused_and_given_back() {
        let (a, b) = pair();
        let (msg, segs) = build(&a, b"x");
        let (body, lent) = lend_segments(&a, &msg, &segs).unwrap();
        let h = lent[0];
        let table = |hs: &[ArenaHandle], count: u32, reserved: u32| {
            let mut v = count.to_le_bytes().to_vec();
            v.extend_from_slice(&reserved.to_le_bytes());
            for h in hs {
                v.extend_from_slice(&h.to_bytes());
            }
            v
        };
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("zero segments", table(&[], 0, 0)),
            ("reserved", table(&[h], 1, 1)),
            ("count mismatch", table(&[h], 2, 0)),
            ("too many", table(&vec![h; 513], 513, 0)),
            ("overlap", table(&[h, h], 2, 0)),
        ];
        for (what, forged) in [
            (
                "other pool",
                ArenaHandle {
                    pool_id: h.pool_id ^ 1,
                    ..h
                },
            ),
            (
                "misaligned",
                ArenaHandle {
                    offset: h.offset + 4,
                    ..h
                },
            ),
            ("odd length", ArenaHandle { len: 12, ..h }),
            ("empty", ArenaHandle { len: 0, ..h }),
            ("past the block", ArenaHandle { len: 1 << 30, ..h }),
            (
                "stale",
                ArenaHandle {
                    generation: h.generation.wrapping_add(1),
                    ..h
                },
            ),
            (
                "outside",
                ArenaHandle {
                    offset: 1 << 40,
                    ..h
                },
            ),
        ] {
            cases.push((what, table(&[forged], 1, 0)));
        }
        let mut trailing = body.clone();
        trailing.extend_from_slice(&[0; 8]);
        cases.push(("trailing bytes", trailing));
        // Cases another check would also catch: each must be refused by its own check (the
        // reason says which), so that removing that check fails this test.
        let own_check = [
            ("too many", "1 to 512"),
            ("other pool", "not the peer's pool"),
            ("misaligned", "aligned words"),
            ("trailing bytes", "in 48 bytes"),
        ];
        for (what, bytes) in cases {
            let reason = match read_segments(&b, &bytes) {
                Err(reason) => reason,
                Ok(_) => panic!("{what} was accepted"),
            };
            if let Some((_, want)) = own_check.iter().find(|(w, _)| *w == what) {
                assert!(reason.contains(want), "{what}: refused for {reason:?}");
            }
        }
        // The valid table still reads (nothing above released what it names twice over: the
        // owner ignores returns of what the borrower does not hold).
        assert!(read_segments(&b, &body).is_ok());
        drop(msg);
        assert_eq!(a.pool_usage().objects, 0, "nothing leaked");
    }

    /// The checks at their edges: each case sits on the boundary of one check, so moving that
    /// boundary by one (or dropping the check) fails here.
    #[test]
    fn segment_tables_at_their_edges() {
        let (a, b) = pair();
        let table = |hs: &[ArenaHandle]| {
            let mut v = (hs.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&0u32.to_le_bytes());
            for h in hs {
                v.extend_from_slice(&h.to_bytes());
            }
            v
        };
        // Ten distinct live blocks, each holding its own index, lent to `b`.
        let objs: Vec<_> = (0..10u8)
            .map(|i| a.pools.own.alloc_bytes(&[i; 64]).unwrap())
            .collect();
        let hs: Vec<_> = objs
            .iter()
            .map(|o| a.pools.own.lend(o, a.pools.borrower).unwrap())
            .collect();
        let refused = |bytes: &[u8], want: &str| match read_segments(&b, bytes) {
            Err(reason) => assert!(
                reason.contains(want),
                "refused for {reason:?}, not {want:?}"
            ),
            Ok(_) => panic!("accepted a table that should fail with {want:?}"),
        };
        let check_body = |got: &ZcBody, order: &[usize]| {
            assert_eq!(got.len(), order.len());
            assert_eq!(got.words(), order.len() * 8, "64 bytes each");
            for (id, &i) in order.iter().enumerate() {
                assert_eq!(got.get(id as u32), Some(&[i as u8; 64][..]), "segment {id}");
            }
        };
        // Distinct blocks in either order are not an overlap, in the pairwise check (up to 8
        // segments) and the sorted one (more than 8).
        for order in [
            vec![0, 1],
            vec![1, 0],
            vec![2, 0, 1],
            (0..9).collect(),
            (0..10).rev().collect(),
        ] {
            let t: Vec<_> = order.iter().map(|&i| hs[i]).collect();
            let got = read_segments(&b, &table(&t)).unwrap();
            check_body(&got, &order);
            drop(got);
            // Copied out: each segment lands at its own place, and the copy is no bigger than
            // the segments.
            let copy = b.clone().copy_on_receive(true);
            let got = read_segments(&copy, &table(&t)).unwrap();
            match &got {
                ZcBody::Private(p) => assert_eq!(p.words.len(), order.len() * 8),
                ZcBody::Shared(_) => panic!("copy_on_receive read in place"),
            }
            check_body(&got, &order);
        }
        // Repeats are overlaps in both checks; 512 segments is the most a table may hold.
        refused(&table(&[hs[3]; 2]), "overlap");
        refused(&table(&[hs[3]; 9]), "overlap");
        refused(&table(&[hs[3]; 512]), "overlap");
        refused(&table(&[hs[3]; 513]), "1 to 512");
        // Eight bytes hold a table header: an empty table is refused for its count.
        refused(&table(&[]), "1 to 512");
        // A segment's word count must fit a u32; the longest that does goes on to the block
        // check.
        let long = |words: u64| ArenaHandle {
            len: words * 8,
            ..hs[0]
        };
        refused(
            &table(&[long(u64::from(u32::MAX))]),
            "does not name a live block",
        );
        refused(&table(&[long(u64::from(u32::MAX) + 1)]), "too long");
        drop(objs);
    }

    #[test]
    fn pool_exhaustion_is_an_error_that_says_how_much() {
        let (a, _b) = pair();
        let (msg, segs) = build(&a, &vec![7u8; 16 << 20]);
        match lend_segments(&a, &msg, &segs) {
            Err(StructuredError::SharedMemory { needed, .. }) => assert!(needed >= 16 << 20),
            other => panic!("expected SharedMemory, got {:?}", other.map(|_| ())),
        }
        assert_eq!(a.lent(), 0, "no lend left behind");
    }
}
