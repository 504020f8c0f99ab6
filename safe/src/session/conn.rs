//! [`Session`]: one side of an established session, and the handshake both roles share.
//!
//! The offering side (server, spawning parent) sends `Welcome`, the init channels (each as a
//! `Channel` message carrying the peer's end), and the arenas; the taking side (client, child)
//! receives them and answers `Ready`, carrying its own lend pool if it has one. Later, either side
//! opens a channel by sending a `Channel` message with the peer's end of a fresh pair and waits for
//! `OpenAccepted` / `OpenRefused`; requests that arrive meanwhile are queued for
//! [`Session::accept_channel`].

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::Arc;

use crate::structured::ZeroCopy;
use std::time::{Duration, Instant};

use crate::arena::{
    ArenaHandle, ArenaObject, ArenaView, BorrowedPool, BorrowerId, BorrowerSetup, LendPool,
    ShmArena,
};
use crate::channel::{Channel, ChannelFds, ChannelOptions, RecvError, TransportKind};

use super::auth::{self, IdentifyError, PeerIdentity};
use super::wire::{self, ArenaKind, ControlMessage, HandshakeError};
use super::{
    inherit, rendezvous, settings_to_options, ClientApp, ServerApp, SessionError, SessionOptions,
    SESSION_FD_ENV,
};

/// Most channel requests of the peer kept waiting for `accept_channel`; a peer that sends more
/// while this side is not accepting breaks the protocol (its descriptors would pile up here).
const MAX_PENDING_REQUESTS: usize = 64;

/// Request ids of the offering side carry this bit, so both sides' ids never collide.
const OFFERER_BIT: u64 = 1 << 63;

/// A channel the peer asked to open, from [`Session::accept_channel`]: take it with
/// [`Session::grant`] or turn it down with [`Session::refuse`].
#[derive(Debug)]
pub struct ChannelRequest {
    id: u64,
    kind: TransportKind,
    metadata: Vec<u8>,
    channel: Channel,
}

impl ChannelRequest {
    /// The channel's transport.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// What the opener said about the channel.
    pub fn metadata(&self) -> &[u8] {
        &self.metadata
    }
}

