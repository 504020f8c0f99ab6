//! Structured channels between two real processes (the test binary re-exec'd as the child), over
//! each transport: notifications, sync / callback / multi-response requests, timeouts and late
//! responses, unexpected responses, descriptors, and the peer SIGKILLed mid-request.

mod channel_util;
mod structured_util;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use channel_util::{child_channel, retry_mq, role, serial, spawn_child};
use flowipc::channel::{Channel, ChannelOptions};
use flowipc::structured::{StructuredError, StructuredOptions, UnexpectedResponse};
use structured_util::*;

const WAIT: Duration = Duration::from_secs(10);
/// How soon every waiting request must see the peer's death (the channel targets 100 ms; this
/// leaves room for a loaded machine).
const PEER_GONE_BOUND: Duration = Duration::from_secs(1);

fn child_entry() -> bool {
    match role().as_deref() {
        Some("serve") => {
            serve(Chan::new(child_channel()).unwrap());
            true
        }
        Some(other) => panic!("unknown role {other}"),
        None => false,
    }
}

fn memfd_with(contents: &[u8]) -> OwnedFd {
    let path = std::env::temp_dir().join(format!("flowipc-structured-{}", std::process::id()));
    let mut f = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(contents).unwrap();
    OwnedFd::from(f)
}

/// Waits for a callback's report, driving the channel meanwhile (needed when the channel
/// receives in the caller).
fn await_cb<T>(ch: &Chan, rx: &mpsc::Receiver<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Ok(v) = rx.try_recv() {
            return v;
        }
        assert!(t0.elapsed() < WAIT, "no callback within {WAIT:?}");
        ch.process_incoming(Duration::from_millis(5)).unwrap();
    }
}

/// The whole conversation with a serving child over one transport.
fn conversation(test: &str, (ours, theirs): (Channel, Channel), with_fds: bool) {
    conversation_with(test, (ours, theirs), with_fds, &StructuredOptions::new());
}

