//! Zero-copy structured channels between real processes (a session server here, a re-exec'd
//! client child): messages of every size arrive over a channel whose frames cannot hold them,
//! resent and changed-after-send messages, a receiver SIGKILLed while it holds segments (the
//! sender's pool gets them back), a sender SIGKILLed while the receiver reads (the receiver
//! finishes, then sees the peer gone), and no leak over 100,000 messages of mixed sizes.

mod session_util;
mod structured_util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowipc::arena::{BorrowedPool, LendPool};
use flowipc::channel::{Channel, TransportKind};
use flowipc::session::{Session, SessionOptions, SessionServer};
use flowipc::structured::{StructuredError, StructuredOptions, ZeroCopy};
use session_util::*;
use structured_util::{body, ping_capnp, Chan};

const T: Duration = Duration::from_secs(20);
/// Frames of the test channels are at most this: every larger message must go zero copy.
const SMALL_FRAMES: usize = 64 << 10;

fn session_options(dir: &std::path::Path) -> SessionOptions {
    options(dir)
        .init_channel(TransportKind::Ring)
        .arenas(256 << 20)
        .max_message_size(SMALL_FRAMES)
}

fn zc_channel(s: &mut Session) -> (Chan, ZeroCopy) {
    let zc = s.zero_copy().expect("zero copy");
    let ch = s.take_init_channels().pop().expect("init channel");
    let ch = StructuredOptions::new()
        .max_message_size(SMALL_FRAMES)
        .zero_copy(zc.clone())
        .open::<body::Owned>(ch)
        .expect("structured");
    (ch, zc)
}

fn pattern(i: usize, seed: u64) -> u8 {
    (i as u64).wrapping_mul(31).wrapping_add(seed) as u8
}

/// A pong with `size` bytes of patterned payload.
fn pong(ch: &Chan, seq: u64, size: usize) -> flowipc::structured::MsgOut<body::Owned> {
    pong_into(ch.create_msg(), seq, size)
}

fn pong_into(
    mut m: flowipc::structured::MsgOut<body::Owned>,
    seq: u64,
    size: usize,
) -> flowipc::structured::MsgOut<body::Owned> {
    let mut p = m.body_root().init_pong();
    p.set_seq(seq);
    let data = p.init_payload(size as u32);
    for (i, b) in data.iter_mut().enumerate() {
        *b = pattern(i, seq);
    }
    m
}

fn check_pong(msg: &flowipc::structured::MsgIn<body::Owned>, seq: u64, size: usize) {
    let body::Pong(p) = msg.body_root().unwrap().which().unwrap() else {
        panic!("expected a pong")
    };
    let p = p.unwrap();
    assert_eq!(p.get_seq(), seq);
    let data = p.get_payload().unwrap();
    assert_eq!(data.len(), size);
    for (i, &b) in data.iter().enumerate() {
        if b != pattern(i, seq) {
            panic!("byte {i} of pong {seq}: {b} != {}", pattern(i, seq));
        }
    }
}

