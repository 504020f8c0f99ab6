//! loom models of the lock-free protocols in `flowipc-core`.
//!
//! The models live in `tests/`, one file per structure, and compile only under `--cfg flowipc_loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg flowipc_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p flowipc-loom-tests --release --target-dir target-loom
//! ```
