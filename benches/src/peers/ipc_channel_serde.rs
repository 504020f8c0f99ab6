//! `ipc-channel-serde`: ipc-channel 0.23's typed channels (`IpcSender<T>` / `IpcReceiver<T>`, serde
//! + bincode) carrying structs of the same shape as the structured rows' messages: a small request
//! (sequence number, requested size, last flag) and a response with the row's size of payload in a
//! `Vec<u8>`. `rtt` in `block` mode only (its receivers sleep in `recvmsg`). The peer row of
//! `flowipc-structured-ring` / `-socket`. Rendezvous as in the `ipc-channel` row.

use std::io;
use std::os::fd::OwnedFd;

use ::ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};

use super::{name_fd, one_fd, read_name};
use crate::harness::{Config, Endpoint, Kind, Message, Mode, Placement, Received, System};

const NAME: &str = "ipc-channel-serde";

/// The request: the shape of the structured rows' `Ping`.
#[derive(Serialize, Deserialize, Debug)]
struct Request {
    seq: u64,
    payload_size: u32,
    last: bool,
}

/// The response: the shape of the structured rows' `Pong`.
#[derive(Serialize, Deserialize, Debug)]
struct Response {
    seq: u64,
    payload: Vec<u8>,
}

/// What the server sends the client: the client's request sender and response receiver.
type ClientHalves = (IpcSender<Request>, IpcReceiver<Response>);

fn err(what: &str, e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{NAME}: {what}: {e:?}"))
}

enum SerdeEndpoint {
    /// Client before its first operation: still to accept the server's connection.
    Accepting(Option<IpcOneShotServer<ClientHalves>>, usize),
    Client {
        tx: IpcSender<Request>,
        rx: IpcReceiver<Response>,
        size: usize,
        last: Option<Response>,
    },
    Server {
        tx: IpcSender<Response>,
        rx: IpcReceiver<Request>,
        size: usize,
    },
}

impl SerdeEndpoint {
    fn ready(&mut self) -> io::Result<()> {
        if let SerdeEndpoint::Accepting(server, size) = self {
            let size = *size;
            let server = server
                .take()
                .ok_or_else(|| err("accept", "failed before"))?;
            let (_, (tx, rx)) = server.accept().map_err(|e| err("accept", e))?;
            *self = SerdeEndpoint::Client {
                tx,
                rx,
                size,
                last: None,
            };
        }
        Ok(())
    }
}

impl Endpoint for SerdeEndpoint {
    fn send(&mut self, _msg: &[u8]) -> io::Result<()> {
        Err(err("send", "typed rows send messages, not bytes"))
    }

    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(err("recv", "typed rows receive messages, not bytes"))
    }

    fn send_message(&mut self, msg: &Message, _scratch: &mut [u8]) -> io::Result<()> {
        self.ready()?;
        match self {
            SerdeEndpoint::Client {
                tx, rx, size, last, ..
            } => {
                let req = Request {
                    seq: msg.seq,
                    payload_size: *size as u32,
                    last: msg.flag != crate::harness::FLAG_DATA,
                };
                tx.send(req).map_err(|e| err("send", e))?;
                *last = Some(rx.recv().map_err(|e| err("recv", e))?);
                Ok(())
            }
            SerdeEndpoint::Server { tx, .. } => {
                let mut payload = vec![0u8; msg.size];
                msg.build(|offset, bytes| {
                    payload[offset..offset + bytes.len()].copy_from_slice(bytes)
                });
                tx.send(Response {
                    seq: msg.seq,
                    payload,
                })
                .map_err(|e| err("send", e))
            }
            SerdeEndpoint::Accepting(..) => unreachable!("accepted above"),
        }
    }

    fn recv_message(&mut self, _scratch: &mut [u8]) -> io::Result<Received> {
        self.ready()?;
        match self {
            SerdeEndpoint::Client { last, .. } => {
                let resp = last
                    .take()
                    .ok_or_else(|| err("recv", "no request outstanding"))?;
                let data = &resp.payload;
                Ok(Received::read(data.len(), |offset, dst| {
                    dst.copy_from_slice(&data[offset..offset + dst.len()])
                }))
            }
            SerdeEndpoint::Server { rx, size, .. } => {
                let req = rx.recv().map_err(|e| err("recv", e))?;
                Ok(Received {
                    len: *size,
                    flag: if req.last {
                        crate::harness::FLAG_END
                    } else {
                        crate::harness::FLAG_DATA
                    },
                    seq: req.seq,
                })
            }
            SerdeEndpoint::Accepting(..) => unreachable!("accepted above"),
        }
    }
}

/// The `ipc-channel-serde` system.
pub struct IpcChannelSerde;

impl System for IpcChannelSerde {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supports(&self, mode: Mode, _placement: Placement, kind: Kind, _size: usize) -> bool {
        mode == Mode::Block && kind == Kind::Rtt
    }

    fn setup(&self, cfg: &Config) -> io::Result<(Box<dyn Endpoint>, Vec<OwnedFd>)> {
        let (server, name) = IpcOneShotServer::<ClientHalves>::new()?;
        Ok((
            Box::new(SerdeEndpoint::Accepting(
                Some(server),
                cfg.size.max(crate::harness::MIN_SIZE),
            )),
            vec![name_fd(&name)?],
        ))
    }

    fn attach(&self, cfg: &Config, fds: Vec<OwnedFd>) -> io::Result<Box<dyn Endpoint>> {
        let name = read_name(one_fd(NAME, fds)?)?;
        let (req_tx, req_rx) = ipc::channel::<Request>()?;
        let (resp_tx, resp_rx) = ipc::channel::<Response>()?;
        let to_client: IpcSender<ClientHalves> =
            IpcSender::connect(name).map_err(|e| err("connect", e))?;
        to_client
            .send((req_tx, resp_rx))
            .map_err(|e| err("send channels", e))?;
        Ok(Box::new(SerdeEndpoint::Server {
            tx: resp_tx,
            rx: req_rx,
            size: cfg.size.max(crate::harness::MIN_SIZE),
        }))
    }
}
