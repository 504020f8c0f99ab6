//! Shared-memory ring channels: framing across the ring's frame limit, descriptors over the
//! companion socket, stress and SIGKILL across processes.

mod channel_util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use channel_util::*;
use flowipc::channel::{Channel, ChannelOptions, RecvError, SendError, TransportKind, WaitPolicy};

#[test]
fn ring_round_trip_sizes_fds_and_close() {
    let _g = serial();
    let (mut a, mut b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    assert_eq!(a.kind(), TransportKind::Ring);
    let file = std::fs::File::open("/dev/null").unwrap();
    // Around the frame limit (32 KiB - 8) and the chunk size (16 KiB), and far beyond the ring.
    let sizes = [
        0usize,
        1,
        8,
        16376,
        16384,
        32759,
        32760,
        32761,
        100_000,
        3 << 20,
    ];
    let writer = std::thread::spawn(move || {
        let mut msg = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            fill(i as u64, len, &mut msg);
            let fds = if i % 3 == 0 {
                vec![file.as_fd(); 3]
            } else {
                vec![]
            };
            a.send_with_fds(&msg, &fds).unwrap();
        }
        a.close().unwrap();
        a
    });
    let mut buf = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let meta = b.recv(&mut buf).unwrap();
        verify(i as u64, len, &buf).unwrap();
        assert_eq!(
            meta.fds.len(),
            if i % 3 == 0 { 3 } else { 0 },
            "message {i}"
        );
    }
    assert!(matches!(b.recv(&mut buf), Err(RecvError::Closed)));
    let mut a = writer.join().unwrap();
    assert!(matches!(a.send(b"x"), Err(SendError::Closed)));
    b.send(b"back").unwrap();
    assert_eq!(a.recv_owned().unwrap().bytes, b"back");
    drop(b);
    assert!(matches!(a.recv(&mut buf), Err(RecvError::Closed)));
}

#[test]
fn ring_nonblocking_and_timeout() {
    let _g = serial();
    let (mut a, mut b) = ChannelOptions::new()
        .ring_capacity(16 * 1024)
        .wait_policy(WaitPolicy::Block)
        .ring_pair()
        .unwrap();
    let mut buf = Vec::new();
    assert!(matches!(b.try_recv(&mut buf), Err(RecvError::WouldBlock)));
    let t = Instant::now();
    assert!(matches!(
        b.recv_timeout(&mut buf, Duration::from_millis(30)),
        Err(RecvError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    a.set_nonblocking(true);
    let mut accepted = 0;
    loop {
        match a.send(&[3u8; 1000]) {
            Ok(()) => accepted += 1,
            Err(SendError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 100, "never blocked");
    }
    for _ in 0..accepted {
        b.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [3u8; 1000]);
    }
    assert!(matches!(b.try_recv(&mut buf), Err(RecvError::WouldBlock)));
}

#[test]
fn ring_handover_in_process() {
    let _g = serial();
    let (mut boot_a, mut boot_b) = Channel::socket_pair().unwrap();
    let (x, mut y) = Channel::ring_pair().unwrap();
    boot_a.send_channel(x).unwrap();
    let mut x = boot_b.recv_channel().unwrap();
    assert_eq!(x.kind(), TransportKind::Ring);
    x.send(b"over a handed-over ring").unwrap();
    assert_eq!(y.recv_owned().unwrap().bytes, b"over a handed-over ring");
    y.send(b"and back").unwrap();
    assert_eq!(x.recv_owned().unwrap().bytes, b"and back");
}

#[test]
fn ring_stress() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    stress("ring_stress", Channel::ring_pair().unwrap(), true, 200_000);
}

#[test]
fn ring_sigkill_mid_stream() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_mid_stream("ring_sigkill_mid_stream", || Channel::ring_pair().unwrap());
}

#[test]
fn ring_sigkill_blocked_recv() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_recv("ring_sigkill_blocked_recv", || {
        Channel::ring_pair().unwrap()
    });
}

#[test]
fn ring_sigkill_blocked_send() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_send("ring_sigkill_blocked_send", || {
        Channel::ring_pair().unwrap()
    });
}

#[test]
fn ring_split_after_use() {
    let _g = serial();
    let (mut a, mut b) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    a.send(b"before the split").unwrap();
    assert_eq!(b.recv_owned().unwrap().bytes, b"before the split");
    b.send(b"queued before the split").unwrap();
    let (mut tx, mut rx) = a.split().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = Vec::new();
        while b.recv(&mut buf).is_ok() {
            b.send(&buf).unwrap();
        }
        // A drop writes the close marker only if it fits at once (the ring may be full of
        // echoes); `close` waits for room, so the reader is sure to see `Closed`.
        b.close().unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf, b"queued before the split");
        for i in 0..1000u64 {
            rx.recv(&mut buf).unwrap();
            verify(i, 40_000, &buf).unwrap();
        }
        let end = rx.recv(&mut buf);
        assert!(matches!(end, Err(RecvError::Closed)), "{end:?}");
    });
    let mut msg = Vec::new();
    for i in 0..1000u64 {
        fill(i, 40_000, &mut msg);
        tx.send(&msg).unwrap();
    }
    tx.close().unwrap();
    reader.join().unwrap();
    drop(tx);
    echo.join().unwrap();
}
