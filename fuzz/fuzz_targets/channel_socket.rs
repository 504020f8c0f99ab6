//! Hostile input for the socket channel, end to end: a raw peer writes arbitrary bytes (headers
//! built from arbitrary fields, raw bytes, long runs) into one end of a socket pair in several
//! `sendmsg`s, some carrying eventfds, then closes or shuts down its end; the other end is a
//! non-blocking `Channel` with small limits, drained with `try_recv` until it reports an error.
//!
//! Checked: no panic; it ends within one call per 8 bytes sent (no hang, never `WouldBlock` once
//! the peer's bytes and end-of-stream are queued); every message is what an independent parse of
//! the byte stream says, within the limits; when no descriptors were sent, every outcome (message,
//! `Closed`, `PeerGone`, `Corrupt`) is exactly what that parse predicts; and no descriptor leaks
//! (`/proc/self/fd` counted before and after).
#![no_main]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use arbitrary::Arbitrary;
use flowipc::channel::fuzzing::socket_encode_header;
use flowipc::channel::{ChannelOptions, RecvError};
use flowipc_sys::eventfd::{eventfd, EventfdFlags};
use flowipc_sys::socket::{self, SendFlags, Shutdown};
use flowipc_sys::Errno;
use libfuzzer_sys::fuzz_target;

const MAX_SIZES: [usize; 4] = [1 << 20, 0, 100, 20_000];
/// Bytes the peer writes at most (well below a socket pair's buffer, so the writes never block).
const MAX_STREAM: usize = 96 * 1024;

#[derive(Arbitrary, Debug)]
enum Seg {
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A header as a sender would encode it (length below 2^16 or huge, kind data or close).
    Header {
        close: bool,
        len: u16,
        big: bool,
        nfds: u8,
    },
    /// A header word from an arbitrary value.
    Word(u64),
    /// `count` copies of `byte` (long payloads cheaply).
    Run { byte: u8, count: u16 },
}

#[derive(Arbitrary, Debug)]
struct Write {
    segs: Vec<Seg>,
    /// Eventfds attached to this `sendmsg` (`% 10`).
    fds: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_size: u8,
    max_fds: u8,
    /// `true`: `shutdown(Write)` the peer's end and keep it open; `false`: close it.
    shutdown: bool,
    writes: Vec<Write>,
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Message(Vec<u8>, usize),
    Closed,
    PeerGone,
    Corrupt,
    /// A complete message of kind 0xD2 (it carries a channel, `send_channel`): held for
    /// `recv_channel`, so every later plain receive reports it again.
    ChannelMessage,
}

/// What the receiver must report for the stream `s` (from its start), and how many bytes that
/// consumes. `fds_sent`: whether any descriptors were sent at all (if not, a header declaring some
/// is corrupt; if so, the descriptor matching is not modelled).
fn parse(s: &[u8], max: usize, max_fds: usize, fds_sent: bool) -> (Outcome, usize) {
    if s.len() < 8 {
        return (Outcome::PeerGone, 0);
    }
    let word = u64::from_le_bytes(s[..8].try_into().unwrap());
    let len = word & ((1 << 48) - 1);
    let nfds = ((word >> 48) & 0xff) as usize;
    match word >> 56 {
        kind @ (0xD1 | 0xD2) => {
            if len > max as u64 || nfds > max_fds || (nfds > 0 && !fds_sent) {
                return (Outcome::Corrupt, 0);
            }
            let len = len as usize;
            if s.len() - 8 < len {
                return (Outcome::PeerGone, 0);
            }
            if kind == 0xD2 {
                return (Outcome::ChannelMessage, 8 + len);
            }
            (Outcome::Message(s[8..8 + len].to_vec(), nfds), 8 + len)
        }
        0xC1 if len == 0 && nfds == 0 => (Outcome::Closed, 8),
        _ => (Outcome::Corrupt, 0),
    }
}

