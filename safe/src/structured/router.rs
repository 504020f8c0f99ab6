//! The routing state of a structured channel, shared by the sync and async faces: pending
//! requests, the inbox, ids of abandoned requests, counters. Pure state, no I/O, so the fuzz
//! targets drive it directly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::error::End;
use super::wire::{Decoded, MsgKind};
use super::{MsgIn, StructuredError, StructuredStats, UnexpectedResponse, ZeroCopy};

/// A callback waiting for responses (the callback form of requests).
pub(crate) type Callback<M> = Box<dyn FnMut(Result<MsgIn<M>, StructuredError>) + Send>;

/// The unexpected-response handler.
pub(crate) type UnexpectedHandler<M> = Box<dyn FnMut(UnexpectedResponse<M>) + Send>;

/// What waits for the responses to one request.
pub(crate) enum Slot<M> {
    /// One response, taken by a waiting caller.
    One(Option<Result<MsgIn<M>, StructuredError>>),
    /// Any number of responses, taken one by one until the taker drops its handle.
    Multi {
        queue: VecDeque<MsgIn<M>>,
        end: Option<End>,
    },
    /// A callback; `multi` keeps it registered after a response.
    Callback { f: Callback<M>, multi: bool },
    /// A multi callback that the reader is running right now (taken out to run it unlocked).
    CallbackBusy,
}

/// Something to do outside the lock, after routing.
pub(crate) enum Action<M> {
    Call {
        id: u64,
        f: Callback<M>,
        result: Result<MsgIn<M>, StructuredError>,
        multi: bool,
    },
    Unexpected(UnexpectedResponse<M>),
}

/// Ids of requests that timed out or were dropped, remembered so that their late responses are
/// counted, not reported as unexpected. Bounded: the oldest is forgotten first.
pub(crate) struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl RecentIds {
    pub(crate) fn new(cap: usize) -> Self {
        RecentIds {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }

    pub(crate) fn insert(&mut self, id: u64) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }
}

/// How many abandoned request ids are remembered.
const ABANDONED_REMEMBERED: usize = 4096;
/// How many reports to the peer may wait to be sent.
const REPORTS_QUEUED: usize = 1024;

/// The routing state.
pub(crate) struct Router<M> {
    pub(crate) pending: HashMap<u64, Slot<M>>,
    pub(crate) abandoned: RecentIds,
    pub(crate) inbox: VecDeque<MsgIn<M>>,
    /// Messages in the inbox and in multi-response queues.
    pub(crate) queued: usize,
    pub(crate) stats: StructuredStats,
    pub(crate) end: Option<End>,
    /// Ids of the peer's responses to report as unexpected.
    pub(crate) reports: VecDeque<u64>,
    /// The last id the peer used (ids must increase).
    last_peer_id: u64,
    _root: PhantomData<fn() -> M>,
}

impl<M> Router<M> {
    pub(crate) fn new() -> Self {
        Router {
            pending: HashMap::new(),
            abandoned: RecentIds::new(ABANDONED_REMEMBERED),
            inbox: VecDeque::new(),
            queued: 0,
            stats: StructuredStats::default(),
            end: None,
            reports: VecDeque::new(),
            last_peer_id: 0,
            _root: PhantomData,
        }
    }

    /// Registers a request about to be sent; fails if the channel already ended.
    pub(crate) fn register(&mut self, id: u64, slot: Slot<M>) -> Result<(), StructuredError> {
        if let Some(end) = &self.end {
            return Err(end.to_error());
        }
        self.pending.insert(id, slot);
        Ok(())
    }

    /// Forgets a request (timed out, dropped, cancelled); its late responses are counted.
    pub(crate) fn abandon(&mut self, id: u64) {
        if let Some(slot) = self.pending.remove(&id) {
            if let Slot::Multi { queue, .. } = slot {
                self.queued -= queue.len();
            }
            self.abandoned.insert(id);
        }
    }

    /// Takes the response of a one-response request, if it came (or the channel ended).
    pub(crate) fn take_one(&mut self, id: u64) -> Option<Result<MsgIn<M>, StructuredError>> {
        match self.pending.get_mut(&id) {
            Some(Slot::One(got)) => {
                let got = got.take()?;
                self.pending.remove(&id);
                Some(got)
            }
            _ => Some(Err(StructuredError::Usage(
                "no such request is waiting (already taken or abandoned)",
            ))),
        }
    }

