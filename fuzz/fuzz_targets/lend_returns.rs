//! A hostile borrower's return ring: frames of any bytes, or batches of handles (valid, forged,
//! repeated, of other pools) pushed where a borrower gives lent objects back, drained by the
//! owner (`LendPool::drain_returns`), as a zero-copy sender does before every send.
//!
//! Checked against a model of what was lent: the owner releases a reference only for a handle
//! the borrower holds, once per lend (so `lent_to` never goes below what the model still has out
//! and objects the owner keeps stay readable); garbage only counts as bogus; at the end, with the
//! owner's objects dropped and the borrower reclaimed, the pool is empty.
#![no_main]

use arbitrary::Arbitrary;
use flowipc::arena::{ArenaHandle, BorrowedPool, LendPool};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Item {
    /// Object `i`'s handle as lent.
    Lent(u8),
    /// Object `i`'s handle with a changed generation or offset.
    Forged { i: u8, gen: u32, off: i16 },
    /// Any 32 bytes.
    Raw([u8; 32]),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The owner lends object `i`.
    Lend(u8),
    /// The borrower pushes one frame of handles.
    Batch(Vec<Item>),
    /// The borrower pushes a frame of any bytes.
    Bytes(Vec<u8>),
    /// The owner drains.
    Drain,
    /// The owner drops its own reference to object `i` (a lent object stays alive).
    DropOwn(u8),
}

const OBJECTS: usize = 6;

fuzz_target!(|ops: Vec<Op>| {
    let pool = LendPool::create(1 << 20).expect("pool");
    let (b, setup) = pool.add_borrower().expect("borrower");
    let mut borrower = BorrowedPool::open(setup).expect("map");
    let mut objs: Vec<Option<_>> = (0..OBJECTS)
        .map(|i| Some(pool.alloc_bytes(&[i as u8; 40]).expect("alloc")))
        .collect();
    let handles: Vec<ArenaHandle> = objs.iter().map(|o| o.as_ref().unwrap().handle()).collect();
    // What the borrower holds in the model, per object.
    let mut held = [0u32; OBJECTS];
    for op in ops.into_iter().take(200) {
        match op {
            Op::Lend(i) => {
                let i = i as usize % OBJECTS;
                if let Some(o) = &objs[i] {
                    pool.lend(o, b).expect("lend");
                    held[i] += 1;
                }
            }
            Op::Batch(items) => {
                let mut frame = Vec::new();
                for item in items.iter().take(16) {
                    let h = match *item {
                        Item::Lent(i) => {
                            let i = i as usize % OBJECTS;
                            // A return of something held ends that lend in the model.
                            if held[i] > 0 {
                                held[i] -= 1;
                            }
                            handles[i].to_bytes()
                        }
                        Item::Forged { i, gen, off } => ArenaHandle {
                            generation: handles[i as usize % OBJECTS]
                                .generation
                                .wrapping_add(gen.max(1)),
                            offset: handles[i as usize % OBJECTS]
                                .offset
                                .wrapping_add(off as i64 as u64),
                            ..handles[i as usize % OBJECTS]
                        }
                        .to_bytes(),
                        Item::Raw(bytes) => bytes,
                    };
                    frame.extend_from_slice(&h);
                }
                if !frame.is_empty() {
                    let _ = borrower.return_ring().try_send(&frame);
                }
            }
            Op::Bytes(bytes) => {
                if !bytes.is_empty() {
                    let _ = borrower
                        .return_ring()
                        .try_send(&bytes[..bytes.len().min(4096)]);
                }
            }
            Op::Drain => {
                pool.drain_returns(b).expect("drain");
                let out: u32 = held.iter().sum();
                // A forged or raw handle can name a lent object's (offset, generation) exactly
                // (Raw bytes or a forged offset landing on another object): then the owner's
                // count may be below the model's, never above.
                assert!(
                    pool.lent_to(b) <= out as usize,
                    "owner records {} lent, the model at most {out}",
                    pool.lent_to(b)
                );
            }
            Op::DropOwn(i) => {
                objs[i as usize % OBJECTS] = None;
            }
        }
        // Objects the owner keeps are alive and intact whatever came back.
        for (i, o) in objs.iter().enumerate() {
            if let Some(o) = o {
                assert_eq!(o.to_vec().expect("owner's object"), vec![i as u8; 40]);
            }
        }
    }
    drop(objs);
    pool.reclaim(b).expect("reclaim");
    assert_eq!(pool.usage().objects, 0, "leaked: {:?}", pool.usage());
});
