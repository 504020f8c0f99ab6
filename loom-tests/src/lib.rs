//! loom models of the lock-free protocols in `flowipc-core`.
//!
//! The models live in `tests/`, one file per structure, and compile only under `--cfg flowipc_loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg flowipc_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p flowipc-loom-tests --release --target-dir target-loom
//! ```
//!
//! A model that explores a single execution, or never reaches the branch it is about, checks
//! nothing. `explore` runs a model and counts its executions, and a `Tally` counts which
//! outcome each execution ended with, so a model can assert that every interesting outcome
//! happened in some execution. Run with `-- --nocapture` to see the counts.

#[cfg(flowipc_loom)]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(flowipc_loom)]
use std::sync::Arc;

/// Runs `f` under `loom::model`, prints how many executions loom explored, asserts that it
/// explored more than one, and returns the count.
#[cfg(flowipc_loom)]
pub fn explore<F>(name: &str, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    // A `std` atomic, outside loom's view: it survives from one execution to the next.
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    loom::model(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let n = runs.load(Ordering::Relaxed);
    eprintln!("loom model {name}: {n} executions");
    assert!(
        n > 1,
        "{name}: loom explored {n} execution(s); the model races nothing"
    );
    n
}

/// How many executions of a model ended with each of a fixed set of outcomes.
#[cfg(flowipc_loom)]
pub struct Tally {
    names: &'static [&'static str],
    counts: Vec<AtomicUsize>,
}

#[cfg(flowipc_loom)]
impl Tally {
    /// A tally of the outcomes `names` (index `i` is `names[i]`), all at zero.
    pub fn new(names: &'static [&'static str]) -> Arc<Tally> {
        Arc::new(Tally {
            names,
            counts: names.iter().map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// Records one execution that ended with outcome `i`.
    pub fn hit(&self, i: usize) {
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Prints the counts and asserts that every outcome happened at least once, and that the
    /// outcomes add up to the `executions` the model ran.
    pub fn assert_all_seen(&self, model: &str, executions: usize) {
        let counts: Vec<usize> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        for (name, n) in self.names.iter().zip(&counts) {
            eprintln!("loom model {model}: {n} x {name}");
        }
        for (name, &n) in self.names.iter().zip(&counts) {
            assert!(n > 0, "{model}: no execution reached \"{name}\"");
        }
        assert_eq!(
            counts.iter().sum::<usize>(),
            executions,
            "{model}: an execution recorded no outcome or several"
        );
    }
}
