//! Operation sequences on a ring (copying and in-place push/pop, staged frames and flushes,
//! abandoned chunks, short commits, too-small buffers, oversized frames), checked against a
//! `VecDeque` model that also predicts the positions, padding included, so `Full`, `Empty`,
//! `TooLarge` and `BufferTooSmall` are checked exactly, along with every byte and tag popped.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use flowipc_core::ring::{max_payload, FrameInfo, PopError, PushError, Ring};
use flowipc_core::wait::NoopNotifier;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// `try_push_tagged` of `len` bytes.
    Push { len: u16, tag: u16 },
    /// `write_chunk(len)`, written, committed with `commit <= len` bytes.
    Chunk { len: u16, commit: u16, tag: u16 },
    /// `write_chunk(len)` dropped without commit.
    Abandon { len: u16 },
    /// `try_push_staged` (or a staged chunk): written but not published.
    Stage { len: u16, tag: u16, chunk: bool },
    /// `flush`: publishes staged frames.
    Flush,
    /// `try_pop` into a buffer of `buf` bytes.
    Pop { buf: u16 },
    /// `read_chunk`, read at `offset`, released.
    ReadChunk { offset: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap_log: u8,
    ops: Vec<Op>,
}

const N: &NoopNotifier = &NoopNotifier;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    let s = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (s >> (i % 8 * 8)) as u8 ^ i as u8)
        .collect()
}

fn frame_size(len: usize) -> usize {
    8 + len.div_ceil(8) * 8
}

struct Model {
    cap: usize,
    tail: usize,
    head: usize,
    frames: VecDeque<(Vec<u8>, u16, usize)>,
    /// Frames at the back of `frames` that are staged, not yet visible.
    staged: usize,
}

impl Model {
    fn visible(&self) -> Option<&(Vec<u8>, u16, usize)> {
        (self.frames.len() > self.staged).then(|| &self.frames[0])
    }

    /// Bytes a frame of `len` takes at the current tail (padding included), if it fits.
    fn room_for(&self, len: usize) -> Option<usize> {
        let pos = self.tail % self.cap;
        let size = frame_size(len);
        let taken = if size > self.cap - pos {
            self.cap - pos + size
        } else {
            size
        };
        (self.cap - (self.tail - self.head) >= taken).then_some(taken)
    }
}

