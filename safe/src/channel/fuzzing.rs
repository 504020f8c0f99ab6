//! Entry points for the cargo-fuzz targets in `fuzz/` into the channel layer's crate-private
//! decoders. Compiled only under `cfg(fuzzing)` (cargo-fuzz sets it) and hidden from the docs: not
//! part of the API.
//!
//! Each function is a thin wrapper that calls the production code unchanged, so that a target
//! exercises exactly what a receiving channel runs on the peer's bytes.

use super::framing::{self as chunk, ChunkHeader, Reassembler};
use super::transport::socket::{self, Header};
use super::{Corruption, Limits};

/// Length of a socket frame header.
pub const SOCKET_HEADER_LEN: usize = socket::HEADER_LEN;

/// Length of an mq chunk header.
pub const CHUNK_HEADER_LEN: usize = chunk::CHUNK_HEADER_LEN;

/// Chunk flag: first chunk of a message.
pub const CHUNK_FIRST: u8 = chunk::FIRST;
/// Chunk flag: last chunk of a message.
pub const CHUNK_LAST: u8 = chunk::LAST;
/// Chunk flag: close marker.
pub const CHUNK_CLOSE: u8 = chunk::CLOSE;

/// A decoded socket frame header (mirror of the crate-private type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketHeader {
    /// A data message of `len` bytes with `nfds` descriptors.
    Data {
        /// Payload length.
        len: u64,
        /// Declared descriptor count.
        nfds: usize,
    },
    /// An orderly close.
    Close,
}

/// Decodes a socket frame header as a receiver with these limits does.
pub fn socket_decode_header(
    bytes: [u8; SOCKET_HEADER_LEN],
    max_message_size: usize,
    max_fds_per_message: usize,
) -> Result<SocketHeader, Corruption> {
    let limits = Limits {
        max_message_size,
        max_fds_per_message,
    };
    Ok(match socket::decode_header(bytes, &limits)? {
        Header::Data { len, nfds, .. } => SocketHeader::Data { len, nfds },
        Header::Close => SocketHeader::Close,
    })
}

/// Encodes a socket frame header as a sender does (`len < 2^48`, `nfds <= 253`).
pub fn socket_encode_header(close: bool, len: u64, nfds: usize) -> [u8; SOCKET_HEADER_LEN] {
    socket::encode_header(close, false, len, nfds)
}

/// Encodes an mq chunk header from its fields (any values, as a hostile peer may).
pub fn chunk_encode_header(flags: u8, nfds: u8, index: u32, total: u64) -> [u8; CHUNK_HEADER_LEN] {
    ChunkHeader {
        flags,
        nfds,
        index,
        total,
    }
    .encode()
}

/// What one chunk did (mirror of the crate-private type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// More chunks are needed.
    Partial,
    /// A message is complete ([`Reassembly::message`]); its first chunk declared `nfds`.
    Complete {
        /// Declared descriptor count.
        nfds: usize,
    },
    /// The peer closed.
    Close,
}

/// The mq receive path's chunk decoding and reassembly, one queue message at a time.
#[derive(Debug)]
pub struct Reassembly {
    inner: Reassembler,
    max_message_size: usize,
}

impl Reassembly {
    /// A reassembler enforcing `max_message_size`.
    pub fn new(max_message_size: usize) -> Self {
        Reassembly {
            inner: Reassembler::default(),
            max_message_size,
        }
    }

    /// Decodes one queue message (header and payload) and feeds it, as the mq transport does.
    pub fn feed(&mut self, queue_message: &[u8]) -> Result<Fed, Corruption> {
        let (h, payload) = ChunkHeader::decode(queue_message)?;
        Ok(match self.inner.feed(h, payload, self.max_message_size)? {
            chunk::Fed::Partial => Fed::Partial,
            chunk::Fed::Complete { nfds } => Fed::Complete { nfds },
            chunk::Fed::Close => Fed::Close,
        })
    }

    /// The message so far (complete after [`Fed::Complete`]).
    pub fn message(&self) -> &[u8] {
        &self.inner.buf
    }

    /// Whether part of a message has arrived.
    pub fn in_progress(&self) -> bool {
        self.inner.in_progress()
    }

    /// Drops a half-received message, as the mq transport does when the channel is poisoned.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Feeds `chunks` in order to a fresh reassembler and returns every complete message (bytes and
/// declared descriptor count), stopping at a close marker or the first error.
pub fn reassemble(
    chunks: &[&[u8]],
    max_message_size: usize,
) -> Result<Vec<(Vec<u8>, usize)>, Corruption> {
    let mut r = Reassembly::new(max_message_size);
    let mut out = Vec::new();
    for c in chunks {
        match r.feed(c)? {
            Fed::Partial => {}
            Fed::Complete { nfds } => out.push((r.message().to_vec(), nfds)),
            Fed::Close => break,
        }
    }
    Ok(out)
}
