//! POSIX message queues against the kernel: attributes, priorities, timeouts, non-blocking mode,
//! size errors, and a queue that outlives its name and is used by another process.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use flowipc_sys::mq::{
    mq_getattr, mq_open, mq_receive, mq_send, mq_set_nonblocking, mq_setattr, mq_timedreceive,
    mq_timedsend, mq_unlink, Mode, MqAttr, OFlags,
};
use flowipc_sys::socket::{
    recv_with_fds, send_with_fds, socketpair_stream, RecvFds, RecvFlags, SendFlags,
};
use flowipc_sys::{fd, Errno};

/// Creates a queue under a fresh name and unlinks the name at once, as flowipc does.
fn anonymous_queue(maxmsg: i64, msgsize: i64) -> OwnedFd {
    let name = common::unique_name("anon");
    let q = mq_open(
        &name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        Mode::from_bits_truncate(0o600),
        Some(&MqAttr::new(maxmsg, msgsize)),
    )
    .unwrap();
    mq_unlink(&name).unwrap();
    q
}

#[test]
fn attributes_and_priorities() {
    let q = anonymous_queue(4, 128);
    let a = mq_getattr(q.as_fd()).unwrap();
    assert_eq!((a.flags, a.maxmsg, a.msgsize, a.curmsgs), (0, 4, 128, 0));
    assert!(fd::is_cloexec(q.as_fd()).unwrap());

    mq_send(q.as_fd(), b"low", 1).unwrap();
    mq_send(q.as_fd(), b"high", 9).unwrap();
    mq_send(q.as_fd(), b"low2", 1).unwrap();
    assert_eq!(mq_getattr(q.as_fd()).unwrap().curmsgs, 3);

    let mut buf = [0u8; 128];
    let (n, prio) = mq_receive(q.as_fd(), &mut buf).unwrap();
    assert_eq!((&buf[..n], prio), (&b"high"[..], 9));
    let (n, prio) = mq_receive(q.as_fd(), &mut buf).unwrap();
    assert_eq!((&buf[..n], prio), (&b"low"[..], 1));
    let (n, _) = mq_receive(q.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"low2");
    assert_eq!(mq_getattr(q.as_fd()).unwrap().curmsgs, 0);
}

#[test]
fn timeouts_are_relative_and_honoured() {
    let q = anonymous_queue(2, 64);
    let mut buf = [0u8; 64];

    let start = Instant::now();
    assert_eq!(
        mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::from_millis(50))),
        Err(Errno::TIMEDOUT)
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(45),
        "returned early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited far too long: {waited:?}"
    );
    // A zero timeout is a try.
    assert_eq!(
        mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::ZERO)),
        Err(Errno::TIMEDOUT)
    );

    mq_timedsend(q.as_fd(), b"1", 0, Some(Duration::from_millis(10))).unwrap();
    mq_timedsend(q.as_fd(), b"2", 0, None).unwrap();
    let start = Instant::now();
    assert_eq!(
        mq_timedsend(q.as_fd(), b"3", 0, Some(Duration::from_millis(50))),
        Err(Errno::TIMEDOUT)
    );
    assert!(start.elapsed() >= Duration::from_millis(45));
    // A huge timeout saturates instead of overflowing, and returns at once when data is there.
    let (n, _) = mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::MAX)).unwrap();
    assert_eq!(&buf[..n], b"1");
}

#[test]
fn nonblocking_mode() {
    let q = anonymous_queue(1, 16);
    let mut buf = [0u8; 16];
    mq_set_nonblocking(q.as_fd(), true).unwrap();
    assert!(mq_getattr(q.as_fd()).unwrap().is_nonblocking());
    assert!(fd::is_nonblocking(q.as_fd()).unwrap());
    assert_eq!(mq_receive(q.as_fd(), &mut buf), Err(Errno::AGAIN));
    mq_send(q.as_fd(), b"only", 0).unwrap();
    assert_eq!(mq_send(q.as_fd(), b"full", 0), Err(Errno::AGAIN));

    let old = mq_setattr(q.as_fd(), &MqAttr::default()).unwrap();
    assert!(old.is_nonblocking());
    assert_eq!(old.curmsgs, 1);
    assert!(!mq_getattr(q.as_fd()).unwrap().is_nonblocking());
    // Blocking again: a timed send on the full queue now waits and times out.
    assert_eq!(
        mq_timedsend(q.as_fd(), b"full", 0, Some(Duration::from_millis(10))),
        Err(Errno::TIMEDOUT)
    );

    let mut bad = MqAttr::default();
    bad.flags = 0x1234_0000;
    assert_eq!(mq_setattr(q.as_fd(), &bad), Err(Errno::INVAL));
}

#[test]
fn size_errors() {
    let q = anonymous_queue(2, 32);
    assert_eq!(mq_send(q.as_fd(), &[0u8; 33], 0), Err(Errno::MSGSIZE));
    mq_send(q.as_fd(), &[7u8; 32], 0).unwrap();
    // The buffer must hold the largest possible message, even if this one is shorter.
    let mut small = [0u8; 31];
    assert_eq!(mq_receive(q.as_fd(), &mut small), Err(Errno::MSGSIZE));
    let mut buf = [0u8; 32];
    assert_eq!(mq_receive(q.as_fd(), &mut buf), Ok((32, 0)));
    // Priorities are limited to MQ_PRIO_MAX (32768).
    assert_eq!(mq_send(q.as_fd(), b"p", 32768), Err(Errno::INVAL));
}

