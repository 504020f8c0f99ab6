//! The modes of perf_demo (each a line on the graph) and both ends of each: how the client sends a
//! request and takes the response, and how the server answers.
//!
//! - `classic`: Cap'n Proto over a Unix stream socket, as a program without flowipc does it: the
//!   server writes its response with `capnp::serialize::write_message`, the client reads it with
//!   `capnp::serialize::read_message` into buffers of its own and reads the message there. The
//!   socket is one of the session's init channels given up with `into_fds`, so it is an ordinary
//!   connected socket pair and nothing of flowipc runs on it.
//! - `copy`: a flowipc [`StructuredChannel`] in copy mode over a ring init channel of the session.
//!   The server sends one pre-built [`MsgOut`] per file again and
//!   again (`send_response`); the client waits with `sync_request` and reads the `MsgIn` where it
//!   was received. Both ends receive in the caller (no reader thread).
//!
//! - `native`: no capnp. The server holds the file as a [`ShmVec`] of [`NativePart`]s in its
//!   session lend pool (each part's bytes a vector of their own, adopted by the root) and answers
//!   a request by lending the root: a 32-byte handle on a ring init channel. The client opens a
//!   checked [`VecRef`] over the server's pool, mapped read-only, reads in place and gives the
//!   handle back when it drops the response.
//!
//! Zero copy is copy mode plus the setup in [`structured_options`] and [`session_options`]; nothing
//! else changes, since the structured channel's API is the same in both modes.

use std::io::{BufReader, BufWriter, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use flowipc::arena::{ArenaHandle, BorrowedPool, BorrowerId, LendPool};
use flowipc::channel::{Channel, RecvError, TransportKind};
use flowipc::native::{NativeError, ShmAlloc, ShmVec, VecLink, VecRef};
use flowipc::ring::WaitPolicy;
use flowipc::session::{Session, SessionOptions};
use flowipc::structured::{MsgIn, MsgOut, StructuredChannel, StructuredError, StructuredOptions};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::file;
use crate::harness::Mode;
use crate::perf_demo_capnp::body;

/// A structured channel of perf_demo's schema.
pub type Chan = StructuredChannel<body::Owned>;

/// One way of moving the file: a line on the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoMode {
    /// capnp over a Unix socket, no flowipc.
    Classic,
    /// flowipc structured channel, copy mode, over a ring channel.
    Copy,
    /// flowipc structured channel, zero copy (segments in the session's lend pools).
    ZeroCopy,
    /// flowipc native shared-memory types: the file as a vector of parts, lent by handle.
    Native,
}

impl DemoMode {
    /// Every mode, in the order they run and are drawn.
    pub const ALL: &[DemoMode] = &[
        DemoMode::Classic,
        DemoMode::Copy,
        DemoMode::ZeroCopy,
        DemoMode::Native,
    ];

    /// The name on the command line (`--modes`).
    pub fn name(self) -> &'static str {
        match self {
            DemoMode::Classic => "classic",
            DemoMode::Copy => "copy",
            DemoMode::ZeroCopy => "zerocopy",
            DemoMode::Native => "native",
        }
    }

    /// The system name in result rows.
    pub fn system(self) -> &'static str {
        match self {
            DemoMode::Classic => "perf_demo-classic",
            DemoMode::Copy => "perf_demo-copy",
            DemoMode::ZeroCopy => "perf_demo-zerocopy",
            DemoMode::Native => "perf_demo-native",
        }
    }

    /// The session init channel the mode runs on.
    pub fn transport(self) -> TransportKind {
        match self {
            DemoMode::Classic => TransportKind::Socket,
            DemoMode::Copy | DemoMode::ZeroCopy | DemoMode::Native => TransportKind::Ring,
        }
    }

    /// The wait mode a row of this mode runs with: a Unix socket always sleeps in the kernel, so a
    /// classic row says `block` whatever `--mode` asked of flowipc's channels.
    pub fn wait_mode(self, asked: Mode) -> Mode {
        match self {
            DemoMode::Classic => Mode::Block,
            _ => asked,
        }
    }

    /// Whether the response lies in the server's shared memory and only a handle travels: its
    /// round trip does not grow with the file.
    pub fn is_zero_copy(self) -> bool {
        matches!(self, DemoMode::ZeroCopy | DemoMode::Native)
    }

    /// The mode called `name` (`--modes`).
    pub fn parse(name: &str) -> Result<DemoMode, String> {
        DemoMode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = DemoMode::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {name:?}; known: {}", known.join(", "))
            })
    }
}

