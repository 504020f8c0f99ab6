//! Shared-memory arenas: allocate objects in memory another process maps, and pass them by handle.
//!
//! Two providers, as in the design ("The arena"):
//!
//! - **classic** ([`ShmArena`]): one sealed memfd mapped read-write by both peers; both allocate and
//!   free with the lock-free allocator of `flowipc_core::arena`. Fast and symmetric; each side must
//!   trust the other not to scribble over its objects.
//! - **lend** ([`LendPool`] / [`BorrowedPool`]): only the owner allocates; borrowers map the pool
//!   read-only and give objects back by pushing their handles on a return ring that the owner drains.
//!   The owner tracks what each borrower holds and reclaims all of it when the borrower dies.
//!
//! An object is named across processes by an [`ArenaHandle`] (pool id, offset, length, generation; 32
//! bytes on the wire). A handle from a peer is a claim: [`ShmArena::view`] and
//! [`BorrowedPool::view`] check the pool id, that the block is live at that generation and that the
//! range lies inside it, and the resulting [`ArenaView`] only copies bytes out (a Rust reference to
//! memory the peer can write would be undefined behaviour).
//!
//! Objects are reference counted in the block itself, across processes: an [`ArenaObject`] holds one
//! reference and releases it on drop; [`ArenaObject::share`] adds one for a peer, which takes it
//! over with [`ShmArena::adopt`]; the block is freed when the last reference anywhere goes.
//!
//! ```
//! use flowipc::arena::ShmArena;
//!
//! let arena = ShmArena::create_classic(1 << 20)?;
//! let obj = arena.alloc_bytes(b"hello")?;
//! let handle = obj.share()?; // send `handle.to_bytes()` and `arena.fd()` to the peer
//! // ... in the peer: `ShmArena::open(fd)?.adopt(ArenaHandle::from_bytes(&bytes)?)?` ...
//! let theirs = arena.adopt(handle)?; // here: the same process plays the peer
//! assert_eq!(theirs.to_vec()?, b"hello");
//! drop(obj);
//! drop(theirs); // the last reference frees the block
//! assert_eq!(arena.stats().blocks_in_use(), 0);
//! # Ok::<(), flowipc::arena::ArenaError>(())
//! ```

mod lend;

use std::ffi::CStr;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ptr::NonNull;
use std::sync::Arc;

use flowipc_core::arena::{Offset, MAX_ALIGN};
use flowipc_sys::{BorrowedFd, OwnedFd};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use flowipc_core::arena::{
    AllocError, ArenaHandle, ArenaStats, BlockError, ClassStats, HandleDecodeError, InitError,
};
pub(crate) use lend::TreeKeeper;
pub use lend::{BorrowedPool, BorrowerId, BorrowerSetup, LendPool, PoolAllocator, PoolUsage};

use crate::raw::arena::{MappedArena, MappedReader};
#[cfg(feature = "jemalloc")]
use crate::raw::jemalloc::JePool;
use crate::raw::{PoolError, RegionError, Sharing};

