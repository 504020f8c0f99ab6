//! Raw baselines: what the bare transports cost, written as plainly as a user would write them.
//!
//! - `raw-spin`, `raw-futex`, `raw-eventfd`: a message slot per direction in a sealed memfd (sequence
//!   word, length, payload). The receiver busy-polls the sequence word (`raw-spin`), spins and then
//!   sleeps on it with a futex, waking only a sleeper (`raw-futex`), or sleeps in `read` on an eventfd
//!   that the sender always writes (`raw-eventfd`).
//! - `raw-pipe`, `raw-uds`: fixed-size messages over two pipes or one Unix stream socketpair, with
//!   std's blocking `read_exact`/`write_all`.
//! - `raw-mq`: a POSIX message queue per direction, created under a random name and unlinked at once.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowipc_sys::mmap::{Access, Mapping};

use crate::harness::{Config, Endpoint, Kind, Mode, Placement, System};

/// How long the spin-then-block receivers spin before they sleep. The same budget as flowipc's
/// default, so the two are compared like for like.
pub const SPIN_BUDGET: Duration = Duration::from_micros(50);

fn errno(e: flowipc_sys::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn wrong_fds(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}: wrong number of fds"),
    )
}

// ---------------------------------------------------------------------------------------------------
// Slot transports: raw-spin, raw-futex, raw-eventfd
// ---------------------------------------------------------------------------------------------------

/// Header of one direction's message slot; one per 128-byte line.
#[repr(C, align(128))]
struct SlotHeader {
    /// Incremented by the writer after the payload and length are in place.
    seq: AtomicU32,
    /// Set by a reader about to sleep on `seq` (raw-futex only).
    waiting: AtomicU32,
    /// Payload length of the message `seq` announces.
    len: AtomicU32,
}

const HEADER: usize = 128;
static_assertions::const_assert_eq!(core::mem::size_of::<SlotHeader>(), HEADER);

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotWait {
    Spin,
    FutexSpin,
    FutexBlock,
    Eventfd,
}

struct SlotEndpoint {
    map: Mapping,
    /// Offsets of this side's outgoing and incoming headers and payloads.
    tx: usize,
    rx: usize,
    tx_data: usize,
    rx_data: usize,
    max: usize,
    wait: SlotWait,
    tx_seq: u32,
    rx_seq: u32,
    evt_tx: Option<OwnedFd>,
    evt_rx: Option<OwnedFd>,
}

impl SlotEndpoint {
    fn layout(size: usize) -> (usize, usize) {
        let max = size.next_multiple_of(64);
        (max, 2 * HEADER + 2 * max)
    }

    fn new(
        map: Mapping,
        size: usize,
        client: bool,
        wait: SlotWait,
        evts: Option<(OwnedFd, OwnedFd)>,
    ) -> Self {
        let (max, _) = Self::layout(size);
        let (a, b, a_data, b_data) = (0, HEADER, 2 * HEADER, 2 * HEADER + max);
        let (tx, rx, tx_data, rx_data) = if client {
            (a, b, a_data, b_data)
        } else {
            (b, a, b_data, a_data)
        };
        let (evt_tx, evt_rx) = match evts {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        Self {
            map,
            tx,
            rx,
            tx_data,
            rx_data,
            max,
            wait,
            tx_seq: 0,
            rx_seq: 0,
            evt_tx,
            evt_rx,
        }
    }

    fn header(&self, off: usize) -> &SlotHeader {
        debug_assert!(off + HEADER <= self.map.len());
        // SAFETY: `off` is 0 or 128 inside a page-aligned read-write mapping this endpoint owns, so the
        // header is aligned, in bounds, and lives as long as `&self`; its fields are atomics, so the
        // peer writing them concurrently is not a data race.
        unsafe { &*(self.map.as_ptr().add(off) as *const SlotHeader) }
    }
}

impl Endpoint for SlotEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let len = msg.len().min(self.max);
        let base = self
            .map
            .as_mut_ptr()
            .ok_or_else(|| io::Error::other("slot mapping is read-only"))?;
        // SAFETY: `tx_data + len <= map.len()` by the layout; the peer does not touch this payload until
        // it sees the new sequence number published below.
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), base.add(self.tx_data), len) };
        self.tx_seq = self.tx_seq.wrapping_add(1);
        let h = self.header(self.tx);
        h.len.store(len as u32, Ordering::Relaxed);
        // SYNC POINT: pairs with the Acquire load of `seq` in `recv` on the other side.
        h.seq.store(self.tx_seq, Ordering::Release);
        match self.wait {
            SlotWait::Spin => Ok(()),
            SlotWait::FutexSpin | SlotWait::FutexBlock => {
                // SYNC POINT: Dekker with the sleeper's `waiting` store + fence in `recv`.
                fence(Ordering::SeqCst);
                if h.waiting.load(Ordering::Relaxed) != 0 {
                    flowipc_sys::futex::futex_wake(&h.seq, 1).map_err(errno)?;
                }
                Ok(())
            }
            SlotWait::Eventfd => {
                let fd = self.evt_tx.as_ref().expect("eventfd endpoint").as_fd();
                flowipc_sys::eventfd::eventfd_write(fd, 1).map_err(errno)
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.rx_seq.wrapping_add(1);
        let prev = self.rx_seq;
        let h = self.header(self.rx);
        match self.wait {
            SlotWait::Spin => {
                while h.seq.load(Ordering::Acquire) != want {
                    std::hint::spin_loop();
                }
            }
            SlotWait::Eventfd => {
                let fd = self.evt_rx.as_ref().expect("eventfd endpoint").as_fd();
                while h.seq.load(Ordering::Acquire) != want {
                    flowipc_sys::eventfd::eventfd_read(fd).map_err(errno)?;
                }
            }
            SlotWait::FutexSpin | SlotWait::FutexBlock => {
                let mut ready = false;
                if self.wait == SlotWait::FutexSpin {
                    let start = Instant::now();
                    'spin: loop {
                        for _ in 0..64 {
                            if h.seq.load(Ordering::Acquire) == want {
                                ready = true;
                                break 'spin;
                            }
                            std::hint::spin_loop();
                        }
                        if start.elapsed() >= SPIN_BUDGET {
                            break;
                        }
                    }
                }
                if !ready {
                    h.waiting.store(1, Ordering::Relaxed);
                    // SYNC POINT: Dekker with the sender's fence after its `seq` store.
                    fence(Ordering::SeqCst);
                    while h.seq.load(Ordering::Acquire) != want {
                        match flowipc_sys::futex::futex_wait(&h.seq, prev, None) {
                            Ok(()) => {}
                            Err(e)
                                if e == flowipc_sys::Errno::AGAIN
                                    || e == flowipc_sys::Errno::INTR => {}
                            Err(e) => return Err(errno(e)),
                        }
                    }
                    h.waiting.store(0, Ordering::Relaxed);
                }
            }
        }
        let len = (h.len.load(Ordering::Relaxed) as usize)
            .min(self.max)
            .min(buf.len());
        self.rx_seq = want;
        // SAFETY: `rx_data + len <= map.len()` (len clamped to the slot size); the peer does not write
        // this payload again until we answer, and a racing write could only change the bytes we copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(self.rx_data),
                buf.as_mut_ptr(),
                len,
            )
        };
        Ok(len)
    }
}

