//! `flowipc-bench`: cross-process latency and throughput of flowipc against raw baselines.
//!
//! ```text
//! cargo run --release -p flowipc-benches --bin flowipc-bench -- [--quick] [--json FILE] [--only SYSTEM,...]
//! ```
//!
//! Every configuration runs in a fresh pair of processes (see [`harness`]). Absolute figures drift on
//! shared machines, so the targets at the end are ratios between rows of the same run.

mod alloc;
mod channel;
mod harness;
mod native;
#[cfg(feature = "peers")]
mod peers;
mod plot;
mod raw;
mod report;
mod ring;
mod session;
mod structured;
mod zerocopy;
/// The structured rows' schema, `safe/schema/ping.capnp` (generated Rust, checked in there).
#[path = "../../safe/schema/ping_capnp.rs"]
#[allow(missing_docs, unused, clippy::all, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod ping_capnp;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use harness::{Config, Kind, Mode, Placement, System};
use report::Row;

/// Cross-process latency and throughput of flowipc against raw transports.
#[derive(Parser, Debug)]
#[command(name = "flowipc-bench", version)]
struct Args {
    /// A short run (about a minute): fewer sizes and a shorter budget per configuration.
    #[arg(long)]
    quick: bool,
    /// Also write the rows as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Only these systems (comma-separated), e.g. `flowipc-ring,raw-futex`.
    #[arg(long, value_delimiter = ',', value_name = "SYSTEM,...")]
    only: Vec<String>,
    /// Only these waiting modes (comma-separated): busy-poll, spin-then-block, block.
    #[arg(long, value_delimiter = ',', value_name = "MODE,...")]
    modes: Vec<String>,
    /// Only these placements (comma-separated): cross-core, same-core.
    #[arg(long, value_delimiter = ',', value_name = "PLACEMENT,...")]
    placements: Vec<String>,
    /// Only these kinds (comma-separated): rtt, stream.
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    kinds: Vec<String>,
    /// Payload sizes in bytes (comma-separated); overrides the defaults.
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...")]
    sizes: Vec<usize>,
    /// Run every configuration this many times (in rounds) and report the median run of each.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// Measured time per configuration, in milliseconds.
    #[arg(long, value_name = "MS")]
    budget_ms: Option<u64>,
    /// Directory for the plots (rtt.svg/png, stream.svg/png); created if missing.
    #[arg(long, value_name = "DIR", default_value = "target/flowipc-bench")]
    plot_dir: PathBuf,
}

fn systems() -> Vec<&'static dyn System> {
    #[allow(unused_mut)]
    let mut systems: Vec<&'static dyn System> = vec![
        &ring::Ring::PLAIN,
        &ring::Ring::BATCHED,
        &ring::Ring::ZERO_COPY,
        &channel::ChannelSystem::RING,
        &channel::ChannelSystem::RING_ZERO_COPY,
        &channel::ChannelSystem::SOCKET,
        &channel::ChannelSystem::MQ,
        &structured::StructuredSystem::RING,
        &structured::StructuredSystem::SOCKET,
        &zerocopy::ZeroCopySystem,
        &raw::Slot::SPIN,
        &raw::Slot::FUTEX,
        &raw::Slot::EVENTFD,
        &raw::Pipe,
        &raw::Uds,
        &raw::Mq,
    ];
    #[cfg(feature = "peers")]
    systems.extend(peers::systems());
    systems
}