/// Bytes of each ring of a ring channel: the 100 KiB and 1 MiB responses travel as one frame,
/// larger ones in frames of up to half the ring.
pub const RING_CAPACITY: usize = 4 << 20;

/// The largest message the channels accept: the largest file plus the parts' framing (a part costs
/// 32 bytes of list entry and pointer, 1/512 of its data) and the envelope.
pub fn max_message_size(max_file: u64) -> usize {
    (max_file + max_file / 256 + (1 << 20)) as usize
}

/// Bytes of the response for a file of `size` bytes, a little over (its parts' structs and
/// pointers add 24 bytes per 16 KiB part, the root a few words).
fn response_size(size: u64) -> usize {
    (size + size / 512 + 4096) as usize
}

/// What the client tells the server at spawn (the session's metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSetup {
    /// The modes, one init channel each, in this order.
    pub modes: Vec<DemoMode>,
    /// The largest file that will be asked for.
    pub max_file: u64,
    /// How flowipc's channels wait.
    pub wait: Mode,
    /// The CPU to pin the server to.
    pub cpu: usize,
}

/// The session's settings (the spawning client's travel with the session to the server): one init
/// channel per mode, channel limits for the largest file.
pub fn session_options(setup: &ServerSetup) -> SessionOptions {
    let metadata = serde_json::to_vec(setup).expect("the setup serializes");
    let mut options = SessionOptions::new()
        .max_message_size(max_message_size(setup.max_file))
        .ring_capacity(RING_CAPACITY)
        .handshake_timeout(Duration::from_secs(30))
        .metadata(metadata);
    for mode in &setup.modes {
        options = options.init_channel(mode.transport());
    }
    // Lend pools for the responses. 2x the largest message was too small (a 1 MiB file failed
    // with "arena is full": segments grow by doubling and a 1048832-byte segment is rounded up).
    // The native file is its bytes plus a 32-byte part per 16 KiB, in blocks of the pool.
    let mut pool = 0;
    if setup.modes.contains(&DemoMode::ZeroCopy) {
        pool += 4 * max_message_size(setup.max_file);
    }
    if setup.modes.contains(&DemoMode::Native) {
        pool += max_message_size(setup.max_file) + (setup.max_file / 8) as usize;
    }
    if pool > 0 {
        options = options.arenas(pool + (16 << 20));
    }
    options
}

/// The structured channel's settings for a flowipc `mode`, the same on both sides: limits for the
/// largest file, receiving in the caller. Zero copy adds its one line here.
pub fn structured_options(
    mode: DemoMode,
    session: &Session,
    max_file: u64,
) -> Result<StructuredOptions, String> {
    let options = StructuredOptions::new()
        .receive_in_caller(true)
        .max_message_size(max_message_size(max_file));
    match mode {
        DemoMode::Copy => Ok(options),
        DemoMode::ZeroCopy => {
            Ok(options.zero_copy(session.zero_copy().map_err(|e| e.to_string())?))
        }
        DemoMode::Classic | DemoMode::Native => {
            Err(format!("{} mode has no structured channel", mode.name()))
        }
    }
}

fn wait_policy(mode: Mode) -> WaitPolicy {
    match mode {
        Mode::BusyPoll => WaitPolicy::BusyPoll,
        Mode::SpinThenBlock => WaitPolicy::default(),
        Mode::Block => WaitPolicy::Block,
    }
}

/// Which program an end is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: requests and measures.
    Client,
    /// The server: holds the files and answers.
    Server,
}

