//! The lend provider: the owner allocates, borrowers map the pool read-only and give objects back
//! through a return ring.
//!
//! Protocol: for each borrower the owner creates a return ring ([`ShmRing`]) and hands the
//! borrower two descriptors ([`BorrowerSetup`]): a read-only descriptor of the pool (reopened
//! through `/proc/self/fd`, so the borrower can neither map it writable nor `mprotect` it so) and
//! the ring. [`LendPool::lend`] adds a reference to the block for the borrower and records
//! `(offset, generation)` in that borrower's table; [`BorrowedPool::release`] pushes the handle on
//! the ring; [`LendPool::drain_returns`] pops handles, and releases a reference only for a handle
//! the table says that borrower holds (so a buggy or hostile borrower can neither release what it
//! does not hold nor release twice). [`LendPool::reclaim`] drains the ring one last time and then
//! releases everything the (dead) borrower still held, exactly once, because each record is
//! removed as it is released.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use flowipc_core::arena::ArenaHandle;
use flowipc_sys::{AsFd, OwnedFd};

use super::{
    alloc_in, alloc_zeroed_in, new_pool_id, ArenaError, ArenaObject, ArenaView, Backend,
    ScopedObject, Source, Which, MEMFD_NAME,
};
use crate::raw::arena::{MappedArena, MappedReader};
use crate::raw::{sys as region_sys, Sharing};
use crate::ring::{RingReceiver, RingRecvError, RingSendError, RingSender, ShmRing};

/// Bytes of each return ring; holds about 1500 returned handles before the borrower must wait.
const RETURN_RING_CAPACITY: usize = 64 << 10;

/// Most handles in one frame of a return ring (a borrower gives back a message's segments in
/// one frame).
const RETURN_BATCH: usize = 16;

/// The hasher of the lend tables: their keys are offsets and generations of blocks the owner
/// allocated (a borrower's returns only look keys up, never insert), so a keyed hash buys
/// nothing here and SipHash cost a fifth of a zero-copy send. A multiply-rotate mix (as in
/// rustc's FxHash).
#[derive(Default, Clone, Copy)]
struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// What a [`LendPool`] has allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Objects (blocks) allocated.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn dup(fd: flowipc_sys::BorrowedFd<'_>) -> Result<OwnedFd, ArenaError> {
    Ok(flowipc_sys::fd::dup_cloexec(fd).map_err(region_sys("dup"))?)
}

/// Allocates in a [`LendPool`] from any thread of the owning process; see
/// [`LendPool::allocator`]. Cheap to clone; `Send` and `Sync`.
///
/// With the jemalloc provider, every thread keeps a small cache of the pool's freed blocks (up to
/// about 128 KiB per size class, for blocks up to 16 KiB), so threads allocate and free without
/// contending; a thread's cache goes back to the pool when the thread exits.
#[derive(Clone)]
pub struct PoolAllocator {
    backend: Backend,
    pool_id: u64,
}

impl fmt::Debug for PoolAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolAllocator")
            .field("pool_id", &self.pool_id)
            .finish_non_exhaustive()
    }
}

impl PoolAllocator {
    /// As [`LendPool::alloc`].
    pub fn alloc(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_in(&self.backend, self.pool_id, len, 16, None)
    }

    /// As [`LendPool::alloc_scoped`]; the object borrows this allocator.
    #[inline]
    pub fn alloc_scoped(&self, len: usize) -> Result<ScopedObject<'_>, ArenaError> {
        ScopedObject::alloc(&self.backend, len)
    }
}

/// A block as the lend table names it: `(offset, generation)`.
type BlockKey = (u64, u32);

/// Names one borrower of a [`LendPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BorrowerId(u64);

/// The descriptors a borrower needs; send both to it (e.g. with `SCM_RIGHTS`) and give them to
/// [`BorrowedPool::open`] there.
#[derive(Debug)]
pub struct BorrowerSetup {
    /// Read-only descriptor of the pool.
    pub pool_fd: OwnedFd,
    /// The borrower's return ring.
    pub return_ring_fd: OwnedFd,
}

/// Keeps the blocks of a lent tree alive (a native container's list of adopted blocks, shared):
/// the lend table holds one per lend of the tree's root and drops it when the root comes back.
pub(crate) type TreeKeeper = std::sync::Arc<dyn Send + Sync>;

struct Borrower {
    _ring: ShmRing,
    returns: RingReceiver,
    /// `(offset, generation) -> references held`.
    lent: HashMap<BlockKey, u32, FastHash>,
    /// What keeps the blocks lent together with a root alive ([`LendPool::lend_tree`]): one
    /// keeper per reference to the root, dropped when that reference comes back.
    trees: HashMap<BlockKey, Vec<TreeKeeper>, FastHash>,
}

/// The owner's side of a lend pool: only this process allocates; borrowers only read.
///
/// `Send` and `Sync`: every method takes `&self` (the borrowers' tables are behind one lock, held
/// for a table update or a drain), so a pool can be shared in an `Arc` by a session and the
/// zero-copy channels that lend from it.
pub struct LendPool {
    backend: Backend,
    fd: OwnedFd,
    pool_id: u64,
    state: Mutex<LendState>,
}

struct LendState {
    borrowers: HashMap<BorrowerId, Borrower, FastHash>,
    next_borrower: u64,
    bogus_returns: u64,
}

impl fmt::Debug for LendPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LendPool")
            .field("pool_id", &self.pool_id)
            .field("borrowers", &self.state().borrowers.len())
            .finish_non_exhaustive()
    }
}

impl LendPool {
    /// Creates a lend pool of `size` bytes over the core allocator (a sealed memfd mapped
    /// read-write here only).
    pub fn create(size: usize) -> Result<Self, ArenaError> {
        let pool_id = new_pool_id();
        let inner = Arc::new(MappedArena::create(
            MEMFD_NAME,
            size,
            pool_id,
            Sharing::OwnerOnly,
        )?);
        let fd = dup(inner.fd())?;
        Ok(Self::with_backend(Backend::core(inner), fd, pool_id))
    }

