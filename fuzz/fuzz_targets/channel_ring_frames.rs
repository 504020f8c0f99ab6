//! Hostile input for the ring channel's receive path: a ring `Channel` is built from descriptors
//! (`ChannelOptions::from_fds`, as a process receiving a channel does) and its peer is raw: it holds
//! the sending side of the channel's receive ring and the other end of the companion socket, and
//! pushes frames with arbitrary tags (flags, descriptor counts), lengths and total-length prefixes,
//! valid messages in between, and bytes with or without eventfds on the socket; the channel
//! receives with `try_recv` or `try_recv_in_place` at arbitrary points. At the end the peer closes its ring side and the
//! channel is drained until it reports an error.
//!
//! Frame validity below the channel layer (positions, frame headers) is the `ring_hostile`
//! target's business; here every frame is well formed for the ring and hostile for the channel.
//! Every outcome (message with its descriptor count, `WouldBlock`, `Closed`, `PeerGone`, `Corrupt`)
//! is checked against an independent model of the wire format (`ring.rs` module docs) including
//! the companion socket; a message never exceeds `max_message_size`; no descriptor leaks.
#![no_main]

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use arbitrary::Arbitrary;
use flowipc::channel::{Channel, ChannelFds, ChannelOptions, RecvError, TransportKind};
use flowipc::ring::{RingSendError, RingSender, ShmRing};
use flowipc_sys::eventfd::{eventfd, EventfdFlags};
use flowipc_sys::socket::{self, SendFlags};
use libfuzzer_sys::fuzz_target;

const FIRST: u16 = 0x01;
const LAST: u16 = 0x02;
const CLOSE: u16 = 0x04;
/// The message carries a channel (`send_channel`); FIRST frames only.
const CHANNEL: u16 = 0x08;

const MAX_SIZES: [usize; 4] = [1 << 20, 0, 100, 5000];

#[derive(Arbitrary, Debug)]
enum Total {
    Small(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// One frame: tag as given, an optional 8-byte total prefix, then `len` pattern bytes.
    Frame {
        tag: u16,
        total: Option<Total>,
        len: u16,
    },
    /// A well-formed message of `len` bytes in frames of at most `room` bytes, as a sender
    /// builds it (descriptors declared, not sent: pair with `Socket`).
    Message { len: u16, room: u16, nfds: u8 },
    /// Bytes on the companion socket, the first carrying `fds % 10` eventfds.
    Socket { bytes: u8, fds: u8 },
    /// A `try_recv` on the channel.
    Recv,
    /// A `try_recv_in_place` on the channel (the frame of a one-frame message is read in the
    /// ring); the same outcomes as `Recv`.
    RecvInPlace,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cap_log: u8,
    max_size: u8,
    max_fds: u8,
    ops: Vec<Op>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Message(Vec<u8>, usize),
    WouldBlock,
    Closed,
    PeerGone,
    Corrupt,
    /// A complete message flagged as carrying a channel: held for `recv_channel`, so every later
    /// plain receive reports it again.
    ChannelMessage,
}

/// The receiver as the wire format describes it.
struct Model {
    max: usize,
    max_fds: usize,
    /// Frames published and not yet consumed: (tag, bytes).
    frames: VecDeque<(u16, Vec<u8>)>,
    /// Companion socket bytes not yet read: descriptors that came with each.
    sock: VecDeque<usize>,
    /// Message in progress: (total, bytes so far, descriptors, flagged as a channel).
    msg: Option<(u64, Vec<u8>, usize, bool)>,
    /// A channel message is held (see [`Outcome::ChannelMessage`]).
    held: bool,
    /// Sticky end state (`Closed`, or poisoned after `Corrupt`).
    ended: Option<bool>,
    /// The peer closed its ring side.
    peer_closed: bool,
}

impl Model {
    /// What the next `try_recv` gives.
    fn recv(&mut self) -> Outcome {
        match self.ended {
            Some(true) => return Outcome::Closed,
            Some(false) => panic!("receive after poisoning is not modelled"),
            None => {}
        }
        if self.held {
            return Outcome::ChannelMessage;
        }
        let out = self.step();
        match out {
            Outcome::Closed => self.ended = Some(true),
            Outcome::Corrupt => self.ended = Some(false),
            Outcome::ChannelMessage => self.held = true,
            _ => {}
        }
        out
    }

