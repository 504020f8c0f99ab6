//! A futex wake crosses processes: a child sleeps on a word in a memfd mapping it received over
//! SCM_RIGHTS, and the parent's `futex_wake` on its own mapping of the same page wakes it.

mod common;

use std::os::fd::AsFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowipc_sys::futex::{futex_wait, futex_wake};
use flowipc_sys::memfd::{self, SIZE_SEALS};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::socket::{
    recv, recv_with_fds, send, send_with_fds, socketpair_stream, RecvFds, RecvFlags, SendFlags,
};
use flowipc_sys::Errno;

const LEN: usize = 4096;
/// Offsets in the shared page.
const WORD: usize = 0;
const TO_CHILD: usize = 64;
const TO_PARENT: usize = 128;
const MSG_TO_CHILD: &[u8] = b"hello from the parent";
const MSG_TO_PARENT: &[u8] = b"hello from the child";
const WAKE_VALUE: u32 = 42;

fn word(map: &Mapping) -> &AtomicU32 {
    // SAFETY: offset WORD is inside the mapping and 4-aligned (the mapping is page-aligned); the
    // mapping outlives the returned reference, and every access to the word is atomic.
    unsafe { AtomicU32::from_ptr(map.as_ptr().add(WORD).cast::<u32>().cast_mut()) }
}

fn put(map: &Mapping, offset: usize, bytes: &[u8]) {
    assert!(offset + bytes.len() <= map.len());
    // SAFETY: in bounds of the live, writable mapping; the protocol gives this side sole use of
    // the range at this point.
    unsafe {
        ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            map.as_mut_ptr().unwrap().add(offset),
            bytes.len(),
        )
    };
}

fn get(map: &Mapping, offset: usize, len: usize) -> Vec<u8> {
    assert!(offset + len <= map.len());
    let mut v = vec![0u8; len];
    // SAFETY: in bounds of the live mapping; the writer finished before the futex/socket hand-off.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr().add(offset), v.as_mut_ptr(), len) };
    v
}

/// Whether some thread of `pid` is blocked in `futex(addr, FUTEX_WAIT, ...)` (not private), read
/// from `/proc/<pid>/task/*/syscall`. `None` if that is not readable here.
fn blocked_in_futex_wait(pid: u32, addr: u64) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut readable = false;
    for task in tasks.flatten() {
        let Ok(line) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        readable = true;
        let mut f = line.split_whitespace();
        // x86-64: futex is syscall 202; FUTEX_WAIT is op 0 (FUTEX_WAIT_PRIVATE would be 0x80).
        if f.next() == Some("202")
            && f.next() == Some(format!("{addr:#x}").as_str())
            && f.next() == Some("0x0")
        {
            return Some(true);
        }
    }
    readable.then_some(false)
}

#[test]
fn futex_wake_crosses_processes() {
    const NAME: &str = "futex_wake_crosses_processes";
    if common::role().as_deref() == Some("futex-child") {
        return futex_child();
    }
    let region = memfd::create_sealed(c"futex-xproc", LEN as u64).unwrap();
    let map = Mapping::map(region.as_fd(), 0, LEN, Access::ReadWrite).unwrap();
    word(&map).store(0, Ordering::Relaxed);
    put(&map, TO_CHILD, MSG_TO_CHILD);

    let (ours, theirs) = socketpair_stream().unwrap();
    let mut child = common::spawn_child(NAME, "futex-child", theirs);
    send_with_fds(ours.as_fd(), b"m", &[region.as_fd()], SendFlags::empty()).unwrap();

    // The child reports the address of the word in its own mapping, then goes to sleep on it.
    common::wait_readable(ours.as_fd(), common::CHILD_DEADLINE);
    let mut addr = [0u8; 8];
    assert_eq!(recv(ours.as_fd(), &mut addr, RecvFlags::WAITALL), Ok(8));
    let child_addr = u64::from_ne_bytes(addr);

    // Wait until the child is really blocked in the shared FUTEX_WAIT on that word, so the wake
    // below must cross processes to reach it.
    let start = Instant::now();
    let mut confirmed_asleep = false;
    loop {
        match blocked_in_futex_wait(child.id(), child_addr) {
            Some(true) => {
                confirmed_asleep = true;
                break;
            }
            Some(false) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Some(false) => panic!("child never blocked in futex_wait"),
            None => {
                // No access to /proc/<pid>/task/*/syscall here: give it time instead.
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
        }
    }

    // Release: pairs with the child's Acquire load of the word; publishes TO_CHILD's bytes (written
    // before the child started anyway).
    word(&map).store(WAKE_VALUE, Ordering::Release);
    let woken = futex_wake(word(&map), 1).unwrap();
    eprintln!(
        "futex parent {}: child asleep confirmed: {confirmed_asleep}, woke {woken}",
        std::process::id()
    );
    if confirmed_asleep {
        assert_eq!(woken, 1, "the wake did not reach the sleeping child");
    }

    // The child answers in shared memory and then on the socket.
    common::wait_readable(ours.as_fd(), common::CHILD_DEADLINE);
    let mut seen = [0u8; 4];
    assert_eq!(recv(ours.as_fd(), &mut seen, RecvFlags::WAITALL), Ok(4));
    assert_eq!(u32::from_ne_bytes(seen), WAKE_VALUE);
    assert_eq!(get(&map, TO_PARENT, MSG_TO_PARENT.len()), MSG_TO_PARENT);

    let status = child.wait_bounded();
    assert!(status.success(), "child failed: {status}");
}

fn futex_child() {
    let sock = common::child_socket();
    let mut byte = [0u8; 1];
    let mut fds = RecvFds::with_limit(1);
    recv_with_fds(sock, &mut byte, &mut fds, RecvFlags::empty()).unwrap();
    let region = fds.drain().next().expect("region fd");
    assert!(memfd::get_seals(region.as_fd())
        .unwrap()
        .contains(SIZE_SEALS));
    assert_eq!(memfd::size(region.as_fd()).unwrap(), LEN as u64);
    let map = Mapping::map(region.as_fd(), 0, LEN, Access::ReadWrite).unwrap();
    let w = word(&map);

    let addr = (w as *const AtomicU32 as u64).to_ne_bytes();
    assert_eq!(send(sock, &addr, SendFlags::empty()), Ok(8));

    // Bounded: if the parent's wake never arrives the child fails instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(15);
    // Acquire: pairs with the parent's Release store of WAKE_VALUE.
    while w.load(Ordering::Acquire) == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match futex_wait(w, 0, Some(left)) {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(Errno::TIMEDOUT) => panic!("child: no futex wake within 15 s"),
            Err(e) => panic!("child: futex_wait: {e:?}"),
        }
    }
    let value = w.load(Ordering::Acquire);
    assert_eq!(get(&map, TO_CHILD, MSG_TO_CHILD.len()), MSG_TO_CHILD);
    eprintln!("futex child {}: woken, word = {value}", std::process::id());
    put(&map, TO_PARENT, MSG_TO_PARENT);
    assert_eq!(send(sock, &value.to_ne_bytes(), SendFlags::empty()), Ok(4));
}
