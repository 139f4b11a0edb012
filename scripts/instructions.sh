#!/usr/bin/env bash
# Instructions per call of each layer's admission path, counted by callgrind: a figure that
# does not move with the machine's load, next to the criterion timings of BENCHMARKS.md.
#
#   scripts/instructions.sh [calls]
#
# Runs examples/instructions.rs twice per layer (with `calls` and with none) and prints
# (Ir(calls) - Ir(0)) / calls, then the same minus the bare service's figure. Then the same
# for whole requests through axum (examples/loopback_server.rs --calls, in-process): the
# bare router, each layer of the recommended stack alone around it (`only-<layer>`, see
# `single_layer` in benches/common/stacks.rs), the whole stack and the peer stack.
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-100000}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 1; }
cargo build --release --quiet --example instructions
bin="${CARGO_TARGET_DIR:-target}/release/examples/instructions"

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

cargo build --release --quiet --example loopback_server --features axum
server="${CARGO_TARGET_DIR:-target}/release/examples/loopback_server"
stack_calls=$(( calls / 5 ))
count_stack() { # stack, calls -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$server" --stack "$1" --calls "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() { # stack -> instructions per request
  local with without
  with=$(count_stack "$1" "$stack_calls")
  without=$(count_stack "$1" 0)
  echo $(( (with - without) / stack_calls ))
}
echo
bare_router=$(per_request bare)
printf '%-18s %12s %14s\n' "axum request" "Ir/request" "over bare"
printf '%-18s %12s %14s\n' bare "$bare_router" -
for stack in only-noop only-logging only-rejection only-rate_limit only-gate only-idempotency \
  only-fallback only-breaker only-timeout parapet peers; do
  ir=$(per_request "$stack")
  printf '%-18s %12s %14s\n' "$stack" "$ir" "$(( ir - bare_router ))"
done
