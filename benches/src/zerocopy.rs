//! `flowipc-structured-zerocopy`: the structured (Cap'n Proto) channel in zero copy, over a
//! session's ring init channel. `rtt` only: the client (this process) sends a request with a
//! small body (`sync_request`); the server answers with `send_response` of a response whose
//! `Data` field holds the row's size of payload. The server builds that response once, in its
//! lend pool, before the run starts (as Flow-IPC's perf_demo does) and sends the same message for
//! every request: each send lends its segments again and puts only their handles on the wire. The
//! client reads the response's root and touches the first and last byte of its data, where the
//! server built them; the timer stops there. Both ends receive in the caller
//! ([`StructuredOptions::receive_in_caller`]).
//!
//! The session: this process binds a session server in a fresh rendezvous directory (its own pid
//! in the name) and accepts on a thread; the harness's server process connects as the client app
//! (the same executable), asking for one ring init channel. Each side's lend pool holds twice the
//! response, so the largest row (1 GiB) maps 2 GiB of memfd per side, of which the response's
//! pages are touched once.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use flowipc::channel::TransportKind;
use flowipc::ring::WaitPolicy;
use flowipc::session::{App, ClientApp, ServerApp, Session, SessionOptions, SessionServer};
use flowipc::structured::{MsgIn, MsgOut, StructuredChannel, StructuredOptions};

use crate::harness::{Config, Endpoint, Kind, Message, Mode, Placement, Received, System};
use crate::ping_capnp::body;
use crate::structured::{build_payload, payload_parts};

type Chan = StructuredChannel<body::Owned>;

/// A request or response waits at most this long (the harness's watchdog ends a stuck run).
const WAIT: Duration = Duration::from_secs(30);

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn apps() -> io::Result<(ServerApp, ClientApp)> {
    let me = App::current("bench-zerocopy-client")?;
    let server = App::new("bench-zerocopy", &me.exe, me.uid, me.gid);
    Ok((ServerApp::new(server, vec![me.clone()]), ClientApp::new(me)))
}

fn rendezvous(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("flowipc-bench-zerocopy-{parent}"))
}

fn options(cfg: &Config) -> SessionOptions {
    let policy = match cfg.mode {
        Mode::BusyPoll => WaitPolicy::BusyPoll,
        Mode::SpinThenBlock => WaitPolicy::default(),
        Mode::Block => WaitPolicy::Block,
    };
    // Room for the response twice over (a message's segments grow by doubling), and for the
    // requests.
    let pool = (2 * cfg.size).max(32 << 20) + (16 << 20);
    SessionOptions::new()
        .ring_capacity(64 << 10)
        .max_message_size(64 << 10)
        .arenas(pool)
        .wait_policy(policy)
        .handshake_timeout(WAIT)
}

fn open(session: &mut Session) -> io::Result<Chan> {
    let zc = session.zero_copy().map_err(other)?;
    let channel = session
        .take_init_channels()
        .pop()
        .ok_or_else(|| io::Error::other("the session has no init channel"))?;
    StructuredOptions::new()
        .max_message_size(64 << 10)
        .receive_in_caller(true)
        .zero_copy(zc)
        .open(channel)
        .map_err(other)
}

/// The last request's flag and sequence number, and its response.
type Answered = (u8, u64, MsgIn<body::Owned>);

enum Side {
    /// Accepting on a thread until the first message.
    Accepting(Option<JoinHandle<io::Result<(Session, Chan)>>>),
    Client {
        ch: Chan,
        _session: Session,
        last: Option<Answered>,
    },
    Server {
        ch: Chan,
        _session: Session,
        response: MsgOut<body::Owned>,
        request: Option<MsgIn<body::Owned>>,
    },
}

struct ZeroCopyEndpoint {
    side: Side,
    size: usize,
}

