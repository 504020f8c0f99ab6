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

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use flowipc_core::arena::ArenaHandle;
use flowipc_sys::{AsFd, OwnedFd};

use super::{
    alloc_in, alloc_zeroed_in, new_pool_id, ArenaError, ArenaObject, ArenaView, Backend, Pod,
    ScopedObject, Source, MEMFD_NAME,
};
use crate::ring::{RingReceiver, RingRecvError, RingSender, ShmRing};
use crate::shm::arena::{pod_bytes, MappedArena, MappedReader};

/// Bytes of each return ring; holds about 1500 returned handles before the borrower must wait.
const RETURN_RING_CAPACITY: usize = 64 << 10;

/// What a [`LendPool`] has allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Objects (blocks) allocated.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn dup(fd: flowipc_sys::BorrowedFd<'_>) -> Result<OwnedFd, ArenaError> {
    flowipc_sys::fd::dup_cloexec(fd).map_err(|errno| ArenaError::Sys { call: "dup", errno })
}

/// Allocates in a [`LendPool`] from any thread of the owning process; see
/// [`LendPool::allocator`]. Cheap to clone; `Send` and `Sync`.
///
/// With the jemalloc provider, only the thread that created the pool uses jemalloc's dedicated
/// thread cache for it; other threads allocate from the pool's arena directly
/// (`MALLOCX_TCACHE_NONE`, under the arena's lock), which is slower.
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
    pub fn alloc_scoped(&self, len: usize) -> Result<ScopedObject<'_>, ArenaError> {
        ScopedObject::alloc(&self.backend, self.pool_id, len)
    }
}

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

struct Borrower {
    _ring: ShmRing,
    returns: RingReceiver,
    /// `(offset, generation) -> references held`.
    lent: HashMap<(u64, u32), u32>,
}

/// The owner's side of a lend pool: only this process allocates; borrowers only read.
pub struct LendPool {
    backend: Backend,
    fd: OwnedFd,
    pool_id: u64,
    borrowers: HashMap<BorrowerId, Borrower>,
    next_borrower: u64,
    bogus_returns: u64,
}

impl fmt::Debug for LendPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LendPool")
            .field("pool_id", &self.pool_id)
            .field("borrowers", &self.borrowers.len())
            .finish_non_exhaustive()
    }
}

impl LendPool {
    /// Creates a lend pool of `size` bytes over the core allocator (a sealed memfd mapped
    /// read-write here only).
    pub fn create(size: usize) -> Result<Self, ArenaError> {
        let pool_id = new_pool_id();
        let inner = Arc::new(MappedArena::create(MEMFD_NAME, size, pool_id)?);
        let fd = dup(inner.fd())?;
        Ok(Self::with_backend(Backend::Core(inner), fd, pool_id))
    }

    /// Creates a lend pool of `size` bytes whose objects jemalloc allocates, in a jemalloc arena
    /// whose extents come from the pool's memfd. Only this process may use it (not a fork child).
    #[cfg(feature = "jemalloc")]
    pub fn create_jemalloc(size: usize) -> Result<Self, ArenaError> {
        let pool_id = new_pool_id();
        let inner = Arc::new(crate::shm::jemalloc::JePool::create(
            MEMFD_NAME, size, pool_id,
        )?);
        let fd = dup(inner.fd())?;
        Ok(Self::with_backend(Backend::Je(inner), fd, pool_id))
    }

    fn with_backend(backend: Backend, fd: OwnedFd, pool_id: u64) -> Self {
        LendPool {
            backend,
            fd,
            pool_id,
            borrowers: HashMap::new(),
            next_borrower: 1,
            bogus_returns: 0,
        }
    }

    /// This pool's id, carried by every handle into it.
    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    /// Objects allocated and their bytes (block sizes for the core allocator, object lengths for
    /// jemalloc).
    pub fn usage(&self) -> PoolUsage {
        match &self.backend {
            Backend::Core(m) => {
                let st = m.arena().stats();
                PoolUsage {
                    objects: st.blocks_in_use(),
                    bytes: st.bytes_in_use(),
                }
            }
            #[cfg(feature = "jemalloc")]
            Backend::Je(p) => {
                let (objects, bytes) = p.usage();
                PoolUsage { objects, bytes }
            }
        }
    }

