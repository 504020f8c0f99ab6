//! Gather sends and scatter receives with descriptors (`send_vectored_with_fds`,
//! `recv_vectored_with_fds`): bytes arrive in order across the buffers, descriptors arrive once,
//! close-on-exec, with the first byte, and a message larger than the socket buffer goes out in
//! partial writes without losing or repeating a byte.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use flowipc_sys::eventfd::{eventfd, eventfd_read, eventfd_write, EventfdFlags};
use flowipc_sys::socket::{
    poll, recv_vectored_with_fds, recv_with_fds, send, send_buffer_size, send_vectored_with_fds,
    socketpair_stream, IoSlice, IoSliceMut, PollFd, PollFlags, RecvFds, RecvFlags, SendFlags,
    MAX_FDS_PER_MESSAGE,
};
use flowipc_sys::{fd, Errno};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn gather_send_with_fds_scatter_receive() {
    let (a, b) = socketpair_stream().unwrap();
    let evs: Vec<OwnedFd> = (0..3)
        .map(|i| eventfd(i, EventfdFlags::empty()).unwrap())
        .collect();
    let borrowed: Vec<BorrowedFd<'_>> = evs.iter().map(AsFd::as_fd).collect();
    let header = *b"HEADER!!";
    let payload = pattern(3000, 7);
    let parts = [
        IoSlice::new(&header),
        IoSlice::new(&[]),
        IoSlice::new(&payload),
    ];
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &parts, &borrowed, SendFlags::empty()),
        Ok(8 + 3000)
    );

    // Scatter: the header fills the first buffer exactly, the payload the next ones.
    let mut h = [0u8; 8];
    let mut p1 = vec![0u8; 1000];
    let mut p2 = vec![0u8; 4000];
    let mut fds = RecvFds::new();
    let mut bufs = [
        IoSliceMut::new(&mut h),
        IoSliceMut::new(&mut p1),
        IoSliceMut::new(&mut p2),
    ];
    let n = recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut fds, RecvFlags::empty()).unwrap();
    assert_eq!(n, 3008);
    assert_eq!(h, header);
    assert_eq!(p1[..], payload[..1000]);
    assert_eq!(p2[..2000], payload[1000..]);
    assert_eq!(fds.len(), 3);
    for (i, f) in fds.iter().enumerate() {
        assert!(fd::is_cloexec(f).unwrap());
        // The same counters the sender holds.
        eventfd_write(f, 100).unwrap();
        assert_eq!(eventfd_read(evs[i].as_fd()), Ok(100 + i as u64));
    }
}

#[test]
fn vectored_send_checks_its_arguments() {
    let (a, b) = socketpair_stream().unwrap();
    let evs: Vec<OwnedFd> = (0..=MAX_FDS_PER_MESSAGE)
        .map(|_| eventfd(0, EventfdFlags::empty()).unwrap())
        .collect();
    let all: Vec<BorrowedFd<'_>> = evs.iter().map(AsFd::as_fd).collect();
    let parts = [IoSlice::new(b"x")];
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &parts, &all, SendFlags::empty()),
        Err(Errno::INVAL)
    );
    // Descriptors need a byte to ride on: all-empty buffers (or none) are refused.
    let empty = [IoSlice::new(&[]), IoSlice::new(&[])];
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &empty, &all[..1], SendFlags::empty()),
        Err(Errno::INVAL)
    );
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &[], &all[..1], SendFlags::empty()),
        Err(Errno::INVAL)
    );
    // Without descriptors, empty buffers are an empty send.
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &empty, &[], SendFlags::empty()),
        Ok(0)
    );
    // Nothing was sent by the refused calls.
    let mut buf = [0u8; 4];
    let mut fds = RecvFds::new();
    assert_eq!(
        recv_with_fds(b.as_fd(), &mut buf, &mut fds, RecvFlags::DONTWAIT),
        Err(Errno::AGAIN)
    );
}

