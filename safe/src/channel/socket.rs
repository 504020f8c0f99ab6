//! The Unix stream socket transport: length-prefixed frames, descriptors by `SCM_RIGHTS`.
//!
//! # Wire format
//!
//! Every message is an 8-byte little-endian header followed by its payload:
//!
//! ```text
//! bits  0..48  payload length in bytes (checked against max_message_size)
//! bits 48..56  number of descriptors attached (0..=253, checked against max_fds_per_message)
//! bits 56..64  kind: 0xD1 data, 0xC1 close (any other value: the stream is corrupt)
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
//! Reads go through a 64 KiB buffer, so many small messages cost one `recvmsg`; the rest of a large
//! payload is read straight into the message buffer, which grows with the bytes actually received
//! (never to a size the peer merely claimed).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use flowipc_sys::socket::{self, PollFd, PollFlags, RecvFds, RecvFlags, SendFlags};
use flowipc_sys::Errno;

use super::error::{Corruption, RecvError, SendError};
use super::{Limits, SendCursor, Step};

/// Header length in bytes.
pub(crate) const HEADER_LEN: usize = 8;
const LEN_MASK: u64 = (1 << 48) - 1;
const KIND_DATA: u64 = 0xD1;
const KIND_CLOSE: u64 = 0xC1;

/// Size of the read buffer.
const RBUF_LEN: usize = 64 * 1024;
/// A payload remainder at least this long is read straight into the message buffer.
const DIRECT_MIN: u64 = 16 * 1024;
/// Bytes of payload copied next to the header so that a small message is one `sendmsg`.
const SCRATCH_LEN: usize = 16 * 1024;
/// A correct peer leaves at most two batches unclaimed (see the module docs); more is an attack.
const MAX_BATCHES: usize = 4;
/// The message buffer kept between messages is dropped when it grew beyond this.
const KEEP_CAPACITY: usize = 8 * 1024 * 1024;

