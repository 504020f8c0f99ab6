//! The Unix stream socket transport: length-prefixed frames, descriptors by `SCM_RIGHTS`.
//!
//! # Wire format
//!
//! Every message is an 8-byte little-endian header followed by its payload:
//!
//! ```text
//! bits  0..48  payload length in bytes (checked against max_message_size)
//! bits 48..56  number of descriptors attached (0..=253, checked against max_fds_per_message)
//! bits 56..64  kind: 0xD1 data, 0xD2 data carrying a channel (`send_channel`), 0xC1 close
//!              (any other value: the stream is corrupt)
//! ```
//!
//! Descriptors ride the `sendmsg` that carries the first byte of their message's header; nothing
//! else starts in that `sendmsg`. On a stream socket the kernel hands descriptors to the `recvmsg`
//! that reads the first byte of the `sendmsg` they came with and ends that read after it, so a
//! batch of descriptors belongs to the header that *begins inside the bytes of the read that
//! delivered it*. The receiver records, for every batch, the stream offsets of its read, and a
//! header claims the batch only if it begins inside that range and declares exactly as many
//! descriptors as arrived. Anything else (descriptors no header declares, a count mismatch, a
//! truncated control message) is [`Corruption`]; the descriptors are closed.
//!
//! # System calls per message
//!
//! A send is one gather `sendmsg` of the header and the payload as they are (no copy into a
//! staging buffer); a stream socket may take only part of it, and the rest follows with plain
//! `send`s. A small message without descriptors is copied next to its header and sent with one
//! `send` instead, which the kernel handles faster than a two-part `sendmsg`. In blocking mode
//! the calls block in the kernel instead of polling first.
//!
//! Reads go through a 128 KiB buffer, so many small messages cost one `recvmsg`. Between messages,
//! when the message buffer (reused from the previous message) holds at least 4 KiB, a read
//! scatters: the next header lands in the read buffer, the bytes after it straight in the
//! message buffer (as far as that buffer is already allocated, at most the read buffer's size),
//! and whatever follows in the read buffer again. Bytes past the end of the message are moved
//! into the read buffer where they would have landed, so the read buffer always mirrors the
//! stream and descriptor batches keep their stream offsets. The rest of a large payload is read
//! straight into the message buffer, which grows with the bytes actually received (never to a
//! size the peer merely claimed). In blocking mode (no deadline) the receive blocks in `recvmsg`
//! rather than in `poll`: one system call per read, and a peer's death is the end of the stream
//! it returns.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use flowipc_sys::socket::{
    self, IoSlice, IoSliceMut, PollFd, PollFlags, RecvFds, RecvFlags, SendFlags,
};
use flowipc_sys::Errno;

use crate::channel::error::{Corruption, RecvError, SendError};
use crate::channel::{Limits, SendCursor, Step};

/// Header length in bytes.
pub(crate) const HEADER_LEN: usize = 8;
const LEN_MASK: u64 = (1 << 48) - 1;
const KIND_DATA: u64 = 0xD1;
/// A data message that carries a channel's descriptors ([`SendCursor::channel`]).
const KIND_CHANNEL: u64 = 0xD2;
const KIND_CLOSE: u64 = 0xC1;

/// Size of the read buffer.
const RBUF_LEN: usize = 128 * 1024;
/// A payload remainder at least this long is read straight into the message buffer.
const DIRECT_MIN: u64 = 16 * 1024;
/// A read scatters into the message buffer only if at least this much of it is ready: below,
/// copying from the read buffer costs less than the kernel's handling of a three-part `iovec`.
const SCATTER_MIN: usize = 4 * 1024;
/// A message without descriptors up to this long (header included) is copied next to its header
/// and sent with `send`: cheaper in the kernel than a two-part `sendmsg`.
const SMALL_SEND: usize = 4 * 1024;
/// A correct peer leaves at most two batches unclaimed (see the module docs); more is an attack.
const MAX_BATCHES: usize = 4;
/// The message buffer kept between messages is dropped when it grew beyond this.
const KEEP_CAPACITY: usize = 8 * 1024 * 1024;

/// Encodes a frame header.
pub(crate) fn encode_header(close: bool, channel: bool, len: u64, nfds: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= LEN_MASK && nfds <= socket::MAX_FDS_PER_MESSAGE);
    let kind = match (close, channel) {
        (true, _) => KIND_CLOSE,
        (false, true) => KIND_CHANNEL,
        (false, false) => KIND_DATA,
    };
    ((kind << 56) | ((nfds as u64) << 48) | (len & LEN_MASK)).to_le_bytes()
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    Data {
        len: u64,
        nfds: usize,
        /// The message carries a channel.
        channel: bool,
    },
    Close,
}

