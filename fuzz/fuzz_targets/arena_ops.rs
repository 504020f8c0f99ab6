//! Arena operation sequences against a model: live blocks never overlap, their contents survive
//! other operations, a freed block is reusable at once, errors match the model and the usage
//! counters are exact after every step.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use flowipc_core::arena::{AllocError, Arena, ArenaCache, BlockError, Offset};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc { size: u16, align_log: u8 },
    AllocLarge { spans: u8 },
    Free { pick: u16 },
    FreeRaw { off: u32 },
    Retain { pick: u16 },
    Release { pick: u16 },
    CacheAlloc { size: u16, align_log: u8 },
    CacheFree { pick: u16 },
    CacheFlush,
}

#[derive(Arbitrary, Debug)]
struct Input {
    shift: u8,
    spans: u8,
    ops: Vec<Op>,
}

struct Live {
    cap: u64,
    len: u64,
    fill: u8,
    gen: u32,
    refs: u32,
}

fn bytes(a: &Arena, off: u64, len: u64) -> &mut [u8] {
    let p = a
        .payload_ptr(Offset::new(off), len)
        .expect("live block inside the region");
    // SAFETY: single-threaded; the model guarantees the block is live and owned by this run.
    unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len as usize) }
}

fn pick(live: &BTreeMap<u64, Live>, i: u16) -> Option<u64> {
    (!live.is_empty()).then(|| *live.keys().nth(usize::from(i) % live.len()).unwrap())
}

fuzz_target!(|input: Input| {
    let shift = 8 + u32::from(input.shift % 7);
    let len = ((usize::from(input.spans % 32) + 2) << shift) + 4096;
    let a = Arena::new_owned(len, shift).expect("valid geometry");
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    let mut fill = 0u8;
    // A per-thread cache in front of the same arena: its blocks count as free.
    let mut cache = ArenaCache::new(&a);
    let check_stats = |a: &Arena, live: &BTreeMap<u64, Live>| {
        let st = a.stats();
        assert_eq!(st.blocks_in_use(), live.len() as u64);
        assert_eq!(st.bytes_in_use(), live.values().map(|l| l.cap).sum::<u64>());
    };
    for op in input.ops.iter().take(2000) {
        match *op {
            Op::Alloc { .. } | Op::AllocLarge { .. } | Op::CacheAlloc { .. } => {
                let (size, align) = match *op {
                    Op::Alloc { size, align_log } | Op::CacheAlloc { size, align_log } => {
                        (usize::from(size), 1usize << (align_log % 13))
                    }
                    Op::AllocLarge { spans, .. } => ((usize::from(spans % 8) + 1) << shift, 16),
                    _ => unreachable!(),
                };
                let r = match op {
                    Op::CacheAlloc { .. } => cache.alloc(size, align),
                    _ => a.alloc(size, align),
                };
                match r {
                    Ok(off) => {
                        let o = off.get();
                        assert_eq!(o % align as u64, 0);
                        let info = a.info(off).unwrap();
                        assert!(info.capacity >= size.max(1) as u64);
                        assert_eq!(info.refcount, 1);
                        if let Some((&s, l)) = live.range(..=o).next_back() {
                            assert!(s + l.cap <= o, "overlaps block at {s}");
                        }
                        if let Some((&s, _)) = live.range(o..).next() {
                            assert!(o + info.capacity <= s, "overlaps block at {s}");
                        }
                        fill = fill.wrapping_add(1);
                        let n = (size as u64).min(4096);
                        bytes(&a, o, n).fill(fill);
                        live.insert(
                            o,
                            Live {
                                cap: info.capacity,
                                len: n,
                                fill,
                                gen: info.generation,
                                refs: 1,
                            },
                        );
                    }
                    Err(AllocError::OutOfMemory) => {}
                    Err(AllocError::BadAlign) => assert!(align > (1 << shift) || align > 4096),
                    Err(AllocError::TooLarge) => {
                        let spans = (size as u64).div_ceil(1 << shift).next_power_of_two();
                        assert!(spans > a.stats().spans_total);
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Free { pick: i } | Op::CacheFree { pick: i } => {
                let Some(o) = pick(&live, i) else { continue };
                let l = live.remove(&o).unwrap();
                assert!(
                    bytes(&a, o, l.len).iter().all(|&b| b == l.fill),
                    "contents clobbered"
                );
                let cached = matches!(op, Op::CacheFree { .. });
                if cached {
                    cache.free(Offset::new(o)).unwrap();
                } else {
                    a.free(Offset::new(o)).unwrap();
                }
                assert_eq!(a.free(Offset::new(o)), Err(BlockError::DoubleFree));
                assert_eq!(cache.free(Offset::new(o)), Err(BlockError::DoubleFree));
                check_stats(&a, &live);
                // Freed memory is reusable at once: the lists and the cache are LIFO.
                let again = if cached {
                    cache.alloc(l.cap as usize, 1)
                } else {
                    a.alloc(l.cap as usize, 1)
                };
                let again = again.unwrap();
                assert_eq!(again.get(), o);
                assert_eq!(a.info(again).unwrap().generation, l.gen.wrapping_add(1));
                a.free(again).unwrap();
            }
            Op::CacheFlush => cache.flush_all(),
            Op::FreeRaw { off } => {
                let o = u64::from(off);
                if live.contains_key(&o) {
                    continue;
                }
                assert!(
                    a.free(Offset::new(o)).is_err(),
                    "freed a block nobody holds"
                );
            }
            Op::Retain { pick: i } => {
                let Some(o) = pick(&live, i) else { continue };
                let l = live.get_mut(&o).unwrap();
                l.refs += 1;
                assert_eq!(a.retain(Offset::new(o), l.gen), Ok(l.refs));
                assert_eq!(
                    a.retain(Offset::new(o), l.gen.wrapping_add(1)),
                    Err(BlockError::StaleGeneration)
                );
            }
            Op::Release { pick: i } => {
                let Some(o) = pick(&live, i) else { continue };
                let l = live.get_mut(&o).unwrap();
                l.refs -= 1;
                let freed = a.release(Offset::new(o), l.gen).unwrap();
                assert_eq!(freed, l.refs == 0);
                if freed {
                    live.remove(&o);
                }
            }
        }
        check_stats(&a, &live);
    }
    drop(cache);
    for (o, l) in std::mem::take(&mut live) {
        assert!(
            bytes(&a, o, l.len).iter().all(|&b| b == l.fill),
            "contents clobbered"
        );
        a.free(Offset::new(o)).unwrap();
    }
    check_stats(&a, &live);
});
