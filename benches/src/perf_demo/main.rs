//! `perf_demo`: Flow-IPC's headline experiment, redone with flowipc.
//!
//! ```text
//! cargo run --release -p flowipc-benches --bin perf_demo [-- --sizes 100K,1M --samples 20 ...]
//! ```
//!
//! A caching server holds "files" of 100 KiB to 1 GiB (byte `i` is `i % 256`) and returns one to a
//! client as a single Cap'n Proto message (`benches/schema/perf_demo.capnp`): a list of 16 KiB parts,
//! each with its length and a hash of its bytes ([`file`](mod@file)). The server is this program re-run as
//! `perf_demo __server`, connected to the client through a flowipc session (`Session::spawn` /
//! `Session::from_env`) whose init channels carry the modes ([`modes`]): `classic` (capnp over a
//! Unix socket, what a program without flowipc does), `copy` (flowipc's structured channel in
//! copy mode over a ring channel), `zerocopy` (the same channel with the session's zero copy) and
//! `native` (the file as a shared-memory vector of parts, lent by handle).
//!
//! What is measured, per mode and size: the round trip from just before the client sends the request
//! to just after it has read the response's root and the first byte of the first part. The server
//! builds each file's response once, on the first request (a warm-up request, not timed), and sends
//! the same message for every later request. After the timer stops, the client checks every part's
//! length and hash; a failed check ends the run with an error. The check streams the whole file
//! through the caches, so before the next timed request the client makes an untimed one for the
//! same file (its response not checked): each timed request starts where a stream of requests
//! would, not right after a pass over 1 GiB (`--cold` leaves this out). Many samples per size after a warm-up
//! (fewer at the large sizes, where one round trip takes up to seconds), p50 / p99 / p99.9 by
//! nearest rank. The client runs on CPU 0, the server on CPU 1 (`cross-core`) or CPU 0 too
//! (`same-core`), pinned as flowipc-bench pins; flowipc's channels wait as `--mode` says, the Unix
//! socket always sleeps in the kernel. In the same run, flowipc-bench's `flowipc-ring` 64-byte
//! round trip (its own harness and ring code) is measured with the same wait mode and placement, as
//! the floor a zero-copy line aims at.
//!
//! Output: a table, the issue's targets as ratios of this run, a plot like Flow-IPC's with its
//! published figures as reference bands ([`figure`]), and `--json` rows in flowipc-bench's schema.

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../plot.rs"]
#[allow(dead_code)]
mod plot;
#[path = "../report.rs"]
mod report;
#[path = "../ring.rs"]
#[allow(dead_code)]
mod ring;

/// perf_demo's schema, `benches/schema/perf_demo.capnp` (generated Rust, checked in there).
#[path = "../../schema/perf_demo_capnp.rs"]
#[allow(missing_docs, unused, clippy::all, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod perf_demo_capnp;

mod figure;
mod file;
mod modes;
mod server;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use flowipc::session::Session;

use harness::{Mode, Placement};
use modes::{DemoMode, End, ServerSetup};
use report::Row;

/// The argument that makes this program the server.
const SERVER_ARG: &str = "__server";

const AFTER_HELP: &str = "\
Memory: with 1 GiB files, peak resident memory of 4.3 GiB in the server and 2.2 GiB in the \
client (measured), of which 3.2 and 2.2 GiB are shared memory (the server's lend pool, which the \
client maps read-only and is counted in both). The server holds one file per mode while that mode \
runs (a capnp message on the heap, or in its lend pool for zerocopy and native), and the copy \
mode's channel stages it once more while sending; the client receives the classic and copy modes \
into buffers of its own.

Time: the default run takes about a minute and a half, most of it at 1 GiB, where a round trip takes up to \
seconds and building and checking a response a second more. Default samples per size and mode: \
500 up to 256 KiB, 200 up to 4 MiB, 40 up to 32 MiB, 10 up to 256 MiB and 5 above (so p99 at the \
large sizes is the largest sample), at least 50 for zerocopy and native, after a tenth as many warm-up requests, at least one (the \
first request of a file makes the server build it) and at least enough for two laps of the ring \
channel's rings (their pages mapped before the timer runs).

Wait mode: flowipc's ring channels wait as --mode says; the classic Unix socket always sleeps in \
the kernel, so its rows say `block`. busy-poll needs --placement cross-core.";

