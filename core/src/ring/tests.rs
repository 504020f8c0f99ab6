//! Unit tests of the ring: single-threaded against a `VecDeque` model, corruption, attach, and
//! threaded producer/consumer (small counts under miri).

use super::*;
use crate::sync::AtomicU32;
use crate::wait::{NoopNotifier, SpinWaiter, WaitOutcome, WakeKind};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use std::sync::{Arc, Condvar, Mutex};

const N: &NoopNotifier = &NoopNotifier;

/// A tiny deterministic generator (xorshift64*), so tests need no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[test]
fn push_pop_roundtrip_with_tags() {
    let (mut tx, mut rx) = Ring::with_capacity(256);
    assert_eq!(tx.max_payload(), 120);
    tx.try_push(b"hello", N).unwrap();
    tx.try_push_tagged(b"", 7, N).unwrap();
    tx.try_push_tagged(&[9; 120], 0xffff, N).unwrap();
    let mut buf = [0u8; 128];
    assert_eq!(rx.try_pop(&mut buf, N), Ok(FrameInfo { len: 5, tag: 0 }));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(rx.try_pop(&mut buf, N), Ok(FrameInfo { len: 0, tag: 7 }));
    assert_eq!(
        rx.try_pop(&mut buf, N),
        Ok(FrameInfo {
            len: 120,
            tag: 0xffff
        })
    );
    assert_eq!(&buf[..120], &[9; 120]);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Empty));
}

#[test]
fn read_chunk_extend_vec_appends_without_zeroing() {
    let (mut tx, mut rx) = Ring::with_capacity(256);
    tx.try_push(b"hello world", N).unwrap();
    tx.try_push(b"abc", N).unwrap();
    let mut out = b"prefix:".to_vec();
    {
        let chunk = rx.read_chunk(N).unwrap();
        assert_eq!(chunk.extend_vec(6, &mut out), 5);
        assert_eq!(out, b"prefix:world");
        // An offset at or past the end appends nothing.
        assert_eq!(chunk.extend_vec(11, &mut out), 0);
        assert_eq!(chunk.extend_vec(usize::MAX, &mut out), 0);
        assert_eq!(out, b"prefix:world");
    }
    let chunk = rx.read_chunk(N).unwrap();
    assert_eq!(chunk.to_vec(), b"abc");
}

#[test]
fn read_chunk_keep_leaves_the_frame_for_the_next_read() {
    let (mut tx, mut rx) = Ring::with_capacity(128);
    tx.try_push_tagged(b"first", 3, N).unwrap();
    tx.try_push(b"second", N).unwrap();
    rx.read_chunk(N).unwrap().keep();
    rx.read_chunk(N).unwrap().keep();
    let chunk = rx.read_chunk(N).unwrap();
    assert_eq!((chunk.tag(), chunk.to_vec()), (3, b"first".to_vec()));
    drop(chunk);
    let chunk = rx.read_chunk(N).unwrap();
    assert_eq!(chunk.to_vec(), b"second");
    chunk.keep();
    let mut buf = [0u8; 16];
    assert_eq!(rx.try_pop(&mut buf, N), Ok(FrameInfo { len: 6, tag: 0 }));
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Empty));
}

#[test]
fn errors_full_too_large_buffer_too_small() {
    let (mut tx, mut rx) = Ring::with_capacity(64);
    assert_eq!(
        tx.try_push(&[0; 25], N),
        Err(PushError::TooLarge { len: 25, max: 24 })
    );
    tx.try_push(&[1; 24], N).unwrap(); // 32 bytes
    tx.try_push(&[2; 24], N).unwrap(); // 64 bytes: full
    assert_eq!(tx.try_push(&[], N), Err(PushError::Full));
    let mut small = [0u8; 10];
    assert_eq!(
        rx.try_pop(&mut small, N),
        Err(PopError::BufferTooSmall { needed: 24 })
    );
    let mut buf = [0u8; 24];
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 24);
    assert_eq!(buf, [1; 24]);
    tx.try_push(&[3; 24], N).unwrap();
    assert_eq!(tx.try_push(&[], N), Err(PushError::Full));
    assert!(!tx.is_poisoned() && !rx.is_poisoned());
}

#[test]
fn write_chunk_commit_and_drop() {
    let (mut tx, mut rx) = Ring::with_capacity(128);
    // Dropped without commit: nothing is published.
    {
        let mut chunk = tx.write_chunk(16).unwrap();
        chunk.write(0, &[5; 16]);
    }
    assert_eq!(rx.read_chunk(N).err(), Some(PopError::Empty));
    // Commit fewer bytes than reserved.
    let mut chunk = tx.write_chunk(40).unwrap();
    assert_eq!(chunk.len(), 40);
    chunk.write(0, b"abc");
    chunk.write(3, b"def");
    chunk.commit(6, 42, N);
    let chunk = rx.read_chunk(N).unwrap();
    assert_eq!((chunk.len(), chunk.tag()), (6, 42));
    assert_eq!(chunk.to_vec(), b"abcdef");
    let mut two = [0u8; 2];
    assert_eq!(chunk.read(4, &mut two), 2);
    assert_eq!(&two, b"ef");
    assert_eq!(chunk.read(6, &mut two), 0);
    assert_eq!(chunk.read(100, &mut two), 0);
    drop(chunk);
    assert_eq!(rx.read_chunk(N).err(), Some(PopError::Empty));
}

