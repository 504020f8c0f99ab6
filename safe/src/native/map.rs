//! [`ShmHashMap`] and its reader [`MapRef`]: a chained hash table in one block.
//!
//! Block layout (all little-endian native integers, offsets from the block's start):
//!
//! ```text
//! 0    MapHeader (32 bytes: magic, buckets, len, cap, key size, value size)
//! 32   buckets: [u32; buckets]   entry index + 1 of the chain's head (0: empty)
//!      next:    [u32; cap]       entry index + 1 of the next entry in the chain (0: end)
//!      hashes:  [u64; cap]       (8-aligned) FNV-1a 64 of each key's content
//!      keys:    [K; cap]         (16-aligned)
//!      values:  [V; cap]         (16-aligned)
//! ```
//!
//! The reader recomputes the layout from the header with checked arithmetic and refuses a table
//! that does not fit its block; a chain walk takes at most `len` steps and every index is checked
//! against `len`.

use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;

use flowipc_core::arena::BlockLink;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::block::BlockBuf;
use super::Adopted;
use super::{
    check_unlent, handle_of, lend_blocks, sealed, MapLink, NativeError, NativeSource, Plain,
    ShmAlloc, ShmNode, StrLink,
};
use crate::arena::{ArenaHandle, ArenaObject, ArenaView, BorrowerId, LendPool};

const MAGIC: u32 = 0x4d41_5031; // "MAP1"

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct MapHeader {
    magic: u32,
    buckets: u32,
    len: u32,
    cap: u32,
    key_size: u32,
    value_size: u32,
    reserved: u64,
}

static_assertions::const_assert_eq!(std::mem::size_of::<MapHeader>(), 32);

/// Where each array starts, for `buckets` heads and `cap` entries.
#[derive(Clone, Copy, Debug)]
struct Layout {
    buckets: usize,
    next: usize,
    hashes: usize,
    keys: usize,
    values: usize,
    total: usize,
}

fn round_up(x: usize, a: usize) -> Option<usize> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

impl Layout {
    fn new(buckets: usize, cap: usize, key_size: usize, value_size: usize) -> Option<Layout> {
        let b = std::mem::size_of::<MapHeader>();
        let next = b.checked_add(buckets.checked_mul(4)?)?;
        let hashes = round_up(next.checked_add(cap.checked_mul(4)?)?, 8)?;
        let keys = round_up(hashes.checked_add(cap.checked_mul(8)?)?, 16)?;
        let values = round_up(keys.checked_add(cap.checked_mul(key_size)?)?, 16)?;
        let total = values.checked_add(cap.checked_mul(value_size)?)?;
        Some(Layout {
            buckets: b,
            next,
            hashes,
            keys,
            values,
            total,
        })
    }
}

/// FNV-1a, 64 bits: both sides hash a key's content with it.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A hash map from `K` to `V` in a shared-memory pool, the owner's side (see the
/// [module docs](super)). Keys are compared by their bytes; a `ShmHashMap<StrLink, V>` is keyed by
/// strings ([`insert_str`](Self::insert_str)).
pub struct ShmHashMap<K, V> {
    alloc: ShmAlloc,
    buf: BlockBuf,
    layout: Layout,
    nbuckets: usize,
    cap: usize,
    /// Key content -> entry index.
    index: HashMap<Vec<u8>, u32>,
    hashes: Vec<u64>,
    lent: Cell<bool>,
    deps: Adopted,
    _t: PhantomData<(K, V)>,
}

impl<K, V> std::fmt::Debug for ShmHashMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmHashMap")
            .field("block", self.buf.object())
            .field("len", &self.hashes.len())
            .finish()
    }
}

impl<K: Plain, V: Plain> ShmHashMap<K, V> {
    const CHECK: () = {
        assert!(std::mem::align_of::<K>() <= 16 && std::mem::align_of::<V>() <= 16);
        assert!(std::mem::size_of::<K>() <= u32::MAX as usize);
        assert!(std::mem::size_of::<V>() <= u32::MAX as usize);
    };

    /// An empty map with room for a few entries.
    pub fn new_in(alloc: &ShmAlloc) -> Result<Self, NativeError> {
        Self::with_capacity_in(alloc, 8)
    }

