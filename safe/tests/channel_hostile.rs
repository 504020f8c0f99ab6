//! A hostile peer: forged lengths, wrong descriptor counts, truncated control messages, invalid
//! chunk sequences. Each must give an error value on the channel, close every descriptor that
//! arrived, and leak nothing (counted in /proc/self/fd).

mod channel_util;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use channel_util::*;
use flowipc::channel::{
    Channel, ChannelFds, ChannelOptions, Corruption, RecvError, SendError, TransportKind,
};
use flowipc_sys::socket::{self, SendFlags};

/// A channel whose peer is a raw socket the test writes forged bytes into.
fn socket_victim(opts: ChannelOptions) -> (Channel, OwnedFd) {
    let (a, b) = socket::socketpair_stream().unwrap();
    (opts.from_socket(a), b)
}

fn header(kind: u8, len: u64, nfds: u8) -> [u8; 8] {
    ((u64::from(kind) << 56) | (u64::from(nfds) << 48) | len).to_le_bytes()
}

fn raw_send(sock: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let n = socket::send_with_fds(sock.as_fd(), bytes, fds, SendFlags::empty()).unwrap();
    assert_eq!(n, bytes.len());
}

/// Runs `attack` against a fresh socket channel and checks the outcome, the poisoning and the
/// descriptor count.
fn socket_case(
    name: &str,
    opts: ChannelOptions,
    attack: impl FnOnce(&OwnedFd, &[BorrowedFd<'_>]),
    check: impl FnOnce(&RecvError) -> bool,
) {
    let files: Vec<std::fs::File> = (0..12)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    let before = open_fds();
    let (mut ch, raw) = socket_victim(opts);
    attack(&raw, &fds);
    let mut buf = Vec::new();
    let err = ch.recv(&mut buf).unwrap_err();
    assert!(check(&err), "{name}: unexpected error {err:?}");
    // Every descriptor that arrived is already closed: only the two socket ends are new.
    assert_eq!(
        open_fds(),
        before + 2,
        "{name}: received descriptors left open"
    );
    // The channel is poisoned, for receiving and sending.
    assert!(
        matches!(ch.recv(&mut buf), Err(RecvError::Poisoned)),
        "{name}"
    );
    assert!(matches!(ch.send(b"x"), Err(SendError::Poisoned)), "{name}");
    drop((ch, raw));
    assert_eq!(open_fds(), before, "{name}: leaked descriptors");
    eprintln!("{name}: {err}");
}

#[test]
fn hostile_socket_peer() {
    let _g = serial();
    const DATA: u8 = 0xD1;

    socket_case(
        "forged length",
        ChannelOptions::new(),
        |raw, _| raw_send(raw, &header(DATA, 1 << 40, 0), &[]),
        |e| matches!(e, RecvError::Corrupt(Corruption::TooLarge { claimed, .. }) if *claimed == 1 << 40),
    );
    socket_case(
        "length over a configured limit",
        ChannelOptions::new().max_message_size(1000),
        |raw, _| raw_send(raw, &header(DATA, 1001, 0), &[]),
        |e| matches!(e, RecvError::Corrupt(Corruption::TooLarge { .. })),
    );
    socket_case(
        "garbage header",
        ChannelOptions::new(),
        |raw, _| raw_send(raw, b"GET / HTTP/1.1\r\n", &[]),
        |e| matches!(e, RecvError::Corrupt(Corruption::BadHeader(_))),
    );
    socket_case(
        "too many descriptors declared",
        ChannelOptions::new().max_fds_per_message(4),
        |raw, fds| {
            let mut m = header(DATA, 1, 5).to_vec();
            m.push(0);
            raw_send(raw, &m, &fds[..5]);
        },
        |e| {
            matches!(
                e,
                RecvError::Corrupt(Corruption::TooManyFds { .. } | Corruption::FdsTruncated)
            )
        },
    );
    socket_case(
        "truncated control message (more descriptors than the receiver accepts)",
        ChannelOptions::new().max_fds_per_message(4),
        |raw, fds| {
            let mut m = header(DATA, 1, 4).to_vec();
            m.push(0);
            raw_send(raw, &m, &fds[..10]);
        },
        |e| matches!(e, RecvError::Corrupt(Corruption::FdsTruncated)),
    );
    socket_case(
        "descriptors on a message declaring none",
        ChannelOptions::new(),
        |raw, fds| {
            let mut m = header(DATA, 3, 0).to_vec();
            m.extend_from_slice(b"abc");
            raw_send(raw, &m, &fds[..3]);
        },
        |e| matches!(e, RecvError::Corrupt(Corruption::UnexpectedFds)),
    );
    socket_case(
        "fewer descriptors than declared",
        ChannelOptions::new(),
        |raw, fds| {
            let mut m = header(DATA, 3, 5).to_vec();
            m.extend_from_slice(b"abc");
            raw_send(raw, &m, &fds[..2]);
        },
        |e| {
            matches!(
                e,
                RecvError::Corrupt(Corruption::FdCountMismatch {
                    declared: 5,
                    arrived: 2
                })
            )
        },
    );
    socket_case(
        "descriptors in the middle of a payload",
        ChannelOptions::new(),
        |raw, fds| {
            raw_send(raw, &header(DATA, 100_000, 0), &[]);
            raw_send(raw, &[1u8; 30_000], &[]);
            raw_send(raw, &[2u8; 30_000], &fds[..3]);
        },
        |e| matches!(e, RecvError::Corrupt(Corruption::UnexpectedFds)),
    );
    // A message cut off by the peer's death: PeerGone (not corruption), nothing leaked.
    let before = open_fds();
    let (mut ch, raw) = socket_victim(ChannelOptions::new());
    raw_send(&raw, &header(DATA, 512 << 20, 0), &[]);
    raw_send(&raw, &[0u8; 10], &[]);
    drop(raw);
    let mut buf = Vec::new();
    assert!(matches!(ch.recv(&mut buf), Err(RecvError::PeerGone)));
    drop(ch);
    assert_eq!(open_fds(), before, "cut-off message: leaked descriptors");
}

/// The attacks again on a channel whose message buffer is already large (a valid 8 KiB message
/// was received into it first), so that the hostile read is scattered into that buffer: the
/// outcome, the poisoning and the descriptor count are as for a fresh channel.
#[test]
fn hostile_socket_peer_scattered_reads() {
    let _g = serial();
    const DATA: u8 = 0xD1;
    let files: Vec<std::fs::File> = (0..6)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    type Attack = fn(&OwnedFd, &[BorrowedFd<'_>]);
    type Check = fn(&RecvError) -> bool;
    let cases: [(&str, Attack, Check); 5] = [
        (
            "descriptors on a message declaring none, payload in the message buffer",
            |raw, fds| {
                let mut m = header(DATA, 6000, 0).to_vec();
                m.extend_from_slice(&[3u8; 6000]);
                raw_send(raw, &m, &fds[..2]);
            },
            |e| matches!(e, RecvError::Corrupt(Corruption::UnexpectedFds)),
        ),
        (
            "a short message, then descriptors declared by none in the same read",
            |raw, fds| {
                let mut m = header(DATA, 4, 0).to_vec();
                m.extend_from_slice(b"abcd");
                m.extend_from_slice(&header(DATA, 5000, 0));
                m.extend_from_slice(&[4u8; 5000]);
                raw_send(raw, &m, &fds[..3]);
            },
            |e| matches!(e, RecvError::Corrupt(Corruption::UnexpectedFds)),
        ),
        (
            "forged length with the payload scattered",
            |raw, _| {
                let mut m = header(DATA, 1 << 41, 0).to_vec();
                m.extend_from_slice(&[5u8; 7000]);
                raw_send(raw, &m, &[]);
            },
            |e| matches!(e, RecvError::Corrupt(Corruption::TooLarge { .. })),
        ),
        (
            "garbage after a valid message in the same read",
            |raw, _| {
                let mut m = header(DATA, 10, 0).to_vec();
                m.extend_from_slice(&[6u8; 10]);
                m.extend_from_slice(b"not a header at all");
                raw_send(raw, &m, &[]);
            },
            |e| matches!(e, RecvError::Corrupt(Corruption::BadHeader(_))),
        ),
        (
            "descriptors in the middle of a payload that started scattered",
            |raw, fds| {
                raw_send(raw, &header(DATA, 300_000, 0), &[]);
                raw_send(raw, &[7u8; 9000], &[]);
                raw_send(raw, &[8u8; 200_000], &fds[..2]);
            },
            |e| matches!(e, RecvError::Corrupt(Corruption::UnexpectedFds)),
        ),
    ];
    for (name, attack, check) in cases {
        let before = open_fds();
        let (mut ch, raw) = socket_victim(ChannelOptions::new());
        let mut m = header(DATA, 8192, 0).to_vec();
        m.extend_from_slice(&[1u8; 8192]);
        raw_send(&raw, &m, &[]);
        let mut buf = Vec::new();
        assert_eq!(ch.recv(&mut buf).unwrap().len, 8192, "{name}");
        attack(&raw, &fds);
        // Valid messages ahead of the attack are delivered; the attack itself is an error.
        let err = loop {
            match ch.recv(&mut buf) {
                Ok(meta) => assert!(meta.fds.is_empty(), "{name}: descriptors handed out"),
                Err(e) => break e,
            }
        };
        assert!(check(&err), "{name}: unexpected error {err:?}");
        assert_eq!(
            open_fds(),
            before + 2,
            "{name}: received descriptors left open"
        );
        assert!(
            matches!(ch.recv(&mut buf), Err(RecvError::Poisoned)),
            "{name}"
        );
        drop((ch, raw));
        assert_eq!(open_fds(), before, "{name}: leaked descriptors");
    }
}

/// The forged-length case again, checking that no memory of the claimed size is allocated: a
/// 1 GiB claim followed by a few bytes must not make the process grow by a gigabyte.
#[test]
fn hostile_length_allocates_only_what_arrives() {
    let _g = serial();
    let (mut ch, raw) = socket_victim(ChannelOptions::new());
    raw_send(&raw, &header(0xD1, (1 << 30) - 1, 0), &[]);
    raw_send(&raw, &[5u8; 100_000], &[]);
    ch.set_nonblocking(true);
    let mut buf = Vec::new();
    assert!(matches!(ch.recv(&mut buf), Err(RecvError::WouldBlock)));
    // VmData counts reserved (not only touched) private memory, so a `with_capacity` of the
    // claimed size would show as well as a zero-filled one.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let data_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmData:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        data_kib < 512 * 1024,
        "VmData {data_kib} KiB after a 1 GiB claim"
    );
    eprintln!("VmData after a 1 GiB claim and 100 kB of data: {data_kib} KiB");
}

/// Forged chunk sequences written straight into an mq channel's queue.
#[test]
fn hostile_mq_chunks() {
    let _g = serial();
    fn chunk(flags: u8, nfds: u8, index: u32, total: u64, payload: &[u8]) -> Vec<u8> {
        let mut c = vec![flags, 0x4D, nfds, 0];
        c.extend_from_slice(&index.to_le_bytes());
        c.extend_from_slice(&total.to_le_bytes());
        c.extend_from_slice(payload);
        c
    }
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "continuation without a first chunk",
            vec![chunk(0, 0, 1, 10, b"abc")],
        ),
        (
            "chunk index skipped",
            vec![chunk(1, 0, 0, 10, b"abc"), chunk(2, 0, 2, 10, b"defghij")],
        ),
        (
            "new message inside a message",
            vec![chunk(1, 0, 0, 10, b"abc"), chunk(1, 0, 0, 10, b"abc")],
        ),
        (
            "total changes",
            vec![chunk(1, 0, 0, 10, b"abc"), chunk(2, 0, 1, 11, b"defghij")],
        ),
        ("more bytes than the total", vec![chunk(3, 0, 0, 2, b"abc")]),
        ("last chunk too early", vec![chunk(3, 0, 0, 10, b"abc")]),
        ("forged total", vec![chunk(1, 0, 0, u64::MAX, b"abc")]),
        ("bad magic", vec![b"\x01\x00\x00\x00xxxxxxxxxxxx".to_vec()]),
        ("shorter than a header", vec![b"\x01\x4d".to_vec()]),
        (
            "descriptors declared on mq",
            vec![chunk(3, 2, 0, 3, b"abc")],
        ),
    ];
    for (name, chunks) in cases {
        let before = open_fds();
        let (mut ch, peer) = retry_mq(Channel::mq_pair);
        let peer: ChannelFds = peer.into_fds().unwrap();
        assert_eq!(peer.kind(), TransportKind::Mq);
        let tx = &peer.fds()[1];
        for c in &chunks {
            flowipc_sys::mq::mq_send(tx.as_fd(), c, 0).unwrap();
        }
        let mut buf = Vec::new();
        let err = ch.recv(&mut buf).unwrap_err();
        assert!(matches!(err, RecvError::Corrupt(_)), "{name}: {err:?}");
        assert!(
            matches!(ch.recv(&mut buf), Err(RecvError::Poisoned)),
            "{name}"
        );
        eprintln!("{name}: {err}");
        drop((ch, peer));
        assert_eq!(open_fds(), before, "{name}: leaked descriptors");
    }
}

/// Forged frame sequences written straight into a ring channel's ring (the test plays a peer
/// that writes its own frames).
#[test]
fn hostile_ring_frames() {
    let _g = serial();
    const FIRST: u16 = 1;
    const LAST: u16 = 2;
    let with_total = |total: u64, rest: &[u8]| {
        let mut f = total.to_le_bytes().to_vec();
        f.extend_from_slice(rest);
        f
    };
    /// A forged ring frame: tag and payload.
    type Frame = (u16, Vec<u8>);
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        (
            "continuation without a first frame",
            vec![(LAST, b"abc".to_vec())],
        ),
        (
            "first frame inside a message",
            vec![
                (FIRST, with_total(10, b"abc")),
                (FIRST, with_total(10, b"abc")),
            ],
        ),
        ("forged total", vec![(FIRST, with_total(u64::MAX, b"abc"))]),
        (
            "more bytes than the total",
            vec![(FIRST, with_total(2, b"abc"))],
        ),
        (
            "last frame before the total",
            vec![(FIRST, with_total(10, b"abc")), (LAST, b"de".to_vec())],
        ),
        (
            "first frame shorter than its header",
            vec![(FIRST, vec![1, 2, 3])],
        ),
        ("unknown flag", vec![(0x10 | FIRST | LAST, b"x".to_vec())]),
        (
            // As many as the receiver accepts (8): not too many, but none arrived.
            "descriptors declared, none sent",
            vec![(FIRST | LAST | (8 << 8), b"x".to_vec())],
        ),
        (
            "more descriptors declared than accepted",
            vec![(FIRST | LAST | (9 << 8), b"x".to_vec())],
        ),
        ("close marker with data", vec![(4, b"x".to_vec())]),
        (
            "one frame over the size limit",
            vec![(FIRST | LAST, vec![0; 1001])],
        ),
        (
            // Otherwise a complete, valid sequence: only the CHANNEL flag's place is wrong.
            "channel flag on a continuation frame",
            vec![
                (FIRST, with_total(10, b"abc")),
                (0x08 | LAST, b"defghij".to_vec()),
            ],
        ),
    ];
    // Cases on either side of the descriptor limit: each must be refused by its own check.
    type Check = fn(&RecvError) -> bool;
    let own_check: [(&str, Check); 3] = [
        ("one frame over the size limit", |e| {
            matches!(
                e,
                RecvError::Corrupt(Corruption::TooLarge {
                    claimed: 1001,
                    max: 1000
                })
            )
        }),
        ("descriptors declared, none sent", |e| {
            matches!(
                e,
                RecvError::Corrupt(Corruption::FdCountMismatch {
                    declared: 8,
                    arrived: 0
                })
            )
        }),
        ("more descriptors declared than accepted", |e| {
            matches!(
                e,
                RecvError::Corrupt(Corruption::TooManyFds {
                    declared: 9,
                    max: 8
                })
            )
        }),
    ];
    for (name, frames) in cases {
        let before = open_fds();
        let (mut ch, peer) = ChannelOptions::new()
            .max_fds_per_message(8)
            .max_message_size(1000)
            .ring_capacity(64 * 1024)
            .ring_pair()
            .unwrap();
        let peer: ChannelFds = peer.into_fds().unwrap();
        assert_eq!(peer.kind(), TransportKind::Ring);
        // The peer's first descriptor is its sending ring: write forged frames into it.
        let ring = flowipc::ring::ShmRing::open(peer.fds()[0].try_clone().unwrap()).unwrap();
        let mut tx = ring.sender().unwrap();
        // A valid message first, as long as the limit allows, so that the forged frames meet a
        // receiver already in use (whose fast path must leave every frame it does not take for
        // the general one).
        tx.try_send_tagged(&[7; 1000], FIRST | LAST).unwrap();
        let mut buf = Vec::new();
        ch.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
        assert_eq!(buf, [7; 1000], "{name}");
        for (tag, payload) in &frames {
            tx.try_send_tagged(payload, *tag).unwrap();
        }
        let err = ch
            .recv_timeout(&mut buf, Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, RecvError::Corrupt(_)), "{name}: {err:?}");
        if let Some((_, want)) = own_check.iter().find(|(w, _)| *w == name) {
            assert!(want(&err), "{name}: refused for {err:?}");
        }
        assert!(
            matches!(ch.recv(&mut buf), Err(RecvError::Poisoned)),
            "{name}"
        );
        eprintln!("{name}: {err}");
        drop((ch, tx, ring, peer));
        assert_eq!(open_fds(), before, "{name}: leaked descriptors");
    }
}