/// One side of a session: the control channel, the init channels until taken, the session's
/// pools, and what is known about the peer.
///
/// Dropping a session (or [`close`](Session::close)) tells the peer, after everything sent on
/// the control channel before; channels already handed out live on independently.
pub struct Session {
    control: Channel,
    peer_name: String,
    peer: Option<PeerIdentity>,
    peer_metadata: Vec<u8>,
    init: Vec<Channel>,
    options: ChannelOptions,
    timeout: Duration,
    next_id: u64,
    id_bit: u64,
    requests: VecDeque<ChannelRequest>,
    arena: Option<ShmArena>,
    app_arena: Option<ShmArena>,
    own_pool: Option<(Arc<LendPool>, BorrowerId)>,
    peer_pool: Option<Arc<BorrowedPool>>,
    /// A pidfd naming the peer process, when known: readable once it has exited.
    peer_pidfd: Option<Arc<OwnedFd>>,
    ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer_name", &self.peer_name)
            .field("peer", &self.peer)
            .field("init_channels", &self.init.len())
            .field("pending_requests", &self.requests.len())
            .field("arena", &self.arena.is_some())
            .field("own_pool", &self.own_pool.is_some())
            .field("peer_pool", &self.peer_pool.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

/// Options of every session's control channel.
pub(super) fn control_options() -> ChannelOptions {
    ChannelOptions::new()
        .max_message_size(wire::MAX_CONTROL_MESSAGE)
        .max_fds_per_message(wire::MAX_CHANNEL_FDS)
}

/// One received control message, owned.
pub(super) struct Received {
    pub(super) bytes: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
}

pub(super) fn recv_control(
    control: &mut Channel,
    deadline: Option<Instant>,
    during: &'static str,
) -> Result<Received, SessionError> {
    let mut bytes = Vec::new();
    let meta = match deadline {
        None => control.recv(&mut bytes),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            control.recv_timeout(&mut bytes, left)
        }
    };
    match meta {
        Ok(m) => Ok(Received { bytes, fds: m.fds }),
        Err(RecvError::TimedOut) => Err(SessionError::TimedOut(during)),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn send_control(
    control: &mut Channel,
    msg: &ControlMessage<'_>,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SessionError> {
    let bytes = wire::encode(msg);
    if fds.is_empty() {
        control.send(&bytes)?;
    } else {
        control.send_with_fds(&bytes, fds)?;
    }
    Ok(())
}

fn channel_from(
    options: &ChannelOptions,
    kind: TransportKind,
    fds: Vec<OwnedFd>,
) -> Result<Channel, SessionError> {
    Ok(options.from_fds(ChannelFds::from_parts(kind, fds))?)
}

fn pair(options: &ChannelOptions, kind: TransportKind) -> Result<(Channel, Channel), SessionError> {
    Ok(match kind {
        TransportKind::Socket => options.socket_pair()?,
        TransportKind::Mq => options.mq_pair()?,
        TransportKind::Ring => options.ring_pair()?,
    })
}

/// What the offering side sends.
pub(super) struct Offer<'a> {
    pub(super) local_name: &'a str,
    /// Channels the taking side asked for (with its settings), then the offerer's own.
    pub(super) requested: &'a [TransportKind],
    pub(super) requested_options: &'a ChannelOptions,
    pub(super) options: &'a SessionOptions,
    pub(super) peer_name: String,
    pub(super) peer: Option<PeerIdentity>,
    pub(super) peer_metadata: Vec<u8>,
    /// The app-scope arena of the peer's app (server only).
    pub(super) app_arena: Option<ShmArena>,
}

impl Session {
    /// The offering side of the handshake (server or spawning parent): sends `Welcome`, the init
    /// channels and the arenas, then waits for the peer's `Ready`.
    pub(super) fn offer(mut control: Channel, offer: Offer<'_>) -> Result<Session, SessionError> {
        let deadline = Instant::now() + offer.options.handshake_timeout;
        let own_options = offer.options.channel_options();
        let mut kinds: Vec<TransportKind> = offer.requested.to_vec();
        kinds.extend_from_slice(&offer.options.init);
        if kinds.len() > wire::MAX_INIT_CHANNELS {
            return Err(SessionError::BadOptions(format!(
                "{} init channels in all, at most {} fit",
                kinds.len(),
                wire::MAX_INIT_CHANNELS
            )));
        }
        let arena_size = offer.options.arena_size;
        send_control(
            &mut control,
            &ControlMessage::Welcome {
                name: offer.local_name,
                settings: offer.options.settings,
                init: kinds.clone(),
                arena_size: arena_size as u64,
                app_arena: offer.app_arena.is_some(),
                metadata: &offer.options.metadata,
            },
            &[],
        )?;
        let mut init = Vec::with_capacity(kinds.len());
        // The peer's settings for the channels it asked for, with our own way of waiting (the
        // peer opens its end with its own).
        let requested_options = offer
            .requested_options
            .clone()
            .wait_policy(offer.options.wait_policy);
        for (i, &kind) in kinds.iter().enumerate() {
            let opts = if i < offer.requested.len() {
                &requested_options
            } else {
                &own_options
            };
            let (ours, theirs) = pair(opts, kind)?;
            let fds = theirs.into_fds()?;
            let borrowed: Vec<BorrowedFd<'_>> = fds.fds().iter().map(AsFd::as_fd).collect();
            send_control(
                &mut control,
                &ControlMessage::Channel {
                    id: i as u64,
                    kind,
                    metadata: &[],
                },
                &borrowed,
            )?;
            init.push(ours);
        }
        let mut arena = None;
        let mut own_pool = None;
        if arena_size > 0 {
            let a = ShmArena::create_classic(arena_size)?;
            send_control(
                &mut control,
                &ControlMessage::Arena {
                    kind: ArenaKind::Classic,
                },
                &[a.fd()],
            )?;
            arena = Some(a);
            let pool = offer.options.create_lend_pool(arena_size)?;
            let (id, setup) = pool.add_borrower()?;
            send_control(
                &mut control,
                &ControlMessage::Arena {
                    kind: ArenaKind::Lend,
                },
                &[setup.pool_fd.as_fd(), setup.return_ring_fd.as_fd()],
            )?;
            own_pool = Some((Arc::new(pool), id));
        }
        if let Some(a) = &offer.app_arena {
            send_control(
                &mut control,
                &ControlMessage::Arena {
                    kind: ArenaKind::App,
                },
                &[a.fd()],
            )?;
        }
        let mut session = Session {
            control,
            peer_name: offer.peer_name,
            peer: offer.peer,
            peer_metadata: offer.peer_metadata,
            init,
            options: own_options,
            timeout: offer.options.handshake_timeout,
            next_id: 0,
            id_bit: OFFERER_BIT,
            requests: VecDeque::new(),
            arena,
            app_arena: offer.app_arena,
            own_pool,
            peer_pool: None,
            peer_pidfd: None,
            ended: false,
        };
        // The peer's Ready (with its lend pool) ends the handshake.
        let r = recv_control(&mut session.control, Some(deadline), "the handshake")?;
        match wire::parse(&r.bytes, r.fds.len())? {
            ControlMessage::Ready { lend } => {
                if lend {
                    session.peer_pool = Some(Arc::new(open_borrowed(r.fds)?));
                }
            }
            ControlMessage::Close => return Err(SessionError::Closed),
            _ => return Err(HandshakeError::Unexpected("expected ready").into()),
        }
        Ok(session)
    }

    /// The taking side of the handshake (client or spawned child): receives `Welcome` (or
    /// `Refused`), the init channels and arenas, and answers `Ready`.
    pub(super) fn take(
        mut control: Channel,
        server_name: &str,
        options: &SessionOptions,
        use_peer_settings: bool,
        peer: Option<PeerIdentity>,
    ) -> Result<Session, SessionError> {
        let deadline = Instant::now() + options.handshake_timeout;
        let r = recv_control(&mut control, Some(deadline), "the handshake")?;
        let (peer_name, settings, kinds, arena_size, app_flag, peer_metadata) =
            match wire::parse(&r.bytes, r.fds.len())? {
                ControlMessage::Welcome {
                    name,
                    settings,
                    init,
                    arena_size,
                    app_arena,
                    metadata,
                } => (
                    name.to_owned(),
                    settings,
                    init,
                    arena_size,
                    app_arena,
                    metadata.to_vec(),
                ),
                ControlMessage::Refused { reason } => {
                    return Err(SessionError::Refused {
                        server: server_name.to_owned(),
                        reason: reason.to_owned(),
                    })
                }
                _ => return Err(HandshakeError::Unexpected("expected welcome").into()),
            };
        let (chan_options, timeout, own_arena) = if use_peer_settings {
            (
                settings_to_options(&settings).wait_policy(options.wait_policy),
                options.handshake_timeout,
                0,
            )
        } else {
            (
                options.channel_options(),
                options.handshake_timeout,
                options.arena_size,
            )
        };
        let mut init = Vec::with_capacity(kinds.len());
        for (i, &want) in kinds.iter().enumerate() {
            let r = recv_control(&mut control, Some(deadline), "the handshake")?;
            match wire::parse(&r.bytes, r.fds.len())? {
                ControlMessage::Channel { id, kind, .. } if id == i as u64 && kind == want => {
                    init.push(channel_from(&chan_options, kind, r.fds)?);
                }
                _ => return Err(HandshakeError::Unexpected("expected init channel").into()),
            }
        }
        let mut arena = None;
        let mut peer_pool = None;
        let arenas = if arena_size > 0 { 2 } else { 0 } + usize::from(app_flag);
        let mut app_arena = None;
        for _ in 0..arenas {
            let r = recv_control(&mut control, Some(deadline), "the handshake")?;
            match wire::parse(&r.bytes, r.fds.len())? {
                ControlMessage::Arena {
                    kind: ArenaKind::Classic,
                } if arena.is_none() => {
                    let fd = r
                        .fds
                        .into_iter()
                        .next()
                        .ok_or(HandshakeError::Truncated("fd"))?;
                    arena = Some(ShmArena::open(fd)?);
                }
                ControlMessage::Arena {
                    kind: ArenaKind::Lend,
                } if peer_pool.is_none() => peer_pool = Some(Arc::new(open_borrowed(r.fds)?)),
                ControlMessage::Arena {
                    kind: ArenaKind::App,
                } if app_arena.is_none() => {
                    let fd = r
                        .fds
                        .into_iter()
                        .next()
                        .ok_or(HandshakeError::Truncated("fd"))?;
                    app_arena = Some(ShmArena::open(fd)?);
                }
                _ => return Err(HandshakeError::Unexpected("expected arena").into()),
            }
        }
        // Our own lend pool: the size we were told (client), or the peer's (spawned child).
        let pool_size = if use_peer_settings {
            usize::try_from(arena_size).unwrap_or(0)
        } else {
            own_arena
        };
        let mut own_pool = None;
        if pool_size > 0 {
            let pool = options.create_lend_pool(pool_size)?;
            let (id, setup) = pool.add_borrower()?;
            send_control(
                &mut control,
                &ControlMessage::Ready { lend: true },
                &[setup.pool_fd.as_fd(), setup.return_ring_fd.as_fd()],
            )?;
            own_pool = Some((Arc::new(pool), id));
        } else {
            send_control(&mut control, &ControlMessage::Ready { lend: false }, &[])?;
        }
        Ok(Session {
            control,
            peer_name,
            peer,
            peer_metadata,
            init,
            options: chan_options,
            timeout,
            next_id: 0,
            id_bit: 0,
            requests: VecDeque::new(),
            arena,
            app_arena,
            own_pool,
            peer_pool,
            peer_pidfd: None,
            ended: false,
        })
    }

    /// Connects to the server `server` as client `client`: checks the rendezvous directory and
    /// the server's credentials, sends the options' init-channel requests and metadata, and
    /// returns the session with its init channels (take them with
    /// [`take_init_channels`](Session::take_init_channels)).
    ///
    /// A refused client gets [`SessionError::Refused`], naming the check that failed.
    pub fn connect(
        client: &ClientApp,
        server: &ServerApp,
        options: &SessionOptions,
    ) -> Result<Session, SessionError> {
        client.app.check_name()?;
        server.app.check_name()?;
        options.check()?;
        let dir = rendezvous::dir(server, options);
        rendezvous::check_client_dir(&dir, server)?;
        let path = dir.join(format!("{}.sock", server.app.name));
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                SessionError::ServerNotRunning {
                    server: server.app.name.clone(),
                    path: path.clone(),
                }
            }
            _ => SessionError::io(format!("connecting to {}", path.display()), e),
        })?;
        let (identity, pidfd) = match auth::identify(stream.as_fd()) {
            Ok(id) => id,
            Err(IdentifyError::Gone) => return Err(SessionError::PeerGone),
            Err(IdentifyError::Os(op, e)) => return Err(SessionError::os(op, e)),
        };
        check_server(server, &identity)?;
        let mut control = control_options().from_socket(OwnedFd::from(stream));
        let sent = send_control(
            &mut control,
            &ControlMessage::Hello {
                name: &client.app.name,
                settings: options.settings,
                init: options.init.clone(),
                metadata: &options.metadata,
            },
            &[],
        );
        match sent {
            // A server that refuses us from kernel facts alone may have hung up before our hello
            // arrived; its refusal is still waiting to be read.
            Ok(()) | Err(SessionError::PeerGone) => {}
            Err(e) => return Err(e),
        }
        let mut session = Session::take(control, &server.app.name, options, false, Some(identity))?;
        session.peer_pidfd = Some(Arc::new(pidfd));
        Ok(session)
    }

    /// Spawns `command` with a session to it: the child calls [`Session::from_env`]. The
    /// options (init channels, channel settings, arenas, metadata) travel with the session.
    ///
    /// The child inherits exactly one extra descriptor, named in the `FLOWIPC_SESSION_FD`
    /// environment variable; it is inheritable only between this call's `fork` and `exec` window
    /// in the sense that this process clears its close-on-exec flag until `spawn` returns, so a
    /// process spawned concurrently by another thread may inherit it too (it then holds a
    /// descriptor it does not know about; it cannot use it to impersonate this process). Returns
    /// once the child has taken the session (bounded by the handshake timeout; on failure the
    /// child is killed and reaped).
    pub fn spawn(
        command: &mut Command,
        options: &SessionOptions,
    ) -> Result<(Session, Child), SessionError> {
        Session::spawn_with(
            command,
            options,
            |c, key, value| {
                c.env(key, value);
            },
            Command::spawn,
            |child| Some(child.id()),
            |child| {
                let _ = child.kill();
                let _ = child.wait();
            },
        )
    }

    /// [`spawn`](Self::spawn) for any kind of command (std's, tokio's): `env` sets a variable
    /// on it, `spawn` starts it, `id` names the child, `kill` kills and reaps it.
    pub(super) fn spawn_with<S, C>(
        command: &mut S,
        options: &SessionOptions,
        env: impl FnOnce(&mut S, &str, String),
        spawn: impl FnOnce(&mut S) -> std::io::Result<C>,
        id: impl FnOnce(&C) -> Option<u32>,
        kill: impl FnOnce(&mut C),
    ) -> Result<(Session, C), SessionError> {
        options.check()?;
        let (ours, theirs) = flowipc_sys::socket::socketpair_stream()
            .map_err(|e| SessionError::os("socketpair", e))?;
        let ino = flowipc_sys::session::inode(theirs.as_fd())
            .map_err(|e| SessionError::os("fstat", e))?;
        flowipc_sys::fd::set_cloexec(theirs.as_fd(), false)
            .map_err(|e| SessionError::os("fcntl(F_SETFD)", e))?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        env(command, SESSION_FD_ENV, format!("{raw}:{ino}"));
        let spawned = spawn(command);
        drop(theirs);
        let mut child = spawned.map_err(|e| SessionError::io("spawning the session's child", e))?;
        let control = control_options().from_socket(ours);
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "parent".to_owned());
        let own = options.channel_options();
        let result = Session::offer(
            control,
            Offer {
                local_name: &name,
                requested: &[],
                requested_options: &own,
                options,
                peer_name: "child".to_owned(),
                peer: None,
                peer_metadata: Vec::new(),
                app_arena: None,
            },
        );
        match result {
            Ok(mut s) => {
                s.peer_pidfd = id(&child).and_then(pidfd_of);
                Ok((s, child))
            }
            Err(e) => {
                kill(&mut child);
                Err(e)
            }
        }
    }

    /// In a process started with [`Session::spawn`]: takes the session its parent handed over.
    /// Works once per process; later calls fail with [`SessionError::NotSpawned`].
    pub fn from_env() -> Result<Session, SessionError> {
        let sock = inherit::take_session_socket()?;
        let control = control_options().from_socket(sock);
        let mut session = Session::take(control, "parent", &SessionOptions::default(), true, None)?;
        session.peer_pidfd = pidfd_of(std::os::unix::process::parent_id());
        Ok(session)
    }

    pub(super) fn set_peer_pidfd(&mut self, pidfd: OwnedFd) {
        self.peer_pidfd = Some(Arc::new(pidfd));
    }

    /// The peer app's name (as the server calls itself, or as the client was matched).
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// The kernel's account of the peer (server side: the authenticated client; client side:
    /// the server), `None` for a parent/child session.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// The metadata the peer sent at connect.
    pub fn peer_metadata(&self) -> &[u8] {
        &self.peer_metadata
    }

    /// Takes the init channels, in the order asked for (the client's, then the server's own).
    pub fn take_init_channels(&mut self) -> Vec<Channel> {
        std::mem::take(&mut self.init)
    }

    /// The options this side's channel ends use.
    pub fn channel_options(&self) -> &ChannelOptions {
        &self.options
    }

    /// Opens a new channel of transport `kind`: the peer gets `metadata` with the request and
    /// accepts it ([`grant`](Session::grant)) or refuses it ([`SessionError::OpenRefused`] here,
    /// with its reason). Waits at most the handshake timeout for the answer; requests of the
    /// peer arriving meanwhile are kept for [`accept_channel`](Session::accept_channel).
    pub fn open_channel(
        &mut self,
        kind: TransportKind,
        metadata: &[u8],
    ) -> Result<Channel, SessionError> {
        let (id, ours) = self.begin_open(kind, metadata)?;
        let deadline = Instant::now() + self.timeout;
        self.wait_answer(id, Some(deadline))?;
        Ok(ours)
    }

    /// Sends an open request; returns its id and this side's end.
    pub(super) fn begin_open(
        &mut self,
        kind: TransportKind,
        metadata: &[u8],
    ) -> Result<(u64, Channel), SessionError> {
        self.check_live()?;
        if metadata.len() > wire::MAX_METADATA {
            return Err(SessionError::BadOptions(format!(
                "{} bytes of channel metadata, at most {} fit",
                metadata.len(),
                wire::MAX_METADATA
            )));
        }
        let id = self.next_id | self.id_bit;
        self.next_id += 1;
        let (ours, theirs) = pair(&self.options, kind)?;
        let fds = theirs.into_fds()?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.fds().iter().map(AsFd::as_fd).collect();
        send_control(
            &mut self.control,
            &ControlMessage::Channel { id, kind, metadata },
            &borrowed,
        )
        .inspect_err(|e| self.end_on(e))?;
        Ok((id, ours))
    }

    /// Waits until `deadline` for the answer to request `id` (`Ok`: accepted).
    pub(super) fn wait_answer(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        loop {
            match self.next_event(deadline, "an answer to open_channel")? {
                Event::Answer { id: got, refused } if got == id => {
                    return match refused {
                        None => Ok(()),
                        Some(reason) => Err(SessionError::OpenRefused { reason }),
                    }
                }
                Event::Answer { .. } => {
                    return Err(self.protocol(HandshakeError::Unexpected(
                        "an answer to a request this side did not make",
                    )))
                }
                Event::Request => {}
            }
        }
    }

    /// The handshake timeout, which also bounds the wait for an answer to `open_channel`.
    #[cfg(feature = "tokio")]
    pub(super) fn answer_timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for the peer to ask for a channel (at most `timeout`; `None`: forever). Take the
    /// request with [`grant`](Session::grant) or [`refuse`](Session::refuse).
    ///
    /// The peer's death ends the wait at once with [`SessionError::PeerGone`], its orderly end
    /// with [`SessionError::Closed`].
    pub fn accept_channel(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<ChannelRequest, SessionError> {
        if let Some(r) = self.requests.pop_front() {
            return Ok(r);
        }
        self.check_live()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_event(deadline, "a channel request")? {
                Event::Request => {
                    if let Some(r) = self.requests.pop_front() {
                        return Ok(r);
                    }
                }
                Event::Answer { .. } => {
                    return Err(self.protocol(HandshakeError::Unexpected(
                        "an answer to a request this side did not make",
                    )))
                }
            }
        }
    }

    /// The registered-handler form of [`accept_channel`](Session::accept_channel): waits for one
    /// request (at most `timeout`) and lets `decide` judge it. `Ok(())` grants it and returns the
    /// channel; `Err(reason)` refuses it (the opener gets `reason`) and returns `None`.
    ///
    /// ```no_run
    /// # fn f(session: &mut flowipc::session::Session) -> Result<(), flowipc::session::SessionError> {
    /// use flowipc::channel::TransportKind;
    ///
    /// let granted = session.handle_channel_request(None, |request| {
    ///     if request.kind() == TransportKind::Ring {
    ///         Ok(())
    ///     } else {
    ///         Err("this server only opens ring channels".into())
    ///     }
    /// })?;
    /// # drop(granted);
    /// # Ok(())
    /// # }
    /// ```
    pub fn handle_channel_request(
        &mut self,
        timeout: Option<Duration>,
        decide: impl FnOnce(&ChannelRequest) -> Result<(), String>,
    ) -> Result<Option<Channel>, SessionError> {
        let request = self.accept_channel(timeout)?;
        match decide(&request) {
            Ok(()) => self.grant(request).map(Some),
            Err(reason) => self.refuse(request, &reason).map(|()| None),
        }
    }

    /// Accepts a request: the opener's `open_channel` returns its end, this is ours.
    pub fn grant(&mut self, request: ChannelRequest) -> Result<Channel, SessionError> {
        send_control(
            &mut self.control,
            &ControlMessage::OpenAccepted { id: request.id },
            &[],
        )
        .inspect_err(|e| self.end_on(e))?;
        Ok(request.channel)
    }

    /// Refuses a request; the opener's `open_channel` fails with `reason` (at most 1 KiB).
    pub fn refuse(&mut self, request: ChannelRequest, reason: &str) -> Result<(), SessionError> {
        send_control(
            &mut self.control,
            &ControlMessage::OpenRefused {
                id: request.id,
                reason,
            },
            &[],
        )
        .inspect_err(|e| self.end_on(e))
    }

    /// Waits (at most `timeout`) for the session to end: `Ok(())` when the peer closed it,
    /// [`SessionError::PeerGone`] when it died. Channel requests arriving meanwhile are kept.
    pub fn wait_end(&mut self, timeout: Option<Duration>) -> Result<(), SessionError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.next_event(deadline, "the end of the session") {
                Err(SessionError::Closed) => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }

    /// Ends the session in an orderly way: the peer learns it after everything sent before on
    /// the control channel. Channels handed out stay open until dropped.
    pub fn close(mut self) -> Result<(), SessionError> {
        self.say_goodbye()
    }

    /// The session's classic arena (both sides allocate in it), if the server set one up.
    pub fn arena(&self) -> Option<&ShmArena> {
        self.arena.as_ref()
    }

    /// The app-scope arena: one classic arena the server shares with every session of this
    /// client app (present if the server set [`SessionOptions::app_arena`]).
    pub fn app_arena(&self) -> Option<&ShmArena> {
        self.app_arena.as_ref()
    }

    /// This side's lend pool (only this side allocates; the peer maps it read-only).
    pub fn lend_pool(&self) -> Option<&LendPool> {
        self.own_pool.as_ref().map(|(p, _)| &**p)
    }

    /// This side's lend pool with the peer's borrower id in it: what
    /// [`ShmVec::lend`](crate::native::ShmVec::lend), [`LendPool::lend`] and
    /// [`LendPool::drain_returns`] take. For code that lends from other threads: the pool is
    /// `Sync`, the session is not.
    pub fn lend_target(&self) -> Option<(&LendPool, BorrowerId)> {
        self.own_pool.as_ref().map(|(p, to)| (&**p, *to))
    }

    /// Lends an object of this side's pool to the peer: the handle to send it.
    pub fn lend(&self, object: &ArenaObject) -> Result<ArenaHandle, SessionError> {
        let (pool, to) = self
            .own_pool
            .as_ref()
            .ok_or_else(|| SessionError::BadOptions("this session has no lend pool".into()))?;
        Ok(pool.lend(object, *to)?)
    }

    /// Lends a native structure ([`ShmVec`](crate::native::ShmVec) and the others, allocated in
    /// this side's [`lend_pool`](Self::lend_pool)) to the peer with every block it adopted: the
    /// handle to send. The structure is frozen until the peer releases it and
    /// [`reclaim_lent`](Self::reclaim_lent) has drained the release.
    pub fn lend_native<N: crate::native::ShmNode>(
        &self,
        root: &N,
    ) -> Result<ArenaHandle, crate::native::NativeError> {
        let (pool, to) = self
            .own_pool
            .as_ref()
            .ok_or(crate::native::NativeError::NoLendPool)?;
        root.lend(pool, *to)
    }

    /// Takes back what the peer has released of the objects lent to it; returns how many.
    pub fn reclaim_lent(&self) -> Result<usize, SessionError> {
        match self.own_pool.as_ref() {
            Some((pool, from)) => Ok(pool.drain_returns(*from)?),
            None => Ok(0),
        }
    }

    /// Zero copy for this session's structured channels: messages this side builds go in its
    /// lend pool, the peer's are read in its pool, mapped read-only. Give it to
    /// [`StructuredOptions::zero_copy`](crate::structured::StructuredOptions::zero_copy) on
    /// both sides. Fails if the session has no lend pools ([`SessionOptions::arenas`] on the
    /// server, or spawning, side sizes them: make them as large as the largest message, twice
    /// over, since segments grow by doubling).
    ///
    /// Safe because the peer is this session's: authenticated by kernel facts (its uid, gid and
    /// executable) at connect, or this process's own child or parent. See the
    /// [`zero_copy`](crate::structured::zero_copy) module for the model.
    #[allow(unsafe_code)]
    pub fn zero_copy(&self) -> Result<ZeroCopy, SessionError> {
        let (Some((own, borrower)), Some(peer)) = (&self.own_pool, &self.peer_pool) else {
            return Err(SessionError::BadOptions(
                "this session has no lend pools; set SessionOptions::arenas on the server (or \
                 spawning) side to use zero copy"
                    .into(),
            ));
        };
        // SAFETY: the peer is this session's authenticated peer (or our own parent or child),
        // whose flowipc sender never writes a segment it lent (the contract of `from_pools`).
        Ok(unsafe {
            ZeroCopy::from_pools(
                own.clone(),
                *borrower,
                peer.clone(),
                self.peer_pidfd.clone(),
            )
        })
    }

    /// The peer's lend pool, mapped read-only.
    pub fn peer_pool(&self) -> Option<&BorrowedPool> {
        self.peer_pool.as_deref()
    }

    /// A read-only view of the object `handle` names, after checking that it lies in one of this
    /// session's pools (the classic arena, the app arena or the peer's lend pool) and is live
    /// there. A handle of
    /// any other pool, including another session's, fails with
    /// [`SessionError::ForeignHandle`].
    pub fn view(&self, handle: &ArenaHandle) -> Result<ArenaView<'_>, SessionError> {
        if let Some(a) = [self.arena.as_ref(), self.app_arena.as_ref()]
            .into_iter()
            .flatten()
            .find(|a| a.pool_id() == handle.pool_id)
        {
            return Ok(a.view(handle)?);
        }
        if let Some(p) = self
            .peer_pool
            .as_ref()
            .filter(|p| p.pool_id() == handle.pool_id)
        {
            return Ok(p.view(handle)?);
        }
        Err(SessionError::ForeignHandle {
            pool_id: handle.pool_id,
        })
    }

    /// Takes a classic-arena object the peer allocated and handed over (ownership moves to this
    /// side), after checking that the handle names this session's arena or app arena.
    pub fn adopt(&self, handle: ArenaHandle) -> Result<ArenaObject, SessionError> {
        match [self.arena.as_ref(), self.app_arena.as_ref()]
            .into_iter()
            .flatten()
            .find(|a| a.pool_id() == handle.pool_id)
        {
            Some(a) => Ok(a.adopt(handle)?),
            _ => Err(SessionError::ForeignHandle {
                pool_id: handle.pool_id,
            }),
        }
    }

    /// The control channel's descriptor: readable when the peer sent a request, closed or died
    /// (for event loops; then call [`accept_channel`](Session::accept_channel) with a zero
    /// timeout).
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    fn check_live(&self) -> Result<(), SessionError> {
        if self.ended {
            Err(SessionError::Closed)
        } else {
            Ok(())
        }
    }

    fn end_on(&mut self, e: &SessionError) {
        if matches!(
            e,
            SessionError::PeerGone | SessionError::Closed | SessionError::Protocol(_)
        ) {
            self.ended = true;
        }
    }

    fn protocol(&mut self, e: HandshakeError) -> SessionError {
        self.ended = true;
        SessionError::Protocol(e)
    }

    /// Receives and handles one control message.
    fn next_event(
        &mut self,
        deadline: Option<Instant>,
        during: &'static str,
    ) -> Result<Event, SessionError> {
        self.check_live()?;
        let r = recv_control(&mut self.control, deadline, during).inspect_err(|e| {
            if !matches!(e, SessionError::TimedOut(_)) {
                self.ended = true;
            }
        })?;
        let msg = match wire::parse(&r.bytes, r.fds.len()) {
            Ok(m) => m,
            Err(e) => return Err(self.protocol(e)),
        };
        match msg {
            ControlMessage::Channel { id, kind, metadata } => {
                if id & OFFERER_BIT == self.id_bit {
                    return Err(
                        self.protocol(HandshakeError::Invalid("request id of this side's range"))
                    );
                }
                if self.requests.len() >= MAX_PENDING_REQUESTS {
                    return Err(self.protocol(HandshakeError::TooLong {
                        what: "queue of channel requests not yet accepted",
                        len: self.requests.len() + 1,
                        max: MAX_PENDING_REQUESTS,
                    }));
                }
                let metadata = metadata.to_vec();
                match channel_from(&self.options, kind, r.fds) {
                    Ok(channel) => {
                        self.requests.push_back(ChannelRequest {
                            id,
                            kind,
                            metadata,
                            channel,
                        });
                        Ok(Event::Request)
                    }
                    Err(e) => {
                        let _ = send_control(
                            &mut self.control,
                            &ControlMessage::OpenRefused {
                                id,
                                reason: "the descriptors sent do not make up a channel",
                            },
                            &[],
                        );
                        self.ended = true;
                        Err(e)
                    }
                }
            }
            ControlMessage::OpenAccepted { id } => Ok(Event::Answer { id, refused: None }),
            ControlMessage::OpenRefused { id, reason } => Ok(Event::Answer {
                id,
                refused: Some(reason.to_owned()),
            }),
            ControlMessage::Close => {
                self.ended = true;
                Err(SessionError::Closed)
            }
            _ => Err(self.protocol(HandshakeError::Unexpected(
                "a handshake message after the handshake",
            ))),
        }
    }

    fn say_goodbye(&mut self) -> Result<(), SessionError> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.control.set_nonblocking(true);
        let r = send_control(&mut self.control, &ControlMessage::Close, &[]);
        let _ = self.control.close();
        r
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.say_goodbye();
    }
}

