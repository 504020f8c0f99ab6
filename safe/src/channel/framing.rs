//! Splitting messages into chunks and putting them back together, for transports whose unit is
//! smaller than a message (a POSIX mq message, a ring frame).
//!
//! # One protocol, one validator, two carriers
//!
//! A message is a run of chunks: the first is flagged FIRST and says how long the message is and
//! how many descriptors come with it, the last is flagged LAST, and a lone CLOSE chunk closes the
//! channel. [`Sequence`] checks every run a peer sends, whichever transport carried it: no FIRST
//! inside a message, no continuation without one, descriptors declared on the first chunk only,
//! a total within `max_message_size` (checked before anything is buffered), bytes never beyond
//! the total, and a LAST chunk that completes it exactly. Any deviation is
//! [`Corruption::BadChunk`]. The mq transport and the ring transport both feed it, so a framing
//! bug is fixed once and fuzzed once (`channel_chunks`).
//!
//! The carriers differ only in where the chunk header lives:
//!
//! - mq ([`ChunkHeader`]): 16 bytes at the start of each queue message, below.
//! - ring: the frame's 16-bit tag holds the flags and the descriptor count, and a FIRST frame
//!   that is not also LAST starts with the total as a u64 LE (a one-frame message's total is its
//!   length). So a one-frame message carries no header bytes and can be read in place.
//!
//! A message of `len` bytes becomes `max(1, ceil(len / room))` chunks; each mq chunk carries a
//! 16-byte header:
//!
//! ```text
//! byte  0      flags: FIRST 0x01, LAST 0x02, CLOSE 0x04 (others reserved, must be 0)
//! byte  1      magic 0x4D
//! byte  2      number of descriptors declared (first chunk only, else 0)
//! byte  3      0
//! bytes 4..8   chunk index within the message, u32 LE, starting at 0
//! bytes 8..16  total message length, u64 LE, the same in every chunk
//! ```
//!
//! The receiver ([`Reassembler`]) checks everything the peer claims: the first chunk starts a
//! message and says how long it is (checked against `max_message_size` before anything is
//! buffered), indices follow one another, the total never changes, the bytes never exceed the
//! total, and the last chunk completes it exactly. Any deviation is [`Corruption::BadChunk`].

use super::error::Corruption;

pub(crate) const CHUNK_HEADER_LEN: usize = 16;
pub(crate) const FIRST: u8 = 0x01;
pub(crate) const LAST: u8 = 0x02;
pub(crate) const CLOSE: u8 = 0x04;
const MAGIC: u8 = 0x4D;

/// A decoded chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub(crate) flags: u8,
    pub(crate) nfds: u8,
    pub(crate) index: u32,
    pub(crate) total: u64,
}

impl ChunkHeader {
    pub(crate) fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0] = self.flags;
        b[1] = MAGIC;
        b[2] = self.nfds;
        b[4..8].copy_from_slice(&self.index.to_le_bytes());
        b[8..16].copy_from_slice(&self.total.to_le_bytes());
        b
    }

    /// Decodes the header at the start of `bytes`, returning it and the payload after it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(ChunkHeader, &[u8]), Corruption> {
        if bytes.len() < CHUNK_HEADER_LEN {
            return Err(Corruption::BadChunk("chunk shorter than its header"));
        }
        let (h, payload) = bytes.split_at(CHUNK_HEADER_LEN);
        if h[1] != MAGIC || h[3] != 0 || h[0] & !(FIRST | LAST | CLOSE) != 0 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&h[..8]);
            return Err(Corruption::BadHeader(u64::from_le_bytes(word)));
        }
        let mut index = [0u8; 4];
        index.copy_from_slice(&h[4..8]);
        let mut total = [0u8; 8];
        total.copy_from_slice(&h[8..16]);
        Ok((
            ChunkHeader {
                flags: h[0],
                nfds: h[2],
                index: u32::from_le_bytes(index),
                total: u64::from_le_bytes(total),
            },
            payload,
        ))
    }
}

