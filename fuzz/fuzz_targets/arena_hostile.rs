//! Hostile input for the arena: arbitrary region bytes (a fresh region overwritten at arbitrary
//! places, or a region that is nothing but fuzz bytes) followed by alloc/free/attach, and arbitrary
//! handle bytes. Errors are fine; a panic, an out-of-bounds access (ASan), a hang or a returned block
//! outside the region is a bug.
//!
//! The region is an allocation of exactly `LEN` bytes (no slack after it), and every block the
//! arena hands out is checked to lie inside it: its pointer is `base + offset`, and its first and
//! last bytes are read, so a block running past the end is an ASan report, not a silent read of
//! slack.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use flowipc_core::arena::{Arena, ArenaCache, ArenaHandle, Offset};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc { size: u32, align_log: u8 },
    Free { off: u32 },
    FreeLast,
    Retain { off: u32, gen: u32 },
    Release { off: u32, gen: u32 },
    Poke { at: u16, bytes: [u8; 8] },
    Handle { bytes: [u8; 32] },
    Reattach,
    CacheAlloc { size: u16 },
    CacheFreeLast,
    CacheFlush,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// `false`: a valid `init` first, then pokes; `true`: the region starts as fuzz bytes.
    raw: bool,
    shift: u8,
    fill: Vec<u8>,
    ops: Vec<Op>,
}

const LEN: usize = 64 << 10;

struct Region(NonNull<u8>, Layout);

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `fuzz_target!` below with this layout.
        unsafe { dealloc(self.0.as_ptr(), self.1) }
    }
}

impl Region {
    /// Asserts that the `len`-byte payload `arena` gives for `off` is `base + off` and lies inside
    /// the allocation, and touches its first and last byte (ASan checks the access).
    fn assert_block(&self, p: Option<NonNull<u8>>, off: Offset, len: u64, what: &str) {
        let p = p.unwrap_or_else(|| panic!("{what}: no payload pointer for {off:?}+{len}"));
        let start = self.0.as_ptr() as usize;
        assert_eq!(p.as_ptr() as usize, start + off.get() as usize, "{what}");
        assert!(
            off.get() + len.max(1) <= LEN as u64,
            "{what} outside the region"
        );
        // SAFETY: `off .. off + len` lies inside the `LEN`-byte allocation (asserted); the bytes
        // are read as plain `u8` (single-threaded, like `poke`).
        unsafe {
            std::ptr::read_volatile(p.as_ptr());
            std::ptr::read_volatile(p.as_ptr().add(len.max(1) as usize - 1));
        }
    }
}

fn poke(r: &Region, at: usize, bytes: &[u8]) {
    let at = at.min(LEN - bytes.len()) & !7;
    // SAFETY: in bounds; the fuzz target is single-threaded, so this write races with nothing.
    // (It stands for a peer writing the shared region; the arena reads only through atomics.)
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), r.0.as_ptr().add(at), bytes.len()) };
}

fuzz_target!(|input: Input| {
    let layout = Layout::from_size_align(LEN, 4096).unwrap();
    // SAFETY: non-zero size.
    let Some(base) = NonNull::new(unsafe { alloc_zeroed(layout) }) else {
        return;
    };
    let region = Region(base, layout);
    let shift = 8 + u32::from(input.shift % 7);
    let mut arena = if input.raw {
        for (i, chunk) in input.fill.chunks(8).enumerate().take(LEN / 8) {
            poke(&region, i * 8, chunk);
        }
        // SAFETY: `region` is 4096-aligned, LEN bytes, outlives the arena, and accessed otherwise
        // only by `poke` between arena calls.
        match unsafe { Arena::attach(base, LEN) } {
            Ok(a) => a,
            Err(_) => return,
        }
    } else {
        // SAFETY: as above.
        unsafe { Arena::init(base, LEN, shift) }.unwrap()
    };
    let mut last = None;
    for op in input.ops.iter().take(500) {
        match *op {
            Op::Alloc { size, align_log } => {
                if let Ok(off) = arena.alloc(size as usize % (LEN * 2), 1 << (align_log % 14)) {
                    let cap = arena.info(off).map(|i| i.capacity).unwrap_or(1);
                    assert!(off.get() + cap <= LEN as u64, "block outside the region");
                    region.assert_block(arena.payload_ptr(off, cap), off, cap, "block");
                    last = Some(off);
                }
            }
            Op::Free { off } => {
                let _ = arena.free(Offset::new(u64::from(off)));
            }
            Op::FreeLast => {
                if let Some(o) = last.take() {
                    let _ = arena.free(o);
                }
            }
            Op::Retain { off, gen } => {
                let _ = arena.retain(Offset::new(u64::from(off)), gen);
            }
            Op::Release { off, gen } => {
                let _ = arena.release(Offset::new(u64::from(off)), gen);
            }
            Op::Poke { at, bytes } => poke(&region, usize::from(at), &bytes),
            Op::Handle { bytes } => {
                if let Ok(h) = ArenaHandle::from_bytes(&bytes) {
                    assert_eq!(h.to_bytes(), bytes);
                    if let Ok(info) = arena.check_handle(&h) {
                        assert!(h.offset + h.len <= LEN as u64 && h.len <= info.capacity);
                        let off = Offset::new(h.offset);
                        region.assert_block(arena.payload_ptr(off, h.len), off, h.len, "handle");
                    }
                }
            }
            Op::CacheAlloc { .. } | Op::CacheFreeLast | Op::CacheFlush => {
                // A short-lived cache: refill walks chains the peer may have corrupted, and the
                // drop flushes back into them.
                let mut cache = ArenaCache::new(&arena);
                match *op {
                    Op::CacheAlloc { size } => {
                        if let Ok(off) = cache.alloc(usize::from(size), 16) {
                            let p = arena.payload_ptr(off, 16);
                            region.assert_block(p, off, 16, "cached block");
                            last = Some(off);
                        }
                    }
                    Op::CacheFreeLast => {
                        if let Some(o) = last.take() {
                            let _ = cache.free(o);
                        }
                    }
                    _ => cache.flush_all(),
                }
            }
            Op::Reattach => {
                drop(arena);
                // SAFETY: as above.
                match unsafe { Arena::attach(base, LEN) } {
                    Ok(a) => arena = a,
                    Err(_) => return,
                }
            }
        }
        let _ = arena.stats();
    }
    drop(arena);
    drop(region);
});
