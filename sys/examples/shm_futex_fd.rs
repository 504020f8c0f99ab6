//! Two processes share a sealed memfd and a futex, and pass descriptors over a Unix socket.
//!
//! The parent creates a sealed shared-memory region and a pipe, starts itself again as the child,
//! and sends the child the region and the pipe's write end in one `SCM_RIGHTS` message. The child
//! checks the seals, maps the region, writes a message into it, bumps a futex word and wakes the
//! parent, then reports through the pipe. The parent sleeps on the futex (bounded by a timeout and
//! a check that the child is alive), reads the message from shared memory, treating it as
//! untrusted, and reads the child's report from the pipe.
//!
//! Run with `cargo run -p flowipc-sys --example shm_futex_fd`. Exits non-zero on any failure.

use std::error::Error;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Command, ExitCode, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowipc_sys::futex::{futex_wait, futex_wake};
use flowipc_sys::memfd::{self, SIZE_SEALS};
use flowipc_sys::mmap::{Access, Mapping};
use flowipc_sys::socket::{
    recv_with_fds, send_with_fds, socketpair_stream, RecvFds, RecvFlags, SendFlags,
};
use flowipc_sys::{pipe, process, Errno};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Size of the shared region.
const REGION_LEN: usize = 4096;
/// Layout of the region: the futex word, then the message length, then the message.
const WORD_OFFSET: usize = 0;
const MSG_LEN_OFFSET: usize = 4;
const MSG_OFFSET: usize = 64;
const MSG_CAPACITY: usize = REGION_LEN - MSG_OFFSET;
/// How long the parent waits for the child before giving up.
const DEADLINE: Duration = Duration::from_secs(10);

/// The futex word at the start of the region.
fn futex_word(map: &Mapping) -> &AtomicU32 {
    // SAFETY: WORD_OFFSET is inside the mapping and 4-aligned (mappings are page-aligned), the
    // returned reference cannot outlive `map`, and both processes only access the word atomically.
    unsafe { AtomicU32::from_ptr(map.as_ptr().add(WORD_OFFSET).cast::<u32>().cast_mut()) }
}

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("child") => child(),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[pid {}] error: {e}", process::getpid().as_raw_nonzero());
            ExitCode::FAILURE
        }
    }
}

fn parent() -> Result<()> {
    let me = process::getpid().as_raw_nonzero();
    let region = memfd::create_sealed(c"flowipc-shm-futex-fd", REGION_LEN as u64)?;
    println!(
        "[parent {me}] created memfd {}: {} bytes, seals {:?}",
        fmt_fd(region.as_fd()),
        memfd::size(region.as_fd())?,
        memfd::get_seals(region.as_fd())?
    );
    let map = Mapping::map(region.as_fd(), 0, REGION_LEN, Access::ReadWrite)?;
    let word = futex_word(&map);
    word.store(0, Ordering::Relaxed);

    let (report_rx, report_tx) = pipe::pipe()?;
    let (sock, child_sock) = socketpair_stream()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("child")
        .stdin(Stdio::from(child_sock))
        .spawn()?;
    println!("[parent {me}] started child {}", child.id());

    let sent = [region.as_fd(), report_tx.as_fd()];
    send_with_fds(sock.as_fd(), b"region+pipe", &sent, SendFlags::empty())?;
    println!(
        "[parent {me}] sent memfd {} and pipe write end {} over SCM_RIGHTS",
        fmt_fd(region.as_fd()),
        fmt_fd(report_tx.as_fd())
    );
    // Only the child holds the write end now, so the pipe reaches EOF when it is done.
    drop(report_tx);

    // Sleep until the child bumps the word, re-checking every 100 ms that it is still alive.
    let start = Instant::now();
    // Acquire: pairs with the child's Release store, so its message bytes are visible after.
    let seen = loop {
        let value = word.load(Ordering::Acquire);
        if value != 0 {
            break value;
        }
        match futex_wait(word, 0, Some(Duration::from_millis(100))) {
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => {}
            Err(e) => return Err(format!("futex_wait: {e}").into()),
        }
        if let Some(status) = child.try_wait()? {
            if word.load(Ordering::Acquire) == 0 {
                return Err(format!("child exited ({status}) without waking us").into());
            }
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            return Err(format!("no futex wake from the child within {DEADLINE:?}").into());
        }
    };
    println!(
        "[parent {me}] futex woke after {:?}: word = {seen}",
        start.elapsed()
    );

    // The length is written by the peer: check it before using it.
    // SAFETY: MSG_LEN_OFFSET..+4 is inside the mapping and 4-aligned; the value is copied out.
    let claimed = unsafe { ptr::read_volatile(map.as_ptr().add(MSG_LEN_OFFSET).cast::<u32>()) };
    let len = usize::try_from(claimed)
        .ok()
        .filter(|&n| n <= MSG_CAPACITY)
        .ok_or_else(|| {
            format!("child claimed a message of {claimed} bytes, over {MSG_CAPACITY}")
        })?;
    let mut message = vec![0u8; len];
    // SAFETY: MSG_OFFSET + len <= REGION_LEN (checked above); the bytes are copied out before use.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr().add(MSG_OFFSET), message.as_mut_ptr(), len) };
    println!(
        "[parent {me}] read {len} bytes from shared memory: {:?}",
        String::from_utf8_lossy(&message)
    );

    let mut report = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match pipe::read(report_rx.as_fd(), &mut buf)? {
            0 => break,
            n if report.len() + n <= 4096 => report.extend_from_slice(&buf[..n]),
            _ => return Err("child's report is too long".into()),
        }
    }
    println!(
        "[parent {me}] read from the passed pipe: {:?}",
        String::from_utf8_lossy(&report).trim_end()
    );

    let status = child.wait()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }
    if seen != 1 || !message.starts_with(b"hello from child") || report.is_empty() {
        return Err("unexpected content from the child".into());
    }
    println!("[parent {me}] child exited successfully; done");
    Ok(())
}