    /// Takes the next response of a multi-response request, if one is queued (or the channel
    /// ended).
    pub(crate) fn take_multi(&mut self, id: u64) -> Option<Result<MsgIn<M>, StructuredError>> {
        match self.pending.get_mut(&id) {
            Some(Slot::Multi { queue, end }) => match queue.pop_front() {
                Some(msg) => {
                    self.queued -= 1;
                    Some(Ok(msg))
                }
                None => end.as_ref().map(|e| Err(e.to_error())),
            },
            _ => Some(Err(StructuredError::Usage("no such request is waiting"))),
        }
    }

    /// Takes the next unsolicited message, if one is queued (or the channel ended).
    pub(crate) fn take_inbox(&mut self) -> Option<Result<MsgIn<M>, StructuredError>> {
        match self.inbox.pop_front() {
            Some(msg) => {
                self.queued -= 1;
                Some(Ok(msg))
            }
            None => self.end.as_ref().map(|e| Err(e.to_error())),
        }
    }

    /// Puts a multi callback back after it ran, unless it was cancelled meanwhile.
    pub(crate) fn restore_callback(&mut self, id: u64, f: Callback<M>) {
        if let Some(slot @ Slot::CallbackBusy) = self.pending.get_mut(&id) {
            *slot = Slot::Callback { f, multi: true };
        }
    }

    /// Ends the channel: every waiter gets `end`; returns the callbacks to run.
    pub(crate) fn finish(&mut self, end: End) -> Vec<Action<M>> {
        if self.end.is_some() {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.pending.get_mut(&id) else {
                continue;
            };
            match slot {
                Slot::One(got) => {
                    if got.is_none() {
                        *got = Some(Err(end.to_error()));
                    }
                }
                Slot::Multi { end: e, .. } => *e = Some(end.clone()),
                Slot::Callback { .. } => {
                    if let Some(Slot::Callback { f, multi }) = self.pending.remove(&id) {
                        actions.push(Action::Call {
                            id,
                            f,
                            result: Err(end.to_error()),
                            multi,
                        });
                    }
                }
                Slot::CallbackBusy => {}
            }
        }
        self.end = Some(end);
        actions
    }

    /// Routes a decoded frame. `Err` poisons the channel (the caller ends it with that reason).
    pub(crate) fn route(&mut self, frame: Decoded) -> Result<Vec<Action<M>>, String> {
        let env = match &frame {
            Decoded::Msg { env, .. } | Decoded::UnexpectedResponse { env } => *env,
        };
        if env.id <= self.last_peer_id {
            return Err(format!(
                "message id {} after id {}: ids must increase",
                env.id, self.last_peer_id
            ));
        }
        self.last_peer_id = env.id;
        self.stats.received += 1;
        let (kind, body, fds) = match frame {
            Decoded::UnexpectedResponse { env } => {
                self.stats.reported_by_peer += 1;
                return Ok(vec![Action::Unexpected(
                    UnexpectedResponse::ReportedByPeer {
                        response_id: env.originating_id,
                    },
                )]);
            }
            Decoded::Msg {
                kind, body, fds, ..
            } => (kind, body, fds),
        };
        let msg = MsgIn {
            id: env.id,
            originating_id: env.originating_id,
            kind,
            body,
            fds,
            _root: PhantomData,
        };
        if kind != MsgKind::Response {
            self.inbox.push_back(msg);
            self.queued += 1;
            return Ok(Vec::new());
        }
        let to = env.originating_id;
        match self.pending.get_mut(&to) {
            Some(Slot::One(got @ None)) => {
                *got = Some(Ok(msg));
                Ok(Vec::new())
            }
            Some(Slot::Multi { queue, .. }) => {
                queue.push_back(msg);
                self.queued += 1;
                Ok(Vec::new())
            }
            Some(Slot::Callback { multi, .. }) => {
                let multi = *multi;
                let taken = if multi {
                    self.pending.insert(to, Slot::CallbackBusy)
                } else {
                    self.pending.remove(&to)
                };
                let Some(Slot::Callback { f, .. }) = taken else {
                    return Ok(Vec::new());
                };
                Ok(vec![Action::Call {
                    id: to,
                    f,
                    result: Ok(msg),
                    multi,
                }])
            }
            Some(Slot::CallbackBusy) => {
                // Unreachable with one reader (it restores the callback before routing the next
                // frame); count rather than lose it silently.
                self.stats.late_responses += 1;
                Ok(Vec::new())
            }
            Some(Slot::One(Some(_))) | None => {
                if self.abandoned.contains(to) {
                    self.stats.late_responses += 1;
                    return Ok(Vec::new());
                }
                self.stats.unexpected_responses += 1;
                if self.reports.len() < REPORTS_QUEUED {
                    self.reports.push_back(msg.id);
                } else {
                    self.stats.reports_dropped += 1;
                }
                Ok(vec![Action::Unexpected(UnexpectedResponse::Received(msg))])
            }
        }
    }
}

