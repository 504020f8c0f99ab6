//! The two-process measurement harness shared by every system.
//!
//! The bench process is the *client*: for each configuration it spawns a copy of itself as the
//! *server* (`flowipc-bench __child`), hands it the configuration and the transport's file descriptors
//! over a control socket (the child's stdin), pins both processes, and measures:
//!
//! - `rtt`: the client sends a message of `size` bytes, the server echoes one of the same size; the
//!   round trip of each is recorded in an HDR histogram after a warm-up period;
//! - `stream`: the client sends messages back to back for the time budget, the server counts them and
//!   acknowledges the last one; throughput is messages (and payload bytes) per second.
//!
//! Both sides touch the payload (write every cache line before sending, read every cache line after
//! receiving), so a zero-copy trick that never looks at the data cannot win by skipping work.

use std::io::{self, Read as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::Row;

/// How a receiver waits for the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Spin on shared memory and never sleep.
    BusyPoll,
    /// Spin for a bounded time, then sleep in the kernel.
    SpinThenBlock,
    /// Sleep in the kernel at once.
    Block,
}

impl Mode {
    /// The name used in result rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::BusyPoll => "busy-poll",
            Mode::SpinThenBlock => "spin-then-block",
            Mode::Block => "block",
        }
    }
}

/// Where the server runs relative to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Client on CPU 0, server on CPU 1.
    CrossCore,
    /// Both on CPU 0.
    SameCore,
}

impl Placement {
    /// The name used in result rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::CrossCore => "cross-core",
            Placement::SameCore => "same-core",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Round-trip latency of one message and its echo.
    Rtt,
    /// One-way throughput of back-to-back messages.
    Stream,
}

impl Kind {
    /// The name used in result rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rtt => "rtt",
            Kind::Stream => "stream",
        }
    }
}

/// One configuration to measure; sent to the server as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// System name, as in [`System::name`].
    pub system: String,
    /// Waiting mode.
    pub mode: Mode,
    /// Placement of the server.
    pub placement: Placement,
    /// Latency or throughput.
    pub kind: Kind,
    /// Payload bytes per message.
    pub size: usize,
    /// How long the measured phase runs.
    pub budget_ms: u64,
}

/// One side of a transport, as seen by the harness.
pub trait Endpoint {
    /// Sends one message.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Receives one message into `buf` (large enough for any message of the configuration) and
    /// returns its length.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Makes everything sent so far visible to the peer; for transports that batch (the default
    /// does nothing). The harness calls it after every rtt message and after the last stream message.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Receives one message and returns its bytes: in `scratch` by default, or in the endpoint's
    /// own buffer where the transport fills one anyway (saving a copy the application would not make).
    fn recv_slice<'a>(&'a mut self, scratch: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let n = self.recv(scratch)?;
        Ok(&scratch[..n])
    }

    /// Produces `msg` and sends it: the application's share of the work (writing every cache line)
    /// plus the transport's. By default the message is built in `scratch` (`msg.size` bytes) and
    /// sent with [`send`](Self::send); a zero-copy transport builds it in place instead.
    fn send_message(&mut self, msg: &Message, scratch: &mut [u8]) -> io::Result<()> {
        send_copied(self, msg, scratch)
    }

    /// Receives one message and reads every cache line of it (the application's share of consuming
    /// it). By default through [`recv_slice`](Self::recv_slice); a zero-copy transport reads it in
    /// place instead.
    fn recv_message(&mut self, scratch: &mut [u8]) -> io::Result<Received> {
        recv_copied(self, scratch)
    }
}

/// The default [`Endpoint::send_message`]: builds `msg` in `scratch` and sends it from there.
pub fn send_copied<E: Endpoint + ?Sized>(
    ep: &mut E,
    msg: &Message,
    scratch: &mut [u8],
) -> io::Result<()> {
    msg.build(|offset, bytes| scratch[offset..offset + bytes.len()].copy_from_slice(bytes));
    ep.send(&scratch[..msg.size])
}

/// The default [`Endpoint::recv_message`]: receives through [`Endpoint::recv_slice`] and reads the
/// bytes there.
pub fn recv_copied<E: Endpoint + ?Sized>(ep: &mut E, scratch: &mut [u8]) -> io::Result<Received> {
    let msg = ep.recv_slice(scratch)?;
    Ok(Received::read(msg.len(), |offset, dst| {
        dst.copy_from_slice(&msg[offset..offset + dst.len()])
    }))
}