/// A whole one-frame message forged into the middle of a message that a non-blocking receive
/// left half-assembled is refused (the ring's short receive path must not take it as a message
/// of its own).
#[test]
fn hostile_ring_frame_inside_a_half_received_message() {
    let _g = serial();
    const FIRST: u16 = 1;
    const LAST: u16 = 2;
    let (mut ch, peer) = ChannelOptions::new()
        .ring_capacity(64 * 1024)
        .ring_pair()
        .unwrap();
    let peer: ChannelFds = peer.into_fds().unwrap();
    let ring = flowipc::ring::ShmRing::open(peer.fds()[0].try_clone().unwrap()).unwrap();
    let mut tx = ring.sender().unwrap();
    let mut buf = Vec::new();
    // Take the receiver into use with a valid message.
    tx.try_send_tagged(b"ok", FIRST | LAST).unwrap();
    ch.recv_timeout(&mut buf, Duration::from_secs(10)).unwrap();
    assert_eq!(buf, b"ok");
    // The first frame of a 10-byte message, then nothing more yet.
    let mut first = 10u64.to_le_bytes().to_vec();
    first.extend_from_slice(b"abc");
    tx.try_send_tagged(&first, FIRST).unwrap();
    assert!(matches!(ch.try_recv(&mut buf), Err(RecvError::WouldBlock)));
    // A complete message where the rest of that one belongs.
    tx.try_send_tagged(b"x", FIRST | LAST).unwrap();
    let err = ch.try_recv(&mut buf).unwrap_err();
    assert!(
        matches!(err, RecvError::Corrupt(Corruption::BadChunk(_))),
        "{err:?}"
    );
    drop((ch, tx, ring, peer));
}
