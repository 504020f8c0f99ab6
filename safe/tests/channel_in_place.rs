//! `send_in_place` / `recv_in_place` on every transport: in place on the ring for one-frame
//! messages, through the channel's buffer otherwise; mixed with copying calls; non-blocking;
//! hostile frames; real processes (stress and SIGKILL).

mod channel_util;

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;

use channel_util::*;
use flowipc::channel::{Channel, ChannelOptions, RecvError, SendError};

/// Sizes around the ring's one-frame limit (`max_frame`, half the ring) and past it, all small
/// enough to be sent before the same thread receives them.
fn sizes(max_frame: usize) -> Vec<usize> {
    vec![
        0,
        1,
        7,
        100,
        4096,
        max_frame - 1,
        max_frame,
        max_frame + 1,
        max_frame + max_frame / 2 + 5,
    ]
}

/// Largest one-frame message of a ring channel of `capacity` bytes.
fn max_frame(capacity: usize) -> usize {
    flowipc::ring::max_payload(capacity)
}

/// Every size goes both ways, alternating in-place and copying calls on each side; checks content,
/// descriptors and where each message was built and read.
fn round_trip(mut a: Channel, mut b: Channel, ring_frame: Option<usize>, fds: bool) {
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    // Without a ring, sizes around 8 KiB: everything sent before the same thread receives it
    // must fit the kernel's buffers (an mq holds 10 messages of 8 KiB here).
    let max = ring_frame.unwrap_or(8 * 1024);
    let mut buf = Vec::new();
    for (i, len) in sizes(max).into_iter().enumerate() {
        let mut msg = Vec::new();
        fill(i as u64, len, &mut msg);
        let attach: Vec<_> = if fds && i % 2 == 0 {
            vec![file.as_fd()]
        } else {
            vec![]
        };
        let one_frame = ring_frame.is_some_and(|m| len <= m);
        // a -> b in place on both sides.
        let built_in_place = a
            .send_in_place_with_fds(len, &attach, |w| {
                assert_eq!(w.len(), len);
                w.write_all(&msg).unwrap();
                assert_eq!(w.position(), len);
                // The cursor stops at the end of the message.
                assert_eq!(w.write(b"x").unwrap(), 0);
                w.is_in_place()
            })
            .unwrap();
        assert_eq!(built_in_place, one_frame, "built in place, {len} bytes");
        {
            let mut got = b.recv_in_place().unwrap();
            assert_eq!(got.is_in_place(), one_frame, "read in place, {len} bytes");
            assert_eq!(got.len(), len);
            assert_eq!(got.fds().len(), attach.len());
            verify(i as u64, len, &got.to_vec()).unwrap();
            let mut tail = [0u8; 3];
            let from = len.saturating_sub(2);
            assert_eq!(got.read_at(from, &mut tail), len - from);
            assert_eq!(got.read_at(len + 10, &mut tail), 0);
            let mut all = Vec::new();
            got.read_to_end(&mut all).unwrap();
            assert_eq!(all, msg);
            let taken = got.take_fds();
            assert_eq!(taken.len(), attach.len());
            assert!(got.fds().is_empty());
        }
        // b -> a: copied out, read in place; then in place, copied in.
        b.send_with_fds(&msg, &attach).unwrap();
        let got = a.recv_in_place().unwrap();
        assert_eq!((got.to_vec(), got.fds().len()), (msg.clone(), attach.len()));
        drop(got);
        b.send_in_place(len, |w| w.write_at(0, &msg)).unwrap();
        let meta = a.recv(&mut buf).unwrap();
        assert_eq!((meta.len, buf.as_slice()), (len, msg.as_slice()));
    }
    a.close().unwrap();
    assert!(matches!(b.recv_in_place(), Err(RecvError::Closed)));
}

#[test]
fn in_place_ring_round_trip() {
    let _g = serial();
    let cap = 64 * 1024;
    let (a, b) = ChannelOptions::new()
        .ring_capacity(cap)
        .ring_pair()
        .unwrap();
    round_trip(a, b, Some(max_frame(cap)), true);
}

#[test]
fn in_place_socket_round_trip() {
    let _g = serial();
    let (a, b) = Channel::socket_pair().unwrap();
    round_trip(a, b, None, true);
}

#[test]
fn in_place_mq_round_trip() {
    let _g = serial();
    let (a, b) = retry_mq(Channel::mq_pair);
    round_trip(a, b, None, false);
}

#[test]
fn in_place_too_large_and_fds_refused_before_building() {
    let _g = serial();
    let (mut a, _b) = ChannelOptions::new()
        .max_message_size(1000)
        .ring_pair()
        .unwrap();
    let mut called = false;
    let err = a.send_in_place(1001, |_| called = true).unwrap_err();
    assert!(
        matches!(
            err,
            SendError::TooLarge {
                len: 1001,
                max: 1000
            }
        ),
        "{err:?}"
    );
    assert!(!called);
}

