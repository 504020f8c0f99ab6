//! Sessions between real processes: init channels of every transport, channels opened from
//! either side, refusals (open, executable, uid), stale sockets, a second server, peer death on
//! either side, many sessions, a spawned child with session arenas.

mod session_util;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use flowipc::arena::{ArenaHandle, ShmArena};
use flowipc::channel::{Channel, TransportKind};
use flowipc::session::{PermissionLevel, Session, SessionError, SessionServer};
use session_util::*;

const T: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_secs(5);

/// Child roles, dispatched by the test that spawned the child.
fn child(role: &str) {
    let (dir, server_name) = child_env();
    let (server, client) = apps(&server_name);
    let opts = options(&dir);
    match role {
        "echo_init" => {
            let opts = opts
                .init_channel(TransportKind::Ring)
                .init_channel(TransportKind::Socket)
                .init_channel(TransportKind::Mq)
                .init_channel(TransportKind::Ring)
                .metadata(b"client-meta".to_vec());
            let mut s = Session::connect(&client, &server, &opts).expect("connect");
            assert_eq!(s.peer_metadata(), b"server-meta");
            let chans = s.take_init_channels();
            assert_eq!(chans.len(), 5, "4 asked for + 1 of the server's own");
            for mut c in chans {
                echo_once(&mut c);
            }
            s.wait_end(Some(T)).expect("server closes");
        }
        "open_both_ways" => {
            let mut s = Session::connect(&client, &server, &opts).expect("connect");
            // Open from the client side.
            let mut c = s
                .open_channel(TransportKind::Socket, b"from-client")
                .expect("open from client");
            c.send(b"hello server").unwrap();
            let m = c.recv_owned().unwrap();
            assert_eq!(m.bytes, b"hello client");
            // Accept one opened by the server.
            let req = s.accept_channel(Some(T)).expect("request from server");
            assert_eq!(req.metadata(), b"from-server");
            assert_eq!(req.kind(), TransportKind::Ring);
            let mut c2 = s.grant(req).unwrap();
            echo_once(&mut c2);
            // A request the server refuses.
            match s.open_channel(TransportKind::Mq, b"refuse-me") {
                Err(SessionError::OpenRefused { reason }) => assert!(reason.contains("not today")),
                other => panic!("expected a refusal, got {other:?}"),
            }
            s.close().unwrap();
        }
        "expect_refused" => match Session::connect(&client, &server, &opts) {
            Err(e @ SessionError::Refused { .. }) => {
                let msg = e.to_string();
                println!("refused as expected: {msg}");
                let want = std::env::var("WANT").unwrap();
                assert!(msg.contains(&want), "{msg:?} lacks {want:?}");
                assert!(msg.starts_with(&format!("server '{server_name}' refused: ")));
            }
            other => panic!("expected a refusal, got {other:?}"),
        },
        "hang" => {
            let opts = opts.init_channel(TransportKind::Ring);
            let s = Session::connect(&client, &server, &opts).expect("connect");
            println!("connected");
            std::thread::sleep(Duration::from_secs(30));
            drop(s);
        }
        "serve_forever" => {
            let srv = SessionServer::bind(&server, opts).expect("bind");
            println!("ready");
            std::io::stdout().flush().unwrap();
            let mut keep = Vec::new();
            while let Ok(s) = srv.accept_timeout(Some(Duration::from_secs(30))) {
                keep.push(s);
            }
        }
        "many_sequential" => {
            let n: usize = std::env::var("N").unwrap().parse().unwrap();
            for _ in 0..n {
                let s = Session::connect(&client, &server, &opts).expect("connect");
                s.close().unwrap();
            }
        }
        "one_and_wait" => {
            let opts = opts.init_channel(TransportKind::Socket);
            let mut s = Session::connect(&client, &server, &opts).expect("connect");
            let mut c = s.take_init_channels().pop().unwrap();
            echo_once(&mut c);
            s.wait_end(Some(T)).expect("server closes");
        }
        "die_mid_handshake" => {
            // Half a control message, then SIGKILL to ourselves: the server is mid-read.
            let mut raw = UnixStream::connect(dir.join(format!("{server_name}.sock"))).unwrap();
            raw.write_all(&[0x40, 0, 0, 0, 0, 0, 0, 0, b'F', b'I'])
                .unwrap();
            let me = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &me])
                .status();
            std::thread::sleep(Duration::from_secs(30));
        }
        "garbage_hello" => {
            // A well-framed message that is not a session hello, via a raw socket channel.
            let raw = UnixStream::connect(dir.join(format!("{server_name}.sock"))).unwrap();
            let mut c = flowipc::channel::ChannelOptions::new().from_socket(OwnedFd::from(raw));
            c.send(b"FIPS\x01\x63 not a hello").unwrap();
            let mut buf = Vec::new();
            // The server hangs up without a word.
            assert!(c.recv_timeout(&mut buf, T).is_err());
        }
        "read_app_handle" => {
            let opts = opts.init_channel(TransportKind::Socket);
            let mut s = Session::connect(&client, &server, &opts).expect("connect");
            assert!(s.app_arena().is_some(), "the server shares an app arena");
            let mut c = s.take_init_channels().pop().unwrap();
            let m = c.recv_owned().unwrap();
            let h = ArenaHandle::from_bytes(&m.bytes).unwrap();
            let bytes = s.view(&h).expect("view in the app arena").to_vec().unwrap();
            c.send(&bytes).unwrap();
            s.wait_end(Some(T)).expect("server closes");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Receives one message (with an optional socket fd), answers "echo:<msg>" and writes "fd-ok"
/// into the fd.
fn echo_once(c: &mut Channel) {
    let m = c.recv_owned().expect("recv");
    for fd in m.fds {
        let mut s = UnixStream::from(fd);
        s.write_all(b"fd-ok").unwrap();
    }
    let mut out = b"echo:".to_vec();
    out.extend_from_slice(&m.bytes);
    c.send(&out).expect("send");
}

/// Sends `msg` (with a socket fd where the transport carries fds) and checks the echo.
fn check_echo(c: &mut Channel, msg: &[u8]) {
    let with_fd = c.kind() != TransportKind::Mq;
    let (mine, theirs) = UnixStream::pair().unwrap();
    if with_fd {
        c.send_with_fds(msg, &[theirs.as_fd()]).unwrap();
    } else {
        c.send(msg).unwrap();
    }
    drop(theirs);
    let mut buf = Vec::new();
    c.recv_timeout(&mut buf, T).expect("echo");
    assert_eq!(buf, [b"echo:".as_slice(), msg].concat());
    if with_fd {
        let mut mine = mine;
        mine.set_read_timeout(Some(T)).unwrap();
        let mut got = String::new();
        mine.read_to_string(&mut got).unwrap();
        assert_eq!(got, "fd-ok");
    }
}

#[test]
fn init_channels_of_each_transport_carry_data_and_fds() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("init");
    let (server, _) = apps("init-srv");
    let opts = options(&dir)
        .metadata(b"server-meta".to_vec())
        .init_channel(TransportKind::Socket);
    let srv = SessionServer::bind(&server, opts).unwrap();
    let mut child = spawn_role(
        None,
        "init_channels_of_each_transport_carry_data_and_fds",
        "echo_init",
        &dir,
        "init-srv",
    );
    let mut s = srv.accept_timeout(Some(T)).expect("accept");
    assert_eq!(s.peer_name(), "test-client");
    assert_eq!(s.peer_metadata(), b"client-meta");
    let id = s.peer_identity().unwrap();
    assert_eq!(id.pid as u32, child.id());
    let mut chans = s.take_init_channels();
    let kinds: Vec<_> = chans.iter().map(Channel::kind).collect();
    assert_eq!(
        kinds,
        [
            TransportKind::Ring,
            TransportKind::Socket,
            TransportKind::Mq,
            TransportKind::Ring,
            TransportKind::Socket
        ]
    );
    for (i, c) in chans.iter_mut().enumerate() {
        check_echo(c, format!("msg {i}").as_bytes());
    }
    s.close().unwrap();
    assert!(wait_bounded(&mut child, T).success());
}

