//! Hostile native structures: real vectors, strings and maps built in a lend pool, their bytes
//! copied and then overwritten at fuzz-chosen places (offsets, lengths and generations of links,
//! map headers, bucket heads and chain indices), and forged links of any value, all read through
//! the borrower's checked views (`flowipc::native`). Errors are fine; a panic, an out-of-bounds
//! access (ASan), a hang (a chain walk that does not stop) or an allocation the bytes chose the size
//! of beyond the pool is a bug. Every block is freed after each input: the pool's usage must come
//! back to its baseline.
#![no_main]

use std::cell::RefCell;

use arbitrary::Arbitrary;
use flowipc::arena::{BorrowedPool, LendPool, PoolUsage};
use flowipc::native::{
    BoxRef, MapRef, NativeError, NativeSource, ShmAlloc, ShmHashMap, ShmNode, ShmString, ShmVec,
    StrLink, StrRef, VecLink, VecRef,
};
use flowipc_core::arena::BlockLink;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Shape {
    /// A `ShmVec<VecLink<u64>>` of `n` vectors.
    Links { n: u8 },
    /// A `ShmHashMap<u64, u64>` of `n` entries.
    Map { n: u16 },
    /// A `ShmHashMap<StrLink, u64>` of `n` string keys.
    StrMap { n: u8 },
    /// Raw bytes.
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Poke {
    at: u16,
    bytes: [u8; 4],
}

#[derive(Arbitrary, Debug)]
enum Probe {
    Key(u64),
    Str(u8),
    Index(u16),
    All,
}

#[derive(Arbitrary, Debug)]
struct Input {
    shape: Shape,
    pokes: Vec<Poke>,
    /// Forged links read as vectors: `(offset delta from the structure, len, generation xor)`.
    forged: Vec<(i32, u32, u32)>,
    probes: Vec<Probe>,
}

struct Pools {
    owner: LendPool,
    reader: BorrowedPool,
    base: PoolUsage,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new({
        let owner = LendPool::create(8 << 20).unwrap();
        let (_, setup) = owner.add_borrower().unwrap();
        let reader = BorrowedPool::open(setup).unwrap();
        let base = owner.usage();
        Pools { owner, reader, base }
    });
}

fn key(i: u8) -> String {
    format!("k{i}")
}

/// Reads everything a probe reaches; errors are fine, panics are not.
fn read_all(
    src: &dyn NativeSource,
    shape: &Shape,
    h: &flowipc::arena::ArenaHandle,
    probes: &[Probe],
) {
    let _ = VecRef::<u64>::open(src, h).and_then(|v| v.to_vec());
    let _ = StrRef::open(src, h).and_then(|s| s.to_string());
    let _ = BoxRef::<[u64; 3]>::open(src, h).and_then(|b| b.get());
    match shape {
        Shape::Links { .. } | Shape::Bytes(_) => {
            if let Ok(v) = VecRef::<VecLink<u64>>::open(src, h) {
                for p in probes {
                    let i = match p {
                        Probe::Index(i) => *i as usize,
                        _ => continue,
                    };
                    if let Ok(l) = v.get(i) {
                        let _ = l.open(src).and_then(|inner| inner.to_vec());
                    }
                }
                for l in v.iter().take(64).flatten() {
                    let _ = l.open(src).and_then(|inner| inner.get(0));
                }
            }
        }
        Shape::Map { .. } => {
            if let Ok(m) = MapRef::<u64, u64>::open(src, h) {
                for p in probes {
                    let _ = match p {
                        Probe::Key(k) => m.get(k).map(drop),
                        Probe::Index(i) => m.key_at(*i as usize).map(drop),
                        Probe::All => m.iter().take(256).try_for_each(|e| e.map(drop)),
                        Probe::Str(_) => Ok(()),
                    };
                }
            }
        }
        Shape::StrMap { .. } => {
            if let Ok(m) = MapRef::<StrLink, u64>::open(src, h) {
                for p in probes {
                    let r: Result<(), NativeError> = match p {
                        Probe::Str(i) => m.get_str(&key(*i)).map(drop),
                        Probe::Index(i) => m
                            .key_at(*i as usize)
                            .and_then(|k| k.open(src))
                            .and_then(|s| s.to_string())
                            .map(drop),
                        _ => Ok(()),
                    };
                    let _ = r;
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    POOLS.with(|p| {
        let p = &mut *p.borrow_mut();
        {
            let alloc = ShmAlloc::from(&p.owner);
            // The real structure (kept alive while its forged copy is read, so links into its
            // children name live blocks).
            let (real, bytes): (Box<dyn std::any::Any>, Vec<u8>) = match &input.shape {
                Shape::Links { n } => {
                    let mut v: ShmVec<VecLink<u64>> = ShmVec::new_in(&alloc).unwrap();
                    for i in 0..(*n % 32) as u64 {
                        let l = v.adopt(ShmVec::from_slice_in(&alloc, &[i; 3]).unwrap());
                        v.push(l).unwrap();
                    }
                    let b = bytes_of(&p.reader, &v.handle());
                    (Box::new(v), b)
                }
                Shape::Map { n } => {
                    let mut m: ShmHashMap<u64, u64> = ShmHashMap::new_in(&alloc).unwrap();
                    for i in 0..(*n % 512) as u64 {
                        m.insert(i.wrapping_mul(0x9e37_79b9), i).unwrap();
                    }
                    let b = bytes_of(&p.reader, &m.handle());
                    (Box::new(m), b)
                }
                Shape::StrMap { n } => {
                    let mut m: ShmHashMap<StrLink, u64> = ShmHashMap::new_in(&alloc).unwrap();
                    for i in 0..*n % 64 {
                        m.insert_str(&key(i), u64::from(i)).unwrap();
                    }
                    let b = bytes_of(&p.reader, &m.handle());
                    (Box::new(m), b)
                }
                Shape::Bytes(b) => (Box::new(()), b.clone()),
            };
            let mut bytes = bytes;
            for poke in &input.pokes {
                if bytes.len() >= 4 {
                    let at = (poke.at as usize) % (bytes.len() - 3);
                    bytes[at..at + 4].copy_from_slice(&poke.bytes);
                }
            }
            let copy = ShmVec::from_slice_in(&alloc, &bytes).unwrap();
            read_all(&p.reader, &input.shape, &copy.handle(), &input.probes);
            // Forged links around the copy.
            let at = copy.link().block_link();
            for &(delta, len, gen) in input.forged.iter().take(16) {
                let l = BlockLink {
                    offset: at.offset.wrapping_add_signed(i64::from(delta)),
                    len: u64::from(len),
                    generation: at.generation ^ gen,
                    reserved: 0,
                };
                let h = l.to_handle(p.reader.pool_id());
                read_all(&p.reader, &input.shape, &h, &input.probes);
            }
            let s = ShmString::from_str_in(&alloc, "x").unwrap();
            let _ = StrRef::open(&p.reader, &s.handle()).and_then(|s| s.to_string());
            drop((real, copy, s));
        }
        assert_eq!(p.owner.usage(), p.base, "every block freed");
    });
});

fn bytes_of(reader: &BorrowedPool, h: &flowipc::arena::ArenaHandle) -> Vec<u8> {
    VecRef::<u8>::open(reader, h).unwrap().to_vec().unwrap()
}