/// Decodes and validates a frame header against this side's limits.
pub(crate) fn decode_header(
    bytes: [u8; HEADER_LEN],
    limits: &Limits,
) -> Result<Header, Corruption> {
    let word = u64::from_le_bytes(bytes);
    let len = word & LEN_MASK;
    let nfds = ((word >> 48) & 0xff) as usize;
    match word >> 56 {
        kind @ (KIND_DATA | KIND_CHANNEL) => {
            if len > limits.max_message_size as u64 {
                return Err(Corruption::TooLarge {
                    claimed: len,
                    max: limits.max_message_size,
                });
            }
            if nfds > limits.max_fds_per_message {
                return Err(Corruption::TooManyFds {
                    declared: nfds,
                    max: limits.max_fds_per_message,
                });
            }
            Ok(Header::Data {
                len,
                nfds,
                channel: kind == KIND_CHANNEL,
            })
        }
        KIND_CLOSE if len == 0 && nfds == 0 => Ok(Header::Close),
        _ => Err(Corruption::BadHeader(word)),
    }
}

/// Descriptors delivered by one read, with the stream offsets that read covered.
#[derive(Debug)]
struct FdBatch {
    start: u64,
    end: u64,
    fds: Vec<OwnedFd>,
}

/// The message being received.
#[derive(Debug)]
struct Incoming {
    remaining: u64,
    fds: Vec<OwnedFd>,
}

/// Core of the socket transport: non-blocking steps, or blocking ones when asked.
#[derive(Debug)]
pub(crate) struct SocketTransport {
    sock: OwnedFd,
    limits: Limits,
    /// Header and payload of a small message, sent in one piece (see [`SMALL_SEND`]).
    small: Vec<u8>,
    /// The read buffer; `rbuf[i]` holds stream offset `rbase + i` (see the module docs for the
    /// bytes a scattered read puts in the message buffer instead).
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Stream offset of `rbuf[0]`.
    rbase: u64,
    fdbuf: Box<RecvFds>,
    batches: VecDeque<FdBatch>,
    incoming: Option<Incoming>,
    /// The message buffer. `assembling[..filled]` is the payload received so far; the rest of
    /// its length is initialized bytes (of an earlier message) that reads may overwrite without
    /// zeroing them first.
    assembling: Vec<u8>,
    filled: usize,
    /// Payload bytes of the next message that a scattered read put in `assembling` already;
    /// claimed by `start_message`.
    prefilled: usize,
    peer_closed: bool,
    eof: bool,
    /// Whether the message `recv_step` last completed carries a channel.
    last_channel: bool,
}

impl SocketTransport {
    pub(crate) fn new(sock: OwnedFd, limits: Limits) -> Self {
        SocketTransport {
            sock,
            fdbuf: Box::new(RecvFds::with_limit(limits.max_fds_per_message)),
            limits,
            small: Vec::with_capacity(SMALL_SEND),
            rbuf: vec![0; RBUF_LEN].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            rbase: 0,
            batches: VecDeque::new(),
            incoming: None,
            assembling: Vec::new(),
            filled: 0,
            prefilled: 0,
            peer_closed: false,
            eof: false,
            last_channel: false,
        }
    }

