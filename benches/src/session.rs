//! Session rows: `flowipc-session` kinds `connect` (rendezvous connect with one ring init channel,
//! authentication included), `open_channel` (a ring channel opened on a live session, answer
//! included) and `peer_death` (SIGKILL of the peer to `PeerGone` in a receiver blocked on a ring
//! init channel), and the baseline `flowipc-channel-handoff` kind `open_channel` (a bare
//! `ring_pair()` plus `send_channel` over an existing channel, until the peer acknowledges it with
//! one byte, so that it costs the same round trip as a session's answer).
//!
//! The peer is this binary re-run as `flowipc-bench __session <role> <dir>`. Rows carry
//! mode `spin-then-block` (the default wait policy), placement `n/a`, size 0, and p50 / p99 /
//! p99.9 (max in `p999_ns` for `peer_death`, whose sample is small).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::channel::{Channel, TransportKind};
use flowipc::session::{App, ClientApp, ServerApp, Session, SessionOptions, SessionServer};

use crate::report::Row;

/// The systems this module measures (for `--only`).
pub const SYSTEMS: &[&str] = &["flowipc-session", "flowipc-channel-handoff"];

const ROLE_ARG: &str = "__session";

fn apps() -> (ServerApp, ClientApp) {
    let me = App::current("bench-session-client").expect("current exe");
    let server = App::new("bench-session", &me.exe, me.uid, me.gid);
    (ServerApp::new(server, vec![me.clone()]), ClientApp::new(me))
}

fn options(dir: &Path) -> SessionOptions {
    SessionOptions::new()
        .rendezvous_dir(dir)
        .ring_capacity(1 << 16)
        .handshake_timeout(Duration::from_secs(10))
}

/// In a re-run peer: runs its role and returns the exit code; `None` if this is not a peer.
pub fn child_entry() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(ROLE_ARG) {
        return None;
    }
    let role = args.next().unwrap_or_default();
    let dir = PathBuf::from(args.next().unwrap_or_default());
    let result = match role.as_str() {
        "server" => serve(&dir),
        "client" => hang_as_client(&dir),
        "handoff" => handoff_peer(),
        _ => Err(format!("unknown role {role}")),
    };
    Some(match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flowipc-bench session peer: {e}");
            1
        }
    })
}

/// Accepts sessions one after another; grants every channel request; returns when a session ends
/// with `exit` metadata or the parent goes away.
fn serve(dir: &Path) -> Result<(), String> {
    let (server, _) = apps();
    let srv = SessionServer::bind(&server, options(dir)).map_err(|e| e.to_string())?;
    println!("ready");
    loop {
        let mut s = srv
            .accept_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        drop(s.take_init_channels());
        while let Ok(req) = s.accept_channel(Some(Duration::from_secs(30))) {
            let _ = s.grant(req);
        }
        if s.peer_metadata() == b"exit" {
            return Ok(());
        }
    }
}

/// Connects with one ring init channel and waits to be killed.
fn hang_as_client(dir: &Path) -> Result<(), String> {
    let (server, client) = apps();
    let opts = options(dir).init_channel(TransportKind::Ring);
    let _s = Session::connect(&client, &server, &opts).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

/// Receives channels on stdin's socket and acknowledges each with one byte.
fn handoff_peer() -> Result<(), String> {
    let stdin = std::os::fd::AsFd::as_fd(&std::io::stdin())
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut ctl = Channel::from_socket(stdin);
    loop {
        match ctl.recv_channel() {
            Ok(c) => {
                drop(c);
                ctl.send(b"k").map_err(|e| e.to_string())?;
            }
            Err(_) => return Ok(()),
        }
    }
}

fn spawn(role: &str, dir: &Path, stdin: Stdio) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([ROLE_ARG, role])
        .arg(dir)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the session peer")
}

fn wait_ready(child: &mut Child) {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    assert_eq!(line.trim(), "ready", "the session server did not start");
}

fn row(system: &str, kind: &str, mut ns: Vec<u64>, max_as_p999: bool) -> Row {
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
        mode: "spin-then-block".into(),
        placement: "n/a".into(),
        kind: kind.into(),
        size_bytes: 0,
        p50_ns: pct(0.5),
        p99_ns: pct(0.99),
        p999_ns: if max_as_p999 {
            ns.last().map(|&v| v as f64)
        } else {
            pct(0.999)
        },
        msgs_per_s: None,
        gbytes_per_s: None,
    }
}

/// Times `f` until `budget` passes (at least `min`, at most `max` samples).
fn sample(budget: Duration, min: usize, max: usize, mut f: impl FnMut() -> u64) -> Vec<u64> {
    let start = Instant::now();
    let mut v = Vec::new();
    while v.len() < max && (v.len() < min || start.elapsed() < budget) {
        v.push(f());
    }
    v
}