fuzz_target!(|input: Input| {
    let max = MAX_SIZES[usize::from(input.max_size % 4)];
    let max_fds = usize::from(input.max_fds % 9);
    let before = open_fds();
    {
        let (a, peer) = socket::socketpair_stream().unwrap();
        let mut sent = Vec::new();
        let mut fds_sent = false;
        let mut chunk = Vec::new();
        'writes: for w in input.writes.iter().take(64) {
            chunk.clear();
            for seg in &w.segs {
                match *seg {
                    Seg::Bytes(ref b) => chunk.extend_from_slice(b),
                    Seg::Header {
                        close,
                        len,
                        big,
                        nfds,
                    } => {
                        let len = if big {
                            (u64::from(len) << 32) | 0xffff
                        } else {
                            u64::from(len)
                        };
                        let nfds = usize::from(nfds).min(253);
                        chunk.extend_from_slice(&socket_encode_header(close, len, nfds));
                    }
                    Seg::Word(wd) => chunk.extend_from_slice(&wd.to_le_bytes()),
                    Seg::Run { byte, count } => {
                        chunk.extend(std::iter::repeat_n(byte, usize::from(count)))
                    }
                }
            }
            chunk.truncate(MAX_STREAM.saturating_sub(sent.len()));
            if chunk.is_empty() {
                continue;
            }
            let efds: Vec<OwnedFd> = (0..w.fds % 10)
                .map(|_| eventfd(0, EventfdFlags::empty()).unwrap())
                .collect();
            let borrowed: Vec<BorrowedFd<'_>> = efds.iter().map(AsFd::as_fd).collect();
            let mut off = 0;
            while off < chunk.len() {
                let r = if off == 0 && !borrowed.is_empty() {
                    socket::send_with_fds(peer.as_fd(), &chunk, &borrowed, SendFlags::DONTWAIT)
                } else {
                    socket::send(peer.as_fd(), &chunk[off..], SendFlags::DONTWAIT)
                };
                match r {
                    Ok(n) => {
                        fds_sent |= off == 0 && !borrowed.is_empty();
                        sent.extend_from_slice(&chunk[off..off + n]);
                        off += n;
                    }
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        assert_eq!(e, Errno::AGAIN, "send on a socket pair");
                        break 'writes;
                    }
                }
            }
            // `efds` dropped here: the copies in flight belong to the socket now.
        }
        let peer = if input.shutdown {
            socket::shutdown(peer.as_fd(), Shutdown::Write).unwrap();
            Some(peer)
        } else {
            drop(peer);
            None
        };

        let mut ch = ChannelOptions::new()
            .max_message_size(max)
            .max_fds_per_message(max_fds)
            .from_socket(a);
        ch.set_nonblocking(true);
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut done = false;
        for _ in 0..sent.len() / 8 + 2 {
            let (want, used) = parse(&sent[pos..], max, max_fds, fds_sent);
            let got = match ch.try_recv(&mut buf) {
                Ok(meta) => {
                    assert_eq!(meta.len, buf.len());
                    assert!(buf.len() <= max, "message above max_message_size");
                    assert!(meta.fds.len() <= max_fds, "more descriptors than allowed");
                    Outcome::Message(std::mem::take(&mut buf), meta.fds.len())
                }
                Err(RecvError::Closed) => Outcome::Closed,
                Err(RecvError::PeerGone) => Outcome::PeerGone,
                Err(RecvError::Corrupt(_)) => Outcome::Corrupt,
                Err(RecvError::ChannelMessage) => Outcome::ChannelMessage,
                Err(RecvError::WouldBlock) => {
                    panic!("WouldBlock with everything queued and end-of-stream")
                }
                Err(e) => panic!("unexpected receive error {e:?}"),
            };
            if got != want {
                // Unmodelled descriptor matching can only make a message corrupt.
                assert!(
                    fds_sent && got == Outcome::Corrupt,
                    "at byte {pos}: got {got:?}, the stream says {want:?}"
                );
            }
            match got {
                Outcome::Message(..) => pos += used,
                Outcome::Closed => {
                    // Closed stays closed.
                    assert!(matches!(ch.try_recv(&mut buf), Err(RecvError::Closed)));
                    done = true;
                    break;
                }
                Outcome::PeerGone => {
                    done = true;
                    break;
                }
                Outcome::ChannelMessage => {
                    // Held, not lost: a plain receive keeps reporting it.
                    assert!(matches!(
                        ch.try_recv(&mut buf),
                        Err(RecvError::ChannelMessage)
                    ));
                    done = true;
                    break;
                }
                Outcome::Corrupt => {
                    assert!(matches!(ch.try_recv(&mut buf), Err(RecvError::Poisoned)));
                    done = true;
                    break;
                }
            }
        }
        assert!(done, "try_recv did not finish within one call per 8 bytes");
        drop(ch);
        drop(peer);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
});