    /// A second transport on a duplicate of the socket, for the sending half of a split channel.
    pub(crate) fn split_sender(&self) -> Result<Self, Errno> {
        Ok(SocketTransport::new(
            flowipc_sys::fd::dup_cloexec(self.sock.as_fd())?,
            self.limits,
        ))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// Closes every descriptor received but not handed out (on poisoning).
    pub(crate) fn discard(&mut self) {
        self.batches.clear();
        self.incoming = None;
        self.prefilled = 0;
        self.fdbuf.clear();
    }

    /// Whether the message the last successful `recv_step` returned carries a channel.
    pub(crate) fn last_carries_channel(&self) -> bool {
        self.last_channel
    }

    /// Whether bytes of the peer were read but not yet handed out as a message.
    pub(crate) fn has_buffered_input(&self) -> bool {
        self.rend > self.rstart || self.incoming.is_some() || !self.batches.is_empty()
    }

    /// Sends as much of the message as the socket takes: without blocking, or, with `block`,
    /// blocking in the kernel until it took everything (or a signal or an error ends the call).
    pub(crate) fn send_step(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        block: bool,
    ) -> Result<Step, SendError> {
        let (data, fds) = if cur.close {
            (&[][..], &[][..])
        } else {
            (data, fds)
        };
        let header = encode_header(cur.close, cur.channel, data.len() as u64, fds.len());
        let total = HEADER_LEN + data.len();
        let flags = if block {
            SendFlags::empty()
        } else {
            SendFlags::DONTWAIT
        };
        while cur.pos < total {
            let sent = if cur.pos == 0 && fds.is_empty() && total <= SMALL_SEND {
                self.small.clear();
                self.small.extend_from_slice(&header);
                self.small.extend_from_slice(data);
                socket::send(self.sock.as_fd(), &self.small, flags)
            } else if cur.pos < HEADER_LEN {
                // The header (or what is left of it) and the payload, gathered in one sendmsg;
                // the descriptors ride its first byte, so only the call at position 0 has them.
                let parts = [IoSlice::new(&header[cur.pos..]), IoSlice::new(data)];
                let fds = if cur.pos == 0 { fds } else { &[] };
                socket::send_vectored_with_fds(self.sock.as_fd(), &parts, fds, flags)
            } else {
                socket::send(self.sock.as_fd(), &data[cur.pos - HEADER_LEN..], flags)
            };
            match sent {
                Ok(n) => {
                    cur.pos += n;
                    cur.fds_sent |= !fds.is_empty();
                }
                Err(Errno::AGAIN) => return Ok(Step::Blocked),
                Err(Errno::INTR) => {}
                Err(e) => return Err(SendError::os("sendmsg on the channel socket", e)),
            }
        }
        Ok(Step::Done)
    }

    /// Receives a complete message into `out`: if one can be had without blocking, or, with
    /// `block`, waiting in `recvmsg` for it.
    ///
    /// `Ok(None)`: would block (with `block` only if the socket itself is non-blocking). On
    /// success `out` holds the message (its previous buffer is kept for the next message).
    pub(crate) fn recv_step(
        &mut self,
        out: &mut Vec<u8>,
        block: bool,
    ) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        loop {
            let Some(incoming) = self.incoming.as_mut() else {
                if self.peer_closed {
                    return Err(RecvError::Closed);
                }
                if self.rend - self.rstart >= HEADER_LEN {
                    self.start_message()?;
                    continue;
                }
                if self.eof {
                    return Err(RecvError::PeerGone);
                }
                if !self.fill(block)? {
                    return Ok(None);
                }
                continue;
            };
            let avail = (self.rend - self.rstart) as u64;
            if avail > 0 && incoming.remaining > 0 {
                let n = avail.min(incoming.remaining) as usize;
                let bytes = &self.rbuf[self.rstart..self.rstart + n];
                let end = self.filled + n;
                if end <= self.assembling.len() {
                    self.assembling[self.filled..end].copy_from_slice(bytes);
                } else {
                    self.assembling.truncate(self.filled);
                    self.assembling.extend_from_slice(bytes);
                }
                self.filled = end;
                self.rstart += n;
                incoming.remaining -= n as u64;
            }
            if incoming.remaining == 0 {
                let fds = std::mem::take(&mut incoming.fds);
                self.incoming = None;
                self.assembling.truncate(self.filled);
                self.filled = 0;
                std::mem::swap(out, &mut self.assembling);
                // The caller's old buffer becomes the next message buffer, bytes and all: its
                // length is what later reads may overwrite without zeroing.
                if self.assembling.capacity() > KEEP_CAPACITY {
                    self.assembling = Vec::new();
                }
                return Ok(Some(fds));
            }
            if self.eof {
                return Err(RecvError::PeerGone);
            }
            let progressed = if incoming.remaining >= DIRECT_MIN {
                let remaining = incoming.remaining;
                self.read_direct(remaining, block)?
            } else {
                self.fill(block)?
            };
            if !progressed {
                return Ok(None);
            }
        }
    }