/// What the faces share with their reader: the state, and the two ways to wake waiters.
pub(crate) struct Shared<M> {
    pub(crate) state: Mutex<Router<M>>,
    /// Waited on only through [`Shared::wait_for`], which counts the sleepers in `sleepers`.
    cond: Condvar,
    /// Threads asleep on `cond` (or about to be: counted under the state lock), so that a wake
    /// with nobody asleep costs no system call.
    sleepers: AtomicUsize,
    #[cfg(feature = "tokio")]
    pub(crate) notify: ::tokio::sync::Notify,
    /// The async face waits on `notify`; the sync face never does, and skips waking it (an
    /// atomic read-modify-write per wake, two per received frame).
    #[cfg(feature = "tokio")]
    asynchronous: bool,
    pub(crate) handler: Mutex<Option<UnexpectedHandler<M>>>,
    pub(crate) inbox_capacity: usize,
    /// Frames sent, counted outside the state lock (the sending path takes no state lock).
    sent: AtomicU64,
    /// Set under the state lock when a report is queued, cleared under it when the queue is
    /// found empty: a hint that lets every send and receive skip the lock when nothing waits.
    reports_waiting: AtomicBool,
    /// Zero copy: where the peer's segments are read, and the pools to reclaim if it dies.
    pub(crate) zero_copy: Option<ZeroCopy>,
    /// Receive buffers given back by dropped messages, for the next frames.
    pub(crate) buffers: Arc<super::wire::RecvBuffers>,
}

impl<M> Shared<M> {
    /// `asynchronous`: for the async face, whose waiters wait on `notify`.
    pub(crate) fn new(
        inbox_capacity: usize,
        zero_copy: Option<ZeroCopy>,
        asynchronous: bool,
    ) -> Self {
        #[cfg(not(feature = "tokio"))]
        let _ = asynchronous;
        Shared {
            zero_copy,
            buffers: Arc::default(),
            state: Mutex::new(Router::new()),
            cond: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            #[cfg(feature = "tokio")]
            notify: ::tokio::sync::Notify::new(),
            #[cfg(feature = "tokio")]
            asynchronous,
            handler: Mutex::new(None),
            inbox_capacity,
            sent: AtomicU64::new(0),
            reports_waiting: AtomicBool::new(false),
        }
    }

    /// Locks the state (a panic in a user callback elsewhere does not poison it for good).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Router<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a frame sent. Called only by the holder of the sending half (`&mut Tx` or
    /// `&mut AsyncTx`, behind their lock), so a load and a store count exactly, without a
    /// read-modify-write.
    pub(crate) fn count_sent(&self) {
        let sent = self.sent.load(Ordering::Relaxed);
        self.sent.store(sent + 1, Ordering::Relaxed);
    }

    /// The channel's counters.
    pub(crate) fn stats(&self) -> StructuredStats {
        let mut stats = self.lock().stats;
        stats.sent = self.sent.load(Ordering::Relaxed);
        stats
    }

    /// Whether reports of unexpected responses may wait to be sent (a hint: a report queued
    /// this instant may be seen on the next call).
    pub(crate) fn has_reports(&self) -> bool {
        self.reports_waiting.load(Ordering::Relaxed)
    }

