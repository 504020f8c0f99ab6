//! `flowipc-ring`: one [`flowipc::ring::ShmRing`] per direction, each in its own sealed memfd, used
//! through the safe API exactly as an application would (copy in, copy out, the crate's wait
//! policies). `flowipc-ring-batched` streams with `stage` + `flush`; `flowipc-ring-zerocopy` builds
//! each message in place in the ring (`write_chunk`) and reads it in place (`read_chunk`), so the
//! payload is never copied: the application's own writes and reads are the only passes over it.

use std::io;
use std::os::fd::OwnedFd;

use flowipc::ring::{RingReceiver, RingSender, ShmRing, WaitPolicy};

use crate::harness::{
    recv_copied, send_copied, Config, Endpoint, Kind, Message, Mode, Placement, Received, System,
};

/// The smallest ring for round trips: a ring sized for its messages keeps its lines in cache (on
/// one core, a 256 KiB ring evicted itself and cost about 1 us per round trip).
const MIN_RING_RTT: usize = 4 * 1024;
/// The smallest ring for streaming: deep enough that 64-byte streaming is not limited by ring size.
const MIN_RING_STREAM: usize = 256 * 1024;
/// Frames a streaming ring holds, up to [`MAX_RING_STREAM`].
const STREAM_DEPTH: usize = 16;
/// The largest ring sized for depth; a ring for larger frames holds two of them.
const MAX_RING_STREAM: usize = 4 * 1024 * 1024;

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// A ring whose largest frame holds `size` bytes, at least the minimum for the kind of run.
pub fn capacity_for(size: usize, kind: Kind) -> usize {
    let fits_two = (2 * (size + 64)).next_power_of_two();
    match kind {
        Kind::Rtt => fits_two.max(MIN_RING_RTT),
        // A stream needs depth: with room for only a few frames the producer waits on every one
        // and the two sides run in lockstep (64 KiB frames in a 256 KiB ring: 7 GB/s copying,
        // 2 GB/s zero-copy; in a 2 MiB ring: 12 and 11 GB/s on this machine).
        Kind::Stream => (STREAM_DEPTH * (size + 64))
            .next_power_of_two()
            .clamp(MIN_RING_STREAM, MAX_RING_STREAM)
            .max(fits_two),
    }
}

fn policy(mode: Mode) -> WaitPolicy {
    match mode {
        Mode::BusyPoll => WaitPolicy::BusyPoll,
        Mode::SpinThenBlock => WaitPolicy::default(),
        Mode::Block => WaitPolicy::Block,
    }
}

/// A batching sender flushes (one publish fence, at most one wake-up) once this much is staged.
const BATCH_BYTES: usize = 4096;

/// How an endpoint uses its rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// `send` / `recv`: one copy in, one copy out.
    Copy,
    /// `stage` + `flush` every [`BATCH_BYTES`].
    Batched,
    /// `write_chunk` / `read_chunk`: no copy.
    ZeroCopy,
}

struct RingEndpoint {
    tx: RingSender,
    rx: RingReceiver,
    how: Use,
}

impl RingEndpoint {
    fn new(tx_ring: &ShmRing, rx_ring: &ShmRing, mode: Mode, how: Use) -> io::Result<Self> {
        let mut tx = tx_ring.sender().map_err(other)?;
        let mut rx = rx_ring.receiver().map_err(other)?;
        tx.set_policy(policy(mode));
        rx.set_policy(policy(mode));
        Ok(RingEndpoint { tx, rx, how })
    }
}

impl Endpoint for RingEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if self.how != Use::Batched {
            return self.tx.send(msg).map_err(other);
        }
        self.tx.stage(msg).map_err(other)?;
        if self.tx.staged_bytes() >= BATCH_BYTES {
            self.tx.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.how == Use::Batched {
            self.tx.flush();
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rx.recv(buf).map(|f| f.len).map_err(other)
    }

    fn send_message(&mut self, msg: &Message, scratch: &mut [u8]) -> io::Result<()> {
        if self.how != Use::ZeroCopy {
            return send_copied(self, msg, scratch);
        }
        let mut chunk = self.tx.write_chunk(msg.size, None).map_err(other)?;
        msg.build(|offset, bytes| chunk.write(offset, bytes));
        chunk.commit(msg.size);
        Ok(())
    }

    fn recv_message(&mut self, scratch: &mut [u8]) -> io::Result<Received> {
        if self.how != Use::ZeroCopy {
            return recv_copied(self, scratch);
        }
        let chunk = self.rx.read_chunk(None).map_err(other)?;
        // Dropping the chunk frees the frame.
        Ok(Received::read(chunk.len(), |offset, dst| {
            chunk.read(offset, dst);
        }))
    }
}

/// The `flowipc-ring` system (one `send` per message), or `flowipc-ring-batched` (streaming with
/// `stage` and a `flush` every [`BATCH_BYTES`], as a streaming producer would use the ring).
pub struct Ring {
    how: Use,
}

impl Ring {
    /// Every message copied in and out and published on its own.
    pub const PLAIN: Ring = Ring { how: Use::Copy };
    /// Streaming in bursts.
    pub const BATCHED: Ring = Ring { how: Use::Batched };
    /// Every message built and read in place.
    pub const ZERO_COPY: Ring = Ring { how: Use::ZeroCopy };
}

impl System for Ring {
    fn name(&self) -> &'static str {
        match self.how {
            Use::Copy => "flowipc-ring",
            Use::Batched => "flowipc-ring-batched",
            Use::ZeroCopy => "flowipc-ring-zerocopy",
        }
    }

    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, _size: usize) -> bool {
        // Batching only changes streaming; a round trip flushes every message.
        (kind == Kind::Stream || self.how != Use::Batched)
        // Busy-polling on the CPU the peer needs only delays it; same-core runs block, or spin
        // then block (the default policy, whose spins adapt away when they never succeed).
            && (mode != Mode::BusyPoll || placement == Placement::CrossCore)
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let cap = capacity_for(cfg.size, cfg.kind);
        let c2s = ShmRing::create(cap).map_err(other)?;
        let s2c = ShmRing::create(cap).map_err(other)?;
        let fds = vec![
            c2s.fd().try_clone_to_owned()?,
            s2c.fd().try_clone_to_owned()?,
        ];
        Ok((
            Box::new(RingEndpoint::new(&c2s, &s2c, cfg.mode, self.how)?),
            fds,
        ))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let [c2s, s2c]: [OwnedFd; 2] = fds.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "flowipc-ring: wrong number of fds",
            )
        })?;
        let c2s = ShmRing::open(c2s).map_err(other)?;
        let s2c = ShmRing::open(s2c).map_err(other)?;
        Ok(Box::new(RingEndpoint::new(&s2c, &c2s, cfg.mode, self.how)?))
    }
}
