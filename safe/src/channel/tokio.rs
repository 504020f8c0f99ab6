//! The async (tokio) face of a channel: the same non-blocking core, waiting on tokio's reactor
//! (`AsyncFd`) instead of `poll`.
//!
//! A ring channel has no descriptor that reports its data, so it arms the ring's wake-up instead:
//! after a receive (send) finds the ring empty (full), it stores "wake me by doorbell" in the ring's
//! waiting word, re-checks the ring (the Dekker handshake of `flowipc_core::wait`), and only then
//! awaits its doorbell (`flowipc_sys::wake`), which the peer rings after its next publish
//! (release). The companion
//! socket is watched beside it, so a dead peer ends the wait at once.
//!
//! Every future is cancellation-safe: a dropped `recv` loses nothing (a half-received message
//! stays in the channel), and a dropped `send` either sent nothing or left the channel a copy of
//! the rest, which goes out before anything else.
//!
//! Unsafe code: tokio 1.54 made registering a descriptor with its reactor an `unsafe fn` (the
//! descriptor must stay open while registered). [`register`] gives tokio its own duplicate
//! (`OwnedFd`), which the `AsyncFd` owns, so that holds by construction; it is the only unsafe
//! block of the channel module.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::error::{OpenError, RecvError, SendError};
use super::in_place::ring_builder;
use super::transport::ring::RingTransport;
use super::{
    Blocking, Channel, IncomingMessage, Message, MessageWriter, Pending, RecvMeta, SendCursor,
    Step, TransportKind,
};
use flowipc_sys::wake::Drained;

/// A channel driven by tokio: `async fn send/recv` on any runtime flavour. `Send`, so it can move
/// between tasks and worker threads.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), flowipc::Error> {
/// use flowipc::channel::Channel;
///
/// let (a, b) = Channel::socket_pair()?;
/// let (mut a, mut b) = (a.into_async()?, b.into_async()?);
/// let echo = tokio::spawn(async move {
///     let msg = b.recv_owned().await?;
///     b.send(&msg.bytes).await?;
///     Ok::<_, flowipc::Error>(())
/// });
/// a.send(b"ping").await?;
/// assert_eq!(a.recv_owned().await?.bytes, b"ping");
/// echo.await.unwrap()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncChannel {
    wakeup: Wakeup,
    channel: Channel,
}

/// How an async channel learns that it may make progress.
#[derive(Debug)]
enum Wakeup {
    /// Descriptor readiness from the reactor (socket, mq).
    Fds {
        recv: AsyncFd<OwnedFd>,
        send: Option<AsyncFd<OwnedFd>>,
        peer: Option<AsyncFd<OwnedFd>>,
    },
    /// A ring: armed wake-ups awaited in the reactor.
    Ring(RingWakeup),
}

/// The reactor registrations of a ring channel.
#[derive(Debug)]
struct RingWakeup {
    /// This end's doorbell of the rx ring: rung by the peer after a publish when receiving is
    /// armed.
    recv: AsyncFd<OwnedFd>,
    /// This end's doorbell of the tx ring: rung by the peer after a read when sending is armed.
    send: AsyncFd<OwnedFd>,
    /// The companion socket: hang-up (and descriptor bytes) from the peer.
    peer: AsyncFd<OwnedFd>,
}

/// What a look at a doorbell found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bell {
    /// Rung (or a stale readiness): try again.
    Rung,
    /// The peer's end is closed or shut down. The caller tries its step once more (a message
    /// published before the hang-up rang first, so it is in the ring), then reports `PeerGone`:
    /// a peer that cannot ring any more would otherwise leave the task asleep for ever.
    HungUp,
}

/// Which way a ring channel waits.
#[derive(Debug, Clone, Copy)]
enum Dir {
    Recv,
    Send,
}

impl RingWakeup {
    fn new(t: &RingTransport) -> Result<Self, OpenError> {
        Ok(RingWakeup {
            recv: register(t.recv_bell(), Interest::READABLE)?,
            send: register(t.send_bell(), Interest::READABLE)?,
            peer: register(t.sock(), Interest::READABLE)?,
        })
    }