#[test]
#[should_panic(expected = "past the chunk")]
fn write_chunk_write_out_of_range_panics() {
    let (mut tx, _rx) = Ring::with_capacity(128);
    let mut chunk = tx.write_chunk(4).unwrap();
    chunk.write(2, &[0; 3]);
}

/// Random pushes and pops (copying and in place) against a `VecDeque` model that also predicts the
/// positions, padding included, so `Full` is checked exactly.
#[test]
fn model_random_ops_with_wrap() {
    let steps = if cfg!(miri) { 400 } else { 200_000 };
    for &cap in &[32usize, 64, 256, 4096] {
        let (mut tx, mut rx) = Ring::with_capacity(cap);
        let max = tx.max_payload();
        // (payload, tag, bytes the frame took including padding before it)
        let mut model: VecDeque<(Vec<u8>, u16, usize)> = VecDeque::new();
        let (mut tail, mut head) = (0usize, 0usize);
        // Frames at the back of `model` that are staged, not yet published.
        let mut staged_frames = 0usize;
        let mut rng = Rng(cap as u64 * 7919 + 1);
        let mut seq = 0u64;
        let mut buf = vec![0u8; max];
        for _ in 0..steps {
            match rng.below(5) {
                0 | 1 => {
                    let len = if rng.below(4) == 0 {
                        max
                    } else {
                        rng.below(max + 1)
                    };
                    let data = payload(seq, len);
                    let tag = seq as u16;
                    let pos = tail % cap;
                    let size = frame_size(len);
                    let taken = if size > cap - pos {
                        cap - pos + size
                    } else {
                        size
                    };
                    let fits = cap - (tail - head) >= taken;
                    let staged = rng.below(4) == 0;
                    let res = match (staged, rng.below(2)) {
                        (false, 0) => tx.try_push_tagged(&data, tag, N),
                        (true, 0) => tx.try_push_staged(&data, tag),
                        (staged, _) => tx.write_chunk(len).map(|mut c| {
                            c.write(0, &data);
                            if staged {
                                c.stage(len, tag)
                            } else {
                                c.commit(len, tag, N)
                            }
                        }),
                    };
                    match res {
                        Ok(()) => {
                            assert!(fits, "push succeeded without room");
                            seq += 1;
                            tail += taken;
                            model.push_back((data, tag, taken));
                            if staged {
                                staged_frames += 1;
                            } else {
                                staged_frames = 0;
                            }
                        }
                        Err(PushError::Full) => assert!(!fits, "spurious Full"),
                        Err(e) => panic!("push: {e}"),
                    }
                }
                2 | 3 => {
                    if rng.below(8) == 0 {
                        tx.flush(N);
                        staged_frames = 0;
                    }
                    let got = if rng.below(2) == 0 {
                        rx.try_pop(&mut buf, N)
                            .map(|i| (buf[..i.len].to_vec(), i.tag))
                    } else {
                        rx.read_chunk(N).map(|c| (c.to_vec(), c.tag()))
                    };
                    let visible = model.len() - staged_frames;
                    match (got, visible > 0) {
                        (Ok(frame), true) => {
                            let (data, tag, taken) = model.pop_front().unwrap();
                            head += taken;
                            assert_eq!(frame, (data, tag));
                        }
                        (Err(PopError::Empty), false) => {}
                        (got, _) => panic!("pop {got:?}, model {:?}", model.front()),
                    }
                }
                _ => {
                    // Peek and release without copying.
                    if let Ok(c) = rx.read_chunk(N) {
                        assert!(model.len() > staged_frames, "staged frame visible");
                        let (data, _, taken) = model.pop_front().expect("model has the frame");
                        assert_eq!(c.len(), data.len());
                        head += taken;
                    } else {
                        assert_eq!(model.len(), staged_frames);
                    }
                }
            }
            assert_eq!(
                rx.raw().header().tail.load(Ordering::Relaxed) + tx.staged_bytes() as u64,
                tail as u64
            );
            assert_eq!(rx.raw().header().head.load(Ordering::Relaxed), head as u64);
        }
    }
}

/// A frame of the largest size always fits into an empty ring, wherever the wrap falls.
#[test]
fn max_frame_fits_at_every_offset() {
    let cap = 128;
    let max = max_payload(cap);
    let mut buf = vec![0u8; max];
    for offset in (0..cap).step_by(8) {
        let (mut tx, mut rx) = Ring::with_capacity(cap);
        let mut advanced = 0;
        while advanced < offset {
            let step = (offset - advanced).min(64);
            tx.try_push(&vec![1; step - 8], N).unwrap();
            rx.try_pop(&mut buf, N).unwrap();
            advanced += step;
        }
        tx.try_push(&vec![2; max], N).unwrap();
        assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, max);
        assert!(buf.iter().all(|&b| b == 2));
    }
}

#[test]
fn close_is_delivered_after_data() {
    let (mut tx, mut rx) = Ring::with_capacity(64);
    tx.try_push(b"last", N).unwrap();
    tx.close(N);
    let mut buf = [0u8; 8];
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 4);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Closed));
    drop(tx);

    let (mut tx, rx) = Ring::with_capacity(64);
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.try_push(b"x", N), Err(PushError::Closed));
}

fn buf_ptr(ring: &RawRing) -> *mut u8 {
    ring.buf.as_ptr()
}

