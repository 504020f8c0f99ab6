//! loom models of the arena allocator: two threads stand for two processes sharing one region.
//!
//! Run with `RUSTFLAGS="--cfg flowipc_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p flowipc-loom-tests
//! --release --test arena`.
#![cfg(flowipc_loom)]

use std::collections::HashSet;
use std::sync::Arc;

use flowipc_core::arena::{Arena, BlockError, Offset};
use flowipc_core::sync::{AtomicU64, Ordering};
use flowipc_loom_tests::{explore, Tally};
use loom::thread;

/// 256-byte spans (10 blocks of 16 B per span), two spans: the smallest region loom can afford.
const SHIFT: u32 = 8;
const LEN: usize = 1280;

fn arena() -> Arc<Arena> {
    Arc::new(Arena::new_owned(LEN, SHIFT).expect("region fits two spans"))
}

/// Two threads allocate and free concurrently from the same class: they never get the same block
/// at the same time, and the lists and counters are consistent afterwards.
#[test]
fn alloc_free_race() {
    explore("alloc_free_race", || {
        let a = arena();
        // Carve the span up front so that both threads hit the free list, not the bump pointer.
        let warm = a.alloc(16, 1).unwrap();
        a.free(warm).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || {
                let x = a.alloc(16, 1).unwrap();
                a.free(x).unwrap();
                a.alloc(16, 1).unwrap()
            })
        };
        let y = a.alloc(16, 1).unwrap();
        let x = t.join().unwrap();
        assert_ne!(x, y, "one block handed to two owners");
        assert_eq!(a.stats().blocks_in_use(), 2);
        a.free(x).unwrap();
        a.free(y).unwrap();
        // Every block of the span is still reachable exactly once.
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), 10);
    });
}

/// The ABA scenario of a Treiber stack: thread 1 reads head A (next B) and is preempted; thread 2
/// pops A and B and pushes A back, so the head is A again but its next is no longer B. The tag in
/// the head makes thread 1's CAS fail, so B is never handed out while thread 2 owns it.
#[test]
fn tagged_head_aba() {
    explore("tagged_head_aba", || {
        let a = arena();
        // Free list: A -> B -> rest of the span.
        let x = a.alloc(16, 1).unwrap();
        let y = a.alloc(16, 1).unwrap();
        a.free(y).unwrap();
        a.free(x).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || a.alloc(16, 1).unwrap())
        };
        let p = a.alloc(16, 1).unwrap();
        let q = a.alloc(16, 1).unwrap();
        a.free(p).unwrap();
        let r = t.join().unwrap();
        // Thread 2 still owns q; thread 1's block must differ from it.
        assert_ne!(r, q, "ABA: block handed out twice");
        a.free(q).unwrap();
        a.free(r).unwrap();
        assert_eq!(a.stats().blocks_in_use(), 0);
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
    });
}

/// Two frees of one block race: exactly one wins, the loser gets an error, the list stays sound.
#[test]
fn double_free_race() {
    explore("double_free_race", || {
        let a = arena();
        let x = a.alloc(32, 1).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || a.free(x))
        };
        let mine = a.free(x);
        let theirs = t.join().unwrap();
        assert!(mine.is_ok() ^ theirs.is_ok(), "{mine:?} {theirs:?}");
        assert_eq!(mine.err().or(theirs.err()), Some(BlockError::DoubleFree));
        let p = a.alloc(32, 1).unwrap();
        let q = a.alloc(32, 1).unwrap();
        assert_ne!(p, q);
    });
}

/// Carving: both threads find the list empty and race on the bump pointer; they get distinct spans
/// (or one of them the other's pushed blocks) and never the same block.
#[test]
fn carve_race() {
    explore("carve_race", || {
        let a = arena();
        let t = {
            let a = a.clone();
            thread::spawn(move || a.alloc(16, 1).unwrap())
        };
        let y = a.alloc(16, 1).unwrap();
        let x = t.join().unwrap();
        assert_ne!(x, y);
        assert_eq!(a.stats().classes[0].blocks_in_use, 2);
    });
}

