//! [`SessionServer`]: the rendezvous socket, its lock, and authentication of each client.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowipc_sys::socket::{PollFd, PollFlags};
use flowipc_sys::Errno;

use crate::arena::ShmArena;

use super::auth::{self, IdentifyError, PeerIdentity};
use crate::channel::Channel;

use super::conn::{control_options, recv_control, send_control, Offer};
use super::wire::{self, ControlMessage, HandshakeError};
use super::{
    lock_path, rendezvous, settings_to_options, App, ServerApp, Session, SessionError,
    SessionOptions,
};

/// A server's end of the rendezvous: accepts clients, one [`Session`] each.
///
/// Holds an exclusive `flock` on `<dir>/<name>.lock` for its whole life, so a second server of
/// the same name fails to bind with [`SessionError::AlreadyRunning`]; the lock dies with the
/// process, so the socket a killed server left behind is simply replaced by the next one.
/// Dropping the server removes its socket and its lock file (a server that binds checks, once
/// it holds the lock, that the lock path still names the file it locked, so two servers never
/// hold locks on two different files of one name). A killed server leaves both; the next one
/// reuses them.
#[derive(Debug)]
pub struct SessionServer {
    app: ServerApp,
    /// The clients' executables with symlinks resolved, beside their descriptions.
    clients: Vec<(App, PathBuf)>,
    options: SessionOptions,
    listener: UnixListener,
    path: PathBuf,
    /// App-scope arenas by client app name.
    app_arenas: Mutex<HashMap<String, ShmArena>>,
    lock_path: PathBuf,
    _lock: File,
}

/// Why one client did not get a session; the server logs it and goes on.
enum Rejection {
    /// Refused by a check; the client was told.
    Refused(String),
    /// The client failed during the handshake (died, timed out, broke the protocol).
    Failed(SessionError),
}

