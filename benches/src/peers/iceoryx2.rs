//! `iceoryx2`: iceoryx2 0.10 publish/subscribe over `[u8]` slices, one service per direction, with
//! its documented defaults except where the measurement needs otherwise:
//!
//! - the publisher's `initial_max_slice_len` is the configuration's payload size (slices need a
//!   maximum length when the publisher is created);
//! - `stream` runs create their services with `enable_safe_overflow(false)`: by default a full
//!   subscriber buffer overwrites the oldest sample, which would drop messages that the server
//!   must count; with overflow off, the default `RetryUntilDelivered` backpressure applies;
//! - nodes are created with `SignalHandlingMode::Disabled` (it only affects `Node::wait`, which is
//!   not used) and the default `Config` passed explicitly (the same values, without a warning that
//!   no config file was found).
//!
//! `block` mode adds an event service per direction: the sender notifies after every sample (the
//! pattern of iceoryx2's event-based-communication example) and the receiver sleeps in
//! `Listener::blocking_wait` whenever `receive` finds nothing. `busy-poll` polls `receive`.
//!
//! Service names are unique per run (`flowipc-bench-<pid>-<n>-...`). iceoryx2 keeps its shared
//! memory in `/dev/shm/iox2_*` and its node and service records under `/tmp/iceoryx2/`; dropping the
//! ports, services and node (in that order, as the endpoint's field order does) removes them, and
//! a process killed mid-run leaves records that the next node creation cleans up (iceoryx2's
//! `cleanup_dead_nodes_on_creation` default).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use ::iceoryx2::port::listener::Listener;
use ::iceoryx2::port::notifier::Notifier;
use ::iceoryx2::port::publisher::Publisher;
use ::iceoryx2::port::subscriber::Subscriber;
use ::iceoryx2::port::update_connections::UpdateConnections;
use ::iceoryx2::prelude::*;
use ::iceoryx2::sample::Sample;
use ::iceoryx2::service::port_factory::event::PortFactory as EventService;
use ::iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSubService;

use super::{name_fd, one_fd, read_name};
use crate::harness::{Config, Endpoint, Kind, Mode, Placement, System, MIN_SIZE};

const NAME: &str = "iceoryx2";

fn err(what: &str, e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{NAME}: {what}: {e:?}"))
}

/// Services and ports in the same order each side, dropped ports first, node last.
struct Iox2Endpoint {
    /// The sample last received, read in place and released by the next receive (see
    /// [`Endpoint::recv_slice`]).
    last: Option<Sample<ipc::Service, [u8], ()>>,
    publisher: Publisher<ipc::Service, [u8], ()>,
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    /// `block` mode: wakes the peer's listener after each sample.
    notifier: Option<Notifier<ipc::Service>>,
    /// `block` mode: where this side sleeps.
    listener: Option<Listener<ipc::Service>>,
    /// The subscriber has looked for the peer's publisher (see [`Endpoint::send`]).
    connected: bool,
    _services: Vec<PubSubService<ipc::Service, [u8], ()>>,
    _events: Vec<EventService<ipc::Service>>,
    _node: Node<ipc::Service>,
}

/// Which way a service carries samples.
#[derive(Clone, Copy)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

impl Dir {
    fn suffix(self) -> &'static str {
        match self {
            Dir::ClientToServer => "c2s",
            Dir::ServerToClient => "s2c",
        }
    }
}

fn service_name(base: &str, dir: Dir, what: &str) -> io::Result<ServiceName> {
    ServiceName::new(&format!("{base}-{}-{what}", dir.suffix())).map_err(|e| err("service name", e))
}

