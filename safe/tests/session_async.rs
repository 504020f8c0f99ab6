//! The tokio face of sessions between real processes: async accept and connect, init channels
//! as `AsyncChannel`s, channels opened from either side with `.await`, peer death.

#![cfg(feature = "tokio")]

mod session_util;

use std::time::Duration;

use flowipc::channel::TransportKind;
use flowipc::session::{AsyncSession, AsyncSessionServer, SessionError};
use session_util::*;

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn async_client() {
    let (dir, server_name) = child_env();
    let (server, client) = apps(&server_name);
    let opts = options(&dir).init_channel(TransportKind::Ring);
    rt().block_on(async {
        let mut s = tokio::time::timeout(T, AsyncSession::connect(&client, &server, &opts))
            .await
            .unwrap()
            .expect("connect");
        let mut init = s.take_init_channels().unwrap();
        let m = init[0].recv_owned().await.unwrap();
        assert_eq!(m.bytes, b"over the init ring");
        init[0].send(b"init ring back").await.unwrap();
        let mut c = s
            .open_channel(TransportKind::Socket, b"async-from-client")
            .await
            .expect("open");
        c.send(b"hello over an opened channel").await.unwrap();
        let req = tokio::time::timeout(T, s.accept_channel())
            .await
            .unwrap()
            .expect("request from the server");
        assert_eq!(req.metadata(), b"async-from-server");
        let mut c2 = s.grant(req).unwrap();
        let m = c2.recv_owned().await.unwrap();
        c2.send(&m.bytes).await.unwrap();
        match tokio::time::timeout(T, s.wait_end()).await.unwrap() {
            Ok(()) => {}
            other => panic!("expected an orderly end, got {other:?}"),
        }
    });
}

#[test]
fn async_sessions_between_processes() {
    if role().is_some() {
        return async_client();
    }
    let _g = serial();
    let dir = fresh_dir("async");
    let (server, _) = apps("async-srv");
    rt().block_on(async {
        let srv = AsyncSessionServer::bind(&server, options(&dir)).unwrap();
        let mut child = spawn_role(
            None,
            "async_sessions_between_processes",
            "client",
            &dir,
            "async-srv",
        );
        let mut s = tokio::time::timeout(T, srv.accept())
            .await
            .unwrap()
            .expect("accept");
        let mut init = s.take_init_channels().unwrap();
        assert_eq!(init.len(), 1);
        init[0].send(b"over the init ring").await.unwrap();
        assert_eq!(init[0].recv_owned().await.unwrap().bytes, b"init ring back");
        let req = tokio::time::timeout(T, s.accept_channel())
            .await
            .unwrap()
            .expect("request");
        assert_eq!(req.metadata(), b"async-from-client");
        let mut c = s.grant(req).unwrap();
        assert_eq!(
            c.recv_owned().await.unwrap().bytes,
            b"hello over an opened channel"
        );
        let mut c2 =
            tokio::time::timeout(T, s.open_channel(TransportKind::Ring, b"async-from-server"))
                .await
                .unwrap()
                .expect("open from the server");
        c2.send(b"ping").await.unwrap();
        assert_eq!(c2.recv_owned().await.unwrap().bytes, b"ping");
        s.close().unwrap();
        assert!(wait_bounded(&mut child, T).success());
    });
}

