//! The POSIX message-queue transport.
//!
//! Two queues, one per direction, each created under a random name (pid, time, counter), opened
//! once for reading and once for writing and unlinked at once, so no name survives a crash. Each
//! side holds its receive queue (read-only), its send queue (write-only), and one
//! end of a companion Unix socket pair that carries nothing but tells each side when the other
//! is gone (`POLLHUP` once the peer's last descriptor closes); mq itself gives no such signal.
//!
//! Every queue operation is non-blocking per call (`mq_timedsend` / `mq_timedreceive` with a
//! deadline that has passed), never through `O_NONBLOCK`: that flag belongs to the open file
//! description, which the process that created the queues may share, and a peer that cleared it
//! could otherwise make `try_recv` block for ever.
//!
//! Messages longer than a queue message are split into chunks ([`crate::channel::framing`]). This transport
//! carries blobs only: descriptors are refused with [`SendError::FdsUnsupported`] (use the socket or
//! ring transport for them).
//!
//! Queue limits: `/proc/sys/fs/mqueue/msg_max` (10 here), `msgsize_max` (8192) and the per-user
//! `RLIMIT_MSGQUEUE` (819200 bytes here, which holds about nine full-size queues, so four mq
//! channels per user). Running out gives [`OpenError::MqLimit`], which says what to raise.

use std::cell::Cell;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowipc_sys::mq::{self, Mode, MqAttr, OFlags};
use flowipc_sys::socket::{self, PollFd, PollFlags};
use flowipc_sys::Errno;

use crate::channel::error::{io, Corruption, OpenError, RecvError, SendError};
use crate::channel::framing::{self as chunk, ChunkHeader, Fed, Reassembler, CHUNK_HEADER_LEN};
use crate::channel::{Limits, SendCursor, Step};
use crate::watch::Watch;

/// Smallest queue message size that leaves room for a useful chunk.
const MIN_MSGSIZE: usize = 64;

/// Non-blocking core of the mq transport.
#[derive(Debug)]
pub(crate) struct MqTransport {
    rx: OwnedFd,
    tx: OwnedFd,
    sock: OwnedFd,
    limits: Limits,
    /// Payload bytes per outgoing chunk.
    room: usize,
    sbuf: Vec<u8>,
    rbuf: Vec<u8>,
    reasm: Reassembler,
    peer_closed: bool,
    /// Set by `wait` when the companion socket reported a hang-up; a blocking step checks the
    /// peer only then, so a wait costs one `poll` rather than two.
    hangup_seen: Cell<bool>,
    /// The process's peer watcher on the companion socket: its alarm tells every send, with one
    /// load, that the peer is gone (a queue outlives its reader, so `mq_send` alone would go on
    /// succeeding until the queue is full). `None` where the watcher cannot run (a fork child of a
    /// process that used it): each send then polls the socket.
    watch: Option<Watch>,
}

/// The descriptors of both ends of a new mq channel: (rx, tx, sock) for each side.
pub(crate) type MqEnds = ((OwnedFd, OwnedFd, OwnedFd), (OwnedFd, OwnedFd, OwnedFd));

fn unique_name(dir: char) -> CString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Only ASCII digits and letters: never contains a NUL.
    CString::new(format!("flowipc-{}-{t:x}-{n}-{dir}", std::process::id()))
        .unwrap_or_else(|_| CString::from(c"flowipc-fallback"))
}

fn open_error(op: &'static str, e: Errno) -> OpenError {
    match e {
        Errno::MFILE | Errno::NFILE | Errno::NOSPC | Errno::INVAL | Errno::NOMEM => {
            OpenError::MqLimit { source: io(e) }
        }
        _ => OpenError::os(op, e),
    }
}

/// Creates one queue and returns (read end, write end); its name is gone when this returns.
fn queue(dir: char, attr: Option<&MqAttr>) -> Result<(OwnedFd, OwnedFd), OpenError> {
    let name = unique_name(dir);
    let rx = mq::mq_open(
        &name,
        OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NONBLOCK,
        Mode::RUSR | Mode::WUSR,
        attr,
    )
    .map_err(|e| open_error("mq_open", e))?;
    let tx = mq::mq_open(
        &name,
        OFlags::WRONLY | OFlags::NONBLOCK,
        Mode::empty(),
        None,
    );
    let unlinked = mq::mq_unlink(&name);
    let tx = tx.map_err(|e| open_error("mq_open", e))?;
    unlinked.map_err(|e| OpenError::os("mq_unlink", e))?;
    Ok((rx, tx))
}

