//! The async face: [`AsyncStructuredChannel`], with a tokio task that routes every received frame.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use capnp::traits::Owned;

use super::error::End;
use super::router::{Router, Shared, Slot};
use super::wire::{self, BodyLimits, Envelope, MsgKind, OutMessage, WireKind};
use super::{
    MsgIn, MsgOut, StructuredError, StructuredOptions, StructuredStats, UnexpectedResponse,
};
use crate::channel::{AsyncChannel, AsyncReceiver, AsyncSender, SendError};

struct AsyncTx {
    sender: AsyncSender,
    next_id: u64,
}

impl AsyncTx {
    async fn send<M>(
        &mut self,
        shared: &Shared<M>,
        kind: WireKind,
        originating_id: u64,
        body: Option<&OutMessage>,
        fds: &[BorrowedFd<'_>],
        slot: Option<Slot<M>>,
    ) -> Result<u64, StructuredError> {
        self.flush_reports(shared).await;
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
        self.next_id += 1;
        let env = Envelope {
            id,
            originating_id,
            kind,
            fd_count,
        };
        match wire::send_frame_async(&mut self.sender, &env, body, fds, shared.zero_copy.as_ref())
            .await
        {
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

    async fn flush_reports<M>(&mut self, shared: &Shared<M>) {
        if !shared.has_reports() {
            return;
        }
        while let Some(response_id) = shared.pop_report() {
            let env = Envelope {
                id: self.next_id,
                originating_id: response_id,
                kind: WireKind::UnexpectedResponse,
                fd_count: 0,
            };
            self.next_id += 1;
            match wire::send_frame_async(&mut self.sender, &env, None, &[], None).await {
                Ok(()) => shared.count_sent(),
                Err(_) => shared.lock().stats.reports_dropped += 1,
            }
        }
    }
}

/// A structured channel, async face (tokio): Cap'n Proto messages of root type `M` over an
/// [`AsyncChannel`].
///
/// Every method takes `&self`, so tasks can share the channel (in an `Arc`) and have many
/// requests in flight. A reader task spawned on the runtime receives and routes; it is aborted
/// when the channel is dropped.
pub struct AsyncStructuredChannel<M: Owned + 'static> {
    shared: Arc<Shared<M>>,
    tx: Arc<::tokio::sync::Mutex<AsyncTx>>,
    reader: ::tokio::task::JoinHandle<()>,
}

impl<M: Owned + 'static> AsyncStructuredChannel<M> {
    /// A structured channel over `channel` with default [`StructuredOptions`]; call inside a
    /// tokio runtime.
    pub fn new(channel: AsyncChannel) -> Result<Self, crate::Error> {
        Self::with_options(channel, &StructuredOptions::default())
    }

    pub(crate) fn with_options(
        channel: AsyncChannel,
        options: &StructuredOptions,
    ) -> Result<Self, crate::Error> {
        let (sender, receiver) = channel.split()?;
        let shared = Arc::new(Shared::new(
            options.inbox_capacity,
            options.zero_copy_setting().cloned(),
            true,
        ));
        let tx = Arc::new(::tokio::sync::Mutex::new(AsyncTx { sender, next_id: 1 }));
        let limits = options.body_limits();
        let reader = ::tokio::spawn(reader_task(receiver, shared.clone(), tx.clone(), limits));
        Ok(AsyncStructuredChannel { shared, tx, reader })
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

    /// Sends `msg` as a notification.
    pub async fn send(&self, msg: &MsgOut<M>) -> Result<(), StructuredError> {
        let (body, fds) = msg.parts();
        let mut tx = self.tx.lock().await;
        tx.send(
            &self.shared,
            WireKind::Msg(MsgKind::Notification),
            0,
            Some(body),
            &fds,
            None,
        )
        .await
        .map(drop)
    }

    /// Sends `msg` as a response to `to`.
    pub async fn send_response(
        &self,
        msg: &MsgOut<M>,
        to: &MsgIn<M>,
    ) -> Result<(), StructuredError> {
        let (body, fds) = msg.parts();
        let mut tx = self.tx.lock().await;
        tx.send(
            &self.shared,
            WireKind::Msg(MsgKind::Response),
            to.id(),
            Some(body),
            &fds,
            None,
        )
        .await
        .map(drop)
    }

    async fn request(&self, msg: &MsgOut<M>, slot: Slot<M>) -> Result<u64, StructuredError> {
        let (body, fds) = msg.parts();
        let mut tx = self.tx.lock().await;
        tx.send(
            &self.shared,
            WireKind::Msg(MsgKind::Request),
            0,
            Some(body),
            &fds,
            Some(slot),
        )
        .await
    }

    /// Sends `msg` as a request and resolves to its response. Wrap it in
    /// `tokio::time::timeout` for a deadline: dropping the future stops the wait, and a response
    /// that comes later is dropped and counted as late.
    pub async fn async_request(&self, msg: &MsgOut<M>) -> Result<MsgIn<M>, StructuredError> {
        let id = self.request(msg, Slot::One(None)).await?;
        let guard = AbandonOnDrop {
            shared: &self.shared,
            id,
        };
        let got = wait(&self.shared, |st| st.take_one(id)).await;
        std::mem::forget(guard);
        got
    }

    /// Sends `msg` as a request that takes any number of responses, taken from the returned
    /// [`AsyncResponses`] until it is dropped.
    pub async fn request_multi(
        &self,
        msg: &MsgOut<M>,
    ) -> Result<AsyncResponses<'_, M>, StructuredError> {
        let id = self
            .request(
                msg,
                Slot::Multi {
                    queue: Default::default(),
                    end: None,
                },
            )
            .await?;
        Ok(AsyncResponses {
            shared: &self.shared,
            id,
        })
    }

    /// The next unsolicited message from the peer. After the peer closed or died, the queued
    /// messages come first, then the error.
    pub async fn recv(&self) -> Result<MsgIn<M>, StructuredError> {
        wait(&self.shared, Router::take_inbox).await
    }

    /// Sets the handler of unexpected responses (runs on the reader task; keep it short).
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

    /// Closes this side for sending (the peer ends with [`StructuredError::Closed`]).
    pub async fn close(&self) -> Result<(), StructuredError> {
        let mut tx = self.tx.lock().await;
        tx.flush_reports(&self.shared).await;
        tx.sender.close().await.map_err(StructuredError::from)
    }
}

impl<M: Owned + 'static> Drop for AsyncStructuredChannel<M> {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.finish(End::Local);
    }
}