/// Why an arena operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// The arena's shared-memory region could not be created, accepted (a descriptor not sealed
    /// against resizing, an unusable size) or mapped, or a system call on it failed.
    #[error("arena region: {0}")]
    Region(#[from] RegionError),
    /// The region does not hold a valid arena.
    #[error("arena region rejected: {0}")]
    Init(#[from] InitError),
    /// Allocation failed.
    #[error("arena allocation failed: {0}")]
    Alloc(#[from] AllocError),
    /// The block or handle is not (or no longer) valid, or a range is outside it.
    #[error("arena block: {0}")]
    Block(#[from] BlockError),
    /// The handle bytes are malformed.
    #[error("arena handle: {0}")]
    Handle(#[from] HandleDecodeError),
    /// The handle names another pool.
    #[error("handle names pool {got:#x}, but this is pool {expected:#x}; look the pool up by id")]
    WrongPool {
        /// This pool's id.
        expected: u64,
        /// The handle's pool id.
        got: u64,
    },
    /// The pool belongs to another process (a jemalloc pool used in a fork child).
    #[error(
        "a jemalloc lend pool may be used only by the process that created it, not a fork child"
    )]
    NotOwner,
    /// No borrower with that id (never added, or already reclaimed).
    #[error("no borrower {0:?} in this lend pool")]
    UnknownBorrower(BorrowerId),
    /// The return ring could not be created or opened.
    #[error("return ring: {0}")]
    RingOpen(#[from] crate::ring::RingOpenError),
    /// Pushing a handle on the return ring failed.
    #[error("return ring: {0}")]
    RingSend(#[from] crate::ring::RingSendError),
    /// Draining the return ring failed (the borrower corrupted it).
    #[error("return ring: {0}")]
    RingRecv(#[from] crate::ring::RingRecvError),
}

impl From<PoolError> for ArenaError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Region(e) => ArenaError::Region(e),
            PoolError::Init(e) => ArenaError::Init(e),
            PoolError::Alloc(e) => ArenaError::Alloc(e),
            PoolError::Block(e) => ArenaError::Block(e),
            #[cfg(feature = "jemalloc")]
            PoolError::NotOwner => ArenaError::NotOwner,
        }
    }
}

/// A fresh pool id: random per pool (from the process's hash seed and a counter).
fn new_pool_id() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// Name shown in `/proc/<pid>/fd` for arena memfds.
const MEMFD_NAME: &CStr = c"flowipc-arena";

/// A classic arena: a sealed memfd that this process and its peer both map read-write and allocate in.
#[derive(Clone)]
pub struct ShmArena {
    inner: Arc<MappedArena>,
    backend: Backend,
    pool_id: u64,
}

impl fmt::Debug for ShmArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmArena")
            .field("pool_id", &self.pool_id)
            .field("len", &self.inner.len())
            .finish()
    }
}

impl ShmArena {
    /// Creates a classic arena of `size` bytes (a sealed memfd, mapped read-write). Send
    /// [`fd`](Self::fd) to the peer, which calls [`ShmArena::open`].
    ///
    /// About 256 KiB plus a few bytes per 256 KiB go to the header and span table; a size class
    /// takes memory in 256 KiB spans, so give small arenas at least a few MiB.
    pub fn create_classic(size: usize) -> Result<Self, ArenaError> {
        let pool_id = new_pool_id();
        let inner = Arc::new(MappedArena::create(
            MEMFD_NAME,
            size,
            pool_id,
            Sharing::Shared,
        )?);
        Ok(ShmArena {
            backend: Backend::core(inner.clone()),
            inner,
            pool_id,
        })
    }

    /// Maps a classic arena created by the peer (checking seals, size and header).
    pub fn open(fd: OwnedFd) -> Result<Self, ArenaError> {
        let inner = MappedArena::open(fd)?;
        let pool_id = inner.arena().pool_tag();
        let inner = Arc::new(inner);
        Ok(ShmArena {
            backend: Backend::core(inner.clone()),
            inner,
            pool_id,
        })
    }

    /// The memfd, to send to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }

    /// This pool's id, carried by every handle into it.
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// Usage counters of the arena (shared by both peers).
    pub fn stats(&self) -> ArenaStats {
        self.inner.arena().stats()
    }

    /// Allocates an object of `len` bytes without initialising it: it holds whatever the block
    /// held before (fill it with [`ArenaObject::write`]).
    pub fn alloc(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_in(&self.backend, self.pool_id, len, 16, None)
    }

    /// Allocates an object holding a copy of `data`.
    pub fn alloc_bytes(&self, data: &[u8]) -> Result<ArenaObject, ArenaError> {
        alloc_in(&self.backend, self.pool_id, data.len(), 16, Some(data))
    }

