//! eventfd, pipe, plain socket calls, poll and descriptor flags against the kernel.

use std::os::fd::AsFd;
use std::time::Duration;

use flowipc_sys::eventfd::{eventfd, eventfd_read, eventfd_write, EventfdFlags};
use flowipc_sys::socket::{
    peer_credentials, poll, recv, recv_buffer_size, send, send_buffer_size, set_recv_buffer_size,
    set_send_buffer_size, shutdown, socketpair_stream, PollFd, PollFlags, RecvFlags, SendFlags,
    Shutdown,
};
use flowipc_sys::{fd, pipe, process, Errno};

#[test]
fn eventfd_counts() {
    let e = eventfd(3, EventfdFlags::NONBLOCK).unwrap();
    assert!(fd::is_cloexec(e.as_fd()).unwrap());
    assert_eq!(eventfd_read(e.as_fd()), Ok(3));
    assert_eq!(eventfd_read(e.as_fd()), Err(Errno::AGAIN));
    eventfd_write(e.as_fd(), 5).unwrap();
    eventfd_write(e.as_fd(), 7).unwrap();
    assert_eq!(eventfd_read(e.as_fd()), Ok(12));
    assert_eq!(eventfd_write(e.as_fd(), u64::MAX), Err(Errno::INVAL));
    // The counter saturates at u64::MAX - 1: a non-blocking write past it fails.
    eventfd_write(e.as_fd(), u64::MAX - 1).unwrap();
    assert_eq!(eventfd_write(e.as_fd(), 1), Err(Errno::AGAIN));
    assert_eq!(eventfd_read(e.as_fd()), Ok(u64::MAX - 1));
}

#[test]
fn eventfd_semaphore_and_poll() {
    let e = eventfd(2, EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE).unwrap();
    assert_eq!(eventfd_read(e.as_fd()), Ok(1));
    assert_eq!(eventfd_read(e.as_fd()), Ok(1));
    assert_eq!(eventfd_read(e.as_fd()), Err(Errno::AGAIN));

    let mut fds = [PollFd::new(&e, PollFlags::IN)];
    assert_eq!(poll(&mut fds, Some(Duration::from_millis(10))), Ok(0));
    eventfd_write(e.as_fd(), 1).unwrap();
    assert_eq!(poll(&mut fds, Some(Duration::ZERO)), Ok(1));
    assert!(fds[0].revents().contains(PollFlags::IN));
}

#[test]
fn eventfd_wakes_a_blocked_reader() {
    let e = eventfd(0, EventfdFlags::empty()).unwrap();
    assert!(!fd::is_nonblocking(e.as_fd()).unwrap());
    let reader = fd::dup_cloexec(e.as_fd()).unwrap();
    let t = std::thread::spawn(move || eventfd_read(reader.as_fd()));
    std::thread::sleep(Duration::from_millis(20));
    eventfd_write(e.as_fd(), 4).unwrap();
    assert_eq!(t.join().unwrap(), Ok(4));
}

#[test]
fn pipe_round_trip_and_eof() {
    let (r, w) = pipe::pipe().unwrap();
    assert!(fd::is_cloexec(r.as_fd()).unwrap() && fd::is_cloexec(w.as_fd()).unwrap());
    assert_eq!(pipe::write(w.as_fd(), b"through the pipe"), Ok(16));
    let mut buf = [0u8; 32];
    assert_eq!(pipe::read(r.as_fd(), &mut buf), Ok(16));
    assert_eq!(&buf[..16], b"through the pipe");
    fd::set_nonblocking(r.as_fd(), true).unwrap();
    assert!(fd::is_nonblocking(r.as_fd()).unwrap());
    assert_eq!(pipe::read(r.as_fd(), &mut buf), Err(Errno::AGAIN));
    drop(w);
    assert_eq!(pipe::read(r.as_fd(), &mut buf), Ok(0));
}

#[test]
fn socket_send_recv_shutdown() {
    let (a, b) = socketpair_stream().unwrap();
    assert!(fd::is_cloexec(a.as_fd()).unwrap());
    let mut buf = [0u8; 16];
    assert_eq!(
        recv(b.as_fd(), &mut buf, RecvFlags::DONTWAIT),
        Err(Errno::AGAIN)
    );
    assert_eq!(send(a.as_fd(), b"hello", SendFlags::empty()), Ok(5));
    assert_eq!(recv(b.as_fd(), &mut buf, RecvFlags::empty()), Ok(5));
    assert_eq!(&buf[..5], b"hello");

    shutdown(a.as_fd(), Shutdown::Write).unwrap();
    assert_eq!(recv(b.as_fd(), &mut buf, RecvFlags::empty()), Ok(0));
    // The other direction still works.
    send(b.as_fd(), b"back", SendFlags::empty()).unwrap();
    assert_eq!(recv(a.as_fd(), &mut buf, RecvFlags::empty()), Ok(4));

    // A closed peer is EPIPE, not SIGPIPE (MSG_NOSIGNAL is always added).
    drop(b);
    assert_eq!(send(a.as_fd(), b"x", SendFlags::empty()), Err(Errno::PIPE));
}

#[test]
fn socket_credentials_and_buffers() {
    let (a, b) = socketpair_stream().unwrap();
    let cred = peer_credentials(a.as_fd()).unwrap();
    assert_eq!(cred.pid, process::getpid());
    assert_eq!(cred.uid.as_raw(), rustix_free_getuid());

    set_send_buffer_size(a.as_fd(), 64 * 1024).unwrap();
    set_recv_buffer_size(b.as_fd(), 64 * 1024).unwrap();
    // Linux doubles the requested size (unless capped by wmem_max/rmem_max).
    assert!(send_buffer_size(a.as_fd()).unwrap() >= 4096);
    assert!(recv_buffer_size(b.as_fd()).unwrap() >= 4096);
    set_send_buffer_size(a.as_fd(), 8192).unwrap();
    let small = send_buffer_size(a.as_fd()).unwrap();
    assert!((4096..=2 * 8192).contains(&small), "{small}");

    // With a small buffer a non-blocking send eventually reports a full socket.
    let chunk = [0u8; 4096];
    let mut total = 0usize;
    loop {
        match send(a.as_fd(), &chunk, SendFlags::DONTWAIT) {
            Ok(n) => total += n,
            Err(Errno::AGAIN) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(total < 64 << 20, "socket never filled");
    }
    assert!(total > 0);
}

/// The real uid from `/proc/self/status`, so the test does not trust the code it checks.
fn rustix_free_getuid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn cloexec_flag_round_trip() {
    let e = eventfd(0, EventfdFlags::empty()).unwrap();
    fd::set_cloexec(e.as_fd(), false).unwrap();
    assert!(!fd::is_cloexec(e.as_fd()).unwrap());
    // dup_cloexec sets the flag on the copy only.
    let d = fd::dup_cloexec(e.as_fd()).unwrap();
    assert!(fd::is_cloexec(d.as_fd()).unwrap());
    assert!(!fd::is_cloexec(e.as_fd()).unwrap());
    fd::set_cloexec(e.as_fd(), true).unwrap();
    assert!(fd::is_cloexec(e.as_fd()).unwrap());
}

#[test]
fn pidfd_becomes_readable_when_process_exits() {
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .spawn()
        .unwrap();
    let pid = process::Pid::from_raw(child.id() as i32).unwrap();
    let pidfd = process::pidfd_open(pid).unwrap();
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    assert_eq!(poll(&mut fds, Some(Duration::from_secs(10))), Ok(1));
    child.wait().unwrap();
}