/// Reference-count release: the object is held by two processes; both drop their reference at
/// once. Exactly one release frees it, and the block is then reusable exactly once.
#[test]
fn refcount_last_release_frees_once() {
    explore("refcount_last_release_frees_once", || {
        let a = arena();
        let x = a.alloc(64, 1).unwrap();
        let g = a.info(x).unwrap().generation;
        assert_eq!(a.retain(x, g), Ok(2));
        let t = {
            let a = a.clone();
            thread::spawn(move || a.release(x, g).unwrap())
        };
        let mine = a.release(x, g).unwrap();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "freed {} times", mine as u8 + theirs as u8);
        assert_eq!(a.stats().blocks_in_use(), 0);
        assert_eq!(a.release(x, g), Err(BlockError::StaleGeneration));
        let y = a.alloc(64, 1).unwrap();
        assert_eq!(y, x);
        assert_ne!(a.alloc(64, 1).unwrap(), x);
    });
}

/// A lent block is given back through a return ring while the owner drops its own reference on
/// another thread: the real pieces of `safe`'s lend protocol (`LendPool::lend` retains,
/// `BorrowedPool::release` pushes the handle's bytes on a ring, `LendPool::drain_returns` pops
/// them and releases, `ArenaObject`'s drop releases), minus the owner's bookkeeping table, which is
/// single-threaded. The borrower's check of its handle always succeeds while it holds its
/// reference, the block is freed exactly once, by whichever release comes last (both happen), and
/// the borrower's handle is stale afterwards.
#[test]
fn lent_handle_returned_through_ring() {
    use flowipc_core::arena::ArenaHandle;
    use flowipc_core::ring::{PopError, Ring};
    use flowipc_core::wait::NoopNotifier;
    const OUTCOMES: &[&str] = &["freed by the drain", "freed by the owner's drop"];
    let tally = Tally::new(OUTCOMES);
    let t = tally.clone();
    let n = explore("lent_handle_returned_through_ring", move || {
        let a = arena();
        let x = a.alloc(64, 1).unwrap();
        let g = a.info(x).unwrap().generation;
        // `lend`: one reference for the borrower.
        assert_eq!(a.retain(x, g), Ok(2));
        let h = ArenaHandle {
            pool_id: 7,
            offset: x.get(),
            len: 64,
            generation: g,
            reserved: 0,
        };
        // Return ring: 128 bytes, largest payload 56, room for one 40-byte handle frame.
        let (mut tx, mut rx) = Ring::with_capacity(128);
        let borrower = {
            let a = a.clone();
            thread::spawn(move || {
                // The borrower reads the block, then gives it back.
                let info = a.check_handle(&h).expect("lent block live while lent");
                assert_eq!(info.generation, g);
                tx.try_push(&h.to_bytes(), &NoopNotifier).unwrap();
            })
        };
        let owner_drop = {
            let a = a.clone();
            thread::spawn(move || a.release(x, g).unwrap())
        };
        // `drain_returns`: pop the handle (waiting for the borrower to push it), decode, release.
        let mut buf = [0u8; ArenaHandle::ENCODED_LEN];
        let drained = loop {
            match rx.try_pop(&mut buf, &NoopNotifier) {
                Ok(info) => {
                    assert_eq!(info.len, ArenaHandle::ENCODED_LEN);
                    let back = ArenaHandle::from_bytes(&buf).unwrap();
                    assert_eq!(back, h);
                    break a
                        .release(Offset::new(back.offset), back.generation)
                        .unwrap();
                }
                Err(PopError::Empty) => thread::yield_now(),
                Err(e) => panic!("return ring: {e}"),
            }
        };
        let dropped = owner_drop.join().unwrap();
        borrower.join().unwrap();
        assert!(
            drained ^ dropped,
            "freed {} times",
            drained as u8 + dropped as u8
        );
        t.hit(if drained { 0 } else { 1 });
        assert_eq!(a.stats().blocks_in_use(), 0);
        assert_eq!(a.check_handle(&h), Err(BlockError::StaleGeneration));
        let y = a.alloc(64, 1).unwrap();
        assert_eq!(y, x);
        assert_eq!(a.info(y).unwrap().generation, g.wrapping_add(1));
    });
    tally.assert_all_seen("lent_handle_returned_through_ring", n);
}

