//! The shared-memory ring transport: two [`ShmRing`]s (one per direction, each its own sealed
//! memfd) plus a companion Unix socket pair that carries descriptors and reports the peer's death.
//!
//! # Frames
//!
//! A message is one ring frame when it fits the ring's largest frame, else a run of frames of
//! `capacity / 4` bytes. The frame's 16-bit tag says what it is:
//!
//! ```text
//! bit 0  FIRST   first frame of a message; a FIRST frame without LAST starts with the message's
//!                total length (u64 LE), checked against max_message_size before anything is kept
//! bit 1  LAST    last frame of a message
//! bit 2  CLOSE   orderly close (alone, empty)
//! bit 3  CHANNEL the message carries a channel (`send_channel`; FIRST frame only)
//! bits 8..16     descriptors sent with the message (FIRST frame only)
//! ```
//!
//! The receiver checks the sequence with the validator the mq transport uses
//! (`channel::framing::Sequence`: no FIRST inside a message, no continuation without one, the
//! bytes never exceed the announced total and the LAST frame completes it exactly); anything else
//! is [`Corruption`]. The ring itself validates its positions and frame headers (`flowipc_core`).
//!
//! The common message (one frame, no descriptors, no channel) also has a short path
//! ([`RingTransport::try_send_fast`], [`RingTransport::try_recv_fast`], called by `Channel` before
//! its general path): a tagged push, or a read of a frame tagged exactly `FIRST | LAST` within the
//! size limit between messages, which is the one case where the validator would accept the frame
//! whole and leave its state unchanged. Every other frame is left in the ring (`keep`) for the
//! general path, so nothing a peer writes is judged by the short path alone.
//!
//! # Descriptors
//!
//! Before the FIRST frame of a message with descriptors is published, the descriptors are sent on
//! the companion socket as one byte with `SCM_RIGHTS`. The receiver, on a FIRST frame that declares
//! `n` descriptors, reads exactly one byte from the socket and must get exactly `n`.
//!
//! # Waiting and peer death
//!
//! The fast path (room in the ring, or a frame waiting) makes no system call and, once the buffers
//! have grown, no allocation. Blocking calls wait with the ring's policy (spin, then futex by
//! default). The process's peer watcher (`crate::watch`, one thread) polls the companion socket
//! of every ring side and wakes a blocked side as soon as the socket hangs up, so a SIGKILLed peer
//! ends a blocked call with `PeerGone` at once, and sleeps need no timeout. Where the watcher
//! cannot run (a fork child of a process that used it), blocked calls instead check every 20 ms
//! whether the socket reports a hang-up. A ring closed by the peer without
//! an orderly close marker also counts as `PeerGone`.
//!
//! Each ring also has a doorbell pair (`flowipc_sys::wake`: a Unix stream socket pair), created
//! with the rings; each end holds its own end of each pair and never the peer's
//! ([`RingTransport::into_fds`]). The producer rings its end after a publish when the consumer
//! armed a wake-up (`Consumer::arm_wake`) on an empty ring, which makes the consumer's end
//! readable; the consumer rings its end after freeing room when the producer armed one on a full
//! ring. Synchronous calls sleep on futexes and never arm them; the async face arms them and
//! awaits its doorbell with tokio's reactor. Doorbells replaced eventfds: a peer sharing an
//! eventfd's open file description could clear `O_NONBLOCK` and saturate the counter, and the
//! next write would block for ever; a doorbell is rung with `MSG_DONTWAIT`, so nothing the peer
//! does to it can block this end. An end is rebuilt only from all five descriptors.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use flowipc_sys::socket::{self, PollFd, PollFlags, RecvFds, RecvFlags, SendFlags};
use flowipc_sys::Errno;

use crate::channel::error::{Corruption, OpenError, RecvError, SendError};
use crate::channel::framing::{Accepted, Chunk, Sequence};
use crate::channel::{Blocking, Limits, SendCursor, Step};
use crate::ring::{
    RingOpenError, RingReadChunk, RingReceiver, RingRecvError, RingSendError, RingSender,
    RingWriteChunk, ShmRing, WaitPolicy,
};

const FIRST: u16 = 0x01;
const LAST: u16 = 0x02;
const CLOSE: u16 = 0x04;
const CHANNEL: u16 = 0x08;
const FLAGS: u16 = 0xff;

