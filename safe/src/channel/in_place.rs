//! Building and reading messages in place: [`Channel::send_in_place`] and
//! [`Channel::recv_in_place`].
//!
//! On the ring transport a message that fits one ring frame (up to about half the ring) is built
//! directly in the shared-memory frame the peer will read, and read there by the peer: no copy on
//! either side, so the cost does not grow with a copy of the payload. Everything else (longer
//! messages, the socket and mq transports) goes through a buffer the channel keeps and reuses,
//! with the same API, so code written against it works on every transport.
//!
//! Shared memory is never handed out as `&[u8]` or `&mut [u8]`: the peer process can write the
//! same bytes at any time, which a Rust reference would promise cannot happen. Bytes go in and out
//! by copies of the caller's choosing ([`MessageWriter::write_at`], [`IncomingMessage::read_at`],
//! or the [`io::Write`] / [`io::Read`] cursors), as in `flowipc::ring`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::{Blocking, Channel, RecvError, SendError, Transport};
use crate::ring::{RingReadChunk, RingWriteChunk};

/// A message being built by [`Channel::send_in_place`]: `len` bytes, in the ring's shared memory
/// when the transport allows it, else in a buffer of the channel's.
///
/// Bytes the builder does not write have unspecified contents (on the ring: whatever the frame's
/// memory held before, from this channel's earlier messages).
#[derive(Debug)]
pub struct MessageWriter<'a> {
    dst: WriterDst<'a>,
    len: usize,
    /// The [`io::Write`] cursor.
    pos: usize,
}

#[derive(Debug)]
enum WriterDst<'a> {
    Ring(RingWriteChunk<'a>),
    Buffer(&'a mut [u8]),
}

impl MessageWriter<'_> {
    /// The message's length, fixed when it was started.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the message is being built in shared memory (the peer reads these very bytes)
    /// rather than in a buffer that is copied into the transport.
    pub fn is_in_place(&self) -> bool {
        matches!(self.dst, WriterDst::Ring(_))
    }

    /// Copies `data` to byte `offset` of the message.
    ///
    /// # Panics
    ///
    /// If `offset + data.len()` exceeds [`len`](Self::len).
    #[inline]
    pub fn write_at(&mut self, offset: usize, data: &[u8]) {
        let end = offset.checked_add(data.len());
        assert!(
            end.is_some_and(|e| e <= self.len),
            "write of {} bytes at {offset} past the end of a {}-byte message",
            data.len(),
            self.len
        );
        match &mut self.dst {
            WriterDst::Ring(chunk) => chunk.write(offset, data),
            WriterDst::Buffer(buf) => buf[offset..offset + data.len()].copy_from_slice(data),
        }
    }

    /// Where the [`io::Write`] cursor stands (it starts at 0).
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl io::Write for MessageWriter<'_> {
    /// Writes at the cursor, as much as fits before the end of the message.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len - self.pos);
        self.write_at(self.pos, &buf[..n]);
        self.pos += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A received message from [`Channel::recv_in_place`], with its descriptors.
///
/// On the ring transport a message that was one frame stays in the shared ring while this value
/// lives, and is read there; the frame is freed (and a sender waiting for room woken) when it is
/// dropped, so drop it promptly. Other messages are in a buffer of the channel's.
#[derive(Debug)]
pub struct IncomingMessage<'a> {
    src: ReaderSrc<'a>,
    fds: Vec<OwnedFd>,
    /// The [`io::Read`] cursor.
    pos: usize,
}

#[derive(Debug)]
enum ReaderSrc<'a> {
    Ring(RingReadChunk<'a>),
    Buffer(&'a [u8]),
}

impl IncomingMessage<'_> {
    /// The message's length.
    pub fn len(&self) -> usize {
        match &self.src {
            ReaderSrc::Ring(chunk) => chunk.len(),
            ReaderSrc::Buffer(buf) => buf.len(),
        }
    }

    /// `true` for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are read in the ring's shared memory (where the peer wrote them) rather
    /// than from a copy.
    pub fn is_in_place(&self) -> bool {
        matches!(self.src, ReaderSrc::Ring(_))
    }

    /// Copies message bytes from `offset` into `dst`; returns how many were copied
    /// (`min(dst.len(), len - offset)`, 0 if `offset >= len`).
    #[inline]
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> usize {
        match &self.src {
            ReaderSrc::Ring(chunk) => chunk.read(offset, dst),
            ReaderSrc::Buffer(buf) => {
                let src = buf.get(offset..).unwrap_or_default();
                let n = src.len().min(dst.len());
                dst[..n].copy_from_slice(&src[..n]);
                n
            }
        }
    }

    /// Appends the whole message to `out`.
    pub fn extend_vec(&self, out: &mut Vec<u8>) {
        match &self.src {
            ReaderSrc::Ring(chunk) => {
                chunk.extend_vec(0, out);
            }
            ReaderSrc::Buffer(buf) => out.extend_from_slice(buf),
        }
    }

    /// A copy of the whole message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_vec(&mut out);
        out
    }

    /// The descriptors that came with the message (close-on-exec), in the order they were sent.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the descriptors out of the message (they are closed with it otherwise).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

impl io::Read for IncomingMessage<'_> {
    /// Reads from the cursor; 0 at the end of the message.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, buf);
        self.pos += n;
        Ok(n)
    }
}