    /// The oldest report waiting to be sent, left queued (it goes when it is sent); `None`
    /// clears the hint.
    pub(crate) fn next_report(&self) -> Option<u64> {
        self.report(false)
    }

    /// The oldest report waiting to be sent, taken off the queue; `None` clears the hint. (The
    /// async face's reporter task takes reports this way.)
    #[cfg(feature = "tokio")]
    pub(crate) fn pop_report(&self) -> Option<u64> {
        self.report(true)
    }

    fn report(&self, pop: bool) -> Option<u64> {
        let mut st = self.lock();
        let next = if pop {
            st.reports.pop_front()
        } else {
            st.reports.front().copied()
        };
        if next.is_none() {
            self.reports_waiting.store(false, Ordering::Relaxed);
        }
        next
    }

    /// Sleeps on the condition variable for at most `timeout` (`None`: until woken), giving up
    /// the state lock meanwhile.
    pub(crate) fn wait_for<'a>(
        &self,
        st: MutexGuard<'a, Router<M>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Router<M>> {
        // Counted while the state lock is held: a waker changes the state under that lock and
        // reads the count after releasing it, so it either sees this sleeper or the sleeper sees
        // the change before sleeping.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let st = match timeout {
            None => self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                self.cond
                    .wait_timeout(st, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        st
    }

    /// Wakes every waiter, sync and async. Call it after releasing the state lock.
    pub(crate) fn wake(&self) {
        // Pairs with the increment in `wait_for` (see there).
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cond.notify_all();
        }
        #[cfg(feature = "tokio")]
        if self.asynchronous {
            self.notify.notify_waiters();
        }
    }

    /// Runs the actions routing produced, outside the state lock.
    pub(crate) fn run(&self, actions: Vec<Action<M>>) {
        for action in actions {
            match action {
                Action::Call {
                    id,
                    mut f,
                    result,
                    multi,
                } => {
                    let ended = result.is_err();
                    f(result);
                    if multi && !ended {
                        self.lock().restore_callback(id, f);
                    }
                }
                Action::Unexpected(u) => {
                    let mut handler = self.handler.lock().unwrap_or_else(|e| e.into_inner());
                    match handler.as_mut() {
                        Some(h) => h(u),
                        None => tracing::warn!(
                            "structured channel: unexpected response ({u:?}) and no handler set"
                        ),
                    }
                }
            }
        }
    }

    /// Ends the channel and wakes everything waiting.
    pub(crate) fn finish(&self, end: End) {
        if matches!(end, End::PeerGone | End::Closed) {
            if let Some(zc) = &self.zero_copy {
                zc.peer_ended();
            }
        }
        let actions = self.lock().finish(end);
        self.wake();
        self.run(actions);
    }

    /// Decodes and routes one received frame; a corrupt frame ends the channel.
    pub(crate) fn receive(
        &self,
        bytes: Vec<u8>,
        fds: Vec<std::os::fd::OwnedFd>,
        limits: &super::wire::BodyLimits,
    ) -> bool {
        self.receive_and_take(bytes, fds, limits, |_| None::<()>).0
    }

    /// [`receive`](Self::receive), then `take` under the lock that routed the frame: a caller
    /// that routes and then looks for what it waits for locks the state once per frame.
    /// Returns whether the frame was sound, and what `take` took.
    pub(crate) fn receive_and_take<T>(
        &self,
        bytes: Vec<u8>,
        fds: Vec<std::os::fd::OwnedFd>,
        limits: &super::wire::BodyLimits,
        take: impl FnOnce(&mut Router<M>) -> Option<T>,
    ) -> (bool, Option<T>) {
        let routed = super::wire::decode(
            bytes,
            fds,
            limits,
            self.zero_copy.as_ref(),
            Some(&self.buffers),
        )
        .and_then(|d| {
            let mut st = self.lock();
            let actions = st.route(d)?;
            if !st.reports.is_empty() {
                self.reports_waiting.store(true, Ordering::Relaxed);
            }
            Ok((actions, take(&mut st)))
        });
        match routed {
            Ok((actions, got)) => {
                self.wake();
                self.run(actions);
                (true, got)
            }
            Err(reason) => {
                tracing::warn!("structured channel poisoned: {reason}");
                self.finish(End::Corrupt(reason));
                (false, None)
            }
        }
    }
}