fn configs(args: &Args, systems: &[&'static dyn System]) -> Vec<(&'static dyn System, Config)> {
    let sizes: Vec<usize> = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        vec![64, 65536]
    } else {
        vec![64, 1024, 65536, 1 << 20]
    };
    let budget_ms = args
        .budget_ms
        .unwrap_or(if args.quick { 300 } else { 2000 });
    // Counted before this process pins itself: afterwards its mask holds one CPU.
    let cross_core = flowipc_sys::process::available_cpus().unwrap_or(1) >= 2;
    if !cross_core {
        eprintln!("flowipc-bench: only one CPU available; cross-core configurations are skipped");
    }
    let mut out = Vec::new();
    for &system in systems {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == system.name()) {
            continue;
        }
        for kind in [Kind::Rtt, Kind::Stream] {
            for mode in [Mode::BusyPoll, Mode::SpinThenBlock, Mode::Block] {
                for placement in [Placement::CrossCore, Placement::SameCore] {
                    if placement == Placement::CrossCore && !cross_core {
                        continue;
                    }
                    for &size in &sizes {
                        let wanted = |filter: &[String], name: &str| {
                            filter.is_empty() || filter.iter().any(|f| f == name)
                        };
                        if system.supports(mode, placement, kind, size)
                            && wanted(&args.modes, mode.as_str())
                            && wanted(&args.placements, placement.as_str())
                            && wanted(&args.kinds, kind.as_str())
                        {
                            let system_name = system.name().to_string();
                            out.push((
                                system,
                                Config {
                                    system: system_name,
                                    mode,
                                    placement,
                                    kind,
                                    size,
                                    budget_ms,
                                },
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The run with the median figure (p50 for latency, msgs/s for throughput), so that one row keeps
/// the percentiles of one real run rather than a blend.
fn median_run(mut runs: Vec<Row>) -> Option<Row> {
    runs.sort_by(|a, b| {
        let key = |r: &Row| r.p50_ns.or(r.msgs_per_s).unwrap_or(0.0);
        key(a).total_cmp(&key(b))
    });
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid)
}

fn fmt_ns(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ns) if ns < 1_000.0 => format!("{ns:.1} ns"),
        Some(ns) if ns < 10_000.0 => format!("{:.2} us", ns / 1e3),
        Some(ns) if ns < 10_000_000.0 => format!("{:.1} us", ns / 1e3),
        Some(ns) => format!("{:.1} ms", ns / 1e6),
    }
}

fn fmt_size(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<24} {:<16} {:<11} {:<6} {:>8} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "system", "mode", "placement", "kind", "size", "p50", "p99", "p99.9", "msgs/s", "GB/s"
    );
    for r in rows {
        println!(
            "{:<24} {:<16} {:<11} {:<6} {:>8} {:>10} {:>10} {:>10} {:>12} {:>8}",
            r.system,
            r.mode,
            r.placement,
            r.kind,
            fmt_size(r.size_bytes),
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns),
            r.msgs_per_s
                .map_or("-".into(), |m| format!("{:.2}M", m / 1e6)),
            r.gbytes_per_s.map_or("-".into(), |g| format!("{g:.2}")),
        );
    }
}

/// A target of the issues, checked as a ratio of two rows of this run.
struct Target {
    what: &'static str,
    /// (system, mode, placement, kind, size) of the measured row and of the reference row.
    row: (&'static str, &'static str, &'static str, &'static str, u64),
    reference: Option<(&'static str, &'static str, &'static str, &'static str, u64)>,
    /// For latency: ratio must be <= bound. For throughput: ratio (or absolute msgs/s) must be >= bound.
    bound: f64,
    higher_is_better: bool,
}

fn find<'a>(rows: &'a [Row], k: (&str, &str, &str, &str, u64)) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.system == k.0
            && r.mode == k.1
            && r.placement == k.2
            && r.kind == k.3
            && r.size_bytes == k.4
    })
}

fn figure(r: &Row, higher_is_better: bool) -> Option<f64> {
    if higher_is_better {
        r.msgs_per_s
    } else {
        r.p50_ns
    }
}

