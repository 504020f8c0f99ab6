//! `ipc-channel`: ipc-channel 0.23 byte channels (`IpcBytesSender`/`IpcBytesReceiver`, its API for
//! raw bytes, no serialisation), one per direction, with the crate's defaults. `block` mode only:
//! its receivers sleep in `recvmsg`.
//!
//! Rendezvous, as the crate intends it: the client opens an `IpcOneShotServer` and passes its name
//! to the server (in a pipe, see [`super::name_fd`]); the server makes both channels and sends the
//! client its halves through `IpcSender::connect(name)`. The client cannot accept in
//! [`System::setup`], which runs before the server has the name, so it accepts on its first
//! operation: the server has connected by then (it connects before it reports ready), so `accept`
//! returns at once, and in `rtt` runs it falls in the warm-up. The server socket lives in a
//! temporary directory that ipc-channel removes.

use std::io;
use std::os::fd::OwnedFd;

use ::ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};

use super::{name_fd, one_fd, read_name};
use crate::harness::{Config, Endpoint, Kind, Mode, Placement, System};

const NAME: &str = "ipc-channel";

/// What the server sends the client: the client's sender and receiver.
type ClientHalves = (IpcBytesSender, IpcBytesReceiver);

fn err(what: &str, e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{NAME}: {what}: {e:?}"))
}

enum IpcChannelEndpoint {
    /// Client before its first operation: still to accept the server's connection.
    Accepting(Option<IpcOneShotServer<ClientHalves>>),
    Ready {
        tx: IpcBytesSender,
        rx: IpcBytesReceiver,
        /// The message last received: ipc-channel hands over a fresh `Vec` per message, which
        /// [`Endpoint::recv_slice`] lends out rather than copying.
        last: Vec<u8>,
    },
}

impl IpcChannelEndpoint {
    /// The channels (accepting first if need be) and the last message received.
    fn ready(&mut self) -> io::Result<(&IpcBytesSender, &IpcBytesReceiver, &mut Vec<u8>)> {
        if let IpcChannelEndpoint::Accepting(server) = self {
            let server = server
                .take()
                .ok_or_else(|| err("accept", "failed before"))?;
            let (_, (tx, rx)) = server.accept().map_err(|e| err("accept", e))?;
            *self = IpcChannelEndpoint::Ready {
                tx,
                rx,
                last: Vec::new(),
            };
        }
        match self {
            IpcChannelEndpoint::Ready { tx, rx, last } => Ok((tx, rx, last)),
            IpcChannelEndpoint::Accepting(_) => unreachable!("accepted above"),
        }
    }
}

impl Endpoint for IpcChannelEndpoint {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let (tx, _, _) = self.ready()?;
        tx.send(msg).map_err(|e| err("send", e))
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let msg = self.recv_slice(&mut [])?;
        let n = msg.len().min(buf.len());
        buf[..n].copy_from_slice(&msg[..n]);
        Ok(n)
    }

    fn recv_slice<'a>(&'a mut self, _scratch: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let (_, rx, last) = self.ready()?;
        *last = rx.recv().map_err(|e| err("recv", e))?;
        Ok(last)
    }
}

/// The `ipc-channel` system.
pub struct IpcChannel;

impl System for IpcChannel {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supports(&self, mode: Mode, _placement: Placement, _kind: Kind, _size: usize) -> bool {
        mode == Mode::Block
    }

    fn setup(&self, _cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let (server, name) = IpcOneShotServer::<ClientHalves>::new()?;
        Ok((
            Box::new(IpcChannelEndpoint::Accepting(Some(server))),
            vec![name_fd(&name)?],
        ))
    }

    fn attach(&self, _cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let name = read_name(one_fd(NAME, fds)?)?;
        let (c2s_tx, c2s_rx) = ipc::bytes_channel()?;
        let (s2c_tx, s2c_rx) = ipc::bytes_channel()?;
        let to_client: IpcSender<ClientHalves> =
            IpcSender::connect(name).map_err(|e| err("connect", e))?;
        to_client
            .send((c2s_tx, s2c_rx))
            .map_err(|e| err("send channels", e))?;
        Ok(Box::new(IpcChannelEndpoint::Ready {
            tx: s2c_tx,
            rx: c2s_rx,
            last: Vec::new(),
        }))
    }
}
