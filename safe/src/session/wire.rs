//! The session control protocol: encoding and a pure, total parser.
//!
//! Every control message travels as one message of a socket [`Channel`](crate::channel::Channel)
//! (so framing and descriptor passing are the channel's), and its bytes are laid out as
//!
//! ```text
//! magic "FIPS" | version u8 | type u8 | body (type-specific, little-endian)
//! ```
//!
//! Strings are `u16` length + UTF-8, byte blobs `u32` length + bytes, lists `u16` count + items.
//! [`parse`] is a pure function of the bytes and the number of descriptors that arrived with them:
//! it never allocates more than the input's length, never panics, and rejects trailing bytes, so a
//! fuzz target can drive it with arbitrary input. Every bound below is checked before use.

use std::fmt;

use crate::channel::TransportKind;

/// First bytes of every control message.
pub const MAGIC: [u8; 4] = *b"FIPS";
/// Protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Longest app name.
pub const MAX_NAME: usize = 255;
/// Longest refusal reason.
pub const MAX_REASON: usize = 1024;
/// Largest metadata blob, either way.
pub const MAX_METADATA: usize = 16 << 10;
/// Most init channels one session may ask for.
pub const MAX_INIT_CHANNELS: usize = 64;
/// Most descriptors one channel end is made of.
pub const MAX_CHANNEL_FDS: usize = 8;
/// Largest arena a welcome may announce.
pub const MAX_ARENA_SIZE: u64 = 1 << 40;
/// The control channel's own message limit (every control message fits well below it).
pub const MAX_CONTROL_MESSAGE: usize = 64 << 10;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_CHANNEL: u8 = 3;
const T_REFUSED: u8 = 4;
const T_OPEN_ACCEPTED: u8 = 5;
const T_OPEN_REFUSED: u8 = 6;
const T_CLOSE: u8 = 7;
const T_ARENA: u8 = 8;
const T_READY: u8 = 9;

/// Channel settings one side announces, so that the other side (a spawned child in particular)
/// re-creates its channel ends the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// [`ChannelOptions::max_message_size`](crate::channel::ChannelOptions::max_message_size).
    pub max_message_size: u64,
    /// [`ChannelOptions::max_fds_per_message`](crate::channel::ChannelOptions::max_fds_per_message).
    pub max_fds_per_message: u32,
    /// [`ChannelOptions::ring_capacity`](crate::channel::ChannelOptions::ring_capacity).
    pub ring_capacity: u64,
    /// [`ChannelOptions::mq_max_messages`](crate::channel::ChannelOptions::mq_max_messages); 0:
    /// the system's default.
    pub mq_max_messages: i64,
    /// [`ChannelOptions::mq_message_size`](crate::channel::ChannelOptions::mq_message_size); 0:
    /// the system's default.
    pub mq_message_size: i64,
}

/// What kind of shared-memory pool an [`ControlMessage::Arena`] message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaKind {
    /// The session's classic arena (one descriptor, read-write for both).
    Classic,
    /// The sender's lend pool (two descriptors: read-only pool, return ring).
    Lend,
    /// The server's app-scope arena, shared by every session of one client app (one descriptor).
    App,
}

