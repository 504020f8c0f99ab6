//! Rings in shared regions: creating or attaching the `flowipc_core` ring in a [`SharedRegion`] and
//! making its sender and receiver handles, which keep the mapping alive.
//!
//! Names: `flowipc_core` calls the two sides of the lock-free algorithm `Producer` and `Consumer`
//! (as rtrb and crossbeam do); everything in this crate calls them the sender and the receiver
//! ([`SenderHandle`] here, `RingSender` above it, [`Role::Sender`] in the claim registry), and
//! nothing renames them again.
//!
//! The core handles are `unsafe` to make because (1) their memory must outlive them and (2) each role
//! must be held at most once (two producers in one process would race on the same bytes, which is
//! undefined behaviour; a second one in another process is a misbehaving peer, handled by the ring's
//! checks). (1) holds because every handle here owns an `Arc<SharedRegion>` and never gives out the
//! inner core handle (only forwarding methods, so no safe code can swap it away from its region).
//! (2) holds because roles are claimed in a process-wide registry keyed by the memfd's inode: a
//! second claim of the same role of the same ring in this process fails until the first handle is
//! dropped.

use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowipc_core::sync::AtomicU32;

use flowipc_core::ring::{
    self as core_ring, AttachError, Consumer, FrameInfo, PopError, Producer, PushError, RawRing,
    ReadChunk, WriteChunk,
};
use flowipc_core::wait::{Notifier, WaitPolicy, Waiter, WakeKind};
use flowipc_sys::mmap::Access;
use flowipc_sys::{BorrowedFd, OwnedFd};

use super::{RegionError, SharedRegion, Sharing};

/// Which side of a ring a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The writing side.
    Sender,
    /// The reading side.
    Receiver,
}

/// Why a ring could not be created or attached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingOpenError {
    /// Creating or mapping the shared region failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The region does not hold a valid ring (or a different version of flowipc wrote it).
    #[error("shared-memory ring rejected: {0}")]
    Attach(#[from] AttachError),
    /// This process already holds that side of this ring; drop the other handle first.
    #[error("this process already holds the {0:?} side of this ring")]
    RoleTaken(Role),
}

type Identity = (u64, u64);

/// Roles held in this process: `(st_dev, st_ino, role)`.
static CLAIMS: Mutex<Vec<(Identity, Role)>> = Mutex::new(Vec::new());

/// A role held in [`CLAIMS`], released on drop.
#[derive(Debug)]
struct Claim {
    id: Identity,
    role: Role,
}

impl Claim {
    fn take(id: Identity, role: Role) -> Result<Claim, RingOpenError> {
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if claims.contains(&(id, role)) {
            return Err(RingOpenError::RoleTaken(role));
        }
        claims.push((id, role));
        Ok(Claim { id, role })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = claims.iter().position(|c| *c == (self.id, self.role)) {
            claims.swap_remove(i);
        }
    }
}

/// A ring laid out in a mapped [`SharedRegion`].
#[derive(Debug, Clone)]
pub(crate) struct RingRegion {
    region: Arc<SharedRegion>,
    raw: RawRing,
    id: Identity,
}

impl RingRegion {
    /// Creates a sealed memfd holding an empty ring of `capacity` bytes.
    pub(crate) fn create(capacity: usize) -> Result<Self, RingOpenError> {
        if !core_ring::is_valid_capacity(capacity) {
            return Err(AttachError::BadCapacity(capacity as u64).into());
        }
        let region = SharedRegion::create(
            c"flowipc-ring",
            core_ring::region_size(capacity),
            Sharing::Shared,
        )?;
        let ptr = region
            .as_mut_ptr()
            .ok_or(RegionError::BadSize(region.len() as u64))?;
        // SAFETY: `ptr` is a fresh read-write mapping of `region.len()` bytes, page aligned, that
        // nobody else has seen yet; the `Arc` stored beside `raw` keeps it mapped while `raw` and
        // every handle made from it live.
        let raw = unsafe { RawRing::init(ptr, region.len(), capacity)? };
        let id = region.identity()?;
        Ok(RingRegion {
            region: Arc::new(region),
            raw,
            id,
        })
    }

    /// Maps a ring region received from a peer and validates its header.
    pub(crate) fn open(fd: OwnedFd) -> Result<Self, RingOpenError> {
        let region = SharedRegion::from_fd(fd, Access::ReadWrite)?;
        let ptr = region
            .as_mut_ptr()
            .ok_or(RegionError::BadSize(region.len() as u64))?;
        // SAFETY: `ptr` maps `region.len()` read-write bytes of a memfd whose size is sealed, so
        // they stay valid while the `Arc` stored beside `raw` lives; `attach` reads the header
        // atomically and checks it, so any content is acceptable.
        let raw = unsafe { RawRing::attach(ptr, region.len())? };
        let id = region.identity()?;
        Ok(RingRegion {
            region: Arc::new(region),
            raw,
            id,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.raw.capacity()
    }

    /// Makes the sender handle (a core `Producer`), claiming the sender role in this process.
    pub(crate) fn sender(&self) -> Result<SenderHandle, RingOpenError> {
        let claim = Claim::take(self.id, Role::Sender)?;
        // SAFETY: the handle stores `self.region` (the mapping outlives the producer: fields drop
        // in order, `inner` first), and `claim` makes it the only producer of this ring in this
        // process.
        let inner = unsafe { self.raw.producer()? };
        Ok(SenderHandle {
            inner,
            _claim: claim,
            _region: self.region.clone(),
        })
    }

    /// Makes the receiver handle (a core `Consumer`), claiming the receiver role in this process.
    pub(crate) fn receiver(&self) -> Result<ReceiverHandle, RingOpenError> {
        let claim = Claim::take(self.id, Role::Receiver)?;
        // SAFETY: as in `sender`, for the consumer role.
        let inner = unsafe { self.raw.consumer()? };
        Ok(ReceiverHandle {
            inner,
            _claim: claim,
            _region: self.region.clone(),
        })
    }
}

/// One side's waiting word in a ring's header, with the region that holds it, so that it stays
/// valid wherever the value goes (the peer watcher's thread).
pub(crate) struct WaitingWord {
    word: NonNull<AtomicU32>,
    _region: Arc<SharedRegion>,
}

impl fmt::Debug for WaitingWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitingWord").finish_non_exhaustive()
    }
}

