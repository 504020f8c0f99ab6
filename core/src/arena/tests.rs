//! Unit tests of the arena; they also run under miri (counts shrink with `cfg!(miri)`).

use super::layout::{self, class_info, st_alloc, HEADER_SIZE, NUM_CLASSES};
use super::*;
use alloc::vec::Vec;
use std::collections::BTreeMap;

/// Small spans keep regions (and miri) small: 4 KiB spans, classes 16 B..2 KiB.
const SHIFT: u32 = 12;

fn arena(len: usize) -> Arena {
    Arena::new_owned(len, SHIFT).unwrap()
}

fn write(a: &Arena, off: Offset, len: u64, byte: u8) {
    let p = a.payload_ptr(off, len).unwrap();
    // SAFETY: the test owns the freshly allocated block of at least `len` bytes.
    unsafe { core::ptr::write_bytes(p.as_ptr(), byte, len as usize) };
}

fn check(a: &Arena, off: Offset, len: u64, byte: u8) -> bool {
    let p = a.payload_ptr(off, len).unwrap();
    // SAFETY: the test owns the block; nobody else writes it.
    let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), len as usize) };
    s.iter().all(|&b| b == byte)
}

#[test]
fn class_geometry_fits_span() {
    for shift in MIN_SPAN_SHIFT..=MAX_SPAN_SHIFT {
        for c in 0..NUM_CLASSES {
            let i = class_info(c, shift);
            let span = 1u64 << shift;
            if i.count > 0 {
                assert!(i.first >= 8 * i.count, "state words overlap blocks");
                assert_eq!(i.first % i.block, 0);
                assert!(i.first + i.count * i.block <= span);
                // Maximal: one more block would not fit.
                let n = i.count + 1;
                assert!(
                    layout::round_up(8 * n, i.block) + n * i.block > span
                        || n >= 1 << layout::BLOCK_BITS
                );
            }
        }
    }
    assert_eq!(class_info(0, 18).count, 10922);
    assert_eq!(
        class_info(4, 18),
        layout::ClassInfo {
            block: 256,
            count: 992,
            first: 7936
        }
    );
    assert_eq!(class_info(12, 18).count, 3);
    assert_eq!(class_info(4, 8).count, 0);
    // Past MAX_SPAN_SHIFT the block index, not the span, is the limit.
    let most = (1 << layout::BLOCK_BITS) - 1;
    assert_eq!(class_info(0, 20).count, most);
    assert_eq!(class_info(0, 22).count, most);
}

/// `geometry` takes the most spans that fit behind the header and the span table, with span 0
/// at the first span boundary past the table.
#[test]
fn geometry_is_maximal() {
    let span = 1u64 << SHIFT;
    let fits = |n: u64, len: u64| layout::round_up(HEADER_SIZE + n * 16, span) + n * span <= len;
    let step = if cfg!(miri) { 4093 } else { 97 };
    for len in (0..(64 << 10) + 1).step_by(step) {
        match layout::geometry(len, SHIFT) {
            Some((n, off)) => {
                assert!(n >= 1 && fits(n, len), "len {len}: {n} spans do not fit");
                assert!(!fits(n + 1, len), "len {len}: {} spans would fit", n + 1);
                assert_eq!(off, layout::round_up(HEADER_SIZE + n * 16, span));
            }
            None => assert!(!fits(1, len), "len {len}: one span fits"),
        }
    }
}

#[test]
fn heads_carry_id_and_tag() {
    let h = layout::head(0x1234_5678, 0x9abc_def0);
    assert_eq!(layout::head_id(h), 0x1234_5678);
    assert_eq!(layout::head_tag(h), 0x9abc_def0);
    assert_eq!(h, 0x9abc_def0_1234_5678);
}

#[test]
fn geometry_is_consistent() {
    for len in [HEADER_SIZE as usize, 4096, 8192, 1 << 16, (1 << 20) + 123] {
        if let Some((n, off)) = layout::geometry(len as u64, SHIFT) {
            assert!(off >= HEADER_SIZE + n * 16);
            assert_eq!(off % (1 << SHIFT), 0);
            assert!(off + (n << SHIFT) <= len as u64);
        }
    }
    assert!(layout::geometry(4096, SHIFT).is_none());
    assert_eq!(layout::geometry(3 * 4096, SHIFT), Some((2, 4096)));
}

