//! Zero-copy hello world between two programs: a session server, and a client it starts (this
//! same program, re-run with `--client`), exchange Cap'n Proto messages (schema
//! `safe/schema/ping.capnp`) over a structured channel whose messages are built in shared memory
//! and travel as handles. The server answers the client's ping with a pong carrying 64 MiB of
//! data; the client reads it where the server built it.
//!
//! ```text
//! cargo run --release -p flowipc --example zero_copy_hello
//! cargo run --release -p flowipc --example zero_copy_hello -- --copy   # the same in copy mode
//! ```
//!
//! Zero copy versus copy mode is the two lines marked `ZERO COPY` on each side (the session's
//! `zero_copy()`, given to `StructuredOptions::zero_copy`); no line that builds or reads a
//! message changes.

use std::process::Command;
use std::time::{Duration, Instant};

use flowipc::channel::TransportKind;
use flowipc::session::{App, ClientApp, ServerApp, Session, SessionOptions, SessionServer};
use flowipc::structured::{StructuredChannel, StructuredOptions};

#[path = "../schema/ping_capnp.rs"]
#[allow(missing_docs, unused, clippy::all, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod ping_capnp;

use ping_capnp::body;

/// The response's data.
const SIZE: usize = 64 << 20;

fn apps() -> std::io::Result<(ServerApp, ClientApp)> {
    // Both programs are this executable, run by this user.
    let me = App::current("zero-copy-hello-server")?;
    let client = App::new("zero-copy-hello-client", &me.exe, me.uid, me.gid);
    Ok((
        ServerApp::new(me, vec![client.clone()]),
        ClientApp::new(client),
    ))
}

fn options(dir: &std::path::Path) -> SessionOptions {
    SessionOptions::new()
        .rendezvous_dir(dir)
        .init_channel(TransportKind::Ring)
        // Each side's lend pool: room for the 64 MiB message, twice over (segments grow by
        // doubling).
        .arenas(256 << 20)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let zero_copy = !args.iter().any(|a| a == "--copy");
    let dir = std::env::temp_dir().join(format!("zero-copy-hello-{}", std::process::id()));
    let dir = match args.iter().position(|a| a == "--dir") {
        Some(i) => args[i + 1].clone().into(),
        None => dir,
    };
    if args.iter().any(|a| a == "--client") {
        return client(&dir, zero_copy);
    }
    let (server_app, _) = apps()?;
    let server = SessionServer::bind(&server_app, options(&dir))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--client", "--dir"])
        .arg(&dir)
        .args((!zero_copy).then_some("--copy"))
        .spawn()?;
    let mut session = server.accept_timeout(Some(Duration::from_secs(10)))?;
    let channel = session.take_init_channels().remove(0);
    let mut structured = StructuredOptions::new();
    if zero_copy {
        structured = structured.zero_copy(session.zero_copy()?); // ZERO COPY
    }
    let ch: StructuredChannel<body::Owned> = structured.open(channel)?;

    // Build the answer before the question comes, as a cache would.
    let mut pong = ch.create_msg();
    {
        let mut p = pong.body_root().init_pong();
        p.set_seq(1);
        let data = p.init_payload(SIZE as u32);
        for (i, b) in data.iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    // Two pings (the first may come while the answer is still being built); the same message
    // answers both: in zero copy, sending it again lends the same segments again.
    for _ in 0..2 {
        let ping = ch.recv()?;
        if let body::Ping(p) = ping.body_root()?.which()? {
            println!("server: got ping {}", p?.get_seq());
        }
        ch.send_response(&pong, &ping)?;
    }
    let status = child.wait()?;
    println!("server: client exited with {status}");
    drop(ch);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn client(dir: &std::path::Path, zero_copy: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (server_app, client_app) = apps()?;
    let mut session = Session::connect(&client_app, &server_app, &options(dir))?;
    let channel = session.take_init_channels().remove(0);
    let mut structured = StructuredOptions::new();
    if zero_copy {
        structured = structured.zero_copy(session.zero_copy()?); // ZERO COPY
    }
    let ch: StructuredChannel<body::Owned> = structured.open(channel)?;

    let mut ping = ch.create_msg();
    ping.body_root().init_ping().set_seq(1);
    // The first answer waits for the server to build it; time the second.
    drop(ch.sync_request(&ping, Duration::from_secs(10))?);
    ping.body_root().init_ping().set_seq(2);
    let start = Instant::now();
    let pong = ch.sync_request(&ping, Duration::from_secs(10))?;
    let body::Pong(p) = pong.body_root()?.which()? else {
        panic!("expected a pong");
    };
    let data = p?.get_payload()?;
    let (first, last) = (data[0], data[data.len() - 1]);
    let rtt = start.elapsed();
    println!(
        "client: hello answered with {} MiB in {rtt:?} ({}; first byte {first}, last byte {last})",
        data.len() >> 20,
        if zero_copy {
            "zero copy: read where the server built it"
        } else {
            "copy mode"
        }
    );
    assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));
    Ok(())
}