    /// Creates a lend pool of `size` bytes whose objects jemalloc allocates, in a jemalloc arena
    /// whose extents come from the pool's memfd. Only this process may use it (not a fork child).
    #[cfg(feature = "jemalloc")]
    pub fn create_jemalloc(size: usize) -> Result<Self, ArenaError> {
        let pool_id = new_pool_id();
        let inner = crate::raw::jemalloc::JePool::create(MEMFD_NAME, size, pool_id)?;
        let fd = dup(inner.fd())?;
        Ok(Self::with_backend(Backend::je(inner), fd, pool_id))
    }

    fn with_backend(backend: Backend, fd: OwnedFd, pool_id: u64) -> Self {
        LendPool {
            backend,
            fd,
            pool_id,
            state: Mutex::new(LendState {
                borrowers: HashMap::default(),
                next_borrower: 1,
                bogus_returns: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, LendState> {
        // The state is consistent between statements (no user code runs under the lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This pool's id, carried by every handle into it.
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// Objects allocated and their bytes (block sizes for the core allocator, object lengths for
    /// jemalloc).
    pub fn usage(&self) -> PoolUsage {
        match self.backend.which() {
            Which::Core(m) => {
                let st = m.arena().stats();
                PoolUsage {
                    objects: st.blocks_in_use(),
                    bytes: st.bytes_in_use(),
                }
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => {
                let (objects, bytes) = p.usage();
                PoolUsage { objects, bytes }
            }
        }
    }

    /// Registers a borrower: creates its return ring and the descriptors to send it.
    pub fn add_borrower(&self) -> Result<(BorrowerId, BorrowerSetup), ArenaError> {
        let pool_fd = flowipc_sys::memfd::reopen_read_only(self.fd.as_fd())
            .map_err(region_sys("open(/proc/self/fd)"))?;
        let ring = ShmRing::create(RETURN_RING_CAPACITY)?;
        let return_ring_fd = dup(ring.fd())?;
        let returns = ring.receiver()?;
        let mut st = self.state();
        let id = BorrowerId(st.next_borrower);
        st.next_borrower += 1;
        st.borrowers.insert(
            id,
            Borrower {
                _ring: ring,
                returns,
                lent: HashMap::default(),
                trees: HashMap::default(),
            },
        );
        Ok((
            id,
            BorrowerSetup {
                pool_fd,
                return_ring_fd,
            },
        ))
    }

    /// Allocates an object of `len` bytes without initialising it (it holds whatever the block
    /// held before).
    pub fn alloc(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_in(&self.backend, self.pool_id, len, 16, None)
    }

    /// Allocates an object holding a copy of `data`.
    pub fn alloc_bytes(&self, data: &[u8]) -> Result<ArenaObject, ArenaError> {
        alloc_in(&self.backend, self.pool_id, data.len(), 16, Some(data))
    }

    /// A handle through which other threads of this process allocate in the pool, without
    /// keeping the pool handle itself. Objects it makes are objects of this pool, lendable with
    /// [`lend`](Self::lend).
    pub fn allocator(&self) -> PoolAllocator {
        PoolAllocator {
            backend: self.backend.clone(),
            pool_id: self.pool_id,
        }
    }

    /// Allocates an object of `len` bytes (uninitialised, as [`alloc`](Self::alloc)) that borrows
    /// the pool instead of holding a reference on it: the cheapest object, see [`ScopedObject`].
    /// An object to lend is an [`ArenaObject`] ([`ScopedObject::into_owned`]).
    pub fn alloc_scoped(&self, len: usize) -> Result<ScopedObject<'_>, ArenaError> {
        ScopedObject::alloc(&self.backend, len)
    }

    /// Allocates a zero-filled object of `len` bytes.
    pub fn alloc_zeroed(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_zeroed_in(&self.backend, self.pool_id, len)
    }

    /// Allocates an object holding `value`.
    pub fn alloc_value<T: zerocopy::IntoBytes + zerocopy::Immutable>(
        &self,
        value: &T,
    ) -> Result<ArenaObject, ArenaError> {
        let align = std::mem::align_of::<T>().clamp(16, flowipc_core::arena::MAX_ALIGN);
        alloc_in(
            &self.backend,
            self.pool_id,
            std::mem::size_of::<T>(),
            align,
            Some(value.as_bytes()),
        )
    }

    /// Lends `obj` to borrower `to`: adds a reference that the borrower gives back through its
    /// return ring (or that [`reclaim`](Self::reclaim) drops). Send the handle to the borrower.
    ///
    /// Do not write to a lent object: the borrower reads it concurrently.
    pub fn lend(&self, obj: &ArenaObject, to: BorrowerId) -> Result<ArenaHandle, ArenaError> {
        self.lend_keeping(obj, to, None)
    }

    /// [`lend`](Self::lend), recording `keeper` with the reference under the same lock.
    fn lend_keeping(
        &self,
        obj: &ArenaObject,
        to: BorrowerId,
        keeper: Option<TreeKeeper>,
    ) -> Result<ArenaHandle, ArenaError> {
        if obj.pool_id != self.pool_id || !obj.backend.same(&self.backend) {
            return Err(ArenaError::WrongPool {
                expected: self.pool_id,
                got: obj.pool_id,
            });
        }
        let mut st = self.state();
        let b = st
            .borrowers
            .get_mut(&to)
            .ok_or(ArenaError::UnknownBorrower(to))?;
        self.backend.retain(obj.off, obj.gen)?;
        *b.lent.entry((obj.off, obj.gen)).or_insert(0) += 1;
        if let Some(keeper) = keeper {
            b.trees.entry((obj.off, obj.gen)).or_default().push(keeper);
        }
        Ok(obj.handle())
    }

    /// Drains what `to` gave back (as [`drain_returns`](Self::drain_returns)), then lends every
    /// object of `objs` to it (as [`lend`](Self::lend) each), all under one lock; pushes their
    /// handles on `out`. On an error, the lends this call made are taken back. How a zero-copy
    /// send frees what the receiver returned and lends its segments with one lock, not two.
    pub(crate) fn drain_and_lend_many<'o>(
        &self,
        objs: impl Iterator<Item = &'o ArenaObject>,
        to: BorrowerId,
        out: &mut Vec<ArenaHandle>,
    ) -> Result<(), ArenaError> {
        let mut done = Vec::new();
        let mut st = self.state();
        let LendState {
            borrowers,
            bogus_returns,
            ..
        } = &mut *st;
        let b = borrowers
            .get_mut(&to)
            .ok_or(ArenaError::UnknownBorrower(to))?;
        drain(&self.backend, self.pool_id, b, bogus_returns, &mut done)?;
        let lent = self.lend_all(b, objs, out);
        // Trees given back are released after the lock.
        drop(st);
        drop(done);
        lent
    }

    /// The lending of [`drain_and_lend_many`](Self::drain_and_lend_many), under its lock.
    fn lend_all<'o>(
        &self,
        b: &mut Borrower,
        objs: impl Iterator<Item = &'o ArenaObject>,
        out: &mut Vec<ArenaHandle>,
    ) -> Result<(), ArenaError> {
        let start = out.len();
        for obj in objs {
            let lent = if obj.pool_id != self.pool_id || !obj.backend.same(&self.backend) {
                Err(ArenaError::WrongPool {
                    expected: self.pool_id,
                    got: obj.pool_id,
                })
            } else {
                self.backend.retain(obj.off, obj.gen)
            };
            if let Err(e) = lent {
                for h in out.drain(start..) {
                    let key = (h.offset, h.generation);
                    if let Some(c) = b.lent.get_mut(&key) {
                        *c -= 1;
                        if *c == 0 {
                            b.lent.remove(&key);
                        }
                    }
                    let _ = self.backend.release(key.0, key.1);
                }
                return Err(e);
            }
            *b.lent.entry((obj.off, obj.gen)).or_insert(0) += 1;
            out.push(obj.handle());
        }
        Ok(())
    }

    /// Lends `root` to borrower `to` as [`lend`](Self::lend) does, and with it `keeper`, which
    /// keeps the blocks the root's bytes link to alive (e.g. the nodes of a native tree) until
    /// the borrower gives the root back or is reclaimed. The borrower needs only the root's
    /// handle. O(1) whatever the tree's size: one reference on the root, one on the keeper.
    pub(crate) fn lend_tree(
        &self,
        root: &ArenaObject,
        keeper: TreeKeeper,
        to: BorrowerId,
    ) -> Result<ArenaHandle, ArenaError> {
        // One lock for the reference and its keeper: a return drained by another thread meanwhile
        // finds both or neither.
        self.lend_keeping(root, to, Some(keeper))
    }

    /// Takes back one lend of `handle` to `to` that never reached the borrower (the send that
    /// carried it failed): drops the record and the reference. `false` if there was none.
    pub(crate) fn unlend(&self, handle: &ArenaHandle, to: BorrowerId) -> bool {
        let mut st = self.state();
        let Some(b) = st.borrowers.get_mut(&to) else {
            return false;
        };
        let key = (handle.offset, handle.generation);
        match b.lent.get_mut(&key) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    b.lent.remove(&key);
                }
                let _ = self.backend.release(key.0, key.1);
                true
            }
            None => false,
        }
    }