fn check_targets(rows: &[Row]) {
    let targets = [
        Target {
            what: "flowipc-ring spin-then-block cross-core p50 <= 1.3 x raw-futex",
            row: ("flowipc-ring", "spin-then-block", "cross-core", "rtt", 64),
            reference: Some(("raw-futex", "spin-then-block", "cross-core", "rtt", 64)),
            bound: 1.3,
            higher_is_better: false,
        },
        Target {
            what: "flowipc-ring block same-core p50 <= 1.2 x raw-futex",
            row: ("flowipc-ring", "block", "same-core", "rtt", 64),
            reference: Some(("raw-futex", "block", "same-core", "rtt", 64)),
            bound: 1.2,
            higher_is_better: false,
        },
        Target {
            what: "flowipc-ring stream 64 B cross-core >= 10 M msgs/s",
            row: (
                "flowipc-ring",
                "spin-then-block",
                "cross-core",
                "stream",
                64,
            ),
            reference: None,
            bound: 10e6,
            higher_is_better: true,
        },
        Target {
            what: "flowipc-ring-batched stream 64 B cross-core >= 10 M msgs/s",
            row: (
                "flowipc-ring-batched",
                "spin-then-block",
                "cross-core",
                "stream",
                64,
            ),
            reference: None,
            bound: 10e6,
            higher_is_better: true,
        },
        Target {
            what: "flowipc-ring stream 64 KiB >= 2 x raw-uds",
            row: (
                "flowipc-ring",
                "spin-then-block",
                "cross-core",
                "stream",
                65536,
            ),
            reference: Some(("raw-uds", "block", "cross-core", "stream", 65536)),
            bound: 2.0,
            higher_is_better: true,
        },
        Target {
            what: "flowipc-ring spin-then-block cross-core p50 <= 0.6 x iceoryx2 busy-poll",
            row: ("flowipc-ring", "spin-then-block", "cross-core", "rtt", 64),
            reference: Some(("iceoryx2", "busy-poll", "cross-core", "rtt", 64)),
            bound: 0.6,
            higher_is_better: false,
        },
        Target {
            what: "flowipc-channel-ring block same-core p50 <= 0.5 x iceoryx2 block (event)",
            row: ("flowipc-channel-ring", "block", "same-core", "rtt", 64),
            reference: Some(("iceoryx2", "block", "same-core", "rtt", 64)),
            bound: 0.5,
            higher_is_better: false,
        },
    ];
    let alloc_targets = [
        (
            "flowipc-arena 64 B alloc+free <= 2 x jemalloc-heap",
            "flowipc-arena",
            2.0,
        ),
        (
            "flowipc-arena-jemalloc 64 B alloc+free <= 1.3 x jemalloc-heap",
            "flowipc-arena-jemalloc",
            1.3,
        ),
    ];
    println!("\ntargets (ratios within this run):");
    for (what, system, bound) in alloc_targets {
        for mode in ["1-thread", "2-threads"] {
            let key = |s: &'static str| (s, mode, "n/a", "alloc", 64u64);
            match (
                find(rows, key(system)).and_then(|r| r.p50_ns),
                find(rows, key("jemalloc-heap")).and_then(|r| r.p50_ns),
            ) {
                (Some(a), Some(b)) if b > 0.0 => {
                    let ratio = a / b;
                    let verdict = if ratio <= bound { "met" } else { "MISSED" };
                    println!("  [{verdict}] {what} ({mode}): {ratio:.2}x");
                }
                _ => println!("  [skip] {what} ({mode}): row not measured"),
            }
        }
    }
    for t in &targets {
        let Some(row) = find(rows, t.row).and_then(|r| figure(r, t.higher_is_better)) else {
            println!("  [skip] {}: row not measured", t.what);
            continue;
        };
        let value = match t.reference {
            Some(k) => match find(rows, k).and_then(|r| figure(r, t.higher_is_better)) {
                Some(reference) if reference > 0.0 => row / reference,
                _ => {
                    println!("  [skip] {}: reference row not measured", t.what);
                    continue;
                }
            },
            None => row,
        };
        let ok = if t.higher_is_better {
            value >= t.bound
        } else {
            value <= t.bound
        };
        let shown = if t.reference.is_some() {
            format!("{value:.2}x")
        } else {
            format!("{:.2}M", value / 1e6)
        };
        println!(
            "  [{}] {}: {shown}",
            if ok { "met" } else { "MISSED" },
            t.what
        );
    }
    check_channel_targets(rows);
    #[cfg(feature = "peers")]
    peers::check_ipc_channel(rows);
    structured::check_targets(rows);
    zerocopy::check_targets(rows);
    session::check_targets(rows);
    native::check_targets(rows);
}

/// Prints one latency ratio target: `row`'s p50 over the p50 of `reference` (same kind and size,
/// and the given mode and placement) must be at most `bound`.
fn latency_ratio(
    rows: &[Row],
    row: &Row,
    reference: &str,
    mode: &str,
    placement: &str,
    bound: f64,
) {
    let what = format!(
        "{} {} {} {} p50 <= {bound} x {reference} {mode}",
        row.system,
        row.mode,
        row.placement,
        fmt_size(row.size_bytes)
    );
    let other = rows.iter().find(|r| {
        r.system == reference
            && r.mode == mode
            && r.placement == placement
            && r.kind == row.kind
            && r.size_bytes == row.size_bytes
    });
    match (row.p50_ns, other.and_then(|r| r.p50_ns)) {
        (Some(a), Some(b)) if b > 0.0 => {
            let ratio = a / b;
            println!(
                "  [{}] {what}: {ratio:.2}x",
                if ratio <= bound { "met" } else { "MISSED" }
            );
        }
        _ => println!("  [skip] {what}: reference row not measured"),
    }
}

/// The channel targets, at every size measured: the ring channel adds little to the bare ring in
/// each mode and placement, and the socket and ring channels stand against a raw Unix socket.
fn check_channel_targets(rows: &[Row]) {
    for row in rows.iter().filter(|r| r.kind == "rtt") {
        match (
            row.system.as_str(),
            row.mode.as_str(),
            row.placement.as_str(),
        ) {
            ("flowipc-channel-ring", mode, placement) => {
                latency_ratio(rows, row, "flowipc-ring", mode, placement, 1.3);
                if mode == "block" && placement == "same-core" {
                    latency_ratio(rows, row, "raw-uds", "block", "same-core", 0.7);
                }
            }
            // The same targets for the channel used in place, against the bare ring used in
            // place.
            ("flowipc-channel-ring-zerocopy", mode, placement) => {
                latency_ratio(rows, row, "flowipc-ring-zerocopy", mode, placement, 1.3);
                if mode == "block" && placement == "same-core" {
                    latency_ratio(rows, row, "raw-uds", "block", "same-core", 0.7);
                }
            }
            ("flowipc-channel-socket", "block", "same-core") => {
                latency_ratio(rows, row, "raw-uds", "block", "same-core", 1.2);
            }
            _ => {}
        }
    }
}