#[test]
fn alloc_free_roundtrip_all_classes() {
    let a = arena(1 << 20);
    for c in 0..NUM_CLASSES {
        let size = 16usize << c;
        let off = a.alloc(size, 1).unwrap();
        let info = a.info(off).unwrap();
        assert!(info.capacity >= size as u64);
        assert_eq!(info.refcount, 1);
        write(&a, off, size as u64, c as u8);
        assert!(check(&a, off, size as u64, c as u8));
        a.free(off).unwrap();
        assert!(matches!(a.free(off), Err(BlockError::DoubleFree)));
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
    assert_eq!(a.stats().bytes_in_use(), 0);
}

#[test]
fn alignment_is_honoured() {
    let a = arena(1 << 20);
    for align in [1usize, 8, 16, 64, 256, 4096] {
        for size in [1usize, 17, 100, 3000, 5000] {
            let off = a.alloc(size, align).unwrap();
            assert_eq!(off.get() % align as u64, 0, "size {size} align {align}");
            // Absolute alignment too: the base is 4096-aligned.
            assert_eq!(a.payload_ptr(off, 1).unwrap().as_ptr() as usize % align, 0);
        }
    }
    assert_eq!(a.alloc(8, 3), Err(AllocError::BadAlign));
    assert_eq!(a.alloc(8, 8192), Err(AllocError::BadAlign));
}

#[test]
fn freed_blocks_are_reused() {
    let a = arena(64 << 10);
    let x = a.alloc(40, 8).unwrap();
    let gen = a.info(x).unwrap().generation;
    a.free(x).unwrap();
    let y = a.alloc(40, 8).unwrap();
    assert_eq!(x, y, "LIFO free list reuses the last freed block");
    assert_eq!(a.info(y).unwrap().generation, gen + 1);
}

#[test]
fn exhaustion_then_recovery() {
    // 7 spans of 4 KiB, each 7 blocks of 512 B after a 512-byte slot of state words.
    let a = arena(32 << 10);
    let mut v = Vec::new();
    loop {
        match a.alloc(512, 1) {
            Ok(o) => v.push(o),
            Err(AllocError::OutOfMemory) => break,
            Err(e) => panic!("{e}"),
        }
        // Bounded, so that a bump pointer that does not move fails here instead of hanging.
        assert!(v.len() <= 49, "more blocks than the region holds");
    }
    let n = v.len();
    assert_eq!(n, 49);
    for o in v.drain(..) {
        a.free(o).unwrap();
    }
    for _ in 0..n {
        v.push(a.alloc(512, 1).unwrap());
    }
    assert_eq!(a.alloc(512, 1), Err(AllocError::OutOfMemory));
    assert_eq!(a.stats().classes[5].blocks_in_use, n as u64);
}

#[test]
fn large_runs() {
    let a = arena(1 << 20);
    let span = a.span_size();
    let x = a.alloc(5000, 16).unwrap();
    assert_eq!(a.info(x).unwrap().capacity, 2 * span);
    let y = a.alloc(3 * span as usize, 16).unwrap();
    assert_eq!(a.info(y).unwrap().capacity, 4 * span);
    write(&a, x, 5000, 7);
    write(&a, y, 3 * span, 9);
    assert!(check(&a, x, 5000, 7));
    let st = a.stats();
    assert_eq!(st.large_blocks_in_use, 2);
    assert_eq!(st.large_bytes_in_use, 6 * span);
    a.free(x).unwrap();
    a.free(y).unwrap();
    assert_eq!(a.free(y), Err(BlockError::DoubleFree));
    assert_eq!(a.alloc(3 * span as usize, 1), Ok(y));
    assert_eq!(a.alloc(usize::MAX / 2, 1), Err(AllocError::TooLarge));
    // An interior offset of a run is not a block.
    assert_eq!(
        a.free(Offset::new(y.get() + 16)),
        Err(BlockError::NotABlock)
    );
    assert_eq!(
        a.free(Offset::new(y.get() + span)),
        Err(BlockError::NotABlock)
    );
}

#[test]
fn bad_frees_are_errors() {
    let a = arena(64 << 10);
    let x = a.alloc(64, 1).unwrap();
    assert_eq!(a.free(Offset::new(0)), Err(BlockError::OutOfRange));
    assert_eq!(a.free(Offset::new(u64::MAX)), Err(BlockError::OutOfRange));
    assert_eq!(a.free(Offset::new(x.get() + 1)), Err(BlockError::NotABlock));
    // The neighbouring block was carved but never allocated.
    assert_eq!(
        a.free(Offset::new(x.get() + 64)),
        Err(BlockError::NotAllocated)
    );
    // A span never carved.
    assert_eq!(
        a.free(Offset::new(x.get() + 4 * 4096)),
        Err(BlockError::NotABlock)
    );
    // The state words at the start of the span are not blocks.
    assert_eq!(
        a.free(Offset::new(x.get() - 64)),
        Err(BlockError::NotABlock)
    );
    a.free(x).unwrap();
    assert_eq!(a.free(x), Err(BlockError::DoubleFree));
    // Lists intact: the next two allocations are distinct.
    let p = a.alloc(64, 1).unwrap();
    let q = a.alloc(64, 1).unwrap();
    assert_ne!(p, q);
}

#[test]
fn refcount_last_release_frees_once() {
    let a = arena(64 << 10);
    let x = a.alloc(100, 1).unwrap();
    let g = a.info(x).unwrap().generation;
    assert_eq!(a.retain(x, g), Ok(2));
    assert_eq!(a.retain(x, g), Ok(3));
    assert_eq!(a.retain(x, g + 1), Err(BlockError::StaleGeneration));
    assert_eq!(a.release(x, g), Ok(false));
    assert_eq!(a.release(x, g), Ok(false));
    assert_eq!(a.stats().blocks_in_use(), 1);
    assert_eq!(a.release(x, g), Ok(true));
    assert_eq!(a.stats().blocks_in_use(), 0);
    assert_eq!(a.release(x, g), Err(BlockError::StaleGeneration));
    let y = a.alloc(100, 1).unwrap();
    assert_eq!(y, x);
    assert_eq!(
        a.release(x, g),
        Err(BlockError::StaleGeneration),
        "old generation cannot free the new object"
    );
}

#[test]
fn handles_roundtrip_and_validate() {
    let a = arena(64 << 10);
    let x = a.alloc(100, 1).unwrap();
    let info = a.info(x).unwrap();
    let h = ArenaHandle {
        pool_id: 7,
        offset: x.get(),
        len: 100,
        generation: info.generation,
        reserved: 0,
    };
    let b = h.to_bytes();
    assert_eq!(ArenaHandle::from_bytes(&b), Ok(h));
    // Every byte in its place: fields of distinct bytes, little-endian.
    let mut wire = [0u8; ArenaHandle::ENCODED_LEN];
    for (i, byte) in wire[..28].iter_mut().enumerate() {
        *byte = i as u8 + 1;
    }
    let fields = ArenaHandle::from_bytes(&wire).unwrap();
    assert_eq!(fields.pool_id, 0x0807_0605_0403_0201);
    assert_eq!(fields.offset, 0x100f_0e0d_0c0b_0a09);
    assert_eq!(fields.len, 0x1817_1615_1413_1211);
    assert_eq!(fields.generation, 0x1c1b_1a19);
    assert_eq!(fields.to_bytes(), wire);
    assert_eq!(
        ArenaHandle::from_bytes(&b[..31]),
        Err(HandleDecodeError::BadLength)
    );
    let mut bad = b;
    bad[30] = 1;
    assert_eq!(
        ArenaHandle::from_bytes(&bad),
        Err(HandleDecodeError::Reserved)
    );
    assert!(a.check_handle(&h).is_ok());
    assert_eq!(
        a.check_handle(&ArenaHandle { len: 129, ..h }),
        Err(BlockError::TooLong)
    );
    assert_eq!(
        a.check_handle(&ArenaHandle { generation: 5, ..h }),
        Err(BlockError::StaleGeneration)
    );
    a.free(x).unwrap();
    assert_eq!(a.check_handle(&h), Err(BlockError::StaleGeneration));
}

#[test]
fn attach_validates_header() {
    let a = arena(64 << 10);
    let x = a.alloc(64, 1).unwrap();
    let base = a.payload_ptr(Offset::new(a.data_off), 0).unwrap();
    // SAFETY: data_off bytes before the data area are the header: step back to the region base.
    let base = unsafe { NonNull::new_unchecked(base.as_ptr().sub(a.data_off as usize)) };
    // SAFETY: the region lives as long as `a`, which outlives `b`.
    let b = unsafe { Arena::attach(base, 64 << 10) }.unwrap();
    assert_eq!(b.info(x).unwrap().refcount, 1);
    a.set_pool_tag(99);
    assert_eq!(b.pool_tag(), 99);
    // SAFETY: as above; the reader only loads.
    let r = unsafe { ArenaReader::attach(base, 64 << 10) }.unwrap();
    assert_eq!(r.pool_tag(), 99);
    let h = ArenaHandle {
        pool_id: 99,
        offset: x.get(),
        len: 64,
        generation: 0,
        reserved: 0,
    };
    assert_eq!(r.check_handle(&h).unwrap().capacity, 64);
    assert!(r.payload_ptr(x, 64).is_some());
    b.free(x).unwrap();
    assert_eq!(r.check_handle(&h), Err(BlockError::StaleGeneration));
    assert_eq!(a.free(x), Err(BlockError::DoubleFree));
    let attach = |p: NonNull<u8>, len: usize| {
        // SAFETY: the region lives as long as `a`; a misaligned base is refused before any access.
        unsafe { Arena::attach(p, len) }.map(|_| ())
    };
    assert_eq!(attach(base, 32 << 10), Err(InitError::Corrupt));
    a.header().magic.store(1, Ordering::Relaxed);
    assert_eq!(attach(base, 64 << 10), Err(InitError::BadMagic));
    a.header().magic.store(layout::MAGIC, Ordering::Relaxed);
    a.header()
        .version
        .store(layout::VERSION + 1, Ordering::Relaxed);
    assert_eq!(attach(base, 64 << 10), Err(InitError::BadVersion));
    a.header().version.store(layout::VERSION, Ordering::Relaxed);
    a.header().span_shift.store(40, Ordering::Relaxed);
    assert_eq!(attach(base, 64 << 10), Err(InitError::BadSpanShift));
    a.header().span_shift.store(SHIFT, Ordering::Relaxed);
    a.header().data_off.store(0, Ordering::Relaxed);
    assert_eq!(attach(base, 64 << 10), Err(InitError::Corrupt));
    a.header().data_off.store(a.data_off, Ordering::Relaxed);
    // Each geometry field is checked on its own (a surviving mutant joined them with `&&`).
    let spans = a.header().span_count.load(Ordering::Relaxed);
    a.header().span_count.store(spans + 1, Ordering::Relaxed);
    assert_eq!(
        attach(base, 64 << 10),
        Err(InitError::Corrupt),
        "span count"
    );
    a.header().span_count.store(spans, Ordering::Relaxed);
    a.header().region_len.store(32 << 10, Ordering::Relaxed);
    assert_eq!(
        attach(base, 64 << 10),
        Err(InitError::Corrupt),
        "region length"
    );
    a.header().region_len.store(64 << 10, Ordering::Relaxed);
    assert!(attach(base, 64 << 10).is_ok());
    let odd = NonNull::new(base.as_ptr().wrapping_add(8)).unwrap();
    assert_eq!(attach(odd, 1024), Err(InitError::Misaligned));
}

#[test]
fn corrupt_free_list_is_reported_not_followed() {
    let a = arena(64 << 10);
    let x = a.alloc(32, 1).unwrap();
    let (_, _, xid, _) = a.locate(x).unwrap();
    a.free(x).unwrap();
    // Point the class-1 head at a block id in a span that does not exist.
    a.header().small_heads[1].store(layout::head(0x7fff_0000, 3), Ordering::Relaxed);
    assert_eq!(a.alloc(32, 1), Err(AllocError::Corrupt));
    // A block index one past the last block of a real class-1 span (its "state word" would lie
    // past the span's state words; a surviving mutant let it through).
    let past = (xid >> layout::BLOCK_BITS << layout::BLOCK_BITS) | a.classes[1].count as u32;
    a.header().small_heads[1].store(layout::head(past, 4), Ordering::Relaxed);
    assert_eq!(a.alloc(32, 1), Err(AllocError::Corrupt));
    // A head pointing at an allocated block.
    let y = a.alloc(64, 1).unwrap();
    let (_, _, id, _) = a.locate(y).unwrap();
    a.header().small_heads[2].store(layout::head(id, 9), Ordering::Relaxed);
    assert_eq!(a.alloc(64, 1), Err(AllocError::Corrupt));
    // A free block whose link leads out of range.
    let (st, _, id, _) = a.locate(y).unwrap();
    st.store(layout::st_free(1, 0x7ff0_0000), Ordering::Relaxed);
    a.header().small_heads[2].store(layout::head(id, 10), Ordering::Relaxed);
    assert_eq!(a.alloc(64, 1), Err(AllocError::Corrupt));
    // An allocated state with refcount 0.
    st.store(st_alloc(1, 0), Ordering::Relaxed);
    assert_eq!(a.release(y, 1), Err(BlockError::Corrupt));
    // A bump pointer beyond the end is clamped.
    a.header().next_span.store(u64::MAX, Ordering::Relaxed);
    assert_eq!(a.alloc(4000, 1), Err(AllocError::OutOfMemory));
}

/// Large-run heads the peer rewrote: each check of `resolve_large` on its own (surviving mutants
/// joined them with `&&`).
#[test]
fn corrupt_large_list_is_reported_not_followed() {
    let a = arena(64 << 10);
    let x = a.alloc(32, 1).unwrap();
    let (_, _, xid, _) = a.locate(x).unwrap();
    let small_span = xid >> layout::BLOCK_BITS;
    // An order-0 head naming a span carved for small blocks.
    a.header().large_heads[0].store(layout::head(small_span, 1), Ordering::Relaxed);
    assert_eq!(a.alloc(3000, 1), Err(AllocError::Corrupt));
    // An order-0 head naming a span past the end.
    let beyond = a.span_count as u32 + 1;
    a.header().large_heads[0].store(layout::head(beyond, 2), Ordering::Relaxed);
    assert_eq!(a.alloc(3000, 1), Err(AllocError::Corrupt));
    // An order-1 head naming the last span, which the peer marked as an order-1 run: the run
    // would end past the region.
    let last = a.span_count - 1;
    a.kind_word(last)
        .store(layout::KIND_LARGE | 1, Ordering::Relaxed);
    a.large_state(last)
        .store(layout::st_free(0, layout::NIL), Ordering::Relaxed);
    a.header().large_heads[1].store(layout::head(last as u32, 3), Ordering::Relaxed);
    assert_eq!(a.alloc(5000, 1), Err(AllocError::Corrupt));

    // A run that ends exactly at the region's end is valid and reused after a free.
    let a = arena(64 << 10);
    let mut runs = Vec::new();
    while let Ok(r) = a.alloc(3000, 1) {
        runs.push(r);
        // Bounded, so that a bump pointer that does not move fails here instead of hanging.
        assert!(
            runs.len() <= 15,
            "more one-span runs than the region's 15 spans"
        );
    }
    assert_eq!(runs.len(), 15);
    let last = *runs.last().unwrap();
    assert_eq!(last.get(), a.data_off + ((a.span_count - 1) << SHIFT));
    a.free(last).unwrap();
    assert_eq!(a.alloc(3000, 1), Ok(last));
}

/// `locate`'s own bounds (surviving mutants weakened them): an offset at the end of the spans,
/// and a span whose kind word (peer-written) names a class or order one past the last.
#[test]
fn locate_rejects_the_end_and_unknown_kinds() {
    let a = arena(64 << 10);
    let end = a.data_off + (a.span_count << SHIFT);
    assert_eq!(a.free(Offset::new(end)), Err(BlockError::OutOfRange));
    assert!(a.info(Offset::new(end - 8)).is_err());
    let x = a.alloc(32, 1).unwrap();
    let span = (x.get() - a.data_off) >> SHIFT;
    let base = Offset::new(a.data_off + (span << SHIFT));
    for kind in [
        layout::KIND_SMALL | NUM_CLASSES as u64,
        layout::KIND_LARGE | layout::NUM_ORDERS as u64,
    ] {
        a.kind_word(span).store(kind, Ordering::Relaxed);
        assert!(a.free(base).is_err(), "kind {kind:#x}");
        assert!(a.info(x).is_err(), "kind {kind:#x}");
    }
    // The last span marked (by the peer) as an allocated order-1 run: the run would end past the
    // region, so it is not a block.
    let last = a.span_count - 1;
    a.kind_word(last)
        .store(layout::KIND_LARGE | 1, Ordering::Relaxed);
    a.large_state(last).store(st_alloc(0, 1), Ordering::Relaxed);
    let at = Offset::new(a.data_off + (last << SHIFT));
    assert_eq!(a.info(at), Err(BlockError::NotABlock));
}

/// `payload_ptr` is the bound that keeps a pointer from a peer's handle inside the region (its
/// comparisons survived mutation before this test).
#[test]
fn payload_ptr_stays_in_the_region() {
    let len = 64u64 << 10;
    let a = arena(len as usize);
    assert!(a.payload_ptr(Offset::new(len - 8), 8).is_some());
    assert!(a.payload_ptr(Offset::new(len - 8), 9).is_none());
    assert!(a.payload_ptr(Offset::new(len), 1).is_none());
    assert!(a.payload_ptr(Offset::new(a.data_off), 0).is_some());
    assert!(a.payload_ptr(Offset::new(0), 8).is_none());
    assert!(a.payload_ptr(Offset::new(a.data_off - 8), 8).is_none());
    assert!(a.payload_ptr(Offset::new(u64::MAX), 2).is_none());
}

#[test]
fn threads_alloc_free_disjoint() {
    let a = arena(256 << 10);
    let iters = if cfg!(miri) { 30 } else { 20_000 };
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let a = &a;
            s.spawn(move || {
                let mut live: Vec<(Offset, u64, u8)> = Vec::new();
                let mut seed = 0x9e37_79b9u32 ^ u32::from(t);
                for i in 0..iters {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    if live.len() < 8 && seed % 3 != 0 {
                        let size = 16u64 << (seed % 6);
                        let off = a.alloc(size as usize, 1).unwrap();
                        let tag = (i as u8) ^ (t << 7);
                        write(a, off, size, tag);
                        live.push((off, size, tag));
                    } else if let Some((off, size, tag)) = live.pop() {
                        assert!(
                            check(a, off, size, tag),
                            "block overwritten by the other thread"
                        );
                        a.free(off).unwrap();
                    }
                }
                for (off, ..) in live {
                    a.free(off).unwrap();
                }
            });
        }
    });
    assert_eq!(a.stats().blocks_in_use(), 0);
}