fn conversation_with(
    test: &str,
    (ours, theirs): (Channel, Channel),
    with_fds: bool,
    options: &StructuredOptions,
) {
    let mut child = spawn_child(test, "serve", theirs, &[]);
    let ch: Chan = options.open(ours).unwrap();

    // A sync request and its response.
    let r = ch.sync_request(&ping(&ch, 1, 100, 1), WAIT).unwrap();
    assert_eq!(pong_of(&r), (1, pong_payload(1, 100)));
    assert_eq!(r.originating_id(), Some(1));

    // A large response (several ring frames on the ring).
    let r = ch.sync_request(&ping(&ch, 2, 300_000, 1), WAIT).unwrap();
    assert_eq!(pong_of(&r), (2, pong_payload(2, 300_000)));

    // Multi-response: three responses, in order.
    {
        let mut rs = ch.request_multi(&ping(&ch, 10, 8, 3)).unwrap();
        for seq in 10..13 {
            let r = rs.recv_timeout(WAIT).unwrap();
            assert_eq!(pong_of(&r).0, seq);
        }
        assert!(matches!(
            rs.recv_timeout(Duration::from_millis(50)),
            Err(StructuredError::TimedOut)
        ));
    }

    // The callback form.
    let (tx, rx) = mpsc::channel();
    ch.request_with(&ping(&ch, 20, 4, 1), move |r| {
        let _ = tx.send(r.map(|m| pong_of(&m)));
    })
    .unwrap();
    assert_eq!(await_cb(&ch, &rx).unwrap(), (20, pong_payload(20, 4)));

    // Multi-response with a callback, then cancelled.
    let (tx, rx) = mpsc::channel();
    let id = ch
        .request_multi_with(&ping(&ch, 30, 1, 2), move |r| {
            let _ = tx.send(r.map(|m| pong_of(&m).0));
        })
        .unwrap();
    assert_eq!(await_cb(&ch, &rx).unwrap(), 30);
    assert_eq!(await_cb(&ch, &rx).unwrap(), 31);
    ch.cancel(id);

    // Notifications both ways.
    ch.send(&note(&ch, "notify")).unwrap();
    let n = ch.recv_timeout(WAIT).unwrap();
    assert_eq!(note_of(&n), "hello from child");
    assert!(!n.expects_response());

    // A timeout, then the late response is dropped and counted.
    let late_before = ch.stats().late_responses;
    let t0 = Instant::now();
    let err = ch
        .sync_request(&ping(&ch, SLOW, 1, 1), Duration::from_millis(50))
        .unwrap_err();
    assert!(err.is_timed_out(), "{err}");
    assert!(t0.elapsed() < SLOW_DELAY);
    let t0 = Instant::now();
    while ch.stats().late_responses == late_before && t0.elapsed() < WAIT {
        ch.process_incoming(Duration::from_millis(5)).unwrap();
    }
    assert_eq!(ch.stats().late_responses, late_before + 1);
    // The channel goes on after it.
    let r = ch.sync_request(&ping(&ch, 3, 0, 1), WAIT).unwrap();
    assert_eq!(pong_of(&r).0, 3);

    // An unexpected response: handled here, and reported to the child, which says so.
    let (tx, rx) = mpsc::channel();
    ch.on_unexpected_response(move |u| {
        if let UnexpectedResponse::Received(m) = u {
            let _ = tx.send(pong_of(&m));
        }
    });
    ch.send(&note(&ch, "respond-to-me")).unwrap();
    assert_eq!(await_cb(&ch, &rx), (99, b"unasked".to_vec()));
    assert_eq!(ch.stats().unexpected_responses, 1);
    assert_eq!(note_of(&ch.recv_timeout(WAIT).unwrap()), "reported 1");

    // Descriptors both ways.
    if with_fds {
        let mut m = ch.create_msg();
        m.body_root().set_file_offer("the file");
        m.attach_fd(memfd_with(b"contents of the file"));
        let mut r = ch.sync_request(&m, WAIT).unwrap();
        assert_eq!(pong_of(&r).1, b"contents of the file");
        let fds = r.take_fds();
        assert_eq!(fds.len(), 1);
        let mut back = String::new();
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        std::io::Read::read_to_string(&mut f, &mut back).unwrap();
        assert_eq!(back, "contents of the file");
    }

    // Quit: the child closes, and recv ends with Closed; a request now fails at once.
    ch.send(&note(&ch, "quit")).unwrap();
    let err = ch.recv_timeout(WAIT).unwrap_err();
    assert!(matches!(err, StructuredError::Closed), "{err}");
    let err = ch.sync_request(&ping(&ch, 4, 0, 1), WAIT).unwrap_err();
    assert!(matches!(err, StructuredError::Closed), "{err}");
    let stats = ch.stats();
    eprintln!("{test}: {stats:?}");
    drop(ch);
    assert!(child.wait().unwrap().success());
}

/// Several requests wait (sync, from threads, and a callback) when the child is SIGKILLed: each
/// gets PeerGone, promptly.
fn killed_mid_request(test: &str, (ours, theirs): (Channel, Channel)) {
    killed_mid_request_with(test, (ours, theirs), &StructuredOptions::new());
}