/// Creates the queues and companion socket of a channel.
pub(crate) fn create(maxmsg: Option<i64>, msgsize: Option<i64>) -> Result<MqEnds, OpenError> {
    let attr = match (maxmsg, msgsize) {
        (None, None) => None,
        (m, s) => Some(MqAttr::new(m.unwrap_or(10), s.unwrap_or(8192))),
    };
    let (ab_rx, ab_tx) = queue('a', attr.as_ref())?;
    let (ba_rx, ba_tx) = queue('b', attr.as_ref())?;
    let (sa, sb) = socket::socketpair_stream().map_err(|e| OpenError::os("socketpair", e))?;
    Ok(((ba_rx, ab_tx, sa), (ab_rx, ba_tx, sb)))
}

fn msgsize(fd: BorrowedFd<'_>, what: &str) -> Result<usize, OpenError> {
    let attr = mq::mq_getattr(fd).map_err(|e| OpenError::BadFds {
        kind: "mq",
        reason: format!("the {what} descriptor is not a message queue ({e})"),
    })?;
    let size = usize::try_from(attr.msgsize).unwrap_or(0);
    if size < MIN_MSGSIZE {
        return Err(OpenError::BadFds {
            kind: "mq",
            reason: format!("the {what} queue's message size {size} is below {MIN_MSGSIZE}"),
        });
    }
    Ok(size)
}

impl MqTransport {
    /// Builds one side from its receive queue, send queue and companion socket.
    pub(crate) fn new(
        rx: OwnedFd,
        tx: OwnedFd,
        sock: OwnedFd,
        limits: Limits,
    ) -> Result<Self, OpenError> {
        let watch = Watch::new(sock.as_fd(), None).ok();
        let rsize = msgsize(rx.as_fd(), "receive")?;
        let ssize = msgsize(tx.as_fd(), "send")?;
        // No `O_NONBLOCK` is set or relied on: the flag lives in the open file description, which
        // the process that created the queues may still share and flip. Every send and receive
        // is non-blocking per call instead (`mq_try_send` / `mq_try_receive`: a deadline that
        // has passed), and blocking calls wait in `poll`.
        Ok(MqTransport {
            rx,
            tx,
            sock,
            limits,
            room: ssize - CHUNK_HEADER_LEN,
            sbuf: Vec::with_capacity(ssize),
            rbuf: vec![0; rsize],
            reasm: Reassembler::default(),
            peer_closed: false,
            hangup_seen: Cell::new(false),
            watch,
        })
    }

    /// A second transport on duplicates of the descriptors, for the sending half of a split
    /// channel.
    pub(crate) fn split_sender(&self) -> Result<Self, OpenError> {
        let dup = |fd: &OwnedFd| {
            flowipc_sys::fd::dup_cloexec(fd.as_fd()).map_err(|e| OpenError::os("dup", e))
        };
        MqTransport::new(
            dup(&self.rx)?,
            dup(&self.tx)?,
            dup(&self.sock)?,
            self.limits,
        )
    }