/// One parsed control message; borrows the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage<'a> {
    /// Client to server, first message: who the client says it is and what it asks for.
    Hello {
        /// The client app's name (a claim; the server checks kernel facts).
        name: &'a str,
        /// The client's channel settings.
        settings: Settings,
        /// Transports of the init channels the client asks for.
        init: Vec<TransportKind>,
        /// Metadata for the server.
        metadata: &'a [u8],
    },
    /// Server (or spawning parent) to client: accepted; `init` channels follow, then arenas.
    Welcome {
        /// The server app's name.
        name: &'a str,
        /// The server's channel settings.
        settings: Settings,
        /// Transports of the init channels that follow, in order.
        init: Vec<TransportKind>,
        /// Bytes of the session's classic arena and of each lend pool; 0: no arenas. If not 0,
        /// two arena messages follow the channels (classic arena, the sender's lend pool).
        arena_size: u64,
        /// Whether an app-scope arena message follows the session's arenas.
        app_arena: bool,
        /// Metadata for the client.
        metadata: &'a [u8],
    },
    /// A channel end: an init channel (after `Welcome`) or a request to open one later.
    Channel {
        /// Request id (init channels: their index).
        id: u64,
        /// Transport of the channel.
        kind: TransportKind,
        /// Metadata for the receiver.
        metadata: &'a [u8],
    },
    /// The server refused the client.
    Refused {
        /// Why, in words.
        reason: &'a str,
    },
    /// The peer accepted the channel of request `id`.
    OpenAccepted {
        /// The request.
        id: u64,
    },
    /// The peer refused the channel of request `id`.
    OpenRefused {
        /// The request.
        id: u64,
        /// Why, in words.
        reason: &'a str,
    },
    /// The peer ends the session in an orderly way; nothing follows.
    Close,
    /// A shared-memory pool of the session.
    Arena {
        /// Which pool.
        kind: ArenaKind,
    },
    /// The client has everything; its lend pool, if any, rides along (`lend` is then true).
    Ready {
        /// Whether two lend-pool descriptors came with this message.
        lend: bool,
    },
}

/// Why bytes are not a valid control message. The peer may be buggy or hostile: the session
/// that received them is ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message does not start with the protocol's magic.
    #[error("not a flowipc session message (bad magic); is the peer a flowipc session?")]
    BadMagic,
    /// A version this build does not speak.
    #[error(
        "the peer speaks session protocol version {0}, this side speaks {VERSION}; upgrade the \
         older side"
    )]
    BadVersion(u8),
    /// A message type nobody defined.
    #[error("unknown session message type {0}")]
    UnknownType(u8),
    /// The message ends before its body does.
    #[error("session message truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes after the body.
    #[error("{0} bytes after the end of a session message")]
    TrailingBytes(usize),
    /// A string or blob longer than its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    /// An unknown transport code.
    #[error("unknown transport code {0}")]
    UnknownTransport(u8),
    /// An unknown arena kind.
    #[error("unknown arena kind {0}")]
    UnknownArena(u8),
    /// A field outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The number of descriptors that came with the message is wrong for its type.
    #[error("a {what} message came with {got} file descriptors, expected {expected}")]
    FdCount {
        /// The message type.
        what: &'static str,
        /// How many arrived.
        got: usize,
        /// What the type needs.
        expected: &'static str,
    },
    /// A valid message at a point of the protocol where it does not belong.
    #[error("unexpected session message: {0}")]
    Unexpected(&'static str),
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HandshakeError> {
        if self.bytes.len() < n {
            return Err(HandshakeError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HandshakeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HandshakeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, HandshakeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, HandshakeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    fn str16(&mut self, what: &'static str, max: usize) -> Result<&'a str, HandshakeError> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(HandshakeError::TooLong { what, len, max });
        }
        std::str::from_utf8(self.take(len, what)?).map_err(|_| HandshakeError::BadUtf8(what))
    }

    fn blob32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], HandshakeError> {
        let len = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(HandshakeError::TooLong { what, len, max });
        }
        self.take(len, what)
    }

    fn kind(&mut self) -> Result<TransportKind, HandshakeError> {
        let code = self.u8("transport")?;
        TransportKind::from_code(code).ok_or(HandshakeError::UnknownTransport(code))
    }

    fn kinds(&mut self) -> Result<Vec<TransportKind>, HandshakeError> {
        let n = usize::from(self.u16("init channel count")?);
        if n > MAX_INIT_CHANNELS {
            return Err(HandshakeError::TooLong {
                what: "init channel list",
                len: n,
                max: MAX_INIT_CHANNELS,
            });
        }
        // Bounded by MAX_INIT_CHANNELS, not by the peer.
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.kind()?);
        }
        Ok(v)
    }

    fn settings(&mut self) -> Result<Settings, HandshakeError> {
        let s = Settings {
            max_message_size: self.u64("max_message_size")?,
            max_fds_per_message: self.u32("max_fds_per_message")?,
            ring_capacity: self.u64("ring_capacity")?,
            mq_max_messages: self.u64("mq_max_messages")? as i64,
            mq_message_size: self.u64("mq_message_size")? as i64,
        };
        if s.max_message_size == 0 {
            return Err(HandshakeError::Invalid("max_message_size 0"));
        }
        if s.mq_max_messages < 0 || s.mq_message_size < 0 {
            return Err(HandshakeError::Invalid("negative mq setting"));
        }
        if !s.ring_capacity.is_power_of_two() || s.ring_capacity > (1 << 40) {
            return Err(HandshakeError::Invalid(
                "ring capacity (a power of two up to 1 TiB)",
            ));
        }
        Ok(s)
    }
}