/// How many chunks a message of `len` bytes takes with `room` payload bytes per chunk.
pub(crate) fn chunk_count(len: usize, room: usize) -> usize {
    debug_assert!(room > 0);
    len.div_ceil(room).max(1)
}

/// The header of chunk `index` of a message of `len` bytes.
pub(crate) fn header_for(index: usize, len: usize, room: usize, nfds: usize) -> ChunkHeader {
    let count = chunk_count(len, room);
    let mut flags = 0;
    if index == 0 {
        flags |= FIRST;
    }
    if index + 1 == count {
        flags |= LAST;
    }
    ChunkHeader {
        flags,
        nfds: if index == 0 { nfds as u8 } else { 0 },
        index: index as u32,
        total: len as u64,
    }
}

/// The header of a close marker.
pub(crate) fn close_header() -> ChunkHeader {
    ChunkHeader {
        flags: CLOSE,
        nfds: 0,
        index: 0,
        total: 0,
    }
}

/// What one chunk did to the message being reassembled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// More chunks are needed.
    Partial,
    /// The message is complete in the reassembly buffer; the first chunk declared `nfds`.
    Complete { nfds: usize },
    /// The peer closed the channel.
    Close,
}

/// One chunk as a carrier decoded it, before any of it is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// FIRST / LAST / CLOSE.
    pub(crate) flags: u8,
    /// Descriptors declared (first chunk only).
    pub(crate) nfds: usize,
    /// The chunk's index, where the carrier sends one (mq); `None` where order is implicit (a
    /// ring delivers frames in order by construction).
    pub(crate) index: Option<u32>,
    /// The message's total length, where the chunk states it (every mq chunk; a ring's FIRST
    /// frame); `None` on a ring's continuation frames.
    pub(crate) total: Option<u64>,
    /// Payload bytes in this chunk.
    pub(crate) len: usize,
}

/// What an accepted chunk means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Append the chunk's `len` payload bytes; with `last`, the message is then complete and came
    /// with `nfds` descriptors (declared by its first chunk).
    Bytes {
        /// This chunk starts the message (the caller's buffer starts empty).
        first: bool,
        /// This chunk completes the message.
        last: bool,
        /// Descriptors the message's first chunk declared.
        nfds: usize,
    },
    /// The peer closed the channel.
    Close,
}

/// The chunk-sequence validator both chunking transports use (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    in_progress: bool,
    next_index: u32,
    total: u64,
    received: u64,
    nfds: usize,
}

impl Sequence {
    /// Whether part of a message has arrived.
    pub(crate) fn in_progress(&self) -> bool {
        self.in_progress
    }

    /// Checks one chunk against the sequence so far and the limit; on `Ok` the caller appends
    /// `c.len` bytes (never more than the total the first chunk announced).
    #[inline]
    pub(crate) fn accept(
        &mut self,
        c: &Chunk,
        max_message_size: usize,
    ) -> Result<Accepted, Corruption> {
        if c.flags & !(FIRST | LAST | CLOSE) != 0 {
            return Err(Corruption::BadChunk("unknown chunk flags"));
        }
        if c.flags & CLOSE != 0 {
            if c.flags != CLOSE
                || c.len != 0
                || c.nfds != 0
                || self.in_progress
                || c.total.unwrap_or(0) != 0
            {
                return Err(Corruption::BadChunk("close marker inside a message"));
            }
            return Ok(Accepted::Close);
        }
        let first = c.flags & FIRST != 0;
        if first {
            if self.in_progress {
                return Err(Corruption::BadChunk(
                    "a new message began before the last ended",
                ));
            }
            if c.index.is_some_and(|i| i != 0) {
                return Err(Corruption::BadChunk("first chunk with a non-zero index"));
            }
            let Some(total) = c.total else {
                return Err(Corruption::BadChunk("first chunk without a total length"));
            };
            if total > max_message_size as u64 {
                return Err(Corruption::TooLarge {
                    claimed: total,
                    max: max_message_size,
                });
            }
            self.in_progress = true;
            self.next_index = 0;
            self.total = total;
            self.received = 0;
            self.nfds = c.nfds;
        } else if !self.in_progress {
            return Err(Corruption::BadChunk(
                "continuation chunk without a first chunk",
            ));
        } else if c.nfds != 0 {
            return Err(Corruption::BadChunk(
                "descriptors declared after the first chunk",
            ));
        }
        if c.index.is_some_and(|i| i != self.next_index) {
            return Err(Corruption::BadChunk("chunk index out of sequence"));
        }
        if c.total.is_some_and(|t| t != self.total) {
            return Err(Corruption::BadChunk("total length changed between chunks"));
        }
        let received = self.received + c.len as u64;
        if received > self.total {
            return Err(Corruption::BadChunk(
                "chunks longer than the announced total",
            ));
        }
        let last = c.flags & LAST != 0;
        if last && received != self.total {
            return Err(Corruption::BadChunk(
                "last chunk before the announced total",
            ));
        }
        // Every check passed: only now do the chunk's bytes and index count.
        self.received = received;
        self.next_index = self.next_index.wrapping_add(1);
        if last {
            self.in_progress = false;
        }
        Ok(Accepted::Bytes {
            first,
            last,
            nfds: self.nfds,
        })
    }