    /// An empty map with room for `cap` entries.
    pub fn with_capacity_in(alloc: &ShmAlloc, cap: usize) -> Result<Self, NativeError> {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        let cap = cap.max(1);
        let (buf, layout, nbuckets) = Self::table(alloc, cap)?;
        Ok(ShmHashMap {
            alloc: alloc.clone(),
            buf,
            layout,
            nbuckets,
            cap,
            index: HashMap::new(),
            hashes: Vec::new(),
            lent: Cell::new(false),
            deps: Adopted::default(),
            _t: PhantomData,
        })
    }

    /// A zeroed table for `cap` entries, its header written (length 0).
    fn table(alloc: &ShmAlloc, cap: usize) -> Result<(BlockBuf, Layout, usize), NativeError> {
        let cap32 = u32::try_from(cap).map_err(|_| NativeError::TooLarge)?;
        let nbuckets = cap
            .checked_next_power_of_two()
            .ok_or(NativeError::TooLarge)?;
        let nb32 = u32::try_from(nbuckets).map_err(|_| NativeError::TooLarge)?;
        let layout = Layout::new(
            nbuckets,
            cap,
            std::mem::size_of::<K>(),
            std::mem::size_of::<V>(),
        )
        .ok_or(NativeError::TooLarge)?;
        let mut buf = BlockBuf::new(alloc.alloc(layout.total)?)?;
        buf.zero(0, layout.hashes)?;
        let header = MapHeader {
            magic: MAGIC,
            buckets: nb32,
            len: 0,
            cap: cap32,
            key_size: std::mem::size_of::<K>() as u32,
            value_size: std::mem::size_of::<V>() as u32,
            reserved: 0,
        };
        buf.write(0, header.as_bytes())?;
        Ok((buf, layout, nbuckets))
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Inserts or replaces the value for `key` (compared by its bytes). Returns the old value.
    pub fn insert(&mut self, key: K, value: V) -> Result<Option<V>, NativeError> {
        self.insert_content(key.as_bytes(), key, value)
    }

    /// A copy of the value for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_content(key.as_bytes())
    }

    fn get_content(&self, content: &[u8]) -> Option<V> {
        let &i = self.index.get(content)?;
        self.read_at(self.layout.values, i as usize)
    }

    fn read_at<T: Plain>(&self, base: usize, i: usize) -> Option<T> {
        let mut v = T::new_zeroed();
        self.buf
            .read(base + i * std::mem::size_of::<T>(), v.as_mut_bytes())
            .ok()?;
        Some(v)
    }

    fn insert_content(
        &mut self,
        content: &[u8],
        key: K,
        value: V,
    ) -> Result<Option<V>, NativeError> {
        check_unlent(&self.lent, self.buf.object())?;
        let vs = std::mem::size_of::<V>();
        if let Some(&i) = self.index.get(content) {
            let old = self.read_at(self.layout.values, i as usize);
            self.buf
                .write(self.layout.values + i as usize * vs, value.as_bytes())?;
            return Ok(old);
        }
        if self.hashes.len() == self.cap {
            self.grow()?;
        }
        let i = self.hashes.len();
        let h = fnv1a(content);
        let ks = std::mem::size_of::<K>();
        self.buf.write(self.layout.keys + i * ks, key.as_bytes())?;
        self.buf
            .write(self.layout.values + i * vs, value.as_bytes())?;
        self.buf
            .write(self.layout.hashes + i * 8, &h.to_ne_bytes())?;
        self.link_entry(i, h)?;
        self.hashes.push(h);
        self.buf
            .write(8, &(self.hashes.len() as u32).to_ne_bytes())?;
        self.index.insert(content.to_vec(), i as u32);
        Ok(None)
    }

    /// Puts entry `i` (hash `h`) at the head of its bucket's chain.
    fn link_entry(&mut self, i: usize, h: u64) -> Result<(), NativeError> {
        let b = (h as usize) & (self.nbuckets - 1);
        let mut head = [0u8; 4];
        self.buf.read(self.layout.buckets + b * 4, &mut head)?;
        self.buf.write(self.layout.next + i * 4, &head)?;
        self.buf
            .write(self.layout.buckets + b * 4, &(i as u32 + 1).to_ne_bytes())?;
        Ok(())
    }