impl SessionServer {
    /// Binds the rendezvous socket of `server` (see the [module docs](super)).
    pub fn bind(server: &ServerApp, options: SessionOptions) -> Result<Self, SessionError> {
        server.app.check_name()?;
        for c in &server.clients {
            c.check_name()?;
        }
        options.check()?;
        let dir = rendezvous::dir(server, &options);
        rendezvous::prepare_server_dir(&dir, server)?;
        let lock_file = lock_path(&dir, &server.app.name);
        // The lock file is removed when its server drops: a lock taken on a file that has been
        // removed (or replaced) since we opened it guards nothing, so take it again on the file
        // the path names now.
        let lock = loop {
            let lock = rendezvous::open_lock(&lock_file)?;
            match flowipc_sys::session::flock_exclusive_nonblocking(&lock) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(SessionError::AlreadyRunning {
                        server: server.app.name.clone(),
                        lock: lock_file,
                    })
                }
                Err(e) => return Err(SessionError::os("flock", e)),
            }
            let held = lock
                .metadata()
                .map_err(|e| SessionError::io("fstat of the lock file", e))?;
            match std::fs::metadata(&lock_file) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => break lock,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(SessionError::io(
                        format!("stat of {}", lock_file.display()),
                        e,
                    ))
                }
            }
        };
        let path = dir.join(format!("{}.sock", server.app.name));
        // We hold the lock: whatever socket is there was left by a server that died.
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "replaced a stale rendezvous socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SessionError::io(
                    format!("removing stale socket {}", path.display()),
                    e,
                ))
            }
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| SessionError::io(format!("binding {}", path.display()), e))?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(server.permission.socket_mode()),
        )
        .map_err(|e| SessionError::io(format!("setting the mode of {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SessionError::io("making the listener non-blocking", e))?;
        let clients = server
            .clients
            .iter()
            .map(|c| (c.clone(), c.canonical_exe()))
            .collect();
        Ok(SessionServer {
            app: server.clone(),
            clients,
            options,
            listener,
            path,
            app_arenas: Mutex::new(HashMap::new()),
            lock_path: lock_file,
            _lock: lock,
        })
    }

    /// The app-scope arena of client app `client` (the name it is registered under), once a
    /// session of that app has been accepted with [`SessionOptions::app_arena`] set.
    pub fn app_arena(&self, client: &str) -> Option<ShmArena> {
        self.app_arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .cloned()
    }

    /// The rendezvous socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket (readable when a client is waiting), for event loops.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Waits for the next client that passes the checks and completes the handshake. Clients
    /// that are refused or fail mid-handshake are logged (`tracing`) and skipped.
    pub fn accept(&self) -> Result<Session, SessionError> {
        self.accept_timeout(None)
    }

    /// [`accept`](Self::accept) waiting at most `timeout` (`None`: forever) for a client.
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<Session, SessionError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = match deadline {
                        None => None,
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                return Err(SessionError::TimedOut("accept"));
                            }
                            Some(d - now)
                        }
                    };
                    let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
                    match flowipc_sys::socket::poll(&mut fds, left) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(SessionError::os("poll(listener)", e)),
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(SessionError::io("accept", e)),
            };
            match self.handshake(stream) {
                Ok(session) => return Ok(session),
                Err(Rejection::Refused(reason)) => {
                    tracing::warn!(server = %self.app.app.name, %reason, "refused a client");
                }
                Err(Rejection::Failed(e)) => {
                    tracing::warn!(server = %self.app.app.name, error = %e, "a client failed during the handshake");
                }
            }
        }
    }

    /// Matches the peer's kernel facts against the registered clients; `Err` is the refusal
    /// reason sent to the client.
    ///
    /// `claimed` is the name from the client's hello; `None` for the first check, made from
    /// kernel facts alone before the server reads a byte from the client.
    fn check_client(&self, id: &PeerIdentity, claimed: Option<&str>) -> Result<&App, String> {
        let Some(exe) = &id.exe else {
            return Err(format!(
                "the executable of pid {} cannot be read (/proc/{}/exe); run the client as a \
                 user the server may inspect",
                id.pid, id.pid
            ));
        };
        let Some((app, _)) = self
            .clients
            .iter()
            .find(|(a, canon)| canon == exe && Some(a.name.as_str()) == claimed)
            .or_else(|| self.clients.iter().find(|(_, canon)| canon == exe))
        else {
            return Err(format!(
                "executable {} is not a registered client",
                exe.display()
            ));
        };
        if app.uid != id.uid {
            return Err(format!(
                "client '{}' runs as uid {}, but is registered to run as uid {}",
                app.name, id.uid, app.uid
            ));
        }
        if app.gid != id.gid {
            return Err(format!(
                "client '{}' runs as gid {}, but is registered to run as gid {}",
                app.name, id.gid, app.gid
            ));
        }
        if let Some(claimed) = claimed.filter(|c| *c != app.name) {
            return Err(format!(
                "the client calls itself '{claimed}', but runs the executable of '{}'",
                app.name
            ));
        }
        Ok(app)
    }

    fn handshake(&self, stream: UnixStream) -> Result<Session, Rejection> {
        let failed = Rejection::Failed;
        stream
            .set_nonblocking(false)
            .map_err(|e| failed(SessionError::io("fcntl", e)))?;
        let (identity, pidfd) = match auth::identify(stream.as_fd()) {
            Ok(id) => id,
            Err(IdentifyError::Gone) => return Err(failed(SessionError::PeerGone)),
            Err(IdentifyError::Os(op, e)) => return Err(failed(SessionError::os(op, e))),
        };
        let mut control = control_options().from_socket(OwnedFd::from(stream));
        let refuse = |control: &mut Channel, reason: String| {
            let _ = send_control(control, &ControlMessage::Refused { reason: &reason }, &[]);
            let _ = control.close();
            Rejection::Refused(format!(
                "pid {} uid {}: {reason}",
                identity.pid, identity.uid
            ))
        };
        // Kernel facts first: a process that is no registered client is refused before the
        // server reads anything from it (and so cannot hold the accept loop for a timeout).
        if let Err(reason) = self.check_client(&identity, None) {
            return Err(refuse(&mut control, reason));
        }
        let deadline = Instant::now() + self.options.handshake_timeout;
        let r = recv_control(&mut control, Some(deadline), "the handshake").map_err(failed)?;
        let (claimed, settings, init, metadata) = match wire::parse(&r.bytes, r.fds.len()) {
            Ok(ControlMessage::Hello {
                name,
                settings,
                init,
                metadata,
            }) => (name.to_owned(), settings, init, metadata.to_vec()),
            Ok(_) => return Err(failed(HandshakeError::Unexpected("expected hello").into())),
            Err(e) => return Err(failed(e.into())),
        };
        let app = match self.check_client(&identity, Some(&claimed)) {
            Ok(app) => app.clone(),
            Err(reason) => return Err(refuse(&mut control, reason)),
        };
        // The client's channels with its settings, but never larger rings than this server's
        // own setting (or 1 MiB) allows: the client does not choose how much memory we map.
        let mut client_settings = settings;
        client_settings.ring_capacity = client_settings
            .ring_capacity
            .min(self.options.settings.ring_capacity.max(1 << 20));
        let requested_options = settings_to_options(&client_settings);
        let app_arena = if self.options.app_arena_size > 0 {
            let mut arenas = self.app_arenas.lock().unwrap_or_else(|e| e.into_inner());
            match arenas.get(&app.name) {
                Some(a) => Some(a.clone()),
                None => {
                    let a = ShmArena::create_classic(self.options.app_arena_size)
                        .map_err(|e| failed(e.into()))?;
                    arenas.insert(app.name.clone(), a.clone());
                    Some(a)
                }
            }
        } else {
            None
        };
        let mut session = Session::offer(
            control,
            Offer {
                local_name: &self.app.app.name,
                requested: &init,
                requested_options: &requested_options,
                options: &self.options,
                peer_name: app.name,
                peer: Some(identity),
                peer_metadata: metadata,
                app_arena,
            },
        )
        .map_err(failed)?;
        session.set_peer_pidfd(pidfd);
        Ok(session)
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        // The lock is still held here (fields drop after this), so no new server has bound:
        // remove the socket, then the lock file (a server that opened it meanwhile sees, once it
        // gets the lock, that the path no longer names it, and takes a fresh one).
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}
