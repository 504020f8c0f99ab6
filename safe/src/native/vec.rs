//! [`ShmVec`], [`ShmString`], [`ShmBox`] and their readers.

use std::cell::Cell;
use std::marker::PhantomData;

use flowipc_core::arena::BlockLink;
use zerocopy::IntoBytes;

use super::block::BlockBuf;
use super::Adopted;
use super::{
    check_unlent, handle_of, lend_blocks, sealed, BoxLink, NativeError, NativeSource, Plain,
    ShmAlloc, ShmNode, StrLink, VecLink,
};
use crate::arena::{ArenaHandle, ArenaObject, ArenaView, BorrowerId, LendPool};

/// Capacity (elements) of a vector's first block when none is asked for.
const MIN_CAP: usize = 4;

/// A growable array of `T` in a shared-memory pool, the owner's side (see the
/// [module docs](super)). Methods are those of `Vec` that copy values in and out; those that
/// change it fail with [`NativeError::Lent`] while it is lent.
pub struct ShmVec<T> {
    alloc: ShmAlloc,
    buf: BlockBuf,
    len: usize,
    /// `push` takes its fast path while `len < limit`: the capacity, or 0 while lent (so that the
    /// slow path checks whether it still is).
    limit: Cell<usize>,
    lent: Cell<bool>,
    /// Blocks adopted by this vector (its elements link to them), with their own adoptees.
    deps: Adopted,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for ShmVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmVec")
            .field("block", self.buf.object())
            .field("len", &self.len)
            .field("adopted", &self.deps.len())
            .finish()
    }
}

impl<T: Plain> ShmVec<T> {
    const SIZE: usize = {
        assert!(std::mem::size_of::<T>() > 0, "zero-sized elements");
        assert!(
            std::mem::align_of::<T>() <= 16,
            "alignment beyond a block's 16"
        );
        std::mem::size_of::<T>()
    };

    /// An empty vector with room for a few elements (it allocates its block now).
    pub fn new_in(alloc: &ShmAlloc) -> Result<Self, NativeError> {
        Self::with_capacity_in(alloc, MIN_CAP)
    }

    /// An empty vector with room for `cap` elements (at least one).
    pub fn with_capacity_in(alloc: &ShmAlloc, cap: usize) -> Result<Self, NativeError> {
        let bytes = cap
            .max(1)
            .checked_mul(Self::SIZE)
            .ok_or(NativeError::TooLarge)?;
        let buf = BlockBuf::new(alloc.alloc(bytes)?)?;
        Ok(ShmVec {
            alloc: alloc.clone(),
            limit: Cell::new(buf.len() / Self::SIZE),
            buf,
            len: 0,
            lent: Cell::new(false),
            deps: Adopted::default(),
            _t: PhantomData,
        })
    }

    /// A vector holding a copy of `items`.
    pub fn from_slice_in(alloc: &ShmAlloc, items: &[T]) -> Result<Self, NativeError> {
        let mut v = Self::with_capacity_in(alloc, items.len())?;
        v.extend_from_slice(items)?;
        Ok(v)
    }