    /// Moves the entries to a table of twice the capacity and rebuilds the chains.
    fn grow(&mut self) -> Result<(), NativeError> {
        let cap = self.cap.checked_mul(2).ok_or(NativeError::TooLarge)?;
        let (mut buf, layout, nbuckets) = Self::table(&self.alloc, cap)?;
        let n = self.hashes.len();
        let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        let mut tmp = vec![0u8; n * ks.max(vs)];
        self.buf.read(self.layout.keys, &mut tmp[..n * ks])?;
        buf.write(layout.keys, &tmp[..n * ks])?;
        self.buf.read(self.layout.values, &mut tmp[..n * vs])?;
        buf.write(layout.values, &tmp[..n * vs])?;
        buf.write(layout.hashes, self.hashes.as_bytes())?;
        buf.write(8, &(n as u32).to_ne_bytes())?;
        self.buf = buf;
        self.layout = layout;
        self.nbuckets = nbuckets;
        self.cap = cap;
        for i in 0..n {
            self.link_entry(i, self.hashes[i])?;
        }
        Ok(())
    }

    /// Copies of the entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        (0..self.len()).filter_map(|i| {
            Some((
                self.read_at(self.layout.keys, i)?,
                self.read_at(self.layout.values, i)?,
            ))
        })
    }

    /// As [`ShmVec::adopt`](super::ShmVec::adopt): the child lives (and is lent) with this map.
    pub fn adopt<N: ShmNode>(&mut self, child: N) -> N::Link {
        let link = child.link();
        self.deps.adopt(child.into_blocks());
        link
    }

    /// Lends the map and what it adopted (see [`ShmNode::lend`]).
    pub fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        ShmNode::lend(self, pool, to)
    }

    /// The handle of its table without a reference.
    pub fn handle(&self) -> ArenaHandle {
        ShmNode::handle(self)
    }
}

impl<V: Plain> ShmHashMap<StrLink, V> {
    /// Inserts or replaces the value for the string `key` (stored once, in a string block the map
    /// adopts). Returns the old value.
    pub fn insert_str(&mut self, key: &str, value: V) -> Result<Option<V>, NativeError> {
        if let Some(&i) = self.index.get(key.as_bytes()) {
            let k = self
                .read_at(self.layout.keys, i as usize)
                .unwrap_or(StrLink::NULL);
            return self.insert_content(key.as_bytes(), k, value);
        }
        check_unlent(&self.lent, self.buf.object())?;
        let s = super::ShmString::from_str_in(&self.alloc, key)?;
        let link = self.adopt(s);
        self.insert_content(key.as_bytes(), link, value)
    }

    /// A copy of the value for the string `key`.
    pub fn get_str(&self, key: &str) -> Option<V> {
        self.get_content(key.as_bytes())
    }
}

impl<K, V> sealed::Sealed for ShmHashMap<K, V> {}

impl<K: Plain, V: Plain> ShmNode for ShmHashMap<K, V> {
    type Link = MapLink<K, V>;

    fn link(&self) -> MapLink<K, V> {
        MapLink::from_block_link(BlockLink::from_handle(&self.handle()))
    }

    fn lend(&self, pool: &LendPool, to: BorrowerId) -> Result<ArenaHandle, NativeError> {
        let h = lend_blocks(pool, to, self.buf.object(), self.layout.total, &self.deps)?;
        self.lent.set(true);
        Ok(h)
    }

    fn handle(&self) -> ArenaHandle {
        handle_of(self.buf.object(), self.layout.total)
    }

    fn into_blocks(self) -> (ArenaObject, Adopted) {
        (self.buf.into_object(), self.deps)
    }
}

/// A read-only view of a map a peer lent: the header is checked when it is opened, every lookup
/// walks at most `len` chain steps, and every value is copied out.
pub struct MapRef<'p, K, V> {
    src: &'p dyn NativeSource,
    view: ArenaView<'p>,
    layout: Layout,
    nbuckets: usize,
    len: usize,
    _t: PhantomData<(K, V)>,
}

impl<K, V> std::fmt::Debug for MapRef<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRef")
            .field("view", &self.view)
            .field("len", &self.len)
            .finish()
    }
}

impl<'p, K: Plain, V: Plain> MapRef<'p, K, V> {
    /// Opens the map a handle names: checks the handle against `src`, then the header (magic, key
    /// and value sizes, `len <= cap`, at least one bucket, the whole table inside the block).
    pub fn open(src: &'p dyn NativeSource, h: &ArenaHandle) -> Result<Self, NativeError> {
        let view = src.view_handle(h)?;
        let mut hd = MapHeader::new_zeroed();
        view.read(0, hd.as_mut_bytes())
            .map_err(|_| NativeError::Corrupt("map block shorter than its header"))?;
        if hd.magic != MAGIC {
            return Err(NativeError::Corrupt("map header magic"));
        }
        if hd.key_size as usize != std::mem::size_of::<K>()
            || hd.value_size as usize != std::mem::size_of::<V>()
        {
            return Err(NativeError::Corrupt(
                "map key or value size differs from the reader's",
            ));
        }
        if hd.buckets == 0 || hd.len > hd.cap {
            return Err(NativeError::Corrupt("map bucket count or length"));
        }
        let layout = Layout::new(
            hd.buckets as usize,
            hd.cap as usize,
            std::mem::size_of::<K>(),
            std::mem::size_of::<V>(),
        )
        .filter(|l| l.total <= view.len())
        .ok_or(NativeError::Corrupt("map table larger than its block"))?;
        Ok(MapRef {
            src,
            view,
            layout,
            nbuckets: hd.buckets as usize,
            len: hd.len as usize,
            _t: PhantomData,
        })
    }