    /// Allocates an object of `len` bytes (uninitialised, as [`alloc`](Self::alloc)) that borrows
    /// the arena instead of holding a reference on it; see [`ScopedObject`].
    pub fn alloc_scoped(&self, len: usize) -> Result<ScopedObject<'_>, ArenaError> {
        ScopedObject::alloc(&self.backend, len)
    }

    /// Allocates a zero-filled object of `len` bytes.
    pub fn alloc_zeroed(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_zeroed_in(&self.backend, self.pool_id, len)
    }

    /// Allocates an object holding `value`, aligned for `T` (any type with `zerocopy`'s
    /// `IntoBytes` and `Immutable`: its bytes are all initialised).
    pub fn alloc_value<T: IntoBytes + Immutable>(
        &self,
        value: &T,
    ) -> Result<ArenaObject, ArenaError> {
        let align = std::mem::align_of::<T>().clamp(16, MAX_ALIGN);
        alloc_in(
            &self.backend,
            self.pool_id,
            std::mem::size_of::<T>(),
            align,
            Some(value.as_bytes()),
        )
    }

    /// Takes over the reference a peer passed with [`ArenaObject::share`] or
    /// [`ArenaObject::into_handle`], after checking the handle.
    pub fn adopt(&self, handle: ArenaHandle) -> Result<ArenaObject, ArenaError> {
        self.check_pool(&handle)?;
        self.inner.arena().check_handle(&handle)?;
        Ok(ArenaObject {
            backend: self.backend.clone(),
            pool_id: self.pool_id,
            off: handle.offset,
            len: handle.len,
            gen: handle.generation,
        })
    }

    /// A read-only view of the object a handle names, after checking it. The view holds no
    /// reference: the sender must keep the object alive while the view is used (reads of a block
    /// freed meanwhile fail with `StaleGeneration`, or may see the new object's bytes if it was
    /// reallocated between the check and the copy).
    pub fn view(&self, handle: &ArenaHandle) -> Result<ArenaView<'_>, ArenaError> {
        self.check_pool(handle)?;
        self.inner.arena().check_handle(handle)?;
        Ok(ArenaView {
            src: Source::Rw(&self.inner),
            handle: *handle,
        })
    }

    fn check_pool(&self, h: &ArenaHandle) -> Result<(), ArenaError> {
        if h.pool_id != self.pool_id {
            return Err(ArenaError::WrongPool {
                expected: self.pool_id,
                got: h.pool_id,
            });
        }
        Ok(())
    }
}

/// Where an object's block lives: the core allocator or (feature `jemalloc`) a jemalloc pool.
///
/// Pool handles hold the pool and its count [`Shards`]; [`ArenaObject`]s hold one shard.
#[derive(Clone)]
pub(crate) enum Backend {
    Core(Arc<MappedArena>, Arc<Shards<MappedArena>>),
    CoreObject(Arc<Shard<MappedArena>>),
    #[cfg(feature = "jemalloc")]
    Je(Arc<JePool>, Arc<Shards<JePool>>),
    #[cfg(feature = "jemalloc")]
    JeObject(Arc<Shard<JePool>>),
}

/// How many reference-count shards a pool has.
const SHARDS: usize = 8;

/// One of a pool's reference-count shards: an `Arc` on the pool, itself behind an `Arc` whose
/// counts have a cache line (two, for the adjacent-line prefetcher) to themselves.
///
/// Every [`ArenaObject`] keeps its pool alive. If each held an `Arc` on the pool, every thread
/// making or dropping objects would bump the same counter, and two threads doing so at once
/// bounce its line between their cores (a measured 82-120 ns per alloc + free pair on two
/// threads, against 36-42 ns on one, in a jemalloc pool). Objects instead hold an `Arc` on one
/// of [`SHARDS`] shards, picked by the thread that makes them, and the shards hold the pool: it
/// lives while any shard does, and a shard while any object or pool handle does.
#[repr(align(128))]
pub(crate) struct Shard<T> {
    pool: Arc<T>,
}

/// A pool's count shards, held by its handles.
pub(crate) struct Shards<T>([Arc<Shard<T>>; SHARDS]);

impl<T> Shards<T> {
    /// Shards for `pool`.
    pub(crate) fn new(pool: &Arc<T>) -> Arc<Self> {
        Arc::new(Shards(std::array::from_fn(|_| {
            Arc::new(Shard { pool: pool.clone() })
        })))
    }

    /// The calling thread's shard: threads are spread over the shards in the order they first
    /// ask.
    #[inline]
    fn pick(&self) -> &Arc<Shard<T>> {
        use std::cell::Cell;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let mut i = MINE.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            MINE.set(i);
        }
        &self.0[i % SHARDS]
    }
}

