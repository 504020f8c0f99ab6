//! SCM_RIGHTS descriptor passing: received descriptors are close-on-exec, the full 253 arrive
//! intact, limits are enforced, and `RecvFds` behaves as a container.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use flowipc_sys::eventfd::{eventfd, eventfd_read, eventfd_write, EventfdFlags};
use flowipc_sys::socket::{
    recv_with_fds, recv_with_fds_vec, send_with_fds, socketpair_stream, RecvFds, RecvFlags,
    SendFlags, MAX_FDS_PER_MESSAGE,
};
use flowipc_sys::{fd, memfd, pipe, Errno};

fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

#[test]
fn received_fds_are_cloexec() {
    let (a, b) = socketpair_stream().unwrap();
    let mem = memfd::memfd_create(c"cloexec").unwrap();
    let ev = eventfd(0, EventfdFlags::empty()).unwrap();
    let (r, w) = pipe::pipe().unwrap();
    // Clear close-on-exec on the sender's copies: the receiver's must be close-on-exec anyway,
    // because the flag is per descriptor and MSG_CMSG_CLOEXEC sets it on the new ones.
    for f in [&mem, &ev, &r, &w] {
        fd::set_cloexec(f.as_fd(), false).unwrap();
        assert!(!fd::is_cloexec(f.as_fd()).unwrap());
    }
    let sent = [mem.as_fd(), ev.as_fd(), r.as_fd(), w.as_fd()];
    assert_eq!(
        send_with_fds(a.as_fd(), b"x", &sent, SendFlags::empty()),
        Ok(1)
    );

    let mut buf = [0u8; 8];
    let mut got = RecvFds::new();
    let n = recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()).unwrap();
    assert_eq!((n, &buf[..1]), (1, &b"x"[..]));
    assert_eq!(got.len(), 4);
    for f in got.iter() {
        assert!(
            fd::is_cloexec(f).unwrap(),
            "received fd {} lacks FD_CLOEXEC",
            f.as_raw_fd()
        );
        // New descriptors, not the sender's numbers.
        assert!(sent.iter().all(|s| s.as_raw_fd() != f.as_raw_fd()));
    }
    // The same open files: an eventfd written through the received copy is read via the original.
    eventfd_write(got.get(1).unwrap(), 9).unwrap();
    assert_eq!(eventfd_read(ev.as_fd()), Ok(9));

    // The Vec form too.
    send_with_fds(a.as_fd(), b"y", &sent[..2], SendFlags::empty()).unwrap();
    let (n, v) = recv_with_fds_vec(b.as_fd(), &mut buf, RecvFlags::empty()).unwrap();
    assert_eq!((n, v.len()), (1, 2));
    assert!(v.iter().all(|f| fd::is_cloexec(f.as_fd()).unwrap()));
}

#[test]
fn max_fds_in_one_message_arrive_intact() {
    let (a, b) = socketpair_stream().unwrap();
    // 253 distinct memfds, each with its own size and content.
    let files: Vec<File> = (0..MAX_FDS_PER_MESSAGE)
        .map(|i| {
            let mut f = File::from(memfd::memfd_create(c"max-fds").unwrap());
            f.write_all(format!("memfd number {i}").as_bytes()).unwrap();
            f.set_len(4096 + i as u64).unwrap();
            f
        })
        .collect();
    let sent: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
    assert_eq!(
        send_with_fds(a.as_fd(), b"all of them", &sent, SendFlags::empty()),
        Ok(11)
    );

    let mut buf = [0u8; 32];
    let mut got = RecvFds::new();
    let n = recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"all of them");
    assert_eq!(got.len(), MAX_FDS_PER_MESSAGE);
    assert_eq!(got.remaining(), 0);

    for (i, (received, original)) in got.drain().zip(&files).enumerate() {
        assert!(fd::is_cloexec(received.as_fd()).unwrap());
        let received = File::from(received);
        let (m_rx, m_tx) = (received.metadata().unwrap(), original.metadata().unwrap());
        assert_eq!(
            (m_rx.dev(), m_rx.ino()),
            (m_tx.dev(), m_tx.ino()),
            "fd {i} is another file"
        );
        assert_eq!(m_rx.len(), 4096 + i as u64);
        let want = format!("memfd number {i}");
        let mut content = vec![0u8; want.len()];
        received.read_exact_at(&mut content, 0).unwrap();
        assert_eq!(content, want.as_bytes());
    }
    assert!(got.is_empty());
}

