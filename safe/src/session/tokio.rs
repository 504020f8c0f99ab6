//! The tokio face of sessions: [`AsyncSessionServer`] and [`AsyncSession`], the same verbs as
//! the sync types as `async fn`, giving [`AsyncChannel`]s.
//!
//! Waiting (for a client, for a channel request, for an answer) is readiness of the listening
//! socket or of the session's control socket, registered with the reactor; each wake-up runs the
//! sync code with a zero timeout, so a partial message stays buffered in the control channel
//! exactly as in the sync face. The handshakes themselves (a few small messages with a bounded
//! timeout) run on tokio's blocking pool, so a slow or silent peer never stalls the reactor.
//! Registering a descriptor with the reactor is the one `unsafe` call here (tokio's I/O-safety
//! contract: the registered descriptor is owned by the `AsyncFd`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::channel::{AsyncChannel, TransportKind};

use super::{
    ChannelRequest, ClientApp, ServerApp, Session, SessionError, SessionOptions, SessionServer,
};

/// Registers a duplicate of `fd` (same open file, so the same readiness) with the reactor.
#[allow(unsafe_code)]
fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<AsyncFd<OwnedFd>, SessionError> {
    let owned = flowipc_sys::fd::dup_cloexec(fd).map_err(|e| SessionError::os("dup", e))?;
    let no_runtime = || {
        SessionError::io(
            "registering with the tokio reactor",
            std::io::Error::other("not inside a tokio runtime with IO enabled"),
        )
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(no_runtime());
    }
    // tokio panics (rather than failing) in a runtime without IO: turn that into the error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the AsyncFd owns `owned`, so the descriptor stays open and refers to the same
        // open file until the AsyncFd is dropped, and `OwnedFd::as_raw_fd` always returns the
        // same number.
        unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
    }))
    .map_err(|_| no_runtime())?
    .map_err(|e| SessionError::io("registering with the tokio reactor", e.into()))
}

fn joined<T>(
    r: Result<Result<T, SessionError>, tokio::task::JoinError>,
) -> Result<T, SessionError> {
    r.map_err(|e| SessionError::io("a blocking handshake task", std::io::Error::other(e)))?
}

/// A [`SessionServer`] whose `accept` is an `async fn`.
#[derive(Debug)]
pub struct AsyncSessionServer {
    server: Arc<SessionServer>,
    ready: AsyncFd<OwnedFd>,
}

impl AsyncSessionServer {
    /// Binds the rendezvous socket, as [`SessionServer::bind`]. Call inside a tokio runtime.
    pub fn bind(server: &ServerApp, options: SessionOptions) -> Result<Self, SessionError> {
        let server = SessionServer::bind(server, options)?;
        let ready = dup(server.listener_fd())?;
        Ok(AsyncSessionServer {
            server: Arc::new(server),
            ready,
        })
    }

    /// The sync server underneath (its path, its listener).
    pub fn get_ref(&self) -> &SessionServer {
        &self.server
    }