/// One end of a mode, client or server; a native end reads or lends through the session `'s`.
pub enum End<'s> {
    /// The socket, buffered as a user would (a `BufReader` for `read_message`, a `BufWriter` for
    /// `write_message`).
    Classic {
        /// Incoming side.
        rx: BufReader<UnixStream>,
        /// Outgoing side.
        tx: BufWriter<UnixStream>,
    },
    /// The structured channel.
    Structured(Chan),
    /// A ring channel carrying file names one way and root handles the other.
    Native {
        /// The channel (boxed: it is the largest variant by far).
        ch: Box<Channel>,
        /// The session's pools (the server lends from its own, the client reads the server's).
        pools: NativePools<'s>,
        /// Receive buffer.
        buf: Vec<u8>,
    },
}

/// Builds this side's end of `mode` from its init channel (before anything was received on it).
/// A session's channels wait with the default policy; a flowipc channel is re-made from its
/// descriptors with the `--mode` policy.
pub fn open_end<'s>(
    mode: DemoMode,
    side: Side,
    channel: Channel,
    session: &'s Session,
    setup: &ServerSetup,
) -> Result<End<'s>, String> {
    let fds = channel
        .into_fds()
        .map_err(|e| format!("{}: {e}", mode.name()))?;
    match mode {
        DemoMode::Classic => {
            let (_, fds) = fds.into_parts();
            let [fd]: [OwnedFd; 1] = fds
                .try_into()
                .map_err(|_| "classic: the socket channel has one descriptor".to_string())?;
            let sock = UnixStream::from(fd);
            sock.set_nonblocking(false).map_err(|e| e.to_string())?;
            let rx =
                BufReader::with_capacity(64 << 10, sock.try_clone().map_err(|e| e.to_string())?);
            Ok(End::Classic {
                rx,
                tx: BufWriter::with_capacity(64 << 10, sock),
            })
        }
        _ => {
            let channel = session
                .channel_options()
                .clone()
                .wait_policy(wait_policy(setup.wait))
                .from_fds(fds)
                .map_err(|e| format!("{}: {e}", mode.name()))?;
            if mode == DemoMode::Native {
                let no_pool = || "native: the session has no lend pools".to_string();
                let pools = if side == Side::Server {
                    let (pool, to) = session.lend_target().ok_or_else(no_pool)?;
                    NativePools::Lender(pool, to)
                } else {
                    NativePools::Reader(session.peer_pool().ok_or_else(no_pool)?)
                };
                return Ok(End::Native {
                    ch: Box::new(channel),
                    pools,
                    buf: Vec::with_capacity(64),
                });
            }
            let ch = structured_options(mode, session, setup.max_file)?
                .open(channel)
                .map_err(|e| format!("{}: {e}", mode.name()))?;
            Ok(End::Structured(ch))
        }
    }
}

/// The pools a native end works with, taken from the session (which is not `Sync`: the server
/// serves each mode in a thread of its own).
pub enum NativePools<'s> {
    /// The server's: its lend pool and the client's id in it.
    Lender(&'s LendPool, BorrowerId),
    /// The client's: the server's pool, mapped read-only.
    Reader(&'s BorrowedPool),
}

/// A response the client received, read where it was received.
pub enum Response<'s> {
    /// Read by `capnp::serialize::read_message` into its own buffers.
    Classic(capnp::message::Reader<capnp::serialize::OwnedSegments>),
    /// As the structured channel received it.
    Structured(MsgIn<body::Owned>),
    /// A lent file in the server's pool.
    Native(NativeResponse<'s>),
}

impl Response<'_> {
    /// Checks that the response holds the file of `size` bytes, every part's length and hash
    /// ([`file::verify`], [`NativeResponse::verify`]).
    pub fn verify(&self, size: u64) -> Result<(), String> {
        let body = match self {
            Response::Classic(m) => m.get_root().map_err(|e| e.to_string())?,
            Response::Structured(m) => m.body_root().map_err(|e| e.to_string())?,
            Response::Native(n) => return n.verify(size),
        };
        file::verify(body, size).map_err(|e| e.to_string())
    }
}

/// One part of the native file: its bytes (a vector of their own, adopted by the file's vector)
/// and the length and hash the capnp `FilePart` carries.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct NativePart {
    /// The part's bytes.
    pub data: VecLink<u8>,
    /// Their length.
    pub size: u64,
    /// [`file::part_hash`] of them.
    pub hash: u64,
}

