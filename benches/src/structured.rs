//! `flowipc-structured-ring`, `flowipc-structured-socket`: the structured (Cap'n Proto) channel,
//! copy mode, over the ring and socket channels. `rtt` only: the client sends a request with a
//! small body (sequence number, requested size, a last-request flag) with `sync_request`; the
//! server answers with `send_response`, a response whose `Data` field carries the row's size of
//! payload (the harness's message, every cache line written). The client reads every cache line
//! of the response's data. A row compares with `flowipc-channel-ring` of the same mode, placement
//! and size, whose echo carries the size both ways.
//!
//! Both ends receive in the caller ([`StructuredOptions::receive_in_caller`]): the thread that
//! waits for a response (or a request) receives it, with no reader thread and no hand-off
//! between threads, as a latency-minded application would configure it.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use flowipc::channel::{Channel, ChannelFds, ChannelOptions, TransportKind};
use flowipc::ring::WaitPolicy;
use flowipc::structured::{MsgIn, StructuredChannel, StructuredOptions};

use crate::harness::{Config, Endpoint, Kind, Message, Mode, Placement, Received, System};

use crate::ping_capnp::body;

type Chan = StructuredChannel<body::Owned>;

/// A request or response waits at most this long (the harness's watchdog ends a stuck run).
const WAIT: Duration = Duration::from_secs(30);

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// The channel's message limit for a row: the payload, the framing of its chunks, the envelope.
fn max_message(size: usize) -> usize {
    size.max(1 << 20) + (1 << 20)
}

/// Largest payload in one `Data` field (a capnp list holds at most 2^29 elements); larger
/// payloads go in `Pong.chunks` of this size.
pub(crate) const MAX_DATA: usize = 256 << 20;

/// Builds `size` bytes of payload in `pong`: `fill(offset, part)` writes each part, whose first
/// byte is byte `offset` of the payload.
pub(crate) fn build_payload(
    mut pong: crate::ping_capnp::pong::Builder<'_>,
    size: usize,
    mut fill: impl FnMut(usize, &mut [u8]),
) {
    if size <= MAX_DATA {
        fill(0, pong.init_payload(size as u32));
        return;
    }
    let n = size.div_ceil(MAX_DATA);
    let mut chunks = pong.reborrow().init_chunks(n as u32);
    let mut part = vec![0u8; MAX_DATA];
    for i in 0..n {
        let len = MAX_DATA.min(size - i * MAX_DATA);
        fill(i * MAX_DATA, &mut part[..len]);
        chunks.set(i as u32, &part[..len]);
    }
}

/// The payload of `pong` as its parts (one, or the chunks), in order.
pub(crate) fn payload_parts(
    pong: crate::ping_capnp::pong::Reader<'_>,
) -> capnp::Result<Vec<&[u8]>> {
    if pong.has_chunks() {
        pong.get_chunks()?.iter().collect()
    } else {
        Ok(vec![pong.get_payload()?])
    }
}

struct StructuredEndpoint {
    ch: Chan,
    /// Client: the response of the last request. Server: the request to answer.
    last: Option<MsgIn<body::Owned>>,
    size: usize,
}

fn capnp_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("capnp: {e}"))
}

impl Endpoint for StructuredEndpoint {
    fn send(&mut self, _msg: &[u8]) -> io::Result<()> {
        Err(io::Error::other("structured rows send messages, not bytes"))
    }

    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other(
            "structured rows receive messages, not bytes",
        ))
    }

    fn send_message(&mut self, msg: &Message, _scratch: &mut [u8]) -> io::Result<()> {
        let size = self.size;
        let request = self.last.take();
        let ch = &self.ch;
        match request {
            // Server: answer the request with `size` bytes of data, built in the message.
            Some(request) => {
                let mut resp = ch.create_msg();
                build_payload(resp.body_root().init_pong(), msg.size, |base, part| {
                    msg.build(|offset, bytes| {
                        if (base..base + part.len()).contains(&offset) {
                            let at = offset - base;
                            part[at..at + bytes.len()].copy_from_slice(bytes)
                        }
                    })
                });
                ch.send_response(&resp, &request).map_err(other)
            }
            // Client: a small request, and wait for its response.
            None => {
                let mut req = ch.create_msg();
                {
                    let mut ping = req.body_root().init_ping();
                    ping.set_seq(msg.seq);
                    ping.set_payload_size(size as u32);
                    ping.set_last(msg.flag != crate::harness::FLAG_DATA);
                }
                let resp = ch.sync_request(&req, WAIT).map_err(other)?;
                self.last = Some(resp);
                Ok(())
            }
        }
    }

    fn recv_message(&mut self, _scratch: &mut [u8]) -> io::Result<Received> {
        // Client: the response that `send_message` received; read its data.
        if let Some(resp) = self.last.take() {
            let root = resp.body_root().map_err(other)?;
            let body::Pong(pong) = root.which().map_err(capnp_err)? else {
                return Err(io::Error::other("the server answered with something else"));
            };
            let parts = payload_parts(pong.map_err(capnp_err)?).map_err(capnp_err)?;
            let len = parts.iter().map(|p| p.len()).sum();
            return Ok(Received::read(len, |offset, dst| {
                let part = parts[offset / MAX_DATA];
                let at = offset % MAX_DATA;
                dst.copy_from_slice(&part[at..at + dst.len()])
            }));
        }
        // Server: the next request.
        let size = self.size;
        let req = self.ch.recv_timeout(WAIT).map_err(other)?;
        let (seq, last) = {
            let root = req.body_root().map_err(other)?;
            let body::Ping(ping) = root.which().map_err(capnp_err)? else {
                return Err(io::Error::other(
                    "the client sent something else than a ping",
                ));
            };
            let ping = ping.map_err(capnp_err)?;
            (ping.get_seq(), ping.get_last())
        };
        self.last = Some(req);
        Ok(Received {
            len: size,
            flag: if last {
                crate::harness::FLAG_END
            } else {
                crate::harness::FLAG_DATA
            },
            seq,
        })
    }
}

