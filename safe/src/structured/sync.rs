//! The sync face: [`StructuredChannel`], with a reader thread that routes every received frame.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use capnp::traits::Owned;

use super::error::End;
use super::router::{Router, Shared, Slot};
use super::wire::{self, BodyLimits, Envelope, MsgKind, OutMessage, WireKind};
use super::{
    MsgIn, MsgOut, StructuredError, StructuredOptions, StructuredStats, UnexpectedResponse,
};
use crate::channel::{Channel, ChannelReceiver, ChannelSender, RecvError, SendError};

/// How often the reader thread looks up from a blocking receive to see whether it should stop.
const READER_TICK: Duration = Duration::from_millis(50);

/// The sending half and the id counter, behind one lock so that ids go out in order.
pub(crate) struct Tx {
    pub(crate) sender: ChannelSender,
    pub(crate) next_id: u64,
}

impl Tx {
    fn send<M>(
        &mut self,
        shared: &Shared<M>,
        kind: WireKind,
        originating_id: u64,
        body: Option<&OutMessage>,
        fds: &[BorrowedFd<'_>],
        slot: Option<Slot<M>>,
    ) -> Result<u64, StructuredError> {
        self.flush_reports(shared);
        let id = self.next_id;
        let fd_count = u16::try_from(fds.len()).map_err(|_| {
            StructuredError::Send(SendError::TooManyFds {
                count: fds.len(),
                max: crate::channel::MAX_FDS_PER_MESSAGE,
            })
        })?;
        if let Some(slot) = slot {
            shared.lock().register(id, slot)?;
        }
        let env = Envelope {
            id,
            originating_id,
            kind,
            fd_count,
        };
        self.next_id += 1;
        match wire::send_frame(&mut self.sender, &env, body, fds, shared.zero_copy.as_ref()) {
            Ok(()) => {
                shared.count_sent();
                Ok(id)
            }
            Err(e) => {
                shared.lock().pending.remove(&id);
                Err(e)
            }
        }
    }

    /// Sends queued unexpected-response reports without waiting; keeps what does not fit.
    pub(crate) fn flush_reports<M>(&mut self, shared: &Shared<M>) {
        if !shared.has_reports() {
            return;
        }
        while let Some(response_id) = shared.next_report() {
            let env = Envelope {
                id: self.next_id,
                originating_id: response_id,
                kind: WireKind::UnexpectedResponse,
                fd_count: 0,
            };
            let frame = wire::encode_to_vec(&env, None);
            match self.sender.try_send(&frame) {
                Ok(()) => {
                    self.next_id += 1;
                    shared.lock().reports.pop_front();
                    shared.count_sent();
                }
                Err(SendError::WouldBlock) => return,
                Err(_) => {
                    let mut st = shared.lock();
                    st.stats.reports_dropped += st.reports.len() as u64;
                    st.reports.clear();
                    return;
                }
            }
        }
    }
}

/// A structured channel, sync face: Cap'n Proto messages of root type `M` over a [`Channel`].
///
/// Every method takes `&self`, so one channel serves many threads (share it by reference or in
/// an `Arc`): several threads may wait in [`sync_request`](Self::sync_request) at once. A reader
/// thread owned by the channel receives and routes; it stops when the channel is dropped.
pub struct StructuredChannel<M: Owned + 'static> {
    shared: Arc<Shared<M>>,
    tx: Arc<Mutex<Tx>>,
    stop: Arc<AtomicBool>,
    reader: Reader,
    limits: BodyLimits,
}

/// Who receives: the channel's reader thread, or the threads that wait.
enum Reader {
    Thread(Option<JoinHandle<()>>),
    /// Boxed: a receiver is a few hundred bytes.
    Caller(Box<Mutex<ChannelReceiver>>),
}