/// Wraps a message builder for [`RingTransport::send_in_place`], which lends it the reserved
/// frame and takes it back to publish it.
///
/// [`RingTransport::send_in_place`]: super::transport::ring::RingTransport::send_in_place
pub(crate) fn ring_builder<R>(
    len: usize,
    build: impl FnOnce(&mut MessageWriter<'_>) -> R,
) -> impl for<'c> FnOnce(RingWriteChunk<'c>) -> (Option<RingWriteChunk<'c>>, R) {
    move |chunk| {
        let mut writer = MessageWriter {
            dst: WriterDst::Ring(chunk),
            len,
            pos: 0,
        };
        let out = build(&mut writer);
        match writer.dst {
            WriterDst::Ring(chunk) => (Some(chunk), out),
            WriterDst::Buffer(_) => (None, out),
        }
    }
}

impl Channel {
    /// Sends a message of `len` bytes that `build` writes in place, waiting while the peer does
    /// not drain (unless non-blocking); returns what `build` returned.
    ///
    /// On the ring transport a message that fits one frame is built directly in the shared
    /// memory the peer reads it from ([`MessageWriter::is_in_place`]): no copy. Otherwise it is
    /// built in a buffer the channel reuses and sent as by [`send`](Channel::send).
    ///
    /// In non-blocking mode [`SendError::WouldBlock`] means nothing was sent (`build` may have
    /// run): build the message again when the channel is writable.
    ///
    /// ```
    /// use flowipc::channel::Channel;
    ///
    /// let (mut a, mut b) = Channel::ring_pair()?;
    /// a.send_in_place(11, |msg| {
    ///     msg.write_at(0, b"hello");
    ///     msg.write_at(5, b" world");
    /// })?;
    /// let msg = b.recv_in_place()?;
    /// assert!(msg.is_in_place());
    /// assert_eq!(msg.to_vec(), b"hello world");
    /// # Ok::<(), flowipc::Error>(())
    /// ```
    pub fn send_in_place<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.send_in_place_with_fds(len, &[], build)
    }

    /// [`send_in_place`](Channel::send_in_place) with descriptors attached, as in
    /// [`send_with_fds`](Channel::send_with_fds).
    pub fn send_in_place_with_fds<R>(
        &mut self,
        len: usize,
        fds: &[BorrowedFd<'_>],
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.check_send_len(len, fds)?;
        if self.nonblocking {
            if !self.flush_pending(false)? {
                return Err(SendError::WouldBlock);
            }
        } else {
            self.flush_pending_blocking()?;
        }
        let block = if self.nonblocking {
            Blocking::Never
        } else {
            Blocking::Forever
        };
        if self.ring_takes_in_place(len)? {
            if let Some(Transport::Ring(t)) = self.transport.as_mut() {
                // Nothing is published before the frame is complete, so an error here leaves
                // the channel as it was: no poisoning.
                return t.send_in_place(len, fds, block, &mut Some(ring_builder(len, build)));
            }
        }
        let out = self.build_in_stage(len, build);
        let stage = std::mem::take(&mut self.stage);
        let sent = self.send_with_fds(&stage, fds);
        self.stage = stage;
        sent.map(|()| out)
    }

    /// Whether a message of `len` bytes is built in a ring frame (ring transport, one frame).
    pub(crate) fn ring_takes_in_place(&mut self, len: usize) -> Result<bool, SendError> {
        match self.transport.as_mut() {
            Some(Transport::Ring(t)) => t.fits_one_frame(len),
            _ => Ok(false),
        }
    }

    /// Builds a message of `len` bytes in the channel's buffer (`stage`), for a transport that
    /// cannot take it in place.
    pub(crate) fn build_in_stage<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> R {
        self.stage.clear();
        self.stage.resize(len, 0);
        build(&mut MessageWriter {
            dst: WriterDst::Buffer(&mut self.stage),
            len,
            pos: 0,
        })
    }

    /// Receives the next message for reading in place, waiting for it unless non-blocking.
    ///
    /// On the ring transport a message that was one frame is read where the peer wrote it
    /// ([`IncomingMessage::is_in_place`]) until the returned value is dropped; other messages
    /// are received into a buffer of the channel's. Errors are those of
    /// [`recv`](Channel::recv).
    ///
    /// The message borrows the channel. To answer it while it is held (a reply built from the
    /// request where it lies), [`split`](Channel::split) the channel first: the
    /// [`ChannelReceiver`](super::ChannelReceiver) holds the message while the
    /// [`ChannelSender`](super::ChannelSender) sends.
    pub fn recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        if self.nonblocking {
            return self.try_recv_in_place();
        }
        let mut stage = std::mem::take(&mut self.stage);
        let got = self.recv_until(&mut stage, None, true);
        self.stage = stage;
        let fds = got?.fds;
        self.incoming(fds)
    }

    /// [`recv_in_place`](Channel::recv_in_place) if a message is complete without waiting, else
    /// [`RecvError::WouldBlock`].
    pub fn try_recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        let mut stage = std::mem::take(&mut self.stage);
        let got = self.step_recv(&mut stage, Blocking::Never, true);
        self.stage = stage;
        match got? {
            Some(fds) => self.incoming(fds),
            None => Err(RecvError::WouldBlock),
        }
    }

    /// The message the last in-place receive step produced: the frame it left in the ring, or
    /// the buffer it filled.
    pub(crate) fn incoming(&mut self, fds: Vec<OwnedFd>) -> Result<IncomingMessage<'_>, RecvError> {
        if let Some(Transport::Ring(t)) = self.transport.as_mut() {
            if let Some(taken) = t.take_in_place() {
                return match taken {
                    Ok(chunk) => Ok(IncomingMessage {
                        src: ReaderSrc::Ring(chunk),
                        fds,
                        pos: 0,
                    }),
                    Err(e) => {
                        self.poisoned = true;
                        Err(e)
                    }
                };
            }
        }
        Ok(IncomingMessage {
            src: ReaderSrc::Buffer(&self.stage),
            fds,
            pos: 0,
        })
    }
}