/// A [`Backend`] seen through a plain reference to its allocator.
enum Which<'a> {
    Core(&'a MappedArena),
    #[cfg(feature = "jemalloc")]
    Je(&'a JePool),
}

impl Backend {
    /// A pool handle's backend on a core arena.
    pub(crate) fn core(pool: Arc<MappedArena>) -> Backend {
        let shards = Shards::new(&pool);
        Backend::Core(pool, shards)
    }

    /// A pool handle's backend on a jemalloc pool.
    #[cfg(feature = "jemalloc")]
    pub(crate) fn je(pool: Arc<JePool>) -> Backend {
        let shards = Shards::new(&pool);
        Backend::Je(pool, shards)
    }

    /// The allocator behind the backend.
    #[inline]
    fn which(&self) -> Which<'_> {
        match self {
            Backend::Core(m, _) => Which::Core(m),
            Backend::CoreObject(s) => Which::Core(&s.pool),
            #[cfg(feature = "jemalloc")]
            Backend::Je(p, _) => Which::Je(p),
            #[cfg(feature = "jemalloc")]
            Backend::JeObject(s) => Which::Je(&s.pool),
        }
    }

    /// The backend a new [`ArenaObject`] holds: a reference on the calling thread's count
    /// shard rather than on the pool itself.
    #[inline]
    fn for_object(&self) -> Backend {
        match self {
            Backend::Core(_, shards) => Backend::CoreObject(shards.pick().clone()),
            Backend::CoreObject(s) => Backend::CoreObject(s.clone()),
            #[cfg(feature = "jemalloc")]
            Backend::Je(_, shards) => Backend::JeObject(shards.pick().clone()),
            #[cfg(feature = "jemalloc")]
            Backend::JeObject(s) => Backend::JeObject(s.clone()),
        }
    }

    #[inline]
    fn alloc(&self, len: usize, align: usize) -> Result<(u64, u32), ArenaError> {
        match self.which() {
            Which::Core(m) => {
                let off = m.arena().alloc(len, align)?;
                Ok((off.get(), m.arena().info(off)?.generation))
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.alloc(len)?),
        }
    }

    fn write(&self, off: u64, gen: u32, at: u64, data: &[u8]) -> Result<(), ArenaError> {
        match self.which() {
            Which::Core(m) => Ok(m.write(Offset::new(off), gen, at, data)?),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.write(off, gen, at, data)?),
        }
    }

    fn block_ptr(&self, off: u64, gen: u32, len: usize) -> Result<NonNull<u8>, ArenaError> {
        match self.which() {
            Which::Core(m) => Ok(m.block_ptr(Offset::new(off), gen, len)?),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.block_ptr(off, gen, len)?),
        }
    }

    /// The block's references now (any process), checking that it is live at `gen`.
    fn refcount(&self, off: u64, gen: u32) -> Result<u32, ArenaError> {
        match self.which() {
            Which::Core(m) => {
                let info = m.arena().info(Offset::new(off))?;
                if info.generation != gen {
                    return Err(BlockError::StaleGeneration.into());
                }
                Ok(info.refcount)
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.info(off, gen)?.refcount),
        }
    }

    fn read(&self, off: u64, gen: u32, at: u64, buf: &mut [u8]) -> Result<(), ArenaError> {
        match self.which() {
            Which::Core(m) => Ok(m.read(Offset::new(off), gen, at, buf)?),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.read(off, gen, at, buf)?),
        }
    }

    fn retain(&self, off: u64, gen: u32) -> Result<(), ArenaError> {
        match self.which() {
            Which::Core(m) => m
                .arena()
                .retain(Offset::new(off), gen)
                .map(drop)
                .map_err(Into::into),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.retain(off, gen)?),
        }
    }

    #[inline]
    fn release(&self, off: u64, gen: u32) -> Result<bool, ArenaError> {
        match self.which() {
            Which::Core(m) => Ok(m.arena().release(Offset::new(off), gen)?),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.release(off, gen)?),
        }
    }

    /// The pool's id (as its creator chose it; a classic arena's as read when it was opened).
    fn pool_id(&self) -> u64 {
        match self.which() {
            Which::Core(m) => m.pool_id(),
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => p.pool_id(),
        }
    }

    /// Allocates the block of a [`ScopedObject`] of `len` bytes; returns its id (see there).
    #[inline]
    fn alloc_scoped(&self, len: usize) -> Result<u64, ArenaError> {
        match self.which() {
            Which::Core(m) => {
                let len32 = u32::try_from(len).map_err(|_| AllocError::TooLarge)?;
                let off = m.arena().alloc(len, 16)?;
                match u32::try_from(off.get() / 16) {
                    Ok(slot) => Ok(u64::from(len32) << 32 | u64::from(slot)),
                    Err(_) => {
                        // Beyond 64 GiB, where no core arena reaches (its spans end below).
                        let gen = m.arena().info(off)?.generation;
                        m.arena().release(off, gen)?;
                        Err(AllocError::TooLarge.into())
                    }
                }
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.alloc(len)?.0),
        }
    }

    /// The offset, generation and length of the scoped object `id`.
    fn scoped_parts(&self, id: u64) -> (u64, u32, u64) {
        match self.which() {
            Which::Core(m) => {
                let off = (id & 0xffff_ffff) * 16;
                // The generation in the block's state word: the core allocator keeps no length,
                // so the id holds that instead. A block that is not live (the peer freed it
                // behind our back) gives 0, and every use of it fails its own liveness check.
                let gen = m.arena().info(Offset::new(off)).map_or(0, |i| i.generation);
                (off, gen, id >> 32)
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => {
                let (gen, len) = p.own_parts(id);
                (id, gen, len)
            }
        }
    }

    /// The length of the scoped object `id`.
    #[inline]
    fn scoped_len(&self, id: u64) -> u64 {
        match self.which() {
            Which::Core(_) => id >> 32,
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => p.own_len(id),
        }
    }

    /// Drops the scoped object `id`'s reference; returns whether that freed it.
    #[inline]
    fn release_scoped(&self, id: u64) -> Result<bool, ArenaError> {
        match self.which() {
            Which::Core(_) => {
                let (off, gen, _) = self.scoped_parts(id);
                self.release(off, gen)
            }
            #[cfg(feature = "jemalloc")]
            Which::Je(p) => Ok(p.release_own(id)?),
        }
    }

    fn same(&self, other: &Backend) -> bool {
        match (self.which(), other.which()) {
            (Which::Core(a), Which::Core(b)) => std::ptr::eq(a, b),
            #[cfg(feature = "jemalloc")]
            (Which::Je(a), Which::Je(b)) => std::ptr::eq(a, b),
            #[cfg(feature = "jemalloc")]
            _ => false,
        }
    }
}