/// Flow-IPC's caching-server experiment: a file of 100 KiB to 1 GiB returned as one capnp message,
/// round trip per mode and size.
#[derive(Parser, Debug)]
#[command(name = "perf_demo", version, after_help = AFTER_HELP)]
struct Args {
    /// File sizes, comma-separated: bytes, or with K, M, G (binary units).
    #[arg(long, value_delimiter = ',', value_parser = file::parse_size,
          default_value = "100K,1M,10M,100M,1G", value_name = "SIZE,...")]
    sizes: Vec<u64>,
    /// Timed requests per size and mode (default: by size, see below).
    #[arg(long, value_name = "N")]
    samples: Option<usize>,
    /// Untimed requests before the timed ones, per size and mode (at least 1; default a tenth of
    /// the samples, at most 20, and at least two laps of the ring channel's 4 MiB rings).
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// Modes to run, comma-separated: classic, copy, zerocopy, native (default: all).
    #[arg(long, value_delimiter = ',', value_parser = DemoMode::parse, value_name = "MODE,...")]
    modes: Vec<DemoMode>,
    /// Measure cold round trips: no untimed request of the same file between the check of one
    /// response and the next timed request. The check reads the whole file, which evicts the
    /// caches and TLB and (in spin-then-block and block) lets the server's thread fall asleep, so
    /// each timed round trip then also pays the wake-up from idle and cache misses that grow with
    /// the file (with zero copy, a few microseconds at 1 GiB).
    #[arg(long)]
    cold: bool,
    /// How flowipc's channels wait: busy-poll, spin-then-block or block.
    #[arg(long, value_parser = parse_wait, default_value = "spin-then-block", value_name = "WAIT")]
    mode: Mode,
    /// Where the server runs: cross-core (client CPU 0, server CPU 1) or same-core (both CPU 0).
    #[arg(long, value_parser = parse_placement, default_value = "cross-core",
          value_name = "PLACEMENT")]
    placement: Placement,
    /// Also write the rows as a JSON array (flowipc-bench's row schema) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Directory for perf_demo.svg and perf_demo.png; created if missing.
    #[arg(long, value_name = "DIR", default_value = "target/perf_demo")]
    plot_dir: PathBuf,
}

fn parse_wait(s: &str) -> Result<Mode, String> {
    [Mode::BusyPoll, Mode::SpinThenBlock, Mode::Block]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("{s:?}: use busy-poll, spin-then-block or block"))
}

fn parse_placement(s: &str) -> Result<Placement, String> {
    [Placement::CrossCore, Placement::SameCore]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("{s:?}: use cross-core or same-core"))
}

/// Timed requests per size and mode when `--samples` is not given: enough for a p99 where a round
/// trip is short, a handful where it takes up to seconds.
fn default_samples(size: u64, mode: DemoMode) -> usize {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    // A zero-copy round trip costs microseconds at any size (only the check after it reads the
    // file), so its large sizes get enough samples for a p50 that a shared machine's hiccups do
    // not move (with 20, one run's 100 MiB p50 was 3x the next run's).
    let floor = if mode.is_zero_copy() { 50 } else { 1 };
    floor.max(match size {
        s if s <= 256 * KIB => 500,
        s if s <= 4 * MIB => 200,
        s if s <= 32 * MIB => 40,
        s if s <= 256 * MIB => 10,
        _ => 5,
    })
}

/// Untimed requests before the timed ones when `--warmup` is not given: a tenth of the samples (at
/// most 20), and at least two laps of a ring channel's ring, so that every page of the rings is
/// mapped on both sides before the timer runs (at 100 KiB, 20 samples after 2 warm-up requests
/// measured the first-touch page faults: 96 us against 14 us after 100).
fn default_warmup(samples: usize, size: u64) -> usize {
    let laps = (2 * modes::RING_CAPACITY as u64).div_ceil(size) as usize;
    (samples / 10).min(20).max(laps).max(1)
}

/// The sample at quantile `q` of sorted `v`, by nearest rank.
fn quantile(v: &[u64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64
}

fn fmt_ns(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ns) if ns < 1e3 => format!("{ns:.0} ns"),
        Some(ns) if ns < 1e6 => format!("{:.1} us", ns / 1e3),
        Some(ns) if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        Some(ns) => format!("{:.3} s", ns / 1e9),
    }
}