/// Identifies a request made with a callback ([`StructuredChannel::request_with`]), to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The message id of the request.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<M: Owned + 'static> StructuredChannel<M> {
    /// A structured channel over `channel` with default [`StructuredOptions`].
    pub fn new(channel: Channel) -> Result<Self, crate::Error> {
        Self::with_options(channel, &StructuredOptions::default())
    }

    pub(crate) fn with_options(
        channel: Channel,
        options: &StructuredOptions,
    ) -> Result<Self, crate::Error> {
        let (sender, receiver) = channel.split()?;
        let shared = Arc::new(Shared::new(
            options.inbox_capacity,
            options.zero_copy_setting().cloned(),
            false,
        ));
        let tx = Arc::new(Mutex::new(Tx { sender, next_id: 1 }));
        let stop = Arc::new(AtomicBool::new(false));
        let limits = options.body_limits();
        let reader = if options.receive_in_caller {
            Reader::Caller(Box::new(Mutex::new(receiver)))
        } else {
            let (shared, tx, stop) = (shared.clone(), tx.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name("flowipc-structured".into())
                .spawn(move || reader_loop(receiver, &shared, &tx, &stop, &limits))
                .map_err(|e| SendError::Io {
                    op: "spawn the structured channel's reader thread",
                    source: e,
                })?;
            Reader::Thread(Some(thread))
        };
        Ok(StructuredChannel {
            shared,
            tx,
            stop,
            reader,
            limits,
        })
    }

    fn tx(&self) -> MutexGuard<'_, Tx> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new, empty message to build: on the heap in copy mode, in this side's lend pool in zero
    /// copy.
    pub fn create_msg(&self) -> MsgOut<M> {
        MsgOut::new(super::new_message(self.shared.zero_copy.as_ref(), None))
    }

    /// A new, empty message whose first segment holds `bytes`: a message built to about that
    /// size has one segment. In zero copy that is one block to lend and one handle on the wire
    /// (a message built with [`create_msg`](Self::create_msg) has about `log2(size / 4 KiB)`),
    /// the fewest cache and TLB misses for a peer that reads it cold; in copy mode, one
    /// allocation. The segment is allocated (and zeroed) now, whatever is built in it.
    pub fn create_msg_sized(&self, bytes: usize) -> MsgOut<M> {
        MsgOut::new(super::new_message(
            self.shared.zero_copy.as_ref(),
            Some(bytes),
        ))
    }

    /// Sends `msg` as a notification (no response expected).
    pub fn send(&self, msg: &MsgOut<M>) -> Result<(), StructuredError> {
        let (body, fds) = msg.parts();
        self.tx()
            .send(
                &self.shared,
                WireKind::Msg(MsgKind::Notification),
                0,
                Some(body),
                &fds,
                None,
            )
            .map(drop)
    }

    /// Sends `msg` as a response to `to` (a message the peer sent).
    pub fn send_response(&self, msg: &MsgOut<M>, to: &MsgIn<M>) -> Result<(), StructuredError> {
        let (body, fds) = msg.parts();
        self.tx()
            .send(
                &self.shared,
                WireKind::Msg(MsgKind::Response),
                to.id(),
                Some(body),
                &fds,
                None,
            )
            .map(drop)
    }

    fn request(&self, msg: &MsgOut<M>, slot: Slot<M>) -> Result<u64, StructuredError> {
        let (body, fds) = msg.parts();
        self.tx().send(
            &self.shared,
            WireKind::Msg(MsgKind::Request),
            0,
            Some(body),
            &fds,
            Some(slot),
        )
    }

    /// Sends `msg` as a request and waits at most `timeout` for its response.
    ///
    /// [`StructuredError::TimedOut`] if none came (a response after that is dropped and
    /// counted); [`StructuredError::PeerGone`] / [`Closed`](StructuredError::Closed) at once if
    /// the peer dies or closes while this waits.
    pub fn sync_request(
        &self,
        msg: &MsgOut<M>,
        timeout: Duration,
    ) -> Result<MsgIn<M>, StructuredError> {
        let deadline = Instant::now() + timeout;
        let id = self.request(msg, Slot::One(None))?;
        self.wait(Some(deadline), |st| st.take_one(id))
            .inspect_err(|e| {
                if e.is_timed_out() {
                    self.shared.lock().abandon(id);
                }
            })
    }

    /// Sends `msg` as a request; `on_response` runs once, on the channel's reader thread, with
    /// the response or the error that ended the wait (peer gone, closed). Keep it short, and
    /// do not wait in it for another response of this channel.
    ///
    /// No timeout applies; [`cancel`](Self::cancel) gives up (a late response is counted).
    pub fn request_with(
        &self,
        msg: &MsgOut<M>,
        on_response: impl FnOnce(Result<MsgIn<M>, StructuredError>) + Send + 'static,
    ) -> Result<RequestId, StructuredError> {
        let mut once = Some(on_response);
        let f = Box::new(move |r| {
            if let Some(f) = once.take() {
                f(r);
            }
        });
        self.request(msg, Slot::Callback { f, multi: false })
            .map(RequestId)
    }

    /// Sends `msg` as a request that takes any number of responses: `on_response` runs on the
    /// reader thread for each, until [`cancel`](Self::cancel) (or once with the error that ended
    /// the channel).
    pub fn request_multi_with(
        &self,
        msg: &MsgOut<M>,
        on_response: impl FnMut(Result<MsgIn<M>, StructuredError>) + Send + 'static,
    ) -> Result<RequestId, StructuredError> {
        self.request(
            msg,
            Slot::Callback {
                f: Box::new(on_response),
                multi: true,
            },
        )
        .map(RequestId)
    }

    /// Stops waiting for responses to a request made with a callback; later responses are
    /// dropped and counted as late.
    pub fn cancel(&self, request: RequestId) {
        self.shared.lock().abandon(request.0);
    }

    /// Sends `msg` as a request that takes any number of responses; take them from the returned
    /// [`Responses`], and drop it when no more are expected.
    pub fn request_multi(&self, msg: &MsgOut<M>) -> Result<Responses<'_, M>, StructuredError> {
        let id = self.request(
            msg,
            Slot::Multi {
                queue: Default::default(),
                end: None,
            },
        )?;
        Ok(Responses { channel: self, id })
    }

    /// The next unsolicited message (notification or request) from the peer, waiting for it.
    /// After the peer closed or died, the queued messages come first, then the error.
    pub fn recv(&self) -> Result<MsgIn<M>, StructuredError> {
        self.wait(None, Router::take_inbox)
    }

    /// [`recv`](Self::recv), waiting at most `timeout` ([`StructuredError::TimedOut`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<MsgIn<M>, StructuredError> {
        self.wait(Some(Instant::now() + timeout), Router::take_inbox)
    }

    /// The next unsolicited message if one is queued (or, receiving in the caller, arrives
    /// without waiting), else [`StructuredError::WouldBlock`].
    pub fn try_recv(&self) -> Result<MsgIn<M>, StructuredError> {
        match self.wait(Some(Instant::now()), Router::take_inbox) {
            Err(StructuredError::TimedOut) => Err(StructuredError::WouldBlock),
            other => other,
        }
    }

    /// Receives and routes incoming frames for up to `timeout` without taking anything: with
    /// [`receive_in_caller`](StructuredOptions::receive_in_caller), the way to run callbacks
    /// and the unexpected-response handler while no other call waits. With a reader thread it
    /// returns at once. `Err` once the channel ended.
    pub fn process_incoming(&self, timeout: Duration) -> Result<(), StructuredError> {
        if let Reader::Thread(_) = &self.reader {
            return match &self.shared.lock().end {
                Some(end) => Err(end.to_error()),
                None => Ok(()),
            };
        }
        let until = Some(Instant::now() + timeout);
        match self.wait(until, |st| st.end.as_ref().map(|e| Err(e.to_error()))) {
            Err(StructuredError::TimedOut) => Ok(()),
            other => other,
        }
    }

    /// Sets the handler of responses that match nothing (and of the peer's reports that ours
    /// matched nothing). It runs on the reader thread. Without one they are logged and counted.
    pub fn on_unexpected_response(
        &self,
        handler: impl FnMut(UnexpectedResponse<M>) + Send + 'static,
    ) {
        *self
            .shared
            .handler
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(handler));
    }

    /// The channel's counters.
    pub fn stats(&self) -> StructuredStats {
        self.shared.stats()
    }

    /// Closes this side for sending: the peer's reader ends with [`StructuredError::Closed`]
    /// after every message sent before. Receiving goes on.
    pub fn close(&self) -> Result<(), StructuredError> {
        let mut tx = self.tx();
        tx.flush_reports(&self.shared);
        tx.sender.close().map_err(StructuredError::from)
    }

    fn wait<T>(
        &self,
        deadline: Option<Instant>,
        mut take: impl FnMut(&mut Router<M>) -> Option<Result<T, StructuredError>>,
    ) -> Result<T, StructuredError> {
        if let Reader::Caller(rx) = &self.reader {
            return self.drive(rx, deadline, take);
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(got) = take(&mut st) {
                drop(st);
                // Room in the inbox may unblock the reader.
                self.shared.wake();
                return got;
            }
            st = match deadline {
                None => self.shared.wait_for(st, None),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(StructuredError::TimedOut);
                    }
                    self.shared.wait_for(st, Some(deadline - now))
                }
            };
        }
    }
}