#[test]
fn threads_race_to_free_once() {
    let rounds = if cfg!(miri) { 5 } else { 2_000 };
    let a = arena(64 << 10);
    for _ in 0..rounds {
        let x = a.alloc(48, 1).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| a.free(x).is_ok() as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
}

#[test]
fn model_check_random_ops() {
    // A sequential model: live blocks never overlap, accounting is exact.
    let a = arena(512 << 10);
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seed = 12345u64;
    let n = if cfg!(miri) { 200 } else { 50_000 };
    for _ in 0..n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (seed >> 33) as usize;
        if r % 5 < 3 {
            let size = 1 + r % 9000;
            match a.alloc(size, 1 << (r % 6)) {
                Ok(o) => {
                    let cap = a.info(o).unwrap().capacity;
                    assert!(cap >= size as u64);
                    if let Some((&s, &c)) = live.range(..=o.get()).next_back() {
                        assert!(s + c <= o.get(), "overlap");
                    }
                    if let Some((&s, _)) = live.range(o.get()..).next() {
                        assert!(o.get() + cap <= s, "overlap");
                    }
                    live.insert(o.get(), cap);
                }
                Err(AllocError::OutOfMemory) => {}
                Err(e) => panic!("{e}"),
            }
        } else if let Some((&o, _)) = live.iter().nth(r % live.len().max(1)) {
            live.remove(&o);
            a.free(Offset::new(o)).unwrap();
        }
        if !cfg!(miri) || live.len() % 16 == 0 {
            let st = a.stats();
            assert_eq!(st.blocks_in_use(), live.len() as u64);
            assert_eq!(st.bytes_in_use(), live.values().sum::<u64>());
        }
    }
}

