//! Hostile frames for a structured channel's receiver: arbitrary bytes, and frames built from
//! arbitrary envelope fields around arbitrary or valid capnp bodies, with descriptors, fed to the
//! decoder and router a structured channel's reader runs (`flowipc::structured::fuzzing`).
//!
//! Checked against a model: a frame built from fields is accepted exactly when the model says
//! it is valid (nonzero, increasing id; originating id present exactly for responses; descriptor
//! count as announced; a valid body for messages, none for reports), and then lands where the
//! model says (inbox, the waiting request, late, unexpected + a report, reported-by-peer); raw
//! bytes may do anything but panic; after the first corrupt frame the channel stays ended. Every
//! received body is walked in full (`target_size`), which must stop at the traversal and nesting
//! limits, never hang or panic.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use arbitrary::Arbitrary;
use flowipc::structured::fuzzing::{encode_frame, frame_body, Fed, FuzzReceiver};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    /// Words as they come: a segment table and segments of anything.
    Raw(Vec<u64>),
    /// A valid message: a list of up to 15 texts.
    Built {
        texts: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Raw {
        bytes: Vec<u8>,
        nfds: u8,
    },
    Frame {
        id_step: i8,
        originating: Origin,
        kind: u8,
        fd_claim: u8,
        nfds: u8,
        body: Body,
    },
    /// This side sends a request (registered before any response can come).
    Request {
        multi: bool,
    },
    /// This side gives up on one of its requests.
    Abandon(u8),
    /// This side takes what is queued.
    Drain,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Origin {
    Zero,
    /// One of this side's requests (by index).
    Ours(u8),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    traversal_words: u16,
    nesting: u8,
    ops: Vec<Op>,
}

fn fds(n: u8) -> Vec<OwnedFd> {
    (0..n % 4)
        .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
        .collect()
}

fn body_bytes(body: &Body) -> (Option<Vec<u8>>, bool) {
    match body {
        Body::None => (None, false),
        Body::Raw(words) => (
            Some(words.iter().flat_map(|w| w.to_le_bytes()).collect()),
            false,
        ),
        Body::Built { texts } => {
            let bytes = frame_body(|m| {
                let mut list =
                    m.initn_root::<capnp::text_list::Builder<'_>>(u32::from(*texts % 16));
                for i in 0..list.len() {
                    list.set(i, "hostile?");
                }
            });
            (Some(bytes), true)
        }
    }
}

#[derive(Default)]
struct Model {
    /// A raw frame was accepted: from here on only the invariants are checked.
    unpredictable: bool,
    last_id: u64,
    ended: bool,
    /// Our requests: id -> multi; and which one-response requests already got theirs.
    pending: HashMap<u64, bool>,
    answered: HashSet<u64>,
    abandoned: HashSet<u64>,
    requests: Vec<u64>,
    next_ours: u64,
}

fuzz_target!(|input: Input| {
    let mut rx = FuzzReceiver::new(
        usize::from(input.traversal_words),
        8,
        i32::from(input.nesting % 80),
    );
    let mut m = Model {
        next_ours: 1,
        ..Model::default()
    };
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Request { multi } => {
                let id = m.next_ours;
                m.next_ours += 1;
                let reg = rx.register_request(id, multi);
                assert_eq!(reg.is_ok(), !m.ended);
                if reg.is_ok() {
                    m.pending.insert(id, multi);
                    m.requests.push(id);
                }
            }
            Op::Abandon(i) => {
                if let Some(&id) = m.requests.get(usize::from(i) % m.requests.len().max(1)) {
                    rx.abandon(id);
                    if m.pending.remove(&id).is_some() {
                        m.abandoned.insert(id);
                    }
                    assert!(!rx.is_pending(id));
                }
            }
            Op::Drain => {
                while let Some(msg) = rx.take_inbox() {
                    match msg {
                        Ok(msg) => {
                            if let Ok(root) = msg.body_root() {
                                let _ = root.target_size();
                            }
                        }
                        Err(_) => {
                            assert!(m.ended);
                            break;
                        }
                    }
                }
                for (&id, &multi) in m.pending.clone().iter() {
                    let got = if multi {
                        rx.take_multi(id)
                    } else {
                        rx.take_one(id)
                    };
                    if let Some(Ok(msg)) = got {
                        if let Ok(root) = msg.body_root() {
                            let _ = root.target_size();
                        }
                        if !multi {
                            m.pending.remove(&id);
                            m.answered.insert(id);
                        }
                    }
                }
            }
            Op::Raw { bytes, nfds } => match rx.feed(bytes, fds(nfds)) {
                Fed::Ended => assert!(m.ended),
                Fed::Corrupt(_) => m.ended = true,
                Fed::Routed => m.unpredictable = true,
            },
            Op::Frame {
                id_step,
                originating,
                kind,
                fd_claim,
                nfds,
                body,
            } => {
                let id = m.last_id.wrapping_add(id_step as i64 as u64);
                let orig = match originating {
                    Origin::Zero => 0,
                    Origin::Ours(i) => m
                        .requests
                        .get(usize::from(i) % m.requests.len().max(1))
                        .copied()
                        .unwrap_or(0),
                    Origin::Any(x) => x,
                };
                let kind = kind % 4;
                let nfds = nfds % 4;
                let fd_claim = fd_claim % 5;
                let (body, body_valid) = body_bytes(&body);
                let frame = encode_frame(id, orig, kind, u16::from(fd_claim), body.as_deref());
                let before = rx.stats();
                let queued = rx.queued();
                let fed = rx.feed(frame, fds(nfds));
                if m.ended {
                    assert_eq!(fed, Fed::Ended);
                    continue;
                }
                let fields_ok = id != 0 && fd_claim == nfds && ((kind >= 2) == (orig != 0));
                let envelope_ok = fields_ok && (m.unpredictable || id > m.last_id);
                let body_ok = if kind == 3 {
                    body.as_ref().is_none_or(|b| b.is_empty()) && nfds == 0
                } else {
                    body_valid
                };
                match &fed {
                    Fed::Corrupt(_) => {
                        m.ended = true;
                        assert!(
                            m.unpredictable || !(envelope_ok && body_ok),
                            "a valid frame was rejected: {fed:?}"
                        );
                    }
                    Fed::Ended => unreachable!("not ended"),
                    Fed::Routed => {
                        assert!(fields_ok, "an invalid envelope was accepted");
                        if kind == 3 {
                            assert!(body_ok);
                        }
                        if m.unpredictable {
                            continue;
                        }
                        assert!(id > m.last_id, "an id out of order was accepted");
                        m.last_id = id;
                        let after = rx.stats();
                        assert_eq!(after.received, before.received + 1);
                        match kind {
                            0 | 1 => assert_eq!(rx.queued(), queued + 1),
                            3 => assert_eq!(after.reported_by_peer, before.reported_by_peer + 1),
                            _ => match m.pending.get(&orig) {
                                Some(true) => assert_eq!(rx.queued(), queued + 1),
                                Some(false) if !m.answered.contains(&orig) => {
                                    m.answered.insert(orig);
                                    assert!(rx.is_pending(orig));
                                }
                                _ if m.abandoned.contains(&orig) => {
                                    assert_eq!(after.late_responses, before.late_responses + 1)
                                }
                                _ => assert_eq!(
                                    after.unexpected_responses,
                                    before.unexpected_responses + 1
                                ),
                            },
                        }
                    }
                }
            }
        }
    }
});