/// Builds the file of `size` bytes as a vector of parts in `alloc` (the server's lend pool).
fn build_native(alloc: &ShmAlloc, size: u64) -> Result<ShmVec<NativePart>, NativeError> {
    let n = file::part_count(size);
    let mut parts = ShmVec::with_capacity_in(alloc, n as usize)?;
    let mut bytes = vec![0u8; file::PART_SIZE as usize];
    for k in 0..n {
        let len = file::part_len(size, k);
        let chunk = &mut bytes[..len as usize];
        file::fill(chunk, k * file::PART_SIZE);
        let hash = file::part_hash(chunk);
        let data = parts.adopt(ShmVec::from_slice_in(alloc, chunk)?);
        parts.push(NativePart {
            data,
            size: len,
            hash,
        })?;
    }
    Ok(parts)
}

/// The native response: the root handle the server lent (none for an empty file), given back to
/// the server's pool when dropped.
pub struct NativeResponse<'s> {
    pool: &'s BorrowedPool,
    handle: Option<ArenaHandle>,
}

impl NativeResponse<'_> {
    /// The first byte of the first part (0 for an empty file): what the timer waits for.
    fn first_byte(&self) -> Result<u8, String> {
        let Some(handle) = &self.handle else {
            return Ok(0);
        };
        let parts = VecRef::<NativePart>::open(self.pool, handle).map_err(|e| e.to_string())?;
        if parts.is_empty() {
            return Ok(0);
        }
        let first = parts.get(0).map_err(|e| e.to_string())?;
        let data = first.data.open(self.pool).map_err(|e| e.to_string())?;
        if data.is_empty() {
            return Ok(0);
        }
        data.get(0).map_err(|e| e.to_string())
    }

    /// As [`file::verify`]: the part count, and each part's length and hash, read through the
    /// checked views.
    fn verify(&self, size: u64) -> Result<(), String> {
        let want = file::part_count(size);
        let Some(handle) = &self.handle else {
            return if want == 0 {
                Ok(())
            } else {
                Err(format!("no file lent, the file has {want} parts"))
            };
        };
        let parts = VecRef::<NativePart>::open(self.pool, handle).map_err(|e| e.to_string())?;
        if parts.len() as u64 != want {
            return Err(format!("{} parts lent, the file has {want}", parts.len()));
        }
        for k in 0..want {
            let part = parts.get(k as usize).map_err(|e| e.to_string())?;
            let data = part
                .data
                .open(self.pool)
                .and_then(|d| d.to_vec())
                .map_err(|e| format!("part {k}: {e}"))?;
            let (got, want) = (data.len() as u64, file::part_len(size, k));
            if got != part.size || got != want {
                return Err(format!(
                    "part {k}: {got} bytes of data, the part says {}, the file has {want}",
                    part.size
                ));
            }
            let got = file::part_hash(&data);
            if got != part.hash {
                return Err(format!(
                    "part {k}: the data hashes to {got:#018x}, the part says {:#018x}",
                    part.hash
                ));
            }
        }
        Ok(())
    }
}

impl Drop for NativeResponse<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Never blocks: queued if the return ring is full, pushed with the next release.
            if let Err(e) = self.pool.release_later(h) {
                eprintln!("perf_demo native: giving the file back failed: {e}");
            }
        }
    }
}

/// How long the client waits for a response (the first request of a 1 GiB file waits while the
/// server builds it).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Reader limits of the classic side: traversal sized for the largest message (one read of every
/// word, twice for the check after the timer), nesting as capnp's default.
fn classic_reader_options(max_file: u64) -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(2 * max_message_size(max_file) / 8));
    options
}