fn write_word(ring: &RawRing, pos: usize, word: u64) {
    // SAFETY: tests write in-bounds, aligned frame words of an owned ring no other thread uses.
    unsafe { ring.write_frame_word(pos, word) };
}

#[test]
fn corrupt_positions_poison_the_consumer() {
    // tail beyond head + capacity
    let (tx, mut rx) = Ring::with_capacity(64);
    rx.raw().header().tail.store(72, Ordering::Relaxed);
    let mut buf = [0u8; 64];
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt));
    assert!(rx.is_poisoned());
    rx.raw().header().tail.store(0, Ordering::Relaxed);
    assert_eq!(
        rx.try_pop(&mut buf, N),
        Err(PopError::Corrupt),
        "stays poisoned"
    );
    drop(tx);

    // misaligned tail
    let (_tx, mut rx) = Ring::with_capacity(64);
    rx.raw().header().tail.store(4, Ordering::Relaxed);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt));

    // tail moving backwards
    let (mut tx, mut rx) = Ring::with_capacity(64);
    tx.try_push(&[1; 8], N).unwrap();
    tx.try_push(&[1; 8], N).unwrap();
    rx.try_pop(&mut buf, N).unwrap();
    rx.try_pop(&mut buf, N).unwrap();
    rx.raw().header().tail.store(16, Ordering::Relaxed);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt));
}

#[test]
fn corrupt_frames_poison_the_consumer() {
    let mut buf = [0u8; 64];
    let cases: [(&str, u64, u64); 7] = [
        (
            "length past the published bytes",
            encode_frame(16, KIND_DATA, 0),
            16,
        ),
        (
            "length above the maximum",
            encode_frame(25, KIND_DATA, 0),
            64,
        ),
        ("unknown kind", encode_frame(0, 3, 0), 8),
        ("padding at offset 0", encode_frame(56, KIND_PAD, 0), 64),
        (
            "padding of the wrong length",
            encode_frame(8, KIND_PAD, 0),
            64,
        ),
        ("huge length", encode_frame(u32::MAX, KIND_DATA, 0), 64),
        ("kind zero", 0, 8),
    ];
    for (what, word, tail) in cases {
        let (_tx, mut rx) = Ring::with_capacity(64);
        write_word(rx.raw(), 0, word);
        rx.raw().header().tail.store(tail, Ordering::Relaxed);
        assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt), "{what}");
        assert!(rx.is_poisoned(), "{what}");
    }

    // Padding at the wrap that is not followed by a published frame.
    let (mut tx, mut rx) = Ring::with_capacity(128);
    for _ in 0..2 {
        tx.try_push(&[0; 48], N).unwrap();
        rx.try_pop(&mut buf, N).unwrap();
    }
    write_word(rx.raw(), 112, encode_frame(8, KIND_PAD, 0));
    rx.raw().header().tail.store(128, Ordering::Relaxed);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt));

    // Valid padding at the wrap followed by a frame is accepted.
    let (mut tx, mut rx) = Ring::with_capacity(128);
    for _ in 0..2 {
        tx.try_push(&[0; 48], N).unwrap();
        rx.try_pop(&mut buf, N).unwrap();
    }
    tx.try_push(&[7; 16], N).unwrap();
    assert_eq!(rx.raw().header().tail.load(Ordering::Relaxed), 152);
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 16);
    assert_eq!(&buf[..16], &[7; 16]);
}

/// A data frame whose claimed end runs past the end of the buffer, although it lies within what
/// the peer published: `head = tail = 56` in a 64-byte ring, a data header of length 8 at offset 56
/// and `tail = 72`. Its payload would be read from offsets 64..72, past the buffer, so the frame
/// must be rejected by the frame-end bound (`pos + size > cap`), not by the published-bytes bound.
#[test]
fn data_frame_running_past_the_buffer_end_is_corrupt() {
    for op in ["read_chunk", "try_pop"] {
        let (mut tx, mut rx) = Ring::with_capacity(64);
        let mut buf = [0u8; 64];
        // Move both positions to 56 with frames the real producer wrote (32 + 24 bytes).
        tx.try_push(&[1; 24], N).unwrap();
        tx.try_push(&[2; 16], N).unwrap();
        assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 24);
        assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 16);
        assert_eq!(rx.raw().header().head.load(Ordering::Relaxed), 56);
        // The hostile producer: an 8-byte data frame (16 bytes with its header) at offset 56,
        // published in full (`tail - head = 16 <= capacity`, 8-aligned, monotone).
        write_word(rx.raw(), 56, encode_frame(8, KIND_DATA, 0));
        rx.raw().header().tail.store(72, Ordering::Relaxed);
        // `read_chunk` goes first: it validates without touching the payload, so a missing bound
        // fails this assertion instead of reading out of bounds.
        let got = match op {
            "read_chunk" => rx.read_chunk(N).map(|c| c.len()),
            _ => rx.try_pop(&mut buf, N).map(|i| i.len),
        };
        assert_eq!(
            got,
            Err(PopError::Corrupt),
            "{op}: frame ends past the buffer"
        );
        assert!(rx.is_poisoned(), "{op}");
        drop(tx);
    }
}

/// A 128-byte ring with both positions at 112 (two 48-byte frames pushed and popped), so the next
/// frame goes behind a 16-byte padding frame at 112; stale valid frame words lie at 0 and 56.
fn ring_at_112() -> (Producer, Consumer) {
    let (mut tx, mut rx) = Ring::with_capacity(128);
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        tx.try_push(&[0; 48], N).unwrap();
        rx.try_pop(&mut buf, N).unwrap();
    }
    assert_eq!(rx.raw().header().head.load(Ordering::Relaxed), 112);
    (tx, rx)
}