    /// Parses the header at `rstart` (at least 8 bytes are buffered) and claims its descriptors
    /// and the payload bytes a scattered read put in the message buffer.
    fn start_message(&mut self) -> Result<(), RecvError> {
        let at = self.rbase + self.rstart as u64;
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(&self.rbuf[self.rstart..self.rstart + HEADER_LEN]);
        let prefilled = std::mem::take(&mut self.prefilled);
        let header = decode_header(bytes, &self.limits)?;
        self.rstart += HEADER_LEN;
        let (len, nfds) = match header {
            Header::Close => {
                self.peer_closed = true;
                self.batches.clear();
                return Err(RecvError::Closed);
            }
            Header::Data { len, nfds, channel } => {
                self.last_channel = channel;
                (len, nfds)
            }
        };
        let fds = match self.batches.front() {
            Some(batch) if batch.end <= at => return Err(Corruption::UnexpectedFds.into()),
            Some(batch) if nfds > 0 && batch.start <= at => {
                let batch = self.batches.pop_front().map(|b| b.fds).unwrap_or_default();
                if batch.len() != nfds {
                    return Err(Corruption::FdCountMismatch {
                        declared: nfds,
                        arrived: batch.len(),
                    }
                    .into());
                }
                batch
            }
            // Descriptors arrived in the read where this header begins, this message declares
            // none, and it runs to the end of that read, so no later header can claim them.
            Some(batch) if batch.start <= at && at + HEADER_LEN as u64 + len >= batch.end => {
                return Err(Corruption::UnexpectedFds.into())
            }
            _ if nfds > 0 => {
                return Err(Corruption::FdCountMismatch {
                    declared: nfds,
                    arrived: 0,
                }
                .into())
            }
            _ => Vec::new(),
        };
        // `fill` counted these bytes as this message's payload from the same header, so they are
        // at most `len`; they sit in `assembling[..prefilled]` and stand for the read buffer's
        // next `prefilled` bytes.
        debug_assert!(prefilled as u64 <= len);
        self.rstart += prefilled;
        self.filled = prefilled;
        self.incoming = Some(Incoming {
            remaining: len - prefilled as u64,
            fds,
        });
        Ok(())
    }

