use super::*;
use crate::arena::{BlockError, BorrowerId, PoolUsage};

fn pool() -> (LendPool, BorrowerId, BorrowedPool) {
    let pool = LendPool::create(16 << 20).unwrap();
    let (id, setup) = pool.add_borrower().unwrap();
    let b = BorrowedPool::open(setup).unwrap();
    (pool, id, b)
}

#[derive(Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Part {
    data: VecLink<u8>,
    size: u64,
    hash: u64,
}

#[test]
fn vec_push_grow_get_and_read_back() {
    let (pool, id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let mut v: ShmVec<u64> = ShmVec::new_in(&alloc).unwrap();
    for i in 0..10_000u64 {
        v.push(i * 3).unwrap();
    }
    v.extend_from_slice(&[7, 8, 9]).unwrap();
    assert_eq!(v.len(), 10_003);
    assert_eq!(v.get(5), Some(15));
    assert_eq!(v.get(10_003), None);
    assert_eq!(v.pop().unwrap(), Some(9));
    v.set(0, 42).unwrap();
    assert!(matches!(
        v.set(10_002, 1),
        Err(NativeError::OutOfBounds { .. })
    ));
    let h = v.lend(&pool, id).unwrap();
    let r = VecRef::<u64>::open(&b, &h).unwrap();
    assert_eq!(r.len(), 10_002);
    assert!(!r.is_empty());
    assert_eq!(r.get(0).unwrap(), 42);
    assert_eq!(r.get(10_001).unwrap(), 8);
    assert!(matches!(
        r.get(10_002),
        Err(NativeError::OutOfBounds {
            index: 10_002,
            len: 10_002
        })
    ));
    assert_eq!(r.to_vec().unwrap(), v.to_vec());
    assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 10_002);
}

#[test]
fn lent_tree_is_frozen_and_kept_alive_until_drained() {
    let (pool, id, b) = pool();
    let base = pool.usage();
    let alloc = ShmAlloc::from(&pool);
    let mut file: ShmVec<Part> = ShmVec::new_in(&alloc).unwrap();
    for i in 0..20u8 {
        let data = file.adopt(ShmVec::from_slice_in(&alloc, &[i; 100]).unwrap());
        file.push(Part {
            data,
            size: 100,
            hash: u64::from(i),
        })
        .unwrap();
    }
    let h = file.lend(&pool, id).unwrap();
    assert!(file.is_lent());
    assert!(matches!(
        file.push(file.get(0).unwrap()),
        Err(NativeError::Lent)
    ));
    assert!(matches!(file.truncate(0), Err(NativeError::Lent)));
    drop(file); // the borrower's references keep every block
    let parts = VecRef::<Part>::open(&b, &h).unwrap();
    for i in 0..20 {
        let p = parts.get(i).unwrap();
        assert_eq!(
            p.data.open(&b).unwrap().to_vec().unwrap(),
            vec![i as u8; 100]
        );
    }
    b.release(h).unwrap();
    pool.drain_returns(id).unwrap();
    assert_eq!(pool.usage(), base, "the whole tree went with the root");

    // Mutation after the borrower gave it back.
    let mut v: ShmVec<u64> = ShmVec::from_slice_in(&alloc, &[1, 2, 3]).unwrap();
    let h = v.lend(&pool, id).unwrap();
    assert!(matches!(v.push(4), Err(NativeError::Lent)));
    b.release(h).unwrap();
    assert!(
        matches!(v.push(4), Err(NativeError::Lent)),
        "not drained yet"
    );
    pool.drain_returns(id).unwrap();
    v.push(4).unwrap();
    assert_eq!(v.to_vec(), [1, 2, 3, 4]);
}

