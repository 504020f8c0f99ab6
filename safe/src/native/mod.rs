//! Native data structures in shared memory: [`ShmVec`], [`ShmString`], [`ShmBox`] and
//! [`ShmHashMap`], built by their owner with familiar methods and read by a peer, in place,
//! through a read-only mapping.
//!
//! This is Flow-IPC's second zero-copy path (STL containers allocated in a session's shared
//! memory, passed by handle) made safe to read when the writer is hostile.
//!
//! # Layout: blocks and links
//!
//! Each structure is one arena block (an [`ArenaObject`]): a vector's elements, a string's bytes, a
//! box's value, a map's table. A structure nested in another is stored there as a *link*
//! ([`VecLink`], [`StrLink`], [`BoxLink`], [`MapLink`]): a [`BlockLink`] (offset, length in bytes,
//! generation), never a pointer, so the reader may map the pool at any address. Element types are
//! [`Plain`]: valid for any bytes and without padding (the `zerocopy` derives `FromBytes`,
//! `IntoBytes`, `KnownLayout`, `Immutable`), so links nest in user structs:
//!
//! ```
//! use flowipc::arena::LendPool;
//! use flowipc::native::{ShmAlloc, ShmVec, VecLink, VecRef};
//! use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
//!
//! /// A part of a file: its bytes and two numbers.
//! #[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
//! #[repr(C)]
//! struct Part {
//!     data: VecLink<u8>,
//!     size: u64,
//!     hash: u64,
//! }
//!
//! let mut pool = LendPool::create(8 << 20)?;
//! let (peer, setup) = pool.add_borrower()?;
//! let alloc = ShmAlloc::from(&pool);
//! let mut file: ShmVec<Part> = ShmVec::new_in(&alloc)?;
//! for chunk in [&b"hello "[..], b"world"] {
//!     let data = file.adopt(ShmVec::from_slice_in(&alloc, chunk)?);
//!     file.push(Part { data, size: chunk.len() as u64, hash: 0 })?;
//! }
//! let handle = file.lend(&pool, peer)?; // send `handle.to_bytes()` to the peer
//!
//! // In the peer (here the same process): map the pool read-only and read in place.
//! let theirs = flowipc::arena::BorrowedPool::open(setup)?;
//! let parts = VecRef::<Part>::open(&theirs, &handle)?;
//! let second = parts.get(1)?;
//! assert_eq!(second.data.open(&theirs)?.to_vec()?, b"world");
//! assert!(parts.get(2).is_err()); // an index past the end is an error, not a panic
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ownership and lifetime
//!
//! A container owns its block and, in a private list, every block it has *adopted*
//! ([`ShmVec::adopt`] and the same on the other containers consume a child and return its link).
//! A child is frozen once adopted: it has no owner-side handle left to change it with. The blocks
//! of a tree live as long as the root container (links dropped from it by `truncate` or
//! overwriting keep their blocks until then).
//!
//! **Lending lends the whole tree, and a lent tree is frozen.** `lend` (on each container, or
//! [`Session::lend_native`](crate::Session::lend_native)) lends the root block to the borrower
//! and records with it, in the pool's table of what that borrower holds, a shared reference to
//! the container's list of adopted blocks: O(1) whatever the tree's size (a 1 GiB file of 65,536
//! parts lends in the time of one block). When the borrower gives the root back (the pool
//! drains its return ring) or dies ([`LendPool::reclaim`]), the record goes, and with the last
//! holder of the list (the owner's container or a lend) the adopted blocks are freed. The owner may drop its
//! container meanwhile: the borrower's references keep every block alive. Until the borrower has
//! given the root back and the owner has drained it, every mutating method of the root fails
//! with [`NativeError::Lent`] (checked with the block's cross-process reference count, only after
//! a `lend`, so an unlent container pays one flag test per mutation). So a borrower never sees
//! its tree change under it, except by a hostile owner that writes the pool with `unsafe` code,
//! against which the reader's checks still hold.
//!
//! In a classic arena ([`ShmArena`]) there is no lend table: `handle` gives the root's handle
//! without a reference, the owner keeps the tree alive for as long as the peer reads it, and a
//! read of a freed block fails with `StaleGeneration`.
//!
//! # Reading: every access is checked
//!
//! The reader's views ([`VecRef`], [`StrRef`], [`BoxRef`], [`MapRef`]) are opened from a handle
//! or a link against a [`NativeSource`] (a [`BorrowedPool`], or a [`ShmArena`]) and hold no
//! reference into shared memory: every access re-checks the block (live at the link's
//! generation, the range inside it, through [`ArenaView`]) and copies the value out, since the
//! bytes are the writer's to change (a Rust reference over them would be undefined behaviour if
//! they changed). What a forged link, length, count or chain does:
//!
//! | forged | result |
//! | --- | --- |
//! | link offset, generation or length outside a live block | `Arena(Block(..))` when the link is opened |
//! | vector length not a multiple of the element size | `Corrupt` when opened |
//! | index past the length | `OutOfBounds` |
//! | string bytes not UTF-8 | `Corrupt` from `to_string` |
//! | map header (magic, sizes, counts, a table larger than its block) | `Corrupt` when opened |
//! | map chain index past the entries, or a chain longer than the map (a cycle) | `Corrupt` from `get`, after at most `len` steps |
//!
//! A reader allocates only what it copies out, at most the bytes of a block the pool holds.
//!
//! # Maps
//!
//! [`ShmHashMap`] is a chained hash table in one block: a header, `buckets` heads, and per entry
//! a `next` index, the 64-bit FNV-1a hash of the key's content, the key and the value, entries in
//! insertion order. The owner finds keys through an index on its heap; the reader hashes the
//! probe, walks one chain (bounded by the entry count) and compares hashes, then keys. Keys are
//! compared by their bytes, except [`StrLink`] keys, which are compared by the string they name
//! ([`ShmHashMap::insert_str`], [`MapRef::get_str`]).
//!
//! No atomics are involved: the owner writes before it lends, the lend travels over a channel
//! (whose own SYNC POINTs order it), and a lent tree is not written.