fn killed_mid_request_with(
    test: &str,
    (ours, theirs): (Channel, Channel),
    options: &StructuredOptions,
) {
    let mut child = spawn_child(test, "serve", theirs, &[]);
    let ch: Chan = options.open(ours).unwrap();
    // The child is up and serving.
    ch.sync_request(&ping(&ch, 1, 0, 1), WAIT).unwrap();
    let (tx, rx) = mpsc::channel();
    let cb_tx = tx.clone();
    ch.request_with(&ping(&ch, HANG, 0, 1), move |r| {
        cb_tx.send((r.unwrap_err(), Instant::now())).unwrap();
    })
    .unwrap();
    let mut multi = ch.request_multi(&ping(&ch, HANG, 0, 1)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            let tx = tx.clone();
            let ch = &ch;
            s.spawn(move || {
                let e = ch.sync_request(&ping(ch, HANG, 0, 1), WAIT).unwrap_err();
                tx.send((e, Instant::now())).unwrap();
            });
        }
        let recv_tx = tx.clone();
        let ch = &ch;
        s.spawn(move || {
            let e = ch.recv_timeout(WAIT).unwrap_err();
            recv_tx.send((e, Instant::now())).unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        let e = multi.recv_timeout(WAIT).unwrap_err();
        assert!(e.is_peer_gone(), "multi: {e}");
        let mut worst = killed.elapsed();
        for _ in 0..5 {
            let (e, when) = rx.recv_timeout(WAIT).unwrap();
            assert!(e.is_peer_gone(), "{e}");
            worst = worst.max(when.saturating_duration_since(killed));
        }
        eprintln!("{test}: every waiter had PeerGone {worst:?} after SIGKILL");
        assert!(worst < PEER_GONE_BOUND, "PeerGone after {worst:?}");
    });
    // A request after that fails at once.
    let e = ch.sync_request(&ping(&ch, 2, 0, 1), WAIT).unwrap_err();
    assert!(e.is_peer_gone(), "{e}");
    let e: flowipc::Error = e.into();
    assert!(e.is_peer_gone());
}

#[test]
fn structured_socket() {
    if child_entry() {
        return;
    }
    conversation("structured_socket", Channel::socket_pair().unwrap(), true);
}

#[test]
fn structured_ring() {
    if child_entry() {
        return;
    }
    conversation("structured_ring", Channel::ring_pair().unwrap(), true);
}

#[test]
fn structured_mq() {
    if child_entry() {
        return;
    }
    let _g = serial();
    let pair = retry_mq(|| ChannelOptions::new().mq_pair());
    conversation("structured_mq", pair, false);
}

#[test]
fn structured_socket_killed() {
    if child_entry() {
        return;
    }
    killed_mid_request("structured_socket_killed", Channel::socket_pair().unwrap());
}

#[test]
fn structured_ring_killed() {
    if child_entry() {
        return;
    }
    killed_mid_request("structured_ring_killed", Channel::ring_pair().unwrap());
}

#[test]
fn structured_mq_killed() {
    if child_entry() {
        return;
    }
    let _g = serial();
    let pair = retry_mq(|| ChannelOptions::new().mq_pair());
    killed_mid_request("structured_mq_killed", pair);
}

/// Receiving in the caller (no reader thread): the same conversation, and the same kill.
#[test]
fn structured_ring_caller() {
    if child_entry() {
        return;
    }
    let options = StructuredOptions::new().receive_in_caller(true);
    conversation_with(
        "structured_ring_caller",
        Channel::ring_pair().unwrap(),
        true,
        &options,
    );
}

#[test]
fn structured_socket_caller_killed() {
    if child_entry() {
        return;
    }
    let options = StructuredOptions::new().receive_in_caller(true);
    killed_mid_request_with(
        "structured_socket_caller_killed",
        Channel::socket_pair().unwrap(),
        &options,
    );
}

#[test]
fn structured_ring_caller_killed() {
    if child_entry() {
        return;
    }
    let options = StructuredOptions::new().receive_in_caller(true);
    killed_mid_request_with(
        "structured_ring_caller_killed",
        Channel::ring_pair().unwrap(),
        &options,
    );
}

/// Receiving in the caller, `try_recv` returns a frame that has already arrived on the first
/// call (it once checked the deadline before taking what its own receive had just routed, and
/// returned `WouldBlock` once per frame).
#[test]
fn caller_try_recv_gets_what_arrived() {
    if child_entry() {
        return;
    }
    let options = StructuredOptions::new().receive_in_caller(true);
    for (a, b) in [
        Channel::ring_pair().unwrap(),
        Channel::socket_pair().unwrap(),
    ] {
        let (a, b): (Chan, Chan) = (options.open(a).unwrap(), options.open(b).unwrap());
        assert!(matches!(b.try_recv(), Err(StructuredError::WouldBlock)));
        for i in 0..100 {
            a.send(&note(&a, &format!("n{i}"))).unwrap();
            let got = b.try_recv().expect("the notification is already there");
            assert_eq!(note_of(&got), format!("n{i}"));
        }
    }
}