#[test]
fn channels_open_from_either_side_and_refusal_reaches_the_opener() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("open");
    let (server, _) = apps("open-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let mut child = spawn_role(
        None,
        "channels_open_from_either_side_and_refusal_reaches_the_opener",
        "open_both_ways",
        &dir,
        "open-srv",
    );
    let mut s = srv.accept_timeout(Some(T)).expect("accept");
    let req = s.accept_channel(Some(T)).expect("client's request");
    assert_eq!(req.metadata(), b"from-client");
    let mut c = s.grant(req).unwrap();
    assert_eq!(c.recv_owned().unwrap().bytes, b"hello server");
    c.send(b"hello client").unwrap();
    let mut c2 = s
        .open_channel(TransportKind::Ring, b"from-server")
        .expect("open from server");
    check_echo(&mut c2, b"ring opened by the server");
    // The handler form: judge the request, refuse it with a reason.
    let granted = s
        .handle_channel_request(Some(T), |req| {
            assert_eq!(req.metadata(), b"refuse-me");
            Err("not today".into())
        })
        .expect("second request");
    assert!(granted.is_none());
    // The client closes the session in an orderly way.
    s.wait_end(Some(T)).expect("orderly end");
    assert!(wait_bounded(&mut child, T).success());
}

#[test]
fn a_client_binary_at_another_path_is_refused_and_the_server_keeps_serving() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("exe");
    let (server, _) = apps("exe-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let copy_dir = fresh_dir("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy = copy_dir.join("impostor");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let test = "a_client_binary_at_another_path_is_refused_and_the_server_keeps_serving";
    let mut cmd = command(Some(&copy), test, "expect_refused", &dir, "exe-srv");
    cmd.env(
        "WANT",
        format!("executable {} is not a registered client", copy.display()),
    );
    let mut bad = cmd.spawn().unwrap();
    // The refused client does not become a session; accept gives up after its timeout.
    match srv.accept_timeout(Some(Duration::from_millis(1500))) {
        Err(SessionError::TimedOut(_)) => {}
        other => panic!("expected no session, got {other:?}"),
    }
    assert!(
        wait_bounded(&mut bad, T).success(),
        "the impostor saw the refusal"
    );
    // A good client is still served.
    let mut good = spawn_role(None, test, "one_and_wait", &dir, "exe-srv");
    let mut s = srv.accept_timeout(Some(T)).expect("accept the good client");
    check_echo(&mut s.take_init_channels()[0], b"after a refusal");
    drop(s);
    assert!(wait_bounded(&mut good, T).success());
    let _ = std::fs::remove_dir_all(&copy_dir);
}

