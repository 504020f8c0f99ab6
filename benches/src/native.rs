//! Native shared-memory structures: `flowipc-shm-vec` against `bincode-socket`, kind `native`,
//! and the cost of building a vector, kind `build`.
//!
//! - `native` (`size_bytes` = 8 x elements; 1 K, 1 M and 100 M elements): the client holds a
//!   `Vec<u64>`'s worth of data and the server reads three elements of it (first, middle, last)
//!   and answers with their sum, over a Unix stream socket in both systems. `flowipc-shm-vec`
//!   builds a [`ShmVec<u64>`] once, then per round trip lends it (a 32-byte handle on the socket),
//!   the server opens a checked [`VecRef`], reads, releases the handle on the return ring and
//!   answers; the client drains the return. `bincode-socket` serializes the `Vec<u64>` with
//!   bincode (serde, fixed-width integers) per round trip, sends it length-prefixed, and the
//!   server deserializes it whole before reading. Rows: mode `block`, placement `n/a`, p50 /
//!   p99 / p99.9 of the round trip.
//! - `build` (`size_bytes` = 8 M): building a 1 M-element vector by `push`, from an empty one,
//!   as a [`ShmVec<u64>`] in a lend pool (`flowipc-shm-vec`) and as a `Vec<u64>` (`std-vec`);
//!   `p50_ns` is the whole build.
//!
//! The server is this binary re-run as `flowipc-bench __native`, its stdin one end of the socket
//! pair; the pool's descriptors reach it with `SCM_RIGHTS`.

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::arena::{ArenaHandle, BorrowedPool, BorrowerSetup, LendPool};
use flowipc::native::{ShmAlloc, ShmVec, VecRef};
use flowipc_sys::socket::{recv_with_fds_vec, send_with_fds, RecvFlags, SendFlags};

use crate::report::Row;

/// The systems this module measures (for `--only`).
pub const SYSTEMS: &[&str] = &["flowipc-shm-vec", "bincode-socket", "std-vec"];

const ROLE_ARG: &str = "__native";
const ELEMENTS: [usize; 3] = [1_000, 1_000_000, 100_000_000];
const BUILD_ELEMENTS: usize = 1_000_000;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

/// In a re-run server: serves until the client closes the socket; returns the exit code, `None`
/// if this is not the server.
pub fn child_entry() -> Option<i32> {
    if std::env::args().nth(1).as_deref() != Some(ROLE_ARG) {
        return None;
    }
    Some(match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flowipc-bench native server: {e}");
            1
        }
    })
}

fn serve() -> Result<(), String> {
    let sock: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    let (_, fds) =
        recv_with_fds_vec(sock.as_fd(), &mut b, RecvFlags::empty()).map_err(|e| e.to_string())?;
    let mut fds = fds.into_iter();
    let (Some(pool_fd), Some(return_ring_fd)) = (fds.next(), fds.next()) else {
        return Err("expected the pool's two descriptors".into());
    };
    let pool = BorrowedPool::open(BorrowerSetup {
        pool_fd,
        return_ring_fd,
    })
    .map_err(|e| e.to_string())?;
    let mut s = UnixStream::from(sock);
    let mut tag = [0u8; 1];
    let mut buf = Vec::new();
    loop {
        if s.read_exact(&mut tag).is_err() {
            return Ok(()); // the client is done
        }
        let sum = match tag[0] {
            b'L' => {
                let mut h = [0u8; ArenaHandle::ENCODED_LEN];
                s.read_exact(&mut h).map_err(|e| e.to_string())?;
                let h = ArenaHandle::from_bytes(&h).map_err(|e| e.to_string())?;
                let sum = {
                    let v = VecRef::<u64>::open(&pool, &h).map_err(|e| e.to_string())?;
                    three(v.len(), |i| v.get(i).map_err(|e| e.to_string()))?
                };
                pool.release(h).map_err(|e| e.to_string())?;
                sum
            }
            b'B' => {
                let mut len = [0u8; 8];
                s.read_exact(&mut len).map_err(|e| e.to_string())?;
                buf.resize(u64::from_le_bytes(len) as usize, 0);
                s.read_exact(&mut buf).map_err(|e| e.to_string())?;
                let (v, _): (Vec<u64>, _) =
                    bincode::serde::decode_from_slice(&buf, bincode_config())
                        .map_err(|e| e.to_string())?;
                three(v.len(), |i| Ok(v[i]))?
            }
            t => return Err(format!("unknown request {t}")),
        };
        s.write_all(&sum.to_le_bytes()).map_err(|e| e.to_string())?;
    }
}