#[test]
fn in_place_nonblocking_full_ring_and_held_frame() {
    let _g = serial();
    let cap = 4096;
    let (mut a, mut b) = ChannelOptions::new()
        .ring_capacity(cap)
        .ring_pair()
        .unwrap();
    a.set_nonblocking(true);
    b.set_nonblocking(true);
    assert!(matches!(b.recv_in_place(), Err(RecvError::WouldBlock)));
    let mut sent = 0u64;
    loop {
        let mut called = false;
        match a.send_in_place(500, |w| {
            called = true;
            w.write_at(0, &sent.to_le_bytes());
        }) {
            Ok(()) => sent += 1,
            Err(SendError::WouldBlock) => {
                // The ring had no room, so nothing was built.
                assert!(!called);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent >= 4, "only {sent} 500-byte messages fit a 4 KiB ring");
    // A message being read holds its frame: the ring stays full until it is dropped.
    let held = b.recv_in_place().unwrap();
    assert!(held.is_in_place());
    let mut seq = [0u8; 8];
    held.read_at(0, &mut seq);
    assert_eq!(u64::from_le_bytes(seq), 0);
    drop(held);
    a.send_in_place(500, |w| w.write_at(0, &sent.to_le_bytes()))
        .unwrap();
    for want in 1..=sent {
        let got = b.recv_in_place().unwrap();
        got.read_at(0, &mut seq);
        assert_eq!(u64::from_le_bytes(seq), want);
    }
    assert!(matches!(b.try_recv_in_place(), Err(RecvError::WouldBlock)));
}

/// A blocked `send_in_place` resumes when the reader frees a frame; a blocked `recv_in_place`
/// when the writer publishes one.
#[test]
fn in_place_blocking_across_threads() {
    let _g = serial();
    let (mut a, mut b) = ChannelOptions::new()
        .ring_capacity(16 * 1024)
        .ring_pair()
        .unwrap();
    let n = 20_000u64;
    let reader = std::thread::spawn(move || {
        for i in 0..n {
            let got = b.recv_in_place().unwrap();
            let len = (i as usize * 37) % 3000;
            assert_eq!(got.len(), len);
            verify(i, len, &got.to_vec()).unwrap();
        }
        assert!(matches!(b.recv_in_place(), Err(RecvError::Closed)));
    });
    let mut msg = Vec::new();
    for i in 0..n {
        let len = (i as usize * 37) % 3000;
        fill(i, len, &mut msg);
        a.send_in_place(len, |w| w.write_at(0, &msg)).unwrap();
    }
    a.close().unwrap();
    reader.join().unwrap();
}

#[test]
fn in_place_ring_stress() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    stress_in_place(
        "in_place_ring_stress",
        Channel::ring_pair().unwrap(),
        true,
        100_000,
    );
}

#[test]
fn in_place_socket_stress() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    stress_in_place(
        "in_place_socket_stress",
        Channel::socket_pair().unwrap(),
        true,
        20_000,
    );
}

/// The parent blocks in `recv_in_place` on an idle child, which is SIGKILLed.
#[test]
fn in_place_sigkill_blocked_recv() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_recv_with(
        "in_place_sigkill_blocked_recv",
        || Channel::ring_pair().unwrap(),
        |ch| ch.recv_in_place().unwrap_err(),
    );
}

/// The parent blocks in `send_in_place` on a full ring to an idle child, which is SIGKILLed.
#[test]
fn in_place_sigkill_blocked_send() {
    if let Some(role) = role() {
        return child_main(&role);
    }
    let _g = serial();
    kill_blocked_send_with(
        "in_place_sigkill_blocked_send",
        || {
            ChannelOptions::new()
                .ring_capacity(64 * 1024)
                .ring_pair()
                .unwrap()
        },
        |ch| ch.send_in_place(8 * 1024, |w| w.write_at(0, &[1; 8])),
    );
}

/// A ring channel whose peer is raw: the sending side of the channel's receive ring and the other
/// end of the companion socket.
fn raw_peer(cap: usize) -> (Channel, flowipc::ring::RingSender, std::os::fd::OwnedFd) {
    use flowipc::channel::{ChannelFds, TransportKind};
    use flowipc::ring::ShmRing;
    let tx_ring = ShmRing::create(cap).unwrap();
    let rx_ring = ShmRing::create(cap).unwrap();
    let (sock, peer_sock) = flowipc_sys::socket::socketpair_stream().unwrap();
    let dup = |fd| flowipc_sys::fd::dup_cloexec(fd).unwrap();
    let (bell_tx, _peer_bell_tx) = flowipc_sys::wake::pair().unwrap();
    let (bell_rx, _peer_bell_rx) = flowipc_sys::wake::pair().unwrap();
    let fds = ChannelFds::from_parts(
        TransportKind::Ring,
        vec![dup(tx_ring.fd()), dup(rx_ring.fd()), sock, bell_tx, bell_rx],
    );
    let ch = ChannelOptions::new()
        .max_message_size(1000)
        .from_fds(fds)
        .unwrap();
    (ch, rx_ring.sender().unwrap(), peer_sock)
}