/// A holder takes a new reference (`retain`, as `LendPool::lend` does) while another holder drops
/// its own: the retain sees the count before or after the drop (both happen), no release frees
/// the block early, and the last of the three releases frees it exactly once.
#[test]
fn retain_races_release_of_another_holder() {
    const OUTCOMES: &[&str] = &["retain before the peer's release", "retain after it"];
    let tally = Tally::new(OUTCOMES);
    let t = tally.clone();
    let n = explore("retain_races_release_of_another_holder", move || {
        let a = arena();
        let x = a.alloc(64, 1).unwrap();
        let g = a.info(x).unwrap().generation;
        assert_eq!(a.retain(x, g), Ok(2));
        let peer = {
            let a = a.clone();
            thread::spawn(move || a.release(x, g).unwrap())
        };
        let count = a.retain(x, g).unwrap();
        assert!(count == 2 || count == 3, "retain returned {count}");
        let first = a.release(x, g).unwrap();
        assert!(!first, "the lent reference still holds the block");
        let peer_freed = peer.join().unwrap();
        let last = a.release(x, g).unwrap();
        assert!(
            peer_freed ^ last,
            "freed {} times",
            peer_freed as u8 + last as u8
        );
        t.hit(if count == 3 { 0 } else { 1 });
        assert_eq!(a.stats().blocks_in_use(), 0);
        assert_eq!(a.retain(x, g), Err(BlockError::StaleGeneration));
    });
    tally.assert_all_seen("retain_races_release_of_another_holder", n);
}

/// A late `retain` with a handle whose last reference is being dropped (a peer retaining what it
/// no longer holds): it either lands first and keeps the block alive/// (the later of the two releases frees it), or it finds the block freed and fails with
/// `StaleGeneration`; it never revives a freed block.
/// Both outcomes happen, and the block is freed exactly once and reusable afterwards.
#[test]
fn late_retain_races_last_release() {
    const OUTCOMES: &[&str] = &["retain won", "last release won, retain stale"];
    let tally = Tally::new(OUTCOMES);
    let t = tally.clone();
    let n = explore("late_retain_races_last_release", move || {
        let a = arena();
        let x = a.alloc(64, 1).unwrap();
        let g = a.info(x).unwrap().generation;
        let late = {
            let a = a.clone();
            thread::spawn(move || match a.retain(x, g) {
                Ok(count) => {
                    assert_eq!(count, 2);
                    Some(a.release(x, g).unwrap())
                }
                Err(e) => {
                    assert_eq!(e, BlockError::StaleGeneration);
                    None
                }
            })
        };
        let mine = a.release(x, g).unwrap();
        let theirs = late.join().unwrap();
        match theirs {
            Some(freed) => {
                assert!(freed ^ mine, "freed {} times", freed as u8 + mine as u8);
                t.hit(0);
            }
            None => {
                assert!(mine, "stale retain but the last release did not free");
                t.hit(1);
            }
        }
        assert_eq!(a.stats().blocks_in_use(), 0);
        let y = a.alloc(64, 1).unwrap();
        assert_eq!(y, x);
        assert_eq!(a.info(y).unwrap().generation, g.wrapping_add(1));
        assert_ne!(a.alloc(64, 1).unwrap(), x, "block on the free list twice");
    });
    tally.assert_all_seen("late_retain_races_last_release", n);
}

