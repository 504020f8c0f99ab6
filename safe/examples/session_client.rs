//! A session client for `session_server` (start that first, in another terminal).
//!
//! ```text
//! cargo run --release -p flowipc --example session_server
//! cargo run --release -p flowipc --example session_client
//! ```
//!
//! Connects with two init channels (a shared-memory ring and a socket), exchanges messages, reads
//! the greeting from the descriptor the server passes, opens one more channel, and closes.

use std::io::Read;
use std::os::unix::net::UnixStream;

use flowipc::channel::TransportKind;
use flowipc::session::{App, ClientApp, ServerApp, Session, SessionError, SessionOptions};

fn main() -> Result<(), flowipc::Error> {
    let me = App::current("session-client").map_err(io)?;
    let server_exe = me.exe.with_file_name("session_server");
    let server = ServerApp::new(
        App::new("flowipc-demo", server_exe, me.uid, me.gid),
        vec![me.clone()],
    );
    let options = SessionOptions::new()
        .init_channel(TransportKind::Ring)
        .init_channel(TransportKind::Socket)
        .metadata(b"hello from the client".to_vec());
    let mut session = Session::connect(&ClientApp::new(me), &server, &options)?;
    println!("connected to '{}'", session.peer_name());
    let mut init = session.take_init_channels();
    // The server hands over a descriptor on the socket channel.
    let msg = init[1].recv_owned()?;
    println!(
        "{:?} with {} descriptor(s)",
        String::from_utf8_lossy(&msg.bytes),
        msg.fds.len()
    );
    for fd in msg.fds {
        let mut greeting = String::new();
        let mut sock = UnixStream::from(fd);
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(io)?;
        let mut buf = [0u8; 256];
        let n = sock.read(&mut buf).map_err(io)?;
        greeting.push_str(&String::from_utf8_lossy(&buf[..n]));
        print!("read through it: {greeting}");
    }
    let mut opened = session.open_channel(TransportKind::Socket, b"an extra channel")?;
    let mut reply = Vec::new();
    for (channel, text) in [
        (&mut init[0], "over the ring"),
        (&mut opened, "over the opened channel"),
    ] {
        channel.send(text.as_bytes())?;
        channel.recv(&mut reply)?;
        println!("sent {text:?}, got {:?}", String::from_utf8_lossy(&reply));
        channel.close()?;
    }
    session.close()?;
    Ok(())
}

fn io(e: std::io::Error) -> flowipc::Error {
    SessionError::Io {
        op: "example".into(),
        source: e,
    }
    .into()
}