fuzz_target!(|input: Input| {
    let cap = 32usize << (input.cap_log % 8);
    let max = max_payload(cap);
    let (mut tx, mut rx) = Ring::with_capacity(cap);
    let mut m = Model {
        cap,
        tail: 0,
        head: 0,
        frames: VecDeque::new(),
        staged: 0,
    };
    let mut seq = 0u64;
    let mut buf = vec![0u8; max + 64];
    for op in input.ops {
        if let Op::Push { len, .. }
        | Op::Chunk { len, .. }
        | Op::Abandon { len }
        | Op::Stage { len, .. } = &op
        {
            let len = usize::from(*len);
            if len > max {
                assert_eq!(
                    tx.try_push(&vec![0; len], N),
                    Err(PushError::TooLarge { len, max })
                );
                assert_eq!(
                    tx.write_chunk(len).err(),
                    Some(PushError::TooLarge { len, max })
                );
                continue;
            }
        }
        match op {
            Op::Push { len, tag } => {
                let len = usize::from(len);
                let data = payload(seq, len);
                match (tx.try_push_tagged(&data, tag, N), m.room_for(len)) {
                    (Ok(()), Some(taken)) => {
                        m.tail += taken;
                        m.frames.push_back((data, tag, taken));
                        m.staged = 0;
                        seq += 1;
                    }
                    (Err(PushError::Full), None) => {}
                    (got, room) => panic!("push {len}: {got:?}, model room {room:?}"),
                }
            }
            Op::Chunk { len, commit, tag } => {
                let len = usize::from(len);
                let commit = usize::from(commit) % (len + 1);
                match (tx.write_chunk(len), m.room_for(len)) {
                    (Ok(mut chunk), Some(taken)) => {
                        assert_eq!(chunk.len(), len);
                        let data = payload(seq, commit);
                        chunk.write(0, &data);
                        chunk.commit(commit, tag, N);
                        // Padding was decided for `len`; the frame itself is `commit` bytes.
                        let taken = taken - frame_size(len) + frame_size(commit);
                        m.tail += taken;
                        m.frames.push_back((data, tag, taken));
                        m.staged = 0;
                        seq += 1;
                    }
                    (Err(PushError::Full), None) => {}
                    (got, room) => panic!("chunk {len}: {:?}, model room {room:?}", got.err()),
                }
            }
            Op::Abandon { len } => {
                let len = usize::from(len);
                match (tx.write_chunk(len), m.room_for(len)) {
                    (Ok(mut chunk), Some(_)) => chunk.write(0, &vec![0xa5; len]),
                    (Err(PushError::Full), None) => {}
                    (got, room) => panic!("abandon {len}: {:?}, model room {room:?}", got.err()),
                }
            }
            Op::Stage { len, tag, chunk } => {
                let len = usize::from(len);
                let data = payload(seq, len);
                let res = if chunk {
                    tx.write_chunk(len).map(|mut c| {
                        c.write(0, &data);
                        c.stage(len, tag)
                    })
                } else {
                    tx.try_push_staged(&data, tag)
                };
                match (res, m.room_for(len)) {
                    (Ok(()), Some(taken)) => {
                        m.tail += taken;
                        m.frames.push_back((data, tag, taken));
                        m.staged += 1;
                        seq += 1;
                    }
                    (Err(PushError::Full), None) => {}
                    (got, room) => panic!("stage {len}: {got:?}, model room {room:?}"),
                }
            }
            Op::Flush => {
                tx.flush(N);
                m.staged = 0;
            }
            Op::Pop { buf: n } => {
                let n = usize::from(n).min(buf.len());
                let got = rx.try_pop(&mut buf[..n], N);
                match (got, m.visible()) {
                    (Ok(FrameInfo { len, tag }), Some((data, t, taken))) => {
                        assert_eq!((&buf[..len], tag), (&data[..], *t));
                        let taken = *taken;
                        m.head += taken;
                        m.frames.pop_front();
                    }
                    (Err(PopError::BufferTooSmall { needed }), Some((data, _, _))) => {
                        assert!(n < data.len());
                        assert_eq!(needed, data.len());
                    }
                    (Err(PopError::Empty), None) => {}
                    (got, front) => panic!("pop: {got:?}, model {front:?}"),
                }
            }
            Op::ReadChunk { offset } => match (rx.read_chunk(N), m.visible().is_some()) {
                (Ok(chunk), true) => {
                    let (data, tag, taken) = m.frames.pop_front().unwrap();
                    assert_eq!((chunk.len(), chunk.tag()), (data.len(), tag));
                    let offset = usize::from(offset);
                    let n = chunk.read(offset, &mut buf);
                    assert_eq!(n, data.len().saturating_sub(offset));
                    if n > 0 {
                        assert_eq!(&buf[..n], &data[offset..]);
                    }
                    m.head += taken;
                }
                (Err(PopError::Empty), false) => {}
                (got, _) => panic!("read_chunk: {:?}, model {:?}", got.err(), m.visible()),
            },
        }
        assert!(!tx.is_poisoned() && !rx.is_poisoned());
        let staged: usize = m.frames.iter().rev().take(m.staged).map(|f| f.2).sum();
        assert_eq!(tx.staged_bytes(), staged);
    }
    tx.flush(N);
    // Drain: everything left comes out in order.
    while let Some((data, tag, _)) = m.frames.pop_front() {
        let info = rx.try_pop(&mut buf, N).expect("model has a frame");
        assert_eq!((&buf[..info.len], info.tag), (&data[..], tag));
    }
    drop(tx);
    assert_eq!(rx.try_pop(&mut buf, N), Err(PopError::Closed));
});