impl<M: Owned + 'static> StructuredChannel<M> {
    /// Receiving in the caller: waits until `take` finds something, receiving and routing frames
    /// in this thread while no other thread does (the others wait for its routing).
    fn drive<T>(
        &self,
        rx: &Mutex<ChannelReceiver>,
        deadline: Option<Instant>,
        mut take: impl FnMut(&mut Router<M>) -> Option<Result<T, StructuredError>>,
    ) -> Result<T, StructuredError> {
        let mut attempted = false;
        loop {
            let mut st = self.shared.lock();
            // What the last round routed is taken before the deadline is looked at: a frame
            // that arrived in time is not lost to a timeout (a `try_recv` gets what is there).
            if let Some(got) = take(&mut st) {
                drop(st);
                self.shared.wake();
                return got;
            }
            let full = st.queued >= self.shared.inbox_capacity;
            let ended = st.end.is_some();
            let receiver = if full || ended {
                None
            } else {
                rx.try_lock().ok()
            };
            let Some(mut receiver) = receiver else {
                // Another thread receives (it wakes us after routing), or the inbox is full
                // (a taker wakes us), or the channel ended (`take` reports it next round).
                let until = Self::wait_bound(deadline, attempted)?;
                attempted = true;
                let slice = until.saturating_duration_since(Instant::now());
                drop(self.shared.wait_for(st, Some(slice)));
                continue;
            };
            drop(st);
            // Routed while the receiver is held, so frames are routed in the order they came.
            // A frame already there is taken without reading the clock; only an empty channel
            // costs the deadline arithmetic.
            let mut buf = self.shared.buffers.take();
            let received = match receiver.try_recv(&mut buf) {
                // The non-blocking attempt counts: a deadline already past ends the wait here.
                Err(RecvError::WouldBlock) => match Self::wait_bound(deadline, true) {
                    Ok(until) => receiver.recv_until(&mut buf, until),
                    Err(timed_out) => {
                        self.shared.buffers.give(buf);
                        return Err(timed_out);
                    }
                },
                other => other,
            };
            attempted = true;
            let got = match received {
                Ok(meta) => {
                    self.shared
                        .receive_and_take(buf, meta.fds, &self.limits, &mut take)
                        .1
                }
                Err(RecvError::TimedOut) => {
                    self.shared.buffers.give(buf);
                    None
                }
                Err(e) => {
                    self.shared.finish(End::from_recv(e));
                    None
                }
            };
            drop(receiver);
            if self.shared.has_reports() {
                if let Ok(mut tx) = self.tx.try_lock() {
                    tx.flush_reports(&self.shared);
                }
            }
            if let Some(got) = got {
                return got;
            }
        }
    }
}