/// Padding checks that no later check makes up for (each found by a surviving mutant): the
/// padding must be published past its own header, it must run exactly to the end of the buffer
/// even at a non-zero offset, and a padding followed by exactly one published empty frame is valid.
#[test]
fn padding_checks_at_the_wrap() {
    let mut buf = [0u8; 64];
    // Padding header published, but not the 16 bytes it claims (`tail - head = 8 < 16`): taking
    // it would move `head` past `tail` and hand out the stale frame at offset 0.
    let (_tx, mut rx) = ring_at_112();
    write_word(rx.raw(), 112, encode_frame(8, KIND_PAD, 0));
    write_word(rx.raw(), 0, encode_frame(8, KIND_DATA, 0));
    rx.raw().header().tail.store(120, Ordering::Relaxed);
    assert_eq!(
        rx.try_pop(&mut buf, N),
        Err(PopError::Corrupt),
        "padding past tail"
    );

    // Padding of the wrong length at a non-zero offset (it must end at the buffer's end).
    let (_tx, mut rx) = ring_at_112();
    write_word(rx.raw(), 112, encode_frame(0, KIND_PAD, 0));
    write_word(rx.raw(), 0, encode_frame(8, KIND_DATA, 0));
    rx.raw().header().tail.store(144, Ordering::Relaxed);
    assert_eq!(
        rx.try_pop(&mut buf, N),
        Err(PopError::Corrupt),
        "short padding"
    );

    // Padding followed by exactly one published empty frame: valid.
    let (_tx, mut rx) = ring_at_112();
    write_word(rx.raw(), 112, encode_frame(8, KIND_PAD, 0));
    write_word(rx.raw(), 0, encode_frame(0, KIND_DATA, 5));
    rx.raw().header().tail.store(136, Ordering::Relaxed);
    assert_eq!(rx.try_pop(&mut buf, N), Ok(FrameInfo { len: 0, tag: 5 }));
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Empty));
}

/// Position checks of `refresh_tail` that the frame checks would not make up for: the frames at
/// `head` are valid, so only the check of the new `tail` itself can reject it.
#[test]
fn bad_tail_over_valid_frames_is_corrupt() {
    let mut buf = [0u8; 64];
    for (what, tail) in [("tail beyond head + capacity", 80), ("misaligned tail", 20)] {
        let (mut tx, mut rx) = Ring::with_capacity(64);
        tx.try_push(&[1; 8], N).unwrap();
        rx.raw().header().tail.store(tail, Ordering::Relaxed);
        assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Corrupt), "{what}");
        assert!(rx.is_poisoned(), "{what}");
    }
}

#[test]
fn corrupt_head_poisons_the_producer() {
    let (mut tx, rx) = Ring::with_capacity(64);
    tx.try_push(&[0; 24], N).unwrap();
    tx.try_push(&[0; 24], N).unwrap();
    // Consumer claims to have read past what was published.
    rx.raw().header().head.store(72, Ordering::Relaxed);
    assert_eq!(tx.try_push(&[0; 8], N), Err(PushError::Corrupt));
    assert!(tx.is_poisoned());
    assert_eq!(tx.try_push(&[], N), Err(PushError::Corrupt));

    let (mut tx, rx) = Ring::with_capacity(64);
    tx.try_push(&[0; 24], N).unwrap();
    tx.try_push(&[0; 24], N).unwrap();
    rx.raw().header().head.store(4, Ordering::Relaxed);
    assert_eq!(tx.try_push(&[0; 8], N), Err(PushError::Corrupt));
    // A head moving backwards past the cached one.
    let (mut tx, rx) = Ring::with_capacity(64);
    tx.try_push(&[0; 24], N).unwrap();
    tx.try_push(&[0; 24], N).unwrap();
    rx.raw()
        .header()
        .head
        .store(u64::MAX - 7, Ordering::Relaxed);
    assert_eq!(tx.try_push(&[0; 8], N), Err(PushError::Corrupt));
    let _ = buf_ptr(rx.raw());
}

/// A 128-byte aligned heap region for `init`/`attach` tests.
struct Region {
    ptr: *mut u8,
    layout: core::alloc::Layout,
}