/// `raw-spin`, `raw-futex` or `raw-eventfd`.
pub struct Slot {
    name: &'static str,
}

impl Slot {
    /// Shared memory with busy-polling.
    pub const SPIN: Slot = Slot { name: "raw-spin" };
    /// Shared memory with futex waits (spin-then-block and block).
    pub const FUTEX: Slot = Slot { name: "raw-futex" };
    /// Shared memory with an eventfd per direction.
    pub const EVENTFD: Slot = Slot {
        name: "raw-eventfd",
    };

    fn wait(&self, mode: Mode) -> SlotWait {
        match (self.name, mode) {
            ("raw-spin", _) => SlotWait::Spin,
            ("raw-eventfd", _) => SlotWait::Eventfd,
            (_, Mode::SpinThenBlock) => SlotWait::FutexSpin,
            _ => SlotWait::FutexBlock,
        }
    }
}

impl System for Slot {
    fn name(&self) -> &'static str {
        self.name
    }

    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, _size: usize) -> bool {
        kind == Kind::Rtt
            && match self.name {
                "raw-spin" => mode == Mode::BusyPoll && placement == Placement::CrossCore,
                "raw-futex" => match mode {
                    Mode::BusyPoll => false,
                    Mode::SpinThenBlock => placement == Placement::CrossCore,
                    Mode::Block => true,
                },
                _ => mode == Mode::Block,
            }
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let (_, total) = SlotEndpoint::layout(cfg.size);
        let name = CString::new(self.name).expect("no NUL");
        let fd = flowipc_sys::memfd::create_sealed(&name, total as u64).map_err(errno)?;
        let map = Mapping::map(fd.as_fd(), 0, total, Access::ReadWrite).map_err(errno)?;
        let mut fds = vec![fd];
        let wait = self.wait(cfg.mode);
        let evts = if wait == SlotWait::Eventfd {
            let flags = flowipc_sys::eventfd::EventfdFlags::empty();
            let c2s = flowipc_sys::eventfd::eventfd(0, flags).map_err(errno)?;
            let s2c = flowipc_sys::eventfd::eventfd(0, flags).map_err(errno)?;
            fds.push(c2s.try_clone()?);
            fds.push(s2c.try_clone()?);
            Some((c2s, s2c))
        } else {
            None
        };
        Ok((
            Box::new(SlotEndpoint::new(map, cfg.size, true, wait, evts)),
            fds,
        ))
    }

    fn attach(&self, cfg: &Config, mut fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let (_, total) = SlotEndpoint::layout(cfg.size);
        let wait = self.wait(cfg.mode);
        let evts = if wait == SlotWait::Eventfd {
            if fds.len() != 3 {
                return Err(wrong_fds(self.name));
            }
            let s2c = fds.pop().expect("len checked");
            let c2s = fds.pop().expect("len checked");
            Some((s2c, c2s))
        } else {
            None
        };
        let fd = fds.pop().ok_or_else(|| wrong_fds(self.name))?;
        let map = Mapping::map(fd.as_fd(), 0, total, Access::ReadWrite).map_err(errno)?;
        Ok(Box::new(SlotEndpoint::new(
            map, cfg.size, false, wait, evts,
        )))
    }
}