fn child() -> Result<()> {
    let me = process::getpid().as_raw_nonzero();
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();

    let mut tag = [0u8; 32];
    let mut fds = RecvFds::with_limit(2);
    let n = recv_with_fds(sock, &mut tag, &mut fds, RecvFlags::empty())?;
    if fds.len() != 2 {
        return Err(format!("expected 2 descriptors, got {}", fds.len()).into());
    }
    let mut fds = fds.drain();
    let (region, report) = (fds.next().unwrap(), fds.next().unwrap());
    let seals = memfd::get_seals(region.as_fd())?;
    let size = memfd::size(region.as_fd())?;
    println!(
        "[child {me}] received {:?} with memfd {} ({size} bytes, seals {seals:?}) and pipe {}",
        String::from_utf8_lossy(&tag[..n]),
        fmt_fd(region.as_fd()),
        fmt_fd(report.as_fd())
    );
    // Only map what the seals guarantee cannot shrink under us.
    if !seals.contains(SIZE_SEALS) || size < REGION_LEN as u64 {
        return Err("region is not sealed to its size".into());
    }

    let map = Mapping::map(region.as_fd(), 0, REGION_LEN, Access::ReadWrite)?;
    let message = format!("hello from child {me} through shared memory");
    let bytes = message.as_bytes();
    let dst = map.as_mut_ptr().ok_or("mapping is not writable")?;
    // SAFETY: MSG_OFFSET + bytes.len() <= REGION_LEN; the parent reads these bytes only after the
    // Release store below, and does not write them.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add(MSG_OFFSET), bytes.len()) };
    // SAFETY: MSG_LEN_OFFSET..+4 is inside the mapping and 4-aligned.
    unsafe { ptr::write_volatile(dst.add(MSG_LEN_OFFSET).cast::<u32>(), bytes.len() as u32) };

    let word = futex_word(&map);
    // Release: pairs with the parent's Acquire load; publishes the message and its length.
    word.store(1, Ordering::Release);
    let woken = futex_wake(word, 1)?;
    println!(
        "[child {me}] wrote {} bytes at offset {MSG_OFFSET}, set the futex word to 1, woke {woken} waiter(s)",
        bytes.len()
    );

    let line = format!(
        "child {me} wrote {} bytes and woke {woken} waiter(s)\n",
        bytes.len()
    );
    let written = pipe::write(report.as_fd(), line.as_bytes())?;
    if written != line.len() {
        return Err("short write to the pipe".into());
    }
    Ok(())
}

fn fmt_fd(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    format!("fd {}", fd.as_raw_fd())
}