#[test]
fn names_and_open_errors() {
    let name = common::unique_name("names");
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
    let mode = Mode::from_bits_truncate(0o600);
    let attr = MqAttr::new(1, 8);
    let q = mq_open(&name, flags, mode, Some(&attr)).unwrap();
    assert_eq!(
        mq_open(&name, flags, mode, Some(&attr)).err(),
        Some(Errno::EXIST)
    );
    // Without the leading '/' it is the same queue.
    let without_slash = std::ffi::CString::new(&name.as_bytes()[1..]).unwrap();
    let q2 = mq_open(&without_slash, OFlags::WRONLY, Mode::empty(), None).unwrap();
    mq_send(q2.as_fd(), b"same", 0).unwrap();
    assert_eq!(mq_getattr(q.as_fd()).unwrap().curmsgs, 1);

    mq_unlink(&name).unwrap();
    assert_eq!(mq_unlink(&name), Err(Errno::NOENT));
    assert_eq!(
        mq_open(&name, OFlags::RDWR, mode, None).err(),
        Some(Errno::NOENT)
    );
    assert_eq!(
        mq_open(c"/a/b", flags, mode, None).err(),
        Some(Errno::INVAL)
    );
    assert_eq!(mq_open(c"/", flags, mode, None).err(), Some(Errno::INVAL));
    // A write-only descriptor cannot receive.
    let mut buf = [0u8; 8];
    assert_eq!(mq_receive(q2.as_fd(), &mut buf), Err(Errno::BADF));

    // Attributes over the limits (msg_max 10 here) are refused unless privileged.
    let big = MqAttr::new(100_000, 8);
    let big_name = common::unique_name("big");
    match mq_open(&big_name, flags, mode, Some(&big)) {
        Err(e) => assert!(
            e == Errno::INVAL || e == Errno::MFILE || e == Errno::NOMEM,
            "{e:?}"
        ),
        Ok(_) => {
            mq_unlink(&big_name).unwrap();
            panic!("a queue of 100000 messages was accepted");
        }
    }
}

/// The parent creates a queue, unlinks its name, queues a message, and passes the descriptor to
/// a child process over SCM_RIGHTS; the child receives the message and replies through the
/// queue, then confirms over the socket.
#[test]
fn mq_descriptor_survives_unlink_and_crosses_processes() {
    const NAME: &str = "mq_descriptor_survives_unlink_and_crosses_processes";
    if common::role().as_deref() == Some("mq-child") {
        return mq_child();
    }
    let name = common::unique_name("xproc");
    let q = mq_open(
        &name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        Mode::from_bits_truncate(0o600),
        Some(&MqAttr::new(4, 256)),
    )
    .unwrap();
    mq_unlink(&name).unwrap();
    assert_eq!(
        mq_open(&name, OFlags::RDWR, Mode::empty(), None).err(),
        Some(Errno::NOENT),
        "the name must be gone"
    );
    mq_send(q.as_fd(), b"ping from parent", 7).unwrap();
    assert_eq!(mq_getattr(q.as_fd()).unwrap().curmsgs, 1);

    let (ours, theirs) = socketpair_stream().unwrap();
    let mut child = common::spawn_child(NAME, "mq-child", theirs);
    send_with_fds(ours.as_fd(), b"q", &[q.as_fd()], SendFlags::empty()).unwrap();

    // The child says "done" on the socket once it has replied through the queue.
    common::wait_readable(ours.as_fd(), common::CHILD_DEADLINE);
    let mut buf = [0u8; 256];
    let n = flowipc_sys::socket::recv(ours.as_fd(), &mut buf, RecvFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"done");
    let (n, prio) = mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::from_secs(5))).unwrap();
    assert_eq!((&buf[..n], prio), (&b"pong from child"[..], 3));
    assert_eq!(mq_getattr(q.as_fd()).unwrap().curmsgs, 0);

    let status = child.wait_bounded();
    assert!(status.success(), "child failed: {status}");
}

fn mq_child() {
    let sock = common::child_socket();
    let mut byte = [0u8; 1];
    let mut fds = RecvFds::with_limit(1);
    let n = recv_with_fds(sock, &mut byte, &mut fds, RecvFlags::empty()).unwrap();
    assert_eq!((n, fds.len()), (1, 1));
    let q = fds.drain().next().unwrap();
    assert!(fd::is_cloexec(q.as_fd()).unwrap());

    let attr = mq_getattr(q.as_fd()).unwrap();
    assert_eq!((attr.maxmsg, attr.msgsize, attr.curmsgs), (4, 256, 1));
    let mut buf = [0u8; 256];
    let (n, prio) = mq_timedreceive(q.as_fd(), &mut buf, Some(Duration::from_secs(5))).unwrap();
    assert_eq!((&buf[..n], prio), (&b"ping from parent"[..], 7));
    eprintln!(
        "mq child {}: got {:?} prio {prio}",
        std::process::id(),
        String::from_utf8_lossy(&buf[..n])
    );
    mq_timedsend(
        q.as_fd(),
        b"pong from child",
        3,
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    send_with_fds(sock, b"done", &[], SendFlags::empty()).unwrap();
}