/// The header publish at init: one process initialises the region (`Arena::init`'s header write,
/// ending in the Release store of the magic) while another attaches (`Arena::attach`'s check:
/// magic, Acquire fence, version and geometry). The attach either finds no magic yet or a
/// complete, consistent header and a usable arena; never a torn one (`BadVersion`, `Corrupt`).
/// Both outcomes happen.
#[test]
fn header_publish_at_init() {
    use flowipc_core::arena::{InitError, ModelRegion};
    const OUTCOMES: &[&str] = &[
        "attached to the published header",
        "magic not yet published",
    ];
    let tally = Tally::new(OUTCOMES);
    let t = tally.clone();
    let n = explore("header_publish_at_init", move || {
        let region = ModelRegion::new(LEN);
        let creator = {
            let region = region.clone();
            thread::spawn(move || {
                let a = Arena::init_model(&region, SHIFT).unwrap();
                a.alloc(16, 1).unwrap()
            })
        };
        let attached = Arena::attach_model(&region);
        let theirs = creator.join().unwrap();
        match attached {
            Ok(b) => {
                t.hit(0);
                assert_eq!(b.span_size(), 1 << SHIFT);
                let mine = b.alloc(16, 1).unwrap();
                assert_ne!(mine, theirs, "one block handed to both processes");
                assert_eq!(b.stats().blocks_in_use(), 2);
            }
            Err(e) => {
                assert_eq!(e, InitError::BadMagic, "attach saw a torn header");
                t.hit(1);
                let b = Arena::attach_model(&region).expect("header published after join");
                assert_eq!(b.stats().blocks_in_use(), 1);
            }
        }
    });
    tally.assert_all_seen("header_publish_at_init", n);
}

/// A large run freed by one thread while the other allocates the same order. The region holds
/// one order-1 run, so the allocation either runs after the free and reuses the run, or before it
/// and finds none (`OutOfMemory`); both happen, and the counters agree with the outcome.
#[test]
fn large_free_alloc_race() {
    const OUTCOMES: &[&str] = &["reused the freed run", "out of memory before the free"];
    let tally = Tally::new(OUTCOMES);
    let t = tally.clone();
    let n = explore("large_free_alloc_race", move || {
        let a = arena();
        let x = a.alloc(300, 1).unwrap();
        let freer = {
            let a = a.clone();
            thread::spawn(move || a.free(x).unwrap())
        };
        let allocator = {
            let a = a.clone();
            thread::spawn(move || a.alloc(300, 1))
        };
        freer.join().unwrap();
        let y = allocator.join().unwrap();
        match y {
            Ok(y) => {
                assert_eq!(y, x, "the only order-1 run is x");
                t.hit(0);
            }
            Err(e) => {
                assert_eq!(e, flowipc_core::arena::AllocError::OutOfMemory);
                t.hit(1);
            }
        }
        assert_eq!(a.stats().large_blocks_in_use, u64::from(y.is_ok()));
    });
    tally.assert_all_seen("large_free_alloc_race", n);
}

/// Longer histories: each thread allocates two blocks and frees them in the other order, twice,
/// on a warm free list. No block is ever owned twice (checked by writing the owner into a side
/// table keyed by offset), and the list holds every block exactly once at the end.
#[test]
fn two_cycles_each() {
    explore("two_cycles_each", || {
        let a = arena();
        let warm = a.alloc(16, 1).unwrap();
        a.free(warm).unwrap();
        let owners: Arc<Vec<AtomicU64>> =
            Arc::new((0..LEN / 16).map(|_| AtomicU64::new(0)).collect());
        let work = |a: Arc<Arena>, owners: Arc<Vec<AtomicU64>>, me: u64| {
            for _ in 0..2 {
                let x = a.alloc(16, 1).unwrap();
                let y = a.alloc(16, 1).unwrap();
                for o in [x, y] {
                    let prev = owners[o.get() as usize / 16].swap(me, Ordering::Relaxed);
                    assert_eq!(prev, 0, "block owned twice");
                }
                for o in [y, x] {
                    owners[o.get() as usize / 16].store(0, Ordering::Relaxed);
                    a.free(o).unwrap();
                }
            }
        };
        let t = {
            let (a, owners) = (a.clone(), owners.clone());
            thread::spawn(move || work(a, owners, 1))
        };
        work(a.clone(), owners, 2);
        t.join().unwrap();
        assert_eq!(a.stats().blocks_in_use(), 0);
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
    });
}