    /// Elements.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements it holds without growing.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len() / Self::SIZE
    }

    /// Makes room for `more` elements beyond the length: a new block (at least double), the
    /// elements copied over, the old block released.
    pub fn reserve(&mut self, more: usize) -> Result<(), NativeError> {
        check_unlent(&self.lent, self.buf.object())?;
        self.limit.set(self.capacity());
        let need = self.len.checked_add(more).ok_or(NativeError::TooLarge)?;
        if need <= self.capacity() {
            return Ok(());
        }
        let cap = need.max(self.capacity().saturating_mul(2)).max(MIN_CAP);
        let bytes = cap.checked_mul(Self::SIZE).ok_or(NativeError::TooLarge)?;
        let mut new = BlockBuf::new(self.alloc.alloc(bytes)?)?;
        new.copy_from(&self.buf, self.len * Self::SIZE)?;
        self.buf = new;
        self.limit.set(self.capacity());
        Ok(())
    }

    /// Appends `value`, growing through the arena when full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), NativeError> {
        if self.len >= self.limit.get() {
            self.reserve(1)?;
        }
        self.buf.write(self.len * Self::SIZE, value.as_bytes())?;
        self.len += 1;
        Ok(())
    }

    /// Appends a copy of `items`.
    pub fn extend_from_slice(&mut self, items: &[T]) -> Result<(), NativeError> {
        self.reserve(items.len())?;
        self.buf.write(self.len * Self::SIZE, items.as_bytes())?;
        self.len += items.len();
        Ok(())
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Result<Option<T>, NativeError> {
        check_unlent(&self.lent, self.buf.object())?;
        if self.len == 0 {
            return Ok(None);
        }
        let v = self.get(self.len - 1);
        self.len -= 1;
        Ok(v)
    }

    /// Shortens it to `len` elements (no effect if it is shorter). Blocks that dropped elements
    /// linked to stay adopted until the vector is dropped.
    pub fn truncate(&mut self, len: usize) -> Result<(), NativeError> {
        check_unlent(&self.lent, self.buf.object())?;
        self.len = self.len.min(len);
        Ok(())
    }

    /// Removes every element.
    pub fn clear(&mut self) -> Result<(), NativeError> {
        self.truncate(0)
    }

    /// A copy of element `i`, or `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let mut v = T::new_zeroed();
        self.buf.read(i * Self::SIZE, v.as_mut_bytes()).ok()?;
        Some(v)
    }

    /// Replaces element `i`.
    pub fn set(&mut self, i: usize, value: T) -> Result<(), NativeError> {
        check_unlent(&self.lent, self.buf.object())?;
        if i >= self.len {
            return Err(NativeError::OutOfBounds {
                index: i,
                len: self.len,
            });
        }
        self.buf.write(i * Self::SIZE, value.as_bytes())?;
        Ok(())
    }

    /// Copies of the elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// A copy of the elements in a `Vec`.
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![T::new_zeroed(); self.len];
        // Cannot fail: `len` elements lie inside the block.
        let _ = self.buf.read(0, v.as_mut_bytes());
        v
    }

    /// Takes `child` (a vector, string, box or map of the same pool) into this vector's keeping
    /// and returns the link to store in an element: its blocks now live as long as this vector,
    /// and are lent with it.
    pub fn adopt<N: ShmNode>(&mut self, child: N) -> N::Link {
        let link = child.link();
        self.deps.adopt(child.into_blocks());
        link
    }

    /// Whether `lend` was called and the borrower has not given the vector back (as far as the
    /// owner has drained its returns).
    pub fn is_lent(&self) -> bool {
        self.lent.get() && self.buf.object().refcount().map_or(true, |n| n > 1)
    }
}

impl<T> sealed::Sealed for ShmVec<T> {}

impl<T: Plain> ShmNode for ShmVec<T> {
    type Link = VecLink<T>;

    fn link(&self) -> VecLink<T> {
        VecLink::from_block_link(BlockLink::from_handle(&self.handle()))
    }

    fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        let h = lend_blocks(
            pool,
            to,
            self.buf.object(),
            self.len * Self::SIZE,
            &self.deps,
        )?;
        self.lent.set(true);
        self.limit.set(0);
        Ok(h)
    }

    fn handle(&self) -> ArenaHandle {
        handle_of(self.buf.object(), self.len * Self::SIZE)
    }

    fn into_blocks(self) -> (ArenaObject, Adopted) {
        (self.buf.into_object(), self.deps)
    }
}

impl<T: Plain> ShmVec<T> {
    /// Lends the vector and every block it adopted to borrower `to` (see [`ShmNode::lend`]).
    pub fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(self, pool, to)
    }

    /// The handle of its bytes without a reference (see [`ShmNode::handle`]).
    pub fn handle(&self) -> ArenaHandle {
        ShmNode::handle(self)
    }
}

