//! Socket-transport channels: API behaviour in one process, stress and SIGKILL across processes.

mod channel_util;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use channel_util::*;
use flowipc::channel::{Channel, ChannelOptions, RecvError, SendError, TransportKind};

#[test]
fn socket_round_trip_sizes_and_fds() {
    let _g = serial();
    let (mut a, mut b) = Channel::socket_pair().unwrap();
    assert_eq!(a.kind(), TransportKind::Socket);
    let file = std::fs::File::open("/dev/null").unwrap();
    let mut buf = Vec::new();
    // Sizes around every internal boundary: header, scratch, read buffer, direct reads.
    let sizes = [
        0usize,
        1,
        7,
        8,
        9,
        4096,
        16376,
        16377,
        65535,
        65536,
        65537,
        200_000,
        3 << 20,
    ];
    let writer = std::thread::spawn(move || {
        let mut msg = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            fill(i as u64, len, &mut msg);
            let fds = if i % 2 == 0 {
                vec![file.as_fd()]
            } else {
                vec![]
            };
            a.send_with_fds(&msg, &fds).unwrap();
        }
        a.close().unwrap();
        a
    });
    for (i, &len) in sizes.iter().enumerate() {
        let meta = b.recv(&mut buf).unwrap();
        assert_eq!(meta.len, len);
        verify(i as u64, len, &buf).unwrap();
        assert_eq!(meta.fds.len(), usize::from(i % 2 == 0), "message {i}");
    }
    assert!(matches!(b.recv(&mut buf), Err(RecvError::Closed)));
    assert!(matches!(b.recv(&mut buf), Err(RecvError::Closed)));
    let mut a = writer.join().unwrap();
    assert!(matches!(a.send(b"x"), Err(SendError::Closed)));
    // b can still send to a after a closed its sending side.
    b.send(b"still open").unwrap();
    assert_eq!(a.recv_owned().unwrap().bytes, b"still open");
    drop(b);
    // Dropping without close still delivers an orderly close when it can.
    assert!(matches!(a.recv(&mut buf), Err(RecvError::Closed)));
}

