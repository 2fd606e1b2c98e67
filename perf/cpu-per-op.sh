#!/usr/bin/env bash
# CPU cost per operation: runs a 3-node cluster at a FIXED rate (open loop, below saturation)
# and divides the CPU time the three node processes used (user + system, from /proc) by the
# operations done. On a small shared machine this is steadier than throughput at saturation,
# which moves with whatever else runs; it is the figure to compare when making the write path
# cheaper.
#
#   perf/cpu-per-op.sh [RATE] [DURATION_S] [WORKLOAD]     (default 3000 puts/s for 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-3000}
DURATION=${2:-10}
WORKLOAD=${3:-put}
BIN=${KAHUNA_BIN:-target/release/kahuna}
BASE=${BASE:-23600}
TICKS=$(getconf CLK_TCK)
[ -x "$BIN" ] || cargo build --release --bin kahuna
. perf/lib-cluster.sh
start_kahuna 64
cpu_ticks() { local total=0 pid; for pid in "${CHILD_PIDS[@]}"; do
  total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }
# Warm up (routes, leaders, caches) outside the measured window.
"$BIN" bench --endpoints "$(kahuna_endpoints)" --workload "$WORKLOAD" --clients 64 --rate "$RATE" \
  --duration 2s --warmup 0s --value-size 256 --keys 100000 >/dev/null 2>&1
before=$(cpu_ticks)
summary=$("$BIN" bench --endpoints "$(kahuna_endpoints)" --workload "$WORKLOAD" --clients 64 \
  --rate "$RATE" --duration "${DURATION}s" --warmup 0s --value-size 256 --keys 100000 2>/dev/null | tail -1)
after=$(cpu_ticks)
ops=$(echo "$summary" | tr ' ' '\n' | awk -F= '$1=="ops" {print $2}')
echo "# $(nproc) cores, $(uname -r); 3 nodes, 64 partitions; $WORKLOAD at $RATE/s for ${DURATION}s, 64 clients, open loop"
echo "$summary"
awk -v t=$((after - before)) -v hz="$TICKS" -v ops="$ops" -v d="$DURATION" 'BEGIN {
  cpu = t / hz; printf "node_cpu_s=%.2f cores_busy=%.2f cpu_us_per_op=%.1f (all three nodes)\n", cpu, cpu / d, 1e6 * cpu / ops }'