/// A UTF-8 string in a shared-memory pool, the owner's side: a [`ShmVec<u8>`] that holds only
/// UTF-8.
#[derive(Debug)]
pub struct ShmString(ShmVec<u8>);

impl ShmString {
    /// An empty string.
    pub fn new_in(alloc: &ShmAlloc) -> Result<Self, NativeError> {
        Ok(ShmString(ShmVec::with_capacity_in(alloc, 16)?))
    }

    /// A copy of `s`.
    pub fn from_str_in(alloc: &ShmAlloc, s: &str) -> Result<Self, NativeError> {
        Ok(ShmString(ShmVec::from_slice_in(alloc, s.as_bytes())?))
    }

    /// Appends `s`.
    pub fn push_str(&mut self, s: &str) -> Result<(), NativeError> {
        self.0.extend_from_slice(s.as_bytes())
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy of the string.
    pub fn to_string_lossless(&self) -> String {
        // Only `&str`s were ever appended, whole.
        String::from_utf8(self.0.to_vec()).unwrap_or_default()
    }

    /// Lends the string (see [`ShmNode::lend`]).
    pub fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(&self.0, pool, to)
    }

    /// The handle of its bytes without a reference.
    pub fn handle(&self) -> ArenaHandle {
        self.0.handle()
    }
}

impl sealed::Sealed for ShmString {}

impl ShmNode for ShmString {
    type Link = StrLink;
    fn link(&self) -> StrLink {
        StrLink::from_block_link(self.0.link().block_link())
    }
    fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(&self.0, pool, to)
    }
    fn handle(&self) -> ArenaHandle {
        self.0.handle()
    }
    fn into_blocks(self) -> (ArenaObject, Adopted) {
        self.0.into_blocks()
    }
}

/// One `T` in a shared-memory pool, the owner's side.
#[derive(Debug)]
pub struct ShmBox<T>(ShmVec<T>);

impl<T: Plain> ShmBox<T> {
    /// A box holding `value`.
    pub fn new_in(alloc: &ShmAlloc, value: T) -> Result<Self, NativeError> {
        let mut v = ShmVec::with_capacity_in(alloc, 1)?;
        v.push(value)?;
        Ok(ShmBox(v))
    }

    /// A copy of the value.
    pub fn get(&self) -> T {
        self.0.get(0).unwrap_or_else(T::new_zeroed)
    }

    /// Replaces the value.
    pub fn set(&mut self, value: T) -> Result<(), NativeError> {
        self.0.set(0, value)
    }

    /// As [`ShmVec::adopt`]: for a `T` that holds links.
    pub fn adopt<N: ShmNode>(&mut self, child: N) -> N::Link {
        self.0.adopt(child)
    }

    /// Lends the box and what it adopted (see [`ShmNode::lend`]).
    pub fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(&self.0, pool, to)
    }

    /// The handle of its bytes without a reference.
    pub fn handle(&self) -> ArenaHandle {
        self.0.handle()
    }
}

impl<T> sealed::Sealed for ShmBox<T> {}

impl<T: Plain> ShmNode for ShmBox<T> {
    type Link = BoxLink<T>;
    fn link(&self) -> BoxLink<T> {
        BoxLink::from_block_link(self.0.link().block_link())
    }
    fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(&self.0, pool, to)
    }
    fn handle(&self) -> ArenaHandle {
        self.0.handle()
    }
    fn into_blocks(self) -> (ArenaObject, Adopted) {
        self.0.into_blocks()
    }
}

/// A read-only view of a vector a peer lent (or of a classic arena's vector): every access
/// re-checks the block and copies the element out.
pub struct VecRef<'p, T> {
    src: &'p dyn NativeSource,
    view: ArenaView<'p>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> std::fmt::Debug for VecRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecRef")
            .field("view", &self.view)
            .field("len", &self.len)
            .finish()
    }
}