/// Child roles, dispatched by the test that spawned the child.
fn child(role: &str) {
    let (dir, server_name) = child_env();
    let (server, client) = apps(&server_name);
    let mut s = Session::connect(&client, &server, &session_options(&dir)).expect("connect");
    let (ch, zc) = zc_channel(&mut s);
    match role {
        // Answer each ping with a pong of the asked size; seq 1000 asks for a resend test; the
        // note "usage" is answered with this side's pool usage after the parent let go.
        "serve" => {
            let baseline = zc.pool_usage();
            loop {
                let req = match ch.recv_timeout(T) {
                    Ok(m) => m,
                    Err(e) if e.is_peer_gone() || matches!(e, StructuredError::Closed) => break,
                    Err(e) => panic!("recv: {e}"),
                };
                match req.body_root().unwrap().which().unwrap() {
                    body::Ping(p) => {
                        let p = p.unwrap();
                        let seq = p.get_seq();
                        let size = p.get_payload_size() as usize;
                        let mut resp = pong(&ch, seq, size);
                        ch.send_response(&resp, &req).unwrap();
                        if p.get_responses() == 2 {
                            // Sent again unchanged, then changed after the sends: the
                            // parent's copies must not change (copy on write).
                            ch.send_response(&resp, &req).unwrap();
                            resp.body_root().init_pong().set_seq(seq + 1);
                            ch.send_response(&resp, &req).unwrap();
                        }
                    }
                    body::Note(n) => {
                        assert_eq!(n.unwrap().to_str().unwrap(), "usage");
                        let deadline = Instant::now() + T;
                        while zc.pool_usage() != baseline {
                            assert!(Instant::now() < deadline, "segments never came back");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let mut m = ch.create_msg();
                        m.body_root().set_note("baseline");
                        ch.send_response(&m, &req).unwrap();
                    }
                    _ => panic!("unexpected request"),
                }
            }
        }
        // Receive messages, hold them, and wait to be killed.
        "hold" => {
            let mut held = Vec::new();
            for i in 0..8u64 {
                let m = ch.recv_timeout(T).expect("message to hold");
                check_pong(&m, i, 1 << 20);
                held.push(m);
            }
            println!("holding");
            std::thread::sleep(T);
            panic!("not killed");
        }
        // Send one large message and wait to be killed.
        "send_large" => {
            let m = pong(&ch, 7, 64 << 20);
            ch.send(&m).unwrap();
            println!("sent");
            std::thread::sleep(T);
            panic!("not killed");
        }
        other => panic!("unknown role {other}"),
    }
}

fn serve_child(test: &str, role: &str, tag: &str) -> (SessionServer, std::process::Child, Session) {
    let dir = fresh_dir(tag);
    let srv_name = format!("{tag}-srv");
    let (server, _) = apps(&srv_name);
    let srv = SessionServer::bind(&server, session_options(&dir)).unwrap();
    let mut child = command(None, test, role, &dir, &srv_name)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let s = match srv.accept_timeout(Some(T)) {
        Ok(s) => s,
        Err(e) => {
            kill9(&mut child);
            panic!("accept: {e}");
        }
    };
    (srv, child, s)
}

fn wait_line(child: &mut std::process::Child, want: &str) {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = want.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if line.contains(&want) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(T).expect("the child's line");
}

#[test]
fn messages_of_every_size_go_as_handles_and_come_back() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let (_srv, mut child, mut s) = serve_child(
        "messages_of_every_size_go_as_handles_and_come_back",
        "serve",
        "zc-sizes",
    );
    let (ch, zc) = zc_channel(&mut s);
    let baseline = zc.pool_usage();
    let mut kept = Vec::new();
    for (seq, size) in [
        (1u64, 0usize),
        (2, 1024),
        (3, 100_000),
        (4, 1 << 20),
        (5, 48 << 20),
    ] {
        let mut req = ch.create_msg();
        {
            let mut p = req.body_root().init_ping();
            p.set_seq(seq);
            p.set_payload_size(size as u32);
        }
        let resp = ch.sync_request(&req, T).expect("response");
        check_pong(&resp, seq, size);
        // 48 MiB through 64 KiB frames: only the segment handles travelled.
        assert!(resp.body_words() * 8 >= size);
        kept.push((resp, seq, size));
    }
    // Resend and copy on write: three responses to one request.
    let mut req = ch.create_msg();
    {
        let mut p = req.body_root().init_ping();
        p.set_seq(1000);
        p.set_payload_size(4096);
        p.set_responses(2);
    }
    let mut rs = ch.request_multi(&req).unwrap();
    let first = rs.recv_timeout(T).unwrap();
    let again = rs.recv_timeout(T).unwrap();
    let changed = rs.recv_timeout(T).unwrap();
    drop(rs);
    check_pong(&changed, 1001, 0);
    check_pong(&first, 1000, 4096);
    check_pong(&again, 1000, 4096);
    // Everything still reads after the rest arrived.
    for (m, seq, size) in &kept {
        check_pong(m, *seq, *size);
    }
    drop((kept, first, again, changed));
    // The child's pool is back to its baseline once we let go.
    let mut q = ch.create_msg();
    q.body_root().set_note("usage");
    let a = ch.sync_request(&q, T).expect("usage answer");
    let body::Note(n) = a.body_root().unwrap().which().unwrap() else {
        panic!("expected a note")
    };
    assert_eq!(n.unwrap().to_str().unwrap(), "baseline");
    drop((a, q, req));
    let deadline = Instant::now() + T;
    while zc.pool_usage() != baseline {
        assert!(
            Instant::now() < deadline,
            "our requests never came back: {:?} vs {baseline:?}",
            zc.pool_usage()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(ch);
    drop(s);
    assert!(wait_bounded(&mut child, T).success());
}

#[test]
fn receiver_killed_while_holding_segments_gives_them_all_back() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let (_srv, mut child, mut s) = serve_child(
        "receiver_killed_while_holding_segments_gives_them_all_back",
        "hold",
        "zc-hold",
    );
    let (ch, zc) = zc_channel(&mut s);
    let baseline = zc.pool_usage();
    for i in 0..8u64 {
        ch.send(&pong(&ch, i, 1 << 20)).unwrap();
    }
    wait_line(&mut child, "holding");
    assert!(zc.lent() >= 8, "the child holds every message");
    assert!(zc.pool_usage().bytes >= baseline.bytes + (8 << 20));
    kill9(&mut child);
    // The channel sees the peer gone, the pidfd confirms the exit, the pool reclaims.
    assert!(ch.recv_timeout(T).unwrap_err().is_peer_gone());
    let deadline = Instant::now() + T;
    while zc.pool_usage() != baseline {
        assert!(
            Instant::now() < deadline,
            "pool never came back: {:?} vs {baseline:?}",
            zc.pool_usage()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(zc.lent(), 0);
}

#[test]
fn sender_killed_while_the_receiver_reads_a_large_message() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let (_srv, mut child, mut s) = serve_child(
        "sender_killed_while_the_receiver_reads_a_large_message",
        "send_large",
        "zc-sender-dies",
    );
    let (ch, _zc) = zc_channel(&mut s);
    let m = ch.recv_timeout(T).expect("the large message");
    wait_line(&mut child, "sent");
    kill9(&mut child);
    // The mapping outlives the sender: every byte still reads.
    check_pong(&m, 7, 64 << 20);
    drop(m);
    assert!(ch.recv_timeout(T).unwrap_err().is_peer_gone());
}

/// Two zero-copy ends in one process over fresh pools (the protocol does not care whether the
/// pools' owners are two processes; the kill tests above cover that).
fn local_pair() -> (Chan, ZeroCopy, Chan, ZeroCopy) {
    pair_over(
        LendPool::create(64 << 20).unwrap(),
        LendPool::create(64 << 20).unwrap(),
    )
}

/// Two zero-copy ends over a ring pair, `a` building in `pool_a`, `b` in `pool_b`.
fn pair_over(pool_a: LendPool, pool_b: LendPool) -> (Chan, ZeroCopy, Chan, ZeroCopy) {
    let (a, b) = (Arc::new(pool_a), Arc::new(pool_b));
    let (a_to_b, a_setup) = a.add_borrower().unwrap();
    let (b_to_a, b_setup) = b.add_borrower().unwrap();
    let seen_by_b = Arc::new(BorrowedPool::open(a_setup).unwrap());
    let seen_by_a = Arc::new(BorrowedPool::open(b_setup).unwrap());
    // SAFETY: both ends are this test, which follows the protocol.
    let (za, zb) = unsafe {
        (
            ZeroCopy::from_pools(a, a_to_b, seen_by_a, None),
            ZeroCopy::from_pools(b, b_to_a, seen_by_b, None),
        )
    };
    let (ca, cb) = Channel::ring_pair().unwrap();
    let open = |c, z: &ZeroCopy| {
        StructuredOptions::new()
            .receive_in_caller(true)
            .zero_copy(z.clone())
            .open::<body::Owned>(c)
            .unwrap()
    };
    (open(ca, &za), za, open(cb, &zb), zb)
}

#[test]
fn no_leak_over_100k_messages_of_mixed_sizes() {
    let (a, za, b, zb) = local_pair();
    let (base_a, base_b) = (za.pool_usage(), zb.pool_usage());
    let sizes = [8usize, 100, 1000, 16 << 10, 200_000];
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..100_000u64 {
                let m = b.recv_timeout(T).expect("message");
                let size = sizes[i as usize % sizes.len()];
                let body::Pong(p) = m.body_root().unwrap().which().unwrap() else {
                    panic!()
                };
                let p = p.unwrap();
                assert_eq!(p.get_seq(), i);
                let data = p.get_payload().unwrap();
                assert_eq!(data.len(), size);
                if size > 0 {
                    assert_eq!(data[size - 1], pattern(size - 1, i));
                }
            }
        });
        for i in 0..100_000u64 {
            let size = sizes[i as usize % sizes.len()];
            let mut m = a.create_msg();
            let mut p = m.body_root().init_pong();
            p.set_seq(i);
            let d = p.init_payload(size as u32);
            if size > 0 {
                d[size - 1] = pattern(size - 1, i);
            }
            a.send(&m).unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
    });
    assert_eq!(za.pool_usage(), base_a, "sender's pool back to baseline");
    assert_eq!(zb.pool_usage(), base_b);
    assert_eq!(za.lent(), 0);
}