#[test]
fn a_client_under_another_uid_is_refused() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    if flowipc_sys::session::geteuid() != 0 {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let dir = fresh_dir("uid");
    let (server, _) = apps("uid-srv");
    let server = server.permission(PermissionLevel::Unrestricted);
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let test = "a_client_under_another_uid_is_refused";
    let mut cmd = command(None, test, "expect_refused", &dir, "uid-srv");
    cmd.env(
        "WANT",
        "client 'test-client' runs as uid 65534, but is registered to run as uid 0",
    );
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let mut bad = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: uid 65534 may not execute the test binary");
            return;
        }
        Err(e) => panic!("spawn: {e}"),
    };
    match srv.accept_timeout(Some(Duration::from_millis(1500))) {
        Err(SessionError::TimedOut(_)) => {}
        other => panic!("expected no session, got {other:?}"),
    }
    assert!(
        wait_bounded(&mut bad, T).success(),
        "the client saw the uid refusal"
    );
}

#[test]
fn stale_socket_is_replaced_and_a_second_live_server_is_refused() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("stale");
    let (server, _) = apps("stale-srv");
    let test = "stale_socket_is_replaced_and_a_second_live_server_is_refused";
    let mut cmd = command(None, test, "serve_forever", &dir, "stale-srv");
    cmd.stdout(std::process::Stdio::piped());
    let mut live = cmd.spawn().unwrap();
    wait_for_line(&mut live, "ready");
    match SessionServer::bind(&server, options(&dir)) {
        Err(e @ SessionError::AlreadyRunning { .. }) => {
            assert!(e
                .to_string()
                .contains("another server 'stale-srv' is running"))
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    let sock = dir.join("stale-srv.sock");
    kill9(&mut live);
    assert!(sock.exists(), "the killed server left its socket behind");
    let srv = SessionServer::bind(&server, options(&dir)).expect("bind over a stale socket");
    assert_eq!(srv.path(), sock);
    // And it serves.
    let mut c = spawn_role(None, test, "one_and_wait", &dir, "stale-srv");
    let mut s = srv.accept_timeout(Some(T)).expect("accept");
    check_echo(&mut s.take_init_channels()[0], b"after the stale socket");
    drop(s);
    assert!(wait_bounded(&mut c, T).success());
    drop(srv);
    assert!(!sock.exists(), "a dropped server removes its socket");
}

/// Reads the child's stdout until `line` (bounded).
fn wait_for_line(child: &mut std::process::Child, line: &str) {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let line = line.to_owned();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if l.trim_end().ends_with(line.as_str()) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(T).expect("the child did not get ready");
}

#[test]
fn client_sigkill_gives_peer_gone_and_the_server_keeps_serving_without_fd_growth() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("kill-client");
    let (server, _) = apps("kc-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let test = "client_sigkill_gives_peer_gone_and_the_server_keeps_serving_without_fd_growth";
    // Warm up lazily created process-wide descriptors (the ring watcher) with one session.
    {
        let mut c = spawn_role(None, test, "one_and_wait", &dir, "kc-srv");
        let mut s = srv.accept_timeout(Some(T)).unwrap();
        check_echo(&mut s.take_init_channels()[0], b"warm-up");
        drop(s);
        assert!(wait_bounded(&mut c, T).success());
    }
    let baseline = open_fds();
    let mut victim = spawn_role(None, test, "hang", &dir, "kc-srv");
    let mut s = srv.accept_timeout(Some(T)).expect("accept");
    let mut ring = s.take_init_channels().pop().unwrap();
    kill9(&mut victim);
    let t0 = std::time::Instant::now();
    match s.accept_channel(Some(SHORT)) {
        Err(SessionError::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    let mut buf = Vec::new();
    assert!(matches!(
        ring.recv_timeout(&mut buf, SHORT),
        Err(flowipc::channel::RecvError::PeerGone)
    ));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "peer death noticed promptly"
    );
    drop(ring);
    drop(s);
    // A second client is served.
    let mut c = spawn_role(None, test, "one_and_wait", &dir, "kc-srv");
    let mut s = srv
        .accept_timeout(Some(T))
        .expect("accept the second client");
    check_echo(&mut s.take_init_channels()[0], b"second client");
    drop(s);
    assert!(wait_bounded(&mut c, T).success());
    assert_eq!(
        fds_settle(baseline),
        baseline,
        "descriptors back to baseline"
    );
}

#[test]
fn server_sigkill_gives_the_client_peer_gone() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("kill-server");
    let (server, client) = apps("ks-srv");
    let test = "server_sigkill_gives_the_client_peer_gone";
    let mut cmd = command(None, test, "serve_forever", &dir, "ks-srv");
    cmd.stdout(std::process::Stdio::piped());
    let mut srv = cmd.spawn().unwrap();
    wait_for_line(&mut srv, "ready");
    let opts = options(&dir).init_channel(TransportKind::Ring);
    let mut s = Session::connect(&client, &server, &opts).expect("connect");
    let mut ring = s.take_init_channels().pop().unwrap();
    kill9(&mut srv);
    match s.accept_channel(Some(SHORT)) {
        Err(SessionError::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    let mut buf = Vec::new();
    assert!(matches!(
        ring.recv_timeout(&mut buf, SHORT),
        Err(flowipc::channel::RecvError::PeerGone)
    ));
    // The client's later verbs keep failing cleanly.
    assert!(s.open_channel(TransportKind::Socket, b"").is_err());
}

/// This process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[test]
fn a_thousand_sequential_and_32_concurrent_sessions_without_fd_growth() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("many");
    let (server, _) = apps("many-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let test = "a_thousand_sequential_and_32_concurrent_sessions_without_fd_growth";
    let baseline = open_fds();
    let mut cmd = command(None, test, "many_sequential", &dir, "many-srv");
    cmd.env("N", "1000");
    let mut c = cmd.spawn().unwrap();
    let mut rss_at_100 = 0;
    for i in 0..1000 {
        let mut s = srv
            .accept_timeout(Some(T))
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        s.wait_end(Some(T)).unwrap();
        if i == 100 {
            rss_at_100 = resident_bytes();
        }
    }
    assert!(wait_bounded(&mut c, T).success());
    // Memory: the last 900 sessions may not grow the server (a leak of 4 KiB a session would
    // show as 3.5 MiB; allocator caches settle within the first hundred).
    let grown = resident_bytes().saturating_sub(rss_at_100);
    println!("resident growth over sessions 100..1000: {grown} bytes");
    assert!(
        grown < 2 << 20,
        "the server grew by {grown} bytes over 900 sessions"
    );
    assert_eq!(
        fds_settle(baseline),
        baseline,
        "no fd growth after 1000 sessions"
    );
    // 32 at once: all sessions live at the same time.
    let mut children: Vec<_> = (0..32)
        .map(|_| spawn_role(None, test, "one_and_wait", &dir, "many-srv"))
        .collect();
    let mut sessions = Vec::new();
    for _ in 0..32 {
        sessions.push(srv.accept_timeout(Some(T)).expect("accept"));
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        check_echo(
            &mut s.take_init_channels()[0],
            format!("concurrent {i}").as_bytes(),
        );
    }
    drop(sessions);
    for c in &mut children {
        assert!(wait_bounded(c, T).success());
    }
    assert_eq!(
        fds_settle(baseline),
        baseline,
        "no fd growth after 32 concurrent sessions"
    );
}

#[test]
fn a_spawned_child_gets_its_session_with_options_channels_and_arenas() {
    if std::env::var_os(flowipc::session::SESSION_FD_ENV).is_some() {
        return spawned_child();
    }
    if role().is_some() {
        return;
    }
    let _g = serial();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "a_spawned_child_gets_its_session_with_options_channels_and_arenas",
        "--nocapture",
        "--test-threads=1",
    ]);
    let opts = flowipc::session::SessionOptions::new()
        .init_channel(TransportKind::Ring)
        .init_channel(TransportKind::Socket)
        .metadata(b"parent-meta".to_vec())
        .ring_capacity(1 << 15)
        .arenas(1 << 20)
        .handshake_timeout(T);
    let (mut s, mut child) = Session::spawn(&mut cmd, &opts).expect("spawn");
    let mut chans = s.take_init_channels();
    assert_eq!(chans.len(), 2);
    check_echo(&mut chans[1], b"over the socket");
    // The child allocated in the classic arena and sends the handle over the ring.
    let m = chans[0].recv_owned().unwrap();
    let h = ArenaHandle::from_bytes(&m.bytes).unwrap();
    let obj = s.adopt(h).expect("adopt the child's arena object");
    assert_eq!(obj.to_vec().unwrap(), b"allocated by the child");
    // Lend an object of our pool to the child; it reads it through the session.
    let lent = s
        .lend_pool()
        .expect("lend pool")
        .alloc_bytes(b"lent by the parent")
        .unwrap();
    let h = s.lend(&lent).unwrap();
    chans[0].send(&h.to_bytes()).unwrap();
    // A handle of a pool from outside the session is rejected, here and in the child.
    let other = ShmArena::create_classic(1 << 20).unwrap();
    let foreign = other.alloc_bytes(b"elsewhere").unwrap();
    assert!(matches!(
        s.view(&foreign.handle()),
        Err(SessionError::ForeignHandle { .. })
    ));
    chans[0].send(&foreign.handle().to_bytes()).unwrap();
    let mut buf = Vec::new();
    chans[0].recv_timeout(&mut buf, T).unwrap();
    assert_eq!(buf, b"child done");
    assert!(wait_bounded(&mut child, T).success());
}

fn spawned_child() {
    let mut s = Session::from_env().expect("from_env");
    assert_eq!(s.peer_metadata(), b"parent-meta");
    let mut chans = s.take_init_channels();
    assert_eq!(chans[0].kind(), TransportKind::Ring);
    echo_once(&mut chans[1]);
    let obj = s
        .arena()
        .expect("classic arena")
        .alloc_bytes(b"allocated by the child")
        .unwrap();
    chans[0].send(&obj.into_handle().to_bytes()).unwrap();
    let m = chans[0].recv_owned().unwrap();
    let h = ArenaHandle::from_bytes(&m.bytes).unwrap();
    assert_eq!(s.view(&h).unwrap().to_vec().unwrap(), b"lent by the parent");
    let m = chans[0].recv_owned().unwrap();
    let foreign = ArenaHandle::from_bytes(&m.bytes).unwrap();
    assert!(matches!(
        s.view(&foreign),
        Err(SessionError::ForeignHandle { .. })
    ));
    chans[0].send(b"child done").unwrap();
}

#[test]
fn a_client_killed_or_lying_mid_handshake_leaves_the_server_serving_without_fd_growth() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("mid");
    let (server, _) = apps("mid-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let test = "a_client_killed_or_lying_mid_handshake_leaves_the_server_serving_without_fd_growth";
    let baseline = open_fds();
    for role in ["die_mid_handshake", "garbage_hello"] {
        let mut bad = spawn_role(None, test, role, &dir, "mid-srv");
        match srv.accept_timeout(Some(Duration::from_millis(1500))) {
            Err(SessionError::TimedOut(_)) => {}
            other => panic!("{role}: expected no session, got {other:?}"),
        }
        let st = wait_bounded(&mut bad, T);
        if role == "garbage_hello" {
            assert!(st.success(), "the lying client saw the hang-up");
        }
    }
    assert_eq!(
        fds_settle(baseline),
        baseline,
        "nothing kept from the failed handshakes"
    );
    let mut good = spawn_role(None, test, "one_and_wait", &dir, "mid-srv");
    let mut s = srv.accept_timeout(Some(T)).expect("accept");
    check_echo(
        &mut s.take_init_channels()[0],
        b"after the failed handshakes",
    );
    drop(s);
    assert!(wait_bounded(&mut good, T).success());
}

#[test]
fn the_app_arena_is_shared_by_all_sessions_of_one_client_app() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    let dir = fresh_dir("app");
    let (server, _) = apps("app-srv");
    let srv = SessionServer::bind(&server, options(&dir).app_arena(1 << 20)).unwrap();
    let test = "the_app_arena_is_shared_by_all_sessions_of_one_client_app";
    let mut pool_ids = Vec::new();
    let mut object = None;
    for i in 0..2 {
        let mut c = spawn_role(None, test, "read_app_handle", &dir, "app-srv");
        let mut s = srv.accept_timeout(Some(T)).expect("accept");
        let arena = srv
            .app_arena("test-client")
            .expect("app arena of test-client");
        assert_eq!(s.app_arena().unwrap().pool_id(), arena.pool_id());
        pool_ids.push(arena.pool_id());
        let obj = object.get_or_insert_with(|| arena.alloc_bytes(b"app-wide bytes").unwrap());
        let mut ch = s.take_init_channels().pop().unwrap();
        ch.send(&obj.handle().to_bytes()).unwrap();
        let mut buf = Vec::new();
        ch.recv_timeout(&mut buf, T).unwrap();
        assert_eq!(buf, b"app-wide bytes", "session {i} reads the app arena");
        drop(s);
        assert!(wait_bounded(&mut c, T).success());
    }
    assert_eq!(pool_ids[0], pool_ids[1], "one app arena for both sessions");
}