mod block;
mod map;
mod vec;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use flowipc_core::arena::BlockLink;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::arena::{
    ArenaError, ArenaHandle, ArenaObject, ArenaView, BorrowedPool, LendPool, PoolAllocator,
    ShmArena,
};

pub use map::{MapRef, ShmHashMap};
pub use vec::{BoxRef, ShmBox, ShmString, ShmVec, StrRef, VecRef};

/// Why a native-structure operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The arena refused: allocation failed (the pool is full), or a link or handle names no live
    /// block at its generation or a range outside it.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// The structure is lent and so frozen; drain the borrower's returns
    /// ([`LendPool::drain_returns`]) after it has released the view, then retry.
    #[error("the structure is lent to a peer and frozen until it is given back and drained")]
    Lent,
    /// An index past the end.
    #[error("index {index} out of bounds for length {len}")]
    OutOfBounds {
        /// The index asked for.
        index: usize,
        /// The length.
        len: usize,
    },
    /// The bytes in shared memory do not hold a valid structure (a buggy or hostile writer).
    #[error("corrupt native structure: {0}")]
    Corrupt(&'static str),
    /// The session has no lend pool of its own to lend from (give it one in its options).
    #[error("this session has no lend pool; enable one in the session options")]
    NoLendPool,
    /// A length or capacity overflows what a block can hold.
    #[error("native structure too large")]
    TooLarge,
}

/// A type the native structures store by value: valid for any bytes, no padding, no interior
/// mutability, alignment at most 16 (the arena's block alignment). Derive the four `zerocopy`
/// traits on a `#[repr(C)]` struct to make one; it is implemented for every such type.
pub trait Plain: FromBytes + IntoBytes + KnownLayout + Immutable + Copy + 'static {}

impl<T: FromBytes + IntoBytes + KnownLayout + Immutable + Copy + 'static> Plain for T {}

/// Where containers allocate: a lend pool (through its [`PoolAllocator`]) or a classic arena.
/// Cheap to clone. Make one with `ShmAlloc::from(&pool)`.
#[derive(Clone, Debug)]
pub struct ShmAlloc(AllocInner);

#[derive(Clone, Debug)]
enum AllocInner {
    Pool(PoolAllocator),
    Arena(ShmArena),
}

