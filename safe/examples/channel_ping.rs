//! Two processes, one channel: the parent re-runs this program as its child, hands it one end of
//! a channel over a bootstrap socket (the child's stdin), and measures round trips.
//!
//! ```text
//! cargo run --release -p flowipc --example channel_ping -- ring 64 100000
//! cargo run --release -p flowipc --example channel_ping -- socket 65536 10000
//! ```
//!
//! Arguments: transport (`socket`, `mq` or `ring`), message size in bytes, round trips, and for
//! the ring the wait policy (`spin` = spin then block, the default; `block`; `busy`).

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::channel::{Channel, ChannelOptions, RecvError, WaitPolicy};

fn main() -> Result<(), flowipc::Error> {
    if std::env::var_os("CHANNEL_PING_CHILD").is_some() {
        return child();
    }
    let mut args = std::env::args().skip(1);
    let transport = args.next().unwrap_or_else(|| "ring".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let policy = match args.next().as_deref() {
        None | Some("spin") => WaitPolicy::default(),
        Some("block") => WaitPolicy::Block,
        Some("busy") => WaitPolicy::BusyPoll,
        Some(other) => panic!("unknown wait policy {other}: use spin, block or busy"),
    };
    let options = ChannelOptions::new().wait_policy(policy);

    let (mut ours, theirs) = match transport.as_str() {
        "socket" => options.socket_pair()?,
        "mq" => options.mq_pair()?,
        "ring" => options.ring_pair()?,
        other => panic!("unknown transport {other}: use socket, mq or ring"),
    };
    // The child's stdin is one end of a bootstrap socket; the channel travels over it.
    let (boot_ours, boot_theirs) = Channel::socket_pair()?;
    let boot_fd = boot_theirs.into_fds()?.into_parts().1.remove(0);
    let mut child = Command::new(std::env::current_exe().expect("own executable"))
        .env("CHANNEL_PING_CHILD", format!("{policy:?}"))
        .stdin(Stdio::from(boot_fd))
        .spawn()
        .expect("spawn the child");
    let outcome = ping(boot_ours, theirs, &mut ours, size, rounds);
    if outcome.is_err() {
        let _ = child.kill();
    }
    child.wait().expect("child exit");
    let mut rtts = outcome?;
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "{transport} {size} B: round trip p50 {:?}  p99 {:?}  p99.9 {:?}",
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    Ok(())
}

/// Hands `theirs` to the child over `boot`, then measures `rounds` round trips (after a
/// warm-up of a tenth as many).
fn ping(
    mut boot: Channel,
    theirs: Channel,
    ours: &mut Channel,
    size: usize,
    rounds: usize,
) -> Result<Vec<Duration>, flowipc::Error> {
    boot.send_channel(theirs)?;
    let msg = vec![0x5a; size];
    let mut buf = Vec::new();
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let start = Instant::now();
        ours.send(&msg)?;
        ours.recv(&mut buf)?;
        if i >= rounds / 10 {
            rtts.push(start.elapsed());
        }
    }
    ours.close()?;
    Ok(rtts)
}

fn child() -> Result<(), flowipc::Error> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let mut boot = Channel::from_socket(stdin);
    let policy = match std::env::var("CHANNEL_PING_CHILD").as_deref() {
        Ok("Block") => WaitPolicy::Block,
        Ok("BusyPoll") => WaitPolicy::BusyPoll,
        _ => WaitPolicy::default(),
    };
    let mut ch = boot.recv_channel_with(&ChannelOptions::new().wait_policy(policy))?;
    let mut buf = Vec::new();
    loop {
        match ch.recv_timeout(&mut buf, Duration::from_secs(30)) {
            Ok(_) => ch.send(&buf)?,
            Err(RecvError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