    /// Objects (references) borrower `b` holds now.
    pub fn lent_to(&self, b: BorrowerId) -> usize {
        self.state()
            .borrowers
            .get(&b)
            .map_or(0, |b| b.lent.values().map(|&n| n as usize).sum())
    }

    /// Returned handles that named nothing the borrower held (a buggy or hostile borrower).
    pub fn bogus_returns(&self) -> u64 {
        self.state().bogus_returns
    }

    /// Pops every handle borrower `from` pushed on its return ring and releases the references
    /// they stand for. Returns how many were released.
    pub fn drain_returns(&self, from: BorrowerId) -> Result<usize, ArenaError> {
        let mut st = self.state();
        let LendState {
            borrowers,
            bogus_returns,
            ..
        } = &mut *st;
        let b = borrowers
            .get_mut(&from)
            .ok_or(ArenaError::UnknownBorrower(from))?;
        let mut done = Vec::new();
        let n = drain(&self.backend, self.pool_id, b, bogus_returns, &mut done);
        // The trees' blocks are released here, after the lock.
        drop(st);
        drop(done);
        n
    }

    /// Forgets borrower `from` (it exited or died): drains its return ring, then releases every
    /// reference it still held. Returns how many references were released in all.
    pub fn reclaim(&self, from: BorrowerId) -> Result<usize, ArenaError> {
        let mut st = self.state();
        let mut b = st
            .borrowers
            .remove(&from)
            .ok_or(ArenaError::UnknownBorrower(from))?;
        // A corrupt ring must not keep the rest from being reclaimed.
        let mut done = Vec::new();
        let mut n = drain(
            &self.backend,
            self.pool_id,
            &mut b,
            &mut st.bogus_returns,
            &mut done,
        )
        .unwrap_or(0);
        drop(st);
        drop(done);
        b.trees.clear();
        for ((off, gen), refs) in b.lent.drain() {
            for _ in 0..refs {
                if self.backend.release(off, gen).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn drain(
    backend: &Backend,
    pool_id: u64,
    b: &mut Borrower,
    bogus: &mut u64,
    done: &mut Vec<TreeKeeper>,
) -> Result<usize, ArenaError> {
    let mut n = 0;
    let mut buf = [0u8; ArenaHandle::ENCODED_LEN * RETURN_BATCH];
    loop {
        match b.returns.try_recv(&mut buf) {
            Ok(info) => {
                if info.len == 0 || info.len % ArenaHandle::ENCODED_LEN != 0 {
                    *bogus += 1;
                    continue;
                }
                for chunk in buf[..info.len].chunks_exact(ArenaHandle::ENCODED_LEN) {
                    let key = ArenaHandle::from_bytes(chunk)
                        .ok()
                        .filter(|h| h.pool_id == pool_id)
                        .map(|h| (h.offset, h.generation));
                    let held = key.and_then(|k| b.lent.get_mut(&k).map(|c| (k, c)));
                    match held {
                        Some((k, count)) => {
                            *count -= 1;
                            if *count == 0 {
                                b.lent.remove(&k);
                            }
                            if let Some(keepers) = b.trees.get_mut(&k) {
                                done.extend(keepers.pop());
                                if keepers.is_empty() {
                                    b.trees.remove(&k);
                                }
                            }
                            backend.release(k.0, k.1)?;
                            n += 1;
                        }
                        None => *bogus += 1,
                    }
                }
            }
            Err(RingRecvError::WouldBlock | RingRecvError::Closed) => return Ok(n),
            Err(RingRecvError::BufferTooSmall { .. }) => {
                // Larger than a batch: cannot be one. Skip it by reading into a big buffer.
                let mut big = vec![0u8; RETURN_RING_CAPACITY];
                let _ = b.returns.try_recv(&mut big);
                *bogus += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A borrower's side of a lend pool: reads objects through a read-only mapping and gives them back.
///
/// `Send` and `Sync`: [`release`](Self::release) takes `&self` (the return ring's sender is
/// behind a lock), so the pool can be shared in an `Arc` by a session and the zero-copy messages
/// that read from it.
pub struct BorrowedPool {
    reader: MappedReader,
    pool_id: u64,
    _ring: ShmRing,
    returns: Mutex<Returns>,
}

/// The return ring's sender, and handles released while it was full (pushed before the next).
struct Returns {
    sender: RingSender,
    pending: VecDeque<ArenaHandle>,
}

impl Returns {
    /// Pushes what waits, in order and up to [`RETURN_BATCH`] handles a frame, without
    /// blocking; `false` if the ring filled up first.
    fn flush(&mut self) -> Result<bool, ArenaError> {
        let mut frame = [0u8; ArenaHandle::ENCODED_LEN * RETURN_BATCH];
        while !self.pending.is_empty() {
            let k = self.pending.len().min(RETURN_BATCH);
            for (i, h) in self.pending.iter().take(k).enumerate() {
                frame[i * ArenaHandle::ENCODED_LEN..(i + 1) * ArenaHandle::ENCODED_LEN]
                    .copy_from_slice(&h.to_bytes());
            }
            match self.sender.try_send(&frame[..k * ArenaHandle::ENCODED_LEN]) {
                Ok(()) => {
                    self.pending.drain(..k);
                }
                Err(RingSendError::WouldBlock) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

impl fmt::Debug for BorrowedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BorrowedPool")
            .field("pool_id", &self.pool_id)
            .finish_non_exhaustive()
    }
}

impl BorrowedPool {
    /// Maps the pool read-only and opens the return ring, from the descriptors the owner sent.
    pub fn open(setup: BorrowerSetup) -> Result<Self, ArenaError> {
        let reader = MappedReader::open(setup.pool_fd)?;
        let pool_id = reader.pool_tag();
        let ring = ShmRing::open(setup.return_ring_fd)?;
        let sender = ring.sender()?;
        Ok(BorrowedPool {
            reader,
            pool_id,
            _ring: ring,
            returns: Mutex::new(Returns {
                sender,
                pending: VecDeque::new(),
            }),
        })
    }

    /// The pool's id (as the owner wrote it in the pool header).
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// A read-only view of a lent object, after checking the handle (pool, live block at that
    /// generation, range inside it).
    pub fn view(&self, handle: &ArenaHandle) -> Result<ArenaView<'_>, ArenaError> {
        if handle.pool_id != self.pool_id {
            return Err(ArenaError::WrongPool {
                expected: self.pool_id,
                got: handle.pool_id,
            });
        }
        self.reader.check(handle)?;
        Ok(ArenaView {
            src: Source::Ro(&self.reader),
            handle: *handle,
        })
    }

    fn returns(&self) -> MutexGuard<'_, Returns> {
        self.returns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a lent object back: pushes its handle on the return ring (waiting for room if the
    /// owner has not drained it), after any that [`release_later`](Self::release_later) queued.
    pub fn release(&self, handle: ArenaHandle) -> Result<(), ArenaError> {
        let mut r = self.returns();
        while !r.flush()? {
            let first = r
                .pending
                .pop_front()
                .expect("flush stopped at a pending handle");
            r.sender.send(&first.to_bytes())?;
        }
        Ok(r.sender.send(&handle.to_bytes())?)
    }

    /// Gives a lent object back without ever waiting: pushes its handle on the return ring if
    /// there is room, else queues it here for the next release (a drop must not block on an
    /// owner that does not drain). Errors only if the ring is corrupt.
    pub fn release_later(&self, handle: ArenaHandle) -> Result<(), ArenaError> {
        self.release_many_later(&[handle])
    }

    /// As [`release_later`](Self::release_later) for several handles, in as few return-ring
    /// frames as fit (up to 16 handles a frame): how a message gives back all its segments.
    pub fn release_many_later(&self, handles: &[ArenaHandle]) -> Result<(), ArenaError> {
        let mut r = self.returns();
        r.pending.extend(handles.iter().copied());
        r.flush().map(drop)
    }

    /// Handles released but not yet on the return ring (it was full).
    pub fn pending_returns(&self) -> usize {
        self.returns().pending.len()
    }

    /// The return ring's sender, to set its wait policy or peer check.
    pub fn return_ring(&mut self) -> &mut RingSender {
        &mut self
            .returns
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .sender
    }

    /// Checks a handle of this pool and returns a pointer to its `len` bytes in the read-only
    /// mapping, valid while this pool lives.
    pub(crate) fn checked_ptr(&self, handle: &ArenaHandle) -> Result<NonNull<u8>, ArenaError> {
        if handle.pool_id != self.pool_id {
            return Err(ArenaError::WrongPool {
                expected: self.pool_id,
                got: handle.pool_id,
            });
        }
        Ok(self.reader.checked_ptr(handle)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::BlockError;

    fn lend_roundtrip(pool: LendPool) {
        let (id, setup) = pool.add_borrower().unwrap();
        // The borrower's descriptor cannot be mapped writable.
        let rw = flowipc_sys::mmap::Mapping::map(
            setup.pool_fd.as_fd(),
            0,
            4096,
            flowipc_sys::mmap::Access::ReadWrite,
        );
        assert_eq!(rw.unwrap_err(), flowipc_sys::Errno::ACCESS);
        let b = BorrowedPool::open(setup).unwrap();
        assert_eq!(b.pool_id(), pool.pool_id());
        let objs: Vec<_> = (0..50usize)
            .map(|i| pool.alloc_bytes(&vec![i as u8; 10 + i * 100]).unwrap())
            .collect();
        let hs: Vec<_> = objs.iter().map(|o| pool.lend(o, id).unwrap()).collect();
        assert_eq!(pool.lent_to(id), 50);
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(
                b.view(h).unwrap().to_vec().unwrap(),
                vec![i as u8; 10 + i * 100]
            );
            let forged = ArenaHandle {
                generation: h.generation ^ 1,
                ..*h
            };
            assert!(matches!(
                b.view(&forged),
                Err(ArenaError::Block(BlockError::StaleGeneration))
            ));
            let long = ArenaHandle {
                len: h.len + 4096,
                ..*h
            };
            assert!(b.view(&long).is_err());
            let wild = ArenaHandle {
                offset: u64::MAX - 8,
                ..*h
            };
            assert!(b.view(&wild).is_err());
        }
        drop(objs);
        assert_eq!(pool.usage().objects, 50, "borrowed objects stay alive");
        for h in &hs[..20] {
            b.release(*h).unwrap();
        }
        // A bogus return and a double return are ignored.
        b.release(hs[0]).unwrap();
        b.release(ArenaHandle {
            offset: 12345,
            ..hs[1]
        })
        .unwrap();
        assert_eq!(pool.drain_returns(id).unwrap(), 20);
        assert_eq!(pool.bogus_returns(), 2);
        assert_eq!(pool.usage().objects, 30);
        assert!(b.view(&hs[0]).is_err(), "freed object no longer viewable");
        assert_eq!(pool.reclaim(id).unwrap(), 30);
        assert_eq!(pool.usage(), PoolUsage::default());
    }

    #[test]
    fn lend_roundtrip_core() {
        lend_roundtrip(LendPool::create(8 << 20).unwrap());
    }

    /// Return frames that cannot be handles (empty, not whole handles, longer than a batch) are
    /// counted as bogus and skipped; the good return behind them is still taken.
    #[test]
    fn malformed_return_frames_are_bogus() {
        let pool = LendPool::create(8 << 20).unwrap();
        let (id, setup) = pool.add_borrower().unwrap();
        let b = BorrowedPool::open(setup).unwrap();
        let obj = pool.alloc_bytes(&[1u8; 64]).unwrap();
        let h = pool.lend(&obj, id).unwrap();
        {
            let mut r = b.returns();
            r.sender.try_send(&[]).unwrap();
            r.sender.try_send(&[0u8; 5]).unwrap();
            r.sender
                .try_send(&vec![0u8; ArenaHandle::ENCODED_LEN * (RETURN_BATCH + 1)])
                .unwrap();
        }
        b.release_later(h).unwrap();
        drop(obj);
        assert_eq!(pool.drain_returns(id).unwrap(), 1);
        assert_eq!(pool.bogus_returns(), 3);
        assert_eq!(
            pool.usage(),
            PoolUsage::default(),
            "the good return freed the object"
        );
    }

    /// A lend that never reached its borrower is taken back one at a time, with its reference.
    #[test]
    fn unlend_takes_back_one_lend() {
        let pool = LendPool::create(8 << 20).unwrap();
        let (id, _setup) = pool.add_borrower().unwrap();
        let (other, _other_setup) = pool.add_borrower().unwrap();
        let obj = pool.alloc_bytes(&[5u8; 100]).unwrap();
        let h = pool.lend(&obj, id).unwrap();
        assert_eq!(pool.lend(&obj, id).unwrap(), h);
        assert_eq!(pool.lent_to(id), 2);
        assert!(!pool.unlend(&h, other), "not lent to that borrower");
        let stale = ArenaHandle {
            generation: h.generation ^ 1,
            ..h
        };
        assert!(!pool.unlend(&stale, id), "not that lend");
        assert!(pool.unlend(&h, id));
        assert_eq!(pool.lent_to(id), 1);
        assert!(pool.unlend(&h, id));
        assert_eq!(pool.lent_to(id), 0);
        assert!(!pool.unlend(&h, id), "nothing left to take back");
        drop(obj);
        assert_eq!(
            pool.usage(),
            PoolUsage::default(),
            "the lends' references went too"
        );
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn lend_roundtrip_jemalloc() {
        lend_roundtrip(LendPool::create_jemalloc(64 << 20).unwrap());
    }

    fn scoped_objects(pool: LendPool) {
        let (id, setup) = pool.add_borrower().unwrap();
        let b = BorrowedPool::open(setup).unwrap();
        let obj = pool.alloc_scoped(100).unwrap();
        obj.write(0, &[9u8; 100]).unwrap();
        assert!(obj.write(99, &[1, 2]).is_err());
        assert_eq!(obj.to_vec().unwrap(), vec![9u8; 100]);
        let obj = obj.into_owned();
        let h = pool.lend(&obj, id).unwrap();
        assert_eq!(b.view(&h).unwrap().to_vec().unwrap(), vec![9u8; 100]);
        drop(obj);
        assert_eq!(pool.usage().objects, 1, "the borrower's reference keeps it");
        assert_eq!(pool.reclaim(id).unwrap(), 1);
        assert_eq!(pool.usage().objects, 0);
        // Many short-lived objects: each drop frees its block, and generations never repeat
        // for a live handle.
        let mut gens = std::collections::HashSet::new();
        for i in 0..1000usize {
            let o = pool.alloc_scoped(64 + i % 3000).unwrap();
            assert!(gens.insert((o.handle().offset, o.handle().generation)));
        }
        assert_eq!(pool.usage().objects, 0);
        let other = pool.allocator();
        let n = std::thread::spawn(move || {
            let objs: Vec<_> = (0..100).map(|_| other.alloc(32).unwrap()).collect();
            let scoped = other.alloc_scoped(32).unwrap();
            assert_eq!(scoped.len(), 32);
            objs.len()
        })
        .join()
        .unwrap();
        assert_eq!(n, 100);
        assert_eq!(pool.usage().objects, 0, "objects of other threads freed");
        let owned = pool.alloc_scoped(8).unwrap().into_owned();
        owned.write(0, &[1; 8]).unwrap();
        assert_eq!(pool.usage().objects, 1);
        drop(owned);
        assert_eq!(pool.usage().objects, 0);
    }

    #[test]
    fn scoped_objects_core() {
        scoped_objects(LendPool::create(8 << 20).unwrap());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn scoped_objects_jemalloc() {
        scoped_objects(LendPool::create_jemalloc(64 << 20).unwrap());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_pools_are_independent_and_reusable() {
        for _ in 0..3 {
            let a = LendPool::create_jemalloc(32 << 20).unwrap();
            let b = LendPool::create_jemalloc(32 << 20).unwrap();
            let xs: Vec<_> = (0..1000)
                .map(|i| a.alloc_bytes(&[i as u8; 64]).unwrap())
                .collect();
            let ys: Vec<_> = (0..1000)
                .map(|i| b.alloc_bytes(&[i as u8; 4096]).unwrap())
                .collect();
            assert_eq!(xs[999].to_vec().unwrap(), vec![231u8; 64]);
            assert_eq!(ys[7].to_vec().unwrap(), vec![7u8; 4096]);
            drop(xs);
            assert_eq!(a.usage(), PoolUsage::default());
            assert_eq!(b.usage().objects, 1000);
        }
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_objects_dropped_on_other_threads() {
        let pool = LendPool::create_jemalloc(32 << 20).unwrap();
        for round in 0..3u8 {
            let mine: Vec<_> = (0..500)
                .map(|i| pool.alloc_bytes(&[i as u8 ^ round; 100]).unwrap())
                .collect();
            assert_eq!(
                pool.usage(),
                PoolUsage {
                    objects: 500,
                    bytes: 500 * 100
                }
            );
            let gens: std::collections::HashSet<_> =
                mine.iter().map(|o| o.handle().generation).collect();
            assert_eq!(gens.len(), 500);
            assert_eq!(mine[7].to_vec().unwrap(), vec![7 ^ round; 100]);
            // Another thread frees them (into its own front cache, flushed when it exits).
            std::thread::spawn(move || drop(mine)).join().unwrap();
            assert_eq!(pool.usage(), PoolUsage::default());
        }
    }

    /// The jemalloc pool behind `pool`.
    #[cfg(feature = "jemalloc")]
    fn je(pool: &LendPool) -> &crate::raw::jemalloc::JePool {
        match &pool.backend {
            Backend::Je(p, _) => p,
            _ => unreachable!("a jemalloc pool"),
        }
    }

    /// Blocks the jemalloc pool holds from jemalloc (live objects plus thread-cached blocks).
    #[cfg(feature = "jemalloc")]
    fn held(pool: &LendPool) -> u64 {
        je(pool).held_blocks()
    }

    /// A small deterministic generator for the mixed-size tests.
    #[cfg(feature = "jemalloc")]
    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Objects made on three threads hold (mostly) different count shards and keep the pool
    /// alive after its handle is gone; the last one, dropped on another thread, takes it along.
    fn objects_keep_the_pool_alive_through_their_shards(pool: LendPool) {
        fn alive<T: Send + Sync + 'static>(p: &Arc<T>) -> Box<dyn Fn() -> bool> {
            let w = Arc::downgrade(p);
            Box::new(move || w.upgrade().is_some())
        }
        let pool_alive = match &pool.backend {
            Backend::Core(p, _) => alive(p),
            #[cfg(feature = "jemalloc")]
            Backend::Je(p, _) => alive(p),
            _ => unreachable!("a pool handle holds the pool"),
        };
        let shard_of = |o: &ArenaObject| match &o.backend {
            Backend::CoreObject(s) => Arc::as_ptr(s) as usize,
            #[cfg(feature = "jemalloc")]
            Backend::JeObject(s) => Arc::as_ptr(s) as usize,
            _ => unreachable!("an object holds a shard"),
        };
        let objs: Vec<ArenaObject> = (0..3u8)
            .map(|i| {
                let a = pool.allocator();
                std::thread::spawn(move || {
                    let o = a.alloc(100).unwrap();
                    o.write(0, &[i; 100]).unwrap();
                    o
                })
                .join()
                .unwrap()
            })
            .collect();
        let shards: std::collections::HashSet<_> = objs.iter().map(shard_of).collect();
        assert!(shards.len() >= 2, "threads spread over the shards");
        let owned = pool.alloc_scoped(10).unwrap().into_owned();
        shard_of(&owned);
        drop(pool);
        assert!(pool_alive(), "the objects keep the pool");
        for (i, o) in objs.iter().enumerate() {
            assert_eq!(o.to_vec().unwrap(), vec![i as u8; 100]);
        }
        drop(objs);
        assert!(pool_alive(), "one object is left");
        std::thread::spawn(move || drop(owned)).join().unwrap();
        assert!(
            !pool_alive(),
            "the last object, dropped on another thread, took the pool with it"
        );
    }

    #[test]
    fn core_objects_keep_the_pool_alive_through_their_shards() {
        objects_keep_the_pool_alive_through_their_shards(LendPool::create(8 << 20).unwrap());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_objects_keep_the_pool_alive_through_their_shards() {
        objects_keep_the_pool_alive_through_their_shards(
            LendPool::create_jemalloc(16 << 20).unwrap(),
        );
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_caches_are_reused_by_later_threads() {
        let pool = LendPool::create_jemalloc(32 << 20).unwrap();
        for i in 0..50usize {
            let a = pool.allocator();
            std::thread::spawn(move || {
                let objs: Vec<_> = (0..40)
                    .map(|j| a.alloc(16 + (i * j) % 3000).unwrap())
                    .collect();
                drop(objs);
            })
            .join()
            .unwrap();
        }
        let (made, _) = je(&pool).caches_made();
        assert_eq!(
            made, 1,
            "one thread at a time: each claims the cache the last one left"
        );
        assert_eq!(pool.usage(), PoolUsage::default());
        assert_eq!(held(&pool), 0);
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_threads_beyond_the_caches_go_to_jemalloc() {
        let pool = LendPool::create_jemalloc(64 << 20).unwrap();
        let max = je(&pool).caches_made().1;
        let threads = max + 6;
        let all_holding = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        let checked = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let a = pool.allocator();
                let (all_holding, checked) = (all_holding.clone(), checked.clone());
                std::thread::spawn(move || {
                    let objs: Vec<_> = (0..10)
                        .map(|i| {
                            let o = a.alloc(100 + i).unwrap();
                            o.write(0, &[t as u8; 100]).unwrap();
                            o
                        })
                        .collect();
                    all_holding.wait();
                    checked.wait();
                    assert!(objs
                        .iter()
                        .all(|o| o.to_vec().unwrap()[..100] == [t as u8; 100]));
                })
            })
            .collect();
        all_holding.wait();
        let total: u64 = (0..10).map(|i| 100 + i).sum();
        assert_eq!(
            pool.usage(),
            PoolUsage {
                objects: 10 * threads as u64,
                bytes: total * threads as u64
            }
        );
        let (made, _) = je(&pool).caches_made();
        assert_eq!(
            made, max,
            "every cache is taken; the other threads have none"
        );
        checked.wait();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(pool.usage(), PoolUsage::default());
        assert_eq!(held(&pool), 0);
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_freed_on_one_thread_allocated_on_another() {
        let pool = LendPool::create_jemalloc(32 << 20).unwrap();
        let a = pool.allocator();
        let objs: Vec<_> = std::thread::spawn(move || {
            (0..100)
                .map(|i| {
                    let o = a.alloc(100).unwrap();
                    o.write(0, &[i as u8; 100]).unwrap();
                    o
                })
                .collect()
        })
        .join()
        .unwrap();
        let old: std::collections::HashSet<_> = objs.iter().map(|o| (o.off, o.gen)).collect();
        let b = pool.allocator();
        let (reused, fresh_gens) = std::thread::spawn(move || {
            drop(objs); // into this thread's cache
            let again: Vec<_> = (0..100).map(|_| b.alloc(100).unwrap()).collect();
            let reused = again
                .iter()
                .filter(|o| old.iter().any(|&(off, _)| off == o.off))
                .count();
            let fresh = again.iter().all(|o| !old.contains(&(o.off, o.gen)));
            (reused, fresh)
        })
        .join()
        .unwrap();
        assert!(reused >= 32, "blocks freed here are reused here: {reused}");
        assert!(fresh_gens, "a reused block gets a new generation");
        assert_eq!(pool.usage(), PoolUsage::default());
        assert_eq!(held(&pool), 0, "both threads' caches went back at exit");
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_thread_exit_returns_its_cache() {
        let pool = LendPool::create_jemalloc(32 << 20).unwrap();
        let a = pool.allocator();
        let h = std::thread::spawn(move || {
            for size in [64usize, 4096, 100, 9000] {
                let objs: Vec<_> = (0..200).map(|_| a.alloc_scoped(size).unwrap()).collect();
                drop(objs);
            }
            // Owned by this thread's cache now (bins are full: some were spilled).
            match &a.backend {
                Backend::Je(p, _) => p.held_blocks(),
                _ => unreachable!(),
            }
        });
        let cached = h.join().unwrap();
        assert!(cached >= 4 * 8, "the thread cached blocks: {cached}");
        assert!(cached < 4 * 200, "full bins spill: {cached}");
        assert_eq!(pool.usage(), PoolUsage::default());
        assert_eq!(held(&pool), 0, "the exiting thread gave its cache back");
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_pool_dropped_while_another_thread_caches_its_blocks() {
        for then_use_another_pool in [true, false] {
            let pool = LendPool::create_jemalloc(16 << 20).unwrap();
            let a = pool.allocator();
            let (to_main, from_t) = std::sync::mpsc::channel();
            let (to_t, from_main) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let objs: Vec<_> = (0..100).map(|i| a.alloc(64 + i * 40).unwrap()).collect();
                drop(objs);
                drop(a); // the cache keeps blocks of the pool, but no reference to it
                to_main.send(()).unwrap();
                from_main.recv().unwrap();
                if then_use_another_pool {
                    // A new pool: this thread's cache entry for the dead pool is forgotten,
                    // never touched.
                    let q = LendPool::create_jemalloc(16 << 20).unwrap();
                    let objs: Vec<_> = (0..1000).map(|i| q.alloc(1 + i * 17).unwrap()).collect();
                    let total: u64 = (0..1000u64).map(|i| 1 + i * 17).sum();
                    assert_eq!(
                        q.usage(),
                        PoolUsage {
                            objects: 1000,
                            bytes: total
                        }
                    );
                    drop(objs);
                    assert_eq!(q.usage(), PoolUsage::default());
                }
                // Exiting now must not flush into the dead pool (its mapping is gone).
            });
            from_t.recv().unwrap();
            drop(pool);
            to_t.send(()).unwrap();
            t.join().unwrap();
        }
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_usage_exact_after_mixed_cycles_on_threads() {
        const THREADS: usize = 3;
        let pool = LendPool::create_jemalloc(128 << 20).unwrap();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
            .map(|_| std::sync::mpsc::channel::<ArenaObject>())
            .unzip();
        let mut rxs: Vec<_> = rxs.into_iter().map(Some).collect();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let a = pool.allocator();
                let next = txs[(t + 1) % THREADS].clone();
                let inbox = rxs[t].take().unwrap();
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                    let mut live: Vec<ArenaObject> = Vec::new();
                    for _ in 0..20_000 {
                        let r = xorshift(&mut x);
                        let len = match r % 8 {
                            0 => (r >> 8) as usize % 40_000, // some beyond the cache's classes
                            1..=3 => (r >> 8) as usize % 5000,
                            _ => (r >> 8) as usize % 300,
                        };
                        live.push(a.alloc(len).unwrap());
                        if live.len() > 64 {
                            let i = (r >> 40) as usize % live.len();
                            let o = live.swap_remove(i);
                            if r & 1 == 0 {
                                next.send(o).unwrap(); // freed by the next thread
                            } else {
                                drop(o);
                            }
                        }
                        while let Ok(o) = inbox.try_recv() {
                            drop(o);
                        }
                    }
                    (live, inbox)
                })
            })
            .collect();
        drop(txs);
        let mut kept = Vec::new();
        let mut inboxes = Vec::new();
        for h in handles {
            let (live, inbox) = h.join().unwrap();
            kept.extend(live);
            inboxes.push(inbox);
        }
        // Objects still in flight between threads are alive too.
        for inbox in &inboxes {
            kept.extend(inbox.try_iter());
        }
        let bytes: u64 = kept.iter().map(|o| o.len() as u64).sum();
        assert_eq!(
            pool.usage(),
            PoolUsage {
                objects: kept.len() as u64,
                bytes
            }
        );
        assert_eq!(
            held(&pool),
            kept.len() as u64,
            "exited threads hold nothing"
        );
        drop(kept);
        assert_eq!(pool.usage(), PoolUsage::default());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_reused_block_refuses_stale_handle() {
        let pool = LendPool::create_jemalloc(16 << 20).unwrap();
        let (id, setup) = pool.add_borrower().unwrap();
        let b = BorrowedPool::open(setup).unwrap();
        let a = pool.alloc_bytes(&[1; 64]).unwrap();
        let stale = a.handle();
        drop(a);
        let c = pool.alloc_bytes(&[2; 64]).unwrap();
        assert_eq!(
            c.handle().offset,
            stale.offset,
            "the cached block is reused"
        );
        assert_ne!(c.handle().generation, stale.generation);
        assert!(matches!(
            b.view(&stale),
            Err(ArenaError::Block(BlockError::StaleGeneration))
        ));
        assert!(pool
            .backend
            .release(stale.offset, stale.generation)
            .is_err());
        assert!(pool.backend.retain(stale.offset, stale.generation).is_err());
        let h = pool.lend(&c, id).unwrap();
        assert_eq!(b.view(&h).unwrap().to_vec().unwrap(), vec![2; 64]);
        assert_eq!(pool.reclaim(id).unwrap(), 1);
        assert_eq!(pool.usage().objects, 1, "the stale release freed nothing");
        drop(c);
        assert_eq!(pool.usage(), PoolUsage::default());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_coloured_headers_spread_and_stay_checked() {
        let pool = LendPool::create_jemalloc(32 << 20).unwrap();
        let (id, setup) = pool.add_borrower().unwrap();
        let b = BorrowedPool::open(setup).unwrap();
        // 4 KiB objects live in 5 KiB blocks: without colouring their headers would all fall in
        // 4 of the 64 L1 sets (offset / 64 mod 64).
        let objs: Vec<_> = (0..64u8)
            .map(|i| pool.alloc_bytes(&[i; 4096]).unwrap())
            .collect();
        let sets: std::collections::HashSet<_> = objs
            .iter()
            .map(|o| ((o.handle().offset - 16) / 64) % 64)
            .collect();
        assert!(sets.len() >= 32, "headers in {} L1 sets", sets.len());
        for (i, o) in objs.iter().enumerate() {
            let h = pool.lend(o, id).unwrap();
            assert_eq!(b.view(&h).unwrap().to_vec().unwrap(), vec![i as u8; 4096]);
        }
        assert_eq!(pool.reclaim(id).unwrap(), 64);
        // A block reused for a request of another size in its class takes another colour: the
        // old handle (its header now stale, inside the new object's block) is refused.
        let stale: Vec<_> = objs.iter().map(|o| o.handle()).collect();
        drop(objs);
        let again: Vec<_> = (0..64u8)
            .map(|i| pool.alloc_bytes(&vec![i; 4900]).unwrap())
            .collect();
        let moved = stale
            .iter()
            .filter(|h| again.iter().all(|o| o.handle().offset != h.offset))
            .count();
        assert!(moved > 0, "some headers moved");
        for h in &stale {
            assert!(matches!(
                b.view(h),
                Err(ArenaError::Block(BlockError::StaleGeneration))
            ));
            assert!(pool.backend.release(h.offset, h.generation).is_err());
        }
        for (i, o) in again.iter().enumerate() {
            assert_eq!(o.to_vec().unwrap(), vec![i as u8; 4900]);
        }
        assert_eq!(pool.usage().objects, 64);
        drop(again);
        assert_eq!(pool.usage(), PoolUsage::default());
    }

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_objects_used_after_the_thread_cache_is_gone() {
        // A thread-local destroyed after this thread's pool cache: its object is freed, and a
        // new one allocated, without the cache.
        struct Holder(std::cell::RefCell<Option<(ArenaObject, PoolAllocator)>>);
        impl Drop for Holder {
            fn drop(&mut self) {
                if let Some((obj, a)) = self.0.borrow_mut().take() {
                    drop(obj);
                    let again = a.alloc(100).unwrap();
                    again.write(0, &[3; 100]).unwrap();
                    assert_eq!(again.to_vec().unwrap(), vec![3; 100]);
                }
            }
        }
        thread_local!(static HOLDER: Holder = const { Holder(std::cell::RefCell::new(None)) });
        let pool = LendPool::create_jemalloc(16 << 20).unwrap();
        let a = pool.allocator();
        std::thread::spawn(move || {
            // Registered first, so destroyed after the cache (destructors run in reverse).
            HOLDER.with(|_| ());
            let obj = a.alloc(100).unwrap();
            drop(a.alloc(64).unwrap()); // cached
            HOLDER.with(|h| *h.0.borrow_mut() = Some((obj, a)));
        })
        .join()
        .unwrap();
        assert_eq!(pool.usage(), PoolUsage::default());
        assert_eq!(held(&pool), 0);
    }
}