#[test]
fn socket_nonblocking_and_timeouts() {
    let _g = serial();
    let (mut a, mut b) = Channel::socket_pair().unwrap();
    let mut buf = Vec::new();
    assert!(matches!(b.try_recv(&mut buf), Err(RecvError::WouldBlock)));
    let t = Instant::now();
    assert!(matches!(
        b.recv_timeout(&mut buf, Duration::from_millis(50)),
        Err(RecvError::TimedOut)
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    // Fill the socket in non-blocking mode until WouldBlock; memory stays bounded (at most one
    // partial message is copied).
    a.set_nonblocking(true);
    let big = vec![7u8; 100_000];
    let mut accepted = 0;
    loop {
        match a.send(&big) {
            Ok(()) => accepted += 1,
            Err(SendError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1000, "never blocked");
    }
    assert!(accepted >= 1);
    // Everything accepted arrives, in order, complete.
    b.set_nonblocking(true);
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < accepted {
        match b.recv(&mut buf) {
            Ok(meta) => {
                assert_eq!(meta.len, big.len());
                assert!(buf.iter().all(|&x| x == 7));
                got += 1;
            }
            Err(RecvError::WouldBlock) => {
                // Let a flush its pending remainder.
                let _ = a.try_flush();
                assert!(Instant::now() < deadline, "stalled at {got}/{accepted}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn socket_limits_are_checked_on_send() {
    let _g = serial();
    let (mut a, _b) = ChannelOptions::new()
        .max_message_size(10)
        .socket_pair()
        .unwrap();
    assert!(matches!(
        a.send(&[0; 11]),
        Err(SendError::TooLarge { len: 11, max: 10 })
    ));
    let f = std::fs::File::open("/dev/null").unwrap();
    let fds = vec![f.as_fd(); 254];
    assert!(matches!(
        a.send_with_fds(b"x", &fds),
        Err(SendError::TooManyFds { count: 254, .. })
    ));
    // The error message says what to do.
    let msg = a.send(&[0; 11]).unwrap_err().to_string();
    assert!(msg.contains("max_message_size"), "{msg}");
}

#[test]
fn socket_handover_in_process() {
    let _g = serial();
    let (mut boot_a, mut boot_b) = Channel::socket_pair().unwrap();
    let (x, mut y) = Channel::socket_pair().unwrap();
    boot_a.send_channel(x).unwrap();
    let mut x = boot_b.recv_channel().unwrap();
    x.send(b"through a handed-over channel").unwrap();
    assert_eq!(
        y.recv_owned().unwrap().bytes,
        b"through a handed-over channel"
    );
    // A message that is not a channel is refused.
    boot_a.send(b"nope").unwrap();
    assert!(boot_b.recv_channel().is_err());
}

#[test]
fn socket_stress() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    stress(
        "socket_stress",
        Channel::socket_pair().unwrap(),
        true,
        200_000,
    );
}

#[test]
fn socket_sigkill_mid_stream() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_mid_stream("socket_sigkill_mid_stream", || {
        Channel::socket_pair().unwrap()
    });
}

#[test]
fn socket_sigkill_blocked_recv() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_recv("socket_sigkill_blocked_recv", || {
        Channel::socket_pair().unwrap()
    });
}

#[test]
fn socket_sigkill_blocked_send() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_send("socket_sigkill_blocked_send", || {
        Channel::socket_pair().unwrap()
    });
}

/// Many messages queued before the receiver reads, through one reused buffer: reads then start
/// messages with the buffer large (the payload is scattered into it and what follows moved to the
/// read buffer) or small, descriptors come with messages that follow a scattered one in the same
/// read, and every message and descriptor arrives intact and in order.
#[test]
fn socket_coalesced_messages_through_reused_buffer() {
    let _g = serial();
    let (mut a, mut b) = Channel::socket_pair().unwrap();
    let sizes = [
        8192usize, 10, 5000, 0, 100, 70_000, 3, 4096, 4095, 20_000, 1, 130_000, 9000, 64,
    ];
    let rounds = 20;
    let writer = std::thread::spawn(move || {
        let mut msg = Vec::new();
        for i in 0..rounds * sizes.len() {
            let len = sizes[i % sizes.len()];
            fill(i as u64, len, &mut msg);
            if i % 3 == 1 {
                let ev = flowipc_sys::eventfd::eventfd(
                    i as u32,
                    flowipc_sys::eventfd::EventfdFlags::empty(),
                )
                .unwrap();
                a.send_with_fds(&msg, &[ev.as_fd()]).unwrap();
            } else {
                a.send(&msg).unwrap();
            }
        }
        a.close().unwrap();
    });
    // Let the writer queue a socket buffer's worth, so reads take several messages at once.
    std::thread::sleep(Duration::from_millis(50));
    let mut buf = Vec::new();
    for i in 0..rounds * sizes.len() {
        let len = sizes[i % sizes.len()];
        let meta = b.recv(&mut buf).unwrap();
        assert_eq!(meta.len, len, "message {i}");
        assert_eq!(buf.len(), len, "message {i}");
        verify(i as u64, len, &buf).unwrap();
        if i % 3 == 1 {
            assert_eq!(meta.fds.len(), 1, "message {i}");
            let value = flowipc_sys::eventfd::eventfd_read(meta.fds[0].as_fd()).unwrap();
            assert_eq!(
                value, i as u64,
                "message {i} carried another message's descriptor"
            );
        } else {
            assert!(meta.fds.is_empty(), "message {i}");
        }
    }
    assert!(matches!(b.recv(&mut buf), Err(RecvError::Closed)));
    writer.join().unwrap();
}

/// A channel over a socket that is itself non-blocking still blocks in `recv` and `send` (it
/// falls back to waiting in `poll`), and a message larger than the socket buffer goes through.
#[test]
fn socket_blocking_api_on_a_nonblocking_socket() {
    let _g = serial();
    let (x, y) = flowipc_sys::socket::socketpair_stream().unwrap();
    flowipc_sys::socket::set_nonblocking(x.as_fd(), true).unwrap();
    flowipc_sys::socket::set_nonblocking(y.as_fd(), true).unwrap();
    let mut a = Channel::from_socket(x);
    let mut b = Channel::from_socket(y);
    let big = vec![0x5Au8; 3 << 20];
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        a.send(&big).unwrap();
        a.send(b"after").unwrap();
        a
    });
    let t = Instant::now();
    let mut buf = Vec::new();
    let meta = b.recv(&mut buf).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(40));
    assert_eq!(meta.len, 3 << 20);
    assert!(buf.iter().all(|&x| x == 0x5A));
    assert_eq!(b.recv_owned().unwrap().bytes, b"after");
    let mut a = writer.join().unwrap();
    // Nothing queued: a timed receive times out instead of blocking.
    assert!(matches!(
        a.recv_timeout(&mut buf, Duration::from_millis(20)),
        Err(RecvError::TimedOut)
    ));
}
