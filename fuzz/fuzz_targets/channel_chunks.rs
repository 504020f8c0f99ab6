//! Hostile input for the mq channel's chunk reassembly: an arbitrary sequence of queue messages
//! (raw bytes, or chunk headers built from arbitrary fields near the valid ones) fed to the
//! production decoder and `Reassembler` through `flowipc::channel::fuzzing`, with a small
//! `max_message_size`.
//!
//! Every outcome is checked against an independent model of the wire format (`chunk.rs` module
//! docs): the same chunks must be accepted and rejected, and a completed message must be exactly
//! the payloads since its FIRST chunk, as long as its declared total and never above the maximum.
//! After an error the reassembler is reset, as the mq transport does when it poisons the channel.
#![no_main]

use arbitrary::Arbitrary;
use flowipc::channel::fuzzing::{
    chunk_encode_header, Fed, Reassembly, CHUNK_CLOSE, CHUNK_FIRST, CHUNK_HEADER_LEN, CHUNK_LAST,
};
use libfuzzer_sys::fuzz_target;

const MAGIC: u8 = 0x4D;

#[derive(Arbitrary, Debug)]
enum Index {
    /// The one the receiver expects next.
    Next,
    /// Next plus a small offset (duplicates, gaps).
    Near(i8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum Total {
    /// The total of the message in progress (or the payload length if none).
    Same,
    /// Slightly off from `Same`.
    Near(i8),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Chunk {
    /// A queue message of arbitrary bytes.
    Raw(Vec<u8>),
    /// A header from (possibly hostile) fields, then `payload` bytes.
    Built {
        flags: u8,
        /// Keep only the defined flag bits (most of the time the interesting case).
        mask_flags: bool,
        nfds: u8,
        index: Index,
        total: Total,
        payload: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    max: u16,
    chunks: Vec<Chunk>,
}

/// The receiver's state as the wire format describes it.
#[derive(Default)]
struct Model {
    /// `Some((next index, total, bytes so far, nfds))` while a message is in progress.
    msg: Option<(u32, u64, Vec<u8>, usize)>,
}

enum Expect {
    Err,
    Partial,
    Complete(Vec<u8>, usize),
    Close,
}

impl Model {
    fn feed(&mut self, chunk: &[u8], max: usize) -> Expect {
        if chunk.len() < CHUNK_HEADER_LEN {
            return Expect::Err;
        }
        let (h, payload) = chunk.split_at(CHUNK_HEADER_LEN);
        let flags = h[0];
        if h[1] != MAGIC || h[3] != 0 || flags & !(CHUNK_FIRST | CHUNK_LAST | CHUNK_CLOSE) != 0 {
            return Expect::Err;
        }
        let nfds = usize::from(h[2]);
        let index = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let total = u64::from_le_bytes(h[8..16].try_into().unwrap());
        if flags & CHUNK_CLOSE != 0 {
            // A close marker carries nothing: no bytes, no total, no descriptors (the validator
            // the ring shares checks all three).
            let ok = flags == CHUNK_CLOSE
                && payload.is_empty()
                && self.msg.is_none()
                && total == 0
                && nfds == 0;
            return if ok { Expect::Close } else { Expect::Err };
        }
        let (next, want_total, mut bytes, msg_nfds) = if flags & CHUNK_FIRST != 0 {
            if self.msg.is_some() || index != 0 || total > max as u64 {
                return Expect::Err;
            }
            (0, total, Vec::new(), nfds)
        } else {
            match self.msg.take() {
                Some(m) if nfds == 0 => m,
                _ => return Expect::Err,
            }
        };
        if index != next || total != want_total {
            return Expect::Err;
        }
        if (bytes.len() + payload.len()) as u64 > want_total {
            return Expect::Err;
        }
        bytes.extend_from_slice(payload);
        if flags & CHUNK_LAST != 0 {
            if bytes.len() as u64 != want_total {
                return Expect::Err;
            }
            return Expect::Complete(bytes, msg_nfds);
        }
        self.msg = Some((next.wrapping_add(1), want_total, bytes, msg_nfds));
        Expect::Partial
    }

    /// Next index and total the receiver expects.
    fn expected(&self) -> (u32, Option<u64>) {
        match &self.msg {
            Some((next, total, _, _)) => (*next, Some(*total)),
            None => (0, None),
        }
    }
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max % 8192);
    let mut r = Reassembly::new(max);
    let mut model = Model::default();
    let mut buf = Vec::new();
    for (n, c) in input.chunks.into_iter().take(512).enumerate() {
        buf.clear();
        match c {
            Chunk::Raw(bytes) => buf.extend_from_slice(&bytes),
            Chunk::Built {
                flags,
                mask_flags,
                nfds,
                index,
                total,
                payload,
            } => {
                let flags = if mask_flags {
                    flags & (CHUNK_FIRST | CHUNK_LAST | CHUNK_CLOSE)
                } else {
                    flags
                };
                let payload = usize::from(payload % 4096);
                let (next, cur_total) = model.expected();
                let index = match index {
                    Index::Next => next,
                    Index::Near(d) => next.wrapping_add_signed(i32::from(d)),
                    Index::Any(i) => i,
                };
                let same = cur_total.unwrap_or(payload as u64);
                let total = match total {
                    Total::Same => same,
                    Total::Near(d) => same.wrapping_add_signed(i64::from(d)),
                    Total::Any(t) => t,
                };
                buf.extend_from_slice(&chunk_encode_header(flags, nfds, index, total));
                buf.extend((0..payload).map(|i| (i ^ n) as u8));
            }
        }
        let expect = model.feed(&buf, max);
        match (r.feed(&buf), expect) {
            (Ok(Fed::Partial), Expect::Partial) => {
                assert!(r.in_progress());
                assert!(r.message().len() <= max);
            }
            (Ok(Fed::Complete { nfds }), Expect::Complete(bytes, want_nfds)) => {
                assert!(!r.in_progress());
                assert!(r.message().len() <= max, "message above the maximum");
                assert_eq!(r.message(), &bytes[..], "reassembled bytes differ");
                assert_eq!(nfds, want_nfds);
            }
            (Ok(Fed::Close), Expect::Close) => assert!(!r.in_progress()),
            (Err(_), Expect::Err) => {
                // The mq transport poisons the channel and drops the partial message.
                r.reset();
                model = Model::default();
                assert!(!r.in_progress());
            }
            (got, _) => panic!("reassembler and model disagree: got {got:?}"),
        }
    }
});