// ---------------------------------------------------------------------------------------------------
// Byte-stream transports: raw-pipe, raw-uds
// ---------------------------------------------------------------------------------------------------

/// Fixed-size messages over a reader and a writer; the harness's messages all have the configured size.
struct StreamEndpoint<R, W> {
    reader: R,
    writer: W,
    size: usize,
}

impl<R: Read, W: Write> Endpoint for StreamEndpoint<R, W> {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.writer.write_all(msg)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.size.min(buf.len());
        self.reader.read_exact(&mut buf[..n])?;
        Ok(n)
    }
}

fn stream_size(cfg: &Config) -> usize {
    cfg.size.max(crate::harness::MIN_SIZE)
}

/// Two pipes, one per direction.
pub struct Pipe;

impl System for Pipe {
    fn name(&self) -> &'static str {
        "raw-pipe"
    }

    fn supports(&self, mode: Mode, _placement: Placement, _kind: Kind, _size: usize) -> bool {
        mode == Mode::Block
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let (c2s_r, c2s_w) = flowipc_sys::pipe::pipe().map_err(errno)?;
        let (s2c_r, s2c_w) = flowipc_sys::pipe::pipe().map_err(errno)?;
        let ep = StreamEndpoint {
            reader: File::from(s2c_r),
            writer: File::from(c2s_w),
            size: stream_size(cfg),
        };
        Ok((Box::new(ep), vec![c2s_r, s2c_w]))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let [r, w]: [OwnedFd; 2] = fds.try_into().map_err(|_| wrong_fds(self.name()))?;
        Ok(Box::new(StreamEndpoint {
            reader: File::from(r),
            writer: File::from(w),
            size: stream_size(cfg),
        }))
    }
}

/// One Unix stream socketpair.
pub struct Uds;

impl System for Uds {
    fn name(&self) -> &'static str {
        "raw-uds"
    }

    fn supports(&self, mode: Mode, _placement: Placement, _kind: Kind, _size: usize) -> bool {
        mode == Mode::Block
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let (a, b) = UnixStream::pair()?;
        let ep = StreamEndpoint {
            reader: a.try_clone()?,
            writer: a,
            size: stream_size(cfg),
        };
        Ok((Box::new(ep), vec![OwnedFd::from(b)]))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let [s]: [OwnedFd; 1] = fds.try_into().map_err(|_| wrong_fds(self.name()))?;
        let s = UnixStream::from(s);
        Ok(Box::new(StreamEndpoint {
            reader: s.try_clone()?,
            writer: s,
            size: stream_size(cfg),
        }))
    }
}

// ---------------------------------------------------------------------------------------------------
// POSIX message queues: raw-mq
// ---------------------------------------------------------------------------------------------------

/// The largest message a queue may hold here (`/proc/sys/fs/mqueue/msgsize_max`).
const MQ_MSGSIZE_MAX: usize = 8192;

struct MqEndpoint {
    tx: OwnedFd,
    rx: OwnedFd,
}

impl Endpoint for MqEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        flowipc_sys::mq::mq_send(self.tx.as_fd(), msg, 0).map_err(errno)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        flowipc_sys::mq::mq_receive(self.rx.as_fd(), buf)
            .map(|(n, _prio)| n)
            .map_err(errno)
    }
}

/// A queue per direction, unlinked as soon as both are open.
pub struct Mq;

fn mq_create(size: usize, tag: &str) -> io::Result<OwnedFd> {
    use flowipc_sys::mq::{Mode as FileMode, MqAttr, OFlags};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = CString::new(format!(
        "flowipc-bench-{}-{tag}-{nanos}",
        std::process::id()
    ))
    .expect("no NUL");
    let attr = MqAttr::new(10, size as i64);
    let fd = flowipc_sys::mq::mq_open(
        &name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        FileMode::from_bits_truncate(0o600),
        Some(&attr),
    )
    .map_err(errno)?;
    flowipc_sys::mq::mq_unlink(&name).map_err(errno)?;
    Ok(fd)
}

impl System for Mq {
    fn name(&self) -> &'static str {
        "raw-mq"
    }

    fn supports(&self, mode: Mode, _placement: Placement, _kind: Kind, size: usize) -> bool {
        mode == Mode::Block && size <= MQ_MSGSIZE_MAX
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let size = stream_size(cfg);
        let c2s = mq_create(size, "c2s")?;
        let s2c = mq_create(size, "s2c")?;
        let fds = vec![c2s.try_clone()?, s2c.try_clone()?];
        Ok((Box::new(MqEndpoint { tx: c2s, rx: s2c }), fds))
    }

    fn attach(&self, _cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let [c2s, s2c]: [OwnedFd; 2] = fds.try_into().map_err(|_| wrong_fds(self.name()))?;
        Ok(Box::new(MqEndpoint { tx: s2c, rx: c2s }))
    }
}