/// How often a blocked side checks the companion socket for the peer's death.
const PEER_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Default ring capacity per direction.
pub(crate) const DEFAULT_RING_CAPACITY: usize = 1 << 20;

fn ring_open_error(e: RingOpenError) -> OpenError {
    OpenError::Ring(e)
}

/// Whether the peer's end of stream socket `sock` is gone.
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::from_borrowed_fd(sock, PollFlags::RDHUP)];
    matches!(socket::poll(&mut pfd, Some(Duration::ZERO)), Ok(n) if n > 0)
        && pfd[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
}

/// This end's doorbell of one ring (see `flowipc_sys::wake`): one end of a socket pair whose
/// other end the peer holds. Ringing it wakes the peer's side of that ring (the producer rings
/// "data", the consumer rings "room"); it becomes readable when the peer rings it. Every call on
/// it is non-blocking per call, so nothing the peer does to the descriptors (flags, a full buffer,
/// a shutdown) can make this end block.
#[derive(Debug)]
pub(crate) struct Doorbell(OwnedFd);

impl Doorbell {
    /// A new pair: (the producer's end, the consumer's end).
    fn pair() -> Result<(Self, Self), Errno> {
        let (p, c) = flowipc_sys::wake::pair()?;
        Ok((Doorbell(p), Doorbell(c)))
    }

    fn try_clone(&self) -> Result<Self, Errno> {
        flowipc_sys::fd::dup_cloexec(self.0.as_fd()).map(Doorbell)
    }

    /// Takes a descriptor a peer claims is this end's doorbell of a ring. It is rung, drained and
    /// registered with a reactor here, so it must be a Unix stream socket.
    fn from_received(fd: OwnedFd) -> Result<Self, OpenError> {
        if !flowipc_sys::wake::is_doorbell(fd.as_fd()) {
            return Err(OpenError::BadFds {
                kind: "ring",
                reason: "a wake-up descriptor is not a Unix stream socket".to_owned(),
            });
        }
        Ok(Doorbell(fd))
    }
}

/// Non-blocking (and, for the sync API, blocking) core of the ring transport.
#[derive(Debug)]
pub(crate) struct RingTransport {
    tx_ring: ShmRing,
    rx_ring: ShmRing,
    /// This end's doorbells of the tx ring (rung after a publish, readable when the peer freed
    /// room) and of the rx ring (rung after freeing room, readable when the peer published).
    tx_bell: Doorbell,
    rx_bell: Doorbell,
    /// Taken on first use, so that an unused end can be handed to another process.
    tx: Option<RingSender>,
    rx: Option<RingReceiver>,
    sock: OwnedFd,
    policy: WaitPolicy,
    limits: Limits,
    // Receive state.
    /// The chunk-sequence validator shared with the mq transport (`channel::framing`).
    seq: Sequence,
    fds: Vec<OwnedFd>,
    assembling: Vec<u8>,
    fdbuf: Box<RecvFds>,
    peer_closed: bool,
    /// The tag of a one-frame message that an in-place receive validated and left in the ring
    /// (its descriptors already taken), to be handed out by [`RingTransport::take_in_place`].
    in_ring: Option<u16>,
    /// Whether the message `recv_step` last completed carries a channel.
    last_channel: bool,
}

/// One end of a ring channel before it becomes a transport: its tx and rx rings with its
/// doorbells of each, and its end of the companion socket.
#[derive(Debug)]
pub(crate) struct RingEnd {
    tx: (ShmRing, Doorbell),
    rx: (ShmRing, Doorbell),
    sock: OwnedFd,
}

/// Creates the two rings, their doorbell pairs and the companion socket of a channel. Each end
/// gets its own end of each doorbell pair, never a duplicate of the peer's.
pub(crate) fn create(capacity: usize) -> Result<(RingEnd, RingEnd), OpenError> {
    let bell = |e| OpenError::os("socketpair", e);
    let ab = ShmRing::create(capacity).map_err(ring_open_error)?;
    let ba = ShmRing::create(capacity).map_err(ring_open_error)?;
    let (ab_p, ab_c) = Doorbell::pair().map_err(bell)?;
    let (ba_p, ba_c) = Doorbell::pair().map_err(bell)?;
    let (sa, sb) = socket::socketpair_stream().map_err(|e| OpenError::os("socketpair", e))?;
    let a = RingEnd {
        tx: (ab.clone(), ab_p),
        rx: (ba.clone(), ba_c),
        sock: sa,
    };
    let b = RingEnd {
        tx: (ba, ba_p),
        rx: (ab, ab_c),
        sock: sb,
    };
    Ok((a, b))
}

