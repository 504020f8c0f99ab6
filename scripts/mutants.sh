#!/usr/bin/env bash
# Mutation testing of the ring's checks with cargo-mutants (not run in CI; about 15 minutes on
# 2 cores). It mutates the functions of core/src/ring/mod.rs that validate what the peer wrote or
# bound a position (frame location, position refreshes, reservation, attach), runs core's unit
# tests against each mutant, and lists the survivors in $OUT/mutants.out/missed.txt.
#
#   cargo install cargo-mutants --locked
#   scripts/mutants.sh                      # the ring's checks
#   RE='Arena::' FILE=core/src/arena/mod.rs scripts/mutants.sh
#
# The threaded tests are skipped (28 s in a debug build, against 4 s for the rest): cargo-mutants
# does not mutate memory orderings, which are what they check (loom and miri do).
# --gitignore=true keeps the copy of the tree from including other target directories.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=${FILE:-core/src/ring/mod.rs}
RE=${RE:-'Consumer::locate|Consumer::refresh_tail|Producer::reserve|Producer::layout_for|RawRing::check_region|Producer::refresh_head|Consumer::closed_and_drained|Producer::check_len|RawRing::attach|RawRing::producer|RawRing::consumer|Consumer::peek'}
OUT=${OUT:-target/mutants}

mkdir -p "$OUT"
cargo mutants -p flowipc-core -f "$FILE" -F "$RE" -j 1 --timeout 30 --no-shuffle \
    --gitignore=true -o "$OUT" -- --lib -- --skip threaded
