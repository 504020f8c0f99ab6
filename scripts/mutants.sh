#!/usr/bin/env bash
# Mutation testing with cargo-mutants (not run in CI). Two sets:
#
#   scripts/mutants.sh core   # every function of flowipc-core; core's unit tests (about 60 min on 2 cores)
#   scripts/mutants.sh safe   # the flowipc functions that parse what a peer wrote (scripts/mutants-safe.re),
#                             # against the unit tests and the hostile-peer integration tests, in
#                             # two passes (see below)
#   scripts/mutants.sh ring   # only the ring's checks (about 15 min)
#
# Survivors are listed in $OUT/mutants.out/missed.txt (OUT defaults to target/mutants-<set>).
# Install the tool with `cargo install cargo-mutants --locked`.
#
# Core's threaded tests are skipped (28 s in a debug build, against 3 s for the rest):
# cargo-mutants does not mutate memory orderings, which are what they check (loom and miri do).
# safe's run skips the 100,000-message leak test (7 s; the smaller tests see the same checks).
# Debug and Display impls are not mutated. --gitignore=true keeps other target directories out of
# cargo-mutants' copy of the tree.
set -euo pipefail
cd "$(dirname "$0")/.."

SET=${1:-core}
OUT=${OUT:-target/mutants-$SET}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
common=(--gitignore=true -j "$JOBS" --no-shuffle -o "$OUT" -E 'fmt::Result|Debug|Display')

case "$SET" in
core)
    cargo mutants -p flowipc-core "${common[@]}" --timeout 60 -- --lib -- --skip threaded
    ;;
ring)
    RE='Consumer::locate|Consumer::refresh_tail|Producer::reserve|Producer::layout_for|RawRing::check_region|Producer::refresh_head|Consumer::closed_and_drained|Producer::check_len|RawRing::attach|RawRing::producer|RawRing::consumer|Consumer::peek'
    cargo mutants -p flowipc-core -f core/src/ring/mod.rs -F "$RE" "${common[@]}" --timeout 30 \
        -- --lib -- --skip threaded
    ;;
safe)
    filters=()
    while read -r re; do filters+=(-F "$re"); done < scripts/mutants-safe.re
    # Two passes: the unit tests and the fast hostile-input tests first; then only the survivors
    # (--iterate skips what the first pass caught) against the slower real-process tests too.
    # Debug info off: linking seven test binaries per mutant is most of a mutant's time.
    export CARGO_PROFILE_DEV_DEBUG=0
    cargo mutants -p flowipc "${filters[@]}" "${common[@]}" --timeout 60 \
        -- --lib --test channel_hostile --test hostile_peer --test structured_hostile --test native \
        || true
    cargo mutants -p flowipc "${filters[@]}" "${common[@]}" --timeout 90 --iterate \
        -- --lib --test channel_hostile --test hostile_peer --test structured_hostile --test native \
        --test structured_zero_copy --test channel_ring -- --skip no_leak_over_100k
    ;;
*)
    echo "usage: $0 core|safe|ring" >&2
    exit 2
    ;;
esac
