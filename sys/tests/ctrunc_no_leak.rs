//! A message carrying more descriptors than the receiver has room for (`MSG_CTRUNC`) is an error,
//! and no descriptor leaks: the ones the kernel did install are closed.
//!
//! This binary holds a single test so that no other test opens or closes descriptors while it
//! counts the entries of `/proc/self/fd`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use flowipc_sys::eventfd::{eventfd, EventfdFlags};
use flowipc_sys::socket::{
    recv_vectored_with_fds, recv_with_fds, send_vectored_with_fds, send_with_fds,
    socketpair_stream, IoSlice, IoSliceMut, RecvFds, RecvFlags, SendFlags,
};
use flowipc_sys::Errno;

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn ctrunc_closes_what_arrived_and_leaks_nothing() {
    let (a, b) = socketpair_stream().unwrap();
    let evs: Vec<OwnedFd> = (0..5)
        .map(|_| eventfd(0, EventfdFlags::empty()).unwrap())
        .collect();
    let five: Vec<BorrowedFd<'_>> = evs.iter().map(AsFd::as_fd).collect();
    let mut buf = [0u8; 16];

    // Control: a receive with room for all of them does raise the count by 5, so the counting
    // below would see a leak.
    let before = open_fd_count();
    send_with_fds(a.as_fd(), b"ok", &five, SendFlags::empty()).unwrap();
    let mut fds = RecvFds::new();
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut fds, RecvFlags::empty()),
        Ok(2)
    );
    assert_eq!(open_fd_count(), before + 5);
    fds.clear();
    assert_eq!(open_fd_count(), before);

    // Room for 2 of 5: the kernel installs 2 and sets MSG_CTRUNC; both must be closed again.
    for limit in [2, 1, 0, 4] {
        send_with_fds(a.as_fd(), b"xx", &five, SendFlags::empty()).unwrap();
        let mut small = RecvFds::with_limit(limit);
        let before = open_fd_count();
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf, &mut small, RecvFlags::empty()),
            Err(Errno::MSGSIZE),
            "limit {limit}"
        );
        assert!(small.is_empty());
        assert_eq!(
            open_fd_count(),
            before,
            "leaked descriptors with limit {limit}"
        );
    }

    // Descriptors already held are kept; only this call's arrivals are closed.
    let mut partly = RecvFds::with_limit(4);
    send_with_fds(a.as_fd(), b"1", &five[..2], SendFlags::empty()).unwrap();
    recv_with_fds(b.as_fd(), &mut buf, &mut partly, RecvFlags::empty()).unwrap();
    assert_eq!(partly.len(), 2);
    send_with_fds(a.as_fd(), b"2", &five[..3], SendFlags::empty()).unwrap();
    let before = open_fd_count();
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut partly, RecvFlags::empty()),
        Err(Errno::MSGSIZE)
    );
    assert_eq!(partly.len(), 2);
    assert_eq!(open_fd_count(), before);

    // The stream goes on: the next message is received normally.
    send_with_fds(a.as_fd(), b"after", &five[..1], SendFlags::empty()).unwrap();
    let mut fds = RecvFds::new();
    let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds, RecvFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"after");
    assert_eq!(fds.len(), 1);

    // The vectored forms behave the same: gather-sent descriptors truncated by a scatter receive
    // are closed, and the bytes of that read were consumed.
    let parts = [IoSlice::new(b"hd"), IoSlice::new(b"body")];
    send_vectored_with_fds(a.as_fd(), &parts, &five, SendFlags::empty()).unwrap();
    let (mut h, mut rest) = ([0u8; 2], [0u8; 8]);
    let mut small = RecvFds::with_limit(3);
    let before = open_fd_count();
    let mut bufs = [IoSliceMut::new(&mut h), IoSliceMut::new(&mut rest)];
    assert_eq!(
        recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut small, RecvFlags::empty()),
        Err(Errno::MSGSIZE)
    );
    assert!(small.is_empty());
    assert_eq!(
        open_fd_count(),
        before,
        "vectored receive leaked descriptors"
    );
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut small, RecvFlags::DONTWAIT),
        Err(Errno::AGAIN)
    );
}