impl ZeroCopyEndpoint {
    fn client(&mut self) -> io::Result<(&Chan, &mut Option<Answered>)> {
        if let Side::Accepting(thread) = &mut self.side {
            let (session, ch) = thread
                .take()
                .ok_or_else(|| io::Error::other("accept failed before"))?
                .join()
                .map_err(|_| io::Error::other("the accepting thread panicked"))??;
            self.side = Side::Client {
                ch,
                _session: session,
                last: None,
            };
        }
        match &mut self.side {
            Side::Client { ch, last, .. } => Ok((ch, last)),
            _ => Err(io::Error::other("not the client side")),
        }
    }
}

impl Endpoint for ZeroCopyEndpoint {
    fn send(&mut self, _msg: &[u8]) -> io::Result<()> {
        Err(io::Error::other("structured rows send messages, not bytes"))
    }

    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other(
            "structured rows receive messages, not bytes",
        ))
    }

    fn send_message(&mut self, msg: &Message, _scratch: &mut [u8]) -> io::Result<()> {
        if let Side::Server {
            ch,
            response,
            request,
            ..
        } = &mut self.side
        {
            let request = request
                .take()
                .ok_or_else(|| io::Error::other("a response with no request"))?;
            return ch.send_response(response, &request).map_err(other);
        }
        let size = self.size;
        let (ch, last) = self.client()?;
        let mut req = ch.create_msg();
        {
            let mut ping = req.body_root().init_ping();
            ping.set_seq(msg.seq);
            ping.set_payload_size(size as u32);
            ping.set_last(msg.flag != crate::harness::FLAG_DATA);
        }
        let resp = ch.sync_request(&req, WAIT).map_err(other)?;
        *last = Some((msg.flag, msg.seq, resp));
        Ok(())
    }

    fn recv_message(&mut self, _scratch: &mut [u8]) -> io::Result<Received> {
        match &mut self.side {
            Side::Server { ch, request, .. } => {
                let req = ch.recv_timeout(WAIT).map_err(other)?;
                let (seq, last) = {
                    let root = req.body_root().map_err(other)?;
                    let body::Ping(ping) = root.which().map_err(other)? else {
                        return Err(io::Error::other("the client sent something else"));
                    };
                    let ping = ping.map_err(other)?;
                    (ping.get_seq(), ping.get_last())
                };
                *request = Some(req);
                Ok(Received {
                    len: self.size,
                    flag: if last {
                        crate::harness::FLAG_END
                    } else {
                        crate::harness::FLAG_DATA
                    },
                    seq,
                })
            }
            _ => {
                let (_, last) = self.client()?;
                let (flag, seq, resp) = last
                    .take()
                    .ok_or_else(|| io::Error::other("no response to read"))?;
                let root = resp.body_root().map_err(other)?;
                let body::Pong(pong) = root.which().map_err(other)? else {
                    return Err(io::Error::other("the server answered with something else"));
                };
                // The root is read; touch the first and last byte where the server built them.
                let parts = payload_parts(pong.map_err(other)?).map_err(other)?;
                if let (Some(first), Some(last)) = (parts.first(), parts.last()) {
                    std::hint::black_box((first.first(), last.last()));
                }
                // The length is known from the list without touching the data.
                let len = parts.iter().map(|p| p.len()).sum();
                Ok(Received { len, flag, seq })
            }
        }
    }
}

/// The zero-copy structured system.
pub struct ZeroCopySystem;

impl ZeroCopySystem {
    /// Its row name.
    pub const NAME: &'static str = "flowipc-structured-zerocopy";
}

impl System for ZeroCopySystem {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn supports(&self, mode: Mode, placement: Placement, kind: Kind, _size: usize) -> bool {
        // As for the ring channel rows.
        kind == Kind::Rtt && (mode != Mode::BusyPoll || placement == Placement::CrossCore)
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let dir = rendezvous(std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        let (server, _) = apps()?;
        let srv = SessionServer::bind(&server, options(cfg).rendezvous_dir(&dir)).map_err(other)?;
        let thread = std::thread::spawn(move || {
            let mut session = srv.accept_timeout(Some(WAIT)).map_err(other)?;
            let ch = open(&mut session)?;
            drop(srv);
            let _ = std::fs::remove_dir_all(&dir);
            Ok((session, ch))
        });
        Ok((
            Box::new(ZeroCopyEndpoint {
                side: Side::Accepting(Some(thread)),
                size: cfg.size.max(crate::harness::MIN_SIZE),
            }),
            Vec::new(),
        ))
    }