impl<M: Owned + 'static> StructuredChannel<M> {
    /// The latest instant the next wait may last to: the deadline, and at most one
    /// [`READER_TICK`] from now. [`StructuredError::TimedOut`] once the deadline passed, after
    /// at least one attempt.
    fn wait_bound(deadline: Option<Instant>, attempted: bool) -> Result<Instant, StructuredError> {
        let now = Instant::now();
        let tick = now + READER_TICK;
        match deadline {
            Some(deadline) if attempted && now >= deadline => Err(StructuredError::TimedOut),
            Some(deadline) => Ok(deadline.min(tick)),
            None => Ok(tick),
        }
    }
}

impl<M: Owned + 'static> Drop for StructuredChannel<M> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        if let Reader::Thread(reader) = &mut self.reader {
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
        }
        self.shared.finish(End::Local);
    }
}

impl<M: Owned + 'static> std::fmt::Debug for StructuredChannel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredChannel")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The responses of a multi-response request ([`StructuredChannel::request_multi`]); dropping it
/// stops waiting (later responses are dropped and counted as late).
pub struct Responses<'a, M: Owned + 'static> {
    channel: &'a StructuredChannel<M>,
    id: u64,
}

impl<M: Owned + 'static> Responses<'_, M> {
    /// The request's message id.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// The next response, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<MsgIn<M>, StructuredError> {
        let id = self.id;
        self.channel
            .wait(Some(Instant::now() + timeout), |st| st.take_multi(id))
    }

    /// The next response if one is queued, else [`StructuredError::WouldBlock`].
    pub fn try_recv(&mut self) -> Result<MsgIn<M>, StructuredError> {
        let got = self.channel.shared.lock().take_multi(self.id);
        self.channel.shared.wake();
        got.unwrap_or(Err(StructuredError::WouldBlock))
    }
}

impl<M: Owned + 'static> Drop for Responses<'_, M> {
    fn drop(&mut self) {
        self.channel.shared.lock().abandon(self.id);
        self.channel.shared.wake();
    }
}

impl<M: Owned + 'static> std::fmt::Debug for Responses<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").field("id", &self.id).finish()
    }
}

fn reader_loop<M>(
    mut rx: ChannelReceiver,
    shared: &Shared<M>,
    tx: &Mutex<Tx>,
    stop: &AtomicBool,
    limits: &BodyLimits,
) {
    loop {
        // Backpressure: stop receiving while the inbox is full.
        {
            let mut st = shared.lock();
            while st.queued >= shared.inbox_capacity && !stop.load(Ordering::Relaxed) {
                st = shared.wait_for(st, Some(READER_TICK));
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = shared.buffers.take();
        match rx.recv_timeout(&mut buf, READER_TICK) {
            Ok(meta) => {
                if !shared.receive(buf, meta.fds, limits) {
                    return;
                }
            }
            Err(RecvError::TimedOut) => {}
            Err(e) => {
                shared.finish(End::from_recv(e));
                return;
            }
        }
        // Reports of unexpected responses go out when the sender is free; never wait here.
        if shared.has_reports() {
            if let Ok(mut tx) = tx.try_lock() {
                tx.flush_reports(shared);
            }
        }
    }
}