/// Measures the rows `only` asks for (all when empty).
pub fn run(quick: bool, budget_ms: u64, only: &[String]) -> Vec<Row> {
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let budget = Duration::from_millis(budget_ms);
    let dir = std::env::temp_dir().join(format!("flowipc-bench-session-{}", std::process::id()));
    let (server, client) = apps();
    let mut rows = Vec::new();
    if want("flowipc-session") {
        let mut srv = spawn("server", &dir, Stdio::null());
        wait_ready(&mut srv);
        // connect (+ authentication, one ring init channel), then an orderly close.
        let opts = options(&dir).init_channel(TransportKind::Ring);
        let ns = sample(budget, 10, 100_000, || {
            let t0 = Instant::now();
            let mut s = Session::connect(&client, &server, &opts).expect("connect");
            let init = s.take_init_channels();
            let t = t0.elapsed().as_nanos() as u64;
            drop(init);
            s.close().expect("close");
            t
        });
        rows.push(row("flowipc-session", "connect", ns, false));
        // open_channel on one live session.
        let mut s = Session::connect(&client, &server, &options(&dir).metadata(b"exit".to_vec()))
            .expect("connect");
        let ns = sample(budget, 10, 1_000_000, || {
            let t0 = Instant::now();
            let c = s.open_channel(TransportKind::Ring, b"").expect("open");
            let t = t0.elapsed().as_nanos() as u64;
            drop(c);
            t
        });
        rows.push(row("flowipc-session", "open_channel", ns, false));
        drop(s);
        let _ = srv.wait();
        // peer_death: a receiver blocked on a ring init channel; SIGKILL the client.
        let local = SessionServer::bind(&server, options(&dir)).expect("bind");
        let kills = if quick { 10 } else { 200 };
        let ns = sample(Duration::ZERO, kills, kills, || {
            let mut victim = spawn("client", &dir, Stdio::null());
            let mut s = local
                .accept_timeout(Some(Duration::from_secs(10)))
                .expect("accept the victim");
            let mut ring = s.take_init_channels().pop().expect("init ring");
            let killer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                let t0 = Instant::now();
                victim.kill().expect("kill");
                (t0, victim)
            });
            let mut buf = Vec::new();
            let r = ring.recv(&mut buf);
            let t1 = Instant::now();
            let (t0, mut victim) = killer.join().expect("killer thread");
            let _ = victim.wait();
            assert!(r.is_err(), "the ring receiver saw PeerGone");
            t1.saturating_duration_since(t0).as_nanos() as u64
        });
        rows.push(row("flowipc-session", "peer_death", ns, true));
    }
    if want("flowipc-channel-handoff") {
        let (ctl, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut peer = spawn(
            "handoff",
            &dir,
            Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        );
        let mut ctl = Channel::from_socket(ctl.into());
        let mut ack = Vec::new();
        let ns = sample(budget, 10, 1_000_000, || {
            let t0 = Instant::now();
            let (ours, theirs) = Channel::ring_pair().expect("ring_pair");
            ctl.send_channel(theirs).expect("send_channel");
            ctl.recv(&mut ack).expect("ack");
            let t = t0.elapsed().as_nanos() as u64;
            drop(ours);
            t
        });
        rows.push(row("flowipc-channel-handoff", "open_channel", ns, false));
        drop(ctl);
        let _ = peer.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// The session targets, as ratios within this run: `open_channel` p50 at most 3x the
/// bare hand-off's, and kill-to-`PeerGone` p99 at most 5 ms.
pub fn check_targets(rows: &[Row]) {
    let p = |system: &str, kind: &str, f: fn(&Row) -> Option<f64>| {
        rows.iter()
            .find(|r| r.system == system && r.kind == kind)
            .and_then(f)
    };
    let what = "flowipc-session open_channel p50 <= 3 x flowipc-channel-handoff";
    match (
        p("flowipc-session", "open_channel", |r| r.p50_ns),
        p("flowipc-channel-handoff", "open_channel", |r| r.p50_ns),
    ) {
        (Some(a), Some(b)) if b > 0.0 => {
            let ratio = a / b;
            let verdict = if ratio <= 3.0 { "met" } else { "MISSED" };
            println!("  [{verdict}] {what}: {ratio:.2}x");
        }
        _ => println!("  [skip] {what}: rows not measured"),
    }
    let what = "flowipc-session peer_death p99 <= 5 ms";
    match p("flowipc-session", "peer_death", |r| r.p99_ns) {
        Some(ns) => {
            let verdict = if ns <= 5e6 { "met" } else { "MISSED" };
            println!("  [{verdict}] {what}: {:.2} ms", ns / 1e6);
        }
        None => println!("  [skip] {what}: row not measured"),
    }
}
