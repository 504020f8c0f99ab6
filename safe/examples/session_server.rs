//! A session server: run it in one terminal, `session_client` in another.
//!
//! ```text
//! cargo run --release -p flowipc --example session_server
//! cargo run --release -p flowipc --example session_client
//! ```
//!
//! The server registers the `session_client` example built next to it (same directory, same
//! user) as its only client, so a copy of the client binary elsewhere, or any other program, is
//! refused. For each client it answers every message on the init ring channel, hands over a file
//! descriptor (a socket with a greeting waiting in it) on the socket channel, accepts the channel
//! the client opens, and serves until the client closes the session. `--sessions N` exits after N
//! clients (default: serve forever).

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use flowipc::channel::{Channel, RecvError};
use flowipc::session::{App, ServerApp, SessionError, SessionOptions, SessionServer};

fn main() -> Result<(), flowipc::Error> {
    let mut args = std::env::args().skip(1);
    let mut sessions = usize::MAX;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sessions" => sessions = args.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            other => panic!("unknown argument {other}: use --sessions N"),
        }
    }
    let me = App::current("flowipc-demo").map_err(io)?;
    let client_exe = me.exe.with_file_name("session_client");
    let client = App::new("session-client", client_exe, me.uid, me.gid);
    let server = ServerApp::new(me, vec![client]);
    let srv = SessionServer::bind(&server, SessionOptions::new())?;
    println!("listening at {}", srv.path().display());
    for _ in 0..sessions {
        let mut session = srv.accept()?;
        let id = session.peer_identity().cloned();
        println!(
            "session with '{}' (pid {:?}), metadata {:?}",
            session.peer_name(),
            id.map(|i| i.pid),
            String::from_utf8_lossy(session.peer_metadata())
        );
        let mut init = session.take_init_channels();
        // Hand over a descriptor: one end of a socket with a greeting already in it.
        let (mut ours, theirs) = UnixStream::pair().map_err(io)?;
        ours.write_all(b"greetings through a passed descriptor\n")
            .map_err(io)?;
        init[1].send_with_fds(b"here is a socket", &[theirs.as_fd()])?;
        drop(theirs);
        // The client opens a channel of its own; accept it.
        let request = session.accept_channel(None)?;
        println!(
            "client opened a {} channel: {:?}",
            request.kind(),
            String::from_utf8_lossy(request.metadata())
        );
        let mut opened = session.grant(request)?;
        serve(&mut init[0])?;
        serve(&mut opened)?;
        match session.wait_end(None) {
            Ok(()) | Err(SessionError::PeerGone) => println!("session ended"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Answers each message with its upper-case form until the peer closes the channel.
fn serve(channel: &mut Channel) -> Result<(), flowipc::Error> {
    let mut buf = Vec::new();
    loop {
        match channel.recv(&mut buf) {
            Ok(_) => {
                println!("  got {:?}", String::from_utf8_lossy(&buf));
                channel.send(&buf.to_ascii_uppercase())?;
            }
            Err(RecvError::Closed | RecvError::PeerGone) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn io(e: std::io::Error) -> flowipc::Error {
    SessionError::Io {
        op: "example".into(),
        source: e,
    }
    .into()
}