/// Opens an end received as descriptors: tx memfd, rx memfd, socket, then this end's doorbells
/// of the tx ring and of the rx ring (see [`RingTransport::into_fds`]).
pub(crate) fn open(fds: Vec<OwnedFd>) -> Result<RingEnd, OpenError> {
    let bad = |reason: String| OpenError::BadFds {
        kind: "ring",
        reason,
    };
    let n = fds.len();
    let Ok([tx, rx, sock, tb, rb]) = <[OwnedFd; 5]>::try_from(fds) else {
        return Err(bad(format!(
            "expected five descriptors (tx ring, rx ring, socket, 2 doorbells), got {n}; \
             send every descriptor of `Channel::into_fds`, in order"
        )));
    };
    let tx_bell = Doorbell::from_received(tb)?;
    let rx_bell = Doorbell::from_received(rb)?;
    let open_err = |e: RingOpenError| bad(e.to_string());
    Ok(RingEnd {
        tx: (ShmRing::open(tx).map_err(open_err)?, tx_bell),
        rx: (ShmRing::open(rx).map_err(open_err)?, rx_bell),
        sock,
    })
}

impl RingTransport {
    pub(crate) fn new(end: RingEnd, policy: WaitPolicy, limits: Limits) -> Self {
        let RingEnd {
            tx: (tx_ring, tx_bell),
            rx: (rx_ring, rx_bell),
            sock,
        } = end;
        RingTransport {
            tx_ring,
            rx_ring,
            tx_bell,
            rx_bell,
            tx: None,
            rx: None,
            sock,
            policy,
            fdbuf: Box::new(RecvFds::with_limit(limits.max_fds_per_message)),
            limits,
            seq: Sequence::default(),
            fds: Vec::new(),
            assembling: Vec::new(),
            peer_closed: false,
            in_ring: None,
            last_channel: false,
        }
    }

    /// A second transport for the sending half of a split channel: the same rings, a duplicate
    /// of the socket, and this transport's ring sender if it took one.
    pub(crate) fn split_sender(&mut self) -> Result<Self, OpenError> {
        let dup = |e| OpenError::os("dup", e);
        let sock = flowipc_sys::fd::dup_cloexec(self.sock.as_fd()).map_err(dup)?;
        let end = RingEnd {
            tx: (self.tx_ring.clone(), self.tx_bell.try_clone().map_err(dup)?),
            rx: (self.rx_ring.clone(), self.rx_bell.try_clone().map_err(dup)?),
            sock,
        };
        let mut half = RingTransport::new(end, self.policy, self.limits);
        half.tx = self.tx.take();
        Ok(half)
    }

    pub(crate) fn sock(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The descriptors of this end: tx memfd, rx memfd, socket, then its doorbells of the tx ring
    /// and of the rx ring. Fails once a ring side was taken
    /// (giving it up would close the ring for the peer).
    pub(crate) fn into_fds(self) -> Result<Vec<OwnedFd>, SendError> {
        if self.tx.is_some() || self.rx.is_some() {
            return Err(SendError::NotTransferable);
        }
        let dup = |fd: BorrowedFd<'_>| {
            flowipc_sys::fd::dup_cloexec(fd).map_err(|e| SendError::os("dup", e))
        };
        let mut fds = vec![dup(self.tx_ring.fd())?, dup(self.rx_ring.fd())?, self.sock];
        fds.extend([self.tx_bell.0, self.rx_bell.0]);
        Ok(fds)
    }