/// A message as the harness defines it: `size` bytes whose first byte is a flag, bytes 8..16 a
/// little-endian sequence number, and every further cache line written by the sender.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    /// Payload bytes.
    pub size: usize,
    /// Sequence number (or, for a stream's acknowledgement, the count received).
    pub seq: u64,
    /// [`FLAG_DATA`] or [`FLAG_END`].
    pub flag: u8,
}

impl Message {
    /// Writes the message's defined bytes through `write(offset, bytes)`: one byte in every cache
    /// line after the first, the sequence number and the flag. `size >= MIN_SIZE`.
    #[inline]
    pub fn build(&self, mut write: impl FnMut(usize, &[u8])) {
        let v = [self.seq as u8];
        let mut offset = 64;
        while offset < self.size {
            write(offset, &v);
            offset += 64;
        }
        write(8, &self.seq.to_le_bytes());
        write(0, &[self.flag]);
    }
}

/// What the receiver read of a message.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Payload bytes.
    pub len: usize,
    /// The flag byte.
    pub flag: u8,
    /// The sequence number.
    pub seq: u64,
}

impl Received {
    /// Reads a message of `len` bytes through `read(offset, dst)`: one byte of every cache line,
    /// then the flag and the sequence number. A message shorter than [`MIN_SIZE`] has flag and
    /// sequence 0 (the caller rejects its length).
    #[inline]
    pub fn read(len: usize, mut read: impl FnMut(usize, &mut [u8])) -> Received {
        let mut sum = 0u64;
        let mut b = [0u8; 8];
        let mut offset = 0;
        while offset < len {
            read(offset, &mut b[..1]);
            sum = sum.wrapping_add(u64::from(b[0]));
            offset += 64;
        }
        std::hint::black_box(sum);
        if len < MIN_SIZE {
            return Received {
                len,
                flag: 0,
                seq: 0,
            };
        }
        read(0, &mut b[..1]);
        let flag = b[0];
        read(8, &mut b);
        Received {
            len,
            flag,
            seq: u64::from_le_bytes(b),
        }
    }
}

/// Receives one message of exactly `size` bytes, reads every cache line of it, and returns its flag
/// byte and sequence number.
fn recv_msg(ep: &mut dyn Endpoint, scratch: &mut [u8], size: usize) -> io::Result<(u8, u64)> {
    let got = ep.recv_message(scratch)?;
    if got.len != size {
        return Err(invalid(format!(
            "received {} bytes, expected {size}",
            got.len
        )));
    }
    Ok((got.flag, got.seq))
}

/// A transport under test.
pub trait System: Sync {
    /// The name in result rows, e.g. `raw-futex`.
    fn name(&self) -> &'static str;
    /// Whether this system runs the configuration at all.
    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, size: usize) -> bool;
    /// Client side: creates the transport; returns the client's endpoint and the fds for the server.
    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)>;
    /// Server side: builds the server's endpoint from the fds the client sent, in the same order.
    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>>;
}

/// First payload byte: an ordinary message.
pub const FLAG_DATA: u8 = 0;
/// First payload byte: the last message of the run (echoed, or acknowledged with the count).
pub const FLAG_END: u8 = 1;
/// Smallest payload the protocol needs (flag byte plus a u64 count).
pub const MIN_SIZE: usize = 16;
/// The server's CPU in cross-core runs; the client always runs on CPU 0.
const OTHER_CPU: usize = 1;
/// Time not recorded at the start of an rtt run.
const WARMUP: Duration = Duration::from_millis(50);
/// Lower bound on recorded round trips.
const MIN_ROUND_TRIPS: u64 = 3;
/// Upper bound on recorded round trips, to bound memory and time at tiny latencies.
const MAX_ROUND_TRIPS: u64 = 5_000_000;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Pins the calling thread to `cpu`.
///
/// The CPU is absolute: a child inherits its parent's mask, so a count taken after pinning would say
/// one CPU. The client checks once, before any pinning, that cross-core runs are possible.
pub fn pin(cpu: usize) -> io::Result<()> {
    flowipc_sys::process::set_cpu_affinity(cpu).map_err(io::Error::from)
}

/// Slack beyond the budget before the watchdog declares a configuration hung.
const HANG_SLACK: Duration = Duration::from_secs(60);