/// The sum of the first, middle and last elements.
fn three(len: usize, get: impl Fn(usize) -> Result<u64, String>) -> Result<u64, String> {
    if len == 0 {
        return Ok(0);
    }
    Ok(get(0)?
        .wrapping_add(get(len / 2)?)
        .wrapping_add(get(len - 1)?))
}

fn row(system: &str, kind: &str, size_bytes: u64, mut ns: Vec<u64>) -> Row {
    ns.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if ns.is_empty() {
            return None;
        }
        let i = ((ns.len() as f64 - 1.0) * p).round() as usize;
        Some(ns[i.min(ns.len() - 1)] as f64)
    };
    Row {
        system: system.into(),
        mode: "block".into(),
        placement: "n/a".into(),
        kind: kind.into(),
        size_bytes,
        p50_ns: pct(0.5),
        p99_ns: pct(0.99),
        p999_ns: pct(0.999),
        msgs_per_s: None,
        gbytes_per_s: None,
    }
}

/// Runs `f` (which returns its own measured nanoseconds) for about `budget`, at least `min` and
/// at most `max` times, after a short warm-up.
fn sample(budget: Duration, min: usize, max: usize, mut f: impl FnMut() -> u64) -> Vec<u64> {
    for _ in 0..min.min(3) {
        f();
    }
    let start = Instant::now();
    let mut ns = Vec::new();
    while ns.len() < max && (ns.len() < min || start.elapsed() < budget) {
        ns.push(f());
    }
    ns
}

struct Server {
    child: Child,
    sock: UnixStream,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(setup: &BorrowerSetup) -> Result<Server, String> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg(ROLE_ARG)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .map_err(|e| e.to_string())?;
    send_with_fds(
        mine.as_fd(),
        b"S",
        &[setup.pool_fd.as_fd(), setup.return_ring_fd.as_fd()],
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| e.to_string())?;
    // Bound every wait on the server: a stuck run fails instead of hanging the bench.
    mine.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    Ok(Server { child, sock: mine })
}

/// A pool that holds one block of `bytes`: the core allocator gives a large block a power of two
/// of its 256 KiB spans.
fn pool_size(bytes: usize) -> usize {
    bytes.next_power_of_two() + (64 << 20)
}

