#!/usr/bin/env bash
# Runs every fuzz target (or those in FUZZ_TARGETS) for FUZZ_SECONDS each (default 600), one after the
# other, at the lowest CPU priority, after seeding the corpora from the fixtures (seed.py). Logs go to
# fuzz/logs/<target>.log, crashes to fuzz/artifacts/<target>/; a summary line per target at the end.
# Exit 1 when a target found a crash. Needs the nightly toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-600}
# No sanitizer: agentid has no unsafe code, and the targets look for panics (debug assertions on, -a),
# at several times the speed of an ASan build.
FLAGS=(-s none -a)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
python3 seed.py
nice -n 19 cargo +nightly fuzz build "${FLAGS[@]}"
TARGETS=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
mkdir -p logs
failed=0
for t in $TARGETS; do
  echo "== $t: ${SECONDS_EACH}s"
  if ! nice -n 19 cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    failed=1
    echo "   CRASH: see logs/$t.log and artifacts/$t/"
  fi
done
echo "target | executions | exec/s | cov | ft | corpus"
for t in $TARGETS; do
  log=logs/$t.log
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
  echo "$t | ${execs:-?} | ${speed:-?} | ${cov:-?} | ${ft:-?} | $(find "corpus/$t" -type f | wc -l)"
done
exit $failed
