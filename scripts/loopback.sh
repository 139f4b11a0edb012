#!/usr/bin/env bash
# Loopback load test: the handler of benches/stack.rs served over TCP on 127.0.0.1, bare and
# behind whole stacks, loaded by wrk from a second process. Prints requests/s, p99 latency,
# each stack's throughput as a share of bare, and whether the target "a stack keeps ≥ 95 %
# of bare throughput" is met, plus the server's CPU time per request (user + system time of
# the server process from /proc, divided by the requests answered: a figure that does not
# depend on whether the server or the load generator was the bottleneck) and the share of
# bare throughput that implies for a server whose core is the bottleneck.
#
#   scripts/loopback.sh [seconds] [connections] [rounds] [stacks...]
#
# Defaults: 10 s per run, 32 connections, 3 rounds, stacks "bare parapet peers". Each round
# runs every stack once (interleaved, so a burst of load from elsewhere hits all of them);
# the figure kept per stack is the median round. Each run is preceded by a 2 s warm-up.
# With taskset and at least two cores, the server is pinned to core 0 (one tokio worker)
# and wrk (one thread) to core 1. Needs wrk (Debian: apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
conns="${2:-32}"
rounds="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
stacks=("$@")
[ ${#stacks[@]} -gt 0 ] || stacks=(bare parapet peers)
[ "${stacks[0]}" = bare ] || stacks=(bare "${stacks[@]}")

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install -y wrk)"; exit 1; }
cargo build --release --quiet --example loopback_server --features axum
bin="${CARGO_TARGET_DIR:-target}/release/examples/loopback_server"

server_pin=() load_pin=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  server_pin=(taskset -c 0) load_pin=(taskset -c 1)
  pinning="server on core 0, wrk on core 1"
else
  pinning="not pinned"
fi

port=18080
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

start_server() { # stack
  port=$(( port + 1 ))
  "${server_pin[@]}" "$bin" --port "$port" --stack "$1" --threads 1 2>/dev/null &
  server_pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
    sleep 0.05
  done
  echo "the $1 server did not start" >&2
  exit 1
}

to_ms() { # wrk latency such as 812.00us, 1.23ms, 1.01s -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }

declare -A rps p99 cpu
for round in $(seq "$rounds"); do
  for stack in "${stacks[@]}"; do
    start_server "$stack"
    url="http://127.0.0.1:$port/products"
    "${load_pin[@]}" wrk -t1 -c"$conns" -d2s "$url" >/dev/null
    t0=$(cpu_ticks)
    out=$("${load_pin[@]}" wrk -t1 -c"$conns" -d"${seconds}s" --latency "$url")
    t1=$(cpu_ticks)
    stop_server
    n=$(awk '/requests in/ { print $1 }' <<<"$out")
    c=$(awk -v t=$(( t1 - t0 )) -v hz="$tick" -v n="$n" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    r=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
    l=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then
      echo "$stack: non-2xx answers:" >&2
      echo "$out" >&2
      exit 1
    fi
    rps[$stack]+="$r "
    p99[$stack]+="$(to_ms "$l") "
    cpu[$stack]+="$c "
    printf 'round %s %-8s %10s req/s  p99 %-8s server CPU %s us/req\n' "$round" "$stack" "$r" "$l" "$c" >&2
  done
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo
echo "loopback: ${seconds} s x ${rounds} round(s) per stack, ${conns} connections, wrk -t1, ${pinning}"
echo "median round per stack; target: a stack keeps >= 95 % of bare throughput"
printf '%-8s %10s %9s %8s %8s %11s %10s\n' stack "req/s" "p99 (ms)" "vs bare" "target" "CPU us/req" "CPU-bound"
bare_rps=$(median "${rps[bare]}")
bare_cpu=$(median "${cpu[bare]}")
for stack in "${stacks[@]}"; do
  r=$(median "${rps[$stack]}")
  l=$(median "${p99[$stack]}")
  ratio=$(awk -v a="$r" -v b="$bare_rps" 'BEGIN { printf "%.3f", a / b }')
  if [ "$stack" = bare ]; then
    met="-"
  else
    met=$(awk -v x="$ratio" 'BEGIN { print (x >= 0.95 ? "met" : "NOT met") }')
  fi
  c=$(median "${cpu[$stack]}")
  share=$(awk -v a="$bare_cpu" -v b="$c" 'BEGIN { printf "%.3f", a / b }')
  printf '%-8s %10.0f %9s %8s %8s %11s %10s\n' "$stack" "$r" "$l" "$ratio" "$met" "$c" "$share"
done
echo
echo "vs bare: median req/s over bare's. CPU-bound: bare's server CPU per request over the"
echo "stack's, the share of bare throughput the stack would keep on a CPU-bound server."