/// What the peer claims in a one-frame message is checked before it is handed out in place;
/// a failure poisons the channel and closes what arrived.
#[test]
fn in_place_hostile_frames() {
    const FIRST_LAST: u16 = 0x03;
    let _g = serial();
    let before = open_fds();
    {
        // Declares two descriptors, none on the socket.
        let (mut ch, mut tx, _sock) = raw_peer(4096);
        tx.try_send_tagged(b"abc", FIRST_LAST | (2 << 8)).unwrap();
        let err = ch.recv_in_place().unwrap_err();
        assert!(matches!(err, RecvError::Corrupt(_)), "{err:?}");
        assert!(matches!(ch.recv_in_place(), Err(RecvError::Poisoned)));
    }
    {
        // Longer than max_message_size, in one frame.
        let (mut ch, mut tx, _sock) = raw_peer(4096);
        tx.try_send_tagged(&[7; 1001], FIRST_LAST).unwrap();
        assert!(matches!(ch.recv_in_place(), Err(RecvError::Corrupt(_))));
    }
    {
        // Unknown flag bits; then a well-formed message is never reached.
        let (mut ch, mut tx, _sock) = raw_peer(4096);
        tx.try_send_tagged(b"x", FIRST_LAST | 0x10).unwrap();
        tx.try_send_tagged(b"ok", FIRST_LAST).unwrap();
        assert!(matches!(ch.recv_in_place(), Err(RecvError::Corrupt(_))));
        assert!(matches!(ch.try_recv_in_place(), Err(RecvError::Poisoned)));
    }
    {
        // Descriptors sent with a different count than declared are closed.
        let (mut ch, mut tx, sock) = raw_peer(4096);
        let files: Vec<_> = (0..3)
            .map(|_| std::fs::File::open("/proc/self/exe").unwrap())
            .collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        flowipc_sys::socket::send_with_fds(
            sock.as_fd(),
            &[0],
            &fds,
            flowipc_sys::socket::SendFlags::DONTWAIT,
        )
        .unwrap();
        tx.try_send_tagged(b"abc", FIRST_LAST | (1 << 8)).unwrap();
        assert!(matches!(ch.recv_in_place(), Err(RecvError::Corrupt(_))));
    }
    {
        // A valid message, read in place, then the peer dies without closing.
        let (mut ch, mut tx, sock) = raw_peer(4096);
        tx.try_send_tagged(b"fine", FIRST_LAST).unwrap();
        assert_eq!(ch.recv_in_place().unwrap().to_vec(), b"fine");
        drop(tx);
        drop(sock);
        assert!(matches!(ch.recv_in_place(), Err(RecvError::PeerGone)));
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}

/// A request read in place is held by the receiving half while the sending half builds the
/// reply from it, in place, chunk by chunk: the request is never copied out whole, and its frame
/// stays in the ring until the reply is sent.
#[test]
fn reply_built_from_a_held_request() {
    let _g = serial();
    let cap = 64 * 1024;
    let (mut a, b) = ChannelOptions::new()
        .ring_capacity(cap)
        .ring_pair()
        .unwrap();
    let (mut btx, mut brx) = b.split().unwrap();
    for (i, len) in [0usize, 1, 100, 4096, max_frame(cap)]
        .into_iter()
        .enumerate()
    {
        let mut req = Vec::new();
        fill(i as u64, len, &mut req);
        a.send(&req).unwrap();
        let held = brx.recv_in_place().unwrap();
        assert!(
            held.is_in_place(),
            "a one-frame request is read where it lies"
        );
        assert_eq!(held.len(), len);
        let built = btx
            .send_in_place(len, |w| {
                assert!(w.is_in_place());
                let mut chunk = [0u8; 256];
                let mut at = 0;
                while at < len {
                    let n = held.read_at(at, &mut chunk);
                    assert!(n > 0, "read_at stops short at {at} of {len}");
                    chunk[..n].iter_mut().for_each(|x| *x = !*x);
                    w.write_at(at, &chunk[..n]);
                    at += n;
                }
                at
            })
            .unwrap();
        assert_eq!(built, len);
        drop(held);
        let reply = a.recv_owned().unwrap().bytes;
        assert_eq!(reply.len(), len);
        assert!(
            reply.iter().zip(&req).all(|(r, q)| *r == !*q),
            "reply {i} is not the request inverted"
        );
    }
}
