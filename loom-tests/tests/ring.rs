//! loom models of the ring's publish/consume protocol: a producer thread and a consumer thread (two
//! processes in real use) over a tiny ring, so that every interleaving of the position loads and
//! stores, including the wrap with a padding frame and the full ring, is explored.
//!
//! Run with `RUSTFLAGS="--cfg flowipc_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p flowipc-loom-tests
//! --release --test ring`.
//!
//! loom checks the atomics (positions, waiting words, closed flags); the frame bytes are plain memory
//! that loom does not track, so their ordering against the positions is checked by miri's data-race
//! detector in `flowipc-core`'s threaded unit tests. Here the contents are still compared, so a frame
//! read before it was written, or overwritten before it was read, fails the model.
#![cfg(flowipc_loom)]

use flowipc_core::ring::{Consumer, PopError, Producer, PushError, Ring};
use flowipc_core::wait::NoopNotifier;
use flowipc_loom_tests::explore;
use loom::thread;

/// Payload of frame `seq` with length `len`.
fn payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq * 16 + i) as u8).collect()
}

fn push_spinning(tx: &mut Producer, data: &[u8], tag: u16) {
    loop {
        match tx.try_push_tagged(data, tag, &NoopNotifier) {
            Ok(()) => return,
            Err(PushError::Full) => thread::yield_now(),
            Err(e) => panic!("push: {e}"),
        }
    }
}

fn pop_spinning(rx: &mut Consumer, buf: &mut [u8]) -> (usize, u16) {
    loop {
        match rx.try_pop(buf, &NoopNotifier) {
            Ok(info) => return (info.len, info.tag),
            Err(PopError::Empty) => thread::yield_now(),
            Err(e) => panic!("pop: {e}"),
        }
    }
}

/// Frame sizes for a 32-byte ring (largest payload 8): frames of 16, 16, 8, 16 bytes, then one of
/// 16 at offset 24, which does not fit before the end and goes behind an 8-byte padding frame.
const SIZES: [usize; 5] = [5, 8, 0, 3, 8];

/// Copying push and pop of frames of several sizes, through a full ring and a wrap with padding.
#[test]
fn publish_consume_with_wrap_and_padding() {
    explore("publish_consume_with_wrap_and_padding", || {
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let producer = thread::spawn(move || {
            for (seq, &len) in SIZES.iter().enumerate() {
                push_spinning(&mut tx, &payload(seq, len), seq as u16);
            }
        });
        let mut buf = [0u8; 8];
        for (seq, &len) in SIZES.iter().enumerate() {
            let (got, tag) = pop_spinning(&mut rx, &mut buf);
            assert_eq!((got, tag), (len, seq as u16));
            assert_eq!(&buf[..len], &payload(seq, len)[..]);
        }
        producer.join().unwrap();
        assert_eq!(rx.try_pop(&mut buf, &NoopNotifier), Err(PopError::Closed));
        assert!(!rx.is_poisoned());
    });
}

/// In-place `write_chunk` / `read_chunk`, with a chunk committed shorter than reserved and one
/// dropped without commit, through the wrap.
#[test]
fn chunks_in_place_with_wrap() {
    explore("chunks_in_place_with_wrap", || {
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let producer = thread::spawn(move || {
            for (seq, &len) in SIZES.iter().enumerate() {
                loop {
                    match tx.write_chunk(8) {
                        Ok(mut chunk) => {
                            if seq == 2 {
                                // Abandoned after its last use: publishes nothing.
                                chunk.write(0, &[0xee; 8]);
                                let mut chunk = tx.write_chunk(len).unwrap();
                                chunk.write(0, &payload(seq, len));
                                chunk.commit(len, seq as u16, &NoopNotifier);
                            } else {
                                chunk.write(0, &payload(seq, len));
                                chunk.commit(len, seq as u16, &NoopNotifier);
                            }
                            break;
                        }
                        Err(PushError::Full) => thread::yield_now(),
                        Err(e) => panic!("write_chunk: {e}"),
                    }
                }
            }
        });
        for (seq, &len) in SIZES.iter().enumerate() {
            loop {
                match rx.read_chunk(&NoopNotifier) {
                    Ok(chunk) => {
                        assert_eq!((chunk.len(), chunk.tag()), (len, seq as u16));
                        let mut buf = [0u8; 8];
                        chunk.read(0, &mut buf);
                        assert_eq!(&buf[..len], &payload(seq, len)[..]);
                        break;
                    }
                    Err(PopError::Empty) => thread::yield_now(),
                    Err(e) => panic!("read_chunk: {e}"),
                }
            }
        }
        producer.join().unwrap();
    });
}

/// Producer closes after its last frame: the consumer gets every frame, then `Closed`, never
/// `Closed` early.
#[test]
fn close_after_data() {
    explore("close_after_data", || {
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let producer = thread::spawn(move || {
            push_spinning(&mut tx, &[1, 2, 3], 7);
            push_spinning(&mut tx, &[4; 8], 8);
            tx.close(&NoopNotifier);
        });
        let mut buf = [0u8; 8];
        let mut got = Vec::new();
        loop {
            match rx.try_pop(&mut buf, &NoopNotifier) {
                Ok(info) => got.push((buf[..info.len].to_vec(), info.tag)),
                Err(PopError::Empty) => thread::yield_now(),
                Err(PopError::Closed) => break,
                Err(e) => panic!("pop: {e}"),
            }
        }
        assert_eq!(got, vec![(vec![1, 2, 3], 7), (vec![4; 8], 8)]);
        producer.join().unwrap();
    });
}

/// The consumer closes while the producer fills the ring: the producer sees `Closed` (or finishes),
/// never corruption, and never blocks forever.
#[test]
fn consumer_close_stops_producer() {
    explore("consumer_close_stops_producer", || {
        let (mut tx, mut rx) = Ring::with_capacity(32);
        let producer = thread::spawn(move || {
            for seq in 0..3u16 {
                loop {
                    match tx.try_push_tagged(&[0; 8], seq, &NoopNotifier) {
                        Ok(()) => break,
                        Err(PushError::Full) => thread::yield_now(),
                        Err(PushError::Closed) => return,
                        Err(e) => panic!("push: {e}"),
                    }
                }
            }
        });
        let mut buf = [0u8; 8];
        let (_, tag) = pop_spinning(&mut rx, &mut buf);
        assert_eq!(tag, 0);
        rx.close(&NoopNotifier);
        producer.join().unwrap();
    });
}