    /// The pool it reads, to open the links its keys and values hold.
    pub fn source(&self) -> &'p dyn NativeSource {
        self.src
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn read<T: Plain>(&self, at: usize) -> Result<T, NativeError> {
        let mut v = T::new_zeroed();
        self.view.read(at, v.as_mut_bytes())?;
        Ok(v)
    }

    fn check_index(&self, i: usize) -> Result<(), NativeError> {
        if i >= self.len {
            return Err(NativeError::OutOfBounds {
                index: i,
                len: self.len,
            });
        }
        Ok(())
    }

    /// A copy of entry `i`'s key (entries are in insertion order).
    pub fn key_at(&self, i: usize) -> Result<K, NativeError> {
        self.check_index(i)?;
        self.read(self.layout.keys + i * std::mem::size_of::<K>())
    }

    /// A copy of entry `i`'s value.
    pub fn value_at(&self, i: usize) -> Result<V, NativeError> {
        self.check_index(i)?;
        self.read(self.layout.values + i * std::mem::size_of::<V>())
    }

    /// Copies of the entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V), NativeError>> + '_ {
        (0..self.len).map(|i| Ok((self.key_at(i)?, self.value_at(i)?)))
    }

    /// Walks the chain of `hash`, calling `is_match(entry)` for each entry with that hash; at most
    /// `len` steps, every index checked.
    fn find(
        &self,
        hash: u64,
        mut is_match: impl FnMut(usize) -> Result<bool, NativeError>,
    ) -> Result<Option<usize>, NativeError> {
        let b = (hash as usize) % self.nbuckets;
        let mut cur: u32 = self.read(self.layout.buckets + b * 4)?;
        let mut steps = 0usize;
        while cur != 0 {
            let i = cur as usize - 1;
            if i >= self.len {
                return Err(NativeError::Corrupt("map chain index past the entries"));
            }
            steps += 1;
            if steps > self.len {
                return Err(NativeError::Corrupt(
                    "map chain longer than the map (a cycle)",
                ));
            }
            let h: u64 = self.read(self.layout.hashes + i * 8)?;
            if h == hash && is_match(i)? {
                return Ok(Some(i));
            }
            cur = self.read(self.layout.next + i * 4)?;
        }
        Ok(None)
    }

    /// A copy of the value for `key` (compared by its bytes), or `None`.
    pub fn get(&self, key: &K) -> Result<Option<V>, NativeError> {
        let want = key.as_bytes();
        match self.find(fnv1a(want), |i| Ok(self.key_at(i)?.as_bytes() == want))? {
            Some(i) => Ok(Some(self.value_at(i)?)),
            None => Ok(None),
        }
    }
}

impl<V: Plain> MapRef<'_, StrLink, V> {
    /// A copy of the value for the string `key`, or `None`.
    pub fn get_str(&self, key: &str) -> Result<Option<V>, NativeError> {
        let found = self.find(fnv1a(key.as_bytes()), |i| {
            self.key_at(i)?.open(self.src)?.eq_str(key)
        })?;
        match found {
            Some(i) => Ok(Some(self.value_at(i)?)),
            None => Ok(None),
        }
    }
}

/// The layout's offsets for the tests' forged tables: buckets, next, hashes, keys, values, total.
#[cfg(test)]
pub(super) fn test_layout(
    buckets: usize,
    cap: usize,
    ks: usize,
    vs: usize,
) -> Option<(usize, usize, usize, usize, usize, usize)> {
    let l = Layout::new(buckets, cap, ks, vs)?;
    Some((l.buckets, l.next, l.hashes, l.keys, l.values, l.total))
}

/// The key hash, for the tests' forged tables.
#[cfg(test)]
pub(super) fn test_hash(bytes: &[u8]) -> u64 {
    fnv1a(bytes)
}
