//! Sessions: two programs described once, a server that checks who connects, ready channels and
//! shared-memory pools for each client, and the spawned-child case in one call per side.
//!
//! - [`App`], [`ServerApp`], [`ClientApp`] describe the programs (name, executable, uid, gid);
//!   both programs' code shares the descriptions.
//! - [`SessionServer::bind`] owns the rendezvous socket `$XDG_RUNTIME_DIR/flowipc/<server>.sock`
//!   (else `/tmp/flowipc-<server uid>/`), next to a lock file it holds with `flock` for its whole
//!   life: a second live server with the same name is refused, and a socket left by a killed server
//!   is recognized (its lock is free) and replaced. [`SessionServer::accept`] returns one
//!   [`Session`] per authenticated client.
//! - [`Session::connect`] is the client's side; [`Session::spawn`] / [`Session::from_env`] connect
//!   a parent to the child it spawns without any rendezvous.
//! - A session holds a control channel (a socket [`Channel`](crate::channel::Channel)); its N init channels arrive with the
//!   handshake, more are opened with [`Session::open_channel`] from either side and accepted
//!   ([`Session::accept_channel`]) or refused ([`Session::refuse`]) by the other.
//!
//! # Authentication
//!
//! The server decides from kernel facts only ([`PeerIdentity`]): the peer's uid and gid from
//! `SO_PEERCRED`, its executable from `/proc/<pid>/exe`, with the pid pinned through a pidfd from
//! `SO_PEERPIDFD` (Linux 6.5+) so that a pid reused while the server looks cannot pass for the
//! client. On older kernels the server falls back to `pidfd_open` on the `SO_PEERCRED` pid, which
//! leaves a window between `connect` and `pidfd_open` in which the client could exit and its pid be
//! reused; the pidfd liveness check after reading the executable then narrows the race to that
//! window. A refused client gets [`SessionError::Refused`] naming the failed check; the server
//! logs it with `tracing` and keeps serving. The client checks the rendezvous directory (a real
//! directory, owned by the server's uid, writable by no one else) and the server's uid and
//! executable.
//!
//! # What a hostile peer can do
//!
//! Every control message is parsed by [`wire::parse`], a pure function fuzzed on its own; bad
//! bytes end the session with [`SessionError::Protocol`]. Channel descriptors go through
//! [`ChannelOptions::from_fds`](crate::channel::ChannelOptions::from_fds), which checks them.
//! Arena handles are checked against the session's own pools ([`Session::view`]).
//!
//! # Lifetime
//!
//! Everything a session holds is a descriptor: when either process dies, the kernel closes its
//! ends, the other side's control channel and every channel see `PeerGone`, and the shared memory
//! is freed with the last mapping. Nothing is named in `/dev/shm` or the mq namespace; the
//! rendezvous directory holds only the live server's socket and lock file.

mod auth;
mod conn;
mod inherit;
mod rendezvous;
mod server;
#[cfg(feature = "tokio")]
mod tokio;
pub mod wire;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::arena::ArenaError;
use crate::channel::{ChannelOptions, OpenError, RecvError, SendError, TransportKind};

pub use self::auth::PeerIdentity;
pub use self::conn::{ChannelRequest, Session};
pub use self::server::SessionServer;
#[cfg(feature = "tokio")]
pub use self::tokio::{AsyncSession, AsyncSessionServer, ChannelRequests};
pub use self::wire::HandshakeError;

/// The environment variable through which [`Session::spawn`] tells the child which inherited
/// descriptor is its session socket.
pub const SESSION_FD_ENV: &str = "FLOWIPC_SESSION_FD";

/// A program taking part in sessions: its name (used for the rendezvous socket and in errors),
/// executable and the user and group it runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Short name, unique among the apps of one system: `[A-Za-z0-9._-]`, 1 to 64 bytes.
    pub name: String,
    /// Absolute path of the program's executable (compared with the peer's `/proc/<pid>/exe`
    /// after resolving symlinks).
    pub exe: PathBuf,
    /// The user id it runs as.
    pub uid: u32,
    /// The group id it runs as.
    pub gid: u32,
}

impl App {
    /// An app description.
    pub fn new(name: impl Into<String>, exe: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        App {
            name: name.into(),
            exe: exe.into(),
            uid,
            gid,
        }
    }

    /// This very process: its executable and effective uid and gid, under `name`.
    pub fn current(name: impl Into<String>) -> io::Result<Self> {
        Ok(App::new(
            name,
            std::env::current_exe()?,
            flowipc_sys::session::geteuid(),
            flowipc_sys::session::getegid(),
        ))
    }