#[test]
fn cache_alloc_free_and_flush() {
    let a = arena(256 << 10);
    let mut cache = ArenaCache::new(&a);
    let xs: Vec<Offset> = (0..100).map(|_| cache.alloc(24, 8).unwrap()).collect();
    assert_eq!(
        xs.iter().collect::<std::collections::HashSet<_>>().len(),
        100
    );
    assert_eq!(a.stats().classes[1].blocks_in_use, 100);
    for &x in &xs {
        write(&a, x, 32, 0x5a);
    }
    for &x in &xs {
        cache.free(x).unwrap();
        assert_eq!(
            cache.free(x),
            Err(BlockError::DoubleFree),
            "double free caught in front of the cache"
        );
        assert_eq!(a.free(x), Err(BlockError::DoubleFree));
    }
    assert!(cache.cached(1) <= super::cache::CACHE_DEPTH);
    assert_eq!(a.stats().blocks_in_use(), 0, "cached blocks are free");
    // Reuse from the cache keeps generations moving.
    let y = cache.alloc(32, 1).unwrap();
    assert_eq!(a.info(y).unwrap().refcount, 1);
    cache.free(y).unwrap();
    // Large blocks bypass the cache.
    let big = cache.alloc(10_000, 16).unwrap();
    assert_eq!(a.stats().large_blocks_in_use, 1);
    cache.free(big).unwrap();
    drop(cache);
    // Everything went back to the shared lists: a plain user can allocate every block of the
    // carved spans before a new span is needed.
    let spans = a.stats().classes[1].spans;
    let per = class_info(1, SHIFT).count;
    let mut n = 0;
    while a.stats().classes[1].spans == spans {
        a.alloc(32, 1).unwrap();
        n += 1;
        assert!(n <= spans * per + 1, "a new span was never carved");
    }
    assert_eq!(n - 1, spans * per, "blocks lost in the cache");
}

