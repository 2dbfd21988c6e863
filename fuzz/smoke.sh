#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 20), one after the other; fails on the first
# crash, leaving its input under fuzz/artifacts/<target>/. Needs nightly and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Usage: fuzz/smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  echo "=== fuzz $target for ${seconds}s"
  # -max_total_time ends the run; a crash ends it early with a non-zero status.
  set +e
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 \
    | grep -E '^(stat::number_of_executed_units|==[0-9]+==|SUMMARY|Done|artifact_prefix|Test unit written)|panicked'
  # grep hides libFuzzer's progress lines; the run's own status decides.
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (status $status); its input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