fn fds_exactly(
    what: &'static str,
    got: usize,
    want: usize,
    expected: &'static str,
) -> Result<(), HandshakeError> {
    if got == want {
        Ok(())
    } else {
        Err(HandshakeError::FdCount {
            what,
            got,
            expected,
        })
    }
}

/// Parses one control message that arrived with `fd_count` descriptors.
///
/// Total: any input gives a message or an error, never a panic; memory allocated is bounded by
/// [`MAX_INIT_CHANNELS`], independent of what the bytes claim.
pub fn parse(bytes: &[u8], fd_count: usize) -> Result<ControlMessage<'_>, HandshakeError> {
    let mut r = Reader { bytes };
    if r.take(4, "magic").map_err(|_| HandshakeError::BadMagic)? != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(HandshakeError::BadVersion(version));
    }
    let ty = r.u8("type")?;
    let msg = match ty {
        T_HELLO => {
            fds_exactly("hello", fd_count, 0, "0")?;
            ControlMessage::Hello {
                name: r.str16("app name", MAX_NAME)?,
                settings: r.settings()?,
                init: r.kinds()?,
                metadata: r.blob32("metadata", MAX_METADATA)?,
            }
        }
        T_WELCOME => {
            fds_exactly("welcome", fd_count, 0, "0")?;
            let name = r.str16("app name", MAX_NAME)?;
            let settings = r.settings()?;
            let init = r.kinds()?;
            let arena_size = r.u64("arena size")?;
            if arena_size > MAX_ARENA_SIZE {
                return Err(HandshakeError::Invalid("arena size (at most 1 TiB)"));
            }
            let app_arena = match r.u8("app arena flag")? {
                0 => false,
                1 => true,
                _ => return Err(HandshakeError::Invalid("app arena flag")),
            };
            ControlMessage::Welcome {
                name,
                settings,
                init,
                arena_size,
                app_arena,
                metadata: r.blob32("metadata", MAX_METADATA)?,
            }
        }
        T_CHANNEL => {
            if fd_count == 0 || fd_count > MAX_CHANNEL_FDS {
                return Err(HandshakeError::FdCount {
                    what: "channel",
                    got: fd_count,
                    expected: "1 to 8",
                });
            }
            ControlMessage::Channel {
                id: r.u64("request id")?,
                kind: r.kind()?,
                metadata: r.blob32("metadata", MAX_METADATA)?,
            }
        }
        T_REFUSED => {
            fds_exactly("refused", fd_count, 0, "0")?;
            ControlMessage::Refused {
                reason: r.str16("reason", MAX_REASON)?,
            }
        }
        T_OPEN_ACCEPTED => {
            fds_exactly("open-accepted", fd_count, 0, "0")?;
            ControlMessage::OpenAccepted {
                id: r.u64("request id")?,
            }
        }
        T_OPEN_REFUSED => {
            fds_exactly("open-refused", fd_count, 0, "0")?;
            ControlMessage::OpenRefused {
                id: r.u64("request id")?,
                reason: r.str16("reason", MAX_REASON)?,
            }
        }
        T_CLOSE => {
            fds_exactly("close", fd_count, 0, "0")?;
            ControlMessage::Close
        }
        T_ARENA => {
            let kind = match r.u8("arena kind")? {
                1 => {
                    fds_exactly("classic arena", fd_count, 1, "1")?;
                    ArenaKind::Classic
                }
                2 => {
                    fds_exactly("lend pool", fd_count, 2, "2")?;
                    ArenaKind::Lend
                }
                3 => {
                    fds_exactly("app arena", fd_count, 1, "1")?;
                    ArenaKind::App
                }
                k => return Err(HandshakeError::UnknownArena(k)),
            };
            ControlMessage::Arena { kind }
        }
        T_READY => {
            let lend = match r.u8("ready flags")? {
                0 => {
                    fds_exactly("ready", fd_count, 0, "0")?;
                    false
                }
                1 => {
                    fds_exactly("ready", fd_count, 2, "2 (a lend pool)")?;
                    true
                }
                _ => return Err(HandshakeError::Invalid("ready flags")),
            };
            ControlMessage::Ready { lend }
        }
        other => return Err(HandshakeError::UnknownType(other)),
    };
    if !r.bytes.is_empty() {
        return Err(HandshakeError::TrailingBytes(r.bytes.len()));
    }
    Ok(msg)
}