#[test]
fn a_copy_mode_receiver_refuses_zero_copy_frames() {
    let (_a, za, _b, _zb) = local_pair();
    let (ca, cb) = Channel::ring_pair().unwrap();
    let a = StructuredOptions::new()
        .zero_copy(za.clone().inline_max(0))
        .open::<body::Owned>(ca)
        .unwrap();
    let b = StructuredOptions::new().open::<body::Owned>(cb).unwrap();
    a.send(&pong(&a, 1, 10)).unwrap();
    match b.recv_timeout(T) {
        Err(StructuredError::Corrupt { reason }) => assert!(reason.contains("zero copy")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// As `local_pair`, with the sender's pool jemalloc-backed (`a`'s messages).
#[cfg(feature = "jemalloc")]
#[test]
fn jemalloc_pools_carry_zero_copy_messages() {
    let (a, za, b, _zb) = pair_over(
        LendPool::create_jemalloc(64 << 20).unwrap(),
        LendPool::create(16 << 20).unwrap(),
    );
    let base = za.pool_usage();
    for (seq, size) in [(1u64, 10usize), (2, 5000), (3, 3 << 20)] {
        a.send(&pong(&a, seq, size)).unwrap();
        let m = b.recv_timeout(T).unwrap();
        check_pong(&m, seq, size);
    }
    assert_eq!(za.pool_usage(), base);
    assert_eq!(za.lent(), 0);
}

#[cfg(feature = "tokio")]
#[test]
fn async_channels_request_and_answer_in_zero_copy() {
    let (_a, za, _b, zb) = local_pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ca, cb) = Channel::ring_pair().unwrap();
        let a = StructuredOptions::new()
            .zero_copy(za.clone())
            .open_async::<body::Owned>(ca.into_async().unwrap())
            .unwrap();
        let b = StructuredOptions::new()
            .zero_copy(zb)
            .open_async::<body::Owned>(cb.into_async().unwrap())
            .unwrap();
        let server = async {
            let req = b.recv().await.unwrap();
            let body::Ping(p) = req.body_root().unwrap().which().unwrap() else {
                panic!("expected a ping")
            };
            let size = p.unwrap().get_payload_size() as usize;
            b.send_response(&pong_into(b.create_msg(), 9, size), &req)
                .await
                .unwrap();
        };
        let client = async {
            let mut req = a.create_msg();
            req.body_root().init_ping().set_payload_size(2 << 20);
            let resp = tokio::time::timeout(T, a.async_request(&req))
                .await
                .expect("in time")
                .unwrap();
            check_pong(&resp, 9, 2 << 20);
        };
        tokio::join!(server, client);
    });
}