fn alloc_zeroed_in(backend: &Backend, pool_id: u64, len: usize) -> Result<ArenaObject, ArenaError> {
    let obj = alloc_in(backend, pool_id, len, 16, None)?;
    // A recycled block holds old bytes: clear it in chunks.
    let zeros = [0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len());
        obj.write(at, &zeros[..n])?;
        at += n;
    }
    Ok(obj)
}

fn alloc_in(
    backend: &Backend,
    pool_id: u64,
    len: usize,
    align: usize,
    data: Option<&[u8]>,
) -> Result<ArenaObject, ArenaError> {
    let (off, gen) = backend.alloc(len, align)?;
    let obj = ArenaObject {
        backend: backend.for_object(),
        pool_id,
        off,
        len: len as u64,
        gen,
    };
    if let Some(data) = data {
        obj.write(0, data)?;
    }
    Ok(obj)
}

/// An object in an arena, holding one reference to its block; dropping it releases the reference
/// (and frees the block if it was the last one, in any process).
///
/// It keeps its pool alive, so it may outlive every handle on the pool; that costs an atomic
/// increment when it is made and a decrement when it is dropped. The count is spread over a few
/// shards picked by the thread that makes the object, so threads making and dropping objects at
/// once rarely share a counter. [`ScopedObject`] borrows its pool
/// instead and costs neither.
///
/// The bytes are shared memory, so they are read and written by copying, never borrowed.
pub struct ArenaObject {
    backend: Backend,
    pool_id: u64,
    off: u64,
    len: u64,
    gen: u32,
}

impl fmt::Debug for ArenaObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaObject")
            .field("pool_id", &self.pool_id)
            .field("offset", &self.off)
            .field("len", &self.len)
            .field("generation", &self.gen)
            .finish()
    }
}

