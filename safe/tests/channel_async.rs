//! The async (tokio) API on a multi-threaded runtime, for every transport: traffic, cancellation,
//! and a SIGKILLed peer.

mod channel_util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use channel_util::*;
use flowipc::channel::{AsyncChannel, Channel, ChannelOptions, RecvError, SendError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_types_are_send() {
    fn is_send<T: Send>() {}
    is_send::<Channel>();
    is_send::<AsyncChannel>();
}

/// `n` messages each way at once (two tasks per side), checked, then an orderly close.
async fn traffic(a: Channel, b: Channel, with_fds: bool, n: u64) {
    let mut a = a.into_async().unwrap();
    let mut b = b.into_async().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let receiver = tokio::spawn(async move {
        let mut rng = Rng(7);
        let mut buf = Vec::new();
        for seq in 0..n {
            let len = (size(&mut rng)).min(1 << 20);
            let k = if with_fds { fd_count(&mut rng) } else { 0 };
            let meta = b.recv(&mut buf).await.unwrap();
            verify(seq, len, &buf).unwrap();
            assert_eq!(meta.fds.len(), k, "message {seq}");
        }
        assert!(matches!(b.recv(&mut buf).await, Err(RecvError::Closed)));
        b
    });
    let mut rng = Rng(7);
    let mut msg = Vec::new();
    for seq in 0..n {
        let len = (size(&mut rng)).min(1 << 20);
        let k = if with_fds { fd_count(&mut rng) } else { 0 };
        fill(seq, len, &mut msg);
        let fds = vec![file.as_fd(); k];
        a.send_with_fds(&msg, &fds).await.unwrap();
    }
    a.close().await.unwrap();
    let mut b = receiver.await.unwrap();
    b.send(b"bye").await.unwrap();
    assert_eq!(a.recv_owned().await.unwrap().bytes, b"bye");
}

#[test]
fn async_socket_traffic() {
    let _g = serial();
    let (a, b) = Channel::socket_pair().unwrap();
    runtime().block_on(traffic(a, b, true, 5000));
}

#[test]
fn async_mq_traffic() {
    let _g = serial();
    let (a, b) = retry_mq(Channel::mq_pair);
    runtime().block_on(traffic(a, b, false, 5000));
}

#[test]
fn async_ring_traffic() {
    let _g = serial();
    let (a, b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    runtime().block_on(traffic(a, b, true, 5000));
}

/// A send cancelled half-way (timeout while the peer does not drain) leaves the stream whole.
async fn cancelled_send(a: Channel, b: Channel) {
    let mut a = a.into_async().unwrap();
    let mut b = b.into_async().unwrap();
    let mut big = Vec::new();
    fill(1, 3 << 20, &mut big);
    let r = tokio::time::timeout(Duration::from_millis(50), a.send(&big)).await;
    assert!(r.is_err(), "a 3 MiB message cannot fit while nobody reads");
    let mut second = Vec::new();
    fill(2, 1000, &mut second);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        b.recv(&mut buf).await.unwrap();
        verify(1, 3 << 20, &buf).unwrap();
        b.recv(&mut buf).await.unwrap();
        verify(2, 1000, &buf).unwrap();
    });
    a.send(&second).await.unwrap();
    reader.await.unwrap();
}