impl Region {
    fn new(len: usize) -> Self {
        let layout = core::alloc::Layout::from_size_align(len, REGION_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Region { ptr, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn init_attach_and_validation() {
    let cap = 256;
    let region = Region::new(region_size(cap) + 128);
    let len = region_size(cap);
    assert_eq!(len, HEADER_SIZE + cap, "the header, then the buffer");
    // SAFETY: `region` is valid for `len` bytes, outlives every view and handle below.
    unsafe {
        assert_eq!(
            RawRing::attach(region.ptr, len).err(),
            Some(AttachError::BadMagic)
        );
        assert_eq!(
            RawRing::init(region.ptr, len, 100).err(),
            Some(AttachError::BadCapacity(100))
        );
        assert_eq!(
            RawRing::init(region.ptr, len - 1, cap).err(),
            Some(AttachError::TooSmall {
                needed: len,
                len: len - 1
            })
        );
        assert_eq!(
            RawRing::init(region.ptr.add(8), len, cap).err(),
            Some(AttachError::Misaligned)
        );
        let made = RawRing::init(region.ptr, len, cap).unwrap();
        let seen = RawRing::attach(region.ptr, len).unwrap();
        assert_eq!(seen.capacity(), cap);
        assert_eq!(
            RawRing::attach(region.ptr, len - 8).err(),
            Some(AttachError::TooSmall {
                needed: len,
                len: len - 8
            })
        );
        let mut tx = made.producer().unwrap();
        let mut rx = seen.consumer().unwrap();
        tx.try_push(b"over raw memory", N).unwrap();
        let mut buf = [0u8; 32];
        let info = rx.try_pop(&mut buf, N).unwrap();
        assert_eq!(&buf[..info.len], b"over raw memory");

        let h = made.header();
        h.config.version.store(9, Ordering::Relaxed);
        assert_eq!(
            RawRing::attach(region.ptr, len).err(),
            Some(AttachError::BadVersion(9))
        );
        h.config.version.store(RING_VERSION, Ordering::Relaxed);
        h.config.capacity.store(1 << 40, Ordering::Relaxed);
        assert_eq!(
            RawRing::attach(region.ptr, len).err(),
            Some(AttachError::BadCapacity(1 << 40))
        );
        h.config.capacity.store(512, Ordering::Relaxed);
        assert!(matches!(
            RawRing::attach(region.ptr, len),
            Err(AttachError::TooSmall { .. })
        ));
        h.config.capacity.store(cap as u64, Ordering::Relaxed);
        h.head.store(3, Ordering::Relaxed);
        assert_eq!(seen.consumer().err(), Some(AttachError::Corrupt));
        assert_eq!(seen.producer().err(), Some(AttachError::Corrupt));
        h.head.store(0, Ordering::Relaxed);
        h.tail.store(1024, Ordering::Relaxed);
        assert_eq!(seen.producer().err(), Some(AttachError::Corrupt));
        h.tail.store(24, Ordering::Relaxed);
        drop(tx);
        drop(rx);
    }
}

/// A futex stand-in for threads: one mutex + condvar shared by both sides.
#[derive(Default)]
struct ThreadFutex {
    lock: Mutex<()>,
    cond: Condvar,
}

impl Waiter for ThreadFutex {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::Futex
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
        let guard = self.lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return WaitOutcome::Woken;
        }
        let timeout = timeout.unwrap_or(Duration::from_secs(3600));
        let (_guard, res) = self.cond.wait_timeout(guard, timeout).unwrap();
        if res.timed_out() {
            WaitOutcome::TimedOut
        } else {
            WaitOutcome::Woken
        }
    }
}

impl Notifier for ThreadFutex {
    fn wake(&self, _word: &AtomicU32, _kind: WakeKind) {
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
}

fn no_check() -> Result<Option<Duration>, PopError> {
    Ok(None)
}

/// Producer and consumer threads, frames of random sizes with sequence numbers, per policy.
fn threaded(policy: WaitPolicy, cap: usize, frames: u64) {
    let (mut tx, mut rx) = Ring::with_capacity(cap);
    let futex = Arc::new(ThreadFutex::default());
    let max = tx.max_payload();
    let f2 = futex.clone();
    let producer = std::thread::spawn(move || {
        let mut rng = Rng(99);
        for seq in 0..frames {
            let len = 8 + rng.below(max - 7);
            let mut data = payload(seq, len);
            data[..8].copy_from_slice(&seq.to_le_bytes());
            tx.push_wait(&data, seq as u16, &*f2, &*f2, policy, || {
                Ok::<_, PushError>(None)
            })
            .unwrap();
        }
        tx.close(&*f2);
    });
    let mut rng = Rng(99);
    let mut buf = vec![0u8; max];
    for seq in 0..frames {
        let len = 8 + rng.below(max - 7);
        let info = rx
            .pop_wait(&mut buf, &*futex, &*futex, policy, no_check)
            .unwrap();
        assert_eq!(info.len, len);
        assert_eq!(info.tag, seq as u16);
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), seq);
        let mut expected = payload(seq, len);
        expected[..8].copy_from_slice(&seq.to_le_bytes());
        assert_eq!(&buf[..len], &expected[..]);
    }
    assert_eq!(
        rx.pop_wait(&mut buf, &*futex, &*futex, policy, no_check),
        Err(PopError::Closed)
    );
    producer.join().unwrap();
}

#[test]
fn threaded_block() {
    threaded(WaitPolicy::Block, 64, if cfg!(miri) { 60 } else { 200_000 });
}

#[test]
fn threaded_spin_then_block() {
    threaded(
        WaitPolicy::SpinThenBlock { spins: 16 },
        128,
        if cfg!(miri) { 60 } else { 200_000 },
    );
}

#[test]
fn threaded_busy_poll() {
    let frames = if cfg!(miri) { 40 } else { 200_000 };
    threaded(WaitPolicy::BusyPoll, 256, frames);
}

#[test]
fn threaded_spin_waiter_noop_notifier() {
    let (mut tx, mut rx) = Ring::with_capacity(64);
    let frames: u64 = if cfg!(miri) { 40 } else { 100_000 };
    let producer = std::thread::spawn(move || {
        for seq in 0..frames {
            tx.push_wait(
                &seq.to_le_bytes(),
                0,
                N,
                &SpinWaiter,
                WaitPolicy::Block,
                || Ok::<_, PushError>(None),
            )
            .unwrap();
        }
    });
    let mut buf = [0u8; 8];
    for seq in 0..frames {
        rx.pop_wait(&mut buf, N, &SpinWaiter, WaitPolicy::Block, no_check)
            .unwrap();
        assert_eq!(u64::from_le_bytes(buf), seq);
    }
    producer.join().unwrap();
}

#[derive(Debug, PartialEq)]
enum TestError {
    Pop(PopError),
    Push(PushError),
    Deadline,
}

impl From<PopError> for TestError {
    fn from(e: PopError) -> Self {
        TestError::Pop(e)
    }
}

impl From<PushError> for TestError {
    fn from(e: PushError) -> Self {
        TestError::Push(e)
    }
}

#[test]
fn check_callback_ends_waits() {
    let futex = ThreadFutex::default();
    let (mut tx, mut rx) = Ring::with_capacity(64);
    let mut buf = [0u8; 8];
    for policy in [
        WaitPolicy::Block,
        WaitPolicy::SpinThenBlock { spins: 3 },
        WaitPolicy::BusyPoll,
    ] {
        let mut calls = 0;
        let res = rx.pop_wait(&mut buf, &futex, &futex, policy, || {
            calls += 1;
            if calls == 3 {
                Err(TestError::Deadline)
            } else {
                Ok(Some(Duration::from_millis(1)))
            }
        });
        assert_eq!(res, Err(TestError::Deadline));
        assert_eq!(calls, 3);
        assert_eq!(
            rx.raw()
                .header()
                .consumer_line
                .waiting
                .load(Ordering::Relaxed),
            0
        );
    }
    tx.try_push(&[0; 24], N).unwrap();
    tx.try_push(&[0; 24], N).unwrap();
    let mut calls = 0;
    let res = tx.push_wait(&[1], 0, &futex, &futex, WaitPolicy::Block, || {
        calls += 1;
        if calls == 2 {
            Err(TestError::Deadline)
        } else {
            Ok(Some(Duration::from_millis(1)))
        }
    });
    assert_eq!(res, Err(TestError::Deadline));
    assert_eq!(
        tx.raw()
            .header()
            .producer_line
            .waiting
            .load(Ordering::Relaxed),
        0
    );
    // A closed consumer ends the producer's wait.
    rx.close(&futex);
    let res = tx.push_wait(&[1], 0, &futex, &futex, WaitPolicy::Block, || {
        Ok::<_, TestError>(None)
    });
    assert_eq!(res, Err(TestError::Push(PushError::Closed)));
}

/// The waiting word is set only while a side sleeps, and a publish resets it and wakes.
#[test]
fn waiting_word_protocol() {
    struct CountingNotifier(core::cell::Cell<u32>);
    impl Notifier for CountingNotifier {
        fn wake(&self, word: &AtomicU32, kind: WakeKind) {
            assert_eq!(word.load(Ordering::Relaxed), 0, "reset before waking");
            assert_eq!(kind, WakeKind::EventFd);
            self.0.set(self.0.get() + 1);
        }
    }
    let count = CountingNotifier(core::cell::Cell::new(0));
    let (mut tx, rx) = Ring::with_capacity(64);
    tx.try_push(b"a", &count).unwrap();
    assert_eq!(count.0.get(), 0, "no wake without a sleeper");
    rx.raw()
        .header()
        .consumer_line
        .waiting
        .store(WakeKind::EventFd.word(), Ordering::Relaxed);
    tx.try_push(b"b", &count).unwrap();
    assert_eq!(count.0.get(), 1);
    tx.try_push(b"c", &count).unwrap();
    assert_eq!(count.0.get(), 1, "one wake per sleep");
    drop(rx);
}

#[test]
fn staged_frames_are_invisible_until_flushed() {
    let (mut tx, mut rx) = Ring::with_capacity(64);
    let mut buf = [0u8; 24];
    tx.try_push_staged(b"one", 1).unwrap();
    let mut c = tx.write_chunk(8).unwrap();
    c.write(0, b"two");
    c.stage(3, 2);
    assert_eq!(tx.staged_bytes(), 32);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Empty));
    tx.flush(N);
    assert_eq!(tx.staged_bytes(), 0);
    assert_eq!(rx.try_pop(&mut buf, N), Ok(FrameInfo { len: 3, tag: 1 }));
    // A publishing push also publishes what was staged before it.
    tx.try_push_staged(b"three", 3).unwrap();
    tx.try_push_tagged(b"four", 4, N).unwrap();
    for (text, tag) in [(&b"two"[..], 2), (b"three", 3), (b"four", 4)] {
        let info = rx.try_pop(&mut buf, N).unwrap();
        assert_eq!((&buf[..info.len], info.tag), (text, tag));
    }
    // Full while staged: the wait flushes first, so the consumer can drain.
    tx.try_push_staged(&[5; 24], 5).unwrap();
    tx.try_push_staged(&[6; 24], 6).unwrap();
    assert_eq!(tx.try_push_staged(&[7; 8], 7), Err(PushError::Full));
    let mut calls = 0;
    let res = tx.wait_writable(8, N, &SpinWaiter, WaitPolicy::Block, || {
        calls += 1;
        Err::<Option<Duration>, _>(TestError::Deadline)
    });
    assert_eq!(res, Err(TestError::Deadline));
    assert_eq!(tx.staged_bytes(), 0, "wait_writable flushed");
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().tag, 5);
    // Dropping (and closing) publishes staged frames before the close.
    tx.try_push_staged(b"last", 8).unwrap();
    drop(tx);
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().tag, 6);
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().tag, 8);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Closed));
}

