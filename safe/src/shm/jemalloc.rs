//! The jemalloc lend provider: a jemalloc arena whose extents come from one sealed memfd.
//!
//! The owner creates a jemalloc arena (`arenas.create`) with extent hooks that carve extents from
//! its mapping of the memfd with a bump pointer; extents are never given back to the hooks
//! (`dalloc` opts out, so jemalloc keeps them and reuses them itself), never decommitted, and may be
//! split and merged freely because they all lie in one mapping. Every `mallocx` / `dallocx` passes
//! `MALLOCX_ARENA(ind)` and either the pool's own tcache (`tcache.create`; used only on the thread
//! that created the pool, since a tcache is not thread-safe) or `MALLOCX_TCACHE_NONE` (any other
//! thread), so heap and pool pointers never mix in a thread cache. jemalloc keeps the arena's metadata in the pool as well, so only the owner process may
//! allocate or free, and never a fork child ([`JePool`] records the owner's pid and refuses to work
//! elsewhere).
//!
//! Each object is preceded by a 16-byte header the borrower can check through its read-only mapping:
//! a state word with the layout of the core arena's (`generation:32 | refcount:31 | allocated:1`),
//! the object's length and a magic. The region starts with a pool header (magic, version, pool id,
//! length) so that a borrower can tell a jemalloc pool from a core arena.
//!
//! Part of `shm`, the module that may use `unsafe`: the hooks are C callbacks over raw memory.

use std::ffi::{c_uint, c_void, CString};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use flowipc_core::arena::layout::{st_alloc, st_field, st_free, st_gen, st_is_alloc};
use flowipc_core::arena::{ArenaHandle, BlockError, BlockInfo};
use flowipc_sys::memfd;
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::{AsFd, BorrowedFd, OwnedFd};
use tikv_jemalloc_sys as je;

use crate::arena::ArenaError;

/// `b"flowJEMP"`: a jemalloc lend pool.
pub(crate) const POOL_MAGIC: u64 = u64::from_le_bytes(*b"flowJEMP");
const POOL_VERSION: u64 = 1;
/// Marks an object header.
const OBJ_MAGIC: u32 = 0x6a6f_626a;
/// Bytes of the object header.
const OBJ_HEADER: usize = 16;
/// Bytes reserved at the start of the region for the pool header.
const POOL_HEADER: usize = 4096;

/// The pool header, at offset 0 of the region: written once by the owner, read by borrowers.
#[repr(C)]
struct PoolHeader {
    magic: AtomicU64,
    version: AtomicU64,
    pool_id: AtomicU64,
    len: AtomicU64,
}

/// The header before each object.
#[repr(C)]
struct ObjHeader {
    state: AtomicU64,
    len: AtomicU32,
    magic: AtomicU32,
}

static_assertions::const_assert_eq!(std::mem::size_of::<ObjHeader>(), OBJ_HEADER);
static_assertions::const_assert_eq!(std::mem::size_of::<PoolHeader>(), 32);

/// The hooks table jemalloc calls back with, followed by the state the callbacks need; jemalloc
/// hands the `extent_hooks_t` pointer back to every hook, and since it is the first field of this
/// `#[repr(C)]` struct the hook can recover the rest.
#[repr(C)]
struct Hooks {
    table: je::extent_hooks_t,
    base: usize,
    len: usize,
    /// Offset of the first byte never handed out.
    next: AtomicUsize,
}

/// Recovers our state from jemalloc's pointer.
///
/// # Safety
///
/// `h` must be the `table` field of a live `Hooks`: jemalloc passes back exactly the pointer given to
/// `arenas.create`, which points at a boxed `Hooks` that outlives the arena.
unsafe fn hooks<'a>(h: *mut je::extent_hooks_t) -> &'a Hooks {
    // SAFETY: per the function's contract; `table` is at offset 0 of the `#[repr(C)]` `Hooks`.
    unsafe { &*h.cast::<Hooks>() }
}