/// Encodes `msg`; the inverse of [`parse`]. Over-long fields are truncated to their limits (the
/// encoder's callers check them first, so that never silently happens to user data).
pub fn encode(msg: &ControlMessage<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let str16 = |out: &mut Vec<u8>, s: &str, max: usize| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_le_bytes());
        out.extend_from_slice(&s.as_bytes()[..end]);
    };
    let blob32 = |out: &mut Vec<u8>, b: &[u8]| {
        let b = &b[..b.len().min(MAX_METADATA)];
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    let settings = |out: &mut Vec<u8>, s: &Settings| {
        out.extend_from_slice(&s.max_message_size.to_le_bytes());
        out.extend_from_slice(&s.max_fds_per_message.to_le_bytes());
        out.extend_from_slice(&s.ring_capacity.to_le_bytes());
        out.extend_from_slice(&(s.mq_max_messages as u64).to_le_bytes());
        out.extend_from_slice(&(s.mq_message_size as u64).to_le_bytes());
    };
    let kinds = |out: &mut Vec<u8>, k: &[TransportKind]| {
        let k = &k[..k.len().min(MAX_INIT_CHANNELS)];
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend(k.iter().map(|k| k.code()));
    };
    match msg {
        ControlMessage::Hello {
            name,
            settings: s,
            init,
            metadata,
        } => {
            out.push(T_HELLO);
            str16(&mut out, name, MAX_NAME);
            settings(&mut out, s);
            kinds(&mut out, init);
            blob32(&mut out, metadata);
        }
        ControlMessage::Welcome {
            name,
            settings: s,
            init,
            arena_size,
            app_arena,
            metadata,
        } => {
            out.push(T_WELCOME);
            str16(&mut out, name, MAX_NAME);
            settings(&mut out, s);
            kinds(&mut out, init);
            out.extend_from_slice(&arena_size.to_le_bytes());
            out.push(u8::from(*app_arena));
            blob32(&mut out, metadata);
        }
        ControlMessage::Channel { id, kind, metadata } => {
            out.push(T_CHANNEL);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(kind.code());
            blob32(&mut out, metadata);
        }
        ControlMessage::Refused { reason } => {
            out.push(T_REFUSED);
            str16(&mut out, reason, MAX_REASON);
        }
        ControlMessage::OpenAccepted { id } => {
            out.push(T_OPEN_ACCEPTED);
            out.extend_from_slice(&id.to_le_bytes());
        }
        ControlMessage::OpenRefused { id, reason } => {
            out.push(T_OPEN_REFUSED);
            out.extend_from_slice(&id.to_le_bytes());
            str16(&mut out, reason, MAX_REASON);
        }
        ControlMessage::Close => out.push(T_CLOSE),
        ControlMessage::Arena { kind } => {
            out.push(T_ARENA);
            out.push(match kind {
                ArenaKind::Classic => 1,
                ArenaKind::Lend => 2,
                ArenaKind::App => 3,
            });
        }
        ControlMessage::Ready { lend } => {
            out.push(T_READY);
            out.push(u8::from(*lend));
        }
    }
    out
}