#[test]
fn a_child_adopted_while_lent_keeps_its_tree_for_both() {
    let (pool, id, b) = pool();
    let base = pool.usage();
    let alloc = ShmAlloc::from(&pool);
    let mut child: ShmVec<VecLink<u8>> = ShmVec::new_in(&alloc).unwrap();
    let leaf = child.adopt(ShmVec::from_slice_in(&alloc, b"leaf").unwrap());
    child.push(leaf).unwrap();
    let child_h = child.lend(&pool, id).unwrap();
    // Adopted while its own lend is out: the child's list is shared with the lend table.
    let mut root: ShmVec<VecLink<VecLink<u8>>> = ShmVec::new_in(&alloc).unwrap();
    let link = root.adopt(child);
    root.push(link).unwrap();
    let root_h = root.lend(&pool, id).unwrap();
    drop(root);
    let objects = pool.usage().objects;
    // Each lend alone keeps the leaf: give back the root first, then the child.
    b.release(root_h).unwrap();
    pool.drain_returns(id).unwrap();
    assert!(pool.usage().objects < objects, "the root's block went");
    let c = VecRef::<VecLink<u8>>::open(&b, &child_h).unwrap();
    let leaf = c.get(0).unwrap().open(&b).unwrap().to_vec().unwrap();
    assert_eq!(leaf, b"leaf", "the child's lend still holds the leaf");
    b.release(child_h).unwrap();
    pool.drain_returns(id).unwrap();
    assert_eq!(pool.usage(), base, "everything went with the last lend");
}

#[test]
fn a_lend_before_adopting_does_not_take_the_later_lends_keeper() {
    let (pool, id, b) = pool();
    let base = pool.usage();
    let alloc = ShmAlloc::from(&pool);
    let mut root: ShmVec<VecLink<u8>> = ShmVec::with_capacity_in(&alloc, 4).unwrap();
    let first = root.lend(&pool, id).unwrap(); // no children yet
                                               // Adopting changes no shared byte, so it is allowed while lent.
    let child = root.adopt(ShmVec::from_slice_in(&alloc, b"child").unwrap());
    let second = root.lend(&pool, id).unwrap();
    drop(root);
    // The first lend comes back: the second still holds the child.
    b.release(first).unwrap();
    pool.drain_returns(id).unwrap();
    let read = child.open(&b).unwrap().to_vec().unwrap();
    assert_eq!(read, b"child");
    b.release(second).unwrap();
    pool.drain_returns(id).unwrap();
    assert_eq!(pool.usage(), base);
}