fn main() {
    if let Some(code) = session::child_entry() {
        std::process::exit(code);
    }
    if let Some(code) = native::child_entry() {
        std::process::exit(code);
    }
    let systems = systems();
    if std::env::args().nth(1).as_deref() == Some("__child") {
        if let Err(e) = harness::child_main(&systems) {
            eprintln!("flowipc-bench server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = Args::parse();
    let mut known: Vec<&str> = systems.iter().map(|s| s.name()).collect();
    known.extend(alloc::SYSTEMS);
    known.extend(session::SYSTEMS);
    known.extend(native::SYSTEMS);
    for o in &args.only {
        if !known.contains(&o.as_str()) {
            eprintln!(
                "flowipc-bench: unknown system {o:?}; known: {}",
                known.join(", ")
            );
            std::process::exit(2);
        }
    }
    let configs = configs(&args, &systems);
    let started = Instant::now();
    let repeat = args.repeat.max(1);
    // One slot per configuration; rounds run every configuration once, so drift on a shared machine
    // affects all systems alike rather than whichever ran last.
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); configs.len()];
    let mut failures = 0;
    for round in 0..repeat {
        for (i, (system, cfg)) in configs.iter().enumerate() {
            eprint!(
                "\r[round {}/{repeat}] [{:>3}/{}] {:<22} {:<16} {:<11} {:<6} {:>8}   ",
                round + 1,
                i + 1,
                configs.len(),
                cfg.system,
                cfg.mode.as_str(),
                cfg.placement.as_str(),
                cfg.kind.as_str(),
                fmt_size(cfg.size as u64)
            );
            let _ = std::io::stderr().flush();
            match harness::run(*system, cfg) {
                Ok(row) => runs[i].push(row),
                Err(e) => {
                    failures += 1;
                    eprintln!("\nflowipc-bench: {} {:?} failed: {e}", cfg.system, cfg);
                }
            }
        }
    }
    let mut rows: Vec<Row> = runs.into_iter().filter_map(median_run).collect();
    let want_alloc = args.only.is_empty()
        || args
            .only
            .iter()
            .any(|o| alloc::SYSTEMS.contains(&o.as_str()));
    if want_alloc {
        eprint!(
            "\rallocators: alloc+free pairs, 1 and 2 threads{}",
            " ".repeat(40)
        );
        rows.extend(alloc::run(args.quick, &args.only));
    }
    let want_session = args.only.is_empty()
        || args
            .only
            .iter()
            .any(|o| session::SYSTEMS.contains(&o.as_str()));
    if want_session {
        eprint!(
            "\rsessions: connect, open_channel, peer_death{}",
            " ".repeat(40)
        );
        let budget_ms = args
            .budget_ms
            .unwrap_or(if args.quick { 300 } else { 2000 });
        rows.extend(session::run(args.quick, budget_ms, &args.only));
    }
    if args.only.is_empty()
        || args
            .only
            .iter()
            .any(|o| native::SYSTEMS.contains(&o.as_str()))
    {
        eprint!("\rnative: lent ShmVec vs bincode, builds{}", " ".repeat(40));
        let budget_ms = args
            .budget_ms
            .unwrap_or(if args.quick { 300 } else { 2000 });
        rows.extend(native::run(args.quick, budget_ms, &args.only));
    }
    eprintln!(
        "\rmeasured {} configurations in {:.0} s{}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        " ".repeat(40)
    );
    print_table(&rows);
    check_targets(&rows);
    match plot::write_plots(&rows, &args.plot_dir) {
        Ok(report) => {
            if !report.written.is_empty() {
                println!("\nplots:");
                for path in &report.written {
                    println!("  {}", path.display());
                }
            }
            for note in &report.notes {
                eprintln!("flowipc-bench: {note}");
            }
        }
        Err(e) => eprintln!(
            "flowipc-bench: cannot write plots to {}: {e}",
            args.plot_dir.display()
        ),
    }
    if let Some(path) = &args.json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => {
                if let Err(e) = std::fs::write(path, s) {
                    eprintln!("flowipc-bench: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
                println!("\nrows written to {}", path.display());
            }
            Err(e) => {
                eprintln!("flowipc-bench: cannot serialize rows: {e}");
                std::process::exit(1);
            }
        }
    }
    if failures > 0 {
        eprintln!("flowipc-bench: {failures} configuration(s) failed");
        std::process::exit(1);
    }
}
