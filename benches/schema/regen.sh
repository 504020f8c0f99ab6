#!/usr/bin/env bash
# Regenerates the checked-in Rust for the Cap'n Proto schema in this folder (perf_demo_capnp.rs)
# with capnpc 0.27 as a library, as safe/schema/regen.sh does for safe's schemas. Needs the `capnp`
# tool (Debian: capnproto). CI runs this and fails if the result differs from what is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v capnp >/dev/null || { echo "regen.sh: the capnp tool is missing (apt-get install -y capnproto)" >&2; exit 1; }
cargo test --release -p flowipc-benches --test perf_demo_regen -- --ignored --exact regenerate_capnp --nocapture