impl From<&LendPool> for ShmAlloc {
    fn from(p: &LendPool) -> Self {
        ShmAlloc(AllocInner::Pool(p.allocator()))
    }
}

impl From<&PoolAllocator> for ShmAlloc {
    fn from(p: &PoolAllocator) -> Self {
        ShmAlloc(AllocInner::Pool(p.clone()))
    }
}

impl From<&ShmArena> for ShmAlloc {
    fn from(a: &ShmArena) -> Self {
        ShmAlloc(AllocInner::Arena(a.clone()))
    }
}

impl ShmAlloc {
    fn alloc(&self, len: usize) -> Result<ArenaObject, ArenaError> {
        match &self.0 {
            AllocInner::Pool(p) => p.alloc(len),
            AllocInner::Arena(a) => a.alloc(len),
        }
    }
}

/// Where readers open handles and links: the pool a handle names, mapped here.
pub trait NativeSource {
    /// The pool's id (links carry none: they name blocks of this pool).
    fn pool_id(&self) -> u64;
    /// Checks a handle and gives a view of its bytes.
    fn view_handle(&self, h: &ArenaHandle) -> Result<ArenaView<'_>, ArenaError>;
}

impl NativeSource for BorrowedPool {
    fn pool_id(&self) -> u64 {
        BorrowedPool::pool_id(self)
    }
    fn view_handle(&self, h: &ArenaHandle) -> Result<ArenaView<'_>, ArenaError> {
        self.view(h)
    }
}

impl NativeSource for ShmArena {
    fn pool_id(&self) -> u64 {
        ShmArena::pool_id(self)
    }
    fn view_handle(&self, h: &ArenaHandle) -> Result<ArenaView<'_>, ArenaError> {
        self.view(h)
    }
}

/// A structure that can be adopted into a parent (see [`ShmVec::adopt`]) or lent as a root.
pub trait ShmNode: sealed::Sealed {
    /// The link a parent stores.
    type Link: Plain;
    /// The link to this structure's block, its length as of now.
    fn link(&self) -> Self::Link;
    /// Lends the tree to borrower `to` of `pool` (see the module docs: the whole tree stays
    /// alive until the borrower gives the root back, and the root is frozen meanwhile). Returns
    /// the handle to send.
    fn lend(
        &self,
        pool: &LendPool,
        to: crate::arena::BorrowerId,
    ) -> Result<ArenaHandle, NativeError>;
    /// The root's handle without a reference, for a classic arena's peer (the owner keeps the
    /// tree alive while it is read) or a view in this process.
    fn handle(&self) -> ArenaHandle;
    #[doc(hidden)]
    fn into_blocks(self) -> (ArenaObject, Adopted);
}

/// The blocks a container adopted (with what they adopted), shared with the pool's lend table
/// while the container is lent: a lend keeps the whole tree alive with one reference count on
/// this list, so lending a tree of a million blocks costs what lending one does.
#[doc(hidden)]
#[derive(Default)]
pub struct Adopted(Arc<Mutex<Vec<Kept>>>);