/// One of the structured systems.
pub struct StructuredSystem {
    name: &'static str,
    transport: TransportKind,
}

impl StructuredSystem {
    /// Over the ring channel.
    pub const RING: StructuredSystem = StructuredSystem {
        name: "flowipc-structured-ring",
        transport: TransportKind::Ring,
    };
    /// Over the socket channel.
    pub const SOCKET: StructuredSystem = StructuredSystem {
        name: "flowipc-structured-socket",
        transport: TransportKind::Socket,
    };

    fn options(&self, cfg: &Config) -> ChannelOptions {
        let policy = match cfg.mode {
            Mode::BusyPoll => WaitPolicy::BusyPoll,
            Mode::SpinThenBlock => WaitPolicy::default(),
            Mode::Block => WaitPolicy::Block,
        };
        // The envelope and capnp framing add a few dozen bytes to the payload.
        ChannelOptions::new()
            .wait_policy(policy)
            .max_message_size(max_message(cfg.size))
            .ring_capacity(crate::ring::capacity_for(cfg.size + 256, cfg.kind))
    }

    fn endpoint(cfg: &Config, channel: Channel) -> io::Result<Box<dyn Endpoint>> {
        let ch = StructuredOptions::new()
            .max_message_size(max_message(cfg.size))
            .receive_in_caller(true)
            .open(channel)
            .map_err(other)?;
        Ok(Box::new(StructuredEndpoint {
            ch,
            last: None,
            size: cfg.size.max(crate::harness::MIN_SIZE),
        }))
    }
}

impl System for StructuredSystem {
    fn name(&self) -> &'static str {
        self.name
    }

    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, _size: usize) -> bool {
        kind == Kind::Rtt
            && match self.transport {
                // As for the ring channel rows.
                TransportKind::Ring => mode != Mode::BusyPoll || placement == Placement::CrossCore,
                _ => mode == Mode::Block,
            }
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let opts = self.options(cfg);
        let (client, server) = match self.transport {
            TransportKind::Ring => opts.ring_pair(),
            _ => opts.socket_pair(),
        }
        .map_err(other)?;
        let (_kind, fds) = server.into_fds().map_err(other)?.into_parts();
        Ok((Self::endpoint(cfg, client)?, fds))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let fds = ChannelFds::from_parts(self.transport, fds);
        let channel = self.options(cfg).from_fds(fds).map_err(other)?;
        Self::endpoint(cfg, channel)
    }
}

/// The targets for the structured rows, as ratios of rows of this run: over the ring,
/// at most 1.5x the ring channel's RTT p50 at 64 B and 1 KiB (each mode and placement both ran);
/// at most 0.7x `ipc-channel-serde`'s at every size and placement it ran (`block`, the better
/// of the two structured rows).
pub fn check_targets(rows: &[crate::report::Row]) {
    let p50 = |system: &str, mode: &str, placement: &str, size: u64| {
        rows.iter()
            .find(|r| {
                r.system == system
                    && r.mode == mode
                    && r.placement == placement
                    && r.kind == "rtt"
                    && r.size_bytes == size
            })
            .and_then(|r| r.p50_ns)
    };
    let verdict = |ratio: f64, bound: f64| if ratio <= bound { "met" } else { "MISSED" };
    let mut any = false;
    for r in rows
        .iter()
        .filter(|r| r.system == StructuredSystem::RING.name)
    {
        if r.kind != "rtt" || !(r.size_bytes == 64 || r.size_bytes == 1024) {
            continue;
        }
        let (Some(ours), Some(raw)) = (
            r.p50_ns,
            p50("flowipc-channel-ring", &r.mode, &r.placement, r.size_bytes),
        ) else {
            continue;
        };
        any = true;
        let ratio = ours / raw;
        println!(
            "  [{}] flowipc-structured-ring {} {} {} B p50 <= 1.5 x flowipc-channel-ring: {ratio:.2}x",
            verdict(ratio, 1.5),
            r.mode,
            r.placement,
            r.size_bytes
        );
    }
    if !any {
        println!(
            "  [skip] flowipc-structured-ring <= 1.5 x flowipc-channel-ring: rows not measured"
        );
    }
    let mut worst: Option<(f64, u64, String)> = None;
    for r in rows
        .iter()
        .filter(|r| r.system == "ipc-channel-serde" && r.kind == "rtt")
    {
        let best = [StructuredSystem::RING.name, StructuredSystem::SOCKET.name]
            .iter()
            .filter_map(|s| p50(s, "block", &r.placement, r.size_bytes))
            .min_by(f64::total_cmp);
        let (Some(ours), Some(theirs)) = (best, r.p50_ns) else {
            continue;
        };
        let ratio = ours / theirs;
        if worst.as_ref().is_none_or(|w| ratio > w.0) {
            worst = Some((ratio, r.size_bytes, r.placement.clone()));
        }
    }
    match worst {
        Some((ratio, size, placement)) => println!(
            "  [{}] flowipc-structured (best, block) p50 <= 0.7 x ipc-channel-serde at every size: \
             worst {ratio:.2}x ({size} B, {placement})",
            verdict(ratio, 0.7)
        ),
        None => println!(
            "  [skip] flowipc-structured <= 0.7 x ipc-channel-serde: rows not measured (feature peers)"
        ),
    }
}