impl<'p, T: Plain> VecRef<'p, T> {
    /// Opens the vector a handle names: checks the handle against `src` (pool, live block,
    /// range) and that its length is a whole number of elements.
    pub fn open(src: &'p dyn NativeSource, h: &ArenaHandle) -> Result<Self, NativeError> {
        let size = std::mem::size_of::<T>();
        let view = src.view_handle(h)?;
        if size == 0 || view.len() % size != 0 {
            return Err(NativeError::Corrupt(
                "vector length is not a whole number of elements",
            ));
        }
        Ok(VecRef {
            src,
            len: view.len() / size,
            view,
            _t: PhantomData,
        })
    }

    /// The pool it reads, to open the links its elements hold.
    pub fn source(&self) -> &'p dyn NativeSource {
        self.src
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of element `i`.
    pub fn get(&self, i: usize) -> Result<T, NativeError> {
        if i >= self.len {
            return Err(NativeError::OutOfBounds {
                index: i,
                len: self.len,
            });
        }
        let mut v = T::new_zeroed();
        self.view
            .read(i * std::mem::size_of::<T>(), v.as_mut_bytes())
            .map_err(NativeError::from)?;
        Ok(v)
    }

    /// Copies of the elements, each read (and checked) when the iterator reaches it.
    pub fn iter(&self) -> impl Iterator<Item = Result<T, NativeError>> + '_ {
        (0..self.len).map(|i| self.get(i))
    }

    /// A copy of every element, in one checked copy.
    pub fn to_vec(&self) -> Result<Vec<T>, NativeError> {
        let mut v = vec![T::new_zeroed(); self.len];
        self.view
            .read(0, v.as_mut_bytes())
            .map_err(NativeError::from)?;
        Ok(v)
    }

    /// The handle it was opened from.
    pub fn handle(&self) -> ArenaHandle {
        self.view.handle()
    }
}

/// A read-only view of a string a peer lent.
#[derive(Debug)]
pub struct StrRef<'p>(VecRef<'p, u8>);

impl<'p> StrRef<'p> {
    /// Opens the string a handle names (checked as [`VecRef::open`]).
    pub fn open(src: &'p dyn NativeSource, h: &ArenaHandle) -> Result<Self, NativeError> {
        Ok(StrRef(VecRef::open(src, h)?))
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy of its bytes (not checked for UTF-8).
    pub fn to_bytes(&self) -> Result<Vec<u8>, NativeError> {
        self.0.to_vec()
    }

    /// A copy of the string; bytes that are not UTF-8 are `Corrupt`.
    pub fn to_string(&self) -> Result<String, NativeError> {
        String::from_utf8(self.0.to_vec()?).map_err(|_| NativeError::Corrupt("string is not UTF-8"))
    }

    /// Whether it holds exactly `s` (compares lengths first, then copies).
    pub fn eq_str(&self, s: &str) -> Result<bool, NativeError> {
        Ok(self.len() == s.len() && self.0.to_vec()? == s.as_bytes())
    }
}

/// A read-only view of a box a peer lent.
#[derive(Debug)]
pub struct BoxRef<'p, T>(VecRef<'p, T>);

impl<'p, T: Plain> BoxRef<'p, T> {
    /// Opens the box a handle names: checked as [`VecRef::open`], and it must hold exactly one
    /// `T`.
    pub fn open(src: &'p dyn NativeSource, h: &ArenaHandle) -> Result<Self, NativeError> {
        let v = VecRef::open(src, h)?;
        if v.len() != 1 {
            return Err(NativeError::Corrupt("box does not hold one value"));
        }
        Ok(BoxRef(v))
    }

    /// A copy of the value.
    pub fn get(&self) -> Result<T, NativeError> {
        self.0.get(0)
    }

    /// The pool it reads, to open the links the value holds.
    pub fn source(&self) -> &'p dyn NativeSource {
        self.0.source()
    }
}