// SAFETY: the word is an atomic (shared between threads by design) inside a mapping that the
// `Arc<SharedRegion>` keeps alive as long as this value.
unsafe impl Send for WaitingWord {}
// SAFETY: as above; only `&AtomicU32` is handed out.
unsafe impl Sync for WaitingWord {}

impl WaitingWord {
    fn new(word: &AtomicU32, region: &Arc<SharedRegion>) -> Self {
        WaitingWord {
            word: NonNull::from(word),
            _region: region.clone(),
        }
    }

    /// The word.
    pub(crate) fn get(&self) -> &AtomicU32 {
        // SAFETY: the word lies in the header of the ring in `_region`, mapped as long as it lives.
        unsafe { self.word.as_ref() }
    }
}

/// A core [`Producer`] bound to the region it lives in. The inner handle is never lent out.
#[derive(Debug)]
pub(crate) struct SenderHandle {
    // Declared first: dropped (closing the ring) before the mapping goes.
    inner: Producer,
    _claim: Claim,
    _region: Arc<SharedRegion>,
}

impl SenderHandle {
    /// The word this producer sleeps on when the ring is full.
    pub(crate) fn waiting_word(&self) -> WaitingWord {
        WaitingWord::new(self.inner.raw().header().producer_waiting(), &self._region)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    #[inline]
    pub(crate) fn try_push_tagged<N: Notifier + ?Sized>(
        &mut self,
        data: &[u8],
        tag: u16,
        notifier: &N,
    ) -> Result<(), PushError> {
        self.inner.try_push_tagged(data, tag, notifier)
    }

    #[inline]
    pub(crate) fn try_push_staged(&mut self, data: &[u8], tag: u16) -> Result<(), PushError> {
        self.inner.try_push_staged(data, tag)
    }

    #[inline]
    pub(crate) fn flush<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        self.inner.flush(notifier)
    }

    pub(crate) fn staged_bytes(&self) -> usize {
        self.inner.staged_bytes()
    }

    #[inline]
    pub(crate) fn write_chunk(&mut self, len: usize) -> Result<WriteChunk<'_>, PushError> {
        self.inner.write_chunk(len)
    }

    #[inline]
    pub(crate) fn wait_writable<N, W, E, C>(
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
        self.inner
            .wait_writable(len, notifier, waiter, policy, check)
    }

    pub(crate) fn arm_wake(&mut self, kind: WakeKind) -> Result<bool, PushError> {
        self.inner.arm_wake(kind)
    }

    pub(crate) fn disarm(&self) {
        self.inner.disarm()
    }

    pub(crate) fn close<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        self.inner.close(notifier)
    }
}

/// A core [`Consumer`] bound to the region it lives in. The inner handle is never lent out.
#[derive(Debug)]
pub(crate) struct ReceiverHandle {
    // Declared first: dropped (closing the ring) before the mapping goes.
    inner: Consumer,
    _claim: Claim,
    _region: Arc<SharedRegion>,
}

impl ReceiverHandle {
    /// The word this consumer sleeps on when the ring is empty.
    pub(crate) fn waiting_word(&self) -> WaitingWord {
        WaitingWord::new(self.inner.raw().header().consumer_waiting(), &self._region)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    #[inline]
    pub(crate) fn try_pop<N: Notifier + ?Sized>(
        &mut self,
        buf: &mut [u8],
        notifier: &N,
    ) -> Result<FrameInfo, PopError> {
        self.inner.try_pop(buf, notifier)
    }

    #[inline]
    pub(crate) fn poll_frame(&mut self) -> Result<(), PopError> {
        self.inner.poll_frame()
    }

    #[inline]
    pub(crate) fn read_chunk<'a, N: Notifier + ?Sized>(
        &'a mut self,
        notifier: &'a N,
    ) -> Result<ReadChunk<'a, N>, PopError> {
        self.inner.read_chunk(notifier)
    }

    #[inline]
    pub(crate) fn wait_readable<W, E, C>(
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
        self.inner.wait_readable(waiter, policy, check)
    }

    pub(crate) fn arm_wake(&mut self, kind: WakeKind) -> Result<bool, PopError> {
        self.inner.arm_wake(kind)
    }

    pub(crate) fn disarm(&self) {
        self.inner.disarm()
    }

    pub(crate) fn close<N: Notifier + ?Sized>(&mut self, notifier: &N) {
        self.inner.close(notifier)
    }
}