/// A header + payload larger than the socket buffer, sent without blocking: the first call takes
/// part of it (with the descriptors), the rest follows in plain sends as the reader drains, and
/// the reader sees every byte once, in order, with the descriptors exactly once, at the start.
#[test]
fn large_vectored_send_in_partial_writes() {
    let (a, b) = socketpair_stream().unwrap();
    let ev = eventfd(5, EventfdFlags::empty()).unwrap();
    let header = *b"BIGFRAME";
    let payload = pattern(4 << 20, 3);
    assert!(send_buffer_size(a.as_fd()).unwrap() < payload.len());
    let total = header.len() + payload.len();

    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        let mut fd_batches = Vec::new();
        let mut chunk = vec![0u8; 100_000];
        let mut h = [0u8; 8];
        // The first read scatters into a header buffer and a payload buffer.
        let mut fds = RecvFds::new();
        let mut bufs = [IoSliceMut::new(&mut h), IoSliceMut::new(&mut chunk)];
        let n = recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut fds, RecvFlags::empty()).unwrap();
        assert!(n > 8, "first read {n}");
        got.extend_from_slice(&h);
        got.extend_from_slice(&chunk[..n - 8]);
        fd_batches.push((0, fds.drain().collect::<Vec<_>>()));
        while got.len() < total {
            let mut fds = RecvFds::new();
            let mut bufs = [IoSliceMut::new(&mut chunk)];
            let n =
                recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut fds, RecvFlags::empty()).unwrap();
            assert!(n > 0, "early end of stream at {}", got.len());
            if !fds.is_empty() {
                fd_batches.push((got.len(), fds.drain().collect()));
            }
            got.extend_from_slice(&chunk[..n]);
        }
        (got, fd_batches)
    });

    let mut pos = 0;
    let mut calls = 0;
    let mut partial = false;
    while pos < total {
        let r = if pos < header.len() {
            let parts = [IoSlice::new(&header[pos..]), IoSlice::new(&payload)];
            let fds = if pos == 0 { vec![ev.as_fd()] } else { vec![] };
            send_vectored_with_fds(a.as_fd(), &parts, &fds, SendFlags::DONTWAIT)
        } else {
            send(
                a.as_fd(),
                &payload[pos - header.len()..],
                SendFlags::DONTWAIT,
            )
        };
        match r {
            Ok(n) => {
                assert!(n > 0);
                partial |= pos + n < total;
                pos += n;
                calls += 1;
            }
            Err(Errno::AGAIN) => {
                let mut pfd = [PollFd::new(&a, PollFlags::OUT)];
                poll(&mut pfd, Some(Duration::from_secs(10))).unwrap();
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    assert!(
        partial && calls > 1,
        "never a partial write ({calls} calls)"
    );

    let (got, fd_batches) = reader.join().unwrap();
    assert_eq!(got.len(), total);
    assert_eq!(got[..8], header);
    assert!(got[8..] == payload[..], "payload differs");
    // One batch of one descriptor, delivered with the first read.
    assert_eq!(fd_batches.len(), 1);
    assert_eq!(fd_batches[0].0, 0);
    assert_eq!(fd_batches[0].1.len(), 1);
    assert_eq!(eventfd_read(fd_batches[0].1[0].as_fd()), Ok(5));
}

/// A blocking gather send of a message larger than the socket buffer is one call: the kernel
/// waits for the reader and takes it all, descriptors with the first byte only.
#[test]
fn blocking_vectored_send_takes_everything() {
    let (a, b) = socketpair_stream().unwrap();
    let ev = eventfd(0, EventfdFlags::empty()).unwrap();
    let payload = pattern(3 << 20, 11);
    let total = 8 + payload.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; total];
        let mut fds = RecvFds::new();
        let mut bufs = [IoSliceMut::new(&mut got)];
        // WAITALL: the kernel waits until the buffer is full (no descriptor comes later).
        let n = recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut fds, RecvFlags::WAITALL).unwrap();
        let mut filled = n;
        let mut batches = usize::from(!fds.is_empty());
        while filled < total {
            let mut more = RecvFds::new();
            let mut bufs = [IoSliceMut::new(&mut got[filled..])];
            let n = recv_vectored_with_fds(b.as_fd(), &mut bufs, &mut more, RecvFlags::WAITALL)
                .unwrap();
            assert!(n > 0);
            batches += usize::from(!more.is_empty());
            filled += n;
        }
        (got, fds.len(), batches)
    });
    let parts = [IoSlice::new(b"blocking"), IoSlice::new(&payload)];
    assert_eq!(
        send_vectored_with_fds(a.as_fd(), &parts, &[ev.as_fd()], SendFlags::empty()),
        Ok(total)
    );
    let (got, nfds, batches) = reader.join().unwrap();
    assert_eq!(&got[..8], b"blocking");
    assert!(got[8..] == payload[..]);
    assert_eq!((nfds, batches), (1, 1));
}