/// Counts wake calls by kind, for the arm tests.
#[derive(Default)]
struct KindCounter {
    eventfd: core::cell::Cell<u32>,
    futex: core::cell::Cell<u32>,
}

impl Notifier for KindCounter {
    fn wake(&self, _word: &AtomicU32, kind: WakeKind) {
        let c = match kind {
            WakeKind::EventFd => &self.eventfd,
            WakeKind::Futex => &self.futex,
        };
        c.set(c.get() + 1);
    }
}

#[test]
fn consumer_arm_wake_rechecks_and_leaves_word_for_the_publisher() {
    let (mut tx, mut rx) = Ring::with_capacity(64);
    let n = KindCounter::default();
    let word = |rx: &Consumer| {
        rx.raw()
            .header()
            .consumer_line
            .waiting
            .load(Ordering::Relaxed)
    };
    assert_eq!(rx.arm_wake(WakeKind::EventFd), Ok(false));
    assert_eq!(word(&rx), WakeKind::EventFd.word());
    tx.try_push(b"x", &n).unwrap();
    assert_eq!((n.eventfd.get(), n.futex.get()), (1, 0));
    assert_eq!(word(&rx), 0, "the publisher resets the word before waking");
    // Data pending: arming reports it at once and leaves the word clear.
    assert_eq!(rx.arm_wake(WakeKind::EventFd), Ok(true));
    assert_eq!(word(&rx), 0);
    tx.try_push(b"y", &n).unwrap();
    assert_eq!(n.eventfd.get(), 1, "no wake without an armed word");
    let mut buf = [0u8; 8];
    rx.try_pop(&mut buf, &n).unwrap();
    rx.try_pop(&mut buf, &n).unwrap();
    assert_eq!(rx.arm_wake(WakeKind::EventFd), Ok(false));
    rx.disarm();
    assert_eq!(word(&rx), 0);
    tx.try_push(b"z", &n).unwrap();
    assert_eq!(n.eventfd.get(), 1, "disarmed: no wake");
    rx.try_pop(&mut buf, &n).unwrap();
    // Closed and drained counts as ready (the next pop reports Closed).
    tx.close(&n);
    assert_eq!(rx.arm_wake(WakeKind::EventFd), Ok(true));
    assert_eq!(rx.try_pop(&mut buf, &n), Err(PopError::Closed));
}