enum Event {
    Request,
    Answer { id: u64, refused: Option<String> },
}

/// A pidfd for process `pid` (a child, or the parent that spawned us: neither pid can be reused
/// while we are its parent or child), if the kernel has pidfds.
fn pidfd_of(pid: u32) -> Option<Arc<OwnedFd>> {
    let pid = flowipc_sys::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    flowipc_sys::process::pidfd_open(pid).ok().map(Arc::new)
}

fn open_borrowed(fds: Vec<OwnedFd>) -> Result<BorrowedPool, SessionError> {
    let mut it = fds.into_iter();
    match (it.next(), it.next()) {
        (Some(pool_fd), Some(return_ring_fd)) => Ok(BorrowedPool::open(BorrowerSetup {
            pool_fd,
            return_ring_fd,
        })?),
        _ => Err(HandshakeError::Truncated("lend pool descriptors").into()),
    }
}

fn check_server(server: &ServerApp, id: &PeerIdentity) -> Result<(), SessionError> {
    let untrusted = |reason: String| SessionError::UntrustedServer {
        server: server.app.name.clone(),
        reason,
    };
    if id.uid != server.app.uid {
        return Err(untrusted(format!(
            "it runs as uid {}, the server app as uid {}",
            id.uid, server.app.uid
        )));
    }
    if let Some(exe) = &id.exe {
        if *exe != server.app.canonical_exe() {
            return Err(untrusted(format!(
                "it runs {}, the server app is {}",
                exe.display(),
                server.app.exe.display()
            )));
        }
    }
    Ok(())
}
