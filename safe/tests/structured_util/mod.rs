//! Helpers of the structured-channel tests: the example schema, a child that serves it, message
//! builders.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::Duration;

use flowipc::structured::{MsgOut, StructuredChannel};

#[path = "../../schema/ping_capnp.rs"]
#[allow(missing_docs, unused, clippy::all, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
pub mod ping_capnp;

pub use ping_capnp::body;

/// A ping with this seq is never answered.
pub const HANG: u64 = u64::MAX;
/// A ping with this seq is answered after [`SLOW_DELAY`].
pub const SLOW: u64 = u64::MAX - 1;
pub const SLOW_DELAY: Duration = Duration::from_millis(300);

pub type Chan = StructuredChannel<body::Owned>;

pub fn ping(ch: &Chan, seq: u64, payload_size: u32, responses: u32) -> MsgOut<body::Owned> {
    let mut m = ch.create_msg();
    let mut p = m.body_root().init_ping();
    p.set_seq(seq);
    p.set_payload_size(payload_size);
    p.set_responses(responses);
    m
}

pub fn note(ch: &Chan, text: &str) -> MsgOut<body::Owned> {
    let mut m = ch.create_msg();
    m.body_root().set_note(text);
    m
}

pub fn pong_payload(seq: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (seq as usize + i) as u8).collect()
}

/// The pong of a response: (seq, payload).
pub fn pong_of(msg: &flowipc::MsgIn<body::Owned>) -> (u64, Vec<u8>) {
    match msg.body_root().unwrap().which().unwrap() {
        body::Pong(p) => {
            let p = p.unwrap();
            (p.get_seq(), p.get_payload().unwrap().to_vec())
        }
        _ => panic!("not a pong"),
    }
}

pub fn note_of(msg: &flowipc::MsgIn<body::Owned>) -> String {
    match msg.body_root().unwrap().which().unwrap() {
        body::Note(t) => t.unwrap().to_string().unwrap(),
        _ => panic!("not a note"),
    }
}

fn pong(ch: &Chan, seq: u64, payload: &[u8]) -> MsgOut<body::Owned> {
    let mut m = ch.create_msg();
    let mut p = m.body_root().init_pong();
    p.set_seq(seq);
    p.set_payload(payload);
    m
}

/// The child side: answers pings (with `responses` pongs of `payloadSize` bytes), file offers
/// (the file's contents, and a descriptor back), and notes ("notify", "respond-to-me", "quit").
pub fn serve(ch: Chan) {
    loop {
        let mut msg = match ch.recv_timeout(Duration::from_secs(30)) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("child: recv ended: {e}");
                return;
            }
        };
        let which = msg.body_root().unwrap().which().unwrap();
        match which {
            body::Ping(p) => {
                let p = p.unwrap();
                let seq = p.get_seq();
                if seq == HANG {
                    continue;
                }
                if seq == SLOW {
                    std::thread::sleep(SLOW_DELAY);
                }
                let size = p.get_payload_size() as usize;
                for i in 0..u64::from(p.get_responses().max(1)) {
                    let r = pong(
                        &ch,
                        seq.wrapping_add(i),
                        &pong_payload(seq.wrapping_add(i), size),
                    );
                    ch.send_response(&r, &msg).unwrap();
                }
            }
            body::FileOffer(name) => {
                assert_eq!(name.unwrap().to_str().unwrap(), "the file");
                let fds = msg.take_fds();
                assert_eq!(fds.len(), 1);
                let mut file = std::fs::File::from(fds.into_iter().next().unwrap());
                let mut contents = Vec::new();
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).unwrap();
                file.read_to_end(&mut contents).unwrap();
                let mut r = pong(&ch, 0, &contents);
                r.attach_fd(OwnedFd::from(file));
                ch.send_response(&r, &msg).unwrap();
            }
            body::Note(t) => match t.unwrap().to_str().unwrap() {
                "notify" => ch.send(&note(&ch, "hello from child")).unwrap(),
                "respond-to-me" => {
                    // A response to a notification: nothing waits for it over there.
                    ch.send_response(&pong(&ch, 99, b"unasked"), &msg).unwrap();
                    let t0 = std::time::Instant::now();
                    while ch.stats().reported_by_peer == 0 && t0.elapsed() < Duration::from_secs(5)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let text = format!("reported {}", ch.stats().reported_by_peer);
                    ch.send(&note(&ch, &text)).unwrap();
                }
                "quit" => {
                    ch.close().unwrap();
                    // Stay until the parent is done reading.
                    let _ = ch.recv_timeout(Duration::from_secs(10));
                    return;
                }
                other => panic!("child: unknown note {other}"),
            },
            _ => panic!("child: unexpected message"),
        }
    }
}