    fn check_name(&self) -> Result<(), SessionError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !self.name.starts_with('.');
        if ok {
            Ok(())
        } else {
            Err(SessionError::BadApp(format!(
                "app name {:?} must be 1 to 64 bytes of [A-Za-z0-9._-], not starting with '.'",
                self.name
            )))
        }
    }

    /// The executable with symlinks resolved (as the kernel reports it), or as given if it does
    /// not exist here.
    fn canonical_exe(&self) -> PathBuf {
        std::fs::canonicalize(&self.exe).unwrap_or_else(|_| self.exe.clone())
    }
}

/// Who may open the rendezvous socket of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PermissionLevel {
    /// Only the server's user: directory 0700, socket 0600 (the default).
    #[default]
    User,
    /// The server's user and group: directory 0750, socket 0660. The directory's group is the
    /// group of the process that created it.
    Group,
    /// Every user may connect (the server still checks each client): directory 0755, socket
    /// 0666. Use this for clients that run under other users.
    Unrestricted,
}

impl PermissionLevel {
    fn dir_mode(self) -> u32 {
        match self {
            PermissionLevel::User => 0o700,
            PermissionLevel::Group => 0o750,
            PermissionLevel::Unrestricted => 0o755,
        }
    }

    fn socket_mode(self) -> u32 {
        match self {
            PermissionLevel::User => 0o600,
            PermissionLevel::Group => 0o660,
            PermissionLevel::Unrestricted => 0o666,
        }
    }
}

/// A server program: its app, the client apps it accepts, and who may reach its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerApp {
    /// The server program.
    pub app: App,
    /// The client programs it accepts; anyone else is refused.
    pub clients: Vec<App>,
    /// Permissions of the rendezvous directory and socket.
    pub permission: PermissionLevel,
}

impl ServerApp {
    /// A server accepting `clients`, with [`PermissionLevel::User`].
    pub fn new(app: App, clients: Vec<App>) -> Self {
        ServerApp {
            app,
            clients,
            permission: PermissionLevel::User,
        }
    }

    /// Sets who may reach the rendezvous socket.
    pub fn permission(mut self, level: PermissionLevel) -> Self {
        self.permission = level;
        self
    }
}

/// A client program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientApp {
    /// The client program.
    pub app: App,
}

impl ClientApp {
    /// A client app.
    pub fn new(app: App) -> Self {
        ClientApp { app }
    }
}

/// Settings of a session, for either side; [`Default`] gives no init channels, no arenas and a
/// 10 s handshake timeout.
///
/// ```
/// use flowipc::channel::TransportKind;
/// use flowipc::session::SessionOptions;
///
/// let options = SessionOptions::new()
///     .init_channel(TransportKind::Ring)
///     .init_channel(TransportKind::Socket)
///     .metadata(b"hello".to_vec())
///     .arenas(1 << 20);
/// # drop(options);
/// ```
#[derive(Debug, Clone)]
pub struct SessionOptions {
    init: Vec<TransportKind>,
    metadata: Vec<u8>,
    settings: wire::Settings,
    handshake_timeout: Duration,
    arena_size: usize,
    app_arena_size: usize,
    rendezvous_dir: Option<PathBuf>,
    wait_policy: crate::channel::WaitPolicy,
    #[cfg_attr(not(feature = "jemalloc"), allow(dead_code))]
    jemalloc_pools: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            init: Vec::new(),
            metadata: Vec::new(),
            settings: wire::Settings {
                max_message_size: crate::channel::DEFAULT_MAX_MESSAGE_SIZE as u64,
                max_fds_per_message: crate::channel::MAX_FDS_PER_MESSAGE as u32,
                ring_capacity: 1 << 20,
                mq_max_messages: 0,
                mq_message_size: 0,
            },
            handshake_timeout: Duration::from_secs(10),
            arena_size: 0,
            app_arena_size: 0,
            rendezvous_dir: None,
            wait_policy: crate::channel::WaitPolicy::default(),
            jemalloc_pools: false,
        }
    }
}

