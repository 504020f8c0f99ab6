//! The server process (`perf_demo __server`): takes the session its client spawned it with, pins
//! itself as the client's setup says, and serves each mode's init channel in a thread of its own
//! until the client goes away ([`End::serve`](crate::modes::End::serve)).

use flowipc::session::Session;

use crate::harness;
use crate::modes::{self, ServerSetup};

/// Runs the server; returns when the client has closed every channel.
pub fn run() -> Result<(), String> {
    // A server whose client died must not linger (it may hold a 1 GiB response).
    flowipc_sys::process::set_parent_death_kill().map_err(|e| e.to_string())?;
    let mut session = Session::from_env().map_err(|e| e.to_string())?;
    let setup: ServerSetup = serde_json::from_slice(session.peer_metadata())
        .map_err(|e| format!("the client's setup: {e}"))?;
    // Threads started below inherit the pinning.
    harness::pin(setup.cpu).map_err(|e| format!("pinning to CPU {}: {e}", setup.cpu))?;
    let channels = session.take_init_channels();
    if channels.len() != setup.modes.len() {
        return Err(format!(
            "{} init channels for {} modes",
            channels.len(),
            setup.modes.len()
        ));
    }
    let mut ends = Vec::new();
    for (&mode, channel) in setup.modes.iter().zip(channels) {
        ends.push(modes::open_end(
            mode,
            modes::Side::Server,
            channel,
            &session,
            &setup,
        )?);
    }
    let max_file = setup.max_file;
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let threads: Vec<_> = ends
            .into_iter()
            .map(|end| s.spawn(move || end.serve(max_file)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a server thread panicked".into()))
            })
            .collect()
    });
    drop(session);
    results.into_iter().collect()
}
