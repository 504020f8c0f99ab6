//! Two processes, one structured channel: the parent re-runs this program as its child, hands it
//! one end of a channel, and sends Cap'n Proto requests (schema `safe/schema/ping.capnp`) that
//! the child answers; it prints the round-trip times, then asks for a multi-response and closes.
//!
//! ```text
//! cargo run --release -p flowipc --example structured_ping -- ring 1024 10000
//! cargo run --release -p flowipc --example structured_ping -- socket 65536 1000
//! ```
//!
//! Arguments: transport (`socket`, `mq` or `ring`), response payload size in bytes, requests.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowipc::channel::Channel;
use flowipc::structured::{StructuredChannel, StructuredError};

#[path = "../schema/ping_capnp.rs"]
#[allow(missing_docs, unused, clippy::all, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod ping_capnp;

use ping_capnp::body;

type Chan = StructuredChannel<body::Owned>;

fn main() -> Result<(), flowipc::Error> {
    if std::env::var_os("STRUCTURED_PING_CHILD").is_some() {
        return child();
    }
    let mut args = std::env::args().skip(1);
    let transport = args.next().unwrap_or_else(|| "ring".into());
    let size: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let (ours, theirs) = match transport.as_str() {
        "socket" => Channel::socket_pair()?,
        "mq" => Channel::mq_pair()?,
        "ring" => Channel::ring_pair()?,
        other => panic!("unknown transport {other}: use socket, mq or ring"),
    };
    // The child's stdin is one end of a bootstrap socket; the channel travels over it.
    let (mut boot, boot_theirs) = Channel::socket_pair()?;
    let boot_fd = boot_theirs.into_fds()?.into_parts().1.remove(0);
    let mut child = Command::new(std::env::current_exe().expect("own executable"))
        .env("STRUCTURED_PING_CHILD", "1")
        .stdin(Stdio::from(boot_fd))
        .spawn()
        .expect("spawn the child");
    let outcome = boot
        .send_channel(theirs)
        .map_err(flowipc::Error::from)
        .and_then(|()| Chan::new(ours))
        .and_then(|ch| ping(&ch, size, rounds));
    if outcome.is_err() {
        let _ = child.kill();
    }
    child.wait().expect("child exit");
    let mut rtts = outcome?;
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "structured {transport}, {size} B responses: round trip p50 {:?}  p99 {:?}",
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

fn request(ch: &Chan, seq: u64, size: u32, responses: u32) -> flowipc::MsgOut<body::Owned> {
    let mut msg = ch.create_msg();
    let mut p = msg.body_root().init_ping();
    p.set_seq(seq);
    p.set_payload_size(size);
    p.set_responses(responses);
    msg
}

fn ping(ch: &Chan, size: u32, rounds: usize) -> Result<Vec<Duration>, flowipc::Error> {
    let mut rtts = Vec::with_capacity(rounds);
    for seq in 0..(rounds + rounds / 10) as u64 {
        let req = request(ch, seq, size, 1);
        let start = Instant::now();
        let resp = ch.sync_request(&req, Duration::from_secs(10))?;
        let body::Pong(pong) = resp.body_root()?.which()? else {
            panic!("the child answered with something else than a pong");
        };
        let pong = pong?;
        assert_eq!(pong.get_seq(), seq);
        assert_eq!(pong.get_payload()?.len(), size as usize);
        if seq >= (rounds / 10) as u64 {
            rtts.push(start.elapsed());
        }
    }
    // One request, three responses.
    let mut responses = ch.request_multi(&request(ch, 1000, 8, 3))?;
    for _ in 0..3 {
        let resp = responses.recv_timeout(Duration::from_secs(10))?;
        print!("{} ", resp.id());
    }
    println!("<- ids of three responses to one request");
    drop(responses);
    ch.close()?;
    Ok(rtts)
}

fn child() -> Result<(), flowipc::Error> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let mut boot = Channel::from_socket(stdin);
    let ch = Chan::new(boot.recv_channel()?)?;
    let mut payload = Vec::new();
    loop {
        let req = match ch.recv_timeout(Duration::from_secs(30)) {
            Ok(req) => req,
            Err(StructuredError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let body::Ping(ping) = req.body_root()?.which()? else {
            continue;
        };
        let ping = ping?;
        payload.resize(ping.get_payload_size() as usize, 0x5a);
        for i in 0..u64::from(ping.get_responses().max(1)) {
            let mut resp = ch.create_msg();
            let mut pong = resp.body_root().init_pong();
            pong.set_seq(ping.get_seq() + i);
            pong.set_payload(&payload);
            ch.send_response(&resp, &req)?;
        }
    }
}