/// Encodes a frame header.
pub(crate) fn encode_header(close: bool, len: u64, nfds: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= LEN_MASK && nfds <= socket::MAX_FDS_PER_MESSAGE);
    let kind = if close { KIND_CLOSE } else { KIND_DATA };
    ((kind << 56) | ((nfds as u64) << 48) | (len & LEN_MASK)).to_le_bytes()
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    Data { len: u64, nfds: usize },
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
        KIND_DATA => {
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
            Ok(Header::Data { len, nfds })
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

/// Non-blocking core of the socket transport.
#[derive(Debug)]
pub(crate) struct SocketTransport {
    sock: OwnedFd,
    limits: Limits,
    scratch: Vec<u8>,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Stream offset of `rbuf[0]`.
    rbase: u64,
    fdbuf: Box<RecvFds>,
    batches: VecDeque<FdBatch>,
    incoming: Option<Incoming>,
    assembling: Vec<u8>,
    peer_closed: bool,
    eof: bool,
}

impl SocketTransport {
    pub(crate) fn new(sock: OwnedFd, limits: Limits) -> Self {
        SocketTransport {
            sock,
            fdbuf: Box::new(RecvFds::with_limit(limits.max_fds_per_message)),
            limits,
            scratch: Vec::with_capacity(SCRATCH_LEN),
            rbuf: vec![0; RBUF_LEN].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            rbase: 0,
            batches: VecDeque::new(),
            incoming: None,
            assembling: Vec::new(),
            peer_closed: false,
            eof: false,
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
        self.fdbuf.clear();
    }

    /// Whether bytes of the peer were read but not yet handed out as a message.
    pub(crate) fn has_buffered_input(&self) -> bool {
        self.rend > self.rstart || self.incoming.is_some() || !self.batches.is_empty()
    }

    /// Sends as much of the message as the socket takes without blocking.
    pub(crate) fn send_step(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Step, SendError> {
        let (data, fds) = if cur.close {
            (&[][..], &[][..])
        } else {
            (data, fds)
        };
        let header = encode_header(cur.close, data.len() as u64, fds.len());
        let total = HEADER_LEN + data.len();
        while cur.pos < total {
            let sent = if cur.pos < HEADER_LEN {
                // The header (or what is left of it) and the head of the payload, in one sendmsg.
                let head = data.len().min(SCRATCH_LEN - HEADER_LEN);
                self.scratch.clear();
                self.scratch.extend_from_slice(&header[cur.pos..]);
                self.scratch.extend_from_slice(&data[..head]);
                if cur.pos == 0 && !fds.is_empty() {
                    socket::send_with_fds(
                        self.sock.as_fd(),
                        &self.scratch,
                        fds,
                        SendFlags::DONTWAIT,
                    )
                } else {
                    socket::send(self.sock.as_fd(), &self.scratch, SendFlags::DONTWAIT)
                }
            } else {
                socket::send(
                    self.sock.as_fd(),
                    &data[cur.pos - HEADER_LEN..],
                    SendFlags::DONTWAIT,
                )
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

    /// Receives a complete message into `out` if one can be had without blocking.
    ///
    /// `Ok(None)`: would block. On success `out` holds the message (its previous buffer is kept
    /// for the next message).
    pub(crate) fn recv_step(
        &mut self,
        out: &mut Vec<u8>,
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
                if !self.fill()? {
                    return Ok(None);
                }
                continue;
            };
            let avail = (self.rend - self.rstart) as u64;
            if avail > 0 {
                let n = avail.min(incoming.remaining) as usize;
                self.assembling
                    .extend_from_slice(&self.rbuf[self.rstart..self.rstart + n]);
                self.rstart += n;
                incoming.remaining -= n as u64;
            }
            if incoming.remaining == 0 {
                let fds = std::mem::take(&mut incoming.fds);
                self.incoming = None;
                std::mem::swap(out, &mut self.assembling);
                self.assembling.clear();
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
                self.read_direct(remaining)?
            } else {
                self.fill()?
            };
            if !progressed {
                return Ok(None);
            }
        }
    }

    /// Parses the header at `rstart` (at least 8 bytes are buffered) and claims its descriptors.
    fn start_message(&mut self) -> Result<(), RecvError> {
        let at = self.rbase + self.rstart as u64;
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(&self.rbuf[self.rstart..self.rstart + HEADER_LEN]);
        let header = decode_header(bytes, &self.limits)?;
        self.rstart += HEADER_LEN;
        let (len, nfds) = match header {
            Header::Close => {
                self.peer_closed = true;
                self.batches.clear();
                return Err(RecvError::Closed);
            }
            Header::Data { len, nfds } => (len, nfds),
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
        self.assembling.clear();
        self.incoming = Some(Incoming {
            remaining: len,
            fds,
        });
        Ok(())
    }

    /// One non-blocking read into the buffer. `Ok(false)`: nothing to read yet.
    fn fill(&mut self) -> Result<bool, RecvError> {
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
        let n = loop {
            match socket::recv_with_fds(
                self.sock.as_fd(),
                &mut self.rbuf[start..],
                &mut self.fdbuf,
                RecvFlags::DONTWAIT,
            ) {
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

    /// Reads payload bytes straight into the message buffer, at most `remaining` (so never past
    /// the message's end). The buffer grows with what arrives: at most doubling per step.
    fn read_direct(&mut self, remaining: u64) -> Result<bool, RecvError> {
        let old = self.assembling.len();
        let step = (remaining as usize).min(old.max(RBUF_LEN));
        self.assembling.resize(old + step, 0);
        let got = loop {
            match socket::recv_with_fds(
                self.sock.as_fd(),
                &mut self.assembling[old..],
                &mut self.fdbuf,
                RecvFlags::DONTWAIT,
            ) {
                Ok(n) => break Ok(n),
                Err(Errno::INTR) => {}
                Err(e) => break Err(e),
            }
        };
        let n = *got.as_ref().unwrap_or(&0);
        self.assembling.truncate(old + n);
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
        let h = encode_header(false, 12345, 7);
        assert_eq!(
            decode_header(h, &limits()),
            Ok(Header::Data {
                len: 12345,
                nfds: 7
            })
        );
        assert_eq!(
            decode_header(encode_header(true, 0, 0), &limits()),
            Ok(Header::Close)
        );
    }

    #[test]
    fn header_rejects_hostile_values() {
        let big = encode_header(false, (1 << 20) + 1, 0);
        assert!(matches!(
            decode_header(big, &limits()),
            Err(Corruption::TooLarge { .. })
        ));
        let fds = encode_header(false, 1, 9);
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