    /// Waits for the next client that passes the checks and completes the handshake; refused
    /// clients are logged and skipped, as in [`SessionServer::accept`].
    pub async fn accept(&self) -> Result<AsyncSession, SessionError> {
        loop {
            let mut guard = self
                .ready
                .readable()
                .await
                .map_err(|e| SessionError::io("waiting for a client", e))?;
            let server = Arc::clone(&self.server);
            let r =
                tokio::task::spawn_blocking(move || server.accept_timeout(Some(Duration::ZERO)))
                    .await;
            match joined(r) {
                Ok(s) => return AsyncSession::new(s),
                Err(SessionError::TimedOut(_)) => guard.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A [`Session`] whose waits are `async fn`s and whose channels are [`AsyncChannel`]s.
#[derive(Debug)]
pub struct AsyncSession {
    session: Session,
    ready: AsyncFd<OwnedFd>,
}

impl AsyncSession {
    /// Wraps a session (inside a tokio runtime).
    pub fn new(session: Session) -> Result<Self, SessionError> {
        let ready = dup(session.control_fd().as_fd())?;
        Ok(AsyncSession { session, ready })
    }

    /// Connects to a server, as [`Session::connect`] (the handshake runs on the blocking pool).
    pub async fn connect(
        client: &ClientApp,
        server: &ServerApp,
        options: &SessionOptions,
    ) -> Result<Self, SessionError> {
        let (client, server, options) = (client.clone(), server.clone(), options.clone());
        let r =
            tokio::task::spawn_blocking(move || Session::connect(&client, &server, &options)).await;
        AsyncSession::new(joined(r)?)
    }

    /// Spawns `command` with a session to it, as [`Session::spawn`] (run on the blocking pool,
    /// since it waits for the child to take the session). The child calls
    /// [`AsyncSession::from_env`] or [`Session::from_env`].
    pub async fn spawn(
        mut command: std::process::Command,
        options: &SessionOptions,
    ) -> Result<(Self, std::process::Child), SessionError> {
        let options = options.clone();
        let r = tokio::task::spawn_blocking(move || Session::spawn(&mut command, &options)).await;
        let (session, child) = joined(r)?;
        Ok((AsyncSession::new(session)?, child))
    }

    /// Spawns a [`tokio::process::Command`] with a session to it, as [`Session::spawn`]: the
    /// child is a [`tokio::process::Child`] (await its exit, kill it, read its pipes
    /// asynchronously). The handshake runs on the blocking pool.
    pub async fn spawn_tokio(
        mut command: tokio::process::Command,
        options: &SessionOptions,
    ) -> Result<(Self, tokio::process::Child), SessionError> {
        let options = options.clone();
        let r = tokio::task::spawn_blocking(move || {
            Session::spawn_with(
                &mut command,
                &options,
                |c, key, value| {
                    c.env(key, value);
                },
                tokio::process::Command::spawn,
                tokio::process::Child::id,
                |child| {
                    // SIGKILL; tokio reaps it in the background once it is dropped.
                    let _ = child.start_kill();
                },
            )
        })
        .await;
        let (session, child) = joined(r)?;
        Ok((AsyncSession::new(session)?, child))
    }

    /// A stream of the peer's channel requests: `while let Some(request) =
    /// requests.next().await`; it ends (`None`) when the session does (closed by the peer, or
    /// the peer gone). Each request is granted or refused through the session
    /// ([`AsyncSession::grant`] / [`refuse`](AsyncSession::refuse)) once the stream is dropped,
    /// or with [`ChannelRequests::grant`] / [`refuse`](ChannelRequests::refuse) meanwhile.
    pub fn channel_requests(&mut self) -> ChannelRequests<'_> {
        ChannelRequests {
            session: self,
            ended: false,
        }
    }

    /// In a process started with [`Session::spawn`] or [`AsyncSession::spawn`]: takes the session
    /// its parent handed over (the handshake is a few small messages the parent has already sent).
    pub fn from_env() -> Result<Self, SessionError> {
        AsyncSession::new(Session::from_env()?)
    }

    /// The sync session underneath (peer facts, metadata, arenas).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Takes the init channels as [`AsyncChannel`]s.
    pub fn take_init_channels(&mut self) -> Result<Vec<AsyncChannel>, SessionError> {
        self.session
            .take_init_channels()
            .into_iter()
            .map(|c| Ok(AsyncChannel::new(c)?))
            .collect()
    }

    /// Runs `step` with a zero timeout until it gives something other than a timeout, waiting
    /// for the control socket to become readable in between.
    async fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        mut step: impl FnMut(&mut Session) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        loop {
            match step(&mut self.session) {
                Err(SessionError::TimedOut(what)) => {
                    let readable = self.ready.readable();
                    let mut guard = match deadline {
                        None => readable.await,
                        Some(d) => match tokio::time::timeout_at(d.into(), readable).await {
                            Ok(g) => g,
                            Err(_) => return Err(SessionError::TimedOut(what)),
                        },
                    }
                    .map_err(|e| SessionError::io("waiting on the session", e))?;
                    guard.clear_ready();
                }
                other => return other,
            }
        }
    }

    /// Opens a channel, as [`Session::open_channel`].
    pub async fn open_channel(
        &mut self,
        kind: TransportKind,
        metadata: &[u8],
    ) -> Result<AsyncChannel, SessionError> {
        let (id, ours) = self.session.begin_open(kind, metadata)?;
        let deadline = Instant::now() + self.session.answer_timeout();
        self.wait(Some(deadline), |s| s.wait_answer(id, Some(Instant::now())))
            .await?;
        Ok(AsyncChannel::new(ours)?)
    }

    /// Waits for the peer to ask for a channel, as [`Session::accept_channel`].
    pub async fn accept_channel(&mut self) -> Result<ChannelRequest, SessionError> {
        self.wait(None, |s| s.accept_channel(Some(Duration::ZERO)))
            .await
    }

    /// Accepts a request, as [`Session::grant`].
    pub fn grant(&mut self, request: ChannelRequest) -> Result<AsyncChannel, SessionError> {
        Ok(AsyncChannel::new(self.session.grant(request)?)?)
    }

    /// Refuses a request, as [`Session::refuse`].
    pub fn refuse(&mut self, request: ChannelRequest, reason: &str) -> Result<(), SessionError> {
        self.session.refuse(request, reason)
    }

    /// Waits for the session to end, as [`Session::wait_end`].
    pub async fn wait_end(&mut self) -> Result<(), SessionError> {
        self.wait(None, |s| s.wait_end(Some(Duration::ZERO))).await
    }

    /// Ends the session in an orderly way, as [`Session::close`].
    pub fn close(self) -> Result<(), SessionError> {
        self.session.close()
    }
}

/// The peer's channel requests as they come ([`AsyncSession::channel_requests`]).
#[derive(Debug)]
pub struct ChannelRequests<'a> {
    session: &'a mut AsyncSession,
    ended: bool,
}

impl ChannelRequests<'_> {
    /// The next request; `None` once the session has ended (the peer closed it or is gone),
    /// `Some(Err(..))` for any other failure.
    pub async fn next(&mut self) -> Option<Result<ChannelRequest, SessionError>> {
        if self.ended {
            return None;
        }
        match self.session.accept_channel().await {
            Ok(r) => Some(Ok(r)),
            Err(SessionError::Closed | SessionError::PeerGone) => {
                self.ended = true;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Grants a request, as [`AsyncSession::grant`].
    pub fn grant(&mut self, request: ChannelRequest) -> Result<AsyncChannel, SessionError> {
        self.session.grant(request)
    }

    /// Refuses a request, as [`AsyncSession::refuse`].
    pub fn refuse(&mut self, request: ChannelRequest, reason: &str) -> Result<(), SessionError> {
        self.session.refuse(request, reason)
    }
}