#[test]
fn too_many_fds_or_no_bytes_is_inval() {
    let (a, _b) = socketpair_stream().unwrap();
    let evs: Vec<OwnedFd> = (0..=MAX_FDS_PER_MESSAGE)
        .map(|_| eventfd(0, EventfdFlags::empty()).unwrap())
        .collect();
    let all = borrow_all(&evs);
    assert_eq!(all.len(), MAX_FDS_PER_MESSAGE + 1);
    assert_eq!(
        send_with_fds(a.as_fd(), b"x", &all, SendFlags::empty()),
        Err(Errno::INVAL)
    );
    assert_eq!(
        send_with_fds(a.as_fd(), b"", &all[..1], SendFlags::empty()),
        Err(Errno::INVAL)
    );
    // No descriptors: an ordinary send.
    assert_eq!(
        send_with_fds(a.as_fd(), b"abc", &[], SendFlags::empty()),
        Ok(3)
    );
}

#[test]
fn recv_without_fds_and_nonblocking() {
    let (a, b) = socketpair_stream().unwrap();
    let mut buf = [0u8; 8];
    let mut got = RecvFds::new();
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::DONTWAIT),
        Err(Errno::AGAIN)
    );
    send_with_fds(a.as_fd(), b"plain", &[], SendFlags::empty()).unwrap();
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()),
        Ok(5)
    );
    assert!(got.is_empty());
    drop(a);
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()),
        Ok(0)
    );
}

#[test]
fn recv_fds_appends_and_container_ops() {
    let (a, b) = socketpair_stream().unwrap();
    let evs: Vec<OwnedFd> = (1..=5)
        .map(|i| eventfd(i, EventfdFlags::NONBLOCK).unwrap())
        .collect();
    let mut buf = [0u8; 4];
    let mut got = RecvFds::with_limit(8);
    assert_eq!(got.limit(), 8);
    assert_eq!(RecvFds::with_limit(10_000).limit(), MAX_FDS_PER_MESSAGE);

    send_with_fds(a.as_fd(), b"1", &borrow_all(&evs[..3]), SendFlags::empty()).unwrap();
    recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()).unwrap();
    send_with_fds(a.as_fd(), b"2", &borrow_all(&evs[3..]), SendFlags::empty()).unwrap();
    recv_with_fds(b.as_fd(), &mut buf, &mut got, RecvFlags::empty()).unwrap();
    assert_eq!((got.len(), got.remaining()), (5, 3));
    // Arrival order is kept: the i-th eventfd was created with counter i + 1.
    let counters: Vec<u64> = got.iter().map(|f| eventfd_read(f).unwrap()).collect();
    assert_eq!(counters, [1, 2, 3, 4, 5]);
    assert!(got.get(5).is_none());
    assert_eq!(format!("{got:?}").matches("fd").count(), 5);

    got.truncate(2);
    assert_eq!(got.len(), 2);
    let first: Vec<OwnedFd> = got.drain().take(1).collect();
    assert_eq!(first.len(), 1);
    assert!(got.is_empty(), "drain empties even if not fully consumed");

    assert!(got.push(evs[0].try_clone().unwrap()).is_ok());
    assert_eq!(got.into_iter().count(), 1);

    let mut full = RecvFds::with_limit(0);
    assert!(full.push(evs[0].try_clone().unwrap()).is_err());
}