#[test]
fn cache_refill_takes_chains() {
    let a = arena(256 << 10);
    let xs: Vec<Offset> = (0..40).map(|_| a.alloc(64, 1).unwrap()).collect();
    for &x in &xs {
        a.free(x).unwrap();
    }
    let mut cache = ArenaCache::new(&a);
    let y = cache.alloc(64, 1).unwrap();
    assert_eq!(y, xs[39], "LIFO: the last freed block comes first");
    assert_eq!(cache.cached(2), super::cache::BATCH - 1);
    let z = a.alloc(64, 1).unwrap();
    assert!(
        !xs[40 - super::cache::BATCH..].contains(&z),
        "cached blocks are out of the shared list"
    );
}

/// Two caches that both hold a block, as after two frees racing on it (which a load and a store
/// cannot tell apart): the block is handed out once and enters the shared list once.
#[test]
fn cache_duplicates_are_dropped() {
    let a = arena(256 << 10);
    // Set the scene with both possible orders: the duplicate is allocated, or flushed, first.
    for alloc_first in [true, false] {
        let mut one = ArenaCache::new(&a);
        let mut two = ArenaCache::new(&a);
        let x = a.alloc(64, 1).unwrap();
        let (st, ..) = a.locate(x).unwrap();
        let allocated = st.load(Ordering::Relaxed);
        one.free(x).unwrap();
        // Replay the race: the second free saw the block still allocated.
        st.store(allocated, Ordering::Relaxed);
        two.free(x).unwrap();
        assert_eq!(one.cached(2), 1);
        assert_eq!(two.cached(2), 1);
        if alloc_first {
            assert_eq!(one.alloc(64, 1).unwrap(), x);
            let y = two.alloc(64, 1).unwrap();
            assert_ne!(y, x, "the duplicate entry is dropped, not handed out again");
            assert_eq!(a.info(x).unwrap().refcount, 1);
            one.free(x).unwrap();
            two.free(y).unwrap();
        }
        drop(one);
        drop(two);
        // Every free block of the class is in the list exactly once: pop them all.
        let mut seen = std::collections::HashSet::new();
        let spans = a.stats().classes[2].spans;
        while a.stats().classes[2].spans == spans {
            let z = a.alloc(64, 1).unwrap();
            assert!(seen.insert(z), "a block came off the shared list twice");
        }
        for z in seen {
            a.free(z).unwrap();
        }
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
}

/// A cache refuses the same misuse as `Arena::free`: stale offsets, blocks never allocated, and
/// interior offsets, and its blocks are free to `Arena::info`.
#[test]
fn cache_free_errors() {
    let a = arena(256 << 10);
    let mut cache = ArenaCache::new(&a);
    let x = cache.alloc(100, 16).unwrap();
    assert_eq!(
        cache.free(Offset::new(x.get() + 16)),
        Err(BlockError::NotABlock)
    );
    assert_eq!(cache.free(Offset::new(1)), Err(BlockError::OutOfRange));
    cache.free(x).unwrap();
    assert_eq!(a.info(x), Err(BlockError::DoubleFree));
    assert_eq!(a.release(x, 0), Err(BlockError::StaleGeneration));
    let y = cache.alloc(100, 16).unwrap();
    assert_eq!(y, x, "the cache reuses its last block");
    assert_eq!(a.info(y).unwrap().generation, 1);
    // A block the cache holds cannot be freed behind its back.
    cache.free(y).unwrap();
    assert_eq!(a.free(y), Err(BlockError::DoubleFree));
    assert_eq!(cache.free(y), Err(BlockError::DoubleFree));
}

/// `free_checked` frees as `free` does: small blocks into the cache (flushing a batch when it is
/// full), large ones straight to the shared lists; and it refuses double frees.
#[test]
fn cache_free_checked() {
    use super::cache::{BATCH, CACHE_DEPTH};
    let a = arena(256 << 10);
    let mut cache = ArenaCache::new(&a);
    let xs: Vec<Offset> = (0..CACHE_DEPTH + 3)
        .map(|_| a.alloc(64, 1).unwrap())
        .collect();
    let mut held = 0;
    for (i, &x) in xs.iter().enumerate() {
        cache.free_checked(x).unwrap();
        if held == CACHE_DEPTH {
            held -= BATCH;
        }
        held += 1;
        assert_eq!(cache.cached(2), held, "after free {i}");
        assert_eq!(cache.free_checked(x), Err(BlockError::DoubleFree));
        assert_eq!(
            a.info(x),
            Err(BlockError::DoubleFree),
            "cached blocks are free"
        );
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
    assert_eq!(cache.alloc(64, 1).unwrap(), xs[xs.len() - 1], "LIFO");
    let big = a.alloc(10_000, 16).unwrap();
    cache.free_checked(big).unwrap();
    assert_eq!(a.stats().large_blocks_in_use, 0);
    assert_eq!(cache.free_checked(big), Err(BlockError::DoubleFree));
}

/// A refill takes the chain up to the first block that is not free with a valid link, and
/// reports a head that is itself unusable as corruption rather than handing it out.
#[test]
fn cache_refill_stops_at_corruption() {
    let setup = || {
        let a = arena(64 << 10);
        let xs: Vec<Offset> = (0..3).map(|_| a.alloc(64, 1).unwrap()).collect();
        for &x in &xs {
            a.free(x).unwrap();
        }
        (a, xs)
    };
    // An allocated block in the middle of the chain: the refill takes only the one before it.
    let (a, xs) = setup();
    let (st, _, mid, _) = a.locate(xs[1]).unwrap();
    st.store(
        st_alloc(layout::st_gen(st.load(Ordering::Relaxed)), 1),
        Ordering::Relaxed,
    );
    let mut cache = ArenaCache::new(&a);
    assert_eq!(cache.alloc(64, 1), Ok(xs[2]));
    assert_eq!(cache.cached(2), 0, "nothing past the allocated block");
    let h = a.header().small_heads[2].load(Ordering::Relaxed);
    assert_eq!(
        layout::head_id(h),
        mid,
        "the shared head stops at the allocated block"
    );
    // The head block's link leads out of range.
    let (a, xs) = setup();
    let (st, ..) = a.locate(xs[2]).unwrap();
    st.store(layout::st_free(1, 0x7ff0_0000), Ordering::Relaxed);
    assert_eq!(ArenaCache::new(&a).alloc(64, 1), Err(AllocError::Corrupt));
    // The head is an allocated block.
    let (a, _) = setup();
    let y = a.alloc(64, 1).unwrap();
    let (_, _, id, _) = a.locate(y).unwrap();
    a.header().small_heads[2].store(layout::head(id, 7), Ordering::Relaxed);
    assert_eq!(ArenaCache::new(&a).alloc(64, 1), Err(AllocError::Corrupt));
}

/// A cache's plain-store free races the other holder's `release` of the same block (real threads:
/// loom cannot model a store racing a CAS, tokio-rs/loom#254): the block is freed exactly once,
/// by the cache, whose next allocation hands it out again.
#[test]
fn cache_free_races_release() {
    let a = arena(256 << 10);
    let rounds = if cfg!(miri) { 20 } else { 20_000 };
    let mut cache = ArenaCache::new(&a);
    for _ in 0..rounds {
        let x = cache.alloc(64, 1).unwrap();
        let gen = a.info(x).unwrap().generation;
        a.retain(x, gen).unwrap();
        std::thread::scope(|s| {
            let other = s.spawn(|| a.release(x, gen));
            cache.free(x).unwrap();
            match other.join().unwrap() {
                Ok(last) => assert!(!last, "only the cache frees"),
                Err(e) => assert_eq!(e, BlockError::StaleGeneration),
            }
        });
        assert_eq!(a.info(x), Err(BlockError::DoubleFree), "freed once");
        assert_eq!(cache.cached(2), 1);
        assert_eq!(cache.alloc(64, 1).unwrap(), x);
        cache.free(x).unwrap();
    }
    drop(cache);
    assert_eq!(a.stats().blocks_in_use(), 0);
}

#[test]
fn threads_with_caches_and_without() {
    let a = arena(256 << 10);
    let iters = if cfg!(miri) { 40 } else { 20_000 };
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let a = &a;
            s.spawn(move || {
                let mut cache = ArenaCache::new(a);
                let mut live: Vec<(Offset, u8)> = Vec::new();
                for i in 0..iters {
                    let cached = t == 0 || i % 2 == 0;
                    if live.len() < 40 && (i / 7) % 2 == 0 {
                        let off = if cached {
                            cache.alloc(48, 1)
                        } else {
                            a.alloc(48, 1)
                        }
                        .unwrap();
                        let tag = (i as u8) ^ (t << 7);
                        write(a, off, 64, tag);
                        live.push((off, tag));
                    } else if let Some((off, tag)) = live.pop() {
                        assert!(check(a, off, 64, tag), "block shared by two owners");
                        if cached { cache.free(off) } else { a.free(off) }.unwrap();
                    }
                }
                for (off, _) in live {
                    cache.free(off).unwrap();
                }
            });
        }
    });
    assert_eq!(a.stats().blocks_in_use(), 0);
}