/// Ends the bench if one configuration overruns its budget by [`HANG_SLACK`]: a transport that loses
/// a wake-up would otherwise block both processes forever. The server dies with us (it asked for
/// `PR_SET_PDEATHSIG`). Dropping the returned sender disarms it.
fn watchdog(cfg: &Config) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let limit = WARMUP + Duration::from_millis(cfg.budget_ms) + HANG_SLACK;
    let what = format!(
        "{} {} {} {} {} B",
        cfg.system,
        cfg.mode.as_str(),
        cfg.placement.as_str(),
        cfg.kind.as_str(),
        cfg.size
    );
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("\nflowipc-bench: {what} made no progress for {limit:?}; giving up (lost wake-up or dead peer)");
            std::process::exit(3);
        }
    });
    tx
}

/// Runs one configuration end to end and returns its result row.
pub fn run(system: &dyn System, cfg: &Config) -> io::Result<Row> {
    let _armed = watchdog(cfg);
    let (ctl, ctl_child) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("__child")
        .stdin(Stdio::from(OwnedFd::from(ctl_child)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?;

    let result = (|| {
        let (mut ep, fds) = system.setup(cfg)?;
        let json = serde_json::to_vec(cfg).map_err(|e| invalid(e.to_string()))?;
        let mut msg = (json.len() as u32).to_le_bytes().to_vec();
        msg.extend_from_slice(&json);
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        flowipc_sys::socket::send_with_fds(
            ctl.as_fd(),
            &msg,
            &borrowed,
            flowipc_sys::socket::SendFlags::empty(),
        )
        .map_err(io::Error::from)?;
        drop(fds);
        pin(0)?;
        let mut ready = [0u8; 1];
        (&ctl).read_exact(&mut ready)?;
        match cfg.kind {
            Kind::Rtt => client_rtt(&mut *ep, cfg, system.name()),
            Kind::Stream => client_stream(&mut *ep, cfg, system.name()),
        }
    })();

    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let row = result?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "{} server process failed: {status}",
            system.name()
        )));
    }
    Ok(row)
}

fn client_rtt(ep: &mut dyn Endpoint, cfg: &Config, name: &str) -> io::Result<Row> {
    let size = cfg.size.max(MIN_SIZE);
    let mut out = vec![0u8; size];
    let mut inb = vec![0u8; size];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| invalid(e.to_string()))?;
    let start = Instant::now();
    let budget = WARMUP + Duration::from_millis(cfg.budget_ms);
    let mut seq = 0u64;
    loop {
        let t0 = Instant::now();
        let elapsed = t0 - start;
        // At least a few recorded round trips, however long each takes (a 1 GiB copy takes
        // longer than the whole budget).
        let last =
            (elapsed >= budget && hist.len() >= MIN_ROUND_TRIPS) || hist.len() >= MAX_ROUND_TRIPS;
        let flag = if last { FLAG_END } else { FLAG_DATA };
        ep.send_message(&Message { size, seq, flag }, &mut out)?;
        ep.flush()?;
        let (_, echoed) =
            recv_msg(ep, &mut inb, size).map_err(|e| invalid(format!("{name}: {e}")))?;
        let t1 = Instant::now();
        if echoed != seq {
            return Err(invalid(format!(
                "{name}: echo of message {echoed} arrived for {seq}"
            )));
        }
        if last {
            break;
        }
        if elapsed >= WARMUP {
            hist.record((t1 - t0).as_nanos() as u64)
                .map_err(|e| invalid(e.to_string()))?;
        }
        seq += 1;
    }
    Ok(Row {
        system: name.to_string(),
        mode: cfg.mode.as_str().to_string(),
        placement: cfg.placement.as_str().to_string(),
        kind: Kind::Rtt.as_str().to_string(),
        size_bytes: cfg.size as u64,
        p50_ns: Some(hist.value_at_quantile(0.50) as f64),
        p99_ns: Some(hist.value_at_quantile(0.99) as f64),
        p999_ns: Some(hist.value_at_quantile(0.999) as f64),
        msgs_per_s: None,
        gbytes_per_s: None,
    })
}