    /// Registers a borrower: creates its return ring and the descriptors to send it.
    pub fn add_borrower(&mut self) -> Result<(BorrowerId, BorrowerSetup), ArenaError> {
        let pool_fd = flowipc_sys::memfd::reopen_read_only(self.fd.as_fd()).map_err(|errno| {
            ArenaError::Sys {
                call: "open(/proc/self/fd)",
                errno,
            }
        })?;
        let ring = ShmRing::create(RETURN_RING_CAPACITY)?;
        let return_ring_fd = dup(ring.fd())?;
        let returns = ring.receiver()?;
        let id = BorrowerId(self.next_borrower);
        self.next_borrower += 1;
        self.borrowers.insert(
            id,
            Borrower {
                _ring: ring,
                returns,
                lent: HashMap::new(),
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

    /// A handle through which other threads of this process allocate in the pool (`LendPool`
    /// itself is not `Sync`: it owns the borrowers' return rings). Objects it makes are objects
    /// of this pool, lendable with [`lend`](Self::lend).
    pub fn allocator(&self) -> PoolAllocator {
        PoolAllocator {
            backend: self.backend.clone(),
            pool_id: self.pool_id,
        }
    }

    /// Allocates an object of `len` bytes (uninitialised, as [`alloc`](Self::alloc)) that borrows
    /// the pool instead of holding a reference on it: the cheapest object, see [`ScopedObject`].
    /// [`lend`](Self::lend) needs `&mut self`, so an object to lend is an [`ArenaObject`]
    /// ([`ScopedObject::into_owned`]).
    pub fn alloc_scoped(&self, len: usize) -> Result<ScopedObject<'_>, ArenaError> {
        ScopedObject::alloc(&self.backend, self.pool_id, len)
    }

    /// Allocates a zero-filled object of `len` bytes.
    pub fn alloc_zeroed(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        alloc_zeroed_in(&self.backend, self.pool_id, len)
    }

    /// Allocates an object holding `value`.
    pub fn alloc_value<T: Pod>(&self, value: &T) -> Result<ArenaObject, ArenaError> {
        let align = std::mem::align_of::<T>().clamp(16, flowipc_core::arena::MAX_ALIGN);
        alloc_in(
            &self.backend,
            self.pool_id,
            std::mem::size_of::<T>(),
            align,
            Some(pod_bytes(value)),
        )
    }

    /// Lends `obj` to borrower `to`: adds a reference that the borrower gives back through its
    /// return ring (or that [`reclaim`](Self::reclaim) drops). Send the handle to the borrower.
    ///
    /// Do not write to a lent object: the borrower reads it concurrently.
    pub fn lend(&mut self, obj: &ArenaObject, to: BorrowerId) -> Result<ArenaHandle, ArenaError> {
        if obj.pool_id != self.pool_id || !obj.backend.same(&self.backend) {
            return Err(ArenaError::WrongPool {
                expected: self.pool_id,
                got: obj.pool_id,
            });
        }
        let b = self
            .borrowers
            .get_mut(&to)
            .ok_or(ArenaError::UnknownBorrower(to))?;
        self.backend.retain(obj.off, obj.gen)?;
        *b.lent.entry((obj.off, obj.gen)).or_insert(0) += 1;
        Ok(obj.handle())
    }

    /// Objects (references) borrower `b` holds now.
    pub fn lent_to(&self, b: BorrowerId) -> usize {
        self.borrowers
            .get(&b)
            .map_or(0, |b| b.lent.values().map(|&n| n as usize).sum())
    }

    /// Returned handles that named nothing the borrower held (a buggy or hostile borrower).
    pub fn bogus_returns(&self) -> u64 {
        self.bogus_returns
    }

    /// Pops every handle borrower `from` pushed on its return ring and releases the references
    /// they stand for. Returns how many were released.
    pub fn drain_returns(&mut self, from: BorrowerId) -> Result<usize, ArenaError> {
        let b = self
            .borrowers
            .get_mut(&from)
            .ok_or(ArenaError::UnknownBorrower(from))?;
        drain(&self.backend, self.pool_id, b, &mut self.bogus_returns)
    }

    /// Forgets borrower `from` (it exited or died): drains its return ring, then releases every
    /// reference it still held. Returns how many references were released in all.
    pub fn reclaim(&mut self, from: BorrowerId) -> Result<usize, ArenaError> {
        let mut b = self
            .borrowers
            .remove(&from)
            .ok_or(ArenaError::UnknownBorrower(from))?;
        // A corrupt ring must not keep the rest from being reclaimed.
        let mut n =
            drain(&self.backend, self.pool_id, &mut b, &mut self.bogus_returns).unwrap_or(0);
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
) -> Result<usize, ArenaError> {
    let mut n = 0;
    let mut buf = [0u8; ArenaHandle::ENCODED_LEN];
    loop {
        match b.returns.try_recv(&mut buf) {
            Ok(info) => {
                let h = (info.len == buf.len())
                    .then(|| ArenaHandle::from_bytes(&buf).ok())
                    .flatten();
                let key = h
                    .filter(|h| h.pool_id == pool_id)
                    .map(|h| (h.offset, h.generation));
                let held = key.and_then(|k| b.lent.get_mut(&k).map(|c| (k, c)));
                match held {
                    Some((k, count)) => {
                        *count -= 1;
                        if *count == 0 {
                            b.lent.remove(&k);
                        }
                        backend.release(k.0, k.1)?;
                        n += 1;
                    }
                    None => *bogus += 1,
                }
            }
            Err(RingRecvError::WouldBlock | RingRecvError::Closed) => return Ok(n),
            Err(RingRecvError::BufferTooSmall { .. }) => {
                // Larger than a handle: cannot be one. Skip it by reading into a big buffer.
                let mut big = vec![0u8; RETURN_RING_CAPACITY];
                let _ = b.returns.try_recv(&mut big);
                *bogus += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A borrower's side of a lend pool: reads objects through a read-only mapping and gives them back.
pub struct BorrowedPool {
    reader: MappedReader,
    pool_id: u64,
    _ring: ShmRing,
    returns: RingSender,
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
        let returns = ring.sender()?;
        Ok(BorrowedPool {
            reader,
            pool_id,
            _ring: ring,
            returns,
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

    /// Gives a lent object back: pushes its handle on the return ring (waiting for room if the
    /// owner has not drained it).
    pub fn release(&mut self, handle: ArenaHandle) -> Result<(), ArenaError> {
        Ok(self.returns.send(&handle.to_bytes())?)
    }

    /// The return ring's sender, to set its wait policy or peer check.
    pub fn return_ring(&mut self) -> &mut RingSender {
        &mut self.returns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::BlockError;

    fn lend_roundtrip(mut pool: LendPool) {
        let (id, setup) = pool.add_borrower().unwrap();
        // The borrower's descriptor cannot be mapped writable.
        let rw = flowipc_sys::mmap::Mapping::map(
            setup.pool_fd.as_fd(),
            0,
            4096,
            flowipc_sys::mmap::Access::ReadWrite,
        );
        assert_eq!(rw.unwrap_err(), flowipc_sys::Errno::ACCESS);
        let mut b = BorrowedPool::open(setup).unwrap();
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

    #[cfg(feature = "jemalloc")]
    #[test]
    fn lend_roundtrip_jemalloc() {
        lend_roundtrip(LendPool::create_jemalloc(64 << 20).unwrap());
    }

    fn scoped_objects(mut pool: LendPool) {
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
            // Another thread frees them (without the owner's tcache).
            std::thread::spawn(move || drop(mine)).join().unwrap();
            assert_eq!(pool.usage(), PoolUsage::default());
        }
    }
}