impl SessionOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one init channel of transport `kind` (a client asks for it; a server or spawning
    /// parent adds its own to every session).
    pub fn init_channel(mut self, kind: TransportKind) -> Self {
        self.init.push(kind);
        self
    }

    /// Adds `n` init channels of transport `kind`.
    pub fn init_channels(mut self, n: usize, kind: TransportKind) -> Self {
        self.init.extend(std::iter::repeat_n(kind, n));
        self
    }

    /// Bytes handed to the peer at connect (at most 16 KiB).
    pub fn metadata(mut self, bytes: Vec<u8>) -> Self {
        self.metadata = bytes;
        self
    }

    /// Limit of one channel message (see [`ChannelOptions::max_message_size`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.settings.max_message_size = bytes as u64;
        self
    }

    /// Capacity of each ring of a ring channel (see [`ChannelOptions::ring_capacity`]).
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.settings.ring_capacity = bytes as u64;
        self
    }

    /// Messages per POSIX queue of an mq channel (see [`ChannelOptions::mq_max_messages`]).
    pub fn mq_max_messages(mut self, count: u32) -> Self {
        self.settings.mq_max_messages = i64::from(count);
        self
    }

    /// Bytes per POSIX queue message (see [`ChannelOptions::mq_message_size`]).
    pub fn mq_message_size(mut self, bytes: usize) -> Self {
        self.settings.mq_message_size = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }

    /// The longest the handshake, and the wait for an answer to `open_channel`, may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// On the server (or spawning parent): give every session a classic arena of `bytes` that
    /// both sides allocate in, and a lend pool of `bytes` per side. On the client: a lend pool of
    /// `bytes` of its own (the server decides about the shared arena). 0 (default): none.
    pub fn arenas(mut self, bytes: usize) -> Self {
        self.arena_size = bytes;
        self
    }

    /// This side's lend pool is jemalloc-backed ([`LendPool::create_jemalloc`]: per-thread caches
    /// in front of jemalloc, the fastest allocator for many small objects and zero-copy
    /// messages) instead of the core allocator. This side's own choice; the peer reads either
    /// kind. Only the process that created the session may allocate in it (not a fork child).
    /// Default off.
    ///
    /// [`LendPool::create_jemalloc`]: crate::arena::LendPool::create_jemalloc
    #[cfg(feature = "jemalloc")]
    pub fn jemalloc_pools(mut self, yes: bool) -> Self {
        self.jemalloc_pools = yes;
        self
    }

    pub(crate) fn create_lend_pool(
        &self,
        bytes: usize,
    ) -> Result<crate::arena::LendPool, crate::arena::ArenaError> {
        #[cfg(feature = "jemalloc")]
        if self.jemalloc_pools {
            return crate::arena::LendPool::create_jemalloc(bytes);
        }
        crate::arena::LendPool::create(bytes)
    }

    /// On the server: share one classic arena of `bytes` among all sessions of each client app
    /// (created at the app's first session, kept while the server lives). 0 (default): none.
    pub fn app_arena(mut self, bytes: usize) -> Self {
        self.app_arena_size = bytes;
        self
    }

    /// Uses `dir` as the rendezvous directory instead of the default (both sides must agree).
    pub fn rendezvous_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rendezvous_dir = Some(dir.into());
        self
    }

    /// How this side's ends of the session's channels wait (see
    /// [`ChannelOptions::wait_policy`]); this side's own choice, not sent to the peer. Default:
    /// spin, then block.
    pub fn wait_policy(mut self, policy: crate::channel::WaitPolicy) -> Self {
        self.wait_policy = policy;
        self
    }

    /// The [`ChannelOptions`] these settings stand for.
    pub fn channel_options(&self) -> ChannelOptions {
        settings_to_options(&self.settings).wait_policy(self.wait_policy)
    }

    fn check(&self) -> Result<(), SessionError> {
        if self.init.len() > wire::MAX_INIT_CHANNELS {
            return Err(SessionError::BadOptions(format!(
                "{} init channels asked for, at most {} fit in one session",
                self.init.len(),
                wire::MAX_INIT_CHANNELS
            )));
        }
        if self.metadata.len() > wire::MAX_METADATA {
            return Err(SessionError::BadOptions(format!(
                "{} bytes of metadata, at most {} fit; send more over a channel",
                self.metadata.len(),
                wire::MAX_METADATA
            )));
        }
        if !self.settings.ring_capacity.is_power_of_two() {
            return Err(SessionError::BadOptions(
                "ring_capacity must be a power of two".into(),
            ));
        }
        Ok(())
    }
}

