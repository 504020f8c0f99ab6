//! The async (tokio) API on a multi-threaded runtime, for every transport: traffic, cancellation,
//! and a SIGKILLed peer.
#![cfg(feature = "tokio")]

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
/// `n` messages built and read in place, both sides async, the reader slower at first so that the
/// writer waits for room (small ring); some carry descriptors, some exceed one frame.
async fn in_place_traffic(a: Channel, b: Channel, n: u64) {
    let mut a = a.into_async().unwrap();
    let mut b = b.into_async().unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let receiver = tokio::spawn(async move {
        let mut rng = Rng(11);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for seq in 0..n {
            let len = (size(&mut rng)).min(100_000);
            let k = usize::from(seq % 16 == 5);
            let msg = b.recv_in_place().await.unwrap();
            assert_eq!(msg.len(), len, "message {seq}");
            verify(seq, len, &msg.to_vec()).unwrap();
            assert_eq!(msg.fds().len(), k, "message {seq}");
        }
        assert!(matches!(b.recv_in_place().await, Err(RecvError::Closed)));
    });
    let mut rng = Rng(11);
    let mut msg = Vec::new();
    for seq in 0..n {
        let len = (size(&mut rng)).min(100_000);
        fill(seq, len, &mut msg);
        let fds = if seq % 16 == 5 {
            vec![file.as_fd()]
        } else {
            vec![]
        };
        a.send_in_place_with_fds(len, &fds, |w| w.write_at(0, &msg))
            .await
            .unwrap();
    }
    a.close().await.unwrap();
    receiver.await.unwrap();
}

#[test]
fn async_in_place_ring_traffic() {
    let _g = serial();
    let (a, b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    runtime().block_on(in_place_traffic(a, b, 5_000));
}

#[test]
fn async_in_place_socket_traffic() {
    let _g = serial();
    let (a, b) = Channel::socket_pair().unwrap();
    runtime().block_on(in_place_traffic(a, b, 2_000));
}

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

/// Messages the "paced" child sends, each after the parent's receiver has been idle for
/// [`IDLE_BEFORE_SEND`].
const PACED_MESSAGES: usize = 20;
const IDLE_BEFORE_SEND: Duration = Duration::from_millis(50);

/// Child role: waits for the parent's go, then sends [`PACED_MESSAGES`] messages carrying the
/// monotonic clock at sending, each after an idle pause.
fn paced_child() {
    let mut ch = child_channel();
    assert_eq!(ch.recv_owned().unwrap().bytes, b"go");
    for _ in 0..PACED_MESSAGES {
        std::thread::sleep(IDLE_BEFORE_SEND);
        let now = flowipc_sys::process::clock_monotonic_ns();
        ch.send(&now.to_le_bytes()).unwrap();
    }
    // Wait for the parent to finish reading before closing.
    let _ = ch.recv_owned();
}

/// An async ring receiver idle for 50 ms is woken through its armed eventfd, not by a timer: the
/// median latency from the child's send to the parent's wake-up, over 20 messages, is below
/// 700 us. A receiver that polled on a timer (the async ring's earlier design: yields, then 1 ms
/// sleeps) has a median of 1 ms or more, so the test fails for it. On this 2-vCPU VM the median
/// is about 150 us: both vCPUs are halted after 50 ms idle, and waking one costs most of that.
#[test]
fn async_ring_idle_receiver_wakes_promptly() {
    if let Some(role) = role() {
        return match role.as_str() {
            "paced" => paced_child(),
            other => child_main(other),
        };
    }
    let _g = serial();
    let (ours, theirs) = Channel::ring_pair().unwrap();
    let mut child = spawn_child(
        "async_ring_idle_receiver_wakes_promptly",
        "paced",
        theirs,
        &[],
    );
    let mut lat = runtime().block_on(async move {
        let mut ch = ours.into_async().unwrap();
        ch.send(b"go").await.unwrap();
        let mut lat = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..PACED_MESSAGES {
            ch.recv(&mut buf).await.unwrap();
            let now = flowipc_sys::process::clock_monotonic_ns();
            let sent = u64::from_le_bytes(buf[..8].try_into().unwrap());
            lat.push(Duration::from_nanos(now.saturating_sub(sent)));
        }
        ch.send(b"done").await.unwrap();
        lat
    });
    assert!(child.wait().unwrap().success());
    lat.sort();
    let median = lat[lat.len() / 2];
    eprintln!(
        "idle async ring receive latency: min {:?}, median {median:?}, max {:?}",
        lat[0],
        lat[lat.len() - 1]
    );
    assert!(
        median < Duration::from_micros(700),
        "median wake-up latency {median:?}: the receive did not wake through the eventfd"
    );
}

/// A ring end is rebuilt only from all five descriptors, whose last two must be doorbells (Unix
/// stream sockets): an end without its doorbells could not wake a peer that armed one (its async
/// receive would hang), so such an end is refused with an error that names what is missing.
#[test]
fn ring_end_needs_its_doorbells() {
    let _g = serial();
    let parts = || {
        let (c, d) = Channel::ring_pair().unwrap();
        let fds = c.into_fds().unwrap();
        let (kind, v) = fds.into_parts();
        assert_eq!(v.len(), 5, "tx ring, rx ring, socket, 2 doorbells");
        (kind, v, d)
    };
    let rebuild = |kind, v| Channel::from_fds(flowipc::channel::ChannelFds::from_parts(kind, v));

    let (kind, mut v, _d) = parts();
    v.truncate(3);
    let err = rebuild(kind, v).unwrap_err();
    assert!(err.to_string().contains("five descriptors"), "{err}");

    // A memfd where a doorbell belongs.
    let (kind, mut v, _d) = parts();
    v[3] = v[0].try_clone().unwrap();
    let err = rebuild(kind, v).unwrap_err();
    assert!(
        err.to_string().contains("not a Unix stream socket"),
        "{err}"
    );

    // An eventfd (what older ends used): a peer sharing it could jam its counter.
    let (kind, mut v, _d) = parts();
    v[4] = flowipc_sys::eventfd::eventfd(0, flowipc_sys::eventfd::EventfdFlags::NONBLOCK).unwrap();
    let err = rebuild(kind, v).unwrap_err();
    assert!(
        err.to_string().contains("not a Unix stream socket"),
        "{err}"
    );

    // All five intact: the end works.
    let (kind, v, d) = parts();
    let c = rebuild(kind, v).unwrap();
    runtime().block_on(traffic(c, d, false, 300));
}