unsafe extern "C" fn hook_alloc(
    h: *mut je::extent_hooks_t,
    new_addr: *mut c_void,
    size: usize,
    align: usize,
    zero: *mut bool,
    commit: *mut bool,
    _arena: c_uint,
) -> *mut c_void {
    // SAFETY: jemalloc passes the pointer we registered.
    let hk = unsafe { hooks(h) };
    if !new_addr.is_null() || !align.is_power_of_two() {
        return ptr::null_mut();
    }
    let mut cur = hk.next.load(Ordering::Relaxed);
    loop {
        let start = (hk.base + cur).next_multiple_of(align) - hk.base;
        let Some(end) = start.checked_add(size).filter(|&e| e <= hk.len) else {
            return ptr::null_mut();
        };
        // Relaxed: the bump only partitions the mapping; jemalloc orders its own use of extents.
        match hk
            .next
            .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {
                // SAFETY: jemalloc passes valid out-pointers. Fresh memfd pages are zero and never
                // handed out twice; the shared mapping is always committed.
                unsafe {
                    *zero = true;
                    *commit = true;
                }
                return (hk.base + start) as *mut c_void;
            }
            Err(now) => cur = now,
        }
    }
}

/// Opt out of deallocation: jemalloc retains the extent and reuses it.
unsafe extern "C" fn hook_dalloc(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: bool,
    _: c_uint,
) -> bool {
    true
}

/// Nothing to do: the mapping goes when the pool does.
unsafe extern "C" fn hook_destroy(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: bool,
    _: c_uint,
) {
}

/// Always committed: success.
unsafe extern "C" fn hook_commit(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: usize,
    _: usize,
    _: c_uint,
) -> bool {
    false
}

/// Decommit and purge: opt out (the memory stays as it is).
unsafe extern "C" fn hook_keep(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: usize,
    _: usize,
    _: c_uint,
) -> bool {
    true
}

/// Splitting an extent of our mapping needs no work: success.
unsafe extern "C" fn hook_split(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
    _: c_uint,
) -> bool {
    false
}

/// Merging two adjacent extents of our mapping needs no work: success.
unsafe extern "C" fn hook_merge(
    _: *mut je::extent_hooks_t,
    _: *mut c_void,
    _: usize,
    _: *mut c_void,
    _: usize,
    _: bool,
    _: c_uint,
) -> bool {
    false
}

/// Set in a fork child (by `pthread_atfork`), where the pool must not be touched.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn mark_forked() {
    FORKED.store(true, Ordering::Relaxed);
}

extern "C" {
    fn pthread_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
    ) -> i32;
}

fn install_fork_guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe.
        unsafe { pthread_atfork(None, None, Some(mark_forked)) };
    });
}

/// A jemalloc arena over a memfd, owned by this process.
pub(crate) struct JePool {
    arena: c_uint,
    /// `MALLOCX_ARENA | MALLOCX_TCACHE_NONE`: any thread.
    flags: i32,
    /// `MALLOCX_ARENA | MALLOCX_TCACHE(tcache)`: the creating thread only (a tcache is not
    /// thread-safe).
    flags_owner: i32,
    tcache: c_uint,
    owner_thread: u64,
    hooks: NonNull<Hooks>,
    /// Unmapped in Drop only if jemalloc let go of the arena.
    map: ManuallyDrop<Mapping>,
    fd: OwnedFd,
    pid: u32,
    /// Usage and generations, split so that the owner thread pays no atomic read-modify-write:
    /// `[0]` is written only by the owner thread (load + store), `[1]` by others (RMW). Owner
    /// generations are even, others odd, so they never collide.
    gens: [AtomicU32; 2],
    objects: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

/// A small id for the current thread (a `thread_local` read, no system call; the id is assigned
/// on the thread's first call, so later calls are one load from thread-local storage).
#[inline]
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TAG: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
    TAG.with(|t| match t.get() {
        0 => {
            let tag = NEXT.fetch_add(1, Ordering::Relaxed);
            t.set(tag);
            tag
        }
        tag => tag,
    })
}