    /// Forgets a half-received message (on poisoning).
    pub(crate) fn reset(&mut self) {
        self.in_progress = false;
    }
}

/// Puts mq chunks back together: their headers through [`Sequence`], their bytes in `buf`.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    seq: Sequence,
    /// The message so far; taken by the caller on [`Fed::Complete`].
    pub(crate) buf: Vec<u8>,
}

impl Reassembler {
    /// Whether part of a message has arrived.
    pub(crate) fn in_progress(&self) -> bool {
        self.seq.in_progress()
    }

    /// Feeds one chunk. On [`Fed::Complete`] the message is in `self.buf`.
    pub(crate) fn feed(
        &mut self,
        h: ChunkHeader,
        payload: &[u8],
        max_message_size: usize,
    ) -> Result<Fed, Corruption> {
        let c = Chunk {
            flags: h.flags,
            nfds: usize::from(h.nfds),
            index: Some(h.index),
            total: Some(h.total),
            len: payload.len(),
        };
        match self.seq.accept(&c, max_message_size)? {
            Accepted::Close => Ok(Fed::Close),
            Accepted::Bytes { first, last, nfds } => {
                if first {
                    self.buf.clear();
                }
                self.buf.extend_from_slice(payload);
                Ok(if last {
                    Fed::Complete { nfds }
                } else {
                    Fed::Partial
                })
            }
        }
    }

    /// Drops a half-received message (on poisoning).
    pub(crate) fn reset(&mut self) {
        self.seq.reset();
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(msg: &[u8], room: usize) -> Vec<Vec<u8>> {
        (0..chunk_count(msg.len(), room))
            .map(|i| {
                let mut c = header_for(i, msg.len(), room, usize::from(i == 0) * 2)
                    .encode()
                    .to_vec();
                let end = ((i + 1) * room).min(msg.len());
                c.extend_from_slice(&msg[i * room..end]);
                c
            })
            .collect()
    }

    fn feed_all(r: &mut Reassembler, cs: &[Vec<u8>]) -> Result<Fed, Corruption> {
        let mut last = Fed::Partial;
        for c in cs {
            let (h, p) = ChunkHeader::decode(c)?;
            last = r.feed(h, p, 1 << 20)?;
        }
        Ok(last)
    }

    #[test]
    fn round_trip_sizes() {
        for len in [0usize, 1, 99, 100, 101, 1000, 12345] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut r = Reassembler::default();
            assert_eq!(
                feed_all(&mut r, &chunks(&msg, 100)),
                Ok(Fed::Complete { nfds: 2 })
            );
            assert_eq!(r.buf, msg);
        }
    }