/// One measured (mode, size): its row and how many samples it has.
struct Measured {
    row: Row,
    samples: usize,
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        // flowipc-bench's harness re-runs this program as the ring row's server.
        Some("__child") => {
            if let Err(e) = harness::child_main(&[&ring::Ring::PLAIN]) {
                eprintln!("perf_demo ring server: {e}");
                std::process::exit(1);
            }
            return;
        }
        Some(SERVER_ARG) => {
            if let Err(e) = server::run() {
                eprintln!("perf_demo server: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    let args = Args::parse();
    if let Err(e) = client(&args) {
        eprintln!("perf_demo: {e}");
        std::process::exit(1);
    }
}

fn client(args: &Args) -> Result<(), String> {
    let asked = if args.modes.is_empty() {
        DemoMode::ALL
    } else {
        &args.modes[..]
    };
    let mut modes: Vec<DemoMode> = Vec::new();
    for m in asked {
        if !modes.contains(m) {
            modes.push(*m);
        }
    }
    if args.sizes.is_empty() {
        return Err("nothing to run: give at least one size".into());
    }
    if args.mode == Mode::BusyPoll && args.placement == Placement::SameCore {
        return Err(
            "busy-poll on one core only delays the peer that needs it; use \
                    spin-then-block or block with --placement same-core"
                .into(),
        );
    }
    // Counted before this process pins itself: afterwards its mask holds one CPU.
    if args.placement == Placement::CrossCore
        && flowipc_sys::process::available_cpus().unwrap_or(1) < 2
    {
        return Err("only one CPU is available; use --placement same-core".into());
    }
    let max_file = *args.sizes.iter().max().expect("sizes is not empty");
    let started = Instant::now();
    println!(
        "perf_demo: {} placement (client CPU 0, server CPU {}), wait mode {} (the classic Unix \
         socket always blocks)",
        args.placement.as_str(),
        server_cpu(args.placement),
        args.mode.as_str()
    );

    // The bare ring's 64-byte round trip, with flowipc-bench's harness (which pins this process to
    // CPU 0 and its own server as the placement says).
    eprintln!("perf_demo: flowipc-ring 64 B round trip (0.3 s)");
    let ring_cfg = harness::Config {
        system: "flowipc-ring".into(),
        mode: args.mode,
        placement: args.placement,
        kind: harness::Kind::Rtt,
        size: 64,
        budget_ms: 300,
    };
    let ring_row = harness::run(&ring::Ring::PLAIN, &ring_cfg)
        .map_err(|e| format!("flowipc-ring row: {e}"))?;

    let setup = ServerSetup {
        modes: modes.clone(),
        max_file,
        wait: args.mode,
        cpu: server_cpu(args.placement),
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (mut session, mut child) = Session::spawn(
        Command::new(exe).arg(SERVER_ARG),
        &modes::session_options(&setup),
    )
    .map_err(|e| format!("spawning the server: {e}"))?;
    let result = (|| {
        harness::pin(0).map_err(|e| e.to_string())?;
        let channels = session.take_init_channels();
        let mut ends = Vec::new();
        for (&mode, channel) in modes.iter().zip(channels) {
            ends.push(modes::open_end(
                mode,
                modes::Side::Client,
                channel,
                &session,
                &setup,
            )?);
        }
        measure(args, &modes, &mut ends, max_file)
    })();
    // Dropping the ends and the session ends the server's loops.
    drop(session);
    let measured = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the server failed: {status}"));
    }
    eprintln!(
        "perf_demo: measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    print_table(&measured, &ring_row);
    let mut rows: Vec<Row> = measured.into_iter().map(|m| m.row).collect();
    rows.push(ring_row);
    check_targets(&rows);

    let title = format!(
        "perf_demo: a file as one capnp message, round trip vs size   ({}, {} | {} | {})",
        args.placement.as_str(),
        args.mode.as_str(),
        plot::today(),
        plot::machine()
    );
    match figure::write(&rows, &args.plot_dir, &title) {
        Ok((written, notes)) => {
            if !written.is_empty() {
                println!("\nplot:");
                for path in &written {
                    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                    println!("  {}", shown.display());
                }
            }
            for note in notes {
                eprintln!("perf_demo: {note}");
            }
        }
        Err(e) => eprintln!(
            "perf_demo: cannot write the plot to {}: {e}",
            args.plot_dir.display()
        ),
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nrows written to {}", path.display());
    }
    Ok(())
}

fn server_cpu(placement: Placement) -> usize {
    match placement {
        Placement::CrossCore => 1,
        Placement::SameCore => 0,
    }
}

/// Every size, every mode in turn (so drift on a shared machine touches all modes alike): warm-up,
/// timed samples each checked after its timer, then the server drops the file.
fn measure(
    args: &Args,
    modes: &[DemoMode],
    ends: &mut [End],
    max_file: u64,
) -> Result<Vec<Measured>, String> {
    let mut out = Vec::new();
    for (i, &size) in args.sizes.iter().enumerate() {
        let name = file::file_name(size);
        for (&mode, end) in modes.iter().zip(ends.iter_mut()) {
            let samples = args
                .samples
                .unwrap_or_else(|| default_samples(size, mode))
                .max(1);
            let warmup = args
                .warmup
                .unwrap_or_else(|| default_warmup(samples, size))
                .max(1);
            eprint!(
                "[{}/{}] {:>8} {:<9} {warmup} warm-up + {samples} samples ... ",
                i + 1,
                args.sizes.len(),
                file::fmt_size(size),
                mode.name()
            );
            let t = Instant::now();
            let mut rtts = Vec::with_capacity(samples);
            for n in 0..warmup + samples {
                let (rtt, rsp) = end.request(&name, max_file)?;
                // The check, after the timer: every part's length and hash.
                rsp.verify(size).map_err(|e| {
                    format!(
                        "{} {}: the response failed the check: {e}",
                        mode.name(),
                        file::fmt_size(size)
                    )
                })?;
                drop(rsp);
                if !args.cold {
                    end.rewarm(&name, max_file)?;
                }
                if n >= warmup {
                    rtts.push(rtt.as_nanos() as u64);
                }
            }
            end.release(max_file)?;
            rtts.sort_unstable();
            let row = Row {
                system: mode.system().to_string(),
                mode: mode.wait_mode(args.mode).as_str().to_string(),
                placement: args.placement.as_str().to_string(),
                kind: "rtt".to_string(),
                size_bytes: size,
                p50_ns: Some(quantile(&rtts, 0.50)),
                p99_ns: Some(quantile(&rtts, 0.99)),
                p999_ns: Some(quantile(&rtts, 0.999)),
                msgs_per_s: None,
                gbytes_per_s: None,
            };
            eprintln!(
                "p50 {} ({:.1} s)",
                fmt_ns(row.p50_ns),
                t.elapsed().as_secs_f64()
            );
            out.push(Measured { row, samples });
        }
    }
    Ok(out)
}

fn print_table(measured: &[Measured], ring: &Row) {
    println!(
        "\n{:<20} {:<16} {:<11} {:>9} {:>8} {:>11} {:>11} {:>11}",
        "system", "mode", "placement", "size", "samples", "p50", "p99", "p99.9"
    );
    let line = |r: &Row, samples: String| {
        println!(
            "{:<20} {:<16} {:<11} {:>9} {:>8} {:>11} {:>11} {:>11}",
            r.system,
            r.mode,
            r.placement,
            file::fmt_size(r.size_bytes),
            samples,
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns)
        );
    };
    for m in measured {
        line(&m.row, m.samples.to_string());
    }
    line(ring, "0.3 s".into());
    if measured.iter().any(|m| m.samples < 100) {
        println!(
            "(with fewer than 100 samples p99 is the largest sample or next to it, and p99.9 the \
             largest; give --samples for more)"
        );
    }
    println!(
        "\nFlow-IPC 2.0 ({}): zero copy 120-450 us at 0.1-1 MiB and 230-700 us at 1000 MiB; \
         Unix socket 0.7-15 ms at 1 MiB and 1.4-5.7 s at 1000 MiB.",
        figure::FLOW_IPC_SOURCE
    );
}

/// Flow-IPC's zero-copy round trip at `size`, the low end of its published range: 120 us up to
/// 1 MiB, 230 us at 1000 MiB, log-linear in between.
fn flow_ipc_zero_copy_low(size: u64) -> f64 {
    let mib = size as f64 / 1048576.0;
    if mib <= 1.0 {
        return 120e3;
    }
    let t = (mib.ln() / 1000f64.ln()).min(1.0);
    (120e3f64.ln() + t * (230e3f64.ln() - 120e3f64.ln())).exp()
}

/// The issue's targets, as ratios of rows of this run (p50).
fn check_targets(rows: &[Row]) {
    let p50 = |system: &str, size: u64| {
        rows.iter()
            .find(|r| r.system == system && r.size_bytes == size)
            .and_then(|r| r.p50_ns)
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let sizes = |system: &str| -> Vec<u64> {
        rows.iter()
            .filter(|r| r.system == system)
            .map(|r| r.size_bytes)
            .collect()
    };
    println!("\ntargets (ratios of p50 within this run):");
    let mut any = false;
    for size in sizes("perf_demo-copy") {
        if let (Some(copy), Some(classic)) =
            (p50("perf_demo-copy", size), p50("perf_demo-classic", size))
        {
            any = true;
            let ratio = copy / classic;
            println!(
                "  [{}] copy <= classic at {}: {ratio:.2}x",
                verdict(ratio <= 1.0),
                file::fmt_size(size)
            );
        }
    }
    if !any {
        println!("  [skip] copy <= classic: rows not measured");
    }
    let zc = sizes("perf_demo-zerocopy");
    if zc.is_empty() {
        println!("  [skip] zero-copy targets: no perf_demo-zerocopy rows (mode not built yet)");
        return;
    }
    let (small, large) = (zc.iter().min().copied(), zc.iter().max().copied());
    if let (Some(s), Some(l)) = (small, large) {
        if let (Some(a), Some(b)) = (p50("perf_demo-zerocopy", l), p50("perf_demo-zerocopy", s)) {
            println!(
                "  [{}] zerocopy {} <= 1.2 x zerocopy {}: {:.2}x",
                verdict(a / b <= 1.2),
                file::fmt_size(l),
                file::fmt_size(s),
                a / b
            );
        }
        if let (Some(c), Some(z)) = (p50("perf_demo-classic", l), p50("perf_demo-zerocopy", l)) {
            println!(
                "  [{}] classic / zerocopy at {} >= 10000: {:.0}x",
                verdict(c / z >= 10_000.0),
                file::fmt_size(l),
                c / z
            );
        }
    }
    let ring = p50("flowipc-ring", 64);
    for size in zc {
        let Some(z) = p50("perf_demo-zerocopy", size) else {
            continue;
        };
        if let Some(ring) = ring {
            println!(
                "  [{}] zerocopy {} <= 5 x flowipc-ring 64 B: {:.1}x",
                verdict(z / ring <= 5.0),
                file::fmt_size(size),
                z / ring
            );
        }
        let flow = flow_ipc_zero_copy_low(size);
        println!(
            "  [{}] zerocopy {} <= 0.1 x Flow-IPC zero copy ({}): {:.3}x",
            verdict(z / flow <= 0.1),
            file::fmt_size(size),
            fmt_ns(Some(flow)),
            z / flow
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_covers_the_rings() {
        // 100 KiB: 82 requests make two laps of the 4 MiB rings.
        assert_eq!(default_warmup(20, 100 << 10), 82);
        assert_eq!(default_warmup(500, 1 << 20), 20);
        assert_eq!(default_warmup(20, 1 << 20), 8);
        assert_eq!(default_warmup(5, 1 << 30), 1);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.50), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.999), 100.0);
        assert_eq!(quantile(&[7], 0.5), 7.0);
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 0.99), 5.0);
    }

    #[test]
    fn flow_ipc_reference_follows_the_published_points() {
        assert_eq!(flow_ipc_zero_copy_low(100 << 10), 120e3);
        assert_eq!(flow_ipc_zero_copy_low(1 << 20), 120e3);
        assert!((flow_ipc_zero_copy_low(1000 << 20) - 230e3).abs() < 1.0);
        let mid = flow_ipc_zero_copy_low(32 << 20);
        assert!(mid > 120e3 && mid < 230e3);
    }

    #[test]
    fn arguments_parse() {
        let args =
            Args::try_parse_from(["perf_demo", "--sizes", "100K,1M", "--modes", "copy"]).unwrap();
        assert_eq!(args.sizes, vec![100 << 10, 1 << 20]);
        assert_eq!(args.modes, vec![DemoMode::Copy]);
        assert!(Args::try_parse_from(["perf_demo"])
            .unwrap()
            .modes
            .is_empty());
        assert_eq!(args.mode, Mode::SpinThenBlock);
        assert_eq!(args.placement, Placement::CrossCore);
        assert!(Args::try_parse_from(["perf_demo", "--modes", "telepathy"]).is_err());
        assert!(Args::try_parse_from(["perf_demo", "--mode", "sometimes"]).is_err());
    }
}