/// A thread with a cache (chain refill with one CAS, chain flush on drop) races a thread using the
/// shared list directly: no block is owned twice (a side table records the owner of each block
/// while it is held), and every block is back in the list at the end.
#[test]
fn cache_refill_flush_vs_plain() {
    use flowipc_core::arena::ArenaCache;
    explore("cache_refill_flush_vs_plain", || {
        let a = arena();
        let warm = a.alloc(16, 1).unwrap();
        a.free(warm).unwrap();
        let owners: Arc<Vec<AtomicU64>> =
            Arc::new((0..LEN / 16).map(|_| AtomicU64::new(0)).collect());
        let take = |owners: &[AtomicU64], o: Offset, me: u64| {
            assert_eq!(
                owners[o.get() as usize / 16].swap(me, Ordering::Relaxed),
                0,
                "block owned twice"
            );
        };
        let give = |owners: &[AtomicU64], o: Offset| {
            owners[o.get() as usize / 16].store(0, Ordering::Relaxed)
        };
        let t = {
            let (a, owners) = (a.clone(), owners.clone());
            thread::spawn(move || {
                let mut cache = ArenaCache::new(&a);
                let x = cache.alloc(16, 1).unwrap();
                take(&owners, x, 1);
                let y = cache.alloc(16, 1).unwrap();
                take(&owners, y, 1);
                give(&owners, x);
                cache.free(x).unwrap();
                give(&owners, y);
                cache.free(y).unwrap();
                // `cache` drops here: its blocks go back as one chain.
            })
        };
        let p = a.alloc(16, 1).unwrap();
        take(&owners, p, 2);
        let q = a.alloc(16, 1).unwrap();
        take(&owners, q, 2);
        give(&owners, p);
        a.free(p).unwrap();
        give(&owners, q);
        a.free(q).unwrap();
        t.join().unwrap();
        assert_eq!(a.stats().blocks_in_use(), 0);
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
    });
}

/// Two caches free the same block at once with `free_checked` (a CAS): exactly one succeeds, the
/// other reports `DoubleFree`, and the block is in the shared list once after both caches drop.
///
/// The plain `ArenaCache::free` (a load and a store) is not modelled racing a CAS on the same word:
/// loom 0.7 lets a store fall between the read and the write of a read-modify-write
/// (tokio-rs/loom#254), an execution no real machine has. Its races with `release` are exercised
/// with real threads in core's unit tests instead (`cache_free_races_release`).
#[test]
fn cache_checked_double_free_race() {
    use flowipc_core::arena::ArenaCache;
    explore("cache_checked_double_free_race", || {
        let a = arena();
        let x = a.alloc(16, 1).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || ArenaCache::new(&a).free_checked(x).is_ok())
        };
        let mine = ArenaCache::new(&a).free_checked(x);
        let theirs = t.join().unwrap();
        assert!(
            mine.is_ok() != theirs,
            "exactly one free succeeds: {mine:?} / {theirs}"
        );
        if let Err(e) = mine {
            assert_eq!(e, BlockError::DoubleFree);
        }
        assert_eq!(a.stats().blocks_in_use(), 0);
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
    });
}

/// Two caches each free and reuse their own blocks (the plain store path, no word shared by two
/// threads at once) while the free lists move under them (one cache takes the whole first span,
/// so the other carves the second): no block is handed out twice, a stale view of a list is never
/// taken for corruption, and all blocks are back at the end.
#[test]
fn cache_plain_free_own_blocks() {
    use flowipc_core::arena::ArenaCache;
    explore("cache_plain_free_own_blocks", || {
        let a = arena();
        let warm = a.alloc(16, 1).unwrap();
        a.free(warm).unwrap();
        let t = {
            let a = a.clone();
            thread::spawn(move || {
                let mut cache = ArenaCache::new(&a);
                let x = cache.alloc(16, 1).unwrap();
                cache.free(x).unwrap();
                assert_eq!(cache.free(x), Err(BlockError::DoubleFree));
                let y = cache.alloc(16, 1).unwrap();
                assert_eq!(y, x, "the cache reuses its block");
                cache.free(y).unwrap();
            })
        };
        let mut cache = ArenaCache::new(&a);
        let p = cache.alloc(16, 1).unwrap();
        cache.free(p).unwrap();
        // A plain free of a block this cache handed out goes to the shared list directly.
        let q = cache.alloc(16, 1).unwrap();
        assert_eq!(q, p);
        a.free(q).unwrap();
        drop(cache);
        t.join().unwrap();
        assert_eq!(a.stats().blocks_in_use(), 0);
        let all: Vec<Offset> = (0..10).map(|_| a.alloc(16, 1).unwrap()).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 10);
    });
}