    fn attach(&self, cfg: &Config, _fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let (server, client) = apps()?;
        let dir = rendezvous(std::os::unix::process::parent_id());
        let opts = options(cfg)
            .rendezvous_dir(&dir)
            .init_channel(TransportKind::Ring);
        let mut session = Session::connect(&client, &server, &opts).map_err(other)?;
        let ch = open(&mut session)?;
        let size = cfg.size.max(crate::harness::MIN_SIZE);
        // The response, built once in shared memory before the run, every cache line written.
        let mut response = ch.create_msg();
        let msg = Message {
            size,
            seq: 0,
            flag: crate::harness::FLAG_DATA,
        };
        build_payload(response.body_root().init_pong(), size, |base, part| {
            msg.build(|offset, bytes| {
                if (base..base + part.len()).contains(&offset) {
                    let at = offset - base;
                    part[at..at + bytes.len()].copy_from_slice(bytes)
                }
            })
        });
        Ok(Box::new(ZeroCopyEndpoint {
            side: Side::Server {
                ch,
                _session: session,
                response,
                request: None,
            },
            size,
        }))
    }
}

/// The targets for the zero-copy rows, as ratios of rows of this run (each mode and
/// placement): RTT(1 GiB) <= 1.2x RTT(1 KiB); RTT(1 MiB) <= 3x the bare ring's 64 B RTT
/// (`flowipc-ring`); and >= 10,000x faster than copy mode over a Unix socket at 1 GiB
/// (`flowipc-structured-socket`, when that row ran).
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
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut combos: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.system == ZeroCopySystem::NAME)
        .map(|r| (r.mode.clone(), r.placement.clone()))
        .collect();
    combos.sort();
    combos.dedup();
    if combos.is_empty() {
        println!("  [skip] flowipc-structured-zerocopy targets: rows not measured");
    }
    for (mode, placement) in combos {
        let zc = |size| p50(ZeroCopySystem::NAME, &mode, &placement, size);
        match (zc(1 << 30), zc(1024)) {
            (Some(big), Some(small)) => {
                let r = big / small;
                println!(
                    "  [{}] zerocopy {mode} {placement} RTT(1 GiB) <= 1.2 x RTT(1 KiB): {r:.2}x",
                    verdict(r <= 1.2)
                );
            }
            _ => println!("  [skip] zerocopy {mode} {placement} 1 GiB / 1 KiB: rows not measured"),
        }
        match (zc(1 << 20), p50("flowipc-ring", &mode, &placement, 64)) {
            (Some(mib), Some(ring)) => {
                let r = mib / ring;
                println!(
                    "  [{}] zerocopy {mode} {placement} RTT(1 MiB) <= 3 x flowipc-ring 64 B: {r:.2}x",
                    verdict(r <= 3.0)
                );
            }
            _ => println!(
                "  [skip] zerocopy {mode} {placement} 1 MiB vs flowipc-ring 64 B: rows not measured"
            ),
        }
        match (
            zc(1 << 30),
            p50("flowipc-structured-socket", &mode, &placement, 1 << 30),
        ) {
            (Some(ours), Some(socket)) => {
                let r = socket / ours;
                println!(
                    "  [{}] zerocopy {mode} {placement} >= 10000 x faster than copy mode over a \
                     socket at 1 GiB: {r:.0}x",
                    verdict(r >= 10_000.0)
                );
            }
            _ => println!(
                "  [skip] zerocopy {mode} {placement} vs flowipc-structured-socket at 1 GiB: rows \
                 not measured"
            ),
        }
    }
}