/// Killed mutants of `check_align`: an alignment above the span size is refused even where it is
/// below `MAX_ALIGN` (only arenas with spans under 4 KiB have such alignments).
#[test]
fn alignment_above_a_small_span_is_refused() {
    let a = Arena::new_owned(1 << 16, MIN_SPAN_SHIFT).unwrap();
    assert_eq!(
        a.alloc(8, 1 << (MIN_SPAN_SHIFT + 1)),
        Err(AllocError::BadAlign)
    );
    assert!(a.alloc(8, 1 << MIN_SPAN_SHIFT).is_ok());
}

/// Killed mutants of `alloc_large`'s size check: a request for more spans than the arena has is
/// `TooLarge` (the caller can never get it), not `OutOfMemory` (try again later).
#[test]
fn a_request_beyond_the_arena_is_too_large() {
    let a = arena(1 << 20);
    assert_eq!(a.alloc(2 << 20, 1), Err(AllocError::TooLarge));
    assert_eq!(a.alloc((1 << 20) + 1, 1), Err(AllocError::TooLarge));
}

/// Killed mutants of `Arena::overhead` (its value was never asserted). Expected values follow the
/// layout: the header (640 B) and a 16-byte entry per span, rounded up to the span size, plus what
/// is left past the last whole span.
#[test]
fn overhead_is_what_is_not_in_spans() {
    // 12 KiB of 4 KiB spans: header and table fill span-sized slot 0, then 2 spans.
    assert_eq!(Arena::overhead(3 * 4096, SHIFT), Some(4096));
    // 1 MiB of 4 KiB spans: 254 spans (640 + 254 * 16 = 4704 rounds up to 8192).
    assert_eq!(Arena::overhead(1 << 20, SHIFT), Some(8192));
    // 1 MiB of 256 KiB spans: 3 spans after one span-sized header slot.
    assert_eq!(
        Arena::overhead(1 << 20, DEFAULT_SPAN_SHIFT),
        Some(256 << 10)
    );
    // 1 MiB + 100 B: the 100 B tail is overhead too.
    assert_eq!(Arena::overhead((1 << 20) + 100, SHIFT), Some(8192 + 100));
    // Not even one span fits.
    assert_eq!(Arena::overhead(4096, SHIFT), None);
}

/// Killed mutants of `Arena::block_size_for` (its value was never asserted): small sizes round up
/// to a power of two of at least 16 B while a class of that size fits a span (at 4 KiB spans,
/// classes up to 2 KiB); larger ones to a power-of-two multiple of the span size.
#[test]
fn block_size_for_follows_the_classes_and_runs() {
    let a = arena(1 << 20);
    for (size, want) in [
        (0, 16),
        (1, 16),
        (16, 16),
        (17, 32),
        (100, 128),
        (2048, 2048),
        // 4 KiB blocks do not fit a 4 KiB span with their state word: a one-span run.
        (2049, 4096),
        (4096, 4096),
        (5000, 8192),
        (3 * 4096, 4 * 4096),
        (65536, 65536),
        (65537, 32 * 4096),
    ] {
        assert_eq!(a.block_size_for(size), want, "size {size}");
    }
    // With 256 KiB spans every class fits: 64 KiB is still a small block; one more byte is a span.
    let b = Arena::new_owned(512 << 10, DEFAULT_SPAN_SHIFT).unwrap();
    assert_eq!(b.block_size_for(65536), 65536);
    assert_eq!(b.block_size_for(65537), 256 << 10);
    assert_eq!(b.block_size_for(3), 16);
}