#[test]
fn async_session_sees_peer_death() {
    if role().is_some() {
        let (dir, server_name) = child_env();
        let (server, client) = apps(&server_name);
        let _s = flowipc::session::Session::connect(&client, &server, &options(&dir)).unwrap();
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let _g = serial();
    let dir = fresh_dir("async-death");
    let (server, _) = apps("async-death-srv");
    rt().block_on(async {
        let srv = AsyncSessionServer::bind(&server, options(&dir)).unwrap();
        let mut child = spawn_role(
            None,
            "async_session_sees_peer_death",
            "client",
            &dir,
            "async-death-srv",
        );
        let mut s = tokio::time::timeout(T, srv.accept())
            .await
            .unwrap()
            .expect("accept");
        kill9(&mut child);
        match tokio::time::timeout(Duration::from_secs(2), s.accept_channel()).await {
            Ok(Err(SessionError::PeerGone)) => {}
            other => panic!("expected PeerGone promptly, got {other:?}"),
        }
    });
}

#[test]
fn async_spawned_child_session() {
    if std::env::var_os(flowipc::session::SESSION_FD_ENV).is_some() {
        return rt().block_on(async {
            let mut s = AsyncSession::from_env().expect("from_env");
            let mut init = s.take_init_channels().unwrap();
            let m = init[0].recv_owned().await.unwrap();
            init[0].send(&m.bytes).await.unwrap();
            let req = tokio::time::timeout(T, s.accept_channel())
                .await
                .unwrap()
                .unwrap();
            let mut c = s.grant(req).unwrap();
            c.send(b"opened by the parent").await.unwrap();
            s.wait_end().await.unwrap();
        });
    }
    if role().is_some() {
        return;
    }
    let _g = serial();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "async_spawned_child_session",
        "--nocapture",
        "--test-threads=1",
    ]);
    let opts = flowipc::session::SessionOptions::new()
        .init_channel(TransportKind::Mq)
        .handshake_timeout(T);
    rt().block_on(async {
        let (mut s, mut child) = AsyncSession::spawn(cmd, &opts).await.expect("spawn");
        let mut init = s.take_init_channels().unwrap();
        init[0].send(b"over mq").await.unwrap();
        assert_eq!(init[0].recv_owned().await.unwrap().bytes, b"over mq");
        let mut c = tokio::time::timeout(T, s.open_channel(TransportKind::Socket, b""))
            .await
            .unwrap()
            .expect("open");
        assert_eq!(c.recv_owned().await.unwrap().bytes, b"opened by the parent");
        s.close().unwrap();
        assert!(wait_bounded(&mut child, T).success());
    });
}

/// A child spawned with `tokio::process`, whose channel requests the parent takes as a stream
/// until the child ends the session.
#[test]
fn tokio_spawned_child_and_a_stream_of_channel_requests() {
    if std::env::var_os(flowipc::session::SESSION_FD_ENV).is_some() {
        return rt().block_on(async {
            let mut s = AsyncSession::from_env().expect("from_env");
            for (i, kind) in [
                TransportKind::Ring,
                TransportKind::Socket,
                TransportKind::Mq,
            ]
            .into_iter()
            .enumerate()
            {
                let name = format!("request {i}");
                match tokio::time::timeout(T, s.open_channel(kind, name.as_bytes()))
                    .await
                    .unwrap()
                {
                    Ok(mut c) => {
                        c.send(name.as_bytes()).await.unwrap();
                    }
                    Err(SessionError::OpenRefused { reason }) => {
                        assert_eq!(i, 1, "only the socket request is refused");
                        assert!(reason.contains("no sockets"));
                    }
                    Err(e) => panic!("open {i}: {e}"),
                }
            }
            s.close().unwrap();
        });
    }
    if role().is_some() {
        return;
    }
    let _g = serial();
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "tokio_spawned_child_and_a_stream_of_channel_requests",
        "--nocapture",
        "--test-threads=1",
    ]);
    let opts = flowipc::session::SessionOptions::new().handshake_timeout(T);
    rt().block_on(async {
        let (mut s, mut child) = AsyncSession::spawn_tokio(cmd, &opts).await.expect("spawn");
        let mut requests = s.channel_requests();
        let mut got = Vec::new();
        while let Some(req) = tokio::time::timeout(T, requests.next()).await.unwrap() {
            let req = req.expect("a request");
            if req.kind() == TransportKind::Socket {
                requests.refuse(req, "no sockets today").unwrap();
                continue;
            }
            let want = req.metadata().to_vec();
            let mut c = requests.grant(req).unwrap();
            let m = tokio::time::timeout(T, c.recv_owned())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.bytes, want);
            got.push(String::from_utf8(want).unwrap());
        }
        assert_eq!(got, ["request 0", "request 2"]);
        // The stream ended with the session; the child exits on its own.
        let status = tokio::time::timeout(T, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    });
}