#[test]
fn producer_arm_wake_rechecks_and_is_woken_by_release() {
    // 32 bytes hold two 16-byte frames.
    let (mut tx, mut rx) = Ring::with_capacity(32);
    let n = KindCounter::default();
    let word = |tx: &Producer| {
        tx.raw()
            .header()
            .producer_line
            .waiting
            .load(Ordering::Relaxed)
    };
    tx.try_push(&[1; 8], &n).unwrap();
    tx.try_push(&[2; 8], &n).unwrap();
    assert_eq!(tx.try_push(&[3; 8], &n), Err(PushError::Full));
    assert_eq!(tx.arm_wake(WakeKind::EventFd), Ok(false));
    assert_eq!(word(&tx), WakeKind::EventFd.word());
    let mut buf = [0u8; 8];
    rx.try_pop(&mut buf, &n).unwrap();
    assert_eq!(n.eventfd.get(), 1);
    assert_eq!(word(&tx), 0);
    // The release is seen by the re-check too.
    assert_eq!(tx.arm_wake(WakeKind::EventFd), Ok(true));
    assert_eq!(word(&tx), 0);
    tx.try_push(&[3; 8], &n).unwrap();
    assert_eq!(tx.arm_wake(WakeKind::EventFd), Ok(false));
    rx.close(&n);
    assert_eq!(n.eventfd.get(), 2, "close wakes an armed producer");
    assert_eq!(tx.arm_wake(WakeKind::EventFd), Err(PushError::Closed));
    assert_eq!(word(&tx), 0);
}

/// A waiter that makes the wait succeed by publishing a frame from "the peer" when asked to
/// sleep, and counts the sleeps.
struct PushOnSleep {
    tx: core::cell::RefCell<Producer>,
    sleeps: core::cell::Cell<u32>,
}

impl Waiter for PushOnSleep {
    fn wake_kind(&self) -> WakeKind {
        WakeKind::Futex
    }

    fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) -> WaitOutcome {
        self.sleeps.set(self.sleeps.get() + 1);
        self.tx.borrow_mut().try_push(b"x", &NoopNotifier).unwrap();
        WaitOutcome::Woken
    }
}