/// Killed mutants of `Arena::carve` (`cur + n` as `cur * n` left the bump pointer at 0, so every
/// span was carved again): each carve hands out the next `n` spans and moves the bump pointer past
/// them; a request that does not fit the remaining spans is `OutOfMemory` and moves nothing.
#[test]
fn carve_bumps_by_the_spans_taken() {
    let a = arena(64 << 10);
    let n = a.span_count;
    assert_eq!(n, 15);
    let next = || a.header().next_span.load(Ordering::Relaxed);
    assert_eq!(a.carve(1), Ok(0));
    assert_eq!(next(), 1);
    assert_eq!(a.carve(3), Ok(1));
    assert_eq!(next(), 4);
    assert_eq!(a.carve(2), Ok(4));
    assert_eq!(next(), 6);
    assert_eq!(a.carve(n - 5), Err(AllocError::OutOfMemory));
    assert_eq!(next(), 6);
    assert_eq!(a.carve(n - 6), Ok(6));
    assert_eq!(next(), n);
    assert_eq!(a.carve(1), Err(AllocError::OutOfMemory));
    // A bump pointer the peer moved past the end is refused, not subtracted from.
    a.header().next_span.store(n + 1, Ordering::Relaxed);
    assert_eq!(a.carve(1), Err(AllocError::OutOfMemory));

    // Through `alloc`: two classes and a run take distinct spans, in order.
    let a = arena(64 << 10);
    let x = a.alloc(16, 1).unwrap();
    let y = a.alloc(32, 1).unwrap();
    let z = a.alloc(5000, 1).unwrap();
    let span_of = |o: Offset| (o.get() - a.data_off) >> SHIFT;
    assert_eq!((span_of(x), span_of(y), span_of(z)), (0, 1, 2));
    assert_eq!(z.get(), a.data_off + (2 << SHIFT));
    assert_eq!(a.stats().spans_carved, 4);
}

/// Killed mutants of `locate`'s index arithmetic: every block of every class is found with its
/// exact id, state word and capacity, and offsets between blocks, in the state words, or past the
/// last block are not blocks.
#[test]
fn locate_finds_every_block_exactly() {
    let a = arena(64 << 10);
    for c in 0..NUM_CLASSES {
        let block = 16u64 << c;
        let count = a.classes[c].count;
        if count == 0 {
            // 4 KiB blocks and up do not fit a 4 KiB span with their state words: runs.
            assert!(block >= 4096, "class {c}");
            continue;
        }
        let x0 = a.alloc(block as usize, 1).unwrap();
        // A fresh class takes a fresh span and hands out its block 0.
        let span = (x0.get() - a.data_off) >> SHIFT;
        let base = a.data_off + (span << SHIFT);
        let first = x0.get() - base;
        assert!(first >= 8 * count && first % block == 0 && first + count * block <= 4096);
        let mut indices = [0, 1, 2, 3, count / 2, count - 1];
        indices.iter_mut().for_each(|i| *i = (*i).min(count - 1));
        for i in indices {
            let off = x0.get() + i * block;
            let (st, kind, id, cap) = a.locate(Offset::new(off)).unwrap();
            assert!(
                matches!(kind, Kind::Small(k) if k == c),
                "class {c} block {i}"
            );
            assert_eq!(id, ((span as u32) << layout::BLOCK_BITS) | i as u32);
            assert_eq!(cap, block);
            let word = a.payload_ptr(Offset::new(base + 8 * i), 8).unwrap();
            assert_eq!(
                st as *const AtomicU64 as usize,
                word.as_ptr() as usize,
                "class {c} block {i}: state word"
            );
            assert_eq!(a.free(Offset::new(off + 8)), Err(BlockError::NotABlock));
            if block > 16 {
                let mid = Offset::new(off + block / 2);
                assert_eq!(a.free(mid), Err(BlockError::NotABlock));
            }
        }
        // The state words are not blocks, nor is the space after the last block.
        assert_eq!(a.free(Offset::new(base)), Err(BlockError::NotABlock));
        if first >= block {
            let before = Offset::new(x0.get() - block);
            assert_eq!(a.free(before), Err(BlockError::NotABlock));
        }
        let past = x0.get() + count * block;
        if past < base + 4096 {
            assert_eq!(a.free(Offset::new(past)), Err(BlockError::NotABlock));
        }
        assert_eq!(a.info(x0).unwrap().capacity, block);
    }
    // A run: found at its first span only, with the run's whole size.
    let r = a.alloc(3 * 4096, 1).unwrap();
    let span = (r.get() - a.data_off) >> SHIFT;
    let (_, kind, id, cap) = a.locate(r).unwrap();
    assert!(matches!(kind, Kind::Large(2)));
    assert_eq!(u64::from(id), span);
    assert_eq!(cap, 4 * 4096);
}

/// `locate` on a span whose kind word the peer forged: an exact `NotABlock` for every kind it
/// does not know (class or order one past the last, a class too big for the span, an unknown tag,
/// a tag with high bits set), never a panic. (`LARGE | NUM_ORDERS` is refused by the run-length
/// check too: no region has `2^NUM_ORDERS` spans.)
#[test]
fn locate_refuses_forged_kinds() {
    let a = arena(64 << 10);
    let x = a.alloc(32, 1).unwrap();
    let span = (x.get() - a.data_off) >> SHIFT;
    let base = Offset::new(a.data_off + (span << SHIFT));
    a.large_state(span).store(st_alloc(0, 1), Ordering::Relaxed);
    for kind in [
        layout::KIND_UNUSED,
        layout::KIND_CONT,
        layout::KIND_SMALL | NUM_CLASSES as u64,
        layout::KIND_SMALL | 8,
        layout::KIND_SMALL | 0xff,
        layout::KIND_LARGE | layout::NUM_ORDERS as u64,
        layout::KIND_LARGE | 0xff,
        4 << 8,
        (1 << 40) | layout::KIND_SMALL | 1,
        (1 << 40) | layout::KIND_LARGE,
    ] {
        a.kind_word(span).store(kind, Ordering::Relaxed);
        assert!(
            matches!(a.locate(base), Err(BlockError::NotABlock)),
            "kind {kind:#x} at the span base"
        );
        assert!(
            matches!(a.locate(x), Err(BlockError::NotABlock)),
            "kind {kind:#x} at block 0"
        );
    }
    // The same span, marked by the peer as a one-span run that is allocated: now a block.
    a.kind_word(span)
        .store(layout::KIND_LARGE, Ordering::Relaxed);
    assert_eq!(a.info(base).map(|i| i.capacity), Ok(4096));
}