fn data(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

/// The `native` rows at 1 K, 1 M and 100 M elements (the last needs about 4 GB of memory: the
/// data, the pool, and bincode's buffers on both sides).
fn rtt_rows(quick: bool, budget: Duration, want: &dyn Fn(&str) -> bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in &ELEMENTS {
        if let Err(e) = rtt_size(n, quick, budget, want, &mut rows) {
            eprintln!("\nflowipc-bench: native rows of {n} elements failed: {e}");
        }
    }
    rows
}

/// The `native` rows of `n` elements.
fn rtt_size(
    n: usize,
    quick: bool,
    budget: Duration,
    want: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    {
        let bytes = n * 8;
        let (min, max) = match n {
            n if n >= 100_000_000 => (if quick { 3 } else { 5 }, 20),
            n if n >= 1_000_000 => (10, 2_000),
            _ => (100, 100_000),
        };
        let v = data(n);
        let want_sum = three(n, |i| Ok(v[i]))?;
        if want("flowipc-shm-vec") {
            let pool = LendPool::create(pool_size(bytes)).map_err(|e| e.to_string())?;
            let (id, setup) = pool.add_borrower().map_err(|e| e.to_string())?;
            let mut srv = spawn(&setup)?;
            drop(setup);
            let alloc = ShmAlloc::from(&pool);
            let shm = ShmVec::from_slice_in(&alloc, &v).map_err(|e| e.to_string())?;
            let mut err = None;
            let ns = sample(budget, min, max, || {
                let t0 = Instant::now();
                let r = (|| -> Result<(), String> {
                    let h = shm.lend(&pool, id).map_err(|e| e.to_string())?;
                    let mut msg = [0u8; 1 + ArenaHandle::ENCODED_LEN];
                    msg[0] = b'L';
                    msg[1..].copy_from_slice(&h.to_bytes());
                    srv.sock.write_all(&msg).map_err(|e| e.to_string())?;
                    let mut sum = [0u8; 8];
                    srv.sock.read_exact(&mut sum).map_err(|e| e.to_string())?;
                    if u64::from_le_bytes(sum) != want_sum {
                        return Err("wrong sum".into());
                    }
                    pool.drain_returns(id).map_err(|e| e.to_string())?;
                    Ok(())
                })();
                let dt = t0.elapsed().as_nanos() as u64;
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
                dt
            });
            if let Some(e) = err {
                return Err(format!("flowipc-shm-vec {n}: {e}"));
            }
            rows.push(row("flowipc-shm-vec", "native", bytes as u64, ns));
        }
        if want("bincode-socket") {
            let pool = LendPool::create(4 << 20).map_err(|e| e.to_string())?;
            let (_, setup) = pool.add_borrower().map_err(|e| e.to_string())?;
            let mut srv = spawn(&setup)?;
            let mut err = None;
            let ns = sample(budget, min, max, || {
                let t0 = Instant::now();
                let r = (|| -> Result<(), String> {
                    let body = bincode::serde::encode_to_vec(&v, bincode_config())
                        .map_err(|e| e.to_string())?;
                    let mut head = [0u8; 9];
                    head[0] = b'B';
                    head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
                    srv.sock.write_all(&head).map_err(|e| e.to_string())?;
                    srv.sock.write_all(&body).map_err(|e| e.to_string())?;
                    let mut sum = [0u8; 8];
                    srv.sock.read_exact(&mut sum).map_err(|e| e.to_string())?;
                    if u64::from_le_bytes(sum) != want_sum {
                        return Err("wrong sum".into());
                    }
                    Ok(())
                })();
                let dt = t0.elapsed().as_nanos() as u64;
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
                dt
            });
            if let Some(e) = err {
                return Err(format!("bincode-socket {n}: {e}"));
            }
            rows.push(row("bincode-socket", "native", bytes as u64, ns));
        }
    }
    Ok(())
}

fn build_rows(budget: Duration, want: &dyn Fn(&str) -> bool) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let size = (BUILD_ELEMENTS * 8) as u64;
    if want("flowipc-shm-vec") {
        let pool = LendPool::create(64 << 20).map_err(|e| e.to_string())?;
        let alloc = ShmAlloc::from(&pool);
        let mut err = None;
        let ns = sample(budget, 11, 1_000, || {
            let t0 = Instant::now();
            let r = (|| -> Result<(), String> {
                let mut v: ShmVec<u64> = ShmVec::new_in(&alloc).map_err(|e| e.to_string())?;
                for i in 0..BUILD_ELEMENTS as u64 {
                    v.push(black_box(i)).map_err(|e| e.to_string())?;
                }
                black_box(&v);
                Ok(())
            })();
            let dt = t0.elapsed().as_nanos() as u64;
            if let Err(e) = r {
                err.get_or_insert(e);
            }
            dt
        });
        if let Some(e) = err {
            return Err(format!("flowipc-shm-vec build: {e}"));
        }
        rows.push(row("flowipc-shm-vec", "build", size, ns));
    }
    if want("std-vec") {
        let ns = sample(budget, 11, 1_000, || {
            let t0 = Instant::now();
            let mut v: Vec<u64> = Vec::new();
            for i in 0..BUILD_ELEMENTS as u64 {
                v.push(black_box(i));
            }
            black_box(&v);
            drop(v);
            t0.elapsed().as_nanos() as u64
        });
        rows.push(row("std-vec", "build", size, ns));
    }
    Ok(rows)
}

/// Measures the rows of the systems in `only` (all when empty).
pub fn run(quick: bool, budget_ms: u64, only: &[String]) -> Vec<Row> {
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let budget = Duration::from_millis(budget_ms);
    let mut rows = Vec::new();
    match build_rows(budget, &want) {
        Ok(r) => rows.extend(r),
        Err(e) => eprintln!("\nflowipc-bench: native build rows failed: {e}"),
    }
    rows.extend(rtt_rows(quick, budget, &want));
    rows
}

/// The targets, as ratios of rows of this run: RTT p50 of a 100 M-element lent vector at
/// most 1.2x that of a 1 K-element one; building 1 M elements by `push` at most 2x `Vec`'s.
pub fn check_targets(rows: &[Row]) {
    let p50 = |system: &str, kind: &str, size: u64| {
        rows.iter()
            .find(|r| r.system == system && r.kind == kind && r.size_bytes == size)
            .and_then(|r| r.p50_ns)
    };
    let show = |what: &str, a: Option<f64>, b: Option<f64>, bound: f64| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let ratio = a / b;
            let verdict = if ratio <= bound { "met" } else { "MISSED" };
            println!("  [{verdict}] {what}: {ratio:.2}x");
        }
        _ => println!("  [skip] {what}: rows not measured"),
    };
    show(
        "flowipc-shm-vec native p50 (100 M elements) <= 1.2 x (1 K elements)",
        p50("flowipc-shm-vec", "native", 800_000_000),
        p50("flowipc-shm-vec", "native", 8_000),
        1.2,
    );
    show(
        "flowipc-shm-vec build of 1 M elements by push <= 2 x std-vec",
        p50("flowipc-shm-vec", "build", 8_000_000),
        p50("std-vec", "build", 8_000_000),
        2.0,
    );
}