#[test]
fn spin_budget_halves_when_waits_sleep() {
    use crate::wait::{SpinBudget, MIN_SPINS};
    let (tx, mut rx) = Ring::with_capacity(256);
    let waiter = PushOnSleep {
        tx: core::cell::RefCell::new(tx),
        sleeps: core::cell::Cell::new(0),
    };
    let policy = WaitPolicy::SpinThenBlock { spins: 1024 };
    let never = || Ok::<_, PopError>(None);
    let mut buf = [0u8; 8];
    assert_eq!(rx.spin_budget.limit(1024), 1024);
    // Every wait on the empty ring has to sleep (the frame comes only then): the budget halves
    // each time, down to the floor.
    let mut expect = 1024;
    for _ in 0..10 {
        rx.wait_readable(&waiter, policy, never).unwrap();
        rx.try_pop(&mut buf, &NoopNotifier).unwrap();
        expect = (expect / 2).max(MIN_SPINS);
        assert_eq!(rx.spin_budget.limit(1024), expect);
    }
    assert_eq!(waiter.sleeps.get(), 10);
    assert_eq!(expect, MIN_SPINS);
    // A wait that finds a frame at once says nothing about spinning: the budget stays.
    waiter
        .tx
        .borrow_mut()
        .try_push(b"y", &NoopNotifier)
        .unwrap();
    rx.wait_readable(&waiter, policy, never).unwrap();
    rx.try_pop(&mut buf, &NoopNotifier).unwrap();
    assert_eq!(rx.spin_budget.limit(1024), MIN_SPINS);
    // Other policies leave it alone.
    waiter
        .tx
        .borrow_mut()
        .try_push(b"z", &NoopNotifier)
        .unwrap();
    rx.wait_readable(&waiter, WaitPolicy::Block, never).unwrap();
    assert_eq!(rx.spin_budget.limit(1024), expect);
    assert_eq!(SpinBudget::new().limit(7), 7);
}

/// Killed mutants of `Producer::capacity` and `Consumer::capacity` (their values were never
/// asserted): both report the frame buffer's size, whether the ring is owned or over raw memory.
#[test]
fn handles_report_the_capacity() {
    for cap in [MIN_CAPACITY, 256, 4096] {
        let (tx, rx) = Ring::with_capacity(cap);
        assert_eq!((tx.capacity(), rx.capacity()), (cap, cap));
    }
    let cap = 512;
    let len = region_size(cap);
    let region = Region::new(len);
    // SAFETY: `region` is valid for `len` bytes and outlives the view and its handles.
    let ring = unsafe { RawRing::init(region.ptr, len, cap) }.unwrap();
    // SAFETY: `region` outlives both handles (declared after it), the only ones of this ring.
    let (tx, rx) = unsafe { (ring.producer().unwrap(), ring.consumer().unwrap()) };
    assert_eq!((tx.capacity(), rx.capacity()), (512, 512));
}

/// The state queries a caller branches on: chunk emptiness, the consumer's view of a closed
/// producer, `poll_frame` for empty / pending / closed, and the producer's `disarm`.
#[test]
fn state_queries_report_the_ring() {
    let (mut tx, mut rx) = Ring::with_capacity(256);
    let mut buf = [0u8; 16];
    assert_eq!(rx.poll_frame(), Err(PopError::Empty));
    assert!(!rx.is_closed());
    let w = tx.write_chunk(0).unwrap();
    assert!(w.is_empty());
    w.commit(0, 1, N);
    let w = tx.write_chunk(5).unwrap();
    assert!(!w.is_empty());
    assert_eq!(w.len(), 5);
    w.commit(5, 2, N);
    // poll_frame locates the frame without taking it.
    assert_eq!(rx.poll_frame(), Ok(()));
    assert_eq!(rx.poll_frame(), Ok(()));
    let c = rx.read_chunk(N).unwrap();
    assert!(c.is_empty());
    assert_eq!(c.tag(), 1);
    drop(c);
    let c = rx.read_chunk(N).unwrap();
    assert!(!c.is_empty());
    assert_eq!((c.len(), c.tag()), (5, 2));
    drop(c);
    assert_eq!(rx.poll_frame(), Err(PopError::Empty));
    // The producer's waiting word, armed and then cleared: no wake-up for the consumer's frees.
    let n = KindCounter::default();
    let word = |tx: &Producer| {
        tx.raw()
            .header()
            .producer_line
            .waiting
            .load(Ordering::Relaxed)
    };
    // The first arm sees the frees made since the producer last looked and reports them.
    assert_eq!(tx.arm_wake(WakeKind::Futex), Ok(true));
    assert_eq!(tx.arm_wake(WakeKind::Futex), Ok(false));
    assert_eq!(word(&tx), WakeKind::Futex.word());
    tx.disarm();
    assert_eq!(word(&tx), 0);
    tx.try_push(b"abc", N).unwrap();
    rx.try_pop(&mut buf, &n).unwrap();
    assert_eq!(n.futex.get(), 0, "disarmed: no wake");
    // Closed: the consumer sees it, and poll_frame reports it once the ring is drained.
    tx.try_push(b"last", N).unwrap();
    tx.close(N);
    assert!(rx.is_closed());
    assert_eq!(rx.poll_frame(), Ok(()));
    assert_eq!(rx.try_pop(&mut buf, N).unwrap().len, 4);
    assert_eq!(rx.poll_frame(), Err(PopError::Closed));
    assert!(!tx.is_closed(), "the consumer is still there");
}

/// `close` publishes frames that were staged and not flushed, before the close mark: the
/// consumer reads them, then `Closed`.
#[test]
fn close_publishes_staged_frames() {
    let (mut tx, mut rx) = Ring::with_capacity(256);
    tx.try_push_staged(b"one", 0).unwrap();
    tx.try_push_staged(b"two", 0).unwrap();
    assert!(tx.staged_bytes() > 0);
    let mut buf = [0u8; 8];
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Empty));
    tx.close(N);
    let len = rx.try_pop(&mut buf, N).unwrap().len;
    assert_eq!(&buf[..len], b"one");
    let len = rx.try_pop(&mut buf, N).unwrap().len;
    assert_eq!(&buf[..len], b"two");
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Closed));
}