    #[cfg(feature = "tokio")]
    /// The doorbell the peer rings when this end armed its receive wake-up (this end's of the rx
    /// ring).
    pub(crate) fn recv_bell(&self) -> BorrowedFd<'_> {
        self.rx_bell.0.as_fd()
    }

    #[cfg(feature = "tokio")]
    /// The doorbell the peer rings when this end armed its send wake-up (this end's of the tx
    /// ring).
    pub(crate) fn send_bell(&self) -> BorrowedFd<'_> {
        self.tx_bell.0.as_fd()
    }

    #[cfg(feature = "tokio")]
    /// Arms the receive wake-up (see `RingReceiver::arm_doorbell_wake`): `Ok(true)` if the ring
    /// has something already (receive again), `Ok(false)` if the peer's next message writes
    /// [`recv_bell`](Self::recv_bell).
    pub(crate) fn arm_recv(&mut self) -> Result<bool, RecvError> {
        self.receiver()?;
        let Some(rx) = self.rx.as_mut() else {
            return Err(RecvError::Poisoned);
        };
        rx.arm_doorbell_wake()
            .map_err(|_| Corruption::Ring("invalid positions or frame header".into()).into())
    }

    #[cfg(feature = "tokio")]
    /// Arms the send wake-up (see `RingSender::arm_doorbell_wake`): `Ok(true)` if the peer freed
    /// space already (send again), `Ok(false)` if its next read writes
    /// [`send_bell`](Self::send_bell).
    pub(crate) fn arm_send(&mut self) -> Result<bool, SendError> {
        self.sender()?;
        let Some(tx) = self.tx.as_mut() else {
            return Err(SendError::Poisoned);
        };
        tx.arm_doorbell_wake().map_err(map_send)
    }

    #[cfg(feature = "tokio")]
    /// Withdraws an armed receive (`recv`) or send wake-up that is no longer needed.
    pub(crate) fn disarm(&self, recv: bool) {
        match (recv, &self.rx, &self.tx) {
            (true, Some(rx), _) => rx.disarm(),
            (false, _, Some(tx)) => tx.disarm(),
            _ => {}
        }
    }

    #[cfg(feature = "tokio")]
    /// Makes the next idle receive or send check for the peer's death at once (the reactor
    /// reported activity on the companion socket). With the peer watcher that check is already
    /// a load on every call; this matters for the fallback check (a fork child).
    pub(crate) fn check_peer_soon(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.check_peer_soon();
        }
        if let Some(rx) = self.rx.as_mut() {
            rx.check_peer_soon();
        }
    }

    pub(crate) fn discard(&mut self) {
        self.seq.reset();
        self.in_ring = None;
        self.fds.clear();
        self.fdbuf.clear();
        self.assembling = Vec::new();
    }

    pub(crate) fn has_buffered_input(&self) -> bool {
        self.seq.in_progress()
    }

    /// Whether the message the last successful `recv_step` returned carries a channel.
    pub(crate) fn last_carries_channel(&self) -> bool {
        self.last_channel
    }

    fn peer_check(&self) -> Result<impl FnMut() -> bool + Send + 'static, Errno> {
        let sock = flowipc_sys::fd::dup_cloexec(self.sock.as_fd())?;
        Ok(move || !hung_up(sock.as_fd()))
    }

    /// Takes this end's sending side of the ring on first use.
    #[inline]
    fn sender(&mut self) -> Result<(), SendError> {
        if self.tx.is_none() {
            self.take_sender()?;
        }
        Ok(())
    }

    #[cold]
    fn take_sender(&mut self) -> Result<(), SendError> {
        let mut tx = self.tx_ring.sender().map_err(SendError::Ring)?;
        tx.set_policy(self.policy);
        let fd = flowipc_sys::fd::dup_cloexec(self.tx_bell.0.as_fd())
            .map_err(|e| SendError::os("dup", e))?;
        tx.set_peer_doorbell(fd);
        // The process's peer watcher wakes a blocked send when the socket hangs up; without
        // it, sleeps are bounded and the socket is polled every interval.
        if tx.watch_peer_socket(self.sock.as_fd()).is_err() {
            tx.set_peer_check(
                PEER_CHECK_INTERVAL,
                self.peer_check().map_err(|e| SendError::os("dup", e))?,
            );
        }
        self.tx = Some(tx);
        Ok(())
    }

    /// Takes this end's receiving side of the ring on first use.
    #[inline]
    fn receiver(&mut self) -> Result<(), RecvError> {
        if self.rx.is_none() {
            self.take_receiver()?;
        }
        Ok(())
    }

    #[cold]
    fn take_receiver(&mut self) -> Result<(), RecvError> {
        let mut rx = self.rx_ring.receiver().map_err(RecvError::Ring)?;
        rx.set_policy(self.policy);
        let fd = flowipc_sys::fd::dup_cloexec(self.rx_bell.0.as_fd())
            .map_err(|e| RecvError::os("dup", e))?;
        rx.set_peer_doorbell(fd);
        // As for the sender.
        if rx.watch_peer_socket(self.sock.as_fd()).is_err() {
            rx.set_peer_check(
                PEER_CHECK_INTERVAL,
                self.peer_check().map_err(|e| RecvError::os("dup", e))?,
            );
        }
        self.rx = Some(rx);
        Ok(())
    }

    /// The common send without the general path's bookkeeping: a message of one frame, no
    /// descriptors, into a ring that has room. `false`: not taken and nothing was sent; the
    /// general path ([`send_step`](Self::send_step)) then sends it, waits or reports the error.
    /// The frame is the one `send_step` writes for such a message (`FIRST | LAST`, no count).
    #[inline]
    pub(crate) fn try_send_fast(&mut self, data: &[u8]) -> bool {
        match self.tx.as_mut() {
            Some(tx) if data.len() <= tx.max_payload() => {
                tx.try_send_tagged(data, FIRST | LAST).is_ok()
            }
            _ => false,
        }
    }

    /// The common receive without the general path's bookkeeping: between messages, a frame
    /// tagged exactly `FIRST | LAST` (no descriptors, no channel, no close) within the size
    /// limit, copied into `out`. That is the one frame sequence [`Sequence::accept`] takes
    /// whole, leaving its state as it was, so skipping it changes nothing. `false`: not taken and
    /// nothing consumed (any other frame is left in the ring with `keep`); the general path
    /// ([`recv_step`](Self::recv_step)) then receives, waits or reports the error.
    #[inline]
    pub(crate) fn try_recv_fast(&mut self, out: &mut Vec<u8>) -> bool {
        if self.peer_closed || self.in_ring.is_some() || self.seq.in_progress() {
            return false;
        }
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        let Ok(chunk) = rx.try_read_chunk() else {
            return false;
        };
        if chunk.tag() != FIRST | LAST || chunk.len() > self.limits.max_message_size {
            chunk.keep();
            return false;
        }
        out.clear();
        chunk.extend_vec(0, out);
        self.last_channel = false;
        true
    }

    /// Sends frames until done or the ring is full: per `block`, returns `Blocked` at once or
    /// waits for room (until the deadline, if any; `Blocked` then too).
    pub(crate) fn send_step(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        block: Blocking,
    ) -> Result<Step, SendError> {
        self.sender()?;
        let Some(tx) = self.tx.as_mut() else {
            return Err(SendError::Poisoned);
        };
        if cur.close {
            if tx
                .try_send_tagged(&[], CLOSE)
                .map_or_else(full, |()| Ok(true))?
            {
                cur.chunk = 1;
                return Ok(Step::Done);
            }
            let Some(chunk) = reserve(tx, 0, block)? else {
                return Ok(Step::Blocked);
            };
            chunk.commit_tagged(0, CLOSE);
            cur.chunk = 1;
            return Ok(Step::Done);
        }
        if !fds.is_empty() && !cur.fds_sent {
            if !send_fds(&self.sock, fds, block)? {
                return Ok(Step::Blocked);
            }
            cur.fds_sent = true;
        }
        let nfds = ((fds.len() as u16) << 8) | if cur.channel { CHANNEL } else { 0 };
        let max = tx.max_payload();
        if data.len() <= max {
            // The common case: one frame, one copy, no system call unless the peer sleeps.
            let tag = FIRST | LAST | nfds;
            if !tx
                .try_send_tagged(data, tag)
                .map_or_else(full, |()| Ok(true))?
            {
                let Some(mut chunk) = reserve(tx, data.len(), block)? else {
                    return Ok(Step::Blocked);
                };
                chunk.write(0, data);
                chunk.commit_tagged(data.len(), tag);
            }
            cur.chunk = 1;
            cur.pos = data.len().max(1);
            return Ok(Step::Done);
        }
        // Several frames of a quarter ring each, so that copying in and out overlap.
        let room = (tx.capacity() / 4).min(max);
        while cur.pos < data.len() {
            let first = cur.chunk == 0;
            let head = if first { 8 } else { 0 };
            let take = (room - head).min(data.len() - cur.pos);
            let last = cur.pos + take == data.len();
            let tag = if first { FIRST | nfds } else { 0 } | if last { LAST } else { 0 };
            let Some(mut chunk) = reserve(tx, head + take, block)? else {
                return Ok(Step::Blocked);
            };
            if first {
                chunk.write(0, &(data.len() as u64).to_le_bytes());
            }
            chunk.write(head, &data[cur.pos..cur.pos + take]);
            chunk.commit_tagged(head + take, tag);
            cur.pos += take;
            cur.chunk += 1;
        }
        Ok(Step::Done)
    }

    /// Receives a complete message if one is there (with `block`: waits for it until the
    /// deadline, if any). `Ok(None)`: nothing yet.
    ///
    /// With `in_place`, a message that is one frame is checked (tag, length, descriptors) but
    /// left in the ring, and `out` is not touched: [`take_in_place`](Self::take_in_place) then
    /// hands out the frame. Longer messages are assembled in `out` as usual.
    pub(crate) fn recv_step(
        &mut self,
        out: &mut Vec<u8>,
        block: Blocking,
        in_place: bool,
    ) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        debug_assert!(self.in_ring.is_none(), "an in-place frame was not taken");
        if self.peer_closed {
            return Err(RecvError::Closed);
        }
        self.receiver()?;
        let mut wait = false;
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Err(RecvError::Poisoned);
            };
            // The receiver reports `PeerGone` only once the ring is empty and the peer watcher
            // (or the fallback check) has seen the peer go, so frames published before the death
            // are all delivered first.
            // Try first; wait (per `block`) only for an empty ring, then look again.
            if wait {
                wait = false;
                if !wait_for_frame(rx, block)? {
                    return Ok(None);
                }
            }
            let chunk = match rx.try_read_chunk() {
                Ok(chunk) => chunk,
                Err(RingRecvError::WouldBlock) => {
                    wait = true;
                    continue;
                }
                Err(e) => return Err(map_recv(e)),
            };
            let tag = chunk.tag();
            let Carrier { frame, skip } = carrier(&chunk)?;
            let first = frame.flags & FIRST as u8 != 0;
            let (last, nfds) = match self.seq.accept(&frame, self.limits.max_message_size)? {
                Accepted::Close => {
                    drop(chunk);
                    self.peer_closed = true;
                    return Err(RecvError::Closed);
                }
                Accepted::Bytes { last, nfds, .. } => (last, nfds),
            };
            if first {
                self.last_channel = tag & CHANNEL != 0;
                if in_place && last && tag & CHANNEL == 0 {
                    // Stays in the ring for the caller; descriptors first, as on the copy path.
                    let fds = take_fds(&self.sock, &mut self.fdbuf, &self.limits, nfds)?;
                    chunk.keep();
                    self.in_ring = Some(tag);
                    return Ok(Some(fds));
                }
                self.assembling.clear();
                chunk.extend_vec(skip, &mut self.assembling);
                drop(chunk);
                self.fds = take_fds(&self.sock, &mut self.fdbuf, &self.limits, nfds)?;
            } else {
                chunk.extend_vec(0, &mut self.assembling);
                drop(chunk);
            }
            if last {
                std::mem::swap(out, &mut self.assembling);
                return Ok(Some(std::mem::take(&mut self.fds)));
            }
        }
    }
}