#[test]
fn a_zero_copy_message_sent_elsewhere_goes_inline() {
    let (a, za, _b, _zb) = local_pair();
    // A copy-mode pair: the message built in `a`'s pool still arrives, serialized.
    let (cc, cd) = Channel::ring_pair().unwrap();
    let c = StructuredOptions::new().open::<body::Owned>(cc).unwrap();
    let d = StructuredOptions::new().open::<body::Owned>(cd).unwrap();
    let m = pong(&a, 5, 3000);
    c.send(&m).unwrap();
    check_pong(&d.recv_timeout(T).unwrap(), 5, 3000);
    assert_eq!(za.lent(), 0, "nothing was lent for an inline send");
}

#[test]
fn small_messages_travel_inline_and_large_ones_as_handles() {
    let (a, za, b, zb) = local_pair();
    // A pong of 100 bytes serializes to well under the default 1 KiB: copied, nothing lent.
    a.send(&pong(&a, 1, 100)).unwrap();
    let small = b.recv_timeout(T).unwrap();
    assert_eq!(za.lent(), 0, "a small message is copied, not lent");
    assert!(small.body_root().is_ok());
    // 4 KiB: lent, held by the receiver until it drops the message.
    a.send(&pong(&a, 2, 4096)).unwrap();
    let large = b.recv_timeout(T).unwrap();
    assert!(za.lent() > 0, "a large message is lent");
    drop(large);
    drop(small);
    let deadline = Instant::now() + T;
    while za.lent() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(za.lent(), 0, "given back on drop");
    // inline_max(0) lends even the smallest.
    let (ca, cb) = Channel::ring_pair().unwrap();
    let a0 = StructuredOptions::new()
        .receive_in_caller(true)
        .zero_copy(za.clone().inline_max(0))
        .open::<body::Owned>(ca)
        .unwrap();
    let b0 = StructuredOptions::new()
        .receive_in_caller(true)
        .zero_copy(zb.clone())
        .open::<body::Owned>(cb)
        .unwrap();
    a0.send(&pong(&a0, 3, 10)).unwrap();
    let tiny = b0.recv_timeout(T).unwrap();
    assert!(za.lent() > 0, "lent with inline_max(0)");
    drop(tiny);
}