impl Iox2Endpoint {
    /// Client (`create`) or server (`open`) side of a run under the names starting with `base`.
    fn new(cfg: &Config, base: &str, client: bool) -> io::Result<Self> {
        // The defaults, given explicitly: without a config file iceoryx2 warns that it uses them.
        let node = NodeBuilder::new()
            .config(&::iceoryx2::config::Config::default())
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(|e| err("node", e))?;
        let size = cfg.size.max(MIN_SIZE);
        let (out, inc) = if client {
            (Dir::ClientToServer, Dir::ServerToClient)
        } else {
            (Dir::ServerToClient, Dir::ClientToServer)
        };
        let pubsub = |dir: Dir| -> io::Result<PubSubService<ipc::Service, [u8], ()>> {
            let builder = node
                .service_builder(&service_name(base, dir, "data")?)
                .publish_subscribe::<[u8]>();
            if client {
                let builder = if cfg.kind == Kind::Stream {
                    builder.enable_safe_overflow(false)
                } else {
                    builder
                };
                builder.create().map_err(|e| err("create service", e))
            } else {
                builder.open().map_err(|e| err("open service", e))
            }
        };
        let event = |dir: Dir| -> io::Result<EventService<ipc::Service>> {
            let builder = node
                .service_builder(&service_name(base, dir, "event")?)
                .event();
            if client {
                builder.create().map_err(|e| err("create event", e))
            } else {
                builder.open().map_err(|e| err("open event", e))
            }
        };
        // The client creates both directions before the server opens them.
        let (out_svc, in_svc) = if client {
            let c2s = pubsub(out)?;
            (c2s, pubsub(inc)?)
        } else {
            let c2s = pubsub(inc)?;
            (pubsub(out)?, c2s)
        };
        let publisher = out_svc
            .publisher_builder()
            .initial_max_slice_len(size)
            .create()
            .map_err(|e| err("publisher", e))?;
        let subscriber = in_svc
            .subscriber_builder()
            .create()
            .map_err(|e| err("subscriber", e))?;
        let (notifier, listener, events) = if cfg.mode == Mode::Block {
            let (out_evt, in_evt) = if client {
                let c2s = event(out)?;
                (c2s, event(inc)?)
            } else {
                let c2s = event(inc)?;
                (event(out)?, c2s)
            };
            let notifier = out_evt
                .notifier_builder()
                .create()
                .map_err(|e| err("notifier", e))?;
            let listener = in_evt
                .listener_builder()
                .create()
                .map_err(|e| err("listener", e))?;
            (Some(notifier), Some(listener), vec![out_evt, in_evt])
        } else {
            (None, None, Vec::new())
        };
        Ok(Self {
            last: None,
            publisher,
            subscriber,
            notifier,
            listener,
            connected: false,
            _services: vec![out_svc, in_svc],
            _events: events,
            _node: node,
        })
    }
}

impl Endpoint for Iox2Endpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        if !self.connected {
            // A subscriber connects to a new publisher when it next receives. The client of a
            // stream run receives only the final acknowledgement, when the server may already
            // have exited, taking its publisher's data with it; so connect before the first send,
            // when the server is known to be up (it reported ready).
            self.subscriber
                .update_connections()
                .map_err(|e| err("connect", e))?;
            self.connected = true;
        }
        let sample = self
            .publisher
            .loan_slice_uninit(msg.len())
            .map_err(|e| err("loan", e))?;
        let sample = sample.write_from_slice(msg);
        sample.send().map_err(|e| err("send", e))?;
        if let Some(notifier) = &self.notifier {
            notifier.notify().map_err(|e| err("notify", e))?;
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let msg = self.recv_slice(&mut [])?;
        let n = msg.len().min(buf.len());
        buf[..n].copy_from_slice(&msg[..n]);
        Ok(n)
    }

    /// Zero-copy, as an iceoryx2 application reads: the payload in the publisher's shared memory,
    /// held until the next receive (the default allows a subscriber two borrowed samples).
    fn recv_slice<'a>(&'a mut self, _scratch: &'a mut [u8]) -> io::Result<&'a [u8]> {
        self.last = None;
        loop {
            if let Some(sample) = self.subscriber.receive().map_err(|e| err("receive", e))? {
                return Ok(self.last.insert(sample).payload());
            }
            match &self.listener {
                // Wakes at once if a notification arrived since the last wait; collects them all.
                Some(listener) => {
                    listener.blocking_wait(|_| {}).map_err(|e| err("wait", e))?;
                }
                None => std::hint::spin_loop(),
            }
        }
    }
}

/// The `iceoryx2` system.
pub struct Iceoryx2;

/// Distinguishes the runs of one bench process.
static RUN: AtomicU64 = AtomicU64::new(0);

impl System for Iceoryx2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supports(&self, mode: Mode, placement: Placement, _kind: Kind, _size: usize) -> bool {
        match mode {
            // Polling on the CPU the peer needs only delays it, as for flowipc-ring.
            Mode::BusyPoll => placement == Placement::CrossCore,
            Mode::SpinThenBlock => false,
            Mode::Block => true,
        }
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let base = format!(
            "flowipc-bench-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let ep = Iox2Endpoint::new(cfg, &base, true)?;
        Ok((Box::new(ep), vec![name_fd(&base)?]))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let base = read_name(one_fd(NAME, fds)?)?;
        Ok(Box::new(Iox2Endpoint::new(cfg, &base, false)?))
    }
}