/// Waits (per `block`) for a frame in an empty ring: `Ok(false)` if none may be waited for or
/// none came by the deadline.
fn wait_for_frame(rx: &mut RingReceiver, block: Blocking) -> Result<bool, RecvError> {
    let deadline = match block {
        Blocking::Never => return Ok(false),
        Blocking::Forever => None,
        Blocking::Until(d) => Some(d),
    };
    match rx.wait_for_message(deadline) {
        Ok(()) => Ok(true),
        Err(RingRecvError::Timeout) => Ok(false),
        Err(e) => Err(map_recv(e)),
    }
}

/// A frame's carrier, decoded for the shared sequence validator.
struct Carrier {
    frame: Chunk,
    /// Bytes of the frame before the payload: the total length a multi-frame message's first
    /// frame starts with.
    skip: usize,
}

/// Decodes a frame's carrier: its tag (flags, descriptor count) and, on the first frame of a
/// multi-frame message, the total length it starts with. Unknown flags, `CHANNEL` on a frame
/// that is not a message's first, and a first frame too short for its total are [`Corruption`];
/// the sequence itself is checked by [`Sequence::accept`].
fn carrier(chunk: &RingReadChunk<'_>) -> Result<Carrier, RecvError> {
    let tag = chunk.tag();
    let flags = tag & FLAGS;
    if flags & !(FIRST | LAST | CLOSE | CHANNEL) != 0
        || (flags & CHANNEL != 0 && flags & FIRST == 0)
    {
        return Err(Corruption::BadHeader(u64::from(tag)).into());
    }
    let len = chunk.len();
    let (total, skip) = match (flags & FIRST != 0, flags & LAST != 0) {
        (true, true) => (Some(len as u64), 0),
        (true, false) => {
            let mut word = [0u8; 8];
            if chunk.read(0, &mut word) != 8 {
                return Err(Corruption::BadChunk("first frame shorter than its header").into());
            }
            (Some(u64::from_le_bytes(word)), 8)
        }
        (false, _) => (None, 0),
    };
    let frame = Chunk {
        flags: (flags & (FIRST | LAST | CLOSE)) as u8,
        nfds: usize::from(tag >> 8),
        index: None,
        total,
        len: len - skip,
    };
    Ok(Carrier { frame, skip })
}

