#!/usr/bin/env bash
# Fuzz every parser of untrusted input with cargo-fuzz (libFuzzer), for a bounded time.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Defaults: 30 seconds, every target in fuzz/fuzz_targets/. Installs cargo-fuzz if it is
# missing (`cargo install cargo-fuzz --locked`) and needs a C++ compiler for libFuzzer.
#
# Runs on a stable toolchain: the targets are built with `--sanitizer none` (the address
# sanitizer needs nightly's `-Zsanitizer`, and the crate forbids unsafe code, so coverage
# guidance and Rust's own checks are what matters) and `-O` with debug assertions on.
# With a nightly toolchain, or RUSTC_BOOTSTRAP=1, set FUZZ_SANITIZER=address to use ASan.
#
# Every target is built first, then each binary runs from its committed seeds in
# fuzz/corpus/<target>/ and writes what it finds to fuzz/corpus-run/<target>/ (not
# committed); a crash is saved under fuzz/artifacts/<target>/ and stops the script with
# the command that reproduces it.
# To fold new findings into the committed seeds, keeping only inputs that add coverage:
#
#   cargo fuzz cmin -O --sanitizer none <target> fuzz/corpus/<target>
#
# `cargo test --all-features --test fuzz_corpus` replays fuzz/corpus/ without a fuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# Build every target first (a build error is not a finding), then run the binaries.
echo "==> building ${#targets[@]} targets"
if [ "$#" -gt 0 ]; then
  for target in "${targets[@]}"; do
    cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer" "$target"
  done
else
  cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer"
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="${CARGO_TARGET_DIR:-target}/$triple/release"

for target in "${targets[@]}"; do
  echo "==> fuzzing $target for ${seconds}s"
  mkdir -p "corpus-run/$target" "corpus/$target" "artifacts/$target"
  log="corpus-run/$target.log"
  if ! "$bin_dir/$target" -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
    -max_len=4096 -timeout=10 -print_final_stats=1 "corpus-run/$target" "corpus/$target" \
    >"$log" 2>&1; then
    grep -E 'panicked|assertion|SUMMARY|Test unit written' -A2 "$log" | head -40
    echo "!! $target: a finding (full log: fuzz/$log); replay it with"
    echo "   cargo fuzz run -O --sanitizer $sanitizer $target fuzz/artifacts/$target/<file>"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" | tr -s ' \n' ' '
  echo
done
echo "==> no findings in ${#targets[@]} targets, ${seconds}s each"