#[test]
fn async_cancelled_send_keeps_stream_whole() {
    let _g = serial();
    let rt = runtime();
    let (a, b) = Channel::socket_pair().unwrap();
    rt.block_on(cancelled_send(a, b));
    let (a, b) = retry_mq(Channel::mq_pair);
    rt.block_on(cancelled_send(a, b));
    let (a, b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    rt.block_on(cancelled_send(a, b));
}

/// The parent awaits `recv` on an idle child, which is SIGKILLed: PeerGone within the limit, no
/// descriptor leaked.
fn async_kill_blocked_recv(test: &str, make: impl FnOnce() -> (Channel, Channel)) {
    let before = open_fds();
    let rt = runtime();
    {
        let (ours, theirs) = make();
        let child = spawn_child(test, "idle", theirs, &[]);
        let (when, killer) = kill_later(child, Duration::from_millis(300));
        let err = rt.block_on(async move {
            let mut ours = ours.into_async().unwrap();
            let task = tokio::spawn(async move {
                let mut buf = Vec::new();
                ours.recv(&mut buf).await.unwrap_err()
            });
            task.await.unwrap()
        });
        let now = Instant::now();
        killer.join().unwrap();
        let t0 = when.lock().unwrap().expect("killed");
        assert!(
            matches!(err, RecvError::PeerGone),
            "expected PeerGone, got {err:?}"
        );
        let elapsed = now.saturating_duration_since(t0);
        assert!(elapsed < PEER_GONE_LIMIT, "PeerGone after {elapsed:?}");
        eprintln!("{test}: async recv got PeerGone {elapsed:?} after SIGKILL");
    }
    drop(rt);
    assert_eq!(open_fds(), before, "descriptors leaked");
}

/// The parent awaits `send` to an idle child (which never drains), which is SIGKILLed.
fn async_kill_blocked_send(test: &str, make: impl FnOnce() -> (Channel, Channel)) {
    let before = open_fds();
    let rt = runtime();
    {
        let (ours, theirs) = make();
        let child = spawn_child(test, "idle", theirs, &[]);
        let (when, killer) = kill_later(child, Duration::from_millis(300));
        let err = rt.block_on(async move {
            let mut ours = ours.into_async().unwrap();
            tokio::spawn(async move {
                let msg = vec![1u8; 64 * 1024];
                loop {
                    if let Err(e) = ours.send(&msg).await {
                        return e;
                    }
                }
            })
            .await
            .unwrap()
        });
        let now = Instant::now();
        killer.join().unwrap();
        let t0 = when.lock().unwrap().expect("killed");
        assert!(
            matches!(err, SendError::PeerGone),
            "expected PeerGone, got {err:?}"
        );
        let elapsed = now.saturating_duration_since(t0);
        assert!(elapsed < PEER_GONE_LIMIT, "PeerGone after {elapsed:?}");
        eprintln!("{test}: async send got PeerGone {elapsed:?} after SIGKILL");
    }
    drop(rt);
    assert_eq!(open_fds(), before, "descriptors leaked");
}

#[test]
fn async_socket_sigkill() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    async_kill_blocked_recv("async_socket_sigkill", || Channel::socket_pair().unwrap());
    async_kill_blocked_send("async_socket_sigkill", || Channel::socket_pair().unwrap());
}

#[test]
fn async_mq_sigkill() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    async_kill_blocked_recv("async_mq_sigkill", || retry_mq(Channel::mq_pair));
    async_kill_blocked_send("async_mq_sigkill", || retry_mq(Channel::mq_pair));
}

#[test]
fn async_ring_sigkill() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    async_kill_blocked_recv("async_ring_sigkill", || Channel::ring_pair().unwrap());
    async_kill_blocked_send("async_ring_sigkill", || Channel::ring_pair().unwrap());
}

/// Split halves: one task streams while another receives, on every transport, both directions
/// at once.
async fn full_duplex(a: Channel, b: Channel, n: u64) {
    let (atx, arx) = a.into_async().unwrap().split().unwrap();
    let (btx, brx) = b.into_async().unwrap().split().unwrap();
    let sender = |mut tx: flowipc::channel::AsyncSender, seed: u64| async move {
        let mut rng = Rng(seed);
        let mut msg = Vec::new();
        for seq in 0..n {
            fill(seq, size(&mut rng).min(256 * 1024), &mut msg);
            tx.send(&msg).await.unwrap();
        }
        tx.close().await.unwrap();
    };
    let receiver = |mut rx: flowipc::channel::AsyncReceiver, seed: u64| async move {
        let mut rng = Rng(seed);
        let mut buf = Vec::new();
        for seq in 0..n {
            rx.recv(&mut buf).await.unwrap();
            verify(seq, size(&mut rng).min(256 * 1024), &buf).unwrap();
        }
        assert!(matches!(rx.recv(&mut buf).await, Err(RecvError::Closed)));
    };
    let tasks = [
        tokio::spawn(sender(atx, 1)),
        tokio::spawn(sender(btx, 2)),
        tokio::spawn(receiver(brx, 1)),
        tokio::spawn(receiver(arx, 2)),
    ];
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn async_split_full_duplex() {
    let _g = serial();
    let rt = runtime();
    let (a, b) = Channel::socket_pair().unwrap();
    rt.block_on(full_duplex(a, b, 3000));
    let (a, b) = retry_mq(Channel::mq_pair);
    rt.block_on(full_duplex(a, b, 3000));
    let (a, b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    rt.block_on(full_duplex(a, b, 3000));
}
