//! The rendezvous directory: where it is, how the server creates it, how a client checks it.
//!
//! `$XDG_RUNTIME_DIR/flowipc/` when this process runs as the server's uid and has a runtime
//! directory, else `/tmp/flowipc-<server uid>/`. A client of another uid therefore looks in
//! `/tmp/flowipc-<uid>/`; a server whose clients run as other users should set
//! [`SessionOptions::rendezvous_dir`] on both sides (or run without `XDG_RUNTIME_DIR`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{ServerApp, SessionError, SessionOptions};

pub(super) fn dir(server: &ServerApp, options: &SessionOptions) -> PathBuf {
    if let Some(d) = &options.rendezvous_dir {
        return d.clone();
    }
    if flowipc_sys::session::geteuid() == server.app.uid {
        if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
            return PathBuf::from(xdg).join("flowipc");
        }
    }
    PathBuf::from(format!("/tmp/flowipc-{}", server.app.uid))
}

/// Creates (or takes over) the directory for a server running as this process's user, with the
/// permission level's mode.
pub(super) fn prepare_server_dir(dir: &Path, server: &ServerApp) -> Result<(), SessionError> {
    let mode = server.permission.dir_mode();
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(SessionError::io(
                format!("creating rendezvous directory {}", dir.display()),
                e,
            ))
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| {
        SessionError::io(
            format!("inspecting rendezvous directory {}", dir.display()),
            e,
        )
    })?;
    let me = flowipc_sys::session::geteuid();
    if !meta.is_dir() {
        return Err(untrusted(
            dir,
            "it is not a directory (a symlink or a file)".into(),
        ));
    }
    if meta.uid() != me {
        return Err(untrusted(
            dir,
            format!(
                "it belongs to uid {}, not to this server's uid {me}; remove it or choose \
                 another rendezvous directory",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| SessionError::io(format!("setting the mode of {}", dir.display()), e))?;
    }
    Ok(())
}

/// Opens (creating it if needed) the lock file at `path`.
pub(super) fn open_lock(path: &Path) -> Result<File, SessionError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(0o400_000) // O_NOFOLLOW
        .open(path)
        .map_err(|e| SessionError::io(format!("opening lock file {}", path.display()), e))
}

/// A client's check of the directory before it trusts the socket in it: a real directory, owned
/// by the server's uid, that no one else can write to.
pub(super) fn check_client_dir(dir: &Path, server: &ServerApp) -> Result<(), SessionError> {
    let meta = fs::symlink_metadata(dir).map_err(|_| SessionError::ServerNotRunning {
        server: server.app.name.clone(),
        path: dir.join(format!("{}.sock", server.app.name)),
    })?;
    if !meta.is_dir() {
        return Err(untrusted(
            dir,
            "it is not a directory (a symlink or a file)".into(),
        ));
    }
    if meta.uid() != server.app.uid {
        return Err(untrusted(
            dir,
            format!(
                "it belongs to uid {}, but server '{}' runs as uid {}",
                meta.uid(),
                server.app.name,
                server.app.uid
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            dir,
            format!(
                "its mode {:o} lets others than its owner create files in it",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn untrusted(dir: &Path, reason: String) -> SessionError {
    SessionError::UntrustedRendezvous {
        path: dir.to_path_buf(),
        reason,
    }
}