impl RingTransport {
    /// The one-frame message that [`recv_step`](Self::recv_step) with `in_place` left in the
    /// ring, or `None` if the last step assembled its message in the caller's buffer instead.
    /// Dropping the chunk frees the frame.
    pub(crate) fn take_in_place(&mut self) -> Option<Result<RingReadChunk<'_>, RecvError>> {
        let tag = self.in_ring.take()?;
        let Some(rx) = self.rx.as_mut() else {
            return Some(Err(RecvError::Poisoned));
        };
        // The frame was validated a moment ago; a producer that rewrote a published frame since
        // is corrupting the ring.
        Some(match rx.try_read_chunk() {
            Ok(chunk) if chunk.tag() == tag => Ok(chunk),
            Ok(_) | Err(_) => {
                Err(Corruption::Ring("a published frame changed under the reader".into()).into())
            }
        })
    }

    /// Whether a message of `len` bytes goes as one frame, so that it can be built in place.
    pub(crate) fn fits_one_frame(&mut self, len: usize) -> Result<bool, SendError> {
        self.sender()?;
        Ok(self.tx.as_ref().is_some_and(|tx| len <= tx.max_payload()))
    }

    /// Reserves one frame of `len` bytes (at most [`fits_one_frame`](Self::fits_one_frame)), lets
    /// `build` write the message into it in place (it gets the frame and gives it back), sends
    /// `fds` on the companion socket, and publishes the frame. With `block`, waits for room (until the deadline, if any); without,
    /// gives [`SendError::WouldBlock`] at once when the ring or the socket is full. On any error
    /// nothing is sent (`build` may or may not have run).
    pub(crate) fn send_in_place<R>(
        &mut self,
        len: usize,
        fds: &[BorrowedFd<'_>],
        block: Blocking,
        build: &mut Option<
            impl for<'c> FnOnce(RingWriteChunk<'c>) -> (Option<RingWriteChunk<'c>>, R),
        >,
    ) -> Result<R, SendError> {
        self.sender()?;
        let Some(tx) = self.tx.as_mut() else {
            return Err(SendError::Poisoned);
        };
        let Some(chunk) = reserve(tx, len, block)? else {
            return Err(SendError::WouldBlock);
        };
        // `build` runs only once room is reserved, so a caller may retry after `WouldBlock`
        // (the async face does). It hands the chunk back to be published (always: it is the only
        // chunk it has).
        let internal = |what: &str| SendError::Io {
            op: "building a message in place",
            source: io::Error::other(what.to_owned()),
        };
        let Some(build) = build.take() else {
            return Err(internal("the message builder was already used"));
        };
        let (Some(chunk), out) = build(chunk) else {
            return Err(internal("the builder did not return the ring frame"));
        };
        // Before the frame is published: the receiver takes them when it sees the frame.
        while !fds.is_empty() && !send_fds(&self.sock, fds, block)? {
            if !block.is_blocking() || block.expired() {
                return Err(SendError::WouldBlock);
            }
        }
        let nfds = (fds.len() as u16) << 8;
        chunk.commit_tagged(len, FIRST | LAST | nfds);
        Ok(out)
    }
}