/// One entry of an [`Adopted`] list.
enum Kept {
    /// An adopted block, released when the list is dropped.
    Block(#[allow(dead_code)] ArenaObject),
    /// The list of a child that was adopted while a lend of it was still out (its list is
    /// shared with the lend table, so it is kept whole).
    Tree(#[allow(dead_code)] Arc<Mutex<Vec<Kept>>>),
}

impl Adopted {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A panic while pushing leaves a valid list.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a child's block and its adopted list into this list.
    pub(crate) fn adopt(&self, (block, theirs): (ArenaObject, Adopted)) {
        let mut list = self.list();
        list.push(Kept::Block(block));
        match Arc::try_unwrap(theirs.0) {
            Ok(entries) => list.extend(entries.into_inner().unwrap_or_else(|e| e.into_inner())),
            Err(shared) => list.push(Kept::Tree(shared)),
        }
    }

    /// Entries of the list (blocks and shared sub-lists).
    pub(crate) fn len(&self) -> usize {
        self.list().len()
    }

    /// What the lend table holds to keep the list alive.
    fn keeper(&self) -> crate::arena::TreeKeeper {
        self.0.clone()
    }
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! link_type {
    ($(#[$m:meta])* $name:ident <$($g:ident),*>) => {
        $(#[$m])*
        ///
        /// `#[repr(transparent)]` over a [`BlockLink`]; valid for any bytes, checked when opened.
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(transparent)]
        pub struct $name<$($g),*> {
            link: BlockLink,
            _t: PhantomData<($($g,)*)>,
        }

        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($g),*> Copy for $name<$($g),*> {}
        impl<$($g),*> PartialEq for $name<$($g),*> {
            fn eq(&self, other: &Self) -> bool {
                self.link == other.link
            }
        }
        impl<$($g),*> Eq for $name<$($g),*> {}
        impl<$($g),*> std::fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.link).finish()
            }
        }
        impl<$($g),*> $name<$($g),*> {
            /// The link that names nothing (opening it fails).
            pub const NULL: Self = Self::from_block_link(BlockLink::NULL);

            /// Wraps a raw link (for example one a test forges).
            pub const fn from_block_link(link: BlockLink) -> Self {
                $name { link, _t: PhantomData }
            }

            /// The raw link.
            pub const fn block_link(&self) -> BlockLink {
                self.link
            }
        }
    };
}

link_type!(
    /// A [`ShmVec<T>`] stored inside another structure: its block and its length in bytes.
    VecLink<T>
);
link_type!(
    /// A [`ShmString`] stored inside another structure.
    StrLink<>
);
link_type!(
    /// A [`ShmBox<T>`] stored inside another structure.
    BoxLink<T>
);
link_type!(
    /// A [`ShmHashMap<K, V>`] stored inside another structure.
    MapLink<K, V>
);

static_assertions::assert_eq_size!(VecLink<u64>, BlockLink);
static_assertions::assert_eq_size!(MapLink<u8, u64>, BlockLink);

impl<T: Plain> VecLink<T> {
    /// Opens the vector this link names (checked).
    pub fn open<'p>(&self, src: &'p dyn NativeSource) -> Result<VecRef<'p, T>, NativeError> {
        VecRef::open(src, &self.link.to_handle(src.pool_id()))
    }
}

impl StrLink {
    /// Opens the string this link names (checked).
    pub fn open<'p>(&self, src: &'p dyn NativeSource) -> Result<StrRef<'p>, NativeError> {
        StrRef::open(src, &self.link.to_handle(src.pool_id()))
    }
}

impl<T: Plain> BoxLink<T> {
    /// Opens the box this link names (checked).
    pub fn open<'p>(&self, src: &'p dyn NativeSource) -> Result<BoxRef<'p, T>, NativeError> {
        BoxRef::open(src, &self.link.to_handle(src.pool_id()))
    }
}

impl<K: Plain, V: Plain> MapLink<K, V> {
    /// Opens the map this link names (checked).
    pub fn open<'p>(&self, src: &'p dyn NativeSource) -> Result<MapRef<'p, K, V>, NativeError> {
        MapRef::open(src, &self.link.to_handle(src.pool_id()))
    }
}

/// Lends `root` (its block with `len` bytes) and what it adopted to borrower `to`.
fn lend_blocks(
    pool: &LendPool,
    to: crate::arena::BorrowerId,
    root: &ArenaObject,
    len: usize,
    deps: &Adopted,
) -> Result<ArenaHandle, NativeError> {
    // Always with a keeper, even for a tree without children yet: every lend of a root pops one
    // keeper when it comes back, so a later lend with children never loses its keeper to the
    // return of an earlier lend made without one.
    let mut h = pool.lend_tree(root, deps.keeper(), to)?;
    h.len = len as u64;
    Ok(h)
}

/// The handle of `len` bytes of `root`, without a reference.
fn handle_of(root: &ArenaObject, len: usize) -> ArenaHandle {
    ArenaHandle {
        len: len as u64,
        ..root.handle()
    }
}

/// Whether a container that was lent may be changed now: it was never lent, or its block's
/// reference count is back to one (every borrower gave it back and the owner drained).
#[inline]
fn check_unlent(lent: &std::cell::Cell<bool>, root: &ArenaObject) -> Result<(), NativeError> {
    if lent.get() {
        if root.refcount()? > 1 {
            return Err(NativeError::Lent);
        }
        lent.set(false);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
