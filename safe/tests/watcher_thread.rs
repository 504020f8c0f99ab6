//! The peer watcher's thread does not outlive the last channel that needs it: dropping the last
//! watched ring side joins it (a detached thread still exiting at process exit shows up as a
//! leak under LeakSanitizer, as it did in the `channel_ring_frames` fuzz target). Alone in its
//! binary, so that no other test holds a watch meanwhile.

use std::time::{Duration, Instant};

use flowipc::channel::Channel;

/// Threads of this process named like the watcher (`comm` keeps 15 bytes).
fn watcher_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("flowipc-peer-wa"))
        .count()
}

#[test]
fn last_watch_joins_the_watcher_thread() {
    for round in 0..20 {
        let (mut a, mut b) = Channel::ring_pair().unwrap();
        a.send(b"x").unwrap();
        let mut buf = Vec::new();
        b.recv(&mut buf).unwrap();
        // The thread names itself once it runs.
        let t0 = Instant::now();
        while watcher_threads() != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "round {round}: no watcher thread while watched"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop((a, b));
        // Joined by the drop itself: gone the moment the drop returns.
        assert_eq!(
            watcher_threads(),
            0,
            "round {round}: the watcher thread outlived the last watch"
        );
    }
}
