#!/usr/bin/env bash
# Loopback load test: the handler of benches/stack.rs served over TCP on 127.0.0.1, bare and
# behind whole stacks, loaded by wrk from a second process. Prints, per stack, requests/s,
# p99 latency, throughput as a share of bare, the server's CPU time per request, and whether
# the target "a stack keeps >= 95 % of bare throughput" is met.
#
#   scripts/loopback.sh [seconds] [connections] [rounds] [stacks...]
#
# Defaults: 3 s per run, 32 connections, 15 rounds, stacks "bare parapet peers".
#
# How it keeps the machine's noise out of the comparison (on a shared virtual machine the
# throughput of the same server moves by 10-20 % from one minute to the next):
# - every server is started once and stays up (each warmed by a 2 s run), so no run pays
#   a start or a cold cache that another does not;
# - each round runs every stack once, back to back, in an order that alternates from one
#   round to the next (bare first, then bare last), so a drift in the machine's speed
#   hits the stacks alike;
# - a stack's figure is the median over rounds of its ratio to bare *in the same round*
#   (a paired comparison), shown with the lower and upper quartiles of those ratios.
# The server's CPU time per request (user + system time of its process from /proc, over
# the requests answered) does not depend on which side was the bottleneck: "CPU-bound" is
# bare's over the stack's, per round, the share of bare throughput a stack would keep on
# a server whose core is the bottleneck.
# With taskset and at least two cores, every server is pinned to core 0 (one tokio worker)
# and wrk (one thread) to core 1. Needs wrk (Debian: apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3}"
conns="${2:-32}"
rounds="${3:-15}"
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
  pinning="servers on core 0, wrk on core 1"
else
  pinning="not pinned"
fi

declare -A pid port
pids=()
stop_servers() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop_servers EXIT

next_port=18080
for stack in "${stacks[@]}"; do
  next_port=$(( next_port + 1 ))
  "${server_pin[@]}" "$bin" --port "$next_port" --stack "$stack" --threads 1 2>/dev/null &
  pid[$stack]=$!
  pids+=("$!")
  port[$stack]=$next_port
  up=""
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$next_port") 2>/dev/null; then up=1; break; fi
    sleep 0.05
  done
  [ -n "$up" ] || { echo "the $stack server did not start" >&2; exit 1; }
  "${load_pin[@]}" wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$next_port/products" >/dev/null
done

to_ms() { # wrk latency such as 812.00us, 1.23ms, 1.01s -> milliseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

declare -A rps p99 cpu ratio cpu_share
for round in $(seq "$rounds"); do
  order=("${stacks[@]}")
  if (( round % 2 == 0 )); then # reversed: bare last
    order=()
    for (( i = ${#stacks[@]} - 1; i >= 0; i-- )); do order+=("${stacks[$i]}"); done
  fi
  declare -A this_rps=() this_cpu=()
  for stack in "${order[@]}"; do
    url="http://127.0.0.1:${port[$stack]}/products"
    t0=$(cpu_ticks "${pid[$stack]}")
    out=$("${load_pin[@]}" wrk -t1 -c"$conns" -d"${seconds}s" --latency "$url")
    t1=$(cpu_ticks "${pid[$stack]}")
    if grep -q "Non-2xx" <<<"$out"; then
      echo "$stack: non-2xx answers:" >&2
      echo "$out" >&2
      exit 1
    fi
    n=$(awk '/requests in/ { print $1 }' <<<"$out")
    c=$(awk -v t=$(( t1 - t0 )) -v hz="$tick" -v n="$n" 'BEGIN { printf "%.3f", t / hz * 1e6 / n }')
    r=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
    l=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    this_rps[$stack]=$r
    this_cpu[$stack]=$c
    rps[$stack]+="$r "
    p99[$stack]+="$(to_ms "$l") "
    cpu[$stack]+="$c "
  done
  line="round $round:"
  for stack in "${stacks[@]}"; do
    q=$(awk -v a="${this_rps[$stack]}" -v b="${this_rps[bare]}" 'BEGIN { printf "%.3f", a / b }')
    s=$(awk -v a="${this_cpu[bare]}" -v b="${this_cpu[$stack]}" 'BEGIN { printf "%.3f", a / b }')
    ratio[$stack]+="$q "
    cpu_share[$stack]+="$s "
    line+=" $stack ${this_rps[$stack]} req/s (x$q, CPU ${this_cpu[$stack]} us)"
  done
  echo "$line" >&2
  unset this_rps this_cpu
done

# quantile list p: the p-quantile (nearest rank) of the numbers in list
quantile() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk -v p="$2" '{ a[NR] = $1 } END { i = int(p * (NR - 1) + 0.5) + 1; print a[i] }'; }

echo
echo "loopback: ${rounds} rounds x ${seconds} s per stack, ${conns} connections, wrk -t1, ${pinning}"
echo "servers kept up; stacks alternate within each round; ratios are paired per round"
echo "target: a stack keeps >= 95 % of bare throughput (median paired ratio)"
printf '%-8s %10s %9s %20s %8s %11s %20s\n' stack "req/s" "p99 (ms)" "vs bare [q1, q3]" target "CPU us/req" "CPU-bound [q1, q3]"
for stack in "${stacks[@]}"; do
  r=$(quantile "${rps[$stack]}" 0.5)
  l=$(quantile "${p99[$stack]}" 0.5)
  c=$(quantile "${cpu[$stack]}" 0.5)
  q=$(quantile "${ratio[$stack]}" 0.5)
  q1=$(quantile "${ratio[$stack]}" 0.25)
  q3=$(quantile "${ratio[$stack]}" 0.75)
  s=$(quantile "${cpu_share[$stack]}" 0.5)
  s1=$(quantile "${cpu_share[$stack]}" 0.25)
  s3=$(quantile "${cpu_share[$stack]}" 0.75)
  if [ "$stack" = bare ]; then
    met="-"
  else
    met=$(awk -v x="$q" 'BEGIN { print (x >= 0.95 ? "met" : "NOT met") }')
  fi
  printf '%-8s %10.0f %9s %20s %8s %11s %20s\n' "$stack" "$r" "$l" "$q [$q1, $q3]" "$met" "$c" "$s [$s1, $s3]"
done
echo
echo "vs bare: the median over rounds of the stack's req/s over bare's in the same round."
echo "CPU-bound: the same for bare's server CPU per request over the stack's."