/// Killed mutants of `Arena::stats`' bounds: kind words forged by the peer (a class one past the
/// last, a class that does not fit a span, orders past the last, a run that would end past the
/// region) and a bump pointer past the end are not counted and do not panic.
#[test]
fn stats_ignores_forged_kinds() {
    let a = arena(64 << 10);
    let n = a.span_count;
    assert_eq!(n, 15);
    let x = a.alloc(32, 1).unwrap(); // span 0, class 1
    let r = a.alloc(5000, 1).unwrap(); // spans 1 and 2, order 1
    assert_eq!(r.get(), a.data_off + (1 << SHIFT));
    let alloc = st_alloc(0, 1);
    let forge = |span: u64, kind: u64| {
        a.kind_word(span).store(kind, Ordering::Relaxed);
        a.large_state(span).store(alloc, Ordering::Relaxed);
        // The first words of the span look like allocated state words of small blocks.
        for i in 0..4 {
            a.small_state(span, i).store(alloc, Ordering::Relaxed);
        }
    };
    forge(3, layout::KIND_SMALL | NUM_CLASSES as u64);
    forge(4, layout::KIND_SMALL | 8); // 4 KiB blocks: no such class in 4 KiB spans
    forge(5, layout::KIND_LARGE | layout::NUM_ORDERS as u64);
    forge(6, layout::KIND_LARGE | 0xff);
    forge(7, 4 << 8);
    // An allocated order-1 run in spans 12 and 13 is counted; one at span 14 would end past the
    // region and is not.
    forge(12, layout::KIND_LARGE | 1);
    forge(14, layout::KIND_LARGE | 1);
    a.header().next_span.store(u64::MAX, Ordering::Relaxed);
    let st = a.stats();
    assert_eq!(st.spans_carved, n, "bump pointer clamped");
    assert_eq!(st.spans_total, n);
    for (c, cs) in st.classes.iter().enumerate() {
        assert_eq!(cs.block_size, 16 << c);
        let want = if c == 1 { (1, 1) } else { (0, 0) };
        assert_eq!((cs.spans, cs.blocks_in_use), want, "class {c}");
    }
    assert_eq!(st.large_blocks_in_use, 2);
    assert_eq!(st.large_bytes_in_use, 4 << SHIFT);
    assert_eq!(st.blocks_in_use(), 3);
    a.free(x).unwrap();
    a.free(r).unwrap();
    let st = a.stats();
    assert_eq!(
        st.classes[1],
        ClassStats {
            block_size: 32,
            blocks_in_use: 0,
            spans: 1
        }
    );
    assert_eq!(st.large_blocks_in_use, 1, "the forged run at span 12");
}

/// Killed mutants of `MAX_REFCOUNT` (`NIL - 1` as `NIL + 1` or `NIL / 1`) and of the limit check in
/// `retain`: with the count forged near the 31-bit limit, retain reaches `2^31 - 2` and refuses
/// the next one (and a peer-written count of `2^31 - 1`) with `RefcountOverflow`.
#[test]
fn retain_stops_at_max_refcount() {
    assert_eq!(MAX_REFCOUNT, (1 << 31) - 2);
    let a = arena(64 << 10);
    let x = a.alloc(64, 1).unwrap();
    let (st, ..) = a.locate(x).unwrap();
    st.store(st_alloc(3, 0x7fff_fffc), Ordering::Relaxed);
    assert_eq!(a.retain(x, 3), Ok(0x7fff_fffd));
    assert_eq!(a.retain(x, 3), Ok(0x7fff_fffe));
    assert_eq!(a.retain(x, 3), Err(BlockError::RefcountOverflow));
    assert_eq!(a.info(x).unwrap().refcount, 0x7fff_fffe, "unchanged");
    assert_eq!(a.release(x, 3), Ok(false));
    assert_eq!(a.info(x).unwrap().refcount, 0x7fff_fffd);
    assert_eq!(a.retain(x, 3), Ok(0x7fff_fffe));
    // A count above the limit, written by the peer: still refused.
    st.store(st_alloc(3, 0x7fff_ffff), Ordering::Relaxed);
    assert_eq!(a.retain(x, 3), Err(BlockError::RefcountOverflow));
    assert_eq!(a.info(x).unwrap().refcount, 0x7fff_ffff);
}

/// Carving a span for a small class writes the state words of exactly that class's blocks and
/// nothing past them: every block of a fresh span reads as the zeroes of the fresh region, for
/// every class (for 16-byte blocks in 4 KiB spans the state array ends exactly where block 0
/// begins, so one state word too many lands in the block just handed out).
#[test]
fn carving_writes_no_byte_of_any_block() {
    for c in 0..NUM_CLASSES {
        let info = class_info(c, SHIFT);
        if info.count == 0 {
            continue;
        }
        let a = arena(64 << 10);
        let first = a.alloc(info.block as usize, 1).unwrap();
        assert!(check(&a, first, info.block, 0), "class {c}: block 0");
        for i in 1..info.count {
            let x = a.alloc(info.block as usize, 1).unwrap();
            assert!(check(&a, x, info.block, 0), "class {c}: block {i}");
        }
    }
}

/// A request of exactly the largest small block is served by its class where the span holds one,
/// not by a run of whole spans.
#[test]
fn the_largest_small_block_comes_from_its_class() {
    let shift = 17;
    let a = Arena::new_owned(1 << 20, shift).unwrap();
    let c = NUM_CLASSES - 1;
    let info = class_info(c, shift);
    assert_eq!((info.block, info.count), (MAX_SMALL_BLOCK, 1));
    let x = a.alloc(MAX_SMALL_BLOCK as usize, 1).unwrap();
    assert_eq!(a.info(x).unwrap().capacity, MAX_SMALL_BLOCK);
    assert_eq!(a.stats().classes[c].blocks_in_use, 1);
    assert_eq!(a.stats().large_blocks_in_use, 0);
    // One byte more takes a one-span run.
    let y = a.alloc(MAX_SMALL_BLOCK as usize + 1, 1).unwrap();
    assert_eq!(a.info(y).unwrap().capacity, 1 << shift);
}

/// The region's layout as documented in `layout`: the first span of a run carries
/// `KIND_LARGE | order`, every later span `KIND_CONT`, and spans past the bump stay unused.
#[test]
fn large_runs_mark_their_later_spans() {
    let a = arena(64 << 10);
    let r = a.alloc(3 * 4096 + 1, 1).unwrap(); // four spans, order 2
    let span = (r.get() - a.data_off) >> SHIFT;
    assert_eq!(
        a.kind_word(span).load(Ordering::Relaxed),
        layout::KIND_LARGE | 2
    );
    for s in span + 1..span + 4 {
        assert_eq!(
            a.kind_word(s).load(Ordering::Relaxed),
            layout::KIND_CONT,
            "span {s}"
        );
    }
    assert_eq!(
        a.kind_word(span + 4).load(Ordering::Relaxed),
        layout::KIND_UNUSED
    );
}