impl ArenaObject {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The handle naming this object, without adding a reference (for a peer that only views it
    /// while this object is alive).
    pub fn handle(&self) -> ArenaHandle {
        ArenaHandle {
            pool_id: self.pool_id,
            offset: self.off,
            len: self.len,
            generation: self.gen,
            reserved: 0,
        }
    }

    /// Adds a reference for a peer and returns the handle that carries it; the peer takes it over
    /// with [`ShmArena::adopt`] (and releases it by dropping the object).
    pub fn share(&self) -> Result<ArenaHandle, ArenaError> {
        self.backend.retain(self.off, self.gen)?;
        Ok(self.handle())
    }

    /// Gives this object's reference to the handle (e.g. to send it to a peer that adopts it).
    pub fn into_handle(self) -> ArenaHandle {
        let h = self.handle();
        std::mem::forget(self);
        h
    }

    /// Copies `data` into the object at byte `at`.
    pub fn write(&self, at: usize, data: &[u8]) -> Result<(), ArenaError> {
        self.check_range(at, data.len())?;
        self.backend.write(self.off, self.gen, at as u64, data)
    }

    /// Copies bytes of the object from byte `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), ArenaError> {
        self.check_range(at, buf.len())?;
        self.backend.read(self.off, self.gen, at as u64, buf)
    }

    /// A copy of the whole object.
    pub fn to_vec(&self) -> Result<Vec<u8>, ArenaError> {
        let mut v = vec![0; self.len()];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// Writes `value` at byte `at`.
    pub fn write_value<T: IntoBytes + Immutable>(
        &self,
        at: usize,
        value: &T,
    ) -> Result<(), ArenaError> {
        self.write(at, value.as_bytes())
    }

    /// Reads a `T` at byte `at` (`T: FromBytes`: any bit pattern is a valid `T`, so a peer's
    /// writes cannot make it invalid, only wrong).
    pub fn read_value<T: FromBytes>(&self, at: usize) -> Result<T, ArenaError> {
        let mut buf = vec![0u8; std::mem::size_of::<T>()];
        self.read(at, &mut buf)?;
        value_from(&buf)
    }

    fn check_range(&self, at: usize, len: usize) -> Result<(), ArenaError> {
        check_range(self.len, at, len)
    }

    /// A pointer to the object's `len()` bytes in this process's writable mapping, valid while
    /// the object lives (it keeps its pool mapped). For the crate's zero-copy layers, which own
    /// the object and state their own aliasing model where they form references over it.
    pub(crate) fn as_mut_ptr(&self) -> Result<NonNull<u8>, ArenaError> {
        self.backend.block_ptr(self.off, self.gen, self.len())
    }

    /// References to the block now, in every process (1: only this object). For the native
    /// structures, which refuse to change a block someone else holds.
    pub(crate) fn refcount(&self) -> Result<u32, ArenaError> {
        self.backend.refcount(self.off, self.gen)
    }
}

impl Drop for ArenaObject {
    fn drop(&mut self) {
        // An error means the peer corrupted or freed the block behind our back; nothing to undo.
        let _ = self.backend.release(self.off, self.gen);
    }
}

/// An object like [`ArenaObject`] that borrows its pool (`&ShmArena` or `&LendPool`) instead of
/// keeping it alive with a reference count on the pool, so making and dropping one costs only the
/// allocator's work: the block allocation, its header and the release of its reference. Use it for
/// objects that do not outlive the pool handle they came from; [`into_owned`](Self::into_owned)
/// turns one into an [`ArenaObject`] when it must.
///
/// It is two words (returned in registers): the pool and the block. A jemalloc pool's object is
/// named by its offset alone, its generation and length read back from the object header that
/// only the owner writes. A core pool's object carries its offset and length (so at most 4 GiB,
/// as in a jemalloc pool), its generation read back from the block's state word; in a classic
/// arena the peer can write that word too, which the classic provider trusts it not to do.
///
/// ```
/// # fn main() -> Result<(), flowipc::arena::ArenaError> {
/// let pool = flowipc::arena::LendPool::create(4 << 20)?;
/// let obj = pool.alloc_scoped(64)?;
/// obj.write(0, b"hello")?;
/// let mut buf = [0u8; 5];
/// obj.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// drop(obj); // freed: it held the only reference
/// assert_eq!(pool.usage().objects, 0);
/// # Ok(())
/// # }
/// ```
pub struct ScopedObject<'p> {
    backend: &'p Backend,
    /// Jemalloc: the offset. Core: `len << 32 | offset / 16`.
    id: u64,
}

static_assertions::const_assert_eq!(std::mem::size_of::<ScopedObject<'static>>(), 16);

impl fmt::Debug for ScopedObject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (off, gen, len) = self.backend.scoped_parts(self.id);
        f.debug_struct("ScopedObject")
            .field("pool_id", &self.backend.pool_id())
            .field("offset", &off)
            .field("len", &len)
            .field("generation", &gen)
            .finish()
    }
}