fn client_stream(ep: &mut dyn Endpoint, cfg: &Config, name: &str) -> io::Result<Row> {
    let size = cfg.size.max(MIN_SIZE);
    let mut out = vec![0u8; size];
    let mut inb = vec![0u8; size];
    let budget = Duration::from_millis(cfg.budget_ms);
    let start = Instant::now();
    let mut sent = 0u64;
    // Reading the clock every message would cost more than a 64-byte ring push.
    let check_every = if size >= 4096 { 1 } else { 256 };
    loop {
        let last = sent % check_every == 0 && start.elapsed() >= budget;
        let flag = if last { FLAG_END } else { FLAG_DATA };
        ep.send_message(
            &Message {
                size,
                seq: sent,
                flag,
            },
            &mut out,
        )?;
        sent += 1;
        if last {
            ep.flush()?;
            break;
        }
    }
    let (_, acked) = recv_msg(ep, &mut inb, size).map_err(|e| invalid(format!("{name}: {e}")))?;
    let elapsed = start.elapsed().as_secs_f64();
    if acked != sent {
        return Err(invalid(format!(
            "{name}: server acknowledged {acked} messages, {sent} were sent"
        )));
    }
    let msgs_per_s = sent as f64 / elapsed;
    Ok(Row {
        system: name.to_string(),
        mode: cfg.mode.as_str().to_string(),
        placement: cfg.placement.as_str().to_string(),
        kind: Kind::Stream.as_str().to_string(),
        size_bytes: cfg.size as u64,
        p50_ns: None,
        p99_ns: None,
        p999_ns: None,
        msgs_per_s: Some(msgs_per_s),
        gbytes_per_s: Some(msgs_per_s * cfg.size as f64 / 1e9),
    })
}

/// Entry point of the server process (`flowipc-bench __child`); `systems` is the same list the
/// client uses, so the names resolve to the same code.
pub fn child_main(systems: &[&dyn System]) -> io::Result<()> {
    flowipc_sys::process::set_parent_death_kill().map_err(io::Error::from)?;
    let ctl: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds = flowipc_sys::socket::RecvFds::new();
    let n = flowipc_sys::socket::recv_with_fds(
        ctl.as_fd(),
        &mut buf,
        &mut fds,
        flowipc_sys::socket::RecvFlags::empty(),
    )
    .map_err(io::Error::from)?;
    if n < 4 {
        return Err(invalid("control message too short"));
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let mut got = n;
    let mut ctl_stream = UnixStream::from(ctl);
    if 4 + len > buf.len() {
        return Err(invalid("control message too long"));
    }
    while got < 4 + len {
        got += ctl_stream.read(&mut buf[got..4 + len])?;
    }
    let cfg: Config =
        serde_json::from_slice(&buf[4..4 + len]).map_err(|e| invalid(e.to_string()))?;
    let system = systems
        .iter()
        .find(|s| s.name() == cfg.system)
        .ok_or_else(|| invalid(format!("unknown system {}", cfg.system)))?;
    let fds: Vec<OwnedFd> = fds.drain().collect();
    let mut ep = system.attach(&cfg, fds)?;
    pin(match cfg.placement {
        Placement::CrossCore => OTHER_CPU,
        Placement::SameCore => 0,
    })?;
    io::Write::write_all(&mut ctl_stream, &[1])?;
    match cfg.kind {
        Kind::Rtt => server_rtt(&mut *ep, &cfg),
        Kind::Stream => server_stream(&mut *ep, &cfg),
    }
}

fn server_rtt(ep: &mut dyn Endpoint, cfg: &Config) -> io::Result<()> {
    let size = cfg.size.max(MIN_SIZE);
    let mut inb = vec![0u8; size];
    let mut out = vec![0u8; size];
    loop {
        let (flag, seq) = recv_msg(ep, &mut inb, size)?;
        ep.send_message(&Message { size, seq, flag }, &mut out)?;
        ep.flush()?;
        if flag == FLAG_END {
            return Ok(());
        }
    }
}

fn server_stream(ep: &mut dyn Endpoint, cfg: &Config) -> io::Result<()> {
    let size = cfg.size.max(MIN_SIZE);
    let mut inb = vec![0u8; size];
    let mut count = 0u64;
    loop {
        let (flag, _) = recv_msg(ep, &mut inb, size)?;
        count += 1;
        if flag == FLAG_END {
            let mut ack = vec![0u8; size];
            let msg = Message {
                size,
                seq: count,
                flag: FLAG_DATA,
            };
            ep.send_message(&msg, &mut ack)?;
            return ep.flush();
        }
    }
}