    #[test]
    fn rejects_bad_sequences() {
        let msg = vec![7u8; 350];
        let cs = chunks(&msg, 100);
        // Missing chunk.
        let mut r = Reassembler::default();
        assert!(feed_all(&mut r, &[cs[0].clone(), cs[2].clone()]).is_err());
        // Duplicate chunk.
        let mut r = Reassembler::default();
        assert!(feed_all(&mut r, &[cs[0].clone(), cs[1].clone(), cs[1].clone()]).is_err());
        // Continuation without a first.
        let mut r = Reassembler::default();
        assert!(feed_all(&mut r, &[cs[1].clone()]).is_err());
        // New first inside a message.
        let mut r = Reassembler::default();
        assert!(feed_all(&mut r, &[cs[0].clone(), cs[0].clone()]).is_err());
        // Total changed.
        let mut r = Reassembler::default();
        let mut c1 = cs[1].clone();
        c1[8] ^= 1;
        assert!(feed_all(&mut r, &[cs[0].clone(), c1]).is_err());
        // Last too early.
        let mut r = Reassembler::default();
        let mut c1 = cs[1].clone();
        c1[0] |= LAST;
        assert!(feed_all(&mut r, &[cs[0].clone(), c1]).is_err());
        // Forged huge total.
        let mut r = Reassembler::default();
        let mut c0 = cs[0].clone();
        c0[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            feed_all(&mut r, &[c0]),
            Err(Corruption::TooLarge { .. })
        ));
        // Junk.
        let mut r = Reassembler::default();
        assert!(feed_all(&mut r, &[vec![0xff; 20]]).is_err());
        assert!(feed_all(&mut r, &[vec![0x01; 3]]).is_err());
    }

    /// Each header check on its own: one bad field in an otherwise valid header.
    #[test]
    fn decode_checks_each_field() {
        let good = header_for(0, 10, 100, 1).encode();
        assert!(ChunkHeader::decode(&good).is_ok());
        for (i, byte) in [(1, 0x4C), (3, 1), (0, 0x08), (0, 0x80)] {
            let mut h = good;
            h[i] = byte;
            let word = u64::from_le_bytes(h[..8].try_into().unwrap());
            assert_eq!(
                ChunkHeader::decode(&h),
                Err(Corruption::BadHeader(word)),
                "byte {i} = {byte:#x}"
            );
        }
        // Every known flag combination decodes.
        for flags in 0..8 {
            let mut h = good;
            h[0] = flags;
            assert_eq!(ChunkHeader::decode(&h).unwrap().0.flags, flags);
        }
    }

    fn chunk(flags: u8, nfds: usize, index: Option<u32>, total: Option<u64>, len: usize) -> Chunk {
        Chunk {
            flags,
            nfds,
            index,
            total,
            len,
        }
    }

    fn rejects(seq: &mut Sequence, c: Chunk, why: &'static str) {
        assert_eq!(
            seq.accept(&c, 1000),
            Err(Corruption::BadChunk(why)),
            "{c:?}"
        );
    }

    /// Each of `Sequence::accept`'s checks on its own, with the reason it gives, and
    /// `in_progress` / `reset` following the message.
    #[test]
    fn sequence_checks_each_rule() {
        let mut seq = Sequence::default();
        // Close: only a bare marker between messages.
        let close = chunk(CLOSE, 0, Some(0), Some(0), 0);
        assert_eq!(seq.accept(&close, 1000), Ok(Accepted::Close));
        assert_eq!(
            seq.accept(&chunk(CLOSE, 0, None, None, 0), 1000),
            Ok(Accepted::Close)
        );
        let inside = "close marker inside a message";
        rejects(
            &mut seq,
            chunk(CLOSE | LAST, 0, Some(0), Some(0), 0),
            inside,
        );
        rejects(&mut seq, chunk(CLOSE, 0, Some(0), Some(0), 1), inside);
        rejects(&mut seq, chunk(CLOSE, 1, Some(0), Some(0), 0), inside);
        rejects(&mut seq, chunk(CLOSE, 0, Some(0), Some(5), 0), inside);
        rejects(
            &mut seq,
            chunk(0x10, 0, Some(0), Some(0), 0),
            "unknown chunk flags",
        );
        rejects(
            &mut seq,
            chunk(0x10 | FIRST, 0, Some(0), Some(0), 0),
            "unknown chunk flags",
        );
        // First chunks.
        rejects(
            &mut seq,
            chunk(FIRST, 0, Some(1), Some(10), 5),
            "first chunk with a non-zero index",
        );
        rejects(
            &mut seq,
            chunk(FIRST, 0, Some(0), None, 5),
            "first chunk without a total length",
        );
        assert_eq!(
            seq.accept(&chunk(FIRST, 0, Some(0), Some(1001), 5), 1000),
            Err(Corruption::TooLarge {
                claimed: 1001,
                max: 1000
            })
        );
        rejects(
            &mut seq,
            chunk(0, 0, Some(0), Some(10), 5),
            "continuation chunk without a first chunk",
        );
        assert!(!seq.in_progress());
        // A message of 1000 bytes (exactly the limit) in three chunks, with 2 descriptors.
        assert_eq!(
            seq.accept(&chunk(FIRST, 2, Some(0), Some(1000), 400), 1000),
            Ok(Accepted::Bytes {
                first: true,
                last: false,
                nfds: 2
            })
        );
        assert!(seq.in_progress());
        rejects(&mut seq, close, inside);
        rejects(
            &mut seq,
            chunk(FIRST, 0, Some(0), Some(10), 5),
            "a new message began before the last ended",
        );
        rejects(
            &mut seq,
            chunk(0, 1, Some(1), Some(1000), 400),
            "descriptors declared after the first chunk",
        );
        rejects(
            &mut seq,
            chunk(0, 0, Some(2), Some(1000), 400),
            "chunk index out of sequence",
        );
        rejects(
            &mut seq,
            chunk(0, 0, Some(1), Some(999), 400),
            "total length changed between chunks",
        );
        rejects(
            &mut seq,
            chunk(0, 0, Some(1), Some(1000), 601),
            "chunks longer than the announced total",
        );
        rejects(
            &mut seq,
            chunk(LAST, 0, Some(1), Some(1000), 599),
            "last chunk before the announced total",
        );
        // None of the refusals moved the sequence on: chunk 1 (no index or total, as a ring
        // continuation carries), then the last chunk, exactly reaching the total.
        assert_eq!(
            seq.accept(&chunk(0, 0, None, None, 400), 1000),
            Ok(Accepted::Bytes {
                first: false,
                last: false,
                nfds: 2
            })
        );
        assert_eq!(
            seq.accept(&chunk(LAST, 0, Some(2), Some(1000), 200), 1000),
            Ok(Accepted::Bytes {
                first: false,
                last: true,
                nfds: 2
            })
        );
        assert!(!seq.in_progress());
        // reset forgets a half-received message: a continuation is refused, a first accepted.
        seq.accept(&chunk(FIRST, 0, Some(0), Some(10), 5), 1000)
            .unwrap();
        assert!(seq.in_progress());
        seq.reset();
        assert!(!seq.in_progress());
        rejects(
            &mut seq,
            chunk(LAST, 0, Some(1), Some(10), 5),
            "continuation chunk without a first chunk",
        );
        assert!(seq
            .accept(&chunk(FIRST | LAST, 0, Some(0), Some(0), 0), 1000)
            .is_ok());
    }

    /// The reassembler reports a message in progress, and forgets it (and its bytes) on reset.
    #[test]
    fn reassembler_reset_drops_the_partial_message() {
        let msg = vec![3u8; 250];
        let cs = chunks(&msg, 100);
        let mut r = Reassembler::default();
        assert!(!r.in_progress());
        assert_eq!(feed_all(&mut r, &cs[..2]), Ok(Fed::Partial));
        assert!(r.in_progress());
        assert_eq!(r.buf.len(), 200);
        r.reset();
        assert!(!r.in_progress());
        assert!(
            r.buf.is_empty() && r.buf.capacity() == 0,
            "the buffer is released"
        );
        assert!(feed_all(&mut r, &cs[2..]).is_err(), "the rest is refused");
        assert_eq!(feed_all(&mut r, &cs), Ok(Fed::Complete { nfds: 2 }));
        assert!(!r.in_progress());
        assert_eq!(r.buf, msg);
    }
}