impl<'p> ScopedObject<'p> {
    #[inline]
    fn alloc(backend: &'p Backend, len: usize) -> Result<Self, ArenaError> {
        let id = backend.alloc_scoped(len)?;
        Ok(ScopedObject { backend, id })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.backend.scoped_len(self.id) as usize
    }

    /// Whether the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handle naming this object, without adding a reference (as [`ArenaObject::handle`]).
    pub fn handle(&self) -> ArenaHandle {
        let (offset, generation, len) = self.backend.scoped_parts(self.id);
        ArenaHandle {
            pool_id: self.backend.pool_id(),
            offset,
            len,
            generation,
            reserved: 0,
        }
    }

    /// Adds a reference for a peer and returns the handle that carries it (as
    /// [`ArenaObject::share`]).
    pub fn share(&self) -> Result<ArenaHandle, ArenaError> {
        let h = self.handle();
        self.backend.retain(h.offset, h.generation)?;
        Ok(h)
    }

    /// Copies `data` into the object at byte `at`.
    pub fn write(&self, at: usize, data: &[u8]) -> Result<(), ArenaError> {
        let (off, gen, len) = self.backend.scoped_parts(self.id);
        check_range(len, at, data.len())?;
        self.backend.write(off, gen, at as u64, data)
    }

    /// Copies bytes of the object from byte `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), ArenaError> {
        let (off, gen, len) = self.backend.scoped_parts(self.id);
        check_range(len, at, buf.len())?;
        self.backend.read(off, gen, at as u64, buf)
    }

    /// A copy of the whole object.
    pub fn to_vec(&self) -> Result<Vec<u8>, ArenaError> {
        let mut v = vec![0; self.len()];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// The same object, now keeping its pool alive (one reference count on the pool).
    pub fn into_owned(self) -> ArenaObject {
        let (off, gen, len) = self.backend.scoped_parts(self.id);
        let obj = ArenaObject {
            backend: self.backend.for_object(),
            pool_id: self.backend.pool_id(),
            off,
            len,
            gen,
        };
        std::mem::forget(self);
        obj
    }
}

impl Drop for ScopedObject<'_> {
    #[inline]
    fn drop(&mut self) {
        // An error means the peer corrupted or freed the block behind our back; nothing to undo.
        let _ = self.backend.release_scoped(self.id);
    }
}

/// A `T` from exactly its size of bytes (copied: no alignment needed).
fn value_from<T: FromBytes>(bytes: &[u8]) -> Result<T, ArenaError> {
    T::read_from_bytes(bytes).map_err(|_| BlockError::TooLong.into())
}

fn check_range(len: u64, at: usize, n: usize) -> Result<(), ArenaError> {
    match at.checked_add(n) {
        Some(end) if end as u64 <= len => Ok(()),
        _ => Err(BlockError::TooLong.into()),
    }
}

enum Source<'a> {
    Rw(&'a MappedArena),
    Ro(&'a MappedReader),
}

/// A read-only window on an object named by a checked handle. Every read re-checks the handle
/// (so a block freed meanwhile gives `StaleGeneration`) and copies the bytes out.
pub struct ArenaView<'a> {
    src: Source<'a>,
    handle: ArenaHandle,
}

impl fmt::Debug for ArenaView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaView")
            .field("handle", &self.handle)
            .finish()
    }
}

