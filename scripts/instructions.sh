#!/usr/bin/env bash
# Instructions per call of each layer's admission path, counted by callgrind: a figure that
# does not move with the machine's load, next to the criterion timings of BENCHMARKS.md.
#
#   scripts/instructions.sh [calls]
#
# Runs examples/instructions.rs twice per layer (with `calls` and with none) and prints
# (Ir(calls) - Ir(0)) / calls, then the same minus the bare service's figure.
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-100000}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 1; }
cargo build --release --quiet --example instructions
bin=target/release/examples/instructions

count() { # layer, calls -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_call() { # layer -> instructions per call
  local with without
  with=$(count "$1" "$calls")
  without=$(count "$1" 0)
  echo $(( (with - without) / calls ))
}

bare=$(per_call bare)
printf '%-12s %12s %14s\n' layer "Ir/call" "over bare"
printf '%-12s %12s %14s\n' bare "$bare" -
for layer in timeout breaker rate_limit bulkhead flag fallback; do
  ir=$(per_call "$layer")
  printf '%-12s %12s %14s\n' "$layer" "$ir" "$(( ir - bare ))"
done
