//! `flowipc-channel-ring`, `flowipc-channel-socket`, `flowipc-channel-mq`: the application-level
//! [`flowipc::channel::Channel`] over each transport, handed to the server as
//! [`flowipc::channel::ChannelFds`] exactly as a session would hand it over, with `send` / `recv`.
//! `flowipc-channel-ring-zerocopy` is the ring channel used through `send_in_place` /
//! `recv_in_place`: each message is built in the ring frame and read there.

use std::io;
use std::os::fd::OwnedFd;

use flowipc::channel::{Channel, ChannelFds, ChannelOptions};
use flowipc::ring::WaitPolicy;

use crate::harness::{
    recv_copied, send_copied, Config, Endpoint, Kind, Message, Mode, Placement, Received, System,
};

struct ChannelEndpoint {
    channel: Channel,
    buf: Vec<u8>,
    in_place: bool,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl Endpoint for ChannelEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.channel.send(msg).map_err(other)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let msg = self.recv_slice(&mut [])?;
        let n = msg.len().min(buf.len());
        buf[..n].copy_from_slice(&msg[..n]);
        Ok(n)
    }

    fn recv_slice<'a>(&'a mut self, _scratch: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let meta = self.channel.recv(&mut self.buf).map_err(other)?;
        Ok(&self.buf[..meta.len])
    }

    fn send_message(&mut self, msg: &Message, scratch: &mut [u8]) -> io::Result<()> {
        if !self.in_place {
            return send_copied(self, msg, scratch);
        }
        self.channel
            .send_in_place(msg.size, |w| {
                msg.build(|offset, bytes| w.write_at(offset, bytes))
            })
            .map_err(other)
    }

    fn recv_message(&mut self, scratch: &mut [u8]) -> io::Result<Received> {
        if !self.in_place {
            return recv_copied(self, scratch);
        }
        let msg = self.channel.recv_in_place().map_err(other)?;
        // Dropping the message frees its frame.
        Ok(Received::read(msg.len(), |offset, dst| {
            msg.read_at(offset, dst);
        }))
    }
}

/// Which transport a channel system uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ring,
    Socket,
    Mq,
}

/// One of the three channel systems.
pub struct ChannelSystem {
    name: &'static str,
    transport: Transport,
    /// Messages built and read with `send_in_place` / `recv_in_place`.
    in_place: bool,
}

impl ChannelSystem {
    /// Two rings in a sealed memfd plus a companion socket.
    pub const RING: ChannelSystem = ChannelSystem {
        name: "flowipc-channel-ring",
        transport: Transport::Ring,
        in_place: false,
    };
    /// The ring channel, messages built and read in place.
    pub const RING_ZERO_COPY: ChannelSystem = ChannelSystem {
        name: "flowipc-channel-ring-zerocopy",
        transport: Transport::Ring,
        in_place: true,
    };
    /// A Unix stream socket with length-prefixed frames.
    pub const SOCKET: ChannelSystem = ChannelSystem {
        name: "flowipc-channel-socket",
        transport: Transport::Socket,
        in_place: false,
    };
    /// A pair of POSIX message queues (unlinked at once) plus a companion socket.
    pub const MQ: ChannelSystem = ChannelSystem {
        name: "flowipc-channel-mq",
        transport: Transport::Mq,
        in_place: false,
    };

    fn options(&self, cfg: &Config) -> ChannelOptions {
        let policy = match cfg.mode {
            Mode::BusyPoll => WaitPolicy::BusyPoll,
            Mode::SpinThenBlock => WaitPolicy::default(),
            Mode::Block => WaitPolicy::Block,
        };
        ChannelOptions::new()
            .wait_policy(policy)
            .ring_capacity(crate::ring::capacity_for(cfg.size, cfg.kind))
    }
}

impl System for ChannelSystem {
    fn name(&self) -> &'static str {
        self.name
    }

    fn supports(&self, mode: Mode, placement: Placement, _kind: Kind, _size: usize) -> bool {
        match self.transport {
            // Busy-polling on the CPU the peer needs only delays it; same-core ring runs block or
            // spin then block (the default policy, whose spins adapt away on one CPU).
            Transport::Ring => mode != Mode::BusyPoll || placement == Placement::CrossCore,
            // The kernel transports wait in poll(2): blocking is all they do.
            Transport::Socket | Transport::Mq => mode == Mode::Block,
        }
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let opts = self.options(cfg);
        let (client, server) = match self.transport {
            Transport::Ring => opts.ring_pair(),
            Transport::Socket => opts.socket_pair(),
            Transport::Mq => opts.mq_pair(),
        }
        .map_err(other)?;
        let (_kind, fds) = server.into_fds().map_err(other)?.into_parts();
        Ok((
            Box::new(ChannelEndpoint {
                channel: client,
                buf: Vec::new(),
                in_place: self.in_place,
            }),
            fds,
        ))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let kind = match self.transport {
            Transport::Ring => flowipc::channel::TransportKind::Ring,
            Transport::Socket => flowipc::channel::TransportKind::Socket,
            Transport::Mq => flowipc::channel::TransportKind::Mq,
        };
        let fds = ChannelFds::from_parts(kind, fds);
        let channel = self.options(cfg).from_fds(fds).map_err(other)?;
        Ok(Box::new(ChannelEndpoint {
            channel,
            buf: Vec::new(),
            in_place: self.in_place,
        }))
    }
}