fn settings_to_options(s: &wire::Settings) -> ChannelOptions {
    let mut o = ChannelOptions::new()
        .max_message_size(usize::try_from(s.max_message_size).unwrap_or(usize::MAX))
        .max_fds_per_message(s.max_fds_per_message as usize)
        .ring_capacity(usize::try_from(s.ring_capacity).unwrap_or(usize::MAX));
    if s.mq_max_messages > 0 {
        o = o.mq_max_messages(u32::try_from(s.mq_max_messages).unwrap_or(u32::MAX));
    }
    if s.mq_message_size > 0 {
        o = o.mq_message_size(usize::try_from(s.mq_message_size).unwrap_or(usize::MAX));
    }
    o
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server refused this client; `reason` names the check that failed.
    #[error("server '{server}' refused: {reason}")]
    Refused {
        /// The server app's name.
        server: String,
        /// Which check failed.
        reason: String,
    },
    /// No server listens at the rendezvous socket.
    #[error(
        "no server '{server}' is listening at {}; start it, or make both sides use the same \
         rendezvous directory",
        path.display()
    )]
    ServerNotRunning {
        /// The server app's name.
        server: String,
        /// The socket path tried.
        path: PathBuf,
    },
    /// Another live server holds the name.
    #[error(
        "another server '{server}' is running (it holds the lock {}); stop it first, or give \
         this one another name",
        lock.display()
    )]
    AlreadyRunning {
        /// The server app's name.
        server: String,
        /// The lock file held by the other server.
        lock: PathBuf,
    },
    /// The rendezvous directory is not safe to use.
    #[error("the rendezvous directory {} is not trustworthy: {reason}", path.display())]
    UntrustedRendezvous {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process at the rendezvous socket is not the server app.
    #[error("the process listening as server '{server}' is not it: {reason}")]
    UntrustedServer {
        /// The server app's name.
        server: String,
        /// Which check failed.
        reason: String,
    },
    /// An app description is unusable.
    #[error("bad app description: {0}")]
    BadApp(String),
    /// Session options are unusable.
    #[error("bad session options: {0}")]
    BadOptions(String),
    /// The peer sent bytes that break the session protocol; the session is over.
    #[error("the peer broke the session protocol: {0}; distrust it")]
    Protocol(#[from] HandshakeError),
    /// The peer process exited or dropped the session without closing it.
    #[error("the session's peer is gone (its process exited or dropped the session)")]
    PeerGone,
    /// The peer (or this side) ended the session in an orderly way.
    #[error("the session was closed; connect again for a new one")]
    Closed,
    /// A handshake or an answer to `open_channel` took longer than the handshake timeout.
    #[error(
        "timed out waiting for the peer during {0}; is it alive and serving? raise \
         SessionOptions::handshake_timeout if it is just slow"
    )]
    TimedOut(&'static str),
    /// The peer refused a channel this side asked to open.
    #[error("the peer refused the channel: {reason}")]
    OpenRefused {
        /// The peer's reason.
        reason: String,
    },
    /// An arena handle names a pool that is not one of this session's.
    #[error(
        "the handle names pool {pool_id:#x}, which is not one of this session's pools; it came \
         from another session or was forged"
    )]
    ForeignHandle {
        /// The pool the handle names.
        pool_id: u64,
    },
    /// This process was not spawned with a session ([`Session::from_env`]).
    #[error(
        "no session was handed to this process ({SESSION_FD_ENV} is not set or not valid); \
         start it with Session::spawn"
    )]
    NotSpawned,
    /// Sending on the control channel failed.
    #[error("session control channel: {0}")]
    Send(#[source] SendError),
    /// Receiving on the control channel failed.
    #[error("session control channel: {0}")]
    Recv(#[source] RecvError),
    /// Creating or re-creating a channel failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Creating or opening a session pool failed.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// The operating system refused an operation.
    #[error("{op} failed: {source}")]
    Io {
        /// What flowipc was doing.
        op: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

impl From<SendError> for SessionError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::PeerGone => SessionError::PeerGone,
            SendError::Closed => SessionError::Closed,
            e => SessionError::Send(e),
        }
    }
}

impl From<RecvError> for SessionError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::PeerGone => SessionError::PeerGone,
            RecvError::Closed => SessionError::Closed,
            e => SessionError::Recv(e),
        }
    }
}

impl SessionError {
    fn io(op: impl Into<String>, source: io::Error) -> Self {
        SessionError::Io {
            op: op.into(),
            source,
        }
    }

    fn os(op: impl Into<String>, e: flowipc_sys::Errno) -> Self {
        SessionError::io(op, io::Error::from_raw_os_error(e.raw_os_error()))
    }

    /// The peer is gone (exited, killed, or dropped the session without closing it).
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, SessionError::PeerGone)
    }
}

/// The rendezvous directory for `server` as seen by this process.
pub fn rendezvous_dir(server: &ServerApp, options: &SessionOptions) -> PathBuf {
    rendezvous::dir(server, options)
}

/// The rendezvous socket path of `server`.
pub fn socket_path(server: &ServerApp, options: &SessionOptions) -> PathBuf {
    rendezvous::dir(server, options).join(format!("{}.sock", server.app.name))
}

fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.lock"))
}