/// Adds `delta` (two's complement) to counter `i` of `c`: a plain store for the owner thread.
fn bump(c: &[AtomicU64; 2], owner: bool, delta: u64) {
    if owner {
        let v = c[0].load(Ordering::Relaxed);
        c[0].store(v.wrapping_add(delta), Ordering::Relaxed);
    } else {
        c[1].fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: the hooks are only read (and their bump advanced atomically) by jemalloc; the mapping is
// accessed through atomics (headers) or by copies into blocks the caller owns.
unsafe impl Send for JePool {}
// SAFETY: as above; jemalloc arenas are thread-safe.
unsafe impl Sync for JePool {}

fn sys(call: &'static str) -> impl Fn(flowipc_sys::Errno) -> ArenaError {
    move |errno| ArenaError::Sys { call, errno }
}

impl JePool {
    /// Creates a memfd of `len` bytes, maps it and creates a jemalloc arena over it.
    pub(crate) fn create(
        name: &std::ffi::CStr,
        len: usize,
        pool_id: u64,
    ) -> Result<Self, ArenaError> {
        install_fork_guard();
        if len <= POOL_HEADER {
            return Err(ArenaError::BadSize(len as u64));
        }
        let fd = memfd::create_sealed(name, len as u64).map_err(sys("memfd_create"))?;
        let map = Mapping::map(fd.as_fd(), 0, len, Access::ReadWrite).map_err(sys("mmap"))?;
        let base = map.as_mut_ptr().ok_or(ArenaError::BadSize(len as u64))? as usize;
        // SAFETY: the mapping is page-aligned and at least POOL_HEADER bytes; the header is atomics.
        let ph = unsafe { &*(base as *const PoolHeader) };
        ph.version.store(POOL_VERSION, Ordering::Relaxed);
        ph.pool_id.store(pool_id, Ordering::Relaxed);
        ph.len.store(len as u64, Ordering::Relaxed);
        // SYNC POINT: pairs with the Acquire fence after the magic load in `JeReader::open`.
        ph.magic.store(POOL_MAGIC, Ordering::Release);
        let table = je::extent_hooks_t {
            alloc: Some(hook_alloc),
            dalloc: Some(hook_dalloc),
            destroy: Some(hook_destroy),
            commit: Some(hook_commit),
            decommit: Some(hook_keep),
            purge_lazy: Some(hook_keep),
            purge_forced: Some(hook_keep),
            split: Some(hook_split),
            merge: Some(hook_merge),
        };
        let hooks = Box::new(Hooks {
            table,
            base,
            len,
            next: AtomicUsize::new(POOL_HEADER),
        });
        let hooks = NonNull::from(Box::leak(hooks));
        let mut arena: c_uint = 0;
        let mut sz = std::mem::size_of::<c_uint>();
        let mut hp: *mut je::extent_hooks_t = hooks.as_ptr().cast();
        // SAFETY: `arenas.create` writes an unsigned into `arena` and reads an `extent_hooks_t *`;
        // the sizes match; the hooks stay alive until the arena is destroyed in Drop.
        let rc = unsafe {
            je::mallctl(
                c"arenas.create".as_ptr(),
                (&mut arena as *mut c_uint).cast(),
                &mut sz,
                (&mut hp as *mut *mut je::extent_hooks_t).cast(),
                std::mem::size_of::<*mut je::extent_hooks_t>(),
            )
        };
        if rc != 0 {
            // SAFETY: jemalloc did not keep the pointer; we reclaim the box.
            drop(unsafe { Box::from_raw(hooks.as_ptr()) });
            return Err(ArenaError::Sys {
                call: "mallctl(arenas.create)",
                errno: flowipc_sys::Errno::from_raw_os_error(rc),
            });
        }
        let mut tcache: c_uint = 0;
        let mut sz = std::mem::size_of::<c_uint>();
        // SAFETY: `tcache.create` writes an unsigned into `tcache`; the size matches.
        let rc = unsafe {
            je::mallctl(
                c"tcache.create".as_ptr(),
                (&mut tcache as *mut c_uint).cast(),
                &mut sz,
                ptr::null_mut(),
                0,
            )
        };
        let arena_flag = je::MALLOCX_ARENA(arena as usize);
        // Without a tcache of our own, the owner thread goes without one too.
        let flags_owner = if rc == 0 {
            arena_flag | je::MALLOCX_TCACHE(tcache as usize)
        } else {
            arena_flag | je::MALLOCX_TCACHE_NONE
        };
        Ok(JePool {
            arena,
            flags: arena_flag | je::MALLOCX_TCACHE_NONE,
            flags_owner,
            tcache: if rc == 0 { tcache } else { c_uint::MAX },
            owner_thread: thread_tag(),
            hooks,
            map: ManuallyDrop::new(map),
            fd,
            pid: std::process::id(),
            gens: [AtomicU32::new(2), AtomicU32::new(1)],
            objects: [AtomicU64::new(0), AtomicU64::new(0)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn check_owner(&self) -> Result<(), ArenaError> {
        if FORKED.load(Ordering::Relaxed) && std::process::id() != self.pid {
            return Err(ArenaError::NotOwner);
        }
        Ok(())
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn base(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// Allocates `len` bytes (after a header) aligned to 16; returns `(offset, generation)`.
    #[inline]
    pub(crate) fn alloc(&self, len: usize) -> Result<(u64, u32), ArenaError> {
        self.check_owner()?;
        let len32 = u32::try_from(len).map_err(|_| flowipc_core::arena::AllocError::TooLarge)?;
        let owner = thread_tag() == self.owner_thread;
        let flags = if owner { self.flags_owner } else { self.flags };
        // SAFETY: allocation in our arena, with our own tcache on the owner thread (used by no
        // other thread) or none; size is non-zero.
        let p = unsafe { je::mallocx(len + OBJ_HEADER, flags) } as usize;
        if p == 0 {
            return Err(flowipc_core::arena::AllocError::OutOfMemory.into());
        }
        let gen = if owner {
            let g = self.gens[0].load(Ordering::Relaxed);
            self.gens[0].store(g.wrapping_add(2), Ordering::Relaxed);
            g
        } else {
            self.gens[1].fetch_add(2, Ordering::Relaxed)
        };
        // SAFETY: `p` is a fresh allocation of at least OBJ_HEADER bytes, 16-aligned, inside the mapping.
        let hdr = unsafe { &*(p as *const ObjHeader) };
        hdr.len.store(len32, Ordering::Relaxed);
        hdr.magic.store(OBJ_MAGIC, Ordering::Relaxed);
        hdr.state.store(st_alloc(gen, 1), Ordering::Relaxed);
        bump(&self.objects, owner, 1);
        bump(&self.bytes, owner, len as u64);
        Ok(((p + OBJ_HEADER - self.base()) as u64, gen))
    }

    /// The header of the object at `off`, if `off` could be one (range and alignment only).
    fn header(&self, off: u64) -> Option<&ObjHeader> {
        let off = usize::try_from(off).ok()?;
        if off < POOL_HEADER + OBJ_HEADER || off > self.map.len() || off % 16 != 0 {
            return None;
        }
        // SAFETY: `off - 16 .. off` is inside the mapping and 16-aligned; the header is atomics.
        Some(unsafe { &*((self.base() + off - OBJ_HEADER) as *const ObjHeader) })
    }

    /// Live object at `off` with generation `gen`: its header.
    fn live(&self, off: u64, gen: u32) -> Result<&ObjHeader, BlockError> {
        let h = self.header(off).ok_or(BlockError::OutOfRange)?;
        let s = h.state.load(Ordering::Relaxed);
        if h.magic.load(Ordering::Relaxed) != OBJ_MAGIC || !st_is_alloc(s) || st_gen(s) != gen {
            return Err(BlockError::StaleGeneration);
        }
        Ok(h)
    }

    pub(crate) fn info(&self, off: u64, gen: u32) -> Result<BlockInfo, BlockError> {
        let h = self.live(off, gen)?;
        let s = h.state.load(Ordering::Relaxed);
        Ok(BlockInfo {
            generation: gen,
            capacity: u64::from(h.len.load(Ordering::Relaxed)),
            refcount: st_field(s),
        })
    }

    pub(crate) fn retain(&self, off: u64, gen: u32) -> Result<(), ArenaError> {
        self.check_owner()?;
        let h = self.live(off, gen)?;
        // Only the owner process writes headers, and `live` checked the generation: an increment
        // of the refcount field (bits 1..32) cannot carry into the generation below 2^30 refs.
        h.state.fetch_add(2, Ordering::Relaxed);
        Ok(())
    }

    /// Drops a reference; the last one frees the object. Returns whether it did.
    ///
    /// The last reference is dropped with a load and a store, no read-modify-write: only this
    /// process writes headers (borrowers map the pool read-only), and in it every reference is
    /// held by an object or a borrower's lend record, and adding one (`retain`) needs one of them.
    /// So when the count is 1 and the caller holds that reference, no other thread can change
    /// the word until we do, as in `Arc::get_mut`. A count above 1 takes the CAS loop.
    pub(crate) fn release(&self, off: u64, gen: u32) -> Result<bool, ArenaError> {
        self.check_owner()?;
        let h = self.live(off, gen)?;
        // SYNC POINT: Acquire pairs with the Release half of the AcqRel CASes below by the other
        // holders (their use of the object happens before we free it), as `Arc::drop` does.
        let mut s = h.state.load(Ordering::Acquire);
        if s == st_alloc(gen, 1) {
            // Relaxed: the block goes back to jemalloc, which orders its own reuse of it; a
            // borrower reading the header concurrently sees either state (both are checked).
            h.state
                .store(st_free(gen.wrapping_add(1), 0), Ordering::Relaxed);
            self.dealloc(h);
            return Ok(true);
        }
        loop {
            if !st_is_alloc(s) || st_gen(s) != gen || st_field(s) == 0 {
                return Err(BlockError::StaleGeneration.into());
            }
            let last = st_field(s) == 1;
            let new = if last {
                st_free(gen.wrapping_add(1), 0)
            } else {
                st_alloc(gen, st_field(s) - 1)
            };
            // SYNC POINT: AcqRel as in the core arena's `release`: the last release sees every
            // other holder's use of the object before it is freed.
            match h
                .state
                .compare_exchange(s, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) if last => {
                    self.dealloc(h);
                    return Ok(true);
                }
                Ok(_) => return Ok(false),
                Err(now) => s = now,
            }
        }
    }

    /// Gives the block behind header `h` back to jemalloc, after its state went to free.
    #[inline]
    fn dealloc(&self, h: &ObjHeader) {
        let p = (h as *const ObjHeader).cast_mut().cast::<c_void>();
        let len = h.len.load(Ordering::Relaxed);
        let owner = thread_tag() == self.owner_thread;
        let flags = if owner { self.flags_owner } else { self.flags };
        // SAFETY: `p` came from `mallocx(len + OBJ_HEADER)` in this arena (the length in the
        // header is the one `alloc` wrote; only this process writes headers); the state change
        // before this call made it the only free of it; the owner's tcache is used only on the
        // owner thread.
        unsafe { je::sdallocx(p, len as usize + OBJ_HEADER, flags) };
        bump(&self.objects, owner, 1u64.wrapping_neg());
        bump(&self.bytes, owner, u64::from(len).wrapping_neg());
    }

    /// Copies `data` into the object at `off` (generation `gen`) from byte `at`.
    pub(crate) fn write(&self, off: u64, gen: u32, at: u64, data: &[u8]) -> Result<(), ArenaError> {
        let info = self.info(off, gen)?;
        let end = at
            .checked_add(data.len() as u64)
            .ok_or(BlockError::TooLong)?;
        // The header is the owner's own (borrowers cannot write the pool); still, never copy
        // outside the mapping.
        if end > info.capacity || off.saturating_add(end) > self.map.len() as u64 {
            return Err(BlockError::TooLong.into());
        }
        // SAFETY: `[off + at, off + end)` lies inside the live object (checked against its header,
        // which the owner wrote and only it can write), inside the writable mapping.
        unsafe {
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base() + (off + at) as usize) as *mut u8,
                data.len(),
            )
        };
        Ok(())
    }

    /// Copies bytes of the object from byte `at` into `buf`.
    pub(crate) fn read(
        &self,
        off: u64,
        gen: u32,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), ArenaError> {
        let info = self.info(off, gen)?;
        let end = at
            .checked_add(buf.len() as u64)
            .ok_or(BlockError::TooLong)?;
        // The header is the owner's own (borrowers cannot write the pool); still, never copy
        // outside the mapping.
        if end > info.capacity || off.saturating_add(end) > self.map.len() as u64 {
            return Err(BlockError::TooLong.into());
        }
        // SAFETY: as in `write`; `buf` is our memory.
        unsafe {
            ptr::copy_nonoverlapping(
                (self.base() + (off + at) as usize) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Objects and payload bytes currently allocated.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (
            self.objects[0]
                .load(Ordering::Relaxed)
                .wrapping_add(self.objects[1].load(Ordering::Relaxed)),
            self.bytes[0]
                .load(Ordering::Relaxed)
                .wrapping_add(self.bytes[1].load(Ordering::Relaxed)),
        )
    }
}

impl Drop for JePool {
    fn drop(&mut self) {
        if FORKED.load(Ordering::Relaxed) && std::process::id() != self.pid {
            // A fork child must not touch the arena: leak our share of it.
            return;
        }
        if self.tcache != c_uint::MAX {
            let mut tc = self.tcache;
            // SAFETY: `tcache.destroy` reads an unsigned; nobody uses the tcache any more (we are
            // being dropped, and it was only used through `self`). Its cached blocks go back to
            // the arena, which must happen before the arena is destroyed.
            unsafe {
                je::mallctl(
                    c"tcache.destroy".as_ptr(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    (&mut tc as *mut c_uint).cast(),
                    std::mem::size_of::<c_uint>(),
                )
            };
        }
        let name = CString::new(format!("arena.{}.destroy", self.arena)).expect("no NUL");
        // SAFETY: destroys our arena; no other reference to it remains (every object's block was
        // allocated through `self`, which is being dropped, and no tcache holds any).
        let rc = unsafe {
            je::mallctl(
                name.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if rc == 0 {
            // SAFETY: the arena is gone, so jemalloc will not call the hooks again.
            drop(unsafe { Box::from_raw(self.hooks.as_ptr()) });
            // SAFETY: nothing uses the mapping any more; it is dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
        // Otherwise jemalloc may still use the hooks and the memory: leak both rather than unmap.
    }
}

/// A borrower's read-only view of a jemalloc lend pool.
pub(crate) struct JeReader {
    map: Mapping,
    _fd: OwnedFd,
    pool_id: u64,
}

impl JeReader {
    /// Whether the mapping at `base` (at least 32 bytes) starts with the jemalloc pool magic.
    pub(crate) fn is_je_pool(map: &Mapping) -> bool {
        if map.len() < POOL_HEADER {
            return false;
        }
        // SAFETY: page-aligned, at least 32 bytes; Relaxed atomic loads are sound on read-only memory.
        let ph = unsafe { &*map.as_ptr().cast::<PoolHeader>() };
        ph.magic.load(Ordering::Relaxed) == POOL_MAGIC
    }

    pub(crate) fn open(map: Mapping, fd: OwnedFd) -> Result<Self, ArenaError> {
        if !Self::is_je_pool(&map) {
            return Err(flowipc_core::arena::InitError::BadMagic.into());
        }
        // SYNC POINT: pairs with the Release store of the magic in `JePool::create`.
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: as in `is_je_pool`.
        let ph = unsafe { &*map.as_ptr().cast::<PoolHeader>() };
        if ph.version.load(Ordering::Relaxed) != POOL_VERSION {
            return Err(flowipc_core::arena::InitError::BadVersion.into());
        }
        if ph.len.load(Ordering::Relaxed) != map.len() as u64 {
            return Err(flowipc_core::arena::InitError::Corrupt.into());
        }
        let pool_id = ph.pool_id.load(Ordering::Relaxed);
        Ok(JeReader {
            map,
            _fd: fd,
            pool_id,
        })
    }

    pub(crate) fn pool_tag(&self) -> u64 {
        self.pool_id
    }

    /// Checks a handle against the object header: in range, live at that generation, length fits.
    pub(crate) fn check(&self, h: &ArenaHandle) -> Result<BlockInfo, ArenaError> {
        let off = usize::try_from(h.offset).map_err(|_| BlockError::OutOfRange)?;
        if off < POOL_HEADER + OBJ_HEADER
            || off % 16 != 0
            || h.offset.saturating_add(h.len) > self.map.len() as u64
        {
            return Err(BlockError::OutOfRange.into());
        }
        // SAFETY: `off - 16 .. off` is inside the mapping, 16-aligned; Relaxed loads only.
        let hdr = unsafe { &*(self.map.as_ptr().add(off - OBJ_HEADER).cast::<ObjHeader>()) };
        let s = hdr.state.load(Ordering::Relaxed);
        if hdr.magic.load(Ordering::Relaxed) != OBJ_MAGIC
            || !st_is_alloc(s)
            || st_gen(s) != h.generation
        {
            return Err(BlockError::StaleGeneration.into());
        }
        let cap = u64::from(hdr.len.load(Ordering::Relaxed));
        if h.len > cap {
            return Err(BlockError::TooLong.into());
        }
        // SYNC POINT: pairs with the owner's writes before it published the handle (through the
        // channel that carried it); orders our copy after the header check.
        std::sync::atomic::fence(Ordering::Acquire);
        Ok(BlockInfo {
            generation: h.generation,
            capacity: cap,
            refcount: st_field(s),
        })
    }

    /// Checks a handle and copies its bytes from `at` into `buf`.
    pub(crate) fn read_handle(
        &self,
        h: &ArenaHandle,
        at: u64,
        buf: &mut [u8],
    ) -> Result<BlockInfo, ArenaError> {
        let info = self.check(h)?;
        let end = at
            .checked_add(buf.len() as u64)
            .ok_or(BlockError::TooLong)?;
        if end > h.len {
            return Err(BlockError::TooLong.into());
        }
        // SAFETY: `h.offset + end <= h.offset + h.len <= map.len()` (checked in `check`); the owner
        // may write concurrently, so we copy bytes and form no reference.
        unsafe {
            ptr::copy_nonoverlapping(
                self.map.as_ptr().add((h.offset + at) as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(info)
    }
}
