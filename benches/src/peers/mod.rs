//! Peer crates as systems (the non-default `peers` feature), measured by the same harness as
//! flowipc: two processes, the same pinning, the same payload touching and the same rows.
//!
//! - `iceoryx2`: iceoryx2 0.10 publish/subscribe with `[u8]` slices, a service per direction, in
//!   `busy-poll` mode (the receiver polls `Subscriber::receive`) and in `block` mode (each
//!   direction also has an event service; the sender notifies after every sample, the receiver
//!   sleeps in `Listener::blocking_wait` when nothing is there).
//! - `ipc-channel`: ipc-channel 0.23 `IpcBytesSender`/`IpcBytesReceiver` pairs, `block` mode only
//!   (its receivers sleep in the kernel).
//! - `ipc-channel-serde`: ipc-channel's typed channels with serde structs shaped like the
//!   structured rows' request and response (`rtt`, `block`): the peer of the structured rows.
//!
//! Both send by copying the message in (iceoryx2 into a loaned sample, ipc-channel into the socket)
//! and receive without a further copy, as their applications would read: iceoryx2 in place in the
//! publisher's shared memory, ipc-channel from the `Vec` it returns (see `Endpoint::recv_slice`).
//! Their documented defaults are kept; the one exception, lossless delivery for iceoryx2 streams,
//! is explained in its module.
//!
//! The harness hands the server only file descriptors, so names travel in a pipe: the client writes
//! the name into a pipe, closes the write end and passes the read end as the server's first fd
//! ([`name_fd`], [`read_name`]).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;

use crate::harness::System;
use crate::report::Row;

mod iceoryx2;
mod ipc_channel;
mod ipc_channel_serde;

/// The peer systems, in the order they are measured.
pub fn systems() -> [&'static dyn System; 3] {
    [
        &self::iceoryx2::Iceoryx2,
        &self::ipc_channel::IpcChannel,
        &self::ipc_channel_serde::IpcChannelSerde,
    ]
}

/// A pipe's read end from which the server reads `name` (the write end is already closed, so the
/// reader sees the end of the file after the name).
fn name_fd(name: &str) -> io::Result<OwnedFd> {
    let (read, write) = flowipc_sys::pipe::pipe().map_err(io::Error::from)?;
    // A name is far below the pipe buffer, so this cannot block.
    File::from(write).write_all(name.as_bytes())?;
    Ok(read)
}

/// Reads the name written by [`name_fd`].
fn read_name(fd: OwnedFd) -> io::Result<String> {
    let mut name = String::new();
    File::from(fd).read_to_string(&mut name)?;
    Ok(name)
}

/// The single fd of a peer's server side.
fn one_fd(system: &str, fds: Vec<OwnedFd>) -> io::Result<OwnedFd> {
    let [fd]: [OwnedFd; 1] = fds.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{system}: wrong number of fds"),
        )
    })?;
    Ok(fd)
}

/// The target against ipc-channel, per kind: at every size and placement that ipc-channel
/// ran, the best flowipc system in `block` mode beats it (lower RTT p50; more messages per second).
/// The ratio shown is flowipc's time over ipc-channel's (below 1 is faster); the worst case is
/// named, and every miss is listed.
pub fn check_ipc_channel(rows: &[Row]) {
    for (kind, what) in [("rtt", "RTT p50"), ("stream", "stream msgs/s")] {
        let title = format!("flowipc (best, block) beats ipc-channel {what} at every size");
        let refs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.system == "ipc-channel" && r.mode == "block" && r.kind == kind)
            .collect();
        // flowipc time / ipc-channel time for one row of ipc-channel.
        let ratio = |reference: &Row| -> Option<f64> {
            let ours = rows.iter().filter(|r| {
                r.system.starts_with("flowipc")
                    && r.mode == "block"
                    && r.kind == kind
                    && r.placement == reference.placement
                    && r.size_bytes == reference.size_bytes
            });
            if kind == "rtt" {
                let best = ours.filter_map(|r| r.p50_ns).reduce(f64::min)?;
                Some(best / reference.p50_ns?)
            } else {
                let best = ours.filter_map(|r| r.msgs_per_s).reduce(f64::max)?;
                Some(reference.msgs_per_s? / best)
            }
        };
        let compared: Vec<(f64, &Row)> =
            refs.iter().filter_map(|r| Some((ratio(r)?, *r))).collect();
        let Some(&(worst, at)) = compared.iter().max_by(|a, b| a.0.total_cmp(&b.0)) else {
            println!("  [skip] {title}: rows not measured");
            continue;
        };
        let misses: Vec<String> = compared
            .iter()
            .filter(|(v, _)| *v >= 1.0)
            .map(|(v, r)| format!("{} {} B {v:.2}x", r.placement, r.size_bytes))
            .collect();
        let status = if misses.is_empty() { "met" } else { "MISSED" };
        print!(
            "  [{status}] {title}: worst {worst:.2}x ({} {} B; {} sizes compared)",
            at.placement,
            at.size_bytes,
            compared.len()
        );
        if misses.is_empty() {
            println!();
        } else {
            println!("; slower at: {}", misses.join(", "));
        }
    }
}