/// `Ok(false)` for a full ring, the mapped error otherwise (the `Err` arm of a try-push).
fn full(e: RingSendError) -> Result<bool, SendError> {
    match e {
        RingSendError::WouldBlock => Ok(false),
        e => Err(map_send(e)),
    }
}

/// Room for a frame of `len` bytes: reserved at once, or, per `block`, after waiting for the
/// receiver to free some. `Ok(None)`: no room yet (non-blocking) or by the deadline. The one
/// place where the ring transport turns a full ring into a wait and maps its errors.
fn reserve(
    tx: &mut RingSender,
    len: usize,
    block: Blocking,
) -> Result<Option<RingWriteChunk<'_>>, SendError> {
    let got = match block.timeout() {
        None => tx.try_write_chunk(len),
        Some(timeout) => tx.write_chunk(len, timeout),
    };
    match got {
        Ok(chunk) => Ok(Some(chunk)),
        Err(RingSendError::WouldBlock | RingSendError::Timeout) => Ok(None),
        Err(e) => Err(map_send(e)),
    }
}

/// Puts the descriptors of the next message on the companion socket as one byte. `Ok(false)`:
/// the socket is full (blocking: after waiting for it per `block`, at most a peer-check
/// interval, so the caller re-checks the peer).
fn send_fds(sock: &OwnedFd, fds: &[BorrowedFd<'_>], block: Blocking) -> Result<bool, SendError> {
    match socket::send_with_fds(sock.as_fd(), &[0], fds, SendFlags::DONTWAIT) {
        Ok(_) => Ok(true),
        Err(Errno::AGAIN) => {
            if let Some(timeout) = block.timeout() {
                let slice = timeout.map_or(PEER_CHECK_INTERVAL, |t| t.min(PEER_CHECK_INTERVAL));
                let mut pfd = [PollFd::new(sock, PollFlags::OUT)];
                let _ = socket::poll(&mut pfd, Some(slice));
                if hung_up(sock.as_fd()) {
                    return Err(SendError::PeerGone);
                }
            }
            Ok(false)
        }
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(SendError::os("sendmsg on the ring channel's socket", e)),
    }
}

/// Reads the descriptors announced by a FIRST frame from the companion socket.
#[inline]
fn take_fds(
    sock: &OwnedFd,
    fdbuf: &mut RecvFds,
    limits: &Limits,
    n: usize,
) -> Result<Vec<OwnedFd>, RecvError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > limits.max_fds_per_message {
        return Err(Corruption::TooManyFds {
            declared: n,
            max: limits.max_fds_per_message,
        }
        .into());
    }
    let mut byte = [0u8; 1];
    loop {
        match socket::recv_with_fds(sock.as_fd(), &mut byte, fdbuf, RecvFlags::DONTWAIT) {
            Ok(1) => break,
            // The sender puts descriptors on the socket before it publishes the frame, so
            // they must be there.
            Ok(_) | Err(Errno::AGAIN) => {
                fdbuf.clear();
                return Err(Corruption::FdCountMismatch {
                    declared: n,
                    arrived: 0,
                }
                .into());
            }
            Err(Errno::INTR) => {}
            Err(Errno::MSGSIZE) => return Err(Corruption::FdsTruncated.into()),
            Err(e) => return Err(RecvError::os("recvmsg on the ring channel's socket", e)),
        }
    }
    let fds: Vec<OwnedFd> = fdbuf.drain().collect();
    if fds.len() != n {
        return Err(Corruption::FdCountMismatch {
            declared: n,
            arrived: fds.len(),
        }
        .into());
    }
    Ok(fds)
}

fn map_recv(e: RingRecvError) -> RecvError {
    match e {
        RingRecvError::PeerGone | RingRecvError::Closed => RecvError::PeerGone,
        RingRecvError::Corrupt => {
            Corruption::Ring("invalid positions or frame header".into()).into()
        }
        RingRecvError::Timeout => RecvError::TimedOut,
        RingRecvError::WouldBlock => RecvError::WouldBlock,
        // The channel reads frames in place, never into a buffer of its own.
        RingRecvError::BufferTooSmall { needed } => {
            Corruption::Ring(format!("a frame of {needed} bytes does not fit")).into()
        }
    }
}

fn map_send(e: RingSendError) -> SendError {
    match e {
        RingSendError::Closed | RingSendError::PeerGone => SendError::PeerGone,
        RingSendError::TooLarge { len, max } => SendError::TooLarge { len, max },
        RingSendError::WouldBlock => SendError::WouldBlock,
        RingSendError::Timeout => SendError::TimedOut,
        RingSendError::Corrupt => SendError::Corrupt(Corruption::Ring(
            "the receiver left invalid positions in the send ring".into(),
        )),
    }
}
