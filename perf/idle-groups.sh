#!/usr/bin/env bash
# Idle CPU and resident memory of nodes holding many Raft groups.
#
#   perf/idle-groups.sh [PARTITIONS] [SECONDS]      (defaults: 10000, 30)
#
# Starts a 3-node playground (every node holds a replica of every partition, so each node
# hosts PARTITIONS groups), waits until every partition has a leader and the groups have had
# time to hibernate, then samples each `kahuna serve` process: CPU time used over SECONDS of
# idleness (as % of one core) and VmRSS. Runs a 16-partition baseline the same way, so the
# memory per group is (RSS - baseline RSS) / (PARTITIONS - 16).
set -euo pipefail
cd "$(dirname "$0")/.."
PARTITIONS=${1:-10000}
SECONDS_IDLE=${2:-30}
BIN=${KAHUNA_BIN:-target/release/kahuna}
[ -x "$BIN" ] || cargo build --release --bin kahuna
TICKS=$(getconf CLK_TCK)

measure() {
  local partitions=$1 port=$2 dir
  dir=$(mktemp -d)
  "$BIN" playground --partitions "$partitions" --data-dir "$dir" --base-port "$port" >"$dir/out" 2>"$dir/err" &
  local playground=$!
  for _ in $(seq 1 600); do grep -q '^endpoints:' "$dir/out" 2>/dev/null && break; sleep 0.5; done
  grep -q '^endpoints:' "$dir/out" || { echo "cluster did not come up"; cat "$dir/err" | tail; kill $playground; exit 1; }
  sleep 15   # let every group go quiet and hibernate
  local pids
  pids=$(pgrep -f "kahuna serve .*--data-dir $dir" | tr '\n' ' ')
  declare -A before
  for pid in $pids; do before[$pid]=$(awk '{print $14+$15}' /proc/$pid/stat); done
  sleep "$SECONDS_IDLE"
  for pid in $pids; do
    local after cpu rss
    after=$(awk '{print $14+$15}' /proc/$pid/stat)
    cpu=$(echo "scale=2; 100 * ($after - ${before[$pid]}) / $TICKS / $SECONDS_IDLE" | bc)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    echo "partitions=$partitions pid=$pid idle_cpu_pct_of_one_core=$cpu rss_kib=$rss"
  done
  kill -INT $playground; wait $playground 2>/dev/null || true
  rm -rf "$dir"
}

echo "# machine: $(nproc) cores; $(uname -r); binary $BIN"
measure 16 27400
measure "$PARTITIONS" 28400
