//! Request / response id sequences through a structured channel's router
//! (`flowipc::structured::fuzzing`): this side makes one- and multi-response requests, abandons
//! some (timeouts, dropped handles), takes responses; the peer sends valid frames (notifications,
//! requests, responses to any of our ids or to ids never used, reports) with increasing ids.
//!
//! Checked against a model (a map of waiting requests, a set of abandoned ones): every response
//! lands exactly where the model says (the waiting request; late and counted; unexpected,
//! counted and queued as a report), one-response requests get exactly one, multi-response
//! requests get all of theirs in order, the counters match, and queued messages are accounted.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};

use arbitrary::Arbitrary;
use flowipc::structured::fuzzing::{encode_frame, frame_body, Fed, FuzzReceiver};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Request {
        multi: bool,
    },
    Abandon(u8),
    /// The peer answers one of our requests (by index; beyond them: an id never used).
    Respond {
        to: u8,
        stale: bool,
    },
    /// The peer sends an unsolicited message.
    Unsolicited {
        request: bool,
    },
    /// The peer reports one of our responses as unexpected.
    Report(u64),
    /// The peer skips ids (ids need to increase, not to be consecutive).
    SkipIds(u16),
    /// This side takes what is queued for request `i`, or the inbox.
    Take(u8),
    TakeInbox,
}

#[derive(Default)]
struct Model {
    /// Waiting requests: id -> (multi, responses queued (their peer ids), answered).
    pending: HashMap<u64, (bool, VecDeque<u64>)>,
    abandoned: HashSet<u64>,
    requests: Vec<u64>,
    inbox: VecDeque<u64>,
    late: u64,
    unexpected: u64,
    reported: u64,
    next_ours: u64,
    next_peer: u64,
}

fn body(tag: u64) -> Vec<u8> {
    frame_body(|m| {
        let mut list = m.initn_root::<capnp::primitive_list::Builder<'_, u64>>(1);
        list.set(0, tag);
    })
}

fn tag_of(msg: &flowipc::MsgIn<capnp::any_pointer::Owned>) -> u64 {
    let root = msg.body_root().unwrap();
    root.get_as::<capnp::primitive_list::Reader<'_, u64>>()
        .unwrap()
        .get(0)
}

fuzz_target!(|ops: Vec<Op>| {
    let mut rx = FuzzReceiver::new(1 << 16, 8, 64);
    let mut m = Model {
        next_ours: 1,
        next_peer: 1,
        ..Model::default()
    };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Request { multi } => {
                let id = m.next_ours;
                m.next_ours += 1;
                rx.register_request(id, multi).unwrap();
                m.pending.insert(id, (multi, VecDeque::new()));
                m.requests.push(id);
            }
            Op::Abandon(i) => {
                let Some(&id) = m.requests.get(usize::from(i) % m.requests.len().max(1)) else {
                    continue;
                };
                rx.abandon(id);
                if m.pending.remove(&id).is_some() {
                    m.abandoned.insert(id);
                }
            }
            Op::SkipIds(n) => m.next_peer += u64::from(n),
            Op::Respond { to, stale } => {
                let to = match m.requests.get(usize::from(to)) {
                    Some(&id) => id,
                    // An id this side never used (or, when `stale`, id 0 is not allowed, so
                    // one far beyond).
                    None if stale => u64::MAX - u64::from(to),
                    None => m.next_ours + u64::from(to),
                };
                let id = m.next_peer;
                m.next_peer += 1;
                let fed = rx.feed(encode_frame(id, to, 2, 0, Some(&body(id))), Vec::new());
                assert_eq!(fed, Fed::Routed);
                match m.pending.get_mut(&to) {
                    Some((true, q)) => q.push_back(id),
                    Some((false, q)) if q.is_empty() => q.push_back(id),
                    _ if m.abandoned.contains(&to) => m.late += 1,
                    _ => m.unexpected += 1,
                }
            }
            Op::Unsolicited { request } => {
                let id = m.next_peer;
                m.next_peer += 1;
                let kind = if request { 1 } else { 0 };
                let fed = rx.feed(encode_frame(id, 0, kind, 0, Some(&body(id))), Vec::new());
                assert_eq!(fed, Fed::Routed);
                m.inbox.push_back(id);
            }
            Op::Report(of) => {
                let id = m.next_peer;
                m.next_peer += 1;
                let fed = rx.feed(encode_frame(id, of.max(1), 3, 0, None), Vec::new());
                assert_eq!(fed, Fed::Routed);
                m.reported += 1;
            }
            Op::TakeInbox => {
                let got = rx.take_inbox();
                match m.inbox.pop_front() {
                    Some(id) => {
                        let msg = got.unwrap().unwrap();
                        assert_eq!((msg.id(), tag_of(&msg)), (id, id));
                    }
                    None => assert!(got.is_none()),
                }
            }
            Op::Take(i) => {
                let Some(&id) = m.requests.get(usize::from(i) % m.requests.len().max(1)) else {
                    continue;
                };
                match m.pending.get_mut(&id) {
                    Some((multi, q)) => {
                        let multi = *multi;
                        let got = if multi {
                            rx.take_multi(id)
                        } else {
                            rx.take_one(id)
                        };
                        match q.pop_front() {
                            Some(resp) => {
                                let msg = got.unwrap().unwrap();
                                assert_eq!(msg.originating_id(), Some(id));
                                assert_eq!((msg.id(), tag_of(&msg)), (resp, resp));
                                if !multi {
                                    // Taken: no longer waiting; a second response is unexpected.
                                    m.pending.remove(&id);
                                }
                            }
                            None => assert!(got.is_none()),
                        }
                    }
                    None => {
                        // Abandoned or answered and taken: nothing waits under that id.
                        assert!(!rx.is_pending(id));
                    }
                }
            }
        }
        let stats = rx.stats();
        assert_eq!(stats.late_responses, m.late);
        assert_eq!(stats.unexpected_responses, m.unexpected);
        assert_eq!(stats.reported_by_peer, m.reported);
        assert_eq!(rx.reports().len() as u64, m.unexpected.min(1024));
        let multi_queued: usize = m
            .pending
            .values()
            .filter(|(multi, _)| *multi)
            .map(|(_, q)| q.len())
            .sum();
        assert_eq!(rx.queued(), m.inbox.len() + multi_queued);
    }
});
