#!/usr/bin/env bash
# Regenerates the checked-in seed corpora, fuzz/corpus/<target>/seed-*, from which CI's fuzz smoke
# run starts: a short run of each target from its current seeds, minimized with `cargo fuzz cmin`.
# Inputs are capped at MAX_LEN bytes and minimized for edge coverage only, to keep the corpora
# small (the whole set well under 200 KB).
# Files named seed-regress-* are kept as they are (hand-picked regression inputs).
#
#   scripts/fuzz-seeds.sh                 # every target, 30 s each
#   SECS=60 scripts/fuzz-seeds.sh ring_hostile arena_hostile
#
# Leak detection is off here: finding leaks is the fuzz runs' job, not the seeds'.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${SECS:-30}
max_len=${MAX_LEN:-512}
targets=${*:-$(cargo +nightly fuzz list)}

for t in $targets; do
    work="target/seed-work/$t"
    rm -rf "$work"
    mkdir -p "$work" "corpus/$t"
    cp corpus/"$t"/seed-* "$work"/ 2>/dev/null || true
    cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$secs" -max_len="$max_len" \
        -detect_leaks=0 2>&1 | grep -E '^Done|ERROR' || true
    # Edges only (no hit counters): a few inputs per target rather than hundreds.
    cargo +nightly fuzz cmin "$t" "$work" -- -detect_leaks=0 -use_counters=0 2>&1 |
        grep -E 'MERGE-OUTER: [0-9]+ new' || true
    find "corpus/$t" -name 'seed-*' ! -name 'seed-regress-*' -delete
    for f in "$work"/*; do
        cp "$f" "corpus/$t/seed-$(basename "$f")"
    done
    echo "$t: $(ls "corpus/$t" | wc -l) seeds, $(cat corpus/"$t"/* | wc -c) bytes"
done
echo "all seeds: $(cat corpus/*/seed-* | wc -c) bytes"