    /// Looks at the companion socket once: if the reactor reported something (hang-up, or a
    /// descriptor byte), makes the next step check for the peer's death at once. `Ok(true)` if it
    /// did (retry before sleeping: its waker is not registered).
    fn poll_peer(&self, cx: &mut Context<'_>, t: &mut RingTransport) -> io::Result<bool> {
        match self.peer.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // A hang-up stays ready (tokio never clears it); the step then reports PeerGone.
                guard.clear_ready();
                t.check_peer_soon();
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// After a step found nothing to do and arming found the ring unchanged: waits for the
    /// doorbell of `dir`. `Ready(Ok(Bell::Rung))`: try the step again; `Ready(Ok(Bell::HungUp))`:
    /// the peer closed or shut down its end, so nobody will ring again (see [`Bell`]).
    fn poll_bell(&self, cx: &mut Context<'_>, dir: Dir, peer_seen: bool) -> Poll<io::Result<Bell>> {
        let bell = match dir {
            Dir::Recv => &self.recv,
            Dir::Send => &self.send,
        };
        match bell.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                // Drain before clearing the readiness; a ring after the drain is a new event that
                // tokio keeps (its clear is conditional on the tick it saw). Nothing pending: a
                // stale readiness. The drain never blocks, whatever the peer did to the socket.
                match flowipc_sys::wake::drain(guard.get_inner().as_fd()) {
                    // End-of-stream stays readable: keep the readiness, so the next look sees it
                    // at once instead of sleeping for a ring that cannot come.
                    Ok(Drained::HungUp) => return Poll::Ready(Ok(Bell::HungUp)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                guard.clear_ready();
                Poll::Ready(Ok(Bell::Rung))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The companion socket was ready and cleared above this call: look at it once more so
            // that its waker is registered too.
            Poll::Pending if peer_seen => Poll::Ready(Ok(Bell::Rung)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The ring transport of a channel whose wake-up is [`Wakeup::Ring`].
fn ring_of(channel: &mut Channel) -> &mut RingTransport {
    channel
        .ring_transport()
        .expect("Wakeup::Ring is made only for ring channels")
}

/// Registers a duplicate of `fd` (same open file, so the same readiness) with the reactor.
#[allow(unsafe_code)]
fn register(fd: BorrowedFd<'_>, interest: Interest) -> Result<AsyncFd<OwnedFd>, OpenError> {
    let dup = flowipc_sys::fd::dup_cloexec(fd).map_err(|e| OpenError::os("dup", e))?;
    // tokio panics (rather than failing) outside a runtime and in one without IO: check the
    // first, and turn the second's panic into the same error.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(OpenError::NoRuntime);
    }
    let registered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the AsyncFd owns `dup`, so the descriptor stays open and refers to the same
        // open file until the AsyncFd is dropped, and `OwnedFd::as_raw_fd` always returns the
        // same number.
        unsafe { AsyncFd::register_with_interest(dup, interest) }
    }));
    match registered {
        Ok(r) => r.map_err(|e| OpenError::Io {
            op: "registering the channel with the tokio reactor",
            source: e.into(),
        }),
        Err(_) => Err(OpenError::NoRuntime),
    }
}

impl Channel {
    /// Turns this channel into an [`AsyncChannel`]. Must be called inside a tokio runtime with IO
    /// enabled; elsewhere it fails with [`OpenError::NoRuntime`] (and the channel is dropped).
    pub fn into_async(self) -> Result<AsyncChannel, OpenError> {
        AsyncChannel::new(self)
    }
}

/// Readiness of one descriptor as seen in one poll.
type Seen<'a> = Poll<io::Result<tokio::io::unix::AsyncFdReadyGuard<'a, OwnedFd>>>;

/// Clears what was seen after the operation found nothing to do; `true` if anything was ready
/// (so the operation is worth retrying), `false` if all are pending (wakers are registered).
fn settle(seen: [Option<Seen<'_>>; 2]) -> io::Result<bool> {
    let mut any = false;
    for s in seen.into_iter().flatten() {
        match s {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                any = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(any)
}

/// The sending half of an [`AsyncChannel`], from [`AsyncChannel::split`].
#[derive(Debug)]
pub struct AsyncSender(AsyncChannel);

/// The receiving half of an [`AsyncChannel`], from [`AsyncChannel::split`].
#[derive(Debug)]
pub struct AsyncReceiver(AsyncChannel);

impl AsyncSender {
    /// See [`AsyncChannel::send`].
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.0.send(data).await
    }

    /// See [`AsyncChannel::send_with_fds`].
    pub async fn send_with_fds(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SendError> {
        self.0.send_with_fds(data, fds).await
    }

    /// See [`AsyncChannel::send_in_place`].
    pub async fn send_in_place<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.0.send_in_place(len, build).await
    }

    /// See [`AsyncChannel::send_in_place_with_fds`].
    pub async fn send_in_place_with_fds<R>(
        &mut self,
        len: usize,
        fds: &[BorrowedFd<'_>],
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.0.send_in_place_with_fds(len, fds, build).await
    }

    /// See [`AsyncChannel::close`].
    pub async fn close(&mut self) -> Result<(), SendError> {
        self.0.close().await
    }
}

impl AsyncReceiver {
    /// See [`AsyncChannel::recv`].
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        self.0.recv(buf).await
    }

    /// See [`AsyncChannel::recv_owned`].
    pub async fn recv_owned(&mut self) -> Result<Message, RecvError> {
        self.0.recv_owned().await
    }

    /// See [`AsyncChannel::recv_in_place`].
    pub async fn recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        self.0.recv_in_place().await
    }
}

impl super::ChannelSender {
    /// Turns this half into an [`AsyncSender`] (inside a tokio runtime).
    pub fn into_async(self) -> Result<AsyncSender, OpenError> {
        Ok(AsyncSender(AsyncChannel::new(self.0)?))
    }
}

impl super::ChannelReceiver {
    /// Turns this half into an [`AsyncReceiver`] (inside a tokio runtime).
    pub fn into_async(self) -> Result<AsyncReceiver, OpenError> {
        Ok(AsyncReceiver(AsyncChannel::new(self.0)?))
    }
}

impl AsyncChannel {
    /// Splits into a sending and a receiving half that separate tasks can use at the same time;
    /// see [`Channel::split`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), flowipc::Error> {
    /// use flowipc::channel::Channel;
    ///
    /// let (a, b) = Channel::socket_pair()?;
    /// let (mut tx, mut rx) = a.into_async()?.split()?;
    /// let mut b = b.into_async()?;
    /// let echo = tokio::spawn(async move {
    ///     while let Ok(msg) = b.recv_owned().await {
    ///         b.send(&msg.bytes).await?;
    ///     }
    ///     Ok::<_, flowipc::Error>(())
    /// });
    /// let reader = tokio::spawn(async move { rx.recv_owned().await });
    /// tx.send(b"ping").await?;
    /// assert_eq!(reader.await.unwrap()?.bytes, b"ping");
    /// tx.close().await?;
    /// echo.await.unwrap()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn split(self) -> Result<(AsyncSender, AsyncReceiver), OpenError> {
        let (tx, rx) = self.into_channel().split()?;
        Ok((tx.into_async()?, rx.into_async()?))
    }

    /// Registers `channel` with the current tokio runtime.
    pub fn new(channel: Channel) -> Result<Self, OpenError> {
        let mut channel = channel;
        if let Some(t) = channel.ring_transport() {
            let wakeup = Wakeup::Ring(RingWakeup::new(t)?);
            return Ok(AsyncChannel { wakeup, channel });
        }
        debug_assert_ne!(channel.kind(), TransportKind::Ring);
        let r = channel.readiness();
        let same = r.send.as_raw_fd() == r.recv.as_raw_fd();
        let recv = if same {
            register(r.recv, Interest::READABLE | Interest::WRITABLE)?
        } else {
            register(r.recv, Interest::READABLE)?
        };
        let send = if same {
            None
        } else {
            Some(register(r.send, Interest::WRITABLE)?)
        };
        let peer = match r.peer {
            Some(fd) => Some(register(fd, Interest::READABLE)?),
            None => None,
        };
        Ok(AsyncChannel {
            wakeup: Wakeup::Fds { recv, send, peer },
            channel,
        })
    }

    /// The underlying channel (for [`Channel::kind`], [`Channel::readiness`] and the like).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Deregisters from the runtime and returns the blocking channel.
    pub fn into_channel(self) -> Channel {
        let AsyncChannel { wakeup, channel } = self;
        drop(wakeup);
        channel
    }

    /// Sends a message, waiting while the peer does not drain.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_with_fds(data, &[]).await
    }

    /// Sends a message with descriptors attached; see [`Channel::send_with_fds`].
    pub async fn send_with_fds(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SendError> {
        self.channel.check_send(data, fds)?;
        self.flush().await?;
        self.send_cursor(data, fds, SendCursor::default()).await
    }

    /// Sends a message, waiting at most `timeout`; see [`Channel::send_timeout`].
    pub async fn send_timeout(&mut self, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        self.send_with_fds_timeout(data, &[], timeout).await
    }

    /// Sends a message with descriptors, waiting at most `timeout`; see
    /// [`Channel::send_with_fds_timeout`]: [`SendError::TimedOut`] means nothing of it was sent,
    /// `Ok` that it was sent or (cut off by the deadline) that the channel keeps the rest and
    /// sends it before anything else.
    pub async fn send_with_fds_timeout(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.channel.check_send(data, fds)?;
        tokio::time::timeout_at(deadline, self.flush())
            .await
            .map_err(|_| SendError::TimedOut)??;
        // Nothing is pending now, so a pending message after the deadline is this one, begun.
        match tokio::time::timeout_at(deadline, self.send_cursor(data, fds, SendCursor::default()))
            .await
        {
            Ok(sent) => sent,
            Err(_) if self.channel.pending.is_some() => Ok(()),
            Err(_) => Err(SendError::TimedOut),
        }
    }

    /// Sends another channel's end to the peer; see [`Channel::send_channel`].
    pub async fn send_channel(&mut self, channel: Channel) -> Result<(), SendError> {
        let fds = channel.into_fds()?;
        let msg = super::channel_message(&fds);
        let borrowed: Vec<BorrowedFd<'_>> = fds.fds().iter().map(AsFd::as_fd).collect();
        self.channel.check_send(&msg, &borrowed)?;
        self.flush().await?;
        let cursor = SendCursor {
            channel: true,
            ..SendCursor::default()
        };
        self.send_cursor(&msg, &borrowed, cursor).await
    }

    /// Receives a channel end sent with `send_channel`, with default options; see
    /// [`Channel::recv_channel`].
    pub async fn recv_channel(&mut self) -> Result<Channel, crate::Error> {
        self.recv_channel_with(&super::ChannelOptions::default())
            .await
    }

    /// [`recv_channel`](Self::recv_channel) re-creating the channel with `options`; see
    /// [`Channel::recv_channel_with`] (an ordinary message met instead stays queued).
    pub async fn recv_channel_with(
        &mut self,
        options: &super::ChannelOptions,
    ) -> Result<Channel, crate::Error> {
        let mut bytes = Vec::new();
        let got = self.recv(&mut bytes).await;
        self.channel.take_channel(got, bytes, options)
    }

    /// Receives the next message, waiting at most `timeout` ([`RecvError::TimedOut`]; nothing is
    /// lost, a message half received stays in the channel); see [`Channel::recv_timeout`].
    pub async fn recv_timeout(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<RecvMeta, RecvError> {
        tokio::time::timeout(timeout, self.recv(buf))
            .await
            .unwrap_or(Err(RecvError::TimedOut))
    }

    /// Closes this side for sending; see [`Channel::close`].
    pub async fn close(&mut self) -> Result<(), SendError> {
        if self.channel.closed {
            return Ok(());
        }
        if self.channel.poisoned {
            return Err(SendError::Poisoned);
        }
        self.flush().await?;
        let cursor = SendCursor {
            close: true,
            ..SendCursor::default()
        };
        self.send_cursor(&[], &[], cursor).await?;
        self.channel.closed = true;
        Ok(())
    }

    /// Receives the next message into `buf`; see [`Channel::recv`].
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> Result<RecvMeta, RecvError> {
        let fds = self.recv_steps(buf, false).await?;
        Ok(RecvMeta {
            len: buf.len(),
            fds,
        })
    }

    /// Receives the next message for reading in place; see [`Channel::recv_in_place`].
    ///
    /// Cancellation-safe like [`recv`](Self::recv): a dropped future loses no message.
    pub async fn recv_in_place(&mut self) -> Result<IncomingMessage<'_>, RecvError> {
        let mut stage = std::mem::take(&mut self.channel.stage);
        let got = self.recv_steps(&mut stage, true).await;
        self.channel.stage = stage;
        let fds = got?;
        self.channel.incoming(fds)
    }

    /// Sends a message of `len` bytes that `build` writes in place, waiting while the peer does
    /// not drain; see [`Channel::send_in_place`].
    ///
    /// `build` runs once, when room is reserved; a future dropped before that sends nothing.
    pub async fn send_in_place<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.send_in_place_with_fds(len, &[], build).await
    }

    /// [`send_in_place`](Self::send_in_place) with descriptors attached. A message with
    /// descriptors is built in the channel's buffer and sent as by
    /// [`send_with_fds`](Self::send_with_fds), also on the ring.
    pub async fn send_in_place_with_fds<R>(
        &mut self,
        len: usize,
        fds: &[BorrowedFd<'_>],
        build: impl FnOnce(&mut MessageWriter<'_>) -> R,
    ) -> Result<R, SendError> {
        self.channel.check_send_len(len, fds)?;
        self.flush().await?;
        if fds.is_empty() && self.channel.ring_takes_in_place(len)? {
            let mut build = Some(ring_builder(len, build));
            let mut armed = false;
            let mut hung_up = false;
            let AsyncChannel { wakeup, channel } = self;
            return poll_fn(|cx| {
                let Wakeup::Ring(r) = wakeup else {
                    return Poll::Ready(Err(SendError::Io {
                        op: "tokio readiness",
                        source: io::Error::other("a ring channel without its ring wake-up"),
                    }));
                };
                loop {
                    let io_err = |source| SendError::Io {
                        op: "tokio readiness",
                        source,
                    };
                    let peer_seen = r.poll_peer(cx, ring_of(channel)).map_err(io_err)?;
                    // Without descriptors nothing can fail after `build` ran, so `WouldBlock`
                    // means it did not run and can be tried again.
                    match ring_of(channel).send_in_place(len, &[], Blocking::Never, &mut build) {
                        Ok(out) => {
                            if armed {
                                ring_of(channel).disarm(false);
                            }
                            return Poll::Ready(Ok(out));
                        }
                        Err(SendError::WouldBlock) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if ring_of(channel).arm_send()? {
                        continue;
                    }
                    armed = true;
                    if ready!(r.poll_bell(cx, Dir::Send, peer_seen)).map_err(io_err)?
                        == Bell::HungUp
                    {
                        if hung_up {
                            return Poll::Ready(Err(SendError::PeerGone));
                        }
                        hung_up = true;
                    }
                }
            })
            .await;
        }
        let out = self.channel.build_in_stage(len, build);
        let stage = std::mem::take(&mut self.channel.stage);
        let sent = self.send_with_fds(&stage, fds).await;
        self.channel.stage = stage;
        sent.map(|()| out)
    }

    /// Receive steps until a message is complete (see [`Channel::recv_in_place`] for
    /// `in_place`); its descriptors.
    async fn recv_steps(
        &mut self,
        buf: &mut Vec<u8>,
        in_place: bool,
    ) -> Result<Vec<OwnedFd>, RecvError> {
        let AsyncChannel { wakeup, channel } = self;
        let mut armed = false;
        let mut hung_up = false;
        poll_fn(|cx| match wakeup {
            Wakeup::Ring(r) => loop {
                let io_err = |source| RecvError::Io {
                    op: "tokio readiness",
                    source,
                };
                let peer_seen = r.poll_peer(cx, ring_of(channel)).map_err(io_err)?;
                if let Some(fds) = channel.step_recv(buf, Blocking::Never, in_place)? {
                    if armed {
                        ring_of(channel).disarm(true);
                    }
                    return Poll::Ready(Ok(fds));
                }
                if ring_of(channel).arm_recv()? {
                    continue;
                }
                armed = true;
                if ready!(r.poll_bell(cx, Dir::Recv, peer_seen)).map_err(io_err)? == Bell::HungUp {
                    if hung_up {
                        return Poll::Ready(Err(RecvError::PeerGone));
                    }
                    hung_up = true;
                }
            },
            Wakeup::Fds { recv, peer, .. } => loop {
                let seen = [
                    Some(recv.poll_read_ready(cx)),
                    peer.as_ref().map(|p| p.poll_read_ready(cx)),
                ];
                if let Some(fds) = channel.step_recv(buf, Blocking::Never, in_place)? {
                    return Poll::Ready(Ok(fds));
                }
                match settle(seen) {
                    Ok(true) => {}
                    Ok(false) => return Poll::Pending,
                    Err(source) => {
                        return Poll::Ready(Err(RecvError::Io {
                            op: "tokio readiness",
                            source,
                        }))
                    }
                }
            },
        })
        .await
    }

    /// Receives the next message as an owned [`Message`].
    pub async fn recv_owned(&mut self) -> Result<Message, RecvError> {
        let mut bytes = Vec::new();
        let meta = self.recv(&mut bytes).await?;
        Ok(Message {
            bytes,
            fds: meta.fds,
        })
    }

    /// Waits until an interrupted earlier send has gone out.
    async fn flush(&mut self) -> Result<(), SendError> {
        while let Some(p) = self.channel.pending.take() {
            let Pending { data, cursor } = p;
            self.send_cursor(&data, &[], cursor).await?;
        }
        Ok(())
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        armed: &mut bool,
        hung_up: &mut bool,
        cursor: &mut SendCursor,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Poll<Result<(), SendError>> {
        let AsyncChannel { wakeup, channel } = self;
        match wakeup {
            Wakeup::Ring(r) => loop {
                let io_err = |source| SendError::Io {
                    op: "tokio readiness",
                    source,
                };
                let peer_seen = r.poll_peer(cx, ring_of(channel)).map_err(io_err)?;
                if channel.step_send(cursor, data, fds, Blocking::Never)? == Step::Done {
                    if *armed {
                        ring_of(channel).disarm(false);
                    }
                    return Poll::Ready(Ok(()));
                }
                if ring_of(channel).arm_send()? {
                    continue;
                }
                *armed = true;
                if ready!(r.poll_bell(cx, Dir::Send, peer_seen)).map_err(io_err)? == Bell::HungUp {
                    if *hung_up {
                        return Poll::Ready(Err(SendError::PeerGone));
                    }
                    *hung_up = true;
                }
            },
            Wakeup::Fds { recv, send, peer } => loop {
                let seen = [
                    Some(send.as_ref().unwrap_or(recv).poll_write_ready(cx)),
                    peer.as_ref().map(|p| p.poll_read_ready(cx)),
                ];
                if channel.step_send(cursor, data, fds, Blocking::Never)? == Step::Done {
                    return Poll::Ready(Ok(()));
                }
                match settle(seen) {
                    Ok(true) => {}
                    Ok(false) => return Poll::Pending,
                    Err(source) => {
                        return Poll::Ready(Err(SendError::Io {
                            op: "tokio readiness",
                            source,
                        }))
                    }
                }
            },
        }
    }

    /// Drives one message from `cursor` to the end; if dropped early, hands the rest to the
    /// channel's pending slot so the stream stays whole.
    async fn send_cursor(
        &mut self,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        cursor: SendCursor,
    ) -> Result<(), SendError> {
        struct Guard<'a, 'd> {
            ch: &'a mut AsyncChannel,
            data: &'d [u8],
            cursor: SendCursor,
            finished: bool,
            /// A ring's send wake-up was armed (withdrawn once the message is out).
            armed: bool,
            /// The ring's doorbell was seen hung up once (see `Bell::HungUp`).
            hung_up: bool,
        }
        impl Drop for Guard<'_, '_> {
            fn drop(&mut self) {
                if !self.finished {
                    let cursor = std::mem::take(&mut self.cursor);
                    self.ch.channel.abandon_send(self.data, cursor);
                }
            }
        }
        let mut g = Guard {
            ch: self,
            data,
            cursor,
            finished: false,
            armed: false,
            hung_up: false,
        };
        let result = poll_fn(|cx| {
            let Guard {
                ch,
                cursor,
                armed,
                hung_up,
                ..
            } = &mut g;
            ch.poll_step(cx, armed, hung_up, cursor, data, fds)
        })
        .await;
        g.finished = true;
        result
    }
}
