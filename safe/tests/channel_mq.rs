//! POSIX-mq channels: chunking, limits, stress and SIGKILL across processes.
//!
//! The per-user mq budget here holds about nine queues (four channels), so these tests run one at a
//! time and retry creation while other tests hold queues.

mod channel_util;

use std::os::fd::AsFd;

use channel_util::*;
use flowipc::channel::{Channel, ChannelOptions, OpenError, RecvError, SendError, TransportKind};

#[test]
fn mq_round_trip_and_close() {
    let _g = serial();
    let (mut a, mut b) = retry_mq(Channel::mq_pair);
    assert_eq!(a.kind(), TransportKind::Mq);
    let sizes = [0usize, 1, 8175, 8176, 8177, 100_000, 1 << 20];
    let writer = std::thread::spawn(move || {
        let mut msg = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            fill(i as u64, len, &mut msg);
            a.send(&msg).unwrap();
        }
        a.close().unwrap();
        a
    });
    let mut buf = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        b.recv(&mut buf).unwrap();
        verify(i as u64, len, &buf).unwrap();
    }
    assert!(matches!(b.recv(&mut buf), Err(RecvError::Closed)));
    let mut a = writer.join().unwrap();
    // Descriptors are refused, with advice.
    let f = std::fs::File::open("/dev/null").unwrap();
    let err = b.send_with_fds(b"x", &[f.as_fd()]).unwrap_err();
    assert!(matches!(err, SendError::FdsUnsupported), "{err:?}");
    b.send(b"reply").unwrap();
    assert_eq!(a.recv_owned().unwrap().bytes, b"reply");
    drop(b);
    assert!(matches!(a.recv(&mut buf), Err(RecvError::Closed)));
}

#[test]
fn mq_nonblocking_backpressure() {
    let _g = serial();
    let (mut a, mut b) = retry_mq(|| ChannelOptions::new().mq_max_messages(4).mq_pair());
    a.set_nonblocking(true);
    let mut accepted = 0;
    loop {
        match a.send(&[9u8; 1000]) {
            Ok(()) => accepted += 1,
            Err(SendError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        accepted, 4,
        "a queue of 4 messages takes 4 one-chunk messages"
    );
    let mut buf = Vec::new();
    for _ in 0..4 {
        b.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [9u8; 1000]);
    }
    assert!(matches!(b.try_recv(&mut buf), Err(RecvError::WouldBlock)));
}

#[test]
fn mq_limit_error_says_what_to_do() {
    let _g = serial();
    // Larger than msgsize_max (8192 here) for an unprivileged user.
    match ChannelOptions::new().mq_message_size(1 << 24).mq_pair() {
        Err(e @ OpenError::MqLimit { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/proc/sys/fs/mqueue"), "{msg}");
            assert!(msg.contains("socket or ring transport"), "{msg}");
        }
        Err(other) => panic!("expected MqLimit, got {other}"),
        Ok(_) => eprintln!("this user may create 16 MiB mq messages; nothing to check"),
    }
}

#[test]
fn mq_stress() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    stress("mq_stress", retry_mq(Channel::mq_pair), false, 100_000);
}

#[test]
fn mq_sigkill_mid_stream() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_mid_stream("mq_sigkill_mid_stream", || retry_mq(Channel::mq_pair));
}

#[test]
fn mq_sigkill_blocked_recv() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_recv("mq_sigkill_blocked_recv", || retry_mq(Channel::mq_pair));
}

#[test]
fn mq_sigkill_blocked_send() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_send("mq_sigkill_blocked_send", || retry_mq(Channel::mq_pair));
}