    fn step(&mut self) -> Outcome {
        loop {
            let Some((tag, data)) = self.frames.pop_front() else {
                return if self.peer_closed {
                    Outcome::PeerGone
                } else {
                    Outcome::WouldBlock
                };
            };
            let flags = tag & 0xff;
            let nfds = usize::from(tag >> 8);
            if flags & !(FIRST | LAST | CLOSE | CHANNEL) != 0
                || (flags & CHANNEL != 0 && flags & FIRST == 0)
            {
                return Outcome::Corrupt;
            }
            if flags & CLOSE != 0 {
                if flags != CLOSE || !data.is_empty() || nfds != 0 || self.msg.is_some() {
                    return Outcome::Corrupt;
                }
                return Outcome::Closed;
            }
            if flags & FIRST != 0 {
                if self.msg.is_some() {
                    return Outcome::Corrupt;
                }
                let (total, skip) = if flags & LAST != 0 {
                    (data.len() as u64, 0)
                } else if data.len() < 8 {
                    return Outcome::Corrupt;
                } else {
                    (u64::from_le_bytes(data[..8].try_into().unwrap()), 8)
                };
                if total > self.max as u64 || (data.len() - skip) as u64 > total {
                    return Outcome::Corrupt;
                }
                if nfds > 0 {
                    if nfds > self.max_fds {
                        return Outcome::Corrupt;
                    }
                    match self.sock.pop_front() {
                        Some(n) if n == nfds => {}
                        _ => return Outcome::Corrupt,
                    }
                }
                self.msg = Some((total, data[skip..].to_vec(), nfds, flags & CHANNEL != 0));
            } else {
                let Some((total, bytes, _, _)) = self.msg.as_mut() else {
                    return Outcome::Corrupt;
                };
                if nfds != 0 || (bytes.len() + data.len()) as u64 > *total {
                    return Outcome::Corrupt;
                }
                bytes.extend_from_slice(&data);
            }
            if flags & LAST != 0 {
                let (total, bytes, nfds, channel) = self.msg.take().unwrap();
                if bytes.len() as u64 != total {
                    return Outcome::Corrupt;
                }
                if channel {
                    return Outcome::ChannelMessage;
                }
                return Outcome::Message(bytes, nfds);
            }
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

struct Run {
    ch: Channel,
    tx: RingSender,
    model: Model,
    buf: Vec<u8>,
}

impl Run {
    /// One `try_recv` (or `try_recv_in_place`), checked against the model. `false` once the
    /// channel has ended.
    fn recv(&mut self) -> bool {
        self.recv_with(false)
    }

    fn recv_with(&mut self, in_place: bool) -> bool {
        let got = if in_place {
            match self.ch.try_recv_in_place() {
                Ok(msg) => {
                    let bytes = msg.to_vec();
                    assert_eq!(bytes.len(), msg.len());
                    assert!(bytes.len() <= self.model.max, "message above the maximum");
                    Ok((bytes, msg.fds().len()))
                }
                Err(e) => Err(e),
            }
        } else {
            match self.ch.try_recv(&mut self.buf) {
                Ok(meta) => {
                    assert_eq!(meta.len, self.buf.len());
                    assert!(
                        self.buf.len() <= self.model.max,
                        "message above the maximum"
                    );
                    Ok((std::mem::take(&mut self.buf), meta.fds.len()))
                }
                Err(e) => Err(e),
            }
        };
        let got = match got {
            Ok((bytes, nfds)) => Outcome::Message(bytes, nfds),
            Err(RecvError::WouldBlock) => Outcome::WouldBlock,
            Err(RecvError::Closed) => Outcome::Closed,
            Err(RecvError::PeerGone) => Outcome::PeerGone,
            Err(RecvError::Corrupt(_)) => Outcome::Corrupt,
            Err(RecvError::ChannelMessage) => Outcome::ChannelMessage,
            Err(e) => panic!("unexpected receive error {e:?}"),
        };
        let want = self.model.recv();
        assert_eq!(got, want, "channel and model disagree");
        match got {
            Outcome::Message(..) | Outcome::WouldBlock => true,
            Outcome::Closed => {
                assert!(matches!(
                    self.ch.try_recv(&mut self.buf),
                    Err(RecvError::Closed)
                ));
                false
            }
            Outcome::PeerGone => false,
            Outcome::ChannelMessage => {
                // Held, not lost: a plain receive keeps reporting it.
                assert!(matches!(
                    self.ch.try_recv(&mut self.buf),
                    Err(RecvError::ChannelMessage)
                ));
                false
            }
            Outcome::Corrupt => {
                assert!(matches!(
                    self.ch.try_recv(&mut self.buf),
                    Err(RecvError::Poisoned)
                ));
                false
            }
        }
    }

    /// Publishes one frame, receiving to make room while the ring is full. `false`: the channel
    /// ended while making room.
    fn push(&mut self, tag: u16, data: &[u8]) -> bool {
        for _ in 0..4 {
            match self.tx.try_send_tagged(data, tag) {
                Ok(()) => {
                    self.model.frames.push_back((tag, data.to_vec()));
                    return true;
                }
                Err(RingSendError::WouldBlock) => {
                    if !self.recv() {
                        return false;
                    }
                }
                Err(RingSendError::TooLarge { .. }) => return true,
                Err(e) => panic!("peer's ring send failed: {e:?}"),
            }
        }
        true
    }
}

fn pattern(buf: &mut Vec<u8>, len: usize, seed: usize) {
    buf.extend((0..len).map(|i| (i.wrapping_mul(31) ^ seed) as u8));
}

fuzz_target!(|input: Input| {
    let cap = 1024usize << (input.cap_log % 3);
    let max = MAX_SIZES[usize::from(input.max_size % 4)];
    let max_fds = usize::from(input.max_fds % 9);
    let before = open_fds();
    {
        let tx_ring = ShmRing::create(cap).unwrap();
        let rx_ring = ShmRing::create(cap).unwrap();
        let (sock, peer_sock) = socket::socketpair_stream().unwrap();
        let dup = |fd: BorrowedFd<'_>| flowipc_sys::fd::dup_cloexec(fd).unwrap();
        let (bell_tx, _peer_bell_tx) = flowipc_sys::wake::pair().unwrap();
        let (bell_rx, _peer_bell_rx) = flowipc_sys::wake::pair().unwrap();
        let fds = ChannelFds::from_parts(
            TransportKind::Ring,
            // This end's doorbells of the tx and rx rings; nothing here sleeps, so the fuzzed peer
            // never rings them.
            vec![dup(tx_ring.fd()), dup(rx_ring.fd()), sock, bell_tx, bell_rx],
        );
        let mut ch = ChannelOptions::new()
            .max_message_size(max)
            .max_fds_per_message(max_fds)
            .from_fds(fds)
            .unwrap();
        ch.set_nonblocking(true);
        let tx = rx_ring.sender().unwrap();
        let max_payload = tx.max_payload();
        let mut run = Run {
            ch,
            tx,
            model: Model {
                max,
                max_fds,
                frames: VecDeque::new(),
                sock: VecDeque::new(),
                msg: None,
                held: false,
                ended: None,
                peer_closed: false,
            },
            buf: Vec::new(),
        };
        let mut data = Vec::new();
        let mut alive = true;
        for (n, op) in input.ops.into_iter().take(64).enumerate() {
            if !alive {
                break;
            }
            match op {
                Op::Frame { tag, total, len } => {
                    data.clear();
                    match total {
                        Some(Total::Small(t)) => {
                            data.extend_from_slice(&u64::from(t).to_le_bytes())
                        }
                        Some(Total::Any(t)) => data.extend_from_slice(&t.to_le_bytes()),
                        None => {}
                    }
                    let len = usize::from(len) % (max_payload + 1);
                    let rest = len.saturating_sub(data.len());
                    pattern(&mut data, rest, n);
                    alive = run.push(tag, &data);
                }
                Op::Message { len, room, nfds } => {
                    let len = usize::from(len);
                    let nfds = u16::from(nfds) << 8;
                    let room = (usize::from(room) % max_payload).max(9);
                    let mut msg = Vec::new();
                    pattern(&mut msg, len, n);
                    if len <= room {
                        alive = run.push(FIRST | LAST | nfds, &msg);
                        continue;
                    }
                    let mut pos = 0;
                    let mut first = true;
                    while alive && pos < len {
                        data.clear();
                        if first {
                            data.extend_from_slice(&(len as u64).to_le_bytes());
                        }
                        let take = (room - data.len()).min(len - pos);
                        data.extend_from_slice(&msg[pos..pos + take]);
                        pos += take;
                        let tag = if first { FIRST | nfds } else { 0 }
                            | if pos == len { LAST } else { 0 };
                        alive = run.push(tag, &data);
                        first = false;
                    }
                }
                Op::Socket { bytes, fds } => {
                    let bytes = usize::from(bytes % 4).max(1);
                    let efds: Vec<OwnedFd> = (0..fds % 10)
                        .map(|_| eventfd(0, EventfdFlags::empty()).unwrap())
                        .collect();
                    let borrowed: Vec<BorrowedFd<'_>> = efds.iter().map(AsFd::as_fd).collect();
                    let payload = [0u8; 3];
                    // Few enough ops that the socket never fills; in-flight descriptors stay
                    // far below the per-user limit.
                    let sent = socket::send_with_fds(
                        peer_sock.as_fd(),
                        &payload[..bytes],
                        &borrowed,
                        SendFlags::DONTWAIT,
                    )
                    .unwrap();
                    assert_eq!(sent, bytes);
                    run.model.sock.push_back(borrowed.len());
                    run.model.sock.extend(std::iter::repeat_n(0, bytes - 1));
                }
                Op::Recv => alive = run.recv(),
                Op::RecvInPlace => alive = run.recv_with(true),
            }
        }
        // The peer closes its ring side; everything it published is still delivered first.
        if alive {
            run.tx.close();
            run.model.peer_closed = true;
            for _ in 0..run.model.frames.len() + 2 {
                if !run.recv() {
                    alive = false;
                    break;
                }
            }
            assert!(!alive, "the drain did not end");
        }
        drop(run);
        drop(peer_sock);
        drop((tx_ring, rx_ring));
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
});