#[test]
fn a_squatter_at_the_servers_socket_is_not_trusted_and_modes_follow_the_permission_level() {
    if let Some(r) = role() {
        return child(&r);
    }
    let _g = serial();
    use std::os::unix::fs::PermissionsExt;
    let test =
        "a_squatter_at_the_servers_socket_is_not_trusted_and_modes_follow_the_permission_level";
    // Modes: 0750 / 0660 for the group level.
    let dir = fresh_dir("modes");
    let (server, client) = apps("mode-srv");
    let grp = server.clone().permission(PermissionLevel::Group);
    let srv = SessionServer::bind(&grp, options(&dir)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(mode(srv.path()), 0o660);
    drop(srv);
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    assert_eq!(
        mode(&dir),
        0o700,
        "rebinding at the user level tightens the directory"
    );
    assert_eq!(mode(srv.path()), 0o600);
    drop(srv);
    // A squatter: another executable serving under the server's name.
    let copy_dir = fresh_dir("squat-copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy = copy_dir.join("squatter");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let sq_dir = fresh_dir("squat");
    let mut cmd = command(Some(&copy), test, "serve_forever", &sq_dir, "mode-srv");
    cmd.stdout(std::process::Stdio::piped());
    let mut squatter = cmd.spawn().unwrap();
    wait_for_line(&mut squatter, "ready");
    match Session::connect(&client, &server, &options(&sq_dir)) {
        Err(e @ SessionError::UntrustedServer { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("squatter"), "{msg}");
        }
        other => panic!("expected UntrustedServer, got {other:?}"),
    }
    // A rendezvous directory others may write to is refused before connecting.
    std::fs::set_permissions(&sq_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    match Session::connect(&client, &server, &options(&sq_dir)) {
        Err(SessionError::UntrustedRendezvous { reason, .. }) => {
            assert!(reason.contains("777"), "{reason}")
        }
        other => panic!("expected UntrustedRendezvous, got {other:?}"),
    }
    kill9(&mut squatter);
    let _ = std::fs::remove_dir_all(&copy_dir);
}

#[test]
fn a_dropped_server_leaves_nothing_and_binds_race_safely() {
    if role().is_some() {
        return;
    }
    let dir = fresh_dir("lockfile");
    let (server, _) = apps("lock-srv");
    let srv = SessionServer::bind(&server, options(&dir)).unwrap();
    let names = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names(&dir).iter().any(|n| n == "lock-srv.lock"));
    drop(srv);
    assert_eq!(
        names(&dir),
        Vec::<String>::new(),
        "socket and lock file removed"
    );
    // Servers of one name bound and dropped by racing threads: never two at once, even while
    // lock files are removed and made again.
    let live = std::sync::atomic::AtomicUsize::new(0);
    let bound = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..300 {
                    match SessionServer::bind(&server, options(&dir)) {
                        Ok(srv) => {
                            let n = live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            assert_eq!(n, 0, "two servers of one name at once");
                            bound.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::yield_now();
                            live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            drop(srv);
                        }
                        Err(SessionError::AlreadyRunning { .. }) => std::thread::yield_now(),
                        Err(e) => panic!("bind: {e}"),
                    }
                }
            });
        }
    });
    assert!(bound.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(names(&dir), Vec::<String>::new());
}
