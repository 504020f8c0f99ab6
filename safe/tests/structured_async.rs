//! The async (tokio) face of structured channels against a real child process: async requests,
//! multi-response, a dropped (timed-out) request whose response comes late, notifications, and
//! the child SIGKILLed while requests wait.

#![cfg(feature = "tokio")]

mod channel_util;
mod structured_util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use channel_util::{child_channel, role, spawn_child};
use flowipc::channel::{AsyncChannel, Channel};
use flowipc::structured::{AsyncStructuredChannel, StructuredError};
use structured_util::*;

const WAIT: Duration = Duration::from_secs(10);

type AsyncChan = AsyncStructuredChannel<body::Owned>;

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

fn aping(
    ch: &AsyncChan,
    seq: u64,
    payload_size: u32,
    responses: u32,
) -> flowipc::MsgOut<body::Owned> {
    let mut m = ch.create_msg();
    let mut p = m.body_root().init_ping();
    p.set_seq(seq);
    p.set_payload_size(payload_size);
    p.set_responses(responses);
    m
}

fn anote(ch: &AsyncChan, text: &str) -> flowipc::MsgOut<body::Owned> {
    let mut m = ch.create_msg();
    m.body_root().set_note(text);
    m
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn async_conversation(test: &str, (ours, theirs): (Channel, Channel)) {
    let mut child = spawn_child(test, "serve", theirs, &[]);
    runtime().block_on(async {
        let ch = Arc::new(AsyncChan::new(AsyncChannel::new(ours).unwrap()).unwrap());

        // Concurrent requests from several tasks; each gets its own response.
        let mut tasks = Vec::new();
        for seq in 1..=8u64 {
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                let r = ch.async_request(&aping(&ch, seq, 64, 1)).await.unwrap();
                assert_eq!(pong_of(&r), (seq, pong_payload(seq, 64)));
            }));
        }
        for t in tasks {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }

        // Multi-response.
        {
            let mut rs = ch.request_multi(&aping(&ch, 40, 2, 4)).await.unwrap();
            for seq in 40..44 {
                let r = tokio::time::timeout(WAIT, rs.recv())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(pong_of(&r).0, seq);
            }
        }

        // A request dropped by its timeout; its response comes late and is counted.
        let late = tokio::time::timeout(
            Duration::from_millis(50),
            ch.async_request(&aping(&ch, SLOW, 0, 1)),
        )
        .await;
        assert!(late.is_err(), "the slow response came within 50 ms");
        let t0 = Instant::now();
        while ch.stats().late_responses == 0 && t0.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(ch.stats().late_responses, 1);

        // Notifications.
        ch.send(&anote(&ch, "notify")).await.unwrap();
        let n = tokio::time::timeout(WAIT, ch.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(note_of(&n), "hello from child");

        // Requests waiting when the child is killed all fail with PeerGone, promptly.
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let ch = ch.clone();
            waiting.push(tokio::spawn(async move {
                let e = ch.async_request(&aping(&ch, HANG, 0, 1)).await.unwrap_err();
                (e, Instant::now())
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        let mut worst = Duration::ZERO;
        for w in waiting {
            let (e, when) = tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
            assert!(matches!(e, StructuredError::PeerGone), "{e}");
            worst = worst.max(when.saturating_duration_since(killed));
        }
        eprintln!("{test}: async waiters had PeerGone {worst:?} after SIGKILL");
        assert!(worst < Duration::from_secs(1));
        let e = tokio::time::timeout(WAIT, ch.recv())
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.is_peer_gone(), "{e}");
    });
}

#[test]
fn structured_async_ring() {
    if child_entry() {
        return;
    }
    async_conversation("structured_async_ring", Channel::ring_pair().unwrap());
}

#[test]
fn structured_async_socket() {
    if child_entry() {
        return;
    }
    async_conversation("structured_async_socket", Channel::socket_pair().unwrap());
}
