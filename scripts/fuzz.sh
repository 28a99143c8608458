#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each, one after the other, and prints per
# target: executions, executions/s, coverage (libFuzzer's cov/ft), and findings.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz when it
# is missing. New inputs the fuzzer finds go to fuzz/work/TARGET (not committed); the seeds of
# fuzz/corpus/TARGET are only read. A crash, leak, timeout or OOM is written to
# fuzz/artifacts/TARGET/: fix the bug, and keep the input there (tests/fuzz_corpus.rs replays
# it on every `cargo test`). Builds into $IMCRYPT_FUZZ_TARGET_DIR (default fuzz/target).
# Exit status 1 when any target had a finding.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  cargo install --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
rustup run nightly rustc --version >/dev/null \
  || { echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2; exit 2; }

target_dir=${IMCRYPT_FUZZ_TARGET_DIR:-$PWD/target}
# -a: debug assertions and overflow checks on, so an arithmetic overflow is a finding too.
fuzz=(cargo +nightly fuzz)
build_flags=(-a --target-dir "$target_dir")
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("${fuzz[@]}" list); fi
"${fuzz[@]}" build "${build_flags[@]}"

status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  before=$(find "artifacts/$t" -type f | wc -l)
  echo "== $t: ${secs}s" >&2
  # -max_len: the largest seeds (a master's state, a message sequence) are a few KiB.
  # -timeout: an input that takes 10 s is a finding (a hang), not a slow seed.
  "${fuzz[@]}" run "${build_flags[@]}" "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=16384 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || true
  after=$(find "artifacts/$t" -type f | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  findings=$((after - before))
  [ "$findings" = 0 ] || status=1
  line=$(printf '%-14s execs %-11s execs/s %-7s %-22s findings %s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-cov: ?}" "$findings")
  echo "$line"
  summary+=("$line")
  if [ "$findings" != 0 ]; then
    grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' || true
    ls -t "artifacts/$t" | head -n "$findings" | sed "s|^|    fuzz/artifacts/$t/|"
  fi
done
echo
printf '%s\n' "${summary[@]}"
exit "$status"