impl<'s> End<'s> {
    /// Client: asks for `name` and returns the round trip, from just before sending the request
    /// to just after reading the response's root and the first byte of its first part, with the
    /// response (checked by the caller after the timer).
    pub fn request(
        &mut self,
        name: &str,
        max_file: u64,
    ) -> Result<(Duration, Response<'s>), String> {
        match self {
            End::Classic { rx, tx } => {
                let mut req = capnp::message::Builder::new_default();
                req.init_root::<body::Builder<'_>>()
                    .init_get_cache_req()
                    .set_file_name(name);
                let options = classic_reader_options(max_file);
                let t0 = Instant::now();
                capnp::serialize::write_message(&mut *tx, &req).map_err(|e| e.to_string())?;
                tx.flush().map_err(|e| e.to_string())?;
                let msg = capnp::serialize::read_message(&mut *rx, options)
                    .map_err(|e| format!("classic: {e}"))?;
                let first = msg
                    .get_root::<body::Reader<'_>>()
                    .map_err(|e| e.to_string())
                    .and_then(|b| file::first_byte(b).map_err(|e| e.to_string()))?;
                std::hint::black_box(first);
                let rtt = t0.elapsed();
                Ok((rtt, Response::Classic(msg)))
            }
            End::Structured(ch) => {
                let mut req = ch.create_msg();
                req.body_root().init_get_cache_req().set_file_name(name);
                let t0 = Instant::now();
                let msg = ch
                    .sync_request(&req, RESPONSE_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                let first = msg
                    .body_root()
                    .map_err(|e| e.to_string())
                    .and_then(|b| file::first_byte(b).map_err(|e| e.to_string()))?;
                std::hint::black_box(first);
                let rtt = t0.elapsed();
                Ok((rtt, Response::Structured(msg)))
            }
            End::Native { ch, pools, buf } => {
                let NativePools::Reader(pool) = *pools else {
                    return Err("native: a server end does not request".into());
                };
                let t0 = Instant::now();
                ch.send(name.as_bytes())
                    .map_err(|e| format!("native: sending the request: {e}"))?;
                ch.recv_timeout(buf, RESPONSE_TIMEOUT)
                    .map_err(|e| format!("native: receiving the response: {e}"))?;
                let handle = match buf.len() {
                    0 => None,
                    _ => Some(
                        ArenaHandle::from_bytes(buf)
                            .map_err(|e| format!("native: the response is not a handle: {e:?}"))?,
                    ),
                };
                let rsp = NativeResponse { pool, handle };
                let first = rsp.first_byte()?;
                std::hint::black_box(first);
                let rtt = t0.elapsed();
                Ok((rtt, Response::Native(rsp)))
            }
        }
    }

    /// Server: answers requests until the client goes away. Each file's response is built once,
    /// on its first request, and sent again for every later one; a request with an empty name
    /// drops it (the client is done with that file).
    pub fn serve(self, max_file: u64) -> Result<(), String> {
        match self {
            End::Classic { mut rx, mut tx } => {
                let mut cached: Option<(String, capnp::message::Builder<_>)> = None;
                loop {
                    let req = match capnp::serialize::try_read_message(
                        &mut rx,
                        capnp::message::ReaderOptions::new(),
                    ) {
                        Ok(Some(req)) => req,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(format!("classic server: {e}")),
                    };
                    let name = requested_name(req.get_root().map_err(|e| e.to_string())?)?;
                    let rsp = if name.is_empty() {
                        cached = None;
                        let mut empty = capnp::message::Builder::new_default();
                        file::build_empty_response(empty.init_root());
                        write_flush(&mut tx, &empty)?;
                        continue;
                    } else {
                        match &cached {
                            Some((have, rsp)) if *have == name => rsp,
                            _ => {
                                cached = None;
                                let size = checked_size(&name, max_file)?;
                                let mut rsp = capnp::message::Builder::new_default();
                                file::build_response(rsp.init_root(), size);
                                &cached.insert((name, rsp)).1
                            }
                        }
                    };
                    write_flush(&mut tx, rsp)?;
                }
            }
            End::Structured(ch) => {
                let mut cached: Option<(String, MsgOut<body::Owned>)> = None;
                loop {
                    let req = match ch.recv() {
                        Ok(req) => req,
                        Err(StructuredError::Closed) => return Ok(()),
                        Err(e) if e.is_peer_gone() => return Ok(()),
                        Err(e) => return Err(format!("structured server: {e}")),
                    };
                    let name = requested_name(req.body_root().map_err(|e| e.to_string())?)?;
                    if name.is_empty() {
                        cached = None;
                        let mut empty = ch.create_msg();
                        file::build_empty_response(empty.body_root());
                        ch.send_response(&empty, &req).map_err(|e| e.to_string())?;
                        continue;
                    }
                    let rsp = match &cached {
                        Some((have, rsp)) if *have == name => rsp,
                        _ => {
                            cached = None;
                            let size = checked_size(&name, max_file)?;
                            // One segment for the whole response: in zero copy, one block to
                            // lend and check, however large the file.
                            let mut rsp = ch.create_msg_sized(response_size(size));
                            file::build_response(rsp.body_root(), size);
                            &cached.insert((name, rsp)).1
                        }
                    };
                    ch.send_response(rsp, &req).map_err(|e| e.to_string())?;
                }
            }
            End::Native {
                mut ch,
                pools,
                mut buf,
            } => {
                let NativePools::Lender(pool, to) = pools else {
                    return Err("native: a client end does not serve".into());
                };
                let alloc = ShmAlloc::from(pool);
                let mut cached: Option<(String, ShmVec<NativePart>)> = None;
                loop {
                    match ch.recv(&mut buf) {
                        Ok(_) => {}
                        Err(RecvError::Closed | RecvError::PeerGone) => return Ok(()),
                        Err(e) => return Err(format!("native server: {e}")),
                    }
                    let name = std::str::from_utf8(&buf)
                        .map_err(|_| "native server: a file name that is not UTF-8".to_string())?
                        .to_owned();
                    // Take back the files the client has given back, so the pool does not fill.
                    pool.drain_returns(to)
                        .map_err(|e| format!("native server: {e}"))?;
                    if name.is_empty() {
                        cached = None;
                        ch.send(&[]).map_err(|e| format!("native server: {e}"))?;
                        continue;
                    }
                    let root = match &cached {
                        Some((have, root)) if *have == name => root,
                        _ => {
                            cached = None;
                            let size = checked_size(&name, max_file)?;
                            let root = build_native(&alloc, size)
                                .map_err(|e| format!("native server: building {name}: {e}"))?;
                            &cached.insert((name, root)).1
                        }
                    };
                    let handle = root
                        .lend(pool, to)
                        .map_err(|e| format!("native server: lending the file: {e}"))?;
                    ch.send(&handle.to_bytes())
                        .map_err(|e| format!("native server: {e}"))?;
                }
            }
        }
    }

    /// Client: an untimed request of the same file, its response dropped without the check. The
    /// check of the last response streamed the whole file through the caches and gave the
    /// server's thread time to fall asleep; this brings both sides back to the state a stream of
    /// requests leaves them in (the server's thread awake; the channel, the pools' block headers
    /// and the response's first lines, and their TLB entries, in cache) before the next timed
    /// request.
    pub fn rewarm(&mut self, name: &str, max_file: u64) -> Result<(), String> {
        self.request(name, max_file).map(drop)
    }

    /// Client: asks the server to drop the file it holds for this mode.
    pub fn release(&mut self, max_file: u64) -> Result<(), String> {
        let (_, rsp) = self.request("", max_file)?;
        rsp.verify(0)
    }
}

fn write_flush<A: capnp::message::Allocator>(
    tx: &mut BufWriter<UnixStream>,
    msg: &capnp::message::Builder<A>,
) -> Result<(), String> {
    capnp::serialize::write_message(&mut *tx, msg).map_err(|e| format!("classic server: {e}"))?;
    tx.flush().map_err(|e| format!("classic server: {e}"))
}

/// The file name of a request.
fn requested_name(body: body::Reader<'_>) -> Result<String, String> {
    match body.which().map_err(|e| e.to_string())? {
        body::GetCacheReq(req) => Ok(req
            .and_then(|r| r.get_file_name())
            .and_then(|n| n.to_string().map_err(Into::into))
            .map_err(|e| e.to_string())?),
        body::GetCacheRsp(_) => Err("the client sent a response".into()),
    }
}

/// The size a requested name stands for, within what the server was set up for.
fn checked_size(name: &str, max_file: u64) -> Result<u64, String> {
    match file::size_of_name(name) {
        Some(size) if size <= max_file => Ok(size),
        _ => Err(format!("no such file {name:?} (at most {max_file} bytes)")),
    }
}