    /// One read into the read buffer, scattered into the message buffer too when it starts a
    /// message (see the module docs). `Ok(false)`: nothing to read yet.
    fn fill(&mut self, block: bool) -> Result<bool, RecvError> {
        if self.rstart == self.rend {
            self.rbase += self.rstart as u64;
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < HEADER_LEN * 2 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rbase += self.rstart as u64;
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let start = self.rend;
        // At a message boundary with nothing buffered, the header goes to `rbuf[..8]` and what
        // follows to the message buffer's initialized bytes, then to `rbuf[8 + direct..]`.
        let direct =
            if self.incoming.is_none() && start == 0 && self.assembling.len() >= SCATTER_MIN {
                self.assembling.len().min(RBUF_LEN - HEADER_LEN)
            } else {
                0
            };
        let flags = if block {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        let n = loop {
            let got = if direct > 0 {
                let (head, tail) = self.rbuf.split_at_mut(HEADER_LEN);
                let mut bufs = [
                    IoSliceMut::new(head),
                    IoSliceMut::new(&mut self.assembling[..direct]),
                    IoSliceMut::new(&mut tail[direct..]),
                ];
                socket::recv_vectored_with_fds(self.sock.as_fd(), &mut bufs, &mut self.fdbuf, flags)
            } else {
                socket::recv_with_fds(
                    self.sock.as_fd(),
                    &mut self.rbuf[start..],
                    &mut self.fdbuf,
                    flags,
                )
            };
            match got {
                Ok(n) => break n,
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(Errno::MSGSIZE) => return Err(Corruption::FdsTruncated.into()),
                Err(e) => return Err(RecvError::os("recvmsg on the channel socket", e)),
            }
        };
        if n == 0 {
            self.eof = true;
            self.fdbuf.clear();
            return Ok(true);
        }
        self.rend += n;
        if direct > 0 && n > HEADER_LEN {
            self.place_scattered(n - HEADER_LEN, direct);
        }
        if !self.fdbuf.is_empty() {
            let start = self.rbase + start as u64;
            let fds: Vec<OwnedFd> = self.fdbuf.drain().collect();
            self.batches.push_back(FdBatch {
                start,
                end: start + n as u64,
                fds,
            });
            if self.batches.len() > MAX_BATCHES {
                return Err(Corruption::UnexpectedFds.into());
            }
        }
        Ok(true)
    }

    /// After a scattered read of a header and `after` more bytes, `direct` of which went to the
    /// message buffer: keeps there the ones that are the header's payload (`prefilled`) and moves
    /// the rest where they stand in the read buffer, `rbuf[8..8 + direct]`.
    fn place_scattered(&mut self, after: usize, direct: usize) {
        let in_msg = after.min(direct);
        let word = u64::from_le_bytes(
            self.rbuf[..HEADER_LEN]
                .try_into()
                .expect("a header is 8 bytes"),
        );
        // Only a data header has payload; its length is checked against the limits when the
        // header is parsed, and only bytes that arrived are counted here.
        let claimed = if matches!(word >> 56, KIND_DATA | KIND_CHANNEL) {
            (word & LEN_MASK).min(in_msg as u64) as usize
        } else {
            0
        };
        self.rbuf[HEADER_LEN + claimed..HEADER_LEN + in_msg]
            .copy_from_slice(&self.assembling[claimed..in_msg]);
        self.prefilled = claimed;
    }

    /// Reads payload bytes straight into the message buffer, at most `remaining` (so never past
    /// the message's end). The buffer grows with what arrives: beyond what it already holds, at
    /// most doubling per step. With `block`, waits until that much arrived (`MSG_WAITALL`).
    fn read_direct(&mut self, remaining: u64, block: bool) -> Result<bool, RecvError> {
        let old = self.filled;
        let initialized = self.assembling.len() - old;
        let step = (remaining as usize).min(initialized.max(old.max(RBUF_LEN)));
        if old + step > self.assembling.len() {
            self.assembling.resize(old + step, 0);
        }
        let flags = if block {
            RecvFlags::WAITALL
        } else {
            RecvFlags::DONTWAIT
        };
        let got = loop {
            match socket::recv_with_fds(
                self.sock.as_fd(),
                &mut self.assembling[old..old + step],
                &mut self.fdbuf,
                flags,
            ) {
                Ok(n) => break Ok(n),
                Err(Errno::INTR) => {}
                Err(e) => break Err(e),
            }
        };
        match got {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                if !self.fdbuf.is_empty() {
                    // A correct peer never sends descriptors in the middle of a payload.
                    self.fdbuf.clear();
                    return Err(Corruption::UnexpectedFds.into());
                }
                self.filled += n;
                self.rbase += n as u64;
                if let Some(incoming) = self.incoming.as_mut() {
                    incoming.remaining -= n as u64;
                }
                Ok(true)
            }
            Err(Errno::AGAIN) => Ok(false),
            Err(Errno::MSGSIZE) => Err(Corruption::FdsTruncated.into()),
            Err(e) => Err(RecvError::os("recvmsg on the channel socket", e)),
        }
    }

    /// Waits until the socket is readable (or writable, for `send`), or `timeout` passes.
    pub(crate) fn wait(&self, send: bool, timeout: Option<Duration>) -> Result<(), Errno> {
        let flags = if send {
            PollFlags::OUT
        } else {
            PollFlags::IN | PollFlags::RDHUP
        };
        let mut pfd = [PollFd::new(&self.sock, flags)];
        match socket::poll(&mut pfd, timeout) {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message_size: 1 << 20,
            max_fds_per_message: 8,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = encode_header(false, false, 12345, 7);
        assert_eq!(
            decode_header(h, &limits()),
            Ok(Header::Data {
                len: 12345,
                nfds: 7,
                channel: false,
            })
        );
        let h = encode_header(false, true, 10, 1);
        assert_eq!(
            decode_header(h, &limits()),
            Ok(Header::Data {
                len: 10,
                nfds: 1,
                channel: true,
            })
        );
        assert_eq!(
            decode_header(encode_header(true, false, 0, 0), &limits()),
            Ok(Header::Close)
        );
    }

    #[test]
    fn header_rejects_hostile_values() {
        let big = encode_header(false, false, (1 << 20) + 1, 0);
        assert!(matches!(
            decode_header(big, &limits()),
            Err(Corruption::TooLarge { .. })
        ));
        let fds = encode_header(false, false, 1, 9);
        assert!(matches!(
            decode_header(fds, &limits()),
            Err(Corruption::TooManyFds {
                declared: 9,
                max: 8
            })
        ));
        let junk = u64::MAX.to_le_bytes();
        assert!(matches!(
            decode_header(junk, &limits()),
            Err(Corruption::BadHeader(_))
        ));
        let close_with_len = ((KIND_CLOSE << 56) | 4).to_le_bytes();
        assert!(matches!(
            decode_header(close_with_len, &limits()),
            Err(Corruption::BadHeader(_))
        ));
    }
}
