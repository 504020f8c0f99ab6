//! The gaps a new user hit (issue 12, problem 9): channel messages are flagged on the wire and
//! never shown as bytes, nothing received is lost by asking for the wrong kind, sends take a
//! timeout, the async face has every verb of the sync face, and `into_async` outside a runtime is
//! an error rather than a panic.

use std::time::{Duration, Instant};

use flowipc::channel::{Channel, ChannelOptions, RecvError, SendError};
use flowipc::Error;

type Pair = fn() -> (Channel, Channel);

fn socket() -> (Channel, Channel) {
    Channel::socket_pair().unwrap()
}

fn ring() -> (Channel, Channel) {
    Channel::ring_pair().unwrap()
}

/// A plain receive of a channel message gives `ChannelMessage` and keeps it for `recv_channel`;
/// `recv_channel` on an ordinary message gives `NotAChannel` and keeps it for `recv`.
fn nothing_is_lost_between_kinds(pair: Pair) {
    let (mut a, mut b) = pair();
    let (x, mut y) = Channel::socket_pair().unwrap();
    a.send(b"before").unwrap();
    a.send_channel(x).unwrap();
    a.send(b"after").unwrap();

    // recv_channel meets the ordinary message first: refused, kept.
    let err = b.recv_channel().unwrap_err();
    assert!(
        matches!(err, Error::Recv(RecvError::NotAChannel)),
        "{err:?}"
    );
    let mut buf = Vec::new();
    b.recv(&mut buf).unwrap();
    assert_eq!(buf, b"before");

    // A plain receive meets the channel: refused, no internal bytes, kept.
    buf.clear();
    assert!(matches!(b.recv(&mut buf), Err(RecvError::ChannelMessage)));
    assert!(buf.is_empty(), "internal bytes leaked: {buf:?}");
    assert!(matches!(
        b.try_recv(&mut buf),
        Err(RecvError::ChannelMessage)
    ));
    let mut x = b.recv_channel().unwrap();
    x.send(b"through x").unwrap();
    assert_eq!(y.recv_owned().unwrap().bytes, b"through x");

    b.recv(&mut buf).unwrap();
    assert_eq!(buf, b"after");
}

#[test]
fn socket_nothing_is_lost_between_kinds() {
    nothing_is_lost_between_kinds(socket);
}

#[test]
fn ring_nothing_is_lost_between_kinds() {
    nothing_is_lost_between_kinds(ring);
}

/// A received channel message also waits for `recv_channel` when met by an in-place receive.
#[test]
fn in_place_receive_keeps_a_channel_message() {
    let (mut a, mut b) = ring();
    let (x, _y) = Channel::socket_pair().unwrap();
    a.send_channel(x).unwrap();
    assert!(matches!(
        b.recv_in_place().map(|m| m.len()),
        Err(RecvError::ChannelMessage)
    ));
    b.recv_channel().unwrap();
}

/// `send_timeout` on a channel the peer does not drain ends with `TimedOut` near the deadline,
/// and the stream stays whole (nothing half sent).
fn send_timeout_times_out(pair: Pair, msg_len: usize) {
    let (mut a, mut b) = pair();
    let msg = vec![9u8; msg_len];
    let t0 = Instant::now();
    let mut sent = 0u32;
    let err = loop {
        match a.send_timeout(&msg, Duration::from_millis(50)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never filled");
    };
    assert!(matches!(err, SendError::TimedOut), "{err:?}");
    // Everything accepted arrives intact.
    let mut buf = Vec::new();
    for _ in 0..sent {
        b.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
        assert_eq!(buf, msg);
    }
    a.send(b"end").unwrap();
    b.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
    assert_eq!(buf, b"end");
}

#[test]
fn socket_send_timeout() {
    send_timeout_times_out(socket, 1000);
}

#[test]
fn ring_send_timeout() {
    send_timeout_times_out(
        || {
            ChannelOptions::new()
                .ring_capacity(4096)
                .ring_pair()
                .unwrap()
        },
        1000,
    );
}

#[test]
fn mq_send_timeout() {
    send_timeout_times_out(|| Channel::mq_pair().unwrap(), 100);
}

/// A ring end that was used cannot be handed over: a clear error, not an I/O error.
#[test]
fn used_ring_end_is_not_transferable() {
    let (mut boot, _peer) = socket();
    let (mut used, _other) = ring();
    used.send(b"x").unwrap();
    let err = boot.send_channel(used).unwrap_err();
    assert!(matches!(err, SendError::NotTransferable), "{err:?}");
    assert!(err.to_string().contains("before its first send"), "{err}");
}

/// Outside a runtime, and in a runtime without IO, `into_async` is an error, not a panic.
#[cfg(feature = "tokio")]
#[test]
fn into_async_without_a_runtime_is_an_error() {
    let (a, b) = socket();
    assert!(matches!(
        a.into_async(),
        Err(flowipc::channel::OpenError::NoRuntime)
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let err = b.into_async().unwrap_err();
    assert!(
        matches!(err, flowipc::channel::OpenError::NoRuntime),
        "{err:?}"
    );
    assert!(err.to_string().contains("enable_io"), "{err}");
}

/// The async face has the sync face's verbs: channels, timeouts.
#[cfg(feature = "tokio")]
#[test]
fn async_face_has_every_verb() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for pair in [socket as Pair, ring] {
            let (a, b) = pair();
            let (mut a, mut b) = (a.into_async().unwrap(), b.into_async().unwrap());
            let mut buf = Vec::new();
            assert!(matches!(
                b.recv_timeout(&mut buf, Duration::from_millis(20)).await,
                Err(RecvError::TimedOut)
            ));
            let (x, mut y) = Channel::socket_pair().unwrap();
            a.send(b"plain").await.unwrap();
            a.send_channel(x).await.unwrap();
            assert!(matches!(
                b.recv_channel().await,
                Err(Error::Recv(RecvError::NotAChannel))
            ));
            b.recv(&mut buf).await.unwrap();
            assert_eq!(buf, b"plain");
            let mut x = b.recv_channel().await.unwrap();
            x.send(b"via x").unwrap();
            assert_eq!(y.recv_owned().unwrap().bytes, b"via x");
            a.send_timeout(b"timed", Duration::from_secs(1))
                .await
                .unwrap();
            b.recv_timeout(&mut buf, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(buf, b"timed");
        }
    });
}