impl fmt::Display for ArenaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArenaKind::Classic => "classic arena",
            ArenaKind::Lend => "lend pool",
            ArenaKind::App => "app arena",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_message_size: 1 << 20,
            max_fds_per_message: 253,
            ring_capacity: 1 << 16,
            mq_max_messages: 0,
            mq_message_size: 0,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            (
                ControlMessage::Hello {
                    name: "client",
                    settings: settings(),
                    init: vec![TransportKind::Ring, TransportKind::Socket],
                    metadata: b"hi",
                },
                0,
            ),
            (
                ControlMessage::Welcome {
                    name: "server",
                    settings: settings(),
                    init: vec![TransportKind::Mq],
                    arena_size: 1 << 20,
                    app_arena: true,
                    metadata: b"",
                },
                0,
            ),
            (
                ControlMessage::Channel {
                    id: 7,
                    kind: TransportKind::Socket,
                    metadata: b"m",
                },
                1,
            ),
            (ControlMessage::Refused { reason: "no" }, 0),
            (ControlMessage::OpenAccepted { id: 3 }, 0),
            (
                ControlMessage::OpenRefused {
                    id: 3,
                    reason: "busy",
                },
                0,
            ),
            (ControlMessage::Close, 0),
            (
                ControlMessage::Arena {
                    kind: ArenaKind::Lend,
                },
                2,
            ),
            (ControlMessage::Ready { lend: true }, 2),
        ];
        for (m, fds) in msgs {
            let bytes = encode(&m);
            assert_eq!(parse(&bytes, fds), Ok(m.clone()));
            // Every strict prefix is an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(parse(&bytes[..cut], fds).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(parse(&long, fds), Err(HandshakeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn hostile_fields_are_rejected() {
        let mut hello = encode(&ControlMessage::Hello {
            name: "c",
            settings: settings(),
            init: vec![],
            metadata: b"",
        });
        assert!(matches!(
            parse(&hello, 1),
            Err(HandshakeError::FdCount { .. })
        ));
        hello[4] = 9;
        assert_eq!(parse(&hello, 0), Err(HandshakeError::BadVersion(9)));
        let mut kinds = encode(&ControlMessage::Hello {
            name: "c",
            settings: settings(),
            init: vec![TransportKind::Ring],
            metadata: b"",
        });
        let at = kinds.len() - 5;
        kinds[at] = 99;
        assert_eq!(parse(&kinds, 0), Err(HandshakeError::UnknownTransport(99)));
        let mut ch = encode(&ControlMessage::Channel {
            id: 1,
            kind: TransportKind::Ring,
            metadata: b"",
        });
        assert!(parse(&ch, 0).is_err());
        assert!(parse(&ch, 9).is_err());
        let n = ch.len();
        ch[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&ch, 1), Err(HandshakeError::TooLong { .. })));
    }

    fn hello_with(settings: Settings) -> Result<ControlMessage<'static>, HandshakeError> {
        let bytes = encode(&ControlMessage::Hello {
            name: "c",
            settings,
            init: vec![],
            metadata: b"",
        });
        parse(&bytes, 0).map(|_| ControlMessage::Close)
    }

    /// Every limit at its edge: the largest legal value is accepted, one more is refused.
    #[test]
    fn limits_hold_at_their_edges() {
        let name = "n".repeat(MAX_NAME);
        let meta = vec![7u8; MAX_METADATA];
        let init = vec![TransportKind::Socket; MAX_INIT_CHANNELS];
        let welcome = ControlMessage::Welcome {
            name: &name,
            settings: settings(),
            init: init.clone(),
            arena_size: MAX_ARENA_SIZE,
            app_arena: false,
            metadata: &meta,
        };
        let bytes = encode(&welcome);
        assert_eq!(parse(&bytes, 0), Ok(welcome.clone()));
        // One more byte of name, one more init channel, one more byte of metadata, one more
        // byte of arena: patched in by hand, since the encoder truncates.
        let mut long_name = bytes[..6].to_vec();
        long_name.extend_from_slice(&(MAX_NAME as u16 + 1).to_le_bytes());
        long_name.extend_from_slice(name.as_bytes());
        long_name.push(b'n');
        long_name.extend_from_slice(&bytes[6 + 2 + MAX_NAME..]);
        assert_eq!(
            parse(&long_name, 0),
            Err(HandshakeError::TooLong {
                what: "app name",
                len: MAX_NAME + 1,
                max: MAX_NAME
            })
        );
        let mut more_init = encode(&ControlMessage::Hello {
            name: "c",
            settings: settings(),
            init: init.clone(),
            metadata: b"",
        });
        let count_at = more_init.len() - 4 - MAX_INIT_CHANNELS - 2;
        more_init[count_at..count_at + 2]
            .copy_from_slice(&(MAX_INIT_CHANNELS as u16 + 1).to_le_bytes());
        more_init.insert(count_at + 2, more_init[count_at + 2]);
        assert_eq!(
            parse(&more_init, 0),
            Err(HandshakeError::TooLong {
                what: "init channel list",
                len: MAX_INIT_CHANNELS + 1,
                max: MAX_INIT_CHANNELS
            })
        );
        let mut long_meta = bytes.clone();
        let at = long_meta.len() - MAX_METADATA - 4;
        long_meta[at..at + 4].copy_from_slice(&(MAX_METADATA as u32 + 1).to_le_bytes());
        long_meta.push(7);
        assert_eq!(
            parse(&long_meta, 0),
            Err(HandshakeError::TooLong {
                what: "metadata",
                len: MAX_METADATA + 1,
                max: MAX_METADATA
            })
        );
        let big_arena = ControlMessage::Welcome {
            name: "s",
            settings: settings(),
            init: vec![],
            arena_size: MAX_ARENA_SIZE + 1,
            app_arena: false,
            metadata: b"",
        };
        assert_eq!(
            parse(&encode(&big_arena), 0),
            Err(HandshakeError::Invalid("arena size (at most 1 TiB)"))
        );
        // A channel carries 1 to MAX_CHANNEL_FDS descriptors.
        let ch = encode(&ControlMessage::Channel {
            id: 1,
            kind: TransportKind::Ring,
            metadata: b"",
        });
        assert!(parse(&ch, MAX_CHANNEL_FDS).is_ok());
        assert!(matches!(
            parse(&ch, MAX_CHANNEL_FDS + 1),
            Err(HandshakeError::FdCount { .. })
        ));
        // Ready without a lend pool.
        let ready = ControlMessage::Ready { lend: false };
        assert_eq!(parse(&encode(&ready), 0), Ok(ready));
        // A string cut at its limit never splits a character: byte MAX_REASON falls inside an
        // 'é' here, so the cut is one byte earlier.
        let wide = format!("a{}", "é".repeat(MAX_REASON));
        let refused = encode(&ControlMessage::Refused { reason: &wide });
        match parse(&refused, 0) {
            Ok(ControlMessage::Refused { reason }) => {
                assert_eq!(reason.len(), MAX_REASON - 1);
                assert!(wide.starts_with(reason));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The settings checks one at a time.
    #[test]
    fn settings_are_checked_one_by_one() {
        assert!(hello_with(settings()).is_ok());
        let bad = |f: fn(&mut Settings), why: &'static str| {
            let mut s = settings();
            f(&mut s);
            assert_eq!(hello_with(s), Err(HandshakeError::Invalid(why)), "{why}");
        };
        bad(|s| s.max_message_size = 0, "max_message_size 0");
        bad(|s| s.mq_max_messages = -1, "negative mq setting");
        bad(|s| s.mq_message_size = -1, "negative mq setting");
        let ring = "ring capacity (a power of two up to 1 TiB)";
        bad(|s| s.ring_capacity = 3 << 12, ring);
        bad(|s| s.ring_capacity = 1 << 41, ring);
        let mut edge = settings();
        edge.ring_capacity = 1 << 40;
        edge.mq_max_messages = i64::MAX;
        edge.mq_message_size = i64::MAX;
        assert!(hello_with(edge).is_ok());
    }
}
