//! `flowipc-ring`: one [`flowipc::ring::ShmRing`] per direction, each in its own sealed memfd, used
//! through the safe API exactly as an application would (copy in, copy out, the crate's wait
//! policies).

use std::io;
use std::os::fd::OwnedFd;

use flowipc::ring::{RingReceiver, RingSender, ShmRing, WaitPolicy};

use crate::harness::{Config, Endpoint, Kind, Mode, Placement, System};

/// The smallest ring for round trips: a ring sized for its messages keeps its lines in cache (on
/// one core, a 256 KiB ring evicted itself and cost about 1 us per round trip).
const MIN_RING_RTT: usize = 4 * 1024;
/// The smallest ring for streaming: deep enough that 64-byte streaming is not limited by ring size.
const MIN_RING_STREAM: usize = 256 * 1024;

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// A ring whose largest frame holds `size` bytes, at least the minimum for the kind of run.
pub fn capacity_for(size: usize, kind: Kind) -> usize {
    let min = match kind {
        Kind::Rtt => MIN_RING_RTT,
        Kind::Stream => MIN_RING_STREAM,
    };
    (2 * (size + 64)).next_power_of_two().max(min)
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

struct RingEndpoint {
    tx: RingSender,
    rx: RingReceiver,
    batch: bool,
}

impl RingEndpoint {
    fn new(tx_ring: &ShmRing, rx_ring: &ShmRing, mode: Mode, batch: bool) -> io::Result<Self> {
        let mut tx = tx_ring.sender().map_err(other)?;
        let mut rx = rx_ring.receiver().map_err(other)?;
        tx.set_policy(policy(mode));
        rx.set_policy(policy(mode));
        Ok(RingEndpoint { tx, rx, batch })
    }
}

impl Endpoint for RingEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if !self.batch {
            return self.tx.send(msg).map_err(other);
        }
        self.tx.stage(msg).map_err(other)?;
        if self.tx.staged_bytes() >= BATCH_BYTES {
            self.tx.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.batch {
            self.tx.flush();
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rx.recv(buf).map(|f| f.len).map_err(other)
    }
}

/// The `flowipc-ring` system (one `send` per message), or `flowipc-ring-batched` (streaming with
/// `stage` and a `flush` every [`BATCH_BYTES`], as a streaming producer would use the ring).
pub struct Ring {
    batch: bool,
}

impl Ring {
    /// Every message published on its own.
    pub const PLAIN: Ring = Ring { batch: false };
    /// Streaming in bursts.
    pub const BATCHED: Ring = Ring { batch: true };
}

impl System for Ring {
    fn name(&self) -> &'static str {
        if self.batch {
            "flowipc-ring-batched"
        } else {
            "flowipc-ring"
        }
    }

    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, _size: usize) -> bool {
        // Batching only changes streaming; a round trip flushes every message.
        (kind == Kind::Stream || !self.batch)
        // Spinning on the CPU the peer needs only delays it; same-core runs block.
            && (mode == Mode::Block || placement == Placement::CrossCore)
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
            Box::new(RingEndpoint::new(&c2s, &s2c, cfg.mode, self.batch)?),
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
        Ok(Box::new(RingEndpoint::new(
            &s2c, &c2s, cfg.mode, self.batch,
        )?))
    }
}