impl<M: Owned + 'static> std::fmt::Debug for AsyncStructuredChannel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStructuredChannel")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The responses of an async multi-response request; dropping it stops waiting.
pub struct AsyncResponses<'a, M> {
    shared: &'a Shared<M>,
    id: u64,
}

impl<M> AsyncResponses<'_, M> {
    /// The request's message id.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// The next response.
    pub async fn recv(&mut self) -> Result<MsgIn<M>, StructuredError> {
        let id = self.id;
        wait(self.shared, |st| st.take_multi(id)).await
    }
}

impl<M> Drop for AsyncResponses<'_, M> {
    fn drop(&mut self) {
        self.shared.lock().abandon(self.id);
        self.shared.wake();
    }
}

impl<M> std::fmt::Debug for AsyncResponses<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResponses")
            .field("id", &self.id)
            .finish()
    }
}

/// Abandons a request whose future was dropped before its response came.
struct AbandonOnDrop<'a, M> {
    shared: &'a Shared<M>,
    id: u64,
}

impl<M> Drop for AbandonOnDrop<'_, M> {
    fn drop(&mut self) {
        self.shared.lock().abandon(self.id);
    }
}

/// Waits until `take` finds something, woken by the reader through `notify`.
async fn wait<M, T>(
    shared: &Shared<M>,
    mut take: impl FnMut(&mut Router<M>) -> Option<Result<T, StructuredError>>,
) -> Result<T, StructuredError> {
    loop {
        let notified = shared.notify.notified();
        ::tokio::pin!(notified);
        notified.as_mut().enable();
        let got = take(&mut shared.lock());
        if let Some(got) = got {
            shared.wake();
            return got;
        }
        notified.await;
    }
}

async fn reader_task<M: 'static>(
    mut rx: AsyncReceiver,
    shared: Arc<Shared<M>>,
    tx: Arc<::tokio::sync::Mutex<AsyncTx>>,
    limits: BodyLimits,
) {
    loop {
        // Backpressure: stop receiving while the inbox is full.
        loop {
            let notified = shared.notify.notified();
            ::tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.lock().queued < shared.inbox_capacity {
                break;
            }
            notified.await;
        }
        let mut buf = shared.buffers.take();
        match rx.recv(&mut buf).await {
            Ok(meta) => {
                if !shared.receive(buf, meta.fds, &limits) {
                    return;
                }
            }
            Err(e) => {
                shared.finish(End::from_recv(e));
                return;
            }
        }
        // Reports go out from their own task, so the reader never waits for the sender.
        if !shared.lock().reports.is_empty() {
            let (shared, tx) = (shared.clone(), tx.clone());
            ::tokio::spawn(async move {
                tx.lock().await.flush_reports(&shared).await;
            });
        }
    }
}