    pub(crate) fn recv_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    pub(crate) fn send_fd(&self) -> BorrowedFd<'_> {
        self.tx.as_fd()
    }

    pub(crate) fn peer_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    pub(crate) fn into_fds(self) -> Vec<OwnedFd> {
        vec![self.rx, self.tx, self.sock]
    }

    pub(crate) fn discard(&mut self) {
        self.reasm.reset();
    }

    pub(crate) fn has_buffered_input(&self) -> bool {
        self.reasm.in_progress()
    }

    /// Whether the peer's end of the companion socket is closed: one load where the watcher
    /// watches it, else a `poll`.
    fn peer_gone(&self) -> bool {
        if let Some(w) = &self.watch {
            return w.alarm().is_raised();
        }
        let mut pfd = [PollFd::new(&self.sock, PollFlags::RDHUP)];
        matches!(socket::poll(&mut pfd, Some(Duration::ZERO)), Ok(n) if n > 0)
            && pfd[0]
                .revents()
                .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
    }

    /// Whether to ask the socket if the peer is gone: always for a non-blocking call, for a
    /// blocking one only after its `wait` saw a hang-up.
    fn should_check_peer(&self, blocking: bool) -> bool {
        !blocking || self.hangup_seen.get()
    }

    pub(crate) fn send_step(
        &mut self,
        cur: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        blocking: bool,
    ) -> Result<Step, SendError> {
        if !fds.is_empty() {
            return Err(SendError::FdsUnsupported);
        }
        let data = if cur.close { &[][..] } else { data };
        let count = if cur.close {
            1
        } else {
            chunk::chunk_count(data.len(), self.room)
        };
        // A queue outlives its reader: without this, sends to a dead peer would succeed until
        // the queue is full, and everything in it would be lost.
        if self.peer_gone() {
            return Err(SendError::PeerGone);
        }
        while cur.chunk < count {
            let header = if cur.close {
                chunk::close_header()
            } else {
                chunk::header_for(cur.chunk, data.len(), self.room, 0)
            };
            let start = cur.chunk * self.room;
            let end = (start + self.room).min(data.len());
            self.sbuf.clear();
            self.sbuf.extend_from_slice(&header.encode());
            self.sbuf.extend_from_slice(&data[start.min(end)..end]);
            match mq::mq_try_send(self.tx.as_fd(), &self.sbuf, 0) {
                Ok(()) => {
                    cur.chunk += 1;
                    cur.pos = end.max(1);
                }
                Err(Errno::AGAIN) => {
                    if self.should_check_peer(blocking) && self.peer_gone() {
                        return Err(SendError::PeerGone);
                    }
                    return Ok(Step::Blocked);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(SendError::os("mq_send", e)),
            }
        }
        Ok(Step::Done)
    }

    pub(crate) fn recv_step(
        &mut self,
        out: &mut Vec<u8>,
        blocking: bool,
    ) -> Result<Option<Vec<OwnedFd>>, RecvError> {
        if self.peer_closed {
            return Err(RecvError::Closed);
        }
        let mut checked_peer = false;
        loop {
            match mq::mq_try_receive(self.rx.as_fd(), &mut self.rbuf) {
                Ok((n, _prio)) => {
                    let (h, payload) = ChunkHeader::decode(&self.rbuf[..n])?;
                    match self.reasm.feed(h, payload, self.limits.max_message_size)? {
                        Fed::Partial => {}
                        Fed::Close => {
                            self.peer_closed = true;
                            return Err(RecvError::Closed);
                        }
                        Fed::Complete { nfds: 0 } => {
                            std::mem::swap(out, &mut self.reasm.buf);
                            self.reasm.buf.clear();
                            return Ok(Some(Vec::new()));
                        }
                        Fed::Complete { nfds } => {
                            return Err(Corruption::FdCountMismatch {
                                declared: nfds,
                                arrived: 0,
                            }
                            .into())
                        }
                    }
                }
                Err(Errno::AGAIN) => {
                    // Everything the peer queued before it died is still delivered: check the
                    // queue once more after seeing it gone.
                    if checked_peer {
                        return Err(RecvError::PeerGone);
                    }
                    if !self.should_check_peer(blocking) || !self.peer_gone() {
                        return Ok(None);
                    }
                    checked_peer = true;
                }
                Err(Errno::INTR) => {}
                Err(Errno::MSGSIZE) => {
                    return Err(Corruption::BadChunk("queue message larger than its queue").into())
                }
                Err(e) => return Err(RecvError::os("mq_receive", e)),
            }
        }
    }

    /// Waits until the queue is readable (writable for `send`), the peer is gone, or `timeout`.
    pub(crate) fn wait(&self, send: bool, timeout: Option<Duration>) -> Result<(), Errno> {
        let (fd, flags) = if send {
            (self.tx.as_fd(), PollFlags::OUT)
        } else {
            (self.rx.as_fd(), PollFlags::IN)
        };
        let mut pfd = [
            PollFd::from_borrowed_fd(fd, flags),
            PollFd::new(&self.sock, PollFlags::RDHUP),
        ];
        match socket::poll(&mut pfd, timeout) {
            Ok(_) | Err(Errno::INTR) => {
                if pfd[1]
                    .revents()
                    .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
                {
                    self.hangup_seen.set(true);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