#[test]
fn lending_a_large_tree_takes_one_reference() {
    let (pool, id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let mut file: ShmVec<VecLink<u8>> = ShmVec::new_in(&alloc).unwrap();
    for i in 0..1000u32 {
        let data = file.adopt(ShmVec::from_slice_in(&alloc, &i.to_le_bytes()).unwrap());
        file.push(data).unwrap();
    }
    let h = file.lend(&pool, id).unwrap();
    assert_eq!(pool.lent_to(id), 1, "one reference, on the root");
    drop(file);
    // The leaves stay alive through the list the lend shares.
    let r = VecRef::<VecLink<u8>>::open(&b, &h).unwrap();
    let last = r.get(999).unwrap().open(&b).unwrap().to_vec().unwrap();
    assert_eq!(last, 999u32.to_le_bytes());
    b.release(h).unwrap();
    pool.drain_returns(id).unwrap();
    assert_eq!(pool.lent_to(id), 0);
}

#[test]
fn reclaim_releases_the_tree() {
    let (pool, id, _b) = pool();
    let base = pool.usage();
    let alloc = ShmAlloc::from(&pool);
    let mut m: ShmHashMap<StrLink, VecLink<u64>> = ShmHashMap::new_in(&alloc).unwrap();
    for i in 0..50u64 {
        let v = m.adopt(ShmVec::from_slice_in(&alloc, &[i; 10]).unwrap());
        m.insert_str(&format!("key{i}"), v).unwrap();
    }
    let _h = m.lend(&pool, id).unwrap();
    drop(m);
    assert!(pool.usage().objects > 100);
    pool.reclaim(id).unwrap();
    assert_eq!(pool.usage(), base);
}

#[test]
fn map_insert_get_grow_and_string_keys() {
    let (pool, id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let mut m: ShmHashMap<u64, u32> = ShmHashMap::new_in(&alloc).unwrap();
    for i in 0..1000u64 {
        assert_eq!(m.insert(i * 7, i as u32).unwrap(), None);
    }
    assert_eq!(m.insert(7, 99).unwrap(), Some(1));
    assert_eq!(m.get(&7), Some(99));
    assert_eq!(m.len(), 1000);
    let h = m.lend(&pool, id).unwrap();
    let r = MapRef::<u64, u32>::open(&b, &h).unwrap();
    assert_eq!(r.len(), 1000);
    assert_eq!(r.get(&7).unwrap(), Some(99));
    assert_eq!(r.get(&(999 * 7)).unwrap(), Some(999));
    assert_eq!(r.get(&8).unwrap(), None);
    assert_eq!(r.iter().count(), 1000);

    let mut s: ShmHashMap<StrLink, VecLink<u64>> = ShmHashMap::new_in(&alloc).unwrap();
    for word in [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
    ] {
        let v = s.adopt(ShmVec::from_slice_in(&alloc, &[word.len() as u64; 3]).unwrap());
        s.insert_str(word, v).unwrap();
    }
    let h = s.lend(&pool, id).unwrap();
    let r = MapRef::<StrLink, VecLink<u64>>::open(&b, &h).unwrap();
    let v = r.get_str("epsilon").unwrap().unwrap();
    assert_eq!(v.open(&b).unwrap().to_vec().unwrap(), [7, 7, 7]);
    assert!(r.get_str("omega").unwrap().is_none());
    assert_eq!(s.get_str("iota").map(|l| l.block_link().len), Some(24));
    let k = r.key_at(0).unwrap().open(&b).unwrap();
    assert_eq!(k.to_string().unwrap(), "alpha");
}

#[test]
fn box_and_string() {
    let (pool, id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let mut s = ShmString::from_str_in(&alloc, "hello").unwrap();
    s.push_str(", world").unwrap();
    assert_eq!(s.to_string_lossless(), "hello, world");
    let mut bx = ShmBox::new_in(&alloc, [0u32; 4]).unwrap();
    bx.set([1, 2, 3, 4]).unwrap();
    assert_eq!(bx.get(), [1, 2, 3, 4]);
    let hs = s.lend(&pool, id).unwrap();
    let hb = bx.lend(&pool, id).unwrap();
    assert_eq!(
        StrRef::open(&b, &hs).unwrap().to_string().unwrap(),
        "hello, world"
    );
    let sr = StrRef::open(&b, &hs).unwrap();
    assert!(!sr.is_empty());
    assert_eq!(sr.to_bytes().unwrap(), b"hello, world");
    assert!(sr.eq_str("hello, world").unwrap());
    assert!(
        !sr.eq_str("hello, World").unwrap(),
        "same length, other bytes"
    );
    assert!(!sr.eq_str("hello, world!").unwrap(), "other length");
    let empty = ShmString::new_in(&alloc).unwrap();
    let he = empty.lend(&pool, id).unwrap();
    let er = StrRef::open(&b, &he).unwrap();
    assert!(er.is_empty());
    assert!(er.to_bytes().unwrap().is_empty());
    assert!(er.eq_str("").unwrap());
    assert_eq!(
        BoxRef::<[u32; 4]>::open(&b, &hb).unwrap().get().unwrap(),
        [1, 2, 3, 4]
    );
    // The box seen as a u64 box: 16 bytes are two u64s, not one.
    assert!(matches!(
        BoxRef::<u64>::open(&b, &hb),
        Err(NativeError::Corrupt(_))
    ));
}

#[test]
fn classic_arena_views() {
    let a = ShmArena::create_classic(8 << 20).unwrap();
    let alloc = ShmAlloc::from(&a);
    let mut v: ShmVec<StrLink> = ShmVec::new_in(&alloc).unwrap();
    for w in ["a", "bb", "ccc"] {
        let l = v.adopt(ShmString::from_str_in(&alloc, w).unwrap());
        v.push(l).unwrap();
    }
    let peer = ShmArena::open(flowipc_sys::fd::dup_cloexec(a.fd()).unwrap()).unwrap();
    let r = VecRef::<StrLink>::open(&peer, &v.handle()).unwrap();
    let words: Vec<String> = r
        .iter()
        .map(|l| l.unwrap().open(&peer).unwrap().to_string().unwrap())
        .collect();
    assert_eq!(words, ["a", "bb", "ccc"]);
    let h = v.handle();
    drop(v);
    assert!(
        VecRef::<StrLink>::open(&peer, &h).is_err(),
        "freed with its owner"
    );
    assert_eq!(a.stats().blocks_in_use(), 0);
}

/// Any bytes as a block: a `ShmVec<u8>` (the owner forging what a hostile writer would).
fn forged(alloc: &ShmAlloc, bytes: &[u8]) -> ShmVec<u8> {
    ShmVec::from_slice_in(alloc, bytes).unwrap()
}

#[test]
fn forged_links_and_lengths_are_errors() {
    let (pool, _id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let real: ShmVec<u64> = ShmVec::from_slice_in(&alloc, &[1, 2, 3]).unwrap();
    let good = real.link().block_link();
    let cases = [
        BlockLink {
            offset: good.offset + 8,
            ..good
        },
        BlockLink {
            offset: u64::MAX - 7,
            ..good
        },
        BlockLink { offset: 0, ..good },
        BlockLink {
            len: 1 << 40,
            ..good
        },
        BlockLink {
            len: u64::MAX,
            ..good
        },
        BlockLink {
            generation: good.generation ^ 1,
            ..good
        },
    ];
    for l in cases {
        let e = VecLink::<u64>::from_block_link(l).open(&b).unwrap_err();
        assert!(matches!(e, NativeError::Arena(_)), "{l:?}: {e}");
    }
    let odd = BlockLink { len: 20, ..good };
    assert!(matches!(
        VecLink::<u64>::from_block_link(odd).open(&b),
        Err(NativeError::Corrupt(_))
    ));
    // A vector of links, some forged: each open is checked on its own.
    let mut v: ShmVec<VecLink<u64>> = ShmVec::new_in(&alloc).unwrap();
    v.push(real.link()).unwrap();
    v.push(VecLink::from_block_link(cases[3])).unwrap();
    let r = VecRef::<VecLink<u64>>::open(&b, &v.handle()).unwrap();
    assert_eq!(
        r.get(0).unwrap().open(&b).unwrap().to_vec().unwrap(),
        [1, 2, 3]
    );
    assert!(r.get(1).unwrap().open(&b).is_err());
    // Not UTF-8.
    let bad = forged(&alloc, &[0xff, 0xfe]);
    let s = StrRef::open(&b, &bad.handle()).unwrap();
    assert!(matches!(s.to_string(), Err(NativeError::Corrupt(_))));
    // A freed block.
    let h = real.handle();
    drop(real);
    assert!(matches!(
        VecRef::<u64>::open(&b, &h),
        Err(NativeError::Arena(ArenaError::Block(
            BlockError::StaleGeneration
        )))
    ));
}

/// The bytes of a map table for `u64 -> u64`, with `buckets` heads and entries
/// `(next, hash, key, value)`.
fn map_bytes(buckets: &[u32], entries: &[(u32, u64, u64, u64)], cap: u32) -> Vec<u8> {
    let layout = map_layout(buckets.len(), cap as usize);
    let mut out = vec![0u8; layout.5];
    let header = [
        0x4d41_5031u32,
        buckets.len() as u32,
        entries.len() as u32,
        cap,
        8,
        8,
        0,
        0,
    ];
    out[..32].copy_from_slice(header.as_bytes());
    for (i, b) in buckets.iter().enumerate() {
        out[layout.0 + i * 4..][..4].copy_from_slice(&b.to_ne_bytes());
    }
    for (i, &(n, h, k, v)) in entries.iter().enumerate() {
        out[layout.1 + i * 4..][..4].copy_from_slice(&n.to_ne_bytes());
        out[layout.2 + i * 8..][..8].copy_from_slice(&h.to_ne_bytes());
        out[layout.3 + i * 8..][..8].copy_from_slice(&k.to_ne_bytes());
        out[layout.4 + i * 8..][..8].copy_from_slice(&v.to_ne_bytes());
    }
    out
}

fn map_layout(buckets: usize, cap: usize) -> (usize, usize, usize, usize, usize, usize) {
    map::test_layout(buckets, cap, 8, 8).unwrap()
}

/// The map's arrays sit at their alignment (hashes 8, keys and values 16), each as close after
/// the one before as that allows, and a size that overflows has no layout.
#[test]
fn map_layout_aligns_each_array_tightly() {
    for (buckets, cap, ks, vs) in [(1, 1, 8, 8), (3, 5, 4, 12), (7, 9, 24, 1), (16, 13, 16, 16)] {
        let (b, next, hashes, keys, values, total) =
            map::test_layout(buckets, cap, ks, vs).unwrap();
        assert_eq!(next, b + buckets * 4);
        let tight = |at: usize, after: usize, align: usize| {
            at % align == 0 && at >= after && at - after < align
        };
        assert!(tight(hashes, next + cap * 4, 8), "hashes at {hashes}");
        assert!(tight(keys, hashes + cap * 8, 16), "keys at {keys}");
        assert!(tight(values, keys + cap * ks, 16), "values at {values}");
        assert_eq!(total, values + cap * vs);
    }
    assert!(map::test_layout(1, usize::MAX / 8, 8, 8).is_none());
}

#[test]
fn forged_maps_are_errors_and_chains_are_bounded() {
    let (pool, _id, b) = pool();
    let alloc = ShmAlloc::from(&pool);
    let h5 = map::test_hash(&5u64.to_ne_bytes());
    let h6 = map::test_hash(&6u64.to_ne_bytes());
    // A well-formed one-bucket map {5: 50, 6: 60}: chain 2 -> 1.
    let ok = forged(
        &alloc,
        &map_bytes(&[2], &[(0, h5, 5, 50), (1, h6, 6, 60)], 2),
    );
    let r = MapRef::<u64, u64>::open(&b, &ok.handle()).unwrap();
    assert_eq!(r.get(&5).unwrap(), Some(50));
    assert_eq!(r.get(&6).unwrap(), Some(60));
    assert_eq!(r.get(&7).unwrap(), None);
    // A cycle: 1 -> 2 -> 1 ...; a lookup of a missing key stops.
    let cyc = forged(
        &alloc,
        &map_bytes(&[2], &[(2, h5, 5, 50), (1, h6, 6, 60)], 2),
    );
    let r = MapRef::<u64, u64>::open(&b, &cyc.handle()).unwrap();
    assert!(matches!(r.get(&7), Err(NativeError::Corrupt(_))));
    // A self-loop.
    let me = forged(&alloc, &map_bytes(&[1], &[(1, h5, 5, 50)], 1));
    let r = MapRef::<u64, u64>::open(&b, &me.handle()).unwrap();
    assert!(matches!(r.get(&9), Err(NativeError::Corrupt(_))));
    // A chain index past the entries.
    let far = forged(&alloc, &map_bytes(&[7], &[(0, h5, 5, 50)], 8));
    let r = MapRef::<u64, u64>::open(&b, &far.handle()).unwrap();
    assert!(matches!(r.get(&5), Err(NativeError::Corrupt(_))));
    assert!(matches!(r.key_at(1), Err(NativeError::OutOfBounds { .. })));
    // Headers: magic, sizes, len > cap, no buckets, a table larger than its block.
    let mut bad_magic = map_bytes(&[0], &[], 1);
    bad_magic[0] ^= 1;
    let mut big_len = map_bytes(&[0], &[], 1);
    big_len[8..12].copy_from_slice(&5u32.to_ne_bytes());
    let mut huge_cap = map_bytes(&[0], &[], 1);
    huge_cap[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
    let mut huge_buckets = map_bytes(&[0], &[], 1);
    huge_buckets[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    let mut no_buckets = map_bytes(&[0], &[], 1);
    no_buckets[4..8].copy_from_slice(&0u32.to_ne_bytes());
    for bytes in [
        bad_magic,
        big_len,
        huge_cap,
        huge_buckets,
        no_buckets,
        vec![1, 2, 3],
    ] {
        let f = forged(&alloc, &bytes);
        assert!(matches!(
            MapRef::<u64, u64>::open(&b, &f.handle()),
            Err(NativeError::Corrupt(_))
        ));
    }
    let f = forged(&alloc, &map_bytes(&[0], &[], 1));
    assert!(matches!(
        MapRef::<u64, u32>::open(&b, &f.handle()),
        Err(NativeError::Corrupt(_))
    ));
    drop((ok, cyc, me, far, f));
    assert_eq!(pool.usage(), PoolUsage::default());
}

#[test]
fn lent_twice_and_to_two_borrowers() {
    let (pool, a, ba) = pool();
    let (b, setup) = pool.add_borrower().unwrap();
    let bb = BorrowedPool::open(setup).unwrap();
    let base = pool.usage();
    let alloc = ShmAlloc::from(&pool);
    let mut v: ShmVec<StrLink> = ShmVec::new_in(&alloc).unwrap();
    let l = v.adopt(ShmString::from_str_in(&alloc, "child").unwrap());
    v.push(l).unwrap();
    let h1 = v.lend(&pool, a).unwrap();
    let h2 = v.lend(&pool, a).unwrap();
    let hb = v.lend(&pool, b).unwrap();
    drop(v);
    ba.release(h1).unwrap();
    pool.drain_returns(a).unwrap();
    // `a` still holds one lend of the tree, `b` another: the child is alive for both.
    for (src, h) in [(&ba, h2), (&bb, hb)] {
        let r = VecRef::<StrLink>::open(src, &h).unwrap();
        assert_eq!(
            r.get(0).unwrap().open(src).unwrap().to_string().unwrap(),
            "child"
        );
    }
    // A return that names nothing `b` holds releases nothing.
    let forged = ArenaHandle {
        generation: hb.generation ^ 1,
        ..hb
    };
    bb.release(forged).unwrap();
    pool.drain_returns(b).unwrap();
    assert_eq!(pool.bogus_returns(), 1);
    bb.release(hb).unwrap();
    pool.drain_returns(b).unwrap();
    assert!(
        pool.usage().objects > base.objects,
        "a still holds the tree"
    );
    pool.reclaim(a).unwrap();
    assert_eq!(
        pool.usage(),
        base,
        "b's return and a's reclaim released every block"
    );
    drop(bb);
}

#[cfg(feature = "jemalloc")]
#[test]
fn jemalloc_pool_tree_lent_frozen_and_released() {
    let pool = LendPool::create_jemalloc(32 << 20).unwrap();
    let (id, setup) = pool.add_borrower().unwrap();
    let b = BorrowedPool::open(setup).unwrap();
    let alloc = ShmAlloc::from(&pool);
    let mut m: ShmHashMap<StrLink, VecLink<u64>> = ShmHashMap::new_in(&alloc).unwrap();
    for i in 0..200u64 {
        let v = m.adopt(ShmVec::from_slice_in(&alloc, &[i; 5]).unwrap());
        m.insert_str(&format!("k{i}"), v).unwrap();
    }
    let h = m.lend(&pool, id).unwrap();
    assert!(matches!(
        m.insert_str("late", VecLink::NULL),
        Err(NativeError::Lent)
    ));
    {
        let r = MapRef::<StrLink, VecLink<u64>>::open(&b, &h).unwrap();
        let v = r.get_str("k123").unwrap().unwrap();
        assert_eq!(v.open(&b).unwrap().to_vec().unwrap(), [123; 5]);
    }
    b.release(h).unwrap();
    pool.drain_returns(id).unwrap();
    m.insert_str("late", VecLink::NULL).unwrap();
    drop(m);
    assert_eq!(pool.usage(), PoolUsage::default());
}