impl ArenaView<'_> {
    /// The handle this view was made from.
    pub fn handle(&self) -> ArenaHandle {
        self.handle
    }

    /// Length of the object in bytes.
    pub fn len(&self) -> usize {
        self.handle.len as usize
    }

    /// Whether the object has no bytes.
    pub fn is_empty(&self) -> bool {
        self.handle.len == 0
    }

    /// Copies bytes of the object from byte `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), ArenaError> {
        match self.src {
            Source::Rw(m) => m.read_handle(&self.handle, at as u64, buf)?,
            Source::Ro(m) => m.read_handle(&self.handle, at as u64, buf)?,
        };
        Ok(())
    }

    /// A copy of the whole object.
    pub fn to_vec(&self) -> Result<Vec<u8>, ArenaError> {
        let mut v = vec![0; self.len()];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// Re-checks the handle and returns a pointer to its `len()` bytes, valid for `'a` (the
    /// mapping's borrow). For the crate's zero-copy readers, which state their own model of the
    /// peer's writes where they form references over it.
    #[allow(dead_code)] // Used by tests; zero copy and the native types read through the pool.
    pub(crate) fn as_ptr(&self) -> Result<NonNull<u8>, ArenaError> {
        Ok(match self.src {
            Source::Rw(m) => {
                m.arena().check_handle(&self.handle)?;
                m.arena()
                    .payload_ptr(Offset::new(self.handle.offset), self.handle.len)
                    .ok_or(BlockError::OutOfRange)?
            }
            Source::Ro(m) => m.checked_ptr(&self.handle)?,
        })
    }

    /// Reads a `T` at byte `at` (`T: FromBytes`, as [`ArenaObject::read_value`]).
    pub fn read_value<T: FromBytes>(&self, at: usize) -> Result<T, ArenaError> {
        let mut buf = vec![0u8; std::mem::size_of::<T>()];
        self.read(at, &mut buf)?;
        value_from(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_alloc_share_adopt_view() {
        let a = ShmArena::create_classic(4 << 20).unwrap();
        let b = ShmArena::open(flowipc_sys::fd::dup_cloexec(a.fd()).unwrap()).unwrap();
        assert_eq!(a.pool_id(), b.pool_id());
        let obj = a.alloc_value(&[7u64, 8, 9]).unwrap();
        assert_eq!(obj.read_value::<[u64; 3]>(0).unwrap(), [7, 8, 9]);
        let h = ArenaHandle::from_bytes(&obj.share().unwrap().to_bytes()).unwrap();
        let theirs = b.adopt(h).unwrap();
        assert_eq!(theirs.read_value::<u64>(8).unwrap(), 8);
        let v = b.view(&obj.handle()).unwrap();
        assert_eq!(v.read_value::<u64>(16).unwrap(), 9);
        assert!(matches!(
            v.read(20, &mut [0; 8]),
            Err(ArenaError::Block(BlockError::TooLong))
        ));
        drop(obj);
        assert_eq!(a.stats().blocks_in_use(), 1, "peer still holds a reference");
        drop(theirs);
        assert_eq!(a.stats().blocks_in_use(), 0);
        assert!(matches!(
            v.to_vec(),
            Err(ArenaError::Block(BlockError::StaleGeneration))
        ));
        let other = ArenaHandle {
            pool_id: a.pool_id() ^ 1,
            ..h
        };
        assert!(matches!(b.view(&other), Err(ArenaError::WrongPool { .. })));
    }

    #[test]
    #[allow(unsafe_code)]
    fn raw_pointers_cover_the_object() {
        let pool = LendPool::create(4 << 20).unwrap();
        let (_, setup) = pool.add_borrower().unwrap();
        let obj = pool.alloc_zeroed(100).unwrap();
        let p = obj.as_mut_ptr().unwrap();
        // SAFETY: 100 bytes of a live block only this process writes.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5a, 100) };
        assert_eq!(obj.to_vec().unwrap(), vec![0x5a; 100]);
        let bp = BorrowedPool::open(setup).unwrap();
        let v = bp.view(&obj.handle()).unwrap();
        let q = v.as_ptr().unwrap();
        // SAFETY: the view checked 100 readable bytes; nothing writes them now.
        let seen = unsafe { std::slice::from_raw_parts(q.as_ptr(), 100) }.to_vec();
        assert_eq!(seen, vec![0x5a; 100]);
        let forged = ArenaHandle {
            len: 1 << 30,
            ..obj.handle()
        };
        assert!(bp.view(&forged).is_err());
        drop(obj);
        assert!(v.as_ptr().is_err(), "a freed block must not give a pointer");
    }

    #[test]
    fn zeroed_and_bounds() {
        let a = ShmArena::create_classic(4 << 20).unwrap();
        let x = a.alloc_bytes(&[0xff; 100]).unwrap();
        drop(x);
        let z = a.alloc_zeroed(100).unwrap();
        assert_eq!(z.to_vec().unwrap(), vec![0; 100]);
        assert!(z.write(99, &[1, 2]).is_err());
        assert!(z.read(usize::MAX, &mut [0]).is_err());
        let big = a.alloc_zeroed(300_000).unwrap();
        big.write(299_999, &[5]).unwrap();
        assert_eq!(big.read_value::<u8>(299_999).unwrap(), 5);
    }
}
